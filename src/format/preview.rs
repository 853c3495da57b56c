//! `NAME.preview.png`: palettes people know from binvis (byte class, entropy, gray, raw RGBA),
//! downscaled by summarising each pixel's whole run of bytes, never by point-sampling.

use super::legend;
use crate::backend::{Backend, Staged};
use crate::error::{Error, Result};
use crate::kernels::preview_stats::{EntropyTable, RunStats, CLASS_NAMES, MAX_RUN_LEN};
use crate::kernels::Layout;
use rayon::prelude::*;
use std::io::Write;

/// How bytes become colours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Palette {
    /// binvis classes: 0x00 black, low blue-green, ASCII blue, high red, 0xFF white; mixed runs blend.
    #[default]
    Byteclass,
    /// True Shannon entropy of the bytes behind each pixel, scurve/binvis colour curve.
    Entropy,
    /// Mean byte value.
    Gray,
    /// Mean texture colour: the raw pixels as stored.
    Rgba,
}

/// Colour of each byte class, in `CLASS_NAMES` order (formats.md §6).
pub const CLASS_COLOURS: [[u8; 3]; 5] = [
    [0x00, 0x00, 0x00],
    [0x4d, 0xaf, 0x4a],
    [0x10, 0x72, 0xb8],
    [0xe4, 0x1a, 0x1c],
    [0xff, 0xff, 0xff],
];

/// Colour of pixels with no source bytes behind them (texture padding).
pub const NO_DATA: [u8; 3] = [0x38, 0x38, 0x38];

/// Smallest block, in bytes, whose entropy the entropy palette shows.
pub const ENTROPY_WINDOW: u64 = 256;

/// Smallest and largest `--preview-side`.
pub const PREVIEW_SIDES: std::ops::RangeInclusive<u32> = 16..=8192;

/// A rendered preview, RGBA rows top first.
#[derive(Clone)]
pub struct PreviewImage {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

fn scurve(v: f64) -> f64 {
    (4.0 * v - 4.0 * v * v).powi(4).max(0.0)
}

/// The binvis entropy colour for `e` in 0..=1 (entropy / 8 bits).
pub fn entropy_colour(e: f64) -> [u8; 3] {
    let r = if e > 0.5 { scurve(e - 0.5) } else { 0.0 };
    let b = e * e;
    [(r * 255.0).round() as u8, 0, (b * 255.0).round() as u8]
}

/// Bytes at absolute offsets `start..start+len` that fall on channel `c` (offset % 4).
fn channel_count(start: u64, len: u64, c: u64) -> u64 {
    let first = (c + 4 - start % 4) % 4;
    if first >= len {
        0
    } else {
        (len - first).div_ceil(4)
    }
}

pub(crate) fn colour(
    stats: &RunStats,
    run_start: u64,
    palette: Palette,
    layout: Layout,
    table: &EntropyTable,
) -> [u8; 4] {
    let n = u64::from(stats.bytes());
    if n == 0 {
        return match (palette, layout) {
            (Palette::Rgba, Layout::Rts) => [0, 0, 0, 0],
            (Palette::Rgba, Layout::Brick) => [0, 0, 0, 255],
            _ => [NO_DATA[0], NO_DATA[1], NO_DATA[2], 255],
        };
    }
    let mean = |sum: u64, count: u64| ((sum + count / 2) / count.max(1)) as u8;
    let gray = || {
        let v = mean(stats.channel_sums.iter().map(|&s| u64::from(s)).sum(), n);
        [v, v, v, 255]
    };
    match palette {
        Palette::Byteclass => {
            let mut rgb = [0u64; 3];
            for (count, colour) in stats.classes.iter().zip(CLASS_COLOURS) {
                for (acc, c) in rgb.iter_mut().zip(colour) {
                    *acc += u64::from(*count) * u64::from(c);
                }
            }
            [mean(rgb[0], n), mean(rgb[1], n), mean(rgb[2], n), 255]
        }
        Palette::Entropy => {
            let [r, g, b] = entropy_colour(table.bits(stats.entropy_fixed) / 8.0);
            [r, g, b, 255]
        }
        Palette::Gray => gray(),
        // A brick's texels are gray already, so its raw view is the gray one.
        Palette::Rgba if layout == Layout::Brick => gray(),
        Palette::Rgba => {
            let mut px = [0u8; 4];
            for (c, out) in px.iter_mut().enumerate() {
                *out = mean(
                    u64::from(stats.channel_sums[c]),
                    channel_count(run_start, n, c as u64),
                );
            }
            px
        }
    }
}

/// Renders the preview of `data` laid out as a texture of `order` in `layout`,
/// `side` pixels wide (a power of two), with an optional legend strip below.
pub fn render(
    backend: &Backend,
    data: &[u8],
    layout: Layout,
    order: u32,
    palette: Palette,
    side: u32,
    legend: bool,
) -> Result<PreviewImage> {
    render_staged(&backend.stage(data), layout, order, palette, side, legend)
}

/// How a preview summarises: each cell of a side-`2^stats_order` grid is one run of
/// `run_len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    stats_order: u32,
    run_len: usize,
}

/// The summary geometry of a `side`-pixel preview of a texture of `order`, refusing sides out
/// of range and runs too long to summarise.
fn geometry(layout: Layout, order: u32, palette: Palette, side: u32) -> Result<Geometry> {
    if !side.is_power_of_two() || !PREVIEW_SIDES.contains(&side) {
        return Err(Error::Usage(format!(
            "preview side {side} must be a power of two from {} to {}",
            PREVIEW_SIDES.start(),
            PREVIEW_SIDES.end()
        )));
    }
    let preview_order = side.trailing_zeros();
    let bpp = layout.bytes_per_pixel() as u64;
    // Entropy of a handful of bytes says nothing (4 bytes hold at most 2 bits),
    // so the entropy palette measures aligned curve blocks of at least
    // ENTROPY_WINDOW bytes, each a square of the texture, and says so.
    let min_run = if palette == Palette::Entropy {
        ENTROPY_WINDOW
    } else {
        1
    };
    let mut stats_order = order.min(preview_order);
    while stats_order > 0 && (1u64 << (2 * (order - stats_order))) * bpp < min_run {
        stats_order -= 1;
    }
    let run_len = (1u64 << (2 * (order - stats_order))) * bpp;
    if run_len > MAX_RUN_LEN as u64 {
        return Err(Error::Usage(format!(
            "a {side}-pixel preview of a side-{} texture would summarise {run_len} bytes a pixel; use a larger --preview-side",
            1u64 << order
        )));
    }
    Ok(Geometry {
        stats_order,
        run_len: run_len as usize,
    })
}

/// [`render`] of a fold's staged input, so the statistics read the fold's one upload.
pub fn render_staged(
    input: &Staged,
    layout: Layout,
    order: u32,
    palette: Palette,
    side: u32,
    legend: bool,
) -> Result<PreviewImage> {
    let Geometry {
        stats_order,
        run_len,
    } = geometry(layout, order, palette, side)?;
    let runs = 1usize << (2 * stats_order);
    let table = EntropyTable::for_run_len(run_len);
    let colours: Vec<[u8; 4]> = if palette == Palette::Byteclass {
        input.map_byte_classes(run_len, runs, &table, |s, run| {
            colour(&s, (run * run_len) as u64, palette, layout, &table)
        })?
    } else {
        input
            .preview_stats(run_len, runs, &table)?
            .par_iter()
            .enumerate()
            .map(|(run, s)| colour(s, (run * run_len) as u64, palette, layout, &table))
            .collect()
    };
    let mut image = PreviewImage {
        width: side,
        height: side,
        rgba: vec![0u8; side as usize * side as usize * 4],
    };
    for_each_cell(&mut image, stats_order, |run, px| {
        px.copy_from_slice(&colours[run])
    });
    if legend {
        add_legend(&mut image, palette, layout);
    }
    Ok(image)
}

/// A preview kept from the last fold of an input, so the fold of its next version repaints
/// only the cells whose runs hold changed bytes (watch mode).
#[derive(Clone)]
pub struct KeptPreview {
    layout: Layout,
    order: u32,
    palette: Palette,
    side: u32,
    geometry: Geometry,
    /// Without its legend.
    image: PreviewImage,
}

impl KeptPreview {
    fn is_for(&self, layout: Layout, order: u32, palette: Palette, side: u32) -> bool {
        (self.layout, self.order, self.palette, self.side) == (layout, order, palette, side)
    }

    /// The kept image (no legend) when it is the preview of `order`, `palette` and `side`.
    pub fn image_for(
        &self,
        layout: Layout,
        order: u32,
        palette: Palette,
        side: u32,
    ) -> Option<&PreviewImage> {
        self.is_for(layout, order, palette, side)
            .then_some(&self.image)
    }

    /// Repaints the cells of the runs that hold `changed` byte ranges of `data`.
    fn repaint(&mut self, data: &[u8], changed: &[std::ops::Range<usize>]) {
        let Geometry {
            stats_order,
            run_len,
        } = self.geometry;
        let runs = 1usize << (2 * stats_order);
        let table = EntropyTable::for_run_len(run_len);
        let width = self.image.width as usize;
        let scale = width >> stats_order;
        for range in changed {
            let first = (range.start / run_len).min(runs);
            let last = range.end.div_ceil(run_len).min(runs);
            let stats =
                crate::kernels::preview_stats::stats_of_runs(data, run_len, first, last, &table);
            for (run, s) in (first..last).zip(&stats) {
                let px = colour(s, (run * run_len) as u64, self.palette, self.layout, &table);
                let (x, y) = crate::curve::d2xy(stats_order, run as u64);
                let (x0, y0) = (x as usize * scale, y as usize * scale);
                for row in y0..y0 + scale {
                    let line = &mut self.image.rgba[(row * width + x0) * 4..][..scale * 4];
                    for dst in line.chunks_exact_mut(4) {
                        dst.copy_from_slice(&px);
                    }
                }
            }
        }
    }
}

/// [`render_staged`], reusing what `kept` holds from the fold of an earlier version of the
/// input: given the byte ranges that changed since (`changed`), a kept preview of the same
/// texture, palette and side has only those runs' cells repainted. The image is byte for byte
/// what a fresh render gives. Without `changed` (or a matching kept preview) it renders afresh
/// and keeps the result for next time; without `kept` it is [`render_staged`].
#[allow(clippy::too_many_arguments)]
pub fn render_staged_reusing(
    input: &Staged,
    layout: Layout,
    order: u32,
    palette: Palette,
    side: u32,
    legend: bool,
    changed: Option<&[std::ops::Range<usize>]>,
    kept: Option<&mut Vec<KeptPreview>>,
) -> Result<PreviewImage> {
    let Some(kept) = kept else {
        return render_staged(input, layout, order, palette, side, legend);
    };
    let geometry = geometry(layout, order, palette, side)?;
    let reused = changed.and_then(|changed| {
        let k = kept
            .iter_mut()
            .find(|k| k.is_for(layout, order, palette, side))?;
        k.repaint(input.data(), changed);
        Some(k.image.clone())
    });
    let mut image = match reused {
        Some(image) => image,
        None => {
            let image = render_staged(input, layout, order, palette, side, false)?;
            kept.retain(|k| !k.is_for(layout, order, palette, side));
            kept.push(KeptPreview {
                layout,
                order,
                palette,
                side,
                geometry,
                image: image.clone(),
            });
            image
        }
    };
    if legend {
        add_legend(&mut image, palette, layout);
    }
    Ok(image)
}

/// For each cell of a side-`2^order` grid, row-major: the curve index of the cell there. Built
/// with the tiled CPU fold of the identity sequence, so placing a whole preview costs one fold
/// instead of a `d2xy` walk per cell. Grids up to [`KEPT_GRID_ORDER`] (4 MiB) are built once
/// per process: every preview and both sides of every delta place their cells with them.
pub fn curve_index_grid(order: u32) -> std::borrow::Cow<'static, [u32]> {
    static GRIDS: [std::sync::OnceLock<Vec<u32>>; KEPT_GRID_ORDER as usize + 1] =
        [const { std::sync::OnceLock::new() }; KEPT_GRID_ORDER as usize + 1];
    let build = || {
        let cells = 1usize << (2 * order);
        let identity: Vec<u8> = (0..cells as u32).flat_map(u32::to_le_bytes).collect();
        let mut grid = vec![0u32; cells];
        crate::kernels::fold_rts::fold_rts(&identity, order, &mut grid);
        grid
    };
    match GRIDS.get(order as usize) {
        Some(kept) => std::borrow::Cow::Borrowed(kept.get_or_init(build)),
        None => std::borrow::Cow::Owned(build()),
    }
}

/// Largest order whose cell grid [`curve_index_grid`] keeps.
const KEPT_GRID_ORDER: u32 = 10;

/// Calls `paint(cell, pixel)` for every RGBA pixel of the square part of `image` (side
/// `2^k`), where `cell` is the curve index at `order` (at most k) of the cell covering it.
pub fn for_each_cell(
    image: &mut PreviewImage,
    order: u32,
    paint: impl Fn(usize, &mut [u8]) + Sync,
) {
    let width = image.width as usize;
    let cells_side = 1usize << order;
    let scale = width / cells_side;
    let grid = curve_index_grid(order);
    // One band of `scale` pixel rows per row of cells, painted in parallel.
    image.rgba[..width * width * 4]
        .par_chunks_mut(width * 4 * scale)
        .zip(grid.par_chunks(cells_side))
        .for_each(|(band, cells)| {
            for line in band.chunks_exact_mut(width * 4) {
                for (block, &cell) in line.chunks_exact_mut(scale * 4).zip(cells) {
                    for px in block.chunks_exact_mut(4) {
                        paint(cell as usize, px);
                    }
                }
            }
        });
}

/// Draws `text` in the 8x8 font at `(x, y)`, `scale` pixels per font pixel.
pub fn draw_text(
    image: &mut PreviewImage,
    x: usize,
    y: usize,
    text: &str,
    scale: usize,
    colour: [u8; 4],
) {
    let (w, h) = (image.width as usize, image.height as usize);
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or(font8x8::legacy::BASIC_LEGACY[b'?' as usize]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if bits >> gx & 1 == 0 {
                    continue;
                }
                for sy in 0..scale {
                    for sx in 0..scale {
                        let px = x + (i * 8 + gx) * scale + sx;
                        let py = y + gy * scale + sy;
                        if px < w && py < h {
                            image.rgba[(py * w + px) * 4..][..4].copy_from_slice(&colour);
                        }
                    }
                }
            }
        }
    }
}

/// Fills a rectangle, clipped to the image.
pub fn fill_rect(
    image: &mut PreviewImage,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    colour: [u8; 4],
) {
    let (iw, ih) = (image.width as usize, image.height as usize);
    for py in y..(y + h).min(ih) {
        for px in x..(x + w).min(iw) {
            image.rgba[(py * iw + px) * 4..][..4].copy_from_slice(&colour);
        }
    }
}

fn add_legend(image: &mut PreviewImage, palette: Palette, layout: Layout) {
    let scale = if image.width >= 1024 { 2 } else { 1 };
    match palette {
        Palette::Byteclass => {
            // Six swatches: one row from 256 pixels, wrapped into rows below that.
            let mut items: Vec<(String, Option<[u8; 3]>)> = CLASS_NAMES
                .iter()
                .zip(CLASS_COLOURS)
                .map(|(name, rgb)| (name.to_string(), Some(rgb)))
                .collect();
            items.push(("none".to_string(), Some(NO_DATA)));
            let width = image.width as usize;
            let strip = legend::lay_out(&items, width, image.height as usize / 2, scale);
            legend::append(image, &strip);
        }
        Palette::Entropy | Palette::Gray | Palette::Rgba => {
            add_scale_legend(image, palette, layout, scale)
        }
    }
}

/// The one-row legend of the entropy, gray and raw palettes.
fn add_scale_legend(image: &mut PreviewImage, palette: Palette, layout: Layout, scale: usize) {
    let width = image.width as usize;
    let strip = 12 * scale;
    let top = image.height as usize;
    image.height += strip as u32;
    image.rgba.resize(width * image.height as usize * 4, 0);
    fill_rect(image, 0, top, width, strip, [0x18, 0x18, 0x18, 255]);
    let text_y = top + 2 * scale;
    let white = [0xee, 0xee, 0xee, 255];
    match palette {
        Palette::Entropy | Palette::Gray => {
            draw_text(image, 2 * scale, text_y, "0", scale, white);
            let bar_x = 12 * scale;
            let bar_w = (width / 3).max(16);
            for i in 0..bar_w {
                let v = i as f64 / (bar_w - 1) as f64;
                let rgb = if palette == Palette::Entropy {
                    entropy_colour(v)
                } else {
                    [(v * 255.0).round() as u8; 3]
                };
                fill_rect(
                    image,
                    bar_x + i,
                    text_y,
                    1,
                    8 * scale,
                    [rgb[0], rgb[1], rgb[2], 255],
                );
            }
            let label_x = bar_x + bar_w + 2 * scale;
            let room = width.saturating_sub(label_x) / (8 * scale);
            let label = match palette {
                Palette::Entropy if room >= 22 => "8 bits/B, 256 B blocks",
                Palette::Entropy => "8 bits/B",
                _ => "255",
            };
            draw_text(image, label_x, text_y, label, scale, white);
        }
        Palette::Byteclass | Palette::Rgba => {
            let label = if layout == Layout::Rts {
                "raw RGBA texels"
            } else {
                "raw bytes, gray"
            };
            draw_text(image, 2 * scale, text_y, label, scale, white);
        }
    }
}

/// Outline colours for labelled regions, cycled.
pub const REGION_COLOURS: [[u8; 3]; 10] = [
    [0xff, 0xd7, 0x00],
    [0x00, 0xe5, 0xff],
    [0xff, 0x40, 0xff],
    [0x7c, 0xff, 0x4f],
    [0xff, 0x8c, 0x00],
    [0x9d, 0x8c, 0xff],
    [0xff, 0x52, 0x52],
    [0x00, 0xff, 0xa3],
    [0xff, 0xff, 0xff],
    [0x40, 0x9c, 0xff],
];

/// A byte range to outline and label on a preview.
#[derive(Clone, Debug)]
pub struct LabelledRange {
    pub label: String,
    pub start: u64,
    pub end: u64,
}

/// Renders the byte-class preview of `data` (as [`render`]) with every range in
/// `ranges` outlined (see [`outline`]).
pub fn render_outlined(
    backend: &Backend,
    data: &[u8],
    layout: Layout,
    order: u32,
    side: u32,
    ranges: &[LabelledRange],
) -> Result<PreviewImage> {
    let image = render(
        backend,
        data,
        layout,
        order,
        Palette::Byteclass,
        side,
        false,
    )?;
    Ok(outline(image, layout, order, ranges))
}

/// Outlines every range of `ranges` on a square preview (no legend yet) of a
/// texture of `order` in its own colour, labels it where it is big enough, and
/// adds a legend listing them below ([`range_legend`]: as many as fit in half the
/// picture's height, then "+N more").
pub fn outline(
    mut image: PreviewImage,
    layout: Layout,
    order: u32,
    ranges: &[LabelledRange],
) -> PreviewImage {
    let side = image.width;
    let colours = label_ordinals(ranges);
    let preview_order = side.trailing_zeros();
    let cell_order = order.min(preview_order);
    let scale = 1u64 << (preview_order - cell_order);
    let bytes_per_cell = (1u64 << (2 * (order - cell_order))) * layout.bytes_per_pixel() as u64;
    let mut sorted: Vec<(usize, &LabelledRange)> = ranges
        .iter()
        .enumerate()
        .filter(|(_, r)| r.end > r.start)
        .collect();
    sorted.sort_by_key(|(_, r)| r.start);
    // Which range owns the middle byte of each preview cell.
    let owner = |cell: u64| -> Option<usize> {
        let middle = cell * bytes_per_cell + bytes_per_cell / 2;
        let i = sorted.partition_point(|(_, r)| r.start <= middle);
        i.checked_sub(1)
            .map(|i| sorted[i])
            .filter(|(_, r)| middle < r.end)
            .map(|(i, _)| i)
    };
    let width = side as usize;
    // Range indexes as u32, NONE for no range: a quarter of Option<usize>'s memory, which
    // at one byte a pixel is most of what outlining touches.
    const NONE: u32 = u32::MAX;
    let owners: Vec<u32> = (0..1u64 << (2 * cell_order))
        .map(|cell| owner(cell).map_or(NONE, |i| i as u32))
        .collect();
    let grid = curve_index_grid(cell_order);
    let (cells_side, pixels_per_cell) = (1usize << cell_order, scale as usize);
    let mut labels = vec![NONE; width * width];
    for (y, row) in labels.chunks_exact_mut(width).enumerate() {
        let cells = &grid[y / pixels_per_cell * cells_side..][..cells_side];
        for (x, label) in row.iter_mut().enumerate() {
            *label = owners[cells[x / pixels_per_cell] as usize];
        }
    }
    for y in 0..width {
        for x in 0..width {
            let id = labels[y * width + x];
            if id == NONE {
                continue;
            }
            let edge = [(0isize, -1isize), (0, 1), (-1, 0), (1, 0)]
                .iter()
                .any(|(dx, dy)| {
                    let (nx, ny) = (x as isize + dx, y as isize + dy);
                    nx < 0
                        || ny < 0
                        || nx >= width as isize
                        || ny >= width as isize
                        || labels[ny as usize * width + nx as usize] != id
                });
            if edge {
                let [r, g, b] = REGION_COLOURS[colours[id as usize] % REGION_COLOURS.len()];
                image.rgba[(y * width + x) * 4..][..4].copy_from_slice(&[r, g, b, 255]);
            }
        }
    }
    // Label each range inside its largest square when the text fits.
    for (id, range) in ranges.iter().enumerate() {
        let first = range.start / bytes_per_cell;
        let last = range.end.div_ceil(bytes_per_cell);
        let biggest = crate::curve::range_squares(cell_order, first, last)
            .into_iter()
            .max_by_key(|sq| sq[2]);
        if let Some([x, y, w, _]) = biggest {
            let (px, py, pw) = (x as u64 * scale, y as u64 * scale, w as u64 * scale);
            let text = legend::path_label(&range.label, (pw.saturating_sub(4) / 8) as usize);
            if pw >= 24 && !text.is_empty() {
                let [r, g, b] = REGION_COLOURS[colours[id] % REGION_COLOURS.len()];
                fill_rect(
                    &mut image,
                    px as usize + 2,
                    py as usize + 2,
                    text.chars().count() * 8,
                    8,
                    [0, 0, 0, 200],
                );
                draw_text(
                    &mut image,
                    px as usize + 2,
                    py as usize + 2,
                    &text,
                    1,
                    [r, g, b, 255],
                );
            }
        }
    }
    let strip = range_legend(ranges, side);
    legend::append(&mut image, &strip);
    image
}

/// For each range, the ordinal of its label among the distinct labels in order of first
/// appearance: ranges of one name (the mappings of one library) share a colour and one legend
/// entry.
fn label_ordinals(ranges: &[LabelledRange]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    ranges
        .iter()
        .map(|r| {
            let next = seen.len();
            *seen.entry(r.label.as_str()).or_insert(next)
        })
        .collect()
}

/// The legend listing the labels of `ranges`, each once, under a square picture `side` pixels
/// wide: each label keeps its file name ([`legend::path_label`]), and the strip is at most
/// half the picture's height.
pub fn range_legend(ranges: &[LabelledRange], side: u32) -> legend::Legend {
    let side = side as usize;
    let chars = legend::label_chars(side, 1).min(legend::MAX_LABEL_CHARS);
    let mut items: Vec<(String, Option<[u8; 3]>)> = Vec::new();
    for (range, ordinal) in ranges.iter().zip(label_ordinals(ranges)) {
        // Ordinals are handed out in order: a label's first range brings the next one.
        if ordinal == items.len() {
            items.push((
                legend::path_label(&range.label, chars),
                Some(REGION_COLOURS[ordinal % REGION_COLOURS.len()]),
            ));
        }
    }
    legend::lay_out(&items, side, side / 2, 1)
}

/// Writes `image` as an 8-bit RGBA PNG.
pub fn write_png(out: &mut dyn Write, image: &PreviewImage) -> std::io::Result<()> {
    let mut encoder = png::Encoder::new(out, image.width, image.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let to_io = |e: png::EncodingError| std::io::Error::other(e.to_string());
    let mut writer = encoder.write_header().map_err(to_io)?;
    writer.write_image_data(&image.rgba).map_err(to_io)?;
    writer.finish().map_err(to_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One edit of a test's bytes.
    type Edit = dyn Fn(&mut Vec<u8>);

    /// Bytes that are text in some stretches and pseudo-random in others.
    fn mixed_bytes(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                match (i / 20_000) % 3 {
                    0 => (x >> 16) as u8,
                    1 => b"text /usr/lib line\n"[i % 19],
                    _ => 0,
                }
            })
            .collect()
    }

    #[test]
    fn a_kept_preview_repainted_where_bytes_changed_matches_a_fresh_render() {
        let backend = Backend::Cpu;
        for (layout, palette) in [
            (Layout::Brick, Palette::Byteclass),
            (Layout::Brick, Palette::Entropy),
            (Layout::Rts, Palette::Rgba),
            (Layout::Rts, Palette::Gray),
        ] {
            let mut data = mixed_bytes(300_001, 7);
            let cells = data.len().div_ceil(layout.bytes_per_pixel()) as u64;
            let order = crate::curve::order_for_cells(cells);
            let mut kept = Vec::new();
            let render = |data: &[u8],
                          changed: Option<&[std::ops::Range<usize>]>,
                          kept: &mut Vec<KeptPreview>| {
                let stage = backend.stage(data);
                render_staged_reusing(
                    &stage,
                    layout,
                    order,
                    palette,
                    256,
                    true,
                    changed,
                    Some(kept),
                )
                .unwrap()
            };
            render(&data, None, &mut kept);
            let edits: [&Edit; 4] = [
                // 64 bytes in a stretch of zeros, at an odd offset.
                &|d| {
                    for (i, b) in d[50_001..50_065].iter_mut().enumerate() {
                        *b = (i * 37) as u8;
                    }
                },
                &|d| d[40_000..44_096].fill(0xFF),
                &|d| d.truncate(280_000),
                &|d| d.extend(std::iter::repeat_n(b'A', 9_000)),
            ];
            for (i, edit) in edits.iter().enumerate() {
                let previous = data.clone();
                edit(&mut data);
                let changed = crate::fold::changed_pages(&previous, &data, 4096);
                // The check can fail: told nothing changed, the kept image is stale.
                let mut stale = kept.clone();
                let fresh = render_staged(&backend.stage(&data), layout, order, palette, 256, true)
                    .unwrap();
                assert!(
                    render(&data, Some(&[]), &mut stale).rgba != fresh.rgba,
                    "{layout:?} {palette:?} edit {i} must show"
                );
                let reused = render(&data, Some(&changed), &mut kept);
                assert_eq!((reused.width, reused.height), (fresh.width, fresh.height));
                assert!(
                    reused.rgba == fresh.rgba,
                    "{layout:?} {palette:?}: edit {i} repainted differs from a fresh render"
                );
            }
        }
    }

    #[test]
    fn entropy_colours_follow_binvis_curve() {
        assert_eq!(entropy_colour(0.0), [0, 0, 0]);
        assert_eq!(entropy_colour(1.0), [255, 0, 255]);
        assert_eq!(entropy_colour(0.5), [0, 0, 64]);
        // f(0.25) = (1 - 0.25)^4 = 0.3164; b = 0.5625.
        assert_eq!(entropy_colour(0.75), [81, 0, 143]);
    }

    #[test]
    fn channel_counts() {
        assert_eq!(channel_count(0, 8, 0), 2);
        assert_eq!(channel_count(1, 3, 0), 0);
        assert_eq!(channel_count(1, 3, 3), 1);
        assert_eq!(channel_count(4, 5, 0), 2);
    }
}
