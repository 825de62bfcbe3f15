//! Video data: [`Clips`] (one-channel uint8 clips), the files they are kept in (`clips`), the
//! Moving MNIST generator (`moving_mnist`), animated GIFs to look at them (`gif`), and per-frame
//! MSE and SSIM to score predicted frames (`metrics`), and clips as training data (`training`).

pub mod clips;
pub mod eval;
pub mod gif;
pub mod metrics;
pub mod moving_mnist;
pub mod output;
pub mod predict;
pub mod reader;
pub mod training;

#[cfg(test)]
mod latent_tests;

use std::path::PathBuf;

use crate::output::OutputError;

/// One-channel uint8 clips, all of the same length and frame size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clips {
    /// (n, frames, height, width), row-major.
    pub clips: Vec<u8>,
    pub n: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// (n,): a class per clip, when the clips have one.
    pub labels: Option<Vec<i64>>,
}

impl Clips {
    /// `clips`: (n, frames, height, width) for `shape` = [n, frames, height, width]; `labels`:
    /// (n,). Fails when either length does not match the shape.
    pub fn new(
        clips: Vec<u8>,
        shape: [usize; 4],
        labels: Option<Vec<i64>>,
    ) -> Result<Self, VideoError> {
        let [n, frames, height, width] = shape;
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(clips.len()) {
            return Err(VideoError::Shape(format!(
                "{} bytes do not fill clips of shape (n, frames, height, width) = {shape:?}",
                clips.len()
            )));
        }
        if let Some(labels) = labels.as_ref().filter(|l| l.len() != n) {
            return Err(VideoError::Shape(format!(
                "{} labels for {n} clips",
                labels.len()
            )));
        }
        Ok(Clips {
            clips,
            n,
            frames,
            height,
            width,
            labels,
        })
    }

    /// [n, frames, height, width].
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.frames, self.height, self.width]
    }

    /// Pixels in one frame: height * width.
    pub fn frame_len(&self) -> usize {
        self.height * self.width
    }

    /// Clip `i`: (frames, height, width). Panics if `i >= n`.
    pub fn clip(&self, i: usize) -> &[u8] {
        let len = self.frames * self.frame_len();
        &self.clips[i * len..(i + 1) * len]
    }

    /// Frame `f` of clip `i`: (height, width). Panics if `i >= n` or `f >= frames`.
    pub fn frame(&self, i: usize, f: usize) -> &[u8] {
        assert!(f < self.frames, "frame {f} of a {}-frame clip", self.frames);
        let len = self.frame_len();
        &self.clip(i)[f * len..(f + 1) * len]
    }

    /// The first `n` clips' first `frames` frames, with their labels.
    pub fn head(&self, n: usize, frames: usize) -> Result<Clips, VideoError> {
        if n > self.n || frames > self.frames {
            return Err(VideoError::Shape(format!(
                "the first {n} clips of {frames} frames asked of {} clips of {} frames",
                self.n, self.frames
            )));
        }
        let keep = frames * self.frame_len();
        let bytes = (0..n).flat_map(|i| self.clip(i)[..keep].to_vec()).collect();
        Clips::new(
            bytes,
            [n, frames, self.height, self.width],
            self.labels.as_ref().map(|l| l[..n].to_vec()),
        )
    }
}

/// Why clips could not be made, read or written; names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// Reading or writing the `.npy`/`.npz` failed; the message names the file.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The file was read but its arrays are not clips.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The GIF encoder refused the frames.
    #[error("{}: encoding GIF", path.display())]
    Gif {
        path: PathBuf,
        source: ::gif::EncodingError,
    },
    /// The digits to draw Moving MNIST from are not one-channel pictures.
    #[error("moving mnist digits: {0}")]
    Digits(String),
    /// A Moving MNIST setting is out of range.
    #[error("moving mnist spec field {field}: {reason}")]
    Spec { field: &'static str, reason: String },
    /// Buffers that do not match the shape they were given; no file involved.
    #[error("clips: {0}")]
    Shape(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_keeps_the_first_clips_and_frames() {
        let clips =
            Clips::new((0..2 * 3 * 2 * 2).collect(), [2, 3, 2, 2], Some(vec![7, 8])).unwrap();
        let head = clips.head(1, 2).unwrap();
        assert_eq!(head.shape(), [1, 2, 2, 2]);
        assert_eq!(head.clips, (0..8).collect::<Vec<u8>>());
        assert_eq!(head.labels, Some(vec![7]));
        assert!(clips.head(3, 1).is_err());
    }

    #[test]
    fn clip_and_frame_slice_the_nfhw_buffer() {
        let clips = Clips::new((0..2 * 3 * 2 * 2).collect(), [2, 3, 2, 2], None).unwrap();
        assert_eq!(clips.clip(1), &(12..24).collect::<Vec<u8>>()[..]);
        assert_eq!(clips.frame(1, 2), &[20, 21, 22, 23]);
        assert_eq!(clips.frame(0, 1), &[4, 5, 6, 7]);
    }

    #[test]
    fn new_rejects_buffers_that_do_not_fill_the_shape() {
        let short = Clips::new(vec![0; 7], [2, 1, 2, 2], None).unwrap_err();
        assert_eq!(
            short.to_string(),
            "clips: 7 bytes do not fill clips of shape (n, frames, height, width) = [2, 1, 2, 2]"
        );
        let labels = Clips::new(vec![0; 8], [2, 1, 2, 2], Some(vec![1])).unwrap_err();
        assert_eq!(labels.to_string(), "clips: 1 labels for 2 clips");
    }
}
