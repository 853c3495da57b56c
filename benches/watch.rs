//! Criterion bench of watch mode: from a write to every output in place (brick, `.rts.png`,
//! preview, diff), for 4 KiB written in place into a 10 MiB file and for one file changed in a
//! 10,000-file tree, beside the floor of writing the same bytes; the CPU each 4 KiB edit costs
//! beside a fresh fold of the same file; then the CPU a watch uses while 10,000 files sit idle.
//! Prints p50/p95 latencies from the raw samples, since a watch is judged by its tail.

use criterion::{criterion_group, criterion_main, Criterion};
use foundry_gpu::watch::{watch, WatchEvent, WatchOptions};
use foundry_gpu::Backend;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A watch running on its own thread, reporting events on a channel.
struct Running {
    stop: Arc<AtomicBool>,
    events: mpsc::Receiver<WatchEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(paths: Vec<PathBuf>, out: &Path) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, events) = mpsc::channel();
        let opts = WatchOptions {
            policy: None,
            output: out.to_path_buf(),
            interval: Duration::from_secs(1),
            debounce: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
            publish: None,
            versioned: false,
            fold: Default::default(),
            max_refolds: None,
            duration: None,
        };
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            watch(&Backend::Cpu, &paths, &opts, &flag, &mut |e| {
                let _ = tx.send(e.clone());
            })
            .unwrap();
        });
        Running {
            stop,
            events,
            thread: Some(thread),
        }
    }

    /// Waits for the refold of `path` with the given content hash.
    fn wait_for(&self, path: &Path, sha: &str) {
        self.wait_until(|e| e.path == path && e.sha256.as_deref() == Some(sha));
    }

    /// Waits for the first event that `wanted` accepts, returning it.
    fn wait_until(&self, wanted: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
        loop {
            let e = self
                .events
                .recv_timeout(Duration::from_secs(60))
                .expect("refold");
            if wanted(&e) {
                return e;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.5);
    let p95 = percentile(samples, 0.95);
    println!(
        "{what}: write to outputs in place p50 {:.1} ms, p95 {:.1} ms over {} changes",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        samples.len()
    );
}

/// One 4 KiB page of a file rewritten in place: where, the new bytes, and the file's SHA-256
/// after it (worked out before the timing starts, so the bench's own hashing is not counted).
struct PageEdit {
    offset: u64,
    page: Vec<u8>,
    sha256: String,
}

/// `count` page edits of `base`, applied to it in turn, each at a different page.
fn page_edits(base: &mut [u8], first: u64, count: u64) -> Vec<PageEdit> {
    let pages = (base.len() / 4096) as u64;
    (first..first + count)
        .map(|i| {
            let offset = (i * 7919 % pages) * 4096;
            let range = offset as usize..offset as usize + 4096;
            for (k, b) in base[range.clone()].iter_mut().enumerate() {
                *b = b.wrapping_add((i as u8) | 1).rotate_left(k as u32 % 8);
            }
            PageEdit {
                offset,
                page: base[range].to_vec(),
                sha256: hex::encode(foundry_gpu::analysis::sha256(base)),
            }
        })
        .collect()
}

/// Writes `edit` into `file` in place and times until the watch reports every output updated.
fn write_page_and_wait(running: &Running, file: &Path, edit: &PageEdit) -> Duration {
    use std::os::unix::fs::FileExt;
    let handle = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let start = Instant::now();
    handle.write_all_at(&edit.page, edit.offset).unwrap();
    drop(handle);
    running.wait_for(file, &edit.sha256);
    start.elapsed()
}

/// Edits `file` in place with the `i`-th variant of `base` and times until its brick is updated.
fn edit_and_wait(running: &Running, file: &Path, base: &mut [u8], i: u64) -> Duration {
    edit_and_time(running, file, base, i, None).0
}

/// [`edit_and_wait`], also timing (for a file in the watched tree `district_of`) until the
/// tree's district is rebuilt.
fn edit_and_time(
    running: &Running,
    file: &Path,
    base: &mut [u8],
    i: u64,
    district_of: Option<&Path>,
) -> (Duration, Option<Duration>) {
    let at = (i as usize * 7919) % base.len();
    base[at] = base[at].wrapping_add(1);
    let sha = hex::encode(foundry_gpu::analysis::sha256(base));
    let start = Instant::now();
    std::fs::write(file, &*base).unwrap();
    running.wait_for(file, &sha);
    let brick = start.elapsed();
    let district = district_of.map(|root| {
        running.wait_until(|e| e.path == root && e.kind == "district");
        start.elapsed()
    });
    (brick, district)
}

/// `count` timed edits after criterion's own (percentiles need raw samples).
fn sampled_edits(
    running: &Running,
    file: &Path,
    base: &mut [u8],
    i: &mut u64,
    count: usize,
    district_of: Option<&Path>,
) -> (Vec<Duration>, Vec<Duration>) {
    (0..count)
        .map(|_| {
            *i += 1;
            edit_and_time(running, file, base, *i, district_of)
        })
        .map(|(brick, district)| (brick, district.unwrap_or_default()))
        .unzip()
}

fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn watch_benches(c: &mut Criterion) {
    // FOUNDRY_BENCH_DIR puts the watched files and outputs on another file system: on one
    // that shares blocks (XFS, btrfs), each event's brick begins as a clone of the last.
    let dir = match std::env::var_os("FOUNDRY_BENCH_DIR") {
        Some(root) => tempfile::tempdir_in(root),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let mut group = c.benchmark_group("watch");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_secs(8));

    // One 10 MiB file edited in place.
    let file = dir.path().join("big.bin");
    let mut base: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &base).unwrap();
    let running = Running::start(vec![file.clone()], &dir.path().join("out-file"));
    running.wait_for(&file, &hex::encode(foundry_gpu::analysis::sha256(&base)));
    group.bench_function("write_floor/10MiB", |b| {
        b.iter(|| std::fs::write(dir.path().join("floor.bin"), &base).unwrap())
    });
    let mut i = 0;
    group.bench_function("refold/10MiB", |b| {
        b.iter_custom(|iters| {
            let edits = page_edits(&mut base, i, iters);
            i += iters;
            edits
                .iter()
                .map(|edit| write_page_and_wait(&running, &file, edit))
                .sum()
        })
    });
    // Percentiles from a run of their own, after criterion's warm-up and measurement, with
    // the process's CPU time over those edits.
    let edits = page_edits(&mut base, i, 40);
    i += 40;
    let cpu0 = process_cpu_seconds();
    let mut samples: Vec<Duration> = edits
        .iter()
        .map(|edit| write_page_and_wait(&running, &file, edit))
        .collect();
    let cpu_per_edit = (process_cpu_seconds() - cpu0) / edits.len() as f64;
    drop(running);
    report(
        "10 MiB file, 4 KiB written in place (20 ms debounce included)",
        &mut samples,
    );
    // A fresh fold of the same bytes, for the CPU an edit should save.
    let cpu0 = process_cpu_seconds();
    let folds = 5;
    for _ in 0..folds {
        foundry_gpu::fold::fold_bytes(
            &Backend::Cpu,
            &file,
            &base,
            &foundry_gpu::fold::OutputTarget::Directory(dir.path().join("out-fresh")),
            &Default::default(),
            &foundry_gpu::progress::Silent,
        )
        .unwrap();
    }
    let cpu_fresh = (process_cpu_seconds() - cpu0) / folds as f64;
    println!(
        "CPU per 4 KiB edit: {:.1} ms, a fresh fold of the file {:.1} ms ({:.0} %; ticks of 10 ms, averaged over {} edits)",
        cpu_per_edit * 1e3,
        cpu_fresh * 1e3,
        100.0 * cpu_per_edit / cpu_fresh,
        edits.len()
    );

    // One file changed in a 10,000-file tree.
    let tree = dir.path().join("tree");
    for d in 0..100 {
        std::fs::create_dir_all(tree.join(format!("d{d:03}"))).unwrap();
        for f in 0..100 {
            std::fs::write(
                tree.join(format!("d{d:03}/f{f:03}.txt")),
                format!("file {d} {f}\n").repeat(20),
            )
            .unwrap();
        }
    }
    let running = Running::start(vec![tree.clone()], &dir.path().join("out-tree"));
    // The initial fold of all 10,000 files: wait for the last one.
    let last = tree.join("d099/f099.txt").canonicalize().unwrap();
    running.wait_for(
        &last,
        &hex::encode(foundry_gpu::analysis::sha256(
            &std::fs::read(&last).unwrap(),
        )),
    );
    let target = tree.join("d050/f050.txt").canonicalize().unwrap();
    let mut small = std::fs::read(&target).unwrap();
    group.bench_function("write_floor/small", |b| {
        b.iter(|| std::fs::write(dir.path().join("floor.txt"), &small).unwrap())
    });
    group.bench_function("refold/1-of-10k", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    i += 1;
                    edit_and_wait(&running, &target, &mut small, i)
                })
                .sum()
        })
    });
    let root = tree.canonicalize().unwrap();
    let (mut samples, mut districts) =
        sampled_edits(&running, &target, &mut small, &mut i, 100, Some(&root));
    report("one file changed in a 10,000-file tree", &mut samples);
    report(
        "the same change, to the tree's district rebuilt",
        &mut districts,
    );
    // Idle: nothing changes for 10 s; the watch should sleep in the kernel.
    let (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let cpu = process_cpu_seconds() - cpu0;
    println!(
        "idle watch of 10,000 files: {:.2} % of one core over {:.0} s",
        100.0 * cpu / wall0.elapsed().as_secs_f64(),
        wall0.elapsed().as_secs_f64()
    );
    drop(running);
    group.finish();
}

criterion_group!(benches, watch_benches);
criterion_main!(benches);
