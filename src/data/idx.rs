//! MNIST and Fashion-MNIST in IDX format (raw or gzip, as Debian ships them).

use std::path::Path;

use super::file::{DataFile, dataset_err};
use super::{DatasetKind, Split};
use crate::error::{Error, Result};

pub(super) const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
pub(super) const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

pub(super) fn load_idx(
    dir: &Path,
    kind: DatasetKind,
    split: Split,
    limit: Option<usize>,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    // Labels first: they are small, and their count bounds how much image data is expected.
    let mut lab = DataFile::open_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), "labels")?;
    let [magic, count] = lab.read_u32s::<2>("header")?;
    if magic != IDX_LABELS_MAGIC {
        return Err(dataset_err(
            &lab.path,
            format!(
                "not an IDX label file (magic {magic:#010x}, expected {IDX_LABELS_MAGIC:#010x})"
            ),
        ));
    }
    lab.check_len(8 + u64::from(count))?;
    let raw_labels = lab.read_vec(count as usize, "labels")?;
    lab.expect_end()?;
    let classes = kind.classes();
    if let Some((i, l)) = raw_labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= classes)
    {
        return Err(dataset_err(
            &lab.path,
            format!("label {l} of image {i} is out of range for {classes} classes"),
        ));
    }

    let mut img = DataFile::open_idx(dir, &format!("{prefix}-images-idx3-ubyte"), "images")?;
    let [magic, n, rows, cols] = img.read_u32s::<4>("header")?;
    if magic != IDX_IMAGES_MAGIC {
        return Err(dataset_err(
            &img.path,
            format!(
                "not an IDX image file (magic {magic:#010x}, expected {IDX_IMAGES_MAGIC:#010x})"
            ),
        ));
    }
    if n != count {
        return Err(dataset_err(
            &img.path,
            format!(
                "holds {n} images but {} holds {count} labels",
                lab.path.display()
            ),
        ));
    }
    let [_, h, w] = kind.image_shape();
    if (rows as usize, cols as usize) != (h, w) {
        return Err(dataset_err(
            &img.path,
            format!("images are {rows}x{cols}, {} expects {h}x{w}", kind.name()),
        ));
    }
    let size = (h * w) as u64;
    let total = u64::from(n)
        .checked_mul(size)
        .ok_or(Error::Overflow("IDX image bytes"))?;
    img.check_len(16 + total)?;
    let keep = limit.map_or(count as usize, |l| l.min(count as usize));
    let kept_bytes = keep as u64 * size;
    let kept_len = usize::try_from(kept_bytes).map_err(|_| Error::Overflow("IDX image bytes"))?;
    let images = img.read_vec(kept_len, "images")?;
    img.skip(total - kept_bytes, "images")?;
    img.expect_end()?;

    let labels = raw_labels
        .iter()
        .take(keep)
        .map(|&l| u32::from(l))
        .collect();
    Ok((images, labels))
}
