//! Diffusion: the training noise schedule, the samplers, and blockwise generation with guidance.

pub mod blockwise;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod schedule;

use burn::prelude::*;
use rand::RngCore;

use schedule::NoiseSchedule;

/// Which update rule turns the model's noise prediction into the next sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SamplerKind {
    /// DPM-Solver++ 2M (multistep, midpoint), as the paper samples.
    DpmSolver2M,
    /// DDIM, deterministic (eta = 0).
    Ddim,
    /// DDPM ancestral sampling on the same timestep subsequence.
    Ddpm,
}

impl crate::choice::Choice for SamplerKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("dpm++2m", SamplerKind::DpmSolver2M),
        ("ddim", SamplerKind::Ddim),
        ("ddpm", SamplerKind::Ddpm),
    ];
}

/// A sampler walks one block from noise to data, one model call per timestep.
pub trait Sampler {
    /// The training timesteps at which the model is called, in call order.
    fn timesteps(&self) -> &[usize];

    /// sample x_t and the model's noise prediction at call `index` -> the next sample; all
    /// (n, tokens, latent). `rng` draws fresh noise for stochastic samplers.
    fn step(
        &mut self,
        index: usize,
        eps: Tensor<3>,
        sample: Tensor<3>,
        rng: &mut dyn RngCore,
    ) -> Tensor<3>;
}

/// Timesteps spaced evenly over the training range, as diffusers' "linspace" spacing:
/// `round(linspace(0, T-1, steps + 1))` reversed, without the final 0.
pub fn linspace_timesteps(train_steps: usize, steps: usize) -> Vec<usize> {
    let last = (train_steps - 1) as f64;
    let mut ts: Vec<usize> = (0..=steps)
        // NumPy rounds halves to even.
        .map(|i| (last * i as f64 / steps as f64).round_ties_even() as usize)
        .collect();
    ts.reverse();
    ts.truncate(steps);
    ts
}

/// The timesteps a sampler visits, and alpha_bar at each followed by 1 (clean data) at the end.
pub struct Subsequence {
    pub timesteps: Vec<usize>,
    pub alphas: Vec<f64>,
}

impl Subsequence {
    pub fn linspace(schedule: &NoiseSchedule, steps: usize) -> Self {
        let timesteps = linspace_timesteps(schedule.train_steps(), steps);
        let mut alphas: Vec<f64> = timesteps
            .iter()
            .map(|&t| schedule.alphas_cumprod[t])
            .collect();
        alphas.push(1.0);
        Self { timesteps, alphas }
    }
}

/// A fresh sampler of `kind` with `steps` model calls per block.
pub fn new_sampler(kind: SamplerKind, schedule: &NoiseSchedule, steps: usize) -> Box<dyn Sampler> {
    match kind {
        SamplerKind::DpmSolver2M => Box::new(dpm_solver::DpmSolver2M::new(schedule, steps)),
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(schedule, steps)),
        SamplerKind::Ddpm => Box::new(ddpm::Ddpm::new(schedule, steps)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// With an oracle that knows the data, the noise prediction is exact and every sampler must
    /// land on the data itself.
    #[test]
    fn samplers_land_on_the_data_under_an_oracle() {
        let device = Device::flex();
        let schedule = schedule::NoiseSchedule::ddpm();
        let data = [0.3f32, -0.7, 0.9, 0.0];
        let x0 = Tensor::<1>::from_floats(data, &device).reshape([1, 2, 2]);
        for kind in [
            SamplerKind::DpmSolver2M,
            SamplerKind::Ddim,
            SamplerKind::Ddpm,
        ] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let mut sampler = new_sampler(kind, &schedule, 10);
            let mut x =
                Tensor::<1>::from_floats([1.0f32, -0.5, 0.2, 2.0], &device).reshape([1, 2, 2]);
            for (i, &t) in sampler.timesteps().to_vec().iter().enumerate() {
                let (a, b) = schedule.q_coefficients(t);
                let eps = (x.clone() - x0.clone() * a) / b;
                x = sampler.step(i, eps, x, &mut rng);
            }
            let error = (x - x0.clone()).abs().max().into_scalar::<f32>();
            assert!(error < 1e-4, "{kind:?}: error {error}");
        }
    }

    #[test]
    fn linspace_timesteps_match_diffusers() {
        assert_eq!(
            linspace_timesteps(1000, 10),
            vec![999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        assert_eq!(linspace_timesteps(1000, 1), vec![999]);
        // 999 * 5 / 6 = 832.5 rounds to the even 832, as numpy does.
        assert_eq!(linspace_timesteps(1000, 6)[1], 832);
    }
}
