//! AdamW with its moments kept by parameter name, so they can be saved and restored exactly,
//! and gradient clipping by global norm.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::Gradients;

use crate::checkpoint::tensors::{HostTensor, NamedTensors};
use crate::model::weights::{flat_params, update_params};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW (decoupled weight decay); first and second moments per parameter, flattened.
pub struct AdamW {
    pub settings: AdamWSettings,
    /// Updates applied so far (for bias correction).
    pub steps: u64,
    moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
}

impl AdamW {
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// The global L2 norm of all gradients.
    pub fn grad_norm(grads: &BTreeMap<String, Tensor<1>>) -> f32 {
        let squares: Vec<Tensor<1>> = grads.values().map(|g| g.clone().square().sum()).collect();
        Tensor::cat(squares, 0).sum().sqrt().into_scalar::<f32>()
    }

    /// One update at rate `lr`, unless a gradient is not finite: then the model comes back
    /// unchanged, with the moments untouched. Gradients are scaled down so their global norm is at
    /// most `clip` (if given). Returns the model and the norm before clipping.
    pub fn step_if_finite<M: Module>(
        &mut self,
        model: M,
        grads: &Gradients,
        lr: f64,
        clip: Option<f64>,
    ) -> (M, f32) {
        self.step_if_finite_scaled(model, grads, lr, clip, |_| 1.0)
    }

    /// As [`Self::step_if_finite`], each parameter at rate `lr * lr_scale(name)` (layer-wise
    /// learning-rate decay in fine-tuning).
    pub fn step_if_finite_scaled<M: Module>(
        &mut self,
        model: M,
        grads: &Gradients,
        lr: f64,
        clip: Option<f64>,
        lr_scale: impl Fn(&str) -> f64,
    ) -> (M, f32) {
        let grads = flat_params(&model, Some(grads));
        self.apply_if_finite(model, &grads, lr, clip, lr_scale)
    }

    /// As [`Self::step_if_finite_scaled`], with the gradients already gathered by parameter name
    /// (as [`flat_params`] gathers them): the sum of a batch's slices.
    pub fn apply_if_finite<M: Module>(
        &mut self,
        model: M,
        grads: &BTreeMap<String, Tensor<1>>,
        lr: f64,
        clip: Option<f64>,
        lr_scale: impl Fn(&str) -> f64,
    ) -> (M, f32) {
        let norm = Self::grad_norm(grads);
        if !norm.is_finite() {
            return (model, norm);
        }
        let scale = match clip {
            Some(max) if norm as f64 > max => max / (norm as f64 + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        let s = self.settings;
        let bias1 = 1.0 - s.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - s.beta2.powi(self.steps as i32);
        let moments = &mut self.moments;
        let model = update_params(model, |name, w| {
            let Some(g) = grads.get(name) else {
                return w;
            };
            let g = g.clone() * scale;
            let (m, v) = match moments.remove(name) {
                Some((m, v)) => (
                    m * s.beta1 + g.clone() * (1.0 - s.beta1),
                    v * s.beta2 + g.square() * (1.0 - s.beta2),
                ),
                None => (g.clone() * (1.0 - s.beta1), g.square() * (1.0 - s.beta2)),
            };
            let update = (m.clone() / bias1) / ((v.clone() / bias2).sqrt() + s.eps);
            moments.insert(name.to_string(), (m, v));
            let lr = lr * lr_scale(name);
            w.clone() - update * lr - w * (lr * s.weight_decay)
        });
        (model, norm)
    }

    /// Moments as host tensors named `adam.m.<param>` and `adam.v.<param>`.
    pub fn state_tensors(&self) -> NamedTensors {
        let mut out = NamedTensors::new();
        for (name, (m, v)) in &self.moments {
            out.insert(format!("adam.m.{name}"), to_host(m));
            out.insert(format!("adam.v.{name}"), to_host(v));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: &NamedTensors, steps: u64, device: &Device) {
        self.steps = steps;
        self.moments.clear();
        for (key, m) in tensors {
            let Some(name) = key.strip_prefix("adam.m.") else {
                continue;
            };
            if let Some(v) = tensors.get(&format!("adam.v.{name}")) {
                self.moments.insert(
                    name.to_string(),
                    (to_device(m, device), to_device(v, device)),
                );
            }
        }
    }
}

pub(crate) fn to_host(t: &Tensor<1>) -> HostTensor {
    let data = t
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    HostTensor {
        shape: vec![data.len()],
        data,
    }
}

pub(crate) fn to_device(t: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::<1>::from_floats(t.data.as_slice(), device)
}
