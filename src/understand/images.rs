//! Labelled images for the encoder, brought to the model's input as training brought them.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::ModelConfig;
use crate::data::idx::{DatasetKind, Split, load_mnist_dir, mnist_files, mnist_or_built_in};
use crate::data::image_folder::load_image_folder;
use crate::data::{ImageDataset, scale};

/// A split brought to the model's input.
pub struct ModelSplit {
    pub images: ImageDataset,
    /// What was read, for the user.
    pub described: String,
    /// The side of the images as stored, before centring (MNIST's 28).
    pub stored_size: usize,
}

/// `split` of `data` (IDX files in the MNIST layout, or a folder of class subfolders), else of
/// MNIST (fetched, or the subset built into the binary), centred to the model's frame.
pub fn load_split(data: Option<&Path>, split: Split, config: &ModelConfig) -> Result<ModelSplit> {
    let folder_size = Some(config.img_hw as u32);
    let (dataset, described) = load_raw_split(data, split, folder_size, config.in_channels)?;
    Ok(ModelSplit {
        stored_size: dataset.height,
        images: fit_to_model(dataset, config)?,
        described,
    })
}

/// As [`load_split`], but the images as stored (`folder_size` scales and crops images of a class
/// folder; None keeps them, and they must share one size).
pub fn load_raw_split(
    data: Option<&Path>,
    split: Split,
    folder_size: Option<u32>,
    channels: usize,
) -> Result<(ImageDataset, String)> {
    let (dataset, source) = match data {
        Some(path) if mnist_files(path, split).is_ok() => (
            load_mnist_dir(path, DatasetKind::Mnist, split)?,
            path.display().to_string(),
        ),
        Some(path) => {
            let images = load_image_folder(path, folder_size, channels)
                .with_context(|| format!("reading images from {}", path.display()))?;
            (images, path.display().to_string())
        }
        None => {
            let (dataset, full) = mnist_or_built_in(split)?;
            let source = if full {
                "MNIST (data/mnist)"
            } else {
                "the built-in MNIST subset (`acdit data fetch mnist` gets the full set)"
            };
            (dataset, source.to_string())
        }
    };
    let described = format!(
        "{} {} images of {}x{} from {source}",
        dataset.n,
        split_name(split),
        dataset.height,
        dataset.width
    );
    Ok((dataset, described))
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "training",
        Split::Test => "test",
    }
}

/// The images centred to the model's frame as training centres them (MNIST's 28x28 cropped to
/// 24x24, Fashion-MNIST padded to 32x32); an error when the channels differ.
pub fn fit_to_model(dataset: ImageDataset, config: &ModelConfig) -> Result<ImageDataset> {
    dataset.validate()?;
    if dataset.channels != config.in_channels {
        bail!(
            "the images have {} channels but the model takes {}",
            dataset.channels,
            config.in_channels
        );
    }
    let size = config.img_hw;
    Ok(if (dataset.height, dataset.width) == (size, size) {
        dataset
    } else {
        dataset.centred(size)
    })
}

/// Reads image files for classification: each must be the model's size or `data_size` (the
/// size of the images it was trained on, centred to the model's frame as in training).
/// -> (n, channels, size, size) values in [-1, 1].
pub fn read_images(paths: &[&Path], config: &ModelConfig, data_size: usize) -> Result<Vec<f32>> {
    let size = config.img_hw;
    let mut pixels = Vec::new();
    for path in paths {
        let image = image::open(path).with_context(|| format!("reading {}", path.display()))?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        if (w, h) != (size, size) && (w, h) != (data_size, data_size) {
            let sizes = if data_size == size {
                format!("{size}x{size}")
            } else {
                format!("{size}x{size} or {data_size}x{data_size}")
            };
            bail!(
                "{}: the image is {w}x{h}, but the model takes {sizes}",
                path.display()
            );
        }
        let values: Vec<u8> = match config.in_channels {
            1 => image.to_luma8().into_raw(),
            _ => planar_rgb(&image.to_rgb8()),
        };
        let one = ImageDataset {
            images: values.into_iter().map(scale).collect(),
            labels: vec![0],
            n: 1,
            channels: config.in_channels,
            height: h,
            width: w,
            num_classes: 1,
            class_names: vec![String::new()],
        };
        pixels.extend(fit_to_model(one, config)?.images);
    }
    Ok(pixels)
}

/// Interleaved RGB bytes as three planes (channels first), as the model reads them.
fn planar_rgb(image: &image::RgbImage) -> Vec<u8> {
    (0..3)
        .flat_map(|c| image.pixels().map(move |p| p.0[c]))
        .collect()
}
