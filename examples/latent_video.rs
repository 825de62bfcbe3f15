//! The Moving MNIST preset's network in the latents of a frame VAE (`frame_vae`): the latent
//! trial of docs/video/trials.md, which the CLI does not run yet. Needs `acdit data fetch mnist`.
//!
//! `latent_video train VAE_DIR RUN_DIR STEPS CLIPS [INIT]`: CLIPS preset clips of training digits,
//! each frame encoded once (the mean, scaled), trained as the preset's network on 8x8 latents of
//! 4 channels (patch 1), from INIT's weights when given.
//! `latent_video predict WEIGHTS TRUTH.npz OUT.npz`: 100 clips, 4 frames given (encoded), 4
//! predicted, all decoded; then `acdit eval-video --pred OUT.npz --truth TRUTH.npz
//! --context-frames 4`.
//! `latent_video rollout WEIGHTS OUT.npz [GUIDANCE]`: 4 clips a class of 16 frames (twice the
//! trained length); then `acdit eval-video --pred OUT.npz`.

use std::path::Path;

use acdit::checkpoint::load::{WeightsKind, WeightsSource, load_weights};
use acdit::config::{ModelConfig, VideoShape};
use acdit::data::idx::{Split, mnist_or_built_in};
use acdit::data::{TrainingSet, scale};
use acdit::diffusion::blockwise::{Generation, Quiet, Window};
use acdit::sampling::{Extent, SamplingModel, load_model, sample_clips};
use acdit::train::run::{RunDir, run};
use acdit::train::{TrainConfig, Trainer};
use acdit::vae::NamedVae;
use acdit::video::Clips;
use acdit::video::clips::{ClipLayout, read_clips, write_clips};
use acdit::video::moving_mnist::{MovingMnistSpec, generate};
use acdit::video::output::clips_from_pixels;
use anyhow::{Result, bail};
use burn::prelude::*;

/// The preset's trained length.
const FRAMES: usize = 8;

/// As acdit's binary: mimalloc keeps freed pages for the next step (a training step is about a
/// third slower with the system allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Clips encoded once, frame by frame, as training data.
struct LatentClips {
    /// (n, frames, 4, 8, 8)
    latents: Vec<f32>,
    labels: Vec<u32>,
    /// Values a clip.
    per: usize,
    names: Vec<String>,
}

impl TrainingSet for LatentClips {
    fn epoch_len(&self) -> usize {
        self.labels.len()
    }
    fn item(&self, _epoch: u64, index: usize) -> (Vec<f32>, u32) {
        (
            self.latents[index * self.per..(index + 1) * self.per].to_vec(),
            self.labels[index],
        )
    }
    fn class_names(&self) -> &[String] {
        &self.names
    }
}

/// Frames (n, h, w) uint8 -> scaled latent means (n, c, h / d, w / d), 64 at a time.
fn encode(vae: &NamedVae, frames: &[u8], h: usize, w: usize) -> Vec<f32> {
    let device = Device::flex();
    let mut out = Vec::new();
    for chunk in frames.chunks(64 * h * w) {
        let n = chunk.len() / (h * w);
        let grey: Vec<f32> = chunk.iter().map(|&b| scale(b)).collect();
        let x = Tensor::<1>::from_floats(grey.as_slice(), &device).reshape([n, 1, h, w]);
        let x = Tensor::cat(vec![x.clone(), x.clone(), x], 1);
        let z = vae.vae.encode_scaled(x).into_data().convert::<f32>();
        out.extend(z.try_to_vec::<f32>().expect("f32"));
    }
    out
}

/// Model output (n * frames latents) -> one-channel uint8 clips.
fn to_clips(
    sampling: &SamplingModel,
    output: Vec<f32>,
    labels: Vec<i64>,
    frames: usize,
) -> Result<Clips> {
    let n = labels.len();
    let (pixels, [c, h, w]) = sampling.to_pixels(output, n, frames)?;
    // The VAE decodes to RGB copies of one grey frame: their mean is that frame.
    let grey: Vec<f32> = pixels
        .chunks(c * h * w)
        .flat_map(|item| {
            (0..h * w).map(move |p| (0..c).map(|ch| item[ch * h * w + p]).sum::<f32>() / c as f32)
        })
        .collect();
    Ok(clips_from_pixels(&grey, [n, frames, h, w], Some(labels))?)
}

fn main() -> Result<()> {
    // As acdit's main: never hand freed pages back (mimalloc's purge_delay, option 15).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("train") => train(&args[1..]),
        Some("predict") => predict(&args[1..]),
        Some("rollout") => rollout(&args[1..]),
        _ => bail!("usage: latent_video train|predict|rollout ..."),
    }
}

fn train(args: &[String]) -> Result<()> {
    let [vae_dir, run_dir, steps, clips, ..] = args else {
        bail!("train VAE_DIR RUN_DIR STEPS CLIPS [INIT]");
    };
    let device = Device::flex();
    let vae = NamedVae::load(vae_dir, &device)?;
    let (digits, _) = mnist_or_built_in(Split::Train)?;
    let spec = MovingMnistSpec {
        frames: FRAMES,
        digits: 1,
        min_speed: 0.0,
        ..MovingMnistSpec::srivastava().at_size(32)
    };
    let n: usize = clips.parse()?;
    let started = std::time::Instant::now();
    let made = generate(&spec, &digits, n, 0)?;
    let latents = encode(&vae, &made.clips, 32, 32);
    println!(
        "{n} clips encoded in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let per = latents.len() / n;
    let set = LatentClips {
        latents,
        labels: made
            .labels
            .expect("generated clips are labelled")
            .iter()
            .map(|&l| l as u32)
            .collect(),
        per,
        names: (0..10).map(|c| c.to_string()).collect(),
    };
    let mut config = TrainConfig::moving_mnist();
    config.model = ModelConfig {
        neighbour_embedding: true,
        mlp_frame_conv: true,
        ..ModelConfig::video(&VideoShape {
            channels: 4,
            frame_size: 8,
            patch: 1,
            frames: FRAMES,
            frames_per_block: 1,
            hidden: 128,
            depth: 4,
            num_classes: 10,
        })
    };
    config.steps = steps.parse()?;
    config.validate()?;
    let train_device = device.clone().autodiff();
    let mut trainer = Trainer::new(config, set.epoch_len(), &train_device);
    if let Some(init) = args.get(4) {
        let weights = load_weights(WeightsSource::File(Path::new(init)), WeightsKind::Ema, None)?;
        trainer.start_from(&weights.tensors)?;
        println!("started from {init}");
    }
    run(&mut trainer, &set, &RunDir(run_dir.into()), Some(&vae))
}

fn load(weights: &str) -> Result<SamplingModel> {
    let device = Device::flex();
    load_model(
        WeightsSource::File(Path::new(weights)),
        WeightsKind::Ema,
        None,
        &device,
    )?
    .with_vae(None, &device)
}

fn predict(args: &[String]) -> Result<()> {
    let [weights, truth, out, ..] = args else {
        bail!("predict WEIGHTS TRUTH.npz OUT.npz");
    };
    let sampling = load(weights)?;
    let Some(vae) = sampling.vae.as_ref() else {
        bail!("{weights} is a pixel model; this example predicts with latent ones");
    };
    let real = read_clips(Path::new(truth), ClipLayout::Nfhw)?;
    let (n, k) = (100, 4);
    let real = real.head(n, real.frames)?;
    let frames: Vec<u8> = (0..n)
        .flat_map(|i| real.clip(i)[..k * real.frame_len()].to_vec())
        .collect();
    let context = encode(vae, &frames, real.height, real.width);
    let Some(labels) = real.labels.clone() else {
        bail!("{truth}: needs `labels` beside `clips`");
    };
    let extent = Extent {
        frames: FRAMES,
        context: Some((&context, k)),
        window: Window::widest(sampling.model.config()),
    };
    let generation = Generation {
        cfg: sampling.guidance,
        ..Generation::default()
    };
    let output = sample_clips(
        &sampling.model,
        &labels,
        &extent,
        &generation,
        0,
        25,
        &mut Quiet,
    );
    let mut clips = to_clips(&sampling, output, labels, FRAMES)?;
    // The given frames as they were, not as the VAE returns them.
    for i in 0..n {
        let len = k * real.frame_len();
        let at = i * FRAMES * real.frame_len();
        clips.clips[at..at + len].copy_from_slice(&real.clip(i)[..len]);
    }
    write_clips(Path::new(out), &clips)?;
    Ok(())
}

fn rollout(args: &[String]) -> Result<()> {
    let [weights, out, ..] = args else {
        bail!("rollout WEIGHTS OUT.npz [GUIDANCE]");
    };
    let sampling = load(weights)?;
    let labels: Vec<i64> = (0..10).flat_map(|c| vec![c; 4]).collect();
    let extent = Extent {
        frames: 2 * FRAMES,
        context: None,
        window: Window::widest(sampling.model.config()),
    };
    let generation = Generation {
        cfg: args.get(2).map_or(Ok(sampling.guidance), |g| g.parse())?,
        ..Generation::default()
    };
    let output = sample_clips(
        &sampling.model,
        &labels,
        &extent,
        &generation,
        0,
        20,
        &mut Quiet,
    );
    let clips = to_clips(&sampling, output, labels, 2 * FRAMES)?;
    write_clips(Path::new(out), &clips)?;
    Ok(())
}
