//! `acdit eval`: generated samples against a reference, in the field's numbers, beside the
//! floor (the real test set against the same reference). The reference side's statistics (and
//! the subset of its features precision and recall need) are cached in an `.npz`, so a second
//! evaluation reads them instead of running Inception over the real images again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::Serialize;

use super::chunks::FeatureChunks;
use super::classifier::{self, DigitClassifier};
use super::features::{classifier_features, inception_features};
use super::frechet::{FeatureStats, frechet_distance};
use super::images::ImageSet;
use super::inception::{FEATURES, InceptionV3};
use super::manifold::{Points, precision_recall};
use crate::output::{NpyArray, NumpyFile, read_numpy, write_npz_arrays};

/// Real points kept for precision and recall (the generated side uses as many as it has, up to
/// this): the k-NN balls are compared at equal counts.
pub const MANIFOLD_POINTS: usize = 10_000;

/// One feature space's figures for one set against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceScores {
    pub fid: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// The figures for one set of images against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct SetScores {
    pub images: usize,
    /// None for a classifier-only evaluation.
    pub inception: Option<SpaceScores>,
    /// For 28x28 grey digits: the same in the digit classifier's feature space.
    pub classifier: Option<SpaceScores>,
    /// For class-conditional samples: the share the classifier reads as the asked class.
    pub conditional_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub reference: String,
    pub reference_images: usize,
    pub samples: SetScores,
    /// The real test images against the same reference.
    pub floor: Option<SetScores>,
}

/// A feature space's side of the reference: statistics and points for the manifolds.
struct SpaceReference {
    stats: FeatureStats,
    points: Option<Vec<f32>>,
}

/// What the reference is, with its cache.
pub struct ReferenceSide {
    inception: Option<SpaceReference>,
    classifier: Option<SpaceReference>,
    count: usize,
}

impl ReferenceSide {
    /// The reference images' features in each space, as statistics and a seeded subset.
    pub fn compute(set: &ImageSet, judges: &Judges, device: &Device) -> Result<Self> {
        let inception = judges
            .inception
            .as_ref()
            .map(|network| {
                inception_features(network, set, device, "the reference", &judges.chunks)
            })
            .transpose()?;
        let classifier = match (&judges.classifier, is_digit(set)) {
            (Some(model), true) => Some(classifier_features(model, set, device)?.0),
            _ => None,
        };
        let keep = subset(set.len(), MANIFOLD_POINTS);
        let space = |features: &[f32], dim: usize| -> Result<SpaceReference> {
            Ok(SpaceReference {
                stats: FeatureStats::of(features, dim)?,
                points: Some(rows(features, dim, &keep)),
            })
        };
        Ok(Self {
            inception: inception
                .as_deref()
                .map(|f| space(f, FEATURES))
                .transpose()?,
            classifier: classifier
                .as_deref()
                .map(|f| space(f, classifier::FEATURES))
                .transpose()?,
            count: set.len(),
        })
    }

    /// Writes `mu`, `sigma` (pytorch-fid's names, Inception space), `count`, `points`, and the
    /// classifier space's `classifier_mu`, `classifier_sigma`, `classifier_points`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut arrays = Vec::new();
        for (prefix, space) in [
            ("", self.inception.as_ref()),
            ("classifier_", self.classifier.as_ref()),
        ] {
            let Some(space) = space else { continue };
            let d = space.stats.dim();
            arrays.push(NpyArray::f64(
                &format!("{prefix}mu"),
                &[d],
                space.stats.mu.as_slice(),
            ));
            arrays.push(NpyArray::f64(
                &format!("{prefix}sigma"),
                &[d, d],
                space.stats.sigma.as_slice(),
            ));
            if let Some(points) = &space.points {
                let values: Vec<f64> = points.iter().map(|&v| f64::from(v)).collect();
                arrays.push(NpyArray::f64(
                    &format!("{prefix}points"),
                    &[points.len() / d, d],
                    &values,
                ));
            }
        }
        arrays.push(NpyArray::i64("count", &[self.count as i64]));
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        write_npz_arrays(path, &arrays).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a statistics file: ours, or pytorch-fid's (`mu`, `sigma` only: no precision and
    /// recall). The Inception statistics must be 2048 wide.
    pub fn load(path: &Path) -> Result<Self> {
        let NumpyFile::Npz(arrays) = read_numpy(path)? else {
            bail!(
                "{}: a statistics file is an .npz with `mu` and `sigma`",
                path.display()
            );
        };
        let array = |name: &str| arrays.iter().find(|a| a.name == name);
        if array("mu").is_none() && array("classifier_mu").is_none() {
            bail!("{}: no `mu` and `sigma` statistics", path.display());
        }
        let points = |name: &str, dim: usize| -> Result<Option<Vec<f32>>> {
            let Some(a) = array(name) else {
                return Ok(None);
            };
            if a.shape.len() != 2 || a.shape[1] != dim {
                bail!(
                    "{}: `{name}` has shape {:?}, expected (n, {dim})",
                    path.display(),
                    a.shape
                );
            }
            let values = a
                .to_f64()
                .with_context(|| format!("{}: `{name}` is not float", path.display()))?;
            Ok(Some(values.iter().map(|&v| v as f32).collect()))
        };
        let space = |prefix: &str| -> Result<Option<SpaceReference>> {
            if array(&format!("{prefix}mu")).is_none() {
                return Ok(None);
            }
            let stats = FeatureStats::from_arrays(&arrays, prefix, path)?;
            let points = points(&format!("{prefix}points"), stats.dim())?;
            Ok(Some(SpaceReference { stats, points }))
        };
        let (inception, classifier) = (space("")?, space("classifier_")?);
        let width = inception.as_ref().map(|s| s.stats.dim());
        if let Some(width) = width.filter(|&w| w != FEATURES) {
            bail!(
                "{}: statistics of width {width}, but Inception features are {FEATURES} wide",
                path.display()
            );
        }
        // `count` is one array for both spaces.
        let count = inception
            .as_ref()
            .or(classifier.as_ref())
            .map_or(0, |s| s.stats.count);
        Ok(Self {
            count,
            inception,
            classifier,
        })
    }
}

/// The networks that judge.
pub struct Judges {
    /// None for a classifier-only evaluation.
    pub inception: Option<InceptionV3>,
    /// For MNIST-like data.
    pub classifier: Option<DigitClassifier>,
    /// Where Inception features are kept chunk by chunk until the evaluation ends.
    pub chunks: FeatureChunks,
}

fn is_digit(set: &ImageSet) -> bool {
    let [_, h, w, c] = set.shape;
    (h, w, c) == (classifier::SIDE, classifier::SIDE, 1)
}

/// A seeded choice of at most `max` of `n` indices, in order.
fn subset(n: usize, max: usize) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::index::sample;
    if n <= max {
        return (0..n).collect();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut picked = sample(&mut rng, n, max).into_vec();
    picked.sort_unstable();
    picked
}

fn rows(values: &[f32], dim: usize, keep: &[usize]) -> Vec<f32> {
    keep.iter()
        .flat_map(|&i| values[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

fn space_scores(features: &[f32], dim: usize, reference: &SpaceReference) -> Result<SpaceScores> {
    let stats = FeatureStats::of(features, dim)?;
    let fid = frechet_distance(&stats, &reference.stats)?;
    let (precision, recall) = match &reference.points {
        Some(points) => {
            let keep = subset(features.len() / dim, MANIFOLD_POINTS);
            let generated = rows(features, dim, &keep);
            let (p, r) = precision_recall(
                &Points {
                    values: points,
                    dim,
                },
                &Points {
                    values: &generated,
                    dim,
                },
            )?;
            (Some(p), Some(r))
        }
        None => (None, None),
    };
    Ok(SpaceScores {
        fid,
        precision,
        recall,
    })
}

/// Scores `set` against `reference`; `what` names it on the progress bar.
pub fn score(
    set: &ImageSet,
    reference: &ReferenceSide,
    judges: &Judges,
    device: &Device,
    what: &str,
) -> Result<SetScores> {
    let inception = match (&judges.inception, &reference.inception) {
        (Some(network), Some(space)) => {
            let features = inception_features(network, set, device, what, &judges.chunks)?;
            Some(space_scores(&features, FEATURES, space)?)
        }
        (Some(_), None) => bail!("the reference statistics have no Inception part"),
        (None, _) => None,
    };
    let (classifier, conditional_accuracy) =
        match (&judges.classifier, &reference.classifier, is_digit(set)) {
            (Some(model), Some(space), true) => {
                let (features, read) = classifier_features(model, set, device)?;
                let accuracy = set.labels.as_ref().map(|labels| {
                    let agree = labels.iter().zip(&read).filter(|(a, b)| a == b).count();
                    agree as f64 / labels.len() as f64
                });
                (
                    Some(space_scores(&features, classifier::FEATURES, space)?),
                    accuracy,
                )
            }
            _ => (None, None),
        };
    Ok(SetScores {
        images: set.len(),
        inception,
        classifier,
        conditional_accuracy,
    })
}

/// The reference side: read from `cache` when it exists, else computed from `images()` and
/// written there.
pub fn reference_side(
    cache: Option<&Path>,
    images: impl FnOnce() -> Result<ImageSet>,
    judges: &Judges,
    device: &Device,
) -> Result<ReferenceSide> {
    if let Some(path) = cache.filter(|p| p.is_file()) {
        eprintln!("reference statistics from {}", path.display());
        return ReferenceSide::load(path);
    }
    let side = ReferenceSide::compute(&images()?, judges, device)?;
    if let Some(path) = cache {
        side.save(path)?;
        eprintln!("reference statistics cached in {}", path.display());
    }
    Ok(side)
}

/// Where the statistics of a reference are cached by default: beside the data.
pub fn default_cache(name: &str) -> PathBuf {
    Path::new("data")
        .join("fid-stats")
        .join(format!("{name}.npz"))
}

/// Where `acdit eval` keeps Inception features while it runs, so that a run cut off resumes.
pub fn default_chunks() -> PathBuf {
    Path::new("data").join("fid-stats").join("chunks")
}

impl EvalReport {
    /// The report as a table a person reads.
    pub fn text(&self) -> String {
        let mut lines = vec![format!(
            "reference: {} ({} images)",
            self.reference, self.reference_images
        )];
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let mut row = |name: &str, set: &SetScores| {
            let classifier = set.classifier.as_ref();
            let inception = set.inception.as_ref();
            lines.push(format!(
                "{name:<8} {:>6} images | FID {}  precision {}  recall {} | classifier FID {}  precision {}  recall {} | conditional accuracy {}",
                set.images,
                inception.map_or("-".into(), |s| format!("{:.3}", s.fid)),
                fmt(inception.and_then(|s| s.precision)),
                fmt(inception.and_then(|s| s.recall)),
                classifier.map_or("-".into(), |c| format!("{:.3}", c.fid)),
                fmt(classifier.and_then(|c| c.precision)),
                fmt(classifier.and_then(|c| c.recall)),
                set.conditional_accuracy
                    .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
            ));
        };
        row("samples", &self.samples);
        if let Some(floor) = &self.floor {
            row("floor", floor);
        }
        lines.join("\n")
    }
}

/// Where the generated images come from.
pub enum Samples {
    /// An `.npz` (`arr_0` NHWC uint8, optional `labels`) or a folder of PNGs.
    File(PathBuf),
    /// `count` images from a model, the classes in turn.
    Generate {
        model: Box<crate::sampling::SamplingModel>,
        count: usize,
        generation: crate::diffusion::blockwise::Generation,
        seed: u64,
        batch: usize,
    },
}

/// What the samples are compared with.
pub enum Reference {
    /// The training split of a dataset (IDX files in `dir`, else the MNIST subset built in),
    /// with its test split as the floor.
    Dataset {
        kind: crate::data::idx::DatasetKind,
        dir: PathBuf,
    },
    /// A statistics file: ours, or pytorch-fid's `mu` and `sigma` (FID only, no floor).
    Stats(PathBuf),
}

/// What `acdit eval` was asked for.
pub struct EvalJob {
    pub samples: Samples,
    pub reference: Reference,
    pub floor: bool,
    /// `default_1.pt` from `acdit data fetch inception`; None scores in the classifier's space
    /// alone (seconds, not an hour: a check during training).
    pub inception: Option<PathBuf>,
    /// The digit classifier; None for the built-in one.
    pub classifier: Option<PathBuf>,
    /// Where the reference statistics are cached (default under data/fid-stats/).
    pub cache: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

impl EvalJob {
    pub fn run(&self, device: &Device) -> Result<EvalReport> {
        use crate::data::idx::{Split, load_mnist_dir, mnist_files};
        let inception = self
            .inception
            .as_ref()
            .map(|path| {
                InceptionV3::load(path, device).with_context(|| {
                    format!(
                        "{}: fetch it with `acdit data fetch inception`",
                        path.display()
                    )
                })
            })
            .transpose()?;
        let judges = Judges {
            inception,
            classifier: Some(DigitClassifier::load(self.classifier.as_deref(), device)?),
            chunks: FeatureChunks::new(default_chunks()),
        };
        let mut samples = self.samples()?;
        let split = |kind, dir: &Path, split| -> Result<ImageSet> {
            let set = if mnist_files(dir, split).is_ok() {
                load_mnist_dir(dir, kind, split)?
            } else {
                eprintln!(
                    "{} not found: the built-in MNIST subset stands in (`acdit data fetch mnist` gets all of it)",
                    dir.display()
                );
                crate::data::idx::embedded_mnist(split)
            };
            Ok(ImageSet::from_dataset(&set))
        };
        let (reference, name, floor) = match &self.reference {
            Reference::Dataset { kind, dir } => {
                use crate::choice::Choice;
                let spaces = if self.inception.is_some() {
                    ""
                } else {
                    "-classifier"
                };
                let name = format!("{}-train{spaces}", kind.name());
                let cache = self.cache.clone().unwrap_or_else(|| default_cache(&name));
                let side = reference_side(
                    Some(&cache),
                    || split(*kind, dir, Split::Train),
                    &judges,
                    device,
                )?;
                let test = split(*kind, dir, Split::Test)?;
                samples = samples.padded_to(test.shape[1])?;
                (
                    side,
                    format!("{} training set", kind.name()),
                    self.floor.then_some(test),
                )
            }
            Reference::Stats(path) => {
                (ReferenceSide::load(path)?, path.display().to_string(), None)
            }
        };
        let scores = score(&samples, &reference, &judges, device, "the samples")?;
        let floor = floor
            .map(|test| score(&test, &reference, &judges, device, "the real test set"))
            .transpose()?;
        let report = EvalReport {
            reference: name,
            reference_images: reference.count,
            samples: scores,
            floor,
        };
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(&report)?;
            crate::atomic::write_bytes_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        judges.chunks.remove()?;
        Ok(report)
    }

    fn samples(&self) -> Result<ImageSet> {
        match &self.samples {
            Samples::File(path) => ImageSet::read(path),
            Samples::Generate {
                model,
                count,
                generation,
                seed,
                batch,
            } => generate(model, *count, generation, *seed, *batch),
        }
    }
}

/// `count` samples of `model`, the classes in turn, as bytes.
pub(crate) fn generate(
    sampling: &crate::sampling::SamplingModel,
    count: usize,
    generation: &crate::diffusion::blockwise::Generation,
    seed: u64,
    batch: usize,
) -> Result<ImageSet> {
    let config = sampling.model.config();
    if config.temporal_len > 1 {
        bail!("acdit eval scores image models; this one makes video");
    }
    if count < 2 {
        bail!("--count must be at least 2");
    }
    let classes = config.num_classes as i64;
    let labels: Vec<i64> = (0..count as i64).map(|i| i % classes).collect();
    let bar = indicatif::ProgressBar::new(count.div_ceil(batch) as u64);
    bar.set_message("sampling");
    let mut progress = CountBlocks {
        bar: bar.clone(),
        blocks: 0,
        per_batch: config.ar_len,
    };
    let pixels = crate::sampling::sample_images(
        &sampling.model,
        &labels,
        generation,
        seed,
        batch,
        &mut progress,
    );
    bar.finish_and_clear();
    let (pixels, [c, h, w]) = sampling.to_pixels(pixels, count, 1)?;
    let batch = crate::output::ImageBatch::new(&pixels, [count, c, h, w])?;
    Ok(ImageSet {
        pixels: batch.to_u8_nhwc(),
        shape: [count, h, w, c],
        labels: Some(labels),
    })
}

/// Advances a bar by one batch when its last block is done.
struct CountBlocks {
    bar: indicatif::ProgressBar,
    blocks: usize,
    per_batch: usize,
}

impl crate::diffusion::blockwise::Observer for CountBlocks {
    fn block_done(&mut self, _block: usize) {
        self.blocks += 1;
        if self.blocks.is_multiple_of(self.per_batch) {
            self.bar.inc(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statistics_file_of_the_wrong_width_is_named() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("stats.npz");
        let features: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        FeatureStats::of(&features, 4).unwrap().save(&path).unwrap();
        let message = ReferenceSide::load(&path).err().unwrap().to_string();
        assert!(
            message.contains("width 4") && message.contains("2048"),
            "{message}"
        );
    }

    #[test]
    fn our_statistics_round_trip_with_their_points() {
        let features: Vec<f32> = (0..FEATURES * 6).map(|i| ((i * 31) % 17) as f32).collect();
        let small: Vec<f32> = (0..classifier::FEATURES * 6)
            .map(|i| ((i * 7) % 5) as f32)
            .collect();
        let side = ReferenceSide {
            inception: Some(SpaceReference {
                stats: FeatureStats::of(&features, FEATURES).unwrap(),
                points: Some(features.clone()),
            }),
            classifier: Some(SpaceReference {
                stats: FeatureStats::of(&small, classifier::FEATURES).unwrap(),
                points: Some(small.clone()),
            }),
            count: 6,
        };
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("cache").join("stats.npz");
        side.save(&path).unwrap();
        let back = ReferenceSide::load(&path).unwrap();
        assert_eq!(back.count, 6);
        let inception = back.inception.unwrap();
        assert_eq!(inception.stats, side.inception.as_ref().unwrap().stats);
        assert_eq!(inception.points.as_deref(), Some(features.as_slice()));
        let classifier = back.classifier.unwrap();
        assert_eq!(
            classifier.stats.mu,
            side.classifier.as_ref().unwrap().stats.mu
        );
        assert_eq!(classifier.points.as_deref(), Some(small.as_slice()));
    }

    #[test]
    fn subsets_are_seeded_sorted_and_capped() {
        assert_eq!(subset(5, 10), [0, 1, 2, 3, 4]);
        let picked = subset(1000, 10);
        assert_eq!(picked.len(), 10);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(picked, subset(1000, 10));
    }
}
