//! One encode from start to end: parse the source once, load what selection and phase 2 need,
//! search (or resume) the permutation tables, run phase 1 and phase 2, measure the stored result
//! and assemble the file. Each step is a sibling module; this file only hands results on.

use std::path::Path;
use std::time::Instant;

use super::assemble::{Encoded, assemble};
use super::budget::{
    Candidate, Sizer, candidates as budget_candidates, coded_candidate, resumed_dtype,
};
use super::clock::{Costs, Plan, distill_evals, probe_steps};
use super::coded::{
    AUTO_BITS_IMAGES, BitsProbe, CodedConv, choose_auto_bits, choose_auto_ranks, decoded_coded,
};
use super::kernels::KernelSet;
use super::options::{
    ChannelOrder, DEFAULT_MAX_HIDDEN, DistillOptions, DistillSource, EncodeOptions, Rounding,
    default_hidden, default_params_per_weight, default_pe_levels, default_phase1_steps,
    default_predictor_dtype, with_embedding,
};
use super::options::{CodedOptions, DEFAULT_CODE_LR};
use super::phase1::{Rounds, RoundsOutcome, TrainSettings, run_rounds, train};
use super::phase2::{
    DistillInput, DistillOutcome, DistillSettings, OverBudget, TuneSettings, distill,
};
use super::progress::{NoProgress, Progress};
use super::report::{
    AccuracyReport, CandidateReport, DistillReport, EncodeReport, GoalReport, RoundReport,
    TimeLimitReport, rmse,
};
use super::search::search;
use super::selection::{
    DataPlan, HeldOut, held_out_accuracy, int4_baseline, load_data, network_accuracy,
};
use super::source::Source;
use super::tune::TunedPassthrough;
use crate::arch::Network;
use crate::data::Normalization;
use crate::decode::coded::coded_weights;
use crate::decode::decode_layers;
use crate::device::{BackendJob, TrainBackend};
use crate::error::{Error, Result};
use crate::eval::{BlockInputs, LoadedNet, check_fit, log_probs, mean_kl};
use crate::format::{
    CodedTensor, Container, LayerEntry, Limits, MAX_CODE_BITS, MIN_CODE_BITS, predictor_bytes,
    read_container,
};
use crate::io::MappedFile;
use crate::network::{FixedParams, HostModel, block_of};
use crate::permute::{Permutation, PermutationKind};
use crate::predictor::{Predictor, PredictorConfig, WeightDtype};
use crate::rng::SplitMix64;

/// Mixed into the seed of `--time-limit`'s calibration runs, so they draw nothing from the
/// encode's own sequence.
const CALIBRATION_SEED: u64 = 0x7469_6d65_6c69_6d69;

/// Mixed into the seed that moves a resumed predictor's weights off the code grid.
const OFF_GRID_SEED: u64 = 0x6f66_665f_6772_6964;

/// `encode` as a job for [`crate::device::run_on`].
pub struct EncodeJob<'a> {
    pub input: &'a MappedFile,
    pub opts: &'a EncodeOptions,
    pub progress: &'a dyn Progress,
}

impl BackendJob for EncodeJob<'_> {
    type Output = (Vec<u8>, EncodeReport);
    fn run<B: TrainBackend>(self, device: &B::Device) -> Result<Self::Output> {
        match encode_on::<B>(device, self.input, self.opts, Vec::new(), self.progress)? {
            Attempt::Encoded(out) => Ok(*out),
            // Codes by default did not fit the budget (or the network): the predictor alone.
            Attempt::PredictAll(why) => {
                self.progress.note(&why);
                let opts = EncodeOptions {
                    codes_for_budget: false,
                    ..self.opts.clone()
                };
                match encode_on::<B>(device, self.input, &opts, vec![why], self.progress)? {
                    Attempt::Encoded(out) => Ok(*out),
                    Attempt::PredictAll(why) => Err(Error::Training(format!(
                        "an encode without codes asked for them again: {why}"
                    ))),
                }
            }
        }
    }
}

/// How one encode ended: a file, or, when codes were only the default
/// ([`EncodeOptions::codes_for_budget`]), the reason they cannot be used: the encode is then run
/// again with every conv predicted.
enum Attempt {
    Encoded(Box<(Vec<u8>, EncodeReport)>),
    PredictAll(String),
}

/// What every training run of one encode shares: the parsed source, its layer table and
/// permutation tables, the networks and the data.
struct Context<'a, B: TrainBackend> {
    device: &'a B::Device,
    opts: &'a EncodeOptions,
    progress: &'a dyn Progress,
    source: &'a Source<'a>,
    layers: Vec<LayerEntry>,
    permutations: Vec<Permutation>,
    host: Option<HostModel>,
    net: Option<Network>,
    plan: Option<DataPlan>,
    student: Option<LoadedNet<B::InnerBackend>>,
    teacher: Option<LoadedNet<B::InnerBackend>>,
    /// The coded convs' starting values (`--code`); the student holds them decoded.
    coded: Vec<CodedConv>,
}

/// A trained predictor as stored, with what its phases measured.
struct Trained {
    predictor: Predictor,
    rounds: Vec<RoundReport>,
    kept_round: usize,
    distill: Option<DistillReport>,
    /// Held-out accuracy (%) of the stored predictor, when there is data.
    held_out: Option<f64>,
    /// The passthrough tensors phase 2 tuned (`--passthrough tuned`).
    passthrough: Option<TunedPassthrough>,
    /// The coded convs as trained (`--code`; their start without phase 2).
    coded: Vec<CodedConv>,
}

/// How long one training run goes.
struct Schedule<'a> {
    phase1_steps: usize,
    rounds: usize,
    distill: Option<&'a DistillOptions>,
    distill_steps: usize,
    /// Phase-2 cycles of `distill_steps` each (the candidates' short runs take one).
    distill_cycles: usize,
    storage: WeightDtype,
    /// By how many bytes a phase-2 state's file is over `--target-size` (none without a budget).
    fits: Option<OverBudget<'a>>,
}

/// Phase 2's cycles gathered into one history, steps counted from the first cycle's start.
#[derive(Default)]
struct Cycles {
    loss_history: Vec<(usize, f32)>,
    held_out_history: Vec<(usize, f64)>,
    kept_step: usize,
    kept_held_out: Option<f64>,
    teacher_images: usize,
    over_budget: usize,
    over_budget_bytes: u64,
}

impl Cycles {
    /// Adds the cycle that began at step `offset`. A later cycle's step 0 is the kept state it
    /// restarted from, already in the history: kept only if no later step beats it.
    fn add(&mut self, offset: usize, o: &DistillOutcome) {
        self.loss_history
            .extend(o.loss_history.iter().map(|&(s, l)| (offset + s, l)));
        self.held_out_history.extend(
            o.held_out_history
                .iter()
                .filter(|&&(s, _)| offset == 0 || s > 0)
                .map(|&(s, a)| (offset + s, a)),
        );
        if offset == 0 || o.best_step > 0 {
            self.kept_step = offset + o.best_step;
            self.kept_held_out = o
                .held_out_history
                .iter()
                .find(|(s, _)| *s == o.best_step)
                .map(|&(_, a)| a);
        }
        self.teacher_images += o.teacher_images;
        self.over_budget += o.over_budget;
        self.over_budget_bytes = self.over_budget_bytes.max(o.over_budget_bytes);
    }
}

impl<B: TrainBackend> Context<'_, B> {
    fn held_out(&self) -> Option<HeldOut<'_>> {
        self.plan.as_ref().and_then(DataPlan::held_out)
    }

    /// Held-out accuracy of a predictor's decoded network, when there is data.
    fn held_acc(&self, p: &Predictor) -> Result<Option<f64>> {
        match (&self.student, self.held_out(), &self.plan) {
            (Some(st), Some(h), Some(plan)) => Ok(Some(held_out_accuracy(
                p,
                &self.layers,
                &self.permutations,
                st,
                &h,
                &plan.norm,
                self.device,
            )?)),
            _ => Ok(None),
        }
    }

    /// The source network's held-out accuracy: what `--max-drop` is measured against.
    fn original_held_out(&self) -> Result<Option<f64>> {
        let (Some(_), Some(h), Some(plan)) = (&self.host, self.held_out(), &self.plan) else {
            return Ok(None);
        };
        let original = self.source.original_host_model();
        let net = LoadedNet::<B::InnerBackend>::from_host(&original, self.device)?;
        Ok(Some(network_accuracy(&net, &h, &plan.norm, self.device)?))
    }

    fn conv_rmse(&self, p: &Predictor) -> f64 {
        let decoded = decode_layers(p, &self.layers, &self.permutations, self.opts.threads);
        rmse(&decoded, &self.source.weights)
    }

    /// Phase 1 (or the resumed predictor), then phase 2, stored as `s.storage`.
    fn train(
        &self,
        cfg: &PredictorConfig,
        resumed: Option<Predictor>,
        s: &Schedule<'_>,
        seeds: &mut SplitMix64,
    ) -> Result<Trained> {
        let (device, opts, progress) = (self.device, self.opts, self.progress);
        let original = &self.source.weights;
        let held_acc = |p: &Predictor| self.held_acc(p);
        // A resumed file's weights lie on the grid of the storage phase 2 trains through.
        let on_grid = resumed
            .as_ref()
            .is_some_and(|p| p.config.weight_dtype == s.storage);
        let phase1 = match resumed {
            Some(predictor) => RoundsOutcome {
                held_out: held_acc(&predictor)?,
                predictor,
                kept_round: 0,
                reports: Vec::new(),
            },
            None => run_rounds::<B>(
                device,
                &Rounds {
                    cfg,
                    layers: &self.layers,
                    permutations: &self.permutations,
                    original,
                    settings: TrainSettings {
                        steps: s.phase1_steps,
                        batch: opts.batch,
                        lr: opts.lr,
                        beta1: opts.beta1,
                    },
                    rounds: s.rounds,
                    threads: opts.threads,
                },
                seeds,
                &held_acc,
                progress,
            )?,
        };
        let mut predictor = phase1.predictor;

        let mut distill_report = None;
        let mut passthrough = None;
        let mut coded = self.coded.clone();
        if let (Some(d), Some(_), Some(host), Some(teacher), Some(student)) = (
            s.distill,
            &self.net,
            &self.host,
            &self.teacher,
            &self.student,
        ) {
            let t_distill = Instant::now();
            let set = self.kernel_set(cfg);
            let norm = self.phase2_norm();
            let mut settings = self.distill_settings(d, s.distill_steps, s.storage, &norm, true)?;
            settings.fits = s.fits;
            let first = match (on_grid, s.storage.max_code()) {
                // Already rounded (the compensation would find no error): only moved off the
                // grid, with its own seed, so the encode's sequence stays what it was.
                (true, Some(max)) => {
                    super::gptq::off_grid_copy(&predictor, max, opts.seed ^ OFF_GRID_SEED)
                }
                _ => self.rounded(&predictor, cfg, s.storage, Some(&set))?,
            };
            let mut cycles = Cycles::default();
            let mut out: Option<DistillOutcome> = None;
            // Filled by the first cycle; later cycles compute only the images it never drew.
            let mut teacher_cache = None;
            for cycle in 0..s.distill_cycles {
                progress.stage(&if s.distill_cycles > 1 {
                    format!("distillation, cycle {}/{}", cycle + 1, s.distill_cycles)
                } else {
                    "distillation".into()
                });
                // A later cycle starts from the previous one's kept state, on its code grid,
                // restarted as `--resume` restarts a finished file. Each cycle's step 0 is the
                // state it starts from, already measured.
                let restarted;
                let coded_start = match &out {
                    Some(kept) => kept.coded.clone(),
                    None => self.coded.clone(),
                };
                let (start, start_held_out) = match &out {
                    Some(kept) => {
                        restarted = match s.storage.max_code() {
                            Some(max) => {
                                super::gptq::off_grid_copy(&kept.predictor, max, seeds.next_u64())
                            }
                            None => kept.predictor.clone(),
                        };
                        (&restarted, cycles.kept_held_out)
                    }
                    None => (&first, phase1.held_out),
                };
                let o = distill::<B>(
                    device,
                    start,
                    &coded_start,
                    &set,
                    &self.layers,
                    &self.permutations,
                    host,
                    student,
                    start_held_out,
                    teacher,
                    &settings,
                    seeds.next_u64(),
                    &mut teacher_cache,
                    progress,
                )?;
                cycles.add(cycle * s.distill_steps, &o);
                out = Some(o);
            }
            let out = out
                .ok_or_else(|| Error::InvalidArgument("phase 2 needs at least one cycle".into()))?;
            // The last cycle's kept state is the best seen: each cycle keeps its own start
            // (step 0) unless a later step beats it.
            distill_report = Some(DistillReport {
                steps: s.distill_steps,
                cycles: s.distill_cycles,
                batch: d.batch,
                lr: d.lr,
                warmup: settings.warmup,
                temperature: d.temperature,
                recon_weight: d.recon_weight,
                label_weight: d.label_weight,
                feature_weight: d.feature_weight,
                augment: d.augment,
                input: match d.source {
                    DistillSource::Data => "data".into(),
                    DistillSource::Noise => "noise".into(),
                },
                teacher: d
                    .teacher
                    .as_ref()
                    .map_or_else(|| "original".into(), |t| t.display().to_string()),
                loss_history: cycles.loss_history,
                held_out_history: cycles.held_out_history,
                kept_step: cycles.kept_step,
                rmse_vs_original: self.conv_rmse(&out.predictor),
                seconds: t_distill.elapsed().as_secs_f64(),
                teacher_images: cycles.teacher_images,
                over_budget: cycles.over_budget,
                over_budget_bytes: cycles.over_budget_bytes,
            });
            predictor = out.predictor;
            passthrough = out.passthrough;
            coded = out.coded;
        }

        // Every figure from here on is of the weights as stored. Phase 2 already selected and
        // measured stored weights; a phase-1 figure was of f32 weights.
        let mut held_out = match &distill_report {
            Some(d) => d
                .held_out_history
                .iter()
                .find(|(s, _)| *s == d.kept_step)
                .map(|(_, a)| *a),
            None => phase1.held_out,
        };
        if distill_report.is_none() {
            predictor = self.rounded(&predictor, cfg, s.storage, None)?;
        }
        predictor.store_as(s.storage)?;
        if distill_report.is_none() && s.storage != WeightDtype::F32 && held_out.is_some() {
            held_out = held_acc(&predictor)?;
        }
        Ok(Trained {
            predictor,
            rounds: phase1.reports,
            kept_round: phase1.kept_round,
            distill: distill_report,
            held_out,
            passthrough,
            coded,
        })
    }

    /// Every kernel of the source, targets and norms its own weights (phase 2, the rounding).
    fn kernel_set(&self, cfg: &PredictorConfig) -> KernelSet {
        let original = &self.source.weights;
        KernelSet::new(
            &self.layers,
            &self.permutations,
            original,
            original,
            cfg.kernel_size as usize,
        )
    }

    /// `p` rounded to `storage` as `--rounding` says (float storage or nearest rounding:
    /// unchanged; `store_as` rounds it later). The kernel set is built only when compensation
    /// needs it and `set` is not given.
    fn rounded(
        &self,
        p: &Predictor,
        cfg: &PredictorConfig,
        storage: WeightDtype,
        set: Option<&KernelSet>,
    ) -> Result<Predictor> {
        if self.opts.rounding != Rounding::Compensated || storage.max_code().is_none() {
            return Ok(p.clone());
        }
        match set {
            Some(set) => super::gptq::quantize(p, &set.coords, &set.table_rows, storage),
            None => {
                let set = self.kernel_set(cfg);
                super::gptq::quantize(p, &set.coords, &set.table_rows, storage)
            }
        }
    }

    /// The normalisation phase 2 feeds the networks with.
    fn phase2_norm(&self) -> Normalization {
        match &self.plan {
            Some(p) => p.norm.clone(),
            None => self
                .opts
                .norm
                .clone()
                .unwrap_or_else(|| self.opts.dataset.normalization()),
        }
    }

    /// Phase 2's settings for `steps` steps stored as `storage`; `select`: with held-out
    /// selection (when there is data).
    fn distill_settings<'s>(
        &'s self,
        d: &'s DistillOptions,
        steps: usize,
        storage: WeightDtype,
        norm: &'s Normalization,
        select: bool,
    ) -> Result<DistillSettings<'s>> {
        let net = self.net.as_ref().ok_or_else(|| {
            Error::InvalidArgument("phase 2 needs a network it understands".into())
        })?;
        let (eval_every, eval_from) = distill_evals(steps, d.eval_every);
        Ok(DistillSettings {
            steps,
            batch: d.batch,
            lr: d.lr,
            temperature: d.temperature,
            recon_weight: d.recon_weight,
            label_weight: d.label_weight,
            feature_weight: d.feature_weight,
            eval_every,
            eval_from,
            warmup: d.warmup.unwrap_or(0),
            norm,
            input: DistillInput::for_options(
                d,
                self.plan.as_ref(),
                self.opts.dataset,
                net.in_channels,
            )?,
            held_out: if select { self.held_out() } else { None },
            storage,
            augment: d.augment,
            tune: self.opts.tune_passthrough.map(|lr| TuneSettings {
                lr,
                f16: self.opts.passthrough_f16,
            }),
            // A resumed file's coded convs continue at the default rate unless --code sets one.
            coded_lr: self.opts.coded.as_ref().map_or(DEFAULT_CODE_LR, |c| c.lr),
            fits: None,
        })
    }

    /// Measures what the work a `--time-limit` plans costs here: a few phase-1 steps, a few
    /// phase-2 steps (the teacher uncached), the teacher's and the student's forward on a
    /// thousand images. Uses its own seeds: the training that follows is unchanged by it.
    fn calibrate(&self, cfg: &PredictorConfig, s: &Schedule<'_>) -> Result<Costs> {
        let (device, opts) = (self.device, self.opts);
        self.progress.stage("timing (--time-limit)");
        let original = &self.source.weights;
        let set = KernelSet::new(
            &self.layers,
            &self.permutations,
            original,
            original,
            cfg.kernel_size as usize,
        );
        let mut predictor = None;
        let mut timed_train = |steps: usize| -> Result<f64> {
            let settings = TrainSettings {
                steps,
                batch: opts.batch,
                lr: opts.lr,
                beta1: opts.beta1,
            };
            let t = Instant::now();
            let out = train::<B>(
                device,
                cfg,
                &set,
                &settings,
                opts.seed ^ CALIBRATION_SEED,
                &NoProgress,
            )?;
            predictor = Some(out.predictor);
            Ok(t.elapsed().as_secs_f64())
        };
        // Differences of two runs: the setup each run repeats cancels out. Ten steps measured
        // 12 % under what 3,227 steps then took (the demo, 2026-12-02); forty are closer.
        let (short, long) = (timed_train(5)?, timed_train(45)?);
        let phase1_step = ((long - short) / 40.0).max(1e-6);
        let predictor = predictor.expect("calibration trained a predictor");

        let mut costs = Costs {
            phase1_step,
            distill_step: 0.0,
            teacher_image: 0.0,
            eval_image: 0.0,
        };
        let sample = |n: usize| -> Option<HeldOut<'_>> {
            let plan = self.plan.as_ref()?;
            let (data, idx) = match self.held_out() {
                Some(h) if !h.indices.is_empty() => (h.data, h.indices),
                _ => (&plan.train, plan.train_idx.as_slice()),
            };
            Some(HeldOut {
                data,
                indices: &idx[..n.min(idx.len())],
            })
        };
        if let (Some(h), Some(student), Some(plan)) = (sample(1000), &self.student, &self.plan) {
            let t = Instant::now();
            held_out_accuracy(
                &predictor,
                &self.layers,
                &self.permutations,
                student,
                &h,
                &plan.norm,
                device,
            )?;
            costs.eval_image = t.elapsed().as_secs_f64() / h.indices.len().max(1) as f64;
        }
        if let (Some(d), Some(host), Some(teacher), Some(student)) =
            (s.distill, &self.host, &self.teacher, &self.student)
        {
            let norm = self.phase2_norm();
            if let Some(h) = sample(1000) {
                let t = Instant::now();
                network_accuracy(teacher, &h, &norm, device)?;
                costs.teacher_image = t.elapsed().as_secs_f64() / h.indices.len().max(1) as f64;
            }
            let timed_distill = |steps: usize| -> Result<f64> {
                let settings = self.distill_settings(d, steps, s.storage, &norm, false)?;
                let t = Instant::now();
                distill::<B>(
                    device,
                    &predictor,
                    &self.coded,
                    &set,
                    &self.layers,
                    &self.permutations,
                    host,
                    student,
                    None,
                    teacher,
                    &settings,
                    opts.seed ^ CALIBRATION_SEED,
                    // Cold, as the calibration below assumes.
                    &mut None,
                    &NoProgress,
                )?;
                Ok(t.elapsed().as_secs_f64())
            };
            // Three steps measured a third under the demo's real steps; six are steadier.
            let (short, long) = (timed_distill(2)?, timed_distill(8)?);
            let cold_step = ((long - short) / 6.0).max(1e-6);
            // The calibration's cache was cold: every image of a step went through the teacher.
            costs.distill_step =
                (cold_step - d.batch as f64 * costs.teacher_image).max(0.1 * cold_step);
        }
        Ok(costs)
    }

    /// Measures each candidate on a short schedule (a sixth of phase 1, a twentieth of phase
    /// 2) and returns the index of the best by held-out accuracy (conv RMSE without data).
    fn probe(
        &self,
        candidates: &[Candidate],
        full: &Schedule<'_>,
        seed: u64,
    ) -> Result<(usize, Vec<CandidateReport>, Predictor)> {
        let mut reports = Vec::new();
        let mut predictors = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            self.progress.stage(&format!(
                "candidate {}/{}: hidden {}, PE L={}, {}",
                i + 1,
                candidates.len(),
                c.config.widths[1],
                c.config.pe_levels,
                c.dtype.name()
            ));
            let t = Instant::now();
            let (phase1_steps, distill_steps) = probe_steps(full.phase1_steps, full.distill_steps);
            let schedule = Schedule {
                phase1_steps,
                rounds: 1,
                distill: full.distill,
                distill_steps,
                distill_cycles: 1,
                storage: c.dtype,
                fits: full.fits,
            };
            let mut seeds = SplitMix64::new(seed);
            let trained = self.train(&c.config, None, &schedule, &mut seeds)?;
            reports.push(CandidateReport {
                hidden: c.config.widths[1],
                pe_levels: c.config.pe_levels,
                predictor_dtype: c.dtype.name(),
                bound_bytes: c.bound,
                phase1_steps: schedule.phase1_steps,
                distill_steps: schedule.distill.map_or(0, |_| schedule.distill_steps),
                held_out: trained.held_out,
                rmse_vs_original: self.conv_rmse(&trained.predictor),
                seconds: t.elapsed().as_secs_f64(),
                chosen: false,
            });
            predictors.push(trained.predictor);
        }
        let better = |a: &CandidateReport, b: &CandidateReport| match (a.held_out, b.held_out) {
            (Some(x), Some(y)) if x != y => x > y,
            _ => a.rmse_vs_original < b.rmse_vs_original,
        };
        let mut best = 0;
        for i in 1..reports.len() {
            if better(&reports[i], &reports[best]) {
                best = i;
            }
        }
        reports[best].chosen = true;
        let predictor = predictors.swap_remove(best);
        Ok((best, reports, predictor))
    }

    /// A short phase-1 run of `c` stored as its dtype (the candidates' schedule): what its codes
    /// compress to once trained a little.
    fn size_probe(&self, c: &Candidate, full: &Schedule<'_>, seed: u64) -> Result<Predictor> {
        self.progress.stage(&format!(
            "size probe: hidden {}, PE L={}, {}",
            c.config.widths[1],
            c.config.pe_levels,
            c.dtype.name()
        ));
        let schedule = Schedule {
            phase1_steps: probe_steps(full.phase1_steps, 0).0,
            rounds: 1,
            distill: None,
            distill_steps: 0,
            distill_cycles: 0,
            storage: c.dtype,
            fits: None,
        };
        Ok(self
            .train(&c.config, None, &schedule, &mut SplitMix64::new(seed))?
            .predictor)
    }
}

/// `first_notes`: notes of an earlier attempt ([`Attempt::PredictAll`]), recorded first.
fn encode_on<B: TrainBackend>(
    device: &B::Device,
    file: &MappedFile,
    opts: &EncodeOptions,
    first_notes: Vec<String>,
    progress: &dyn Progress,
) -> Result<Attempt> {
    let started = Instant::now();
    // `--resume`: read once; its channel order decides how the source is parsed, its predictor
    // replaces phase 1 below.
    let resume_file = opts.resume.as_deref().map(MappedFile::open).transpose()?;
    let resume_container = resume_file
        .as_ref()
        .map(|f| read_container(f.bytes(), &Limits::default()))
        .transpose()?;
    let reordered = match channel_order(opts, resume_container.as_ref())? {
        ChannelOrder::Similar => Some(crate::reorder::reorder_checkpoint(
            &file.path,
            file.bytes(),
        )?),
        ChannelOrder::Source => None,
    };
    let mut source = match &reordered {
        Some((bytes, groups)) => {
            Source::parse_reordered(&file.path, file.bytes(), (bytes, *groups), opts.permutation)?
        }
        None => Source::parse(&file.path, file.bytes(), opts.permutation)?,
    };
    if opts.passthrough_f16 {
        source.store_passthrough_as_f16()?;
    }
    // `--target-size` without `--code`: every conv but the smallest as codes filling the budget.
    let by_default = opts.codes_for_budget && opts.coded.is_none();
    let defaulted = match by_default.then(|| CodedOptions::every_conv_but(&source.layers)) {
        Some(Some(coded)) => Some(EncodeOptions {
            coded: Some(coded),
            ..opts.clone()
        }),
        Some(None) => {
            return Ok(Attempt::PredictAll(
                "--target-size without --code: every conv predicted, since the network has one \
                 conv (the format predicts at least one)"
                    .into(),
            ));
        }
        None => None,
    };
    let opts = defaulted.as_ref().unwrap_or(opts);
    // `--code PREFIX=auto`: the ranks are chosen on held-out images before anything is split
    // off, sized or trained; from here on the options hold the chosen fractions.
    let (resolved, auto_lines, early_plan) = match &opts.coded {
        Some(c) if c.has_auto() => {
            let (c, lines, plan) = auto_ranks::<B>(device, &source, c, opts, progress)?;
            (
                Some(EncodeOptions {
                    coded: Some(c),
                    ..opts.clone()
                }),
                lines,
                Some(plan),
            )
        }
        _ => (None, Vec::new(), None),
    };
    let opts = resolved.as_ref().unwrap_or(opts);
    if opts.auto_bits() {
        if opts.target_size.is_none() {
            return Err(auto_bits_needs("a budget to fill (--target-size)"));
        }
        if opts.resume.is_some() {
            return Err(Error::InvalidArgument(
                "--code PREFIX=FRACTION@auto with --resume: the file's coded convs continue as \
                 they are (leave --code out)"
                    .into(),
            ));
        }
    }
    // `--code`: those convs leave the predicted layers before anything is sized or trained.
    // With `--resume`, the file's coded convs (if any) are continued as they are.
    let coded = match (&resume_container, &opts.coded) {
        (Some(c), rules) if !c.coded.is_empty() || rules.is_some() => {
            let path = opts.resume.as_deref().unwrap_or(Path::new(""));
            resumed_coded(&mut source, c, rules.as_ref(), path)?
        }
        (None, Some(rules)) => source.split_coded(rules)?,
        _ => Vec::new(),
    };
    let mut coded_start: Vec<_> = coded.iter().map(CodedConv::stored).collect();
    let source = source;
    // A predicted set within one batch (the convs left after `--code`) gets a narrow encoding.
    let predicted_kernels: usize = source.layers.iter().map(LayerEntry::kernels).sum();
    let pe_levels = default_pe_levels(predicted_kernels, opts.batch, opts.pe_levels);
    let narrow = (!opts.pinned.pe_levels && opts.resume.is_none() && pe_levels != opts.pe_levels)
        .then(|| EncodeOptions {
            pe_levels,
            ..opts.clone()
        });
    let opts = narrow.as_ref().unwrap_or(opts);
    let mut layers = source.layers.clone();
    let source_bytes = source.bytes.len() as u64;
    // Bad budgets fail before anything loads.
    let budget = opts
        .target_size
        .map(|t| t.bytes(source_bytes))
        .transpose()?;
    // Networks and data are only needed for selection and phase 2; fail early if they do not fit.
    let mut notes = Notes {
        progress,
        lines: first_notes,
    };
    if let Some(kept) = opts
        .coded
        .as_ref()
        .filter(|_| by_default)
        .and_then(|c| c.rules[0].except.as_deref())
    {
        notes.add(format!(
            "--target-size without --code: every conv but {kept} (the smallest, predicted) is \
             stored as codes whose bits fill the budget (--predict-all: every conv predicted)"
        ));
    }
    for line in auto_lines {
        notes.add(line);
    }
    let mut storage = opts.predictor_dtype;
    let needs_net = opts.data_dir.is_some() || opts.distill.is_some();
    let mut host = needs_net.then(|| source.host_model());
    let net = match host.as_ref().map(|h| h.network()).transpose() {
        Ok(net) => net,
        Err(Error::UnsupportedArchitecture(why))
            if opts.phase2_by_default && opts.tune_passthrough.is_none() =>
        {
            notes.add(format!(
                "phase 2 and accuracy figures skipped: {why} (phase 2 runs the network; \
                 reconstruction does not need to understand it)"
            ));
            host = None;
            // Without phase 2 nothing recovers what narrower codes round away.
            if !opts.pinned.predictor_dtype {
                storage = default_predictor_dtype(None);
            }
            None
        }
        Err(e) => return Err(e),
    };
    let hidden = hidden_for(opts, storage, &source);
    let mut cfg = with_embedding(
        PredictorConfig::mlp(
            hidden,
            opts.layers,
            source.kernel_size,
            opts.pe_levels,
            opts.pe_base,
        ),
        opts.embedding_width,
        &source.layers,
    );
    if opts.hidden.is_none() && budget.is_none() && opts.resume.is_none() {
        notes.add(format!(
            "hidden width {hidden}: the default for {} conv weights (about \
             {:.2} predictor parameters per weight at {}, at most \
             {DEFAULT_MAX_HIDDEN}; --hidden sets it)",
            source.conv_weights(),
            default_params_per_weight(storage),
            storage.name()
        ));
    }
    let plan = match (net.as_ref(), early_plan) {
        (Some(_), Some(plan)) => Some(plan),
        (Some(_), None) => load_data(opts)?,
        (None, _) => None,
    };
    if let (Some(net), Some(plan)) = (&net, &plan) {
        check_fit(net, &plan.train, &file.path.display().to_string())?;
    }
    // The student's conv weights come from the predictor; only its fixed parameters load here.
    let mut student = match (&net, &host) {
        (Some(net), Some(host)) => Some(LoadedNet::<B::InnerBackend> {
            net: net.clone(),
            fixed: FixedParams::new(net, host, device)?,
            // Coded convs (`--code`) as stored at the start; phase 2 measures its own.
            convs: decoded_coded(&coded_start, device)?,
        }),
        _ => None,
    };
    let teacher = match (&opts.distill, &student, &host) {
        (Some(d), Some(student), Some(_)) => Some(match &d.teacher {
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
                // Checked here, before phase 1, not when phase 2 starts.
                if d.feature_weight > 0.0 && t.net.blocks.len() != n.blocks.len() {
                    return Err(Error::InvalidArgument(format!(
                        "--feature-weight needs a teacher with as many residual blocks as the \
                         student ({} against {})",
                        t.net.blocks.len(),
                        n.blocks.len()
                    )));
                }
                t
            }
            // The default teacher is the source checkpoint itself.
            None => LoadedNet::<B::InnerBackend>::from_host(&source.original_host_model(), device)?,
        }),
        _ => None,
    };

    // `--resume`: phase 1 comes from an existing file of the same checkpoint.
    let resumed = match (&opts.resume, &resume_container) {
        (Some(path), Some(c)) => Some(load_resume(path, c, &mut layers, &cfg, opts)?),
        _ => None,
    };
    if let Some((p, _)) = &resumed {
        cfg = p.config.clone();
    }
    progress.stage("permutations");
    let t_perm = Instant::now();
    let (resumed, permutations) = match resumed {
        Some((p, perms)) => (Some(p), perms),
        None => (
            None,
            layers
                .iter()
                .zip(&source.weights)
                .map(|(l, w)| search(w, l.cout(), l.cin(), l.kernel(), l.permutation))
                .collect(),
        ),
    };
    let permutation_seconds = t_perm.elapsed().as_secs_f64();
    // `--code PREFIX=FRACTION@auto`: the coded convs' bits are chosen to fill the budget now
    // that everything else the file holds is known; they start phase 2 from those.
    let mut coded = coded;
    if let Some(rules) = opts.coded.as_ref().filter(|r| r.has_auto_bits()) {
        // Codes only by default give way to the predictor where they cannot be used.
        let unusable = |why: &str, err: Error| {
            if by_default {
                Ok(Attempt::PredictAll(format!(
                    "--target-size without --code: every conv predicted, since codes {why}"
                )))
            } else {
                Err(err)
            }
        };
        let (Some(budget), Some(plan)) = (budget, plan.as_ref()) else {
            // A network nernc cannot run loads no data either: name what is missing first.
            let why = match host {
                Some(_) => "need real images",
                None => "need a network nernc can run",
            };
            return unusable(why, auto_bits_needs("real images (--data DIR)"));
        };
        let (Some(student), Some(host)) = (student.as_mut(), host.as_ref()) else {
            return unusable(
                "need a network nernc can run",
                auto_bits_needs("a network it can run (see the note above)"),
            );
        };
        let sizer = Sizer::new(
            &source,
            &layers,
            &permutations,
            opts.raw_passthrough,
            Vec::new(),
        );
        let size = |c: &[CodedTensor]| sizer.bound_with_coded(&cfg, storage, c);
        // Checked before the bits are probed (a minute on ResNet-20): the least the file can be.
        let auto = auto_bits_convs(&coded, rules);
        let smallest = size(&at_bits(&coded, &auto, &vec![MIN_CODE_BITS; auto.len()]))?;
        if smallest > budget {
            return unusable(
                &format!(
                    "at {MIN_CODE_BITS} bits would make a file of {smallest} bytes, over the \
                     budget of {budget}"
                ),
                Error::Budget(format!(
                    "--code PREFIX=FRACTION@auto: the file does not fit {budget} bytes even with \
                     {MIN_CODE_BITS}-bit codes for every conv the rule names (about {smallest} \
                     bytes)"
                )),
            );
        }
        let line = auto_bits::<B>(
            device, host, &mut coded, rules, plan, budget, &size, progress,
        )?;
        notes.add(line);
        coded_start = coded.iter().map(CodedConv::stored).collect();
        student.convs = decoded_coded(&coded_start, device)?;
    }

    let ctx = Context::<B> {
        device,
        opts,
        progress,
        source: &source,
        layers,
        permutations,
        host,
        net,
        plan,
        student,
        teacher,
        coded,
    };
    let mut schedule = Schedule {
        phase1_steps: opts
            .steps
            .unwrap_or_else(|| default_phase1_steps(predicted_kernels, opts.batch)),
        rounds: opts.rounds,
        distill: opts.distill.as_ref(),
        distill_steps: opts.distill.as_ref().map_or(0, |d| d.steps),
        distill_cycles: opts.distill.as_ref().map_or(0, |d| d.cycles),
        // A resumed file is continued in its own storage unless another one is asked for.
        storage: match &resumed {
            Some(p) if !opts.pinned.predictor_dtype => p.config.weight_dtype,
            _ => storage,
        },
        fits: None,
    };

    // One sizer for the whole encode: it caches what compressing the passthrough saves.
    let sizer = Sizer::new(
        &source,
        &ctx.layers,
        &ctx.permutations,
        opts.raw_passthrough,
        coded_start,
    );
    let size_of = |p: &Predictor, pass: Option<&TunedPassthrough>, coded: &[CodedConv]| {
        let tuned = pass.map(|t| source.tuned_bytes(t)).transpose()?;
        let coded: Vec<_> = coded.iter().map(CodedConv::stored).collect();
        sizer.actual(p, tuned.as_ref(), &coded)
    };
    // The file was sized with the phase-1 predictor's codes and the coded convs' starting
    // codes; trained ones compress differently, so phase 2 keeps a state within the budget
    // over a more accurate one beyond it.
    let over_budget = |p: &Predictor, pass: Option<&TunedPassthrough>, coded: &[CodedConv]| {
        Ok(match budget {
            Some(b) => size_of(p, pass, coded)?.saturating_sub(b),
            None => 0,
        })
    };
    if budget.is_some() {
        schedule.fits = Some(&over_budget);
    }
    // A budget lists the predictors that fit; which one wins is measured before the full run.
    let mut candidates = Vec::new();
    let mut list = None;
    if let Some(budget) = budget {
        if resumed.is_some() {
            schedule.storage = resumed_dtype(&sizer, opts, &cfg, budget)?;
        } else if opts.auto_bits() {
            list = Some(vec![coded_candidate(
                &sizer,
                &cfg,
                schedule.storage,
                budget,
            )?]);
        } else {
            list = Some(budget_candidates(
                &sizer,
                opts,
                schedule.storage,
                source.kernel_size,
                budget,
            )?);
        }
    }

    // A time limit fixes the step counts now, from what a few real steps cost here.
    let mut time_limit = None;
    if let Some(limit) = opts.time_limit {
        let t = Instant::now();
        let calibration_cfg = list
            .as_ref()
            .map_or(&cfg, |l: &Vec<Candidate>| &l[0].config);
        let costs = ctx.calibrate(calibration_cfg, &schedule)?;
        let cached_pool = match (schedule.distill, &ctx.plan) {
            (Some(d), Some(plan)) if d.source == DistillSource::Data && d.augment.is_none() => {
                Some(plan.train_idx.len())
            }
            _ => None,
        };
        let plan = Plan {
            rounds: if resumed.is_some() {
                0
            } else {
                schedule.rounds
            },
            phase1_steps: schedule.phase1_steps,
            distill_steps: schedule.distill.map_or(0, |_| schedule.distill_steps),
            distill_cycles: schedule.distill_cycles,
            distill_batch: schedule.distill.map_or(0, |d| d.batch),
            cached_pool,
            eval_every: schedule.distill.and_then(|d| d.eval_every),
            held_out_images: ctx.held_out().map_or(0, |h| h.indices.len()),
            test_images: ctx
                .plan
                .as_ref()
                .and_then(DataPlan::test_report)
                .map_or(0, |t| t.indices.len()),
            probes: list
                .as_ref()
                .map_or(0, |l| if l.len() > 1 { l.len() } else { 0 }),
            size_probe: list
                .as_ref()
                .is_some_and(|l| l.len() == 1 && widens(opts, &l[0])),
        };
        let left = limit - started.elapsed().as_secs_f64();
        let (s1, s2) = plan.fit(&costs, left)?;
        let asked = (plan.phase1_steps, plan.distill_steps);
        if (s1, s2) != asked {
            let per_cycle = if plan.distill_cycles > 1 {
                format!(" per cycle ({} cycles)", plan.distill_cycles)
            } else {
                String::new()
            };
            notes.add(format!(
                "--time-limit {limit:.0} s: phase 1 {} -> {s1} steps, phase 2 {} -> {s2} \
                 steps{per_cycle} (measured here; `--steps {s1} --distill-steps {s2}` without \
                 the limit gives the same file)",
                asked.0, asked.1
            ));
        }
        time_limit = Some(TimeLimitReport {
            limit_seconds: limit,
            left_seconds: left,
            calibration_seconds: t.elapsed().as_secs_f64(),
            costs,
            asked_steps: asked,
            steps: (s1, s2),
            planned_seconds: plan.seconds(&costs, s1, s2),
        });
        schedule.phase1_steps = s1;
        if schedule.distill.is_some() {
            schedule.distill_steps = s2;
        }
    }

    // The shapes were sized with PRED raw; codes of fewer than 8 bits compress (code layout 1),
    // so a wider predictor may fit: the chosen shape's trained codes are measured and the width
    // grown to the estimate. The written file is checked after training (the estimate is no
    // bound); should it not fit, the shape that surely fits is trained instead.
    let mut narrower = None;
    if let (Some(list), Some(budget)) = (list, budget) {
        let (chosen, probed) = if list.len() > 1 {
            let (i, reports, p) = ctx.probe(&list, &schedule, opts.seed)?;
            candidates = reports;
            (i, Some(p))
        } else {
            (0, None)
        };
        let pick = &list[chosen];
        cfg = pick.config.clone();
        schedule.storage = pick.dtype;
        if widens(opts, pick) {
            let probed = match probed {
                Some(p) => p,
                None => ctx.size_probe(pick, &schedule, opts.seed)?,
            };
            let (raw, stored) = predictor_bytes(&probed)?;
            let probe_ratio = stored as f64 / raw as f64;
            // A full run's codes compress further than the probe's: expect a little of that,
            // unless the probe's codes do not compress at all (no trend to extrapolate).
            let ratio = if probe_ratio < 1.0 {
                probe_ratio * PROBE_TO_FULL_RUN
            } else {
                probe_ratio
            };
            if let Some(w) = sizer.widen(budget, pick, ratio)? {
                notes.add(format!(
                    "--target-size: {}'s codes took {:.1} % of their packed bytes after the short \
                     run (code layout 1; {:.1} % expected after the full run), so hidden {} was \
                     widened to {} (estimated {} bytes)",
                    pick.dtype.name(),
                    100.0 * probe_ratio,
                    100.0 * ratio,
                    pick.config.widths[1],
                    w.config.widths[1],
                    w.bound
                ));
                narrower = Some(pick.clone());
                cfg = w.config;
            }
        }
    }

    let original_held_out = ctx.original_held_out()?;
    let mut seeds = SplitMix64::new(opts.seed);
    let mut trained = ctx.train(&cfg, resumed, &schedule, &mut seeds)?;
    if let (Some(narrow), Some(budget)) = (narrower, budget) {
        let size_of = |t: &Trained| size_of(&t.predictor, t.passthrough.as_ref(), &t.coded);
        let size = size_of(&trained)?;
        if size > budget {
            // The full run's codes compressed less than estimated. Their measured ratio sizes
            // the retry (a width between the sure fit and this one), so that one overshoot does
            // not cost the whole widening; should the retry not fit either, the sure fit.
            let (raw, stored) = predictor_bytes(&trained.predictor)?;
            let measured = stored as f64 / raw as f64;
            let over = cfg.widths[1];
            cfg = sizer.retry(budget, &narrow, over, measured)?;
            notes.add(format!(
                "--target-size: the widened predictor (hidden {over}) came out at {size} bytes, \
                 over the budget of {budget} (its codes at {:.1} % of packed); hidden {} was \
                 trained instead{}",
                100.0 * measured,
                cfg.widths[1],
                if cfg == narrow.config {
                    " (which fits surely)"
                } else {
                    ", sized by that measured share"
                }
            ));
            trained = ctx.train(&cfg, None, &schedule, &mut SplitMix64::new(opts.seed))?;
            if cfg != narrow.config {
                let size = size_of(&trained)?;
                if size > budget {
                    notes.add(format!(
                        "--target-size: hidden {} came out at {size} bytes, over the budget too; \
                         hidden {} (which fits surely) was trained instead",
                        cfg.widths[1], narrow.config.widths[1]
                    ));
                    cfg = narrow.config;
                    trained = ctx.train(&cfg, None, &schedule, &mut SplitMix64::new(opts.seed))?;
                }
            }
        }
    }
    if let Some(d) = trained.distill.as_ref().filter(|d| d.over_budget > 0) {
        notes.add(format!(
            "--target-size: {} of phase 2's held-out checks found the file over the budget, \
             by up to {} bytes (trained codes compress differently from those it was sized \
             with): of the states within it, the most accurate was kept",
            d.over_budget, d.over_budget_bytes
        ));
    }
    let predictor = trained.predictor;
    let stored_rmse = ctx.conv_rmse(&predictor);
    let coded: Vec<_> = trained.coded.iter().map(CodedConv::stored).collect();
    // The network as decoded: with the tuned passthrough when phase 2 tuned it, and the coded
    // convs as stored.
    let tuned_student = match (&trained.passthrough, &ctx.student, &ctx.host) {
        (pass, Some(st), Some(host)) if pass.is_some() || !coded.is_empty() => {
            Some(LoadedNet::<B::InnerBackend> {
                net: st.net.clone(),
                fixed: match pass {
                    Some(t) => FixedParams::new(&st.net, &t.apply(host), device)?,
                    None => st.fixed.clone(),
                },
                convs: decoded_coded(&coded, device)?,
            })
        }
        _ => None,
    };
    let test_set = ctx
        .plan
        .as_ref()
        .and_then(|p| p.test_report().map(|t| (t, &p.norm)));
    let test_accuracy = match (tuned_student.as_ref().or(ctx.student.as_ref()), &test_set) {
        (Some(st), Some((t, norm))) => Some(held_out_accuracy(
            &predictor,
            &ctx.layers,
            &ctx.permutations,
            st,
            t,
            norm,
            device,
        )?),
        _ => None,
    };
    let accuracy = AccuracyReport {
        predictor_dtype: schedule.storage.name(),
        rmse_vs_original: stored_rmse,
        coded_rmse_vs_original: match coded.is_empty() {
            true => None,
            false => {
                let decoded = coded
                    .iter()
                    .map(coded_weights)
                    .collect::<Result<Vec<_>>>()?;
                let originals = coded
                    .iter()
                    .map(|c| {
                        source.coded_originals.get(&c.name).cloned().ok_or_else(|| {
                            Error::Training(format!("coded conv {} is not a source conv", c.name))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(rmse(&decoded, &originals))
            }
        },
        held_out_images: ctx.plan.as_ref().map(|p| p.held_idx.len()),
        held_out_split: ctx.plan.as_ref().map(|p| p.held_split.name()),
        held_out: trained.held_out,
        test: test_accuracy,
        test_images: test_set.as_ref().map(|(t, _)| t.indices.len()),
        kept_round: trained.kept_round,
    };
    let goal = GoalReport::new(opts, budget, original_held_out, trained.held_out);
    if let Some(miss) = goal.enforced_miss() {
        return Err(Error::GoalNotMet(miss));
    }
    progress.stage("int4 baseline");
    let baseline = int4_baseline::<B::InnerBackend>(
        &source,
        ctx.host
            .as_ref()
            .map(|_| source.original_host_model())
            .as_ref(),
        ctx.plan.as_ref(),
        device,
    )?;
    let phase1_steps = schedule.phase1_steps;
    let encoded = Encoded {
        predictor,
        coded,
        tuned: trained.passthrough,
        layers: ctx.layers,
        permutations: ctx.permutations,
        rounds: trained.rounds,
        distill: trained.distill,
        accuracy,
        baseline,
        permutation_seconds,
        phase1_steps,
        candidates,
        goal,
        notes: notes.lines,
        time_limit,
    };
    assemble(&source, opts, encoded, started).map(|out| Attempt::Encoded(Box::new(out)))
}

/// The indices of the coded convs whose bits `@auto` chooses.
fn auto_bits_convs(coded: &[CodedConv], rules: &CodedOptions) -> Vec<usize> {
    (0..coded.len())
        .filter(|&i| rules.rule(&coded[i].name).is_some_and(|r| r.auto_bits))
        .collect()
}

/// The coded convs as stored with conv `auto[j]` at `bits[j]` (the others as they are).
fn at_bits(coded: &[CodedConv], auto: &[usize], bits: &[u8]) -> Vec<CodedTensor> {
    let mut all: Vec<CodedConv> = coded.to_vec();
    for (&i, &b) in auto.iter().zip(bits) {
        all[i].bits = b;
    }
    all.iter().map(CodedConv::stored).collect()
}

/// What a full run's stored share of packed `PRED` bytes is expected to be, relative to the size
/// probe's: measured 0.935, 0.955 and 0.958 (ResNet-20, int6, 12,000-step runs after 2,000-step
/// probes) and 0.957 (3,227 after 537). 0.97 stays above all four, so the widened file should
/// still fit; when it does not, the narrower shape is trained instead (the check below).
const PROBE_TO_FULL_RUN: f64 = 0.97;

/// The decisions an encode records in its report, each also shown when it is made
/// ([`Progress::note`]): the training after a decision may run for an hour.
struct Notes<'p> {
    progress: &'p dyn Progress,
    lines: Vec<String>,
}

impl Notes<'_> {
    fn add(&mut self, text: String) {
        self.progress.note(&text);
        self.lines.push(text);
    }
}

/// The hidden width asked for, else the default for this model ([`default_hidden`]).
fn hidden_for(opts: &EncodeOptions, storage: WeightDtype, source: &Source<'_>) -> u32 {
    opts.hidden.unwrap_or_else(|| {
        default_hidden(
            source.conv_weights(),
            storage,
            source.kernel_size,
            opts.layers,
            opts.pe_levels,
            opts.pe_base,
        )
    })
}

/// Whether a budget's chosen shape is widened by measuring its codes: integer codes of fewer than
/// 8 bits (written in code layout 1 when that is smaller) and a hidden width not pinned.
/// Not when coded convs fill the budget ([`coded_candidate`]).
fn widens(opts: &EncodeOptions, c: &Candidate) -> bool {
    opts.hidden.is_none() && !opts.auto_bits() && c.dtype.code_bits().is_some_and(|b| b < 8)
}

/// The channel order to encode in: `--channel-order` if given (it must be a resumed file's own),
/// else a resumed file's (its predictor was trained on that order), else the source's.
fn channel_order(opts: &EncodeOptions, resumed: Option<&Container<'_>>) -> Result<ChannelOrder> {
    let (Some(path), Some(c)) = (&opts.resume, resumed) else {
        return Ok(opts.channel_order.unwrap_or_default());
    };
    let recorded = c
        .metadata(&Limits::default())?
        .as_ref()
        .and_then(|m| m.pointer("/recipe/channel_order"))
        .and_then(|v| v.as_str())
        .map_or(Some(ChannelOrder::Source), ChannelOrder::from_name)
        .ok_or_else(|| {
            Error::Incompatible(format!(
                "{}: its recipe names a channel order this nernc does not know",
                path.display()
            ))
        })?;
    match opts.channel_order {
        Some(asked) if asked != recorded => Err(Error::Incompatible(format!(
            "{} was encoded with --channel-order {}; resuming it with --channel-order {} would \
             train its predictor on channels in another order",
            path.display(),
            recorded.name(),
            asked.name()
        ))),
        _ => Ok(recorded),
    }
}

/// Takes the predictor and permutation tables of `c` (read from `path`), checking that its layer table is the
/// one of the checkpoint being encoded (names, shapes) and adopting its permutation kinds.
fn load_resume(
    path: &Path,
    c: &Container<'_>,
    layers: &mut [LayerEntry],
    cfg: &PredictorConfig,
    opts: &EncodeOptions,
) -> Result<(Predictor, Vec<Permutation>)> {
    // The file's predictor is continued as it is: a shape asked for that differs from it would
    // otherwise be ignored without a word.
    let file = &c.predictor.config;
    if let Some(h) = opts.hidden.filter(|&h| h != file.hidden()) {
        return Err(Error::Incompatible(format!(
            "--hidden {h}: {} holds a predictor of hidden width {}, which --resume continues; \
             leave --hidden out (or encode without --resume for another width)",
            path.display(),
            file.hidden()
        )));
    }
    if opts.embedding_width != 0 && opts.embedding_width as usize != file.embedding_width() {
        return Err(Error::Incompatible(format!(
            "--embedding-width {}: {} holds a predictor with embedding width {}, which --resume \
             continues; leave --embedding-width out (or encode without --resume)",
            opts.embedding_width,
            path.display(),
            file.embedding_width()
        )));
    }
    if opts.pinned.pe_levels && opts.pe_levels != file.pe_levels {
        return Err(Error::Incompatible(format!(
            "--pe-levels {}: {} holds a predictor with {} levels, which --resume continues; \
             leave --pe-levels out (or encode without --resume)",
            opts.pe_levels,
            path.display(),
            file.pe_levels
        )));
    }
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

/// Resolves `--code PREFIX=auto` rules ([`choose_auto_ranks`]) with the source network (its
/// passthrough as stored) on the held-out images; returns the data plan it loaded for reuse.
fn auto_ranks<B: TrainBackend>(
    device: &B::Device,
    source: &Source<'_>,
    coded: &CodedOptions,
    opts: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(CodedOptions, Vec<String>, DataPlan)> {
    let auto_needs = |what: &str| {
        Error::InvalidArgument(format!(
            "--code PREFIX=auto chooses the rank on held-out images before training: {what}"
        ))
    };
    if opts.resume.is_some() {
        return Err(auto_needs(
            "with --resume the file's coded convs continue as they are (leave --code out)",
        ));
    }
    let plan = load_data(opts)?.ok_or_else(|| auto_needs("it needs real images (--data DIR)"))?;
    let host = source.host_model();
    let base = LoadedNet::<B::InnerBackend>::from_host(&host, device)?;
    check_fit(&base.net, &plan.train, &source.path.display().to_string())?;
    let held = plan
        .held_out()
        .ok_or_else(|| auto_needs("it needs held-out images (--held-out > 0)"))?;
    progress.stage("choosing ranks (--code PREFIX=auto)");
    let (resolved, lines) = choose_auto_ranks(
        &source.layers,
        &source.weights,
        coded,
        &mut |convs: &[CodedTensor]| {
            let n = base.with_convs(decoded_coded(convs, device)?);
            network_accuracy(&n, &held, &plan.norm, device)
        },
    )?;
    Ok((resolved, lines, plan))
}

fn auto_bits_needs(what: &str) -> Error {
    Error::InvalidArgument(format!(
        "--code PREFIX=FRACTION@auto chooses the bits on held-out images to fill the budget: it \
         needs {what}"
    ))
}

/// Resolves `--code PREFIX=FRACTION@auto` ([`choose_auto_bits`]): each such conv alone at
/// every bit width (the other convs as in `host`, the source with its passthrough as stored),
/// the mean KL
/// divergence of the network's predictions from the source's on the first
/// [`AUTO_BITS_IMAGES`] held-out images and its `CODE` entry's compressed bytes; then the bits
/// are lowered greedily until `size` (the whole file) is within `budget`. Sets the bits of
/// `coded`, returns the note saying what was measured and chosen.
#[allow(clippy::too_many_arguments)]
fn auto_bits<B: TrainBackend>(
    device: &B::Device,
    host: &HostModel,
    coded: &mut [CodedConv],
    rules: &CodedOptions,
    plan: &DataPlan,
    budget: u64,
    size: &dyn Fn(&[CodedTensor]) -> Result<u64>,
    progress: &dyn Progress,
) -> Result<String> {
    let held = plan
        .held_out()
        .ok_or_else(|| auto_bits_needs("held-out images (--held-out > 0)"))?;
    let probe_idx = &held.indices[..held.indices.len().min(AUTO_BITS_IMAGES)];
    let base = LoadedNet::<B::InnerBackend>::from_host(host, device)?;
    let classes = base.net.num_classes;
    let reference = log_probs(&base, held.data, probe_idx, &plan.norm, device)?;
    let auto = auto_bits_convs(coded, rules);
    progress.stage("choosing bits (--code PREFIX=FRACTION@auto)");
    // One conv at every width; `inputs`: the probe images as they enter the conv's block, so
    // that only the network from there on runs (the same figures as a full run, about half
    // the work); `None` runs it all.
    let probe = |i: usize, inputs: Option<&BlockInputs<B::InnerBackend>>| -> Result<BitsProbe> {
        let mut probe = BitsProbe {
            loss: Vec::new(),
            bytes: Vec::new(),
        };
        for bits in MIN_CODE_BITS..=MAX_CODE_BITS {
            let t = CodedConv {
                bits,
                ..coded[i].clone()
            }
            .stored();
            let entry = crate::format::write_coded(std::slice::from_ref(&t))?;
            let packed = zstd::bulk::compress(&entry, 19).map_err(|e| Error::io("<zstd>", e))?;
            probe.bytes.push(packed.len() as u64);
            let n = base.with_convs(decoded_coded(std::slice::from_ref(&t), device)?);
            let lp = match inputs {
                Some(inputs) => inputs.log_probs(&n)?,
                None => log_probs(&n, held.data, probe_idx, &plan.norm, device)?,
            };
            probe.loss.push(mean_kl(&reference, &lp, classes));
        }
        Ok(probe)
    };
    let blocks: Vec<Option<usize>> = auto
        .iter()
        .map(|&i| block_of(&base.net, &coded[i].name))
        .collect();
    let mut probes: Vec<Option<BitsProbe>> = Vec::new();
    probes.resize_with(auto.len(), || None);
    // Convs outside the residual blocks (a coded stem) through the whole network, then block by
    // block, the inputs carried on through the source's convs.
    for (j, &i) in auto.iter().enumerate() {
        if blocks[j].is_none() {
            probes[j] = Some(probe(i, None)?);
        }
    }
    if let Some(last) = blocks.iter().flatten().max() {
        let mut inputs = BlockInputs::new(&base, held.data, probe_idx, &plan.norm, device);
        loop {
            let k = inputs.block();
            for (j, &i) in auto.iter().enumerate() {
                if blocks[j] == Some(k) {
                    probes[j] = Some(probe(i, Some(&inputs))?);
                }
            }
            if k == *last {
                break;
            }
            inputs.advance(&base);
        }
    }
    let probes: Vec<BitsProbe> = probes
        .into_iter()
        .map(|p| p.ok_or_else(|| Error::Training("a conv's bits were not probed".into())))
        .collect::<Result<_>>()?;
    // The file at given bits: the fixed convs as they are, the probed ones at `bits`.
    let at = |bits: &[u8]| at_bits(coded, &auto, bits);
    // The file less the probed entries, and those entries compressed alone at `bits`: an
    // estimate that skips the whole-file sizing (zstd-19 of every code) of states clearly over.
    // In one section the entries compress a little better than alone, hence the 2 % margin.
    let entries =
        |bits: &[u8]| -> u64 { probes.iter().zip(bits).map(|(p, &b)| p.bytes_at(b)).sum() };
    let all_max = vec![MAX_CODE_BITS; auto.len()];
    let rest = size(&at(&all_max))?.saturating_sub(entries(&all_max));
    let mut sized = 0;
    let mut fits = |bits: &[u8]| -> Result<bool> {
        if rest + entries(bits) > budget + budget / 50 {
            return Ok(false);
        }
        sized += 1;
        Ok(size(&at(bits))? <= budget)
    };
    let chosen = choose_auto_bits(&probes, &mut fits)?.ok_or_else(|| {
        Error::Budget(format!(
            "--code PREFIX=FRACTION@auto: the file does not fit {budget} bytes even with \
             {MIN_CODE_BITS}-bit codes for every conv the rule names (the rest of the file, the \
             predictor of the other convs included, takes about {rest} bytes)"
        ))
    })?;
    let mut loss = 0.0;
    for ((&i, &b), p) in auto.iter().zip(&chosen).zip(&probes) {
        coded[i].bits = b;
        loss += p.loss_at(b);
    }
    let by_conv = auto
        .iter()
        .zip(&chosen)
        .map(|(&i, b)| format!("{} {b}", coded[i].name.trim_end_matches(".weight")))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "--code ...@auto: {} convs measured alone at {MIN_CODE_BITS}-{MAX_CODE_BITS} bits on \
         {} held-out images (KL divergence from the source's predictions); bits chosen to fit \
         {budget} bytes (summed divergence {loss:.4} nats, {sized} whole-file sizings): {by_conv}",
        auto.len(),
        probe_idx.len(),
    ))
}

/// The coded convs of a resumed file, taken out of `source`'s predicted layers and continued from
/// their stored values. `--code` rules, when given, must describe exactly those convs (names,
/// ranks, bits): a file is continued as it is, as its predictor's shape is.
fn resumed_coded(
    source: &mut Source<'_>,
    c: &Container<'_>,
    rules: Option<&CodedOptions>,
    path: &Path,
) -> Result<Vec<CodedConv>> {
    if let Some(rules) = rules {
        let asked: Vec<_> = source
            .layers
            .iter()
            .filter_map(|l| {
                rules
                    .rank(l)
                    .map(|r| (l.name.clone(), r, rules.bits_of(&l.name)))
            })
            .collect();
        let held: Vec<_> = c
            .coded
            .iter()
            .map(|t| (t.name.clone(), t.rank, t.bits))
            .collect();
        if asked != held {
            return Err(Error::Incompatible(format!(
                "--code: {} holds {} coded convs, which --resume continues as they are, and the \
                 rules describe {} (names, ranks or bits differ); leave --code out (or encode \
                 without --resume)",
                path.display(),
                held.len(),
                asked.len()
            )));
        }
    }
    source.take_coded(&c.coded, path)
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
        let cfg = with_embedding(
            PredictorConfig::mlp(
                hidden_for(opts, opts.predictor_dtype, &source),
                opts.layers,
                k,
                opts.pe_levels,
                opts.pe_base,
            ),
            opts.embedding_width,
            &source.layers,
        );
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
        settings.steps = opts.steps.unwrap_or(20);
        let t = Instant::now();
        train::<B>(device, &cfg, &set, &settings, opts.seed, &NoProgress)?;
        Ok((settings.steps * opts.batch.min(set.len())) as f64 / t.elapsed().as_secs_f64())
    }
}
