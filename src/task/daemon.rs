//! The System Foundry daemon: runs every task dropped into a folder exactly once. A task is
//! claimed in the daemon's own journal (`.foundry/claims/`, one record per task file, created
//! with `O_EXCL` and held under a lock for as long as its daemon lives), ends as `.done` or
//! `.failed` by a rename, and a claim whose lock is free (its daemon died) is taken over.
//!
//! Names in the folder: `STEM.task.json` pending; `STEM.task.json.claimed-ID-aN` running
//! (daemon ID, attempt N: shown for people, never read back, since a task's author chooses
//! names); `STEM.task.task.json.done` finished (the historical name) with `STEM.report.md`
//! beside it; `STEM.task.json.failed` with `STEM.error.json`. YAML tasks follow the same
//! pattern with `yaml`. Task files are never deleted.
//!
//! Everything the daemon writes goes through directory descriptors: `.foundry/` and its
//! folders are opened with `O_NOFOLLOW` and must be owned by the daemon's user, and its files
//! are created with `O_NOFOLLOW` (and `O_EXCL` where new), so a symlink planted there is refused.

use super::run::{run_task, RunOptions};
use super::worker::{RunAs, TaskRights, WorkerJob, WorkerOutcome};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::staged::StagedOutputs;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A task is given up after the daemon running it died this many times.
pub const MAX_ATTEMPTS: u32 = 3;
/// Default task folder.
pub const DEFAULT_TASKS: &str = "openspec/tasks/system_foundry";

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub tasks: PathBuf,
    pub output_root: PathBuf,
    pub jobs: usize,
    /// Rescan this often even without file-system events (the polling fallback).
    pub poll: Duration,
    /// Exit once nothing is pending or running (batch mode, tests).
    pub exit_when_idle: bool,
    pub publish: Option<PathBuf>,
    /// Language-model settings every task runs with.
    pub llm: super::run::TaskLlm,
    pub policy: Arc<crate::policy::Policy>,
    /// Where to send a [`TaskEvent`] as each task starts and ends (the command prints them).
    pub events: Option<std::sync::mpsc::Sender<TaskEvent>>,
    /// Whose rights each task runs with ([`super::worker`]).
    pub rights: TaskRights,
    /// This program, run as `task-worker` for a task run as its owner; without it such a task
    /// fails (a library caller that is not the `foundry-gpu` program).
    pub worker_exe: Option<PathBuf>,
}

/// A task started or ended, for the daemon's one line per event.
#[derive(Clone, Debug)]
pub struct TaskEvent {
    /// Unix seconds.
    pub at: f64,
    pub stem: String,
    /// The task file, by its pending name.
    pub task_file: PathBuf,
    pub what: TaskEventKind,
}

/// What happened to the task.
#[derive(Clone, Debug)]
pub enum TaskEventKind {
    Started {
        attempt: u32,
    },
    Done {
        seconds: f64,
        written: usize,
        output_dir: PathBuf,
        report: PathBuf,
    },
    Failed {
        seconds: f64,
        reason: String,
    },
}

impl std::fmt::Display for TaskEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = super::iso_time(self.at);
        match &self.what {
            TaskEventKind::Started { attempt } => write!(
                f,
                "{at} started {} ({}, attempt {attempt})",
                escape_name(&self.stem),
                self.task_file.display()
            ),
            TaskEventKind::Done {
                seconds,
                written,
                output_dir,
                report,
            } => write!(
                f,
                "{at} done {} in {seconds:.2} s: {written} file(s) written in {}, report {}",
                escape_name(&self.stem),
                output_dir.display(),
                report.display()
            ),
            TaskEventKind::Failed { seconds, reason } => {
                write!(
                    f,
                    "{at} failed {} in {seconds:.2} s: {reason}",
                    escape_name(&self.stem)
                )
            }
        }
    }
}

/// Checks that the task folder `tasks` is there (a misspelt `--tasks` must not leave a daemon
/// waiting on an empty new folder); with `create`, makes it when it is missing.
pub fn check_task_folder(tasks: &Path, create: bool) -> Result<()> {
    match std::fs::metadata(tasks) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::Usage(format!(
            "{}: not a folder; --tasks names the folder tasks are dropped into",
            tasks.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(tasks).map_err(|e| Error::io(tasks, "create directory", e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Usage(format!(
            "{}: no such task folder (check --tasks, or give --create to make it)",
            tasks.display()
        ))),
        Err(e) => Err(Error::io(tasks, "read", e)),
    }
}

/// What a task file's name says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Pending {
        stem: String,
        ext: String,
    },
    Claimed {
        stem: String,
        ext: String,
        owner: String,
        attempt: u32,
    },
    Done,
    Failed,
}

/// Classifies a name in the task folder (None for anything else).
pub fn task_state(name: &str) -> Option<TaskState> {
    for ext in ["json", "yaml", "yml"] {
        let pending = format!(".task.{ext}");
        if let Some(stem) = name.strip_suffix(&pending) {
            return Some(TaskState::Pending {
                stem: stem.into(),
                ext: ext.into(),
            });
        }
        if name.ends_with(&format!("{pending}.done")) {
            return Some(TaskState::Done);
        }
        if name.ends_with(&format!("{pending}.failed")) {
            return Some(TaskState::Failed);
        }
        if let Some((stem, claim)) = name.split_once(&format!("{pending}.claimed-")) {
            let (owner, attempt) = claim.rsplit_once("-a")?;
            return Some(TaskState::Claimed {
                stem: stem.into(),
                ext: ext.into(),
                owner: owner.into(),
                attempt: attempt.parse().ok()?,
            });
        }
    }
    None
}

/// A name as one token of a log line: letters, digits and `._+-@,:=~` as they are, every other
/// byte (space, newline, `*`, `#`, `\`) as `\xNN`, so a task file's name can never start a
/// line or add a field of its own.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || "._+-@,:=~".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// The name of the claim record of the pending task file `name` in `.foundry/claims/`: a hash,
/// so no name a task's author picks can collide with the daemon's own.
pub fn claim_key(name: &str) -> String {
    format!(
        "{}.claim",
        hex::encode(&crate::analysis::sha256(name.as_bytes())[..16])
    )
}

/// One claim record, `.foundry/claims/KEY`: which task, held by which daemon, which attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The task file's pending name.
    pub task_file: String,
    /// Its name while this attempt runs.
    pub claimed: String,
    /// Its name during the attempt before, where a takeover may have left it.
    #[serde(default)]
    pub previous_claimed: Option<String>,
    /// The daemon holding it (the one whose temporaries a takeover sweeps).
    pub daemon: String,
    pub attempt: u32,
}

/// `.foundry/status.json`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Status {
    pub pending: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
    pub current: Vec<String>,
    pub last_error: Option<String>,
    pub daemon_pid: u32,
    /// Unix seconds, and the same time as ISO 8601 (UTC).
    pub updated_at: f64,
    #[serde(default)]
    pub updated_at_iso: String,
    /// How many times this daemon listed the task folder to find work, and how many names
    /// those listings held in all: the claim step's whole cost, which grows with the number of
    /// tasks (each task is looked at a bounded number of times), not with its square.
    #[serde(default)]
    pub folder_scans: u64,
    #[serde(default)]
    pub names_examined: u64,
}

/// The names of live claims in `tasks/.foundry/claims` (by path: for reading only).
fn claim_keys_at(tasks: &Path) -> HashSet<String> {
    std::fs::read_dir(tasks.join(".foundry/claims"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".claim") && !n.starts_with('.'))
        .collect()
}

/// Counts the folder's tasks by state; running is what the claim journal holds.
pub fn count(tasks: &Path) -> Status {
    let mut s = Status::default();
    let claims = claim_keys_at(tasks);
    s.running = claims.len();
    for entry in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match task_state(&name) {
            Some(TaskState::Pending { .. }) if !claims.contains(&claim_key(&name)) => {
                s.pending += 1
            }
            Some(TaskState::Done) => s.done += 1,
            Some(TaskState::Failed) => s.failed += 1,
            _ => {}
        }
    }
    s
}

/// Reads `.foundry/status.json`, refreshing the counts from the folder; a missing folder is
/// an error, not an empty one.
pub fn read_status(tasks: &Path) -> Result<Status> {
    check_task_folder(tasks, false)?;
    let path = tasks.join(".foundry/status.json");
    let mut status: Status = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::malformed(&path, format!("not a status file: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Status::default(),
        Err(e) => return Err(Error::io(&path, "read", e)),
    };
    let fresh = count(tasks);
    (status.pending, status.running, status.done, status.failed) =
        (fresh.pending, fresh.running, fresh.done, fresh.failed);
    if status.daemon_pid != 0 {
        // A status file from before the ISO field still gets one.
        status.updated_at_iso = super::iso_time(status.updated_at);
    }
    Ok(status)
}

/// The folders the daemon works in, held open: everything below is reached through them.
struct Folders {
    tasks: OwnedFd,
    foundry: OwnedFd,
    daemons: OwnedFd,
    claims: OwnedFd,
    temporaries: OwnedFd,
}

fn errno_error(path: &Path, what: &'static str, e: rustix::io::Errno) -> Error {
    Error::io(path, what, e.into())
}

/// Creates (if missing) and opens the folder `name` in `parent` without following a symlink,
/// and refuses it unless this process's user owns it.
fn open_own_folder(parent: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(errno_error(shown, "create directory", e)),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let folder = rustix::fs::openat(parent, name, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => Error::malformed(
            shown,
            "is a symlink or not a folder; the daemon keeps its state only in a real folder of its own",
        ),
        e => errno_error(shown, "open folder", e),
    })?;
    let owner = rustix::fs::fstat(&folder)
        .map_err(|e| errno_error(shown, "stat", e))?
        .st_uid;
    let uid = rustix::process::geteuid().as_raw();
    if owner != uid {
        return Err(Error::malformed(
            shown,
            format!("is owned by uid {owner}, not by uid {uid} the daemon runs as; refusing to keep its state there"),
        ));
    }
    Ok(folder)
}

impl Folders {
    fn open(tasks: &Path) -> Result<Self> {
        let task_folder = rustix::fs::open(
            tasks,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_error(tasks, "open folder", e))?;
        let shown = tasks.join(".foundry");
        let foundry = open_own_folder(&task_folder, ".foundry", &shown)?;
        Ok(Folders {
            daemons: open_own_folder(&foundry, "daemons", &shown.join("daemons"))?,
            claims: open_own_folder(&foundry, "claims", &shown.join("claims"))?,
            temporaries: open_own_folder(&foundry, "temporaries", &shown.join("temporaries"))?,
            tasks: task_folder,
            foundry,
        })
    }
}

/// Creates `name` in `folder` as a new file (`O_CREAT | O_EXCL | O_NOFOLLOW`).
fn create_new_at(folder: &OwnedFd, name: &str, mode: u32) -> rustix::io::Result<File> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(folder, name, flags, Mode::from_raw_mode(mode)).map(File::from)
}

fn exists_at(folder: &OwnedFd, name: &str) -> bool {
    rustix::fs::statat(folder, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// The names in an open folder (not `.` and `..`; names that are not UTF-8 are no task's).
fn names_at(folder: &OwnedFd) -> Vec<String> {
    let Ok(dir) = rustix::fs::Dir::read_from(folder) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
        .filter(|n| n != "." && n != "..")
        .collect()
}

/// Work the claim step may try, in order: takeovers first, then pending names oldest first.
enum Candidate {
    TakeOver(String),
    Pending { name: String },
}

/// A task this daemon holds: its claim record, open and locked for as long as the task runs.
struct Claim {
    /// Open and locked: the lock is the daemon's hold on the task.
    _record_file: File,
    key: String,
    record: ClaimRecord,
    stem: String,
    ext: String,
    /// On a takeover, the daemon that died holding it.
    previous_daemon: Option<String>,
}

/// What a task that ran wrote, for its line.
struct Ran {
    written: usize,
    output_dir: PathBuf,
}

struct Shared {
    opts: DaemonOptions,
    id: String,
    stop: Arc<AtomicBool>,
    wake: (Mutex<u64>, Condvar),
    status: Mutex<Status>,
    folders: Folders,
    runs_log: Mutex<File>,
    /// Work found by the last listing of the folder, not yet tried.
    queue: Mutex<VecDeque<Candidate>>,
    /// Claim records this daemon is still writing (their temporary names).
    serial: AtomicU64,
    /// `opts.worker_exe`, opened once: tasks run as their owners start from it.
    worker_exe: Option<File>,
    _lock: File,
}

impl Shared {
    fn path(&self, name: &str) -> PathBuf {
        self.opts.tasks.join(name)
    }

    /// Writes `.foundry/status.json` (a new temporary renamed over it, in `.foundry/`'s
    /// descriptor). Counts are kept as the daemon goes, never by listing the folder again.
    fn write_status(&self, update: impl FnOnce(&mut Status)) {
        let mut status = self.status.lock().expect("status");
        update(&mut status);
        status.daemon_pid = std::process::id();
        status.updated_at = crate::map::unix_now();
        status.updated_at_iso = super::iso_time(status.updated_at);
        let text = serde_json::to_string_pretty(&*status).expect("status serialises");
        let temp = format!(
            ".status.{}.{}.tmp",
            self.id,
            self.serial.fetch_add(1, Ordering::Relaxed)
        );
        let folder = &self.folders.foundry;
        // A status write that fails must not stop the work it describes.
        if let Ok(mut file) = create_new_at(folder, &temp, 0o644) {
            if file.write_all(text.as_bytes()).is_err()
                || rustix::fs::renameat(folder, &temp, folder, "status.json").is_err()
            {
                let _ = rustix::fs::unlinkat(folder, &temp, AtFlags::empty());
            }
        }
    }

    /// Lists the folder and its claims once: the queue of candidates, oldest pending first.
    fn scan(&self) -> VecDeque<Candidate> {
        let names = names_at(&self.folders.tasks);
        let (keys, unfinished): (Vec<String>, Vec<String>) = names_at(&self.folders.claims)
            .into_iter()
            .filter(|n| n.ends_with(".claim") || n.ends_with(".new"))
            .partition(|n| !n.starts_with('.'));
        for record in &unfinished {
            self.remove_if_its_daemon_died(record);
        }
        let claimed: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let (mut pending, mut done, mut failed) = (Vec::new(), 0, 0);
        for name in &names {
            match task_state(name) {
                Some(TaskState::Pending { .. }) if !claimed.contains(claim_key(name).as_str()) => {
                    pending.push(name.clone())
                }
                Some(TaskState::Done) => done += 1,
                Some(TaskState::Failed) => failed += 1,
                _ => {}
            }
        }
        pending.sort_unstable();
        let mut status = self.status.lock().expect("status");
        status.folder_scans += 1;
        status.names_examined += (names.len() + keys.len()) as u64;
        (status.pending, status.running, status.done, status.failed) =
            (pending.len(), keys.len(), done, failed);
        drop(status);
        keys.iter()
            .map(|k| Candidate::TakeOver(k.clone()))
            .chain(pending.into_iter().map(|name| Candidate::Pending { name }))
            .collect()
    }

    /// Removes `.KEY.ID.N.new`, a claim record its daemon died writing (never linked, so it
    /// claims nothing), once that daemon's lock is free.
    fn remove_if_its_daemon_died(&self, unfinished: &str) {
        let Some(daemon) = unfinished.split('.').nth(3) else {
            return;
        };
        if daemon == self.id
            || !daemon
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return;
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let lock = rustix::fs::openat(
            &self.folders.daemons,
            format!("{daemon}.lock"),
            flags,
            Mode::empty(),
        );
        let dead = match lock {
            Ok(fd) => File::from(fd).try_lock().is_ok(),
            Err(e) => e == rustix::io::Errno::NOENT,
        };
        if dead {
            let _ = rustix::fs::unlinkat(&self.folders.claims, unfinished, AtFlags::empty());
        }
    }

    /// Writes `record` into the claim file from its start.
    fn write_record(file: &mut File, record: &ClaimRecord) -> std::io::Result<()> {
        let text = serde_json::to_string(record).expect("a claim serialises");
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(text.as_bytes())
    }

    fn claimed_name(&self, stem: &str, ext: &str, attempt: u32) -> String {
        format!("{stem}.task.{ext}.claimed-{}-a{attempt}", self.id)
    }

    /// Claims the pending task file `name`: its record is created and locked under a temporary
    /// name, then linked to its key (only one link can succeed: that daemon owns the task),
    /// then the task file is renamed to show it.
    fn claim_pending(&self, name: &str) -> Option<Claim> {
        let Some(TaskState::Pending { stem, ext }) = task_state(name) else {
            return None;
        };
        let claims = &self.folders.claims;
        let key = claim_key(name);
        let temp = format!(
            ".{key}.{}.{}.new",
            self.id,
            self.serial.fetch_add(1, Ordering::Relaxed)
        );
        let mut file = create_new_at(claims, &temp, 0o600).ok()?;
        let record = ClaimRecord {
            task_file: name.to_string(),
            claimed: self.claimed_name(&stem, &ext, 1),
            previous_claimed: None,
            daemon: self.id.clone(),
            attempt: 1,
        };
        let ready = file.lock().is_ok() && Self::write_record(&mut file, &record).is_ok();
        let linked =
            ready && rustix::fs::linkat(claims, &temp, claims, &key, AtFlags::empty()).is_ok();
        let _ = rustix::fs::unlinkat(claims, &temp, AtFlags::empty());
        if !linked {
            return None;
        }
        let tasks = &self.folders.tasks;
        if rustix::fs::renameat(tasks, name, tasks, &record.claimed).is_err() {
            // Gone since the listing (another daemon ran it and dropped its claim).
            let _ = rustix::fs::unlinkat(claims, &key, AtFlags::empty());
            return None;
        }
        Some(Claim {
            _record_file: file,
            key,
            record,
            stem,
            ext,
            previous_daemon: None,
        })
    }

    /// Takes over the claim `key` when its daemon died (its lock is free).
    fn take_over(&self, key: &str) -> Option<Claim> {
        let claims = &self.folders.claims;
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut file = File::from(rustix::fs::openat(claims, key, flags, Mode::empty()).ok()?);
        // Held: its daemon is alive (this one's other workers included).
        file.try_lock().ok()?;
        if rustix::fs::fstat(&file).ok()?.st_nlink == 0 {
            return None; // its daemon finished and removed it just now
        }
        let mut text = String::new();
        let record = (&mut file)
            .take(64 << 10)
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| serde_json::from_str::<ClaimRecord>(&text).ok())
            .filter(|r| claim_key(&r.task_file) == key);
        let tasks = &self.folders.tasks;
        let found = record.as_ref().and_then(|r| {
            [
                Some(&r.claimed),
                r.previous_claimed.as_ref(),
                Some(&r.task_file),
            ]
            .into_iter()
            .flatten()
            .find(|n| exists_at(tasks, n))
            .cloned()
        });
        let (Some(mut record), Some(found)) = (record, found) else {
            // Its task ended (the daemon died before removing its claim), or it is no record.
            let _ = rustix::fs::unlinkat(claims, key, AtFlags::empty());
            return None;
        };
        let Some(TaskState::Pending { stem, ext }) = task_state(&record.task_file) else {
            let _ = rustix::fs::unlinkat(claims, key, AtFlags::empty());
            return None;
        };
        let previous_daemon = std::mem::replace(&mut record.daemon, self.id.clone());
        record.attempt += 1;
        record.previous_claimed = Some(found.clone());
        record.claimed = self.claimed_name(&stem, &ext, record.attempt);
        // The record names both places before the rename, so a death in between loses nothing.
        Self::write_record(&mut file, &record).ok()?;
        rustix::fs::renameat(tasks, &found, tasks, &record.claimed).ok()?;
        Some(Claim {
            _record_file: file,
            key: key.to_string(),
            record,
            stem,
            ext,
            previous_daemon: Some(previous_daemon),
        })
    }

    /// The next task to run: from the queue of the last listing, listing again only once it is
    /// used up. Each listing costs the folder's size once; the queue is tried in order.
    fn next_claim(&self) -> Option<Claim> {
        let mut queue = self.queue.lock().expect("queue");
        let mut listed = false;
        loop {
            while let Some(candidate) = queue.pop_front() {
                let claim = match candidate {
                    Candidate::TakeOver(key) => self.take_over(&key),
                    Candidate::Pending { name } => self.claim_pending(&name),
                };
                if let Some(claim) = claim {
                    let mut status = self.status.lock().expect("status");
                    // A takeover was counted running already, by its record.
                    if claim.previous_daemon.is_none() {
                        status.pending = status.pending.saturating_sub(1);
                        status.running += 1;
                    }
                    return Some(claim);
                }
            }
            if listed {
                return None;
            }
            *queue = self.scan();
            listed = true;
        }
    }

    fn log_run(&self, stem: &str, attempt: u32) {
        let line = format!("{} {} attempt {attempt}\n", escape_name(stem), self.id);
        // One write of a whole line to an O_APPEND file: lines never interleave.
        let _ = self
            .runs_log
            .lock()
            .expect("runs.log")
            .write_all(line.as_bytes());
    }

    fn announce(&self, stem: &str, task_file: &Path, what: TaskEventKind) {
        if let Some(events) = &self.opts.events {
            // Nobody listening any more only means nobody prints.
            let _ = events.send(TaskEvent {
                at: crate::map::unix_now(),
                stem: stem.to_string(),
                task_file: task_file.to_path_buf(),
                what,
            });
        }
    }

    fn finish(&self, backend: &Backend, claim: Claim) {
        let (stem, ext, attempt) = (&claim.stem, &claim.ext, claim.record.attempt);
        let claimed = &claim.record.claimed;
        self.log_run(stem, attempt);
        self.write_status(|s| s.current.push(stem.to_string()));
        let original = self.path(&claim.record.task_file);
        let started = std::time::Instant::now();
        self.announce(stem, &original, TaskEventKind::Started { attempt });
        if let Some(previous) = &claim.previous_daemon {
            // What the daemon that died on it left half-written, as it recorded it.
            self.sweep_temporaries_of(previous);
        }
        let outcome = if attempt > MAX_ATTEMPTS {
            Err(format!(
                "gave up after {MAX_ATTEMPTS} attempts: the daemon running it died each time"
            ))
        } else {
            self.run_one(backend, claimed, &original, stem, ext, attempt)
        };
        let tasks = &self.folders.tasks;
        // Final names never replace what holds them (another user's finished task, its report
        // or error): a finished task's name was checked before it ran, and a failed one takes
        // the first free name.
        let noreplace = rustix::fs::RenameFlags::NOREPLACE;
        let result = match &outcome {
            Ok(_) => rustix::fs::renameat_with(
                tasks,
                claimed.as_str(),
                tasks,
                format!("{stem}.task.task.{ext}.done"),
                noreplace,
            ),
            Err(reason) => {
                let now = crate::map::unix_now();
                let error = serde_json::json!({"task_file": original, "reason": reason, "time": now,
                    "time_iso": super::iso_time(now), "attempts": attempt});
                let text = serde_json::to_string_pretty(&error).expect("error serialises");
                let error_name = self.free_name(&format!("{stem}.error"), ".json");
                let mut staged = StagedOutputs::new();
                let _ = staged
                    .write(&self.path(&error_name), |w| w.write_all(text.as_bytes()))
                    .and_then(|()| staged.commit().map(|_| ()));
                let failed = self.free_name(&format!("{stem}.task.{ext}.failed"), "");
                rustix::fs::renameat_with(tasks, claimed.as_str(), tasks, failed, noreplace)
            }
        };
        // The task has its final name: its claim goes (then its lock, as the file closes).
        let _ = rustix::fs::unlinkat(&self.folders.claims, &claim.key, AtFlags::empty());
        self.write_status(|s| {
            s.current.retain(|c| c != stem);
            s.running = s.running.saturating_sub(1);
            match (&outcome, &result) {
                (Ok(_), Ok(())) => s.done += 1,
                _ => s.failed += 1,
            }
            if let Err(reason) = &outcome {
                s.last_error = Some(format!("{stem}: {reason}"));
            }
            if let Err(e) = &result {
                s.last_error = Some(format!("{stem}: cannot rename the finished task: {e}"));
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        let what = match (outcome, result) {
            (Ok(ran), Ok(())) => TaskEventKind::Done {
                seconds,
                written: ran.written,
                output_dir: ran.output_dir,
                report: self.path(&format!("{stem}.report.md")),
            },
            (Err(reason), _) => TaskEventKind::Failed { seconds, reason },
            (Ok(_), Err(e)) => TaskEventKind::Failed {
                seconds,
                reason: format!("cannot rename the finished task: {e}"),
            },
        };
        self.announce(stem, &original, what);
        drop(claim);
    }

    /// Removes the temporaries the dead daemon `daemon` recorded in its journal and never
    /// renamed into place: exactly those, never anything found by its name.
    fn sweep_temporaries_of(&self, daemon: &str) {
        if !daemon
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return;
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(journal) = rustix::fs::openat(
            &self.folders.temporaries,
            format!("{daemon}.jsonl"),
            flags,
            Mode::empty(),
        ) else {
            return;
        };
        let mut text = String::new();
        if File::from(journal).read_to_string(&mut text).is_err() {
            return;
        }
        for line in text.lines() {
            if let Ok(path) = serde_json::from_str::<PathBuf>(line) {
                crate::format::staged::remove_journaled_temporary(&path);
            }
        }
    }

    /// `BASE` + `SUFFIX` when no file in the task folder has that name, else `BASE.N` + `SUFFIX`
    /// for the first free N.
    fn free_name(&self, base: &str, suffix: &str) -> String {
        let first = format!("{base}{suffix}");
        if !exists_at(&self.folders.tasks, &first) {
            return first;
        }
        (2..)
            .map(|n| format!("{base}.{n}{suffix}"))
            .find(|name| !exists_at(&self.folders.tasks, name))
            .expect("a free name")
    }

    fn run_options(&self) -> RunOptions {
        RunOptions {
            output_root: self.opts.output_root.clone(),
            task_root: self.opts.tasks.clone(),
            publish: self.opts.publish.clone(),
            llm: self.opts.llm.clone(),
            policy: Arc::clone(&self.opts.policy),
        }
    }

    fn run_one(
        &self,
        backend: &Backend,
        claimed: &str,
        original: &Path,
        stem: &str,
        ext: &str,
        attempt: u32,
    ) -> std::result::Result<Ran, String> {
        use std::os::fd::AsFd;
        let (done_name, report_name) = (
            format!("{stem}.task.task.{ext}.done"),
            format!("{stem}.report.md"),
        );
        // A report of an earlier attempt at this very task (its daemon died before the final
        // rename) is this task's own, and replaced.
        let report_taken = attempt == 1 && exists_at(&self.folders.tasks, &report_name);
        if exists_at(&self.folders.tasks, &done_name) || report_taken {
            return Err(format!(
                "a finished task of this name is already here ({done_name} or {report_name}), \
                 and a task never replaces one: rename the task file"
            ));
        }
        // Opened once, beneath the task folder; its owner and text come from that descriptor.
        let file = super::read_task_file_at(
            self.folders.tasks.as_fd(),
            claimed,
            original,
            self.opts.policy.limits.max_task_file_bytes,
        )
        .map_err(|e| e.to_string())?;
        let task = super::parse_task(original, &file.text).map_err(|e| e.to_string())?;
        let opts = self.run_options();
        // The report names the task file where it will be once done, so its `run` step finds it.
        let done = self.path(&done_name);
        let daemon_uid = rustix::process::geteuid().as_raw();
        let (ran, report_md) = match super::worker::run_as(
            file.owner_uid,
            file.owner_gid,
            self.opts.rights,
            daemon_uid,
        )? {
            RunAs::Daemon => {
                let report = run_task(backend, &task, &done, &opts, &crate::progress::Silent)
                    .map_err(|e| e.to_string())?;
                let md = std::fs::read(&report.report_path).map_err(|e| e.to_string())?;
                let ran = Ran {
                    written: report.written.len(),
                    output_dir: report.output_dir,
                };
                (ran, md)
            }
            RunAs::Owner(owner) => {
                self.run_as_owner(backend, &task, file.text, original, done, &owner, opts)?
            }
        };
        let mut staged = StagedOutputs::new();
        staged
            .write(&self.path(&report_name), |w| w.write_all(&report_md))
            .and_then(|()| staged.commit().map(|_| ()))
            .map_err(|e| e.to_string())?;
        Ok(ran)
    }

    /// Runs `task` (whose text is `text`) in a child process with `owner`'s credentials
    /// ([`super::worker`]) and the daemon's `opts`; returns what it wrote and its report.
    #[allow(clippy::too_many_arguments)]
    fn run_as_owner(
        &self,
        backend: &Backend,
        task: &super::FoundryTask,
        text: String,
        original: &Path,
        done: PathBuf,
        owner: &super::worker::Credentials,
        opts: RunOptions,
    ) -> std::result::Result<(Ran, Vec<u8>), String> {
        let exe = self.worker_exe.as_ref().ok_or_else(|| {
            format!(
                "the task runs as its owner, {}, and this daemon has no worker program",
                owner.describe()
            )
        })?;
        // The child plans the task itself, with its owner's rights: the daemon only
        // checks the task_id and makes the output folder.
        let folder = super::run::task_folder_name(task).map_err(|e| e.to_string())?;
        // The child starts in `/`: every path it is given is absolute.
        let absolute = |p: &Path| crate::policy::absolute(p).map_err(|e| e.to_string());
        let (output_root, task_root) = (absolute(&opts.output_root)?, absolute(&opts.task_root)?);
        let publish = opts.publish.as_deref().map(absolute).transpose()?;
        super::worker::prepare_output_dir(&output_root, &folder, owner)
            .map_err(|e| e.to_string())?;
        let job = WorkerJob {
            task_text: text,
            task_name: original.to_path_buf(),
            task_file: done,
            output_root,
            task_root,
            publish,
            llm: opts.llm,
            policy: self.opts.policy.settings.clone(),
            max_input: crate::source::max_input(),
            publish_private: crate::map::private_publish_allowed(),
            gpu: matches!(backend, Backend::Gpu(_)),
        };
        match super::worker::run_in_child(exe, owner, &job)? {
            WorkerOutcome::Done {
                written,
                output_dir,
                report_md,
            } => Ok((
                Ran {
                    written,
                    output_dir,
                },
                report_md.into_bytes(),
            )),
            WorkerOutcome::Failed(reason) => Err(format!("{reason} (run as {})", owner.describe())),
        }
    }

    fn worker(&self, backend: &Backend) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(claim) = self.next_claim() {
                self.finish(backend, claim);
                continue;
            }
            let claims_left = names_at(&self.folders.claims)
                .iter()
                .any(|n| n.ends_with(".claim") && !n.starts_with('.'));
            if self.opts.exit_when_idle && !claims_left {
                return;
            }
            let (lock, cvar) = &self.wake;
            let seen = *lock.lock().expect("wake");
            let _ = cvar
                .wait_timeout_while(lock.lock().expect("wake"), self.opts.poll, |n| {
                    *n == seen && !self.stop.load(Ordering::Relaxed)
                })
                .expect("wake");
        }
    }
}

/// Runs the daemon until SIGINT/SIGTERM (or, with `exit_when_idle`, until nothing is left).
pub fn run_daemon(backend: &Backend, opts: DaemonOptions) -> Result<Status> {
    check_task_folder(&opts.tasks, false)?;
    let folders = Folders::open(&opts.tasks)?;
    let state = opts.tasks.join(".foundry");
    let runs_log = crate::format::staged::open_file_at(
        &folders.foundry,
        "runs.log",
        &state.join("runs.log"),
        true,
        true,
    )?;
    let nonce = hex::encode(
        &crate::analysis::sha256(
            format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
        )[..4],
    );
    let id = format!("{}-{nonce}", std::process::id());
    let lock_path = state.join(format!("daemons/{id}.lock"));
    let lock = create_new_at(&folders.daemons, &format!("{id}.lock"), 0o644)
        .map_err(|e| errno_error(&lock_path, "create", e))?;
    // Held until the process ends, however it ends: a free lock means a dead daemon.
    lock.lock().map_err(|e| Error::io(&lock_path, "lock", e))?;
    let journal_path = state.join(format!("temporaries/{id}.jsonl"));
    let journal = create_new_at(&folders.temporaries, &format!("{id}.jsonl"), 0o600)
        .map_err(|e| errno_error(&journal_path, "create", e))?;
    rustix::fs::fcntl_setfl(&journal, OFlags::APPEND)
        .map_err(|e| errno_error(&journal_path, "open for appending", e))?;
    crate::format::staged::journal_temporaries(journal);
    let worker_exe = match &opts.worker_exe {
        Some(exe) => Some(File::open(exe).map_err(|e| Error::io(exe, "open", e))?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Error::io(&opts.tasks, "handle signals", e))?;
    }
    let shared = Arc::new(Shared {
        opts,
        id,
        stop,
        wake: (Mutex::new(0), Condvar::new()),
        status: Mutex::new(Status::default()),
        folders,
        runs_log: Mutex::new(runs_log),
        queue: Mutex::new(VecDeque::new()),
        serial: AtomicU64::new(0),
        worker_exe,
        _lock: lock,
    });
    let waker = Arc::clone(&shared);
    // notify wakes the workers early; the poll interval is the fallback when it cannot watch.
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let (lock, cvar) = &waker.wake;
        *lock.lock().expect("wake") += 1;
        cvar.notify_all();
    });
    let _watcher = watcher.ok().and_then(|mut w| {
        use notify::Watcher;
        w.watch(&shared.opts.tasks, notify::RecursiveMode::NonRecursive)
            .ok()
            .map(|()| w)
    });
    shared.write_status(|_| {});
    std::thread::scope(|scope| {
        for _ in 0..shared.opts.jobs.max(1) {
            let shared = &shared;
            scope.spawn(move || shared.worker(backend));
        }
    });
    shared.write_status(|s| s.current.clear());
    // A clean exit leaves no temporary of ours (each was renamed or removed): nothing for a
    // sweep to find in the journal.
    let _ = rustix::fs::unlinkat(
        &shared.folders.temporaries,
        format!("{}.jsonl", shared.id),
        AtFlags::empty(),
    );
    let status = shared.status.lock().expect("status").clone();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_folder() {
        assert_eq!(
            task_state("a.task.json"),
            Some(TaskState::Pending {
                stem: "a".into(),
                ext: "json".into()
            })
        );
        assert_eq!(
            task_state("a.task.yaml"),
            Some(TaskState::Pending {
                stem: "a".into(),
                ext: "yaml".into()
            })
        );
        assert_eq!(task_state("a.task.task.json.done"), Some(TaskState::Done));
        assert_eq!(task_state("a.task.json.done"), Some(TaskState::Done));
        assert_eq!(task_state("a.task.json.failed"), Some(TaskState::Failed));
        assert_eq!(
            task_state("a.b.task.json.claimed-12-ab12-a2"),
            Some(TaskState::Claimed {
                stem: "a.b".into(),
                ext: "json".into(),
                owner: "12-ab12".into(),
                attempt: 2
            })
        );
        assert_eq!(task_state("a.report.md"), None);
        assert_eq!(task_state("a.error.json"), None);
    }
}
