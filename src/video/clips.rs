//! Clip files. Written as `.npz`: `clips.npy` uint8 (n, frames, height, width) and, when the
//! clips have classes, `labels.npy` int64 (n,). Read from such an `.npz`, from a bare `.npy` of
//! uint8 (n, frames, height, width), or from the Moving MNIST test set as it ships
//! (`mnist_test_seq.npy`, uint8 (frames, n, 64, 64)).

use std::path::Path;

use super::{Clips, VideoError};
use crate::output::{NpyArray, NumpyFile, read_numpy, write_npz_arrays};

const CLIPS: &str = "clips";
const LABELS: &str = "labels";

/// How the clip array's axes are ordered in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// (n, frames, height, width): what [`write_clips`] writes.
    Nfhw,
    /// (frames, n, height, width): Srivastava et al.'s `mnist_test_seq.npy`.
    Fnhw,
}

impl crate::choice::Choice for ClipLayout {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("nfhw", ClipLayout::Nfhw), ("fnhw", ClipLayout::Fnhw)];
}

impl ClipLayout {
    /// The axes as error messages spell them.
    fn axes(self) -> &'static str {
        match self {
            ClipLayout::Nfhw => "(N, F, H, W)",
            ClipLayout::Fnhw => "(F, N, H, W)",
        }
    }
}

/// Writes `clips` to the `.npz` at `path` as `clips.npy` (n, frames, height, width) uint8 and,
/// if the clips have labels, `labels.npy` (n,) int64; atomically, the bytes a function of the
/// clips alone.
pub fn write_clips(path: &Path, clips: &Clips) -> Result<(), VideoError> {
    let mut arrays = vec![NpyArray::u8(CLIPS, &clips.shape(), &clips.clips)];
    if let Some(labels) = &clips.labels {
        arrays.push(NpyArray::i64(LABELS, labels));
    }
    Ok(write_npz_arrays(path, &arrays)?)
}

/// Writes every frame of `clips` as a grey PNG `dir/<label>/<clip>.png` (one-frame clips) or
/// `dir/<label>/<clip>-<frame>.png`: an image folder whose classes are the clips' labels.
pub fn write_frame_folder(dir: &Path, clips: &Clips) -> Result<(), VideoError> {
    let labels = clips.labels.as_ref().ok_or_else(|| {
        VideoError::Shape("an image folder needs the clips' labels for its class folders".into())
    })?;
    let fail = |path: &Path, reason: String| VideoError::File {
        path: path.to_path_buf(),
        reason,
    };
    let (w, h) = (clips.width as u32, clips.height as u32);
    for (i, label) in labels.iter().enumerate() {
        let class_dir = dir.join(label.to_string());
        std::fs::create_dir_all(&class_dir).map_err(|e| fail(&class_dir, e.to_string()))?;
        for (f, frame) in clips.clip(i).chunks(clips.frame_len()).enumerate() {
            let name = match clips.frames {
                1 => format!("{i}.png"),
                _ => format!("{i}-{f}.png"),
            };
            let path = class_dir.join(name);
            image::GrayImage::from_raw(w, h, frame.to_vec())
                .expect("a frame holds height x width bytes")
                .save(&path)
                .map_err(|e| fail(&path, e.to_string()))?;
        }
    }
    Ok(())
}

/// Reads the clips at `path`: an `.npz` with `clips.npy` (and optionally `labels.npy`, int64
/// (n,)), or a bare `.npy`, told apart by their first bytes. The clip array is uint8 with its
/// axes in `layout`; the result is (n, frames, height, width) whatever the layout.
pub fn read_clips(path: &Path, layout: ClipLayout) -> Result<Clips, VideoError> {
    let invalid = |reason: String| VideoError::File {
        path: path.to_path_buf(),
        reason,
    };
    let expected = format!("expected uint8 '|u1' {}", layout.axes());
    let (clips, labels, prefix) = match read_numpy(path)? {
        NumpyFile::Npy(array) => (array, None, String::new()),
        NumpyFile::Npz(arrays) => {
            let names: Vec<&str> = arrays.iter().map(|a| a.name.as_str()).collect();
            let missing = format!("no {CLIPS}.npy (members: {names:?}); {expected}");
            let (mut clips, mut labels) = (None, None);
            for array in arrays {
                match array.name.as_str() {
                    CLIPS => clips = Some(array),
                    LABELS => labels = Some(array),
                    _ => {}
                }
            }
            (
                clips.ok_or_else(|| invalid(missing))?,
                labels,
                format!("{CLIPS}.npy: "),
            )
        }
    };
    if clips.dtype != NpyArray::U8 {
        return Err(invalid(format!(
            "{prefix}dtype '{}', {expected}",
            clips.dtype
        )));
    }
    let Ok([a, b, height, width]) = <[usize; 4]>::try_from(&clips.shape[..]) else {
        return Err(invalid(format!(
            "{prefix}shape {:?} is not 4-D, {expected}",
            clips.shape
        )));
    };
    let (n, frames, pixels) = match layout {
        ClipLayout::Nfhw => (a, b, clips.bytes.into_owned()),
        ClipLayout::Fnhw => (b, a, fnhw_to_nfhw(&clips.bytes, [a, b, height, width])),
    };
    let labels = labels.map(|array| match array.to_i64() {
        Some(values) if array.shape == [n] => Ok(values),
        _ => Err(invalid(format!(
            "{LABELS}.npy: '{}' {:?}, expected int64 '<i8' ({n},)",
            array.dtype, array.shape
        ))),
    });
    Clips::new(pixels, [n, frames, height, width], labels.transpose()?)
        .map_err(|e| invalid(e.to_string()))
}

/// `bytes`: (frames, n, height, width) for `shape` = [frames, n, height, width] -> (n, frames,
/// height, width).
fn fnhw_to_nfhw(bytes: &[u8], [frames, n, height, width]: [usize; 4]) -> Vec<u8> {
    let len = height * width;
    let mut out = Vec::with_capacity(bytes.len());
    for i in 0..n {
        for f in 0..frames {
            let at = (f * n + i) * len;
            out.extend_from_slice(&bytes[at..at + len]);
        }
    }
    out
}

/// Checks that the frames of `clips`, read from `path`, are `size` x `size`.
pub fn expect_frame_size(clips: &Clips, path: &Path, size: usize) -> Result<(), VideoError> {
    if (clips.height, clips.width) != (size, size) {
        return Err(VideoError::File {
            path: path.to_path_buf(),
            reason: format!(
                "frames are {}x{} (height x width), expected {size}x{size}",
                clips.height, clips.width
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` built by hand: a version 1.0 header holding `dict`, unpadded, then `data`.
    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((dict.len() as u16).to_le_bytes());
        bytes.extend(dict.as_bytes());
        bytes.extend(data);
        bytes
    }

    fn u8_dict(shape: &str) -> String {
        format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}\n")
    }

    /// The error's message, which must name `path`.
    fn error_naming(path: &Path, result: Result<Clips, VideoError>) -> String {
        let message = result.expect_err("expected an error").to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        message
    }

    #[test]
    fn clips_and_labels_round_trip_through_npz() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clips.npz");
        let pixels: Vec<u8> = (0..3 * 2 * 4 * 5).map(|i| (i * 11 % 256) as u8).collect();
        for labels in [Some(vec![4, -2, 9]), None] {
            let clips = Clips::new(pixels.clone(), [3, 2, 4, 5], labels).unwrap();
            write_clips(&path, &clips).unwrap();
            assert_eq!(read_clips(&path, ClipLayout::Nfhw).unwrap(), clips);
        }
    }

    #[test]
    fn bare_nfhw_npy_reads_without_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clips.npy");
        let data: Vec<u8> = (0..2 * 3 * 2 * 2).collect();
        std::fs::write(&path, npy(&u8_dict("(2, 3, 2, 2)"), &data)).unwrap();
        let clips = read_clips(&path, ClipLayout::Nfhw).unwrap();
        assert_eq!(clips, Clips::new(data, [2, 3, 2, 2], None).unwrap());
    }

    #[test]
    fn fnhw_layout_is_transposed_to_nfhw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnist_test_seq.npy");
        // 3 frames of 2 clips of 1x2 pixels; the value 10 * frame + clip, twice per frame.
        let data: Vec<u8> = (0..3u8)
            .flat_map(|f| (0..2u8).flat_map(move |i| [10 * f + i; 2]))
            .collect();
        std::fs::write(&path, npy(&u8_dict("(3, 2, 1, 2)"), &data)).unwrap();
        let clips = read_clips(&path, ClipLayout::Fnhw).unwrap();
        assert_eq!(clips.shape(), [2, 3, 1, 2]);
        assert_eq!(clips.clip(0), &[0, 0, 10, 10, 20, 20]);
        assert_eq!(clips.clip(1), &[1, 1, 11, 11, 21, 21]);
    }

    #[test]
    fn bad_files_give_errors_naming_the_file_and_the_expected_array() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let cases = [
            (
                write("rank3.npy", &npy(&u8_dict("(2, 2, 2)"), &[0; 8])),
                "shape [2, 2, 2] is not 4-D, expected uint8 '|u1' (N, F, H, W)",
            ),
            (
                write(
                    "float.npy",
                    &npy(
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1), }",
                        &[0; 4],
                    ),
                ),
                "dtype '<f4', expected uint8 '|u1' (N, F, H, W)",
            ),
            (
                write("short.npy", &npy(&u8_dict("(1, 2, 2, 2)"), &[0; 7])),
                "7 data bytes, but shape [1, 2, 2, 2] of '|u1' needs 8",
            ),
            (
                write("text.npz", b"not numpy at all"),
                "neither an .npy array",
            ),
        ];
        for (path, expected) in cases {
            let message = error_naming(&path, read_clips(&path, ClipLayout::Nfhw));
            assert!(message.contains(expected), "{message}");
        }

        let samples = dir.path().join("samples.npz");
        crate::output::write_npz(&samples, &[0; 4], [1, 2, 2, 1], &[3]).unwrap();
        let message = error_naming(&samples, read_clips(&samples, ClipLayout::Nfhw));
        assert!(
            message.contains("no clips.npy (members: [\"arr_0\", \"labels\"])"),
            "{message}"
        );

        // A zip cut short: the reader says which file it could not open as an archive.
        let whole = std::fs::read(&samples).unwrap();
        let cut = write("cut.npz", &whole[..whole.len() / 2]);
        error_naming(&cut, read_clips(&cut, ClipLayout::Nfhw));

        let missing = dir.path().join("absent.npz");
        error_naming(&missing, read_clips(&missing, ClipLayout::Nfhw));
    }

    #[test]
    fn labels_of_the_wrong_length_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clips.npz");
        let arrays = [
            NpyArray::u8(CLIPS, &[2, 1, 1, 1], &[0, 0]),
            NpyArray::i64(LABELS, &[1, 2, 3]),
        ];
        write_npz_arrays(&path, &arrays).unwrap();
        let message = error_naming(&path, read_clips(&path, ClipLayout::Nfhw));
        assert!(
            message.ends_with("labels.npy: '<i8' [3], expected int64 '<i8' (2,)"),
            "{message}"
        );
    }

    #[test]
    fn expect_frame_size_names_the_file_and_both_sizes() {
        let clips = Clips::new(vec![0; 2 * 4 * 4], [1, 2, 4, 4], None).unwrap();
        let path = Path::new("data/clips.npz");
        expect_frame_size(&clips, path, 4).unwrap();
        let err = expect_frame_size(&clips, path, 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "data/clips.npz: frames are 4x4 (height x width), expected 8x8"
        );
    }
}
