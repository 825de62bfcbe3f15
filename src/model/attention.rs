//! Multi-head self-attention with QK-RMSNorm, RoPE and an optional key/value cache.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::cache::KvCache;
use super::norm::RmsNorm;
use super::rope::RopeTable;
use super::{linear, linear_tokens};

#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    pub proj: Linear,
    #[module(skip)]
    num_heads: usize,
}

/// What one attention call does with the cache: which layer it is, and how many of the leading
/// tokens are a clean block whose keys and values join the cache before attending.
pub struct CacheUse<'a> {
    pub cache: &'a mut KvCache,
    pub layer: usize,
    pub append: usize,
}

impl Attention {
    pub fn new(hidden: usize, num_heads: usize, eps: f64, device: &Device) -> Self {
        let head_dim = hidden / num_heads;
        Self {
            qkv: linear(hidden, 3 * hidden, true, device),
            q_norm: RmsNorm::new(head_dim, eps, device),
            k_norm: RmsNorm::new(head_dim, eps, device),
            proj: linear(hidden, hidden, true, device),
            num_heads,
        }
    }

    /// x: (n, tokens, hidden) -> (n, tokens, hidden).
    ///
    /// `rope` covers the `tokens` fed; `bias` is (1, 1, tokens, keys) with keys = cached + tokens.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        bias: Option<Tensor<4>>,
        cache: Option<CacheUse>,
    ) -> Tensor<3> {
        let [n, tokens, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let qkv = linear_tokens(&self.qkv, x)
            .reshape([n, tokens, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([n, self.num_heads, tokens, head_dim])
        };
        let q = rope.apply(self.q_norm.forward(part(0)));
        let mut k = rope.apply(self.k_norm.forward(part(1)));
        let mut v = part(2);
        if let Some(CacheUse {
            cache,
            layer,
            append,
        }) = cache
        {
            if append > 0 {
                cache.append(
                    layer,
                    k.clone().narrow(2, 0, append),
                    v.clone().narrow(2, 0, append),
                );
                k = k.narrow(2, append, tokens - append);
                v = v.narrow(2, append, tokens - append);
            }
            if let Some((cached_k, cached_v)) = cache.get(layer) {
                k = Tensor::cat(vec![cached_k, k], 2);
                v = Tensor::cat(vec![cached_v, v], 2);
            }
        }
        let out = attend(q, k, v, bias);
        linear_tokens(&self.proj, out.swap_dims(1, 2).reshape([n, tokens, hidden]))
    }
}

/// Scaled dot-product attention, scale 1/sqrt(head_dim).
/// q: (n, h, tq, d), k, v: (n, h, tk, d), bias: (1, 1, tq, tk) additive -> (n, h, tq, d)
pub fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let scores = match bias {
        Some(bias) => scores + bias,
        None => scores,
    };
    softmax(scores, 3).matmul(v)
}
