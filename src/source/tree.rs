//! Walking directory trees and root file systems: a parallel, path-sorted walk (jwalk) that
//! never follows symlinks, records them, and counts everything it skips with a reason.

use crate::error::{Error, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What limits and filters a walk.
#[derive(Clone, Debug, Default)]
pub struct WalkOptions {
    /// Fold at most this many files (the first ones in path order).
    pub max_files: Option<u64>,
    /// Fold at most this many files of each root (`crystallize_system`'s `max_files_per_path`).
    pub max_files_per_root: Option<u64>,
    /// Fold files until their sizes add up to this many bytes.
    pub max_bytes: Option<u64>,
    /// Only files whose path (relative to its root) matches one of these globs.
    pub include: Vec<String>,
    /// Files and directories whose relative path matches one of these globs are left out.
    pub exclude: Vec<String>,
    /// Do not descend into directories on another file system than their root.
    pub one_file_system: bool,
    /// Task-driven walks: paths the policy denies are left out (folders not entered), and so
    /// are files above its `max_file_bytes`.
    pub policy: Option<Arc<crate::policy::Policy>>,
}

/// Why something in the tree was not folded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    PermissionDenied,
    /// Listed by the walk, gone when read.
    Vanished,
    /// FIFO, socket, character or block device.
    SpecialFile(&'static str),
    /// Mostly holes: apparent size far above the bytes on disk.
    Sparse {
        apparent: u64,
        allocated: u64,
    },
    OtherFileSystem,
    Excluded,
    MaxFiles,
    MaxBytes,
    /// Denied by the policy; the rule that denied it.
    Denied(String),
    /// Larger than the policy's `max_file_bytes`.
    OverMaxFileBytes(u64),
    ReadError(String),
}

impl SkipReason {
    /// The key counts are grouped by.
    pub fn key(&self) -> &'static str {
        match self {
            SkipReason::PermissionDenied => "permission denied",
            SkipReason::Vanished => "vanished",
            SkipReason::SpecialFile(_) => "special file",
            SkipReason::Sparse { .. } => "sparse",
            SkipReason::OtherFileSystem => "other file system",
            SkipReason::Excluded => "excluded",
            SkipReason::MaxFiles => "over --max-files",
            SkipReason::MaxBytes => "over --max-bytes",
            SkipReason::Denied(_) => "denied by policy",
            SkipReason::OverMaxFileBytes(_) => "over policy max_file_bytes",
            SkipReason::ReadError(_) => "read error",
        }
    }

    /// The reason for an I/O error on `path`.
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => SkipReason::PermissionDenied,
            std::io::ErrorKind::NotFound => SkipReason::Vanished,
            _ => SkipReason::ReadError(e.to_string()),
        }
    }
}

/// One skipped path.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: SkipReason,
}

/// Skips counted by reason, with the first examples of each kept.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SkipLog {
    pub counts: BTreeMap<&'static str, u64>,
    pub examples: Vec<Skipped>,
}

/// Examples kept per reason; counts are always exact.
const EXAMPLES_PER_REASON: u64 = 200;

impl SkipLog {
    /// Records one skip.
    pub fn add(&mut self, path: &Path, reason: SkipReason) {
        let count = self.counts.entry(reason.key()).or_insert(0);
        *count += 1;
        if *count <= EXAMPLES_PER_REASON {
            self.examples.push(Skipped {
                path: path.to_string_lossy().into_owned(),
                reason,
            });
        }
    }
}

/// A regular file to fold.
#[derive(Clone, Debug)]
pub struct FileEntry {
    /// Index into the walk's roots.
    pub root: usize,
    /// Path below the root.
    pub rel: PathBuf,
    /// Path to open.
    pub abs: PathBuf,
    /// Size the walk saw (`stat`).
    pub size: u64,
    /// Permission bits the walk saw: outputs keep what the source hid.
    pub mode: u32,
    /// The root's folder, opened once when the walk began: the file is opened beneath it,
    /// through no symlink ([`crate::source::open_tree_entry`]).
    pub root_dir: Option<Arc<std::os::fd::OwnedFd>>,
}

/// A symlink, recorded and never followed.
#[derive(Clone, Debug, Serialize)]
pub struct SymlinkEntry {
    pub path: String,
    pub target: String,
    /// Whether the target, resolved lexically, stays below the root.
    pub inside_root: bool,
}

/// Everything a walk found, files in path order.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<FileEntry>,
    pub symlinks: Vec<SymlinkEntry>,
    pub skipped: SkipLog,
}

fn glob_set(what: &str, patterns: &[String]) -> Result<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(Glob::new(p).map_err(|e| Error::Usage(format!("{what} glob {p:?}: {e}")))?);
    }
    builder
        .build()
        .map_err(|e| Error::Usage(format!("{what} globs: {e}")))
}

/// Lexically resolves `target` of a link at `link` and says whether it stays below `root`.
fn stays_inside(root: &Path, link: &Path, target: &Path) -> bool {
    let start = if target.is_absolute() {
        PathBuf::new()
    } else {
        link.parent().unwrap_or(root).to_path_buf()
    };
    let mut resolved = PathBuf::new();
    for component in start.join(target).components() {
        match component {
            Component::ParentDir => {
                if !resolved.pop() {
                    return false;
                }
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    resolved.starts_with(root)
}

/// Files count as sparse when they are over 1 MiB and less than half allocated.
fn sparse(meta: &std::fs::Metadata) -> Option<SkipReason> {
    let allocated = meta.blocks() * 512;
    (meta.len() > 1 << 20 && allocated < meta.len() / 2).then_some(SkipReason::Sparse {
        apparent: meta.len(),
        allocated,
    })
}

fn special_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "unknown"
    }
}

/// The policy's verdict on the entries of one walked root. The walk follows no symlink below
/// the root, but the root itself may run through one (`/proc/self/root/etc`, a task folder's
/// link to `/etc`), so each entry is judged as written and as resolved: below the canonical
/// root. A denial of either wins, as for a task's own sources.
#[derive(Clone)]
struct RootDenials {
    policy: Arc<crate::policy::Policy>,
    written_root: PathBuf,
    /// `None` when the root resolves to itself: judging the same path twice finds nothing new.
    resolved_root: Option<PathBuf>,
}

impl RootDenials {
    fn new(policy: Arc<crate::policy::Policy>, root: &Path) -> Result<Self> {
        let resolved = root
            .canonicalize()
            .map_err(|e| Error::io(root, "read", e))?;
        Ok(RootDenials {
            policy,
            written_root: root.to_path_buf(),
            resolved_root: (resolved != root).then_some(resolved),
        })
    }

    /// The rule that denies `path` (an entry below the root), as written or as resolved.
    fn denied(&self, path: &Path) -> Option<crate::policy::Refusal> {
        self.policy.denied(path).or_else(|| {
            let rel = path.strip_prefix(&self.written_root).ok()?;
            self.policy.denied(&self.resolved_root.as_ref()?.join(rel))
        })
    }
}

/// Walks every root in turn (each root's files contiguous, in path order).
pub fn walk(roots: &[PathBuf], opts: &WalkOptions) -> Result<Walk> {
    let include = glob_set("--include", &opts.include)?;
    let exclude = Arc::new(glob_set("--exclude", &opts.exclude)?);
    let mut out = Walk::default();
    for (root_index, root) in roots.iter().enumerate() {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, "read", e))?;
        if !meta.is_dir() {
            return Err(Error::malformed(root, "is not a directory"));
        }
        let root_dev = meta.dev();
        // Opened once; every file of this root is opened beneath this descriptor. Without it
        // (a folder listed but not openable) files are opened by path, judged as opened.
        let root_dir = rustix::fs::open(
            root,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
        .map(Arc::new);
        let denials = match &opts.policy {
            Some(policy) => Some(RootDenials::new(Arc::clone(policy), root)?),
            None => None,
        };
        let pruned: Arc<Mutex<Vec<(PathBuf, SkipReason)>>> = Arc::default();
        let (pruned_in, exclude_in, root_in, denials_in) = (
            Arc::clone(&pruned),
            Arc::clone(&exclude),
            root.clone(),
            denials.clone(),
        );
        let one_fs = opts.one_file_system;
        let walker = jwalk::WalkDir::new(root)
            .sort(true)
            .skip_hidden(false)
            .follow_links(false)
            .process_read_dir(move |_, _, _, children| {
                for child in children.iter_mut().flatten() {
                    if !child.file_type.is_dir() {
                        continue;
                    }
                    let path = child.path();
                    let rel = path.strip_prefix(&root_in).unwrap_or(&path);
                    let denied = denials_in.as_ref().and_then(|d| d.denied(&path));
                    let reason = if let Some(refusal) = denied {
                        Some(SkipReason::Denied(refusal.rule))
                    } else if exclude_in.is_match(rel) {
                        Some(SkipReason::Excluded)
                    } else if one_fs && child.metadata().is_ok_and(|m| m.dev() != root_dev) {
                        Some(SkipReason::OtherFileSystem)
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        child.read_children = None;
                        pruned_in.lock().expect("prune log").push((path, reason));
                    }
                }
            });
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.clone());
                    let reason = e
                        .io_error()
                        .map_or_else(|| SkipReason::ReadError(e.to_string()), SkipReason::from_io);
                    out.skipped.add(&path, reason);
                    continue;
                }
            };
            if let Some(e) = entry.read_children.as_ref().and_then(|c| c.error()) {
                let reason = e
                    .io_error()
                    .map_or_else(|| SkipReason::ReadError(e.to_string()), SkipReason::from_io);
                out.skipped.add(&entry.path(), reason);
            }
            if entry.depth == 0 || entry.file_type.is_dir() {
                continue;
            }
            let abs = entry.path();
            let rel = abs.strip_prefix(root).unwrap_or(&abs).to_path_buf();
            if entry.file_type.is_symlink() {
                let target = std::fs::read_link(&abs).unwrap_or_default();
                out.symlinks.push(SymlinkEntry {
                    path: rel.to_string_lossy().into_owned(),
                    inside_root: stays_inside(root, &abs, &target),
                    target: target.to_string_lossy().into_owned(),
                });
                continue;
            }
            if !entry.file_type.is_file() {
                out.skipped.add(
                    &abs,
                    SkipReason::SpecialFile(special_kind(&entry.file_type)),
                );
                continue;
            }
            if let Some(refusal) = denials.as_ref().and_then(|d| d.denied(&abs)) {
                out.skipped.add(&abs, SkipReason::Denied(refusal.rule));
                continue;
            }
            if exclude.is_match(&rel) || (!opts.include.is_empty() && !include.is_match(&rel)) {
                out.skipped.add(&abs, SkipReason::Excluded);
                continue;
            }
            let max_file_bytes = opts.policy.as_ref().map(|p| p.limits.max_file_bytes);
            match std::fs::symlink_metadata(&abs) {
                Err(e) => out.skipped.add(&abs, SkipReason::from_io(&e)),
                Ok(meta) if max_file_bytes.is_some_and(|max| meta.len() > max) => out
                    .skipped
                    .add(&abs, SkipReason::OverMaxFileBytes(meta.len())),
                Ok(meta) => match sparse(&meta) {
                    Some(reason) => out.skipped.add(&abs, reason),
                    None => out.files.push(FileEntry {
                        root: root_index,
                        rel,
                        abs,
                        size: meta.len(),
                        mode: meta.mode(),
                        root_dir: root_dir.clone(),
                    }),
                },
            }
        }
        for (path, reason) in std::mem::take(&mut *pruned.lock().expect("prune log")) {
            out.skipped.add(&path, reason);
        }
    }
    apply_limits(&mut out, opts);
    Ok(out)
}

/// Keeps the longest prefix of the files (path order) within `--max-files` and `--max-bytes`.
fn apply_limits(walk: &mut Walk, opts: &WalkOptions) {
    let mut bytes = 0u64;
    let mut full = false;
    let mut kept: Vec<FileEntry> = Vec::with_capacity(walk.files.len());
    let mut per_root: BTreeMap<usize, u64> = BTreeMap::new();
    for file in std::mem::take(&mut walk.files) {
        // A prefix in path order: once the byte budget is spent, nothing after it is folded.
        full |= opts.max_bytes.is_some_and(|max| bytes + file.size > max);
        let in_root = per_root.entry(file.root).or_default();
        let root_full = opts.max_files_per_root.is_some_and(|max| *in_root >= max);
        if root_full || opts.max_files.is_some_and(|max| kept.len() as u64 >= max) {
            walk.skipped.add(&file.abs, SkipReason::MaxFiles);
        } else if full {
            walk.skipped.add(&file.abs, SkipReason::MaxBytes);
        } else {
            bytes += file.size;
            *in_root += 1;
            kept.push(file);
        }
    }
    walk.files = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_are_judged_lexically() {
        let root = Path::new("/r");
        assert!(stays_inside(root, Path::new("/r/a/l"), Path::new("../b")));
        assert!(!stays_inside(
            root,
            Path::new("/r/a/l"),
            Path::new("../../etc/passwd")
        ));
        assert!(!stays_inside(
            root,
            Path::new("/r/l"),
            Path::new("/etc/passwd")
        ));
        assert!(stays_inside(root, Path::new("/r/l"), Path::new("/r/x")));
        assert!(stays_inside(root, Path::new("/r/l"), Path::new("l")));
    }
}
