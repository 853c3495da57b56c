//! `delta.png`: A and B side by side in byte-class colours, dimmed where unchanged; deletions
//! marked on A, changes and insertions on B, moves on both; small changes ringed, region
//! outlines on B, and a legend.

use super::align::{Change, DeltaRange};
use super::NamedRange;
use crate::backend::Backend;
use crate::curve::order_for_cells;
use crate::error::Result;
use crate::format::legend;
use crate::format::preview::{self, LabelledRange, Palette, PreviewImage};
use crate::kernels::Layout;

pub const CHANGED_COLOUR: [u8; 3] = [0xff, 0xd0, 0x00];
pub const INSERTED_COLOUR: [u8; 3] = [0x30, 0xe0, 0x60];
pub const MOVED_COLOUR: [u8; 3] = [0xc0, 0x50, 0xff];
/// Unchanged bytes are shown dimmed; the legend's swatch is a dim gray.
const UNCHANGED_SWATCH: [u8; 3] = [0x40, 0x40, 0x40];

pub const DELETED_COLOUR: [u8; 3] = [0xff, 0x40, 0x40];
/// Pixels between the two sides.
const GAP: usize = 8;
/// At most this many changes get a marker (the rest are still tinted).
const MAX_MARKERS: usize = 4096;

/// What a preview pixel shows, strongest first when its bytes mix (0: nothing to show).
fn status_rank(kind: Change) -> u8 {
    match kind {
        Change::Unchanged => 0,
        Change::Moved => 1,
        Change::Inserted => 2,
        Change::Changed => 3,
        Change::Deleted => 4,
    }
}

fn rank_colour(rank: u8) -> [u8; 3] {
    match rank {
        1 => MOVED_COLOUR,
        2 => INSERTED_COLOUR,
        3 => CHANGED_COLOUR,
        _ => DELETED_COLOUR,
    }
}

fn tint(px: &mut [u8], colour: [u8; 3], amount: u16) {
    for c in 0..3 {
        px[c] = ((u16::from(px[c]) * (256 - amount) + u16::from(colour[c]) * amount) >> 8) as u8;
    }
}

/// Renders `delta.png`: A on the left, with what was deleted (and moved or changed) marked at
/// its A offsets, and B on the right, with what was changed, inserted and moved marked at its
/// B offsets; a legend below. A change smaller than a few pixels also gets a ring around it, so
/// a 4-byte edit is visible at any preview size. `bases`, when a caller has them, are the
/// byte-class previews of A and B (no legend) at [`delta_order`] and `side`, so neither side is
/// summarised again.
pub fn render_delta(
    backend: &Backend,
    a: &[u8],
    b: &[u8],
    ranges: &[DeltaRange],
    regions: &[NamedRange],
    side: u32,
    bases: Option<[&PreviewImage; 2]>,
) -> Result<PreviewImage> {
    let order = delta_order(a.len(), b.len());
    let [base_a, base_b] = bases.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
    let left = render_side(backend, a, order, ranges, |r| r.a, &[], side, base_a)?;
    let right = render_side(backend, b, order, ranges, |r| r.b, regions, side, base_b)?;
    let height = left.height.max(right.height) as usize;
    let (lw, rw) = (left.width as usize, right.width as usize);
    let width = lw + GAP + rw;
    let mut rgba = vec![0u8; width * height * 4];
    for px in rgba.chunks_exact_mut(4) {
        px.copy_from_slice(&[0x10, 0x10, 0x10, 0xff]);
    }
    for (image, x0) in [(&left, 0usize), (&right, lw + GAP)] {
        let w = image.width as usize;
        for y in 0..image.height as usize {
            let row = &image.rgba[y * w * 4..(y + 1) * w * 4];
            rgba[(y * width + x0) * 4..(y * width + x0 + w) * 4].copy_from_slice(row);
        }
    }
    let mut image = PreviewImage {
        width: width as u32,
        height: height as u32,
        rgba,
    };
    add_legend(&mut image);
    Ok(image)
}

/// The curve order both sides of a delta are drawn at: one order, so a byte range has the same
/// size on each side.
pub fn delta_order(a_len: usize, b_len: usize) -> u32 {
    order_for_cells(a_len.max(b_len) as u64)
}

/// The side of each half of `delta.png`: the side asked for, but never more pixels than the
/// curve has cells at `order` (one byte each), since a larger picture only repeats pixels:
/// a 150 KB `ls` is drawn 512 pixels a side, not 1024, and its diff takes half the time.
/// Tiny inputs still get [`MIN_CAPPED_SIDE`], where the legend reads.
pub fn delta_side(requested: u32, order: u32) -> u32 {
    let cells_side = 1u32 << order.min(31);
    requested
        .min(cells_side.max(MIN_CAPPED_SIDE))
        .max(*preview::PREVIEW_SIDES.start())
}

/// The smallest side [`delta_side`] lowers a requested side to: the legend wraps to the
/// picture's width and reads from 128 pixels up.
const MIN_CAPPED_SIDE: u32 = 128;

/// One side of the delta: its bytes dimmed, the ranges' cells at `span(range)` tinted by kind,
/// rings around small changes, and `regions` outlined.
#[allow(clippy::too_many_arguments)]
fn render_side(
    backend: &Backend,
    bytes: &[u8],
    order: u32,
    ranges: &[DeltaRange],
    span: impl Fn(&DeltaRange) -> Option<(u64, u64)>,
    regions: &[NamedRange],
    side: u32,
    base: Option<&PreviewImage>,
) -> Result<PreviewImage> {
    let mut image = match base {
        Some(image) => image.clone(),
        None => preview::render(
            backend,
            bytes,
            Layout::Brick,
            order,
            Palette::Byteclass,
            side,
            false,
        )?,
    };
    let preview_order = side.trailing_zeros();
    let stats_order = order.min(preview_order);
    let run_len = 1u64 << (2 * (order - stats_order));
    let runs = 1usize << (2 * stats_order);
    let mut status = vec![0u8; runs];
    let mut markers: Vec<(u64, u8)> = Vec::new();
    for r in ranges {
        let Some((start, end)) = span(r) else {
            continue;
        };
        let rank = status_rank(r.kind);
        if rank == 0 || start >= end {
            continue;
        }
        let (first, last) = (start / run_len, end.div_ceil(run_len).min(runs as u64));
        for run in first..last {
            let s = &mut status[run as usize];
            *s = (*s).max(rank);
        }
        // A change of up to an 8x8 block of cells is a dot at best: ring it.
        if last - first <= 64 && markers.len() < MAX_MARKERS {
            markers.push((first, rank));
        }
    }
    preview::for_each_cell(&mut image, stats_order, |run, px| {
        if run as u64 * run_len >= bytes.len() as u64 {
            return; // padding stays as rendered
        }
        match status[run] {
            0 => {
                for c in &mut px[..3] {
                    *c = (u16::from(*c) * 90 / 256) as u8;
                }
            }
            rank => tint(px, rank_colour(rank), 200),
        }
    });
    let scale = image.width as usize >> stats_order;
    for (run, rank) in markers {
        let (x, y) = crate::curve::d2xy(stats_order, run);
        let centre = (
            x as usize * scale + scale / 2,
            y as usize * scale + scale / 2,
        );
        ring(&mut image, centre, rank_colour(rank));
    }
    let labelled: Vec<LabelledRange> = regions
        .iter()
        .map(|r| LabelledRange {
            label: r.name.clone(),
            start: r.start,
            end: r.end,
        })
        .collect();
    Ok(if labelled.is_empty() {
        image
    } else {
        preview::outline(image, Layout::Brick, order, &labelled)
    })
}

/// A square ring around `centre`, a sixty-fourth of the picture across (at least 9 pixels),
/// two pixels thick, in `colour`.
fn ring(image: &mut PreviewImage, centre: (usize, usize), colour: [u8; 3]) {
    let (width, height) = (image.width as usize, image.height as usize);
    let radius = (width / 128).max(4);
    let (cx, cy) = (centre.0 as isize, centre.1 as isize);
    let r = radius as isize;
    for dy in -r..=r {
        for dx in -r..=r {
            let edge = dx.abs().max(dy.abs());
            if edge < r - 1 {
                continue;
            }
            let (x, y) = (cx + dx, cy + dy);
            if x < 0 || y < 0 || x as usize >= width || y as usize >= height {
                continue;
            }
            let at = (y as usize * width + x as usize) * 4;
            image.rgba[at..at + 3].copy_from_slice(&colour);
        }
    }
}

/// The colours' legend, under the regions' one: wrapped into rows on small pictures, at most half
/// the picture's height.
fn add_legend(image: &mut PreviewImage) {
    let side = image.width as usize;
    let scale = if side >= 1024 { 2 } else { 1 };
    let items: Vec<(String, Option<[u8; 3]>)> = [
        ("unchanged", UNCHANGED_SWATCH),
        ("changed", CHANGED_COLOUR),
        ("inserted (B)", INSERTED_COLOUR),
        ("deleted (A)", DELETED_COLOUR),
        ("moved", MOVED_COLOUR),
    ]
    .into_iter()
    .map(|(label, colour)| (label.to_string(), Some(colour)))
    .collect();
    let strip = legend::lay_out(&items, side, side / 2, scale);
    legend::append(image, &strip);
}
