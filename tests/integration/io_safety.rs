//! Outputs and inputs that cannot harm or hang: device, FIFO, socket and directory targets are
//! refused before any work, `-o -` streams to stdout, streams stop at `--max-input`, FIFOs are
//! read only when named, and a file truncated while folded is an error, never SIGBUS.

use crate::harness::{foundry_cmd, is_root, names_in, s, sample_bytes, wait_exit};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--backend cpu` for the commands that run an engine (`analyze`, `status`, `man` and
/// `completions` have none).
fn cpu_engine(args: &[&str]) -> &'static [&'static str] {
    match args.first() {
        Some(&"analyze") | Some(&"status") | Some(&"man") | Some(&"completions") => &[],
        _ => &["--backend", "cpu"],
    }
}

/// Runs the binary (CPU backend) in `dir`, killing it (and failing) past `limit`: a test of
/// something that used to hang must not hang itself.
fn run_in(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = foundry_cmd()
        .current_dir(dir)
        .args(args)
        .args(cpu_engine(args))
        .arg("-q")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    let status = wait_exit(&mut child, limit);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// What kind of node `path` is, not following a symlink.
fn kind_of(path: &Path) -> &'static str {
    let t = std::fs::symlink_metadata(path).unwrap().file_type();
    match () {
        _ if t.is_symlink() => "symlink",
        _ if t.is_char_device() => "char device",
        _ if t.is_fifo() => "fifo",
        _ if t.is_socket() => "socket",
        _ if t.is_dir() => "dir",
        _ if t.is_file() => "file",
        _ => "other",
    }
}

/// A small non-ELF input, its brick, and a patch from it to an edited copy.
struct Inputs {
    input: PathBuf,
    brick: PathBuf,
    edited: PathBuf,
    patch: PathBuf,
}

fn make_inputs(dir: &Path) -> Inputs {
    let input = dir.join("input.bin");
    let data = sample_bytes(20_000, 7);
    std::fs::write(&input, &data).unwrap();
    let mut edited_bytes = data.clone();
    edited_bytes[100..200].fill(0xAB);
    edited_bytes.extend_from_slice(b"more at the end");
    let edited = dir.join("edited.bin");
    std::fs::write(&edited, &edited_bytes).unwrap();
    let brick = dir.join("input.brick");
    let o = run_in(
        dir,
        &["fold", s(&input), "-o", s(&brick)],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let delta = dir.join("delta");
    let o = run_in(
        dir,
        &["diff", s(&input), s(&edited), "-o", s(&delta)],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    Inputs {
        input,
        brick,
        edited,
        patch: delta.join("a-to-b.patch"),
    }
}

/// Every single-file command, writing to `target`.
fn single_file_commands<'a>(i: &'a Inputs, target: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["unfold", s(&i.brick), "-o", target],
        vec!["preview", s(&i.input), "-o", target],
        vec!["patch", s(&i.input), s(&i.patch), "-o", target],
    ]
}

#[test]
fn devices_fifos_sockets_and_links_to_them_are_refused_as_targets_and_left_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = make_inputs(dir.path());
    let targets = dir.path().join("targets");
    std::fs::create_dir(&targets).unwrap();
    let mut nodes: Vec<(PathBuf, &str)> = Vec::new();
    // /dev/full and /dev/null themselves are never touched: a link to one, or (as root) a
    // node of our own with /dev/null's numbers.
    let link_to_null = targets.join("null-link");
    std::os::unix::fs::symlink("/dev/null", &link_to_null).unwrap();
    nodes.push((link_to_null, "is a symlink to a character device"));
    if is_root() {
        let own = targets.join("own-null");
        let c = std::ffi::CString::new(s(&own)).unwrap();
        // SAFETY: a valid NUL-terminated path; (1, 3) is /dev/null's device number.
        let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(made, 0, "mknod as root");
        nodes.push((own, "is a character device"));
    }
    let fifo = targets.join("fifo");
    mkfifo(&fifo);
    nodes.push((fifo.clone(), "is a FIFO"));
    let link_to_fifo = targets.join("fifo-link");
    std::os::unix::fs::symlink(&fifo, &link_to_fifo).unwrap();
    nodes.push((link_to_fifo, "is a symlink to a FIFO"));
    let socket = targets.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    nodes.push((socket, "is a socket"));
    let before: Vec<&str> = nodes.iter().map(|(p, _)| kind_of(p)).collect();

    for (node, says) in &nodes {
        let mut commands = single_file_commands(&inputs, s(node));
        commands.push(vec!["fold", s(&inputs.input), "-o", s(node)]);
        for args in commands {
            // Without a suffix, fold's -o is a directory: the node is refused as one.
            let o = run_in(dir.path(), &args, Duration::from_secs(30));
            let err = stderr_of(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            let expected = if args[0] == "fold" {
                format!(
                    "{}: is {}, not a directory",
                    s(node),
                    says.rsplit(" a ").next().map(|k| format!("a {k}")).unwrap()
                )
            } else {
                format!("{}: {says}; refusing to replace it", s(node))
            };
            assert!(
                err.contains(&expected),
                "{args:?}: {err}\nexpected: {expected}"
            );
        }
        let brick_named = targets.join(format!(
            "{}.brick",
            node.file_name().unwrap().to_string_lossy()
        ));
        std::os::unix::fs::symlink(node, &brick_named).unwrap();
        let o = run_in(
            dir.path(),
            &["fold", s(&inputs.input), "-o", s(&brick_named)],
            Duration::from_secs(30),
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
        assert!(
            stderr_of(&o).contains("is a symlink to"),
            "{}",
            stderr_of(&o)
        );
        std::fs::remove_file(&brick_named).unwrap();
    }
    let after: Vec<&str> = nodes.iter().map(|(p, _)| kind_of(p)).collect();
    assert_eq!(before, after, "every target is still what it was");
    assert!(
        std::fs::metadata(&nodes[0].0)
            .unwrap()
            .file_type()
            .is_char_device(),
        "the link still leads to the device"
    );
    let mut left = names_in(&targets);
    left.retain(|n| n.ends_with(".tmp"));
    assert!(left.is_empty(), "no temporaries: {left:?}");
}

#[test]
fn an_existing_directory_as_a_single_file_target_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = make_inputs(dir.path());
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let missing = dir.path().join("missing.brick");
    // The first argument is missing: had the work started, that would be the error.
    let commands = [
        vec!["unfold", s(&missing), "-o", s(&existing)],
        vec!["preview", s(&missing), "-o", s(&existing)],
        vec!["patch", s(&missing), s(&inputs.patch), "-o", s(&existing)],
    ];
    for args in commands {
        let o = run_in(dir.path(), &args, Duration::from_secs(30));
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: is a directory; -o names the one file",
                s(&existing)
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("missing.brick"), "{args:?}: {err}");
    }
    // A directory where `fold` writes one .brick, and a file where it wants a directory.
    let dir_brick = dir.path().join("made.brick");
    std::fs::create_dir(&dir_brick).unwrap();
    let o = run_in(
        dir.path(),
        &["fold", s(&missing), "-o", s(&dir_brick)],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("made.brick: is a directory"),
        "{}",
        stderr_of(&o)
    );
    let o = run_in(
        dir.path(),
        &["fold", s(&missing), "-o", s(&inputs.edited)],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("edited.bin: is a file, not a directory"),
        "{}",
        stderr_of(&o)
    );
    assert!(names_in(&existing).is_empty() && names_in(&dir_brick).is_empty());
}

#[test]
fn dash_streams_the_one_output_to_stdout_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = make_inputs(dir.path());
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    // A folded file is named after its -o; streamed, after its input: the same name here.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["unfold", s(&inputs.brick)], "unfolded.bin"),
        (vec!["preview", s(&inputs.brick)], "preview.png"),
        (
            vec!["patch", s(&inputs.input), s(&inputs.patch)],
            "patched.bin",
        ),
        (vec!["fold", s(&inputs.input)], "input.bin.brick"),
        (vec!["fold", s(&inputs.input)], "input.bin.rts.png"),
        (vec!["fold", s(&inputs.input)], "input.bin.png"),
    ];
    let work = tempfile::tempdir().unwrap();
    for (args, name) in cases {
        let file = files.join(name);
        let o = run_in(
            work.path(),
            &[&args[..], &["-o", s(&file)]].concat(),
            Duration::from_secs(60),
        );
        assert!(o.status.success(), "{args:?}: {}", stderr_of(&o));
        let format = name.trim_start_matches("input.bin.");
        let mut streamed = [&args[..], &["-o", "-"]].concat();
        if args[0] == "fold" {
            streamed.extend(["--format", format]);
        }
        let o = run_in(work.path(), &streamed, Duration::from_secs(60));
        assert!(o.status.success(), "{streamed:?}: {}", stderr_of(&o));
        let written = std::fs::read(&file).unwrap();
        assert!(
            o.stdout == written,
            "{streamed:?}: {} bytes on stdout, {} in the file",
            o.stdout.len(),
            written.len()
        );
        // The report went to stderr, and no file named `-` appeared.
        assert!(
            stderr_of(&o).contains(" -"),
            "{streamed:?}: {}",
            stderr_of(&o)
        );
    }
    assert_eq!(names_in(work.path()), Vec::<String>::new());
    assert_eq!(
        std::fs::read(&inputs.edited).unwrap(),
        std::fs::read(files.join("patched.bin")).unwrap()
    );
    // fold -o - must be told which file, and streams only one.
    let o = run_in(
        work.path(),
        &["fold", s(&inputs.input), "-o", "-"],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("--format brick, rts.png or png"));
    let o = run_in(
        work.path(),
        &[
            "fold",
            s(&inputs.input),
            "-o",
            "-",
            "--format",
            "brick",
            "--max-side",
            "64",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("needs 5 parts"), "{}", stderr_of(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(names_in(work.path()), Vec::<String>::new());
}

#[test]
fn streams_past_max_input_are_refused_quickly_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let commands = [
        vec!["fold", "/dev/zero", "-o", "z/"],
        vec!["fold", "/dev/zero", "-o", "-", "--format", "brick"],
        vec!["preview", "/dev/zero", "-o", "z.png"],
        vec!["analyze", "--no-llm", "/dev/zero"],
        vec!["diff", "/dev/zero", "/dev/zero", "-o", "d/"],
    ];
    for args in commands {
        let started = Instant::now();
        // Memory is bounded by the child's address space: without the limit, /dev/zero
        // would grow past it and the allocation would abort the process.
        let mut command = foundry_cmd();
        command
            .current_dir(dir.path())
            .args(&args)
            .args(cpu_engine(&args))
            .args(["-q", "--max-input", "1MiB"])
            .env("MALLOC_ARENA_MAX", "2")
            .env("RAYON_NUM_THREADS", "2");
        limit_address_space(&mut command, 1 << 30);
        let o = command.output().unwrap();
        let err = stderr_of(&o);
        assert_eq!(o.status.signal(), None, "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("/dev/zero: is a stream that went on longer than --max-input 1.0 MiB"),
            "{args:?}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(names_in(dir.path()), Vec::<String>::new());
    // A regular file over the limit is refused by its size, before it is read.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![1u8; 3 << 20]).unwrap();
    let o = run_in(
        dir.path(),
        &["--max-input", "2MiB", "fold", s(&big), "-o", "b/"],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("big: is 3.0 MiB, more than --max-input 2.0 MiB"),
        "{}",
        stderr_of(&o)
    );
}

/// Caps the child's address space at `bytes` (RLIMIT_AS).
fn limit_address_space(command: &mut std::process::Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_fifo_named_directly_is_read_and_one_met_elsewhere_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let data = sample_bytes(300_000, 3);
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || std::fs::write(&fifo, &data).unwrap())
    };
    let brick = dir.path().join("pipe.brick");
    let o = run_in(
        dir.path(),
        &["fold", s(&fifo), "-o", s(&brick)],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    writer.join().unwrap();
    let back = foundry_gpu::fold::decode(&foundry_gpu::Backend::Cpu, &brick).unwrap();
    assert!(back.bytes == data, "the FIFO's bytes, all of them");

    // preview reads a FIFO whole too (its head is not consumed by format detection).
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || std::fs::write(&fifo, &data).unwrap())
    };
    let from_fifo = dir.path().join("fifo.png");
    let o = run_in(
        dir.path(),
        &["preview", s(&fifo), "-o", s(&from_fifo)],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    writer.join().unwrap();
    let plain = dir.path().join("plain.bin");
    std::fs::write(&plain, &data).unwrap();
    let from_file = dir.path().join("file.png");
    let o = run_in(
        dir.path(),
        &["preview", s(&plain), "-o", s(&from_file)],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(std::fs::read(&from_fifo).unwrap() == std::fs::read(&from_file).unwrap());

    // In a folded tree the FIFO is skipped (nobody writes to it: reading it would hang).
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"a plain file\n").unwrap();
    mkfifo(&tree.join("waits"));
    let o = run_in(
        dir.path(),
        &["--json", "fold", s(&tree), "-o", "snap/"],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["files"], 1, "{report}");
    assert!(
        report["skipped"].to_string().contains("special"),
        "{report}"
    );

    // As a task's source it is refused, not waited on.
    let task = dir.path().join("fifo.task.json");
    std::fs::write(
        &task,
        format!(
            r#"{{"task_id": "f", "type": "convert_binary", "source": "{}"}}"#,
            s(&fifo)
        ),
    )
    .unwrap();
    let o = run_in(
        dir.path(),
        &["run", s(&task), "--output-root", "out"],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    // Refused when the task is planned, and again by the read if it became one after.
    assert!(
        stderr_of(&o).contains("a FIFO, and a task reads only files and folders"),
        "{}",
        stderr_of(&o)
    );
}

/// Keeps changing `path`'s size (16 MiB to ~55 MiB, never the same twice in 9973 steps, so a
/// read that sees one size at both ends is all but impossible) until dropped.
struct Truncator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Truncator {
    fn start(path: &Path, run_for: Duration) -> Self {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < run_for {
                    file.set_len((16 << 20) + (k % 9973) * (4 << 10)).unwrap();
                    k += 1;
                }
                k
            })
        };
        Truncator {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Truncator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let changes = t.join().unwrap();
            assert!(changes > 0, "the file's size never changed");
        }
    }
}

fn make_changing(path: &Path) {
    std::fs::write(path, sample_bytes(48 << 20, 11)).unwrap();
}

#[test]
fn a_file_truncated_while_folded_is_an_error_naming_it_never_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let changing = src.join("changing.img");
    make_changing(&changing);
    let out = dir.path().join("out");
    let _truncator = Truncator::start(&changing, Duration::from_secs(60));
    for target in ["out/", "out/one.brick"] {
        let o = run_in(
            dir.path(),
            &["fold", s(&changing), "-o", target],
            Duration::from_secs(60),
        );
        let err = stderr_of(&o);
        assert_eq!(
            o.status.signal(),
            None,
            "{target}: killed by a signal: {err}"
        );
        assert!(matches!(o.status.code(), Some(1 | 2)), "{target}: {err}");
        assert!(
            err.contains(&format!("{}: read: changed while being read", s(&changing))),
            "{target}: {err}"
        );
    }
    assert!(!out.exists() || names_in(&out).is_empty(), "no outputs");
    assert_eq!(names_in(&src), ["changing.img"], "no temporaries");
}

#[test]
fn a_task_whose_source_is_truncated_mid_fold_fails_and_the_daemon_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    let changing = tasks.join("changing.img");
    make_changing(&changing);
    std::fs::write(tasks.join("steady.txt"), b"a file nobody changes\n").unwrap();
    for (stem, source) in [("a-changing", "changing.img"), ("b-steady", "steady.txt")] {
        std::fs::write(
            tasks.join(format!("{stem}.task.json")),
            format!(
                r#"{{"task_id": "{stem}", "type": "convert_binary", "source": "{source}", "preview_side": 16}}"#
            ),
        )
        .unwrap();
    }
    let _truncator = Truncator::start(&changing, Duration::from_secs(120));
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
        .arg("--output-root")
        .arg(dir.path().join("out"))
        .args(["--exit-when-idle", "-q"])
        .spawn()
        .unwrap();
    let status = wait_exit(&mut daemon, Duration::from_secs(120));
    assert_eq!(status.signal(), None, "the daemon was killed by a signal");
    assert!(status.success(), "{status:?}");
    let all = names_in(&tasks);
    assert!(
        all.contains(&"a-changing.task.json.failed".to_string()),
        "{all:?}"
    );
    assert!(
        all.contains(&"b-steady.task.task.json.done".to_string()),
        "{all:?}"
    );
    let error: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tasks.join("a-changing.error.json")).unwrap(),
    )
    .unwrap();
    let reason = error["reason"].as_str().unwrap();
    assert!(
        reason.contains("changing.img: read: changed while being read"),
        "{reason}"
    );
    let failed_out = dir.path().join("out/a-changing");
    assert!(
        !failed_out.exists()
            || names_in(&failed_out)
                .iter()
                .all(|n| !n.contains("changing.img.")),
        "no outputs of the failed task: {:?}",
        names_in(&failed_out)
    );
}

#[test]
fn folder_outputs_refuse_a_fifo_or_a_link_to_a_device_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inputs = make_inputs(d);
    let tree = d.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f.txt"), b"a file").unwrap();
    let tasks = d.join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    let task = tasks.join("t.task.json");
    std::fs::write(
        &task,
        r#"{"task_id": "t", "type": "convert_binary", "source": "../input.bin"}"#,
    )
    .unwrap();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let to_null = d.join("to-null");
    std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
    let pid = std::process::id().to_string();
    for (target, kind) in [(&fifo, "a FIFO"), (&to_null, "a character device")] {
        let t = s(target);
        let commands: [Vec<&str>; 7] = [
            vec!["diff", s(&inputs.input), s(&inputs.edited), "-o", t],
            vec!["snapshot", s(&tree), "-o", t],
            vec!["mem", &pid, "-o", t, "--no-mapping-bricks"],
            vec!["watch", s(&inputs.input), "-o", t, "--max-refolds", "1"],
            vec!["man", "-o", t],
            vec!["run", s(&task), "--output-root", t],
            vec![
                "daemon",
                "--tasks",
                s(&tasks),
                "--output-root",
                t,
                "--exit-when-idle",
            ],
        ];
        for args in commands {
            let before = kind_of(target);
            let o = run_in(d, &args, Duration::from_secs(30));
            let err = stderr_of(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("{kind}, not a directory")),
                "{args:?}: {err}"
            );
            assert_eq!(kind_of(target), before, "{args:?} changed the target");
        }
    }
    assert!(task.exists(), "the task was never claimed");
}
