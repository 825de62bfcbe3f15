//! The per-layer key/value cache of blockwise sampling.
//!
//! Each clean block's keys and values (after QK-norm and RoPE) are written once, when the block
//! after it takes its first step; later steps attend to them without recomputing the prefix.

use burn::prelude::*;

/// Keys and values of the clean blocks generated so far, for every layer.
///
/// Each layer's buffer holds the whole sequence, allocated at the first write. A step writes its
/// own keys and values just after the cached ones and attends to a view of the filled part, so
/// no step concatenates or allocates; the next step overwrites that scratch slot.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: key and value buffers, each (n, heads, capacity, head_dim).
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    capacity: usize,
    /// Tokens cached for good (the same in every layer once a step has run through the model).
    cached: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `depth` layers and sequences of up to `capacity` tokens.
    pub fn new(depth: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; depth],
            capacity,
            cached: vec![0; depth],
        }
    }

    /// Tokens cached for good so far.
    pub fn len(&self) -> usize {
        self.cached.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Caches a clean stretch's keys and values (n, heads, tokens, head_dim) in one layer for
    /// good, and returns everything that layer now holds.
    pub fn append(
        &mut self,
        layer: usize,
        finished: (Tensor<4>, Tensor<4>),
    ) -> (Tensor<4>, Tensor<4>) {
        let [n, heads, _, head_dim] = finished.0.dims();
        let capacity = self.capacity;
        let buffers = self.layers[layer].take().unwrap_or_else(|| {
            let device = finished.0.device();
            let empty = || Tensor::zeros([n, heads, capacity, head_dim], &device);
            (empty(), empty())
        });
        let (buffers, filled) = write_at(buffers, self.cached[layer], finished);
        self.cached[layer] = filled;
        let view = (
            buffers.0.clone().narrow(2, 0, filled),
            buffers.1.clone().narrow(2, 0, filled),
        );
        self.layers[layer] = Some(buffers);
        view
    }

    /// One layer's keys and values for this step: caches `finished` (a clean block's keys and
    /// values, kept for later steps) if given, writes `current` after the cache for this step
    /// only, and returns cached + current. All are (n, heads, tokens, head_dim).
    pub fn keys_for_step(
        &mut self,
        layer: usize,
        finished: Option<(Tensor<4>, Tensor<4>)>,
        current: (Tensor<4>, Tensor<4>),
    ) -> (Tensor<4>, Tensor<4>) {
        let [n, heads, _, head_dim] = current.0.dims();
        let capacity = self.capacity;
        let mut buffers = self.layers[layer].take().unwrap_or_else(|| {
            let device = current.0.device();
            let empty = || Tensor::zeros([n, heads, capacity, head_dim], &device);
            (empty(), empty())
        });
        if let Some(finished) = finished {
            (buffers, self.cached[layer]) = write_at(buffers, self.cached[layer], finished);
        }
        let (buffers, filled) = write_at(buffers, self.cached[layer], current);
        let view = (
            buffers.0.clone().narrow(2, 0, filled),
            buffers.1.clone().narrow(2, 0, filled),
        );
        self.layers[layer] = Some(buffers);
        view
    }
}

/// Writes k, v into the buffers at token `at`; returns the buffers and the token after the write.
/// The buffers are moved in, so when nothing else holds them the backend writes in place.
fn write_at(
    (keys, values): (Tensor<4>, Tensor<4>),
    at: usize,
    (k, v): (Tensor<4>, Tensor<4>),
) -> ((Tensor<4>, Tensor<4>), usize) {
    let [n, heads, len, head_dim] = k.dims();
    let capacity = keys.dims()[2];
    assert!(
        at + len <= capacity,
        "KV cache holds {capacity} tokens; a step needs {}",
        at + len
    );
    let slot = [0..n, 0..heads, at..at + len, 0..head_dim];
    let keys = keys.slice_assign(slot.clone(), k);
    let values = values.slice_assign(slot, v);
    ((keys, values), at + len)
}
