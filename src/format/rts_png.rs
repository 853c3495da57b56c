//! `.rts.png` (PixelRTS v2, formats.md §3): RGBA PNG, four bytes a pixel along the curve,
//! `PixelRTS` tEXt (ASCII-only JSON) before IDAT, and the two optional sidecars.

use super::png_writer::DeflatedRgba;
use crate::analysis::ByteFacts;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The eight bytes every PNG starts with.
pub const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// tEXt keyword (and value prefix) of the metadata.
pub const TEXT_KEY: &str = "PixelRTS";
/// tEXt keyword (and value prefix) of the optional blueprint.
pub const BLUEPRINT_KEY: &str = "PixelRTS-Blueprint";
/// Deflate's largest possible expansion (258-byte matches in two bits), rounded up.
const MAX_DEFLATE_RATIO: u64 = 1040;
/// Keys that change how the Python decoder reads the pixels: never written.
pub const FORBIDDEN_KEYS: [&str; 3] = ["encoded_size", "compression", "original_data_b64"];

/// Deflate effort for the `.rts.png` writer (zlib levels; rows unfiltered, bands in parallel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PngCompression {
    /// zlib level 1: ~0.5 of the size on binaries, hundreds of MB/s on two cores (default).
    #[default]
    Fast,
    /// zlib level 2: codes built per block (level 1 uses fixed ones); on folded binaries about
    /// 16 % smaller than `fast` for about 1.5x its CPU time, and within 2 % of level 6.
    Balanced,
    /// zlib level 9: smallest files, slowest.
    High,
    /// Stored blocks: fastest, largest.
    None,
}

impl PngCompression {
    /// The zlib level this setting means.
    pub fn level(self) -> u32 {
        match self {
            PngCompression::Fast => 1,
            PngCompression::Balanced => 2,
            PngCompression::High => 9,
            PngCompression::None => 0,
        }
    }
}

/// Compact JSON with every non-ASCII character escaped as `\uXXXX` (tEXt is Latin-1
/// and the readers expect ASCII). Non-ASCII can only occur inside strings, where the
/// escape means the same character.
pub fn ascii_json(value: &Value) -> String {
    let text = serde_json::to_string(value).expect("a Value always serialises");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The metadata of one `.rts.png` holding `facts.size` bytes named `name`.
pub fn metadata(
    name: &str,
    facts: &ByteFacts,
    side: u32,
    description: &str,
    extra: Map<String, Value>,
) -> Value {
    let sha = facts.sha256_hex();
    let mut meta = json!({
        "format": "PixelRTS-2.0",
        "format_version": 2,
        "grid_size": side,
        "encoding": {
            "type": "RGBA-dense",
            "bytes_per_pixel": 4,
            "mapping": "Hilbert space-filling curve"
        },
        "encoding_mode": "RGBA-dense",
        "data_size": facts.size,
        "data_hash": sha,
        "offsets": {
            name: {"offset": 0, "start": 0, "end": facts.size, "size": facts.size, "type": "binary", "sha256": sha}
        },
        "hashes": { name: sha },
        "type": "binary",
        "name": name,
        "description": description,
        "generator": concat!("foundry-gpu ", env!("CARGO_PKG_VERSION")),
    });
    let object = meta.as_object_mut().expect("object literal");
    for (k, v) in extra {
        if !FORBIDDEN_KEYS.contains(&k.as_str()) {
            object.insert(k, v);
        }
    }
    meta
}

/// Deflates a texture of side `side` for [`write_rts_png`].
pub fn encode_texture(
    side: u32,
    texture: &[u32],
    compression: PngCompression,
) -> std::io::Result<DeflatedRgba> {
    DeflatedRgba::new(
        side,
        side,
        bytemuck::cast_slice(texture),
        compression.level(),
    )
}

/// Writes the PNG: IHDR, `PixelRTS` tEXt, optional blueprint tEXt, IDAT, IEND.
pub fn write_rts_png(
    out: &mut dyn Write,
    image: &DeflatedRgba,
    metadata_json: &str,
    blueprint_json: Option<&str>,
) -> std::io::Result<()> {
    let metadata = format!("{TEXT_KEY}{metadata_json}");
    let blueprint = blueprint_json.map(|b| format!("{BLUEPRINT_KEY}{b}"));
    let mut texts = vec![(TEXT_KEY, metadata.as_str())];
    if let Some(b) = &blueprint {
        texts.push((BLUEPRINT_KEY, b.as_str()));
    }
    image.write(out, &texts)
}

/// The two sidecars the Python tools read: `X.rts.meta.json` and `X.rts.png.meta.json`.
pub fn sidecar_paths(png_path: &Path) -> [PathBuf; 2] {
    let full = png_path.to_string_lossy();
    let stem = full.strip_suffix(".png").unwrap_or(&full);
    [
        PathBuf::from(format!("{stem}.meta.json")),
        PathBuf::from(format!("{full}.meta.json")),
    ]
}

/// An `.rts.png` read from disk.
pub struct RtsPng {
    pub side: u32,
    pub texture: Vec<u32>,
    /// The JSON text after the `PixelRTS` prefix.
    pub text: String,
    pub metadata: Value,
    pub blueprint: Option<String>,
    /// Deviations readers tolerate (info lists them).
    pub warnings: Vec<String>,
}

impl RtsPng {
    /// Reads and checks a PixelRTS v2 PNG; fails on anything that stops decoding.
    pub fn read(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "read", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "read", e))?
            .len();
        Self::read_from(
            path,
            std::io::BufReader::with_capacity(1 << 20, file),
            file_len,
        )
    }

    /// [`Self::read`] of bytes already in memory; `path` only names them in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::read_from(path, std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    fn read_from(
        path: &Path,
        input: impl std::io::BufRead + std::io::Seek,
        file_len: u64,
    ) -> Result<Self> {
        let mut decoder = png::Decoder::new_with_limits(input, png::Limits { bytes: 4 << 30 });
        decoder.set_transformations(png::Transformations::IDENTITY);
        let bad = |problem: String| Error::malformed(path, problem);
        let mut reader = decoder
            .read_info()
            .map_err(|e| bad(format!("not a readable PNG: {}", png_problem(&e))))?;
        let info = reader.info();
        let (width, height) = (info.width, info.height);
        if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
            let colour = match info.color_type {
                png::ColorType::Grayscale => "grayscale",
                png::ColorType::Rgb => "RGB",
                png::ColorType::Indexed => "palette",
                png::ColorType::GrayscaleAlpha => "grayscale with alpha",
                png::ColorType::Rgba => "RGBA",
            };
            return Err(bad(format!(
                "PNG is {colour} at {} bits per sample; PixelRTS needs 8-bit RGBA",
                info.bit_depth as u8
            )));
        }
        if width != height
            || !width.is_power_of_two()
            || width.trailing_zeros() > crate::curve::MAX_ORDER
        {
            return Err(bad(format!(
                "PNG is {width}x{height}; PixelRTS needs a square power-of-two side"
            )));
        }
        // Deflate expands at most 1032:1, so a texture far larger than the file can hold is a
        // lie (a decompression bomb); refuse it before allocating it.
        let raw_len = u64::from(width) * (u64::from(width) * 4 + 1);
        if raw_len > file_len.saturating_mul(MAX_DEFLATE_RATIO) + (1 << 20) {
            return Err(bad(format!(
                "a {width}x{width} image cannot be stored in {file_len} bytes of PNG"
            )));
        }
        let limit = crate::source::max_input();
        if raw_len > limit {
            return Err(bad(format!(
                "a {width}x{width} image decodes to {raw_len} bytes, more than --max-input allows ({limit} bytes)"
            )));
        }
        let mut warnings = Vec::new();
        if info.interlaced {
            warnings.push("PNG is interlaced; the contract asks for non-interlaced".into());
        }
        let text_of = |key: &str| {
            info.uncompressed_latin1_text
                .iter()
                .find(|t| t.keyword == key)
                .map(|t| t.text.clone())
        };
        let Some(raw) = text_of(TEXT_KEY) else {
            let elsewhere = info
                .compressed_latin1_text
                .iter()
                .any(|t| t.keyword == TEXT_KEY)
                || info.utf8_text.iter().any(|t| t.keyword == TEXT_KEY);
            return Err(bad(if elsewhere {
                "the PixelRTS text is in a zTXt/iTXt chunk; readers need plain tEXt".into()
            } else {
                "PNG without the PixelRTS text before IDAT: not a PixelRTS v2 image".into()
            }));
        };
        let blueprint =
            text_of(BLUEPRINT_KEY).map(|t| t.strip_prefix(BLUEPRINT_KEY).unwrap_or(&t).to_string());
        let text = match raw.strip_prefix(TEXT_KEY) {
            Some(json) => json.to_string(),
            None => {
                warnings.push("PixelRTS text lacks the \"PixelRTS\" prefix".into());
                raw
            }
        };
        let metadata: Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("PixelRTS text is not valid JSON: {e}")))?;
        let grid = metadata.get("grid_size").and_then(Value::as_u64);
        if grid != Some(u64::from(width)) {
            return Err(bad(format!(
                "grid_size is {grid:?} but the image side is {width}"
            )));
        }
        let capacity = u64::from(width) * u64::from(width) * 4;
        match metadata.get("data_size").and_then(Value::as_u64) {
            Some(size) if size > capacity => {
                return Err(bad(format!(
                    "data_size {size} exceeds the image's capacity of {capacity} bytes"
                )))
            }
            Some(_) => {}
            None => return Err(bad("metadata has no data_size".into())),
        }
        for key in FORBIDDEN_KEYS {
            if metadata.get(key).is_some() {
                warnings.push(format!(
                    "metadata has \"{key}\", which changes how the Python decoder reads pixels"
                ));
            }
        }
        if !text.is_ascii() {
            warnings.push("PixelRTS text is not ASCII-only".into());
        }
        let mut texture = vec![0u32; (u64::from(width) * u64::from(width)) as usize];
        reader
            .next_frame(bytemuck::cast_slice_mut(&mut texture))
            .map_err(|e| bad(format!("cannot decode the image data: {}", png_problem(&e))))?;
        Ok(RtsPng {
            side: width,
            texture,
            text,
            metadata,
            blueprint,
            warnings,
        })
    }

    /// Exact source byte count (`data_size`).
    pub fn data_size(&self) -> u64 {
        self.metadata
            .get("data_size")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// Recorded SHA-256 (`data_hash`), lowercase hex.
    pub fn data_hash(&self) -> Option<String> {
        self.metadata
            .get("data_hash")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    }
}

/// Chunk types in file order, with the keyword of each text chunk (`info` checks the order).
pub fn chunk_list(path: &Path) -> Result<Vec<(String, Option<String>)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    let mut chunks = Vec::new();
    let mut at = PNG_SIGNATURE.len();
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        let body = bytes.get(at + 8..at + 8 + len).unwrap_or(&[]);
        let keyword = matches!(kind.as_str(), "tEXt" | "zTXt" | "iTXt").then(|| {
            String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
        });
        chunks.push((kind, keyword));
        at += 12 + len;
    }
    Ok(chunks)
}

/// The png crate's error in words: its format errors embed a chunk type's `Debug` form
/// (`ChunkType { type: IDAT, critical: true, … }`), cut down to the chunk's name, and its
/// deflate errors end in the decompressor's enum name, left out.
fn png_problem(e: &png::DecodingError) -> String {
    static CHUNK_DEBUG: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let chunk = CHUNK_DEBUG
        .get_or_init(|| regex::Regex::new(r"ChunkType \{ type: (\w+)[^}]*\}").expect("valid"));
    let text = e.to_string();
    if text.starts_with("Corrupt deflate stream") {
        // The rest is the decompressor's enum name (`BadCodeLengthHuffmanTree`).
        return "the compressed image data is corrupt (its deflate stream does not decode)".into();
    }
    chunk.replace_all(&text, "$1").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_json_escapes_everything_else() {
        let v = json!({"d": "caf\u{e9} \u{2014} \u{1F600}"});
        let s = ascii_json(&v);
        assert!(s.is_ascii());
        assert_eq!(s, r#"{"d":"caf\u00e9 \u2014 \ud83d\ude00"}"#);
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
    }

    #[test]
    fn sidecars_are_both_names() {
        let [a, b] = sidecar_paths(Path::new("out/ls.rts.png"));
        assert_eq!(a, Path::new("out/ls.rts.meta.json"));
        assert_eq!(b, Path::new("out/ls.rts.png.meta.json"));
    }
}
