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

/// Host tensor in reference layout -> burn layout (transposing linear weights), and back.
pub(crate) fn to_burn_layout(name: &str, t: &HostTensor) -> HostTensor {
    if !is_transposed(name, t.shape.len()) {
        return t.clone();
    }
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    HostTensor {
        shape: vec![cols, rows],
        data,
    }
}

struct Loader<'a> {
    tensors: &'a NamedTensors,
    path: Vec<String>,
    seen: Vec<String>,
    error: Option<CheckpointError>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let name = reference_name(&self.path);
        let ours: Vec<usize> = param.lazy_shape().dims::<D>().to_vec();
        let expected: Vec<usize> = if is_transposed(&name, D) {
            vec![ours[1], ours[0]]
        } else {
            ours.clone()
        };
        let Some(found) = self.tensors.get(&name) else {
            self.error = Some(CheckpointError::MissingTensor {
                name,
                within: "the weights".into(),
            });
            return param;
        };
        if found.shape != expected {
            self.error = Some(CheckpointError::ShapeMismatch {
                name,
                expected,
                found: found.shape.clone(),
            });
            return param;
        }
        let non_finite = found.data.iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            self.error = Some(CheckpointError::NonFinite {
                name,
                count: non_finite,
                total: found.data.len(),
            });
            return param;
        }
        let host = to_burn_layout(&name, found);
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(host.data, ours), &device);
        self.seen.push(name);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

struct Exporter {
    path: Vec<String>,
    out: NamedTensors,
}

impl ModuleVisitor for Exporter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = reference_name(&self.path);
        let value = param.val();
        let shape = value.dims().to_vec();
        let data = value
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        let ours = HostTensor { shape, data };
        // Transposing twice is the identity, so the same function maps back.
        let host = to_burn_layout(&name, &ours);
        self.out.insert(name, host);
    }
}

impl Acdit {
    /// Loads weights named as in the reference. Every parameter must be present with its shape;
    /// extra tensors in `tensors` are an error too, since they mean the config does not fit.
    pub fn load_tensors(self, tensors: &NamedTensors) -> Result<Self, CheckpointError> {
        let mut loader = Loader {
            tensors,
            path: Vec::new(),
            seen: Vec::new(),
            error: None,
        };
        let model = self.map(&mut loader);
        if let Some(error) = loader.error {
            return Err(error);
        }
        if let Some(extra) = tensors.keys().find(|k| !loader.seen.contains(k)) {
            return Err(CheckpointError::UnexpectedTensor {
                name: extra.clone(),
            });
        }
        Ok(model)
    }

    /// All weights under the reference's names and layouts.
    pub fn to_tensors(&self) -> NamedTensors {
        let mut exporter = Exporter {
            path: Vec::new(),
            out: NamedTensors::new(),
        };
        self.visit(&mut exporter);
        exporter.out
    }
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
