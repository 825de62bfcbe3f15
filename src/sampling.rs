//! From class labels to pictures: seeded noise per image, blockwise generation in batches, and
//! the tokens laid back out as pixels.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::checkpoint::load::{WeightsKind, WeightsSource, load_weights};
use crate::config::ModelConfig;
use crate::diffusion::blockwise::{
    DEFAULT_GUIDANCE, Generation, Observer, Window, generate_after, rollout,
};
use crate::diffusion::schedule::NoiseSchedule;
use crate::layout::{patchify, unpatchify};
use crate::model::Acdit;
use crate::output::{GridLayout, ImageBatch, write_image_pngs, write_labeled_grid, write_npz};
use crate::vae::NamedVae;
use crate::video::output::{clips_from_pixels, write_clip_files};

/// Image `index`'s own noise stream: the same seed gives the same image whatever the batch size.
fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// How long each sample is and what it starts from: the frames to produce (past the trained
/// length through a rolling window) and, for frame prediction, each item's given first frames.
#[derive(Debug, Clone, Copy)]
pub struct Extent<'a> {
    /// Frames a sample: 1 for images.
    pub frames: usize,
    /// Given pixels of each item's first `context_frames` frames, (n, context_frames, c, h, w)
    /// in [-1, 1], or None.
    pub context: Option<(&'a [f32], usize)>,
    /// What a rollout past the trained length attends to.
    pub window: Window,
}

impl Extent<'_> {
    /// The trained length, from nothing.
    pub fn trained(config: &ModelConfig) -> Self {
        Self {
            frames: config.temporal_len,
            context: None,
            window: Window::widest(config),
        }
    }
}

/// Generates one image per label, `batch` at a time, batches side by side on as many threads as
/// the machine has cores (at these sizes the backend's element-wise ops run on one core).
/// Returns pixels (labels.len(), frames, channels, height, width) in [-1, 1] (not clamped).
pub fn sample_images(
    model: &Acdit,
    labels: &[i64],
    generation: &Generation,
    seed: u64,
    batch: usize,
    observer: &mut (dyn Observer + Send),
) -> Vec<f32> {
    let extent = Extent::trained(model.config());
    sample_clips(model, labels, &extent, generation, seed, batch, observer)
}

/// As [`sample_images`], for `extent`: the given context frames come back first, then the
/// generated ones. Returns pixels (labels.len(), extent.frames, channels, height, width).
pub fn sample_clips(
    model: &Acdit,
    labels: &[i64],
    extent: &Extent,
    generation: &Generation,
    seed: u64,
    batch: usize,
    observer: &mut (dyn Observer + Send),
) -> Vec<f32> {
    let batch = batch.max(1);
    let chunks: Vec<&[i64]> = labels.chunks(batch).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunks.len());
    let observer = Mutex::new(observer);
    let mut pixels: Vec<Vec<f32>> = vec![Vec::new(); chunks.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let (chunks, observer) = (&chunks, &observer);
                scope.spawn(move || {
                    (worker..chunks.len())
                        .step_by(workers)
                        .map(|i| {
                            let mut observer = Shared(observer);
                            let first = i * batch;
                            let images = sample_chunk(
                                model,
                                chunks[i],
                                first,
                                extent,
                                generation,
                                seed,
                                &mut observer,
                            );
                            (i, images)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, images) in handle.join().expect("a sampling thread panicked") {
                pixels[i] = images;
            }
        }
    });
    pixels.concat()
}

/// An observer shared by the sampling threads.
struct Shared<'a, 'o>(&'a Mutex<&'o mut (dyn Observer + Send)>);

impl Observer for Shared<'_, '_> {
    fn model_output(&mut self, block: usize, step: usize, output: &Tensor<3>) {
        self.0
            .lock()
            .expect("observer")
            .model_output(block, step, output);
    }
    fn block_done(&mut self, block: usize) {
        self.0.lock().expect("observer").block_done(block);
    }
}

/// The samples of one batch, whose first is number `first` of the job.
fn sample_chunk(
    model: &Acdit,
    labels: &[i64],
    first: usize,
    extent: &Extent,
    generation: &Generation,
    seed: u64,
    observer: &mut dyn Observer,
) -> Vec<f32> {
    let config = model.config();
    let device = model.device();
    let schedule = NoiseSchedule::ddpm();
    let n = labels.len();
    let block_values = config.block_size * config.latent_size;
    let mut streams: Vec<ChaCha8Rng> = (0..n).map(|i| image_rng(seed, first + i)).collect();
    let noise = |_block: usize| {
        let values: Vec<f32> = streams
            .iter_mut()
            .flat_map(|rng| {
                (0..block_values)
                    .map(|_| rng.sample::<f32, _>(StandardNormal))
                    .collect::<Vec<_>>()
            })
            .collect();
        Tensor::<1>::from_floats(values.as_slice(), &device).reshape([
            n,
            config.block_size,
            config.latent_size,
        ])
    };
    let context = extent.context.map(|(pixels, frames)| {
        let layout = config.with_frames(frames);
        let per_item = frames * config.in_channels * config.img_hw * config.img_hw;
        let mine = &pixels[first * per_item..(first + n) * per_item];
        let tokens = patchify(&layout, mine, n);
        let len = tokens.len() / (n * config.latent_size);
        Tensor::<1>::from_floats(tokens.as_slice(), &device).reshape([n, len, config.latent_size])
    });
    let blocks = config.blocks_for_frames(extent.frames);
    let mut sampler_rng = image_rng(seed ^ 0x5eed, first);
    let tokens = if blocks <= config.ar_len {
        generate_after(
            model,
            labels,
            context,
            blocks,
            generation,
            &schedule,
            noise,
            &mut sampler_rng,
            observer,
        )
    } else {
        rollout(
            model,
            labels,
            context,
            blocks,
            extent.window,
            generation,
            &schedule,
            noise,
            &mut sampler_rng,
            observer,
        )
    };
    let tokens = tokens
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 tokens");
    // Whole blocks were generated; keep the frames asked for.
    let generated = if config.temporal_len == 1 {
        1
    } else {
        blocks * config.frames_per_block()
    };
    let mut pixels = unpatchify(&config.with_frames(generated), &tokens, n);
    let frame_values = config.in_channels * config.img_hw * config.img_hw;
    if generated != extent.frames {
        pixels = pixels
            .chunks(generated * frame_values)
            .flat_map(|clip| clip[..extent.frames * frame_values].to_vec())
            .collect();
    }
    pixels
}

/// A model ready to sample, with a name for each class, its guidance scale, and for a latent
/// model the VAE that turns its latents into pixels.
pub struct SamplingModel {
    pub model: Acdit,
    pub class_names: Vec<String>,
    /// The guidance scale used unless asked otherwise: the one the weights record (our training
    /// runs write theirs), the paper's (1.5 for images, 2.5 for video) for a release checkpoint,
    /// else [`crate::diffusion::blockwise::DEFAULT_GUIDANCE`].
    pub guidance: f64,
    /// The VAE the weights' file names (our latent models record it).
    pub recorded_vae: Option<String>,
    pub vae: Option<NamedVae>,
}

impl SamplingModel {
    /// A pixel model sampled at [`DEFAULT_GUIDANCE`].
    pub fn new(model: Acdit, class_names: Vec<String>) -> Self {
        Self {
            model,
            class_names,
            guidance: DEFAULT_GUIDANCE,
            recorded_vae: None,
            vae: None,
        }
    }

    /// Attaches the VAE `name` (else the recorded one) to a latent model; a pixel model needs
    /// none and refuses one.
    pub fn with_vae(mut self, name: Option<&str>, device: &Device) -> anyhow::Result<Self> {
        let config = self.model.config();
        let pixel_model = matches!(config.in_channels, 1 | 3) && self.recorded_vae.is_none();
        let Some(name) = name.or(self.recorded_vae.as_deref()) else {
            if !pixel_model {
                anyhow::bail!(
                    "this model makes latents of {} channels: pass --vae DIR (a diffusers VAE folder, e.g. the SD-VAE's)",
                    config.in_channels
                );
            }
            return Ok(self);
        };
        let vae = NamedVae::load(name, device)?;
        if vae.vae.config().latent_channels != config.in_channels {
            anyhow::bail!(
                "the VAE {name} has {} latent channels, the model {}",
                vae.vae.config().latent_channels,
                config.in_channels
            );
        }
        self.vae = Some(vae);
        Ok(self)
    }

    /// The side of the frames the model draws, in pixels: through the VAE for a latent model.
    pub fn frame_side(&self) -> usize {
        let down = self
            .vae
            .as_ref()
            .map_or(1, |vae| vae.vae.config().downsampling());
        self.model.config().img_hw * down
    }

    /// The model's output (n, frames, channels, h, w) as pixels (see [`output_pixels`]).
    pub fn to_pixels(
        &self,
        output: Vec<f32>,
        n: usize,
        frames: usize,
    ) -> anyhow::Result<(Vec<f32>, [usize; 3])> {
        output_pixels(self.model.config(), self.vae.as_ref(), output, n * frames)
    }
}

/// The output of `config`'s model for `frames` frames in all, each (channels, h, w), as pixels:
/// itself for a pixel model, decoded through `vae` for a latent one. Returns the pixels and one
/// frame's (channels, height, width).
pub fn output_pixels(
    config: &ModelConfig,
    vae: Option<&NamedVae>,
    output: Vec<f32>,
    frames: usize,
) -> anyhow::Result<(Vec<f32>, [usize; 3])> {
    let (c, hw) = (config.in_channels, config.img_hw);
    match vae {
        None => Ok((output, [c, hw, hw])),
        Some(vae) => {
            let (pixels, [_, c, h, w]) = vae.decode_latents(&output, [frames, c, hw, hw], 8)?;
            Ok((pixels, [c, h, w]))
        }
    }
}

/// Loads weights from `source` (see [`load_weights`]) into a model on `device`.
pub fn load_model(
    source: WeightsSource,
    kind: WeightsKind,
    config: Option<&Path>,
    device: &Device,
) -> anyhow::Result<SamplingModel> {
    let name = match source {
        WeightsSource::File(path) => path.display().to_string(),
        WeightsSource::BuiltIn(model) => format!("the built-in model {}", model.name),
    };
    let loaded = load_weights(source, kind, config).with_context(|| format!("loading {name}"))?;
    let config = loaded.config;
    config.validate()?;
    let model = Acdit::new(&config, device)
        .load_tensors(&loaded.tensors)
        .with_context(|| format!("{name}: its weights cannot be loaded into the model"))?;
    let class_names = loaded
        .class_names
        .filter(|names| names.len() == config.num_classes)
        .unwrap_or_else(|| (0..config.num_classes).map(|c| c.to_string()).collect());
    Ok(SamplingModel {
        guidance: loaded.guidance.unwrap_or(DEFAULT_GUIDANCE),
        recorded_vae: loaded.vae,
        ..SamplingModel::new(model, class_names)
    })
}

/// What `acdit sample` was asked for.
#[derive(Debug, Clone)]
pub struct SampleJob {
    /// Classes to draw; `None` for every class of the model.
    pub classes: Option<Vec<i64>>,
    pub per_class: usize,
    pub generation: Generation,
    pub seed: u64,
    /// Images generated at once.
    pub batch: usize,
    /// The labelled grid PNG.
    pub grid: PathBuf,
    /// One PNG per image and `samples.npz` (video: a GIF per clip and `clips.npz`), if wanted.
    pub out_dir: Option<PathBuf>,
    /// Video: frames a clip (default the trained length; more roll out through `window`).
    pub frames: Option<usize>,
    /// Video: what a rollout past the trained length attends to (default the widest window).
    pub window: Option<Window>,
}

impl SampleJob {
    /// The frames and window asked for, checked against the model.
    fn extent(&self, config: &ModelConfig) -> anyhow::Result<Extent<'static>> {
        if config.temporal_len == 1 {
            if self.frames.is_some_and(|f| f != 1) || self.window.is_some() {
                anyhow::bail!("--frames and --window are for video models; this one draws images");
            }
            return Ok(Extent::trained(config));
        }
        let frames = self.frames.unwrap_or(config.temporal_len);
        if frames == 0 {
            anyhow::bail!("--frames must be at least 1");
        }
        let window = self.window.unwrap_or_else(|| Window::widest(config));
        window.check(config.ar_len).map_err(anyhow::Error::msg)?;
        Ok(Extent {
            frames,
            context: None,
            window,
        })
    }

    /// The classes to draw, checked against the model's.
    fn classes(&self, num_classes: usize) -> anyhow::Result<Vec<i64>> {
        if self.per_class == 0 || self.generation.steps == 0 || self.batch == 0 {
            anyhow::bail!("--per-class, --steps and --batch must be at least 1");
        }
        let classes = self
            .classes
            .clone()
            .unwrap_or_else(|| (0..num_classes as i64).collect());
        if let Some(bad) = classes
            .iter()
            .find(|&&c| c < 0 || c as usize >= num_classes)
        {
            anyhow::bail!(
                "class {bad} is out of range: this model has classes 0..{}",
                num_classes - 1
            );
        }
        Ok(classes)
    }
}

/// A progress bar advanced at every model call, showing the block and step.
struct Progress {
    bar: ProgressBar,
    blocks: usize,
    steps: usize,
}

impl Observer for Progress {
    fn model_output(&mut self, block: usize, step: usize, _output: &Tensor<3>) {
        self.bar.inc(1);
        self.bar.set_message(format!(
            "block {}/{} step {}/{}",
            block + 1,
            self.blocks,
            step + 1,
            self.steps
        ));
    }
}

/// Samples `per_class` images of each class and writes the grid (and the per-image files).
/// Every file appears complete or not at all.
pub fn run_job(sampling: &SamplingModel, job: &SampleJob) -> anyhow::Result<()> {
    let model = &sampling.model;
    let classes = job.classes(model.config().num_classes)?;
    // Fail before minutes of sampling, not after.
    let folder = job.grid.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(folder) = folder.filter(|f| !f.is_dir()) {
        anyhow::bail!(
            "cannot write {}: folder {} does not exist",
            job.grid.display(),
            folder.display()
        );
    }
    if let Some(dir) = &job.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let config = model.config();
    let extent = job.extent(config)?;
    let labels: Vec<i64> = classes
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, job.per_class))
        .collect();
    let blocks = config.blocks_for_frames(extent.frames);
    let calls = labels.len().div_ceil(job.batch) * blocks * job.generation.steps;
    let bar = ProgressBar::new(calls as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "sampling {bar:30} {pos}/{len} model calls, {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let started = std::time::Instant::now();
    let output = sample_clips(
        model,
        &labels,
        &extent,
        &job.generation,
        job.seed,
        job.batch,
        &mut Progress {
            bar: bar.clone(),
            blocks,
            steps: job.generation.steps,
        },
    );
    bar.finish_and_clear();
    let (pixels, frame) = sampling.to_pixels(output, labels.len(), extent.frames)?;
    let class_names = &sampling.class_names;
    let names: Vec<&str> = labels
        .iter()
        .map(|&c| class_names[c as usize].as_str())
        .collect();
    let (batch, layout) = sample_grid(frame, extent.frames, &pixels, &names, job.per_class)?;
    write_labeled_grid(&job.grid, &batch, &layout)?;
    println!(
        "{} {} in {:.1}s -> {}",
        labels.len(),
        if config.temporal_len > 1 {
            "clips"
        } else {
            "images"
        },
        started.elapsed().as_secs_f64(),
        job.grid.display()
    );
    let grey_video = config.temporal_len > 1 && frame[0] == 1;
    if let Some(dir) = job.out_dir.as_ref().filter(|_| grey_video) {
        let shape = [labels.len(), extent.frames, frame[1], frame[2]];
        let clips = clips_from_pixels(&pixels, shape, Some(labels.clone()))?;
        write_clip_files(dir, "clips.npz", &clips, &names, None)?;
        println!("a GIF per clip and clips.npz in {}", dir.display());
    } else if let Some(dir) = job.out_dir.as_ref().filter(|_| config.temporal_len > 1) {
        // Colour clips (a latent video model's): a PNG a frame, named by clip, class and frame.
        let frame_names: Vec<String> = names
            .iter()
            .flat_map(|name| (0..extent.frames).map(move |f| format!("{name}-f{f:02}")))
            .collect();
        write_image_pngs(dir, &batch, &frame_names)?;
        println!("one PNG per frame in {}", dir.display());
    } else if let Some(dir) = &job.out_dir {
        write_image_pngs(dir, &batch, &names)?;
        let [n, c, h, w] = batch.shape();
        write_npz(
            &dir.join("samples.npz"),
            &batch.to_u8_nhwc(),
            [n, h, w, c],
            &labels,
        )?;
        println!("one PNG per image and samples.npz in {}", dir.display());
    }
    Ok(())
}

/// The sample grid of `pixels` (n, frames, c, h, w), whose item k is of class `names[k]`: for
/// images one row per class of `per_class` images, for video one row per clip, a column a frame.
pub fn sample_grid<'a>(
    [c, h, w]: [usize; 3],
    frames: usize,
    pixels: &'a [f32],
    names: &[&str],
    per_class: usize,
) -> anyhow::Result<(ImageBatch<'a>, GridLayout)> {
    let shape = [names.len() * frames, c, h, w];
    let batch = ImageBatch::new(pixels, shape)?;
    let layout = if frames == 1 {
        let rows: Vec<&str> = names.iter().copied().step_by(per_class).collect();
        GridLayout::per_class(&rows, per_class)
    } else {
        GridLayout::clips(names, frames)
    };
    Ok((batch, layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::SamplerKind;
    use crate::model::tests::tiny_config;

    /// A tiny untrained model with ten class names, for the job tests.
    fn tiny_model() -> SamplingModel {
        SamplingModel::new(
            Acdit::new(&tiny_config(2), &Device::flex()),
            (0..10).map(|c| c.to_string()).collect(),
        )
    }
    #[test]
    fn a_latent_model_without_a_vae_says_to_pass_one() {
        let mut config = tiny_config(2);
        config.in_channels = 4;
        config.latent_size = 4 * config.patch_size * config.patch_size;
        let model = SamplingModel::new(Acdit::new(&config, &Device::flex()), vec!["a".into()]);
        let message = model
            .with_vae(None, &Device::flex())
            .err()
            .expect("a latent model needs a VAE")
            .to_string();
        assert!(message.contains("--vae"), "{message}");
    }

    /// Two of classes 1 and 2, two unguided steps a block.
    fn job(grid: &Path) -> SampleJob {
        SampleJob {
            classes: Some(vec![1, 2]),
            per_class: 2,
            generation: Generation {
                steps: 2,
                cfg: 1.0,
                ..Generation::default()
            },
            seed: 3,
            batch: 4,
            grid: grid.to_path_buf(),
            out_dir: None,
            frames: None,
            window: None,
        }
    }

    #[test]
    fn same_seed_same_images_whatever_the_batch() {
        let model = Acdit::new(&tiny_config(2), &Device::flex());
        let generation = Generation {
            sampler: SamplerKind::Ddim,
            steps: 2,
            cfg: 1.5,
            ..Generation::default()
        };
        let labels = [1, 2, 3];
        let sample = |seed: u64, batch: usize| {
            let quiet = &mut crate::diffusion::blockwise::Quiet;
            sample_images(&model, &labels, &generation, seed, batch, quiet)
        };
        let whole = sample(7, 3);
        assert_eq!(whole, sample(7, 1));
        let other_seed = sample(8, 3);
        assert_ne!(whole, other_seed);
    }

    /// Records which blocks the model was called for.
    struct Blocks(Vec<usize>);
    impl Observer for Blocks {
        fn block_done(&mut self, block: usize) {
            self.0.push(block);
        }
    }

    #[test]
    fn every_block_of_the_picture_or_clip_is_generated() {
        let generation = Generation {
            steps: 1,
            cfg: 1.0,
            ..Generation::default()
        };
        let image = Acdit::new(&tiny_config(2), &Device::flex());
        let mut seen = Blocks(Vec::new());
        let pixels = sample_images(&image, &[1], &generation, 0, 1, &mut seen);
        assert_eq!(seen.0, vec![0, 1, 2, 3]);
        assert_eq!(pixels.len(), 8 * 8);
        let video = Acdit::new(&crate::model::tests::tiny_video_config(), &Device::flex());
        for frames in [2, 4, 7] {
            let extent = Extent {
                frames,
                ..Extent::trained(video.config())
            };
            let mut seen = Blocks(Vec::new());
            let pixels = sample_clips(&video, &[1], &extent, &generation, 0, 1, &mut seen);
            assert_eq!(seen.0, (0..frames).collect::<Vec<_>>(), "{frames} frames");
            assert_eq!(pixels.len(), frames * 8 * 8);
        }
    }

    #[test]
    fn unwritable_grid_fails_before_sampling_and_names_the_path() {
        let grid = Path::new("/nonexistent-acdit-folder/grid.png");
        let message = run_job(&tiny_model(), &job(grid)).unwrap_err().to_string();
        assert!(message.contains("/nonexistent-acdit-folder"), "{message}");
    }

    #[test]
    fn unwritable_image_folder_fails_before_the_grid_is_written() {
        let temp = tempfile::tempdir().unwrap();
        let folder = temp.path();
        let grid = folder.join("grid.png");
        // A file where the image folder should go: the folder cannot be created.
        let blocker = folder.join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let out_dir = blocker.join("images");
        let job = SampleJob {
            out_dir: Some(out_dir),
            ..job(&grid)
        };
        let message = format!("{:#}", run_job(&tiny_model(), &job).unwrap_err());
        assert!(message.contains("blocker"), "{message}");
        assert!(!grid.exists(), "the grid was written before the failure");
    }

    #[test]
    fn classes_outside_the_model_are_refused_before_sampling() {
        let temp = tempfile::tempdir().unwrap();
        let grid = temp.path().join("grid.png");
        for (classes, expected) in [(vec![3, 10], "class 10"), (vec![-1], "class -1")] {
            let job = SampleJob {
                classes: Some(classes),
                ..job(&grid)
            };
            let message = run_job(&tiny_model(), &job).unwrap_err().to_string();
            assert!(
                message.contains(expected) && message.contains("0..9"),
                "{message}"
            );
        }
        let none = SampleJob {
            per_class: 0,
            ..job(&grid)
        };
        assert!(run_job(&tiny_model(), &none).is_err());
        assert!(!grid.exists());
    }

    #[test]
    fn the_built_in_model_loads_from_the_binary_alone() {
        let mnist = crate::checkpoint::load::built_in_model("mnist").unwrap();
        let sampling = load_model(
            WeightsSource::BuiltIn(mnist),
            WeightsKind::Ema,
            None,
            &Device::flex(),
        )
        .unwrap();
        assert_eq!(sampling.model.config().img_hw, 24);
        assert_eq!(sampling.class_names.len(), 10);
        let message = crate::checkpoint::load::built_in_model("imagenet")
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"mnist\""), "{message}");
    }
}
