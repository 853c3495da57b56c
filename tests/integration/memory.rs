//! Process memory: a child the test starts writes a known pattern at a known address, and the
//! pattern is found where the region table says, in the district and in the mapping's brick.

use crate::harness::{gpu_leg, twin_legs};
use foundry_gpu::fold;
use foundry_gpu::process_memory::{snapshot_process, MemOptions};
use foundry_gpu::progress::Silent;
use foundry_gpu::Backend;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const CHILD: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    unsigned char *p = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 65536; i++) p[i] = (unsigned char)(i * 7 + 3);
    memcpy(p + 12345, "FOUNDRY-PATTERN-0123456789", 26);
    printf("%lx\n", (unsigned long)(p + 12345));
    fflush(stdout);
    char c;
    read(0, &c, 1); /* hold still until the test closes stdin */
    return 0;
}
"#;

const PATTERN: &[u8] = b"FOUNDRY-PATTERN-0123456789";

/// Builds the C program `source` as `dir/name` with the machine's gcc.
fn compile(dir: &std::path::Path, name: &str, source: &str) -> std::path::PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let exe = dir.join(name);
    assert!(Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .status()
        .unwrap()
        .success());
    exe
}

fn a_known_pattern_is_found_at_the_reported_place_on(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "child", CHILD);
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = u64::from_str_radix(line.trim(), 16).unwrap();

    let out = dir.path().join(format!("mem-{}", backend.label()));
    let opts = MemOptions {
        preview_side: 256,
        ..Default::default()
    };
    let report = snapshot_process(backend, child.id(), &out, &opts, &Silent).unwrap();
    assert!(report.read > 3 && report.read <= report.mappings);
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.regions).unwrap()).unwrap();
    let regions = table["regions"].as_array().unwrap();
    let region = regions
        .iter()
        .find(|r| r["start"].as_u64().unwrap() <= address && address < r["end"].as_u64().unwrap())
        .expect("a mapping holds the pattern");
    assert_eq!(region["perms"], "rw-p");
    let inside = (address - region["start"].as_u64().unwrap()) as usize;
    // In the district, at district_offset + (address - start).
    let at = region["district_offset"].as_u64().unwrap() as usize + inside;
    let whole = dir.path().join("whole.bin");
    fold::unfold_file(&Backend::Cpu, &report.parts_index, &whole, &Silent).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    assert_eq!(&bytes[at..at + PATTERN.len()], PATTERN);
    // `locate` names the mapping and the address of that district byte.
    let located = foundry_gpu::locate::locate(
        report.regions.parent().unwrap(),
        foundry_gpu::locate::Query::Offset(at as u64),
    )
    .unwrap();
    assert_eq!(located.kind, "memory");
    let mapping = located
        .holders
        .iter()
        .find(|h| h.kind == "mapping")
        .expect("a mapping holds the byte");
    assert_eq!(mapping.address, Some(address));
    assert_eq!(mapping.offset_inside, inside as u64);
    // And that address is that byte.
    let by_address = foundry_gpu::locate::locate(
        report.regions.parent().unwrap(),
        foundry_gpu::locate::Query::Address(address),
    )
    .unwrap();
    assert_eq!(by_address.start, at as u64);
    // In the mapping's own brick, at address - start.
    let brick = fold::decode(&Backend::Cpu, &out.join(region["brick"].as_str().unwrap())).unwrap();
    assert_eq!(&brick.bytes[inside..inside + PATTERN.len()], PATTERN);
    assert_eq!(brick.bytes[0], 3, "byte 0 of the mapping is 0*7+3");
    // Unreadable mappings ([vvar], guard pages) are listed with a reason, not read.
    let skipped: Vec<_> = regions
        .iter()
        .filter(|r| r.get("skipped").is_some())
        .collect();
    assert!(
        !skipped.is_empty(),
        "every process has an unreadable mapping"
    );
    assert!(skipped.iter().all(|r| r.get("district_offset").is_none()));
    if let Some(vvar) = regions.iter().find(|r| r["path"] == "[vvar]") {
        assert!(vvar["skipped"].as_str().unwrap().contains("EIO"), "{vvar}");
    }
    assert!(report.preview.unwrap().exists());
    child.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    child.wait().unwrap();
}

twin_legs!(a_known_pattern_is_found_at_the_reported_place_on: a_known_pattern_is_found_at_the_reported_place, a_known_pattern_is_found_at_the_reported_place_gpu);

#[test]
fn missing_and_forbidden_processes_are_clear_errors() {
    let err = snapshot_process(
        &Backend::Cpu,
        999_999_999,
        std::path::Path::new("/tmp/unused"),
        &MemOptions::default(),
        &Silent,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no process 999999999"), "{err}");
    assert!(err.is_input_error());
    // As an unprivileged user, PID 1 (root's) cannot be read: ptrace rules.
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let binary = env!("CARGO_BIN_EXE_foundry-gpu");
    let out = tempfile::tempdir().unwrap();
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", binary]);
        c
    } else {
        Command::new(binary)
    };
    let o = cmd
        .args(["mem", "1", "-o", out.path().join("m").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ptrace"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

const GROWING_CHILD: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    unsigned char *p = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(p, 1, 65536);
    printf("ready\n");
    fflush(stdout);
    /* Between the first and second snapshot: once the first is on disk, change a page and map
       a file. A first snapshot that never lands ends the child with status 3 after a minute,
       which the test reports, rather than hanging it. */
    for (int waited_ms = 0; access(argv[2], F_OK) != 0; waited_ms += 20) {
        if (waited_ms >= 60 * 1000) return 3;
        usleep(20 * 1000);
    }
    memcpy(p + 40000, "CHANGED", 7);
    int fd = open(argv[1], O_RDONLY);
    void *f = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    (void)f;
    char c;
    read(0, &c, 1);
    return 0;
}
"#;

#[test]
fn a_series_reports_a_new_mapping_and_a_changed_page() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "grow", GROWING_CHILD);
    let mapped = dir.path().join("mapped-later.dat");
    std::fs::write(&mapped, vec![7u8; 4096]).unwrap();
    let mut child = Command::new(&exe)
        .arg(&mapped)
        .arg(dir.path().join("series/000/regions.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let out = dir.path().join("series");
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(["mem", &child.id().to_string(), "-o", out.to_str().unwrap()])
        .args([
            "--every",
            "2.5s",
            "--count",
            "2",
            "--no-mapping-bricks",
            "--json",
        ])
        .args(["--backend", "cpu"])
        .output()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    let child_status = child.wait().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        child_status.success(),
        "the child gave up waiting 60 s for the first snapshot's regions.json: {child_status}"
    );
    let series: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(series["change_detection"]
        .as_str()
        .unwrap()
        .contains("page hashes"));
    let steps = series["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let appeared = steps[1]["mappings_appeared"].as_array().unwrap();
    assert!(
        appeared
            .iter()
            .any(|m| m.as_str().unwrap().ends_with("mapped-later.dat")),
        "{appeared:?}"
    );
    assert!(steps[1]["mappings_changed"].as_u64().unwrap() >= 1);
    let diff: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("diff-000-001/diff.json")).unwrap())
            .unwrap();
    assert_eq!(diff["a"]["kind"], "memory");
    assert!(out.join("series.json").exists() && out.join("001/regions.json").exists());
    // The step's headline is the exact byte-by-byte count of the two address spaces, counted
    // here again from the districts unfolded: differing bytes at the same offset, plus the
    // bytes past the shorter one's end.
    let district_bytes = |snapshot: &str| {
        let table: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(snapshot).join("regions.json")).unwrap(),
        )
        .unwrap();
        let parts = out.join(snapshot).join(table["district"].as_str().unwrap());
        let bytes = dir.path().join(format!("{snapshot}.bytes"));
        let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .args([
                "unfold",
                parts.to_str().unwrap(),
                "-o",
                bytes.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(bytes).unwrap()
    };
    let (before, after) = (district_bytes("000"), district_bytes("001"));
    let differing = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    let exact = (differing + before.len().abs_diff(after.len())) as u64;
    assert_eq!(steps[1]["bytes_differ"], exact, "{}", steps[1]);
    assert_eq!(diff["difference"]["bytes_differ"], exact);
    let longer = before.len().max(after.len()) as f64;
    let percent = (10_000.0 * exact as f64 / longer).round() / 100.0;
    assert_eq!(steps[1]["percent_different"], percent);
    // What the content alignment found is there beside it, the same as in diff.json.
    assert_eq!(steps[1]["content"], diff["totals"]);
}

gpu_leg! {
fn a_series_on_the_gpu_keeps_each_snapshot_on_the_device_for_the_next_diff() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let out = dir.path().join("series");
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(["mem", &child.id().to_string(), "-o", out.to_str().unwrap()])
        .args(["--every", "300ms", "--count", "3", "--no-mapping-bricks"])
        .args(["--json", "--backend", "gpu"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let series: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = series["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let size = |i: usize| steps[i]["bytes"].as_u64().unwrap();
    // The first diff uploads both snapshots; the second finds snapshot 1 still on the device.
    assert_eq!(steps[1]["device"]["a_resident"], false);
    assert_eq!(steps[1]["device"]["uploaded_bytes"], size(0) + size(1));
    assert_eq!(steps[2]["device"]["a_resident"], true, "{steps:?}");
    assert_eq!(steps[2]["device"]["uploaded_bytes"], size(2));
}
}

/// Mapping paths as a Python process has them: long folders, the library's name at the end.
fn long_mapping_paths() -> Vec<String> {
    let mut paths = vec![
        "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0".to_string(),
        "[heap]".to_string(),
    ];
    for (i, module) in ["_json", "_ssl", "_hashlib", "math", "select", "_socket"]
        .iter()
        .cycle()
        .take(197)
        .enumerate()
    {
        paths.push(format!(
            "/root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload/{module}{i}.cpython-311-x86_64-linux-gnu.so"
        ));
    }
    paths
}

#[test]
fn memory_map_legends_keep_library_names_and_stay_within_the_picture() {
    use foundry_gpu::format::legend::{label_chars, ROW_HEIGHT};
    use foundry_gpu::format::preview::{self, LabelledRange, PreviewImage};
    let paths = long_mapping_paths();
    // A library's several mappings (r--p, r-xp, rw-p) share one entry.
    let mut mapped = paths.clone();
    mapped.insert(1, paths[0].clone());
    mapped.insert(1, paths[0].clone());
    let ranges: Vec<LabelledRange> = mapped
        .iter()
        .enumerate()
        .map(|(i, p)| LabelledRange {
            label: p.clone(),
            start: i as u64 * 4096,
            end: (i as u64 + 1) * 4096,
        })
        .collect();
    for side in [128u32, 256, 1024] {
        let legend = preview::range_legend(&ranges, side);
        let (width, height) = (side as usize, legend.height());
        assert!(
            height <= width / 2,
            "side {side}: a {height}-pixel legend under a {side}-pixel picture"
        );
        assert!(
            legend.left_out > 0,
            "side {side}: 200 entries do not all fit"
        );
        let (kept, more) = legend.entries.split_at(legend.entries.len() - 1);
        assert_eq!(more[0].text, format!("+{} more", legend.left_out));
        assert_eq!(kept.len() + legend.left_out, paths.len());
        for e in &legend.entries {
            assert!(
                e.x + e.width <= width,
                "side {side}: {e:?} runs off the picture"
            );
            assert!(
                (e.row + 1) * ROW_HEIGHT <= height,
                "side {side}: {e:?} below the strip"
            );
        }
        let chars = label_chars(width, 1).min(40);
        for (entry, path) in kept.iter().zip(&paths) {
            let name = path.rsplit('/').next().unwrap();
            if name.len() <= chars {
                assert!(
                    entry.text.starts_with(name),
                    "side {side}: {:?} lost {name:?}",
                    entry.text
                );
            } else {
                // Too long for any row: its start is what is shown.
                assert!(
                    entry.text.starts_with(&name[..chars - 2]),
                    "{:?}",
                    entry.text
                );
            }
        }
        // The rendered picture grows by exactly that strip.
        let image = PreviewImage {
            width: side,
            height: side,
            rgba: vec![0; width * width * 4],
        };
        let drawn = preview::outline(image, foundry_gpu::kernels::Layout::Brick, 10, &ranges);
        assert_eq!(drawn.height as usize, width + height);
    }
    // Wide enough, the folder follows the name, cut from the left at a '/'.
    let wide = preview::range_legend(&ranges, 1024);
    assert_eq!(wide.entries[0].text, "libc.so.6 /usr/lib/x86_64-linux-gnu");
    assert_eq!(wide.entries[1].text, "libpython3.11.so.1.0 .../3.11.7/lib");
}
