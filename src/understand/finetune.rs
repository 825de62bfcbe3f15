//! Fine-tuning: the whole network with a linear head on its pooled features (the clean path for
//! a model of blocks, timestep 0 for a full-sequence one), cross-entropy, AdamW with cosine decay
//! and optional layer-wise learning-rate decay. A run is resumable exactly, as training is, and
//! its file is the classifier `acdit classify` loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::features::{Pool, check_layer, image_tokens, pool_states, pooled_width, token_states};
use super::images::load_split;
use crate::checkpoint::tensors::write_safetensors_atomic;
use crate::checkpoint::tensors::{HostTensor, NamedTensors, SafetensorsFile};
use crate::config::ModelConfig;
use crate::data::ImageDataset;
use crate::data::idx::Split;
use crate::model::Acdit;
use crate::model::weights::to_burn_layout;
use crate::train::epoch_order;
use crate::train::lr::{LrSchedule, learning_rate};
use crate::train::optim::{AdamW, AdamWSettings};
use crate::train::state::DataPosition;

const FORMAT: &str = "acdit-classifier-v1";

/// How a fine-tuning run is configured; saved in its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The block whose output the head reads (from 1); later blocks are not used.
    pub layer: usize,
    pub pool: Pool,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (of the head, and of every layer without layer decay).
    pub lr: f64,
    pub warmup_steps: u64,
    /// Layer-wise decay: block i of L gets `lr * decay^(L - i)` (i from 0), the embeddings
    /// `lr * decay^(L + 1)`. None trains every layer at `lr`.
    pub layer_decay: Option<f64>,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    pub checkpoint_every: u64,
}

impl FinetuneConfig {
    /// Two epochs at batch 64, peak 1e-3 with 100 warmup steps and cosine decay, weight decay
    /// 0.05, clipping at 1, no layer decay, the head on the mean of the last block's output (the
    /// same reading for a model of blocks and a full-sequence one, so they compare fairly).
    pub fn for_model(config: &ModelConfig) -> Self {
        Self {
            layer: config.depth,
            pool: Pool::Mean,
            epochs: 2,
            batch_size: 64,
            lr: 1e-3,
            warmup_steps: 100,
            layer_decay: None,
            weight_decay: 0.05,
            grad_clip: Some(1.0),
            seed: 0,
            checkpoint_every: 500,
        }
    }

    pub fn validate(&self, model: &ModelConfig) -> Result<()> {
        check_layer(model, self.layer)?;
        if self.epochs == 0 || self.batch_size == 0 || self.checkpoint_every == 0 {
            bail!("--epochs, --batch-size and checkpoint intervals must be at least 1");
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            bail!("--lr must be positive");
        }
        if let Some(decay) = self.layer_decay
            && !(decay > 0.0 && decay <= 1.0)
        {
            bail!("--layer-decay must be in (0, 1]");
        }
        Ok(())
    }

    /// The learning-rate factor of parameter `name` under layer decay.
    fn lr_scale(&self, name: &str) -> f64 {
        let Some(decay) = self.layer_decay else {
            return 1.0;
        };
        let Some(encoder) = name.strip_prefix("encoder.") else {
            return 1.0; // the head
        };
        let depth = self.layer as i32;
        match encoder
            .strip_prefix("blocks.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<i32>().ok())
        {
            Some(block) => decay.powi(depth - block),
            None => decay.powi(depth + 1),
        }
    }
}

/// The network with a linear head: images' tokens -> class logits.
#[derive(Module, Debug)]
pub struct Classifier {
    pub encoder: Acdit,
    pub head: Linear,
    #[module(skip)]
    layer: usize,
    #[module(skip)]
    pool: Pool,
}

impl Classifier {
    /// A fresh head (zero-initialised, so training starts from uniform predictions) on `encoder`.
    pub fn new(encoder: Acdit, layer: usize, pool: Pool, classes: usize) -> Self {
        let width = pooled_width(encoder.config(), pool);
        let device = encoder.device();
        Self {
            head: LinearConfig::new(width, classes)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(&device),
            encoder,
            layer,
            pool,
        }
    }

    /// tokens: (n, seq_len, latent) -> logits (n, classes).
    pub fn forward(&self, tokens: Tensor<3>) -> Tensor<2> {
        let states = token_states(&self.encoder, tokens, self.layer);
        let pooled = pool_states(states, self.encoder.config().block_size, self.pool);
        self.head.forward(pooled)
    }

    /// Class probabilities of images: pixels (n, channels, size, size) -> (n, classes).
    pub fn probabilities(&self, pixels: &[f32], n: usize) -> Vec<f32> {
        let tokens = image_tokens(self.encoder.config(), pixels, n, &self.encoder.device());
        softmax(self.forward(tokens), 1)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 probabilities")
    }

    /// The encoder's tensors under `encoder.<reference name>`, the head's as PyTorch keeps a
    /// linear layer (`head.weight` (classes, width), `head.bias`).
    fn to_tensors(&self) -> NamedTensors {
        let mut out: NamedTensors = self
            .encoder
            .to_tensors()
            .into_iter()
            .map(|(name, t)| (format!("encoder.{name}"), t))
            .collect();
        let weight = self.head.weight.val();
        let shape = weight.dims().to_vec();
        out.insert(
            "head.weight".into(),
            to_burn_layout("head.weight", &host(weight, shape)),
        );
        if let Some(bias) = &self.head.bias {
            let classes = bias.val().dims()[0];
            out.insert("head.bias".into(), host(bias.val(), vec![classes]));
        }
        out
    }

    /// Loads what [`Self::to_tensors`] wrote into a classifier of this shape.
    fn load_tensors(self, tensors: &NamedTensors, path: &Path) -> Result<Self> {
        let encoder: NamedTensors = tensors
            .iter()
            .filter_map(|(name, t)| Some((name.strip_prefix("encoder.")?.to_string(), t.clone())))
            .collect();
        let encoder = self
            .encoder
            .load_tensors(&encoder)
            .with_context(|| format!("{}: the encoder's weights", path.display()))?;
        let device = encoder.device();
        let [width, classes] = self.head.weight.val().dims();
        let tensor = |name: &str, shape: Vec<usize>| -> Result<HostTensor> {
            let t = tensors
                .get(name)
                .with_context(|| format!("{}: no tensor {name}", path.display()))?;
            if t.shape != shape {
                bail!(
                    "{}: {name} is {:?}, expected {shape:?}",
                    path.display(),
                    t.shape
                );
            }
            Ok(t.clone())
        };
        // Transposed on the host, so the weight is as contiguous as a trained one: a strided
        // view would change the matmuls' rounding and a resumed run would drift.
        let weight = to_burn_layout("head.weight", &tensor("head.weight", vec![classes, width])?);
        let bias = tensor("head.bias", vec![classes])?;
        let upload = |t: &HostTensor| Tensor::<1>::from_floats(t.data.as_slice(), &device);
        let mut head = self.head;
        head.weight = burn::module::Param::from_tensor(upload(&weight).reshape([width, classes]));
        head.bias = Some(burn::module::Param::from_tensor(upload(&bias)));
        Ok(Self {
            encoder,
            head,
            ..self
        })
    }
}

fn host<const D: usize>(t: Tensor<D>, shape: Vec<usize>) -> HostTensor {
    HostTensor {
        shape,
        data: t.into_data().try_to_vec::<f32>().expect("f32 weights"),
    }
}

/// Where a fine-tuning run stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinetuneProgress {
    pub step: u64,
    pub total_steps: u64,
    pub optimizer_steps: u64,
    pub data: DataPosition,
    pub seconds: f64,
    /// Test accuracy, once the run is finished.
    pub test_accuracy: Option<f64>,
}

/// What a classifier file says beside its tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierInfo {
    pub model: ModelConfig,
    pub finetune: FinetuneConfig,
    pub class_names: Vec<String>,
    /// The side of the images it was trained on, before centring to the model's frame.
    pub data_size: usize,
    /// The weights it started from.
    pub base: String,
    pub progress: FinetuneProgress,
}

/// A classifier file held in memory: its description, weights and optimizer state.
pub struct ClassifierFile {
    pub info: ClassifierInfo,
    pub weights: NamedTensors,
    pub optimizer: NamedTensors,
}

impl ClassifierFile {
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: NamedTensors = self
            .weights
            .iter()
            .chain(&self.optimizer)
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let metadata = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("classifier".to_string(), serde_json::to_string(&self.info)?),
        ]);
        write_safetensors_atomic(path, &tensors, Some(metadata))
            .with_context(|| format!("writing classifier {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let metadata = file.metadata();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            bail!(
                "{} is not a classifier of `acdit finetune` (no `format: {FORMAT}` metadata)",
                path.display()
            );
        }
        let info: ClassifierInfo = serde_json::from_str(
            metadata
                .get("classifier")
                .with_context(|| format!("{}: metadata has no `classifier`", path.display()))?,
        )
        .with_context(|| format!("{}: bad `classifier` metadata", path.display()))?;
        let (mut weights, mut optimizer) = (NamedTensors::new(), NamedTensors::new());
        for name in file.names() {
            let tensor = file.f32(&name)?;
            if name.starts_with("adam.") {
                optimizer.insert(name, tensor);
            } else {
                weights.insert(name, tensor);
            }
        }
        Ok(Self {
            info,
            weights,
            optimizer,
        })
    }

    /// The classifier on `device`.
    pub fn classifier(&self, path: &Path, device: &Device) -> Result<Classifier> {
        let info = &self.info;
        info.model.validate()?;
        info.finetune.validate(&info.model)?;
        let encoder = Acdit::new(&info.model, device);
        Classifier::new(
            encoder,
            info.finetune.layer,
            info.finetune.pool,
            info.class_names.len(),
        )
        .load_tensors(&self.weights, path)
    }
}

/// A fine-tuning run in memory: the classifier, its optimizer and where the data stands.
pub struct Finetuner {
    pub config: FinetuneConfig,
    pub classifier: Classifier,
    pub optimizer: AdamW,
    pub progress: FinetuneProgress,
    order: Vec<usize>,
}

impl Finetuner {
    /// A fresh run on `encoder` (on an autodiff device) for `n` training images.
    pub fn new(encoder: Acdit, config: FinetuneConfig, classes: usize, n: usize) -> Self {
        let steps_per_epoch = (n / config.batch_size).max(1) as u64;
        Self {
            classifier: Classifier::new(encoder, config.layer, config.pool, classes),
            optimizer: AdamW::new(AdamWSettings {
                weight_decay: config.weight_decay,
                ..AdamWSettings::default()
            }),
            progress: FinetuneProgress {
                step: 0,
                total_steps: steps_per_epoch * config.epochs as u64,
                optimizer_steps: 0,
                data: DataPosition { epoch: 0, index: 0 },
                seconds: 0.0,
                test_accuracy: None,
            },
            order: epoch_order(config.seed, 0, n),
            config,
        }
    }

    /// Continues a run from its file, on an autodiff `device`.
    pub fn resume(file: &ClassifierFile, path: &Path, n: usize, device: &Device) -> Result<Self> {
        let classifier = file.classifier(path, device)?;
        let config = file.info.finetune.clone();
        let mut optimizer = AdamW::new(AdamWSettings {
            weight_decay: config.weight_decay,
            ..AdamWSettings::default()
        });
        let progress = file.info.progress.clone();
        optimizer.load_state(&file.optimizer, progress.optimizer_steps, device);
        Ok(Self {
            order: epoch_order(config.seed, progress.data.epoch, n),
            classifier,
            optimizer,
            progress,
            config,
        })
    }

    pub fn finished(&self) -> bool {
        self.progress.step >= self.progress.total_steps
    }

    /// One step on the next batch of `train`; returns the loss.
    pub fn step(&mut self, train: &ImageDataset) -> f64 {
        let n = self.order.len();
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..self.config.batch_size {
            if self.progress.data.index == n {
                self.progress.data = DataPosition {
                    epoch: self.progress.data.epoch + 1,
                    index: 0,
                };
                self.order = epoch_order(self.config.seed, self.progress.data.epoch, n);
            }
            let i = self.order[self.progress.data.index];
            self.progress.data.index += 1;
            pixels.extend_from_slice(train.image(i));
            labels.push(train.labels[i]);
        }
        let classifier = &self.classifier;
        let device = classifier.encoder.device();
        let batch = labels.len();
        let tokens = image_tokens(classifier.encoder.config(), &pixels, batch, &device);
        let classes = classifier.head.weight.val().dims()[1];
        let mut onehot = vec![0.0f32; batch * classes];
        for (row, &label) in labels.iter().enumerate() {
            onehot[row * classes + label as usize] = 1.0;
        }
        let onehot = Tensor::<1>::from_floats(onehot.as_slice(), &device).reshape([batch, classes]);
        let loss = -(log_softmax(classifier.forward(tokens), 1) * onehot)
            .sum_dim(1)
            .mean();
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let lr = learning_rate(
            LrSchedule::Cosine,
            self.config.lr,
            self.progress.step,
            self.progress.total_steps,
            self.config.warmup_steps,
            0.0,
        );
        let grads = loss.backward();
        let config = &self.config;
        let (classifier, _) = self.optimizer.step_if_finite_scaled(
            self.classifier.clone(),
            &grads,
            lr,
            config.grad_clip,
            |name| config.lr_scale(name),
        );
        self.classifier = classifier;
        self.progress.step += 1;
        self.progress.optimizer_steps = self.optimizer.steps;
        loss_value
    }

    /// Everything needed to continue, or to classify.
    pub fn file(&self, class_names: &[String], data_size: usize, base: &str) -> ClassifierFile {
        ClassifierFile {
            info: ClassifierInfo {
                model: self.classifier.encoder.config().clone(),
                finetune: self.config.clone(),
                class_names: class_names.to_vec(),
                data_size,
                base: base.to_string(),
                progress: self.progress.clone(),
            },
            weights: self.classifier.to_tensors(),
            optimizer: self.optimizer.state_tensors(),
        }
    }
}

/// The share of `images` a classifier labels correctly, in batches of `batch`.
pub fn accuracy(classifier: &Classifier, images: &ImageDataset, batch: usize) -> f64 {
    let mut right = 0;
    for start in (0..images.n).step_by(batch) {
        let count = batch.min(images.n - start);
        let pixels =
            &images.images[start * images.image_len()..(start + count) * images.image_len()];
        let probabilities = classifier.probabilities(pixels, count);
        let classes = probabilities.len() / count;
        for (row, label) in probabilities
            .chunks(classes)
            .zip(&images.labels[start..start + count])
        {
            right += usize::from(argmax(row) == *label as usize);
        }
    }
    right as f64 / images.n as f64
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// What `acdit finetune` was asked for.
pub struct FinetuneJob {
    /// IDX files or a folder of class subfolders; None for MNIST (fetched, else built in).
    pub data: Option<PathBuf>,
    /// The settings of a fresh run (ignored when resuming).
    pub config: FinetuneConfig,
    /// A classifier file to continue; its own settings hold.
    pub resume: Option<PathBuf>,
    pub out: PathBuf,
}

impl FinetuneJob {
    /// Fine-tunes `base` (loaded on an autodiff device; unused when resuming) to the last step,
    /// or until Ctrl-C, then measures test accuracy.
    pub fn run(&self, base: Acdit, base_name: &str, class_names: &[String]) -> Result<f64> {
        let device = base.device();
        let resumed = self
            .resume
            .as_deref()
            .map(ClassifierFile::load)
            .transpose()?;
        let model_config = match &resumed {
            Some(file) => file.info.model.clone(),
            None => base.config().clone(),
        };
        let train_split = load_split(self.data.as_deref(), Split::Train, &model_config)?;
        let (train, described) = (train_split.images, train_split.described);
        let data_size = train_split.stored_size;
        let test = load_split(self.data.as_deref(), Split::Test, &model_config)?.images;
        let (mut tuner, class_names, base_name) = match &resumed {
            Some(file) => {
                let path = self.resume.as_deref().expect("resumed from a file");
                let tuner = Finetuner::resume(file, path, train.n, &device)?;
                if tuner.finished() {
                    bail!(
                        "{} is already at step {} of {}: nothing to fine-tune",
                        path.display(),
                        tuner.progress.step,
                        tuner.progress.total_steps
                    );
                }
                (tuner, file.info.class_names.clone(), file.info.base.clone())
            }
            None => {
                self.config.validate(&model_config)?;
                let classes = class_names.len().max(train.num_classes);
                let names = (0..classes)
                    .map(|c| class_names.get(c).cloned().unwrap_or_else(|| c.to_string()))
                    .collect();
                let tuner = Finetuner::new(base, self.config.clone(), classes, train.n);
                (tuner, names, base_name.to_string())
            }
        };
        println!(
            "fine-tuning on {described}: block {} of {}, {} pooling, {} steps of {}",
            tuner.config.layer,
            model_config.depth,
            crate::choice::Choice::name(tuner.config.pool),
            tuner.progress.total_steps,
            tuner.config.batch_size
        );
        let save = |tuner: &Finetuner| {
            tuner
                .file(&class_names, data_size, &base_name)
                .save(&self.out)
        };
        let stop = crate::train::run::stop_on_ctrl_c();
        let bar = ProgressBar::new(tuner.progress.total_steps)
            .with_position(tuner.progress.step)
            .with_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} loss {msg} [{elapsed} < {eta}]")
                    .expect("a valid progress template"),
            );
        let started = Instant::now();
        let seconds_before = tuner.progress.seconds;
        let mut smoothed: Option<f64> = None;
        while !tuner.finished() && !stop.load(Ordering::SeqCst) {
            let loss = tuner.step(&train);
            if !loss.is_finite() {
                bail!(
                    "step {}: the loss is {loss}; lower --lr",
                    tuner.progress.step
                );
            }
            smoothed = Some(smoothed.map_or(loss, |s| 0.98 * s + 0.02 * loss));
            tuner.progress.seconds = seconds_before + started.elapsed().as_secs_f64();
            bar.set_position(tuner.progress.step);
            bar.set_message(format!("{:.4}", smoothed.unwrap_or(f64::NAN)));
            if tuner
                .progress
                .step
                .is_multiple_of(tuner.config.checkpoint_every)
            {
                save(&tuner)?;
            }
        }
        bar.finish();
        if !tuner.finished() {
            save(&tuner)?;
            println!(
                "stopped at step {}; resume with --resume {}",
                tuner.progress.step,
                self.out.display()
            );
            return Ok(f64::NAN);
        }
        let test_accuracy = accuracy(&tuner.classifier.valid(), &test, 256);
        tuner.progress.test_accuracy = Some(test_accuracy);
        save(&tuner)?;
        println!(
            "test accuracy {:.2}% on {} images; classifier {}",
            100.0 * test_accuracy,
            test.n,
            self.out.display()
        );
        Ok(test_accuracy)
    }
}

/// One image's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub class: usize,
    pub name: String,
    pub probability: f32,
}

/// Classifies image files with a classifier file.
pub fn classify(path: &Path, images: &[&Path], device: &Device) -> Result<Vec<Verdict>> {
    let file = ClassifierFile::load(path)?;
    let classifier = file.classifier(path, device)?;
    let info = &file.info;
    let pixels = super::images::read_images(images, &info.model, info.data_size)?;
    let probabilities = classifier.probabilities(&pixels, images.len());
    let classes = info.class_names.len();
    Ok(probabilities
        .chunks(classes)
        .map(|row| {
            let class = argmax(row);
            Verdict {
                class,
                name: info.class_names[class].clone(),
                probability: row[class],
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{random_model, tiny_config};

    /// Bright-left or bright-right 8x8 images: two classes any encoder can tell apart.
    fn halves(n: usize) -> ImageDataset {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let class = (i % 2) as u32;
            for _y in 0..8 {
                for x in 0..8 {
                    let bright = (x < 4) == (class == 0);
                    let wobble = ((i * 7 + x) % 5) as f32 * 0.05;
                    images.push(if bright { 0.8 - wobble } else { -0.8 + wobble });
                }
            }
            labels.push(class);
        }
        ImageDataset {
            images,
            labels,
            n,
            channels: 1,
            height: 8,
            width: 8,
            num_classes: 2,
            class_names: vec!["left".into(), "right".into()],
        }
    }

    fn tiny_finetune() -> FinetuneConfig {
        FinetuneConfig {
            epochs: 3,
            batch_size: 8,
            lr: 3e-3,
            warmup_steps: 2,
            layer_decay: Some(0.8),
            checkpoint_every: 2,
            ..FinetuneConfig::for_model(&tiny_config(2))
        }
    }

    #[test]
    fn fine_tuning_learns_a_separable_task() {
        let device = Device::flex().autodiff();
        let config = tiny_config(2);
        let data = halves(32);
        let mut tuner = Finetuner::new(random_model(&config, &device, 1), tiny_finetune(), 2, 32);
        assert!((accuracy(&tuner.classifier.valid(), &data, 16) - 0.5).abs() < 0.01);
        while !tuner.finished() {
            tuner.step(&data);
        }
        assert_eq!(accuracy(&tuner.classifier.valid(), &data, 16), 1.0);
    }

    #[test]
    fn a_resumed_fine_tune_equals_an_uninterrupted_one() {
        let device = Device::flex().autodiff();
        let config = tiny_config(2);
        let data = halves(24);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("classifier.safetensors");
        let names = data.class_names.clone();

        // Both runs start from the same saved file, so their weights have one memory layout.
        let start = dir.path().join("start.safetensors");
        Finetuner::new(random_model(&config, &device, 2), tiny_finetune(), 2, 24)
            .file(&names, 8, "random")
            .save(&start)
            .unwrap();
        let load = |path: &Path| {
            let file = ClassifierFile::load(path).unwrap();
            Finetuner::resume(&file, path, 24, &device).unwrap()
        };
        let mut straight = load(&start);
        let mut halted = load(&start);
        for _ in 0..5 {
            straight.step(&data);
        }
        for _ in 0..3 {
            halted.step(&data);
        }
        halted.file(&names, 8, "random").save(&path).unwrap();
        let mut resumed = load(&path);
        for _ in 0..2 {
            resumed.step(&data);
        }
        assert_eq!(resumed.progress, straight.progress);
        let (resumed, straight) = (
            resumed.classifier.to_tensors(),
            straight.classifier.to_tensors(),
        );
        let differ: Vec<&String> = straight
            .keys()
            .filter(|name| resumed.get(*name) != straight.get(*name))
            .collect();
        assert!(differ.is_empty(), "{differ:?}");
    }

    #[test]
    fn layer_decay_scales_deeper_layers_less() {
        let config = FinetuneConfig {
            layer: 2,
            layer_decay: Some(0.5),
            ..FinetuneConfig::for_model(&tiny_config(2))
        };
        assert_eq!(config.lr_scale("head.weight"), 1.0);
        assert_eq!(config.lr_scale("encoder.blocks.1.mlp.fc1.weight"), 0.5);
        assert_eq!(config.lr_scale("encoder.blocks.0.attn.qkv.weight"), 0.25);
        assert_eq!(config.lr_scale("encoder.x_embedder.weight"), 0.125);
    }

    #[test]
    fn classify_refuses_an_image_of_the_wrong_size() {
        let device = Device::flex();
        let config = tiny_config(2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("classifier.safetensors");
        let tuner = Finetuner::new(random_model(&config, &device, 3), tiny_finetune(), 2, 16);
        tuner
            .file(&["a".into(), "b".into()], 8, "random")
            .save(&path)
            .unwrap();
        let good = dir.path().join("good.png");
        let bad = dir.path().join("bad.png");
        image::GrayImage::new(8, 8).save(&good).unwrap();
        image::GrayImage::new(12, 9).save(&bad).unwrap();
        let verdicts = classify(&path, &[good.as_path()], &device).unwrap();
        assert_eq!(verdicts.len(), 1);
        assert!(
            (verdicts[0].probability - 0.5).abs() < 1e-6,
            "a zero head is uniform"
        );
        let message = classify(&path, &[good.as_path(), bad.as_path()], &device)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("bad.png") && message.contains("12x9"),
            "{message}"
        );
    }
}
