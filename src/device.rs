//! Choosing where tensors live from a user's `--device` string.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// `cpu` / `flex`: the pure-Rust CPU backend. `cuda` or `cuda:N`: an NVIDIA GPU, when built with
/// the `cuda` feature.
pub fn parse(name: &str) -> Result<Device> {
    match name.split_once(':').unwrap_or((name, "0")) {
        ("cpu" | "flex", _) => Ok(Device::flex()),
        ("cuda", index) => cuda(index),
        _ => bail!("unknown device `{name}`: use cpu, cuda or cuda:N"),
    }
}

/// The float type tensors are made in. bf16 halves the memory of weights and activations; on
/// the CPU backend its matmuls convert to f32, so it saves memory, not time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// The tensor type of this precision.
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Precision::F32 => burn::tensor::DType::F32,
            Precision::Bf16 => burn::tensor::DType::BF16,
        }
    }

    /// Bytes a value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
}

impl crate::choice::Choice for Precision {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("f32", Precision::F32), ("bf16", Precision::Bf16)];
}

/// `device` with `precision` as the float type of every tensor made on it from now on; must
/// come before the first tensor (the backend fixes its defaults then).
pub fn with_precision(mut device: Device, precision: Precision) -> Result<Device> {
    if precision == Precision::Bf16 {
        if !device.supports_dtype(burn::tensor::DType::BF16) {
            bail!("{device:?} has no bf16 support: use --dtype f32");
        }
        device
            .configure(burn::tensor::FloatDType::BF16)
            .map_err(|e| anyhow::anyhow!("setting bf16 on {device:?}: {e:?}"))?;
    }
    Ok(device)
}

#[cfg(feature = "cuda")]
fn cuda(index: &str) -> Result<Device> {
    let index: usize = index
        .parse()
        .map_err(|_| anyhow::anyhow!("bad CUDA device index `{index}`"))?;
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: &str) -> Result<Device> {
    bail!("this build has no CUDA support: rebuild with `cargo build --release --features cuda`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_devices_are_named_in_the_error() {
        assert!(parse("cpu").is_ok());
        let message = parse("tpu").unwrap_err().to_string();
        assert!(message.contains("tpu"), "{message}");
    }
}
