//! The checkpoint being encoded, parsed once: its tensors, the predicted layers (conv weights in
//! network order) with their values, and the host model the forward passes are built from.

use std::collections::HashMap;
use std::path::Path;

use crate::checkpoint::{Checkpoint, f32_values, is_predictable, natural_cmp, parse_safetensors};
use crate::error::{Error, Result};
use crate::format::{CodedTensor, LayerEntry, PassStorage, RawTensor, TensorDtype};
use crate::network::HostModel;
use crate::permute::PermutationKind;

use super::coded::CodedConv;
use super::options::CodedOptions;
use super::tune::TunedPassthrough;

pub struct Source<'a> {
    pub path: &'a Path,
    /// The whole file as the user gave it (its size and hash go into the provenance).
    pub bytes: &'a [u8],
    /// `--channel-order similar`: the number of channel groups reordered ([`crate::reorder`]);
    /// the tensors below are then those of the reordered checkpoint.
    pub reordered_groups: Option<usize>,
    pub checkpoint: Checkpoint<'a>,
    /// Predicted conv weights in network order (natural order of names).
    pub layers: Vec<LayerEntry>,
    /// Each layer's values, `[cout, cin, k, k]`.
    pub weights: Vec<Vec<f32>>,
    /// The largest kernel size (the predictor's output is `kernel_size^2`).
    pub kernel_size: u32,
    /// `--passthrough f16`: each F32 passthrough tensor as binary16 bytes, by name.
    halves: HashMap<String, Vec<u8>>,
    /// The source weights of the convs taken out as coded (`--code`, a resumed file's), by
    /// name: what their decoded weights are measured against.
    pub coded_originals: HashMap<String, Vec<f32>>,
}

impl<'a> Source<'a> {
    /// Number of predicted convolution weights.
    pub fn conv_weights(&self) -> u64 {
        self.weights.iter().map(|w| w.len() as u64).sum()
    }

    /// Parses `bytes` (the file at `path`); every layer gets `permutation` as its kind.
    pub fn parse(path: &'a Path, bytes: &'a [u8], permutation: PermutationKind) -> Result<Self> {
        Self::parse_from(path, bytes, bytes, None, permutation)
    }

    /// [`Self::parse`] of the checkpoint `bytes` reordered into `reordered` (the same header,
    /// [`crate::reorder::reorder_checkpoint`]): the tensors are the reordered ones, the
    /// provenance is the file's.
    pub fn parse_reordered(
        path: &'a Path,
        bytes: &'a [u8],
        (reordered, groups): (&'a [u8], usize),
        permutation: PermutationKind,
    ) -> Result<Self> {
        Self::parse_from(path, bytes, reordered, Some(groups), permutation)
    }

    fn parse_from(
        path: &'a Path,
        bytes: &'a [u8],
        tensors: &'a [u8],
        reordered_groups: Option<usize>,
        permutation: PermutationKind,
    ) -> Result<Self> {
        let checkpoint = parse_safetensors(path, tensors)?;
        let mut predicted: Vec<_> = checkpoint
            .tensors
            .iter()
            .filter(|t| is_predictable(t))
            .collect();
        predicted.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        if predicted.is_empty() {
            return Err(Error::NoConvWeights {
                path: path.to_path_buf(),
            });
        }
        let mut layers = Vec::new();
        let mut weights = Vec::new();
        for t in predicted {
            weights.push(f32_values(t)?);
            layers.push(LayerEntry {
                name: t.name.clone(),
                dtype: TensorDtype::F32,
                permutation,
                // `is_predictable` checked that the dimensions fit u32.
                shape: [
                    t.shape[0] as u32,
                    t.shape[1] as u32,
                    t.shape[2] as u32,
                    t.shape[3] as u32,
                ],
            });
        }
        if layers.len() > u32::MAX as usize {
            return Err(Error::InvalidArgument("too many layers".into()));
        }
        let kernel_size = layers.iter().map(|l| l.shape[2]).max().unwrap_or(1);
        Ok(Source {
            path,
            bytes,
            reordered_groups,
            checkpoint,
            layers,
            weights,
            kernel_size,
            halves: HashMap::new(),
            coded_originals: HashMap::new(),
        })
    }

    /// Takes the convs `coded`'s rules name out of the predicted layers (`--code`): each comes
    /// back as a [`CodedConv`] started from its weights. At least one conv must stay predicted,
    /// and every rule must name at least one conv.
    pub fn split_coded(&mut self, coded: &CodedOptions) -> Result<Vec<CodedConv>> {
        let mut out = Vec::new();
        let mut layers = Vec::new();
        let mut weights = Vec::new();
        for (l, w) in self.layers.drain(..).zip(self.weights.drain(..)) {
            match coded.rank(&l) {
                Some(rank) => {
                    out.push(CodedConv::new(&l, &w, rank, coded.bits_of(&l.name)));
                    self.coded_originals.insert(l.name, w);
                }
                None => {
                    layers.push(l);
                    weights.push(w);
                }
            }
        }
        (self.layers, self.weights) = (layers, weights);
        if let Some(prefix) = coded
            .rules
            .iter()
            .map(|r| &r.prefix)
            .find(|p| !out.iter().any(|c| c.name.starts_with(p.as_str())))
        {
            return Err(Error::InvalidArgument(format!(
                "--code {prefix}=...: no conv weight of {} starts with {prefix:?}",
                self.path.display()
            )));
        }
        self.still_predicted(|| {
            Error::InvalidArgument(
                "--code covers every conv: at least one must stay predicted".into(),
            )
        })?;
        Ok(out)
    }

    /// After convs left the predicted layers: at least one must stay (the format's `LAYR` is
    /// never empty), and the kernel size is that of those left.
    fn still_predicted(&mut self, none_left: impl FnOnce() -> Error) -> Result<()> {
        if self.layers.is_empty() {
            return Err(none_left());
        }
        self.kernel_size = self.layers.iter().map(|l| l.shape[2]).max().unwrap_or(1);
        Ok(())
    }

    /// Takes the convs `stored` holds (a resumed file's coded convs) out of the predicted
    /// layers and continues them from their stored values; each must be a conv of this
    /// checkpoint with the same shape.
    pub fn take_coded(&mut self, stored: &[CodedTensor], path: &Path) -> Result<Vec<CodedConv>> {
        for t in stored {
            let Some(i) = self.layers.iter().position(|l| l.name == t.name) else {
                return Err(Error::Incompatible(format!(
                    "{} was not encoded from this checkpoint (its coded conv {} is not a conv \
                     weight here)",
                    path.display(),
                    t.name
                )));
            };
            if self.layers[i].shape != t.shape {
                return Err(Error::Incompatible(format!(
                    "{} was not encoded from this checkpoint ({} has shape {:?} there, {:?} here)",
                    path.display(),
                    t.name,
                    t.shape,
                    self.layers[i].shape
                )));
            }
            self.layers.remove(i);
            self.coded_originals
                .insert(t.name.clone(), self.weights.remove(i));
        }
        self.still_predicted(|| {
            Error::Incompatible(format!(
                "{} codes every conv: nothing is left to predict",
                path.display()
            ))
        })?;
        Ok(stored.iter().map(CodedConv::from_stored).collect())
    }

    /// Stores every F32 passthrough tensor as binary16 from now on (lossy, `--passthrough
    /// f16`): what is written, and the host model every accuracy is measured with. A value
    /// beyond binary16's range is an error, not an infinity.
    pub fn store_passthrough_as_f16(&mut self) -> Result<()> {
        let mut halves = HashMap::new();
        for t in self.passthrough() {
            if t.dtype != TensorDtype::F32 {
                continue;
            }
            let mut out = Vec::with_capacity(t.bytes.len() / 2);
            for v in crate::format::le_f32s(t.bytes) {
                if !v.is_finite() {
                    return Err(Error::NonFinite {
                        tensor: t.name.clone(),
                    });
                }
                let h = half::f16::from_f32(v);
                if !h.is_finite() {
                    return Err(Error::InvalidArgument(format!(
                        "--passthrough f16: {} holds {v}, beyond binary16's range",
                        t.name
                    )));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
            halves.insert(t.name.clone(), out);
        }
        self.halves = halves;
        Ok(())
    }

    /// The tensors the predictor does not cover, as they are stored: verbatim, or as binary16
    /// after [`Self::store_passthrough_as_f16`].
    pub fn passthrough(&self) -> impl Iterator<Item = RawTensor<'_>> {
        self.checkpoint
            .tensors
            .iter()
            .filter(|t| !is_predictable(t))
            .map(|t| match self.halves.get(&t.name) {
                Some(h) => RawTensor {
                    bytes: h,
                    storage: PassStorage::F16,
                    ..t.clone()
                },
                None => t.clone(),
            })
    }

    /// The stored bytes of tuned passthrough tensors (see [`super::tune`]): little-endian F32, or
    /// binary16 after [`Self::store_passthrough_as_f16`] (the values are already rounded so).
    pub fn tuned_bytes(&self, tuned: &TunedPassthrough) -> Result<HashMap<String, Vec<u8>>> {
        let mut out = HashMap::new();
        for (name, values) in &tuned.tensors {
            let Some(t) = self.passthrough().find(|t| &t.name == name) else {
                return Err(Error::Training(format!(
                    "tuned {name} is not a passthrough tensor"
                )));
            };
            let width = match t.storage {
                PassStorage::F16 => 2,
                PassStorage::Verbatim => 4,
            };
            if t.dtype != TensorDtype::F32 || t.bytes.len() != values.len() * width {
                return Err(Error::Training(format!(
                    "tuned {name} does not match its stored tensor"
                )));
            }
            let bytes = match t.storage {
                PassStorage::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                PassStorage::Verbatim => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            out.insert(name.clone(), bytes);
        }
        Ok(out)
    }

    /// [`Self::passthrough`] with the tensors of `tuned` (from [`Self::tuned_bytes`]) replaced.
    pub fn passthrough_with<'s>(
        &'s self,
        tuned: &'s HashMap<String, Vec<u8>>,
    ) -> impl Iterator<Item = RawTensor<'s>> {
        self.passthrough().map(move |t| match tuned.get(&t.name) {
            Some(bytes) => RawTensor { bytes, ..t },
            None => t,
        })
    }

    /// The source network exactly as in the checkpoint (the teacher, the original's accuracy,
    /// the int4 baseline), whatever the passthrough storage.
    pub fn original_host_model(&self) -> HostModel {
        HostModel::from_tensors(&self.checkpoint.tensors)
    }

    /// The host model for forward passes, from the already parsed tensors (with the stored
    /// passthrough values: widened binary16 after `store_passthrough_as_f16`).
    pub fn host_model(&self) -> HostModel {
        let mut host = HostModel::from_tensors(&self.checkpoint.tensors);
        for (name, h) in &self.halves {
            let widened = h
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            host.values.insert(name.clone(), widened);
        }
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_in_network_order_and_the_rest_passed_through() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/fmnist-resnet20.safetensors"
        ));
        let file = crate::io::MappedFile::open(path).unwrap();
        let s = Source::parse(path, file.bytes(), PermutationKind::None).unwrap();
        assert_eq!(s.layers.len(), 21);
        assert_eq!(s.kernel_size, 3);
        assert_eq!(s.layers[0].name, "conv1.weight");
        assert_eq!(s.layers[1].name, "layer1.0.conv1.weight");
        assert_eq!(s.layers[20].name, "layer3.2.conv2.weight");
        assert!(
            s.layers
                .iter()
                .all(|l| l.permutation == PermutationKind::None)
        );
        let total = s.checkpoint.tensors.len();
        assert_eq!(s.passthrough().count() + s.layers.len(), total);
        assert!(s.passthrough().all(|t| !t.name.ends_with("conv1.weight")));
        let host = s.host_model();
        assert_eq!(host.shapes.len(), total);
        assert!(host.network().is_ok());
    }
}
