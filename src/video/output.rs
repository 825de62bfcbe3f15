//! What a video sampling or prediction run leaves in its folder: the clips as an `.npz`, an
//! animated GIF per clip, and an MP4 per clip when `ffmpeg` is on the PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::clips::write_clips;
use super::gif::{side_by_side, write_gif};
use super::{Clips, VideoError};

/// Frames a second of the GIFs and MP4s.
const FRAMES_PER_SECOND: u16 = 5;
/// Each pixel drawn as this many squared, so that 32x32 frames are visible.
const SCALE: usize = 4;

/// One-channel pixels (n, frames, 1, height, width) in [-1, 1] as uint8 clips.
pub fn clips_from_pixels(
    pixels: &[f32],
    [n, frames, height, width]: [usize; 4],
    labels: Option<Vec<i64>>,
) -> Result<Clips, VideoError> {
    let bytes = pixels
        .iter()
        .map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
        .collect();
    Clips::new(bytes, [n, frames, height, width], labels)
}

/// A file-safe stem for clip `index` of class `name`: `0003-7`.
fn stem(index: usize, name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{index:04}-{name}")
}

/// Writes `dir/npz_name` and a GIF (and an MP4 with ffmpeg) per clip, named by index and
/// `names[i]`, the clip's class. With `truth`, each animation shows the truth left of the clip.
pub fn write_clip_files(
    dir: &Path,
    npz_name: &str,
    clips: &Clips,
    names: &[&str],
    truth: Option<&Clips>,
) -> Result<Vec<PathBuf>, VideoError> {
    write_clips(&dir.join(npz_name), clips)?;
    let (height, width) = (clips.height, clips.width);
    let ffmpeg = ffmpeg_available();
    let mut written = Vec::new();
    if names.len() != clips.n {
        return Err(VideoError::Shape(format!(
            "{} names for {} clips",
            names.len(),
            clips.n
        )));
    }
    for (i, name) in names.iter().enumerate() {
        let (frames, shown_width) = match truth {
            Some(truth) => side_by_side(
                &[truth.clip(i), clips.clip(i)],
                clips.frames,
                (height, width),
                2,
            )?,
            None => (clips.clip(i).to_vec(), width),
        };
        let frame_refs: Vec<&[u8]> = frames.chunks(height * shown_width).collect();
        let path = dir.join(format!("{}.gif", stem(i, name)));
        write_gif(
            &path,
            &frame_refs,
            (height, shown_width),
            100 / FRAMES_PER_SECOND,
            SCALE,
        )?;
        written.push(path);
        if ffmpeg {
            let mp4 = dir.join(format!("{}.mp4", stem(i, name)));
            write_mp4(&mp4, &frame_refs, (height, shown_width))?;
            written.push(mp4);
        }
    }
    Ok(written)
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An H.264 MP4 of grey `frames` through ffmpeg, from raw bytes on its standard input.
fn write_mp4(
    path: &Path,
    frames: &[&[u8]],
    (height, width): (usize, usize),
) -> Result<(), VideoError> {
    use std::io::Write;
    let failed = |reason: String| VideoError::File {
        path: path.to_path_buf(),
        reason,
    };
    // H.264 in yuv420p needs even sides; upscaling by SCALE makes them so.
    let mut child = Command::new("ffmpeg")
        .args([
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
        ])
        .args(["-s", &format!("{width}x{height}")])
        .args(["-r", &FRAMES_PER_SECOND.to_string(), "-i", "-"])
        .args([
            "-vf",
            &format!("scale=iw*{SCALE}:ih*{SCALE}:flags=neighbor"),
        ])
        .args(["-pix_fmt", "yuv420p"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("starting ffmpeg: {e}")))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    for frame in frames {
        stdin
            .write_all(frame)
            .map_err(|e| failed(format!("feeding ffmpeg: {e}")))?;
    }
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("waiting for ffmpeg: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "ffmpeg failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::clips::{ClipLayout, read_clips};

    #[test]
    fn clip_files_hold_the_clips_and_one_animation_each() {
        let pixels: Vec<f32> = (0..2 * 3 * 16 * 16)
            .map(|i| (i % 7) as f32 / 3.0 - 1.0)
            .collect();
        let clips = clips_from_pixels(&pixels, [2, 3, 16, 16], Some(vec![4, 1])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let written =
            write_clip_files(dir.path(), "clips.npz", &clips, &["4", "T-shirt/top"], None).unwrap();
        assert!(written.contains(&dir.path().join("0000-4.gif")));
        assert!(written.contains(&dir.path().join("0001-T_shirt_top.gif")));
        let back = read_clips(&dir.path().join("clips.npz"), ClipLayout::Nfhw).unwrap();
        assert_eq!(back, clips);
        assert_eq!(clips.clip(0)[0], 0);
        assert_eq!((clips.clip(0)[3], clips.clip(0)[6]), (128, 255));
    }
}
