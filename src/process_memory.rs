//! `foundry-gpu mem PID`: a process's address space folded into a brick per mapping, one
//! district in address order, a region table, and a preview with every mapping outlined.

use crate::analysis::byte_facts;
use crate::backend::{AdapterDescription, Backend};
use crate::curve::order_for_cells;
use crate::district::DistrictWriter;
use crate::error::{Error, Result};
use crate::format::preview::{self, LabelledRange};
use crate::format::rts_png::PngCompression;
use crate::format::staged::StagedOutputs;
use crate::kernels::Layout;
use crate::progress::Progress;
use crate::snapshot::write_file_brick;
use crate::source::elf::PixelRegion;
use crate::source::process::{Mapping, ProcessMemory};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything `mem` can be told.
#[derive(Clone, Debug)]
pub struct MemOptions {
    pub max_side: u32,
    pub compression: PngCompression,
    /// Mappings larger than this are listed but not read (huge reservations, shadow memory).
    pub max_mapping_bytes: u64,
    /// Stop reading once this many bytes are in the district.
    pub max_bytes: u64,
    /// Write `mappings/NNNN-START-LABEL.brick` for every mapping read.
    pub mapping_bricks: bool,
    pub preview_side: u32,
    /// Publish the address-space parts to this builder root.
    pub publish: Option<PathBuf>,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions {
            max_side: crate::fold::DEFAULT_MAX_SIDE,
            compression: PngCompression::default(),
            max_mapping_bytes: 1 << 30,
            max_bytes: 4 << 30,
            mapping_bricks: true,
            preview_side: crate::fold::DEFAULT_PREVIEW_SIDE,
            publish: None,
        }
    }
}

/// One row of `regions.json`.
#[derive(Clone, Debug, Serialize)]
pub struct RegionRecord {
    #[serde(flatten)]
    pub mapping: Mapping,
    pub label: String,
    /// Where the mapping's bytes start in the district (absent when not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub district_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brick: Option<String>,
    /// Why the mapping was not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Squares the mapping covers in the district's `.brick` parts.
    pub regions: Vec<PixelRegion>,
}

/// What a memory snapshot did.
#[derive(Clone, Debug, Serialize)]
pub struct MemReport {
    pub pid: u32,
    pub output: PathBuf,
    pub mappings: usize,
    pub read: usize,
    pub skipped: usize,
    pub bytes: u64,
    pub district_parts: usize,
    pub regions: PathBuf,
    pub parts_index: PathBuf,
    pub preview: Option<PathBuf>,
    pub notes: Vec<String>,
    pub backend: &'static str,
    pub adapter: Option<AdapterDescription>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<crate::map::PublishReport>,
}

/// Largest address space kept in memory to draw the preview.
const PREVIEW_MAX_BYTES: u64 = 1 << 30;

fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads every readable mapping of `pid` and folds the address space into `out`.
pub fn snapshot_process(
    backend: &Backend,
    pid: u32,
    out: &Path,
    opts: &MemOptions,
    progress: &dyn Progress,
) -> Result<MemReport> {
    let started = Instant::now();
    crate::format::staged::check_output_dir(out)?;
    let (memory, mappings) = ProcessMemory::open(pid)?;
    crate::format::staged::create_dir_all(out)?;
    let total: u64 = mappings
        .iter()
        .map(|m| m.len().min(opts.max_mapping_bytes))
        .sum();
    progress.stage("reading", total);
    let description = format!("address space of process {pid}");
    let mut district = DistrictWriter::new(
        backend,
        out,
        "address-space",
        &description,
        opts.max_side,
        opts.compression,
    );
    district.set_source_mode(0o600);
    let part_size = u64::from(opts.max_side) * u64::from(opts.max_side);
    let mut records = Vec::with_capacity(mappings.len());
    let mut kept_for_preview: Vec<u8> = Vec::new();
    let mut notes = Vec::new();
    for (i, mapping) in mappings.into_iter().enumerate() {
        let mut record = RegionRecord {
            label: mapping.label(),
            mapping,
            district_offset: None,
            sha256: None,
            brick: None,
            skipped: None,
            regions: Vec::new(),
        };
        let len = record.mapping.len();
        let bytes = if len > opts.max_mapping_bytes {
            Err(format!("{len} bytes: larger than --max-mapping-bytes"))
        } else if district.offset() + len > opts.max_bytes {
            Err("over --max-bytes".to_string())
        } else {
            memory.read(&record.mapping)
        };
        progress.advance(len.min(opts.max_mapping_bytes));
        match bytes {
            Err(why) => record.skipped = Some(why),
            Ok(bytes) => {
                record.district_offset = Some(district.offset());
                let facts = byte_facts(&bytes);
                record.sha256 = Some(facts.sha256_hex());
                if opts.mapping_bricks && bytes.len() as u64 <= part_size {
                    let rel = PathBuf::from("mappings").join(format!(
                        "{i:04}-{:x}-{}.brick",
                        record.mapping.start,
                        file_label(&record.label)
                    ));
                    // A process's memory is its own: never readable by others.
                    write_file_brick(backend, &bytes, &facts, &out.join(&rel), 0o600, None)?;
                    record.brick = Some(rel.to_string_lossy().into_owned());
                } else if opts.mapping_bricks {
                    notes.push(format!(
                        "{:x} {}: bigger than one texture, in the district only",
                        record.mapping.start, record.label
                    ));
                }
                district.append(&bytes)?;
                if district.offset() <= PREVIEW_MAX_BYTES {
                    kept_for_preview.extend_from_slice(&bytes);
                }
            }
        }
        records.push(record);
    }
    let district = district.finish()?;
    for r in &mut records {
        if let Some(offset) = r.district_offset {
            r.regions = district.layout.regions(offset, offset + r.mapping.len());
        }
    }
    let mut staged = StagedOutputs::new().with_mode(0o600);
    let regions_path = out.join("regions.json");
    let table = serde_json::json!({"format": "foundry-gpu-regions", "version": 1, "pid": pid,
        "district": district.index_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "size": district.size, "sha256": district.sha256, "regions": records});
    let text = serde_json::to_string_pretty(&table).expect("regions serialise");
    staged.write(&regions_path, |w| w.write_all(text.as_bytes()))?;
    let preview_path = if district.size <= PREVIEW_MAX_BYTES {
        let ranges: Vec<LabelledRange> = records
            .iter()
            .filter_map(|r| {
                r.district_offset.map(|start| LabelledRange {
                    label: if r.mapping.path.is_empty() {
                        r.label.clone()
                    } else {
                        r.mapping.path.clone()
                    },
                    start,
                    end: start + r.mapping.len(),
                })
            })
            .collect();
        let order = order_for_cells(kept_for_preview.len() as u64);
        let image = preview::render_outlined(
            backend,
            &kept_for_preview,
            Layout::Brick,
            order,
            opts.preview_side,
            &ranges,
        )?;
        let path = out.join("address-space.preview.png");
        staged.write(&path, |w| preview::write_png(w, &image))?;
        Some(path)
    } else {
        notes.push("address space larger than 1 GiB: no preview".into());
        None
    };
    staged.commit()?;
    let published = match &opts.publish {
        Some(builder) => {
            // Processes come and go; their command name keeps one square on the map.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let root = format!("mem:{}", comm.trim());
            let items: Vec<(String, PathBuf, Option<PathBuf>)> = district
                .parts
                .iter()
                .filter_map(|p| {
                    let png = p.rts_png.as_ref()?;
                    Some((
                        png.clone(),
                        out.join(png),
                        p.brick.as_ref().map(|b| out.join(b)),
                    ))
                })
                .collect();
            let tiles: Vec<crate::map::Tile> = items
                .iter()
                .map(|(rel, png, brick)| crate::map::Tile {
                    root: &root,
                    rel,
                    rts_png: png,
                    brick: brick.as_deref(),
                    version: None,
                })
                .collect();
            Some(crate::map::BuilderRoot::open(builder)?.publish(&tiles)?)
        }
        None => None,
    };
    let read = records
        .iter()
        .filter(|r| r.district_offset.is_some())
        .count();
    Ok(MemReport {
        pid,
        output: out.to_path_buf(),
        mappings: records.len(),
        read,
        skipped: records.len() - read,
        bytes: district.size,
        district_parts: district.parts.len(),
        regions: regions_path,
        parts_index: district.index_path,
        preview: preview_path,
        notes,
        backend: backend.label(),
        adapter: backend.adapter().cloned(),
        seconds: started.elapsed().as_secs_f64(),
        published,
    })
}

/// Whether this kernel tracks soft-dirty pages: a page this process just wrote must show bit 55
/// in `/proc/self/pagemap`. Probed on our own memory, never on the target's.
fn soft_dirty_available() -> bool {
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("page layout");
    // SAFETY: a non-zero-sized layout; the page is written, read back and freed here.
    let page = unsafe { std::alloc::alloc(layout) };
    if page.is_null() {
        return false;
    }
    // SAFETY: `page` points to 4096 writable bytes we own.
    unsafe { std::ptr::write_volatile(page, 1) };
    let entry = std::fs::File::open("/proc/self/pagemap").and_then(|f| {
        use std::os::unix::fs::FileExt;
        let mut word = [0u8; 8];
        f.read_exact_at(&mut word, (page as u64 >> 12) * 8)?;
        Ok(u64::from_le_bytes(word))
    });
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(page, layout) };
    entry.is_ok_and(|e| e >> 55 & 1 == 1)
}

/// Pagemap entries (eight little-endian bytes a page) whose soft-dirty bit, 55, is set.
fn count_soft_dirty(entries: &[u8]) -> u64 {
    entries
        .chunks_exact(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().expect("eight bytes")) >> 55 & 1 == 1)
        .count() as u64
}

/// Pages of process `pid` written since its soft-dirty bits were last cleared, counted over its
/// current mappings from `/proc/PID/pagemap`.
fn soft_dirty_pages(pid: u32) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mappings = crate::source::process::parse_maps(&maps).map_err(std::io::Error::other)?;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut entries = vec![0u8; 8 << 16];
    let mut dirty = 0;
    for m in mappings {
        let (mut page, end) = (m.start / 4096, m.end.div_ceil(4096));
        while page < end {
            let n = ((end - page) as usize).min(entries.len() / 8);
            let got = pagemap.read_at(&mut entries[..n * 8], page * 8)? / 8;
            // Past the end of the user address space ([vsyscall]) there are no entries.
            if got == 0 {
                break;
            }
            dirty += count_soft_dirty(&entries[..got * 8]);
            page += got as u64;
        }
    }
    Ok(dirty)
}

/// Clears process `pid`'s soft-dirty bits, so the next count is of pages written after now.
fn clear_soft_dirty(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"4")
}

/// One step of a series: its snapshot and the diff against the one before.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SeriesStep {
    pub index: usize,
    pub snapshot: PathBuf,
    pub taken_at: f64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings_appeared: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings_disappeared: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings_changed: Option<usize>,
    /// Bytes of this snapshot's district that differ from the previous one's, byte by byte at
    /// the same offset, plus the sizes' difference: the diff's `difference.bytes_differ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_differ: Option<u64>,
    /// `bytes_differ` as a share of the larger snapshot, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_different: Option<f64>,
    /// The diff's content alignment: when a mapping grows or appears, the bytes after it
    /// shift and differ in place, while this says what was changed, inserted or moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<crate::diff::Totals>,
    /// Pages the process wrote since the previous snapshot, by its soft-dirty bits, when the
    /// kernel tracks them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_dirty_pages: Option<u64>,
    /// On the GPU: whether the previous snapshot was still on the device, and the bytes this
    /// step's comparison uploaded (this snapshot only, when it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::backend::DeviceUse>,
    /// Why this step has no snapshot (the process ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// `mem PID --every T --count N`.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesReport {
    pub pid: u32,
    pub output: PathBuf,
    /// How changes between snapshots are found.
    pub change_detection: String,
    pub steps: Vec<SeriesStep>,
    pub seconds: f64,
}

/// Takes `count` snapshots of `pid` `every` apart into `out/NNN/`, and diffs each with the one
/// before into `out/diff-NNN-MMM/`. Stops early, with what it has, if the process exits.
pub fn snapshot_series(
    backend: &Backend,
    pid: u32,
    out: &Path,
    opts: &MemOptions,
    every: std::time::Duration,
    count: usize,
    progress: &dyn Progress,
) -> Result<SeriesReport> {
    let started = Instant::now();
    if count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    crate::format::staged::check_output_dir(out)?;
    let mut soft_dirty = soft_dirty_available();
    let mut change_detection = if soft_dirty {
        "soft-dirty bits (pages written between snapshots, from /proc/PID/pagemap after \
         clear_refs: soft_dirty_pages in each step), and page hashes (FastCDC chunks and \
         per-page compare) for the diff itself"
            .to_string()
    } else {
        "page hashes (FastCDC chunks and per-page compare): this kernel has no soft-dirty \
         tracking (a written page shows no bit 55 in /proc/self/pagemap)"
            .to_string()
    };
    let mut steps: Vec<SeriesStep> = Vec::new();
    // Each snapshot is decoded once: as B of one diff, then as A of the next.
    let mut previous: Option<crate::diff::Side> = None;
    // On the GPU each snapshot is also uploaded once: kept on the device as B, reused as A.
    let mut on_device = crate::backend::DiffSeries::default();
    for index in 0..count {
        let due = started + every * index as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let dir = out.join(format!("{index:03}"));
        let report = match snapshot_process(backend, pid, &dir, opts, progress) {
            Ok(r) => r,
            Err(e) if index > 0 => {
                // The process ended: keep what was taken and say why the series is short.
                steps.push(SeriesStep {
                    index,
                    snapshot: dir,
                    taken_at: crate::map::unix_now(),
                    stopped: Some(e.to_string()),
                    ..Default::default()
                });
                break;
            }
            Err(e) => return Err(e),
        };
        let mut step = SeriesStep {
            index,
            snapshot: dir.clone(),
            taken_at: crate::map::unix_now(),
            bytes: report.bytes,
            ..Default::default()
        };
        if soft_dirty {
            // Counted and cleared right after the read: the next count is of what the process
            // writes from here on. A kernel that refuses falls back to hashes alone, and says so.
            let counted = match index {
                0 => Ok(None),
                _ => soft_dirty_pages(pid).map(Some),
            };
            match counted.and_then(|n| clear_soft_dirty(pid).map(|()| n)) {
                Ok(n) => step.soft_dirty_pages = n,
                Err(e) => {
                    soft_dirty = false;
                    change_detection = format!(
                        "page hashes (FastCDC chunks and per-page compare): the kernel offers \
                         soft-dirty bits but refused them for process {pid} ({e})"
                    );
                }
            }
        }
        let compared_at = Instant::now();
        let current = crate::diff::load_side(backend, &dir)?;
        if let Some(before) = previous.take() {
            let diff_dir = out.join(format!("diff-{:03}-{index:03}", index - 1));
            let d = crate::diff::write_diff_in_series(
                backend,
                &before,
                &current,
                &diff_dir,
                &crate::diff::DiffOptions {
                    preview_side: opts.preview_side,
                    ..Default::default()
                },
                compared_at,
                Some(&mut on_device),
                None,
            )?;
            step.device = d.device;
            if let Some(m) = &d.members {
                step.mappings_appeared = Some(m.added.clone());
                step.mappings_disappeared = Some(m.removed.clone());
                step.mappings_changed = Some(m.changed.len());
            }
            step.bytes_differ = Some(d.difference.bytes_differ);
            step.percent_different = Some(d.difference.percent);
            step.content = Some(d.totals);
            step.diff = Some(diff_dir);
        }
        previous = Some(current);
        steps.push(step);
    }
    let report = SeriesReport {
        pid,
        output: out.to_path_buf(),
        change_detection,
        steps,
        seconds: started.elapsed().as_secs_f64(),
    };
    let mut staged = StagedOutputs::new().with_mode(0o600);
    let text = serde_json::to_string_pretty(&report).expect("series serialises");
    staged.write(&out.join("series.json"), |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?;
    staged.commit()?;
    Ok(report)
}

/// `1s`, `500ms`, `2m`, `0.5s`: a duration for `--every` and `--interval`.
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, "s"), |i| t.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with ms, s, m or h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod series_tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("1s").unwrap(),
            std::time::Duration::from_secs(1)
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("2m").unwrap(),
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("3").unwrap(),
            std::time::Duration::from_secs(3)
        );
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}

#[cfg(test)]
mod soft_dirty_tests {
    use super::*;

    #[test]
    fn soft_dirty_bits_are_counted_from_pagemap_entries() {
        let entry = |bits: u64| bits.to_le_bytes();
        let entries: Vec<u8> = [
            entry(1 << 63 | 1 << 55 | 42), // present and written
            entry(1 << 63 | 42),           // present, not written since the clear
            entry(1 << 55),                // swapped or not present, written
            entry(0),
        ]
        .concat();
        assert_eq!(count_soft_dirty(&entries), 2);
        assert_eq!(count_soft_dirty(&entries[..8]), 1);
    }

    #[test]
    fn every_mapping_of_a_live_process_has_pagemap_entries_to_read() {
        // On a kernel without soft-dirty tracking every count is 0; the reading must still work
        // over every mapping, [vsyscall] included.
        assert!(soft_dirty_pages(std::process::id()).is_ok());
    }
}
