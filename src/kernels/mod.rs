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
    let tables = tile_tables();
    texture
        .par_chunks_mut(side * TILE_SIDE)
        .enumerate()
        .for_each(|(tile_row, stripe)| {
            for tile_col in 0..side / TILE_SIDE {
                let tile = xy2d(order - TILE_ORDER, tile_col as u32, tile_row as u32) as usize;
                let (_, transform) = tile_placement(order, tile as u64);
                let offsets = &tables.offset_at[transform];
                let column = tile_col * TILE_SIDE;
                let rows = offsets.chunks_exact(TILE_SIDE).enumerate();
                match source.whole_tile(tile) {
                    Some(cells) => {
                        for (ly, row_offsets) in rows {
                            let row = &mut stripe[ly * side + column..][..TILE_SIDE];
                            for (out, &off) in row.iter_mut().zip(row_offsets) {
                                *out = S::pixel(cells[off as usize]);
                            }
                        }
                    }
                    None => {
                        let base = tile * TILE_PIXELS;
                        for (ly, row_offsets) in rows {
                            let row = &mut stripe[ly * side + column..][..TILE_SIDE];
                            for (out, &off) in row.iter_mut().zip(row_offsets) {
                                *out = source.pixel_or_padding(base + off as usize);
                            }
                        }
                    }
                }
            }
        });
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
