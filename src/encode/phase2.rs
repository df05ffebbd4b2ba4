//! Phase 2: distillation. Fine-tune the phase-1 predictor with logit distillation only (optionally plus a small
//! reconstruction term). Gradients flow from the student's logits through the functional
//! convolutions into the predictor; the teacher is the original or any network with the same
//! classes. Selection uses a held-out part of the training split, never the test split.

use std::collections::HashMap;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::coded::{CodedConv, CodedParams, decoded_coded};
use super::kernels::KernelSet;
use super::mlp::{DeviceKernels, KernelRows, Mlp, masked_rmse, read_scalar};
use super::options::{DistillOptions, DistillSource};
use super::progress::Progress;
use super::schedule::{PHASE2_FLOOR, cosine, warmed_up};
use super::selection::DataPlan;
use super::selection::{HeldOut, held_out_accuracy};
use super::tune::{PassTune, TunedPassthrough};
use crate::data::{Augment, Dataset, DatasetKind, Normalization, noise_batch};
use crate::device::TrainBackend;
use crate::error::{Error, Result};
use crate::eval::{LoadedNet, input_tensor};
use crate::format::LayerEntry;
use crate::network::{FixedParams, HostModel, attention_map, forward, forward_with_blocks};
use crate::permute::Permutation;
use crate::predictor::{Predictor, WeightDtype};
use crate::rng::SplitMix64;

/// Where phase-2 inputs come from.
pub enum DistillInput<'a> {
    /// Real images: the training split and the indices phase 2 may use (held-out excluded).
    Real {
        data: &'a Dataset,
        indices: &'a [usize],
    },
    /// Uniform noise of the dataset's shape (data-free distillation).
    Noise { shape: [usize; 3] },
}

impl<'a> DistillInput<'a> {
    /// The inputs `d` asks for: the training images phase 2 may use (held-out ones excluded),
    /// or noise shaped like `dataset`'s images with the network's `in_channels`.
    pub fn for_options(
        d: &DistillOptions,
        plan: Option<&'a DataPlan>,
        dataset: DatasetKind,
        in_channels: usize,
    ) -> Result<Self> {
        match (d.source, plan) {
            (DistillSource::Data, Some(p)) => {
                let [_, h, w] = p.train.shape;
                if d.augment.shift >= h.min(w) {
                    return Err(Error::InvalidArgument(format!(
                        "--augment-shift {} does not fit {h}x{w} images",
                        d.augment.shift
                    )));
                }
                Ok(DistillInput::Real {
                    data: &p.train,
                    indices: &p.train_idx,
                })
            }
            (DistillSource::Data, None) => Err(Error::InvalidArgument(
                "distillation on real data needs --data DIR".into(),
            )),
            (DistillSource::Noise, _) if !d.augment.is_none() => Err(Error::InvalidArgument(
                "--augment-shift/--augment-flip apply to real data, not noise".into(),
            )),
            (DistillSource::Noise, _) => {
                let mut shape = dataset.image_shape();
                shape[0] = in_channels;
                Ok(DistillInput::Noise { shape })
            }
        }
    }
}

pub struct DistillSettings<'a> {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub temperature: f64,
    pub recon_weight: f64,
    /// Weight of the cross-entropy on the true labels (real data only).
    pub label_weight: f64,
    /// Weight of the attention-map term (every residual block's map against the teacher's).
    pub feature_weight: f64,
    pub eval_every: usize,
    /// No held-out evaluation before this step (besides step 0): early states are never the
    /// best ones, and each evaluation costs several training steps.
    pub eval_from: usize,
    /// Linear learning-rate warm-up steps (0: none).
    pub warmup: usize,
    pub norm: &'a Normalization,
    pub input: DistillInput<'a>,
    pub held_out: Option<HeldOut<'a>>,
    /// Storage dtype of the result. Int8 and int4 train through their rounding (straight-through) and
    /// every held-out figure is of the weights as they will be stored.
    pub storage: WeightDtype,
    /// Augmentation of real phase-2 images (none for noise).
    pub augment: Augment,
    /// Also train the BN affine parameters and the FC layer (`--passthrough tuned`).
    pub tune: Option<TuneSettings>,
    /// Peak learning rate of the coded convs' values (`--code-lr`; used when there are any).
    pub coded_lr: f64,
    /// By how many bytes a candidate's file is over the size budget (`--target-size`): a
    /// held-out check keeps a state over it only while no state within it was seen, since
    /// trained codes compress differently from those the file was sized with.
    pub fits: Option<OverBudget<'a>>,
}

/// By how many bytes the file with this predictor, tuned passthrough and coded convs is over a
/// budget (0: within it).
pub type OverBudget<'a> =
    &'a dyn Fn(&Predictor, Option<&TunedPassthrough>, &[CodedConv]) -> Result<u64>;

/// Whether a held-out check's state `(fits, accuracy)` replaces the kept one: a state within
/// the budget beats any over it, then the higher accuracy wins.
fn replaces(candidate: (bool, f64), kept: (bool, f64)) -> bool {
    (candidate.0 && !kept.0) || (candidate.0 == kept.0 && candidate.1 > kept.1)
}

/// How phase 2 tunes the passthrough.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TuneSettings {
    /// Peak Adam learning rate of the corrections (same cosine schedule as the predictor's).
    pub lr: f64,
    /// The passthrough is stored as binary16: every candidate is rounded so before it is measured.
    pub f16: bool,
}

pub struct DistillOutcome {
    pub predictor: Predictor,
    /// (step, loss) at evenly spaced steps.
    pub loss_history: Vec<(usize, f32)>,
    /// (step, held-out accuracy %) at each evaluation; step 0 is the phase-1 predictor.
    pub held_out_history: Vec<(usize, f64)>,
    /// Step of the kept state (by held-out accuracy, or the last step without held-out data).
    pub best_step: usize,
    /// The kept state's tuned passthrough tensors (with [`DistillSettings::tune`]).
    pub passthrough: Option<TunedPassthrough>,
    /// Images the teacher forward ran on (fewer than steps x batch with the logit cache).
    pub teacher_images: usize,
    /// The kept state's coded convs (`--code`; empty without).
    pub coded: Vec<CodedConv>,
    /// Held-out checks whose state was over the size budget ([`DistillSettings::fits`]).
    pub over_budget: usize,
    /// The most bytes a checked state was over the budget by.
    pub over_budget_bytes: u64,
}

/// Maps position-ordered predictions `[N, K*K]` to every layer's conv weight, original order.
struct KernelLayout<B: Backend> {
    /// Row (position order) of each kernel in original order, all layers concatenated.
    gather: Tensor<B, 1, Int>,
    /// (name, start row, shape) per layer.
    layers: Vec<(String, usize, [usize; 4])>,
    big: usize,
}

impl<B: Backend> KernelLayout<B> {
    fn new(layers: &[LayerEntry], perms: &[Permutation], big: usize, device: &B::Device) -> Self {
        let total: usize = layers.iter().map(LayerEntry::kernels).sum();
        let mut gather = vec![0i32; total];
        let mut out = Vec::new();
        let mut start = 0;
        for (l, p) in layers.iter().zip(perms) {
            for (pos, orig) in p.originals(l.cout(), l.cin()).enumerate() {
                gather[start + orig] = (start + pos) as i32;
            }
            out.push((l.name.clone(), start, l.shape.map(|d| d as usize)));
            start += l.kernels();
        }
        KernelLayout {
            gather: Tensor::from_data(TensorData::new(gather, [total]), device),
            layers: out,
            big,
        }
    }

    fn convs(&self, pred: Tensor<B, 2>) -> HashMap<String, Tensor<B, 4>> {
        let ordered = pred.select(0, self.gather.clone());
        let big = self.big;
        self.layers
            .iter()
            .map(|(name, start, s)| {
                let n = s[0] * s[1];
                let k = s[2];
                let rows = ordered.clone().slice([*start..*start + n, 0..big * big]);
                let w = if k == big {
                    rows.reshape([s[0], s[1], k, k])
                } else {
                    let off = (big - k) / 2;
                    rows.reshape([n, big, big])
                        .slice([0..n, off..off + k, off..off + k])
                        .reshape([s[0], s[1], k, k])
                };
                (name.clone(), w)
            })
            .collect()
    }
}

/// The teacher's logits of training images, computed the first time an image is drawn (in one
/// forward pass over the batch's new images) and reused after. BN runs on running statistics, so
/// an image's logits do not depend on the rest of its batch but for float rounding (measured:
/// about 1e-6 apart, the GEMMs block batches differently): the targets are the ones recomputing
/// them gives, to rounding, and the same seed still gives the same file. One cache serves every
/// phase-2 cycle of an encode (the teacher and the images do not change between cycles).
pub struct TeacherCache {
    classes: usize,
    logits: Vec<f32>,
    known: Vec<bool>,
    /// Images the teacher ran on so far.
    computed: usize,
}

impl TeacherCache {
    fn new(images: usize, classes: usize) -> Self {
        TeacherCache {
            classes,
            logits: vec![0.0; images * classes],
            known: vec![false; images],
            computed: 0,
        }
    }

    /// Logits `[pick.len(), classes]` of the images `pick` of `data`.
    fn logits<B: crate::device::ConvBackend>(
        &mut self,
        teacher: &LoadedNet<B>,
        data: &Dataset,
        pick: &[usize],
        norm: &Normalization,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let mut missing: Vec<usize> = pick.iter().copied().filter(|&i| !self.known[i]).collect();
        missing.sort_unstable();
        missing.dedup();
        self.computed += missing.len();
        if !missing.is_empty() {
            let x = input_tensor::<B>(
                data.batch(&missing, norm).0,
                missing.len(),
                data.shape,
                device,
            );
            let fresh = teacher
                .logits(x)
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| Error::Training(format!("{e:?}")))?;
            let k = self.classes;
            for (row, &i) in fresh.chunks_exact(k).zip(&missing) {
                self.logits[i * k..(i + 1) * k].copy_from_slice(row);
                self.known[i] = true;
            }
        }
        let k = self.classes;
        let mut out = Vec::with_capacity(pick.len() * k);
        for &i in pick {
            out.extend_from_slice(&self.logits[i * k..(i + 1) * k]);
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [pick.len(), k]),
            device,
        ))
    }
}

/// Runs phase 2 from `start` (the phase-1 predictor) and `coded` (the coded convs' values, if
/// any: trained beside it).
#[allow(clippy::too_many_arguments)]
pub fn distill<B: TrainBackend>(
    device: &B::Device,
    start: &Predictor,
    coded: &[CodedConv],
    set: &KernelSet,
    layers: &[LayerEntry],
    perms: &[Permutation],
    source: &HostModel,
    student: &LoadedNet<B::InnerBackend>,
    start_accuracy: Option<f64>,
    teacher: &LoadedNet<B::InnerBackend>,
    s: &DistillSettings<'_>,
    seed: u64,
    teacher_cache: &mut Option<TeacherCache>,
    progress: &dyn Progress,
) -> Result<DistillOutcome> {
    let cfg = &start.config;
    let mut rng = SplitMix64::new(seed);
    let kernels = DeviceKernels::<B>::new(cfg, set, device);
    let all_rows = KernelRows::all(set, &kernels, device);
    let layout = KernelLayout::<B>::new(layers, perms, cfg.kernel_size as usize, device);
    let net = &student.net;
    // The autodiff copy of the fixed parameters; held-out checks use the caller's `student`.
    let fixed = FixedParams::<B>::new(net, source, device)?;
    let mut model = Mlp::<B>::from_predictor(start, device);
    let adam = AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8);
    let mut optim = adam.init::<B, Mlp<B>>();
    let mut tune = s.tune.map(|_| {
        (
            PassTune::<B>::new(net, source, device),
            adam.init::<B, PassTune<B>>(),
        )
    });
    // The coded convs (`--code`) as trainable values, with their own Adam.
    let (mut codes, code_layout) = if coded.is_empty() {
        (None, None)
    } else {
        let (params, layout) = CodedParams::<B>::new(coded, device);
        (
            Some((params, adam.init::<B, CodedParams<B>>())),
            Some(layout),
        )
    };
    let codes_now = |codes: &Option<(CodedParams<B>, _)>| -> Result<Vec<CodedConv>> {
        match codes {
            Some((c, _)) => c.values(coded),
            None => Ok(Vec::new()),
        }
    };
    // The tuned passthrough as it would be stored now (with --passthrough tuned).
    let tuned_now = |tune: &Option<(PassTune<B>, _)>| -> Result<Option<TunedPassthrough>> {
        match (tune, s.tune) {
            (Some((t, _)), Some(ts)) => Ok(Some(t.stored(net, source, ts.f16)?)),
            _ => Ok(None),
        }
    };
    // Held-out accuracy of a candidate: with the caller's student, or one with its tuned
    // passthrough and its coded convs as stored.
    let measure =
        |p: &Predictor, pass: &Option<TunedPassthrough>, coded: &[CodedConv], h: &HeldOut<'_>| {
            if pass.is_none() && coded.is_empty() {
                return held_out_accuracy(p, layers, perms, student, h, s.norm, device);
            }
            let stored: Vec<_> = coded.iter().map(CodedConv::stored).collect();
            let candidate = LoadedNet::<B::InnerBackend> {
                net: net.clone(),
                fixed: match pass {
                    Some(t) => FixedParams::new(net, &t.apply(source), device)?,
                    None => student.fixed.clone(),
                },
                convs: decoded_coded(&stored, device)?,
            };
            held_out_accuracy(p, layers, perms, &candidate, h, s.norm, device)
        };

    // Every candidate is kept as stored, so the outcome's figures are of the stored weights.
    let stored = |mut p: Predictor| -> Result<Predictor> {
        p.store_as(s.storage)?;
        Ok(p)
    };
    let mut best = stored(start.clone())?;
    let mut best_pass = tuned_now(&tune)?;
    let mut best_coded = codes_now(&codes)?;
    let mut best_step = 0;
    let mut held_out_history = Vec::new();
    let mut best_acc = f64::NEG_INFINITY;
    let mut over_budget = 0;
    let mut over_budget_bytes = 0;
    let mut fits = |p: &Predictor, pass: &Option<TunedPassthrough>, coded: &[CodedConv]| {
        let over = match s.fits {
            Some(f) => f(p, pass.as_ref(), coded)?,
            None => 0,
        };
        over_budget += usize::from(over > 0);
        over_budget_bytes = over_budget_bytes.max(over);
        Ok::<_, Error>(over == 0)
    };
    let mut best_fits = true;
    if let Some(h) = &s.held_out {
        // Step 0 is the starting predictor; reuse its figure when the caller measured it on
        // the same storage.
        best_acc = match (start_accuracy, &best_pass) {
            (Some(a), None) if s.storage == WeightDtype::F32 => a,
            _ => measure(&best, &best_pass, &best_coded, h)?,
        };
        held_out_history.push((0, best_acc));
        best_fits = fits(&best, &best_pass, &best_coded)?;
    }
    let maps = s.feature_weight > 0.0;
    // (The pipeline refused a teacher with another number of blocks before phase 1.)
    debug_assert!(!maps || teacher.net.blocks.len() == net.blocks.len());
    // The teacher's logits of an un-augmented image never change: each is computed once (not
    // with the attention-map term, whose maps are recomputed every step). A cache the caller
    // kept from an earlier cycle of the same encode (same teacher, images and normalisation:
    // the caller's duty) is reused; one sized for another dataset is replaced.
    match &s.input {
        DistillInput::Real { data, .. } if s.augment.is_none() && !maps => {
            if teacher_cache
                .as_ref()
                .is_none_or(|c| c.known.len() != data.len() || c.classes != teacher.net.num_classes)
            {
                *teacher_cache = Some(TeacherCache::new(data.len(), teacher.net.num_classes));
            }
        }
        _ => *teacher_cache = None,
    }
    let cache = teacher_cache;
    let computed_before = cache.as_ref().map_or(0, |c| c.computed);
    let t = s.temperature;
    let mut loss_history = Vec::new();
    let report_every = (s.steps / 200).clamp(1, 10);
    let history_every = (s.steps / 20).max(1);
    progress.start(s.steps as u64);
    for step in 0..s.steps {
        if progress.cancelled() {
            return Err(Error::Cancelled);
        }
        let mut pick = Vec::new();
        let (x, shape) = match &s.input {
            DistillInput::Real { data, indices } => {
                pick = (0..s.batch)
                    .map(|_| indices[rng.below(indices.len() as u64) as usize])
                    .collect();
                let x = if s.augment.is_none() {
                    data.batch(&pick, s.norm).0
                } else {
                    data.batch_augmented(&pick, s.norm, s.augment, &mut rng).0
                };
                (x, data.shape)
            }
            DistillInput::Noise { shape } => {
                (noise_batch(s.batch, *shape, s.norm, rng.next_u64()), *shape)
            }
        };
        let x_inner = input_tensor::<B::InnerBackend>(x, s.batch, shape, device);
        let mut teacher_maps = Vec::new();
        let teacher_logits = match (cache.as_mut(), &s.input) {
            (Some(c), DistillInput::Real { data, .. }) => {
                c.logits(teacher, data, &pick, s.norm, device)?
            }
            _ if maps => {
                let (logits, blocks) = forward_with_blocks(
                    &teacher.net,
                    &teacher.fixed,
                    &teacher.convs,
                    x_inner.clone(),
                );
                teacher_maps = blocks.into_iter().map(attention_map).collect();
                logits
            }
            _ => teacher.logits(x_inner.clone()),
        };
        let target = softmax(Tensor::<B, 2>::from_inner(teacher_logits) / t, 1);
        let pred = match s.storage.max_code() {
            Some(max) => model.forward_quantized_ste(&kernels, &all_rows, max),
            None => model.forward(&kernels, &all_rows),
        };
        let mut convs = layout.convs(pred.clone());
        if let (Some((c, _)), Some(l)) = (&codes, &code_layout) {
            convs.extend(c.convs(l));
        }
        let step_fixed = match &tune {
            Some((t, _)) => t.apply(net, &fixed),
            None => fixed.clone(),
        };
        let (logits, blocks) = if maps {
            forward_with_blocks(net, &step_fixed, &convs, Tensor::from_inner(x_inner))
        } else {
            (
                forward(net, &step_fixed, &convs, Tensor::from_inner(x_inner)),
                Vec::new(),
            )
        };
        let logits_plain = logits.clone();
        let log_p = log_softmax(logits / t, 1);
        // KL(teacher || student), batch mean, scaled by T^2 so gradients keep their size.
        let kl = (target.clone() * (target.clamp_min(1e-12).log() - log_p)).sum() / s.batch as f64
            * (t * t);
        let mut loss = if s.recon_weight > 0.0 {
            kl + masked_rmse(pred, kernels.targets.clone(), kernels.masks.clone()) * s.recon_weight
        } else {
            kl
        };
        if let (true, DistillInput::Real { data, .. }) = (s.label_weight > 0.0, &s.input) {
            // Cross-entropy on the true labels (no temperature), batch mean.
            let classes = data.classes;
            let mut one_hot = vec![0.0f32; s.batch * classes];
            for (row, &i) in pick.iter().enumerate() {
                one_hot[row * classes + data.labels[i] as usize] = 1.0;
            }
            let one_hot =
                Tensor::<B, 2>::from_data(TensorData::new(one_hot, [s.batch, classes]), device);
            let ce = (one_hot * log_softmax(logits_plain, 1)).sum().neg() / s.batch as f64;
            loss = loss + ce * s.label_weight;
        }
        if maps {
            // Squared distance of the unit-norm maps, summed over blocks, batch mean.
            let mut distance = None;
            for (student_block, target) in blocks.into_iter().zip(teacher_maps) {
                let d = (attention_map(student_block) - Tensor::<B, 2>::from_inner(target))
                    .powf_scalar(2.0)
                    .sum();
                distance = Some(match distance {
                    Some(sum) => sum + d,
                    None => d,
                });
            }
            if let Some(d) = distance {
                loss = loss + d * (s.feature_weight / s.batch as f64);
            }
        }
        let want = step % report_every == 0 || step + 1 == s.steps;
        let value = if want {
            Some(read_scalar(loss.clone())?)
        } else {
            None
        };
        let mut grads = loss.backward();
        let model_grads = GradientsParams::from_module(&mut grads, &model);
        let lr = warmed_up(cosine(s.lr, PHASE2_FLOOR, step, s.steps), step, s.warmup);
        model = optim.step(lr, model, model_grads);
        if let (Some((t, opt)), Some(ts)) = (tune.take(), s.tune) {
            let g = GradientsParams::from_module(&mut grads, &t);
            let lr = warmed_up(cosine(ts.lr, PHASE2_FLOOR, step, s.steps), step, s.warmup);
            let mut opt = opt;
            tune = Some((opt.step(lr, t, g), opt));
        }
        if let Some((c, mut opt)) = codes.take() {
            let g = GradientsParams::from_module(&mut grads, &c);
            let lr = warmed_up(
                cosine(s.coded_lr, PHASE2_FLOOR, step, s.steps),
                step,
                s.warmup,
            );
            codes = Some((opt.step(lr, c, g), opt));
        }
        if let Some(v) = value {
            if !v.is_finite() {
                return Err(Error::Training(format!(
                    "distillation loss became {v} at step {step}"
                )));
            }
            if step % history_every == 0 || step + 1 == s.steps {
                loss_history.push((step, v));
            }
            progress.update(step as u64 + 1, v);
        }
        let done = step + 1;
        if let Some(h) = &s.held_out
            && (done % s.eval_every.max(1) == 0 || done == s.steps)
            && done >= s.eval_from
        {
            let p = stored(model.valid().to_predictor(cfg)?)?;
            let pass = tuned_now(&tune)?;
            let now_coded = codes_now(&codes)?;
            let acc = measure(&p, &pass, &now_coded, h)?;
            held_out_history.push((done, acc));
            let fit = fits(&p, &pass, &now_coded)?;
            if replaces((fit, acc), (best_fits, best_acc)) {
                best_acc = acc;
                best_fits = fit;
                best = p;
                best_pass = pass;
                best_coded = now_coded;
                best_step = done;
            }
        }
    }
    progress.finish();
    if s.held_out.is_none() {
        best = stored(model.valid().to_predictor(cfg)?)?;
        best_pass = tuned_now(&tune)?;
        best_coded = codes_now(&codes)?;
        best_step = s.steps;
    }
    Ok(DistillOutcome {
        teacher_images: cache
            .as_ref()
            .map_or(s.steps * s.batch, |c| c.computed - computed_before),
        predictor: best,
        passthrough: best_pass,
        coded: best_coded,
        loss_history,
        held_out_history,
        best_step,
        over_budget,
        over_budget_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TensorDtype;
    use crate::permute::PermutationKind;

    /// A state within the budget replaces any over it, whatever their accuracies; between two
    /// on the same side of it, only a strictly more accurate one replaces the kept one.
    #[test]
    fn states_within_the_budget_come_first() {
        assert!(replaces((true, 50.0), (false, 90.0)));
        assert!(!replaces((false, 90.0), (true, 50.0)));
        assert!(replaces((true, 60.0), (true, 50.0)));
        assert!(!replaces((true, 50.0), (true, 50.0)));
        assert!(replaces((false, 60.0), (false, 50.0)));
        assert!(replaces((true, 10.0), (true, f64::NEG_INFINITY)));
    }

    /// A cached logit is the one the teacher gives the image inside any other batch, to float
    /// rounding: the cache changes no target beyond it.
    #[test]
    fn cached_teacher_logits_equal_batch_logits() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let teacher =
            LoadedNet::<B>::load(&root.join("fixtures/fmnist-resnet20.safetensors"), &device)
                .unwrap();
        // Deterministic images: the fixture's own statistics are irrelevant here.
        let mut rng = SplitMix64::new(7);
        let n = 40;
        let data = Dataset {
            kind: DatasetKind::FashionMnist,
            images: (0..n * 28 * 28).map(|_| rng.below(256) as u8).collect(),
            labels: vec![0; n],
            shape: [1, 28, 28],
            classes: 10,
        };
        let norm = DatasetKind::FashionMnist.normalization();
        let mut cache = TeacherCache::new(n, 10);
        // Fill the cache in odd batches (with repeats), then ask for another mix.
        cache
            .logits(&teacher, &data, &[3, 5, 3], &norm, &device)
            .unwrap();
        cache
            .logits(
                &teacher,
                &data,
                &(0..n).rev().collect::<Vec<_>>(),
                &norm,
                &device,
            )
            .unwrap();
        let pick = [7, 0, 39, 7, 12, 5, 3, 21];
        let cached = cache
            .logits(&teacher, &data, &pick, &norm, &device)
            .unwrap();
        let x = input_tensor::<B>(data.batch(&pick, &norm).0, pick.len(), data.shape, &device);
        let direct = teacher.logits(x);
        let a = cached.into_data().into_vec::<f32>().unwrap();
        let b = direct.into_data().into_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "cached logits {worst} away from the batch's");
        // Repeated images get the same row.
        assert_eq!(a[..10], a[30..40]);
    }

    /// The student's conv weights come from position-ordered predictions: each kernel goes back
    /// to its original place, and a 1x1 layer takes the centre of the K x K prediction.
    #[test]
    fn predictions_return_to_original_order_and_are_cropped() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let layers = [
            LayerEntry {
                name: "a".into(),
                dtype: TensorDtype::F32,
                permutation: PermutationKind::CrossFilter,
                shape: [2, 1, 3, 3],
            },
            LayerEntry {
                name: "b".into(),
                dtype: TensorDtype::F32,
                permutation: PermutationKind::None,
                shape: [1, 2, 1, 1],
            },
        ];
        let perms = [
            Permutation::CrossFilter {
                kernels: vec![1, 0],
            },
            Permutation::Identity,
        ];
        let layout = KernelLayout::<B>::new(&layers, &perms, 3, &device);
        // Row r predicts 9 values 10 r + 0..9.
        let pred: Vec<f32> = (0..4)
            .flat_map(|r| (0..9).map(move |i| (10 * r + i) as f32))
            .collect();
        let convs = layout.convs(Tensor::from_data(TensorData::new(pred, [4, 9]), &device));
        let a = convs["a"].clone().into_data().into_vec::<f32>().unwrap();
        // Position 0 holds original kernel 1, position 1 original kernel 0.
        let row = |r: usize| (0..9).map(move |i| (10 * r + i) as f32);
        assert_eq!(a, row(1).chain(row(0)).collect::<Vec<_>>());
        let b = convs["b"].clone().into_data().into_vec::<f32>().unwrap();
        assert_eq!(b, [24.0, 34.0]);
        assert_eq!(convs["b"].dims(), [1, 2, 1, 1]);
    }
}
