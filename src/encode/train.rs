//! Phase 1 training with burn: a functional MLP whose parameters are plain tensors, trained on
//! batches of kernels to minimise the global RMSE of the (centre-cropped) predictions.

use burn::module::{AutodiffModule, Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::{KernelSet, Progress, TrainSettings};
use crate::error::{Error, Result};
use crate::predictor::{COORDS, LinearWeights, Predictor, PredictorConfig, encode_coordinate};
use crate::rng::SplitMix64;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    weights: Vec<Param<Tensor<B, 2>>>,
    biases: Vec<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Mlp<B> {
    /// A module holding a trained predictor's weights (phase 2 continues from phase 1).
    pub fn from_predictor(p: &Predictor, device: &B::Device) -> Self {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for l in &p.layers {
            weights.push(Param::from_tensor(Tensor::from_data(
                TensorData::new(l.weight.clone(), [l.inputs, l.outputs]),
                device,
            )));
            biases.push(Param::from_tensor(Tensor::from_data(
                TensorData::new(l.bias.clone(), [l.outputs]),
                device,
            )));
        }
        Mlp { weights, biases }
    }

    /// PyTorch's default `Linear` initialisation, U(-1/sqrt(in), 1/sqrt(in)), from our RNG.
    fn init(cfg: &PredictorConfig, rng: &mut SplitMix64, device: &B::Device) -> Self {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for dims in cfg.widths.windows(2) {
            let (i, o) = (dims[0] as usize, dims[1] as usize);
            let bound = 1.0 / (i as f64).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            };
            let w = draw(i * o);
            let b = draw(o);
            weights.push(Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [i, o]),
                device,
            )));
            biases.push(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [o]),
                device,
            )));
        }
        Mlp { weights, biases }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_with(x, |w| w)
    }

    /// The forward pass with every weight matrix rounded as int8 storage rounds it (per-output
    /// scale `max |w| / 127`), gradients passing straight through the rounding.
    pub fn forward_int8_ste(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_with(x, |w| {
            let scale = w.clone().detach().abs().max_dim(0).clamp_min(1e-30) / 127.0;
            let q = (w.clone().detach() / scale.clone())
                .round()
                .clamp(-127.0, 127.0)
                * scale;
            w.clone() + (q - w.detach())
        })
    }

    /// The MLP with `weight` applied to each weight matrix before its matmul.
    fn forward_with(
        &self,
        mut x: Tensor<B, 2>,
        weight: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let last = self.weights.len() - 1;
        for (i, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            x = x.matmul(weight(w.val())) + b.val().unsqueeze::<2>();
            if i != last {
                x = burn::tensor::activation::relu(x);
            }
        }
        x
    }

    /// Copies the parameters to the host in the container's layout.
    pub fn to_predictor(&self, cfg: &PredictorConfig) -> Result<Predictor> {
        let mut layers = Vec::new();
        for (w, b) in self.weights.iter().zip(&self.biases) {
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
        Ok(Predictor {
            config: cfg.clone(),
            layers,
        })
    }
}

/// A kernel set on a device: per-coordinate encodings, coordinates, targets and crop masks.
pub struct DeviceKernels<B: Backend> {
    pub pe_tables: Vec<Tensor<B, 2>>,
    pub coords: Vec<Tensor<B, 1, Int>>,
    pub targets: Tensor<B, 2>,
    pub masks: Tensor<B, 2>,
}

impl<B: Backend> DeviceKernels<B> {
    pub fn new(cfg: &PredictorConfig, set: &KernelSet, device: &B::Device) -> Self {
        let n = set.len();
        let kk = set.out_width;
        let cw = cfg.coord_width();
        let freqs = cfg.frequencies();
        let pe_tables = (0..COORDS)
            .map(|c| {
                let rows = set.extents[c].max(1);
                let mut pe = vec![0f32; rows * cw];
                for (v, row) in pe.chunks_exact_mut(cw).enumerate() {
                    encode_coordinate(v as u32, &freqs, row);
                }
                Tensor::from_data(TensorData::new(pe, [rows, cw]), device)
            })
            .collect();
        let coords = (0..COORDS)
            .map(|c| {
                let v: Vec<i32> = set.coords.iter().map(|x| x[c] as i32).collect();
                Tensor::from_data(TensorData::new(v, [n]), device)
            })
            .collect();
        DeviceKernels {
            pe_tables,
            coords,
            targets: Tensor::from_data(TensorData::new(set.targets.clone(), [n, kk]), device),
            masks: Tensor::from_data(TensorData::new(set.masks.clone(), [n, kk]), device),
        }
    }

    /// Predictor inputs `[rows, E]` for the kernels `idx`.
    pub fn inputs(&self, idx: &Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let parts = (0..COORDS)
            .map(|c| {
                self.pe_tables[c]
                    .clone()
                    .select(0, self.coords[c].clone().select(0, idx.clone()))
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// Predictor inputs for every kernel, in position order.
    pub fn all_inputs(&self) -> Tensor<B, 2> {
        let parts = (0..COORDS)
            .map(|c| self.pe_tables[c].clone().select(0, self.coords[c].clone()))
            .collect();
        Tensor::cat(parts, 1)
    }
}

/// Global RMSE of `pred` against the masked targets.
pub fn masked_rmse<B: Backend>(
    pred: Tensor<B, 2>,
    y: Tensor<B, 2>,
    m: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let diff = (pred - y) * m.clone();
    (diff.powi_scalar(2).sum() / m.sum()).sqrt()
}

/// Summary of one training run.
pub struct TrainOutcome {
    pub predictor: Predictor,
    /// (step, batch RMSE) at evenly spaced steps.
    pub loss_history: Vec<(usize, f32)>,
}

/// Trains a fresh predictor to reproduce `set.targets`.
pub fn train<B: AutodiffBackend>(
    device: &B::Device,
    cfg: &PredictorConfig,
    set: &KernelSet,
    settings: &TrainSettings,
    round_seed: u64,
    progress: &dyn Progress,
) -> Result<TrainOutcome> {
    let mut rng = SplitMix64::new(round_seed);
    let n = set.len();

    let kernels = DeviceKernels::<B>::new(cfg, set, device);

    let mut model = Mlp::<B>::init(cfg, &mut rng, device);
    let mut optim = AdamConfig::new()
        .with_beta_1(settings.beta1)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .init::<B, Mlp<B>>();

    let batch = settings.batch.min(n);
    let sampler = super::Sampler::new(&set.norms);
    let mut history = Vec::new();
    let report_every = (settings.steps / 200).clamp(1, 50);
    let history_every = (settings.steps / 20).max(1);
    progress.start(settings.steps as u64);
    for step in 0..settings.steps {
        let idx = sampler.batch(&mut rng, batch);
        let idx: Tensor<B, 1, Int> = Tensor::from_data(TensorData::new(idx, [batch]), device);
        let x = kernels.inputs(&idx);
        let y = kernels.targets.clone().select(0, idx.clone());
        let m = kernels.masks.clone().select(0, idx);
        let loss = masked_rmse(model.forward(x), y, m);
        let lr = settings.lr_at(step);
        let want_loss = step % report_every == 0 || step + 1 == settings.steps;
        let loss_value = if want_loss {
            let v = loss
                .clone()
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| Error::Training(format!("{e:?}")))?;
            v.first().copied()
        } else {
            None
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        if let Some(v) = loss_value {
            if !v.is_finite() {
                return Err(Error::Training(format!("loss became {v} at step {step}")));
            }
            if step % history_every == 0 || step + 1 == settings.steps {
                history.push((step, v));
            }
            progress.update(step as u64 + 1, v);
        }
    }
    progress.finish();
    Ok(TrainOutcome {
        predictor: model.valid().to_predictor(cfg)?,
        loss_history: history,
    })
}
