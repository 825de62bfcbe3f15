//! Finding the weights and the config in any checkpoint a user may hand us: our training
//! checkpoints, our exported weights, a reference state dict in safetensors, or the release's
//! PyTorch `.pt` files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::tensors::{NamedTensors, SafetensorsFile};
use super::torch::TorchCheckpoint;
use crate::config::ModelConfig;

/// Which copy of the weights to take from a file that has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsKind {
    Model,
    Ema,
}

impl WeightsKind {
    fn key(self) -> &'static str {
        match self {
            WeightsKind::Model => "model",
            WeightsKind::Ema => "ema",
        }
    }
}

/// Weights ready to load, with the config they fit and the class names if the file has them.
pub struct LoadedWeights {
    pub config: ModelConfig,
    pub tensors: NamedTensors,
    pub class_names: Option<Vec<String>>,
}

/// Reads `path`. The config comes from `config` if given, else from the file's own metadata,
/// else from a `config.json` beside the file (as in the reference's vector folders).
pub fn load_weights(
    path: &Path,
    kind: WeightsKind,
    config: Option<&Path>,
) -> Result<LoadedWeights> {
    let is_torch = path
        .extension()
        .is_some_and(|e| e == "pt" || e == "pth" || e == "bin");
    let (tensors, embedded_config, class_names) = if is_torch {
        let checkpoint = TorchCheckpoint::open(path)?;
        let key = if checkpoint.keys().iter().any(|k| k == kind.key()) {
            kind.key()
        } else {
            ""
        };
        (checkpoint.state_dict(key)?, None, None)
    } else {
        read_safetensors_weights(path, kind)?
    };
    let config = match (config, embedded_config) {
        (Some(file), _) => {
            ModelConfig::from_file(file).or_else(|_| ModelConfig::from_reference_json(file))?
        }
        (None, Some(config)) => config,
        (None, None) => {
            let beside = sibling_config(path).with_context(|| {
                format!(
                    "{} carries no model config: pass --config FILE (JSON or TOML)",
                    path.display()
                )
            })?;
            ModelConfig::from_reference_json(&beside)?
        }
    };
    Ok(LoadedWeights {
        config,
        tensors,
        class_names,
    })
}

fn sibling_config(path: &Path) -> Option<PathBuf> {
    let candidate = path.parent()?.join("config.json");
    candidate.exists().then_some(candidate)
}

type SafetensorsWeights = (NamedTensors, Option<ModelConfig>, Option<Vec<String>>);

/// Our files carry `model_config` (and `class_names`) metadata; training checkpoints prefix the
/// weights with `model.` / `ema.`. A plain reference state dict has neither.
fn read_safetensors_weights(path: &Path, kind: WeightsKind) -> Result<SafetensorsWeights> {
    let file = SafetensorsFile::open(path)?;
    let metadata = file.metadata();
    let config = match metadata.get("model_config") {
        Some(json) => Some(
            serde_json::from_str::<ModelConfig>(json)
                .with_context(|| format!("{}: bad model_config metadata", path.display()))?,
        ),
        None => None,
    };
    let class_names = match metadata.get("class_names") {
        Some(json) => Some(
            serde_json::from_str(json)
                .with_context(|| format!("{}: bad class_names", path.display()))?,
        ),
        None => None,
    };
    let names = file.names();
    let prefix = format!("{}.", kind.key());
    let prefixed = names
        .iter()
        .any(|n| n.starts_with("model.") || n.starts_with("ema."));
    let mut tensors = NamedTensors::new();
    for name in &names {
        if !prefixed {
            tensors.insert(name.clone(), file.f32(name)?);
        } else if let Some(rest) = name.strip_prefix(&prefix) {
            tensors.insert(rest.to_string(), file.f32(name)?);
        }
    }
    if tensors.is_empty() {
        bail!(
            "{}: no `{}` weights in this file",
            path.display(),
            kind.key()
        );
    }
    Ok((tensors, config, class_names))
}
