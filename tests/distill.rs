//! Phase 2 end to end on real data: resumes a phase-1 file, keeps the best state by held-out
//! accuracy (never the test split) and records the figures in the file.
#![cfg(feature = "train")]

mod common;
use common::*;

use nernc::data::DatasetKind;
use nernc::encode::{DistillOptions, DistillSource, EncodeOptions, NoProgress, encode};
use nernc::format::{Limits, read_container};

/// A short phase-1 file of ResNet-20 (hidden 16, 40 steps, 300 held-out images) written to
/// `dir`: its options, bytes, report and path.
fn phase_one(
    dir: &std::path::Path,
) -> (
    EncodeOptions,
    Vec<u8>,
    nernc::encode::EncodeReport,
    std::path::PathBuf,
) {
    let data = DatasetKind::FashionMnist
        .default_dir()
        .expect("Fashion-MNIST installed");
    let phase1 = EncodeOptions {
        hidden: Some(16),
        steps: Some(40),
        batch: 1024,
        data_dir: Some(data),
        held_out: 300,
        ..EncodeOptions::default()
    };
    let src = fixture("fmnist-resnet20.safetensors");
    let (p1, r1) = encode(&src, &phase1, &NoProgress).unwrap();
    let path = dir.join("p1.nern");
    std::fs::write(&path, &p1).unwrap();
    (phase1, p1, r1, path)
}

/// The first (step, accuracy) with the highest accuracy: the state phase 2 must keep.
fn first_best(history: &[(usize, f64)]) -> (usize, f64) {
    history.iter().fold(
        (0, f64::NEG_INFINITY),
        |b, &(s, a)| if a > b.1 { (s, a) } else { b },
    )
}

#[test]
fn phase_two_keeps_the_best_held_out_state_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let (phase1, p1, r1, p1_path) = phase_one(dir.path());
    let p1_acc = r1.accuracy.held_out.unwrap();
    assert_eq!(r1.rounds[0].held_out_accuracy, Some(p1_acc));

    let phase2 = EncodeOptions {
        resume: Some(p1_path),
        distill: Some(DistillOptions {
            steps: 4,
            source: DistillSource::Data,
            batch: 32,
            eval_every: Some(2),
            ..DistillOptions::default()
        }),
        ..phase1.clone()
    };
    let (p2, r2) = encode(&src, &phase2, &NoProgress).unwrap();
    assert!(r2.rounds.is_empty(), "phase 1 ran again");
    let d = r2.distill.as_ref().unwrap();
    let steps: Vec<usize> = d.held_out_history.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [0, 2, 4]);
    // Step 0 is the resumed predictor, measured the same way.
    assert_eq!(d.held_out_history[0].1, p1_acc);
    // The kept state is the first best one, and its figure is the one recorded.
    let best = first_best(&d.held_out_history);
    assert_eq!(d.kept_step, best.0);
    assert_eq!(r2.accuracy.held_out, Some(best.1));
    // A kept step 0 stores the phase-1 predictor unchanged.
    let c1 = read_container(&p1, &Limits::default()).unwrap();
    let c2 = read_container(&p2, &Limits::default()).unwrap();
    assert_eq!(c1.predictor == c2.predictor, d.kept_step == 0);
    assert_eq!(c1.permutations, c2.permutations);
    // The metadata carries the figures, and inspect shows them.
    let meta = c2.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["accuracy"]["held_out"].as_f64(), Some(best.1));
    assert_eq!(meta["accuracy"]["held_out_images"], 300);
    // The plain int4 baseline sits beside it, measured on the same held-out images.
    let b = &r2.baseline;
    assert!(
        (b.percent - 11.2).abs() < 0.1,
        "int4 baseline {} %",
        b.percent
    );
    let int4 = b.held_out.expect("int4 held-out accuracy");
    assert!(int4 > 80.0, "int4 held-out {int4}");
    // (serde_json parses floats to within an ulp, not always exactly)
    let recorded = meta["baseline"]["held_out"].as_f64().unwrap();
    assert!((recorded - int4).abs() < 1e-9, "{recorded} vs {int4}");
    let report = nernc::inspect::inspect(&c2, &Limits::default()).unwrap();
    assert!(nernc::inspect::render(&report).contains("held-out"));

    // `--distill-cycles 2`: the first cycle is the run above, step for step; the second restarts
    // from its kept state and counts on (steps 6 and 8). The kept state is the first best over
    // both cycles, recorded as the file's figure.
    let cycled = EncodeOptions {
        distill: phase2
            .distill
            .clone()
            .map(|d| DistillOptions { cycles: 2, ..d }),
        ..phase2.clone()
    };
    let (p3, r3) = encode(&src, &cycled, &NoProgress).unwrap();
    let d3 = r3.distill.as_ref().unwrap();
    assert_eq!((d3.steps, d3.cycles), (4, 2));
    let steps: Vec<usize> = d3.held_out_history.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [0, 2, 4, 6, 8]);
    assert_eq!(d3.held_out_history[..3], d.held_out_history[..]);
    assert_eq!(d3.loss_history[..d.loss_history.len()], d.loss_history[..]);
    assert!(d3.loss_history.last().unwrap().0 > 4);
    assert!(d3.teacher_images > d.teacher_images);
    let best3 = first_best(&d3.held_out_history);
    assert_eq!(d3.kept_step, best3.0);
    assert_eq!(r3.accuracy.held_out, Some(best3.1));
    // Kept in the first cycle: the same predictor as the one-cycle run's.
    let c3 = read_container(&p3, &Limits::default()).unwrap();
    assert_eq!(c3.predictor == c2.predictor, d3.kept_step == d.kept_step);
    let meta = c3.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["distillation"]["cycles"], 2);
    assert_eq!(meta["recipe"]["phase2"]["cycles"], 2);
    let shown = nernc::inspect::render(&nernc::inspect::inspect(&c3, &Limits::default()).unwrap());
    assert!(shown.contains("phase 2: 2 cycles of 4 steps"), "{shown}");
}

/// `--passthrough tuned`: phase 2 also trains the BN affine parameters and the FC layer; the
/// file stores them (running statistics and everything else byte-exact), its recorded test
/// accuracy is the decoded checkpoint's as `nernc eval` measures it, and `inspect` says LOSSY.
#[test]
fn tuned_passthrough_is_stored_measured_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let nern = dir.path().join("t.nern");
    let out = dir.path().join("t.safetensors");
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let o = nernc(&[
        "encode",
        &p(&src),
        "-o",
        &p(&nern),
        "--hidden",
        "16",
        "--steps",
        "40",
        "--batch",
        "1024",
        "--held-out",
        "300",
        "--distill-steps",
        "6",
        "--distill-batch",
        "32",
        "--eval-every",
        "3",
        "--passthrough",
        "tuned",
        "--tune-lr",
        "0.01",
        "--test-eval",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let test = report["accuracy"]["test"].as_f64().unwrap();

    let o = nernc(&["decode", &p(&nern), "-o", &p(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sb, db) = (std::fs::read(&src).unwrap(), std::fs::read(&out).unwrap());
    let s = safetensors::SafeTensors::deserialize(&sb).unwrap();
    let d = safetensors::SafeTensors::deserialize(&db).unwrap();
    let (mut changed, mut kept) = (Vec::new(), 0);
    for name in s.names() {
        let (a, b) = (s.tensor(name).unwrap(), d.tensor(name).unwrap());
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        if name.ends_with("conv1.weight")
            || name.ends_with("conv2.weight")
            || name.ends_with("downsample.0.weight")
        {
            continue;
        }
        if a.data() == b.data() {
            kept += 1;
            // Only BN weight/bias and the FC layer may change.
            continue;
        }
        changed.push(name.to_string());
    }
    assert!(
        changed.iter().all(|n| {
            n.starts_with("fc.")
                || n.ends_with("bn1.weight")
                || n.ends_with("bn1.bias")
                || n.ends_with("bn2.weight")
                || n.ends_with("bn2.bias")
                || n.ends_with("downsample.1.weight")
                || n.ends_with("downsample.1.bias")
        }),
        "{changed:?}"
    );
    assert!(changed.iter().any(|n| n == "fc.weight"), "{changed:?}");
    assert!(changed.len() > 20, "{changed:?}");
    // Running statistics and counters are untouched.
    assert!(kept >= 3 * 21, "{kept}");

    // What the encoder recorded is what the decoded checkpoint scores.
    let o = nernc(&[
        "eval",
        &p(&out),
        "--data",
        "/usr/share/datasets/fashion-mnist",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["images"], 10000);
    let measured = e["model"]["accuracy"].as_f64().unwrap();
    assert!(
        (measured - test).abs() < 1e-9,
        "eval {measured} vs recorded {test}"
    );

    let o = nernc(&["inspect", &p(&nern)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("LOSSY passthrough"), "{text}");
    assert!(text.contains("tuned"), "{text}");

    // Without phase 2 there is nothing to tune it with: refused before training, nothing written.
    let none = dir.path().join("none.nern");
    let o = nernc(&[
        "encode",
        &p(&src),
        "-o",
        &p(&none),
        "--steps",
        "5",
        "--distill-steps",
        "0",
        "--passthrough",
        "tuned",
    ]);
    assert_clean_failure(&o, "needs phase 2");
    assert!(!none.exists());
}

/// A tuned passthrough's learning rate must be a positive number: refused before training,
/// nothing written.
#[test]
fn tuned_passthrough_with_a_bad_learning_rate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    for lr in ["-1", "nan", "0"] {
        let extra = ["--passthrough", "tuned", &format!("--tune-lr={lr}")];
        encode_fails_with(dir.path(), &src, &extra, "--tune-lr must be positive");
    }
    let cycles = ["--passthrough", "tuned", "--distill-cycles", "2"];
    encode_fails_with(dir.path(), &src, &cycles, "--distill-cycles above 1");
    encode_fails_with(
        dir.path(),
        &src,
        &["--distill-cycles", "0"],
        "--distill-cycles must be",
    );
}

/// `--label-weight` and `--feature-weight`: the cross-entropy on the true labels and the
/// attention-map distance join the loss (step 0's loss is the same KL plus a positive term), the
/// recipe records them, and noise images (no labels) refuse the label term.
#[test]
fn the_label_and_attention_map_terms_join_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let (phase1, _, _, p1_path) = phase_one(dir.path());
    let run = |label_weight: f64, feature_weight: f64| {
        let opts = EncodeOptions {
            resume: Some(p1_path.clone()),
            distill: Some(DistillOptions {
                steps: 2,
                source: DistillSource::Data,
                batch: 32,
                label_weight,
                feature_weight,
                ..DistillOptions::default()
            }),
            ..phase1.clone()
        };
        encode(&src, &opts, &NoProgress).unwrap()
    };
    let first_loss = |r: &nernc::encode::EncodeReport| r.distill.as_ref().unwrap().loss_history[0];
    let (_, plain) = run(0.0, 0.0);
    let (bytes, labelled) = run(1.0, 0.0);
    let (_, mapped) = run(0.0, 100.0);
    let (s0, without) = first_loss(&plain);
    let (s1, with) = first_loss(&labelled);
    let (s2, with_maps) = first_loss(&mapped);
    assert_eq!((s0, s1, s2), (0, 0, 0));
    // A 16-wide predictor after 40 steps is far from the labels and from the teacher's
    // activations: both terms are large.
    assert!(
        with > without + 0.1,
        "with labels {with}, without {without}"
    );
    assert!(
        with_maps > without + 0.1,
        "with maps {with_maps}, without {without}"
    );
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["recipe"]["phase2"]["feature_weight"], 0.0);
    assert_eq!(meta["recipe"]["phase2"]["label_weight"], 1.0);
    let noise = EncodeOptions {
        distill: Some(DistillOptions {
            steps: 2,
            source: DistillSource::Noise,
            label_weight: 1.0,
            ..DistillOptions::default()
        }),
        ..EncodeOptions::default()
    };
    let e = encode(&src, &noise, &NoProgress).unwrap_err();
    assert!(e.to_string().contains("--label-weight"), "{e}");
}

/// Writes the first `n` images of a Fashion-MNIST split as raw IDX files into `dir`.
fn write_subset(dir: &std::path::Path, split: nernc::data::Split, prefix: &str, n: usize) {
    let real = DatasetKind::FashionMnist.default_dir().unwrap();
    let d = nernc::data::load(&real, DatasetKind::FashionMnist, split, Some(n)).unwrap();
    let mut images = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        images.extend_from_slice(&(v as u32).to_be_bytes());
    }
    images.extend_from_slice(&d.images);
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    labels.extend(d.labels.iter().map(|&l| l as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// A Fashion-MNIST directory in `dir` with the first 128 training and 100 test images.
fn small_dataset(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    write_subset(&data, nernc::data::Split::Train, "train", 128);
    write_subset(&data, nernc::data::Split::Test, "t10k", 100);
    data
}

/// A short encode of ResNet-20 on `data` (hidden 16, 40 phase-1 steps, then 4 phase-2 steps of
/// 32 images), for the tests to adjust.
fn short_encode(data: &std::path::Path) -> EncodeOptions {
    EncodeOptions {
        hidden: Some(16),
        steps: Some(40),
        batch: 1024,
        data_dir: Some(data.to_path_buf()),
        distill: Some(DistillOptions {
            steps: 4,
            source: DistillSource::Data,
            batch: 32,
            ..DistillOptions::default()
        }),
        ..EncodeOptions::default()
    }
}

/// [`short_encode`] selecting on the test split's first 30 images, evaluated every 2 steps, the
/// test figure taken on the other 70.
fn selecting_on_test(data: &std::path::Path) -> EncodeOptions {
    let mut opts = short_encode(data);
    opts.held_out = 30;
    opts.held_out_from = nernc::data::Split::Test;
    opts.test_eval = true;
    opts.distill.as_mut().unwrap().eval_every = Some(2);
    opts
}

/// `eval` of the file `bytes` (written into `dir`) on the test split of `data`: its first 30
/// images, and the rest.
fn test_split_halves(
    dir: &std::path::Path,
    bytes: &[u8],
    data: &std::path::Path,
) -> (nernc::eval::EvalReport, nernc::eval::EvalReport) {
    let path = dir.join("f.nern");
    std::fs::write(&path, bytes).unwrap();
    let kind = DatasetKind::FashionMnist;
    let eval_opts = nernc::eval::EvalOptions {
        norm: kind.normalization(),
        fgsm: None,
        device: nernc::device::DeviceKind::Cpu,
        quantize: None,
    };
    let test = |limit: Option<usize>, skip: usize| {
        let d = nernc::data::load(data, kind, nernc::data::Split::Test, limit)
            .unwrap()
            .skip_first(skip);
        nernc::eval::evaluate(&path, None, &d, "test", &eval_opts).unwrap()
    };
    (test(Some(30), 0), test(None, 30))
}

/// The teacher's logits are computed once per image for the whole encode: a later phase-2
/// cycle reuses the first cycle's cache. On a training pool of 64 images, two cycles of
/// 4 x 32 draws (256 in all) run the teacher on at most the 64 distinct images; a cache per
/// cycle would run it on about 110.
#[test]
fn phase_two_cycles_share_the_teacher_logits() {
    let dir = tempfile::tempdir().unwrap();
    // At most half of the training images are held out: 64 of 128, leaving 64 to draw from.
    let data = small_dataset(dir.path());
    let mut opts = short_encode(&data);
    opts.held_out = 64;
    opts.distill.as_mut().unwrap().cycles = 2;
    let src = fixture("fmnist-resnet20.safetensors");
    let (_, r) = encode(&src, &opts, &NoProgress).unwrap();
    let d = r.distill.as_ref().unwrap();
    assert_eq!(d.cycles, 2);
    // The first cycle alone draws 128 times from 64 images: more than half of them.
    assert!(
        (33..=64).contains(&d.teacher_images),
        "the teacher ran on {} images for a pool of 64",
        d.teacher_images
    );
}

/// `--held-out-from test`: every choice on the test split's first images, the recorded test
/// figure on the rest, phase 2 on every training image. The file records where the held-out
/// images came from, `inspect` shows it, and `eval` on the same images repeats both figures.
#[test]
fn held_out_from_the_test_split_selects_there_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let opts = selecting_on_test(&data);
    let src = fixture("fmnist-resnet20.safetensors");
    let (bytes, r) = encode(&src, &opts, &NoProgress).unwrap();
    let a = &r.accuracy;
    assert_eq!(a.held_out_split, Some("test"));
    assert_eq!((a.held_out_images, a.test_images), (Some(30), Some(70)));
    // Phase 2 drew from all 128 training images, not from the 64 a training hold-out leaves.
    let d = r.distill.as_ref().unwrap();
    assert!(d.teacher_images > 64, "teacher ran on {}", d.teacher_images);

    // The figures are those of the decoded file on the test split's first 30 images and on
    // the other 70.
    let (held, rest) = test_split_halves(dir.path(), &bytes, &data);
    assert_eq!((held.images, rest.images), (30, 70));
    assert_eq!(a.held_out, Some(held.model.accuracy));
    assert_eq!(a.test, Some(rest.model.accuracy));
    // The kept step is chosen on those 30 images: the first best of the history.
    assert_eq!(d.kept_step, first_best(&d.held_out_history).0);

    let c = read_container(&bytes, &Limits::default()).unwrap();
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["accuracy"]["held_out_split"], "test");
    assert_eq!(meta["accuracy"]["test_images"], 70);
    assert_eq!(meta["recipe"]["held_out_from"], "test");
    let shown = nernc::inspect::render(&nernc::inspect::inspect(&c, &Limits::default()).unwrap());
    assert!(
        shown.contains("(30 images of the test split), test") && shown.contains("(70 images)"),
        "{shown}"
    );
}

/// Without real data there is nothing to hold out from the test split: refused, not ignored.
#[test]
fn held_out_from_test_on_noise_is_refused() {
    let mut opts = EncodeOptions {
        held_out_from: nernc::data::Split::Test,
        ..EncodeOptions::default()
    };
    let e = opts
        .set_data(Some(&nernc::encode::DataArg::Noise))
        .unwrap_err();
    assert!(e.to_string().contains("--held-out-from test"), "{e}");
}

/// `--code` (format 1.8): layer3's convs as coded factors train in phase 2 beside the predictor;
/// every figure is of the file as decoded (held-out and test equal `eval` on it), the codes moved
/// off their SVD start, and the file records and shows them.
#[test]
fn coded_convs_train_in_phase_two_and_are_measured_as_stored() {
    use nernc::encode::CodedOptions;
    use nernc::encode::coded::CodedConv;
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let mut opts = selecting_on_test(&data);
    opts.coded = Some(CodedOptions::parse(&["layer3=1/4"], 3, 1e-2).unwrap());
    let src = fixture("fmnist-resnet20.safetensors");
    let (bytes, r) = encode(&src, &opts, &NoProgress).unwrap();
    assert_eq!((r.predicted_tensors, r.coded_tensors), (14, 7));
    let c = read_container(&bytes, &Limits::default()).unwrap();
    assert_eq!(c.minor, 8);
    assert!(c.layers.iter().all(|l| !l.name.starts_with("layer3")));
    // Phase 2 kept a later step, and its codes are not the start's.
    let d = r.distill.as_ref().unwrap();
    assert_eq!(d.kept_step, first_best(&d.held_out_history).0);
    let source = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&source).unwrap();
    let moved = c.coded.iter().any(|t| {
        let w = st.tensor(&t.name).unwrap();
        let values = nernc::format::le_f32s(w.data());
        let layer = nernc::format::LayerEntry {
            name: t.name.clone(),
            dtype: nernc::format::TensorDtype::F32,
            permutation: nernc::permute::PermutationKind::None,
            shape: t.shape,
        };
        let start = CodedConv::new(&layer, &values, t.rank, 3).stored();
        start.matrices != t.matrices
    });
    assert!(
        moved || d.kept_step == 0,
        "phase 2 kept step {} with the start's codes",
        d.kept_step
    );

    let (held, rest) = test_split_halves(dir.path(), &bytes, &data);
    assert_eq!(r.accuracy.held_out, Some(held.model.accuracy));
    assert_eq!(r.accuracy.test, Some(rest.model.accuracy));

    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["recipe"]["code"]["bits"], 3, "{meta}");
    assert_eq!(meta["tensors"]["coded"], 7);
    let shown = nernc::inspect::render(&nernc::inspect::inspect(&c, &Limits::default()).unwrap());
    assert!(
        shown.contains("coded convs (7,") && shown.contains("rank 16 factors"),
        "{shown}"
    );
}

/// `--target-size` with coded convs: the file is sized with their starting codes, and trained
/// codes compress differently (here, at a learning rate that moves them a lot, to a few KB
/// more). Phase 2 keeps no state whose file is over the budget while one within it was seen, so
/// the encode writes a file within a budget its start just fits and says how many checks were
/// over, where it used to keep the most accurate state and then refuse to write it.
#[test]
fn trained_codes_over_the_budget_are_not_kept() {
    use nernc::encode::{CodedOptions, SizeTarget};
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let mut opts = selecting_on_test(&data);
    // Every size pinned and the passthrough raw, so the budget is sized almost exactly.
    opts.hidden = Some(8);
    opts.pe_levels = 4;
    opts.predictor_dtype = nernc::predictor::WeightDtype::Int8;
    opts.pinned.pe_levels = true;
    opts.pinned.predictor_dtype = true;
    opts.raw_passthrough = true;
    opts.distill.as_mut().unwrap().steps = 10;
    opts.coded = Some(CodedOptions::parse(&["layer=1"], 3, 2e-2).unwrap());
    let src = fixture("fmnist-resnet20.safetensors");
    // The smallest budget (in steps of 256 bytes) that the start fits, then a little more for
    // phase 2's start, rounded again.
    let start = EncodeOptions {
        distill: None,
        ..opts.clone()
    };
    let (start_bytes, _) = encode(&src, &start, &NoProgress).unwrap();
    let fits = |b: u64| {
        let o = EncodeOptions {
            target_size: Some(SizeTarget::Bytes(b)),
            ..start.clone()
        };
        encode(&src, &o, &NoProgress).is_ok()
    };
    let smallest = (0..32)
        .map(|k| start_bytes.len() as u64 + 256 * k)
        .find(|&b| fits(b))
        .expect("no budget within 8 KB of the start fits it");
    let budget = smallest + 512;
    opts.target_size = Some(SizeTarget::Bytes(budget));
    let (bytes, r) = encode(&src, &opts, &NoProgress).unwrap();
    assert!(bytes.len() as u64 <= budget, "{} > {budget}", bytes.len());
    let d = r.distill.as_ref().unwrap();
    let checks = d.held_out_history.len();
    assert!(
        d.over_budget > 0 && d.over_budget < checks,
        "{} of {checks} checks over the budget",
        d.over_budget
    );
    assert!(d.over_budget_bytes > 0);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("over the budget, by up to")),
        "{:?}",
        r.notes
    );
}

/// `--code PREFIX=auto`: the encoder measures the rule's convs whole and at each rank fraction
/// on the held-out images before training, takes one, says what it measured, and records the
/// chosen fraction (marked auto) in the recipe; the file holds those ranks.
#[test]
fn auto_rank_is_chosen_on_held_out_images_and_recorded() {
    use nernc::encode::CodedOptions;
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let mut opts = selecting_on_test(&data);
    opts.coded = Some(CodedOptions::parse(&["layer3=auto"], 3, 1e-4).unwrap());
    let src = fixture("fmnist-resnet20.safetensors");
    let (bytes, r) = encode(&src, &opts, &NoProgress).unwrap();
    let note = r
        .notes
        .iter()
        .find(|n| n.starts_with("--code layer3=auto"))
        .unwrap_or_else(|| panic!("{:?}", r.notes));
    assert!(
        note.contains("whole") && note.contains("1/2") && note.contains("1/8"),
        "{note}"
    );
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    let rule = &meta["recipe"]["code"]["rules"][0];
    assert_eq!(rule["auto"], true, "{meta}");
    let fraction = rule["fraction"].as_f64().unwrap();
    assert!([1.0, 0.5, 0.25, 0.125].contains(&fraction), "{fraction}");
    let rank = if fraction == 1.0 {
        0
    } else {
        (64.0 * fraction) as u32
    };
    let layer3: Vec<_> = c.coded.iter().filter(|t| t.name.contains("conv")).collect();
    assert!(
        !layer3.is_empty() && layer3.iter().all(|t| t.rank == rank),
        "{:?}",
        c.coded
    );
}

/// `--code PREFIX=FRACTION@auto` with `--target-size`: each conv's bits are chosen on held-out
/// images so that the file fits; the note says so, the recipe records every conv's bits as the
/// file stores them, and a budget twice as large buys more bits.
#[test]
fn auto_bits_fill_the_budget_and_are_recorded() {
    use nernc::encode::{CodedOptions, SizeTarget};
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let src = fixture("fmnist-resnet20.safetensors");
    let source_bytes = std::fs::metadata(&src).unwrap().len() as f64;
    let options = |percent: f64| {
        let mut opts = selecting_on_test(&data);
        opts.coded = Some(CodedOptions::parse(&["layer=1@auto"], 3, 1e-4).unwrap());
        opts.target_size = Some(SizeTarget::Percent(percent));
        opts
    };
    let auto_at = |percent: f64| encode(&src, &options(percent), &NoProgress);
    let mean_bits = |percent: f64| {
        let (bytes, r) = auto_at(percent).unwrap();
        // The budget goes to the codes: the stem's predictor is not searched for or widened.
        assert!(r.candidates.is_empty(), "{:?}", r.notes);
        assert!(
            bytes.len() as f64 <= source_bytes * percent / 100.0,
            "{} bytes over {percent} %",
            bytes.len()
        );
        let note = r
            .notes
            .iter()
            .find(|n| n.starts_with("--code ...@auto"))
            .unwrap_or_else(|| panic!("{:?}", r.notes));
        assert!(note.contains("20 convs measured"), "{note}");
        let c = read_container(&bytes, &Limits::default()).unwrap();
        let meta = c.metadata(&Limits::default()).unwrap().unwrap();
        assert_eq!(meta["recipe"]["code"]["rules"][0]["bits"], "auto", "{meta}");
        let chosen = meta["recipe"]["code"]["auto_bits"]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(chosen.len(), c.coded.len());
        for t in &c.coded {
            assert_eq!(chosen[&t.name], t.bits, "{}", t.name);
        }
        c.coded.iter().map(|t| f64::from(t.bits)).sum::<f64>() / c.coded.len() as f64
    };
    let (tight, loose) = (mean_bits(9.0), mean_bits(18.0));
    assert!(tight < loose, "mean bits {tight} at 9 %, {loose} at 18 %");
    assert!(tight >= 2.0 && loose <= 8.0);
    // Without --hidden the stem's predictor keeps the default width for its 144 weights, however
    // much of the budget is left (before: the widest that fitted, then widened).
    let mut opts = options(18.0);
    opts.hidden = None;
    let (bytes, r) = encode(&src, &opts, &NoProgress).unwrap();
    assert!(
        r.notes.iter().all(|n| !n.contains("widened")),
        "{:?}",
        r.notes
    );
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let default = nernc::encode::default_hidden(
        144,
        opts.predictor_dtype,
        3,
        opts.layers,
        opts.pe_levels,
        opts.pe_base,
    );
    assert_eq!(c.predictor.config.widths[1], default);
    // 2 % is less than the codes take at 2 bits: a budget error before any training.
    match auto_at(2.0) {
        Err(nernc::Error::Budget(why)) => assert!(why.contains("2-bit codes"), "{why}"),
        other => panic!("{:?}", other.map(|(b, _)| b.len())),
    }
}

/// `--target-size` without `--code` (`codes_for_budget`): every conv but the smallest, the stem,
/// is stored as codes whose bits fill the budget: the same file as `--code layer=1@auto` on
/// ResNet-20 (where `layer` names every conv but the stem), with the rule recorded as "every
/// conv but conv1.weight" and a note. Where even 2-bit codes would not fit, every conv is
/// predicted instead, and the file says why.
#[test]
fn a_budget_alone_stores_codes_and_gives_way_to_the_predictor_below_two_bits() {
    use nernc::encode::{CodedOptions, SizeTarget};
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let src = fixture("fmnist-resnet20.safetensors");
    let at = |percent: f64| {
        let mut opts = selecting_on_test(&data);
        opts.target_size = Some(SizeTarget::Percent(percent));
        opts.codes_for_budget = true;
        opts
    };
    let (bytes, r) = encode(&src, &at(9.0), &NoProgress).unwrap();
    let explicit = EncodeOptions {
        coded: Some(CodedOptions::parse(&["layer=1@auto"], 3, 1e-4).unwrap()),
        codes_for_budget: false,
        ..at(9.0)
    };
    let (explicit_bytes, _) = encode(&src, &explicit, &NoProgress).unwrap();
    let (c, e) = (
        read_container(&bytes, &Limits::default()).unwrap(),
        read_container(&explicit_bytes, &Limits::default()).unwrap(),
    );
    assert_eq!(c.coded.len(), 20);
    assert_eq!(c.layers.len(), 1);
    assert_eq!(c.layers[0].name, "conv1.weight");
    assert_eq!(
        c.coded, e.coded,
        "the codes differ from --code layer=1@auto's"
    );
    assert_eq!(c.predictor, e.predictor);
    // The stem alone (16 kernels, one batch) is encoded at 4 PE levels unless told otherwise.
    assert_eq!(
        c.predictor.config.pe_levels,
        nernc::encode::SMALL_SET_PE_LEVELS
    );
    assert!(
        r.notes[0].contains("every conv but conv1.weight (the smallest, predicted)"),
        "{:?}",
        r.notes
    );
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    let rule = &meta["recipe"]["code"]["rules"][0];
    assert_eq!(rule["except"], "conv1.weight", "{meta}");
    assert_eq!(rule["prefix"], "", "{meta}");
    assert_eq!(rule["bits"], "auto", "{meta}");

    // 3 % is less than 2-bit codes take (about 4 %): every conv predicted, with the reason
    // first among the notes, in the file too.
    let (bytes, r) = encode(&src, &at(3.0), &NoProgress).unwrap();
    let c = read_container(&bytes, &Limits::default()).unwrap();
    assert!(c.coded.is_empty());
    assert_eq!(c.layers.len(), 21);
    assert!(
        r.notes[0].contains("every conv predicted, since codes at 2 bits would make a file of"),
        "{:?}",
        r.notes
    );
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["notes"][0], r.notes[0].as_str(), "{meta}");
    assert!(meta["recipe"].get("code").is_none(), "{meta}");
}
