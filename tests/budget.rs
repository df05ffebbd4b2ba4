//! Size budgets and accuracy goals (`--target-size`, `--max-drop`): the written file is never
//! larger than the budget, an impossible budget or a missed enforced goal writes nothing, and
//! bad values are refused before any training.
#![cfg(feature = "train")]

mod common;
use common::*;

use nernc::Error;
use nernc::encode::{EncodeOptions, MaxDrop, NoProgress, Pinned, Progress, SizeTarget, encode};
use nernc::format::{Limits, read_container};
use nernc::predictor::WeightDtype;

const RESNET20: &str = "fmnist-resnet20.safetensors";

/// Tiny schedule, no data: fast, and the budget logic is the same.
fn quick() -> EncodeOptions {
    EncodeOptions {
        steps: Some(12),
        batch: 256,
        ..EncodeOptions::default()
    }
}

#[test]
fn the_file_fits_the_budget_and_the_best_measured_candidate_is_kept() {
    let src = fixture(RESNET20);
    let source_bytes = std::fs::metadata(&src).unwrap().len();
    let budget = source_bytes * 4 / 100;
    let opts = EncodeOptions {
        target_size: Some(SizeTarget::Percent(4.0)),
        ..quick()
    };
    let (bytes, report) = encode(&src, &opts, &NoProgress).unwrap();
    assert!(bytes.len() as u64 <= budget, "{} > {budget}", bytes.len());
    assert_eq!(report.goal.budget_bytes, Some(budget));
    // One candidate per PE level count, each filling the budget, one chosen.
    assert_eq!(report.candidates.len(), 3);
    assert_eq!(report.candidates.iter().filter(|c| c.chosen).count(), 1);
    for c in &report.candidates {
        assert!(c.bound_bytes <= budget);
        assert_eq!(c.predictor_dtype, "int8");
        assert!(c.held_out.is_none(), "no data: chosen by RMSE");
    }
    let best = report
        .candidates
        .iter()
        .min_by(|a, b| a.rmse_vs_original.total_cmp(&b.rmse_vs_original))
        .unwrap();
    assert!(best.chosen);
    // The file holds the chosen shape, and a wider predictor would not have fit.
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let cfg = &c.predictor.config;
    assert_eq!(cfg.widths[1], best.hidden);
    assert_eq!(cfg.pe_levels, best.pe_levels);
    assert_eq!(cfg.weight_dtype, WeightDtype::Int8);
    // `inspect` shows the budget and the candidates from the file's provenance.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.nern");
    std::fs::write(&path, &bytes).unwrap();
    let o = nernc(&["inspect", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("size budget {budget} bytes")),
        "{text}"
    );
    assert_eq!(text.matches("candidate: ").count(), 3, "{text}");
    assert!(text.contains(&format!("hidden {}, PE L={}", best.hidden, best.pe_levels)));
    assert_eq!(text.matches("<- chosen").count(), 1);
    let wider = EncodeOptions {
        hidden: Some(best.hidden + 1),
        pe_levels: best.pe_levels,
        pinned: Pinned {
            pe_levels: true,
            predictor_dtype: false,
        },
        ..opts.clone()
    };
    assert!(matches!(
        encode(&src, &wider, &NoProgress),
        Err(Error::Budget(_))
    ));
}

/// Every decision an encode records in its notes (here the default width) is also shown when
/// it is made, before the training it decides on: an hour-long encode does not keep its choices
/// to the end.
#[test]
fn decisions_are_shown_when_made_and_kept_in_the_notes() {
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);
    impl Progress for Recorder {
        fn start(&self, total: u64) {
            self.0.lock().unwrap().push(format!("start {total}"));
        }
        fn note(&self, message: &str) {
            self.0.lock().unwrap().push(format!("note {message}"));
        }
    }
    let recorder = Recorder::default();
    let (_, report) = encode(&fixture(RESNET20), &quick(), &recorder).unwrap();
    let events = recorder.0.into_inner().unwrap();
    let shown: Vec<&str> = events
        .iter()
        .filter_map(|e| e.strip_prefix("note "))
        .collect();
    assert!(!report.notes.is_empty());
    assert_eq!(shown, report.notes, "{events:?}");
    let at = |prefix: &str| events.iter().position(|e| e.starts_with(prefix));
    assert!(
        at("note hidden width").unwrap() < at("start").unwrap(),
        "{events:?}"
    );
}

#[test]
fn pinned_settings_are_kept_and_must_fit() {
    let src = fixture(RESNET20);
    let opts = EncodeOptions {
        target_size: Some(SizeTarget::Bytes(60_000)),
        hidden: Some(40),
        pe_levels: 8,
        pinned: Pinned {
            pe_levels: true,
            predictor_dtype: false,
        },
        ..quick()
    };
    let (bytes, report) = encode(&src, &opts, &NoProgress).unwrap();
    assert!(bytes.len() <= 60_000);
    assert!(report.candidates.is_empty(), "nothing to choose");
    let c = read_container(&bytes, &Limits::default()).unwrap();
    assert_eq!(c.predictor.config.widths[1], 40);
    assert_eq!(c.predictor.config.pe_levels, 8);
}

#[test]
fn impossible_budgets_and_bad_values_are_refused_before_training_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.nern");
    let src = fixture(RESNET20);
    let run = |extra: &[&str], expect: &str| {
        let before = entries(dir.path());
        let mut args = vec![
            "encode",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--data",
            "noise",
            "--distill-steps",
            "0",
            "--steps",
            "100000",
        ];
        args.extend_from_slice(extra);
        let t = std::time::Instant::now();
        let o = nernc(&args);
        assert_clean_failure(&o, expect);
        assert_eq!(entries(dir.path()), before, "{extra:?} left files behind");
        // 100,000 phase-1 steps would take many minutes: the refusal came before training.
        assert!(
            t.elapsed().as_secs() < 60,
            "{extra:?} trained before failing"
        );
    };
    // The tensors stored verbatim alone are about 2 % of ResNet-20.
    run(&["--target-size", "1%"], "no predictor fits");
    run(&["--target-size", "5000"], "no predictor fits");
    run(&["--target-size", "0"], "at least 1 byte");
    run(&["--target-size", "0%"], "(0, 100]");
    run(&["--target-size", "-5%"], "(0, 100]");
    run(&["--target-size", "150%"], "(0, 100]");
    run(&["--target-size", "ten"], "percent of the source");
    run(&["--target-size", "99999999"], "larger than the source");
    run(
        &["--target-size", "5%", "--hidden", "400"],
        "no predictor fits",
    );
    run(&["--max-drop", "-1"], "--max-drop");
    run(&["--max-drop", "nan"], "--max-drop");
    run(&["--target-size", "10%", "--rounds", "2"], "--rounds 1");
}

#[test]
fn a_missed_enforced_accuracy_goal_writes_nothing_and_exits_3() {
    let Some(data) = nernc::data::DatasetKind::FashionMnist.default_dir() else {
        panic!("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.nern");
    let src = fixture(RESNET20);
    // Eight hidden units and three steps stay far from the original's accuracy.
    let args = [
        "encode",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--held-out",
        "200",
        "--hidden",
        "8",
        "--steps",
        "3",
        "--batch",
        "256",
        "--distill-steps",
        "1",
        "--distill-batch",
        "8",
        "--max-drop",
        "0.5",
    ];
    let o = nernc(&args);
    assert_clean_failure(&o, "goal not met");
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("nothing written"));
    assert!(entries(dir.path()).is_empty());

    // Without --max-drop the same encode only reports the miss, and writes the file.
    let o = nernc(&args[..args.len() - 2]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("MISSED"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("held-out images come from the training split")
            && stderr(&o).contains("--test-eval measures the test split"),
        "a miss says what held-out measures: {}",
        stderr(&o)
    );
    let bytes = std::fs::read(&out).unwrap();
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["goal"]["met"], false);
    assert_eq!(meta["goal"]["enforced"], false);
    let drop = meta["goal"]["drop"].as_f64().unwrap();
    assert!(drop > 0.5, "drop {drop}");
}

#[test]
fn size_target_parsing() {
    assert_eq!(SizeTarget::parse("10%").unwrap(), SizeTarget::Percent(10.0));
    assert_eq!(
        SizeTarget::parse(" 7.5 %").unwrap(),
        SizeTarget::Percent(7.5)
    );
    assert_eq!(
        SizeTarget::parse("120000").unwrap(),
        SizeTarget::Bytes(120_000)
    );
    for bad in ["", "%", "x%", "-1", "1e5", "101%", "0"] {
        assert!(SizeTarget::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(SizeTarget::Percent(10.0).bytes(1000).unwrap(), 100);
    assert!(SizeTarget::Bytes(1001).bytes(1000).is_err());
    assert_eq!(
        MaxDrop::default(),
        MaxDrop {
            points: 0.3,
            enforced: false
        }
    );
}

/// `--target-size` on data without `--code` stores codes only where it can: a network nernc
/// cannot run (no held-out accuracy to choose bits on; with the dataset found at its default
/// location, phase 2 is then skipped with a note) and a network of one conv (the format
/// predicts at least one) are encoded with every conv predicted, and the note says why.
#[test]
fn a_budget_alone_predicts_every_conv_where_codes_cannot_be_used() {
    assert!(
        nernc::data::DatasetKind::FashionMnist
            .default_dir()
            .is_some(),
        "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
    );
    let dir = tempfile::tempdir().unwrap();
    let conv = |name: &'static str, shape: Vec<usize>, seed| {
        let n = shape.iter().product();
        (name, safetensors::Dtype::F32, shape, f32_bytes(n, seed))
    };
    let two = dir.path().join("convnet.safetensors");
    write_safetensors(
        &two,
        &[
            conv("features.0.weight", vec![32, 1, 3, 3], 1),
            conv("features.2.weight", vec![32, 32, 3, 3], 2),
            conv("classifier.weight", vec![10, 32], 3),
        ],
    );
    let one = dir.path().join("one.safetensors");
    write_safetensors(&one, &[conv("features.0.weight", vec![64, 32, 3, 3], 4)]);
    for (src, why) in [
        (&two, "since codes need a network nernc can run"),
        (&one, "since the network has one conv"),
    ] {
        let out = dir.path().join("m.nern");
        let o = nernc(&[
            "encode",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--target-size",
            "60%",
            "--steps",
            "20",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["coded_tensors"], 0, "{report}");
        let note = report["notes"][0].as_str().unwrap();
        assert!(
            note.starts_with("--target-size without --code: every conv predicted")
                && note.contains(why),
            "{note}"
        );
        let bytes = std::fs::read(&out).unwrap();
        let c = read_container(&bytes, &Limits::default()).unwrap();
        assert!(c.coded.is_empty());
        std::fs::remove_file(&out).unwrap();
    }
}
