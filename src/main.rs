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
        #[arg(long, default_value_t = 5e-3)]
        lr: f64,
        /// Print a machine-readable summary (JSON) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Regenerate the full checkpoint (.safetensors) from a .nern file.
    Decode {
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
        #[arg(long)]
        json: bool,
    },
    /// Show what a .nern file holds: sections, sizes, predictor, layers, provenance.
    Inspect {
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
            json,
        } => {
            use nernc::encode::{BarProgress, DeviceKind, EncodeOptions, encode};
            use nernc::permute::PermutationKind;
            nernc::io::check_output_path(&output)?;
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
                ..EncodeOptions::default()
            };
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
