//! `--time-limit`: what the rest of an encode costs on this machine, and the step counts that
//! fit. The costs are calibrated by running a few real steps of each phase before training; the
//! schedule is then fixed (see [`Plan::fit`] for which phase gives way first) and training is
//! deterministic for those counts, so a rerun with `--steps N --distill-steps M` gives the same
//! file.

use crate::error::{Error, Result};

/// Share of the time left that the planned work may fill: the calibration is a few steps on a
/// machine whose speed moves (up to 35 % between minutes on the development VM). Measured on the
/// demo (ResNet-20, 2 threads): Zen 1, timing 2 + 12 and 1 + 4 steps, 476 s planned and 536 s
/// taken; Emerald Rapids, timing 5 + 45 and 2 + 8 steps, 467 s planned and 484 s taken.
pub const SAFETY: f64 = 0.9;
/// Fewest phase-1 steps a limit may leave (an explicit smaller `--steps` is kept).
pub const MIN_PHASE1_STEPS: usize = 50;
/// Fewest phase-2 steps a limit may leave.
pub const MIN_DISTILL_STEPS: usize = 10;

/// Seconds per unit of work, measured on this machine with this predictor and network.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Costs {
    /// One phase-1 step (a batch of kernels, forward, backward, Adam).
    pub phase1_step: f64,
    /// One phase-2 step without the teacher's forward (predictor, student forward and
    /// backward, Adam).
    pub distill_step: f64,
    /// The teacher's forward on one image.
    pub teacher_image: f64,
    /// The decoded student's forward on one held-out or test image.
    pub eval_image: f64,
}

/// What the rest of the encode will do, apart from the two step counts being chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Phase-1 rounds (0 with `--resume`: phase 1 is skipped).
    pub rounds: usize,
    /// Phase-1 steps per round as asked (or defaulted): the most a limit leaves.
    pub phase1_steps: usize,
    /// Phase-2 steps per cycle as asked (0: no phase 2).
    pub distill_steps: usize,
    /// Phase-2 cycles (each its own cosine schedule and evaluations; one teacher-logit cache).
    pub distill_cycles: usize,
    pub distill_batch: usize,
    /// Images the teacher-logit cache draws from (`None`: no cache, the teacher runs on every
    /// image of every step: noise or augmented images).
    pub cached_pool: Option<usize>,
    /// `--eval-every` when given.
    pub eval_every: Option<usize>,
    /// Held-out images (0 without data: no selection).
    pub held_out_images: usize,
    /// Test images measured after training (0 without `--test-eval`).
    pub test_images: usize,
    /// Budget candidates measured on the short schedule before the full run (0 or >= 2).
    pub probes: usize,
    /// A budget's single shape is trained on the short phase 1 to measure its codes' size.
    pub size_probe: bool,
}

/// Phase-2 evaluation steps: every `every` steps from `from` on, and the last step. By default a
/// tenth of the steps apart, from the middle on (measured: the kept step was in the last fifth
/// in every default run); with `--eval-every`, every multiple from the start.
pub fn distill_evals(steps: usize, explicit_every: Option<usize>) -> (usize, usize) {
    match explicit_every {
        Some(e) => (e.max(1), 0),
        None => ((steps / 10).max(1), steps / 2),
    }
}

/// The short schedule budget candidates are compared on: a sixth of phase 1, a twentieth of
/// phase 2.
pub fn probe_steps(phase1_steps: usize, distill_steps: usize) -> (usize, usize) {
    ((phase1_steps / 6).max(20), (distill_steps / 20).max(5))
}

impl Plan {
    /// Seconds of one training run (phase 1 rounds, `cycles` phase-2 cycles of `s2` steps,
    /// their held-out evaluations).
    fn train_seconds(&self, c: &Costs, rounds: usize, s1: usize, s2: usize, cycles: usize) -> f64 {
        let eval = self.held_out_images as f64 * c.eval_image;
        let mut t = rounds as f64 * (s1 as f64 * c.phase1_step + eval);
        if rounds == 0 {
            // A resumed predictor is measured once before phase 2.
            t += eval;
        }
        if s2 > 0 && cycles > 0 {
            let b = self.distill_batch as f64;
            let draws = (cycles * s2) as f64 * b;
            // One teacher-logit cache serves every cycle.
            let teacher = match self.cached_pool {
                // Expected distinct images among the draws (with replacement).
                Some(n) => {
                    let n = n.max(1) as f64;
                    n * (1.0 - (-draws / n).exp())
                }
                None => draws,
            };
            t += teacher * c.teacher_image;
            let mut cycle = s2 as f64 * c.distill_step;
            if self.held_out_images > 0 {
                let (every, from) = distill_evals(s2, self.eval_every);
                let evals = (1..=s2)
                    .filter(|&d| (d % every == 0 || d == s2) && d >= from)
                    .count();
                cycle += evals as f64 * eval;
                // Step 0 is measured once: a later cycle starts from a measured state.
                t += eval;
            }
            t += cycles as f64 * cycle;
        }
        t
    }

    /// Seconds of everything after calibration for step counts `s1`, `s2`: the candidates'
    /// short runs, the full run, the test and int4-baseline evaluations.
    pub fn seconds(&self, c: &Costs, s1: usize, s2: usize) -> f64 {
        let (p1, p2) = probe_steps(s1, s2);
        let probe = if self.probes > 1 {
            let p2 = if s2 > 0 { p2 } else { 0 };
            self.probes as f64 * self.train_seconds(c, 1, p1, p2, 1)
        } else if self.size_probe {
            self.train_seconds(c, 1, p1, 0, 0)
        } else {
            0.0
        };
        let finals = (2 * self.test_images + self.held_out_images) as f64 * c.eval_image;
        probe + self.train_seconds(c, self.rounds, s1, s2, self.distill_cycles) + finals
    }

    /// The step counts to run inside `seconds_left` ([`SAFETY`] of it): phase 2 is shortened
    /// first, down to a fifth of its steps; then phase 1, down to [`MIN_PHASE1_STEPS`]; then
    /// phase 2 again, down to [`MIN_DISTILL_STEPS`]. Phase 1 goes last because its steps are
    /// cheap and a short phase 1 costs the most accuracy (measured on ResNet-20 in about the same
    /// time: 2,200 + 130 steps 93.48 % test, 1,456 + 180 92.48 %, 700 + 230 81.41 %). Asked-for
    /// counts are never exceeded; an error when even the fewest steps do not fit.
    pub fn fit(&self, c: &Costs, seconds_left: f64) -> Result<(usize, usize)> {
        if seconds_left <= 0.0 {
            return Err(Error::Budget(format!(
                "the time limit was spent {:.1} s before training could begin (loading, \
                 permutations, timing); nothing trained",
                -seconds_left
            )));
        }
        let room = SAFETY * seconds_left;
        let fits = |s1: usize, s2: usize| self.seconds(c, s1, s2) <= room;
        let (a1, a2) = (self.phase1_steps, self.distill_steps);
        let min1 = MIN_PHASE1_STEPS.min(a1);
        let min2 = MIN_DISTILL_STEPS.min(a2);
        let floor2 = (a2 / DISTILL_FLOOR_SHARE).max(min2);
        if fits(a1, a2) {
            return Ok((a1, a2));
        }
        if fits(a1, floor2) {
            return Ok((a1, largest(floor2, a2, |s2| fits(a1, s2))));
        }
        if fits(min1, floor2) {
            return Ok((largest(min1, a1, |s1| fits(s1, floor2)), floor2));
        }
        if fits(min1, min2) {
            return Ok((min1, largest(min2, floor2, |s2| fits(min1, s2))));
        }
        Err(Error::Budget(format!(
            "the time limit leaves {seconds_left:.0} s; even {min1} phase-1 and {min2} phase-2 \
             steps would take about {:.0} s here (measured: {:.3} s per phase-1 step, {:.3} s \
             per phase-2 step, {:.2} ms per evaluated image)",
            self.seconds(c, min1, min2) / SAFETY,
            c.phase1_step,
            c.distill_step + self.distill_batch as f64 * c.teacher_image,
            c.eval_image * 1e3
        )))
    }
}

/// Phase 2 keeps at least this share (1 / n) of its steps before phase 1 is shortened.
pub const DISTILL_FLOOR_SHARE: usize = 5;

/// The largest `s` in `lo..=hi` with `ok(s)`, given `ok(lo)` (binary search: the cost grows
/// with the steps, to the held-out evaluations' rounding).
fn largest(lo: usize, hi: usize, ok: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (lo, hi + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Parses a duration: seconds (`600`, `600s`), minutes (`9m`, `1.5m`) or hours (`2h`).
pub fn parse_duration(s: &str) -> Result<f64> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * unit <= 1e7 => Ok(v * unit),
        _ => Err(Error::InvalidArgument(format!(
            "--time-limit {s:?}: expected a positive duration such as 600, 600s, 9m or 2h"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            phase1_step: 0.1,
            distill_step: 1.0,
            teacher_image: 0.002,
            eval_image: 0.0017,
        }
    }

    fn plan() -> Plan {
        Plan {
            rounds: 1,
            phase1_steps: 3000,
            distill_steps: 400,
            distill_cycles: 1,
            distill_batch: 128,
            cached_pool: Some(55_000),
            eval_every: None,
            held_out_images: 5000,
            test_images: 10_000,
            probes: 0,
            size_probe: false,
        }
    }

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("600").unwrap(), 600.0);
        assert_eq!(parse_duration("600s").unwrap(), 600.0);
        assert_eq!(parse_duration("9m").unwrap(), 540.0);
        assert_eq!(parse_duration("1.5m").unwrap(), 90.0);
        assert_eq!(parse_duration("2h").unwrap(), 7200.0);
        for bad in ["", "0", "-5", "m", "10x", "nan", "inf", "1e9h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_default_plan_adds_up_its_parts() {
        let (p, c) = (plan(), costs());
        // Evaluations: step 0, then 200, 240, ..., 400 (from the middle, every 40): 1 + 6.
        let eval = 5000.0 * c.eval_image;
        let distinct = 55_000.0 * (1.0 - (-400.0f64 * 128.0 / 55_000.0).exp());
        let want = 3000.0 * 0.1
            + eval
            + 400.0 * 1.0
            + distinct * c.teacher_image
            + 7.0 * eval
            + 25_000.0 * c.eval_image;
        assert!((p.seconds(&c, 3000, 400) - want).abs() < 1e-9);
    }

    #[test]
    fn a_generous_limit_keeps_the_asked_steps() {
        let (p, c) = (plan(), costs());
        let need = p.seconds(&c, 3000, 400);
        assert_eq!(p.fit(&c, need / SAFETY + 1.0).unwrap(), (3000, 400));
    }

    #[test]
    fn a_tight_limit_shortens_phase_two_first() {
        let (p, c) = (plan(), costs());
        let left = 0.75 * p.seconds(&c, 3000, 400);
        let (s1, s2) = p.fit(&c, left).unwrap();
        assert_eq!(s1, 3000);
        assert!((80..400).contains(&s2), "{s2}");
        assert!(p.seconds(&c, s1, s2) <= SAFETY * left);
        // And not needlessly short: 3 % more phase-2 steps would not fit.
        let more = (s2 as f64 * 1.03).round() as usize;
        assert!(p.seconds(&c, s1, more) > SAFETY * left);
    }

    #[test]
    fn a_tighter_limit_then_shortens_phase_one_then_phase_two() {
        let (p, c) = (plan(), costs());
        let left = 0.3 * p.seconds(&c, 3000, 400);
        let (s1, s2) = p.fit(&c, left).unwrap();
        assert_eq!(s2, 80, "phase 2 at its floor, a fifth");
        assert!((MIN_PHASE1_STEPS..3000).contains(&s1), "{s1}");
        assert!(p.seconds(&c, s1, s2) <= SAFETY * left);
        assert!(p.seconds(&c, s1 + 100, s2) > SAFETY * left);
        // With room for no more than the fewest phase-1 steps, phase 2 goes below its floor.
        let left = (p.seconds(&c, MIN_PHASE1_STEPS, 40)) / SAFETY;
        let (s1, s2) = p.fit(&c, left).unwrap();
        assert_eq!(s1, MIN_PHASE1_STEPS);
        assert!((MIN_DISTILL_STEPS..80).contains(&s2), "{s2}");
    }

    #[test]
    fn an_impossible_limit_is_an_error_naming_the_costs() {
        let (p, c) = (plan(), costs());
        let e = p.fit(&c, 5.0).unwrap_err().to_string();
        assert!(
            e.contains("time limit") && e.contains("per phase-1 step"),
            "{e}"
        );
    }

    #[test]
    fn probes_resumes_and_uncached_teachers_count() {
        let c = costs();
        let base = plan();
        let probed = Plan {
            probes: 3,
            ..plan()
        };
        let (p1, p2) = probe_steps(3000, 400);
        assert_eq!((p1, p2), (500, 20));
        let extra = probed.seconds(&c, 3000, 400) - base.seconds(&c, 3000, 400);
        assert!((extra - 3.0 * base.train_seconds(&c, 1, 500, 20, 1)).abs() < 1e-9);
        let resumed = Plan {
            rounds: 0,
            ..plan()
        };
        assert!(resumed.seconds(&c, 3000, 400) < base.seconds(&c, 3000, 400) - 299.0);
        let noise = Plan {
            cached_pool: None,
            held_out_images: 0,
            test_images: 0,
            ..plan()
        };
        let want = 300.0 + 400.0 * (1.0 + 128.0 * c.teacher_image);
        assert!((noise.seconds(&c, 3000, 400) - want).abs() < 1e-9);
        // Two cycles run phase 2 twice: its steps and evaluations, but not the step-0
        // measurement (a later cycle starts from a measured state); the teacher runs only on
        // images the first cycle did not draw (one cache for both).
        let two = Plan {
            distill_cycles: 2,
            ..plan()
        };
        let one_cycle = base.seconds(&c, 3000, 400) - base.seconds(&c, 3000, 0);
        let eval = 5000.0 * c.eval_image;
        let distinct = |draws: f64| 55_000.0 * (1.0 - (-draws / 55_000.0).exp());
        let (d1, d2) = (distinct(400.0 * 128.0), distinct(800.0 * 128.0));
        let extra = two.seconds(&c, 3000, 400) - base.seconds(&c, 3000, 400);
        let twice = one_cycle - eval - d1 * c.teacher_image + (d2 - d1) * c.teacher_image;
        assert!((extra - twice).abs() < 1e-9, "{extra} {twice}");
        let noise2 = Plan {
            distill_cycles: 2,
            ..noise
        };
        assert!(
            (noise2.seconds(&c, 3000, 400) - (want + 400.0 * (1.0 + 128.0 * c.teacher_image)))
                .abs()
                < 1e-9
        );
        // Phase 1 only: no phase-2 steps appear.
        let p1_only = Plan {
            distill_steps: 0,
            ..plan()
        };
        assert_eq!(p1_only.fit(&c, 1e6).unwrap(), (3000, 0));
    }
}
