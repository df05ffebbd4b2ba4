//! The safetensors reader the encoder uses, and the tensor classification after it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.safetensors");
    if let Ok(ck) = nernc::checkpoint::parse_safetensors(path, data) {
        for t in &ck.tensors {
            if nernc::checkpoint::is_predictable(t) {
                let _ = nernc::checkpoint::f32_values(t);
            }
        }
    }
});
