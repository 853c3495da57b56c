//! ELF hardening as checksec reports it (RELRO, canary, NX, PIE, RPATH/RUNPATH, FORTIFY,
//! stripped), plus W+X segments and the libraries and symbols a binary imports.

use object::elf;
use object::read::elf::{Dyn, ElfFile, FileHeader, ProgramHeader};
use object::{Object, ObjectKind};
use serde::Serialize;

/// What checksec would print, and a little more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hardening {
    /// `full` (GNU_RELRO + BIND_NOW), `partial` (GNU_RELRO), `none`.
    pub relro: &'static str,
    /// Imports `__stack_chk_fail`.
    pub stack_canary: bool,
    /// GNU_STACK is not executable.
    pub nx: bool,
    /// `pie`, `dso` (shared object), `no` (fixed address), `rel` (relocatable).
    pub pie: &'static str,
    pub rpath: Option<String>,
    pub runpath: Option<String>,
    /// Imports `*_chk` functions (FORTIFY_SOURCE).
    pub fortify: bool,
    pub fortified_functions: Vec<String>,
    /// No `.symtab`.
    pub stripped: bool,
    /// LOAD segments both writable and executable (their indices).
    pub wx_segments: Vec<usize>,
    /// DT_NEEDED.
    pub libraries: Vec<String>,
    pub imported_symbols: usize,
    /// The first imported symbols, sorted.
    pub imported_sample: Vec<String>,
}

impl Hardening {
    /// The checksec-style line reports and prompts show: RELRO, canary, NX, PIE, FORTIFY, stripped.
    pub fn summary(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        format!(
            "RELRO {}, stack canary {}, NX {}, PIE {}, FORTIFY {}, stripped {}",
            self.relro,
            yes_no(self.stack_canary),
            yes_no(self.nx),
            self.pie,
            yes_no(self.fortify),
            yes_no(self.stripped)
        )
    }
}

fn inspect<Elf: FileHeader<Endian = object::Endianness>>(file: &ElfFile<Elf>) -> Hardening {
    let endian = file.endian();
    let data = file.data();
    let headers = file.elf_program_headers();
    let has = |t: elf::ProgramType| headers.iter().any(|ph| ph.p_type(endian) == t);
    let mut wx_segments = Vec::new();
    let mut nx = true;
    for (i, ph) in headers.iter().enumerate() {
        let flags = ph.p_flags(endian);
        if ph.p_type(endian) == elf::PT_LOAD
            && flags.0 & elf::PF_W.0 != 0
            && flags.0 & elf::PF_X.0 != 0
        {
            wx_segments.push(i);
        }
        if ph.p_type(endian) == elf::PT_GNU_STACK && flags.0 & elf::PF_X.0 != 0 {
            nx = false;
        }
    }
    let mut bind_now = false;
    let mut pie_flag = false;
    let (mut rpath, mut runpath, mut libraries) = (None, None, Vec::new());
    let sections = file.elf_section_table();
    if let Ok(Some((entries, link))) = sections.dynamic(endian, data) {
        let strings = sections.strings(endian, data, link).ok();
        let text = |value: u64| {
            strings
                .as_ref()
                .and_then(|s| s.get(value as u32).ok())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        for d in entries {
            let tag = d.d_tag(endian);
            let value: u64 = d.d_val(endian).into();
            if tag == elf::DT_BIND_NOW {
                bind_now = true;
            } else if tag == elf::DT_FLAGS {
                bind_now |= value & elf::DF_BIND_NOW.0 != 0;
            } else if tag == elf::DT_FLAGS_1 {
                bind_now |= value & elf::DF_1_NOW.0 != 0;
                pie_flag |= value & elf::DF_1_PIE.0 != 0;
            } else if tag == elf::DT_RPATH {
                rpath = text(value);
            } else if tag == elf::DT_RUNPATH {
                runpath = text(value);
            } else if tag == elf::DT_NEEDED {
                libraries.extend(text(value));
            }
        }
    }
    let relro = match (has(elf::PT_GNU_RELRO), bind_now) {
        (true, true) => "full",
        (true, false) => "partial",
        _ => "none",
    };
    let pie = match file.kind() {
        ObjectKind::Relocatable => "rel",
        ObjectKind::Executable => "no",
        ObjectKind::Dynamic if pie_flag || has(elf::PT_INTERP) => "pie",
        _ => "dso",
    };
    let mut imports: Vec<String> = file
        .imports()
        .map(|it| {
            it.filter_map(|i| i.ok())
                .filter_map(|i| {
                    i.name()
                        .name()
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    if imports.is_empty() {
        // Relocatable objects import through undefined symbols instead.
        use object::ObjectSymbol;
        imports = file
            .symbols()
            .filter(|s| s.is_undefined() && !s.name().unwrap_or("").is_empty())
            .map(|s| s.name().unwrap_or("").to_string())
            .collect();
    }
    imports.sort();
    imports.dedup();
    let fortified: Vec<String> = imports
        .iter()
        .filter(|n| n.starts_with("__") && n.ends_with("_chk") && *n != "__stack_chk_fail")
        .cloned()
        .collect();
    Hardening {
        relro,
        stack_canary: imports.iter().any(|n| n == "__stack_chk_fail"),
        nx,
        pie,
        rpath,
        runpath,
        fortify: !fortified.is_empty(),
        fortified_functions: fortified,
        stripped: file.section_by_name(".symtab").is_none(),
        wx_segments,
        libraries,
        imported_symbols: imports.len(),
        imported_sample: imports.into_iter().take(20).collect(),
    }
}

/// Hardening of an ELF file, or `None` when `data` is not an ELF `object` can read.
pub fn hardening(data: &[u8]) -> Option<Hardening> {
    match object::FileKind::parse(data).ok()? {
        object::FileKind::Elf32 => object::read::elf::ElfFile32::<object::Endianness>::parse(data)
            .ok()
            .map(|f| inspect(&f)),
        object::FileKind::Elf64 => object::read::elf::ElfFile64::<object::Endianness>::parse(data)
            .ok()
            .map(|f| inspect(&f)),
        _ => None,
    }
}
