//! Loading any burn module from named host tensors, and exporting it back, under a naming of the
//! checkpoint it comes from: ACDiT's reference names, diffusers' VAE names. Every parameter must
//! be present with its shape, and nothing may be left over, so a config that does not fit the
//! file is an error naming the first tensor that disagrees.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use super::tensors::{CheckpointError, HostTensor, NamedTensors};

/// How a checkpoint names and lays out the parameters of a module tree.
pub struct Naming {
    /// The checkpoint's name for the parameter at this module path.
    pub name: fn(&[String]) -> String,
    /// Whether the checkpoint keeps this parameter transposed: PyTorch's linear weights are
    /// (out, in), burn's (in, out).
    pub transposed: fn(&str, usize) -> bool,
}

/// `t` transposed (a rank-2 tensor); transposing twice is the identity.
pub fn transpose(t: &HostTensor) -> HostTensor {
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
    naming: &'a Naming,
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
        let name = (self.naming.name)(&self.path);
        let ours: Vec<usize> = param.lazy_shape().dims::<D>().to_vec();
        let transposed = (self.naming.transposed)(&name, D);
        let expected: Vec<usize> = if transposed {
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
        let data = if transposed {
            transpose(found).data
        } else {
            found.data.clone()
        };
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(data, ours), &device);
        self.seen.push(name);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// `module` with every parameter taken from `tensors`.
pub fn load_module<M: Module>(
    module: M,
    tensors: &NamedTensors,
    naming: &Naming,
) -> Result<M, CheckpointError> {
    let mut loader = Loader {
        tensors,
        naming,
        path: Vec::new(),
        seen: Vec::new(),
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(error) = loader.error {
        return Err(error);
    }
    if let Some(extra) = tensors.keys().find(|k| !loader.seen.contains(k)) {
        return Err(CheckpointError::UnexpectedTensor {
            name: extra.clone(),
        });
    }
    Ok(module)
}

struct Exporter<'a> {
    naming: &'a Naming,
    path: Vec<String>,
    out: NamedTensors,
}

impl ModuleVisitor for Exporter<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = (self.naming.name)(&self.path);
        let value = param.val();
        let shape = value.dims().to_vec();
        let data = value
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        let ours = HostTensor { shape, data };
        let host = if (self.naming.transposed)(&name, D) {
            transpose(&ours)
        } else {
            ours
        };
        self.out.insert(name, host);
    }
}

/// Every parameter of `module` under the checkpoint's names and layouts.
pub fn export_module<M: Module>(module: &M, naming: &Naming) -> NamedTensors {
    let mut exporter = Exporter {
        naming,
        path: Vec::new(),
        out: NamedTensors::new(),
    };
    module.visit(&mut exporter);
    exporter.out
}

/// The names and shapes (in the checkpoint's layout) that `module` expects, without reading its
/// values: what a file must hold for [`load_module`] to accept it.
pub fn expected_shapes<M: Module>(
    module: &M,
    naming: &Naming,
) -> std::collections::BTreeMap<String, Vec<usize>> {
    struct Shapes<'a> {
        naming: &'a Naming,
        path: Vec<String>,
        out: std::collections::BTreeMap<String, Vec<usize>>,
    }
    impl ModuleVisitor for Shapes<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name = (self.naming.name)(&self.path);
            let mut shape = param.lazy_shape().dims::<D>().to_vec();
            if (self.naming.transposed)(&name, D) {
                shape.swap(0, 1);
            }
            self.out.insert(name, shape);
        }
    }
    let mut shapes = Shapes {
        naming,
        path: Vec::new(),
        out: Default::default(),
    };
    module.visit(&mut shapes);
    shapes.out
}
