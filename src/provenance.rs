//! What a registry asks of a `.nern` without decoding it: its provenance read with ranged reads
//! from the start of the file (`inspect --provenance`), and whether a checkpoint is the one a
//! file was made from (`verify`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{Limits, Provenance, read_provenance};
use crate::io::sha256_hex;

/// The media type of a `.nern` file (spec §9): RFC 6838 vendor tree, the format's major version
/// in the name (a 1.x reader reads every 1.x file; a 2.0 format gets a new type).
pub const MEDIA_TYPE: &str = "application/vnd.nernc.nern.v1";

/// The OCI annotations spec §9 gives for publishing a `.nern` as an artifact, from its
/// provenance: the format version always, the rest where `META` records it. Keys in ascending
/// order; values are strings, as OCI requires.
pub fn oci_annotations(
    p: &Provenance,
    title: Option<&str>,
) -> std::collections::BTreeMap<&'static str, String> {
    let mut a = std::collections::BTreeMap::new();
    a.insert(
        "io.nernc.format.version",
        format!("{}.{}", p.major, p.minor),
    );
    if let Some(t) = title {
        a.insert("org.opencontainers.image.title", t.to_string());
    }
    let Some(m) = &p.metadata else {
        return a;
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let fields = [
        ("io.nernc.encoder", "/encoder"),
        ("io.nernc.source.sha256", "/source/sha256"),
        ("io.nernc.source.bytes", "/source/bytes"),
        ("io.nernc.source.name", "/source/name"),
        ("io.nernc.tensors.names.sha256", "/tensors/names_sha256"),
        ("io.nernc.recipe.sha256", "/recipe_sha256"),
        ("io.nernc.accuracy.held-out", "/accuracy/held_out"),
        ("io.nernc.accuracy.test", "/accuracy/test"),
    ];
    for (key, pointer) in fields {
        if let Some(v) = m.pointer(pointer).and_then(text) {
            a.insert(key, v);
        }
    }
    a
}

/// The provenance of the `.nern` at `path` (a path or an object-store URI), read with
/// positioned reads or ranged GETs of the ranges [`read_provenance`] asks for.
pub fn provenance_of_file(path: &Path, limits: &Limits) -> Result<Provenance> {
    let mut reader = crate::store::Location::from_arg(path)?.ranged()?;
    let len = reader.len;
    let mut fetch = |start: u64, n: u64| reader.read(start, n);
    read_provenance(len, limits, &mut fetch)
}

/// How a checkpoint compares with the source a `.nern` records.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    /// The checkpoint's SHA-256 and size.
    pub sha256: String,
    pub bytes: u64,
    /// What the file records (`sha256`, or `blake3` in files written before it was recorded).
    pub recorded_sha256: Option<String>,
    pub recorded_blake3: Option<String>,
    pub recorded_bytes: Option<u64>,
    pub matches: bool,
}

/// Whether `checkpoint` is the source `nern` was encoded from, by the digests in its `META`.
/// A file without provenance cannot tell: that is an error, not a mismatch.
pub fn verify_source(nern: &Path, checkpoint: &Path, limits: &Limits) -> Result<Verdict> {
    let p = provenance_of_file(nern, limits)?;
    let src = p
        .metadata
        .as_ref()
        .and_then(|m| m.get("source"))
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} records no source checkpoint (no META provenance)",
                nern.display()
            ))
        })?;
    let text = |k: &str| src.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (recorded_sha256, recorded_blake3) = (text("sha256"), text("blake3"));
    if recorded_sha256.is_none() && recorded_blake3.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} records no digest of its source",
            nern.display()
        )));
    }
    let file = crate::io::MappedFile::open(checkpoint)?;
    let bytes = file.bytes();
    let sha256 = sha256_hex(bytes);
    let matches = match (&recorded_sha256, &recorded_blake3) {
        (Some(s), _) => *s == sha256,
        (None, Some(b)) => *b == blake3::hash(bytes).to_hex().as_str(),
        (None, None) => false,
    };
    Ok(Verdict {
        sha256,
        bytes: bytes.len() as u64,
        recorded_sha256,
        recorded_blake3,
        recorded_bytes: src.get("bytes").and_then(|v| v.as_u64()),
        matches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provenance(metadata: Option<serde_json::Value>) -> Provenance {
        Provenance {
            major: 1,
            minor: 4,
            file_len: 100,
            sections: Vec::new(),
            metadata,
            bytes_read: 100,
            reads: 1,
        }
    }

    #[test]
    fn annotations_copy_what_meta_records_and_nothing_else() {
        let a = oci_annotations(&provenance(None), None);
        assert_eq!(a.len(), 1);
        assert_eq!(a["io.nernc.format.version"], "1.4");
        let meta = serde_json::json!({
            "encoder": "nernc 0.1.0",
            "source": {"sha256": "ab", "bytes": 7, "name": "m.safetensors"},
            "accuracy": {"held_out": 96.5, "test": null},
            "recipe_sha256": ["not", "a", "string"],
        });
        let a = oci_annotations(&provenance(Some(meta)), Some("m.nern"));
        assert_eq!(a["io.nernc.source.sha256"], "ab");
        assert_eq!(a["io.nernc.source.bytes"], "7");
        assert_eq!(a["io.nernc.accuracy.held-out"], "96.5");
        assert_eq!(a["org.opencontainers.image.title"], "m.nern");
        assert!(!a.contains_key("io.nernc.accuracy.test"));
        assert!(!a.contains_key("io.nernc.recipe.sha256"));
        assert!(!a.contains_key("io.nernc.tensors.names.sha256"));
    }
}
