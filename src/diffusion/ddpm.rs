//! DDPM ancestral sampling on the linspace timestep subsequence: the posterior q(x_s | x_t, x_0)
//! with the model's x_0, plus fresh noise at every step but the last.

use burn::prelude::*;
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};

use super::schedule::NoiseSchedule;
use super::{Sampler, Subsequence};

pub struct Ddpm(Subsequence);

impl Ddpm {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        Self(Subsequence::linspace(schedule, steps))
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self) -> &[usize] {
        &self.0.timesteps
    }

    fn step(
        &mut self,
        index: usize,
        eps: Tensor<3>,
        sample: Tensor<3>,
        rng: &mut dyn RngCore,
    ) -> Tensor<3> {
        let (a_t, a_prev) = (self.0.alphas[index], self.0.alphas[index + 1]);
        let x0 = (sample.clone() - eps * (1.0 - a_t).sqrt()) / a_t.sqrt();
        let beta = 1.0 - a_t / a_prev;
        let mean = x0 * (a_prev.sqrt() * beta / (1.0 - a_t))
            + sample * ((1.0 - beta).sqrt() * (1.0 - a_prev) / (1.0 - a_t));
        if index + 1 == self.0.timesteps.len() {
            return mean;
        }
        let std = (beta * (1.0 - a_prev) / (1.0 - a_t)).sqrt();
        let dims = mean.dims();
        let noise: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| StandardNormal.sample(rng))
            .collect();
        let noise = Tensor::<1>::from_floats(noise.as_slice(), &mean.device()).reshape(dims);
        mean + noise * std
    }
}
