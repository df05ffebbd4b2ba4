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

/// The bits probe runs each conv's network only from the conv's block on
/// (`nernc::eval::BlockInputs`): its log-probabilities equal a whole forward pass's, bit for
/// bit, at every block of both ResNets, with a changed conv in that block (a shortcut
/// projection's too). `block_of` names the block of every conv but the stem.
#[test]
fn a_run_from_a_block_equals_the_whole_forward_pass() {
    use nernc::eval::{BlockInputs, log_probs};
    use nernc::network::block_of;
    let kind = DatasetKind::FashionMnist;
    let data = load(&fashion_dir(), kind, Split::Test, Some(24)).unwrap();
    let norm = kind.normalization();
    let idx: Vec<usize> = (0..24).collect();
    let device = Default::default();
    for key in ["fmnist-resnet20", "fmnist-resnet56"] {
        let base =
            LoadedNet::<Flex>::load(&fixture(&format!("{key}.safetensors")), &device).unwrap();
        assert_eq!(block_of(&base.net, &base.net.stem.0.weight), None);
        let mut inputs = BlockInputs::new(&base, &data, &idx, &norm, &device);
        let mut checked = 0;
        for k in 0..base.net.blocks.len() {
            assert_eq!(inputs.block(), k);
            // The block's first conv scaled by 0.9 (its projection shortcut, where it has one).
            let b = &base.net.blocks[k];
            let name = match &b.shortcut {
                nernc::arch::Shortcut::Projection { conv, .. } => conv.weight.clone(),
                _ => b.layers[0].0.weight.clone(),
            };
            assert_eq!(block_of(&base.net, &name), Some(k));
            let changed = base.with_convs(
                [(name.clone(), base.convs[&name].clone() * 0.9)]
                    .into_iter()
                    .collect(),
            );
            let whole = log_probs(&changed, &data, &idx, &norm, &device).unwrap();
            let from = inputs.log_probs(&changed).unwrap();
            assert_eq!(whole, from, "{key}: block {k} ({name})");
            assert_ne!(
                whole,
                log_probs(&base, &data, &idx, &norm, &device).unwrap()
            );
            checked += 1;
            inputs.advance(&base);
        }
        assert!(checked >= 9, "{key}: {checked} blocks");
    }
}
