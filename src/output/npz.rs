//! Sample batches as NumPy `.npz` files: `arr_0.npy` uint8 (n, height, width,
//! channels) and `labels.npy` int64 (n,). FID evaluators such as
//! guided-diffusion's `evaluator.py` read `arr_0`.

use std::io::{Cursor, Read, Write};
use std::path::Path;

use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use super::{OutputError, write_atomic};

const IMAGES: &str = "arr_0.npy";
const LABELS: &str = "labels.npy";
const MAGIC: &[u8] = b"\x93NUMPY";

/// Writes `images` (n, height, width, channels) and `labels` (n,) to an `.npz`
/// at `path`, atomically. `shape` is (n, height, width, channels).
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
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let zip_error = |source| OutputError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    // A fixed timestamp keeps the archive a function of its contents; zip64
    // well before a member nears the 4 GiB limit of plain zip.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
        .large_file(images.len() > u32::MAX as usize / 2);
    for (name, descr, shape, data) in [
        (IMAGES, "|u1", &shape[..], images),
        (LABELS, "<i8", &shape[..1], &label_bytes[..]),
    ] {
        zip.start_file(name, options).map_err(zip_error)?;
        zip.write_all(&npy_header(descr, shape))
            .and_then(|()| zip.write_all(data))
            .map_err(|e| zip_error(e.into()))?;
    }
    let bytes = zip.finish().map_err(zip_error)?.into_inner();
    write_atomic(path, &bytes)
}

/// A sample batch read back from an `.npz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpzSamples {
    /// (n, height, width, channels).
    pub images: Vec<u8>,
    /// (n, height, width, channels).
    pub shape: [usize; 4],
    /// (n,); `None` when the archive has no `labels.npy` (e.g. reference batches).
    pub labels: Option<Vec<i64>>,
}

/// Reads `arr_0.npy` (uint8, 4-D, C order) and, if present, `labels.npy`
/// (int64) from the `.npz` at `path`.
pub fn read_npz_u8(path: &Path) -> Result<NpzSamples, OutputError> {
    let file = std::fs::File::open(path).map_err(|source| OutputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let zip_error = |source| OutputError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut zip = ZipArchive::new(file).map_err(zip_error)?;
    let mut member = |name: &str| -> Result<Option<Vec<u8>>, OutputError> {
        let mut entry = match zip.by_name(name) {
            Ok(entry) => entry,
            Err(ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(zip_error(e)),
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| zip_error(e.into()))?;
        Ok(Some(bytes))
    };
    let bad =
        |name: &'static str| move |e: String| OutputError::invalid(path, format!("{name}: {e}"));

    let Some(bytes) = member(IMAGES)? else {
        return Err(OutputError::invalid(path, format!("no {IMAGES}")));
    };
    let (shape, images) = parse_npy(&bytes, "|u1").map_err(bad(IMAGES))?;
    let shape: [usize; 4] = shape.try_into().map_err(|s| {
        OutputError::invalid(
            path,
            format!("{IMAGES}: shape {s:?} is not 4-D (n, h, w, c)"),
        )
    })?;
    let labels = match member(LABELS)? {
        Some(bytes) => {
            let (_, data) = parse_npy(&bytes, "<i8").map_err(bad(LABELS))?;
            let labels = data.chunks_exact(8);
            Some(
                labels
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            )
        }
        None => None,
    };
    Ok(NpzSamples {
        images: images.to_vec(),
        shape,
        labels,
    })
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

/// Splits a v1.0 `.npy` into its shape and data, checking the dtype is
/// `descr`, the order is C and the data length matches the shape.
fn parse_npy<'a>(bytes: &'a [u8], descr: &str) -> Result<(Vec<usize>, &'a [u8]), String> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Err("not an .npy array".into());
    };
    let [1, 0, lo, hi, rest @ ..] = rest else {
        return Err("not a version 1.0 .npy header".into());
    };
    let len = usize::from(u16::from_le_bytes([*lo, *hi]));
    if rest.len() < len {
        return Err("truncated header".into());
    }
    let (dict, data) = rest.split_at(len);
    let dict = std::str::from_utf8(dict).map_err(|_| "header is not text")?;
    let field = |key: &str| {
        let at = dict
            .find(&format!("'{key}':"))
            .ok_or(format!("header lacks '{key}'"))?;
        Ok::<_, String>(dict[at + key.len() + 3..].trim_start())
    };
    let found = field("descr")?.split('\'').nth(1).unwrap_or("");
    if found != descr {
        return Err(format!("dtype '{found}', expected '{descr}'"));
    }
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
    let item = if descr == "<i8" { 8 } else { 1 };
    let expected = shape.iter().product::<usize>() * item;
    if data.len() != expected {
        return Err(format!("{} data bytes for shape {shape:?}", data.len()));
    }
    Ok((shape, data))
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
        let read = read_npz_u8(&path).unwrap();
        assert_eq!(read.shape, shape);
        assert_eq!(read.images, images);
        assert_eq!(read.labels.as_deref(), Some(&labels[..]));

        // The members are exactly the two .npy files, each with a well-formed header.
        let mut zip = ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<_> = zip.file_names().map(str::to_string).collect();
        assert_eq!(names, [IMAGES, LABELS]);
        let mut bytes = Vec::new();
        zip.by_name(IMAGES)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes[..128], npy_header("|u1", &shape)[..]);
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
    fn parse_npy_rejects_another_dtype() {
        let mut npy = npy_header("<f4", &[1]);
        npy.extend([0; 4]);
        assert_eq!(
            parse_npy(&npy, "|u1"),
            Err("dtype '<f4', expected '|u1'".to_string())
        );
    }
}
