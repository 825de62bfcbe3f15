//! `acdit predict`: frame prediction. The first frames of each real clip are encoded once as
//! clean blocks (a prefill of the KV cache, no denoising) and the rest is generated after them.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Clips;
use super::clips::{ClipLayout, expect_frame_size, read_clips};
use super::output::{clips_from_pixels, write_clip_files};
use crate::diffusion::blockwise::{Generation, Quiet, Window};
use crate::sampling::{Extent, SamplingModel, sample_clips};

/// What `acdit predict` was asked for.
#[derive(Debug, Clone)]
pub struct PredictJob {
    /// The real clips (see [`read_clips`]) whose first frames are the context.
    pub context: PathBuf,
    pub layout: ClipLayout,
    /// Frames given, a whole number of blocks.
    pub context_frames: usize,
    /// Frames a predicted clip, the context included; default the trained length.
    pub frames: Option<usize>,
    /// Clips to predict, from the first; default all.
    pub clips: Option<usize>,
    pub generation: Generation,
    pub seed: u64,
    /// Clips generated at once.
    pub batch: usize,
    /// What a prediction past the trained length attends to; default the widest window.
    pub window: Option<Window>,
    /// Gets `predicted.npz` and a GIF per clip.
    pub out_dir: PathBuf,
}

impl PredictJob {
    /// Predicts and writes `out_dir/predicted.npz` (`clips` (N, F, H, W) uint8, the context
    /// frames included, and `labels`) and a GIF per clip, the truth beside the prediction when
    /// the file holds enough frames. Returns the predicted clips.
    pub fn run(&self, sampling: &SamplingModel) -> Result<Clips> {
        let model = &sampling.model;
        let config = model.config();
        if config.temporal_len == 1 {
            bail!("predict needs a video model; this one draws images");
        }
        let mut real = read_clips(&self.context, self.layout)?;
        if let Some(n) = self.clips {
            if n == 0 || n > real.n {
                bail!(
                    "{}: holds {} clips, {n} asked for",
                    self.context.display(),
                    real.n
                );
            }
            real = real.head(n, real.frames)?;
        }
        self.check(&real, config, sampling.frame_side())?;
        let frames = self.frames.unwrap_or(config.temporal_len);
        let labels: Vec<i64> = match &real.labels {
            Some(labels) => labels.clone(),
            None => vec![config.num_classes as i64; real.n],
        };
        if let Some(bad) = labels
            .iter()
            .find(|&&l| l < 0 || l as usize > config.num_classes)
        {
            bail!(
                "{}: label {bad} is out of range for a model of {} classes",
                self.context.display(),
                config.num_classes
            );
        }
        let k = self.context_frames;
        let given: Vec<u8> = (0..real.n)
            .flat_map(|i| real.clip(i)[..k * real.frame_len()].to_vec())
            .collect();
        let context: Vec<f32> = match &sampling.vae {
            Some(vae) => vae.encode_frames(&given, [real.height, real.width], 64)?,
            None => given.into_iter().map(crate::data::scale).collect(),
        };
        let window = self.window.unwrap_or_else(|| Window::widest(config));
        window.check(config.ar_len).map_err(anyhow::Error::msg)?;
        let extent = Extent {
            frames,
            context: Some((&context, k)),
            window,
        };
        std::fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("creating {}", self.out_dir.display()))?;
        let started = std::time::Instant::now();
        let pixels = sample_clips(
            model,
            &labels,
            &extent,
            &self.generation,
            self.seed,
            self.batch,
            &mut Quiet,
        );
        let (pixels, [c, h, w]) = sampling.to_pixels(pixels, real.n, frames)?;
        if c != 1 {
            bail!("predict writes grey clips, but the model's frames have {c} channels");
        }
        let mut predicted =
            clips_from_pixels(&pixels, [real.n, frames, h, w], Some(labels.clone()))?;
        // The given frames as they are, not as a VAE returns them.
        let given = k * real.frame_len();
        for i in 0..real.n {
            let at = i * frames * real.frame_len();
            predicted.clips[at..at + given].copy_from_slice(&real.clip(i)[..given]);
        }
        let truth = match real.frames >= frames {
            true => Some(real.head(real.n, frames)?),
            false => None,
        };
        let names: Vec<String> = labels
            .iter()
            .map(|&l| {
                sampling
                    .class_names
                    .get(l as usize)
                    .cloned()
                    .unwrap_or_else(|| "null".to_string())
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        write_clip_files(
            &self.out_dir,
            "predicted.npz",
            &predicted,
            &names,
            truth.as_ref(),
        )?;
        println!(
            "{} clips: {k} frames given, {} predicted, in {:.1}s -> {}",
            real.n,
            frames - k,
            started.elapsed().as_secs_f64(),
            self.out_dir.join("predicted.npz").display()
        );
        Ok(predicted)
    }

    /// The context must fit the model: its frame size, whole blocks, fewer frames than asked.
    fn check(&self, real: &Clips, config: &crate::config::ModelConfig, side: usize) -> Result<()> {
        let path = &self.context;
        expect_frame_size(real, path, side)?;
        let (k, per_block) = (self.context_frames, config.frames_per_block());
        let frames = self.frames.unwrap_or(config.temporal_len);
        if k == 0 || !k.is_multiple_of(per_block) {
            bail!(
                "--context-frames {k}: the context must be a whole number of blocks of {per_block} frame(s)"
            );
        }
        if k >= frames {
            bail!("--context-frames {k} leaves nothing to predict in {frames} frames");
        }
        if real.frames < k {
            bail!(
                "{}: clips of {} frames, but {k} context frames were asked for (expected (N, >= {k}, {side}, {side}))",
                path.display(),
                real.frames,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Acdit;
    use crate::model::tests::tiny_video_config;
    use crate::video::clips::write_clips;
    use burn::prelude::Device;
    use std::path::Path;

    fn tiny_model() -> SamplingModel {
        SamplingModel::new(
            Acdit::new(&tiny_video_config(), &Device::flex()),
            (0..5).map(|c| c.to_string()).collect(),
        )
    }

    fn job(context: &Path, out_dir: &Path, context_frames: usize) -> PredictJob {
        PredictJob {
            context: context.to_path_buf(),
            layout: ClipLayout::Nfhw,
            context_frames,
            frames: None,
            clips: None,
            generation: Generation {
                steps: 2,
                ..Generation::default()
            },
            seed: 0,
            batch: 2,
            window: None,
            out_dir: out_dir.to_path_buf(),
        }
    }

    #[test]
    fn predictions_keep_the_context_and_write_the_clip_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("real.npz");
        let bytes: Vec<u8> = (0..3 * 4 * 64).map(|i| (i * 37 % 256) as u8).collect();
        let real = Clips::new(bytes, [3, 4, 8, 8], Some(vec![0, 2, 4])).unwrap();
        write_clips(&path, &real).unwrap();
        let out = dir.path().join("out");
        let predicted = job(&path, &out, 2).run(&tiny_model()).unwrap();
        assert_eq!(predicted.shape(), [3, 4, 8, 8]);
        for i in 0..3 {
            assert_eq!(predicted.clip(i)[..2 * 64], real.clip(i)[..2 * 64]);
        }
        assert_eq!(predicted.labels, Some(vec![0, 2, 4]));
        let back = read_clips(&out.join("predicted.npz"), ClipLayout::Nfhw).unwrap();
        assert_eq!(back, predicted);
        assert!(out.join("0002-4.gif").exists());
    }

    #[test]
    fn bad_contexts_are_errors_naming_the_file_and_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let wrong_size = dir.path().join("wrong-size.npz");
        write_clips(
            &wrong_size,
            &Clips::new(vec![0; 2 * 4 * 100], [2, 4, 10, 10], None).unwrap(),
        )
        .unwrap();
        let message = format!(
            "{:#}",
            job(&wrong_size, &out, 2).run(&tiny_model()).unwrap_err()
        );
        assert!(
            message.contains("wrong-size.npz") && message.contains("8"),
            "{message}"
        );
        let good = dir.path().join("good.npz");
        write_clips(
            &good,
            &Clips::new(vec![0; 2 * 4 * 64], [2, 4, 8, 8], None).unwrap(),
        )
        .unwrap();
        for k in [0, 4] {
            let message = job(&good, &out, k)
                .run(&tiny_model())
                .unwrap_err()
                .to_string();
            assert!(message.contains("--context-frames"), "{message}");
        }
        let too_wide = PredictJob {
            window: Some(Window {
                blocks: 4,
                sink: false,
            }),
            ..job(&good, &out, 2)
        };
        let message = too_wide.run(&tiny_model()).unwrap_err().to_string();
        assert!(message.contains("--window 4"), "{message}");
        let garbage = dir.path().join("garbage.npy");
        std::fs::write(&garbage, b"not numpy").unwrap();
        let message = format!(
            "{:#}",
            job(&garbage, &out, 2).run(&tiny_model()).unwrap_err()
        );
        assert!(message.contains("garbage.npy"), "{message}");
        assert!(!out.exists(), "nothing is written for a bad context");
    }
}
