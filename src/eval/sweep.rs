//! `acdit sweep block-size`: the paper's central trade-off. The same network, data, steps and
//! seed trained at several block sizes, from one token (token-wise autoregression) to the whole
//! image (full-sequence diffusion); each point then sampled and scored (classifier FID, and
//! Inception FID when the network is given, conditional accuracy), with its sampling time and
//! its KV cache's size. A finished point is read back, not retrained; an unfinished run resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::chunks::FeatureChunks;
use super::classifier::DigitClassifier;
use super::images::ImageSet;
use super::inception::InceptionV3;
use super::job::{Judges, ReferenceSide, generate, reference_side, score};
use crate::checkpoint::load::{WeightsKind, WeightsSource};
use crate::data::idx::{DatasetKind, Split, load_mnist_dir, mnist_or_built_in};
use crate::diffusion::blockwise::Generation;
use crate::output::{Panel, plot_panels};
use crate::sampling::load_model;
use crate::train::TrainConfig;
use crate::train::job::{TrainJob, TrainOverrides};

/// What the sweep was asked for.
#[derive(Debug, Clone)]
pub struct BlockSizeSweep {
    /// Sides of the square blocks, in tokens; each must divide the MNIST recipe's 6x6 tokens.
    pub block_sides: Vec<usize>,
    pub steps: u64,
    /// Samples each point is scored on, the classes in turn.
    pub samples: usize,
    pub out: PathBuf,
    /// The FID Inception network; None scores in the classifier's space only.
    pub inception: Option<PathBuf>,
    /// MNIST IDX files: the training digits, and the test digits as the reference; None for
    /// data/mnist, else the subset built into the binary.
    pub data: Option<PathBuf>,
    pub generation: Generation,
}

/// One block size's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub block_side: usize,
    pub block_tokens: usize,
    pub blocks: usize,
    pub train_seconds: f64,
    pub final_loss: f64,
    pub sample_seconds_per_image: f64,
    /// Keys and values the cache holds for one image at its fullest (all clean blocks but the
    /// last, every layer; f32), doubled by guidance's second row.
    pub kv_cache_bytes_per_image: usize,
    pub classifier_fid: f64,
    pub inception_fid: Option<f64>,
    pub conditional_accuracy: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

impl BlockSizeSweep {
    fn config(&self, side: usize) -> Result<TrainConfig> {
        let mut config = TrainConfig::mnist();
        let tokens = config.model.img_hw / config.model.patch_size;
        if side == 0 || !tokens.is_multiple_of(side) {
            bail!("block side {side} does not divide the recipe's {tokens}x{tokens} tokens");
        }
        let m = &config.model;
        config.model = crate::config::ModelConfig::image(
            m.in_channels,
            m.img_hw,
            m.patch_size,
            side,
            m.hidden_size,
            m.depth,
            m.num_classes,
        );
        config.steps = self.steps;
        config.checkpoint_every = config.checkpoint_every.min(self.steps.max(1));
        config.validate()?;
        Ok(config)
    }

    pub fn run(&self, device: &Device) -> Result<Vec<SweepPoint>> {
        if self.block_sides.is_empty() || self.samples < 2 {
            bail!("give at least one block side and two samples");
        }
        let configs: Vec<_> = self
            .block_sides
            .iter()
            .map(|&side| self.config(side))
            .collect::<Result<_>>()?;
        std::fs::create_dir_all(self.out.join("points"))
            .with_context(|| format!("creating {}", self.out.display()))?;
        let judges = Judges {
            inception: self
                .inception
                .as_ref()
                .map(|p| InceptionV3::load(p, device))
                .transpose()?,
            classifier: Some(DigitClassifier::load(None, device)?),
            chunks: FeatureChunks::new(self.out.join("chunks")),
        };
        let test = || -> Result<ImageSet> {
            let set = match &self.data {
                Some(dir) => load_mnist_dir(dir, DatasetKind::Mnist, Split::Test)?,
                None => mnist_or_built_in(Split::Test)?.0,
            };
            Ok(ImageSet::from_dataset(&set))
        };
        let spaces = if self.inception.is_some() {
            ""
        } else {
            "-classifier"
        };
        let cache = self.out.join(format!("reference-mnist-test{spaces}.npz"));
        let reference = reference_side(Some(&cache), test, &judges, device)?;
        let mut points = Vec::new();
        for (side, config) in self.block_sides.iter().zip(configs) {
            let path = self.out.join("points").join(format!("block-{side}.json"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let point: SweepPoint = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a sweep point", path.display()))?;
                if point.inception_fid.is_some() || self.inception.is_none() {
                    println!("block {side}x{side}: done before ({})", path.display());
                    points.push(point);
                    continue;
                }
            }
            let point = self.point(*side, config, &reference, &judges, device)?;
            let text = serde_json::to_string_pretty(&point)?;
            crate::atomic::write_bytes_atomic(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            points.push(point);
        }
        self.write_outputs(&points)?;
        judges.chunks.remove()?;
        Ok(points)
    }

    /// Trains (or resumes, or finds finished) one block size, then samples and scores it.
    fn point(
        &self,
        side: usize,
        config: TrainConfig,
        reference: &ReferenceSide,
        judges: &Judges,
        device: &Device,
    ) -> Result<SweepPoint> {
        let run = self.out.join("runs").join(format!("block-{side}"));
        let checkpoint = run.join("checkpoint.safetensors");
        let config_file = run.join("train.toml");
        let finished = crate::train::state::Checkpoint::load(&checkpoint)
            .is_ok_and(|c| c.progress.step >= config.steps);
        if !finished {
            std::fs::create_dir_all(&run)?;
            crate::atomic::write_bytes_atomic(&config_file, toml::to_string(&config)?.as_bytes())?;
            println!(
                "block {side}x{side}: training {} steps in {}",
                config.steps,
                run.display()
            );
            let resume = checkpoint.is_file().then(|| checkpoint.clone());
            TrainJob {
                preset: None,
                config_file: resume.is_none().then(|| config_file.clone()),
                data: self.data.clone(),
                resume,
                init: None,
                out: Some(run.clone()),
                overrides: TrainOverrides::default(),
                vae: None,
            }
            .run(&device.clone().autodiff())?;
        }
        let (train_seconds, final_loss) = last_metrics(&run.join("metrics.jsonl"))?;
        let ema = run.join("ema.safetensors");
        let model = load_model(WeightsSource::File(&ema), WeightsKind::Ema, None, device)?;
        println!("block {side}x{side}: sampling {} images", self.samples);
        let started = Instant::now();
        let samples = generate(&model, self.samples, &self.generation, 0, 100)?;
        let sample_seconds = started.elapsed().as_secs_f64();
        let samples = samples.padded_to(28)?;
        let m = model.model.config();
        let scores = score(
            &samples,
            reference,
            judges,
            device,
            &format!("block {side}"),
        )?;
        let classifier = scores.classifier.context("digits have classifier scores")?;
        let guidance_rows = if self.generation.cfg == 1.0 { 1 } else { 2 };
        Ok(SweepPoint {
            block_side: side,
            block_tokens: m.block_size,
            blocks: m.ar_len,
            train_seconds,
            final_loss,
            sample_seconds_per_image: sample_seconds / self.samples as f64,
            kv_cache_bytes_per_image: guidance_rows
                * 2
                * m.depth
                * (m.ar_len - 1)
                * m.block_size
                * m.hidden_size
                * 4,
            classifier_fid: classifier.fid,
            inception_fid: scores.inception.as_ref().map(|s| s.fid),
            conditional_accuracy: scores.conditional_accuracy.unwrap_or(0.0),
            precision: scores.inception.as_ref().and_then(|s| s.precision),
            recall: scores.inception.as_ref().and_then(|s| s.recall),
        })
    }

    /// `table.md`, `points.json` and `plot.png` in the sweep folder.
    fn write_outputs(&self, points: &[SweepPoint]) -> Result<()> {
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let mut table = String::from(
            "| block | tokens a block | blocks | classifier FID | Inception FID | precision | recall | conditional accuracy | seconds an image | KV cache an image | training | final loss |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for p in points {
            table.push_str(&format!(
                "| {0}x{0} | {1} | {2} | {3:.2} | {4} | {5} | {6} | {7:.2}% | {8:.4} | {9:.1} KiB | {10:.1} min | {11:.4} |\n",
                p.block_side,
                p.block_tokens,
                p.blocks,
                p.classifier_fid,
                fmt(p.inception_fid, 2),
                fmt(p.precision, 3),
                fmt(p.recall, 3),
                100.0 * p.conditional_accuracy,
                p.sample_seconds_per_image,
                p.kv_cache_bytes_per_image as f64 / 1024.0,
                p.train_seconds / 60.0,
                p.final_loss,
            ));
        }
        let write = |name: &str, text: &str| {
            let path = self.out.join(name);
            crate::atomic::write_bytes_atomic(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        };
        write("table.md", &table)?;
        write("points.json", &serde_json::to_string_pretty(points)?)?;
        let x = |f: fn(&SweepPoint) -> f64| -> Vec<(f64, f64)> {
            points
                .iter()
                .map(|p| ((p.block_tokens as f64).log2(), f(p)))
                .collect()
        };
        let x_label = "log2 tokens a block (0 = token-wise autoregression)";
        let mut panels = vec![Panel {
            title: "classifier FID (lower is better)".into(),
            x_label,
            curves: vec![("classifier FID", x(|p| p.classifier_fid))],
        }];
        if points.iter().all(|p| p.inception_fid.is_some()) {
            panels.push(Panel {
                title: "Inception FID against the MNIST test digits".into(),
                x_label,
                curves: vec![("FID", x(|p| p.inception_fid.unwrap_or(f64::NAN)))],
            });
        }
        panels.push(Panel {
            title: "conditional accuracy (%)".into(),
            x_label,
            curves: vec![("accuracy", x(|p| 100.0 * p.conditional_accuracy))],
        });
        panels.push(Panel {
            title: "sampling cost per image".into(),
            x_label,
            curves: vec![
                ("ms an image", x(|p| 1000.0 * p.sample_seconds_per_image)),
                (
                    "KV cache KiB",
                    x(|p| p.kv_cache_bytes_per_image as f64 / 1024.0),
                ),
            ],
        });
        plot_panels(&self.out.join("plot.png"), &panels)?;
        Ok(())
    }
}

/// Training seconds and the loss of the last logged step of a run.
fn last_metrics(path: &Path) -> Result<(f64, f64)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let last = text
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .with_context(|| format!("{}: no metrics", path.display()))?;
    Ok((
        last["seconds"].as_f64().unwrap_or(0.0),
        last["loss"].as_f64().unwrap_or(f64::NAN),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_trains_scores_and_keeps_finished_points() {
        let temp = tempfile::tempdir().unwrap();
        let sweep = BlockSizeSweep {
            block_sides: vec![3, 6],
            steps: 2,
            samples: 20,
            out: temp.path().join("sweep"),
            inception: None,
            data: None,
            generation: Generation {
                steps: 2,
                ..Generation::default()
            },
        };
        let device = Device::flex();
        let points = sweep.run(&device).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].blocks, points[1].blocks), (4, 1));
        // Full-sequence diffusion caches nothing; four blocks cache three.
        assert_eq!(points[1].kv_cache_bytes_per_image, 0);
        assert_eq!(
            points[0].kv_cache_bytes_per_image,
            2 * 2 * 4 * 3 * 9 * 128 * 4
        );
        for name in ["table.md", "points.json", "plot.png"] {
            assert!(sweep.out.join(name).is_file(), "{name}");
        }
        let point = sweep.out.join("points/block-3.json");
        let written = std::fs::metadata(&point).unwrap().modified().unwrap();
        assert_eq!(sweep.run(&device).unwrap(), points);
        assert_eq!(
            std::fs::metadata(&point).unwrap().modified().unwrap(),
            written
        );
        assert!(sweep.config(4).is_err());
    }
}
