//! What `nernc encode` can be told: the options, their defaults, their checks, and the command
//! line's policy (what `--data noise` means, the phase-2 learning rate when none is given), so
//! that the CLI only converts arguments.

use std::path::PathBuf;

use crate::data::{Augment, DatasetKind, Normalization, Split};
pub use crate::device::DeviceKind;
use crate::error::{Error, Result};
use crate::format::LayerEntry;
use crate::permute::PermutationKind;
use crate::predictor::{Embedding, PredictorConfig, REFERENCE_LAYERS, WeightDtype};

/// Everything `nernc encode` can be told.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Hidden width of the predictor (`--hidden`); `None`: scaled with the model
    /// ([`default_hidden`]), or chosen by a size budget. Given, a budget must fit it.
    pub hidden: Option<u32>,
    /// Phase-1 steps per round; `None`: scaled with the model ([`default_phase1_steps`]).
    pub steps: Option<usize>,
    pub rounds: usize,
    pub batch: usize,
    pub permutation: PermutationKind,
    pub seed: u64,
    pub device: DeviceKind,
    pub lr: f64,
    pub beta1: f32,
    pub pe_levels: u32,
    pub pe_base: f64,
    /// Learned embedding values per filter and per channel row (`--embedding-width`; 0: none,
    /// the plain coordinate encoding; format 1.7).
    pub embedding_width: u32,
    /// Linear layers of the predictor (`--layers`; [`REFERENCE_LAYERS`] by default).
    pub layers: usize,
    /// Decoder threads used to measure each round.
    pub threads: usize,
    /// Dataset for held-out selection and phase 2 (its training split only).
    pub data_dir: Option<PathBuf>,
    pub dataset: DatasetKind,
    /// Normalisation override (default: the dataset's preset).
    pub norm: Option<Normalization>,
    /// Images held out for selection.
    pub held_out: usize,
    /// Where they come from: a seeded draw from the training split (the default), or the test
    /// split's first images (`--held-out-from test`), the test figure then taken on the rest.
    pub held_out_from: Split,
    /// Also measure test accuracy of the result (recorded, never used for selection).
    pub test_eval: bool,
    /// Phase 2.
    pub distill: Option<DistillOptions>,
    /// Skip phase 1: start from the predictor and tables of this `.nern` (same checkpoint).
    pub resume: Option<PathBuf>,
    /// Storage dtype of the predictor's weights.
    pub predictor_dtype: WeightDtype,
    /// Size budget of the written file: the predictor's shape and storage are chosen to fit
    /// (by measuring candidates), unless pinned.
    pub target_size: Option<SizeTarget>,
    /// Which of the budget's choices the user fixed (`--hidden`, `--pe-levels`,
    /// `--predictor-dtype`): a budget then only chooses the rest, and must fit them.
    pub pinned: Pinned,
    /// Allowed held-out accuracy drop against the original.
    pub max_drop: MaxDrop,
    /// Store F32 passthrough tensors (BN, FC, biases) as binary16: lossy, opt-in
    /// (`--passthrough f16`), recorded in the file by their dtype code.
    pub passthrough_f16: bool,
    /// Store `DATA` raw (`--raw-passthrough`) even where the byte-shuffled zstd of format 1.6
    /// is smaller: a decoder can then read the passthrough in place from a memory map.
    pub raw_passthrough: bool,
    /// Train the BN affine parameters and the FC layer in phase 2 beside the predictor, at this
    /// peak learning rate (`--passthrough tuned`): lossy, opt-in, recorded in the recipe.
    pub tune_passthrough: Option<f64>,
    /// Wall-clock limit of the whole encode in seconds (`--time-limit`): the step counts are
    /// scaled down to fit after a short calibration (see `encode::clock`).
    pub time_limit: Option<f64>,
    /// Phase 2 and its data were not asked for but are the defaults: on an architecture phase 2
    /// does not support, the encode goes on with reconstruction only (and says so) instead of
    /// failing.
    pub phase2_by_default: bool,
    /// How the f32 phase-1 predictor is rounded to integer codes: the start of phase 2, or the
    /// stored weights without it. Phase 2's own rounding is always to the nearest code.
    pub rounding: Rounding,
    /// `--channel-order`: `None` keeps the source's order (or, with `--resume`, the resumed
    /// file's); given, it must match a resumed file's.
    pub channel_order: Option<ChannelOrder>,
    /// Convs stored as codes instead of predicted (`--code`, format 1.8); `None`: every conv is
    /// predicted (unless [`Self::codes_for_budget`]).
    pub coded: Option<CodedOptions>,
    /// `--target-size` without `--code` (and without `--predict-all`): every conv but the
    /// smallest is stored as codes whose bits fill the budget ([`CodedOptions::every_conv_but`]),
    /// the smallest predicted; when even 2-bit codes would not fit, or the network cannot run,
    /// every conv is predicted instead (and a note says why). Set by
    /// [`EncodeOptions::codes_for_budget_by_default`].
    pub codes_for_budget: bool,
}

/// Phase 2's peak learning rate of coded convs (`--code-lr`): the shared QAT bench's (Adam 1e-4,
/// cosine), which session 33's prototype and the 4x-wide runs of session 34 used.
pub const DEFAULT_CODE_LR: f64 = 1e-4;

/// Bits per code of `--code` rules that name none (`--code-bits`).
pub const DEFAULT_CODE_BITS: u8 = 3;

/// Which convs are stored as integer codes, and how (`CODE`, format 1.8).
#[derive(Clone, Debug, PartialEq)]
pub struct CodedOptions {
    /// Every conv weight whose name starts with a rule's prefix (the first matching rule wins)
    /// is stored as two coded factors of rank `max(1, floor(cout * fraction))`, or whole when
    /// the fraction is 1, in the rule's bits (else [`Self::bits`]).
    pub rules: Vec<CodeRule>,
    /// Bits per code of the rules that name none, `2 ..= 8`.
    pub bits: u8,
    /// Peak Adam learning rate of the codes' values in phase 2 (the predictor's schedule).
    pub lr: f64,
}

/// One `--code PREFIX=FRACTION[@BITS]` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeRule {
    pub prefix: String,
    pub fraction: f64,
    pub bits: Option<u8>,
    /// `PREFIX=auto`: the encoder chooses the fraction on held-out images before anything
    /// trains ([`super::coded::choose_auto_ranks`]) and writes it into `fraction` (1 until then).
    pub auto: bool,
    /// `PREFIX=FRACTION@auto`: the encoder chooses each matching conv's bits to fill
    /// `--target-size` ([`super::coded::choose_auto_bits`]); until then they start at
    /// [`crate::format::MAX_CODE_BITS`].
    pub auto_bits: bool,
    /// The one conv weight the rule leaves out, whatever its prefix
    /// ([`CodedOptions::every_conv_but`]; never from the command line).
    pub except: Option<String>,
}

impl CodedOptions {
    /// The options of `--code RULE...`, `--code-bits` and `--code-lr`, each checked.
    pub fn parse(rules: &[impl AsRef<str>], bits: u8, lr: f64) -> Result<Self> {
        if !(crate::format::MIN_CODE_BITS..=crate::format::MAX_CODE_BITS).contains(&bits) {
            return Err(Error::InvalidArgument(format!(
                "--code-bits {bits} (must be 2..=8)"
            )));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--code-lr {lr} (must be finite and >= 0)"
            )));
        }
        Ok(CodedOptions {
            rules: rules
                .iter()
                .map(|r| Self::parse_rule(r.as_ref()))
                .collect::<Result<_>>()?,
            bits,
            lr,
        })
    }

    /// Parses one `PREFIX=FRACTION[@BITS]` rule (`layer3=0.125`, `layer3=1/8`, `layer1=1@4`,
    /// `layer3=auto@3`).
    pub fn parse_rule(arg: &str) -> Result<CodeRule> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--code {arg:?}: expected PREFIX=FRACTION[@BITS] with FRACTION in (0, 1] or \
                 `auto` and BITS in 2..=8 or `auto`, e.g. layer3=1/8 (rank cout/8 factors), \
                 layer1=1 (whole codes), layer2=1@4 (whole, 4-bit), layer3=auto (the rank chosen \
                 on held-out images) or layer=1@auto (bits chosen to fill --target-size)"
            ))
        };
        let (prefix, rest) = arg.split_once('=').ok_or_else(bad)?;
        let (f, bits, auto_bits) = match rest.split_once('@') {
            Some((f, b)) if b.trim() == "auto" => (f, None, true),
            Some((f, b)) => (f, Some(b.trim().parse::<u8>().map_err(|_| bad())?), false),
            None => (rest, None, false),
        };
        let auto = f.trim() == "auto";
        let fraction = match f.split_once('/') {
            _ if auto => 1.0,
            Some((a, b)) => {
                let (a, b): (f64, f64) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                a / b
            }
            None => f.trim().parse().map_err(|_| bad())?,
        };
        let bits_ok = bits.is_none_or(|b| {
            (crate::format::MIN_CODE_BITS..=crate::format::MAX_CODE_BITS).contains(&b)
        });
        if prefix.is_empty() || !(fraction > 0.0 && fraction <= 1.0) || !bits_ok {
            return Err(bad());
        }
        Ok(CodeRule {
            prefix: prefix.to_string(),
            fraction,
            bits,
            auto,
            auto_bits,
            except: None,
        })
    }

    /// The codes `--target-size` stores without `--code`: every conv of `layers` but the one
    /// with the fewest weights (the first such; ResNets' stem), whole, with bits chosen to fill
    /// the budget (`@auto`). The format needs one predicted conv; the smallest costs the
    /// predictor the least. `None` for a network of one conv.
    pub fn every_conv_but(layers: &[LayerEntry]) -> Option<CodedOptions> {
        let kept = layers.iter().min_by_key(|l| l.elements())?;
        (layers.len() > 1).then(|| CodedOptions {
            rules: vec![CodeRule {
                prefix: String::new(),
                fraction: 1.0,
                bits: None,
                auto: false,
                auto_bits: true,
                except: Some(kept.name.clone()),
            }],
            bits: DEFAULT_CODE_BITS,
            lr: DEFAULT_CODE_LR,
        })
    }

    /// The rule for the conv named `name`, if any (the first whose prefix it starts with).
    pub fn rule(&self, name: &str) -> Option<&CodeRule> {
        self.rules
            .iter()
            .find(|r| name.starts_with(r.prefix.as_str()) && r.except.as_deref() != Some(name))
    }

    /// The rank of the conv `layer`: `None` when no rule matches (it is predicted), `Some(0)`
    /// for whole codes (asked for, or factors that would not take fewer codes than the weight,
    /// e.g. a 1x1 shortcut at half rank), else the factors' rank.
    pub fn rank(&self, layer: &LayerEntry) -> Option<u32> {
        let f = self.rule(&layer.name)?.fraction;
        let (cout, cols) = (layer.cout(), layer.elements() / layer.cout().max(1));
        let rank = ((cout as f64 * f).floor() as usize).max(1);
        Some(if f >= 1.0 || rank * (cout + cols) >= cout * cols {
            0
        } else {
            rank as u32
        })
    }

    /// Whether a rule leaves its rank to the encoder (`PREFIX=auto`).
    pub fn has_auto(&self) -> bool {
        self.rules.iter().any(|r| r.auto)
    }

    /// Whether a rule leaves its convs' bits to the encoder (`PREFIX=FRACTION@auto`).
    pub fn has_auto_bits(&self) -> bool {
        self.rules.iter().any(|r| r.auto_bits)
    }

    /// Bits per code of the conv named `name` (its rule's, else [`Self::bits`]); a rule with
    /// `@auto` starts at the most, [`crate::format::MAX_CODE_BITS`].
    pub fn bits_of(&self, name: &str) -> u8 {
        match self.rule(name) {
            Some(r) if r.auto_bits => crate::format::MAX_CODE_BITS,
            r => r.and_then(|r| r.bits).unwrap_or(self.bits),
        }
    }
}

/// The order of the channels in the encoded (and decoded) network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelOrder {
    /// The source checkpoint's, unchanged.
    #[default]
    Source,
    /// Reordered so that neighbouring channels have similar weights ([`crate::reorder`]): the
    /// same function, the decoded checkpoint's channels in another order. Opt-in.
    Similar,
}

impl ChannelOrder {
    pub fn name(self) -> &'static str {
        match self {
            ChannelOrder::Source => "source",
            ChannelOrder::Similar => "similar",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [ChannelOrder::Source, ChannelOrder::Similar]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

/// Rounding of a trained f32 predictor to integer codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Each weight to its nearest code.
    Nearest,
    /// Input by input, each error compensated on the inputs not yet rounded and the bias, on the
    /// exact second moments of every kernel's inputs ([`super::gptq`]).
    #[default]
    Compensated,
}

impl Rounding {
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Nearest => "nearest",
            Rounding::Compensated => "compensated",
        }
    }
}

/// Settings a size budget may not change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    pub pe_levels: bool,
    pub predictor_dtype: bool,
}

/// A size budget for the written file (`--target-size`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeTarget {
    /// Percent of the source file.
    Percent(f64),
    Bytes(u64),
}

impl SizeTarget {
    /// `10%` (of the source file) or `120000` (bytes).
    pub fn parse(arg: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--target-size {arg:?}: give a percent of the source (e.g. 10%) or bytes (e.g. 120000)"
            ))
        };
        let arg = arg.trim();
        if let Some(p) = arg.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                return Err(Error::InvalidArgument(format!(
                    "--target-size {arg}: the percent must be in (0, 100]"
                )));
            }
            Ok(SizeTarget::Percent(v))
        } else {
            let v: u64 = arg.parse().map_err(|_| bad())?;
            if v == 0 {
                return Err(Error::InvalidArgument(
                    "--target-size must be at least 1 byte".into(),
                ));
            }
            Ok(SizeTarget::Bytes(v))
        }
    }

    /// The budget in bytes for a source of `source_bytes`; a byte budget larger than the source
    /// is refused (nothing to compress).
    pub fn bytes(self, source_bytes: u64) -> Result<u64> {
        match self {
            SizeTarget::Percent(p) => Ok((p / 100.0 * source_bytes as f64).floor() as u64),
            SizeTarget::Bytes(b) if b > source_bytes => Err(Error::InvalidArgument(format!(
                "--target-size {b} bytes is larger than the source ({source_bytes} bytes)"
            ))),
            SizeTarget::Bytes(b) => Ok(b),
        }
    }
}

/// The held-out accuracy the result may lose against the original, in points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxDrop {
    pub points: f64,
    /// Given by the user (`--max-drop`): a result that misses it is not written. The default is
    /// an aim: a miss is reported, the file written.
    pub enforced: bool,
}

impl Default for MaxDrop {
    fn default() -> Self {
        MaxDrop {
            points: 0.3,
            enforced: false,
        }
    }
}

/// Phase-1 steps when none are given: a tenth of the model's kernel count (about 400 passes
/// over every kernel at batch 4096), within 2,000..=20,000. Measured on ResNet-20 (27k
/// kernels): 3,000 steps with phase 2 reach the original within 0.3 points.
/// When every predicted kernel fits in one batch of `batch` (the convs left after `--code`), the
/// most: a step is then cheap and convergence, not passes, is what limits the fit (measured on
/// ResNet-20's stem alone, 16 kernels, hidden 16: RMSE 0.0118 after 2,000 steps, 2.1e-5 after
/// 20,000 in 14 s).
pub fn default_phase1_steps(kernels: usize, batch: usize) -> usize {
    if kernels <= batch {
        return 20_000;
    }
    (kernels / 10).clamp(2_000, 20_000)
}

/// Positional-encoding levels when `--pe-levels` is not given: `asked` (20, NeRN's), or 4 when
/// every predicted kernel fits in one batch of `batch` (the convs left after `--code`, e.g. a
/// ResNet's stem alone). The first layer is then most of a small predictor (hidden 16 at 20
/// levels: 1,920 of 2,905 parameters; at 4: 384 of 1,369), and a few kernels need no high
/// frequencies: ResNet-20's stem after 20,000 phase-1 steps, RMSE 2.1e-5 at 20 levels and 5.6e-5
/// at 4 (session 37), both far under what the codes round away (about 5e-3).
pub fn default_pe_levels(kernels: usize, batch: usize, asked: u32) -> u32 {
    if kernels <= batch {
        SMALL_SET_PE_LEVELS
    } else {
        asked
    }
}

/// [`default_pe_levels`] of a predicted set within one batch.
pub const SMALL_SET_PE_LEVELS: u32 = 4;

/// Predictor parameters per convolution weight when `--hidden` is not given, at 8-bit codes:
/// ResNet-20's measured default (hidden 180 at L = 20: 121,149 parameters for 269,968 weights,
/// 0.449) carried over to other models, so the predictor grows with the network instead of
/// staying at ResNet-20's size (ResNet-56 at hidden 180 lost 5.3 points, one predictor
/// parameter per 7 weights). Narrower codes get proportionally more parameters
/// ([`default_params_per_weight`]).
pub const DEFAULT_PARAMS_PER_WEIGHT: f64 = 0.45;

/// The default's predictor parameters per convolution weight for codes of `dtype`: the same
/// code bits per weight as [`DEFAULT_PARAMS_PER_WEIGHT`] at 8 bits (3.6), so 6-bit codes get a
/// third more parameters (ResNet-20: hidden 211 instead of 180); float storage counts as 8 bits.
/// Measured on ResNet-20 (2026-12-05): int6 at hidden 208 matched int8 at hidden 180 in test
/// accuracy in a 0.8-point smaller file (11.3 % against 12.1 % of the checkpoint).
pub fn default_params_per_weight(dtype: WeightDtype) -> f64 {
    let bits = dtype.code_bits().unwrap_or(8).min(8);
    DEFAULT_PARAMS_PER_WEIGHT * 8.0 / f64::from(bits)
}

/// The widest default hidden width. Unmeasured beyond ResNet-56 (hidden 335): it bounds the
/// default schedule's cost (a phase-1 step grows with the width squared) on large networks,
/// where the predictor is then a smaller share of the weights (the 4x-wide ResNet-20: 0.11).
pub const DEFAULT_MAX_HIDDEN: u32 = 384;

/// The most linear layers `--layers` accepts (the format allows 64; deeper plain MLPs do not
/// train without normalisation).
pub const MAX_LAYERS: usize = 16;

/// Hidden width when none is given: the widest reference predictor (see
/// [`PredictorConfig::reference`]) with at most [`default_params_per_weight`] parameters per
/// convolution weight, within 16..=[`DEFAULT_MAX_HIDDEN`].
pub fn default_hidden(
    conv_weights: u64,
    dtype: WeightDtype,
    kernel_size: u32,
    layers: usize,
    pe_levels: u32,
    pe_base: f64,
) -> u32 {
    let allowed = (conv_weights as f64 * default_params_per_weight(dtype)) as u64;
    let params =
        |h: u32| PredictorConfig::mlp(h, layers, kernel_size, pe_levels, pe_base).parameter_count();
    let mut h = 16;
    while h < DEFAULT_MAX_HIDDEN && params(h + 1) <= allowed {
        h += 1;
    }
    h
}

/// Storage of the predictor when `--predictor-dtype` is not given: 6-bit codes when phase 2
/// trains on real data, which recovers what the rounding costs (ResNet-20, hidden 208: 96.22 %
/// held-out in f32 after phase 1, 84.46 % rounded to 6 bits, 96.28 % after phase 2); 8-bit codes
/// otherwise (data-free phase 2 gains 2-3 points, not 12).
pub fn default_predictor_dtype(distill: Option<&DistillOptions>) -> WeightDtype {
    match distill {
        Some(d) if d.source == DistillSource::Data => WeightDtype::Int6,
        _ => WeightDtype::Int8,
    }
}

/// Phase-2 steps when none are given (batch 128). Measured on ResNet-20 at 600 steps: test
/// 94.34-94.39 % (-0.19 to -0.24), held-out still rising slowly after 400; 400 keeps the whole
/// default encode inside 10 minutes on 2 cores (600 took 11 min).
pub const DEFAULT_DISTILL_STEPS: usize = 400;
/// Phase-2 steps on data when convs are coded (`--code`) and none are given: coded convs are
/// quantisation-aware training, which needs more steps than the predictor's recovery (3-bit
/// QAT with distillation: 94.30 / 94.37 % at 600 steps, 94.53 / 94.53 % at 1,200; every
/// coded-conv recipe in the README runs 1,200).
pub const DEFAULT_CODED_DISTILL_STEPS: usize = 1200;
/// Data-free phase-2 steps when none are given (measured: 150 steps at lr 1e-5 gained 2.5 points).
pub const DEFAULT_NOISE_DISTILL_STEPS: usize = 150;

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
    /// Weight of the cross-entropy on the images' true labels added to the distillation loss
    /// (`--label-weight`; real data only).
    pub label_weight: f64,
    /// Weight of the attention-map term (`--feature-weight`): every residual block's spatial
    /// attention map matched to the teacher's.
    pub feature_weight: f64,
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
    /// Phase-2 cycles of `steps` steps each (`--distill-cycles`, default 1). Each cycle after the
    /// first restarts from the previous one's kept state: learning rate back at its peak, a fresh
    /// Adam, the weights moved off their code grid (what `--resume` does to a finished file).
    /// Measured on ResNet-56 at 5 % (sessions 22-25): a restart changes nothing at equal steps
    /// (2 x 400 94.33 % test in mean, 1 x 800 94.31 %; 3 x 400 94.39 %, 1 x 1,200 94.40 %, the
    /// same held-out); 1,200 steps end above 800.
    pub cycles: usize,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            steps: 0,
            source: DistillSource::Data,
            teacher: None,
            temperature: 1.0,
            recon_weight: 0.0,
            label_weight: 0.0,
            feature_weight: 0.0,
            lr: DistillSource::Data.default_lr(),
            batch: 128,
            eval_every: None,
            warmup: None,
            augment: Augment::default(),
            cycles: 1,
        }
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            // The measured ResNet-20 recipe (README): hidden 180, 20 PE levels, no tables (they
            // cost more bytes than they save at this size), int8 trained through its rounding.
            hidden: None,
            steps: None,
            rounds: 1,
            batch: 4096,
            permutation: PermutationKind::None,
            seed: 0,
            device: DeviceKind::Cpu,
            lr: 2e-3,
            beta1: 0.5,
            pe_levels: 20,
            pe_base: 0.76,
            embedding_width: 0,
            layers: REFERENCE_LAYERS,
            threads: crate::decode::default_threads(),
            data_dir: None,
            dataset: DatasetKind::FashionMnist,
            norm: None,
            held_out: 5000,
            held_out_from: Split::Train,
            test_eval: false,
            distill: None,
            resume: None,
            predictor_dtype: WeightDtype::Int8,
            target_size: None,
            pinned: Pinned::default(),
            max_drop: MaxDrop::default(),
            phase2_by_default: false,
            rounding: Rounding::default(),
            channel_order: None,
            coded: None,
            codes_for_budget: false,
            passthrough_f16: false,
            raw_passthrough: false,
            tune_passthrough: None,
            time_limit: None,
        }
    }
}

/// Peak learning rate of the tuned passthrough (`--tune-lr`): ten times the predictor's, since a
/// BN gain or shift moves one channel where a predictor weight moves thousands of kernels.
pub const DEFAULT_TUNE_LR: f64 = 5e-4;

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
}

impl EncodeOptions {
    /// Applies `--data` (with `dataset` and `test_eval` already set) and returns where phase 2
    /// takes its inputs from. A directory serves held-out selection and phase 2; without
    /// `--data`, the dataset's default location serves when it is installed, and phase 2 is
    /// data-free otherwise. With `noise` nothing trains or selects on data (no held-out images);
    /// `--test-eval` may still measure the result on the dataset's default location.
    /// `--test-eval` without any data directory is an error.
    pub fn set_data(&mut self, data: Option<&DataArg>) -> Result<DistillSource> {
        self.data_dir = match data {
            Some(DataArg::Dir(d)) => Some(d.clone()),
            Some(DataArg::Noise) if self.test_eval => self.dataset.default_dir(),
            Some(DataArg::Noise) => None,
            None => self.dataset.default_dir(),
        };
        let source = if data == Some(&DataArg::Noise) || self.data_dir.is_none() {
            self.held_out = 0;
            DistillSource::Noise
        } else {
            DistillSource::Data
        };
        if self.held_out_from == Split::Test && source == DistillSource::Noise {
            return Err(Error::InvalidArgument(
                "--held-out-from test selects on real test images: it needs --data DIR (not \
                 noise), or the dataset at its default location"
                    .into(),
            ));
        }
        if self.test_eval && self.data_dir.is_none() {
            return Err(Error::InvalidArgument(
                "--test-eval needs --data DIR (or the dataset at its default location)".into(),
            ));
        }
        Ok(source)
    }

    /// Phase 2 as `nernc encode` runs it when not told otherwise: on data (held-out selection,
    /// the original as teacher) or, without any, on noise.
    /// `coded`: whether convs are coded (`--code`), which needs more steps on data.
    pub fn default_distill(source: DistillSource, coded: bool) -> DistillOptions {
        DistillOptions {
            steps: match source {
                DistillSource::Data if coded => DEFAULT_CODED_DISTILL_STEPS,
                DistillSource::Data => DEFAULT_DISTILL_STEPS,
                DistillSource::Noise => DEFAULT_NOISE_DISTILL_STEPS,
            },
            source,
            lr: source.default_lr(),
            ..DistillOptions::default()
        }
    }
}

impl EncodeOptions {
    /// Whether `--target-size` stores codes without being told (`--code`): with a budget, real
    /// data (`source`, phase 2's) with held-out images to choose the bits on, and nothing that
    /// fixes what is stored (`--code`, `--resume`). `predict_all`: `--predict-all`.
    /// Whole codes gave the better file at every size they were measured at (README: ResNet-20
    /// at 5, 7.5 and 10.4 %, ResNet-56 at 5 %).
    pub fn codes_for_budget_by_default(&self, source: DistillSource, predict_all: bool) -> bool {
        !predict_all
            && source == DistillSource::Data
            && self.target_size.is_some()
            && self.coded.is_none()
            && self.resume.is_none()
            && self.held_out > 0
    }

    /// Whether coded convs' bits fill the budget (`--code PREFIX=FRACTION@auto`).
    pub fn auto_bits(&self) -> bool {
        self.coded.as_ref().is_some_and(CodedOptions::has_auto_bits)
    }

    /// Checks every setting before any work starts.
    pub fn check(&self) -> Result<()> {
        let o = self;
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if o.hidden.is_some_and(|h| h == 0 || h > 1 << 14) {
            return bad("--hidden must be in 1..=16384");
        }
        if o.steps == Some(0) {
            return bad("--steps must be at least 1");
        }
        if !(o.max_drop.points.is_finite() && o.max_drop.points >= 0.0) {
            return bad("--max-drop must be a number of points >= 0");
        }
        if o.target_size.is_some() && o.rounds > 1 {
            return bad("--target-size chooses one predictor: use it with --rounds 1");
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
            if d.cycles == 0 || d.cycles > 64 {
                return bad("--distill-cycles must be in 1..=64");
            }
            if d.cycles > 1 && o.tune_passthrough.is_some() {
                return bad(
                    "--distill-cycles above 1 with --passthrough tuned is not supported (the \
                     tuned passthrough would have to carry from cycle to cycle; neither has \
                     been measured to pay)",
                );
            }
            if !(d.recon_weight.is_finite() && d.recon_weight >= 0.0) {
                return bad("--recon-weight must be >= 0");
            }
            if !(d.label_weight.is_finite() && d.label_weight >= 0.0) {
                return bad("--label-weight must be >= 0");
            }
            if !(d.feature_weight.is_finite() && d.feature_weight >= 0.0) {
                return bad("--feature-weight must be >= 0");
            }
            if d.label_weight > 0.0 && d.source == DistillSource::Noise {
                return bad("--label-weight needs real data (noise images have no labels)");
            }
        }
        if let Some(lr) = o.tune_passthrough {
            if o.distill.is_none() {
                return bad(
                    "--passthrough tuned trains the passthrough in phase 2: it needs phase 2",
                );
            }
            if !(lr.is_finite() && lr > 0.0) {
                return bad("--tune-lr must be positive");
            }
        }
        if let Some(t) = o.time_limit
            && !(t.is_finite() && t > 0.0)
        {
            return bad("--time-limit must be a positive duration");
        }
        if o.pe_levels == 0 || o.pe_levels > 256 || !(o.pe_base.is_finite() && o.pe_base > 0.0) {
            return bad("positional encoding: levels in 1..=256, base positive");
        }
        if o.embedding_width > MAX_EMBEDDING_WIDTH {
            return bad(&format!(
                "--embedding-width must be in 0..={MAX_EMBEDDING_WIDTH}"
            ));
        }
        if !(2..=MAX_LAYERS).contains(&o.layers) {
            return bad(&format!("--layers must be in 2..={MAX_LAYERS}"));
        }
        Ok(())
    }
}

/// Widest embedding row `--embedding-width` accepts (the format allows 256).
pub const MAX_EMBEDDING_WIDTH: u32 = 64;

/// `cfg` with embedding tables of `width` values per row for these layers (spec §5.1: a row
/// per filter and per input channel of every predicted layer); `width` 0 leaves it plain.
pub fn with_embedding(cfg: PredictorConfig, width: u32, layers: &[LayerEntry]) -> PredictorConfig {
    match embedding_for(width, layers) {
        Some(e) => cfg.with_embedding(e.width, e.rows),
        None => cfg,
    }
}

/// The embedding tables of `width` values per row for these layers (`None` for width 0).
pub fn embedding_for(width: u32, layers: &[LayerEntry]) -> Option<Embedding> {
    (width > 0).then(|| Embedding {
        width,
        rows: crate::format::embedding_rows(layers).map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conv weights of the fixtures (`fixtures/README.md`).
    const RESNET20: u64 = 269_968;
    const RESNET56: u64 = 850_576;
    const RESNET20_W4: u64 = 4_317_760;

    #[test]
    fn depth_outside_two_to_sixteen_layers_is_refused() {
        for (layers, ok) in [(1, false), (2, true), (5, true), (16, true), (17, false)] {
            let o = EncodeOptions {
                layers,
                ..EncodeOptions::default()
            };
            assert_eq!(o.check().is_ok(), ok, "{layers} layers");
        }
    }

    #[test]
    fn a_shallower_predictor_gets_a_wider_default_at_the_same_parameters() {
        let h = |layers| default_hidden(RESNET20, WeightDtype::Int6, 3, layers, 20, 0.76);
        assert!(h(3) > h(5) && h(5) > h(7), "{} {} {}", h(3), h(5), h(7));
    }

    #[test]
    fn the_default_width_grows_with_the_model_from_resnet20s_measured_180() {
        let h = |w| default_hidden(w, WeightDtype::Int8, 3, 5, 20, 0.76);
        assert_eq!(h(RESNET20), 180, "ResNet-20 keeps its measured default");
        assert_eq!(h(RESNET56), 335);
        assert_eq!(h(RESNET20_W4), DEFAULT_MAX_HIDDEN);
        assert_eq!(h(1_000), 16, "the floor");
        // The rule's bound holds and the next width would break it.
        for w in [RESNET20, RESNET56, 2_000_000] {
            let p = |h| PredictorConfig::reference(h, 3, 20, 0.76).parameter_count() as f64;
            let allowed = w as f64 * DEFAULT_PARAMS_PER_WEIGHT;
            assert!(p(h(w)) <= allowed);
            assert!(h(w) == DEFAULT_MAX_HIDDEN || p(h(w) + 1) > allowed);
        }
        // Fewer PE levels leave more parameters to the hidden layers.
        assert!(default_hidden(RESNET56, WeightDtype::Int8, 3, 5, 10, 0.76) > h(RESNET56));
    }

    #[test]
    fn default_phase1_steps_grow_with_kernels_and_are_most_for_one_batch() {
        assert_eq!(default_phase1_steps(26_995, 4096), 2_699);
        assert_eq!(default_phase1_steps(10_000, 4096), 2_000);
        assert_eq!(default_phase1_steps(10_000_000, 4096), 20_000);
        // ResNet-20's stem alone (the convs left after --code layer=1): one batch.
        assert_eq!(default_phase1_steps(16, 4096), 20_000);
        assert_eq!(default_phase1_steps(4096, 4096), 20_000);
        assert_eq!(default_phase1_steps(4097, 4096), 2_000);
    }

    #[test]
    fn every_conv_but_the_smallest_is_coded_by_default_with_a_budget_on_data() {
        let conv = |name: &str, cout: u32, cin: u32| LayerEntry {
            name: name.into(),
            dtype: crate::format::TensorDtype::F32,
            permutation: PermutationKind::None,
            shape: [cout, cin, 3, 3],
        };
        let layers = [
            conv("a.weight", 16, 16),
            conv("conv1.weight", 16, 1),
            conv("b.weight", 32, 16),
            conv("conv1.weight.b", 16, 1),
        ];
        let c = CodedOptions::every_conv_but(&layers).unwrap();
        // The first of the smallest is kept, however names share prefixes.
        let coded: Vec<_> = layers
            .iter()
            .filter(|l| c.rank(l).is_some())
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(coded, ["a.weight", "b.weight", "conv1.weight.b"]);
        assert!(c.has_auto_bits() && !c.has_auto());
        assert_eq!(c.rank(&layers[2]), Some(0), "whole codes");
        assert!(CodedOptions::every_conv_but(&layers[..1]).is_none());
        assert!(CodedOptions::every_conv_but(&[]).is_none());

        let budget = EncodeOptions {
            target_size: Some(SizeTarget::Percent(7.5)),
            ..EncodeOptions::default()
        };
        assert!(budget.codes_for_budget_by_default(DistillSource::Data, false));
        assert!(!budget.codes_for_budget_by_default(DistillSource::Data, true));
        assert!(!budget.codes_for_budget_by_default(DistillSource::Noise, false));
        for other in [
            EncodeOptions {
                target_size: None,
                ..budget.clone()
            },
            EncodeOptions {
                held_out: 0,
                ..budget.clone()
            },
            EncodeOptions {
                resume: Some("f.nern".into()),
                ..budget.clone()
            },
            EncodeOptions {
                coded: Some(CodedOptions::parse(&["layer=1"], 3, 1e-4).unwrap()),
                ..budget.clone()
            },
        ] {
            assert!(!other.codes_for_budget_by_default(DistillSource::Data, false));
        }
    }

    #[test]
    fn a_predicted_set_within_one_batch_gets_four_pe_levels() {
        assert_eq!(default_pe_levels(16, 4096, 20), SMALL_SET_PE_LEVELS);
        assert_eq!(default_pe_levels(4096, 4096, 20), SMALL_SET_PE_LEVELS);
        assert_eq!(default_pe_levels(4097, 4096, 20), 20);
        // ResNet-20's convs, all predicted: NeRN's 20.
        assert_eq!(default_pe_levels(30_000, 4096, 20), 20);
    }

    #[test]
    fn the_default_codes_are_six_bits_only_when_phase_2_trains_on_data() {
        let data = EncodeOptions::default_distill(DistillSource::Data, false);
        let noise = EncodeOptions::default_distill(DistillSource::Noise, false);
        assert_eq!(default_predictor_dtype(Some(&data)), WeightDtype::Int6);
        assert_eq!(default_predictor_dtype(Some(&noise)), WeightDtype::Int8);
        assert_eq!(default_predictor_dtype(None), WeightDtype::Int8);
    }

    #[test]
    fn narrower_codes_get_the_same_code_bits_per_weight() {
        let h = |d| default_hidden(RESNET20, d, 3, 5, 20, 0.76);
        // Floats count as 8 bits: the same width as int8.
        for d in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16] {
            assert_eq!(h(d), 180);
        }
        assert!(h(WeightDtype::Int8) < h(WeightDtype::Int6));
        assert!(h(WeightDtype::Int6) < h(WeightDtype::Int5));
        assert!(h(WeightDtype::Int5) < h(WeightDtype::Int4));
        for d in [WeightDtype::Int6, WeightDtype::Int5, WeightDtype::Int4] {
            let bits = |h| {
                PredictorConfig::reference(h, 3, 20, 0.76).parameter_count() as f64
                    * f64::from(d.code_bits().unwrap())
            };
            let allowed = RESNET20 as f64 * DEFAULT_PARAMS_PER_WEIGHT * 8.0;
            assert!(bits(h(d)) <= allowed && bits(h(d) + 1) > allowed, "{d:?}");
        }
        // ResNet-56 at 6 bits reaches the cap.
        assert_eq!(
            default_hidden(RESNET56, WeightDtype::Int6, 3, 5, 20, 0.76),
            DEFAULT_MAX_HIDDEN
        );
    }

    #[test]
    fn code_rules_parse_fractions_and_bits_and_pick_ranks() {
        let r = CodedOptions::parse_rule("layer3=1/8@4").unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.fraction, r.bits),
            ("layer3", 0.125, Some(4))
        );
        let o = CodedOptions {
            rules: vec![r, CodedOptions::parse_rule("layer=1").unwrap()],
            bits: 3,
            lr: 1e-4,
        };
        let layer = |name: &str, shape| LayerEntry {
            name: name.into(),
            dtype: crate::format::TensorDtype::F32,
            permutation: PermutationKind::None,
            shape,
        };
        // First matching rule: layer3 at rank 256 / 8, 4 bits; others whole at the default.
        assert_eq!(
            o.rank(&layer("layer3.0.conv1.weight", [256, 256, 3, 3])),
            Some(32)
        );
        assert_eq!(o.bits_of("layer3.0.conv1.weight"), 4);
        assert_eq!(
            o.rank(&layer("layer1.0.conv1.weight", [64, 64, 3, 3])),
            Some(0)
        );
        assert_eq!(o.bits_of("layer1.0.conv1.weight"), 3);
        assert_eq!(o.rank(&layer("conv1.weight", [64, 1, 3, 3])), None);
        // Factors that would not save codes are stored whole: a 1x1 of 64 x 32 at rank 32.
        let half = CodedOptions {
            rules: vec![CodedOptions::parse_rule("d=1/2").unwrap()],
            ..o
        };
        assert_eq!(half.rank(&layer("d", [64, 32, 1, 1])), Some(0));
        assert_eq!(half.rank(&layer("d", [64, 64, 3, 3])), Some(32));
        let auto = CodedOptions::parse_rule("layer3=auto@4").unwrap();
        assert_eq!((auto.fraction, auto.bits, auto.auto), (1.0, Some(4), true));
        assert!(!CodedOptions::parse_rule("layer3=1/2").unwrap().auto);
        let parsed = CodedOptions::parse(&["layer3=1/8@4", "layer=1"], 3, 1e-4).unwrap();
        assert_eq!(parsed.rules.len(), 2);
        assert!(CodedOptions::parse(&["a=1"], 9, 1e-4).is_err());
        assert!(CodedOptions::parse(&["a=1"], 3, f64::NAN).is_err());
        assert!(CodedOptions::parse(&["a=1", "b"], 3, 1e-4).is_err());
        for bad in [
            "layer3", "=1", "a=0", "a=1.5", "a=1@1", "a=1@9", "a=x", "a=auto/2",
        ] {
            assert!(CodedOptions::parse_rule(bad).is_err(), "{bad}");
        }
    }
}
