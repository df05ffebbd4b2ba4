//! Image datasets for evaluation and distillation: MNIST / Fashion-MNIST (IDX, raw or gzip) and
//! CIFAR-10 / CIFAR-100 (binary version). Images stay as raw bytes and are normalised per batch.
//!
//! Every file is validated against what its header (or record size) declares before it is
//! trusted: wrong magic, truncation, trailing bytes, corrupt gzip and out-of-range labels are all
//! [`Error::Dataset`] naming the file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Datasets nernc can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
}

impl DatasetKind {
    const ALL: [DatasetKind; 4] = [
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
    ];

    /// Parses `fashion-mnist`, `mnist`, `cifar10` or `cifar100`.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown dataset `{s}` (expected one of fashion-mnist, mnist, cifar10, cifar100)"
                ))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
        }
    }

    pub fn classes(self) -> usize {
        match self {
            DatasetKind::Cifar100 => 100,
            _ => 10,
        }
    }

    /// `[channels, height, width]`.
    pub fn image_shape(self) -> [usize; 3] {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => [1, 28, 28],
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => [3, 32, 32],
        }
    }

    /// The usual per-channel statistics of each training set.
    pub fn normalization(self) -> Normalization {
        let (mean, std): (&[f32], &[f32]) = match self {
            DatasetKind::FashionMnist => (&[0.2860], &[0.3530]),
            DatasetKind::Mnist => (&[0.1307], &[0.3081]),
            DatasetKind::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616]),
            DatasetKind::Cifar100 => (&[0.5071, 0.4865, 0.4409], &[0.2673, 0.2564, 0.2762]),
        };
        Normalization {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// Where Debian's dataset packages put the files (`dataset-fashion-mnist`), when present.
    pub fn default_dir(self) -> Option<PathBuf> {
        let dir = match self {
            DatasetKind::FashionMnist => "/usr/share/datasets/fashion-mnist",
            DatasetKind::Mnist => "/usr/share/datasets/mnist",
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => return None,
        };
        let dir = PathBuf::from(dir);
        dir.is_dir().then_some(dir)
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Per-channel mean and standard deviation on the `[0, 1]` pixel scale. Each vector holds one
/// entry per channel, or a single entry applied to every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Checks the statistics fit images with `channels` channels: lengths 1 or `channels`,
    /// finite means, finite positive standard deviations.
    pub fn validate(&self, channels: usize) -> Result<()> {
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(Error::InvalidArgument(format!(
                    "normalisation {what} has {} entries, expected 1 or {channels}",
                    v.len()
                )));
            }
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::InvalidArgument(
                "normalisation mean must be finite".into(),
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::InvalidArgument(
                "normalisation std must be finite and positive".into(),
            ));
        }
        Ok(())
    }

    /// `(mean, std)` for each of `channels` channels.
    ///
    /// # Panics
    /// If [`Normalization::validate`] fails: a caller bug, not bad input data.
    fn per_channel(&self, channels: usize) -> Vec<(f32, f32)> {
        if let Err(e) = self.validate(channels) {
            panic!("{e}");
        }
        let pick = |v: &[f32], c: usize| v.get(c).or(v.first()).copied().unwrap_or(0.0);
        (0..channels)
            .map(|c| (pick(&self.mean, c), pick(&self.std, c)))
            .collect()
    }
}

/// Random training-time augmentation of real images (phase 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Augment {
    /// Largest translation in pixels, each axis (0: none).
    pub shift: usize,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

impl Augment {
    pub fn is_none(&self) -> bool {
        self.shift == 0 && !self.flip
    }
}

/// Images kept as raw bytes (small), normalised on demand.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    /// `n * c * h * w` bytes, NCHW.
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    /// `[c, h, w]`.
    pub shape: [usize; 3],
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Normalised f32 batch of the given images, `(x/255 - mean[c]) / std[c]`, NCHW, plus their
    /// labels.
    ///
    /// # Panics
    /// If an index is `>= len()` or `norm` does not fit the channel count (caller bugs).
    pub fn batch(&self, indices: &[usize], norm: &Normalization) -> (Vec<f32>, Vec<u32>) {
        let [c, h, w] = self.shape;
        let plane = h * w;
        let size = c * plane;
        // One lookup table per channel: 256 divisions instead of one per pixel.
        let luts: Vec<[f32; 256]> = norm
            .per_channel(c)
            .into_iter()
            .map(|(m, s)| std::array::from_fn(|p| (p as f32 / 255.0 - m) / s))
            .collect();
        let mut x = Vec::with_capacity(indices.len() * size);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            let image = &self.images[i * size..(i + 1) * size];
            for (pixels, lut) in image.chunks(plane.max(1)).zip(&luts) {
                x.extend(pixels.iter().map(|&p| lut[usize::from(p)]));
            }
            y.push(self.labels[i]);
        }
        (x, y)
    }

    /// Like [`Dataset::batch`], each image randomly translated by up to `aug.shift` pixels in
    /// each direction (uncovered pixels are raw 0, as zero padding before normalisation) and,
    /// with `aug.flip`, mirrored left-right with probability 1/2. Draws come from `rng`.
    ///
    /// # Panics
    /// As [`Dataset::batch`].
    pub fn batch_augmented(
        &self,
        indices: &[usize],
        norm: &Normalization,
        aug: Augment,
        rng: &mut SplitMix64,
    ) -> (Vec<f32>, Vec<u32>) {
        let [c, h, w] = self.shape;
        let plane = h * w;
        let size = c * plane;
        let mut moved = Vec::with_capacity(indices.len() * size);
        let span = 2 * aug.shift as u64 + 1;
        for &i in indices {
            let image = &self.images[i * size..(i + 1) * size];
            let dy = rng.below(span) as isize - aug.shift as isize;
            let dx = rng.below(span) as isize - aug.shift as isize;
            let flip = aug.flip && rng.below(2) == 1;
            for ch in image.chunks(plane.max(1)) {
                for y in 0..h as isize {
                    for x in 0..w as isize {
                        let (sy, mut sx) = (y - dy, x - dx);
                        if flip {
                            sx = w as isize - 1 - sx;
                        }
                        let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                        moved.push(if inside {
                            ch[sy as usize * w + sx as usize]
                        } else {
                            0
                        });
                    }
                }
            }
        }
        let view = Dataset {
            images: moved,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            kind: self.kind,
            classes: self.classes,
        };
        let all: Vec<usize> = (0..indices.len()).collect();
        view.batch(&all, norm)
    }

    /// Deterministic split of the images for model selection: `(train_part, held_out)`, both
    /// sorted, disjoint, covering `0..len()`. `held_out` images (at most `len()`) are chosen by a
    /// partial Fisher-Yates shuffle driven by `seed`.
    pub fn holdout_split(&self, held_out: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let n = self.len();
        let k = held_out.min(n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = SplitMix64::new(seed);
        for i in 0..k {
            let j = i + rng.below((n - i) as u64) as usize;
            order.swap(i, j);
        }
        let mut train = order.split_off(k);
        order.sort_unstable();
        train.sort_unstable();
        (train, order)
    }
}

/// Loads one split from `dir`, keeping the first `limit` images when given. IDX files are still
/// read to the end so a corrupt or truncated file is never half-accepted.
pub fn load(dir: &Path, kind: DatasetKind, split: Split, limit: Option<usize>) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Dataset {
            path: dir.to_path_buf(),
            detail: format!("{} data directory does not exist", kind.name()),
        });
    }
    let (images, labels) = match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => load_idx(dir, kind, split, limit)?,
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => load_cifar(dir, kind, split, limit)?,
    };
    Ok(Dataset {
        kind,
        images,
        labels,
        shape: kind.image_shape(),
        classes: kind.classes(),
    })
}

/// Uniform noise images for data-free distillation: per channel, uniform over the range that
/// normalised real pixels span, `[(0 - mean) / std, (1 - mean) / std)`. NCHW, seeded.
///
/// # Panics
/// If `norm` does not fit `shape[0]` channels (a caller bug).
pub fn noise_batch(n: usize, shape: [usize; 3], norm: &Normalization, seed: u64) -> Vec<f32> {
    let [c, h, w] = shape;
    let ranges: Vec<(f32, f32)> = norm
        .per_channel(c)
        .into_iter()
        .map(|(m, s)| (-m / s, 1.0 / s))
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n * c * h * w);
    for _ in 0..n {
        for &(lo, width) in &ranges {
            out.extend((0..h * w).map(|_| lo + width * rng.next_f32()));
        }
    }
    out
}

// ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------

const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

fn dataset_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// An opened data file, transparently gunzipped.
struct Source {
    path: PathBuf,
    reader: Box<dyn Read>,
    /// On-disk length for uncompressed files: lets sizes be checked before allocating.
    raw_len: Option<u64>,
}

impl Source {
    /// Opens `dir/stem`, or `dir/stem.gz` when only that exists. Gzip is detected by its magic
    /// bytes, so a mis-named file still reads.
    fn open_idx(dir: &Path, stem: &str, what: &str) -> Result<Source> {
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
        Ok(Source {
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

    fn read_u32s<const N: usize>(&mut self, what: &str) -> Result<[u32; N]> {
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
    fn check_len(&self, declared: u64) -> Result<()> {
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
    fn read_vec(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
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
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        let copied = io::copy(&mut (&mut self.reader).take(n), &mut io::sink())
            .map_err(|e| self.err(e, what))?;
        if copied != n {
            return Err(self.err(io::ErrorKind::UnexpectedEof.into(), what));
        }
        Ok(())
    }

    /// The data must end where the header says; reading to the end also makes the gzip decoder
    /// verify its CRC.
    fn expect_end(&mut self) -> Result<()> {
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

fn load_idx(
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
    let mut lab = Source::open_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), "labels")?;
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

    let mut img = Source::open_idx(dir, &format!("{prefix}-images-idx3-ubyte"), "images")?;
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

// ---- CIFAR binary ----------------------------------------------------------------------------

const CIFAR_PIXELS: usize = 3 * 32 * 32;

fn load_cifar(
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

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IDX_IMAGES_MAGIC, n, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(pixels);
        v
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
        v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        v.extend_from_slice(labels);
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Three 28x28 images: image i has pixel p = (i * 7 + p) % 256.
    fn mnist_pixels(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| (0..784).map(move |p| ((i * 7 + p) % 256) as u8))
            .collect()
    }

    /// Writes a test split; `gz` picks the compressed file names.
    fn write_mnist(dir: &Path, images: &[u8], labels: &[u8], gz: bool) {
        let ext = if gz { ".gz" } else { "" };
        let f = |d: &[u8]| if gz { gzip(d) } else { d.to_vec() };
        std::fs::write(dir.join(format!("t10k-images-idx3-ubyte{ext}")), f(images)).unwrap();
        std::fs::write(dir.join(format!("t10k-labels-idx1-ubyte{ext}")), f(labels)).unwrap();
    }

    fn expect_dataset_err(r: Result<Dataset>, file: &str) -> String {
        match r {
            Err(e @ Error::Dataset { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(file), "message `{msg}` does not name {file}");
                msg
            }
            Err(e) => panic!("expected Error::Dataset, got {e:?}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn real_fashion_mnist() {
        let Some(dir) = DatasetKind::FashionMnist.default_dir() else {
            println!("skipped: no /usr/share/datasets/fashion-mnist");
            return;
        };
        let test = load(&dir, DatasetKind::FashionMnist, Split::Test, None).unwrap();
        assert_eq!(test.len(), 10_000);
        assert_eq!(test.shape, [1, 28, 28]);
        assert_eq!(test.images.len(), 10_000 * 784);
        assert_eq!(
            test.labels[..16],
            [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1]
        );
        let train = load(&dir, DatasetKind::FashionMnist, Split::Train, None).unwrap();
        assert_eq!(train.len(), 60_000);
        let few = load(&dir, DatasetKind::FashionMnist, Split::Test, Some(16)).unwrap();
        assert_eq!(few.labels, test.labels[..16]);
        assert_eq!(few.images, test.images[..16 * 784]);
    }

    #[test]
    fn idx_raw_and_gzip_round_trip() {
        let pixels = mnist_pixels(3);
        let images = idx_images(3, 28, 28, &pixels);
        let labels = idx_labels(&[4, 0, 9]);
        for gz in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            write_mnist(tmp.path(), &images, &labels, gz);
            let d = load(tmp.path(), DatasetKind::Mnist, Split::Test, None).unwrap();
            assert_eq!(d.labels, [4, 0, 9]);
            assert_eq!(d.images, pixels);
            assert_eq!((d.classes, d.shape), (10, [1, 28, 28]));
            let d = load(tmp.path(), DatasetKind::Mnist, Split::Test, Some(2)).unwrap();
            assert_eq!(d.labels, [4, 0]);
            assert_eq!(d.images, pixels[..2 * 784]);
        }
    }

    #[test]
    fn gzip_detected_under_a_raw_name() {
        let tmp = tempfile::tempdir().unwrap();
        let pixels = mnist_pixels(1);
        let dir = tmp.path();
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            gzip(&idx_images(1, 28, 28, &pixels)),
        )
        .unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(&[3])).unwrap();
        let d = load(dir, DatasetKind::FashionMnist, Split::Test, None).unwrap();
        assert_eq!((d.labels, d.images), (vec![3], pixels));
    }

    #[test]
    fn normalisation_of_known_pixels() {
        let tmp = tempfile::tempdir().unwrap();
        let mut pixels = vec![0u8; 2 * 784];
        pixels[784 + 5] = 255;
        pixels[784 + 6] = 51;
        write_mnist(
            tmp.path(),
            &idx_images(2, 28, 28, &pixels),
            &idx_labels(&[1, 2]),
            false,
        );
        let d = load(tmp.path(), DatasetKind::FashionMnist, Split::Test, None).unwrap();
        let norm = DatasetKind::FashionMnist.normalization();
        let (x, y) = d.batch(&[1, 0], &norm);
        assert_eq!(y, [2, 1]);
        assert_eq!(x.len(), 2 * 784);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        assert!(close(x[5], (1.0 - 0.2860) / 0.3530));
        assert!(close(x[6], (0.2 - 0.2860) / 0.3530));
        assert!(close(x[0], -0.2860 / 0.3530));
        assert!(close(x[784 + 5], -0.2860 / 0.3530));
    }

    fn cifar_record(label: &[u8], seed: u8) -> Vec<u8> {
        let mut r = label.to_vec();
        r.extend((0..CIFAR_PIXELS).map(|p| (p as u8).wrapping_mul(3).wrapping_add(seed)));
        r
    }

    #[test]
    fn cifar10_round_trip_with_subfolder_and_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        for b in 1..=5u8 {
            let data = [cifar_record(&[b], b), cifar_record(&[9 - b], b + 10)].concat();
            std::fs::write(sub.join(format!("data_batch_{b}.bin")), data).unwrap();
        }
        std::fs::write(sub.join("test_batch.bin"), cifar_record(&[7], 99)).unwrap();

        for dir in [tmp.path(), sub.as_path()] {
            let d = load(dir, DatasetKind::Cifar10, Split::Train, None).unwrap();
            assert_eq!(d.len(), 10);
            assert_eq!(d.labels, [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]);
            assert_eq!(d.images.len(), 10 * CIFAR_PIXELS);
            // Record 3 is batch 2's second record; the file layout is already CHW.
            assert_eq!(
                d.images[3 * CIFAR_PIXELS..4 * CIFAR_PIXELS],
                cifar_record(&[7], 12)[1..]
            );
            let t = load(dir, DatasetKind::Cifar10, Split::Test, None).unwrap();
            assert_eq!((t.labels, t.shape), (vec![7], [3, 32, 32]));
        }
        let d = load(tmp.path(), DatasetKind::Cifar10, Split::Train, Some(3)).unwrap();
        assert_eq!(d.labels, [1, 8, 2]);

        // Per-channel normalisation: pixel (c=2, y=0, x=0) of record 0.
        let norm = DatasetKind::Cifar10.normalization();
        let (x, _) = d.batch(&[0], &norm);
        let raw = d.images[2 * 1024];
        let want = (f32::from(raw) / 255.0 - 0.4465) / 0.2616;
        assert!((x[2 * 1024] - want).abs() < 1e-5);
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("cifar-100-binary");
        std::fs::create_dir(&sub).unwrap();
        let data = [cifar_record(&[3, 42], 0), cifar_record(&[19, 99], 1)].concat();
        std::fs::write(sub.join("train.bin"), &data).unwrap();
        let d = load(tmp.path(), DatasetKind::Cifar100, Split::Train, None).unwrap();
        assert_eq!((d.labels.clone(), d.classes), (vec![42, 99], 100));
        assert_eq!(d.images[CIFAR_PIXELS..], data[CIFAR_PIXELS + 2 + 2..]);
        let msg = expect_dataset_err(
            load(tmp.path(), DatasetKind::Cifar100, Split::Test, None),
            "test.bin",
        );
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn noise_spans_the_normalised_range() {
        let norm = DatasetKind::Cifar10.normalization();
        let x = noise_batch(4, [3, 8, 8], &norm, 7);
        assert_eq!(x.len(), 4 * 3 * 64);
        assert_eq!(x, noise_batch(4, [3, 8, 8], &norm, 7));
        assert_ne!(x, noise_batch(4, [3, 8, 8], &norm, 8));
        for (i, v) in x.iter().enumerate() {
            let c = (i / 64) % 3;
            let (m, s) = (norm.mean[c], norm.std[c]);
            assert!(*v >= -m / s && *v < (1.0 - m) / s, "value {v} channel {c}");
        }
        // Each channel covers most of its range.
        let ch0: Vec<f32> = x.chunks(64).step_by(3).flatten().copied().collect();
        let (lo, hi) = ch0
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(lo < -0.4914 / 0.2470 + 0.2 && hi > (1.0 - 0.4914) / 0.2470 - 0.2);
    }

    #[test]
    fn holdout_split_is_deterministic_and_disjoint() {
        let d = Dataset {
            kind: DatasetKind::Mnist,
            images: vec![0; 100 * 784],
            labels: vec![0; 100],
            shape: [1, 28, 28],
            classes: 10,
        };
        let (train, held) = d.holdout_split(17, 42);
        assert_eq!((train.len(), held.len()), (83, 17));
        assert_eq!((train.clone(), held.clone()), d.holdout_split(17, 42));
        assert_ne!(held, d.holdout_split(17, 43).1);
        let mut all = [train, held.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_ne!(held, (0..17).collect::<Vec<_>>());
        assert_eq!(d.holdout_split(500, 1).1.len(), 100);
    }

    #[test]
    fn augmentation_translates_and_mirrors_with_zero_fill() {
        // One 3x3 image 1..9 (raw bytes); identity normalisation so values stay readable.
        let d = Dataset {
            kind: DatasetKind::Mnist,
            images: (1..=9).collect(),
            labels: vec![4],
            shape: [1, 3, 3],
            classes: 10,
        };
        let norm = Normalization {
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        };
        let raw = |x: Vec<f32>| -> Vec<u8> { x.iter().map(|v| v.round() as u8).collect() };
        let mut rng = SplitMix64::new(5);
        let plain = d.batch(&[0], &norm);
        assert_eq!(
            d.batch_augmented(&[0], &norm, Augment::default(), &mut rng),
            plain
        );
        let mirrored = vec![3, 2, 1, 6, 5, 4, 9, 8, 7];
        let flip = Augment {
            shift: 0,
            flip: true,
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..32 {
            let (x, y) = d.batch_augmented(&[0], &norm, flip, &mut rng);
            assert_eq!(y, vec![4]);
            let x = raw(x);
            assert!(x == (1..=9).collect::<Vec<u8>>() || x == mirrored, "{x:?}");
            seen.insert(x);
        }
        assert_eq!(seen.len(), 2, "both orientations occur");
        // Shifts of at most one pixel: every output is the image moved by (dy, dx) in -1..=1.
        let shift = Augment {
            shift: 1,
            flip: false,
        };
        let moved = |dy: isize, dx: isize| -> Vec<u8> {
            (0..9)
                .map(|i| {
                    let (y, x) = (i / 3 - dy, i % 3 - dx);
                    if (0..3).contains(&y) && (0..3).contains(&x) {
                        (y * 3 + x + 1) as u8
                    } else {
                        0
                    }
                })
                .collect()
        };
        let all: Vec<Vec<u8>> = (-1..=1)
            .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
            .map(|(dy, dx)| moved(dy, dx))
            .collect();
        seen.clear();
        for _ in 0..200 {
            let x = raw(d.batch_augmented(&[0], &norm, shift, &mut rng).0);
            assert!(all.contains(&x), "{x:?}");
            seen.insert(x);
        }
        assert_eq!(seen.len(), 9, "all nine translations occur");
    }

    #[test]
    fn parse_and_presets() {
        for k in DatasetKind::ALL {
            assert_eq!(DatasetKind::parse(k.name()).unwrap(), k);
            let [c, _, _] = k.image_shape();
            k.normalization().validate(c).unwrap();
        }
        assert!(matches!(
            DatasetKind::parse("imagenet"),
            Err(Error::InvalidArgument(_))
        ));
        let bad = Normalization {
            mean: vec![0.5, 0.5],
            std: vec![1.0],
        };
        assert!(matches!(bad.validate(3), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn bad_idx_files_are_errors() {
        let pixels = mnist_pixels(2);
        let good_images = idx_images(2, 28, 28, &pixels);
        let good_labels = idx_labels(&[1, 2]);
        let img = "t10k-images-idx3-ubyte";
        let lab = "t10k-labels-idx1-ubyte";
        let case = |images: &[u8], labels: &[u8], gz: bool| {
            let tmp = tempfile::tempdir().unwrap();
            write_mnist(tmp.path(), images, labels, gz);
            load(tmp.path(), DatasetKind::Mnist, Split::Test, None)
        };

        let msg = expect_dataset_err(case(&good_images[..1000], &good_labels, false), img);
        assert!(msg.contains("declares"), "{msg}");
        expect_dataset_err(case(&good_images[..10], &good_labels, false), img);
        let trailing = [good_images.as_slice(), &[0]].concat();
        expect_dataset_err(case(&trailing, &good_labels, false), img);
        let mut wrong_magic = good_images.clone();
        wrong_magic[3] = 0x01;
        let msg = expect_dataset_err(case(&wrong_magic, &good_labels, false), img);
        assert!(msg.contains("magic"), "{msg}");
        expect_dataset_err(case(&good_images, &idx_labels(&[1, 2, 3]), false), img);
        expect_dataset_err(
            case(&idx_images(2, 32, 32, &[0; 2048]), &good_labels, false),
            img,
        );
        let msg = expect_dataset_err(case(&good_images, &idx_labels(&[1, 10]), false), lab);
        assert!(msg.contains("out of range"), "{msg}");
        let mut lab_magic = good_labels.clone();
        lab_magic[3] = 0x03;
        expect_dataset_err(case(&good_images, &lab_magic, false), lab);

        // Gzip: truncated, trailing data inside the stream, and corrupted bytes.
        let gz = gzip(&good_images);
        for cut in [5, 20, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join(format!("{img}.gz")), &gz[..cut]).unwrap();
            std::fs::write(tmp.path().join(format!("{lab}.gz")), gzip(&good_labels)).unwrap();
            expect_dataset_err(load(tmp.path(), DatasetKind::Mnist, Split::Test, None), img);
        }
        expect_dataset_err(case(&trailing, &good_labels, true), img);
        for at in [12, gz.len() / 2, gz.len() - 6] {
            let mut bad = gz.clone();
            bad[at] ^= 0x55;
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join(format!("{img}.gz")), &bad).unwrap();
            std::fs::write(tmp.path().join(format!("{lab}.gz")), gzip(&good_labels)).unwrap();
            expect_dataset_err(load(tmp.path(), DatasetKind::Mnist, Split::Test, None), img);
        }

        // A gzip header declaring far more labels than the stream holds: no huge allocation.
        let mut liar = idx_labels(&[0; 1000]);
        liar[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(format!("{img}.gz")), gzip(&good_images)).unwrap();
        std::fs::write(tmp.path().join(format!("{lab}.gz")), gzip(&liar)).unwrap();
        expect_dataset_err(load(tmp.path(), DatasetKind::Mnist, Split::Test, None), lab);
    }

    #[test]
    fn bad_cifar_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let rec = cifar_record(&[3], 0);
        std::fs::write(
            dir.join("test_batch.bin"),
            [rec.as_slice(), &rec[..100]].concat(),
        )
        .unwrap();
        let msg = expect_dataset_err(
            load(dir, DatasetKind::Cifar10, Split::Test, None),
            "test_batch.bin",
        );
        assert!(msg.contains("multiple"), "{msg}");
        std::fs::write(dir.join("test_batch.bin"), cifar_record(&[10], 0)).unwrap();
        let msg = expect_dataset_err(
            load(dir, DatasetKind::Cifar10, Split::Test, None),
            "test_batch.bin",
        );
        assert!(msg.contains("out of range"), "{msg}");
        std::fs::write(dir.join("test_batch.bin"), b"").unwrap();
        expect_dataset_err(
            load(dir, DatasetKind::Cifar10, Split::Test, None),
            "test_batch.bin",
        );
        // Train needs all five batches even if a limit would stop early.
        std::fs::write(dir.join("data_batch_1.bin"), &rec).unwrap();
        let msg = expect_dataset_err(
            load(dir, DatasetKind::Cifar10, Split::Train, Some(1)),
            "data_batch_2.bin",
        );
        assert!(msg.contains("missing"), "{msg}");
        std::fs::write(dir.join("test.bin"), cifar_record(&[20, 5], 0)).unwrap();
        expect_dataset_err(
            load(dir, DatasetKind::Cifar100, Split::Test, None),
            "test.bin",
        );
        std::fs::write(dir.join("test.bin"), cifar_record(&[2, 100], 0)).unwrap();
        expect_dataset_err(
            load(dir, DatasetKind::Cifar100, Split::Test, None),
            "test.bin",
        );
    }

    #[test]
    fn missing_files_and_directories_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("nope");
        let msg = expect_dataset_err(load(&gone, DatasetKind::Cifar10, Split::Test, None), "nope");
        assert!(msg.contains("does not exist"), "{msg}");
        let msg = expect_dataset_err(
            load(tmp.path(), DatasetKind::FashionMnist, Split::Train, None),
            "train-labels-idx1-ubyte",
        );
        assert!(msg.contains("missing") && msg.contains(".gz"), "{msg}");
        std::fs::write(tmp.path().join("train-labels-idx1-ubyte"), idx_labels(&[1])).unwrap();
        expect_dataset_err(
            load(tmp.path(), DatasetKind::FashionMnist, Split::Train, None),
            "train-images-idx3-ubyte",
        );
    }
}
