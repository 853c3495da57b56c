//! Property tests (proptest): a fold unfolds to the same bytes for any input, size and side on
//! both backends, through the real files; a diff's patch turns A into B for any edit; a manifest
//! merge keeps every entry it did not place.

use crate::harness::backends;
use foundry_gpu::fold::{self, FoldOptions, OutputTarget};
use foundry_gpu::map::{merge_manifest, Tile};
use proptest::prelude::*;
use std::path::Path;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn fold_then_unfold_gives_the_same_bytes_on_both_backends(
        data in prop::collection::vec(any::<u8>(), 0..40_000),
        max_side_order in 4u32..9,
        texture_order in prop::option::of(0u32..9),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.bin");
        std::fs::write(&input, &data).unwrap();
        let max_side = 1u32 << max_side_order;
        let opts = FoldOptions {
            max_side,
            texture_size: texture_order.map(|o| (1u32 << o).min(max_side)),
            ..FoldOptions::default()
        };
        let mut folded_files: Option<Vec<Vec<u8>>> = None;
        for backend in backends() {
            let out = dir.path().join(backend.label());
            let report = fold::fold_file(
                backend,
                &input,
                &OutputTarget::Directory(out.clone()),
                &opts,
                &foundry_gpu::progress::Silent,
            )
            .unwrap();
            let mut files: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).collect();
            files.sort();
            let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            // Both backends write the same files, byte for byte.
            match &folded_files {
                None => folded_files = Some(bytes),
                Some(first) => prop_assert!(first == &bytes, "{} differs from the CPU", backend.label()),
            }
            let readable = if report.parts > 1 {
                vec![out.join("input.bin.parts.json")]
            } else {
                vec![out.join("input.bin.brick"), out.join("input.bin.rts.png")]
            };
            for path in readable {
                let (decoded, _) = fold::decode_bytes(backend, &path).unwrap();
                prop_assert!(decoded == data, "{} does not unfold to the input", path.display());
            }
        }
    }

    #[test]
    fn a_diff_patch_turns_a_into_b_for_any_edit(
        a in prop::collection::vec(any::<u8>(), 0..60_000),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..3000, prop::collection::vec(any::<u8>(), 0..3000)), 0..6),
    ) {
        let mut b = a.clone();
        for (at, remove, insert) in &edits {
            let start = if b.is_empty() { 0 } else { at.index(b.len()) };
            let end = (start + remove).min(b.len());
            b.splice(start..end, insert.iter().copied());
        }
        let dir = tempfile::tempdir().unwrap();
        let (a_path, b_path) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        std::fs::write(&a_path, &a).unwrap();
        std::fs::write(&b_path, &b).unwrap();
        for backend in backends() {
            let out = dir.path().join(format!("diff-{}", backend.label()));
            foundry_gpu::diff::diff(backend, &a_path, &b_path, &out, &Default::default()).unwrap();
            let rebuilt = dir.path().join(format!("b-{}.bin", backend.label()));
            foundry_gpu::diff::apply_patch(backend, &a_path, &out.join("a-to-b.patch"), &rebuilt).unwrap();
            prop_assert!(std::fs::read(&rebuilt).unwrap() == b, "patch on {} did not rebuild B", backend.label());
        }
    }

    #[test]
    fn a_manifest_merge_keeps_every_entry_it_did_not_place(
        foreign in prop::collection::btree_map("[-0-9,a-z]{1,8}", (any::<u32>(), "[a-z.]{0,12}"), 0..20),
        rels in prop::collection::vec("[a-z/]{1,12}", 1..10),
    ) {
        let manifest: serde_json::Map<String, serde_json::Value> = foreign
            .iter()
            .map(|(k, (t, brick))| (k.clone(), serde_json::json!({"brick": brick, "timestamp": t, "by": "someone else"})))
            .collect();
        let text = serde_json::to_string(&manifest).unwrap();
        let png = Path::new("x.rts.png");
        let tiles: Vec<Tile> = rels
            .iter()
            .map(|rel| Tile { root: "/r", rel, rts_png: png, brick: None, version: None })
            .collect();
        let merged = merge_manifest((Path::new("m.json"), Some(&text)), (Path::new("p.json"), None), &tiles, 1.0).unwrap();
        let placed: std::collections::HashSet<&str> = merged.placed.iter().map(|(_, k)| k.as_str()).collect();
        for (key, value) in &manifest {
            if !placed.contains(key.as_str()) {
                prop_assert_eq!(merged.manifest.get(key), Some(value));
            }
        }
        let newest = manifest.values().filter_map(|v| v["timestamp"].as_f64()).fold(1.0, f64::max);
        prop_assert!(merged.timestamp > newest || manifest.is_empty() && merged.timestamp >= 1.0);
    }
}
