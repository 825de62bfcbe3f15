//! Checks against vectors made by the paper's reference PyTorch code (`tests/data/conformance`):
//! the token layout, the mask and positions, a training forward, and blockwise sampling with and
//! without the KV cache; and, for a diffusers VAE folder, its encoder and decoder against
//! diffusers'. `acdit conform DIR` and the tests both run [`check_folder`].

use std::path::Path;

use burn::prelude::*;

use crate::checkpoint::tensors::SafetensorsFile;
use crate::checkpoint::torch::TorchCheckpoint;
use crate::config::ModelConfig;
use crate::diffusion::blockwise::{Generation, Observer, generate};
use crate::diffusion::linspace_timesteps;
use crate::diffusion::schedule::NoiseSchedule;
use crate::layout::{patchify, position_ids};
use crate::mask::skip_causal_mask;
use crate::model::Acdit;

/// Tolerances the reference vectors are held to, relative to the largest reference value.
pub const FORWARD_TOLERANCE: f64 = 1e-4;
pub const SAMPLE_TOLERANCE: f64 = 1e-3;
pub const VAE_TOLERANCE: f64 = 1e-4;

/// One compared output.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// Largest error, relative to the largest reference magnitude (0 for exact checks).
    pub error: f64,
    pub tolerance: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }

    fn exact(name: impl Into<String>, equal: bool) -> Self {
        Check {
            name: name.into(),
            error: if equal { 0.0 } else { f64::INFINITY },
            tolerance: 0.0,
        }
    }
}

/// max |ours - reference| / max |reference|.
pub fn relative_error(ours: &[f32], reference: &[f32]) -> f64 {
    if ours.len() != reference.len() || ours.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = reference
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-12);
    let worst = ours
        .iter()
        .zip(reference)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    worst / scale
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 tensor data")
}

fn upload(values: &[f32], shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::<1>::from_floats(values, device).reshape(shape)
}

/// Runs every check of one vector folder on `device`.
pub fn check_folder(dir: &Path, device: &Device) -> anyhow::Result<Vec<Check>> {
    use anyhow::Context;
    if !dir.is_dir() {
        anyhow::bail!("{} is not a folder of conformance vectors", dir.display());
    }
    if dir.join(crate::vae::WEIGHTS_FILE).is_file() {
        return check_vae_folder(dir, device);
    }
    if dir.join(INCEPTION_VECTORS).is_file() {
        return check_inception_folder(dir, &inception_weights(), device);
    }
    let config = ModelConfig::from_reference_json(&dir.join("config.json"))?;
    let weights_path = dir.join("weights.safetensors");
    let weights = crate::checkpoint::tensors::read_safetensors(&weights_path)?;
    let model = Acdit::new(&config, device)
        .load_tensors(&weights)
        .with_context(|| format!("loading {}", weights_path.display()))?;
    let mut checks = vec![check_patchify(dir, &config)?];

    let torch = TorchCheckpoint::open(&dir.join("checkpoint.pt"))?;
    let from_pt = torch.state_dict("model")?;
    checks.push(Check::exact(
        "checkpoint.pt model == weights.safetensors",
        from_pt == weights,
    ));
    Acdit::new(&config, device).load_tensors(&torch.state_dict("ema")?)?;

    checks.extend(check_forward(dir, &model)?);
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    for tag in ["cfg", "nocfg"] {
        let settings = &raw["sample"][tag];
        let cfg = settings["cfg"].as_f64().context("sample.cfg")?;
        let steps = settings["steps"].as_u64().context("sample.steps")? as usize;
        for kv_cache in [true, false] {
            checks.extend(check_sampling(dir, &model, tag, cfg, steps, kv_cache)?);
        }
    }
    Ok(checks)
}

/// The Inception folder's vectors file.
pub const INCEPTION_VECTORS: &str = "inception.safetensors";
pub const INCEPTION_TOLERANCE: f64 = 1e-3;
pub const FRECHET_TOLERANCE: f64 = 1e-6;
/// torch builds the sampling grid in f32 (the normalised coordinates and back), we take the
/// source coordinate `j * from / to` in f64: up to about 1e-5 apart, 0.003 of a grey level.
pub const RESIZE_TOLERANCE: f64 = 1e-4;

/// The fetched Inception network: `ACDIT_INCEPTION`, else `data/inception/default_1.pt`.
pub fn inception_weights() -> std::path::PathBuf {
    std::env::var_os("ACDIT_INCEPTION")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::data::fetch::inception_path(Path::new("data")))
}

/// The FID folder: fid-helper's preprocessing of each raw image, the network's features of the
/// preprocessed inputs, and the Fréchet distance of the two stored feature sets.
pub fn check_inception_folder(
    dir: &Path,
    weights: &Path,
    device: &Device,
) -> anyhow::Result<Vec<Check>> {
    use crate::eval::frechet::{FeatureStats, frechet_distance};
    use crate::eval::inception::{INPUT_SIDE, InceptionV3};
    use crate::eval::resize::preprocess;
    use anyhow::Context;
    let vectors = SafetensorsFile::open(&dir.join(INCEPTION_VECTORS))?;
    let input = vectors.f32("input")?;
    let n = input.shape[0];
    let mut checks = Vec::new();
    let per_image = 3 * INPUT_SIDE * INPUT_SIDE;
    let mut worst: f64 = 0.0;
    for k in 0..n {
        let (shape, raw) = vectors.u8(&format!("raw.{k}"))?;
        let &[h, w, c] = shape.as_slice() else {
            anyhow::bail!("raw.{k} in {}: expected (H, W, C)", dir.display());
        };
        let ours = preprocess(&raw, [1, h, w, c]);
        let reference = &input.data[k * per_image..(k + 1) * per_image];
        worst = worst.max(relative_error(&ours, reference));
    }
    checks.push(Check {
        name: format!("FID preprocessing of {n} images"),
        error: worst,
        tolerance: RESIZE_TOLERANCE,
    });
    let network = InceptionV3::load(weights, device)
        .context("the Inception weights (`acdit data fetch inception`, or ACDIT_INCEPTION=FILE)")?;
    let batch = Tensor::<1>::from_floats(input.data.as_slice(), device)
        .reshape([n, 3, INPUT_SIDE, INPUT_SIDE]);
    let features = network
        .forward(batch)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 features");
    checks.push(Check {
        name: "Inception features".into(),
        error: relative_error(&features, &vectors.f32("features")?.data),
        tolerance: INCEPTION_TOLERANCE,
    });
    let stats = |name: &str| -> anyhow::Result<FeatureStats> {
        let (shape, values) = vectors.f64(name)?;
        FeatureStats::of(&values, shape[1])
    };
    let distance = frechet_distance(&stats("fid.a")?, &stats("fid.b")?)?;
    let expected = vectors.f64("fid.value")?.1[0];
    checks.push(Check {
        name: "Frechet distance".into(),
        error: ((distance - expected) / expected).abs(),
        tolerance: FRECHET_TOLERANCE,
    });
    Ok(checks)
}

/// A diffusers VAE folder with `vectors.safetensors`: the posterior's mean and log-variance of
/// `image`, and `decode(latents)`.
fn check_vae_folder(dir: &Path, device: &Device) -> anyhow::Result<Vec<Check>> {
    let vae = crate::vae::Vae::from_dir(dir, device)?;
    let vectors = SafetensorsFile::open(&dir.join("vectors.safetensors"))?;
    let upload4 = |name: &str| -> anyhow::Result<Tensor<4>> {
        let t = vectors.f32(name)?;
        let shape: [usize; 4] =
            t.shape.clone().try_into().map_err(|_| {
                anyhow::anyhow!("{name} in {}: expected 4 dimensions", dir.display())
            })?;
        Ok(Tensor::<1>::from_floats(t.data.as_slice(), device).reshape(shape))
    };
    let host4 = |t: Tensor<4>| {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    };
    let moments = vae.encode(upload4("image")?);
    let decoded = vae.decode(upload4("latents")?);
    let mut checks = Vec::new();
    for (name, ours) in [
        ("mean", moments.mean),
        ("logvar", moments.logvar),
        ("decoded", decoded),
    ] {
        checks.push(Check {
            name: format!("VAE {name}"),
            error: relative_error(&host4(ours), &vectors.f32(name)?.data),
            tolerance: VAE_TOLERANCE,
        });
    }
    Ok(checks)
}

fn check_patchify(dir: &Path, config: &ModelConfig) -> anyhow::Result<Check> {
    let file = SafetensorsFile::open(&dir.join("patchify.safetensors"))?;
    let pixels = if config.temporal_len == 1 {
        file.f32("image")?
    } else {
        file.f32("video")?
    };
    let tokens = file.f32("tokens")?;
    let n = pixels.shape[0];
    Ok(Check::exact(
        "patchify layout",
        patchify(config, &pixels.data, n) == tokens.data,
    ))
}

fn check_forward(dir: &Path, model: &Acdit) -> anyhow::Result<Vec<Check>> {
    let config = model.config();
    let device = model.device();
    let file = SafetensorsFile::open(&dir.join("forward.safetensors"))?;
    let clean = file.f32("clean_x")?;
    let noisy = file.f32("noised_x")?;
    let (_, t) = file.i64("t")?;
    let (_, labels) = file.i64("y")?;
    let eps = file.f32("eps")?;
    let (_, mask) = file.u8("attention_mask")?;
    let (_, positions) = file.i64("position_ids")?;

    let n = clean.shape[0];
    let shape = [n, config.seq_len(), config.latent_size];
    let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let ours = model.forward_train(
        upload(&clean.data, shape, &device),
        upload(&noisy.data, shape, &device),
        &t,
        &labels,
    );
    let our_mask = skip_causal_mask(config.ar_len, config.block_size);
    let our_positions: Vec<i64> = position_ids(config)
        .iter()
        .flat_map(|axis| [axis.as_slice(), axis.as_slice()].concat())
        .map(|p| p as i64)
        .collect();
    Ok(vec![
        Check::exact(
            "attention_mask == skip_causal_mask",
            mask.iter().map(|&m| m != 0).eq(our_mask.iter().copied()),
        ),
        Check::exact("position_ids", positions == our_positions),
        Check {
            name: "training forward eps".into(),
            error: relative_error(&host(ours), &eps.data),
            tolerance: FORWARD_TOLERANCE,
        },
    ])
}

/// Records every model output in call order.
struct Recorder(Vec<Vec<f32>>);

impl Observer for Recorder {
    fn model_output(&mut self, _block: usize, _step: usize, output: &Tensor<3>) {
        self.0.push(host(output.clone()));
    }
}

fn check_sampling(
    dir: &Path,
    model: &Acdit,
    tag: &str,
    cfg: f64,
    steps: usize,
    kv_cache: bool,
) -> anyhow::Result<Vec<Check>> {
    let config = model.config();
    let device = model.device();
    let file = SafetensorsFile::open(&dir.join("sample.safetensors"))?;
    let (_, labels) = file.i64(&format!("{tag}.labels"))?;
    let noise = file.f32(&format!("{tag}.noise"))?;
    let (_, timesteps) = file.i64(&format!("{tag}.timesteps"))?;
    let outputs = file.f32(&format!("{tag}.model_out"))?;
    let final_tokens = file.f32(&format!("{tag}.out"))?;
    let reference_schedule = file.f32("alphas_cumprod")?;

    let schedule = NoiseSchedule::ddpm();
    let ours_acp: Vec<f32> = schedule.alphas_cumprod.iter().map(|&a| a as f32).collect();
    let n = labels.len();
    let block_values = config.block_size * config.latent_size;
    let block_noise = |block: usize| {
        let values: Vec<f32> = (0..n)
            .flat_map(|i| {
                let start = (i * config.ar_len + block) * block_values;
                noise.data[start..start + block_values].to_vec()
            })
            .collect();
        upload(&values, [n, config.block_size, config.latent_size], &device)
    };
    let generation = Generation {
        steps,
        cfg,
        kv_cache,
        ..Generation::default()
    };
    let mut recorder = Recorder(Vec::new());
    let tokens = generate(
        model,
        &labels,
        &generation,
        &schedule,
        block_noise,
        &mut rand::rng(),
        &mut recorder,
    );
    let path = if kv_cache { "cached" } else { "recomputed" };
    let call_len = outputs.numel() / outputs.shape[0];
    let worst_call = recorder
        .0
        .iter()
        .enumerate()
        .map(|(call, ours)| {
            relative_error(ours, &outputs.data[call * call_len..(call + 1) * call_len])
        })
        .fold(0f64, f64::max);
    let expected_timesteps: Vec<i64> = linspace_timesteps(1000, steps)
        .iter()
        .map(|&t| t as i64)
        .collect();
    let mut checks = Vec::new();
    if kv_cache {
        // The schedule does not depend on the path; check it once per setting.
        checks.push(Check::exact(
            format!("{tag} timesteps"),
            timesteps == expected_timesteps,
        ));
        checks.push(Check {
            name: format!("{tag} alphas_cumprod"),
            error: relative_error(&ours_acp, &reference_schedule.data),
            tolerance: 1e-6,
        });
    }
    checks.extend([
        Check::exact(
            format!("{tag} {path}: number of model calls"),
            recorder.0.len() == outputs.shape[0],
        ),
        Check {
            name: format!("{tag} {path}: every model output"),
            error: worst_call,
            tolerance: SAMPLE_TOLERANCE,
        },
        Check {
            name: format!("{tag} {path}: sampled tokens"),
            error: relative_error(&host(tokens), &final_tokens.data),
            tolerance: SAMPLE_TOLERANCE,
        },
    ]);
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_vector_folder_conforms() {
        for model in ["img_tiny", "vid_tiny", "vae_tiny"] {
            let dir = crate::testing::conformance_dir().join(model);
            let checks = check_folder(&dir, &Device::flex()).unwrap();
            assert!(!checks.is_empty(), "{model}");
            let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
            assert!(failed.is_empty(), "{}: {failed:#?}", dir.display());
        }
    }

    /// Needs the fetched weights (`acdit data fetch inception`, 87 MB), so it is run with
    /// `cargo test -- --ignored`; `.ci/run` fetches them and runs `acdit conform` on the folder.
    #[test]
    #[ignore = "needs `acdit data fetch inception`"]
    fn the_inception_folder_conforms() {
        let dir = crate::testing::conformance_dir().join("inception");
        let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(inception_weights());
        let checks = check_inception_folder(&dir, &weights, &Device::flex()).unwrap();
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn a_file_in_place_of_a_folder_is_named() {
        let file = tempfile::Builder::new()
            .prefix("acdit-not-a-folder")
            .tempfile()
            .unwrap();
        let error = check_folder(file.path(), &Device::flex())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("is not a folder of conformance vectors"),
            "{error}"
        );
        assert!(error.contains("acdit-not-a-folder"), "{error}");
    }

    #[test]
    fn relative_error_is_scaled_by_the_reference() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.2], &[1.0, 2.0]) - 0.1).abs() < 1e-6);
        assert_eq!(relative_error(&[f32::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }
}
