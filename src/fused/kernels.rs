//! The arithmetic of the fused ops on plain slices: each kernel reads its inputs once and writes
//! its output once, split across the rayon pool by rows.
//!
//! The hot loops are compiled for AVX-512 and AVX2 besides the baseline, chosen at run time, so
//! the polynomial `exp` below runs 8 or 16 lanes wide (glibc's `expf` is scalar).

use multiversion::multiversion;
use rayon::prelude::*;

/// Elements per rayon task: below this, splitting costs more than it saves.
const TASK_LEN: usize = 1 << 14;

/// Rows of `row_len` values per rayon task.
fn rows_per_task(row_len: usize) -> usize {
    (TASK_LEN / row_len.max(1)).max(1)
}

/// e^x in f32, within 2 ulp over the range where it is a normal number; 0 below it (softmax's
/// masked -inf scores included) and f32::MAX-ish above it.
///
/// Range reduction x = k ln2 + r with |r| <= ln2/2, then Cephes' degree-6 polynomial for e^r,
/// then 2^k put into the exponent bits. Branch-free, so it vectorizes.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let k = (clamped * LOG2E + ROUND) - ROUND;
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let two_k = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { e_r * two_k }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// Tanh-GELU written as x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3): the same function,
/// finite for any x.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn gelu_rows(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        let two_z = 2.0 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
        *y = x * sigmoid(two_z);
    }
}

/// dx = dy * d/dx [x sigmoid(2z)] = dy * (s + 2 x s (1 - s) z'), s = sigmoid(2z).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn gelu_backward_rows(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let two_z = 2.0 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
        let s = sigmoid(two_z);
        let dz = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
        *dx = dy * (s + 2.0 * x * s * (1.0 - s) * dz);
    }
}

pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(TASK_LEN)
        .zip(x.par_chunks(TASK_LEN))
        .for_each(|(y, x)| gelu_rows(x, y));
    y
}

pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(TASK_LEN)
        .zip(x.par_chunks(TASK_LEN).zip(dy.par_chunks(TASK_LEN)))
        .for_each(|(dx, (x, dy))| gelu_backward_rows(x, dy, dx));
    dx
}

/// Softmax of each row of `row_len` values. A row of all -inf would divide by zero; attention
/// never makes one (every query sees at least itself).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn softmax_rows(x: &[f32], y: &mut [f32], row_len: usize) {
    for (x, y) in x.chunks_exact(row_len).zip(y.chunks_exact_mut(row_len)) {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = exp(x - max);
            sum += *y;
        }
        let inv = 1.0 / sum;
        y.iter_mut().for_each(|y| *y *= inv);
    }
}

/// dx = y * (dy - sum(y * dy)) per row.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn softmax_backward_rows(y: &[f32], dy: &[f32], dx: &mut [f32], row_len: usize) {
    let rows = y
        .chunks_exact(row_len)
        .zip(dy.chunks_exact(row_len))
        .zip(dx.chunks_exact_mut(row_len));
    for ((y, dy), dx) in rows {
        let dot: f32 = y.iter().zip(dy).map(|(y, dy)| y * dy).sum();
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = y * (dy - dot);
        }
    }
}

pub fn softmax(x: &[f32], row_len: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    let chunk = rows_per_task(row_len) * row_len;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(y, x)| softmax_rows(x, y, row_len));
    y
}

pub fn softmax_backward(y: &[f32], dy: &[f32], row_len: usize) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    let chunk = rows_per_task(row_len) * row_len;
    dx.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .for_each(|(dx, (y, dy))| softmax_backward_rows(y, dy, dx, row_len));
    dx
}

#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let sum_sq: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (sum_sq / x.len() as f32 + eps).sqrt()
}

/// y = x / rms(x) * weight per row, rms(x) = sqrt(mean(x^2) + eps).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let row_len = weight.len();
    for (x, y) in x.chunks_exact(row_len).zip(y.chunks_exact_mut(row_len)) {
        let r = inv_rms(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
            *y = x * r * w;
        }
    }
}

/// With g = dy * weight: dx = r g - x r^3 mean(g x); and each row adds dy x r to `d_weight`.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn rms_norm_backward_rows(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    d_weight: &mut [f32],
) {
    let row_len = weight.len();
    let rows = x
        .chunks_exact(row_len)
        .zip(dy.chunks_exact(row_len))
        .zip(dx.chunks_exact_mut(row_len));
    for ((x, dy), dx) in rows {
        let r = inv_rms(x, eps);
        let g_dot_x: f32 = dy
            .iter()
            .zip(weight)
            .zip(x)
            .map(|((d, w), x)| d * w * x)
            .sum();
        let correction = r * r * r * g_dot_x / row_len as f32;
        let values = dx.iter_mut().zip(d_weight.iter_mut()).zip(x).zip(dy);
        for ((((dx, dw), &x), &dy), &w) in values.zip(weight) {
            *dx = r * dy * w - x * correction;
            *dw += dy * x * r;
        }
    }
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    let chunk = rows_per_task(weight.len()) * weight.len();
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(y, x)| rms_norm_rows(x, weight, eps, y));
    y
}

/// (dx, d_weight)
pub fn rms_norm_backward(x: &[f32], weight: &[f32], eps: f32, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0; x.len()];
    let chunk = rows_per_task(weight.len()) * weight.len();
    let d_weight = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .fold(
            || vec![0.0; weight.len()],
            |mut d_weight, (dx, (x, dy))| {
                rms_norm_backward_rows(x, weight, eps, dy, dx, &mut d_weight);
                d_weight
            },
        )
        .reduce(
            || vec![0.0; weight.len()],
            |mut total, part| {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                total
            },
        );
    (dx, d_weight)
}

/// Rotary embedding: y = x cos + rotate_half(x) sin, with rotate_half(x) = [-x2, x1] for the
/// halves x1, x2 of each head's row. `x` holds runs of one row per token (a run per item and
/// head); `cos` and `sin` hold one row per token. `transpose` applies the adjoint instead, for the
/// gradient: dx1 = dy1 cos1 + dy2 sin2, dx2 = dy2 cos2 - dy1 sin1.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn rope_runs(x: &[f32], table: RopeTable, y: &mut [f32], transpose: bool) {
    let RopeTable { cos, sin, head_dim } = table;
    let half = head_dim / 2;
    let runs = x.chunks_exact(cos.len()).zip(y.chunks_exact_mut(cos.len()));
    for (x, y) in runs {
        let rows = x.chunks_exact(head_dim).zip(y.chunks_exact_mut(head_dim));
        for ((x, y), (cos, sin)) in
            rows.zip(cos.chunks_exact(head_dim).zip(sin.chunks_exact(head_dim)))
        {
            let ((x1, x2), (y1, y2)) = (x.split_at(half), y.split_at_mut(half));
            let ((c1, c2), (s1, s2)) = (cos.split_at(half), sin.split_at(half));
            let sign = if transpose { -1.0 } else { 1.0 };
            let (s_first, s_second) = if transpose { (s2, s1) } else { (s1, s2) };
            for i in 0..half {
                y1[i] = x1[i] * c1[i] - sign * x2[i] * s_first[i];
                y2[i] = x2[i] * c2[i] + sign * x1[i] * s_second[i];
            }
        }
    }
}

/// The cos and sin rows of a run of tokens, each `tokens * head_dim` long.
#[derive(Clone, Copy)]
pub struct RopeTable<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub head_dim: usize,
}

pub fn rope(x: &[f32], table: RopeTable, transpose: bool) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    let chunk = rows_per_task(table.cos.len()) * table.cos.len();
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(y, x)| rope_runs(x, table, y, transpose));
    y
}
