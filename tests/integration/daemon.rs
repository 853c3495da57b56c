//! The daemon: every task ends exactly once as done or failed, through malformed tasks,
//! SIGKILL in the middle of work, two daemons on one folder, and SIGTERM.

use crate::harness::{foundry_cmd, names_in, runs_per_task, wait_exit, wait_for};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// The daemon, quiet (no line per task in the test's output).
fn daemon(tasks: &Path, extra: &[&str]) -> Child {
    daemon_command(tasks, extra).arg("-q").spawn().unwrap()
}

/// The daemon on `tasks`, quick to poll, writing below `tasks/../out`.
fn daemon_command(tasks: &Path, extra: &[&str]) -> Command {
    let mut command = foundry_cmd();
    command
        .args([
            "daemon",
            "--tasks",
            tasks.to_str().unwrap(),
            "--backend",
            "cpu",
            "--poll-ms",
            "100",
            "--output-root",
        ])
        .arg(tasks.parent().unwrap().join("out"))
        .args(extra);
    command
}

fn count_suffix(tasks: &Path, suffix: &str) -> usize {
    names_in(tasks)
        .iter()
        .filter(|n| n.ends_with(suffix))
        .count()
}

/// `n` quick tasks, each folding its own little file.
fn drop_tasks(tasks: &Path, n: usize) {
    std::fs::create_dir_all(tasks.join("src")).unwrap();
    for i in 0..n {
        std::fs::write(
            tasks.join(format!("src/f{i:03}.txt")),
            format!("file number {i}\n").repeat(i + 1),
        )
        .unwrap();
        let task = format!(
            r#"{{"task_id": "t{i:03}", "type": "foundry-v2", "source": "src/f{i:03}.txt", "preview_side": 16}}"#
        );
        std::fs::write(tasks.join(format!("t{i:03}.task.json")), task).unwrap();
    }
}

/// Every task ended exactly once, as done, with an output that unfolds to its source.
fn check_all_done_once(tasks: &Path, n: usize) {
    let all = names_in(tasks);
    for i in 0..n {
        let stem = format!("t{i:03}");
        let done = all.contains(&format!("{stem}.task.task.json.done"));
        let failed = all.contains(&format!("{stem}.task.json.failed"));
        assert!(done ^ failed, "{stem} must end exactly once: {all:?}");
        assert!(
            done,
            "{stem} failed: {:?}",
            std::fs::read_to_string(tasks.join(format!("{stem}.error.json")))
        );
        assert!(all.contains(&format!("{stem}.report.md")));
        let brick = tasks
            .parent()
            .unwrap()
            .join(format!("out/{stem}/f{i:03}.txt.brick"));
        let back = foundry_gpu::fold::decode(&foundry_gpu::Backend::Cpu, &brick).unwrap();
        assert_eq!(
            back.bytes,
            std::fs::read(tasks.join(format!("src/f{i:03}.txt"))).unwrap()
        );
    }
    assert!(
        !all.iter()
            .any(|n| n.ends_with(".task.json") || n.contains(".claimed-")),
        "nothing pending or claimed: {all:?}"
    );
}

#[test]
fn malformed_tasks_fail_with_a_reason_and_the_daemon_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("in.txt"), "input").unwrap();
    let cases = [
        (
            "good.task.json",
            r#"{"task_id": "good", "type": "convert_binary", "source": "in.txt"}"#,
            None,
        ),
        ("json.task.json", "{\"task_id\": ", Some("not valid JSON")),
        ("yaml.task.yaml", "task_id: [oops\n", Some("not valid YAML")),
        (
            "nosource.task.json",
            r#"{"task_id": "n", "type": "convert_binary"}"#,
            Some("missing field \"source\""),
        ),
        (
            "type.task.json",
            r#"{"task_id": "t", "type": "convert_binarry", "source": "in.txt"}"#,
            Some("type: unknown value \"convert_binarry\""),
        ),
        (
            "field.task.json",
            r#"{"task_id": "f", "type": "convert_binary", "source": "in.txt", "texture_size": "big"}"#,
            Some("texture_size: invalid type"),
        ),
        (
            "absent.task.json",
            r#"{"task_id": "a", "type": "convert_binary", "source": "no-such-file"}"#,
            Some("No such file"),
        ),
        (
            "dir.task.json",
            r#"{"task_id": "d", "type": "convert_binary", "source": "."}"#,
            Some("convert_binary takes one file"),
        ),
        (
            "yamlgood.task.yaml",
            "task_id: yg\ntype: analyze_system\nsource: in.txt\n",
            None,
        ),
    ];
    for (name, text, _) in &cases {
        std::fs::write(tasks.join(name), text).unwrap();
    }
    let mut d = daemon(&tasks, &["--exit-when-idle"]);
    assert!(wait_exit(&mut d, Duration::from_secs(60)).success());
    let all = names_in(&tasks);
    for (name, _, error) in &cases {
        let stem = name.split(".task.").next().unwrap();
        let ext = name.rsplit('.').next().unwrap();
        match error {
            None => {
                assert!(
                    all.contains(&format!("{stem}.task.task.{ext}.done")),
                    "{name}: {all:?}"
                );
                assert!(all.contains(&format!("{stem}.report.md")));
            }
            Some(reason) => {
                assert!(all.contains(&format!("{name}.failed")), "{name}: {all:?}");
                let error: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(tasks.join(format!("{stem}.error.json"))).unwrap(),
                )
                .unwrap();
                assert!(
                    error["reason"].as_str().unwrap().contains(reason),
                    "{name}: {error}"
                );
                assert_eq!(error["attempts"], 1);
                assert!(error["time"].as_f64().unwrap() > 0.0);
            }
        }
    }
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tasks.join(".foundry/status.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            status["done"].as_u64(),
            status["failed"].as_u64(),
            status["pending"].as_u64()
        ),
        (Some(2), Some(7), Some(0))
    );
    assert!(status["last_error"].is_string());
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(["status", "--tasks", tasks.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 pending, 0 running, 2 done, 7 failed"));
}

#[test]
fn sigkill_twice_mid_work_and_every_task_still_ends_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    drop_tasks(&tasks, 50);
    let mut d = daemon(&tasks, &[]);
    wait_for(Duration::from_secs(120), "10 tasks done", || {
        count_suffix(&tasks, ".done") >= 10
    });
    d.kill().unwrap(); // SIGKILL
    d.wait().unwrap();
    // A task the dead daemon was holding, if the kill landed mid-task.
    let held: Vec<String> = names_in(&tasks)
        .into_iter()
        .filter(|n| n.contains(".claimed-"))
        .map(|n| n.split(".task.").next().unwrap().to_string())
        .collect();
    let mut d = daemon(&tasks, &[]);
    wait_for(Duration::from_secs(120), "25 tasks done", || {
        count_suffix(&tasks, ".done") >= 25
    });
    d.kill().unwrap();
    d.wait().unwrap();
    let mut d = daemon(&tasks, &["--exit-when-idle"]);
    assert!(wait_exit(&mut d, Duration::from_secs(180)).success());
    check_all_done_once(&tasks, 50);
    // Re-runs happen only for tasks a killed daemon was holding.
    let runs = runs_per_task(&tasks);
    assert_eq!(runs.len(), 50);
    assert!(runs.values().all(|&n| n <= 2), "{runs:?}");
    for stem in &held {
        assert_eq!(
            runs[stem], 2,
            "{stem} was claimed by the killed daemon and re-run once"
        );
    }
    eprintln!("tasks held by the first killed daemon and re-run: {held:?}");
}

#[test]
fn two_daemons_on_one_folder_never_run_a_task_twice() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    drop_tasks(&tasks, 30);
    let mut a = daemon(&tasks, &["--exit-when-idle"]);
    let mut b = daemon(&tasks, &["--exit-when-idle", "--jobs", "2"]);
    assert!(wait_exit(&mut a, Duration::from_secs(120)).success());
    assert!(wait_exit(&mut b, Duration::from_secs(120)).success());
    check_all_done_once(&tasks, 30);
    let runs = runs_per_task(&tasks);
    assert_eq!(runs.len(), 30);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
}

#[test]
fn sigterm_finishes_the_current_task_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("live.txt"), "watch me").unwrap();
    std::fs::write(
        tasks.join("w.task.json"),
        r#"{"task_id": "w", "type": "watch_path", "source": "live.txt", "interval_ms": 100, "preview_side": 16}"#,
    )
    .unwrap();
    let mut d = daemon(&tasks, &[]);
    wait_for(Duration::from_secs(60), "the watch task claimed", || {
        names_in(&tasks).iter().any(|n| n.contains(".claimed-"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &d.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_exit(&mut d, Duration::from_secs(30)).success(),
        "exit 0 on SIGTERM"
    );
    assert!(names_in(&tasks).contains(&"w.task.task.json.done".to_string()));
}

/// True for `2026-12-04T10:15:00Z`.
fn is_iso_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && text.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn a_missing_task_folder_is_an_error_unless_create_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let misspelt = dir.path().join("taks");
    for args in [
        vec!["daemon", "--exit-when-idle", "--tasks"],
        vec!["daemon", "--dry-run", "--tasks"],
        vec!["status", "--tasks"],
    ] {
        let o = foundry_cmd()
            .args(&args)
            .arg(&misspelt)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: no such task folder", misspelt.display())),
            "{args:?}: {stderr}"
        );
        assert!(!misspelt.exists(), "{args:?} must not make the folder");
    }
    let o = foundry_cmd()
        .args([
            "daemon",
            "--exit-when-idle",
            "--create",
            "--backend",
            "cpu",
            "--tasks",
        ])
        .arg(&misspelt)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(misspelt.is_dir(), "--create makes it");
}

#[test]
fn the_daemon_says_when_each_task_starts_and_ends_and_q_silences_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("in.txt"), "input").unwrap();
    let drop_two = |tag: &str| {
        std::fs::write(
            tasks.join(format!("good{tag}.task.json")),
            format!(r#"{{"task_id": "good{tag}", "type": "convert_binary", "source": "in.txt"}}"#),
        )
        .unwrap();
        std::fs::write(
            tasks.join(format!("bad{tag}.task.json")),
            r#"{"task_id": "bad", "type": "convert_binary", "source": "no-such-file"}"#,
        )
        .unwrap();
    };
    drop_two("1");
    std::fs::write(
        tasks.join("look.task.yaml"),
        "task_id: look\ntype: analyze_system\nsource: in.txt\n",
    )
    .unwrap();
    let o = daemon_command(&tasks, &["--exit-when-idle"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let line = |what: &str| {
        lines
            .iter()
            .find(|l| l.get(21..).is_some_and(|rest| rest.starts_with(what)))
            .unwrap_or_else(|| panic!("a line \"TIME {what}...\" in {stderr}"))
    };
    for what in [
        "started good1 (",
        "done good1 in ",
        "started bad1 (",
        "failed bad1 in ",
    ] {
        let l = line(what);
        assert!(is_iso_time(&l[..20]), "{l}");
    }
    assert!(
        line("done good1 in ").contains("file(s) written in"),
        "{stderr}"
    );
    assert!(line("failed bad1 in ").contains("no-such-file"), "{stderr}");
    assert_eq!(lines.len(), 6, "one line per start and end: {stderr}");
    // `status` says when, in the same words.
    let o = foundry_cmd()
        .args(["status", "--tasks", tasks.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let written = stdout
        .split("status written ")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(is_iso_time(written.trim()), "{stdout}");
    let report = std::fs::read_to_string(tasks.join("good1.report.md")).unwrap();
    let started = report.split("Started ").nth(1).unwrap();
    assert!(is_iso_time(&started[..20]), "{report}");
    // A task only `run` can do again names its task file where the daemon left it.
    let report = std::fs::read_to_string(tasks.join("look.report.md")).unwrap();
    let run_step = format!(
        "foundry-gpu run {} --output-root",
        tasks.join("look.task.task.yaml.done").display()
    );
    assert!(report.contains(&run_step), "{report}");
    // -q: nothing per task.
    drop_two("2");
    let o = daemon_command(&tasks, &["--exit-when-idle", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        names_in(&tasks)
            .iter()
            .filter(|n| n.ends_with(".done") || n.ends_with(".failed"))
            .count(),
        5
    );
}

#[test]
fn a_daemon_whose_pipes_are_closed_still_finishes_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    drop_tasks(&tasks, 3);
    // Both of its output pipes closed before it starts, as `daemon 2>&1 | head -1` leaves them
    // once head has its line: a line per task and the summary fail to be written, the tasks
    // do not.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = daemon_command(&tasks, &["--exit-when-idle"])
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", o.status);
    check_all_done_once(&tasks, 3);
}
