//! The one error type of nernc. Every failure on input data is a variant here, never a panic.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing, encoding or decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An object store (or a URI naming one) failed; `kind` says whether a retry can help.
    #[error("{uri}: {detail}")]
    Store {
        uri: String,
        kind: StoreFailure,
        detail: String,
    },

    // ---- container structure -------------------------------------------------------------
    #[error("not a .nern file (bad magic bytes)")]
    BadMagic,
    #[error(
        "unsupported .nern version {found_major}.{found_minor}: this nernc reads major version {supported_major}"
    )]
    UnsupportedVersion {
        found_major: u16,
        found_minor: u16,
        supported_major: u16,
    },
    #[error("file is truncated: {what} needs {needed} bytes, only {available} present")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("file length {actual} does not match the {declared} bytes the header declares")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("header or section table is corrupted (blake3 mismatch)")]
    HeaderHashMismatch,
    #[error("section {tag} is corrupted (blake3 mismatch)")]
    SectionHashMismatch { tag: String },
    #[error("section table: {0}")]
    SectionLayout(String),
    #[error("missing required section {0}")]
    MissingSection(&'static str),
    #[error(
        "section {tag} is marked required but this nernc does not know it (written by a newer encoder?)"
    )]
    UnknownRequiredSection { tag: String },
    #[error("section {section} is malformed: {detail}")]
    Malformed {
        section: &'static str,
        detail: String,
    },
    #[error("layer {layer}: permutation table is not a permutation")]
    InvalidPermutation { layer: String },
    #[error("unknown predictor weight dtype code {0}")]
    UnknownPredictorDtype(u8),
    #[error("unknown tensor dtype code {0}")]
    UnknownDtypeCode(u8),
    #[error("{what} = {value} exceeds the limit of {limit}{hint}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        limit: u64,
        hint: &'static str,
    },
    #[error("arithmetic overflow computing {0}")]
    Overflow(&'static str),

    // ---- checkpoints ------------------------------------------------------------------------
    #[error("{path}: not a valid safetensors file: {detail}")]
    Safetensors { path: PathBuf, detail: String },
    #[error(
        "{path}: no convolution weights to predict (no 4-D float tensor with a square odd kernel)"
    )]
    NoConvWeights { path: PathBuf },
    #[error("tensor {tensor}: dtype {dtype} is not supported here ({why})")]
    UnsupportedDtype {
        tensor: String,
        dtype: String,
        why: &'static str,
    },
    #[error("tensor {tensor} contains NaN or infinite values")]
    NonFinite { tensor: String },

    // ---- networks and data -------------------------------------------------------------
    #[error("{path}: {detail}")]
    Dataset { path: PathBuf, detail: String },
    #[error("unsupported architecture: {0}")]
    UnsupportedArchitecture(String),
    #[error("incompatible inputs: {0}")]
    Incompatible(String),

    // ---- usage ---------------------------------------------------------------------------------
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("device {device} is not available: {why}")]
    DeviceUnavailable { device: String, why: String },
    #[error("training failed: {0}")]
    Training(String),
    /// A size budget no setting fits (found before any training).
    #[error("size budget: {0}")]
    Budget(String),
    /// Stopped on request (SIGTERM/SIGINT in `batch`) at a training step; nothing written.
    #[error("interrupted before the encode finished; nothing written")]
    Cancelled,
    /// The trained result misses what was asked (`--max-drop`, `--target-size`); nothing written.
    #[error("goal not met: {0}")]
    GoalNotMet(String),
}

/// What kind of object-store failure an [`Error::Store`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// A malformed or unsupported URI, or a client configuration the store refuses.
    Config,
    /// No credentials in the environment (nothing was sent).
    Credentials,
    /// The store refused the credentials or the operation.
    Denied,
    NotFound,
    /// A create-if-absent write found the object there.
    AlreadyExists,
    /// The network or the store failed in a way a retry may fix.
    Transient,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(section: &'static str, detail: impl Into<String>) -> Self {
        Error::Malformed {
            section,
            detail: detail.into(),
        }
    }
}
