//! Criterion benches of the fold engine, each measured beside its floor (memcpy of the same bytes) in the same run.
//!
//! Groups (see benches/README.md): memcpy, memset_texture (floors), fold_brick,
//! fold_rts, unfold_brick, unfold_rts, fold_naive (the per-byte d2xy loop the
//! tiled kernels replace), rts_png_encode, brick_write and rts_png_write
//! (end-to-end `fold` of a file on disk), local_analysis (the checks every fold
//! runs) and rts_png_write_llm (the same fold with `--llm` answered from the
//! cache, to set beside rts_png_write). GPU legs run only on a hardware
//! adapter, or on any adapter with FOUNDRY_BENCH_GPU=1, and are labelled with
//! the adapter kind so software timings are never read as GPU performance.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundry_gpu::backend::{Backend, BackendChoice, GpuOptions};
use foundry_gpu::curve::{d2xy, order_for_cells};
use foundry_gpu::fold::{fold_file, FoldOptions, OutputTarget};
use foundry_gpu::format::rts_png::{encode_texture, write_rts_png, PngCompression};
use foundry_gpu::llm::cache::{AnswerCache, CachedAnswer};
use foundry_gpu::llm::digest::PROMPT_VERSION;
use foundry_gpu::llm::reply::{Answer, SCHEMA_VERSION};
use foundry_gpu::llm::{LlmClient, LlmConfig};
use foundry_gpu::progress::Silent;
use foundry_gpu::Layout;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn sizes() -> Vec<usize> {
    match std::env::var("FOUNDRY_BENCH_SIZES_MIB") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .map(|m: usize| m * MIB)
            .collect(),
        Err(_) => vec![MIB, 16 * MIB, 64 * MIB, 256 * MIB],
    }
}

/// Deterministic bytes shaped like an executable: instruction-like tokens drawn
/// with a skewed distribution from a small vocabulary (so deflate finds the
/// repeats real code has), string tables, and zero padding. Entropy ~6 bits/byte.
fn input(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocabulary: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let n = 1 + (next() % 7) as usize;
            (0..n).map(|_| next() as u8).collect()
        })
        .collect();
    let words = [
        "error",
        "malloc",
        "/usr/lib",
        "config",
        "GLIBC_2.34",
        "free",
        "%s: %d\n",
        "main",
    ];
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        match (out.len() >> 14) % 10 {
            0 => out.extend(std::iter::repeat_n(0u8, 1 + (next() % 4096) as usize)),
            1 => {
                out.extend_from_slice(words[(next() % 8) as usize].as_bytes());
                out.push(0);
            }
            _ => {
                // Squaring skews the pick towards the first tokens, as opcodes are skewed.
                let r = (next() % 512) as f64 / 512.0;
                out.extend_from_slice(&vocabulary[(r * r * 512.0) as usize]);
            }
        }
    }
    out.truncate(len);
    out
}

fn backends() -> Vec<(String, Backend)> {
    let mut all = vec![("cpu".to_string(), Backend::Cpu)];
    let forced = std::env::var("FOUNDRY_BENCH_GPU").is_ok_and(|v| v == "1");
    if forced || foundry_gpu::backend::gpu::hardware_adapter_present() {
        if let Ok(gpu) = Backend::select(BackendChoice::Gpu, &GpuOptions::default()) {
            all.push((gpu.label().to_string(), gpu));
        }
    }
    all
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group
}

fn floors(c: &mut Criterion) {
    let mut memcpy = configure(c, "memcpy");
    for len in sizes() {
        let src = input(len);
        let mut dst = vec![0u8; len];
        memcpy.throughput(Throughput::Bytes(len as u64));
        memcpy.bench_function(BenchmarkId::from_parameter(len / MIB), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
    }
    memcpy.finish();
    let mut memset = configure(c, "memset_texture");
    for len in sizes() {
        let order = order_for_cells(len as u64);
        let mut texture = vec![0u32; 1 << (2 * order)];
        memset.throughput(Throughput::Bytes(len as u64));
        memset.bench_function(BenchmarkId::from_parameter(len / MIB), |b| {
            b.iter(|| texture.fill(black_box(0xFF00_0000)))
        });
    }
    memset.finish();
}

fn kernels(c: &mut Criterion) {
    for (label, backend) in backends() {
        for layout in [Layout::Brick, Layout::Rts] {
            let layout_name = if layout == Layout::Brick {
                "brick"
            } else {
                "rts"
            };
            let mut fold = configure(c, &format!("fold_{layout_name}"));
            for len in sizes() {
                let data = input(len);
                let order = order_for_cells(layout.pixels_for(len as u64));
                let mut texture = vec![0u32; 1 << (2 * order)];
                fold.throughput(Throughput::Bytes(len as u64));
                fold.bench_function(BenchmarkId::new(&label, len / MIB), |b| {
                    b.iter(|| {
                        backend
                            .fold_into(layout, black_box(&data), order, &mut texture)
                            .unwrap()
                    })
                });
            }
            fold.finish();
            let mut unfold = configure(c, &format!("unfold_{layout_name}"));
            for len in sizes() {
                let data = input(len);
                let order = order_for_cells(layout.pixels_for(len as u64));
                let texture = Backend::Cpu.fold(layout, &data, order).unwrap();
                let mut out = vec![0u8; len];
                unfold.throughput(Throughput::Bytes(len as u64));
                unfold.bench_function(BenchmarkId::new(&label, len / MIB), |b| {
                    b.iter(|| {
                        backend
                            .unfold_into(layout, black_box(&texture), order, &mut out)
                            .unwrap()
                    })
                });
            }
            unfold.finish();
        }
    }
    // The loop the tiled kernels replace: one full d2xy per byte, single thread.
    let mut naive = configure(c, "fold_naive");
    let len = 16 * MIB;
    let data = input(len);
    let order = order_for_cells(len as u64);
    let side = 1usize << order;
    let mut texture = vec![0u32; side * side];
    naive.throughput(Throughput::Bytes(len as u64));
    naive.bench_function(BenchmarkId::new("brick", len / MIB), |b| {
        b.iter(|| {
            for (i, &byte) in data.iter().enumerate() {
                let (x, y) = d2xy(order, i as u64);
                texture[y as usize * side + x as usize] =
                    (u32::from(byte) * 0x0001_0101) | 0xFF00_0000;
            }
            black_box(&mut texture);
        })
    });
    naive.finish();
}

fn writers(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut encode = configure(c, "rts_png_encode");
    for len in sizes() {
        let data = input(len);
        let order = order_for_cells(Layout::Rts.pixels_for(len as u64));
        let texture = Backend::Cpu.fold(Layout::Rts, &data, order).unwrap();
        let mut sink = Vec::with_capacity(len + len / 2);
        encode.throughput(Throughput::Bytes(len as u64));
        for compression in [PngCompression::Fast, PngCompression::Balanced] {
            encode.bench_function(
                BenchmarkId::new(format!("{compression:?}").to_lowercase(), len / MIB),
                |b| {
                    b.iter(|| {
                        sink.clear();
                        let image = encode_texture(1 << order, &texture, compression).unwrap();
                        write_rts_png(&mut sink, &image, "{}", None).unwrap();
                    })
                },
            );
        }
    }
    encode.finish();
    for (group, target_name) in [("brick_write", "x.brick"), ("rts_png_write", "x.rts.png")] {
        let mut write = configure(c, group);
        for len in sizes() {
            let input_path = dir.path().join(format!("input-{len}"));
            std::fs::write(&input_path, input(len)).unwrap();
            let target = OutputTarget::from_path(&dir.path().join(target_name));
            let opts = FoldOptions {
                max_side: 16384,
                ..Default::default()
            };
            write.throughput(Throughput::Bytes(len as u64));
            write.bench_function(BenchmarkId::new("cpu", len / MIB), |b| {
                b.iter(|| fold_file(&Backend::Cpu, &input_path, &target, &opts, &Silent).unwrap())
            });
            std::fs::remove_file(&input_path).unwrap();
        }
        write.finish();
    }
}

/// What local analysis costs, and what `--llm` adds to a fold once its answer is cached.
fn semantic(c: &mut Criterion) {
    let mut analysis = configure(c, "local_analysis");
    for len in sizes() {
        let data = input(len);
        analysis.throughput(Throughput::Bytes(len as u64));
        analysis.bench_function(BenchmarkId::new("cpu", len / MIB), |b| {
            b.iter(|| black_box(foundry_gpu::analysis::local::analyze(&data)))
        });
    }
    analysis.finish();

    let dir = tempfile::tempdir().unwrap();
    let cache = AnswerCache::new(dir.path().join("cache"));
    let mut write = configure(c, "rts_png_write_llm");
    for len in sizes() {
        let data = input(len);
        let input_path = dir.path().join(format!("input-{len}"));
        std::fs::write(&input_path, &data).unwrap();
        cache
            .put(&CachedAnswer {
                content_sha256: hex::encode(foundry_gpu::analysis::sha256(&data)),
                // The fold below shows the input under its output's name, x.
                prompt_context: foundry_gpu::llm::cache::prompt_context("x", None),
                prompt_version: PROMPT_VERSION,
                schema_version: SCHEMA_VERSION,
                requested_model: "bench-model".into(),
                model: "bench-model".into(),
                answer: Answer {
                    summary: "A benchmark input.".into(),
                    tags: vec!["bench".into()],
                    risk: "low".into(),
                    warnings: vec![],
                },
                generated_at: 0.0,
            })
            .unwrap();
        // Nothing listens on the discard port: any request would fail, so a passing run
        // proves every answer came from the cache.
        let client = LlmClient::new(LlmConfig {
            base_url: "http://127.0.0.1:9".into(),
            model: Some("bench-model".into()),
            cache_dir: Some(cache.dir().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let opts = FoldOptions {
            max_side: 16384,
            llm: Some(Arc::new(client)),
            ..Default::default()
        };
        let target = OutputTarget::from_path(&dir.path().join("x.rts.png"));
        write.throughput(Throughput::Bytes(len as u64));
        write.bench_function(BenchmarkId::new("cached", len / MIB), |b| {
            b.iter(|| {
                let report =
                    fold_file(&Backend::Cpu, &input_path, &target, &opts, &Silent).unwrap();
                assert_eq!(report.semantic["llm"]["status"], "cached");
            })
        });
        std::fs::remove_file(&input_path).unwrap();
    }
    write.finish();
}

criterion_group!(benches, floors, kernels, writers, semantic);
criterion_main!(benches);
