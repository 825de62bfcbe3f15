//! `acdit bench`: speed at the benchmark configuration (28x28 one-channel images, patch 2, 4
//! blocks of 7x7 tokens, hidden 256, depth 6, 4 heads, 10 classes): training tokens/s and peak
//! memory at batch 16 with AdamW, and sampling images/s for 16 images, 25 DPM-Solver++ steps,
//! guidance 1.5, with the KV cache, without it, and as full-sequence diffusion. `acdit bench video`
//! measures the same at the Moving MNIST preset, sampling in frames/s.

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{ModelConfig, Preset};
use crate::data::ImageDataset;
use crate::device::Precision;
use crate::diffusion::blockwise::{Generation, Observer, Quiet};
use crate::model::Acdit;
use crate::sampling::sample_images;
use crate::train::{GRADIENT_SLICES, TrainConfig, Trainer};

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPart {
    All,
    Train,
    Sample,
    /// The Moving MNIST preset: training, and frames/s of the three ways to sample.
    Video,
    /// The paper's ImageNet-256 model at full size: ACDiT-XL on 32x32x4 latents.
    Xl,
    /// The same for ACDiT-H.
    H,
}

impl crate::choice::Choice for BenchPart {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("all", BenchPart::All),
        ("train", BenchPart::Train),
        ("sample", BenchPart::Sample),
        ("video", BenchPart::Video),
        ("xl", BenchPart::Xl),
        ("h", BenchPart::H),
    ];
}

/// What `acdit bench` was asked for.
#[derive(Debug, Clone)]
pub struct BenchJob {
    pub part: BenchPart,
    /// Timed training steps (after 2 warm-up steps).
    pub train_steps: u64,
    /// Timed sampling rounds of 16 images each.
    pub sample_rounds: usize,
    /// The float type `device` makes tensors in; training keeps f32.
    pub precision: Precision,
    pub device: Device,
}

/// Peak resident memory of this process so far, in MiB (Linux), if known.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Random items (images or clips) of `config`'s shape, enough to feed the training benchmark.
/// Clips are stored as one tall image of all their frames: the trainer reads values, not shapes.
fn random_dataset(config: &ModelConfig, n: usize) -> ImageDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (side, frames) = (config.img_hw, config.temporal_len);
    ImageDataset {
        images: (0..n * frames * side * side * config.in_channels)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u32).collect(),
        n,
        channels: config.in_channels,
        height: frames * side,
        width: side,
        num_classes: 10,
        class_names: (0..10).map(|c| c.to_string()).collect(),
    }
}

/// Training tokens/s of `config` at batch 16, counting the clean + noisy tokens of the
/// reference's step (2 x seq_len an item; ours leaves out the last clean block, which cannot
/// change the loss), with the batch's gradients computed in `gradient_slices` slices at once.
pub fn bench_train(
    train: TrainConfig,
    device: &Device,
    steps: u64,
    gradient_slices: usize,
) -> Result<f64> {
    let mut config = train;
    config.batch_size = 16;
    config.steps = steps + 2;
    config.warmup_steps = 0;
    let dataset = random_dataset(&config.model, 256);
    let mut trainer = Trainer::new(config, dataset.n, &device.clone().autodiff());
    trainer.gradient_slices = gradient_slices;
    for _ in 0..2 {
        trainer.train_step(&dataset)?;
    }
    let started = Instant::now();
    for _ in 0..steps {
        trainer.train_step(&dataset)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = (steps as usize * 16 * 2 * trainer.config.model.seq_len()) as f64;
    Ok(tokens / seconds)
}

/// Items/s (images or clips) sampling 16 of `config` with guidance 1.5 and 25 DPM-Solver++ steps,
/// as two batches of 8 side by side (as `acdit sample` runs its batches).
pub fn bench_sample(config: &ModelConfig, kv_cache: bool, device: &Device, rounds: usize) -> f64 {
    let model = Acdit::new(config, device);
    let labels: Vec<i64> = (0..16).map(|i| i % 10).collect();
    let generation = Generation {
        cfg: 1.5,
        kv_cache,
        ..Generation::default()
    };
    let started = Instant::now();
    for round in 0..rounds {
        sample_images(&model, &labels, &generation, round as u64, 8, &mut Quiet);
    }
    (rounds * labels.len()) as f64 / started.elapsed().as_secs_f64()
}

pub fn run(job: &BenchJob) -> Result<()> {
    let trains = matches!(
        job.part,
        BenchPart::All | BenchPart::Train | BenchPart::Video
    );
    if trains && job.precision != Precision::F32 {
        anyhow::bail!(
            "--dtype bf16 here makes every tensor bf16, which is for sampling (`sample`, `xl`, `h`); \
             mixed-precision training (f32 weights, bf16 compute) is `acdit train --dtype bf16`"
        );
    }
    match job.part {
        BenchPart::Video => return bench_video(job),
        BenchPart::Xl => return bench_full_size(job, Preset::Xl),
        BenchPart::H => return bench_full_size(job, Preset::H),
        _ => {}
    }
    let device = &job.device;
    let config = ModelConfig::bench_mnist();
    println!(
        "benchmark model: {}x{} pixels, patch {}, {} blocks of {} tokens, hidden {}, depth {}, {} heads, device {:?}",
        config.img_hw,
        config.img_hw,
        config.patch_size,
        config.ar_len,
        config.block_size,
        config.hidden_size,
        config.depth,
        config.num_heads,
        device
    );
    if matches!(job.part, BenchPart::All | BenchPart::Train) {
        let mut train = TrainConfig::mnist();
        train.model = config.clone();
        let tokens_per_s = bench_train(train, device, job.train_steps, GRADIENT_SLICES)?;
        println!(
            "train: {tokens_per_s:.0} tokens/s (clean + noisy as the reference counts them, batch 16, AdamW)"
        );
        if let Some(peak) = peak_memory_mib() {
            println!("train: peak resident memory {peak:.0} MiB");
        }
    }
    if matches!(job.part, BenchPart::All | BenchPart::Sample) {
        let cached = bench_sample(&config, true, device, job.sample_rounds);
        let recomputed = bench_sample(&config, false, device, job.sample_rounds);
        let mut full = config.clone();
        full.block_size = config.seq_len();
        full.ar_len = 1;
        let full_sequence = bench_sample(&full, true, device, job.sample_rounds);
        println!("sample: {cached:.2} images/s with KV cache");
        println!(
            "sample: {recomputed:.2} images/s without KV cache (cache speed-up {:.2}x)",
            cached / recomputed
        );
        println!(
            "sample: {full_sequence:.2} images/s as full-sequence diffusion (ratio to cached ACDiT {:.2}x)",
            full_sequence / cached
        );
    }
    Ok(())
}

/// The Moving MNIST preset: training tokens/s, and sampling frames/s through the KV cache,
/// recomputing the prefix, and as full-sequence diffusion (one block of every frame).
fn bench_video(job: &BenchJob) -> Result<()> {
    let device = &job.device;
    let train = TrainConfig::moving_mnist();
    let config = train.model.clone();
    println!(
        "video model (moving-mnist preset): {} frames of {}x{}x{} latents (the VAE {}), patch {}, {} blocks of {} frames, hidden {}, depth {}",
        config.temporal_len,
        config.in_channels,
        config.img_hw,
        config.img_hw,
        train.vae.as_deref().unwrap_or("none"),
        config.patch_size,
        config.ar_len,
        config.frames_per_block(),
        config.hidden_size,
        config.depth
    );
    let vae = train.vae.clone();
    let step_tokens = 16.0 * 2.0 * config.seq_len() as f64;
    let one_slice = bench_train(train.clone(), device, job.train_steps, 1)?;
    let sliced = bench_train(train, device, job.train_steps, GRADIENT_SLICES)?;
    println!(
        "video train: {sliced:.0} tokens/s, {:.2} s a step of 16 clips ({GRADIENT_SLICES} slices of the batch at once); {one_slice:.0} tokens/s, {:.2} s, as one ({:.2}x)",
        step_tokens / sliced,
        step_tokens / one_slice,
        sliced / one_slice
    );
    let frames = config.temporal_len as f64;
    let cached = frames * bench_sample(&config, true, device, job.sample_rounds);
    let recomputed = frames * bench_sample(&config, false, device, job.sample_rounds);
    let mut full = config.clone();
    full.block_size = config.seq_len();
    full.ar_len = 1;
    let full_sequence = frames * bench_sample(&full, true, device, job.sample_rounds);
    println!("video sample: {cached:.2} frames/s with KV cache");
    println!(
        "video sample: {recomputed:.2} frames/s without KV cache (cache speed-up {:.2}x)",
        cached / recomputed
    );
    println!(
        "video sample: {full_sequence:.2} frames/s as full-sequence diffusion (ratio to cached ACDiT {:.2}x)",
        full_sequence / cached
    );
    if let Some(name) = &vae {
        let vae = crate::vae::NamedVae::load(name, device)?;
        let frames = 64;
        let latents = vec![0.5f32; frames * config.in_channels * config.img_hw * config.img_hw];
        let shape = [frames, config.in_channels, config.img_hw, config.img_hw];
        vae.decode_latents(&latents, shape, 8)?;
        let started = Instant::now();
        vae.decode_latents(&latents, shape, 8)?;
        let decoded = frames as f64 / started.elapsed().as_secs_f64();
        println!(
            "video decode: {decoded:.0} frames/s through the VAE {name} (cached sampling with decoding: {:.2} frames/s)",
            1.0 / (1.0 / cached + 1.0 / decoded)
        );
    }
    Ok(())
}

/// Times each model call: the interval between two outputs is one call and its solver update.
struct CallTimes {
    last: Instant,
    /// (block, step, seconds).
    calls: Vec<(usize, usize, f64)>,
}

impl Observer for CallTimes {
    fn model_output(&mut self, block: usize, step: usize, _output: &Tensor<3>) {
        let now = Instant::now();
        self.calls
            .push((block, step, now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }
}

/// The paper's ImageNet-256 setting at full size (random weights: speed does not depend on
/// them): one image with guidance 1.5 (two rows a call), `sample_rounds + 1` denoising steps a
/// block. A block's first step also runs the previous clean block through the network for the
/// cache, so it is timed apart from the later steps; the 25-step image is their sum.
fn bench_full_size(job: &BenchJob, preset: Preset) -> Result<()> {
    let device = &job.device;
    let config = ModelConfig::imagenet256(preset);
    let built = Instant::now();
    let model = Acdit::new(&config, device);
    // Parameters are initialised lazily, on first use: do it now, outside the timed calls.
    let model = crate::model::weights::update_params(model, |_, value| value);
    let params = burn::module::Module::num_params(&model);
    println!(
        "{preset:?} at ImageNet 256: latents {}x{}x{}, patch {}, {} blocks of {} tokens, hidden {}, depth {}, {} parameters ({:.2} GiB in {:?}), device {device:?}",
        config.img_hw,
        config.img_hw,
        config.in_channels,
        config.patch_size,
        config.ar_len,
        config.block_size,
        config.hidden_size,
        config.depth,
        params,
        params as f64 * job.precision.bytes() as f64 / (1u64 << 30) as f64,
        job.precision,
    );
    let steps = job.sample_rounds.max(1) + 1;
    let generation = Generation {
        cfg: 1.5,
        steps,
        ..Generation::default()
    };
    let mut times = CallTimes {
        last: Instant::now(),
        calls: Vec::new(),
    };
    println!(
        "built in {:.1}s; timing one image, {steps} steps a block",
        built.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    sample_images(&model, &[207], &generation, 0, 1, &mut times);
    let total = started.elapsed().as_secs_f64();
    let mean = |first: bool| {
        let picked: Vec<f64> = times
            .calls
            .iter()
            .filter(|(_, step, _)| (*step == 0) == first)
            .map(|(_, _, s)| *s)
            .collect();
        picked.iter().sum::<f64>() / picked.len() as f64
    };
    let (first_step, later_step) = (mean(true), mean(false));
    let per_image = config.ar_len as f64 * (first_step + 24.0 * later_step);
    println!(
        "sample: {later_step:.2} s a denoising step (a {}-token block, guidance doubling the batch to 2)",
        config.block_size
    );
    println!(
        "sample: {first_step:.2} s a block's first step (with the previous block's cache fill)"
    );
    println!(
        "sample: {per_image:.1} s an image at the paper's 25 steps a block ({} blocks; measured {total:.1} s for {steps} steps a block)",
        config.ar_len
    );
    if let Some(peak) = peak_memory_mib() {
        println!("sample: peak resident memory {peak:.0} MiB");
    }
    Ok(())
}
