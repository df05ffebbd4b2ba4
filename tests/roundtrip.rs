//! Encode -> decode on the real fixtures: the decoded checkpoint has the source's names, dtypes,
//! shapes and metadata, passthrough tensors byte-identical, and decoding is deterministic.
#![cfg(feature = "train")]

mod common;
use common::*;

use nernc::encode::{EncodeOptions, NoProgress, Rounding, encode};
use nernc::format::{Limits, read_container};
use nernc::permute::PermutationKind;
use safetensors::SafeTensors;

fn small_options(permutation: PermutationKind, rounds: usize) -> EncodeOptions {
    EncodeOptions {
        hidden: Some(24),
        steps: Some(60),
        rounds,
        batch: 1024,
        permutation,
        seed: 11,
        ..EncodeOptions::default()
    }
}

fn round_trip(name: &str, opts: &EncodeOptions) {
    let src_path = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, report) = encode(&src_path, opts, &NoProgress).unwrap();
    assert_eq!(report.rounds.len(), opts.rounds);
    for r in &report.rounds {
        assert!(r.rmse_vs_target.is_finite() && r.rmse_vs_target > 0.0);
    }
    let nern = dir.path().join("m.nern");
    std::fs::write(&nern, &bytes).unwrap();
    let out = dir.path().join("m.safetensors");
    nernc::decode::decode_file(&nern, &out, 2, &Limits::default()).unwrap();

    let src_bytes = std::fs::read(&src_path).unwrap();
    let dec_bytes = std::fs::read(&out).unwrap();
    let src = SafeTensors::deserialize(&src_bytes).unwrap();
    let dec = SafeTensors::deserialize(&dec_bytes).unwrap();
    let (_, src_meta) = SafeTensors::read_metadata(&src_bytes).unwrap();
    let (_, dec_meta) = SafeTensors::read_metadata(&dec_bytes).unwrap();
    assert_eq!(
        src_meta.metadata(),
        dec_meta.metadata(),
        "__metadata__ differs"
    );
    let mut src_names = src.names();
    let mut dec_names = dec.names();
    src_names.sort();
    dec_names.sort();
    assert_eq!(src_names, dec_names);

    let mut sq = 0.0f64;
    let mut count = 0usize;
    let mut predicted = 0;
    for name in src_names {
        let a = src.tensor(name).unwrap();
        let b = dec.tensor(name).unwrap();
        assert_eq!(a.dtype(), b.dtype(), "{name}");
        assert_eq!(a.shape(), b.shape(), "{name}");
        if a.shape().len() == 4 {
            predicted += 1;
            for (x, y) in a.data().chunks_exact(4).zip(b.data().chunks_exact(4)) {
                let x = f32::from_le_bytes(x.try_into().unwrap());
                let y = f32::from_le_bytes(y.try_into().unwrap());
                sq += f64::from(x - y).powi(2);
                count += 1;
            }
        } else {
            assert_eq!(a.data(), b.data(), "passthrough tensor {name} differs");
        }
    }
    assert_eq!(predicted, report.predicted_tensors);
    // The RMSE the encoder recorded for the stored predictor is the one of the decoded file.
    let rmse = (sq / count as f64).sqrt();
    let recorded = report.accuracy.rmse_vs_original;
    assert!(
        (rmse - recorded).abs() <= 1e-6 * (1.0 + recorded),
        "{rmse} vs {recorded}"
    );
    // The safetensors header is the source's, byte for byte (same names, order and offsets).
    let header_len = 8 + u64::from_le_bytes(src_bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(src_bytes[..header_len], dec_bytes[..header_len]);
}

#[test]
fn resnet20_round_trip_in_filter_two_rounds() {
    round_trip(
        "fmnist-resnet20.safetensors",
        &small_options(PermutationKind::InFilter, 2),
    );
}

#[test]
fn resnet56_round_trip_cross_filter() {
    round_trip(
        "fmnist-resnet56.safetensors",
        &small_options(PermutationKind::CrossFilter, 1),
    );
}

#[test]
fn decoding_is_deterministic_across_runs_and_thread_counts() {
    let (bytes, _) = encode(
        &fixture("fmnist-resnet20.safetensors"),
        &small_options(PermutationKind::InFilter, 1),
        &NoProgress,
    )
    .unwrap();
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let one = nernc::decode::decode_layers(&c.predictor, &c.layers, &c.permutations, 1);
    let two = nernc::decode::decode_layers(&c.predictor, &c.layers, &c.permutations, 2);
    let again = nernc::decode::decode_layers(&c.predictor, &c.layers, &c.permutations, 2);
    let bits =
        |v: &Vec<Vec<f32>>| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&one), bits(&two));
    assert_eq!(bits(&two), bits(&again));
}

#[test]
fn encoding_is_deterministic_for_a_seed() {
    let opts = small_options(PermutationKind::InFilter, 1);
    let path = fixture("fmnist-resnet20.safetensors");
    let (a, _) = encode(&path, &opts, &NoProgress).unwrap();
    let (b, _) = encode(&path, &opts, &NoProgress).unwrap();
    let ca = read_container(&a, &Limits::default()).unwrap();
    let cb = read_container(&b, &Limits::default()).unwrap();
    // Everything but the timings in META is identical. META's length varies with its
    // timings, so later sections may sit at other offsets: compare everything but the offset.
    for (sa, sb) in ca.sections.iter().zip(&cb.sections) {
        if sa.tag != *b"META" {
            let key = |s: &nernc::format::SectionInfo| {
                (
                    s.tag,
                    s.flags,
                    s.encoding,
                    s.stored_len,
                    s.decoded_len,
                    s.hash,
                )
            };
            assert_eq!(key(sa), key(sb), "section {} differs", sa.tag_str());
        }
    }
    let (c, _) = encode(&path, &EncodeOptions { seed: 12, ..opts }, &NoProgress).unwrap();
    let cc = read_container(&c, &Limits::default()).unwrap();
    assert_ne!(ca.predictor, cc.predictor, "the seed has no effect");
}

#[test]
fn f16_bf16_and_int8_predictors_store_what_was_measured() {
    use nernc::predictor::WeightDtype;
    let path = fixture("fmnist-resnet20.safetensors");
    let base = EncodeOptions {
        predictor_dtype: WeightDtype::F32,
        ..small_options(PermutationKind::InFilter, 1)
    };
    let (f32_file, _) = encode(&path, &base, &NoProgress).unwrap();
    let f32c = read_container(&f32_file, &Limits::default()).unwrap();
    // The lowest minor version the file needs: 6 with a shuffled zstd DATA (1.6), 4 with zstd
    // tables or int6/int5 weights (1.4), 3 for int4, 2 when PRED is zstd-compressed (1.2), 1
    // for int8 weights, else 0.
    let want_minor = |c: &nernc::format::Container<'_>| {
        let pred = c.sections.iter().find(|s| s.tag == *b"PRED").unwrap();
        if c.data_stride.is_some() {
            return 6;
        }
        let zstd_table = c
            .sections
            .iter()
            .any(|s| (s.tag == *b"LAYR" || s.tag == *b"PASS") && s.encoding == 1);
        if zstd_table {
            return 4;
        }
        match (c.predictor.config.weight_dtype, pred.encoding) {
            (WeightDtype::Int6 | WeightDtype::Int5, _) => 4,
            (WeightDtype::Int4, _) => 3,
            (_, 1) => 2,
            (WeightDtype::Int8, _) => 1,
            _ => 0,
        }
    };
    assert_eq!(
        u16::from_le_bytes([f32_file[10], f32_file[11]]),
        want_minor(&f32c)
    );
    for dtype in [
        WeightDtype::F16,
        WeightDtype::Bf16,
        WeightDtype::Int8,
        WeightDtype::Int6,
        WeightDtype::Int5,
        WeightDtype::Int4,
    ] {
        let opts = EncodeOptions {
            predictor_dtype: dtype,
            rounding: Rounding::Nearest,
            ..base.clone()
        };
        let (bytes, report) = encode(&path, &opts, &NoProgress).unwrap();
        let c = read_container(&bytes, &Limits::default()).unwrap();
        assert_eq!(c.predictor.config.weight_dtype, dtype);
        // Same training, weights rounded to the dtype.
        let mut rounded = f32c.predictor.clone();
        rounded.store_as(dtype).unwrap();
        assert_eq!(c.predictor, rounded);
        let decode = |c: &nernc::format::Container<'_>| {
            nernc::decode::decode_layers(&c.predictor, &c.layers, &c.permutations, 2)
        };
        if dtype.max_code().is_some() {
            // Compensated rounding (the default) of the same training: the same scales, and
            // conv weights closer to the f32 predictor's than nearest rounding gives.
            let opts = EncodeOptions {
                rounding: Rounding::Compensated,
                ..opts.clone()
            };
            let comp_bytes = encode(&path, &opts, &NoProgress).unwrap().0;
            let comp = read_container(&comp_bytes, &Limits::default()).unwrap();
            for (a, b) in comp.predictor.layers.iter().zip(&c.predictor.layers) {
                assert_eq!(a.scales, b.scales);
            }
            let sq = |a: &[Vec<f32>], b: &[Vec<f32>]| -> f64 {
                a.iter()
                    .flatten()
                    .zip(b.iter().flatten())
                    .map(|(x, y)| f64::from(x - y).powi(2))
                    .sum()
            };
            let target = decode(&f32c);
            let (near, compensated) = (sq(&decode(&c), &target), sq(&decode(&comp), &target));
            assert!(
                compensated < near,
                "{dtype:?}: compensated {compensated} against nearest {near}"
            );
        }
        let pred_len = |c: &nernc::format::Container<'_>| {
            c.sections
                .iter()
                .find(|s| s.tag == *b"PRED")
                .unwrap()
                .stored_len
        };
        let ratio = match dtype {
            WeightDtype::Int8 => 4,
            WeightDtype::Int6 | WeightDtype::Int5 | WeightDtype::Int4 => 3,
            _ => 6,
        };
        assert!(pred_len(&c) < pred_len(&f32c) * ratio / 10);
        // Int8 needs format 1.1, a zstd PRED 1.2; otherwise 1.0 readers can read the file.
        let minor = u16::from_le_bytes([bytes[10], bytes[11]]);
        assert_eq!(minor, want_minor(&c));
        // The recorded RMSE is the stored predictor's.
        let decoded = nernc::decode::decode_layers(&c.predictor, &c.layers, &c.permutations, 2);
        let original =
            nernc::decode::decode_layers(&f32c.predictor, &f32c.layers, &f32c.permutations, 2);
        assert_ne!(decoded, original);
        assert!(report.accuracy.rmse_vs_original.is_finite());
    }
}

/// `--raw-passthrough`: `DATA` stored raw (read in place from the file's bytes, no copy), the
/// same decoded checkpoint as the default's shuffled zstd, and the file says so.
#[test]
fn raw_passthrough_is_read_in_place_and_decodes_the_same() {
    let path = fixture("fmnist-resnet20.safetensors");
    let opts = small_options(PermutationKind::None, 1);
    let (packed, _) = encode(&path, &opts, &NoProgress).unwrap();
    let raw_opts = EncodeOptions {
        raw_passthrough: true,
        ..opts
    };
    let (raw, _) = encode(&path, &raw_opts, &NoProgress).unwrap();
    let limits = Limits::default();
    let (pc, rc) = (
        read_container(&packed, &limits).unwrap(),
        read_container(&raw, &limits).unwrap(),
    );
    let encoding = |c: &nernc::format::Container<'_>| {
        c.sections
            .iter()
            .find(|s| s.tag == *b"DATA")
            .unwrap()
            .encoding
    };
    assert_eq!((encoding(&pc), encoding(&rc)), (2, 0));
    assert!(pc.data_stride.is_some() && rc.data_stride.is_none());
    assert!(matches!(rc.data, std::borrow::Cow::Borrowed(_)));
    assert_eq!(pc.data, rc.data, "the same passthrough bytes");
    // ResNet-20's F32 passthrough: 15,312 bytes raw, 12,413 shuffled under zstd.
    assert!(
        raw.len() > packed.len() + 2000,
        "{} vs {}",
        raw.len(),
        packed.len()
    );
    let meta = rc.metadata(&limits).unwrap().unwrap();
    assert_eq!(meta["recipe"]["raw_passthrough"], true);
    let dir = tempfile::tempdir().unwrap();
    let mut decoded = Vec::new();
    for (name, bytes) in [("packed", &packed), ("raw", &raw)] {
        let (nern, out) = (
            dir.path().join(format!("{name}.nern")),
            dir.path().join(format!("{name}.safetensors")),
        );
        std::fs::write(&nern, bytes).unwrap();
        nernc::decode::decode_file(&nern, &out, 2, &limits).unwrap();
        decoded.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(decoded[0], decoded[1]);
}

/// `--passthrough f16`: the F32 passthrough tensors come back as the source rounded to binary16
/// (and widened to F32), everything else byte-exact, and the file says so.
#[test]
fn passthrough_f16_is_rounded_recorded_and_the_rest_exact() {
    let path = fixture("fmnist-resnet20.safetensors");
    let opts = EncodeOptions {
        passthrough_f16: true,
        ..small_options(PermutationKind::None, 1)
    };
    let (bytes, _) = encode(&path, &opts, &NoProgress).unwrap();
    let exact = encode(&path, &small_options(PermutationKind::None, 1), &NoProgress)
        .unwrap()
        .0;
    // Half the passthrough's bytes, less what the shuffled zstd DATA (format 1.6) saves on each
    // (F32 15,312 -> 12,413 bytes, binary16 7,744 -> 6,756).
    assert!(
        bytes.len() + 5000 < exact.len(),
        "{} vs {}",
        bytes.len(),
        exact.len()
    );
    let c = read_container(&bytes, &Limits::default()).unwrap();
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["recipe"]["passthrough"], "f16 (lossy)");
    let dir = tempfile::tempdir().unwrap();
    let (nern, out) = (dir.path().join("m.nern"), dir.path().join("m.safetensors"));
    std::fs::write(&nern, &bytes).unwrap();
    nernc::decode::decode_file(&nern, &out, 2, &Limits::default()).unwrap();
    let (src_b, dec_b) = (std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
    let (src, dec) = (
        SafeTensors::deserialize(&src_b).unwrap(),
        SafeTensors::deserialize(&dec_b).unwrap(),
    );
    for p in &c.passthrough {
        let (a, b) = (src.tensor(&p.name).unwrap(), dec.tensor(&p.name).unwrap());
        if a.dtype() == safetensors::Dtype::F32 {
            for (x, y) in a.data().chunks_exact(4).zip(b.data().chunks_exact(4)) {
                let x = f32::from_le_bytes(x.try_into().unwrap());
                let y = f32::from_le_bytes(y.try_into().unwrap());
                assert_eq!(y, half::f16::from_f32(x).to_f32(), "{}", p.name);
            }
        } else {
            assert_eq!(a.data(), b.data(), "{} byte-exact", p.name);
        }
    }
}

#[test]
fn a_resumed_file_keeps_its_storage_unless_another_is_asked_for() {
    use nernc::encode::Pinned;
    use nernc::predictor::WeightDtype;
    let path = fixture("fmnist-resnet20.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let int6 = EncodeOptions {
        predictor_dtype: WeightDtype::Int6,
        ..small_options(PermutationKind::None, 1)
    };
    let (first, _) = encode(&path, &int6, &NoProgress).unwrap();
    let first_path = dir.path().join("int6.nern");
    std::fs::write(&first_path, &first).unwrap();
    let predictor = |bytes: &[u8]| read_container(bytes, &Limits::default()).unwrap().predictor;
    let stored = |bytes: &[u8]| predictor(bytes).config.weight_dtype;
    let first_predictor = predictor(&first);
    assert_eq!(first_predictor.config.weight_dtype, WeightDtype::Int6);
    // Continued without a dtype: the file's own storage, whatever the default is.
    for default in [WeightDtype::Int8, WeightDtype::F16] {
        let resumed = EncodeOptions {
            resume: Some(first_path.clone()),
            predictor_dtype: default,
            ..small_options(PermutationKind::None, 1)
        };
        let (again, _) = encode(&path, &resumed, &NoProgress).unwrap();
        assert_eq!(predictor(&again), first_predictor);
    }
    // Asked for (`--predictor-dtype int8`): stored so.
    let pinned = EncodeOptions {
        resume: Some(first_path.clone()),
        predictor_dtype: WeightDtype::Int8,
        pinned: Pinned {
            predictor_dtype: true,
            ..Pinned::default()
        },
        ..small_options(PermutationKind::None, 1)
    };
    let (int8, _) = encode(&path, &pinned, &NoProgress).unwrap();
    assert_eq!(stored(&int8), WeightDtype::Int8);
    // A width or PE levels asked for that are not the file's: refused, not ignored.
    let wider = EncodeOptions {
        hidden: Some(25),
        ..pinned.clone()
    };
    let e = encode(&path, &wider, &NoProgress).unwrap_err().to_string();
    assert!(
        e.contains("--hidden 25") && e.contains("hidden width 24"),
        "{e}"
    );
    let levels = EncodeOptions {
        pe_levels: 10,
        pinned: Pinned {
            pe_levels: true,
            ..Pinned::default()
        },
        ..pinned
    };
    let e = encode(&path, &levels, &NoProgress).unwrap_err().to_string();
    assert!(
        e.contains("--pe-levels 10") && e.contains("20 levels"),
        "{e}"
    );
}

/// `--channel-order similar`: the file holds the reordered network (passthrough byte-exact to
/// the reordered checkpoint), records it, `inspect` shows it, and a resume keeps it or refuses
/// another order.
#[test]
fn reordered_channels_are_recorded_shown_and_kept_on_resume() {
    use nernc::encode::ChannelOrder;
    let path = fixture("fmnist-resnet20.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let similar = EncodeOptions {
        channel_order: Some(ChannelOrder::Similar),
        ..small_options(PermutationKind::None, 1)
    };
    let (bytes, _) = encode(&path, &similar, &NoProgress).unwrap();
    let nern = dir.path().join("similar.nern");
    std::fs::write(&nern, &bytes).unwrap();
    let limits = Limits::default();
    let c = read_container(&bytes, &limits).unwrap();
    let recipe = c.metadata(&limits).unwrap().unwrap()["recipe"].clone();
    assert_eq!(recipe["channel_order"], "similar");
    assert_eq!(recipe["channel_groups"], 12);
    let shown = nernc::inspect::render(&nernc::inspect::inspect(&c, &limits).unwrap());
    assert!(shown.contains("REORDERED channels: 12 groups"), "{shown}");

    // Decoded: the source's names and shapes, the reordered checkpoint's passthrough values.
    let out = dir.path().join("similar.safetensors");
    nernc::decode::decode_file(&nern, &out, 2, &limits).unwrap();
    let src = std::fs::read(&path).unwrap();
    let (reordered, _) = nernc::reorder::reorder_checkpoint(&path, &src).unwrap();
    let decoded = std::fs::read(&out).unwrap();
    let (d, r, s) = (
        SafeTensors::deserialize(&decoded).unwrap(),
        SafeTensors::deserialize(&reordered).unwrap(),
        SafeTensors::deserialize(&src).unwrap(),
    );
    assert_eq!(d.len(), s.len());
    for name in [
        "bn1.weight",
        "layer3.2.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ] {
        let (dt, rt, st) = (
            d.tensor(name).unwrap(),
            r.tensor(name).unwrap(),
            s.tensor(name).unwrap(),
        );
        assert_eq!(dt.shape(), st.shape());
        assert_eq!(dt.data(), rt.data(), "{name}");
        if name != "fc.bias" {
            assert_ne!(dt.data(), st.data(), "{name} did not move");
        }
    }

    // Resumed without --channel-order: the file's order; with another: refused.
    let resumed = EncodeOptions {
        resume: Some(nern.clone()),
        ..small_options(PermutationKind::None, 1)
    };
    let (again, _) = encode(&path, &resumed, &NoProgress).unwrap();
    let c2 = read_container(&again, &limits).unwrap();
    assert_eq!(
        c2.metadata(&limits).unwrap().unwrap()["recipe"]["channel_order"],
        "similar"
    );
    let other = EncodeOptions {
        channel_order: Some(ChannelOrder::Source),
        ..resumed
    };
    let e = encode(&path, &other, &NoProgress).unwrap_err().to_string();
    assert!(e.contains("--channel-order similar"), "{e}");

    // The source's order records nothing and shows nothing.
    let (plain, _) = encode(&path, &small_options(PermutationKind::None, 1), &NoProgress).unwrap();
    let c3 = read_container(&plain, &limits).unwrap();
    assert!(
        c3.metadata(&limits).unwrap().unwrap()["recipe"]
            .get("channel_order")
            .is_none()
    );
    let shown = nernc::inspect::render(&nernc::inspect::inspect(&c3, &limits).unwrap());
    assert!(!shown.contains("REORDERED"), "{shown}");
}

/// `--embedding-width`: the file holds the tables (format 1.7), decodes to the recorded RMSE,
/// records the width in its recipe, `inspect` shows it, and a resume continues the tables (an
/// int6 resume keeps the same predictor) or refuses another width.
#[test]
fn embedding_tables_round_trip_are_recorded_and_kept_on_resume() {
    use nernc::predictor::WeightDtype;
    let opts = EncodeOptions {
        embedding_width: 3,
        predictor_dtype: WeightDtype::Int6,
        ..small_options(PermutationKind::None, 1)
    };
    round_trip("fmnist-resnet20.safetensors", &opts);
    let path = fixture("fmnist-resnet20.safetensors");
    let (bytes, _) = encode(&path, &opts, &NoProgress).unwrap();
    let c = read_container(&bytes, &Limits::default()).unwrap();
    assert_eq!(c.minor, 7);
    let e = c.predictor.config.embedding.expect("tables written");
    assert_eq!(e.width, 3);
    let filters: u32 = c.layers.iter().map(|l| l.shape[0]).sum();
    let channels: u32 = c.layers.iter().map(|l| l.shape[1]).sum();
    assert_eq!(e.rows, [filters, channels]);
    assert_eq!(c.predictor.config.widths[0], 6 * 20 + 2 * 3);
    let meta = c.metadata(&Limits::default()).unwrap().unwrap();
    assert_eq!(meta["recipe"]["embedding_width"], 3, "{meta}");
    let text = nernc::inspect::render(&nernc::inspect::inspect(&c, &Limits::default()).unwrap());
    assert!(
        text.contains(&format!(
            "embeddings: 3 values per row, {filters} filter rows, {channels} channel rows"
        )),
        "{text}"
    );
    // Without the option: no tables, format below 1.7, no recipe entry.
    let (plain, _) = encode(
        &path,
        &EncodeOptions {
            predictor_dtype: WeightDtype::Int6,
            ..small_options(PermutationKind::None, 1)
        },
        &NoProgress,
    )
    .unwrap();
    let p = read_container(&plain, &Limits::default()).unwrap();
    assert!(p.predictor.config.embedding.is_none() && p.minor < 7);
    assert!(
        p.metadata(&Limits::default()).unwrap().unwrap()["recipe"]
            .get("embedding_width")
            .is_none()
    );

    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("e.nern");
    std::fs::write(&first, &bytes).unwrap();
    let resumed = EncodeOptions {
        resume: Some(first.clone()),
        embedding_width: 0,
        ..opts.clone()
    };
    let (again, _) = encode(&path, &resumed, &NoProgress).unwrap();
    let again = read_container(&again, &Limits::default()).unwrap();
    assert_eq!(
        again.predictor, c.predictor,
        "a resume without phase 2 changed the tables"
    );
    let other = EncodeOptions {
        resume: Some(first),
        embedding_width: 5,
        ..opts
    };
    let e = encode(&path, &other, &NoProgress).unwrap_err().to_string();
    assert!(
        e.contains("--embedding-width 5") && e.contains("embedding width 3"),
        "{e}"
    );
}

/// Coded convs (`--code`, format 1.8) round trip: the decoded checkpoint has every name, dtype
/// and shape; `--resume` continues a file's coded convs as they are (without phase 2, the same
/// codes), accepts rules that describe them and refuses rules that do not, and a file without
/// coded convs refuses `--code` on resume.
#[test]
fn coded_convs_round_trip_and_resume_as_they_are() {
    use nernc::encode::CodedOptions;
    let path = fixture("fmnist-resnet20.safetensors");
    let rules = |r: &[&str]| CodedOptions::parse(r, 3, 1e-4).unwrap();
    let opts = EncodeOptions {
        coded: Some(rules(&["layer3=1/4", "layer2.2=1@4"])),
        ..small_options(PermutationKind::None, 1)
    };
    let (bytes, report) = encode(&path, &opts, &NoProgress).unwrap();
    assert_eq!((report.predicted_tensors, report.coded_tensors), (12, 9));
    let c = read_container(&bytes, &Limits::default()).unwrap();
    assert_eq!(c.minor, 8);
    let bits: Vec<u8> = c.coded.iter().map(|t| t.bits).collect();
    assert_eq!(bits, [4, 4, 3, 3, 3, 3, 3, 3, 3], "{:?}", c.coded);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("c.nern");
    std::fs::write(&first, &bytes).unwrap();
    let out = dir.path().join("c.safetensors");
    nernc::decode::decode_file(&first, &out, 2, &Limits::default()).unwrap();
    let (src, dec) = (std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
    let (src, dec) = (
        SafeTensors::deserialize(&src).unwrap(),
        SafeTensors::deserialize(&dec).unwrap(),
    );
    for (name, a) in src.tensors() {
        let b = dec.tensor(&name).unwrap();
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
    }
    assert_eq!(src.len(), dec.len());
    // The report's coded-conv RMSE is that of the decoded checkpoint's coded convs.
    let (mut sum, mut n) = (0.0f64, 0usize);
    for t in &c.coded {
        let a = nernc::format::le_f32s(src.tensor(&t.name).unwrap().data());
        let b = nernc::format::le_f32s(dec.tensor(&t.name).unwrap().data());
        sum += a
            .iter()
            .zip(&b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>();
        n += a.len();
    }
    let e = report.accuracy.coded_rmse_vs_original.unwrap();
    assert!(
        e > 0.0 && (e - (sum / n as f64).sqrt()).abs() <= 1e-12 * e,
        "{e}"
    );

    let resumed = |coded| {
        let o = EncodeOptions {
            resume: Some(first.clone()),
            coded,
            ..small_options(PermutationKind::None, 1)
        };
        encode(&path, &o, &NoProgress)
    };
    for coded in [None, opts.coded.clone()] {
        let (again, _) = resumed(coded).unwrap();
        let again = read_container(&again, &Limits::default()).unwrap();
        assert_eq!(
            again.coded, c.coded,
            "a resume without phase 2 changed the codes"
        );
        assert_eq!(again.predictor, c.predictor);
    }
    let e = resumed(Some(rules(&["layer3=1/2"])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--code") && e.contains("9 coded convs"), "{e}");
    // A file without coded convs: --code on resume is refused, not ignored.
    let (plain, _) = encode(&path, &small_options(PermutationKind::None, 1), &NoProgress).unwrap();
    let plain_path = dir.path().join("p.nern");
    std::fs::write(&plain_path, &plain).unwrap();
    let o = EncodeOptions {
        resume: Some(plain_path),
        coded: Some(rules(&["layer3=1/4"])),
        ..small_options(PermutationKind::None, 1)
    };
    let e = encode(&path, &o, &NoProgress).unwrap_err().to_string();
    assert!(e.contains("holds 0 coded convs"), "{e}");
}
