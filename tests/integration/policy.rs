//! The policy and daemon hygiene, through the real binary: refused sources fail with the rule,
//! outputs cannot escape the output root (not even through a symlink), task files that are too
//! big, too deep, absurd or symlinked out of the folder fail cleanly, outputs keep the source's
//! secrecy, and `--dry-run` reads and writes nothing.

use crate::harness::{foundry, foundry_cmd, s};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Runs the daemon once over `tasks` (exits when idle), hermetic about the LLM.
fn daemon_batch(tasks: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    foundry_cmd()
        .current_dir(tasks.parent().unwrap())
        .args(["daemon", "--tasks", s(tasks), "--output-root", s(out)])
        .args(["--backend", "cpu", "--poll-ms", "50", "--exit-when-idle"])
        .args(extra)
        .output()
        .unwrap()
}

fn error_reason(tasks: &Path, stem: &str) -> String {
    let text = std::fs::read_to_string(tasks.join(format!("{stem}.error.json")))
        .unwrap_or_else(|e| panic!("{stem}.error.json: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["reason"].as_str().unwrap().to_string()
}

fn task(tasks: &Path, stem: &str, body: &str) {
    std::fs::write(tasks.join(format!("{stem}.task.json")), body).unwrap();
}

/// The text of a convert_binary task `task_id` folding `source`.
fn convert_task(task_id: &str, source: &str) -> String {
    convert_task_with(task_id, source, json!({}))
}

/// `convert_task` with the fields of the object `extra` added.
fn convert_task_with(task_id: &str, source: &str, extra: serde_json::Value) -> String {
    let mut body = json!({"task_id": task_id, "type": "convert_binary", "source": source});
    let fields = body.as_object_mut().unwrap();
    fields.extend(extra.as_object().expect("extra is an object").clone());
    body.to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A test's folders: `tasks/` (made, holding a small `ok.bin`) and `out/` (not made), in a
/// temporary folder that lives as long as the returned guard.
fn task_folders() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, out) = (dir.path().join("tasks"), dir.path().join("out"));
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("ok.bin"), b"bytes").unwrap();
    (dir, tasks, out)
}

#[test]
fn the_daemon_refuses_what_the_policy_denies_and_names_the_rule() {
    let (dir, tasks, out) = task_folders();
    std::fs::write(tasks.join("ok.bin"), b"fine bytes").unwrap();
    std::fs::write(dir.path().join("elsewhere.bin"), b"not allowed").unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere.bin"), tasks.join("link.bin")).unwrap();
    let convert = |source: &str| convert_task("t", source);
    // Absolute and outside the output root, yet inside this test's own folder.
    let escape = dir.path().join("escape");
    task(&tasks, "a_ok", &convert("ok.bin"));
    task(&tasks, "b_shadow", &convert("/etc/shadow"));
    task(&tasks, "c_environ", &convert("/proc/self/environ"));
    task(&tasks, "d_kcore", &convert("/proc/kcore"));
    task(
        &tasks,
        "e_outside",
        &convert(s(&dir.path().join("elsewhere.bin"))),
    );
    task(&tasks, "f_symlink", &convert("link.bin"));
    task(&tasks, "g_dotdot", &convert("../elsewhere.bin"));
    task(&tasks, "h_mem", &convert("/proc/self/mem"));
    task(
        &tasks,
        "i_publish",
        &convert_task_with("p", "ok.bin", json!({"publish": s(&escape)})),
    );
    task(
        &tasks,
        "j_texture",
        &convert_task_with("x", "ok.bin", json!({"texture_size": 1073741824u64})),
    );
    task(
        &tasks,
        "l_max_side",
        r#"{"task_id": "m", "type": "foundry-v2", "source": "ok.bin", "max_side": 4294967552}"#,
    );
    task(
        &tasks,
        "k_llm",
        r#"{"task_id": "l", "type": "analyze_system", "source": "ok.bin", "llm_url": "http://203.0.113.9:1234"}"#,
    );
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(tasks.join("a_ok.task.task.json.done").exists());
    for (stem, rule) in [
        ("b_shadow", "deny \"/etc/shadow\""),
        ("c_environ", "deny \"/proc/**/environ\""),
        ("d_kcore", "deny \"/proc/kcore\""),
        ("e_outside", "allow: "),
        ("f_symlink", "allow: "),
        ("g_dotdot", "allow: "),
        ("h_mem", "deny \"/proc/**/mem\""),
        ("i_publish", "output_root: "),
        ("j_texture", "max_texture_side: texture_size 1073741824"),
        ("l_max_side", "max_texture_side: max_side 4294967552"),
        ("k_llm", "llm_hosts"),
    ] {
        assert!(
            tasks.join(format!("{stem}.task.json.failed")).exists(),
            "{stem} did not fail"
        );
        let reason = error_reason(&tasks, stem);
        assert!(
            reason.contains("refused by policy") && reason.contains(rule),
            "{stem}: {reason}"
        );
    }
    assert!(
        !escape.exists(),
        "nothing was published outside the output root"
    );
}

#[test]
fn outputs_cannot_escape_the_output_root_through_a_symlink() {
    let (dir, tasks, out) = task_folders();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    // Someone who can write the output root points a task's output folder elsewhere.
    std::os::unix::fs::symlink(&victim, out.join("t")).unwrap();
    task(&tasks, "escape", &convert_task("t", "ok.bin"));
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(run.status.success());
    let reason = error_reason(&tasks, "escape");
    assert!(reason.contains("output_root"), "{reason}");
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing lands outside"
    );
}

#[test]
fn bad_task_files_fail_cleanly_and_a_symlinked_one_is_not_followed_out() {
    let (dir, tasks, out) = task_folders();
    let huge = format!(
        r#"{{"task_id": "big", "type": "convert_binary", "source": "ok.bin", "pad": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    task(&tasks, "a_huge", &huge);
    let deep = format!(
        r#"{{"task_id": "deep", "type": "convert_binary", "source": "ok.bin", "x": {}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    task(&tasks, "b_deep", &deep);
    task(
        &tasks,
        "c_negative",
        r#"{"task_id": "n", "type": "convert_directory", "source": ".", "max_files": -1}"#,
    );
    std::fs::write(
        tasks.join("d_absurd.task.yaml"),
        "task_id: a\ntype: convert_binary\nsource: ok.bin\ntexture_size: 1099511627776\n",
    )
    .unwrap();
    let outside = dir.path().join("outside.task.json");
    std::fs::write(&outside, convert_task("o", "ok.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, tasks.join("e_link.task.json")).unwrap();
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(run.status.success());
    for (stem, ext, words) in [
        ("a_huge", "json", "max_task_file_bytes"),
        ("b_deep", "json", "nested"),
        ("c_negative", "json", "max_files"),
        ("d_absurd", "yaml", "texture_size"),
        ("e_link", "json", "outside the task folder"),
    ] {
        assert!(
            tasks.join(format!("{stem}.task.{ext}.failed")).exists(),
            "{stem} did not fail: {:?}",
            std::fs::read_dir(&tasks)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        let reason = error_reason(&tasks, stem);
        assert!(reason.contains(words), "{stem}: {reason}");
    }
    assert!(
        outside.exists(),
        "the symlink's target is never moved or deleted"
    );
    assert!(!out.join("o").exists());
}

#[test]
fn outputs_keep_what_the_source_hid() {
    let (_dir, tasks, out) = task_folders();
    std::fs::create_dir_all(tasks.join("tree")).unwrap();
    let private = tasks.join("private.bin");
    std::fs::write(&private, b"only mine").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(tasks.join("tree/public.txt"), b"anyone").unwrap();
    std::fs::set_permissions(
        tasks.join("tree/public.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(tasks.join("tree/secret.txt"), b"hidden").unwrap();
    std::fs::set_permissions(
        tasks.join("tree/secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    task(&tasks, "a", &convert_task("p", "private.bin"));
    task(
        &tasks,
        "b",
        r#"{"task_id": "d", "type": "convert_directory", "source": "tree", "file_bricks": true}"#,
    );
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(run.status.success());
    for name in [
        "private.bin.brick",
        "private.bin.rts.png",
        "private.bin.preview.png",
    ] {
        assert_eq!(mode(&out.join("p").join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&out.join("d/files/tree/public.txt.brick")), 0o644);
    assert_eq!(mode(&out.join("d/files/tree/secret.txt.brick")), 0o600);
    // The district holds both files' bytes: as private as the more private one.
    assert_eq!(mode(&out.join("d/district.json")), 0o600);
    let parts: Vec<_> = std::fs::read_dir(out.join("d"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("district."))
        .collect();
    assert!(!parts.is_empty());
    for part in parts {
        assert_eq!(mode(&part.path()), 0o600, "{:?}", part.file_name());
    }
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let (_dir, tasks, out) = task_folders();
    std::fs::create_dir_all(tasks.join("tree/.ssh")).unwrap();
    std::fs::write(tasks.join("tree/a.txt"), b"a").unwrap();
    std::fs::write(tasks.join("tree/.ssh/id_ed25519"), b"KEY").unwrap();
    std::fs::write(tasks.join("tree/server.key"), b"KEY").unwrap();
    task(
        &tasks,
        "a",
        r#"{"task_id": "d", "type": "convert_directory", "source": "tree"}"#,
    );
    task(&tasks, "b", &convert_task("s", "/etc/shadow"));
    let run = daemon_batch(&tasks, &out, &["--dry-run"]);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}");
    assert!(text.contains("walk:    1 files"), "{text}");
    assert!(text.contains("tree/a.txt"), "{text}");
    assert!(
        text.contains("denied:") && text.contains("**/.ssh") && text.contains("**/*.key"),
        "{text}"
    );
    assert!(
        text.contains("b.task.json: would fail") && text.contains("/etc/shadow"),
        "{text}"
    );
    assert!(!out.exists(), "a dry run writes nothing");
    assert!(tasks.join("a.task.json").exists() && tasks.join("b.task.json").exists());
    assert!(!tasks.join(".foundry").exists());

    let single = foundry(&[
        "run",
        s(&tasks.join("a.task.json")),
        "--output-root",
        s(&out),
        "--dry-run",
        "--json",
    ]);
    assert!(single.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    assert_eq!(plan["walk"]["files"], 1, "{plan}");
    task(&tasks, "one", &convert_task("o", "tree/a.txt"));
    let one = foundry(&[
        "run",
        s(&tasks.join("one.task.json")),
        "--output-root",
        s(&out),
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(one.status.success(), "{text}");
    for file in [
        "o/a.txt.brick",
        "o/a.txt.rts.png",
        "o/a.txt.preview.png",
        "o/o.report.md",
    ] {
        assert!(text.contains(file), "{file} missing from:\n{text}");
    }
    assert!(!out.exists());
}

#[test]
fn a_policy_file_widens_and_narrows() {
    let (dir, tasks, out) = task_folders();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/x.bin"), vec![7u8; 5000]).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[policy]\nallow = [\"{}\"]\nmax_file_bytes = 4096\n",
            s(&dir.path().join("data"))
        ),
    )
    .unwrap();
    let source = dir.path().join("data/x.bin");
    task(&tasks, "a", &convert_task("x", s(&source)));
    let run = daemon_batch(&tasks, &out, &["--policy", s(&policy)]);
    assert!(run.status.success());
    let reason = error_reason(&tasks, "a");
    assert!(
        reason.contains("max_file_bytes: 5000 bytes is above 4096"),
        "{reason}"
    );
    std::fs::write(
        &policy,
        format!("[policy]\nallow = [\"{}\"]\n", s(&dir.path().join("data"))),
    )
    .unwrap();
    task(&tasks, "b", &convert_task("y", s(&source)));
    let run = daemon_batch(&tasks, &out, &["--policy", s(&policy)]);
    assert!(run.status.success());
    assert!(
        tasks.join("b.task.task.json.done").exists(),
        "{:?}",
        error_reason(&tasks, "b")
    );
    std::fs::write(&policy, "[policy]\nundeny = [\"/etc/shadw\"]\n").unwrap();
    let run = daemon_batch(&tasks, &out, &["--policy", s(&policy)]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("not one of the default denials"));
}

/// Every path below `dir`, recursively.
fn all_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(all_paths(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn a_walk_through_a_symlinked_root_is_judged_by_the_resolved_paths_too() {
    let (dir, tasks, out) = task_folders();
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(vault.join("private")).unwrap();
    std::fs::write(vault.join("fine.txt"), b"anyone may fold this").unwrap();
    std::fs::write(vault.join("token.txt"), b"denied as a file").unwrap();
    std::fs::write(vault.join("private/inner.txt"), b"denied as a folder").unwrap();
    // The task folder's link carries the walk into the vault under another name.
    std::os::unix::fs::symlink(&vault, tasks.join("link")).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[policy]\nallow = [\"{vault}\"]\ndeny = [\"{vault}/token.txt\", \"{vault}/private\"]\n",
            vault = s(&vault)
        ),
    )
    .unwrap();
    task(
        &tasks,
        "a",
        r#"{"task_id": "d", "type": "convert_directory", "source": "link", "file_bricks": true}"#,
    );
    let plan = foundry(&[
        "run",
        s(&tasks.join("a.task.json")),
        "--output-root",
        s(&out),
        "--policy",
        s(&policy),
        "--dry-run",
        "--json",
    ]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["walk"]["files"], 1, "{plan}");
    assert_eq!(plan["walk"]["skipped"]["denied by policy"], 2, "{plan}");

    let run = daemon_batch(&tasks, &out, &["--policy", s(&policy)]);
    assert!(run.status.success());
    assert!(tasks.join("a.task.task.json.done").exists());
    let written = all_paths(&out);
    assert!(
        written.iter().any(|p| s(p).contains("fine.txt")),
        "{written:?}"
    );
    assert!(
        !written
            .iter()
            .any(|p| s(p).contains("token.txt") || s(p).contains("inner.txt")),
        "{written:?}"
    );
}

#[test]
fn run_reads_the_task_file_within_the_policys_max_task_file_bytes() {
    let (dir, tasks, out) = task_folders();
    let body = convert_task_with(
        "t",
        "ok.bin",
        json!({"intent": "a task file well over sixty-four bytes long"}),
    );
    assert!(body.len() > 64);
    task(&tasks, "a", &body);
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[policy]\nmax_task_file_bytes = 64\n").unwrap();
    let run = foundry(&[
        "run",
        s(&tasks.join("a.task.json")),
        "--output-root",
        s(&out),
        "--policy",
        s(&policy),
        "--backend",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused by policy: max_task_file_bytes"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused task writes nothing");
}

#[test]
fn a_takeover_sweeps_temporaries_only_in_a_checked_output_folder() {
    let (dir, tasks, out) = task_folders();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    // Named as our temporaries are, but someone else's, reached through a planted symlink.
    let theirs = victim.join(".ledger.db.a1B2c3.tmp");
    std::fs::write(&theirs, b"not ours").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("t")).unwrap();
    // Claimed by a daemon that died (its claim's lock is free), whose journal names the
    // temporary: the next daemon takes it over as attempt 2.
    crate::daemon_confinement::plant_dead_claim(
        &tasks,
        "a.task.json",
        &convert_task("t", "ok.bin"),
        1,
        // Where it was created, a folder since swapped for a symlink to someone else's.
        &[std::fs::canonicalize(&out)
            .unwrap()
            .join("t/.ledger.db.a1B2c3.tmp")],
    );
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(run.status.success());
    let reason = error_reason(&tasks, "a");
    assert!(reason.contains("output_root"), "{reason}");
    assert!(
        theirs.exists(),
        "a temporary outside the output root is never removed"
    );
}

#[test]
fn a_task_given_up_on_leaves_no_temporaries_behind() {
    let (_dir, tasks, out) = task_folders();
    std::fs::create_dir_all(out.join("t")).unwrap();
    // What the last daemon to die on it left: a half-written output, beside a file of the
    // user's that only looks a little like one.
    let half_written = out.join("t/.t.brick.a1B2c3.tmp");
    let users = out.join("t/notes.tmp");
    std::fs::write(&half_written, b"half").unwrap();
    std::fs::write(&users, b"mine").unwrap();
    // Its own report, half-written in the task folder, beside another task's that may be live.
    let own_report = tasks.join(".a.report.md.Zz9Yy8.tmp");
    let other_report = tasks.join(".b.report.md.Q1w2E3.tmp");
    std::fs::write(&own_report, b"half").unwrap();
    std::fs::write(&other_report, b"live").unwrap();
    // Its third attempt's daemon is gone: the next take-over is past the limit. Its journal
    // names the temporaries it created (by their real paths), and only those.
    let real = |p: &Path| {
        std::fs::canonicalize(p.parent().unwrap())
            .unwrap()
            .join(p.file_name().unwrap())
    };
    crate::daemon_confinement::plant_dead_claim(
        &tasks,
        "a.task.json",
        &convert_task("t", "ok.bin"),
        3,
        &[real(&half_written), real(&own_report)],
    );
    let run = daemon_batch(&tasks, &out, &[]);
    assert!(run.status.success());
    let reason = error_reason(&tasks, "a");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert!(!half_written.exists(), "the temporary was swept");
    assert!(users.exists(), "only our temporaries go");
    assert!(!own_report.exists(), "its own report's temporary was swept");
    assert!(other_report.exists(), "another task's temporary stays");
}

#[test]
fn dry_run_refuses_a_destination_outside_the_output_root() {
    let (dir, tasks, out) = task_folders();
    // Absolute and outside the output root, yet inside this test's own folder.
    let absolute = dir.path().join("escape.brick");
    for (stem, destination) in [("a", "../escape"), ("b", s(&absolute))] {
        task(
            &tasks,
            stem,
            &convert_task_with("t", "ok.bin", json!({"destination": destination})),
        );
        let plan = foundry(&[
            "run",
            s(&tasks.join(format!("{stem}.task.json"))),
            "--output-root",
            s(&out),
            "--dry-run",
        ]);
        let stderr = String::from_utf8_lossy(&plan.stderr);
        assert_eq!(plan.status.code(), Some(2), "{destination}: {stderr}");
        assert!(
            stderr.contains("must be a relative path inside the output root"),
            "{destination}: {stderr}"
        );
    }
    let daemon = daemon_batch(&tasks, &out, &["--dry-run"]);
    let text = String::from_utf8_lossy(&daemon.stdout);
    assert!(
        text.contains("a.task.json: would fail") && text.contains("b.task.json: would fail"),
        "{text}"
    );
    assert!(!out.exists());
    assert!(!dir.path().join("escape").exists() && !absolute.exists());
}
