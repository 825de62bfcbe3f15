//! Reading and writing weights: safetensors, and the release's PyTorch checkpoints.

pub mod load;
pub mod module_io;
pub mod release;
pub mod tensors;
pub mod torch;
