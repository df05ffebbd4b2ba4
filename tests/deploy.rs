//! The `deploy/` examples run `nernc batch` unchanged: the Kubernetes Indexed Job is parsed and
//! its command line handed to the real binary (clap must accept it: no usage error), its shard
//! count and exit-code policy must match the Job; the Slurm script is run with `nernc` on PATH.
#![cfg(feature = "train")]

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

/// A command line clap accepted: it failed, if at all, on its inputs, not with a usage error.
fn assert_parsed(stderr: &str) {
    assert!(
        !stderr.contains("Usage:") && !stderr.contains("unexpected argument"),
        "the command line does not match the CLI: {stderr}"
    );
}

#[test]
fn kubernetes_indexed_job_runs_the_cli_unchanged() {
    let text = std::fs::read_to_string(deploy("k8s-indexed-job.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let job = &docs[0];
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_i64().unwrap();
    let container = &spec["template"]["spec"]["containers"][0];
    let command: Vec<String> = container["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(&command[..2], ["nernc", "batch"]);
    let shards = command.iter().position(|a| a == "--shards").unwrap();
    assert_eq!(command[shards + 1].parse::<i64>().unwrap(), completions);
    // The policy's "do not retry" code is batch's bad-input status.
    let rules = spec["podFailurePolicy"]["rules"].as_vec().unwrap();
    let fail_index = rules
        .iter()
        .find(|r| r["action"].as_str() == Some("FailIndex"))
        .unwrap();
    assert_eq!(
        fail_index["onExitCodes"]["containerName"],
        container["name"]
    );
    assert_eq!(
        fail_index["onExitCodes"]["values"].as_vec().unwrap(),
        &vec![Yaml::Integer(i64::from(nernc::batch::EXIT_BAD_INPUT))]
    );
    // Run it as the pod would (index 0), without the Secret's credentials: clap accepts the
    // line, and the missing credentials are a bad input (2), found before any work.
    let mut c = Command::new(env!("CARGO_BIN_EXE_nernc"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        c.env_remove(k);
    }
    let o = c
        .args(&command[1..])
        .env("JOB_COMPLETION_INDEX", "0")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_parsed(&err);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no credentials for s3://"), "{err}");
}

#[test]
fn slurm_array_script_runs_the_cli_unchanged() {
    let script = deploy("slurm-array.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    // The array size in the submit line is the shard count.
    let shards: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("SHARDS="))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let last: u32 = text
        .split("--array=0-")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last + 1, shards);
    // Run the script as task 0 of an array, `nernc` on PATH, in a folder with no manifest: the
    // binary parses its line and fails on the missing manifest with 2, which the script passes
    // on (and does not requeue).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nernc"), bin.join("nernc")).unwrap();
    std::fs::create_dir(dir.path().join("reports")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("SLURM_ARRAY_JOB_ID", "7")
        .env("SLURM_ARRAY_TASK_ID", "0")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_parsed(&err);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("manifest.jsonl"), "{err}");
}
