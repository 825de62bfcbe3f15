//! A latent folder as training data: every shard read into memory (16 KB a latent at 256x256),
//! checked against the manifest.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::manifest::LatentManifest;
use crate::checkpoint::tensors::SafetensorsFile;
use crate::data::TrainingSet;

pub struct LatentSet {
    pub manifest: LatentManifest,
    pub dir: PathBuf,
    /// (items, channels, height, width).
    latents: Vec<f32>,
    labels: Vec<u32>,
}

impl LatentSet {
    /// Reads the folder; a missing or partial shard says to finish the cache first.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = LatentManifest::read(dir)?;
        let [c, h, w] = manifest.latent_shape;
        let mut latents = Vec::with_capacity(manifest.items * manifest.latent_len());
        let mut labels = Vec::with_capacity(manifest.items);
        for k in 0..manifest.shards() {
            let path = LatentManifest::shard_path(dir, k);
            if !path.is_file() {
                bail!(
                    "{} is missing: the cache is unfinished; rerun `acdit cache-latents` with the same settings to finish it",
                    path.display()
                );
            }
            let file = SafetensorsFile::open(&path)?;
            let rows = manifest.shard_range(k).len();
            let shard = file.f32("latents")?;
            let (label_shape, shard_labels) = file.i64("labels")?;
            if shard.shape != [rows, c, h, w] || label_shape != [rows] {
                bail!(
                    "{}: latents {:?} and labels {:?}, expected ({rows}, {c}, {h}, {w}) and ({rows})",
                    path.display(),
                    shard.shape,
                    label_shape
                );
            }
            if let Some(bad) = shard.data.iter().find(|v| !v.is_finite()) {
                bail!("{}: a latent value is {bad}", path.display());
            }
            let classes = manifest.class_names.len() as i64;
            if let Some(bad) = shard_labels.iter().find(|&&l| l < 0 || l >= classes) {
                bail!(
                    "{}: label {bad} is outside the {classes} classes",
                    path.display()
                );
            }
            latents.extend(shard.data);
            labels.extend(shard_labels.iter().map(|&l| l as u32));
        }
        Ok(Self {
            manifest,
            dir: dir.to_path_buf(),
            latents,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Latent `i` and its label.
    pub fn get(&self, i: usize) -> (&[f32], u32) {
        let len = self.manifest.latent_len();
        (&self.latents[i * len..(i + 1) * len], self.labels[i])
    }
}

impl TrainingSet for LatentSet {
    fn epoch_len(&self) -> usize {
        self.len()
    }

    fn item(&self, _epoch: u64, index: usize) -> (Vec<f32>, u32) {
        let (values, label) = self.get(index);
        (values.to_vec(), label)
    }

    fn class_names(&self) -> &[String] {
        &self.manifest.class_names
    }
}
