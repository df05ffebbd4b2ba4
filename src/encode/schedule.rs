//! The learning-rate schedule of both training phases: cosine decay per step from the peak to a
//! floor (the reference's schedule).

/// Phase 1 decays to 1e-6 (the reference).
pub const PHASE1_FLOOR: f64 = 1e-6;
/// Phase 2 starts at a rate 40x lower and decays to 1e-7.
pub const PHASE2_FLOOR: f64 = 1e-7;

/// Learning rate at `step` of `steps`: `floor + (peak - floor) (1 + cos(pi step / steps)) / 2`,
/// with the floor capped at the peak.
pub fn cosine(peak: f64, floor: f64, step: usize, steps: usize) -> f64 {
    let min = floor.min(peak);
    let t = step as f64 / steps.max(1) as f64;
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// `lr` scaled by a linear warm-up over the first `warmup` steps (`(step + 1) / warmup`, capped at
/// 1; no scaling when `warmup` is 0).
pub fn warmed_up(lr: f64, step: usize, warmup: usize) -> f64 {
    if warmup == 0 {
        return lr;
    }
    lr * ((step + 1) as f64 / warmup as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_peak_ends_at_the_floor_and_decreases() {
        assert_eq!(cosine(2e-3, PHASE1_FLOOR, 0, 100), 2e-3);
        assert!((cosine(2e-3, PHASE1_FLOOR, 100, 100) - 1e-6).abs() < 1e-18);
        let mid = cosine(2e-3, PHASE1_FLOOR, 50, 100);
        assert!((mid - (2e-3 + 1e-6) / 2.0).abs() < 1e-15);
        let lrs: Vec<f64> = (0..=100).map(|s| cosine(1.0, 0.0, s, 100)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        // A peak below the floor stays constant.
        assert_eq!(cosine(1e-8, PHASE2_FLOOR, 7, 10), 1e-8);
    }

    #[test]
    fn warm_up_ramps_linearly_then_leaves_the_rate_alone() {
        assert_eq!(warmed_up(4.0, 0, 4), 1.0);
        assert_eq!(warmed_up(4.0, 2, 4), 3.0);
        assert_eq!(warmed_up(4.0, 3, 4), 4.0);
        assert_eq!(warmed_up(4.0, 50, 4), 4.0);
        assert_eq!(warmed_up(4.0, 0, 0), 4.0);
    }
}
