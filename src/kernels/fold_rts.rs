//! `fold_rts`: CPU twin of `shaders/fold_rts.wgsl` (four dense bytes per pixel, zero-padded tail).

use super::{fold_tiled, refold_tiled, PixelSource};
use crate::curve::TILE_PIXELS;

struct RtsWords<'a>(&'a [u8]);

impl PixelSource for RtsWords<'_> {
    type Cell = [u8; 4];
    fn whole_tile(&self, tile: usize) -> Option<&[[u8; 4]; TILE_PIXELS]> {
        let bytes = self
            .0
            .get(tile * TILE_PIXELS * 4..)?
            .get(..TILE_PIXELS * 4)?;
        bytemuck::cast_slice::<u8, [u8; 4]>(bytes).try_into().ok()
    }
    #[inline(always)]
    fn pixel(cell: [u8; 4]) -> u32 {
        u32::from_le_bytes(cell)
    }
    fn pixel_or_padding(&self, p: usize) -> u32 {
        let mut bytes = [0u8; 4];
        if let Some(tail) = self.0.get(p * 4..) {
            let n = tail.len().min(4);
            bytes[..n].copy_from_slice(&tail[..n]);
        }
        u32::from_le_bytes(bytes)
    }
}

/// Folds `data` into `texture` (side `2^order`, `data.len() <= 4 * 4^order`).
pub fn fold_rts(data: &[u8], order: u32, texture: &mut [u32]) {
    assert!(
        data.len() <= texture.len() * 4,
        "source larger than the texture"
    );
    fold_tiled(order, &RtsWords(data), texture);
}

/// Re-folds the pixels with curve indices in `pixels` into `texture`, an earlier `fold_rts`.
pub fn refold_rts(
    data: &[u8],
    order: u32,
    texture: &mut [u32],
    pixels: std::ops::Range<usize>,
    rows: &mut Vec<std::ops::Range<usize>>,
) {
    refold_tiled(order, &RtsWords(data), texture, pixels, rows);
}
