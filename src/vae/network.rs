//! The pieces of diffusers' `Encoder` and `Decoder`: ResNet blocks with GroupNorm and SiLU,
//! stride-2 down-sampling, nearest-neighbour up-sampling, and the single-head self-attention of
//! the middle block. Field names are diffusers' own, so the tensor names follow from the tree.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::ops::PadMode;

use super::config::VaeConfig;

/// GroupNorm's epsilon everywhere in the SD-VAE.
const NORM_EPS: f64 = 1e-6;

fn norm(config: &VaeConfig, channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(config.norm_num_groups, channels)
        .with_epsilon(NORM_EPS)
        .init(device)
}

/// A 3x3 convolution that keeps the size (padding 1), or a 1x1 one.
fn conv(c_in: usize, c_out: usize, kernel: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// A 1x1 projection of the input when the width changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(config: &VaeConfig, c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            norm1: norm(config, c_in, device),
            conv1: conv(c_in, c_out, 3, device),
            norm2: norm(config, c_out, device),
            conv2: conv(c_out, c_out, 3, device),
            conv_shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(project) => project.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// Self-attention over all positions with one head as wide as the channels, and a residual.
#[derive(Module, Debug)]
pub struct MidAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// diffusers' `to_out.0` (its `to_out.1` is a dropout).
    pub to_out: Linear,
}

impl MidAttention {
    fn new(config: &VaeConfig, channels: usize, device: &Device) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: norm(config, channels, device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: linear(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([n, c, h * w])
            .swap_dims(1, 2);
        let q = self.to_q.forward(tokens.clone());
        let k = self.to_k.forward(tokens.clone());
        let v = self.to_v.forward(tokens);
        let scores = q.matmul(k.swap_dims(1, 2)) * (c as f64).powf(-0.5);
        let attended = softmax(scores, 2).matmul(v);
        let out = self
            .to_out
            .forward(attended)
            .swap_dims(1, 2)
            .reshape([n, c, h, w]);
        out + x
    }
}

/// ResNet, attention, ResNet at the coarsest level.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock>,
    /// One layer, or none when `mid_block_add_attention` is off.
    pub attentions: Vec<MidAttention>,
}

impl MidBlock {
    fn new(config: &VaeConfig, channels: usize, device: &Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| ResnetBlock::new(config, channels, channels, device))
                .collect(),
            attentions: if config.mid_block_add_attention {
                vec![MidAttention::new(config, channels, device)]
            } else {
                Vec::new()
            },
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x);
        for attention in &self.attentions {
            x = attention.forward(x);
        }
        self.resnets[1].forward(x)
    }
}

/// Halves the resolution: pad one row and column at the bottom and right, then a 3x3 stride-2
/// convolution without padding, as diffusers' `Downsample2D` does.
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
}

impl Downsample {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv
            .forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }
}

/// Doubles the resolution: each pixel repeated 2x2 (nearest), then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let repeated = x
            .reshape([n, c, h, 1, w, 1])
            .expand([n, c, h, 2, w, 2])
            .reshape([n, c, 2 * h, 2 * w]);
        self.conv.forward(repeated)
    }
}

#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    /// One, except at the coarsest level.
    pub downsamplers: Vec<Downsample>,
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    /// One, except at the finest level.
    pub upsamplers: Vec<Upsample>,
}

/// Pixels (n, in_channels, H, W) -> the diagonal Gaussian's moments (n, 2 latent_channels,
/// H / 8, W / 8) before `quant_conv`.
#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// `count` ResNet blocks from `c_in` channels to `c_out`; the first one changes the width.
fn resnets(
    config: &VaeConfig,
    c_in: usize,
    c_out: usize,
    count: usize,
    device: &Device,
) -> Vec<ResnetBlock> {
    (0..count)
        .map(|i| ResnetBlock::new(config, if i == 0 { c_in } else { c_out }, c_out, device))
        .collect()
}

impl Encoder {
    pub fn new(config: &VaeConfig, device: &Device) -> Self {
        let widths = &config.block_out_channels;
        let last = *widths.last().expect("checked: at least one level");
        let down_blocks = widths
            .iter()
            .enumerate()
            .map(|(level, &c_out)| DownBlock {
                resnets: resnets(
                    config,
                    widths[level.saturating_sub(1)],
                    c_out,
                    config.layers_per_block,
                    device,
                ),
                downsamplers: if level + 1 < widths.len() {
                    let conv = Conv2dConfig::new([c_out, c_out], [3, 3])
                        .with_stride([2, 2])
                        .init(device);
                    vec![Downsample { conv }]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Self {
            conv_in: conv(config.in_channels, widths[0], 3, device),
            down_blocks,
            mid_block: MidBlock::new(config, last, device),
            conv_norm_out: norm(config, last, device),
            conv_out: conv(last, 2 * config.latent_channels, 3, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            for down in &block.downsamplers {
                x = down.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// Latents (n, latent_channels, h, w), after `post_quant_conv`, -> pixels (n, out_channels,
/// 8h, 8w).
#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn new(config: &VaeConfig, device: &Device) -> Self {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(level, &c_out)| UpBlock {
                resnets: resnets(
                    config,
                    reversed[level.saturating_sub(1)],
                    c_out,
                    config.layers_per_block + 1,
                    device,
                ),
                upsamplers: if level + 1 < reversed.len() {
                    vec![Upsample {
                        conv: conv(c_out, c_out, 3, device),
                    }]
                } else {
                    Vec::new()
                },
            })
            .collect();
        let finest = *reversed.last().expect("checked: at least one level");
        Self {
            conv_in: conv(config.latent_channels, reversed[0], 3, device),
            mid_block: MidBlock::new(config, reversed[0], device),
            up_blocks,
            conv_norm_out: norm(config, finest, device),
            conv_out: conv(finest, config.out_channels, 3, device),
        }
    }

    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            for up in &block.upsamplers {
                x = up.forward(x);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}
