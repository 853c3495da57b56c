//! The System Foundry daemon: runs every task dropped into a folder exactly once. A task is
//! claimed by an atomic rename before work starts, ends as `.done` or `.failed` by another
//! rename, and a claim whose daemon died (its lock is free) is taken over and re-run.
//!
//! Names in the folder: `STEM.task.json` pending; `STEM.task.json.claimed-ID-aN` running
//! (daemon ID, attempt N); `STEM.task.task.json.done` finished (the historical name) with
//! `STEM.report.md` beside it; `STEM.task.json.failed` with `STEM.error.json`. YAML tasks
//! follow the same pattern with `yaml`. Nothing is ever deleted.

use super::run::{plan_task, run_task, RunOptions};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::staged::StagedOutputs;
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
                self.stem,
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
                self.stem,
                output_dir.display(),
                report.display()
            ),
            TaskEventKind::Failed { seconds, reason } => {
                write!(f, "{at} failed {} in {seconds:.2} s: {reason}", self.stem)
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
}

/// Counts the folder's tasks by state.
pub fn count(tasks: &Path) -> Status {
    let mut s = Status::default();
    for entry in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        match task_state(&entry.file_name().to_string_lossy()) {
            Some(TaskState::Pending { .. }) => s.pending += 1,
            Some(TaskState::Claimed { .. }) => s.running += 1,
            Some(TaskState::Done) => s.done += 1,
            Some(TaskState::Failed) => s.failed += 1,
            None => {}
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
    _lock: File,
}

impl Shared {
    fn path(&self, name: &str) -> PathBuf {
        self.opts.tasks.join(name)
    }

    fn write_status(&self, update: impl FnOnce(&mut Status)) {
        let mut status = self.status.lock().expect("status");
        update(&mut status);
        let fresh = count(&self.opts.tasks);
        (status.pending, status.running, status.done, status.failed) =
            (fresh.pending, fresh.running, fresh.done, fresh.failed);
        status.daemon_pid = std::process::id();
        status.updated_at = crate::map::unix_now();
        status.updated_at_iso = super::iso_time(status.updated_at);
        let text = serde_json::to_string_pretty(&*status).expect("status serialises");
        let mut staged = StagedOutputs::new();
        // A status write that fails must not stop the work it describes.
        if staged
            .write(&self.path(".foundry/status.json"), |w| {
                w.write_all(text.as_bytes())
            })
            .is_ok()
        {
            let _ = staged.commit();
        }
    }

    /// True when the daemon `owner` is gone (its lock can be taken).
    fn owner_dead(&self, owner: &str) -> bool {
        if owner == self.id {
            return false;
        }
        match File::open(self.path(&format!(".foundry/daemons/{owner}.lock"))) {
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => true,
        }
    }

    /// Claims the next task: first a claim whose daemon died, then the oldest pending name.
    fn claim(&self) -> Option<(String, String, String, u32)> {
        let mut names: Vec<String> = std::fs::read_dir(&self.opts.tasks)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut candidates = Vec::new();
        for name in &names {
            match task_state(name) {
                Some(TaskState::Claimed {
                    stem,
                    ext,
                    owner,
                    attempt,
                }) if self.owner_dead(&owner) => {
                    candidates.insert(0, (name.clone(), stem, ext, attempt + 1));
                }
                Some(TaskState::Pending { stem, ext }) => {
                    candidates.push((name.clone(), stem, ext, 1))
                }
                _ => {}
            }
        }
        for (name, stem, ext, attempt) in candidates {
            let claimed = format!("{stem}.task.{ext}.claimed-{}-a{attempt}", self.id);
            // Only one rename of `name` can succeed: that daemon owns the task.
            if std::fs::rename(self.path(&name), self.path(&claimed)).is_ok() {
                return Some((claimed, stem, ext, attempt));
            }
        }
        None
    }

    fn log_run(&self, stem: &str, attempt: u32) {
        use std::io::Write;
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(".foundry/runs.log"))
        {
            let _ = writeln!(log, "{stem} {} attempt {attempt}", self.id);
        }
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

    fn finish(&self, backend: &Backend, claimed: &str, stem: &str, ext: &str, attempt: u32) {
        self.log_run(stem, attempt);
        self.write_status(|s| s.current.push(stem.to_string()));
        let original = self.path(&format!("{stem}.task.{ext}"));
        let started = std::time::Instant::now();
        self.announce(stem, &original, TaskEventKind::Started { attempt });
        let outcome = if attempt > MAX_ATTEMPTS {
            // The last daemon to die on it may have left temporaries too: nothing re-runs to
            // replace them, so they go now.
            let _ = self.sweep_temporaries(claimed, &original, stem);
            Err(format!(
                "gave up after {MAX_ATTEMPTS} attempts: the daemon running it died each time"
            ))
        } else {
            self.run_one(backend, claimed, &original, stem, attempt)
        };
        let result = match &outcome {
            Ok(_) => std::fs::rename(
                self.path(claimed),
                self.path(&format!("{stem}.task.task.{ext}.done")),
            ),
            Err(reason) => {
                let now = crate::map::unix_now();
                let error = serde_json::json!({"task_file": original, "reason": reason, "time": now,
                    "time_iso": super::iso_time(now), "attempts": attempt});
                let text = serde_json::to_string_pretty(&error).expect("error serialises");
                let mut staged = StagedOutputs::new();
                let _ = staged
                    .write(&self.path(&format!("{stem}.error.json")), |w| {
                        w.write_all(text.as_bytes())
                    })
                    .and_then(|()| staged.commit().map(|_| ()));
                std::fs::rename(
                    self.path(claimed),
                    self.path(&format!("{stem}.task.{ext}.failed")),
                )
            }
        };
        self.write_status(|s| {
            s.current.retain(|c| c != stem);
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
    }

    fn read_claimed(
        &self,
        claimed: &str,
        original: &Path,
    ) -> std::result::Result<super::FoundryTask, String> {
        super::read_task(
            &self.path(claimed),
            original,
            Some(&self.opts.tasks),
            self.opts.policy.limits.max_task_file_bytes,
        )
        .map_err(|e| e.to_string())
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

    /// Removes the half-written temporaries a daemon that died running this task may have left
    /// in its output folder: ours, never renamed into place. Only once the plan has checked
    /// that folder against the output root, so a planted symlink cannot point the sweep
    /// elsewhere.
    fn sweep_temporaries(
        &self,
        claimed: &str,
        original: &Path,
        stem: &str,
    ) -> std::result::Result<(), String> {
        // Its own report and error file, staged in the task folder beside other tasks' (which
        // may be live): only the temporaries for those two names.
        for own in ["report.md", "error.json"] {
            crate::format::staged::remove_stale_temporaries_for(
                &self.path(&format!("{stem}.{own}")),
            );
        }
        let task = self.read_claimed(claimed, original)?;
        let plan = plan_task(&task, &self.run_options()).map_err(|e| e.to_string())?;
        crate::format::staged::remove_stale_temporaries(&plan.output_dir);
        Ok(())
    }

    fn run_one(
        &self,
        backend: &Backend,
        claimed: &str,
        original: &Path,
        stem: &str,
        attempt: u32,
    ) -> std::result::Result<Ran, String> {
        if attempt > 1 {
            self.sweep_temporaries(claimed, original, stem)?;
        }
        let task = self.read_claimed(claimed, original)?;
        let opts = self.run_options();
        // The report names the task file where it will be once done, so its `run` step finds it.
        let ext = original.extension().unwrap_or_default().to_string_lossy();
        let done = self.path(&format!("{stem}.task.task.{ext}.done"));
        let report = run_task(backend, &task, &done, &opts, &crate::progress::Silent)
            .map_err(|e| e.to_string())?;
        let md = std::fs::read(&report.report_path).map_err(|e| e.to_string())?;
        let mut staged = StagedOutputs::new();
        staged
            .write(&self.path(&format!("{stem}.report.md")), |w| {
                w.write_all(&md)
            })
            .and_then(|()| staged.commit().map(|_| ()))
            .map_err(|e| e.to_string())?;
        Ok(Ran {
            written: report.written.len(),
            output_dir: report.output_dir,
        })
    }

    fn worker(&self, backend: &Backend) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some((claimed, stem, ext, attempt)) = self.claim() {
                self.finish(backend, &claimed, &stem, &ext, attempt);
                continue;
            }
            if self.opts.exit_when_idle && count(&self.opts.tasks).running == 0 {
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
    let daemons = opts.tasks.join(".foundry/daemons");
    std::fs::create_dir_all(&daemons).map_err(|e| Error::io(&daemons, "create directory", e))?;
    let nonce = hex::encode(
        &crate::analysis::sha256(
            format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
        )[..4],
    );
    let id = format!("{}-{nonce}", std::process::id());
    let lock_path = daemons.join(format!("{id}.lock"));
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, "create", e))?;
    // Held until the process ends, however it ends: a free lock means a dead daemon.
    lock.lock().map_err(|e| Error::io(&lock_path, "lock", e))?;
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
