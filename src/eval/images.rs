//! The pictures an evaluation compares, as uint8 (n, h, w, c): generated samples from an `.npz`
//! (`arr_0` NHWC, as ADM's and DiT's evaluation reads and `acdit sample --out-dir` writes, with
//! `labels` when present) or a folder of PNGs, and real images from a dataset.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::data::ImageDataset;
use crate::output::{NpyArray, NumpyFile, read_numpy};

/// uint8 images (n, h, w, c), c = 1 or 3, with the class of each when known.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub shape: [usize; 4],
    pub labels: Option<Vec<i64>>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values of one image.
    pub fn image_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Images `range`, as a set of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> ImageSet {
        let len = self.image_len();
        let [_, h, w, c] = self.shape;
        ImageSet {
            pixels: self.pixels[range.start * len..range.end * len].to_vec(),
            shape: [range.len(), h, w, c],
            labels: self.labels.as_ref().map(|l| l[range].to_vec()),
        }
    }

    /// A dataset's images back in bytes ([-1, 1] -> 0..=255).
    pub fn from_dataset(set: &ImageDataset) -> Self {
        let (h, w, c) = (set.height, set.width, set.channels);
        let mut pixels = Vec::with_capacity(set.images.len());
        for i in 0..set.n {
            let image = set.image(i);
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        let v = image[(ch * h + y) * w + x];
                        pixels.push(((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
                    }
                }
            }
        }
        Self {
            pixels,
            shape: [set.n, h, w, c],
            labels: Some(set.labels.iter().map(|&l| i64::from(l)).collect()),
        }
    }

    /// An `.npz` with `arr_0` (n, h, w, c) uint8 (or (n, h, w) for grey) and optional `labels`.
    pub fn read_npz(path: &Path) -> Result<Self> {
        let NumpyFile::Npz(arrays) = read_numpy(path)? else {
            bail!(
                "{}: expected an .npz holding `arr_0` (N, H, W, C) uint8",
                path.display()
            );
        };
        let images = arrays
            .iter()
            .find(|a| a.name == "arr_0")
            .with_context(|| format!("{}: no `arr_0` array (N, H, W, C) uint8", path.display()))?;
        if images.dtype != NpyArray::U8 {
            bail!(
                "{}: `arr_0` is {}, expected uint8",
                path.display(),
                images.dtype
            );
        }
        let shape = match images.shape[..] {
            [n, h, w] => [n, h, w, 1],
            [n, h, w, c] if c == 1 || c == 3 => [n, h, w, c],
            _ => bail!(
                "{}: `arr_0` has shape {:?}, expected (N, H, W, C) with C 1 or 3",
                path.display(),
                images.shape
            ),
        };
        let labels = match arrays.iter().find(|a| a.name == "labels") {
            Some(a) => {
                let labels = a.to_i64().with_context(|| {
                    format!(
                        "{}: `labels` is {}, expected int64",
                        path.display(),
                        a.dtype
                    )
                })?;
                if labels.len() != shape[0] {
                    bail!(
                        "{}: {} labels for {} images",
                        path.display(),
                        labels.len(),
                        shape[0]
                    );
                }
                Some(labels)
            }
            None => None,
        };
        let set = Self {
            pixels: images.bytes.to_vec(),
            shape,
            labels,
        };
        set.check_not_empty(path)?;
        Ok(set)
    }

    /// Every PNG in `dir` (sorted by name); all must share one size and channel count.
    pub fn read_png_folder(dir: &Path) -> Result<Self> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{}: no PNG images in this folder", dir.display());
        }
        let mut pixels = Vec::new();
        let mut shape: Option<[usize; 3]> = None;
        for file in &files {
            let image = image::open(file).with_context(|| format!("reading {}", file.display()))?;
            let grey = image.color().channel_count() < 3;
            let (bytes, c) = if grey {
                (image.to_luma8().into_raw(), 1)
            } else {
                (image.to_rgb8().into_raw(), 3)
            };
            let this = [image.height() as usize, image.width() as usize, c];
            let first = *shape.get_or_insert(this);
            if this != first {
                bail!(
                    "{}: {}x{} with {} channel(s), but {} is {}x{} with {}: images of mixed sizes",
                    file.display(),
                    this[1],
                    this[0],
                    this[2],
                    files[0].display(),
                    first[1],
                    first[0],
                    first[2]
                );
            }
            pixels.extend(bytes);
        }
        let [h, w, c] = shape.expect("at least one file");
        Ok(Self {
            pixels,
            shape: [files.len(), h, w, c],
            labels: None,
        })
    }

    /// Samples from `path`: an `.npz` file or a folder of PNGs.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::read_png_folder(path)
        } else {
            Self::read_npz(path)
        }
    }

    fn check_not_empty(&self, path: &Path) -> Result<()> {
        if self.is_empty() {
            bail!("{}: holds no images", path.display());
        }
        Ok(())
    }

    /// The images centred in a frame of `side` x `side`, padded with black: MNIST models
    /// draw the central crop of the 28x28 digits, which padding puts back in their frame.
    pub fn padded_to(&self, side: usize) -> Result<Self> {
        let [n, h, w, c] = self.shape;
        if (h, w) == (side, side) {
            return Ok(self.clone());
        }
        if h > side || w > side {
            bail!("images of {w}x{h} do not fit the reference's {side}x{side}");
        }
        let (top, left) = ((side - h) / 2, (side - w) / 2);
        let mut pixels = vec![0u8; n * side * side * c];
        for i in 0..n {
            for y in 0..h {
                let from = ((i * h + y) * w) * c;
                let to = ((i * side + top + y) * side + left) * c;
                pixels[to..to + w * c].copy_from_slice(&self.pixels[from..from + w * c]);
            }
        }
        Ok(Self {
            pixels,
            shape: [n, side, side, c],
            labels: self.labels.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_folders_must_hold_images_of_one_size() {
        let temp = tempfile::tempdir().unwrap();
        let message = ImageSet::read_png_folder(temp.path())
            .unwrap_err()
            .to_string();
        assert!(message.contains("no PNG images"), "{message}");
        image::GrayImage::new(4, 4)
            .save(temp.path().join("a.png"))
            .unwrap();
        image::GrayImage::new(4, 4)
            .save(temp.path().join("b.png"))
            .unwrap();
        assert_eq!(
            ImageSet::read_png_folder(temp.path()).unwrap().shape,
            [2, 4, 4, 1]
        );
        image::GrayImage::new(5, 4)
            .save(temp.path().join("c.png"))
            .unwrap();
        let message = ImageSet::read_png_folder(temp.path())
            .unwrap_err()
            .to_string();
        assert!(message.contains("mixed sizes"), "{message}");
    }

    #[test]
    fn padding_centres_the_image() {
        let set = ImageSet {
            pixels: vec![255; 4],
            shape: [1, 2, 2, 1],
            labels: None,
        };
        let padded = set.padded_to(4).unwrap();
        assert_eq!(
            padded.pixels,
            [0, 0, 0, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 0, 0, 0]
        );
        assert!(set.padded_to(1).is_err());
    }
}
