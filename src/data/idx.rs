//! IDX files, the format of MNIST and Fashion-MNIST, plain or gzipped, and
//! the MNIST subset embedded in the binary so that tests and first runs need
//! no download.
//!
//! An IDX file is a big-endian header, magic `0x0000_08NN` (0x08: unsigned
//! bytes, NN: number of dimensions) then one u32 per dimension, followed by
//! the bytes, row-major.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, ImageDataset, scale};

/// Magic of ubyte images: dims (n, height, width).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of ubyte labels: dims (n,).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Which MNIST-family dataset some IDX files hold. The files cannot tell
/// (MNIST and Fashion-MNIST share names, format and shapes), so the caller
/// says, and the kind names the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
}

impl crate::choice::Choice for DatasetKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("mnist", DatasetKind::Mnist),
        ("fashion-mnist", DatasetKind::FashionMnist),
    ];
}

impl DatasetKind {
    /// (10,): the name of each label.
    pub fn class_names(self) -> Vec<String> {
        let names: [&str; 10] = match self {
            DatasetKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        };
        names.map(String::from).to_vec()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl crate::choice::Choice for Split {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("train", Split::Train), ("test", Split::Test)];
}

impl Split {
    /// The images and labels file names of this split, without `.gz`; the
    /// MNIST family calls its test split "t10k".
    pub fn file_names(self) -> [String; 2] {
        let prefix = match self {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        [
            format!("{prefix}-images-idx3-ubyte"),
            format!("{prefix}-labels-idx1-ubyte"),
        ]
    }
}

/// An IDX file's dimensions and its bytes.
#[derive(Debug)]
pub struct Idx {
    pub dims: Vec<usize>,
    /// (dims[0], dims[1], ...), row-major.
    pub data: Vec<u8>,
}

/// Reads the IDX file at `path`, which must carry `magic`. Gunzips it first
/// when it starts with the gzip magic 1f 8b, whatever its name.
pub fn read_idx(path: &Path, magic: u32) -> Result<Idx, DataError> {
    let raw = std::fs::read(path).map_err(DataError::io(path))?;
    parse_idx(path, raw, magic)
}

/// `raw`: a file's bytes, gzipped or not; `path` only names it in errors.
fn parse_idx(path: &Path, raw: Vec<u8>, magic: u32) -> Result<Idx, DataError> {
    let mut bytes = gunzip_if_gzip(path, raw)?;
    let short = |expected, found| DataError::Truncated {
        path: path.to_owned(),
        expected,
        found,
    };
    let word = |i: usize| {
        u32::from_be_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    if bytes.len() < 4 {
        return Err(short(4, bytes.len()));
    }
    if word(0) != magic {
        return Err(DataError::Magic {
            path: path.to_owned(),
            expected: magic,
            found: word(0),
        });
    }
    let header = 4 * (1 + (magic & 0xff) as usize);
    if bytes.len() < header {
        return Err(short(header, bytes.len()));
    }
    let dims: Vec<usize> = (1..header / 4).map(|i| word(i) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |body, &d| body.checked_mul(d))
        .and_then(|body| body.checked_add(header))
        .unwrap_or(usize::MAX);
    if bytes.len() < expected {
        return Err(short(expected, bytes.len()));
    }
    if bytes.len() > expected {
        return Err(DataError::TrailingBytes {
            path: path.to_owned(),
            expected,
            found: bytes.len(),
        });
    }
    bytes.drain(..header);
    Ok(Idx { dims, data: bytes })
}

fn gunzip_if_gzip(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(4 * raw.len());
    GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_owned(),
            source,
        })?;
    Ok(out)
}

/// Loads an images file and its labels file as a one-channel dataset.
pub fn load_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    kind: DatasetKind,
) -> Result<ImageDataset, DataError> {
    let images = read_idx(images_path, IMAGES_MAGIC)?;
    let labels = read_idx(labels_path, LABELS_MAGIC)?;
    pair(images_path, images, labels_path, labels, kind)
}

/// Joins images (n, height, width) and labels (n,) read from the two paths.
fn pair(
    images_path: &Path,
    images: Idx,
    labels_path: &Path,
    labels: Idx,
    kind: DatasetKind,
) -> Result<ImageDataset, DataError> {
    let [n, height, width] = images.dims[..] else {
        unreachable!("IMAGES_MAGIC has 3 dims")
    };
    if labels.dims[0] != n {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_owned(),
            images: n,
            labels_path: labels_path.to_owned(),
            labels: labels.dims[0],
        });
    }
    let class_names = kind.class_names();
    if let Some(&label) = labels
        .data
        .iter()
        .find(|&&l| usize::from(l) >= class_names.len())
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path.to_owned(),
            label: label.into(),
            num_classes: class_names.len(),
        });
    }
    Ok(ImageDataset {
        images: images.data.iter().map(|&b| scale(b)).collect(),
        labels: labels.data.iter().map(|&l| l.into()).collect(),
        n,
        channels: 1,
        height,
        width,
        num_classes: class_names.len(),
        class_names,
    })
}

/// The images and labels files of `split` in `dir`, each either plain or
/// with `.gz` (the plain one when both are there).
pub fn mnist_files(dir: &Path, split: Split) -> Result<[PathBuf; 2], DataError> {
    let find = |name: String| {
        [dir.join(&name), dir.join(format!("{name}.gz"))]
            .into_iter()
            .find(|path| path.is_file())
            .ok_or_else(|| DataError::MissingFile {
                dir: dir.to_owned(),
                name,
            })
    };
    let [images, labels] = split.file_names();
    Ok([find(images)?, find(labels)?])
}

/// Loads `split` from a folder laid out as MNIST and Fashion-MNIST ship:
/// `train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, ...
pub fn load_mnist_dir(
    dir: &Path,
    kind: DatasetKind,
    split: Split,
) -> Result<ImageDataset, DataError> {
    let [images, labels] = mnist_files(dir, split)?;
    load_idx_pair(&images, &labels, kind)
}

const EMBEDDED_TRAIN: [&[u8]; 2] = [
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/mnist-subset/train-images-idx3-ubyte.gz"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/mnist-subset/train-labels-idx1-ubyte.gz"
    )),
];
const EMBEDDED_TEST: [&[u8]; 2] = [
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/mnist-subset/t10k-images-idx3-ubyte.gz"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/mnist-subset/t10k-labels-idx1-ubyte.gz"
    )),
];

/// Where `acdit data fetch mnist` puts MNIST.
pub const FETCHED_MNIST: &str = "data/mnist";

/// MNIST's `split`: the full set under `data/mnist` when it has been fetched, else the subset
/// built into the binary. The flag says which.
pub fn mnist_or_built_in(split: Split) -> Result<(ImageDataset, bool), DataError> {
    let fetched = Path::new(FETCHED_MNIST);
    if mnist_files(fetched, split).is_ok() {
        Ok((load_mnist_dir(fetched, DatasetKind::Mnist, split)?, true))
    } else {
        Ok((embedded_mnist(split), false))
    }
}

/// The MNIST subset in `assets/mnist-subset/`, compiled into the binary: the
/// first 15,000 training digits (Train) or the first 1,000 test digits (Test),
/// (n, 1, 28, 28).
pub fn embedded_mnist(split: Split) -> ImageDataset {
    let [images, labels] = match split {
        Split::Train => EMBEDDED_TRAIN,
        Split::Test => EMBEDDED_TEST,
    };
    let [images_path, labels_path] = split
        .file_names()
        .map(|name| Path::new("assets/mnist-subset").join(name + ".gz"));
    parse_idx(&images_path, images.to_vec(), IMAGES_MAGIC)
        .and_then(|images| {
            let labels = parse_idx(&labels_path, labels.to_vec(), LABELS_MAGIC)?;
            pair(
                &images_path,
                images,
                &labels_path,
                labels,
                DatasetKind::Mnist,
            )
        })
        .expect("the embedded MNIST subset is checked by the tests")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    /// An IDX file's bytes with `magic` and `dims` in the header.
    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
        bytes.extend(data);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Three 2x3 images with pixels 0, 1, ..., 17 and labels 7, 0, 9.
    fn three_images() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..18).collect();
        (
            idx_bytes(IMAGES_MAGIC, &[3, 2, 3], &pixels),
            idx_bytes(LABELS_MAGIC, &[3], &[7, 0, 9]),
        )
    }

    fn error_message(result: Result<impl std::fmt::Debug, DataError>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn idx_pair_round_trips_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = three_images();
        let plain = [
            write(&dir, "images", &images),
            write(&dir, "labels", &labels),
        ];
        let gzipped = [
            write(&dir, "images.gz", &gzip(&images)),
            write(&dir, "labels.gz", &gzip(&labels)),
        ];
        for [images, labels] in [plain, gzipped] {
            let ds = load_idx_pair(&images, &labels, DatasetKind::Mnist).unwrap();
            ds.validate().unwrap();
            assert_eq!(
                (ds.n, ds.channels, ds.height, ds.width, ds.num_classes),
                (3, 1, 2, 3, 10)
            );
            assert_eq!(ds.labels, vec![7, 0, 9]);
            assert_eq!(ds.image(2), (12..18).map(scale).collect::<Vec<_>>());
            assert_eq!(ds.class_names[7], "7");
        }
    }

    #[test]
    fn gzip_is_detected_by_magic_bytes_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = three_images();
        let images = write(&dir, "images.gz", &images);
        let labels = write(&dir, "labels.idx", &gzip(&labels));
        let ds = load_idx_pair(&images, &labels, DatasetKind::FashionMnist).unwrap();
        assert_eq!(ds.labels, vec![7, 0, 9]);
        assert_eq!(ds.class_names[9], "Ankle boot");
    }

    #[test]
    fn wrong_magic_names_the_file_and_both_magics() {
        let dir = tempfile::tempdir().unwrap();
        let (_, labels) = three_images();
        let path = write(&dir, "train-images-idx3-ubyte", &labels);
        let message = error_message(read_idx(&path, IMAGES_MAGIC));
        assert_eq!(
            message,
            format!(
                "{}: expected magic 0x00000803, found 0x00000801",
                path.display()
            )
        );
    }

    #[test]
    fn data_length_must_match_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let (images, _) = three_images();
        for (name, bytes) in [
            ("short-header", &images[..10]),
            ("short-data", &images[..images.len() - 1]),
            ("tiny", &images[..2]),
        ] {
            let path = write(&dir, name, bytes);
            let message = error_message(read_idx(&path, IMAGES_MAGIC));
            assert!(
                message.starts_with(&format!("{}: truncated", path.display())),
                "{message}"
            );
        }
        let path = write(&dir, "long", &[images.as_slice(), &[0]].concat());
        let message = error_message(read_idx(&path, IMAGES_MAGIC));
        assert_eq!(
            message,
            format!(
                "{}: 35 bytes, but the header needs exactly 34",
                path.display()
            )
        );
    }

    #[test]
    fn corrupt_or_cut_gzip_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (images, _) = three_images();
        let whole = gzip(&images);
        for (name, bytes) in [
            ("garbage.gz", vec![0x1f, 0x8b, 1, 2, 3, 4]),
            ("cut.gz", whole[..whole.len() / 2].to_vec()),
        ] {
            let path = write(&dir, name, &bytes);
            let message = error_message(read_idx(&path, IMAGES_MAGIC));
            assert!(
                message.starts_with(&format!("{}: corrupt gzip data", path.display())),
                "{message}"
            );
        }
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        assert!(
            error_message(read_idx(&path, IMAGES_MAGIC)).starts_with(&path.display().to_string())
        );
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (images, _) = three_images();
        let images = write(&dir, "images", &images);
        let labels = write(&dir, "labels", &idx_bytes(LABELS_MAGIC, &[2], &[1, 2]));
        let message = error_message(load_idx_pair(&images, &labels, DatasetKind::Mnist));
        let expected = format!(
            "images file {} has 3 items but labels file {} has 2",
            images.display(),
            labels.display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn out_of_range_label_names_the_labels_file() {
        let dir = tempfile::tempdir().unwrap();
        let (images, _) = three_images();
        let images = write(&dir, "images", &images);
        let labels = write(&dir, "labels", &idx_bytes(LABELS_MAGIC, &[3], &[1, 12, 2]));
        let message = error_message(load_idx_pair(&images, &labels, DatasetKind::Mnist));
        let expected = format!(
            "label 12 in labels file {} is out of range for 10 classes",
            labels.display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn mnist_dir_finds_each_split_plain_or_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = three_images();
        write(&dir, "train-images-idx3-ubyte", &images);
        write(&dir, "train-labels-idx1-ubyte.gz", &gzip(&labels));
        write(
            &dir,
            "t10k-images-idx3-ubyte.gz",
            &gzip(&idx_bytes(IMAGES_MAGIC, &[1, 2, 3], &[0; 6])),
        );
        write(
            &dir,
            "t10k-labels-idx1-ubyte",
            &idx_bytes(LABELS_MAGIC, &[1], &[4]),
        );
        let train = load_mnist_dir(dir.path(), DatasetKind::Mnist, Split::Train).unwrap();
        let test = load_mnist_dir(dir.path(), DatasetKind::Mnist, Split::Test).unwrap();
        assert_eq!((train.n, test.n, test.labels[0]), (3, 1, 4));
    }

    #[test]
    fn mnist_dir_without_a_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let message = error_message(load_mnist_dir(dir.path(), DatasetKind::Mnist, Split::Test));
        let expected = format!(
            "{}: neither t10k-images-idx3-ubyte nor t10k-images-idx3-ubyte.gz found",
            dir.path().display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn embedded_subset_loads_with_all_ten_classes_in_range() {
        for (split, n) in [(Split::Train, 15_000), (Split::Test, 1_000)] {
            let ds = embedded_mnist(split);
            ds.validate().unwrap();
            assert_eq!(
                (ds.n, ds.channels, ds.height, ds.width, ds.num_classes),
                (n, 1, 28, 28, 10)
            );
            let mut seen = [false; 10];
            ds.labels.iter().for_each(|&l| seen[l as usize] = true);
            assert_eq!(seen, [true; 10]);
            assert!(ds.images.contains(&-1.0) && ds.images.contains(&1.0));
        }
    }
}
