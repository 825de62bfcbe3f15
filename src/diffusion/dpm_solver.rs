//! DPM-Solver++ 2M (multistep, midpoint), as diffusers' `DPMSolverMultistepScheduler` with the
//! reference's settings: linspace spacing, epsilon prediction, lower-order first and final steps,
//! final sigma zero.

use burn::prelude::*;
use rand::RngCore;

use super::schedule::NoiseSchedule;
use super::{Sampler, linspace_timesteps};

pub struct DpmSolver2M {
    timesteps: Vec<usize>,
    /// sigma = sqrt((1 - alpha_bar) / alpha_bar) at each timestep, then 0 at the end.
    sigmas: Vec<f64>,
    /// The previous step's data prediction, for the second-order update.
    previous_x0: Option<Tensor<3>>,
}

impl DpmSolver2M {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let timesteps = linspace_timesteps(schedule.train_steps(), steps);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| {
                let a = schedule.alphas_cumprod[t] as f32;
                (((1.0 - a) / a).sqrt()) as f64
            })
            .collect();
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            previous_x0: None,
        }
    }
}

/// (alpha_t, sigma_t, lambda_t) of a sigma in the variance-preserving parameterisation.
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl Sampler for DpmSolver2M {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(
        &mut self,
        index: usize,
        eps: Tensor<3>,
        sample: Tensor<3>,
        _rng: &mut dyn RngCore,
    ) -> Tensor<3> {
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[index]);
        let x0 = (sample.clone() - eps * sigma_s0) / alpha_s0;
        let next_sigma = self.sigmas[index + 1];
        let last = index + 1 == self.timesteps.len();
        let next = if next_sigma == 0.0 {
            // Final sigma zero: the first-order update lands exactly on the data prediction.
            x0.clone()
        } else {
            let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(next_sigma);
            let h = lambda_t - lambda_s0;
            let phi = (-h).exp() - 1.0;
            let first_order = sample * (sigma_t / sigma_s0) - x0.clone() * (alpha_t * phi);
            match (&self.previous_x0, last) {
                (Some(previous), false) if index > 0 => {
                    let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[index - 1]);
                    let r0 = (lambda_s0 - lambda_s1) / h;
                    let d1 = (x0.clone() - previous.clone()) / r0;
                    first_order - d1 * (0.5 * alpha_t * phi)
                }
                _ => first_order,
            }
        };
        self.previous_x0 = Some(x0);
        next
    }
}
