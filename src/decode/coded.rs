//! The weights of a coded conv (`CODE`, format 1.8, spec §6.5): codes times row scales, and for
//! a factored entry the product `U V` with each output's sum in a fixed order, so that every
//! conforming decoder produces the same bits.

use super::gemm::{PackedMatrix, gemm_bias};
use crate::error::{Error, Result};
use crate::format::CodedTensor;

/// The F32 weight `[cout, cin, kh, kw]` (row-major) of `t`. A weight that comes out infinite or
/// NaN makes the file invalid (spec §6.5): refused, nothing is returned.
pub fn coded_weights(t: &CodedTensor) -> Result<Vec<f32>> {
    let out = match t.matrices.as_slice() {
        [whole] => whole.values(),
        [u, v] => {
            let (u, v) = (u.values(), v.values());
            let (rank, cols) = (t.rank as usize, t.cols());
            let mut out = vec![0f32; t.elements()];
            // Each weight's sum runs over t = 0 .. rank-1 in order, one fused multiply-add per
            // term, from +0.0: the decoder's GEMM with a zero bias (its SIMD paths keep that
            // order per element, bit-identical to the scalar loop).
            let packed = PackedMatrix::new(&v, rank, cols);
            gemm_bias(
                &u,
                rank,
                t.cout(),
                &packed,
                &vec![0.0; cols],
                &mut out,
                cols,
                false,
            );
            out
        }
        _ => {
            return Err(Error::malformed(
                "CODE",
                format!("{}: {} matrices", t.name, t.matrices.len()),
            ));
        }
    };
    if let Some(i) = out.iter().position(|w| !w.is_finite()) {
        return Err(Error::malformed(
            "CODE",
            format!("{}: weight {i} decodes to {}", t.name, out[i]),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::CodedMatrix;

    fn factored(u: CodedMatrix, v: CodedMatrix, shape: [u32; 4]) -> CodedTensor {
        CodedTensor {
            name: "w".into(),
            shape,
            bits: 8,
            rank: u.cols as u32,
            matrices: vec![u, v],
        }
    }

    /// `U V` with the sum over the rank in order, each term one fma, from +0.0; checked against
    /// an explicit loop that says exactly that.
    #[test]
    fn factored_weights_are_in_order_fma_sums() {
        let u = CodedMatrix {
            rows: 2,
            cols: 3,
            scales: vec![0.1, 0.37],
            codes: vec![1, -2, 127, -128, 5, 3],
        };
        let v = CodedMatrix {
            rows: 3,
            cols: 4,
            scales: vec![0.013, 1.7, 0.0049],
            codes: vec![3, -7, 100, 1, 9, 0, -3, 2, -128, 127, 64, -1],
        };
        let t = factored(u.clone(), v.clone(), [2, 1, 2, 2]);
        let got = coded_weights(&t).unwrap();
        let (uv, vv) = (u.values(), v.values());
        for o in 0..2 {
            for j in 0..4 {
                let mut acc = 0f32;
                for k in 0..3 {
                    acc = uv[o * 3 + k].mul_add(vv[k * 4 + j], acc);
                }
                assert_eq!(got[o * 4 + j].to_bits(), acc.to_bits(), "({o}, {j})");
            }
        }
        // The values are one rounded product each: code 127 times 0.1 is not exact.
        assert_eq!(uv[2], 127.0f32 * 0.1f32);
    }

    /// The same on a shape the SIMD paths tile (columns past a vector, odd rows and rank).
    #[test]
    fn wide_factored_weights_match_the_scalar_loop() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut codes = |n: usize| -> Vec<i8> { (0..n).map(|_| rng.below(15) as i8 - 7).collect() };
        let (cout, rank, cols) = (9, 5, 37);
        let u = CodedMatrix {
            rows: cout,
            cols: rank,
            scales: (0..cout).map(|i| 0.01 + i as f32 * 0.003).collect(),
            codes: codes(cout * rank),
        };
        let v = CodedMatrix {
            rows: rank,
            cols,
            scales: (0..rank).map(|i| 0.7 / (i as f32 + 1.3)).collect(),
            codes: codes(rank * cols),
        };
        let got = coded_weights(&factored(u.clone(), v.clone(), [9, 37, 1, 1])).unwrap();
        let (uv, vv) = (u.values(), v.values());
        for (i, g) in got.iter().enumerate() {
            let (o, j) = (i / cols, i % cols);
            let mut acc = 0f32;
            for k in 0..rank {
                acc = uv[o * rank + k].mul_add(vv[k * cols + j], acc);
            }
            assert_eq!(g.to_bits(), acc.to_bits(), "({o}, {j})");
        }
    }

    #[test]
    fn a_weight_overflowing_is_refused() {
        let big = f32::MAX / 2.0;
        let u = CodedMatrix {
            rows: 1,
            cols: 2,
            scales: vec![big],
            codes: vec![1, 1],
        };
        let v = CodedMatrix {
            rows: 2,
            cols: 1,
            scales: vec![4.0, 4.0],
            codes: vec![1, 1],
        };
        let e = coded_weights(&factored(u, v, [1, 1, 1, 1])).unwrap_err();
        assert!(e.to_string().contains("decodes to inf"), "{e}");
    }
}
