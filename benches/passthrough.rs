//! Passthrough (`DATA`) storage benchmark: the byte-shuffled zstd of format 1.6 on float payloads
//! of growing size. Up to `shuffle::FULL_TRY_LIMIT` the writer tries four strides on the whole
//! payload; beyond it, it picks the stride on a 1 MiB sample and compresses once. The table shows
//! what that costs and saves against four full tries, and the decode side.
//!
//! `cargo bench --bench passthrough` prints a table. The payloads are f32 values drawn like a
//! trained classifier's weights (normal, sigma 0.02): their bytes compress like the real `DATA`
//! of the fixtures (exponent bytes repetitive, low mantissa bytes noise).

use std::time::Instant;

use nernc::format::shuffle::{FULL_TRY_LIMIT, compress, compress_trying_every_stride, decompress};
use nernc::rng::SplitMix64;

fn classifier_like(bytes: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(7);
    (0..bytes / 4)
        .flat_map(|_| (rng.rough_gaussian() * 0.02).to_le_bytes())
        .collect()
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    println!(
        "full tries up to {} MiB; zstd level 19; one run per row",
        FULL_TRY_LIMIT >> 20
    );
    println!(
        "| payload MiB | stored / raw | stride | write s | MB/s | four full tries s | their best / raw | read s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for mib in [1usize, 4, 16, 64] {
        let payload = classifier_like(mib << 20);
        let mut stored = Vec::new();
        let write = seconds(|| stored = compress(&payload).expect("compress"));
        let (full, full_best) = if payload.len() > FULL_TRY_LIMIT && mib <= 16 {
            let mut full = Vec::new();
            let s = seconds(|| full = compress_trying_every_stride(&payload).expect("compress"));
            (
                format!("{s:.1}"),
                format!("{:.4}", full.len() as f64 / payload.len() as f64),
            )
        } else {
            ("-".into(), "-".into())
        };
        let mut back = Vec::new();
        let read = seconds(|| {
            back = decompress(&stored, payload.len() as u64, "DATA").expect("decompress")
        });
        assert_eq!(back, payload);
        println!(
            "| {mib} | {:.4} | {} | {write:.2} | {:.1} | {full} | {full_best} | {read:.3} |",
            stored.len() as f64 / payload.len() as f64,
            stored[0],
            payload.len() as f64 / write / 1e6,
        );
    }
}
