//! Functional ResNet forward pass in burn, driven by a checkpoint's own tensors (BatchNorm in
//! inference form with the running statistics). Conv weights are passed separately so that the
//! same code runs the original, the decoded and the predictor-driven network.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::{Tensor, TensorData};

use crate::arch::{BN_EPS, Block, Conv, Network, Norm, Shortcut, recognize};
use crate::checkpoint::parse_safetensors;
use crate::device::ConvBackend;
use crate::error::{Error, Result};
use crate::format::{Limits, RawTensor, TensorDtype, read_container};
use crate::io::MappedFile;

/// All tensors of a checkpoint as f32 (integer tensors such as `num_batches_tracked` are only
/// kept as shapes), from a `.safetensors` or a decoded `.nern`.
#[derive(Clone, Debug)]
pub struct HostModel {
    pub shapes: BTreeMap<String, Vec<usize>>,
    pub values: HashMap<String, Vec<f32>>,
}

impl HostModel {
    fn insert(&mut self, name: &str, dtype: TensorDtype, shape: Vec<usize>, bytes: &[u8]) {
        if dtype == TensorDtype::F32 {
            self.values
                .insert(name.to_string(), crate::format::le_f32s(bytes));
        }
        self.shapes.insert(name.to_string(), shape);
    }

    /// Loads `.safetensors` or `.nern` (decoded in memory), told apart by the file's magic.
    pub fn load(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let mut m = HostModel {
            shapes: BTreeMap::new(),
            values: HashMap::new(),
        };
        if file.bytes().starts_with(&crate::format::MAGIC) {
            let c = read_container(file.bytes(), &Limits::default())?;
            let tensors = crate::decode::decode_container(&c, crate::decode::default_threads())?;
            for (name, t) in tensors {
                match t {
                    crate::decode::DecodedTensor::Predicted { shape, data }
                    | crate::decode::DecodedTensor::Widened { shape, data } => {
                        m.shapes.insert(name.clone(), shape);
                        m.values.insert(name, data);
                    }
                    crate::decode::DecodedTensor::Passthrough(e, bytes) => {
                        let shape = e.shape.iter().map(|&d| d as usize).collect();
                        m.insert(&name, e.dtype, shape, bytes);
                    }
                }
            }
        } else {
            m = Self::from_tensors(&parse_safetensors(path, file.bytes())?.tensors);
        }
        Ok(m)
    }

    /// The model of already parsed safetensors tensors.
    pub fn from_tensors(tensors: &[RawTensor<'_>]) -> Self {
        let mut m = HostModel {
            shapes: BTreeMap::new(),
            values: HashMap::new(),
        };
        for t in tensors {
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            m.insert(&t.name, t.dtype, shape, t.bytes);
        }
        m
    }

    pub fn network(&self) -> Result<Network> {
        recognize(&self.shapes)
    }

    pub fn f32(&self, name: &str) -> Result<&[f32]> {
        self.values
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: "non-F32".into(),
                why: "the forward pass needs F32 parameters",
            })
    }
}

/// The fixed (non-conv) parameters on a device. Each conv's BN is folded into it: the weight is
/// scaled per output channel and BN's shift (plus any conv bias) becomes the conv's bias. Scaling
/// the small weight tensor instead of every activation map is what makes the CPU forward and
/// backward fast (burn Flex broadcasts per-channel ops element by element).
#[derive(Clone)]
pub struct FixedParams<B: Backend> {
    /// Per conv weight name: BN scale `[out, 1, 1, 1]` and folded bias `[out]`.
    folded: HashMap<String, (Tensor<B, 4>, Tensor<B, 1>)>,
    fc_weight: Tensor<B, 2>,
    fc_bias: Option<Tensor<B, 1>>,
}

fn tensor1<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

/// The tensors a conv's BatchNorm folds from: BN weight, bias, running mean and variance, and
/// the conv's own bias if it has one.
struct NormTensors<'a> {
    g: &'a [f32],
    b: &'a [f32],
    mean: &'a [f32],
    var: &'a [f32],
    conv_bias: Option<&'a [f32]>,
}

impl<'a> NormTensors<'a> {
    fn read(m: &'a HostModel, c: &Conv, n: &Norm) -> Result<Self> {
        Ok(NormTensors {
            g: m.f32(&n.tensor("weight"))?,
            b: m.f32(&n.tensor("bias"))?,
            mean: m.f32(&n.tensor("running_mean"))?,
            var: m.f32(&n.tensor("running_var"))?,
            conv_bias: match &c.bias {
                Some(name) => Some(m.f32(name)?),
                None => None,
            },
        })
    }
}

impl<B: Backend> FixedParams<B> {
    pub fn new(net: &Network, m: &HostModel, device: &B::Device) -> Result<Self> {
        let mut folded = HashMap::new();
        let mut fold = |c: &Conv, n: &Norm| -> Result<()> {
            let NormTensors {
                g,
                b,
                mean,
                var,
                conv_bias,
            } = NormTensors::read(m, c, n)?;
            let scale: Vec<f32> = g
                .iter()
                .zip(var)
                .map(|(g, v)| g / (v + BN_EPS).sqrt())
                .collect();
            // BN(conv + cb) = conv * s + (cb * s + b - mean * s)
            let bias: Vec<f32> = (0..scale.len())
                .map(|i| {
                    let cb = conv_bias.map_or(0.0, |v| v[i]);
                    (cb - mean[i]) * scale[i] + b[i]
                })
                .collect();
            let c_out = scale.len();
            let scale = Tensor::from_data(TensorData::new(scale, [c_out, 1, 1, 1]), device);
            folded.insert(c.weight.clone(), (scale, tensor1(&bias, device)));
            Ok(())
        };
        for (c, n) in net.conv_norms() {
            fold(c, n)?;
        }
        let w = m.f32(&net.fc_weight)?;
        let fc_weight = Tensor::<B, 2>::from_data(
            TensorData::new(w.to_vec(), [net.num_classes, net.features]),
            device,
        )
        .transpose();
        let fc_bias = match &net.fc_bias {
            Some(b) => Some(tensor1(m.f32(b)?, device)),
            None => None,
        };
        Ok(FixedParams {
            folded,
            fc_weight,
            fc_bias,
        })
    }
}

impl<B: Backend> FixedParams<B> {
    /// The parameters with each conv's folded BN scale multiplied by a per-channel gain and its
    /// folded bias shifted, and deltas added to the FC weight `[features, classes]` and bias:
    /// what phase 2 trains when it tunes the passthrough (`--passthrough tuned`).
    pub fn adjusted(
        &self,
        convs: &[(&str, Tensor<B, 1>, Tensor<B, 1>)],
        fc_weight_delta: Tensor<B, 2>,
        fc_bias_delta: Option<Tensor<B, 1>>,
    ) -> Self {
        let mut folded = self.folded.clone();
        for (name, gain, shift) in convs {
            let (scale, bias) = &self.folded[*name];
            let c_out = gain.dims()[0];
            folded.insert(
                name.to_string(),
                (
                    scale.clone() * gain.clone().reshape([c_out, 1, 1, 1]),
                    bias.clone() + shift.clone(),
                ),
            );
        }
        FixedParams {
            folded,
            fc_weight: self.fc_weight.clone() + fc_weight_delta,
            fc_bias: match (&self.fc_bias, fc_bias_delta) {
                (Some(b), Some(d)) => Some(b.clone() + d),
                (b, _) => b.clone(),
            },
        }
    }
}

/// The BatchNorm and FC tensors of `m` after [`FixedParams::adjusted`] with host values: each
/// BN's `weight` becomes `weight * gain` and its `bias` absorbs the shift (the folded bias
/// `(conv_bias - mean) * scale * gain + bias'` equals the adjusted one), the FC weight
/// `[classes, features]` and bias get their deltas. `convs` holds (gain, shift) per conv in
/// [`Network::conv_norms`] order. Returns the changed tensors by name.
pub fn adjusted_tensors(
    net: &Network,
    m: &HostModel,
    convs: &[(Vec<f32>, Vec<f32>)],
    fc_weight_delta: &[f32],
    fc_bias_delta: Option<&[f32]>,
) -> Result<Vec<(String, Vec<f32>)>> {
    let mut out = Vec::new();
    for ((c, n), (gain, shift)) in net.conv_norms().into_iter().zip(convs) {
        let t = NormTensors::read(m, c, n)?;
        let mut new_g = Vec::with_capacity(t.g.len());
        let mut new_b = Vec::with_capacity(t.g.len());
        for i in 0..t.g.len() {
            let scale = t.g[i] / (t.var[i] + BN_EPS).sqrt();
            let centred = t.conv_bias.map_or(0.0, |v| v[i]) - t.mean[i];
            new_g.push(t.g[i] * gain[i]);
            new_b.push(t.b[i] + shift[i] + centred * scale * (1.0 - gain[i]));
        }
        out.push((n.tensor("weight"), new_g));
        out.push((n.tensor("bias"), new_b));
    }
    // The delta is in the forward pass's `[features, classes]` layout.
    let w = m.f32(&net.fc_weight)?;
    let (classes, features) = (net.num_classes, net.features);
    let mut new_w = w.to_vec();
    for k in 0..classes {
        for f in 0..features {
            new_w[k * features + f] += fc_weight_delta[f * classes + k];
        }
    }
    out.push((net.fc_weight.clone(), new_w));
    if let (Some(name), Some(d)) = (&net.fc_bias, fc_bias_delta) {
        let b = m.f32(name)?;
        out.push((name.clone(), b.iter().zip(d).map(|(b, d)| b + d).collect()));
    }
    Ok(out)
}

/// The checkpoint's own conv weights on a device.
pub fn host_convs<B: Backend>(
    net: &Network,
    m: &HostModel,
    device: &B::Device,
) -> Result<HashMap<String, Tensor<B, 4>>> {
    let mut out = HashMap::new();
    for name in net.conv_weights() {
        let s = &m.shapes[name];
        let v = m.f32(name)?.to_vec();
        out.insert(
            name.to_string(),
            Tensor::from_data(TensorData::new(v, [s[0], s[1], s[2], s[3]]), device),
        );
    }
    Ok(out)
}

/// `act(BN(conv(x)) + residual)` with BN folded into the conv (see [`FixedParams`]): the
/// residual added when given, then ReLU when `relu`, in one [`ConvBackend::conv2d_block`].
fn conv_norm<B: ConvBackend>(
    x: Tensor<B, 4>,
    c: &Conv,
    (convs, fixed): (&HashMap<String, Tensor<B, 4>>, &FixedParams<B>),
    residual: Option<Tensor<B, 4>>,
    relu: bool,
) -> Tensor<B, 4> {
    let (scale, bias) = &fixed.folded[&c.weight];
    let w = convs[&c.weight].clone() * scale.clone();
    B::conv2d_block(x, w, bias.clone(), c.stride, c.padding, residual, relu)
}

/// Logits `[batch, classes]` for NCHW input `x`. `convs` maps every conv weight name
/// (`Network::conv_weights`) to its tensor.
pub fn forward<B: ConvBackend>(
    net: &Network,
    fixed: &FixedParams<B>,
    convs: &HashMap<String, Tensor<B, 4>>,
    x: Tensor<B, 4>,
) -> Tensor<B, 2> {
    forward_tapped(net, fixed, convs, x, None)
}

/// [`forward`], also returning every residual block's output (after its ReLU), in order.
pub fn forward_with_blocks<B: ConvBackend>(
    net: &Network,
    fixed: &FixedParams<B>,
    convs: &HashMap<String, Tensor<B, 4>>,
    x: Tensor<B, 4>,
) -> (Tensor<B, 2>, Vec<Tensor<B, 4>>) {
    let mut blocks = Vec::with_capacity(net.blocks.len());
    let logits = forward_tapped(net, fixed, convs, x, Some(&mut blocks));
    (logits, blocks)
}

/// Spatial attention maps of activations `[batch, c, h, w]` (Zagoruyko and Komodakis): the
/// channel mean of the squares, flattened and scaled to unit L2 norm per sample, `[batch, h w]`.
pub fn attention_map<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, _, h, w] = x.dims();
    let a = x.powf_scalar(2.0).mean_dim(1).reshape([b, h * w]);
    let norm = a
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .add_scalar(1e-6);
    a / norm
}

fn forward_tapped<B: ConvBackend>(
    net: &Network,
    fixed: &FixedParams<B>,
    convs: &HashMap<String, Tensor<B, 4>>,
    x: Tensor<B, 4>,
    mut taps: Option<&mut Vec<Tensor<B, 4>>>,
) -> Tensor<B, 2> {
    let mut x = stem(net, (convs, fixed), x);
    for b in &net.blocks {
        x = block(b, (convs, fixed), x);
        if let Some(t) = taps.as_deref_mut() {
            t.push(x.clone());
        }
    }
    head(fixed, x)
}

/// The activations entering block `first` (the stem's output for 0), then the logits of
/// [`forward`] from there: `forward_from(net, f, c, k, x_k)` equals `forward(net, f, c, x)` when
/// `x_k` is what `x` makes before block `k` (the same operations on the same values), so a
/// change to the convs of block `k` or later needs only this part run again.
pub fn forward_from<B: ConvBackend>(
    net: &Network,
    fixed: &FixedParams<B>,
    convs: &HashMap<String, Tensor<B, 4>>,
    first: usize,
    mut x: Tensor<B, 4>,
) -> Tensor<B, 2> {
    for b in &net.blocks[first.min(net.blocks.len())..] {
        x = block(b, (convs, fixed), x);
    }
    head(fixed, x)
}

/// What enters block `k + 1` given what enters block `k` (`None`: the input image, giving the
/// stem's output, which enters block 0).
pub fn advance<B: ConvBackend>(
    net: &Network,
    fixed: &FixedParams<B>,
    convs: &HashMap<String, Tensor<B, 4>>,
    k: Option<usize>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    match k {
        None => stem(net, (convs, fixed), x),
        Some(k) => block(&net.blocks[k], (convs, fixed), x),
    }
}

/// The index of the residual block holding the conv weight `name` (a layer or its projection
/// shortcut); `None` for the stem or a name the network does not use.
pub fn block_of(net: &Network, name: &str) -> Option<usize> {
    net.blocks.iter().position(|b| {
        b.layers.iter().any(|(c, _)| c.weight == name)
            || matches!(&b.shortcut, Shortcut::Projection { conv, .. } if conv.weight == name)
    })
}

type Params<'a, B> = (&'a HashMap<String, Tensor<B, 4>>, &'a FixedParams<B>);

fn stem<B: ConvBackend>(net: &Network, params: Params<'_, B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let (c, _) = &net.stem;
    let x = conv_norm(x, c, params, None, true);
    if net.max_pool {
        max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false)
    } else {
        x
    }
}

fn block<B: ConvBackend>(b: &Block, params: Params<'_, B>, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
    let input = x.clone();
    let Some(((last, _), inner)) = b.layers.split_last() else {
        return x;
    };
    for (c, _) in inner {
        x = conv_norm(x, c, params, None, true);
    }
    let shortcut = match &b.shortcut {
        Shortcut::Identity => input,
        Shortcut::Projection { conv: c, .. } => conv_norm(input, c, params, None, false),
        Shortcut::ZeroPad {
            stride,
            before,
            after,
        } => {
            let sub = if *stride > 1 {
                max_pool2d(input, [1, 1], [*stride; 2], [0, 0], [1, 1], false)
            } else {
                input
            };
            let [bsz, _, h, w] = sub.dims();
            let device = sub.device();
            let mut parts = Vec::new();
            if *before > 0 {
                parts.push(Tensor::zeros([bsz, *before, h, w], &device));
            }
            parts.push(sub);
            if *after > 0 {
                parts.push(Tensor::zeros([bsz, *after, h, w], &device));
            }
            Tensor::cat(parts, 1)
        }
    };
    // The block's last conv, the shortcut's add and the ReLU in one step.
    conv_norm(x, last, params, Some(shortcut), true)
}

fn head<B: ConvBackend>(fixed: &FixedParams<B>, x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [bsz, ch, _, _] = x.dims();
    let pooled = x.mean_dim(3).mean_dim(2).reshape([bsz, ch]);
    let logits = pooled.matmul(fixed.fc_weight.clone());
    match &fixed.fc_bias {
        Some(b) => logits + b.clone().unsqueeze::<2>(),
        None => logits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attention map is the channel mean of the squares, one unit-norm row per image.
    #[test]
    fn attention_maps_are_unit_norm_channel_means_of_squares() {
        type B = burn::backend::Flex;
        let device = Default::default();
        // Two images, two channels, 1 x 2 pixels.
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(
                vec![3.0f32, 0.0, 4.0, 0.0, 1.0, 1.0, 1.0, 1.0],
                [2, 2, 1, 2],
            ),
            &device,
        );
        let a = attention_map(x).into_data().into_vec::<f32>().unwrap();
        // Image 0: means of squares (9 + 16) / 2 and 0 -> (1, 0). Image 1: (1, 1) / sqrt 2.
        let want = [1.0, 0.0, 0.5f32.sqrt(), 0.5f32.sqrt()];
        for (g, w) in a.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{a:?}");
        }
    }
}
