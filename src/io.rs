//! Files in and out: inputs are memory-mapped read-only; outputs are written to a temporary file
//! beside the target and renamed into place, so a failure (or a reader holding a memory map of
//! the old file) never sees a partial file.

use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// The directory an output will be created in; it must exist.
fn parent_dir(path: &Path) -> Result<&Path> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("output directory {} does not exist", parent.display()),
            ),
        ));
    }
    Ok(parent)
}

/// Checks early (before long work) that `path` can be created.
pub fn check_output_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "output is a directory"),
        ));
    }
    parent_dir(path).map(|_| ())
}

/// A temporary file in `path`'s directory, to be renamed or linked to `path`.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(path)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".nernc-").suffix(".tmp");
    // Temporary files are private (0600) by default; the output is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file, _| {
        file.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Creates a temporary file beside `path`, lets `fill` write it (through the open file or its
/// path), syncs, then renames it to `path`. On any error the temporary file is removed.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File, &Path) -> Result<()>,
) -> Result<()> {
    check_output_path(path)?;
    let mut tmp = temp_beside(path)?;
    let tmp_path = tmp.path().to_path_buf();
    fill(tmp.as_file_mut(), &tmp_path)?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` only if nothing is there: the synced temporary file is linked to
/// its name without replacing, so of two writers of the same path exactly one publishes.
/// `Ok(false)` when the path already existed.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    check_output_path(path)?;
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(path, e))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e.error)),
    }
}

/// An input (a source checkpoint or a `.nern`): a local file mapped read-only into memory, or
/// an object-store URI ([`crate::store::Location`]) read whole.
pub struct MappedFile {
    /// The path or URI as given.
    pub path: PathBuf,
    content: Content,
}

enum Content {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl MappedFile {
    /// Opens `path`; a path of the form `scheme://...` is a URI (`file://`, `s3://`, `gs://`,
    /// `az://`).
    pub fn open(path: &Path) -> Result<Self> {
        let content = match crate::store::Location::from_arg(path)? {
            crate::store::Location::Local(local) => {
                let file = std::fs::File::open(&local).map_err(|e| Error::io(path, e))?;
                // SAFETY: the map is read-only; nernc never writes the input and writes outputs
                // by rename, so a concurrent writer of the same path would have to be another
                // program.
                Content::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
            }
            #[allow(unreachable_patterns)]
            remote => Content::Read(remote.read()?),
        };
        Ok(MappedFile {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.content {
            Content::Mapped(m) => m,
            Content::Read(v) => v,
        }
    }
}

/// SHA-256 of `bytes` as lowercase hex (what `sha256sum` prints and registries key on).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
