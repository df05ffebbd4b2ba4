//! The encoder: trains a predictor on a checkpoint's conv weights and writes a `.nern`.
//!
//! Operations: [`encode`] (the whole pipeline) and [`training_throughput`] (the benchmark's
//! phase-1 speed). The rooms, in the order an encode goes through them:
//! - `options`: what can be asked, defaults, checks, the command line's policy;
//! - `source`: the input checkpoint, parsed once;
//! - `selection`: held-out training images and the accuracy of a predictor on them;
//! - `budget`: what a predictor costs in the file, and the shapes that fill a size budget;
//! - `clock`: what the rest of an encode costs in time, and the step counts a `--time-limit`
//!   leaves;
//! - `search`: permutation tables;
//! - `kernels`, `mlp`, `schedule`: the training data, the predictor as a burn module, the
//!   learning-rate schedule, shared by both phases;
//! - `phase1`: reconstruction rounds; `phase2`: distillation; `tune`: the BN/FC corrections
//!   phase 2 trains with `--passthrough tuned`;
//! - `assemble`: the container and its provenance; `report`: what the caller is told;
//! - `pipeline`: runs them in order; `progress`: the progress bar.

mod assemble;
mod budget;
pub mod clock;
pub mod coded;
pub mod gptq;
mod kernels;
mod mlp;
mod options;
mod phase1;
mod phase2;
mod pipeline;
mod progress;
mod report;
mod schedule;
pub mod search;
mod selection;
mod source;
mod tune;

use std::path::Path;

pub use budget::META_RESERVE;
pub use options::{
    ChannelOrder, CodeRule, CodedOptions, DEFAULT_CODE_BITS, DEFAULT_CODE_LR,
    DEFAULT_CODED_DISTILL_STEPS, DEFAULT_DISTILL_STEPS, DEFAULT_NOISE_DISTILL_STEPS,
    DEFAULT_TUNE_LR, DataArg, DeviceKind, DistillOptions, DistillSource, EncodeOptions, MaxDrop,
    Pinned, Rounding, SMALL_SET_PE_LEVELS, SizeTarget, default_hidden, default_params_per_weight,
    default_pe_levels, default_phase1_steps, default_predictor_dtype,
};
pub use progress::{BarProgress, NoProgress, Progress};
pub use report::{
    AccuracyReport, BaselineReport, CandidateReport, DistillReport, EncodeReport, GoalReport,
    RoundReport,
};

use crate::device::{keep_freed_memory, run_on};
use crate::error::Result;

/// Encodes the checkpoint at `input`; returns the `.nern` bytes and a report.
pub fn encode(
    input: &Path,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, EncodeReport)> {
    opts.check()?;
    encode_file(&crate::io::MappedFile::open(input)?, opts, progress)
}

/// [`encode`] of a source already opened (`batch` has read it to hash it; an object is not
/// fetched twice).
pub fn encode_file(
    input: &crate::io::MappedFile,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, EncodeReport)> {
    opts.check()?;
    keep_freed_memory();
    run_on(
        opts.device,
        pipeline::EncodeJob {
            input,
            opts,
            progress,
        },
    )
}

/// Phase-1 training throughput in kernels per second (forward + backward + optimiser step),
/// measured on `opts.steps` steps after a short warm-up, for the checkpoint at `input`
/// (identity permutation).
pub fn training_throughput(input: &Path, opts: &EncodeOptions) -> Result<f64> {
    opts.check()?;
    keep_freed_memory();
    run_on(opts.device, pipeline::ThroughputJob { input, opts })
}
