//! Bad input gets a clear error and a non-zero exit, never a panic, and leaves no output file.
#![cfg(feature = "train")]

mod common;
use common::*;

use std::path::Path;

/// A valid small `.nern` made once per test from the ResNet-20 fixture.
fn small_nern(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("small.nern");
    let o = nernc(&[
        "encode",
        fixture("fmnist-resnet20.safetensors").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--hidden",
        "8",
        "--steps",
        "3",
        "--batch",
        "256",
        "--data",
        "noise",
        "--distill-steps",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn decode_fails(dir: &Path, input: &Path, expect: &str) {
    let before = entries(dir);
    let out = dir.join("out.safetensors");
    let o = nernc(&[
        "decode",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, expect);
    assert_eq!(entries(dir), before, "decode left files behind");
}

#[test]
fn truncated_bit_flipped_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_nern(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.nern");

    // Truncations at a few places: inside the magic, the table, a section, one byte short.
    for cut in [4, 40, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        decode_fails(dir.path(), &bad, "truncated");
    }
    // A flipped bit in a section: its hash no longer matches.
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x10;
    std::fs::write(&bad, &flipped).unwrap();
    decode_fails(dir.path(), &bad, "corrupted");
    // A flipped bit in the section table.
    let mut flipped = bytes.clone();
    flipped[40] ^= 0x01;
    std::fs::write(&bad, &flipped).unwrap();
    decode_fails(dir.path(), &bad, "corrupted");
    // Foreign files: a safetensors checkpoint, text, empty.
    decode_fails(
        dir.path(),
        &fixture("fmnist-resnet20.safetensors"),
        "not a .nern file",
    );
    std::fs::write(&bad, b"hello world, this is not a nern file").unwrap();
    decode_fails(dir.path(), &bad, "not a .nern file");
    std::fs::write(&bad, b"").unwrap();
    decode_fails(dir.path(), &bad, "truncated");
    // Trailing bytes.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"extra");
    std::fs::write(&bad, &longer).unwrap();
    decode_fails(dir.path(), &bad, "does not match");
    // A future major version.
    let mut future = bytes;
    future[8] = 2;
    std::fs::write(&bad, &future).unwrap();
    decode_fails(dir.path(), &bad, "version 2.");
}

fn encode_fails(dir: &Path, input: &Path, expect: &str) {
    encode_fails_with(dir, input, &[], expect);
}

#[test]
fn checkpoints_without_conv_weights_or_with_bad_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fc_only.safetensors");
    write_safetensors(
        &p,
        &[
            (
                "fc.weight",
                safetensors::Dtype::F32,
                vec![10, 64],
                f32_bytes(640, 1),
            ),
            (
                "fc.bias",
                safetensors::Dtype::F32,
                vec![10],
                f32_bytes(10, 2),
            ),
        ],
    );
    encode_fails(dir.path(), &p, "no convolution weights");

    let p = dir.path().join("f16_conv.safetensors");
    write_safetensors(
        &p,
        &[(
            "conv1.weight",
            safetensors::Dtype::F16,
            vec![4, 2, 3, 3],
            vec![0u8; 4 * 2 * 9 * 2],
        )],
    );
    encode_fails(dir.path(), &p, "dtype F16 is not supported");

    let p = dir.path().join("nan_conv.safetensors");
    let mut data = f32_bytes(4 * 2 * 9, 3);
    data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    write_safetensors(
        &p,
        &[(
            "conv1.weight",
            safetensors::Dtype::F32,
            vec![4, 2, 3, 3],
            data,
        )],
    );
    encode_fails(dir.path(), &p, "NaN");

    let p = dir.path().join("garbage.safetensors");
    std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json").unwrap();
    encode_fails(dir.path(), &p, "not a valid safetensors file");
}

#[test]
fn missing_input_and_missing_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    encode_fails(dir.path(), &missing, "No such file");
    decode_fails(dir.path(), &dir.path().join("nope.nern"), "No such file");

    let good = small_nern(dir.path());
    let before = entries(dir.path());
    let out = dir.path().join("no/such/dir/out.safetensors");
    let o = nernc(&[
        "decode",
        good.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "does not exist");
    let out = dir.path().join("no/such/dir/out.nern");
    let o = nernc(&[
        "encode",
        fixture("fmnist-resnet20.safetensors").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--steps",
        "2",
    ]);
    assert_clean_failure(&o, "does not exist");
    assert_eq!(entries(dir.path()), before);
}

#[test]
fn cuda_without_the_feature_is_an_error_not_a_fallback() {
    if cfg!(feature = "cuda") {
        return; // covered on the GPU machine
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.nern");
    let o = nernc(&[
        "encode",
        fixture("fmnist-resnet20.safetensors").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--device",
        "cuda",
    ]);
    assert_clean_failure(&o, "cuda");
    assert!(!out.exists());
}

#[test]
fn augmentation_on_noise_or_oversized_shift_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let phase2 = ["--batch", "64", "--distill-steps", "2"];
    let noise = [&phase2[..], &["--data", "noise", "--augment-flip"]].concat();
    encode_fails_with(dir.path(), &src, &noise, "augment");
    let data = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    if data.is_dir() {
        let args = [
            "--data",
            data.to_str().unwrap(),
            "--held-out",
            "10",
            "--augment-shift",
            "28",
        ];
        encode_fails_with(dir.path(), &src, &[&phase2[..], &args].concat(), "28x28");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `--channel-order similar` needs the network's wiring: a checkpoint that is not a recognised
/// ResNet is refused by name, a NaN in a weight it compares too, with nothing written.
#[test]
fn channel_reordering_refuses_unknown_networks_and_nans() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plain.safetensors");
    write_safetensors(
        &p,
        &[(
            "encoder.weight",
            safetensors::Dtype::F32,
            vec![4, 2, 3, 3],
            f32_bytes(72, 1),
        )],
    );
    let similar = ["--channel-order", "similar", "--distill-steps", "0"];
    encode_fails_with(dir.path(), &p, &similar, "needs a recognised ResNet");
    // ResNet-20 with a NaN in a conv weight.
    let src = std::fs::read(fixture("fmnist-resnet20.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let view = st.tensor("layer2.1.conv1.weight").unwrap();
    let at = view.data().as_ptr() as usize - src.as_ptr() as usize;
    let mut bad = src.clone();
    bad[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = dir.path().join("nan.safetensors");
    std::fs::write(&nan, &bad).unwrap();
    encode_fails_with(dir.path(), &nan, &similar, "layer2.1.conv1.weight");
}

/// `--feature-weight` matches every residual block's map: a teacher with another number of
/// blocks is refused (before phase 1 runs), with nothing written.
#[test]
fn attention_maps_refuse_a_teacher_of_another_depth() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let teacher = fixture("fmnist-resnet56.safetensors");
    let args = [
        "--batch",
        "64",
        "--data",
        "noise",
        "--distill-steps",
        "2",
        "--feature-weight",
        "1",
        "--teacher",
        teacher.to_str().unwrap(),
    ];
    encode_fails_with(dir.path(), &src, &args, "as many residual blocks");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `--code` (format 1.8): a rule that matches nothing, rules that leave nothing to predict, a
/// fraction outside (0, 1], bits outside 2..=8, a bad learning rate, `auto` without real
/// images and `@auto` without a budget or real images are refused by name, with nothing
/// written.
#[test]
fn bad_code_rules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let base = ["--data", "noise", "--distill-steps", "0"];
    for (extra, expect) in [
        (vec!["--code", "nothing=1/2"], "no conv weight"),
        (
            vec!["--code", "layer=1", "--code", "conv=1"],
            "at least one must stay predicted",
        ),
        (vec!["--code", "layer3=2"], "PREFIX=FRACTION"),
        (vec!["--code", "layer3=0"], "PREFIX=FRACTION"),
        (vec!["--code", "layer3"], "PREFIX=FRACTION"),
        (vec!["--code", "layer3=1@9"], "PREFIX=FRACTION"),
        (vec!["--code", "layer3=1@x"], "PREFIX=FRACTION"),
        (
            vec!["--code", "layer3=1/2", "--code-bits", "9"],
            "--code-bits 9",
        ),
        (
            vec!["--code", "layer3=1/2", "--code-bits", "1"],
            "--code-bits 1",
        ),
        (
            vec!["--code", "layer3=1/2", "--code-lr", "nan"],
            "--code-lr",
        ),
        // The rank of `auto` is chosen on held-out images: noise has none.
        (vec!["--code", "layer3=auto"], "it needs real images"),
        (vec!["--code", "layer3=auto/2"], "PREFIX=FRACTION"),
        // `@auto` bits fill a budget, measured on held-out images.
        (
            vec!["--code", "layer3=1@auto"],
            "a budget to fill (--target-size)",
        ),
        (
            vec!["--code", "layer3=1@auto", "--target-size", "10%"],
            "it needs real images",
        ),
        (vec!["--code", "layer3=1@autox"], "PREFIX=FRACTION"),
    ] {
        encode_fails_with(dir.path(), &src, &[&base[..], &extra].concat(), expect);
    }
}
