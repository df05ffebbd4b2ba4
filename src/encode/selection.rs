//! Model selection on held-out training images: the data plan (training images split into a
//! part phase 2 may use and a held-out part), and the held-out accuracy of a predictor, measured
//! on the network rebuilt with the exact decoder's weights.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::options::EncodeOptions;
use super::report::BaselineReport;
use super::source::Source;
use crate::baseline::{self, QuantBits};
use crate::data::{Dataset, Normalization, Split, load};
use crate::device::ConvBackend;
use crate::error::Result;
use crate::eval::{LoadedNet, accuracy, predict};
use crate::format::LayerEntry;
use crate::network::HostModel;
use crate::permute::Permutation;
use crate::predictor::Predictor;

/// Data for selection and phase 2, loaded once.
pub struct DataPlan {
    pub train: Dataset,
    pub train_idx: Vec<usize>,
    pub held_idx: Vec<usize>,
    pub test: Option<Dataset>,
    pub norm: Normalization,
}

impl DataPlan {
    /// The held-out images as a selection set (none when no images are held out).
    pub fn held_out(&self) -> Option<HeldOut<'_>> {
        (!self.held_idx.is_empty()).then(|| HeldOut {
            data: &self.train,
            indices: &self.held_idx,
        })
    }
}

/// Loads the training split (and the test split with `--test-eval`) when a data directory is
/// given, and splits off the held-out images.
pub fn load_data(opts: &EncodeOptions) -> Result<Option<DataPlan>> {
    let Some(dir) = &opts.data_dir else {
        return Ok(None);
    };
    let kind = opts.dataset;
    let train = load(dir, kind, Split::Train, None)?;
    let held = opts.held_out.min(train.len() / 2);
    let (train_idx, held_idx) = train.holdout_split(held, opts.seed ^ 0x5e1ec7);
    let test = if opts.test_eval {
        Some(load(dir, kind, Split::Test, None)?)
    } else {
        None
    };
    let norm = opts.norm.clone().unwrap_or_else(|| kind.normalization());
    norm.validate(train.shape[0])?;
    Ok(Some(DataPlan {
        train,
        train_idx,
        held_idx,
        test,
        norm,
    }))
}

/// A held-out set for selection.
pub struct HeldOut<'a> {
    pub data: &'a Dataset,
    pub indices: &'a [usize],
}

/// Decoded (exact decoder) conv weights of a predictor, on `device`.
pub fn decoded_convs<B: Backend>(
    p: &Predictor,
    layers: &[LayerEntry],
    perms: &[Permutation],
    device: &B::Device,
) -> HashMap<String, Tensor<B, 4>> {
    let weights = crate::decode::decode_layers(p, layers, perms, crate::decode::default_threads());
    layers
        .iter()
        .zip(weights)
        .map(|(l, w)| {
            let s = l.shape.map(|d| d as usize);
            (
                l.name.clone(),
                Tensor::from_data(TensorData::new(w, s), device),
            )
        })
        .collect()
}

/// Held-out accuracy of the network with the predictor's decoded conv weights.
pub fn held_out_accuracy<B: ConvBackend>(
    p: &Predictor,
    layers: &[LayerEntry],
    perms: &[Permutation],
    student: &LoadedNet<B>,
    held: &HeldOut<'_>,
    norm: &Normalization,
    device: &B::Device,
) -> Result<f64> {
    let m = LoadedNet {
        net: student.net.clone(),
        fixed: student.fixed.clone(),
        convs: decoded_convs(p, layers, perms, device),
    };
    network_accuracy(&m, held, norm, device)
}

/// Accuracy (%) of a network on a selection set.
pub fn network_accuracy<B: ConvBackend>(
    m: &LoadedNet<B>,
    held: &HeldOut<'_>,
    norm: &Normalization,
    device: &B::Device,
) -> Result<f64> {
    let pred = predict(m, held.data, held.indices, norm, device)?;
    Ok(accuracy(&pred, held.data, held.indices).1)
}

/// Plain int4 per-channel quantisation of the source beside the file: its stored size, and its
/// accuracy on the same held-out (and test) images when there is data.
pub fn int4_baseline<B: ConvBackend>(
    source: &Source<'_>,
    host: Option<&HostModel>,
    plan: Option<&DataPlan>,
    device: &B::Device,
) -> Result<BaselineReport> {
    let source_bytes = source.bytes.len() as u64;
    let (size, weights) = baseline::quantize(&source.checkpoint, source_bytes, QuantBits::Int4)?;
    let (mut held_out, mut test) = (None, None);
    if let (Some(host), Some(plan)) = (host, plan) {
        let mut host = host.clone();
        host.values.extend(weights);
        let net = LoadedNet::<B>::from_host(&host, device)?;
        if let Some(h) = plan.held_out() {
            held_out = Some(network_accuracy(&net, &h, &plan.norm, device)?);
        }
        if let Some(t) = &plan.test {
            let all: Vec<usize> = (0..t.len()).collect();
            let h = HeldOut {
                data: t,
                indices: &all,
            };
            test = Some(network_accuracy(&net, &h, &plan.norm, device)?);
        }
    }
    Ok(BaselineReport {
        method: size.method,
        bytes: size.bytes,
        percent: size.percent,
        held_out,
        test,
    })
}
