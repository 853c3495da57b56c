//! `foundry-gpu watch` as a user runs it: a real process watching real files while the test
//! edits, deletes, recreates, renames, swaps in symlinks, appends continuously, and breaks the
//! file; every event is read from its JSON lines.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `watch`, stopped with SIGTERM when dropped.
struct Watch {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Watch {
    fn start(paths: &[&Path], out: &Path, extra: &[&str]) -> Watch {
        Watch::start_on("cpu", paths, out, extra)
    }

    fn start_on(backend: &str, paths: &[&Path], out: &Path, extra: &[&str]) -> Watch {
        Watch::spawn("watch", backend, paths, out, extra)
    }

    /// `fold PATH --watch`, which takes the fold's options.
    fn fold_watch(path: &Path, out: &Path, extra: &[&str]) -> Watch {
        let extra: Vec<&str> = extra.iter().copied().chain(["--watch"]).collect();
        Watch::spawn("fold", "cpu", &[path], out, &extra)
    }

    fn spawn(command: &str, backend: &str, paths: &[&Path], out: &Path, extra: &[&str]) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .arg(command)
            .args(paths)
            .arg("-o")
            .arg(out)
            .args([
                "--json",
                "--backend",
                backend,
                "--debounce",
                "50ms",
                "--interval",
                "200ms",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Watch { child, events }
    }

    /// The next event of `kind`, skipping others, within `seconds`.
    fn next(&self, kind: &str, seconds: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {kind} event within {seconds} s"));
            if event["kind"] == kind {
                return event;
            }
        }
    }

    /// The `refolded` event of the state with `sha256`, skipping states caught mid-write.
    fn refold_of(&self, sha256: &str, seconds: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next("refolded", left.as_secs().max(1));
            if event["sha256"] == sha256 {
                return event;
            }
        }
    }

    /// Every event in the next `millis`.
    fn quiet_for(&self, millis: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_millis(millis);
        let mut seen = Vec::new();
        while let Ok(e) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            seen.push(e);
        }
        seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn brick_bytes(path: &Path) -> Vec<u8> {
    foundry_gpu::fold::decode(&foundry_gpu::Backend::Cpu, path)
        .unwrap()
        .bytes
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(foundry_gpu::analysis::sha256(bytes))
}

#[test]
fn edits_deletion_recreation_rename_and_symlink_swaps_are_all_followed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.txt");
    let out = dir.path().join("out");
    std::fs::write(&file, "first").unwrap();
    let w = Watch::start(&[&file], &out, &[]);
    let brick = out.join("live.txt.brick");
    assert_eq!(w.next("refolded", 10)["sha256"], sha(b"first"));
    assert_eq!(brick_bytes(&brick), b"first");

    std::fs::write(&file, "second, edited in place").unwrap();
    let e = w.next("refolded", 10);
    assert_eq!(e["sha256"], sha(b"second, edited in place"));
    assert!(Path::new(e["diff"].as_str().unwrap())
        .join("diff.json")
        .exists());

    std::fs::remove_file(&file).unwrap();
    w.next("vanished", 10);
    assert_eq!(
        brick_bytes(&brick),
        b"second, edited in place",
        "outputs stay"
    );
    std::fs::write(&file, "third, recreated").unwrap();
    assert_eq!(w.next("refolded", 10)["sha256"], sha(b"third, recreated"));

    let aside = dir.path().join("aside.txt");
    std::fs::rename(&file, &aside).unwrap();
    w.next("vanished", 10);
    std::fs::write(&aside, "fourth, renamed back").unwrap();
    std::fs::rename(&aside, &file).unwrap();
    assert_eq!(
        w.next("refolded", 10)["sha256"],
        sha(b"fourth, renamed back")
    );

    let target = dir.path().join("target.txt");
    std::fs::write(&target, "fifth, behind a symlink").unwrap();
    let tmp_link = dir.path().join("link.tmp");
    std::os::unix::fs::symlink(&target, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, &file).unwrap();
    assert_eq!(
        w.next("refolded", 10)["sha256"],
        sha(b"fifth, behind a symlink")
    );
    assert_eq!(brick_bytes(&brick), b"fifth, behind a symlink");
}

/// Every output the watch wrote for `file` is byte for byte what a fresh `fold` of the same
/// bytes writes.
fn assert_outputs_match_a_fresh_fold(file: &Path, out: &Path) {
    let name = file.file_name().unwrap().to_str().unwrap();
    assert_outputs_match_a_fresh_fold_of(&std::fs::read(file).unwrap(), name, out);
}

/// The outputs `out/NAME.*` are byte for byte what a fresh `fold` of `bytes` named NAME writes.
fn assert_outputs_match_a_fresh_fold_of(bytes: &[u8], name: &str, out: &Path) {
    let fresh = tempfile::tempdir().unwrap();
    let copy = fresh.path().join(name);
    std::fs::write(&copy, bytes).unwrap();
    let fresh_out = fresh.path().join("out");
    let o = crate::harness::foundry(&[
        "fold",
        copy.to_str().unwrap(),
        "-o",
        fresh_out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for ext in ["brick", "rts.png", "preview.png"] {
        let output = format!("{name}.{ext}");
        crate::harness::assert_same(
            &output,
            &std::fs::read(fresh_out.join(&output)).unwrap(),
            &std::fs::read(out.join(&output)).unwrap(),
        );
    }
}

/// The watch's `out/NAME.diff/` shows what a fresh `diff` of the two states shows: the same
/// `delta.png` (the watch starts it from its kept previews) and the same patch.
fn assert_diff_matches_a_fresh_diff(before: &[u8], after: &[u8], name: &str, out: &Path) {
    let fresh = tempfile::tempdir().unwrap();
    let (a, b) = (fresh.path().join("a"), fresh.path().join("b"));
    std::fs::write(&a, before).unwrap();
    std::fs::write(&b, after).unwrap();
    let fresh_out = fresh.path().join("d");
    let o = crate::harness::foundry(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-o",
        fresh_out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let watched = out.join(format!("{name}.diff"));
    for file in ["delta.png", "a-to-b.patch"] {
        crate::harness::assert_same(
            file,
            &std::fs::read(fresh_out.join(file)).unwrap(),
            &std::fs::read(watched.join(file)).unwrap(),
        );
    }
}

/// `DIR/app.log`, 5 MiB of numbered lines: a side-4096 brick and a side-2048 .rts.png, whose
/// IDAT is 16 deflate bands.
fn write_watched_log(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let file = dir.join("app.log");
    let log: Vec<u8> = (0..)
        .flat_map(|i| format!("line {i} of the watched log\n").into_bytes())
        .take(5 << 20)
        .collect();
    std::fs::write(&file, &log).unwrap();
    (file, log)
}

/// Edits a watched file three ways on `backend` ("cpu" or "gpu"): each re-fold redoes only the
/// changed pages and bands, and the outputs equal a fresh fold's.
fn check_page_level_refold(backend: &str, root: Option<&Path>) {
    let dir = match root {
        Some(root) => tempfile::tempdir_in(root),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let shares_blocks = shares_blocks(dir.path());
    let (file, mut log) = write_watched_log(dir.path());
    let out = dir.path().join("out");
    let w = Watch::start_on(backend, &[&file], &out, &[]);
    let first = w.refold_of(&sha(&log), 60);
    assert!(first["refolded"].is_null(), "the first fold is whole");
    assert_outputs_match_a_fresh_fold(&file, &out);

    // One byte rewritten in place, the way an editor patching a block does.
    use std::io::{Seek, SeekFrom, Write};
    let at = 2_500_000;
    let before = log.clone();
    log[at] = b'#';
    let mut handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    handle.seek(SeekFrom::Start(at as u64)).unwrap();
    handle.write_all(b"#").unwrap();
    drop(handle);
    let e = w.refold_of(&sha(&log), 60);
    let refolded = &e["refolded"];
    assert_eq!(refolded["pages"], 1, "{backend}: {e}");
    assert_eq!(refolded["of_pages"], 1280);
    assert_eq!(refolded["bands"], 1);
    assert_eq!(refolded["of_bands"], 16);
    // The page is one 64x64 tile of the brick: 64 rows of 16 KiB and the header, where the
    // new brick began as a clone of the last; else all of it.
    let whole = 132 + 4096 * 4096 * 4;
    let expected = if shares_blocks {
        132 + 64 * 16384
    } else {
        whole
    };
    assert_eq!(refolded["brick_bytes_written"], expected, "{backend}: {e}");
    assert_outputs_match_a_fresh_fold(&file, &out);
    assert_diff_matches_a_fresh_diff(&before, &log, "app.log", &out);

    // Truncated by 10,000 bytes: only the tail's pages, which become padding.
    let before = log.clone();
    log.truncate(log.len() - 10_000);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(log.len() as u64)
        .unwrap();
    let e = w.refold_of(&sha(&log), 60);
    assert_eq!(e["refolded"]["pages"], 3, "{backend}: {e}");
    // Without shared blocks, the brick before the last (kept under a temporary name) was
    // brought up to date: the rows of both edits, not the whole brick.
    let written = e["refolded"]["brick_bytes_written"].as_u64().unwrap();
    assert!(written < whole / 8, "{backend}: {written} bytes: {e}");
    assert_outputs_match_a_fresh_fold(&file, &out);
    assert_diff_matches_a_fresh_diff(&before, &log, "app.log", &out);

    // Cut to 1 MiB, which needs smaller textures: folded whole again.
    log.truncate(1 << 20);
    std::fs::write(&file, &log).unwrap();
    let e = w.refold_of(&sha(&log), 60);
    assert!(e["refolded"].is_null(), "{backend}: {e}");
    assert_outputs_match_a_fresh_fold(&file, &out);
}

/// A watched ELF folded with the entropy palette also keeps a byte-class preview (for its
/// sections outline). When an edit makes it plain bytes, that image is not rendered again, so
/// it must not be kept as the next diff's picture of B.
#[test]
fn a_preview_the_last_fold_did_not_render_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prog");
    // A real ELF padded to 5 MiB: large enough to keep its previews.
    let mut bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf")).unwrap();
    bytes.resize(5 << 20, 0);
    std::fs::write(&file, &bytes).unwrap();
    let out = dir.path().join("out");
    let w = Watch::fold_watch(&file, &out, &["--palette", "entropy"]);
    w.refold_of(&sha(&bytes), 60);
    assert!(
        out.join("prog.sections.png").exists(),
        "folded as ELF first"
    );
    // Two edits that leave it plain bytes: the second's diff compares two non-ELF states.
    for (at, value) in [(0, 0u8), (3_000_000, 0xAB)] {
        let before = bytes.clone();
        bytes[at] = value;
        use std::os::unix::fs::FileExt;
        let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        handle.write_all_at(&[value], at as u64).unwrap();
        drop(handle);
        w.refold_of(&sha(&bytes), 60);
        assert_diff_matches_a_fresh_diff(&before, &bytes, "prog", &out);
    }
}

#[test]
fn an_edit_refolds_only_its_pages_and_the_outputs_match_a_fresh_fold() {
    check_page_level_refold("cpu", None);
}

crate::harness::gpu_leg! {
    fn gpu_an_edit_refolds_only_its_pages_and_the_outputs_match_a_fresh_fold() {
        check_page_level_refold("gpu", None);
    }
}

/// Temporaries (`.NAME.XXXXXX.tmp`) in `dir`: a watch's spare brick among them.
fn temporaries_in(dir: &Path) -> Vec<String> {
    crate::harness::names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}

/// Where files cannot share blocks (ext4, tmpfs), each brick a watch writes is the one before
/// the last, brought up to date in place and exchanged with the output. Not while a reader
/// holds that file open: then the brick is written whole, and the reader's copy never changes.
#[test]
fn without_shared_blocks_a_watch_patches_the_brick_before_the_last_unless_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    if shares_blocks(dir.path()) {
        eprintln!("skipped: the temporary folder shares blocks, so bricks are cloned instead");
        return;
    }
    let (file, mut log) = write_watched_log(dir.path());
    let out = dir.path().join("out");
    let brick = out.join("app.log.brick");
    let w = Watch::start_on("cpu", &[&file], &out, &[]);
    w.refold_of(&sha(&log), 60);
    let whole = 132 + 4096 * 4096 * 4;
    let mut edit = |at: usize| {
        use std::os::unix::fs::FileExt;
        log[at] ^= 0x20;
        let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        handle.write_all_at(&log[at..at + 1], at as u64).unwrap();
        drop(handle);
        let e = w.refold_of(&sha(&log), 60);
        assert_outputs_match_a_fresh_fold(&file, &out);
        e["refolded"]["brick_bytes_written"].as_u64().unwrap()
    };
    // The first edit has no spare yet: whole. The old brick stays as the spare.
    assert_eq!(edit(2_500_000), whole);
    assert_eq!(temporaries_in(&out).len(), 1, "{:?}", temporaries_in(&out));
    // The second brings the spare up to date: the header and the two edited 64-row tiles.
    let second = edit(1_000_000);
    assert!(
        (132 + 64 * 16384..=132 + 2 * 64 * 16384).contains(&second),
        "{second}"
    );
    // A reader opens the brick now and holds it. The next edit patches the other file; the
    // one after would patch the reader's, so it is written whole instead.
    let mut reader = std::fs::File::open(&brick).unwrap();
    let read_then = std::fs::read(&brick).unwrap();
    assert!(edit(4_000_000) < whole / 8);
    assert_eq!(edit(100_000), whole, "the reader's file is not rewritten");
    use std::io::Read;
    let mut read_now = Vec::new();
    reader.read_to_end(&mut read_now).unwrap();
    assert!(read_now == read_then, "the reader's brick changed under it");
    drop(reader);
    // Free again: patched.
    assert!(edit(3_000_000) < whole / 8);
    // A hard link (a backup made with `ln`) keeps the version it linked: that file is not
    // patched as the spare, so the brick after next is written whole.
    let linked = dir.path().join("backup.brick");
    std::fs::hard_link(&brick, &linked).unwrap();
    let linked_then = std::fs::read(&linked).unwrap();
    assert!(edit(1_500_000) < whole / 8);
    assert_eq!(edit(2_000_000), whole, "the linked file is not rewritten");
    assert!(
        std::fs::read(&linked).unwrap() == linked_then,
        "the backup changed"
    );
    // A patched spare gets the mode a fresh output gets (the .rts.png is always fresh): the
    // source made private since makes both private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(edit(2_200_000) < whole / 8);
    assert_eq!(mode(&out.join("app.log.rts.png")), 0o600);
    assert_eq!(mode(&brick), 0o600);
    drop(w);
    assert_eq!(
        temporaries_in(&out),
        Vec::<String>::new(),
        "the spare is removed"
    );
}

/// Whether files in `dir` can share blocks (FICLONE works there: XFS, btrfs; not ext4).
fn shares_blocks(dir: &Path) -> bool {
    let (a, b) = (dir.join(".clone-probe-a"), dir.join(".clone-probe-b"));
    std::fs::write(&a, [1u8; 4096]).unwrap();
    let source = std::fs::File::open(&a).unwrap();
    let target = std::fs::File::create(&b).unwrap();
    let cloned = rustix::fs::ioctl_ficlone(&target, &source).is_ok();
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
    cloned
}

/// The same edits where the new brick can begin as a clone of the last one: `.ci/run` mounts
/// an XFS image and names it in `FOUNDRY_TEST_REFLINK_DIR`. Only the changed rows are written,
/// and every output still equals a fresh fold's.
#[test]
fn where_files_share_blocks_an_edit_writes_only_the_changed_brick_rows() {
    let Some(root) = std::env::var_os("FOUNDRY_TEST_REFLINK_DIR") else {
        eprintln!("skipped: FOUNDRY_TEST_REFLINK_DIR names no file system that shares blocks");
        return;
    };
    let root = Path::new(&root);
    assert!(
        shares_blocks(root),
        "FOUNDRY_TEST_REFLINK_DIR={} cannot clone files",
        root.display()
    );
    check_page_level_refold("cpu", Some(root));
}

/// Each watched file holds its last brick open, so a watch of more files than the soft limit on
/// descriptors raises that limit instead of failing with EMFILE.
#[test]
fn more_watched_files_than_the_soft_descriptor_limit_all_fold() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<std::path::PathBuf> = (0..60)
        .map(|i| {
            let path = dir.path().join(format!("f{i:02}.txt"));
            std::fs::write(&path, format!("file {i}\n").repeat(200)).unwrap();
            path
        })
        .collect();
    let out = dir.path().join("out");
    let mut script = format!(
        "ulimit -S -n 40 && exec {} watch -o {} --json --backend cpu --max-refolds 60 --duration 60s",
        env!("CARGO_BIN_EXE_foundry-gpu"),
        out.display()
    );
    for f in &files {
        script.push(' ');
        script.push_str(&f.display().to_string());
    }
    let child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = crate::harness::output_within(child, Duration::from_secs(120));
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "failed").collect();
    assert!(failed.is_empty(), "{failed:?}");
    let refolded = events.iter().filter(|e| e["kind"] == "refolded").count();
    assert_eq!(refolded, 60, "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn own_outputs_never_trigger_a_refold() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "a").unwrap();
    std::fs::write(tree.join("sub/b.txt"), "b").unwrap();
    // The outputs go inside the watched tree.
    let out = tree.join("out");
    let w = Watch::start(&[&tree], &out, &[]);
    w.next("refolded", 10);
    w.next("refolded", 10);
    assert!(out.join("files/tree/sub/b.txt.brick").exists());
    std::fs::write(tree.join("sub/b.txt"), "b changed").unwrap();
    let e = w.next("refolded", 10);
    assert!(e["path"].as_str().unwrap().ends_with("sub/b.txt"));
    // Writing that brick, its preview and its diff must not start another round.
    let after: Vec<Value> = w
        .quiet_for(1500)
        .into_iter()
        .filter(|e| e["kind"] == "refolded")
        .collect();
    assert!(after.is_empty(), "feedback loop: {after:?}");
    // Nor may reading the sources (which raises open/close events) start a silent loop of
    // re-reads: an idle watch sleeps.
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", w.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let busy = ticks() - before;
    assert!(busy < 50, "an idle watch used {busy} clock ticks in 1.5 s");
}

#[test]
fn fold_watch_keeps_the_fold_options() {
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("tool");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf"),
        &elf,
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .arg("fold")
        .arg(&elf)
        .arg("-o")
        .arg(&out)
        .args([
            "--watch",
            "--max-refolds",
            "1",
            "--sections",
            ".text",
            "--backend",
            "cpu",
        ])
        .args(["--preview-side", "64"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.join("tool.text.brick").exists(),
        "--sections reached the watch"
    );
    let preview = image_side(&out.join("tool.preview.png"));
    assert_eq!(preview, 64, "--preview-side reached the watch");
}

fn image_side(png: &Path) -> u32 {
    png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()))
        .read_info()
        .unwrap()
        .info()
        .width
}

#[test]
fn targets_that_would_share_outputs_and_a_zero_interval_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("config"), sub).unwrap();
    }
    let out = dir.path().join("out");
    let run = |args: &[&Path], extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .arg("watch")
            .args(args)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let (a, b) = (dir.path().join("a/config"), dir.path().join("b/config"));
    let o = run(&[&a, &b], &[]);
    assert_eq!(o.status.code(), Some(2));
    let message = String::from_utf8_lossy(&o.stderr);
    assert!(
        message.contains("a/config") && message.contains("b/config"),
        "{message}"
    );
    let o = run(&[&a], &["--interval", "0s"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--interval"));
    assert!(!out.join("config.brick").exists(), "nothing was folded");
}

#[test]
fn a_failed_refold_is_reported_and_retried_on_the_next_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let out = dir.path().join("out");
    std::fs::write(&file, "ok").unwrap();
    let w = Watch::start(&[&file], &out, &[]);
    w.next("refolded", 10);
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let failed = w.next("failed", 10);
    assert!(
        failed["error"].as_str().unwrap().contains("regular file"),
        "{failed}"
    );
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, "ok again").unwrap();
    assert_eq!(w.next("refolded", 10)["sha256"], sha(b"ok again"));
}

#[test]
fn a_continuous_writer_gives_no_torn_reads_and_the_final_state_lands() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log");
    let out = dir.path().join("out");
    std::fs::write(&file, "").unwrap();
    let w = Watch::start(&[&file], &out, &["--max-delay", "300ms"]);
    w.next("refolded", 10);
    let line = |i: usize| format!("line {i:05} of a log that keeps growing\n");
    let final_text: String = (0..400).map(line).collect();
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            for i in 0..400 {
                f.write_all(line(i).as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    writer.join().unwrap();
    let mut last = None;
    let mut refolds = 0;
    for e in w.quiet_for(3000) {
        if e["kind"] != "refolded" {
            continue;
        }
        refolds += 1;
        // Every state folded is a prefix the writer really produced.
        let size = e["size"].as_u64().unwrap() as usize;
        assert_eq!(
            e["sha256"],
            sha(&final_text.as_bytes()[..size]),
            "torn read at {size}"
        );
        last = Some(e);
    }
    // The writer runs about 2 s and --max-delay is 300 ms: several states fold while it writes,
    // so a torn read would have had chances to show.
    assert!(
        refolds >= 3,
        "only {refolds} refold(s) while the writer ran"
    );
    let last = last.expect("refolds while the writer ran");
    assert_eq!(
        last["sha256"],
        sha(final_text.as_bytes()),
        "the final state lands"
    );
    assert_eq!(brick_bytes(&out.join("log.brick")), final_text.as_bytes());
}

#[test]
fn proc_files_are_polled_and_versioned_publishing_bumps_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let builder = dir.path().join("builder");
    let w = Watch::start(
        &[Path::new("/proc/meminfo")],
        &out,
        &["--versioned", "--publish", builder.to_str().unwrap()],
    );
    let first = w.next("refolded", 10);
    let manifest = || -> Value {
        serde_json::from_slice(&std::fs::read(builder.join("map/manifest.json")).unwrap()).unwrap()
    };
    let stamp = |m: &Value| -> (String, f64) {
        let entry = m.as_object().unwrap().values().next().unwrap().clone();
        (
            entry["brick"].as_str().unwrap().to_string(),
            entry["timestamp"].as_f64().unwrap(),
        )
    };
    let (brick1, t1) = stamp(&manifest());
    // /proc/meminfo changes between polls (free memory moves), seen without any inotify event.
    let second = w.next("refolded", 20);
    assert!(second["version"].as_u64().unwrap() > first["version"].as_u64().unwrap());
    let (brick2, t2) = stamp(&manifest());
    assert!(
        t2 > t1,
        "the timestamp grows so the browser reloads the tile"
    );
    assert_ne!(
        brick1, brick2,
        "versioned names for readers that cache by path"
    );
    assert!(out.join("meminfo.v1.rts.png").exists() && out.join("meminfo.v2.rts.png").exists());
}

#[test]
fn a_watched_tree_keeps_its_district_in_step() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let text = |seed: u8| -> Vec<u8> {
        (0..20_000u32)
            .map(|i| b'a' + ((i as u8) ^ seed) % 26)
            .collect()
    };
    let (a, mut b, c) = (text(1), text(2), text(3));
    std::fs::write(tree.join("a.txt"), &a).unwrap();
    std::fs::write(tree.join("sub/b.txt"), &b).unwrap();
    std::fs::write(tree.join("sub/c.key"), &c).unwrap();
    std::fs::set_permissions(
        tree.join("sub/c.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = dir.path().join("out");
    let w = Watch::start(&[&tree], &out, &[]);
    let stream = |parts: &[&[u8]]| parts.concat();
    let district_of = |w: &Watch, expected: &[u8]| -> Value {
        let e = w.next("district", 30);
        assert_eq!(e["sha256"], sha(expected), "{e}");
        assert_eq!(brick_bytes(&out.join("tree.district.brick")), expected);
        assert_outputs_match_a_fresh_fold_of(expected, "tree.district", &out);
        e
    };
    let first = district_of(&w, &stream(&[&a, &b, &c]));
    assert!(
        first["diff"].is_null(),
        "nothing to compare the first build with"
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("tree.district.json")).unwrap()).unwrap();
    let files: Vec<(&str, u64)> = index["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        files,
        [("a.txt", 0), ("sub/b.txt", 20_000), ("sub/c.key", 40_000)]
    );
    // As private as its most private file.
    let mode = std::fs::metadata(out.join("tree.district.brick"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // One byte of one file, same size: one page of the district is re-folded.
    let b_before = b.clone();
    b[10_000] = b'#';
    std::fs::write(tree.join("sub/b.txt"), &b).unwrap();
    let e = district_of(&w, &stream(&[&a, &b, &c]));
    assert_eq!(e["refolded"]["pages"], 1, "{e}");
    let diff: Value = serde_json::from_slice(
        &std::fs::read(Path::new(e["diff"].as_str().unwrap()).join("diff.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(diff["members"]["changed"][0], "sub/b.txt");
    // The file's own diff, made from its last state read back from disk.
    assert_diff_matches_a_fresh_diff(&b_before, &b, "b.txt", &out.join("files/tree/sub"));
    // The last states (three files and the district's stream) are in the watch's private
    // folder in OUT, not in memory.
    let state_folders = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".foundry-watch-state.")
            })
            .collect()
    };
    let folders = state_folders();
    assert_eq!(folders.len(), 1, "{folders:?}");
    let folder_mode = std::fs::metadata(&folders[0]).unwrap().permissions().mode();
    assert_eq!(folder_mode & 0o777, 0o700);
    assert_eq!(std::fs::read_dir(&folders[0]).unwrap().count(), 4);

    // A file added, then one removed: reported by path.
    std::fs::write(tree.join("sub/d.txt"), "new file").unwrap();
    let e = district_of(&w, &stream(&[&a, &b, &c, b"new file"]));
    let diff: Value = serde_json::from_slice(
        &std::fs::read(Path::new(e["diff"].as_str().unwrap()).join("diff.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(diff["members"]["added"][0], "sub/d.txt");
    std::fs::remove_file(tree.join("a.txt")).unwrap();
    let e = district_of(&w, &stream(&[&b, &c, b"new file"]));
    let diff: Value = serde_json::from_slice(
        &std::fs::read(Path::new(e["diff"].as_str().unwrap()).join("diff.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(diff["members"]["removed"][0], "a.txt");
    // A watch that ends removes what it kept.
    drop(w);
    assert!(state_folders().is_empty(), "{:?}", state_folders());
}
