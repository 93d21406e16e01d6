//! Learning-rate schedules: a base rate, an optional linear warm-up, then a decay.

/// How the rate decays after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Steps between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine from the base rate to `min_lr` over `total` steps.
    Cosine {
        /// Steps of the whole schedule.
        total: usize,
        /// Final rate.
        min_lr: f64,
    },
}

/// How the warm-up ramps over its `w` steps (step `s` counts from 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// `base·(s+1)/w`: the base rate at the warm-up's last step.
    #[default]
    Linear,
    /// `base·(s+1)/(w+1)`: nanoGPT's ramp (the W11 recipe's).
    NanoGpt,
}

/// A base rate with warm-up and decay.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// The base learning rate.
    pub base_lr: f64,
    /// The decay after warm-up.
    pub schedule: Schedule,
    /// Steps of linear warm-up towards `base_lr`.
    pub warmup: usize,
    /// The warm-up's ramp.
    #[serde(default)]
    pub warmup_shape: Warmup,
}

impl LrSchedule {
    /// A constant rate.
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            base_lr: lr,
            schedule: Schedule::Constant,
            warmup: 0,
            warmup_shape: Warmup::Linear,
        }
    }

    /// The steps from the first to the end of the decay (warm-up and cosine); `None`
    /// for a schedule without an end.
    pub fn span(&self) -> Option<usize> {
        match self.schedule {
            Schedule::Cosine { total, .. } => Some(self.warmup + total),
            _ => None,
        }
    }

    /// The rate for step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            let span = match self.warmup_shape {
                Warmup::Linear => self.warmup,
                Warmup::NanoGpt => self.warmup + 1,
            };
            return self.base_lr * (step + 1) as f64 / span as f64;
        }
        let s = step - self.warmup;
        match self.schedule {
            Schedule::Constant => self.base_lr,
            Schedule::Step { every, gamma } => self.base_lr * gamma.powi((s / every.max(1)) as i32),
            Schedule::Cosine { total, min_lr } => {
                let t = (s as f64 / total.max(1) as f64).min(1.0);
                min_lr + 0.5 * (self.base_lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(LrSchedule::constant(0.1).lr_at(1000), 0.1);
        let s = LrSchedule {
            base_lr: 1.0,
            schedule: Schedule::Step {
                every: 10,
                gamma: 0.5,
            },
            warmup: 0,
            warmup_shape: Warmup::Linear,
        };
        assert_eq!((s.lr_at(9), s.lr_at(10), s.lr_at(25)), (1.0, 0.5, 0.25));
        let c = LrSchedule {
            base_lr: 1.0,
            schedule: Schedule::Cosine {
                total: 100,
                min_lr: 0.0,
            },
            warmup: 4,
            warmup_shape: Warmup::Linear,
        };
        assert_eq!((c.lr_at(0), c.lr_at(3)), (0.25, 1.0));
        assert!((c.lr_at(54) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(104).abs() < 1e-12);
        // a non-zero floor: cosine from base to min_lr over `total` steps after warm-up
        let m = LrSchedule {
            base_lr: 1.0,
            schedule: Schedule::Cosine {
                total: 100,
                min_lr: 0.1,
            },
            warmup: 4,
            warmup_shape: Warmup::Linear,
        };
        assert_eq!((m.lr_at(0), m.lr_at(3)), (0.25, 1.0));
        assert!((m.lr_at(4) - 1.0).abs() < 1e-12, "{}", m.lr_at(4));
        // the midpoint is the mean of base and min
        assert!((m.lr_at(54) - 0.55).abs() < 1e-12, "{}", m.lr_at(54));
        // a quarter of the way: min + (base − min)·(1 + cos(π/4))/2
        let quarter = 0.1 + 0.9 * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        assert!((m.lr_at(29) - quarter).abs() < 1e-12, "{}", m.lr_at(29));
        // the end equals min_lr, and it stays there
        assert!((m.lr_at(104) - 0.1).abs() < 1e-12, "{}", m.lr_at(104));
        assert!((m.lr_at(1000) - 0.1).abs() < 1e-12, "{}", m.lr_at(1000));
        // decreasing from base to min_lr, never below it
        let rates: Vec<f64> = (4..=104).map(|i| m.lr_at(i)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]), "{rates:?}");
        assert!(rates.iter().all(|&r| r >= 0.1 - 1e-12));
    }

    #[test]
    fn the_w11_recipe_schedule_is_nanogpts() {
        // bench/anchors/w11_char_gpt.py: lr_at(step) for LR 1e-3, MIN_LR 1e-4, WARMUP
        // 100, DECAY 2000, transcribed
        let lr_at = |step: usize| -> f64 {
            if step < 100 {
                return 1e-3 * (step + 1) as f64 / 101.0;
            }
            let r = (step - 100) as f64 / 1900.0;
            1e-4 + 0.5 * (1.0 + (std::f64::consts::PI * r).cos()) * (1e-3 - 1e-4)
        };
        let s = LrSchedule {
            base_lr: 1e-3,
            schedule: Schedule::Cosine {
                total: 1900,
                min_lr: 1e-4,
            },
            warmup: 100,
            warmup_shape: Warmup::NanoGpt,
        };
        for step in [0, 1, 50, 99, 100, 101, 777, 1500, 1999] {
            let (a, b) = (s.lr_at(step), lr_at(step));
            assert!((a - b).abs() <= 1e-15 * b, "step {step}: {a} vs {b}");
        }
    }
}
