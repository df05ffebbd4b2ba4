//! nernc: learned compression of CNN checkpoints (NeRN with decoupled training) and the `.nern`
//! container.
//!
//! The core (always built, no ML framework): [`format`] (the container, spec/nern-format.md),
//! [`decode`] (regenerates the weights, deterministic), [`inspect`], [`checkpoint`] (safetensors
//! in and out), [`permute`] (permutation tables), [`predictor`], [`io`], [`rng`], [`error`],
//! [`baseline`] (plain per-channel quantisation, the comparison a user needs).
//!
//! With the `train` feature (burn): `encode` (the encoder), `eval`, and what they need: `arch`
//! (ResNet recognition), `network` (the forward pass), `conv` (CPU convolution for training), `dense`
//! (the predictor's CPU dense layers),
//! `data` (datasets), `device` (backends), `reorder` (function-preserving channel orders).

#[cfg(feature = "train")]
pub mod arch;
pub mod baseline;
#[cfg(feature = "train")]
pub mod batch;
pub mod checkpoint;
#[cfg(feature = "train")]
pub mod conv;
#[cfg(feature = "train")]
pub mod data;
pub mod decode;
#[cfg(feature = "train")]
pub mod dense;
#[cfg(feature = "train")]
pub mod device;
#[cfg(feature = "train")]
pub mod encode;
pub mod error;
#[cfg(feature = "train")]
pub mod eval;
pub mod format;
pub mod inspect;
pub mod io;
#[cfg(feature = "train")]
pub mod network;
pub mod permute;
pub mod predictor;
pub mod provenance;
#[cfg(feature = "train")]
pub mod reorder;
pub mod rng;
pub mod store;

pub use error::{Error, Result, StoreFailure};
