//! nernc: learned compression of CNN checkpoints (NeRN with decoupled training) and the `.nern`
//! container.
//!
//! - [`format`]: the container (spec/nern-format.md), framework-free.
//! - [`decode`]: regenerates weights from a container, framework-free and deterministic.
//! - `encode` (feature `train`): trains the predictor with burn.

pub mod arch;
pub mod checkpoint;
#[cfg(feature = "train")]
pub mod data;
pub mod decode;
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
pub mod rng;

pub use error::{Error, Result};
