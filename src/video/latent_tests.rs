//! The latent video path end to end, on a tiny frame VAE: clips encoded once for training, the
//! VAE recorded in the weights, the context encoded and the prediction decoded.

use std::path::Path;

use burn::prelude::*;

use super::Clips;
use super::clips::{ClipLayout, read_clips, write_clips};
use super::moving_mnist::{MovingMnistSpec, generate};
use super::predict::PredictJob;
use super::training::EncodedClips;
use crate::checkpoint::load::{WeightsKind, WeightsSource};
use crate::config::{ModelConfig, VideoShape};
use crate::data::idx::{Split, embedded_mnist};
use crate::data::{TrainingSet, scale};
use crate::diffusion::blockwise::{DEFAULT_GUIDANCE, Generation};
use crate::sampling::{SampleJob, run_job};
use crate::testing::{largest_difference, sampling_model};
use crate::train::TrainConfig;
use crate::train::job::{TrainJob, TrainOverrides, TrainPreset};
use crate::vae::NamedVae;
use crate::vae::train::FrameVaeJob;

/// Six labelled clips of 4 frames of 16x16.
fn clips() -> Clips {
    let spec = MovingMnistSpec {
        frames: 4,
        digits: 1,
        ..MovingMnistSpec::srivastava().at_size(16)
    };
    generate(&spec, &embedded_mnist(Split::Train), 6, 2).unwrap()
}

/// A frame VAE of a few steps in `dir/vae`.
fn frame_vae(dir: &Path, frames: &Path) -> String {
    let out = dir.join("vae");
    FrameVaeJob {
        frames: frames.to_path_buf(),
        steps: 2,
        seed: 0,
        out: out.clone(),
    }
    .run(&Device::flex().autodiff())
    .unwrap();
    out.display().to_string()
}

/// The six clips, and a frame VAE trained on them in `dir`.
fn clips_and_their_frame_vae(dir: &Path) -> (Clips, NamedVae) {
    let real = clips();
    let frames = dir.join("clips.npz");
    write_clips(&frames, &real).unwrap();
    let vae = NamedVae::load(&frame_vae(dir, &frames), &Device::flex()).unwrap();
    (real, vae)
}

/// A tiny video model in the VAE's 4x4 latents of 4 channels.
fn latent_config(vae: Option<String>) -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            neighbour_embedding: true,
            mlp_frame_conv: true,
            ..ModelConfig::video(&VideoShape {
                channels: 4,
                frame_size: 4,
                patch: 1,
                frames: 4,
                frames_per_block: 1,
                hidden: 64,
                depth: 1,
                num_classes: 10,
            })
        },
        vae,
        batch_size: 2,
        steps: 2,
        ..TrainConfig::moving_mnist()
    }
}

fn train_job(dir: &Path, config: &TrainConfig, data: &Path) -> TrainJob {
    let config_file = dir.join("train.toml");
    std::fs::write(&config_file, toml::to_string(config).unwrap()).unwrap();
    TrainJob {
        preset: Some(TrainPreset::MovingMnist),
        config_file: Some(config_file),
        data: Some(data.to_path_buf()),
        resume: None,
        init: None,
        out: Some(dir.join("run")),
        overrides: TrainOverrides::default(),
        vae: None,
    }
}

/// Training data is each frame's scaled posterior mean, clip by clip, frame by frame.
#[test]
fn encoded_clips_hold_each_frames_scaled_latent_mean() {
    let dir = tempfile::tempdir().unwrap();
    let (real, vae) = clips_and_their_frame_vae(dir.path());
    let set = EncodedClips::encode(&vae, &real, vec!["a".into(); 10]).unwrap();
    let (item, label) = set.item(0, 3);
    assert_eq!(i64::from(label), real.labels.as_ref().unwrap()[3]);
    assert_eq!(item.len(), 4 * 4 * 4 * 4);
    let frame = &real.clip(3)[2 * 256..3 * 256];
    let values: Vec<f32> = frame.iter().map(|&b| scale(b)).collect();
    let x = Tensor::<1>::from_floats(values.as_slice(), &Device::flex()).reshape([1, 1, 16, 16]);
    let direct = vae
        .vae
        .encode_scaled(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let stored = &item[2 * 64..3 * 64];
    let worst = largest_difference(&direct, stored);
    assert!(worst < 1e-5, "frame 2 of clip 3 differs by {worst}");
}

/// Frames encoded in batches on several threads come back in order, each as if encoded alone.
#[test]
fn frames_encoded_in_parallel_batches_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (real, vae) = clips_and_their_frame_vae(dir.path());
    // 24 frames in batches of 5: five batches, the last of 4.
    let batched = vae.encode_frames(&real.clips, [16, 16], 5).unwrap();
    let alone: Vec<f32> = real
        .clips
        .chunks(256)
        .flat_map(|frame| vae.encode_frames(frame, [16, 16], 1).unwrap())
        .collect();
    assert_eq!(batched.len(), 24 * 64);
    let worst = largest_difference(&batched, &alone);
    assert!(worst < 1e-5, "batched latents differ by {worst}");
}

#[test]
fn a_latent_video_run_records_its_vae_and_predicts_and_samples_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let real = clips();
    let data = dir.path().join("clips.npz");
    write_clips(&data, &real).unwrap();
    let vae = frame_vae(dir.path(), &data);
    let device = Device::flex();

    let image_with_vae = TrainConfig {
        vae: Some(vae.clone()),
        ..TrainConfig::mnist()
    };
    let message = image_with_vae.validate().unwrap_err().to_string();
    assert!(message.contains("vae"), "{message}");
    let unnamed = train_job(dir.path(), &latent_config(None), &data);
    let message = unnamed
        .run(&device.clone().autodiff())
        .unwrap_err()
        .to_string();
    assert!(message.contains("--vae"), "{message}");

    let job = train_job(dir.path(), &latent_config(Some(vae.clone())), &data);
    job.run(&device.clone().autodiff()).unwrap();
    let weights = dir.path().join("run/ema.safetensors");
    let sampling = sampling_model(WeightsSource::File(&weights), WeightsKind::Ema, &device);
    assert_eq!(
        sampling.vae.as_ref().map(|v| v.name.as_str()),
        Some(vae.as_str())
    );
    assert_eq!(sampling.frame_side(), 16);
    // Sampling defaults to the guidance the run was configured with.
    assert_eq!(sampling.guidance, TrainConfig::moving_mnist().guidance);
    assert_ne!(sampling.guidance, DEFAULT_GUIDANCE);
    // Both copies of the weights in the training checkpoint sample as the EMA file does.
    let checkpoint = dir.path().join("run/checkpoint.safetensors");
    for kind in [WeightsKind::Ema, WeightsKind::Model] {
        let from_checkpoint = sampling_model(WeightsSource::File(&checkpoint), kind, &device);
        assert_eq!(
            from_checkpoint.vae.as_ref().map(|v| v.name.as_str()),
            Some(vae.as_str()),
            "{kind:?}"
        );
        assert_eq!(from_checkpoint.guidance, sampling.guidance, "{kind:?}");
    }

    let generation = Generation {
        steps: 2,
        ..Generation::default()
    };
    let out = dir.path().join("predicted");
    let predicted = PredictJob {
        context: data.clone(),
        layout: ClipLayout::Nfhw,
        context_frames: 2,
        frames: None,
        clips: Some(3),
        generation: generation.clone(),
        seed: 0,
        batch: 3,
        window: None,
        out_dir: out.clone(),
    }
    .run(&sampling)
    .unwrap();
    assert_eq!(predicted.shape(), [3, 4, 16, 16]);
    for i in 0..3 {
        assert_eq!(predicted.clip(i)[..2 * 256], real.clip(i)[..2 * 256]);
    }
    assert_eq!(
        read_clips(&out.join("predicted.npz"), ClipLayout::Nfhw).unwrap(),
        predicted
    );

    let sampled = dir.path().join("sampled");
    run_job(
        &sampling,
        &SampleJob {
            classes: Some(vec![7]),
            per_class: 2,
            generation,
            seed: 0,
            batch: 2,
            grid: dir.path().join("grid.png"),
            out_dir: Some(sampled.clone()),
            frames: Some(6),
            window: None,
        },
    )
    .unwrap();
    let clips = read_clips(&sampled.join("clips.npz"), ClipLayout::Nfhw).unwrap();
    assert_eq!(clips.shape(), [2, 6, 16, 16]);
    assert_eq!(clips.labels, Some(vec![7, 7]));
}
