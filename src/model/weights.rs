//! Moving weights between the model and tensors named as in the reference checkpoints.
//!
//! Our field names follow the reference (`blocks.3.attn.qkv.weight`) except where PyTorch names a
//! position in an `nn.Sequential`: `ada_ln_modulation` is `adaLN_modulation.1`, and the timestep
//! MLP's `mlp_in` / `mlp_out` are `mlp.0` / `mlp.2`. Linear weights are stored (in, out) here and
//! (out, in) in PyTorch, so they are transposed on the way in and out.

use std::collections::BTreeMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;

use super::Acdit;
use crate::checkpoint::module_io::{Naming, export_module, load_module, transpose};
use crate::checkpoint::tensors::{CheckpointError, HostTensor, NamedTensors};

/// The reference's name for a parameter at `path` in our module tree.
pub fn reference_name(path: &[String]) -> String {
    path.iter()
        .map(|part| match part.as_str() {
            "ada_ln_modulation" => "adaLN_modulation.1",
            "mlp_in" => "mlp.0",
            "mlp_out" => "mlp.2",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// PyTorch keeps linear weights (out, in); burn keeps them (in, out).
fn is_transposed(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with(".weight") && !name.contains("embedding_table")
}

/// The reference checkpoints' naming of our module tree.
pub const REFERENCE_NAMING: Naming = Naming {
    name: reference_name,
    transposed: is_transposed,
};

/// Host tensor in reference layout -> burn layout (transposing linear weights), and back.
pub(crate) fn to_burn_layout(name: &str, t: &HostTensor) -> HostTensor {
    if is_transposed(name, t.shape.len()) {
        transpose(t)
    } else {
        t.clone()
    }
}

impl Acdit {
    /// Loads weights named as in the reference. Every parameter must be present with its shape;
    /// extra tensors in `tensors` are an error too, since they mean the config does not fit.
    pub fn load_tensors(self, tensors: &NamedTensors) -> Result<Self, CheckpointError> {
        load_module(self, tensors, &REFERENCE_NAMING)
    }

    /// All weights under the reference's names and layouts.
    pub fn to_tensors(&self) -> NamedTensors {
        export_module(self, &REFERENCE_NAMING)
    }

    /// Loads the weights of a model to start from, which may lack the video additions that
    /// start at zero (the neighbour embedding, the MLP frame convolutions): each missing one is
    /// given as zeros, so this model computes what the start computed.
    pub fn load_start(self, tensors: &NamedTensors) -> Result<Self, CheckpointError> {
        let mut tensors = tensors.clone();
        for (name, shape) in zero_started(self.config()) {
            tensors.entry(name).or_insert_with(|| HostTensor {
                data: vec![0.0; shape.iter().product()],
                shape,
            });
        }
        self.load_tensors(&tensors)
    }
}

/// The checkpoint names and shapes (the reference's layouts) of the parameters that start at
/// zero and that a start without them may lack.
fn zero_started(config: &crate::config::ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut tensors = Vec::new();
    if config.neighbour_embedding {
        // A linear weight, (out, in).
        let shape = vec![config.hidden_size, 8 * config.latent_size];
        tensors.push(("x_neighbours.weight".to_string(), shape));
    }
    if config.mlp_frame_conv {
        for layer in 0..config.depth {
            let shape = vec![8, config.mlp_hidden()];
            tensors.push((format!("blocks.{layer}.mlp.frame_conv"), shape));
        }
    }
    tensors
}

/// `model` with every parameter cast to `dtype` as an operation of the autodiff graph: the
/// gradients of a loss computed with the result reach the original parameters, in their type.
/// Mixed-precision training computes through such a copy of its f32 weights.
pub fn cast_in_graph<M: Module>(model: M, dtype: burn::tensor::DType) -> M {
    struct Cast(burn::tensor::DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            Param::from_mapped_value(id, value.cast(self.0), mapper)
        }
    }
    model.map(&mut Cast(dtype))
}

/// Every parameter's current value, flattened and without autodiff, by reference name.
/// With `grads`, each parameter's gradient instead (parameters without one are left out).
pub fn flat_params<M: Module>(model: &M, grads: Option<&Gradients>) -> BTreeMap<String, Tensor<1>> {
    struct Collect<'a> {
        path: Vec<String>,
        grads: Option<&'a Gradients>,
        out: BTreeMap<String, Tensor<1>>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = match self.grads {
                Some(grads) => param.val().grad(grads),
                None => Some(param.val().inner()),
            };
            if let Some(value) = value {
                let numel = value.dims().iter().product::<usize>();
                self.out
                    .insert(reference_name(&self.path), value.reshape([numel]));
            }
        }
    }
    let mut collect = Collect {
        path: Vec::new(),
        grads,
        out: BTreeMap::new(),
    };
    model.visit(&mut collect);
    collect.out
}

/// The model with each parameter replaced by `update(name, flat value)`; shapes, ids and whether a
/// parameter is trained are kept. `update` gets and returns tensors without autodiff.
pub fn update_params<M: Module>(model: M, update: impl FnMut(&str, Tensor<1>) -> Tensor<1>) -> M {
    struct Update<F> {
        path: Vec<String>,
        update: F,
    }
    impl<F: FnMut(&str, Tensor<1>) -> Tensor<1>> ModuleMapper for Update<F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let require_grad = value.is_require_grad();
            let autodiff = value.is_autodiff();
            let dims = value.dims();
            let numel = dims.iter().product::<usize>();
            let flat = value.inner().reshape([numel]);
            let mut updated: Tensor<D> =
                (self.update)(&reference_name(&self.path), flat).reshape(dims);
            if autodiff {
                updated = Tensor::from_inner(updated);
            }
            if require_grad {
                updated = updated.require_grad();
            }
            Param::from_mapped_value(id, updated, mapper)
        }
    }
    model.map(&mut Update {
        path: Vec::new(),
        update,
    })
}
