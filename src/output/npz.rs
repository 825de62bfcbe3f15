//! NumPy `.npy` arrays and `.npz` archives of them: one writer and one reader for every array
//! the project writes or reads. Sample batches are `arr_0.npy` uint8 (n, height, width,
//! channels) and `labels.npy` int64 (n,), as FID evaluators such as guided-diffusion's
//! `evaluator.py` read them; clip files (`crate::video`) are `clips.npy` and `labels.npy`.

use std::borrow::Cow;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use super::{OutputError, write_atomic};

const MAGIC: &[u8] = b"\x93NUMPY";
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// One C-order array as NumPy stores it: a dtype string, a shape and the raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyArray<'a> {
    /// The member name in an `.npz`, without `.npy` (`arr_0`, `labels`, `clips`); the file
    /// stem for a bare `.npy`.
    pub name: String,
    /// NumPy's dtype string: [`NpyArray::U8`], [`NpyArray::I64`], or whatever a file read back
    /// holds (`<f4`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// (shape) in C order, the dtype's item size per value.
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> NpyArray<'a> {
    /// uint8.
    pub const U8: &'static str = "|u1";
    /// Little-endian int64.
    pub const I64: &'static str = "<i8";
    /// Little-endian float64.
    pub const F64: &'static str = "<f8";

    /// A uint8 array of `shape` over `bytes`, borrowed.
    pub fn u8(name: &str, shape: &[usize], bytes: &'a [u8]) -> Self {
        NpyArray {
            name: name.into(),
            dtype: Self::U8.into(),
            shape: shape.to_vec(),
            bytes: Cow::Borrowed(bytes),
        }
    }

    /// A 1-D int64 array holding `values`.
    pub fn i64(name: &str, values: &[i64]) -> NpyArray<'static> {
        NpyArray {
            name: name.into(),
            dtype: Self::I64.into(),
            shape: vec![values.len()],
            bytes: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    /// A float64 array of `shape` holding `values` (row-major).
    pub fn f64(name: &str, shape: &[usize], values: &[f64]) -> NpyArray<'static> {
        NpyArray {
            name: name.into(),
            dtype: Self::F64.into(),
            shape: shape.to_vec(),
            bytes: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    /// The values of a float64 or float32 array as f64; `None` for other dtypes.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match self.dtype.as_str() {
            Self::F64 => Some(
                self.bytes
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            ),
            "<f4" => Some(
                self.bytes
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The values of an int64 array; `None` when the dtype is another.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        (self.dtype == Self::I64).then(|| {
            let values = self.bytes.chunks_exact(8);
            values
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()
        })
    }

    /// Checks that the bytes fill the shape exactly, at the dtype's item size.
    fn check_len(&self) -> Result<(), String> {
        let item = item_size(&self.dtype).ok_or(format!(
            "dtype '{}' is not a numeric dtype (b, i, u, f or c)",
            self.dtype
        ))?;
        let expected = self.shape.iter().try_fold(item, |a, &d| a.checked_mul(d));
        if expected != Some(self.bytes.len()) {
            return Err(format!(
                "{} data bytes, but shape {:?} of '{}' needs {}",
                self.bytes.len(),
                self.shape,
                self.dtype,
                expected.map_or("more than usize::MAX".into(), |e| e.to_string())
            ));
        }
        Ok(())
    }
}

/// The bytes of one value of NumPy dtype `descr` (`|u1` -> 1, `<f4` -> 4), for the numeric
/// kinds only: the size of a string dtype (`<U10`) counts characters, not bytes.
fn item_size(descr: &str) -> Option<usize> {
    let descr = descr.strip_prefix(['<', '>', '|', '=']).unwrap_or(descr);
    let size = descr.strip_prefix(['b', 'i', 'u', 'f', 'c'])?;
    size.parse().ok().filter(|&s| s > 0)
}

/// Writes `arrays` as the members `{name}.npy` of an `.npz` at `path`, deflated, atomically.
/// The bytes are a function of the arrays alone.
pub fn write_npz_arrays(path: &Path, arrays: &[NpyArray]) -> Result<(), OutputError> {
    let zip_error = |source| OutputError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for array in arrays {
        array
            .check_len()
            .map_err(|e| OutputError::invalid(path, format!("{}: {e}", array.name)))?;
        // A fixed timestamp keeps the archive a function of its contents; zip64 well before a
        // member nears the 4 GiB limit of plain zip.
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .last_modified_time(DateTime::default())
            .large_file(array.bytes.len() > u32::MAX as usize / 2);
        zip.start_file(format!("{}.npy", array.name), options)
            .map_err(zip_error)?;
        zip.write_all(&npy_header(&array.dtype, &array.shape))
            .and_then(|()| zip.write_all(&array.bytes))
            .map_err(|e| zip_error(e.into()))?;
    }
    let bytes = zip.finish().map_err(zip_error)?.into_inner();
    write_atomic(path, &bytes)
}

/// Writes `images` (n, height, width, channels) uint8 as `arr_0` and `labels` (n,) int64 as
/// `labels` to an `.npz` at `path`, atomically. `shape` is (n, height, width, channels).
pub fn write_npz(
    path: &Path,
    images: &[u8],
    shape: [usize; 4],
    labels: &[i64],
) -> Result<(), OutputError> {
    let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if expected != Some(images.len()) {
        let reason = format!(
            "{} bytes do not fill images of shape {shape:?}",
            images.len()
        );
        return Err(OutputError::invalid(path, reason));
    }
    if labels.len() != shape[0] {
        let reason = format!("{} labels for {} images", labels.len(), shape[0]);
        return Err(OutputError::invalid(path, reason));
    }
    write_npz_arrays(
        path,
        &[
            NpyArray::u8("arr_0", &shape, images),
            NpyArray::i64("labels", labels),
        ],
    )
}

/// What a NumPy file held: one array (a bare `.npy`) or named arrays (an `.npz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NumpyFile {
    Npy(NpyArray<'static>),
    /// The `.npy` members in archive order.
    Npz(Vec<NpyArray<'static>>),
}

/// Reads the `.npy` or `.npz` at `path`, told apart by their first bytes, not their names.
/// Every array's bytes are checked to fill its shape.
pub fn read_numpy(path: &Path) -> Result<NumpyFile, OutputError> {
    let bytes = std::fs::read(path).map_err(|source| OutputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(MAGIC) {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let array = parse_npy(&stem, bytes).map_err(|e| OutputError::invalid(path, e))?;
        return Ok(NumpyFile::Npy(array));
    }
    if !bytes.starts_with(ZIP_MAGIC) {
        return Err(OutputError::invalid(
            path,
            "neither an .npy array (\\x93NUMPY) nor an .npz archive (zip)",
        ));
    }
    let zip_error = |source| OutputError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    let mut arrays = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zip_error)?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        let mut member = Vec::with_capacity(entry.size().try_into().unwrap_or(0));
        entry
            .read_to_end(&mut member)
            .map_err(|e| zip_error(e.into()))?;
        let array = parse_npy(&name, member)
            .map_err(|e| OutputError::invalid(path, format!("{name}.npy: {e}")))?;
        arrays.push(array);
    }
    Ok(NumpyFile::Npz(arrays))
}

/// The `.npy` v1.0 header for a C-order array: magic, version, little-endian
/// u16 length, then the dict padded with spaces and a newline so that the data
/// starts at a multiple of 64 bytes, as NumPy writes it.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    dict.push('\n');
    let mut header = MAGIC.to_vec();
    header.extend([1, 0]);
    header.extend((dict.len() as u16).to_le_bytes());
    header.extend(dict.as_bytes());
    header
}

/// Parses a `.npy` (version 1.0, or 2.0/3.0 with their 4-byte header length) into the array
/// `name`, checking the order is C and the data fills the shape. Takes the file's bytes so the
/// data is not copied.
fn parse_npy(name: &str, mut bytes: Vec<u8>) -> Result<NpyArray<'static>, String> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Err("not an .npy array".into());
    };
    let (len, rest) = match rest {
        [1, 0, a, b, rest @ ..] => (u32::from(u16::from_le_bytes([*a, *b])), rest),
        [2 | 3, 0, a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]), rest),
        _ => return Err("not a version 1.0, 2.0 or 3.0 .npy header".into()),
    };
    let len = len as usize;
    if rest.len() < len {
        return Err("truncated header".into());
    }
    let dict = std::str::from_utf8(&rest[..len]).map_err(|_| "header is not text")?;
    let field = |key: &str| {
        let at = dict
            .find(&format!("'{key}':"))
            .ok_or(format!("header lacks '{key}'"))?;
        Ok::<_, String>(dict[at + key.len() + 3..].trim_start())
    };
    let dtype = field("descr")?.split('\'').nth(1).unwrap_or("").to_string();
    if !field("fortran_order")?.starts_with("False") {
        return Err("Fortran order is not supported".into());
    }
    let tuple = field("shape")?;
    let tuple = tuple.strip_prefix('(').and_then(|t| t.split(')').next());
    let tuple = tuple.ok_or("malformed shape")?;
    let shape = tuple
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("bad dimension '{d}'")))
        .collect::<Result<Vec<usize>, _>>()?;
    let data_start = bytes.len() - rest.len() + len;
    bytes.drain(..data_start);
    let array = NpyArray {
        name: name.into(),
        dtype,
        shape,
        bytes: Cow::Owned(bytes),
    };
    array.check_len()?;
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_matches_what_numpy_writes() {
        // Both headers are 128 bytes in NumPy 2's np.save, the dict padded with spaces.
        let cases = [
            ("|u1", &[10, 28, 28, 1][..], "(10, 28, 28, 1)"),
            ("<i8", &[10][..], "(10,)"),
        ];
        for (descr, shape, tuple) in cases {
            let header = npy_header(descr, shape);
            assert_eq!(header.len(), 128);
            assert_eq!(&header[..10], b"\x93NUMPY\x01\x00\x76\x00"); // 118 = 128 - 10
            let dict =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
            let padded = format!("{dict:<117}\n");
            assert_eq!(std::str::from_utf8(&header[10..]).unwrap(), padded);
        }
    }

    #[test]
    fn npz_round_trips_images_and_labels() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("samples.npz");
        let shape = [3, 4, 5, 3];
        let images: Vec<u8> = (0..3 * 4 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let labels = [2, -1, i64::MAX];
        write_npz(&path, &images, shape, &labels).unwrap();
        let NumpyFile::Npz(arrays) = read_numpy(&path).unwrap() else {
            panic!("an .npz reads back as an .npz");
        };
        let [arr_0, read_labels] = &arrays[..] else {
            panic!("two members, found {}", arrays.len());
        };
        assert_eq!(*arr_0, NpyArray::u8("arr_0", &shape, &images));
        assert_eq!(read_labels.name, "labels");
        assert_eq!(read_labels.to_i64().as_deref(), Some(&labels[..]));

        // The members are exactly the two .npy files, each with a well-formed header.
        let mut zip = ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<_> = zip.file_names().map(str::to_string).collect();
        assert_eq!(names, ["arr_0.npy", "labels.npy"]);
        let mut bytes = Vec::new();
        zip.by_name("arr_0.npy")
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes[..128], npy_header("|u1", &shape)[..]);
    }

    #[test]
    fn npz_bytes_depend_only_on_the_arrays() {
        let temp = tempfile::tempdir().unwrap();
        let [a, b] = ["a.npz", "b.npz"].map(|name| temp.path().join(name));
        let arrays = [NpyArray::u8("clips", &[2, 2], &[1, 2, 3, 4])];
        write_npz_arrays(&a, &arrays).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_npz_arrays(&b, &arrays).unwrap();
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn npz_rejects_labels_that_do_not_match_the_images() {
        let path = Path::new("never-written.npz");
        let err = write_npz(path, &[0; 4], [2, 1, 2, 1], &[0]).unwrap_err();
        assert!(
            err.to_string()
                .contains("never-written.npz: 1 labels for 2 images"),
            "{err}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn npz_rejects_an_array_whose_bytes_do_not_fill_its_shape() {
        let path = Path::new("never-written-either.npz");
        let err = write_npz_arrays(path, &[NpyArray::u8("clips", &[2, 3], &[0; 5])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "never-written-either.npz: clips: 5 data bytes, but shape [2, 3] of '|u1' needs 6"
        );
        assert!(!path.exists());
    }

    #[test]
    fn npy_of_another_dtype_reads_but_is_not_int64() {
        let mut npy = npy_header("<f4", &[1]);
        npy.extend([0; 4]);
        let array = parse_npy("x", npy).unwrap();
        assert_eq!((array.dtype.as_str(), &array.shape[..]), ("<f4", &[1][..]));
        assert_eq!(array.to_i64(), None);
    }

    #[test]
    fn npy_version_2_headers_parse() {
        let dict = b"{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }\n";
        let mut npy = b"\x93NUMPY\x02\x00".to_vec();
        npy.extend((dict.len() as u32).to_le_bytes());
        npy.extend(dict);
        npy.extend([7, 9]);
        assert_eq!(
            parse_npy("v2", npy).unwrap(),
            NpyArray::u8("v2", &[2], &[7, 9])
        );
    }

    #[test]
    fn item_size_knows_numeric_dtypes_only() {
        assert_eq!(item_size("|u1"), Some(1));
        assert_eq!(item_size("<i8"), Some(8));
        assert_eq!(item_size(">f4"), Some(4));
        assert_eq!(item_size("<U10"), None);
        assert_eq!(item_size("|O"), None);
    }
}
