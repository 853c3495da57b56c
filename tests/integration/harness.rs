//! Test harness: GPU legs counted by cargo (`gpu_leg!`), shared backends, test data,
//! an independent reference fold written from formats.md, a byte comparison that reports where,
//! the binary as a hermetic command, and polling with a deadline.

use foundry_gpu::backend::{Backend, BackendChoice, GpuOptions};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Declares a GPU leg: a `#[test]` that cargo counts as ignored, with the reason, when this build
/// cannot run it (`build.rs` found no Vulkan driver, or `FOUNDRY_TEST_GPU=off`), so a summary line
/// never counts an untested GPU path as passed. Where it runs, a missing adapter fails it.
macro_rules! gpu_leg {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        #[cfg_attr(
            foundry_gpu_legs_off,
            ignore = "GPU leg: FOUNDRY_TEST_GPU=off when this test binary was built"
        )]
        #[cfg_attr(
            foundry_no_vulkan_driver,
            ignore = "GPU leg: no Vulkan driver found when this test binary was built \
                      (apt-get install mesa-vulkan-drivers libvulkan1, then touch build.rs)"
        )]
        fn $name() $body
    };
}
pub(crate) use gpu_leg;

/// Declares the two legs of a twin test: `$cpu` runs `$check` on the CPU backend, the GPU leg
/// `$gpu` runs it on the GPU (counted as ignored, with the reason, where it cannot run).
macro_rules! twin_legs {
    ($check:ident: $cpu:ident, $gpu:ident) => {
        #[test]
        fn $cpu() {
            $check(&foundry_gpu::Backend::Cpu)
        }
        crate::harness::gpu_leg! {
            fn $gpu() {
                $check(crate::harness::gpu())
            }
        }
    };
}
pub(crate) use twin_legs;

/// Opens a GPU backend for a GPU leg; without an adapter the leg fails, naming why.
fn open_gpu(options: GpuOptions) -> Backend {
    Backend::select(BackendChoice::Gpu, &options).unwrap_or_else(|e| {
        panic!(
            "this GPU leg runs (build.rs found a Vulkan driver, or FOUNDRY_TEST_GPU=require) \
             but no adapter opened: {e}"
        )
    })
}

/// The GPU backend with the device's own chunk size, shared by all GPU legs.
pub fn gpu() -> &'static Backend {
    static GPU: OnceLock<Backend> = OnceLock::new();
    GPU.get_or_init(|| open_gpu(GpuOptions::default()))
}

/// A GPU backend forced to 16 KiB chunks, so ordinary inputs span many chunks.
pub fn gpu_small_chunks() -> &'static Backend {
    static GPU: OnceLock<Backend> = OnceLock::new();
    GPU.get_or_init(|| {
        open_gpu(GpuOptions {
            max_chunk_bytes: Some(16 << 10),
            ..GpuOptions::default()
        })
    })
}

/// Deterministic bytes with the structure real files have: zero runs, text, noise.
pub fn sample_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let text = b"The quick brown fox jumps over the lazy dog.\n";
    (0..len)
        .map(|i| match (i / 1500) % 4 {
            0 => 0,
            1 => text[i % text.len()],
            _ => next() as u8,
        })
        .collect()
}

/// formats.md §1 pseudo-code, transcribed independently of the crate.
pub fn spec_d2xy(order: u32, d: u64) -> (usize, usize) {
    let n = 1u64 << order;
    let (mut x, mut y, mut t, mut s) = (0u64, 0u64, d, 1u64);
    while s < n {
        let rx = 1 & (t >> 1);
        let ry = 1 & (t ^ rx);
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        x += s * rx;
        y += s * ry;
        t >>= 2;
        s <<= 1;
    }
    (x as usize, y as usize)
}

/// The naive per-byte fold the contract describes, as RGBA bytes.
pub fn reference_fold(data: &[u8], bytes_per_pixel: usize, order: u32) -> Vec<u8> {
    let side = 1usize << order;
    let mut out = vec![0u8; side * side * 4];
    if bytes_per_pixel == 1 {
        for px in out.chunks_exact_mut(4) {
            px[3] = 255;
        }
    }
    for (p, group) in data.chunks(bytes_per_pixel).enumerate() {
        let (x, y) = spec_d2xy(order, p as u64);
        let at = (y * side + x) * 4;
        if bytes_per_pixel == 1 {
            out[at..at + 3].fill(group[0]);
        } else {
            out[at..at + group.len()].copy_from_slice(group);
        }
    }
    out
}

/// `Ok` when equal, else where and how they first differ.
pub fn compare_bytes(what: &str, expected: &[u8], actual: &[u8]) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "{what}: lengths differ: {} vs {}",
            expected.len(),
            actual.len()
        ));
    }
    match expected.iter().zip(actual).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: first difference at byte {i}: {:#04x} vs {:#04x}",
            expected[i], actual[i]
        )),
    }
}

/// Panics with the comparison's message when the bytes differ.
pub fn assert_same(what: &str, expected: &[u8], actual: &[u8]) {
    if let Err(message) = compare_bytes(what, expected, actual) {
        panic!("{message}");
    }
}

/// The `foundry-gpu` binary, hermetic about the language model: `FOUNDRY_LLM_URL` points at a
/// port nothing listens on, so a task that asks for an analysis never reaches a real server on
/// this machine.
pub fn foundry_cmd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"));
    command.env("FOUNDRY_LLM_URL", "http://127.0.0.1:9");
    command
}

/// The names in the folder `dir`, sorted.
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// How many times each task of the daemon's folder `tasks` was started, by stem: the daemon
/// appends a line to `.foundry/runs.log` as it starts each attempt.
pub fn runs_per_task(tasks: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut runs = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(tasks.join(".foundry/runs.log"))
        .unwrap_or_default()
        .lines()
    {
        *runs
            .entry(line.split(' ').next().unwrap().to_string())
            .or_insert(0) += 1;
    }
    runs
}

/// True when the tests run as root, who reads every file whatever its mode says.
pub fn is_root() -> bool {
    // /proc/self belongs to this process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Polls `done` until it holds; panics naming `what` once `limit` has passed, so a condition
/// that never comes fails the test instead of hanging it.
pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "not reached within {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` to exit and returns its status; once `limit` has passed it kills the child,
/// so it does not outlive the test, and panics.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_exit`], then what the child wrote to its piped stdout and stderr (an unpiped one
/// reads as empty). For children whose output is small enough to sit in the pipes until exit.
pub fn output_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let status = wait_exit(&mut child, limit);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(pipe) = child.stdout.as_mut() {
        pipe.read_to_end(&mut stdout).unwrap();
    }
    if let Some(pipe) = child.stderr.as_mut() {
        pipe.read_to_end(&mut stderr).unwrap();
    }
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs the `foundry-gpu` binary with `args`.
pub fn foundry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs `foundry-gpu ARGS --json`, requires success, and parses the report.
pub fn foundry_json(args: &[&str]) -> serde_json::Value {
    let o = foundry(&[args, &["--json"]].concat());
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("a JSON report")
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A golden file of `tests/fixtures/golden` (made by Geometry OS's own writers).
pub fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

/// Compiles `source` with gcc `args` into `dir/out`, returning the output path.
pub fn gcc(dir: &std::path::Path, source: &str, out: &str, args: &[&str]) -> std::path::PathBuf {
    let c = dir.join(format!("{out}.c"));
    std::fs::write(&c, source).unwrap();
    let path = dir.join(out);
    let status = Command::new("gcc")
        .args(args)
        .arg("-o")
        .arg(&path)
        .arg(&c)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed");
    path
}

/// Every byte of every file below `dir` (for a search for a secret in outputs).
pub fn bytes_below(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(b) = std::fs::read(&path) {
                bytes.extend(b);
            }
        }
    }
    bytes
}

/// The uid and gid an unprivileged attacker runs as (`nobody` on Debian).
pub const NOBODY: u32 = 65_534;

/// Gives `path` (not following a symlink) to `nobody`.
pub fn give_to_nobody(path: &std::path::Path) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::process::Uid::from_raw(NOBODY)),
        Some(rustix::process::Gid::from_raw(NOBODY)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Lets others through every folder from `/` down to `dir`, so a process of another user can
/// reach what a test gives it there (a temporary folder is 0700).
pub fn open_the_way_to(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors() {
        if let Ok(meta) = std::fs::metadata(ancestor) {
            let mode = meta.permissions().mode();
            if mode & 0o011 != 0o011 {
                let _ = std::fs::set_permissions(
                    ancestor,
                    std::fs::Permissions::from_mode(mode | 0o011),
                );
            }
        }
    }
}

const SWAPPER_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* swapper A B SECONDS: exchanges A and B with renameat2(RENAME_EXCHANGE) until SECONDS have
   passed, then prints how many exchanges worked and how many failed. */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    double seconds = atof(argv[3]);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    unsigned long swaps = 0, failures = 0;
    for (;;) {
        if (renameat2(AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) == 0) swaps++;
        else failures++;
        if ((swaps + failures) % 64 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 >= seconds) break;
        }
    }
    printf("%lu %lu\n", swaps, failures);
    return 0;
}
"#;

/// An attacker in a process of its own: as `nobody` through `setpriv` when the tests run as
/// root (they do in CI), else as the test's own user. It swaps two paths atomically, in a loop.
pub struct Attacker {
    child: std::process::Child,
    _bin: tempfile::TempDir,
}

impl Attacker {
    /// Starts exchanging `a` and `b` for `seconds`.
    pub fn swapping(a: &std::path::Path, b: &std::path::Path, seconds: f64) -> Attacker {
        let bin = tempfile::tempdir().unwrap();
        let swapper = gcc(bin.path(), SWAPPER_C, "swapper", &["-O2"]);
        let mut command = if is_root() {
            open_the_way_to(bin.path());
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ]);
            c.arg(&swapper);
            c
        } else {
            Command::new(&swapper)
        };
        let child = command
            .arg(a)
            .arg(b)
            .arg(seconds.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the swapper starts");
        Attacker { child, _bin: bin }
    }

    /// Waits for the attacker to end; (exchanges that worked, exchanges refused).
    pub fn finish(self) -> (u64, u64) {
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "the swapper failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        (counts.next().unwrap(), counts.next().unwrap())
    }
}
