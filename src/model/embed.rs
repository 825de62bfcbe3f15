//! Conditioning inputs: the diffusion timestep and the class label, each to a hidden vector.

use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::linear;

/// Width of the sinusoidal timestep features fed to the timestep MLP.
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;

/// Sinusoidal features of timesteps, `[cos, sin]` (cos first), max period 10000.
/// t: (n) -> (n * dim) row-major.
pub fn timestep_features(t: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        out.extend(freqs.iter().map(|f| (ti * f).cos()));
        out.extend(freqs.iter().map(|f| (ti * f).sin()));
    }
    out
}

/// Timestep -> hidden: sinusoidal features, then Linear -> SiLU -> Linear.
#[derive(Module, Debug)]
pub struct TimestepEmbedder {
    pub mlp_in: Linear,
    pub mlp_out: Linear,
}

impl TimestepEmbedder {
    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            mlp_in: linear(FREQUENCY_EMBEDDING_SIZE, hidden, true, device),
            mlp_out: linear(hidden, hidden, true, device),
        }
    }

    /// t: (n) timesteps -> (n, hidden)
    pub fn forward(&self, t: &[f32], device: &Device) -> Tensor<2> {
        let features = timestep_features(t, FREQUENCY_EMBEDDING_SIZE);
        // In the weights' float type: a bf16 copy of the model computes in bf16.
        let features = Tensor::<1>::from_floats(features.as_slice(), device)
            .reshape([t.len(), FREQUENCY_EMBEDDING_SIZE])
            .cast(self.mlp_in.weight.val().dtype());
        self.mlp_out.forward(silu(self.mlp_in.forward(features)))
    }
}

/// Class label -> hidden, with one extra row: the null label `num_classes` used for guidance.
#[derive(Module, Debug)]
pub struct LabelEmbedder {
    pub embedding_table: Embedding,
}

impl LabelEmbedder {
    pub fn new(num_classes: usize, hidden: usize, device: &Device) -> Self {
        Self {
            embedding_table: EmbeddingConfig::new(num_classes + 1, hidden)
                .with_initializer(burn::nn::Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
        }
    }

    /// labels: (n) -> (n, hidden)
    pub fn forward(&self, labels: Tensor<1, Int>) -> Tensor<2> {
        let n = labels.dims()[0];
        let embedded = self.embedding_table.forward(labels.reshape([1, n]));
        let [_, _, hidden] = embedded.dims();
        embedded.reshape([n, hidden])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_features_put_cos_first() {
        let f = timestep_features(&[0.0, 1.0], 4);
        assert_eq!(&f[..4], &[1.0, 1.0, 0.0, 0.0]);
        // half = 2: frequencies 1 and 10000^-0.5 = 0.01
        assert!((f[4] - 1f32.cos()).abs() < 1e-7 && (f[6] - 1f32.sin()).abs() < 1e-7);
        assert!((f[5] - 0.01f32.cos()).abs() < 1e-7 && (f[7] - 0.01f32.sin()).abs() < 1e-7);
    }
}
