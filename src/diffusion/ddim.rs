//! DDIM (eta = 0) on the linspace timestep subsequence, ending on alpha_bar = 1.

use burn::prelude::*;
use rand::RngCore;

use super::schedule::NoiseSchedule;
use super::{Sampler, Subsequence};

pub struct Ddim(Subsequence);

impl Ddim {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        Self(Subsequence::linspace(schedule, steps))
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.0.timesteps
    }

    fn step(
        &mut self,
        index: usize,
        eps: Tensor<3>,
        sample: Tensor<3>,
        _rng: &mut dyn RngCore,
    ) -> Tensor<3> {
        let (a_t, a_next) = (self.0.alphas[index], self.0.alphas[index + 1]);
        let x0 = (sample - eps.clone() * (1.0 - a_t).sqrt()) / a_t.sqrt();
        x0 * a_next.sqrt() + eps * (1.0 - a_next).sqrt()
    }
}
