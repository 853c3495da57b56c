//! VCDIFF against Debian's real xdelta3: deltas `xdelta3 -e` makes (LZMA secondary compression,
//! its default, and without; many windows) are applied by `patch`, and `diff --vcdiff` writes
//! deltas `xdelta3 -d` applies. Without xdelta3 installed cargo counts these as ignored.

use crate::harness::{foundry, s, sample_bytes};
use std::path::Path;
use std::process::Command;

/// A and B: B with scattered overwrites, an insertion of text-like bytes and a deletion.
fn pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let a_bytes = sample_bytes(1 << 20, 31);
    let mut b_bytes = a_bytes[..600_000].to_vec();
    b_bytes.extend(b"inserted text, compressible: ".repeat(400));
    b_bytes.extend_from_slice(&a_bytes[650_000..]);
    for at in [10_000usize, 200_000, 900_000] {
        for byte in &mut b_bytes[at..at + 512] {
            *byte = !*byte;
        }
    }
    let (a, b) = (dir.join("a.bin"), dir.join("b.bin"));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    (a, b, b_bytes)
}

fn xdelta3(args: &[&str]) {
    let out = Command::new("xdelta3").args(args).output().unwrap();
    assert!(out.status.success(), "xdelta3 {args:?}: {out:?}");
}

#[test]
#[cfg_attr(foundry_no_xdelta3, ignore = "needs xdelta3: apt-get install xdelta3")]
fn patch_applies_what_xdelta3_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, b_bytes) = pair(dir.path());
    // Small windows (-W): each kind of section's LZMA2 stream runs on across 17 windows.
    for (name, extra) in [
        ("default.xd", vec![]),
        ("windows.xd", vec!["-W", "65536"]),
        ("plain.xd", vec!["-S", "none", "-W", "65536"]),
        ("best.xd", vec!["-9"]),
    ] {
        let delta = dir.path().join(name);
        let mut args = vec!["-e", "-f"];
        args.extend(extra);
        args.extend(["-s", s(&a), s(&b), s(&delta)]);
        xdelta3(&args);
        let out = dir.path().join(format!("{name}.b"));
        let o = foundry(&["patch", s(&a), s(&delta), "-o", s(&out), "--backend", "cpu"]);
        assert!(o.status.success(), "{name}: {o:?}");
        assert!(std::fs::read(&out).unwrap() == b_bytes, "{name}: B differs");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("verified"),
            "{name}: {o:?}"
        );
    }
    // A corrupted delta is refused, and nothing is written.
    let delta = dir.path().join("default.xd");
    let mut bytes = std::fs::read(&delta).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x55;
    let broken = dir.path().join("broken.xd");
    std::fs::write(&broken, &bytes).unwrap();
    let out = dir.path().join("broken.b");
    let o = foundry(&[
        "patch",
        s(&a),
        s(&broken),
        "-o",
        s(&out),
        "--backend",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(!out.exists());
    // The wrong A: the window checksums fail, nothing is written.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, sample_bytes(1 << 20, 32)).unwrap();
    let o = foundry(&[
        "patch",
        s(&other),
        s(&delta),
        "-o",
        s(&out),
        "--backend",
        "cpu",
    ]);
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    assert!(!out.exists());
}

#[test]
#[cfg_attr(foundry_no_xdelta3, ignore = "needs xdelta3: apt-get install xdelta3")]
fn xdelta3_applies_what_diff_vcdiff_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, b_bytes) = pair(dir.path());
    let d = dir.path().join("d");
    let o = foundry(&[
        "diff",
        s(&a),
        s(&b),
        "-o",
        s(&d),
        "--vcdiff",
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{o:?}");
    let rebuilt = dir.path().join("rebuilt");
    xdelta3(&[
        "-d",
        "-f",
        "-s",
        s(&a),
        s(&d.join("a-to-b.vcdiff")),
        s(&rebuilt),
    ]);
    assert!(std::fs::read(&rebuilt).unwrap() == b_bytes);
    // And our own reader takes it back, checksums verified.
    let again = dir.path().join("again");
    let o = foundry(&["patch", s(&a), s(&d.join("a-to-b.vcdiff")), "-o", s(&again)]);
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(&again).unwrap() == b_bytes);
}
