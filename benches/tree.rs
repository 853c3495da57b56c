//! Criterion benches of tree folding (`snapshot`) against a plain walk-and-read of the same tree in the same run.
//!
//! `tree_small`: 20,000 files of 200 B to 8 KiB in 100 directories (throughput in
//! files). `tree_large`: four 32 MiB files (throughput in bytes). Each group has a
//! `read` floor (jwalk + read every file), a `copy` floor (every file copied into a
//! fresh tree: what creating one output per file costs on this disk), and
//! `snapshot` with and without per-file bricks. Output goes to a temporary directory on the same disk.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundry_gpu::progress::Silent;
use foundry_gpu::snapshot::{snapshot, SnapshotOptions};
use foundry_gpu::Backend;
use std::path::Path;
use std::time::Duration;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if i % 64 < 16 {
                b"abcdefghijklmnop"[i % 16]
            } else {
                (state >> 32) as u8
            }
        })
        .collect()
}

fn plain_read(root: &Path) -> u64 {
    let mut total = 0;
    for entry in jwalk::WalkDir::new(root).sort(true).into_iter().flatten() {
        if entry.file_type.is_file() {
            total += std::fs::read(entry.path())
                .map(|b| b.len() as u64)
                .unwrap_or(0);
        }
    }
    total
}

/// Floor for per-file outputs: copying every file into a fresh tree (one create per file).
fn copy_tree(root: &Path, to: &Path) {
    for entry in jwalk::WalkDir::new(root).sort(true).into_iter().flatten() {
        if entry.file_type.is_file() {
            let path = entry.path();
            let target = to.join(path.strip_prefix(root).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn bench_tree(c: &mut Criterion, name: &str, root: &Path, throughput: Throughput) {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(throughput);
    group.bench_function("read", |b| b.iter(|| plain_read(root)));
    group.bench_function("copy", |b| {
        b.iter(|| {
            let out = tempfile::tempdir_in(root.parent().unwrap()).unwrap();
            copy_tree(root, out.path())
        })
    });
    // Both with the district's .brick parts, as every snapshot wrote them when these figures
    // were first taken (the README's table).
    for (label, file_bricks) in [("snapshot", true), ("snapshot_no_file_bricks", false)] {
        let opts = SnapshotOptions {
            file_bricks,
            district_brick: true,
            ..Default::default()
        };
        group.bench_function(label, |b| {
            b.iter(|| {
                let out = tempfile::tempdir_in(root.parent().unwrap()).unwrap();
                snapshot(
                    &Backend::Cpu,
                    &[root.to_path_buf()],
                    out.path(),
                    &opts,
                    &Silent,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn trees(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let mut total = 0;
    for i in 0..20_000u64 {
        let sub = small.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&sub).unwrap();
        let len = 200 + (i * 7919 % 8000) as usize;
        total += len;
        std::fs::write(sub.join(format!("f{i:05}")), bytes(len, i)).unwrap();
    }
    eprintln!("small tree: 20000 files, {total} bytes");
    bench_tree(c, "tree_small", &small, Throughput::Elements(20_000));
    let large = dir.path().join("large");
    std::fs::create_dir_all(&large).unwrap();
    for i in 0..4u64 {
        std::fs::write(large.join(format!("big{i}")), bytes(32 << 20, i + 100)).unwrap();
    }
    bench_tree(c, "tree_large", &large, Throughput::Bytes(4 * (32 << 20)));
}

criterion_group!(benches, trees);
criterion_main!(benches);
