//! `acdit train` as a library job: the recipe (a preset, a config file, or a checkpoint to
//! resume) with the user's overrides, the dataset it names, and the run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::Device;

use super::lr::LrSchedule;
use super::run::{RunDir, run};
use super::state::{Checkpoint, DataSource};
use super::{TrainConfig, Trainer};
use crate::checkpoint::load::{WeightsKind, WeightsSource, built_in_model, load_weights};
use crate::config::ModelConfig;
use crate::data::idx::{
    DatasetKind, Split, embedded_mnist, load_mnist_dir, mnist_files, mnist_or_built_in,
};
use crate::data::image_folder::load_image_folder;
use crate::data::{ImageDataset, TrainingSet};
use crate::latents::{LatentManifest, LatentSet};
use crate::vae::NamedVae;
use crate::video::Clips;
use crate::video::clips::{ClipLayout, expect_frame_size, read_clips};
use crate::video::moving_mnist::{MovingMnistSpec, generate};
use crate::video::training::{ClipSet, EncodedClips, GeneratedClips};

/// Generated clips counted as one epoch: only when the data order reshuffles depends on it.
const GENERATED_EPOCH: usize = 10_000;
/// Generated clips a latent video run encodes once (2 minutes on 2 cores at the preset) rather
/// than running the encoder in every step (three quarters of a step at patch 2): 24,000 steps
/// of 4 see each 12 times.
pub const ENCODED_CLIPS: usize = 8000;

/// A training recipe by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainPreset {
    Mnist,
    FashionMnist,
    /// One-digit Moving MNIST clips, generated on the fly from the MNIST training digits.
    MovingMnist,
}

impl crate::choice::Choice for TrainPreset {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("mnist", TrainPreset::Mnist),
        ("fashion-mnist", TrainPreset::FashionMnist),
        ("moving-mnist", TrainPreset::MovingMnist),
    ];
}

impl TrainPreset {
    pub fn config(self) -> TrainConfig {
        match self {
            TrainPreset::Mnist => TrainConfig::mnist(),
            TrainPreset::FashionMnist => TrainConfig::fashion_mnist(),
            TrainPreset::MovingMnist => TrainConfig::moving_mnist(),
        }
    }

    fn dataset(self) -> DatasetKind {
        match self {
            TrainPreset::Mnist | TrainPreset::MovingMnist => DatasetKind::Mnist,
            TrainPreset::FashionMnist => DatasetKind::FashionMnist,
        }
    }

    /// Where `acdit data fetch` puts this preset's dataset.
    fn fetched_dir(self) -> &'static Path {
        match self {
            TrainPreset::Mnist | TrainPreset::MovingMnist => Path::new("data/mnist"),
            TrainPreset::FashionMnist => Path::new("data/fashion-mnist"),
        }
    }
}

/// Settings the user gave over the recipe's. `grad_clip` of 0 turns clipping off.
#[derive(Debug, Clone, Default)]
pub struct TrainOverrides {
    pub steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub lr_schedule: Option<LrSchedule>,
    pub warmup_steps: Option<u64>,
    pub grad_clip: Option<f64>,
    pub ema_decay: Option<f64>,
    pub guidance: Option<f64>,
    pub min_snr_gamma: Option<f64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub sample_every: Option<u64>,
    pub precision: Option<crate::device::Precision>,
}

impl TrainOverrides {
    fn apply(&self, config: &mut TrainConfig) {
        let set = |target: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *target = v;
            }
        };
        set(&mut config.steps, self.steps);
        set(&mut config.warmup_steps, self.warmup_steps);
        set(&mut config.seed, self.seed);
        set(&mut config.checkpoint_every, self.checkpoint_every);
        set(&mut config.sample_every, self.sample_every);
        if let Some(v) = self.batch_size {
            config.batch_size = v;
        }
        if let Some(v) = self.lr {
            config.lr = v;
        }
        if let Some(v) = self.lr_schedule {
            config.lr_schedule = v;
        }
        if let Some(v) = self.grad_clip {
            config.grad_clip = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.ema_decay {
            config.ema_decay = v;
        }
        if let Some(v) = self.guidance {
            config.guidance = v;
        }
        if let Some(v) = self.min_snr_gamma {
            config.min_snr_gamma = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.precision {
            config.precision = v;
        }
    }

    /// The overrides besides `steps`, by flag name: a resumed run keeps everything that shapes
    /// its numbers, so these would be silently ignored.
    fn fixed_by_resume(&self) -> Vec<&'static str> {
        [
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--lr-schedule", self.lr_schedule.is_some()),
            ("--warmup-steps", self.warmup_steps.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--ema-decay", self.ema_decay.is_some()),
            ("--guidance", self.guidance.is_some()),
            ("--min-snr-gamma", self.min_snr_gamma.is_some()),
            ("--seed", self.seed.is_some()),
            ("--checkpoint-every", self.checkpoint_every.is_some()),
            ("--sample-every", self.sample_every.is_some()),
            ("--dtype", self.precision.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// What `acdit train` was asked for.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Default: mnist for a fresh run; a resume reads its run's (and refuses another).
    pub preset: Option<TrainPreset>,
    /// A training config (JSON or TOML) instead of the preset's.
    pub config_file: Option<PathBuf>,
    /// IDX files, a folder of class subfolders, or a latent folder from `acdit cache-latents`
    /// (which sets the model, unless `config_file` does: the latent recipe, or with the
    /// moving-mnist preset its first, image stage); default: the preset's fetched
    /// dataset, else the MNIST subset built into the binary. A resume reads its run's data
    /// unless this names where that data is now.
    pub data: Option<PathBuf>,
    /// A checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// Weights a fresh run starts from instead of random ones (a built-in model's name or a
    /// weights file): fine-tuning, e.g. a video model from the image model of the same width.
    pub init: Option<String>,
    /// The run folder; default: a resumed checkpoint's folder, else `runs/<preset>`, or
    /// `runs/latent` for latent data.
    pub out: Option<PathBuf>,
    pub overrides: TrainOverrides,
    /// For latent data: the VAE that decodes sample grids, instead of the one the latents were
    /// made with. For video: the VAE the clips are encoded through, instead of the preset's.
    pub vae: Option<String>,
}

/// The config a job resolves to, with the checkpoint it resumes.
pub struct ResolvedTraining {
    pub config: TrainConfig,
    pub resumed: Option<Checkpoint>,
}

impl TrainJob {
    /// The run folder.
    pub fn out_dir(&self) -> PathBuf {
        use crate::choice::Choice;
        if let Some(out) = &self.out {
            return out.clone();
        }
        if let Some(checkpoint) = &self.resume {
            return checkpoint
                .parent()
                .map_or_else(PathBuf::new, Path::to_path_buf);
        }
        let name = if self.latent_data().is_some() {
            "latent"
        } else {
            self.preset().name()
        };
        Path::new("runs").join(name)
    }

    fn preset(&self) -> TrainPreset {
        self.preset.unwrap_or(TrainPreset::Mnist)
    }

    /// `--data` when it is a latent folder from `acdit cache-latents`.
    fn latent_data(&self) -> Option<&Path> {
        self.data
            .as_deref()
            .filter(|dir| LatentManifest::is_latent_dir(dir))
    }

    /// The config the run will use: the preset or config file with the overrides, or the resumed
    /// checkpoint's (extended by `steps`). Refuses a resume that has nothing left to do.
    pub fn resolve(&self) -> Result<ResolvedTraining> {
        let Some(path) = &self.resume else {
            let mut config = match (&self.config_file, self.latent_data()) {
                (Some(path), _) => TrainConfig::from_file(path)?,
                (None, Some(_)) if self.preset == Some(TrainPreset::MovingMnist) => {
                    TrainConfig::moving_mnist_frames()
                }
                (None, Some(dir)) => {
                    let manifest = LatentManifest::read(dir)?;
                    TrainConfig::latent(manifest.latent_shape, manifest.class_names.len())
                }
                (None, None) => self.preset().config(),
            };
            self.overrides.apply(&mut config);
            if config.model.temporal_len > 1 && self.vae.is_some() {
                config.vae = self.vae.clone();
            }
            config.validate()?;
            return Ok(ResolvedTraining {
                config,
                resumed: None,
            });
        };
        if self.init.is_some() {
            bail!("--init starts a fresh run; a resumed run continues from its own weights");
        }
        let fixed = self.overrides.fixed_by_resume();
        if !fixed.is_empty() || self.config_file.is_some() {
            bail!(
                "a resumed run keeps its config: only --steps may change it (given: {})",
                if fixed.is_empty() {
                    "--config".to_string()
                } else {
                    fixed.join(", ")
                }
            );
        }
        let checkpoint = Checkpoint::load(path)?;
        let mut config = checkpoint.config.clone();
        let video = config.model.temporal_len > 1;
        if video && self.vae.is_some() && self.vae != config.vae {
            bail!(
                "a resumed run keeps the VAE its clips were encoded through ({}); --vae {} names another",
                config.vae.as_deref().unwrap_or("none: pixels"),
                self.vae.as_deref().unwrap_or_default()
            );
        }
        if let Some(steps) = self.overrides.steps {
            config.steps = steps;
        }
        let at = checkpoint.progress.step;
        if config.steps <= at {
            bail!(
                "{} is already at step {at} of {}: nothing to train. Pass --steps N with N above \
                 {at} to extend the run",
                path.display(),
                config.steps
            );
        }
        config.validate()?;
        Ok(ResolvedTraining {
            config,
            resumed: Some(checkpoint),
        })
    }

    /// Trains: loads the data, builds or resumes the trainer, and runs to the last step.
    pub fn run(&self, device: &Device) -> Result<()> {
        let ResolvedTraining { config, resumed } = self.resolve()?;
        match resumed.as_ref().and_then(|c| c.source.clone()) {
            Some(source) => self.reading(&source)?.train(config, resumed, device),
            None => self.train(config, resumed, device),
        }
    }

    /// This job reading what a resumed run trained on: its preset's data, or its `--data`
    /// unless `self.data` says where that is now.
    fn reading(&self, source: &DataSource) -> Result<Self> {
        use crate::choice::Choice;
        let checkpoint = self.resumed_name();
        let recorded = TrainPreset::from_name(&source.preset).with_context(|| {
            format!(
                "{checkpoint}: data_source names an unknown preset {:?}",
                source.preset
            )
        })?;
        if let Some(given) = self.preset.filter(|&p| p != recorded) {
            bail!(
                "{checkpoint} trained on the {} preset's data; a resume reads the same (--preset {} names another)",
                recorded.name(),
                given.name()
            );
        }
        let data = self.data.clone().or_else(|| source.path.clone());
        if self.data.is_none()
            && let Some(path) = &data
        {
            println!("reading the run's data, {}", path.display());
        }
        Ok(Self {
            preset: Some(recorded),
            data,
            ..self.clone()
        })
    }

    /// The checkpoint a resume continues, for messages.
    fn resumed_name(&self) -> String {
        self.resume
            .as_deref()
            .map_or_else(String::new, |path| path.display().to_string())
    }

    fn train(
        &self,
        config: TrainConfig,
        resumed: Option<Checkpoint>,
        device: &Device,
    ) -> Result<()> {
        let mut vae = None;
        let (data, described) = if let Some(dir) = self.latent_data() {
            let latents = LatentSet::open(dir)?;
            check_latents_fit(&config, &latents)?;
            let name = self.vae.as_deref().unwrap_or(&latents.manifest.vae);
            vae = Some(NamedVae::load(name, &Device::flex()).with_context(|| {
                format!(
                    "loading the VAE {name} that decodes the sample grids (--vae names another)"
                )
            })?);
            let described = format!(
                "{} latents of {:?} from {}, {} classes",
                latents.len(),
                latents.manifest.latent_shape,
                dir.display(),
                latents.manifest.class_names.len()
            );
            (Box::new(latents) as Box<dyn TrainingSet>, described)
        } else if config.model.temporal_len > 1 {
            let (data, described, clips_vae) = self.load_clips(&config)?;
            vae = clips_vae;
            (data, described)
        } else {
            let dataset = self.load_dataset(&config)?;
            let described = format!(
                "{} images of {}x{}, {} classes",
                dataset.n, dataset.height, dataset.width, dataset.num_classes
            );
            (Box::new(dataset) as Box<dyn TrainingSet>, described)
        };
        let source = DataSource {
            preset: crate::choice::Choice::name(self.preset()).to_string(),
            path: self.data.clone(),
            items: data.epoch_len(),
        };
        let mut trainer = match resumed {
            Some(mut checkpoint) => {
                if let Some(recorded) = &checkpoint.source
                    && recorded.items != source.items
                {
                    bail!(
                        "{}: the run trained on {} items, but {} has {}: a resume must read the same data",
                        self.resumed_name(),
                        recorded.items,
                        source.path.as_deref().map_or_else(
                            || format!("the {} preset's data", source.preset),
                            |p| p.display().to_string()
                        ),
                        source.items
                    );
                }
                checkpoint.config = config;
                Trainer::resume(checkpoint, data.epoch_len(), device)?
            }
            None => Trainer::new(config, data.epoch_len(), device),
        };
        trainer.source = Some(source);
        if let Some(init) = &self.init {
            let source = match Path::new(init) {
                path if path.exists() => WeightsSource::File(path),
                _ => WeightsSource::BuiltIn(built_in_model(init).with_context(|| {
                    format!("--init {init}: no such file, nor a built-in model")
                })?),
            };
            let weights = load_weights(source, WeightsKind::Ema, None)?;
            trainer
                .start_from(&weights.tensors)
                .with_context(|| format!("--init {init} does not fit this run's model"))?;
            println!("starting from the weights of {init}");
        }
        println!(
            "training on {described}; {} parameters",
            burn::module::Module::num_params(&trainer.model)
        );
        run(
            &mut trainer,
            data.as_ref(),
            &RunDir(self.out_dir()),
            vae.as_ref(),
        )
    }

    /// Video training data: the clips of `--data` (with labels, of the model's frame count and
    /// size), else one-digit Moving MNIST generated on the fly from the training digits, at the
    /// original dataset's one speed (a tenth of the free range, as the test clips move). A model
    /// in a VAE's latents gets the clips encoded once ([`ENCODED_CLIPS`] generated ones), and the
    /// VAE is returned to decode the sample grids.
    fn load_clips(&self, config: &TrainConfig) -> Result<VideoData> {
        let model = &config.model;
        let class_names = self.preset().dataset().class_names();
        let vae = match &config.vae {
            Some(name) => Some(video_vae(name, model.in_channels)?),
            None if model.in_channels != 1 => bail!(
                "the model takes {} channels a frame: name the VAE its clips are encoded through (--vae)",
                model.in_channels
            ),
            None => None,
        };
        let side = model.img_hw * vae.as_ref().map_or(1, |v| v.vae.config().downsampling());
        let (clips, described) = match &self.data {
            Some(path) => (clips_file(path, model, side)?, path.display().to_string()),
            None => {
                let (digits, full) = mnist_or_built_in(Split::Train)?;
                if !full {
                    println!(
                        "data/mnist not found: drawing clips from the built-in MNIST subset (`acdit data fetch mnist` gets all 60,000 digits)"
                    );
                }
                let spec = MovingMnistSpec {
                    frames: model.temporal_len,
                    digits: 1,
                    ..MovingMnistSpec::srivastava().at_size(side)
                };
                spec.validate()?;
                let described = format!(
                    "one-digit Moving MNIST ({} frames of {}x{}, {}x{} digits from {} training digits, {} pixels a frame)",
                    spec.frames,
                    spec.size,
                    spec.size,
                    spec.digit_size,
                    spec.digit_size,
                    digits.n,
                    spec.speed
                );
                let Some(vae) = vae else {
                    let set = GeneratedClips {
                        spec,
                        digits,
                        seed: config.seed,
                        epoch_len: GENERATED_EPOCH,
                    };
                    return Ok((
                        Box::new(set),
                        format!("{described}, generated on the fly"),
                        None,
                    ));
                };
                let clips = generate(&spec, &digits, ENCODED_CLIPS, config.seed)?;
                let described = format!("{ENCODED_CLIPS} clips of {described}");
                return encoded(clips, class_names, vae, described);
            }
        };
        let labels = clips.labels.clone().expect("clips_file checked the labels");
        let described = format!("{} clips from {described}", clips.n);
        match vae {
            Some(vae) => encoded(clips, class_names, vae, described),
            None => {
                let set = ClipSet {
                    labels: labels.iter().map(|&l| l as u32).collect(),
                    clips,
                    class_names,
                };
                Ok((Box::new(set), described, None))
            }
        }
    }

    /// The dataset, centred to the model's frame and checked against the model.
    fn load_dataset(&self, config: &TrainConfig) -> Result<ImageDataset> {
        let mut dataset = self.find_dataset(config)?;
        dataset.validate()?;
        let size = config.model.img_hw;
        if dataset.channels == config.model.in_channels
            && (dataset.height, dataset.width) != (size, size)
        {
            eprintln!(
                "{}x{} images centred in {size}x{size} for the model",
                dataset.height, dataset.width
            );
            dataset = dataset.centred(size);
        }
        check_dataset_fits(config, &dataset)?;
        Ok(dataset)
    }

    /// The explicit path, else the preset's fetched dataset under data/, else the built-in subset.
    fn find_dataset(&self, config: &TrainConfig) -> Result<ImageDataset> {
        let kind = self.preset().dataset();
        if let Some(path) = &self.data {
            let is_idx = mnist_files(path, Split::Train).is_ok();
            return Ok(if is_idx {
                load_mnist_dir(path, kind, Split::Train)?
            } else {
                load_image_folder(
                    path,
                    Some(config.model.img_hw as u32),
                    config.model.in_channels,
                )
                .with_context(|| format!("reading training images from {}", path.display()))?
            });
        }
        let fetched = self.preset().fetched_dir();
        if mnist_files(fetched, Split::Train).is_ok() {
            return Ok(load_mnist_dir(fetched, kind, Split::Train)?);
        }
        match self.preset() {
            TrainPreset::Mnist => {
                println!(
                    "data/mnist not found: using the built-in MNIST subset (`acdit data fetch mnist` gets all 60,000)"
                );
                Ok(embedded_mnist(Split::Train))
            }
            TrainPreset::FashionMnist => bail!(
                "data/fashion-mnist not found: run `acdit data fetch fashion-mnist` or pass --data"
            ),
            TrainPreset::MovingMnist => bail!("the moving-mnist preset trains a video model"),
        }
    }
}

/// The clips of `path`, checked against the model: frames of `side` pixels, the model's
/// frame count, labels in range.
fn clips_file(path: &Path, model: &ModelConfig, side: usize) -> Result<Clips> {
    let clips = read_clips(path, ClipLayout::Nfhw)?;
    expect_frame_size(&clips, path, side)?;
    if clips.frames != model.temporal_len {
        bail!(
            "{}: clips of {} frames, but the model is trained on {} (expected (N, {}, {side}, {side}))",
            path.display(),
            clips.frames,
            model.temporal_len,
            model.temporal_len,
        );
    }
    let labels = clips.labels.as_ref().with_context(|| {
        format!(
            "{}: training needs `labels` (N) beside `clips`",
            path.display()
        )
    })?;
    if let Some(bad) = labels
        .iter()
        .find(|&&l| l < 0 || l as usize >= model.num_classes)
    {
        bail!(
            "{}: label {bad} is out of range for {} classes",
            path.display(),
            model.num_classes
        );
    }
    Ok(clips)
}

/// Training data, what it is in words, and the VAE of a latent video model.
type VideoData = (Box<dyn TrainingSet>, String, Option<NamedVae>);

/// The VAE `name` for a video model of `channels` latent channels.
fn video_vae(name: &str, channels: usize) -> Result<NamedVae> {
    let vae = NamedVae::load(name, &burn::prelude::Device::flex())
        .with_context(|| format!("loading the VAE {name} that the clips are encoded through"))?;
    let latent = vae.vae.config().latent_channels;
    if latent != channels {
        bail!("the VAE {name} makes latents of {latent} channels, the model takes {channels}");
    }
    Ok(vae)
}

/// `clips` (labelled) encoded once through `vae`, frame by frame.
fn encoded(
    clips: Clips,
    class_names: Vec<String>,
    vae: NamedVae,
    described: String,
) -> Result<VideoData> {
    let started = std::time::Instant::now();
    let set = EncodedClips::encode(&vae, &clips, class_names)?;
    let described = format!(
        "{described}, encoded through the VAE {} in {:.0} s",
        vae.name,
        started.elapsed().as_secs_f64()
    );
    Ok((Box::new(set), described, Some(vae)))
}

fn check_latents_fit(config: &TrainConfig, latents: &LatentSet) -> Result<()> {
    let dir = latents.dir.display();
    check_fits(
        config,
        &format!("{dir}: latents"),
        latents.manifest.latent_shape,
        &format!("{dir} has"),
        latents.manifest.class_names.len(),
    )
}

fn check_dataset_fits(config: &TrainConfig, dataset: &ImageDataset) -> Result<()> {
    check_fits(
        config,
        "the dataset's images",
        [dataset.channels, dataset.height, dataset.width],
        "the dataset has",
        dataset.num_classes,
    )
}

/// Training data of `shape` (channels, height, width) in `classes` classes must be what the
/// model takes; `items` and `holder` name the data in the errors.
fn check_fits(
    config: &TrainConfig,
    items: &str,
    [c, h, w]: [usize; 3],
    holder: &str,
    classes: usize,
) -> Result<()> {
    let model = &config.model;
    if (c, h, w) != (model.in_channels, model.img_hw, model.img_hw) {
        bail!(
            "{items} are {c}x{h}x{w} but the model takes {}x{}x{}",
            model.in_channels,
            model.img_hw,
            model.img_hw
        );
    }
    if classes > model.num_classes {
        bail!(
            "{holder} {classes} classes but the model only {}",
            model.num_classes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint of a tiny run that has finished its 3 steps.
    fn finished_checkpoint(dir: &Path) -> PathBuf {
        let (config, dataset) = crate::train::tests::tiny_run(3);
        let mut trainer = Trainer::new(config, dataset.n, &Device::flex().autodiff());
        for _ in 0..3 {
            trainer.train_step(&dataset).unwrap();
        }
        let path = dir.join("checkpoint.safetensors");
        trainer
            .checkpoint()
            .save(&path, Default::default())
            .unwrap();
        path
    }

    fn resume_job(checkpoint: PathBuf, out: PathBuf, overrides: TrainOverrides) -> TrainJob {
        TrainJob {
            preset: None,
            config_file: None,
            data: None,
            resume: Some(checkpoint),
            init: None,
            out: Some(out),
            overrides,
            vae: None,
        }
    }

    #[test]
    fn resuming_a_finished_run_says_so_and_touches_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let checkpoint = finished_checkpoint(temp.path());
        let out = temp.path().join("run");
        for steps in [None, Some(2), Some(3)] {
            let overrides = TrainOverrides {
                steps,
                ..TrainOverrides::default()
            };
            let job = resume_job(checkpoint.clone(), out.clone(), overrides);
            let message = job.run(&Device::flex().autodiff()).unwrap_err().to_string();
            assert!(
                message.contains("already at step 3 of") && message.contains("--steps N"),
                "{message}"
            );
            assert!(!out.exists(), "the run folder was created");
        }
        let extended = TrainOverrides {
            steps: Some(5),
            ..TrainOverrides::default()
        };
        let resolved = resume_job(checkpoint, out, extended).resolve().unwrap();
        assert_eq!(resolved.config.steps, 5);
    }

    #[test]
    fn a_fresh_run_starts_from_weights_that_fit_and_names_a_tensor_that_does_not() {
        let temp = tempfile::tempdir().unwrap();
        let checkpoint = finished_checkpoint(temp.path());
        let weights =
            load_weights(WeightsSource::File(&checkpoint), WeightsKind::Ema, None).unwrap();
        let (config, dataset) = crate::train::tests::tiny_run(3);
        let device = Device::flex().autodiff();
        let mut trainer = Trainer::new(config.clone(), dataset.n, &device);
        assert_ne!(trainer.model.to_tensors(), weights.tensors);
        trainer.start_from(&weights.tensors).unwrap();
        assert_eq!(trainer.model.to_tensors(), weights.tensors);
        assert_eq!(trainer.ema.model.to_tensors(), weights.tensors);
        trainer.train_step(&dataset).unwrap();
        assert_ne!(trainer.model.to_tensors(), weights.tensors, "it trains on");

        let mut wider = config;
        wider.model.hidden_size = 128;
        wider.model.num_heads = 2;
        let message = Trainer::new(wider, dataset.n, &device)
            .start_from(&weights.tensors)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("expected") && message.contains("found"),
            "{message}"
        );

        let mut job = resume_job(
            checkpoint,
            temp.path().join("run"),
            TrainOverrides::default(),
        );
        job.init = Some("mnist".into());
        let message = job.resolve().err().unwrap().to_string();
        assert!(message.contains("--init starts a fresh run"), "{message}");
    }

    #[test]
    fn settings_a_resume_would_ignore_are_refused() {
        let temp = tempfile::tempdir().unwrap();
        let checkpoint = finished_checkpoint(temp.path());
        let overrides = TrainOverrides {
            steps: Some(10),
            lr: Some(1e-3),
            ..TrainOverrides::default()
        };
        let job = resume_job(checkpoint, temp.path().join("run"), overrides);
        let message = job.resolve().err().unwrap().to_string();
        assert!(message.contains("--lr"), "{message}");
    }

    /// A folder of `n` grey 8x8 PNGs in the classes a, b and c.
    fn image_folder(dir: &Path, n: usize) -> PathBuf {
        for i in 0..n {
            let class = dir.join(["a", "b", "c"][i % 3]);
            std::fs::create_dir_all(&class).unwrap();
            image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y * i as u32) as u8]))
                .save(class.join(format!("{i}.png")))
                .unwrap();
        }
        dir.to_path_buf()
    }

    #[test]
    fn a_resume_reads_its_runs_data_and_continues_in_its_folder() {
        let temp = tempfile::tempdir().unwrap();
        let device = Device::flex().autodiff();
        let data = image_folder(&temp.path().join("six"), 6);
        let config_file = temp.path().join("train.toml");
        let (config, _) = crate::train::tests::tiny_run(2);
        std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
        let run = temp.path().join("run");
        TrainJob {
            preset: None,
            config_file: Some(config_file),
            data: Some(data.clone()),
            resume: None,
            init: None,
            out: Some(run.clone()),
            overrides: TrainOverrides::default(),
            vae: None,
        }
        .run(&device)
        .unwrap();
        let checkpoint = run.join("checkpoint.safetensors");
        let recorded = Checkpoint::load(&checkpoint).unwrap().source.unwrap();
        assert_eq!(recorded.path.as_deref(), Some(data.as_path()));
        assert_eq!((recorded.preset.as_str(), recorded.items), ("mnist", 6));

        let resume = |steps: u64| TrainJob {
            preset: None,
            config_file: None,
            data: None,
            resume: Some(checkpoint.clone()),
            init: None,
            out: None,
            overrides: TrainOverrides {
                steps: Some(steps),
                ..TrainOverrides::default()
            },
            vae: None,
        };
        resume(3).run(&device).unwrap();
        let resumed = Checkpoint::load(&checkpoint).unwrap();
        assert_eq!(
            resumed.progress.step, 3,
            "the run went on in its own folder"
        );
        assert_eq!(resumed.source.unwrap(), recorded);

        let nine = image_folder(&temp.path().join("nine"), 9);
        let other_data = TrainJob {
            data: Some(nine),
            ..resume(4)
        };
        let message = other_data.run(&device).unwrap_err().to_string();
        assert!(
            message.contains("trained on 6 items") && message.contains("has 9"),
            "{message}"
        );
        let other_preset = TrainJob {
            preset: Some(TrainPreset::FashionMnist),
            ..resume(4)
        };
        let message = other_preset.run(&device).unwrap_err().to_string();
        assert!(message.contains("--preset fashion-mnist"), "{message}");
        assert_eq!(Checkpoint::load(&checkpoint).unwrap().progress.step, 3);
    }

    #[test]
    fn the_run_folder_defaults_to_the_preset_name() {
        let job = TrainJob {
            preset: Some(TrainPreset::FashionMnist),
            config_file: None,
            data: None,
            resume: None,
            init: None,
            out: None,
            overrides: TrainOverrides::default(),
            vae: None,
        };
        assert_eq!(job.out_dir(), Path::new("runs/fashion-mnist"));
        let resolved = job.resolve().unwrap();
        assert_eq!(resolved.config, TrainConfig::fashion_mnist());
    }

    /// A latent folder picks the latent recipe, and with the moving-mnist preset that recipe's
    /// image stage, whose tokens are the video model's so that `--init` carries every weight.
    #[test]
    fn a_latent_folder_with_the_moving_mnist_preset_trains_its_image_stage() {
        let temp = tempfile::tempdir().unwrap();
        LatentManifest {
            format: crate::latents::manifest::FORMAT.to_string(),
            vae: "moving-mnist".to_string(),
            scaling_factor: 1.0,
            resolution: 32,
            flip: false,
            shard_size: 1,
            items: 1,
            latent_shape: [4, 8, 8],
            class_names: (0..10).map(|c| c.to_string()).collect(),
            sources: String::new(),
        }
        .write(temp.path())
        .unwrap();
        let job = |preset| TrainJob {
            preset,
            config_file: None,
            data: Some(temp.path().to_path_buf()),
            resume: None,
            init: None,
            out: None,
            overrides: TrainOverrides::default(),
            vae: None,
        };
        let frames = job(Some(TrainPreset::MovingMnist))
            .resolve()
            .unwrap()
            .config;
        assert_eq!(frames, TrainConfig::moving_mnist_frames());
        let (image, video) = (&frames.model, &TrainConfig::moving_mnist().model);
        assert_eq!(image.temporal_len, 1);
        assert_eq!(
            (image.patch_size, image.spatial_len, image.hidden_size),
            (video.patch_size, video.spatial_len, video.hidden_size)
        );
        let latent = job(None).resolve().unwrap().config;
        assert_eq!(latent, TrainConfig::latent([4, 8, 8], 10));
        assert_ne!(latent.model.patch_size, image.patch_size);
    }
}
