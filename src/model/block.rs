//! The DiT block with adaLN-Zero, and the final layer. Clean tokens get no modulation.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::attention::{Attention, CacheUse, KeyPattern};
use super::norm::RmsNorm;
use super::rope::RopeTable;
use super::{linear, linear_tokens};
use crate::fused::gelu_tanh;

/// Tanh-GELU MLP, hidden -> ratio * hidden -> hidden.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(hidden: usize, inner: usize, device: &Device) -> Self {
        Self {
            fc1: linear(hidden, inner, true, device),
            fc2: linear(inner, hidden, true, device),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear_tokens(&self.fc2, gelu_tanh(linear_tokens(&self.fc1, x)))
    }
}

/// The tokens a block processes: `clean` leading tokens, then noisy tokens in `groups` equal
/// groups (one per diffusion block), each group modulated by its own condition.
pub struct Tokens {
    pub x: Tensor<3>,
    pub clean: usize,
}

#[derive(Module, Debug)]
pub struct DitBlock {
    pub norm1: RmsNorm,
    pub attn: Attention,
    pub norm2: RmsNorm,
    pub mlp: Mlp,
    pub ada_ln_modulation: Linear,
}

impl DitBlock {
    pub fn new(hidden: usize, heads: usize, mlp_hidden: usize, eps: f64, device: &Device) -> Self {
        Self {
            norm1: RmsNorm::new(hidden, eps, device),
            attn: Attention::new(hidden, heads, eps, device),
            norm2: RmsNorm::new(hidden, eps, device),
            mlp: Mlp::new(hidden, mlp_hidden, device),
            ada_ln_modulation: zero_linear(hidden, 6 * hidden, device),
        }
    }

    /// x: (n, clean + noisy, hidden); cond_silu: SiLU of the conditions, (n, groups, hidden).
    pub fn forward(
        &self,
        tokens: Tokens,
        cond_silu: Tensor<3>,
        rope: &RopeTable,
        keys: &KeyPattern,
        cache: Option<CacheUse>,
    ) -> Tokens {
        let Tokens { x, clean } = tokens;
        let mut ada = self
            .ada_ln_modulation
            .forward(cond_silu)
            .chunk(6, 2)
            .into_iter();
        let mut next = || ada.next().expect("six modulation chunks");
        let (shift_msa, scale_msa, gate_msa) = (next(), next(), next());
        let (shift_mlp, scale_mlp, gate_mlp) = (next(), next(), next());

        let h = modulate_noisy(self.norm1.forward(x.clone()), clean, shift_msa, scale_msa);
        let h = self.attn.forward(h, rope, keys, cache);
        let x = x + gate_noisy(h, clean, gate_msa);
        let h = modulate_noisy(self.norm2.forward(x.clone()), clean, shift_mlp, scale_mlp);
        let x = x.clone() + gate_noisy(self.mlp.forward(h), clean, gate_mlp);
        Tokens { x, clean }
    }
}

/// Final RMSNorm + adaLN + linear to token values, on noisy tokens only.
#[derive(Module, Debug)]
pub struct FinalLayer {
    pub norm_final: RmsNorm,
    pub linear: Linear,
    pub ada_ln_modulation: Linear,
}

impl FinalLayer {
    pub fn new(hidden: usize, out: usize, eps: f64, device: &Device) -> Self {
        Self {
            norm_final: RmsNorm::new(hidden, eps, device),
            linear: zero_linear(hidden, out, device),
            ada_ln_modulation: zero_linear(hidden, 2 * hidden, device),
        }
    }

    /// noisy: (n, groups * block, hidden), cond_silu: (n, groups, hidden) -> (n, groups * block, out)
    pub fn forward(&self, noisy: Tensor<3>, cond_silu: Tensor<3>) -> Tensor<3> {
        let mut ada = self
            .ada_ln_modulation
            .forward(cond_silu)
            .chunk(2, 2)
            .into_iter();
        let shift = ada.next().expect("shift");
        let scale = ada.next().expect("scale");
        let h = modulate_noisy(self.norm_final.forward(noisy), 0, shift, scale);
        self.linear.forward(h)
    }
}

/// A linear layer initialised to zero (adaLN-Zero and the output layer).
fn zero_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    burn::nn::LinearConfig::new(d_in, d_out)
        .with_initializer(burn::nn::Initializer::Zeros)
        .init(device)
}

/// Applies per-group values to x (n, tokens, hidden) viewed as (n, groups, group_len, hidden):
/// the `clean` leading tokens form groups that get `identity`, and each of the `values.dims()[1]`
/// noisy groups gets its own row of `values` (n, noisy groups, hidden).
///
/// Broadcasting over all tokens at once costs less than cutting the clean tokens out and
/// concatenating them back, and is exact: the identity rows add zero or multiply by one.
fn per_group(
    x: Tensor<3>,
    clean: usize,
    values: Tensor<3>,
    identity: f32,
    apply: impl FnOnce(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> Tensor<3> {
    let [n, tokens, hidden] = x.dims();
    let noisy_groups = values.dims()[1];
    let group_len = (tokens - clean) / noisy_groups;
    debug_assert_eq!(clean % group_len, 0, "clean tokens come in whole blocks");
    let clean_groups = clean / group_len;
    let values = if clean_groups == 0 {
        values
    } else {
        let identity = Tensor::full([n, clean_groups, hidden], identity, &values.device());
        Tensor::cat(vec![identity, values], 1)
    };
    let grouped = x.reshape([n, clean_groups + noisy_groups, group_len, hidden]);
    apply(grouped, values.unsqueeze_dim::<4>(2)).reshape([n, tokens, hidden])
}

/// x * (1 + scale) + shift on the noisy tokens, x on the clean ones; shift, scale: (n, groups,
/// hidden).
fn modulate_noisy(x: Tensor<3>, clean: usize, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    let shifted = per_group(x, clean, scale, 0.0, |x, scale| x * (scale + 1.0));
    per_group(shifted, clean, shift, 0.0, |x, shift| x + shift)
}

/// gate * x on the noisy tokens, x on the clean ones; gate: (n, groups, hidden).
fn gate_noisy(x: Tensor<3>, clean: usize, gate: Tensor<3>) -> Tensor<3> {
    per_group(x, clean, gate, 1.0, |x, gate| x * gate)
}

/// SiLU of the conditions, shared by every adaLN in the network.
pub fn cond_silu(cond: Tensor<3>) -> Tensor<3> {
    silu(cond)
}
