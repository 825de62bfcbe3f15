//! Training checkpoints: everything needed to continue bit for bit, in one safetensors file
//! written atomically (temp file, then rename).
//!
//! Tensors: `model.<name>` and `ema.<name>` under the reference's names and layouts, and the
//! optimizer's `adam.m.<name>` / `adam.v.<name>`. Metadata: the training config, the step, the
//! optimizer's step count, the random generator's position, the data position and what the data is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::checkpoint::tensors::{NamedTensors, SafetensorsFile, write_safetensors_atomic};

const FORMAT: &str = "acdit-train-v1";

/// Where the data stream stands: the epoch (whose shuffle is derived from the seed) and the next
/// index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub index: usize,
}

/// The random generator's state: its seed and stream position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub word_pos: u128,
}

impl RngState {
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            word_pos: rng.get_word_pos(),
        }
    }

    pub fn restore(&self) -> ChaCha8Rng {
        use rand::SeedableRng;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

/// The scalar part of a training checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub optimizer_steps: u64,
    pub rng: RngState,
    pub data: DataPosition,
    /// Wall-clock seconds spent training so far, over all runs.
    pub seconds: f64,
}

/// What a run trains on, recorded in its checkpoints so that a resume reads the same data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    /// The preset whose dataset is read when `path` is None, and whose names label the classes.
    pub preset: String,
    /// `--data` as given.
    pub path: Option<PathBuf>,
    /// Items in an epoch: data of another size would be shuffled in another order.
    pub items: usize,
}

pub struct Checkpoint {
    pub config: TrainConfig,
    pub progress: Progress,
    /// None in checkpoints written before the data was recorded.
    pub source: Option<DataSource>,
    pub model: NamedTensors,
    pub ema: NamedTensors,
    pub optimizer: NamedTensors,
}

fn prefixed(
    prefix: &str,
    tensors: &NamedTensors,
) -> impl Iterator<Item = (String, crate::checkpoint::tensors::HostTensor)> {
    tensors
        .iter()
        .map(move |(name, t)| (format!("{prefix}.{name}"), t.clone()))
}

impl Checkpoint {
    /// Writes the checkpoint with `extra` metadata beside its own (what sampling reads).
    pub fn save(&self, path: &Path, extra: BTreeMap<String, String>) -> Result<()> {
        let tensors: NamedTensors = prefixed("model", &self.model)
            .chain(prefixed("ema", &self.ema))
            .chain(self.optimizer.clone())
            .collect();
        let mut metadata = extra;
        metadata.extend([
            ("format".to_string(), FORMAT.to_string()),
            (
                "train_config".to_string(),
                serde_json::to_string(&self.config)?,
            ),
            (
                "model_config".to_string(),
                serde_json::to_string(&self.config.model)?,
            ),
            (
                "progress".to_string(),
                serde_json::to_string(&self.progress)?,
            ),
        ]);
        if let Some(source) = &self.source {
            metadata.insert("data_source".to_string(), serde_json::to_string(source)?);
        }
        write_safetensors_atomic(path, &tensors, Some(metadata))
            .with_context(|| format!("writing checkpoint {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let metadata = file.metadata();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            anyhow::bail!(
                "{} is not a training checkpoint of this program (no `format: {FORMAT}` metadata)",
                path.display()
            );
        }
        let field = |key: &str| {
            metadata
                .get(key)
                .with_context(|| format!("{}: metadata has no `{key}`", path.display()))
        };
        let config: TrainConfig = serde_json::from_str(field("train_config")?)
            .with_context(|| format!("{}: bad train_config", path.display()))?;
        let progress: Progress = serde_json::from_str(field("progress")?)
            .with_context(|| format!("{}: bad progress", path.display()))?;
        let source = metadata
            .get("data_source")
            .map(|json| serde_json::from_str(json))
            .transpose()
            .with_context(|| format!("{}: bad data_source", path.display()))?;
        let (mut model, mut ema, mut optimizer) = (
            NamedTensors::new(),
            NamedTensors::new(),
            NamedTensors::new(),
        );
        for name in file.names() {
            let tensor = file.f32(&name)?;
            if let Some(rest) = name.strip_prefix("model.") {
                model.insert(rest.to_string(), tensor);
            } else if let Some(rest) = name.strip_prefix("ema.") {
                ema.insert(rest.to_string(), tensor);
            } else {
                optimizer.insert(name, tensor);
            }
        }
        Ok(Self {
            config,
            progress,
            source,
            model,
            ema,
            optimizer,
        })
    }
}
