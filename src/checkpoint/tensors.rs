//! Host-side tensors and safetensors files: the common currency between the
//! checkpoint readers (safetensors, torch zip) and the model loader, which
//! uploads `HostTensor`s to whatever device burn runs on.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors, View};

/// A tensor on the host: f32 values in row-major order, `data.len() == shape.iter().product()`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Number of elements the shape describes (1 for a scalar, shape `()`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tensors by their checkpoint names (`blocks.3.attn.qkv.weight`), sorted.
pub type NamedTensors = BTreeMap<String, HostTensor>;

#[derive(thiserror::Error, Debug)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("checkpoint {name}: not found in {within}")]
    MissingTensor { name: String, within: String },
    #[error("checkpoint {name}: the model has no such parameter (does the config fit?)")]
    UnexpectedTensor { name: String },
    #[error(
        "checkpoint {name}: expected {}, found {}",
        shape_str(expected),
        shape_str(found)
    )]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("checkpoint {name}: {count} of its {total} values are NaN or infinite")]
    NonFinite {
        name: String,
        count: usize,
        total: usize,
    },
    #[error("{}: tensor {name} is {dtype}, which cannot be read as {wanted}", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
        wanted: &'static str,
    },
}

/// Shapes print as Python tuples, as PyTorch users read them: `(768, 256)`, `(768,)`, `()`.
fn shape_str(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// Decodes little-endian elements of `dtype` to f32 (integers by value).
/// `None` for dtypes we do not read. Shared with the torch reader, whose
/// storage types map onto the same dtypes.
pub(crate) fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => each(bytes, f32::from_le_bytes),
        Dtype::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        Dtype::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        Dtype::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        _ => return None,
    })
}

/// A safetensors file held in memory, its header parsed once; tensors are
/// decoded on request, so integer tensors (timesteps, labels, masks) can be
/// read exactly rather than through f32.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Offset of the data section: 8-byte header length + header.
    data_start: usize,
    header: Metadata,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// A file's bytes already in memory (the weights built into the binary); `path` names it in
    /// errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, CheckpointError> {
        // read_metadata checks that every tensor's byte range lies inside the file
        // and matches its shape and dtype, so slicing below cannot go out of bounds.
        let (header_len, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| CheckpointError::Format {
                path: path.to_path_buf(),
                reason: format!("not a valid safetensors file ({e})"),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            data_start: 8 + header_len,
            header,
        })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// The file's `__metadata__` strings (empty when it has none).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.header
            .metadata()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8]), CheckpointError> {
        let info = self
            .header
            .info(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
                within: self.path.display().to_string(),
            })?;
        let (start, end) = info.data_offsets;
        let bytes = &self.bytes[self.data_start + start..self.data_start + end];
        Ok((info, bytes))
    }

    fn unsupported(&self, name: &str, dtype: Dtype, wanted: &'static str) -> CheckpointError {
        CheckpointError::UnsupportedDtype {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: format!("{dtype:?}"),
            wanted,
        }
    }

    /// Every tensor, as f32.
    pub fn f32_tensors(&self) -> Result<NamedTensors, CheckpointError> {
        self.names()
            .into_iter()
            .map(|name| Ok((name.clone(), self.f32(&name)?)))
            .collect()
    }

    /// Any float or integer tensor, converted to f32.
    pub fn f32(&self, name: &str) -> Result<HostTensor, CheckpointError> {
        let (info, bytes) = self.raw(name)?;
        let data = decode_f32(info.dtype, bytes)
            .ok_or_else(|| self.unsupported(name, info.dtype, "f32"))?;
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }

    /// A float tensor as f64, exact for F64 files: (shape, values).
    pub fn f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>), CheckpointError> {
        let (info, bytes) = self.raw(name)?;
        let values = match info.dtype {
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            other => decode_f32(other, bytes)
                .ok_or_else(|| self.unsupported(name, other, "f64"))?
                .into_iter()
                .map(f64::from)
                .collect(),
        };
        Ok((info.shape.clone(), values))
    }

    /// An integer tensor (I64, I32 or U8), exactly: (shape, values).
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>), CheckpointError> {
        let (info, bytes) = self.raw(name)?;
        let values = match info.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
                .collect(),
            Dtype::U8 => bytes.iter().map(|&b| i64::from(b)).collect(),
            other => return Err(self.unsupported(name, other, "i64")),
        };
        Ok((info.shape.clone(), values))
    }

    /// A U8 or BOOL tensor (masks), exactly: (shape, values).
    pub fn u8(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>), CheckpointError> {
        let (info, bytes) = self.raw(name)?;
        match info.dtype {
            Dtype::U8 | Dtype::BOOL => Ok((info.shape.clone(), bytes.to_vec())),
            other => Err(self.unsupported(name, other, "u8")),
        }
    }
}

/// Reads every tensor of a safetensors file as f32.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors, CheckpointError> {
    SafetensorsFile::open(path)?.f32_tensors()
}

/// Writes `values` (f32, of `shape`) under `name` and `labels` (int64, one per row) to `path`
/// atomically, with string `metadata`: the layout of every labelled set we write (features,
/// latent shards). The header's keys are sorted, so the same contents give the same bytes (the
/// safetensors crate writes its metadata in hash order).
pub fn write_labelled_atomic(
    path: &Path,
    name: &str,
    shape: &[usize],
    values: &[f32],
    labels: &[i64],
    metadata: BTreeMap<String, String>,
) -> std::io::Result<()> {
    let values: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let label_bytes: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = [
        (name, "F32", shape.to_vec(), values.as_slice()),
        ("labels", "I64", vec![labels.len()], label_bytes.as_slice()),
    ];
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0;
    for (name, dtype, shape, bytes) in &tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    // The data section starts 8-aligned, as the safetensors crate pads it.
    header.resize(header.len().next_multiple_of(8), b' ');
    crate::atomic::write_atomic(path, |temp| {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(fs::File::create(temp)?);
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        for (_, _, _, bytes) in &tensors {
            file.write_all(bytes)?;
        }
        file.flush()
    })
}

/// Lets safetensors serialise a `HostTensor` one tensor at a time, so writing
/// never holds a second copy of the whole model in memory.
struct F32View<'a>(&'a HostTensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// Writes `tensors` as F32 (sorted by name) plus string `metadata` to `path` atomically: a crash
/// leaves either the old file or the new one, never half of one.
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &NamedTensors,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<(), CheckpointError> {
    let format = |reason: String| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if let Some((name, t)) = tensors.iter().find(|(_, t)| t.data.len() != t.numel()) {
        return Err(format(format!(
            "cannot write {name}: shape {} holds {} values, data has {}",
            shape_str(&t.shape),
            t.numel(),
            t.data.len()
        )));
    }
    let metadata: Option<HashMap<String, String>> = metadata.map(|m| m.into_iter().collect());
    let views = tensors.iter().map(|(name, t)| (name.as_str(), F32View(t)));
    crate::atomic::write_atomic(path, |temp| {
        safetensors::serialize_to_file(views, &metadata, temp).map_err(std::io::Error::other)
    })
    .map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::conformance_dir;
    use safetensors::tensor::TensorView;

    fn tensor(shape: &[usize], data: &[f32]) -> HostTensor {
        HostTensor {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn safetensors_round_trip_is_exact_and_leaves_no_tmp() -> anyhow::Result<()> {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("state.safetensors");
        let mut tensors = NamedTensors::new();
        tensors.insert(
            "b.weight".into(),
            tensor(&[2, 3], &[1.0, -2.5, f32::MIN_POSITIVE, 0.0, -0.0, 1e30]),
        );
        tensors.insert(
            "a.bias".into(),
            tensor(&[3], &[f32::NAN, f32::INFINITY, 7.0]),
        );
        tensors.insert("step".into(), tensor(&[], &[42.0]));
        let meta = BTreeMap::from([("step".to_string(), "1000".to_string())]);

        // Twice: the second write replaces an existing file.
        for _ in 0..2 {
            write_safetensors_atomic(&path, &tensors, Some(meta.clone()))?;
        }
        let back = read_safetensors(&path)?;
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            tensors.keys().collect::<Vec<_>>()
        );
        for (name, t) in &tensors {
            assert_eq!(back[name].shape, t.shape, "{name}");
            let bits = |t: &HostTensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back[name]), bits(t), "{name}");
        }
        assert_eq!(SafetensorsFile::open(&path)?.metadata(), meta);
        let left: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(left, vec![std::ffi::OsString::from("state.safetensors")]);
        Ok(())
    }

    #[test]
    fn write_rejects_data_that_does_not_match_its_shape() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("bad.safetensors");
        let tensors = NamedTensors::from([("w".to_string(), tensor(&[2, 2], &[1.0; 3]))]);
        let err = write_safetensors_atomic(&path, &tensors, None).unwrap_err();
        assert!(err.to_string().contains("cannot write w"), "{err}");
        assert!(!path.exists() && !dir.join("bad.safetensors.tmp").exists());
    }

    #[test]
    fn every_supported_dtype_reads_as_f32_and_ints_read_exactly() -> anyhow::Result<()> {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("mixed.safetensors");
        let f16: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = [0.5f32, 3.0]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let f64: Vec<u8> = [0.25f64, -1e3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let big = (1i64 << 40) + 1; // not representable in f32: i64() must keep it
        let i64: Vec<u8> = [big, -3].iter().flat_map(|x| x.to_le_bytes()).collect();
        let i32: Vec<u8> = [-7i32, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let u8 = vec![0u8, 255];
        let views = [
            ("f16", TensorView::new(Dtype::F16, vec![2], &f16)?),
            ("bf16", TensorView::new(Dtype::BF16, vec![2], &bf16)?),
            ("f64", TensorView::new(Dtype::F64, vec![2], &f64)?),
            ("i64", TensorView::new(Dtype::I64, vec![2], &i64)?),
            ("i32", TensorView::new(Dtype::I32, vec![1, 2], &i32)?),
            ("u8", TensorView::new(Dtype::U8, vec![2], &u8)?),
        ];
        fs::write(&path, safetensors::serialize(views, &None)?)?;

        let all = read_safetensors(&path)?;
        assert_eq!(all["f16"].data, [1.5, -2.0]);
        assert_eq!(all["bf16"].data, [0.5, 3.0]);
        assert_eq!(all["f64"].data, [0.25, -1000.0]);
        assert_eq!(all["i64"].data, [big as f32, -3.0]);
        assert_eq!(all["i32"], tensor(&[1, 2], &[-7.0, 9.0]));
        assert_eq!(all["u8"].data, [0.0, 255.0]);

        let file = SafetensorsFile::open(&path)?;
        assert_eq!(file.i64("i64")?, (vec![2], vec![big, -3]));
        assert_eq!(file.i64("i32")?, (vec![1, 2], vec![-7, 9]));
        assert_eq!(file.i64("u8")?.1, [0, 255]);
        assert_eq!(file.u8("u8")?, (vec![2], vec![0, 255]));
        Ok(())
    }

    #[test]
    fn conformance_integer_tensors_read_exactly() -> anyhow::Result<()> {
        let file = SafetensorsFile::open(&conformance_dir().join("img_tiny/forward.safetensors"))?;
        let (t_shape, t) = file.i64("t")?;
        assert_eq!(t_shape.len(), 2);
        assert!(t.iter().all(|&v| (0..1000).contains(&v)), "timesteps {t:?}");
        let (mask_shape, mask) = file.u8("attention_mask")?;
        assert_eq!(mask_shape[0], mask_shape[1]);
        assert!(mask.iter().all(|&m| m <= 1));
        assert_eq!(
            file.f32("y")?.data,
            file.i64("y")?
                .1
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn wrong_dtype_and_missing_tensor_errors_name_file_and_tensor() -> anyhow::Result<()> {
        let path = conformance_dir().join("img_tiny/forward.safetensors");
        let file = SafetensorsFile::open(&path)?;
        let err = file.i64("clean_x").unwrap_err().to_string();
        assert!(
            err.contains("forward.safetensors") && err.contains("clean_x") && err.contains("F32"),
            "{err}"
        );
        let err = file.f32("no.such.tensor").unwrap_err().to_string();
        assert!(
            err.contains("no.such.tensor") && err.contains("forward.safetensors"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn corrupt_safetensors_is_an_error_not_a_panic() -> anyhow::Result<()> {
        // A small file with F32, I64 and U8 tensors, so the many cases stay fast.
        let good = fs::read(conformance_dir().join("img_tiny/forward.safetensors"))?;
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("bad.safetensors");
        let header_end = 8 + u64::from_le_bytes(good[..8].try_into()?) as usize;

        // Each must fail: empty, not safetensors, truncated in the length, the
        // header and the data, and a header length pointing past the end.
        let mut must_fail: Vec<Vec<u8>> = vec![Vec::new(), b"not a safetensors file".to_vec()];
        for cut in [
            3,
            8,
            9,
            header_end / 2,
            header_end,
            header_end + 1,
            good.len() - 1,
        ] {
            must_fail.push(good[..cut].to_vec());
        }
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        must_fail.push(huge);
        for bytes in &must_fail {
            fs::write(&path, bytes)?;
            assert!(
                read_safetensors(&path).is_err(),
                "{} bytes read fine",
                bytes.len()
            );
        }
        // Garbled header bytes may still be valid (a digit for a digit); they
        // only must not panic.
        for pos in (8..header_end).step_by(7) {
            for byte in [b'9', b'"', b'}', b'[', 0xff] {
                let mut bad = good.clone();
                bad[pos] = byte;
                fs::write(&path, &bad)?;
                let _ = read_safetensors(&path);
            }
        }
        let err = read_safetensors(&dir.join("absent.safetensors")).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Io { .. })
                && err.to_string().contains("absent.safetensors")
        );
        Ok(())
    }
}
