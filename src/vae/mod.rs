//! The Stable Diffusion VAE (diffusers' `AutoencoderKL`), in which the paper's ImageNet and
//! UCF-101 models run: images to latents of 4 channels at 1/8 the size, and back.
//!
//! The network is built from a diffusers `config.json` and loads
//! `diffusion_pytorch_model.safetensors` by diffusers' tensor names ([`source`] finds the folder,
//! locally or, with the `hub` feature, in the Hugging Face cache). Latents handed to ACDiT are the
//! encoder's mean times `scaling_factor` (0.18215), as the reference's training reads them.

pub mod config;
mod network;
pub mod source;
pub mod train;

use std::path::Path;

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use rayon::prelude::*;

use crate::checkpoint::module_io::{Naming, expected_shapes, load_module};
use crate::checkpoint::tensors::{CheckpointError, read_safetensors};
pub use config::VaeConfig;
use network::{Decoder, Encoder};

/// The weights file of a diffusers model folder.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// diffusers' name for the parameter at a module path: GroupNorm's `gamma`/`beta` are
/// `weight`/`bias`, and the attention's output projection is `to_out.0`.
fn diffusers_name(path: &[String]) -> String {
    path.iter()
        .map(|part| match part.as_str() {
            "gamma" => "weight",
            "beta" => "bias",
            "to_out" => "to_out.0",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Only the attention's linear layers are rank 2, and PyTorch keeps them (out, in).
fn linear_is_transposed(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with(".weight")
}

/// How diffusers names the VAE's tensors.
pub const DIFFUSERS_NAMING: Naming = Naming {
    name: diffusers_name,
    transposed: linear_is_transposed,
};

/// The encoder's diagonal Gaussian, each (n, latent_channels, H / 8, W / 8).
pub struct Moments {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20], as diffusers does.
    pub logvar: Tensor<4>,
}

#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    #[module(skip)]
    config: VaeConfig,
}

impl Vae {
    /// A randomly initialised VAE of `config` (checked with [`VaeConfig::check`] first).
    pub fn new(config: &VaeConfig, device: &Device) -> Self {
        let channels = 2 * config.latent_channels;
        let one_by_one = |c| burn::nn::conv::Conv2dConfig::new([c, c], [1, 1]).init(device);
        Self {
            encoder: Encoder::new(config, device),
            decoder: Decoder::new(config, device),
            quant_conv: config.use_quant_conv.then(|| one_by_one(channels)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| one_by_one(config.latent_channels)),
            config: config.clone(),
        }
    }

    /// Reads a diffusers folder: `config.json` and `diffusion_pytorch_model.safetensors`. A
    /// missing, extra or misshapen tensor is an error naming it.
    pub fn from_dir(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = read_safetensors(&weights_path)?;
        Vae::new(&config, device)
            .load(&weights)
            .with_context(|| format!("loading the VAE from {}", weights_path.display()))
    }

    /// Takes every parameter from tensors under diffusers' names.
    pub fn load(
        self,
        weights: &crate::checkpoint::tensors::NamedTensors,
    ) -> Result<Self, CheckpointError> {
        load_module(self, weights, &DIFFUSERS_NAMING)
    }

    /// Every tensor name and shape a weights file must hold for this config.
    pub fn expected_shapes(&self) -> std::collections::BTreeMap<String, Vec<usize>> {
        expected_shapes(self, &DIFFUSERS_NAMING)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Images (n, in_channels, H, W) in [-1, 1], H and W multiples of 8 -> the posterior.
    pub fn encode(&self, images: Tensor<4>) -> Moments {
        let mut moments = self.encoder.forward(images);
        if let Some(quant) = &self.quant_conv {
            moments = quant.forward(moments);
        }
        let mut halves = moments.chunk(2, 1).into_iter();
        let mean = halves.next().expect("two halves");
        let logvar = halves.next().expect("two halves").clamp(-30.0, 20.0);
        Moments { mean, logvar }
    }

    /// Latents as the VAE makes them (not scaled) -> images, roughly in [-1, 1].
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(post) => post.forward(latents),
            None => latents,
        };
        self.decoder.forward(z)
    }

    /// What ACDiT is trained on: the posterior mean times `scaling_factor`.
    pub fn encode_scaled(&self, images: Tensor<4>) -> Tensor<4> {
        self.encode(images).mean * self.config.scaling_factor
    }

    /// The inverse of [`Vae::encode_scaled`]: ACDiT's latents -> images.
    pub fn decode_scaled(&self, latents: Tensor<4>) -> Tensor<4> {
        self.decode(latents / self.config.scaling_factor)
    }
}

/// A VAE with the name it was given by (`--vae`), which the files made with it record so that
/// their latents can be decoded later.
pub struct NamedVae {
    pub vae: Vae,
    pub name: String,
}

impl NamedVae {
    /// The VAE `name` names: a local folder, a VAE built into the binary, or a hub id (see
    /// [`source::resolve`]).
    pub fn load(name: &str, device: &Device) -> anyhow::Result<Self> {
        let vae = match source::built_in(name).filter(|_| !Path::new(name).is_dir()) {
            Some(built_in) => built_in.load(device)?,
            None => Vae::from_dir(&source::resolve(name)?, device)?,
        };
        Ok(Self {
            vae,
            name: name.to_string(),
        })
    }

    /// Grey frames (n, h, w) uint8 -> ACDiT latents (n, latent_channels, h / d, w / d), `batch`
    /// at a time: the posterior mean, scaled. A VAE of three input channels gets each frame as
    /// three equal ones. The batches run on rayon's threads, since one batch's small
    /// convolutions keep about one core busy; each is the same batch as in order, so the
    /// latents are too.
    pub fn encode_frames(
        &self,
        frames: &[u8],
        [h, w]: [usize; 2],
        batch: usize,
    ) -> anyhow::Result<Vec<f32>> {
        let config = self.vae.config();
        let (channels, down) = (config.in_channels, config.downsampling());
        if !matches!(channels, 1 | 3) || !h.is_multiple_of(down) || !w.is_multiple_of(down) {
            anyhow::bail!(
                "the VAE {} takes {channels} channel(s) in multiples of {down} pixels: it cannot encode grey {h}x{w} frames",
                self.name
            );
        }
        let device = self.vae.encoder.conv_in.weight.device();
        let batches: Vec<Vec<f32>> = frames
            .par_chunks(batch.max(1) * h * w)
            .map(|chunk| {
                let n = chunk.len() / (h * w);
                let grey: Vec<f32> = chunk.iter().map(|&b| crate::data::scale(b)).collect();
                let x = Tensor::<1>::from_floats(grey.as_slice(), &device).reshape([n, 1, h, w]);
                let x = match channels {
                    1 => x,
                    _ => Tensor::cat(vec![x.clone(), x.clone(), x], 1),
                };
                let z = self.vae.encode_scaled(x).into_data().convert::<f32>();
                z.try_to_vec::<f32>().expect("f32 latents")
            })
            .collect();
        Ok(batches.concat())
    }

    /// ACDiT latents (n, latent_channels, h, w) -> pixels (n, out_channels, d h, d w) for the
    /// VAE's down-sampling d (8 for the SD-VAE), `batch` at a time to bound the decoder's memory.
    /// Returns the pixels and their shape.
    pub fn decode_latents(
        &self,
        latents: &[f32],
        shape: [usize; 4],
        batch: usize,
    ) -> anyhow::Result<(Vec<f32>, [usize; 4])> {
        let [n, c, h, w] = shape;
        let config = self.vae.config();
        if c != config.latent_channels {
            anyhow::bail!(
                "the model makes latents of {c} channels, but the VAE {} decodes {}",
                self.name,
                config.latent_channels
            );
        }
        let device = self.vae.encoder.conv_in.weight.device();
        let per_item = c * h * w;
        let mut pixels = Vec::new();
        for chunk in latents[..n * per_item].chunks(batch.max(1) * per_item) {
            let rows = chunk.len() / per_item;
            let z = Tensor::<1>::from_floats(chunk, &device).reshape([rows, c, h, w]);
            let decoded = self.vae.decode_scaled(z).into_data().convert::<f32>();
            pixels.extend(decoded.try_to_vec::<f32>().expect("f32 pixels"));
        }
        let down = config.downsampling();
        Ok((pixels, [n, config.out_channels, h * down, w * down]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tensors::{HostTensor, NamedTensors};
    use crate::testing::conformance_dir;

    /// Every tensor of the real SD-VAE (`sd_vae_layout.json`), with random values, loads by name
    /// and shape; one tensor taken away or misshapen is named.
    #[test]
    fn the_real_sd_vae_layout_loads_by_name_and_shape() {
        let layout: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(conformance_dir().join("sd_vae_layout.json")).unwrap(),
        )
        .unwrap();
        let config: VaeConfig = serde_json::from_value(layout["config"].clone()).unwrap();
        config.check().unwrap();
        let mut weights = NamedTensors::new();
        let mut values = 0usize;
        let mut state = 1u32;
        for (name, shape) in layout["tensors"].as_object().unwrap() {
            let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
            let numel: usize = shape.iter().product();
            values += numel;
            let data = (0..numel)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 0.02 - 0.01
                })
                .collect();
            weights.insert(name.clone(), HostTensor { shape, data });
        }
        assert_eq!(values as u64, layout["parameters"].as_u64().unwrap());
        let device = Device::flex();
        let vae = Vae::new(&config, &device);
        assert_eq!(
            vae.expected_shapes(),
            weights
                .iter()
                .map(|(k, v)| (k.clone(), v.shape.clone()))
                .collect()
        );
        let vae = vae.load(&weights).unwrap();
        assert_eq!(burn::module::Module::num_params(&vae), values);

        let name = "decoder.up_blocks.2.resnets.0.conv_shortcut.weight";
        let mut missing = weights.clone();
        missing.remove(name);
        let message = Vae::new(&config, &device)
            .load(&missing)
            .unwrap_err()
            .to_string();
        assert!(message.contains(name), "{message}");
        let mut misshapen = weights;
        misshapen.get_mut(name).unwrap().shape = vec![256, 512, 3, 1];
        let message = Vae::new(&config, &device)
            .load(&misshapen)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(name) && message.contains("3, 1"),
            "{message}"
        );
    }
}
