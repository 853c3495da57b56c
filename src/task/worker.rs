//! Least privilege for daemon tasks: a task whose file another user owns runs in a child
//! process with that user's credentials (uid, primary group, supplementary groups), as cron
//! runs a user's crontab, so the kernel refuses whatever its author could not read or write;
//! the policy's rules apply on top, in the child as in the daemon.
//!
//! The daemon hands the child one [`WorkerJob`] (the task's text, read from the descriptor the
//! daemon opened, and the daemon's options) on its standard input, and reads one
//! [`WorkerOutcome`] back from its standard output. The child is this program again
//! (`foundry-gpu task-worker`, hidden), so it obeys the same code, limits and policy.

use super::run::{run_task, RunOptions, TaskLlm};
use crate::backend::{Backend, BackendChoice, GpuOptions};
use crate::policy::{Policy, PolicySettings};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whose rights a daemon's tasks run with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskRights {
    /// The task file's owner's: a root daemon switches to them in a child process; a daemon
    /// that is not root runs only its own user's tasks.
    #[default]
    TaskOwner,
    /// The daemon's own, for every task (`daemon --run-as-daemon-user`): the policy alone
    /// decides what a task may read.
    Daemon,
}

/// The group of a user the system does not know, when the task file's group is root's.
const NOGROUP: u32 = 65_534;

/// A user's credentials, as a login (or cron) would give them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Every group the user is a member of, the primary one included.
    pub groups: Vec<u32>,
    /// The account's name, when the system has one for `uid`.
    pub user: Option<String>,
}

impl Credentials {
    /// The account `uid` as the system's user database knows it: its primary group and all its
    /// groups. A uid with no account gets `gid_if_unknown` (the task file's group) alone, or
    /// `nogroup` when that is root's group.
    pub fn of_user(uid: u32, gid_if_unknown: u32) -> Credentials {
        match account(uid) {
            Some((user, gid)) => {
                let groups = groups_of(&user, gid);
                Credentials {
                    uid,
                    gid,
                    groups,
                    user: Some(user),
                }
            }
            None => {
                // Never root's group for a user the system does not know.
                let gid = if gid_if_unknown == 0 {
                    NOGROUP
                } else {
                    gid_if_unknown
                };
                Credentials {
                    uid,
                    gid,
                    groups: vec![gid],
                    user: None,
                }
            }
        }
    }

    /// `uid 1000 (alice)`, for reports and errors.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(user) => format!("uid {} ({user})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// The name and primary group of the account `uid` (`getpwuid_r`).
fn account(uid: u32) -> Option<(String, u32)> {
    let mut buffer = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid value for getpwuid_r to fill in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length is its real length.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points at a NUL-terminated name in `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some((name.to_string_lossy().into_owned(), entry.pw_gid))
}

/// Every group `user` is a member of, with `gid` first (`getgrouplist`).
fn groups_of(user: &str, gid: u32) -> Vec<u32> {
    let Ok(name) = std::ffi::CString::new(user) else {
        return vec![gid];
    };
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count.max(1) as usize];
        let asked = count;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at most that many and
        // sets `count` to the number it needs when that is more.
        let found =
            unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if found >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= asked || count > 65_536 {
            return vec![gid];
        }
    }
}

/// How one task runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// In the daemon, with its rights.
    Daemon,
    /// In a child process with these credentials.
    Owner(Credentials),
}

/// Decides how a task whose file `owner_uid`:`owner_gid` owns runs under a daemon whose
/// effective uid is `daemon_uid`: `Err` says why it may not run at all.
pub fn run_as(
    owner_uid: u32,
    owner_gid: u32,
    rights: TaskRights,
    daemon_uid: u32,
) -> std::result::Result<RunAs, String> {
    if rights == TaskRights::Daemon || owner_uid == daemon_uid {
        return Ok(RunAs::Daemon);
    }
    if daemon_uid == 0 {
        return Ok(RunAs::Owner(Credentials::of_user(owner_uid, owner_gid)));
    }
    let owner = Credentials::of_user(owner_uid, owner_gid).describe();
    Err(format!(
        "the task file belongs to {owner}, and this daemon (uid {daemon_uid}) cannot take on \
         another user's rights: run the daemon as root (tasks then run as their owners), let \
         that user run their own daemon, or pass --run-as-daemon-user to run every task with \
         the daemon's rights"
    ))
}

/// One task for a child process: the task as read, and the daemon's options.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerJob {
    /// The task file's text, read by the daemon from the descriptor it opened.
    pub task_text: String,
    /// The task file's pending name, for errors.
    pub task_name: PathBuf,
    /// Where the task file will be once done (reports name it).
    pub task_file: PathBuf,
    pub output_root: PathBuf,
    pub task_root: PathBuf,
    pub publish: Option<PathBuf>,
    pub llm: TaskLlm,
    pub policy: PolicySettings,
    pub max_input: u64,
    pub publish_private: bool,
    /// Fold on the GPU (as the daemon does) rather than the CPU.
    pub gpu: bool,
}

/// What a child reports back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WorkerOutcome {
    Done {
        written: usize,
        output_dir: PathBuf,
        /// The task's report, in Markdown, for `STEM.report.md` beside the task file.
        report_md: String,
    },
    Failed(String),
}

/// Runs `job` in this process (the child's side): sets up the same limits, confinement and
/// policy as the daemon, then runs the task.
pub fn run_job(job: WorkerJob) -> WorkerOutcome {
    match run_job_inner(job) {
        Ok(outcome) => outcome,
        Err(e) => WorkerOutcome::Failed(e.to_string()),
    }
}

fn run_job_inner(job: WorkerJob) -> crate::Result<WorkerOutcome> {
    crate::source::set_max_input(job.max_input);
    crate::map::allow_private_publish(job.publish_private);
    let policy = Arc::new(Policy::new(&job.policy, &job.task_root, &job.output_root)?);
    crate::source::confine::confine_reads(policy.clone());
    super::run::confine_task_writes(
        &job.output_root,
        job.publish.as_deref(),
        Some(&job.task_root),
        &job.llm,
    )?;
    let task = super::parse_task(&job.task_name, &job.task_text)?;
    let choice = if job.gpu {
        BackendChoice::Gpu
    } else {
        BackendChoice::Cpu
    };
    let backend = Backend::select(choice, &GpuOptions::default())?;
    let opts = RunOptions {
        output_root: job.output_root,
        task_root: job.task_root,
        publish: job.publish,
        llm: job.llm,
        policy,
    };
    let report = run_task(
        &backend,
        &task,
        &job.task_file,
        &opts,
        &crate::progress::Silent,
    )?;
    let report_md = std::fs::read_to_string(&report.report_path)
        .map_err(|e| crate::Error::io(&report.report_path, "read", e))?;
    Ok(WorkerOutcome::Done {
        written: report.written.len(),
        output_dir: report.output_dir,
        report_md,
    })
}

/// The most a child may print back: a report is kilobytes.
const MAX_OUTCOME_BYTES: u64 = 64 << 20;

/// Runs `job` in a child process of `worker_exe` (this program, opened by the daemon) with
/// `credentials`, and waits for it. The program is started through its descriptor, so the task's
/// owner needs no way through the folders it was installed in.
pub fn run_in_child(
    worker_exe: &std::fs::File,
    credentials: &Credentials,
    job: &WorkerJob,
) -> std::result::Result<WorkerOutcome, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let who = credentials.describe();
    let (uid, gid, groups) = (credentials.uid, credentials.gid, credentials.groups.clone());
    let mut command = Command::new(format!("/proc/self/fd/{}", worker_exe.as_raw_fd()));
    command
        .arg("task-worker")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // The child reports through its outcome; what it might print is its owner's to choose
        // and never reaches the daemon's log.
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (setgroups, setresgid, setresuid, prctl, getppid) on data prepared before the fork.
    unsafe {
        command.pre_exec(move || become_user(uid, gid, &groups));
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the task as {who}: {e}"))?;
    let text = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    // The job is written and the reply read beside the wait: the owner may stop their process
    // (SIGSTOP) at any point, which must not hold a worker of the daemon, so a stopped child
    // is killed, which ends both pipes. A child that died at once closes its end of the job's
    // pipe; its exit status says why, below.
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&text);
    });
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut reply = Vec::new();
        stdout
            .take(MAX_OUTCOME_BYTES)
            .read_to_end(&mut reply)
            .map(|_| reply)
    });
    let status = wait_unless_stopped(&mut child)
        .map_err(|e| format!("the task's process, run as {who}: {e}"))?;
    let _ = writer.join();
    let reply = reader
        .join()
        .map_err(|_| format!("the task's process, run as {who}: its reply was lost"))?
        .map_err(|e| format!("the task's process, run as {who}: {e}"))?;
    if let Some(stopped) = status.stopped_by {
        return Err(format!(
            "the task's process, run as {who}, was stopped by signal {stopped}, and killed"
        ));
    }
    let status = status.exit;
    match serde_json::from_slice::<WorkerOutcome>(&reply) {
        Ok(outcome) => Ok(outcome),
        Err(_) => Err(format!(
            "the task's process, run as {who}, ended ({status}) without a result"
        )),
    }
}

/// How a child ended.
struct Ended {
    /// Its exit status, as `std` shows it.
    exit: std::process::ExitStatus,
    /// The signal that stopped it, when it was stopped (and then killed).
    stopped_by: Option<i32>,
}

/// Waits for `child`; a child that stops instead of ending is killed and reaped.
fn wait_unless_stopped(child: &mut std::process::Child) -> std::io::Result<Ended> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waits for our own child, whose pid `std` has not reaped (we never call its
        // wait); `status` is a valid place for the result.
        let found = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
        if found < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if libc::WIFSTOPPED(status) {
            let signal = libc::WSTOPSIG(status);
            let _ = child.kill();
            let exit = child.wait()?;
            return Ok(Ended {
                exit,
                stopped_by: Some(signal),
            });
        }
        return Ok(Ended {
            exit: std::process::ExitStatus::from_raw(status),
            stopped_by: None,
        });
    }
}

/// In the forked child, before exec: takes on the task owner's groups, group and user, for
/// good (real, effective and saved ids), dies with its parent, and can never gain privileges.
fn become_user(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    let fail = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on valid arguments; `groups` outlives the call.
    unsafe {
        let parent = libc::getppid();
        fail(libc::setgroups(groups.len(), groups.as_ptr()) == 0)?;
        fail(libc::setresgid(gid, gid, gid) == 0)?;
        fail(libc::setresuid(uid, uid, uid) == 0)?;
        // Root can never be had back: a failed drop must not run the task.
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        // Set after the uid change, which clears it: a daemon killed mid-task takes its
        // tasks with it (the next daemon runs them again).
        fail(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0)?;
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        fail(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)?;
        // Descriptors the daemon inherited from whatever started it close at exec (ours are
        // close-on-exec already). Kernels before 5.11 lack the flag: nothing more to do there.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
        let _ = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
    }
    Ok(())
}

/// The child's side of [`run_in_child`]: reads the job from standard input, runs it, and
/// prints the outcome on standard output.
pub fn serve_one_job() -> std::io::Result<()> {
    // Another process of the same user may not read this one's memory (the job holds the
    // daemon's options, its LLM token among them).
    // SAFETY: a plain prctl on this process.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    let mut text = Vec::new();
    std::io::stdin()
        .take(MAX_OUTCOME_BYTES)
        .read_to_end(&mut text)?;
    let outcome = match serde_json::from_slice::<WorkerJob>(&text) {
        Ok(job) => run_job(job),
        Err(e) => WorkerOutcome::Failed(format!("task-worker: not a job from a daemon: {e}")),
    };
    let reply = serde_json::to_vec(&outcome).expect("outcomes serialise");
    std::io::stdout().write_all(&reply)
}

/// Makes the folder `OUTPUT_ROOT/NAME` a task run as `owner` writes into: created (through the
/// confined output root's descriptor) and given to the owner when new; left as it is when it
/// exists, so the kernel decides whether the owner may write there.
pub fn prepare_output_dir(
    output_root: &Path,
    name: &str,
    owner: &Credentials,
) -> crate::Result<()> {
    use rustix::fs::{Mode, OFlags};
    crate::format::staged::create_dir_all(output_root)?;
    let root = crate::format::staged::open_confined_dir(output_root)?;
    let shown = output_root.join(name);
    match rustix::fs::mkdirat(&root, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => return Ok(()),
        Err(e) => return Err(crate::Error::io(&shown, "create directory", e.into())),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let folder = rustix::fs::openat(&root, name, flags, Mode::empty())
        .map_err(|e| crate::Error::io(&shown, "open folder", e.into()))?;
    rustix::fs::fchown(
        &folder,
        Some(rustix::process::Uid::from_raw(owner.uid)),
        Some(rustix::process::Gid::from_raw(owner.gid)),
    )
    .map_err(|e| crate::Error::io(&shown, "give to the task's owner", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown_users_resolve() {
        let root = Credentials::of_user(0, 0);
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.user.as_deref(), Some("root"));
        assert!(root.groups.contains(&0), "{root:?}");
        let nobody = Credentials::of_user(4_000_000_123, 4_000_000_124);
        assert_eq!(nobody.user, None);
        assert_eq!(nobody.groups, vec![4_000_000_124]);
    }

    #[test]
    fn who_runs_a_task() {
        assert_eq!(run_as(0, 0, TaskRights::TaskOwner, 0), Ok(RunAs::Daemon));
        assert_eq!(
            run_as(1000, 1000, TaskRights::TaskOwner, 1000),
            Ok(RunAs::Daemon)
        );
        assert_eq!(run_as(1000, 1000, TaskRights::Daemon, 0), Ok(RunAs::Daemon));
        assert!(matches!(
            run_as(1000, 1000, TaskRights::TaskOwner, 0),
            Ok(RunAs::Owner(Credentials { uid: 1000, .. }))
        ));
        let refused = run_as(1000, 1000, TaskRights::TaskOwner, 1001).unwrap_err();
        assert!(refused.contains("--run-as-daemon-user"), "{refused}");
    }
}
