//! Watch mode: keeps bricks in step with the paths they come from. File-system events (notify)
//! pass through a debouncer (a pure state machine with an injected clock); `/proc` and `/sys`,
//! which inotify cannot see, are polled. A change re-folds only what changed, atomically, writes
//! a diff against the previous state, and republishes when asked.

mod spill;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fold::{self, FoldOptions, OutputTarget};
use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Collapses bursts of events per path: a path is due once it has been quiet for `quiet`, or
/// `max_delay` after its first event even if writes keep coming (so a continuous writer still
/// gets snapshots). Pure: the caller passes the time.
#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    max_delay: Duration,
    /// Path -> (first event, last event) of the burst in progress.
    pending: HashMap<PathBuf, (Instant, Instant)>,
}

impl Debouncer {
    pub fn new(quiet: Duration, max_delay: Duration) -> Self {
        Debouncer {
            quiet,
            max_delay: max_delay.max(quiet),
            pending: HashMap::new(),
        }
    }

    /// Records an event on `path` at `now`.
    pub fn event(&mut self, path: PathBuf, now: Instant) {
        self.pending
            .entry(path)
            .and_modify(|(_, last)| *last = now)
            .or_insert((now, now));
    }

    /// Takes the paths whose burst is over at `now`, in path order.
    pub fn due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, (first, last))| {
                now.duration_since(*last) >= self.quiet
                    || now.duration_since(*first) >= self.max_delay
            })
            .map(|(p, _)| p.clone())
            .collect();
        due.sort();
        for p in &due {
            self.pending.remove(p);
        }
        due
    }

    /// When the next path falls due, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|(first, last)| (*last + self.quiet).min(*first + self.max_delay))
            .min()
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether any path at or below `root` is still waiting.
    pub fn is_pending_under(&self, root: &Path) -> bool {
        self.pending.keys().any(|p| p.starts_with(root))
    }
}

/// `--debounce` and `--max-delay` when not given (the `watch_path` task uses them too).
pub const DEFAULT_DEBOUNCE: &str = "100ms";
pub const DEFAULT_MAX_DELAY: &str = "2s";

/// How to watch.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub output: PathBuf,
    /// Polling period for `/proc` and `/sys` targets, and the stat check of file targets.
    pub interval: Duration,
    pub debounce: Duration,
    /// Longest a continuously changing path waits for its re-fold.
    pub max_delay: Duration,
    pub publish: Option<PathBuf>,
    /// Name each re-fold's outputs `NAME.vN.*` (for readers that cache by path).
    pub versioned: bool,
    /// Fold options for every re-fold (`name` is set per path).
    pub fold: FoldOptions,
    /// Stop after this many re-folds (tests, batch runs).
    pub max_refolds: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Task-driven watches: every re-fold checks the path again, so a watched file replaced by
    /// a symlink to something denied is refused (reported as a failed re-fold).
    pub policy: Option<std::sync::Arc<crate::policy::Policy>>,
}

/// One thing that happened, reported as it happens.
#[derive(Clone, Debug, Serialize)]
pub struct WatchEvent {
    pub path: PathBuf,
    /// `refolded`, `vanished`, `failed`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<PathBuf>,
    /// The diff against the previous state, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<PathBuf>,
    /// The diff's exact `difference.percent`: bytes that differ byte by byte, of the larger state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_different: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How much was re-folded, when the last fold's textures were updated in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refolded: Option<fold::Refolded>,
    /// From the first event of the burst (or the poll that saw it) to the outputs in place.
    pub latency_seconds: f64,
    pub version: u64,
}

impl WatchEvent {
    /// An event of `kind` about `path` at `version`, its outcome still to fill in.
    fn new(path: &Path, kind: &'static str, version: u64) -> Self {
        WatchEvent {
            path: path.to_path_buf(),
            kind,
            sha256: None,
            size: None,
            outputs: Vec::new(),
            diff: None,
            percent_different: None,
            error: None,
            refolded: None,
            latency_seconds: 0.0,
            version,
        }
    }

    /// Writes the diff from `a` to `b` into `dir` and records it, or why it failed (the
    /// outputs already stand either way).
    fn record_diff(
        &mut self,
        backend: &Backend,
        a: &crate::diff::Side,
        b: &crate::diff::Side,
        dir: PathBuf,
        bases: Option<[&crate::format::preview::PreviewImage; 2]>,
    ) {
        // A watch writes its next state soon: its patches never spend seconds on literals.
        let opts = crate::diff::DiffOptions {
            literal_effort: crate::diff::patch::LiteralEffort::Fast,
            ..Default::default()
        };
        let started = Instant::now();
        match crate::diff::write_diff_in_series(backend, a, b, &dir, &opts, started, None, bases) {
            Ok(d) => {
                self.percent_different = Some(d.difference.percent);
                self.diff = Some(dir);
            }
            Err(e) => self.error = Some(format!("outputs written, diff failed: {e}")),
        }
    }

    /// Publishes a re-fold's outputs when the watch publishes, recording a failure.
    fn republish(&mut self, report: &fold::FoldReport, opts: &WatchOptions, version: u64) {
        if let Some(builder) = &opts.publish {
            let tile_version = opts.versioned.then_some(version);
            if let Err(e) = fold::publish_versioned(report, builder, tile_version) {
                self.error = Some(format!("outputs written, publishing failed: {e}"));
            }
        }
    }
}

/// Totals when the watch ends.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchSummary {
    pub refolds: u64,
    /// Districts of watched trees rebuilt.
    pub districts: u64,
    pub failures: u64,
    pub vanished: u64,
    pub events_ignored: u64,
    pub seconds: f64,
}

/// What is being watched.
#[derive(Clone, Debug)]
enum Target {
    /// One file, watched through its parent directory so deletion, re-creation, renames and
    /// symlink swaps are all seen.
    File { path: PathBuf },
    /// Every file under a directory, re-folded one by one as they change.
    Tree { root: PathBuf },
    /// `/proc` and `/sys` files: read every `interval`.
    Polled { path: PathBuf },
}

/// What was last folded for one source file.
#[derive(Default)]
struct Folded {
    sha256: Option<[u8; 32]>,
    /// The bytes last folded, for the diff against the next state.
    last: Option<LastBytes>,
    /// Those bytes cut into the diff's chunks, once a diff has cut them: the next diff
    /// re-cuts only around what changed.
    chunking: Option<std::sync::Arc<crate::diff::align::Chunking>>,
    /// (size, modified) seen by the last read, to notice a write that raced the read.
    stamp: Option<(u64, std::time::SystemTime)>,
    version: u64,
    present: bool,
    /// The last fold's textures, so an edit re-folds only its pages.
    reuse: fold::FoldReuse,
    /// Output mode the file's bytes call for ([`crate::policy::output_mode_of`]).
    mode: u32,
}

/// How long a watched tree must be quiet before its district is rebuilt (at least
/// `--debounce`; at most `--max-delay` after the first change, for a tree that never rests).
pub const DISTRICT_QUIET: Duration = Duration::from_millis(250);

impl TreeDistrict {
    /// When this district should be rebuilt, if it is stale.
    fn due_at(&self, opts: &WatchOptions) -> Option<Instant> {
        let (first, last) = (self.since?, self.last_change?);
        self.stale
            .then(|| (last + DISTRICT_QUIET.max(opts.debounce)).min(first + opts.max_delay))
    }
}

/// Largest district whose textures are kept between builds, so that a change re-folds only
/// its pages.
pub const DISTRICT_REFOLD_MAX_BYTES: usize = 8 << 20;

/// Largest watched tree whose district is kept: its files' bytes are held in memory to build
/// it (and the last state for the diff).
pub const DISTRICT_MAX_BYTES: usize = 256 << 20;

/// A watched tree's district: its files concatenated in path order into one texture
/// (`OUT/NAME.district.*`), rebuilt once the tree goes quiet after a change. Only the pages
/// that changed or moved are re-folded: an edit that keeps a file's size touches its own
/// pages; one that changes it shifts the files after it.
#[derive(Default)]
struct TreeDistrict {
    /// A file of the tree changed since the district was last built.
    stale: bool,
    /// When the first of those changes was seen, and the last.
    since: Option<Instant>,
    last_change: Option<Instant>,
    /// The stream last folded, its SHA-256, its files (path -> SHA-256) and their ranges, for
    /// the diff.
    stream: Option<LastBytes>,
    sha256: [u8; 32],
    members: BTreeMap<String, String>,
    regions: Vec<crate::diff::NamedRange>,
    reuse: fold::FoldReuse,
    version: u64,
}

/// A time already `by` in the past, so the debouncer treats the path as due at once.
fn overdue(now: Instant, by: Duration) -> Instant {
    now.checked_sub(by).unwrap_or(now)
}

fn is_pseudo(path: &Path) -> bool {
    path.starts_with("/proc") || path.starts_with("/sys")
}

fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Two targets whose outputs would land on the same names (`a/config` and `b/config`, or two
/// trees both called `src`) would overwrite each other: refuse, naming both.
fn refuse_shared_outputs(targets: &[Target], paths: &[PathBuf]) -> Result<()> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for (t, given) in targets.iter().zip(paths) {
        let (Target::File { path } | Target::Polled { path } | Target::Tree { root: path }) = t;
        let mut key = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if matches!(t, Target::Tree { .. }) {
            key = format!("files/{key}");
        }
        if let Some(other) = seen.insert(key.clone(), given) {
            return Err(Error::Usage(format!(
                "{} and {} would both write OUT/{key}*; watch them into separate output folders",
                other.display(),
                given.display()
            )));
        }
    }
    Ok(())
}

/// Output directory and NAME for `source`.
fn destination(opts: &WatchOptions, targets: &[Target], source: &Path) -> (PathBuf, String) {
    for t in targets {
        if let Target::Tree { root } = t {
            if let Ok(rel) = source.strip_prefix(root) {
                let root_name = root
                    .file_name()
                    .map_or("root".into(), |n| n.to_string_lossy().into_owned());
                let rel_dir = rel.parent().unwrap_or(Path::new(""));
                let dir = opts.output.join("files").join(root_name).join(rel_dir);
                let name = rel
                    .file_name()
                    .map_or("file".into(), |n| n.to_string_lossy().into_owned());
                return (dir, name);
            }
        }
    }
    let name = source
        .file_name()
        .map_or("input".into(), |n| n.to_string_lossy().into_owned());
    (opts.output.clone(), name)
}

/// Raises the soft limit on open descriptors to the hard one: each watched file holds its last
/// brick open (the next one's clone source), and the soft limit is often 1024. A watch that
/// may not raise it keeps the limit it has.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    // None is unlimited.
    let below = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Bytes last folded, kept for the next diff: in memory (a watched file, or when the state
/// folder failed), or in the watch's state folder (a file of a watched tree, a district).
enum LastBytes {
    Memory(Vec<u8>),
    Spilled(spill::Spilled),
}

impl LastBytes {
    fn len(&self) -> usize {
        match self {
            LastBytes::Memory(bytes) => bytes.len(),
            LastBytes::Spilled(kept) => kept.len() as usize,
        }
    }

    fn in_memory(&self) -> Option<&[u8]> {
        match self {
            LastBytes::Memory(bytes) => Some(bytes),
            LastBytes::Spilled(_) => None,
        }
    }
}

/// The watch's state folder ([`spill::Spill`]), made on first use in the output folder.
struct KeptStates {
    output: PathBuf,
    spill: Option<spill::Spill>,
}

impl KeptStates {
    fn new(output: &Path) -> Self {
        KeptStates {
            output: output.to_path_buf(),
            spill: None,
        }
    }

    /// Keeps `bytes` in the state folder when `on_disk`, else in memory; a folder that fails
    /// keeps them in memory and says why.
    fn keep(&mut self, bytes: Vec<u8>, on_disk: bool) -> (LastBytes, Option<Error>) {
        if !on_disk {
            return (LastBytes::Memory(bytes), None);
        }
        let stored = match &mut self.spill {
            Some(spill) => spill.store(&bytes),
            empty => spill::Spill::create(&self.output)
                .and_then(|spill| empty.insert(spill).store(&bytes)),
        };
        match stored {
            Ok(kept) => (LastBytes::Spilled(kept), None),
            Err(e) => (LastBytes::Memory(bytes), Some(e)),
        }
    }

    fn spill(&mut self) -> Result<&mut spill::Spill> {
        self.spill.as_mut().ok_or_else(|| {
            Error::malformed(&self.output, "holds no watch state folder to read from")
        })
    }

    /// The kept bytes, which stay kept.
    fn read<'a>(&mut self, last: &'a LastBytes) -> Result<std::borrow::Cow<'a, [u8]>> {
        match last {
            LastBytes::Memory(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            LastBytes::Spilled(kept) => Ok(std::borrow::Cow::Owned(self.spill()?.read(kept)?)),
        }
    }

    /// The kept bytes, forgotten.
    fn take(&mut self, last: LastBytes) -> Result<Vec<u8>> {
        match last {
            LastBytes::Memory(bytes) => Ok(bytes),
            LastBytes::Spilled(kept) => self.spill()?.take(kept),
        }
    }

    /// Forgets kept bytes unread.
    fn forget(&mut self, last: LastBytes) {
        if let (LastBytes::Spilled(kept), Some(spill)) = (last, &mut self.spill) {
            spill.remove(kept);
        }
    }
}

/// Largest file whose last state is kept in memory for the diff against the next one.
const KEEP_FOR_DIFF: usize = 256 << 20;

/// Watches `paths` until `stop` is set (or a limit in `opts` is reached), calling `report` for
/// every re-fold, failure and disappearance.
pub fn watch(
    backend: &Backend,
    paths: &[PathBuf],
    opts: &WatchOptions,
    stop: &AtomicBool,
    report: &mut dyn FnMut(&WatchEvent),
) -> Result<WatchSummary> {
    let started = Instant::now();
    if paths.is_empty() {
        return Err(Error::Usage("watch needs at least one path".into()));
    }
    if opts.interval.is_zero() {
        return Err(Error::Usage(
            "--interval must be more than 0 (it paces /proc and /sys polling)".into(),
        ));
    }
    raise_open_file_limit();
    // Every path must exist before OUT is made: a mistyped path leaves nothing behind.
    for p in paths {
        std::fs::symlink_metadata(p).map_err(|e| Error::io(p, "read", e))?;
    }
    crate::format::staged::create_dir_all(&opts.output)?;
    // Our own outputs must never trigger us: compare canonical paths.
    let output_root = opts
        .output
        .canonicalize()
        .map_err(|e| Error::io(&opts.output, "resolve", e))?;
    let mut targets = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, "read", e))?;
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, "resolve", e))?;
        targets.push(if is_pseudo(&abs) {
            Target::Polled { path: abs }
        } else if meta.is_dir() {
            Target::Tree {
                root: abs.canonicalize().map_err(|e| Error::io(p, "resolve", e))?,
            }
        } else {
            Target::File { path: abs }
        });
    }

    refuse_shared_outputs(&targets, paths)?;

    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)
        .map_err(|e| Error::Usage(format!("cannot start file-system notifications: {e}")))?;
    for t in &targets {
        let (dir, mode) = match t {
            Target::File { path } => (
                path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                RecursiveMode::NonRecursive,
            ),
            Target::Tree { root } => (root.clone(), RecursiveMode::Recursive),
            Target::Polled { .. } => continue,
        };
        watcher
            .watch(&dir, mode)
            .map_err(|e| Error::io(&dir, "watch", std::io::Error::other(e.to_string())))?;
    }

    let mut state: BTreeMap<PathBuf, Folded> = BTreeMap::new();
    let mut districts: HashMap<PathBuf, TreeDistrict> = HashMap::new();
    // Made when a tree file is first kept: single files keep their last state in memory.
    let mut kept_states = KeptStates::new(&opts.output);
    let mut debouncer = Debouncer::new(opts.debounce, opts.max_delay);
    let mut first_seen: HashMap<PathBuf, Instant> = HashMap::new();
    let mut summary = WatchSummary::default();
    // Everything is folded once at start, so the outputs exist before the first change.
    let now = Instant::now();
    for t in &targets {
        match t {
            Target::File { path } | Target::Polled { path } => {
                debouncer.event(path.clone(), overdue(now, opts.max_delay))
            }
            Target::Tree { root } => {
                for entry in
                    crate::source::tree::walk(std::slice::from_ref(root), &Default::default())?
                        .files
                {
                    if !entry.abs.starts_with(&output_root) {
                        debouncer.event(entry.abs, overdue(now, opts.max_delay));
                    }
                }
            }
        }
    }
    let mut next_poll = Instant::now() + opts.interval;
    let limit_reached = |s: &WatchSummary| opts.max_refolds.is_some_and(|m| s.refolds >= m);
    while !stop.load(Ordering::Relaxed) && !limit_reached(&summary) {
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let wake = debouncer
            .next_deadline()
            .into_iter()
            .chain(districts.values().filter_map(|d| d.due_at(opts)))
            .fold(next_poll, Instant::min)
            .min(Instant::now() + Duration::from_millis(200));
        let timeout = wake.saturating_duration_since(Instant::now());
        if let Ok(message) = rx.recv_timeout(timeout) {
            for m in std::iter::once(message).chain(rx.try_iter()) {
                let Ok(event) = m else { continue };
                // Our own reads raise open/close-read events: only changes count, and a
                // writer closing the file.
                if let notify::EventKind::Access(kind) = event.kind {
                    if kind != notify::event::AccessKind::Close(notify::event::AccessMode::Write) {
                        summary.events_ignored += 1;
                        continue;
                    }
                }
                let now = Instant::now();
                for path in event.paths {
                    // A directory inside a tree (created, or moved in with its files): its
                    // files are what gets folded.
                    let in_a_tree = targets
                        .iter()
                        .any(|t| matches!(t, Target::Tree { root } if path.starts_with(root)));
                    if in_a_tree && path.is_dir() {
                        if !path.starts_with(&output_root) {
                            if let Ok(found) = crate::source::tree::walk(
                                std::slice::from_ref(&path),
                                &Default::default(),
                            ) {
                                for entry in found
                                    .files
                                    .into_iter()
                                    .filter(|f| !f.abs.starts_with(&output_root))
                                {
                                    first_seen.entry(entry.abs.clone()).or_insert(now);
                                    debouncer.event(entry.abs, now);
                                }
                            }
                        }
                        continue;
                    }
                    if path.starts_with(&output_root) || !wanted(&targets, &path) {
                        summary.events_ignored += 1;
                        continue;
                    }
                    first_seen.entry(path.clone()).or_insert(now);
                    debouncer.event(path, now);
                }
            }
        }
        let now = Instant::now();
        if now >= next_poll {
            next_poll = now + opts.interval;
            for t in &targets {
                match t {
                    // Polled files are read whole each tick; unchanged content is skipped below.
                    Target::Polled { path } => {
                        debouncer.event(path.clone(), overdue(now, opts.max_delay))
                    }
                    // A cheap stat catches what notify may miss (a swap done on another mount).
                    Target::File { path } => {
                        let folded = state.get(path);
                        let known = folded.and_then(|f| f.stamp);
                        let present = folded.is_some_and(|f| f.present);
                        let current = stamp(path);
                        if current != known && (current.is_some() || present) {
                            first_seen.entry(path.clone()).or_insert(now);
                            debouncer.event(path.clone(), overdue(now, opts.max_delay));
                        }
                    }
                    Target::Tree { .. } => {}
                }
            }
        }
        for path in debouncer.due(Instant::now()) {
            let since = first_seen.remove(&path).unwrap_or_else(Instant::now);
            let folded = state.entry(path.clone()).or_default();
            if let Some(event) = refold(
                backend,
                &path,
                opts,
                &targets,
                folded,
                &mut kept_states,
                since,
            ) {
                match event.kind {
                    "refolded" => summary.refolds += 1,
                    "failed" => summary.failures += 1,
                    _ => summary.vanished += 1,
                }
                if event.kind != "failed" {
                    if let Some(root) = tree_of(&targets, &path) {
                        let district = districts.entry(root.to_path_buf()).or_default();
                        district.stale = true;
                        district.since = Some(district.since.map_or(since, |s| s.min(since)));
                        district.last_change = Some(Instant::now());
                    }
                }
                report(&event);
            }
            // A write that raced the read: fold again once it settles, so the final state lands.
            if folded.present && stamp(&path) != folded.stamp {
                first_seen.entry(path.clone()).or_insert(since);
                debouncer.event(path.clone(), Instant::now());
            }
        }
        // A tree's district waits until none of its files is pending and the tree has been
        // quiet a while, so a burst of edits is one rebuild and does not hold up their bricks.
        let now = Instant::now();
        for (root, district) in districts.iter_mut() {
            let due = district.due_at(opts).is_some_and(|at| at <= now);
            if due && !debouncer.is_pending_under(root) {
                let event =
                    rebuild_district(backend, root, opts, &state, district, &mut kept_states);
                if event.kind == "district" {
                    summary.districts += 1;
                } else {
                    summary.failures += 1;
                }
                report(&event);
            }
        }
    }
    drop(watcher);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The watched tree `path` lies in, if any.
fn tree_of<'a>(targets: &'a [Target], path: &Path) -> Option<&'a Path> {
    targets.iter().find_map(|t| match t {
        Target::Tree { root } if path.starts_with(root) => Some(root.as_path()),
        _ => None,
    })
}

/// Folds the files of the tree at `root` (their last folded bytes, in path order) into its
/// district, re-folding only what changed since the last build, and writes `NAME.district.json`
/// (where each file lies in the stream) and a diff against the last build.
fn rebuild_district(
    backend: &Backend,
    root: &Path,
    opts: &WatchOptions,
    state: &BTreeMap<PathBuf, Folded>,
    district: &mut TreeDistrict,
    kept_states: &mut KeptStates,
) -> WatchEvent {
    let since = district.since.take().unwrap_or_else(Instant::now);
    district.stale = false;
    let mut event = WatchEvent::new(root, "district", district.version);
    let fail = |event: &mut WatchEvent, why: String| {
        event.kind = "failed";
        event.error = Some(why);
        event.latency_seconds = since.elapsed().as_secs_f64();
        event.clone()
    };
    let mut stream = Vec::new();
    let mut members = BTreeMap::new();
    let mut regions = Vec::new();
    let mut files = Vec::new();
    // Most private of the files: what the district reveals.
    let mut mode = 0o644;
    let under_root = state
        .range::<Path, _>((std::ops::Bound::Included(root), std::ops::Bound::Unbounded))
        .take_while(|(p, _)| p.starts_with(root));
    for (path, folded) in under_root {
        if !folded.present {
            continue;
        }
        // Never folded (unreadable so far): not in the district until it is.
        let Some(sha) = folded.sha256 else {
            continue;
        };
        let bytes = match folded.last.as_ref().map(|last| kept_states.read(last)) {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return fail(&mut event, format!("district not rebuilt: {e}")),
            None => {
                return fail(
                    &mut event,
                    format!(
                        "district not rebuilt: {} is too big to hold for it (over {} bytes)",
                        path.display(),
                        KEEP_FOR_DIFF
                    ),
                )
            }
        };
        if stream.len() + bytes.len() > DISTRICT_MAX_BYTES {
            return fail(
                &mut event,
                format!(
                    "district not rebuilt: the tree holds more than {} MiB; `foundry-gpu snapshot` folds big trees",
                    DISTRICT_MAX_BYTES >> 20
                ),
            );
        }
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        let start = stream.len() as u64;
        stream.extend_from_slice(&bytes);
        let end = stream.len() as u64;
        files.push(
            serde_json::json!({"path": rel, "offset": start, "size": end - start,
                                      "sha256": hex::encode(sha)}),
        );
        regions.push(crate::diff::NamedRange {
            name: rel.clone(),
            start,
            end,
        });
        members.insert(rel, hex::encode(sha));
        mode &= folded.mode;
    }
    let root_name = root
        .file_name()
        .map_or("root".into(), |n| n.to_string_lossy().into_owned());
    let version = district.version + 1;
    let name = match opts.versioned {
        true => format!("{root_name}.district.v{version}"),
        false => format!("{root_name}.district"),
    };
    let fold_opts = FoldOptions {
        name: Some(name.clone()),
        // A stream of many files: their sections and a model's summary belong to the files.
        sections: fold::SectionChoice::None,
        llm: None,
        sidecars: false,
        output_mode: Some(mode),
        ..opts.fold.clone()
    };
    if stream.len() > DISTRICT_REFOLD_MAX_BYTES {
        district.reuse = fold::FoldReuse::default();
    }
    // Read, not taken: a build that fails keeps the last one's stream for the next diff.
    let previous = match district.stream.as_ref().map(|last| kept_states.read(last)) {
        Some(Ok(previous)) => Some(previous),
        Some(Err(e)) => return fail(&mut event, format!("district not rebuilt: {e}")),
        None => None,
    };
    // A small district re-folds only the pages that changed since the last build.
    let refold = stream.len() <= DISTRICT_REFOLD_MAX_BYTES;
    let changed = previous
        .as_deref()
        .filter(|_| refold)
        .map(|previous| fold::changed_pages(previous, &stream, fold::REFOLD_PAGE));
    let folded = fold::fold_bytes_reusing(
        backend,
        root,
        &stream,
        &OutputTarget::Directory(opts.output.clone()),
        &fold_opts,
        &crate::progress::Silent,
        // Kept textures are up to 13 times the stream (a 26 MiB tree keeps a 256 MiB brick
        // texture), so only small districts keep theirs; a larger one is folded afresh each
        // time it is rebuilt, which happens once its tree has gone quiet.
        refold.then_some((changed.as_deref(), &mut district.reuse)),
    );
    let report = match folded {
        Ok(r) => r,
        Err(e) => {
            // What the failed fold kept may describe a stream other than the last one built.
            district.reuse = fold::FoldReuse::default();
            return fail(&mut event, format!("district: {e}"));
        }
    };
    let index = serde_json::json!({"format": "foundry-gpu-watched-district", "version": 1,
        "root": root, "size": stream.len(), "sha256": report.source.sha256_hex(), "files": files});
    let index_path = opts.output.join(format!("{name}.json"));
    let mut staged = crate::format::staged::StagedOutputs::new().with_mode(mode);
    let written = staged
        .write(&index_path, |w| {
            serde_json::to_writer_pretty(w, &index).map_err(std::io::Error::other)
        })
        .and_then(|_| staged.commit());
    if let Err(e) = written {
        // The stream stays the last one built, which the kept state no longer describes.
        district.reuse = fold::FoldReuse::default();
        return fail(&mut event, format!("district index: {e}"));
    }
    event.outputs = report.outputs.iter().map(|o| o.path.clone()).collect();
    event.outputs.push(index_path);
    event.refolded = report.refolded;
    let sha = report.source.sha256;
    if let Some(previous) = previous {
        let side = |bytes, sha256, regions, members| crate::diff::Side {
            path: root.to_path_buf(),
            kind: "district",
            bytes,
            sha256,
            regions,
            members: Some(members),
            output_mode: mode,
            chunking: None,
        };
        let a = side(
            previous.into_owned(),
            district.sha256,
            std::mem::take(&mut district.regions),
            std::mem::take(&mut district.members),
        );
        let b = side(stream, sha, regions, members);
        event.record_diff(
            backend,
            &a,
            &b,
            opts.output.join(format!("{name}.diff")),
            None,
        );
        (stream, regions, members) = (b.bytes, b.regions, b.members.unwrap_or_default());
    }
    event.republish(&report, opts, version);
    event.sha256 = Some(hex::encode(sha));
    event.size = Some(stream.len() as u64);
    event.version = version;
    district.version = version;
    district.sha256 = sha;
    if let Some(old) = district.stream.take() {
        kept_states.forget(old);
    }
    district.stream = Some(kept_states.keep(stream, true).0);
    district.regions = regions;
    district.members = members;
    event.latency_seconds = since.elapsed().as_secs_f64();
    event
}

/// Whether an event path concerns a target (a file target's name in its directory, or anything
/// under a tree).
fn wanted(targets: &[Target], path: &Path) -> bool {
    targets.iter().any(|t| match t {
        Target::File { path: p } => p == path,
        Target::Tree { root } => path.starts_with(root),
        Target::Polled { .. } => false,
    })
}

/// Re-folds `path` if its content changed; `None` when nothing needs saying.
fn refold(
    backend: &Backend,
    path: &Path,
    opts: &WatchOptions,
    targets: &[Target],
    folded: &mut Folded,
    kept_states: &mut KeptStates,
    since: Instant,
) -> Option<WatchEvent> {
    let mut event = WatchEvent::new(path, "refolded", folded.version);
    let before = stamp(path);
    let refused = opts.policy.as_ref().and_then(|p| {
        p.check_source(Path::new("/"), path)
            .err()
            .map(|r| r.into_error(path))
    });
    let bytes = match (refused, std::fs::metadata(path)) {
        (Some(refusal), _) => Err(refusal),
        (None, Ok(m)) if m.is_file() || is_pseudo(path) => crate::source::read_input(path),
        (None, Ok(_)) => Err(Error::malformed(path, "is no longer a regular file")),
        (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let was_present = folded.present;
            folded.present = false;
            folded.stamp = None;
            if !was_present {
                return None;
            }
            event.kind = "vanished";
            event.latency_seconds = since.elapsed().as_secs_f64();
            return Some(event);
        }
        (None, Err(e)) => Err(Error::io(path, "read", e)),
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            // Reported now, retried on the next change.
            folded.present = true;
            folded.stamp = before;
            event.kind = "failed";
            event.error = Some(e.to_string());
            event.latency_seconds = since.elapsed().as_secs_f64();
            return Some(event);
        }
    };
    folded.present = true;
    folded.stamp = before;
    folded.mode = crate::policy::output_mode_of(path);
    // With the last state at hand, comparing is cheaper than hashing, and the fold hashes
    // the new bytes once anyway.
    // The pages that changed, found once: they say whether anything did, and the fold and the
    // diff's chunks redo only them.
    let changed = folded
        .last
        .as_ref()
        .and_then(LastBytes::in_memory)
        .map(|previous| fold::changed_pages(previous, &bytes, fold::REFOLD_PAGE));
    let unchanged = match &changed {
        Some(changed) => changed.is_empty(),
        None => folded.sha256 == Some(crate::analysis::sha256(&bytes)),
    };
    let in_tree = tree_of(targets, path).is_some();
    if unchanged {
        return None;
    }
    let (dir, base) = destination(opts, targets, path);
    let version = folded.version + 1;
    let name = if opts.versioned {
        format!("{base}.v{version}")
    } else {
        base.clone()
    };
    let fold_opts = FoldOptions {
        name: Some(name.clone()),
        ..opts.fold.clone()
    };
    // The diff's A side starts from the last fold's byte-class preview when it kept one at
    // the delta's order and side (B's is this fold's), rather than summarising both again.
    let delta_order = folded
        .last
        .as_ref()
        .map(|last| crate::diff::preview::delta_order(last.len(), bytes.len()));
    let delta_side = |order| {
        crate::diff::preview::delta_side(crate::diff::DiffOptions::default().preview_side, order)
    };
    let base_a = delta_order.and_then(|order| {
        folded
            .reuse
            .byteclass_preview(order, delta_side(order))
            .cloned()
    });
    // The fold gets the exact bytes read and hashed above, so a write racing the fold cannot
    // tear what lands (no torn reads).
    let result = fold::fold_bytes_reusing(
        backend,
        path,
        &bytes,
        &OutputTarget::Directory(dir.clone()),
        &fold_opts,
        &crate::progress::Silent,
        // A file of a watched tree keeps no textures: they are several times its size, a
        // tree's files are many and mostly small, and a small file folds afresh quickly.
        // Memory then grows with the tree's file count and bytes, not with texture sizes.
        (!in_tree).then_some((changed.as_deref(), &mut folded.reuse)),
    );
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            // What the failed fold kept may describe bytes other than the last ones folded.
            folded.reuse = fold::FoldReuse::default();
            event.kind = "failed";
            event.error = Some(e.to_string());
            event.latency_seconds = since.elapsed().as_secs_f64();
            return Some(event);
        }
    };
    let sha = report.source.sha256;
    event.outputs = report.outputs.iter().map(|o| o.path.clone()).collect();
    event.refolded = report.refolded;
    let mut bytes = bytes;
    let previous = match folded.last.take().map(|last| kept_states.take(last)) {
        Some(Ok(previous)) => Some(previous),
        Some(Err(e)) => {
            event.error = Some(format!("outputs written, no diff: {e}"));
            None
        }
        None => None,
    };
    if let Some(previous) = previous {
        // The last state's chunks, re-cut where this one differs: the diff then cuts nothing.
        let block = crate::diff::DiffOptions::default().block;
        let a_chunking = folded
            .chunking
            .take()
            .filter(|c| c.block() == block)
            .unwrap_or_else(|| Arc::new(crate::diff::align::Chunking::of(&previous, block)));
        let changed =
            changed.unwrap_or_else(|| fold::changed_pages(&previous, &bytes, fold::REFOLD_PAGE));
        let b_chunking = Arc::new(a_chunking.recut(&bytes, &changed));
        folded.chunking = Some(Arc::clone(&b_chunking));
        let a = crate::diff::Side {
            chunking: Some(a_chunking),
            ..crate::diff::Side::from_bytes(path, "file", previous, folded.sha256)
        };
        let b = crate::diff::Side {
            chunking: Some(b_chunking),
            ..crate::diff::Side::from_bytes(path, "file", bytes, Some(sha))
        };
        let base_b =
            delta_order.and_then(|order| folded.reuse.byteclass_preview(order, delta_side(order)));
        let bases = base_a.as_ref().zip(base_b).map(|(a, b)| [a, b]);
        event.record_diff(backend, &a, &b, dir.join(format!("{name}.diff")), bases);
        bytes = b.bytes;
    }
    event.republish(&report, opts, version);
    folded.sha256 = Some(sha);
    folded.version = version;
    event.version = version;
    event.sha256 = Some(hex::encode(sha));
    event.size = Some(bytes.len() as u64);
    // The previous state is kept for the next diff; very large files are diffed against
    // nothing rather than held twice in memory.
    // A tree's files are many: their states go to disk, and no chunks are kept for them.
    if bytes.len() > KEEP_FOR_DIFF || in_tree {
        folded.chunking = None;
    }
    if bytes.len() <= KEEP_FOR_DIFF {
        let (last, failed) = kept_states.keep(bytes, in_tree);
        if let Some(e) = failed {
            event.error = Some(format!("outputs written, state kept in memory: {e}"));
        }
        folded.last = Some(last);
    }
    event.latency_seconds = since.elapsed().as_secs_f64();
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_refold_after_it_goes_quiet() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(1000));
        let p = PathBuf::from("/x");
        for i in 0..5 {
            d.event(p.clone(), t0 + ms(i * 30));
        }
        assert!(d.due(t0 + ms(150)).is_empty(), "still inside the burst");
        assert_eq!(d.next_deadline(), Some(t0 + ms(220)));
        assert_eq!(d.due(t0 + ms(220)), std::slice::from_ref(&p));
        assert!(d.is_idle());
        assert!(d.due(t0 + ms(5000)).is_empty(), "one burst, one refold");
    }

    #[test]
    fn a_continuous_writer_still_gets_refolds_at_the_max_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(500));
        let p = PathBuf::from("/log");
        let mut fired = Vec::new();
        for i in 0..100u64 {
            let now = t0 + ms(i * 20);
            d.event(p.clone(), now);
            if !d.due(now).is_empty() {
                fired.push(i * 20);
            }
        }
        assert_eq!(
            fired,
            [500, 1020, 1540],
            "every max_delay while writes never pause"
        );
        // And the final state: quiet after the last write.
        assert_eq!(d.due(t0 + ms(99 * 20 + 100)), [p]);
    }

    #[test]
    fn paths_are_independent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(1000));
        d.event("/a".into(), t0);
        d.event("/b".into(), t0 + ms(80));
        assert_eq!(d.due(t0 + ms(100)), [PathBuf::from("/a")]);
        assert_eq!(d.due(t0 + ms(180)), [PathBuf::from("/b")]);
    }
}
