//! Feature statistics (mean and unbiased covariance, in f64, as `np.cov`) and the Fréchet
//! distance between two of them: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
//!
//! The trace of the square root is taken as that of (S_a^(1/2) S_b S_a^(1/2))^(1/2), which has
//! the same eigenvalues as S_a S_b but is symmetric: two symmetric eigendecompositions, with no
//! complex parts to discard (scipy's `sqrtm` of the product meets them when the product is
//! nearly singular).

use std::path::Path;

use anyhow::{Context, Result, bail};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::output::{NpyArray, NumpyFile, read_numpy, write_npz_arrays};

/// The mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub mu: DVector<f64>,
    pub sigma: DMatrix<f64>,
    /// Vectors the statistics were taken over.
    pub count: usize,
}

impl FeatureStats {
    /// Statistics of `features` (n, dim), row-major; n must be at least 2.
    pub fn of<T: Copy + Into<f64>>(features: &[T], dim: usize) -> Result<Self> {
        let n = features.len() / dim.max(1);
        if dim == 0 || n < 2 || features.len() != n * dim {
            bail!(
                "statistics need at least 2 vectors of one width ({} values, width {dim})",
                features.len()
            );
        }
        let x = DMatrix::from_row_iterator(n, dim, features.iter().map(|&v| v.into()));
        let mu = x.row_mean().transpose();
        let centred = DMatrix::from_fn(n, dim, |r, c| x[(r, c)] - mu[c]);
        let sigma = (centred.transpose() * &centred) / (n - 1) as f64;
        Ok(Self {
            mu,
            sigma,
            count: n,
        })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Writes `mu` (dim) and `sigma` (dim, dim) as f64 in an `.npz`, pytorch-fid's layout.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let mu: Vec<f64> = self.mu.iter().copied().collect();
        // nalgebra is column-major; sigma is symmetric, so its bytes are the row-major ones.
        let sigma: Vec<f64> = self.sigma.as_slice().to_vec();
        write_npz_arrays(
            path,
            &[
                NpyArray::f64("mu", &[d], &mu),
                NpyArray::f64("sigma", &[d, d], &sigma),
                NpyArray::i64("count", &[self.count as i64]),
            ],
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a statistics `.npz` (`mu`, `sigma`; f64 or f32), checking the shapes.
    pub fn load(path: &Path) -> Result<Self> {
        let NumpyFile::Npz(arrays) = read_numpy(path)? else {
            bail!(
                "{}: a statistics file is an .npz with `mu` and `sigma`",
                path.display()
            );
        };
        Self::from_arrays(&arrays, "", path)
    }

    /// The statistics `{prefix}mu` and `{prefix}sigma` (and `count`) among the arrays of the
    /// `.npz` at `path`, checking the shapes.
    pub fn from_arrays(arrays: &[NpyArray], prefix: &str, path: &Path) -> Result<Self> {
        let find = |name: &str| {
            let name = format!("{prefix}{name}");
            arrays
                .iter()
                .find(|a| a.name == name)
                .with_context(|| format!("{}: no `{name}` array", path.display()))
        };
        let (mu, sigma) = (find("mu")?, find("sigma")?);
        let d = mu.shape.first().copied().unwrap_or(0);
        if mu.shape.len() != 1 || sigma.shape != [d, d] {
            bail!(
                "{}: `{prefix}mu` {:?} and `{prefix}sigma` {:?} are not (d) and (d, d)",
                path.display(),
                mu.shape,
                sigma.shape
            );
        }
        let values = |a: &NpyArray| {
            a.to_f64().with_context(|| {
                format!(
                    "{}: `{}` is {}, not a float array",
                    path.display(),
                    a.name,
                    a.dtype
                )
            })
        };
        let count = arrays
            .iter()
            .find(|a| a.name == "count")
            .and_then(|a| a.to_i64())
            .and_then(|v| v.first().copied())
            .unwrap_or(0) as usize;
        Ok(Self {
            mu: DVector::from_vec(values(mu)?),
            sigma: DMatrix::from_row_slice(d, d, &values(sigma)?),
            count,
        })
    }
}

/// Square root of a symmetric positive semi-definite matrix; negative eigenvalues (rounding)
/// count as zero.
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(m.clone());
    let roots = eigen.eigenvalues.map(|v| v.max(0.0).sqrt());
    let v = &eigen.eigenvectors;
    v * DMatrix::from_diagonal(&roots) * v.transpose()
}

/// The Fréchet distance between two Gaussians; errors when their widths differ.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim() != b.dim() {
        bail!("feature widths differ: {} and {}", a.dim(), b.dim());
    }
    let diff = &a.mu - &b.mu;
    let root_a = sqrt_psd(&a.sigma);
    let inner = &root_a * &b.sigma * &root_a;
    let inner = (&inner + inner.transpose()) * 0.5;
    let trace_root: f64 = SymmetricEigen::new(inner)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    Ok(diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - 2.0 * trace_root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tensors::SafetensorsFile;
    use crate::testing::conformance_dir;

    fn f64_rows(file: &SafetensorsFile, name: &str) -> (Vec<f64>, usize) {
        let (shape, values) = file.f64(name).unwrap();
        (values, shape[1])
    }

    #[test]
    fn the_shared_case_and_identical_sets() {
        let file =
            SafetensorsFile::open(&conformance_dir().join("inception/inception.safetensors"))
                .unwrap();
        let (a, d) = f64_rows(&file, "fid.a");
        let (b, _) = f64_rows(&file, "fid.b");
        let expected = file.f64("fid.value").unwrap().1[0];
        let (a, b) = (
            FeatureStats::of(&a, d).unwrap(),
            FeatureStats::of(&b, d).unwrap(),
        );
        let distance = frechet_distance(&a, &b).unwrap();
        assert!(
            ((distance - expected) / expected).abs() < 1e-6,
            "{distance} against {expected}"
        );
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        let other = FeatureStats::of(&[0.0f32; 8], 2).unwrap();
        assert!(frechet_distance(&a, &other).is_err());
    }

    #[test]
    fn statistics_round_trip_through_npz() {
        let features: Vec<f32> = (0..30).map(|i| ((i * 7) % 11) as f32).collect();
        // Row-major input, symmetric output: the saved sigma reads back equal.
        let stats = FeatureStats::of(&features, 3).unwrap();
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("stats.npz");
        stats.save(&path).unwrap();
        assert_eq!(FeatureStats::load(&path).unwrap(), stats);
    }
}
