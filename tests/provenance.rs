//! Provenance without decoding: nernc writes `META` right after the section table, so a registry
//! reads it (hash-checked) with one ranged read of the file's start, two for older files; and
//! `verify` tells whether a checkpoint is a file's source.
#![cfg(feature = "train")]

mod common;
use common::*;

use nernc::Error;
use nernc::encode::{EncodeOptions, NoProgress, encode};
use nernc::format::{Limits, PROVENANCE_FIRST_READ, read_container, read_provenance};
use nernc::io::sha256_hex;

fn small() -> Vec<u8> {
    let opts = EncodeOptions {
        hidden: Some(8),
        steps: Some(3),
        batch: 128,
        ..EncodeOptions::default()
    };
    encode(&fixture("fmnist-resnet20.safetensors"), &opts, &NoProgress)
        .unwrap()
        .0
}

/// `read_provenance` over an in-memory object, recording each ranged read.
fn provenance(
    bytes: &[u8],
    object_len: u64,
) -> (nernc::Result<nernc::format::Provenance>, Vec<(u64, u64)>) {
    let mut reads = Vec::new();
    let mut fetch = |start: u64, len: u64| {
        reads.push((start, len));
        let end = (start + len).min(bytes.len() as u64);
        Ok(bytes[start.min(end) as usize..end as usize].to_vec())
    };
    let p = read_provenance(object_len, &Limits::default(), &mut fetch);
    (p, reads)
}

#[test]
fn new_files_give_their_provenance_in_one_ranged_read() {
    let b = small();
    let (p, reads) = provenance(&b, b.len() as u64);
    let p = p.unwrap();
    assert_eq!(reads, [(0, PROVENANCE_FIRST_READ.min(b.len() as u64))]);
    assert_eq!((p.reads, p.bytes_read), (1, reads[0].1));
    assert_eq!(&p.sections[0].tag, b"META", "META is written first");
    let full = read_container(&b, &Limits::default()).unwrap();
    let m = p.metadata.unwrap();
    assert_eq!(
        Some(&m),
        full.metadata(&Limits::default()).unwrap().as_ref()
    );
    // What a registry keys on.
    let src = std::fs::read(fixture("fmnist-resnet20.safetensors")).unwrap();
    assert_eq!(m["source"]["sha256"], sha256_hex(&src));
    assert_eq!(m["source"]["bytes"], src.len());
    assert_eq!(m["tensors"]["count"], 128);
    assert_eq!(m["tensors"]["predicted"], 21);
    assert_eq!(m["recipe"]["predictor_dtype"], "int8");
    // The same settings give the same recipe hash; another seed another.
    let again = small();
    let (p2, _) = provenance(&again, again.len() as u64);
    let m2 = p2.unwrap().metadata.unwrap();
    assert_eq!(m["recipe_sha256"], m2["recipe_sha256"]);
    let other = encode(
        &fixture("fmnist-resnet20.safetensors"),
        &EncodeOptions {
            hidden: Some(8),
            steps: Some(3),
            batch: 128,
            seed: 1,
            ..EncodeOptions::default()
        },
        &NoProgress,
    )
    .unwrap()
    .0;
    let m3 = provenance(&other, other.len() as u64)
        .0
        .unwrap()
        .metadata
        .unwrap();
    assert_ne!(m["recipe_sha256"], m3["recipe_sha256"]);
}

#[test]
fn older_files_with_meta_last_take_a_second_read_of_meta_only() {
    let b = std::fs::read(fixture("golden").join("resnet20-h16-int8.nern")).unwrap();
    let (p, reads) = provenance(&b, b.len() as u64);
    let p = p.unwrap();
    let meta = p.sections.iter().find(|s| &s.tag == b"META").unwrap();
    assert_eq!(
        reads,
        [(0, PROVENANCE_FIRST_READ), (meta.offset, meta.stored_len)]
    );
    assert_eq!(p.bytes_read, PROVENANCE_FIRST_READ + meta.stored_len);
    let full = read_container(&b, &Limits::default()).unwrap();
    assert_eq!(p.metadata, full.metadata(&Limits::default()).unwrap());
}

#[test]
fn corrupted_or_mis_sized_objects_are_refused() {
    let b = small();
    let n = b.len() as u64;
    // A flipped bit inside META: its hash catches it.
    let mut bad = b.clone();
    let meta_at = 448 + 10;
    bad[meta_at] ^= 1;
    assert!(matches!(
        provenance(&bad, n).0,
        Err(Error::SectionHashMismatch { tag }) if tag == "META"
    ));
    // A flipped bit in the table: the header hash catches it.
    let mut bad = b.clone();
    bad[40] ^= 1;
    assert!(matches!(
        provenance(&bad, n).0,
        Err(Error::HeaderHashMismatch)
    ));
    // The store says the object is shorter or longer than the header does.
    assert!(matches!(
        provenance(&b, n - 1).0,
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        provenance(&b, n + 1).0,
        Err(Error::LengthMismatch { .. })
    ));
    // A store returning fewer bytes than asked.
    assert!(matches!(
        provenance(&b[..100], n).0,
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        provenance(b"not a nern", 10).0,
        Err(Error::BadMagic)
    ));
}

#[test]
fn verify_tells_the_source_from_another_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.nern");
    std::fs::write(&f, small()).unwrap();
    let r20 = fixture("fmnist-resnet20.safetensors");
    let o = nernc(&[
        "verify",
        f.to_str().unwrap(),
        "--source",
        r20.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("was made from"));
    let r56 = fixture("fmnist-resnet56.safetensors");
    let o = nernc(&[
        "verify",
        f.to_str().unwrap(),
        "--source",
        r56.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "was not made from");
    assert_eq!(o.status.code(), Some(1));
    // `inspect --provenance` reports what it read.
    let o = nernc(&["inspect", "--provenance", "--json", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reads"], 1);
    assert!(v["bytes_read"].as_u64().unwrap() <= PROVENANCE_FIRST_READ);
    let src_sha = sha256_hex(&std::fs::read(&r20).unwrap());
    assert_eq!(v["metadata"]["source"]["sha256"], src_sha);
    // What an OCI push needs (spec §9), copied from META.
    assert_eq!(v["media_type"], "application/vnd.nernc.nern.v1");
    let a = &v["oci_annotations"];
    assert_eq!(a["io.nernc.source.sha256"], src_sha);
    assert_eq!(a["io.nernc.format.version"], v["version"]);
    assert_eq!(a["io.nernc.recipe.sha256"], v["metadata"]["recipe_sha256"]);
    assert_eq!(a["io.nernc.source.bytes"], "1106080");
    assert_eq!(a["org.opencontainers.image.title"], "m.nern");
    // No data, no accuracy: the key is absent rather than "null".
    assert!(a.get("io.nernc.accuracy.test").is_none(), "{a}");
}
