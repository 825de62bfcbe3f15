//! Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
//! balls around its points reaching their k-th nearest neighbour (k = 3); precision is the share
//! of generated points inside the real manifold, recall the share of real points inside the
//! generated one.

use nalgebra::DMatrix;
use rayon::prelude::*;

/// The neighbour that sets each ball's radius.
pub const K: usize = 3;
/// Rows of distances computed at once, to bound memory.
const CHUNK: usize = 1024;

/// A set of feature vectors (n, dim), row-major.
pub struct Points<'a> {
    pub values: &'a [f32],
    pub dim: usize,
}

impl Points<'_> {
    fn len(&self) -> usize {
        self.values.len() / self.dim
    }

    fn matrix(&self, rows: std::ops::Range<usize>) -> DMatrix<f32> {
        let slice = &self.values[rows.start * self.dim..rows.end * self.dim];
        DMatrix::from_row_slice(rows.len(), self.dim, slice)
    }

    fn norms(&self) -> Vec<f32> {
        self.values
            .chunks(self.dim)
            .map(|row| row.iter().map(|v| v * v).sum())
            .collect()
    }
}

/// Squared distances from each of `rows` of `a` to every point of `b`, a row at a time.
fn each_row_of_distances(a: &Points, b: &Points, mut visit: impl FnMut(usize, &[f32])) {
    let (a_norms, b_norms) = (a.norms(), b.norms());
    let b_all = b.matrix(0..b.len());
    for start in (0..a.len()).step_by(CHUNK) {
        let rows = start..(start + CHUNK).min(a.len());
        let products = a.matrix(rows.clone()) * b_all.transpose();
        let chunk: Vec<Vec<f32>> = rows
            .clone()
            .into_par_iter()
            .map(|i| {
                (0..b.len())
                    .map(|j| (a_norms[i] + b_norms[j] - 2.0 * products[(i - start, j)]).max(0.0))
                    .collect()
            })
            .collect();
        for (i, row) in rows.zip(&chunk) {
            visit(i, row);
        }
    }
}

/// Each point's squared distance to its k-th nearest neighbour in its own set (itself, at
/// distance 0, counted first).
fn radii(points: &Points) -> Vec<f32> {
    let mut radii = vec![0.0; points.len()];
    each_row_of_distances(points, points, |i, row| {
        let mut row = row.to_vec();
        let (_, kth, _) = row.select_nth_unstable_by(K, f32::total_cmp);
        radii[i] = *kth;
    });
    radii
}

/// The share of `probes` inside the manifold of `support`.
fn coverage(probes: &Points, support: &Points, support_radii: &[f32]) -> f64 {
    let mut inside = 0usize;
    each_row_of_distances(probes, support, |_, row| {
        if row.iter().zip(support_radii).any(|(d, r)| d <= r) {
            inside += 1;
        }
    });
    inside as f64 / probes.len() as f64
}

/// (precision, recall) of `generated` against `real`; each needs more than K points.
pub fn precision_recall(real: &Points, generated: &Points) -> anyhow::Result<(f64, f64)> {
    if real.dim != generated.dim {
        anyhow::bail!("feature widths differ: {} and {}", real.dim, generated.dim);
    }
    if real.len() <= K || generated.len() <= K {
        anyhow::bail!("precision and recall need more than {K} points on each side");
    }
    let (real_radii, generated_radii) = (radii(real), radii(generated));
    Ok((
        coverage(generated, real, &real_radii),
        coverage(real, generated, &generated_radii),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn cloud(n: usize, dim: usize, centre: f32, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|_| centre + rng.random_range(-1.0..1.0))
            .collect()
    }

    #[test]
    fn identical_sets_score_one_and_disjoint_ones_zero() {
        let a = cloud(200, 8, 0.0, 1);
        let points = Points { values: &a, dim: 8 };
        assert_eq!(precision_recall(&points, &points).unwrap(), (1.0, 1.0));
        let far = cloud(200, 8, 50.0, 2);
        let far = Points {
            values: &far,
            dim: 8,
        };
        assert_eq!(precision_recall(&points, &far).unwrap(), (0.0, 0.0));
        // A generated set that covers only part of the real one: full precision, lower recall.
        let part: Vec<f32> = a
            .chunks(8)
            .filter(|p| p[0] < 0.0)
            .flatten()
            .copied()
            .collect();
        let part = Points {
            values: &part,
            dim: 8,
        };
        let (precision, recall) = precision_recall(&points, &part).unwrap();
        assert_eq!(precision, 1.0);
        assert!(recall < 0.9, "{recall}");
    }
}
