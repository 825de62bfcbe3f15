//! The arithmetic of the fused ops on plain slices: each kernel reads its inputs once and
//! overwrites one of them with its output, split across the rayon pool by rows.
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
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer k, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4B40_0000;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^k from k's bits, without a float-to-int conversion (Rust's saturating `as` does not
    // vectorize).
    let two_k = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_BITS).wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { e_r * two_k }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Lanes of the reductions below: independent partial results that the compiler keeps in one
/// vector register (a single running total would be a serial chain of adds).
const LANES: usize = 16;

/// sum(f(a_i, b_i)), over lane-wise partial sums.
#[inline(always)]
fn sum_of(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut partial = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            partial[lane] += f(a[lane], b[lane]);
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// sum(a_i b_i w_i), over lane-wise partial sums.
#[inline(always)]
fn weighted_dot(a: &[f32], b: &[f32], w: &[f32]) -> f32 {
    let mut partial = [0.0f32; LANES];
    let chunks = a
        .chunks_exact(LANES)
        .zip(b.chunks_exact(LANES))
        .zip(w.chunks_exact(LANES));
    for ((a, b), w) in chunks {
        for lane in 0..LANES {
            partial[lane] += a[lane] * b[lane] * w[lane];
        }
    }
    let done = a.len() / LANES * LANES;
    let tail: f32 = (done..a.len()).map(|i| a[i] * b[i] * w[i]).sum();
    partial.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut partial = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for lane in 0..LANES {
            partial[lane] = partial[lane].max(chunk[lane]);
        }
    }
    partial.iter().fold(tail, |m, &v| m.max(v))
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// Tanh-GELU written as x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3): the same function,
/// finite for any x.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn gelu_rows(x: &mut [f32]) {
    for x in x.iter_mut() {
        let two_z = 2.0 * SQRT_2_OVER_PI * (*x + GELU_CUBIC * *x * *x * *x);
        *x *= sigmoid(two_z);
    }
}

/// grad <- grad * d/dx [x sigmoid(2z)] = grad * (s + 2 x s (1 - s) z'), s = sigmoid(2z).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn gelu_backward_rows(x: &[f32], grad: &mut [f32]) {
    for (grad, &x) in grad.iter_mut().zip(x) {
        let two_z = 2.0 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
        let s = sigmoid(two_z);
        let dz = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
        *grad *= s + 2.0 * x * s * (1.0 - s) * dz;
    }
}

pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(TASK_LEN).for_each(gelu_rows);
}

pub fn gelu_backward(x: &[f32], grad: &mut [f32]) {
    grad.par_chunks_mut(TASK_LEN)
        .zip(x.par_chunks(TASK_LEN))
        .for_each(|(grad, x)| gelu_backward_rows(x, grad));
}

/// Softmax of each row of `row_len` values, in place. A row of all -inf would divide by zero;
/// attention never makes one (every query sees at least itself).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn softmax_rows(x: &mut [f32], row_len: usize) {
    for row in x.chunks_exact_mut(row_len) {
        let max = max_of(row);
        row.iter_mut().for_each(|x| *x = exp(*x - max));
        let inv = 1.0 / sum_of(row, row, |x, _| x);
        row.iter_mut().for_each(|y| *y *= inv);
    }
}

/// grad <- y * (grad - sum(y * grad)) per row.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn softmax_backward_rows(y: &[f32], grad: &mut [f32], row_len: usize) {
    for (y, grad) in y.chunks_exact(row_len).zip(grad.chunks_exact_mut(row_len)) {
        let dot = sum_of(y, grad, |y, g| y * g);
        for (grad, &y) in grad.iter_mut().zip(y) {
            *grad = y * (*grad - dot);
        }
    }
}

pub fn softmax(x: &mut [f32], row_len: usize) {
    let chunk = rows_per_task(row_len) * row_len;
    x.par_chunks_mut(chunk)
        .for_each(|x| softmax_rows(x, row_len));
}

pub fn softmax_backward(y: &[f32], grad: &mut [f32], row_len: usize) {
    let chunk = rows_per_task(row_len) * row_len;
    grad.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk))
        .for_each(|(grad, y)| softmax_backward_rows(y, grad, row_len));
}

#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let sum_sq = sum_of(x, x, |a, b| a * b);
    1.0 / (sum_sq / x.len() as f32 + eps).sqrt()
}

/// x <- x / rms(x) * weight per row, rms(x) = sqrt(mean(x^2) + eps).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn rms_norm_rows(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        let r = inv_rms(row, eps);
        for (x, &w) in row.iter_mut().zip(weight) {
            *x *= r * w;
        }
    }
}

/// With g = grad * weight: grad <- r g - x r^3 mean(g x); each row adds grad x r to `d_weight`.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn rms_norm_backward_rows(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    grad: &mut [f32],
    d_weight: &mut [f32],
) {
    let row_len = weight.len();
    for (x, grad) in x.chunks_exact(row_len).zip(grad.chunks_exact_mut(row_len)) {
        let r = inv_rms(x, eps);
        let g_dot_x = weighted_dot(grad, x, weight);
        let correction = r * r * r * g_dot_x / row_len as f32;
        let values = grad.iter_mut().zip(d_weight.iter_mut()).zip(x).zip(weight);
        for (((grad, dw), &x), &w) in values {
            *dw += *grad * x * r;
            *grad = r * *grad * w - x * correction;
        }
    }
}
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    assert!(
        x.len().is_multiple_of(weight.len()),
        "rms_norm: {} values do not fit rows of {}",
        x.len(),
        weight.len()
    );
    let chunk = rows_per_task(weight.len()) * weight.len();
    x.par_chunks_mut(chunk)
        .for_each(|x| rms_norm_rows(x, weight, eps));
}

/// Overwrites `grad` (the output's) with the input's gradient; returns the weight's.
pub fn rms_norm_backward(x: &[f32], weight: &[f32], eps: f32, grad: &mut [f32]) -> Vec<f32> {
    let chunk = rows_per_task(weight.len()) * weight.len();
    grad.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .fold(
            || vec![0.0; weight.len()],
            |mut d_weight, (grad, x)| {
                rms_norm_backward_rows(x, weight, eps, grad, &mut d_weight);
                d_weight
            },
        )
        .reduce(
            || vec![0.0; weight.len()],
            |mut total, part| {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                total
            },
        )
}

/// Rotary embedding in place: x <- x cos + rotate_half(x) sin, with rotate_half(x) = [-x2, x1]
/// for the halves x1, x2 of each head's row. `x` holds runs of one row per token (a run per item
/// and head); `cos` and `sin` hold one row per token. `transpose` applies the adjoint instead, for
/// the gradient: dx1 = dy1 cos1 + dy2 sin2, dx2 = dy2 cos2 - dy1 sin1.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn rope_runs(x: &mut [f32], table: RopeTable, transpose: bool) {
    let RopeTable { cos, sin, head_dim } = table;
    let half = head_dim / 2;
    let sign = if transpose { -1.0 } else { 1.0 };
    for run in x.chunks_exact_mut(cos.len()) {
        let tables = cos.chunks_exact(head_dim).zip(sin.chunks_exact(head_dim));
        for (row, (cos, sin)) in run.chunks_exact_mut(head_dim).zip(tables) {
            let (x1, x2) = row.split_at_mut(half);
            let ((c1, c2), (s1, s2)) = (cos.split_at(half), sin.split_at(half));
            let (s_first, s_second) = if transpose { (s2, s1) } else { (s1, s2) };
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c1[i] - sign * b * s_first[i];
                x2[i] = b * c2[i] + sign * a * s_second[i];
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

pub fn rope(x: &mut [f32], table: RopeTable, transpose: bool) {
    assert!(
        table.cos.len() == table.sin.len() && x.len().is_multiple_of(table.cos.len()),
        "rope: {} values do not fit tables of {} and {}",
        x.len(),
        table.cos.len(),
        table.sin.len()
    );
    let chunk = rows_per_task(table.cos.len()) * table.cos.len();
    x.par_chunks_mut(chunk)
        .for_each(|x| rope_runs(x, table, transpose));
}

/// The length of one group's slice of `x`, checking that `x` holds `groups` groups of whole rows
/// of `d` values.
fn group_rows(x: &[f32], d: usize, groups: usize) -> usize {
    assert!(
        groups > 0 && x.len().is_multiple_of(groups * d),
        "{} values do not fit {groups} groups of rows of {d}",
        x.len()
    );
    x.len() / groups
}

/// adaLN modulation in place: x <- x (1 + scale) + shift, each group of rows of `x` with its own
/// row of `shift` and `scale` (groups x d).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn modulate_group(x: &mut [f32], shift: &[f32], scale: &[f32]) {
    for row in x.chunks_exact_mut(shift.len()) {
        for ((x, &shift), &scale) in row.iter_mut().zip(shift).zip(scale) {
            *x = *x * (1.0 + scale) + shift;
        }
    }
}

pub fn modulate(x: &mut [f32], shift: &[f32], scale: &[f32], d: usize) {
    let group_len = group_rows(x, d, shift.len() / d);
    x.par_chunks_mut(group_len)
        .zip(shift.par_chunks(d).zip(scale.par_chunks(d)))
        .for_each(|(x, (shift, scale))| modulate_group(x, shift, scale));
}

/// One group's backward: grad (the output's) becomes the input's, grad (1 + scale); adds the
/// group's sums of grad and of grad x to `d_shift` and `d_scale`.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn modulate_backward_group(
    x: &[f32],
    scale: &[f32],
    grad: &mut [f32],
    d_shift: &mut [f32],
    d_scale: &mut [f32],
) {
    let d = scale.len();
    for (grad, x) in grad.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let values = grad.iter_mut().zip(x).zip(scale);
        for (((grad, &x), &scale), (ds, dc)) in
            values.zip(d_shift.iter_mut().zip(d_scale.iter_mut()))
        {
            *ds += *grad;
            *dc += *grad * x;
            *grad *= 1.0 + scale;
        }
    }
}

/// Overwrites `grad` with x's gradient; returns those of shift and scale (groups x d).
pub fn modulate_backward(
    x: &[f32],
    scale: &[f32],
    grad: &mut [f32],
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let group_len = group_rows(x, d, scale.len() / d);
    let mut d_shift = vec![0.0; scale.len()];
    let mut d_scale = vec![0.0; scale.len()];
    grad.par_chunks_mut(group_len)
        .zip(x.par_chunks(group_len))
        .zip(scale.par_chunks(d))
        .zip(d_shift.par_chunks_mut(d).zip(d_scale.par_chunks_mut(d)))
        .for_each(|(((grad, x), scale), (d_shift, d_scale))| {
            modulate_backward_group(x, scale, grad, d_shift, d_scale)
        });
    (d_shift, d_scale)
}

/// The gated residual in place: residual <- residual + gate h, each group of rows with its own
/// row of `gate` (groups x d).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn gated_residual_group(residual: &mut [f32], h: &[f32], gate: &[f32]) {
    let d = gate.len();
    for (residual, h) in residual.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
        for ((r, &h), &gate) in residual.iter_mut().zip(h).zip(gate) {
            *r += gate * h;
        }
    }
}

pub fn gated_residual(residual: &mut [f32], h: &[f32], gate: &[f32], d: usize) {
    let group_len = group_rows(residual, d, gate.len() / d);
    assert_eq!(
        residual.len(),
        h.len(),
        "gated_residual: residual and h differ in size"
    );
    residual
        .par_chunks_mut(group_len)
        .zip(h.par_chunks(group_len).zip(gate.par_chunks(d)))
        .for_each(|(residual, (h, gate))| gated_residual_group(residual, h, gate));
}

/// One group's backward: writes h's gradient, grad gate, into `d_h`; adds the group's sum of
/// grad h to `d_gate`.
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn gated_residual_backward_group(
    h: &[f32],
    gate: &[f32],
    grad: &[f32],
    d_h: &mut [f32],
    d_gate: &mut [f32],
) {
    let d = gate.len();
    let rows = d_h
        .chunks_exact_mut(d)
        .zip(h.chunks_exact(d))
        .zip(grad.chunks_exact(d));
    for ((d_h, h), grad) in rows {
        let values = d_h
            .iter_mut()
            .zip(h)
            .zip(grad)
            .zip(gate)
            .zip(d_gate.iter_mut());
        for ((((d_h, &h), &grad), &gate), d_gate) in values {
            *d_h = grad * gate;
            *d_gate += grad * h;
        }
    }
}

/// The gradients of h and of gate from the output's (the residual's is the output's itself).
pub fn gated_residual_backward(
    h: &[f32],
    gate: &[f32],
    grad: &[f32],
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let group_len = group_rows(h, d, gate.len() / d);
    let mut d_h = vec![0.0; h.len()];
    let mut d_gate = vec![0.0; gate.len()];
    d_h.par_chunks_mut(group_len)
        .zip(d_gate.par_chunks_mut(d))
        .zip(h.par_chunks(group_len).zip(grad.par_chunks(group_len)))
        .zip(gate.par_chunks(d))
        .for_each(|(((d_h, d_gate), (h, grad)), gate)| {
            gated_residual_backward_group(h, gate, grad, d_h, d_gate)
        });
    (d_h, d_gate)
}

/// The 8 (row, column) offsets around a token, in raster order: the layout of a frame
/// convolution's weights (8 rows of one weight a channel).
const AROUND: [(isize, isize); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

/// The values of the token at (row, col) in a frame of `side` x `side` tokens of `channels`
/// values, or None past the frame's edge.
#[inline(always)]
fn token_at(frame: &[f32], side: usize, channels: usize, row: isize, col: isize) -> Option<&[f32]> {
    let inside = |i: isize| (0..side as isize).contains(&i);
    (inside(row) && inside(col))
        .then(|| &frame[(row as usize * side + col as usize) * channels..][..channels])
}

/// One frame: out = x + the sum over the 8 offsets k of weight_k x (the token at offset
/// direction * k). Direction +1 is the convolution; -1 its adjoint (the gradient of x).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn frame_conv_frame(x: &[f32], weight: &[f32], out: &mut [f32], side: usize, direction: isize) {
    let channels = weight.len() / AROUND.len();
    out.copy_from_slice(x);
    for (token, out) in out.chunks_exact_mut(channels).enumerate() {
        let (row, col) = ((token / side) as isize, (token % side) as isize);
        for (&(dr, dc), weight) in AROUND.iter().zip(weight.chunks_exact(channels)) {
            let at = (row + direction * dr, col + direction * dc);
            if let Some(source) = token_at(x, side, channels, at.0, at.1) {
                for ((out, &s), &w) in out.iter_mut().zip(source).zip(weight) {
                    *out += w * s;
                }
            }
        }
    }
}

/// One frame's share of the weight gradient: d_weight_k += grad * x (the token at offset k).
#[multiversion(targets("x86_64+avx+avx2+fma+avx512f", "x86_64+avx+avx2+fma"))]
fn frame_conv_weight_grad_frame(x: &[f32], grad: &[f32], d_weight: &mut [f32], side: usize) {
    let channels = d_weight.len() / AROUND.len();
    for (token, grad) in grad.chunks_exact(channels).enumerate() {
        let (row, col) = ((token / side) as isize, (token % side) as isize);
        for (&(dr, dc), d_weight) in AROUND.iter().zip(d_weight.chunks_exact_mut(channels)) {
            if let Some(source) = token_at(x, side, channels, row + dr, col + dc) {
                for ((d, &s), &g) in d_weight.iter_mut().zip(source).zip(grad) {
                    *d += g * s;
                }
            }
        }
    }
}

/// The number of values in one frame of `side` x `side` tokens of `weight.len() / 8` channels,
/// checking that `x` holds whole frames.
fn frame_len(x: &[f32], weight: &[f32], side: usize) -> usize {
    let frame_len = side * side * weight.len() / AROUND.len();
    assert!(
        weight.len().is_multiple_of(AROUND.len()) && x.len().is_multiple_of(frame_len),
        "{} values are not whole frames of {side} x {side} tokens of {} channels",
        x.len(),
        weight.len() / AROUND.len()
    );
    frame_len
}

/// A depthwise 3x3 convolution over each frame's token grid, added to its input (zeros past the
/// edge); weight: 8 rows (offsets in raster order, the centre left out) of one value a channel.
pub fn frame_conv(x: &[f32], weight: &[f32], side: usize) -> Vec<f32> {
    let frame_len = frame_len(x, weight, side);
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(frame_len)
        .zip(x.par_chunks(frame_len))
        .for_each(|(out, x)| frame_conv_frame(x, weight, out, side, 1));
    out
}

/// The gradients of x and of weight from the output's, `grad`.
pub fn frame_conv_backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    side: usize,
) -> (Vec<f32>, Vec<f32>) {
    let frame_len = frame_len(x, weight, side);
    let mut d_x = vec![0.0; x.len()];
    d_x.par_chunks_mut(frame_len)
        .zip(grad.par_chunks(frame_len))
        .for_each(|(d_x, grad)| frame_conv_frame(grad, weight, d_x, side, -1));
    // One partial sum a frame, added in frame order, so the sum does not depend on the split.
    let mut partials = vec![0.0; x.len() / frame_len * weight.len()];
    partials
        .par_chunks_mut(weight.len())
        .zip(x.par_chunks(frame_len).zip(grad.par_chunks(frame_len)))
        .for_each(|(d_weight, (x, grad))| frame_conv_weight_grad_frame(x, grad, d_weight, side));
    let mut d_weight = vec![0.0; weight.len()];
    for partial in partials.chunks_exact(weight.len()) {
        for (d, &p) in d_weight.iter_mut().zip(partial) {
            *d += p;
        }
    }
    (d_x, d_weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_whole_range() {
        for i in -1000..=1000 {
            let x = i as f32 * 0.087;
            let expected = (x as f64).exp();
            let relative = ((exp(x) as f64 - expected) / expected).abs();
            assert!(relative < 3e-7, "exp({x}): {} vs {expected}", exp(x));
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(-87.5) < 1e-37);
    }
}
