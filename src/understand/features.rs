//! Features: one vector an image from the network's hidden states, and the files that hold them.
//!
//! A model of several blocks is read through its clean path: clean tokens under the clean-causal
//! part of the Skip-Causal mask, no timestep, no label, exactly the clean half of the training
//! forward. A full-sequence model (one block) has no clean path; it is read as DiT-style encoders
//! are, at timestep 0 with the null label.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::tensors::{SafetensorsFile, write_labelled_atomic};
use crate::config::ModelConfig;
use crate::data::idx::Split;
use crate::layout::patchify;
use crate::model::Acdit;
use crate::sampling::SamplingModel;

/// How a sequence of token states becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// The mean over every token.
    Mean,
    /// The mean over the last block's tokens: under the causal mask only they have seen the
    /// whole image, as a language model's last token has read the whole text.
    LastBlock,
    /// Each block's mean, concatenated (blocks * hidden values).
    Concat,
}

impl crate::choice::Choice for Pool {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("mean", Pool::Mean),
        ("last-block", Pool::LastBlock),
        ("concat", Pool::Concat),
    ];
}

/// Which part of the network a model is read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// Clean tokens under the clean-causal mask (models of several blocks).
    CleanPath,
    /// The noisy input at timestep 0 with the null label (a full-sequence model).
    TimestepZero,
}

impl ReadPath {
    pub fn of(config: &ModelConfig) -> Self {
        if config.ar_len > 1 {
            ReadPath::CleanPath
        } else {
            ReadPath::TimestepZero
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ReadPath::CleanPath => "the clean path (clean-causal mask, no timestep, no label)",
            ReadPath::TimestepZero => {
                "the full-sequence network at timestep 0 with the null label (DiT-style; a one-block model has no clean path)"
            }
        }
    }
}

/// The block read by default: the last. Probing the built-in MNIST model at every depth, the
/// last block's output classified best (the table is in the README).
pub fn default_layer(config: &ModelConfig) -> usize {
    config.depth
}

/// The checks of a user's `--layer`: blocks count from 1, up to the depth.
pub fn check_layer(config: &ModelConfig, layer: usize) -> Result<()> {
    if layer == 0 || layer > config.depth {
        bail!(
            "--layer {layer}: the model has blocks 1 to {} (the output of block L is read)",
            config.depth
        );
    }
    Ok(())
}

/// Token states after block `layer` (counted from 1), read through the model's [`ReadPath`].
/// tokens: (n, seq_len, latent) -> (n, seq_len, hidden).
pub fn token_states(model: &Acdit, tokens: Tensor<3>, layer: usize) -> Tensor<3> {
    match ReadPath::of(model.config()) {
        ReadPath::CleanPath => model.encode_clean(tokens, layer),
        ReadPath::TimestepZero => model.encode_at_timestep_zero(tokens, layer),
    }
}

/// states: (n, blocks * block_len, hidden) -> (n, width) with width = [`pooled_width`].
pub fn pool_states(states: Tensor<3>, block_len: usize, pool: Pool) -> Tensor<2> {
    let [n, tokens, hidden] = states.dims();
    let blocks = tokens / block_len;
    match pool {
        Pool::Mean => states.mean_dim(1).reshape([n, hidden]),
        Pool::LastBlock => states
            .narrow(1, tokens - block_len, block_len)
            .mean_dim(1)
            .reshape([n, hidden]),
        Pool::Concat => states
            .reshape([n, blocks, block_len, hidden])
            .mean_dim(2)
            .reshape([n, blocks * hidden]),
    }
}

/// Values in one pooled vector.
pub fn pooled_width(config: &ModelConfig, pool: Pool) -> usize {
    match pool {
        Pool::Concat => config.ar_len * config.hidden_size,
        Pool::Mean | Pool::LastBlock => config.hidden_size,
    }
}

/// Images as the model's tokens: pixels (n, channels, size, size) -> (n, seq_len, latent).
pub fn image_tokens(config: &ModelConfig, pixels: &[f32], n: usize, device: &Device) -> Tensor<3> {
    let tokens = patchify(config, pixels, n);
    Tensor::<1>::from_floats(tokens.as_slice(), device).reshape([
        n,
        config.seq_len(),
        config.latent_size,
    ])
}

/// Pooled features of images: pixels (n, channels, size, size) -> (n, width), in batches of
/// `batch` so the result does not depend on how many are passed at once.
pub fn encode_images(
    model: &Acdit,
    pixels: &[f32],
    n: usize,
    layer: usize,
    pool: Pool,
    batch: usize,
    bar: &ProgressBar,
) -> Vec<f32> {
    let config = model.config();
    let image_len = config.in_channels * config.img_hw * config.img_hw;
    let device = model.device();
    let mut out = Vec::with_capacity(n * pooled_width(config, pool));
    for start in (0..n).step_by(batch.max(1)) {
        let count = batch.min(n - start);
        let chunk = &pixels[start * image_len..(start + count) * image_len];
        let states = token_states(model, image_tokens(config, chunk, count, &device), layer);
        let pooled = pool_states(states, config.block_size, pool);
        out.extend(
            pooled
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 features"),
        );
        bar.inc(count as u64);
    }
    out
}

/// Features with their labels, as `acdit features` writes them: `features` (N, D) f32 and
/// `labels` (N) int64 in a safetensors file, with how they were made in its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    /// (n, dim), row-major.
    pub features: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<i64>,
    pub metadata: BTreeMap<String, String>,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_labelled_atomic(
            path,
            "features",
            &[self.len(), self.dim],
            &self.features,
            &self.labels,
            self.metadata.clone(),
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a features file, refusing one without labels or whose shapes disagree.
    pub fn load(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let names = file.names();
        for needed in ["features", "labels"] {
            if !names.iter().any(|name| name == needed) {
                bail!(
                    "{}: no `{needed}` tensor (a features file holds `features` (N, D) f32 and `labels` (N) int64, as `acdit features` writes)",
                    path.display()
                );
            }
        }
        let features = file.f32("features")?;
        let (label_shape, labels) = file.i64("labels")?;
        let [n, dim] = features.shape[..] else {
            bail!(
                "{}: `features` has shape {:?}, expected (N, D)",
                path.display(),
                features.shape
            );
        };
        if label_shape != [n] {
            bail!(
                "{}: `labels` has shape {label_shape:?} for {n} feature rows, expected ({n},)",
                path.display()
            );
        }
        if labels.iter().any(|&label| label < 0) {
            bail!("{}: `labels` holds a negative class", path.display());
        }
        if features.data.iter().any(|v| !v.is_finite()) {
            bail!(
                "{}: `features` holds NaN or infinite values",
                path.display()
            );
        }
        Ok(Self {
            features: features.data,
            dim,
            labels,
            metadata: file.metadata(),
        })
    }
}

/// What `acdit features` was asked for.
#[derive(Debug, Clone)]
pub struct FeaturesJob {
    /// IDX files or a folder of class subfolders; None for MNIST (fetched, else built in).
    pub data: Option<PathBuf>,
    pub split: Split,
    /// The block whose output is read (from 1); None for [`default_layer`].
    pub layer: Option<usize>,
    pub pool: Pool,
    pub batch: usize,
    pub out: PathBuf,
}

impl FeaturesJob {
    /// Reads the data, encodes it and writes the features file.
    pub fn run(&self, model: &SamplingModel, model_name: &str) -> Result<FeatureSet> {
        let config = model.model.config();
        let layer = self.layer.unwrap_or_else(|| default_layer(config));
        check_layer(config, layer)?;
        let super::images::ModelSplit {
            images, described, ..
        } = super::images::load_split(self.data.as_deref(), self.split, config)?;
        let path = ReadPath::of(config);
        println!(
            "features of {described}: block {layer} of {}, {} pooling, read through {}",
            config.depth,
            crate::choice::Choice::name(self.pool),
            path.describe()
        );
        let bar = ProgressBar::new(images.n as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed} (eta {eta})")
                .expect("a valid progress template"),
        );
        let features = encode_images(
            &model.model,
            &images.images,
            images.n,
            layer,
            self.pool,
            self.batch,
            &bar,
        );
        bar.finish_and_clear();
        let metadata = BTreeMap::from([
            ("model".to_string(), model_name.to_string()),
            ("layer".to_string(), layer.to_string()),
            (
                "pool".to_string(),
                crate::choice::Choice::name(self.pool).to_string(),
            ),
            ("path".to_string(), format!("{path:?}")),
            ("data".to_string(), described),
        ]);
        let set = FeatureSet {
            dim: pooled_width(config, self.pool),
            features,
            labels: images.labels.iter().map(|&l| l as i64).collect(),
            metadata,
        };
        set.save(&self.out)?;
        println!(
            "wrote {} features of {} values to {}",
            set.len(),
            set.dim,
            self.out.display()
        );
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{random_model, random_tensor, tiny_config};
    use crate::testing::largest_difference;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn clean_path_features_equal_the_training_forwards_clean_states() {
        let device = Device::flex();
        let config = tiny_config(2);
        let model = random_model(&config, &device, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let shape = [2, config.seq_len(), config.latent_size];
        let clean = random_tensor(shape, &mut rng, &device);
        let noisy = random_tensor(shape, &mut rng, &device);
        let t: Vec<f32> = (0..2 * config.ar_len)
            .map(|i| (i * 97 % 1000) as f32)
            .collect();
        let labels = [3, config.num_classes as i64];
        // The training forward does not feed the last clean block, so compare the others.
        let fed = (config.ar_len - 1) * config.block_size;
        for layer in 1..config.depth {
            let train = model
                .train_clean_hidden(clean.clone(), noisy.clone(), &t, &labels, layer)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let encoded = model
                .encode_clean(clean.clone(), layer)
                .narrow(1, 0, fed)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert!(largest_difference(&train, &encoded) < 1e-5, "layer {layer}");
        }
    }

    #[test]
    fn features_do_not_depend_on_the_batch() {
        let device = Device::flex();
        for block_side in [2, 4] {
            let config = tiny_config(block_side);
            let model = random_model(&config, &device, 5);
            let image_len = config.img_hw * config.img_hw;
            let n = 5;
            let pixels: Vec<f32> = (0..n * image_len)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            for pool in [Pool::Mean, Pool::LastBlock, Pool::Concat] {
                let bar = ProgressBar::hidden();
                let all = encode_images(&model, &pixels, n, 2, pool, n, &bar);
                let one_by_one = encode_images(&model, &pixels, n, 2, pool, 1, &bar);
                assert_eq!(all.len(), n * pooled_width(&config, pool));
                assert!(largest_difference(&all, &one_by_one) < 1e-5, "{pool:?}");
            }
        }
    }

    #[test]
    fn pooling_means_the_right_tokens() {
        let device = Device::flex();
        // 2 items, 2 blocks of 2 tokens, hidden 1: token values 0..8.
        let states = Tensor::<1>::from_floats(
            [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0].as_slice(),
            &device,
        )
        .reshape([2, 4, 1]);
        let pooled = |pool| {
            pool_states(states.clone(), 2, pool)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(pooled(Pool::Mean), vec![1.5, 5.5]);
        assert_eq!(pooled(Pool::LastBlock), vec![2.5, 6.5]);
        assert_eq!(pooled(Pool::Concat), vec![0.5, 2.5, 4.5, 6.5]);
    }

    #[test]
    fn a_one_block_model_is_read_at_timestep_zero_as_its_forward_sees_it() {
        let device = Device::flex();
        let config = tiny_config(4);
        assert_eq!(ReadPath::of(&config), ReadPath::TimestepZero);
        let model = random_model(&config, &device, 6);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x = random_tensor([2, config.seq_len(), config.latent_size], &mut rng, &device);
        // At full depth the final layer applied to these states is the model's own prediction.
        let null = [config.num_classes as i64; 2];
        let predicted = model
            .forward_recompute(x.clone(), None, &[0.0, 0.0], &null, 0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let states = model.encode_at_timestep_zero(x, config.depth);
        let via_states = model
            .final_layer_at_timestep_zero(states)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(largest_difference(&predicted, &via_states) < 1e-5);
    }

    #[test]
    fn features_files_round_trip_and_need_labels() {
        let dir = tempfile::tempdir().unwrap();
        let set = FeatureSet {
            features: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            dim: 3,
            labels: vec![0, 7],
            metadata: BTreeMap::from([("layer".to_string(), "2".to_string())]),
        };
        let path = dir.path().join("f.safetensors");
        set.save(&path).unwrap();
        assert_eq!(FeatureSet::load(&path).unwrap(), set);

        let bare = dir.path().join("bare.safetensors");
        let mut tensors = crate::checkpoint::tensors::NamedTensors::new();
        tensors.insert(
            "features".into(),
            crate::checkpoint::tensors::HostTensor {
                shape: vec![2, 3],
                data: set.features.clone(),
            },
        );
        crate::checkpoint::tensors::write_safetensors_atomic(&bare, &tensors, None).unwrap();
        let message = FeatureSet::load(&bare).unwrap_err().to_string();
        assert!(message.contains("no `labels`"), "{message}");
    }

    #[test]
    fn layers_outside_the_model_are_refused() {
        let config = tiny_config(2);
        assert!(check_layer(&config, 1).is_ok());
        assert!(check_layer(&config, config.depth).is_ok());
        for bad in [0, config.depth + 1] {
            let message = check_layer(&config, bad).unwrap_err().to_string();
            assert!(message.contains("--layer"), "{message}");
        }
    }
}
