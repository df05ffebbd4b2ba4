//! An opened data file, transparently gunzipped, with reads checked against what the file's
//! header declares (truncation, trailing bytes, corrupt gzip are `Error::Dataset` naming it).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;

use crate::error::{Error, Result};

pub(super) fn dataset_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// An opened data file, transparently gunzipped.
pub(super) struct DataFile {
    pub(super) path: PathBuf,
    reader: Box<dyn Read>,
    /// On-disk length for uncompressed files: lets sizes be checked before allocating.
    raw_len: Option<u64>,
}

impl DataFile {
    /// Opens `dir/stem`, or `dir/stem.gz` when only that exists. Gzip is detected by its magic
    /// bytes, so a mis-named file still reads.
    pub(super) fn open_idx(dir: &Path, stem: &str, what: &str) -> Result<DataFile> {
        let raw = dir.join(stem);
        let gz = dir.join(format!("{stem}.gz"));
        let path = if raw.is_file() {
            raw
        } else if gz.is_file() {
            gz
        } else {
            return Err(dataset_err(
                &raw,
                format!("missing: expected the IDX {what} file {stem} or {stem}.gz"),
            ));
        };
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut buf = BufReader::new(file);
        let gzipped = buf
            .fill_buf()
            .map_err(|e| Error::io(&path, e))?
            .starts_with(&[0x1f, 0x8b]);
        let (reader, raw_len): (Box<dyn Read>, _) = if gzipped {
            (Box::new(GzDecoder::new(buf)), None)
        } else {
            (Box::new(buf), Some(len))
        };
        Ok(DataFile {
            path,
            reader,
            raw_len,
        })
    }

    /// Decoder and truncation failures are bad data; anything else is an I/O error.
    fn err(&self, e: io::Error, what: &str) -> Error {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => dataset_err(
                &self.path,
                format!("truncated: file ends inside the {what}"),
            ),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                dataset_err(&self.path, format!("corrupt data in the {what}: {e}"))
            }
            _ => Error::io(&self.path, e),
        }
    }

    pub(super) fn read_u32s<const N: usize>(&mut self, what: &str) -> Result<[u32; N]> {
        let mut out = [0u32; N];
        for v in &mut out {
            let mut b = [0u8; 4];
            self.reader
                .read_exact(&mut b)
                .map_err(|e| self.err(e, what))?;
            *v = u32::from_be_bytes(b);
        }
        Ok(out)
    }

    /// Uncompressed files must be exactly as long as the header declares.
    pub(super) fn check_len(&self, declared: u64) -> Result<()> {
        match self.raw_len {
            Some(len) if len != declared => Err(dataset_err(
                &self.path,
                format!("file is {len} bytes but its header declares {declared}"),
            )),
            _ => Ok(()),
        }
    }

    /// Reads exactly `n` bytes. The buffer grows with the data actually decoded, so a lying
    /// gzip header cannot make it allocate more than the stream really holds.
    pub(super) fn read_vec(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        if self.raw_len.is_some() {
            // Length already checked against the header: the bytes are really there.
            v.try_reserve_exact(n)
                .map_err(|_| dataset_err(&self.path, format!("cannot allocate {n} bytes")))?;
        }
        (&mut self.reader)
            .take(n as u64)
            .read_to_end(&mut v)
            .map_err(|e| self.err(e, what))?;
        if v.len() != n {
            return Err(self.err(io::ErrorKind::UnexpectedEof.into(), what));
        }
        Ok(v)
    }

    /// Reads and drops `n` bytes (images beyond `limit`), still validating the stream.
    pub(super) fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        let copied = io::copy(&mut (&mut self.reader).take(n), &mut io::sink())
            .map_err(|e| self.err(e, what))?;
        if copied != n {
            return Err(self.err(io::ErrorKind::UnexpectedEof.into(), what));
        }
        Ok(())
    }

    /// The data must end where the header says; reading to the end also makes the gzip decoder
    /// verify its CRC.
    pub(super) fn expect_end(&mut self) -> Result<()> {
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => Ok(()),
            Ok(_) => Err(dataset_err(
                &self.path,
                "trailing bytes after the data the header declares",
            )),
            Err(e) => Err(self.err(e, "gzip trailer")),
        }
    }
}
