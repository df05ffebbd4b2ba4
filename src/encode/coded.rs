//! Coded convs (`--code`, format 1.8): conv weights stored as integer codes instead of
//! predicted, whole or as two factors of a chosen rank. They start from the conv (factors from
//! its truncated SVD, the singular values split evenly between them) and phase 2 trains their
//! values beside the predictor, through the rounding (straight-through), as quantisation-aware
//! training does: the predictor covers what is hard to store, the codes what is low-rank or
//! cheap to round (measured: the 4x-wide ResNet-20's layer3, docs/measurements.md).

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::mlp::ste_rounded;
use super::options::{CodeRule, CodedOptions};
use crate::decode::coded::coded_weights;
use crate::error::{Error, Result};
use crate::format::{CodedMatrix, CodedTensor, LayerEntry, MAX_CODE_BITS, MIN_CODE_BITS};

/// A coded conv while it trains: its matrices' values in f32 (not yet rounded).
#[derive(Clone, Debug, PartialEq)]
pub struct CodedConv {
    pub name: String,
    pub shape: [u32; 4],
    pub bits: u8,
    /// 0: one matrix, the weight; r > 0: `U` (cout x r) and `V` (r x cin k k).
    pub rank: u32,
    /// `(rows, cols, values row-major)` per matrix.
    pub matrices: Vec<(usize, usize, Vec<f32>)>,
}

impl CodedConv {
    /// The conv `layer` with weights `w` as codes of `bits` at `rank` (0: whole).
    pub fn new(layer: &LayerEntry, w: &[f32], rank: u32, bits: u8) -> Self {
        let (cout, cols) = (layer.cout(), layer.elements() / layer.cout());
        let matrices = if rank == 0 {
            vec![(cout, cols, w.to_vec())]
        } else {
            let (u, v) = split_factors(w, cout, cols, rank as usize);
            vec![(cout, rank as usize, u), (rank as usize, cols, v)]
        };
        CodedConv {
            name: layer.name.clone(),
            shape: layer.shape,
            bits,
            rank,
            matrices,
        }
    }

    /// Starts again from a stored conv's values (a later phase-2 cycle, a resumed file).
    pub fn from_stored(t: &CodedTensor) -> Self {
        CodedConv {
            name: t.name.clone(),
            shape: t.shape,
            bits: t.bits,
            rank: t.rank,
            matrices: t
                .matrices
                .iter()
                .map(|m| (m.rows, m.cols, m.values()))
                .collect(),
        }
    }

    /// The conv as the file stores it.
    pub fn stored(&self) -> CodedTensor {
        CodedTensor {
            name: self.name.clone(),
            shape: self.shape,
            bits: self.bits,
            rank: self.rank,
            matrices: self
                .matrices
                .iter()
                .map(|(r, c, v)| CodedMatrix::quantize(v, *r, *c, self.bits))
                .collect(),
        }
    }
}

/// The convs as stored, their decoded weights on `device` (what a decoder produces, bit for bit).
pub fn decoded_coded<B: Backend>(
    stored: &[CodedTensor],
    device: &B::Device,
) -> Result<HashMap<String, Tensor<B, 4>>> {
    let mut out = HashMap::new();
    for t in stored {
        let s = t.shape.map(|d| d as usize);
        let w = coded_weights(t)?;
        out.insert(
            t.name.clone(),
            Tensor::from_data(TensorData::new(w, s), device),
        );
    }
    Ok(out)
}

/// The rank fractions `PREFIX=auto` tries, largest first.
pub const AUTO_FRACTIONS: [f64; 3] = [0.5, 0.25, 0.125];

/// Held-out accuracy (points) a rank may lose, before any training, against the same convs as
/// whole codes for `PREFIX=auto` to take it. Training recovers most of what the probe sees, so
/// this is a margin, calibrated on the two networks measured (docs/measurements.md, session
/// 35): the 4x-wide ResNet-20's `layer3` at cout/8 lost 2.82 points here and its trained files
/// 0.15 / 0.25 test points; ResNet-20's at cout/2 lost 2.72 here and 0.24 trained. At cout/4
/// ResNet-20 loses 40 points here (0.49 trained): not taken.
pub const AUTO_RANK_DROP: f64 = 3.0;

/// Resolves every `PREFIX=auto` rule of `coded` to a fraction: for each such rule alone (the
/// other convs as in `base`), the held-out accuracy of its convs as starting codes, whole and
/// at each of [`AUTO_FRACTIONS`]; the smallest rank within [`AUTO_RANK_DROP`] points of whole
/// wins, else whole. Returns the resolved options and one line per rule saying what was
/// measured and chosen.
pub fn choose_auto_ranks(
    layers: &[LayerEntry],
    weights: &[Vec<f32>],
    coded: &CodedOptions,
    accuracy: &mut dyn FnMut(&[CodedTensor]) -> Result<f64>,
) -> Result<(CodedOptions, Vec<String>)> {
    let mut resolved = coded.clone();
    let mut lines = Vec::new();
    for (i, rule) in coded.rules.iter().enumerate() {
        if !rule.auto {
            continue;
        }
        // This rule's convs at `fraction` (those it wins: the first matching rule decides).
        let at = |fraction: f64| -> Vec<CodedTensor> {
            let alone = CodedOptions {
                rules: vec![CodeRule {
                    fraction,
                    ..rule.clone()
                }],
                ..coded.clone()
            };
            layers
                .iter()
                .zip(weights)
                .filter(|(l, _)| coded.rule(&l.name) == Some(rule))
                .filter_map(|(l, w)| {
                    let rank = alone.rank(l)?;
                    Some(CodedConv::new(l, w, rank, coded.bits_of(&l.name)).stored())
                })
                .collect()
        };
        let whole = at(1.0);
        if whole.is_empty() {
            continue; // split_coded names the rule that matches nothing
        }
        let whole_acc = accuracy(&whole)?;
        let mut chosen = (1.0, whole_acc);
        let mut tried = vec![format!("whole {whole_acc:.2} %")];
        for f in AUTO_FRACTIONS {
            let convs = at(f);
            if convs.iter().all(|t| t.rank == 0) {
                continue; // factors would not save codes at this rank
            }
            let acc = accuracy(&convs)?;
            tried.push(format!("1/{} {acc:.2} %", (1.0 / f).round()));
            if acc >= whole_acc - AUTO_RANK_DROP {
                chosen = (f, acc);
            }
        }
        resolved.rules[i].fraction = chosen.0;
        lines.push(format!(
            "--code {}=auto: {} (held-out, starting codes, before training); chose {} (within \
             {AUTO_RANK_DROP} points of whole)",
            rule.prefix,
            tried.join(", "),
            if chosen.0 >= 1.0 {
                "whole".to_string()
            } else {
                format!("rank cout/{}", (1.0 / chosen.0).round())
            }
        ));
    }
    Ok((resolved, lines))
}

/// What one coded conv loses and costs at each bit width `PREFIX=FRACTION@auto` may give it
/// (index `bits - MIN_CODE_BITS`), measured alone: the other convs as in the source.
#[derive(Clone, Debug, PartialEq)]
pub struct BitsProbe {
    /// Mean KL divergence (nats) of the network's held-out predictions from the source's.
    pub loss: Vec<f64>,
    /// The conv's `CODE` entry (scales and codes) compressed alone, bytes.
    pub bytes: Vec<u64>,
}

impl BitsProbe {
    /// The divergence at `bits` (in `MIN_CODE_BITS ..= MAX_CODE_BITS`).
    pub fn loss_at(&self, bits: u8) -> f64 {
        self.loss[usize::from(bits - MIN_CODE_BITS)]
    }

    /// The entry's compressed bytes at `bits`.
    pub fn bytes_at(&self, bits: u8) -> u64 {
        self.bytes[usize::from(bits - MIN_CODE_BITS)]
    }
}

/// Held-out images a `@auto` probe measures the KL divergence on (at most): the divergence is
/// smooth, so a thousand images rank the convs as well as all of them, at a fifth of the cost.
pub const AUTO_BITS_IMAGES: usize = 1000;

/// The bits of each probed conv for `PREFIX=FRACTION@auto`: every conv starts at the most
/// bits, and while `fits` says the file is over the budget, the conv whose next step down
/// loses the least divergence per byte it saves goes down one bit (greedy mixed precision, the
/// losses taken as additive across convs); then [`refill`] spends what the last step saved
/// beyond the budget. `None` when even the fewest bits do not fit.
pub fn choose_auto_bits(
    probes: &[BitsProbe],
    fits: &mut dyn FnMut(&[u8]) -> Result<bool>,
) -> Result<Option<Vec<u8>>> {
    let levels = (MAX_CODE_BITS - MIN_CODE_BITS + 1) as usize;
    if probes
        .iter()
        .any(|p| p.loss.len() != levels || p.bytes.len() != levels)
    {
        return Err(Error::InvalidArgument(format!(
            "a bits probe needs {levels} losses and sizes"
        )));
    }
    let mut bits = vec![MAX_CODE_BITS; probes.len()];
    loop {
        if fits(&bits)? {
            refill(probes, &mut bits, fits)?;
            return Ok(Some(bits));
        }
        // Loss per byte saved of each conv's next step down; a step that measures no loss
        // (the probe's noise can make it negative) costs nothing, the larger saving first.
        let step = probes
            .iter()
            .zip(&bits)
            .enumerate()
            .filter(|(_, (_, b))| **b > MIN_CODE_BITS)
            .map(|(i, (p, &b))| {
                let loss = (p.loss_at(b - 1) - p.loss_at(b)).max(0.0);
                let saved = p.bytes_at(b).saturating_sub(p.bytes_at(b - 1)).max(1) as f64;
                (i, loss / saved, saved)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)));
        match step {
            Some((i, _, _)) => bits[i] -= 1,
            None => return Ok(None),
        }
    }
}

/// After [`choose_auto_bits`]'s last step down (which may have saved more than needed): raises
/// convs by one bit again while the file still fits, the most loss removed per byte first.
fn refill(
    probes: &[BitsProbe],
    bits: &mut [u8],
    fits: &mut dyn FnMut(&[u8]) -> Result<bool>,
) -> Result<()> {
    loop {
        let mut ups: Vec<(usize, f64)> = probes
            .iter()
            .zip(bits.iter())
            .enumerate()
            .filter(|(_, (_, b))| **b < MAX_CODE_BITS)
            .filter_map(|(i, (p, &b))| {
                let gain = p.loss_at(b) - p.loss_at(b + 1);
                let cost = p.bytes_at(b + 1).saturating_sub(p.bytes_at(b)).max(1) as f64;
                (gain > 0.0).then_some((i, gain / cost))
            })
            .collect();
        ups.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut raised = false;
        for (i, _) in ups {
            bits[i] += 1;
            if fits(bits)? {
                raised = true;
                break;
            }
            bits[i] -= 1;
        }
        if !raised {
            return Ok(());
        }
    }
}

/// `U` (cout x r) and `V` (r x cols) with `U V` the best rank-r approximation of `w` (cout x
/// cols, row-major), each factor carrying the square root of the singular values.
///
/// From the eigenvectors of the Gram matrix `W W^T` (cout x cout, binary64, cyclic Jacobi):
/// cout is a conv's filter count (hundreds), so this is exact enough and fast, and only
/// initialises what phase 2 then trains. (No linear-algebra crate for one start point.)
pub fn split_factors(w: &[f32], cout: usize, cols: usize, rank: usize) -> (Vec<f32>, Vec<f32>) {
    let rows: Vec<&[f32]> = w.chunks_exact(cols).collect();
    let mut gram = vec![0f64; cout * cout];
    for i in 0..cout {
        for j in i..cout {
            let d: f64 = rows[i]
                .iter()
                .zip(rows[j])
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            gram[i * cout + j] = d;
            gram[j * cout + i] = d;
        }
    }
    let (values, vectors) = symmetric_eigen(gram, cout);
    let mut order: Vec<usize> = (0..cout).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut u = vec![0f32; cout * rank];
    let mut v = vec![0f32; rank * cols];
    for (k, &e) in order.iter().take(rank).enumerate() {
        let sigma = values[e].max(0.0).sqrt();
        if sigma <= f64::EPSILON * values[order[0]].max(1e-300).sqrt() {
            continue;
        }
        let root = sigma.sqrt();
        // u_k = eigenvector; v_k = u_k^T W / sigma; factors u_k sqrt(sigma), sqrt(sigma) v_k.
        for i in 0..cout {
            u[i * rank + k] = (vectors[i * cout + e] * root) as f32;
        }
        for (c, slot) in v[k * cols..(k + 1) * cols].iter_mut().enumerate() {
            let dot: f64 = (0..cout)
                .map(|i| vectors[i * cout + e] * f64::from(rows[i][c]))
                .sum();
            *slot = (dot / root) as f32;
        }
    }
    (u, v)
}

/// Eigenvalues and eigenvectors (column `k` of the row-major `n x n` result) of the symmetric
/// matrix `a` by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= total * 1e-30 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The coded convs' values as trainable parameters (phase 2).
#[derive(Module, Debug)]
pub struct CodedParams<B: Backend> {
    matrices: Vec<Param<Tensor<B, 2>>>,
}

/// What [`CodedParams`] needs besides its parameters: each conv's name, shape, number of
/// matrices and largest code magnitude.
#[derive(Clone, Debug)]
pub struct CodedLayout {
    convs: Vec<(String, [usize; 4], usize, f32)>,
}

impl<B: Backend> CodedParams<B> {
    pub fn new(convs: &[CodedConv], device: &B::Device) -> (Self, CodedLayout) {
        let matrices = convs
            .iter()
            .flat_map(|c| &c.matrices)
            .map(|(r, c, v)| {
                Param::from_tensor(Tensor::from_data(
                    TensorData::new(v.clone(), [*r, *c]),
                    device,
                ))
            })
            .collect();
        let layout = CodedLayout {
            convs: convs
                .iter()
                .map(|c| {
                    let qmax = f32::from((1u8 << (c.bits - 1)) - 1);
                    (
                        c.name.clone(),
                        c.shape.map(|d| d as usize),
                        c.matrices.len(),
                        qmax,
                    )
                })
                .collect(),
        };
        (CodedParams { matrices }, layout)
    }

    /// Every conv's weight through the rounding its codes will get: per-row symmetric scales,
    /// codes rounded to nearest, the gradient passed straight through the rounding.
    pub fn convs(&self, layout: &CodedLayout) -> HashMap<String, Tensor<B, 4>> {
        let mut m = self.matrices.iter();
        let mut out = HashMap::new();
        for (name, shape, count, qmax) in &layout.convs {
            let mut mats: Vec<Tensor<B, 2>> = m
                .by_ref()
                .take(*count)
                .map(|p| ste_rounded(p.val(), *qmax, 1))
                .collect();
            let w = if mats.len() == 2 {
                let v = mats.pop().expect("two matrices");
                let u = mats.pop().expect("two matrices");
                u.matmul(v)
            } else {
                mats.pop().expect("one matrix")
            };
            out.insert(name.clone(), w.reshape(*shape));
        }
        out
    }

    /// The values now, as [`CodedConv`]s shaped like `like`.
    pub fn values(&self, like: &[CodedConv]) -> Result<Vec<CodedConv>> {
        let mut m = self.matrices.iter();
        let mut out = Vec::with_capacity(like.len());
        for c in like {
            let mut conv = c.clone();
            for (_, _, v) in &mut conv.matrices {
                let p = m
                    .next()
                    .ok_or_else(|| Error::Training("coded layout".into()))?;
                *v = p
                    .val()
                    .into_data()
                    .into_vec::<f32>()
                    .map_err(|e| Error::Training(format!("{e:?}")))?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(Error::Training(format!(
                        "{}: a coded value became non-finite",
                        c.name
                    )));
                }
            }
            out.push(conv);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TensorDtype;
    use crate::permute::PermutationKind;

    fn layer(shape: [u32; 4]) -> LayerEntry {
        LayerEntry {
            name: "w".into(),
            dtype: TensorDtype::F32,
            permutation: PermutationKind::None,
            shape,
        }
    }

    /// `@auto` bits: free steps first, then the least loss per byte saved; stops as soon as
    /// the budget fits, then spends what the last step saved beyond it; `None` when even 2
    /// bits everywhere is over.
    #[test]
    fn auto_bits_lower_the_cheapest_loss_per_byte_first() {
        // bits 2..=8; sizes proportional to bits. Conv 0 is sensitive below 6 bits, conv 1
        // below 3 (made-up losses), conv 1 twice conv 0's size.
        let probe = |knee: u8, unit: u64, steep: f64| BitsProbe {
            loss: (2..=8u8)
                .map(|b| {
                    if b < knee {
                        steep * f64::from(knee - b)
                    } else {
                        0.0
                    }
                })
                .collect(),
            bytes: (2..=8u64).map(|b| b * unit).collect(),
        };
        let probes = [probe(6, 100, 1.0), probe(3, 200, 1.0)];
        let size = |bits: &[u8]| -> u64 {
            bits.iter()
                .zip([100u64, 200])
                .map(|(&b, u)| u64::from(b) * u)
                .sum()
        };
        let mut calls = 0;
        let under = |budget: u64| move |bits: &[u8]| -> Result<bool> { Ok(size(bits) <= budget) };
        // 8 / 8 is 2,400 bytes. A budget of 1,600: free steps only, the larger saving first
        // (conv 1 from 8 to 4 bits).
        let chosen = choose_auto_bits(&probes, &mut under(1600))
            .unwrap()
            .unwrap();
        assert_eq!(chosen, vec![8, 4]);
        // Everything that costs nothing taken (6 / 3 = 1,200 bytes), 1,000 needs a lossy step:
        // conv 1 to 2 bits saves 200 for 1.0, conv 0 to 5 saves 100 for 1.0: conv 1's.
        let chosen = choose_auto_bits(&probes, &mut under(1000))
            .unwrap()
            .unwrap();
        assert_eq!(chosen, vec![6, 2]);
        // The fitting check runs once per step and stops at the first fit.
        let mut counting = |bits: &[u8]| -> Result<bool> {
            calls += 1;
            Ok(size(bits) <= 2400)
        };
        assert_eq!(
            choose_auto_bits(&probes, &mut counting).unwrap(),
            Some(vec![8, 8])
        );
        assert_eq!(calls, 1);
        // The last step down may save more than needed: what it left is spent again. A (100
        // bytes a bit) loses a little at 7 bits and much below, B (300 a bit) 0.5 a bit below
        // 8: A goes to 7,
        // B to 7 then 6 (2,500 bytes); 200 left bring A back to 8.
        let a = BitsProbe {
            loss: (2..=8u8)
                .map(|b| match b {
                    8 => 0.0,
                    7 => 0.001,
                    _ => f64::from(7 - b),
                })
                .collect(),
            bytes: (2..=8u64).map(|b| b * 100).collect(),
        };
        let b = BitsProbe {
            loss: (2..=8u8).map(|b| 0.5 * f64::from(8 - b)).collect(),
            bytes: (2..=8u64).map(|b| b * 300).collect(),
        };
        let two = |budget: u64| {
            move |bits: &[u8]| -> Result<bool> {
                Ok(u64::from(bits[0]) * 100 + u64::from(bits[1]) * 300 <= budget)
            }
        };
        assert_eq!(
            choose_auto_bits(&[a, b], &mut two(2700)).unwrap(),
            Some(vec![8, 6])
        );
        // 2 / 2 = 600 bytes is the least there is.
        assert_eq!(choose_auto_bits(&probes, &mut under(599)).unwrap(), None);
        assert!(
            choose_auto_bits(&[probe(3, 1, 1.0)], &mut under(1))
                .unwrap()
                .is_none()
        );
        let short = BitsProbe {
            loss: vec![0.0; 3],
            bytes: vec![1; 3],
        };
        assert!(choose_auto_bits(&[short], &mut under(1)).is_err());
    }

    /// `PREFIX=auto` takes the smallest rank whose (here: made-up) held-out accuracy is within
    /// [`AUTO_RANK_DROP`] of whole codes, tries only the convs its rule wins, leaves the other
    /// rules as they are, and keeps whole when no rank is close enough.
    #[test]
    fn auto_ranks_take_the_smallest_rank_within_the_drop() {
        let conv = |name: &str| LayerEntry {
            name: name.into(),
            ..layer([64, 64, 3, 3])
        };
        let layers = [conv("a.0"), conv("a.1"), conv("b.0")];
        let weights: Vec<Vec<f32>> = (0..3)
            .map(|k| {
                (0..64 * 64 * 9)
                    .map(|i| ((i * 7 + k) % 13) as f32 - 6.0)
                    .collect()
            })
            .collect();
        let rules = |r: &[&str]| CodedOptions::parse(r, 3, 1e-4).unwrap();
        // Accuracy by rank: whole 90, rank 32: 89.5, 16: 87.5, 8: 80.
        let by_rank = |convs: &[CodedTensor]| -> Result<f64> {
            assert!(convs.iter().all(|t| t.name.starts_with("a.")), "{convs:?}");
            assert_eq!(convs.len(), 2);
            Ok(match convs[0].rank {
                0 => 90.0,
                32 => 89.5,
                16 => 87.5,
                _ => 80.0,
            })
        };
        let (resolved, lines) =
            choose_auto_ranks(&layers, &weights, &rules(&["a=auto@4", "b=1/2"]), &mut {
                by_rank
            })
            .unwrap();
        assert_eq!(resolved.rules[0].fraction, 0.25);
        assert!(resolved.rules[0].auto);
        assert_eq!(resolved.rules[1], rules(&["a=1", "b=1/2"]).rules[1]);
        assert!(
            lines[0].contains("1/8 80.00 %") && lines[0].contains("rank cout/4"),
            "{lines:?}"
        );
        // Every rank more than the drop below whole: whole.
        let (resolved, lines) = choose_auto_ranks(
            &layers,
            &weights,
            &rules(&["a=auto"]),
            &mut |c: &[CodedTensor]| Ok(if c[0].rank == 0 { 90.0 } else { 86.9 }),
        )
        .unwrap();
        assert_eq!(resolved.rules[0].fraction, 1.0);
        assert!(lines[0].contains("chose whole"), "{lines:?}");
    }

    /// A rank-2 matrix comes back exactly (to f32 rounding) from rank-2 factors, and the first
    /// factor pair alone is its best rank-1 approximation (error = the second singular value).
    #[test]
    fn factors_recover_a_low_rank_matrix() {
        // W = 3 a b^T + 1 c d^T with orthonormal a, c (4-vectors) and b, d (6-vectors).
        let a = [0.5, 0.5, 0.5, 0.5];
        let c = [0.5, -0.5, 0.5, -0.5];
        let s6 = 6f64.sqrt();
        let b = [1.0 / s6; 6];
        let d = [
            1.0 / s6,
            -1.0 / s6,
            1.0 / s6,
            -1.0 / s6,
            1.0 / s6,
            -1.0 / s6,
        ];
        let mut w = vec![0f32; 24];
        for i in 0..4 {
            for j in 0..6 {
                w[i * 6 + j] = (3.0 * a[i] * b[j] + c[i] * d[j]) as f32;
            }
        }
        let product = |u: &[f32], v: &[f32], r: usize| -> Vec<f32> {
            (0..24)
                .map(|k| (0..r).map(|t| u[(k / 6) * r + t] * v[t * 6 + k % 6]).sum())
                .collect()
        };
        let (u, v) = split_factors(&w, 4, 6, 2);
        let back = product(&u, &v, 2);
        for (x, y) in w.iter().zip(&back) {
            assert!((x - y).abs() < 1e-5, "{w:?} vs {back:?}");
        }
        let (u, v) = split_factors(&w, 4, 6, 1);
        let back = product(&u, &v, 1);
        let err: f32 = w.iter().zip(&back).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((err.sqrt() - 1.0).abs() < 1e-4, "residual {}", err.sqrt());
        // The factors share the singular value: each column/row has norm sqrt(3).
        let un: f32 = (0..4).map(|i| u[i] * u[i]).sum();
        let vn: f32 = v.iter().map(|x| x * x).sum();
        assert!(
            (un - 3.0).abs() < 1e-4 && (vn - 3.0).abs() < 1e-4,
            "{un} {vn}"
        );
    }

    /// The training forward's rounding is the stored one: with scales that binary16 holds
    /// exactly (every row's largest value 0.75, scale 0.25) the decoded weights of the stored
    /// conv equal the straight-through forward's; with factors (any scales) almost all do.
    #[test]
    fn training_rounding_matches_what_is_stored() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let mut rng = crate::rng::SplitMix64::new(3);
        let mut w: Vec<f32> = (0..8 * 3 * 9)
            .map(|_| rng.below(1000) as f32 / 1400.0 - 0.35)
            .collect();
        for row in w.chunks_exact_mut(27) {
            row[5] = 0.75;
        }
        for rank in [0, 2] {
            let conv = CodedConv::new(&layer([8, 3, 3, 3]), &w, rank, 3);
            let (params, layout) = CodedParams::<B>::new(std::slice::from_ref(&conv), &device);
            let trained = params.convs(&layout)["w"]
                .clone()
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let stored = coded_weights(&conv.stored()).unwrap();
            // Factors: the stored scales differ from the exact ones by up to 2^-11 relative,
            // which moves every product a little; a code that rounds the other way moves it by
            // a whole step.
            let tolerance = if rank == 0 { 1e-6 } else { 2e-3 };
            let close = trained
                .iter()
                .zip(&stored)
                .filter(|(a, b)| (*a - *b).abs() <= tolerance)
                .count();
            let want = if rank == 0 { w.len() } else { w.len() * 9 / 10 };
            assert!(close >= want, "rank {rank}: {close} of {} agree", w.len());
            // And the values read back are the parameters.
            assert_eq!(params.values(std::slice::from_ref(&conv)).unwrap()[0], conv);
        }
    }
}
