//! The forward pass agrees with PyTorch (fixtures/expected-logits.json) on the first 16 test
//! images, for the original checkpoints and for them loaded back from a `.nern`-decoded file.
#![cfg(feature = "train")]

mod common;
use common::*;

use burn::backend::Flex;
use nernc::data::{DatasetKind, Split, load};
use nernc::eval::{LoadedNet, input_tensor};

fn fashion_dir() -> std::path::PathBuf {
    DatasetKind::FashionMnist
        .default_dir()
        .expect("Fashion-MNIST is installed by .ci/run (apt-get install dataset-fashion-mnist)")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("expected-logits.json")).unwrap()).unwrap()
}

fn max_logit_error(model: &std::path::Path, key: &str) -> f64 {
    let data = load(
        &fashion_dir(),
        DatasetKind::FashionMnist,
        Split::Test,
        Some(16),
    )
    .unwrap();
    let want = expected();
    let labels: Vec<u32> = want["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(data.labels, labels);
    let device = Default::default();
    let net = LoadedNet::<Flex>::load(model, &device).unwrap();
    let idx: Vec<usize> = (0..16).collect();
    let (x, _) = data.batch(&idx, &DatasetKind::FashionMnist.normalization());
    let got = net
        .logits(input_tensor(x, 16, data.shape, &device))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let rows = want["logits"][key].as_array().unwrap();
    let mut worst = 0.0f64;
    for (i, row) in rows.iter().enumerate() {
        for (j, v) in row.as_array().unwrap().iter().enumerate() {
            worst = worst.max((f64::from(got[i * 10 + j]) - v.as_f64().unwrap()).abs());
        }
    }
    worst
}

#[test]
fn resnet20_logits_match_pytorch() {
    let e = max_logit_error(&fixture("fmnist-resnet20.safetensors"), "fmnist-resnet20");
    println!("resnet20 max |logit - pytorch| = {e:.2e}");
    assert!(e < 1e-4, "{e}");
}

#[test]
fn resnet56_logits_match_pytorch() {
    let e = max_logit_error(&fixture("fmnist-resnet56.safetensors"), "fmnist-resnet56");
    println!("resnet56 max |logit - pytorch| = {e:.2e}");
    assert!(e < 1e-4, "{e}");
}

/// `--channel-order similar` reorders channels without changing the function: the reordered
/// checkpoint's logits match PyTorch's for the original as closely as the original's own.
#[test]
fn reordered_channels_compute_the_original_function() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["fmnist-resnet20", "fmnist-resnet56"] {
        let src = fixture(&format!("{key}.safetensors"));
        let bytes = std::fs::read(&src).unwrap();
        let (reordered, groups) = nernc::reorder::reorder_checkpoint(&src, &bytes).unwrap();
        assert!(groups > 0);
        assert_ne!(reordered, bytes);
        let p = dir.path().join(format!("{key}.reordered.safetensors"));
        std::fs::write(&p, &reordered).unwrap();
        let e = max_logit_error(&p, key);
        println!("{key} reordered: max |logit - pytorch(original)| = {e:.2e}");
        assert!(e < 1e-4, "{key}: {e}");
    }
}

#[test]
fn non_resnet_checkpoints_are_refused_with_the_tensors_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mlp.safetensors");
    write_safetensors(
        &p,
        &[
            (
                "encoder.weight",
                safetensors::Dtype::F32,
                vec![4, 2, 3, 3],
                f32_bytes(72, 1),
            ),
            (
                "head.weight",
                safetensors::Dtype::F32,
                vec![10, 4],
                f32_bytes(40, 2),
            ),
        ],
    );
    let device = Default::default();
    let e = LoadedNet::<Flex>::load(&p, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a ResNet"), "{e}");
}
