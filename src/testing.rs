//! What the tests share: where the reference's conformance vectors live, weights loaded as
//! `acdit sample` loads them, and how far apart two runs of values are.

use std::path::PathBuf;

/// The conformance vectors: `$ACDIT_CONFORMANCE` if set, else the copy in the repository
/// (`tests/data/conformance`). Panics, naming the folder, when it is missing: the tests that read
/// it would otherwise fail with a bare "No such file or directory".
pub fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("ACDIT_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/conformance"
            ))
        });
    assert!(
        dir.is_dir(),
        "conformance vectors not found at {}: set ACDIT_CONFORMANCE to their folder",
        dir.display()
    );
    dir
}

/// Weights loaded as `acdit sample` loads them with no `--vae`: with the VAE they record
/// attached (none for a pixel model).
pub fn sampling_model(
    source: crate::checkpoint::load::WeightsSource,
    kind: crate::checkpoint::load::WeightsKind,
    device: &burn::prelude::Device,
) -> crate::sampling::SamplingModel {
    crate::sampling::load_model(source, kind, None, device)
        .unwrap()
        .with_vae(None, device)
        .unwrap()
}

/// The largest absolute difference between two runs of values of the same length.
pub fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "values to compare differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
