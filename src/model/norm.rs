//! RMSNorm, as the reference's `LlamaRMSNorm`: scale by the root mean square, then a learned gain.

use burn::module::Param;
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
}

impl RmsNorm {
    /// A norm over the last `dim` values, gain initialised to one.
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            eps,
        }
    }

    /// x: (..., dim) -> (..., dim)
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::fused::rms_norm(x, self.weight.val(), self.eps)
    }
}
