//! How much a video model's prediction leans on the frames before the block, noise level by noise
//! level.
//!
//! For clips of a file, every block is noised to one timestep and the training forward predicts
//! the noise, once with the clip's own clean frames as context and once with the next clip's.
//! Printed per timestep is the error of the implied clean frame (the epsilon error times
//! (1 - alpha_bar) / alpha_bar), in [-1, 1] pixel units: of the first block, which has no context;
//! of the given later blocks with their own context; and with another clip's. Where the own
//! context does not beat another clip's, the model ignores it; the noisy levels are where
//! sampling lays a frame out.
//!
//! `cargo run --release --example context_use -- WEIGHTS CLIPS.npz [CLIPS_USED] [FIRST_BLOCK]`
//! (defaults: 64 clips, the scores from block 4 on), e.g. on the clips of `acdit data moving-mnist
//! --split test --clips 200 --frames 16 --size 32 --digits 1 --seed 1 --out test16.npz`.

use std::path::Path;

use acdit::checkpoint::load::{WeightsKind, WeightsSource};
use acdit::data::scale;
use acdit::diffusion::schedule::NoiseSchedule;
use acdit::layout::patchify;
use acdit::sampling::load_model;
use acdit::video::clips::{ClipLayout, expect_frame_size, read_clips};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const TIMESTEPS: [usize; 7] = [50, 150, 300, 450, 600, 750, 900];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, clips_path, ..] = args.as_slice() else {
        bail!("usage: context_use WEIGHTS CLIPS.npz [CLIPS_USED] [FIRST_BLOCK]");
    };
    let wanted: usize = args.get(2).map_or(Ok(64), |a| a.parse())?;
    let first_scored: usize = args.get(3).map_or(Ok(4), |a| a.parse())?;

    let device = Device::flex();
    let source = WeightsSource::File(Path::new(weights));
    let model = load_model(source, WeightsKind::Ema, None, &device)?.model;
    let config = model.config().clone();
    let (frames, blocks) = (config.temporal_len, config.ar_len);
    if frames < 2 || first_scored == 0 || first_scored >= blocks {
        bail!("{weights}: need a video model and a scored block in 1..{blocks}");
    }
    let path = Path::new(clips_path);
    let clips = read_clips(path, ClipLayout::Nfhw)?;
    expect_frame_size(&clips, path, config.img_hw)?;
    if clips.frames < frames || clips.n < 2 {
        bail!(
            "{clips_path}: {} clips of {} frames; need 2 or more of at least {frames}",
            clips.n,
            clips.frames
        );
    }
    let n = wanted.min(clips.n);
    let labels: Vec<i64> = match &clips.labels {
        Some(labels) => labels[..n].to_vec(),
        None => vec![config.num_classes as i64; n],
    };
    let frame_len = clips.height * clips.width;
    let pixels: Vec<f32> = (0..n)
        .flat_map(|i| {
            clips.clip(i)[..frames * frame_len]
                .iter()
                .map(|&b| scale(b))
        })
        .collect();

    let clean = patchify(&config, &pixels, n);
    let per_clip = clean.len() / n;
    let others: Vec<f32> = (0..n)
        .flat_map(|i| {
            let j = (i + 1) % n;
            clean[j * per_clip..(j + 1) * per_clip].iter().copied()
        })
        .collect();
    let schedule = NoiseSchedule::ddpm();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let eps: Vec<f32> = (0..clean.len())
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let shape = [n, config.seq_len(), config.latent_size];
    let upload = |v: &[f32]| Tensor::<1>::from_floats(v, &device).reshape(shape);
    let block_len = config.block_size * config.latent_size;
    // Mean squared epsilon error over `blocks` of every clip.
    let error = |predicted: &[f32], blocks: std::ops::Range<usize>| -> f64 {
        let mut sum = 0.0;
        for i in 0..n {
            let range =
                i * per_clip + blocks.start * block_len..i * per_clip + blocks.end * block_len;
            for (p, e) in predicted[range.clone()].iter().zip(&eps[range]) {
                sum += f64::from(p - e).powi(2);
            }
        }
        sum / (n * blocks.len() * block_len) as f64
    };

    // Two guesses that need no model, for scale: each scored frame as the frame before it, and
    // as an empty frame.
    let frame_values = frame_len;
    let first_frame = first_scored * (frames / blocks);
    let (mut before, mut empty) = (0.0f64, 0.0f64);
    for i in 0..n {
        let clip = &pixels[i * frames * frame_values..(i + 1) * frames * frame_values];
        for f in first_frame..frames {
            let (now, prev) = (
                &clip[f * frame_values..(f + 1) * frame_values],
                &clip[(f - 1) * frame_values..f * frame_values],
            );
            for (x, y) in now.iter().zip(prev) {
                before += f64::from(x - y).powi(2);
                empty += f64::from(x + 1.0).powi(2);
            }
        }
    }
    let count = (n * (frames - first_frame) * frame_values) as f64;
    println!("{n} clips of {clips_path}; clean-frame MSE in [-1, 1] units");
    println!(
        "frames {first_frame}.. as the frame before: {:.4}; as empty frames: {:.4}",
        before / count,
        empty / count
    );
    println!(
        "   t  alpha_bar  block 0 (no context)  blocks {first_scored}.. own context  another clip's"
    );
    for t in TIMESTEPS {
        let noisy = schedule.q_sample(&clean, &eps, t);
        let timesteps = vec![t as f32; n * blocks];
        let predict = |context: &[f32]| -> Result<Vec<f32>> {
            model
                .forward_train(upload(context), upload(&noisy), &timesteps, &labels)
                .into_data()
                .try_to_vec::<f32>()
                .ok()
                .context("the model's output is not f32")
        };
        let (own, other) = (predict(&clean)?, predict(&others)?);
        let a = schedule.alphas_cumprod[t];
        let clean_frame = |eps_error: f64| eps_error * (1.0 - a) / a;
        println!(
            "{t:4}  {a:9.4}  {:20.4}  {:23.4}  {:14.4}",
            clean_frame(error(&own, 0..1)),
            clean_frame(error(&own, first_scored..blocks)),
            clean_frame(error(&other, first_scored..blocks)),
        );
    }
    Ok(())
}
