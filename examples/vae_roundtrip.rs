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
use anyhow::{Result, bail};
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
    if n > clips.n || frames > clips.frames {
        bail!(
            "{clips_path} holds {} clips of {} frames: {n} of {frames} asked",
            clips.n,
            clips.frames
        );
    }
    let (h, w) = (clips.height, clips.width);
    let frame_len = h * w;
    let kept: Vec<u8> = (0..n)
        .flat_map(|i| {
            let first = i * clips.frames * frame_len;
            clips.clips[first..first + frames * frame_len]
                .iter()
                .copied()
        })
        .collect();
    let latents = vae.encode_frames(&kept, [h, w], BATCH)?;
    let config = vae.vae.config();
    let down = config.downsampling();
    let shape = [n * frames, config.latent_channels, h / down, w / down];
    let (pixels, _) = vae.decode_latents(&latents, shape, BATCH)?;
    let labels = clips.labels.as_ref().map(|l| l[..n].to_vec());
    write_clips(
        Path::new(out),
        &clips_from_pixels(&pixels, [n, frames, h, w], labels)?,
    )?;
    Ok(())
}
