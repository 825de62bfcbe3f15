//! fid-helper's default preprocessing: `nv_bilinear_float` to 299x299 (NVlabs' resize: an affine
//! grid with a half-pixel correction, bilinear `grid_sample` with border padding, no rounding),
//! then the TF input range `x / 128 - 1`. One-channel images are repeated to three.

use super::inception::INPUT_SIDE;

/// Source coordinate of output pixel `j` when `from` pixels become `to`: the grid and
/// `grid_sample` (align_corners False) compose to `j * from / to`, clamped to the last pixel
/// (border padding).
fn source_taps(from: usize, to: usize) -> Vec<(usize, usize, f32)> {
    (0..to)
        .map(|j| {
            let x = (j as f64 * from as f64 / to as f64).min((from - 1) as f64);
            let left = x.floor() as usize;
            let right = (left + 1).min(from - 1);
            (left, right, (x - left as f64) as f32)
        })
        .collect()
}

/// uint8 images (n, h, w, c), c = 1 or 3 -> the network's input (n, 3, 299, 299), row-major.
pub fn preprocess(images: &[u8], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    assert!(c == 1 || c == 3, "images have 1 or 3 channels");
    assert_eq!(images.len(), n * h * w * c, "images fill their shape");
    let side = INPUT_SIDE;
    let (rows, cols) = (source_taps(h, side), source_taps(w, side));
    let mut out = Vec::with_capacity(n * 3 * side * side);
    for image in images.chunks(h * w * c) {
        for channel in 0..3 {
            let source = channel.min(c - 1);
            let at = |y: usize, x: usize| f32::from(image[(y * w + x) * c + source]);
            for &(top, bottom, fy) in &rows {
                for &(left, right, fx) in &cols {
                    let upper = at(top, left) * (1.0 - fx) + at(top, right) * fx;
                    let lower = at(bottom, left) * (1.0 - fx) + at(bottom, right) * fx;
                    let value = upper * (1.0 - fy) + lower * fy;
                    out.push(value / 128.0 - 1.0);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_of_the_right_size_is_only_rescaled() {
        let taps = source_taps(299, 299);
        assert!(
            taps.iter()
                .enumerate()
                .all(|(j, &(l, _, f))| l == j && f == 0.0)
        );
        let image = vec![128u8; 299 * 299];
        let input = preprocess(&image, [1, 299, 299, 1]);
        assert_eq!(input.len(), 3 * 299 * 299);
        assert!(input.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn upsampling_interpolates_and_clamps_at_the_border() {
        // Two pixels to four: sources 0, 0.5, 1, 1.5 -> clamped to 1.
        let taps = source_taps(2, 4);
        assert_eq!(taps, [(0, 1, 0.0), (0, 1, 0.5), (1, 1, 0.0), (1, 1, 0.0)]);
    }
}
