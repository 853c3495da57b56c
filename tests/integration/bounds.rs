//! Bounds (issue 14, item 7): task numbers that would overflow, nesting refused before the
//! parser recurses, and readers that refuse a claimed size before allocating it.

use crate::harness::{foundry_cmd, names_in, s, wait_exit};
use std::path::Path;
use std::time::{Duration, Instant};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `foundry-gpu ARGS`, requires exit code 2 (bad input), and returns its stderr.
fn refused(args: &[&str]) -> String {
    let o = crate::harness::foundry(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    err
}

/// `run TASK`, killed (failing the test) if it has not ended within 30 s: a task that waits
/// forever on an overflowed duration must fail the test, not hang it.
fn run_task(task: &Path, out: &Path) -> std::process::Output {
    let child = foundry_cmd()
        .args(["run", s(task), "--output-root", s(out), "--backend", "cpu"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::harness::output_within(child, Duration::from_secs(30))
}

#[test]
fn watch_task_whose_interval_would_overflow_is_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seen.txt"), b"watched\n").unwrap();
    let task = dir.path().join("w.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "w", "type": "watch_path", "source": "seen.txt",
            "interval_ms": 18446744073709551615, "max_cycles": 2}"#,
    )
    .unwrap();
    let o = run_task(&task, &dir.path().join("out"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("w.task.json") && err.contains("interval_ms"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn daemon_fails_an_overflowing_task_and_runs_the_next() {
    let root = tempfile::tempdir().unwrap();
    let tasks = root.path().join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    std::fs::write(tasks.join("f.txt"), b"some bytes\n").unwrap();
    std::fs::write(
        tasks.join("a-huge.task.json"),
        r#"{"task_id": "huge", "type": "watch_path", "source": "f.txt", "interval_ms": 1000, "max_cycles": 18446744073709551615}"#,
    )
    .unwrap();
    std::fs::write(
        tasks.join("b-fine.task.json"),
        r#"{"task_id": "fine", "type": "foundry-v2", "source": "f.txt", "preview_side": 16}"#,
    )
    .unwrap();
    let mut daemon = foundry_cmd()
        .args([
            "daemon",
            "--tasks",
            s(&tasks),
            "--backend",
            "cpu",
            "--poll-ms",
            "100",
        ])
        .args(["--exit-when-idle", "-q", "--output-root"])
        .arg(root.path().join("out"))
        .spawn()
        .unwrap();
    let status = wait_exit(&mut daemon, Duration::from_secs(60));
    let all = names_in(&tasks);
    assert!(status.success(), "daemon exited {status}: {all:?}");
    assert!(
        all.contains(&"a-huge.task.json.failed".to_string()),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|n| n.starts_with("b-fine") && n.ends_with(".done")),
        "{all:?}"
    );
}

#[test]
fn deeply_nested_task_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 100_000;
    let cases = [
        (
            "flow.task.yaml",
            format!("task_id: [{}{}\n", "[".repeat(depth), "]".repeat(depth + 1)),
        ),
        (
            "block.task.yaml",
            format!("task_id:\n{}x\n", "- ".repeat(depth)),
        ),
        (
            "deep.task.json",
            format!(
                "{{\"task_id\": {}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            ),
        ),
    ];
    for (name, text) in cases {
        let task = dir.path().join(name);
        std::fs::write(&task, text).unwrap();
        let started = Instant::now();
        let o = run_task(&task, &dir.path().join("out"));
        let took = started.elapsed();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(name) && err.contains("nested"),
            "{name}: {err}"
        );
        assert!(
            took < Duration::from_secs(3),
            "{name} took {took:?} to refuse"
        );
    }
}

/// A parts index naming one real brick but claiming the input holds 2^62 bytes.
fn lying_parts_index(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data.bin");
    std::fs::write(&data, vec![7u8; 1000]).unwrap();
    let brick = dir.join("data.bin.brick");
    let o = foundry_cmd()
        .args(["fold", s(&data), "-o", s(&brick), "--backend", "cpu", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let index = dir.join("data.parts.json");
    let claimed = 1u64 << 62;
    std::fs::write(
        &index,
        format!(
            r#"{{"format": "foundry-gpu-parts", "version": 1, "name": "data", "size": {claimed},
                "sha256": "{zero}", "part_size": {claimed}, "max_side": 4096,
                "parts": [{{"index": 0, "offset": 0, "size": {claimed}, "sha256": "{zero}",
                            "brick": "data.bin.brick"}}]}}"#,
            zero = "0".repeat(64)
        ),
    )
    .unwrap();
    index
}

#[test]
fn parts_index_claiming_2_pow_62_bytes_is_refused_by_diff_and_patch() {
    let dir = tempfile::tempdir().unwrap();
    let index = lying_parts_index(dir.path());
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"other").unwrap();
    let diff = foundry_cmd()
        .args(["diff", s(&index), s(&other), "-o"])
        .arg(dir.path().join("d"))
        .args(["--backend", "cpu"])
        .output()
        .unwrap();
    let patch = foundry_cmd()
        .args(["patch", s(&index), s(&other), "-o"])
        .arg(dir.path().join("b.bin"))
        .args(["--backend", "cpu"])
        .output()
        .unwrap();
    for (what, o) in [("diff", diff), ("patch", patch)] {
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains("data.parts.json") && err.contains("--max-input"),
            "{what}: {err}"
        );
    }
}

/// A patch of `copies` copies of all of A (`a_len` bytes), with B's SHA-256 made up.
fn copying_patch(a: &[u8], copies: u64) -> Vec<u8> {
    use sha2::Digest;
    let mut p = b"FGPATCH1".to_vec();
    p.extend((a.len() as u64).to_le_bytes());
    p.extend((a.len() as u64 * copies).to_le_bytes());
    p.extend(sha2::Sha256::digest(a));
    p.extend([0u8; 32]);
    p.extend(copies.to_le_bytes());
    for _ in 0..copies {
        p.push(1);
        p.extend(0u64.to_le_bytes());
        p.extend((a.len() as u64).to_le_bytes());
    }
    p
}

#[test]
fn patch_refuses_a_claimed_b_past_max_input_and_keeps_no_wrong_b() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = crate::harness::sample_bytes(64 << 10, 3);
    let a = dir.path().join("a.bin");
    std::fs::write(&a, &a_bytes).unwrap();
    // 2,000 copies of 64 KiB: a 34 KB patch claiming a 131 MB B.
    let patch = dir.path().join("a-to-b.patch");
    std::fs::write(&patch, copying_patch(&a_bytes, 2000)).unwrap();
    assert!(std::fs::metadata(&patch).unwrap().len() < 40_000);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let b = out.join("b.bin");
    let o = foundry_cmd()
        .args([
            "patch",
            s(&a),
            s(&patch),
            "-o",
            s(&b),
            "--max-input",
            "64MiB",
        ])
        .args(["--backend", "cpu"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("a-to-b.patch") && err.contains("--max-input"),
        "{err}"
    );
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
    // Within the limit, B streams out and is dropped because its hash is not the recorded one.
    let o = foundry_cmd()
        .args(["patch", s(&a), s(&patch), "-o", s(&b), "--backend", "cpu"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("a-to-b.patch"), "{}", stderr(&o));
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
}

#[test]
fn patch_claiming_more_operations_than_its_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = b"tiny A".to_vec();
    let a = dir.path().join("a.bin");
    std::fs::write(&a, &a_bytes).unwrap();
    let mut bytes = copying_patch(&a_bytes, 1);
    // The op count sits after magic, both sizes and both hashes.
    bytes[88..96].copy_from_slice(&u64::MAX.to_le_bytes());
    let patch = dir.path().join("p.patch");
    std::fs::write(&patch, bytes).unwrap();
    let b = dir.path().join("b");
    let err = refused(&["patch", s(&a), s(&patch), "-o", s(&b), "--backend", "cpu"]);
    assert!(
        err.contains("operations") && err.contains("p.patch"),
        "{err}"
    );
}

// Modes (issue 14, item 6): no output is more open than its source.

/// A group id no one on the test machine is in, so keeping it proves it was copied.
const SOURCE_GID: u32 = 54_321;

fn mode_and_group(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mode() & 0o7777, m.gid())
}

/// A file holding a password-like string, mode `mode`, in group [`SOURCE_GID`].
fn private_source(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, b"db_password=hunter2-not-real\n/usr/lib/secret.so\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, None, Some(SOURCE_GID)).unwrap();
}

fn files_named(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

#[test]
fn analysis_json_keeps_the_mode_and_group_of_its_source() {
    if !crate::harness::is_root() {
        eprintln!("skipped: giving a file another group needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    private_source(&dir.path().join("secret.conf"), 0o640);
    let task = dir.path().join("look.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "look", "type": "analyze_system", "source": "secret.conf"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run_task(&task, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let analysis = files_named(&out, ".analysis.json");
    assert_eq!(analysis.len(), 1, "{analysis:?}");
    assert_eq!(mode_and_group(&analysis[0]), (0o640, SOURCE_GID));
}

#[test]
fn publishing_a_private_source_needs_publish_private_and_keeps_mode_and_group() {
    if !crate::harness::is_root() {
        eprintln!("skipped: giving a file another group needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("secret.conf");
    private_source(&source, 0o600);
    let builder = dir.path().join("builder");
    let fold = |out: &str, extra: &[&str]| {
        foundry_cmd()
            .args(["fold", s(&source), "-o"])
            .arg(dir.path().join(out))
            .args(["--backend", "cpu", "-q", "--publish", s(&builder)])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = fold("one", &[]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("publish_private") && err.contains("--publish-private"),
        "{err}"
    );
    let queue = builder.join("queue");
    assert!(
        !queue.exists() || names_in(&queue).is_empty(),
        "{:?}",
        names_in(&queue)
    );
    let allowed = fold("two", &["--publish-private"]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    let tiles = names_in(&queue);
    assert!(tiles.iter().any(|n| n.ends_with(".rts.png")), "{tiles:?}");
    for tile in tiles {
        assert_eq!(
            mode_and_group(&queue.join(&tile)),
            (0o600, SOURCE_GID),
            "{tile}"
        );
    }
}

#[test]
fn publishing_a_readable_source_needs_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("open.txt");
    std::fs::write(&source, b"nothing secret\n").unwrap();
    let builder = dir.path().join("builder");
    let o = foundry_cmd()
        .args(["fold", s(&source), "-o"])
        .arg(dir.path().join("o"))
        .args(["--backend", "cpu", "-q", "--publish", s(&builder)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let queue = builder.join("queue");
    let png = names_in(&queue)
        .into_iter()
        .find(|n| n.ends_with(".rts.png"))
        .unwrap();
    assert_eq!(mode_and_group(&queue.join(png)).0 & 0o004, 0o004);
}

#[test]
fn a_task_never_reads_a_device_even_where_the_policy_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "allow = [\"/dev\"]\n").unwrap();
    let task = dir.path().join("z.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "z", "type": "convert_binary", "source": "/dev/zero"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let err = refused(&[
        "run",
        s(&task),
        "--backend",
        "cpu",
        "--policy",
        s(&policy),
        "--max-input",
        "64MiB",
        "--output-root",
        s(&out),
    ]);
    assert!(
        err.contains("/dev/zero") && err.contains("a device"),
        "{err}"
    );
}

#[test]
fn a_district_entry_ending_past_2_pow_64_is_refused_by_diff() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello\n").unwrap();
    let snap = dir.path().join("snap");
    let o = foundry_cmd()
        .args([
            "snapshot",
            s(&tree),
            "-o",
            s(&snap),
            "--backend",
            "cpu",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let index = snap.join("district.json");
    let mut district: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    district["files"][0]["offset"] = u64::MAX.into();
    std::fs::write(&index, district.to_string()).unwrap();
    let (file, d) = (tree.join("a.txt"), dir.path().join("d"));
    let err = refused(&["diff", s(&snap), s(&file), "-o", s(&d), "--backend", "cpu"]);
    assert!(
        err.contains("district.json") && err.contains("2^64"),
        "{err}"
    );
}

#[test]
fn a_task_publishing_a_private_source_is_refused_before_it_writes_anything() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("secret.conf");
    std::fs::write(&source, b"password=hunter2\n").unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o600)).unwrap();
    let task = dir.path().join("p.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "p", "type": "convert_binary", "source": "secret.conf"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let builder = dir.path().join("builder");
    let o = foundry_cmd()
        .args([
            "run",
            s(&task),
            "--output-root",
            s(&out),
            "--publish",
            s(&builder),
        ])
        .args(["--backend", "cpu", "-q"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("publish_private"), "{err}");
    assert!(
        !out.join("p").exists() || names_in(&out.join("p")).is_empty(),
        "{:?}",
        names_in(&out.join("p"))
    );
}
