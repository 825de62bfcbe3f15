//! Video clips as training data: Moving MNIST made on the fly, or clips read from a file.

use super::Clips;
use super::moving_mnist::{MovingMnistSpec, generate_clip};
use crate::data::{ImageDataset, TrainingSet, scale};
use crate::vae::NamedVae;

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

/// Clips encoded once through a VAE, frame by frame: training data in its latents.
pub struct EncodedClips {
    /// (n, frames, latent channels, h, w)
    latents: Vec<f32>,
    labels: Vec<u32>,
    class_names: Vec<String>,
    /// Values a clip.
    per_clip: usize,
}

impl EncodedClips {
    /// Encodes `clips`, which must have labels, 64 frames at a time.
    pub fn encode(vae: &NamedVae, clips: &Clips, class_names: Vec<String>) -> anyhow::Result<Self> {
        let Some(labels) = &clips.labels else {
            anyhow::bail!("training clips need labels");
        };
        let latents = vae.encode_frames(&clips.clips, [clips.height, clips.width], 64)?;
        Ok(Self {
            per_clip: latents.len() / clips.n.max(1),
            latents,
            labels: labels.iter().map(|&l| l as u32).collect(),
            class_names,
        })
    }
}

impl TrainingSet for EncodedClips {
    fn epoch_len(&self) -> usize {
        self.labels.len()
    }

    fn item(&self, _epoch: u64, index: usize) -> (Vec<f32>, u32) {
        let at = index * self.per_clip;
        (
            self.latents[at..at + self.per_clip].to_vec(),
            self.labels[index],
        )
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
