//! Learning-rate schedules: linear warm-up from 0 to `lr` over `warmup` steps, then cosine, linear
//! or constant decay to `min_lr_frac * lr` at `total` steps.

/// Shape of the decay after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub warmup: usize,
    pub total: usize,
    pub min_lr_frac: f64,
    pub decay: Decay,
}

impl Schedule {
    /// Learning rate for 0-based `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let min = self.lr * self.min_lr_frac;
        let span = self.total.saturating_sub(self.warmup).max(1);
        let frac = ((step - self.warmup) as f64 / span as f64).min(1.0);
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Linear => self.lr - (self.lr - min) * frac,
            Decay::Cosine => min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * frac).cos()),
        }
    }
}
