//! What each fuzz target asserts about one input: shared by the `cargo fuzz` targets and by the
//! regression tests (`tests/integration/fuzz_regressions.rs`), so a crash input saved under
//! `fuzz/regressions/TARGET/` is replayed through exactly the code that found it.
//!
//! Every reader must return `Ok` or a clear `Err` for any bytes; a panic, an abort, a hang or an
//! allocation far beyond the input's size is a bug. Where a reader accepts its input, the checks
//! go on to the properties that acceptance promises.
#![allow(dead_code)] // each fuzz binary uses one check

use foundry_gpu::format::brick::Brick;
use foundry_gpu::format::parts::PartsIndex;
use foundry_gpu::format::rts_png::RtsPng;
use foundry_gpu::kernels::unfold_rts::unfold_rts;
use foundry_gpu::kernels::{fold_brick::fold_brick, unfold_brick::unfold_brick};
use foundry_gpu::llm::reply::{extract_json, RawReply};
use foundry_gpu::llm::sse::{SseItem, SseParser};
use foundry_gpu::map::{merge_manifest, Tile};
use foundry_gpu::source::elf::{parse_elf, parse_modinfo, ElfParse, TextureLayout};
use serde_json::Value;
use std::path::Path;

/// A `.brick`: an accepted brick unfolds, and one without pixel problems folds back to itself.
pub fn brick_reader(data: &[u8]) {
    let Ok(brick) = Brick::from_bytes(Path::new("fuzz.brick"), data) else {
        return;
    };
    let header = &brick.header;
    let _ = header.minor_problems();
    let problems = brick.pixel_problems();
    let size = usize::try_from(header.original_size).expect("accepted sizes fit in memory");
    assert!(
        size as u64 <= header.capacity(),
        "accepted a payload larger than its texture"
    );
    let mut bytes = vec![0u8; size];
    unfold_brick(&brick.texture, header.hilbert_order, &mut bytes);
    if problems.is_empty() {
        let mut again = vec![0u32; brick.texture.len()];
        fold_brick(&bytes, header.hilbert_order, &mut again);
        assert!(
            again == brick.texture,
            "a clean brick does not fold back to itself"
        );
    }
}

/// A `.rts.png`: an accepted image unfolds to its `data_size` bytes.
pub fn rts_png_reader(data: &[u8]) {
    let Ok(png) = RtsPng::from_bytes(Path::new("fuzz.rts.png"), data) else {
        return;
    };
    let _ = (png.data_hash(), &png.warnings, &png.blueprint);
    let size = usize::try_from(png.data_size()).expect("accepted sizes fit in memory");
    assert!(
        size as u64 <= u64::from(png.side) * u64::from(png.side) * 4,
        "accepted a data_size beyond the image's capacity"
    );
    let mut bytes = vec![0u8; size];
    unfold_rts(&png.texture, png.side.trailing_zeros(), &mut bytes);
}

/// A parts index: an accepted index is one contiguous split into plain file names.
pub fn parts_index(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(index) = PartsIndex::parse(Path::new("fuzz.parts.json"), text) else {
        return;
    };
    let mut offset = 0u64;
    for (i, part) in index.parts.iter().enumerate() {
        assert_eq!((part.index, part.offset), (i, offset), "accepted a gap");
        for name in [&part.brick, &part.rts_png].into_iter().flatten() {
            assert!(
                !name.contains('/') && name != ".." && name != ".",
                "accepted {name:?}, which leaves the index's folder"
            );
        }
        offset += part.size;
    }
    assert_eq!(offset, index.size, "accepted parts that do not add up");
}

/// A task file, as JSON or (first byte odd) YAML.
pub fn task_parser(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let name = if kind & 1 == 1 {
        "fuzz.task.yaml"
    } else {
        "fuzz.task.json"
    };
    match foundry_gpu::task::parse_task(Path::new(name), text) {
        Ok(task) => {
            let _ = task.ai_model();
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(name),
                "error does not name the file: {message}"
            );
        }
    }
}

/// The map's manifest merge: input is `MANIFEST \0 PLACEMENT \0 TILES`, tiles one per line as
/// `ROOT\tREL`. An accepted merge keeps every entry it did not place, byte for byte.
pub fn manifest_merge(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(manifest), Some(placement), Some(tiles)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(manifest), Ok(placement), Ok(tiles)) = (
        std::str::from_utf8(manifest),
        std::str::from_utf8(placement),
        std::str::from_utf8(tiles),
    ) else {
        return;
    };
    let png = Path::new("tile.rts.png");
    let tiles: Vec<Tile> = tiles
        .lines()
        .take(64)
        .filter_map(|line| line.split_once('\t'))
        .map(|(root, rel)| Tile {
            root,
            rel,
            rts_png: png,
            brick: None,
            version: None,
        })
        .collect();
    let Ok(merged) = merge_manifest(
        (Path::new("manifest.json"), present(manifest)),
        (Path::new("placement.json"), present(placement)),
        &tiles,
        1.0e9,
    ) else {
        return;
    };
    assert_eq!(merged.placed.len(), tiles.len(), "a tile was not placed");
    let before: serde_json::Map<String, Value> = match present(manifest) {
        Some(text) => serde_json::from_str(text).expect("merge accepted it as an object"),
        None => serde_json::Map::new(),
    };
    let placed: std::collections::HashSet<&str> =
        merged.placed.iter().map(|(_, key)| key.as_str()).collect();
    for (key, value) in &before {
        if !placed.contains(key.as_str()) {
            assert_eq!(
                merged.manifest.get(key),
                Some(value),
                "foreign entry {key:?} changed"
            );
        }
    }
    for key in &placed {
        assert!(
            merged.manifest.contains_key(*key),
            "placed key {key:?} missing"
        );
    }
    let text = serde_json::to_string(&Value::Object(merged.manifest)).expect("serialises");
    let _: Value = serde_json::from_str(&text).expect("the merged manifest reads back");
}

/// An empty part stands for a file not yet written.
fn present(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Server-sent events: any split of the stream into chunks gives the same events as one
/// chunk, and every event's data goes through the reply parser.
pub fn sse_parser(data: &[u8]) {
    let Some((&split_seed, stream)) = data.split_first() else {
        return;
    };
    let whole = events(stream, &[stream.len().max(1)]);
    let sizes: Vec<usize> = (0..8)
        .map(|i| 1 + ((split_seed as usize >> i) & 7))
        .collect();
    let chunked = events(stream, &sizes);
    assert_eq!(whole, chunked, "chunking changed the events");
    let Ok(items) = whole else {
        return;
    };
    let mut reply = RawReply::default();
    for item in items {
        if let SseItem::Data(text) = item {
            if let Ok(body) = serde_json::from_str::<Value>(&text) {
                reply.absorb(&body);
            }
            let _ = extract_json(&text);
        }
    }
    let _ = reply.answer();
}

/// Feeds `stream` in chunks of the given sizes, cycling; `Err` if any event was not UTF-8.
fn events(stream: &[u8], sizes: &[usize]) -> Result<Vec<SseItem>, ()> {
    let mut parser = SseParser::new();
    let mut items = Vec::new();
    let mut at = 0;
    let mut failed = false;
    for &size in sizes.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + size).min(stream.len());
        match parser.feed(&stream[at..end]) {
            Ok(more) => items.extend(more),
            Err(_) => failed = true,
        }
        at = end;
    }
    match parser.finish() {
        Ok(last) => items.extend(last),
        Err(_) => failed = true,
    }
    if failed {
        Err(())
    } else {
        Ok(items)
    }
}

/// ELF and kernel-module analysis: sections mapped to texture regions, `.modinfo`, hardening,
/// the local analysis and the digest the LLM would be sent.
pub fn elf_analysis(data: &[u8]) {
    let layout = |orders: Vec<u32>, bytes_per_pixel| TextureLayout {
        part_size: 1 << 12,
        part_orders: orders,
        bytes_per_pixel,
    };
    let parts = data.len().div_ceil(1 << 12).max(1);
    let brick = layout(vec![6; parts], 1);
    let rts = layout(vec![5; parts], 4);
    if let ElfParse::Parsed(info) = parse_elf(data, &brick, &rts) {
        for section in &info.sections {
            assert!(
                section.offset.saturating_add(section.size) <= data.len() as u64
                    || section.size == 0,
                "section {:?} reaches beyond the file",
                section.name
            );
        }
    }
    let _ = parse_modinfo(data);
    let _ = foundry_gpu::analysis::hardening::hardening(data);
    let analysis = foundry_gpu::analysis::local::analyze(data);
    let warnings = foundry_gpu::semantic::local_warnings(&analysis);
    let _ = foundry_gpu::semantic::local_risk(&warnings);
    let digest = foundry_gpu::llm::digest::build("fuzz.ko", data, &analysis, Some("fuzz"), 600);
    let _ = digest;
}
