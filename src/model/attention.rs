//! Multi-head self-attention with QK-RMSNorm, RoPE and an optional key/value cache.
//!
//! The clean and the noisy tokens come in as two streams. They meet only here, so the rest of
//! the network never cuts one tensor into its clean and noisy parts (each cut costs a zero-filled
//! full-size gradient in backward).

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

/// The cache one attention call reads and writes, and which layer it is. On a block's first
/// step the clean stream is the finished block before it, whose keys and values join the cache.
pub struct CacheUse<'a> {
    pub cache: &'a mut KvCache,
    pub layer: usize,
}

/// Something of the clean tokens and the same of the noisy ones: their activations, rotary
/// tables or attention outputs. Most sampling steps have no clean tokens.
pub struct Streams<T> {
    pub clean: Option<T>,
    pub noisy: T,
}

/// The rotary tables of the two streams.
pub type StreamRopes = Streams<RopeTable>;

/// One stream's queries (None where no later layer reads the stream's output), keys and
/// values, each (n, heads, tokens, head_dim).
struct Heads {
    q: Option<Tensor<4>>,
    k: Tensor<4>,
    v: Tensor<4>,
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

    /// Attends over both streams. The clean stream's output is returned when `clean_read` is
    /// set: after the last layer nothing reads it, so its queries are not even formed.
    pub fn forward(
        &self,
        x: Streams<Tensor<3>>,
        ropes: &StreamRopes,
        keys: &KeyPattern,
        cache: Option<CacheUse>,
        clean_read: bool,
    ) -> Streams<Tensor<3>> {
        let clean = x.clean.map(|x| {
            let rope = ropes
                .clean
                .as_ref()
                .expect("a rotary table for the clean tokens");
            self.heads(x, rope, clean_read)
        });
        let noisy = self.heads(x.noisy, &ropes.noisy, true);
        let out = match keys {
            KeyPattern::SkipCausal {
                block_len,
                clean: bias,
            } => {
                let clean = clean.zip(bias.as_ref());
                skip_causal_attend(clean, noisy, *block_len)
            }
            KeyPattern::All => prefix_attend(clean, noisy, None, cache),
            KeyPattern::Masked(bias) => prefix_attend(clean, noisy, Some(bias.clone()), cache),
        };
        Streams {
            clean: out.clean.map(|out| self.merge_heads(out)),
            noisy: self.merge_heads(out.noisy),
        }
    }

    /// Clean tokens alone, as a prefill or the visual encoder reads them: x (n, tokens, hidden)
    /// attends to the keys already cached (if a cache is given) and its own, under `bias`
    /// (1, 1, tokens, cached + tokens); with a cache, its keys and values join it for good.
    pub fn forward_clean(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        bias: &Tensor<4>,
        cache: Option<CacheUse>,
    ) -> Tensor<3> {
        let Heads { q, k, v } = self.heads(x, rope, true);
        let (k, v) = match cache {
            Some(cache) => cache.cache.append(cache.layer, (k, v)),
            None => (k, v),
        };
        let out = attend(q.expect("clean queries"), k, v, Some(bias.clone()));
        self.merge_heads(out)
    }

    /// x: (n, tokens, hidden) -> queries (if `with_q`), keys and values. Each comes from its own
    /// third of the qkv weight, so no activation is cut into three.
    fn heads(&self, x: Tensor<3>, rope: &RopeTable, with_q: bool) -> Heads {
        let [n, tokens, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let rows = x.reshape([n * tokens, hidden]);
        let part = |i: usize| {
            let weight = self.qkv.weight.val().narrow(1, i * hidden, hidden);
            let bias = self
                .qkv
                .bias
                .as_ref()
                .map(|b| b.val().narrow(0, i * hidden, hidden));
            burn::tensor::module::linear(rows.clone(), weight, bias)
                .reshape([n, tokens, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        Heads {
            q: with_q.then(|| rope.apply(self.q_norm.forward(part(0)))),
            k: rope.apply(self.k_norm.forward(part(1))),
            v: part(2),
        }
    }

    /// (n, heads, tokens, head_dim) -> the output projection, (n, tokens, hidden).
    fn merge_heads(&self, out: Tensor<4>) -> Tensor<3> {
        let [n, heads, tokens, head_dim] = out.dims();
        linear_tokens(
            &self.proj,
            out.swap_dims(1, 2).reshape([n, tokens, heads * head_dim]),
        )
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
    /// the queries clean then noisy, the keys cached then clean then noisy.
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

/// Attention under [`KeyPattern::SkipCausal`]. Each noisy block's scores against itself come
/// from one batched product over the blocks; one softmax spans them and the block's scores
/// against the clean keys.
fn skip_causal_attend(
    clean: Option<(Heads, &SkipCausalBias)>,
    noisy: Heads,
    block_len: usize,
) -> Streams<Tensor<4>> {
    let Heads { q, k, v } = noisy;
    let q = q.expect("noisy queries");
    let [n, heads, noisy_len, d] = q.dims();
    let blocks = noisy_len / block_len;
    let scale = 1.0 / (d as f64).sqrt();
    // (n, h, noisy, d) -> (n, h * blocks, block_len, d): one matrix per (head, block).
    let per_block = |x: Tensor<4>| x.reshape([n, heads * blocks, block_len, d]);
    let v_own = per_block(v);
    let own_scores = (per_block(q.clone()).matmul(per_block(k).swap_dims(2, 3)) * scale)
        .reshape([n, heads, noisy_len, block_len]);
    let Some((clean, bias)) = clean else {
        let probs = softmax(own_scores).reshape([n, heads * blocks, block_len, block_len]);
        return Streams {
            clean: None,
            noisy: probs.matmul(v_own).reshape([n, heads, noisy_len, d]),
        };
    };
    let clean_len = clean.k.dims()[2];
    let q_dtype = q.dtype();
    let clean_scores = q.matmul(clean.k.clone().swap_dims(2, 3)) * scale
        + bias.noisy_to_clean.clone().cast(q_dtype);
    let probs = softmax(Tensor::cat(vec![clean_scores, own_scores], 3));
    let from_clean = probs
        .clone()
        .narrow(3, 0, clean_len)
        .matmul(clean.v.clone());
    let from_own = probs
        .narrow(3, clean_len, block_len)
        .reshape([n, heads * blocks, block_len, block_len])
        .matmul(v_own)
        .reshape([n, heads, noisy_len, d]);
    Streams {
        clean: clean
            .q
            .map(|q| attend(q, clean.k, clean.v, Some(bias.clean_to_clean.clone()))),
        noisy: from_clean + from_own,
    }
}

/// Attention under [`KeyPattern::All`] or [`KeyPattern::Masked`]: [clean | noisy] queries
/// against [cached | clean | noisy] keys, every pair seen or those `bias` allows. The clean keys
/// and values join the cache when one is given.
fn prefix_attend(
    clean: Option<Heads>,
    noisy: Heads,
    bias: Option<Tensor<4>>,
    cache: Option<CacheUse>,
) -> Streams<Tensor<4>> {
    let (clean_q, clean_kv) = match clean {
        Some(Heads { q, k, v }) => (q, Some((k, v))),
        None => (None, None),
    };
    let clean_len = clean_kv.as_ref().map_or(0, |(k, _)| k.dims()[2]);
    let (k, v) = match (cache, clean_kv) {
        (Some(CacheUse { cache, layer }), clean_kv) => {
            cache.keys_for_step(layer, clean_kv, (noisy.k, noisy.v))
        }
        (None, Some((k, v))) => (
            Tensor::cat(vec![k, noisy.k], 2),
            Tensor::cat(vec![v, noisy.v], 2),
        ),
        (None, None) => (noisy.k, noisy.v),
    };
    let noisy_q = noisy.q.expect("noisy queries");
    match clean_q {
        Some(clean_q) => {
            let out = attend(Tensor::cat(vec![clean_q, noisy_q], 2), k, v, bias);
            let queries = out.dims()[2];
            Streams {
                clean: Some(out.clone().narrow(2, 0, clean_len)),
                noisy: out.narrow(2, clean_len, queries - clean_len),
            }
        }
        None => {
            // Without clean queries, only the bias's noisy rows apply.
            let bias = bias.map(|bias| {
                let queries = bias.dims()[2];
                bias.narrow(2, clean_len, queries - clean_len)
            });
            Streams {
                clean: None,
                noisy: attend(noisy_q, k, v, bias),
            }
        }
    }
}

/// Scaled dot-product attention, scale 1/sqrt(head_dim).
/// q: (n, h, tq, d), k, v: (n, h, tk, d), bias: (1, 1, tq, tk) additive -> (n, h, tq, d)
pub fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let scores = match bias {
        // The masks are f32; a bf16 model attends in bf16.
        Some(bias) => {
            let dtype = scores.dtype();
            scores + bias.cast(dtype)
        }
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
            let stream = |from: usize, len: usize| Heads {
                q: Some(q.clone().narrow(2, from, len)),
                k: k.clone().narrow(2, from, len),
                v: v.clone().narrow(2, from, len),
            };
            let clean_heads = clean.as_ref().map(|bias| (stream(0, clean_len), bias));
            let ours = skip_causal_attend(clean_heads, stream(clean_len, half), block_len);
            let ours = match ours.clean {
                Some(clean) => Tensor::cat(vec![clean, ours.noisy], 2),
                None => ours.noisy,
            };
            let error = (ours - expected).abs().max().into_scalar::<f32>();
            assert!(
                error < 1e-5,
                "{blocks} blocks of {block_len}: error {error}"
            );
        }
    }
}
