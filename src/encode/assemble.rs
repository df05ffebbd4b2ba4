//! Assembling the container: the trained predictor, the tables, every other tensor verbatim,
//! and the provenance (`META`) with the recipe and the measured figures.

use std::time::Instant;

use serde_json::json;

use super::budget::META_RESERVE;
use super::options::{ChannelOrder, EncodeOptions};
use super::report::{
    AccuracyReport, BaselineReport, CandidateReport, DistillReport, EncodeReport, GoalReport,
    RoundReport, TimeLimitReport,
};
use super::source::Source;
use super::tune::TunedPassthrough;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::format::{CodedTensor, ContainerParts, LayerEntry, RawTensor, write_container};
use crate::io::sha256_hex;
use crate::permute::Permutation;
use crate::predictor::Predictor;

/// What the phases produced.
pub struct Encoded {
    /// The predictor as stored (already rounded to its storage dtype).
    pub predictor: Predictor,
    /// The coded convs as stored (`--code`, format 1.8).
    pub coded: Vec<CodedTensor>,
    /// Passthrough tensors phase 2 tuned (`--passthrough tuned`), stored instead of the source's.
    pub tuned: Option<TunedPassthrough>,
    /// The layer table with each layer's permutation kind.
    pub layers: Vec<LayerEntry>,
    pub permutations: Vec<Permutation>,
    pub rounds: Vec<RoundReport>,
    pub distill: Option<DistillReport>,
    pub accuracy: AccuracyReport,
    pub baseline: BaselineReport,
    pub permutation_seconds: f64,
    /// Phase-1 steps per round as run.
    pub phase1_steps: usize,
    pub candidates: Vec<CandidateReport>,
    pub goal: GoalReport,
    /// What the encode did differently from what was asked, and why.
    pub notes: Vec<String>,
    pub time_limit: Option<TimeLimitReport>,
}

/// The `.nern` bytes and the report; `started` is when the encode began.
pub fn assemble(
    source: &Source<'_>,
    opts: &EncodeOptions,
    r: Encoded,
    started: Instant,
) -> Result<(Vec<u8>, EncodeReport)> {
    let tuned_bytes = r
        .tuned
        .as_ref()
        .map(|t| source.tuned_bytes(t))
        .transpose()?;
    let passthrough: Vec<RawTensor<'_>> = match &tuned_bytes {
        Some(b) => source.passthrough_with(b).collect(),
        None => source.passthrough().collect(),
    };
    let predicted_parameters: u64 = r.layers.iter().map(|l| l.elements() as u64).sum();
    let mut report = EncodeReport {
        source_bytes: source.bytes.len() as u64,
        nern_bytes: 0,
        predicted_tensors: r.layers.len(),
        coded_tensors: r.coded.len(),
        passthrough_tensors: passthrough.len(),
        predicted_parameters,
        predictor_parameters: r.predictor.config.parameter_count(),
        permutation_seconds: r.permutation_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        rounds: r.rounds,
        distill: r.distill,
        accuracy: r.accuracy,
        baseline: r.baseline,
        goal: r.goal,
        candidates: r.candidates,
        notes: r.notes,
        time_limit: r.time_limit,
        device: opts.device.describe(),
    };
    let cfg = &r.predictor.config;
    let source_name = source
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let recipe = json!({
        "phase1": {
            "hidden": cfg.widths.get(1),
            "layers": cfg.depth(),
            "steps": r.phase1_steps,
            "rounds": opts.rounds,
            "batch": opts.batch,
            "permutation": format!("{:?}", opts.permutation),
            "optimizer": "adam",
            "lr": opts.lr,
            "beta1": opts.beta1,
            "lr_schedule": "cosine per step to 1e-6",
            "pe_levels": cfg.pe_levels,
            "pe_base": cfg.pe_base,
            "sampling": "0.8 uniform subset / 0.2 L2-norm weighted",
            "loss": "global RMSE after centre crop",
        },
        "phase2": report.distill.as_ref().map(|d| json!({
            "steps": d.steps, "cycles": d.cycles, "batch": d.batch, "lr": d.lr, "warmup": d.warmup, "temperature": d.temperature,
            "recon_weight": d.recon_weight, "label_weight": d.label_weight,
            "feature_weight": d.feature_weight,
            "input": d.input, "teacher": d.teacher,
            "augment_shift": d.augment.shift, "augment_flip": d.augment.flip,
            "loss": "KL(teacher || student) * T^2 (+ recon_weight * RMSE) (+ label_weight * CE(labels)) (+ feature_weight * attention-map distance)",
        })),
        "predictor_dtype": cfg.weight_dtype.name(),
        "rounding": cfg.weight_dtype.max_code().map(|_| opts.rounding.name()),
        "passthrough": match (opts.passthrough_f16, r.tuned.is_some()) {
            (false, false) => "exact",
            (true, false) => "f16 (lossy)",
            (false, true) => "tuned (lossy: BN weight/bias and FC trained in phase 2)",
            (true, true) => "tuned f16 (lossy: BN weight/bias and FC trained in phase 2, stored as binary16)",
        },
        "raw_passthrough": opts.raw_passthrough,
        "tune_lr": opts.tune_passthrough.filter(|_| r.tuned.is_some()),
        "tuned_tensors": r.tuned.as_ref().map(|t| t.tensors.len()),
        "target_size": opts.target_size.map(|t| format!("{t:?}")),
        "max_drop": opts.max_drop.points,
        "resumed_from": opts.resume.as_ref().map(|p| p.display().to_string()),
        "seed": opts.seed,
        "device": opts.device.name(),
        "dataset": opts.data_dir.as_ref().map(|_| opts.dataset.name()),
        "held_out_images": report.accuracy.held_out_images,
    });
    // Added in a later version: present only when set, so earlier recipes keep their hash. The
    // step counts above are the ones run, which reproduce the file without the limit.
    let mut recipe = recipe;
    if let Some(t) = opts.time_limit {
        recipe["time_limit_seconds"] = json!(t);
    }
    if opts.held_out_from != Split::Train {
        recipe["held_out_from"] = json!(opts.held_out_from.name());
    }
    if opts.embedding_width != 0 {
        recipe["embedding_width"] = json!(opts.embedding_width);
    }
    if let Some(c) = &opts.coded {
        recipe["code"] = json!({
            "rules": c.rules.iter().map(|r| {
                let mut rule = json!({"prefix": r.prefix, "fraction": r.fraction, "bits": r.bits.unwrap_or(c.bits)});
                // `PREFIX=auto`: the fraction above is the one the encoder chose.
                if r.auto {
                    rule["auto"] = json!(true);
                }
                // `--target-size` without `--code`: every conv but this one.
                if let Some(kept) = &r.except {
                    rule["except"] = json!(kept);
                }
                // `@auto`: each conv's bits, chosen for the budget, are in `auto_bits` below.
                if r.auto_bits {
                    rule["bits"] = json!("auto");
                }
                rule
            }).collect::<Vec<_>>(),
            "bits": c.bits,
            "lr": c.lr,
            "tensors": r.coded.len(),
            "codes": r.coded.iter().map(CodedTensor::codes).sum::<usize>(),
            "init": "truncated SVD, singular values split evenly; phase 2 trains the values through the rounding",
        });
        if c.has_auto_bits() {
            let chosen: serde_json::Map<String, serde_json::Value> = r
                .coded
                .iter()
                .filter(|t| c.rule(&t.name).is_some_and(|r| r.auto_bits))
                .map(|t| (t.name.clone(), json!(t.bits)))
                .collect();
            recipe["code"]["auto_bits"] = json!(chosen);
        }
    }
    if let Some(groups) = source.reordered_groups {
        recipe["channel_order"] = json!(ChannelOrder::Similar.name());
        recipe["channel_groups"] = json!(groups);
    }
    let names: Vec<&str> = r
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .chain(r.coded.iter().map(|t| t.name.as_str()))
        .chain(passthrough.iter().map(|t| t.name.as_str()))
        .collect();
    let metadata = json!({
        "encoder": format!("nernc {}", env!("CARGO_PKG_VERSION")),
        "source": {
            "name": source_name,
            "bytes": report.source_bytes,
            "blake3": blake3::hash(source.bytes).to_hex().to_string(),
            "sha256": sha256_hex(source.bytes),
        },
        "tensors": {
            "count": names.len(),
            "predicted": r.layers.len(),
            "coded": r.coded.len(),
            "passthrough": passthrough.len(),
            // SHA-256 of the tensor names in file order, one per line: equal names, equal hash.
            "names_sha256": sha256_hex(names.join("\n").as_bytes()),
        },
        // SHA-256 of the recipe's JSON (keys sorted): the same settings, the same hash.
        "recipe_sha256": sha256_hex(recipe.to_string().as_bytes()),
        "recipe": recipe,
        "rounds": report.rounds,
        "distillation": report.distill,
        "accuracy": report.accuracy,
        "baseline": report.baseline,
        "goal": report.goal,
        "candidates": report.candidates,
        "notes": report.notes,
        "time_limit": report.time_limit,
        "timings": {
            "permutation_seconds": report.permutation_seconds,
            "total_seconds": report.total_seconds,
        },
        "device": report.device,
    });
    let write = |metadata: Option<serde_json::Value>| {
        write_container(&ContainerParts {
            predictor: &r.predictor,
            layers: &r.layers,
            permutations: &r.permutations,
            passthrough: passthrough.clone(),
            coded: &r.coded,
            source_metadata: source.checkpoint.metadata.clone(),
            metadata,
            raw_predictor: false,
            raw_data: opts.raw_passthrough,
        })
    };
    let mut bytes = write(Some(metadata.clone()))?;
    if let Some(budget) = report.goal.budget_bytes
        && bytes.len() as u64 > budget
    {
        // The budget reserved META_RESERVE bytes for the provenance; should it not fit, the
        // histories go first, then the whole optional section.
        bytes = write(Some(without_histories(metadata)))?;
        if bytes.len() as u64 > budget {
            bytes = write(None)?;
        }
        if bytes.len() as u64 > budget {
            return Err(Error::GoalNotMet(format!(
                "the file takes {} bytes, over the budget of {budget} (its size was bounded \
                 with {META_RESERVE} bytes for metadata; please report this); nothing written",
                bytes.len()
            )));
        }
    }
    report.nern_bytes = bytes.len() as u64;
    Ok((bytes, report))
}

/// The provenance without its per-step histories (loss, held-out) and candidate list.
fn without_histories(mut m: serde_json::Value) -> serde_json::Value {
    if let Some(rounds) = m.get_mut("rounds").and_then(|r| r.as_array_mut()) {
        for r in rounds {
            r["loss_history"] = json!([]);
        }
    }
    if let Some(d) = m.get_mut("distillation").filter(|d| d.is_object()) {
        d["loss_history"] = json!([]);
        d["held_out_history"] = json!([]);
    }
    m["candidates"] = json!([]);
    m
}
