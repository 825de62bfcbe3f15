//! Class-conditional samples of an image model (pixel or latent, through the VAE its file
//! records) as one-frame clips, for `acdit eval-video --pred OUT.npz` to read: how well a model
//! draws the first frame of a clip (docs/video/trials.md).
//!
//! `cargo run --release --example first_frames -- WEIGHTS OUT.npz [PER_CLASS]`

use std::path::Path;

use acdit::checkpoint::load::{WeightsKind, WeightsSource};
use acdit::diffusion::blockwise::{Generation, Quiet};
use acdit::sampling::{load_model, sample_images};
use acdit::video::clips::write_clips;
use acdit::video::output::clips_from_pixels;
use anyhow::{Result, bail};
use burn::prelude::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, out, ..] = args.as_slice() else {
        bail!("usage: first_frames WEIGHTS OUT.npz [PER_CLASS]");
    };
    let per_class: usize = args.get(2).map_or(Ok(10), |a| a.parse())?;
    let device = Device::flex();
    let sampling = load_model(
        WeightsSource::File(Path::new(weights)),
        WeightsKind::Ema,
        None,
        &device,
    )?
    .with_vae(None, &device)?;
    let labels: Vec<i64> = (0..10).flat_map(|c| vec![c; per_class]).collect();
    let generation = Generation {
        cfg: sampling.guidance,
        ..Generation::default()
    };
    let output = sample_images(&sampling.model, &labels, &generation, 0, 50, &mut Quiet);
    let (pixels, [c, h, w]) = sampling.to_pixels(output, labels.len(), 1)?;
    // A VAE of three channels decodes RGB copies of one grey frame: their mean is that frame.
    let grey: Vec<f32> = pixels
        .chunks(c * h * w)
        .flat_map(|item| {
            (0..h * w).map(move |p| (0..c).map(|ch| item[ch * h * w + p]).sum::<f32>() / c as f32)
        })
        .collect();
    let clips = clips_from_pixels(&grey, [labels.len(), 1, h, w], Some(labels))?;
    write_clips(Path::new(out), &clips)?;
    Ok(())
}
