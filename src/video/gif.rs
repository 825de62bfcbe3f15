//! Animated GIFs of grayscale clips, to look at them: frames upscaled by nearest neighbour so
//! 32x32 digits are visible, a palette of all 256 greys so every pixel keeps its exact value,
//! looping forever. Several clips can be laid side by side, e.g. truth beside prediction.

use std::borrow::Cow;
use std::path::Path;

use ::gif::{Encoder, Frame, Repeat};

use super::VideoError;

/// The grey of the gap between clips laid side by side: mid-grey, visible against both the
/// black background and white strokes.
pub const GAP_GREY: u8 = 128;

/// Writes `frames`, each (height, width) grey bytes, as an animated GIF at `path`, atomically:
/// every frame shown for `delay_centiseconds`, each pixel drawn as a `scale` x `scale` square,
/// looping forever.
pub fn write_gif(
    path: &Path,
    frames: &[&[u8]],
    (height, width): (usize, usize),
    delay_centiseconds: u16,
    scale: usize,
) -> Result<(), VideoError> {
    let invalid = |reason: String| VideoError::File {
        path: path.to_path_buf(),
        reason,
    };
    if frames.is_empty() || scale == 0 {
        return Err(invalid(format!(
            "a GIF needs at least one frame and a scale of at least 1, given {} frames at scale {scale}",
            frames.len()
        )));
    }
    if let Some((f, frame)) = frames
        .iter()
        .enumerate()
        .find(|(_, frame)| frame.len() != height * width)
    {
        return Err(invalid(format!(
            "frame {f} has {} pixels, expected {height}x{width}",
            frame.len()
        )));
    }
    let side = |len: usize| u16::try_from(len * scale).ok();
    let (Some(out_height), Some(out_width)) = (side(height), side(width)) else {
        return Err(invalid(format!(
            "{height}x{width} frames at scale {scale} exceed the GIF limit of 65535 pixels a side"
        )));
    };
    let gif_error = |source| VideoError::Gif {
        path: path.to_path_buf(),
        source,
    };
    let greys: Vec<u8> = (0..=255).flat_map(|g| [g, g, g]).collect();
    let mut encoder = Encoder::new(Vec::new(), out_width, out_height, &greys).map_err(gif_error)?;
    encoder.set_repeat(Repeat::Infinite).map_err(gif_error)?;
    for frame in frames {
        let frame = Frame {
            delay: delay_centiseconds,
            width: out_width,
            height: out_height,
            buffer: Cow::Owned(upscale(frame, width, scale)),
            ..Frame::default()
        };
        encoder.write_frame(&frame).map_err(gif_error)?;
    }
    let bytes = encoder.into_inner().map_err(gif_error)?;
    crate::atomic::write_bytes_atomic(path, &bytes).map_err(|source| {
        VideoError::Output(crate::output::OutputError::Write {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// `frame`: (height, width) -> (height * scale, width * scale), each pixel repeated.
fn upscale(frame: &[u8], width: usize, scale: usize) -> Vec<u8> {
    frame
        .chunks_exact(width)
        .flat_map(|row| {
            let wide: Vec<u8> = row
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p, scale))
                .collect();
            std::iter::repeat_n(wide, scale).flatten()
        })
        .collect()
}

/// Lays `clips`, each (frames, height, width), left to right with `gap` columns of
/// [`GAP_GREY`] between them: -> (frames, height, wide) and wide = n * width + (n - 1) * gap.
pub fn side_by_side(
    clips: &[&[u8]],
    frames: usize,
    (height, width): (usize, usize),
    gap: usize,
) -> Result<(Vec<u8>, usize), VideoError> {
    let len = frames * height * width;
    if let Some((i, clip)) = clips.iter().enumerate().find(|(_, c)| c.len() != len) {
        return Err(VideoError::Shape(format!(
            "clip {i} has {} pixels, expected {frames} frames of {height}x{width}",
            clip.len()
        )));
    }
    let wide = (clips.len() * (width + gap)).saturating_sub(gap);
    let mut out = Vec::with_capacity(frames * height * wide);
    for row in 0..frames * height {
        for (i, clip) in clips.iter().enumerate() {
            if i > 0 {
                out.extend(std::iter::repeat_n(GAP_GREY, gap));
            }
            out.extend_from_slice(&clip[row * width..(row + 1) * width]);
        }
    }
    Ok((out, wide))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_gif_decodes_to_the_upscaled_frames_looping_forever() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.gif");
        // Three 2x3 frames whose pixels run over the grey levels, 0 and 255 included.
        let frames: Vec<Vec<u8>> = (0..3u8)
            .map(|f| {
                (0..6u8)
                    .map(|p| [0, 255, 17, 128, 254, 1][p as usize] ^ f)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        write_gif(&path, &refs, (2, 3), 12, 2).unwrap();

        let mut options = ::gif::DecodeOptions::new();
        options.set_color_output(::gif::ColorOutput::Indexed);
        let mut decoder = options
            .read_info(std::fs::File::open(&path).unwrap())
            .unwrap();
        assert_eq!((decoder.width(), decoder.height()), (6, 4));
        let palette = decoder.global_palette().unwrap().to_vec();
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            assert_eq!((frame.width, frame.height, frame.delay), (6, 4, 12));
            let greys: Vec<u8> = frame
                .buffer
                .iter()
                .map(|&i| palette[3 * usize::from(i)])
                .collect();
            decoded.push(greys);
        }
        assert_eq!(decoder.repeat(), Repeat::Infinite);
        assert_eq!(decoded.len(), 3);
        for (frame, greys) in frames.iter().zip(&decoded) {
            assert_eq!(*greys, upscale(frame, 3, 2));
            // Pixel (row 1, column 2) of the source covers rows 2-3, columns 4-5.
            assert_eq!(greys[2 * 6 + 4], frame[5]);
            assert_eq!(greys[3 * 6 + 5], frame[5]);
        }
    }

    #[test]
    fn upscale_repeats_each_pixel_into_a_square() {
        assert_eq!(
            upscale(&[1, 2, 3, 4], 2, 2),
            [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
        );
    }

    #[test]
    fn side_by_side_puts_a_grey_gap_between_clips() {
        // Two clips of 2 frames of 1x2.
        let (truth, prediction) = ([1, 2, 3, 4], [5, 6, 7, 8]);
        let (wide, width) = side_by_side(&[&truth, &prediction], 2, (1, 2), 1).unwrap();
        assert_eq!(width, 5);
        let g = GAP_GREY;
        assert_eq!(wide, [1, 2, g, 5, 6, 3, 4, g, 7, 8]);
        assert!(side_by_side(&[&truth, &[0; 3]], 2, (1, 2), 1).is_err());
    }

    #[test]
    fn bad_frames_are_errors_naming_the_file() {
        let path = Path::new("never.gif");
        for (frames, scale) in [(vec![&[0u8; 3][..]], 1), (vec![], 1), (vec![&[0; 4]], 0)] {
            let err = write_gif(path, &frames, (2, 2), 10, scale).unwrap_err();
            assert!(err.to_string().starts_with("never.gif: "), "{err}");
        }
        let huge = write_gif(path, &[&[0; 4]], (2, 2), 10, 40_000).unwrap_err();
        assert!(huge.to_string().contains("65535"), "{huge}");
        assert!(!path.exists());
    }
}
