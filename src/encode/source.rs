//! The checkpoint being encoded, parsed once: its tensors, the predicted layers (conv weights in
//! network order) with their values, and the host model the forward passes are built from.

use std::path::Path;

use crate::checkpoint::{Checkpoint, f32_values, is_predictable, natural_cmp, parse_safetensors};
use crate::error::{Error, Result};
use crate::format::{LayerEntry, RawTensor, TensorDtype};
use crate::network::HostModel;
use crate::permute::PermutationKind;

pub struct Source<'a> {
    pub path: &'a Path,
    /// The whole file (its size and hash go into the provenance).
    pub bytes: &'a [u8],
    pub checkpoint: Checkpoint<'a>,
    /// Predicted conv weights in network order (natural order of names).
    pub layers: Vec<LayerEntry>,
    /// Each layer's values, `[cout, cin, k, k]`.
    pub weights: Vec<Vec<f32>>,
    /// The largest kernel size (the predictor's output is `kernel_size^2`).
    pub kernel_size: u32,
}

impl<'a> Source<'a> {
    /// Parses `bytes` (the file at `path`); every layer gets `permutation` as its kind.
    pub fn parse(path: &'a Path, bytes: &'a [u8], permutation: PermutationKind) -> Result<Self> {
        let checkpoint = parse_safetensors(path, bytes)?;
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
            checkpoint,
            layers,
            weights,
            kernel_size,
        })
    }

    /// The tensors stored verbatim (everything the predictor does not cover).
    pub fn passthrough(&self) -> impl Iterator<Item = &RawTensor<'a>> {
        self.checkpoint
            .tensors
            .iter()
            .filter(|t| !is_predictable(t))
    }

    /// The host model for forward passes, from the already parsed tensors.
    pub fn host_model(&self) -> HostModel {
        HostModel::from_tensors(&self.checkpoint.tensors)
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
