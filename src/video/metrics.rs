//! Per-frame scores of predicted clips against the truth: mean squared error and SSIM (Wang et
//! al., 2004, "Image Quality Assessment: From Error Visibility to Structural Similarity"), both
//! on pixels scaled to [0, 1].
//!
//! SSIM is computed as scikit-image's `structural_similarity(a, b, gaussian_weights=True,
//! sigma=1.5, use_sample_covariance=False, data_range=1)`: local means, variances and covariance
//! under an 11x11 Gaussian window (sigma 1.5, normalised to sum 1), K1 = 0.01, K2 = 0.03, and the
//! mean of the SSIM map over the "valid" window positions only: those whose whole window lies
//! inside the frame, (height - 10) x (width - 10) of them. scikit-image filters the border too
//! (reflecting the frame) and then crops it away before the mean, which is the same number.

use super::{Clips, VideoError};

/// Side of the SSIM window.
pub const SSIM_WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// Mean squared error of two frames of the same length, pixels scaled to [0, 1]. Panics if the
/// lengths differ.
pub fn mse(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "frames of different sizes");
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((f64::from(x) - f64::from(y)) / 255.0).powi(2))
        .sum();
    sum / a.len() as f64
}

/// (SSIM_WINDOW,): the 1-D Gaussian window, sigma 1.5, summing to 1; the 2-D window is its
/// outer product with itself.
fn gaussian_window() -> [f64; SSIM_WINDOW] {
    let r = (SSIM_WINDOW / 2) as f64;
    let mut w: [f64; SSIM_WINDOW] =
        std::array::from_fn(|i| (-0.5 * ((i as f64 - r) / SIGMA).powi(2)).exp());
    let sum: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= sum);
    w
}

/// `plane`: (height, width) -> (height - 10, width - 10), each value the Gaussian-weighted sum
/// of the 11x11 window whose top-left corner it is: the separable filter, rows then columns.
fn filter_valid(plane: &[f64], (height, width): (usize, usize)) -> Vec<f64> {
    let w = gaussian_window();
    let (out_h, out_w) = (height + 1 - SSIM_WINDOW, width + 1 - SSIM_WINDOW);
    let mut rows = vec![0.0; height * out_w];
    for y in 0..height {
        for x in 0..out_w {
            let line = &plane[y * width + x..y * width + x + SSIM_WINDOW];
            rows[y * out_w + x] = line.iter().zip(&w).map(|(v, k)| v * k).sum();
        }
    }
    let mut out = vec![0.0; out_h * out_w];
    for y in 0..out_h {
        for x in 0..out_w {
            out[y * out_w + x] = (0..SSIM_WINDOW)
                .map(|k| w[k] * rows[(y + k) * out_w + x])
                .sum();
        }
    }
    out
}

/// The SSIM of one window from its local means, variances and covariance.
fn ssim_of(mx: f64, my: f64, vx: f64, vy: f64, cxy: f64) -> f64 {
    ((2.0 * mx * my + C1) * (2.0 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
}

/// The mean SSIM of two frames (height, width), pixels scaled to [0, 1], over the valid window
/// positions (see the module doc). Panics if a frame is not height * width pixels or is smaller
/// than 11x11.
pub fn ssim(a: &[u8], b: &[u8], (height, width): (usize, usize)) -> f64 {
    assert!(
        a.len() == height * width && b.len() == height * width,
        "frames of {} and {} pixels, expected {height}x{width}",
        a.len(),
        b.len()
    );
    assert!(
        height >= SSIM_WINDOW && width >= SSIM_WINDOW,
        "{height}x{width} frames are smaller than the 11x11 SSIM window"
    );
    let x: Vec<f64> = a.iter().map(|&p| f64::from(p) / 255.0).collect();
    let y: Vec<f64> = b.iter().map(|&p| f64::from(p) / 255.0).collect();
    let product =
        |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
    let shape = (height, width);
    let [mx, my, mxx, myy, mxy] = [&x, &y, &product(&x, &x), &product(&y, &y), &product(&x, &y)]
        .map(|plane| filter_valid(plane, shape));
    let total: f64 = (0..mx.len())
        .map(|i| {
            let (vx, vy) = (mxx[i] - mx[i] * mx[i], myy[i] - my[i] * my[i]);
            ssim_of(mx[i], my[i], vx, vy, mxy[i] - mx[i] * my[i])
        })
        .sum();
    total / mx.len() as f64
}

/// Scores of the frames at one time step, averaged over clips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameScore {
    pub mse: f64,
    pub ssim: f64,
}

/// (frames,): MSE and SSIM of `predicted` against `truth` at each frame index, averaged over
/// the clips. The two must have the same shape, with frames of at least 11x11.
pub fn frame_scores(truth: &Clips, predicted: &Clips) -> Result<Vec<FrameScore>, VideoError> {
    if truth.shape() != predicted.shape() {
        return Err(VideoError::Shape(format!(
            "predicted clips {:?} and true clips {:?} differ in shape (n, frames, height, width)",
            predicted.shape(),
            truth.shape()
        )));
    }
    let size = (truth.height, truth.width);
    if size.0 < SSIM_WINDOW || size.1 < SSIM_WINDOW {
        return Err(VideoError::Shape(format!(
            "{}x{} frames are smaller than the 11x11 SSIM window",
            size.0, size.1
        )));
    }
    let n = truth.n.max(1) as f64;
    let scores = (0..truth.frames)
        .map(|f| {
            let pairs = (0..truth.n).map(|i| (truth.frame(i, f), predicted.frame(i, f)));
            let (mse_sum, ssim_sum) = pairs.fold((0.0, 0.0), |(m, s), (t, p)| {
                (m + mse(t, p), s + ssim(t, p, size))
            });
            FrameScore {
                mse: mse_sum / n,
                ssim: ssim_sum / n,
            }
        })
        .collect();
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_frame(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random()).collect()
    }

    /// `frame` plus uniform noise in [-amplitude, amplitude], clamped to the byte range.
    fn noisy(frame: &[u8], amplitude: i32, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        frame
            .iter()
            .map(|&p| (i32::from(p) + rng.random_range(-amplitude..=amplitude)).clamp(0, 255) as u8)
            .collect()
    }

    /// SSIM the slow, obvious way: for every valid window position, sums over the 11x11 window
    /// with the 2-D Gaussian weights.
    fn ssim_by_windows(a: &[u8], b: &[u8], (height, width): (usize, usize)) -> f64 {
        let w = gaussian_window();
        let (x, y) = (
            |i: usize| f64::from(a[i]) / 255.0,
            |i: usize| f64::from(b[i]) / 255.0,
        );
        let mut total = 0.0;
        let mut count = 0;
        for top in 0..=height - SSIM_WINDOW {
            for left in 0..=width - SSIM_WINDOW {
                let [mut mx, mut my, mut mxx, mut myy, mut mxy] = [0.0; 5];
                for dy in 0..SSIM_WINDOW {
                    for dx in 0..SSIM_WINDOW {
                        let k = w[dy] * w[dx];
                        let i = (top + dy) * width + left + dx;
                        mx += k * x(i);
                        my += k * y(i);
                        mxx += k * x(i) * x(i);
                        myy += k * y(i) * y(i);
                        mxy += k * x(i) * y(i);
                    }
                }
                total += ssim_of(mx, my, mxx - mx * mx, myy - my * my, mxy - mx * my);
                count += 1;
            }
        }
        total / f64::from(count)
    }

    #[test]
    fn ssim_of_identical_frames_is_one() {
        let frame = random_frame(32 * 32, 1);
        assert!((ssim(&frame, &frame, (32, 32)) - 1.0).abs() < 1e-12);
        let black = vec![0; 16 * 16];
        assert!((ssim(&black, &black, (16, 16)) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ssim_with_noise_is_below_one_and_symmetric() {
        let frame = random_frame(24 * 20, 2);
        let (slight, heavy) = (noisy(&frame, 10, 3), noisy(&frame, 80, 4));
        let s = ssim(&frame, &slight, (24, 20));
        assert!(s < 1.0 && s > ssim(&frame, &heavy, (24, 20)), "{s}");
        assert_eq!(s, ssim(&slight, &frame, (24, 20)));
    }

    #[test]
    fn ssim_equals_the_window_by_window_sum() {
        // Not square, so that swapped axes would show.
        let (height, width) = (15, 13);
        let a = random_frame(height * width, 5);
        let b = noisy(&a, 60, 6);
        let fast = ssim(&a, &b, (height, width));
        let slow = ssim_by_windows(&a, &b, (height, width));
        assert!((fast - slow).abs() < 1e-12, "{fast} vs {slow}");
    }

    #[test]
    fn ssim_matches_scikit_image() {
        // The expected value is scikit-image 0.26's, printed by this script (NumPy 2.4):
        //
        //   import numpy as np
        //   from skimage.metrics import structural_similarity
        //   k = np.arange(16 * 20)
        //   a = (k * k * 7 + k * 13) % 256
        //   b = np.clip(a + (k * 31) % 41 - 20, 0, 255)
        //   a, b = [v.reshape(16, 20) / 255.0 for v in (a, b)]
        //   print(repr(structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
        //                                    use_sample_covariance=False, data_range=1)))
        let a: Vec<u8> = (0..16 * 20u64)
            .map(|k| ((k * k * 7 + k * 13) % 256) as u8)
            .collect();
        let b: Vec<u8> = (0..16 * 20i64)
            .map(|k| (i64::from(a[k as usize]) + (k * 31) % 41 - 20).clamp(0, 255) as u8)
            .collect();
        let expected = 0.9853375940549136;
        let found = ssim(&a, &b, (16, 20));
        assert!((found - expected).abs() < 1e-9, "{found} vs {expected}");
    }

    #[test]
    fn mse_of_known_frames() {
        assert_eq!(mse(&[0, 255], &[0, 0]), 0.5);
        assert_eq!(mse(&[7, 9, 11], &[7, 9, 11]), 0.0);
        assert!((mse(&[51; 4], &[0; 4]) - 0.04).abs() < 1e-15);
    }

    #[test]
    fn frame_scores_average_each_frame_over_clips() {
        let truth = Clips::new(random_frame(2 * 3 * 12 * 12, 7), [2, 3, 12, 12], None).unwrap();
        let mut predicted = truth.clone();
        // Clip 1, frame 2 is off by 51 everywhere (0.2 in [0, 1] units), where it can be.
        let len = 12 * 12;
        let at = (3 + 2) * len;
        for p in &mut predicted.clips[at..at + len] {
            *p = if *p < 128 { *p + 51 } else { *p - 51 };
        }
        let scores = frame_scores(&truth, &predicted).unwrap();
        assert_eq!(scores.len(), 3);
        for score in &scores[..2] {
            assert_eq!(
                *score,
                FrameScore {
                    mse: 0.0,
                    ssim: 1.0
                }
            );
        }
        assert!((scores[2].mse - 0.04 / 2.0).abs() < 1e-12);
        let off = ssim(truth.frame(1, 2), predicted.frame(1, 2), (12, 12));
        assert!((scores[2].ssim - (1.0 + off) / 2.0).abs() < 1e-12);

        let other = Clips::new(vec![0; 2 * 3 * 12 * 11], [2, 3, 12, 11], None).unwrap();
        assert!(frame_scores(&truth, &other).is_err());
    }
}
