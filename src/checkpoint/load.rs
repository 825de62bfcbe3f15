//! Finding the weights and the config in any checkpoint a user may hand us: the models built
//! into the binary, our training checkpoints, our exported weights, a reference state dict in
//! safetensors, or the release's PyTorch `.pt` files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::release::config_from_release;
use super::tensors::{NamedTensors, SafetensorsFile};
use super::torch::TorchCheckpoint;
use crate::choice::Choice;
use crate::config::ModelConfig;

/// Which copy of the weights to take from a file that has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    Model,
    Ema,
}

impl crate::choice::Choice for WeightsKind {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("model", WeightsKind::Model), ("ema", WeightsKind::Ema)];
}

/// A model compiled into the binary: its EMA weights with the config and class names in the
/// file's metadata, so that sampling needs no file beside the program.
#[derive(Debug)]
pub struct BuiltInModel {
    pub name: &'static str,
    safetensors: &'static [u8],
}

/// The built-in models, by the name `--model` takes.
pub const BUILT_IN_MODELS: &[BuiltInModel] = &[
    BuiltInModel {
        name: "mnist",
        safetensors: include_bytes!("../../weights/mnist/ema.safetensors"),
    },
    BuiltInModel {
        name: "moving-mnist",
        safetensors: include_bytes!("../../weights/moving-mnist/ema.safetensors"),
    },
];

/// The built-in model called `name`; the error lists them.
pub fn built_in_model(name: &str) -> Result<&'static BuiltInModel> {
    BUILT_IN_MODELS
        .iter()
        .find(|m| m.name == name)
        .with_context(|| {
            let names: Vec<&str> = BUILT_IN_MODELS.iter().map(|m| m.name).collect();
            format!("no built-in model `{name}`: the built-in models are {names:?}")
        })
}

/// Where weights come from.
#[derive(Debug, Clone, Copy)]
pub enum WeightsSource<'a> {
    File(&'a Path),
    BuiltIn(&'static BuiltInModel),
}

/// Weights ready to load, with the config they fit and the class names if the file has them.
pub struct LoadedWeights {
    pub config: ModelConfig,
    pub tensors: NamedTensors,
    pub class_names: Option<Vec<String>>,
    /// The guidance scale the file's makers sample with: the one our training runs record, the
    /// paper's for a release checkpoint.
    pub guidance: Option<f64>,
    /// The VAE whose latents the model makes, as our latent runs record it.
    pub vae: Option<String>,
}

/// The paper's guidance scales: 1.5 for ImageNet, 2.5 for UCF-101.
pub const RELEASE_IMAGE_GUIDANCE: f64 = 1.5;
pub const RELEASE_VIDEO_GUIDANCE: f64 = 2.5;

/// Reads the weights. The config comes from `config` if given, else from the file's own
/// metadata (ours) or run settings (the release's `args`), else from a `config.json` beside the
/// file (as in the reference's vector folders and our exported weights).
pub fn load_weights(
    source: WeightsSource,
    kind: WeightsKind,
    config: Option<&Path>,
) -> Result<LoadedWeights> {
    let path = match source {
        WeightsSource::BuiltIn(model) => {
            let label = PathBuf::from(format!("<built-in model {}>", model.name));
            let file = SafetensorsFile::from_bytes(&label, model.safetensors.to_vec())?;
            let read = read_safetensors_weights(&file, &label, kind)?;
            let config = read
                .config
                .context("the built-in model carries no config")?;
            return Ok(LoadedWeights {
                config,
                tensors: read.tensors,
                class_names: read.class_names,
                guidance: read.guidance,
                vae: read.vae,
            });
        }
        WeightsSource::File(path) => path,
    };
    let is_torch = path
        .extension()
        .is_some_and(|e| e == "pt" || e == "pth" || e == "bin");
    let read = if is_torch {
        read_torch_weights(path, kind, config.is_none())?
    } else {
        read_safetensors_weights(&SafetensorsFile::open(path)?, path, kind)?
    };
    let config = match (config, read.config) {
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
    let release_guidance = if config.temporal_len > 1 {
        RELEASE_VIDEO_GUIDANCE
    } else {
        RELEASE_IMAGE_GUIDANCE
    };
    let guidance = read
        .guidance
        .or(read.from_release.then_some(release_guidance));
    Ok(LoadedWeights {
        config,
        tensors: read.tensors,
        class_names: read.class_names,
        guidance,
        vae: read.vae,
    })
}

fn sibling_config(path: &Path) -> Option<PathBuf> {
    let candidate = path.parent()?.join("config.json");
    candidate.exists().then_some(candidate)
}

/// What one weights file holds besides the tensors.
struct FileWeights {
    tensors: NamedTensors,
    config: Option<ModelConfig>,
    class_names: Option<Vec<String>>,
    vae: Option<String>,
    guidance: Option<f64>,
    /// A torch checkpoint with the release's `args`.
    from_release: bool,
}

/// A release checkpoint `{"model", "ema", "args"}` (or a bare state dict). With `want_config`, the
/// config is built from `args` when the file has them.
fn read_torch_weights(path: &Path, kind: WeightsKind, want_config: bool) -> Result<FileWeights> {
    let checkpoint = TorchCheckpoint::open(path)?;
    let key = kind.name();
    let has_key = checkpoint.keys().iter().any(|k| k == key);
    // The release's published files hold only `model`: take it when no EMA copy exists.
    let key = match (has_key, checkpoint.keys().iter().any(|k| k == "model")) {
        (true, _) => key,
        (false, true) => "model",
        (false, false) => "",
    };
    let tensors = checkpoint.state_dict(key)?;
    let args = checkpoint.args();
    let from_release = !args.is_empty();
    let config = if want_config && from_release {
        Some(
            config_from_release(&args, &tensors)
                .with_context(|| format!("{}: building the model from args", path.display()))?,
        )
    } else {
        None
    };
    Ok(FileWeights {
        tensors,
        config,
        class_names: None,
        vae: None,
        guidance: None,
        from_release,
    })
}

/// Our files carry `model_config` (and `class_names`) metadata; training checkpoints prefix the
/// weights with `model.` / `ema.`. A plain reference state dict has neither.
fn read_safetensors_weights(
    file: &SafetensorsFile,
    path: &Path,
    kind: WeightsKind,
) -> Result<FileWeights> {
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
    let guidance = match metadata.get("guidance") {
        Some(text) => Some(
            text.parse::<f64>()
                .ok()
                .filter(|g| crate::diffusion::blockwise::is_guidance_scale(*g))
                .with_context(|| {
                    format!(
                        "{}: guidance metadata `{text}` is not a scale of at least 1",
                        path.display()
                    )
                })?,
        ),
        None => None,
    };
    let key = kind.name();
    let names = file.names();
    let prefix = format!("{key}.");
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
        bail!("{}: no `{key}` weights in this file", path.display());
    }
    Ok(FileWeights {
        tensors,
        config,
        class_names,
        vae: metadata.get("vae").cloned(),
        guidance,
        from_release: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::conformance_dir;

    #[test]
    fn release_checkpoints_carry_the_papers_guidance_and_ours_their_runs() {
        for (folder, guidance) in [
            ("img_tiny", RELEASE_IMAGE_GUIDANCE),
            ("vid_tiny", RELEASE_VIDEO_GUIDANCE),
        ] {
            let path = conformance_dir().join(folder).join("checkpoint.pt");
            let loaded = load_weights(WeightsSource::File(&path), WeightsKind::Ema, None).unwrap();
            assert_eq!(loaded.guidance, Some(guidance), "{folder}");
        }
        let built_in = built_in_model("mnist").unwrap();
        let loaded =
            load_weights(WeightsSource::BuiltIn(built_in), WeightsKind::Ema, None).unwrap();
        assert_eq!((loaded.guidance, loaded.vae), (None, None));
        let built_in = built_in_model("moving-mnist").unwrap();
        let loaded =
            load_weights(WeightsSource::BuiltIn(built_in), WeightsKind::Ema, None).unwrap();
        assert_eq!(
            loaded.guidance,
            Some(crate::train::TrainConfig::moving_mnist().guidance)
        );
    }

    #[test]
    fn bad_guidance_metadata_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = NamedTensors::from([(
            "w".to_string(),
            crate::checkpoint::tensors::HostTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        )]);
        for bad in ["abc", "0.5", "NaN"] {
            let path = dir.path().join("weights.safetensors");
            let metadata = [("guidance".to_string(), bad.to_string())].into();
            crate::checkpoint::tensors::write_safetensors_atomic(&path, &tensors, Some(metadata))
                .unwrap();
            let message = load_weights(WeightsSource::File(&path), WeightsKind::Ema, None)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(
                message.contains("weights.safetensors") && message.contains(bad),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn the_built_in_video_model_is_the_moving_mnist_preset() {
        let built_in = built_in_model("moving-mnist").unwrap();
        let loaded =
            load_weights(WeightsSource::BuiltIn(built_in), WeightsKind::Ema, None).unwrap();
        assert_eq!(
            loaded.config,
            crate::train::TrainConfig::moving_mnist().model
        );
        assert_eq!(loaded.class_names.map(|names| names.len()), Some(10));
        // It draws in the built-in frame VAE's latents, which decode to 32x32 grey frames.
        assert_eq!(loaded.vae.as_deref(), Some("moving-mnist"));
        let device = burn::prelude::Device::flex();
        let sampling = crate::testing::sampling_model(
            WeightsSource::BuiltIn(built_in),
            WeightsKind::Ema,
            &device,
        );
        assert_eq!(sampling.frame_side(), 32);
        let vae = sampling.vae.as_ref().unwrap().vae.config();
        assert_eq!((vae.in_channels, vae.out_channels), (1, 1));
    }
}
