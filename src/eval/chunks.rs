//! Features kept on disk chunk by chunk while an evaluation runs, so that one cut off picks up
//! where it stopped: Inception over MNIST's 80,000 images takes hours of a 2-core CPU. A chunk's
//! file is named by the SHA-1 of its images, so it is only ever reused for the very images it was
//! made from, whichever set (reference, samples, floor) they belong to. The evaluation removes
//! the files once it has its figures.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use super::images::ImageSet;

/// Images a chunk: a cut-off run loses at most this many images' work (about a minute of
/// Inception on a 2-core CPU).
pub const CHUNK_IMAGES: usize = 512;

/// A folder of finished chunks: raw little-endian f32 features, (images, width), one file each.
pub struct FeatureChunks {
    dir: PathBuf,
    /// The files this evaluation read or wrote, for [`FeatureChunks::remove`].
    used: Mutex<Vec<PathBuf>>,
}

impl FeatureChunks {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            used: Mutex::new(Vec::new()),
        }
    }

    /// The features (n, `width`) of `set`: read for each chunk whose file is there, else made by
    /// `compute` and saved. `space` names the feature space (part of the chunk's name); `bar`
    /// advances over chunks read from disk (`compute` advances it over the others).
    pub fn features(
        &self,
        set: &ImageSet,
        space: &str,
        width: usize,
        bar: &ProgressBar,
        mut compute: impl FnMut(&ImageSet) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut out = Vec::with_capacity(set.len() * width);
        for start in (0..set.len()).step_by(CHUNK_IMAGES) {
            let chunk = set.slice(start..(start + CHUNK_IMAGES).min(set.len()));
            let path = self.dir.join(chunk_name(&chunk, space, width));
            let features = match read_chunk(&path, chunk.len() * width)? {
                Some(features) => {
                    bar.inc(chunk.len() as u64);
                    features
                }
                None => {
                    let features = compute(&chunk)?;
                    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
                    crate::atomic::write_bytes_atomic(&path, &bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                    features
                }
            };
            out.extend(features);
            self.used.lock().expect("not poisoned").push(path);
        }
        Ok(out)
    }

    /// Removes the chunk files this evaluation used, and the folder if that leaves it empty.
    pub fn remove(&self) -> Result<()> {
        for path in self.used.lock().expect("not poisoned").drain(..) {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
                _ => {}
            }
        }
        // Not empty (another run's chunks) or already gone: both fine.
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// `<space>-<width>-<SHA-1 of the shape and pixels>.f32`.
fn chunk_name(chunk: &ImageSet, space: &str, width: usize) -> String {
    let mut bytes: Vec<u8> = chunk
        .shape
        .iter()
        .flat_map(|&dim| (dim as u64).to_le_bytes())
        .collect();
    bytes.extend_from_slice(&chunk.pixels);
    let digest = crate::data::fetch::sha1_hex(&bytes);
    format!("{space}-{width}-{digest}.f32")
}

/// The chunk at `path`, if it is there. A file of the wrong length is a chunk cut short by
/// something other than our atomic writes: an error that names it, not features to trust.
fn read_chunk(path: &Path, values: usize) -> Result<Option<Vec<f32>>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.len() != values * 4 {
        anyhow::bail!(
            "{}: {} bytes, expected {} ({values} f32 features); remove it to recompute the chunk",
            path.display(),
            bytes.len(),
            values * 4
        );
    }
    Ok(Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` 3x2 grey images, each different: image `i` holds `i` in its first two pixels.
    fn images(n: usize) -> ImageSet {
        ImageSet {
            pixels: (0..n)
                .flat_map(|i| [(i % 256) as u8, (i / 256) as u8, 0, 0, 0, 0])
                .collect(),
            shape: [n, 3, 2, 1],
            labels: None,
        }
    }

    /// Two features an image: its number and twice it.
    fn features_of(chunk: &ImageSet) -> Vec<f32> {
        (0..chunk.len())
            .flat_map(|i| {
                let v = f32::from(chunk.pixels[i * 6]) + 256.0 * f32::from(chunk.pixels[i * 6 + 1]);
                [v, 2.0 * v]
            })
            .collect()
    }

    #[test]
    fn a_cut_off_run_resumes_with_the_chunks_it_finished() {
        let dir = tempfile::tempdir().unwrap();
        let set = images(CHUNK_IMAGES * 2 + 7);
        let whole = features_of(&set);
        let bar = ProgressBar::hidden();

        // The first run stops with an error in its third chunk.
        let chunks = FeatureChunks::new(dir.path().join("chunks"));
        let mut calls = 0;
        let cut = chunks.features(&set, "test", 2, &bar, |chunk| {
            calls += 1;
            anyhow::ensure!(calls < 3, "cut off");
            Ok(features_of(chunk))
        });
        assert!(cut.is_err());

        // The second computes only the chunk that was missing, and gets every feature right.
        let chunks = FeatureChunks::new(dir.path().join("chunks"));
        let mut computed = Vec::new();
        let resumed = chunks
            .features(&set, "test", 2, &bar, |chunk| {
                computed.push(chunk.len());
                Ok(features_of(chunk))
            })
            .unwrap();
        assert_eq!(computed, [7]);
        assert_eq!(resumed, whole);
        assert_eq!(bar.position(), 2 * CHUNK_IMAGES as u64);

        // Other images, or another space, do not pick up those files.
        let other = images(CHUNK_IMAGES + 1).slice(1..CHUNK_IMAGES + 1);
        let mut calls = 0;
        for (set, space) in [(&other, "test"), (&set.slice(0..CHUNK_IMAGES), "other")] {
            chunks
                .features(set, space, 2, &bar, |chunk| {
                    calls += 1;
                    Ok(features_of(chunk))
                })
                .unwrap();
        }
        assert_eq!(calls, 2);

        chunks.remove().unwrap();
        assert!(!dir.path().join("chunks").exists());
    }

    #[test]
    fn a_chunk_file_of_the_wrong_length_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let set = images(3);
        let path = dir.path().join(chunk_name(&set, "test", 2));
        std::fs::write(&path, [0u8; 10]).unwrap();
        let chunks = FeatureChunks::new(dir.path());
        let error = chunks
            .features(&set, "test", 2, &ProgressBar::hidden(), |c| {
                Ok(features_of(c))
            })
            .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("10 bytes, expected 24"), "{message}");
    }
}
