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
    let dir = parent_dir(path)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".nernc-").suffix(".tmp");
    // Temporary files are private (0600) by default; the output is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    fill(tmp.as_file_mut(), &tmp_path)?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// An input file (a source checkpoint or a `.nern`) mapped read-only into memory.
pub struct MappedFile {
    pub path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; nernc never writes the input and writes outputs by rename,
        // so a concurrent writer of the same path would have to be another program.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
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
