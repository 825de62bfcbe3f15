//! Learning-rate schedules: constant, cosine, and warmup-stable-decay (the paper's).

use serde::{Deserialize, Serialize};

/// The learning rate as a function of the step. Every schedule warms up linearly first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// Peak rate after warmup.
    Constant,
    /// Cosine decay from the peak to zero at the last step.
    Cosine,
    /// Warmup-stable-decay: the peak until the last `decay_fraction` of training, then linear to 0.
    Wsd,
}

impl crate::choice::Choice for LrSchedule {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("constant", LrSchedule::Constant),
        ("cosine", LrSchedule::Cosine),
        ("wsd", LrSchedule::Wsd),
    ];
}

/// The rate at `step` (0-based) of `total` steps.
pub fn learning_rate(
    schedule: LrSchedule,
    peak: f64,
    step: u64,
    total: u64,
    warmup: u64,
    decay_fraction: f64,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let total = total.max(warmup + 1);
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Cosine => {
            let progress = (step - warmup) as f64 / (total - warmup) as f64;
            peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        }
        LrSchedule::Wsd => {
            let decay_steps = ((total as f64) * decay_fraction).round() as u64;
            let decay_start = total - decay_steps.min(total - warmup);
            if step < decay_start {
                peak
            } else {
                peak * (total - step) as f64 / (total - decay_start) as f64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_follow_their_shape() {
        let lr = |s, step| learning_rate(s, 1.0, step, 100, 10, 0.2);
        for s in [LrSchedule::Constant, LrSchedule::Cosine, LrSchedule::Wsd] {
            assert!((lr(s, 0) - 0.1).abs() < 1e-12);
            assert!((lr(s, 9) - 1.0).abs() < 1e-12);
        }
        assert_eq!(lr(LrSchedule::Constant, 99), 1.0);
        assert!((lr(LrSchedule::Cosine, 55) - 0.5).abs() < 1e-12);
        assert!(lr(LrSchedule::Cosine, 99) < 0.01);
        assert_eq!(lr(LrSchedule::Wsd, 79), 1.0);
        assert!((lr(LrSchedule::Wsd, 90) - 0.5).abs() < 1e-12);
        assert!(lr(LrSchedule::Wsd, 99) > 0.0);
    }
}
