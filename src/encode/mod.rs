//! The encoder: phase 1 (reconstruction, with optional progressive rounds).
//!
//! Framework-specific training lives in `train.rs`; this file prepares the kernels, runs the
//! rounds, measures each round with the real decoder and assembles the container.

mod distill;
mod train;

use std::path::{Path, PathBuf};
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
    /// Dataset for held-out selection and phase 2 (its training split only).
    pub data_dir: Option<PathBuf>,
    pub dataset: crate::data::DatasetKind,
    /// Normalisation override (default: the dataset's preset).
    pub norm: Option<crate::data::Normalization>,
    /// Training images held out for selection.
    pub held_out: usize,
    /// Also measure test accuracy of the result (recorded, never used for selection).
    pub test_eval: bool,
    /// Phase 2.
    pub distill: Option<DistillOptions>,
    /// Skip phase 1: start from the predictor and tables of this `.nern` (same checkpoint).
    pub resume: Option<PathBuf>,
    /// Storage dtype of the predictor's weights.
    pub predictor_dtype: crate::predictor::WeightDtype,
}

/// Where phase-2 inputs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistillSource {
    Data,
    Noise,
}

/// Phase-2 settings.
#[derive(Clone, Debug)]
pub struct DistillOptions {
    pub steps: usize,
    pub source: DistillSource,
    pub teacher: Option<PathBuf>,
    pub temperature: f64,
    pub recon_weight: f64,
    pub lr: f64,
    pub batch: usize,
    pub eval_every: Option<usize>,
    /// Random translations / flips of real phase-2 images.
    pub augment: crate::data::Augment,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            steps: 0,
            source: DistillSource::Data,
            teacher: None,
            temperature: 1.0,
            recon_weight: 0.0,
            lr: 5e-5,
            batch: 128,
            eval_every: None,
            augment: crate::data::Augment::default(),
        }
    }
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
            lr: 2e-3,
            beta1: 0.5,
            pe_levels: 40,
            pe_base: 0.76,
            threads: crate::decode::default_threads(),
            data_dir: None,
            dataset: crate::data::DatasetKind::FashionMnist,
            norm: None,
            held_out: 5000,
            test_eval: false,
            distill: None,
            resume: None,
            // f16 halves the predictor at no measured accuracy cost (README table).
            predictor_dtype: crate::predictor::WeightDtype::F16,
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
    /// Held-out accuracy (%) of this round's decoded network, when data is given.
    pub held_out_accuracy: Option<f64>,
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
    pub distill: Option<DistillReport>,
    pub accuracy: AccuracyReport,
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
        return Err(cuda_not_built());
    }
    if let Some(d) = &o.distill {
        if d.source == DistillSource::Data && o.data_dir.is_none() {
            return bad("distillation on real data needs --data DIR (or --data noise)");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if d.steps == 0 || d.batch == 0 || !positive(d.lr) || !positive(d.temperature) {
            return bad("distillation: steps, batch, lr and temperature must be positive");
        }
        if !(d.recon_weight.is_finite() && d.recon_weight >= 0.0) {
            return bad("--recon-weight must be >= 0");
        }
    }
    if o.pe_levels == 0 || o.pe_levels > 256 || !(o.pe_base.is_finite() && o.pe_base > 0.0) {
        return bad("positional encoding: levels in 1..=256, base positive");
    }
    Ok(())
}

/// The layer table (predicted conv weights in network order: natural order of names) and the
/// weights of each layer.
fn layer_table(
    input: &Path,
    source: &crate::checkpoint::Checkpoint<'_>,
    permutation: PermutationKind,
) -> Result<(Vec<LayerEntry>, Vec<Vec<f32>>)> {
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
    let mut weights = Vec::new();
    for t in predicted {
        weights.push(f32_values(t)?);
        layers.push(LayerEntry {
            name: t.name.clone(),
            dtype: TensorDtype::F32,
            permutation,
            // `is_predictable` checked that the dimensions fit u32.
            shape: [
                t.shape[0] as u32,
                t.shape[1] as u32,
                t.shape[2] as u32,
                t.shape[3] as u32,
            ],
        });
    }
    Ok((layers, weights))
}

/// What the container is assembled from.
struct Prepared<'a> {
    layers: Vec<LayerEntry>,
    permutations: Vec<Permutation>,
    cfg: PredictorConfig,
    source: crate::checkpoint::Checkpoint<'a>,
}

/// Data for selection and phase 2, loaded once.
struct DataPlan {
    train: Option<crate::data::Dataset>,
    train_idx: Vec<usize>,
    held_idx: Vec<usize>,
    test: Option<crate::data::Dataset>,
    norm: crate::data::Normalization,
}

fn load_data(opts: &EncodeOptions) -> Result<Option<DataPlan>> {
    let Some(dir) = &opts.data_dir else {
        return Ok(None);
    };
    use crate::data::{Split, load};
    let kind = opts.dataset;
    let train = load(dir, kind, Split::Train, None)?;
    let held = opts.held_out.min(train.len() / 2);
    let (train_idx, held_idx) = train.holdout_split(held, opts.seed ^ 0x5e1ec7);
    let test = if opts.test_eval {
        Some(load(dir, kind, Split::Test, None)?)
    } else {
        None
    };
    let norm = opts.norm.clone().unwrap_or_else(|| kind.normalization());
    norm.validate(train.shape[0])?;
    Ok(Some(DataPlan {
        train: Some(train),
        train_idx,
        held_idx,
        test,
        norm,
    }))
}

/// Encodes the checkpoint at `input`; returns the `.nern` bytes and a report.
pub fn encode(
    input: &Path,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, EncodeReport)> {
    check_options(opts)?;
    keep_freed_memory();
    match opts.device {
        DeviceKind::Cpu => {
            type B = burn::backend::Autodiff<burn::backend::Flex>;
            encode_on::<B>(&Default::default(), input, opts, progress)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let device = cuda_device()?;
            encode_on::<CudaAutodiff>(&device, input, opts, progress)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(cuda_not_built()),
    }
}

fn encode_on<B: burn::tensor::backend::AutodiffBackend>(
    device: &B::Device,
    input: &Path,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, EncodeReport)> {
    let started = Instant::now();
    let file = MappedFile::open(input)?;
    let source = parse_safetensors(input, file.bytes())?;

    let (mut layers, original) = layer_table(input, &source, opts.permutation)?;
    if layers.len() > u32::MAX as usize {
        return Err(Error::InvalidArgument("too many layers".into()));
    }
    let kernel_size = layers.iter().map(|l| l.shape[2]).max().unwrap_or(1);
    let mut cfg =
        PredictorConfig::reference(opts.hidden, kernel_size, opts.pe_levels, opts.pe_base);

    // Networks and data are only needed for selection and phase 2; fail early if they do not fit.
    let needs_net = opts.data_dir.is_some() || opts.distill.is_some();
    let host = if needs_net {
        Some(crate::network::HostModel::load(input)?)
    } else {
        None
    };
    let net = match &host {
        Some(h) => Some(h.network()?),
        None => None,
    };
    let plan = load_data(opts)?;
    if let (Some(net), Some(plan)) = (&net, &plan)
        && let Some(train) = &plan.train
    {
        crate::eval::check_fit(net, train, &input.display().to_string())?;
    }
    let teacher = match (&opts.distill, &net) {
        (Some(d), Some(net)) => {
            let path = d.teacher.as_deref().unwrap_or(input);
            let t = crate::eval::LoadedNet::<B::InnerBackend>::load(path, device)?;
            if t.net.num_classes != net.num_classes || t.net.in_channels != net.in_channels {
                return Err(Error::Incompatible(format!(
                    "teacher {} has {} classes and {} input channels, the student {} and {}",
                    path.display(),
                    t.net.num_classes,
                    t.net.in_channels,
                    net.num_classes,
                    net.in_channels
                )));
            }
            Some(t)
        }
        _ => None,
    };

    // `--resume`: phase 1 comes from an existing file of the same checkpoint.
    let resumed = match &opts.resume {
        Some(path) => Some(load_resume(path, &mut layers, &cfg)?),
        None => None,
    };
    if let Some((p, _)) = &resumed {
        cfg = p.config.clone();
    }
    progress.stage("permutations");
    let t_perm = Instant::now();
    let permutations: Vec<Permutation> = match &resumed {
        Some((_, perms)) => perms.clone(),
        None => layers
            .iter()
            .zip(&original)
            .map(|(l, w)| search(w, l.cout(), l.cin(), l.kernel(), l.permutation))
            .collect(),
    };
    let permutation_seconds = t_perm.elapsed().as_secs_f64();

    let student = match (&net, &host) {
        (Some(net), Some(host)) => Some(crate::eval::LoadedNet::<B::InnerBackend> {
            net: net.clone(),
            fixed: crate::network::FixedParams::new(net, host, device)?,
            convs: Default::default(),
        }),
        _ => None,
    };
    let held_out = plan.as_ref().and_then(|p| {
        p.train
            .as_ref()
            .filter(|_| !p.held_idx.is_empty())
            .map(|d| distill::HeldOut {
                data: d,
                indices: &p.held_idx,
            })
    });
    let held_acc = |p: &crate::predictor::Predictor| -> Result<Option<f64>> {
        match (&student, &held_out, &plan) {
            (Some(st), Some(h), Some(plan)) => Ok(Some(distill::held_out_accuracy(
                p,
                &layers,
                &permutations,
                st,
                h,
                &plan.norm,
                device,
            )?)),
            _ => Ok(None),
        }
    };

    let settings = TrainSettings {
        steps: opts.steps,
        batch: opts.batch,
        lr: opts.lr,
        beta1: opts.beta1,
    };
    let mut targets = original.clone();
    let mut rounds = Vec::new();
    let mut best: Option<(crate::predictor::Predictor, Option<f64>, usize)> = None;
    let mut seeds = SplitMix64::new(opts.seed);
    if let Some((p, _)) = resumed {
        let acc = held_acc(&p)?;
        best = Some((p, acc, 0));
    }
    let phase1_rounds = if best.is_some() { 0 } else { opts.rounds };
    for round in 0..phase1_rounds {
        progress.stage(&format!("round {}/{}", round + 1, opts.rounds));
        let set = KernelSet::new(
            &layers,
            &permutations,
            &targets,
            &original,
            kernel_size as usize,
        );
        let t_round = Instant::now();
        let outcome = train::train::<B>(device, &cfg, &set, &settings, seeds.next_u64(), progress)?;
        let train_seconds = t_round.elapsed().as_secs_f64();
        let decoded = decode_layers(&outcome.predictor, &layers, &permutations, opts.threads);
        let acc = held_acc(&outcome.predictor)?;
        rounds.push(RoundReport {
            round: round + 1,
            rmse_vs_target: rmse(&decoded, &targets),
            rmse_vs_original: rmse(&decoded, &original),
            train_seconds,
            loss_history: outcome.loss_history,
            held_out_accuracy: acc,
        });
        targets = decoded;
        // Keep the best round by held-out accuracy when there is data, else the last.
        let better = match (&best, acc) {
            (Some((_, Some(b), _)), Some(a)) => a > *b,
            _ => true,
        };
        if better {
            best = Some((outcome.predictor, acc, round + 1));
        }
    }
    let (mut predictor, phase1_acc, kept_round) =
        best.ok_or_else(|| Error::Training("no rounds ran".into()))?;

    let mut distill_report = None;
    if let (Some(d), Some(net), Some(host), Some(teacher), Some(student)) =
        (&opts.distill, &net, &host, &teacher, &student)
    {
        progress.stage("distillation");
        let t_distill = Instant::now();
        let set = KernelSet::new(
            &layers,
            &permutations,
            &original,
            &original,
            kernel_size as usize,
        );
        let plan_ref = plan.as_ref();
        let norm = plan_ref.map(|p| p.norm.clone()).unwrap_or_else(|| {
            opts.norm
                .clone()
                .unwrap_or_else(|| opts.dataset.normalization())
        });
        let input_kind = match (&d.source, plan_ref.and_then(|p| p.train.as_ref())) {
            (DistillSource::Data, Some(train))
                if d.augment.shift >= train.shape[1].min(train.shape[2]) =>
            {
                return Err(Error::InvalidArgument(format!(
                    "--augment-shift {} does not fit {}x{} images",
                    d.augment.shift, train.shape[1], train.shape[2]
                )));
            }
            (DistillSource::Data, Some(train)) => distill::DistillInput::Real {
                data: train,
                indices: plan_ref.map_or(&[][..], |p| &p.train_idx[..]),
            },
            (DistillSource::Data, None) => {
                return Err(Error::InvalidArgument(
                    "distillation on real data needs --data DIR".into(),
                ));
            }
            (DistillSource::Noise, _) if !d.augment.is_none() => {
                return Err(Error::InvalidArgument(
                    "--augment-shift/--augment-flip apply to real data, not noise".into(),
                ));
            }
            (DistillSource::Noise, _) => {
                let mut shape = opts.dataset.image_shape();
                shape[0] = net.in_channels;
                distill::DistillInput::Noise { shape }
            }
        };
        let ds = distill::DistillSettings {
            steps: d.steps,
            batch: d.batch,
            lr: d.lr,
            temperature: d.temperature,
            recon_weight: d.recon_weight,
            eval_every: d.eval_every.unwrap_or((d.steps / 10).max(1)),
            norm: &norm,
            input: input_kind,
            held_out: held_out.as_ref().map(|h| distill::HeldOut {
                data: h.data,
                indices: h.indices,
            }),
            storage: opts.predictor_dtype,
            augment: d.augment,
        };
        let out = distill::distill::<B>(
            device,
            &predictor,
            &set,
            &layers,
            &permutations,
            host,
            student,
            phase1_acc,
            teacher,
            &ds,
            seeds.next_u64(),
            progress,
        )?;
        let decoded = decode_layers(&out.predictor, &layers, &permutations, opts.threads);
        distill_report = Some(DistillReport {
            steps: d.steps,
            batch: d.batch,
            lr: d.lr,
            temperature: d.temperature,
            recon_weight: d.recon_weight,
            augment: d.augment,
            input: match d.source {
                DistillSource::Data => "data".into(),
                DistillSource::Noise => "noise".into(),
            },
            teacher: d
                .teacher
                .as_ref()
                .map_or_else(|| "original".into(), |t| t.display().to_string()),
            loss_history: out.loss_history,
            held_out_history: out.held_out_history,
            kept_step: out.best_step,
            rmse_vs_original: rmse(&decoded, &original),
            seconds: t_distill.elapsed().as_secs_f64(),
        });
        predictor = out.predictor;
    }

    let mut final_held_out = match &distill_report {
        Some(d) => d
            .held_out_history
            .iter()
            .find(|(s, _)| *s == d.kept_step)
            .map(|(_, a)| *a),
        None => phase1_acc,
    };
    // Round to the storage dtype; every figure below is of the weights as stored. Phase 2
    // already selected and measured stored weights; a phase-1 figure was of f32 weights.
    predictor.store_as(opts.predictor_dtype)?;
    if distill_report.is_none()
        && opts.predictor_dtype != crate::predictor::WeightDtype::F32
        && final_held_out.is_some()
    {
        final_held_out = held_acc(&predictor)?;
    }
    let stored_rmse = rmse(
        &decode_layers(&predictor, &layers, &permutations, opts.threads),
        &original,
    );
    let test_accuracy = match (&student, &plan) {
        (Some(st), Some(plan)) => match &plan.test {
            Some(test) => {
                let all: Vec<usize> = (0..test.len()).collect();
                let h = distill::HeldOut {
                    data: test,
                    indices: &all,
                };
                Some(distill::held_out_accuracy(
                    &predictor,
                    &layers,
                    &permutations,
                    st,
                    &h,
                    &plan.norm,
                    device,
                )?)
            }
            None => None,
        },
        _ => None,
    };
    let prepared = Prepared {
        layers,
        permutations,
        cfg,
        source,
    };
    let accuracy = AccuracyReport {
        predictor_dtype: opts.predictor_dtype.name(),
        rmse_vs_original: stored_rmse,
        held_out_images: plan.as_ref().map(|p| p.held_idx.len()),
        held_out: final_held_out,
        test: test_accuracy,
        kept_round,
    };
    finish(
        input,
        file.bytes(),
        opts,
        prepared,
        predictor,
        rounds,
        distill_report,
        accuracy,
        permutation_seconds,
        started,
    )
}

/// Reads the predictor and permutation tables of `path`, checking that its layer table is the
/// one of the checkpoint being encoded (names, shapes) and adopting its permutation kinds.
fn load_resume(
    path: &Path,
    layers: &mut [LayerEntry],
    cfg: &PredictorConfig,
) -> Result<(crate::predictor::Predictor, Vec<Permutation>)> {
    let file = MappedFile::open(path)?;
    let c = crate::format::read_container(file.bytes(), &crate::format::Limits::default())?;
    let same = c.layers.len() == layers.len()
        && c.layers
            .iter()
            .zip(layers.iter())
            .all(|(a, b)| a.name == b.name && a.shape == b.shape);
    if !same {
        return Err(Error::Incompatible(format!(
            "{} was not encoded from this checkpoint (layer tables differ)",
            path.display()
        )));
    }
    if c.predictor.config.kernel_size != cfg.kernel_size {
        return Err(Error::Incompatible(format!(
            "{}: predictor kernel size differs",
            path.display()
        )));
    }
    for (l, r) in layers.iter_mut().zip(&c.layers) {
        l.permutation = r.permutation;
    }
    Ok((c.predictor.clone(), c.permutations.clone()))
}

/// Accuracy figures recorded in the metadata.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccuracyReport {
    /// Storage dtype of the predictor; the figures here are of the stored weights.
    pub predictor_dtype: &'static str,
    /// Conv RMSE of the stored predictor against the source.
    pub rmse_vs_original: f64,
    pub held_out_images: Option<usize>,
    /// Held-out accuracy (%) of the stored predictor.
    pub held_out: Option<f64>,
    /// Test accuracy (%) of the stored predictor (only with `test_eval`).
    pub test: Option<f64>,
    /// Round whose predictor was kept (phase 1).
    pub kept_round: usize,
}

/// What phase 2 did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DistillReport {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub temperature: f64,
    pub recon_weight: f64,
    pub input: String,
    pub teacher: String,
    pub augment: crate::data::Augment,
    pub loss_history: Vec<(usize, f32)>,
    pub held_out_history: Vec<(usize, f64)>,
    pub kept_step: usize,
    pub rmse_vs_original: f64,
    pub seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn finish(
    input: &Path,
    source_bytes: &[u8],
    opts: &EncodeOptions,
    p: Prepared<'_>,
    predictor: crate::predictor::Predictor,
    rounds: Vec<RoundReport>,
    distill: Option<DistillReport>,
    accuracy: AccuracyReport,
    permutation_seconds: f64,
    started: Instant,
) -> Result<(Vec<u8>, EncodeReport)> {
    let passthrough: Vec<_> = p
        .source
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
    let predicted_parameters: u64 = p.layers.iter().map(|l| l.elements() as u64).sum();
    let mut report = EncodeReport {
        source_bytes: source_bytes.len() as u64,
        nern_bytes: 0,
        predicted_tensors: p.layers.len(),
        passthrough_tensors: passthrough.len(),
        predicted_parameters,
        predictor_parameters: p.cfg.parameter_count(),
        permutation_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        rounds,
        distill,
        accuracy,
        device: device_description(opts.device),
    };
    let source_name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = json!({
        "encoder": format!("nernc {}", env!("CARGO_PKG_VERSION")),
        "source": {
            "name": source_name,
            "bytes": report.source_bytes,
            "blake3": blake3::hash(source_bytes).to_hex().to_string(),
        },
        "recipe": {
            "phase1": {
                "hidden": opts.hidden,
                "steps": opts.steps,
                "rounds": opts.rounds,
                "batch": opts.batch,
                "permutation": format!("{:?}", opts.permutation),
                "optimizer": "adam",
                "lr": opts.lr,
                "beta1": opts.beta1,
                "lr_schedule": "cosine per step to 1e-6",
                "pe_levels": opts.pe_levels,
                "pe_base": opts.pe_base,
                "sampling": "0.8 uniform subset / 0.2 L2-norm weighted",
                "loss": "global RMSE after centre crop",
            },
            "phase2": report.distill.as_ref().map(|d| json!({
                "steps": d.steps, "batch": d.batch, "lr": d.lr, "temperature": d.temperature,
                "recon_weight": d.recon_weight, "input": d.input, "teacher": d.teacher,
                "augment_shift": d.augment.shift, "augment_flip": d.augment.flip,
                "loss": "KL(teacher || student) * T^2 (+ recon_weight * RMSE)",
            })),
            "resumed_from": opts.resume.as_ref().map(|p| p.display().to_string()),
            "seed": opts.seed,
            "device": opts.device.name(),
            "dataset": opts.data_dir.as_ref().map(|_| opts.dataset.name()),
            "held_out_images": report.accuracy.held_out_images,
        },
        "rounds": report.rounds,
        "distillation": report.distill,
        "accuracy": report.accuracy,
        "timings": {
            "permutation_seconds": report.permutation_seconds,
            "total_seconds": report.total_seconds,
        },
        "device": report.device,
    });
    let bytes = write_container(&ContainerParts {
        predictor: &predictor,
        layers: &p.layers,
        permutations: &p.permutations,
        passthrough,
        source_metadata: p.source.metadata.clone(),
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

/// Training allocates and frees tensors of a few MB at every step. By default glibc hands such
/// blocks back to the kernel (mmap threshold, heap trimming) and gets them back as fresh zeroed
/// pages: a third of a CPU phase-1 step went to page faults (perf: `clear_page_erms`,
/// `exc_page_fault`). Keeping freed memory in the heap removes that; the cost is a heap that does
/// not shrink while the process lives, which suits a one-shot encoder.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tuning parameters; it is called before the
        // training threads allocate (and glibc serialises it with the arena locks anyway).
        ONCE.call_once(|| unsafe {
            // 32 MiB is glibc's ceiling for the mmap threshold on 64-bit.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        });
    }
}

/// The error for CUDA requests in a build without the `cuda` feature.
pub fn cuda_not_built() -> Error {
    Error::DeviceUnavailable {
        device: "cuda".into(),
        why: "this nernc was built without the `cuda` feature (cargo build --features cuda)".into(),
    }
}

/// The CUDA autodiff backend.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<burn::backend::Cuda>;

/// The default CUDA device, after checking that it works: cubecl panics when no driver or GPU
/// is present, so probe once and turn that into an error.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Result<burn::backend::cuda::CudaDevice> {
    let dev = burn::backend::cuda::CudaDevice::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let t: burn::tensor::Tensor<CudaAutodiff, 1> = burn::tensor::Tensor::ones([4], &dev);
        t.sum().into_data()
    });
    std::panic::set_hook(hook);
    probe.map(|_| dev).map_err(|_| Error::DeviceUnavailable {
        device: "cuda".into(),
        why: "no usable CUDA driver or GPU found (is CUDA_PATH set to the toolkit headers?)".into(),
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    pub fn train(
        cfg: &PredictorConfig,
        set: &KernelSet,
        settings: &TrainSettings,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<super::train::TrainOutcome> {
        let dev = cuda_device()?;
        super::train::train::<CudaAutodiff>(&dev, cfg, set, settings, seed, progress)
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
        Err(cuda_not_built())
    }
}

/// Training throughput in kernels per second (forward + backward + optimiser step), measured on
/// `steps` steps after a short warm-up, for the checkpoint at `input` (identity permutation).
pub fn training_throughput(input: &Path, opts: &EncodeOptions) -> Result<f64> {
    check_options(opts)?;
    keep_freed_memory();
    let file = MappedFile::open(input)?;
    let source = parse_safetensors(input, file.bytes())?;
    let (layers, weights) = layer_table(input, &source, PermutationKind::None)?;
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
