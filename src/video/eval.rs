//! `acdit eval-video`: predicted frames scored against the truth over the horizon, beside the
//! baseline every video predictor must beat, copying the last context frame.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::Clips;
use super::clips::{ClipLayout, read_clips};
use super::metrics::{FrameScore, frame_scores};
use super::moving_mnist::MovingMnistSpec;
use super::reader::DigitReader;
use crate::data::idx::{Split, mnist_or_built_in};
use crate::output::{Panel, plot_panels};
use burn::prelude::Device;

/// What `acdit eval-video` was asked for.
#[derive(Debug, Clone)]
pub struct EvalVideoJob {
    /// Predicted clips (N, F, H, W), the context frames first, as `acdit predict` writes them.
    pub predicted: PathBuf,
    /// The real clips, at least F frames each (the first N are compared with the N predicted);
    /// without them only the digits are read (an unconditional rollout).
    pub truth: Option<PathBuf>,
    pub truth_layout: ClipLayout,
    /// Frames of each clip that were given, not predicted (0 for an unconditional rollout).
    pub context_frames: usize,
    /// The PNG of MSE and SSIM over the horizon, if wanted.
    pub plot: Option<PathBuf>,
    /// The side the clips' digits were drawn at, for reading them; None: the generator's
    /// default for the frame size.
    pub digit_size: Option<usize>,
}

/// The scores at one predicted frame, averaged over the clips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HorizonScore {
    /// The frame's index in the clip (context frames count).
    pub frame: usize,
    pub model: FrameScore,
    pub copy_last: FrameScore,
}

impl EvalVideoJob {
    /// Scores each predicted frame against the truth and the baseline (when there is a truth),
    /// reads the digit of every frame of clips that carry labels, prints both and writes the plot.
    pub fn run(&self) -> Result<Vec<HorizonScore>> {
        let predicted = read_clips(&self.predicted, ClipLayout::Nfhw)?;
        let k = self.context_frames;
        let frames = predicted.frames;
        if k >= frames || (k == 0 && self.truth.is_some()) {
            bail!(
                "--context-frames {k}: {} holds {frames} frames a clip, so 1 to {} were given",
                self.predicted.display(),
                frames - 1
            );
        }
        let scores = match &self.truth {
            Some(path) => {
                let truth = read_clips(path, self.truth_layout)?;
                self.scores(&predicted, &truth, path)?
            }
            None => Vec::new(),
        };
        if !scores.is_empty() {
            print_table(&scores);
        }
        let reading = match &predicted.labels {
            Some(labels) => Some(read_digits(&predicted, labels, self.digit_size)?),
            None => None,
        };
        if let Some(agreement) = &reading {
            println!("frame   digit read as its label");
            for (f, a) in agreement.iter().enumerate() {
                let given = if f < k { " (given)" } else { "" };
                println!("{f:>5}   {:>5.1}%{given}", 100.0 * a);
            }
            let kept = agreement.iter().take_while(|&&a| a >= 0.5).count();
            println!(
                "the digit reads as its label in at least half the clips for the first {kept} of {frames} frames"
            );
        }
        if let Some(path) = &self.plot {
            plot(path, &scores, reading.as_deref(), predicted.n)?;
            println!("plot: {}", path.display());
        }
        Ok(scores)
    }

    fn scores(
        &self,
        predicted: &Clips,
        truth: &Clips,
        path: &std::path::Path,
    ) -> Result<Vec<HorizonScore>> {
        let (k, frames) = (self.context_frames, predicted.frames);
        if (truth.height, truth.width) != (predicted.height, predicted.width)
            || truth.n < predicted.n
            || truth.frames < frames
        {
            bail!(
                "{} holds clips {:?} (n, frames, height, width); {} needs (>= {}, >= {frames}, {}, {})",
                path.display(),
                truth.shape(),
                self.predicted.display(),
                predicted.n,
                predicted.height,
                predicted.width
            );
        }
        // `acdit predict --clips N` predicts the first N.
        let truth = truth.head(predicted.n, frames)?;
        let baseline = copy_last(&truth, k);
        let model = frame_scores(&truth, predicted)?;
        let copied = frame_scores(&truth, &baseline)?;
        Ok((k..frames)
            .map(|f| HorizonScore {
                frame: f,
                model: model[f],
                copy_last: copied[f],
            })
            .collect())
    }
}

/// Reference digits for reading frames: the training split's first 10,000.
const READER_DIGITS: usize = 10_000;

/// (frames,): the fraction of clips whose frame reads as the clip's label.
fn read_digits(clips: &Clips, labels: &[i64], digit_size: Option<usize>) -> Result<Vec<f64>> {
    let at_size = MovingMnistSpec::srivastava().at_size(clips.height);
    let spec = MovingMnistSpec {
        digits: 1,
        digit_size: digit_size.unwrap_or(at_size.digit_size),
        ..at_size
    };
    spec.validate()?;
    let (digits, _) = mnist_or_built_in(Split::Train)?;
    let reader = DigitReader::new(&spec, &digits, READER_DIGITS, &Device::flex());
    Ok(reader.agreement_by_frame(clips, labels))
}

fn print_table(scores: &[HorizonScore]) {
    println!("frame   MSE model  MSE copy-last   SSIM model  SSIM copy-last");
    for s in scores {
        println!(
            "{:>5}   {:>9.5}  {:>13.5}   {:>10.4}  {:>14.4}",
            s.frame, s.model.mse, s.copy_last.mse, s.model.ssim, s.copy_last.ssim
        );
    }
    let mean =
        |f: fn(&HorizonScore) -> f64| scores.iter().map(f).sum::<f64>() / scores.len() as f64;
    let (model_mse, copy_mse) = (mean(|s| s.model.mse), mean(|s| s.copy_last.mse));
    println!(
        "mean    {model_mse:>9.5}  {copy_mse:>13.5}   {:>10.4}  {:>14.4}",
        mean(|s| s.model.ssim),
        mean(|s| s.copy_last.ssim)
    );
    if copy_mse > 0.0 {
        println!(
            "MSE over the predicted frames: {:.3} of copying the last context frame",
            model_mse / copy_mse
        );
    } else {
        // Still clips: copying is exact, and no ratio to it means anything.
        println!("copying the last context frame is exact here (the truth does not move)");
    }
}

fn plot(
    path: &std::path::Path,
    scores: &[HorizonScore],
    reading: Option<&[f64]>,
    clips: usize,
) -> Result<()> {
    let series = |f: fn(&HorizonScore) -> f64| -> Vec<(f64, f64)> {
        scores.iter().map(|s| (s.frame as f64, f(s))).collect()
    };
    let mut panels = Vec::new();
    if !scores.is_empty() {
        panels.push(Panel {
            title: format!("MSE over the horizon ({clips} clips)"),
            x_label: "frame",
            curves: vec![
                ("model", series(|s| s.model.mse)),
                ("copy last", series(|s| s.copy_last.mse)),
            ],
        });
        panels.push(Panel {
            title: format!("SSIM over the horizon ({clips} clips)"),
            x_label: "frame",
            curves: vec![
                ("model", series(|s| s.model.ssim)),
                ("copy last", series(|s| s.copy_last.ssim)),
            ],
        });
    }
    if let Some(reading) = reading {
        panels.push(Panel {
            title: format!("digits read as their label ({clips} clips)"),
            x_label: "frame",
            curves: vec![(
                "model",
                reading
                    .iter()
                    .enumerate()
                    .map(|(f, &a)| (f as f64, a))
                    .collect(),
            )],
        });
    }
    plot_panels(path, &panels)?;
    Ok(())
}

/// The baseline: frames 0..k as they are, every later frame a copy of frame k - 1.
fn copy_last(clips: &Clips, k: usize) -> Clips {
    let frame = clips.frame_len();
    let bytes = (0..clips.n)
        .flat_map(|i| {
            let clip = clips.clip(i);
            let last = &clip[(k - 1) * frame..k * frame];
            clip[..k * frame]
                .iter()
                .chain((k..clips.frames).flat_map(|_| last.iter()))
                .copied()
                .collect::<Vec<u8>>()
        })
        .collect();
    Clips::new(bytes, clips.shape(), clips.labels.clone()).expect("same shape as the clips")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::embedded_mnist;
    use crate::video::clips::write_clips;
    use crate::video::moving_mnist::generate;

    #[test]
    fn digits_drawn_at_another_size_are_read_at_that_size() {
        let spec = MovingMnistSpec {
            frames: 2,
            digits: 1,
            digit_size: 24,
            ..MovingMnistSpec::srivastava().at_size(32)
        };
        let clips = generate(&spec, &embedded_mnist(Split::Test), 60, 3).unwrap();
        let labels = clips.labels.clone().unwrap();
        let read = read_digits(&clips, &labels, Some(24)).unwrap();
        assert!(read.iter().all(|&a| a > 0.75), "{read:?}");
        let misread = read_digits(&clips, &labels, None).unwrap();
        assert!(misread.iter().all(|&a| a < read[0] - 0.1), "{misread:?}");
        let message = read_digits(&clips, &labels, Some(40))
            .unwrap_err()
            .to_string();
        assert!(message.contains("digit_size"), "{message}");
    }

    #[test]
    fn the_truth_scores_perfectly_and_the_baseline_copies_the_last_context_frame() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..2 * 4 * 16 * 16).map(|i| (i * 31 % 251) as u8).collect();
        let truth = Clips::new(bytes, [2, 4, 16, 16], None).unwrap();
        let baseline = copy_last(&truth, 2);
        assert_eq!(baseline.frame(1, 3), truth.frame(1, 1));
        assert_eq!(baseline.frame(1, 1), truth.frame(1, 1));
        let (truth_path, pred_path) = (dir.path().join("truth.npz"), dir.path().join("pred.npz"));
        write_clips(&truth_path, &truth).unwrap();
        write_clips(&pred_path, &truth).unwrap();
        let job = EvalVideoJob {
            predicted: pred_path,
            truth: Some(truth_path),
            truth_layout: ClipLayout::Nfhw,
            context_frames: 2,
            plot: Some(dir.path().join("horizon.png")),
            digit_size: None,
        };
        let scores = job.run().unwrap();
        assert_eq!(scores.len(), 2);
        for s in &scores {
            assert_eq!(s.model.mse, 0.0);
            assert!((s.model.ssim - 1.0).abs() < 1e-12);
            assert!(s.copy_last.mse > 0.0);
        }
        assert!(dir.path().join("horizon.png").exists());
    }

    #[test]
    fn truth_of_another_shape_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (truth_path, pred_path) = (dir.path().join("truth.npz"), dir.path().join("pred.npz"));
        write_clips(
            &truth_path,
            &Clips::new(vec![0; 2 * 3 * 144], [2, 3, 12, 12], None).unwrap(),
        )
        .unwrap();
        write_clips(
            &pred_path,
            &Clips::new(vec![0; 2 * 4 * 144], [2, 4, 12, 12], None).unwrap(),
        )
        .unwrap();
        let job = EvalVideoJob {
            predicted: pred_path,
            truth: Some(truth_path),
            truth_layout: ClipLayout::Nfhw,
            context_frames: 2,
            plot: None,
            digit_size: None,
        };
        let message = job.run().unwrap_err().to_string();
        assert!(
            message.contains("truth.npz") && message.contains(">= 4"),
            "{message}"
        );
    }
}
