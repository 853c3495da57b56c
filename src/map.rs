//! Publishing to Geometry OS's infinite map (formats.md §5): tiles into the builder's `queue/`,
//! `map/manifest.json` merged atomically under a lock, and the System District placement.
//!
//! The System District is our own layout. It starts at tile (64, 64), well away from the
//! origin and from the security tile at (-10, -10). Each source root gets a square of
//! `2^k` tiles, side by side along +x with a one-tile gap, sized when the root is first
//! published to hold four times its file count. Inside a root, a file's tile is its path's
//! lexicographic position (first eight bytes as a fraction) mapped onto that square's
//! Hilbert curve, so files that sort together sit together; a taken cell moves the file on
//! to the next free one along the curve. Every placement is recorded in
//! `metadata/foundry_placement.json`, so a file keeps its tile from run to run.

use crate::curve::d2xy;
use crate::error::{Error, Result};
use crate::format::staged::StagedOutputs;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Top-left tile of the System District.
pub const DISTRICT_ORIGIN: (i64, i64) = (64, 64);
/// Smallest side, in tiles, of one root's square.
const MIN_ROOT_ORDER: u32 = 4;

/// One root's square of tiles.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RootRegion {
    origin: (i64, i64),
    order: u32,
    /// Relative path -> curve index inside the square.
    tiles: BTreeMap<String, u64>,
}

/// Every placement ever made, persisted between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Placement {
    roots: BTreeMap<String, RootRegion>,
}

/// A tile to publish: where it comes from and what it is called in the district.
pub struct Tile<'a> {
    /// Source root key (a directory, `files`, `mem:COMM`).
    pub root: &'a str,
    /// Path of the item below its root.
    pub rel: &'a str,
    /// The `.rts.png` to copy into `queue/`.
    pub rts_png: &'a Path,
    /// The `.brick` to keep beside it, if any.
    pub brick: Option<&'a Path>,
    /// `Some(n)` publishes as `NAME.vN.rts.png`: the compositor caches textures by path, so a
    /// live tile needs a new name to be reloaded there.
    pub version: Option<u64>,
}

/// What a publish did.
#[derive(Clone, Debug, Serialize)]
pub struct PublishReport {
    pub builder_root: PathBuf,
    pub tiles: usize,
    pub manifest: PathBuf,
    pub timestamp: f64,
    /// Tile coordinates of each published item, `root/rel` -> "X,Y".
    pub placed: BTreeMap<String, String>,
}

/// A builder root (`systems/builder/`) open for publishing.
pub struct BuilderRoot {
    root: PathBuf,
}

fn tile_name(root: &str, rel: &str) -> String {
    let digest = crate::analysis::sha256(format!("{root}\0{rel}").as_bytes());
    format!("foundry-{}", hex::encode(&digest[..8]))
}

/// A path's lexicographic position in [0, 1).
fn path_fraction(rel: &str) -> f64 {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(rel.as_bytes()) {
        *k = *b;
    }
    u64::from_be_bytes(key) as f64 / 2f64.powi(64)
}

impl BuilderRoot {
    /// Opens (creating if needed) `queue/`, `processed/`, `cache/`, `map/` and `metadata/` under `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["queue", "processed", "cache", "map", "metadata"] {
            crate::format::staged::create_dir_all(&root.join(sub))?;
        }
        Ok(BuilderRoot {
            root: root.to_path_buf(),
        })
    }

    fn placement_path(&self) -> PathBuf {
        self.root.join("metadata/foundry_placement.json")
    }

    fn manifest_path(&self) -> PathBuf {
        self.root.join("map/manifest.json")
    }

    /// Reads the manifest; a malformed one is an error, never silently replaced,
    /// because one bad entry breaks the whole map for the compositor.
    pub fn read_manifest(&self) -> Result<Map<String, Value>> {
        let path = self.manifest_path();
        parse_manifest(&path, read_if_present(&path)?.as_deref())
    }

    /// Copies `tiles` into `queue/` and merges them into the manifest with a new timestamp.
    pub fn publish(&self, tiles: &[Tile]) -> Result<PublishReport> {
        let lock_path = self.root.join("map/.manifest.lock");
        // Opening the lock may create it: its folder must be inside the confinement too.
        crate::format::staged::create_dir_all(&self.root.join("map"))?;
        // Through the folder's descriptor, never following a symlink planted as the lock.
        let map_dir = crate::format::staged::open_confined_dir(&self.root.join("map"))?;
        let lock = crate::format::staged::open_file_at(
            &map_dir,
            ".manifest.lock",
            &lock_path,
            false,
            false,
        )?;
        // Two publishers read-merge-write one after the other, never interleaved.
        lock.lock().map_err(|e| Error::io(&lock_path, "lock", e))?;
        let (manifest_path, placement_path) = (self.manifest_path(), self.placement_path());
        let merged = merge_manifest(
            (&manifest_path, read_if_present(&manifest_path)?.as_deref()),
            (
                &placement_path,
                read_if_present(&placement_path)?.as_deref(),
            ),
            tiles,
            unix_now(),
        )?;
        let mut staged = StagedOutputs::new();
        let mut placed = BTreeMap::new();
        for (tile, (name, key)) in tiles.iter().zip(merged.placed) {
            // A tile is as private as its .rts.png, which fold wrote with its source's mode
            // and group; a private one is published only by the operator's explicit choice.
            let (mode, group) = (
                crate::policy::output_mode_of(tile.rts_png)
                    & tile.brick.map_or(0o644, crate::policy::output_mode_of),
                crate::policy::output_group_of(tile.rts_png),
            );
            check_publishable(tile, mode)?;
            staged = staged.with_mode(mode).with_group(group);
            let png_name = format!("{name}.rts.png");
            let png =
                std::fs::read(tile.rts_png).map_err(|e| Error::io(tile.rts_png, "read", e))?;
            staged.write(&self.root.join("queue").join(&png_name), |w| {
                w.write_all(&png)
            })?;
            if let Some(brick) = tile.brick {
                let bytes = std::fs::read(brick).map_err(|e| Error::io(brick, "read", e))?;
                staged.write(
                    &self.root.join("queue").join(format!("{name}.brick")),
                    |w| w.write_all(&bytes),
                )?;
            }
            placed.insert(format!("{}/{}", tile.root, tile.rel), key);
        }
        staged = staged.with_mode(0o644).with_group(None);
        let placement_text =
            serde_json::to_string(&merged.placement).expect("placement serialises");
        staged.write(&placement_path, |w| w.write_all(placement_text.as_bytes()))?;
        let manifest_text = serde_json::to_string_pretty(&Value::Object(merged.manifest))
            .expect("manifest serialises");
        staged.write(&manifest_path, |w| w.write_all(manifest_text.as_bytes()))?;
        // Tiles land before the manifest that points at them.
        staged.commit()?;
        Ok(PublishReport {
            builder_root: self.root.clone(),
            tiles: tiles.len(),
            manifest: self.manifest_path(),
            timestamp: merged.timestamp,
            placed,
        })
    }
}

/// Whether publishing may copy tiles others cannot read; set once by `--publish-private` or
/// the policy's `publish_private`, like `--max-input`.
static PUBLISH_PRIVATE: AtomicBool = AtomicBool::new(false);

/// Lets publishes copy tiles of private sources and of process memory (`--publish-private`).
pub fn allow_private_publish(allowed: bool) {
    PUBLISH_PRIVATE.store(allowed, Ordering::Relaxed);
}

/// Whether private publishing was allowed in this process.
pub fn private_publish_allowed() -> bool {
    PUBLISH_PRIVATE.load(Ordering::Relaxed)
}

/// Refuses `tile` (whose output mode is `mode`) when its source hides it from others (no o+r)
/// or it shows process memory, unless private publishing was allowed: the builder root is
/// read by the compositor and whoever else may read it.
fn check_publishable(tile: &Tile, mode: u32) -> Result<()> {
    if PUBLISH_PRIVATE.load(Ordering::Relaxed) {
        return Ok(());
    }
    let why = if tile.root.starts_with("mem:") {
        "it shows process memory"
    } else if mode & 0o004 == 0 {
        "its source is not readable by others"
    } else {
        return Ok(());
    };
    Err(Error::Policy {
        path: tile.rts_png.to_path_buf(),
        rule: format!(
            "publish_private: {why}; pass --publish-private or set publish_private = true in the policy to publish it"
        ),
    })
}

fn read_if_present(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, "read", e)),
    }
}

fn parse_manifest(path: &Path, text: Option<&str>) -> Result<Map<String, Value>> {
    match text.map(serde_json::from_str::<Value>) {
        None => Ok(Map::new()),
        Some(Ok(Value::Object(map))) => Ok(map),
        Some(Ok(_)) => Err(Error::malformed(path, "manifest is not a JSON object")),
        Some(Err(e)) => Err(Error::malformed(
            path,
            format!("manifest is not valid JSON: {e}"),
        )),
    }
}

/// Largest square a placement file may give a root: 2^24 tiles a side is far beyond any tree,
/// and keeps every coordinate computation inside `i64`.
const MAX_ROOT_ORDER: u32 = 24;
/// Farthest a root's origin may sit from the map's origin.
const MAX_ORIGIN: i64 = 1 << 40;

fn parse_placement(path: &Path, text: Option<&str>) -> Result<Placement> {
    let Some(text) = text else {
        return Ok(Placement::default());
    };
    let placement: Placement = serde_json::from_str(text)
        .map_err(|e| Error::malformed(path, format!("not a placement file: {e}")))?;
    for (root, region) in &placement.roots {
        let (x, y) = region.origin;
        let problem = if !(MIN_ROOT_ORDER..=MAX_ROOT_ORDER).contains(&region.order) {
            Some(format!(
                "order {} is outside {MIN_ROOT_ORDER}..={MAX_ROOT_ORDER}",
                region.order
            ))
        } else if x.abs() > MAX_ORIGIN || y.abs() > MAX_ORIGIN {
            Some(format!("origin ({x}, {y}) is beyond ±2^40"))
        } else {
            let cells = 1u64 << (2 * region.order);
            region
                .tiles
                .iter()
                .find(|(_, &d)| d >= cells)
                .map(|(rel, d)| format!("tile {rel:?} at {d} is outside a square of {cells}"))
        };
        if let Some(problem) = problem {
            return Err(Error::malformed(path, format!("root {root:?}: {problem}")));
        }
    }
    Ok(placement)
}

/// A manifest and placement after a publish: what [`BuilderRoot::publish`] writes.
pub struct MergedManifest {
    pub manifest: Map<String, Value>,
    placement: Placement,
    pub timestamp: f64,
    /// Per tile, in order: its file name stem in `queue/` and its manifest key "X,Y".
    pub placed: Vec<(String, String)>,
}

/// Places `tiles` and merges them into the manifest. Entries the foundry did not write (other
/// tools share the map) are kept as they are; only the keys of placed tiles are replaced.
/// Each part is `(path, text)`, with `None` text for a file not yet written.
pub fn merge_manifest(
    manifest: (&Path, Option<&str>),
    placement: (&Path, Option<&str>),
    tiles: &[Tile],
    now: f64,
) -> Result<MergedManifest> {
    let mut manifest = parse_manifest(manifest.0, manifest.1)?;
    let mut placement = parse_placement(placement.0, placement.1)?;
    let previous = manifest
        .values()
        .filter_map(|v| v.get("timestamp").and_then(Value::as_f64))
        .fold(0.0, f64::max);
    // The browser reloads a tile only when its timestamp grows.
    let timestamp = now.max(previous + 0.001);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tiles {
        *counts.entry(t.root).or_default() += 1;
    }
    let mut placed = Vec::with_capacity(tiles.len());
    for tile in tiles {
        let (x, y) = place(&mut placement, tile.root, tile.rel, counts[tile.root]);
        let name = match tile.version {
            Some(v) => format!("{}.v{v}", tile_name(tile.root, tile.rel)),
            None => tile_name(tile.root, tile.rel),
        };
        let key = format!("{x},{y}");
        manifest.insert(
            key.clone(),
            serde_json::json!({"brick": format!("{name}.rts.png"), "timestamp": timestamp}),
        );
        placed.push((name, key));
    }
    Ok(MergedManifest {
        manifest,
        placement,
        timestamp,
        placed,
    })
}

/// The tile of `rel` in `root`'s square, placing it (and the root) on first sight.
fn place(placement: &mut Placement, root: &str, rel: &str, files_now: usize) -> (i64, i64) {
    if !placement.roots.contains_key(root) {
        let mut order = MIN_ROOT_ORDER;
        while (1u64 << (2 * order)) < 4 * files_now as u64 {
            order += 1;
        }
        let x = placement
            .roots
            .values()
            .map(|r| r.origin.0 + (1i64 << r.order) + 1)
            .max()
            .unwrap_or(DISTRICT_ORIGIN.0);
        placement.roots.insert(
            root.to_string(),
            RootRegion {
                origin: (x, DISTRICT_ORIGIN.1),
                order,
                tiles: BTreeMap::new(),
            },
        );
    }
    let region = placement.roots.get_mut(root).expect("inserted above");
    let cells = 1u64 << (2 * region.order);
    let d = match region.tiles.get(rel) {
        Some(&d) => d,
        None => {
            let taken: HashSet<u64> = region.tiles.values().copied().collect();
            let start = (path_fraction(rel) * cells as f64) as u64 % cells;
            // A full square wraps onto itself: the newest file shares a tile.
            let d = (0..cells)
                .map(|i| (start + i) % cells)
                .find(|d| !taken.contains(d))
                .unwrap_or(start);
            region.tiles.insert(rel.to_string(), d);
            d
        }
    };
    let (x, y) = d2xy(region.order, d);
    (
        region.origin.0 + i64::from(x),
        region.origin.1 + i64::from(y),
    )
}

/// Seconds since the Unix epoch, as the manifest's `timestamp` and metadata record them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_ordered_and_outside_reserved_tiles() {
        let mut p = Placement::default();
        let a = place(&mut p, "/usr", "bin/a", 3);
        let b = place(&mut p, "/usr", "bin/b", 3);
        let z = place(&mut p, "/usr", "share/z", 3);
        assert_eq!(place(&mut p, "/usr", "bin/a", 3), a, "same file, same tile");
        assert_ne!(a, b);
        let dist = |p: (i64, i64), q: (i64, i64)| (p.0 - q.0).abs() + (p.1 - q.1).abs();
        assert!(
            dist(a, b) <= dist(a, z),
            "neighbours in path order stay near"
        );
        let other = place(&mut p, "/etc", "passwd", 1);
        assert!(other.0 >= 64 + 16, "a second root gets its own square");
        for t in [a, b, z, other] {
            assert!(t.0 >= 64 && t.1 >= 64);
        }
    }
}
