//! One encode from start to end: parse the source once, load what selection and phase 2 need,
//! search (or resume) the permutation tables, run phase 1 and phase 2, measure the stored result
//! and assemble the file. Each step is a sibling module; this file only hands results on.

use std::path::Path;
use std::time::Instant;

use super::assemble::{Encoded, assemble};
use super::kernels::KernelSet;
use super::options::{DistillSource, EncodeOptions};
use super::phase1::{Rounds, RoundsOutcome, TrainSettings, run_rounds, train};
use super::phase2::{DistillInput, DistillSettings, distill};
use super::progress::{NoProgress, Progress};
use super::report::{AccuracyReport, DistillReport, EncodeReport, rmse};
use super::search::search;
use super::selection::{DataPlan, HeldOut, held_out_accuracy, int4_baseline, load_data};
use super::source::Source;
use crate::decode::decode_layers;
use crate::device::{BackendJob, TrainBackend};
use crate::error::{Error, Result};
use crate::eval::{LoadedNet, check_fit};
use crate::format::{LayerEntry, Limits, read_container};
use crate::io::MappedFile;
use crate::network::FixedParams;
use crate::permute::{Permutation, PermutationKind};
use crate::predictor::{Predictor, PredictorConfig, WeightDtype};
use crate::rng::SplitMix64;

/// `encode` as a job for [`crate::device::run_on`].
pub struct EncodeJob<'a> {
    pub input: &'a Path,
    pub opts: &'a EncodeOptions,
    pub progress: &'a dyn Progress,
}

impl BackendJob for EncodeJob<'_> {
    type Output = (Vec<u8>, EncodeReport);
    fn run<B: TrainBackend>(self, device: &B::Device) -> Result<Self::Output> {
        encode_on::<B>(device, self.input, self.opts, self.progress)
    }
}

fn encode_on<B: TrainBackend>(
    device: &B::Device,
    input: &Path,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, EncodeReport)> {
    let started = Instant::now();
    let file = MappedFile::open(input)?;
    let source = Source::parse(input, file.bytes(), opts.permutation)?;
    let mut layers = source.layers.clone();
    let original = &source.weights;
    let mut cfg = PredictorConfig::reference(
        opts.hidden,
        source.kernel_size,
        opts.pe_levels,
        opts.pe_base,
    );

    // Networks and data are only needed for selection and phase 2; fail early if they do not fit.
    let needs_net = opts.data_dir.is_some() || opts.distill.is_some();
    let host = needs_net.then(|| source.host_model());
    let net = host.as_ref().map(|h| h.network()).transpose()?;
    let plan = load_data(opts)?;
    if let (Some(net), Some(plan)) = (&net, &plan) {
        check_fit(net, &plan.train, &input.display().to_string())?;
    }
    // The student's conv weights come from the predictor; only its fixed parameters load here.
    let student = match (&net, &host) {
        (Some(net), Some(host)) => Some(LoadedNet::<B::InnerBackend> {
            net: net.clone(),
            fixed: FixedParams::new(net, host, device)?,
            convs: Default::default(),
        }),
        _ => None,
    };
    let teacher = match (&opts.distill, &student, &host) {
        (Some(d), Some(student), Some(host)) => Some(match &d.teacher {
            Some(path) => {
                let t = LoadedNet::<B::InnerBackend>::load(path, device)?;
                let n = &student.net;
                if t.net.num_classes != n.num_classes || t.net.in_channels != n.in_channels {
                    return Err(Error::Incompatible(format!(
                        "teacher {} has {} classes and {} input channels, the student {} and {}",
                        path.display(),
                        t.net.num_classes,
                        t.net.in_channels,
                        n.num_classes,
                        n.in_channels
                    )));
                }
                t
            }
            // The default teacher is the source checkpoint itself.
            None => LoadedNet::<B::InnerBackend>::from_host(host, device)?,
        }),
        _ => None,
    };

    // `--resume`: phase 1 comes from an existing file of the same checkpoint.
    let resumed = match &opts.resume {
        Some(path) => Some(load_resume(path, &mut layers, &cfg)?),
        None => None,
    };
    if let Some((p, _)) = &resumed {
        cfg = p.config.clone();
    }
    progress.stage("permutations");
    let t_perm = Instant::now();
    let permutations: Vec<Permutation> = match &resumed {
        Some((_, perms)) => perms.clone(),
        None => layers
            .iter()
            .zip(original)
            .map(|(l, w)| search(w, l.cout(), l.cin(), l.kernel(), l.permutation))
            .collect(),
    };
    let permutation_seconds = t_perm.elapsed().as_secs_f64();

    let held_out = plan.as_ref().and_then(DataPlan::held_out);
    let held_acc = |p: &Predictor| -> Result<Option<f64>> {
        match (&student, &held_out, &plan) {
            (Some(st), Some(h), Some(plan)) => Ok(Some(held_out_accuracy(
                p,
                &layers,
                &permutations,
                st,
                h,
                &plan.norm,
                device,
            )?)),
            _ => Ok(None),
        }
    };

    // Phase 1 (or the resumed file's predictor).
    let mut seeds = SplitMix64::new(opts.seed);
    let phase1 = match resumed {
        Some((predictor, _)) => RoundsOutcome {
            held_out: held_acc(&predictor)?,
            predictor,
            kept_round: 0,
            reports: Vec::new(),
        },
        None => run_rounds::<B>(
            device,
            &Rounds {
                cfg: &cfg,
                layers: &layers,
                permutations: &permutations,
                original,
                settings: TrainSettings {
                    steps: opts.steps,
                    batch: opts.batch,
                    lr: opts.lr,
                    beta1: opts.beta1,
                },
                rounds: opts.rounds,
                threads: opts.threads,
            },
            &mut seeds,
            &held_acc,
            progress,
        )?,
    };
    let mut predictor = phase1.predictor;

    // Phase 2.
    let mut distill_report = None;
    if let (Some(d), Some(net), Some(host), Some(teacher), Some(student)) =
        (&opts.distill, &net, &host, &teacher, &student)
    {
        progress.stage("distillation");
        let t_distill = Instant::now();
        let set = KernelSet::new(
            &layers,
            &permutations,
            original,
            original,
            cfg.kernel_size as usize,
        );
        let norm = match &plan {
            Some(p) => p.norm.clone(),
            None => opts
                .norm
                .clone()
                .unwrap_or_else(|| opts.dataset.normalization()),
        };
        let settings = DistillSettings {
            steps: d.steps,
            batch: d.batch,
            lr: d.lr,
            temperature: d.temperature,
            recon_weight: d.recon_weight,
            eval_every: d.eval_every.unwrap_or((d.steps / 10).max(1)),
            warmup: d.warmup.unwrap_or(0),
            norm: &norm,
            input: DistillInput::for_options(d, plan.as_ref(), opts.dataset, net.in_channels)?,
            held_out: held_out.as_ref().map(|h| HeldOut {
                data: h.data,
                indices: h.indices,
            }),
            storage: opts.predictor_dtype,
            augment: d.augment,
        };
        let out = distill::<B>(
            device,
            &predictor,
            &set,
            &layers,
            &permutations,
            host,
            student,
            phase1.held_out,
            teacher,
            &settings,
            seeds.next_u64(),
            progress,
        )?;
        let decoded = decode_layers(&out.predictor, &layers, &permutations, opts.threads);
        distill_report = Some(DistillReport {
            steps: d.steps,
            batch: d.batch,
            lr: d.lr,
            warmup: settings.warmup,
            temperature: d.temperature,
            recon_weight: d.recon_weight,
            augment: d.augment,
            input: match d.source {
                DistillSource::Data => "data".into(),
                DistillSource::Noise => "noise".into(),
            },
            teacher: d
                .teacher
                .as_ref()
                .map_or_else(|| "original".into(), |t| t.display().to_string()),
            loss_history: out.loss_history,
            held_out_history: out.held_out_history,
            kept_step: out.best_step,
            rmse_vs_original: rmse(&decoded, original),
            seconds: t_distill.elapsed().as_secs_f64(),
        });
        predictor = out.predictor;
    }

    // The stored result: every figure below is of the weights as stored. Phase 2 already
    // selected and measured stored weights; a phase-1 figure was of f32 weights.
    let mut final_held_out = match &distill_report {
        Some(d) => d
            .held_out_history
            .iter()
            .find(|(s, _)| *s == d.kept_step)
            .map(|(_, a)| *a),
        None => phase1.held_out,
    };
    predictor.store_as(opts.predictor_dtype)?;
    if distill_report.is_none()
        && opts.predictor_dtype != WeightDtype::F32
        && final_held_out.is_some()
    {
        final_held_out = held_acc(&predictor)?;
    }
    let stored_rmse = rmse(
        &decode_layers(&predictor, &layers, &permutations, opts.threads),
        original,
    );
    let test_accuracy = match (&student, &plan) {
        (
            Some(st),
            Some(DataPlan {
                test: Some(test),
                norm,
                ..
            }),
        ) => {
            let all: Vec<usize> = (0..test.len()).collect();
            let h = HeldOut {
                data: test,
                indices: &all,
            };
            Some(held_out_accuracy(
                &predictor,
                &layers,
                &permutations,
                st,
                &h,
                norm,
                device,
            )?)
        }
        _ => None,
    };
    let accuracy = AccuracyReport {
        predictor_dtype: opts.predictor_dtype.name(),
        rmse_vs_original: stored_rmse,
        held_out_images: plan.as_ref().map(|p| p.held_idx.len()),
        held_out: final_held_out,
        test: test_accuracy,
        kept_round: phase1.kept_round,
    };
    progress.stage("int4 baseline");
    let baseline = int4_baseline::<B::InnerBackend>(&source, host.as_ref(), plan.as_ref(), device)?;
    let encoded = Encoded {
        predictor,
        layers,
        permutations,
        rounds: phase1.reports,
        distill: distill_report,
        accuracy,
        baseline,
        permutation_seconds,
    };
    assemble(&source, opts, encoded, started)
}

/// Reads the predictor and permutation tables of `path`, checking that its layer table is the
/// one of the checkpoint being encoded (names, shapes) and adopting its permutation kinds.
fn load_resume(
    path: &Path,
    layers: &mut [LayerEntry],
    cfg: &PredictorConfig,
) -> Result<(Predictor, Vec<Permutation>)> {
    let file = MappedFile::open(path)?;
    let c = read_container(file.bytes(), &Limits::default())?;
    let same = c.layers.len() == layers.len()
        && c.layers
            .iter()
            .zip(layers.iter())
            .all(|(a, b)| a.name == b.name && a.shape == b.shape);
    if !same {
        return Err(Error::Incompatible(format!(
            "{} was not encoded from this checkpoint (layer tables differ)",
            path.display()
        )));
    }
    if c.predictor.config.kernel_size != cfg.kernel_size {
        return Err(Error::Incompatible(format!(
            "{}: predictor kernel size differs",
            path.display()
        )));
    }
    for (l, r) in layers.iter_mut().zip(&c.layers) {
        l.permutation = r.permutation;
    }
    Ok((c.predictor.clone(), c.permutations.clone()))
}

/// Phase-1 training throughput as a job (see [`super::training_throughput`]).
pub struct ThroughputJob<'a> {
    pub input: &'a Path,
    pub opts: &'a EncodeOptions,
}

impl BackendJob for ThroughputJob<'_> {
    type Output = f64;
    fn run<B: TrainBackend>(self, device: &B::Device) -> Result<f64> {
        let opts = self.opts;
        let file = MappedFile::open(self.input)?;
        let source = Source::parse(self.input, file.bytes(), PermutationKind::None)?;
        let k = source.kernel_size;
        let cfg = PredictorConfig::reference(opts.hidden, k, opts.pe_levels, opts.pe_base);
        let perms = vec![Permutation::Identity; source.layers.len()];
        let w = &source.weights;
        let set = KernelSet::new(&source.layers, &perms, w, w, k as usize);
        let mut settings = TrainSettings {
            steps: 3,
            batch: opts.batch,
            lr: opts.lr,
            beta1: opts.beta1,
        };
        train::<B>(device, &cfg, &set, &settings, opts.seed, &NoProgress)?;
        settings.steps = opts.steps;
        let t = Instant::now();
        train::<B>(device, &cfg, &set, &settings, opts.seed, &NoProgress)?;
        Ok((opts.steps * opts.batch.min(set.len())) as f64 / t.elapsed().as_secs_f64())
    }
}
