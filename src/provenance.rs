//! What a registry asks of a `.nern` without decoding it: its provenance read with ranged reads
//! from the start of the file (`inspect --provenance`), and whether a checkpoint is the one a
//! file was made from (`verify`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{Limits, Provenance, read_provenance};
use crate::io::sha256_hex;

/// The provenance of the `.nern` at `path`, read with positioned reads of the ranges
/// [`read_provenance`] asks for (what a range request does on an object store).
pub fn provenance_of_file(path: &Path, limits: &Limits) -> Result<Provenance> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut fetch = |start: u64, n: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n as usize];
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::io(path, e))?;
        Ok(buf)
    };
    read_provenance(len, limits, &mut fetch)
}

/// How a checkpoint compares with the source a `.nern` records.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    /// The checkpoint's SHA-256 and size.
    pub sha256: String,
    pub bytes: u64,
    /// What the file records (`sha256`, or `blake3` in files written before it was recorded).
    pub recorded_sha256: Option<String>,
    pub recorded_blake3: Option<String>,
    pub recorded_bytes: Option<u64>,
    pub matches: bool,
}

/// Whether `checkpoint` is the source `nern` was encoded from, by the digests in its `META`.
/// A file without provenance cannot tell: that is an error, not a mismatch.
pub fn verify_source(nern: &Path, checkpoint: &Path, limits: &Limits) -> Result<Verdict> {
    let p = provenance_of_file(nern, limits)?;
    let src = p
        .metadata
        .as_ref()
        .and_then(|m| m.get("source"))
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} records no source checkpoint (no META provenance)",
                nern.display()
            ))
        })?;
    let text = |k: &str| src.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (recorded_sha256, recorded_blake3) = (text("sha256"), text("blake3"));
    if recorded_sha256.is_none() && recorded_blake3.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} records no digest of its source",
            nern.display()
        )));
    }
    let file = crate::io::MappedFile::open(checkpoint)?;
    let bytes = file.bytes();
    let sha256 = sha256_hex(bytes);
    let matches = match (&recorded_sha256, &recorded_blake3) {
        (Some(s), _) => *s == sha256,
        (None, Some(b)) => *b == blake3::hash(bytes).to_hex().as_str(),
        (None, None) => false,
    };
    Ok(Verdict {
        sha256,
        bytes: bytes.len() as u64,
        recorded_sha256,
        recorded_blake3,
        recorded_bytes: src.get("bytes").and_then(|v| v.as_u64()),
        matches,
    })
}
