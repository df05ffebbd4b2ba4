//! Object storage against a real S3-protocol server: `s3s-fs` (crates.io; `.ci/run` installs it
//! with `cargo install s3s-fs --features binary`), started by each test on a loopback port over
//! a temporary directory. A missing server fails these tests; it never skips them.
//!
//! s3s-fs 0.14 honours `If-None-Match: *` on PUT (checked below), stores each object by writing
//! a temporary file and renaming it, and keeps bucket `B`'s object `K` at `ROOT/B/K`, which is
//! how these tests look at what the store holds.
#![cfg(all(feature = "store", feature = "train"))]

mod common;
use common::*;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nernc::StoreFailure;
use nernc::store::Location;

const ACCESS_KEY: &str = "nernc-test-key";
const SECRET_KEY: &str = "nernc-test-secret";
const BUCKET: &str = "models";

/// A running s3s-fs; killed on drop.
struct S3Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("NERNC_S3S_FS") {
        return PathBuf::from(p);
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let in_cargo = cargo_home.join("bin").join("s3s-fs");
    if in_cargo.exists() {
        return in_cargo;
    }
    PathBuf::from("s3s-fs")
}

impl S3Server {
    fn start() -> Self {
        // The tests of this file run in parallel, each with its own server. A free port is
        // found by binding to 0 and releasing it for the server; without this lock a second
        // test could be handed the same port before the first server binds it, lose the race,
        // and talk to the other test's server until that one is killed (seen once on two
        // loaded cores: "error sending request" after 10 retries).
        static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = s3s_fs_binary();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the S3 test server {} ({e}); install it with \
                     `cargo install s3s-fs@0.14.1 --features binary --locked` or set NERNC_S3S_FS",
                    bin.display()
                )
            });
        let mut server = S3Server { child, port, root };
        let t = Instant::now();
        loop {
            // Listening is not enough: the listener must be this server (one that lost its
            // port to another process exits).
            let listening = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok();
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("s3s-fs exited at start (port {port}): {status}");
            }
            if listening {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The environment a client of this server needs (the standard AWS variables).
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Where the server keeps object `key` of the test bucket.
    fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// `nernc ARGS` with this server's credentials, run to completion.
    fn run(&self, args: &[&str]) -> Output {
        run({
            let mut c = self.nernc();
            c.args(args);
            c
        })
    }

    /// `nernc` with this server's credentials and no others from the test's environment.
    fn nernc(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nernc"));
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_") {
                c.env_remove(k);
            }
        }
        c.envs(self.env());
        c
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uri(key: &str) -> String {
    format!("s3://{BUCKET}/{key}")
}

fn store_kind(e: &nernc::Error) -> Option<StoreFailure> {
    match e {
        nernc::Error::Store { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn objects_are_created_once_read_by_range_and_replaced_whole() {
    let s3 = S3Server::start();
    let env = s3.env();
    let loc = Location::parse_with_env(&uri("a/one.bin"), &env).unwrap();
    assert!(!loc.exists().unwrap());
    assert_eq!(
        store_kind(&loc.read().unwrap_err()),
        Some(StoreFailure::NotFound)
    );
    // Conditional put: the first create publishes, the second finds it and changes nothing.
    assert!(loc.create_new(b"first").unwrap());
    assert!(!loc.create_new(b"second").unwrap(), "If-None-Match ignored");
    assert_eq!(loc.read().unwrap(), b"first");
    assert_eq!(
        std::fs::read(s3.object_path("a/one.bin")).unwrap(),
        b"first"
    );
    let mut r = loc.ranged().unwrap();
    assert_eq!(r.len, 5);
    assert_eq!(r.read(1, 3).unwrap(), b"irs");
    loc.write(b"replaced").unwrap();
    assert_eq!(loc.read().unwrap(), b"replaced");
    // Keys under a prefix, as `batch --out s3://bucket/prefix` makes them.
    let child = Location::parse_with_env(&uri("a"), &env)
        .unwrap()
        .join("b.bin")
        .unwrap();
    assert_eq!(child.to_string(), uri("a/b.bin"));
    assert!(child.create_new(b"x").unwrap());
    assert!(s3.object_path("a/b.bin").exists());
    // A `.nern` is published with its media type (spec §9).
    let nern = Location::parse_with_env(&uri("a/m.nern"), &env).unwrap();
    assert!(nern.create_new(b"x").unwrap());
    assert_eq!(
        nern.content_type().unwrap().as_deref(),
        Some(nernc::provenance::MEDIA_TYPE)
    );
    // Wrong secret: refused by the server, not retried as transient.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    bad.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong".into()));
    let e = Location::parse_with_env(&uri("a/one.bin"), &bad)
        .unwrap()
        .read()
        .unwrap_err();
    assert!(
        matches!(store_kind(&e), Some(StoreFailure::Denied)),
        "{e} ({:?})",
        store_kind(&e)
    );
}

fn run(mut c: Command) -> Output {
    c.output().expect("run nernc")
}

#[test]
fn encode_decode_inspect_verify_and_eval_on_s3_uris() {
    let s3 = S3Server::start();
    let r20 = fixture("fmnist-resnet20.safetensors");
    std::fs::copy(&r20, s3.object_path("src.safetensors")).unwrap();
    let o = run({
        let mut c = s3.nernc();
        c.args(["encode", &uri("src.safetensors"), "-o", &uri("r20.nern")])
            .args(QUICK);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let nern = s3.object_path("r20.nern");
    assert!(nern.exists());
    // Decoding the object and the same bytes as a local file give the same checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.safetensors");
    let o = nernc(&[
        "decode",
        nern.to_str().unwrap(),
        "-o",
        local.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s3.run(&[
        "decode",
        &uri("r20.nern"),
        "-o",
        &uri("out/r20.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(s3.object_path("out/r20.safetensors")).unwrap(),
        std::fs::read(&local).unwrap()
    );
    // Provenance in at most two ranged reads, far less than the file.
    let o = s3.run(&["inspect", "--provenance", "--json", &uri("r20.nern")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["reads"].as_u64().unwrap() <= 2, "{v}");
    let file_len = std::fs::metadata(&nern).unwrap().len();
    assert_eq!(v["file_bytes"].as_u64().unwrap(), file_len);
    // What it reads depends on the header and META, not on the file's size: a first read of
    // 8 KiB, and a second only if META ends beyond it.
    let meta = v["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tag"] == "META")
        .unwrap();
    let meta_end = meta["offset"].as_u64().unwrap() + meta["stored_bytes"].as_u64().unwrap();
    let read = v["bytes_read"].as_u64().unwrap();
    assert!(read <= meta_end.max(8192) && read < file_len, "{v}");
    // A plain `inspect` of a URI reads only the header and META too; `--full` fetches it all.
    let o = s3.run(&["inspect", &uri("r20.nern")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ranged read"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let full = s3.run(&["inspect", "--full", &uri("r20.nern")]);
    assert!(full.status.success(), "{}", stderr(&full));
    assert_eq!(
        full.stdout,
        nernc(&["inspect", nern.to_str().unwrap()]).stdout,
        "--full of the object differs from inspect of the same bytes"
    );
    // verify: both sides remote.
    let o = s3.run(&[
        "verify",
        &uri("r20.nern"),
        "--source",
        &uri("src.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // eval reads a remote model (and reference) as it reads a local one.
    let o = s3.run(&["eval", &uri("src.safetensors"), "--limit", "20", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn missing_or_wrong_credentials_fail_before_any_work_and_write_nothing() {
    let s3 = S3Server::start();
    let r20 = fixture("fmnist-resnet20.safetensors");
    let r20 = r20.to_str().unwrap();
    // No credentials at all: refused before a request, naming the variables to set.
    let o = run({
        let mut c = s3.nernc();
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .args(["encode", r20, "-o", &uri("x.nern")])
            .args(QUICK);
        c
    });
    assert_clean_failure(&o, "AWS_ACCESS_KEY_ID");
    assert!(stderr(&o).contains("metadata"), "{}", stderr(&o));
    // A wrong secret: the output check fails before training.
    let t = Instant::now();
    let o = run({
        let mut c = s3.nernc();
        c.env("AWS_SECRET_ACCESS_KEY", "wrong")
            .args(["encode", r20, "-o", &uri("x.nern")])
            .args(["--hidden", "8", "--steps", "1000000", "--data", "noise"]);
        c
    });
    assert_clean_failure(&o, "s3://models/x.nern");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "trained before failing"
    );
    // Unknown schemes and missing objects.
    assert_clean_failure(
        &nernc(&["inspect", "ftp://host/x.nern"]),
        "unsupported URI scheme",
    );
    let o = s3.run(&[
        "decode",
        &uri("absent.nern"),
        "-o",
        &uri("absent.safetensors"),
    ]);
    assert_clean_failure(&o, "not found");
    assert_eq!(entries(&s3.root.path().join(BUCKET)), Vec::<String>::new());
}

/// A copy of ResNet-20 whose `conv1.weight` starts with `value`: a distinct checkpoint.
fn variant(value: f32) -> Vec<u8> {
    let mut bytes = std::fs::read(fixture("fmnist-resnet20.safetensors")).unwrap();
    let offset = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("conv1.weight").unwrap();
        t.data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// What `dir` holds, recursively, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(
                tree(&p)
                    .into_iter()
                    .map(|n| format!("{}/{n}", p.file_name().unwrap().to_string_lossy())),
            );
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// A local indexed job over the store: three workers (`JOB_COMPLETION_INDEX` 0..2) on six
/// distinct checkpoints read from S3 and published to S3, one worker stopped with SIGTERM in
/// the middle of an encode and rerun. Afterwards each input is published exactly once, nothing
/// partial is in the bucket, and the reports account for every input.
#[test]
fn indexed_job_on_s3_survives_sigterm_and_publishes_each_input_once() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for i in 0..6 {
        let key = format!("src/m{i}.safetensors");
        std::fs::create_dir_all(s3.object_path("src")).unwrap();
        std::fs::write(s3.object_path(&key), variant(0.01 * (i + 1) as f32)).unwrap();
        lines.push(format!(r#"{{"source": "{}", "id": "m{i}"}}"#, uri(&key)));
    }
    // The manifest itself lives in the store too.
    std::fs::write(s3.object_path("manifest.jsonl"), lines.join("\n")).unwrap();
    // Long enough (seconds) that the SIGTERM lands inside an encode.
    let settings = [
        "--hidden",
        "8",
        "--steps",
        "12000",
        "--batch",
        "64",
        "--data",
        "noise",
        "--distill-steps",
        "0",
    ];
    let worker = |index: usize, report: &Path| {
        let mut c = s3.nernc();
        c.args([
            "batch",
            "--manifest",
            &uri("manifest.jsonl"),
            "--out",
            &uri("out"),
        ])
        .args(["--shards", "3", "--report", report.to_str().unwrap()])
        .args(settings)
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let reports: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("r{i}.jsonl")))
        .collect();
    let killed = worker(0, &reports[0]);
    let others: Vec<Child> = (1..3).map(|i| worker(i, &reports[i])).collect();
    // Stop worker 0 once its first encode has started training.
    std::thread::sleep(Duration::from_millis(1500));
    let kill = Command::new("kill")
        .args(["-TERM", &killed.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = killed.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    for c in others {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let stopped = std::fs::read_to_string(&reports[0]).unwrap();
    assert!(
        stopped.contains(r#""retry":true"#),
        "no stopped input: {stopped}"
    );
    // The rerun of index 0 does only what is unfinished.
    let rerun = dir.path().join("r0-rerun.jsonl");
    let o = worker(0, &rerun).wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut status = std::collections::BTreeMap::new();
    for r in reports.iter().skip(1).chain([&rerun]) {
        for l in std::fs::read_to_string(r).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let entry = status
                .entry(v["id"].as_str().unwrap().to_string())
                .or_insert_with(Vec::new);
            entry.push(v["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(status.len(), 6, "{status:?}");
    let encoded = status
        .values()
        .flatten()
        .filter(|s| s.as_str() == "encoded")
        .count();
    let first_run_encoded = stopped.matches(r#""status":"encoded""#).count();
    assert_eq!(encoded + first_run_encoded, 6, "{status:?} / {stopped}");
    let outs = tree(&s3.object_path("out"));
    assert_eq!(outs.len(), 6, "{outs:?}");
    for name in &outs {
        assert!(name.ends_with(".nern"), "{name}");
        let bytes = std::fs::read(s3.object_path(&format!("out/{name}"))).unwrap();
        nernc::format::read_container(&bytes, &nernc::format::Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
