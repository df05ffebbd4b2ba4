//! Container parsing and validation on arbitrary bytes, plus inspect of what validates.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nernc::format::{Limits, read_container};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_output_bytes: 64 << 20,
        max_tensors: 1 << 16,
        max_metadata_bytes: 1 << 20,
    };
    if let Ok(c) = read_container(data, &limits) {
        let _ = nernc::inspect::inspect(&c, &limits);
        for p in &c.passthrough {
            let _ = c.tensor_bytes(p);
        }
    }
});
