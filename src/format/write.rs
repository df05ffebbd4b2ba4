//! Serialises a container in the one canonical layout readers accept.

use std::collections::BTreeMap;

use super::bitpack::pack_permutation;
use super::bytes::Writer;
use super::*;
use crate::error::{Error, Result};
use crate::permute::{Permutation, PermutationKind};
use crate::predictor::{LinearWeights, Predictor, WeightDtype, dequantize_codes, int_codes};

/// A tensor as safetensors and `PASS` hold it: name, dtype, shape and little-endian bytes
/// (borrowed from the source map). Source checkpoints parse into these; passthrough tensors are
/// stored from them verbatim.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    pub name: String,
    /// The dtype in the checkpoint (and in the decoded one).
    pub dtype: TensorDtype,
    pub shape: Vec<u64>,
    /// The bytes as stored: the tensor's own, or binary16 values for [`PassStorage::F16`].
    pub bytes: &'a [u8],
    pub storage: PassStorage,
}

/// Everything that goes into a `.nern` file.
pub struct ContainerParts<'a> {
    pub predictor: &'a Predictor,
    pub layers: &'a [LayerEntry],
    pub permutations: &'a [Permutation],
    pub passthrough: Vec<RawTensor<'a>>,
    /// Conv weights stored as codes (`CODE`, format 1.8); empty: no such section.
    pub coded: &'a [CodedTensor],
    /// The source checkpoint's safetensors `__metadata__`.
    pub source_metadata: Option<BTreeMap<String, String>>,
    /// Free-form provenance, stored zstd-compressed in `META`.
    pub metadata: Option<serde_json::Value>,
    /// Store `PRED` raw even where zstd would be smaller (size bounds for budgets).
    pub raw_predictor: bool,
    /// Store `DATA` raw (readable in place from a memory map; size bounds for budgets) even
    /// where the byte-shuffled zstd of format 1.6 would be smaller.
    pub raw_data: bool,
}

struct Section {
    tag: [u8; 4],
    flags: u16,
    encoding: u8,
    decoded_len: u64,
    payload: Vec<u8>,
}

fn raw(tag: [u8; 4], payload: Vec<u8>) -> Section {
    Section {
        tag,
        flags: FLAG_REQUIRED,
        encoding: ENCODING_RAW,
        decoded_len: payload.len() as u64,
        payload,
    }
}

/// A required section stored zstd-compressed (level 19) when that is smaller (spec §5.1, from
/// format 1.2), raw otherwise.
fn compressed_if_smaller(tag: [u8; 4], payload: Vec<u8>) -> Result<Section> {
    let packed = zstd::bulk::compress(&payload, 19).map_err(|e| Error::io("<zstd>", e))?;
    Ok(smaller_of(tag, payload, packed, ENCODING_ZSTD))
}

/// `packed` (the payload in `encoding`) when it is smaller than the raw `payload`.
fn smaller_of(tag: [u8; 4], payload: Vec<u8>, packed: Vec<u8>, encoding: u8) -> Section {
    if packed.len() >= payload.len() {
        return raw(tag, payload);
    }
    Section {
        tag,
        flags: FLAG_REQUIRED,
        encoding,
        decoded_len: payload.len() as u64,
        payload: packed,
    }
}

/// `DATA` as the writer stores it: byte-shuffled zstd (format 1.6) when that is smaller, raw
/// otherwise. BatchNorm and classifier tensors shrink 10-19 % this way (ResNet-20, F32: 15,312
/// -> 12,412 bytes; binary16: 7,744 -> 6,755); the price is that a decoder copies `DATA` out
/// instead of reading it in place, a few kilobytes for these networks.
fn stored_data(payload: Vec<u8>) -> Result<Section> {
    let packed = super::shuffle::compress(&payload)?;
    Ok(smaller_of(
        TAG_DATA,
        payload,
        packed,
        ENCODING_SHUFFLED_ZSTD,
    ))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > read::MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "tensor name of {} bytes (must be 1..={})",
            name.len(),
            read::MAX_NAME_LEN
        )));
    }
    Ok(())
}

/// `PRED` as the writer stores it, and whether in code layout 1: raw when asked (the size bound
/// of `--target-size`), else the smallest of packed and zstd-compressed and, for codes of fewer
/// than 8 bits, code layout 1 under zstd.
fn stored_predictor(p: &Predictor, raw_only: bool) -> Result<(Section, bool)> {
    let payload = predictor_section(p, false)?;
    if raw_only {
        return Ok((raw(TAG_PREDICTOR, payload), false));
    }
    let packed = compressed_if_smaller(TAG_PREDICTOR, payload)?;
    // Codes of fewer than 8 bits, one byte each and all together (layout 1): zstd's entropy
    // coder then sees whole symbols, not a bit stream straddling bytes. On int6 ResNet-20
    // predictors (hidden 195) the codes went from 6 to about 5.2 bits each, PRED -8.5 %.
    // Written only when smaller, so small predictors keep the packed layout.
    if p.config.weight_dtype.code_bits().is_some_and(|b| b < 8) {
        let bytes = compressed_if_smaller(TAG_PREDICTOR, predictor_section(p, true)?)?;
        if bytes.payload.len() < packed.payload.len() {
            return Ok((bytes, true));
        }
    }
    Ok((packed, false))
}

/// Bytes of `PRED`'s payload for `p`: as stored raw (packed codes), and as the writer stores it
/// (what `--target-size` measures to widen a predictor whose codes compress).
pub fn predictor_bytes(p: &Predictor) -> Result<(u64, u64)> {
    let raw_len = predictor_section(p, false)?.len() as u64;
    let stored = stored_predictor(p, false)?.0.payload.len() as u64;
    Ok((raw_len, stored))
}

/// `PRED` (spec §5.1). With `byte_codes` (layout 1, integer dtypes, since 1.5) every layer's
/// codes come first, one byte each, then each layer's scales and bias.
fn predictor_section(p: &Predictor, byte_codes: bool) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    let c = &p.config;
    let byte_codes = byte_codes && c.weight_dtype.max_code().is_some();
    w.u32(c.pe_levels);
    // coordinate convention: 0 raw integers, 1 with embedding tables (format 1.7)
    w.u8(u8::from(c.embedding.is_some()));
    w.u8(0); // activation: ReLU
    w.u8(c.weight_dtype.code());
    w.u8(u8::from(byte_codes)); // code layout
    w.f64(c.pe_base);
    w.u32(c.kernel_size);
    w.u32(c.depth() as u32);
    for &width in &c.widths {
        w.u32(width);
    }
    if let Some(e) = c.embedding {
        w.u32(e.width);
        w.u32(e.rows[0]);
        w.u32(e.rows[1]);
    }
    let shapes = c.stored_shapes();
    if p.layers.len() != c.depth() || p.layers.len() + p.embeddings.len() != shapes.len() {
        return Err(Error::InvalidArgument("predictor depth mismatch".into()));
    }
    let mut tails = Vec::new();
    for (layer, &(inputs, outputs)) in p.stored().zip(&shapes) {
        if layer.inputs != inputs
            || layer.outputs != outputs
            || layer.weight.len() != layer.inputs * layer.outputs
            || layer.bias.len() != layer.outputs
        {
            return Err(Error::InvalidArgument(
                "predictor layer shape mismatch".into(),
            ));
        }
        if let (Some(max), Some(bits)) = (c.weight_dtype.max_code(), c.weight_dtype.code_bits()) {
            let (q, scales) = int_weights(layer, max)?;
            if byte_codes {
                w.bytes(&pack_codes(&q, 8));
                let mut tail = Writer::default();
                tail.f32s(&scales);
                tail.f32s(&layer.bias);
                tails.push(tail.buf);
                continue;
            }
            w.f32s(&scales);
            w.bytes(&pack_codes(&q, bits));
            w.f32s(&layer.bias);
            continue;
        }
        for &v in layer.weight.iter().chain(&layer.bias) {
            match c.weight_dtype {
                WeightDtype::F16 => w.bytes(&half::f16::from_f32(v).to_le_bytes()),
                WeightDtype::Bf16 => w.bytes(&half::bf16::from_f32(v).to_le_bytes()),
                _ => w.f32s(&[v]),
            }
        }
    }
    for tail in tails {
        w.bytes(&tail);
    }
    Ok(w.buf)
}

/// Integer codes as `bits`-bit two's complement, code `m` at bits `[m bits, (m+1) bits)` of the
/// stream, bit `j` being bit `j % 8` of byte `j / 8` (spec §5.1; for int4 this is code `2i` in
/// the low nibble, for int8 one byte per code). The padding bits of the last byte are zero.
pub(crate) fn pack_codes(q: &[i8], bits: u32) -> Vec<u8> {
    if bits == 8 {
        return q.iter().map(|&v| v as u8).collect();
    }
    let mut out = vec![0u8; (q.len() * bits as usize).div_ceil(8)];
    let mask = (1u32 << bits) - 1;
    for (m, &v) in q.iter().enumerate() {
        let code = (v as u8 as u32) & mask;
        let j = m * bits as usize;
        // A code spans at most two bytes (bits <= 8).
        let shifted = code << (j % 8);
        out[j / 8] |= shifted as u8;
        if shifted > 0xff {
            out[j / 8 + 1] |= (shifted >> 8) as u8;
        }
    }
    out
}

/// The integer codes (`|q| <= max`) of a layer already rounded by `Predictor::store_as`;
/// refuses weights that are not exactly `q * scale`, so what the file holds is what was measured.
fn int_weights(layer: &LinearWeights, max: f32) -> Result<(Vec<i8>, Vec<f32>)> {
    let scales = &layer.scales;
    if scales.len() != layer.outputs {
        return Err(Error::InvalidArgument(
            "integer (int8/int4) predictor layer without per-output scales (call store_as first)"
                .into(),
        ));
    }
    let q = int_codes(&layer.weight, scales, max);
    if dequantize_codes(&q, scales) != layer.weight {
        return Err(Error::InvalidArgument(
            "integer (int8/int4) predictor weights are not exactly q * scale (call store_as first)"
                .into(),
        ));
    }
    Ok((q, scales.clone()))
}

fn layers_section(layers: &[LayerEntry]) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    w.u32(layers.len() as u32);
    for l in layers {
        check_name(&l.name)?;
        w.string(&l.name, false);
        w.u8(l.dtype.code());
        w.u8(read::permutation_code(l.permutation));
        for d in l.shape {
            w.u32(d);
        }
    }
    Ok(w.buf)
}

/// Serialises `parts` into the bytes of a `.nern` file.
pub fn write_container(parts: &ContainerParts<'_>) -> Result<Vec<u8>> {
    if parts.layers.len() != parts.permutations.len() {
        return Err(Error::InvalidArgument(
            "one permutation per layer required".into(),
        ));
    }
    let mut perm = Vec::new();
    for (l, p) in parts.layers.iter().zip(parts.permutations) {
        let matches_kind = matches!(
            (l.permutation, p),
            (PermutationKind::None, Permutation::Identity)
                | (PermutationKind::InFilter, Permutation::InFilter { .. })
                | (
                    PermutationKind::CrossFilter,
                    Permutation::CrossFilter { .. }
                )
        );
        if !matches_kind || !p.is_valid(l.cout(), l.cin()) {
            return Err(Error::InvalidPermutation {
                layer: l.name.clone(),
            });
        }
        pack_permutation(p, l.cout(), l.cin(), &mut perm);
    }

    // PASS index and DATA: tensors in the given order, each 8-aligned.
    let mut index = Writer::default();
    let mut data: Vec<u8> = Vec::new();
    index.u32(parts.passthrough.len() as u32);
    index.u8(u8::from(parts.source_metadata.is_some()));
    index.bytes(&[0; 3]);
    let empty = BTreeMap::new();
    let meta = parts.source_metadata.as_ref().unwrap_or(&empty);
    index.u32(meta.len() as u32);
    for (k, v) in meta {
        index.string(k, true);
        index.string(v, true);
    }
    for t in &parts.passthrough {
        check_name(&t.name)?;
        let offset = align_up(data.len() as u64, TENSOR_ALIGN).ok_or(Error::Overflow("DATA"))?;
        data.resize(offset as usize, 0);
        data.extend_from_slice(t.bytes);
        index.string(&t.name, false);
        match t.storage {
            PassStorage::Verbatim => index.u8(t.dtype.code()),
            PassStorage::F16 => {
                let elements = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
                if t.dtype != TensorDtype::F32
                    || elements.and_then(|e| e.checked_mul(2)) != Some(t.bytes.len() as u64)
                {
                    return Err(Error::InvalidArgument(format!(
                        "{}: binary16 storage needs an F32 tensor and 2 bytes per element",
                        t.name
                    )));
                }
                index.u8(DTYPE_CODE_F32_AS_F16)
            }
        }
        index.u8(t.shape.len() as u8);
        for &d in &t.shape {
            index.u64(d);
        }
        index.u64(offset);
        index.u64(t.bytes.len() as u64);
    }

    let (predictor, byte_codes) = stored_predictor(parts.predictor, parts.raw_predictor)?;
    let pred_zstd = predictor.encoding == ENCODING_ZSTD;
    // The tables of names compress about 6x (format 1.4).
    let layers = compressed_if_smaller(TAG_LAYERS, layers_section(parts.layers)?)?;
    let index = compressed_if_smaller(TAG_PASSTHROUGH, index.buf)?;
    let tables_zstd = layers.encoding == ENCODING_ZSTD
        || index.encoding == ENCODING_ZSTD
        || parts
            .passthrough
            .iter()
            .any(|t| t.storage == PassStorage::F16);
    let data = if parts.raw_data {
        raw(TAG_DATA, data)
    } else {
        stored_data(data)?
    };
    let data_shuffled = data.encoding == ENCODING_SHUFFLED_ZSTD;
    let mut sections = vec![predictor, layers, raw(TAG_PERMUTATIONS, perm), index, data];
    if !parts.coded.is_empty() {
        // One byte per code: zstd's entropy coder sees whole symbols (as PRED's code layout 1).
        sections.push(compressed_if_smaller(TAG_CODED, write_coded(parts.coded)?)?);
    }
    if let Some(meta) = &parts.metadata {
        let json = serde_json::to_vec(meta).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let packed = zstd::bulk::compress(&json, 19).map_err(|e| Error::io("<zstd>", e))?;
        // First, right after the table: a registry reads the provenance with the table in one
        // ranged read (spec §5.5).
        sections.insert(
            0,
            Section {
                tag: TAG_METADATA,
                flags: 0,
                encoding: ENCODING_ZSTD,
                decoded_len: json.len() as u64,
                payload: packed,
            },
        );
    }
    // The oldest minor version that describes the file, so older readers keep reading what
    // they can: 8 for coded convs, 7 for embedding tables, 6 for a shuffled zstd DATA, 5 for a PRED in code layout 1, 4 for an int6/int5 predictor, a zstd LAYR/PASS or binary16 passthrough, 3 for an int4 predictor, 2
    // for a zstd PRED, 1 for an int8 predictor, else 0.
    let minor = match (parts.predictor.config.weight_dtype, pred_zstd) {
        _ if !parts.coded.is_empty() => 8,
        _ if parts.predictor.config.embedding.is_some() => 7,
        _ if data_shuffled => 6,
        _ if byte_codes => 5,
        _ if tables_zstd => 4,
        (WeightDtype::Int6 | WeightDtype::Int5, _) => 4,
        (WeightDtype::Int4, _) => 3,
        (_, true) => 2,
        (WeightDtype::Int8, false) => 1,
        _ => 0,
    };
    Ok(assemble(&sections, minor))
}

fn assemble(sections: &[Section], minor: u16) -> Vec<u8> {
    let table_end = (HEADER_LEN + SECTION_ENTRY_LEN * sections.len() + HASH_LEN) as u64;
    let mut offsets = Vec::with_capacity(sections.len());
    let mut end = table_end;
    for s in sections {
        let off = align_up(end, SECTION_ALIGN).unwrap_or(end);
        offsets.push(off);
        end = off + s.payload.len() as u64;
    }
    let mut w = Writer::default();
    w.bytes(&MAGIC);
    w.u16(MAJOR_VERSION);
    w.u16(minor);
    w.u32(sections.len() as u32);
    w.u64(end);
    w.u64(0);
    for (s, &off) in sections.iter().zip(&offsets) {
        w.bytes(&s.tag);
        w.u16(s.flags);
        w.u8(s.encoding);
        w.u8(0);
        w.u64(off);
        w.u64(s.payload.len() as u64);
        w.u64(s.decoded_len);
        w.bytes(blake3::hash(&s.payload).as_bytes());
    }
    let header_hash = blake3::hash(&w.buf);
    w.bytes(header_hash.as_bytes());
    for (s, &off) in sections.iter().zip(&offsets) {
        w.buf.resize(off as usize, 0);
        w.bytes(&s.payload);
    }
    w.buf
}
