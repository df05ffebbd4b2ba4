//! The `nernc` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use nernc::format::{Limits, read_container};
use nernc::{Error, Result};

#[derive(Parser)]
#[command(
    name = "nernc",
    version,
    about = "Learned compression of CNN checkpoints (.nern)"
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
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Test,
    Train,
}

#[derive(Subcommand)]
enum Command {
    /// Train a predictor on a checkpoint's convolution weights and write a .nern file.
    #[cfg(feature = "train")]
    Encode {
        /// Source checkpoint (.safetensors, PyTorch state_dict layout).
        input: PathBuf,
        /// Output .nern file (written atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// Hidden width of the predictor MLP (size knob: 180 ~ 53 % of a ResNet-20's conv params).
        #[arg(long, default_value_t = 180)]
        hidden: u32,
        /// Training steps per round.
        #[arg(long, default_value_t = 20_000)]
        steps: usize,
        /// Progressive reconstruction rounds (round r+1 reconstructs round r's decoded weights).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Kernels per training step.
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        /// Kernel ordering before training.
        #[arg(long, value_enum, default_value_t = PermutationArg::InFilter)]
        permutation: PermutationArg,
        /// Seed for initialisation and sampling (same seed and device: same file).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training device; `cuda` needs a build with `--features cuda` and a GPU.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Peak learning rate (Adam, cosine decay to 1e-6).
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        /// Adam's first-moment decay (0.5 as the reference's Ranger; measured better than 0.9).
        #[arg(long, default_value_t = 0.5)]
        beta1: f32,
        /// Positional-encoding levels L per coordinate (predictor input width 6 L; the first
        /// layer holds 6 L x hidden weights).
        #[arg(long, default_value_t = 40)]
        pe_levels: u32,
        /// Positional-encoding base b (level l uses frequency pi * b^l).
        #[arg(long, default_value_t = 0.76)]
        pe_base: f64,
        /// Phase 2: distillation steps after reconstruction (0: reconstruction only).
        #[arg(long, default_value_t = 0)]
        distill_steps: usize,
        /// Dataset directory for held-out selection and phase 2, or `noise` for data-free phase 2.
        #[arg(long)]
        data: Option<String>,
        /// Dataset format of --data.
        #[arg(long, default_value = "fashion-mnist")]
        dataset: String,
        /// Phase-2 teacher (default: the source checkpoint); any network with the same classes.
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Distillation temperature.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Weight of the reconstruction RMSE added to the distillation loss.
        #[arg(long, default_value_t = 0.0)]
        recon_weight: f64,
        /// Phase-2 learning rate (Adam, cosine decay) [default: 5e-5 on data, 1e-5 on noise].
        /// Small: Adam moves every weight by about this much per step, and the phase-1 fit is
        /// fragile (measured: 3e-4 destroyed it; on noise 5e-5 lost 8 points, 1e-5 gained 2.5).
        #[arg(long)]
        distill_lr: Option<f64>,
        /// Phase-2 images per step.
        #[arg(long, default_value_t = 128)]
        distill_batch: usize,
        /// Phase-2 steps between held-out evaluations (default: a tenth of the steps).
        #[arg(long)]
        eval_every: Option<usize>,
        /// Phase 2 on real data: translate each image by up to this many pixels per axis
        /// (zero fill), as in training (the fixtures were trained with 2).
        #[arg(long, default_value_t = 0)]
        augment_shift: usize,
        /// Phase 2 on real data: mirror images left-right with probability 1/2.
        #[arg(long)]
        augment_flip: bool,
        /// Training images held out for selection (never the test split).
        #[arg(long, default_value_t = 5000)]
        held_out: usize,
        /// Storage dtype of the predictor's weights. f16 (default) halves the f32 bytes and cost
        /// no measurable accuracy on the fixtures; int8 quarters them (use with phase 2, which
        /// then trains through the rounding).
        #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
        predictor_dtype: DtypeArg,
        /// Skip phase 1: start phase 2 from this .nern of the same checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Also measure the result's test accuracy and record it (not used for any choice).
        #[arg(long)]
        test_eval: bool,
        /// Print a machine-readable summary (JSON) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Regenerate the full checkpoint (.safetensors) from a .nern file.
    Decode {
        /// The .nern file to decode.
        input: PathBuf,
        /// Output .safetensors file (written atomically).
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
    },
    /// Top-1 accuracy of a checkpoint (.safetensors or .nern) on a dataset.
    #[cfg(feature = "train")]
    Eval {
        /// The model to evaluate (.safetensors or .nern).
        model: PathBuf,
        /// Dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value = "fashion-mnist")]
        dataset: String,
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
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
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        #[arg(long)]
        json: bool,
    },
    /// Show what a .nern file holds: sections, sizes, predictor, layers, provenance.
    Inspect {
        /// The .nern file to describe.
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// A dataset's normalisation with optional `--mean/--std` overrides.
#[cfg(feature = "train")]
fn normalization(
    preset: nernc::data::Normalization,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
) -> Result<nernc::data::Normalization> {
    let norm = nernc::data::Normalization {
        mean: mean.unwrap_or(preset.mean),
        std: std.unwrap_or(preset.std),
    };
    if norm.mean.is_empty()
        || norm.std.is_empty()
        || norm.std.iter().any(|s| *s <= 0.0 || !s.is_finite())
    {
        return Err(Error::InvalidArgument(
            "--mean/--std: give values, std > 0".into(),
        ));
    }
    Ok(norm)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        #[cfg(feature = "train")]
        Command::Encode {
            input,
            output,
            hidden,
            steps,
            rounds,
            batch,
            permutation,
            seed,
            device,
            lr,
            beta1,
            pe_levels,
            pe_base,
            distill_steps,
            data,
            dataset,
            teacher,
            temperature,
            recon_weight,
            distill_lr,
            distill_batch,
            eval_every,
            augment_shift,
            augment_flip,
            held_out,
            test_eval,
            resume,
            predictor_dtype,
            json,
        } => {
            use nernc::encode::{BarProgress, DeviceKind, EncodeOptions, encode};
            use nernc::encode::{DistillOptions, DistillSource};
            use nernc::permute::PermutationKind;
            nernc::io::check_output_path(&output)?;
            let noise = data.as_deref() == Some("noise");
            let opts = EncodeOptions {
                hidden,
                steps,
                rounds,
                batch,
                permutation: match permutation {
                    PermutationArg::InFilter => PermutationKind::InFilter,
                    PermutationArg::CrossFilter => PermutationKind::CrossFilter,
                    PermutationArg::None => PermutationKind::None,
                },
                seed,
                device: match device {
                    DeviceArg::Cpu => DeviceKind::Cpu,
                    DeviceArg::Cuda => DeviceKind::Cuda,
                },
                lr,
                beta1,
                pe_levels,
                pe_base,
                // With `--data noise` nothing trains or selects on data; `--test-eval` may still
                // measure the result on the dataset's default location.
                data_dir: match data.as_deref() {
                    Some("noise") if test_eval => {
                        nernc::data::DatasetKind::parse(&dataset)?.default_dir()
                    }
                    Some("noise") | None => None,
                    Some(d) => Some(PathBuf::from(d)),
                },
                dataset: nernc::data::DatasetKind::parse(&dataset)?,
                held_out: if noise { 0 } else { held_out },
                test_eval,
                resume,
                predictor_dtype: match predictor_dtype {
                    DtypeArg::F32 => nernc::predictor::WeightDtype::F32,
                    DtypeArg::F16 => nernc::predictor::WeightDtype::F16,
                    DtypeArg::Bf16 => nernc::predictor::WeightDtype::Bf16,
                    DtypeArg::Int8 => nernc::predictor::WeightDtype::Int8,
                },
                distill: (distill_steps > 0).then(|| DistillOptions {
                    steps: distill_steps,
                    source: if noise {
                        DistillSource::Noise
                    } else {
                        DistillSource::Data
                    },
                    teacher,
                    temperature,
                    recon_weight,
                    lr: distill_lr.unwrap_or(if noise { 1e-5 } else { 5e-5 }),
                    batch: distill_batch,
                    eval_every,
                    augment: nernc::data::Augment {
                        shift: augment_shift,
                        flip: augment_flip,
                    },
                }),
                ..EncodeOptions::default()
            };
            if test_eval && opts.data_dir.is_none() {
                return Err(Error::InvalidArgument(
                    "--test-eval needs --data DIR (or the dataset at its default location)".into(),
                ));
            }
            let (bytes, report) = encode(&input, &opts, &BarProgress::default())?;
            nernc::io::write_atomic(&output, &bytes)?;
            if json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "{} -> {}: {} bytes ({:.2} % of {} bytes), {} conv tensors predicted, {:.1} s on {}",
                    input.display(),
                    output.display(),
                    report.nern_bytes,
                    100.0 * report.nern_bytes as f64 / report.source_bytes as f64,
                    report.source_bytes,
                    report.predicted_tensors,
                    report.total_seconds,
                    report.device
                );
                for r in &report.rounds {
                    eprintln!(
                        "  round {}: conv RMSE vs target {:.4e}, vs original {:.4e} ({:.1} s)",
                        r.round, r.rmse_vs_target, r.rmse_vs_original, r.train_seconds
                    );
                }
            }
        }
        Command::Decode {
            input,
            output,
            threads,
            max_output_bytes,
            json,
        } => {
            let limits = Limits {
                max_output_bytes,
                ..Limits::default()
            };
            let threads = threads.unwrap_or_else(nernc::decode::default_threads);
            let summary = nernc::decode::decode_file(&input, &output, threads, &limits)?;
            if json {
                print_json(&summary)?;
            } else {
                eprintln!(
                    "{} -> {}: {} tensors ({} predicted), {} bytes of tensor data, {:.3} s",
                    input.display(),
                    output.display(),
                    summary.tensors,
                    summary.predicted_tensors,
                    summary.output_bytes,
                    summary.seconds
                );
            }
        }
        #[cfg(feature = "train")]
        Command::Eval {
            model,
            data,
            dataset,
            split,
            limit,
            reference,
            mean,
            std,
            fgsm,
            device,
            json,
        } => {
            use nernc::data::{DatasetKind, Split, load};
            let kind = DatasetKind::parse(&dataset)?;
            let dir = data.or_else(|| kind.default_dir()).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no --data directory given and no default location for {dataset}"
                ))
            })?;
            let (split, split_name) = match split {
                SplitArg::Test => (Split::Test, "test"),
                SplitArg::Train => (Split::Train, "train"),
            };
            let data = load(&dir, kind, split, limit)?;
            let norm = normalization(kind.normalization(), mean, std)?;
            let opts = nernc::eval::EvalOptions {
                norm,
                fgsm,
                device: match device {
                    DeviceArg::Cpu => nernc::encode::DeviceKind::Cpu,
                    DeviceArg::Cuda => nernc::encode::DeviceKind::Cuda,
                },
            };
            let r = nernc::eval::evaluate(&model, reference.as_deref(), &data, split_name, &opts)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{}: {:.2} % top-1 ({}/{} {} {} images){}",
                    r.model.path.display(),
                    r.model.accuracy,
                    r.model.correct,
                    r.images,
                    r.dataset,
                    r.split,
                    r.model
                        .fgsm_accuracy
                        .map(|a| format!(", FGSM eps {}: {a:.2} %", fgsm.unwrap_or(0.0)))
                        .unwrap_or_default()
                );
                if let Some(rf) = &r.reference {
                    println!(
                        "{}: {:.2} % top-1{}",
                        rf.path.display(),
                        rf.accuracy,
                        rf.fgsm_accuracy
                            .map(|a| format!(", FGSM: {a:.2} %"))
                            .unwrap_or_default()
                    );
                    println!(
                        "difference {:+.2} points, predictions agree on {:.2} %",
                        r.difference.unwrap_or(0.0),
                        r.agreement.unwrap_or(0.0)
                    );
                }
            }
        }
        Command::Inspect { input, json } => {
            let file = nernc::checkpoint::MappedFile::open(&input)?;
            let limits = Limits::default();
            let container = read_container(file.bytes(), &limits)?;
            let report = nernc::inspect::inspect(&container, &limits)?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", nernc::inspect::render(&report));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
