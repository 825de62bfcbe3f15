//! A small CNN digit classifier of the project's own (`acdit train-classifier`): the feature
//! space of a cheap FID for MNIST-like data and the judge of class-conditional samples. Two
//! 3x3 convolutions (32, 64) with max pooling, a 128-wide hidden layer whose activations are the
//! features, and a linear head; trained on the MNIST training digits with AdamW.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::module_io::{Naming, export_module, load_module};
use crate::checkpoint::tensors::{SafetensorsFile, write_safetensors_atomic};
use crate::data::ImageDataset;
use crate::train::epoch_order;
use crate::train::lr::{LrSchedule, learning_rate};
use crate::train::optim::{AdamW, AdamWSettings};

/// The side of the digits it reads.
pub const SIDE: usize = 28;
/// Width of the features.
pub const FEATURES: usize = 128;
const FORMAT: &str = "acdit-digit-classifier-v1";

/// The committed classifier, trained by `acdit train-classifier` on the MNIST training set.
pub const BUILT_IN: &[u8] = include_bytes!("../../weights/mnist-classifier/classifier.safetensors");

fn plain_name(path: &[String]) -> String {
    path.join(".")
}

fn linear_weight(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with(".weight")
}

/// PyTorch's layout: linear weights (out, in).
const NAMING: Naming = Naming {
    name: plain_name,
    transposed: linear_weight,
};

#[derive(Module, Debug)]
pub struct DigitClassifier {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc: Linear,
    pub head: Linear,
}

impl DigitClassifier {
    pub fn new(device: &Device) -> Self {
        let conv = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(1, 32),
            conv2: conv(32, 64),
            fc: LinearConfig::new(64 * 7 * 7, FEATURES).init(device),
            head: LinearConfig::new(FEATURES, 10).init(device),
        }
    }

    /// Digits (n, 1, 28, 28) in [-1, 1] -> the hidden layer (n, 128).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let pool = |x| max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
        let x = pool(relu(self.conv1.forward(x)));
        let x = pool(relu(self.conv2.forward(x)));
        let [n, c, h, w] = x.dims();
        relu(self.fc.forward(x.reshape([n, c * h * w])))
    }

    /// Class logits (n, 10).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }

    /// The classifier of `path`, or the built-in one.
    pub fn load(path: Option<&Path>, device: &Device) -> Result<Self> {
        let file = match path {
            Some(path) => SafetensorsFile::open(path)?,
            None => {
                SafetensorsFile::from_bytes(Path::new("<built-in classifier>"), BUILT_IN.to_vec())?
            }
        };
        let label = path.map_or("the built-in classifier".to_string(), |p| {
            p.display().to_string()
        });
        if file.metadata().get("format").map(String::as_str) != Some(FORMAT) {
            bail!("{label} is not a digit classifier of this program (no `format: {FORMAT}`)");
        }
        let tensors = file
            .names()
            .into_iter()
            .map(|name| Ok((name.clone(), file.f32(&name)?)))
            .collect::<Result<_>>()?;
        load_module(DigitClassifier::new(device), &tensors, &NAMING)
            .with_context(|| format!("loading {label}"))
    }

    /// Share of `set` classified as labelled, `batch` at a time.
    pub fn accuracy(&self, set: &ImageDataset, batch: usize) -> f64 {
        let device = self.conv1.weight.device();
        let mut correct = 0usize;
        for start in (0..set.n).step_by(batch) {
            let rows = start..(start + batch).min(set.n);
            let pixels = &set.images[rows.start * set.image_len()..rows.end * set.image_len()];
            let x = Tensor::<1>::from_floats(pixels, &device).reshape([rows.len(), 1, SIDE, SIDE]);
            let predicted = self.forward(x).argmax(1).into_data().convert::<i64>();
            let predicted = predicted.try_to_vec::<i64>().expect("i64 classes");
            correct += predicted
                .iter()
                .zip(&set.labels[rows])
                .filter(|(p, l)| **p == i64::from(**l))
                .count();
        }
        correct as f64 / set.n as f64
    }
}

/// How `acdit train-classifier` trains.
#[derive(Debug, Clone)]
pub struct ClassifierTraining {
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 64,
            lr: 2e-3,
            seed: 0,
        }
    }
}

/// Trains on `train` (28x28 digits) and writes the weights with the test accuracy in the
/// metadata. Returns the test accuracy.
pub fn train_classifier(
    settings: &ClassifierTraining,
    train: &ImageDataset,
    test: &ImageDataset,
    out: &Path,
    device: &Device,
) -> Result<f64> {
    for (name, set) in [("training", train), ("test", test)] {
        if (set.channels, set.height, set.width) != (1, SIDE, SIDE) {
            bail!(
                "the {name} digits are {}x{}x{}, expected 1x28x28",
                set.channels,
                set.height,
                set.width
            );
        }
    }
    let autodiff = device.clone().autodiff();
    autodiff.seed(settings.seed);
    let mut model = DigitClassifier::new(&autodiff);
    let mut optimizer = AdamW::new(AdamWSettings {
        weight_decay: 1e-4,
        ..AdamWSettings::default()
    });
    let steps_per_epoch = train.n / settings.batch_size;
    let total = settings.epochs * steps_per_epoch as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("training the classifier {bar:30} {pos}/{len} loss {msg} [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let mut step = 0u64;
    for epoch in 0..settings.epochs {
        let order = epoch_order(settings.seed, epoch, train.n);
        for batch in order.chunks_exact(settings.batch_size) {
            let mut pixels = Vec::with_capacity(batch.len() * train.image_len());
            let mut onehot = vec![0.0f32; batch.len() * 10];
            for (row, &i) in batch.iter().enumerate() {
                pixels.extend_from_slice(train.image(i));
                onehot[row * 10 + train.labels[i] as usize] = 1.0;
            }
            let x = Tensor::<1>::from_floats(pixels.as_slice(), &autodiff).reshape([
                batch.len(),
                1,
                SIDE,
                SIDE,
            ]);
            let onehot =
                Tensor::<1>::from_floats(onehot.as_slice(), &autodiff).reshape([batch.len(), 10]);
            let loss = -(log_softmax(model.forward(x), 1) * onehot)
                .sum_dim(1)
                .mean();
            let value = loss.clone().into_scalar::<f32>();
            let lr = learning_rate(LrSchedule::Cosine, settings.lr, step, total, 100, 0.0);
            let grads = loss.backward();
            model = optimizer
                .step_if_finite_scaled(model, &grads, lr, Some(1.0), |_| 1.0)
                .0;
            step += 1;
            bar.inc(1);
            bar.set_message(format!("{value:.4}"));
        }
    }
    bar.finish_and_clear();
    let model = model.valid();
    let accuracy = model.accuracy(test, 500);
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("test_accuracy".to_string(), format!("{accuracy:.4}")),
        ("epochs".to_string(), settings.epochs.to_string()),
        ("seed".to_string(), settings.seed.to_string()),
    ]);
    write_safetensors_atomic(out, &export_module(&model, &NAMING), Some(metadata))?;
    Ok(accuracy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::{Split, embedded_mnist};

    #[test]
    fn the_built_in_classifier_reads_the_test_digits() {
        let device = Device::flex();
        let model = DigitClassifier::load(None, &device).unwrap();
        let test = embedded_mnist(Split::Test);
        let accuracy = model.accuracy(&test, 500);
        assert!(accuracy > 0.98, "accuracy {accuracy}");
        let file = SafetensorsFile::from_bytes(Path::new("built-in"), BUILT_IN.to_vec()).unwrap();
        let stated: f64 = file.metadata()["test_accuracy"].parse().unwrap();
        assert!(stated > 0.99, "{stated}");
    }

    #[test]
    fn a_file_of_another_kind_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("other.safetensors");
        let tensors = crate::checkpoint::tensors::NamedTensors::new();
        write_safetensors_atomic(&path, &tensors, None).unwrap();
        let message = DigitClassifier::load(Some(&path), &Device::flex())
            .err()
            .unwrap()
            .to_string();
        assert!(message.contains("not a digit classifier"), "{message}");
    }
}
