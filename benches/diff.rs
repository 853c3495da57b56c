//! Criterion bench of `diff`: two inputs compared (read, per-page kernel, content-defined
//! alignment) beside the floor of reading both once, in the same run.
//!
//! One group, `diff`, with three ids: `read_both` (the floor: `std::fs::read` of A and B from
//! the page cache), `diff_blocks/cpu` (the per-page kernel alone, in memory) and
//! `diff_compare/cpu` (what `diff` does before writing: read both, compare pages, align by
//! content). Sizes from
//! `FOUNDRY_BENCH_DIFF_MIB` (default 256; 1024 for the 1 GiB figure).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundry_gpu::diff::{compare, load_sides, DiffOptions};
use foundry_gpu::Backend;
use std::hint::black_box;
use std::time::Duration;

mod support;

fn sizes() -> Vec<usize> {
    std::env::var("FOUNDRY_BENCH_DIFF_MIB")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|s| s.trim().parse::<usize>().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![256])
        .into_iter()
        .map(|m| m << 20)
        .collect()
}

/// A and B: executable-like noise, B with a few scattered page edits and one insertion, as
/// two states of a growing file or memory image would differ.
fn pair(len: usize) -> (Vec<u8>, Vec<u8>) {
    let a = support::executable_like(len, 0x9E37_79B9_7F4A_7C15);
    let mut b = a.clone();
    for k in 1..64 {
        let at = k * (len / 64);
        b[at..at + 100].fill(0xee);
    }
    b.splice(len / 3..len / 3, std::iter::repeat_n(0x42u8, 10_000));
    (a, b)
}

fn diff_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("diff");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for len in sizes() {
        let (a, b) = pair(len);
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&pa, &a).unwrap();
        std::fs::write(&pb, &b).unwrap();
        group.throughput(Throughput::Bytes((a.len() + b.len()) as u64));
        let mib = len >> 20;
        group.bench_function(BenchmarkId::new("read_both", mib), |bench| {
            bench.iter(|| {
                black_box(std::fs::read(&pa).unwrap());
                black_box(std::fs::read(&pb).unwrap());
            })
        });
        let common = a.len().min(b.len());
        group.bench_function(BenchmarkId::new("diff_blocks/cpu", mib), |bench| {
            bench.iter(|| {
                black_box(
                    Backend::Cpu
                        .diff_blocks(&a[..common], &b[..common], 4096)
                        .unwrap(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("diff_compare/cpu", mib), |bench| {
            bench.iter(|| {
                let (sa, sb) = load_sides(&Backend::Cpu, &pa, &pb).unwrap();
                black_box(compare(&Backend::Cpu, &sa, &sb, &DiffOptions::default(), None).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, diff_benches);
criterion_main!(benches);
