//! Phase 2 end to end on real data: resumes a phase-1 file, keeps the best state by held-out
//! accuracy (never the test split) and records the figures in the file.
#![cfg(feature = "train")]

mod common;
use common::*;

use nernc::data::DatasetKind;
use nernc::encode::{DistillOptions, DistillSource, EncodeOptions, NoProgress, encode};
use nernc::format::{Limits, read_container};

#[test]
fn phase_two_keeps_the_best_held_out_state_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = DatasetKind::FashionMnist
        .default_dir()
        .expect("Fashion-MNIST installed");
    let src = fixture("fmnist-resnet20.safetensors");
    let phase1 = EncodeOptions {
        hidden: 16,
        steps: Some(40),
        batch: 1024,
        data_dir: Some(data.clone()),
        held_out: 300,
        ..EncodeOptions::default()
    };
    let (p1, r1) = encode(&src, &phase1, &NoProgress).unwrap();
    let p1_acc = r1.accuracy.held_out.unwrap();
    assert_eq!(r1.rounds[0].held_out_accuracy, Some(p1_acc));
    let p1_path = dir.path().join("p1.nern");
    std::fs::write(&p1_path, &p1).unwrap();

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
    let best =
        d.held_out_history.iter().fold(
            (0, f64::NEG_INFINITY),
            |b, &(s, a)| if a > b.1 { (s, a) } else { b },
        );
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
}
