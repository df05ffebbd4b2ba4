//! Plain per-output-channel quantisation of a checkpoint's conv weights: what a user can do in
//! one call instead of a learned codec, so the bar nernc has to clear on their model.
//!
//! The recipe is the one of `../shared/bench/baselines.py` (and of the fixtures' README table):
//! every 4-D tensor is quantised per output channel, symmetric, round to nearest (ties to even,
//! as `torch.round`), `q = 2^(bits-1) - 1`, scale `max|w| / q` (at least 1e-12); the stored size
//! is zstd level 19 of the codes (one byte each) followed by the fp16 scales, plus zstd level 19
//! of every other tensor as a safetensors file.

use crate::checkpoint::{Checkpoint, OutBytes, OutTensor, safetensors_bytes};
use crate::error::{Error, Result};

/// zstd level of the stored-size figure (the baseline's).
const ZSTD_LEVEL: i32 = 19;

/// Bits per quantised conv weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum QuantBits {
    Int8,
    Int4,
    /// Codes -3..=3 (the size recipe still spends a byte per code before zstd, as
    /// `baselines.py` does: zstd takes it near the codes' entropy).
    Int3,
    /// Codes -1..=1 (ternary).
    Int2,
}

impl QuantBits {
    pub fn bits(self) -> u32 {
        match self {
            QuantBits::Int8 => 8,
            QuantBits::Int4 => 4,
            QuantBits::Int3 => 3,
            QuantBits::Int2 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantBits::Int8 => "int8",
            QuantBits::Int4 => "int4",
            QuantBits::Int3 => "int3",
            QuantBits::Int2 => "int2",
        }
    }

    /// Largest code magnitude.
    fn max_code(self) -> f32 {
        ((1u32 << (self.bits() - 1)) - 1) as f32
    }
}

/// Codes and scales of one `[cout, ...]` tensor, quantised per output channel.
pub fn quantize_channels(w: &[f32], cout: usize, bits: QuantBits) -> (Vec<i8>, Vec<f32>) {
    let q = bits.max_code();
    let per = w.len() / cout.max(1);
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(cout);
    for row in w.chunks_exact(per.max(1)).take(cout) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = max.max(1e-12) / q;
        scales.push(s);
        codes.extend(
            row.iter()
                .map(|v| (v / s).round_ties_even().clamp(-q, q) as i8),
        );
    }
    (codes, scales)
}

/// The weights a quantised tensor stands for: `code * scale`.
pub fn dequantize_channels(codes: &[i8], scales: &[f32]) -> Vec<f32> {
    let per = codes.len() / scales.len().max(1);
    codes
        .chunks_exact(per.max(1))
        .zip(scales)
        .flat_map(|(row, &s)| row.iter().map(move |&c| f32::from(c) * s))
        .collect()
}

/// What the baseline stores for a checkpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizedSize {
    pub method: String,
    pub bytes: u64,
    pub source_bytes: u64,
    /// `bytes` as a percentage of the source file.
    pub percent: f64,
}

/// The checkpoint's 4-D tensors: names, output channels and their F32 values.
fn conv_tensors(ck: &Checkpoint<'_>) -> Result<Vec<(String, usize, Vec<f32>)>> {
    ck.tensors
        .iter()
        .filter(|t| t.shape.len() == 4)
        .map(|t| {
            let values = crate::checkpoint::f32_values(t)?;
            Ok((t.name.clone(), t.shape[0] as usize, values))
        })
        .collect()
}

/// Tensor names with their values.
pub type NamedWeights = Vec<(String, Vec<f32>)>;

/// The baseline for `ck` (the file it came from has `source_bytes`): what it stores, and the
/// dequantised weights of every 4-D tensor, by name (each tensor decoded and quantised once).
pub fn quantize(
    ck: &Checkpoint<'_>,
    source_bytes: u64,
    bits: QuantBits,
) -> Result<(QuantizedSize, NamedWeights)> {
    let zstd = |bytes: &[u8]| -> Result<usize> {
        zstd::bulk::compress(bytes, ZSTD_LEVEL)
            .map(|c| c.len())
            .map_err(|e| Error::InvalidArgument(format!("zstd: {e}")))
    };
    let mut payload = Vec::new();
    let mut weights = Vec::new();
    for (name, cout, w) in conv_tensors(ck)? {
        let (codes, scales) = quantize_channels(&w, cout, bits);
        payload.extend(codes.iter().map(|&c| c as u8));
        payload.extend(
            scales
                .iter()
                .flat_map(|&s| half::f16::from_f32(s).to_le_bytes()),
        );
        weights.push((name, dequantize_channels(&codes, &scales)));
    }
    let rest: Vec<(String, OutTensor<'_>)> = ck
        .tensors
        .iter()
        .filter(|t| t.shape.len() != 4)
        .map(|t| {
            let tensor = OutTensor {
                dtype: t.dtype,
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                bytes: OutBytes::Raw(t.bytes),
            };
            (t.name.clone(), tensor)
        })
        .collect();
    let bytes = (zstd(&payload)? + zstd(&safetensors_bytes(&rest, None)?)?) as u64;
    let size = QuantizedSize {
        method: format!("{} per-channel conv + zstd-{ZSTD_LEVEL}", bits.name()),
        bytes,
        source_bytes,
        percent: 100.0 * bytes as f64 / source_bytes.max(1) as f64,
    };
    Ok((size, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_ties_to_even_and_clamp_per_channel() {
        // Channel 0: max 7 -> scale 1 for int4; 2.5 rounds to 2, -3.5 to -4.
        // Channel 1: all zero -> scale 1e-12 / 7, codes 0.
        let w = [7.0, 2.5, -3.5, 0.5, 0.0, 0.0, 0.0, 0.0];
        let (codes, scales) = quantize_channels(&w, 2, QuantBits::Int4);
        assert_eq!(codes, [7, 2, -4, 0, 0, 0, 0, 0]);
        assert_eq!(scales[0], 1.0);
        assert_eq!(scales[1], 1e-12 / 7.0);
        assert_eq!(
            dequantize_channels(&codes, &scales)[..4],
            [7.0, 2.0, -4.0, 0.0]
        );
        // int8: max maps to 127 exactly, the sign is kept.
        let (codes, scales) = quantize_channels(&[-2.0, 1.0, 0.01, 0.0], 1, QuantBits::Int8);
        assert_eq!(codes[0], -127);
        assert_eq!(codes[1], 64); // 63.5 ties to even
        assert_eq!(codes[2], 1);
        assert_eq!(scales[0], 2.0 / 127.0);
    }

    /// The fixtures' README records 11.2 % (int4) and 23.7 % (int8) for ResNet-20 with the same
    /// recipe in Python; the safetensors framing of the other tensors differs by a few bytes.
    #[test]
    fn resnet20_sizes_match_the_recorded_baseline() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/fmnist-resnet20.safetensors"
        ));
        let file = crate::io::MappedFile::open(path).unwrap();
        let ck = crate::checkpoint::parse_safetensors(path, file.bytes()).unwrap();
        let n = file.bytes().len() as u64;
        let int4 = quantize(&ck, n, QuantBits::Int4).unwrap().0;
        let int8 = quantize(&ck, n, QuantBits::Int8).unwrap().0;
        assert!((int4.percent - 11.2).abs() < 0.1, "int4 {}", int4.percent);
        assert!((int8.percent - 23.7).abs() < 0.1, "int8 {}", int8.percent);
    }
}
