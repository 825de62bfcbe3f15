//! Reads which digit a Moving MNIST frame shows: a 1-nearest-neighbour classifier over digit
//! crops. The crop is the digit-sized window centred on the frame's brightness centroid, for the
//! reference digits (rendered by the generator itself, from the training split) and for the
//! frames read alike, so the two meet on equal terms.

use burn::prelude::*;

use super::Clips;
use super::moving_mnist::{MovingMnistSpec, generate};
use crate::data::ImageDataset;

/// The reference crops, flattened, with their labels.
pub struct DigitReader {
    side: usize,
    /// (pixels, n)
    crops_t: Tensor<2>,
    /// |crop|^2, (1, n)
    norms: Tensor<2>,
    labels: Vec<i64>,
}

/// The `side` x `side` window of `frame` (height x width bytes) centred on its brightness
/// centroid, kept inside the frame, as values in [0, 1]. A black frame gives its centre.
pub fn digit_crop(frame: &[u8], (height, width): (usize, usize), side: usize) -> Vec<f32> {
    let (mut total, mut sum_y, mut sum_x) = (0.0, 0.0, 0.0);
    for (i, &v) in frame.iter().enumerate() {
        let v = f64::from(v);
        total += v;
        sum_y += v * (i / width) as f64;
        sum_x += v * (i % width) as f64;
    }
    let (cy, cx) = if total > 0.0 {
        (sum_y / total, sum_x / total)
    } else {
        (height as f64 / 2.0, width as f64 / 2.0)
    };
    let start = |centre: f64, len: usize| {
        let first = (centre - side as f64 / 2.0 + 0.5).floor().max(0.0) as usize;
        first.min(len.saturating_sub(side))
    };
    let (y0, x0) = (start(cy, height), start(cx, width));
    (0..side * side)
        .map(|k| f32::from(frame[(y0 + k / side) * width + x0 + k % side]) / 255.0)
        .collect()
}

impl DigitReader {
    /// References: one still frame of each of the first `count` digits of `digits`, drawn by the
    /// generator at `spec`'s frame and digit size.
    pub fn new(
        spec: &MovingMnistSpec,
        digits: &ImageDataset,
        count: usize,
        device: &Device,
    ) -> Self {
        let still = MovingMnistSpec {
            frames: 1,
            digits: 1,
            ..*spec
        }
        .at_speed(0.0);
        let count = count.min(digits.n);
        let frames = generate(&still, &digits.subset(0..count), count, 0)
            .expect("a one-frame, one-digit spec of a valid spec");
        let side = spec.digit_size;
        let crops: Vec<f32> = (0..count)
            .flat_map(|i| digit_crop(frames.frame(i, 0), (spec.size, spec.size), side))
            .collect();
        let crops =
            Tensor::<1>::from_floats(crops.as_slice(), device).reshape([count, side * side]);
        Self {
            side,
            norms: crops.clone().square().sum_dim(1).reshape([1, count]),
            crops_t: crops.transpose(),
            labels: frames.labels.expect("generated clips have labels"),
        }
    }

    /// The digit each frame of `clips` shows, (n, frames).
    pub fn read(&self, clips: &Clips) -> Vec<i64> {
        let device = self.crops_t.device();
        let pixels = self.side * self.side;
        let crops: Vec<f32> = (0..clips.n)
            .flat_map(|i| (0..clips.frames).map(move |f| (i, f)))
            .flat_map(|(i, f)| {
                digit_crop(clips.frame(i, f), (clips.height, clips.width), self.side)
            })
            .collect();
        crops
            .chunks(512 * pixels)
            .flat_map(|chunk| {
                let queries = Tensor::<1>::from_floats(chunk, &device)
                    .reshape([chunk.len() / pixels, pixels]);
                // |q - t|^2 - |q|^2 = |t|^2 - 2 q.t: the same order for each query.
                let distances = self.norms.clone() - queries.matmul(self.crops_t.clone()) * 2.0;
                let nearest: Vec<i64> = distances
                    .argmin(1)
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec()
                    .expect("indices");
                nearest
                    .into_iter()
                    .map(|k| self.labels[k as usize])
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// (frames,): the fraction of clips whose frame reads as the clip's label.
    pub fn agreement_by_frame(&self, clips: &Clips, labels: &[i64]) -> Vec<f64> {
        let read = self.read(clips);
        (0..clips.frames)
            .map(|f| {
                let right = (0..clips.n)
                    .filter(|&i| read[i * clips.frames + f] == labels[i])
                    .count();
                right as f64 / clips.n.max(1) as f64
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::{Split, embedded_mnist};

    #[test]
    fn the_crop_follows_the_digit_and_stays_in_the_frame() {
        let mut frame = vec![0u8; 10 * 10];
        frame[2 * 10 + 7] = 255;
        let crop = digit_crop(&frame, (10, 10), 4);
        // Centred on (2, 7): rows 0..4, columns 5..9; the lit pixel at (2, 2) of the crop.
        assert_eq!(crop[2 * 4 + 2], 1.0);
        assert_eq!(crop.iter().filter(|&&v| v > 0.0).count(), 1);
        frame = vec![0; 100];
        frame[99] = 255;
        let crop = digit_crop(&frame, (10, 10), 4);
        assert_eq!(crop[15], 1.0, "clamped to the bottom-right corner");
    }

    #[test]
    fn moving_test_digits_read_as_their_class() {
        let spec = MovingMnistSpec {
            frames: 6,
            digits: 1,
            ..MovingMnistSpec::srivastava().at_size(32)
        };
        let reader = DigitReader::new(&spec, &embedded_mnist(Split::Train), 3000, &Device::flex());
        let clips = generate(&spec, &embedded_mnist(Split::Test), 100, 1).unwrap();
        let labels = clips.labels.clone().unwrap();
        let agreement = reader.agreement_by_frame(&clips, &labels);
        assert!(agreement.iter().all(|&a| a > 0.75), "{agreement:?}");
        // Shuffled labels read at about chance.
        let shifted: Vec<i64> = labels.iter().map(|l| (l + 1) % 10).collect();
        let chance = reader.agreement_by_frame(&clips, &shifted);
        assert!(chance.iter().all(|&a| a < 0.3), "{chance:?}");
    }
}
