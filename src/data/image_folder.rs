//! ImageNet-style folders: `root/<class>/<image>.{png,jpg,jpeg}`. Class ids
//! follow the sorted folder names, so the same tree always gets the same ids.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader};

use super::{DataError, ImageDataset, scale};

/// Loads every PNG or JPEG in each class folder of `root` (other files and
/// hidden entries are skipped) as (n, channels, size, size).
///
/// `size`: `Some(s)` scales each image so its shorter side is `s`, then
/// crops the centre `s x s`; `None` keeps images as they are, and they must
/// all share one size. `channels`: 1 for luma, 3 for RGB (alpha dropped).
pub fn load_image_folder(
    root: &Path,
    size: Option<u32>,
    channels: usize,
) -> Result<ImageDataset, DataError> {
    if channels != 1 && channels != 3 {
        return Err(DataError::Channels(channels));
    }
    let (class_names, files) = list_image_folder(root)?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut shape = None;
    for (file, label) in files {
        let image = decode(&file, channels)?;
        let image = match size {
            Some(size) => resize_and_crop(image, size),
            None => image,
        };
        let (width, height) = (image.width(), image.height());
        let (expected_width, expected_height) = *shape.get_or_insert((width, height));
        if (width, height) != (expected_width, expected_height) {
            return Err(DataError::SizeMismatch {
                path: file,
                width,
                height,
                expected_width,
                expected_height,
            });
        }
        push_chw(&mut images, &image, channels);
        labels.push(label);
    }
    let (width, height) = shape.expect("every class has an image");
    Ok(ImageDataset {
        images,
        n: labels.len(),
        labels,
        channels,
        height: height as usize,
        width: width as usize,
        num_classes: class_names.len(),
        class_names,
    })
}

/// The class names (sorted folder names) of a folder, and every image file with its class id.
pub type FolderListing = (Vec<String>, Vec<(PathBuf, u32)>);

/// The listing of `root`, in class then file-name order. A folder without classes, or a class
/// without images, is an error.
pub fn list_image_folder(root: &Path) -> Result<FolderListing, DataError> {
    let classes = sorted_entries(root, |path| path.is_dir())?;
    if classes.is_empty() {
        return Err(DataError::NoClasses {
            path: root.to_owned(),
        });
    }
    let mut files = Vec::new();
    for (label, class_dir) in (0..).zip(&classes) {
        let images = sorted_entries(class_dir, is_image_file)?;
        if images.is_empty() {
            return Err(DataError::NoImages {
                path: class_dir.clone(),
            });
        }
        files.extend(images.into_iter().map(|file| (file, label)));
    }
    let names = classes
        .iter()
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    Ok((names, files))
}

/// The entries of `dir` that pass `keep`, not hidden, sorted by name.
fn sorted_entries(dir: &Path, keep: fn(&Path) -> bool) -> Result<Vec<PathBuf>, DataError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(DataError::io(dir))? {
        let path = entry.map_err(DataError::io(dir))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if !hidden && keep(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn is_image_file(path: &Path) -> bool {
    let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    path.is_file() && matches!(extension.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Decodes by content (not extension) to 8-bit luma (`channels` 1) or RGB.
pub(crate) fn decode(path: &Path, channels: usize) -> Result<DynamicImage, DataError> {
    let image = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(DataError::io(path))?
        .decode()
        .map_err(|source| DataError::Image {
            path: path.to_owned(),
            source,
        })?;
    Ok(match channels {
        1 => DynamicImage::ImageLuma8(image.into_luma8()),
        _ => DynamicImage::ImageRgb8(image.into_rgb8()),
    })
}

/// Scales the shorter side to `size` (aspect kept), then crops the centre
/// `size x size`.
fn resize_and_crop(image: DynamicImage, size: u32) -> DynamicImage {
    let (width, height) = (image.width(), image.height());
    let shorter = width.min(height) as f64;
    let scaled = |side: u32| ((side as f64 * size as f64 / shorter).round() as u32).max(size);
    let (new_width, new_height) = (scaled(width), scaled(height));
    let image = if (new_width, new_height) == (width, height) {
        image
    } else {
        image.resize_exact(new_width, new_height, FilterType::Triangle)
    };
    image.crop_imm((new_width - size) / 2, (new_height - size) / 2, size, size)
}

/// Appends an 8-bit luma or RGB image as (channels, height, width) in [-1, 1].
pub(crate) fn push_chw(out: &mut Vec<f32>, image: &DynamicImage, channels: usize) {
    let bytes = image.as_bytes();
    for channel in 0..channels {
        out.extend(
            bytes
                .iter()
                .skip(channel)
                .step_by(channels)
                .map(|&b| scale(b)),
        );
    }
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Luma, Rgb, RgbImage};

    use super::*;

    /// Saves `image` as `root/class/name`, creating the class folder.
    fn save(
        root: &tempfile::TempDir,
        class: &str,
        name: &str,
        image: impl Into<DynamicImage>,
    ) -> PathBuf {
        let dir = root.path().join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        image.into().save(&path).unwrap();
        path
    }

    fn gray(width: u32, height: u32, value: u8) -> GrayImage {
        GrayImage::from_pixel(width, height, Luma([value]))
    }

    fn error_message(result: Result<ImageDataset, DataError>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn classes_are_the_sorted_folder_names_and_images_are_chw() {
        let root = tempfile::tempdir().unwrap();
        let red_then_blue = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        save(&root, "zebra", "a.png", red_then_blue);
        save(
            &root,
            "apple",
            "b.png",
            RgbImage::from_pixel(2, 1, Rgb([255, 255, 255])),
        );
        save(
            &root,
            "apple",
            "a.png",
            RgbImage::from_pixel(2, 1, Rgb([0, 0, 0])),
        );
        std::fs::write(root.path().join("apple").join("notes.txt"), "not an image").unwrap();
        let ds = load_image_folder(root.path(), None, 3).unwrap();
        ds.validate().unwrap();
        assert_eq!(ds.class_names, ["apple", "zebra"]);
        assert_eq!(
            (ds.n, ds.channels, ds.height, ds.width, ds.num_classes),
            (3, 3, 1, 2, 2)
        );
        assert_eq!(ds.labels, vec![0, 0, 1]);
        assert_eq!(ds.image(0), [-1.0; 6]);
        assert_eq!(ds.image(1), [1.0; 6]);
        assert_eq!(ds.image(2), [1.0, -1.0, -1.0, -1.0, -1.0, 1.0]);
    }

    #[test]
    fn one_channel_loads_colour_images_as_luma() {
        let root = tempfile::tempdir().unwrap();
        save(
            &root,
            "a",
            "white.png",
            RgbImage::from_pixel(3, 3, Rgb([255, 255, 255])),
        );
        save(
            &root,
            "a",
            "photo.jpg",
            RgbImage::from_pixel(3, 3, Rgb([0, 0, 0])),
        );
        let ds = load_image_folder(root.path(), None, 1).unwrap();
        assert_eq!((ds.n, ds.channels), (2, 1));
        assert!(ds.image(0).iter().all(|&v| v < -0.9), "{:?}", ds.image(0));
        assert_eq!(ds.image(1), [1.0; 9]);
    }

    #[test]
    fn resizing_scales_the_shorter_side_then_crops_the_centre() {
        let root = tempfile::tempdir().unwrap();
        // 4x2 with a white centre: the shorter side is already 2, so only the crop acts.
        let centre =
            GrayImage::from_fn(4, 2, |x, _| Luma([if x == 1 || x == 2 { 255 } else { 0 }]));
        save(&root, "a", "wide.png", centre);
        save(&root, "a", "tall.png", gray(6, 12, 255));
        save(&root, "a", "big.png", gray(40, 20, 0));
        let ds = load_image_folder(root.path(), Some(2), 1).unwrap();
        assert_eq!((ds.n, ds.height, ds.width), (3, 2, 2));
        assert_eq!(ds.image(0), [-1.0; 4]);
        assert_eq!(ds.image(1), [1.0; 4]);
        assert_eq!(ds.image(2), [1.0; 4]);
    }

    #[test]
    fn mismatched_sizes_without_resizing_name_the_file() {
        let root = tempfile::tempdir().unwrap();
        save(&root, "a", "a.png", gray(28, 28, 0));
        let odd = save(&root, "a", "b.png", gray(28, 30, 0));
        let message = error_message(load_image_folder(root.path(), None, 1));
        let expected = format!(
            "image {} is 28x30 but the dataset's images are 28x28",
            odd.display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn empty_root_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let message = error_message(load_image_folder(root.path(), Some(8), 3));
        assert_eq!(
            message,
            format!("folder {} has no class subfolders", root.path().display())
        );
    }

    #[test]
    fn class_folder_without_images_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        save(&root, "a", "a.png", gray(2, 2, 0));
        let empty = root.path().join("b");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("readme.txt"), "no images here").unwrap();
        let message = error_message(load_image_folder(root.path(), None, 1));
        assert_eq!(message, format!("folder {} has no images", empty.display()));
    }

    #[test]
    fn unreadable_image_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        save(&root, "a", "a.png", gray(2, 2, 0));
        let bad = root.path().join("a").join("broken.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\n but not really").unwrap();
        let message = error_message(load_image_folder(root.path(), None, 1));
        assert!(
            message.starts_with(&format!("image {}: ", bad.display())),
            "{message}"
        );
    }

    #[test]
    fn channels_other_than_one_or_three_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        let message = error_message(load_image_folder(root.path(), None, 4));
        assert_eq!(message, "channels must be 1 (luma) or 3 (RGB), not 4");
    }
}
