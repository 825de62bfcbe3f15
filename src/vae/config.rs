//! The settings of a diffusers `AutoencoderKL`, read from its `config.json`.

use std::path::Path;

use serde::Deserialize;

/// Why a VAE config cannot build the network; names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: `{field}`: {reason}")]
pub struct VaeConfigError {
    path: String,
    field: &'static str,
    reason: String,
}

/// What the encoder and decoder are built from. Fields diffusers writes but that do not change
/// this architecture (`sample_size`, `force_upcast`, `_class_name`) are read and ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    /// Channels of each resolution level, the finest first; each level after the first halves
    /// the resolution.
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// SD-VAE has none; SD3's and Flux's VAEs shift latents before scaling.
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn default_act_fn() -> String {
    "silu".into()
}

fn yes() -> bool {
    true
}

impl VaeConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, VaeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| VaeConfigError {
            path: path.display().to_string(),
            field: "(file)",
            reason: e.to_string(),
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and checks the text of a `config.json`; errors name `path`.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, VaeConfigError> {
        let fail = |field, reason: String| VaeConfigError {
            path: path.display().to_string(),
            field,
            reason,
        };
        let config: VaeConfig =
            serde_json::from_str(text).map_err(|e| fail("(json)", e.to_string()))?;
        config
            .check()
            .map_err(|(field, reason)| fail(field, reason))?;
        Ok(config)
    }

    /// The settings this implementation builds: silu, the plain encoder and decoder blocks,
    /// channels divisible by the group count, no latent shift.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.act_fn != "silu" {
            return Err(("act_fn", format!("{} (only silu is built)", self.act_fn)));
        }
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(("block_out_channels", "empty".into()));
        }
        for (field, types, wanted) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != levels || types.iter().any(|t| t != wanted) {
                return Err((
                    field,
                    format!("{types:?}: expected {levels} x {wanted}, one per block_out_channels"),
                ));
            }
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| *c == 0 || c % self.norm_num_groups != 0)
        {
            return Err((
                "norm_num_groups",
                format!(
                    "{} does not divide every width of {:?}",
                    self.norm_num_groups, self.block_out_channels
                ),
            ));
        }
        if self.layers_per_block == 0 {
            return Err(("layers_per_block", "must be at least 1".into()));
        }
        for (field, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if value == 0 {
                return Err((field, "must be at least 1".into()));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err((
                "scaling_factor",
                format!("{} is not positive", self.scaling_factor),
            ));
        }
        if let Some(shift) = self.shift_factor {
            return Err((
                "shift_factor",
                format!("{shift}: shifted latents are not built"),
            ));
        }
        Ok(())
    }

    /// Pixels a latent covers along each side: 2^(levels - 1), 8 for SD-VAE.
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::conformance_dir;

    #[test]
    fn the_tiny_config_reads_and_a_bad_field_is_named() {
        let path = conformance_dir().join("vae_tiny/config.json");
        let config = VaeConfig::from_file(&path).unwrap();
        assert_eq!(config.block_out_channels, [32, 32, 64, 64]);
        assert_eq!(config.downsampling(), 8);
        let mut bad = config.clone();
        bad.norm_num_groups = 24;
        assert_eq!(bad.check().unwrap_err().0, "norm_num_groups");
        let mut bad = config;
        bad.up_block_types.pop();
        assert_eq!(bad.check().unwrap_err().0, "up_block_types");
    }
}
