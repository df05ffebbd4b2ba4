//! An independent re-implementation of the v1 layout (spec §1-3) to craft corrupted files whose
//! hashes are nevertheless valid, so that structural checks are reached.

pub struct Entry {
    pub tag: [u8; 4],
    pub flags: u16,
    pub encoding: u8,
    pub decoded_len: u64,
    pub payload: Vec<u8>,
}

pub fn split(bytes: &[u8]) -> Vec<Entry> {
    let n = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    (0..n)
        .map(|i| {
            let e = &bytes[32 + 64 * i..32 + 64 * (i + 1)];
            let off = u64::from_le_bytes(e[8..16].try_into().unwrap()) as usize;
            let len = u64::from_le_bytes(e[16..24].try_into().unwrap()) as usize;
            Entry {
                tag: e[0..4].try_into().unwrap(),
                flags: u16::from_le_bytes(e[4..6].try_into().unwrap()),
                encoding: e[6],
                decoded_len: u64::from_le_bytes(e[24..32].try_into().unwrap()),
                payload: bytes[off..off + len].to_vec(),
            }
        })
        .collect()
}

/// Canonical layout of `entries` with correct hashes; `tweak` may edit each table entry
/// (64 bytes, hash already set) before the header hash is computed.
pub fn assemble_with(entries: &[Entry], mut tweak: impl FnMut(usize, &mut [u8])) -> Vec<u8> {
    let table_end = 32 + 64 * entries.len() + 32;
    let mut offsets = Vec::new();
    let mut end = table_end;
    for e in entries {
        let off = end.div_ceil(64) * 64;
        offsets.push(off);
        end = off + e.payload.len();
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"\x89NERN\r\n\x1a");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&minor_version(entries).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(end as u64).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    for (i, (e, &off)) in entries.iter().zip(&offsets).enumerate() {
        let mut row = Vec::with_capacity(64);
        row.extend_from_slice(&e.tag);
        row.extend_from_slice(&e.flags.to_le_bytes());
        row.push(e.encoding);
        row.push(0);
        row.extend_from_slice(&(off as u64).to_le_bytes());
        row.extend_from_slice(&(e.payload.len() as u64).to_le_bytes());
        // Raw sections: the decoded length follows the payload.
        let decoded = if e.encoding == 0 {
            e.payload.len() as u64
        } else {
            e.decoded_len
        };
        row.extend_from_slice(&decoded.to_le_bytes());
        row.extend_from_slice(blake3::hash(&e.payload).as_bytes());
        tweak(i, &mut row);
        out.extend_from_slice(&row);
    }
    let h = blake3::hash(&out);
    out.extend_from_slice(h.as_bytes());
    for (e, &off) in entries.iter().zip(&offsets) {
        out.resize(off, 0);
        out.extend_from_slice(&e.payload);
    }
    out
}

pub fn assemble(entries: &[Entry]) -> Vec<u8> {
    assemble_with(entries, |_, _| {})
}

/// Recomputes the header hash after the header or table was edited in place.
pub fn rehash_header(bytes: &mut [u8]) {
    let n = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let t = 32 + 64 * n;
    let h = blake3::hash(&bytes[..t]);
    bytes[t..t + 32].copy_from_slice(h.as_bytes());
}

/// The entry with `tag`; a zstd `PRED` (format 1.2), `LAYR` or `PASS` (1.4) or a shuffled zstd
/// `DATA` (1.6) is decoded to raw first, so tests edit the layouts of spec §5 directly.
pub fn find<'a>(entries: &'a mut [Entry], tag: &[u8; 4]) -> &'a mut Entry {
    let e = entries.iter_mut().find(|e| &e.tag == tag).unwrap();
    if matches!(&e.tag, b"PRED" | b"LAYR" | b"PASS" | b"CODE") && e.encoding == 1 {
        e.payload = zstd::bulk::decompress(&e.payload, e.decoded_len as usize).unwrap();
        e.encoding = 0;
        e.decoded_len = e.payload.len() as u64;
    }
    if &e.tag == b"DATA" && e.encoding == 2 {
        e.payload = unshuffled_zstd(&e.payload, e.decoded_len as usize);
        e.encoding = 0;
    }
    e
}

/// Spec §3 encoding 2 (format 1.6), written from the spec: the stride byte `s`, then zstd frames
/// of `payload` with byte `j` of every whole `s`-byte element grouped, `j = 0 .. s`, and the
/// bytes after the last whole element at the end in order.
pub fn shuffled_zstd(payload: &[u8], s: u8) -> Vec<u8> {
    let s = s.max(1) as usize;
    let whole = payload.len() / s;
    let mut planes = Vec::with_capacity(payload.len());
    for j in 0..s {
        for i in 0..whole {
            planes.push(payload[i * s + j]);
        }
    }
    planes.extend_from_slice(&payload[whole * s..]);
    let mut out = vec![s as u8];
    out.extend(zstd::bulk::compress(&planes, 3).unwrap());
    out
}

/// The inverse of [`shuffled_zstd`] (the decoded length as declared).
pub fn unshuffled_zstd(stored: &[u8], decoded_len: usize) -> Vec<u8> {
    let s = stored[0] as usize;
    let planes = zstd::bulk::decompress(&stored[1..], decoded_len).unwrap();
    let whole = planes.len() / s;
    let mut out = planes.clone();
    for j in 0..s {
        for i in 0..whole {
            out[i * s + j] = planes[j * whole + i];
        }
    }
    out
}

/// The lowest minor version describing `entries` (spec §2): 6 with a shuffled zstd `DATA`
/// (encoding 2), 4 with an int6 or int5 predictor
/// (dtype codes 5, 6 at byte 6 of a raw `PRED`) or a zstd `LAYR`/`PASS`, 3 with an int4
/// predictor (code 4), 2 with a zstd `PRED`, 1 with an int8 predictor (code 3), else 0.
fn minor_version(entries: &[Entry]) -> u16 {
    if entries.iter().any(|e| &e.tag == b"DATA" && e.encoding == 2) {
        return 6;
    }
    let zstd_table = entries
        .iter()
        .any(|e| matches!(&e.tag, b"LAYR" | b"PASS") && e.encoding == 1);
    if zstd_table {
        return 4;
    }
    match entries.iter().find(|e| &e.tag == b"PRED") {
        Some(p) if p.encoding == 0 && matches!(p.payload.get(6), Some(&5) | Some(&6)) => 4,
        Some(p) if p.encoding == 0 && p.payload.get(6) == Some(&4) => 3,
        Some(p) if p.encoding == 1 => 2,
        Some(p) if p.payload.get(6) == Some(&3) => 1,
        _ => 0,
    }
}
