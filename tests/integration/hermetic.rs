//! A fresh clone tests itself: no test, bench, script or CI step reads anything beside the repository.

use std::path::{Path, PathBuf};

/// Every text file below `dir`, skipping build outputs and git's own folder.
fn text_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if matches!(
            name.to_str(),
            Some("target" | ".git" | "corpus" | "artifacts")
        ) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => text_files(&path, found),
            Ok(t) if t.is_file() => found.push(path),
            _ => {}
        }
    }
}

#[test]
fn no_source_of_the_project_names_the_shared_folder_beside_the_clone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in two pieces so that this file does not name it.
    let beside = ["..", "/shared"].concat();
    let mut files = Vec::new();
    for top in ["tests", "benches", "scripts", "fuzz", "src", ".ci"] {
        text_files(&root.join(top), &mut files);
    }
    files.extend(["Cargo.toml", "build.rs"].map(|f| root.join(f)));
    assert!(
        files.len() > 50,
        "the walk found the sources: {}",
        files.len()
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|bytes| bytes.windows(beside.len()).any(|w| w == beside.as_bytes()))
                .unwrap_or(false)
        })
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these read outside the repository (copy what they need into tests/fixtures/): {offenders:?}"
    );
}

#[test]
fn the_fixtures_the_tests_use_live_in_the_repository() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in [
        "golden/hello.brick",
        "golden/hello.rts.png",
        "golden/hello.txt",
    ] {
        assert!(fixtures.join(name).is_file(), "tests/fixtures/{name}");
    }
    let tasks = std::fs::read_dir(fixtures.join("tasks")).unwrap().count();
    assert!(
        tasks >= 5,
        "historical task files in tests/fixtures/tasks: {tasks}"
    );
}
