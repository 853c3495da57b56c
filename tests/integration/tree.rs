//! Directory trees: a fixture tree with every awkward thing a real one has, folded into
//! per-file bricks and a district whose index says exactly where each file's bytes are.

use crate::harness::{gpu, gpu_leg, sample_bytes};
use foundry_gpu::curve::xy2d;
use foundry_gpu::fold;
use foundry_gpu::format::brick::Brick;
use foundry_gpu::progress::Silent;
use foundry_gpu::snapshot::{snapshot, SnapshotOptions};
use foundry_gpu::source::tree::WalkOptions;
use foundry_gpu::Backend;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tree with nested directories, names with spaces and non-UTF-8 bytes, an empty
/// file, a symlink loop, symlinks in and out of the root, a FIFO and a 4 GiB sparse file.
fn fixture(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("a/deep/er")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("a/one.txt"), "first file\n").unwrap();
    std::fs::write(root.join("a/deep/er/two.bin"), sample_bytes(70_000, 1)).unwrap();
    std::fs::write(root.join("a/with space.txt"), "spaced name").unwrap();
    std::fs::write(
        root.join("b").join(OsStr::from_bytes(b"bad-\xff-name")),
        b"not utf-8 name",
    )
    .unwrap();
    std::fs::write(root.join("b/empty"), b"").unwrap();
    std::fs::write(root.join("c.so"), sample_bytes(300_000, 2)).unwrap();
    std::os::unix::fs::symlink(".", root.join("b/loop")).unwrap();
    std::os::unix::fs::symlink("../a/one.txt", root.join("b/inside")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("b/outside")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(root.join("b/fifo"))
        .status()
        .unwrap()
        .success());
    let sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(4 << 30).unwrap();
    root
}

fn snap(
    backend: &Backend,
    root: &Path,
    out: &Path,
    walk: WalkOptions,
) -> foundry_gpu::snapshot::SnapshotReport {
    let opts = SnapshotOptions {
        walk,
        max_side: 256, // 64 KiB parts, so the fixture spans several
        file_bricks: true,
        district_brick: true,
        ..Default::default()
    };
    snapshot(backend, &[root.to_path_buf()], out, &opts, &Silent).unwrap()
}

fn index(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("district.json")).unwrap()).unwrap()
}

#[test]
fn a_tree_folds_into_file_bricks_and_an_exact_district() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let out = dir.path().join("out");
    let report = snap(&Backend::Cpu, &root, &out, WalkOptions::default());
    assert_eq!(report.files, 6, "one, two, spaced, bad-name, empty, c.so");
    assert_eq!(report.skipped.get("special file"), Some(&1));
    assert_eq!(report.skipped.get("sparse"), Some(&1));
    assert_eq!(report.symlinks, 3);
    let idx = index(&out);
    let paths: Vec<&str> = idx["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "root/a/deep/er/two.bin",
            "root/a/one.txt",
            "root/a/with space.txt",
            "root/b/bad-\u{fffd}-name",
            "root/b/empty",
            "root/c.so"
        ],
        "path order, so a directory's files are contiguous"
    );
    let links = idx["symlinks"].as_array().unwrap();
    let inside = |name: &str| {
        links.iter().find(|l| l["path"] == name).unwrap()["inside_root"]
            .as_bool()
            .unwrap()
    };
    assert!(inside("b/loop") && inside("b/inside") && !inside("b/outside"));

    // The district is the files concatenated in that order, bit for bit.
    let cat = dir.path().join("cat.bin");
    fold::unfold_file(
        &Backend::Cpu,
        &out.join("district.parts.json"),
        &cat,
        &Silent,
    )
    .unwrap();
    let district = std::fs::read(&cat).unwrap();
    assert!(report.district_parts > 1);
    for f in idx["files"].as_array().unwrap() {
        let rel = match f["path_hex"].as_str() {
            Some(h) => PathBuf::from(OsStr::from_bytes(&hex::decode(h).unwrap())),
            None => PathBuf::from(f["path"].as_str().unwrap()),
        };
        let content = std::fs::read(dir.path().join(&rel)).unwrap();
        let (offset, size) = (
            f["offset"].as_u64().unwrap() as usize,
            f["size"].as_u64().unwrap() as usize,
        );
        assert_eq!(&district[offset..offset + size], &content[..], "{rel:?}");
        // Its regions cover exactly its bytes in the district's parts.
        let mut cells = 0u64;
        for region in f["regions"].as_array().unwrap() {
            let part = region["part"].as_u64().unwrap() as usize;
            let brick = Brick::read(&out.join(format!("district.{part:03}.brick"))).unwrap();
            for r in region["rects"].as_array().unwrap() {
                let v: Vec<u32> = r
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap() as u32)
                    .collect();
                for y in v[1]..v[1] + v[3] {
                    for x in v[0]..v[0] + v[2] {
                        let d = xy2d(brick.header.hilbert_order, x, y) as usize + part * 65536;
                        assert!(
                            d >= offset && d < offset + size,
                            "{rel:?}: pixel outside the file"
                        );
                        cells += 1;
                    }
                }
            }
        }
        assert_eq!(cells as usize, size, "{rel:?}");
        // And its own brick, files/PATH.brick, holds it too (a parts index when it is split).
        let mut brick_name = rel.as_os_str().to_owned();
        brick_name.push(".brick");
        let own = out.join(f["brick"].as_str().unwrap());
        if own.to_string_lossy().ends_with(".parts.json") {
            let back = dir.path().join("own.bin");
            fold::unfold_file(&Backend::Cpu, &own, &back, &Silent).unwrap();
            assert_eq!(std::fs::read(&back).unwrap(), content, "{rel:?}");
        } else {
            let brick = out.join("files").join(&brick_name);
            assert_eq!(
                f["brick"].as_str().unwrap(),
                Path::new("files").join(&brick_name).to_string_lossy()
            );
            assert_eq!(
                fold::decode(&Backend::Cpu, &brick).unwrap().bytes,
                content,
                "{rel:?}"
            );
        }
    }
}

#[test]
fn limits_and_globs_choose_files_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let only = |walk: WalkOptions, name: &str| {
        let out = dir.path().join(name);
        let report = snap(&Backend::Cpu, &root, &out, walk);
        let idx = index(&out);
        let paths: Vec<String> = idx["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
        (report, paths)
    };
    let (r, paths) = only(
        WalkOptions {
            max_files: Some(2),
            ..Default::default()
        },
        "max-files",
    );
    assert_eq!(paths, ["root/a/deep/er/two.bin", "root/a/one.txt"]);
    assert_eq!(r.skipped.get("over --max-files"), Some(&4));
    let (_, paths) = only(
        WalkOptions {
            max_bytes: Some(70_020),
            ..Default::default()
        },
        "max-bytes",
    );
    assert_eq!(paths, ["root/a/deep/er/two.bin", "root/a/one.txt"]);
    let (_, paths) = only(
        WalkOptions {
            include: vec!["**/*.txt".into()],
            ..Default::default()
        },
        "include",
    );
    assert_eq!(paths, ["root/a/one.txt", "root/a/with space.txt"]);
    let (r, paths) = only(
        WalkOptions {
            exclude: vec!["a".into(), "*.so".into()],
            ..Default::default()
        },
        "exclude",
    );
    assert_eq!(paths, ["root/b/bad-\u{fffd}-name", "root/b/empty"]);
    assert_eq!(
        r.skipped.get("excluded"),
        Some(&2),
        "the pruned directory a and c.so"
    );
}

gpu_leg! {
fn gpu_district_matches_cpu_district() {
    let gpu = gpu();
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    snap(
        &Backend::Cpu,
        &root,
        &dir.path().join("cpu"),
        WalkOptions::default(),
    );
    snap(gpu, &root, &dir.path().join("gpu"), WalkOptions::default());
    for part in 0..2 {
        for ext in ["brick", "rts.png"] {
            let name = format!("district.{part:03}.{ext}");
            let cpu = std::fs::read(dir.path().join("cpu").join(&name)).unwrap();
            let on_gpu = std::fs::read(dir.path().join("gpu").join(&name)).unwrap();
            assert!(cpu == on_gpu, "{name} differs between backends");
        }
    }
}
}

#[test]
fn unreadable_files_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("locked")).unwrap();
    std::fs::write(root.join("open.txt"), "readable").unwrap();
    std::fs::write(root.join("secret.txt"), "unreadable").unwrap();
    std::fs::write(root.join("locked/inner.txt"), "behind a locked directory").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Root reads everything, so run the walk as an unprivileged user when we are root.
    let binary = env!("CARGO_BIN_EXE_foundry-gpu");
    let args = [
        "snapshot",
        root.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ];
    let output = if crate::harness::is_root() {
        Command::new("runuser")
            .args(["-u", "nobody", "--", binary])
            .args(args)
            .output()
            .expect("runuser")
    } else {
        Command::new(binary).args(args).output().unwrap()
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["files"], 1);
    assert_eq!(report["skipped"]["permission denied"], 2, "{report}");
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                bytes_under(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[test]
fn a_snapshot_writes_file_bricks_only_when_asked_and_counts_every_byte_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let run = |file_bricks: bool, out: &Path| {
        let opts = SnapshotOptions {
            max_side: 256,
            file_bricks,
            ..Default::default()
        };
        snapshot(
            &Backend::Cpu,
            std::slice::from_ref(&root),
            out,
            &opts,
            &Silent,
        )
        .unwrap()
    };
    let lean = dir.path().join("lean");
    let report = run(false, &lean);
    assert!(!lean.join("files").exists(), "no brick per file by default");
    assert_eq!(report.bytes_written, bytes_under(&lean));
    // Nor a district .brick: its .rts.png parts hold the bytes, and the files' regions are
    // squares of those.
    let names = crate::harness::names_in(&lean);
    assert!(!names.iter().any(|n| n.ends_with(".brick")), "{names:?}");
    assert_eq!(index(&lean)["regions_in"], "rts_png");
    let located =
        foundry_gpu::locate::locate(&lean, foundry_gpu::locate::Query::Region("two.bin".into()))
            .unwrap();
    let first = &located.placements[0];
    let part =
        foundry_gpu::format::rts_png::RtsPng::read(first.texture.file.as_ref().unwrap()).unwrap();
    let texel = part.texture[(first.y * part.side + first.x) as usize];
    assert_eq!(
        (texel >> (8 * first.channel)) as u8,
        sample_bytes(70_000, 1)[0],
        "the first byte of two.bin"
    );
    let full = dir.path().join("full");
    let with_bricks = run(true, &full);
    assert!(full.join("files/root/a/one.txt.brick").exists());
    assert_eq!(with_bricks.bytes_written, bytes_under(&full));
    assert!(with_bricks.bytes_written > report.bytes_written + 4 * 300_000);
    let ratio = report.bytes_written as f64 / report.bytes as f64;
    assert!(
        (report.written_per_byte_read - ratio).abs() < 0.01,
        "{} against {ratio}",
        report.written_per_byte_read
    );
}
