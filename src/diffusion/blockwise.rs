//! Blockwise generation: each block is denoised from noise by a sampler, conditioned on the clean
//! blocks before it, with classifier-free guidance by doubling the batch with the null label.

use burn::prelude::*;
use rand::RngCore;

use super::schedule::NoiseSchedule;
use super::{SamplerKind, new_sampler};
use crate::model::Acdit;
use crate::model::cache::KvCache;

/// The guidance scale pictures are drawn with unless asked otherwise. At 3 the small
/// class-conditional models trained here draw clearly class-true samples; the paper's FID
/// figures use 1.5.
pub const DEFAULT_GUIDANCE: f64 = 3.0;

/// Whether `scale` can be a guidance scale: finite and at least 1 (1 = no guidance).
pub fn is_guidance_scale(scale: f64) -> bool {
    scale.is_finite() && scale >= 1.0
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct Generation {
    pub sampler: SamplerKind,
    /// Model calls per block.
    pub steps: usize,
    /// Guidance scale; above 1 the batch is doubled with the null label.
    pub cfg: f64,
    /// Keep earlier blocks' keys and values (fast) or recompute the prefix at every call.
    pub kv_cache: bool,
}

/// The paper's sampler: 25 DPM-Solver++ steps a block, through the KV cache, at
/// [`DEFAULT_GUIDANCE`].
impl Default for Generation {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::DpmSolver2M,
            steps: 25,
            cfg: DEFAULT_GUIDANCE,
            kv_cache: true,
        }
    }
}

/// What the caller may watch during generation.
pub trait Observer {
    /// The model's raw output of one call, (n or 2n, block_size, latent), in call order.
    fn model_output(&mut self, _block: usize, _step: usize, _output: &Tensor<3>) {}
    /// A block is finished.
    fn block_done(&mut self, _block: usize) {}
}

/// Watches nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Generates `labels.len()` sequences; `noise(block)` gives each block's starting noise,
/// (n, block_size, latent). Returns the clean tokens, (n, seq_len, latent), in block order.
pub fn generate(
    model: &Acdit,
    labels: &[i64],
    generation: &Generation,
    schedule: &NoiseSchedule,
    noise: impl FnMut(usize) -> Tensor<3>,
    rng: &mut dyn RngCore,
    observer: &mut dyn Observer,
) -> Tensor<3> {
    let blocks = model.config().ar_len;
    generate_after(
        model, labels, None, blocks, generation, schedule, noise, rng, observer,
    )
}

/// The null-label half of classifier-free guidance: the batch doubled with the null label when
/// the scale is above 1, and the two halves' predictions combined.
struct Guidance {
    /// The labels of the model's batch: n, or 2n with the null label second.
    labels: Vec<i64>,
    n: usize,
    scale: f64,
}

impl Guidance {
    fn new(labels: &[i64], scale: f64, null_label: i64) -> Self {
        let n = labels.len();
        let mut doubled = labels.to_vec();
        if scale > 1.0 {
            doubled.extend(std::iter::repeat_n(null_label, n));
        }
        Self {
            labels: doubled,
            n,
            scale,
        }
    }

    fn guided(&self) -> bool {
        self.labels.len() > self.n
    }

    /// (n, tokens, latent) -> the model's batch.
    fn double(&self, x: Tensor<3>) -> Tensor<3> {
        if self.guided() {
            Tensor::cat(vec![x.clone(), x], 0)
        } else {
            x
        }
    }

    /// The model's output -> the guided noise prediction, (n, tokens, latent).
    fn combine(&self, output: Tensor<3>) -> Tensor<3> {
        if !self.guided() {
            return output;
        }
        let cond = output.clone().narrow(0, 0, self.n);
        let uncond = output.narrow(0, self.n, self.n);
        uncond.clone() + (cond - uncond) * self.scale
    }
}

/// Denoises one block from its noise `x`. `call(step, input, t)` makes the model call on the
/// guided batch; `block` is the block's index in the output, for the observer.
#[allow(clippy::too_many_arguments)]
fn denoise_block(
    generation: &Generation,
    schedule: &NoiseSchedule,
    guidance: &Guidance,
    mut x: Tensor<3>,
    block: usize,
    rng: &mut dyn RngCore,
    observer: &mut dyn Observer,
    mut call: impl FnMut(usize, Tensor<3>, &[f32]) -> Tensor<3>,
) -> Tensor<3> {
    let mut sampler = new_sampler(generation.sampler, schedule, generation.steps);
    let timesteps = sampler.timesteps().to_vec();
    for (step, &t) in timesteps.iter().enumerate() {
        let t_batch = vec![t as f32; guidance.labels.len()];
        let output = call(step, guidance.double(x.clone()), &t_batch);
        observer.model_output(block, step, &output);
        x = sampler.step(step, guidance.combine(output), x, rng);
    }
    observer.block_done(block);
    x
}

/// The blocks of `tokens` (n, blocks * block_len, latent), in order.
fn split_blocks(tokens: Tensor<3>, block_len: usize) -> Vec<Tensor<3>> {
    let blocks = tokens.dims()[1] / block_len;
    (0..blocks)
        .map(|b| tokens.clone().narrow(1, b * block_len, block_len))
        .collect()
}

/// As [`generate`], continuing `context`: given clean blocks 0..k, (n, k * block_size, latent),
/// encoded once (a prefill of the KV cache, or the recomputed prefix without the cache), and
/// blocks k..`blocks` (at most `ar_len`) generated after them. Returns every block, the context
/// first.
#[allow(clippy::too_many_arguments)]
pub fn generate_after(
    model: &Acdit,
    labels: &[i64],
    context: Option<Tensor<3>>,
    blocks: usize,
    generation: &Generation,
    schedule: &NoiseSchedule,
    mut noise: impl FnMut(usize) -> Tensor<3>,
    rng: &mut dyn RngCore,
    observer: &mut dyn Observer,
) -> Tensor<3> {
    let config = model.config();
    let guidance = Guidance::new(labels, generation.cfg, config.num_classes as i64);
    let block_len = config.block_size;
    let mut cache = KvCache::new(config.depth, config.seq_len());
    let mut finished: Vec<Tensor<3>> = Vec::with_capacity(config.ar_len);
    if let Some(context) = context {
        if generation.kv_cache && context.dims()[1] > 0 {
            model.prefill(guidance.double(context.clone()), &mut cache);
        }
        finished = split_blocks(context, block_len);
    }
    assert!(
        blocks <= config.ar_len,
        "{blocks} blocks: the model is trained on {}",
        config.ar_len
    );
    for block in finished.len()..blocks {
        let x = denoise_block(
            generation,
            schedule,
            &guidance,
            noise(block),
            block,
            rng,
            observer,
            |step, input, t| {
                if generation.kv_cache {
                    // The block before joins the cache on the first step, unless a prefill put
                    // it there.
                    let uncached = cache.len() < block * block_len;
                    let clean_prev = (step == 0 && uncached)
                        .then(|| guidance.double(finished[block - 1].clone()));
                    model.forward_cached(input, clean_prev, t, &guidance.labels, block, &mut cache)
                } else {
                    let prefix =
                        (block > 0).then(|| guidance.double(Tensor::cat(finished.clone(), 1)));
                    model.forward_recompute(input, prefix, t, &guidance.labels, block)
                }
            },
        );
        finished.push(x);
    }
    Tensor::cat(finished, 1)
}

/// Which finished blocks a rollout past the trained length attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Clean blocks kept, at most `ar_len - 1`: the most recent ones (after the sink, if kept).
    pub blocks: usize,
    /// Keep the first block as well, as an attention sink (Self-Forcing, Rolling Forcing).
    pub sink: bool,
}

impl Window {
    /// The largest window the trained positions allow, without a sink.
    pub fn widest(config: &crate::config::ModelConfig) -> Self {
        Self {
            blocks: config.ar_len - 1,
            sink: false,
        }
    }

    /// Checks that the window fits a model of `ar_len` blocks: 1 to `ar_len - 1` blocks, the
    /// sink among them. The error names the flag.
    pub fn check(&self, ar_len: usize) -> Result<(), String> {
        let fewest = usize::from(self.sink) + 1;
        if self.blocks < fewest || self.blocks >= ar_len {
            return Err(format!(
                "--window {}: a window holds {fewest} to {} blocks (the trained {ar_len} less the one being made){}",
                self.blocks,
                ar_len.saturating_sub(1),
                if self.sink {
                    ", the sink among them"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    /// The finished blocks (by index) the next block attends to, in order.
    pub fn kept(&self, finished: usize) -> Vec<usize> {
        if finished <= self.blocks {
            return (0..finished).collect();
        }
        let sink = usize::from(self.sink);
        (0..sink)
            .chain(finished - (self.blocks - sink)..finished)
            .collect()
    }
}

/// Generates `total_blocks` blocks, past the trained `ar_len` if asked, after `context` (as in
/// [`generate_after`]). Before each block the kept blocks (see [`Window::kept`]) are prefilled
/// into a fresh cache at positions 0.., and the new block is denoised at the position after them,
/// so every RoPE position stays inside the trained range. While the clip fits the window this is
/// exactly [`generate_after`].
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    model: &Acdit,
    labels: &[i64],
    context: Option<Tensor<3>>,
    total_blocks: usize,
    window: Window,
    generation: &Generation,
    schedule: &NoiseSchedule,
    mut noise: impl FnMut(usize) -> Tensor<3>,
    rng: &mut dyn RngCore,
    observer: &mut dyn Observer,
) -> Tensor<3> {
    let config = model.config();
    if let Err(reason) = window.check(config.ar_len) {
        panic!("{reason}");
    }
    let guidance = Guidance::new(labels, generation.cfg, config.num_classes as i64);
    let block_len = config.block_size;
    let mut finished = context.map_or_else(Vec::new, |c| split_blocks(c, block_len));
    for block in finished.len()..total_blocks {
        let kept = window.kept(block);
        let mut cache = KvCache::new(config.depth, config.seq_len());
        if !kept.is_empty() {
            let clean = Tensor::cat(kept.iter().map(|&b| finished[b].clone()).collect(), 1);
            model.prefill(guidance.double(clean), &mut cache);
        }
        let position = kept.len();
        let x = denoise_block(
            generation,
            schedule,
            &guidance,
            noise(block),
            block,
            rng,
            observer,
            |_, input, t| {
                model.forward_cached(input, None, t, &guidance.labels, position, &mut cache)
            },
        );
        finished.push(x);
    }
    Tensor::cat(finished, 1)
}
