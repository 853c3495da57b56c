//! CPU twins of the WGSL kernels in `shaders/`: same names, same contracts, same bytes.
//!
//! A fold maps curve index `p` to texture pixel `d2xy(order, p)`; the CPU
//! twins do it one 16x16 tile at a time (see [`crate::curve::tile_placement`])
//! so each tile reads one contiguous run of source bytes and writes sixteen
//! 64-byte rows, instead of paying a full `d2xy` per byte.

pub mod diff_blocks;
pub mod fold_brick;
pub mod fold_rts;
pub mod preview_stats;
pub mod unfold_brick;
pub mod unfold_rts;

use crate::curve::{tile_placement, tile_tables, xy2d, TILE_ORDER, TILE_PIXELS, TILE_SIDE};
use rayon::prelude::*;

/// How source bytes become pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `.brick`: one byte per pixel, `R = G = B = byte`, `A = 255`.
    Brick,
    /// `.rts.png`: four dense bytes per pixel, R, G, B, A.
    Rts,
}

impl Layout {
    /// Source bytes stored in one pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Layout::Brick => 1,
            Layout::Rts => 4,
        }
    }

    /// The pixel (little-endian RGBA in a `u32`) written where there is no source byte.
    pub fn padding_pixel(self) -> u32 {
        match self {
            Layout::Brick => 0xFF00_0000,
            Layout::Rts => 0,
        }
    }

    /// Pixels needed for `len` source bytes.
    pub fn pixels_for(self, len: u64) -> u64 {
        len.div_ceil(self.bytes_per_pixel() as u64)
    }
}

/// Reads source cells (one per pixel) along the curve.
pub(crate) trait PixelSource: Sync {
    /// What one pixel is made of: a byte (brick) or four (rts).
    type Cell: Copy;
    /// The cells of whole tile `tile`, when all its source bytes are present.
    /// A fixed-size array lets the tile loop index with a `u8` offset and no
    /// bounds check.
    fn whole_tile(&self, tile: usize) -> Option<&[Self::Cell; TILE_PIXELS]>;
    /// The pixel of one cell.
    fn pixel(cell: Self::Cell) -> u32;
    /// Pixel `p` for any `p`, padding what lies past the end.
    fn pixel_or_padding(&self, p: usize) -> u32;
}

/// Texture side for `order`, checking the texture has exactly that many pixels.
fn side_of(order: u32, texture_len: usize) -> usize {
    let side = 1usize << order;
    assert_eq!(texture_len, side * side, "texture must hold 4^order pixels");
    side
}

/// Fills `texture` (row-major, side `2^order`) from `source` along the curve.
pub(crate) fn fold_tiled<S: PixelSource>(order: u32, source: &S, texture: &mut [u32]) {
    let side = side_of(order, texture.len());
    if order < TILE_ORDER {
        for (at, pixel) in texture.iter_mut().enumerate() {
            let d = xy2d(order, (at % side) as u32, (at / side) as u32);
            *pixel = source.pixel_or_padding(d as usize);
        }
        return;
    }
    texture
        .par_chunks_mut(side * TILE_SIDE)
        .enumerate()
        .for_each(|(tile_row, stripe)| {
            for tile_col in 0..side / TILE_SIDE {
                let tile = xy2d(order - TILE_ORDER, tile_col as u32, tile_row as u32) as usize;
                fill_tile(order, source, tile, stripe, tile_col * TILE_SIDE, side);
            }
        });
}

/// Writes tile `tile`'s 256 pixels: its row `ly` is `pixels[first + ly * stride..][..16]`.
fn fill_tile<S: PixelSource>(
    order: u32,
    source: &S,
    tile: usize,
    pixels: &mut [u32],
    first: usize,
    stride: usize,
) {
    let (_, transform) = tile_placement(order, tile as u64);
    let offsets = &tile_tables().offset_at[transform];
    let rows = offsets.chunks_exact(TILE_SIDE).enumerate();
    match source.whole_tile(tile) {
        Some(cells) => {
            for (ly, row_offsets) in rows {
                let row = &mut pixels[first + ly * stride..][..TILE_SIDE];
                for (out, &off) in row.iter_mut().zip(row_offsets) {
                    *out = S::pixel(cells[off as usize]);
                }
            }
        }
        None => {
            let base = tile * TILE_PIXELS;
            for (ly, row_offsets) in rows {
                let row = &mut pixels[first + ly * stride..][..TILE_SIDE];
                for (out, &off) in row.iter_mut().zip(row_offsets) {
                    *out = source.pixel_or_padding(base + off as usize);
                }
            }
        }
    }
}

/// Re-folds only the pixels with curve indices in `pixels` (widened to whole tiles) into
/// `texture`, which holds a fold of the same order: an edit re-folds its pages, not the file.
/// The result is exactly what [`fold_tiled`] gives for the same source. Adds the texture rows
/// it wrote to `rows`.
pub(crate) fn refold_tiled<S: PixelSource>(
    order: u32,
    source: &S,
    texture: &mut [u32],
    pixels: std::ops::Range<usize>,
    rows: &mut Vec<std::ops::Range<usize>>,
) {
    let side = side_of(order, texture.len());
    let end = pixels.end.min(texture.len());
    if order < TILE_ORDER {
        for d in pixels.start..end {
            let (x, y) = crate::curve::d2xy(order, d as u64);
            texture[y as usize * side + x as usize] = source.pixel_or_padding(d);
        }
        rows.push(0..side);
        return;
    }
    for tile in pixels.start / TILE_PIXELS..end.div_ceil(TILE_PIXELS) {
        let ((x, y), _) = tile_placement(order, tile as u64);
        let (x, y) = (x as usize, y as usize);
        fill_tile(order, source, tile, texture, y * side + x, side);
        rows.push(y..y + TILE_SIDE);
    }
}

/// Re-folds the pixels holding the source bytes in `changed` (byte ranges of `data`, which may
/// reach past its end when the source shrank) into `texture`, an earlier fold of the same order.
/// Returns the texture rows written (unsorted, may overlap), for re-deflating only those.
pub fn refold_ranges(
    layout: Layout,
    data: &[u8],
    order: u32,
    texture: &mut [u32],
    changed: &[std::ops::Range<usize>],
) -> Vec<std::ops::Range<usize>> {
    let bpp = layout.bytes_per_pixel();
    assert!(
        layout.pixels_for(data.len() as u64) <= texture.len() as u64,
        "source larger than the texture"
    );
    let mut rows = Vec::new();
    for range in changed {
        let pixels = range.start / bpp..range.end.div_ceil(bpp);
        match layout {
            Layout::Brick => fold_brick::refold_brick(data, order, texture, pixels, &mut rows),
            Layout::Rts => fold_rts::refold_rts(data, order, texture, pixels, &mut rows),
        }
    }
    rows
}

/// Receives unfolded pixels: the inverse of [`PixelSource`].
pub(crate) trait PixelSink {
    /// The source bytes of one pixel.
    type Cell: bytemuck::Pod + Send;
    /// The cell stored in `pixel`.
    fn cell(pixel: u32) -> Self::Cell;
}

/// Reads `out.len()` source bytes back out of `texture` along the curve.
pub(crate) fn unfold_tiled<S: PixelSink>(order: u32, texture: &[u32], out: &mut [u8]) {
    let side = side_of(order, texture.len());
    let bpp = std::mem::size_of::<S::Cell>();
    assert!(
        out.len() <= texture.len() * bpp,
        "output longer than the texture holds"
    );
    // Whole cells go through the tile loop; a partial last cell is copied after.
    let whole_len = out.len() / bpp * bpp;
    let (whole, tail) = out.split_at_mut(whole_len);
    let cells: &mut [S::Cell] = bytemuck::cast_slice_mut(whole);
    let pixel_at = |p: usize| {
        let (x, y) = crate::curve::d2xy(order, p as u64);
        texture[y as usize * side + x as usize]
    };
    if !tail.is_empty() {
        let last = S::cell(pixel_at(cells.len()));
        tail.copy_from_slice(&bytemuck::bytes_of(&last)[..tail.len()]);
    }
    if order < TILE_ORDER {
        for (p, cell) in cells.iter_mut().enumerate() {
            *cell = S::cell(pixel_at(p));
        }
        return;
    }
    let tables = tile_tables();
    // Several tiles per task keep rayon's per-task cost far below the copy.
    const TILES_PER_TASK: usize = 64;
    cells
        .par_chunks_mut(TILE_PIXELS * TILES_PER_TASK)
        .enumerate()
        .for_each(|(task, task_cells)| {
            for (i, tile_cells) in task_cells.chunks_mut(TILE_PIXELS).enumerate() {
                let tile = (task * TILES_PER_TASK + i) as u64;
                let ((ox, oy), transform) = tile_placement(order, tile);
                let offsets = &tables.offset_at[transform];
                let rows = offsets.chunks_exact(TILE_SIDE).enumerate();
                match <&mut [S::Cell; TILE_PIXELS]>::try_from(&mut *tile_cells) {
                    Ok(whole_tile) => {
                        for (ly, row_offsets) in rows {
                            let row =
                                &texture[(oy as usize + ly) * side + ox as usize..][..TILE_SIDE];
                            for (&pixel, &off) in row.iter().zip(row_offsets) {
                                whole_tile[off as usize] = S::cell(pixel);
                            }
                        }
                    }
                    Err(_) => {
                        for (ly, row_offsets) in rows {
                            let row =
                                &texture[(oy as usize + ly) * side + ox as usize..][..TILE_SIDE];
                            for (&pixel, &off) in row.iter().zip(row_offsets) {
                                if let Some(cell) = tile_cells.get_mut(off as usize) {
                                    *cell = S::cell(pixel);
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// The 32-byte parameter block every fold/unfold shader reads at binding 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CurveParams {
    /// Order of the whole texture.
    pub order: u32,
    /// Column of the chunk's top-left pixel.
    pub origin_x: u32,
    /// Row of the chunk's top-left pixel.
    pub origin_y: u32,
    /// Side of the chunk's square, in pixels.
    pub block_side: u32,
    /// Curve index of the chunk's first pixel.
    pub base: u32,
    /// Source units present: bytes for brick kernels, pixels for rts kernels.
    pub valid: u32,
    /// Threads per dispatch row, for kernels that flatten a 2-D grid.
    pub row_threads: u32,
    pub _pad: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(layout: Layout, data: &[u8], order: u32) -> Vec<u32> {
        let mut texture = vec![0u32; 1 << (2 * order)];
        match layout {
            Layout::Brick => fold_brick::fold_brick(data, order, &mut texture),
            Layout::Rts => fold_rts::fold_rts(data, order, &mut texture),
        }
        texture
    }

    fn bytes(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of byte ranges that happen to hold one
    fn refolding_the_changed_ranges_equals_a_fresh_fold() {
        for layout in [Layout::Brick, Layout::Rts] {
            for order in [2, 5, 8] {
                let capacity = (1usize << (2 * order)) * layout.bytes_per_pixel();
                let old = bytes(capacity - 7, 1);
                // Same length with two edits; shorter (the tail becomes padding); longer.
                let mut edited = old.clone();
                edited[3] ^= 0x55;
                edited[capacity / 2] ^= 0xAA;
                let cases = [
                    (edited, vec![3..4, capacity / 2..capacity / 2 + 1]),
                    (old[..capacity / 3].to_vec(), vec![capacity / 3..old.len()]),
                    (bytes(capacity, 1), vec![old.len()..capacity]),
                ];
                for (new, changed) in cases {
                    let before = fold(layout, &old, order);
                    let mut texture = before.clone();
                    let rows = refold_ranges(layout, &new, order, &mut texture, &changed);
                    assert_eq!(
                        texture,
                        fold(layout, &new, order),
                        "{layout:?} order {order}"
                    );
                    // Every row that changed is reported, for the re-deflate.
                    let side = 1usize << order;
                    for (y, (a, b)) in before.chunks(side).zip(texture.chunks(side)).enumerate() {
                        if a != b {
                            assert!(rows.iter().any(|r| r.contains(&y)), "row {y} not reported");
                        }
                    }
                    // Leaving out a changed range must show.
                    let mut partial = fold(layout, &old, order);
                    refold_ranges(layout, &new, order, &mut partial, &changed[1..]);
                    assert_ne!(
                        partial,
                        fold(layout, &new, order),
                        "{layout:?} order {order}"
                    );
                }
            }
        }
    }
}
