//! The Hilbert curve: the single source of truth for `d2xy`/`xy2d` (formats.md §1)
//! and the block tables that let the CPU kernels fold a 16x16 tile at a time.
//!
//! The orientation convention is the one every Geometry OS reader shares; it
//! flips with the parity of the order, so published crates that return the
//! transpose at some orders are not interchangeable with this module.

use std::sync::OnceLock;

/// Largest order a texture may have: side 32768, 2^30 pixels, so that every
/// curve index and every byte offset inside one chunk fits a `u32` on the GPU.
pub const MAX_ORDER: u32 = 15;

/// Order of the square tiles the CPU kernels copy as a unit (16x16 pixels).
/// A tile of one texture row is 64 bytes of RGBA, one cache line.
pub const TILE_ORDER: u32 = 4;
/// Side of a CPU tile in pixels.
pub const TILE_SIDE: usize = 1 << TILE_ORDER;
/// Pixels in one CPU tile; also the run of curve indices one tile holds.
pub const TILE_PIXELS: usize = TILE_SIDE * TILE_SIDE;

/// Curve index `d` to `(x, y)` (column, row) on a square of side `2^order`.
pub fn d2xy(order: u32, d: u64) -> (u32, u32) {
    let n: u64 = 1 << order;
    let (mut x, mut y) = (0u64, 0u64);
    let mut t = d;
    let mut s: u64 = 1;
    while s < n {
        let rx = 1 & (t >> 1);
        let ry = 1 & (t ^ rx);
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        x += s * rx;
        y += s * ry;
        t >>= 2;
        s <<= 1;
    }
    (x as u32, y as u32)
}

/// `(x, y)` to the curve index on a square of side `2^order`; inverse of [`d2xy`].
pub fn xy2d(order: u32, x: u32, y: u32) -> u64 {
    let n: u64 = 1 << order;
    let (mut x, mut y) = (u64::from(x), u64::from(y));
    let mut d: u64 = 0;
    let mut s = n >> 1;
    while s > 0 {
        let rx = u64::from(x & s > 0);
        let ry = u64::from(y & s > 0);
        d += s * s * ((3 * rx) ^ ry);
        // Undo the rotation d2xy applied at this level, in the low bits only.
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - (x & (s - 1));
                y = s - 1 - (y & (s - 1));
            }
            std::mem::swap(&mut x, &mut y);
        }
        x &= s - 1;
        y &= s - 1;
        s >>= 1;
    }
    d
}

/// Smallest order whose square holds `cells` cells (0 and 1 cell give order 0).
pub fn order_for_cells(cells: u64) -> u32 {
    let mut order = 0;
    while (1u64 << (2 * order)) < cells {
        order += 1;
    }
    order
}

/// One of the four symmetries the higher curve levels apply to a tile:
/// bit 0 swaps x and y, bit 1 mirrors both axes. They commute and each is
/// its own inverse, so the same table serves fold (gather) and unfold (scatter).
pub type TileTransform = usize;

fn apply_transform(t: TileTransform, (x, y): (u32, u32), max: u32) -> (u32, u32) {
    let (x, y) = if t & 2 != 0 {
        (max - x, max - y)
    } else {
        (x, y)
    };
    if t & 1 != 0 {
        (y, x)
    } else {
        (x, y)
    }
}

/// For each transform, the curve offset inside a tile of the pixel at
/// `ly * TILE_SIDE + lx` (tile-local row-major order).
pub struct TileTables {
    pub offset_at: [[u8; TILE_PIXELS]; 4],
}

/// The tile tables, built once from [`d2xy`] itself.
pub fn tile_tables() -> &'static TileTables {
    static TABLES: OnceLock<TileTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut offset_at = [[0u8; TILE_PIXELS]; 4];
        let max = TILE_SIDE as u32 - 1;
        for (t, table) in offset_at.iter_mut().enumerate() {
            for d in 0..TILE_PIXELS {
                let (x, y) = apply_transform(t, d2xy(TILE_ORDER, d as u64), max);
                table[y as usize * TILE_SIDE + x as usize] = d as u8;
            }
        }
        TileTables { offset_at }
    })
}

/// Where tile number `tile` of a texture of `order` (>= TILE_ORDER) lies:
/// its top-left pixel and the transform of its local curve. Found by probing
/// the first two indices of the tile with the reference `d2xy`, so the fast
/// kernels inherit the reference orientation instead of re-deriving it.
pub fn tile_placement(order: u32, tile: u64) -> ((u32, u32), TileTransform) {
    let mask = TILE_SIDE as u32 - 1;
    let base = tile * TILE_PIXELS as u64;
    let first = d2xy(order, base);
    let second = d2xy(order, base + 1);
    let local_first = (first.0 & mask, first.1 & mask);
    let local_second = (second.0 & mask, second.1 & mask);
    let transform = (0..4)
        .find(|&t| {
            apply_transform(t, d2xy(TILE_ORDER, 0), mask) == local_first
                && apply_transform(t, d2xy(TILE_ORDER, 1), mask) == local_second
        })
        .expect("the curve only applies swaps and double mirrors to a tile");
    ((first.0 & !mask, first.1 & !mask), transform)
}

/// The aligned squares `[x, y, side, side]` that cells `start..end` of a texture
/// of `order` cover, largest first where alignment allows. An aligned run of
/// `4^k` cells is one `2^k` square, so any range needs at most six squares a
/// level: a handful of rectangles describes a section, a file or a mapping.
pub fn range_squares(order: u32, start: u64, end: u64) -> Vec<[u32; 4]> {
    let end = end.min(1u64 << (2 * order));
    let mut squares = Vec::new();
    let mut d = start;
    while d < end {
        let mut k = 0;
        while k < order
            && d.is_multiple_of(1u64 << (2 * (k + 1)))
            && d + (1u64 << (2 * (k + 1))) <= end
        {
            k += 1;
        }
        let side = 1u32 << k;
        let (x, y) = d2xy(order, d);
        squares.push([x & !(side - 1), y & !(side - 1), side, side]);
        d += 1u64 << (2 * k);
    }
    squares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_md_vectors_order_1_and_2() {
        let order1 = [(0, 0), (0, 1), (1, 1), (1, 0)];
        for (d, xy) in order1.iter().enumerate() {
            assert_eq!(d2xy(1, d as u64), *xy, "order 1 d{d}");
        }
        let order2 = [
            (0, 0),
            (1, 0),
            (1, 1),
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 3),
            (1, 2),
            (2, 2),
            (2, 3),
            (3, 3),
            (3, 2),
            (3, 1),
            (2, 1),
            (2, 0),
            (3, 0),
        ];
        for (d, xy) in order2.iter().enumerate() {
            assert_eq!(d2xy(2, d as u64), *xy, "order 2 d{d}");
        }
    }

    #[test]
    fn formats_md_vectors_higher_orders() {
        assert_eq!(d2xy(3, 63), (7, 0));
        assert_eq!(d2xy(8, 1), (1, 0));
        assert_eq!(d2xy(8, 255), (15, 0));
        assert_eq!(d2xy(8, 256), (16, 0));
        assert_eq!(d2xy(8, 1000), (6, 30));
        assert_eq!(d2xy(8, 65535), (255, 0));
        assert_eq!(d2xy(9, 1), (0, 1));
        assert_eq!(d2xy(9, 1000), (30, 6));
        assert_eq!(d2xy(9, (1 << 18) - 1), (511, 0));
    }

    #[test]
    fn xy2d_inverts_d2xy_exhaustively_orders_0_to_10() {
        for order in 0..=10u32 {
            let n = 1u64 << order;
            let mut seen = vec![false; (n * n) as usize];
            for d in 0..n * n {
                let (x, y) = d2xy(order, d);
                assert!(u64::from(x) < n && u64::from(y) < n);
                assert!(!std::mem::replace(
                    &mut seen[(u64::from(y) * n + u64::from(x)) as usize],
                    true
                ));
                assert_eq!(xy2d(order, x, y), d, "order {order} d {d}");
            }
        }
    }

    #[test]
    fn tile_placement_matches_reference_for_every_tile() {
        let tables = tile_tables();
        for order in TILE_ORDER..=9 {
            for tile in 0..(1u64 << (2 * (order - TILE_ORDER))) {
                let ((ox, oy), t) = tile_placement(order, tile);
                for ly in 0..TILE_SIDE {
                    for lx in 0..TILE_SIDE {
                        let offset = u64::from(tables.offset_at[t][ly * TILE_SIDE + lx]);
                        let d = tile * TILE_PIXELS as u64 + offset;
                        assert_eq!(d2xy(order, d), (ox + lx as u32, oy + ly as u32));
                    }
                }
            }
        }
    }

    #[test]
    fn range_squares_cover_exactly_the_range() {
        for order in 0..=6u32 {
            let cells = 1u64 << (2 * order);
            for (start, end) in [
                (0, cells),
                (1, cells - 1),
                (3, 17),
                (5, 5),
                (cells / 3, cells / 2),
            ] {
                let (start, end) = (start.min(cells), end.min(cells));
                let squares = range_squares(order, start, end);
                let mut covered = std::collections::BTreeSet::new();
                for [x, y, w, h] in &squares {
                    for yy in *y..y + h {
                        for xx in *x..x + w {
                            assert!(covered.insert(xy2d(order, xx, yy)), "squares overlap");
                        }
                    }
                }
                let expected: std::collections::BTreeSet<u64> = (start..end).collect();
                assert_eq!(covered, expected, "order {order} {start}..{end}");
                assert!(squares.len() as u32 <= 6 * order.max(1));
            }
        }
        assert_eq!(range_squares(8, 0, 65536), vec![[0, 0, 256, 256]]);
    }

    #[test]
    fn order_for_cells_rounds_up() {
        assert_eq!(order_for_cells(0), 0);
        assert_eq!(order_for_cells(1), 0);
        assert_eq!(order_for_cells(2), 1);
        assert_eq!(order_for_cells(4), 1);
        assert_eq!(order_for_cells(5), 2);
        assert_eq!(order_for_cells(1 << 26), 13);
        assert_eq!(order_for_cells((1 << 26) + 1), 14);
    }
}
