//! Clips through a frame VAE and back: what the VAE alone does to the frames, the ceiling of any
//! model that draws in its latents. `acdit eval-video --pred OUT.npz --truth CLIPS.npz` then
//! scores the round trip as it scores a prediction (docs/video/trials.md).
//!
//! `cargo run --release --example vae_roundtrip -- VAE CLIPS.npz OUT.npz [CLIPS_USED] [FRAMES]`
//! (defaults: every clip, every frame), where VAE is a folder or a built-in name
//! (`moving-mnist`).

use std::path::Path;

use acdit::vae::NamedVae;
use acdit::video::clips::{ClipLayout, read_clips, write_clips};
use acdit::video::output::clips_from_pixels;
use anyhow::{Context, Result, bail};
use burn::prelude::*;

/// Frames encoded or decoded at once.
const BATCH: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [vae, clips_path, out, ..] = args.as_slice() else {
        bail!("usage: vae_roundtrip VAE CLIPS.npz OUT.npz [CLIPS_USED] [FRAMES]");
    };
    let device = Device::flex();
    let vae = NamedVae::load(vae, &device)?;
    let clips = read_clips(Path::new(clips_path), ClipLayout::Nfhw)?;
    let n: usize = args.get(3).map_or(Ok(clips.n), |a| a.parse())?;
    let frames: usize = args.get(4).map_or(Ok(clips.frames), |a| a.parse())?;
    let kept = clips.head(n, frames).with_context(|| clips_path.clone())?;
    let (h, w) = (kept.height, kept.width);
    let latents = vae.encode_frames(&kept.clips, [h, w], BATCH)?;
    let config = vae.vae.config();
    let down = config.downsampling();
    let shape = [n * frames, config.latent_channels, h / down, w / down];
    let (pixels, _) = vae.decode_latents(&latents, shape, BATCH)?;
    write_clips(
        Path::new(out),
        &clips_from_pixels(&pixels, kept.shape(), kept.labels)?,
    )?;
    Ok(())
}
