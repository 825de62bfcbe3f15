//! ADM's centre crop (`center_crop_arr` in guided-diffusion, which DiT and ACDiT train with):
//! halve with a box filter while the shorter side is at least twice the target, resize bicubically
//! so the shorter side is the target, then cut the centre square.
//!
//! The resampling is the `image` crate's (Catmull-Rom, the bicubic kernel PIL uses), so pixels
//! can differ from PIL's by rounding; the geometry (sizes, crop offsets) is ADM's exactly.

use image::RgbImage;
use image::imageops::{self, FilterType};

/// `image` cropped to `size` x `size` as ADM does.
pub fn center_crop(mut image: RgbImage, size: u32) -> RgbImage {
    while image.width().min(image.height()) >= 2 * size {
        image = halve(&image);
    }
    let scale = f64::from(size) / f64::from(image.width().min(image.height()));
    let (width, height) = (
        (f64::from(image.width()) * scale).round() as u32,
        (f64::from(image.height()) * scale).round() as u32,
    );
    if (width, height) != image.dimensions() {
        image = imageops::resize(&image, width, height, FilterType::CatmullRom);
    }
    let (x, y) = ((width - size) / 2, (height - size) / 2);
    imageops::crop_imm(&image, x, y, size, size).to_image()
}

/// Half the size (rounded down), each output pixel the mean of its 2x2 input pixels.
fn halve(image: &RgbImage) -> RgbImage {
    let (width, height) = (image.width() / 2, image.height() / 2);
    RgbImage::from_fn(width, height, |x, y| {
        let mut sum = [0u32; 3];
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let pixel = image.get_pixel(2 * x + dx, 2 * y + dy);
            for (s, v) in sum.iter_mut().zip(pixel.0) {
                *s += u32::from(v);
            }
        }
        image::Rgb(sum.map(|s| ((s + 2) / 4) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_are_square_of_the_target_and_keep_the_centre() {
        // Left third red, middle green, right third blue: a wide image keeps the green middle.
        let wide = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let crop = center_crop(wide, 32);
        assert_eq!(crop.dimensions(), (32, 32));
        assert_eq!(crop.get_pixel(16, 16).0, [0, 255, 0]);
        // 100 >= 2 * 32 halves once to 150x50, then scales by 32/50 to 96x32.
        let tall = RgbImage::from_pixel(45, 130, image::Rgb([7, 8, 9]));
        let crop = center_crop(tall, 16);
        assert_eq!(crop.dimensions(), (16, 16));
        assert!(crop.pixels().all(|p| p.0 == [7, 8, 9]));
        let small = RgbImage::from_pixel(10, 12, image::Rgb([1, 2, 3]));
        assert_eq!(center_crop(small, 32).dimensions(), (32, 32));
    }

    #[test]
    fn halving_averages_each_two_by_two() {
        let image = RgbImage::from_fn(4, 2, |x, y| image::Rgb([(10 * x + 100 * y) as u8, 0, 0]));
        let half = halve(&image);
        assert_eq!(half.dimensions(), (2, 1));
        assert_eq!(half.get_pixel(0, 0).0[0], 55);
        assert_eq!(half.get_pixel(1, 0).0[0], 75);
    }
}
