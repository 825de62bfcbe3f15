//! `manifest.json` of a latent folder: what the shards beside it were made from and how they are
//! cut. A rerun of `acdit cache-latents` into the same folder must agree with it, so that
//! finished shards are kept only when they are what the new run would write.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "acdit-latents-v1";
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentManifest {
    pub format: String,
    /// The VAE as given to `--vae` (a folder or a hub id): what decodes these latents.
    pub vae: String,
    /// Latents are the posterior mean times this.
    pub scaling_factor: f64,
    /// The side of the centre-cropped images, in pixels.
    pub resolution: usize,
    /// Whether each image is followed by its mirror image.
    pub flip: bool,
    /// Latents a shard (the last may hold fewer).
    pub shard_size: usize,
    /// Latents in all: images, twice with `flip`.
    pub items: usize,
    /// (channels, height, width) of one latent.
    pub latent_shape: [usize; 3],
    /// The name of each class id: the sorted class folder names.
    pub class_names: Vec<String>,
    /// A digest of the image files (relative paths and sizes), so that a changed folder is not
    /// mixed with shards made from the old one.
    pub sources: String,
}

impl LatentManifest {
    pub fn shards(&self) -> usize {
        self.items.div_ceil(self.shard_size)
    }

    /// The item range of shard `k`.
    pub fn shard_range(&self, k: usize) -> std::ops::Range<usize> {
        k * self.shard_size..((k + 1) * self.shard_size).min(self.items)
    }

    pub fn shard_path(dir: &Path, k: usize) -> std::path::PathBuf {
        dir.join(format!("shard-{k:05}.safetensors"))
    }

    /// Values in one latent.
    pub fn latent_len(&self) -> usize {
        self.latent_shape.iter().product()
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is this a latent folder from `acdit cache-latents`?)",
                path.display()
            )
        })?;
        let manifest: LatentManifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a latent manifest", path.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{}: format {:?}, expected {FORMAT:?}",
                path.display(),
                manifest.format
            );
        }
        if manifest.shard_size == 0 || manifest.items == 0 {
            bail!(
                "{}: `shard_size` and `items` must be at least 1",
                path.display()
            );
        }
        Ok(manifest)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self)?;
        crate::atomic::write_bytes_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Whether `dir` is a latent folder.
    pub fn is_latent_dir(dir: &Path) -> bool {
        dir.join(MANIFEST_FILE).is_file()
    }
}

/// FNV-1a over the relative path and byte size of each file: stable across Rust versions and
/// machines, unlike `std`'s hasher.
pub fn digest_sources(root: &Path, files: &[std::path::PathBuf]) -> Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        let size = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        feed(relative.to_string_lossy().as_bytes());
        feed(&[0]);
        feed(&size.to_le_bytes());
    }
    Ok(format!("fnv1a64:{hash:016x}:{}", files.len()))
}
