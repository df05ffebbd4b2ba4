//! `CODE` (format 1.8, spec §5.6): conv weights stored as integer codes instead of predicted,
//! each whole or as the product of two coded factors. Parsing checks every count, length and
//! code against the bytes present; the arithmetic that turns codes into weights is the
//! decoder's (`crate::decode::coded`).

use super::bytes::{Reader, Writer};
use super::read::{MAX_NAME_LEN, at_most};
use crate::error::{Error, Result};
use crate::predictor::{F16_MIN_NORMAL, dequantize_codes, int_codes};

/// Widest and narrowest code a `CODE` entry may declare.
pub const MIN_CODE_BITS: u8 = 2;
pub const MAX_CODE_BITS: u8 = 8;
/// Largest kernel side of a coded conv (as for predicted layers).
const MAX_KERNEL: u32 = 31;

/// A matrix of signed codes with one scale per row: entry `[i][j]` is `f32(code) * scale[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CodedMatrix {
    pub rows: usize,
    pub cols: usize,
    /// One per row, finite and `>= 0`.
    pub scales: Vec<f32>,
    /// `rows * cols` codes, row-major.
    pub codes: Vec<i8>,
}

impl CodedMatrix {
    /// Codes of `values` (`rows x cols`, row-major) at `bits`: symmetric per row, scale
    /// `max|row| / (2^(bits-1) - 1)` rounded to binary16 (kept as f32; a row whose scale would
    /// fall under binary16's smallest normal keeps its f32 scale), codes rounded to nearest even.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, bits: u8) -> Self {
        let qmax = f32::from((1u8 << (bits - 1)) - 1);
        let mut scales = Vec::with_capacity(rows);
        let mut codes = Vec::with_capacity(rows * cols);
        for row in values.chunks_exact(cols.max(1)).take(rows) {
            let exact = row.iter().fold(0f32, |m, v| m.max(v.abs())) / qmax;
            let half = half::f16::from_f32(exact).to_f32();
            let scale = if exact >= F16_MIN_NORMAL && half.is_finite() {
                half
            } else {
                exact
            };
            scales.push(scale);
            // The predictor's rounding, with the row's one scale for every column.
            codes.extend(int_codes(row, &[scale], qmax));
        }
        CodedMatrix {
            rows,
            cols,
            scales,
            codes,
        }
    }

    /// The matrix's values: each code times its row's scale, one binary32 product.
    pub fn values(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.codes.len());
        for (row, &s) in self.codes.chunks_exact(self.cols.max(1)).zip(&self.scales) {
            out.extend(dequantize_codes(row, &[s]));
        }
        out
    }
}

/// One coded conv weight of `CODE`.
#[derive(Clone, Debug, PartialEq)]
pub struct CodedTensor {
    pub name: String,
    /// `[cout, cin, kh, kw]`; decoded as F32.
    pub shape: [u32; 4],
    /// Bits per code, `2 ..= 8`: every code lies in `-2^(bits-1) ..= 2^(bits-1) - 1`.
    pub bits: u8,
    /// `0`: the weight itself, one matrix `cout x (cin kh kw)`; `r > 0`: two matrices, `U`
    /// (`cout x r`) and `V` (`r x cin kh kw`), the weight being `U V`.
    pub rank: u32,
    pub matrices: Vec<CodedMatrix>,
}

impl CodedTensor {
    pub fn cout(&self) -> usize {
        self.shape[0] as usize
    }
    /// Columns of the weight as a matrix: `cin kh kw`.
    pub fn cols(&self) -> usize {
        (self.shape[1] * self.shape[2] * self.shape[3]) as usize
    }
    pub fn elements(&self) -> usize {
        self.cout() * self.cols()
    }
    /// Codes stored (what the file's size grows with).
    pub fn codes(&self) -> usize {
        self.matrices.iter().map(|m| m.codes.len()).sum()
    }
    /// The matrices' shapes `(rows, cols)` the entry's header declares.
    fn matrix_shapes(&self) -> Vec<(usize, usize)> {
        matrix_shapes(self.cout(), self.cols(), self.rank as usize)
    }
}

fn matrix_shapes(cout: usize, cols: usize, rank: usize) -> Vec<(usize, usize)> {
    if rank == 0 {
        vec![(cout, cols)]
    } else {
        vec![(cout, rank), (rank, cols)]
    }
}

/// `CODE`'s decoded bytes for `tensors` (spec §5.6): the entry table, then each entry's
/// matrices in order, each as its scales then its codes.
pub fn write_coded(tensors: &[CodedTensor]) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    w.u32(tensors.len() as u32);
    for t in tensors {
        if t.name.is_empty() || t.name.len() > MAX_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "coded tensor name of {} bytes (must be 1..={MAX_NAME_LEN})",
                t.name.len()
            )));
        }
        let shapes = t.matrix_shapes();
        let fits = t.matrices.len() == shapes.len()
            && t.matrices.iter().zip(&shapes).all(|(m, &(r, c))| {
                m.rows == r && m.cols == c && m.scales.len() == r && m.codes.len() == r * c
            });
        if !fits || !(MIN_CODE_BITS..=MAX_CODE_BITS).contains(&t.bits) {
            return Err(Error::InvalidArgument(format!(
                "{}: coded matrices do not match shape {:?}, rank {} and {} bits",
                t.name, t.shape, t.rank, t.bits
            )));
        }
        w.string(&t.name, false);
        w.u8(t.bits);
        w.u8(0);
        for d in t.shape {
            w.u32(d);
        }
        w.u32(t.rank);
    }
    for t in tensors {
        for m in &t.matrices {
            w.f32s(&m.scales);
            w.bytes(&m.codes.iter().map(|&q| q as u8).collect::<Vec<_>>());
        }
    }
    Ok(w.buf)
}

/// Parses `CODE`'s decoded bytes. `max_tensors` bounds the entry count, `max_elements` the
/// weights the entries decode to (checked before anything proportional is allocated).
pub fn parse_coded(bytes: &[u8], max_tensors: u64, max_elements: u64) -> Result<Vec<CodedTensor>> {
    let mut r = Reader::new(bytes, "CODE");
    let count = r.u32()?;
    if count == 0 {
        return Err(r.err("no coded tensors (a file without any has no CODE section)"));
    }
    at_most("tensor count", u64::from(count), max_tensors, "")?;
    // Each entry header takes at least 25 bytes: no allocation beyond what the bytes can hold.
    let mut heads = Vec::with_capacity((count as usize).min(r.remaining() / 25));
    let mut elements = 0u64;
    for i in 0..count {
        let name = r.string(false, MAX_NAME_LEN)?;
        if name.is_empty() {
            return Err(r.err(format!("coded tensor {i} has an empty name")));
        }
        let bits = r.u8()?;
        r.zeros(1, "CODE entry reserved")?;
        let shape = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
        let rank = r.u32()?;
        if !(MIN_CODE_BITS..=MAX_CODE_BITS).contains(&bits) {
            return Err(r.err(format!(
                "{name}: {bits}-bit codes (must be {MIN_CODE_BITS}..={MAX_CODE_BITS})"
            )));
        }
        if shape.contains(&0) || shape[2] > MAX_KERNEL || shape[3] > MAX_KERNEL {
            return Err(r.err(format!(
                "{name}: shape {shape:?} (every dimension >= 1, kernels <= {MAX_KERNEL})"
            )));
        }
        if rank > shape[0] {
            return Err(r.err(format!(
                "{name}: rank {rank} above its {} output channels",
                shape[0]
            )));
        }
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(u64::from(d)));
        elements = n
            .and_then(|n| elements.checked_add(n))
            .ok_or(Error::Overflow("coded tensor elements"))?;
        at_most("decoded weights", elements, max_elements, "")?;
        heads.push((name, bits, shape, rank));
    }
    let mut out = Vec::with_capacity(heads.len());
    for (name, bits, shape, rank) in heads {
        let cols = (shape[1] * shape[2] * shape[3]) as usize;
        let lo = -(1i16 << (bits - 1));
        let hi = (1i16 << (bits - 1)) - 1;
        let mut matrices = Vec::new();
        for (rows, c) in matrix_shapes(shape[0] as usize, cols, rank as usize) {
            let scales = r.f32s(rows)?;
            if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
                return Err(r.err(format!("{name}: row scale {s} (must be finite and >= 0)")));
            }
            let n = rows.checked_mul(c).ok_or(Error::Overflow("codes"))?;
            let codes: Vec<i8> = r.bytes(n)?.iter().map(|&b| b as i8).collect();
            if let Some(q) = codes.iter().find(|&&q| !(lo..=hi).contains(&i16::from(q))) {
                return Err(r.err(format!("{name}: code {q} outside {bits}-bit range")));
            }
            matrices.push(CodedMatrix {
                rows,
                cols: c,
                scales,
                codes,
            });
        }
        out.push(CodedTensor {
            name,
            shape,
            bits,
            rank,
            matrices,
        });
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<CodedTensor> {
        let whole = CodedMatrix::quantize(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 2, 3, 3);
        let u = CodedMatrix::quantize(&[1.0, 2.0, -3.0], 3, 1, 4);
        let v = CodedMatrix::quantize(&[0.1, -0.2, 0.3, 0.4], 1, 4, 4);
        vec![
            CodedTensor {
                name: "a.weight".into(),
                shape: [2, 3, 1, 1],
                bits: 3,
                rank: 0,
                matrices: vec![whole],
            },
            CodedTensor {
                name: "b.weight".into(),
                shape: [3, 1, 2, 2],
                bits: 4,
                rank: 1,
                matrices: vec![u, v],
            },
        ]
    }

    #[test]
    fn written_entries_parse_back() {
        let t = sample();
        let bytes = write_coded(&t).unwrap();
        assert_eq!(parse_coded(&bytes, 10, 1000).unwrap(), t);
        // Every proper prefix is refused.
        for n in 0..bytes.len() {
            assert!(parse_coded(&bytes[..n], 10, 1000).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn quantized_rows_use_symmetric_codes_and_half_scales() {
        let m = CodedMatrix::quantize(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 2, 3, 3);
        // Row 0: scale 1/3 rounded to binary16, codes within +-3; row 1 all zero, scale 0.
        assert_eq!(m.scales[0], half::f16::from_f32(1.0 / 3.0).to_f32());
        assert_eq!(&m.codes[..3], &[2, -3, 1]);
        assert_eq!(m.scales[1], 0.0);
        assert_eq!(&m.codes[3..], &[0, 0, 0]);
        assert_eq!(m.values()[1], -3.0 * m.scales[0]);
    }

    #[test]
    fn bad_fields_are_refused() {
        let good = write_coded(&sample()).unwrap();
        // Offsets in the first entry: count 4, name 2 + 8, bits, reserved, shape 16, rank 4.
        let bits_at = 4 + 2 + 8;
        let cases: [(usize, u8, &str); 4] = [
            (bits_at, 1, "bit"),
            (bits_at, 9, "bit"),
            (bits_at + 1, 1, "reserved"),
            (bits_at + 2, 0, "shape"),
        ];
        for (at, value, want) in cases {
            let mut b = good.clone();
            b[at] = value;
            let e = parse_coded(&b, 10, 1000).unwrap_err().to_string();
            assert!(e.contains(want), "{at}={value}: {e}");
        }
        // Rank above cout (entry 0 has cout 2).
        let mut b = good.clone();
        b[bits_at + 2 + 16] = 3;
        assert!(
            parse_coded(&b, 10, 1000)
                .unwrap_err()
                .to_string()
                .contains("rank")
        );
        // A code outside the 3-bit range: the first code of entry 0 follows both headers and
        // entry 0's two scales.
        let heads = 4 + (2 + 8 + 2 + 16 + 4) * 2;
        let mut b = good.clone();
        b[heads + 8] = 4;
        assert!(
            parse_coded(&b, 10, 1000)
                .unwrap_err()
                .to_string()
                .contains("range")
        );
        // A negative scale.
        let mut b = good.clone();
        b[heads + 3] = 0xbf;
        assert!(
            parse_coded(&b, 10, 1000)
                .unwrap_err()
                .to_string()
                .contains("scale")
        );
        // Limits: tensors and decoded weights.
        assert!(parse_coded(&good, 1, 1000).is_err());
        assert!(parse_coded(&good, 10, 17).is_err());
        assert!(parse_coded(&good, 10, 18).is_ok());
        // Trailing bytes.
        let mut b = good;
        b.push(0);
        assert!(parse_coded(&b, 10, 1000).is_err());
    }
}
