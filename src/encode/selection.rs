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
    /// Training images phase 2 may draw from.
    pub train_idx: Vec<usize>,
    /// The split the held-out selection images come from (`--held-out-from`).
    pub held_split: Split,
    pub held_idx: Vec<usize>,
    /// The test split: loaded for `--test-eval`, or as the held-out images' source.
    pub test: Option<Dataset>,
    /// Test images the recorded test figure is measured on: with `--test-eval`, every test image
    /// not held out for selection (all of them unless `--held-out-from test`); else none.
    pub test_idx: Vec<usize>,
    pub norm: Normalization,
}

impl DataPlan {
    /// The held-out images as a selection set (none when no images are held out).
    pub fn held_out(&self) -> Option<HeldOut<'_>> {
        let data = match self.held_split {
            Split::Train => &self.train,
            Split::Test => self.test.as_ref()?,
        };
        (!self.held_idx.is_empty()).then(|| HeldOut {
            data,
            indices: &self.held_idx,
        })
    }

    /// The test images the recorded test figure is measured on (none without `--test-eval`).
    pub fn test_report(&self) -> Option<HeldOut<'_>> {
        let data = self.test.as_ref()?;
        (!self.test_idx.is_empty()).then(|| HeldOut {
            data,
            indices: &self.test_idx,
        })
    }
}

/// Loads the training split (and the test split with `--test-eval` or `--held-out-from test`)
/// when a data directory is given, and splits off the held-out images: a seeded draw from the
/// training split, or the test split's first images (the rest then make the test figure).
pub fn load_data(opts: &EncodeOptions) -> Result<Option<DataPlan>> {
    let Some(dir) = &opts.data_dir else {
        return Ok(None);
    };
    let kind = opts.dataset;
    let train = load(dir, kind, Split::Train, None)?;
    let test = if opts.test_eval || opts.held_out_from == Split::Test {
        Some(load(dir, kind, Split::Test, None)?)
    } else {
        None
    };
    let (train_idx, held_idx, test_idx) = match (opts.held_out_from, &test) {
        (Split::Test, Some(t)) => {
            let held = opts.held_out.min(t.len() / 2);
            let report = if opts.test_eval { held..t.len() } else { 0..0 };
            (
                (0..train.len()).collect(),
                (0..held).collect(),
                report.collect(),
            )
        }
        _ => {
            let held = opts.held_out.min(train.len() / 2);
            let (train_idx, held_idx) = train.holdout_split(held, opts.seed ^ 0x5e1ec7);
            let report = test
                .as_ref()
                .filter(|_| opts.test_eval)
                .map_or(0, Dataset::len);
            (train_idx, held_idx, (0..report).collect())
        }
    };
    let norm = opts.norm.clone().unwrap_or_else(|| kind.normalization());
    norm.validate(train.shape[0])?;
    Ok(Some(DataPlan {
        train,
        train_idx,
        held_split: opts.held_out_from,
        held_idx,
        test,
        test_idx,
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
    // The student's own convs (coded ones, `--code`) and the predicted ones.
    let m = student.with_convs(decoded_convs(p, layers, perms, device));
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
        if let Some(t) = plan.test_report() {
            test = Some(network_accuracy(&net, &t, &plan.norm, device)?);
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
