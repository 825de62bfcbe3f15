//! The DiT block with adaLN-Zero, and the final layer. Clean tokens get no modulation: they
//! run as their own stream beside the noisy ones (see [`Streams`]).

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use super::attention::{Attention, CacheUse, KeyPattern, StreamRopes, Streams};
use super::norm::RmsNorm;
use super::rope::RopeTable;
use super::{linear, linear_tokens};
use crate::fused::{frame_conv, gated_residual, gelu_tanh, modulate};

/// Tanh-GELU MLP, hidden -> ratio * hidden -> hidden.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    /// `mlp_frame_conv`: the weights (8 offsets, inner) of a depthwise 3x3 convolution over each
    /// frame's token grid, added to fc1's output; zero at the start.
    pub frame_conv: Option<Param<Tensor<2>>>,
    /// The side of a frame's token grid, which the convolution runs over.
    #[module(skip)]
    frame_side: usize,
}

impl Mlp {
    /// `frame_side`: Some(tokens a frame's side) for the frame convolution.
    pub fn new(hidden: usize, inner: usize, frame_side: Option<usize>, device: &Device) -> Self {
        Self {
            fc1: linear(hidden, inner, true, device),
            fc2: linear(inner, hidden, true, device),
            frame_conv: frame_side.map(|_| Param::from_tensor(Tensor::zeros([8, inner], device))),
            frame_side: frame_side.unwrap_or(0),
        }
    }

    /// x: (n, tokens, hidden), whole frames when the MLP has the frame convolution.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut h = linear_tokens(&self.fc1, x);
        if let Some(weight) = &self.frame_conv {
            h = frame_conv(h, weight.val(), self.frame_side);
        }
        linear_tokens(&self.fc2, gelu_tanh(h))
    }
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
    /// `frame_side`: see [`Mlp::new`].
    pub fn new(
        hidden: usize,
        heads: usize,
        mlp_hidden: usize,
        eps: f64,
        frame_side: Option<usize>,
        device: &Device,
    ) -> Self {
        Self {
            norm1: RmsNorm::new(hidden, eps, device),
            attn: Attention::new(hidden, heads, eps, device),
            norm2: RmsNorm::new(hidden, eps, device),
            mlp: Mlp::new(hidden, mlp_hidden, frame_side, device),
            ada_ln_modulation: zero_linear(hidden, 6 * hidden, device),
        }
    }

    /// x: each stream (n, tokens, hidden), the noisy one in `groups` equal groups (one per
    /// diffusion block), each modulated by its own condition; cond_silu: SiLU of the conditions,
    /// (n, groups, hidden). The clean stream comes out only when `clean_read` (see
    /// [`Attention::forward`]).
    pub fn forward(
        &self,
        x: Streams<Tensor<3>>,
        cond_silu: Tensor<3>,
        ropes: &StreamRopes,
        keys: &KeyPattern,
        cache: Option<CacheUse>,
        clean_read: bool,
    ) -> Streams<Tensor<3>> {
        let mut ada = self
            .ada_ln_modulation
            .forward(cond_silu)
            .chunk(6, 2)
            .into_iter();
        let mut next = || ada.next().expect("six modulation chunks");
        let (shift_msa, scale_msa, gate_msa) = (next(), next(), next());
        let (shift_mlp, scale_mlp, gate_mlp) = (next(), next(), next());

        let Streams { clean, noisy } = x;
        let attn_in = Streams {
            clean: clean.clone().map(|x| self.norm1.forward(x)),
            noisy: modulate(self.norm1.forward(noisy.clone()), shift_msa, scale_msa),
        };
        let attn = self.attn.forward(attn_in, ropes, keys, cache, clean_read);
        let noisy = gated_residual(noisy, attn.noisy, gate_msa);
        let h = modulate(self.norm2.forward(noisy.clone()), shift_mlp, scale_mlp);
        let noisy = gated_residual(noisy, self.mlp.forward(h), gate_mlp);
        let clean = clean.zip(attn.clean).map(|(x, attn)| {
            let x = x + attn;
            x.clone() + self.mlp.forward(self.norm2.forward(x))
        });
        Streams { clean, noisy }
    }

    /// The clean path alone (a prefill, or the visual encoder): no modulation, attention as
    /// [`Attention::forward_clean`]. x: (n, tokens, hidden) -> (n, tokens, hidden).
    pub fn forward_clean(
        &self,
        x: Tensor<3>,
        rope: &RopeTable,
        bias: &Tensor<4>,
        cache: Option<CacheUse>,
    ) -> Tensor<3> {
        let attn = self
            .attn
            .forward_clean(self.norm1.forward(x.clone()), rope, bias, cache);
        let x = x + attn;
        x.clone() + self.mlp.forward(self.norm2.forward(x))
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
        let h = modulate(self.norm_final.forward(noisy), shift, scale);
        self.linear.forward(h)
    }
}

/// A linear layer initialised to zero (adaLN-Zero and the output layer).
fn zero_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    burn::nn::LinearConfig::new(d_in, d_out)
        .with_initializer(burn::nn::Initializer::Zeros)
        .init(device)
}
