//! The byte shuffle of section encoding 2 (spec §3, format 1.6): bytes regrouped by their
//! position inside `stride`-byte elements, so that zstd sees the sign/exponent bytes of every
//! float together and the noisy low mantissa bytes together. `DATA` of ResNet-20 (F32 BatchNorm
//! and classifier tensors) compresses to 12,412 bytes this way against 13,832 with zstd alone.

use crate::error::{Error, Result};

/// Largest stride a file may use (one element of the widest dtype, 8 bytes).
pub const MAX_STRIDE: u8 = 8;

/// Strides the writer tries (1: plain zstd), keeping the smallest result.
pub const WRITER_STRIDES: [u8; 4] = [1, 2, 4, 8];

/// `bytes` regrouped: byte `j` of every whole `stride`-byte element for `j = 0 .. stride`, then
/// the `len mod stride` bytes after the last whole element, in order.
pub fn shuffle(bytes: &[u8], stride: usize) -> Vec<u8> {
    let stride = stride.max(1);
    let whole = bytes.len() / stride * stride;
    let mut out = Vec::with_capacity(bytes.len());
    for j in 0..stride {
        out.extend(bytes[..whole].iter().skip(j).step_by(stride));
    }
    out.extend_from_slice(&bytes[whole..]);
    out
}

/// The inverse of [`shuffle`] for the same stride.
pub fn unshuffle(shuffled: &[u8], stride: usize) -> Vec<u8> {
    let stride = stride.max(1);
    let n = shuffled.len() / stride;
    let whole = n * stride;
    let mut out = vec![0u8; shuffled.len()];
    for (j, plane) in shuffled[..whole].chunks_exact(n.max(1)).enumerate() {
        for (i, &b) in plane.iter().enumerate() {
            out[i * stride + j] = b;
        }
    }
    out[whole..].copy_from_slice(&shuffled[whole..]);
    out
}

/// Payloads up to this length try every stride of [`WRITER_STRIDES`] on the whole payload.
/// Longer ones (a large classifier in the passthrough) choose the stride on a sample and compress
/// once: zstd level 19 runs at about 2-4 MB/s on float bytes, so four full tries of a 100 MB
/// payload would cost minutes.
pub const FULL_TRY_LIMIT: usize = 4 << 20;

/// The sample a long payload's stride is chosen on: `SAMPLE_CHUNKS` evenly spaced chunks of
/// `SAMPLE_CHUNK` bytes, each starting at a multiple of 8 so every stride sees whole elements.
const SAMPLE_CHUNKS: usize = 16;
const SAMPLE_CHUNK: usize = 64 << 10;

/// A section's payload in encoding 2: the stride byte, then `shuffle(payload)` as zstd frames
/// (level 19). Up to [`FULL_TRY_LIMIT`] bytes the smallest over [`WRITER_STRIDES`]; beyond, the
/// stride that compresses a sample best.
pub fn compress(payload: &[u8]) -> Result<Vec<u8>> {
    compress_within(payload, FULL_TRY_LIMIT)
}

/// [`compress`] trying every stride on the whole payload whatever its length (what the writer
/// did before [`FULL_TRY_LIMIT`]; the benchmark's and the tests' reference).
pub fn compress_trying_every_stride(payload: &[u8]) -> Result<Vec<u8>> {
    compress_within(payload, usize::MAX)
}

fn compress_within(payload: &[u8], full_try_limit: usize) -> Result<Vec<u8>> {
    debug_assert!(full_try_limit >= SAMPLE_CHUNKS * SAMPLE_CHUNK);
    let strides: Vec<u8> = if payload.len() <= full_try_limit {
        WRITER_STRIDES.to_vec()
    } else {
        vec![sampled_stride(payload)?]
    };
    let mut best: Option<Vec<u8>> = None;
    for stride in strides {
        let packed = shuffled_zstd(payload, stride)?;
        if best.as_ref().is_none_or(|b| packed.len() + 1 < b.len()) {
            let mut stored = Vec::with_capacity(packed.len() + 1);
            stored.push(stride);
            stored.extend_from_slice(&packed);
            best = Some(stored);
        }
    }
    Ok(best.unwrap_or_default())
}

fn shuffled_zstd(payload: &[u8], stride: u8) -> Result<Vec<u8>> {
    zstd::bulk::compress(&shuffle(payload, stride as usize), 19).map_err(|e| Error::io("<zstd>", e))
}

/// The stride of [`WRITER_STRIDES`] whose shuffle of a sample of `payload` compresses smallest
/// (the first on ties).
fn sampled_stride(payload: &[u8]) -> Result<u8> {
    let gap = (payload.len() - SAMPLE_CHUNK) / (SAMPLE_CHUNKS - 1) / 8 * 8;
    let mut sample = Vec::with_capacity(SAMPLE_CHUNKS * SAMPLE_CHUNK);
    for i in 0..SAMPLE_CHUNKS {
        sample.extend_from_slice(&payload[i * gap..i * gap + SAMPLE_CHUNK]);
    }
    let mut best = (usize::MAX, WRITER_STRIDES[0]);
    for stride in WRITER_STRIDES {
        let len = shuffled_zstd(&sample, stride)?.len();
        if len < best.0 {
            best = (len, stride);
        }
    }
    Ok(best.1)
}

/// Decodes an encoding-2 payload of section `name` to exactly `decoded_len` bytes (the caller
/// has checked that length against its limits): the stride byte in `1 ..= MAX_STRIDE`, valid zstd
/// decoding to that length, unshuffled.
pub fn decompress(stored: &[u8], decoded_len: u64, name: &'static str) -> Result<Vec<u8>> {
    let (&stride, frames) = stored
        .split_first()
        .ok_or_else(|| Error::malformed(name, "shuffled zstd: no stride byte"))?;
    if !(1..=MAX_STRIDE).contains(&stride) {
        return Err(Error::malformed(
            name,
            format!("shuffled zstd: stride {stride} (must be 1..={MAX_STRIDE})"),
        ));
    }
    let decoded = super::zstd_exact(frames, decoded_len, name)?;
    Ok(unshuffle(&decoded, stride as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_groups_bytes_by_position_and_keeps_the_tail() {
        let b: Vec<u8> = (0..11).collect();
        assert_eq!(shuffle(&b, 4), [0, 4, 1, 5, 2, 6, 3, 7, 8, 9, 10]);
        assert_eq!(shuffle(&b, 2), [0, 2, 4, 6, 8, 1, 3, 5, 7, 9, 10]);
        assert_eq!(shuffle(&b, 1), b);
        // Shorter than one element: all tail.
        assert_eq!(shuffle(&b[..3], 8), [0, 1, 2]);
    }

    #[test]
    fn unshuffle_inverts_shuffle_for_every_stride_and_length() {
        for len in 0..40usize {
            let b: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            for stride in 1..=MAX_STRIDE as usize {
                assert_eq!(unshuffle(&shuffle(&b, stride), stride), b, "{len} {stride}");
            }
        }
    }

    #[test]
    fn compress_round_trips_and_picks_the_float_stride() {
        let floats: Vec<u8> = (0..512)
            .flat_map(|i| (1.0f32 + i as f32 * 1e-3).to_le_bytes())
            .collect();
        let stored = compress(&floats).unwrap();
        assert_eq!(stored[0], 4, "f32 values compress best by 4-byte planes");
        assert_eq!(
            decompress(&stored, floats.len() as u64, "DATA").unwrap(),
            floats
        );
        assert!(compress(&[]).is_ok_and(|s| decompress(&s, 0, "DATA").unwrap().is_empty()));
    }

    #[test]
    fn a_long_payload_takes_the_stride_its_sample_prefers() {
        // binary16-like elements: a smooth high byte and a noisy low byte favour stride 2.
        let mut state = 1u32;
        let halves: Vec<u8> = (0..700_000u32)
            .flat_map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                [(state >> 24) as u8, 0x3c + (i / 50_000) as u8]
            })
            .collect();
        let limit = SAMPLE_CHUNKS * SAMPLE_CHUNK;
        assert!(halves.len() > limit);
        let sampled = compress_within(&halves, limit).unwrap();
        let full = compress_trying_every_stride(&halves).unwrap();
        assert_eq!(sampled[0], 2);
        assert_eq!(sampled, full, "the sample chose what full tries choose");
        assert_eq!(
            decompress(&sampled, halves.len() as u64, "DATA").unwrap(),
            halves
        );
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        let stored = compress(&[7u8; 100]).unwrap();
        let malformed = |s: &[u8], len: u64, needle: &str| match decompress(s, len, "DATA") {
            Err(Error::Malformed { section, detail }) => {
                assert_eq!(section, "DATA");
                assert!(detail.contains(needle), "{detail}");
            }
            other => panic!("{other:?}"),
        };
        malformed(&[], 0, "stride byte");
        for bad in [0u8, MAX_STRIDE + 1, 0xff] {
            let mut s = stored.clone();
            s[0] = bad;
            malformed(&s, 100, "stride");
        }
        malformed(&stored, 99, "zstd");
        malformed(&stored, 101, "decoded to 100");
        malformed(&stored[..stored.len() - 2], 100, "zstd");
    }
}
