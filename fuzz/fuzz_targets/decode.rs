//! Full decode of an arbitrary file: validation, then regenerating every weight.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nernc::format::{Limits, read_container};

fuzz_target!(|data: &[u8]| {
    // Small output bound keeps each execution fast; the limit logic itself is under test too.
    let limits = Limits {
        max_output_bytes: 8 << 20,
        max_tensors: 1 << 14,
        max_metadata_bytes: 1 << 20,
    };
    if let Ok(c) = read_container(data, &limits) {
        // Keep the predictor's cost bounded as well: rows x parameters.
        let rows: u64 = c.layers.iter().map(|l| l.kernels() as u64).sum();
        // And the coded convs' factor products (format 1.8): weights x rank.
        let products: u64 = c
            .coded
            .iter()
            .map(|t| (t.elements() as u64).saturating_mul(u64::from(t.rank)))
            .sum();
        if rows.saturating_mul(c.predictor.config.parameter_count()) < 1 << 28
            && products < 1 << 28
        {
            let _ = nernc::decode::decode_container(&c, 1);
        }
    }
});
