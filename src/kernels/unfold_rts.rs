//! `unfold_rts`: CPU twin of `shaders/unfold_rts.wgsl` (RGBA bytes of each pixel, truncated to the length).

use super::{unfold_tiled, PixelSink};

struct DenseRgba;

impl PixelSink for DenseRgba {
    type Cell = [u8; 4];
    #[inline(always)]
    fn cell(pixel: u32) -> [u8; 4] {
        pixel.to_le_bytes()
    }
}

/// Reads `out.len()` bytes back from an `.rts.png` texture of side `2^order`.
pub fn unfold_rts(texture: &[u32], order: u32, out: &mut [u8]) {
    unfold_tiled::<DenseRgba>(order, texture, out);
}
