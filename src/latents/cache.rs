//! `acdit cache-latents`: an ImageNet-layout folder encoded once through the VAE into shards, so
//! that training reads latents and never runs the encoder. Each shard is written atomically, so
//! an interrupted run leaves whole shards only; the rerun keeps them and writes the rest.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::crop::center_crop;
use super::manifest::{FORMAT, LatentManifest, digest_sources};
use crate::checkpoint::tensors::{SafetensorsFile, write_labelled_atomic};
use crate::data::image_folder::{decode, list_image_folder, push_chw};
use crate::vae::Vae;

/// What `acdit cache-latents` was asked for.
#[derive(Debug, Clone)]
pub struct CacheLatentsJob {
    /// `root/<class>/<image>`, class ids by sorted folder name.
    pub images: PathBuf,
    pub out: PathBuf,
    /// The VAE as the user named it, recorded in the manifest.
    pub vae_name: String,
    /// Side of the centre crop in pixels; a multiple of the VAE's down-sampling.
    pub resolution: usize,
    /// Also encode each image's mirror image.
    pub flip: bool,
    pub shard_size: usize,
    /// Images encoded at once.
    pub batch: usize,
}

/// What a run did.
#[derive(Debug, PartialEq, Eq)]
pub struct CacheReport {
    pub written: usize,
    /// Shards already complete from an earlier run.
    pub kept: usize,
    pub items: usize,
}

impl CacheLatentsJob {
    pub fn run(&self, vae: &Vae, device: &Device) -> Result<CacheReport> {
        let config = vae.config();
        let down = config.downsampling();
        if self.resolution == 0 || !self.resolution.is_multiple_of(down) {
            bail!(
                "--resolution {} must be a positive multiple of the VAE's down-sampling ({down})",
                self.resolution
            );
        }
        let channels = config.in_channels;
        if !matches!(channels, 1 | 3) {
            bail!("the VAE takes {channels} channels; images are encoded as grey (1) or RGB (3)");
        }
        if self.shard_size == 0 || self.batch == 0 {
            bail!("--shard-size and --batch must be at least 1");
        }
        let (class_names, files) = list_image_folder(&self.images)?;
        let paths: Vec<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();
        let side = self.resolution / down;
        let manifest = LatentManifest {
            format: FORMAT.into(),
            vae: self.vae_name.clone(),
            scaling_factor: config.scaling_factor,
            resolution: self.resolution,
            flip: self.flip,
            shard_size: self.shard_size,
            items: files.len() * self.copies(),
            latent_shape: [config.latent_channels, side, side],
            class_names,
            sources: digest_sources(&self.images, &paths)?,
        };
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        if LatentManifest::is_latent_dir(&self.out) {
            let existing = LatentManifest::read(&self.out)?;
            if existing != manifest {
                bail!(
                    "{} holds latents made with other settings or from other images; \
                     pass a new --out, or delete it to start again",
                    self.out.display()
                );
            }
        } else {
            manifest.write(&self.out)?;
        }

        let shards = manifest.shards();
        let done: Vec<bool> = (0..shards)
            .map(|k| shard_is_complete(&self.out, &manifest, k))
            .collect();
        let kept = done.iter().filter(|d| **d).count();
        let remaining: usize = (0..shards)
            .filter(|&k| !done[k])
            .map(|k| manifest.shard_range(k).len())
            .sum();
        let bar = ProgressBar::new(remaining as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "encoding {bar:30} {pos}/{len} images [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        if kept > 0 {
            bar.println(format!("{kept} of {shards} shards already written: kept"));
        }
        for k in (0..shards).filter(|&k| !done[k]) {
            let items: Vec<usize> = manifest.shard_range(k).collect();
            // The batches run on rayon's threads: one batch's small convolutions keep about one
            // core busy. Each is the same batch as in order, so the shard is too.
            let batches = items
                .par_chunks(self.batch)
                .map(|chunk| {
                    let encoded = self.encode_batch(vae, &files, chunk, device)?;
                    bar.inc(chunk.len() as u64);
                    Ok(encoded)
                })
                .collect::<Result<Vec<_>>>()?;
            let (latents, labels): (Vec<Vec<f32>>, Vec<Vec<i64>>) = batches.into_iter().unzip();
            let (latents, labels) = (latents.concat(), labels.concat());
            let [c, h, w] = manifest.latent_shape;
            let path = LatentManifest::shard_path(&self.out, k);
            let metadata = std::collections::BTreeMap::from([
                ("format".to_string(), FORMAT.to_string()),
                ("first".to_string(), items[0].to_string()),
                (
                    "class_names".to_string(),
                    serde_json::to_string(&manifest.class_names)?,
                ),
            ]);
            write_labelled_atomic(
                &path,
                "latents",
                &[labels.len(), c, h, w],
                &latents,
                &labels,
                metadata,
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
        bar.finish_and_clear();
        Ok(CacheReport {
            written: shards - kept,
            kept,
            items: manifest.items,
        })
    }

    /// Items an image makes: itself, and its mirror image when flipping.
    fn copies(&self) -> usize {
        if self.flip { 2 } else { 1 }
    }

    /// The images `items` name (each odd item a mirror image when flipping) -> their scaled
    /// latents and labels.
    fn encode_batch(
        &self,
        vae: &Vae,
        files: &[(PathBuf, u32)],
        items: &[usize],
        device: &Device,
    ) -> Result<(Vec<f32>, Vec<i64>)> {
        let copies = self.copies();
        let channels = vae.config().in_channels;
        let mut pixels = Vec::new();
        let mut labels = Vec::with_capacity(items.len());
        for &item in items {
            let (path, label) = &files[item / copies];
            let image = decode(path, 3)?.into_rgb8();
            let mut image = center_crop(image, self.resolution as u32);
            if item % copies == 1 {
                image = image::imageops::flip_horizontal(&image);
            }
            let image = match channels {
                1 => image::DynamicImage::ImageLuma8(
                    image::DynamicImage::ImageRgb8(image).into_luma8(),
                ),
                _ => image::DynamicImage::ImageRgb8(image),
            };
            push_chw(&mut pixels, &image, channels);
            labels.push(i64::from(*label));
        }
        let r = self.resolution;
        let batch = Tensor::<1>::from_floats(pixels.as_slice(), device).reshape([
            items.len(),
            channels,
            r,
            r,
        ]);
        let encoded = vae.encode_scaled(batch).into_data().convert::<f32>();
        Ok((encoded.try_to_vec::<f32>().expect("f32 latents"), labels))
    }
}

/// A shard that opens and holds its range's latents and labels; anything else is rewritten.
fn shard_is_complete(dir: &Path, manifest: &LatentManifest, k: usize) -> bool {
    let Ok(file) = SafetensorsFile::open(&LatentManifest::shard_path(dir, k)) else {
        return false;
    };
    let rows = manifest.shard_range(k).len();
    let [c, h, w] = manifest.latent_shape;
    let latents_fit = file
        .f32("latents")
        .is_ok_and(|t| t.shape == [rows, c, h, w]);
    let labels_fit = file.i64("labels").is_ok_and(|(shape, _)| shape == [rows]);
    latents_fit && labels_fit
}
