//! Fused ops for the CPU backend: tanh-GELU, softmax, RMSNorm, RoPE, adaLN's modulation and
//! gated residual, and the video MLP's frame convolution, each one pass forward and one pass
//! backward.
//!
//! Composed from burn's primitives, each of these is a chain of element-wise ops (RMSNorm is
//! seven, and autodiff records a backward step for each), and burn-flex runs them one by one on
//! one core with a scalar `expf`. On flex tensors, with or without autodiff, these functions call
//! our kernels instead; on other devices they compose the same math from primitives.

mod kernels;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::{DType, TensorData, activation};

/// tanh-GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if runs_fused(&x) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::gelu_tanh(x.into_dispatch()));
    }
    composed::gelu_tanh(x)
}

/// Softmax over the last dimension.
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if runs_fused(&x) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::softmax_last(x.into_dispatch()));
    }
    activation::softmax(x, D - 1)
}

/// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    if runs_fused(&x) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::rms_norm(
            x.into_dispatch(),
            weight.into_dispatch(),
            eps,
        ));
    }
    composed::rms_norm(x, weight, eps)
}

/// Rotary embedding x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] for the halves of the
/// last dimension. x: (n, heads, tokens, head_dim); cos, sin: (1, 1, tokens, head_dim).
pub fn rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    if runs_fused(&x) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::rope(
            x.into_dispatch(),
            cos.into_dispatch(),
            sin.into_dispatch(),
        ));
    }
    composed::rope(x, cos, sin)
}

/// adaLN modulation per group: x * (1 + scale) + shift. x: (n, groups * group_len, d); shift,
/// scale: (n, groups, d), one row for each group of `group_len` tokens.
pub fn modulate(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    if runs_fused(&x) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::modulate(
            x.into_dispatch(),
            shift.into_dispatch(),
            scale.into_dispatch(),
        ));
    }
    composed::modulate(x, shift, scale)
}

/// adaLN-Zero's gated residual per group: residual + gate * h. residual, h: (n, groups *
/// group_len, d); gate: (n, groups, d).
pub fn gated_residual(residual: Tensor<3>, h: Tensor<3>, gate: Tensor<3>) -> Tensor<3> {
    if runs_fused(&residual) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::gated_residual(
            residual.into_dispatch(),
            h.into_dispatch(),
            gate.into_dispatch(),
        ));
    }
    composed::gated_residual(residual, h, gate)
}

/// A depthwise 3x3 convolution over each frame's token grid, added to its input: x + the sum
/// over the 8 tokens around each of weight_k times that token (zeros past the frame's edge).
/// x: (n, tokens, channels), whole frames of `side` x `side` tokens in raster order; weight:
/// (8, channels), the offsets in raster order from (-1, -1) to (1, 1), the centre left out.
pub fn frame_conv(x: Tensor<3>, weight: Tensor<2>, side: usize) -> Tensor<3> {
    if runs_fused(&x) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::frame_conv(
            x.into_dispatch(),
            weight.into_dispatch(),
            side,
        ));
    }
    composed::frame_conv(x, weight, side)
}

/// The same functions composed from burn's primitives: the path on other devices, and the
/// obvious reference the kernels are tested against.
mod composed {
    use crate::model::frame_neighbours;
    use burn::prelude::*;
    use burn::tensor::activation::sigmoid;

    /// x * sigmoid(2z) is tanh-GELU, finite for any x (tanh's gradient is not).
    pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        const TWO_SQRT_2_OVER_PI: f64 = 2.0 * 0.797_884_560_802_865_4;
        let two_z = (x.clone() * x.clone() * 0.044715 + 1.0) * x.clone() * TWO_SQRT_2_OVER_PI;
        x * sigmoid(two_z)
    }

    pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
        let mean_square = x.clone().square().mean_dim(D - 1);
        let inv_rms = (mean_square + eps).sqrt().recip();
        x * inv_rms * weight.unsqueeze()
    }

    /// x (n, groups * group_len, d) viewed as (n, groups, group_len, d), combined with one row
    /// of `values` (n, groups, d) per group.
    fn per_group(
        x: Tensor<3>,
        values: Tensor<3>,
        apply: impl FnOnce(Tensor<4>, Tensor<4>) -> Tensor<4>,
    ) -> Tensor<3> {
        let [n, tokens, d] = x.dims();
        let groups = values.dims()[1];
        let grouped = x.reshape([n, groups, tokens / groups, d]);
        apply(grouped, values.unsqueeze_dim::<4>(2)).reshape([n, tokens, d])
    }

    pub fn modulate(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
        let scaled = per_group(x, scale, |x, scale| x * (scale + 1.0));
        per_group(scaled, shift, |x, shift| x + shift)
    }

    pub fn gated_residual(residual: Tensor<3>, h: Tensor<3>, gate: Tensor<3>) -> Tensor<3> {
        residual + per_group(h, gate, |h, gate| h * gate)
    }

    /// The 8 shifted copies of the grid ([`frame_neighbours`]), weighted and summed.
    pub fn frame_conv(x: Tensor<3>, weight: Tensor<2>, side: usize) -> Tensor<3> {
        let [n, tokens, channels] = x.dims();
        let around = frame_neighbours(x.clone(), side).reshape([n, tokens, 8, channels]);
        let weighted = around * weight.reshape([1, 1, 8, channels]);
        x + weighted.sum_dim(2).reshape([n, tokens, channels])
    }

    pub fn rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        // The tables are f32; a bf16 model rotates in bf16.
        let (cos, sin) = (cos.cast(x.dtype()), sin.cast(x.dtype()));
        let half = x.dims()[3] / 2;
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * cos + rotated * sin
    }
}

/// Whether `x` lives on flex (with or without autodiff) as f32, where our kernels apply.
fn runs_fused<const D: usize>(x: &Tensor<D>) -> bool {
    let on_flex = match x.device().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    };
    on_flex && x.dtype() == DType::F32
}

/// The fused ops as a burn backend extension, for flex and for autodiff over flex; the public
/// functions above route other devices to the composed ops before reaching it.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: burn::backend::Backend {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    fn modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    fn gated_residual(
        residual: FloatTensor<Self>,
        h: FloatTensor<Self>,
        gate: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    fn frame_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        side: usize,
    ) -> FloatTensor<Self>;
}

/// The values of a flex tensor in row-major order (copied only when it is a strided view).
fn values(x: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(owned_values(x.to_contiguous())),
    }
}

fn owned_values(x: FlexTensor) -> Vec<f32> {
    x.into_data()
        .try_into_vec::<f32>()
        .expect("the fused ops only run on f32 tensors")
}

fn flex_tensor(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Whether the kernels may overwrite `x`'s buffer: no one else holds it, and `x` is all of it,
/// in row-major order.
fn is_writable(x: &FlexTensor) -> bool {
    let whole_buffer = x
        .as_slice::<f32>()
        .is_some_and(|view| view.len() == x.storage::<f32>().len());
    x.is_unique() && whole_buffer
}

/// `x` as a contiguous tensor whose buffer the kernels may overwrite: `x` itself when that is
/// allowed, else one copy (a strided view is copied once, into row-major order).
fn writable(x: FlexTensor) -> FlexTensor {
    if is_writable(&x) {
        return x;
    }
    let copy = x.to_contiguous();
    if is_writable(&copy) {
        copy
    } else {
        flex_tensor(values(&x).into_owned(), x.layout().shape().clone())
    }
}

/// The values of a tensor from [`writable`], to overwrite.
fn values_mut(x: &mut FlexTensor) -> &mut [f32] {
    x.try_storage_mut::<f32>()
        .expect("writable() returns a tensor that owns its buffer")
}

fn last_dim(x: &FlexTensor) -> usize {
    let shape = x.layout().shape();
    shape[shape.num_dims() - 1]
}

fn rope_table<'a>(cos: &'a [f32], sin: &'a [f32], x: &FlexTensor) -> kernels::RopeTable<'a> {
    kernels::RopeTable {
        cos,
        sin,
        head_dim: last_dim(x),
    }
}

impl FusedOps for Flex {
    fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        let mut y = writable(x);
        kernels::gelu(values_mut(&mut y));
        y
    }

    fn softmax_last(x: FlexTensor) -> FlexTensor {
        let row_len = last_dim(&x);
        let mut y = writable(x);
        kernels::softmax(values_mut(&mut y), row_len);
        y
    }

    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let mut y = writable(x);
        kernels::rms_norm(values_mut(&mut y), &values(&weight), eps as f32);
        y
    }

    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let (cos, sin) = (values(&cos), values(&sin));
        let mut y = writable(x);
        let table = rope_table(&cos, &sin, &y);
        kernels::rope(values_mut(&mut y), table, false);
        y
    }

    fn modulate(x: FlexTensor, shift: FlexTensor, scale: FlexTensor) -> FlexTensor {
        let d = last_dim(&x);
        let mut y = writable(x);
        kernels::modulate(values_mut(&mut y), &values(&shift), &values(&scale), d);
        y
    }

    fn gated_residual(residual: FlexTensor, h: FlexTensor, gate: FlexTensor) -> FlexTensor {
        let d = last_dim(&h);
        let mut y = writable(residual);
        kernels::gated_residual(values_mut(&mut y), &values(&h), &values(&gate), d);
        y
    }

    fn frame_conv(x: FlexTensor, weight: FlexTensor, side: usize) -> FlexTensor {
        let y = kernels::frame_conv(&values(&x), &values(&weight), side);
        flex_tensor(y, x.layout().shape().clone())
    }
}

/// The input of GELU, kept for its gradient.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward(ops, grads, |x, dx| {
            kernels::gelu_backward(&values(&x), values_mut(dx));
        });
    }
}

/// The output of softmax, kept for its gradient.
#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward(ops, grads, |y, dx| {
            kernels::softmax_backward(&values(&y), values_mut(dx), last_dim(&y));
        });
    }
}

/// RMSNorm's input, weight and eps, kept for the gradients of both.
#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, weight, eps) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let mut dx = writable(dy);
        let d_weight = kernels::rms_norm_backward(
            &values(&x),
            &values(&weight),
            eps as f32,
            values_mut(&mut dx),
        );
        let [x_parent, weight_parent] = ops.parents;
        if let Some(parent) = x_parent {
            grads.register::<Flex>(parent.id, dx);
        }
        if let Some(parent) = weight_parent {
            let shape = weight.layout().shape().clone();
            grads.register::<Flex>(parent.id, flex_tensor(d_weight, shape));
        }
    }
}

/// RoPE's cos and sin tables (constants), kept to apply the adjoint rotation to the gradient.
#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_input_backward(ops, grads, |(cos, sin), dx| {
            let (cos, sin) = (values(&cos), values(&sin));
            let table = rope_table(&cos, &sin, dx);
            kernels::rope(values_mut(dx), table, true);
        });
    }
}

/// Modulation's input and scale, kept for the gradients of input, shift and scale.
#[derive(Debug)]
struct ModulateBackward;

impl Backward<Flex, 3> for ModulateBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, scale) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let mut dx = writable(dy);
        let (d_shift, d_scale) = kernels::modulate_backward(
            &values(&x),
            &values(&scale),
            values_mut(&mut dx),
            last_dim(&x),
        );
        let shape = scale.layout().shape().clone();
        let [x_parent, shift_parent, scale_parent] = ops.parents;
        if let Some(parent) = x_parent {
            grads.register::<Flex>(parent.id, dx);
        }
        if let Some(parent) = shift_parent {
            grads.register::<Flex>(parent.id, flex_tensor(d_shift, shape.clone()));
        }
        if let Some(parent) = scale_parent {
            grads.register::<Flex>(parent.id, flex_tensor(d_scale, shape));
        }
    }
}

/// The gated branch h and the gate, kept for the gradients of both; the residual's gradient is
/// the output's.
#[derive(Debug)]
struct GatedResidualBackward;

impl Backward<Flex, 3> for GatedResidualBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (h, gate) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let [residual_parent, h_parent, gate_parent] = ops.parents;
        if h_parent.is_some() || gate_parent.is_some() {
            let (d_h, d_gate) = kernels::gated_residual_backward(
                &values(&h),
                &values(&gate),
                &values(&dy),
                last_dim(&h),
            );
            if let Some(parent) = h_parent {
                grads.register::<Flex>(parent.id, flex_tensor(d_h, h.layout().shape().clone()));
            }
            if let Some(parent) = gate_parent {
                grads.register::<Flex>(
                    parent.id,
                    flex_tensor(d_gate, gate.layout().shape().clone()),
                );
            }
        }
        if let Some(parent) = residual_parent {
            grads.register::<Flex>(parent.id, dy);
        }
    }
}

/// The frame convolution's input, weight and frame side, kept for the gradients of both.
#[derive(Debug)]
struct FrameConvBackward;

impl Backward<Flex, 2> for FrameConvBackward {
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, weight, side) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let (d_x, d_weight) =
            kernels::frame_conv_backward(&values(&x), &values(&weight), &values(&dy), side);
        let [x_parent, weight_parent] = ops.parents;
        if let Some(parent) = x_parent {
            grads.register::<Flex>(parent.id, flex_tensor(d_x, x.layout().shape().clone()));
        }
        if let Some(parent) = weight_parent {
            let shape = weight.layout().shape().clone();
            grads.register::<Flex>(parent.id, flex_tensor(d_weight, shape));
        }
    }
}

/// The backward step of a one-input op: `kernel` turns the output's gradient into the input's,
/// given the state the op kept, in place when the buffer is free; the input then receives it.
fn one_input_backward<S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    kernel: impl FnOnce(S, &mut FlexTensor),
) {
    let Ops {
        parents: [parent],
        node,
        state,
    } = ops;
    let dy = grads.consume::<Flex>(&node);
    if let Some(parent) = parent {
        let mut dx = writable(dy);
        kernel(state, &mut dx);
        grads.register::<Flex>(parent.id, dx);
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                prep.finish(x.clone(), Flex::gelu_tanh(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::gelu_tanh(x.into_primitive())),
        }
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::softmax_last(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::softmax_last(x.into_primitive())),
        }
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node()];
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        match RmsNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::rms_norm(x.clone(), weight.clone(), eps);
                prep.finish((x, weight, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::rms_norm(x, weight, eps)),
        }
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RopeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::rope(x.into_primitive(), cos.clone(), sin.clone());
                prep.finish((cos, sin), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::rope(x.into_primitive(), cos, sin)),
        }
    }

    fn modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), shift.node(), scale.node()];
        let (x, shift, scale) = (
            x.into_primitive(),
            shift.into_primitive(),
            scale.into_primitive(),
        );
        match ModulateBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::modulate(x.clone(), shift, scale.clone());
                prep.finish((x, scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::modulate(x, shift, scale)),
        }
    }

    fn gated_residual(
        residual: FloatTensor<Self>,
        h: FloatTensor<Self>,
        gate: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [residual.node(), h.node(), gate.node()];
        let (residual, h, gate) = (
            residual.into_primitive(),
            h.into_primitive(),
            gate.into_primitive(),
        );
        match GatedResidualBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::gated_residual(residual, h.clone(), gate.clone());
                prep.finish((h, gate), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::gated_residual(residual, h, gate)),
        }
    }

    fn frame_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        side: usize,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node()];
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        match FrameConvBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::frame_conv(x.clone(), weight.clone(), side);
                prep.finish((x, weight, side), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::frame_conv(x, weight, side)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 2.0), device)
    }

    fn largest_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Checks that `fused` and `reference` agree, in value and in the gradients of a random
    /// weighting of the output with respect to every input.
    fn assert_same_function<const D: usize, const I: usize>(
        inputs: [Tensor<D>; I],
        fused: impl Fn(&[Tensor<D>; I]) -> Tensor<D>,
        reference: impl Fn(&[Tensor<D>; I]) -> Tensor<D>,
    ) {
        let device = Device::flex().autodiff();
        let tracked = || {
            inputs
                .clone()
                .map(|x| Tensor::from_data(x.into_data(), &device).require_grad())
        };
        let (ours, theirs) = (tracked(), tracked());
        let (y_ours, y_theirs) = (fused(&ours), reference(&theirs));
        let weights = random(y_ours.dims(), &device);
        let tolerance = 1e-5 * (1.0 + y_theirs.clone().abs().max().into_scalar::<f32>());
        let error = largest_difference(y_ours.clone(), y_theirs.clone());
        assert!(error < tolerance, "values differ by {error}");
        let grads_ours = (y_ours * weights.clone()).sum().backward();
        let grads_theirs = (y_theirs * weights).sum().backward();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let (a, b) = (a.grad(&grads_ours).unwrap(), b.grad(&grads_theirs).unwrap());
            let tolerance = 1e-4 * (1.0 + b.clone().abs().max().into_scalar::<f32>());
            let error = largest_difference(a, b);
            assert!(
                error < tolerance,
                "gradients of input {i} differ by {error}"
            );
        }
    }

    #[test]
    fn fused_gelu_matches_its_composition() {
        let device = Device::flex();
        let x = random([3, 70, 33], &device);
        assert_same_function(
            [x],
            |[x]| gelu_tanh(x.clone()),
            |[x]| composed::gelu_tanh(x.clone()),
        );
    }

    #[test]
    fn gelu_tanh_matches_the_tanh_formula_and_stays_finite() {
        let device = Device::flex().autodiff();
        let xs: Vec<f32> = (-60..=60)
            .map(|i| i as f32 * 0.25)
            .chain([-1e4, 1e4])
            .collect();
        let x = Tensor::<1>::from_floats(xs.as_slice(), &device).require_grad();
        let y = gelu_tanh(x.clone());
        let grad = x.grad(&y.clone().sum().backward()).unwrap();
        let grad = grad.into_data().try_to_vec::<f32>().unwrap();
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
        for (x, y) in xs.iter().zip(y.into_data().try_to_vec::<f32>().unwrap()) {
            let x = *x as f64;
            let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            let expected = 0.5 * x * (1.0 + z.tanh());
            assert!(
                (y as f64 - expected).abs() < 1e-5 * (1.0 + expected.abs()),
                "x {x}: {y} vs {expected}"
            );
        }
    }

    #[test]
    fn fused_softmax_matches_burns_with_masked_scores() {
        let device = Device::flex();
        // Every third score of a row masked with -inf, as attention's additive bias does.
        let mask: Vec<f32> = (0..37)
            .map(|i| if i % 3 == 1 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let mask = Tensor::<1>::from_floats(mask.as_slice(), &device).reshape([1, 1, 1, 37]);
        let x = random([2, 3, 50, 37], &device) * 4.0;
        assert_same_function(
            [x],
            |[x]| softmax(x.clone() + mask.clone().to_device(&x.device())),
            |[x]| activation::softmax(x.clone() + mask.clone().to_device(&x.device()), 3),
        );
    }

    #[test]
    fn fused_rms_norm_matches_its_composition() {
        let device = Device::flex();
        let x = random([4, 300, 24], &device);
        let weight = random([24], &device).reshape([1, 1, 24]);
        assert_same_function(
            [x, weight],
            |[x, w]| rms_norm(x.clone(), w.clone().reshape([24]), 1e-6),
            |[x, w]| composed::rms_norm(x.clone(), w.clone().reshape([24]), 1e-6),
        );
    }

    #[test]
    fn fused_modulation_matches_its_composition_on_chunked_rows() {
        let device = Device::flex();
        let x = random([3, 4 * 7, 20], &device);
        // Shift and scale as adaLN makes them: chunks of one product, so strided views.
        let ada = random([3, 4, 2 * 20], &device);
        assert_same_function(
            [x, ada],
            |[x, ada]| {
                let [shift, scale] = [0, 1].map(|i| ada.clone().narrow(2, i * 20, 20));
                modulate(x.clone(), shift, scale)
            },
            |[x, ada]| {
                let [shift, scale] = [0, 1].map(|i| ada.clone().narrow(2, i * 20, 20));
                composed::modulate(x.clone(), shift, scale)
            },
        );
    }

    #[test]
    fn fused_gated_residual_matches_its_composition() {
        let device = Device::flex();
        let (residual, h) = (
            random([2, 3 * 5, 24], &device),
            random([2, 3 * 5, 24], &device),
        );
        let gate = random([2, 3, 24], &device);
        // Padded and narrowed back, so the gate the ops see is a strided view.
        let pad = |g: &Tensor<3>| Tensor::cat(vec![g.clone(), g.zeros_like()], 1);
        assert_same_function(
            [residual, h, pad(&gate)],
            |[r, h, g]| gated_residual(r.clone(), h.clone(), g.clone().narrow(1, 0, 3)),
            |[r, h, g]| composed::gated_residual(r.clone(), h.clone(), g.clone().narrow(1, 0, 3)),
        );
    }

    #[test]
    fn fused_rope_matches_its_composition_on_strided_input() {
        let device = Device::flex();
        let (cos, sin) = (random([1, 1, 9, 8], &device), random([1, 1, 9, 8], &device));
        // A permuted view, as attention's q and k are.
        let x = random([2, 9, 3, 8], &device);
        assert_same_function(
            [x],
            |[x]| {
                rope(
                    x.clone().swap_dims(1, 2),
                    cos.clone().to_device(&x.device()),
                    sin.clone().to_device(&x.device()),
                )
            },
            |[x]| {
                composed::rope(
                    x.clone().swap_dims(1, 2),
                    cos.clone().to_device(&x.device()),
                    sin.clone().to_device(&x.device()),
                )
            },
        );
    }

    #[test]
    fn fused_frame_conv_matches_its_composition() {
        let device = Device::flex();
        // Two items of three frames of 4 x 4 tokens, 5 channels; weight (1, 8, 5), one shape
        // for both inputs.
        let side = 4;
        let x = random([2, 3 * side * side, 5], &device);
        let weight = random([1, 8, 5], &device);
        let as_weight = |w: &Tensor<3>| w.clone().reshape([8, 5]);
        assert_same_function(
            [x, weight],
            |[x, w]| frame_conv(x.clone(), as_weight(w), side),
            |[x, w]| composed::frame_conv(x.clone(), as_weight(w), side),
        );
    }
}
