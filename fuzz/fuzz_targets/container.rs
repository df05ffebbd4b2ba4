//! Container parsing and validation on arbitrary bytes, plus inspect of what validates, and the
//! provenance reader (ranged reads of the same bytes), which must agree with it on META.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nernc::format::{Limits, read_container, read_provenance};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_output_bytes: 64 << 20,
        max_tensors: 1 << 16,
        max_metadata_bytes: 1 << 20,
    };
    let mut fetch = |start: u64, len: u64| {
        let end = start.saturating_add(len).min(data.len() as u64);
        Ok(data[start.min(end) as usize..end as usize].to_vec())
    };
    let provenance = read_provenance(data.len() as u64, &limits, &mut fetch);
    if let Ok(c) = read_container(data, &limits) {
        let _ = nernc::inspect::inspect(&c, &limits);
        for p in &c.passthrough {
            let _ = c.tensor_bytes(p);
        }
        // A valid file's provenance reads, and is the same META.
        let p = provenance.expect("valid file, provenance refused");
        assert_eq!(p.metadata, c.metadata(&limits).unwrap());
    }
});
