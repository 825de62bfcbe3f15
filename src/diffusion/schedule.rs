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

    /// Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t).
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// Min-SNR-gamma's weight of the epsilon error at `t` (Hang et al. 2023): min(SNR, gamma) /
    /// SNR, 1 wherever the noise dominates and falling as 1 / SNR towards clean data, so that
    /// the nearly clean timesteps, whose tiny noise is the hardest to tell and the least worth
    /// learning, stop drawing the updates away from the noisy ones where a sample is laid out.
    pub fn min_snr_weight(&self, t: usize, gamma: f64) -> f64 {
        let snr = self.snr(t);
        snr.min(gamma) / snr
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

    #[test]
    fn min_snr_weight_is_one_where_noise_dominates_and_one_over_snr_beyond_gamma() {
        let s = NoiseSchedule::ddpm();
        // SNR falls with t: about 1e4 at t = 0, under 1e-4 at t = 999.
        assert!(s.snr(0) > 9_000.0 && s.snr(999) < 1e-4);
        for t in [500, 999] {
            assert!(s.snr(t) < 5.0);
            assert_eq!(s.min_snr_weight(t, 5.0), 1.0);
        }
        let clean_end = s.min_snr_weight(0, 5.0);
        assert!((clean_end - 5.0 / s.snr(0)).abs() < 1e-12, "{clean_end}");
        assert!(clean_end < 1e-3);
        let weights: Vec<f64> = (0..1000).map(|t| s.min_snr_weight(t, 5.0)).collect();
        assert!(
            weights.windows(2).all(|w| w[0] <= w[1]),
            "weights rise with t"
        );
    }
}
