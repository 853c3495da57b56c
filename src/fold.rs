//! The operations the CLI exposes: fold a file into bricks, unfold any brick back, inspect, preview.

use crate::analysis::{byte_facts, sha256, ByteFacts};
use crate::backend::{AdapterDescription, Backend, Staged};
use crate::curve::{order_for_cells, MAX_ORDER};
use crate::error::{Error, Result};
use crate::format::brick::{self, flags, Brick, BrickHeader};
use crate::format::parts::{self, PartEntry, PartsIndex};
use crate::format::png_writer::DeflatedRgba;
use crate::format::preview::{self, LabelledRange, Palette, PREVIEW_SIDES};
use crate::format::rts_png::{self, PngCompression, RtsPng};
use crate::format::staged::StagedOutputs;
use crate::format::{brick_min_side, detect, order_of_side, rts_min_side, FileKind};
use crate::kernels::Layout;
use crate::progress::Progress;
use crate::source::elf::{parse_elf, ElfInfo, ElfParse, ElfSection, TextureLayout};
use crate::source::read_input;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default `--max-side`: the largest texture Geometry OS's readers hold in practice.
pub const DEFAULT_MAX_SIDE: u32 = 8192;
/// Default `--preview-side`.
pub const DEFAULT_PREVIEW_SIDE: u32 = 1024;

/// Everything `fold` can be told.
#[derive(Clone, Debug)]
pub struct FoldOptions {
    /// Requested texture side; grown (with a note) when too small, never truncating.
    pub texture_size: Option<u32>,
    /// Largest side of one texture; bigger inputs are split into parts.
    pub max_side: u32,
    pub palette: Palette,
    pub preview_side: u32,
    pub legend: bool,
    pub compression: PngCompression,
    /// Write both `.rts.png` sidecars (`X.rts.meta.json`, `X.rts.png.meta.json`).
    pub sidecars: bool,
    /// ELF sections that also get a brick of their own (`NAME.text.brick`).
    pub sections: SectionChoice,
    /// NAME for a directory target instead of the input's file name.
    pub name: Option<String>,
    /// Ask the language model for a summary (`--llm`); the answer lands under `semantic`, and
    /// both `.rts.png` sidecars and the brick sidecar are written.
    pub llm: Option<std::sync::Arc<crate::llm::LlmClient>>,
    /// Why the artifact is being mapped (a task's `intent`), passed to the model.
    pub intent: Option<String>,
    /// Mode of the outputs, instead of the one the input's own mode gives
    /// ([`crate::policy::output_mode_of`]): a watched tree's district is as private as the most
    /// private file it holds, not as its folder.
    pub output_mode: Option<u32>,
}

/// `--sections`: none (default), `all`, or a comma-separated list of names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SectionChoice {
    #[default]
    None,
    All,
    Named(Vec<String>),
}

impl SectionChoice {
    /// Parses `all` or `.text,.data`.
    pub fn parse(list: &str) -> Self {
        if list == "all" {
            SectionChoice::All
        } else {
            SectionChoice::Named(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            )
        }
    }
}

impl Default for FoldOptions {
    fn default() -> Self {
        FoldOptions {
            texture_size: None,
            max_side: DEFAULT_MAX_SIDE,
            palette: Palette::default(),
            preview_side: DEFAULT_PREVIEW_SIDE,
            legend: false,
            compression: PngCompression::default(),
            sidecars: false,
            sections: SectionChoice::None,
            name: None,
            llm: None,
            intent: None,
            output_mode: None,
        }
    }
}

/// Where `fold` writes, decided by the `-o` path's suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// A directory receiving `NAME.brick`, `NAME.rts.png`, `NAME.preview.png`.
    Directory(PathBuf),
    Brick(PathBuf),
    RtsPng(PathBuf),
    Preview(PathBuf),
}

impl OutputTarget {
    /// `.brick`, `.rts.png` and `.png` name one file; anything else is a directory.
    pub fn from_path(path: &Path) -> Self {
        let s = path.to_string_lossy();
        if s.ends_with(".brick") {
            OutputTarget::Brick(path.into())
        } else if s.ends_with(".rts.png") {
            OutputTarget::RtsPng(path.into())
        } else if s.ends_with(".png") {
            OutputTarget::Preview(path.into())
        } else {
            OutputTarget::Directory(path.into())
        }
    }

    /// Whether the one output goes to standard output (`-o -`).
    pub fn is_stdout(&self) -> bool {
        match self {
            OutputTarget::Directory(_) => false,
            OutputTarget::Brick(p) | OutputTarget::RtsPng(p) | OutputTarget::Preview(p) => {
                crate::format::staged::is_stdout(p)
            }
        }
    }

    /// Refuses, before any work, a target that exists as the wrong kind of file: a directory
    /// where one file goes, a device, FIFO or socket anywhere, a file where a directory goes.
    pub fn check(&self) -> Result<()> {
        match self {
            OutputTarget::Directory(d) => crate::format::staged::check_output_dir(d),
            OutputTarget::Brick(p) | OutputTarget::RtsPng(p) | OutputTarget::Preview(p) => {
                crate::format::staged::check_output_file(p)
            }
        }
    }

    /// Directory the outputs go to and the NAME they are named after.
    fn dir_and_name(&self, input: &Path) -> (PathBuf, String) {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        let file_name = |p: &Path| {
            p.file_name()
                .map_or("input".into(), |n| n.to_string_lossy().into_owned())
        };
        match self {
            OutputTarget::Directory(d) => (d.clone(), file_name(input)),
            _ if self.is_stdout() => (PathBuf::new(), file_name(input)),
            OutputTarget::Brick(p) => (parent(p), file_name(p).trim_end_matches(".brick").into()),
            OutputTarget::RtsPng(p) => {
                (parent(p), file_name(p).trim_end_matches(".rts.png").into())
            }
            OutputTarget::Preview(p) => (parent(p), file_name(p).trim_end_matches(".png").into()),
        }
    }
}

/// One file a command wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutputRecord {
    pub path: PathBuf,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<u32>,
    pub bytes: u64,
}

/// What a fold did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FoldReport {
    pub input: PathBuf,
    pub name: String,
    pub source: ByteFacts,
    pub flags: Vec<&'static str>,
    pub backend: &'static str,
    pub adapter: Option<AdapterDescription>,
    pub parts: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elf: Option<ElfInfo>,
    /// The `semantic` metadata embedded in the outputs (local analysis, model answer).
    pub semantic: Value,
    /// The local analysis `semantic` was made from.
    #[serde(skip)]
    pub analysis: crate::analysis::local::LocalAnalysis,
    pub outputs: Vec<OutputRecord>,
    pub notes: Vec<String>,
    /// Set when an earlier fold's textures were updated in place rather than folded afresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refolded: Option<Refolded>,
    pub seconds: f64,
}

/// How much of an incremental fold was redone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refolded {
    /// Pages (of [`REFOLD_PAGE`] bytes) whose pixels were re-folded, and the pages in the file.
    pub pages: u64,
    pub of_pages: u64,
    /// `.rts.png` deflate bands re-deflated, and the bands in the image.
    pub bands: u64,
    pub of_bands: u64,
    /// Bytes of the `.brick` written: only its header and changed rows when it began as a
    /// clone of the last one (XFS, btrfs), else all of it.
    pub brick_bytes_written: u64,
}

/// Page size of an incremental fold: what differs is found and re-folded page by page.
pub const REFOLD_PAGE: usize = 4096;

/// Largest source whose textures are kept for an incremental fold: the kept brick texture is
/// four times the source, the `.rts.png` one the same size.
pub const REFOLD_MAX_BYTES: usize = 64 << 20;

/// What a single-part fold leaves behind, so the next fold of an edited version re-folds only
/// the pages that changed and re-deflates only the bands holding them. Watch mode keeps one
/// per watched file.
#[derive(Default)]
pub struct FoldReuse {
    kept: Option<KeptTextures>,
    /// The previews of the fold that left `kept`, repainted where pages changed.
    previews: Vec<preview::KeptPreview>,
    /// The last analysis's per-block histograms and strings pieces.
    analysis: crate::analysis::local::KeptAnalysis,
    /// A descriptor of the `.brick` the fold that left `kept` wrote: the next brick starts as
    /// a clone of it where the file system shares blocks.
    brick_file: Option<KeptFile>,
    /// Where it cannot, the brick before that one, exchanged out of place, and the texture
    /// rows it lacks (those the last fold re-folded): the next brick is that file brought up
    /// to date (see [`crate::format::staged::SpareFile`]).
    brick_spare: Option<(
        crate::format::staged::SpareFile,
        Vec<std::ops::Range<usize>>,
    )>,
}

/// An output this process wrote, held open, with the path it was written to.
struct KeptFile {
    path: PathBuf,
    file: std::fs::File,
}

impl FoldReuse {
    /// The last fold's byte-class preview (no legend) of a side-`2^order` brick, `side` pixels
    /// wide, when it kept one: the base of a watch's `delta.png`.
    pub fn byteclass_preview(&self, order: u32, side: u32) -> Option<&preview::PreviewImage> {
        self.previews
            .iter()
            .find_map(|k| k.image_for(Layout::Brick, order, Palette::Byteclass, side))
    }
}

struct KeptTextures {
    brick_side: u32,
    rts_side: u32,
    compression: PngCompression,
    brick: Vec<u32>,
    rts: Vec<u32>,
    rts_png: DeflatedRgba,
}

/// Byte ranges where `now` differs from `before`, page by page (adjacent pages merged), plus
/// the stretch only one of them covers.
pub fn changed_pages(before: &[u8], now: &[u8], page: usize) -> Vec<std::ops::Range<usize>> {
    let common = before.len().min(now.len());
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut push = |range: std::ops::Range<usize>| match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => ranges.push(range),
    };
    for (i, (a, b)) in before[..common]
        .chunks(page)
        .zip(now[..common].chunks(page))
        .enumerate()
    {
        if a != b {
            push(i * page..i * page + a.len());
        }
    }
    if before.len() != now.len() {
        push(common..before.len().max(now.len()));
    }
    ranges
}

fn check_side_option(what: &str, side: u32) -> Result<()> {
    if !side.is_power_of_two() || side.trailing_zeros() > MAX_ORDER {
        return Err(Error::Usage(format!(
            "{what} {side} must be a power of two from 1 to {}",
            1u32 << MAX_ORDER
        )));
    }
    Ok(())
}

/// Side for `needed`, honouring a requested size; growth is explained in `notes`.
fn grown_side(
    needed: u32,
    requested: Option<u32>,
    what: &str,
    len: u64,
    notes: &mut Vec<String>,
) -> u32 {
    match requested {
        Some(r) if r >= needed => r.next_power_of_two(),
        Some(r) => {
            notes.push(format!(
                "texture size {r} is too small for {len} bytes as {what}; grew to {needed}"
            ));
            needed
        }
        None => needed,
    }
}

/// A short description the map can show (its first 40 characters).
fn describe(facts: &ByteFacts) -> String {
    let kind = if facts.elf {
        "ELF binary"
    } else if facts.utf8_text {
        "UTF-8 text"
    } else {
        "data"
    };
    format!(
        "{kind}, {}, H={:.2}",
        human_bytes(facts.size),
        facts.entropy
    )
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One part's textures, folded (and for `.rts.png` deflated) before its hash is known.
struct PreparedPart {
    brick: Option<Vec<u32>>,
    rts: Option<DeflatedRgba>,
    /// The `.rts.png` texture itself, kept when the fold is to be reused.
    rts_texture: Option<Vec<u32>>,
    refolded: Option<Refolded>,
    /// The brick rows re-folded since the kept brick, when it was re-folded from one.
    brick_rows: Option<Vec<std::ops::Range<usize>>>,
}

/// Which textures a part needs, and whether the `.rts.png` one is kept for reuse.
#[derive(Clone, Copy)]
struct PartOutputs {
    brick: bool,
    rts: bool,
    keep_rts_texture: bool,
}

fn prepare_part(
    input: &Staged,
    plan: &PartPlan,
    wanted: PartOutputs,
    compression: PngCompression,
    name: &str,
) -> Result<PreparedPart> {
    let brick = wanted
        .brick
        .then(|| {
            input.fold(
                Layout::Brick,
                plan.range.clone(),
                order_of_side(plan.brick_side),
            )
        })
        .transpose()?;
    let (rts, rts_texture) = if wanted.rts {
        let texture = input.fold(
            Layout::Rts,
            plan.range.clone(),
            order_of_side(plan.rts_side),
        )?;
        let image = rts_png::encode_texture(plan.rts_side, &texture, compression)
            .map_err(|e| Error::io(name, "compress", e))?;
        (Some(image), wanted.keep_rts_texture.then_some(texture))
    } else {
        (None, None)
    };
    Ok(PreparedPart {
        brick,
        rts,
        rts_texture,
        refolded: None,
        brick_rows: None,
    })
}

/// Updates the textures `kept` from an earlier fold of `previous` to hold `data`: only the
/// changed pages are re-folded (on the CPU twin: a few pages do not pay for an upload, and the
/// twins give the same bytes) and only their deflate bands re-deflated.
fn prepare_part_from(
    mut kept: KeptTextures,
    changed: &[std::ops::Range<usize>],
    data: &[u8],
    name: &str,
) -> Result<PreparedPart> {
    let brick_order = order_of_side(kept.brick_side);
    let rts_order = order_of_side(kept.rts_side);
    let brick_rows =
        crate::kernels::refold_ranges(Layout::Brick, data, brick_order, &mut kept.brick, changed);
    let rows = crate::kernels::refold_ranges(Layout::Rts, data, rts_order, &mut kept.rts, changed);
    let bands = kept
        .rts_png
        .redeflate_rows(bytemuck::cast_slice(&kept.rts), &rows)
        .map_err(|e| Error::io(name, "compress", e))?;
    let pages: u64 = changed
        .iter()
        .map(|r| (r.end.div_ceil(REFOLD_PAGE) - r.start / REFOLD_PAGE) as u64)
        .sum();
    Ok(PreparedPart {
        brick: Some(kept.brick),
        refolded: Some(Refolded {
            pages,
            of_pages: data.len().div_ceil(REFOLD_PAGE) as u64,
            bands: bands as u64,
            of_bands: kept.rts_png.band_count() as u64,
            // Known once the brick is written.
            brick_bytes_written: 0,
        }),
        rts: Some(kept.rts_png),
        rts_texture: Some(kept.rts),
        brick_rows: Some(brick_rows),
    })
}

struct PartPlan {
    range: std::ops::Range<usize>,
    brick_side: u32,
    rts_side: u32,
}

fn plan_parts(len: u64, opts: &FoldOptions, notes: &mut Vec<String>) -> Vec<PartPlan> {
    let part_size = u64::from(opts.max_side) * u64::from(opts.max_side);
    let count = len.div_ceil(part_size).max(1);
    if count > 1 {
        notes.push(format!(
            "{len} bytes exceed one side-{} texture ({part_size} bytes); split into {count} parts",
            opts.max_side
        ));
    }
    (0..count)
        .map(|i| {
            let start = i * part_size;
            let end = (start + part_size).min(len);
            let part_len = end - start;
            let requested = opts.texture_size.map(|r| r.min(opts.max_side));
            PartPlan {
                range: start as usize..end as usize,
                brick_side: grown_side(
                    brick_min_side(part_len),
                    requested,
                    ".brick",
                    part_len,
                    notes,
                ),
                rts_side: grown_side(
                    rts_min_side(part_len),
                    requested,
                    ".rts.png",
                    part_len,
                    notes,
                ),
            }
        })
        .collect()
}

/// The textures `fold` makes of `len` bytes with `opts`: each part's byte range, with the sides
/// of its `.brick` and its `.rts.png` (what `locate` maps offsets on for an input not folded yet).
pub fn planned_parts(len: u64, opts: &FoldOptions) -> Vec<(std::ops::Range<u64>, u32, u32)> {
    plan_parts(len, opts, &mut Vec::new())
        .into_iter()
        .map(|p| {
            (
                p.range.start as u64..p.range.end as u64,
                p.brick_side,
                p.rts_side,
            )
        })
        .collect()
}

/// Folds the file at `input` into the outputs `target` names.
pub fn fold_file(
    backend: &Backend,
    input: &Path,
    target: &OutputTarget,
    opts: &FoldOptions,
    progress: &dyn Progress,
) -> Result<FoldReport> {
    check_fold_options(opts)?;
    check_stdout_options(target, opts)?;
    target.check()?;
    let data = read_input(input)?;
    fold_bytes(backend, input, &data, target, opts, progress)
}

/// `fold --name NAME`: a plain file name, for one input file folded into a directory.
pub fn check_output_name(name: &str, input: &Path, target: &OutputTarget) -> Result<()> {
    let plain = !matches!(name, "" | "." | "..") && !name.contains('/');
    if plain && !input.is_dir() && matches!(target, OutputTarget::Directory(_)) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "--name \"{name}\": give a plain file name, for one input file folded into a directory (-o DIR)"
    )))
}

/// `-o -` streams exactly one file: nothing may be written beside it.
fn check_stdout_options(target: &OutputTarget, opts: &FoldOptions) -> Result<()> {
    if !target.is_stdout() {
        return Ok(());
    }
    let beside = if opts.sidecars {
        Some("--sidecars")
    } else if opts.llm.is_some() {
        Some("--llm")
    } else if opts.sections != SectionChoice::None {
        Some("--sections")
    } else {
        None
    };
    match beside {
        Some(option) => Err(Error::Usage(format!(
            "{option} writes files beside the output; -o - writes one file to standard output"
        ))),
        None => Ok(()),
    }
}

fn check_fold_options(opts: &FoldOptions) -> Result<()> {
    check_side_option("--max-side", opts.max_side)?;
    if let Some(size) = opts.texture_size {
        if size == 0 || size > 1 << MAX_ORDER {
            return Err(Error::Usage(format!(
                "--texture-size {size} must be from 1 to {}",
                1u32 << MAX_ORDER
            )));
        }
        if size > opts.max_side {
            return Err(Error::Usage(format!(
                "--texture-size {size} is larger than --max-side {}; raise --max-side",
                opts.max_side
            )));
        }
    }
    if !opts.preview_side.is_power_of_two() || !PREVIEW_SIDES.contains(&opts.preview_side) {
        return Err(Error::Usage(format!(
            "--preview-side {} must be a power of two from {} to {}",
            opts.preview_side,
            PREVIEW_SIDES.start(),
            PREVIEW_SIDES.end()
        )));
    }
    Ok(())
}

/// Folds `data`, already read from `input` (which names the outputs and the report), into the
/// outputs `target` names.
pub fn fold_bytes(
    backend: &Backend,
    input: &Path,
    data: &[u8],
    target: &OutputTarget,
    opts: &FoldOptions,
    progress: &dyn Progress,
) -> Result<FoldReport> {
    fold_bytes_reusing(backend, input, data, target, opts, progress, None)
}

/// [`fold_bytes`], given what the last fold of an earlier version left: `(changed, reuse)`,
/// where `changed` is [`changed_pages`] (at [`REFOLD_PAGE`]) from the bytes that fold folded
/// to `data`. When the new version still fits the same single textures, only its changed
/// pages are re-folded; the outputs are byte for byte what a fresh fold writes. The reuse is
/// refilled for the next call (emptied when the source outgrows [`REFOLD_MAX_BYTES`] or needs
/// parts). Watch mode hands over the exact bytes it read and hashed.
pub fn fold_bytes_reusing(
    backend: &Backend,
    input: &Path,
    data: &[u8],
    target: &OutputTarget,
    opts: &FoldOptions,
    progress: &dyn Progress,
    reuse: Option<(Option<&[std::ops::Range<usize>]>, &mut FoldReuse)>,
) -> Result<FoldReport> {
    let started = Instant::now();
    check_fold_options(opts)?;
    check_stdout_options(target, opts)?;
    target.check()?;
    let (dir, name) = target.dir_and_name(input);
    let name = match (target, &opts.name) {
        (OutputTarget::Directory(_), Some(chosen)) => chosen.clone(),
        _ => name,
    };
    let mut notes = Vec::new();
    if let Some(size) = opts.texture_size.filter(|s| !s.is_power_of_two()) {
        notes.push(format!(
            "texture size {size} is not a power of two; using {}",
            size.next_power_of_two()
        ));
    }

    let plans = plan_parts(data.len() as u64, opts, &mut notes);
    let multi = plans.len() > 1;
    let to_stdout = target.is_stdout();
    if multi && to_stdout {
        return Err(Error::Usage(format!(
            "{}: {} needs {} parts at --max-side {}; -o - writes one file: raise --max-side or write to a directory",
            input.display(),
            human_bytes(data.len() as u64),
            plans.len(),
            opts.max_side
        )));
    }
    let (want_brick, want_rts, want_preview) = match target {
        OutputTarget::Directory(_) => (true, true, true),
        OutputTarget::Brick(_) => (true, false, false),
        OutputTarget::RtsPng(_) => (false, true, false),
        OutputTarget::Preview(_) => (false, false, true),
    };
    let part_size = u64::from(opts.max_side) * u64::from(opts.max_side);
    let layout_of = |side: fn(&PartPlan) -> u32, bytes_per_pixel| TextureLayout {
        part_size,
        part_orders: plans.iter().map(|p| order_of_side(side(p))).collect(),
        bytes_per_pixel,
    };
    let elf = match parse_elf(
        data,
        &layout_of(|p| p.brick_side, 1),
        &layout_of(|p| p.rts_side, 4),
    ) {
        ElfParse::NotElf => None,
        ElfParse::Parsed(info) => Some(*info),
        ElfParse::Corrupt(why) => {
            notes.push(format!(
                "{}: starts like ELF but does not parse ({why}); folded as plain bytes",
                input.display()
            ));
            None
        }
    };
    if let (Some(e), SectionChoice::Named(names)) = (&elf, &opts.sections) {
        refuse_unknown_sections(input, e, names)?;
    }
    // Local analysis always runs; the model is asked only with --llm.
    progress.stage("analysing", data.len() as u64);
    // Textures are kept for the next fold only when this one makes both in one part.
    let reusable = !multi && want_brick && want_rts && data.len() <= REFOLD_MAX_BYTES;
    let (changed_since_kept, mut reuse) = match reuse {
        Some((changed, reuse)) => (changed, Some(reuse)),
        None => (None, None),
    };
    let kept = reuse.as_mut().and_then(|r| r.kept.take()).filter(|k| {
        reusable
            && k.brick_side == plans[0].brick_side
            && k.rts_side == plans[0].rts_side
            && k.compression == opts.compression
    });
    let keep = reusable && reuse.is_some();
    // What changed since the fold that left the kept textures: only those pages are
    // re-folded, re-deflated and repainted in the previews.
    let changed: Option<&[std::ops::Range<usize>]> = kept.as_ref().and(changed_since_kept);
    let mut kept_analysis = reuse.as_mut().map(|r| std::mem::take(&mut r.analysis));
    // A kept preview is a whole image whatever the input's size, so only inputs at least as
    // large keep theirs: a watched tree of small files holds no image per file, and a small
    // preview is quick to summarise afresh.
    let keep_previews = keep && data.len() as u64 >= 4 * u64::from(opts.preview_side).pow(2);
    let mut kept_previews = match reuse.as_mut() {
        Some(r) if changed.is_some() => std::mem::take(&mut r.previews),
        _ => Vec::new(),
    };
    // One input for every kernel of this fold: on the GPU it is uploaded once, and the
    // parts, the preview and the sections outline all read that upload.
    let staged_input = backend.stage(data);
    // The first part is folded and deflated while the analysis runs beside it (and, of
    // several parts, hashed: a single part's facts are the whole file's, which the analysis
    // computes).
    let part_outputs = PartOutputs {
        brick: want_brick,
        rts: want_rts,
        keep_rts_texture: false,
    };
    let ((analysis, facts_of_all), mut first_prepared) = if multi {
        let first = &plans[0];
        let (analysis, (first_facts, prepared)) = rayon::join(
            || crate::analysis::local::analyze_with_facts(data),
            || {
                rayon::join(
                    || byte_facts(&data[first.range.clone()]),
                    || prepare_part(&staged_input, first, part_outputs, opts.compression, &name),
                )
            },
        );
        (analysis, Some((Some(first_facts), prepared)))
    } else {
        let plan = &plans[0];
        let (analysis, prepared) = rayon::join(
            || match kept_analysis.as_mut() {
                Some(k) => crate::analysis::local::analyze_reusing(data, changed, k),
                None => crate::analysis::local::analyze_with_facts(data),
            },
            || match (kept, &changed) {
                (Some(kept), Some(changed)) => prepare_part_from(kept, changed, data, &name),
                _ => prepare_part(
                    &staged_input,
                    plan,
                    PartOutputs {
                        brick: want_brick,
                        rts: want_rts,
                        keep_rts_texture: keep,
                    },
                    opts.compression,
                    &name,
                ),
            },
        );
        (analysis, Some((None, prepared)))
    };
    let llm_outcome = opts.llm.as_ref().map(|client| {
        client.describe(crate::llm::ArtifactRequest {
            name: &name,
            data,
            analysis: &analysis,
            intent: opts.intent.as_deref(),
        })
    });
    if let Some(o) = llm_outcome.as_ref().filter(|o| o.answer.is_none()) {
        notes.push(format!(
            "language model: {} ({}); metadata has the local analysis only",
            o.status,
            o.reason.as_deref().unwrap_or("no reason given")
        ));
    }
    let semantic = crate::semantic::semantic_json(&analysis, llm_outcome.as_ref());
    let write_sidecars = opts.sidecars || opts.llm.is_some();
    progress.advance(data.len() as u64);
    // The analysis hashed the whole file already; a single part's facts are the same.
    let mut facts = facts_of_all;
    // Only an ELF that parses counts as one; a corrupt one is plain bytes.
    facts.elf = elf.is_some();

    let mut staged = StagedOutputs::new()
        .with_group(crate::policy::output_group_of(input))
        .with_mode(
            opts.output_mode
                .unwrap_or_else(|| crate::policy::output_mode_of(input)),
        );
    let mut records: Vec<(&'static str, Option<u32>)> = Vec::new();
    let mut index_parts = Vec::new();
    let mut refolded = None;
    // The brick rows this fold re-folded, which a brick exchanged out of place lacks.
    let mut kept_brick_rows = None;
    progress.stage("folding", data.len() as u64);
    for (i, plan) in plans.iter().enumerate() {
        let bytes = &data[plan.range.clone()];
        let prepare = || prepare_part(&staged_input, plan, part_outputs, opts.compression, &name);
        let (part_facts, prepared) = match first_prepared.take() {
            Some((Some(part_facts), prepared)) => (part_facts, prepared),
            Some((None, prepared)) => (facts.clone(), prepared),
            // Hashing runs on one core while folding and deflating use the rest.
            None => rayon::join(|| byte_facts(bytes), prepare),
        };
        let mut prepared = prepared?;
        let part_name = if multi {
            parts::part_file_name(&name, i, plans.len(), "")
                .trim_end_matches('.')
                .to_string()
        } else {
            name.clone()
        };
        let part_info = multi.then(|| {
            json!({"index": i, "count": plans.len(), "offset": plan.range.start, "size": bytes.len(),
                   "whole_size": facts.size, "whole_sha256": facts.sha256_hex(),
                   "index_file": parts::index_file_name(&name)})
        });
        let mut entry = PartEntry {
            index: i,
            offset: plan.range.start as u64,
            size: bytes.len() as u64,
            sha256: part_facts.sha256_hex(),
            brick: None,
            rts_png: None,
        };
        if let Some(texture) = &prepared.brick {
            let path = match (target, multi) {
                (OutputTarget::Brick(p), false) => p.clone(),
                _ => dir.join(format!("{part_name}.brick")),
            };
            // Type flags describe the whole source; entropy flags the part itself.
            let mut header_flags = brick::flags_for(&facts) & !flags::IS_ENCRYPTED;
            header_flags |= brick::flags_for(&part_facts) & flags::IS_ENCRYPTED;
            let elf_here = elf.as_ref().filter(|_| i == 0);
            if elf_here.is_some() && to_stdout {
                notes.push(
                    "the brick's ELF sidecar (NAME.brick.meta.json) is not written with -o -"
                        .into(),
                );
            } else if part_info.is_some() || elf_here.is_some() || opts.llm.is_some() {
                header_flags |= flags::HAS_METADATA;
                let mut sidecar = json!({"version": "1", "name": part_name,
                    "description": crate::semantic::description(llm_outcome.as_ref(), &describe(&facts)),
                    "semantic": semantic.clone()});
                if let Some(info) = &part_info {
                    sidecar["part"] = info.clone();
                }
                if let Some(e) = elf_here {
                    sidecar["elf"] = serde_json::to_value(e).expect("ELF info serialises");
                }
                staged.write(&brick::sidecar_path(&path), |w| {
                    w.write_all(rts_png::ascii_json(&sidecar).as_bytes())
                })?;
                records.push(("brick_sidecar", None));
            }
            let header = BrickHeader::new(plan.brick_side, &part_facts, header_flags);
            // A re-folded brick starts as a clone of the last one written to the same path,
            // where the file system can: then only the header and the changed rows are written.
            let base = reuse
                .as_mut()
                .and_then(|r| r.brick_file.take())
                .filter(|k| k.path == path && prepared.brick_rows.is_some());
            let rows = prepared.brick_rows.as_deref().unwrap_or_default();
            // A spare goes with the last brick; without one it is stale, and dropped (removed).
            let spare = reuse
                .as_mut()
                .and_then(|r| r.brick_spare.take())
                .filter(|_| base.is_some());
            let (spare, rows_behind) = spare.unzip();
            let whole = (brick::HEADER_LEN + texture.len() * 4) as u64;
            let mut patched = None;
            let earlier = crate::format::staged::Earlier {
                last: base.as_ref().map(|k| &k.file),
                spare,
                keep_spare: keep && prepared.brick_rows.is_some(),
            };
            let written = staged.write_from_base(
                &path,
                earlier,
                whole,
                |file, basis| {
                    let mut rows = rows.to_vec();
                    if basis == crate::format::staged::Basis::Spare {
                        rows.extend(rows_behind.unwrap_or_default());
                    }
                    patched = Some(brick::patch_brick(file, &header, texture, &rows)?);
                    Ok(())
                },
                |w| brick::write_brick(w, &header, texture),
            )?;
            if let Some(r) = prepared.refolded.as_mut() {
                r.brick_bytes_written = patched.unwrap_or(whole);
            }
            if let (true, Some(r), Some(file)) = (keep, reuse.as_mut(), written) {
                r.brick_file = Some(KeptFile {
                    path: path.clone(),
                    file,
                });
                kept_brick_rows = prepared.brick_rows.clone();
            }
            records.push(("brick", Some(plan.brick_side)));
            entry.brick = path.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        if let Some(image) = &prepared.rts {
            let path = match (target, multi) {
                (OutputTarget::RtsPng(p), false) => p.clone(),
                _ => dir.join(format!("{part_name}.rts.png")),
            };
            let mut extra = Map::new();
            extra.insert("content".into(), json!(content_kind(&facts)));
            if let Some(info) = &part_info {
                extra.insert("part".into(), info.clone());
            }
            if let Some(e) = &elf {
                extra.insert("elf".into(), elf_summary(e));
            }
            extra.insert("semantic".into(), semantic.clone());
            let mut meta = rts_png::metadata(
                &part_name,
                &part_facts,
                plan.rts_side,
                &crate::semantic::description(llm_outcome.as_ref(), &describe(&facts)),
                extra,
            );
            if let (Some(e), false) = (&elf, multi) {
                add_section_offsets(&mut meta, e, bytes);
            }
            let text = rts_png::ascii_json(&meta);
            staged.write(&path, |w| rts_png::write_rts_png(w, image, &text, None))?;
            records.push(("rts_png", Some(plan.rts_side)));
            if write_sidecars {
                for sidecar in rts_png::sidecar_paths(&path) {
                    staged.write(&sidecar, |w| w.write_all(text.as_bytes()))?;
                    records.push(("rts_sidecar", None));
                }
            }
            entry.rts_png = path.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        index_parts.push(entry);
        progress.advance(bytes.len() as u64);
        refolded = prepared.refolded;
        if let (true, Some(reuse), Some(brick), Some(rts_png), Some(rts)) = (
            keep,
            reuse.as_mut(),
            prepared.brick,
            prepared.rts,
            prepared.rts_texture,
        ) {
            reuse.kept = Some(KeptTextures {
                brick_side: plan.brick_side,
                rts_side: plan.rts_side,
                compression: opts.compression,
                brick,
                rts,
                rts_png,
            });
        }
    }
    if let Some(e) = &elf {
        if opts.sections != SectionChoice::None {
            stage_section_bricks(
                e,
                data,
                &dir,
                &name,
                opts,
                &mut staged,
                &mut records,
                &mut notes,
            )?;
        }
    }
    if multi && (want_brick || want_rts) {
        let index = PartsIndex {
            format: parts::FORMAT.into(),
            version: 1,
            name: name.clone(),
            size: facts.size,
            sha256: facts.sha256_hex(),
            part_size: u64::from(opts.max_side) * u64::from(opts.max_side),
            max_side: opts.max_side,
            parts: index_parts,
        };
        let text = serde_json::to_string_pretty(&index).expect("index serialises");
        staged.write(&dir.join(parts::index_file_name(&name)), |w| {
            w.write_all(text.as_bytes())
        })?;
        records.push(("parts_index", None));
    }
    if want_preview {
        progress.stage("preview", 1);
        let order = if multi {
            order_for_cells(facts.size)
        } else {
            order_of_side(plans[0].brick_side)
        };
        // A watched file's previews are kept and repainted where its pages changed.
        let render = |palette, legend, kept: &mut Vec<preview::KeptPreview>| {
            preview::render_staged_reusing(
                &staged_input,
                Layout::Brick,
                order,
                palette,
                opts.preview_side,
                legend,
                changed,
                keep_previews.then_some(kept),
            )
        };
        let image = render(opts.palette, opts.legend, &mut kept_previews)?;
        let path = match target {
            OutputTarget::Preview(p) => p.clone(),
            _ => dir.join(format!("{name}.preview.png")),
        };
        staged.write(&path, |w| preview::write_png(w, &image))?;
        records.push(("preview", Some(opts.preview_side)));
        if let (Some(e), OutputTarget::Directory(_)) = (&elf, target) {
            let ranges: Vec<LabelledRange> = e
                .sections
                .iter()
                .filter(|s| s.size > 0)
                .map(|s| LabelledRange {
                    label: s.name.clone(),
                    start: s.offset,
                    end: s.offset + s.size,
                })
                .collect();
            // The outline goes on the byte-class preview: reuse it when that is
            // what was just rendered, rather than summarising the file twice.
            let base = if opts.palette == Palette::Byteclass && !opts.legend {
                image.clone()
            } else {
                render(Palette::Byteclass, false, &mut kept_previews)?
            };
            let overlay = preview::outline(base, Layout::Brick, order, &ranges);
            staged.write(&dir.join(format!("{name}.sections.png")), |w| {
                preview::write_png(w, &overlay)
            })?;
            records.push(("sections_preview", Some(opts.preview_side)));
        }
        // Only what this fold rendered describes its bytes: a byte-class image kept for an
        // earlier version's sections outline, not rendered now, would be stale.
        let sections_rendered = elf.is_some() && matches!(target, OutputTarget::Directory(_));
        kept_previews.retain(|k| {
            let side = opts.preview_side;
            k.image_for(Layout::Brick, order, opts.palette, side)
                .is_some()
                || (sections_rendered
                    && k.image_for(Layout::Brick, order, Palette::Byteclass, side)
                        .is_some())
        });
        progress.advance(1);
    }
    if let Some(r) = reuse.as_mut() {
        r.previews = if keep_previews {
            kept_previews
        } else {
            Vec::new()
        };
        r.analysis = kept_analysis.filter(|_| keep).unwrap_or_default();
    }
    progress.stage("writing", records.len() as u64);
    let (written, spares) = staged.commit_keeping_spares()?;
    // A brick exchanged out of place lacks what this fold re-folded: kept for the next one.
    if let Some(r) = reuse.as_mut() {
        r.brick_spare = kept_brick_rows.and_then(|rows| Some((spares.into_iter().next()?, rows)));
    }
    let outputs = written
        .into_iter()
        .zip(records)
        .map(|(w, (kind, side))| OutputRecord {
            path: w.path,
            kind,
            side,
            bytes: w.bytes,
        })
        .collect();
    Ok(FoldReport {
        input: input.to_path_buf(),
        name,
        flags: flags::names(brick::flags_for(&facts)),
        source: facts,
        backend: backend.label(),
        adapter: backend.adapter().cloned(),
        parts: plans.len(),
        elf,
        semantic,
        analysis,
        outputs,
        notes,
        refolded,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The small ELF summary the `.rts.png` text carries (the full map is in the brick sidecar).
fn elf_summary(e: &ElfInfo) -> Value {
    let mut v = json!({"class": e.class, "endian": e.endian, "kind": e.kind, "machine": e.machine,
                       "entry": e.entry, "stripped": e.stripped, "sections": e.sections.len()});
    if let Some(m) = &e.modinfo {
        v["modinfo"] = serde_json::to_value(m).expect("modinfo serialises");
    }
    v
}

/// Adds each section with file bytes to the PixelRTS `offsets` table, where readers expect regions.
fn add_section_offsets(meta: &mut Value, e: &ElfInfo, bytes: &[u8]) {
    let offsets = meta["offsets"]
        .as_object_mut()
        .expect("metadata has offsets");
    for s in e.sections.iter().filter(|s| s.size > 0) {
        let mut key = s.name.clone();
        let mut n = 1;
        while offsets.contains_key(&key) {
            n += 1;
            key = format!("{}#{n}", s.name);
        }
        let range = s.offset as usize..(s.offset + s.size) as usize;
        offsets.insert(
            key,
            json!({"offset": s.offset, "start": s.offset, "end": s.offset + s.size, "size": s.size,
                   "type": "elf-section", "kind": s.kind, "flags": s.flags,
                   "sha256": hex::encode(sha256(&bytes[range]))}),
        );
    }
}

/// A `--sections` name the ELF file does not have is a usage error, found before any work,
/// that lists the names it does have.
fn refuse_unknown_sections(input: &Path, e: &ElfInfo, names: &[String]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .filter(|wanted| !e.sections.iter().any(|s| &s.name == *wanted))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let present: Vec<&str> = e
        .sections
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    Err(Error::Usage(format!(
        "{}: no section {} (--sections takes \"all\" or names from: {})",
        input.display(),
        missing.join(", "),
        present.join(", ")
    )))
}

/// Folds the sections `--sections` selects into `NAME.STEM.brick`, one texture each.
#[allow(clippy::too_many_arguments)]
fn stage_section_bricks(
    e: &ElfInfo,
    data: &[u8],
    dir: &Path,
    name: &str,
    opts: &FoldOptions,
    staged: &mut StagedOutputs,
    records: &mut Vec<(&'static str, Option<u32>)>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let chosen: Vec<&ElfSection> = match &opts.sections {
        SectionChoice::None => Vec::new(),
        SectionChoice::All => e.sections.iter().filter(|s| s.size > 0).collect(),
        SectionChoice::Named(names) => e
            .sections
            .iter()
            .filter(|s| names.contains(&s.name))
            .collect(),
    };
    let capacity = u64::from(opts.max_side) * u64::from(opts.max_side);
    let mut used = std::collections::HashSet::new();
    for s in chosen {
        if s.size == 0 {
            notes.push(format!(
                "section {} has no bytes in the file (like .bss); no brick",
                s.name
            ));
            continue;
        }
        if s.size > capacity {
            notes.push(format!(
                "section {} ({} bytes) exceeds one --max-side texture; no brick",
                s.name, s.size
            ));
            continue;
        }
        let mut stem = crate::source::elf::section_file_stem(&s.name);
        while !used.insert(stem.clone()) {
            stem.push('_');
        }
        let bytes = &data[s.offset as usize..(s.offset + s.size) as usize];
        let facts = byte_facts(bytes);
        let side = brick_min_side(s.size);
        // Sections are small next to the file: the CPU fold beats a GPU round trip.
        let texture = Backend::Cpu.fold(Layout::Brick, bytes, order_of_side(side))?;
        let mut header_flags = brick::flags_for(&facts);
        if s.flags.contains('X') {
            header_flags |= flags::IS_EXECUTABLE;
        }
        let header = BrickHeader::new(side, &facts, header_flags);
        staged.write(&dir.join(format!("{name}.{stem}.brick")), |w| {
            brick::write_brick(w, &header, &texture)
        })?;
        records.push(("section_brick", Some(side)));
    }
    Ok(())
}

fn content_kind(facts: &ByteFacts) -> &'static str {
    if facts.elf {
        "elf"
    } else if facts.utf8_text {
        "text"
    } else {
        "data"
    }
}

/// Publishes a fold's `.rts.png` (each part, when split) with its `.brick` to the map.
pub fn publish(report: &FoldReport, builder: &Path) -> Result<crate::map::PublishReport> {
    publish_versioned(report, builder, None)
}

/// [`publish`], naming the tiles `NAME.vN.*` when `version` is given (live tiles).
pub fn publish_versioned(
    report: &FoldReport,
    builder: &Path,
    version: Option<u64>,
) -> Result<crate::map::PublishReport> {
    let key = report
        .input
        .canonicalize()
        .unwrap_or_else(|_| report.input.clone())
        .to_string_lossy()
        .into_owned();
    let pngs: Vec<&OutputRecord> = report
        .outputs
        .iter()
        .filter(|o| o.kind == "rts_png")
        .collect();
    if pngs.is_empty() {
        return Err(Error::Usage(
            "--publish needs an .rts.png: fold into a directory or a .rts.png".into(),
        ));
    }
    let bricks: Vec<&OutputRecord> = report
        .outputs
        .iter()
        .filter(|o| o.kind == "brick")
        .collect();
    let rels: Vec<String> = (0..pngs.len())
        .map(|i| {
            if pngs.len() == 1 {
                key.clone()
            } else {
                format!("{key}#{i:03}")
            }
        })
        .collect();
    let tiles: Vec<crate::map::Tile> = pngs
        .iter()
        .enumerate()
        .map(|(i, png)| crate::map::Tile {
            root: "files",
            rel: &rels[i],
            rts_png: &png.path,
            brick: bricks.get(i).map(|b| b.path.as_path()),
            version,
        })
        .collect();
    crate::map::BuilderRoot::open(builder)?.publish(&tiles)
}

/// Bytes decoded from one `.brick` or `.rts.png`, with what the file recorded.
pub struct Decoded {
    pub kind: FileKind,
    pub bytes: Vec<u8>,
    /// The SHA-256 the file recorded, lowercase hex.
    pub recorded_sha256: String,
    pub layout: Layout,
    pub order: u32,
}

/// Decodes a single `.brick` or `.rts.png` (no hash check: see [`verify`]).
pub fn decode(backend: &Backend, path: &Path) -> Result<Decoded> {
    match detect(path)? {
        FileKind::Brick => {
            let b = Brick::read(path)?;
            let order = b.header.hilbert_order;
            let bytes = backend.unfold(
                Layout::Brick,
                &b.texture,
                order,
                b.header.original_size as usize,
            )?;
            Ok(Decoded {
                kind: FileKind::Brick,
                bytes,
                recorded_sha256: hex::encode(b.header.hash),
                layout: Layout::Brick,
                order,
            })
        }
        FileKind::RtsPng => {
            let r = RtsPng::read(path)?;
            let recorded = r.data_hash().ok_or_else(|| {
                Error::malformed(path, "metadata has no data_hash to verify against")
            })?;
            let order = order_of_side(r.side);
            let bytes = backend.unfold(Layout::Rts, &r.texture, order, r.data_size() as usize)?;
            Ok(Decoded {
                kind: FileKind::RtsPng,
                bytes,
                recorded_sha256: recorded,
                layout: Layout::Rts,
                order,
            })
        }
        FileKind::PartsIndex => Err(Error::malformed(
            path,
            "is a parts index; expected one .brick or .rts.png",
        )),
        FileKind::Raw => Err(Error::malformed(
            path,
            "not a .brick (V2BR), .rts.png (PixelRTS) or parts index",
        )),
    }
}

/// Fails with [`Error::HashMismatch`] unless `bytes` hash to `expected`.
pub fn verify(path: &Path, bytes: &[u8], expected: &str) -> Result<String> {
    let actual = hex::encode(sha256(bytes));
    if actual != expected.to_ascii_lowercase() {
        return Err(Error::HashMismatch {
            path: path.to_path_buf(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(actual)
}

/// What an unfold did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnfoldReport {
    pub input: PathBuf,
    pub kind: FileKind,
    pub output: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub verified: bool,
    pub parts: usize,
    pub backend: &'static str,
    pub adapter: Option<AdapterDescription>,
}

/// Rebuilds the original bytes of a `.brick`, `.rts.png` or parts index into `output`,
/// verifying every SHA-256; nothing is written unless all of them match.
pub fn unfold_file(
    backend: &Backend,
    input: &Path,
    output: &Path,
    progress: &dyn Progress,
) -> Result<UnfoldReport> {
    crate::format::staged::check_output_file(output)?;
    let kind = detect(input)?;
    let mut staged = StagedOutputs::new();
    let (size, sha, parts) = if kind == FileKind::PartsIndex {
        let index = PartsIndex::read(input)?;
        let dir = input.parent().unwrap_or(Path::new("."));
        progress.stage("unfolding parts", index.size);
        let mut whole = sha2::Sha256::default();
        staged
            .write(output, |w| {
                for part in &index.parts {
                    let bytes = decode_part(backend, dir, part).map_err(std::io::Error::other)?;
                    sha2::Digest::update(&mut whole, &bytes);
                    w.write_all(&bytes)?;
                    progress.advance(part.size);
                }
                Ok(())
            })
            .map_err(|e| match e {
                // Surface the part's own error (hash mismatch, malformed) rather than a write error.
                Error::Io { source, .. } if source.get_ref().is_some_and(|s| s.is::<Error>()) => {
                    *source
                        .into_inner()
                        .expect("checked")
                        .downcast::<Error>()
                        .expect("checked")
                }
                other => other,
            })?;
        let actual = hex::encode(sha2::Digest::finalize(whole));
        if actual != index.sha256.to_ascii_lowercase() {
            return Err(Error::HashMismatch {
                path: input.to_path_buf(),
                expected: index.sha256,
                actual,
            });
        }
        (index.size, actual, index.parts.len())
    } else {
        progress.stage("unfolding", 1);
        let (bytes, sha) = decode_bytes(backend, input)?;
        staged.write(output, |w| w.write_all(&bytes))?;
        progress.advance(1);
        (bytes.len() as u64, sha, 1)
    };
    staged.commit()?;
    Ok(UnfoldReport {
        input: input.to_path_buf(),
        kind,
        output: output.to_path_buf(),
        size,
        sha256: sha,
        verified: true,
        parts,
        backend: backend.label(),
        adapter: backend.adapter().cloned(),
    })
}

/// The verified original bytes of a `.brick`, `.rts.png` or parts index, in memory, with
/// their SHA-256 (lowercase hex).
pub fn decode_bytes(backend: &Backend, path: &Path) -> Result<(Vec<u8>, String)> {
    if detect(path)? == FileKind::PartsIndex {
        let index = PartsIndex::read(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut bytes = Vec::with_capacity(index.size as usize);
        for part in &index.parts {
            bytes.extend(decode_part(backend, dir, part)?);
        }
        let sha = verify(path, &bytes, &index.sha256)?;
        return Ok((bytes, sha));
    }
    let decoded = decode(backend, path)?;
    let sha = verify(path, &decoded.bytes, &decoded.recorded_sha256)?;
    Ok((decoded.bytes, sha))
}

/// Decodes one part of a split, preferring its `.brick`, and checks its size and hash.
fn decode_part(backend: &Backend, dir: &Path, part: &PartEntry) -> Result<Vec<u8>> {
    let name = part
        .brick
        .iter()
        .chain(part.rts_png.iter())
        .find(|n| dir.join(n).exists())
        .ok_or_else(|| {
            Error::malformed(
                dir.join(
                    part.brick
                        .as_ref()
                        .or(part.rts_png.as_ref())
                        .expect("index checked"),
                ),
                format!("part {} is missing", part.index),
            )
        })?;
    let path = dir.join(name);
    let decoded = decode(backend, &path)?;
    if decoded.bytes.len() as u64 != part.size {
        return Err(Error::malformed(
            &path,
            format!(
                "holds {} bytes but the index says part {} has {}",
                decoded.bytes.len(),
                part.index,
                part.size
            ),
        ));
    }
    verify(&path, &decoded.bytes, &decoded.recorded_sha256)?;
    verify(&path, &decoded.bytes, &part.sha256)?;
    Ok(decoded.bytes)
}

/// Renders the preview of a `.brick`, `.rts.png` or any other file into `output`.
pub fn preview_file(
    backend: &Backend,
    input: &Path,
    output: &Path,
    palette: Palette,
    side: u32,
    legend: bool,
) -> Result<OutputRecord> {
    crate::format::staged::check_output_file(output)?;
    let (bytes, layout, order) = match detect(input)? {
        FileKind::Brick | FileKind::RtsPng => {
            let d = decode(backend, input)?;
            (d.bytes, d.layout, d.order)
        }
        FileKind::PartsIndex => {
            return Err(Error::malformed(
                input,
                "preview a part, or unfold the index first",
            ));
        }
        FileKind::Raw => {
            let data = read_input(input)?;
            let order = order_for_cells(data.len() as u64);
            (data, Layout::Brick, order)
        }
    };
    let image = preview::render(backend, &bytes, layout, order, palette, side, legend)?;
    let mut staged = StagedOutputs::new();
    staged.write(output, |w| preview::write_png(w, &image))?;
    let written = staged.commit()?.remove(0);
    Ok(OutputRecord {
        path: written.path,
        kind: "preview",
        side: Some(side),
        bytes: written.bytes,
    })
}

/// What `info` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InfoReport {
    pub path: PathBuf,
    pub kind: FileKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<BrickHeader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<PartsIndex>,
    pub side: Option<u32>,
    pub capacity_bytes: Option<u64>,
    pub data_size: u64,
    pub fill_percent: Option<f64>,
    pub entropy: Option<f64>,
    pub flags: Vec<&'static str>,
    pub sha256: Option<String>,
    pub valid: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl InfoReport {
    fn new(path: &Path, kind: FileKind) -> Self {
        InfoReport {
            path: path.to_path_buf(),
            kind,
            header: None,
            metadata: None,
            parts: None,
            side: None,
            capacity_bytes: None,
            data_size: 0,
            fill_percent: None,
            entropy: None,
            flags: Vec::new(),
            sha256: None,
            valid: false,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn set_payload(
        &mut self,
        side: u32,
        capacity: u64,
        data_size: u64,
        bytes: Option<&[u8]>,
        recorded: &str,
    ) {
        self.side = Some(side);
        self.capacity_bytes = Some(capacity);
        self.data_size = data_size;
        self.fill_percent = Some(if capacity == 0 {
            0.0
        } else {
            100.0 * data_size as f64 / capacity as f64
        });
        if let Some(bytes) = bytes {
            let facts = byte_facts(bytes);
            self.entropy = Some(facts.entropy);
            if facts.sha256_hex() != recorded.to_ascii_lowercase() {
                self.problems.push(format!(
                    "SHA-256 mismatch: recorded {recorded}, decoded bytes hash to {}",
                    facts.sha256_hex()
                ));
            }
            self.sha256 = Some(facts.sha256_hex());
        }
    }
}

/// Reads a `.brick`, `.rts.png` or parts index and judges it against the contract.
/// Only files that cannot be parsed at all are errors; everything else is a verdict.
pub fn info(backend: &Backend, path: &Path) -> Result<InfoReport> {
    let kind = detect(path)?;
    let mut report = InfoReport::new(path, kind);
    match kind {
        FileKind::Brick => info_brick(backend, path, &mut report)?,
        FileKind::RtsPng => info_rts(backend, path, &mut report)?,
        FileKind::PartsIndex => info_parts(backend, path, &mut report)?,
        FileKind::Raw => {
            return Err(Error::malformed(
                path,
                "not a .brick (V2BR), .rts.png (PixelRTS) or parts index",
            ))
        }
    }
    report.valid = report.problems.is_empty();
    Ok(report)
}

fn info_brick(backend: &Backend, path: &Path, report: &mut InfoReport) -> Result<()> {
    let b = Brick::read_lenient(path)?;
    let h = &b.header;
    report.flags = flags::names(h.flags);
    report.problems.extend(h.fatal_problems());
    report.warnings.extend(h.minor_problems());
    let decoded = if report.problems.is_empty() {
        report.problems.extend(b.pixel_problems());
        Some(backend.unfold(
            Layout::Brick,
            &b.texture,
            h.hilbert_order,
            h.original_size as usize,
        )?)
    } else {
        None
    };
    report.set_payload(
        h.width,
        h.capacity(),
        h.original_size,
        decoded.as_deref(),
        &hex::encode(h.hash),
    );
    if let (Some(recorded), Some(actual)) = (Some(h.entropy), report.entropy) {
        if (f64::from(recorded) - actual).abs() > 1e-3 {
            report.warnings.push(format!(
                "header entropy {recorded} differs from the data's {actual:.4}"
            ));
        }
    }
    let sidecar = brick::sidecar_path(path);
    let has_flag = h.flags & flags::HAS_METADATA != 0;
    match (has_flag, sidecar.exists()) {
        (true, false) => report.problems.push(format!(
            "HAS_METADATA is set but {} is missing",
            sidecar.display()
        )),
        (false, true) => report.warnings.push(format!(
            "{} exists but HAS_METADATA is not set",
            sidecar.display()
        )),
        (true, true) => {
            match std::fs::read_to_string(&sidecar).map(|t| serde_json::from_str::<Value>(&t)) {
                Ok(Ok(meta)) => {
                    if meta.get("version").is_some_and(|v| !v.is_string()) {
                        report.problems.push(format!(
                            "{}: \"version\" must be a string",
                            sidecar.display()
                        ));
                    }
                    report.metadata = Some(meta);
                }
                _ => report
                    .problems
                    .push(format!("{} is not valid JSON", sidecar.display())),
            }
        }
        (false, false) => {}
    }
    report.header = Some(b.header);
    Ok(())
}

fn info_rts(backend: &Backend, path: &Path, report: &mut InfoReport) -> Result<()> {
    let r = RtsPng::read(path)?;
    report.warnings.extend(r.warnings.iter().cloned());
    let chunks = rts_png::chunk_list(path)?;
    let position = |kind: &str, key: Option<&str>| {
        chunks
            .iter()
            .position(|(k, kw)| k == kind && (key.is_none() || kw.as_deref() == key))
    };
    let first_idat = position("IDAT", None).unwrap_or(usize::MAX);
    let first_text = position("tEXt", None);
    if first_text != position("tEXt", Some(rts_png::TEXT_KEY)) {
        report
            .warnings
            .push("the PixelRTS tEXt is not the first text chunk".into());
    }
    if let Some(bp) = position("tEXt", Some(rts_png::BLUEPRINT_KEY)) {
        if bp > first_idat {
            report
                .problems
                .push("the PixelRTS-Blueprint tEXt comes after IDAT".into());
        }
    }
    let order = order_of_side(r.side);
    let capacity = u64::from(r.side) * u64::from(r.side) * 4;
    let bytes = backend.unfold(Layout::Rts, &r.texture, order, r.data_size() as usize)?;
    match r.data_hash() {
        Some(recorded) => {
            report.set_payload(r.side, capacity, r.data_size(), Some(&bytes), &recorded)
        }
        None => {
            report.problems.push("metadata has no data_hash".into());
            report.set_payload(r.side, capacity, r.data_size(), None, "");
        }
    }
    let sidecars = rts_png::sidecar_paths(path);
    let present: Vec<_> = sidecars.iter().filter(|p| p.exists()).collect();
    if present.len() == 1 {
        report.problems.push(format!(
            "only one sidecar exists ({}); write both or none",
            present[0].display()
        ));
    }
    for sidecar in present {
        let same = std::fs::read_to_string(sidecar)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v == r.metadata);
        if !same {
            report.problems.push(format!(
                "{} differs from the embedded text (the Python tools would use the sidecar)",
                sidecar.display()
            ));
        }
    }
    report.metadata = Some(r.metadata);
    Ok(())
}

fn info_parts(backend: &Backend, path: &Path, report: &mut InfoReport) -> Result<()> {
    let index = PartsIndex::read(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut whole = sha2::Sha256::default();
    for part in &index.parts {
        match decode_part(backend, dir, part) {
            Ok(bytes) => sha2::Digest::update(&mut whole, &bytes),
            Err(e) => report.problems.push(format!("part {}: {e}", part.index)),
        }
    }
    report.data_size = index.size;
    if report.problems.is_empty() {
        let actual = hex::encode(sha2::Digest::finalize(whole));
        if actual != index.sha256 {
            report.problems.push(format!(
                "whole SHA-256 mismatch: index says {}, parts give {actual}",
                index.sha256
            ));
        }
        report.sha256 = Some(actual);
    }
    report.parts = Some(index);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of byte ranges that happen to hold one
    fn changed_pages_merges_neighbours_and_covers_a_changed_length() {
        let before = vec![0u8; 10_000];
        assert!(changed_pages(&before, &before, 4096).is_empty());
        let mut now = before.clone();
        now[10] = 1;
        now[4100] = 1;
        assert_eq!(changed_pages(&before, &now, 4096), [0..8192]);
        now[4100] = 0;
        now[9_999] = 1;
        assert_eq!(changed_pages(&before, &now, 4096), [0..4096, 8192..10_000]);
        assert_eq!(
            changed_pages(&before, &now[..5000], 4096),
            [0..4096, 5000..10_000]
        );
        assert_eq!(changed_pages(&before[..100], &before, 4096), [100..10_000]);
    }
}
