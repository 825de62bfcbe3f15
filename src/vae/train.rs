//! `acdit train-vae`: a small VAE in diffusers' layout, trained on the frames of a clip file, so
//! that a model can draw in its latents (the Moving MNIST preset does). The loss is
//! reconstruction MSE plus a small KL term on posterior samples, as Stable Diffusion's VAE was
//! trained, less its perceptual and adversarial terms, which grey strokes on black do not need.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::{Rng, SeedableRng};

use super::{DIFFUSERS_NAMING, Vae, VaeConfig, WEIGHTS_FILE};
use crate::atomic::write_bytes_atomic;
use crate::checkpoint::module_io::export_module;
use crate::checkpoint::tensors::write_safetensors_atomic;
use crate::data::scale;
use crate::train::optim::{AdamW, AdamWSettings};
use crate::video::Clips;
use crate::video::clips::{ClipLayout, read_clips};

/// Frames a step.
const BATCH: usize = 32;
/// The weight of the KL term: enough to keep the latents near unit scale, too little to blur.
const KL_WEIGHT: f64 = 1e-4;
/// The peak learning rate, falling linearly to zero at the last step.
const LR: f64 = 1e-3;
/// Frames held out to measure the reconstruction and the latents' scale: a thirtieth, at most
/// this many.
const MAX_HELD_OUT: usize = 1000;

/// What `acdit train-vae` was asked for.
#[derive(Debug, Clone)]
pub struct FrameVaeJob {
    /// A clip file (see [`read_clips`]); every frame of every clip is a training picture.
    pub frames: PathBuf,
    pub steps: usize,
    pub seed: u64,
    /// Gets `config.json` and the weights, a diffusers folder that `--vae` loads.
    pub out: PathBuf,
}

/// How the trained VAE does on the held-out frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameVaeReport {
    /// Mean squared error of the reconstruction from the posterior mean, in [-1, 1] units.
    pub reconstruction_mse: f32,
    /// 1 / the standard deviation of the latent means: what `config.json` records, so that the
    /// latents a model learns are of unit scale.
    pub scaling_factor: f64,
}

/// The VAE for one-channel frames: widths 16, 32 and 64 (a quarter of the side: 8x8 latents of
/// 4 channels for a 32x32 frame), one ResNet block a level and no attention in the middle:
/// 650,000 parameters, where the SD-VAE has 84 million for photographs.
pub fn frame_vae_config(scaling_factor: f64) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "AutoencoderKL",
        "in_channels": 1, "out_channels": 1, "latent_channels": 4,
        "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8,
        "act_fn": "silu", "scaling_factor": scaling_factor, "mid_block_add_attention": false,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    })
}

impl FrameVaeJob {
    /// Trains on `device` (an autodiff device), printing the losses every 50 steps, and writes
    /// the folder atomically file by file, the weights last.
    pub fn run(&self, device: &Device) -> Result<FrameVaeReport> {
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        let clips = read_clips(&self.frames, ClipLayout::Nfhw)?;
        let config: VaeConfig = serde_json::from_value(frame_vae_config(1.0))?;
        let down = config.downsampling();
        let (h, w) = (clips.height, clips.width);
        if !h.is_multiple_of(down) || !w.is_multiple_of(down) {
            bail!(
                "{}: frames of {h}x{w}; the VAE needs sides that are multiples of {down}",
                self.frames.display()
            );
        }
        let total = clips.n * clips.frames;
        if total < 2 {
            bail!(
                "{}: {total} frame(s); at least 2 are needed (some are held out)",
                self.frames.display()
            );
        }
        let held_out = (total / 30).clamp(1, MAX_HELD_OUT);
        let n_train = total - held_out;

        device.seed(self.seed);
        let mut vae = Vae::new(&config, device);
        let mut optimizer = AdamW::new(AdamWSettings::default());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let started = std::time::Instant::now();
        for step in 0..self.steps {
            let picks: Vec<usize> = (0..BATCH).map(|_| rng.random_range(0..n_train)).collect();
            let x = frames_tensor(&clips, &picks, device);
            let moments = vae.encode(x.clone());
            let noise = moments
                .mean
                .random_like(burn::tensor::Distribution::Normal(0.0, 1.0));
            let z = moments.mean.clone() + (moments.logvar.clone() * 0.5).exp() * noise;
            let mse = (vae.decode(z) - x).square().mean();
            let kl = (moments.mean.square() + moments.logvar.clone().exp() - moments.logvar - 1.0)
                .mean()
                * 0.5;
            let grads = (mse.clone() + kl.clone() * KL_WEIGHT).backward();
            let lr = LR * (1.0 - step as f64 / self.steps as f64);
            vae = optimizer.step_if_finite(vae, &grads, lr, Some(1.0)).0;
            if step % 50 == 0 || step + 1 == self.steps {
                println!(
                    "step {step}: mse {:.5} kl {:.3} ({:.0} s)",
                    mse.into_scalar::<f32>(),
                    kl.into_scalar::<f32>(),
                    started.elapsed().as_secs_f64()
                );
            }
        }

        let vae = vae.valid();
        let held: Vec<usize> = (n_train..total).collect();
        let x = frames_tensor(&clips, &held, &vae.encoder.conv_in.weight.device());
        let mean = vae.encode(x.clone()).mean;
        let flat = mean.clone().flatten::<1>(0, 3);
        let centre = flat.clone().mean().into_scalar::<f32>();
        let latent_std = (flat - centre).square().mean().sqrt().into_scalar::<f32>();
        let reconstruction_mse = (vae.decode(mean) - x).square().mean().into_scalar::<f32>();
        if !reconstruction_mse.is_finite() || !latent_std.is_finite() || latent_std <= 0.0 {
            bail!(
                "training diverged: held-out reconstruction MSE {reconstruction_mse}, latent std {latent_std}"
            );
        }
        let scaling_factor = 1.0 / f64::from(latent_std);
        self.write(&vae, scaling_factor)?;
        Ok(FrameVaeReport {
            reconstruction_mse,
            scaling_factor,
        })
    }

    fn write(&self, vae: &Vae, scaling_factor: f64) -> Result<()> {
        let out = &self.out;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let json = serde_json::to_string_pretty(&frame_vae_config(scaling_factor))?;
        let config_path = out.join("config.json");
        write_bytes_atomic(&config_path, json.as_bytes())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let tensors = export_module(vae, &DIFFUSERS_NAMING);
        write_safetensors_atomic(&out.join(WEIGHTS_FILE), &tensors, None)?;
        Ok(())
    }
}

/// Frames `picks` (indices over every frame of every clip) as (n, 1, h, w) in [-1, 1].
fn frames_tensor(clips: &Clips, picks: &[usize], device: &Device) -> Tensor<4> {
    let (h, w) = (clips.height, clips.width);
    let values: Vec<f32> = picks
        .iter()
        .flat_map(|&i| {
            clips.clips[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&b| scale(b))
        })
        .collect();
    Tensor::<1>::from_floats(values.as_slice(), device).reshape([picks.len(), 1, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::{Split, embedded_mnist};
    use crate::video::clips::write_clips;
    use crate::video::moving_mnist::{MovingMnistSpec, generate};

    /// A few steps on a few frames: the folder loads as a `--vae`, encodes a 16x16 frame to 4x4
    /// latents of 4 channels and decodes them back to one channel; a bad file is an error.
    #[test]
    fn a_trained_frame_vae_loads_and_round_trips_one_channel_frames() {
        let dir = tempfile::tempdir().unwrap();
        let spec = MovingMnistSpec {
            frames: 2,
            digits: 1,
            ..MovingMnistSpec::srivastava().at_size(16)
        };
        let clips = generate(&spec, &embedded_mnist(Split::Train), 40, 3).unwrap();
        let frames = dir.path().join("frames.npz");
        write_clips(&frames, &clips).unwrap();
        let job = FrameVaeJob {
            frames,
            steps: 3,
            seed: 0,
            out: dir.path().join("vae"),
        };
        let report = job.run(&Device::flex().autodiff()).unwrap();
        assert!(report.reconstruction_mse.is_finite() && report.scaling_factor > 0.0);
        let vae = crate::vae::NamedVae::load(job.out.to_str().unwrap(), &Device::flex()).unwrap();
        assert_eq!(vae.vae.config().scaling_factor, report.scaling_factor);
        let x = frames_tensor(&clips, &[0, 1, 2], &Device::flex());
        let z = vae.vae.encode_scaled(x);
        assert_eq!(z.dims(), [3, 4, 4, 4]);
        assert_eq!(vae.vae.decode_scaled(z).dims(), [3, 1, 16, 16]);

        let bad = dir.path().join("bad.npz");
        std::fs::write(&bad, b"not a zip").unwrap();
        let message = FrameVaeJob {
            frames: bad,
            ..job.clone()
        }
        .run(&Device::flex().autodiff())
        .unwrap_err()
        .to_string();
        assert!(message.contains("bad.npz"), "{message}");
    }
}
