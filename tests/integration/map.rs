//! Publishing to the infinite map: tiles land in queue/, the manifest keeps foreign entries,
//! every entry decodes, tiles stay put between runs, and timestamps only grow.

use crate::harness::foundry_json as foundry;
use foundry_gpu::fold;
use foundry_gpu::Backend;
use std::path::Path;
use std::process::Command;

fn manifest(builder: &Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(builder.join("map/manifest.json")).unwrap())
        .unwrap()
}

#[test]
fn publishing_merges_the_manifest_and_every_tile_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let builder = d.join("builder");
    std::fs::create_dir_all(builder.join("map")).unwrap();
    let foreign = r#"{"-10,-10": {"brick": "security.png", "timestamp": 1.5}, "0,0": {"brick": "home.rts.png", "timestamp": 2.5}}"#;
    std::fs::write(builder.join("map/manifest.json"), foreign).unwrap();
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha").unwrap();
    std::fs::write(tree.join("sub/b.bin"), [7u8; 5000]).unwrap();
    let b = builder.to_str().unwrap();

    let first = foundry(&[
        "snapshot",
        tree.to_str().unwrap(),
        "-o",
        d.join("snap").to_str().unwrap(),
        "--file-bricks",
        "--district-brick",
        "--publish",
        b,
    ]);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/hello.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args([
            "fold",
            hello.to_str().unwrap(),
            "-o",
            d.join("one").to_str().unwrap(),
            "--publish",
            b,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let m = manifest(&builder);
    assert_eq!(
        m["-10,-10"]["brick"], "security.png",
        "foreign entries are kept"
    );
    assert_eq!(m["0,0"]["timestamp"], 2.5);
    let ours: Vec<(&String, &serde_json::Value)> = m
        .iter()
        .filter(|(k, _)| *k != "-10,-10" && *k != "0,0")
        .collect();
    assert_eq!(
        ours.len(),
        2 + 1 + 1,
        "two files, one district part, hello.txt"
    );
    for (key, entry) in &ours {
        let (x, y) = key.split_once(',').unwrap();
        let (x, y): (i64, i64) = (x.parse().unwrap(), y.parse().unwrap());
        assert!(
            x >= 64 && y >= 64,
            "System District tiles stay away from (0,0) and (-10,-10): {key}"
        );
        assert!(entry["timestamp"].as_f64().unwrap() > 2.5);
        let file = builder.join("queue").join(entry["brick"].as_str().unwrap());
        let decoded = fold::decode(&Backend::Cpu, &file).unwrap();
        fold::verify(&file, &decoded.bytes, &decoded.recorded_sha256).unwrap();
        let brick = file.to_string_lossy().replace(".rts.png", ".brick");
        assert!(
            Path::new(&brick).exists(),
            "the .brick is kept beside the tile"
        );
    }

    // Again: same tiles, newer timestamps.
    let before = manifest(&builder);
    let second = foundry(&[
        "snapshot",
        tree.to_str().unwrap(),
        "-o",
        d.join("snap2").to_str().unwrap(),
        "--publish",
        b,
    ]);
    assert_eq!(
        first["published"]["placed"], second["published"]["placed"],
        "a file keeps its tile"
    );
    let after = manifest(&builder);
    for (key, place) in second["published"]["placed"].as_object().unwrap() {
        let k = place.as_str().unwrap();
        assert!(
            after[k]["timestamp"].as_f64().unwrap() > before[k]["timestamp"].as_f64().unwrap(),
            "{key} timestamp grows"
        );
    }

    // A malformed manifest is reported, never overwritten.
    std::fs::write(builder.join("map/manifest.json"), "{ not json").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args([
            "snapshot",
            tree.to_str().unwrap(),
            "-o",
            d.join("snap3").to_str().unwrap(),
            "--publish",
            b,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("manifest is not valid JSON"));
    assert_eq!(
        std::fs::read_to_string(builder.join("map/manifest.json")).unwrap(),
        "{ not json"
    );
}

#[test]
fn process_memory_publishes_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let builder = dir.path().join("b");
    let report = foundry(&[
        "mem",
        &child.id().to_string(),
        "-o",
        dir.path().join("m").to_str().unwrap(),
        "--publish",
        builder.to_str().unwrap(),
        // Process memory is published only when the operator says so.
        "--publish-private",
        "--preview-side",
        "64",
    ]);
    child.kill().unwrap();
    child.wait().unwrap();
    let placed = report["published"]["placed"].as_object().unwrap();
    assert!(!placed.is_empty());
    assert!(
        placed
            .keys()
            .all(|k| k.starts_with("mem:sleep/address-space.")),
        "{placed:?}"
    );
    let m = manifest(&builder);
    assert_eq!(m.len(), placed.len());
    for entry in m.values() {
        let file = builder.join("queue").join(entry["brick"].as_str().unwrap());
        assert!(fold::decode(&Backend::Cpu, &file).is_ok());
    }
}
