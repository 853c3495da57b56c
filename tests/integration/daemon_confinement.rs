//! The daemon's writes stay inside its confinement against someone who can write the task
//! folder or the output root: planted symlinks for its bookkeeping and the map's lock, names
//! that look like its own state, an empty task_id, a folder swapped mid-run, and a claim step
//! that must not grow with the square of the number of tasks.

use crate::harness::{foundry_cmd, names_in, runs_per_task, s, Attacker};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn daemon_batch(tasks: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    foundry_cmd()
        .args(["daemon", "--tasks", s(tasks), "--output-root", s(out)])
        .args(["--backend", "cpu", "--poll-ms", "50", "--exit-when-idle"])
        .args(extra)
        .output()
        .unwrap()
}

/// `tasks/` (holding a small `ok.bin`), `out/` (not made) and `outside/` (made, empty).
fn folders() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tasks, out, outside) = (d.join("tasks"), d.join("out"), d.join("outside"));
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(tasks.join("ok.bin"), b"some bytes to fold").unwrap();
    (dir, tasks, out, outside)
}

fn convert(task_id: &str) -> String {
    serde_json::json!({"task_id": task_id, "type": "convert_binary", "source": "ok.bin"})
        .to_string()
}

/// Plants what a daemon that died holding the pending task file `name` at `attempt` leaves in
/// its journal: the task under its claimed name, the unlocked claim record, and the journal of
/// the temporaries it created (`temporaries`, by their real paths).
pub fn plant_dead_claim(
    tasks: &Path,
    name: &str,
    body: &str,
    attempt: u32,
    temporaries: &[PathBuf],
) {
    let state = tasks.join(".foundry");
    for sub in ["claims", "temporaries", "daemons"] {
        std::fs::create_dir_all(state.join(sub)).unwrap();
    }
    let claimed = format!("{name}.claimed-1-dead-a{attempt}");
    std::fs::write(tasks.join(&claimed), body).unwrap();
    let record = serde_json::json!({"task_file": name, "claimed": claimed, "daemon": "1-dead",
        "attempt": attempt});
    std::fs::write(
        state
            .join("claims")
            .join(foundry_gpu::task::daemon::claim_key(name)),
        record.to_string(),
    )
    .unwrap();
    let journal: String = temporaries
        .iter()
        .map(|p| format!("{}\n", serde_json::to_string(p).unwrap()))
        .collect();
    std::fs::write(state.join("temporaries/1-dead.jsonl"), journal).unwrap();
}

#[test]
fn runs_log_planted_as_a_symlink_is_refused_and_its_target_untouched() {
    let (_dir, tasks, out, outside) = folders();
    let crontab = outside.join("crontab");
    std::fs::write(&crontab, "# m h dom mon dow user command\n").unwrap();
    std::fs::create_dir_all(tasks.join(".foundry")).unwrap();
    std::os::unix::fs::symlink(&crontab, tasks.join(".foundry/runs.log")).unwrap();
    std::fs::write(
        tasks.join("* * * * * root touch PWNED #.task.json"),
        convert("t"),
    )
    .unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("runs.log: is a symlink; refusing to follow it"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&crontab).unwrap(),
        "# m h dom mon dow user command\n"
    );
}

#[test]
fn a_task_file_name_cannot_add_a_line_to_runs_log() {
    let (_dir, tasks, out, _outside) = folders();
    let name = "x\n* * * * * root touch PWNED #.task.json";
    std::fs::write(tasks.join(name), convert("t")).unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let log = std::fs::read_to_string(tasks.join(".foundry/runs.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].starts_with(r"x\x0a\x2a\x20\x2a\x20"),
        "the name is escaped: {log}"
    );
    assert!(tasks
        .join("x\n* * * * * root touch PWNED #.task.task.json.done")
        .exists());
}

#[test]
fn a_daemons_folder_planted_as_a_symlink_creates_no_lock_outside() {
    let (_dir, tasks, out, outside) = folders();
    std::fs::create_dir_all(tasks.join(".foundry")).unwrap();
    std::os::unix::fs::symlink(&outside, tasks.join(".foundry/daemons")).unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("daemons: is a symlink or not a folder"),
        "{stderr}"
    );
    assert!(names_in(&outside).is_empty(), "{:?}", names_in(&outside));
}

#[test]
fn a_manifest_lock_planted_as_a_symlink_is_refused_and_nothing_is_created() {
    let (dir, _tasks, _out, outside) = folders();
    let builder = dir.path().join("builder");
    std::fs::create_dir_all(builder.join("map")).unwrap();
    let nologin = outside.join("nologin");
    std::os::unix::fs::symlink(&nologin, builder.join("map/.manifest.lock")).unwrap();
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/hello.txt");
    let run = foundry_cmd()
        .args(["fold", s(&hello), "-o", s(&dir.path().join("one"))])
        .args(["--publish", s(&builder)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(".manifest.lock: is a symlink; refusing to follow it"),
        "{stderr}"
    );
    assert!(!nologin.exists(), "no file appeared where the link points");
}

#[test]
fn a_task_file_named_like_a_claim_is_just_a_task_and_runs_once() {
    let (_dir, tasks, out, _outside) = folders();
    // Long enough to be running while the second worker looks at the folder.
    std::fs::write(
        tasks.join("big.bin"),
        crate::harness::sample_bytes(3 << 20, 7),
    )
    .unwrap();
    let name = "x.task.json.claimed-999-dead-a1.task.json";
    std::fs::write(
        tasks.join(name),
        serde_json::json!({"task_id": "x", "type": "convert_binary", "source": "big.bin"})
            .to_string(),
    )
    .unwrap();
    let run = daemon_batch(&tasks, &out, &["--jobs", "2"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let runs = runs_per_task(&tasks);
    assert_eq!(runs.values().sum::<usize>(), 1, "{runs:?}");
    assert!(tasks
        .join("x.task.json.claimed-999-dead-a1.task.task.json.done")
        .exists());
}

#[test]
fn an_empty_or_dot_task_id_is_refused_and_nothing_lands_in_the_output_root() {
    let (_dir, tasks, out, _outside) = folders();
    std::fs::create_dir_all(&out).unwrap();
    for (stem, id) in [("a", ""), ("b", ".."), ("c", "."), ("d", "a/b")] {
        std::fs::write(tasks.join(format!("{stem}.task.json")), convert(id)).unwrap();
    }
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for stem in ["a", "b", "c", "d"] {
        let error: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tasks.join(format!("{stem}.error.json"))).unwrap(),
        )
        .unwrap();
        let reason = error["reason"].as_str().unwrap();
        assert!(reason.contains("task_id \""), "{stem}: {reason}");
        assert!(
            reason.contains("names the task's own output folder"),
            "{reason}"
        );
    }
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
}

/// The claim step's cost for `n` tasks that fail at once (unparsable), from the daemon's own
/// count of the names it listed.
fn names_examined_for(n: usize) -> u64 {
    let (_dir, tasks, out, _outside) = folders();
    for i in 0..n {
        std::fs::write(tasks.join(format!("t{i:05}.task.json")), "{}").unwrap();
    }
    let started = Instant::now();
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tasks.join(".foundry/status.json")).unwrap())
            .unwrap();
    assert_eq!(status["failed"].as_u64(), Some(n as u64), "{status}");
    let examined = status["names_examined"].as_u64().unwrap();
    eprintln!(
        "{n} tasks: {examined} names examined in {} listings, {:.1} s",
        status["folder_scans"],
        started.elapsed().as_secs_f64()
    );
    examined
}

#[test]
fn the_claim_step_grows_with_the_number_of_tasks_not_its_square() {
    let small = names_examined_for(1000);
    let large = names_examined_for(4000);
    // Four times the tasks: about four times the work; a rescan per task would be sixteen.
    assert!(
        large < 6 * small,
        "1,000 tasks: {small} names examined; 4,000: {large}"
    );
}

#[test]
fn an_output_folder_swapped_for_a_symlink_mid_run_gets_nothing_outside() {
    let (_dir, tasks, out, outside) = folders();
    std::fs::write(
        tasks.join("mid.bin"),
        crate::harness::sample_bytes(20_000, 3),
    )
    .unwrap();
    // Half of them fold a small tree, whose bricks go into folders made below `out/t`.
    for sub in ["a/b", "c"] {
        std::fs::create_dir_all(tasks.join("tree").join(sub)).unwrap();
        std::fs::write(tasks.join("tree").join(sub).join("f.txt"), b"a file").unwrap();
    }
    for i in 0..150 {
        let (kind, source) = if i % 2 == 0 {
            ("convert_binary", "mid.bin")
        } else {
            ("convert_directory", "tree")
        };
        std::fs::write(
            tasks.join(format!("t{i:03}.task.json")),
            serde_json::json!({"task_id": "t", "type": kind, "source": source}).to_string(),
        )
        .unwrap();
    }
    let link = out.join("t-link");
    std::fs::create_dir_all(&out).unwrap();
    if crate::harness::is_root() {
        crate::harness::open_the_way_to(&out);
        crate::harness::give_to_nobody(&out);
    }
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let mut daemon = foundry_cmd()
        .args(["daemon", "--tasks", s(&tasks), "--output-root", s(&out)])
        .args(["--backend", "cpu", "--poll-ms", "50", "--exit-when-idle"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let district = out.join("t");
    crate::harness::wait_for(Duration::from_secs(60), "the output folder made", || {
        district.exists()
    });
    // The attacker, a process of its own (as `nobody` when the tests run as root, owning the
    // output root as an attacker who can write it would), swaps the task's output folder and a
    // symlink to `outside/`, back and forth: an atomic exchange, so one of them always has
    // each name.
    let (swaps, _) = Attacker::swapping(&district, &link, 6.0).finish();
    let status = crate::harness::wait_exit(&mut daemon, Duration::from_secs(120));
    assert!(status.success());
    let done = names_in(&tasks)
        .iter()
        .filter(|n| n.ends_with(".done"))
        .count();
    eprintln!("{swaps} swaps; {done} of 150 tasks done, the rest refused");
    assert!(swaps > 10, "the swapper ran: {swaps}");
    assert!(
        names_in(&outside).is_empty(),
        "written outside the output root: {:?}",
        names_in(&outside)
    );
}

#[test]
fn state_owned_by_another_user_is_refused() {
    if !crate::harness::is_root() {
        eprintln!("not root: cannot give a file to another user; skipped");
        return;
    }
    let nobody = Some(rustix::process::Uid::from_raw(65534));
    // `.foundry/` made by someone else (who could then plant anything in it).
    let (_dir, tasks, out, _outside) = folders();
    std::fs::create_dir_all(tasks.join(".foundry")).unwrap();
    rustix::fs::chown(tasks.join(".foundry"), nobody, None).unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(".foundry: is owned by uid 65534"),
        "{stderr}"
    );
    // A runs.log that is someone else's regular file (a hard link to it, say).
    let (_dir, tasks, out, _outside) = folders();
    std::fs::create_dir_all(tasks.join(".foundry")).unwrap();
    let log = tasks.join(".foundry/runs.log");
    std::fs::write(&log, "theirs\n").unwrap();
    rustix::fs::chown(&log, nobody, None).unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("runs.log: is owned by uid 65534"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "theirs\n");
}

#[test]
fn a_claim_record_a_dead_daemon_was_writing_is_removed_and_claims_nothing() {
    let (_dir, tasks, out, _outside) = folders();
    std::fs::write(tasks.join("a.task.json"), convert("t")).unwrap();
    let state = tasks.join(".foundry");
    std::fs::create_dir_all(state.join("claims")).unwrap();
    std::fs::create_dir_all(state.join("daemons")).unwrap();
    // The daemon died between creating its record and linking it: its lock is free.
    std::fs::write(state.join("daemons/1-dead.lock"), b"").unwrap();
    let key = foundry_gpu::task::daemon::claim_key("a.task.json");
    let unfinished = state.join(format!("claims/.{key}.1-dead.0.new"));
    std::fs::write(&unfinished, b"{}").unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!unfinished.exists());
    assert!(tasks.join("a.task.task.json.done").exists());
    assert!(names_in(&state.join("claims")).is_empty());
}
