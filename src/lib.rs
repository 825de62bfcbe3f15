//! ACDiT: the Autoregressive blockwise Conditional Diffusion Transformer.
//!
//! The path of the data: `data` -> `train` -> `checkpoint` -> `sampling` (with `diffusion`) ->
//! `output`. The network lives in `model` (its CPU hot spots in `fused`), the Skip-Causal
//! Attention Mask in `mask`, the token layout in `layout`, and `conformance` checks everything
//! against the reference's vectors. `video` holds clip data: files, Moving MNIST, GIFs, metrics.

pub mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod choice;
pub mod config;
pub mod conformance;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod eval;
pub mod fused;
pub mod latents;
pub mod layout;
pub mod mask;
pub mod model;
pub mod output;
pub mod sampling;
pub mod train;
pub mod understand;
pub mod vae;
pub mod video;

#[cfg(test)]
mod testing;
