//! Pictures and arrays the sampler and trainer leave behind: labelled sample
//! grids, one PNG per sample, `.npz` batches for FID tools (and the one `.npy`/`.npz`
//! reader and writer), and the loss curve.
//!
//! Every file is encoded in memory and then written through [`write_atomic`], so
//! a reader (a viewer refreshing the grid, an evaluator picking up the `.npz`)
//! never sees a half-written file.

mod batch;
mod font;
mod grid;
mod npz;
mod plot;

pub use batch::{ImageBatch, write_image_pngs};
pub use grid::{GridLayout, GridRow, write_labeled_grid};
pub use npz::{NpyArray, NumpyFile, read_numpy, write_npz, write_npz_arrays};
pub use plot::{Panel, plot_loss_curve, plot_panels};

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use thiserror::Error;

/// Why a picture or array could not be written or read; names the file.
#[derive(Debug, Error)]
pub enum OutputError {
    /// Creating, writing or renaming the file (or a directory) failed.
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Opening a file to read failed.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The arguments or the file's contents do not make sense together.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The PNG encoder refused the pixels.
    #[error("{}: encoding PNG", path.display())]
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
    /// Building or reading the `.npz` (zip) archive failed.
    #[error("{}: zip archive", path.display())]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    /// The image buffer does not match the shape it was given; no file involved yet.
    #[error("image batch: {0}")]
    Shape(String),
}

impl OutputError {
    fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Writes `bytes` to `path` through [`crate::atomic::write_bytes_atomic`], naming the file in
/// the error.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    crate::atomic::write_bytes_atomic(path, bytes).map_err(|source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Encodes interleaved 8-bit `pixels` (height, width, channels of `color`) as a
/// PNG and writes it atomically.
fn write_png(
    path: &Path,
    pixels: &[u8],
    (width, height): (u32, u32),
    color: ExtendedColorType,
) -> Result<(), OutputError> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(pixels, width, height, color)
        .map_err(|source| OutputError::Png {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_into_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("grid.png");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert!(!dir.path().join("no-such-dir").exists());
    }
}
