//! Where inputs come from and outputs go: a local path, a `file://` URI, or (with the `store`
//! feature) an object in S3, Google Cloud Storage or Azure Blob Storage (`s3://`, `gs://`,
//! `az://`). Local files keep their memory maps and atomic renames ([`crate::io`]); objects are
//! read whole or by range and written with one PUT, which object stores make atomic: a reader
//! sees the whole object or none.
//!
//! Credentials come from the standard environment variables only. Without any, a remote
//! location fails to parse with [`Error::Store`] of kind [`StoreFailure::Credentials`] before a
//! single request is made: nernc never falls back to a cloud metadata endpoint.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, StoreFailure};

#[cfg(feature = "store")]
mod object;
#[cfg(feature = "store")]
pub use object::{ObjectLocation, credentials_hint};

/// A place to read or write one file.
#[derive(Clone, Debug)]
pub enum Location {
    Local(PathBuf),
    #[cfg(feature = "store")]
    Object(ObjectLocation),
}

/// URI schemes of object stores (recognised even in a build without the `store` feature, so the
/// error can say what is missing).
pub const OBJECT_SCHEMES: [&str; 3] = ["s3", "gs", "az"];

impl Location {
    /// A plain path, `file://PATH`, or `s3://BUCKET/KEY`, `gs://BUCKET/KEY`, `az://CONTAINER/KEY`.
    pub fn parse(text: &str) -> Result<Self> {
        if !text.contains("://") {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::parse_with_env(text, &env)
    }

    /// [`Location::parse`] with the environment given as `(name, value)` pairs: the store
    /// client is configured from these, never from the process's environment.
    pub fn parse_with_env(text: &str, env: &[(String, String)]) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        let Some((scheme, _)) = text.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !OBJECT_SCHEMES.contains(&scheme.as_str()) {
            return Err(Error::Store {
                uri: text.into(),
                kind: StoreFailure::Config,
                detail: format!(
                    "unsupported URI scheme {scheme}:// (nernc reads local paths, file://, s3://, gs:// and az://)"
                ),
            });
        }
        #[cfg(feature = "store")]
        {
            ObjectLocation::parse(text, &scheme, env).map(Location::Object)
        }
        #[cfg(not(feature = "store"))]
        {
            let _ = env;
            Err(Error::Store {
                uri: text.into(),
                kind: StoreFailure::Config,
                detail: "this nernc was built without object storage (cargo feature `store`)"
                    .into(),
            })
        }
    }

    /// A location from a command-line path (clap hands paths over as `PathBuf`).
    pub fn from_arg(path: &Path) -> Result<Self> {
        match path.to_str() {
            Some(text) => Self::parse(text),
            None => Ok(Location::Local(path.to_path_buf())),
        }
    }

    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            #[cfg(feature = "store")]
            Location::Object(_) => None,
        }
    }

    /// The location `name` inside this one, taken as a directory (a key prefix for objects).
    pub fn join(&self, name: &str) -> Result<Self> {
        match self {
            Location::Local(p) => Ok(Location::Local(p.join(name))),
            #[cfg(feature = "store")]
            Location::Object(o) => o.join(name).map(Location::Object),
        }
    }

    /// The last path segment (what a downloaded copy is named after).
    pub fn file_name(&self) -> Option<String> {
        match self {
            Location::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            #[cfg(feature = "store")]
            Location::Object(o) => o.file_name(),
        }
    }

    /// The whole content in memory (what an object is read as; [`crate::io::MappedFile`] maps
    /// local files instead).
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            Location::Local(p) => std::fs::read(p).map_err(|e| Error::io(p, e)),
            #[cfg(feature = "store")]
            Location::Object(o) => o.get(),
        }
    }

    /// Whether something exists here.
    pub fn exists(&self) -> Result<bool> {
        match self {
            Location::Local(p) => Ok(p.exists()),
            #[cfg(feature = "store")]
            Location::Object(o) => o.exists(),
        }
    }

    /// The media type a store recorded for this object (`None` for local files).
    pub fn content_type(&self) -> Result<Option<String>> {
        match self {
            Location::Local(_) => Ok(None),
            #[cfg(feature = "store")]
            Location::Object(o) => o.content_type(),
        }
    }

    /// Checks before long work that an output can be written here: a local parent directory
    /// exists; an object store answers for the bucket with these credentials.
    pub fn check_output(&self) -> Result<()> {
        match self {
            Location::Local(p) => crate::io::check_output_path(p),
            #[cfg(feature = "store")]
            Location::Object(o) => o.exists().map(|_| ()),
        }
    }

    /// Writes `bytes` here, replacing what is there; atomic (temporary file and rename, or one
    /// PUT).
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        match self {
            Location::Local(p) => crate::io::write_atomic(p, bytes),
            #[cfg(feature = "store")]
            Location::Object(o) => o.put(bytes, false).map(|_| ()),
        }
    }

    /// Writes `bytes` here only if nothing is there (create-if-absent, atomic): `Ok(true)` when
    /// this call created it, `Ok(false)` when something already existed (and is left alone).
    pub fn create_new(&self, bytes: &[u8]) -> Result<bool> {
        match self {
            Location::Local(p) => crate::io::write_new(p, bytes),
            #[cfg(feature = "store")]
            Location::Object(o) => o.put(bytes, true),
        }
    }

    /// The size in bytes and a reader of byte ranges `(start, len)`: what `inspect --provenance`
    /// needs (positioned reads of a local file, ranged GETs of an object).
    pub fn ranged(&self) -> Result<RangedReader> {
        match self {
            Location::Local(p) => {
                let file = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
                let len = file.metadata().map_err(|e| Error::io(p, e))?.len();
                Ok(RangedReader {
                    len,
                    inner: Ranged::File(p.clone(), file),
                })
            }
            #[cfg(feature = "store")]
            Location::Object(o) => Ok(RangedReader {
                len: o.len()?,
                inner: Ranged::Object(o.clone()),
            }),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            #[cfg(feature = "store")]
            Location::Object(o) => write!(f, "{}", o.uri()),
        }
    }
}

enum Ranged {
    File(PathBuf, std::fs::File),
    #[cfg(feature = "store")]
    Object(ObjectLocation),
}

/// Byte ranges of one file or object.
pub struct RangedReader {
    pub len: u64,
    inner: Ranged,
}

impl RangedReader {
    pub fn read(&mut self, start: u64, n: u64) -> Result<Vec<u8>> {
        match &mut self.inner {
            Ranged::File(path, f) => {
                use std::io::{Read, Seek, SeekFrom};
                let mut buf = vec![0u8; n as usize];
                f.seek(SeekFrom::Start(start))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(|e| Error::io(&*path, e))?;
                Ok(buf)
            }
            #[cfg(feature = "store")]
            Ranged::Object(o) => o.get_range(start, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_and_file_uris_are_local() {
        let none = [];
        for (text, path) in [
            ("model.nern", "model.nern"),
            ("/a/b.nern", "/a/b.nern"),
            ("file:///a/b.nern", "/a/b.nern"),
        ] {
            let l = Location::parse_with_env(text, &none).unwrap();
            assert_eq!(l.local_path(), Some(Path::new(path)), "{text}");
        }
        let err = Location::parse_with_env("ftp://host/x", &none).unwrap_err();
        assert!(
            err.to_string().contains("unsupported URI scheme ftp://"),
            "{err}"
        );
    }

    #[test]
    fn object_uris_need_credentials_from_the_environment() {
        let none = [];
        for uri in [
            "s3://bucket/k.nern",
            "gs://bucket/k.nern",
            "az://container/k.nern",
        ] {
            let err = Location::parse_with_env(uri, &none).unwrap_err();
            match &err {
                Error::Store { kind, .. } if cfg!(feature = "store") => {
                    assert_eq!(*kind, StoreFailure::Credentials, "{uri}: {err}")
                }
                Error::Store { kind, .. } => assert_eq!(*kind, StoreFailure::Config),
                other => panic!("{uri}: {other}"),
            }
            assert!(err.to_string().contains(uri), "{err}");
        }
    }
}
