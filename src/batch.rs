//! `nernc batch`: many checkpoints, one worker of many. A manifest lists the sources; a worker
//! takes the lines of its shard, names each output by content (the source's SHA-256, a hash of
//! the settings, nernc's version), skips what exists, publishes each file exactly once
//! (create-if-absent) and reports one JSON line per input.
//!
//! Exit status (documented for schedulers): 0 every input of the shard encoded or skipped; 2
//! some input is bad or the command line is (retrying will not help); 75 a transient failure
//! or a stop request (retry: a rerun does only what is unfinished). 75 wins over 2.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::json;

use crate::encode::{ChannelOrder, EncodeOptions, Progress, Rounding, encode_file};
use crate::error::{Error, Result, StoreFailure};
use crate::io::{MappedFile, sha256_hex};
use crate::store::Location;

/// Exit status: some input was bad (do not retry).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status: transient failure or stopped (retry; EX_TEMPFAIL).
pub const EXIT_RETRY: u8 = 75;

/// One manifest line.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestEntry {
    /// 1-based line number (blank lines count; they are skipped).
    pub line: usize,
    pub source: String,
    pub id: Option<String>,
}

/// A manifest line that could not be read as an entry: reported `failed`, the others go on.
#[derive(Clone, Debug, PartialEq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Parses a JSON-lines manifest: `{"source": PATH_OR_URI, "id": optional string}` per line.
pub fn parse_manifest(text: &str) -> (Vec<ManifestEntry>, Vec<BadLine>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                bad.push(BadLine {
                    line,
                    reason: format!("not JSON: {e}"),
                });
                continue;
            }
        };
        match v.get("source").and_then(|s| s.as_str()) {
            Some(s) if !s.is_empty() => ok.push(ManifestEntry {
                line,
                source: s.to_string(),
                id: v.get("id").and_then(|i| i.as_str()).map(str::to_owned),
            }),
            _ => bad.push(BadLine {
                line,
                reason: "no \"source\" string".into(),
            }),
        }
    }
    (ok, bad)
}

/// Which shard a worker is: `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// `I/N` (0-based index).
    pub fn parse(arg: &str) -> Result<Self> {
        let bad =
            || Error::InvalidArgument(format!("--shard {arg:?}: expected I/N with 0 <= I < N"));
        let (i, n) = arg.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        Shard::new(index, count).ok_or_else(bad)
    }

    pub fn new(index: u64, count: u64) -> Option<Self> {
        (count > 0 && index < count).then_some(Shard { index, count })
    }

    /// `--shards N` with the index from the scheduler's variable: Kubernetes Indexed Jobs
    /// (`JOB_COMPLETION_INDEX`), Slurm arrays (`SLURM_ARRAY_TASK_ID`), AWS Batch arrays
    /// (`AWS_BATCH_JOB_ARRAY_INDEX`), the first one set.
    pub fn from_env(count: u64, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        const VARS: [&str; 3] = [
            "JOB_COMPLETION_INDEX",
            "SLURM_ARRAY_TASK_ID",
            "AWS_BATCH_JOB_ARRAY_INDEX",
        ];
        let (var, value) = VARS
            .iter()
            .find_map(|v| env(v).map(|x| (*v, x)))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--shards {count} needs the shard index: --shard I/N, or one of {} set",
                    VARS.join(", ")
                ))
            })?;
        let index: u64 = value
            .trim()
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("{var}={value:?} is not a shard index")))?;
        Shard::new(index, count).ok_or_else(|| {
            Error::InvalidArgument(format!("{var}={index} is outside 0..{count} (--shards)"))
        })
    }

    /// Whether the entry on manifest line `line` (1-based) belongs to this shard: by line
    /// number, so every worker agrees without reading any source.
    pub fn owns(&self, line: usize) -> bool {
        (line as u64 - 1) % self.count == self.index
    }
}

/// SHA-256 over the settings that change the output (not paths, threads or reporting), so
/// reruns and other workers with the same command line name their outputs alike.
pub fn settings_hash(o: &EncodeOptions) -> String {
    let d = o.distill.as_ref().map(|d| {
        let mut v = json!({
            "steps": d.steps, "source": format!("{:?}", d.source),
            "teacher": d.teacher.as_ref().map(|t| t.display().to_string()),
            "temperature": d.temperature, "recon_weight": d.recon_weight, "lr": d.lr,
            "batch": d.batch, "eval_every": d.eval_every, "warmup": d.warmup,
            "augment_shift": d.augment.shift, "augment_flip": d.augment.flip,
        });
        // Added in a later version: present only when set, so earlier settings keep their hash.
        if d.label_weight > 0.0 {
            v["label_weight"] = json!(d.label_weight);
        }
        if d.feature_weight > 0.0 {
            v["feature_weight"] = json!(d.feature_weight);
        }
        if d.cycles != 1 {
            v["cycles"] = json!(d.cycles);
        }
        v
    });
    let mut v = json!({
        "hidden": o.hidden, "steps": o.steps, "rounds": o.rounds, "batch": o.batch,
        "permutation": format!("{:?}", o.permutation), "seed": o.seed,
        "device": o.device.name(), "lr": o.lr, "beta1": o.beta1, "pe_levels": o.pe_levels,
        "pe_base": o.pe_base, "dataset": o.dataset.name(), "data": o.data_dir.is_some(),
        "held_out": o.held_out, "test_eval": o.test_eval, "distill": d,
        "predictor_dtype": o.predictor_dtype.name(),
        "target_size": o.target_size.map(|t| format!("{t:?}")),
        "pinned": format!("{:?}", o.pinned), "max_drop": o.max_drop.points,
        "max_drop_enforced": o.max_drop.enforced, "passthrough_f16": o.passthrough_f16,
    });
    // Added in a later version: present only when set, so earlier settings keep their hash.
    if o.layers != crate::predictor::REFERENCE_LAYERS {
        v["layers"] = json!(o.layers);
    }
    if o.raw_passthrough {
        v["raw_passthrough"] = json!(true);
    }
    if o.embedding_width != 0 {
        v["embedding_width"] = json!(o.embedding_width);
    }
    if o.held_out_from != crate::data::Split::Train {
        v["held_out_from"] = json!(o.held_out_from.name());
    }
    if let Some(lr) = o.tune_passthrough {
        v["tune_passthrough_lr"] = json!(lr);
    }
    if let Some(t) = o.time_limit {
        v["time_limit_seconds"] = json!(t);
    }
    if o.rounding != Rounding::default() {
        v["rounding"] = json!(o.rounding.name());
    }
    if let Some(c) = o.channel_order.filter(|&c| c != ChannelOrder::Source) {
        v["channel_order"] = json!(c.name());
    }
    sha256_hex(v.to_string().as_bytes())
}

/// The output name of a source with this digest under these settings.
pub fn output_name(source_sha256: &str, settings: &str) -> String {
    format!(
        "{}-{}-nernc{}.nern",
        &source_sha256[..32.min(source_sha256.len())],
        &settings[..12.min(settings.len())],
        env!("CARGO_PKG_VERSION")
    )
}

/// Whether a failure is worth retrying (75) rather than a bad input (2).
pub fn is_transient(e: &Error) -> bool {
    match e {
        Error::Cancelled | Error::DeviceUnavailable { .. } => true,
        Error::Io { source, .. } => !matches!(
            source.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::UnexpectedEof
        ),
        Error::Store { kind, .. } => *kind == StoreFailure::Transient,
        _ => false,
    }
}

/// Everything a batch run is told.
pub struct BatchJob<'a> {
    pub manifest: &'a Location,
    /// A directory, or an object-store prefix (`s3://bucket/prefix`).
    pub out_dir: &'a Location,
    pub shard: Shard,
    pub opts: &'a EncodeOptions,
    /// Set by SIGTERM/SIGINT: stops at the next training step.
    pub stop: Arc<AtomicBool>,
}

/// Counts of a finished batch run, and its exit status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub encoded: usize,
    pub skipped: usize,
    pub failed_bad: usize,
    pub failed_transient: usize,
}

impl BatchSummary {
    pub fn exit_status(&self) -> u8 {
        if self.failed_transient > 0 {
            EXIT_RETRY
        } else if self.failed_bad > 0 {
            EXIT_BAD_INPUT
        } else {
            0
        }
    }
}

struct StopProgress {
    stop: Arc<AtomicBool>,
}

impl Progress for StopProgress {
    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Runs the shard, writing one JSON line per input to `report`. Errors of the whole run (an
/// unreadable manifest, an output directory that cannot be written) are returned; per-input
/// failures are reported and counted.
pub fn run(job: &BatchJob<'_>, report: &mut dyn Write) -> Result<BatchSummary> {
    let text = String::from_utf8(job.manifest.read()?).map_err(|_| {
        Error::InvalidArgument(format!("manifest {} is not UTF-8 text", job.manifest))
    })?;
    check_out_dir(job.out_dir)?;
    let (entries, bad_lines) = parse_manifest(&text);
    let settings = &settings_hash(job.opts);
    let mut summary = BatchSummary::default();
    let mut emit = |v: serde_json::Value| -> Result<()> {
        writeln!(report, "{v}").map_err(|e| Error::io("<report>", e))
    };
    for b in bad_lines.iter().filter(|b| job.shard.owns(b.line)) {
        summary.failed_bad += 1;
        emit(json!({"line": b.line, "status": "failed", "retry": false, "reason": b.reason}))?;
    }
    let mut seen = HashSet::new();
    let progress = StopProgress {
        stop: job.stop.clone(),
    };
    for e in entries.iter() {
        let first = seen.insert(e.source.clone());
        if !job.shard.owns(e.line) {
            continue;
        }
        let started = Instant::now();
        let mut record = json!({"line": e.line, "source": e.source, "id": e.id});
        if job.stop.load(Ordering::Relaxed) {
            summary.failed_transient += 1;
            record["status"] = "failed".into();
            record["retry"] = true.into();
            record["reason"] = Error::Cancelled.to_string().into();
            emit(record)?;
            continue;
        }
        let outcome = if first {
            one(e, job, settings, &progress, &mut record)
        } else {
            Err(Error::InvalidArgument(format!(
                "duplicate source {} (already on an earlier line)",
                e.source
            )))
        };
        record["seconds"] = started.elapsed().as_secs_f64().into();
        match outcome {
            Ok(true) => summary.encoded += 1,
            Ok(false) => summary.skipped += 1,
            Err(err) => {
                let retry = is_transient(&err);
                if retry {
                    summary.failed_transient += 1;
                } else {
                    summary.failed_bad += 1;
                }
                record["status"] = "failed".into();
                record["retry"] = retry.into();
                record["reason"] = err.to_string().into();
            }
        }
        emit(record)?;
    }
    Ok(summary)
}

/// Fails early when outputs cannot be written: a local directory is created and probed with a
/// temporary file; an object-store prefix must answer (credentials, bucket) to a HEAD.
fn check_out_dir(out: &Location) -> Result<()> {
    match out.local_path() {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
            Ok(())
        }
        None => out.join(".nernc-probe")?.check_output(),
    }
}

/// Encodes one input unless its output exists; `Ok(true)` when it published a new file.
fn one(
    e: &ManifestEntry,
    job: &BatchJob<'_>,
    settings: &str,
    progress: &dyn Progress,
    record: &mut serde_json::Value,
) -> Result<bool> {
    let source = std::path::Path::new(&e.source);
    let file = MappedFile::open(source)?;
    let digest = sha256_hex(file.bytes());
    let name = output_name(&digest, settings);
    let out = job.out_dir.join(&name)?;
    record["source_sha256"] = digest.into();
    record["source_bytes"] = (file.bytes().len() as u64).into();
    record["output"] = out.to_string().into();
    record["settings_sha256"] = settings.into();
    if out.exists()? {
        record["status"] = "skipped".into();
        return Ok(false);
    }
    let (bytes, report) = encode_file(&file, job.opts, progress)?;
    record["nern_sha256"] = sha256_hex(&bytes).into();
    record["nern_bytes"] = (bytes.len() as u64).into();
    record["percent"] = (100.0 * bytes.len() as f64 / report.source_bytes as f64).into();
    // The encoder's own time: `seconds` less this is the batch's overhead for the input.
    record["encode_seconds"] = report.total_seconds.into();
    record["held_out"] = report.accuracy.held_out.into();
    record["test"] = report.accuracy.test.into();
    // Create-if-absent (a no-clobber link, or a conditional PUT): two workers on the same input
    // publish once and neither overwrites the other.
    let created = out.create_new(&bytes)?;
    record["status"] = if created { "encoded" } else { "skipped" }.into();
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_bad_lines_and_ids() {
        let text = "{\"source\": \"a.safetensors\", \"id\": \"A\"}\n\nnot json\n{\"id\": 3}\n{\"source\": \"file:///x/b.safetensors\"}\n";
        let (ok, bad) = parse_manifest(text);
        assert_eq!(
            ok,
            [
                ManifestEntry {
                    line: 1,
                    source: "a.safetensors".into(),
                    id: Some("A".into())
                },
                ManifestEntry {
                    line: 5,
                    source: "file:///x/b.safetensors".into(),
                    id: None
                },
            ]
        );
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn shards_partition_the_lines_and_come_from_the_scheduler() {
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).unwrap()).collect();
        for line in 1..=20 {
            assert_eq!(shards.iter().filter(|s| s.owns(line)).count(), 1);
        }
        assert_eq!(Shard::parse("1/3").unwrap(), shards[1]);
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let env = |v: &str| (v == "SLURM_ARRAY_TASK_ID").then(|| "2".to_string());
        assert_eq!(Shard::from_env(3, &env).unwrap(), shards[2]);
        let none = |_: &str| None;
        assert!(Shard::from_env(3, &none).is_err());
        let out_of_range = |_: &str| Some("7".to_string());
        assert!(Shard::from_env(3, &out_of_range).is_err());
    }

    #[test]
    fn names_depend_on_source_settings_and_version_only() {
        let a = EncodeOptions::default();
        let mut b = a.clone();
        b.threads = a.threads + 7;
        assert_eq!(
            settings_hash(&a),
            settings_hash(&b),
            "threads change nothing"
        );
        b.seed = 1;
        assert_ne!(settings_hash(&a), settings_hash(&b));
        // The rounding and the channel order change the file, so the name.
        let mut c = a.clone();
        c.rounding = Rounding::Nearest;
        assert_ne!(settings_hash(&a), settings_hash(&c));
        c = a.clone();
        c.channel_order = Some(ChannelOrder::Source);
        assert_eq!(
            settings_hash(&a),
            settings_hash(&c),
            "the default order is no setting"
        );
        c.channel_order = Some(ChannelOrder::Similar);
        assert_ne!(settings_hash(&a), settings_hash(&c));
        // Where the held-out images come from changes what phase 2 trains on and keeps.
        c = a.clone();
        c.held_out_from = crate::data::Split::Test;
        assert_ne!(settings_hash(&a), settings_hash(&c));
        // Embedding tables are another predictor (format 1.7).
        c = a.clone();
        c.embedding_width = 4;
        assert_ne!(settings_hash(&a), settings_hash(&c));
        let name = output_name(&"ab".repeat(32), &settings_hash(&a));
        assert!(name.starts_with(&"ab".repeat(16)));
        assert!(name.ends_with(&format!("-nernc{}.nern", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn exit_status_prefers_retry() {
        let s = |bad, transient| BatchSummary {
            failed_bad: bad,
            failed_transient: transient,
            ..BatchSummary::default()
        };
        assert_eq!(s(0, 0).exit_status(), 0);
        assert_eq!(s(1, 0).exit_status(), EXIT_BAD_INPUT);
        assert_eq!(s(1, 1).exit_status(), EXIT_RETRY);
    }
}
