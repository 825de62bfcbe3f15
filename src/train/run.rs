//! A whole training run as a user sees it: progress bar, JSONL metrics, periodic checkpoints and
//! sample grids, a clean stop on Ctrl-C, and the loss curve at the end.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::Trainer;
use crate::checkpoint::tensors::write_safetensors_atomic;
use crate::data::TrainingSet;
use crate::diffusion::blockwise::{Generation, Quiet};
use crate::output::{plot_loss_curve, write_labeled_grid};
use crate::sampling::{output_pixels, sample_grid, sample_images};
use crate::vae::NamedVae;

/// Where a run writes: `checkpoint.safetensors`, `ema.safetensors` and its `config.json`,
/// `metrics.jsonl`,
/// `samples/step-N.png`, `loss.png`.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn ema(&self) -> PathBuf {
        self.0.join("ema.safetensors")
    }
    /// The EMA weights' model config, as `config.json` beside them.
    pub fn model_config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    fn samples(&self, step: u64) -> PathBuf {
        self.0.join("samples").join(format!("step-{step:06}.png"))
    }
    fn loss_plot(&self) -> PathBuf {
        self.0.join("loss.png")
    }
}

/// A flag that Ctrl-C sets, so a run stops between steps and saves what it has. A second Ctrl-C
/// while the checkpoint is written still only asks to stop.
pub(crate) fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    stop
}

/// Trains until the configured step count or Ctrl-C, writing everything under `dir`. A latent
/// model's sample grids are decoded through `vae`, whose name its weights record.
pub fn run(
    trainer: &mut Trainer,
    dataset: &dyn TrainingSet,
    dir: &RunDir,
    vae: Option<&NamedVae>,
) -> Result<()> {
    std::fs::create_dir_all(dir.0.join("samples"))
        .with_context(|| format!("creating run folder {}", dir.0.display()))?;
    let stop = stop_on_ctrl_c();
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.metrics())
        .with_context(|| format!("opening {}", dir.metrics().display()))?;

    let total = trainer.config.steps;
    let bar = ProgressBar::new(total).with_position(trainer.step);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} loss {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let model = &trainer.config.model;
    let tokens_per_step = (trainer.config.batch_size * 2 * model.seq_len()) as f64;
    let mut smoothed: Option<f64> = None;
    let started = Instant::now();
    let seconds_before = trainer.seconds;
    let first_step = trainer.step;
    while trainer.step < total && !stop.load(Ordering::SeqCst) {
        let report = match trainer.train_step(dataset) {
            Ok(report) => report,
            Err(error) => {
                // Skipped steps left the weights untouched: what is saved is the last good state.
                save(trainer, dir, dataset, vae)?;
                return Err(error.context(format!(
                    "last good checkpoint: {}",
                    dir.checkpoint().display()
                )));
            }
        };
        trainer.seconds = seconds_before + started.elapsed().as_secs_f64();
        if report.loss.is_finite() {
            smoothed = Some(smoothed.map_or(report.loss, |s| 0.98 * s + 0.02 * report.loss));
        } else {
            bar.println(format!(
                "step {}: loss is {}, update skipped",
                report.step, report.loss
            ));
        }
        let steps_per_s = (trainer.step - first_step) as f64 / started.elapsed().as_secs_f64();
        bar.set_position(trainer.step);
        bar.set_message(format!(
            "{:.4} | {:.2} steps/s | {:.0} tokens/s",
            smoothed.unwrap_or(f64::NAN),
            steps_per_s,
            steps_per_s * tokens_per_step
        ));
        let line = serde_json::json!({
            "step": report.step,
            "loss": report.loss,
            "lr": report.lr,
            "grad_norm": report.grad_norm,
            "applied": report.applied,
            "seconds": trainer.seconds,
        });
        writeln!(metrics, "{line}")?;
        if trainer.step.is_multiple_of(trainer.config.checkpoint_every) {
            save(trainer, dir, dataset, vae)?;
        }
        if trainer.step.is_multiple_of(trainer.config.sample_every) {
            let path = dir.samples(trainer.step);
            write_sample_grid(trainer, dataset, &path, vae)?;
            bar.println(format!(
                "step {}: samples in {}",
                trainer.step,
                path.display()
            ));
        }
    }
    bar.finish();
    save(trainer, dir, dataset, vae)?;
    if stop.load(Ordering::SeqCst) {
        println!(
            "stopped at step {}; resume with --resume {}",
            trainer.step,
            dir.checkpoint().display()
        );
    }
    // A run of no steps (`--steps 0`: the untrained network, a baseline) has no curve to draw.
    let points = read_losses(&dir.metrics())?;
    println!(
        "checkpoint {}\nEMA weights {}",
        dir.checkpoint().display(),
        dir.ema().display()
    );
    if !points.is_empty() {
        plot_loss_curve(&dir.loss_plot(), &points, true)?;
        println!("loss curve {}", dir.loss_plot().display());
    }
    Ok(())
}

/// Writes the full checkpoint, the EMA weights alone (what `acdit sample` loads) and their model
/// config.
fn save(
    trainer: &Trainer,
    dir: &RunDir,
    dataset: &dyn TrainingSet,
    vae: Option<&NamedVae>,
) -> Result<()> {
    // How the weights sample (guidance, the VAE that decodes them), in both files, so that
    // `sample --checkpoint` of the run's checkpoint does as its EMA file does.
    let mut sampling = std::collections::BTreeMap::from([(
        "guidance".to_string(),
        trainer.config.guidance.to_string(),
    )]);
    if let Some(vae) = vae {
        sampling.insert("vae".to_string(), vae.name.clone());
    }
    trainer
        .checkpoint()
        .save(&dir.checkpoint(), sampling.clone())?;
    let mut metadata = sampling;
    metadata.extend([
        (
            "model_config".to_string(),
            serde_json::to_string(&trainer.config.model)?,
        ),
        (
            "class_names".to_string(),
            serde_json::to_string(dataset.class_names())?,
        ),
        ("step".to_string(), trainer.step.to_string()),
    ]);
    write_safetensors_atomic(&dir.ema(), &trainer.ema_tensors(), Some(metadata))?;
    // Beside the weights, as in a hub model folder: what the weights are without opening them.
    let config = serde_json::to_string_pretty(&trainer.config.model)?;
    crate::atomic::write_bytes_atomic(&dir.model_config(), config.as_bytes())
        .with_context(|| format!("writing {}", dir.model_config().display()))?;
    Ok(())
}

/// A grid of EMA samples: for images a row of 8 per class, for video one clip per class.
fn write_sample_grid(
    trainer: &Trainer,
    dataset: &dyn TrainingSet,
    path: &Path,
    vae: Option<&NamedVae>,
) -> Result<()> {
    let model = &trainer.ema.model;
    let config = model.config();
    let per_class = if config.temporal_len == 1 { 8 } else { 1 };
    let labels: Vec<i64> = (0..config.num_classes as i64)
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect();
    let generation = Generation {
        cfg: trainer.config.guidance,
        ..Generation::default()
    };
    let pixels = sample_images(model, &labels, &generation, 0, labels.len(), &mut Quiet);
    let class_names = dataset.class_names();
    let names: Vec<&str> = labels
        .iter()
        .map(|&c| class_names[c as usize].as_str())
        .collect();
    let (pixels, frame) = output_pixels(config, vae, pixels, labels.len() * config.temporal_len)?;
    let (batch, layout) = sample_grid(frame, config.temporal_len, &pixels, &names, per_class)?;
    let layout = layout.with_title(format!("EMA samples, step {}", trainer.step));
    write_labeled_grid(path, &batch, &layout)?;
    Ok(())
}

fn read_losses(path: &Path) -> Result<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect())
}
