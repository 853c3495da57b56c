//! `fold_rts`: CPU twin of `shaders/fold_rts.wgsl` (four dense bytes per pixel, zero-padded tail).

use super::{fold_tiled, PixelSource};

struct RtsWords<'a>(&'a [u8]);

impl PixelSource for RtsWords<'_> {
    fn whole_pixels(&self) -> usize {
        self.0.len() / 4
    }
    #[inline(always)]
    fn pixel(&self, p: usize) -> u32 {
        let bytes: [u8; 4] = self.0[p * 4..p * 4 + 4].try_into().expect("four bytes");
        u32::from_le_bytes(bytes)
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
