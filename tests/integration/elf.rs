//! ELF inputs: section maps with exact pixel regions, per-section bricks, overlay previews,
//! stripped / relocatable / 32-bit / big-endian / corrupt files, and kernel-module `.modinfo`.

use crate::harness::{gcc, twin_legs};
use foundry_gpu::curve::xy2d;
use foundry_gpu::fold::{self, FoldOptions, OutputTarget, SectionChoice};
use foundry_gpu::format::brick::{flags, Brick};
use foundry_gpu::progress::Silent;
use foundry_gpu::source::elf::ElfInfo;
use foundry_gpu::Backend;
use std::path::{Path, PathBuf};
use std::process::Command;

const BLOB_SIZE: u64 = 12345;

/// A program with a section of known size and content: byte i of `.foundry_blob` is i % 251.
const PROGRAM: &str = r#"
#include <stdio.h>
#define N 12345
struct blob { unsigned char b[N]; };
#define R(i) ((i) % 251)
__attribute__((section(".foundry_blob"), used)) static const struct blob blob = {{
#include "blob.inc"
}};
int main(void) { printf("%d\n", blob.b[7]); return 0; }
"#;

fn build_program(dir: &Path) -> PathBuf {
    let values: Vec<String> = (0..BLOB_SIZE).map(|i| (i % 251).to_string()).collect();
    std::fs::write(dir.join("blob.inc"), values.join(",")).unwrap();
    gcc(dir, PROGRAM, "prog", &["-O1", "-I", dir.to_str().unwrap()])
}

fn fold_dir(input: &Path, out: &Path, sections: SectionChoice) -> fold::FoldReport {
    let opts = FoldOptions {
        sections,
        preview_side: 256,
        ..Default::default()
    };
    fold::fold_file(
        &Backend::Cpu,
        input,
        &OutputTarget::Directory(out.into()),
        &opts,
        &Silent,
    )
    .unwrap()
}

fn section<'a>(e: &'a ElfInfo, name: &str) -> &'a foundry_gpu::source::elf::ElfSection {
    e.sections
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn section_map_places_a_known_section_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prog = build_program(dir.path());
    let out = dir.path().join("out");
    let report = fold_dir(
        &prog,
        &out,
        SectionChoice::Named(vec![".foundry_blob".into()]),
    );
    let e = report.elf.as_ref().expect("an ELF");
    assert_eq!(
        (e.class, e.endian, e.kind),
        ("ELF64", "little", "shared object")
    );
    assert!(!e.stripped);
    assert!(report.flags.contains(&"IS_EXECUTABLE"));
    let blob = section(e, ".foundry_blob");
    assert_eq!(blob.size, BLOB_SIZE);
    let data = std::fs::read(&prog).unwrap();
    let bytes = &data[blob.offset as usize..(blob.offset + blob.size) as usize];
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b as usize == i % 251),
        "offset points at the blob"
    );

    // Every pixel of the section's rectangles holds exactly the section's bytes, once.
    let brick = Brick::read(&out.join("prog.brick")).unwrap();
    assert!(brick.header.flags & flags::HAS_METADATA != 0);
    let side = brick.header.width;
    let mut cells: Vec<u64> = Vec::new();
    for region in &blob.brick_regions {
        assert_eq!(region.part, 0);
        for [x, y, w, h] in &region.rects {
            for yy in *y..y + h {
                for xx in *x..x + w {
                    cells.push(xy2d(brick.header.hilbert_order, xx, yy));
                    let pixel = brick.texture[(yy * side + xx) as usize];
                    let d = xy2d(brick.header.hilbert_order, xx, yy);
                    assert_eq!(pixel as u8, data[d as usize]);
                }
            }
        }
    }
    cells.sort_unstable();
    assert_eq!(
        cells,
        (blob.offset..blob.offset + blob.size).collect::<Vec<_>>()
    );

    // The per-section brick holds the section and nothing else.
    let section_brick = out.join("prog.foundry_blob.brick");
    let decoded = fold::decode(&Backend::Cpu, &section_brick).unwrap();
    assert_eq!(decoded.bytes, bytes);
    // A misspelled section is refused before any work, naming the sections there are.
    let refused = dir.path().join("refused");
    let err = fold::fold_file(
        &Backend::Cpu,
        &prog,
        &OutputTarget::Directory(refused.clone()),
        &FoldOptions {
            sections: SectionChoice::Named(vec![".foundry_blob".into(), ".nope".into()]),
            ..Default::default()
        },
        &Silent,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(err.is_input_error(), "{message}");
    assert!(message.contains("no section .nope"), "{message}");
    assert!(
        message.contains(".foundry_blob, ") || message.contains(", .foundry_blob"),
        "{message}"
    );
    assert!(message.contains(".text"), "{message}");
    assert!(!refused.exists(), "nothing is written for a refused fold");
    // The map is in the brick sidecar and the PixelRTS offsets table.
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("prog.brick.meta.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["version"], "1");
    assert!(sidecar["elf"]["sections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == ".foundry_blob"));
    let rts = foundry_gpu::format::rts_png::RtsPng::read(&out.join("prog.rts.png")).unwrap();
    assert_eq!(rts.metadata["offsets"][".foundry_blob"]["size"], BLOB_SIZE);
    assert_eq!(rts.metadata["elf"]["machine"], "X86_64");
    assert!(
        fold::info(&Backend::Cpu, &out.join("prog.brick"))
            .unwrap()
            .valid
    );
    // The overlay preview exists, with a legend strip below the square.
    let png = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out.join("prog.sections.png")).unwrap(),
    ));
    let info = png.read_info().unwrap().info().clone();
    assert_eq!(info.width, 256);
    assert!(info.height > 256);
    // It is the byte-class preview with outlines drawn on: most pixels agree.
    let pixels = |name: &str| {
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(out.join(name)).unwrap(),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        buf[..256 * 256 * 4].to_vec()
    };
    let (plain, outlined) = (pixels("prog.preview.png"), pixels("prog.sections.png"));
    let differing = plain
        .chunks(4)
        .zip(outlined.chunks(4))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing > 0 && differing < 256 * 256 / 2,
        "{differing} pixels differ"
    );
}

#[test]
fn all_sections_get_bricks_and_stripped_relocatable_files_fold() {
    let dir = tempfile::tempdir().unwrap();
    let prog = build_program(dir.path());
    let stripped = dir.path().join("prog-stripped");
    std::fs::copy(&prog, &stripped).unwrap();
    assert!(Command::new("strip")
        .arg(&stripped)
        .status()
        .unwrap()
        .success());
    let report = fold_dir(&stripped, &dir.path().join("s"), SectionChoice::All);
    let e = report.elf.unwrap();
    assert!(e.stripped);
    let with_bytes = e.sections.iter().filter(|s| s.size > 0).count();
    let bricks = report
        .outputs
        .iter()
        .filter(|o| o.kind == "section_brick")
        .count();
    assert_eq!(bricks, with_bytes);
    assert!(dir.path().join("s/prog-stripped.text.brick").exists());

    let object = gcc(
        dir.path(),
        "int answer(void) { return 42; }\n",
        "obj.o",
        &["-c"],
    );
    let report = fold_dir(&object, &dir.path().join("o"), SectionChoice::None);
    assert_eq!(report.elf.unwrap().kind, "relocatable");
}

/// Writes a relocatable object for another architecture with the `object` crate.
fn foreign_object(path: &Path, arch: object::Architecture, endian: object::Endianness) {
    use object::write::Object;
    let mut obj = Object::new(object::BinaryFormat::Elf, arch, endian);
    let text = obj.section_id(object::write::StandardSection::Text);
    obj.append_section_data(text, &[0x60, 0x00, 0x00, 0x00, 0x4e, 0x80, 0x00, 0x20], 4);
    let data = obj.add_section(Vec::new(), b".foundry".to_vec(), object::SectionKind::Data);
    obj.append_section_data(data, &[7u8; 300], 1);
    std::fs::write(path, obj.write().unwrap()).unwrap();
}

#[test]
fn thirty_two_bit_and_big_endian_objects() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "i386.o",
            object::Architecture::I386,
            object::Endianness::Little,
            "ELF32",
            "little",
        ),
        (
            "ppc.o",
            object::Architecture::PowerPc,
            object::Endianness::Big,
            "ELF32",
            "big",
        ),
        (
            "ppc64.o",
            object::Architecture::PowerPc64,
            object::Endianness::Big,
            "ELF64",
            "big",
        ),
    ];
    for (name, arch, endian, class, endian_name) in cases {
        let path = dir.path().join(name);
        foreign_object(&path, arch, endian);
        let report = fold_dir(
            &path,
            &dir.path().join(name.replace('.', "_")),
            SectionChoice::All,
        );
        let e = report.elf.unwrap_or_else(|| panic!("{name} parses"));
        assert_eq!(
            (e.class, e.endian, e.kind),
            (class, endian_name, "relocatable"),
            "{name}"
        );
        assert_eq!(section(&e, ".foundry").size, 300);
    }
}

#[test]
fn corrupt_elf_folds_as_plain_bytes_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let prog = build_program(dir.path());
    let mut data = std::fs::read(&prog).unwrap();
    // Point the section header table far past the end of the file.
    data[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    let corrupt = dir.path().join("corrupt");
    std::fs::write(&corrupt, &data).unwrap();
    let report = fold_dir(&corrupt, &dir.path().join("c"), SectionChoice::All);
    assert!(report.elf.is_none());
    assert!(
        report.notes.iter().any(|n| n.contains("does not parse")),
        "{:?}",
        report.notes
    );
    assert!(!report.flags.contains(&"IS_EXECUTABLE"));
    let back = fold::decode(&Backend::Cpu, &dir.path().join("c/corrupt.brick")).unwrap();
    assert_eq!(back.bytes, data);
    for truncated in [4usize, 20, 63] {
        let path = dir.path().join(format!("short{truncated}"));
        std::fs::write(&path, &data[..truncated]).unwrap();
        let report = fold_dir(
            &path,
            &dir.path().join(format!("t{truncated}")),
            SectionChoice::All,
        );
        assert!(report.elf.is_none());
    }
}

fn kernel_module_modinfo_is_read_into_the_metadata_on(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let source = r#"
__attribute__((section(".modinfo"), used, aligned(1))) static const char modinfo[] =
    "license=GPL\0" "author=Foundry Tests\0" "description=test module\0" "version=1.2.3\0"
    "depends=libcrc32c,nf_conntrack\0" "vermagic=6.1.0-13-amd64 SMP preempt mod_unload modversions \0"
    "parm=debug:Enable debug output (int)\0" "parmtype=debug:int\0" "name=foundry_test\0";
int init_module(void) { return 0; }
void cleanup_module(void) {}
"#;
    let ko = gcc(dir.path(), source, "foundry_test.ko", &["-c", "-O2"]);
    let out = dir.path().join(format!("out-{}", backend.label()));
    let report = fold::fold_file(
        backend,
        &ko,
        &OutputTarget::Directory(out.clone()),
        &FoldOptions::default(),
        &Silent,
    )
    .unwrap();
    let e = report.elf.unwrap();
    assert_eq!(e.kind, "relocatable");
    let m = e.modinfo.expect("modinfo");
    assert_eq!(m.name.as_deref(), Some("foundry_test"));
    assert_eq!(m.license.as_deref(), Some("GPL"));
    assert_eq!(m.version.as_deref(), Some("1.2.3"));
    assert_eq!(m.depends, ["libcrc32c", "nf_conntrack"]);
    assert!(m.vermagic.unwrap().starts_with("6.1.0-13-amd64"));
    assert_eq!(m.parameters[0].name, "debug");
    assert_eq!(m.parameters[0].kind.as_deref(), Some("int"));
    let rts =
        foundry_gpu::format::rts_png::RtsPng::read(&out.join("foundry_test.ko.rts.png")).unwrap();
    assert_eq!(rts.metadata["elf"]["modinfo"]["license"], "GPL");
    assert!(rts.text.is_ascii());
}

twin_legs!(kernel_module_modinfo_is_read_into_the_metadata_on: kernel_module_modinfo_is_read_into_the_metadata, kernel_module_modinfo_is_read_into_the_metadata_gpu);
