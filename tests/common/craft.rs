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

/// The entry with `tag`; a zstd `PRED` (format 1.2), `LAYR` or `PASS` (1.4) is decompressed to
/// raw first, so tests edit the layouts of spec §5 directly.
pub fn find<'a>(entries: &'a mut [Entry], tag: &[u8; 4]) -> &'a mut Entry {
    let e = entries.iter_mut().find(|e| &e.tag == tag).unwrap();
    if matches!(&e.tag, b"PRED" | b"LAYR" | b"PASS") && e.encoding == 1 {
        e.payload = zstd::bulk::decompress(&e.payload, e.decoded_len as usize).unwrap();
        e.encoding = 0;
        e.decoded_len = e.payload.len() as u64;
    }
    e
}

/// The lowest minor version describing `entries` (spec §2): 4 with an int6 or int5 predictor
/// (dtype codes 5, 6 at byte 6 of a raw `PRED`) or a zstd `LAYR`/`PASS`, 3 with an int4
/// predictor (code 4), 2 with a zstd `PRED`, 1 with an int8 predictor (code 3), else 0.
fn minor_version(entries: &[Entry]) -> u16 {
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
