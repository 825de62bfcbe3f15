//! The Skip-Causal Attention Mask (SCAM) of training, the parts of it that training computes, and
//! the small mask of a cached sampling step.

use burn::prelude::*;

/// Which keys each query may attend to during training, for `blocks` blocks of `block_len` tokens
/// laid out as [clean | noisy]; row-major (2 * blocks * block_len)^2, true = may attend.
///
/// Clean block i sees clean blocks 0..=i; noisy block i sees clean blocks 0..i and itself; nothing
/// but a noisy block itself sees noisy tokens.
pub fn skip_causal_mask(blocks: usize, block_len: usize) -> Vec<bool> {
    let half = blocks * block_len;
    let n = 2 * half;
    let block = |i: usize| (i % half) / block_len;
    let clean = |i: usize| i < half;
    (0..n * n)
        .map(|k| {
            let (q, kv) = (k / n, k % n);
            match (clean(q), clean(kv)) {
                (true, true) => block(kv) <= block(q),
                (false, true) => block(kv) < block(q),
                (false, false) => block(kv) == block(q),
                (true, false) => false,
            }
        })
        .collect()
}

/// The mask of a cached step that feeds [clean block i-1, noisy block i] after `cached` tokens of
/// earlier blocks: (2 * block_len) x (cached + 2 * block_len), true = may attend. The clean block
/// sees the cache and itself; the noisy block sees everything.
pub fn cached_step_mask(cached: usize, block_len: usize) -> Vec<bool> {
    let keys = cached + 2 * block_len;
    (0..2 * block_len * keys)
        .map(|k| {
            let (q, kv) = (k / keys, k % keys);
            q >= block_len || kv < cached + block_len
        })
        .collect()
}

/// The cache-free sampling mask for [clean blocks 0..clean_blocks | noisy block clean_blocks]:
/// the Skip-Causal Attention Mask of `clean_blocks + 1` blocks restricted to those tokens.
pub fn prefix_mask(clean_blocks: usize, block_len: usize) -> Vec<bool> {
    let half = (clean_blocks + 1) * block_len;
    let n = 2 * half;
    let full = skip_causal_mask(clean_blocks + 1, block_len);
    let kept: Vec<usize> = (0..clean_blocks * block_len)
        .chain(half + clean_blocks * block_len..n)
        .collect();
    kept.iter()
        .flat_map(|&q| kept.iter().map(move |&kv| (q, kv)))
        .map(|(q, kv)| full[q * n + kv])
        .collect()
}

/// Training's clean-to-clean part of the mask, for the clean blocks it keeps: clean block i sees
/// clean blocks 0..=i. (clean_blocks * block_len)^2, true = may attend.
///
/// Training leaves out the last clean block: only the clean blocks after it and the noisy block
/// after it would see it, and there are none, so it cannot change the loss.
pub fn clean_causal_mask(clean_blocks: usize, block_len: usize) -> Vec<bool> {
    let n = clean_blocks * block_len;
    (0..n * n)
        .map(|k| (k % n) / block_len <= (k / n) / block_len)
        .collect()
}

/// Training's noisy-to-clean part of the mask: noisy block i sees clean blocks 0..i.
/// (blocks * block_len) x ((blocks - 1) * block_len), true = may attend.
pub fn noisy_to_clean_mask(blocks: usize, block_len: usize) -> Vec<bool> {
    let keys = (blocks - 1) * block_len;
    (0..blocks * block_len * keys)
        .map(|k| (k % keys) / block_len < (k / keys) / block_len)
        .collect()
}

/// An additive attention bias from a boolean mask: 0 where allowed, -inf where not.
/// allowed: (queries x keys) row-major -> (1, 1, queries, keys).
pub fn additive_bias(allowed: &[bool], queries: usize, keys: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = allowed
        .iter()
        .map(|&a| if a { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    Tensor::<1>::from_floats(values.as_slice(), device).reshape([1, 1, queries, keys])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule stated directly on (query block, key block, halves), as the paper's figure draws it.
    fn allowed_by_rule(q: usize, kv: usize, blocks: usize, block_len: usize) -> bool {
        let half = blocks * block_len;
        let (q_noisy, kv_noisy) = (q >= half, kv >= half);
        let (qb, kb) = ((q % half) / block_len, (kv % half) / block_len);
        if kv_noisy {
            q_noisy && qb == kb
        } else if q_noisy {
            kb < qb
        } else {
            kb <= qb
        }
    }

    /// Every (blocks, block_len) with both in `blocks` x `lens`: the shapes are few enough to
    /// check them all.
    fn shapes(
        blocks: std::ops::Range<usize>,
        lens: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (usize, usize)> {
        blocks.flat_map(move |b| lens.clone().map(move |l| (b, l)))
    }

    #[test]
    fn mask_rows_follow_the_skip_causal_rule() {
        for (blocks, block_len) in shapes(1..6, 1..6) {
            let mask = skip_causal_mask(blocks, block_len);
            let n = 2 * blocks * block_len;
            assert_eq!(mask.len(), n * n);
            for q in 0..n {
                for kv in 0..n {
                    assert_eq!(mask[q * n + kv], allowed_by_rule(q, kv, blocks, block_len));
                }
            }
        }
    }

    #[test]
    fn cached_step_mask_is_the_training_mask_restricted() {
        for (blocks, block_len) in shapes(2..6, 1..5) {
            // Block i's first cached step sees what the training mask lets clean block i-1 and
            // noisy block i see, with the keys of clean blocks 0..i-1 standing in the cache.
            let i = blocks - 1;
            let cached = (i - 1) * block_len;
            let step = cached_step_mask(cached, block_len);
            let full = skip_causal_mask(blocks, block_len);
            let n = 2 * blocks * block_len;
            let half = blocks * block_len;
            let keys = cached + 2 * block_len;
            let query_rows: Vec<usize> = ((i - 1) * block_len..i * block_len)
                .chain(half + i * block_len..half + (i + 1) * block_len)
                .collect();
            let key_cols: Vec<usize> = (0..i * block_len)
                .chain(half + i * block_len..half + (i + 1) * block_len)
                .collect();
            for (r, &q) in query_rows.iter().enumerate() {
                for (c, &kv) in key_cols.iter().enumerate() {
                    assert_eq!(step[r * keys + c], full[q * n + kv]);
                }
            }
        }
    }

    #[test]
    fn training_parts_are_the_training_mask_restricted() {
        for (blocks, block_len) in shapes(1..6, 1..5) {
            let full = skip_causal_mask(blocks, block_len);
            let n = 2 * blocks * block_len;
            let half = blocks * block_len;
            let kept_clean = (blocks - 1) * block_len;
            let clean = clean_causal_mask(blocks - 1, block_len);
            for q in 0..kept_clean {
                for kv in 0..kept_clean {
                    assert_eq!(clean[q * kept_clean + kv], full[q * n + kv]);
                }
            }
            let cross = noisy_to_clean_mask(blocks, block_len);
            for q in 0..half {
                for kv in 0..kept_clean {
                    assert_eq!(cross[q * kept_clean + kv], full[(half + q) * n + kv]);
                }
            }
            // What the parts leave out: no query but itself sees the last clean block, and noisy
            // queries see only their own noisy block.
            for q in 0..n {
                for kv in kept_clean..half {
                    assert_eq!(full[q * n + kv], (kept_clean..half).contains(&q));
                }
                for kv in half..n {
                    let own = q >= half && (q - half) / block_len == (kv - half) / block_len;
                    assert_eq!(full[q * n + kv], own);
                }
            }
        }
    }

    #[test]
    fn one_block_is_full_sequence_diffusion() {
        // With a single block the noisy half attends to itself only, fully: plain DiT.
        let mask = skip_causal_mask(1, 4);
        for q in 4..8 {
            for kv in 0..8 {
                assert_eq!(mask[q * 8 + kv], kv >= 4);
            }
        }
    }
}
