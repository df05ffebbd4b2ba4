//! What `nernc encode` can be told: the options, their defaults, their checks, and the command
//! line's policy (what `--data noise` means, the phase-2 learning rate when none is given), so
//! that the CLI only converts arguments.

use std::path::PathBuf;

use crate::data::{Augment, DatasetKind, Normalization};
pub use crate::device::DeviceKind;
use crate::error::{Error, Result};
use crate::permute::PermutationKind;
use crate::predictor::WeightDtype;

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
    pub dataset: DatasetKind,
    /// Normalisation override (default: the dataset's preset).
    pub norm: Option<Normalization>,
    /// Training images held out for selection.
    pub held_out: usize,
    /// Also measure test accuracy of the result (recorded, never used for selection).
    pub test_eval: bool,
    /// Phase 2.
    pub distill: Option<DistillOptions>,
    /// Skip phase 1: start from the predictor and tables of this `.nern` (same checkpoint).
    pub resume: Option<PathBuf>,
    /// Storage dtype of the predictor's weights.
    pub predictor_dtype: WeightDtype,
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
    /// Steps over which the learning rate ramps up linearly from lr / warmup to lr (default 0:
    /// none). Meant against Adam's first updates moving every weight by about lr; measured on
    /// resumed ResNet-20/56 files (40 steps, lr 5e-5, held-out 2000) it did not help, so it is off
    /// unless asked for.
    pub warmup: Option<usize>,
    /// Random translations / flips of real phase-2 images.
    pub augment: Augment,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            steps: 0,
            source: DistillSource::Data,
            teacher: None,
            temperature: 1.0,
            recon_weight: 0.0,
            lr: DistillSource::Data.default_lr(),
            batch: 128,
            eval_every: None,
            warmup: None,
            augment: Augment::default(),
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
            dataset: DatasetKind::FashionMnist,
            norm: None,
            held_out: 5000,
            test_eval: false,
            distill: None,
            resume: None,
            // f16 halves the predictor at no measured accuracy cost (README table).
            predictor_dtype: WeightDtype::F16,
        }
    }
}

impl DistillSource {
    /// The phase-2 learning rate when none is given. Small: Adam moves every weight by about
    /// this much per step, and the phase-1 fit is fragile (measured: 3e-4 destroyed it; on noise
    /// 5e-5 lost 8 points, 1e-5 gained 2.5).
    pub fn default_lr(self) -> f64 {
        match self {
            DistillSource::Data => 5e-5,
            DistillSource::Noise => 1e-5,
        }
    }
}

/// What `--data` names: a dataset directory, or `noise` for data-free phase 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataArg {
    Dir(PathBuf),
    Noise,
}

impl DataArg {
    pub fn parse(arg: &str) -> Self {
        if arg == "noise" {
            DataArg::Noise
        } else {
            DataArg::Dir(PathBuf::from(arg))
        }
    }

    /// Where phase 2 takes its inputs from.
    pub fn distill_source(arg: Option<&DataArg>) -> DistillSource {
        match arg {
            Some(DataArg::Noise) => DistillSource::Noise,
            _ => DistillSource::Data,
        }
    }
}

impl EncodeOptions {
    /// Applies `--data` (with `dataset` and `test_eval` already set). A directory serves
    /// held-out selection and phase 2. With `noise` nothing trains or selects on data (no
    /// held-out images); `--test-eval` may still measure the result on the dataset's default
    /// location. `--test-eval` without any data directory is an error.
    pub fn set_data(&mut self, data: Option<&DataArg>) -> Result<()> {
        self.data_dir = match data {
            Some(DataArg::Dir(d)) => Some(d.clone()),
            Some(DataArg::Noise) if self.test_eval => self.dataset.default_dir(),
            Some(DataArg::Noise) | None => None,
        };
        if data == Some(&DataArg::Noise) {
            self.held_out = 0;
        }
        if self.test_eval && self.data_dir.is_none() {
            return Err(Error::InvalidArgument(
                "--test-eval needs --data DIR (or the dataset at its default location)".into(),
            ));
        }
        Ok(())
    }
}

impl EncodeOptions {
    /// Checks every setting before any work starts.
    pub fn check(&self) -> Result<()> {
        let o = self;
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
        o.device.check_built()?;
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
}
