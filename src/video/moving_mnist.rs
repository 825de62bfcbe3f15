//! Moving MNIST (Srivastava et al., 2015, "Unsupervised Learning of Video Representations using
//! LSTMs"): MNIST digits gliding at constant speed across a black frame and bouncing off its
//! walls, several digits merged by per-pixel max.
//!
//! Each clip has its own random stream, so clip `i` of a seed is the same however many clips
//! are drawn. The walls reflect: a step that would carry a digit past a wall is mirrored back
//! inside and that velocity component flips (the original clamps to the wall instead), so the
//! digit always lies wholly inside the frame.

use std::f64::consts::TAU;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::clips::{write_clips, write_frame_folder};
use super::{Clips, VideoError};
use crate::data::ImageDataset;

/// The shape and motion of the clips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovingMnistSpec {
    /// Frame side in pixels (frames are square).
    pub size: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Digits per clip.
    pub digits: usize,
    /// Pixels a digit moves per frame; the top of the range when `min_speed` is lower.
    pub speed: f64,
    /// Each digit's speed is drawn uniformly from [min_speed, speed]. Equal to `speed` (the
    /// original dataset), nothing is drawn, so the clips are those of a fixed speed.
    pub min_speed: f64,
    /// Side the digits are resized to (area average); the source's own side means no resize.
    pub digit_size: usize,
}

impl MovingMnistSpec {
    /// Srivastava et al.'s dataset: 20 frames of 64x64 with two 28x28 digits moving 3.6 pixels
    /// a frame (a tenth of the 36 pixels a digit can travel).
    pub fn srivastava() -> Self {
        MovingMnistSpec {
            size: 64,
            frames: 20,
            digits: 2,
            speed: 3.6,
            min_speed: 3.6,
            digit_size: 28,
        }
    }

    /// The same motion at frame side `size`: digits of min(28, size / 2) pixels (16 on 32x32,
    /// leaving them room to move) moving a tenth of their free range, size - digit_size, a frame.
    pub fn at_size(self, size: usize) -> Self {
        let digit_size = (size / 2).min(28);
        MovingMnistSpec {
            size,
            digit_size,
            ..self
        }
        .at_speed(0.1 * size.saturating_sub(digit_size) as f64)
    }

    /// The same clips at one speed for every digit (no range drawn).
    pub fn at_speed(self, speed: f64) -> Self {
        MovingMnistSpec {
            speed,
            min_speed: speed,
            ..self
        }
    }

    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), VideoError> {
        let bad = |field, reason: String| Err(VideoError::Spec { field, reason });
        if self.digit_size == 0 {
            return bad("digit_size", "must be at least 1".into());
        }
        if self.digit_size > self.size {
            return bad(
                "digit_size",
                format!(
                    "{} is larger than the frame size {}",
                    self.digit_size, self.size
                ),
            );
        }
        if self.frames == 0 {
            return bad("frames", "must be at least 1".into());
        }
        if self.digits == 0 {
            return bad("digits", "must be at least 1".into());
        }
        if !(self.speed.is_finite() && self.speed >= 0.0) {
            return bad(
                "speed",
                format!("{} is not a finite number >= 0", self.speed),
            );
        }
        if !(self.min_speed.is_finite() && (0.0..=self.speed).contains(&self.min_speed)) {
            return bad(
                "min_speed",
                format!(
                    "{} is not a finite number in [0, speed = {}]",
                    self.min_speed, self.speed
                ),
            );
        }
        Ok(())
    }

    /// How far a digit's top-left corner can go along either axis: size - digit_size.
    fn free_range(&self) -> usize {
        self.size - self.digit_size
    }
}

/// One digit's way through a clip: which picture of the dataset, and its top-left corner (row,
/// column) in each frame.
#[derive(Debug, Clone, PartialEq)]
struct Track {
    digit: usize,
    /// (frames,) of (row, column), each in [0, size - digit_size].
    corners: Vec<(usize, usize)>,
}

/// One frame's motion along one axis: `x + v`, mirrored back into [0, lim] off whichever wall
/// it crosses (as often as it crosses one), `v` flipped at each crossing. Reflecting motion is
/// the straight motion folded with period 2 * lim, which is how it is computed.
fn bounce(x: f64, v: f64, lim: f64) -> (f64, f64) {
    if lim <= 0.0 {
        return (0.0, v);
    }
    let folded = (x + v).rem_euclid(2.0 * lim);
    // In the second half of the period the digit is on its way back.
    if folded >= lim {
        (2.0 * lim - folded, -v)
    } else {
        (folded, v)
    }
}

/// The corners (row, column) of `frames` frames for a digit starting at `start` (row, column)
/// with `velocity` (rows, columns per frame), in a free range of `lim` pixels.
fn corners(
    start: (f64, f64),
    velocity: (f64, f64),
    lim: usize,
    frames: usize,
) -> Vec<(usize, usize)> {
    let lim_f = lim as f64;
    let ((mut y, mut x), (mut vy, mut vx)) = (start, velocity);
    (0..frames)
        .map(|_| {
            // Rounding a value in [0, lim] lands on a whole pixel in [0, lim].
            let corner = (y.round() as usize, x.round() as usize);
            (y, vy) = bounce(y, vy, lim_f);
            (x, vx) = bounce(x, vx, lim_f);
            corner
        })
        .collect()
}

/// Draws each digit's track from `rng`: per digit, its index into `available` pictures, then its
/// start row and column (uniform over the free range), its direction (uniform angle), and, when
/// the spec gives a range, its speed.
fn tracks(spec: &MovingMnistSpec, available: usize, rng: &mut ChaCha8Rng) -> Vec<Track> {
    let lim = spec.free_range();
    (0..spec.digits)
        .map(|_| {
            let digit = rng.random_range(0..available);
            let start = (
                rng.random::<f64>() * lim as f64,
                rng.random::<f64>() * lim as f64,
            );
            let angle = rng.random::<f64>() * TAU;
            let speed = digit_speed(spec, rng);
            let velocity = (speed * angle.sin(), speed * angle.cos());
            Track {
                digit,
                corners: corners(start, velocity, lim, spec.frames),
            }
        })
        .collect()
}

/// A digit's speed: uniform over [min_speed, speed], drawn from `rng` only when that range is
/// not a single value.
fn digit_speed(spec: &MovingMnistSpec, rng: &mut ChaCha8Rng) -> f64 {
    if spec.min_speed < spec.speed {
        spec.min_speed + rng.random::<f64>() * (spec.speed - spec.min_speed)
    } else {
        spec.speed
    }
}

/// Weights (to, from) of an area-average resize of one axis: output pixel `o` covers
/// [o, o + 1) * from / to of the input, and each input pixel counts by its overlap.
fn area_weights(from: usize, to: usize) -> Vec<f64> {
    let scale = from as f64 / to as f64;
    let mut weights = vec![0.0; to * from];
    for o in 0..to {
        let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
        for i in lo.floor() as usize..(hi.ceil() as usize).min(from) {
            let overlap = hi.min(i as f64 + 1.0) - lo.max(i as f64);
            weights[o * from + i] = overlap / scale;
        }
    }
    weights
}

/// `pixels`: (height, width) -> (size, size) by area average (a box filter, OpenCV's INTER_AREA
/// when shrinking).
fn resize_area(pixels: &[f64], (height, width): (usize, usize), size: usize) -> Vec<f64> {
    let (wy, wx) = (area_weights(height, size), area_weights(width, size));
    let mut rows = vec![0.0; height * size];
    for y in 0..height {
        for o in 0..size {
            rows[y * size + o] = (0..width)
                .map(|x| wx[o * width + x] * pixels[y * width + x])
                .sum();
        }
    }
    let mut out = vec![0.0; size * size];
    for o in 0..size {
        for x in 0..size {
            out[o * size + x] = (0..height)
                .map(|y| wy[o * height + y] * rows[y * size + x])
                .sum();
        }
    }
    out
}

/// Picture `i` of `digits` as bytes (0 black), (digit_size, digit_size).
fn digit_bytes(digits: &ImageDataset, i: usize, digit_size: usize) -> Vec<u8> {
    let values: Vec<f64> = digits
        .image(i)
        .iter()
        .map(|&v| (f64::from(v) + 1.0) * 127.5)
        .collect();
    let shape = (digits.height, digits.width);
    let values = if shape == (digit_size, digit_size) {
        values
    } else {
        resize_area(&values, shape, digit_size)
    };
    values
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// Draws the tracks into a clip (frames, size, size), each digit merged by per-pixel max.
fn render(spec: &MovingMnistSpec, digits: &ImageDataset, tracks: &[Track]) -> Vec<u8> {
    let (size, side) = (spec.size, spec.digit_size);
    let mut clip = vec![0u8; spec.frames * size * size];
    for track in tracks {
        let picture = digit_bytes(digits, track.digit, side);
        let frames = clip.chunks_exact_mut(size * size);
        for (frame, &(top, left)) in frames.zip(&track.corners) {
            for (row, line) in picture.chunks_exact(side).enumerate() {
                let at = (top + row) * size + left;
                for (out, &p) in frame[at..at + side].iter_mut().zip(line) {
                    *out = (*out).max(p);
                }
            }
        }
    }
    clip
}

/// Clip `index`'s own random stream of `seed`.
fn clip_stream(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// Checks that `digits` holds at least one one-channel picture.
fn check_digits(digits: &ImageDataset) -> Result<(), VideoError> {
    if digits.n == 0 || digits.channels != 1 {
        return Err(VideoError::Digits(format!(
            "need at least one one-channel picture, found {} of {} channels",
            digits.n, digits.channels
        )));
    }
    Ok(())
}

/// Clip `index` and its label after spec and digits are checked.
fn clip_unchecked(
    spec: &MovingMnistSpec,
    digits: &ImageDataset,
    seed: u64,
    index: usize,
) -> (Vec<u8>, i64) {
    let tracks = tracks(spec, digits.n, &mut clip_stream(seed, index));
    let label = i64::from(digits.labels[tracks[0].digit]);
    (render(spec, digits, &tracks), label)
}

/// Clip `index` of `seed`: (frames, size, size) pixels, 0 black, and its label: the class of
/// its first digit (the only one when `spec.digits` is 1). `digits`: the pictures to draw from
/// (one channel, values in [-1, 1], e.g. an MNIST split).
pub fn generate_clip(
    spec: &MovingMnistSpec,
    digits: &ImageDataset,
    seed: u64,
    index: usize,
) -> Result<(Vec<u8>, i64), VideoError> {
    spec.validate()?;
    check_digits(digits)?;
    Ok(clip_unchecked(spec, digits, seed, index))
}

/// Clips 0..n of `seed` (as [`generate_clip`] draws them), with their labels.
pub fn generate(
    spec: &MovingMnistSpec,
    digits: &ImageDataset,
    n: usize,
    seed: u64,
) -> Result<Clips, VideoError> {
    spec.validate()?;
    check_digits(digits)?;
    let drawn: Vec<(Vec<u8>, i64)> = (0..n)
        .into_par_iter()
        .map(|i| clip_unchecked(spec, digits, seed, i))
        .collect();
    let labels = drawn.iter().map(|(_, label)| *label).collect();
    let pixels = drawn.into_iter().flat_map(|(clip, _)| clip).collect();
    let shape = [n, spec.frames, spec.size, spec.size];
    Clips::new(pixels, shape, Some(labels))
}

/// What `acdit data moving-mnist` was asked for; the caller picks the digits (the MNIST split).
#[derive(Debug, Clone, PartialEq)]
pub struct MovingMnistJob {
    pub spec: MovingMnistSpec,
    /// Clips to generate.
    pub clips: usize,
    pub seed: u64,
    /// The `.npz` to write (see [`write_clips`]).
    pub out: PathBuf,
    /// Also every frame as a PNG in a folder a class (see [`write_frame_folder`]): an image
    /// folder for `acdit cache-latents` and image training.
    pub png_dir: Option<PathBuf>,
}

impl MovingMnistJob {
    /// Generates the clips from `digits`, writes them to `out` atomically (and the PNGs), and
    /// returns them.
    pub fn run(&self, digits: &ImageDataset) -> Result<Clips, VideoError> {
        let clips = generate(&self.spec, digits, self.clips, self.seed)?;
        write_clips(&self.out, &clips)?;
        if let Some(dir) = &self.png_dir {
            write_frame_folder(dir, &clips)?;
        }
        Ok(clips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::{Split, embedded_mnist};
    use crate::video::clips::{ClipLayout, read_clips};

    fn small() -> MovingMnistSpec {
        MovingMnistSpec {
            frames: 12,
            ..MovingMnistSpec::srivastava().at_size(32)
        }
    }

    /// Three 2x2 "digits" of classes 0, 1, 2 whose pixels are all 10 * (class + 1) as bytes.
    fn flat_digits() -> ImageDataset {
        ImageDataset {
            images: [10.0f32, 20.0, 30.0]
                .iter()
                .flat_map(|&b| [b / 127.5 - 1.0; 4])
                .collect(),
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
    fn at_size_64_is_srivastava_and_32_has_16_pixel_digits() {
        let spec = MovingMnistSpec::srivastava();
        assert_eq!(spec.at_size(64), spec);
        let small = spec.at_size(32);
        assert_eq!((small.digit_size, small.speed), (16, 1.6));
        small.validate().unwrap();
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_clip_i_does_not_depend_on_n() {
        let digits = embedded_mnist(Split::Test);
        let five = generate(&small(), &digits, 5, 7).unwrap();
        assert_eq!(generate(&small(), &digits, 5, 7).unwrap(), five);
        let three = generate(&small(), &digits, 3, 7).unwrap();
        for i in 0..3 {
            assert_eq!(three.clip(i), five.clip(i));
            let (clip, label) = generate_clip(&small(), &digits, 7, i).unwrap();
            assert_eq!(
                (&clip[..], label),
                (five.clip(i), five.labels.as_ref().unwrap()[i])
            );
        }
        assert_ne!(generate(&small(), &digits, 3, 8).unwrap(), three);
        assert_ne!(five.clip(0), five.clip(1));
    }

    #[test]
    fn digits_stay_inside_the_frame_in_every_frame() {
        let digits = embedded_mnist(Split::Test);
        for speed in [0.7, 1.6, 5.3, 40.0] {
            let spec = MovingMnistSpec {
                speed,
                min_speed: speed / 2.0,
                digits: 3,
                ..small()
            };
            let lim = spec.free_range();
            for index in 0..20 {
                let tracks = tracks(&spec, digits.n, &mut clip_stream(1, index));
                let clip = render(&spec, &digits, &tracks);
                for (f, frame) in clip.chunks_exact(spec.size * spec.size).enumerate() {
                    let in_a_box = |y: usize, x: usize| {
                        tracks.iter().any(|t| {
                            let (top, left) = t.corners[f];
                            assert!(top <= lim && left <= lim, "{:?}", t.corners[f]);
                            (top..top + spec.digit_size).contains(&y)
                                && (left..left + spec.digit_size).contains(&x)
                        })
                    };
                    for (at, &p) in frame.iter().enumerate() {
                        let (y, x) = (at / spec.size, at % spec.size);
                        assert!(p == 0 || in_a_box(y, x), "pixel ({y}, {x}) of frame {f}");
                    }
                }
                // The digits are drawn, not just tracked.
                assert!(clip.iter().any(|&p| p > 200));
            }
        }
    }

    #[test]
    fn velocity_reflects_off_both_walls() {
        assert_eq!(bounce(9.0, 3.0, 10.0), (8.0, -3.0));
        assert_eq!(bounce(1.0, -3.0, 10.0), (2.0, 3.0));
        assert_eq!(bounce(4.0, 3.0, 10.0), (7.0, 3.0));
        // Three walls in one step: 5 + 27 = 32 -> -12 -> 12 -> 8, the velocity flipped thrice.
        assert_eq!(bounce(5.0, 27.0, 10.0), (8.0, -27.0));
        // A digit two pixels from the right wall, moving right and a little down, bounces back.
        let path = corners((0.0, 14.0), (0.5, 3.0), 16, 4);
        assert_eq!(path, [(0, 14), (1, 15), (1, 12), (2, 9)]);
    }

    #[test]
    fn a_speed_range_is_drawn_uniformly_and_a_single_speed_draws_nothing() {
        let range = MovingMnistSpec {
            speed: 1.6,
            min_speed: 0.4,
            ..small()
        };
        let mut rng = clip_stream(5, 0);
        let speeds: Vec<f64> = (0..400).map(|_| digit_speed(&range, &mut rng)).collect();
        assert!(speeds.iter().all(|s| (0.4..=1.6).contains(s)));
        let below = |x: f64| speeds.iter().filter(|&&s| s < x).count();
        // Uniform: a quarter of the range holds about a quarter of the draws.
        assert!((70..130).contains(&below(0.7)), "{}", below(0.7));
        assert!((170..230).contains(&below(1.0)), "{}", below(1.0));

        // A fixed speed leaves the stream where it was, so such clips are those made before
        // speed ranges existed.
        let fixed = small();
        let (mut drawn, mut untouched) = (clip_stream(5, 0), clip_stream(5, 0));
        assert_eq!(digit_speed(&fixed, &mut drawn), 1.6);
        assert_eq!(drawn.random::<u64>(), untouched.random::<u64>());
    }

    #[test]
    fn speed_zero_gives_identical_frames() {
        let spec = small().at_speed(0.0);
        let (clip, _) = generate_clip(&spec, &embedded_mnist(Split::Test), 3, 0).unwrap();
        let frames: Vec<&[u8]> = clip.chunks_exact(spec.size * spec.size).collect();
        assert!(frames.iter().all(|f| *f == frames[0]));
        assert!(frames[0].iter().any(|&p| p > 0));
    }

    #[test]
    fn one_digit_clips_are_labelled_with_their_digit() {
        let spec = MovingMnistSpec {
            size: 4,
            frames: 3,
            digits: 1,
            speed: 1.0,
            min_speed: 1.0,
            digit_size: 2,
        };
        let clips = generate(&spec, &flat_digits(), 30, 0).unwrap();
        let labels = clips.labels.as_ref().unwrap();
        for (i, &label) in labels.iter().enumerate() {
            let bright = clips.clip(i).iter().copied().max().unwrap();
            assert_eq!(i64::from(bright), 10 * (label + 1), "clip {i}");
        }
        // All three digits are drawn among 30 clips.
        assert!((0..3).all(|c| labels.contains(&c)));
    }

    #[test]
    fn bad_spec_fields_are_named_in_errors() {
        let base = small();
        let cases = [
            (
                MovingMnistSpec {
                    digit_size: 33,
                    ..base
                },
                "digit_size",
            ),
            (
                MovingMnistSpec {
                    digit_size: 0,
                    ..base
                },
                "digit_size",
            ),
            (MovingMnistSpec { frames: 0, ..base }, "frames"),
            (MovingMnistSpec { digits: 0, ..base }, "digits"),
            (
                MovingMnistSpec {
                    speed: -1.0,
                    ..base
                },
                "speed",
            ),
            (
                MovingMnistSpec {
                    speed: f64::NAN,
                    ..base
                },
                "speed",
            ),
            (
                MovingMnistSpec {
                    speed: f64::INFINITY,
                    ..base
                },
                "speed",
            ),
            (
                MovingMnistSpec {
                    min_speed: -0.5,
                    ..base
                },
                "min_speed",
            ),
            (
                MovingMnistSpec {
                    min_speed: base.speed + 0.1,
                    ..base
                },
                "min_speed",
            ),
            (
                MovingMnistSpec {
                    min_speed: f64::NAN,
                    ..base
                },
                "min_speed",
            ),
        ];
        for (spec, field) in cases {
            let message = spec.validate().unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("moving mnist spec field {field}: ")),
                "{message}"
            );
            assert!(generate(&spec, &flat_digits(), 1, 0).is_err());
        }
    }

    #[test]
    fn area_resize_averages_blocks_and_keeps_constants() {
        let pixels: Vec<f64> = (0..16).map(f64::from).collect();
        // 4x4 -> 2x2: each output is the mean of a 2x2 block.
        assert_eq!(
            resize_area(&pixels, (4, 4), 2),
            [2.5, 4.5, 10.5, 12.5].to_vec()
        );
        let resized = resize_area(&[7.0; 28 * 28], (28, 28), 16);
        assert!(resized.iter().all(|v| (v - 7.0).abs() < 1e-9));
        // Weights of each output pixel sum to one, for shrinking and growing.
        for (from, to) in [(28, 16), (3, 7)] {
            let weights = area_weights(from, to);
            for row in weights.chunks_exact(from) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn job_writes_the_clips_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let job = MovingMnistJob {
            spec: small(),
            clips: 4,
            seed: 11,
            out: dir.path().join("mm.npz"),
            png_dir: Some(dir.path().join("png")),
        };
        let clips = job.run(&embedded_mnist(Split::Test)).unwrap();
        assert_eq!(clips.shape(), [4, 12, 32, 32]);
        assert_eq!(read_clips(&job.out, ClipLayout::Nfhw).unwrap(), clips);
        let label = clips.labels.as_ref().unwrap()[2];
        let frame = image::open(dir.path().join(format!("png/{label}/2-5.png")))
            .unwrap()
            .into_luma8();
        let at = 5 * clips.frame_len();
        assert_eq!(
            frame.as_raw()[..],
            clips.clip(2)[at..at + clips.frame_len()]
        );
    }
}
