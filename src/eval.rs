//! `nernc eval`: top-1 accuracy of a checkpoint (`.safetensors` or `.nern`), optionally against a
//! reference checkpoint (accuracy difference and prediction agreement) and under FGSM.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::arch::Network;
use crate::baseline::{self, QuantBits, QuantizedSize};
use crate::data::{Dataset, Normalization};
use crate::device::{BackendJob, ConvBackend, DeviceKind, TrainBackend, run_on};
use crate::error::{Error, Result};
use crate::network::{FixedParams, HostModel, forward, host_convs};

/// Images per forward batch.
const EVAL_BATCH: usize = 500;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelScore {
    pub path: PathBuf,
    pub architecture: String,
    pub correct: usize,
    pub accuracy: f64,
    /// Accuracy under FGSM at the requested epsilon, when asked.
    pub fgsm_accuracy: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    pub dataset: String,
    pub split: String,
    pub images: usize,
    pub model: ModelScore,
    pub reference: Option<ModelScore>,
    /// `model.accuracy - reference.accuracy`, in points.
    pub difference: Option<f64>,
    /// Share of images where both predict the same class.
    pub agreement: Option<f64>,
    pub fgsm_epsilon: Option<f64>,
    /// With `--quantize`: what the plain baseline stores (the model's accuracy is of it).
    pub quantized: Option<QuantizedSize>,
    pub device: String,
    pub seconds: f64,
}

impl EvalReport {
    /// The human summary `nernc eval` prints.
    pub fn render(&self) -> String {
        let fgsm = |a: Option<f64>| {
            a.map(|a| format!(", FGSM eps {}: {a:.2} %", self.fgsm_epsilon.unwrap_or(0.0)))
                .unwrap_or_default()
        };
        let m = &self.model;
        let label = match &self.quantized {
            Some(q) => format!("{} ({})", m.path.display(), q.method),
            None => m.path.display().to_string(),
        };
        let mut s = format!(
            "{}: {:.2} % top-1 ({}/{} {} {} images){}\n",
            label,
            m.accuracy,
            m.correct,
            self.images,
            self.dataset,
            self.split,
            fgsm(m.fgsm_accuracy)
        );
        if let Some(r) = &self.reference {
            let r_fgsm = r.fgsm_accuracy.map(|a| format!(", FGSM: {a:.2} %"));
            s += &format!(
                "{}: {:.2} % top-1{}\n",
                r.path.display(),
                r.accuracy,
                r_fgsm.unwrap_or_default()
            );
            s += &format!(
                "difference {:+.2} points, predictions agree on {:.2} %\n",
                self.difference.unwrap_or(0.0),
                self.agreement.unwrap_or(0.0)
            );
        }
        if let Some(q) = &self.quantized {
            s += &format!(
                "{}: {} bytes, {:.2} % of the source's {} bytes\n",
                q.method, q.bytes, q.percent, q.source_bytes
            );
        }
        s
    }
}

/// A network ready to run: architecture, fixed parameters and conv weights on a device.
pub struct LoadedNet<B: Backend> {
    pub net: Network,
    pub fixed: FixedParams<B>,
    pub convs: std::collections::HashMap<String, Tensor<B, 4>>,
}

impl<B: Backend> LoadedNet<B> {
    /// The same network with `convs` in place of (or beside) its own conv weights.
    pub fn with_convs(&self, convs: std::collections::HashMap<String, Tensor<B, 4>>) -> Self {
        let mut all = self.convs.clone();
        all.extend(convs);
        LoadedNet {
            net: self.net.clone(),
            fixed: self.fixed.clone(),
            convs: all,
        }
    }

    /// Loads a `.safetensors` or `.nern` file.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        Self::from_host(&HostModel::load(path)?, device)
    }

    /// The network of an already loaded model, with its own conv weights.
    pub fn from_host(host: &HostModel, device: &B::Device) -> Result<Self> {
        let net = host.network()?;
        Ok(LoadedNet {
            fixed: FixedParams::new(&net, host, device)?,
            convs: host_convs(&net, host, device)?,
            net,
        })
    }
}

impl<B: ConvBackend> LoadedNet<B> {
    pub fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        forward(&self.net, &self.fixed, &self.convs, x)
    }
}

/// Checks that `data` fits `net` (channels and classes).
pub fn check_fit(net: &Network, data: &Dataset, what: &str) -> Result<()> {
    if net.in_channels != data.shape[0] {
        return Err(Error::Incompatible(format!(
            "{what} takes {} input channels, the {} images have {}",
            net.in_channels,
            data.kind.name(),
            data.shape[0]
        )));
    }
    if net.num_classes != data.classes {
        return Err(Error::Incompatible(format!(
            "{what} has {} classes, {} has {}",
            net.num_classes,
            data.kind.name(),
            data.classes
        )));
    }
    Ok(())
}

pub fn input_tensor<B: Backend>(
    x: Vec<f32>,
    n: usize,
    shape: [usize; 3],
    d: &B::Device,
) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(x, [n, shape[0], shape[1], shape[2]]), d)
}

fn argmax<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<u32>> {
    let [n, _] = logits.dims();
    let idx: Tensor<B, 2, Int> = logits.argmax(1);
    let v = idx
        .reshape([n])
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| Error::Training(format!("{e:?}")))?;
    Ok(v.into_iter().map(|x| x as u32).collect())
}

/// `per_batch` of the logits of every image in `indices`, in batches of [`EVAL_BATCH`], the
/// results concatenated in order.
fn by_batch<B: ConvBackend, T>(
    m: &LoadedNet<B>,
    data: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    device: &B::Device,
    mut per_batch: impl FnMut(Tensor<B, 2>) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(indices.len());
    for x in input_batches(data, indices, norm, device) {
        out.extend(per_batch(m.logits(x))?);
    }
    Ok(out)
}

/// The images of `indices` as input tensors, in batches of [`EVAL_BATCH`].
fn input_batches<'a, B: Backend>(
    data: &'a Dataset,
    indices: &'a [usize],
    norm: &'a Normalization,
    device: &'a B::Device,
) -> impl Iterator<Item = Tensor<B, 4>> + 'a {
    indices.chunks(EVAL_BATCH).map(move |chunk| {
        let (x, _) = data.batch(chunk, norm);
        input_tensor(x, chunk.len(), data.shape, device)
    })
}

/// Predicted classes of every image in `indices`.
pub fn predict<B: ConvBackend>(
    m: &LoadedNet<B>,
    data: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    device: &B::Device,
) -> Result<Vec<u32>> {
    by_batch(m, data, indices, norm, device, argmax)
}

/// Log-probabilities (log-softmax of the logits) of every image in `indices`, row-major
/// `indices.len() x classes`.
pub fn log_probs<B: ConvBackend>(
    m: &LoadedNet<B>,
    data: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    device: &B::Device,
) -> Result<Vec<f32>> {
    by_batch(m, data, indices, norm, device, log_softmax_rows)
}

fn log_softmax_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<f32>> {
    burn::tensor::activation::log_softmax(logits, 1)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Training(format!("{e:?}")))
}

/// A fixed set of images as they enter one residual block of a network, in the batches
/// [`log_probs`] uses: what many runs that change only that block's convs or later ones share.
/// [`Self::log_probs`] of a network equals [`log_probs`] of it on the same images whenever its
/// convs before the block are those the inputs were made with.
pub struct BlockInputs<B: Backend> {
    block: usize,
    batches: Vec<Tensor<B, 4>>,
}

impl<B: ConvBackend> BlockInputs<B> {
    /// The images of `indices` as they enter block 0 of `m` (after the stem).
    pub fn new(
        m: &LoadedNet<B>,
        data: &Dataset,
        indices: &[usize],
        norm: &Normalization,
        device: &B::Device,
    ) -> Self {
        let batches = input_batches(data, indices, norm, device)
            .map(|x| crate::network::advance(&m.net, &m.fixed, &m.convs, None, x))
            .collect();
        BlockInputs { block: 0, batches }
    }

    /// The block these activations enter.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Log-probabilities of `m` run from this block on (see [`log_probs`]).
    pub fn log_probs(&self, m: &LoadedNet<B>) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for x in &self.batches {
            out.extend(log_softmax_rows(crate::network::forward_from(
                &m.net,
                &m.fixed,
                &m.convs,
                self.block,
                x.clone(),
            ))?);
        }
        Ok(out)
    }

    /// On through this block with `m`'s convs: the activations entering the next one.
    pub fn advance(&mut self, m: &LoadedNet<B>) {
        let k = self.block;
        self.batches = std::mem::take(&mut self.batches)
            .into_iter()
            .map(|x| crate::network::advance(&m.net, &m.fixed, &m.convs, Some(k), x))
            .collect();
        self.block += 1;
    }
}

/// Mean KL divergence `KL(p || q)` (nats) over rows of `classes` log-probabilities.
pub fn mean_kl(log_p: &[f32], log_q: &[f32], classes: usize) -> f64 {
    let rows = (log_p.len() / classes.max(1)).max(1);
    let total: f64 = log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| f64::from(lp).exp() * (f64::from(lp) - f64::from(lq)))
        .sum();
    total / rows as f64
}

/// Accuracy in percent of `pred` against the labels of `indices`.
pub fn accuracy(pred: &[u32], data: &Dataset, indices: &[usize]) -> (usize, f64) {
    let correct = pred
        .iter()
        .zip(indices)
        .filter(|(p, i)| **p == data.labels[**i])
        .count();
    (
        correct,
        100.0 * correct as f64 / indices.len().max(1) as f64,
    )
}

/// FGSM accuracy: one signed-gradient step of size `eps` (in pixel units, images in [0, 1]).
fn fgsm_accuracy<B: TrainBackend>(
    path: &Path,
    data: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    eps: f64,
    device: &B::Device,
) -> Result<f64> {
    let m = LoadedNet::<B>::load(path, device)?;
    let c = data.shape[0];
    let (mean, std): (Vec<f32>, Vec<f32>) = norm.per_channel(c).into_iter().unzip();
    let per_channel = |v: Vec<f32>| -> Tensor<B::InnerBackend, 4> {
        Tensor::from_data(TensorData::new(v, [1, c, 1, 1]), device)
    };
    let (std_t, mean_t) = (per_channel(std), per_channel(mean));
    let lo = mean_t.clone().neg() / std_t.clone();
    let hi = (mean_t.neg() + 1.0) / std_t.clone();
    let mut correct = 0usize;
    for chunk in indices.chunks(EVAL_BATCH) {
        let (x, labels) = data.batch(chunk, norm);
        let n = chunk.len();
        let x: Tensor<B, 4> = input_tensor(x, n, data.shape, device).require_grad();
        let y: Tensor<B, 1, Int> = Tensor::from_data(
            TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]),
            device,
        );
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(device)
            .forward(m.logits(x.clone()), y);
        let grads = loss.backward();
        let g = x
            .grad(&grads)
            .ok_or_else(|| Error::Training("no input gradient".into()))?;
        // A step of eps in pixel space is eps / std in normalised space; stay in the valid range.
        let step = g.sign() * (std_t.clone().recip() * eps);
        let adv = (x.inner() + step).max_pair(lo.clone()).min_pair(hi.clone());
        let model = LoadedNet::<B::InnerBackend>::load(path, device)?;
        let pred = argmax(model.logits(adv))?;
        correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    Ok(100.0 * correct as f64 / indices.len().max(1) as f64)
}

/// Options of `nernc eval`.
pub struct EvalOptions {
    pub norm: Normalization,
    pub fgsm: Option<f64>,
    pub device: DeviceKind,
    /// Evaluate the model with its conv weights quantised per output channel (the plain
    /// baseline, [`crate::baseline`]); the unquantised model is the default reference.
    pub quantize: Option<QuantBits>,
}

/// `path` (a `.safetensors`) with every 4-D tensor quantised as [`crate::baseline`] does, and
/// what the baseline would store.
fn quantized_net<B: ConvBackend>(
    path: &Path,
    bits: QuantBits,
    device: &B::Device,
) -> Result<(LoadedNet<B>, QuantizedSize)> {
    let file = crate::io::MappedFile::open(path)?;
    if file.bytes().starts_with(&crate::format::MAGIC) {
        return Err(Error::InvalidArgument(format!(
            "--quantize applies to a .safetensors checkpoint; {} is a .nern",
            path.display()
        )));
    }
    let ck = crate::checkpoint::parse_safetensors(path, file.bytes())?;
    let (size, weights) = baseline::quantize(&ck, file.bytes().len() as u64, bits)?;
    let mut host = HostModel::from_tensors(&ck.tensors);
    host.values.extend(weights);
    Ok((LoadedNet::from_host(&host, device)?, size))
}

fn score<B: TrainBackend>(
    path: &Path,
    loaded: Option<LoadedNet<B::InnerBackend>>,
    data: &Dataset,
    indices: &[usize],
    opts: &EvalOptions,
    device: &B::Device,
) -> Result<(ModelScore, Vec<u32>)> {
    let m = match loaded {
        Some(m) => m,
        None => LoadedNet::<B::InnerBackend>::load(path, device)?,
    };
    check_fit(&m.net, data, &path.display().to_string())?;
    let pred = predict(&m, data, indices, &opts.norm, device)?;
    let (correct, acc) = accuracy(&pred, data, indices);
    let fgsm_accuracy = match opts.fgsm {
        Some(eps) => Some(fgsm_accuracy::<B>(
            path, data, indices, &opts.norm, eps, device,
        )?),
        None => None,
    };
    Ok((
        ModelScore {
            path: path.to_path_buf(),
            architecture: m.net.describe(),
            correct,
            accuracy: acc,
            fgsm_accuracy,
        },
        pred,
    ))
}

fn run<B: TrainBackend>(
    model: &Path,
    reference: Option<&Path>,
    data: &Dataset,
    split: &str,
    opts: &EvalOptions,
    device: &B::Device,
) -> Result<EvalReport> {
    let started = Instant::now();
    let indices: Vec<usize> = (0..data.len()).collect();
    let (quantized, loaded) = match opts.quantize {
        Some(bits) => {
            let (net, size) = quantized_net::<B::InnerBackend>(model, bits, device)?;
            (Some(size), Some(net))
        }
        None => (None, None),
    };
    let (model_score, pred) = score::<B>(model, loaded, data, &indices, opts, device)?;
    // A quantised model is compared with the model itself unless told otherwise.
    let reference = reference.or(quantized.as_ref().map(|_| model));
    let (reference, difference, agreement) = match reference {
        Some(r) => {
            let (s, rp) = score::<B>(r, None, data, &indices, opts, device)?;
            let agree = pred.iter().zip(&rp).filter(|(a, b)| a == b).count();
            let diff = model_score.accuracy - s.accuracy;
            (
                Some(s),
                Some(diff),
                Some(100.0 * agree as f64 / indices.len().max(1) as f64),
            )
        }
        None => (None, None, None),
    };
    Ok(EvalReport {
        dataset: data.kind.name().to_string(),
        split: split.to_string(),
        images: data.len(),
        model: model_score,
        reference,
        difference,
        agreement,
        fgsm_epsilon: opts.fgsm,
        quantized,
        device: opts.device.name().to_string(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `run` as a job for [`run_on`].
struct EvalJob<'a> {
    model: &'a Path,
    reference: Option<&'a Path>,
    data: &'a Dataset,
    split: &'a str,
    opts: &'a EvalOptions,
}

impl BackendJob for EvalJob<'_> {
    type Output = EvalReport;
    fn run<B: TrainBackend>(self, device: &B::Device) -> Result<EvalReport> {
        run::<B>(
            self.model,
            self.reference,
            self.data,
            self.split,
            self.opts,
            device,
        )
    }
}

/// Evaluates `model` (and `reference`) on `data`.
pub fn evaluate(
    model: &Path,
    reference: Option<&Path>,
    data: &Dataset,
    split: &str,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    opts.norm.validate(data.shape[0])?;
    if opts.quantize.is_some() && opts.fgsm.is_some() {
        return Err(Error::InvalidArgument(
            "--fgsm and --quantize cannot be combined".into(),
        ));
    }
    let job = EvalJob {
        model,
        reference,
        data,
        split,
        opts,
    };
    run_on(opts.device, job)
}

#[cfg(test)]
mod tests {
    use super::mean_kl;

    /// KL(p || p) is 0; two rows, one differing: half that row's divergence.
    #[test]
    fn mean_kl_of_log_probabilities() {
        let ln = |v: &[f64]| v.iter().map(|x| x.ln() as f32).collect::<Vec<_>>();
        let p = ln(&[0.5, 0.5, 0.9, 0.1]);
        assert_eq!(mean_kl(&p, &p, 2), 0.0);
        let q = ln(&[0.25, 0.75, 0.9, 0.1]);
        let row: f64 = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((mean_kl(&p, &q, 2) - row / 2.0).abs() < 1e-6);
    }
}
