//! Conformance (spec §6.4): the golden version-1.x files decode bit-exactly to the recorded
//! SHA-256 on every machine and thread count, and within tolerance of an f64 reference.
//! A change that breaks this is a format change: bump the version and note it in spec/.

mod common;
use common::*;

use nernc::format::{Limits, read_container};
use sha2::{Digest, Sha256};

const GOLDEN: [&str; 13] = [
    "resnet20-h16-infilter",
    "resnet20-h16-crossfilter",
    "resnet20-h16-f16",
    "resnet20-h16-int8",
    // Format 1.2: the same kind of int8 predictor, PRED stored zstd-compressed.
    "resnet20-h16-int8-zstd",
    // Format 1.3: int4 predictor weights (two per byte, per-output f32 scales).
    "resnet20-h16-int4",
    // Format 1.4: int6 and int5 predictor weights (bit-packed, per-output f32 scales).
    "resnet20-h16-int6",
    "resnet20-h16-int5",
    // Format 1.4: F32 passthrough tensors stored as binary16 (PASS dtype code 16, lossy).
    "resnet20-h16-int6-pass16",
    // Format 1.5: a trained int6 predictor (hidden 195) in code layout 1 (codes one byte each,
    // all layers' codes first).
    "resnet20-h195-int6-bytecodes",
    // Format 1.6: DATA (the F32 passthrough, byte-exact) stored byte-shuffled by 4 under zstd.
    "resnet20-h16-int6-shuffled",
    // Format 1.7: learned embedding tables (4 values per filter and per channel row).
    "resnet20-h16-int6-embed",
    // Format 1.8: coded convs (`CODE`): layer2.2 whole, layer3 as rank-16 factors, 3-bit.
    "resnet20-h16-int6-coded",
];

fn golden(name: &str) -> (Vec<u8>, String) {
    let dir = fixture("golden");
    let bytes = std::fs::read(dir.join(format!("{name}.nern"))).unwrap();
    let sha = std::fs::read_to_string(dir.join(format!("{name}.sha256"))).unwrap();
    (bytes, sha.trim().to_string())
}

#[test]
fn golden_files_decode_to_their_recorded_sha256() {
    for name in GOLDEN {
        let dir = tempfile::tempdir().unwrap();
        let input = fixture("golden").join(format!("{name}.nern"));
        let (_, want) = golden(name);
        for threads in [1, 2, 3] {
            let out = dir.path().join(format!("{threads}.safetensors"));
            nernc::decode::decode_file(&input, &out, threads, &Limits::default()).unwrap();
            let got = hex(&Sha256::digest(std::fs::read(&out).unwrap()));
            assert_eq!(got, want, "{name} with {threads} threads");
        }
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn decoded_weights_are_within_tolerance_of_the_f64_reference() {
    for name in GOLDEN {
        let (bytes, _) = golden(name);
        let c = read_container(&bytes, &Limits::default()).unwrap();
        let decoded = nernc::decode::decode_layers(&c.predictor, &c.layers, &c.permutations, 2);
        let big = c.predictor.config.kernel_size as usize;
        let mut worst = 0.0f64;
        // Each layer's first embedding rows: the filters and channels of the layers before it.
        let mut first = [0u32; 2];
        for (li, (layer, w)) in c.layers.iter().zip(&decoded).enumerate() {
            let (cin, k) = (layer.cin(), layer.kernel());
            let off = (big - k) / 2;
            for p in 0..layer.kernels() {
                let (a, b) = (p / cin, p % cin);
                let rows = [first[0] + a as u32, first[1] + b as u32];
                let reference = c
                    .predictor
                    .forward_f64([li as u32, a as u32, b as u32], rows);
                let orig = c.permutations[li].original_kernel(cin, a, b);
                for y in 0..k {
                    for x in 0..k {
                        let r = reference[(y + off) * big + x + off];
                        let v = f64::from(w[orig * k * k + y * k + x]);
                        let excess = (v - r).abs() / (1.0 + r.abs());
                        worst = worst.max(excess);
                    }
                }
            }
            first = [first[0] + layer.shape[0], first[1] + layer.shape[1]];
        }
        println!("{name}: worst |v - v_ref| / (1 + |v_ref|) = {worst:.3e}");
        assert!(worst <= 1e-4, "{name}: {worst}");
    }
}

/// Coded convs (format 1.8, spec §6.5): every decoded weight within the tolerance of the product
/// `U V` of the dequantised factors summed in binary64 (whole entries: the values themselves).
#[test]
fn coded_weights_are_within_tolerance_of_the_f64_reference() {
    let mut any = false;
    for name in GOLDEN {
        let (bytes, _) = golden(name);
        let c = read_container(&bytes, &Limits::default()).unwrap();
        let mut worst = 0.0f64;
        for t in &c.coded {
            any = true;
            let got = nernc::decode::coded::coded_weights(t).unwrap();
            let mats: Vec<Vec<f32>> = t.matrices.iter().map(|m| m.values()).collect();
            let (rank, cols) = (t.rank as usize, t.cols());
            for (i, &g) in got.iter().enumerate() {
                let r = match mats.as_slice() {
                    [w] => f64::from(w[i]),
                    [u, v] => (0..rank)
                        .map(|k| {
                            f64::from(u[(i / cols) * rank + k]) * f64::from(v[k * cols + i % cols])
                        })
                        .sum(),
                    _ => unreachable!(),
                };
                worst = worst.max((f64::from(g) - r).abs() / (1.0 + r.abs()));
            }
        }
        if !c.coded.is_empty() {
            println!("{name}: coded worst |v - v_ref| / (1 + |v_ref|) = {worst:.3e}");
        }
        assert!(worst <= 1e-4, "{name}: {worst}");
    }
    assert!(any, "no golden file has coded convs");
}
