//! Folding whole trees (`fold DIR`, `snapshot DIR...`): a brick per file, one district of the
//! tree in path order, and an index of where every file landed, in bounded memory.

use crate::analysis::{byte_facts, ByteFacts};
use crate::backend::{AdapterDescription, Backend};
use crate::district::DistrictWriter;
use crate::error::{Error, Result};
use crate::fold::{fold_file, FoldOptions, OutputTarget};
use crate::format::brick::{self, BrickHeader};
use crate::format::parts::PartEntry;
use crate::format::rts_png::PngCompression;
use crate::format::staged::{StagedOutputs, WriteTally};
use crate::format::{brick_min_side, order_of_side};
use crate::kernels::Layout;
use crate::policy::output_mode;
use crate::progress::{Progress, Silent};
use crate::source::elf::PixelRegion;
use crate::source::tree::{walk, FileEntry, SkipLog, SkipReason, SymlinkEntry, WalkOptions};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files are read and folded in batches of about this many bytes; memory
/// holds one batch, one district part and the textures being written.
const BATCH_BYTES: u64 = 64 << 20;
/// Files at least this big fold on the chosen backend; smaller ones on the
/// CPU, where a fold costs less than a GPU round trip. Small files still
/// reach the GPU together, as district parts.
const GPU_MIN_BYTES: u64 = 1 << 20;
/// Chunk for streaming files too big for a batch into the district.
const STREAM_CHUNK: usize = 8 << 20;

/// Everything `snapshot` can be told.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    pub walk: WalkOptions,
    pub max_side: u32,
    pub compression: PngCompression,
    /// Also write `files/ROOT/PATH.brick` for every file (`--file-bricks`; the district is
    /// always written). Off by default: each adds 4 bytes a byte and pads to a square.
    pub file_bricks: bool,
    /// Also write the district's parts as `.brick`s (`--district-brick`): 4 bytes a byte,
    /// beside the `.rts.png` parts that hold the same bytes in a quarter of the pixels.
    pub district_brick: bool,
    /// Publish every file (as `files/ROOT/PATH.rts.png`) and the district parts to this builder root.
    pub publish: Option<PathBuf>,
    /// Ask the language model about every file; answers land in `district.json` per file.
    pub llm: Option<std::sync::Arc<crate::llm::LlmClient>>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            walk: WalkOptions::default(),
            max_side: crate::fold::DEFAULT_MAX_SIDE,
            compression: PngCompression::default(),
            file_bricks: false,
            district_brick: false,
            publish: None,
            llm: None,
        }
    }
}

/// Where one file landed.
#[derive(Clone, Debug, Serialize)]
pub struct FileRecord {
    /// `ROOT/relative/path` (lossy UTF-8).
    pub path: String,
    /// The raw path bytes in hex, when the name is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub root: usize,
    /// Byte range in the district stream.
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
    pub flags: Vec<&'static str>,
    /// The file's size changed while it was read; what was read is folded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed_while_read: bool,
    /// The file's own brick (or, for a file bigger than one texture, its parts
    /// index), relative to the output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brick: Option<String>,
    /// The file's `.rts.png` tile, written when publishing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rts_png: Option<String>,
    /// Squares the file covers in the district's parts: its `.brick`s where they were written,
    /// else its `.rts.png`s (`district.json`'s `regions_in` says which).
    pub regions: Vec<PixelRegion>,
    /// Local analysis and the language model's answer, with `--llm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic: Option<serde_json::Value>,
}

/// `district.json`: the map from files to district bytes and pixels.
#[derive(Debug, Serialize)]
pub struct DistrictIndex {
    pub format: &'static str,
    pub version: u32,
    pub roots: Vec<String>,
    pub size: u64,
    pub sha256: String,
    /// The parts index `foundry-gpu unfold` takes.
    pub parts_index: String,
    /// Which parts each file's `regions` are squares of: `brick` or `rts_png`.
    pub regions_in: &'static str,
    pub parts: Vec<PartEntry>,
    pub files: Vec<FileRecord>,
    pub symlinks: Vec<SymlinkEntry>,
    pub skipped: SkipLog,
}

/// What a snapshot did.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    pub roots: Vec<PathBuf>,
    pub output: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub symlinks: usize,
    pub changed_while_read: u64,
    pub district_parts: usize,
    pub district_index: PathBuf,
    pub parts_index: PathBuf,
    /// Bytes written into the output folder, all files together (the builder root's copies,
    /// with `--publish`, not counted), and that over the bytes read.
    pub bytes_written: u64,
    pub written_per_byte_read: f64,
    pub backend: &'static str,
    pub adapter: Option<AdapterDescription>,
    pub seconds: f64,
    pub files_per_second: f64,
    pub megabytes_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<crate::map::PublishReport>,
    /// With `--llm`: how many files were answered, answered from the cache, or not answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmTally>,
}

/// Language-model outcomes over a tree.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LlmTally {
    pub answered: u64,
    pub cached: u64,
    pub unanswered: u64,
    /// Why the first unanswered file got no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_reason: Option<String>,
}

impl LlmTally {
    fn of(records: &[FileRecord]) -> Self {
        let mut tally = LlmTally::default();
        for llm in records
            .iter()
            .filter_map(|r| r.semantic.as_ref())
            .map(|s| &s["llm"])
        {
            match llm["status"].as_str() {
                Some("answered") => tally.answered += 1,
                Some("cached") => tally.cached += 1,
                _ => {
                    tally.unanswered += 1;
                    if tally.first_reason.is_none() {
                        tally.first_reason = llm["reason"].as_str().map(String::from);
                    }
                }
            }
        }
        tally
    }
}

/// A file read whole, or why not.
struct ReadFile {
    bytes: Vec<u8>,
    changed: bool,
    /// The mode of what was opened (its `fstat`), not of what the walk saw.
    mode: u32,
}

/// Why an opened tree entry is skipped: the policy's rule, or the I/O error.
fn skip_reason_of(e: Error) -> SkipReason {
    match e {
        Error::Policy { rule, .. } => SkipReason::Denied(rule),
        Error::Io { source, .. } => SkipReason::from_io(&source),
        other => SkipReason::ReadError(other.to_string()),
    }
}

fn read_whole(entry: &FileEntry) -> std::result::Result<ReadFile, SkipReason> {
    use std::os::unix::fs::MetadataExt;
    let (mut file, meta) = crate::source::open_tree_entry(entry).map_err(skip_reason_of)?;
    let mut bytes = Vec::with_capacity(entry.size.min(BATCH_BYTES) as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| SkipReason::from_io(&e))?;
    let now = file.metadata().map(|m| m.len()).unwrap_or(entry.size);
    let changed = bytes.len() as u64 != entry.size || now != entry.size;
    Ok(ReadFile {
        bytes,
        changed,
        mode: meta.mode(),
    })
}

fn root_names(roots: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for root in roots {
        let base = root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "root".into());
        let mut name = base.clone();
        let mut n = 1;
        while names.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        names.push(name);
    }
    names
}

/// The file's own brick, relative to the output directory.
fn brick_rel_path(root_name: &str, rel: &Path) -> PathBuf {
    let mut name = rel.as_os_str().to_owned();
    name.push(".brick");
    Path::new("files").join(root_name).join(name)
}

/// Writes one single-texture brick for `bytes` at `path`.
pub(crate) fn write_file_brick(
    backend: &Backend,
    bytes: &[u8],
    facts: &ByteFacts,
    path: &Path,
    mode: u32,
    tally: Option<&WriteTally>,
) -> Result<()> {
    let side = brick_min_side(bytes.len() as u64);
    let engine = if (bytes.len() as u64) < GPU_MIN_BYTES {
        &Backend::Cpu
    } else {
        backend
    };
    let texture = engine.fold(Layout::Brick, bytes, order_of_side(side))?;
    let header = BrickHeader::new(side, facts, brick::flags_for(facts));
    let mut staged = StagedOutputs::new().with_mode(mode).with_tally(tally);
    staged.write(path, |w| brick::write_brick(w, &header, &texture))?;
    staged.commit()?;
    Ok(())
}

/// One file read and folded, waiting for its turn in the district.
struct FoldedFile {
    read: ReadFile,
    facts: ByteFacts,
    brick: Option<String>,
    tile: Option<String>,
}

/// `x` to two decimals, for reports.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Reads one file and writes its own brick (and tile, when publishing).
fn fold_one(
    backend: &Backend,
    entry: &FileEntry,
    names: &[String],
    out: &Path,
    opts: &SnapshotOptions,
    tally: &WriteTally,
) -> std::result::Result<FoldedFile, SkipReason> {
    let read = read_whole(entry)?;
    let facts = byte_facts(&read.bytes);
    let as_skip = |e: Error| SkipReason::ReadError(e.to_string());
    let rel = brick_rel_path(&names[entry.root], &entry.rel);
    let brick = if opts.file_bricks {
        let mode = output_mode(read.mode);
        write_file_brick(
            backend,
            &read.bytes,
            &facts,
            &out.join(&rel),
            mode,
            Some(tally),
        )
        .map_err(as_skip)?;
        Some(rel.to_string_lossy().into_owned())
    } else {
        None
    };
    let tile = if opts.publish.is_some() {
        let rel = rel.with_extension("rts.png");
        write_file_tile(
            &read.bytes,
            &facts,
            &entry.rel,
            &out.join(&rel),
            opts.compression,
            output_mode(read.mode),
            tally,
        )
        .map_err(as_skip)?;
        Some(rel.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(FoldedFile {
        read,
        facts,
        brick,
        tile,
    })
}

/// Folds the trees under `roots` into `out`.
pub fn snapshot(
    backend: &Backend,
    roots: &[PathBuf],
    out: &Path,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    let started = Instant::now();
    if roots.is_empty() {
        return Err(Error::Usage("snapshot needs at least one directory".into()));
    }
    crate::format::staged::check_output_dir(out)?;
    progress.stage("walking", 0);
    let found = walk(roots, &opts.walk)?;
    let names = root_names(roots);
    let total_bytes: u64 = found.files.iter().map(|f| f.size).sum();
    progress.stage("folding", total_bytes);
    crate::format::staged::create_dir_all(out)?;
    let description = format!("district of {}", names.join(", "));
    let tally = WriteTally::default();
    let mut district = DistrictWriter::new(
        backend,
        out,
        "district",
        &description,
        opts.max_side,
        opts.compression,
    )
    .with_tally(&tally);
    if !opts.district_brick {
        district = district.without_bricks();
    }
    let mut skipped = found.skipped;
    let mut records: Vec<FileRecord> = Vec::with_capacity(found.files.len());
    let part_size = u64::from(opts.max_side) * u64::from(opts.max_side);
    let stream_above = BATCH_BYTES.min(part_size);

    let mut pending: &[FileEntry] = &found.files;
    while !pending.is_empty() {
        // A batch: files in path order until BATCH_BYTES, or one big file alone.
        if pending[0].size > stream_above {
            let entry = &pending[0];
            match stream_big_file(backend, entry, &names, out, opts, &mut district, &tally) {
                Ok(mut record) => {
                    if let Some(client) = &opts.llm {
                        if let Ok(bytes) = crate::source::read_tree_entry(entry) {
                            record.semantic =
                                describe_files(client, &[(&record.path, &bytes)]).pop();
                        }
                    }
                    records.push(record);
                }
                Err(reason) => skipped.add(&entry.abs, reason),
            }
            progress.advance(entry.size);
            progress.files(1);
            pending = &pending[1..];
            continue;
        }
        let mut batch_bytes = 0;
        let count = pending
            .iter()
            .take_while(|f| {
                let fits = f.size <= stream_above
                    && (batch_bytes == 0 || batch_bytes + f.size <= BATCH_BYTES);
                batch_bytes += f.size;
                fits
            })
            .count()
            .max(1);
        let (batch, rest) = pending.split_at(count);
        pending = rest;
        let folded: Vec<_> = batch
            .par_iter()
            .map(|entry| fold_one(backend, entry, &names, out, opts, &tally))
            .collect();
        let mut semantics = match &opts.llm {
            Some(client) => {
                let named: Vec<(String, &[u8])> = batch
                    .iter()
                    .zip(&folded)
                    .filter_map(|(entry, r)| {
                        let one = r.as_ref().ok()?;
                        let path = Path::new(&names[entry.root]).join(&entry.rel);
                        Some((
                            path.to_string_lossy().into_owned(),
                            one.read.bytes.as_slice(),
                        ))
                    })
                    .collect();
                let refs: Vec<(&str, &[u8])> =
                    named.iter().map(|(n, b)| (n.as_str(), *b)).collect();
                describe_files(client, &refs)
            }
            None => Vec::new(),
        }
        .into_iter();
        for (entry, result) in batch.iter().zip(folded) {
            match result {
                Ok(one) => {
                    let offset = district.offset();
                    district.set_source_mode(output_mode(one.read.mode));
                    district.append(&one.read.bytes)?;
                    let mut record = record_for(
                        entry,
                        &names,
                        offset,
                        &one.facts,
                        one.read.changed,
                        one.brick,
                    );
                    record.rts_png = one.tile;
                    record.semantic = semantics.next();
                    records.push(record);
                }
                Err(reason) => skipped.add(&entry.abs, reason),
            }
            progress.advance(entry.size);
            progress.files(1);
        }
    }
    let district = district.finish()?;
    for record in &mut records {
        record.regions = district
            .layout
            .regions(record.offset, record.offset + record.size);
    }
    let bytes: u64 = records.iter().map(|r| r.size).sum();
    let changed = records.iter().filter(|r| r.changed_while_read).count() as u64;
    let llm = opts.llm.as_ref().map(|_| LlmTally::of(&records));
    let index = DistrictIndex {
        format: "foundry-gpu-district",
        version: 1,
        roots: roots
            .iter()
            .map(|r| r.to_string_lossy().into_owned())
            .collect(),
        size: district.size,
        sha256: district.sha256.clone(),
        parts_index: district
            .index_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        regions_in: if opts.district_brick {
            "brick"
        } else {
            "rts_png"
        },
        parts: district.parts.clone(),
        files: records,
        symlinks: found.symlinks,
        skipped,
    };
    let index_path = out.join("district.json");
    let mut staged = StagedOutputs::new()
        .with_mode(district.mode)
        .with_tally(Some(&tally));
    staged.write(&index_path, |w| {
        serde_json::to_writer(&mut *w, &index).map_err(std::io::Error::other)
    })?;
    staged.commit()?;
    let published = match &opts.publish {
        Some(builder) => Some(publish_snapshot(builder, roots, out, &index)?),
        None => None,
    };
    let seconds = started.elapsed().as_secs_f64();
    let files = index.files.len() as u64;
    Ok(SnapshotReport {
        roots: roots.to_vec(),
        output: out.to_path_buf(),
        files,
        bytes,
        skipped: index.skipped.counts.clone(),
        symlinks: index.symlinks.len(),
        changed_while_read: changed,
        district_parts: index.parts.len(),
        district_index: index_path,
        parts_index: district.index_path,
        bytes_written: tally.load(std::sync::atomic::Ordering::Relaxed),
        written_per_byte_read: round2(
            tally.load(std::sync::atomic::Ordering::Relaxed) as f64 / bytes.max(1) as f64,
        ),
        backend: backend.label(),
        adapter: backend.adapter().cloned(),
        seconds,
        files_per_second: files as f64 / seconds.max(1e-9),
        megabytes_per_second: bytes as f64 / 1e6 / seconds.max(1e-9),
        published,
        llm,
    })
}

/// Publishes every file tile and every district part to the map.
fn publish_snapshot(
    builder: &Path,
    roots: &[PathBuf],
    out: &Path,
    index: &DistrictIndex,
) -> Result<crate::map::PublishReport> {
    let root_keys: Vec<String> = roots
        .iter()
        .map(|r| {
            r.canonicalize()
                .unwrap_or_else(|_| r.clone())
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let district_key = format!("district:{}", root_keys.join(","));
    let files = index.files.iter().filter_map(|f| {
        let tile = f.rts_png.as_ref()?;
        let rel = f
            .path
            .split_once('/')
            .map_or(f.path.as_str(), |(_, rel)| rel);
        let brick = f
            .brick
            .as_ref()
            .filter(|b| b.ends_with(".brick"))
            .map(|b| out.join(b));
        Some((
            root_keys[f.root].clone(),
            rel.to_string(),
            out.join(tile),
            brick,
        ))
    });
    let parts = index.parts.iter().filter_map(|p| {
        let png = p.rts_png.as_ref()?;
        Some((
            district_key.clone(),
            png.clone(),
            out.join(png),
            p.brick.as_ref().map(|b| out.join(b)),
        ))
    });
    let items: Vec<(String, String, PathBuf, Option<PathBuf>)> = files.chain(parts).collect();
    let tiles: Vec<crate::map::Tile> = items
        .iter()
        .map(|(root, rel, png, brick)| crate::map::Tile {
            root,
            rel,
            rts_png: png,
            brick: brick.as_deref(),
            version: None,
        })
        .collect();
    crate::map::BuilderRoot::open(builder)?.publish(&tiles)
}

/// Writes a file's own `.rts.png` (its map tile).
fn write_file_tile(
    bytes: &[u8],
    facts: &ByteFacts,
    rel: &Path,
    path: &Path,
    compression: PngCompression,
    mode: u32,
    tally: &WriteTally,
) -> Result<()> {
    use crate::format::rts_png;
    let side = crate::format::rts_min_side(bytes.len() as u64);
    let texture = Backend::Cpu.fold(Layout::Rts, bytes, order_of_side(side))?;
    let image = rts_png::encode_texture(side, &texture, compression)
        .map_err(|e| Error::io(path, "compress", e))?;
    let name = rel.to_string_lossy();
    let meta = rts_png::metadata(&name, facts, side, &name, serde_json::Map::new());
    let text = rts_png::ascii_json(&meta);
    let mut staged = StagedOutputs::new().with_mode(mode).with_tally(Some(tally));
    staged.write(path, |w| rts_png::write_rts_png(w, &image, &text, None))?;
    staged.commit()?;
    Ok(())
}

fn record_for(
    entry: &FileEntry,
    names: &[String],
    offset: u64,
    facts: &ByteFacts,
    changed: bool,
    brick: Option<String>,
) -> FileRecord {
    let path = Path::new(&names[entry.root]).join(&entry.rel);
    let utf8 = std::str::from_utf8(path.as_os_str().as_bytes()).is_ok();
    FileRecord {
        path: path.to_string_lossy().into_owned(),
        path_hex: (!utf8).then(|| hex::encode(path.as_os_str().as_bytes())),
        root: entry.root,
        offset,
        size: facts.size,
        sha256: facts.sha256_hex(),
        flags: brick::flags::names(brick::flags_for(facts)),
        changed_while_read: changed,
        brick,
        rts_png: None,
        regions: Vec::new(),
        semantic: None,
    }
}

/// `semantic` for each file: local analysis in parallel, then the model, `concurrency` at a time.
fn describe_files(
    client: &crate::llm::LlmClient,
    files: &[(&str, &[u8])],
) -> Vec<serde_json::Value> {
    let analyses: Vec<_> = files
        .par_iter()
        .map(|(_, bytes)| crate::analysis::local::analyze(bytes))
        .collect();
    let requests: Vec<_> = files
        .iter()
        .zip(&analyses)
        .map(|((name, data), analysis)| crate::llm::ArtifactRequest {
            name,
            data,
            analysis,
            intent: None,
        })
        .collect();
    let outcomes = client.describe_all(&requests);
    analyses
        .iter()
        .zip(&outcomes)
        .map(|(a, o)| crate::semantic::semantic_json(a, Some(o)))
        .collect()
}

/// A file too big for a batch: its own brick through the ordinary fold (mapped,
/// split into parts if needed), and its bytes streamed into the district.
fn stream_big_file(
    backend: &Backend,
    entry: &FileEntry,
    names: &[String],
    out: &Path,
    opts: &SnapshotOptions,
    district: &mut DistrictWriter,
    tally: &WriteTally,
) -> std::result::Result<FileRecord, SkipReason> {
    let brick = if opts.file_bricks {
        let rel = brick_rel_path(&names[entry.root], &entry.rel);
        let fold_opts = FoldOptions {
            max_side: opts.max_side,
            ..Default::default()
        };
        let target = OutputTarget::Brick(out.join(&rel));
        let folded = fold_file(backend, &entry.abs, &target, &fold_opts, &Silent)
            .map_err(|e| SkipReason::ReadError(e.to_string()))?;
        let written: u64 = folded.outputs.iter().map(|o| o.bytes).sum();
        tally.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
        // A file bigger than one texture is split; its parts index stands for it.
        let rel = if folded.parts > 1 {
            let mut index = rel.with_extension("").into_os_string();
            index.push(".parts.json");
            PathBuf::from(index)
        } else {
            rel
        };
        Some(rel.to_string_lossy().into_owned())
    } else {
        None
    };
    let (mut file, meta) = crate::source::open_tree_entry(entry).map_err(skip_reason_of)?;
    let offset = district.offset();
    district.set_source_mode(output_mode(std::os::unix::fs::MetadataExt::mode(&meta)));
    let mut hasher = Sha256::new();
    let mut histogram = [0u64; 256];
    let mut chunk = vec![0u8; STREAM_CHUNK];
    let mut read_total = 0u64;
    let mut elf = false;
    let mut failed_midway = false;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if read_total == 0 => return Err(SkipReason::from_io(&e)),
            // Bytes already went into the district: keep them, flag the file.
            Err(_) => {
                failed_midway = true;
                break;
            }
        };
        if read_total == 0 {
            elf = crate::analysis::is_elf(&chunk[..n]);
        }
        hasher.update(&chunk[..n]);
        for &b in &chunk[..n] {
            histogram[b as usize] += 1;
        }
        district
            .append(&chunk[..n])
            .map_err(|e| SkipReason::ReadError(e.to_string()))?;
        read_total += n as u64;
    }
    let facts = ByteFacts {
        size: read_total,
        sha256: hasher.finalize().into(),
        entropy: crate::analysis::entropy_of(&histogram),
        // Checking UTF-8 would need the whole file at once; big files are rarely text.
        utf8_text: false,
        elf,
    };
    let changed = failed_midway || read_total != entry.size;
    Ok(record_for(entry, names, offset, &facts, changed, brick))
}
