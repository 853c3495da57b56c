//! `diff` and `patch` as users run them: files, bricks of them, tree snapshots; the patch
//! rebuilds B bit for bit, insertions do not smear into everything after them, and wrong inputs
//! are refused with nothing written.

use crate::harness::{foundry, foundry_json as ok_json, gpu_leg, s, sample_bytes};
use serde_json::Value;
use std::path::Path;

fn total(report: &Value, kind: &str) -> u64 {
    report["totals"][kind].as_u64().unwrap()
}

/// Diffs `a` and `b` into `out`, checks the patch rebuilds `b_bytes`, returns the report.
fn diff_and_patch(a: &Path, b: &Path, out: &Path, b_bytes: &[u8], backend: &str) -> Value {
    let report = ok_json(&["diff", s(a), s(b), "-o", s(out), "--backend", backend]);
    let from_file: Value =
        serde_json::from_slice(&std::fs::read(out.join("diff.json")).unwrap()).unwrap();
    assert_eq!(from_file, report);
    let png = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out.join("delta.png")).unwrap(),
    ))
    .read_info()
    .unwrap();
    assert!(png.info().width >= 16);
    let rebuilt = out.join("rebuilt");
    ok_json(&[
        "patch",
        s(a),
        s(&out.join("a-to-b.patch")),
        "-o",
        s(&rebuilt),
    ]);
    assert!(
        std::fs::read(&rebuilt).unwrap() == b_bytes,
        "patch reproduces B bit for bit"
    );
    report
}

#[test]
fn an_insertion_is_reported_as_one_and_the_patch_rebuilds_b() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = sample_bytes(2 << 20, 7);
    let mut b_bytes = a_bytes[..500_000].to_vec();
    b_bytes.extend(sample_bytes(3000, 99).iter().map(|b| b ^ 0x5a));
    b_bytes.extend_from_slice(&a_bytes[500_000..]);
    b_bytes[1_500_000] ^= 0xff;
    let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let report = diff_and_patch(&a, &b, &dir.path().join("d"), &b_bytes, "cpu");
    // Position by position almost everything after the insertion differs; by content it does not.
    assert!(report["aligned"]["changed_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(
        total(&report, "inserted") >= 3000 && total(&report, "inserted") < 20_000,
        "{report}"
    );
    assert_eq!(total(&report, "changed"), 1);
    assert_eq!(total(&report, "deleted"), 0);
    assert!(
        report["totals"]["percent_of_b_changed_or_inserted"]
            .as_f64()
            .unwrap()
            < 1.0
    );
    let inserted: Vec<&Value> = report["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "inserted")
        .collect();
    assert!(!inserted.is_empty());
    assert!(inserted.iter().all(|r| {
        let (start, end) = (r["b"][0].as_u64().unwrap(), r["b"][1].as_u64().unwrap());
        start <= 503_000 && end >= 500_000
    }));
}

#[test]
fn moved_content_is_reported_and_coloured() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = sample_bytes(1 << 20, 3);
    let mut b_bytes = a_bytes[700_000..].to_vec();
    b_bytes.extend_from_slice(&a_bytes[..700_000]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let report = diff_and_patch(&a, &b, &dir.path().join("d"), &b_bytes, "cpu");
    assert!(total(&report, "moved") > 250_000, "{}", report["totals"]);
    // A rotation deletes nothing; only chunks cut at the seam may differ.
    assert!(total(&report, "deleted") < 20_000, "{}", report["totals"]);
    // The moved colour is in the delta image.
    let mut reader = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.path().join("d/delta.png")).unwrap(),
    ))
    .read_info()
    .unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut rgba).unwrap();
    let moved = foundry_gpu::diff::preview::MOVED_COLOUR;
    let purple = rgba
        .chunks_exact(4)
        .filter(|p| p[0] > 0x80 && p[2] > 0xc0 && p[1] < 0x80)
        .count();
    assert!(purple > 1000, "moved pixels tinted {moved:?}: {purple}");
}

/// A folded as a `.brick` and B (ten bytes changed) as an `.rts.png`, on the CPU.
fn folded_pair() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    Vec<u8>,
) {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = sample_bytes(300_000, 5);
    let mut b_bytes = a_bytes.clone();
    b_bytes[123_456..123_466].copy_from_slice(b"0123456789");
    for (name, bytes) in [("a", &a_bytes), ("b", &b_bytes)] {
        let src = dir.path().join(format!("{name}.bin"));
        std::fs::write(&src, bytes).unwrap();
        ok_json(&[
            "fold",
            s(&src),
            "-o",
            s(&dir.path().join(name)),
            "--backend",
            "cpu",
        ]);
    }
    let a = dir.path().join("a/a.bin.brick");
    let b = dir.path().join("b/b.bin.rts.png");
    (dir, a, b, b_bytes)
}

#[test]
fn bricks_and_rts_png_compare_by_the_bytes_they_hold() {
    let (dir, a, b, b_bytes) = folded_pair();
    let cpu = diff_and_patch(&a, &b, &dir.path().join("cpu"), &b_bytes, "cpu");
    assert_eq!(cpu["a"]["kind"], "brick");
    assert_eq!(cpu["b"]["kind"], "rts_png");
    assert_eq!(cpu["aligned"]["changed_blocks"], 1);
    let a_bytes = sample_bytes(300_000, 5);
    let differing = a_bytes.iter().zip(&b_bytes).filter(|(x, y)| x != y).count() as u64;
    assert_eq!(cpu["difference"]["bytes_differ"], differing);
    assert_eq!(total(&cpu, "changed"), differing);
}

gpu_leg! {
    fn gpu_diff_of_bricks_and_rts_png_matches_the_cpu() {
        let (dir, a, b, b_bytes) = folded_pair();
        let cpu = diff_and_patch(&a, &b, &dir.path().join("cpu"), &b_bytes, "cpu");
        let on_gpu = diff_and_patch(&a, &b, &dir.path().join("gpu"), &b_bytes, "gpu");
        assert_eq!(
            on_gpu["aligned"], cpu["aligned"],
            "GPU and CPU count the same blocks"
        );
        assert_eq!(on_gpu["ranges"], cpu["ranges"]);
        assert_eq!(on_gpu["difference"], cpu["difference"]);
        assert_eq!(
            std::fs::read(dir.path().join("gpu/a-to-b.patch")).unwrap(),
            std::fs::read(dir.path().join("cpu/a-to-b.patch")).unwrap()
        );
    }
}

#[test]
fn snapshots_report_files_added_removed_and_changed_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2) = (dir.path().join("t1"), dir.path().join("t2"));
    for t in [&t1, &t2] {
        std::fs::create_dir_all(t.join("sub")).unwrap();
        std::fs::write(t.join("same.txt"), "unchanged text\n".repeat(100)).unwrap();
        std::fs::write(t.join("sub/data.bin"), sample_bytes(50_000, 1)).unwrap();
    }
    std::fs::write(t1.join("gone.txt"), "removed later").unwrap();
    std::fs::write(t2.join("new.txt"), "added later").unwrap();
    let mut changed = sample_bytes(50_000, 1);
    changed[40_000] ^= 1;
    std::fs::write(t2.join("sub/data.bin"), &changed).unwrap();
    // Both snapshots name their root "tree" so paths line up.
    for (t, out) in [(&t1, "s1"), (&t2, "s2")] {
        let root = dir.path().join(out).join("tree");
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        std::fs::rename(t, &root).unwrap();
        ok_json(&[
            "snapshot",
            s(&root),
            "-o",
            s(&dir.path().join(format!("{out}-snap"))),
            "--backend",
            "cpu",
        ]);
    }
    let s2 = dir.path().join("s2-snap");
    let b_bytes = {
        let out = dir.path().join("s2.bytes");
        ok_json(&["unfold", s(&s2.join("district.parts.json")), "-o", s(&out)]);
        std::fs::read(out).unwrap()
    };
    let report = diff_and_patch(
        &dir.path().join("s1-snap"),
        &s2,
        &dir.path().join("d"),
        &b_bytes,
        "cpu",
    );
    let m = &report["members"];
    assert_eq!(m["added"], serde_json::json!(["tree/new.txt"]));
    assert_eq!(m["removed"], serde_json::json!(["tree/gone.txt"]));
    assert_eq!(m["changed"], serde_json::json!(["tree/sub/data.bin"]));
    assert_eq!(m["unchanged"], 1);
    let region = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "tree/sub/data.bin")
        .unwrap();
    assert_eq!(region["different_bytes"], 1);
}

#[test]
fn a_patch_meets_only_its_own_a_and_a_broken_patch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, other) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("other"),
    );
    std::fs::write(&a, sample_bytes(20_000, 1)).unwrap();
    std::fs::write(&b, sample_bytes(20_000, 2)).unwrap();
    std::fs::write(&other, sample_bytes(20_000, 3)).unwrap();
    ok_json(&["diff", s(&a), s(&b), "-o", s(&dir.path().join("d"))]);
    let patch = dir.path().join("d/a-to-b.patch");
    let out = dir.path().join("never");
    let wrong_a = foundry(&["patch", s(&other), s(&patch), "-o", s(&out)]);
    assert_eq!(wrong_a.status.code(), Some(2));
    let message = String::from_utf8_lossy(&wrong_a.stderr);
    assert!(
        message.contains("other") && message.contains("is not the A"),
        "{message}"
    );
    let mut bytes = std::fs::read(&patch).unwrap();
    bytes.truncate(bytes.len() - 3);
    let broken = dir.path().join("broken.patch");
    std::fs::write(&broken, bytes).unwrap();
    let o = foundry(&["patch", s(&a), s(&broken), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("broken.patch"));
    assert!(!out.exists(), "nothing is written on refusal");
    let o = foundry(&["diff", s(&a), s(dir.path()), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("district.json"));
}

#[test]
fn a_patch_of_code_that_moved_everywhere_is_compressed_against_a_and_applies() {
    // A is noise; B is A's 1 KiB blocks in reverse order, then 4 bytes changed: no
    // content-defined chunk lines up, so 9 MiB go over as literals, each of them somewhere in A.
    let dir = tempfile::tempdir().unwrap();
    let (a, b, other) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("other"),
    );
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let a_bytes: Vec<u8> = (0..9 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut b_bytes: Vec<u8> = a_bytes.rchunks(1024).flatten().copied().collect();
    b_bytes[4 << 20..(4 << 20) + 4].copy_from_slice(b"EDIT");
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let out = dir.path().join("d");
    let report = diff_and_patch(&a, &b, &out, &b_bytes, "cpu");
    let patch_bytes = report["patch_bytes"].as_u64().unwrap();
    assert!(
        patch_bytes < (b_bytes.len() / 20) as u64,
        "{patch_bytes} bytes for 9 MiB of reordered A"
    );
    // --fast-patch (what a watch writes) compresses the literals alone: noise stays its size.
    let fast = dir.path().join("fast");
    let report = ok_json(&["diff", s(&a), s(&b), "-o", s(&fast), "--fast-patch"]);
    assert!(report["patch_bytes"].as_u64().unwrap() > b_bytes.len() as u64);
    let rebuilt = fast.join("rebuilt");
    ok_json(&[
        "patch",
        s(&a),
        s(&fast.join("a-to-b.patch")),
        "-o",
        s(&rebuilt),
    ]);
    assert!(std::fs::read(&rebuilt).unwrap() == b_bytes);
    // The data section needs this very A: another of the same size is named, nothing written.
    let mut other_bytes = a_bytes.clone();
    other_bytes[100] ^= 1;
    std::fs::write(&other, &other_bytes).unwrap();
    let never = dir.path().join("never");
    let o = foundry(&[
        "patch",
        s(&other),
        s(&out.join("a-to-b.patch")),
        "-o",
        s(&never),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let message = String::from_utf8_lossy(&o.stderr);
    assert!(message.contains("is not the A"), "{message}");
    assert!(!never.exists());
}

#[test]
fn a_diff_of_snapshots_is_as_private_as_their_district_files() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let mut snapshots = Vec::new();
    for (name, content) in [("s1", "first secret\n"), ("s2", "second secret\n")] {
        let tree = dir.path().join(name).join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let secret = tree.join("secret.txt");
        std::fs::write(&secret, content.repeat(50)).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let snap = dir.path().join(format!("{name}-snap"));
        ok_json(&["snapshot", s(&tree), "-o", s(&snap), "--backend", "cpu"]);
        // The folder is as the umask leaves it; the district itself is private.
        assert_eq!(mode(&snap.join("district.json")), 0o600);
        assert_ne!(
            mode(&snap) & 0o044,
            0,
            "a readable folder, or the test shows nothing"
        );
        snapshots.push(snap);
    }
    let out = dir.path().join("d");
    ok_json(&[
        "diff",
        s(&snapshots[0]),
        s(&snapshots[1]),
        "-o",
        s(&out),
        "--backend",
        "cpu",
    ]);
    for name in ["delta.png", "a-to-b.patch", "diff.json"] {
        assert_eq!(mode(&out.join(name)), 0o600, "{name}");
    }
    let rebuilt = dir.path().join("rebuilt");
    ok_json(&[
        "patch",
        s(&snapshots[0]),
        s(&out.join("a-to-b.patch")),
        "-o",
        s(&rebuilt),
    ]);
    assert_eq!(mode(&rebuilt), 0o600);
}

/// Offsets (from 0) where `a` and `b` differ, as the real `cmp -l` lists them.
fn cmp_offsets(a: &Path, b: &Path) -> Vec<u64> {
    let o = std::process::Command::new("cmp")
        .arg("-l")
        .args([a, b])
        .output()
        .unwrap();
    // 0: identical, 1: they differ; anything else is trouble (cmp's EOF note goes to stderr).
    assert!(matches!(o.status.code(), Some(0 | 1)), "{o:?}");
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            line.split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                - 1
        })
        .collect()
}

/// Every ELF section with bytes in the file: name and file range, read with `object`.
fn section_ranges(bytes: &[u8]) -> Vec<(String, u64, u64)> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).unwrap();
    file.sections()
        .filter_map(|s| {
            let (start, len) = s.file_range()?;
            (len > 0).then(|| (s.name().unwrap().to_string(), start, start + len))
        })
        .collect()
}

/// Diffs `a` and `b` and checks every count against the real `cmp -l`: the headline, and each
/// section's count against cmp's offsets inside that section's range. Returns the report.
fn assert_counts_match_cmp(a: &Path, b: &Path, out: &Path) -> Value {
    let b_bytes = std::fs::read(b).unwrap();
    assert_eq!(
        std::fs::metadata(a).unwrap().len(),
        b_bytes.len() as u64,
        "equally long sides, or cmp -l is not the whole story"
    );
    let report = diff_and_patch(a, b, out, &b_bytes, "cpu");
    let offsets = cmp_offsets(a, b);
    let d = &report["difference"];
    assert_eq!(d["bytes_differ"], offsets.len() as u64, "{d}");
    assert_eq!(d["differing_in_common"], offsets.len() as u64);
    assert_eq!(d["past_shorter_end"], 0);
    assert_eq!(total(&report, "changed"), offsets.len() as u64);
    let regions = report["regions"].as_array().unwrap();
    let sections = section_ranges(&b_bytes);
    assert_eq!(regions.len(), sections.len());
    for (region, (name, start, end)) in regions.iter().zip(&sections) {
        let in_range = offsets
            .iter()
            .filter(|&&o| (*start..*end).contains(&o))
            .count();
        assert_eq!(region["name"], name.as_str());
        assert_eq!(
            (region["start"].as_u64(), region["end"].as_u64()),
            (Some(*start), Some(*end))
        );
        assert_eq!(region["different_bytes"], in_range as u64, "{region}");
    }
    report
}

fn region<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no region {name}"))
}

const TWO_BUILDS: &str = r#"
#include <stdio.h>
int table[8] = {LIMIT, 2, 3, 4, 5, 6, 7, 8};
int main(int argc, char **argv) {
    (void)argv;
    printf("%d %d\n", table[argc % 8], argc * LIMIT);
    return 0;
}
"#;

#[test]
fn two_builds_of_one_program_count_exactly_the_bytes_cmp_finds() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("prog.c");
    std::fs::write(&source, TWO_BUILDS).unwrap();
    let build = |limit: u32| {
        let exe = dir.path().join(format!("prog-{limit}"));
        let o = std::process::Command::new("gcc")
            .args(["-O2", "-Wl,--build-id=none"])
            .arg(format!("-ffile-prefix-map={}=.", dir.path().display()))
            .arg(format!("-DLIMIT={limit}"))
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        exe
    };
    let (a, b) = (build(1_000_001), build(2_000_002));
    let report = assert_counts_match_cmp(&a, &b, &dir.path().join("d"));
    // The constant lives in .data and as an immediate in .text; .interp is the same path.
    assert!(
        region(&report, ".data")["different_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        region(&report, ".text")["different_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(region(&report, ".interp")["different_bytes"], 0);
    assert_eq!(region(&report, ".interp")["percent"], 0.0);
}

#[test]
fn ls_and_a_copy_patched_in_text_and_data_count_exactly_the_patched_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = std::fs::read("/usr/bin/ls").unwrap();
    let sections = section_ranges(&a_bytes);
    let range = |name: &str| {
        let (_, start, end) = sections.iter().find(|s| s.0 == name).unwrap();
        (*start as usize, *end as usize)
    };
    let mut b_bytes = a_bytes.clone();
    // Three bytes of .text spread over a few hundred bytes (one content chunk), two of .data.
    let (text, _) = range(".text");
    for at in [text + 1000, text + 1100, text + 1400] {
        b_bytes[at] ^= 0x5a;
    }
    let (data, data_end) = range(".data");
    for at in [data, data_end - 1] {
        b_bytes[at] ^= 0xff;
    }
    let a = dir.path().join("ls");
    let b = dir.path().join("ls-patched");
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let report = assert_counts_match_cmp(&a, &b, &dir.path().join("d"));
    assert_eq!(report["difference"]["bytes_differ"], 5);
    assert_eq!(region(&report, ".text")["different_bytes"], 3);
    assert_eq!(region(&report, ".data")["different_bytes"], 2);
    for r in report["regions"].as_array().unwrap() {
        if r["name"] != ".text" && r["name"] != ".data" {
            assert_eq!(r["different_bytes"], 0, "{r}");
        }
    }
    // Identical files: nothing differs anywhere.
    let same = assert_counts_match_cmp(&a, &a, &dir.path().join("same"));
    assert_eq!(same["difference"]["bytes_differ"], 0);
    assert_eq!(same["difference"]["percent"], 0.0);
}

#[test]
fn sides_of_different_lengths_count_the_common_bytes_and_the_length_difference() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = sample_bytes(100_000, 21);
    let mut b_bytes = a_bytes.clone();
    b_bytes[10] ^= 1;
    b_bytes[50_000] ^= 1;
    b_bytes.extend_from_slice(&[0; 1234]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let report = diff_and_patch(&a, &b, &dir.path().join("d"), &b_bytes, "cpu");
    let d = &report["difference"];
    assert_eq!(
        cmp_offsets(&a, &b).len(),
        2,
        "cmp -l counts the common bytes only"
    );
    assert_eq!(d["common_bytes"], 100_000);
    assert_eq!(d["differing_in_common"], 2);
    assert_eq!(d["past_shorter_end"], 1234);
    assert_eq!(d["bytes_differ"], 1236);
    assert_eq!(d["percent"], 1.22);
    assert_eq!(total(&report, "changed"), 2);
    assert_eq!(total(&report, "inserted"), 1234);
}

/// The RGBA pixels of a PNG and its width.
fn pixels(path: &Path) -> (Vec<u8>, usize) {
    let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgba).unwrap();
    (rgba, info.width as usize)
}

/// Pixels of `colour` (each channel within 48 of it: tinted cells mix in a little of the byte
/// colour) in the columns `columns` of a picture `width` wide.
fn count_colour(
    rgba: &[u8],
    width: usize,
    columns: std::ops::Range<usize>,
    colour: [u8; 3],
) -> usize {
    rgba.chunks_exact(4)
        .enumerate()
        .filter(|(i, p)| {
            columns.contains(&(i % width)) && p.iter().zip(colour).all(|(x, c)| x.abs_diff(c) <= 48)
        })
        .count()
}

#[test]
fn delta_png_rings_a_four_byte_edit_and_shows_deletions_on_a() {
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = sample_bytes(1 << 20, 21);
    // Four bytes changed, each unlike A's, and 100,000 bytes deleted further on.
    let mut b_bytes = a_bytes[..700_000].to_vec();
    b_bytes.extend_from_slice(&a_bytes[800_000..]);
    for k in 0..4 {
        b_bytes[300_000 + k] = !a_bytes[300_000 + k];
    }
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let out = dir.path().join("d");
    let report = ok_json(&[
        "diff",
        s(&a),
        s(&b),
        "-o",
        s(&out),
        "--backend",
        "cpu",
        "--preview-side",
        "256",
    ]);
    // The report is exact: one changed range of four bytes, one deleted range of 100,000.
    let changes: Vec<&Value> = report["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] != "unchanged")
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["kind"], "changed");
    assert_eq!(changes[0]["b"], serde_json::json!([300_000, 300_004]));
    assert_eq!(changes[1]["kind"], "deleted");
    assert_eq!(changes[1]["a"], serde_json::json!([700_000, 800_000]));
    assert_eq!(total(&report, "deleted"), 100_000);
    assert_eq!(total(&report, "changed"), 4);
    // A on the left, B on the right, 256 pixels each with 8 between.
    let (rgba, width) = pixels(&out.join("delta.png"));
    assert_eq!(width, 256 + 8 + 256);
    let changed = foundry_gpu::diff::preview::CHANGED_COLOUR;
    let deleted = foundry_gpu::diff::preview::DELETED_COLOUR;
    // Four bytes are a fraction of one 16-byte cell: the ring around them is what shows.
    let ring = count_colour(&rgba, width, 264..520, changed);
    assert!(ring >= 24, "the edit's ring on B: {ring} pixels");
    // Deletions are on A's side only.
    assert!(count_colour(&rgba, width, 0..256, deleted) > 100);
    assert_eq!(
        count_colour(&rgba[..width * 256 * 4], width, 264..520, deleted),
        0
    );
}

#[test]
fn delta_png_of_a_small_file_is_one_pixel_a_byte_not_the_default_side() {
    let dir = tempfile::tempdir().unwrap();
    // 10,000 bytes: a 128x128 curve holds them one byte a cell, so each side is 128 pixels
    // (not the default 1024, which would only repeat each pixel 8x8 times).
    let a_bytes = sample_bytes(10_000, 5);
    let mut b_bytes = a_bytes.clone();
    for k in 0..4 {
        b_bytes[6_000 + k] = !a_bytes[6_000 + k];
    }
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let out = dir.path().join("d");
    ok_json(&["diff", s(&a), s(&b), "-o", s(&out), "--backend", "cpu"]);
    let (rgba, width) = pixels(&out.join("delta.png"));
    assert_eq!(width, 128 + 8 + 128);
    // The edit still shows: its ring on B.
    let ring = count_colour(
        &rgba,
        width,
        136..264,
        foundry_gpu::diff::preview::CHANGED_COLOUR,
    );
    assert!(ring >= 16, "the edit's ring on B: {ring} pixels");
    // A side asked for that is smaller than the curve is kept.
    let small = dir.path().join("d64");
    ok_json(&[
        "diff",
        s(&a),
        s(&b),
        "-o",
        s(&small),
        "--backend",
        "cpu",
        "--preview-side",
        "64",
    ]);
    assert_eq!(pixels(&small.join("delta.png")).1, 64 + 8 + 64);
    // A few bytes still get 128 pixels a side, where the legend reads.
    let (tiny_a, tiny_b) = (dir.path().join("tiny_a"), dir.path().join("tiny_b"));
    std::fs::write(&tiny_a, b"seventeen bytes!!").unwrap();
    std::fs::write(&tiny_b, b"").unwrap();
    let tiny = dir.path().join("tiny");
    ok_json(&[
        "diff",
        s(&tiny_a),
        s(&tiny_b),
        "-o",
        s(&tiny),
        "--backend",
        "cpu",
    ]);
    assert_eq!(pixels(&tiny.join("delta.png")).1, 128 + 8 + 128);
}

/// `value` as an FGP2 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An FGP2 patch against `a` whose one data operation is `literal_len` bytes, its data section
/// a zstd frame of `section` (which need not match), recording `b_sha256` as B's.
fn one_data_op_patch(a: &[u8], literal_len: u64, section: &[u8], b_sha256: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut bytes = b"FGP2".to_vec();
    put_varint(&mut bytes, a.len() as u64);
    put_varint(&mut bytes, literal_len);
    bytes.extend_from_slice(&sha2::Sha256::digest(a)[..4]);
    bytes.extend_from_slice(&b_sha256[..16]);
    put_varint(&mut bytes, (literal_len << 1) | 1);
    bytes.push(1); // zstd alone
    bytes.extend_from_slice(&zstd::bulk::compress(section, 19).unwrap());
    bytes
}

#[test]
fn a_small_patch_of_much_literal_data_streams_it_through_bounded_memory() {
    use sha2::Digest;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let a_bytes = sample_bytes(1000, 8);
    let a = dir.path().join("a");
    std::fs::write(&a, &a_bytes).unwrap();
    // 512 MiB of literals in a patch of a few kilobytes. Under a 256 MiB address-space limit
    // it applies only if the literals pass through rather than being held.
    let literals = vec![0u8; 512 << 20];
    let patch_bytes = one_data_op_patch(
        &a_bytes,
        literals.len() as u64,
        &literals,
        &sha2::Sha256::digest(&literals),
    );
    assert!(patch_bytes.len() < 100_000, "{}", patch_bytes.len());
    let patch = dir.path().join("zeros.patch");
    std::fs::write(&patch, &patch_bytes).unwrap();
    drop(literals);
    let out = dir.path().join("b");
    let mut command = crate::harness::foundry_cmd();
    command.args(["patch", s(&a), s(&patch), "-o", s(&out)]);
    // SAFETY: setrlimit is async-signal-safe; the child sets its own limit before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256 << 20,
                rlim_max: 256 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = command.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 512 << 20);

    // Streamed, a data section that holds more or less than the operations take, or does not
    // decompress, is still the patch's error, and nothing is written.
    let b_sha = [0u8; 32];
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "long.patch",
            one_data_op_patch(&a_bytes, 100, &[7u8; 110], &b_sha),
            "holds more than the 100 bytes",
        ),
        (
            "short.patch",
            one_data_op_patch(&a_bytes, 100, &[7u8; 90], &b_sha),
            "holds 90 bytes, the operations take 100",
        ),
        (
            "garbled.patch",
            {
                let mut p = one_data_op_patch(&a_bytes, 100, &[7u8; 100], &b_sha);
                let last = p.len() - 1;
                p[last] ^= 0xff;
                p.truncate(last - 2);
                p
            },
            "does not decompress",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let never = dir.path().join("never");
        let o = foundry(&["patch", s(&a), s(&path), "-o", s(&never)]);
        let message = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {message}");
        assert!(
            message.contains(name) && message.contains(expected),
            "{name}: {message}"
        );
        assert!(!never.exists(), "{name}: nothing is written");
    }
}
