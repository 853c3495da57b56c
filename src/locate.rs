//! `foundry-gpu locate`: where a byte of an input lands in its textures (part, pixel, channel),
//! which bytes a pixel holds, and what holds them (the file of a tree snapshot, the mapping of
//! a memory snapshot, the ELF section and symbol of a binary).

use crate::curve::{d2xy, xy2d};
use crate::diff::{DistrictTable, MemoryTable, NamedRange};
use crate::error::{Error, Result};
use crate::format::{brick, parts::PartsIndex, rts_png, FileKind};
use crate::kernels::Layout;
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// A byte offset of the input (the whole input, across parts).
    Offset(u64),
    /// A virtual address of a memory snapshot: the byte read from it.
    Address(u64),
    /// Everything one named part of the input holds: an ELF section (`.text`) or symbol
    /// (`main`, a function or initialised data), a file of a tree snapshot (its path, or the end of it after a `/`), a mapping of a memory
    /// snapshot (its `START-END PERMS PATH`, or its path when only one mapping has it).
    Region(String),
    /// A pixel of one texture: of `part` (0 for a single texture), in `layout` (by default
    /// the `.brick`'s where the input has one, else the `.rts.png`'s).
    Pixel {
        x: u32,
        y: u32,
        layout: Option<Layout>,
        part: usize,
    },
}

/// One texture of an input: a `.brick` or `.rts.png`, existing or as `fold` would make it.
#[derive(Clone, Debug, Serialize)]
pub struct Texture {
    /// The file, or `None` for a texture `fold` would write (a plain input).
    pub file: Option<PathBuf>,
    #[serde(serialize_with = "layout_name")]
    pub layout: Layout,
    /// Index among the input's parts.
    pub part: usize,
    /// Input bytes `[start, end)` this texture holds.
    pub start: u64,
    pub end: u64,
    /// Side in pixels.
    pub side: u32,
}

fn layout_name<S: serde::Serializer>(
    layout: &Layout,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(match layout {
        Layout::Brick => "brick",
        Layout::Rts => "rts_png",
    })
}

/// Where a byte lies in one texture.
#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    #[serde(flatten)]
    pub texture: Texture,
    pub x: u32,
    pub y: u32,
    /// The colour channel holding the byte (0 red .. 3 alpha): a `.rts.png` pixel holds four
    /// bytes, a `.brick` pixel one (in all four channels).
    pub channel: u8,
    /// For a region: the aligned squares `[x, y, width, height]` its bytes cover in this
    /// texture, in curve order, each as large as alignment allows (a few dozen describe a
    /// section).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub squares: Vec<[u32; 4]>,
}

/// Something the input is made of that holds the byte.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    /// `file` (tree snapshot), `mapping` (memory snapshot), `elf_section` or `elf_symbol`.
    pub kind: &'static str,
    pub name: String,
    /// Its bytes in the input.
    pub start: u64,
    pub end: u64,
    /// For a mapping: the virtual address of the byte looked up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u64>,
    /// The byte's offset inside it.
    pub offset_inside: u64,
}

/// `foundry-gpu locate`'s answer.
#[derive(Clone, Debug, Serialize)]
pub struct LocateReport {
    pub input: PathBuf,
    /// `file`, `brick`, `rts_png`, `parts`, `snapshot` or `memory`.
    pub kind: &'static str,
    /// Bytes of the input.
    pub size: u64,
    /// The input bytes `[start, end)` the query names: one byte for an offset or address, a
    /// pixel's bytes for a pixel (fewer where the pixel is partly padding, none where it is
    /// all), a region's bytes for a region.
    pub start: u64,
    pub end: u64,
    /// Where the first of those bytes lies in each texture that holds any of them (and, for
    /// a region, the squares they cover there).
    pub placements: Vec<Placement>,
    /// What holds the first of them, outermost first.
    pub holders: Vec<Holder>,
}

/// An input's textures and the named ranges of its bytes: what `locate` reads once and the
/// viewer keeps to answer every hover.
pub struct InputMap {
    kind: &'static str,
    size: u64,
    textures: Vec<Texture>,
    holders: Holders,
}

/// Answers `query` for `path`: a plain file (mapped as `fold` with default options would
/// fold it), a `.brick`, a `.rts.png`, a parts index, a tree snapshot folder (`district.json`)
/// or a memory snapshot folder (`regions.json`).
pub fn locate(path: &Path, query: Query) -> Result<LocateReport> {
    InputMap::read(path)?.answer(path, query)
}

impl InputMap {
    /// Reads what `path` is made of (see [`locate`]): headers and tables, never pixels.
    pub fn read(path: &Path) -> Result<InputMap> {
        layouts_of(path)
    }

    /// [`InputMap::read`] of a plain file whose bytes are already in hand: nothing is read
    /// again, and the sections named are those of these bytes.
    pub fn of_plain_bytes(bytes: &[u8]) -> InputMap {
        plain_file_map(bytes.len() as u64, elf_holders(bytes))
    }

    /// Bytes of the input.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `file`, `brick`, `rts_png`, `parts`, `snapshot` or `memory`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Every named range of the input: its kind (`file`, `mapping`, `elf_section`,
    /// `elf_symbol`) and, for a mapping, its first virtual address.
    pub fn regions(&self) -> impl Iterator<Item = (&NamedRange, &'static str, Option<u64>)> {
        self.holders
            .iter()
            .map(|(range, kind, base)| (range, *kind, *base))
    }

    /// Names the ELF sections and symbols of `bytes`, the input's own bytes decoded from its
    /// textures, when nothing else names its regions (a folded binary's `.brick` or
    /// `.rts.png`, whose headers do not say what they hold).
    pub fn name_elf_regions(&mut self, bytes: &[u8]) {
        if self.holders.is_empty() && bytes.len() as u64 == self.size {
            self.holders = elf_holders(bytes);
        }
    }

    /// Answers `query`; `path` only names the input in errors.
    pub fn answer(&self, path: &Path, query: Query) -> Result<LocateReport> {
        answer(self, path, query)
    }
}

fn answer(layouts: &InputMap, path: &Path, query: Query) -> Result<LocateReport> {
    let region = matches!(query, Query::Region(_));
    let (start, end) = match query {
        Query::Offset(offset) => {
            if offset >= layouts.size {
                return Err(Error::Usage(format!(
                    "offset {offset} is past the end of {} ({} bytes)",
                    path.display(),
                    layouts.size
                )));
            }
            (offset, offset + 1)
        }
        Query::Address(address) => {
            let (range, base) = layouts
                .holders
                .iter()
                .filter_map(|(range, _, base)| Some((range, (*base)?)))
                .find(|(range, base)| {
                    (*base..base.saturating_add(range.end - range.start)).contains(&address)
                })
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "no mapping read into {} holds address 0x{address:x}",
                        path.display()
                    ))
                })?;
            let offset = range.start + (address - base);
            (offset, offset + 1)
        }
        Query::Region(ref name) => {
            let range = region_named(path, layouts, name)?;
            (range.start, range.end)
        }
        Query::Pixel { x, y, layout, part } => pixel_bytes(path, layouts, x, y, layout, part)?,
    };
    let placements = layouts
        .textures
        .iter()
        .filter(|t| start < end && t.start < end && start < t.end)
        .filter(|t| region || (t.start..t.end).contains(&start))
        .map(|t| {
            let first = start.max(t.start);
            let mut placed = place(t, first);
            if region {
                let bpp = t.layout.bytes_per_pixel() as u64;
                let last = end.min(t.end) - t.start;
                placed.squares = crate::curve::range_squares(
                    t.side.trailing_zeros(),
                    (first - t.start) / bpp,
                    last.div_ceil(bpp),
                );
            }
            placed
        })
        .collect();
    let holders = if start < end {
        holders_of(layouts, start)
    } else {
        Vec::new()
    };
    Ok(LocateReport {
        input: path.to_path_buf(),
        kind: layouts.kind,
        size: layouts.size,
        start,
        end,
        placements,
        holders,
    })
}

/// The pixel `(x, y)` of `offset`, a byte inside `texture`.
fn place(texture: &Texture, offset: u64) -> Placement {
    let local = offset - texture.start;
    let bpp = texture.layout.bytes_per_pixel() as u64;
    let (x, y) = d2xy(texture.side.trailing_zeros(), local / bpp);
    Placement {
        texture: texture.clone(),
        x,
        y,
        channel: (local % bpp) as u8,
        squares: Vec::new(),
    }
}

/// The one named range `name` names (see [`Query::Region`]).
fn region_named(path: &Path, layouts: &InputMap, name: &str) -> Result<NamedRange> {
    let matches = |full: &str, kind: &str| {
        full == name
            || (kind == "file" && full.ends_with(&format!("/{name}")))
            || (kind == "mapping" && full.split(' ').nth(2) == Some(name))
    };
    let found: Vec<&NamedRange> = layouts
        .holders
        .iter()
        .filter(|(range, kind, _)| matches(&range.name, kind))
        .map(|(range, _, _)| range)
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::Usage(format!(
            "{} has no section, symbol, file or mapping named {name:?}",
            path.display()
        ))),
        many => Err(Error::Usage(format!(
            "{name:?} names {} regions of {}: {}; give the whole name",
            many.len(),
            path.display(),
            many.iter()
                .take(5)
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The input bytes the pixel `(x, y)` of one texture holds.
fn pixel_bytes(
    path: &Path,
    layouts: &InputMap,
    x: u32,
    y: u32,
    layout: Option<Layout>,
    part: usize,
) -> Result<(u64, u64)> {
    let has_brick = layouts.textures.iter().any(|t| t.layout == Layout::Brick);
    let layout = layout.unwrap_or(if has_brick {
        Layout::Brick
    } else {
        Layout::Rts
    });
    let texture = layouts
        .textures
        .iter()
        .find(|t| t.layout == layout && t.part == part)
        .ok_or_else(|| {
            let parts = layouts
                .textures
                .iter()
                .filter(|t| t.layout == layout)
                .count();
            Error::Usage(format!(
                "{} has no {} of part {part} ({parts} of them)",
                path.display(),
                match layout {
                    Layout::Brick => ".brick",
                    Layout::Rts => ".rts.png",
                }
            ))
        })?;
    if x >= texture.side || y >= texture.side {
        return Err(Error::Usage(format!(
            "pixel {x},{y} is outside the {side}x{side} texture",
            side = texture.side
        )));
    }
    let bpp = layout.bytes_per_pixel() as u64;
    let first = texture.start + xy2d(texture.side.trailing_zeros(), x, y) * bpp;
    Ok((first.min(texture.end), (first + bpp).min(texture.end)))
}

/// What holds `offset`: every named range containing it, outermost (longest) first.
fn holders_of(layouts: &InputMap, offset: u64) -> Vec<Holder> {
    let mut found: Vec<Holder> = layouts
        .holders
        .iter()
        .filter(|(range, _, _)| (range.start..range.end).contains(&offset))
        .map(|(range, kind, address)| Holder {
            kind,
            name: range.name.clone(),
            start: range.start,
            end: range.end,
            address: address.map(|a| a + (offset - range.start)),
            offset_inside: offset - range.start,
        })
        .collect();
    found.sort_by_key(|h| std::cmp::Reverse(h.end - h.start));
    found
}

fn layouts_of(path: &Path) -> Result<InputMap> {
    if path.is_dir() {
        if path.join("district.json").is_file() {
            let table = DistrictTable::read(path)?;
            let (size, textures) = textures_of_output(&table.parts_path)?;
            let holders = table.files.into_iter().map(|f| (f, "file", None)).collect();
            return Ok(InputMap {
                kind: "snapshot",
                size,
                textures,
                holders,
            });
        }
        if path.join("regions.json").is_file() {
            let table = MemoryTable::read(path)?;
            let (size, textures) = textures_of_output(&table.district_path)?;
            let holders = table
                .mappings
                .into_iter()
                .map(|(range, address)| (range, "mapping", Some(address)))
                .collect();
            return Ok(InputMap {
                kind: "memory",
                size,
                textures,
                holders,
            });
        }
        return Err(Error::malformed(
            path,
            "is a directory without district.json or regions.json, so neither a tree snapshot nor a memory snapshot",
        ));
    }
    match crate::format::detect(path)? {
        FileKind::Raw => {
            let (size, holders) = plain_file_holders(path)?;
            Ok(plain_file_map(size, holders))
        }
        kind => {
            let (size, textures) = textures_of_output(path)?;
            Ok(InputMap {
                kind: match kind {
                    FileKind::Brick => "brick",
                    FileKind::RtsPng => "rts_png",
                    _ => "parts",
                },
                size,
                textures,
                holders: Vec::new(),
            })
        }
    }
}

/// A plain file's map: the textures `fold` would make of `size` bytes, and `holders`.
fn plain_file_map(size: u64, holders: Holders) -> InputMap {
    let planned = crate::fold::planned_parts(size, &crate::fold::FoldOptions::default());
    let mut textures = Vec::new();
    for (part, (range, brick_side, rts_side)) in planned.into_iter().enumerate() {
        for (layout, side) in [(Layout::Brick, brick_side), (Layout::Rts, rts_side)] {
            textures.push(Texture {
                file: None,
                layout,
                part,
                start: range.start,
                end: range.end,
                side,
            });
        }
    }
    InputMap {
        kind: "file",
        size,
        textures,
        holders,
    }
}

/// Named ranges of an input, each with its kind and, for a mapping, its first address.
type Holders = Vec<(NamedRange, &'static str, Option<u64>)>;

/// A plain file's size and named ranges (its ELF sections and symbols). Only an ELF file (or
/// a stream, whose size is known once read) is read whole: a 4 GiB disk image is placed from
/// its size alone.
fn plain_file_holders(path: &Path) -> Result<(u64, Holders)> {
    use std::os::unix::fs::FileExt;
    let (file, meta) = crate::source::open_input(path)?;
    if meta.is_file() && meta.len() > 0 {
        let mut magic = [0u8; 4];
        let elf = file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"\x7fELF";
        if !elf {
            return Ok((meta.len(), Vec::new()));
        }
    }
    drop(file);
    let bytes = crate::source::read_input(path)?;
    Ok((bytes.len() as u64, elf_holders(&bytes)))
}

/// The ELF sections and symbols of `bytes` (none when they are not ELF).
fn elf_holders(bytes: &[u8]) -> Holders {
    crate::diff::elf_sections(bytes)
        .into_iter()
        .map(|s| (s, "elf_section", None))
        .chain(
            elf_symbols(bytes)
                .into_iter()
                .map(|s| (s, "elf_symbol", None)),
        )
        .collect()
}

/// The defined symbols of an ELF file that have a size and bytes in the file (functions,
/// initialised data), as file ranges: each through the section that holds it. Symbols of
/// both tables, each name and place once.
fn elf_symbols(bytes: &[u8]) -> Vec<NamedRange> {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolSection};
    let Ok(file) = object::File::parse(bytes) else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter_map(|symbol| {
            if symbol.size() == 0 || !symbol.is_definition() {
                return None;
            }
            let SymbolSection::Section(index) = symbol.section() else {
                return None;
            };
            let section = file.section_by_index(index).ok()?;
            // None for sections without file bytes (.bss).
            let (file_start, file_len) = section.file_range()?;
            let inside = symbol.address().checked_sub(section.address())?;
            if inside.checked_add(symbol.size())? > file_len {
                return None;
            }
            let range = NamedRange {
                name: symbol.name().ok()?.to_string(),
                start: file_start + inside,
                end: file_start + inside + symbol.size(),
            };
            seen.insert((range.name.clone(), range.start))
                .then_some(range)
        })
        .collect()
}

/// The input size and textures of a `.brick`, a `.rts.png` or a parts index (whose parts'
/// headers are read, never their pixels).
fn textures_of_output(path: &Path) -> Result<(u64, Vec<Texture>)> {
    let one = |layout: Layout, part: usize, start: u64, file: &Path| -> Result<Texture> {
        let (size, side) = match layout {
            Layout::Brick => brick_size_and_side(file)?,
            Layout::Rts => rts_size_and_side(file)?,
        };
        Ok(Texture {
            file: Some(file.to_path_buf()),
            layout,
            part,
            start,
            end: start + size,
            side,
        })
    };
    match crate::format::detect(path)? {
        FileKind::Brick => {
            let t = one(Layout::Brick, 0, 0, path)?;
            Ok((t.end, vec![t]))
        }
        FileKind::RtsPng => {
            let t = one(Layout::Rts, 0, 0, path)?;
            Ok((t.end, vec![t]))
        }
        FileKind::PartsIndex => {
            let index = PartsIndex::read(path)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut textures = Vec::new();
            for entry in &index.parts {
                let files = [
                    (Layout::Brick, entry.brick.as_ref()),
                    (Layout::Rts, entry.rts_png.as_ref()),
                ];
                for (layout, name) in files {
                    let Some(name) = name else { continue };
                    let texture = one(layout, entry.index, entry.offset, &dir.join(name))?;
                    if texture.end - texture.start != entry.size {
                        return Err(Error::malformed(
                            path,
                            format!(
                                "part {} is {} bytes, and its {name} holds {}",
                                entry.index,
                                entry.size,
                                texture.end - texture.start
                            ),
                        ));
                    }
                    textures.push(texture);
                }
            }
            Ok((index.size, textures))
        }
        FileKind::Raw => Err(Error::malformed(
            path,
            "is not a .brick, .rts.png or parts index",
        )),
    }
}

/// A `.brick`'s source size and side, from its header alone.
fn brick_size_and_side(path: &Path) -> Result<(u64, u32)> {
    let (file, _) = crate::source::open_input(path)?;
    let mut head = Vec::with_capacity(brick::HEADER_LEN);
    file.take(brick::HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, "read", e))?;
    let header = brick::BrickHeader::parse(path, &head)?;
    if let Some(problem) = header.fatal_problems().into_iter().next() {
        return Err(Error::malformed(path, problem));
    }
    Ok((header.original_size, header.width))
}

/// A `.rts.png`'s side and its `PixelRTS` metadata (the JSON of its text chunk), read from the
/// chunks before its pixels.
pub fn rts_side_and_metadata(path: &Path) -> Result<(u32, serde_json::Value)> {
    let (file, _) = crate::source::open_input(path)?;
    let bad = |what: String| Error::malformed(path, what);
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    if info.width != info.height || !info.width.is_power_of_two() {
        return Err(bad(format!(
            "is {}x{}, not a square of a power of two",
            info.width, info.height
        )));
    }
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == rts_png::TEXT_KEY)
        .and_then(|t| t.text.strip_prefix(rts_png::TEXT_KEY))
        .ok_or_else(|| bad(format!("has no {} metadata", rts_png::TEXT_KEY)))?;
    let metadata = serde_json::from_str(text)
        .map_err(|e| bad(format!("{} metadata is not JSON: {e}", rts_png::TEXT_KEY)))?;
    Ok((info.width, metadata))
}

/// A `.rts.png`'s source size (its `PixelRTS` metadata's `data_size`) and side.
fn rts_size_and_side(path: &Path) -> Result<(u64, u32)> {
    let (side, metadata) = rts_side_and_metadata(path)?;
    let size = metadata["data_size"]
        .as_u64()
        .ok_or_else(|| Error::malformed(path, "its metadata has no data_size"))?;
    let capacity = u64::from(side).pow(2) * 4;
    if size > capacity {
        return Err(Error::malformed(
            path,
            format!("claims {size} bytes, more than its {capacity} bytes of pixels hold"),
        ));
    }
    Ok((size, side))
}
