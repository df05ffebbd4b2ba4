//! Parses and validates a `.nern` file. Nothing is trusted before it is checked: hashes first,
//! then every count and length against the bytes present and against [`Limits`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use super::bitpack::unpack_permutation;
use super::bytes::Reader;
use super::*;
use crate::error::{Error, Result};
use crate::permute::{Permutation, PermutationKind};
use crate::predictor::{
    COORDS, Embedding, LinearWeights, Predictor, PredictorConfig, TABLES, WeightDtype,
    dequantize_codes,
};

pub(crate) const MAX_NAME_LEN: usize = 4096;
const MAX_META_STRING: usize = 1 << 24;
const MAX_PE_LEVELS: u32 = 256;
const MAX_WIDTH: u32 = 1 << 16;
/// Values per embedding row (format 1.7).
const MAX_EMBEDDING_WIDTH: u32 = 256;
/// Rows per embedding table: one per filter (or channel) of every predicted layer.
const MAX_EMBEDDING_ROWS: u32 = 1 << 24;
const MAX_DEPTH: u32 = 64;
const MAX_KERNEL: u32 = 31;
const MAX_NDIM: u8 = 8;

/// Resource bounds a reader enforces before allocating.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of the decoded checkpoint (predicted plus passthrough tensors).
    pub max_output_bytes: u64,
    /// Tensors in the layer table plus the passthrough index.
    pub max_tensors: u64,
    /// Decompressed size of the `META` section, and of `LAYR` and `PASS` when compressed.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output_bytes: 16 << 30,
            max_tensors: 1 << 20,
            max_metadata_bytes: 64 << 20,
        }
    }
}

/// A validated `.nern` file. Passthrough bytes borrow from the input buffer.
#[derive(Debug)]
pub struct Container<'a> {
    pub major: u16,
    pub minor: u16,
    pub file_len: u64,
    pub sections: Vec<SectionInfo>,
    pub predictor: Predictor,
    pub layers: Vec<LayerEntry>,
    pub permutations: Vec<Permutation>,
    pub passthrough: Vec<PassEntry>,
    /// Conv weights stored as codes (`CODE`, format 1.8; empty without that section).
    pub coded: Vec<CodedTensor>,
    pub source_metadata: Option<BTreeMap<String, String>>,
    /// `PRED`'s code layout (spec §5.1): 0 packed per layer, 1 every layer's codes first, one
    /// byte each.
    pub code_layout: u8,
    /// The `DATA` section's decoded bytes: borrowed from the input when stored raw, owned when
    /// stored byte-shuffled and compressed (format 1.6).
    pub data: Cow<'a, [u8]>,
    /// The byte-shuffle stride of a compressed `DATA` (format 1.6); `None` when stored raw.
    pub data_stride: Option<u8>,
    /// `META`, decoded and validated as a JSON object at read time (spec §5.5).
    meta: Option<serde_json::Value>,
}

impl<'a> Container<'a> {
    /// The verbatim bytes of a passthrough tensor (validated in range at read time).
    pub fn tensor_bytes(&self, entry: &PassEntry) -> &[u8] {
        &self.data[entry.offset as usize..(entry.offset + entry.len) as usize]
    }

    /// Bytes of the decoded checkpoint's tensor data.
    pub fn output_bytes(&self) -> u64 {
        let predicted: u64 = self.layers.iter().map(|l| l.elements() as u64 * 4).sum();
        let coded: u64 = self.coded.iter().map(|t| t.elements() as u64 * 4).sum();
        predicted
            + coded
            + self
                .passthrough
                .iter()
                .map(PassEntry::output_len)
                .sum::<u64>()
    }

    /// The provenance metadata (`META`): a JSON object, already decoded and validated by
    /// [`read_container`] within the limits given there (so `_limits` is no longer used).
    pub fn metadata(&self, _limits: &Limits) -> Result<Option<serde_json::Value>> {
        Ok(self.meta.clone())
    }
}

/// Decodes and validates `META` (spec §5.5): at most the declared length decompressed, exactly
/// that length produced, and a JSON object. It is covered by the hashes, so a broken one means a
/// broken writer and the file is refused.
fn parse_metadata(stored: &[u8], info: &SectionInfo, limits: &Limits) -> Result<serde_json::Value> {
    let limit = limits.max_metadata_bytes;
    at_most("META decoded bytes", info.decoded_len, limit, "")?;
    let decoded;
    let json = if info.encoding == ENCODING_ZSTD {
        decoded = decompress_exact(stored, info, ("META", "META decoded bytes"), limit)?;
        &decoded[..]
    } else {
        stored
    };
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| Error::malformed("META", format!("JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::malformed("META", "not a JSON object"));
    }
    Ok(value)
}

/// A zstd section's bytes: at most its declared decoded length (itself within `limit`) is
/// decompressed, and exactly that length must come out. `(name, what)` name the section and
/// the limited quantity in errors.
fn decompress_exact(
    stored: &[u8],
    info: &SectionInfo,
    (name, what): (&'static str, &'static str),
    limit: u64,
) -> Result<Vec<u8>> {
    at_most(what, info.decoded_len, limit, "")?;
    zstd_exact(stored, info.decoded_len, name)
}

/// `n` codes of `bits`-bit two's complement, packed as `write::pack_codes` packs them; `None`
/// when the padding bits after the last code are not zero.
fn unpack_codes(bytes: &[u8], n: usize, bits: u32) -> Option<Vec<i8>> {
    if bits == 8 {
        return Some(bytes.iter().map(|&b| b as i8).collect());
    }
    let used = n * bits as usize;
    if !used.is_multiple_of(8) && bytes.last().is_some_and(|b| b >> (used % 8) != 0) {
        return None;
    }
    let mask = (1u32 << bits) - 1;
    let sign_shift = 32 - bits;
    Some(
        (0..n)
            .map(|m| {
                let j = m * bits as usize;
                let lo = u32::from(bytes[j / 8]);
                let hi = bytes.get(j / 8 + 1).map_or(0, |&b| u32::from(b));
                let code = ((lo | hi << 8) >> (j % 8)) & mask;
                (((code << sign_shift) as i32) >> sign_shift) as i8
            })
            .collect(),
    )
}

/// `value <= limit`, else [`Error::LimitExceeded`] naming `what` (with `hint` appended).
pub(crate) fn at_most(
    what: &'static str,
    value: u64,
    limit: u64,
    hint: &'static str,
) -> Result<()> {
    if value > limit {
        return Err(Error::LimitExceeded {
            what,
            value,
            limit,
            hint,
        });
    }
    Ok(())
}

pub(crate) fn permutation_code(kind: PermutationKind) -> u8 {
    match kind {
        PermutationKind::None => 0,
        PermutationKind::InFilter => 1,
        PermutationKind::CrossFilter => 2,
    }
}

fn permutation_kind(code: u8) -> Result<PermutationKind> {
    Ok(match code {
        0 => PermutationKind::None,
        1 => PermutationKind::InFilter,
        2 => PermutationKind::CrossFilter,
        c => {
            return Err(Error::malformed(
                "LAYR",
                format!("unknown permutation kind {c}"),
            ));
        }
    })
}

fn known_tag(tag: &[u8; 4]) -> Option<&'static str> {
    [
        (TAG_PREDICTOR, "PRED"),
        (TAG_LAYERS, "LAYR"),
        (TAG_PERMUTATIONS, "PERM"),
        (TAG_PASSTHROUGH, "PASS"),
        (TAG_DATA, "DATA"),
        (TAG_METADATA, "META"),
        (TAG_CODED, "CODE"),
    ]
    .iter()
    .find(|(t, _)| t == tag)
    .map(|(_, n)| *n)
}

/// The header and where the section table ends (spec §4 steps 1-2).
struct Header {
    major: u16,
    minor: u16,
    count: u32,
    file_len: u64,
    /// `[0, table_len)` is hashed; the header hash ends at `table_end`.
    table_len: usize,
    table_end: usize,
}

/// Magic, version, count, and the header hash over the table, from a prefix of the file that
/// holds at least the table (spec §4 steps 1 and 2).
fn parse_header(buf: &[u8]) -> Result<Header> {
    let avail = buf.len() as u64;
    if buf.len() < MAGIC.len() || buf[..MAGIC.len()] != MAGIC {
        if buf.len() < MAGIC.len() && MAGIC.starts_with(buf) {
            return Err(Error::Truncated {
                what: "header",
                needed: HEADER_LEN as u64,
                available: avail,
            });
        }
        return Err(Error::BadMagic);
    }
    if buf.len() < HEADER_LEN {
        return Err(Error::Truncated {
            what: "header",
            needed: HEADER_LEN as u64,
            available: avail,
        });
    }
    let mut h = Reader::new(&buf[MAGIC.len()..HEADER_LEN], "header");
    let major = h.u16()?;
    let minor = h.u16()?;
    if major != MAJOR_VERSION {
        return Err(Error::UnsupportedVersion {
            found_major: major,
            found_minor: minor,
            supported_major: MAJOR_VERSION,
        });
    }
    let count = h.u32()?;
    let file_len = h.u64()?;
    h.zeros(8, "header reserved")?;
    if count == 0 || count > MAX_SECTIONS {
        return Err(Error::SectionLayout(format!(
            "section count {count} outside 1..={MAX_SECTIONS}"
        )));
    }
    let table_len = HEADER_LEN + SECTION_ENTRY_LEN * count as usize;
    let table_end = table_len + HASH_LEN;
    if buf.len() < table_end {
        return Err(Error::Truncated {
            what: "section table",
            needed: table_end as u64,
            available: avail,
        });
    }
    if blake3::hash(&buf[..table_len]).as_bytes()[..] != buf[table_len..table_end] {
        return Err(Error::HeaderHashMismatch);
    }
    Ok(Header {
        major,
        minor,
        count,
        file_len,
        table_len,
        table_end,
    })
}

/// One table entry's own rules (spec §4 step 4 up to the end within the file): tag bytes,
/// flags, the required flag of known tags, uniqueness, encoding, canonical offset after `end`.
/// Returns the entry and its end.
fn next_entry(
    t: &mut Reader<'_>,
    end: u64,
    file_len: u64,
    seen: &mut HashSet<[u8; 4]>,
) -> Result<(SectionInfo, u64)> {
    let tag: [u8; 4] = t.array()?;
    let flags = t.u16()?;
    let encoding = t.u8()?;
    t.zeros(1, "entry reserved")?;
    let info = SectionInfo {
        tag,
        flags,
        encoding,
        offset: t.u64()?,
        stored_len: t.u64()?,
        decoded_len: t.u64()?,
        hash: t.array()?,
    };
    // Tags are four ASCII capital letters or digits (spec §3).
    if !tag
        .iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(Error::SectionLayout(format!(
            "section tag \"{}\" is not four ASCII capital letters or digits",
            tag.escape_ascii()
        )));
    }
    let name = info.tag_str();
    if flags & !FLAG_REQUIRED != 0 {
        return Err(Error::SectionLayout(format!(
            "{name}: unknown flags {flags:#x}"
        )));
    }
    // A known section carries exactly the required flag version 1 assigns it (spec §5).
    let required = flags & FLAG_REQUIRED != 0;
    if known_tag(&tag).is_some() && required != (tag != TAG_METADATA) {
        return Err(Error::SectionLayout(format!(
            "{name}: required flag {}, version 1 assigns {}",
            u8::from(required),
            u8::from(!required)
        )));
    }
    if !seen.insert(tag) {
        return Err(Error::SectionLayout(format!("duplicate section {name}")));
    }
    let expected = align_up(end, SECTION_ALIGN).ok_or(Error::Overflow("section offset"))?;
    if info.offset != expected {
        return Err(Error::SectionLayout(format!(
            "{name} at offset {} (canonical offset is {expected}: sections are contiguous, {SECTION_ALIGN}-aligned, in table order)",
            info.offset
        )));
    }
    let sec_end = info
        .offset
        .checked_add(info.stored_len)
        .ok_or(Error::Overflow("section end"))?;
    if sec_end > file_len {
        return Err(Error::SectionLayout(format!(
            "{name} ends at {sec_end}, past the end of the file ({file_len})"
        )));
    }
    Ok((info, sec_end))
}

/// Encoding rules of one entry (spec §3): raw sections decode to their own length; zstd only
/// for `META`, `PRED` (since 1.2), `LAYR`, `PASS` (since 1.4) and unknown tags; shuffled zstd
/// only for `DATA` (since 1.6) and unknown tags.
fn check_encoding(info: &SectionInfo) -> Result<()> {
    let name = info.tag_str();
    match info.encoding {
        ENCODING_RAW if info.decoded_len != info.stored_len => Err(Error::SectionLayout(format!(
            "{name}: raw section with decoded length != stored length"
        ))),
        ENCODING_RAW => Ok(()),
        ENCODING_ZSTD
            if info.tag == TAG_METADATA
                || info.tag == TAG_PREDICTOR
                || info.tag == TAG_LAYERS
                || info.tag == TAG_PASSTHROUGH
                || info.tag == TAG_CODED
                || known_tag(&info.tag).is_none() =>
        {
            Ok(())
        }
        ENCODING_SHUFFLED_ZSTD if info.tag == TAG_DATA || known_tag(&info.tag).is_none() => Ok(()),
        e => Err(Error::SectionLayout(format!(
            "{name}: encoding {e} not allowed"
        ))),
    }
}

/// The file's actual size against the header's (spec §4 step 3).
fn check_file_length(actual: u64, declared: u64) -> Result<()> {
    if actual < declared {
        return Err(Error::Truncated {
            what: "file",
            needed: declared,
            available: actual,
        });
    }
    if actual > declared {
        return Err(Error::LengthMismatch { declared, actual });
    }
    Ok(())
}

/// Validates `buf` as a `.nern` file and returns its parsed contents.
pub fn read_container<'a>(buf: &'a [u8], limits: &Limits) -> Result<Container<'a>> {
    let avail = buf.len() as u64;
    let Header {
        major,
        minor,
        count,
        file_len,
        table_len,
        table_end,
    } = parse_header(buf)?;
    check_file_length(avail, file_len)?;

    // Section table: canonical, contiguous layout; every section verified against its hash.
    let mut t = Reader::new(&buf[HEADER_LEN..table_len], "section table");
    let mut sections = Vec::with_capacity(count as usize);
    let mut end = table_end as u64;
    let mut seen = HashSet::new();
    for _ in 0..count {
        let (info, sec_end) = next_entry(&mut t, end, file_len, &mut seen)?;
        let name = info.tag_str();
        if buf[end as usize..info.offset as usize]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(Error::SectionLayout(format!(
                "non-zero padding before {name}"
            )));
        }
        check_encoding(&info)?;
        let bytes = &buf[info.offset as usize..sec_end as usize];
        if blake3::hash(bytes).as_bytes() != &info.hash {
            return Err(Error::SectionHashMismatch { tag: name });
        }
        if known_tag(&info.tag).is_none() && info.flags & FLAG_REQUIRED != 0 {
            return Err(Error::UnknownRequiredSection { tag: name });
        }
        end = sec_end;
        sections.push(info);
    }
    if end != file_len {
        return Err(Error::SectionLayout(format!(
            "{} bytes after the last section",
            file_len - end
        )));
    }

    let find = |tag: [u8; 4], name: &'static str| -> Result<&'a [u8]> {
        let s = sections
            .iter()
            .find(|s| s.tag == tag)
            .ok_or(Error::MissingSection(name))?;
        Ok(&buf[s.offset as usize..(s.offset + s.stored_len) as usize])
    };
    // A section's decoded bytes: borrowed when raw; when zstd (PRED since 1.2, LAYR and PASS
    // since 1.4, CODE since 1.8), at most its declared length decompressed, that length within
    // `limit`, and exactly that length produced. `None` when the file has no such section.
    let decoded = |tag: [u8; 4],
                   names: (&'static str, &'static str),
                   limit: u64|
     -> Result<Option<Cow<'a, [u8]>>> {
        let Some(info) = sections.iter().find(|s| s.tag == tag) else {
            return Ok(None);
        };
        let stored = find(tag, names.0)?;
        Ok(Some(if info.encoding == ENCODING_ZSTD {
            Cow::Owned(decompress_exact(stored, info, names, limit)?)
        } else {
            Cow::Borrowed(stored)
        }))
    };
    let pred_bytes = decoded(
        TAG_PREDICTOR,
        ("PRED", "PRED decoded bytes"),
        limits.max_output_bytes,
    )?
    .ok_or(Error::MissingSection("PRED"))?;
    let (predictor, code_layout) = parse_predictor(&pred_bytes)?;
    // LAYR and PASS (zstd from format 1.4, spec §5.2, §5.4) within the table bound.
    let table = |tag: [u8; 4], names: (&'static str, &'static str)| {
        decoded(tag, names, limits.max_metadata_bytes)?.ok_or(Error::MissingSection(names.0))
    };
    let layr = table(TAG_LAYERS, ("LAYR", "LAYR decoded bytes"))?;
    let layers = parse_layers(&layr, &predictor.config, limits)?;
    if let Some(e) = predictor.config.embedding {
        let want = embedding_rows(&layers);
        if [u64::from(e.rows[0]), u64::from(e.rows[1])] != want {
            return Err(Error::malformed(
                "PRED",
                format!(
                    "embedding tables of {:?} rows, the layers need {want:?} (filters, channels)",
                    e.rows
                ),
            ));
        }
    }
    let pass = table(TAG_PASSTHROUGH, ("PASS", "PASS decoded bytes"))?;
    // CODE (format 1.8, optional, required flag): its weights count toward the output bound,
    // checked before the codes are read into memory.
    let coded = match decoded(
        TAG_CODED,
        ("CODE", "CODE decoded bytes"),
        limits.max_output_bytes,
    )? {
        Some(bytes) => {
            let room = limits.max_tensors.saturating_sub(layers.len() as u64);
            parse_coded(&bytes, room, limits.max_output_bytes / 4)?
        }
        None => Vec::new(),
    };
    let (passthrough, source_metadata) =
        parse_passthrough(&pass, limits, layers.len() + coded.len())?;
    // Names unique across the three tables.
    let mut names = HashSet::new();
    for n in layers
        .iter()
        .map(|l| &l.name)
        .chain(coded.iter().map(|t| &t.name))
        .chain(passthrough.iter().map(|p| &p.name))
    {
        if !names.insert(n.as_str()) {
            return Err(Error::malformed(
                "PASS",
                format!("duplicate tensor name {n:?}"),
            ));
        }
    }
    // Output size bound before any large allocation (permutation tables, decoded weights).
    let mut output: u64 = 0;
    for l in &layers {
        output = output
            .checked_add(l.elements() as u64 * 4)
            .ok_or(Error::Overflow("output bytes"))?;
    }
    for t in &coded {
        output = output
            .checked_add(t.elements() as u64 * 4)
            .ok_or(Error::Overflow("output bytes"))?;
    }
    for p in &passthrough {
        output = output
            .checked_add(p.output_len())
            .ok_or(Error::Overflow("output bytes"))?;
    }
    const RAISE: &str = " (raise it with --max-output-bytes if the file is trusted)";
    at_most(
        "decoded checkpoint bytes",
        output,
        limits.max_output_bytes,
        RAISE,
    )?;
    // DATA after the output bound: its decoded length must be the index's (checked before
    // decompressing), and the index's tensors are part of the bounded output.
    let data_info = sections
        .iter()
        .find(|s| s.tag == TAG_DATA)
        .ok_or(Error::MissingSection("DATA"))?;
    let data_stored = find(TAG_DATA, "DATA")?;
    let (data, data_stride): (Cow<'a, [u8]>, _) = if data_info.encoding == ENCODING_SHUFFLED_ZSTD {
        let declared = passthrough.last().map_or(0, |e| e.offset + e.len);
        if data_info.decoded_len != declared {
            return Err(Error::malformed(
                "DATA",
                format!(
                    "decoded length {}, the index declares {declared}",
                    data_info.decoded_len
                ),
            ));
        }
        let decoded = shuffle::decompress(data_stored, data_info.decoded_len, "DATA")?;
        (Cow::Owned(decoded), Some(data_stored[0]))
    } else {
        (Cow::Borrowed(data_stored), None)
    };
    check_data(&passthrough, &data)?;
    let permutations = parse_permutations(find(TAG_PERMUTATIONS, "PERM")?, &layers)?;

    let meta = match sections.iter().find(|s| s.tag == TAG_METADATA) {
        Some(s) => Some(parse_metadata(find(TAG_METADATA, "META")?, s, limits)?),
        None => None,
    };
    Ok(Container {
        major,
        minor,
        file_len,
        sections,
        predictor,
        layers,
        permutations,
        passthrough,
        coded,
        source_metadata,
        code_layout,
        data,
        data_stride,
        meta,
    })
}

/// The predictor and its code layout.
fn parse_predictor(bytes: &[u8]) -> Result<(Predictor, u8)> {
    let mut r = Reader::new(bytes, "PRED");
    let pe_levels = r.u32()?;
    let coords = r.u8()?;
    let activation = r.u8()?;
    let dtype = r.u8()?;
    let layout = r.u8()?;
    let pe_base = r.f64()?;
    let kernel_size = r.u32()?;
    let depth = r.u32()?;
    // Coordinate convention 1 (format 1.7): learned embedding tables beside the encoding.
    if coords > 1 {
        return Err(r.err(format!("unknown coordinate convention {coords}")));
    }
    if activation != 0 {
        return Err(r.err(format!("unknown activation {activation}")));
    }
    let weight_dtype = WeightDtype::from_code(dtype).ok_or(Error::UnknownPredictorDtype(dtype))?;
    // Code layout (byte 7; reserved, zero, before 1.5): 1 = every layer's codes first, one byte
    // each, then each layer's scales and bias (integer dtypes only).
    let byte_codes = match layout {
        0 => false,
        1 if weight_dtype.max_code().is_some() => true,
        1 => return Err(r.err("code layout 1 needs an integer weight dtype")),
        other => return Err(r.err(format!("unknown code layout {other}"))),
    };
    if pe_levels == 0 || pe_levels > MAX_PE_LEVELS {
        return Err(r.err(format!("pe_levels {pe_levels} outside 1..={MAX_PE_LEVELS}")));
    }
    if !(pe_base.is_finite() && pe_base > 0.0) {
        return Err(r.err("pe_base must be finite and positive"));
    }
    if kernel_size == 0 || kernel_size % 2 == 0 || kernel_size > MAX_KERNEL {
        return Err(r.err(format!(
            "kernel size {kernel_size} (must be odd, 1..={MAX_KERNEL})"
        )));
    }
    if !(2..=MAX_DEPTH).contains(&depth) {
        return Err(r.err(format!("depth {depth} outside 2..={MAX_DEPTH}")));
    }
    let mut widths = Vec::with_capacity(depth as usize + 1);
    for _ in 0..=depth {
        let w = r.u32()?;
        if w == 0 || w > MAX_WIDTH {
            return Err(r.err(format!("width {w} outside 1..={MAX_WIDTH}")));
        }
        widths.push(w);
    }
    let embedding = if coords == 1 {
        let width = r.u32()?;
        let rows = [r.u32()?, r.u32()?];
        if width == 0 || width > MAX_EMBEDDING_WIDTH {
            return Err(r.err(format!(
                "embedding width {width} outside 1..={MAX_EMBEDDING_WIDTH}"
            )));
        }
        if rows.iter().any(|&n| n == 0 || n > MAX_EMBEDDING_ROWS) {
            return Err(r.err(format!(
                "embedding rows {rows:?} outside 1..={MAX_EMBEDDING_ROWS}"
            )));
        }
        Some(Embedding { width, rows })
    } else {
        None
    };
    let inputs = 2 * COORDS as u64 * u64::from(pe_levels)
        + embedding.map_or(0, |e| TABLES as u64 * u64::from(e.width));
    if u64::from(widths[0]) != inputs {
        return Err(r.err(if embedding.is_some() {
            "input width is not 6 * pe_levels + 2 * embedding width"
        } else {
            "input width is not 6 * pe_levels"
        }));
    }
    if widths[depth as usize] != kernel_size * kernel_size {
        return Err(r.err("output width is not kernel_size^2"));
    }
    let config = PredictorConfig {
        pe_levels,
        pe_base,
        kernel_size,
        widths,
        weight_dtype,
        embedding,
    };
    let shapes = config.stored_shapes();
    // Declared parameters must fill the section exactly (bounds the allocation by its size).
    let declared = shapes.iter().try_fold(0u64, |acc, &(i, o)| {
        let (i, o) = (i as u64, o as u64);
        let layer = if byte_codes {
            i.checked_mul(o)?.checked_add(o.checked_mul(8)?)?
        } else {
            weight_dtype.layer_bytes(i, o)?
        };
        acc.checked_add(layer)
    });
    if declared != Some(r.remaining() as u64) {
        return Err(r.err("weight bytes do not match the declared shape"));
    }
    // Layout 1: all codes come first, one byte each, in range for the dtype.
    let mut byte_code_layers = Vec::new();
    if byte_codes {
        let bits = weight_dtype.code_bits().unwrap_or(8);
        let (lo, hi) = (-(1i16 << (bits - 1)), (1i16 << (bits - 1)) - 1);
        for &(i, o) in &shapes {
            let codes: Vec<i8> = r.bytes(i * o)?.iter().map(|&b| b as i8).collect();
            if codes.iter().any(|&c| !(lo..=hi).contains(&i16::from(c))) {
                return Err(r.err(format!(
                    "a code is outside {lo}..={hi}, the range of {}",
                    weight_dtype.name()
                )));
            }
            byte_code_layers.push(codes);
        }
    }
    let mut byte_code_layers = byte_code_layers.into_iter();
    let mut layers = Vec::with_capacity(shapes.len());
    for &(inputs, outputs) in &shapes {
        let (weight, bias, scales) = if weight_dtype.max_code().is_some() {
            let scales = r.f32s(outputs)?;
            if !scales.iter().all(|s| s.is_finite() && *s >= 0.0) {
                return Err(r.err(format!(
                    "{} scale not finite and non-negative",
                    weight_dtype.name()
                )));
            }
            let q = match byte_code_layers.next() {
                Some(q) => q,
                None => {
                    let bits = weight_dtype.code_bits().unwrap_or(8);
                    let n = inputs * outputs;
                    let packed = r.bytes((n * bits as usize).div_ceil(8))?;
                    unpack_codes(packed, n, bits).ok_or_else(|| {
                        r.err(format!(
                            "{} padding bits after the last code are not zero",
                            weight_dtype.name()
                        ))
                    })?
                }
            };
            let weight = dequantize_codes(&q, &scales);
            (weight, r.f32s(outputs)?, scales)
        } else {
            let weight = read_weights(&mut r, inputs * outputs, weight_dtype)?;
            (
                weight,
                read_weights(&mut r, outputs, weight_dtype)?,
                Vec::new(),
            )
        };
        if !weight.iter().chain(&bias).all(|v| v.is_finite()) {
            return Err(Error::NonFinite {
                tensor: "predictor".into(),
            });
        }
        layers.push(LinearWeights {
            inputs,
            outputs,
            weight,
            bias,
            scales,
        });
    }
    r.finish()?;
    let embeddings = layers.split_off(config.depth());
    // A table row is `b + W[r]` (spec §6.1): a sum that overflows is a non-finite input.
    for e in &embeddings {
        let finite = e
            .weight
            .chunks_exact(e.outputs)
            .all(|row| row.iter().zip(&e.bias).all(|(&w, &b)| (b + w).is_finite()));
        if !finite {
            return Err(Error::NonFinite {
                tensor: "predictor embedding table".into(),
            });
        }
    }
    Ok((
        Predictor {
            config,
            layers,
            embeddings,
        },
        layout,
    ))
}

fn read_weights(r: &mut Reader<'_>, n: usize, dtype: WeightDtype) -> Result<Vec<f32>> {
    if dtype == WeightDtype::F32 {
        return r.f32s(n);
    }
    let raw = r.bytes(
        n.checked_mul(2)
            .ok_or(Error::Overflow("predictor weight bytes"))?,
    )?;
    Ok(raw
        .chunks_exact(2)
        .map(|c| {
            let bits = u16::from_le_bytes([c[0], c[1]]);
            match dtype {
                WeightDtype::Bf16 => half::bf16::from_bits(bits).to_f32(),
                _ => half::f16::from_bits(bits).to_f32(),
            }
        })
        .collect())
}

/// The embedding table rows a layer table needs: its filters and its input channels, summed
/// over the predicted layers (spec §5.1).
pub fn embedding_rows(layers: &[LayerEntry]) -> [u64; 2] {
    layers.iter().fold([0, 0], |[f, c], l| {
        [f + u64::from(l.shape[0]), c + u64::from(l.shape[1])]
    })
}

fn parse_layers(bytes: &[u8], cfg: &PredictorConfig, limits: &Limits) -> Result<Vec<LayerEntry>> {
    let mut r = Reader::new(bytes, "LAYR");
    let count = r.u32()?;
    if count == 0 {
        return Err(r.err("no layers"));
    }
    at_most("layer count", u64::from(count), limits.max_tensors, "")?;
    // Each entry takes at least 20 bytes: no allocation beyond what the bytes can hold.
    let mut layers = Vec::with_capacity((count as usize).min(r.remaining() / 20));
    for i in 0..count {
        let name = r.string(false, MAX_NAME_LEN)?;
        if name.is_empty() {
            return Err(r.err(format!("layer {i} has an empty name")));
        }
        let dtype = TensorDtype::from_code(r.u8()?)?;
        let permutation = permutation_kind(r.u8()?)?;
        let shape = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
        if dtype != TensorDtype::F32 {
            return Err(r.err(format!("{name}: predicted tensors are F32 in version 1")));
        }
        if shape[0] == 0 || shape[1] == 0 {
            return Err(r.err(format!("{name}: empty layer")));
        }
        if shape[2] != shape[3] || shape[2] % 2 == 0 || shape[2] > cfg.kernel_size {
            return Err(r.err(format!(
                "{name}: kernel {}x{} is not square, odd and at most the predictor's {}",
                shape[2], shape[3], cfg.kernel_size
            )));
        }
        // Coordinates are u32; kernel counts must fit the address space.
        (u64::from(shape[0]) * u64::from(shape[1]))
            .checked_mul(u64::from(shape[2]) * u64::from(shape[3]))
            .filter(|&e| e <= usize::MAX as u64 / 4)
            .ok_or(Error::Overflow("layer elements"))?;
        layers.push(LayerEntry {
            name,
            dtype,
            permutation,
            shape,
        });
    }
    r.finish()?;
    Ok(layers)
}

type PassIndex = (Vec<PassEntry>, Option<BTreeMap<String, String>>);

fn parse_passthrough(bytes: &[u8], limits: &Limits, layer_count: usize) -> Result<PassIndex> {
    let mut r = Reader::new(bytes, "PASS");
    let count = r.u32()?;
    let has_meta = r.u8()?;
    r.zeros(3, "PASS reserved")?;
    let meta_count = r.u32()?;
    if has_meta > 1 || (has_meta == 0 && meta_count != 0) {
        return Err(r.err("bad metadata flag"));
    }
    at_most(
        "tensor count",
        u64::from(count) + layer_count as u64,
        limits.max_tensors,
        "",
    )?;
    let mut meta = BTreeMap::new();
    for _ in 0..meta_count {
        let k = r.string(true, MAX_META_STRING)?;
        let v = r.string(true, MAX_META_STRING)?;
        if meta
            .keys()
            .next_back()
            .is_some_and(|last: &String| *last >= k)
        {
            return Err(r.err("metadata keys not strictly ascending"));
        }
        meta.insert(k, v);
    }
    let mut entries = Vec::with_capacity((count as usize).min(r.remaining() / 20));
    let mut end = 0u64;
    for _ in 0..count {
        let name = r.string(false, MAX_NAME_LEN)?;
        if name.is_empty() {
            return Err(r.err("empty tensor name"));
        }
        let (dtype, storage) = match r.u8()? {
            DTYPE_CODE_F32_AS_F16 => (TensorDtype::F32, PassStorage::F16),
            code => (TensorDtype::from_code(code)?, PassStorage::Verbatim),
        };
        let stored_size = match storage {
            PassStorage::Verbatim => dtype.size() as u64,
            PassStorage::F16 => 2,
        };
        let ndim = r.u8()?;
        if ndim > MAX_NDIM {
            return Err(r.err(format!("{name}: {ndim} dimensions (at most {MAX_NDIM})")));
        }
        let mut shape = Vec::with_capacity(ndim as usize);
        let mut elements = 1u64;
        for _ in 0..ndim {
            let d = r.u64()?;
            elements = elements
                .checked_mul(d)
                .ok_or(Error::Overflow("tensor elements"))?;
            shape.push(d);
        }
        let offset = r.u64()?;
        let len = r.u64()?;
        let want = elements
            .checked_mul(stored_size)
            .ok_or(Error::Overflow("tensor bytes"))?;
        if len != want {
            return Err(r.err(format!(
                "{name}: {len} bytes stored, shape {shape:?} x {} needs {want}",
                dtype.name()
            )));
        }
        let canonical = align_up(end, TENSOR_ALIGN).ok_or(Error::Overflow("DATA offset"))?;
        if offset != canonical {
            return Err(r.err(format!(
                "{name}: offset {offset}, canonical offset is {canonical}"
            )));
        }
        end = offset.checked_add(len).ok_or(Error::Overflow("DATA end"))?;
        entries.push(PassEntry {
            name,
            dtype,
            storage,
            shape,
            offset,
            len,
        });
    }
    r.finish()?;
    Ok((entries, (has_meta == 1).then_some(meta)))
}

fn check_data(entries: &[PassEntry], data: &[u8]) -> Result<()> {
    let end = entries.last().map_or(0, |e| e.offset + e.len);
    if end != data.len() as u64 {
        return Err(Error::malformed(
            "DATA",
            format!("{} bytes, the index declares {end}", data.len()),
        ));
    }
    let mut prev = 0u64;
    for e in entries {
        if data[prev as usize..e.offset as usize]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(Error::malformed("DATA", "non-zero padding"));
        }
        prev = e.offset + e.len;
    }
    Ok(())
}

fn parse_permutations(bytes: &[u8], layers: &[LayerEntry]) -> Result<Vec<Permutation>> {
    let mut expected = 0u64;
    for l in layers {
        let b = permutation_bytes(l.permutation, l.cout() as u64, l.cin() as u64)
            .ok_or(Error::Overflow("permutation bytes"))?;
        expected = expected
            .checked_add(b)
            .ok_or(Error::Overflow("permutation bytes"))?;
    }
    if expected != bytes.len() as u64 {
        return Err(Error::malformed(
            "PERM",
            format!("{} bytes, the layer table needs {expected}", bytes.len()),
        ));
    }
    let mut r = Reader::new(bytes, "PERM");
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        let bad = |e: Error| match e {
            Error::InvalidPermutation { .. } => Error::InvalidPermutation {
                layer: l.name.clone(),
            },
            other => other,
        };
        let (cout, cin) = (l.cout() as u64, l.cin() as u64);
        let block = |r: &mut Reader, count: u64, n: u64| -> Result<Vec<u32>> {
            let len = (count * u64::from(bit_width(n))).div_ceil(8) as usize;
            unpack_permutation(r.bytes(len)?, count as usize, n).map_err(bad)
        };
        out.push(match l.permutation {
            PermutationKind::None => Permutation::Identity,
            PermutationKind::InFilter => {
                let filters = block(&mut r, cout, cout)?;
                let mut channels = Vec::with_capacity(l.kernels());
                for _ in 0..cout {
                    channels.extend(block(&mut r, cin, cin)?);
                }
                Permutation::InFilter { filters, channels }
            }
            PermutationKind::CrossFilter => Permutation::CrossFilter {
                kernels: block(&mut r, cout * cin, cout * cin)?,
            },
        });
    }
    r.finish()?;
    Ok(out)
}

/// What a registry needs from a `.nern` without decoding it: the header, the section table and
/// the provenance (`META`), read with at most two ranged reads from the start of the file.
#[derive(Debug)]
pub struct Provenance {
    pub major: u16,
    pub minor: u16,
    pub file_len: u64,
    pub sections: Vec<SectionInfo>,
    /// `META`, decoded, hash-checked and validated as a JSON object; `None` when absent.
    pub metadata: Option<serde_json::Value>,
    /// Bytes fetched to learn all this.
    pub bytes_read: u64,
    /// Ranged reads made (1 when `META` lies within the first read, as nernc writes it).
    pub reads: u32,
}

/// Bytes the first ranged read asks for: the largest possible header and table (64 sections,
/// 4,160 bytes) plus room for the provenance nernc writes right after it (about 2 KB
/// compressed). What `read_provenance` reads is at most this plus `META`'s stored length,
/// whatever the file's size.
pub const PROVENANCE_FIRST_READ: u64 = 8 * 1024;

/// Reads the provenance through `fetch(start, len)` (a ranged read, e.g. an HTTP range request
/// or a file seek): first `PROVENANCE_FIRST_READ` bytes (or the whole object if shorter), then
/// `META`'s range if it lies beyond. `object_len` is the size the store reports, checked
/// against the header (spec §4 step 3). The table is checked as `read_container` checks it (§4
/// steps 1-4) except for the bytes of other sections, which are not read: their hashes are
/// `read_container`'s business. `META`'s hash is checked.
pub fn read_provenance(
    object_len: u64,
    limits: &Limits,
    fetch: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<Provenance> {
    let first_len = object_len.min(PROVENANCE_FIRST_READ);
    let first = fetch(0, first_len)?;
    if first.len() as u64 != first_len {
        return Err(Error::Truncated {
            what: "first ranged read",
            needed: first_len,
            available: first.len() as u64,
        });
    }
    let h = parse_header(&first)?;
    check_file_length(object_len, h.file_len)?;
    let mut t = Reader::new(&first[HEADER_LEN..h.table_len], "section table");
    let mut sections = Vec::with_capacity(h.count as usize);
    let mut end = h.table_end as u64;
    let mut seen = HashSet::new();
    for _ in 0..h.count {
        let (info, sec_end) = next_entry(&mut t, end, h.file_len, &mut seen)?;
        check_encoding(&info)?;
        if known_tag(&info.tag).is_none() && info.flags & FLAG_REQUIRED != 0 {
            return Err(Error::UnknownRequiredSection {
                tag: info.tag_str(),
            });
        }
        end = sec_end;
        sections.push(info);
    }
    if end != h.file_len {
        return Err(Error::SectionLayout(format!(
            "{} bytes after the last section",
            h.file_len - end
        )));
    }
    let mut bytes_read = first_len;
    let mut reads = 1;
    let metadata = match sections.iter().find(|s| s.tag == TAG_METADATA) {
        None => None,
        Some(info) => {
            let (start, len) = (info.offset, info.stored_len);
            // The same bound read_container applies, before fetching anything.
            at_most(
                "META decoded bytes",
                info.decoded_len,
                limits.max_metadata_bytes,
                "",
            )?;
            let fetched;
            let stored = if start + len <= first_len {
                &first[start as usize..(start + len) as usize]
            } else {
                fetched = fetch(start, len)?;
                bytes_read += len;
                reads += 1;
                if fetched.len() as u64 != len {
                    return Err(Error::Truncated {
                        what: "META",
                        needed: len,
                        available: fetched.len() as u64,
                    });
                }
                &fetched[..]
            };
            if blake3::hash(stored).as_bytes() != &info.hash {
                return Err(Error::SectionHashMismatch {
                    tag: info.tag_str(),
                });
            }
            Some(parse_metadata(stored, info, limits)?)
        }
    };
    Ok(Provenance {
        major: h.major,
        minor: h.minor,
        file_len: h.file_len,
        sections,
        metadata,
        bytes_read,
        reads,
    })
}
