//! The corruption corpus: one crafted file per failure mode, each refused with its own error
//! variant, and a sweep showing every single-byte flip of a real file is detected.
#![cfg(feature = "train")]

mod common;
#[path = "common/craft.rs"]
mod craft;
use common::*;
use craft::*;

use nernc::Error;
use nernc::format::{Limits, read_container};

/// A small but complete file: ResNet-20, in-filter permutations, all sections present.
/// A small real file: hidden 8, two steps, `dtype` for the predictor.
fn small_file(dtype: nernc::predictor::WeightDtype) -> Vec<u8> {
    let opts = nernc::encode::EncodeOptions {
        hidden: Some(8),
        steps: Some(2),
        batch: 64,
        predictor_dtype: dtype,
        permutation: nernc::permute::PermutationKind::InFilter,
        pe_levels: 40,
        ..Default::default()
    };
    let (bytes, _) = nernc::encode::encode(
        &fixture("fmnist-resnet20.safetensors"),
        &opts,
        &nernc::encode::NoProgress,
    )
    .unwrap();
    bytes
}

fn base() -> Vec<u8> {
    small_file(nernc::predictor::WeightDtype::F16)
}

/// `e` is `Malformed` in `section`, its detail mentioning `needle`.
fn assert_malformed(e: Error, section: &str, needle: &str) {
    match e {
        Error::Malformed { section: s, detail } => {
            assert_eq!(s, section);
            assert!(detail.contains(needle), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

fn err(bytes: &[u8]) -> Error {
    read_container(bytes, &Limits::default()).expect_err("corrupted file was accepted")
}

#[test]
fn base_file_is_valid_and_reassembles_identically() {
    let b = base();
    read_container(&b, &Limits::default()).unwrap();
    // The independent assembler in tests/common/craft.rs agrees with the writer byte for byte.
    assert_eq!(assemble(&split(&b)), b);
}

#[test]
fn bad_magic() {
    let mut b = base();
    b[1] = b'X';
    assert!(matches!(err(&b), Error::BadMagic));
}

#[test]
fn unknown_major_version_names_both_versions() {
    let mut b = base();
    b[8..10].copy_from_slice(&7u16.to_le_bytes());
    let e = err(&b);
    assert!(matches!(
        e,
        Error::UnsupportedVersion {
            found_major: 7,
            supported_major: 1,
            ..
        }
    ));
    let msg = e.to_string();
    assert!(
        msg.contains("version 7.") && msg.contains("major version 1"),
        "{msg}"
    );
}

#[test]
fn newer_minor_version_is_accepted() {
    let mut b = base();
    b[10..12].copy_from_slice(&3u16.to_le_bytes());
    rehash_header(&mut b);
    let c = read_container(&b, &Limits::default()).unwrap();
    assert_eq!((c.major, c.minor), (1, 3));
}

#[test]
fn truncated_at_every_section_boundary() {
    let b = base();
    let c = read_container(&b, &Limits::default()).unwrap();
    let mut cuts = vec![0, 7, 8, 31, 32, 100];
    for s in &c.sections {
        cuts.push(s.offset as usize);
        cuts.push((s.offset + s.stored_len) as usize - 1);
    }
    cuts.push(b.len() - 1);
    for cut in cuts {
        let e = err(&b[..cut]);
        assert!(matches!(e, Error::Truncated { .. }), "cut at {cut}: {e:?}");
    }
}

#[test]
fn section_hash_mismatch_in_every_section() {
    let b = base();
    let c = read_container(&b, &Limits::default()).unwrap();
    for s in c.sections.iter().filter(|s| s.stored_len > 0) {
        let mut x = b.clone();
        x[(s.offset + s.stored_len / 2) as usize] ^= 0x40;
        match err(&x) {
            Error::SectionHashMismatch { tag } => assert_eq!(tag, s.tag_str()),
            e => panic!("{}: {e:?}", s.tag_str()),
        }
    }
}

#[test]
fn header_or_table_edit_without_rehash() {
    let mut b = base();
    b[32 + 16] ^= 1; // PRED stored length
    assert!(matches!(err(&b), Error::HeaderHashMismatch));
}

#[test]
fn overlapping_and_out_of_order_sections() {
    let b = base();
    let entries = split(&b);
    // Section 1 claims section 0's offset (overlap).
    let off0 = u64::from_le_bytes(b[40..48].try_into().unwrap());
    let x = assemble_with(&entries, |i, row| {
        if i == 1 {
            row[8..16].copy_from_slice(&off0.to_le_bytes());
        }
    });
    assert!(matches!(err(&x), Error::SectionLayout(_)), "{:?}", err(&x));
    // A hole: section 2 placed 64 bytes late.
    let x = assemble_with(&entries, |i, row| {
        if i == 2 {
            let o = u64::from_le_bytes(row[8..16].try_into().unwrap()) + 64;
            row[8..16].copy_from_slice(&o.to_le_bytes());
        }
    });
    assert!(matches!(err(&x), Error::SectionLayout(_)));
    // Duplicate tags (two required sections: META comes first and is optional).
    let mut dup = split(&b);
    dup[2].tag = dup[1].tag;
    assert!(matches!(err(&assemble(&dup)), Error::SectionLayout(m) if m.contains("duplicate")));
}

#[test]
fn lengths_past_the_end() {
    let b = base();
    let entries = split(&b);
    let last = entries.len() - 1;
    let x = assemble_with(&entries, |i, row| {
        if i == last {
            row[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        }
    });
    assert!(matches!(err(&x), Error::Overflow(_)), "{:?}", err(&x));
    let x = assemble_with(&entries, |i, row| {
        if i == last {
            let l = u64::from_le_bytes(row[16..24].try_into().unwrap()) + 1000;
            row[16..24].copy_from_slice(&l.to_le_bytes());
        }
    });
    assert!(matches!(err(&x), Error::SectionLayout(m) if m.contains("past the end")));
}

#[test]
fn trailing_bytes() {
    let mut b = base();
    b.push(0);
    assert!(matches!(err(&b), Error::LengthMismatch { .. }));
    // Even when the header's file length admits them.
    let len = b.len() as u64;
    b[16..24].copy_from_slice(&len.to_le_bytes());
    rehash_header(&mut b);
    assert!(matches!(err(&b), Error::SectionLayout(m) if m.contains("after the last section")));
}

/// Offset of the first tensor entry with at least one dimension in a PASS payload.
fn first_pass_entry(pass: &[u8]) -> usize {
    let meta = u32::from_le_bytes(pass[8..12].try_into().unwrap());
    let mut p = 12;
    for _ in 0..2 * meta {
        let l = u32::from_le_bytes(pass[p..p + 4].try_into().unwrap()) as usize;
        p += 4 + l;
    }
    loop {
        let name_len = u16::from_le_bytes(pass[p..p + 2].try_into().unwrap()) as usize;
        let ndim = pass[p + 2 + name_len + 1] as usize;
        if ndim > 0 {
            return p;
        }
        p += 2 + name_len + 2 + 8 * ndim + 16;
    }
}

#[test]
fn absurd_dimensions_and_counts() {
    let b = base();
    // A passthrough tensor whose dimensions overflow u64.
    let mut e = split(&b);
    let pass = &mut find(&mut e, b"PASS").payload;
    let p = first_pass_entry(pass);
    let name_len = u16::from_le_bytes(pass[p..p + 2].try_into().unwrap()) as usize;
    let ndim_at = p + 2 + name_len + 1;
    assert!(pass[ndim_at] >= 1);
    pass[ndim_at + 1..ndim_at + 9].copy_from_slice(&u64::MAX.to_le_bytes());
    let x = assemble(&e);
    assert!(matches!(err(&x), Error::Overflow(_)), "{:?}", err(&x));
    // Too many dimensions.
    let mut e = split(&b);
    find(&mut e, b"PASS").payload[ndim_at] = 200;
    assert!(matches!(
        err(&assemble(&e)),
        Error::Malformed {
            section: "PASS",
            ..
        }
    ));
    // A layer count beyond the tensor limit.
    let mut e = split(&b);
    find(&mut e, b"LAYR").payload[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(err(&assemble(&e)), Error::LimitExceeded { .. }));
    // A predictor width beyond its bound.
    let mut e = split(&b);
    find(&mut e, b"PRED").payload[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        err(&assemble(&e)),
        Error::Malformed {
            section: "PRED",
            ..
        }
    ));
}

/// Byte offset of layer `i`'s shape in a LAYR payload.
fn layer_shape_at(layr: &[u8], i: usize) -> usize {
    let mut p = 4;
    for _ in 0..i {
        let l = u16::from_le_bytes(layr[p..p + 2].try_into().unwrap()) as usize;
        p += 2 + l + 2 + 16;
    }
    let l = u16::from_le_bytes(layr[p..p + 2].try_into().unwrap()) as usize;
    p + 2 + l + 2
}

#[test]
fn huge_declared_output_is_refused_before_allocating_and_names_the_limit() {
    let b = base();
    let mut e = split(&b);
    let layr = &mut find(&mut e, b"LAYR").payload;
    let at = layer_shape_at(layr, 0);
    layr[at..at + 4].copy_from_slice(&100_000u32.to_le_bytes());
    layr[at + 4..at + 8].copy_from_slice(&100_000u32.to_le_bytes());
    let x = assemble(&e);
    let e = err(&x);
    assert!(
        matches!(e, Error::LimitExceeded { limit, .. } if limit == Limits::default().max_output_bytes),
        "{e:?}"
    );
    assert!(e.to_string().contains("--max-output-bytes"), "{e}");
    // A tighter configured limit applies to the real file too.
    let small = Limits {
        max_output_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        read_container(&b, &small),
        Err(Error::LimitExceeded { limit: 1000, .. })
    ));
}

#[test]
fn layer_table_inconsistent_with_predictor() {
    let b = base();
    let mut e = split(&b);
    let layr = &mut find(&mut e, b"LAYR").payload;
    let at = layer_shape_at(layr, 0);
    // A 5x5 kernel in a file whose predictor outputs 3x3.
    layr[at + 8..at + 12].copy_from_slice(&5u32.to_le_bytes());
    layr[at + 12..at + 16].copy_from_slice(&5u32.to_le_bytes());
    assert!(matches!(
        err(&assemble(&e)),
        Error::Malformed {
            section: "LAYR",
            ..
        }
    ));
    // Input width that is not 6 L.
    let mut e = split(&b);
    let pred = &mut find(&mut e, b"PRED").payload;
    pred[0..4].copy_from_slice(&41u32.to_le_bytes());
    assert!(matches!(
        err(&assemble(&e)),
        Error::Malformed {
            section: "PRED",
            ..
        }
    ));
}

#[test]
fn permutation_tables_that_are_not_permutations() {
    let b = base();
    let mut e = split(&b);
    let perm = &mut find(&mut e, b"PERM").payload;
    // conv1 is [16, 1]: its filter block is 16 entries of 4 bits = 8 bytes. All zero: not a
    // permutation.
    for v in &mut perm[0..8] {
        *v = 0;
    }
    match err(&assemble(&e)) {
        Error::InvalidPermutation { layer } => assert_eq!(layer, "conv1.weight"),
        other => panic!("{other:?}"),
    }
    // Wrong length for the layer table.
    let mut e = split(&b);
    let perm = &mut find(&mut e, b"PERM").payload;
    perm.pop();
    let x = assemble(&e);
    assert!(matches!(
        err(&x),
        Error::Malformed {
            section: "PERM",
            ..
        }
    ));
}

#[test]
fn unknown_predictor_dtype() {
    let b = base();
    let mut e = split(&b);
    find(&mut e, b"PRED").payload[6] = 9;
    assert!(matches!(
        err(&assemble(&e)),
        Error::UnknownPredictorDtype(9)
    ));
}

#[test]
fn int8_scales_must_be_finite_and_non_negative() {
    let b = small_file(nernc::predictor::WeightDtype::Int8);
    let c = read_container(&b, &Limits::default()).unwrap();
    // 1 for int8, 2 when PRED is also zstd-compressed.
    assert!(c.minor >= 1, "minor {}", c.minor);
    // PRED header: 24 bytes + 4 (D+1) widths; then layer 0's f32 scales.
    let scales_at = 24 + 4 * (c.predictor.config.widths.len());
    for bad in [f32::NAN, -1.0, f32::INFINITY] {
        let mut e = split(&b);
        let pred = &mut find(&mut e, b"PRED").payload;
        pred[scales_at..scales_at + 4].copy_from_slice(&bad.to_le_bytes());
        assert_malformed(err(&assemble(&e)), "PRED", "scale");
    }
    // Relabelled f32 (or the reverse), the byte count no longer fits the declared shape.
    let mut e = split(&b);
    find(&mut e, b"PRED").payload[6] = 0;
    assert!(matches!(err(&assemble(&e)), Error::Malformed { .. }));
    let mut e = split(&base());
    find(&mut e, b"PRED").payload[6] = 3;
    assert!(matches!(err(&assemble(&e)), Error::Malformed { .. }));
}

#[test]
fn passthrough_tensor_with_wrong_byte_length() {
    let b = base();
    let mut e = split(&b);
    let pass = &mut find(&mut e, b"PASS").payload;
    let p = first_pass_entry(pass);
    let name_len = u16::from_le_bytes(pass[p..p + 2].try_into().unwrap()) as usize;
    let ndim = pass[p + 2 + name_len + 1] as usize;
    let len_at = p + 2 + name_len + 2 + 8 * ndim + 8;
    let len = u64::from_le_bytes(pass[len_at..len_at + 8].try_into().unwrap());
    pass[len_at..len_at + 8].copy_from_slice(&(len + 4).to_le_bytes());
    assert_malformed(err(&assemble(&e)), "PASS", "bytes stored");
    // DATA shorter than the index declares.
    let mut e = split(&b);
    let data = &mut find(&mut e, b"DATA").payload;
    data.truncate(data.len() - 8);
    assert!(matches!(
        err(&assemble(&e)),
        Error::Malformed {
            section: "DATA",
            ..
        }
    ));
}

/// Format 1.6: the base file stores `DATA` shuffled under zstd. Re-encoded with valid hashes:
/// a stride out of range, frames that decode to fewer bytes than declared, and a well-formed
/// payload declared 8 bytes shorter than the index needs are each refused as a malformed `DATA`.
#[test]
fn shuffled_data_with_a_bad_stride_or_length() {
    let b = base();
    let mut e = split(&b);
    let stored = e.iter().find(|e| &e.tag == b"DATA").unwrap();
    assert_eq!(stored.encoding, 2, "the writer shuffles DATA");
    let stride = stored.payload[0];
    let raw = find(&mut e, b"DATA").payload.clone();
    let with_data = |payload: Vec<u8>, declared: u64| {
        let mut e = split(&b);
        let d = e.iter_mut().find(|e| &e.tag == b"DATA").unwrap();
        (d.payload, d.decoded_len) = (payload, declared);
        assemble(&e)
    };
    let n = raw.len() as u64;
    read_container(
        &with_data(shuffled_zstd(&raw, stride), n),
        &Limits::default(),
    )
    .unwrap();
    let mut bad = shuffled_zstd(&raw, stride);
    bad[0] = 0;
    assert_malformed(err(&with_data(bad, n)), "DATA", "stride");
    let short = shuffled_zstd(&raw[..raw.len() - 8], stride);
    assert_malformed(err(&with_data(short.clone(), n)), "DATA", "decoded to");
    assert_malformed(err(&with_data(short, n - 8)), "DATA", "the index declares");
}

#[test]
fn unknown_sections_required_refused_optional_skipped() {
    let b = base();
    let mut e = split(&b);
    e.push(Entry {
        tag: *b"ZZZZ",
        flags: 0,
        encoding: 0,
        decoded_len: 5,
        payload: b"hello".to_vec(),
    });
    let x = assemble(&e);
    let c = read_container(&x, &Limits::default()).unwrap();
    assert_eq!(c.sections.len(), 7);
    e.last_mut().unwrap().flags = 1;
    match err(&assemble(&e)) {
        Error::UnknownRequiredSection { tag } => assert_eq!(tag, "ZZZZ"),
        other => panic!("{other:?}"),
    }
    // A missing required section.
    let mut e = split(&b);
    e.retain(|s| &s.tag != b"PERM");
    assert!(matches!(err(&assemble(&e)), Error::MissingSection("PERM")));
}

#[test]
fn every_single_byte_flip_is_detected() {
    let missed = undetected_flips(&base());
    assert!(missed.is_empty(), "undetected flips at {missed:?}");
}

/// The same over a file with embedding tables (format 1.7), whose `PRED` carries the new fields.
#[test]
fn every_single_byte_flip_of_a_file_with_embedding_tables_is_detected() {
    let b = std::fs::read(fixture("golden").join("resnet20-h16-int6-embed.nern")).unwrap();
    read_container(&b, &Limits::default()).unwrap();
    let missed = undetected_flips(&b);
    assert!(missed.is_empty(), "undetected flips at {missed:?}");
}

/// The same over a file with coded convs (format 1.8), whose `CODE` carries the new fields.
#[test]
fn every_single_byte_flip_of_a_file_with_coded_convs_is_detected() {
    let b = std::fs::read(fixture("golden").join("resnet20-h16-int6-coded.nern")).unwrap();
    assert!(
        !read_container(&b, &Limits::default())
            .unwrap()
            .coded
            .is_empty()
    );
    let missed = undetected_flips(&b);
    assert!(missed.is_empty(), "undetected flips at {missed:?}");
}

/// Writes a crafted file whose header declares a 360 GB output to `$NERN_CRAFT_OUT`, for
/// measuring the decoder's peak memory on it (`/usr/bin/time -v nernc decode ...`).
#[test]
#[ignore]
fn write_huge_header_file() {
    let Some(out) = std::env::var_os("NERN_CRAFT_OUT") else {
        return;
    };
    let b = base();
    let mut e = split(&b);
    let layr = &mut find(&mut e, b"LAYR").payload;
    let at = layer_shape_at(layr, 0);
    layr[at..at + 4].copy_from_slice(&100_000u32.to_le_bytes());
    layr[at + 4..at + 8].copy_from_slice(&100_000u32.to_le_bytes());
    std::fs::write(out, assemble(&e)).unwrap();
}

/// The same sweep over any file: `NERN_SWEEP=path cargo test --release --test corruption --
/// --ignored sweep_file --nocapture` (used for the full-size ResNet-20 `.nern` in the notes).
#[test]
#[ignore]
fn sweep_file() {
    let Some(path) = std::env::var_os("NERN_SWEEP") else {
        return;
    };
    let b = std::fs::read(path).unwrap();
    read_container(&b, &Limits::default()).unwrap();
    let missed = undetected_flips(&b);
    assert!(missed.is_empty(), "undetected flips at {missed:?}");
}

/// Flips every byte of `b` in turn (xor 0xA5), prints the detected fraction and returns the
/// positions whose flip the reader accepted.
fn undetected_flips(b: &[u8]) -> Vec<usize> {
    let mut x = b.to_vec();
    let mut missed = Vec::new();
    for i in 0..b.len() {
        x[i] ^= 0xA5;
        if read_container(&x, &Limits::default()).is_ok() {
            missed.push(i);
        }
        x[i] = b[i];
    }
    let detected = b.len() - missed.len();
    println!(
        "single-byte flips detected: {detected}/{} ({:.4} %)",
        b.len(),
        100.0 * detected as f64 / b.len() as f64
    );
    missed
}
