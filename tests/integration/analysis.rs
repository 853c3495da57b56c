//! Local analysis: hardening checks like checksec's, on binaries the test builds with and
//! without hardening flags, and the `analyze` command.

use foundry_gpu::analysis::local::analyze;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    char buffer[64];
    strcpy(buffer, argc > 1 ? argv[1] : "https://example.org/ at /etc/foundry.conf");
    printf("%s\n", buffer);
    return 0;
}
"#;

fn build(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let c = dir.join("p.c");
    std::fs::write(&c, PROGRAM).unwrap();
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success(), "gcc {flags:?}");
    out
}

#[test]
fn hardening_flags_are_seen_as_checksec_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let hardened = build(
        dir.path(),
        "hardened",
        &[
            "-O2",
            "-fstack-protector-strong",
            "-D_FORTIFY_SOURCE=2",
            "-fPIE",
            "-pie",
            "-Wl,-z,relro,-z,now",
            "-Wl,-rpath,/opt/foundry/lib",
            "-Wl,--enable-new-dtags",
        ],
    );
    let weak = build(
        dir.path(),
        "weak",
        &[
            "-O0",
            "-fno-stack-protector",
            "-U_FORTIFY_SOURCE",
            "-fno-PIE",
            "-no-pie",
            "-Wl,-z,norelro",
            "-Wl,-z,execstack",
            "-Wl,-rpath,/opt/old",
            "-Wl,--disable-new-dtags",
        ],
    );
    let h = analyze(&std::fs::read(&hardened).unwrap())
        .elf
        .unwrap()
        .hardening
        .unwrap();
    assert_eq!(
        (h.relro, h.stack_canary, h.nx, h.pie, h.fortify),
        ("full", true, true, "pie", true),
        "{h:?}"
    );
    assert_eq!(h.runpath.as_deref(), Some("/opt/foundry/lib"));
    assert!(h.libraries.contains(&"libc.so.6".to_string()));
    assert!(h.fortified_functions.iter().any(|f| f.contains("_chk")));
    assert!(!h.stripped);
    let w = analyze(&std::fs::read(&weak).unwrap())
        .elf
        .unwrap()
        .hardening
        .unwrap();
    assert_eq!(
        (w.relro, w.stack_canary, w.nx, w.pie, w.fortify),
        ("none", false, false, "no", false),
        "{w:?}"
    );
    assert_eq!(w.rpath.as_deref(), Some("/opt/old"));
    assert!(Command::new("strip").arg(&weak).status().unwrap().success());
    assert!(
        analyze(&std::fs::read(&weak).unwrap())
            .elf
            .unwrap()
            .hardening
            .unwrap()
            .stripped
    );
    // Strings: the URL and path the program carries.
    let a = analyze(&std::fs::read(&hardened).unwrap());
    assert_eq!(a.file_type, "elf");
    assert!(a
        .strings
        .urls
        .iter()
        .any(|u| u.starts_with("https://example.org")));
    assert!(a.strings.paths.iter().any(|p| p == "/etc/foundry.conf"));
    // The same bytes give the same analysis.
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&analyze(&std::fs::read(&hardened).unwrap())).unwrap()
    );
}

#[test]
fn analyze_command_says_why_the_llm_part_is_missing() {
    let analyze = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .args(["analyze", "/usr/bin/ls", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // Nothing listens on the discard port.
    let v = analyze(&["--llm-url", "127.0.0.1:9", "--no-llm-cache"]);
    assert_eq!(v["analysis"]["file_type"], "elf");
    assert!(v["analysis"]["elf"]["hardening"]["relro"].is_string());
    assert_eq!(v["semantic"]["llm"]["status"], "unavailable");
    assert!(v["semantic"]["llm"]["reason"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1:9"));
    assert!(v["semantic"].get("summary").is_none());
    assert!(v["semantic"]["analysis"]["risk"].is_string());
    let off = analyze(&["--no-llm"]);
    assert_eq!(off["semantic"]["llm"]["status"], "off");
}
