//! `locate`: every byte it places is at that pixel (and channel) of the textures `fold` wrote,
//! a pixel gives back the bytes it holds, and the holder named (ELF section, snapshot file) is
//! the one that holds the byte.

use crate::harness::{foundry, foundry_json, s, sample_bytes};
use foundry_gpu::format::brick::Brick;
use foundry_gpu::format::rts_png::RtsPng;
use foundry_gpu::kernels::Layout;
use foundry_gpu::locate::{locate, LocateReport, Query};
use std::path::Path;

/// The byte at `(x, y)`, `channel` of a texture of `side` pixels.
fn texel_byte(texture: &[u32], side: u32, x: u32, y: u32, channel: u8) -> u8 {
    (texture[(y * side + x) as usize] >> (8 * channel)) as u8
}

/// Checks that each placement of `report` holds `byte` in the texture file it names.
fn assert_placed(report: &LocateReport, byte: u8, bricks: &[&Path], images: &[&Path]) {
    for p in &report.placements {
        let t = &p.texture;
        let file = t.file.as_ref().expect("an output file");
        let held = match t.layout {
            Layout::Brick => {
                assert!(bricks.contains(&file.as_path()), "{file:?}");
                let b = Brick::read(file).unwrap();
                assert_eq!(b.header.width, t.side);
                texel_byte(&b.texture, t.side, p.x, p.y, p.channel)
            }
            Layout::Rts => {
                assert!(images.contains(&file.as_path()), "{file:?}");
                let r = RtsPng::read(file).unwrap();
                assert_eq!(r.side, t.side);
                texel_byte(&r.texture, t.side, p.x, p.y, p.channel)
            }
        };
        assert_eq!(held, byte, "offset {} in {file:?}", report.start);
    }
}

#[test]
fn each_byte_is_at_the_pixel_locate_names_and_each_pixel_gives_its_bytes_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.bin");
    let data = sample_bytes(100_000, 3);
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    foundry_json(&["fold", s(&input), "-o", s(&out), "--backend", "cpu"]);
    let (brick, image) = (out.join("x.bin.brick"), out.join("x.bin.rts.png"));
    for offset in [0u64, 1, 2, 3, 4, 4095, 50_001, 77_777, 99_999] {
        let from_input = locate(&input, Query::Offset(offset)).unwrap();
        assert_eq!(from_input.placements.len(), 2, "a .brick and a .rts.png");
        let mut from_outputs = locate(&brick, Query::Offset(offset)).unwrap().placements;
        from_outputs.extend(locate(&image, Query::Offset(offset)).unwrap().placements);
        let report = LocateReport {
            placements: from_outputs,
            ..from_input.clone()
        };
        assert_placed(&report, data[offset as usize], &[&brick], &[&image]);
        // The input, not folded yet, is placed as the fold placed it.
        for (planned, written) in from_input.placements.iter().zip(&report.placements) {
            assert_eq!(
                (planned.x, planned.y, planned.channel, planned.texture.side),
                (written.x, written.y, written.channel, written.texture.side)
            );
        }
        // And each of those pixels gives back the bytes it holds, this one among them.
        for p in &report.placements {
            let back = locate(
                p.texture.file.as_ref().unwrap(),
                Query::Pixel {
                    x: p.x,
                    y: p.y,
                    layout: None,
                    part: 0,
                },
            )
            .unwrap();
            let bpp = p.texture.layout.bytes_per_pixel() as u64;
            assert_eq!(back.start, offset - offset % bpp);
            assert_eq!(back.end, (back.start + bpp).min(100_000));
        }
    }
    // The curve's last pixel is past the input's end: padding, no bytes.
    let (x, y) = foundry_gpu::curve::d2xy(9, 512 * 512 - 1);
    let padding = locate(
        &brick,
        Query::Pixel {
            x,
            y,
            layout: None,
            part: 0,
        },
    )
    .unwrap();
    assert_eq!(padding.start, padding.end, "{padding:?}");
    // Mistakes are named.
    let o = foundry(&["locate", s(&input), "--offset", "100000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("past the end"));
    let o = foundry(&["locate", s(&brick), "--pixel", "512,0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the 512x512"));
    let o = foundry(&["locate", s(&brick), "--pixel", "5"]);
    assert_eq!(o.status.code(), Some(2));
    // Hex offsets, and the JSON the command prints.
    let json = foundry_json(&["locate", s(&image), "--offset", "0x1F"]);
    assert_eq!(json["start"], 31);
    assert_eq!(json["placements"][0]["channel"], 3);
    assert_eq!(json["placements"][0]["layout"], "rts_png");
}

#[test]
fn an_input_in_parts_is_located_in_the_part_that_holds_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.img");
    let data = sample_bytes(200_000, 4);
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    foundry_json(&[
        "fold",
        s(&input),
        "-o",
        s(&out),
        "--max-side",
        "128",
        "--backend",
        "cpu",
    ]);
    let offset = 150_000u64;
    let report = locate(&out.join("big.img.parts.json"), Query::Offset(offset)).unwrap();
    assert_eq!(report.kind, "parts");
    assert_eq!(report.size, 200_000);
    assert_eq!(report.placements.len(), 2);
    assert!(report.placements.iter().all(|p| p.texture.part == 9));
    let (brick, image) = (
        out.join("big.img.009.brick"),
        out.join("big.img.009.rts.png"),
    );
    assert_placed(&report, data[offset as usize], &[&brick], &[&image]);
    // A pixel of part 12 (the last, 3,392 bytes) holds its part's bytes.
    let p = locate(
        &out.join("big.img.parts.json"),
        Query::Pixel {
            x: 1,
            y: 0,
            layout: Some(Layout::Rts),
            part: 12,
        },
    )
    .unwrap();
    assert_eq!(p.placements[0].texture.part, 12);
    assert!(p.start >= 12 * 16_384 && p.end <= 200_000, "{p:?}");
}

#[test]
fn an_elf_byte_is_named_by_its_section_and_a_snapshot_byte_by_its_file() {
    use object::{Object, ObjectSection};
    let elf = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf");
    let bytes = std::fs::read(&elf).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let text = file.section_by_name(".text").unwrap();
    let (start, len) = text.file_range().unwrap();
    let report = locate(&elf, Query::Offset(start + len / 2)).unwrap();
    let section = report
        .holders
        .iter()
        .find(|h| h.kind == "elf_section")
        .unwrap();
    assert_eq!(section.name, ".text");
    assert_eq!((section.start, section.end), (start, start + len));
    assert_eq!(section.offset_inside, len / 2);
    // The whole section, as squares: on the .brick (a byte a pixel) they cover exactly its
    // bytes, each pixel once, and every one of those pixels holds a byte of it.
    let region = locate(&elf, Query::Region(".text".into())).unwrap();
    assert_eq!((region.start, region.end), (start, start + len));
    let brick = region
        .placements
        .iter()
        .find(|p| p.texture.layout == Layout::Brick)
        .unwrap();
    let side = brick.texture.side;
    let mut covered = std::collections::HashSet::new();
    for &[x0, y0, w, h] in &brick.squares {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let d = foundry_gpu::curve::xy2d(side.trailing_zeros(), x, y);
                assert!(
                    (start..start + len).contains(&d),
                    "pixel {x},{y} holds byte {d}"
                );
                assert!(covered.insert(d), "pixel {x},{y} twice");
            }
        }
    }
    assert_eq!(covered.len() as u64, len);
    assert!(
        brick.squares.len() < 64,
        "a handful of squares: {}",
        brick.squares.len()
    );
    let o = foundry(&["locate", s(&elf), "--region", ".nonesuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no section, symbol, file or mapping"));
    // A symbol: `main`'s bytes, through the section that holds it; a byte inside it names
    // both, the section first.
    use object::ObjectSymbol;
    let main = file.symbols().find(|s| s.name() == Ok("main")).unwrap();
    let at = start + (main.address() - text.address());
    let region = locate(&elf, Query::Region("main".into())).unwrap();
    assert_eq!((region.start, region.end), (at, at + main.size()));
    let inside = locate(&elf, Query::Offset(at + 5)).unwrap();
    let names: Vec<(&str, &str)> = inside
        .holders
        .iter()
        .map(|h| (h.kind, h.name.as_str()))
        .collect();
    assert_eq!(names, [("elf_section", ".text"), ("elf_symbol", "main")]);

    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "first file\n".repeat(300)).unwrap();
    let b_bytes = sample_bytes(20_000, 9);
    std::fs::write(tree.join("sub/b.bin"), &b_bytes).unwrap();
    let snap = dir.path().join("snap");
    foundry_json(&["snapshot", s(&tree), "-o", s(&snap), "--backend", "cpu"]);
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("district.json")).unwrap())
            .unwrap();
    let entry = table["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("sub/b.bin"))
        .unwrap();
    let at = entry["offset"].as_u64().unwrap() + 1234;
    let report = locate(&snap, Query::Offset(at)).unwrap();
    assert_eq!(report.kind, "snapshot");
    let holder = &report.holders[0];
    assert_eq!(holder.kind, "file");
    assert!(holder.name.ends_with("sub/b.bin"), "{holder:?}");
    assert_eq!(holder.offset_inside, 1234);
    // The district's textures hold that file's byte at the pixel named.
    let files: Vec<std::path::PathBuf> = report
        .placements
        .iter()
        .map(|p| p.texture.file.clone().unwrap())
        .collect();
    let (bricks, images): (Vec<&Path>, Vec<&Path>) = files
        .iter()
        .map(|f| f.as_path())
        .partition(|f| f.to_string_lossy().ends_with(".brick"));
    assert!(!report.placements.is_empty());
    assert_placed(&report, b_bytes[1234], &bricks, &images);
    // A file by the end of its path: its bytes in the district.
    let whole = locate(&snap, Query::Region("b.bin".into())).unwrap();
    assert_eq!(whole.start, entry["offset"].as_u64().unwrap());
    assert_eq!(whole.end - whole.start, 20_000);
    assert!(whole.placements.iter().all(|p| !p.squares.is_empty()));
    // The command's own words.
    let o = foundry(&["locate", s(&snap), "--offset", &at.to_string()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("sub/b.bin") && text.contains("1234 bytes in"),
        "{text}"
    );
}
