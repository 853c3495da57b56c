//! What the viewer shows: each input's bytes, what names their regions, its metadata, and the
//! version it is at; reloaded when the path changes (a file rewritten, a `watch` output
//! renamed into place), with the byte ranges that changed.

use crate::diff::{load_side, load_sides, Side};
use crate::error::{Error, Result};
use crate::locate::InputMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What identifies one state of a path: when any of it changes, the input is read again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(Vec<(u64, u64, u64, i64, i64)>);

impl Stamp {
    /// The stamp of `path`: the file itself, or for a snapshot folder its table and parts
    /// index (which `watch` and `mem` replace last, by rename, when they write a new state).
    pub fn of(path: &Path) -> Stamp {
        let files: Vec<PathBuf> = if path.is_dir() {
            ["district.json", "regions.json", "district.parts.json"]
                .iter()
                .map(|name| path.join(name))
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        Stamp(
            files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
                .collect(),
        )
    }
}

/// One state of an input.
pub struct Loaded {
    /// Counts the states the viewer has read, from 1.
    pub version: u64,
    /// The input's bytes: a file's own, or those its textures decode to.
    pub bytes: Vec<u8>,
    /// `file`, `brick`, `rts_png`, `parts`, `district` or `memory`.
    pub kind: &'static str,
    /// Files of a snapshot, mappings of a memory snapshot.
    pub members: Option<usize>,
    /// A snapshot's `district.json` entry of each file, by path: its SHA-256, flags and, with
    /// `--llm`, its `semantic`.
    pub records: std::collections::HashMap<String, serde_json::Value>,
    /// Runs of 4 KiB blocks of one entropy class, worked out when first asked for.
    entropy: std::sync::OnceLock<Vec<crate::analysis::local::EntropyRegion>>,
    pub map: InputMap,
    /// A `.rts.png`'s `PixelRTS` metadata or a `.brick`'s sidecar: what `fold` recorded,
    /// the language model's `semantic` among it.
    pub metadata: Option<serde_json::Value>,
    pub stamp: Stamp,
}

/// What a path was when the viewer was given it: a later state is read only when the path
/// is still that kind of thing, owned by the same user. A file in a folder others can write
/// cannot become a symlink to a secret, or someone else's file, behind the viewer's back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    is_symlink: bool,
    is_dir: bool,
    owner: u32,
}

impl Identity {
    fn of(path: &Path) -> Result<Identity> {
        let link = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, "open", e))?;
        let target = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
        if !target.is_file() && !target.is_dir() {
            return Err(Error::malformed(
                path,
                "is neither a regular file nor a folder; view shows files and folders",
            ));
        }
        Ok(Identity {
            is_symlink: link.file_type().is_symlink(),
            is_dir: target.is_dir(),
            owner: target.uid(),
        })
    }
}

/// One input the viewer was given.
pub struct Input {
    pub id: usize,
    pub path: PathBuf,
    /// What the page calls it: the path's last component.
    pub label: String,
    identity: Identity,
    state: RwLock<Arc<Loaded>>,
    /// The stamp of the last state that could not be read: not tried again until it changes.
    failed: std::sync::Mutex<Option<Stamp>>,
}

/// The largest sidecar read for the info panel.
const MAX_SIDECAR: u64 = 4 << 20;

impl Input {
    /// Reads `path` (any input `diff` takes: a file, `.brick`, `.rts.png`, parts index,
    /// snapshot or memory folder).
    pub fn open(id: usize, path: &Path) -> Result<Input> {
        let identity = Identity::of(path)?;
        let loaded = load(path, 1)?;
        Ok(Input::first(id, path, identity, loaded))
    }

    /// Inputs 0 and 1 from the two sides of a comparison: each read once, as `diff` reads it
    /// (decoded, verified, hashed), shown to `compare`, then kept as the inputs' first states.
    pub fn open_compared<T>(
        a: &Path,
        b: &Path,
        compare: impl FnOnce(&Side, &Side) -> Result<T>,
    ) -> Result<(Input, Input, T)> {
        let identities = (Identity::of(a)?, Identity::of(b)?);
        let stamps = (Stamp::of(a), Stamp::of(b));
        let (side_a, side_b) = load_sides(&crate::backend::Backend::Cpu, a, b)?;
        let compared = compare(&side_a, &side_b)?;
        let first_a = loaded_from_side(a, 1, stamps.0, side_a)?;
        let first_b = loaded_from_side(b, 1, stamps.1, side_b)?;
        Ok((
            Input::first(0, a, identities.0, first_a),
            Input::first(1, b, identities.1, first_b),
            compared,
        ))
    }

    fn first(id: usize, path: &Path, identity: Identity, loaded: Loaded) -> Input {
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Input {
            id,
            path: path.to_path_buf(),
            label,
            identity,
            state: RwLock::new(Arc::new(loaded)),
            failed: std::sync::Mutex::new(None),
        }
    }

    /// The state now shown.
    pub fn now(&self) -> Arc<Loaded> {
        Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the path again when its stamp changed: the byte ranges that differ from the
    /// state shown before (merged, at most `MAX_CHANGED_RANGES`; beyond that the whole span
    /// they cover), or `None` when nothing changed. A path that cannot be read now (half
    /// written, moved away, no longer what it was) keeps its last state, and is tried again
    /// once its stamp changes again.
    pub fn refresh(&self) -> Option<(u64, Vec<(u64, u64)>)> {
        let before = self.now();
        let stamp = Stamp::of(&self.path);
        if stamp == before.stamp {
            return None;
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.as_ref() == Some(&stamp) {
            return None;
        }
        // The path must still be what it was (and again after reading, so a swap made while
        // it was read is not taken either).
        let same = || Identity::of(&self.path).ok() == Some(self.identity);
        let next = same()
            .then(|| load(&self.path, before.version + 1).ok())
            .flatten()
            .filter(|_| same());
        let Some(next) = next else {
            *failed = Some(stamp);
            return None;
        };
        *failed = None;
        let changed = changed_ranges(&before.bytes, &next.bytes);
        let version = next.version;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Some((version, changed))
    }
}

impl Loaded {
    /// The input's entropy regions (`analyze`'s): where its entropy class changes.
    pub fn entropy_regions(&self) -> &[crate::analysis::local::EntropyRegion] {
        self.entropy
            .get_or_init(|| crate::analysis::local::entropy_regions(&self.bytes))
    }
}

fn load(path: &Path, version: u64) -> Result<Loaded> {
    // The stamp is taken first: a change made while reading shows as a change next time.
    let stamp = Stamp::of(path);
    let plain = path.is_file() && crate::format::detect(path)? == crate::format::FileKind::Raw;
    if plain {
        // Not hashed: hashing 1 GiB would hold back the first picture by seconds.
        let bytes = crate::source::read_input(path)?;
        let map = InputMap::of_plain_bytes(&bytes);
        return loaded(path, version, stamp, bytes, "file", None, map);
    }
    let side = load_side(&crate::backend::Backend::Cpu, path)?;
    loaded_from_side(path, version, stamp, side)
}

/// The state a side `diff` loaded stands for, its bytes taken over.
fn loaded_from_side(path: &Path, version: u64, stamp: Stamp, side: Side) -> Result<Loaded> {
    if side.kind == "file" {
        let map = InputMap::of_plain_bytes(&side.bytes);
        return loaded(path, version, stamp, side.bytes, "file", None, map);
    }
    let members = side.members.as_ref().map(|m| m.len());
    let mut map = InputMap::read(path)?;
    map.name_elf_regions(&side.bytes);
    loaded(path, version, stamp, side.bytes, side.kind, members, map)
}

/// A state from its bytes and map, with what `fold` recorded beside them.
fn loaded(
    path: &Path,
    version: u64,
    stamp: Stamp,
    bytes: Vec<u8>,
    kind: &'static str,
    members: Option<usize>,
    map: InputMap,
) -> Result<Loaded> {
    if map.size() != bytes.len() as u64 {
        return Err(Error::malformed(
            path,
            format!(
                "changed while read: its textures hold {} bytes and {} were decoded",
                map.size(),
                bytes.len()
            ),
        ));
    }
    let metadata = metadata_of(path, kind);
    let records = if kind == "district" {
        district_records(path)?
    } else {
        Default::default()
    };
    Ok(Loaded {
        entropy: std::sync::OnceLock::new(),
        records,
        version,
        bytes,
        kind,
        members,
        map,
        metadata,
        stamp,
    })
}

/// What `fold` recorded beside the bytes: a `.rts.png`'s own metadata, or the JSON sidecar of a
/// `.brick` (`NAME.brick.meta.json`) when there is one.
fn metadata_of(path: &Path, kind: &str) -> Option<serde_json::Value> {
    match kind {
        "rts_png" => crate::locate::rts_side_and_metadata(path)
            .ok()
            .map(|(_, m)| m),
        "brick" => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut name = path.as_os_str().to_owned();
            name.push(".meta.json");
            // The sidecar itself, never what a link planted in its place points to.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(Path::new(&name))
                .ok()?;
            let meta = file.metadata().ok()?;
            if !meta.is_file() || meta.len() > MAX_SIDECAR {
                return None;
            }
            serde_json::from_reader(std::io::BufReader::new(file)).ok()
        }
        _ => None,
    }
}

/// The largest `district.json` read (as `diff` reads it).
const MAX_DISTRICT_TABLE: u64 = 256 << 20;

/// Each file's entry of a snapshot's `district.json`, by path.
fn district_records(dir: &Path) -> Result<std::collections::HashMap<String, serde_json::Value>> {
    let table = dir.join("district.json");
    let (file, meta) = crate::source::open_input(&table)?;
    if meta.len() > MAX_DISTRICT_TABLE {
        return Err(Error::malformed(&table, "is larger than 256 MiB"));
    }
    let mut index: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::malformed(&table, format!("not JSON: {e}")))?;
    let files = match index.get_mut("files").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(files)) => files,
        _ => return Err(Error::malformed(&table, "has no files list")),
    };
    Ok(files
        .into_iter()
        .filter_map(|f| Some((f.get("path")?.as_str()?.to_string(), f)))
        .collect())
}

/// At most this many ranges are reported changed; more are reported as the span they cover.
pub const MAX_CHANGED_RANGES: usize = 256;

/// Granule of the comparison: a changed range is reported to the 4 KiB page holding it.
const PAGE: usize = 4096;

/// Byte ranges where `before` and `after` differ, by pages, merged; the bytes past the shorter
/// one's end count as changed.
pub fn changed_ranges(before: &[u8], after: &[u8]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let common = before.len().min(after.len());
    for (page, (a, b)) in before[..common]
        .chunks(PAGE)
        .zip(after[..common].chunks(PAGE))
        .enumerate()
    {
        if a != b {
            let start = (page * PAGE) as u64;
            let end = start + a.len() as u64;
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => ranges.push((start, end)),
            }
        }
    }
    let longer = before.len().max(after.len()) as u64;
    if common as u64 != longer {
        match ranges.last_mut() {
            Some(last) if last.1 == common as u64 => last.1 = longer,
            _ => ranges.push((common as u64, longer)),
        }
    }
    if ranges.len() > MAX_CHANGED_RANGES {
        let span = (ranges[0].0, ranges[ranges.len() - 1].1);
        ranges = vec![span];
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_ranges_are_the_pages_that_differ_and_the_tail() {
        let before = vec![7u8; 5 * PAGE];
        let mut after = before.clone();
        after[PAGE + 3] = 0;
        after[2 * PAGE] = 0;
        after[4 * PAGE + 9] = 1;
        assert_eq!(
            changed_ranges(&before, &after),
            vec![
                (PAGE as u64, 3 * PAGE as u64),
                (4 * PAGE as u64, 5 * PAGE as u64)
            ]
        );
        after.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            changed_ranges(&before, &after).last(),
            Some(&(4 * PAGE as u64, 5 * PAGE as u64 + 3))
        );
        assert!(changed_ranges(&before, &before).is_empty());
        let shorter = &before[..100];
        assert_eq!(
            changed_ranges(&before, shorter),
            vec![(100, 5 * PAGE as u64)]
        );
    }
}
