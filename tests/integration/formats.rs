//! Formats against the contract: golden files, an independent reader, parts, growth,
//! sidecars, previews that summarise instead of sampling, and atomic outputs.

use crate::harness::{golden, sample_bytes, spec_d2xy, twin_legs};
use foundry_gpu::fold::{self, FoldOptions, OutputTarget};
use foundry_gpu::format::preview::{self, Palette, CLASS_COLOURS, NO_DATA};
use foundry_gpu::format::rts_png::{self, PngCompression};
use foundry_gpu::format::{brick::Brick, parts::PartsIndex};
use foundry_gpu::progress::Silent;
use foundry_gpu::{Backend, Error, Layout};
use std::path::Path;

fn fold_to(
    backend: &Backend,
    input: &Path,
    target: OutputTarget,
    opts: &FoldOptions,
) -> fold::FoldReport {
    fold::fold_file(backend, input, &target, opts, &Silent).unwrap()
}

fn hello_txt_at_side_8_is_the_golden_brick_byte_for_byte_on(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{}.brick", backend.label()));
    let opts = FoldOptions {
        texture_size: Some(8),
        ..Default::default()
    };
    fold_to(
        backend,
        &golden("hello.txt"),
        OutputTarget::Brick(out.clone()),
        &opts,
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(golden("hello.brick")).unwrap(),
        "{}",
        backend.label()
    );
}

twin_legs!(hello_txt_at_side_8_is_the_golden_brick_byte_for_byte_on: hello_txt_at_side_8_is_the_golden_brick_byte_for_byte, hello_txt_at_side_8_is_the_golden_brick_byte_for_byte_gpu);

fn golden_rts_png_decodes_and_passes_info_on(backend: &Backend) {
    let decoded = fold::decode(backend, &golden("hello.rts.png")).unwrap();
    assert_eq!(decoded.bytes, std::fs::read(golden("hello.txt")).unwrap());
    let report = fold::info(backend, &golden("hello.rts.png")).unwrap();
    assert!(report.valid, "{:?}", report.problems);
    assert!(fold::info(backend, &golden("hello.brick")).unwrap().valid);
}

twin_legs!(golden_rts_png_decodes_and_passes_info_on: golden_rts_png_decodes_and_passes_info, golden_rts_png_decodes_and_passes_info_gpu);

/// Reads an `.rts.png` with the png crate and the spec's own curve, not the crate's decoder.
fn independent_decode(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let text = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "PixelRTS")
        .unwrap()
        .text
        .clone();
    let meta: serde_json::Value =
        serde_json::from_str(text.strip_prefix("PixelRTS").unwrap()).unwrap();
    let side = reader.info().width as usize;
    let mut pixels = vec![0u8; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let size = meta["data_size"].as_u64().unwrap() as usize;
    let mut out = Vec::new();
    for p in 0..size.div_ceil(4) {
        let (x, y) = spec_d2xy(side.trailing_zeros(), p as u64);
        out.extend_from_slice(&pixels[(y * side + x) * 4..][..4]);
    }
    out.truncate(size);
    out
}

#[test]
fn rts_png_decodes_through_independent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("hello", std::fs::read(golden("hello.txt")).unwrap()),
        ("empty", Vec::new()),
        ("odd", sample_bytes(12_345, 5)),
        ("unicode-name-caf\u{e9}", sample_bytes(100, 6)),
    ];
    for compression in [
        PngCompression::Fast,
        PngCompression::Balanced,
        PngCompression::None,
    ] {
        for (name, bytes) in &cases {
            let input = dir.path().join(name);
            std::fs::write(&input, bytes).unwrap();
            let out = dir.path().join(format!("{name}.{compression:?}.rts.png"));
            let opts = FoldOptions {
                compression,
                ..Default::default()
            };
            fold_to(
                &Backend::Cpu,
                &input,
                OutputTarget::RtsPng(out.clone()),
                &opts,
            );
            assert_eq!(&independent_decode(&out), bytes, "{name}");
            let chunks = rts_png::chunk_list(&out).unwrap();
            let kinds: Vec<&str> = chunks.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(&kinds[..2], &["IHDR", "tEXt"], "tEXt right after IHDR");
            assert_eq!(chunks[1].1.as_deref(), Some("PixelRTS"));
            let python = std::process::Command::new("python3")
                .arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/fixtures/reference_decoder.py"),
                )
                .arg(&out)
                .arg(dir.path().join("py.out"))
                .output()
                .expect("python3 runs the reference decoder");
            assert!(
                python.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&python.stderr)
            );
            assert_eq!(
                &std::fs::read(dir.path().join("py.out")).unwrap(),
                bytes,
                "{name} via python"
            );
        }
    }
}

#[test]
fn rts_metadata_is_ascii_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("caf\u{e9}.bin");
    std::fs::write(&input, sample_bytes(1000, 9)).unwrap();
    let out = dir.path().join("x.rts.png");
    fold_to(
        &Backend::Cpu,
        &input,
        OutputTarget::RtsPng(out.clone()),
        &FoldOptions::default(),
    );
    let r = rts_png::RtsPng::read(&out).unwrap();
    assert!(r.text.is_ascii());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let m = &r.metadata;
    assert_eq!(m["format"], "PixelRTS-2.0");
    assert_eq!(m["format_version"], 2);
    assert_eq!(m["grid_size"], 16);
    assert_eq!(m["encoding"]["type"], "RGBA-dense");
    assert_eq!(m["encoding_mode"], "RGBA-dense");
    assert_eq!(m["data_size"], 1000);
    assert_eq!(m["hashes"]["x"], m["data_hash"]);
    assert_eq!(m["offsets"]["x"]["size"], 1000);
    for key in rts_png::FORBIDDEN_KEYS {
        assert!(m.get(key).is_none());
    }
}

fn large_inputs_split_into_parts_and_unfold_from_the_index_on(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.img");
    let data = sample_bytes(200_000, 4);
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    let opts = FoldOptions {
        max_side: 128,
        ..Default::default()
    };
    let report = fold_to(backend, &input, OutputTarget::Directory(out.clone()), &opts);
    assert_eq!(report.parts, 13, "200000 bytes in 16384-byte parts");
    assert!(report
        .notes
        .iter()
        .any(|n| n.contains("split into 13 parts")));
    let index = PartsIndex::read(&out.join("big.img.parts.json")).unwrap();
    assert_eq!(index.parts.len(), 13);
    assert_eq!(index.parts[12].size, 200_000 - 12 * 16384);
    assert_eq!(index.parts[3].brick.as_deref(), Some("big.img.003.brick"));
    assert_eq!(
        index.parts[3].rts_png.as_deref(),
        Some("big.img.003.rts.png")
    );
    let part = Brick::read(&out.join("big.img.003.brick")).unwrap();
    assert_eq!(part.header.width, 128);
    assert_eq!(part.header.original_size, 16384);
    assert!(
        out.join("big.img.003.brick.meta.json").exists(),
        "parts record the split in a sidecar"
    );
    let back = dir.path().join("back.img");
    let unfolded =
        fold::unfold_file(backend, &out.join("big.img.parts.json"), &back, &Silent).unwrap();
    assert_eq!(unfolded.parts, 13);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert!(
        fold::info(backend, &out.join("big.img.parts.json"))
            .unwrap()
            .valid
    );
    // Unfolding falls back to the .rts.png of a part whose .brick is gone.
    std::fs::remove_file(out.join("big.img.005.brick")).unwrap();
    let back = dir.path().join("back2.img");
    fold::unfold_file(
        &Backend::Cpu,
        &out.join("big.img.parts.json"),
        &back,
        &Silent,
    )
    .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // A part swapped for another fails the index's hash and writes nothing.
    std::fs::copy(
        out.join("big.img.001.rts.png"),
        out.join("big.img.005.rts.png"),
    )
    .unwrap();
    let back = dir.path().join("back3.img");
    let err = fold::unfold_file(
        &Backend::Cpu,
        &out.join("big.img.parts.json"),
        &back,
        &Silent,
    )
    .unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    assert!(!back.exists());
}

twin_legs!(large_inputs_split_into_parts_and_unfold_from_the_index_on: large_inputs_split_into_parts_and_unfold_from_the_index, large_inputs_split_into_parts_and_unfold_from_the_index_gpu);

#[test]
fn too_small_texture_size_grows_with_a_note_and_never_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    let data = sample_bytes(100, 1);
    std::fs::write(&input, &data).unwrap();
    let opts = FoldOptions {
        texture_size: Some(4),
        ..Default::default()
    };
    let report = fold_to(
        &Backend::Cpu,
        &input,
        OutputTarget::Directory(dir.path().join("o")),
        &opts,
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("too small") && n.contains("grew to 16")),
        "{:?}",
        report.notes
    );
    let brick = Brick::read(&dir.path().join("o/data.brick")).unwrap();
    assert_eq!(brick.header.width, 16);
    let decoded = fold::decode(&Backend::Cpu, &dir.path().join("o/data.rts.png")).unwrap();
    assert_eq!(decoded.bytes, data);
    // A bigger request is honoured as asked.
    let opts = FoldOptions {
        texture_size: Some(64),
        ..Default::default()
    };
    fold_to(
        &Backend::Cpu,
        &input,
        OutputTarget::Brick(dir.path().join("big.brick")),
        &opts,
    );
    assert_eq!(
        Brick::read(&dir.path().join("big.brick"))
            .unwrap()
            .header
            .width,
        64
    );
}

#[test]
fn sidecars_are_both_written_identical_to_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("s.bin");
    std::fs::write(&input, b"sidecar test").unwrap();
    let png = dir.path().join("s.rts.png");
    let opts = FoldOptions {
        sidecars: true,
        ..Default::default()
    };
    fold_to(
        &Backend::Cpu,
        &input,
        OutputTarget::RtsPng(png.clone()),
        &opts,
    );
    let text = rts_png::RtsPng::read(&png).unwrap().text;
    for sidecar in rts_png::sidecar_paths(&png) {
        assert_eq!(std::fs::read_to_string(&sidecar).unwrap(), text);
    }
    assert!(fold::info(&Backend::Cpu, &png).unwrap().valid);
    std::fs::remove_file(&rts_png::sidecar_paths(&png)[0]).unwrap();
    let report = fold::info(&Backend::Cpu, &png).unwrap();
    assert!(!report.valid);
    assert!(
        report.problems[0].contains("only one sidecar"),
        "{:?}",
        report.problems
    );
}

fn preview_pixels_summarise_their_whole_byte_range_on(backend: &Backend) {
    // 4096 zero bytes, then 4096 0xFF bytes, then 4096 bytes alternating 'A' and 0x00.
    let mut data = vec![0u8; 4096];
    data.extend(vec![0xFFu8; 4096]);
    data.extend((0..4096).map(|i| if i % 2 == 0 { b'A' } else { 0 }));
    // Brick of order 7 (128x128 = 16384 cells) previewed at 16: runs of 64 bytes.
    let image = preview::render(
        backend,
        &data,
        Layout::Brick,
        7,
        Palette::Byteclass,
        16,
        false,
    )
    .unwrap();
    let pixel_of_run = |run: u64| {
        let (x, y) = spec_d2xy(4, run);
        image.rgba[(y * 16 + x) * 4..][..3].to_vec()
    };
    assert_eq!(pixel_of_run(0), CLASS_COLOURS[0]);
    assert_eq!(pixel_of_run(64), CLASS_COLOURS[4]);
    let blend: Vec<u8> = CLASS_COLOURS[2]
        .iter()
        .zip(CLASS_COLOURS[0])
        .map(|(a, b)| (*a as u32 + b as u32).div_ceil(2) as u8)
        .collect();
    assert_eq!(
        pixel_of_run(128),
        blend,
        "a half-ASCII, half-zero run blends, it is not point-sampled"
    );
    assert_eq!(pixel_of_run(255), NO_DATA);
    let entropy =
        preview::render(backend, &data, Layout::Brick, 7, Palette::Entropy, 16, true).unwrap();
    assert_eq!(entropy.height, 16 + 12, "legend strip");
    let (x, y) = spec_d2xy(4, 128);
    let px = &entropy.rgba[(y * 16 + x) * 4..][..3];
    assert_eq!(
        px,
        preview::entropy_colour(1.0 / 8.0),
        "two equally likely values: 1 bit/byte"
    );
}

twin_legs!(preview_pixels_summarise_their_whole_byte_range_on: preview_pixels_summarise_their_whole_byte_range, preview_pixels_summarise_their_whole_byte_range_gpu);

fn every_palette_renders_at_the_requested_side_on(backend: &Backend) {
    let data = sample_bytes(70_000, 2);
    for palette in [
        Palette::Byteclass,
        Palette::Entropy,
        Palette::Gray,
        Palette::Rgba,
    ] {
        for layout in [Layout::Brick, Layout::Rts] {
            let order = foundry_gpu::curve::order_for_cells(layout.pixels_for(data.len() as u64));
            for side in [16, 64, 1024] {
                let cpu =
                    preview::render(&Backend::Cpu, &data, layout, order, palette, side, false)
                        .unwrap();
                assert_eq!((cpu.width, cpu.height), (side, side));
                assert_eq!(cpu.rgba.len(), (side * side * 4) as usize);
                let on_backend =
                    preview::render(backend, &data, layout, order, palette, side, false).unwrap();
                assert!(cpu.rgba == on_backend.rgba, "{palette:?} {layout:?} {side}");
            }
        }
    }
    assert!(preview::render(
        &Backend::Cpu,
        &data,
        Layout::Brick,
        9,
        Palette::Gray,
        100,
        false
    )
    .is_err());
}

twin_legs!(every_palette_renders_at_the_requested_side_on: every_palette_renders_at_the_requested_side, every_palette_renders_at_the_requested_side_gpu);

#[test]
fn failed_unfold_keeps_the_previous_output_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("v.bin");
    std::fs::write(&input, sample_bytes(5000, 8)).unwrap();
    let brick = dir.path().join("v.brick");
    fold_to(
        &Backend::Cpu,
        &input,
        OutputTarget::Brick(brick.clone()),
        &FoldOptions::default(),
    );
    let mut bytes = std::fs::read(&brick).unwrap();
    // Flip the pixel holding source byte 100 (side 128, order 7).
    let (x, y) = spec_d2xy(7, 100);
    let at = 132 + (y * 128 + x) * 4;
    for channel in &mut bytes[at..at + 3] {
        *channel ^= 0x10;
    }
    std::fs::write(&brick, &bytes).unwrap();
    let output = dir.path().join("restored.bin");
    std::fs::write(&output, b"previous content").unwrap();
    let err = fold::unfold_file(&Backend::Cpu, &brick, &output, &Silent).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    assert_eq!(std::fs::read(&output).unwrap(), b"previous content");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
}

#[test]
fn parallel_deflate_bands_join_into_one_valid_zlib_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("five-mib");
    let data = sample_bytes(5 << 20, 21);
    std::fs::write(&input, &data).unwrap();
    for compression in [PngCompression::Fast, PngCompression::None] {
        let out = dir.path().join(format!("{compression:?}.rts.png"));
        let opts = FoldOptions {
            compression,
            ..Default::default()
        };
        fold_to(
            &Backend::Cpu,
            &input,
            OutputTarget::RtsPng(out.clone()),
            &opts,
        );
        let idats = rts_png::chunk_list(&out)
            .unwrap()
            .iter()
            .filter(|(k, _)| k == "IDAT")
            .count();
        let texture_bytes = 2048 * 2048 * 4;
        assert_eq!(
            idats,
            texture_bytes / foundry_gpu::format::png_writer::BAND_BYTES,
            "one IDAT per band"
        );
        assert_eq!(independent_decode(&out), data, "{compression:?}");
    }
}

#[test]
fn proc_files_fold_to_eof_as_utf8_text() {
    let dir = tempfile::tempdir().unwrap();
    for source in ["/proc/meminfo", "/proc/self/status", "/proc/version"] {
        let out = dir.path().join("p.brick");
        let report = fold_to(
            &Backend::Cpu,
            Path::new(source),
            OutputTarget::Brick(out.clone()),
            &FoldOptions::default(),
        );
        assert!(
            report.source.size > 0,
            "{source}: stat says 0 bytes, the fold must not"
        );
        assert!(report.flags.contains(&"IS_UTF8_TEXT"), "{source}");
        let brick = Brick::read(&out).unwrap();
        assert_eq!(brick.header.original_size, report.source.size);
        assert!(brick.header.flags & foundry_gpu::format::brick::flags::IS_UTF8_TEXT != 0);
        let text = String::from_utf8(fold::decode(&Backend::Cpu, &out).unwrap().bytes).unwrap();
        if source == "/proc/meminfo" {
            assert!(text.starts_with("MemTotal:"));
        }
    }
}
