//! Latent diffusion data: image folders encoded once through the VAE (`acdit cache-latents`) into
//! shards that training reads, as the paper trains on SD-VAE latents of ImageNet.

pub mod cache;
pub mod crop;
pub mod manifest;
pub mod set;

pub use cache::{CacheLatentsJob, CacheReport};
pub use manifest::LatentManifest;
pub use set::LatentSet;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::prelude::Device;

    use super::*;
    use crate::checkpoint::load::{WeightsKind, WeightsSource};
    use crate::checkpoint::tensors::SafetensorsFile;
    use crate::diffusion::blockwise::Generation;
    use crate::sampling::{SampleJob, run_job};
    use crate::testing::{conformance_dir, sampling_model};
    use crate::train::job::{TrainJob, TrainOverrides};
    use crate::vae::NamedVae;

    /// Two classes of three JPEGs each, no two of one size.
    fn image_folder(root: &Path) {
        for (class, shade) in [("cat", 40u8), ("dog", 200u8)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for (i, (w, h)) in [(40, 52), (70, 33), (37, 37)].into_iter().enumerate() {
                let image = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([shade, (x * 255 / w) as u8, (y * 255 / h) as u8])
                });
                image
                    .save(root.join(class).join(format!("{i}.jpg")))
                    .unwrap();
            }
        }
    }

    fn cache_job(images: &Path, out: &Path, resolution: usize) -> CacheLatentsJob {
        CacheLatentsJob {
            images: images.to_path_buf(),
            out: out.to_path_buf(),
            vae_name: conformance_dir().join("vae_tiny").display().to_string(),
            resolution,
            flip: true,
            shard_size: 2,
            batch: 3,
        }
    }

    fn bytes(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn folder_to_latents_to_training_to_decoded_samples() {
        let temp = tempfile::tempdir().unwrap();
        let images = temp.path().join("images");
        image_folder(&images);
        let device = Device::flex();
        let vae = NamedVae::load(&cache_job(&images, &images, 32).vae_name, &device).unwrap();

        // One uninterrupted run: 6 images and their mirror images, 2 a shard.
        let whole = temp.path().join("whole");
        let report = cache_job(&images, &whole, 32)
            .run(&vae.vae, &device)
            .unwrap();
        assert_eq!(
            report,
            CacheReport {
                written: 6,
                kept: 0,
                items: 12
            }
        );

        // A run stopped after its first shard (shards are written atomically, so an interrupted
        // run leaves whole shards only), then rerun: it keeps shard 0 and writes the rest.
        let resumed = temp.path().join("resumed");
        cache_job(&images, &resumed, 32)
            .run(&vae.vae, &device)
            .unwrap();
        for k in 1..6 {
            std::fs::remove_file(LatentManifest::shard_path(&resumed, k)).unwrap();
        }
        let first = LatentManifest::shard_path(&resumed, 0);
        let first_written = std::fs::metadata(&first).unwrap().modified().unwrap();
        let report = cache_job(&images, &resumed, 32)
            .run(&vae.vae, &device)
            .unwrap();
        assert_eq!(
            report,
            CacheReport {
                written: 5,
                kept: 1,
                items: 12
            }
        );
        assert_eq!(
            std::fs::metadata(&first).unwrap().modified().unwrap(),
            first_written
        );
        for k in 0..6 {
            let (a, b) = (
                LatentManifest::shard_path(&whole, k),
                LatentManifest::shard_path(&resumed, k),
            );
            assert_eq!(bytes(&a), bytes(&b), "shard {k}");
        }
        let message = cache_job(&images, &resumed, 16)
            .run(&vae.vae, &device)
            .unwrap_err()
            .to_string();
        assert!(message.contains("other settings"), "{message}");

        // A shard of all 12 items encoded one a batch, the batches on several threads, holds
        // what 12 shards of one item hold, in the same order.
        let encoded_in_shards_of = |shard_size: usize, name: &str| {
            let out = temp.path().join(name);
            CacheLatentsJob {
                shard_size,
                batch: 1,
                ..cache_job(&images, &out, 32)
            }
            .run(&vae.vae, &device)
            .unwrap();
            LatentSet::open(&out).unwrap()
        };
        let one_shard = encoded_in_shards_of(12, "one-shard");
        let one_a_shard = encoded_in_shards_of(1, "one-a-shard");
        for i in 0..12 {
            assert_eq!(one_shard.get(i), one_a_shard.get(i), "item {i}");
        }

        // Mirror images follow their originals, and labels follow the sorted class folders.
        let set = LatentSet::open(&whole).unwrap();
        assert_eq!(set.len(), 12);
        assert_eq!(set.manifest.class_names, ["cat", "dog"]);
        assert_eq!(set.manifest.latent_shape, [4, 4, 4]);
        let labels: Vec<u32> = (0..12).map(|i| set.get(i).1).collect();
        assert_eq!(labels, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
        assert_ne!(set.get(0).0, set.get(1).0);
        let shard = SafetensorsFile::open(&LatentManifest::shard_path(&whole, 0)).unwrap();
        assert_eq!(shard.f32("latents").unwrap().shape, [2, 4, 4, 4]);

        // Training on the latents for a few steps, sample grids decoded through the VAE.
        let run = temp.path().join("run");
        TrainJob {
            preset: None,
            config_file: None,
            data: Some(whole.clone()),
            resume: None,
            init: None,
            out: Some(run.clone()),
            overrides: TrainOverrides {
                steps: Some(2),
                batch_size: Some(4),
                sample_every: Some(2),
                ..TrainOverrides::default()
            },
            vae: None,
        }
        .run(&device.clone().autodiff())
        .unwrap();
        let grid = image::open(run.join("samples/step-000002.png")).unwrap();
        assert!(grid.width() >= 8 * 32 && grid.color().channel_count() >= 3);

        // Sampling from the run's EMA weights finds the VAE they record and decodes to 32x32 RGB.
        let ema = run.join("ema.safetensors");
        let model = sampling_model(WeightsSource::File(&ema), WeightsKind::Ema, &device);
        assert_eq!(model.class_names, ["cat", "dog"]);
        // So does the run's training checkpoint, which records the same VAE.
        let checkpoint = run.join("checkpoint.safetensors");
        let from_checkpoint =
            sampling_model(WeightsSource::File(&checkpoint), WeightsKind::Ema, &device);
        assert_eq!(
            from_checkpoint.vae.as_ref().map(|v| v.name.as_str()),
            model.vae.as_ref().map(|v| v.name.as_str())
        );
        let out_dir = temp.path().join("samples");
        let job = SampleJob {
            classes: None,
            per_class: 2,
            generation: Generation {
                steps: 2,
                ..Generation::default()
            },
            seed: 0,
            batch: 4,
            grid: temp.path().join("grid.png"),
            out_dir: Some(out_dir.clone()),
            frames: None,
            window: None,
        };
        run_job(&model, &job).unwrap();
        let npz = crate::output::read_numpy(&out_dir.join("samples.npz")).unwrap();
        let crate::output::NumpyFile::Npz(arrays) = npz else {
            panic!("samples.npz is not an archive");
        };
        let samples = arrays.iter().find(|a| a.name == "arr_0").unwrap();
        assert_eq!(samples.shape, [4, 32, 32, 3]);
    }
}
