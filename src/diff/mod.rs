//! `diff` and `patch`: two states of a file, brick, tree snapshot or memory snapshot compared at
//! page granularity on the GPU or CPU (identical counts) and by content-defined chunks (inserted,
//! deleted, moved, changed), written as `delta.png`, `diff.json` and `a-to-b.patch`.

pub mod align;
pub mod patch;
pub mod preview;
pub mod vcdiff;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::staged::StagedOutputs;
use crate::format::{detect, FileKind};
use align::{Change, DeltaRange};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default `--block`: one page.
pub const DEFAULT_BLOCK: usize = 4096;

/// A named byte range of one side (ELF section, district file, process mapping).
#[derive(Clone, Debug, Serialize)]
pub struct NamedRange {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// One side of a comparison, as bytes plus what its parts are called.
#[derive(Clone, Debug)]
pub struct Side {
    pub path: PathBuf,
    /// `file`, `brick`, `rts_png`, `parts`, `district` or `memory`.
    pub kind: &'static str,
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, computed or verified once when the side was loaded.
    pub sha256: [u8; 32],
    pub regions: Vec<NamedRange>,
    /// Districts: path -> SHA-256. Memory: mapping key -> SHA-256 (empty when not read).
    pub members: Option<BTreeMap<String, String>>,
    /// What outputs showing these bytes may reveal ([`crate::policy::output_mode`]), from the
    /// files the bytes were decoded from: a snapshot's `district.json` and parts index, not
    /// the folder holding them. Process memory is always `0600`.
    pub output_mode: u32,
    /// The bytes already cut into content-defined chunks, when the caller kept them (a watch
    /// keeps the last state's and re-cuts only around an edit); cut here otherwise.
    pub chunking: Option<std::sync::Arc<align::Chunking>>,
}

impl Side {
    /// A side made of `bytes` (hashed here unless `verified_sha256` already is their hash);
    /// an ELF's sections name its regions.
    pub fn from_bytes(
        path: &Path,
        kind: &'static str,
        bytes: Vec<u8>,
        verified_sha256: Option<[u8; 32]>,
    ) -> Side {
        let sha256 = verified_sha256.unwrap_or_else(|| crate::analysis::sha256(&bytes));
        let output_mode = match kind {
            "memory" => 0o600,
            _ => crate::policy::output_mode_of(path),
        };
        Side {
            path: path.to_path_buf(),
            kind,
            // A district's or a process's regions are its files or mappings, set by the caller.
            regions: match kind {
                "district" | "memory" => Vec::new(),
                _ => elf_sections(&bytes),
            },
            bytes,
            sha256,
            members: None,
            output_mode,
            chunking: None,
        }
    }
}

/// The largest `district.json` or `regions.json` read: 200,000 files at a few hundred bytes each.
const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Reads `path` as a comparable side: a snapshot directory (`district.json`), a memory snapshot
/// directory (`regions.json`), a `.brick`/`.rts.png`/parts index (decoded and verified), or any
/// other file as it is.
pub fn load_side(backend: &Backend, path: &Path) -> Result<Side> {
    if path.is_dir() {
        if path.join("district.json").is_file() {
            return load_district(backend, path);
        }
        if path.join("regions.json").is_file() {
            return load_memory(backend, path);
        }
        return Err(Error::malformed(
            path,
            "is a directory without district.json or regions.json, so neither a tree snapshot (foundry-gpu snapshot) nor a memory snapshot (foundry-gpu mem)",
        ));
    }
    let kind = match detect(path)? {
        FileKind::Raw => {
            let (bytes, sha) = crate::source::read_input_hashed(path)?;
            return Ok(Side::from_bytes(path, "file", bytes, Some(sha)));
        }
        FileKind::Brick => "brick",
        FileKind::RtsPng => "rts_png",
        FileKind::PartsIndex => "parts",
    };
    let (bytes, sha) = decode_verified(backend, path)?;
    Ok(Side::from_bytes(path, kind, bytes, Some(sha)))
}

/// [`crate::fold::decode_bytes`], with the verified SHA-256 as bytes.
fn decode_verified(backend: &Backend, path: &Path) -> Result<(Vec<u8>, [u8; 32])> {
    let (bytes, sha) = crate::fold::decode_bytes(backend, path)?;
    let sha = hex::decode(&sha)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| {
            Error::malformed(
                path,
                format!("recorded SHA-256 {sha:?} is not 64 hex digits"),
            )
        })?;
    Ok((bytes, sha))
}

pub(crate) fn elf_sections(bytes: &[u8]) -> Vec<NamedRange> {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(bytes) else {
        return Vec::new();
    };
    file.sections()
        .filter_map(|s| {
            let (start, len) = s.file_range()?;
            (len > 0).then(|| NamedRange {
                name: s.name().unwrap_or("?").to_string(),
                start,
                end: start + len,
            })
        })
        .collect()
}

/// Reads a snapshot's JSON table, at most [`MAX_TABLE_BYTES`] of it.
fn read_json(path: &Path) -> Result<Value> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "read", e))?;
    let mut text = Vec::new();
    file.take(MAX_TABLE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, "read", e))?;
    if text.len() as u64 > MAX_TABLE_BYTES {
        return Err(Error::malformed(
            path,
            format!("is larger than a snapshot table may be ({MAX_TABLE_BYTES} bytes)"),
        ));
    }
    serde_json::from_slice(&text).map_err(|e| Error::malformed(path, format!("not JSON: {e}")))
}

/// A tree snapshot's table (`DIR/district.json`): the file holding its bytes (a parts
/// index), where each file lies in them, and each file's SHA-256 by path.
pub(crate) struct DistrictTable {
    pub index_path: PathBuf,
    pub parts_path: PathBuf,
    pub files: Vec<NamedRange>,
    pub members: BTreeMap<String, String>,
}

impl DistrictTable {
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let index_path = dir.join("district.json");
        let index = read_json(&index_path)?;
        let parts = index["parts_index"]
            .as_str()
            .ok_or_else(|| Error::malformed(&index_path, "has no parts_index"))?;
        let parts_path = dir.join(parts);
        let mut files = Vec::new();
        let mut members = BTreeMap::new();
        for f in index["files"].as_array().into_iter().flatten() {
            let (Some(name), Some(start), Some(size)) =
                (f["path"].as_str(), f["offset"].as_u64(), f["size"].as_u64())
            else {
                return Err(Error::malformed(
                    &index_path,
                    format!("file entry without path/offset/size: {f}"),
                ));
            };
            let end = start.checked_add(size).ok_or_else(|| {
                Error::malformed(
                    &index_path,
                    format!("file entry {name:?} ends past 2^64 (offset {start}, size {size})"),
                )
            })?;
            files.push(NamedRange {
                name: name.into(),
                start,
                end,
            });
            members.insert(
                name.to_string(),
                f["sha256"].as_str().unwrap_or_default().to_string(),
            );
        }
        Ok(DistrictTable {
            index_path,
            parts_path,
            files,
            members,
        })
    }
}

fn load_district(backend: &Backend, dir: &Path) -> Result<Side> {
    let table = DistrictTable::read(dir)?;
    let (bytes, sha) = decode_verified(backend, &table.parts_path)?;
    Ok(Side {
        regions: table.files,
        members: Some(table.members),
        output_mode: crate::policy::output_mode_of(&table.index_path)
            & crate::policy::output_mode_of(&table.parts_path),
        ..Side::from_bytes(dir, "district", bytes, Some(sha))
    })
}

/// A memory snapshot's table (`DIR/regions.json`): the file holding the read pages, and
/// each mapping: where its pages lie in that file and the address they were read at.
pub(crate) struct MemoryTable {
    pub district_path: PathBuf,
    /// Each read mapping as `START-END PERMS PATH` over its bytes in the district, with the
    /// virtual address of its first byte.
    pub mappings: Vec<(NamedRange, u64)>,
    pub members: BTreeMap<String, String>,
}

impl MemoryTable {
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let table_path = dir.join("regions.json");
        let table = read_json(&table_path)?;
        let district = table["district"]
            .as_str()
            .ok_or_else(|| Error::malformed(&table_path, "has no district"))?;
        let mut mappings = Vec::new();
        let mut members = BTreeMap::new();
        for r in table["regions"].as_array().into_iter().flatten() {
            let key = format!(
                "{:x}-{:x} {} {}",
                r["start"].as_u64().unwrap_or(0),
                r["end"].as_u64().unwrap_or(0),
                r["perms"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or("")
            );
            if let (Some(offset), Some(start), Some(end)) = (
                r["district_offset"].as_u64(),
                r["start"].as_u64(),
                r["end"].as_u64(),
            ) {
                let region_end = end
                    .checked_sub(start)
                    .and_then(|len| offset.checked_add(len))
                    .ok_or_else(|| {
                        Error::malformed(
                            &table_path,
                            format!("region {key} has start past end or ends past 2^64"),
                        )
                    })?;
                mappings.push((
                    NamedRange {
                        name: key.clone(),
                        start: offset,
                        end: region_end,
                    },
                    start,
                ));
            }
            members.insert(key, r["sha256"].as_str().unwrap_or_default().to_string());
        }
        Ok(MemoryTable {
            district_path: dir.join(district),
            mappings,
            members,
        })
    }
}

fn load_memory(backend: &Backend, dir: &Path) -> Result<Side> {
    let table = MemoryTable::read(dir)?;
    let (bytes, sha) = decode_verified(backend, &table.district_path)?;
    Ok(Side {
        regions: table.mappings.into_iter().map(|(range, _)| range).collect(),
        members: Some(table.members),
        ..Side::from_bytes(dir, "memory", bytes, Some(sha))
    })
}

/// [`align::align`] of two sides, with the chunkings they carry for `block`; B's, when it has
/// none, follows A's (see [`align::Chunking::follow`]).
fn align_sides(a: &Side, b: &Side, block: usize) -> align::Alignment {
    let kept = |side: &Side| {
        side.chunking
            .as_ref()
            .filter(|c| c.block() == block)
            .map(std::sync::Arc::clone)
    };
    let ca = kept(a).unwrap_or_else(|| std::sync::Arc::new(align::Chunking::of(&a.bytes, block)));
    let cb = kept(b).unwrap_or_else(|| std::sync::Arc::new(ca.follow(&a.bytes, &b.bytes)));
    align::align_chunked(&a.bytes, &ca, &b.bytes, &cb)
}

/// `--block` and the preview.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub block: usize,
    pub preview_side: u32,
    /// Also write `a-to-b.vcdiff` (RFC 3284), for `xdelta3 -d` and other VCDIFF readers.
    pub vcdiff: bool,
    /// How hard the patch's large literal volumes are compressed.
    pub literal_effort: patch::LiteralEffort,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            block: DEFAULT_BLOCK,
            preview_side: 1024,
            vcdiff: false,
            literal_effort: patch::LiteralEffort::AgainstA,
        }
    }
}

/// What one side was.
#[derive(Clone, Debug, Serialize)]
pub struct SideSummary {
    pub path: PathBuf,
    pub kind: &'static str,
    pub size: u64,
    pub sha256: String,
}

/// Position-by-position comparison of the common length, block by block (the GPU kernel).
#[derive(Clone, Debug, Serialize)]
pub struct AlignedCompare {
    pub block: usize,
    pub blocks: u64,
    pub changed_blocks: u64,
    pub changed_bytes: u64,
    /// 4-byte groups that differ: changed `.rts.png` pixels.
    pub changed_pixels: u64,
    /// B's size minus A's, in bytes; blocks past the shorter side's end count as changed.
    pub size_difference: i64,
    /// The changed blocks as byte ranges (merged), capped at 10,000 entries.
    pub changed_ranges: Vec<(u64, u64)>,
}

/// The headline: bytes that differ byte by byte, exactly as `cmp -l A B | wc -l` counts them,
/// plus the bytes only the longer side has. Never estimated from blocks or chunks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ByteDifference {
    /// Bytes both sides have: the shorter side's size.
    pub common_bytes: u64,
    /// Offsets below `common_bytes` where A and B hold different bytes (`cmp -l`'s lines).
    pub differing_in_common: u64,
    /// Bytes past the shorter side's end: the sizes' difference.
    pub past_shorter_end: u64,
    /// `differing_in_common + past_shorter_end`; for equally long sides, `cmp -l`'s count.
    pub bytes_differ: u64,
    /// `bytes_differ` as a share of the longer side's size, percent.
    pub percent: f64,
}

impl ByteDifference {
    fn of(aligned: &AlignedCompare, a_len: u64, b_len: u64) -> Self {
        let past_shorter_end = a_len.abs_diff(b_len);
        let bytes_differ = aligned.changed_bytes + past_shorter_end;
        ByteDifference {
            common_bytes: a_len.min(b_len),
            differing_in_common: aligned.changed_bytes,
            past_shorter_end,
            bytes_differ,
            percent: round2(100.0 * bytes_differ as f64 / a_len.max(b_len).max(1) as f64),
        }
    }
}

/// The content alignment's totals by kind of change, in bytes of B (deleted: of A). They sum to
/// B's size: the bytes of a changed range that equal A's are counted as unchanged.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub unchanged: u64,
    /// Found unchanged elsewhere in A.
    pub moved: u64,
    /// Bytes of B with no counterpart in A.
    pub inserted: u64,
    pub deleted: u64,
    /// Bytes of changed ranges that differ from A's byte they are paired with.
    pub changed: u64,
    /// `changed + inserted` as a share of B, percent: what of B the alignment finds neither in
    /// place nor moved.
    pub percent_of_b_changed_or_inserted: f64,
}

/// A region of B (ELF section, district file, process mapping) compared byte by byte with its
/// counterpart in A: A's region of the same name when A has exactly one, else the same offsets.
#[derive(Clone, Debug, Serialize)]
pub struct RegionDelta {
    pub name: String,
    pub start: u64,
    pub end: u64,
    /// The range of A compared with (cut at A's end; empty when A ends before it starts).
    pub compared_with: (u64, u64),
    /// Bytes of the region that differ from A's byte at the same place in `compared_with`,
    /// plus those past its end. With `compared_with` at the same offsets this is `cmp -l`
    /// restricted to the region's range (plus bytes past A's end).
    pub different_bytes: u64,
    pub percent: f64,
}

/// Members (district files, process mappings) added, removed or changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Members {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

/// `diff.json`.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub format: &'static str,
    pub a: SideSummary,
    pub b: SideSummary,
    pub backend: &'static str,
    /// The exact byte-by-byte count (the headline).
    pub difference: ByteDifference,
    /// The same comparison in blocks, as the GPU kernel makes it.
    pub aligned: AlignedCompare,
    /// The content alignment (FastCDC chunks): what moved, was inserted or deleted.
    pub totals: Totals,
    /// Inserted, deleted, moved and changed ranges (unchanged ones left out), capped at 10,000.
    pub ranges: Vec<DeltaRange>,
    pub ranges_omitted: usize,
    pub regions: Vec<RegionDelta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Members>,
    pub outputs: Vec<PathBuf>,
    pub patch_bytes: u64,
    /// On the GPU in a series (`mem --every`): whether A was still on the device, and what
    /// this comparison uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::backend::DeviceUse>,
    pub seconds: f64,
}

const RANGE_CAP: usize = 10_000;

/// Compares the position-aligned common prefix block by block on `backend`.
pub fn aligned_compare(
    backend: &Backend,
    a: &[u8],
    b: &[u8],
    block: usize,
) -> Result<AlignedCompare> {
    let common = a.len().min(b.len());
    let counts = backend.diff_blocks(&a[..common], &b[..common], block)?;
    Ok(aligned_from_counts(a, b, block, &counts))
}

/// The aligned comparison from `diff_blocks` counts of the common prefix.
fn aligned_from_counts(a: &[u8], b: &[u8], block: usize, counts: &[u32]) -> AlignedCompare {
    let common = a.len().min(b.len());
    let mut out = AlignedCompare {
        block,
        blocks: a.len().max(b.len()).div_ceil(block) as u64,
        changed_blocks: 0,
        changed_bytes: 0,
        changed_pixels: 0,
        size_difference: b.len() as i64 - a.len() as i64,
        changed_ranges: Vec::new(),
    };
    // When the sizes differ, every block from the one holding the shorter side's end holds
    // bytes only the longer side has: changed even if the shared bytes match.
    let first_grown = (a.len() != b.len()).then_some(common / block);
    for (i, pair) in counts.chunks_exact(2).enumerate() {
        if pair[0] == 0 {
            continue;
        }
        out.changed_bytes += u64::from(pair[0]);
        out.changed_pixels += u64::from(pair[1]);
        if first_grown.is_none_or(|grown| i < grown) {
            out.changed_blocks += 1;
        }
        let start = (i * block) as u64;
        let end = (start + block as u64).min(common as u64);
        push_merged(&mut out.changed_ranges, start, end);
    }
    if let Some(grown) = first_grown {
        out.changed_blocks += out.blocks - grown as u64;
        push_merged(
            &mut out.changed_ranges,
            common as u64,
            a.len().max(b.len()) as u64,
        );
    }
    out.changed_ranges.truncate(RANGE_CAP);
    out
}

fn push_merged(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match ranges.last_mut() {
        Some(last) if last.1 == start => last.1 = end,
        _ => ranges.push((start, end)),
    }
}

fn summary(side: &Side) -> SideSummary {
    SideSummary {
        path: side.path.clone(),
        kind: side.kind,
        size: side.bytes.len() as u64,
        sha256: hex::encode(side.sha256),
    }
}

fn members_delta(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Members {
    let mut m = Members::default();
    for (name, sha) in b {
        match a.get(name) {
            None => m.added.push(name.clone()),
            Some(old) if old != sha => m.changed.push(name.clone()),
            Some(_) => m.unchanged += 1,
        }
    }
    m.removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    m
}

fn series_side(side: &Side) -> crate::backend::SeriesSide<'_> {
    crate::backend::SeriesSide {
        bytes: &side.bytes,
        sha256: side.sha256,
    }
}

/// Compares two loaded sides; writes nothing. In a `series` (each B the next A), the GPU keeps
/// B on the device for the next comparison.
pub fn compare(
    backend: &Backend,
    a: &Side,
    b: &Side,
    opts: &DiffOptions,
    series: Option<&mut crate::backend::DiffSeries>,
) -> Result<(DiffReport, align::Alignment)> {
    let started = Instant::now();
    if !opts.block.is_power_of_two() || !(64..=1 << 20).contains(&opts.block) {
        return Err(Error::Usage(format!(
            "--block {} must be a power of two from 64 to 1048576",
            opts.block
        )));
    }
    // The alignment is the longest chain of work (cut A, follow it through B, align), so it
    // starts at once on this thread; the block compare waits to be taken by a free one.
    let (alignment, aligned) = rayon::join(
        || align_sides(a, b, opts.block),
        || -> Result<_> {
            match series {
                Some(series) => {
                    let (counts, used) = backend.diff_blocks_in_series(
                        series_side(a),
                        series_side(b),
                        opts.block,
                        series,
                    )?;
                    Ok((
                        aligned_from_counts(&a.bytes, &b.bytes, opts.block, &counts),
                        used,
                    ))
                }
                None => Ok((
                    aligned_compare(backend, &a.bytes, &b.bytes, opts.block)?,
                    None,
                )),
            }
        },
    );
    let (aligned, device) = aligned?;
    let difference = ByteDifference::of(&aligned, a.bytes.len() as u64, b.bytes.len() as u64);
    let mut totals = Totals::default();
    for r in &alignment.ranges {
        let len = |x: Option<(u64, u64)>| x.map_or(0, |(s, e)| e - s);
        match r.kind {
            Change::Unchanged => totals.unchanged += len(r.b),
            Change::Moved => totals.moved += len(r.b),
            Change::Inserted => totals.inserted += len(r.b),
            Change::Deleted => totals.deleted += len(r.a),
            Change::Changed => {
                let differing = r.differing_bytes.unwrap_or(len(r.b));
                totals.changed += differing;
                totals.unchanged += len(r.b) - differing;
            }
        }
    }
    let b_len = b.bytes.len().max(1) as f64;
    totals.percent_of_b_changed_or_inserted =
        round2(100.0 * (totals.changed + totals.inserted) as f64 / b_len);
    let regions = region_deltas(a, b);
    let changes = || {
        alignment
            .ranges
            .iter()
            .filter(|r| r.kind != Change::Unchanged)
    };
    let ranges_omitted = changes().count().saturating_sub(RANGE_CAP);
    let members = match (&a.members, &b.members) {
        (Some(x), Some(y)) => Some(members_delta(x, y)),
        _ => None,
    };
    let report = DiffReport {
        format: "foundry-gpu-diff",
        a: summary(a),
        b: summary(b),
        backend: backend.label(),
        difference,
        aligned,
        totals,
        ranges: changes().take(RANGE_CAP).cloned().collect(),
        ranges_omitted,
        regions,
        members,
        outputs: Vec::new(),
        patch_bytes: 0,
        device,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((report, alignment))
}

/// Each region of B compared byte by byte with its counterpart in A (see [`RegionDelta`]).
fn region_deltas(a: &Side, b: &Side) -> Vec<RegionDelta> {
    use rayon::prelude::*;
    // A name A holds twice pairs with neither: the same offsets are compared instead.
    let mut by_name: std::collections::HashMap<&str, Option<&NamedRange>> =
        std::collections::HashMap::new();
    for r in &a.regions {
        by_name
            .entry(r.name.as_str())
            .and_modify(|seen| *seen = None)
            .or_insert(Some(r));
    }
    let a_len = a.bytes.len() as u64;
    let b_len = b.bytes.len() as u64;
    b.regions
        .par_iter()
        .map(|region| {
            let (start, end) = (region.start.min(b_len), region.end.min(b_len));
            let (a_start, a_end) = match by_name.get(region.name.as_str()) {
                Some(Some(r)) => (r.start, r.end),
                _ => (region.start, region.end),
            };
            let compared_with = (a_start.min(a_len), a_end.min(a_len));
            let theirs = &a.bytes[compared_with.0 as usize..compared_with.1 as usize];
            let ours = &b.bytes[start as usize..end as usize];
            let different = align::count_differing(theirs, ours)
                + ours.len().saturating_sub(theirs.len()) as u64;
            RegionDelta {
                name: region.name.clone(),
                start: region.start,
                end: region.end,
                compared_with,
                different_bytes: different,
                percent: round2(
                    100.0 * different as f64 / (region.end - region.start).max(1) as f64,
                ),
            }
        })
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `foundry-gpu diff A B -o OUT`: `OUT/delta.png`, `OUT/diff.json`, `OUT/a-to-b.patch`.
pub fn diff(
    backend: &Backend,
    a_path: &Path,
    b_path: &Path,
    out: &Path,
    opts: &DiffOptions,
) -> Result<DiffReport> {
    let started = Instant::now();
    crate::format::staged::check_output_dir(out)?;
    let (a, b) = load_sides(backend, a_path, b_path)?;
    write_diff(backend, &a, &b, out, opts, started)
}

/// Loads both sides of a diff; on the CPU backend at once, one core each (reading and hashing
/// 1 GiB takes as long as aligning two). The GPU backend's decodes go one after the other,
/// sharing the device's error scopes.
pub fn load_sides(backend: &Backend, a_path: &Path, b_path: &Path) -> Result<(Side, Side)> {
    match backend {
        Backend::Cpu => {
            let (a, b) = rayon::join(|| load_side(backend, a_path), || load_side(backend, b_path));
            Ok((a?, b?))
        }
        Backend::Gpu(_) => Ok((load_side(backend, a_path)?, load_side(backend, b_path)?)),
    }
}

/// Compares two loaded sides and writes the three outputs into `out`, atomically together;
/// `seconds` in the report counts from `started` (so it can include loading the sides).
pub fn write_diff(
    backend: &Backend,
    a: &Side,
    b: &Side,
    out: &Path,
    opts: &DiffOptions,
    started: Instant,
) -> Result<DiffReport> {
    write_diff_in_series(backend, a, b, out, opts, started, None, None)
}

/// [`write_diff`] as one step of a series whose B is the next step's A (see [`compare`]),
/// with the byte-class previews of both sides when the caller has them (see
/// [`preview::render_delta`]).
#[allow(clippy::too_many_arguments)]
pub fn write_diff_in_series(
    backend: &Backend,
    a: &Side,
    b: &Side,
    out: &Path,
    opts: &DiffOptions,
    started: Instant,
    series: Option<&mut crate::backend::DiffSeries>,
    bases: Option<[&crate::format::preview::PreviewImage; 2]>,
) -> Result<DiffReport> {
    // On the CPU, both sides' previews are summarised while the sides are compared: the
    // alignment has stretches that keep one core busy, and the previews need none of it.
    let order = preview::delta_order(a.bytes.len(), b.bytes.len());
    let side = preview::delta_side(opts.preview_side, order);
    let (compared, own_bases) = match (backend, bases) {
        (Backend::Cpu, None) => {
            let side_preview = |of: &Side| {
                crate::format::preview::render(
                    backend,
                    &of.bytes,
                    crate::kernels::Layout::Brick,
                    order,
                    crate::format::preview::Palette::Byteclass,
                    side,
                    false,
                )
            };
            let (compared, previews) = rayon::join(
                || compare(backend, a, b, opts, series),
                || rayon::join(|| side_preview(a), || side_preview(b)),
            );
            // The comparison's error, if any, is the one to report.
            let compared = compared?;
            (compared, Some((previews.0?, previews.1?)))
        }
        _ => (compare(backend, a, b, opts, series)?, None),
    };
    let (mut report, alignment) = compared;
    let bases = bases.or(own_bases.as_ref().map(|(a, b)| [a, b]));
    let image = preview::render_delta(
        backend,
        &a.bytes,
        &b.bytes,
        &alignment.ranges,
        &b.regions,
        side,
        bases,
    )?;
    let patch = patch::Patch {
        a_size: a.bytes.len() as u64,
        b_size: b.bytes.len() as u64,
        a_sha256: a.sha256.to_vec(),
        b_sha256: b.sha256.to_vec(),
        ops: alignment.ops,
    };
    // The diff shows both sides' bytes: as private as the more private of them.
    let mode = a.output_mode & b.output_mode;
    let mut staged = StagedOutputs::new().with_mode(mode);
    let paths = [
        out.join("delta.png"),
        out.join("a-to-b.patch"),
        out.join("diff.json"),
    ];
    staged.write(&paths[0], |w| crate::format::preview::write_png(w, &image))?;
    // Encoded once: the data section's zstd (level 19) is the costly part.
    let encoded = patch.encode(&a.bytes, opts.literal_effort);
    staged.write(&paths[1], |w| w.write_all(&encoded))?;
    report.outputs = paths.to_vec();
    if opts.vcdiff {
        let path = out.join("a-to-b.vcdiff");
        let delta = vcdiff::encode(&b.bytes, &patch.ops);
        staged.write(&path, |w| w.write_all(&delta))?;
        report.outputs.push(path);
    }
    report.patch_bytes = encoded.len() as u64;
    report.seconds = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&report).expect("report serialises");
    staged.write(&paths[2], |w| w.write_all(text.as_bytes()))?;
    staged.commit()?;
    Ok(report)
}

/// What `patch` did.
#[derive(Clone, Debug, Serialize)]
pub struct PatchReport {
    pub a: PathBuf,
    pub patch: PathBuf,
    pub output: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub verified: bool,
}

/// `patch` with a VCDIFF delta: B streams into the staged output window by window, each
/// window's Adler-32 checked where the delta records one; nothing is kept unless all is well.
fn apply_vcdiff(
    a: &Side,
    a_path: &Path,
    patch_path: &Path,
    delta: &[u8],
    output: &Path,
) -> Result<PatchReport> {
    let mode = a.output_mode & crate::policy::output_mode_of(patch_path);
    let mut staged = StagedOutputs::new().with_mode(mode);
    let mut applied = None;
    let written = staged.write(output, |w| {
        let outcome = vcdiff::apply(patch_path, &a.bytes, delta, w);
        let failed = outcome.is_err();
        applied = Some(outcome);
        if failed {
            // The delta's own error is returned below; this one only stops the write.
            return Err(std::io::Error::other("the delta failed"));
        }
        Ok(())
    });
    let applied = match (written, applied) {
        (_, Some(Err(e))) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(()), Some(Ok(done))) => done,
        (Ok(()), None) => unreachable!("the write ran the delta"),
    };
    staged.commit()?;
    Ok(PatchReport {
        a: a_path.into(),
        patch: patch_path.into(),
        output: output.into(),
        size: applied.b_size,
        sha256: hex::encode(applied.sha256),
        verified: applied.windows > 0 && applied.checksums_verified == applied.windows,
    })
}

/// `foundry-gpu patch A PATCH -o B`: rebuilds B's bytes, checking A and B against the patch.
pub fn apply_patch(
    backend: &Backend,
    a_path: &Path,
    patch_path: &Path,
    output: &Path,
) -> Result<PatchReport> {
    if patch_path.is_dir() {
        return Err(Error::malformed(
            patch_path,
            "is a directory; give the a-to-b.patch file that `foundry-gpu diff` wrote into its output folder",
        ));
    }
    crate::format::staged::check_output_file(output)?;
    let bytes = crate::source::read_input(patch_path)?;
    // A plain file is read piece by piece while B streams out: memory stays bounded whatever
    // A's size. Bricks, images and snapshots are decoded whole, as `diff` read them.
    // A data section compressed against A needs all of A at once, so such a patch takes the
    // in-memory path below.
    if !a_path.is_dir()
        && !vcdiff::is_vcdiff(&bytes)
        && !patch::refers_to_a(patch_path, &bytes)
        && crate::format::detect(a_path)? == crate::format::FileKind::Raw
    {
        let (file, _) = crate::source::open_input(a_path)?;
        let mode =
            crate::policy::output_mode_of(a_path) & crate::policy::output_mode_of(patch_path);
        // A version 2 patch streams its data section too: its literals, however many a small
        // patch decompresses to, pass through one piece of memory on their way to B.
        if let Some(streaming) = patch::StreamingPatch::read(patch_path, &bytes)? {
            streaming.header.check_a_file(a_path, &file, patch_path)?;
            return write_patched(output, mode, &streaming.header, patch_path, a_path, |w| {
                streaming.write_b_from_file(a_path, &file, output, w)
            });
        }
        let patch = patch::Patch::parse(patch_path, &bytes, None)?;
        patch.check_a_file(a_path, &file, patch_path)?;
        return write_patched(output, mode, &patch, patch_path, a_path, |w| {
            patch
                .write_b_from_file(&file, w)
                .map_err(|e| Error::io(output, "write", e))
        });
    }
    let a = load_side(backend, a_path)?;
    if vcdiff::is_vcdiff(&bytes) {
        return apply_vcdiff(&a, a_path, patch_path, &bytes, output);
    }
    let given = patch::GivenA {
        path: a_path,
        bytes: &a.bytes,
        sha256: a.sha256,
    };
    let patch = patch::Patch::parse(patch_path, &bytes, Some(&given))?;
    patch.check_given_a(&given, patch_path)?;
    // B holds A's bytes and the patch's: as private as the more private of them.
    let mode = a.output_mode & crate::policy::output_mode_of(patch_path);
    write_patched(output, mode, &patch, patch_path, a_path, |w| {
        patch
            .write_b(&a.bytes, w)
            .map_err(|e| Error::io(output, "write", e))
    })
}

/// Streams B (`write_b` writes it and returns its SHA-256) into the staged `output`, keeping it
/// only when its SHA-256 is the one `patch` records.
fn write_patched(
    output: &Path,
    mode: u32,
    patch: &patch::Patch,
    patch_path: &Path,
    a_path: &Path,
    write_b: impl FnOnce(&mut dyn std::io::Write) -> Result<[u8; 32]>,
) -> Result<PatchReport> {
    let mut staged = StagedOutputs::new().with_mode(mode);
    let mut b_sha = [0u8; 32];
    // `write_b` names what failed (the patch, A or the output); that error is the one told,
    // not the staging's "could not write".
    let mut failure = None;
    let staged_write = staged.write(output, |w| match write_b(w) {
        Ok(sha) => {
            b_sha = sha;
            Ok(())
        }
        Err(e) => {
            let told = std::io::Error::other(e.to_string());
            failure = Some(e);
            Err(told)
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    staged_write?;
    patch.check_b(patch_path, b_sha)?;
    staged.commit()?;
    Ok(PatchReport {
        a: a_path.into(),
        patch: patch_path.into(),
        output: output.into(),
        size: patch.b_size,
        sha256: hex::encode(b_sha),
        verified: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_count_the_one_the_shorter_side_ends_in() {
        let a = vec![1u8; 100];
        let mut b = a.clone();
        b.resize(5000, 2);
        // Block 0 holds A's end and B's extra bytes; block 1 is B's alone.
        let c = aligned_compare(&Backend::Cpu, &a, &b, 4096).unwrap();
        assert_eq!((c.blocks, c.changed_blocks, c.changed_bytes), (2, 2, 0));
        assert_eq!(c.changed_ranges, [(100, 5000)]);
        let same = aligned_compare(&Backend::Cpu, &b, &b, 4096).unwrap();
        assert_eq!(same.changed_blocks, 0);
        let mut edited = b.clone();
        edited[4500] = 9;
        let one = aligned_compare(&Backend::Cpu, &b, &edited, 4096).unwrap();
        assert_eq!((one.changed_blocks, one.changed_bytes), (1, 1));
        // Whole blocks shared, then B goes on: only B's own blocks count.
        let long = vec![1u8; 8192 + 10];
        let grown = aligned_compare(&Backend::Cpu, &long[..8192], &long, 4096).unwrap();
        assert_eq!((grown.blocks, grown.changed_blocks), (3, 1));
    }
}
