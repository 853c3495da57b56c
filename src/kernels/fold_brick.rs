//! `fold_brick`: CPU twin of `shaders/fold_brick.wgsl` (one byte per pixel, R=G=B=byte, A=255).

use super::{fold_tiled, refold_tiled, Layout, PixelSource};
use crate::curve::TILE_PIXELS;

struct BrickBytes<'a>(&'a [u8]);

impl PixelSource for BrickBytes<'_> {
    type Cell = u8;
    fn whole_tile(&self, tile: usize) -> Option<&[u8; TILE_PIXELS]> {
        self.0.get(tile * TILE_PIXELS..)?.first_chunk()
    }
    #[inline(always)]
    fn pixel(byte: u8) -> u32 {
        brick_pixel(byte)
    }
    fn pixel_or_padding(&self, p: usize) -> u32 {
        self.0
            .get(p)
            .map_or(Layout::Brick.padding_pixel(), |&b| brick_pixel(b))
    }
}

/// The `.brick` pixel of one source byte, as little-endian RGBA.
#[inline(always)]
pub fn brick_pixel(byte: u8) -> u32 {
    (u32::from(byte) * 0x0001_0101) | 0xFF00_0000
}

/// Folds `data` into `texture` (side `2^order`, `data.len() <= 4^order`).
pub fn fold_brick(data: &[u8], order: u32, texture: &mut [u32]) {
    assert!(
        data.len() <= texture.len(),
        "source larger than the texture"
    );
    fold_tiled(order, &BrickBytes(data), texture);
}

/// Re-folds the pixels with curve indices in `pixels` into `texture`, an earlier `fold_brick`.
pub fn refold_brick(
    data: &[u8],
    order: u32,
    texture: &mut [u32],
    pixels: std::ops::Range<usize>,
    rows: &mut Vec<std::ops::Range<usize>>,
) {
    refold_tiled(order, &BrickBytes(data), texture, pixels, rows);
}
