//! `nernc inspect`: what a `.nern` file holds and what it costs.

use serde::Serialize;

use crate::error::Result;
use crate::format::{
    Container, Limits, TAG_CODED, TAG_DATA, TAG_PASSTHROUGH, TAG_PERMUTATIONS, TAG_PREDICTOR,
};

#[derive(Serialize)]
pub struct SectionRow {
    pub tag: String,
    pub offset: u64,
    pub stored_bytes: u64,
    pub decoded_bytes: u64,
    /// `raw`, `zstd`, or `zstd shuffled/S` (format 1.6: bytes regrouped by position in
    /// `S`-byte elements before zstd).
    pub encoding: String,
    pub required: bool,
    pub blake3: String,
}

#[derive(Serialize)]
pub struct LayerRow {
    pub index: usize,
    pub name: String,
    pub shape: [u32; 4],
    pub permutation: String,
}

/// A conv weight stored as codes (`CODE`, format 1.8).
#[derive(Serialize)]
pub struct CodedRow {
    pub name: String,
    pub shape: [u32; 4],
    pub bits: u8,
    /// 0: the weight's own codes; r > 0: two coded factors of rank r.
    pub rank: u32,
    pub codes: usize,
}

#[derive(Serialize)]
pub struct PredictorRow {
    pub pe_levels: u32,
    pub pe_base: f64,
    pub coordinates: &'static str,
    pub activation: &'static str,
    pub kernel_size: u32,
    pub widths: Vec<u32>,
    pub depth: usize,
    pub parameters: u64,
    pub dtype: &'static str,
    /// `PRED`'s code layout: 0 packed per layer, 1 byte codes (spec §5.1).
    pub code_layout: u8,
    /// Learned embedding tables (format 1.7): values per row, filter rows, channel rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingRow>,
}

#[derive(Serialize)]
pub struct EmbeddingRow {
    pub width: u32,
    pub filter_rows: u32,
    pub channel_rows: u32,
}

#[derive(Serialize)]
pub struct InspectReport {
    pub version: String,
    pub file_bytes: u64,
    pub source_bytes: Option<u64>,
    /// File size as a percentage of the source checkpoint.
    pub size_percent_of_source: Option<f64>,
    /// The paper's ratio: predictor parameters / predicted parameters.
    pub compression_ratio: f64,
    pub predicted_parameters: u64,
    pub predictor_bytes: u64,
    pub permutation_bytes: u64,
    pub passthrough_bytes: u64,
    pub passthrough_tensors: usize,
    /// Passthrough tensors stored as binary16 (lossy, `--passthrough f16`).
    pub passthrough_f16_tensors: usize,
    /// Passthrough tensors trained in phase 2 (lossy, `--passthrough tuned`), as the
    /// provenance's recipe records them.
    pub passthrough_tuned_tensors: usize,
    /// Channel groups the encoder reordered (`--channel-order similar`, function-preserving), as
    /// the provenance's recipe records them; 0 when the source's order was kept.
    pub reordered_channel_groups: usize,
    pub predictor: PredictorRow,
    pub sections: Vec<SectionRow>,
    pub layers: Vec<LayerRow>,
    /// Bytes of `CODE` as stored (format 1.8; 0 without coded convs).
    pub coded_bytes: u64,
    pub coded: Vec<CodedRow>,
    pub metadata: Option<serde_json::Value>,
}

pub fn inspect(c: &Container<'_>, limits: &Limits) -> Result<InspectReport> {
    let metadata = c.metadata(limits)?;
    let source_bytes = metadata
        .as_ref()
        .and_then(|m| m.pointer("/source/bytes"))
        .and_then(serde_json::Value::as_u64);
    let section_bytes = |tag: [u8; 4]| {
        c.sections
            .iter()
            .find(|s| s.tag == tag)
            .map_or(0, |s| s.stored_len)
    };
    let predicted: u64 = c.layers.iter().map(|l| l.elements() as u64).sum();
    let cfg = &c.predictor.config;
    Ok(InspectReport {
        version: format!("{}.{}", c.major, c.minor),
        file_bytes: c.file_len,
        source_bytes,
        size_percent_of_source: source_bytes.map(|s| 100.0 * c.file_len as f64 / s as f64),
        compression_ratio: cfg.parameter_count() as f64 / predicted.max(1) as f64,
        predicted_parameters: predicted,
        predictor_bytes: section_bytes(TAG_PREDICTOR),
        permutation_bytes: section_bytes(TAG_PERMUTATIONS),
        passthrough_bytes: section_bytes(TAG_DATA) + section_bytes(TAG_PASSTHROUGH),
        passthrough_tensors: c.passthrough.len(),
        passthrough_f16_tensors: c
            .passthrough
            .iter()
            .filter(|p| p.storage == crate::format::PassStorage::F16)
            .count(),
        passthrough_tuned_tensors: metadata
            .as_ref()
            .and_then(|m| m.pointer("/recipe/tuned_tensors"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize,
        reordered_channel_groups: metadata
            .as_ref()
            .filter(|m| {
                m.pointer("/recipe/channel_order").and_then(|v| v.as_str()) == Some("similar")
            })
            .and_then(|m| m.pointer("/recipe/channel_groups"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize,
        predictor: PredictorRow {
            pe_levels: cfg.pe_levels,
            pe_base: cfg.pe_base,
            coordinates: if cfg.embedding.is_some() {
                "raw integers (layer, filter position, channel position) and embedding rows"
            } else {
                "raw integers (layer, filter position, channel position)"
            },
            embedding: cfg.embedding.map(|e| EmbeddingRow {
                width: e.width,
                filter_rows: e.rows[0],
                channel_rows: e.rows[1],
            }),
            activation: "relu",
            kernel_size: cfg.kernel_size,
            widths: cfg.widths.clone(),
            depth: cfg.depth(),
            parameters: cfg.parameter_count(),
            dtype: cfg.weight_dtype.name(),
            code_layout: c.code_layout,
        },
        sections: c
            .sections
            .iter()
            .map(|s| SectionRow {
                tag: s.tag_str(),
                offset: s.offset,
                stored_bytes: s.stored_len,
                decoded_bytes: s.decoded_len,
                encoding: match (s.encoding, c.data_stride) {
                    (0, _) => "raw".into(),
                    (2, Some(stride)) if s.tag == TAG_DATA => format!("zstd shuffled/{stride}"),
                    _ => "zstd".into(),
                },
                required: s.flags & crate::format::FLAG_REQUIRED != 0,
                blake3: s.hash.iter().map(|b| format!("{b:02x}")).collect(),
            })
            .collect(),
        layers: c
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerRow {
                index: i,
                name: l.name.clone(),
                shape: l.shape,
                permutation: format!("{:?}", l.permutation),
            })
            .collect(),
        coded_bytes: section_bytes(TAG_CODED),
        coded: c
            .coded
            .iter()
            .map(|t| CodedRow {
                name: t.name.clone(),
                shape: t.shape,
                bits: t.bits,
                rank: t.rank,
                codes: t.codes(),
            })
            .collect(),
        metadata,
    })
}

/// Human-readable rendering.
pub fn render(r: &InspectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, ".nern version {}  ({} bytes)", r.version, r.file_bytes);
    if let (Some(src), Some(p)) = (r.source_bytes, r.size_percent_of_source) {
        let _ = writeln!(
            s,
            "source checkpoint: {src} bytes; this file is {p:.2} % of it"
        );
    }
    let _ = writeln!(
        s,
        "compression ratio (predictor params / predicted params): {:.4} ({} / {})",
        r.compression_ratio, r.predictor.parameters, r.predicted_parameters
    );
    let p = &r.predictor;
    let _ = writeln!(
        s,
        "predictor: {} linear layers {:?}, relu, PE L={} b={}, K={}, {}{}",
        p.depth,
        p.widths,
        p.pe_levels,
        p.pe_base,
        p.kernel_size,
        p.dtype,
        if p.code_layout == 1 {
            " (code layout 1: one byte per code, all layers' codes first)"
        } else {
            ""
        }
    );
    if let Some(e) = &p.embedding {
        let _ = writeln!(
            s,
            "embeddings: {} values per row, {} filter rows, {} channel rows ({} parameters, \
             inside the predictor's)",
            e.width,
            e.filter_rows,
            e.channel_rows,
            (u64::from(e.filter_rows) + u64::from(e.channel_rows) + 2) * u64::from(e.width)
        );
    }
    let _ = writeln!(
        s,
        "bytes: predictor {}  permutations {}  passthrough {} ({} tensors)",
        r.predictor_bytes, r.permutation_bytes, r.passthrough_bytes, r.passthrough_tensors
    );
    if r.passthrough_f16_tensors > 0 {
        let _ = writeln!(
            s,
            "LOSSY passthrough: {} F32 tensors stored as binary16 (the decoded checkpoint differs from the source there)",
            r.passthrough_f16_tensors
        );
    }
    if r.passthrough_tuned_tensors > 0 {
        let _ = writeln!(
            s,
            "LOSSY passthrough: {} BN/FC tensors tuned in phase 2 (the decoded checkpoint differs from the source there)",
            r.passthrough_tuned_tensors
        );
    }
    if r.reordered_channel_groups > 0 {
        let _ = writeln!(
            s,
            "REORDERED channels: {} groups in a similar-weights order (--channel-order similar: the same function, but the decoded checkpoint's channels are not in the source's order)",
            r.reordered_channel_groups
        );
    }
    let _ = writeln!(s, "sections:");
    for sec in &r.sections {
        let _ = writeln!(
            s,
            "  {}  offset {:>9}  {:>9} bytes  {:<16} {}",
            sec.tag,
            sec.offset,
            sec.stored_bytes,
            sec.encoding,
            if sec.required { "required" } else { "optional" }
        );
    }
    let _ = writeln!(s, "layers ({}):", r.layers.len());
    for l in &r.layers {
        let _ = writeln!(
            s,
            "  {:>3}  {:<40} {:?}  {}",
            l.index, l.name, l.shape, l.permutation
        );
    }
    if !r.coded.is_empty() {
        let _ = writeln!(
            s,
            "coded convs ({}, {} bytes; codes instead of predicted):",
            r.coded.len(),
            r.coded_bytes
        );
        for t in &r.coded {
            let form = match t.rank {
                0 => "whole".to_string(),
                r => format!("rank {r} factors"),
            };
            let _ = writeln!(
                s,
                "  {:<40} {:?}  {}-bit, {form}, {} codes",
                t.name, t.shape, t.bits, t.codes
            );
        }
    }
    if let Some(m) = &r.metadata {
        if let Some(src) = m.get("source") {
            let _ = writeln!(s, "source: {src}");
        }
        if let Some(recipe) = m.get("recipe") {
            let _ = writeln!(s, "recipe: {recipe}");
        }
        if let Some(rounds) = m.get("rounds").and_then(|v| v.as_array()) {
            for rd in rounds {
                let _ = writeln!(
                    s,
                    "round {}: rmse vs target {:.4e}, vs original {:.4e}, {:.1} s",
                    rd["round"],
                    rd["rmse_vs_target"].as_f64().unwrap_or(f64::NAN),
                    rd["rmse_vs_original"].as_f64().unwrap_or(f64::NAN),
                    rd["train_seconds"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        if let Some(d) = m.get("distillation").filter(|d| !d.is_null()) {
            // Files before `--distill-cycles` record no cycles: one.
            let steps = match d["cycles"].as_u64() {
                Some(c) if c > 1 => format!("{c} cycles of {} steps", d["steps"]),
                _ => format!("{} steps", d["steps"]),
            };
            let _ = writeln!(
                s,
                "phase 2: {steps}, input {}, teacher {}, kept step {}, {:.1} s",
                d["input"],
                d["teacher"],
                d["kept_step"],
                d["seconds"].as_f64().unwrap_or(f64::NAN)
            );
        }
        if let Some(a) = m.get("accuracy") {
            let pct = |v: &serde_json::Value| {
                v.as_f64()
                    .map_or_else(|| "-".to_string(), |x| format!("{x:.2} %"))
            };
            // Files since session 26 say where the held-out images came from (`train` unless
            // `--held-out-from test`) and how many test images the test figure covers.
            let held_from = match a["held_out_split"].as_str() {
                Some("test") => " of the test split",
                _ => "",
            };
            let test_images = a["test_images"]
                .as_u64()
                .map_or_else(String::new, |n| format!(" ({n} images)"));
            let _ = writeln!(
                s,
                "accuracy: held-out {} ({} images{held_from}), test {}{test_images}; stored conv RMSE {:.4e} ({})",
                pct(&a["held_out"]),
                a["held_out_images"],
                pct(&a["test"]),
                a["rmse_vs_original"].as_f64().unwrap_or(f64::NAN),
                a["predictor_dtype"].as_str().unwrap_or("?")
            );
        }
        let pct = |v: &serde_json::Value| {
            v.as_f64()
                .map_or_else(|| "-".to_string(), |x| format!("{x:.2} %"))
        };
        if let Some(b) = m.get("baseline").filter(|b| b.is_object()) {
            let _ = writeln!(
                s,
                "plain {}: {:.2} % of the source, held-out {}, test {}",
                b["method"].as_str().unwrap_or("?"),
                b["percent"].as_f64().unwrap_or(f64::NAN),
                pct(&b["held_out"]),
                pct(&b["test"])
            );
        }
        if let Some(g) = m.get("goal").filter(|g| g.is_object()) {
            let budget = g["budget_bytes"]
                .as_u64()
                .map_or_else(String::new, |b| format!("size budget {b} bytes, "));
            let met = match g["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "missed",
                None => "not measured",
            };
            let _ = writeln!(
                s,
                "goal: {budget}held-out within {} points of the original's {} ({}): {met}",
                g["max_drop"],
                pct(&g["original_held_out"]),
                if g["enforced"].as_bool() == Some(true) {
                    "enforced"
                } else {
                    "aimed at"
                }
            );
        }
        for c in m
            .get("candidates")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                s,
                "candidate: hidden {}, PE L={}, {} (<= {} bytes), held-out {}, {:.0} s{}",
                c["hidden"],
                c["pe_levels"],
                c["predictor_dtype"].as_str().unwrap_or("?"),
                c["bound_bytes"],
                pct(&c["held_out"]),
                c["seconds"].as_f64().unwrap_or(f64::NAN),
                if c["chosen"].as_bool() == Some(true) {
                    "  <- chosen"
                } else {
                    ""
                }
            );
        }
        for n in m
            .get("notes")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
        {
            let _ = writeln!(s, "note: {}", n.as_str().unwrap_or("?"));
        }
        if let Some(enc) = m.get("encoder") {
            let _ = writeln!(s, "encoder: {enc}");
        }
    }
    s
}
