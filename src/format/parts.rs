//! `NAME.parts.json`: how an input too big for one texture was split (order, offsets, sizes, SHA-256s).

use crate::error::{Error, Result};
use std::path::Path;

/// The largest parts index read: a million parts take about 300 MB of JSON; ours take
/// a few hundred bytes each.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Tag every index carries so a stray JSON file is never mistaken for one.
pub const FORMAT: &str = "foundry-gpu-parts";

/// The whole split.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartsIndex {
    pub format: String,
    pub version: u32,
    /// Input name the part files are named after.
    pub name: String,
    /// Whole input size in bytes.
    pub size: u64,
    /// SHA-256 of the whole input, lowercase hex.
    pub sha256: String,
    /// Bytes per part (the last may be shorter).
    pub part_size: u64,
    /// `--max-side` the split was made for.
    pub max_side: u32,
    pub parts: Vec<PartEntry>,
}

/// One part, in order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartEntry {
    pub index: usize,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
    /// File name of the part's `.brick`, beside the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brick: Option<String>,
    /// File name of the part's `.rts.png`, beside the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rts_png: Option<String>,
}

/// `NAME.007.EXT`, with at least three digits and more when the count needs them.
pub fn part_file_name(name: &str, index: usize, count: usize, ext: &str) -> String {
    let width = count.saturating_sub(1).to_string().len().max(3);
    format!("{name}.{index:0width$}.{ext}")
}

/// `NAME.parts.json`.
pub fn index_file_name(name: &str) -> String {
    format!("{name}.parts.json")
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl PartsIndex {
    /// Reads an index and checks it describes one contiguous, consistent split.
    pub fn read(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "read", e))?;
        let mut bytes = Vec::new();
        file.take(MAX_INDEX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, "read", e))?;
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(Error::malformed(
                path,
                format!("is larger than a parts index may be ({MAX_INDEX_BYTES} bytes)"),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::malformed(path, "is not UTF-8 text, so not a parts index"))?;
        Self::parse(path, &text)
    }

    /// [`Self::read`] of text already in memory; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let index: PartsIndex = serde_json::from_str(text)
            .map_err(|e| Error::malformed(path, format!("not a parts index: {e}")))?;
        if index.format != FORMAT {
            return Err(Error::malformed(
                path,
                format!("format is {:?}, expected {FORMAT:?}", index.format),
            ));
        }
        if index.version != 1 {
            return Err(Error::malformed(
                path,
                format!("parts index version {} is not supported", index.version),
            ));
        }
        // The whole input is rebuilt in memory: refuse a claimed size past --max-input before
        // anything that size is allocated.
        let limit = crate::source::max_input();
        if index.size > limit {
            return Err(Error::malformed(
                path,
                format!(
                    "claims an input of {} bytes, more than --max-input allows ({limit} bytes)",
                    index.size
                ),
            ));
        }
        let mut expected_offset = 0u64;
        for (i, part) in index.parts.iter().enumerate() {
            if part.index != i || part.offset != expected_offset {
                return Err(Error::malformed(
                    path,
                    format!("part {i} is out of order: index {}, offset {} (expected {expected_offset})", part.index, part.offset),
                ));
            }
            let names = [&part.brick, &part.rts_png];
            if names.iter().all(|n| n.is_none()) {
                return Err(Error::malformed(
                    path,
                    format!("part {i} names no .brick or .rts.png file"),
                ));
            }
            if let Some(bad) = names
                .iter()
                .flat_map(|n| n.as_deref())
                .find(|n| !is_plain_file_name(n))
            {
                return Err(Error::malformed(
                    path,
                    format!("part {i} file {bad:?} is not a plain file name beside the index"),
                ));
            }
            expected_offset = expected_offset
                .checked_add(part.size)
                .ok_or_else(|| Error::malformed(path, "part sizes overflow"))?;
        }
        if expected_offset != index.size {
            return Err(Error::malformed(
                path,
                format!(
                    "parts add up to {expected_offset} bytes but the index says {}",
                    index.size
                ),
            ));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_widen_with_the_count() {
        assert_eq!(part_file_name("ls", 0, 2, "brick"), "ls.000.brick");
        assert_eq!(part_file_name("ls", 12, 1000, "rts.png"), "ls.012.rts.png");
        assert_eq!(part_file_name("ls", 12, 1001, "brick"), "ls.0012.brick");
    }
}
