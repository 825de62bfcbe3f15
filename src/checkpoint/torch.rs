//! Reads the release's PyTorch checkpoints without Python: a `torch.save` zip
//! (`<archive>/data.pkl` plus one raw little-endian file per storage,
//! `<archive>/data/<key>`) whose pickle is `{"model": state dict, "ema": state
//! dict, "args": argparse.Namespace}`.
//!
//! The pickle is run on a small virtual machine that knows only what torch.save
//! emits. It never calls into classes: tensors become views of storages,
//! `OrderedDict` a dict, and any other class (`argparse.Namespace`) an opaque
//! instance that keeps its class name and the state `BUILD` gave it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::Dtype;
use zip::ZipArchive;

use crate::checkpoint::tensors::{CheckpointError, HostTensor, NamedTensors, decode_f32};

/// One run setting from the checkpoint's `args` (an argparse.Namespace).
#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A Python list or tuple.
    List(Vec<ArgValue>),
    /// Anything else, by its Python class name.
    Other(String),
}

/// Python's own spelling, so printed args read like the run's command line.
impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::None => write!(f, "None"),
            ArgValue::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Float(x) => write!(f, "{x:?}"),
            ArgValue::Str(s) => write!(f, "{s:?}"),
            ArgValue::List(items) => {
                let items: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
            ArgValue::Other(class) => write!(f, "<{class}>"),
        }
    }
}

/// A parsed `torch.save` checkpoint. Tensors stay in the archive until
/// [`TorchCheckpoint::state_dict`] asks for them.
pub struct TorchCheckpoint {
    path: PathBuf,
    /// The archive's top folder with its slash (`checkpoint/`), before `data.pkl`.
    prefix: String,
    root: Value,
    heap: Vec<Object>,
}

impl TorchCheckpoint {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let mut zip = open_zip(path)?;
        let pickle_name = zip
            .file_names()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .ok_or_else(|| {
                format_error(
                    path,
                    "no <archive>/data.pkl inside; is this a torch.save file?".into(),
                )
            })?;
        let prefix = pickle_name
            .strip_suffix("data.pkl")
            .unwrap_or_default()
            .to_string();
        if zip.file_names().any(|n| n == format!("{prefix}byteorder")) {
            let order = read_entry(&mut zip, path, &format!("{prefix}byteorder"))?;
            if order.trim_ascii() != b"little" {
                let order = String::from_utf8_lossy(&order).into_owned();
                return Err(format_error(
                    path,
                    format!("byteorder is {order:?}; only little-endian is supported"),
                ));
            }
        }
        let pickle = read_entry(&mut zip, path, &pickle_name)?;
        let (root, heap) = Machine::run(&pickle)
            .map_err(|reason| format_error(path, format!("{pickle_name}: {reason}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            prefix,
            root,
            heap,
        })
    }

    /// The string keys of the top-level dict (`model`, `ema`, `args`), in file order.
    pub fn keys(&self) -> Vec<String> {
        self.dict(&self.root)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|(k, _)| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tensors of the state dict stored under `key` ("model" or "ema"), as
    /// contiguous row-major f32. `key == ""` reads the top-level dict itself, for
    /// files that hold a bare state dict (`torch.save(model.state_dict())`).
    /// Every entry must be a tensor.
    pub fn state_dict(&self, key: &str) -> Result<NamedTensors, CheckpointError> {
        let dict = if key.is_empty() {
            &self.root
        } else {
            self.get(key).ok_or_else(|| {
                let available = self.keys().join(", ");
                format_error(
                    &self.path,
                    format!("no entry {key:?}; top-level entries: [{available}]"),
                )
            })?
        };
        let items = self.dict(dict).ok_or_else(|| {
            format_error(
                &self.path,
                format!("entry {key:?} is not a dict of tensors"),
            )
        })?;

        let mut views = Vec::with_capacity(items.len());
        for (name, value) in items {
            let name = name.as_str().ok_or_else(|| {
                format_error(
                    &self.path,
                    format!("entry {key:?} has a key that is not a string"),
                )
            })?;
            let Value::Tensor(view) = value else {
                return Err(format_error(
                    &self.path,
                    format!("{key}[{name:?}] is not a tensor"),
                ));
            };
            views.push((name.to_string(), view.as_ref()));
        }
        self.decode(views)
    }

    /// Every tensor attribute of a TorchScript module tree (`torch.jit.save`), named by its
    /// path of attribute names (`net.layers.conv.weight`), as contiguous row-major f32.
    pub fn module_tensors(&self) -> Result<NamedTensors, CheckpointError> {
        let mut views = Vec::new();
        self.collect_module(&self.root, String::new(), 0, &mut views)?;
        if views.is_empty() {
            return Err(format_error(
                &self.path,
                "no tensors in the module tree; is this a TorchScript module?".into(),
            ));
        }
        self.decode(views)
    }

    fn collect_module<'a>(
        &'a self,
        value: &'a Value,
        prefix: String,
        depth: usize,
        out: &mut Vec<(String, &'a TensorView)>,
    ) -> Result<(), CheckpointError> {
        if depth > 64 {
            return Err(format_error(
                &self.path,
                "module tree nested too deeply".into(),
            ));
        }
        let Value::Heap(i) = value else {
            return Ok(());
        };
        let Some(Object::Instance {
            state: Some(state), ..
        }) = self.heap.get(*i)
        else {
            return Ok(());
        };
        for (name, child) in self.dict(state).unwrap_or_default() {
            let Some(name) = name.as_str() else { continue };
            let path = format!("{prefix}{name}");
            match child {
                Value::Tensor(view) => out.push((path, view.as_ref())),
                other => self.collect_module(other, format!("{path}."), depth + 1, out)?,
            }
        }
        Ok(())
    }

    /// The named views as tensors. Storages are decoded once and dropped after the last
    /// tensor that views them, so memory peaks near one copy of the weights.
    fn decode(&self, views: Vec<(String, &TensorView)>) -> Result<NamedTensors, CheckpointError> {
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for (_, view) in &views {
            *uses.entry(&view.storage.key).or_default() += 1;
        }
        let mut zip = open_zip(&self.path)?;
        let mut storages: HashMap<&str, Vec<f32>> = HashMap::new();
        let mut tensors = NamedTensors::new();
        for (name, view) in &views {
            let storage = &view.storage;
            let key = storage.key.as_str();
            if !storages.contains_key(key) {
                let values = self.read_storage(&mut zip, storage, name)?;
                storages.insert(key, values);
            }
            let tensor = materialise(view, &storages[key])
                .map_err(|reason| format_error(&self.path, format!("tensor {name}: {reason}")))?;
            tensors.insert(name.clone(), tensor);
            let left = uses.entry(key).or_default();
            *left = left.saturating_sub(1);
            if *left == 0 {
                storages.remove(key);
            }
        }
        Ok(tensors)
    }

    /// The run's settings: the fields of `args` that are plain values (or lists of
    /// them). Empty when the checkpoint has no `args`.
    pub fn args(&self) -> BTreeMap<String, ArgValue> {
        let fields = match self.get("args") {
            Some(Value::Heap(i)) => match self.heap.get(*i) {
                Some(Object::Instance {
                    state: Some(state), ..
                }) => self.dict(state),
                Some(Object::Dict(items)) => Some(items.as_slice()),
                _ => None,
            },
            _ => None,
        };
        fields
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), self.arg_value(v, 0))))
            .collect()
    }

    fn dict<'a>(&'a self, value: &Value) -> Option<&'a [(Value, Value)]> {
        match value {
            Value::Heap(i) => match self.heap.get(*i) {
                Some(Object::Dict(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    /// A top-level entry; the last one wins, as when Python sets a key twice.
    fn get(&self, key: &str) -> Option<&Value> {
        self.dict(&self.root)?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Depth-limited, since a hostile pickle can make a list contain itself.
    fn arg_value(&self, value: &Value, depth: usize) -> ArgValue {
        let list = |items: &[Value]| {
            if depth > 8 {
                ArgValue::Other("deeply nested list".into())
            } else {
                ArgValue::List(items.iter().map(|v| self.arg_value(v, depth + 1)).collect())
            }
        };
        match value {
            Value::None => ArgValue::None,
            Value::Bool(b) => ArgValue::Bool(*b),
            Value::Int(i) => ArgValue::Int(*i),
            Value::Float(x) => ArgValue::Float(*x),
            Value::Str(s) => ArgValue::Str(s.to_string()),
            Value::Tuple(items) => list(items),
            Value::Global(name) => ArgValue::Other(name.to_string()),
            Value::Storage(_) => ArgValue::Other("torch storage".into()),
            Value::Tensor(_) => ArgValue::Other("torch.Tensor".into()),
            Value::Heap(i) => match self.heap.get(*i) {
                Some(Object::List(items)) => list(items),
                Some(Object::Dict(_)) => ArgValue::Other("dict".into()),
                Some(Object::Instance { class, .. }) => ArgValue::Other(class.to_string()),
                None => ArgValue::Other("?".into()),
            },
        }
    }

    /// The whole storage `data/<key>`, decoded to f32. `tensor` names the first
    /// tensor that needs it, for the error message.
    fn read_storage(
        &self,
        zip: &mut ZipArchive<File>,
        storage: &Storage,
        tensor: &str,
    ) -> Result<Vec<f32>, CheckpointError> {
        let entry = format!("{}data/{}", self.prefix, storage.key);
        let unsupported = || CheckpointError::UnsupportedDtype {
            path: self.path.clone(),
            name: tensor.to_string(),
            dtype: storage.class.to_string(),
            wanted: "f32",
        };
        let dtype = storage_dtype(&storage.class).ok_or_else(unsupported)?;
        if zip.index_for_name(&entry).is_none() {
            return Err(format_error(
                &self.path,
                format!("storage {entry} (for tensor {tensor}) is missing from the archive"),
            ));
        }
        let bytes = read_entry(zip, &self.path, &entry)?;
        if bytes.len() % dtype.size() != 0 {
            return Err(format_error(
                &self.path,
                format!(
                    "storage {entry} has {} bytes, not a whole number of {dtype:?}",
                    bytes.len()
                ),
            ));
        }
        decode_f32(dtype, &bytes).ok_or_else(unsupported)
    }
}

fn format_error(path: &Path, reason: String) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    }
}

fn open_zip(path: &Path) -> Result<ZipArchive<File>, CheckpointError> {
    let file = File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ZipArchive::new(file).map_err(|e| {
        format_error(
            path,
            format!("not a zip archive ({e}); only torch.save's zip format (PyTorch >= 1.6) is supported"),
        )
    })
}

fn read_entry(
    zip: &mut ZipArchive<File>,
    path: &Path,
    name: &str,
) -> Result<Vec<u8>, CheckpointError> {
    let mut bytes = Vec::new();
    zip.by_name(name)
        .map_err(|e| e.to_string())
        .and_then(|mut entry| entry.read_to_end(&mut bytes).map_err(|e| e.to_string()))
        .map_err(|e| format_error(path, format!("reading {name}: {e}")))?;
    Ok(bytes)
}

/// torch's storage classes (`torch.FloatStorage`) as element types.
fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class.strip_prefix("torch.")? {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ByteStorage" => Dtype::U8,
        _ => return None,
    })
}

/// Copies the strided view `t` out of its decoded storage into a contiguous
/// row-major tensor of shape `t.size`, after checking that the view fits.
fn materialise(t: &TensorView, storage: &[f32]) -> Result<HostTensor, String> {
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("size overflows")?;
    let shape = t.size.clone();
    if numel == 0 {
        return Ok(HostTensor {
            shape,
            data: Vec::new(),
        });
    }
    // A dimension of size 1 is never stepped along, so its stride (which torch
    // leaves arbitrary) must not count.
    let stride: Vec<usize> = t
        .size
        .iter()
        .zip(&t.stride)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let last = t
        .size
        .iter()
        .zip(&stride)
        .try_fold(t.offset, |end, (&d, &s)| end.checked_add((d - 1).checked_mul(s)?))
        .filter(|&last| last < storage.len())
        .ok_or_else(|| {
            format!(
                "storage too short for the view (offset {}, size {:?}, stride {:?}, storage has {} elements)",
                t.offset,
                t.size,
                t.stride,
                storage.len()
            )
        })?;
    let contiguous = t
        .size
        .iter()
        .zip(&stride)
        .rev()
        .try_fold(1usize, |want, (&d, &s)| {
            (d == 1 || s == want).then(|| want * d)
        });
    let data = if contiguous.is_some() {
        storage[t.offset..=last].to_vec()
    } else {
        // A view may repeat storage elements (stride 0), so numel is not bounded
        // by the storage: ask for the memory rather than abort without it.
        let mut data = Vec::new();
        data.try_reserve_exact(numel)
            .map_err(|_| format!("view of {numel} elements does not fit in memory"))?;
        // Walk the index like an odometer, keeping the storage position in step.
        // Every position visited is <= `last`, checked above.
        let mut index = vec![0usize; shape.len()];
        let mut pos = t.offset;
        for _ in 0..numel {
            data.push(storage[pos]);
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                pos += stride[d];
                if index[d] < shape[d] {
                    break;
                }
                pos -= stride[d] * shape[d];
                index[d] = 0;
            }
        }
        data
    };
    Ok(HostTensor { shape, data })
}

/// A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`.
struct Storage {
    class: Arc<str>,
    key: String,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: a view, in elements.
struct TensorView {
    storage: Arc<Storage>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A value on the pickle machine's stack. Cheap to clone: memo lookups copy
/// values. Mutable containers live in the heap and are shared by index, so a
/// dict memoised while empty and filled later is seen filled, as in Python
/// (the test checkpoints store "ema" as a second reference to "model").
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    Tuple(Arc<[Value]>),
    /// A class or function, `module.name`.
    Global(Arc<str>),
    Storage(Arc<Storage>),
    Tensor(Arc<TensorView>),
    Heap(usize),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_index(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    fn as_indices(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(items) => items.iter().map(Value::as_index).collect(),
            _ => None,
        }
    }
}

enum Object {
    /// Entries in insertion order; a key set twice appears twice.
    Dict(Vec<(Value, Value)>),
    List(Vec<Value>),
    /// An instance of a class we do not model, with the state BUILD gave it.
    Instance {
        class: Arc<str>,
        state: Option<Value>,
    },
}

/// The pickle virtual machine, for the protocol-2 subset that torch.save writes.
struct Machine<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Vec<Object>,
}

impl<'a> Machine<'a> {
    /// Runs `code` to STOP: (the pickled value, the heap its containers live in).
    /// Errors say what went wrong and at which byte offset.
    fn run(code: &'a [u8]) -> Result<(Value, Vec<Object>), String> {
        let mut m = Machine {
            code,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            heap: Vec::new(),
        };
        loop {
            let at = m.pos;
            let op = m.take(1).map_err(|e| format!("{e} (no STOP opcode)"))?[0];
            match m.step(op) {
                Ok(Some(root)) => return Ok((root, m.heap)),
                Ok(None) => {}
                Err(e) => return Err(format!("opcode 0x{op:02x} at offset {at}: {e}")),
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.code.len() - self.pos < n {
            return Err(format!(
                "truncated: wanted {n} bytes at offset {}",
                self.pos
            ));
        }
        let bytes = &self.code[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn take_line(&mut self) -> Result<&'a str, String> {
        let rest = &self.code[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line")?;
        self.pos += len + 1;
        std::str::from_utf8(&rest[..len]).map_err(|_| "line is not UTF-8".to_string())
    }

    fn take_str(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "string is not UTF-8")?;
        Ok(Value::Str(s.into()))
    }

    /// How many values are on the stack above the last MARK; as in Python, a
    /// MARK starts a fresh stack that single pops cannot reach below.
    fn above_mark(&self) -> usize {
        self.stack.len() - self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.above_mark() == 0 {
            return Err("stack underflow".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn top(&self) -> Result<&Value, String> {
        if self.above_mark() == 0 {
            return Err("stack underflow".into());
        }
        self.stack
            .last()
            .ok_or_else(|| "stack underflow".to_string())
    }

    /// Everything pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        if mark > self.stack.len() {
            return Err("stack shorter than its MARK".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn new_object(&mut self, object: Object) -> Value {
        self.heap.push(object);
        Value::Heap(self.heap.len() - 1)
    }

    fn heap_mut(&mut self, target: &Value) -> Result<&mut Object, String> {
        match target {
            Value::Heap(i) => self
                .heap
                .get_mut(*i)
                .ok_or_else(|| "dangling reference".to_string()),
            _ => Err("target is not a dict, list or object".into()),
        }
    }

    fn memo_get(&self, index: u32) -> Result<Value, String> {
        self.memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo {index} was never set"))
    }

    fn set_items(&mut self, pairs: Vec<Value>) -> Result<(), String> {
        if !pairs.len().is_multiple_of(2) {
            return Err("odd number of items for a dict".into());
        }
        let target = self.top()?.clone();
        let Object::Dict(items) = self.heap_mut(&target)? else {
            return Err("SETITEM(S) on something that is not a dict".into());
        };
        let mut pairs = pairs.into_iter();
        while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
            items.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, values: Vec<Value>) -> Result<(), String> {
        let target = self.top()?.clone();
        let Object::List(items) = self.heap_mut(&target)? else {
            return Err("APPEND(S) on something that is not a list".into());
        };
        items.extend(values);
        Ok(())
    }

    /// REDUCE and NEWOBJ: what calling `callable(*args)` means to us.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let Value::Global(name) = callable else {
            return Err("call of something that is not a class or function".into());
        };
        let Value::Tuple(args) = args else {
            return Err(format!("{name} called with arguments that are not a tuple"));
        };
        match &*name {
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => match &args[..] {
                [Value::Storage(storage), offset, size, stride, ..] => {
                    let (offset, size, stride) =
                        (offset.as_index(), size.as_indices(), stride.as_indices());
                    match (offset, size, stride) {
                        (Some(offset), Some(size), Some(stride)) if size.len() == stride.len() => {
                            Ok(Value::Tensor(Arc::new(TensorView {
                                storage: storage.clone(),
                                offset,
                                size,
                                stride,
                            })))
                        }
                        _ => Err(format!("{name} with a bad offset, size or stride")),
                    }
                }
                _ => Err(format!("{name} without (storage, offset, size, stride)")),
            },
            "torch._utils._rebuild_parameter" => match args.first() {
                Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
                _ => Err(format!("{name} of something that is not a tensor")),
            },
            "collections.OrderedDict" => Ok(self.new_object(Object::Dict(Vec::new()))),
            _ => Ok(self.new_object(Object::Instance {
                class: name,
                state: None,
            })),
        }
    }

    /// BINPERSID: torch names each storage by `('storage', class, key, location, numel)`.
    fn persistent_load(pid: Value) -> Result<Value, String> {
        match pid {
            Value::Tuple(items) => match &items[..] {
                [
                    Value::Str(kind),
                    Value::Global(class),
                    Value::Str(key),
                    _,
                    _,
                ] if &**kind == "storage" => Ok(Value::Storage(Arc::new(Storage {
                    class: class.clone(),
                    key: key.to_string(),
                }))),
                _ => Err("persistent id is not ('storage', class, key, location, numel)".into()),
            },
            _ => Err("persistent id is not a tuple".into()),
        }
    }

    /// Executes one opcode; `Some(value)` at STOP.
    fn step(&mut self, op: u8) -> Result<Option<Value>, String> {
        let value = match op {
            0x80 => {
                // PROTO
                let proto = self.take(1)?[0];
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
                return Ok(None);
            }
            0x95 => {
                // FRAME: a length hint for buffered readers; we hold everything.
                self.take(8)?;
                return Ok(None);
            }
            b'.' => return self.pop().map(Some), // STOP
            b'(' => {
                self.marks.push(self.stack.len());
                return Ok(None);
            }
            b'0' => {
                self.pop()?; // POP
                return Ok(None);
            }
            b'1' => {
                self.pop_mark()?; // POP_MARK
                return Ok(None);
            }
            b'2' => self.top()?.clone(), // DUP
            b'}' => self.new_object(Object::Dict(Vec::new())),
            b']' => self.new_object(Object::List(Vec::new())),
            b')' => Value::Tuple(Arc::new([])),
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(i32::from_le_bytes(self.take_array()?).into()), // BININT
            b'K' => Value::Int(self.take(1)?[0].into()),                       // BININT1
            b'M' => Value::Int(u16::from_le_bytes(self.take_array()?).into()), // BININT2
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = usize::from(self.take(1)?[0]);
                let bytes = self.take(n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes does not fit in i64"));
                }
                let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut full = [fill; 8];
                full[..n].copy_from_slice(bytes);
                Value::Int(i64::from_le_bytes(full))
            }
            b'G' => Value::Float(f64::from_be_bytes(self.take_array()?)), // BINFLOAT
            b'X' => {
                // BINUNICODE
                let len = u32::from_le_bytes(self.take_array()?);
                self.take_str(len as usize)?
            }
            0x8c => {
                // SHORT_BINUNICODE
                let len = self.take(1)?[0];
                self.take_str(len.into())?
            }
            b'q' | b'r' | 0x94 => {
                // BINPUT, LONG_BINPUT, MEMOIZE: remember the top of the stack.
                let index = match op {
                    b'q' => self.take(1)?[0].into(),
                    b'r' => u32::from_le_bytes(self.take_array()?),
                    _ => u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?,
                };
                let top = self.top()?.clone();
                self.memo.insert(index, top);
                return Ok(None);
            }
            b'h' => {
                let index = self.take(1)?[0];
                self.memo_get(index.into())? // BINGET
            }
            b'j' => {
                let index = u32::from_le_bytes(self.take_array()?);
                self.memo_get(index)? // LONG_BINGET
            }
            b't' => Value::Tuple(self.pop_mark()?.into()),
            0x85..=0x87 => {
                // TUPLE1..3
                let n = usize::from(op - 0x84);
                if self.above_mark() < n {
                    return Err("stack underflow".into());
                }
                Value::Tuple(self.stack.split_off(self.stack.len() - n).into())
            }
            b's' => {
                // SETITEM
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
                return Ok(None);
            }
            b'u' => {
                let pairs = self.pop_mark()?; // SETITEMS
                self.set_items(pairs)?;
                return Ok(None);
            }
            b'a' => {
                let v = self.pop()?; // APPEND
                self.append(vec![v])?;
                return Ok(None);
            }
            b'e' => {
                let values = self.pop_mark()?; // APPENDS
                self.append(values)?;
                return Ok(None);
            }
            b'c' => {
                // GLOBAL: "module\nname\n"
                let module = self.take_line()?;
                let name = self.take_line()?;
                Value::Global(format!("{module}.{name}").into())
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(module), Some(name)) => Value::Global(format!("{module}.{name}").into()),
                    _ => return Err("STACK_GLOBAL of something that is not two strings".into()),
                }
            }
            b'R' | 0x81 => {
                // REDUCE, NEWOBJ
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)?
            }
            b'b' => {
                // BUILD: only opaque instances keep their state. A dict's state is
                // its attributes (OrderedDict's `_metadata` in state dicts), which
                // we do not need.
                let state = self.pop()?;
                let target = self.top()?.clone();
                if let Ok(Object::Instance { state: slot, .. }) = self.heap_mut(&target) {
                    *slot = Some(state);
                }
                return Ok(None);
            }
            b'Q' => {
                let pid = self.pop()?; // BINPERSID
                Self::persistent_load(pid)?
            }
            _ => return Err("unknown opcode".into()),
        };
        self.stack.push(value);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tensors::read_safetensors;
    use crate::testing::conformance_dir;
    use std::io::Write;

    #[test]
    fn torch_checkpoint_matches_safetensors_weights() -> anyhow::Result<()> {
        for model in ["img_tiny", "vid_tiny"] {
            let dir = conformance_dir().join(model);
            let expected = read_safetensors(&dir.join("weights.safetensors"))?;
            let ckpt = TorchCheckpoint::open(&dir.join("checkpoint.pt"))?;
            assert_eq!(ckpt.keys(), ["model", "ema", "args"], "{model}");
            let weights = ckpt.state_dict("model")?;
            assert_eq!(
                weights.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{model}"
            );
            for (name, t) in &expected {
                let got = &weights[name];
                assert_eq!(got.shape, t.shape, "{model} {name}");
                let bits = |t: &HostTensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(got) == bits(t), "{model} {name}: values differ");
            }
            let ema = ckpt.state_dict("ema")?;
            println!(
                "{model}: ema {} model",
                if ema == weights {
                    "equals"
                } else {
                    "differs from"
                }
            );
        }
        Ok(())
    }

    #[test]
    fn checkpoint_args_are_readable() -> anyhow::Result<()> {
        for model in ["img_tiny", "vid_tiny"] {
            let ckpt = TorchCheckpoint::open(&conformance_dir().join(model).join("checkpoint.pt"))?;
            let args = ckpt.args();
            assert!(!args.is_empty(), "{model}: no args");
            assert!(
                matches!(args.get("patch_size"), Some(ArgValue::Int(2))),
                "{model}: {args:?}"
            );
            let shown: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{model} args: {}", shown.join(" "));
        }
        Ok(())
    }

    #[test]
    fn missing_state_dict_key_error_lists_available_keys() -> anyhow::Result<()> {
        let ckpt = TorchCheckpoint::open(&conformance_dir().join("img_tiny/checkpoint.pt"))?;
        let err = ckpt.state_dict("state_dict").unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.pt") && err.contains("\"state_dict\""),
            "{err}"
        );
        assert!(err.contains("[model, ema, args]"), "{err}");
        let err = ckpt.state_dict("args").unwrap_err().to_string();
        assert!(err.contains("not a dict of tensors"), "{err}");
        let err = ckpt.state_dict("").unwrap_err().to_string();
        assert!(err.contains("is not a tensor"), "{err}");
        Ok(())
    }

    /// Writes protocol-2 pickles opcode by opcode, the way torch.save does.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(b"X")
                .op(&(s.len() as u32).to_le_bytes())
                .op(s.as_bytes())
        }
        fn int(&mut self, i: u16) -> &mut Self {
            self.op(b"M").op(&i.to_le_bytes())
        }
        fn ints(&mut self, values: &[u16]) -> &mut Self {
            self.op(b"(");
            for &v in values {
                self.int(v);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(('storage', class, key, 'cpu', 0), offset, size, stride, False, OrderedDict())`
        fn tensor(
            &mut self,
            class: &str,
            key: &str,
            offset: u16,
            size: &[u16],
            stride: &[u16],
        ) -> &mut Self {
            self.op(b"ctorch._utils\n_rebuild_tensor_v2\n(")
                .op(b"(")
                .str("storage")
                .op(format!("ctorch\n{class}\n").as_bytes())
                .str(key)
                .str("cpu")
                .int(0)
                .op(b"tQ")
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(b"\x89ccollections\nOrderedDict\n)Rq\x00tR")
        }
    }

    /// A torch.save-style zip: `archive/data.pkl`, `archive/byteorder`, and the storages.
    fn write_torch_zip(
        path: &Path,
        pickle: &[u8],
        storages: &[(&str, Vec<u8>)],
    ) -> anyhow::Result<()> {
        let mut zip = zip::ZipWriter::new(File::create(path)?);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", options)?;
        zip.write_all(pickle)?;
        zip.start_file("archive/byteorder", options)?;
        zip.write_all(b"little")?;
        for (key, bytes) in storages {
            zip.start_file(format!("archive/data/{key}"), options)?;
            zip.write_all(bytes)?;
        }
        zip.finish()?;
        Ok(())
    }

    fn le<const N: usize, T: Copy>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| f(v)).collect()
    }

    /// A bare state dict (`torch.save(model.state_dict())`): an OrderedDict with
    /// `_metadata` set by BUILD, holding views of every supported storage type.
    fn synthetic_state_dict() -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
        let mut p = Pickle::default();
        p.op(b"\x80\x02ccollections\nOrderedDict\nq\x01)Rq\x02(");
        // storage 0: 0..12 as f32. "t" is the 3x2 transpose of the 2x3 matrix
        // starting at element 1; "row" is row 1 of it, by offset.
        p.str("t").tensor("FloatStorage", "0", 1, &[3, 2], &[1, 3]);
        p.str("row").tensor("FloatStorage", "0", 4, &[3], &[1]);
        p.str("scalar").tensor("FloatStorage", "0", 11, &[], &[]);
        p.str("empty")
            .tensor("FloatStorage", "0", 0, &[0, 4], &[4, 1]);
        p.str("bcast")
            .tensor("FloatStorage", "0", 2, &[2, 1, 2], &[1, 999, 0]);
        p.str("half").tensor("HalfStorage", "1", 0, &[2], &[1]);
        p.str("bf16").tensor("BFloat16Storage", "2", 0, &[2], &[1]);
        p.str("f64").tensor("DoubleStorage", "3", 0, &[2], &[1]);
        p.str("long").tensor("LongStorage", "4", 0, &[2], &[1]);
        p.str("int").tensor("IntStorage", "5", 0, &[2], &[1]);
        p.str("byte").tensor("ByteStorage", "6", 0, &[2], &[1]);
        p.op(b"u}q\x03X\x09\x00\x00\x00_metadata}sbq\x04.");
        let storages = vec![
            (
                "0",
                le(
                    &(0..12).map(|i| i as f32).collect::<Vec<_>>(),
                    f32::to_le_bytes,
                ),
            ),
            (
                "1",
                le(
                    &[half::f16::from_f32(0.5), half::f16::from_f32(-2.0)],
                    half::f16::to_le_bytes,
                ),
            ),
            (
                "2",
                le(
                    &[half::bf16::from_f32(1.5), half::bf16::from_f32(4.0)],
                    half::bf16::to_le_bytes,
                ),
            ),
            ("3", le(&[0.125f64, -8.0], f64::to_le_bytes)),
            ("4", le(&[-3i64, 1 << 20], i64::to_le_bytes)),
            ("5", le(&[7i32, -9], i32::to_le_bytes)),
            ("6", vec![0u8, 200]),
        ];
        (p.0, storages)
    }

    #[test]
    fn strided_views_and_every_storage_type_materialise_row_major() -> anyhow::Result<()> {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("state.pt");
        let (pickle, storages) = synthetic_state_dict();
        write_torch_zip(&path, &pickle, &storages)?;
        let ckpt = TorchCheckpoint::open(&path)?;
        assert!(ckpt.args().is_empty());
        let sd = ckpt.state_dict("")?;
        let t = |shape: &[usize], data: &[f32]| HostTensor {
            shape: shape.to_vec(),
            data: data.to_vec(),
        };
        assert_eq!(sd["t"], t(&[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
        assert_eq!(sd["row"], t(&[3], &[4.0, 5.0, 6.0]));
        assert_eq!(sd["scalar"], t(&[], &[11.0]));
        assert_eq!(sd["empty"], t(&[0, 4], &[]));
        assert_eq!(sd["bcast"], t(&[2, 1, 2], &[2.0, 2.0, 3.0, 3.0]));
        assert_eq!(sd["half"].data, [0.5, -2.0]);
        assert_eq!(sd["bf16"].data, [1.5, 4.0]);
        assert_eq!(sd["f64"].data, [0.125, -8.0]);
        assert_eq!(sd["long"].data, [-3.0, 1048576.0]);
        assert_eq!(sd["int"].data, [7.0, -9.0]);
        assert_eq!(sd["byte"].data, [0.0, 200.0]);
        Ok(())
    }

    #[test]
    fn opaque_objects_keep_their_state_as_args() -> anyhow::Result<()> {
        // {"args": argparse.Namespace(lr=0.5, name='x', flag=True, dims=[1, 2], big=-2**40)}
        let mut p = Pickle::default();
        p.op(b"\x80\x02}q\x00X\x04\x00\x00\x00argscargparse\nNamespace\n)\x81}(");
        p.str("lr").op(b"G\x3f\xe0\x00\x00\x00\x00\x00\x00");
        p.str("name").op(b"\x8c\x01x");
        p.str("flag").op(b"\x88");
        p.str("dims").op(b"]q\x01(K\x01K\x02e");
        p.str("big").op(b"\x8a\x06\x00\x00\x00\x00\x00\xff");
        p.str("none").op(b"N");
        p.op(b"ubs.");
        let (_, heap) = Machine::run(&p.0).map_err(anyhow::Error::msg)?;
        assert!(
            matches!(&heap[1], Object::Instance { class, state: Some(_) } if &**class == "argparse.Namespace")
        );

        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("args.pt");
        write_torch_zip(&path, &p.0, &[])?;
        let args = TorchCheckpoint::open(&path)?.args();
        assert_eq!(args["lr"], ArgValue::Float(0.5));
        assert_eq!(args["name"], ArgValue::Str("x".into()));
        assert_eq!(args["flag"], ArgValue::Bool(true));
        assert_eq!(
            args["dims"],
            ArgValue::List(vec![ArgValue::Int(1), ArgValue::Int(2)])
        );
        assert_eq!(args["big"], ArgValue::Int(-(1 << 40)));
        assert_eq!(args["none"].to_string(), "None");
        Ok(())
    }

    #[test]
    fn corrupt_torch_checkpoint_is_an_error_not_a_panic() -> anyhow::Result<()> {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("bad.pt");
        let open_and_read =
            |path: &Path| TorchCheckpoint::open(path).and_then(|c| c.state_dict(""));

        // Not a zip, and a real checkpoint truncated.
        std::fs::write(&path, b"\x80\x02}q\x00.")?;
        let err = open_and_read(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.pt") && err.contains("not a zip archive"),
            "{err}"
        );
        let real = std::fs::read(conformance_dir().join("img_tiny/checkpoint.pt"))?;
        for cut in [0, 100, real.len() / 2, real.len() - 30] {
            std::fs::write(&path, &real[..cut])?;
            assert!(TorchCheckpoint::open(&path).is_err(), "cut at {cut}");
        }

        // Every truncation of the pickle fails; garbling any one byte must not
        // panic, neither in parsing nor in reading the tensors it then describes.
        let (pickle, storages) = synthetic_state_dict();
        write_torch_zip(&path, &pickle, &storages)?;
        for cut in 0..pickle.len() {
            assert!(Machine::run(&pickle[..cut]).is_err(), "cut at {cut}");
        }
        for pos in 0..pickle.len() {
            for byte in [
                0x00,
                0x01,
                0x80,
                0xff,
                pickle[pos].wrapping_add(1),
                b'(',
                b'h',
                b'u',
                b'R',
            ] {
                let mut bad = pickle.clone();
                bad[pos] = byte;
                if let Ok((root, heap)) = Machine::run(&bad) {
                    let prefix = "archive/".into();
                    let ckpt = TorchCheckpoint {
                        path: path.clone(),
                        prefix,
                        root,
                        heap,
                    };
                    let _ = ckpt.state_dict("");
                    let _ = ckpt.args();
                }
            }
        }

        // The specific messages.
        let err = Machine::run(b"\x80\x02}\xf0.").err().unwrap_or_default();
        assert_eq!(err, "opcode 0xf0 at offset 3: unknown opcode");
        let mut short = storages.clone();
        short[0].1.truncate(4 * 6);
        write_torch_zip(&path, &pickle, &short)?;
        let err = open_and_read(&path).unwrap_err().to_string();
        assert!(err.contains("storage too short for the view"), "{err}");
        write_torch_zip(&path, &pickle, &storages[1..])?;
        let err = open_and_read(&path).unwrap_err().to_string();
        assert!(
            err.contains("storage archive/data/0") && err.contains("missing"),
            "{err}"
        );
        Ok(())
    }
}
