//! The model config of a release checkpoint (`ACDiT-XL-img.pt` and the like), built from its
//! `args` as the reference's `sample_img.py` and `sample_vid.py` build the model. The state dict
//! supplies what `args` leaves out: the class count (the scripts hard-code 1000 and 101), and the
//! width and depth of a run whose `model` names no preset.

use std::collections::BTreeMap;

use super::tensors::NamedTensors;
use super::torch::ArgValue;
use crate::config::{ModelConfig, Preset, auto_rope_base};

/// Why the `args` and weights of a release checkpoint do not make a model; names the field.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint args `{field}`: {reason}")]
pub struct ReleaseArgsError {
    field: String,
    reason: String,
}

fn error(field: &str, reason: impl Into<String>) -> ReleaseArgsError {
    ReleaseArgsError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The head width of every ACDiT model.
const HEAD_DIM: usize = 64;

/// The model config for a release checkpoint's `args` and state dict.
pub fn config_from_release(
    args: &BTreeMap<String, ArgValue>,
    weights: &NamedTensors,
) -> Result<ModelConfig, ReleaseArgsError> {
    let int = |field: &str| match args.get(field) {
        Some(ArgValue::Int(v)) if *v > 0 => Ok(*v as usize),
        Some(other) => Err(error(field, format!("{other} is not a positive integer"))),
        None => Err(error(field, "missing")),
    };
    let patch = int("patch_size")?;
    let frames = int("num_frames")?;
    let channels = int("vae_latent_size")?;
    let (image_size, vae_pixels) = (int("image_size")?, int("vae_patch_pixels")?);
    if !image_size.is_multiple_of(vae_pixels * patch) {
        return Err(error(
            "image_size",
            format!("{image_size} is not a multiple of vae_patch_pixels x patch_size"),
        ));
    }
    let frame_hw = image_size / vae_pixels;
    let side = frame_hw / patch;
    let (hidden, depth) = width_and_depth(args, weights)?;
    let shape = |name: &str| {
        weights
            .get(name)
            .map(|t| t.shape.clone())
            .ok_or_else(|| error("model", format!("the weights have no {name}")))
    };
    let classes = shape("y_embedder.embedding_table.weight")?[0]
        .checked_sub(1)
        .filter(|&c| c > 0)
        .ok_or_else(|| error("model", "the label table has no class rows"))?;
    let mlp_hidden = shape("blocks.0.mlp.fc1.weight")?[0];
    let video = frames > 1;
    let split = nd_split(args.get("nd_split"), video)?;
    let split_sum: usize = split.iter().sum();
    let rope_split_dims: Vec<usize> = split
        .iter()
        .map(|s| 2 * s * (HEAD_DIM / 2 / split_sum))
        .collect();
    let rope_max_lens = if video {
        vec![frames, side, side]
    } else {
        vec![side, side]
    };
    let config = ModelConfig {
        patch_size: patch,
        in_channels: channels,
        latent_size: channels * patch * patch,
        block_size: int("block_size")?,
        hidden_size: hidden,
        depth,
        num_heads: hidden / HEAD_DIM,
        num_classes: classes,
        ar_len: int("ar_len")?,
        temporal_len: frames,
        spatial_len: side * side,
        square_block: !video,
        img_hw: frame_hw,
        head_dim: HEAD_DIM,
        rope_bases: rope_max_lens.iter().map(|&l| auto_rope_base(l)).collect(),
        rope_split_dims,
        rope_max_lens,
        class_dropout_prob: 0.1,
        rms_eps: 1e-6,
        mlp_ratio: mlp_hidden as f64 / hidden as f64,
        neighbour_embedding: false,
        mlp_frame_conv: false,
    };
    config
        .validate()
        .map_err(|e| error("model", format!("the settings do not fit together: {e}")))?;
    Ok(config)
}

/// Hidden width and depth: the named preset's, checked against the weights; for any other model
/// name (`ACDiT-custom`), the weights'.
fn width_and_depth(
    args: &BTreeMap<String, ArgValue>,
    weights: &NamedTensors,
) -> Result<(usize, usize), ReleaseArgsError> {
    let hidden = weights
        .get("x_embedder.weight")
        .map(|t| t.shape[0])
        .ok_or_else(|| error("model", "the weights have no x_embedder.weight"))?;
    let depth = (0..)
        .take_while(|i| weights.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count();
    let preset = match args.get("model") {
        Some(ArgValue::Str(name)) => Preset::from_release_name(name),
        Some(other) => return Err(error("model", format!("{other} is not a model name"))),
        None => return Err(error("model", "missing")),
    };
    if let Some(preset) = preset {
        let (preset_depth, preset_hidden) = preset.size();
        if (preset_depth, preset_hidden) != (depth, hidden) {
            return Err(error(
                "model",
                format!(
                    "{preset:?} is depth {preset_depth} x hidden {preset_hidden}, \
                     but the weights are depth {depth} x hidden {hidden}"
                ),
            ));
        }
    }
    if depth == 0 || !hidden.is_multiple_of(HEAD_DIM) {
        return Err(error(
            "model",
            format!("the weights give depth {depth} and hidden {hidden}"),
        ));
    }
    Ok((hidden, depth))
}

/// RoPE's share of the head per axis: `nd_split` ("2_3_3"), else the reference's default.
fn nd_split(value: Option<&ArgValue>, video: bool) -> Result<Vec<usize>, ReleaseArgsError> {
    let axes = if video { 3 } else { 2 };
    let split = match value {
        None | Some(ArgValue::None) => {
            return Ok(if video { vec![2, 3, 3] } else { vec![1, 1] });
        }
        Some(ArgValue::Str(text)) => text
            .split('_')
            .map(|part| part.parse::<usize>().ok().filter(|&v| v > 0))
            .collect::<Option<Vec<_>>>(),
        Some(_) => None,
    };
    match split {
        Some(split) if split.len() == axes && split.iter().sum::<usize>() <= HEAD_DIM / 2 => {
            Ok(split)
        }
        _ => Err(error(
            "nd_split",
            format!("{value:?} is not {axes} positive integers joined by `_`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::torch::TorchCheckpoint;
    use crate::testing::conformance_dir;

    #[test]
    fn release_args_rebuild_the_reference_config() {
        for model in ["img_tiny", "vid_tiny"] {
            let dir = conformance_dir().join(model);
            let checkpoint = TorchCheckpoint::open(&dir.join("checkpoint.pt")).unwrap();
            let weights = checkpoint.state_dict("model").unwrap();
            let config = config_from_release(&checkpoint.args(), &weights).unwrap();
            let reference = ModelConfig::from_reference_json(&dir.join("config.json")).unwrap();
            assert_eq!(config, reference, "{model}");
        }
    }

    /// Every tensor the reference's `ACDiT` (models.py) registers, with its PyTorch shape, for
    /// `depth` blocks of width `hidden`: what a release checkpoint's `model` holds.
    fn reference_shapes(
        hidden: usize,
        depth: usize,
        latent: usize,
        classes: usize,
    ) -> BTreeMap<String, Vec<usize>> {
        let mut shapes = BTreeMap::from([
            ("x_embedder.weight".to_string(), vec![hidden, latent]),
            ("t_embedder.mlp.0.weight".into(), vec![hidden, 256]),
            ("t_embedder.mlp.0.bias".into(), vec![hidden]),
            ("t_embedder.mlp.2.weight".into(), vec![hidden, hidden]),
            ("t_embedder.mlp.2.bias".into(), vec![hidden]),
            (
                "y_embedder.embedding_table.weight".into(),
                vec![classes + 1, hidden],
            ),
            ("final_layer.norm_final.weight".into(), vec![hidden]),
            ("final_layer.linear.weight".into(), vec![latent, hidden]),
            ("final_layer.linear.bias".into(), vec![latent]),
            (
                "final_layer.adaLN_modulation.1.weight".into(),
                vec![2 * hidden, hidden],
            ),
            (
                "final_layer.adaLN_modulation.1.bias".into(),
                vec![2 * hidden],
            ),
        ]);
        for i in 0..depth {
            for (name, shape) in [
                ("norm1.weight", vec![hidden]),
                ("norm2.weight", vec![hidden]),
                ("attn.qkv.weight", vec![3 * hidden, hidden]),
                ("attn.qkv.bias", vec![3 * hidden]),
                ("attn.q_norm.weight", vec![HEAD_DIM]),
                ("attn.k_norm.weight", vec![HEAD_DIM]),
                ("attn.proj.weight", vec![hidden, hidden]),
                ("attn.proj.bias", vec![hidden]),
                ("mlp.fc1.weight", vec![4 * hidden, hidden]),
                ("mlp.fc1.bias", vec![4 * hidden]),
                ("mlp.fc2.weight", vec![hidden, 4 * hidden]),
                ("mlp.fc2.bias", vec![hidden]),
                ("adaLN_modulation.1.weight", vec![6 * hidden, hidden]),
                ("adaLN_modulation.1.bias", vec![6 * hidden]),
            ] {
                shapes.insert(format!("blocks.{i}.{name}"), shape);
            }
        }
        shapes
    }

    #[test]
    fn the_reference_listing_names_what_the_tiny_release_file_holds() {
        let dir = conformance_dir().join("img_tiny");
        let weights = TorchCheckpoint::open(&dir.join("checkpoint.pt"))
            .unwrap()
            .state_dict("model")
            .unwrap();
        let found: BTreeMap<String, Vec<usize>> = weights
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone()))
            .collect();
        assert_eq!(found, reference_shapes(128, 2, 4, 10));
    }

    /// The four published checkpoints' layouts (ImageNet 256 and UCF-101 at XL and H), with
    /// constant weights in place of the downloads: the model built from `args` expects exactly
    /// their names and shapes, and the image models load them (the video ones differ only in
    /// the width of `x_embedder` and `final_layer.linear`, which the shape check covers).
    #[test]
    fn the_release_layouts_at_xl_and_h_load() {
        use crate::checkpoint::module_io::expected_shapes;
        use crate::checkpoint::tensors::HostTensor;
        use crate::model::Acdit;
        use crate::model::weights::REFERENCE_NAMING;
        use burn::prelude::Device;

        for (name, preset) in [("ACDiT-XL", Preset::Xl), ("ACDiT-H", Preset::H)] {
            for video in [false, true] {
                let (depth, hidden) = preset.size();
                let (frames, patch, classes) = if video { (16, 2, 101) } else { (1, 1, 1000) };
                let latent = 4 * patch * patch;
                let tokens_a_frame = (256 / 8 / patch) * (256 / 8 / patch);
                let block_size = if video {
                    4 * tokens_a_frame
                } else {
                    tokens_a_frame / 4
                };
                let args = BTreeMap::from([
                    ("model".to_string(), ArgValue::Str(name.into())),
                    ("image_size".into(), ArgValue::Int(256)),
                    ("vae_patch_pixels".into(), ArgValue::Int(8)),
                    ("vae_latent_size".into(), ArgValue::Int(4)),
                    ("patch_size".into(), ArgValue::Int(patch as i64)),
                    ("num_frames".into(), ArgValue::Int(frames as i64)),
                    ("block_size".into(), ArgValue::Int(block_size as i64)),
                    ("ar_len".into(), ArgValue::Int(4)),
                    ("nd_split".into(), ArgValue::None),
                ]);
                let shapes = reference_shapes(hidden, depth, latent, classes);
                let weights: NamedTensors = shapes
                    .iter()
                    .map(|(name, shape)| {
                        let data = vec![0.01; shape.iter().product()];
                        let shape = shape.clone();
                        (name.clone(), HostTensor { shape, data })
                    })
                    .collect();
                let config = config_from_release(&args, &weights).unwrap();
                if !video {
                    assert_eq!(config, ModelConfig::imagenet256(preset), "{name}");
                }
                assert_eq!(config.temporal_len, frames);
                let model = Acdit::new(&config, &Device::flex());
                assert_eq!(expected_shapes(&model, &REFERENCE_NAMING), shapes, "{name}");
                if !video {
                    let model = model.load_tensors(&weights).unwrap();
                    let params: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
                    assert_eq!(burn::module::Module::num_params(&model), params);
                }
            }
        }
    }

    #[test]
    fn a_preset_that_does_not_fit_the_weights_is_named() {
        let dir = conformance_dir().join("img_tiny");
        let checkpoint = TorchCheckpoint::open(&dir.join("checkpoint.pt")).unwrap();
        let weights = checkpoint.state_dict("model").unwrap();
        let mut args = checkpoint.args();
        args.insert("model".into(), ArgValue::Str("ACDiT-XL".into()));
        let message = config_from_release(&args, &weights)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`model`") && message.contains("depth 28 x hidden 1152"),
            "{message}"
        );
        args.remove("patch_size");
        let message = config_from_release(&args, &weights)
            .unwrap_err()
            .to_string();
        assert!(message.contains("`patch_size`: missing"), "{message}");
    }
}
