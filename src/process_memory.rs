//! `foundry-gpu mem PID`: a process's address space folded into a brick per mapping, one
//! district in address order, a region table, and a preview with every mapping outlined.

use crate::analysis::{byte_facts, sha256};
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
    let (memory, mappings) = ProcessMemory::open(pid)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "create directory", e))?;
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
                record.sha256 = Some(hex::encode(sha256(&bytes)));
                if opts.mapping_bricks && bytes.len() as u64 <= part_size {
                    let rel = PathBuf::from("mappings").join(format!(
                        "{i:04}-{:x}-{}.brick",
                        record.mapping.start,
                        file_label(&record.label)
                    ));
                    write_file_brick(backend, &bytes, &byte_facts(&bytes), &out.join(&rel))?;
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
    let mut staged = StagedOutputs::new();
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
