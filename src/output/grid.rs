//! The labelled sample grid: one row per class, its name at the left, images
//! upscaled so that 28x28 digits are easy to see.

use std::ops::Range;
use std::path::Path;

use image::{ExtendedColorType, Rgb, RgbImage};

use super::batch::ImageBatch;
use super::font::{CAP_HEIGHT, draw_text, text_width};
use super::{OutputError, write_png};

/// Pixels between cells and around the edge.
const GUTTER: u32 = 2;
/// Images are upscaled by the smallest integer factor that makes a cell at least this big.
const MIN_CELL: u32 = 56;
/// Space around labels and the title.
const PAD: u32 = 6;
const PAPER: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);

/// One grid row: `label` drawn at its left, then the batch images `images`
/// left to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridRow {
    pub label: String,
    pub images: Range<usize>,
}

/// What the grid shows: an optional title line above labelled rows. Rows may
/// differ in length; the grid is as wide as the longest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GridLayout {
    pub title: Option<String>,
    pub rows: Vec<GridRow>,
}

impl GridLayout {
    /// One row of `per_class` consecutive images for each label, the
    /// class-major order in which the sampler emits a batch: images
    /// `k * per_class..(k + 1) * per_class` belong to `labels[k]`.
    pub fn per_class<S: AsRef<str>>(labels: &[S], per_class: usize) -> Self {
        let rows = labels
            .iter()
            .enumerate()
            .map(|(k, label)| GridRow {
                label: label.as_ref().to_string(),
                images: k * per_class..(k + 1) * per_class,
            })
            .collect();
        Self { title: None, rows }
    }

    /// One row for each video clip, its frames left to right: images
    /// `k * frames..(k + 1) * frames` are the frames of clip `k`, labelled `labels[k]`.
    pub fn clips<S: AsRef<str>>(labels: &[S], frames: usize) -> Self {
        Self::per_class(labels, frames)
    }

    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }
}

/// Writes `layout` over `batch` as an RGB PNG at `path` (atomically). Each
/// image is upscaled (nearest) by `ceil(56 / min(height, width))`, cells are
/// separated by 2 px white gutters, and grey images are drawn as grey.
pub fn write_labeled_grid(
    path: &Path,
    batch: &ImageBatch,
    layout: &GridLayout,
) -> Result<(), OutputError> {
    let n = batch.shape()[0];
    if layout.rows.is_empty() {
        return Err(OutputError::invalid(path, "grid layout has no rows"));
    }
    if let Some(row) = layout.rows.iter().find(|r| r.images.end > n) {
        return Err(OutputError::invalid(
            path,
            format!("row {:?} shows images {:?} of {n}", row.label, row.images),
        ));
    }
    let image = render(batch, layout);
    write_png(
        path,
        image.as_raw(),
        image.dimensions(),
        ExtendedColorType::Rgb8,
    )
}

/// Pixel geometry of a grid, derived from the image size and the text.
struct Geometry {
    scale: u32,
    cell: (u32, u32),
    text_scale: u32,
    label_width: u32,
    title_height: u32,
}

impl Geometry {
    fn new(batch: &ImageBatch, layout: &GridLayout) -> Self {
        let [_, _, height, width] = batch.shape().map(|d| d as u32);
        let scale = MIN_CELL.div_ceil(height.min(width));
        let cell = (width * scale, height * scale);
        // Text about a third of a small cell, capped so that big images keep a narrow label column.
        let text_scale = (cell.1 / 24).clamp(2, 4);
        let widest = layout.rows.iter().map(|r| text_width(&r.label, text_scale));
        let label_width = widest.max().unwrap_or(0) + 2 * PAD;
        let title_height = match layout.title {
            Some(_) => CAP_HEIGHT * text_scale + 2 * PAD,
            None => 0,
        };
        Self {
            scale,
            cell,
            text_scale,
            label_width,
            title_height,
        }
    }

    /// Top-left pixel of the cell in `row`, `col`.
    fn cell_origin(&self, row: usize, col: usize) -> (u32, u32) {
        let (w, h) = self.cell;
        (
            self.label_width + GUTTER + col as u32 * (w + GUTTER),
            self.title_height + GUTTER + row as u32 * (h + GUTTER),
        )
    }
}

/// The grid as an RGB image; `layout` rows must lie within `batch`.
fn render(batch: &ImageBatch, layout: &GridLayout) -> RgbImage {
    let [_, channels, _, width] = batch.shape();
    let geometry = Geometry::new(batch, layout);
    let (cell_w, cell_h) = geometry.cell;
    let columns = layout
        .rows
        .iter()
        .map(|r| r.images.len())
        .max()
        .unwrap_or(0);
    let (right, bottom) = geometry.cell_origin(layout.rows.len(), columns);
    let title_width = match &layout.title {
        Some(title) => text_width(title, geometry.text_scale) + 2 * PAD,
        None => 0,
    };
    let mut canvas = RgbImage::from_pixel(right.max(title_width), bottom, PAPER);

    if let Some(title) = &layout.title {
        let x = (canvas.width() - text_width(title, geometry.text_scale)) / 2;
        draw_text(
            &mut canvas,
            (x.into(), PAD.into()),
            title,
            geometry.text_scale,
            INK,
        );
    }
    for (r, row) in layout.rows.iter().enumerate() {
        let (_, top) = geometry.cell_origin(r, 0);
        let label_top = top + (cell_h - CAP_HEIGHT * geometry.text_scale) / 2;
        let at = (PAD.into(), label_top.into());
        draw_text(&mut canvas, at, &row.label, geometry.text_scale, INK);
        for (c, i) in row.images.clone().enumerate() {
            let (x0, y0) = geometry.cell_origin(r, c);
            let pixels = batch.image_u8_hwc(i);
            for (dx, dy) in (0..cell_w).flat_map(|dx| (0..cell_h).map(move |dy| (dx, dy))) {
                let (sx, sy) = (
                    (dx / geometry.scale) as usize,
                    (dy / geometry.scale) as usize,
                );
                let p = &pixels[(sy * width + sx) * channels..][..channels];
                let rgb = if channels == 1 {
                    [p[0]; 3]
                } else {
                    [p[0], p[1], p[2]]
                };
                canvas.put_pixel(x0 + dx, y0 + dy, Rgb(rgb));
            }
        }
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// `n` black 28x28 grey images.
    fn black_digits(n: usize) -> Vec<f32> {
        vec![-1.0; n * 28 * 28]
    }

    #[test]
    fn grid_has_the_expected_size_and_drawn_labels() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("grid.png");
        let data = black_digits(30);
        let batch = ImageBatch::new(&data, [30, 1, 28, 28]).unwrap();
        let labels = ["0", "1", "Ankle boot"];
        write_labeled_grid(&path, &batch, &GridLayout::per_class(&labels, 10)).unwrap();

        let grid = image::open(&path).unwrap().to_rgb8();
        // Scale 2 -> 56 px cells; text scale 2 -> "Ankle boot" is 10 * 12 - 2 = 118 px,
        // label column 118 + 2 * 6 = 130; width 130 + 10 * 58 + 2, height 3 * 58 + 2.
        assert_eq!(grid.dimensions(), (712, 176));
        for row in 0..3u32 {
            let top = GUTTER + row * 58;
            let inked = (0..130)
                .flat_map(|x| (top..top + 56).map(move |y| (x, y)))
                .filter(|&(x, y)| *grid.get_pixel(x, y) != PAPER)
                .count();
            assert!(inked > 20, "row {row}: {inked} label pixels");
            // Images are black, gutters white.
            assert_eq!(grid.get_pixel(130 + GUTTER, top).0, [0, 0, 0]);
            assert_eq!(grid.get_pixel(130 + GUTTER + 56, top), &PAPER);
        }
    }

    #[test]
    fn identical_input_gives_identical_bytes() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let data: Vec<f32> = (0..4 * 3 * 8 * 8)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let batch = ImageBatch::new(&data, [4, 3, 8, 8]).unwrap();
        let layout = GridLayout::per_class(&["cat", "dog"], 2).with_title("epoch 3");
        let (a, b) = (dir.join("a.png"), dir.join("b.png"));
        write_labeled_grid(&a, &batch, &layout).unwrap();
        write_labeled_grid(&b, &batch, &layout).unwrap();
        assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap());
    }

    #[test]
    fn rows_beyond_the_batch_are_an_error_naming_the_path() {
        let data = black_digits(2);
        let batch = ImageBatch::new(&data, [2, 1, 28, 28]).unwrap();
        let path = Path::new("never-written.png");
        let err = write_labeled_grid(path, &batch, &GridLayout::per_class(&["a", "b"], 2));
        let message = err.unwrap_err().to_string();
        assert!(
            message.contains("never-written.png") && message.contains("2..4"),
            "{message}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_grid_path_is_an_error_naming_it() {
        let data = black_digits(1);
        let batch = ImageBatch::new(&data, [1, 1, 28, 28]).unwrap();
        let path = Path::new("/nonexistent-acdit-dir/grid.png");
        let err = write_labeled_grid(path, &batch, &GridLayout::per_class(&["7"], 1));
        let message = err.unwrap_err().to_string();
        assert!(
            message.contains("/nonexistent-acdit-dir/grid.png"),
            "{message}"
        );
    }
}
