//! `delta.png`: the newer state in byte-class colours, dimmed where unchanged, changed and
//! inserted blocks highlighted, moved blocks in their own colour, region outlines and a legend.

use super::align::{Change, DeltaRange};
use super::NamedRange;
use crate::backend::Backend;
use crate::curve::order_for_cells;
use crate::error::Result;
use crate::format::preview::{self, draw_text, fill_rect, LabelledRange, Palette, PreviewImage};
use crate::kernels::Layout;

pub const CHANGED_COLOUR: [u8; 3] = [0xff, 0xd0, 0x00];
pub const INSERTED_COLOUR: [u8; 3] = [0x30, 0xe0, 0x60];
pub const MOVED_COLOUR: [u8; 3] = [0xc0, 0x50, 0xff];
const LEGEND_HEIGHT: usize = 28;

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
        .take(64)
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

fn add_legend(image: &mut PreviewImage) {
    let width = image.width as usize;
    let old_height = image.height as usize;
    image
        .rgba
        .resize(width * (old_height + LEGEND_HEIGHT) * 4, 0);
    image.height += LEGEND_HEIGHT as u32;
    fill_rect(
        image,
        0,
        old_height,
        width,
        LEGEND_HEIGHT,
        [0x18, 0x18, 0x18, 0xff],
    );
    let entries: [(&str, [u8; 3]); 4] = [
        ("unchanged (dim)", [0x40, 0x40, 0x40]),
        ("changed", CHANGED_COLOUR),
        ("inserted", INSERTED_COLOUR),
        ("moved", MOVED_COLOUR),
    ];
    let mut x = 6;
    for (label, colour) in entries {
        if x + 12 >= width {
            break;
        }
        fill_rect(
            image,
            x,
            old_height + 8,
            12,
            12,
            [colour[0], colour[1], colour[2], 0xff],
        );
        draw_text(
            image,
            x + 16,
            old_height + 10,
            label,
            1,
            [0xee, 0xee, 0xee, 0xff],
        );
        x += 16 + label.len() * 8 + 14;
    }
}
