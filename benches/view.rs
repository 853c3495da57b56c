//! Bench of `view` on a 1 GiB input (FOUNDRY_BENCH_VIEW_MIB sets the size): the time from
//! starting the viewer to its first picture (the zoom-0 tile, over HTTP) beside reading the
//! file once (`cat FILE > /dev/null`, the floor); and tile latency over HTTP as a user's
//! browsing asks for tiles (the tiles covering a 1400x900 window at every zoom, none cached),
//! p50/p95 from raw samples, beside reading each tile's bytes once; plus criterion groups of
//! one tile render at the coarsest and finest zoom.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundry_gpu::format::preview::Palette;
use foundry_gpu::kernels::Layout;
use foundry_gpu::view::tiles::{render_tile, Geometry};
use foundry_gpu::view::{start, RunningView, ViewOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

mod support;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// GETs `path` from `view`, with the token its URL carries (every API request needs it); the
/// response's byte count.
fn get(view: &RunningView, path: &str) -> usize {
    let port = view.addr.port();
    let (_, token) = view
        .url
        .split_once("?token=")
        .expect("the URL carries the token");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{path}");
    response.len()
}

/// The input, written once under target/ (executable-like bytes).
fn input(mib: usize) -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("view-bench-{mib}MiB.bin"));
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some((mib as u64) << 20) {
        let mut file = std::fs::File::create(&path).unwrap();
        for piece in 0..mib.div_ceil(64) {
            let len = (64usize << 20).min((mib << 20) - piece * (64 << 20));
            file.write_all(&support::executable_like(len, piece as u64 + 1))
                .unwrap();
        }
    }
    path
}

/// The tiles a 1400x900 window shows at zoom `z`, centred on the input.
fn window_tiles(z: u32) -> Vec<(u64, u64)> {
    let n = 1u64 << z;
    let (across, down) = (1400u64.div_ceil(256) + 1, 900u64.div_ceil(256) + 1);
    let (x0, y0) = (
        (n / 2).saturating_sub(across / 2),
        (n / 2).saturating_sub(down / 2),
    );
    (y0..(y0 + down).min(n))
        .flat_map(|y| (x0..(x0 + across).min(n)).map(move |x| (x, y)))
        .collect()
}

fn view_benches(c: &mut Criterion) {
    let mib: usize = std::env::var("FOUNDRY_BENCH_VIEW_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let path = input(mib);
    let size = (mib as u64) << 20;
    let geometry = Geometry::of(size, Layout::Brick);

    // First picture: start (reads the input) and the zoom-0 tile, beside reading it once.
    let mut floor = Vec::new();
    let mut first = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{}' > /dev/null", path.display()))
            .status()
            .unwrap();
        assert!(status.success());
        floor.push(t.elapsed());
        let t = Instant::now();
        let view = start(std::slice::from_ref(&path), &ViewOptions::default()).unwrap();
        get(&view, "/api/input/0/tile/brick/byteclass/0/0/0.png");
        first.push(t.elapsed());
        drop(view);
    }
    let (floor, first) = (percentile(&mut floor, 0.5), percentile(&mut first, 0.5));
    println!(
        "view/first_picture/{mib}MiB: {:.0} ms (median of 5) beside cat FILE > /dev/null {:.0} ms: {:.2}x the read floor",
        ms(first),
        ms(floor),
        first.as_secs_f64() / floor.as_secs_f64()
    );

    // Tiles as browsing asks for them: each zoom's window of tiles, none cached before.
    let view = start(std::slice::from_ref(&path), &ViewOptions::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut samples = Vec::new();
    let mut floors = Vec::new();
    let mut served = 0usize;
    for z in 0..=geometry.max_zoom() {
        let mut level = Vec::new();
        for (x, y) in window_tiles(z) {
            let t = Instant::now();
            served += get(
                &view,
                &format!("/api/input/0/tile/brick/byteclass/{z}/{x}/{y}.png"),
            );
            level.push(t.elapsed());
            let (start, end) = geometry.tile_bytes(z, x, y);
            let t = Instant::now();
            let sum: u64 = bytes[start as usize..end.min(size) as usize]
                .iter()
                .map(|&b| u64::from(b))
                .sum();
            std::hint::black_box(sum);
            floors.push(t.elapsed());
        }
        let worst = *level.iter().max().unwrap();
        println!(
            "view/tiles/zoom {z}: {} tiles, p50 {:.1} ms, max {:.1} ms",
            level.len(),
            ms(percentile(&mut level.clone(), 0.5)),
            ms(worst)
        );
        samples.extend(level);
    }
    let count = samples.len();
    println!(
        "view/tiles/{mib}MiB: {count} tiles over every zoom, p50 {:.1} ms, p95 {:.1} ms; reading each tile's bytes once p50 {:.2} ms, p95 {:.2} ms; {:.1} KB of PNG a tile",
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 0.95)),
        ms(percentile(&mut floors, 0.5)),
        ms(percentile(&mut floors, 0.95)),
        served as f64 / count as f64 / 1e3
    );
    drop(view);

    let mut group = c.benchmark_group("view");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size));
    group.bench_function(format!("tile_zoom0/{mib}MiB"), |b| {
        b.iter(|| render_tile(&bytes, geometry, Palette::Byteclass, 0, 0, 0).unwrap())
    });
    let deepest = geometry.max_zoom();
    group.throughput(Throughput::Bytes(1 << 16));
    group.bench_function(format!("tile_deepest/{mib}MiB"), |b| {
        b.iter(|| render_tile(&bytes, geometry, Palette::Byteclass, deepest, 3, 5).unwrap())
    });
    group.finish();
}

criterion_group!(benches, view_benches);
criterion_main!(benches);
