//! `.brick` (V2BR v1, formats.md §2): the 132-byte header, the texture, and every check a reader needs.

use crate::analysis::ByteFacts;
use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::path::Path;

/// The four magic bytes.
pub const MAGIC: &[u8; 4] = b"V2BR";
/// The only version any Geometry OS reader accepts.
pub const VERSION: u32 = 1;
/// Header length in bytes; the texture follows immediately.
pub const HEADER_LEN: usize = 132;

/// Header flag bits.
pub mod flags {
    /// A `NAME.brick.meta.json` sidecar exists.
    pub const HAS_METADATA: u32 = 1 << 0;
    /// Never set: no reader decompresses.
    pub const IS_COMPRESSED: u32 = 1 << 1;
    /// The source is an ELF file (executables, shared objects, `.o`, `.ko`).
    pub const IS_EXECUTABLE: u32 = 1 << 2;
    /// The source's entropy exceeds 7.5 bits/byte.
    pub const IS_ENCRYPTED: u32 = 1 << 3;
    /// The source is valid UTF-8 text.
    pub const IS_UTF8_TEXT: u32 = 1 << 4;
    /// Every bit a reader knows.
    pub const KNOWN: u32 = 0x1F;

    /// Names of the bits set in `flags`.
    pub fn names(flags: u32) -> Vec<&'static str> {
        [
            (HAS_METADATA, "HAS_METADATA"),
            (IS_COMPRESSED, "IS_COMPRESSED"),
            (IS_EXECUTABLE, "IS_EXECUTABLE"),
            (IS_ENCRYPTED, "IS_ENCRYPTED"),
            (IS_UTF8_TEXT, "IS_UTF8_TEXT"),
        ]
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect()
    }
}

/// Flags for a source with these facts (HAS_METADATA is the writer's to add).
pub fn flags_for(facts: &ByteFacts) -> u32 {
    let mut f = 0;
    if facts.elf {
        f |= flags::IS_EXECUTABLE;
    }
    if facts.entropy > 7.5 {
        f |= flags::IS_ENCRYPTED;
    }
    if facts.utf8_text {
        f |= flags::IS_UTF8_TEXT;
    }
    f
}

/// The header, field by field.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BrickHeader {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    pub hilbert_order: u32,
    pub original_size: u64,
    pub compressed_size: u64,
    pub entropy: f32,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: [u8; 32],
    #[serde(skip)]
    pub hash_tail: [u8; 16],
    pub flags: u32,
    #[serde(skip)]
    pub reserved: [u8; 40],
}

fn hex_bytes<S: serde::Serializer>(b: &[u8; 32], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("in header"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("in header"))
}

impl BrickHeader {
    /// The header for a texture of `side` holding a source with `facts`.
    pub fn new(side: u32, facts: &ByteFacts, flags: u32) -> Self {
        BrickHeader {
            version: VERSION,
            width: side,
            height: side,
            hilbert_order: side.trailing_zeros(),
            original_size: facts.size,
            compressed_size: facts.size,
            entropy: facts.entropy as f32,
            hash: facts.sha256,
            hash_tail: [0; 16],
            flags,
            reserved: [0; 40],
        }
    }

    /// The 132 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.width.to_le_bytes());
        b[12..16].copy_from_slice(&self.height.to_le_bytes());
        b[16..20].copy_from_slice(&self.hilbert_order.to_le_bytes());
        b[20..28].copy_from_slice(&self.original_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.compressed_size.to_le_bytes());
        b[36..40].copy_from_slice(&self.entropy.to_le_bytes());
        b[40..72].copy_from_slice(&self.hash);
        b[72..88].copy_from_slice(&self.hash_tail);
        b[88..92].copy_from_slice(&self.flags.to_le_bytes());
        b[92..132].copy_from_slice(&self.reserved);
        b
    }

    /// Parses a header; fails only when the bytes cannot be a header at all
    /// (too short, wrong magic). Field values are judged by [`Self::problems`].
    pub fn parse(path: &Path, b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(Error::malformed(
                path,
                format!(
                    "truncated header: {} bytes, a .brick header needs {HEADER_LEN}",
                    b.len()
                ),
            ));
        }
        if &b[0..4] != MAGIC {
            return Err(Error::malformed(
                path,
                format!(
                    "not a .brick: magic is {:?}, expected \"V2BR\"",
                    String::from_utf8_lossy(&b[0..4])
                ),
            ));
        }
        Ok(BrickHeader {
            version: u32_at(b, 4),
            width: u32_at(b, 8),
            height: u32_at(b, 12),
            hilbert_order: u32_at(b, 16),
            original_size: u64_at(b, 20),
            compressed_size: u64_at(b, 28),
            entropy: f32::from_le_bytes(b[36..40].try_into().expect("in header")),
            hash: b[40..72].try_into().expect("in header"),
            hash_tail: b[72..88].try_into().expect("in header"),
            flags: u32_at(b, 88),
            reserved: b[92..132].try_into().expect("in header"),
        })
    }

    /// Pixels in the texture.
    pub fn capacity(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Problems that make the brick undecodable by Geometry OS's readers.
    pub fn fatal_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.version != VERSION {
            p.push(format!(
                "version {} is not supported (readers accept only {VERSION})",
                self.version
            ));
        }
        if self.width != self.height {
            p.push(format!(
                "texture is {}x{}, must be square",
                self.width, self.height
            ));
        }
        if !self.width.is_power_of_two() {
            p.push(format!("side {} is not a power of two", self.width));
        } else if self.width.trailing_zeros() > crate::curve::MAX_ORDER {
            p.push(format!(
                "side {} exceeds the largest supported side {}",
                self.width,
                1 << crate::curve::MAX_ORDER
            ));
        } else if self.hilbert_order != self.width.trailing_zeros() {
            p.push(format!(
                "hilbert_order {} does not match side {} (expected {})",
                self.hilbert_order,
                self.width,
                self.width.trailing_zeros()
            ));
        }
        if self.original_size > self.capacity() {
            p.push(format!(
                "original_size {} exceeds the texture's capacity of {} bytes",
                self.original_size,
                self.capacity()
            ));
        }
        p
    }

    /// Deviations from what the writer must write that readers tolerate.
    pub fn minor_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.compressed_size != self.original_size {
            p.push(format!(
                "compressed_size {} differs from original_size {}",
                self.compressed_size, self.original_size
            ));
        }
        if self.flags & flags::IS_COMPRESSED != 0 {
            p.push("IS_COMPRESSED is set, but no reader decompresses".into());
        }
        if self.flags & !flags::KNOWN != 0 {
            p.push(format!(
                "unknown flag bits 0x{:x}",
                self.flags & !flags::KNOWN
            ));
        }
        if !(0.0..=8.0).contains(&self.entropy) {
            p.push(format!(
                "entropy {} is outside 0..=8 bits/byte",
                self.entropy
            ));
        }
        if self.hash_tail.iter().any(|&b| b != 0) {
            p.push("the 16 bytes after the SHA-256 are not zero".into());
        }
        if self.reserved.iter().any(|&b| b != 0) {
            p.push("reserved bytes are not zero".into());
        }
        p
    }
}

/// Writes a whole `.brick`: header then texture.
pub fn write_brick(
    out: &mut dyn Write,
    header: &BrickHeader,
    texture: &[u32],
) -> std::io::Result<()> {
    out.write_all(&header.to_bytes())?;
    out.write_all(bytemuck::cast_slice(texture))
}

/// Brings `file`, a whole `.brick` of an earlier version of the same texture (a clone of it),
/// to `header` and `texture`, writing only the header and the texture rows in `rows` (ranges
/// of rows, in any order, overlapping or not): the rows [`crate::kernels::refold_ranges`]
/// re-folded since that version. Returns the bytes written.
pub fn patch_brick(
    file: &std::fs::File,
    header: &BrickHeader,
    texture: &[u32],
    rows: &[std::ops::Range<usize>],
) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let side = header.width as usize;
    assert_eq!(
        texture.len(),
        side * side,
        "the texture is the header's square"
    );
    let mut merged: Vec<std::ops::Range<usize>> = rows
        .iter()
        .map(|r| r.start.min(side)..r.end.min(side))
        .filter(|r| !r.is_empty())
        .collect();
    merged.sort_unstable_by_key(|r| r.start);
    merged.dedup_by(|next, kept| {
        let joins = next.start <= kept.end;
        if joins {
            kept.end = kept.end.max(next.end);
        }
        joins
    });
    file.write_all_at(&header.to_bytes(), 0)?;
    let bytes: &[u8] = bytemuck::cast_slice(texture);
    let row_bytes = side * 4;
    let mut written = HEADER_LEN as u64;
    for r in merged {
        let span = &bytes[r.start * row_bytes..r.end * row_bytes];
        file.write_all_at(span, (HEADER_LEN + r.start * row_bytes) as u64)?;
        written += span.len() as u64;
    }
    Ok(written)
}

/// A `.brick` read from disk.
pub struct Brick {
    pub header: BrickHeader,
    pub texture: Vec<u32>,
}

impl Brick {
    /// Reads and checks a brick; fails on anything that stops decoding.
    pub fn read(path: &Path) -> Result<Self> {
        Self::checked(path, Self::read_lenient(path)?)
    }

    /// [`Self::read`] of bytes already in memory; `path` only names them in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let lenient = Self::read_from(path, bytes, bytes.len() as u64)?;
        Self::checked(path, lenient)
    }

    fn checked(path: &Path, brick: Self) -> Result<Self> {
        if let Some(problem) = brick.header.fatal_problems().into_iter().next() {
            return Err(Error::malformed(path, problem));
        }
        Ok(brick)
    }

    /// Reads header and texture; only a short header, wrong magic or a texture
    /// of the wrong length fail. `info` uses this to report everything else.
    pub fn read_lenient(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "read", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "read", e))?
            .len();
        Self::read_from(path, file, file_len)
    }

    /// Header, then a texture whose length is checked against `file_len` before anything
    /// that size is allocated.
    fn read_from(path: &Path, mut file: impl Read, file_len: u64) -> Result<Self> {
        let mut head = vec![0u8; HEADER_LEN.min(file_len as usize)];
        file.read_exact(&mut head)
            .map_err(|e| Error::io(path, "read", e))?;
        let header = BrickHeader::parse(path, &head)?;
        let side_ok = header.width == header.height
            && header.width.is_power_of_two()
            && header.width.trailing_zeros() <= crate::curve::MAX_ORDER;
        if !side_ok {
            return Ok(Brick {
                header,
                texture: Vec::new(),
            });
        }
        let expected = header.capacity() * 4;
        let found = file_len.saturating_sub(HEADER_LEN as u64);
        if found != expected {
            return Err(Error::malformed(
                path,
                format!(
                    "{}: expected {expected} texture bytes after the header for {}x{}, found {found}",
                    if found < expected { "truncated texture" } else { "trailing bytes" },
                    header.width,
                    header.height
                ),
            ));
        }
        let limit = crate::source::max_input();
        if expected > limit {
            return Err(Error::malformed(
                path,
                format!("a {}x{} texture holds {expected} bytes, more than --max-input allows ({limit} bytes)", header.width, header.height),
            ));
        }
        let mut texture = vec![0u32; header.capacity() as usize];
        file.read_exact(bytemuck::cast_slice_mut(&mut texture))
            .map_err(|e| Error::io(path, "read", e))?;
        Ok(Brick { header, texture })
    }

    /// Texels that break the payload rules (R = G = B, A = 255, padding 00 00 00 FF),
    /// as (count, first offending pixel index).
    pub fn pixel_problems(&self) -> Vec<String> {
        let data_pixels = self.header.original_size.min(self.texture.len() as u64) as usize;
        let order = self.header.hilbert_order;
        let side = self.header.width as usize;
        let mut non_gray = 0u64;
        let mut bad_padding = 0u64;
        for (at, &px) in self.texture.iter().enumerate() {
            let d = crate::curve::xy2d(order, (at % side) as u32, (at / side) as u32) as usize;
            if d < data_pixels {
                if px != crate::kernels::fold_brick::brick_pixel(px as u8) {
                    non_gray += 1;
                }
            } else if px != crate::Layout::Brick.padding_pixel() {
                bad_padding += 1;
            }
        }
        let mut p = Vec::new();
        if non_gray > 0 {
            p.push(format!(
                "{non_gray} data pixels are not R=G=B, A=255 (readers use the red channel)"
            ));
        }
        if bad_padding > 0 {
            p.push(format!("{bad_padding} padding pixels are not 00 00 00 FF"));
        }
        p
    }
}

/// The sidecar path readers look for beside a brick.
pub fn sidecar_path(brick: &Path) -> std::path::PathBuf {
    let mut name = brick.as_os_str().to_owned();
    name.push(".meta.json");
    name.into()
}
