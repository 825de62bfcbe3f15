//! Where a VAE is: a local diffusers folder first; then a VAE built into the binary, by name;
//! with the `hub` cargo feature, a Hugging Face repository id (`stabilityai/sd-vae-ft-ema`, or
//! `facebook/DiT-XL-2-256/vae` for a model's subfolder), fetched into and read from the hub's
//! cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::Device;

use super::{Vae, VaeConfig};
use crate::checkpoint::tensors::SafetensorsFile;

/// A diffusers VAE folder compiled into the binary, for the built-in latent models that record
/// it by name.
pub struct BuiltInVae {
    pub name: &'static str,
    config: &'static str,
    weights: &'static [u8],
}

/// The frame VAE of the built-in Moving MNIST model (`acdit train-vae`).
pub const BUILT_IN_VAES: &[BuiltInVae] = &[BuiltInVae {
    name: "moving-mnist",
    config: include_str!("../../weights/moving-mnist/vae/config.json"),
    weights: include_bytes!("../../weights/moving-mnist/vae/diffusion_pytorch_model.safetensors"),
}];

/// The built-in VAE called `name`, if there is one.
pub fn built_in(name: &str) -> Option<&'static BuiltInVae> {
    BUILT_IN_VAES.iter().find(|v| v.name == name)
}

impl BuiltInVae {
    pub fn load(&self, device: &Device) -> Result<Vae> {
        let label = PathBuf::from(format!("<built-in VAE {}>", self.name));
        let config = VaeConfig::from_json(self.config, &label.join("config.json"))?;
        let file = SafetensorsFile::from_bytes(&label, self.weights.to_vec())?;
        Vae::new(&config, device)
            .load(&file.f32_tensors()?)
            .with_context(|| format!("loading {}", label.display()))
    }
}

/// The folder holding `config.json` and the weights for `--vae NAME`.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let local = Path::new(name);
    if local.is_dir() {
        return Ok(local.to_path_buf());
    }
    let Some(repo) = HubRepo::parse(name) else {
        let built_in: Vec<&str> = BUILT_IN_VAES.iter().map(|v| v.name).collect();
        bail!(
            "--vae {name}: no such folder (a diffusers folder with config.json and {}), nor a built-in VAE {built_in:?}",
            super::WEIGHTS_FILE
        );
    };
    fetch(&repo)
}

/// `owner/name` with an optional subfolder.
#[derive(Debug, PartialEq)]
struct HubRepo {
    id: String,
    subfolder: Option<String>,
}

impl HubRepo {
    fn parse(name: &str) -> Option<Self> {
        let parts: Vec<&str> = name.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return None;
        }
        Some(HubRepo {
            id: format!("{}/{}", parts[0], parts[1]),
            subfolder: parts.get(2).map(|s| s.to_string()),
        })
    }

    fn file(&self, name: &str) -> String {
        match &self.subfolder {
            Some(sub) => format!("{sub}/{name}"),
            None => name.to_string(),
        }
    }
}

#[cfg(feature = "hub")]
fn fetch(repo: &HubRepo) -> Result<PathBuf> {
    use anyhow::Context;
    let api = hf_hub::api::sync::Api::new().context("opening the Hugging Face hub cache")?;
    let model = api.model(repo.id.clone());
    let mut folder = None;
    for file in ["config.json", super::WEIGHTS_FILE] {
        let path = model
            .get(&repo.file(file))
            .with_context(|| format!("fetching {} from {}", repo.file(file), repo.id))?;
        folder = path.parent().map(PathBuf::from);
    }
    folder.context("the hub returned a file without a folder")
}

#[cfg(not(feature = "hub"))]
fn fetch(repo: &HubRepo) -> Result<PathBuf> {
    bail!(
        "--vae {}: no such folder. To download it from the Hugging Face hub, rebuild with \
         `--features hub`; or download {} and {} into a folder and pass that",
        repo.id,
        repo.file("config.json"),
        repo.file(super::WEIGHTS_FILE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_with_an_optional_subfolder() {
        assert_eq!(
            HubRepo::parse("facebook/DiT-XL-2-256/vae"),
            Some(HubRepo {
                id: "facebook/DiT-XL-2-256".into(),
                subfolder: Some("vae".into())
            })
        );
        assert_eq!(
            HubRepo::parse("stabilityai/sd-vae-ft-ema")
                .unwrap()
                .file("config.json"),
            "config.json"
        );
        assert_eq!(HubRepo::parse("no-slash"), None);
        assert_eq!(HubRepo::parse("a/b/c/d"), None);
        let message = resolve("./definitely/not/here").unwrap_err().to_string();
        assert!(message.contains("no such folder"), "{message}");
    }
}
