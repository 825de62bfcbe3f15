//! The per-layer key/value cache of blockwise sampling.
//!
//! Each clean block's keys and values (after QK-norm and RoPE) are appended once, when the block
//! after it takes its first step; later steps attend to them without recomputing the prefix.

use burn::prelude::*;

/// Keys and values of the clean blocks generated so far, for every layer.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    pub fn new(depth: usize) -> Self {
        Self {
            layers: vec![None; depth],
        }
    }

    /// Tokens cached so far (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends to one layer. k, v: (n, heads, tokens, head_dim).
    pub fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) {
        let entry = &mut self.layers[layer];
        *entry = Some(match entry.take() {
            None => (k, v),
            Some((old_k, old_v)) => (
                Tensor::cat(vec![old_k, k], 2),
                Tensor::cat(vec![old_v, v], 2),
            ),
        });
    }

    /// The cached keys and values of one layer, if any: each (n, heads, cached, head_dim).
    pub fn get(&self, layer: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        self.layers[layer].clone()
    }
}
