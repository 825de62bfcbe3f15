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
