//! What an encode reports: per round, phase 2, the stored result's accuracy, and the summary the
//! CLI prints. The same figures go into the file's `META`.

use crate::data::Augment;

/// A loss history with each loss to 4 significant digits: its shape is what a reader of `META`
/// wants, and the 15-digit decimal forms of f32 values took a fifth of a small file's `META`
/// (ResNet-20 at 8 %: 1,925 -> 1,568 bytes compressed with every float so rounded).
fn four_digits<S: serde::Serializer>(h: &[(usize, f32)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(h.len()))?;
    for &(step, loss) in h {
        let short: f64 = format!("{loss:.3e}").parse().unwrap_or(f64::from(loss));
        seq.serialize_element(&(step, short))?;
    }
    seq.end()
}

/// Result of one progressive round, measured with the decoder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RoundReport {
    pub round: usize,
    /// RMSE of the decoded weights against this round's targets.
    pub rmse_vs_target: f64,
    /// RMSE of the decoded weights against the source checkpoint.
    pub rmse_vs_original: f64,
    pub train_seconds: f64,
    #[serde(serialize_with = "four_digits")]
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
    /// Conv tensors stored as codes (`--code`, format 1.8).
    pub coded_tensors: usize,
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
    /// What was asked (size budget, accuracy drop) and whether it was met.
    pub goal: GoalReport,
    /// The predictors a size budget measured before the full run (empty without a budget).
    pub candidates: Vec<CandidateReport>,
    /// What the encode did differently from what was asked, and why.
    pub notes: Vec<String>,
    /// How `--time-limit` sized the schedule (absent without one).
    pub time_limit: Option<TimeLimitReport>,
    pub device: String,
}

/// What `--time-limit` measured and chose.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TimeLimitReport {
    pub limit_seconds: f64,
    /// Seconds left when the schedule was fixed (after loading, permutations, calibration).
    pub left_seconds: f64,
    pub calibration_seconds: f64,
    /// Measured seconds: per phase-1 step, per phase-2 step without the teacher, per teacher
    /// image, per evaluated image.
    pub costs: crate::encode::clock::Costs,
    /// Phase-1 and phase-2 steps asked for (or defaulted), and the ones run.
    pub asked_steps: (usize, usize),
    pub steps: (usize, usize),
    /// What the chosen steps were planned to take.
    pub planned_seconds: f64,
}

/// One predictor shape a size budget measured on a short schedule.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CandidateReport {
    pub hidden: u32,
    pub pe_levels: u32,
    pub predictor_dtype: &'static str,
    /// Upper bound of the file's size with this predictor.
    pub bound_bytes: u64,
    pub phase1_steps: usize,
    pub distill_steps: usize,
    pub held_out: Option<f64>,
    pub rmse_vs_original: f64,
    pub seconds: f64,
    pub chosen: bool,
}

/// The goal of an encode and how far the result got.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GoalReport {
    /// Allowed held-out drop against the original, in points.
    pub max_drop: f64,
    /// Whether a miss stops the encode (`--max-drop` given) or is only reported (the default aim).
    pub enforced: bool,
    /// The size budget in bytes (`--target-size`).
    pub budget_bytes: Option<u64>,
    /// The original's accuracy on the same held-out images.
    pub original_held_out: Option<f64>,
    /// Original minus result, held-out points (positive: the result is worse).
    pub drop: Option<f64>,
    /// `None` when not measured (no data).
    pub met: Option<bool>,
}

impl GoalReport {
    pub fn new(
        opts: &super::options::EncodeOptions,
        budget: Option<u64>,
        original: Option<f64>,
        reached: Option<f64>,
    ) -> Self {
        let drop = original.zip(reached).map(|(o, r)| o - r);
        // Held-out accuracies are multiples of 100 / images: compare with a little slack so
        // that a drop of exactly max_drop counts as met.
        let met = drop.map(|d| d <= opts.max_drop.points + 1e-9);
        GoalReport {
            max_drop: opts.max_drop.points,
            enforced: opts.max_drop.enforced,
            budget_bytes: budget,
            original_held_out: original,
            drop,
            met,
        }
    }

    /// The message of an enforced goal the result missed.
    pub fn enforced_miss(&self) -> Option<String> {
        if !self.enforced || self.met != Some(false) {
            return None;
        }
        let (o, d) = (self.original_held_out?, self.drop?);
        let size = match self.budget_bytes {
            Some(b) => format!(" inside {b} bytes"),
            None => String::new(),
        };
        Some(format!(
            "the best predictor{size} reached {:.2} % held-out against the original's {o:.2} % \
             (-{d:.2} points, --max-drop {}); nothing written. A larger budget, --hidden or \
             --distill-steps may reach it",
            o - d,
            self.max_drop
        ))
    }

    /// One line for the summary.
    fn line(&self) -> String {
        match (self.original_held_out, self.drop, self.met) {
            (Some(o), Some(d), Some(met)) => format!(
                "  goal: within {} points of the original's held-out {o:.2} %: {} ({:+.2} points)\n",
                self.max_drop,
                if met { "met" } else { "MISSED" },
                -d
            ),
            _ => "  goal: accuracy not measured (no data); the file's accuracy is unknown\n".into(),
        }
    }
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
    /// Conv RMSE of the stored predictor against the source (the predicted convs).
    pub rmse_vs_original: f64,
    /// RMSE of the coded convs as stored and decoded against the source (`--code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coded_rmse_vs_original: Option<f64>,
    pub held_out_images: Option<usize>,
    /// The split the held-out images come from: `train` (the default) or `test`
    /// (`--held-out-from test`: the test split's first images).
    pub held_out_split: Option<&'static str>,
    /// Held-out accuracy (%) of the stored predictor.
    pub held_out: Option<f64>,
    /// Test accuracy (%) of the stored predictor (only with `test_eval`), on the test images not
    /// held out.
    pub test: Option<f64>,
    /// Test images the test figure is measured on.
    pub test_images: Option<usize>,
    /// Round whose predictor was kept (phase 1).
    pub kept_round: usize,
}

/// What phase 2 did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DistillReport {
    /// Steps per cycle.
    pub steps: usize,
    /// Cycles of `steps` steps (`--distill-cycles`); the histories count steps from the first
    /// cycle's start.
    pub cycles: usize,
    pub batch: usize,
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup: usize,
    pub temperature: f64,
    pub recon_weight: f64,
    pub label_weight: f64,
    pub feature_weight: f64,
    pub input: String,
    pub teacher: String,
    pub augment: Augment,
    #[serde(serialize_with = "four_digits")]
    pub loss_history: Vec<(usize, f32)>,
    pub held_out_history: Vec<(usize, f64)>,
    pub kept_step: usize,
    pub rmse_vs_original: f64,
    pub seconds: f64,
    /// Images the teacher ran on: steps x batch, less the un-augmented training images whose
    /// logits were cached from an earlier step.
    pub teacher_images: usize,
    /// Held-out checks whose state's file was over `--target-size`, so not kept while any
    /// state within it was seen (trained codes compress differently from the sized ones).
    pub over_budget: usize,
    /// The most bytes such a state's file was over the budget by.
    pub over_budget_bytes: u64,
}

impl EncodeReport {
    /// The human summary `nernc encode` prints (source and output named by the caller).
    pub fn summary(&self, input: &str, output: &str) -> String {
        let mut s = format!(
            "{input} -> {output}: {} bytes ({:.2} % of {} bytes), {} conv tensors predicted{}, {:.1} s on {}\n",
            self.nern_bytes,
            100.0 * self.nern_bytes as f64 / self.source_bytes as f64,
            self.source_bytes,
            self.predicted_tensors,
            match (self.coded_tensors, self.accuracy.coded_rmse_vs_original) {
                (0, _) => String::new(),
                (n, Some(e)) => format!(" and {n} coded (weight RMSE {e:.3e} against the source)"),
                (n, None) => format!(" and {n} coded"),
            },
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
        if self.accuracy.held_out_split == Some("test") {
            s += &format!(
                "  held-out: the test split's first {} images (--held-out-from test){}\n",
                self.accuracy.held_out_images.unwrap_or(0),
                self.accuracy
                    .test_images
                    .map_or_else(String::new, |n| format!(
                        "; test: the other {n} (`nernc eval --skip` repeats it)"
                    ))
            );
        }
        for n in &self.notes {
            s += &format!("  note: {n}\n");
        }
        s += &self.goal.line();
        if self.goal.met == Some(false) && self.accuracy.held_out_split != Some("test") {
            // Measured: ResNet-20's default loses 0.60 held-out and 0.03 test points, plain int4
            // 0.56 and 0.15: the original has learned the training images it is held against.
            s += "  (held-out images come from the training split, which the original learned: \
                  drops there run larger than on unseen images";
            s += if self.accuracy.test.is_some() {
                "; the test figure above is on unseen images)\n"
            } else {
                "; --test-eval measures the test split)\n"
            };
        }
        if let Some(t) = &self.time_limit {
            s += &format!(
                "  time limit: {:.0} s, {:.0} s left after loading and {:.1} s of timing; planned \
                 {:.0} s for {} phase-1 and {} phase-2 steps; the encode took {:.0} s\n",
                t.limit_seconds,
                t.left_seconds,
                t.calibration_seconds,
                t.planned_seconds,
                t.steps.0,
                t.steps.1,
                self.total_seconds
            );
        }
        if let Some(b) = self.goal.budget_bytes {
            s += &format!("  size budget: {b} bytes, file {} bytes\n", self.nern_bytes);
        }
        for c in &self.candidates {
            s += &format!(
                "  candidate hidden {} PE L={} {} (<= {} bytes): held-out {}, RMSE {:.4e}, {:.0} s{}\n",
                c.hidden,
                c.pe_levels,
                c.predictor_dtype,
                c.bound_bytes,
                c.held_out.map_or("-".into(), |h| format!("{h:.2} %")),
                c.rmse_vs_original,
                c.seconds,
                if c.chosen { "  <- chosen" } else { "" }
            );
        }
        for r in &self.rounds {
            s += &format!(
                "  round {}: conv RMSE vs target {:.4e}, vs original {:.4e} ({:.1} s)\n",
                r.round, r.rmse_vs_target, r.rmse_vs_original, r.train_seconds
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_histories_are_written_to_four_significant_digits() {
        let r = RoundReport {
            round: 1,
            rmse_vs_target: 0.5,
            rmse_vs_original: 0.5,
            train_seconds: 1.0,
            loss_history: vec![(0, 0.417_627_2), (40, 5.151_672e-2), (80, f32::NAN)],
            held_out_accuracy: None,
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(
            j["loss_history"],
            serde_json::json!([[0, 0.4176], [40, 0.05152], [80, null]])
        );
    }
}
