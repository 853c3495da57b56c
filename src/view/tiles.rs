//! The viewer's tile pyramid: 256-pixel tiles of an input's Hilbert layout at every zoom, each
//! pixel summarising every byte behind it (the preview's palettes and statistics), never one
//! point-sampled byte.
//!
//! An aligned `2^k x 2^k` square of a Hilbert texture is one run of `4^k` consecutive cells, so
//! a tile is one contiguous byte range of the input and each of its pixels one contiguous run.

use crate::curve::{order_for_cells, xy2d};
use crate::error::{Error, Result};
use crate::format::preview::{colour, Palette, PreviewImage, ENTROPY_WINDOW};
use crate::kernels::preview_stats::{preview_stats, EntropyTable, MAX_RUN_LEN};
use crate::kernels::Layout;

/// Pixels on a tile's side.
pub const TILE_SIDE: u32 = 256;

/// How an input is laid out in the view: one cell a byte (as in its `.brick`) or one cell four
/// bytes (as in its `.rts.png`), on one curve over the whole input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub layout: Layout,
    /// The curve's order: the layout is `2^order` cells on a side.
    pub order: u32,
    /// Bytes of the input.
    pub size: u64,
}

impl Geometry {
    /// The geometry of `size` bytes in `layout`.
    pub fn of(size: u64, layout: Layout) -> Geometry {
        Geometry {
            layout,
            order: order_for_cells(layout.pixels_for(size)),
            size,
        }
    }

    /// Cells on a side.
    pub fn side(&self) -> u64 {
        1 << self.order
    }

    /// The deepest zoom with its own tiles: one cell a pixel. Deeper, the browser enlarges.
    pub fn max_zoom(&self) -> u32 {
        self.order.saturating_sub(TILE_SIDE.trailing_zeros())
    }

    /// The input bytes `[start, end)` behind tile `(x, y)` of zoom `z` (before the input's end
    /// cuts them).
    pub fn tile_bytes(&self, z: u32, x: u64, y: u64) -> (u64, u64) {
        let span_order = self.order - z;
        let cells = 1u64 << (2 * span_order);
        let first = xy2d(
            self.order,
            (x << span_order) as u32,
            (y << span_order) as u32,
        ) & !(cells - 1);
        let bpp = self.layout.bytes_per_pixel() as u64;
        (first * bpp, (first + cells) * bpp)
    }
}

/// Renders tile `(x, y)` of zoom `z` of `data` in `geometry` with `palette`: `TILE_SIDE`
/// pixels on a side, each the colour of the run of bytes behind it (for the entropy palette,
/// of the aligned block of at least [`ENTROPY_WINDOW`] bytes holding it).
pub fn render_tile(
    data: &[u8],
    geometry: Geometry,
    palette: Palette,
    z: u32,
    x: u64,
    y: u64,
) -> Result<PreviewImage> {
    let n = geometry.order;
    if z > geometry.max_zoom() || x >> z != 0 || y >> z != 0 {
        return Err(Error::Usage(format!(
            "no tile {z}/{x}/{y}: zoom runs from 0 to {} and a zoom-z row holds 2^z tiles",
            geometry.max_zoom()
        )));
    }
    let bpp = geometry.layout.bytes_per_pixel() as u64;
    let span_order = n - z;
    // Cells on a side of one tile pixel (k) and tile pixels on a side of one cell (when an
    // input is smaller than one tile, its cells are enlarged).
    let grid_order = span_order.min(TILE_SIDE.trailing_zeros());
    let k = span_order - grid_order;
    let enlarge = TILE_SIDE >> grid_order;
    // The runs whose statistics colour a pixel: its own, or for entropy the aligned block of
    // at least ENTROPY_WINDOW bytes that holds it.
    let mut run_order = k;
    if palette == Palette::Entropy {
        while run_order < span_order && (1u64 << (2 * run_order)) * bpp < ENTROPY_WINDOW {
            run_order += 1;
        }
    }
    let run_len = (1u64 << (2 * run_order)) * bpp;
    if run_len > MAX_RUN_LEN as u64 {
        return Err(Error::Usage(format!(
            "a zoom-{z} tile would summarise {run_len} bytes a pixel; zoom in"
        )));
    }
    let (tile_start, tile_end) = geometry.tile_bytes(z, x, y);
    let runs = ((tile_end - tile_start) / run_len) as usize;
    let from = usize::try_from(tile_start.min(data.len() as u64)).unwrap_or(data.len());
    let until = usize::try_from(tile_end.min(data.len() as u64)).unwrap_or(data.len());
    let table = EntropyTable::for_run_len(run_len as usize);
    let stats = preview_stats(&data[from..until], run_len as usize, runs, &table);
    let colours: Vec<[u8; 4]> = stats
        .iter()
        .enumerate()
        .map(|(r, s)| {
            colour(
                s,
                tile_start + r as u64 * run_len,
                palette,
                geometry.layout,
                &table,
            )
        })
        .collect();
    let grid = 1u32 << grid_order;
    let (x0, y0) = ((x << span_order) as u32, (y << span_order) as u32);
    let first_cell = tile_start / bpp;
    let mut image = PreviewImage {
        width: TILE_SIDE,
        height: TILE_SIDE,
        rgba: vec![0u8; (TILE_SIDE * TILE_SIDE * 4) as usize],
    };
    let row_bytes = (TILE_SIDE * 4) as usize;
    for gy in 0..grid {
        for gx in 0..grid {
            let cell = xy2d(n, x0 + (gx << k), y0 + (gy << k));
            let run = ((cell - first_cell) >> (2 * run_order)) as usize;
            let px = colours[run];
            for row in gy * enlarge..(gy + 1) * enlarge {
                let line = &mut image.rgba[row as usize * row_bytes..][..row_bytes];
                for col in gx * enlarge..(gx + 1) * enlarge {
                    line[col as usize * 4..][..4].copy_from_slice(&px);
                }
            }
        }
    }
    Ok(image)
}

/// The aligned squares `[x, y, side, side]`, in cells of `geometry`, that input bytes
/// `[start, end)` cover: what the page outlines for a section, a file, a change or a hit.
pub fn squares(geometry: Geometry, start: u64, end: u64) -> Vec<[u32; 4]> {
    let bpp = geometry.layout.bytes_per_pixel() as u64;
    let end = end.min(geometry.size);
    if start >= end {
        return Vec::new();
    }
    crate::curve::range_squares(geometry.order, start / bpp, end.div_ceil(bpp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Stretches of zeros, text and noise, so every palette has something to show.
                match (i / 3000) % 3 {
                    0 => 0,
                    1 => b"foundry "[i % 8],
                    _ => state as u8,
                }
            })
            .collect()
    }

    /// The zoom-0 tile of an input one tile wide is the preview `fold` writes at that side.
    #[test]
    fn the_whole_input_tile_is_the_preview_at_the_same_side() {
        let data = sample(256 * 256 * 3 + 17);
        for layout in [Layout::Brick, Layout::Rts] {
            let geometry = Geometry::of(data.len() as u64, layout);
            for palette in [
                Palette::Byteclass,
                Palette::Entropy,
                Palette::Gray,
                Palette::Rgba,
            ] {
                let side = 1u32 << geometry.order.min(8);
                let preview = crate::format::preview::render(
                    &Backend::Cpu,
                    &data,
                    layout,
                    geometry.order,
                    palette,
                    side.max(16),
                    false,
                )
                .unwrap();
                let tile = render_tile(&data, geometry, palette, 0, 0, 0).unwrap();
                // The tile is 256 wide; the preview `side`: compare pixel (i, j) of the
                // preview with the tile pixel it is enlarged to.
                let scale = TILE_SIDE / preview.width;
                for j in 0..preview.height {
                    for i in 0..preview.width {
                        let p = &preview.rgba[((j * preview.width + i) * 4) as usize..][..4];
                        let t =
                            &tile.rgba[(((j * scale) * TILE_SIDE + i * scale) * 4) as usize..][..4];
                        assert_eq!(p, t, "{layout:?} {palette:?} pixel {i},{j}");
                    }
                }
            }
        }
    }

    /// Four tiles of zoom z+1 hold exactly the bytes of their zoom-z parent, each pixel a run.
    #[test]
    fn a_tile_is_its_bytes_and_children_split_them() {
        let geometry = Geometry::of(1 << 20, Layout::Brick);
        assert_eq!(geometry.order, 10);
        assert_eq!(geometry.max_zoom(), 2);
        let (start, end) = geometry.tile_bytes(1, 1, 0);
        let mut children: Vec<(u64, u64)> = (0..4)
            .map(|i| geometry.tile_bytes(2, 2 + (i & 1), i >> 1))
            .collect();
        children.sort();
        assert_eq!(children[0].0, start);
        assert_eq!(children[3].1, end);
        for pair in children.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        // At the deepest zoom one pixel is one byte: the byte-class colour of that byte.
        let mut data = vec![0u8; 1 << 20];
        let (s, _) = geometry.tile_bytes(2, 3, 1);
        data[s as usize + 5] = b'A';
        let tile = render_tile(&data, geometry, Palette::Byteclass, 2, 3, 1).unwrap();
        let (cx, cy) = crate::curve::d2xy(geometry.order, s + 5);
        let (px, py) = (cx - 3 * 256, cy - 256);
        let at = ((py * TILE_SIDE + px) * 4) as usize;
        assert_eq!(
            &tile.rgba[at..at + 3],
            &crate::format::preview::CLASS_COLOURS[2]
        );
        let blacks = tile.rgba.chunks(4).filter(|p| p[..3] == [0, 0, 0]).count();
        assert_eq!(blacks, 256 * 256 - 1);
    }

    #[test]
    fn tiles_past_the_pyramid_are_refused() {
        let geometry = Geometry::of(5000, Layout::Brick);
        assert_eq!(geometry.max_zoom(), 0);
        assert!(render_tile(&[0; 5000], geometry, Palette::Gray, 1, 0, 0).is_err());
        assert!(render_tile(&[0; 5000], geometry, Palette::Gray, 0, 1, 0).is_err());
        // Bytes past the end are padding, drawn as no data.
        let tile = render_tile(&[0; 5000], geometry, Palette::Gray, 0, 0, 0).unwrap();
        let padding = tile
            .rgba
            .chunks(4)
            .filter(|p| p[..3] == crate::format::preview::NO_DATA)
            .count();
        // 128 cells a side, each drawn 2x2.
        assert_eq!(padding, (128 * 128 - 5000) * 4);
    }
}
