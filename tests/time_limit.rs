//! `--time-limit`: the schedule is scaled to fit what a few timed steps say, the counts run are
//! recorded, and rerunning them without the limit gives the same predictor; a limit nothing can
//! meet writes nothing. (No assertion on wall time: the plan is checked, not the clock.)
#![cfg(feature = "train")]

mod common;
use common::*;

use nernc::data::DatasetKind;
use nernc::encode::clock::SAFETY;
use nernc::encode::{DistillOptions, DistillSource, EncodeOptions, NoProgress, encode};
use nernc::format::{Limits, read_container};

fn asked() -> EncodeOptions {
    EncodeOptions {
        hidden: Some(16),
        // Far more than the limit allows, on any machine.
        steps: Some(200_000),
        batch: 1024,
        data_dir: Some(
            DatasetKind::FashionMnist
                .default_dir()
                .expect("Fashion-MNIST installed"),
        ),
        held_out: 300,
        distill: Some(DistillOptions {
            steps: 5_000,
            source: DistillSource::Data,
            batch: 32,
            ..DistillOptions::default()
        }),
        ..EncodeOptions::default()
    }
}

#[test]
fn a_tight_limit_scales_both_phases_and_the_counts_reproduce_the_file() {
    let src = fixture("fmnist-resnet20.safetensors");
    let limited = EncodeOptions {
        time_limit: Some(45.0),
        ..asked()
    };
    let (bytes, report) = encode(&src, &limited, &NoProgress).unwrap();
    let t = report.time_limit.as_ref().expect("time-limit report");
    assert_eq!(t.asked_steps, (200_000, 5_000));
    let (s1, s2) = t.steps;
    assert!(s1 < 200_000 && s2 < 5_000, "{:?}", t.steps);
    assert!(t.planned_seconds <= SAFETY * t.left_seconds + 1e-9, "{t:?}");
    assert!(t.costs.phase1_step > 0.0 && t.costs.distill_step > 0.0);
    assert!(t.costs.teacher_image > 0.0 && t.costs.eval_image > 0.0);
    // What ran is what the report and the provenance say.
    assert_eq!(report.distill.as_ref().unwrap().steps, s2);
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["recipe"]["phase1"]["steps"], s1);
    assert_eq!(meta["recipe"]["phase2"]["steps"], s2);
    assert_eq!(meta["recipe"]["time_limit_seconds"], 45.0);
    assert_eq!(meta["time_limit"]["steps"][0], s1);
    assert!(report.notes.iter().any(|n| n.contains("--time-limit")));
    assert!(report.summary("a", "b").contains("time limit: 45 s"));

    // The same counts without a limit: the same predictor and tables (training does not
    // depend on the calibration).
    let mut again = asked();
    again.steps = Some(s1);
    again.distill.as_mut().unwrap().steps = s2;
    let (bytes2, report2) = encode(&src, &again, &NoProgress).unwrap();
    assert!(report2.time_limit.is_none());
    let c2 = read_container(&bytes2, &Limits::default()).unwrap();
    assert!(
        c.predictor == c2.predictor,
        "the limited run is not reproducible"
    );
    assert_eq!(c.permutations, c2.permutations);
    assert_eq!(report.accuracy.held_out, report2.accuracy.held_out);
}

#[test]
fn a_generous_limit_changes_nothing() {
    let src = fixture("fmnist-resnet20.safetensors");
    let small = EncodeOptions {
        steps: Some(30),
        distill: Some(DistillOptions {
            steps: 3,
            source: DistillSource::Data,
            batch: 32,
            ..DistillOptions::default()
        }),
        ..asked()
    };
    let limited = EncodeOptions {
        time_limit: Some(3600.0),
        ..small.clone()
    };
    let (bytes, report) = encode(&src, &limited, &NoProgress).unwrap();
    let t = report.time_limit.as_ref().unwrap();
    assert_eq!(t.steps, (30, 3));
    assert!(report.notes.iter().all(|n| !n.contains("--time-limit")));
    let (plain, _) = encode(&src, &small, &NoProgress).unwrap();
    let (a, b) = (
        read_container(&bytes, &Limits::default()).unwrap(),
        read_container(&plain, &Limits::default()).unwrap(),
    );
    assert!(a.predictor == b.predictor);
}

#[test]
fn an_impossible_or_malformed_limit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fmnist-resnet20.safetensors");
    let data = DatasetKind::FashionMnist.default_dir().unwrap();
    let data = data.to_str().unwrap();
    // A limit spent before training can start: a clear error, no file.
    encode_fails_with(
        dir.path(),
        &src,
        &["--data", data, "--held-out", "300", "--time-limit", "0.01s"],
        "time limit",
    );
    for bad in ["0", "-3m", "soon", "5 days"] {
        encode_fails_with(dir.path(), &src, &["--time-limit", bad], "--time-limit");
    }
}
