//! Criterion bench of patches beside the peers users would pick, on the same bytes in the same
//! run: `diff` (to `a-to-b.patch`) against `xdelta3 -e -s`, `zstd --patch-from` and `bsdiff`;
//! `patch` against `xdelta3 -d` and `zstd -d --patch-from`. Bytes written by each are printed
//! as a table and saved in `target/criterion/patch/sizes.json`.
//!
//! Cases: `edits` is A (executable-like, `FOUNDRY_BENCH_PATCH_MIB`, default 64) and B with 16
//! scattered 4 KiB overwrites, a 12 KiB insertion in the middle and a 1 MiB block moved from
//! 1/8 to 7/8; `ls4` is `/usr/bin/ls` with 4 bytes changed; `libLLVM-14-to-15` is two
//! releases of Debian's LLVM library, when both are installed. A missing peer is installed
//! with apt-get when the bench runs as root, else left out of the table with a note.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use foundry_gpu::diff::{apply_patch, diff, DiffOptions};
use foundry_gpu::Backend;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod support;

/// The `edits` case of issue 17's table.
fn edits(len: usize) -> (Vec<u8>, Vec<u8>) {
    let a = support::executable_like(len, 0x9E37_79B9_7F4A_7C15);
    let mut b = a.clone();
    for k in 0..16 {
        let at = (2 * k + 1) * (len / 34);
        let fresh = support::executable_like(4096, k as u64 + 7);
        for (byte, new) in b[at..at + 4096].iter_mut().zip(fresh) {
            *byte = new | 0x80; // unlike every byte of A
        }
    }
    let mid = len / 2 + 1234;
    b.splice(
        mid..mid,
        support::executable_like(12 << 10, 99)
            .into_iter()
            .map(|x| x | 0x80),
    );
    let (from, block) = (len / 8, 1 << 20);
    let moved: Vec<u8> = b.drain(from..from + block).collect();
    let to = b.len() * 7 / 8;
    b.splice(to..to, moved);
    (a, b)
}

/// Installs `package` for `tool` when it is missing and this is root with apt-get.
fn peer(tool: &str, package: &str) -> bool {
    let found = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found(tool) {
        return true;
    }
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root && found("apt-get") {
        eprintln!("installing {package} for the {tool} peer");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    let ok = found(tool);
    if !ok {
        eprintln!("{tool} is not installed (apt-get install {package}): left out");
    }
    ok
}

fn run(program: &str, args: &[&Path]) {
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{program} {args:?}");
}

/// Records the size of `path` under `tool`, unless a criterion filter skipped making it.
fn record_size(row: &mut serde_json::Map<String, serde_json::Value>, tool: &str, path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        row.insert(tool.into(), meta.len().into());
    }
}

fn patch_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mib: usize = std::env::var("FOUNDRY_BENCH_PATCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut cases: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    let (a, b) = edits(mib << 20);
    cases.push((format!("edits/{mib}MiB"), a, b));
    if let Ok(ls) = std::fs::read("/usr/bin/ls") {
        let mut b = ls.clone();
        let at = ls.len() / 2;
        for byte in &mut b[at..at + 4] {
            *byte = !*byte;
        }
        cases.push(("ls4".into(), ls, b));
    }
    // Two releases of one library, where code moved everywhere (Debian's libllvm14 and
    // libllvm15): only when both are installed, since each xdelta3 run takes about 14 s.
    let llvm = |v: u32| std::fs::read(format!("/usr/lib/x86_64-linux-gnu/libLLVM-{v}.so.1"));
    match (llvm(14), llvm(15)) {
        (Ok(a), Ok(b)) => cases.push(("libLLVM-14-to-15".into(), a, b)),
        _ => eprintln!("libLLVM-14-to-15 left out: install libllvm14 and libllvm15 to run it"),
    }
    let (xdelta3, zstd, bsdiff) = (
        peer("xdelta3", "xdelta3"),
        peer("zstd", "zstd"),
        peer("bsdiff", "bsdiff"),
    );
    let mut sizes = serde_json::Map::new();
    let mut group = c.benchmark_group("patch");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for (name, a_bytes, b_bytes) in &cases {
        let case = dir.path().join(name.replace('/', "-"));
        std::fs::create_dir_all(&case).unwrap();
        let (a, b) = (case.join("a"), case.join("b"));
        std::fs::write(&a, a_bytes).unwrap();
        std::fs::write(&b, b_bytes).unwrap();
        let out = case.join("d");
        let ours = out.join("a-to-b.patch");
        let rebuilt = case.join("rebuilt");
        let opts = DiffOptions::default();
        group.bench_function(BenchmarkId::new("diff/foundry-gpu", name), |bench| {
            bench.iter(|| diff(&Backend::Cpu, &a, &b, &out, &opts).unwrap())
        });
        group.bench_function(BenchmarkId::new("apply/foundry-gpu", name), |bench| {
            bench.iter(|| apply_patch(&Backend::Cpu, &a, &ours, &rebuilt).unwrap())
        });
        // A criterion filter may have skipped this case: then there is nothing to check.
        if let Ok(rebuilt) = std::fs::read(&rebuilt) {
            assert!(rebuilt == *b_bytes, "{name}: the patch rebuilt other bytes");
        }
        let mut row = serde_json::Map::new();
        record_size(&mut row, "foundry-gpu", &ours);
        let xd: PathBuf = case.join("b.xdelta3");
        if xdelta3 {
            let encode = [
                Path::new("-e"),
                Path::new("-f"),
                Path::new("-s"),
                &a,
                &b,
                &xd,
            ];
            group.bench_function(BenchmarkId::new("diff/xdelta3", name), |bench| {
                bench.iter(|| run("xdelta3", &encode))
            });
            let decode = [
                Path::new("-d"),
                Path::new("-f"),
                Path::new("-s"),
                &a,
                &xd,
                &rebuilt,
            ];
            group.bench_function(BenchmarkId::new("apply/xdelta3", name), |bench| {
                bench.iter(|| run("xdelta3", &decode))
            });
            record_size(&mut row, "xdelta3", &xd);
        }
        if zstd {
            let zs = case.join("b.zst");
            let patch_from = format!("--patch-from={}", a.display());
            let encode_args = ["-q", "-f", &patch_from];
            group.bench_function(BenchmarkId::new("diff/zstd", name), |bench| {
                bench.iter(|| {
                    let status = Command::new("zstd")
                        .args(encode_args)
                        .arg(&b)
                        .arg("-o")
                        .arg(&zs)
                        .status()
                        .unwrap();
                    assert!(status.success());
                })
            });
            group.bench_function(BenchmarkId::new("apply/zstd", name), |bench| {
                bench.iter(|| {
                    let status = Command::new("zstd")
                        .args(["-q", "-f", "-d", "--memory=2048MB", &patch_from])
                        .arg(&zs)
                        .arg("-o")
                        .arg(&rebuilt)
                        .status()
                        .unwrap();
                    assert!(status.success());
                })
            });
            record_size(&mut row, "zstd --patch-from", &zs);
        }
        // bsdiff needs about 17 times the input in memory and minutes per 64 MiB: one run, and
        // only up to 64 MiB.
        if bsdiff && a_bytes.len() <= 64 << 20 {
            let bs = case.join("b.bsdiff");
            let started = std::time::Instant::now();
            run("bsdiff", &[&a, &b, &bs]);
            eprintln!(
                "bsdiff {name}: {:.2} s (one run)",
                started.elapsed().as_secs_f64()
            );
            record_size(&mut row, "bsdiff", &bs);
        }
        sizes.insert(name.clone(), row.into());
    }
    group.finish();
    eprintln!("\npatch bytes, same A and B:");
    for (name, row) in &sizes {
        eprintln!("  {name}: {row}");
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion/patch");
    let _ = std::fs::create_dir_all(&file);
    let _ = std::fs::write(
        file.join("sizes.json"),
        serde_json::to_string_pretty(&sizes).unwrap(),
    );
}

criterion_group!(benches, patch_benches);
criterion_main!(benches);
