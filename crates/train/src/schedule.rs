//! Learning-rate schedules, exactly transformers' `get_*_schedule_with_warmup` (a `LambdaLR`
//! factor on the base rate). The factor for optimiser step `k` (0-based: the first update uses
//! `k = 0`, so a warmup starts from a zero rate, as in HF Trainer):
//!
//! - warmup (`k < warmup`): `k / max(1, warmup)`;
//! - linear: `max(0, (total − k) / max(1, total − warmup))`;
//! - cosine: `max(0, ½·(1 + cos(π · 2·cycles · p)))` with `p = (k − warmup) / max(1, total −
//!   warmup)` and `cycles = 0.5` by default;
//! - constant: 1.

/// The decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    Constant,
    Linear,
    /// `num_cycles` (transformers' default 0.5: one half cosine down to 0).
    Cosine {
        num_cycles: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl LrSchedule {
    /// Linear warmup then half-cosine decay (`get_cosine_schedule_with_warmup`).
    pub fn cosine(base_lr: f64, warmup_steps: usize, total_steps: usize) -> LrSchedule {
        LrSchedule {
            base_lr,
            warmup_steps,
            total_steps,
            decay: Decay::Cosine { num_cycles: 0.5 },
        }
    }

    /// Linear warmup then linear decay (`get_linear_schedule_with_warmup`).
    pub fn linear(base_lr: f64, warmup_steps: usize, total_steps: usize) -> LrSchedule {
        LrSchedule {
            base_lr,
            warmup_steps,
            total_steps,
            decay: Decay::Linear,
        }
    }

    /// The multiplier of the base rate at optimiser step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let (k, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return k / w.max(1.0);
        }
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => ((t - k) / (t - w).max(1.0)).max(0.0),
            Decay::Cosine { num_cycles } => {
                let progress = (k - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate for optimiser step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }
}

/// Warmup steps from a ratio, as HF `TrainingArguments.get_warmup_steps`: `ceil(total · ratio)`.
pub fn warmup_steps_from_ratio(total_steps: usize, ratio: f64) -> usize {
    (total_steps as f64 * ratio).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_linear_match_transformers() {
        // Rates of transformers 5.23's schedulers stepped with an SGD optimiser (cosine: base 1,
        // linear: base 2; warmup 3, total 10).
        let cos = LrSchedule::cosine(1.0, 3, 10);
        let want_cos = [
            0.0,
            1.0 / 3.0,
            2.0 / 3.0,
            1.0,
            0.9504844339512095,
            0.8117449009293668,
            0.6112604669781572,
            0.3887395330218428,
            0.18825509907063323,
            0.04951556604879048,
            0.0,
            // Past the end transformers' cosine rises again (progress is not clamped).
            0.04951556604879043,
        ];
        for (k, w) in want_cos.iter().enumerate() {
            assert!((cos.lr(k) - w).abs() < 1e-12, "cosine step {k}");
        }
        let lin = LrSchedule::linear(2.0, 3, 10);
        let want_lin = [
            0.0,
            1.0 / 3.0,
            2.0 / 3.0,
            1.0,
            6.0 / 7.0,
            5.0 / 7.0,
            4.0 / 7.0,
        ];
        for (k, w) in want_lin.iter().enumerate() {
            assert!((lin.lr(k) - 2.0 * w).abs() < 1e-12, "linear step {k}");
        }
        assert_eq!(lin.lr(10), 0.0);
        assert_eq!(lin.lr(12), 0.0);
        assert_eq!(warmup_steps_from_ratio(1000, 0.03), 30);
        assert_eq!(warmup_steps_from_ratio(10, 0.05), 1);
    }
}
