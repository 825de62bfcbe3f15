//! DDIM (eta = 0) on the linspace timestep subsequence, ending on alpha_bar = 1.

use burn::prelude::*;
use rand::RngCore;

use super::schedule::NoiseSchedule;
use super::{Sampler, linspace_timesteps};

pub struct Ddim {
    timesteps: Vec<usize>,
    /// alpha_bar at each timestep, then 1 at the end.
    alphas: Vec<f64>,
}

impl Ddim {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let timesteps = linspace_timesteps(schedule.train_steps(), steps);
        let mut alphas: Vec<f64> = timesteps
            .iter()
            .map(|&t| schedule.alphas_cumprod[t])
            .collect();
        alphas.push(1.0);
        Self { timesteps, alphas }
    }
}

impl Sampler for Ddim {
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
        let (a_t, a_next) = (self.alphas[index], self.alphas[index + 1]);
        let x0 = (sample - eps.clone() * (1.0 - a_t).sqrt()) / a_t.sqrt();
        x0 * a_next.sqrt() + eps * (1.0 - a_next).sqrt()
    }
}
