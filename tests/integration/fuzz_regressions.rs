//! Replays every fuzz seed and every saved crash input (`fuzz/seeds/`, `fuzz/regressions/`)
//! through the fuzz targets' own checks, so a fixed crash stays fixed without the fuzzer.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 7] = [
    ("brick_reader", checks::brick_reader),
    ("rts_png_reader", checks::rts_png_reader),
    ("parts_index", checks::parts_index),
    ("task_parser", checks::task_parser),
    ("manifest_merge", checks::manifest_merge),
    ("sse_parser", checks::sse_parser),
    ("elf_analysis", checks::elf_analysis),
];

fn inputs(kind: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_saved_crash_passes_its_target_checks() {
    let (mut seeds_replayed, mut regressions_replayed) = (0, 0);
    for (target, check) in TARGETS {
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "fuzz/seeds/{target} has no seed");
        let regressions = inputs("regressions", target);
        for input in seeds.iter().chain(&regressions) {
            let bytes = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{} fails {target}", input.display());
        }
        seeds_replayed += seeds.len();
        regressions_replayed += regressions.len();
    }
    assert!(seeds_replayed >= 14, "only {seeds_replayed} seeds replayed");
    // A missing or emptied fuzz/regressions/ would otherwise pass silently, replaying nothing.
    assert!(
        regressions_replayed >= 1,
        "no saved crash input replayed: is fuzz/regressions/ missing or empty?"
    );
}

#[test]
fn absurd_inputs_are_clear_errors_not_panics_or_huge_allocations() {
    use foundry_gpu::format::{brick::Brick, rts_png::RtsPng};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A brick header claiming more payload than its texture holds.
    let mut brick = std::fs::read(root.join("fuzz/seeds/brick_reader/hello.brick")).unwrap();
    brick[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
    let width = u32::from_le_bytes(brick[8..12].try_into().unwrap());
    let height = u32::from_le_bytes(brick[12..16].try_into().unwrap());
    let e = Brick::from_bytes(Path::new("big.brick"), &brick)
        .err()
        .unwrap();
    let message = e.to_string();
    assert!(message.starts_with("big.brick: "), "{message}");
    let capacity = u64::from(width) * u64::from(height);
    assert!(
        message.contains(&format!(
            "original_size {} exceeds the texture's capacity of {capacity} bytes",
            u64::MAX
        )),
        "{message}"
    );

    // A 32768x32768 PixelRTS image in a few hundred bytes: a decompression bomb, refused
    // before its 4 GiB texture is allocated.
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, 32768, 32768);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .add_text_chunk(
                "PixelRTS".into(),
                "PixelRTS{\"grid_size\": 32768, \"data_size\": 4}".into(),
            )
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_chunk(
                png::chunk::IDAT,
                &[0x78, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
            )
            .unwrap();
    }
    let e = RtsPng::from_bytes(Path::new("bomb.rts.png"), &png)
        .err()
        .unwrap();
    assert!(e.to_string().contains("cannot be stored in"), "{e}");

    // A placement file giving a root a square of 2^198 tiles.
    let placement = r#"{"roots": {"r": {"origin": [0, 0], "order": 99, "tiles": {}}}}"#;
    let e = foundry_gpu::map::merge_manifest(
        (Path::new("manifest.json"), None),
        (Path::new("placement.json"), Some(placement)),
        &[],
        0.0,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("order 99"), "{e}");
}
