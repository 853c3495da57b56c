//! Least privilege: a daemon running as root runs each task with its task file owner's rights
//! (uid, group, supplementary groups) in a child process, so the kernel refuses whatever the
//! author could not read; `--run-as-daemon-user` turns it off. These tests give files to
//! `nobody`, so they need root (CI runs as root); without it cargo counts them as ignored.

use crate::harness::{foundry_cmd, give_to_nobody, names_in, open_the_way_to, s, NOBODY};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const SECRET: &[u8] = b"ROOT-ONLY-9d2e: bytes only root may read\n";

/// A shared drop folder (`tasks/`, 1777, as `/tmp` is) holding a root-only `secret.bin` (0600)
/// and a world-readable `open.bin`; the output root `out/` is made by the daemon.
struct Shared {
    _dir: tempfile::TempDir,
    tasks: PathBuf,
    out: PathBuf,
}

fn shared() -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::set_permissions(&tasks, std::fs::Permissions::from_mode(0o1777)).unwrap();
    open_the_way_to(&tasks);
    let secret = tasks.join("secret.bin");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        tasks.join("open.bin"),
        b"bytes anyone may read\n".repeat(20),
    )
    .unwrap();
    Shared {
        out: dir.path().join("out"),
        _dir: dir,
        tasks,
    }
}

/// Writes the task `stem` (a `type` task of `source`), owned by `nobody` when `theirs`.
fn task(shared: &Shared, stem: &str, kind: &str, source: &str, theirs: bool) -> PathBuf {
    let path = shared.tasks.join(format!("{stem}.task.json"));
    let body = serde_json::json!({"task_id": stem, "type": kind, "source": source});
    std::fs::write(&path, body.to_string()).unwrap();
    if theirs {
        give_to_nobody(&path);
    }
    path
}

fn daemon(shared: &Shared, extra: &[&str]) -> std::process::Output {
    let output = foundry_cmd()
        .args(["daemon", "--tasks", s(&shared.tasks)])
        .args(["--output-root", s(&shared.out)])
        .args(["--backend", "cpu", "--poll-ms", "50", "--exit-when-idle"])
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    output
}

fn error_of(shared: &Shared, stem: &str) -> String {
    assert!(
        shared
            .tasks
            .join(format!("{stem}.task.json.failed"))
            .exists(),
        "{stem} did not fail: {:?}",
        names_in(&shared.tasks)
    );
    std::fs::read_to_string(shared.tasks.join(format!("{stem}.error.json"))).unwrap()
}

fn done(shared: &Shared, stem: &str) -> bool {
    shared
        .tasks
        .join(format!("{stem}.task.task.json.done"))
        .exists()
}

/// Whether anything below `dir` holds the secret, or its SHA-256 (which every sidecar and
/// district records for what was folded; a brick's bytes are folded, never in a row).
fn holds_secret(dir: &Path) -> bool {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(SECRET));
    let bytes = crate::harness::bytes_below(dir);
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|window| window == needle);
    has(SECRET) || has(sha.as_bytes())
}

#[test]
#[cfg_attr(
    foundry_not_root,
    ignore = "needs root: gives task files to another user"
)]
fn a_task_runs_with_its_owners_rights_and_reads_only_what_they_may() {
    let shared = shared();
    task(&shared, "mine", "convert_binary", "secret.bin", false);
    task(&shared, "theirs", "convert_binary", "secret.bin", true);
    task(&shared, "theirs_open", "convert_binary", "open.bin", true);
    daemon(&shared, &[]);
    // Root's own task keeps root's rights (under the policy): it reads the root-only file.
    assert!(done(&shared, "mine"), "{:?}", names_in(&shared.tasks));
    // nobody's task is refused by the kernel, and says as whom it ran.
    let error = error_of(&shared, "theirs");
    assert!(error.contains("Permission denied"), "{error}");
    assert!(error.contains("uid 65534"), "{error}");
    assert!(!holds_secret(&shared.out.join("theirs")));
    // nobody's task on what nobody may read runs, and its outputs are nobody's.
    assert!(
        done(&shared, "theirs_open"),
        "{:?}",
        names_in(&shared.tasks)
    );
    let folder = std::fs::metadata(shared.out.join("theirs_open")).unwrap();
    assert_eq!((folder.uid(), folder.gid()), (NOBODY, NOBODY));
    for name in names_in(&shared.out.join("theirs_open")) {
        let meta = std::fs::metadata(shared.out.join("theirs_open").join(&name)).unwrap();
        assert_eq!(meta.uid(), NOBODY, "{name} is not nobody's");
    }
    let report = std::fs::read_to_string(shared.tasks.join("theirs_open.report.md")).unwrap();
    assert!(report.contains("theirs_open"), "{report}");
}

#[test]
#[cfg_attr(
    foundry_not_root,
    ignore = "needs root: gives task files to another user"
)]
fn run_as_daemon_user_gives_every_task_the_daemons_rights() {
    let shared = shared();
    task(&shared, "theirs", "convert_binary", "secret.bin", true);
    daemon(&shared, &["--run-as-daemon-user"]);
    assert!(done(&shared, "theirs"), "{:?}", names_in(&shared.tasks));
    assert!(holds_secret(&shared.out.join("theirs")));
}

#[test]
#[cfg_attr(
    foundry_not_root,
    ignore = "needs root: gives task files to another user"
)]
fn a_tree_task_of_another_user_leaves_out_what_they_cannot_read() {
    let shared = shared();
    let tree = shared.tasks.join("tree");
    std::fs::create_dir_all(tree.join("private")).unwrap();
    std::fs::write(tree.join("readable.txt"), b"anyone may read this\n").unwrap();
    std::fs::write(tree.join("secret.txt"), SECRET).unwrap();
    std::fs::set_permissions(
        tree.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(tree.join("private/inner.txt"), SECRET).unwrap();
    std::fs::set_permissions(tree.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    task(&shared, "tree", "convert_directory", "tree", true);
    daemon(&shared, &[]);
    assert!(!holds_secret(&shared.out), "the secret reached the outputs");
    if done(&shared, "tree") {
        let district = std::fs::read_to_string(shared.out.join("tree/district.json")).unwrap();
        assert!(district.contains("readable.txt"), "{district}");
    } else {
        let error = error_of(&shared, "tree");
        assert!(error.contains("Permission denied"), "{error}");
    }
}

#[test]
#[cfg_attr(foundry_not_root, ignore = "needs root: gives files to another user")]
fn a_symlink_cannot_hand_in_another_users_task_file() {
    let shared = shared();
    // Root's task, already done, and nobody's link to it under a pending name: run with whose
    // rights? Neither: the link's owner is not the file's.
    let roots = shared.tasks.join("root.task.task.json.done");
    std::fs::write(
        &roots,
        serde_json::json!({"task_id": "again", "type": "convert_binary", "source": "secret.bin"})
            .to_string(),
    )
    .unwrap();
    let link = shared.tasks.join("again.task.json");
    std::os::unix::fs::symlink("root.task.task.json.done", &link).unwrap();
    give_to_nobody(&link);
    daemon(&shared, &[]);
    let error = error_of(&shared, "again");
    assert!(
        error.contains("a symlink owned by uid 65534 to a file owned by uid 0"),
        "{error}"
    );
    assert!(!shared.out.join("again").exists());
}

#[test]
#[cfg_attr(
    foundry_not_root,
    ignore = "needs root: gives task files to another user"
)]
fn a_task_owner_who_stops_their_task_cannot_hold_the_daemon() {
    let shared = shared();
    std::fs::write(
        shared.tasks.join("big.bin"),
        crate::harness::sample_bytes(96 << 20, 5),
    )
    .unwrap();
    task(&shared, "slow", "convert_binary", "big.bin", true);
    let mut daemon = foundry_cmd()
        .args(["daemon", "--tasks", s(&shared.tasks)])
        .args(["--output-root", s(&shared.out)])
        .args(["--backend", "cpu", "--poll-ms", "50", "--exit-when-idle"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The owner (nobody) stops their own task's process, as they may.
    let mut stopped = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !stopped && std::time::Instant::now() < deadline {
        let found = std::process::Command::new("pgrep")
            .args(["-u", "65534", "-f", "task-worker"])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&found.stdout).split_whitespace() {
            stopped |= std::process::Command::new("kill")
                .args(["-STOP", pid])
                .status()
                .unwrap()
                .success();
        }
    }
    assert!(stopped, "the task's process was found and stopped");
    let status = crate::harness::wait_exit(&mut daemon, std::time::Duration::from_secs(60));
    assert!(status.success());
    let error = error_of(&shared, "slow");
    assert!(error.contains("was stopped by signal"), "{error}");
}

#[test]
#[cfg_attr(
    foundry_not_root,
    ignore = "needs root: gives task files to another user"
)]
fn a_task_never_replaces_another_users_finished_task() {
    let shared = shared();
    // Root's task `a`, finished: its task file and report.
    let done = shared.tasks.join("a.task.task.json.done");
    let report = shared.tasks.join("a.report.md");
    std::fs::write(&done, "root's finished task").unwrap();
    std::fs::write(&report, "root's report").unwrap();
    task(&shared, "a", "convert_binary", "open.bin", true);
    daemon(&shared, &[]);
    let error = error_of(&shared, "a");
    assert!(error.contains("a finished task of this name"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&done).unwrap(),
        "root's finished task"
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "root's report");
    // Failing twice under the same name keeps both errors.
    task(&shared, "a", "convert_binary", "open.bin", true);
    daemon(&shared, &[]);
    assert!(shared.tasks.join("a.task.json.failed.2").exists());
    assert!(shared.tasks.join("a.error.2.json").exists());
    assert_eq!(
        std::fs::read_to_string(&done).unwrap(),
        "root's finished task"
    );
}

#[test]
#[cfg_attr(
    foundry_not_root,
    ignore = "needs root: gives task files to another user"
)]
fn a_task_is_planned_with_its_owners_rights_so_errors_tell_nothing_root_sees() {
    let shared = shared();
    // A root-only folder outside every allowed root, and a file in it held open by this
    // (root) process: planned by root, the refusal would name where the link leads.
    let private = shared.tasks.parent().unwrap().join("private-plans");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let held = std::fs::File::create(private.join("acme-buyout.txt")).unwrap();
    let source = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&held)
    );
    task(&shared, "peek", "convert_binary", &source, true);
    daemon(&shared, &[]);
    let error = error_of(&shared, "peek");
    assert!(
        !error.contains("acme-buyout") && !error.contains("private-plans"),
        "{error}"
    );
}

#[test]
fn a_task_cannot_send_the_operators_token_to_a_server_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), b"some bytes").unwrap();
    let file = dir.path().join("l.task.json");
    std::fs::write(
        &file,
        serde_json::json!({"task_id": "l", "type": "analyze_system", "source": "f.bin",
            "llm_url": "http://127.0.0.1:9"})
        .to_string(),
    )
    .unwrap();
    let o = foundry_cmd()
        .args(["run", s(&file), "--output-root", s(&dir.path().join("out"))])
        .args(["--backend", "cpu", "-q"])
        .env("LM_API_TOKEN", "operators-token")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("a task may not choose the server"), "{err}");
}
