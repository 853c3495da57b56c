//! Faults injected into real runs: the disk filling up while outputs are written, sources
//! vanishing and permissions changing in the middle of a walk, and repeated SIGKILLs of the
//! daemon in the middle of a task. Each time nothing is lost: no partial outputs, previous
//! outputs intact, and every task ends exactly once, done or failed with a reason.

use crate::harness::{foundry_cmd, s, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_foundry-gpu")
}

/// Every file below `dir`, relative, with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `foundry-gpu ARGS` with a file-size limit of `limit_kib` and SIGXFSZ ignored, so a write
/// past the limit fails with EFBIG ("File too large") the way a full disk fails with ENOSPC.
fn run_with_file_size_limit(limit_kib: u64, args: &[&str]) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {limit_kib}; exec \"$0\" \"$@\""
        ))
        .arg(bin())
        .args(args)
        .env("FOUNDRY_LLM_URL", "http://127.0.0.1:9")
        .output()
        .unwrap()
}

/// The binary as a user whom file modes bind. Root reads everything whatever the modes say, so
/// it drops to nobody; any other user is bound by them already, and could not switch user.
fn foundry_bound_by_modes() -> Command {
    if !crate::harness::is_root() {
        return foundry_cmd();
    }
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
        .env("FOUNDRY_LLM_URL", "http://127.0.0.1:9");
    c
}

#[test]
fn a_full_disk_fails_the_task_with_the_reason_and_keeps_the_previous_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&tasks).unwrap();
    let source = tasks.join("data.bin");
    std::fs::write(&source, crate::harness::sample_bytes(20_000, 1)).unwrap();
    let task = tasks.join("t.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "t", "type": "convert_binary", "source": "data.bin"}"#,
    )
    .unwrap();
    let args = [
        "run",
        s(&task),
        "--output-root",
        s(&out),
        "--backend",
        "cpu",
    ];
    let first = run_with_file_size_limit(1 << 20, &args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = snapshot(&out);
    assert!(before.len() >= 3);

    // The source grows past what the "disk" can take.
    std::fs::write(&source, crate::harness::sample_bytes(3 << 20, 2)).unwrap();
    let full = run_with_file_size_limit(1024, &args);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success());
    assert!(stderr.contains("File too large"), "{stderr}");
    assert_eq!(
        snapshot(&out),
        before,
        "previous outputs intact, no partial or temporary file"
    );

    // Through the daemon the task ends once, failed, with the reason beside it.
    std::fs::rename(&task, tasks.join("d.task.json")).unwrap();
    let daemon = run_with_file_size_limit(
        1024,
        &[
            "daemon",
            "--tasks",
            s(&tasks),
            "--output-root",
            s(&out),
            "--backend",
            "cpu",
            "--exit-when-idle",
            "--poll-ms",
            "50",
        ],
    );
    assert!(
        daemon.status.success(),
        "{}",
        String::from_utf8_lossy(&daemon.stderr)
    );
    assert!(tasks.join("d.task.json.failed").exists());
    let reason = std::fs::read_to_string(tasks.join("d.error.json")).unwrap();
    assert!(reason.contains("File too large"), "{reason}");
    assert_eq!(snapshot(&out), before);
}

/// A tree of `n` files in `n / 100` folders, in path order.
fn tree(root: &Path, n: usize) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for i in 0..n {
        let sub = root.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        let file = sub.join(format!("f{i:05}.txt"));
        std::fs::write(&file, format!("file {i}\n").repeat(40)).unwrap();
        files.push(file);
    }
    files
}

/// Runs a convert_directory task over `tree/` while `meddle` changes the tree once the walk is
/// done (the output folder appears after it); returns the district index. With `modes_count`
/// the run must be refused what the files' modes refuse.
fn run_tree_task_while(
    dir: &Path,
    modes_count: bool,
    meddle: impl FnOnce() + Send,
) -> serde_json::Value {
    let tasks = dir.join("tasks");
    let out = dir.join("out");
    let task = tasks.join("t.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "t", "type": "convert_directory", "source": "tree", "max_files": 100000, "file_bricks": true}"#,
    )
    .unwrap();
    let mut command = if modes_count {
        foundry_bound_by_modes()
    } else {
        foundry_cmd()
    };
    command
        .args([
            "run",
            s(&task),
            "--output-root",
            s(&out),
            "--backend",
            "cpu",
        ])
        .env("HOME", dir);
    let district = out.join("t");
    let status = std::thread::scope(|scope| {
        let child = scope.spawn(move || command.output().unwrap());
        wait_for(
            Duration::from_secs(60),
            "the walk done (output folder made)",
            || district.exists(),
        );
        meddle();
        child.join().unwrap()
    });
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let index = std::fs::read_to_string(out.join("t/district.json")).unwrap();
    serde_json::from_str(&index).unwrap()
}

/// Every file the index lists as folded has a brick that unfolds to what was read.
fn check_index_consistent(out: &Path, index: &serde_json::Value) -> usize {
    let files = index["files"].as_array().unwrap();
    for f in files {
        let brick = out.join("t").join(f["brick"].as_str().unwrap());
        let back = foundry_gpu::fold::decode(&foundry_gpu::Backend::Cpu, &brick).unwrap();
        assert_eq!(
            foundry_gpu::analysis::sha256(&back.bytes).to_vec(),
            hex::decode(f["sha256"].as_str().unwrap()).unwrap()
        );
    }
    files.len()
}

#[test]
fn files_vanishing_mid_walk_are_skipped_as_vanished_and_the_task_still_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let files = tree(&dir.path().join("tasks/tree"), 4000);
    let index = run_tree_task_while(dir.path(), false, || {
        // Folding goes in path order: the last files go before their turn comes.
        for f in files.iter().rev().take(1500) {
            std::fs::remove_file(f).unwrap();
        }
    });
    assert_the_rest_folded(dir.path(), &index, "vanished");
}

/// Every one of the 4,000 files was either folded (consistently) or skipped for `reason`, and
/// some were skipped: the meddling landed after the walk had listed them.
fn assert_the_rest_folded(dir: &Path, index: &serde_json::Value, reason: &str) {
    let folded = check_index_consistent(&dir.join("out"), index);
    let skipped = index["skipped"]["counts"][reason].as_u64().unwrap_or(0);
    eprintln!("folded {folded}, {reason} {skipped}");
    assert!(skipped > 0, "no file was skipped as {reason}");
    assert_eq!(folded as u64 + skipped, 4000);
}

#[test]
fn permissions_changing_mid_walk_are_skipped_as_denied_and_the_task_still_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("tasks/tree");
    let files = tree(&root, 4000);
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::set_permissions(
        dir.path().join("out"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let index = run_tree_task_while(dir.path(), true, || {
        for f in files.iter().rev().take(1500) {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
    });
    assert_the_rest_folded(dir.path(), &index, "permission denied");
}

/// The tasks the daemon with process id `pid` started, as (stem, attempt), from runs.log: the
/// daemon appends `STEM DAEMON-ID attempt N` as it starts each attempt, its ID starting with
/// its pid. A line still being written is skipped.
fn started_by(tasks: &Path, pid: u32) -> Vec<(String, u32)> {
    std::fs::read_to_string(tasks.join(".foundry/runs.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
            [stem, id, "attempt", attempt] if id.starts_with(&format!("{pid}-")) => {
                Some((stem.to_string(), attempt.parse().ok()?))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn sigkill_mid_task_reruns_that_task_once_and_every_task_ends_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    let out = dir.path().join("out");
    std::fs::create_dir_all(tasks.join("src")).unwrap();
    let n = 30;
    for i in 0..n {
        // About a tenth of a second of work each, so that most kills land inside a task.
        std::fs::write(
            tasks.join(format!("src/f{i:03}.bin")),
            crate::harness::sample_bytes(300_000 + i * 997, i as u64),
        )
        .unwrap();
        std::fs::write(
            tasks.join(format!("t{i:03}.task.json")),
            format!(
                r#"{{"task_id": "t{i:03}", "type": "convert_binary", "source": "src/f{i:03}.bin"}}"#
            ),
        )
        .unwrap();
    }
    let daemon = |exit_when_idle: bool| {
        let mut c = foundry_cmd();
        c.args(["daemon", "--tasks", s(&tasks), "--output-root", s(&out)])
            .args(["--backend", "cpu", "--poll-ms", "20"]);
        if exit_when_idle {
            c.arg("--exit-when-idle");
        }
        c.spawn().unwrap()
    };
    // Stems that a killed daemon had started and not finished, once per kill.
    let mut held: Vec<String> = Vec::new();
    let mut kills_leaving_temporaries = 0;
    // How long after a task starts each kill lands: inside the fold, in the outputs' writes and
    // renames, at the task's own rename, or in the next task.
    for delay_ms in [0u64, 5, 20, 45, 80, 120, 170, 240] {
        let mut d = daemon(false);
        let pid = d.id();
        // With its one worker the daemon first takes over and finishes the task the previous
        // daemon held, so a first attempt starting means that takeover is over.
        wait_for(
            Duration::from_secs(60),
            &format!("daemon {pid} starts a task's first attempt"),
            || {
                started_by(&tasks, pid)
                    .iter()
                    .any(|(_, attempt)| *attempt == 1)
            },
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill().unwrap(); // SIGKILL
        d.wait().unwrap();
        // A claim the dead daemon had not yet logged (it logs just after claiming) is re-run
        // too, but that first attempt never counted as a run: only logged ones count as held.
        let started = started_by(&tasks, pid);
        let claim = format!(".claimed-{pid}-");
        held.extend(
            crate::harness::names_in(&tasks)
                .into_iter()
                .filter(|name| name.contains(&claim))
                .map(|name| name.split(".task.").next().unwrap().to_string())
                .filter(|stem| started.iter().any(|(s, _)| s == stem)),
        );
        if out.exists() && walk(&out).iter().any(|p| s(p).ends_with(".tmp")) {
            kills_leaving_temporaries += 1;
        }
    }
    eprintln!(
        "held by a killed daemon: {held:?}; kills leaving temporaries: {kills_leaving_temporaries}"
    );
    assert!(
        !held.is_empty(),
        "no kill landed mid-task, so no takeover was tested"
    );
    let mut d = daemon(true);
    assert!(crate::harness::wait_exit(&mut d, Duration::from_secs(180)).success());

    // Each task ran once, and a second time only after the daemon holding it was killed.
    let runs = crate::harness::runs_per_task(&tasks);
    assert_eq!(runs.len(), n, "every task started: {runs:?}");
    for (stem, &count) in &runs {
        let times_held = held.iter().filter(|h| *h == stem).count();
        assert_eq!(
            count,
            1 + times_held,
            "{stem} held by {times_held} killed daemons: {runs:?}"
        );
    }
    // Each task's outcome exists exactly once: done (never failed), with its report and one set
    // of outputs that unfolds to its source, and nothing half-written left behind.
    let names = crate::harness::names_in(&tasks);
    for i in 0..n {
        let stem = format!("t{i:03}");
        assert!(
            names.contains(&format!("{stem}.task.task.json.done"))
                && !names.contains(&format!("{stem}.task.json.failed"))
                && names.contains(&format!("{stem}.report.md"))
                && !names.contains(&format!("{stem}.error.json")),
            "{stem} ends exactly once, done: {names:?}"
        );
        let source = format!("f{i:03}.bin");
        assert_eq!(
            crate::harness::names_in(&out.join(&stem)),
            [
                format!("{source}.brick"),
                format!("{source}.preview.png"),
                format!("{source}.rts.png"),
                format!("{stem}.report.md"),
            ],
            "{stem}: one set of outputs"
        );
        let brick = out.join(&stem).join(format!("{source}.brick"));
        let back = foundry_gpu::fold::decode(&foundry_gpu::Backend::Cpu, &brick).unwrap();
        assert_eq!(
            back.bytes,
            std::fs::read(tasks.join("src").join(&source)).unwrap()
        );
    }
    assert!(
        !names.iter().any(|name| name.ends_with(".task.json")
            || name.contains(".claimed-")
            || name.ends_with(".tmp")),
        "nothing pending, claimed or half-written: {names:?}"
    );
    // A task taken over from a killed daemon has its old temporaries removed before the re-run.
    let temporaries: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| s(p).ends_with(".tmp"))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
}

#[test]
fn an_unreadable_kernel_module_is_listed_and_the_scan_of_the_others_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mods = dir.path().join("tasks/mods");
    std::fs::create_dir_all(&mods).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf");
    for name in ["a.ko", "b.ko", "c.ko"] {
        std::fs::copy(&sample, mods.join(name)).unwrap();
    }
    std::fs::set_permissions(mods.join("b.ko"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let task = dir.path().join("tasks/k.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "k", "type": "scan_kernel_modules", "source": "mods"}"#,
    )
    .unwrap();
    let run = foundry_bound_by_modes()
        .args([
            "run",
            s(&task),
            "--output-root",
            s(&out),
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let found: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("k/modules.json")).unwrap()).unwrap();
    let scanned: Vec<&str> = found["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(scanned.len(), 2, "{scanned:?}");
    assert!(scanned.iter().all(|p| !p.ends_with("b.ko")));
    let unreadable = &found["unreadable"][0];
    assert!(unreadable["path"].as_str().unwrap().ends_with("b.ko"));
    assert!(
        unreadable["error"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{unreadable}"
    );
}
