//! Understanding: the diffusion-trained network read as a visual encoder. ACDiT's clean path is
//! a causal transformer over clean tokens, so a model trained only to denoise also turns images
//! into features. `features` reads them out, `probe` fits a linear classifier on them, and
//! `finetune` trains the whole network with a linear head (`classify` then uses it).

pub mod features;
pub mod finetune;
pub mod images;
pub mod probe;
