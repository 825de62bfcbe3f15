//! Rotary position embedding over (row, column) or (frame, row, column), exactly as the reference.
//!
//! For axis a with d_a dimensions the frequencies are `1 / base_a ^ (linspace(0, 64, d_a/2) / 64)`,
//! duplicated as `[f, f]`; the per-axis tables are concatenated along the head dimension and
//! `rotate_half` then swaps the two halves of the whole head (not of each axis's slice).

use burn::prelude::*;

use crate::config::ModelConfig;

/// cos and sin tables for every position on every axis.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    /// Per axis: (max_len, d_a) angles, row-major.
    angles: Vec<Vec<f64>>,
    split_dims: Vec<usize>,
}

/// The cos and sin of a run of tokens: each (1, 1, tokens, head_dim).
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub cos: Tensor<4>,
    pub sin: Tensor<4>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let head_dim = config.head_dim;
        let angles = config
            .rope_split_dims
            .iter()
            .zip(&config.rope_bases)
            .zip(&config.rope_max_lens)
            .map(|((&dim, &base), &max_len)| {
                let steps = dim / 2;
                let inv_freq: Vec<f64> = (0..steps)
                    .map(|i| {
                        let frac = if steps == 1 {
                            0.0
                        } else {
                            head_dim as f64 * i as f64 / (steps - 1) as f64
                        };
                        // The reference computes this in f32; match its rounding.
                        (1.0f32 / (base as f32).powf(frac as f32 / head_dim as f32)) as f64
                    })
                    .collect();
                (0..max_len)
                    .flat_map(|pos| {
                        let row: Vec<f64> = inv_freq.iter().map(|f| pos as f64 * f).collect();
                        [row.clone(), row].concat()
                    })
                    .collect()
            })
            .collect();
        Self {
            head_dim,
            angles,
            split_dims: config.rope_split_dims.clone(),
        }
    }

    /// Tables for tokens at `positions` (axes x tokens).
    pub fn table(&self, positions: &[Vec<usize>], device: &Device) -> RopeTable {
        let tokens = positions[0].len();
        let mut cos = Vec::with_capacity(tokens * self.head_dim);
        let mut sin = Vec::with_capacity(tokens * self.head_dim);
        for token in 0..tokens {
            let coords = positions.iter().map(|axis| axis[token]);
            for ((&dim, angles), pos) in self.split_dims.iter().zip(&self.angles).zip(coords) {
                for angle in &angles[pos * dim..(pos + 1) * dim] {
                    let angle = *angle as f32;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [1, 1, tokens, self.head_dim];
        RopeTable {
            cos: Tensor::<1>::from_floats(cos.as_slice(), device).reshape(shape),
            sin: Tensor::<1>::from_floats(sin.as_slice(), device).reshape(shape),
        }
    }
}

impl RopeTable {
    /// x: (n, heads, tokens, head_dim) -> rotated, same shape.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        crate::fused::rope(x, self.cos.clone(), self.sin.clone())
    }
}
