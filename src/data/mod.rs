//! Image datasets held as one flat `f32` buffer, so that a batch is a slice
//! copy and every loader (IDX files, image folders, the embedded MNIST subset)
//! hands the trainer the same thing.

pub mod fetch;
pub mod idx;
pub mod image_folder;

use std::path::{Path, PathBuf};

/// Labelled images, scaled to the diffusion model's [-1, 1] range.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// (n, channels, height, width), each value in [-1, 1].
    pub images: Vec<f32>,
    /// (n,), each value below `num_classes`.
    pub labels: Vec<u32>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// (num_classes,): the name of each class id.
    pub class_names: Vec<String>,
}

/// A byte pixel scaled to [-1, 1]: 0 maps to -1, 255 to 1.
pub fn scale(byte: u8) -> f32 {
    f32::from(byte) / 127.5 - 1.0
}

impl ImageDataset {
    /// Values in one image: channels * height * width.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i`: (channels, height, width), row-major. Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[f32] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// Checks that the buffers agree with the shape fields, labels are in
    /// range and pixels lie in [-1, 1], for datasets built or edited by hand.
    pub fn validate(&self) -> Result<(), DataError> {
        let invalid = |what: String| Err(DataError::Invalid(what));
        if self.images.len() != self.n * self.image_len() {
            return invalid(format!(
                "{} image values for {} images of {}x{}x{}",
                self.images.len(),
                self.n,
                self.channels,
                self.height,
                self.width
            ));
        }
        if self.labels.len() != self.n {
            return invalid(format!(
                "{} labels for {} images",
                self.labels.len(),
                self.n
            ));
        }
        if self.class_names.len() != self.num_classes {
            return invalid(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            ));
        }
        if let Some(label) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= self.num_classes)
        {
            return invalid(format!(
                "label {label} is out of range for {} classes",
                self.num_classes
            ));
        }
        if let Some(v) = self.images.iter().find(|v| !(-1.0..=1.0).contains(*v)) {
            return invalid(format!("pixel value {v} is outside [-1, 1]"));
        }
        Ok(())
    }

    /// The same images centred in a `size x size` frame: padded with background (-1) where they
    /// are smaller (28x28 Fashion-MNIST on 32x32, so that 4x4 patches tile it into 8x8 tokens),
    /// cropped where they are larger (MNIST's digits fill only its central 20x20, so 24x24 keeps
    /// them whole at 6x6 tokens).
    pub fn centred(&self, size: usize) -> ImageDataset {
        // Per axis: (offset into the source, offset into the frame, length copied).
        let fit = |len: usize| {
            if len >= size {
                ((len - size) / 2, 0, size)
            } else {
                (0, (size - len) / 2, len)
            }
        };
        let ((src_y, dst_y, rows), (src_x, dst_x, cols)) = (fit(self.height), fit(self.width));
        let mut images = vec![-1.0; self.n * self.channels * size * size];
        let planes = self.images.chunks(self.height * self.width);
        for (source, frame) in planes.zip(images.chunks_mut(size * size)) {
            for y in 0..rows {
                let from = (src_y + y) * self.width + src_x;
                let to = (dst_y + y) * size + dst_x;
                frame[to..to + cols].copy_from_slice(&source[from..from + cols]);
            }
        }
        ImageDataset {
            images,
            height: size,
            width: size,
            labels: self.labels.clone(),
            class_names: self.class_names.clone(),
            ..*self
        }
    }

    /// The images at `indices`, in that order (a range or any list of
    /// indices, repeats allowed). Panics on an index `>= n`.
    pub fn subset(&self, indices: impl IntoIterator<Item = usize>) -> ImageDataset {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        ImageDataset {
            images,
            n: labels.len(),
            labels,
            class_names: self.class_names.clone(),
            ..*self
        }
    }
}

/// What training draws its batches from: `epoch_len()` labelled items an epoch, each (frames, channels,
/// height, width) values in [-1, 1] (one frame for images). An item may depend on the epoch as
/// well as its index, so that generated data never repeats while a resumed run still sees exactly
/// what it would have.
pub trait TrainingSet: Sync {
    /// Items in one epoch.
    fn epoch_len(&self) -> usize;
    /// Item `index` of `epoch`: its values and its label.
    fn item(&self, epoch: u64, index: usize) -> (Vec<f32>, u32);
    /// The name of each class.
    fn class_names(&self) -> &[String];
}

impl TrainingSet for ImageDataset {
    fn epoch_len(&self) -> usize {
        self.n
    }

    fn item(&self, _epoch: u64, index: usize) -> (Vec<f32>, u32) {
        (self.image(index).to_vec(), self.labels[index])
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }
}

/// Why a dataset could not be loaded; each message names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt gzip data: {source}")]
    Gzip {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: expected magic 0x{expected:08x}, found 0x{found:08x}")]
    Magic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{path}: truncated: the header needs {expected} bytes, the file has {found}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{path}: {found} bytes, but the header needs exactly {expected}")]
    TrailingBytes {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{dir}: neither {name} nor {name}.gz found")]
    MissingFile { dir: PathBuf, name: String },
    #[error(
        "images file {images_path} has {images} items but labels file {labels_path} has {labels}"
    )]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },
    #[error("label {label} in labels file {path} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        path: PathBuf,
        label: u32,
        num_classes: usize,
    },
    #[error("folder {path} has no class subfolders")]
    NoClasses { path: PathBuf },
    #[error("folder {path} has no images")]
    NoImages { path: PathBuf },
    #[error("image {path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "image {path} is {width}x{height} but the dataset's images are {expected_width}x{expected_height}"
    )]
    SizeMismatch {
        path: PathBuf,
        width: u32,
        height: u32,
        expected_width: u32,
        expected_height: u32,
    },
    #[error("channels must be 1 (luma) or 3 (RGB), not {0}")]
    Channels(usize),
    #[error("{path}: expected dims {expected:?}, found {found:?}")]
    WrongDims {
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{program} not found: {hint}, or place the IDX files in {dest} yourself")]
    ToolMissing {
        program: String,
        hint: String,
        dest: PathBuf,
    },
    #[error("fetching into {dest}: `{command}` failed: {stderr}")]
    ToolFailed {
        dest: PathBuf,
        command: String,
        stderr: String,
    },
    #[error("fetching into {dest}: {message}")]
    Download { dest: PathBuf, message: String },
    #[error("invalid dataset: {0}")]
    Invalid(String),
}

impl DataError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centring_pads_with_background_and_crops_the_middle() {
        let ds = ImageDataset {
            images: vec![0.5; 2 * 2 * 2],
            labels: vec![0, 1],
            n: 2,
            channels: 1,
            height: 2,
            width: 2,
            num_classes: 2,
            class_names: vec!["a".into(), "b".into()],
        };
        let padded = ds.centred(4);
        assert_eq!((padded.height, padded.width, padded.n), (4, 4, 2));
        let expected_plane = [
            -1.0, -1.0, -1.0, -1.0, -1.0, 0.5, 0.5, -1.0, -1.0, 0.5, 0.5, -1.0, -1.0, -1.0, -1.0,
            -1.0,
        ];
        assert_eq!(padded.image(1), &expected_plane);
        let mut numbered = padded.clone();
        numbered.images = (0..32).map(|v| v as f32).collect();
        let cropped = numbered.centred(2);
        assert_eq!((cropped.height, cropped.width, cropped.n), (2, 2, 2));
        assert_eq!(cropped.image(1), &[21.0, 22.0, 25.0, 26.0]);
    }

    fn tiny() -> ImageDataset {
        ImageDataset {
            images: (0..3 * 4).map(|v| v as f32 / 12.0).collect(),
            labels: vec![0, 1, 2],
            n: 3,
            channels: 1,
            height: 2,
            width: 2,
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn scale_maps_byte_ends_to_minus_one_and_one() {
        assert_eq!(scale(0), -1.0);
        assert_eq!(scale(255), 1.0);
    }

    #[test]
    fn image_returns_the_ith_chw_slice() {
        let ds = tiny();
        assert_eq!(ds.image(1), &ds.images[4..8]);
    }

    #[test]
    fn subset_takes_ranges_and_index_lists_in_order() {
        let ds = tiny();
        let range = ds.subset(1..3);
        assert_eq!((range.n, range.labels.clone()), (2, vec![1, 2]));
        assert_eq!(range.image(0), ds.image(1));
        let picked = ds.subset([2, 0, 2]);
        assert_eq!(picked.labels, vec![2, 0, 2]);
        assert_eq!(picked.image(1), ds.image(0));
        picked.validate().unwrap();
    }

    #[test]
    fn validate_rejects_each_broken_invariant() {
        tiny().validate().unwrap();
        let broken: [fn(&mut ImageDataset); 5] = [
            |d| d.images.truncate(11),
            |d| d.labels.truncate(2),
            |d| d.class_names.truncate(2),
            |d| d.labels[0] = 3,
            |d| d.images[0] = 1.5,
        ];
        for breaks in broken {
            let mut ds = tiny();
            breaks(&mut ds);
            assert!(matches!(ds.validate(), Err(DataError::Invalid(_))));
        }
    }
}
