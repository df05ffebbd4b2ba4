//! CIFAR-10 and CIFAR-100, binary version (fixed-size records).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::file::dataset_err;
use super::{DatasetKind, Split};
use crate::error::{Error, Result};

pub(super) const CIFAR_PIXELS: usize = 3 * 32 * 32;

pub(super) fn load_cifar(
    dir: &Path,
    kind: DatasetKind,
    split: Split,
    limit: Option<usize>,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let (sub, label_bytes, files): (&str, usize, Vec<String>) = match (kind, split) {
        (DatasetKind::Cifar100, Split::Train) => ("cifar-100-binary", 2, vec!["train.bin".into()]),
        (DatasetKind::Cifar100, Split::Test) => ("cifar-100-binary", 2, vec!["test.bin".into()]),
        (_, Split::Train) => (
            "cifar-10-batches-bin",
            1,
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        ),
        (_, Split::Test) => ("cifar-10-batches-bin", 1, vec!["test_batch.bin".into()]),
    };
    // Accept both the extracted archive's parent and the folder holding the .bin files.
    let base = match files.first() {
        Some(f) if !dir.join(f).is_file() && dir.join(sub).is_dir() => dir.join(sub),
        _ => dir.to_path_buf(),
    };
    let record = label_bytes + CIFAR_PIXELS;

    // Check every file's presence and length before reading any of them.
    let mut plan = Vec::with_capacity(files.len());
    for f in &files {
        let path = base.join(f);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(dataset_err(
                    &path,
                    format!(
                        "missing: expected the {} binary file {f} (here or in {sub}/)",
                        kind.name()
                    ),
                ));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if len == 0 || len % record as u64 != 0 {
            return Err(dataset_err(
                &path,
                format!(
                    "length {len} is not a positive multiple of the {record}-byte {} record",
                    kind.name()
                ),
            ));
        }
        plan.push((path, (len / record as u64) as usize));
    }
    let total: usize = plan.iter().map(|(_, n)| n).sum();
    let keep = limit.map_or(total, |l| l.min(total));

    let classes = kind.classes();
    // Bounded by the files' real lengths, checked above.
    let mut images = Vec::with_capacity(keep * CIFAR_PIXELS);
    let mut labels = Vec::with_capacity(keep);
    let mut buf = vec![0u8; record];
    for (path, n) in plan {
        let want = n.min(keep - labels.len());
        if want == 0 {
            break;
        }
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::new(file);
        for i in 0..want {
            reader.read_exact(&mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    dataset_err(&path, format!("truncated inside record {i}"))
                }
                _ => Error::io(&path, e),
            })?;
            let (head, pixels) = buf.split_at(label_bytes);
            // CIFAR-100 records carry (coarse, fine); the fine label is the class.
            let (label, coarse_ok) = match *head {
                [l] => (l, true),
                [coarse, fine] => (fine, coarse < 20),
                _ => (u8::MAX, false),
            };
            if usize::from(label) >= classes || !coarse_ok {
                return Err(dataset_err(
                    &path,
                    format!("record {i}: label {head:?} is out of range for {classes} classes"),
                ));
            }
            images.extend_from_slice(pixels);
            labels.push(u32::from(label));
        }
    }
    Ok((images, labels))
}
