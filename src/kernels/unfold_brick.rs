//! `unfold_brick`: CPU twin of `shaders/unfold_brick.wgsl` (reads the red channel of each pixel).

use super::{unfold_tiled, PixelSink};

struct RedChannel;

impl PixelSink for RedChannel {
    const BYTES_PER_PIXEL: usize = 1;
    #[inline(always)]
    fn put(pixel: u32, out: &mut [u8]) {
        out[0] = pixel as u8;
    }
}

/// Reads `out.len()` bytes back from a `.brick` texture of side `2^order`.
pub fn unfold_brick(texture: &[u32], order: u32, out: &mut [u8]) {
    unfold_tiled::<RedChannel>(order, texture, out);
}
