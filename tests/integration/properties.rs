//! Property tests (proptest): a fold unfolds to the same bytes for any input, size and side,
//! through the real files, and the GPU leg writes the CPU's files byte for byte; a diff's patch turns A into B for any edit; a manifest
//! merge keeps every entry it did not place.

use crate::harness::{gpu, gpu_leg};
use foundry_gpu::fold::{self, FoldOptions, OutputTarget};
use foundry_gpu::map::{merge_manifest, Tile};
use foundry_gpu::Backend;
use proptest::prelude::*;
use std::path::Path;

/// Folds `data` through the real files on each backend: every backend writes the same files,
/// byte for byte, and every output unfolds to `data`.
fn fold_round_trip(
    backends: &[&Backend],
    data: &[u8],
    max_side_order: u32,
    texture_order: Option<u32>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.bin");
    std::fs::write(&input, data).unwrap();
    let max_side = 1u32 << max_side_order;
    let opts = FoldOptions {
        max_side,
        texture_size: texture_order.map(|o| (1u32 << o).min(max_side)),
        ..FoldOptions::default()
    };
    let mut folded_files: Option<Vec<Vec<u8>>> = None;
    for &backend in backends {
        let out = dir.path().join(backend.label());
        let report = fold::fold_file(
            backend,
            &input,
            &OutputTarget::Directory(out.clone()),
            &opts,
            &foundry_gpu::progress::Silent,
        )
        .unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        match &folded_files {
            None => folded_files = Some(bytes),
            Some(first) => {
                prop_assert!(first == &bytes, "{} differs from the CPU", backend.label())
            }
        }
        let readable = if report.parts > 1 {
            vec![out.join("input.bin.parts.json")]
        } else {
            vec![out.join("input.bin.brick"), out.join("input.bin.rts.png")]
        };
        for path in readable {
            let (decoded, _) = fold::decode_bytes(backend, &path).unwrap();
            prop_assert!(
                decoded == data,
                "{} does not unfold to the input",
                path.display()
            );
        }
    }
    Ok(())
}

/// One edit: where (an index into B as it is then), how many bytes go, which bytes come.
type Edit = (prop::sample::Index, usize, Vec<u8>);

/// Applies `edits` to `a` to make B, then diffs and patches on `backend`: the patch rebuilds B.
fn diff_patch_round_trip(backend: &Backend, a: &[u8], edits: &[Edit]) -> Result<(), TestCaseError> {
    let mut b = a.to_vec();
    for (at, remove, insert) in edits {
        let start = if b.is_empty() { 0 } else { at.index(b.len()) };
        let end = (start + remove).min(b.len());
        b.splice(start..end, insert.iter().copied());
    }
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    std::fs::write(&a_path, a).unwrap();
    std::fs::write(&b_path, &b).unwrap();
    let out = dir.path().join("diff");
    foundry_gpu::diff::diff(backend, &a_path, &b_path, &out, &Default::default()).unwrap();
    let rebuilt = dir.path().join("b-rebuilt.bin");
    foundry_gpu::diff::apply_patch(backend, &a_path, &out.join("a-to-b.patch"), &rebuilt).unwrap();
    prop_assert!(
        std::fs::read(&rebuilt).unwrap() == b,
        "patch on {} did not rebuild B",
        backend.label()
    );
    Ok(())
}

const CASES: u32 = 24;

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0usize..3000,
            prop::collection::vec(any::<u8>(), 0..3000),
        ),
        0..6,
    )
}

gpu_leg! {
    fn gpu_fold_then_unfold_gives_the_cpu_files_byte_for_byte() {
        proptest!(
            ProptestConfig { cases: CASES, ..ProptestConfig::default() },
            |(
                data in prop::collection::vec(any::<u8>(), 0..40_000),
                max_side_order in 4u32..9,
                texture_order in prop::option::of(0u32..9),
            )| {
                fold_round_trip(&[&Backend::Cpu, gpu()], &data, max_side_order, texture_order)?;
            }
        );
    }
}

gpu_leg! {
    fn gpu_diff_patch_turns_a_into_b_for_any_edit() {
        proptest!(
            ProptestConfig { cases: CASES, ..ProptestConfig::default() },
            |(a in prop::collection::vec(any::<u8>(), 0..60_000), edits in edits())| {
                diff_patch_round_trip(gpu(), &a, &edits)?;
            }
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn fold_then_unfold_gives_the_same_bytes(
        data in prop::collection::vec(any::<u8>(), 0..40_000),
        max_side_order in 4u32..9,
        texture_order in prop::option::of(0u32..9),
    ) {
        fold_round_trip(&[&Backend::Cpu], &data, max_side_order, texture_order)?;
    }

    #[test]
    fn a_diff_patch_turns_a_into_b_for_any_edit(
        a in prop::collection::vec(any::<u8>(), 0..60_000),
        edits in edits(),
    ) {
        diff_patch_round_trip(&Backend::Cpu, &a, &edits)?;
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
