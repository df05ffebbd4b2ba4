//! Rounding a trained predictor to integer codes with error compensation (the GPTQ procedure of
//! Frantar et al., 2022, applied to the predictor).
//!
//! Rounding each weight to its nearest code (what `Predictor::store_as` does) ignores how the
//! errors add up: ResNet-20's f32 phase 1 at hidden 211 scores 95.2 % held-out, the same weights
//! rounded to 6-bit codes 71.7 %, and 400 phase-2 steps do not win all of it back. The
//! predictor's inputs are known exactly (every kernel's coordinates), so each layer can be
//! rounded input by input, the error of each rounding compensated on the inputs not yet rounded
//! through the inverse of the exact second-moment matrix `X^T X` of the layer's inputs. The bias,
//! stored as f32, takes part as an input that is always 1 and never rounded, so it absorbs the
//! mean of the error. Later layers see the inputs the rounded earlier layers produce.
//!
//! The result is not snapped to the code grid: each weight is the value it had when its turn to
//! be rounded came (compensated, within the output's range), so nearest rounding of it
//! (`store_as`) gives the compensated codes. Phase 2 trains through nearest rounding, and latent
//! weights on the grid sit as far from every rounding boundary as they can: measured on
//! ResNet-20, phase 2 from grid weights started at 90.6 % held-out and ended at 95.7 %, under the
//! 96.2 % it reached from the plain f32 weights. The scales stay those of nearest rounding
//! (`max |w| / max` per output): each output's largest weight is neither compensated nor moved,
//! and the others stay within its magnitude, so the scale phase 2 recomputes is the stored one.

use rayon::prelude::*;

use crate::decode::gemm::{PackedMatrix, gemm_bias};
use crate::dense::transpose_into;
use crate::error::{Error, Result};
use crate::predictor::WeightDtype;
use crate::predictor::{COORDS, LinearWeights, Predictor, TABLES, dequantize_codes, int_codes};
use crate::rng::SplitMix64;

/// Rows per partial second-moment product (the sum of the partials runs in a fixed order, so the
/// result does not depend on the number of threads).
const CHUNK: usize = 4096;

/// Relative damping added to the diagonal of `X^T X` (GPTQ's 1 %): inputs that are (nearly)
/// always zero, e.g. dead ReLUs, keep the matrix invertible.
const DAMPING: f64 = 0.01;

/// `p` with every layer's weights moved so that nearest rounding to `dtype`'s integer codes
/// (`store_as`) gives the error-compensated codes, on the inputs the predictor sees at `coords`
/// (every kernel); the biases carry their compensation. Float dtypes: `p` unchanged.
///
/// Embedding tables (format 1.7) are the first layer's inputs: the first layer's compensation
/// sees their nearest-rounded rows, and they stay latent (off the grid, as the layers do), so
/// that phase 2 can move their codes; `store_as` rounds them to those same codes (`rows`: each
/// kernel's row of each table, beside `coords`).
pub fn quantize(
    p: &Predictor,
    coords: &[[u32; COORDS]],
    rows: &[[u32; TABLES]],
    dtype: WeightDtype,
) -> Result<Predictor> {
    let mut out = p.clone();
    let Some(max) = dtype.max_code() else {
        return Ok(out);
    };
    let check = |v: &f32| v.is_finite();
    if !p
        .stored()
        .all(|l| l.weight.iter().chain(&l.bias).all(check))
    {
        return Err(Error::NonFinite {
            tensor: "predictor".into(),
        });
    }
    let mut seen = Predictor {
        config: p.config.clone(),
        layers: Vec::new(),
        embeddings: p.embeddings.clone(),
    };
    seen.store_as(dtype)?;
    let n = coords.len();
    let mut x = first_inputs(&seen, coords, rows);
    let last = p.layers.len().saturating_sub(1);
    for (i, layer) in out.layers.iter_mut().enumerate() {
        let d = layer.inputs;
        if layer.outputs == 0 || n == 0 {
            layer.scales = vec![0.0; layer.outputs];
            continue;
        }
        let h = second_moments(&x, d);
        let u = inverse_cholesky_upper(h, d + 1)?;
        let stored = round_layer(layer, &u, max);
        if i != last {
            let packed = PackedMatrix::new(&stored, d, layer.outputs);
            let mut next = vec![0f32; n * layer.outputs];
            gemm_bias(
                &x,
                d,
                n,
                &packed,
                &layer.bias,
                &mut next,
                layer.outputs,
                true,
            );
            x = next;
        }
    }
    Ok(out)
}

/// Moves every weight of a predictor stored on its code grid (a resumed file's) to a random
/// point of its own rounding cell: `(q + d) * scale_j`, `d` uniform in `(-0.49, 0.49)`, drawn
/// from `rng`. Nearest rounding gives the same codes and the same scales (a weight with
/// `|q| = max` sets its output's scale and stays), so the network is unchanged; what changes is
/// where phase 2 starts: on the grid every latent weight is half a cell from flipping its code,
/// which Adam's steps of about the learning rate need hundreds of steps to cross (a resumed
/// phase 2 ended 0.7 points under one encode's, where the compensated rounding leaves weights
/// anywhere in their cells). Layers without scales (float storage) are left alone.
pub fn off_grid(p: &mut Predictor, max: f32, rng: &mut SplitMix64) {
    for l in p.layers.iter_mut().chain(p.embeddings.iter_mut()) {
        if l.scales.len() != l.outputs || l.outputs == 0 {
            continue;
        }
        let codes = int_codes(&l.weight, &l.scales, max);
        for (row, codes) in l
            .weight
            .chunks_exact_mut(l.outputs)
            .zip(codes.chunks_exact(l.outputs))
        {
            for ((w, &q), &s) in row.iter_mut().zip(codes).zip(&l.scales) {
                let d = (rng.next_f64() - 0.5) as f32 * 0.98;
                // Zero scales give code 0 and stay 0.
                if s != 0.0 && f32::from(q).abs() < max {
                    *w = (f32::from(q) + d) * s;
                }
            }
        }
        // The weights are no longer `q * scale`: they are latent weights now.
        l.scales.clear();
    }
}

/// A copy of `p` moved off its code grid by [`off_grid`], drawn from `seed`.
pub fn off_grid_copy(p: &Predictor, max: f32, seed: u64) -> Predictor {
    let mut moved = p.clone();
    off_grid(&mut moved, max, &mut SplitMix64::new(seed));
    moved
}

/// The first layer's inputs: each kernel's coordinate encodings side by side (`n x 6 L`).
/// With embedding tables (`p`'s, as stored), each kernel's rows of them follow (`W[row] + b`, as
/// decoded).
fn first_inputs(p: &Predictor, coords: &[[u32; COORDS]], rows: &[[u32; TABLES]]) -> Vec<f32> {
    let cw = p.config.coord_width();
    let tables: Vec<Vec<f32>> = (0..COORDS)
        .map(|c| {
            let values = coords.iter().map(|k| k[c] as usize + 1).max().unwrap_or(0);
            p.config.pe_table(values)
        })
        .collect();
    let embedded: Vec<Vec<f32>> = (0..p.embeddings.len())
        .map(|t| {
            let e = &p.embeddings[t];
            (0..e.inputs).flat_map(|r| p.embedding_row(t, r)).collect()
        })
        .collect();
    let width = p.config.input_width();
    let mut x = Vec::with_capacity(coords.len() * width);
    for (i, k) in coords.iter().enumerate() {
        for (c, t) in tables.iter().enumerate() {
            let v = k[c] as usize;
            x.extend_from_slice(&t[v * cw..(v + 1) * cw]);
        }
        for (t, e) in embedded.iter().enumerate() {
            let (r, d) = (rows[i][t] as usize, p.embeddings[t].outputs);
            x.extend_from_slice(&e[r * d..(r + 1) * d]);
        }
    }
    x
}

/// `[X 1]^T [X 1]` in f64, `(d + 1) x (d + 1)` row-major, of the `n x d` inputs `x` (n rows).
fn second_moments(x: &[f32], d: usize) -> Vec<f64> {
    let zeros = vec![0f32; d];
    let partials: Vec<Vec<f64>> = x
        .par_chunks(CHUNK * d)
        .map(|rows| {
            let m = rows.len() / d;
            // X_c^T (d x m) times X_c (m x d), in f32 on the decoder's GEMM.
            let mut xt = vec![0f32; d * m];
            transpose_into(rows, m, d, &mut xt, m);
            let packed = PackedMatrix::new(rows, m, d);
            let mut prod = vec![0f32; d * d];
            gemm_bias(&xt, m, d, &packed, &zeros, &mut prod, d, false);
            let e = d + 1;
            let mut h = vec![0f64; e * e];
            for k in 0..d {
                for j in 0..d {
                    h[k * e + j] = f64::from(prod[k * d + j]);
                }
            }
            for row in rows.chunks_exact(d) {
                for (k, &v) in row.iter().enumerate() {
                    h[k * e + d] += f64::from(v);
                }
            }
            h[d * e + d] = m as f64;
            h
        })
        .collect();
    let e = d + 1;
    let mut h = vec![0f64; e * e];
    for p in &partials {
        for (a, b) in h.iter_mut().zip(p) {
            *a += b;
        }
    }
    for k in 0..d {
        h[d * e + k] = h[k * e + d];
    }
    h
}

/// The upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`) after damping, as GPTQ uses it: row
/// `k` of `U` over `U[k][k]` spreads input `k`'s rounding error over the inputs after it.
fn inverse_cholesky_upper(mut h: Vec<f64>, e: usize) -> Result<Vec<f64>> {
    let mean_diag = (0..e).map(|k| h[k * e + k]).sum::<f64>() / e as f64;
    let damp = DAMPING * mean_diag.max(f64::MIN_POSITIVE);
    for k in 0..e {
        h[k * e + k] += damp;
    }
    let l = cholesky_lower(&h, e)?;
    // L^-1 by forward substitution, then H^-1 = L^-T L^-1.
    let mut li = vec![0f64; e * e];
    for c in 0..e {
        li[c * e + c] = 1.0 / l[c * e + c];
        for r in c + 1..e {
            let mut s = 0.0;
            for k in c..r {
                s += l[r * e + k] * li[k * e + c];
            }
            li[r * e + c] = -s / l[r * e + r];
        }
    }
    let mut hinv = vec![0f64; e * e];
    for r in 0..e {
        for c in 0..=r {
            let mut s = 0.0;
            for k in r..e {
                s += li[k * e + r] * li[k * e + c];
            }
            hinv[r * e + c] = s;
            hinv[c * e + r] = s;
        }
    }
    let lh = cholesky_lower(&hinv, e)?;
    let mut u = vec![0f64; e * e];
    for r in 0..e {
        for c in 0..=r {
            u[c * e + r] = lh[r * e + c];
        }
    }
    Ok(u)
}

/// Lower Cholesky factor of the symmetric positive definite `e x e` matrix `a`.
fn cholesky_lower(a: &[f64], e: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; e * e];
    for r in 0..e {
        for c in 0..=r {
            let mut s = a[r * e + c];
            for k in 0..c {
                s -= l[r * e + k] * l[c * e + k];
            }
            if r == c {
                if s.is_nan() || s <= 0.0 {
                    return Err(Error::InvalidArgument(
                        "predictor rounding: the inputs' second moments are not positive definite"
                            .into(),
                    ));
                }
                l[r * e + r] = s.sqrt();
            } else {
                l[r * e + c] = s / l[c * e + c];
            }
        }
    }
    Ok(l)
}

/// Rounds one `[inputs][outputs]` layer input by input, compensating each error on the inputs
/// after it and on the bias (`u`: [`inverse_cholesky_upper`] of its inputs). The layer keeps each
/// weight as it was when rounded (within its output's largest magnitude) and the compensated
/// bias; returns the stored (rounded) weights.
fn round_layer(layer: &mut LinearWeights, u: &[f64], max: f32) -> Vec<f32> {
    let (d, m) = (layer.inputs, layer.outputs);
    let e = d + 1;
    let mut scales = vec![0f32; m];
    let mut top = vec![0usize; m];
    let mut latent = vec![0f32; d * m];
    for (k, row) in layer.weight.chunks_exact(m).enumerate() {
        for j in 0..m {
            if row[j].abs() > scales[j] {
                scales[j] = row[j].abs();
                top[j] = k;
            }
        }
    }
    for s in &mut scales {
        *s /= max;
    }
    // Rows 0..d the weights, row d the bias, in f64 while errors are spread.
    let mut w: Vec<f64> = layer.weight.iter().map(|&v| f64::from(v)).collect();
    w.extend(layer.bias.iter().map(|&v| f64::from(v)));
    let mut codes = vec![0i8; d * m];
    let mut err = vec![0f64; m];
    for k in 0..d {
        for j in 0..m {
            let s = scales[j];
            let v = w[k * m + j] as f32;
            // The largest magnitude is scale x max, up to the f32 rounding of the division.
            let top_abs = layer.weight[top[j] * m + j].abs();
            latent[k * m + j] = v.clamp(-top_abs, top_abs);
            let q = if s == 0.0 {
                0.0
            } else {
                (v / s).round_ties_even().clamp(-max, max)
            };
            codes[k * m + j] = q as i8;
            let stored = f64::from(q * s);
            err[j] = (w[k * m + j] - stored) / u[k * e + k];
            w[k * m + j] = stored;
        }
        for i in k + 1..e {
            let f = u[k * e + i];
            let row = &mut w[i * m..(i + 1) * m];
            for j in 0..m {
                // An output's largest weight keeps its code (and so the scale).
                if i != top[j] {
                    row[j] -= err[j] * f;
                }
            }
        }
    }
    layer.weight = latent;
    layer.bias = w[d * m..].iter().map(|&v| v as f32).collect();
    layer.scales.clear();
    dequantize_codes(&codes, &scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::PredictorConfig;

    fn random_predictor(hidden: u32, seed: u64) -> Predictor {
        let config = PredictorConfig::reference(hidden, 3, 4, 0.76);
        Predictor::init(&config, &mut SplitMix64::new(seed))
    }

    fn coords() -> Vec<[u32; COORDS]> {
        let mut v = Vec::new();
        for l in 0..5 {
            for f in 0..16 {
                for c in 0..12 {
                    v.push([l, f, c]);
                }
            }
        }
        v
    }

    fn output_error(p: &Predictor, reference: &Predictor, coords: &[[u32; COORDS]]) -> f64 {
        coords
            .iter()
            .map(|&c| {
                let (a, b) = (p.forward_f64(c, [0, 0]), reference.forward_f64(c, [0, 0]));
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f64>()
            })
            .sum()
    }

    /// Stored (nearest rounding of the moved weights), the compensated predictor's outputs are
    /// closer to the f32 predictor's than nearest rounding's of the original weights, for every
    /// integer width, and its scales are the original's.
    #[test]
    fn compensated_rounding_beats_nearest_with_the_same_scales() {
        let c = coords();
        for (seed, dtype) in [
            (1, WeightDtype::Int8),
            (2, WeightDtype::Int6),
            (3, WeightDtype::Int5),
            (4, WeightDtype::Int4),
        ] {
            let f32p = random_predictor(24, seed);
            let mut nearest = f32p.clone();
            nearest.store_as(dtype).unwrap();
            let mut compensated = quantize(&f32p, &c, &[], dtype).unwrap();
            compensated.store_as(dtype).unwrap();
            let (en, ec) = (
                output_error(&nearest, &f32p, &c),
                output_error(&compensated, &f32p, &c),
            );
            assert!(
                ec < 0.8 * en,
                "{dtype:?}: compensated {ec} against nearest {en}"
            );
            // Each output's largest weight keeps its code at the end of the range.
            let max = dtype.max_code().unwrap();
            for (l, n) in compensated.layers.iter().zip(&nearest.layers) {
                assert_eq!(l.scales, n.scales);
                for j in 0..l.outputs {
                    let top = (0..l.inputs)
                        .map(|k| (l.weight[k * l.outputs + j] / l.scales[j]).round().abs())
                        .fold(0f32, f32::max);
                    assert_eq!(top, max);
                }
            }
        }
    }

    #[test]
    fn the_rounding_does_not_depend_on_the_thread_count() {
        let c: Vec<_> = (0..3 * CHUNK as u32 / 2)
            .map(|i| [i % 7, i % 64, i / 64])
            .collect();
        let p = random_predictor(16, 9);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = one.install(|| quantize(&p, &c, &[], WeightDtype::Int6).unwrap());
        let b = three.install(|| quantize(&p, &c, &[], WeightDtype::Int6).unwrap());
        assert_eq!(a, b);
    }

    /// Off the grid, every weight rounds back to its code and every scale is the same: the
    /// stored predictor is unchanged, the latent weights are not.
    #[test]
    fn off_grid_weights_keep_the_stored_codes() {
        let mut stored = random_predictor(12, 5);
        stored.store_as(WeightDtype::Int6).unwrap();
        let mut moved = stored.clone();
        off_grid(&mut moved, 31.0, &mut SplitMix64::new(8));
        let changed = moved
            .layers
            .iter()
            .zip(&stored.layers)
            .map(|(a, b)| {
                a.weight
                    .iter()
                    .zip(&b.weight)
                    .filter(|(x, y)| x != y)
                    .count()
            })
            .sum::<usize>();
        let total: usize = stored.layers.iter().map(|l| l.weight.len()).sum();
        assert!(changed > total * 9 / 10, "{changed} of {total} moved");
        let mut again = moved.clone();
        again.store_as(WeightDtype::Int6).unwrap();
        assert_eq!(again, stored);
    }

    #[test]
    fn non_finite_weights_are_refused() {
        let mut p = random_predictor(8, 5);
        p.layers[1].weight[3] = f32::NAN;
        assert!(matches!(
            quantize(&p, &coords(), &[], WeightDtype::Int6),
            Err(Error::NonFinite { .. })
        ));
    }

    /// With embedding tables: compensation beats nearest rounding on the predictor's outputs,
    /// the tables stay latent (phase 2 can still move their codes), and storing rounds them to
    /// the nearest codes the first layer's compensation saw.
    #[test]
    fn embedding_tables_stay_latent_and_compensation_still_pays() {
        let config = PredictorConfig::reference(24, 3, 4, 0.76).with_embedding(3, [80, 60]);
        let p = Predictor::init(&config, &mut SplitMix64::new(5));
        let c = coords();
        let rows: Vec<[u32; TABLES]> = c
            .iter()
            .map(|k| [k[0] * 16 + k[1], k[0] * 12 + k[2]])
            .collect();
        let q = quantize(&p, &c, &rows, WeightDtype::Int6).unwrap();
        assert_eq!(q.embeddings, p.embeddings, "the tables were moved");
        let mut stored = q.clone();
        stored.store_as(WeightDtype::Int6).unwrap();
        let mut nearest = p.clone();
        nearest.store_as(WeightDtype::Int6).unwrap();
        assert_eq!(stored.embeddings, nearest.embeddings);
        let err = |x: &Predictor| -> f64 {
            c.iter()
                .zip(&rows)
                .map(|(&k, &r)| {
                    let (a, b) = (x.forward_f64(k, r), p.forward_f64(k, r));
                    a.iter()
                        .zip(&b)
                        .map(|(u, v)| (u - v) * (u - v))
                        .sum::<f64>()
                })
                .sum()
        };
        let (e_comp, e_near) = (err(&stored), err(&nearest));
        assert!(e_comp < e_near, "compensated {e_comp} vs nearest {e_near}");
    }
}
