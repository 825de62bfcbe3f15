//! How often samples of the built-in MNIST model show the digit they were asked for.
//!
//! Each sample is read by a 1-nearest-neighbour classifier over the 60,000 MNIST training digits
//! (pixel distance, digits centred like the model's): a reader that knows nothing about ACDiT.
//! The same reader is scored on real test digits first, so its own error is on record.
//!
//! `cargo run --release --example digit_accuracy -- [WEIGHTS] [PER_CLASS] [GUIDANCE]`
//! (defaults: weights/mnist/ema.safetensors, 100, the CLI's guidance). Needs `acdit data fetch
//! mnist` first.

use std::path::Path;

use acdit::checkpoint::load::{WeightsKind, WeightsSource};
use acdit::data::ImageDataset;
use acdit::data::idx::{DatasetKind, Split, load_mnist_dir};
use acdit::diffusion::blockwise::{DEFAULT_GUIDANCE, Generation, Quiet};
use acdit::sampling::{load_model, sample_images};
use anyhow::{Context, Result, bail};
use burn::prelude::*;

/// Test digits the reader is scored on (its accuracy settles well before all 10,000).
const READER_CHECK: usize = 2000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let weights = args
        .first()
        .map_or("weights/mnist/ema.safetensors", String::as_str);
    let per_class: usize = args.get(1).map_or(Ok(100), |a| a.parse())?;
    let guidance: f64 = args.get(2).map_or(Ok(DEFAULT_GUIDANCE), |a| a.parse())?;

    let device = Device::flex();
    let source = WeightsSource::File(Path::new(weights));
    let model = load_model(source, WeightsKind::Ema, None, &device)?.model;
    let config = model.config().clone();
    if config.num_classes != 10 || config.in_channels != 1 {
        bail!("{weights} is not a one-channel, ten-class model");
    }
    let size = config.img_hw;
    let data = Path::new("data/mnist");
    let train = load_mnist_dir(data, DatasetKind::Mnist, Split::Train)
        .context("run `acdit data fetch mnist` first")?
        .centred(size);
    let test = load_mnist_dir(data, DatasetKind::Mnist, Split::Test)?.centred(size);
    let reader = NearestNeighbour::new(&train, &device);

    let real = test.subset(0..READER_CHECK);
    let real_labels: Vec<i64> = real.labels.iter().map(|&l| l as i64).collect();
    let read = reader.classify(&real.images, &device);
    println!(
        "reader on {READER_CHECK} real test digits: {:.1}% correct",
        100.0 * agreement(&read, &real_labels)
    );

    let labels: Vec<i64> = (0..10).flat_map(|c| vec![c; per_class]).collect();
    let generation = Generation {
        cfg: guidance,
        ..Generation::default()
    };
    let pixels = sample_images(&model, &labels, &generation, 0, 50, &mut Quiet);
    let pixels: Vec<f32> = pixels.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let read = reader.classify(&pixels, &device);
    println!(
        "{} samples ({per_class} per digit, 25 DPM-Solver++ steps, guidance {guidance}): {:.1}% read as their digit",
        labels.len(),
        100.0 * agreement(&read, &labels)
    );
    for digit in 0..10 {
        let rows = digit * per_class..(digit + 1) * per_class;
        let share = agreement(&read[rows.clone()], &labels[rows]);
        println!("  {digit}: {:.0}%", 100.0 * share);
    }
    Ok(())
}

fn agreement(read: &[i64], labels: &[i64]) -> f64 {
    let same = read.iter().zip(labels).filter(|(a, b)| a == b).count();
    same as f64 / labels.len() as f64
}

/// The label of the closest training image in squared pixel distance.
struct NearestNeighbour {
    /// (pixels, n)
    images_t: Tensor<2>,
    /// |image|^2, (1, n)
    norms: Tensor<2>,
    labels: Vec<i64>,
    pixels: usize,
}

impl NearestNeighbour {
    fn new(train: &ImageDataset, device: &Device) -> Self {
        let pixels = train.image_len();
        let images =
            Tensor::<1>::from_floats(train.images.as_slice(), device).reshape([train.n, pixels]);
        Self {
            norms: images.clone().square().sum_dim(1).reshape([1, train.n]),
            images_t: images.transpose(),
            labels: train.labels.iter().map(|&l| l as i64).collect(),
            pixels,
        }
    }

    /// images: (n, pixels) flattened -> a label each.
    fn classify(&self, images: &[f32], device: &Device) -> Vec<i64> {
        images
            .chunks(500 * self.pixels)
            .flat_map(|chunk| {
                let queries = Tensor::<1>::from_floats(chunk, device)
                    .reshape([chunk.len() / self.pixels, self.pixels]);
                // |q - t|^2 - |q|^2 = |t|^2 - 2 q.t: the same order for each query.
                let distances = self.norms.clone() - queries.matmul(self.images_t.clone()) * 2.0;
                let nearest = distances.argmin(1).into_data();
                let nearest: Vec<i64> = nearest.convert::<i64>().try_to_vec().expect("indices");
                nearest
                    .into_iter()
                    .map(|i| self.labels[i as usize])
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
