//! `nernc batch` end to end with the real binary: content-addressed outputs published once,
//! reruns skip what exists, bad inputs are reported and the others go on, shards partition the
//! manifest, and SIGTERM stops at a training step with nothing partial and exit status 75.
#![cfg(feature = "train")]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn batch(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "batch",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nernc(&args)
}

fn records(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn status_of(r: &[serde_json::Value], line: u64) -> String {
    r.iter()
        .find(|v| v["line"] == line)
        .map(|v| v["status"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn encodes_skips_on_rerun_and_reports_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (r20, r56) = (
        fixture("fmnist-resnet20.safetensors"),
        fixture("fmnist-resnet56.safetensors"),
    );
    let manifest = dir.path().join("m.jsonl");
    let lines = [
        format!(r#"{{"source": "{}", "id": "r20"}}"#, r20.display()),
        "not json".to_string(),
        r#"{"source": "/nonexistent/x.safetensors"}"#.to_string(),
        format!(r#"{{"source": "{}"}}"#, r20.display()),
        format!(r#"{{"source": "file://{}"}}"#, r56.display()),
        r#"{"source": "s3://bucket/model.safetensors"}"#.to_string(),
    ];
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let o = batch(&manifest, &out, &QUICK);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let r = records(&o);
    assert_eq!(r.len(), 6);
    assert_eq!(status_of(&r, 1), "encoded");
    assert_eq!(status_of(&r, 5), "encoded");
    for bad in [2, 3, 4, 6] {
        let v = r.iter().find(|v| v["line"] == bad).unwrap();
        assert_eq!(v["status"], "failed", "line {bad}");
        assert_eq!(v["retry"], false, "line {bad}");
    }
    let reason = |line: u64| r.iter().find(|v| v["line"] == line).unwrap()["reason"].to_string();
    assert!(reason(2).contains("not JSON"));
    assert!(reason(4).contains("duplicate"));
    assert!(reason(6).contains("s3://"));
    let first = r.iter().find(|v| v["line"] == 1).unwrap();
    assert_eq!(first["id"], "r20");
    let sha = nernc::io::sha256_hex(&std::fs::read(&r20).unwrap());
    assert_eq!(first["source_sha256"], sha);
    let output = first["output"].as_str().unwrap();
    assert!(
        Path::new(output)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&sha[..32])
    );
    let published = std::fs::read(output).unwrap();
    assert_eq!(first["nern_sha256"], nernc::io::sha256_hex(&published));
    // The encoder's own time is part of the input's time (the rest is the batch's overhead).
    let (secs, enc) = (first["seconds"].as_f64(), first["encode_seconds"].as_f64());
    assert!(
        enc.is_some_and(|e| e > 0.0 && e <= secs.unwrap()),
        "{first}"
    );
    assert_eq!(entries(&out).len(), 2, "two files, nothing temporary");
    let mtime = std::fs::metadata(output).unwrap().modified().unwrap();

    // A rerun does only what is unfinished: nothing; the published files are untouched.
    let o = batch(&manifest, &out, &QUICK);
    assert_eq!(o.status.code(), Some(2));
    let r = records(&o);
    assert_eq!(status_of(&r, 1), "skipped");
    assert_eq!(status_of(&r, 5), "skipped");
    assert_eq!(
        std::fs::metadata(output).unwrap().modified().unwrap(),
        mtime
    );
    // Other settings, other names.
    let mut other = QUICK.to_vec();
    other.extend_from_slice(&["--seed", "3"]);
    let o = batch(&manifest, &out, &other);
    assert_eq!(status_of(&records(&o), 1), "encoded");
    assert_eq!(entries(&out).len(), 4);
}

#[test]
fn shards_partition_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.jsonl");
    let srcs = ["fmnist-resnet20.safetensors", "fmnist-resnet56.safetensors"];
    let text: Vec<String> = srcs
        .iter()
        .map(|s| format!(r#"{{"source": "{}"}}"#, fixture(s).display()))
        .collect();
    std::fs::write(&manifest, text.join("\n")).unwrap();
    let out = dir.path().join("out");
    let mut a = QUICK.to_vec();
    a.extend_from_slice(&["--shard", "0/2"]);
    let o = batch(&manifest, &out, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = records(&o);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["line"], 1);
    // The second worker takes its index from the scheduler (a Kubernetes Indexed Job).
    let mut b = vec![
        "batch".to_string(),
        "--manifest".into(),
        manifest.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--shards".into(),
        "2".into(),
    ];
    b.extend(QUICK.iter().map(|s| s.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_nernc"))
        .args(&b)
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = records(&o);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["line"], 2);
    assert_eq!(entries(&out).len(), 2);
    // Out of range, or no index at all: a command-line error (2).
    let mut c = QUICK.to_vec();
    c.extend_from_slice(&["--shard", "2/2"]);
    assert_eq!(batch(&manifest, &out, &c).status.code(), Some(2));
}

#[test]
fn sigterm_stops_at_a_training_step_with_nothing_partial_and_exit_75() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.jsonl");
    let r20 = fixture("fmnist-resnet20.safetensors");
    std::fs::write(&manifest, format!(r#"{{"source": "{}"}}"#, r20.display())).unwrap();
    let out = dir.path().join("out");
    let report = dir.path().join("report.jsonl");
    // A million phase-1 steps: far longer than the test waits.
    let child = Command::new(env!("CARGO_BIN_EXE_nernc"))
        .args([
            "batch",
            "--manifest",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--hidden",
            "8",
            "--steps",
            "1000000",
            "--batch",
            "64",
            "--data",
            "noise",
            "--distill-steps",
            "0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "did not stop at a step"
    );
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        entries(&out).is_empty(),
        "partial output: {:?}",
        entries(&out)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["retry"], true);
}
