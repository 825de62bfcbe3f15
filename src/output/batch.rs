//! The sampler's output as the picture writers see it, its 8-bit
//! quantisation, and one PNG per sample (the layout image-folder FID tools read).

use std::fs;
use std::path::{Path, PathBuf};

use image::ExtendedColorType;

use super::{OutputError, write_png};

/// A borrowed batch of generated images: `data` is (n, channels, height, width)
/// row-major with values in [-1, 1]; `channels` is 1 (grey) or 3 (RGB).
#[derive(Clone, Copy, Debug)]
pub struct ImageBatch<'a> {
    data: &'a [f32],
    shape: [usize; 4],
}

impl<'a> ImageBatch<'a> {
    /// Checks that `data` holds exactly the (n, channels, height, width) of
    /// `shape`, with 1 or 3 channels and non-empty images.
    pub fn new(data: &'a [f32], shape: [usize; 4]) -> Result<Self, OutputError> {
        let [_, channels, height, width] = shape;
        if channels != 1 && channels != 3 {
            return Err(OutputError::Shape(format!(
                "{channels} channels; expected 1 or 3"
            )));
        }
        if height == 0 || width == 0 {
            return Err(OutputError::Shape(format!("empty images {height}x{width}")));
        }
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(OutputError::Shape(format!(
                "{} values do not fill shape {shape:?} (n, channels, height, width)",
                data.len()
            )));
        }
        Ok(Self { data, shape })
    }

    /// (n, channels, height, width).
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// All images as 8-bit (n, height, width, channels), the layout of `.npz`
    /// sample batches.
    pub fn to_u8_nhwc(&self) -> Vec<u8> {
        (0..self.shape[0])
            .flat_map(|i| self.image_u8_hwc(i))
            .collect()
    }

    /// Image `i` as 8-bit (height, width, channels).
    pub(super) fn image_u8_hwc(&self, i: usize) -> Vec<u8> {
        let [_, channels, height, width] = self.shape;
        let plane = height * width;
        let image = &self.data[i * channels * plane..][..channels * plane];
        (0..plane)
            .flat_map(|p| (0..channels).map(move |c| to_u8(image[c * plane + p])))
            .collect()
    }
}

/// [-1, 1] -> [0, 255]: round((x + 1) * 127.5), clamping outside values; NaN -> 0.
fn to_u8(x: f32) -> u8 {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Writes image `i` of `batch` to `dir/{i:05}_{class}.png` at its own
/// resolution (grey stays one channel), creating `dir` if needed. `classes`
/// (n,) names each image's class; it is made file-safe for the name. Returns
/// the paths in order.
pub fn write_image_pngs<S: AsRef<str>>(
    dir: &Path,
    batch: &ImageBatch,
    classes: &[S],
) -> Result<Vec<PathBuf>, OutputError> {
    let [n, channels, height, width] = batch.shape();
    if classes.len() != n {
        return Err(OutputError::invalid(
            dir,
            format!("{} class names for {n} images", classes.len()),
        ));
    }
    fs::create_dir_all(dir).map_err(|source| OutputError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let color = if channels == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    let size = (width as u32, height as u32);
    classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            let path = dir.join(format!("{i:05}_{}.png", file_safe(class.as_ref())));
            write_png(&path, &batch.image_u8_hwc(i), size, color)?;
            Ok(path)
        })
        .collect()
}

/// Keeps ASCII letters, digits, '-' and '_'; anything else (the '/' in
/// "T-shirt/top", spaces) becomes '_'.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_u8_maps_the_range_ends_and_clamps() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.0), 128);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn nhwc_interleaves_channels() {
        // One 1x2 RGB image: channel planes [r0 r1][g0 g1][b0 b1].
        let data = [-1.0, 1.0, 0.0, -1.0, 1.0, 0.0];
        let batch = ImageBatch::new(&data, [1, 3, 1, 2]).unwrap();
        assert_eq!(batch.to_u8_nhwc(), [0, 128, 255, 255, 0, 128]);
    }

    #[test]
    fn batch_rejects_a_buffer_that_does_not_fill_the_shape() {
        let data = [0.0; 10];
        assert!(matches!(
            ImageBatch::new(&data, [1, 1, 3, 3]),
            Err(OutputError::Shape(_))
        ));
        assert!(ImageBatch::new(&data, [5, 2, 1, 1]).is_err());
    }

    #[test]
    fn image_pngs_are_named_by_index_and_class() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let data = [0.5f32; 3 * 4 * 5];
        let batch = ImageBatch::new(&data, [3, 1, 4, 5]).unwrap();
        let paths = write_image_pngs(dir, &batch, &["Ankle boot", "T-shirt/top", "7"]).unwrap();
        let files: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            files,
            [
                "00000_Ankle_boot.png",
                "00001_T-shirt_top.png",
                "00002_7.png"
            ]
        );
        let image = image::open(&paths[0]).unwrap();
        assert_eq!((image.width(), image.height()), (5, 4));
        assert_eq!(image.color(), image::ColorType::L8);
        assert_eq!(image.to_luma8().get_pixel(0, 0).0, [to_u8(0.5)]);
    }
}
