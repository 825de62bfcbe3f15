//! Model settings: every number that shapes the network, the token layout and RoPE.
//!
//! The field names follow the reference's `config.json` (see `../shared/conformance`), so a
//! conformance folder's config loads as it is.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Shape and size of an ACDiT model.
///
/// A picture (or video) of `in_channels x (temporal_len frames) x img_hw x img_hw` pixels is cut
/// into patches of `patch_size x patch_size`; each patch is one token of `latent_size`
/// (= channels * patch^2) values. The `spatial_len * temporal_len` tokens are split into `ar_len`
/// blocks of `block_size` tokens: square tiles for images (`square_block`), groups of frames for
/// video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    /// Values in one token: `in_channels * patch_size^2`.
    pub latent_size: usize,
    /// Tokens in one autoregressive block.
    pub block_size: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Real classes; the label `num_classes` is the null label used for guidance.
    pub num_classes: usize,
    /// Number of blocks generated one after the other.
    pub ar_len: usize,
    /// Frames (1 for images).
    pub temporal_len: usize,
    /// Tokens in one frame.
    pub spatial_len: usize,
    /// Images: blocks are square tiles of tokens in raster order. Video: blocks are frame groups.
    pub square_block: bool,
    /// Pixel height and width of a frame.
    pub img_hw: usize,
    pub head_dim: usize,
    /// RoPE base per axis: `100 * (floor(8 * len / pi) / 100 + 1)` in the reference.
    pub rope_bases: Vec<f64>,
    /// Head dimensions given to each axis, summing to `head_dim`.
    pub rope_split_dims: Vec<usize>,
    /// Positions per axis: (rows, columns) or (frames, rows, columns).
    pub rope_max_lens: Vec<usize>,
    /// Probability that a training label is replaced by the null label.
    #[serde(default = "default_class_dropout")]
    pub class_dropout_prob: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_eps: f64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Video: each token's embedding also reads the 8 tokens around it in its frame, so that a
    /// motion by part of a patch is a change seen within one token (not in the reference).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub neighbour_embedding: bool,
    /// Video: every MLP adds to its inner activations a depthwise 3x3 convolution of them over
    /// each frame's token grid (SegFormer's Mix-FFN), so a motion by part of a patch can be
    /// followed by blending neighbours, which attention alone learns slowly (not in the
    /// reference).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mlp_frame_conv: bool,
}

fn default_class_dropout() -> f64 {
    0.1
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_mlp_ratio() -> f64 {
    4.0
}

/// A setting that does not fit the others; names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The named sizes of the paper (depth x hidden, head dim 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 12 layers x 768 (132M at ImageNet 256).
    B,
    /// 24 layers x 1024 (460M).
    L,
    /// 28 layers x 1152 (677M).
    Xl,
    /// 32 layers x 1280 (954M).
    H,
}

impl Preset {
    /// The preset a release checkpoint's `args.model` names (`ACDiT-XL`), if any.
    pub fn from_release_name(name: &str) -> Option<Self> {
        match name {
            "ACDiT-B" => Some(Preset::B),
            "ACDiT-L" => Some(Preset::L),
            "ACDiT-XL" => Some(Preset::Xl),
            "ACDiT-H" => Some(Preset::H),
            _ => None,
        }
    }

    /// (depth, hidden size).
    pub fn size(self) -> (usize, usize) {
        match self {
            Preset::B => (12, 768),
            Preset::L => (24, 1024),
            Preset::Xl => (28, 1152),
            Preset::H => (32, 1280),
        }
    }
}

/// The shape of a video model, for [`ModelConfig::video`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoShape {
    pub channels: usize,
    /// Pixel height and width of a frame.
    pub frame_size: usize,
    pub patch: usize,
    /// Frames of a whole clip (the trained length).
    pub frames: usize,
    /// Frames in one autoregressive block.
    pub frames_per_block: usize,
    pub hidden: usize,
    pub depth: usize,
    pub num_classes: usize,
}

/// The RoPE base the reference derives from an axis length.
pub fn auto_rope_base(len: usize) -> f64 {
    let scaled = (8.0 * len as f64 / std::f64::consts::PI) as usize;
    ((scaled / 100 + 1) * 100) as f64
}

/// Reads a settings file: TOML for a `.toml` extension, else JSON. The error names the file.
pub fn read_config_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| file_error(e.to_string()))
    } else {
        serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))
    }
}

impl ModelConfig {
    /// An image model: `channels x size x size` pixels, square blocks of `block_side^2` tokens.
    ///
    /// RoPE splits the head dimension 1:1 over (row, column), as the reference does.
    #[allow(clippy::too_many_arguments)]
    pub fn image(
        channels: usize,
        size: usize,
        patch: usize,
        block_side: usize,
        hidden: usize,
        depth: usize,
        num_classes: usize,
    ) -> Self {
        let side = size / patch;
        let head_dim = 64;
        Self {
            patch_size: patch,
            in_channels: channels,
            latent_size: channels * patch * patch,
            block_size: block_side * block_side,
            hidden_size: hidden,
            depth,
            num_heads: hidden / head_dim,
            num_classes,
            ar_len: (side / block_side) * (side / block_side),
            temporal_len: 1,
            spatial_len: side * side,
            square_block: true,
            img_hw: size,
            head_dim,
            rope_bases: vec![auto_rope_base(side); 2],
            rope_split_dims: vec![head_dim / 2; 2],
            rope_max_lens: vec![side, side],
            class_dropout_prob: default_class_dropout(),
            rms_eps: default_rms_eps(),
            mlp_ratio: default_mlp_ratio(),
            neighbour_embedding: false,
            mlp_frame_conv: false,
        }
    }

    /// A video model: blocks of whole frames, 3D RoPE over (frame, row, column) with the head
    /// split 2:3:3 as in the reference (16/24/24 of 64).
    pub fn video(shape: &VideoShape) -> Self {
        let side = shape.frame_size / shape.patch;
        let head_dim = 64;
        let rope_max_lens = vec![shape.frames, side, side];
        Self {
            patch_size: shape.patch,
            in_channels: shape.channels,
            latent_size: shape.channels * shape.patch * shape.patch,
            block_size: shape.frames_per_block * side * side,
            hidden_size: shape.hidden,
            depth: shape.depth,
            num_heads: shape.hidden / head_dim,
            num_classes: shape.num_classes,
            ar_len: shape.frames / shape.frames_per_block,
            temporal_len: shape.frames,
            spatial_len: side * side,
            square_block: false,
            img_hw: shape.frame_size,
            head_dim,
            rope_bases: rope_max_lens.iter().map(|&l| auto_rope_base(l)).collect(),
            rope_split_dims: vec![16, 24, 24],
            rope_max_lens,
            class_dropout_prob: default_class_dropout(),
            rms_eps: default_rms_eps(),
            mlp_ratio: default_mlp_ratio(),
            neighbour_embedding: false,
            mlp_frame_conv: false,
        }
    }

    /// The token layout of this model over `frames` frames (a context, or a rollout past the
    /// trained length): for laying tokens out as pixels, not for running the model.
    pub fn with_frames(&self, frames: usize) -> Self {
        Self {
            temporal_len: frames,
            ar_len: self.blocks_for_frames(frames),
            ..self.clone()
        }
    }

    /// Blocks that make up `frames` frames: every block of the picture for an image model,
    /// whole frame groups for video.
    pub fn blocks_for_frames(&self, frames: usize) -> usize {
        if self.temporal_len == 1 && frames == 1 {
            self.ar_len
        } else {
            frames.div_ceil(self.frames_per_block())
        }
    }

    /// Frames in one block (video), 1 for images.
    pub fn frames_per_block(&self) -> usize {
        (self.block_size / self.spatial_len).max(1)
    }

    /// The ImageNet-256 setting of the paper for a preset: SD-VAE latents 32x32x4, patch 1,
    /// 1000 classes, 4 blocks of 16x16 tokens.
    pub fn imagenet256(preset: Preset) -> Self {
        let (depth, hidden) = preset.size();
        Self::image(4, 32, 1, 16, hidden, depth, 1000)
    }

    /// The benchmark setting of the core issue: 28x28 one-channel images, patch 2, blocks of
    /// 7x7 tokens (4 blocks), hidden 256, depth 6, 4 heads, 10 classes.
    pub fn bench_mnist() -> Self {
        Self::image(1, 28, 2, 7, 256, 6, 10)
    }

    /// Reads JSON or TOML (by extension) and checks it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = read_config_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the model part of a reference `config.json` (which also carries sampler settings).
    pub fn from_reference_json(path: &Path) -> Result<Self, ConfigError> {
        let mut value: serde_json::Value = read_config_file(path)?;
        if let Some(map) = value.as_object_mut() {
            map.remove("sample");
            map.remove("sampler");
        }
        let config: Self = serde_json::from_value(value).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Tokens in the whole sequence (one copy, clean or noisy).
    pub fn seq_len(&self) -> usize {
        self.ar_len * self.block_size
    }

    /// Tokens along a side of a frame (of an image, for image models).
    pub fn frame_side(&self) -> usize {
        self.img_hw / self.patch_size
    }

    /// Width of the MLP's hidden layer.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Checks that the settings fit together; the error names the first field that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("block_size", self.block_size),
            ("hidden_size", self.hidden_size),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("num_classes", self.num_classes),
            ("ar_len", self.ar_len),
            ("temporal_len", self.temporal_len),
            ("spatial_len", self.spatial_len),
            ("img_hw", self.img_hw),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.latent_size != self.in_channels * self.patch_size * self.patch_size {
            return Err(invalid(
                "latent_size",
                format!(
                    "{} != in_channels * patch_size^2 = {}",
                    self.latent_size,
                    self.in_channels * self.patch_size * self.patch_size
                ),
            ));
        }
        if !self.img_hw.is_multiple_of(self.patch_size) {
            return Err(invalid(
                "img_hw",
                format!(
                    "{} is not a multiple of patch_size {}",
                    self.img_hw, self.patch_size
                ),
            ));
        }
        let side = self.img_hw / self.patch_size;
        if self.spatial_len != side * side {
            return Err(invalid(
                "spatial_len",
                format!(
                    "{} != (img_hw / patch_size)^2 = {}",
                    self.spatial_len,
                    side * side
                ),
            ));
        }
        if self.ar_len * self.block_size != self.temporal_len * self.spatial_len {
            return Err(invalid(
                "block_size",
                format!(
                    "ar_len {} x block_size {} must equal temporal_len {} x spatial_len {}",
                    self.ar_len, self.block_size, self.temporal_len, self.spatial_len
                ),
            ));
        }
        if self.square_block {
            if self.temporal_len != 1 {
                return Err(invalid("square_block", "square blocks are for images only"));
            }
            let block_side = self.block_size.isqrt();
            if block_side * block_side != self.block_size || !side.is_multiple_of(block_side) {
                return Err(invalid(
                    "block_size",
                    format!(
                        "{} is not a square tile that divides the {side}x{side} token grid",
                        self.block_size
                    ),
                ));
            }
        } else if !self.block_size.is_multiple_of(self.spatial_len) {
            return Err(invalid(
                "block_size",
                format!(
                    "video blocks hold whole frames: {} is not a multiple of spatial_len {}",
                    self.block_size, self.spatial_len
                ),
            ));
        }
        if self.neighbour_embedding && self.square_block {
            return Err(invalid(
                "neighbour_embedding",
                "reads within whole frames, so not with square blocks",
            ));
        }
        if self.mlp_frame_conv && self.square_block {
            return Err(invalid(
                "mlp_frame_conv",
                "convolves whole frames, so not with square blocks",
            ));
        }
        if self.hidden_size != self.num_heads * self.head_dim {
            return Err(invalid(
                "num_heads",
                format!(
                    "num_heads {} x head_dim {} != hidden_size {}",
                    self.num_heads, self.head_dim, self.hidden_size
                ),
            ));
        }
        let axes = if self.temporal_len == 1 { 2 } else { 3 };
        for (field, len) in [
            ("rope_bases", self.rope_bases.len()),
            ("rope_split_dims", self.rope_split_dims.len()),
            ("rope_max_lens", self.rope_max_lens.len()),
        ] {
            if len != axes {
                return Err(invalid(field, format!("needs {axes} entries, found {len}")));
            }
        }
        if self.rope_split_dims.iter().sum::<usize>() != self.head_dim
            || self.rope_split_dims.iter().any(|d| d % 2 != 0)
        {
            return Err(invalid(
                "rope_split_dims",
                format!(
                    "{:?} must be even and sum to head_dim {}",
                    self.rope_split_dims, self.head_dim
                ),
            ));
        }
        let grid = if axes == 2 {
            vec![side, side]
        } else {
            vec![self.temporal_len, side, side]
        };
        if self
            .rope_max_lens
            .iter()
            .zip(&grid)
            .any(|(max, need)| max < need)
        {
            return Err(invalid(
                "rope_max_lens",
                format!(
                    "{:?} is shorter than the token grid {grid:?}",
                    self.rope_max_lens
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return Err(invalid("class_dropout_prob", "must be in [0, 1)"));
        }
        if self.mlp_ratio <= 0.0 {
            return Err(invalid("mlp_ratio", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_bench_config_validate() {
        for preset in [Preset::B, Preset::L, Preset::Xl, Preset::H] {
            ModelConfig::imagenet256(preset).validate().unwrap();
        }
        let bench = ModelConfig::bench_mnist();
        bench.validate().unwrap();
        assert_eq!(
            (bench.seq_len(), bench.ar_len, bench.latent_size),
            (196, 4, 4)
        );
    }

    #[test]
    fn bad_settings_name_their_field() {
        let mut config = ModelConfig::bench_mnist();
        config.block_size = 5;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("block_size"), "{message}");
        let mut config = ModelConfig::bench_mnist();
        config.num_heads = 3;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("num_heads")
        );
        let mut config = ModelConfig::bench_mnist();
        config.neighbour_embedding = true;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("neighbour_embedding"), "{message}");
        let mut config = ModelConfig::bench_mnist();
        config.mlp_frame_conv = true;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("mlp_frame_conv"), "{message}");
    }

    #[test]
    fn rope_base_follows_the_reference_rule() {
        assert_eq!(auto_rope_base(4), 100.0);
        assert_eq!(auto_rope_base(32), 100.0);
        assert_eq!(auto_rope_base(64), 200.0);
    }

    #[test]
    fn json_and_toml_round_trip() {
        let config = ModelConfig::bench_mnist();
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let json = dir.join("model.json");
        std::fs::write(&json, serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(ModelConfig::from_file(&json).unwrap(), config);
        let toml_path = dir.join("model.toml");
        std::fs::write(&toml_path, toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(ModelConfig::from_file(&toml_path).unwrap(), config);
    }
}
