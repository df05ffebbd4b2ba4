//! What an encode reports: per round, phase 2, the stored result's accuracy, and the summary the
//! CLI prints. The same figures go into the file's `META`.

use crate::data::Augment;

/// Result of one progressive round, measured with the decoder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RoundReport {
    pub round: usize,
    /// RMSE of the decoded weights against this round's targets.
    pub rmse_vs_target: f64,
    /// RMSE of the decoded weights against the source checkpoint.
    pub rmse_vs_original: f64,
    pub train_seconds: f64,
    pub loss_history: Vec<(usize, f32)>,
    /// Held-out accuracy (%) of this round's decoded network, when data is given.
    pub held_out_accuracy: Option<f64>,
}

/// What `encode` produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncodeReport {
    pub source_bytes: u64,
    pub nern_bytes: u64,
    pub predicted_tensors: usize,
    pub passthrough_tensors: usize,
    pub predicted_parameters: u64,
    pub predictor_parameters: u64,
    pub permutation_seconds: f64,
    pub total_seconds: f64,
    pub rounds: Vec<RoundReport>,
    pub distill: Option<DistillReport>,
    pub accuracy: AccuracyReport,
    /// Plain int4 per-channel quantisation of the same checkpoint, for comparison.
    pub baseline: BaselineReport,
    pub device: String,
}

/// What plain per-channel quantisation of the same checkpoint gives ([`crate::baseline`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct BaselineReport {
    pub method: String,
    pub bytes: u64,
    /// Percent of the source file.
    pub percent: f64,
    /// Accuracy (%) on the same held-out images as the file's figure.
    pub held_out: Option<f64>,
    /// Accuracy (%) on the test split (only with `test_eval`).
    pub test: Option<f64>,
}

/// RMSE over all values of all layers.
pub fn rmse(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            let d = f64::from(*p) - f64::from(*q);
            sum += d * d;
        }
        n += x.len();
    }
    (sum / n.max(1) as f64).sqrt()
}

/// Accuracy figures recorded in the metadata.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccuracyReport {
    /// Storage dtype of the predictor; the figures here are of the stored weights.
    pub predictor_dtype: &'static str,
    /// Conv RMSE of the stored predictor against the source.
    pub rmse_vs_original: f64,
    pub held_out_images: Option<usize>,
    /// Held-out accuracy (%) of the stored predictor.
    pub held_out: Option<f64>,
    /// Test accuracy (%) of the stored predictor (only with `test_eval`).
    pub test: Option<f64>,
    /// Round whose predictor was kept (phase 1).
    pub kept_round: usize,
}

/// What phase 2 did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DistillReport {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup: usize,
    pub temperature: f64,
    pub recon_weight: f64,
    pub input: String,
    pub teacher: String,
    pub augment: Augment,
    pub loss_history: Vec<(usize, f32)>,
    pub held_out_history: Vec<(usize, f64)>,
    pub kept_step: usize,
    pub rmse_vs_original: f64,
    pub seconds: f64,
}

impl EncodeReport {
    /// The human summary `nernc encode` prints (source and output named by the caller).
    pub fn summary(&self, input: &str, output: &str) -> String {
        let mut s = format!(
            "{input} -> {output}: {} bytes ({:.2} % of {} bytes), {} conv tensors predicted, {:.1} s on {}\n",
            self.nern_bytes,
            100.0 * self.nern_bytes as f64 / self.source_bytes as f64,
            self.source_bytes,
            self.predicted_tensors,
            self.total_seconds,
            self.device
        );
        let acc = |h: Option<f64>, t: Option<f64>| match (h, t) {
            (Some(h), Some(t)) => format!(", held-out {h:.2} %, test {t:.2} %"),
            (Some(h), None) => format!(", held-out {h:.2} %"),
            (None, Some(t)) => format!(", test {t:.2} %"),
            (None, None) => ", accuracy not measured (no data)".into(),
        };
        let b = &self.baseline;
        s += &format!(
            "  this file: {:.2} % of the source{}\n  plain {}: {:.2} % of the source{}\n",
            100.0 * self.nern_bytes as f64 / self.source_bytes as f64,
            acc(self.accuracy.held_out, self.accuracy.test),
            b.method,
            b.percent,
            acc(b.held_out, b.test)
        );
        for r in &self.rounds {
            s += &format!(
                "  round {}: conv RMSE vs target {:.4e}, vs original {:.4e} ({:.1} s)\n",
                r.round, r.rmse_vs_target, r.rmse_vs_original, r.train_seconds
            );
        }
        s
    }
}
