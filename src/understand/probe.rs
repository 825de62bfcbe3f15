//! The linear probe: multinomial logistic regression on standardised features, its L2 strength
//! chosen on a held-out part of the training features, fitted to convergence with L-BFGS so that
//! two encoders are compared by their features and not by an optimiser's luck.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::features::FeatureSet;
use super::images::load_raw_split;
use crate::data::idx::Split;

/// The L2 strengths tried (on the mean cross-entropy; the bias is not penalised).
pub const L2_GRID: [f64; 5] = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1];
/// The share of the training features held out to choose the L2 strength.
pub const HELD_OUT: f64 = 0.1;
/// L-BFGS iterations at most per fit.
const MAX_ITERATIONS: usize = 300;
/// L-BFGS's memory.
const HISTORY: usize = 10;

/// What a probe found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub dim: usize,
    pub classes: usize,
    pub train_examples: usize,
    pub test_examples: usize,
    /// (L2 strength, held-out accuracy) for each strength tried.
    pub held_out: Vec<(f64, f64)>,
    pub l2: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
}

/// Fits the probe on `train` (choosing the L2 strength on a held-out tenth, then refitting on all
/// of it) and measures it on `test`.
pub fn probe(
    train: &FeatureSet,
    test: &FeatureSet,
    seed: u64,
    device: &Device,
) -> Result<ProbeReport> {
    if train.dim != test.dim {
        bail!(
            "the test features have {} values each but the training features {}: were they made with the same layer and pooling?",
            test.dim,
            train.dim
        );
    }
    if train.len() < 10 || test.is_empty() {
        bail!(
            "a probe needs at least 10 training and 1 test example (got {} and {})",
            train.len(),
            test.len()
        );
    }
    let classes = 1 + train
        .labels
        .iter()
        .chain(&test.labels)
        .copied()
        .max()
        .unwrap_or(0) as usize;
    let standard = Standardiser::fit(train);

    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let held = ((train.len() as f64 * HELD_OUT).round() as usize).max(1);
    let (held_rows, fit_rows) = order.split_at(held);
    let fit = Design::new(train, fit_rows, &standard, classes, device);
    let held_out_set = Design::new(train, held_rows, &standard, classes, device);
    let held_out: Vec<(f64, f64)> = L2_GRID
        .iter()
        .map(|&l2| (l2, held_out_set.accuracy(&fit.fit(l2))))
        .collect();
    // The strongest regularisation among the best: ties go to the simpler model.
    let best = held_out.iter().fold(
        held_out[0],
        |best, &(l2, acc)| if acc >= best.1 { (l2, acc) } else { best },
    );
    let l2 = best.0;

    let all: Vec<usize> = (0..train.len()).collect();
    let train_design = Design::new(train, &all, &standard, classes, device);
    let weights = train_design.fit(l2);
    let test_rows: Vec<usize> = (0..test.len()).collect();
    let test_design = Design::new(test, &test_rows, &standard, classes, device);
    Ok(ProbeReport {
        dim: train.dim,
        classes,
        train_examples: train.len(),
        test_examples: test.len(),
        held_out,
        l2,
        train_accuracy: train_design.accuracy(&weights),
        test_accuracy: test_design.accuracy(&weights),
    })
}

/// What `acdit probe` reads.
#[derive(Debug, Clone)]
pub enum ProbeInput {
    /// Two features files of `acdit features`.
    Features { train: PathBuf, test: PathBuf },
    /// The raw pixels of a dataset's two splits (None: MNIST, fetched or built in): the baseline.
    Pixels { data: Option<PathBuf> },
}

/// What `acdit probe` was asked for.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    pub input: ProbeInput,
    pub seed: u64,
    /// Where to write the report as JSON as well.
    pub json: Option<PathBuf>,
}

impl ProbeJob {
    pub fn run(&self, device: &Device) -> Result<ProbeReport> {
        let (train, test) = match &self.input {
            ProbeInput::Features { train, test } => {
                (FeatureSet::load(train)?, FeatureSet::load(test)?)
            }
            ProbeInput::Pixels { data } => {
                let pixels = |split| -> Result<FeatureSet> {
                    let (images, described) = load_raw_split(data.as_deref(), split, None, 1)?;
                    println!("raw pixels of {described}");
                    Ok(FeatureSet {
                        dim: images.image_len(),
                        features: images.images,
                        labels: images.labels.iter().map(|&l| l as i64).collect(),
                        metadata: Default::default(),
                    })
                };
                (pixels(Split::Train)?, pixels(Split::Test)?)
            }
        };
        println!(
            "probing {} training and {} test features of {} values",
            train.len(),
            test.len(),
            train.dim
        );
        let report = probe(&train, &test, self.seed, device)?;
        for (l2, accuracy) in &report.held_out {
            println!("  L2 {l2:e}: held-out accuracy {:.2}%", 100.0 * accuracy);
        }
        println!(
            "L2 {:e}: train accuracy {:.2}%, test accuracy {:.2}%",
            report.l2,
            100.0 * report.train_accuracy,
            100.0 * report.test_accuracy
        );
        if let Some(path) = &self.json {
            crate::atomic::write_bytes_atomic(path, &serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(report)
    }
}

/// Per-dimension mean and standard deviation of the training features (1 where a dimension is
/// constant, as blank pixels are).
struct Standardiser {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Standardiser {
    fn fit(set: &FeatureSet) -> Self {
        let n = set.len() as f64;
        let mut mean = vec![0.0; set.dim];
        let mut square = vec![0.0; set.dim];
        for i in 0..set.len() {
            for (d, &v) in set.row(i).iter().enumerate() {
                mean[d] += v as f64 / n;
                square[d] += (v as f64) * (v as f64) / n;
            }
        }
        let std = mean
            .iter()
            .zip(&square)
            .map(|(m, s)| {
                let var = (s - m * m).max(0.0);
                if var > 1e-12 { var.sqrt() } else { 1.0 }
            })
            .collect();
        Self { mean, std }
    }
}

/// Rows of a feature set, standardised, with a column of ones for the bias, on the device.
struct Design {
    /// (n, dim + 1)
    x: Tensor<2>,
    /// (dim + 1, n)
    xt: Tensor<2>,
    /// (n, classes)
    onehot: Tensor<2>,
    labels: Vec<usize>,
    dim: usize,
    classes: usize,
}

impl Design {
    fn new(
        set: &FeatureSet,
        rows: &[usize],
        standard: &Standardiser,
        classes: usize,
        device: &Device,
    ) -> Self {
        let width = set.dim + 1;
        let mut x = Vec::with_capacity(rows.len() * width);
        let mut onehot = vec![0.0f32; rows.len() * classes];
        let mut labels = Vec::with_capacity(rows.len());
        for (r, &i) in rows.iter().enumerate() {
            for (d, &v) in set.row(i).iter().enumerate() {
                x.push(((v as f64 - standard.mean[d]) / standard.std[d]) as f32);
            }
            x.push(1.0);
            let label = set.labels[i] as usize;
            onehot[r * classes + label] = 1.0;
            labels.push(label);
        }
        let x = Tensor::<1>::from_floats(x.as_slice(), device).reshape([rows.len(), width]);
        Self {
            xt: x.clone().transpose(),
            x,
            onehot: Tensor::<1>::from_floats(onehot.as_slice(), device)
                .reshape([rows.len(), classes]),
            labels,
            dim: set.dim,
            classes,
        }
    }

    fn upload(&self, w: &[f64]) -> Tensor<2> {
        let values: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        Tensor::<1>::from_floats(values.as_slice(), &self.x.device())
            .reshape([self.dim + 1, self.classes])
    }

    /// Mean cross-entropy plus l2/2 |W|^2 (bias row excluded) and its gradient, at weights `w`
    /// ((dim + 1) * classes, row-major).
    fn loss_and_grad(&self, w: &[f64], l2: f64) -> (f64, Vec<f64>) {
        let n = self.labels.len() as f64;
        let logits = self.x.clone().matmul(self.upload(w));
        let max = logits.clone().max_dim(1);
        let shifted = logits - max;
        let exp = shifted.clone().exp();
        let sum = exp.clone().sum_dim(1);
        let log_sum = sum.clone().log();
        let picked = (shifted * self.onehot.clone()).sum_dim(1);
        let cross_entropy = (log_sum - picked).sum().into_scalar::<f32>() as f64 / n;
        let residual = exp / sum - self.onehot.clone();
        let grad = self
            .xt
            .clone()
            .matmul(residual)
            .into_data()
            .try_to_vec::<f32>();
        let grad = grad.expect("f32 gradient");
        let penalised = self.dim * self.classes;
        let mut loss = cross_entropy;
        let mut out = Vec::with_capacity(w.len());
        for (i, (&g, &wi)) in grad.iter().zip(w).enumerate() {
            let decay = if i < penalised { l2 * wi } else { 0.0 };
            out.push(g as f64 / n + decay);
            if i < penalised {
                loss += 0.5 * l2 * wi * wi;
            }
        }
        (loss, out)
    }

    /// Minimises [`Self::loss_and_grad`] with L-BFGS and a backtracking line search, from zero.
    fn fit(&self, l2: f64) -> Vec<f64> {
        let mut w = vec![0.0; (self.dim + 1) * self.classes];
        let (mut loss, mut grad) = self.loss_and_grad(&w, l2);
        let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::new();
        for _ in 0..MAX_ITERATIONS {
            let direction = two_loop(&grad, &history);
            let slope = dot(&grad, &direction);
            if slope >= 0.0 || max_abs(&grad) < 1e-6 {
                break;
            }
            let mut step = if history.is_empty() {
                1.0 / max_abs(&grad).max(1.0)
            } else {
                1.0
            };
            let mut accepted = None;
            for _ in 0..30 {
                let trial: Vec<f64> = w
                    .iter()
                    .zip(&direction)
                    .map(|(a, d)| a + step * d)
                    .collect();
                let (trial_loss, trial_grad) = self.loss_and_grad(&trial, l2);
                if trial_loss <= loss + 1e-4 * step * slope {
                    accepted = Some((trial, trial_loss, trial_grad));
                    break;
                }
                step *= 0.5;
            }
            let Some((next, next_loss, next_grad)) = accepted else {
                break;
            };
            let s: Vec<f64> = next.iter().zip(&w).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = next_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            if sy > 1e-12 {
                history.push_back((s, y, 1.0 / sy));
                if history.len() > HISTORY {
                    history.pop_front();
                }
            }
            let improvement = loss - next_loss;
            (w, loss, grad) = (next, next_loss, next_grad);
            if improvement.abs() < 1e-10 * loss.abs().max(1.0) {
                break;
            }
        }
        w
    }

    /// The share of rows whose highest-scoring class is their label.
    fn accuracy(&self, w: &[f64]) -> f64 {
        let predicted = self
            .x
            .clone()
            .matmul(self.upload(w))
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("class indices");
        let right = predicted
            .iter()
            .zip(&self.labels)
            .filter(|(p, l)| **p as usize == **l)
            .count();
        right as f64 / self.labels.len() as f64
    }
}

/// L-BFGS's two-loop recursion: the quasi-Newton descent direction -H g.
fn two_loop(grad: &[f64], history: &VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q = grad.to_vec();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, rho) in history.iter().rev() {
        let alpha = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= alpha * yi);
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = history.back() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|qi| *qi *= gamma);
    }
    for ((s, y, rho), alpha) in history.iter().zip(alphas.iter().rev()) {
        let beta = rho * dot(y, &q);
        q.iter_mut()
            .zip(s)
            .for_each(|(qi, si)| *qi += (alpha - beta) * si);
    }
    q.iter_mut().for_each(|qi| *qi = -*qi);
    q
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::collections::BTreeMap;

    /// `n` points of `classes` Gaussian clusters in `dim` dimensions, spread `spread` around
    /// well-separated centres.
    fn clusters(n: usize, dim: usize, classes: usize, spread: f32, seed: u64) -> FeatureSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let class = i % classes;
            for d in 0..dim {
                let centre = if d % classes == class { 3.0 } else { 0.0 };
                features.push(centre + spread * rng.random_range(-1.0f32..1.0));
            }
            labels.push(class as i64);
        }
        FeatureSet {
            features,
            dim,
            labels,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn the_probe_separates_a_linearly_separable_set() {
        let device = Device::flex();
        let train = clusters(300, 8, 4, 1.0, 1);
        let test = clusters(100, 8, 4, 1.0, 2);
        let report = probe(&train, &test, 0, &device).unwrap();
        assert!(report.train_accuracy > 0.99, "{report:?}");
        assert!(report.test_accuracy > 0.99, "{report:?}");
    }

    #[test]
    fn the_probe_is_at_chance_on_shuffled_labels() {
        let device = Device::flex();
        let mut train = clusters(400, 8, 4, 1.0, 3);
        let mut test = clusters(400, 8, 4, 1.0, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        train.labels.shuffle(&mut rng);
        test.labels.shuffle(&mut rng);
        let report = probe(&train, &test, 0, &device).unwrap();
        // Chance is 25%; 400 test examples put two standard errors near 4.3 points.
        assert!((report.test_accuracy - 0.25).abs() < 0.07, "{report:?}");
    }

    #[test]
    fn the_fit_reaches_the_minimum() {
        // With strong L2 the optimum is unique; the gradient there is zero.
        let device = Device::flex();
        let set = clusters(200, 5, 3, 2.0, 6);
        let rows: Vec<usize> = (0..set.len()).collect();
        let design = Design::new(&set, &rows, &Standardiser::fit(&set), 3, &device);
        let w = design.fit(1e-2);
        let (_, grad) = design.loss_and_grad(&w, 1e-2);
        assert!(max_abs(&grad) < 1e-4, "{}", max_abs(&grad));
    }

    #[test]
    fn features_of_another_width_are_refused() {
        let device = Device::flex();
        let train = clusters(40, 8, 4, 1.0, 1);
        let test = clusters(10, 6, 4, 1.0, 2);
        let message = probe(&train, &test, 0, &device).unwrap_err().to_string();
        assert!(
            message.contains("6 values") && message.contains("8"),
            "{message}"
        );
    }
}
