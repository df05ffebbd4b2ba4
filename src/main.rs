//! The `nernc` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use nernc::format::{Limits, read_container};
use nernc::store::Location;
use nernc::{Error, Result};

#[derive(Parser)]
#[command(
    name = "nernc",
    version,
    about = "Learned compression of CNN checkpoints (.nern)",
    after_help = "Paths: every input and output is a local path, file://PATH, or (in builds with the \
`store` feature, the default) s3://BUCKET/KEY, gs://BUCKET/KEY or az://CONTAINER/KEY. Credentials \
come only from the standard environment variables (AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, \
AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, \
GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_NAME + a key, \
SAS or token; AWS_ENDPOINT_URL and AWS_ALLOW_HTTP for other S3 servers); without them a URI \
fails before any request, and no cloud metadata endpoint is ever asked."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum PermutationArg {
    /// A channel chain inside each filter, then a filter chain (the paper's CIFAR setting).
    InFilter,
    /// One chain over all kernels of a layer (the paper's ImageNet setting).
    CrossFilter,
    /// Keep the checkpoint's order.
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
    /// Symmetric int8 with one f32 scale per output unit (format 1.1; about a quarter of f32)
    Int8,
    /// Symmetric 6-bit codes (-31..=31), one f32 scale per output unit (format 1.4; stored a
    /// byte per code when that compresses smaller, 1.5). Use with phase 2, which trains
    /// through the rounding
    Int6,
    /// Symmetric 5-bit codes (-15..=15), bit-packed (format 1.4)
    Int5,
    /// Symmetric int4 (-7..=7), two per byte, one f32 scale per output unit (format 1.3; about an
    /// eighth of f32). Use with phase 2, which trains through the rounding
    Int4,
}

#[derive(Clone, Copy, ValueEnum)]
enum PassthroughArg {
    /// Byte for byte as in the source checkpoint.
    Exact,
    /// F32 tensors (BN, FC, biases) as binary16: lossy, recorded in the file (format 1.4)
    F16,
    /// BN weight/bias and the FC layer trained in phase 2 beside the predictor (running
    /// statistics kept): lossy, recorded in the recipe, no extra bytes
    Tuned,
    /// Tuned, then stored as binary16
    TunedF16,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoundingArg {
    /// Each weight to its nearest code
    Nearest,
    /// Input by input, each rounding error compensated on the weights not yet rounded and the
    /// bias (GPTQ on the predictor's exact inputs, every kernel's coordinates)
    Compensated,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChannelOrderArg {
    /// The source checkpoint's
    Source,
    /// Channels with similar weights side by side (opt-in): the same function, no table stored,
    /// but the decoded checkpoint's channels are in another order than the source's
    Similar,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantizeArg {
    Int8,
    Int4,
    /// codes -3..=3, one byte each before zstd (the recipe of `baselines.py`)
    Int3,
    /// codes -1..=1 (ternary)
    Int2,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Test,
    Train,
}

#[cfg(feature = "train")]
impl From<SplitArg> for nernc::data::Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Test => nernc::data::Split::Test,
            SplitArg::Train => nernc::data::Split::Train,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a predictor on a checkpoint's convolution weights and write a .nern file.
    #[cfg(feature = "train")]
    Encode(EncodeArgs),
    /// Encode the inputs of a manifest (one shard of it), content-addressed, for schedulers.
    /// Exit status: 0 all encoded or skipped, 2 a bad input or command line (do not retry),
    /// 75 a transient failure or SIGTERM/SIGINT (retry; a rerun does what is unfinished).
    #[cfg(feature = "train")]
    Batch(BatchArgs),
    /// Regenerate the full checkpoint (.safetensors) from a .nern file.
    Decode(DecodeArgs),
    /// Top-1 accuracy of a checkpoint (.safetensors or .nern) on a dataset.
    #[cfg(feature = "train")]
    Eval(EvalArgs),
    /// Show what a .nern file holds: sections, sizes, predictor, layers, provenance.
    Inspect(InspectArgs),
    /// Tell whether a checkpoint is the one a .nern file was made from (by the SHA-256 its
    /// provenance records). Exit status 0: it is; 1: it is not, or the file cannot tell.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// The .nern file (path or URI).
    input: PathBuf,
    /// The checkpoint to compare with the file's recorded source (path or URI).
    #[arg(long)]
    source: PathBuf,
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "train")]
#[derive(Args)]
struct EncodeArgs {
    /// Source checkpoint (.safetensors, PyTorch state_dict layout): a path or a URI.
    input: PathBuf,
    /// Output .nern file, a path or a URI (written atomically: rename, or one PUT).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    settings: EncodeSettings,
    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long)]
    json: bool,
}

/// The groups `encode -h` and `batch -h` list the settings in, one name each so that a
/// misspelt heading cannot open a group of its own.
#[cfg(feature = "train")]
mod heading {
    pub const SIZE: &str = "Size and goals";
    pub const PREDICTOR: &str = "Predictor";
    pub const PHASE1: &str = "Phase 1: reconstruction";
    pub const PHASE2: &str = "Phase 2: distillation";
    pub const DATA: &str = "Data and selection";
    pub const STORED: &str = "Stored tensors";
}

/// What `encode` and `batch` share: every setting of an encode.
#[cfg(feature = "train")]
#[derive(Args)]
struct EncodeSettings {
    /// Size budget of the written file: a percent of the source (`10%`) or bytes (`120000`).
    ///
    /// nernc never writes a larger file. With phase 2 on real data and no --code, every conv but
    /// the smallest is stored as codes whose bits (2-8 per conv) are chosen on held-out images to
    /// fill the budget (as --code ...@auto; --predict-all turns this off), the smallest conv
    /// predicted. Otherwise, or where even 2-bit codes would not fit, nernc measures a few
    /// predictor shapes that fit (hidden width, PE levels; in the default storage) on a short
    /// schedule and trains the best one fully. Settings given explicitly (--hidden, --pe-levels,
    /// --predictor-dtype) are kept and must fit.
    #[arg(long, allow_hyphen_values = true, help_heading = heading::SIZE)]
    target_size: Option<String>,
    /// Held-out accuracy the result may lose against the original, in points.
    ///
    /// Default: the encode aims at 0.3 and reports a miss. Given: a result that misses it is not
    /// written (exit status 3).
    #[arg(long, allow_negative_numbers = true, help_heading = heading::SIZE)]
    max_drop: Option<f64>,
    /// Wall-clock limit of the whole encode: `600`, `600s`, `9m`, `2h`.
    ///
    /// A few real steps of each phase are timed first; if the schedule would not fit, it is
    /// shortened (never lengthened): phase 2 first, to a fifth of its steps, then phase 1, then
    /// phase 2 again. The counts run are printed and recorded: a rerun with them (`--steps N
    /// --distill-steps M`) gives the same file; the limit itself makes the schedule depend on this
    /// machine's speed.
    #[arg(long, allow_hyphen_values = true, help_heading = heading::SIZE)]
    time_limit: Option<String>,
    /// Hidden width of the predictor MLP [default: scaled with the model at 3.6 code bits per
    /// conv weight (0.6 predictor parameters per weight in the default int6 storage, 0.45 in
    /// int8), at most 384 (int6: 211 on ResNet-20, 384 on ResNet-56); or chosen by
    /// --target-size].
    #[arg(long, help_heading = heading::PREDICTOR)]
    hidden: Option<u32>,
    /// Linear layers of the predictor (hidden layers + 1; NeRN's reference has 5).
    ///
    /// With --target-size the width is chosen for this depth.
    #[arg(long, default_value_t = nernc::predictor::REFERENCE_LAYERS, help_heading = heading::PREDICTOR)]
    layers: usize,
    /// Positional-encoding levels L per coordinate (predictor input width 6 L; the first
    /// layer holds 6 L x hidden weights) [default: 20; 4 when the predicted kernels fit in one
    /// --batch, e.g. a ResNet's stem alone after --code; or chosen by --target-size].
    #[arg(long, help_heading = heading::PREDICTOR)]
    pe_levels: Option<u32>,
    /// Positional-encoding base b (level l uses frequency pi * b^l).
    #[arg(long, default_value_t = 0.76, help_heading = heading::PREDICTOR)]
    pe_base: f64,
    /// Learned embedding values per filter and per input channel of every predicted layer, beside
    /// the positional encoding (0: none).
    ///
    /// The predictor's first layer then sees what is specific to each filter and channel; the
    /// tables are stored like its weights. Files with tables are format 1.7 (older readers refuse
    /// them). With --resume: the file's.
    #[arg(long, default_value_t = 0, help_heading = heading::PREDICTOR)]
    embedding_width: u32,
    /// Storage dtype of the predictor's weights [default: int6 when phase 2 trains on real data
    /// (through its rounding), int8 otherwise; with --resume: the file's own].
    ///
    /// Without --hidden the default width gives narrower codes more parameters (the same code bits
    /// per weight). f16 halves f32 at no measured accuracy cost.
    #[arg(long, value_enum, help_heading = heading::PREDICTOR)]
    predictor_dtype: Option<DtypeArg>,
    /// How the f32 phase-1 predictor is rounded to integer codes (the start of phase 2, or the
    /// stored weights without it).
    #[arg(long, value_enum, default_value_t = RoundingArg::Compensated, help_heading = heading::PREDICTOR)]
    rounding: RoundingArg,
    /// Phase-1 steps per round [default: a tenth of the model's kernel count, 2000..=20000;
    /// 3,227 on ResNet-20, 9,678 on ResNet-56].
    #[arg(long, help_heading = heading::PHASE1)]
    steps: Option<usize>,
    /// Progressive reconstruction rounds (round r+1 reconstructs round r's decoded weights).
    #[arg(long, default_value_t = 1, help_heading = heading::PHASE1)]
    rounds: usize,
    /// Kernels per training step.
    #[arg(long, default_value_t = 4096, help_heading = heading::PHASE1)]
    batch: usize,
    /// Peak learning rate (Adam, cosine decay to 1e-6).
    #[arg(long, default_value_t = 2e-3, help_heading = heading::PHASE1)]
    lr: f64,
    /// Adam's first-moment decay (0.5 as the reference's Ranger; measured better than 0.9).
    #[arg(long, default_value_t = 0.5, help_heading = heading::PHASE1)]
    beta1: f32,
    /// Kernel ordering before training.
    ///
    /// The tables cost more bytes than they save at the default size (measured on ResNet-20: 23
    /// KB), so none by default.
    #[arg(long, value_enum, default_value_t = PermutationArg::None, help_heading = heading::PHASE1)]
    permutation: PermutationArg,
    /// Reorder channels before encoding [default: source; with --resume: the file's own].
    ///
    /// Each block's inner channels and each stretch of the residual stream move as a whole (filter,
    /// BN entries, the next layer's input slice), so the network computes the same function;
    /// ordered by similarity, phase 1 fits them 4-5 % better (ResNet-20), with no test-accuracy
    /// gain measured over two seeds. Recorded in the file, shown by inspect.
    #[arg(long, value_enum, help_heading = heading::PHASE1)]
    channel_order: Option<ChannelOrderArg>,
    /// Phase 2: distillation steps after reconstruction (0: reconstruction only) [default: 400
    /// on data, 1,200 on data with --code, 150 on noise].
    #[arg(long, help_heading = heading::PHASE2)]
    distill_steps: Option<usize>,
    /// Phase-2 learning rate (Adam, cosine decay) [default: 5e-5 on data, 1e-5 on noise].
    ///
    /// Small: Adam moves every weight by about this much per step, and the phase-1 fit is fragile
    /// (measured: 3e-4 destroyed it; on noise 5e-5 lost 8 points, 1e-5 gained 2.5).
    #[arg(long, help_heading = heading::PHASE2)]
    distill_lr: Option<f64>,
    /// Phase-2 images per step.
    #[arg(long, default_value_t = 128, help_heading = heading::PHASE2)]
    distill_batch: usize,
    /// Phase-2 learning-rate warm-up: linear ramp over this many steps [default: 0, none; it did
    /// not help in the measurements so far].
    #[arg(long, help_heading = heading::PHASE2)]
    distill_warmup: Option<usize>,
    /// Phase 2 in this many cycles of --distill-steps each.
    ///
    /// Each cycle after the first restarts from the previous one's kept state: learning rate back
    /// at its peak, a fresh Adam, the weights moved off their code grid (as --resume does to a
    /// finished file). Measured on ResNet-56 at 5 %: 2 x 400 steps end where 1 x 800 does, 3 x 400
    /// where 1 x 1200 does; longer phase 2 pays there, restarts do not.
    #[arg(long, default_value_t = 1, help_heading = heading::PHASE2)]
    distill_cycles: usize,
    /// Phase-2 teacher (default: the source checkpoint); any network with the same classes.
    #[arg(long, help_heading = heading::PHASE2)]
    teacher: Option<PathBuf>,
    /// Distillation temperature.
    #[arg(long, default_value_t = 1.0, help_heading = heading::PHASE2)]
    temperature: f64,
    /// Weight of the reconstruction RMSE added to the distillation loss.
    #[arg(long, default_value_t = 0.0, help_heading = heading::PHASE2)]
    recon_weight: f64,
    /// Weight of the cross-entropy on the images' true labels added to the distillation loss
    /// (phase 2 on real data only; 0: logits of the teacher only).
    #[arg(long, default_value_t = 0.0, help_heading = heading::PHASE2)]
    label_weight: f64,
    /// Weight of an attention-map term added to the distillation loss (0: off).
    ///
    /// Each residual block's spatial attention map (channel mean of squared activations, unit
    /// L2 norm per image) is matched to the teacher's by squared distance, summed over blocks,
    /// batch mean.
    #[arg(long, default_value_t = 0.0, help_heading = heading::PHASE2)]
    feature_weight: f64,
    /// Phase 2 on real data: translate each image by up to this many pixels per axis
    /// (zero fill), as in training (the fixtures were trained with 2).
    #[arg(long, default_value_t = 0, help_heading = heading::PHASE2)]
    augment_shift: usize,
    /// Phase 2 on real data: mirror images left-right with probability 1/2.
    #[arg(long, help_heading = heading::PHASE2)]
    augment_flip: bool,
    /// Skip phase 1: start phase 2 from this .nern of the same checkpoint.
    #[arg(long, help_heading = heading::PHASE2)]
    resume: Option<PathBuf>,
    /// Dataset directory for held-out selection and phase 2, or `noise` for data-free phase 2
    /// [default: the dataset's installed location (Fashion-MNIST:
    /// /usr/share/datasets/fashion-mnist); without it phase 2 is data-free and the accuracy
    /// unmeasured].
    #[arg(long, help_heading = heading::DATA)]
    data: Option<String>,
    /// Dataset format of --data.
    #[arg(
        long,
        default_value = "fashion-mnist",
        help_heading = heading::DATA
    )]
    dataset: String,
    /// Images held out for selection: every choice (phase-2 step, budget candidate, round) is
    /// made on them.
    #[arg(long, default_value_t = 5000, help_heading = heading::DATA)]
    held_out: usize,
    /// Where the held-out images come from.
    ///
    /// `train`: a seeded draw from the training split, which phase 2 then does not train on.
    /// `test`: the test split's first --held-out images (phase 2 trains on every training image);
    /// --test-eval then measures the remaining test images only (`nernc eval --skip N` repeats that
    /// figure). For improve mode, where the original has learned its training images and selection
    /// on them favours it; the file records the choice.
    #[arg(long, value_enum, default_value_t = SplitArg::Train, help_heading = heading::DATA)]
    held_out_from: SplitArg,
    /// Phase-2 steps between held-out evaluations (default: a tenth of the steps).
    #[arg(long, help_heading = heading::DATA)]
    eval_every: Option<usize>,
    /// Also measure the result's test accuracy and record it (not used for any choice).
    #[arg(long, help_heading = heading::DATA)]
    test_eval: bool,
    /// How the tensors the predictor does not cover are stored.
    ///
    /// `f16` halves the F32 ones (lossy; the decoded checkpoint then differs from the source there,
    /// and every figure is measured with those values).
    #[arg(long, value_enum, default_value_t = PassthroughArg::Exact, help_heading = heading::STORED)]
    passthrough: PassthroughArg,
    /// Store the passthrough uncompressed, readable in place from a memory map.
    ///
    /// Format 1.5 and earlier did; by default it is byte-shuffled under zstd when that is
    /// smaller (ResNet-20: 15,312 -> 12,413 bytes).
    #[arg(long, help_heading = heading::STORED)]
    raw_passthrough: bool,
    /// Store the convs whose names start with PREFIX as integer codes instead of predicting
    /// them: PREFIX=FRACTION[@BITS], repeatable, the first matching rule wins (format 1.8).
    ///
    /// FRACTION < 1 stores each such conv (as a cout x cin k k matrix) as two coded factors of
    /// rank floor(cout x FRACTION), initialised from its SVD; FRACTION = 1 stores it whole (so
    /// do factors that would not take fewer codes); @BITS overrides --code-bits. Phase 2 trains
    /// the codes' values beside the predictor (straight-through rounding). Pays where a
    /// network's convs are low-rank: the 4x-wide ResNet-20's layer3 at 1/8 (docs/measurements.md).
    /// FRACTION `auto` (needs --data) measures the rule's convs whole and at 1/2, 1/4, 1/8 on the
    /// held-out images before training and takes the smallest rank within 3 points of whole
    /// (training recovers most of such a loss: measured on two networks). @auto (needs
    /// --target-size and --data) gives each of the rule's convs its own bits: each is measured
    /// alone at 2..8 bits on held-out images (KL divergence from the source's predictions), then
    /// bits are taken away where they cost the least per byte until the file fits the budget
    /// (mixed precision). At least one conv stays predicted. --resume continues a file's coded
    /// convs as they are (rules given with it must describe them).
    /// With @auto the predictor of the convs left keeps its default (or given) shape and the
    /// budget goes to the codes; with --code, phase 2 defaults to 1,200 steps.
    /// ResNet-20 at 7.2-7.3 % within 0.07 points (two seeds): --code layer=1@auto
    /// --target-size 7.5%. ResNet-56 at 4.93 % within 0.06: --code layer=1@auto --target-size 5%
    /// --passthrough f16 --hidden 8 --pe-levels 4 --predictor-dtype int8 --steps 20000.
    #[arg(long = "code", value_name = "PREFIX=FRACTION[@BITS|@auto]", help_heading = heading::STORED)]
    code: Vec<String>,
    /// Predict every conv (the NeRN file): with --target-size and no --code, nernc otherwise
    /// stores every conv but the smallest as codes whose bits fill the budget.
    ///
    /// That default needs phase 2 on real data with held-out images; where even 2-bit codes
    /// would not fit the budget (or the network cannot be run) every conv is predicted anyway,
    /// and a note says so. Whole codes made the better file at every size they were measured at
    /// (ResNet-20 at 5, 7.5 and 10.4 %, ResNet-56 at 5 %).
    #[arg(long, conflicts_with = "code", help_heading = heading::STORED)]
    predict_all: bool,
    /// Bits per code of the --code rules without @BITS (2..=8; symmetric, one scale per row).
    #[arg(long, default_value_t = nernc::encode::DEFAULT_CODE_BITS, help_heading = heading::STORED)]
    code_bits: u8,
    /// Phase-2 peak learning rate of the --code values (Adam, the predictor's schedule).
    #[arg(long, default_value_t = nernc::encode::DEFAULT_CODE_LR, help_heading = heading::STORED)]
    code_lr: f64,
    /// Peak learning rate of the tuned passthrough (with `--passthrough tuned|tuned-f16`).
    #[arg(long, default_value_t = nernc::encode::DEFAULT_TUNE_LR, help_heading = heading::STORED)]
    tune_lr: f64,
    /// Seed for initialisation and sampling (same seed and device: same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training device; `cuda` needs a build with `--features cuda` and a GPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

#[cfg(feature = "train")]
#[derive(Args)]
struct BatchArgs {
    /// JSON lines, one input each: {"source": PATH or URI, "id": optional}; itself a path or
    /// a URI.
    #[arg(long)]
    manifest: PathBuf,
    /// Output directory or object-store prefix (s3://BUCKET/PREFIX); each file is named from
    /// the source's sha256, the settings' hash and nernc's version, an existing one is skipped,
    /// and new ones are published create-if-absent (no-clobber link, or a conditional PUT).
    #[arg(long)]
    out: PathBuf,
    /// This worker's shard, I/N (0-based): the manifest lines whose index is I modulo N.
    #[arg(long, conflicts_with = "shards")]
    shard: Option<String>,
    /// Number of shards, the index from JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID or
    /// AWS_BATCH_JOB_ARRAY_INDEX.
    #[arg(long)]
    shards: Option<u64>,
    /// Write the JSON lines here instead of stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    settings: EncodeSettings,
}

#[derive(Args)]
struct DecodeArgs {
    /// The .nern file to decode (path or URI).
    input: PathBuf,
    /// Output .safetensors file, a path or a URI (written atomically: rename, or one PUT).
    #[arg(short, long)]
    output: PathBuf,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Refuse files whose decoded checkpoint would exceed this many bytes.
    #[arg(long, default_value_t = Limits::default().max_output_bytes)]
    max_output_bytes: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "train")]
#[derive(Args)]
struct EvalArgs {
    /// The model to evaluate (.safetensors or .nern; path or URI).
    model: PathBuf,
    /// Dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Evaluate only the first N images (after --skip).
    #[arg(long)]
    limit: Option<usize>,
    /// Leave out the split's first N images: `--skip 5000` measures the test images that an
    /// encode with `--held-out-from test --held-out 5000` did not select on.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// The original checkpoint: also report its accuracy, the difference and the agreement.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Override the dataset's normalisation mean (one value, or one per channel, comma-separated).
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Override the dataset's normalisation std.
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Also measure accuracy under FGSM with this epsilon (pixel units, images in [0, 1]).
    #[arg(long)]
    fgsm: Option<f64>,
    /// Evaluate plain per-output-channel quantisation of MODEL's conv weights instead (round to
    /// nearest, symmetric); also prints the bytes it stores (zstd-19) and, unless --reference is
    /// given, the unquantised model's accuracy beside it: the bar nernc has to clear.
    #[arg(long, value_enum)]
    quantize: Option<QuantizeArg>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The .nern file to describe (path or URI).
    input: PathBuf,
    /// Read only the header, section table and provenance (META), with ranged reads from the
    /// start of the file, as a registry would on an object store; reports the bytes read.
    /// Other sections' hashes are not checked.
    /// This is the default for an object-store URI (s3://, gs://, az://).
    #[arg(long)]
    provenance: bool,
    /// For an object-store URI: fetch the whole file and check every section, as for a local one.
    #[arg(long, conflicts_with = "provenance")]
    full: bool,
    #[arg(long)]
    json: bool,
}

/// Writes `text` to stdout. A closed pipe (`nernc inspect f.nern | head`) ends the output
/// quietly instead of panicking as `print!` does.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    emit(&format!("{s}\n"));
    Ok(())
}

#[cfg(feature = "train")]
impl From<DeviceArg> for nernc::device::DeviceKind {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => Self::Cpu,
            DeviceArg::Cuda => Self::Cuda,
        }
    }
}

impl From<PermutationArg> for nernc::permute::PermutationKind {
    fn from(p: PermutationArg) -> Self {
        match p {
            PermutationArg::InFilter => Self::InFilter,
            PermutationArg::CrossFilter => Self::CrossFilter,
            PermutationArg::None => Self::None,
        }
    }
}

impl From<DtypeArg> for nernc::predictor::WeightDtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Self::F32,
            DtypeArg::F16 => Self::F16,
            DtypeArg::Bf16 => Self::Bf16,
            DtypeArg::Int8 => Self::Int8,
            DtypeArg::Int6 => Self::Int6,
            DtypeArg::Int5 => Self::Int5,
            DtypeArg::Int4 => Self::Int4,
        }
    }
}

#[cfg(feature = "train")]
impl EncodeSettings {
    fn options(&self) -> Result<nernc::encode::EncodeOptions> {
        use nernc::encode::{DataArg, DistillOptions, EncodeOptions, MaxDrop, Pinned, SizeTarget};
        let data = self.data.as_deref().map(DataArg::parse);
        let defaults = EncodeOptions::default();
        let mut opts = EncodeOptions {
            hidden: self.hidden,
            steps: self.steps,
            rounds: self.rounds,
            batch: self.batch,
            permutation: self.permutation.into(),
            seed: self.seed,
            device: self.device.into(),
            lr: self.lr,
            beta1: self.beta1,
            pe_levels: self.pe_levels.unwrap_or(defaults.pe_levels),
            pe_base: self.pe_base,
            embedding_width: self.embedding_width,
            layers: self.layers,
            dataset: nernc::data::DatasetKind::parse(&self.dataset)?,
            held_out: self.held_out,
            held_out_from: self.held_out_from.into(),
            test_eval: self.test_eval,
            resume: self.resume.clone(),
            predictor_dtype: self
                .predictor_dtype
                .map_or(defaults.predictor_dtype, Into::into),
            passthrough_f16: matches!(
                self.passthrough,
                PassthroughArg::F16 | PassthroughArg::TunedF16
            ),
            raw_passthrough: self.raw_passthrough,
            tune_passthrough: matches!(
                self.passthrough,
                PassthroughArg::Tuned | PassthroughArg::TunedF16
            )
            .then_some(self.tune_lr),
            rounding: match self.rounding {
                RoundingArg::Nearest => nernc::encode::Rounding::Nearest,
                RoundingArg::Compensated => nernc::encode::Rounding::Compensated,
            },
            channel_order: self.channel_order.map(|c| match c {
                ChannelOrderArg::Source => nernc::encode::ChannelOrder::Source,
                ChannelOrderArg::Similar => nernc::encode::ChannelOrder::Similar,
            }),
            coded: if self.code.is_empty() {
                None
            } else {
                Some(nernc::encode::CodedOptions::parse(
                    &self.code,
                    self.code_bits,
                    self.code_lr,
                )?)
            },
            target_size: self
                .target_size
                .as_deref()
                .map(SizeTarget::parse)
                .transpose()?,
            time_limit: self
                .time_limit
                .as_deref()
                .map(nernc::encode::clock::parse_duration)
                .transpose()?,
            pinned: Pinned {
                pe_levels: self.pe_levels.is_some(),
                predictor_dtype: self.predictor_dtype.is_some(),
            },
            max_drop: match self.max_drop {
                Some(points) => MaxDrop {
                    points,
                    enforced: true,
                },
                None => MaxDrop::default(),
            },
            ..defaults
        };
        let source = opts.set_data(data.as_ref())?;
        opts.phase2_by_default = self.distill_steps.is_none() && self.data.is_none();
        opts.codes_for_budget = opts.codes_for_budget_by_default(source, self.predict_all);
        let coded = opts.coded.is_some() || opts.codes_for_budget;
        let d = EncodeOptions::default_distill(source, coded);
        let steps = self.distill_steps.unwrap_or(d.steps);
        opts.distill = (steps > 0).then(|| DistillOptions {
            steps,
            teacher: self.teacher.clone(),
            temperature: self.temperature,
            recon_weight: self.recon_weight,
            label_weight: self.label_weight,
            feature_weight: self.feature_weight,
            lr: self.distill_lr.unwrap_or(d.lr),
            batch: self.distill_batch,
            eval_every: self.eval_every,
            warmup: self.distill_warmup,
            cycles: self.distill_cycles,
            augment: nernc::data::Augment {
                shift: self.augment_shift,
                flip: self.augment_flip,
            },
            ..d
        });
        if self.predictor_dtype.is_none() {
            opts.predictor_dtype = nernc::encode::default_predictor_dtype(opts.distill.as_ref());
        }
        Ok(opts)
    }
}

#[cfg(feature = "train")]
fn encode(args: EncodeArgs) -> Result<()> {
    let output = Location::from_arg(&args.output)?;
    output.check_output()?;
    let opts = args.settings.options()?;
    let progress = nernc::encode::BarProgress::default();
    let (bytes, report) = nernc::encode::encode(&args.input, &opts, &progress)?;
    output.write(&bytes)?;
    if args.json {
        print_json(&report)
    } else {
        let (i, o) = (args.input.display(), args.output.display());
        eprint!("{}", report.summary(&i.to_string(), &o.to_string()));
        Ok(())
    }
}

fn decode(args: DecodeArgs) -> Result<()> {
    let limits = Limits {
        max_output_bytes: args.max_output_bytes,
        ..Limits::default()
    };
    let threads = args.threads.unwrap_or_else(nernc::decode::default_threads);
    let summary = nernc::decode::decode_file(&args.input, &args.output, threads, &limits)?;
    if args.json {
        return print_json(&summary);
    }
    eprintln!(
        "{} -> {}: {} tensors ({} predicted{}), {} bytes of tensor data, {:.3} s",
        args.input.display(),
        args.output.display(),
        summary.tensors,
        summary.predicted_tensors,
        if summary.coded_tensors > 0 {
            format!(", {} coded", summary.coded_tensors)
        } else {
            String::new()
        },
        summary.output_bytes,
        summary.seconds
    );
    Ok(())
}

#[cfg(feature = "train")]
fn eval(args: EvalArgs) -> Result<()> {
    use nernc::data::{DatasetKind, Split, load};
    let kind = DatasetKind::parse(&args.dataset)?;
    let dir = args.data.or_else(|| kind.default_dir()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "no --data directory given and no default location for {}",
            args.dataset
        ))
    })?;
    let split: Split = args.split.into();
    let split_name = split.name();
    let limit = args.limit.map(|l| l.saturating_add(args.skip));
    let data = load(&dir, kind, split, limit)?.skip_first(args.skip);
    if data.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "--skip {} leaves no {split_name} images to evaluate",
            args.skip
        )));
    }
    let opts = nernc::eval::EvalOptions {
        norm: kind.normalization().with_overrides(args.mean, args.std),
        fgsm: args.fgsm,
        device: args.device.into(),
        quantize: args.quantize.map(|q| match q {
            QuantizeArg::Int8 => nernc::baseline::QuantBits::Int8,
            QuantizeArg::Int4 => nernc::baseline::QuantBits::Int4,
            QuantizeArg::Int3 => nernc::baseline::QuantBits::Int3,
            QuantizeArg::Int2 => nernc::baseline::QuantBits::Int2,
        }),
    };
    let r = nernc::eval::evaluate(
        &args.model,
        args.reference.as_deref(),
        &data,
        split_name,
        &opts,
    )?;
    if args.json {
        print_json(&r)
    } else {
        emit(&r.render());
        Ok(())
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    let limits = Limits::default();
    let remote = Location::from_arg(&args.input)?.local_path().is_none();
    if args.provenance || (remote && !args.full) {
        let p = nernc::provenance::provenance_of_file(&args.input, &limits)?;
        let title = args.input.file_name().and_then(|n| n.to_str());
        let annotations = nernc::provenance::oci_annotations(&p, title);
        if args.json {
            return print_json(&serde_json::json!({
                "version": format!("{}.{}", p.major, p.minor),
                "media_type": nernc::provenance::MEDIA_TYPE,
                "oci_annotations": annotations,
                "file_bytes": p.file_len,
                "bytes_read": p.bytes_read,
                "reads": p.reads,
                "sections": p.sections.iter().map(|s| serde_json::json!({
                    "tag": s.tag_str(), "offset": s.offset, "stored_bytes": s.stored_len,
                })).collect::<Vec<_>>(),
                "metadata": p.metadata,
            }));
        }
        let mut text = format!(
            ".nern version {}.{}  ({} bytes); read {} bytes in {} ranged read(s)\n",
            p.major, p.minor, p.file_len, p.bytes_read, p.reads
        );
        for s in &p.sections {
            text += &format!(
                "  {}  offset {:>9}  {:>10} bytes\n",
                s.tag_str(),
                s.offset,
                s.stored_len
            );
        }
        text += &format!(
            "media type {}; OCI annotations (spec §9):\n",
            nernc::provenance::MEDIA_TYPE
        );
        for (k, v) in &annotations {
            text += &format!("  {k}: {v}\n");
        }
        text += &match &p.metadata {
            Some(m) => format!("{m}\n"),
            None => "no provenance (META) in this file\n".into(),
        };
        emit(&text);
        return Ok(());
    }
    let file = nernc::io::MappedFile::open(&args.input)?;
    let container = read_container(file.bytes(), &limits)?;
    let report = nernc::inspect::inspect(&container, &limits)?;
    if args.json {
        print_json(&report)
    } else {
        emit(&nernc::inspect::render(&report));
        Ok(())
    }
}

#[cfg(feature = "train")]
fn batch(args: BatchArgs) -> ExitCode {
    use nernc::batch::{BatchJob, EXIT_BAD_INPUT, EXIT_RETRY, Shard};
    let setup = || -> Result<(Shard, nernc::encode::EncodeOptions)> {
        let shard = match (&args.shard, args.shards) {
            (Some(s), _) => Shard::parse(s)?,
            (None, Some(n)) => Shard::from_env(n, &|v| std::env::var(v).ok())?,
            (None, None) => Shard::new(0, 1).expect("one shard"),
        };
        Ok((shard, args.settings.options()?))
    };
    let (shard, opts) = match setup() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // SIGTERM (a scheduler stopping the pod) and SIGINT stop at the next training step.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("error: cannot handle signal {sig}: {e}");
            return ExitCode::from(EXIT_RETRY);
        }
    }
    let (manifest, out_dir) = match (
        Location::from_arg(&args.manifest),
        Location::from_arg(&args.out),
    ) {
        (Ok(m), Ok(o)) => (m, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let job = BatchJob {
        manifest: &manifest,
        out_dir: &out_dir,
        shard,
        opts: &opts,
        stop,
    };
    let result = match &args.report {
        Some(path) => std::fs::File::create(path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })
            .and_then(|mut f| nernc::batch::run(&job, &mut f)),
        None => nernc::batch::run(&job, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(summary) => {
            eprintln!(
                "batch shard {}/{}: {} encoded, {} skipped, {} failed (bad input), {} failed (retry)",
                shard.index,
                shard.count,
                summary.encoded,
                summary.skipped,
                summary.failed_bad,
                summary.failed_transient
            );
            ExitCode::from(summary.exit_status())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if nernc::batch::is_transient(&e) {
                EXIT_RETRY
            } else {
                EXIT_BAD_INPUT
            })
        }
    }
}

fn verify(args: VerifyArgs) -> Result<()> {
    let v = nernc::provenance::verify_source(&args.input, &args.source, &Limits::default())?;
    if args.json {
        print_json(&v)?;
    } else if v.matches {
        emit(&format!(
            "{} was made from {} (sha256 {})\n",
            args.input.display(),
            args.source.display(),
            v.sha256
        ));
    }
    if v.matches {
        return Ok(());
    }
    Err(Error::Incompatible(format!(
        "{} was not made from {}: its source is recorded as {} ({} bytes), this checkpoint is sha256 {} ({} bytes)",
        args.input.display(),
        args.source.display(),
        v.recorded_sha256
            .as_deref()
            .map(|s| format!("sha256 {s}"))
            .or(v.recorded_blake3.as_deref().map(|b| format!("blake3 {b}")))
            .unwrap_or_default(),
        v.recorded_bytes.map_or("?".into(), |b| b.to_string()),
        v.sha256,
        v.bytes
    )))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        #[cfg(feature = "train")]
        Command::Encode(args) => encode(args),
        Command::Decode(args) => decode(args),
        #[cfg(feature = "train")]
        Command::Batch(args) => return batch(args),
        #[cfg(feature = "train")]
        Command::Eval(args) => eval(args),
        Command::Inspect(args) => inspect(args),
        Command::Verify(args) => verify(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            // 3: the encode ran but missed what was asked (--max-drop, --target-size), so a
            // script can tell "try a larger budget" from a broken input or command line.
            match e {
                Error::GoalNotMet(_) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn encode_help(long: bool) -> String {
        let mut cli = Cli::command();
        let encode = cli
            .find_subcommand_mut("encode")
            .expect("encode subcommand");
        let help = if long {
            encode.render_long_help()
        } else {
            encode.render_help()
        };
        help.to_string()
    }

    fn settings(args: &[&str]) -> nernc::Result<nernc::encode::EncodeOptions> {
        let argv = ["nernc", "encode", "m.safetensors", "-o", "m.nern"];
        let cli = Cli::try_parse_from(argv.iter().chain(args))
            .map_err(|e| nernc::Error::InvalidArgument(e.to_string()))?;
        match cli.command {
            Command::Encode(a) => a.settings.options(),
            _ => unreachable!("parsed an encode"),
        }
    }

    /// `--target-size` alone stores codes (with their 1,200 phase-2 steps) when phase 2 trains
    /// on real data; `--predict-all`, `--data noise` or `--code` keep the old meanings.
    #[test]
    fn a_budget_on_data_stores_codes_unless_told_to_predict_all() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let on_data = ["--target-size", "7.5%", "--data", data];
        let o = settings(&on_data).unwrap();
        assert!(o.codes_for_budget);
        assert_eq!(
            o.distill.as_ref().unwrap().steps,
            nernc::encode::DEFAULT_CODED_DISTILL_STEPS
        );
        let o = settings(&[&on_data[..], &["--predict-all"]].concat()).unwrap();
        assert!(!o.codes_for_budget);
        assert_eq!(
            o.distill.as_ref().unwrap().steps,
            nernc::encode::DEFAULT_DISTILL_STEPS
        );
        assert!(
            !settings(&["--target-size", "7.5%", "--data", "noise"])
                .unwrap()
                .codes_for_budget
        );
        assert!(!settings(&["--data", data]).unwrap().codes_for_budget);
        let coded = settings(&[&on_data[..], &["--code", "layer=1@3"]].concat()).unwrap();
        assert!(!coded.codes_for_budget && coded.coded.is_some());
        assert!(
            settings(&[&on_data[..], &["--code", "layer=1", "--predict-all"]].concat()).is_err()
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `encode -h` is an overview: the options in groups, one line of help each; `--help`
    /// keeps the details (measurements, defaults' reasons).
    #[test]
    fn encode_help_groups_its_options_and_keeps_details_for_long_help() {
        let short = encode_help(false);
        let long = encode_help(true);
        for heading in [
            "Size and goals:",
            "Predictor:",
            "Phase 1: reconstruction:",
            "Phase 2: distillation:",
            "Data and selection:",
            "Stored tensors:",
        ] {
            assert!(short.contains(heading), "{heading} missing from -h");
            assert!(long.contains(heading), "{heading} missing from --help");
        }
        let detail = "never writes a larger file";
        assert!(long.contains(detail));
        assert!(
            !short.contains(detail),
            "-h should give --target-size's first sentence only"
        );
        assert!(short.lines().count() * 2 < long.lines().count());
    }
}
