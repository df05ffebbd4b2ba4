//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Tiny, data-free encode settings, for tests of what surrounds training (batch, storage).
pub const QUICK: [&str; 10] = [
    "--hidden",
    "8",
    "--steps",
    "2",
    "--batch",
    "256",
    "--data",
    "noise",
    "--distill-steps",
    "0",
];

pub fn nernc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nernc"))
        .args(args)
        .output()
        .expect("run nernc")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, an `error:` line, no panic.
pub fn assert_clean_failure(o: &Output, expect: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains("error:"), "no error line: {err}");
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "stderr {err:?} does not mention {expect:?}"
    );
}

/// `nernc encode` (tiny settings plus `extra`) fails cleanly and leaves `dir` as it was.
pub fn encode_fails_with(dir: &Path, input: &Path, extra: &[&str], expect: &str) {
    let before = entries(dir);
    let out = dir.join("out.nern");
    let args = [
        "encode",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--hidden",
        "8",
    ];
    let o = nernc(&[&args[..], extra].concat());
    assert_clean_failure(&o, expect);
    assert_eq!(entries(dir), before, "encode left files behind");
}

/// Files in `dir` (to check nothing, not even a temporary file, was left behind).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A small safetensors file from (name, dtype, shape, bytes).
pub fn write_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(path, bytes).expect("write");
}

pub fn f32_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s as f32 / u32::MAX as f32) - 0.5).to_le_bytes()
        })
        .collect()
}
