//! ELF awareness (through the `object` crate): the section map with each section's pixel
//! rectangles, section bytes for per-section bricks, and `.modinfo` of kernel modules.

use crate::curve::range_squares;
use object::{Object, ObjectKind, ObjectSection, SectionFlags};
use serde::Serialize;
use std::collections::BTreeMap;

/// Where a byte range lands in one texture: which part and which squares.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PixelRegion {
    /// Part index (0 when the input fits one texture).
    pub part: usize,
    /// `[x, y, width, height]` squares in that part's texture.
    pub rects: Vec<[u32; 4]>,
}

/// How a byte stream is laid out: part size and each part's texture order.
#[derive(Clone, Debug)]
pub struct TextureLayout {
    pub part_size: u64,
    pub part_orders: Vec<u32>,
    pub bytes_per_pixel: u64,
}

impl TextureLayout {
    /// The regions that bytes `start..end` of the stream cover, part by part.
    pub fn regions(&self, start: u64, end: u64) -> Vec<PixelRegion> {
        let mut regions = Vec::new();
        let mut at = start;
        while at < end {
            let part = (at / self.part_size) as usize;
            let Some(&order) = self.part_orders.get(part) else {
                break;
            };
            let part_start = part as u64 * self.part_size;
            let part_end = (part_start + self.part_size).min(end);
            let bpp = self.bytes_per_pixel;
            let first = (at - part_start) / bpp;
            let last = (part_end - part_start).div_ceil(bpp);
            regions.push(PixelRegion {
                part,
                rects: range_squares(order, first, last),
            });
            at = part_end;
        }
        regions
    }
}

/// One section of the file.
#[derive(Clone, Debug, Serialize)]
pub struct ElfSection {
    pub name: String,
    /// `object`'s classification: Text, Data, ReadOnlyData, UninitializedData, Debug, ...
    pub kind: String,
    /// `sh_flags` as letters: W write, A alloc, X exec, M merge, S strings, T TLS, G group.
    pub flags: String,
    /// File offset; 0 with `size` 0 for sections that occupy no file bytes (`.bss`).
    pub offset: u64,
    pub size: u64,
    /// Squares the section covers in the `.brick` texture(s).
    pub brick_regions: Vec<PixelRegion>,
    /// Squares the section covers in the `.rts.png` texture(s).
    pub rts_regions: Vec<PixelRegion>,
}

/// A kernel module's `.modinfo`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModInfo {
    pub name: Option<String>,
    pub license: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub author: Vec<String>,
    pub depends: Vec<String>,
    pub vermagic: Option<String>,
    pub srcversion: Option<String>,
    pub parameters: Vec<ModParam>,
    /// Every other key (alias, firmware, intree, retpoline, ...), in order.
    pub other: BTreeMap<String, Vec<String>>,
}

/// One `parm=`/`parmtype=` pair of a module.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModParam {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub description: Option<String>,
}

/// What the ELF headers say.
#[derive(Clone, Debug, Serialize)]
pub struct ElfInfo {
    /// `ELF32` or `ELF64`.
    pub class: &'static str,
    pub endian: &'static str,
    /// executable, shared object, relocatable, core, unknown.
    pub kind: &'static str,
    pub machine: String,
    pub entry: u64,
    /// No `.symtab`.
    pub stripped: bool,
    pub sections: Vec<ElfSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modinfo: Option<ModInfo>,
}

/// The outcome of looking at a file as ELF.
pub enum ElfParse {
    /// No ELF magic.
    NotElf,
    Parsed(Box<ElfInfo>),
    /// ELF magic, but the headers do not parse: folded as plain bytes.
    Corrupt(String),
}

fn flag_letters(flags: SectionFlags) -> String {
    let SectionFlags::Elf { sh_flags, .. } = flags else {
        return String::new();
    };
    use object::elf::{
        SHF_ALLOC, SHF_EXECINSTR, SHF_GROUP, SHF_MERGE, SHF_STRINGS, SHF_TLS, SHF_WRITE,
    };
    [
        (SHF_WRITE, 'W'),
        (SHF_ALLOC, 'A'),
        (SHF_EXECINSTR, 'X'),
        (SHF_MERGE, 'M'),
        (SHF_STRINGS, 'S'),
        (SHF_TLS, 'T'),
        (SHF_GROUP, 'G'),
    ]
    .iter()
    .filter(|(bit, _)| sh_flags.0 & bit.0 != 0)
    .map(|(_, c)| *c)
    .collect()
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Executable => "executable",
        ObjectKind::Dynamic => "shared object",
        ObjectKind::Relocatable => "relocatable",
        ObjectKind::Core => "core",
        _ => "unknown",
    }
}

/// Parses `data` as ELF; section regions are given for the brick and rts layouts.
pub fn parse_elf(data: &[u8], brick: &TextureLayout, rts: &TextureLayout) -> ElfParse {
    if !crate::analysis::is_elf(data) {
        return ElfParse::NotElf;
    }
    let file = match object::File::parse(data) {
        Ok(f) if f.format() == object::BinaryFormat::Elf => f,
        Ok(_) => return ElfParse::Corrupt("not an ELF file after all".into()),
        Err(e) => return ElfParse::Corrupt(e.to_string()),
    };
    let mut sections = Vec::new();
    for section in file.sections() {
        let name = match section.name() {
            Ok(n) => n.to_string(),
            Err(_) => format!("#{}", section.index().0),
        };
        if name.is_empty() && section.size() == 0 {
            continue; // the null section
        }
        let (offset, size) = section.file_range().unwrap_or((0, 0));
        let end = offset.saturating_add(size).min(data.len() as u64);
        let offset = offset.min(end);
        sections.push(ElfSection {
            name,
            kind: format!("{:?}", section.kind()),
            flags: flag_letters(section.flags()),
            offset,
            size: end - offset,
            brick_regions: brick.regions(offset, end),
            rts_regions: rts.regions(offset, end),
        });
    }
    let modinfo = file
        .section_by_name(".modinfo")
        .and_then(|s| s.data().ok())
        .map(parse_modinfo);
    ElfParse::Parsed(Box::new(ElfInfo {
        class: if file.is_64() { "ELF64" } else { "ELF32" },
        endian: if file.is_little_endian() {
            "little"
        } else {
            "big"
        },
        kind: kind_name(file.kind()),
        machine: format!("{:?}", file.architecture()),
        entry: file.entry(),
        stripped: file.section_by_name(".symtab").is_none(),
        sections,
        modinfo,
    }))
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(bytes: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    let mut params: BTreeMap<String, ModParam> = BTreeMap::new();
    for entry in bytes.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let text = String::from_utf8_lossy(entry);
        let Some((key, value)) = text.split_once('=') else {
            continue;
        };
        let value = value.to_string();
        match key {
            "name" => info.name = Some(value),
            "license" => info.license = Some(value),
            "version" => info.version = Some(value),
            "description" => info.description = Some(value),
            "author" => info.author.push(value),
            "vermagic" => info.vermagic = Some(value),
            "srcversion" => info.srcversion = Some(value),
            "depends" => {
                info.depends = value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(String::from)
                    .collect()
            }
            "parm" | "parmtype" => {
                let (param, detail) = value.split_once(':').unwrap_or((value.as_str(), ""));
                let entry = params.entry(param.to_string()).or_insert_with(|| ModParam {
                    name: param.to_string(),
                    ..Default::default()
                });
                if key == "parm" {
                    entry.description = Some(detail.to_string());
                } else {
                    entry.kind = Some(detail.to_string());
                }
            }
            other => info.other.entry(other.to_string()).or_default().push(value),
        }
    }
    info.parameters = params.into_values().collect();
    info
}

/// A section name made safe for a file name: `.text` -> `text`, `.rela.dyn` -> `rela.dyn`.
pub fn section_file_stem(name: &str) -> String {
    let trimmed = name.trim_start_matches('.');
    let cleaned: String = trimmed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "section".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_fields_and_parameters() {
        let raw = b"license=GPL\0name=demo\0depends=a,b\0parm=debug:Enable debug\0parmtype=debug:int\0alias=pci:v1\0vermagic=6.1.0 SMP\0";
        let m = parse_modinfo(raw);
        assert_eq!(m.license.as_deref(), Some("GPL"));
        assert_eq!(m.depends, ["a", "b"]);
        assert_eq!(m.parameters.len(), 1);
        assert_eq!(m.parameters[0].kind.as_deref(), Some("int"));
        assert_eq!(m.parameters[0].description.as_deref(), Some("Enable debug"));
        assert_eq!(m.other["alias"], ["pci:v1"]);
        assert_eq!(m.vermagic.as_deref(), Some("6.1.0 SMP"));
    }

    #[test]
    fn regions_split_across_parts() {
        let layout = TextureLayout {
            part_size: 16,
            part_orders: vec![2, 2, 1],
            bytes_per_pixel: 1,
        };
        let regions = layout.regions(10, 36);
        assert_eq!(
            regions.iter().map(|r| r.part).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let cells: u32 = regions
            .iter()
            .flat_map(|r| &r.rects)
            .map(|r| r[2] * r[3])
            .sum();
        assert_eq!(cells, 26);
    }

    #[test]
    fn section_names_become_file_stems() {
        assert_eq!(section_file_stem(".text"), "text");
        assert_eq!(section_file_stem(".rela.dyn"), "rela.dyn");
        assert_eq!(section_file_stem("../x"), "_x");
        assert_eq!(section_file_stem("."), "section");
    }
}
