//! `unfold_brick`: CPU twin of `shaders/unfold_brick.wgsl` (reads the red channel of each pixel).

use super::{unfold_tiled, PixelSink};

struct RedChannel;

impl PixelSink for RedChannel {
    type Cell = u8;
    #[inline(always)]
    fn cell(pixel: u32) -> u8 {
        pixel as u8
    }
}

/// Reads `out.len()` bytes back from a `.brick` texture of side `2^order`.
pub fn unfold_brick(texture: &[u32], order: u32, out: &mut [u8]) {
    unfold_tiled::<RedChannel>(order, texture, out);
}
