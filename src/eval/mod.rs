//! How good a generator is, in the field's numbers: FID in the TF-ported Inception's feature
//! space (and in a small classifier's, for MNIST-like data), improved precision and recall, and
//! for class-conditional samples the classifier's agreement with the asked class.

pub mod chunks;
pub mod classifier;
pub mod features;
pub mod frechet;
pub mod images;
pub mod inception;
pub mod job;
pub mod manifold;
pub mod resize;
pub mod sweep;
