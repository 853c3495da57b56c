//! The command line as a user meets it: outputs, JSON, exit codes, and one clear
//! error line naming the file for every kind of bad input, with nothing left behind.

use crate::harness::{foundry, golden, gpu_leg, s, sample_bytes};
use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in `dir` (temporary files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fold_into_a_directory_then_unfold_each_output_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tool.bin");
    let data = sample_bytes(300_000, 12);
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    let o = foundry(&[
        "fold",
        s(&input),
        "-o",
        s(&out),
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["backend"], "cpu");
    assert_eq!(report["source"]["size"], 300_000);
    assert_eq!(
        listing(&out),
        ["tool.bin.brick", "tool.bin.preview.png", "tool.bin.rts.png"]
    );
    for name in ["tool.bin.brick", "tool.bin.rts.png"] {
        let back = dir.path().join(format!("{name}.back"));
        let o = foundry(&[
            "unfold",
            s(&out.join(name)),
            "-o",
            s(&back),
            "--backend",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(&back).unwrap(), data, "{name}");
    }
    let o = foundry(&["info", s(&out.join("tool.bin.brick"))]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict        valid"));
}

#[test]
fn every_run_says_which_backend_did_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h.brick");
    let o = foundry(&[
        "fold",
        s(&golden("hello.txt")),
        "-o",
        s(&out),
        "--backend",
        "cpu",
        "-v",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("backend: cpu"), "{}", stderr(&o));
}

gpu_leg! {
    fn gpu_runs_say_which_adapter_did_the_work() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("h.brick");
        let o = foundry(&[
            "fold",
            s(&golden("hello.txt")),
            "-o",
            s(&out),
            "--backend",
            "gpu",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let label = report["backend"].as_str().unwrap();
        assert!(label == "gpu(sw)" || label == "gpu(hw)", "{label}");
        assert!(!report["adapter"]["name"].as_str().unwrap().is_empty());
        let o = foundry(&[
            "unfold",
            s(&out),
            "-o",
            s(&dir.path().join("h.txt")),
            "--backend",
            "gpu",
            "-v",
        ]);
        assert!(stderr(&o).contains("backend: gpu("), "{}", stderr(&o));
    }
}

#[test]
fn single_file_outputs_and_preview_command() {
    let dir = tempfile::tempdir().unwrap();
    for (out, expected) in [
        ("one.rts.png", "one.rts.png"),
        ("one.png", "one.png"),
        ("one.brick", "one.brick"),
    ] {
        let sub = dir.path().join(out.replace('.', "_"));
        let o = foundry(&["fold", "/proc/meminfo", "-o", s(&sub.join(out)), "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(listing(&sub), [expected]);
    }
    let png = dir.path().join("p.png");
    let o = foundry(&[
        "preview",
        s(&golden("hello.rts.png")),
        "-o",
        s(&png),
        "--palette",
        "entropy",
        "--preview-side",
        "64",
        "--legend",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (64, 64 + 12));
}

#[test]
fn help_has_examples_for_every_command() {
    for command in ["fold", "unfold", "info", "preview", "snapshot", "mem"] {
        let o = foundry(&[command, "--help"]);
        assert!(o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Examples:"),
            "{command}"
        );
    }
}

/// Runs `args`, expects `code`, one error line naming `named`, and an untouched `dir`.
fn expect_failure(args: &[&str], code: i32, named: &Path, says: &str, dir: &Path) {
    let before = listing(dir);
    let o = foundry(args);
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(lines.len(), 1, "one error line, got: {err}");
    let prefix = format!("foundry-gpu {}: error: ", args[0]);
    assert!(
        lines[0].starts_with(&prefix),
        "the error names the command: {err}"
    );
    for debug in [" { ", "Some(", "Os {", "Kind("] {
        assert!(!lines[0].contains(debug), "Rust Debug output in {err}");
    }
    assert!(
        lines[0].contains(s(named)),
        "error must name {}: {err}",
        named.display()
    );
    assert!(lines[0].contains(says), "error must say {says:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        listing(dir),
        before,
        "nothing written, no temporary file left"
    );
}

#[test]
fn malformed_inputs_give_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = std::fs::read(golden("hello.brick")).unwrap();
    let out = d.join("out.bin");

    let truncated = d.join("truncated.brick");
    std::fs::write(&truncated, &good[..50]).unwrap();
    let wrong_magic = d.join("magic.brick");
    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"V3BR");
    std::fs::write(&wrong_magic, &bytes).unwrap();
    let version2 = d.join("version2.brick");
    let mut bytes = good.clone();
    bytes[4] = 2;
    std::fs::write(&version2, &bytes).unwrap();
    let odd_side = d.join("side.brick");
    let mut bytes = good.clone();
    bytes[8] = 6;
    bytes[12] = 6;
    std::fs::write(&odd_side, &bytes).unwrap();
    let short_texture = d.join("short.brick");
    std::fs::write(&short_texture, &good[..good.len() - 4]).unwrap();
    let plain_png = d.join("plain.png");
    let mut encoder = png::Encoder::new(std::fs::File::create(&plain_png).unwrap(), 4, 4);
    encoder.set_color(png::ColorType::Rgba);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&[0u8; 64])
        .unwrap();
    let missing = d.join("missing.brick");
    let not_a_brick = d.join("notes.txt");
    std::fs::write(&not_a_brick, "just text").unwrap();

    let cases: [(&Path, &str); 8] = [
        (&truncated, "truncated header"),
        (&wrong_magic, "expected \"V2BR\""),
        (&version2, "version 2 is not supported"),
        (&odd_side, "not a power of two"),
        (&short_texture, "truncated texture"),
        (&plain_png, "without the PixelRTS text"),
        (&missing, "No such file"),
        (&not_a_brick, "not a .brick"),
    ];
    for (input, says) in cases {
        expect_failure(&["unfold", s(input), "-o", s(&out)], 2, input, says, d);
        if input == version2 || input == odd_side {
            // The header parses, so info shows its fields and an INVALID verdict.
            let o = foundry(&["info", s(input)]);
            assert_eq!(o.status.code(), Some(1));
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.contains("INVALID") && text.contains(says), "{text}");
        } else {
            expect_failure(&["info", s(input)], 2, input, says, d);
        }
    }
    expect_failure(&["unfold", s(d), "-o", s(&out)], 2, d, "is a directory", d);
    expect_failure(
        &["preview", s(d), "-o", s(&d.join("p.png"))],
        2,
        d,
        "is a directory",
        d,
    );
    // Unreadable even for root: reading address 0 of our own memory fails with EIO.
    let unreadable = Path::new("/proc/self/mem");
    expect_failure(
        &["fold", s(unreadable), "-o", s(&d.join("o"))],
        2,
        unreadable,
        "read",
        d,
    );
    expect_failure(
        &[
            "fold",
            s(&golden("hello.txt")),
            "-o",
            s(&d.join("o")),
            "--max-side",
            "1000",
        ],
        2,
        Path::new("--max-side"),
        "power of two",
        d,
    );
}

#[test]
fn errors_name_the_command_and_say_what_is_wrong_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An .rts.png whose IDAT chunk fails its CRC: the png crate's message embeds a Debug form.
    let mut bytes = std::fs::read(golden("hello.rts.png")).unwrap();
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    let len = u32::from_be_bytes(bytes[idat - 4..idat].try_into().unwrap()) as usize;
    bytes[idat + 4 + len] ^= 0xFF;
    let corrupt = d.join("corrupt.rts.png");
    std::fs::write(&corrupt, &bytes).unwrap();
    let out = d.join("out.bin");
    expect_failure(
        &["unfold", s(&corrupt), "-o", s(&out)],
        2,
        &corrupt,
        "CRC error",
        d,
    );
    expect_failure(&["info", s(&corrupt)], 2, &corrupt, "IDAT chunk", d);
    // Its deflate stream broken instead: the decompressor's words, not its enum's name.
    let mut bytes = std::fs::read(golden("hello.rts.png")).unwrap();
    bytes[idat + 6] ^= 0xFF;
    let broken = d.join("broken.rts.png");
    std::fs::write(&broken, &bytes).unwrap();
    expect_failure(
        &["unfold", s(&broken), "-o", s(&out)],
        2,
        &broken,
        "image data is corrupt",
        d,
    );
    // A directory where one file is meant: the message fits the command.
    let folder = d.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let analyze = ["analyze", s(&folder), "--no-llm"];
    expect_failure(
        &analyze,
        2,
        &folder,
        "is a directory, and this command takes one file",
        d,
    );
    let hello = golden("hello.txt");
    let patch = ["patch", s(&hello), s(&folder), "-o", s(&out)];
    expect_failure(&patch, 2, &folder, "give the a-to-b.patch file", d);
    // A missing path to watch: exit 2 and no output folder made.
    let (missing, live) = (d.join("missing"), d.join("live"));
    let watch = ["watch", s(&missing), "-o", s(&live)];
    expect_failure(&watch, 2, &missing, "No such file", d);
    // Without a server, `analyze` says in a few words that nothing answers, and where.
    let o = foundry(&[
        "analyze",
        s(&golden("hello.txt")),
        "--llm-url",
        "http://127.0.0.1:9",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("llm"))
        .unwrap();
    assert!(
        line.contains("nothing answers at http://127.0.0.1:9 (connection refused)"),
        "{line}"
    );
    assert!(line.len() < 150, "{} characters: {line}", line.len());
}

#[test]
fn a_misspelled_section_is_an_error_listing_the_real_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let args = [
        "fold",
        "samples/sample-elf",
        "-o",
        s(&out),
        "--sections",
        ".bogus",
    ];
    let o = foundry(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no section .bogus"), "{err}");
    assert!(err.contains(".text") && err.contains(".rodata"), "{err}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tasks = d.join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    let (a, b) = (d.join("a.bin"), d.join("b.bin"));
    std::fs::write(&a, sample_bytes(100_000, 1)).unwrap();
    std::fs::write(&b, sample_bytes(100_000, 2)).unwrap();
    let (brick, fold_out, diff_out) = (golden("hello.brick"), d.join("fold"), d.join("diff"));
    let cases: [Vec<&str>; 6] = [
        vec!["analyze", "/usr/bin/ls", "--no-llm"],
        vec!["info", s(&brick)],
        vec!["fold", s(&a), "-o", s(&fold_out)],
        vec!["diff", s(&a), s(&b), "-o", s(&diff_out)],
        vec!["status", "--tasks", s(&tasks)],
        vec!["analyze", "/usr/bin/ls", "--no-llm", "--json"],
    ];
    for args in cases {
        // A pipe whose reading end is already closed, as `| true` leaves it.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = stderr(&o);
        let quiet_end = o.status.code() == Some(0) || o.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet_end, "{args:?}: {:?} {err}", o.status);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn hash_mismatch_fails_loudly_with_exit_1_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut bytes = std::fs::read(golden("hello.brick")).unwrap();
    bytes[40] ^= 0xFF; // the recorded SHA-256
    let tampered = d.join("tampered.brick");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = d.join("out.bin");
    expect_failure(
        &["unfold", s(&tampered), "-o", s(&out)],
        1,
        &tampered,
        "SHA-256 mismatch",
        d,
    );
    let o = foundry(&["info", s(&tampered)]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("INVALID") && text.contains("SHA-256 mismatch"),
        "{text}"
    );
}

#[test]
fn info_judges_pixels_padding_and_sidecar_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(golden("hello.brick")).unwrap();
    let last = bytes.len() - 4; // pixel (7,7) is padding for 36 bytes at side 8
    bytes[last] = 0x55;
    bytes[88] |= 1; // HAS_METADATA without a sidecar
    let path = dir.path().join("odd.brick");
    std::fs::write(&path, &bytes).unwrap();
    let o = foundry(&["info", s(&path), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("padding pixels are not 00 00 00 FF"),
        "{problems}"
    );
    assert!(problems.contains("HAS_METADATA is set but"), "{problems}");
    assert_eq!(report["header"]["width"], 8);
}

#[test]
fn forcing_the_gpu_without_an_adapter_fails_clearly() {
    // Point the Vulkan loader at no driver at all: the machine now has no adapter.
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args([
            "fold",
            s(&golden("hello.txt")),
            "-o",
            s(dir.path()),
            "--backend",
            "gpu",
        ])
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no wgpu adapter found"),
        "{}",
        stderr(&o)
    );
    assert!(listing(dir.path()).is_empty());
    // auto falls back to the CPU on the same machine.
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args([
            "fold",
            s(&golden("hello.txt")),
            "-o",
            s(dir.path()),
            "--json",
        ])
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["backend"], "cpu");
}
