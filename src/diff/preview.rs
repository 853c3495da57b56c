//! `delta.png`: the newer state in byte-class colours, dimmed where unchanged, changed and
//! inserted blocks highlighted, moved blocks in their own colour, region outlines and a legend.

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

/// What a preview pixel shows, strongest first when its bytes mix.
fn status_rank(kind: Change) -> u8 {
    match kind {
        Change::Unchanged | Change::Deleted => 0,
        Change::Moved => 1,
        Change::Inserted => 2,
        Change::Changed => 3,
    }
}

fn tint(px: &mut [u8], colour: [u8; 3], amount: u16) {
    for c in 0..3 {
        px[c] = ((u16::from(px[c]) * (256 - amount) + u16::from(colour[c]) * amount) >> 8) as u8;
    }
}

/// Renders the delta of B (`b`) given the alignment's ranges (B offsets).
pub fn render_delta(
    backend: &Backend,
    b: &[u8],
    ranges: &[DeltaRange],
    regions: &[NamedRange],
    side: u32,
) -> Result<PreviewImage> {
    let order = order_for_cells(b.len() as u64);
    let mut image = preview::render(
        backend,
        b,
        Layout::Brick,
        order,
        Palette::Byteclass,
        side,
        false,
    )?;
    let preview_order = side.trailing_zeros();
    let stats_order = order.min(preview_order);
    let run_len = 1u64 << (2 * (order - stats_order));
    let runs = 1usize << (2 * stats_order);
    let mut status = vec![0u8; runs];
    for r in ranges {
        let Some((start, end)) = r.b else { continue };
        let rank = status_rank(r.kind);
        if rank == 0 || start >= end {
            continue;
        }
        for run in (start / run_len)..end.div_ceil(run_len).min(runs as u64) {
            let s = &mut status[run as usize];
            *s = (*s).max(rank);
        }
    }
    preview::for_each_cell(&mut image, stats_order, |run, px| {
        if run as u64 * run_len >= b.len() as u64 {
            return; // padding stays as rendered
        }
        match status[run] {
            0 => {
                for c in &mut px[..3] {
                    *c = (u16::from(*c) * 90 / 256) as u8;
                }
            }
            1 => tint(px, MOVED_COLOUR, 200),
            2 => tint(px, INSERTED_COLOUR, 200),
            _ => tint(px, CHANGED_COLOUR, 200),
        }
    });
    let labelled: Vec<LabelledRange> = regions
        .iter()
        .map(|r| LabelledRange {
            label: r.name.clone(),
            start: r.start,
            end: r.end,
        })
        .collect();
    let mut image = if labelled.is_empty() {
        image
    } else {
        preview::outline(image, Layout::Brick, order, &labelled)
    };
    add_legend(&mut image);
    Ok(image)
}

/// The colours' legend, under the regions' one: wrapped into rows on small pictures, at most half
/// the picture's height.
fn add_legend(image: &mut PreviewImage) {
    let side = image.width as usize;
    let scale = if side >= 1024 { 2 } else { 1 };
    let items: Vec<(String, Option<[u8; 3]>)> = [
        ("unchanged", UNCHANGED_SWATCH),
        ("changed", CHANGED_COLOUR),
        ("inserted", INSERTED_COLOUR),
        ("moved", MOVED_COLOUR),
    ]
    .into_iter()
    .map(|(label, colour)| (label.to_string(), Some(colour)))
    .collect();
    let strip = legend::lay_out(&items, side, side / 2, scale);
    legend::append(image, &strip);
}
