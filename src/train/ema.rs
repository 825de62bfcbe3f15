//! Exponential moving average of the weights, in f32, kept as a full model for sampling.

use std::collections::BTreeMap;

use burn::module::Module;

use crate::model::Acdit;
use crate::model::weights::{flat_params, update_params};

pub struct Ema {
    pub decay: f64,
    pub model: Acdit,
}

impl Ema {
    /// Starts from a copy of the model's weights (without autodiff).
    pub fn new(model: &Acdit, decay: f64) -> Self {
        Self {
            decay,
            model: model.valid(),
        }
    }

    /// ema = d * ema + (1 - d) * weights after `step` updates, with d = min(decay,
    /// (1 + step) / (10 + step)): early on the average forgets the random start quickly, so short
    /// runs get a useful EMA too.
    pub fn update(&mut self, model: &Acdit, step: u64) {
        let current: BTreeMap<_, _> = flat_params(model, None);
        let decay = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        let ema = self.model.clone();
        self.model = update_params(ema, |name, e| match current.get(name) {
            Some(w) => e * decay + w.clone() * (1.0 - decay),
            None => e,
        });
    }
}
