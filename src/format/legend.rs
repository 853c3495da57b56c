//! Legend strips under previews: labels that keep a path's file name, laid out in rows that fit
//! the picture's width, and never more rows than half the picture's height ("+N more" instead).

use super::preview::{draw_text, fill_rect, PreviewImage};

/// Pixels of one legend row at scale 1: an 8-pixel line of text and its spacing.
pub const ROW_HEIGHT: usize = 12;
/// Pixels left of the first entry and above the first row, at scale 1.
const MARGIN: usize = 2;
/// Pixels from an entry's swatch to its text, at scale 1.
const SWATCH_WIDTH: usize = 11;
/// Pixels between entries, at scale 1.
const GAP: usize = 8;
/// Longest label the range legend shows on wide pictures.
pub const MAX_LABEL_CHARS: usize = 40;

/// One entry: a swatch (when it has a colour) and its text, `x` pixels in and on `row`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegendEntry {
    pub x: usize,
    pub row: usize,
    /// Pixels from `x` to the end of the text.
    pub width: usize,
    pub text: String,
    pub swatch: Option<[u8; 3]>,
}

/// A laid-out legend strip: its entries, then "+N more" when some did not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Legend {
    pub entries: Vec<LegendEntry>,
    /// Entries left out for want of room (the last entry says "+N more").
    pub left_out: usize,
    pub rows: usize,
    /// Font pixels per pixel of the 8x8 font.
    pub scale: usize,
}

impl Legend {
    /// Pixels the strip adds below the picture.
    pub fn height(&self) -> usize {
        (self.rows * ROW_HEIGHT + MARGIN) * self.scale
    }
}

/// Characters of label one entry can show on a `width`-pixel picture: a whole row, less the
/// margin and swatch.
pub fn label_chars(width: usize, scale: usize) -> usize {
    (width / scale).saturating_sub(2 * MARGIN + SWATCH_WIDTH) / 8
}

/// `label` in at most `max_chars` characters. A path puts its file name first, then as much of
/// its folder as fits, cut from the left at a `/`: `libc.so.6 .../x86_64-linux-gnu`. A file name
/// longer than `max_chars` keeps its start and ends in `..`.
pub fn path_label(label: &str, max_chars: usize) -> String {
    let cut_end = |text: &str, n: usize| -> String {
        if text.chars().count() <= n {
            text.to_string()
        } else if n <= 2 {
            text.chars().take(n).collect()
        } else {
            text.chars().take(n - 2).chain("..".chars()).collect()
        }
    };
    let trimmed = label.trim_end_matches('/');
    let Some((folder, name)) = trimmed.rsplit_once('/') else {
        return cut_end(label, max_chars);
    };
    let name_chars = name.chars().count();
    if name_chars >= max_chars || name.is_empty() {
        return cut_end(if name.is_empty() { label } else { name }, max_chars);
    }
    // The folder keeps its slash so that `/lib/x.so` reads `x.so /lib`.
    let folder = if folder.is_empty() { "/" } else { folder };
    let room = max_chars - name_chars - 1;
    let folder_chars = folder.chars().count();
    if folder_chars <= room {
        return format!("{name} {folder}");
    }
    // "..." then the folder's tail, starting at a component when one starts in it.
    if room < 5 {
        return name.to_string();
    }
    let tail: String = folder.chars().skip(folder_chars - (room - 3)).collect();
    let tail = match tail.find('/') {
        Some(at) if at + 1 < tail.len() => &tail[at..],
        _ => tail.as_str(),
    };
    format!("{name} ...{tail}")
}

/// Lays out `items` (text, swatch colour) left to right in rows of a `width`-pixel picture, no
/// taller than `max_height` pixels; entries that do not fit give way to one "+N more".
pub fn lay_out(
    items: &[(String, Option<[u8; 3]>)],
    width: usize,
    max_height: usize,
    scale: usize,
) -> Legend {
    let max_rows = ((max_height / scale).saturating_sub(MARGIN) / ROW_HEIGHT).max(1);
    let text_width = |text: &str| 8 * text.chars().count() * scale;
    let entry_width =
        |text: &str, swatch: bool| text_width(text) + if swatch { SWATCH_WIDTH * scale } else { 0 };
    let mut entries: Vec<LegendEntry> = Vec::new();
    let (mut x, mut row) = (MARGIN * scale, 0);
    for (text, swatch) in items {
        let w = entry_width(text, swatch.is_some());
        if x > MARGIN * scale && x + w > width {
            x = MARGIN * scale;
            row += 1;
        }
        if row >= max_rows {
            break;
        }
        entries.push(LegendEntry {
            x,
            row,
            width: w,
            text: text.clone(),
            swatch: *swatch,
        });
        x += w + GAP * scale;
    }
    let mut left_out = items.len() - entries.len();
    if left_out > 0 {
        // Make room for "+N more" after the last entry kept, giving up entries until it fits.
        loop {
            let more = format!("+{left_out} more");
            let (at_x, at_row) = match entries.last() {
                Some(last) if last.x + last.width + GAP * scale + text_width(&more) <= width => {
                    (last.x + last.width + GAP * scale, last.row)
                }
                Some(last) if last.row + 1 < max_rows => (MARGIN * scale, last.row + 1),
                Some(_) => {
                    entries.pop();
                    left_out += 1;
                    continue;
                }
                None => (MARGIN * scale, 0),
            };
            entries.push(LegendEntry {
                x: at_x,
                row: at_row,
                width: text_width(&more),
                text: more,
                swatch: None,
            });
            break;
        }
    }
    let rows = entries.last().map_or(1, |e| e.row + 1);
    Legend {
        entries,
        left_out,
        rows,
        scale,
    }
}

/// Adds `legend` as a strip below `image`.
pub fn append(image: &mut PreviewImage, legend: &Legend) {
    let width = image.width as usize;
    let top = image.height as usize;
    let strip = legend.height();
    image.height += strip as u32;
    image.rgba.resize(width * image.height as usize * 4, 0);
    fill_rect(image, 0, top, width, strip, [0x18, 0x18, 0x18, 255]);
    let scale = legend.scale;
    for e in &legend.entries {
        let y = top + (MARGIN + e.row * ROW_HEIGHT) * scale;
        let mut text_x = e.x;
        if let Some([r, g, b]) = e.swatch {
            fill_rect(image, e.x, y, 8 * scale, 8 * scale, [r, g, b, 255]);
            text_x += SWATCH_WIDTH * scale;
        }
        draw_text(image, text_x, y, &e.text, scale, [0xee, 0xee, 0xee, 255]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_file_name_first() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(path_label(libc, 40), "libc.so.6 /usr/lib/x86_64-linux-gnu");
        assert_eq!(path_label(libc, 30), "libc.so.6 .../x86_64-linux-gnu");
        assert_eq!(path_label(libc, 14), "libc.so.6");
        assert_eq!(path_label(libc, 6), "libc..");
        assert_eq!(path_label("[heap]", 40), "[heap]");
        assert_eq!(path_label("/init", 40), "init /");
        assert_eq!(path_label("tree/sub/", 40), "sub tree");
        for max in 1..60 {
            assert!(path_label(libc, max).chars().count() <= max, "{max}");
        }
    }

    #[test]
    fn too_many_entries_end_in_a_count_of_those_left_out() {
        let items: Vec<(String, Option<[u8; 3]>)> = (0..100)
            .map(|i| (format!("entry-{i:03}"), Some([1, 2, 3])))
            .collect();
        let legend = lay_out(&items, 128, 64, 1);
        assert!(legend.height() <= 64);
        let last = legend.entries.last().unwrap();
        assert_eq!(last.text, format!("+{} more", legend.left_out));
        assert_eq!(legend.entries.len() - 1 + legend.left_out, 100);
        assert!(legend.entries.iter().all(|e| e.x + e.width <= 128));
        let few = lay_out(&items[..3], 1024, 512, 1);
        assert_eq!((few.rows, few.left_out, few.entries.len()), (1, 0, 3));
    }
}
