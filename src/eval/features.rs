//! Images to feature vectors in the two spaces an evaluation uses, batch by batch with a
//! progress bar: the Inception pool (2048) and the digit classifier's hidden layer (128), with
//! the classifier's reading of each image.

use anyhow::{Result, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

use super::chunks::FeatureChunks;
use super::classifier::{self, DigitClassifier};
use super::images::ImageSet;
use super::inception::{FEATURES, INPUT_SIDE, InceptionV3};
use super::resize::preprocess;

/// Images through Inception at once.
const INCEPTION_BATCH: usize = 16;
const CLASSIFIER_BATCH: usize = 500;

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} images [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("valid template"),
    );
    bar
}

/// Inception features (n, 2048) of `set`, read from and saved to `chunks` chunk by chunk, so
/// that a run cut off resumes.
pub fn inception_features(
    network: &InceptionV3,
    set: &ImageSet,
    device: &Device,
    what: &str,
    chunks: &FeatureChunks,
) -> Result<Vec<f32>> {
    let bar = bar(set.len(), &format!("Inception features of {what}"));
    let compute = |images: &ImageSet| -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(images.len() * FEATURES);
        for start in (0..images.len()).step_by(INCEPTION_BATCH) {
            let batch = images.slice(start..(start + INCEPTION_BATCH).min(images.len()));
            let n = batch.len();
            let input = preprocess(&batch.pixels, batch.shape);
            let x = Tensor::<1>::from_floats(input.as_slice(), device)
                .reshape([n, 3, INPUT_SIDE, INPUT_SIDE]);
            let features = network.forward(x).into_data().convert::<f32>();
            out.extend(features.try_to_vec::<f32>().expect("f32 features"));
            bar.inc(n as u64);
        }
        Ok(out)
    };
    let out = chunks.features(set, &network.feature_space, FEATURES, &bar, compute)?;
    bar.finish_and_clear();
    Ok(out)
}

/// The classifier's features (n, 128) of 28x28 grey `set`, and the class it reads in each.
pub fn classifier_features(
    model: &DigitClassifier,
    set: &ImageSet,
    device: &Device,
) -> Result<(Vec<f32>, Vec<i64>)> {
    let [_, h, w, c] = set.shape;
    if (h, w, c) != (classifier::SIDE, classifier::SIDE, 1) {
        bail!("the digit classifier reads 28x28 grey images, not {w}x{h}x{c}");
    }
    let mut features = Vec::with_capacity(set.len() * classifier::FEATURES);
    let mut classes = Vec::with_capacity(set.len());
    for start in (0..set.len()).step_by(CLASSIFIER_BATCH) {
        let chunk = set.slice(start..(start + CLASSIFIER_BATCH).min(set.len()));
        let values: Vec<f32> = chunk
            .pixels
            .iter()
            .map(|&b| crate::data::scale(b))
            .collect();
        let x = Tensor::<1>::from_floats(values.as_slice(), device).reshape([chunk.len(), 1, h, w]);
        let hidden = model.features(x);
        let read = model
            .head
            .forward(hidden.clone())
            .argmax(1)
            .into_data()
            .convert::<i64>();
        classes.extend(read.try_to_vec::<i64>().expect("i64 classes"));
        features.extend(
            hidden
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32"),
        );
    }
    Ok((features, classes))
}
