//! Video clips as training data: Moving MNIST made on the fly, or clips read from a file.

use super::Clips;
use super::moving_mnist::{MovingMnistSpec, generate_clip};
use crate::data::{ImageDataset, TrainingSet, scale};

/// Moving MNIST clips generated as training asks for them. Item `index` of epoch `e` is clip
/// `e * epoch_len + index` of the seed, so no clip repeats, and a resumed run (which restores the
/// epoch and index) sees exactly the clips it would have.
pub struct GeneratedClips {
    pub spec: MovingMnistSpec,
    /// The pictures the digits come from, e.g. the MNIST training split.
    pub digits: ImageDataset,
    pub seed: u64,
    /// Clips counted as one epoch (only the data order's reshuffling depends on it).
    pub epoch_len: usize,
}

impl TrainingSet for GeneratedClips {
    fn epoch_len(&self) -> usize {
        self.epoch_len
    }

    fn item(&self, epoch: u64, index: usize) -> (Vec<f32>, u32) {
        let clip = epoch as usize * self.epoch_len + index;
        let (pixels, label) = generate_clip(&self.spec, &self.digits, self.seed, clip)
            .expect("the spec and digits were checked when the run started");
        (pixels.into_iter().map(scale).collect(), label as u32)
    }

    fn class_names(&self) -> &[String] {
        &self.digits.class_names
    }
}

/// Clips from a file, with their labels, as training data.
pub struct ClipSet {
    pub clips: Clips,
    pub labels: Vec<u32>,
    pub class_names: Vec<String>,
}

impl TrainingSet for ClipSet {
    fn epoch_len(&self) -> usize {
        self.clips.n
    }

    fn item(&self, _epoch: u64, index: usize) -> (Vec<f32>, u32) {
        let values = self.clips.clip(index).iter().copied().map(scale).collect();
        (values, self.labels[index])
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::{Split, embedded_mnist};

    #[test]
    fn generated_clips_differ_by_epoch_and_repeat_for_the_same_position() {
        let set = GeneratedClips {
            spec: MovingMnistSpec {
                frames: 3,
                digits: 1,
                ..MovingMnistSpec::srivastava().at_size(32)
            },
            digits: embedded_mnist(Split::Test).subset(0..50),
            seed: 4,
            epoch_len: 10,
        };
        let (first, label) = set.item(0, 3);
        assert_eq!(first.len(), 3 * 32 * 32);
        assert!(first.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(set.item(0, 3), (first.clone(), label));
        assert_ne!(set.item(1, 3).0, first);
    }
}
