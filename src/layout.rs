//! Where each token sits: pixels <-> tokens in block order, and each token's RoPE position.
//!
//! A token is one `patch x patch` patch with its values ordered (row in patch, column in patch,
//! channel), channel fastest, as the reference's `einops` layout. Tokens are ordered block by
//! block: for images, square tiles of tokens in raster order, each tile in raster order; for video,
//! frames in order, each frame in raster order.

use crate::config::ModelConfig;

/// For each token in block order, its (frame, row, column) on the token grid.
pub fn token_coordinates(config: &ModelConfig) -> Vec<[usize; 3]> {
    let side = config.img_hw / config.patch_size;
    let mut coords = Vec::with_capacity(config.seq_len());
    if config.square_block {
        let block_side = config.block_size.isqrt();
        let blocks_per_row = side / block_side;
        for block in 0..config.ar_len {
            let (block_row, block_col) = (block / blocks_per_row, block % blocks_per_row);
            for i in 0..config.block_size {
                let row = block_row * block_side + i / block_side;
                let col = block_col * block_side + i % block_side;
                coords.push([0, row, col]);
            }
        }
    } else {
        for frame in 0..config.temporal_len {
            for i in 0..config.spatial_len {
                coords.push([frame, i / side, i % side]);
            }
        }
    }
    coords
}

/// RoPE position ids, (axes, seq_len): (row, column) for images, (frame, row, column) for video.
pub fn position_ids(config: &ModelConfig) -> Vec<Vec<usize>> {
    let coords = token_coordinates(config);
    let first_axis = if config.temporal_len == 1 { 1 } else { 0 };
    (first_axis..3)
        .map(|axis| coords.iter().map(|c| c[axis]).collect())
        .collect()
}

/// pixels: (n, frames, channels, height, width) -> tokens: (n, seq_len, latent_size), block order.
///
/// Images pass `frames = 1`.
pub fn patchify(config: &ModelConfig, pixels: &[f32], n: usize) -> Vec<f32> {
    let (c, p, hw) = (config.in_channels, config.patch_size, config.img_hw);
    let frame_len = c * hw * hw;
    let coords = token_coordinates(config);
    let mut tokens = Vec::with_capacity(n * coords.len() * config.latent_size);
    for item in 0..n {
        let video = &pixels[item * config.temporal_len * frame_len..];
        for &[frame, row, col] in &coords {
            let image = &video[frame * frame_len..];
            for dy in 0..p {
                for dx in 0..p {
                    for ch in 0..c {
                        let (y, x) = (row * p + dy, col * p + dx);
                        tokens.push(image[(ch * hw + y) * hw + x]);
                    }
                }
            }
        }
    }
    tokens
}

/// tokens: (n, seq_len, latent_size) in block order -> pixels: (n, frames, channels, height, width).
pub fn unpatchify(config: &ModelConfig, tokens: &[f32], n: usize) -> Vec<f32> {
    let (c, p, hw) = (config.in_channels, config.patch_size, config.img_hw);
    let frame_len = c * hw * hw;
    let coords = token_coordinates(config);
    let mut pixels = vec![0.0; n * config.temporal_len * frame_len];
    let mut values = tokens.iter();
    for item in 0..n {
        let video = item * config.temporal_len * frame_len;
        for &[frame, row, col] in &coords {
            for dy in 0..p {
                for dx in 0..p {
                    for ch in 0..c {
                        let (y, x) = (row * p + dy, col * p + dx);
                        pixels[video + frame * frame_len + (ch * hw + y) * hw + x] =
                            *values.next().expect("tokens shorter than the layout");
                    }
                }
            }
        }
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpatchify_inverts_patchify() {
        let config = ModelConfig::bench_mnist();
        let pixels: Vec<f32> = (0..2 * 28 * 28).map(|i| i as f32).collect();
        let tokens = patchify(&config, &pixels, 2);
        assert_eq!(tokens.len(), 2 * 196 * 4);
        assert_eq!(unpatchify(&config, &tokens, 2), pixels);
    }

    #[test]
    fn square_blocks_are_tiles_in_raster_order() {
        let config = ModelConfig::bench_mnist();
        let coords = token_coordinates(&config);
        // Second block is the top-right 7x7 tile; its first token is at row 0, column 7.
        assert_eq!(coords[49], [0, 0, 7]);
        assert_eq!(coords[49 + 8], [0, 1, 8]);
        assert_eq!(coords[2 * 49], [0, 7, 0]);
        let positions = position_ids(&config);
        assert_eq!(positions.len(), 2);
        assert_eq!((positions[0][57], positions[1][57]), (1, 8));
    }
}
