//! A small VAE in diffusers' layout (what `--vae` loads), trained on Moving MNIST frames so that a
//! model can draw in its latents: the first step of the latent trial of docs/video/trials.md.
//! Reconstruction (MSE) plus a KL term of weight 1e-4, posterior samples through the decoder.
//!
//! `cargo run --release --example frame_vae -- FRAMES.npz OUT_VAE_DIR PNG_DIR STEPS`
//! FRAMES.npz: `acdit data moving-mnist --frames 1 ...`. Writes each frame as PNG_DIR/<label>/i.png
//! (for `acdit cache-latents`), trains, and writes OUT_VAE_DIR/{config.json,
//! diffusion_pytorch_model.safetensors} with the scaling factor 1 / std of the latent means.

use std::path::Path;

use acdit::checkpoint::module_io::export_module;
use acdit::checkpoint::tensors::write_safetensors_atomic;
use acdit::data::scale;
use acdit::train::optim::{AdamW, AdamWSettings};
use acdit::vae::{DIFFUSERS_NAMING, Vae, VaeConfig, WEIGHTS_FILE};
use acdit::video::clips::{ClipLayout, read_clips};
use anyhow::{Result, bail};
use burn::prelude::*;
use rand::{Rng, SeedableRng};

const BATCH: usize = 32;
const HELD_OUT: usize = 1000;
const KL_WEIGHT: f64 = 1e-4;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [frames_path, out_dir, png_dir, steps] = args.as_slice() else {
        bail!("usage: frame_vae FRAMES.npz OUT_VAE_DIR PNG_DIR STEPS");
    };
    let steps: usize = steps.parse()?;
    let clips = read_clips(Path::new(frames_path), ClipLayout::Nfhw)?;
    let (h, w) = (clips.height, clips.width);
    let per = clips.frames * h * w;
    let Some(labels) = clips.labels.clone() else {
        bail!("{frames_path}: needs `labels` beside `clips` (the PNG folder is one per class)");
    };
    if clips.n <= HELD_OUT {
        bail!(
            "{frames_path}: {} frames; more than {HELD_OUT} are needed (that many are held out)",
            clips.n
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let dir = Path::new(png_dir).join(label.to_string());
        std::fs::create_dir_all(&dir)?;
        let frame = clips.clips[i * per..i * per + h * w].to_vec();
        image::GrayImage::from_raw(w as u32, h as u32, frame)
            .expect("frame")
            .save(dir.join(format!("{i}.png")))?;
    }
    let n_train = clips.n - HELD_OUT;
    let frame_rgb = |i: usize| -> Vec<f32> {
        let frame: Vec<f32> = clips.clips[i * per..i * per + h * w]
            .iter()
            .map(|&b| scale(b))
            .collect();
        [frame.clone(), frame.clone(), frame].concat()
    };

    let mut json = serde_json::json!({
        "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8,
        "scaling_factor": 1.0, "mid_block_add_attention": false,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    });
    let config: VaeConfig = serde_json::from_value(json.clone())?;
    config
        .check()
        .map_err(|(f, r)| anyhow::anyhow!("{f}: {r}"))?;
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut vae = Vae::new(&config, &device);
    let mut optimizer = AdamW::new(AdamWSettings::default());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let start = std::time::Instant::now();
    for step in 0..steps {
        let batch: Vec<f32> = (0..BATCH)
            .flat_map(|_| frame_rgb(rng.random_range(0..n_train)))
            .collect();
        let x = Tensor::<1>::from_floats(batch.as_slice(), &device).reshape([BATCH, 3, h, w]);
        let moments = vae.encode(x.clone());
        let noise = moments
            .mean
            .random_like(burn::tensor::Distribution::Normal(0.0, 1.0));
        let z = moments.mean.clone() + (moments.logvar.clone() * 0.5).exp() * noise;
        let recon = vae.decode(z);
        let mse = (recon - x).square().mean();
        let kl = (moments.mean.square() + moments.logvar.clone().exp() - moments.logvar - 1.0)
            .mean()
            * 0.5;
        let loss = mse.clone() + kl.clone() * KL_WEIGHT;
        let grads = loss.backward();
        let lr = 1e-3 * (1.0 - step as f64 / steps as f64).min(1.0);
        vae = optimizer.step_if_finite(vae, &grads, lr, Some(1.0)).0;
        if step % 50 == 0 {
            println!(
                "step {step}: mse {:.5} kl {:.3} ({:.0} s)",
                mse.into_scalar::<f32>(),
                kl.into_scalar::<f32>(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let vae = vae.valid();
    let held: Vec<f32> = (n_train..clips.n).flat_map(frame_rgb).collect();
    let x = Tensor::<1>::from_floats(held.as_slice(), &Device::flex()).reshape([HELD_OUT, 3, h, w]);
    let mean = vae.encode(x.clone()).mean;
    let latent_std = {
        let flat = mean.clone().flatten::<1>(0, 3);
        let m = flat.clone().mean().into_scalar::<f32>();
        (flat - m).square().mean().sqrt().into_scalar::<f32>()
    };
    let recon = vae.decode(mean);
    let mse = (recon - x).square().mean().into_scalar::<f32>();
    println!("held out: reconstruction MSE {mse:.5} ([-1, 1] units), latent std {latent_std:.4}");
    std::fs::create_dir_all(out_dir)?;
    json["scaling_factor"] = serde_json::json!(1.0 / f64::from(latent_std));
    std::fs::write(
        Path::new(out_dir).join("config.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let tensors = export_module(&vae, &DIFFUSERS_NAMING);
    write_safetensors_atomic(&Path::new(out_dir).join(WEIGHTS_FILE), &tensors, None)?;
    Ok(())
}
