//! The files foundry-gpu writes and reads: `.brick`, `.rts.png`, parts indexes, previews, and their atomic writing.

pub mod brick;
pub mod legend;
pub mod parts;
pub mod png_writer;
pub mod preview;
pub mod rts_png;
pub mod staged;

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// What a file on disk is, judged by its first bytes rather than its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Brick,
    RtsPng,
    PartsIndex,
    /// Any other file: plain bytes.
    Raw,
}

/// Reads the first bytes of `path` and says what it is.
pub fn detect(path: &Path) -> Result<FileKind> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if meta.is_dir() {
        return Err(Error::malformed(path, "is a directory, expected a file"));
    }
    if !meta.is_file() {
        // A FIFO or device is never a brick, and reading its head here would consume bytes
        // (or wait for a writer) before the caller reads it as raw input.
        return Ok(FileKind::Raw);
    }
    let mut head = [0u8; 16];
    // Non-blocking, and judged again on what was opened: a FIFO swapped in after the check
    // above must neither block this open nor be read.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io(path, "read", e))?
    };
    if !file
        .metadata()
        .map_err(|e| Error::io(path, "read", e))?
        .is_file()
    {
        return Ok(FileKind::Raw);
    }
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
    let head = &head[..filled];
    let name = path.to_string_lossy();
    if name.ends_with(".brick") && !head.starts_with(brick::MAGIC) {
        if filled < brick::MAGIC.len() {
            return Err(Error::malformed(
                path,
                format!(
                    "truncated header: {filled} bytes, a .brick header needs {}",
                    brick::HEADER_LEN
                ),
            ));
        }
        return Err(Error::malformed(
            path,
            format!(
                "not a .brick: magic is {:?}, expected \"V2BR\"",
                String::from_utf8_lossy(&head[..4])
            ),
        ));
    }
    if name.ends_with(".png") && !head.starts_with(rts_png::PNG_SIGNATURE) {
        return Err(Error::malformed(
            path,
            "not a PNG: the file does not start with the PNG signature",
        ));
    }
    Ok(if head.starts_with(brick::MAGIC) {
        FileKind::Brick
    } else if head.starts_with(rts_png::PNG_SIGNATURE) {
        FileKind::RtsPng
    } else if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && path.to_string_lossy().ends_with(".json")
    {
        FileKind::PartsIndex
    } else {
        FileKind::Raw
    })
}

/// Side of the smallest `.rts.png` grid for `len` bytes (formats.md §3):
/// round up to a multiple of 64, four bytes a pixel, square, power of two.
pub fn rts_min_side(len: u64) -> u32 {
    let pixels = len.div_ceil(64) * 64 / 4;
    1 << crate::curve::order_for_cells(pixels)
}

/// Side of the smallest `.brick` texture for `len` bytes.
pub fn brick_min_side(len: u64) -> u32 {
    1 << crate::curve::order_for_cells(len)
}

/// log2 of a power-of-two side.
pub fn order_of_side(side: u32) -> u32 {
    side.trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_sides() {
        assert_eq!(rts_min_side(0), 1);
        assert_eq!(rts_min_side(1), 4);
        assert_eq!(rts_min_side(36), 4);
        assert_eq!(rts_min_side(65), 8);
        assert_eq!(rts_min_side(64 << 20), 4096);
        assert_eq!(brick_min_side(0), 1);
        assert_eq!(brick_min_side(36), 8);
        assert_eq!(brick_min_side(64 << 20), 8192);
        assert_eq!(brick_min_side((64 << 20) + 1), 16384);
    }
}
