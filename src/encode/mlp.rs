//! The predictor as a burn module: a functional MLP whose parameters are plain tensors, the
//! kernel set on a device, and the separable first layer both training phases share.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::kernels::KernelSet;
use crate::device::{ConvBackend, GatherIndex};
use crate::error::{Error, Result};
use crate::predictor::{COORDS, LinearWeights, Predictor, PredictorConfig, TABLES};
use crate::rng::SplitMix64;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    weights: Vec<Param<Tensor<B, 2>>>,
    biases: Vec<Param<Tensor<B, 1>>>,
    /// The embedding tables (filter, channel; `[rows, width]`) and their biases, empty without.
    tables: Vec<Param<Tensor<B, 2>>>,
    table_biases: Vec<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Mlp<B> {
    /// A module holding a trained predictor's weights (phase 2 continues from phase 1).
    pub fn from_predictor(p: &Predictor, device: &B::Device) -> Self {
        let weight = |l: &LinearWeights| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(l.weight.clone(), [l.inputs, l.outputs]),
                device,
            ))
        };
        let bias = |l: &LinearWeights| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(l.bias.clone(), [l.outputs]),
                device,
            ))
        };
        Mlp {
            weights: p.layers.iter().map(weight).collect(),
            biases: p.layers.iter().map(bias).collect(),
            tables: p.embeddings.iter().map(weight).collect(),
            table_biases: p.embeddings.iter().map(bias).collect(),
        }
    }

    /// PyTorch's default `Linear` initialisation, U(-1/sqrt(in), 1/sqrt(in)), from our RNG
    /// ([`Predictor::init`]).
    pub fn init(cfg: &PredictorConfig, rng: &mut SplitMix64, device: &B::Device) -> Self {
        Self::from_predictor(&Predictor::init(cfg, rng), device)
    }

    /// The same parameters (same ids, same values) as fresh leaves of a new autodiff graph: two
    /// copies run forward and backward on separate threads without sharing a graph, and their
    /// gradients, keyed by parameter id, apply to the original.
    pub fn fresh_leaves(&self) -> Self {
        fn leaf<B: Backend, const D: usize>(p: &Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            Param::initialized(p.id, p.val().detach().require_grad())
        }
        Mlp {
            weights: self.weights.iter().map(leaf).collect(),
            biases: self.biases.iter().map(leaf).collect(),
            tables: self.tables.iter().map(leaf).collect(),
            table_biases: self.table_biases.iter().map(leaf).collect(),
        }
    }

    #[cfg(test)]
    pub fn weights_for_tests(&self) -> &[Param<Tensor<B, 2>>] {
        &self.weights
    }

    #[cfg(test)]
    pub fn biases_for_tests(&self) -> &[Param<Tensor<B, 1>>] {
        &self.biases
    }
}

/// The forward passes: the hidden and output layers run through [`ConvBackend::dense`] (on the
/// CPU, [`crate::dense`]).
impl<B: ConvBackend> Mlp<B> {
    /// Predictions for the kernels whose per-coordinate rows are `rows` (see [`KernelRows`]).
    pub fn forward(&self, kernels: &DeviceKernels<B>, rows: &KernelRows<B>) -> Tensor<B, 2> {
        self.forward_with(kernels, rows, |w| w)
    }

    /// The forward pass with every weight matrix rounded as integer storage rounds it (codes
    /// `-max..=max`, per-output scale `max |w| / max`: 127 for int8, 7 for int4), gradients
    /// passing straight through the rounding.
    pub fn forward_quantized_ste(
        &self,
        kernels: &DeviceKernels<B>,
        rows: &KernelRows<B>,
        max: f32,
    ) -> Tensor<B, 2> {
        self.forward_with(kernels, rows, |w| ste_rounded(w, max, 0))
    }

    /// The MLP with `weight` applied to each weight matrix before its matmul.
    ///
    /// The first layer is separable: the input is the concatenation of one encoding per
    /// coordinate, so `concat(pe) W1 = sum_c pe_c W1_c`. Each coordinate's encoding table (tens of
    /// rows) is multiplied by its block of W1 once, and the products are gathered per kernel: the
    /// batch x E x H product and its weight gradient become a few gathers and adds.
    fn forward_with(
        &self,
        kernels: &DeviceKernels<B>,
        rows: &KernelRows<B>,
        weight: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let last = self.weights.len() - 1;
        let w1 = weight(self.weights[0].val());
        let relu = last > 0;
        let mut x = if self.tables.is_empty() {
            first_layer(w1, self.biases[0].val(), relu, kernels, rows)
        } else {
            // The tables' rows enter the first layer like the encodings do: each table times its
            // block of W1 (`[rows, h]`), gathered by the kernels' rows, added after the encodings.
            let [e, h] = w1.dims();
            let pe = kernels.pe_tables[0].dims()[1] * COORDS;
            let d = (e - pe) / TABLES;
            let mut z = first_layer(
                w1.clone().slice([0..pe, 0..h]),
                self.biases[0].val(),
                false,
                kernels,
                rows,
            );
            for (t, (table, bias)) in self.tables.iter().zip(&self.table_biases).enumerate() {
                let rows_t = weight(table.val()) + bias.val().unsqueeze::<2>();
                let block = w1.clone().slice([pe + t * d..pe + (t + 1) * d, 0..h]);
                z = z + rows_t.matmul(block).select(0, rows.1[t].device.clone());
            }
            if relu {
                burn::tensor::activation::relu(z)
            } else {
                z
            }
        };
        for (i, (w, b)) in self.weights.iter().zip(&self.biases).enumerate().skip(1) {
            x = B::dense(x, weight(w.val()), b.val(), i != last);
        }
        x
    }
}

impl<B: Backend> Mlp<B> {
    /// Copies the parameters to the host in the container's layout.
    pub fn to_predictor(&self, cfg: &PredictorConfig) -> Result<Predictor> {
        let mut layers = Vec::new();
        for (w, b) in self
            .weights
            .iter()
            .zip(&self.biases)
            .chain(self.tables.iter().zip(&self.table_biases))
        {
            let [i, o] = w.val().dims();
            let to_vec = |d: TensorData| {
                d.into_vec::<f32>()
                    .map_err(|e| Error::Training(format!("{e:?}")))
            };
            layers.push(LinearWeights {
                inputs: i,
                outputs: o,
                weight: to_vec(w.val().into_data())?,
                bias: to_vec(b.val().into_data())?,
                scales: Vec::new(),
            });
        }
        let embeddings = layers.split_off(self.weights.len());
        Ok(Predictor {
            config: cfg.clone(),
            layers,
            embeddings,
        })
    }
}

/// `act(concat(pe) w1 + b1)` as `act(sum_c table_c[rows_c] (pe_c w1_c) + b1)`: the table
/// products are burn's (tens of rows each), the gather, sums and activation one
/// [`ConvBackend::gather_sum`].
fn first_layer<B: ConvBackend>(
    w1: Tensor<B, 2>,
    b1: Tensor<B, 1>,
    relu: bool,
    kernels: &DeviceKernels<B>,
    rows: &KernelRows<B>,
) -> Tensor<B, 2> {
    let [e, h] = w1.dims();
    let cw = e / COORDS; // the encodings' rows only (the caller slices off the tables' rows)
    let parts: [Tensor<B, 2>; COORDS] = std::array::from_fn(|c| {
        let block = w1.clone().slice([c * cw..(c + 1) * cw, 0..h]);
        kernels.pe_tables[c].clone().matmul(block)
    });
    B::gather_sum(parts, &rows.0, b1, relu)
}

/// A kernel set on a device: per-coordinate encoding tables, targets and crop masks.
pub struct DeviceKernels<B: Backend> {
    pub pe_tables: Vec<Tensor<B, 2>>,
    pub targets: Tensor<B, 2>,
    pub masks: Tensor<B, 2>,
    /// Whether the predictor reads embedding tables: only then do batches gather table rows.
    pub tables: bool,
}

impl<B: Backend> DeviceKernels<B> {
    pub fn new(cfg: &PredictorConfig, set: &KernelSet, device: &B::Device) -> Self {
        let n = set.len();
        let kk = set.out_width;
        let cw = cfg.coord_width();
        let pe_tables = (0..COORDS)
            .map(|c| {
                let rows = set.extents[c].max(1);
                Tensor::from_data(TensorData::new(cfg.pe_table(rows), [rows, cw]), device)
            })
            .collect();
        DeviceKernels {
            pe_tables,
            targets: Tensor::from_data(TensorData::new(set.targets.clone(), [n, kk]), device),
            masks: Tensor::from_data(TensorData::new(set.masks.clone(), [n, kk]), device),
            tables: cfg.embedding.is_some(),
        }
    }
}

/// For a batch of kernels, the row of each coordinate's encoding table (one index list per
/// coordinate, on the host and the device), gathered from `KernelSet::coords`.
/// With embedding tables (`kernels.tables`), also each kernel's row of each table; without, none.
pub struct KernelRows<B: Backend>([GatherIndex<B>; COORDS], Vec<GatherIndex<B>>);

impl<B: Backend> KernelRows<B> {
    /// The rows of the kernels at positions `idx` of `set`.
    pub fn of(
        set: &KernelSet,
        idx: &[i32],
        kernels: &DeviceKernels<B>,
        device: &B::Device,
    ) -> Self {
        Self::gather(set, idx.iter().map(|&i| i as usize), kernels.tables, device)
    }

    /// The rows of every kernel of `set`, in position order.
    pub fn all(set: &KernelSet, kernels: &DeviceKernels<B>, device: &B::Device) -> Self {
        Self::gather(set, 0..set.len(), kernels.tables, device)
    }

    fn gather(
        set: &KernelSet,
        positions: impl Iterator<Item = usize> + Clone,
        tables: bool,
        device: &B::Device,
    ) -> Self {
        let table_count = if tables { TABLES } else { 0 };
        KernelRows(
            std::array::from_fn(|c| {
                GatherIndex::new(
                    positions.clone().map(|p| set.coords[p][c]).collect(),
                    device,
                )
            }),
            (0..table_count)
                .map(|t| {
                    GatherIndex::new(
                        positions.clone().map(|p| set.table_rows[p][t]).collect(),
                        device,
                    )
                })
                .collect(),
        )
    }
}

/// Global RMSE of `pred` against the masked targets.
pub fn masked_rmse<B: Backend>(
    pred: Tensor<B, 2>,
    y: Tensor<B, 2>,
    m: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let (squares, count) = masked_squares(pred, y, m);
    (squares / count).sqrt()
}

/// The masked squared error of `pred` against `y`, summed, and the mask's count: the two sums
/// [`masked_rmse`] divides (phase 1 adds them over the halves of a batch first).
pub fn masked_squares<B: Backend>(
    pred: Tensor<B, 2>,
    y: Tensor<B, 2>,
    m: Tensor<B, 2>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let diff = (pred - y) * m.clone();
    (diff.powi_scalar(2).sum(), m.sum())
}

/// The value of a one-element tensor on the host (a loss read back for the progress bar and the
/// history; it synchronises the device, so callers do it every few steps only).
pub fn read_scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f32> {
    t.into_data()
        .into_vec::<f32>()
        .map_err(|e| Error::Training(format!("{e:?}")))?
        .first()
        .copied()
        .ok_or_else(|| Error::Training("empty loss tensor".into()))
}

/// `w` through symmetric integer codes of at most `max`, one scale `max|w| / max` per slice
/// along `dim` (0: per column, the predictor's per-output scales; 1: per row, the coded convs'),
/// rounded to nearest with the gradient passed straight through the rounding.
pub fn ste_rounded<B: Backend>(w: Tensor<B, 2>, max: f32, dim: usize) -> Tensor<B, 2> {
    let scale = w.clone().detach().abs().max_dim(dim).clamp_min(1e-30) / max;
    let q = (w.clone().detach() / scale.clone())
        .round()
        .clamp(-max, max)
        * scale;
    w.clone() + (q - w.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// The separable first layer (per-coordinate table products, gathered; with embedding
    /// tables, their rows times their blocks of W1) computes the same function as the dense
    /// `concat(pe, rows) @ W1` of the container's definition ([`Predictor::forward_f64`]).
    #[test]
    fn separable_first_layer_equals_the_dense_forward() {
        for width in [0, 3] {
            type B = Flex;
            let device = Default::default();
            let extents = [3usize, 7, 5];
            let table_extents = [11usize, 9];
            let cfg = PredictorConfig::reference(12, 3, 5, 0.76)
                .with_embedding(width, table_extents.map(|e| e as u32));
            let mut rng = SplitMix64::new(7);
            let n = 40;
            let set = KernelSet {
                coords: (0..n)
                    .map(|_| extents.map(|e| rng.below(e as u64) as u32))
                    .collect(),
                targets: vec![0.0; n * 9],
                masks: vec![1.0; n * 9],
                norms: vec![1.0; n],
                extents,
                out_width: 9,
                table_rows: (0..n)
                    .map(|_| table_extents.map(|e| rng.below(e as u64) as u32))
                    .collect(),
                table_extents,
            };
            let device_kernels = DeviceKernels::<B>::new(&cfg, &set, &device);
            let rows = KernelRows::<B>::all(&set, &device_kernels, &device);
            let mlp = Mlp::<B>::init(&cfg, &mut rng, &device);
            let got = mlp
                .forward(&device_kernels, &rows)
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let p = mlp.to_predictor(&cfg).unwrap();
            assert_eq!(p.embeddings.len(), if width > 0 { 2 } else { 0 });
            let mut max_diff = 0f64;
            for (i, (k, r)) in set.coords.iter().zip(&set.table_rows).enumerate() {
                let want = p.forward_f64(*k, *r);
                for (o, want) in want.iter().enumerate() {
                    max_diff = max_diff.max((f64::from(got[i * 9 + o]) - want).abs());
                }
            }
            assert!(
                max_diff < 1e-5,
                "separable forward differs by {max_diff} (width {width})"
            );
        }
    }
}
