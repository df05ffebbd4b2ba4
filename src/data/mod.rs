//! Image datasets for evaluation and distillation: MNIST / Fashion-MNIST (IDX, raw or gzip) and
//! CIFAR-10 / CIFAR-100 (binary version). Images stay as raw bytes and are normalised per batch.
//!
//! Every file is validated against what its header (or record size) declares before it is
//! trusted: wrong magic, truncation, trailing bytes, corrupt gzip and out-of-range labels are all
//! [`Error::Dataset`] naming the file.

//!
//! This file holds the catalogue (kinds, splits, presets), normalisation and batching; the file
//! formats are in `idx` and `cifar`, reading with checks in `file`.

mod cifar;
mod file;
mod idx;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

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

impl Split {
    /// `train` or `test`, as the CLI and the metadata name it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Per-channel mean and standard deviation on the `[0, 1]` pixel scale. Each vector holds one
/// entry per channel, or a single entry applied to every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// These statistics with `--mean` / `--std` overrides where given (check with `validate`).
    pub fn with_overrides(self, mean: Option<Vec<f32>>, std: Option<Vec<f32>>) -> Self {
        Normalization {
            mean: mean.unwrap_or(self.mean),
            std: std.unwrap_or(self.std),
        }
    }

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
    pub fn per_channel(&self, channels: usize) -> Vec<(f32, f32)> {
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

    /// Drops the first `n` images (all of them when `n >= len()`): what `eval --skip` measures,
    /// e.g. the test images an encode with `--held-out-from test` did not select on.
    pub fn skip_first(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        let [c, h, w] = self.shape;
        self.images.drain(..n * c * h * w);
        self.labels.drain(..n);
        self
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
        SplitMix64::new(seed).partial_shuffle(&mut order, k);
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
        DatasetKind::FashionMnist | DatasetKind::Mnist => idx::load_idx(dir, kind, split, limit)?,
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => cifar::load_cifar(dir, kind, split, limit)?,
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
