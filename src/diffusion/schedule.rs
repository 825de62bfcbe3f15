//! The DDPM training schedule: 1000 steps, linear betas 1e-4..0.02, epsilon prediction.

/// Cumulative signal levels of the forward process.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// alpha_bar_t for t in 0..train_steps, computed in f32 as PyTorch does, kept as f64.
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Linear betas from `beta_start` to `beta_end` over `train_steps` steps.
    pub fn linear(train_steps: usize, beta_start: f64, beta_end: f64) -> Self {
        let mut acc = 1.0f32;
        let alphas_cumprod = (0..train_steps)
            .map(|i| {
                let frac = i as f64 / (train_steps - 1) as f64;
                let beta = (beta_start + (beta_end - beta_start) * frac) as f32;
                acc *= 1.0 - beta;
                acc as f64
            })
            .collect();
        Self { alphas_cumprod }
    }

    /// The schedule the paper trains with.
    pub fn ddpm() -> Self {
        Self::linear(1000, 1e-4, 0.02)
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Coefficients of `q_sample`: x_t = a * x_0 + b * eps, (a, b) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)).
    pub fn q_coefficients(&self, t: usize) -> (f32, f32) {
        let a = self.alphas_cumprod[t];
        (a.sqrt() as f32, (1.0 - a).sqrt() as f32)
    }

    /// x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, element-wise on host values.
    pub fn q_sample(&self, x0: &[f32], eps: &[f32], t: usize) -> Vec<f32> {
        let (a, b) = self.q_coefficients(t);
        x0.iter().zip(eps).map(|(x, e)| a * x + b * e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ends_near_zero_signal() {
        let s = NoiseSchedule::ddpm();
        assert_eq!(s.train_steps(), 1000);
        assert!((s.alphas_cumprod[0] - 0.9999).abs() < 1e-7);
        assert!(s.alphas_cumprod[999] < 1e-4 && s.alphas_cumprod[999] > 0.0);
        let x = s.q_sample(&[1.0], &[0.0], 0);
        assert!((x[0] - 0.9999f32.sqrt()).abs() < 1e-6);
    }
}
