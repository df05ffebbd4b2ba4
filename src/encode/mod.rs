//! The encoder: phase 1 (reconstruction, with optional progressive rounds).
//!
//! Framework-specific training lives in `train.rs`; this file prepares the kernels, runs the
//! rounds, measures each round with the real decoder and assembles the container.

mod train;

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::checkpoint::{MappedFile, f32_values, is_predictable, natural_cmp, parse_safetensors};
use crate::decode::{coordinate_extents, decode_layers};
use crate::error::{Error, Result};
use crate::format::{ContainerParts, LayerEntry, TensorDtype, write_container};
use crate::permute::{Permutation, PermutationKind, search};
use crate::predictor::{COORDS, PredictorConfig};
use crate::rng::SplitMix64;

/// Where training runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// Everything `nernc encode` can be told.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    pub hidden: u32,
    pub steps: usize,
    pub rounds: usize,
    pub batch: usize,
    pub permutation: PermutationKind,
    pub seed: u64,
    pub device: DeviceKind,
    pub lr: f64,
    pub beta1: f32,
    pub pe_levels: u32,
    pub pe_base: f64,
    /// Decoder threads used to measure each round.
    pub threads: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            hidden: 180,
            steps: 20_000,
            rounds: 1,
            batch: 4096,
            permutation: PermutationKind::InFilter,
            seed: 0,
            device: DeviceKind::Cpu,
            lr: 5e-3,
            beta1: 0.9,
            pe_levels: 40,
            pe_base: 0.76,
            threads: crate::decode::default_threads(),
        }
    }
}

/// Progress reporting hooks (a terminal bar in the CLI, nothing in tests).
pub trait Progress {
    fn stage(&self, _message: &str) {}
    fn start(&self, _total: u64) {}
    fn update(&self, _position: u64, _loss: f32) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// An indicatif bar on stderr with loss and ETA; hidden when stderr is not a terminal.
pub struct BarProgress {
    bar: indicatif::ProgressBar,
}

impl Default for BarProgress {
    fn default() -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps  rmse {msg}  {elapsed_precise} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        BarProgress { bar }
    }
}

impl Progress for BarProgress {
    fn stage(&self, message: &str) {
        self.bar.set_prefix(message.to_string());
    }
    fn start(&self, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
    }
    fn update(&self, position: u64, loss: f32) {
        self.bar.set_position(position);
        self.bar.set_message(format!("{loss:.3e}"));
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Training hyper-parameters of one round.
pub(crate) struct TrainSettings {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub beta1: f32,
}

impl TrainSettings {
    /// Cosine decay per step from `lr` to 1e-6 (the reference schedule).
    pub fn lr_at(&self, step: usize) -> f64 {
        let min = 1e-6f64.min(self.lr);
        let t = step as f64 / self.steps.max(1) as f64;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Every predicted kernel in position order: coordinates, the centred `K x K` target and the
/// crop mask, and the original kernel's L2 norm (for weighted sampling).
pub(crate) struct KernelSet {
    pub coords: Vec<[u32; COORDS]>,
    pub targets: Vec<f32>,
    pub masks: Vec<f32>,
    pub norms: Vec<f32>,
    pub extents: [usize; COORDS],
    pub out_width: usize,
}

impl KernelSet {
    fn new(
        layers: &[LayerEntry],
        perms: &[Permutation],
        weights: &[Vec<f32>],
        original: &[Vec<f32>],
        kernel_size: usize,
    ) -> Self {
        let big = kernel_size;
        let kk_big = big * big;
        let total: usize = layers.iter().map(LayerEntry::kernels).sum();
        let mut set = KernelSet {
            coords: Vec::with_capacity(total),
            targets: vec![0.0; total * kk_big],
            masks: vec![0.0; total * kk_big],
            norms: Vec::with_capacity(total),
            extents: coordinate_extents(layers),
            out_width: kk_big,
        };
        let mut row = 0;
        for (li, ((l, perm), (w, orig))) in layers
            .iter()
            .zip(perms)
            .zip(weights.iter().zip(original))
            .enumerate()
        {
            let (cin, k) = (l.cin(), l.kernel());
            let off = (big - k) / 2;
            for p in 0..l.kernels() {
                let (a, b) = (p / cin, p % cin);
                let o = perm.original_kernel(cin, a, b);
                set.coords.push([li as u32, a as u32, b as u32]);
                let src = &w[o * k * k..(o + 1) * k * k];
                let norm = orig[o * k * k..(o + 1) * k * k]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f32>()
                    .sqrt();
                set.norms.push(norm);
                for y in 0..k {
                    for x in 0..k {
                        let at = row * kk_big + (y + off) * big + (x + off);
                        set.targets[at] = src[y * k + x];
                        set.masks[at] = 1.0;
                    }
                }
                row += 1;
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.coords.len()
    }
}

/// The reference sampling: with probability 0.8 a uniform subset, otherwise draws with
/// replacement proportional to the original kernel's L2 norm.
pub(crate) struct Sampler {
    cumulative: Vec<f64>,
    pool: std::cell::RefCell<Vec<i32>>,
}

impl Sampler {
    pub fn new(norms: &[f32]) -> Self {
        let mut acc = 0.0;
        let cumulative = norms
            .iter()
            .map(|&w| {
                acc += f64::from(w);
                acc
            })
            .collect();
        Sampler {
            cumulative,
            pool: std::cell::RefCell::new((0..norms.len() as i32).collect()),
        }
    }

    pub fn batch(&self, rng: &mut SplitMix64, size: usize) -> Vec<i32> {
        let n = self.cumulative.len();
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        if rng.next_f64() < 0.8 || total <= 0.0 {
            // Partial Fisher-Yates over a persistent pool: O(size) per batch.
            let mut pool = self.pool.borrow_mut();
            for i in 0..size {
                let j = i + rng.below((n - i) as u64) as usize;
                pool.swap(i, j);
            }
            pool[..size].to_vec()
        } else {
            (0..size)
                .map(|_| {
                    let u = rng.next_f64() * total;
                    self.cumulative.partition_point(|&c| c <= u).min(n - 1) as i32
                })
                .collect()
        }
    }
}

/// Result of one progressive round, measured with the decoder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RoundReport {
    pub round: usize,
    /// RMSE of the decoded weights against this round's targets.
    pub rmse_vs_target: f64,
    /// RMSE of the decoded weights against the source checkpoint.
    pub rmse_vs_original: f64,
    pub train_seconds: f64,
    pub loss_history: Vec<(usize, f32)>,
}

/// What `encode` produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncodeReport {
    pub source_bytes: u64,
    pub nern_bytes: u64,
    pub predicted_tensors: usize,
    pub passthrough_tensors: usize,
    pub predicted_parameters: u64,
    pub predictor_parameters: u64,
    pub permutation_seconds: f64,
    pub total_seconds: f64,
    pub rounds: Vec<RoundReport>,
    pub device: String,
}

fn rmse(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            let d = f64::from(*p) - f64::from(*q);
            sum += d * d;
        }
        n += x.len();
    }
    (sum / n.max(1) as f64).sqrt()
}

fn check_options(o: &EncodeOptions) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
    if o.hidden == 0 || o.hidden > 1 << 14 {
        return bad("--hidden must be in 1..=16384");
    }
    if o.steps == 0 {
        return bad("--steps must be at least 1");
    }
    if o.rounds == 0 || o.rounds > 64 {
        return bad("--rounds must be in 1..=64");
    }
    if o.batch == 0 {
        return bad("--batch must be at least 1");
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return bad("--lr must be positive");
    }
    if o.device == DeviceKind::Cuda && !cfg!(feature = "cuda") {
        return Err(Error::DeviceUnavailable {
            device: "cuda".into(),
            why: "this nernc was built without the `cuda` feature (cargo build --features cuda)"
                .into(),
        });
    }
    if o.pe_levels == 0 || o.pe_levels > 256 || !(o.pe_base.is_finite() && o.pe_base > 0.0) {
        return bad("positional encoding: levels in 1..=256, base positive");
    }
    Ok(())
}

/// Encodes the checkpoint at `input`; returns the `.nern` bytes and a report.
pub fn encode(
    input: &Path,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, EncodeReport)> {
    check_options(opts)?;
    let started = Instant::now();
    let file = MappedFile::open(input)?;
    let source = parse_safetensors(input, file.bytes())?;

    // Split: predicted conv weights in network (natural) order, everything else verbatim.
    let mut predicted: Vec<_> = source
        .tensors
        .iter()
        .filter(|t| is_predictable(t))
        .collect();
    predicted.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    if predicted.is_empty() {
        return Err(Error::NoConvWeights {
            path: input.to_path_buf(),
        });
    }
    let mut layers = Vec::new();
    let mut original = Vec::new();
    for t in &predicted {
        original.push(f32_values(t)?);
        layers.push(LayerEntry {
            name: t.name.clone(),
            dtype: TensorDtype::F32,
            permutation: opts.permutation,
            shape: [
                t.shape[0] as u32,
                t.shape[1] as u32,
                t.shape[2] as u32,
                t.shape[3] as u32,
            ],
        });
    }
    if layers.len() > u32::MAX as usize {
        return Err(Error::InvalidArgument("too many layers".into()));
    }
    let kernel_size = layers.iter().map(|l| l.shape[2]).max().unwrap_or(1);
    let cfg = PredictorConfig::reference(opts.hidden, kernel_size, opts.pe_levels, opts.pe_base);

    progress.stage("permutations");
    let t_perm = Instant::now();
    let permutations: Vec<Permutation> = layers
        .iter()
        .zip(&original)
        .map(|(l, w)| search(w, l.cout(), l.cin(), l.kernel(), l.permutation))
        .collect();
    let permutation_seconds = t_perm.elapsed().as_secs_f64();

    let settings = TrainSettings {
        steps: opts.steps,
        batch: opts.batch,
        lr: opts.lr,
        beta1: opts.beta1,
    };
    let mut targets = original.clone();
    let mut rounds = Vec::new();
    let mut predictor = None;
    let mut seeds = SplitMix64::new(opts.seed);
    for round in 0..opts.rounds {
        progress.stage(&format!("round {}/{}", round + 1, opts.rounds));
        let set = KernelSet::new(
            &layers,
            &permutations,
            &targets,
            &original,
            kernel_size as usize,
        );
        let t_round = Instant::now();
        let outcome = run_training(
            opts.device,
            &cfg,
            &set,
            &settings,
            seeds.next_u64(),
            progress,
        )?;
        let train_seconds = t_round.elapsed().as_secs_f64();
        let decoded = decode_layers(&outcome.predictor, &layers, &permutations, opts.threads);
        rounds.push(RoundReport {
            round: round + 1,
            rmse_vs_target: rmse(&decoded, &targets),
            rmse_vs_original: rmse(&decoded, &original),
            train_seconds,
            loss_history: outcome.loss_history,
        });
        targets = decoded;
        predictor = Some(outcome.predictor);
    }
    let predictor = predictor.ok_or_else(|| Error::Training("no rounds ran".into()))?;

    let passthrough: Vec<_> = source
        .tensors
        .iter()
        .filter(|t| !is_predictable(t))
        .map(|t| crate::format::PassTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            bytes: t.bytes,
        })
        .collect();
    let predicted_parameters: u64 = layers.iter().map(|l| l.elements() as u64).sum();
    let mut report = EncodeReport {
        source_bytes: file.bytes().len() as u64,
        nern_bytes: 0,
        predicted_tensors: layers.len(),
        passthrough_tensors: passthrough.len(),
        predicted_parameters,
        predictor_parameters: cfg.parameter_count(),
        permutation_seconds,
        total_seconds: 0.0,
        rounds,
        device: device_description(opts.device),
    };
    report.total_seconds = started.elapsed().as_secs_f64();
    let source_name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = json!({
        "encoder": format!("nernc {}", env!("CARGO_PKG_VERSION")),
        "source": {
            "name": source_name,
            "bytes": report.source_bytes,
            "blake3": blake3::hash(file.bytes()).to_hex().to_string(),
        },
        "recipe": {
            "phase": "reconstruction",
            "hidden": opts.hidden,
            "steps": opts.steps,
            "rounds": opts.rounds,
            "batch": opts.batch,
            "permutation": format!("{:?}", opts.permutation),
            "seed": opts.seed,
            "device": opts.device.name(),
            "optimizer": "adam",
            "lr": opts.lr,
            "lr_schedule": "cosine per step to 1e-6",
            "beta1": opts.beta1,
            "pe_levels": opts.pe_levels,
            "pe_base": opts.pe_base,
            "sampling": "0.8 uniform subset / 0.2 L2-norm weighted",
            "loss": "global RMSE after centre crop",
        },
        "rounds": report.rounds,
        "timings": {
            "permutation_seconds": report.permutation_seconds,
            "total_seconds": report.total_seconds,
        },
        "device": report.device,
    });
    let bytes = write_container(&ContainerParts {
        predictor: &predictor,
        layers: &layers,
        permutations: &permutations,
        passthrough,
        source_metadata: source.metadata.clone(),
        metadata: Some(metadata),
    })?;
    report.nern_bytes = bytes.len() as u64;
    Ok((bytes, report))
}

fn device_description(d: DeviceKind) -> String {
    match d {
        DeviceKind::Cpu => format!(
            "cpu (burn Flex, {} threads)",
            crate::decode::default_threads()
        ),
        DeviceKind::Cuda => "cuda (burn-cuda)".into(),
    }
}

fn run_training(
    device: DeviceKind,
    cfg: &PredictorConfig,
    set: &KernelSet,
    settings: &TrainSettings,
    seed: u64,
    progress: &dyn Progress,
) -> Result<train::TrainOutcome> {
    match device {
        DeviceKind::Cpu => {
            type B = burn::backend::Autodiff<burn::backend::Flex>;
            let dev = Default::default();
            train::train::<B>(&dev, cfg, set, settings, seed, progress)
        }
        DeviceKind::Cuda => cuda::train(cfg, set, settings, seed, progress),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    type B = burn::backend::Autodiff<burn::backend::Cuda>;

    pub fn train(
        cfg: &PredictorConfig,
        set: &KernelSet,
        settings: &TrainSettings,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<super::train::TrainOutcome> {
        let dev = burn::backend::cuda::CudaDevice::default();
        // cubecl panics when no driver or GPU is present: probe once and turn that into an error.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let probe = std::panic::catch_unwind(|| {
            let t: burn::tensor::Tensor<B, 1> = burn::tensor::Tensor::ones([4], &dev);
            t.sum().into_data()
        });
        std::panic::set_hook(hook);
        if probe.is_err() {
            return Err(Error::DeviceUnavailable {
                device: "cuda".into(),
                why:
                    "no usable CUDA driver or GPU found (is CUDA_PATH set to the toolkit headers?)"
                        .into(),
            });
        }
        super::train::train::<B>(&dev, cfg, set, settings, seed, progress)
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    pub fn train(
        _: &PredictorConfig,
        _: &KernelSet,
        _: &TrainSettings,
        _: u64,
        _: &dyn Progress,
    ) -> Result<super::train::TrainOutcome> {
        Err(Error::DeviceUnavailable {
            device: "cuda".into(),
            why: "this nernc was built without the `cuda` feature (cargo build --features cuda)"
                .into(),
        })
    }
}

/// Training throughput in kernels per second (forward + backward + optimiser step), measured on
/// `steps` steps after a short warm-up, for the checkpoint at `input` (identity permutation).
pub fn training_throughput(input: &Path, opts: &EncodeOptions) -> Result<f64> {
    check_options(opts)?;
    let file = MappedFile::open(input)?;
    let source = parse_safetensors(input, file.bytes())?;
    let mut layers = Vec::new();
    let mut weights = Vec::new();
    let mut predicted: Vec<_> = source
        .tensors
        .iter()
        .filter(|t| is_predictable(t))
        .collect();
    predicted.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    for t in predicted {
        weights.push(f32_values(t)?);
        layers.push(LayerEntry {
            name: t.name.clone(),
            dtype: TensorDtype::F32,
            permutation: PermutationKind::None,
            shape: [
                t.shape[0] as u32,
                t.shape[1] as u32,
                t.shape[2] as u32,
                t.shape[3] as u32,
            ],
        });
    }
    if layers.is_empty() {
        return Err(Error::NoConvWeights {
            path: input.to_path_buf(),
        });
    }
    let k = layers.iter().map(|l| l.shape[2]).max().unwrap_or(1);
    let cfg = PredictorConfig::reference(opts.hidden, k, opts.pe_levels, opts.pe_base);
    let perms = vec![Permutation::Identity; layers.len()];
    let set = KernelSet::new(&layers, &perms, &weights, &weights, k as usize);
    let mut settings = TrainSettings {
        steps: 3,
        batch: opts.batch,
        lr: opts.lr,
        beta1: opts.beta1,
    };
    run_training(opts.device, &cfg, &set, &settings, opts.seed, &NoProgress)?;
    settings.steps = opts.steps;
    let t = Instant::now();
    run_training(opts.device, &cfg, &set, &settings, opts.seed, &NoProgress)?;
    Ok((opts.steps * opts.batch.min(set.len())) as f64 / t.elapsed().as_secs_f64())
}
