//! Multi-head self-attention with QK-RMSNorm, RoPE and an optional key/value cache.

use burn::nn::Linear;
use burn::prelude::*;

use super::cache::KvCache;
use super::norm::RmsNorm;
use super::rope::RopeTable;
use super::{linear, linear_tokens};
use crate::fused::softmax;
use crate::mask::{additive_bias, clean_causal_mask, noisy_to_clean_mask};

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

    /// x: (n, tokens, hidden) -> (n, tokens, hidden). `rope` covers the `tokens` fed.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        keys: &KeyPattern,
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
            let finished = (append > 0).then(|| {
                (
                    k.clone().narrow(2, 0, append),
                    v.clone().narrow(2, 0, append),
                )
            });
            let current = (
                k.narrow(2, append, tokens - append),
                v.narrow(2, append, tokens - append),
            );
            (k, v) = cache.keys_for_step(layer, finished, current);
        }
        let out = match keys {
            KeyPattern::All => attend(q, k, v, None),
            KeyPattern::Masked(bias) => attend(q, k, v, Some(bias.clone())),
            KeyPattern::SkipCausal { block_len, clean } => {
                skip_causal_attend(q, k, v, *block_len, clean.as_ref())
            }
        };
        linear_tokens(&self.proj, out.swap_dims(1, 2).reshape([n, tokens, hidden]))
    }
}

/// Which keys the queries of one attention call see.
// One value lives per forward pass, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum KeyPattern {
    /// Every query sees every key: a noisy block alone on a later cached step.
    All,
    /// An additive bias, 0 where a query may attend and -inf where not: (1, 1, queries, keys),
    /// keys counting the cached tokens first.
    Masked(Tensor<4>),
    /// Training's Skip-Causal Attention Mask over [clean blocks | noisy blocks] (with the last
    /// clean block left out, see [`clean_causal_mask`]), computed in parts so that the pairs it
    /// masks between noisy blocks are never multiplied. `clean` holds the biases of clean queries
    /// on clean keys and of noisy queries on clean keys; None when there are no clean tokens.
    SkipCausal {
        block_len: usize,
        clean: Option<SkipCausalBias>,
    },
}

/// The two masked parts of training's attention, as additive biases.
#[derive(Debug, Clone)]
pub struct SkipCausalBias {
    /// (1, 1, clean, clean)
    clean_to_clean: Tensor<4>,
    /// (1, 1, noisy, clean)
    noisy_to_clean: Tensor<4>,
}

impl KeyPattern {
    /// Training's pattern for `blocks` blocks of `block_len` tokens.
    pub fn skip_causal(blocks: usize, block_len: usize, device: &Device) -> Self {
        let clean_len = (blocks - 1) * block_len;
        let clean = (blocks > 1).then(|| SkipCausalBias {
            clean_to_clean: additive_bias(
                &clean_causal_mask(blocks - 1, block_len),
                clean_len,
                clean_len,
                device,
            ),
            noisy_to_clean: additive_bias(
                &noisy_to_clean_mask(blocks, block_len),
                blocks * block_len,
                clean_len,
                device,
            ),
        });
        KeyPattern::SkipCausal { block_len, clean }
    }
}

/// Attention under [`KeyPattern::SkipCausal`]: q, k, v (n, h, clean + noisy, d) -> (n, h, clean +
/// noisy, d). Each noisy block's scores against itself come from one batched product over the
/// blocks; one softmax spans them and the block's scores against the clean keys.
fn skip_causal_attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    block_len: usize,
    clean: Option<&SkipCausalBias>,
) -> Tensor<4> {
    let [n, heads, tokens, d] = q.dims();
    let clean_len = clean.map_or(0, |bias| bias.clean_to_clean.dims()[2]);
    let noisy_len = tokens - clean_len;
    let blocks = noisy_len / block_len;
    let scale = 1.0 / (d as f64).sqrt();
    // (n, h, noisy, d) -> (n, h * blocks, block_len, d): one matrix per (head, block).
    let per_block = |x: Tensor<4>| {
        x.narrow(2, clean_len, noisy_len)
            .reshape([n, heads * blocks, block_len, d])
    };
    let (q_noisy, k_noisy, v_noisy) = (
        per_block(q.clone()),
        per_block(k.clone()),
        per_block(v.clone()),
    );
    let own_scores = (q_noisy.clone().matmul(k_noisy.swap_dims(2, 3)) * scale)
        .reshape([n, heads, noisy_len, block_len]);
    let Some(bias) = clean else {
        let probs = softmax(own_scores).reshape([n, heads * blocks, block_len, block_len]);
        return probs.matmul(v_noisy).reshape([n, heads, noisy_len, d]);
    };
    let (k_clean, v_clean) = (k.narrow(2, 0, clean_len), v.narrow(2, 0, clean_len));
    let q_noisy = q_noisy.reshape([n, heads, noisy_len, d]);
    let clean_scores =
        q_noisy.matmul(k_clean.clone().swap_dims(2, 3)) * scale + bias.noisy_to_clean.clone();
    let probs = softmax(Tensor::cat(vec![clean_scores, own_scores], 3));
    let from_clean = probs
        .clone()
        .narrow(3, 0, clean_len)
        .matmul(v_clean.clone());
    let from_own = probs
        .narrow(3, clean_len, block_len)
        .reshape([n, heads * blocks, block_len, block_len])
        .matmul(v_noisy)
        .reshape([n, heads, noisy_len, d]);
    let clean_out = attend(
        q.narrow(2, 0, clean_len),
        k_clean,
        v_clean,
        Some(bias.clean_to_clean.clone()),
    );
    Tensor::cat(vec![clean_out, from_clean + from_own], 2)
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
    softmax(scores).matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::skip_causal_mask;
    use burn::tensor::Distribution;

    #[test]
    fn skip_causal_parts_equal_attention_under_the_dense_mask() {
        let device = Device::flex();
        for (blocks, block_len) in [(1, 3), (2, 2), (3, 2), (5, 1)] {
            let half = blocks * block_len;
            let clean_len = half - block_len;
            let kept: Vec<usize> = (0..clean_len).chain(half..2 * half).collect();
            let full = skip_causal_mask(blocks, block_len);
            let dense: Vec<bool> = kept
                .iter()
                .flat_map(|&q| kept.iter().map(move |&kv| (q, kv)))
                .map(|(q, kv)| full[q * 2 * half + kv])
                .collect();
            let tokens = kept.len();
            let bias = additive_bias(&dense, tokens, tokens, &device);
            let random =
                || Tensor::<4>::random([2, 3, tokens, 4], Distribution::Normal(0.0, 1.0), &device);
            let (q, k, v) = (random(), random(), random());
            let expected = attend(q.clone(), k.clone(), v.clone(), Some(bias));
            let KeyPattern::SkipCausal { block_len, clean } =
                KeyPattern::skip_causal(blocks, block_len, &device)
            else {
                unreachable!("skip_causal builds the SkipCausal pattern")
            };
            let ours = skip_causal_attend(q, k, v, block_len, clean.as_ref());
            let error = (ours - expected).abs().max().into_scalar::<f32>();
            assert!(
                error < 1e-5,
                "{blocks} blocks of {block_len}: error {error}"
            );
        }
    }
}
