//! Phase 1: reconstruction. A fresh predictor learns to reproduce the kernels (global RMSE of
//! the centre-cropped predictions, Adam, cosine schedule); progressive rounds each reconstruct
//! the previous round's decoded weights, and the best round by held-out accuracy is kept.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};

use super::kernels::{KernelSet, Sampler};
use super::mlp::{DeviceKernels, KernelRows, Mlp, masked_squares, read_scalar};
use super::progress::Progress;
use super::report::{RoundReport, rmse};
use super::schedule::{PHASE1_FLOOR, cosine};
use crate::decode::decode_layers;
use crate::device::TrainBackend;
use crate::error::{Error, Result};
use crate::format::LayerEntry;
use crate::permute::Permutation;
use crate::predictor::{Predictor, PredictorConfig};
use crate::rng::SplitMix64;

/// Training hyper-parameters of one round.
pub struct TrainSettings {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub beta1: f32,
}

impl TrainSettings {
    pub fn lr_at(&self, step: usize) -> f64 {
        cosine(self.lr, PHASE1_FLOOR, step, self.steps)
    }
}

/// Summary of one training run.
pub struct TrainOutcome {
    pub predictor: Predictor,
    /// (step, batch RMSE) at evenly spaced steps.
    pub loss_history: Vec<(usize, f32)>,
}

/// Trains a fresh predictor to reproduce `set.targets`.
pub fn train<B: TrainBackend>(
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
    let sampler = Sampler::new(&set.norms);
    let mut history = Vec::new();
    let report_every = (settings.steps / 200).clamp(1, 50);
    let history_every = (settings.steps / 20).max(1);
    let halves = Halves::new::<B>();
    progress.start(settings.steps as u64);
    for step in 0..settings.steps {
        if progress.cancelled() {
            return Err(Error::Cancelled);
        }
        let idx = sampler.batch(&mut rng, batch);
        let (loss, grads) = halves.step(&model, &kernels, set, &idx, device);
        let want_loss = step % report_every == 0 || step + 1 == settings.steps;
        let loss_value = if want_loss {
            Some(read_scalar(loss)?)
        } else {
            None
        };
        model = optim.step(settings.lr_at(step), model, grads);
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

/// One phase-1 step's loss and gradients, computed as two halves of the kernel batch.
///
/// Phase 1's products (batch x hidden x hidden) are too small for the CPU backend to split well
/// over threads (hidden 180: 67-89k kernels/s on one thread, 80-84k on two, Emerald Rapids VM);
/// two halves of the batch on two threads are independent. The loss is the whole batch's RMSE
/// `sqrt(S / M)` (S the masked squared error, M the mask count), so each half's gradient is
/// `dS_h / (2 M sqrt(S / M))`: the halves' forwards run first, then their backwards with that
/// common factor. The halves are computed the same way on any thread count and device (on one
/// thread, or off the CPU, one after the other), so the predictor does not depend on either.
struct Halves {
    /// Two one-thread pools for the CPU backend with at least two threads; `None` otherwise.
    pools: Option<[rayon::ThreadPool; 2]>,
}

impl Halves {
    fn new<B: TrainBackend>() -> Self {
        let threads = rayon::current_num_threads();
        let pool = || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.div_ceil(2))
                .build()
                .ok()
        };
        let pools = (B::ON_HOST_THREADS && threads > 1)
            .then(|| Some([pool()?, pool()?]))
            .flatten();
        Halves { pools }
    }

    /// Runs `a` and `b`, each on its own pool when there are pools.
    fn both<RA: Send, RB: Send>(
        &self,
        a: impl FnOnce() -> RA + Send,
        b: impl FnOnce() -> RB + Send,
    ) -> (RA, RB) {
        match &self.pools {
            Some([pa, pb]) => rayon::join(|| pa.install(a), || pb.install(b)),
            None => (a(), b()),
        }
    }

    /// The batch RMSE at `idx` and its gradients.
    fn step<B: TrainBackend>(
        &self,
        model: &Mlp<B>,
        kernels: &DeviceKernels<B>,
        set: &KernelSet,
        idx: &[i32],
        device: &B::Device,
    ) -> (Tensor<B, 1>, GradientsParams) {
        let (mut ia, ib) = idx.split_at(idx.len() / 2);
        if ia.is_empty() {
            // A one-kernel batch: the same kernel twice has the same RMSE and gradient.
            ia = ib;
        }
        let (ma, mb) = (model.fresh_leaves(), model.fresh_leaves());
        let forward = |model: &Mlp<B>, part: &[i32]| {
            let rows = KernelRows::of(set, part, kernels, device);
            let n = part.len();
            let part: Tensor<B, 1, Int> =
                Tensor::from_data(TensorData::new(part.to_vec(), [n]), device);
            let y = kernels.targets.clone().select(0, part.clone());
            let m = kernels.masks.clone().select(0, part);
            masked_squares(model.forward(kernels, &rows), y, m)
        };
        let ((sa, ca), (sb, cb)) = self.both(|| forward(&ma, ia), || forward(&mb, ib));
        let count = ca + cb;
        let rmse = ((sa.clone().detach() + sb.clone().detach()) / count.clone()).sqrt();
        // d sqrt(S / M) / dS, kept on the device (no sync per step); where the error is zero
        // so is dS, and the clamp keeps the product finite.
        let factor = (rmse.clone() * count * 2.0).clamp_min(1e-30).recip();
        let backward = |model: &Mlp<B>, sq: Tensor<B, 1>| {
            GradientsParams::from_grads((sq * factor.clone()).backward(), model)
        };
        let (ga, gb) = self.both(|| backward(&ma, sa), || backward(&mb, sb));
        let mut sum = GradientsAccumulator::<Mlp<B>>::new();
        sum.accumulate(model, ga);
        sum.accumulate(model, gb);
        (rmse, sum.grads())
    }
}

/// Progressive rounds over one checkpoint's predicted layers.
pub struct Rounds<'a> {
    pub cfg: &'a PredictorConfig,
    pub layers: &'a [LayerEntry],
    pub permutations: &'a [Permutation],
    /// The source weights per layer (round 1's targets, and the norms for sampling).
    pub original: &'a [Vec<f32>],
    pub settings: TrainSettings,
    pub rounds: usize,
    /// Decoder threads for measuring each round.
    pub threads: usize,
}

/// The kept round's predictor and what every round measured.
pub struct RoundsOutcome {
    pub predictor: Predictor,
    /// Held-out accuracy of the kept predictor (f32 weights), when there is data.
    pub held_out: Option<f64>,
    pub kept_round: usize,
    pub reports: Vec<RoundReport>,
}

/// Runs the rounds; round `r + 1` reconstructs round `r`'s decoded weights. Each round takes
/// its seed from `seeds`. With `held_out_accuracy` giving figures, the best round is kept,
/// otherwise the last.
pub fn run_rounds<B: TrainBackend>(
    device: &B::Device,
    r: &Rounds<'_>,
    seeds: &mut SplitMix64,
    held_out_accuracy: &dyn Fn(&Predictor) -> Result<Option<f64>>,
    progress: &dyn Progress,
) -> Result<RoundsOutcome> {
    let kernel_size = r.cfg.kernel_size as usize;
    let mut targets = r.original.to_vec();
    let mut reports = Vec::new();
    let mut best: Option<(Predictor, Option<f64>, usize)> = None;
    for round in 0..r.rounds {
        progress.stage(&format!("round {}/{}", round + 1, r.rounds));
        let set = KernelSet::new(r.layers, r.permutations, &targets, r.original, kernel_size);
        let t_round = Instant::now();
        let outcome = train::<B>(device, r.cfg, &set, &r.settings, seeds.next_u64(), progress)?;
        let train_seconds = t_round.elapsed().as_secs_f64();
        let decoded = decode_layers(&outcome.predictor, r.layers, r.permutations, r.threads);
        let acc = held_out_accuracy(&outcome.predictor)?;
        reports.push(RoundReport {
            round: round + 1,
            rmse_vs_target: rmse(&decoded, &targets),
            rmse_vs_original: rmse(&decoded, r.original),
            train_seconds,
            loss_history: outcome.loss_history,
            held_out_accuracy: acc,
        });
        targets = decoded;
        let better = match (&best, acc) {
            (Some((_, Some(b), _)), Some(a)) => a > *b,
            _ => true,
        };
        if better {
            best = Some((outcome.predictor, acc, round + 1));
        }
    }
    let (predictor, held_out, kept_round) =
        best.ok_or_else(|| Error::Training("no rounds ran".into()))?;
    Ok(RoundsOutcome {
        predictor,
        held_out,
        kept_round,
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::super::progress::NoProgress;
    use super::*;
    use crate::format::TensorDtype;
    use crate::permute::PermutationKind;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn tiny_layers() -> (Vec<LayerEntry>, Vec<Vec<f32>>) {
        let mut rng = SplitMix64::new(11);
        let shapes = [[4u32, 1, 3, 3], [4, 4, 3, 3], [2, 4, 1, 1]];
        let layers = shapes
            .iter()
            .enumerate()
            .map(|(i, &shape)| LayerEntry {
                name: format!("l{i}.weight"),
                dtype: TensorDtype::F32,
                permutation: PermutationKind::None,
                shape,
            })
            .collect::<Vec<_>>();
        let weights = layers
            .iter()
            .map(|l| {
                (0..l.elements())
                    .map(|_| 0.3 * rng.symmetric_f32())
                    .collect()
            })
            .collect();
        (layers, weights)
    }

    /// Phase 1 on its own: the RMSE falls, the same seed gives the same predictor, and with no
    /// held-out figures the last of two rounds is kept and round 2 is measured against round 1.
    #[test]
    fn rounds_learn_deterministically_and_keep_the_last_without_data() {
        let (layers, weights) = tiny_layers();
        let perms = vec![Permutation::Identity; layers.len()];
        let cfg = PredictorConfig::reference(16, 3, 4, 0.76);
        let rounds = Rounds {
            cfg: &cfg,
            layers: &layers,
            permutations: &perms,
            original: &weights,
            settings: TrainSettings {
                steps: 150,
                batch: 16,
                lr: 5e-3,
                beta1: 0.5,
            },
            rounds: 2,
            threads: 1,
        };
        let device = Default::default();
        let no_data = |_: &Predictor| -> Result<Option<f64>> { Ok(None) };
        let run = || {
            let mut seeds = SplitMix64::new(1);
            run_rounds::<B>(&device, &rounds, &mut seeds, &no_data, &NoProgress).unwrap()
        };
        let a = run();
        let b = run();
        assert_eq!(a.predictor, b.predictor);
        assert_eq!(a.kept_round, 2);
        assert_eq!(a.reports.len(), 2);
        let r1 = &a.reports[0];
        let first = r1.loss_history.first().unwrap().1;
        let last = r1.loss_history.last().unwrap().1;
        assert!(
            last < 0.7 * first,
            "phase 1 did not learn: {first} -> {last}"
        );
        // Round 1's target is the source; round 2's is round 1's decoded weights.
        assert_eq!(r1.rmse_vs_target, r1.rmse_vs_original);
        assert_ne!(a.reports[1].rmse_vs_target, a.reports[1].rmse_vs_original);
    }

    /// The halves' loss and gradients equal the whole batch's RMSE and its gradient, on one
    /// thread and on two pools alike (bit-identical between those two), and for a one-kernel batch.
    #[test]
    fn halves_compute_the_whole_batch_rmse_gradient() {
        use super::super::mlp::masked_rmse;
        let (layers, weights) = tiny_layers();
        let perms = vec![Permutation::Identity; layers.len()];
        let cfg = PredictorConfig::reference(16, 3, 4, 0.76);
        let set = KernelSet::new(&layers, &perms, &weights, &weights, 3);
        let device = Default::default();
        let kernels = DeviceKernels::<B>::new(&cfg, &set, &device);
        let model = Mlp::<B>::init(&cfg, &mut SplitMix64::new(3), &device);
        let flat = |grads: &GradientsParams| -> Vec<Vec<f32>> {
            let data = |d: Option<TensorData>| d.expect("a gradient").into_vec::<f32>().unwrap();
            let weights = model.weights_for_tests().iter();
            let biases = model.biases_for_tests().iter();
            weights
                .map(|w| {
                    data(
                        grads
                            .get::<burn::backend::Flex, 2>(w.id)
                            .map(|t| t.into_data()),
                    )
                })
                .chain(biases.map(|b| {
                    data(
                        grads
                            .get::<burn::backend::Flex, 1>(b.id)
                            .map(|t| t.into_data()),
                    )
                }))
                .collect()
        };
        let two_pools = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for idx in [vec![0, 5, 2, 9, 7, 1, 3], vec![4]] {
            let n = idx.len();
            let t: Tensor<B, 1, Int> =
                Tensor::from_data(TensorData::new(idx.clone(), [n]), &device);
            let rows = KernelRows::of(&set, &idx, &kernels, &device);
            let y = kernels.targets.clone().select(0, t.clone());
            let m = kernels.masks.clone().select(0, t);
            let whole = masked_rmse(model.forward(&kernels, &rows), y, m);
            let whole_loss = read_scalar(whole.clone()).unwrap();
            let whole_grads = flat(&GradientsParams::from_grads(whole.backward(), &model));

            let sequential = Halves { pools: None };
            let (loss, grads) = sequential.step(&model, &kernels, &set, &idx, &device);
            let (loss, grads) = (read_scalar(loss).unwrap(), flat(&grads));
            let parallel = two_pools.install(Halves::new::<B>);
            assert!(parallel.pools.is_some());
            let (ploss, pgrads) = parallel.step(&model, &kernels, &set, &idx, &device);
            assert_eq!(read_scalar(ploss).unwrap().to_bits(), loss.to_bits());
            assert_eq!(flat(&pgrads), grads);

            assert!(
                (loss - whole_loss).abs() <= 1e-6 * whole_loss,
                "{loss} vs {whole_loss}"
            );
            for (g, w) in grads.iter().flatten().zip(whole_grads.iter().flatten()) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "gradient {g} vs {w}"
                );
            }
            assert!(whole_grads.iter().flatten().any(|&w| w != 0.0));
        }
    }

    /// With held-out figures the best round wins, not the last.
    #[test]
    fn rounds_keep_the_best_held_out_round() {
        let (layers, weights) = tiny_layers();
        let perms = vec![Permutation::Identity; layers.len()];
        let cfg = PredictorConfig::reference(8, 3, 2, 0.76);
        let rounds = Rounds {
            cfg: &cfg,
            layers: &layers,
            permutations: &perms,
            original: &weights,
            settings: TrainSettings {
                steps: 5,
                batch: 8,
                lr: 1e-3,
                beta1: 0.5,
            },
            rounds: 3,
            threads: 1,
        };
        let calls = std::cell::Cell::new(0);
        // Round 2 scores best.
        let scores = |_: &Predictor| -> Result<Option<f64>> {
            calls.set(calls.get() + 1);
            Ok(Some([50.0, 70.0, 60.0][calls.get() - 1]))
        };
        let mut seeds = SplitMix64::new(3);
        let out = run_rounds::<B>(
            &Default::default(),
            &rounds,
            &mut seeds,
            &scores,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(out.kept_round, 2);
        assert_eq!(out.held_out, Some(70.0));
        assert_eq!(out.reports.len(), 3);
    }
}
