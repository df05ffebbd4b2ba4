//! The `.nern` container, version 1 (`spec/nern-format.md` is normative).
//!
//! Framework-free: reading validates everything before trusting it and returns typed errors;
//! passthrough tensor bytes are borrowed straight from the input buffer (a memory map).

mod bitpack;
mod bytes;
mod coded;
mod dtype;
mod read;
pub mod shuffle;
mod write;

pub use bitpack::{bit_width, permutation_bytes};
pub use bytes::le_f32s;
pub use coded::{CodedMatrix, CodedTensor, MAX_CODE_BITS, MIN_CODE_BITS, parse_coded, write_coded};
pub use dtype::TensorDtype;
pub use read::{
    Container, Limits, PROVENANCE_FIRST_READ, Provenance, embedding_rows, read_container,
    read_provenance,
};
pub use write::{ContainerParts, RawTensor, predictor_bytes, write_container};

use crate::permute::PermutationKind;

/// `\x89NERN\r\n\x1a`: a non-ASCII first byte and CR/LF/EOF catch text-mode transfers (as PNG).
pub const MAGIC: [u8; 8] = *b"\x89NERN\r\n\x1a";
pub const MAJOR_VERSION: u16 = 1;
/// Newest minor version this implementation reads and writes (1.5 added PRED code layout 1,
/// 1.6 a byte-shuffled zstd `DATA`, 1.7 learned embedding tables in `PRED`, 1.8 coded convs in
/// `CODE`).
pub const MINOR_VERSION: u16 = 8;
/// Fixed header: magic, version, section count, file length, reserved.
pub const HEADER_LEN: usize = 32;
pub const SECTION_ENTRY_LEN: usize = 64;
pub const HASH_LEN: usize = 32;
/// Every section starts at a multiple of this.
pub const SECTION_ALIGN: u64 = 64;
/// Passthrough tensors start at a multiple of this inside `DATA`.
pub const TENSOR_ALIGN: u64 = 8;
pub const MAX_SECTIONS: u32 = 64;

/// Section flag: a reader that does not know the tag must refuse the file.
pub const FLAG_REQUIRED: u16 = 1;

/// Section payload encodings.
pub const ENCODING_RAW: u8 = 0;
pub const ENCODING_ZSTD: u8 = 1;
/// A stride byte, then zstd frames of the payload byte-shuffled by that stride (format 1.6,
/// `DATA` only; see [`shuffle`]).
pub const ENCODING_SHUFFLED_ZSTD: u8 = 2;

pub const TAG_PREDICTOR: [u8; 4] = *b"PRED";
pub const TAG_LAYERS: [u8; 4] = *b"LAYR";
pub const TAG_PERMUTATIONS: [u8; 4] = *b"PERM";
pub const TAG_PASSTHROUGH: [u8; 4] = *b"PASS";
pub const TAG_DATA: [u8; 4] = *b"DATA";
pub const TAG_METADATA: [u8; 4] = *b"META";
/// Conv weights stored as integer codes, whole or factored (format 1.8; required when present).
pub const TAG_CODED: [u8; 4] = *b"CODE";

/// One entry of the section table, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    pub tag: [u8; 4],
    pub flags: u16,
    pub encoding: u8,
    pub offset: u64,
    pub stored_len: u64,
    pub decoded_len: u64,
    pub hash: [u8; 32],
}

impl SectionInfo {
    pub fn tag_str(&self) -> String {
        String::from_utf8_lossy(&self.tag).into_owned()
    }
}

/// A predicted convolution weight (one row of the layer table). Its position in the table is
/// the layer coordinate fed to the predictor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    pub name: String,
    /// Dtype of the source tensor (v1: F32 only).
    pub dtype: TensorDtype,
    pub permutation: PermutationKind,
    /// `[cout, cin, k, k]`.
    pub shape: [u32; 4],
}

impl LayerEntry {
    pub fn cout(&self) -> usize {
        self.shape[0] as usize
    }
    pub fn cin(&self) -> usize {
        self.shape[1] as usize
    }
    pub fn kernel(&self) -> usize {
        self.shape[2] as usize
    }
    pub fn kernels(&self) -> usize {
        self.cout() * self.cin()
    }
    pub fn elements(&self) -> usize {
        self.kernels() * self.kernel() * self.kernel()
    }
}

/// A tensor stored verbatim in `DATA`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassEntry {
    pub name: String,
    /// The tensor's dtype in the decoded checkpoint.
    pub dtype: TensorDtype,
    /// How its bytes are stored in `DATA`.
    pub storage: PassStorage,
    pub shape: Vec<u64>,
    /// Byte range inside the `DATA` section.
    pub offset: u64,
    pub len: u64,
}

impl PassEntry {
    /// Bytes of the tensor in the decoded checkpoint (twice the stored ones for binary16).
    pub fn output_len(&self) -> u64 {
        match self.storage {
            PassStorage::Verbatim => self.len,
            PassStorage::F16 => self.len * 2,
        }
    }
}

/// How a passthrough tensor's bytes are stored (spec §5.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PassStorage {
    /// Byte for byte as in the source.
    #[default]
    Verbatim,
    /// An F32 tensor stored as IEEE binary16 (PASS dtype code 16, format 1.4): lossy, written
    /// only when asked; decoded to F32 exactly (every binary16 value is a binary32 value).
    F16,
}

/// `PASS` dtype code of an F32 tensor stored as binary16 (spec §5.4, format 1.4).
pub const DTYPE_CODE_F32_AS_F16: u8 = 16;

/// zstd frames decoded to exactly `decoded_len` bytes (at most that much is decompressed; the
/// caller has bounded it), else a malformed-section error naming `name`.
pub(crate) fn zstd_exact(
    frames: &[u8],
    decoded_len: u64,
    name: &'static str,
) -> crate::error::Result<Vec<u8>> {
    let decoded = zstd::bulk::decompress(frames, decoded_len as usize)
        .map_err(|e| crate::error::Error::malformed(name, format!("zstd: {e}")))?;
    if decoded.len() as u64 != decoded_len {
        return Err(crate::error::Error::malformed(
            name,
            format!(
                "decoded to {} bytes, the table declares {decoded_len}",
                decoded.len()
            ),
        ));
    }
    Ok(decoded)
}

pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v / align * align)
}
