//! Training: the ACDiT objective (one timestep per block, epsilon MSE on the noisy half, label
//! dropout), AdamW with clipping, a learning-rate schedule, EMA, and resumable checkpoints.

pub mod ema;
pub mod job;
pub mod lr;
pub mod optim;
pub mod run;
pub mod state;

use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::checkpoint::tensors::NamedTensors;
use crate::config::ModelConfig;
use crate::data::TrainingSet;
use crate::diffusion::schedule::NoiseSchedule;
use crate::layout::patchify;
use crate::model::Acdit;
use crate::model::weights::{cast_in_graph, flat_params};
use ema::Ema;
use lr::{LrSchedule, learning_rate};
use optim::{AdamW, AdamWSettings};
use state::{Checkpoint, DataPosition, DataSource, Progress, RngState};

/// Everything a training run is configured by; saved in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub batch_size: usize,
    /// Total optimizer steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: u64,
    /// For warmup-stable-decay: the final fraction of steps that decays to zero.
    pub decay_fraction: f64,
    pub adamw: AdamWSettings,
    /// Largest global gradient norm; None turns clipping off.
    pub grad_clip: Option<f64>,
    pub ema_decay: f64,
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end, and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Write a grid of EMA samples every this many steps.
    pub sample_every: u64,
    /// Stop after this many non-finite losses in a row.
    pub max_bad_steps: u32,
    /// The float type of the forward and backward pass. With bf16 the weights the optimizer
    /// updates, its moments and the EMA stay f32: each step computes through a bf16 cast of the
    /// f32 weights, and the gradients flow back through the cast to them.
    #[serde(default)]
    pub precision: crate::device::Precision,
    /// The VAE a video model draws in: its training clips are encoded through it once, and its
    /// samples decoded. `None` for pixels; latent image folders name theirs in their manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// The classifier-free guidance scale of the run's sample grids, recorded in its weights as
    /// the one `sample` and `predict` use unless `--cfg` says otherwise.
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    /// Min-SNR-gamma weighting of the loss: each noisy block's epsilon error times
    /// min(SNR(t), gamma) / SNR(t) ([`NoiseSchedule::min_snr_weight`]). `None`: the reference's
    /// plain epsilon loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_snr_gamma: Option<f64>,
}

/// The Moving MNIST recipe's Min-SNR gamma, the value Hang et al. (2023) recommend.
const MOVING_MNIST_MIN_SNR_GAMMA: f64 = 5.0;

fn default_guidance() -> f64 {
    crate::diffusion::blockwise::DEFAULT_GUIDANCE
}

impl TrainConfig {
    /// The MNIST recipe for a 2-core CPU, sized so the run fits in 30 minutes: digits centre-cropped
    /// to 24x24 (MNIST draws them in the central 20x20), patches of 4 (6x6 tokens of 16 values),
    /// 4 square blocks of 3x3 tokens, hidden 128 (2 heads), depth 4.
    pub fn mnist() -> Self {
        Self {
            model: ModelConfig::image(1, 24, 4, 3, 128, 4, 10),
            steps: 9000,
            ..Self::fashion_mnist()
        }
    }

    /// The Moving MNIST recipe: one-digit clips of 8 frames of 32x32 (digits drawn at 16x16 so
    /// that they have room to move), drawn in the latents of the built-in frame VAE (`acdit
    /// train-vae`: 8x8 latents of 4 channels a frame, whose decoder renders the strokes), patch 2
    /// (16 tokens a frame), one frame a block, hidden 128, depth 4; batch 4, 24,000 steps at 2e-3,
    /// from the image model of [`Self::moving_mnist_frames`] (`--init`), so that the run spends
    /// its time on motion rather than on drawing digits. A digit moves by part of a token a
    /// frame, which attention alone follows slowly, so two local additions start at zero: the
    /// embedding also reads each token's 8 neighbours (`neighbour_embedding`), and every MLP
    /// convolves each frame's token grid (`mlp_frame_conv`). Patch 2 rather than the paper's 1:
    /// a step costs a fifth, and within the hour more steps pay more than more tokens; batch 4
    /// for the same reason: twice the steps of batch 8 in the same time, a lower error. Sampled
    /// at guidance 4, which the weights record: it keeps more digits their class than 3, within
    /// the MSE aim. EMA decay 0.995, about the last 200 steps, where the rate is under a
    /// sixteenth of its peak: 0.9999 averaged over the last 1,800, back to where the decaying
    /// rate was above half its peak, and kept the class less well than the last weights.
    /// Min-SNR-5 weighting of the loss, in both stages: in the same steps it kept the digits
    /// their class far more often than the plain epsilon loss (docs/video/trials.md).
    pub fn moving_mnist() -> Self {
        Self {
            model: ModelConfig {
                neighbour_embedding: true,
                mlp_frame_conv: true,
                ..ModelConfig::video(&crate::config::VideoShape {
                    channels: 4,
                    frame_size: 8,
                    patch: 2,
                    frames: 8,
                    frames_per_block: 1,
                    hidden: 128,
                    depth: 4,
                    num_classes: 10,
                })
            },
            vae: Some("moving-mnist".to_string()),
            guidance: 4.0,
            min_snr_gamma: Some(MOVING_MNIST_MIN_SNR_GAMMA),
            ema_decay: 0.995,
            batch_size: 4,
            steps: 24000,
            warmup_steps: 50,
            ..Self::fashion_mnist()
        }
    }

    /// The Moving MNIST recipe's first stage, for a latent folder of single frames (`acdit
    /// cache-latents` of `acdit data moving-mnist --frames 1 --png-dir`): an image model with
    /// the video model's patch and width (4 square blocks of 2x2 tokens), which learns to draw a
    /// digit anywhere in the frame for the video stage to start from. Batch 32, 10,000 steps.
    pub fn moving_mnist_frames() -> Self {
        let video = Self::moving_mnist().model;
        Self {
            model: ModelConfig::image(
                video.in_channels,
                video.img_hw,
                video.patch_size,
                2,
                video.hidden_size,
                video.depth,
                video.num_classes,
            ),
            steps: 10000,
            min_snr_gamma: Some(MOVING_MNIST_MIN_SNR_GAMMA),
            ..Self::fashion_mnist()
        }
    }

    /// The Fashion-MNIST recipe: as [`Self::mnist`], but the garments fill the whole 28x28 frame,
    /// so they are padded to 32x32 (8x8 tokens, 4 blocks of 4x4).
    pub fn fashion_mnist() -> Self {
        Self {
            model: ModelConfig::image(1, 32, 4, 4, 128, 4, 10),
            batch_size: 32,
            steps: 5000,
            lr: 2e-3,
            lr_schedule: LrSchedule::Wsd,
            warmup_steps: 100,
            decay_fraction: 0.2,
            adamw: AdamWSettings::default(),
            grad_clip: Some(1.0),
            ema_decay: 0.9999,
            seed: 0,
            checkpoint_every: 500,
            sample_every: 1000,
            max_bad_steps: 20,
            precision: crate::device::Precision::F32,
            vae: None,
            guidance: default_guidance(),
            min_snr_gamma: None,
        }
    }

    /// The recipe for a latent folder (`acdit cache-latents`): the MNIST recipe's network (hidden
    /// 128, depth 4) on the latents as the paper lays them out (patch 1, four square blocks),
    /// for as many classes as the folder has. A larger model comes from `--config`.
    pub fn latent(latent_shape: [usize; 3], num_classes: usize) -> Self {
        let [channels, side, _] = latent_shape;
        let block_side = if side.is_multiple_of(2) {
            side / 2
        } else {
            side
        };
        Self {
            model: ModelConfig::image(channels, side, 1, block_side, 128, 4, num_classes),
            ..Self::fashion_mnist()
        }
    }

    /// Reads JSON or TOML (by extension) and checks it.
    pub fn from_file(path: &std::path::Path) -> Result<Self, crate::config::ConfigError> {
        let config: Self = crate::config::read_config_file(path)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        let invalid = |field: &'static str, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.into(),
        };
        self.model.validate()?;
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(invalid("lr", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(invalid("ema_decay", "must be in [0, 1)"));
        }
        if !crate::diffusion::blockwise::is_guidance_scale(self.guidance) {
            return Err(invalid("guidance", "must be at least 1 (1 = no guidance)"));
        }
        if self.min_snr_gamma.is_some_and(|g| g.is_nan() || g <= 0.0) {
            return Err(invalid("min_snr_gamma", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return Err(invalid("decay_fraction", "must be in [0, 1]"));
        }
        if self.checkpoint_every == 0 || self.sample_every == 0 {
            return Err(invalid("checkpoint_every", "intervals must be at least 1"));
        }
        if self.vae.is_some() && self.model.temporal_len == 1 {
            return Err(invalid(
                "vae",
                "is for video models (a latent image folder names its own VAE)",
            ));
        }
        Ok(())
    }
}

/// One batch of the ACDiT objective, on the host.
pub struct Batch {
    /// (batch, seq_len, latent)
    pub clean: Vec<f32>,
    pub noisy: Vec<f32>,
    /// The noise to predict, same shape.
    pub eps: Vec<f32>,
    /// (batch * ar_len): one timestep per block.
    pub t: Vec<f32>,
    /// (batch): labels, some replaced by the null label.
    pub labels: Vec<i64>,
}

/// Draws each block's timestep, the noise and the label dropout for `images` (with labels).
pub fn make_batch(
    config: &ModelConfig,
    schedule: &NoiseSchedule,
    images: &[f32],
    labels: &[u32],
    rng: &mut ChaCha8Rng,
) -> Batch {
    let n = labels.len();
    let clean = patchify(config, images, n);
    let block_values = config.block_size * config.latent_size;
    let eps: Vec<f32> = (0..clean.len())
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let t: Vec<usize> = (0..n * config.ar_len)
        .map(|_| rng.random_range(0..schedule.train_steps()))
        .collect();
    let mut noisy = Vec::with_capacity(clean.len());
    for (block, &tb) in t.iter().enumerate() {
        let range = block * block_values..(block + 1) * block_values;
        noisy.extend(schedule.q_sample(&clean[range.clone()], &eps[range], tb));
    }
    let labels = labels
        .iter()
        .map(|&y| {
            if rng.random::<f64>() < config.class_dropout_prob {
                config.num_classes as i64
            } else {
                y as i64
            }
        })
        .collect();
    Batch {
        clean,
        noisy,
        eps,
        t: t.iter().map(|&v| v as f32).collect(),
        labels,
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f32,
    /// False when the loss was not finite and the update was skipped.
    pub applied: bool,
}

/// How many slices of each batch compute their gradients at once, a thread each. A training
/// step's kernels are too small for burn's CPU backend to spread over cores, so one process ran
/// on about one core; two slices use both of a 2-core machine (docs/video/trials.md). The number
/// is fixed, not the machine's core count, so a run's numbers do not depend on the machine.
pub const GRADIENT_SLICES: usize = 2;

/// The state of a run: model, optimizer, EMA, randomness and data position.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Acdit,
    pub optimizer: AdamW,
    pub ema: Ema,
    pub step: u64,
    pub seconds: f64,
    /// What the run trains on, for its checkpoints; the job that loads the data sets it.
    pub source: Option<DataSource>,
    /// Slices of each batch whose gradients are computed at once ([`GRADIENT_SLICES`]; the
    /// benchmark's baseline sets 1).
    pub gradient_slices: usize,
    rng: ChaCha8Rng,
    data: DataPosition,
    order: Vec<usize>,
    schedule: NoiseSchedule,
    bad_in_a_row: u32,
}

/// The shuffle of one epoch, derived from the seed so a resumed run sees the same order.
pub(crate) fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

impl Trainer {
    /// A fresh run; `device` should have autodiff enabled.
    pub fn new(config: TrainConfig, dataset_len: usize, device: &Device) -> Self {
        device.seed(config.seed);
        let model = Acdit::new(&config.model, device);
        // Parameters are drawn lazily from the device's generator at first use; draw them all now,
        // while it is freshly seeded, so the starting weights depend on the seed alone.
        model.to_tensors();
        let ema = Ema::new(&model, config.ema_decay);
        Self {
            optimizer: AdamW::new(config.adamw),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            data: DataPosition { epoch: 0, index: 0 },
            order: epoch_order(config.seed, 0, dataset_len),
            schedule: NoiseSchedule::ddpm(),
            model,
            ema,
            config,
            step: 0,
            seconds: 0.0,
            source: None,
            gradient_slices: GRADIENT_SLICES,
            bad_in_a_row: 0,
        }
    }

    /// Replaces a fresh run's weights, and its EMA, with `tensors`: a trained model to fine-tune
    /// from. Every tensor must fit this run's model by name and shape; the rest of the config
    /// (patch grid, blocks, frames, RoPE) may differ, as it has no weights, and a start without
    /// the video's local additions gets them at zero ([`Acdit::load_start`]).
    pub fn start_from(
        &mut self,
        tensors: &NamedTensors,
    ) -> Result<(), crate::checkpoint::tensors::CheckpointError> {
        assert_eq!(self.step, 0, "only a fresh run starts from other weights");
        let device = self.model.device();
        self.model = Acdit::new(&self.config.model, &device).load_start(tensors)?;
        self.ema = Ema::new(&self.model, self.config.ema_decay);
        Ok(())
    }

    /// Continues exactly where `checkpoint` left off.
    pub fn resume(
        checkpoint: Checkpoint,
        dataset_len: usize,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let config = checkpoint.config;
        let model = Acdit::new(&config.model, device).load_tensors(&checkpoint.model)?;
        let ema_model = Acdit::new(&config.model, device)
            .load_tensors(&checkpoint.ema)?
            .valid();
        let mut optimizer = AdamW::new(config.adamw);
        optimizer.load_state(
            &checkpoint.optimizer,
            checkpoint.progress.optimizer_steps,
            device,
        );
        let progress = checkpoint.progress;
        Ok(Self {
            optimizer,
            rng: progress.rng.restore(),
            data: progress.data,
            order: epoch_order(config.seed, progress.data.epoch, dataset_len),
            schedule: NoiseSchedule::ddpm(),
            model,
            ema: Ema {
                decay: config.ema_decay,
                model: ema_model,
            },
            config,
            step: progress.step,
            seconds: progress.seconds,
            source: checkpoint.source,
            gradient_slices: GRADIENT_SLICES,
            bad_in_a_row: 0,
        })
    }

    /// The next batch's (epoch, item index) pairs, moving through shuffled epochs.
    fn next_indices(&mut self) -> Vec<(u64, usize)> {
        let n = self.order.len();
        (0..self.config.batch_size)
            .map(|_| {
                if self.data.index == n {
                    self.data = DataPosition {
                        epoch: self.data.epoch + 1,
                        index: 0,
                    };
                    self.order = epoch_order(self.config.seed, self.data.epoch, n);
                }
                self.data.index += 1;
                (self.data.epoch, self.order[self.data.index - 1])
            })
            .collect()
    }

    /// One optimizer step on the next batch of `dataset`.
    pub fn train_step(&mut self, dataset: &dyn TrainingSet) -> anyhow::Result<StepReport> {
        let indices = self.next_indices();
        let mut images = Vec::new();
        let mut labels = Vec::with_capacity(indices.len());
        for &(epoch, index) in &indices {
            let (values, label) = dataset.item(epoch, index);
            images.extend(values);
            labels.push(label);
        }
        let model_config = &self.config.model;
        let batch = make_batch(
            model_config,
            &self.schedule,
            &images,
            &labels,
            &mut self.rng,
        );
        let lr = learning_rate(
            self.config.lr_schedule,
            self.config.lr,
            self.step,
            self.config.steps,
            self.config.warmup_steps,
            self.config.decay_fraction,
        );
        self.step += 1;
        let (loss_value, grads) = self.batch_gradients(&batch, self.gradient_slices);
        let (model, grad_norm) = self.optimizer.apply_if_finite(
            self.model.clone(),
            &grads,
            lr,
            self.config.grad_clip,
            |_| 1.0,
        );
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            self.bad_in_a_row += 1;
            if self.bad_in_a_row > self.config.max_bad_steps {
                anyhow::bail!(
                    "{} non-finite losses in a row (last at step {}): stopping; lower the learning rate",
                    self.bad_in_a_row,
                    self.step
                );
            }
            return Ok(StepReport {
                step: self.step,
                loss: loss_value,
                lr,
                grad_norm,
                applied: false,
            });
        }
        self.bad_in_a_row = 0;
        self.model = model;
        self.ema.update(&self.model, self.step);
        Ok(StepReport {
            step: self.step,
            loss: loss_value,
            lr,
            grad_norm,
            applied: true,
        })
    }

    /// The batch's mean loss and its gradients by parameter name, computed in `slices` slices
    /// of the batch at once, one a thread, and summed. Each slice's loss is its share of the
    /// whole batch's mean, so the sum is the whole batch's gradient.
    /// Each slice runs on its own copy of the parameters (new autodiff leaves): slices that shared
    /// them would share one autodiff graph, and its lock would run them one after the other.
    fn batch_gradients(&self, batch: &Batch, slices: usize) -> (f64, BTreeMap<String, Tensor<1>>) {
        let n = batch.labels.len();
        let slice_len = n.div_ceil(slices);
        let slices: Vec<std::ops::Range<usize>> = (0..n)
            .step_by(slice_len)
            .map(|start| start..(start + slice_len).min(n))
            .collect();
        let parts: Vec<(f64, BTreeMap<String, Tensor<1>>)> = slices
            .into_par_iter()
            .map(|items| self.slice_gradients(batch, items))
            .collect();
        let mut parts = parts.into_iter();
        let (mut loss, mut grads) = parts.next().expect("a batch has at least one item");
        for (part_loss, part_grads) in parts {
            loss += part_loss;
            for (name, g) in part_grads {
                let sum = match grads.remove(&name) {
                    Some(total) => total + g,
                    None => g,
                };
                grads.insert(name, sum);
            }
        }
        (loss, grads)
    }

    /// The gradients of the batch's items `items`, their loss summed and divided by the whole
    /// batch's element count.
    fn slice_gradients(
        &self,
        batch: &Batch,
        items: std::ops::Range<usize>,
    ) -> (f64, BTreeMap<String, Tensor<1>>) {
        let config = &self.config.model;
        let device = self.model.device();
        let item_values = config.seq_len() * config.latent_size;
        let blocks = config.ar_len;
        let shape = [items.len(), config.seq_len(), config.latent_size];
        let upload = |v: &[f32]| {
            let v = &v[items.start * item_values..items.end * item_values];
            Tensor::<1>::from_floats(v, &device).reshape(shape)
        };
        let dtype = self.config.precision.dtype();
        let leaves = self.model.clone().fork(&device);
        let compute = match self.config.precision {
            crate::device::Precision::F32 => leaves.clone(),
            crate::device::Precision::Bf16 => cast_in_graph(leaves.clone(), dtype),
        };
        let predicted = compute.forward_train(
            upload(&batch.clean).cast(dtype),
            upload(&batch.noisy).cast(dtype),
            &batch.t[items.start * blocks..items.end * blocks],
            &batch.labels[items.clone()],
        );
        let squared = (predicted.cast(burn::tensor::DType::F32) - upload(&batch.eps)).square();
        let squared = match self.config.min_snr_gamma {
            None => squared,
            Some(gamma) => {
                let weights: Vec<f32> = batch.t[items.start * blocks..items.end * blocks]
                    .iter()
                    .map(|&t| self.schedule.min_snr_weight(t as usize, gamma) as f32)
                    .collect();
                let weights = Tensor::<1>::from_floats(weights.as_slice(), &device).reshape([
                    items.len(),
                    blocks,
                    1,
                ]);
                squared.reshape([items.len(), blocks, item_values / blocks]) * weights
            }
        };
        let loss = squared.sum() / (batch.eps.len() as f64);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let grads = loss.backward();
        (loss_value, flat_params(&leaves, Some(&grads)))
    }

    /// Everything needed to continue this run.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            config: self.config.clone(),
            progress: Progress {
                step: self.step,
                optimizer_steps: self.optimizer.steps,
                rng: RngState::capture(&self.rng),
                data: self.data,
                seconds: self.seconds,
            },
            source: self.source.clone(),
            model: self.model.to_tensors(),
            ema: self.ema.model.to_tensors(),
            optimizer: self.optimizer.state_tensors(),
        }
    }

    /// The EMA weights under reference names.
    pub fn ema_tensors(&self) -> NamedTensors {
        self.ema.model.to_tensors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageDataset;

    pub(super) fn tiny_run(steps: u64) -> (TrainConfig, ImageDataset) {
        let mut config = TrainConfig::mnist();
        config.model = ModelConfig::image(1, 8, 2, 2, 64, 1, 3);
        config.model.rope_max_lens = vec![4, 4];
        config.batch_size = 4;
        config.steps = steps;
        config.warmup_steps = 1;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let n = 10;
        let dataset = ImageDataset {
            images: (0..n * 64).map(|_| rng.random_range(-1.0..1.0)).collect(),
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            n,
            channels: 1,
            height: 8,
            width: 8,
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        (config, dataset)
    }

    #[test]
    fn a_min_snr_gamma_that_is_not_positive_is_refused_by_name() {
        for bad in [0.0, -1.0, f64::NAN] {
            let config = TrainConfig {
                min_snr_gamma: Some(bad),
                ..TrainConfig::moving_mnist()
            };
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("min_snr_gamma"), "{bad}: {message}");
        }
    }

    #[test]
    fn a_guidance_below_one_is_refused_by_name() {
        for bad in [0.5, f64::NAN, f64::INFINITY] {
            let config = TrainConfig {
                guidance: bad,
                ..TrainConfig::moving_mnist()
            };
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("guidance"), "{bad}: {message}");
        }
        assert!(TrainConfig::moving_mnist().validate().is_ok());
    }

    /// bf16 compute through a cast of the f32 weights: the weights, moments and EMA stay
    /// f32, the steps follow the f32 run's losses closely, and they still train.
    #[test]
    fn bf16_training_keeps_f32_weights_and_follows_the_f32_run() {
        let device = Device::flex().autodiff();
        let (config, dataset) = tiny_run(4);
        let mut losses = Vec::new();
        for precision in [
            crate::device::Precision::F32,
            crate::device::Precision::Bf16,
        ] {
            let mut config = config.clone();
            config.precision = precision;
            let mut trainer = Trainer::new(config, dataset.n, &device);
            let before = trainer.model.to_tensors();
            let run: Vec<f64> = (0..4)
                .map(|_| trainer.train_step(&dataset).unwrap().loss)
                .collect();
            let dtype = trainer.model.x_embedder.weight.val().dtype();
            assert_eq!(dtype, burn::tensor::DType::F32, "{precision:?}");
            let ema_dtype = trainer.ema.model.x_embedder.weight.val().dtype();
            assert_eq!(ema_dtype, burn::tensor::DType::F32, "{precision:?}");
            assert_ne!(
                trainer.model.to_tensors(),
                before,
                "{precision:?} did not train"
            );
            losses.push(run);
        }
        // The first step's output is zero (adaLN-Zero) in either type; later ones differ a little.
        for (a, b) in losses[0].iter().zip(&losses[1]) {
            assert!(((a - b) / a).abs() < 0.05, "f32 {a} against bf16 {b}");
        }
        assert_ne!(
            losses[0][1..],
            losses[1][1..],
            "the bf16 run computed in f32"
        );
    }

    /// A batch's gradient computed in slices, a thread each, is the whole batch's gradient: each
    /// slice's loss is its share of the batch's mean, and every slice has its own leaves.
    #[test]
    fn gradients_summed_over_slices_of_the_batch_are_the_whole_batchs() {
        let device = Device::flex().autodiff();
        let (mut config, dataset) = tiny_run(3);
        config.batch_size = 5;
        let mut trainer = Trainer::new(config, dataset.n, &device);
        // Past the first steps, so that adaLN-Zero's zero layers pass gradients back.
        for _ in 0..3 {
            trainer.train_step(&dataset).unwrap();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let batch = make_batch(
            &trainer.config.model,
            &trainer.schedule,
            &dataset.images[..5 * 64],
            &dataset.labels[..5],
            &mut rng,
        );
        let (whole_loss, whole) = trainer.batch_gradients(&batch, 1);
        let host = |t: &Tensor<1>| t.clone().into_data().try_to_vec::<f32>().unwrap();
        let first_block = whole
            .iter()
            .find(|(name, _)| name.starts_with("blocks.0.attn"))
            .expect("a first-block attention gradient");
        assert!(host(first_block.1).iter().any(|g| *g != 0.0));
        for slices in [2, 5] {
            let (loss, sliced) = trainer.batch_gradients(&batch, slices);
            assert!(
                (loss - whole_loss).abs() < 1e-6 * whole_loss,
                "{slices}: loss {loss} against {whole_loss}"
            );
            assert_eq!(
                sliced.keys().collect::<Vec<_>>(),
                whole.keys().collect::<Vec<_>>()
            );
            for (name, g) in &whole {
                let (a, b) = (host(g), host(&sliced[name]));
                let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = crate::testing::largest_difference(&a, &b);
                assert!(
                    worst <= 1e-4 * scale,
                    "{slices} slices, {name}: off by {worst} of {scale}"
                );
            }
        }
    }

    /// With Min-SNR-gamma each block's squared error counts min(SNR, gamma) / SNR times, at its
    /// own timestep, also when the batch is sliced: checked against the same sum on the host.
    #[test]
    fn min_snr_loss_weighs_each_blocks_error_at_its_own_timestep() {
        let device = Device::flex().autodiff();
        let (mut config, dataset) = tiny_run(1);
        config.min_snr_gamma = Some(5.0);
        config.batch_size = 3;
        let trainer = Trainer::new(config, dataset.n, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut batch = make_batch(
            &trainer.config.model,
            &trainer.schedule,
            &dataset.images[..3 * 64],
            &dataset.labels[..3],
            &mut rng,
        );
        // Nearly clean blocks (weights far below 1) beside noisy ones (weight 1).
        let blocks = trainer.config.model.ar_len;
        for (i, t) in batch.t.iter_mut().enumerate() {
            *t = [0.0, 20.0, 500.0, 999.0][i % 4];
        }
        let model = &trainer.config.model;
        let shape = [3, model.seq_len(), model.latent_size];
        let upload = |v: &[f32]| Tensor::<1>::from_floats(v, &device).reshape(shape);
        let predicted = trainer
            .model
            .forward_train(
                upload(&batch.clean),
                upload(&batch.noisy),
                &batch.t,
                &batch.labels,
            )
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let block_values = predicted.len() / (3 * blocks);
        let squared = |b: usize| -> f64 {
            let range = b * block_values..(b + 1) * block_values;
            predicted[range.clone()]
                .iter()
                .zip(&batch.eps[range])
                .map(|(p, e)| f64::from(p - e).powi(2))
                .sum()
        };
        let len = batch.eps.len() as f64;
        let plain: f64 = (0..3 * blocks).map(squared).sum::<f64>() / len;
        let weighted: f64 = (0..3 * blocks)
            .map(|b| squared(b) * trainer.schedule.min_snr_weight(batch.t[b] as usize, 5.0))
            .sum::<f64>()
            / len;
        assert!(weighted < 0.9 * plain, "{weighted} against {plain}");
        for slices in [1, 3] {
            let (loss, _) = trainer.batch_gradients(&batch, slices);
            assert!(
                (loss - weighted).abs() < 1e-5 * weighted,
                "{slices} slices: {loss} against {weighted}"
            );
        }
    }

    #[test]
    fn resume_continues_bit_for_bit() {
        let device = Device::flex().autodiff();
        let (config, dataset) = tiny_run(6);
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let (start, middle) = (
            dir.join("start.safetensors"),
            dir.join("middle.safetensors"),
        );
        // Both runs start from the same saved weights (the device's generator is shared with
        // tests running beside this one).
        Trainer::new(config, dataset.n, &device)
            .checkpoint()
            .save(&start, Default::default())
            .unwrap();
        let load = |path: &std::path::Path| {
            Trainer::resume(Checkpoint::load(path).unwrap(), dataset.n, &device).unwrap()
        };
        // 6 steps straight; 10 items per epoch at batch 4 also crosses epoch boundaries.
        let mut straight = load(&start);
        for _ in 0..6 {
            straight.train_step(&dataset).unwrap();
        }
        let mut first = load(&start);
        for _ in 0..3 {
            first.train_step(&dataset).unwrap();
        }
        first
            .checkpoint()
            .save(&middle, Default::default())
            .unwrap();
        drop(first);
        let mut resumed = load(&middle);
        for _ in 0..3 {
            resumed.train_step(&dataset).unwrap();
        }
        let initial = Checkpoint::load(&start).unwrap().model;
        let (a, b) = (straight.checkpoint(), resumed.checkpoint());
        assert_ne!(a.model, initial, "training changed nothing");
        assert_eq!(a.model, b.model, "weights differ after resume");
        assert_eq!(a.ema, b.ema, "EMA differs after resume");
        assert_eq!(
            a.optimizer, b.optimizer,
            "optimizer moments differ after resume"
        );
        assert_eq!(a.progress.data, b.progress.data);
        assert_eq!(a.progress.rng, b.progress.rng);
    }

    #[test]
    fn diverging_loss_skips_steps_then_stops() {
        let device = Device::flex().autodiff();
        let (mut config, dataset) = tiny_run(50);
        config.lr = 1e30;
        config.warmup_steps = 0;
        config.grad_clip = None;
        config.max_bad_steps = 2;
        let mut trainer = Trainer::new(config, dataset.n, &device);
        let mut skipped = 0;
        let error = loop {
            match trainer.train_step(&dataset) {
                Ok(report) => skipped += usize::from(!report.applied),
                Err(error) => break error,
            }
            assert!(trainer.step < 50, "never diverged");
        };
        assert_eq!(skipped, 2);
        assert!(error.to_string().contains("non-finite"), "{error}");
    }

    #[test]
    fn batches_noise_each_block_at_its_own_timestep() {
        let (config, dataset) = tiny_run(1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let schedule = NoiseSchedule::ddpm();
        let batch = make_batch(
            &config.model,
            &schedule,
            &dataset.images[..4 * 64],
            &dataset.labels[..4],
            &mut rng,
        );
        let block_values = config.model.block_size * config.model.latent_size;
        assert_eq!(batch.t.len(), 4 * config.model.ar_len);
        for (block, &t) in batch.t.iter().enumerate() {
            let (a, b) = schedule.q_coefficients(t as usize);
            let i = block * block_values;
            let expected = a * batch.clean[i] + b * batch.eps[i];
            assert!((batch.noisy[i] - expected).abs() < 1e-6);
        }
    }
}
