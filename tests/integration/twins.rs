//! CPU and GPU twins: every kernel gives the same bytes on both backends and matches the
//! reference fold from formats.md; the harness proves it can fail and that wgpu ran.

use crate::harness::{
    assert_same, compare_bytes, gpu, gpu_leg, gpu_small_chunks, reference_fold, sample_bytes,
};
use foundry_gpu::backend::kernel::KernelId;
use foundry_gpu::curve::order_for_cells;
use foundry_gpu::kernels::preview_stats::EntropyTable;
use foundry_gpu::{Backend, Layout};

const SIZES: [usize; 9] = [0, 1, 3, 4, 5, 4095, 65536, 65537, (3 << 20) + 7];

fn min_order(layout: Layout, len: usize) -> u32 {
    order_for_cells(layout.pixels_for(len as u64))
}

fn texture_bytes(texture: &[u32]) -> &[u8] {
    bytemuck::cast_slice(texture)
}

/// Folds and unfolds `data` on `backend`, checking against the CPU result.
fn check_backend(backend: &Backend, layout: Layout, data: &[u8], order: u32, cpu_texture: &[u32]) {
    let what = format!(
        "{} {layout:?} {} bytes order {order}",
        backend.label(),
        data.len()
    );
    let texture = backend.fold(layout, data, order).unwrap();
    assert_same(
        &format!("fold {what}"),
        texture_bytes(cpu_texture),
        texture_bytes(&texture),
    );
    let back = backend
        .unfold(layout, cpu_texture, order, data.len())
        .unwrap();
    assert_same(&format!("unfold {what}"), data, &back);
}

/// Every layout, size and order the twins are checked on, with the CPU texture of each.
fn for_each_fold_case(mut check: impl FnMut(Layout, &[u8], u32, &[u32])) {
    for layout in [Layout::Brick, Layout::Rts] {
        for &len in &SIZES {
            let data = sample_bytes(len, len as u64 + 1);
            // The smallest texture, and one with room to spare (padding everywhere).
            for order in [min_order(layout, len), min_order(layout, len) + 1] {
                let cpu = Backend::Cpu.fold(layout, &data, order).unwrap();
                let reference = reference_fold(&data, layout.bytes_per_pixel(), order);
                assert_same(
                    &format!("cpu {layout:?} {len} vs reference"),
                    &reference,
                    texture_bytes(&cpu),
                );
                let back = Backend::Cpu.unfold(layout, &cpu, order, len).unwrap();
                assert_same(&format!("cpu unfold {layout:?} {len}"), &data, &back);
                check(layout, &data, order, &cpu);
            }
        }
    }
}

#[test]
fn fold_unfold_cpu_matches_reference() {
    let mut cases = 0;
    for_each_fold_case(|_, _, _, _| cases += 1);
    assert_eq!(cases, 2 * SIZES.len() * 2);
}

gpu_leg! {
    fn gpu_fold_unfold_matches_cpu() {
        for_each_fold_case(|layout, data, order, cpu| check_backend(gpu(), layout, data, order, cpu));
    }
}

gpu_leg! {
fn gpu_streams_inputs_larger_than_one_chunk() {
    let gpu = gpu_small_chunks();
    let Backend::Gpu(device) = gpu else {
        panic!("gpu() must be a GPU backend")
    };
    assert_eq!(device.shape().max_output_bytes, 16 << 10);
    let data = sample_bytes((1 << 20) + 3, 7);
    for layout in [Layout::Brick, Layout::Rts] {
        let order = min_order(layout, data.len());
        let cpu = Backend::Cpu.fold(layout, &data, order).unwrap();
        let before = device.counters().dispatches;
        check_backend(gpu, layout, &data, order, &cpu);
        let dispatches = device.counters().dispatches - before;
        assert!(
            dispatches > 2 * 16,
            "{layout:?}: expected many chunks, got {dispatches} dispatches"
        );
    }
}
}

gpu_leg! {
fn gpu_leg_really_runs_on_wgpu() {
    // A device of its own, so other tests' dispatches do not move the counter.
    let own = Backend::select(foundry_gpu::BackendChoice::Gpu, &Default::default()).unwrap();
    let gpu = &own;
    let Backend::Gpu(device) = gpu else {
        panic!("gpu() must be a GPU backend")
    };
    assert!(
        gpu.label() == "gpu(sw)" || gpu.label() == "gpu(hw)",
        "label {}",
        gpu.label()
    );
    let adapter = gpu.adapter().expect("GPU backend has an adapter");
    assert!(!adapter.name.is_empty());
    eprintln!(
        "GPU leg runs on {} ({}) as {}",
        adapter.name,
        adapter.driver,
        gpu.label()
    );
    let before = device.counters().dispatches;
    gpu.fold(Layout::Brick, b"prove it", 2).unwrap();
    assert_eq!(
        device.counters().dispatches,
        before + 1,
        "one fold of one chunk is one dispatch"
    );
}
}

/// The byte comparison the twins rely on reports a perturbed texture, and where.
fn check_comparison_fails_when_one_byte_is_perturbed(backend: &Backend) {
    let data = sample_bytes(65537, 3);
    let order = min_order(Layout::Rts, data.len());
    {
        let reference = reference_fold(&data, 4, order);
        let mut texture = backend.fold(Layout::Rts, &data, order).unwrap();
        assert!(compare_bytes("untouched", &reference, texture_bytes(&texture)).is_ok());
        texture[12345] ^= 0x0000_0100;
        let message = compare_bytes("perturbed", &reference, texture_bytes(&texture)).unwrap_err();
        assert!(
            message.contains(&format!("byte {}", 12345 * 4 + 1)),
            "{message}"
        );
    }
}

#[test]
fn comparison_fails_when_one_byte_is_perturbed() {
    check_comparison_fails_when_one_byte_is_perturbed(&Backend::Cpu);
}

gpu_leg! {
    fn gpu_comparison_fails_when_one_byte_is_perturbed() {
        check_comparison_fails_when_one_byte_is_perturbed(gpu());
    }
}

/// Preview statistics on the CPU for every size and run length, then on each of `gpus`.
fn check_preview_stats(gpus: &[&Backend]) {
    for &len in &[0usize, 5, 4095, 100_000, (1 << 20) + 9] {
        let data = sample_bytes(len, 11);
        for run_len in [1usize, 4, 64, 256, 4096] {
            let runs = len.div_ceil(run_len).next_power_of_two().max(4);
            let table = EntropyTable::for_run_len(run_len);
            let cpu = Backend::Cpu
                .preview_stats(&data, run_len, runs, &table)
                .unwrap();
            assert_eq!(cpu.len(), runs);
            let counted: u64 = cpu.iter().map(|s| u64::from(s.bytes())).sum();
            assert_eq!(counted, len as u64, "every byte lands in exactly one run");
            for gpu in gpus {
                let on_gpu = gpu.preview_stats(&data, run_len, runs, &table).unwrap();
                assert_same(
                    &format!("preview_stats {len} bytes run {run_len}"),
                    bytemuck::cast_slice(&cpu),
                    bytemuck::cast_slice(&on_gpu),
                );
            }
        }
    }
}

#[test]
fn preview_stats_count_every_byte_once() {
    check_preview_stats(&[]);
}

gpu_leg! {
    fn gpu_preview_stats_twins_agree() {
        check_preview_stats(&[gpu(), gpu_small_chunks()]);
    }
}

/// Changed-block counts on the CPU against a plain count, then on each of `gpus`.
fn check_diff_blocks(gpus: &[&Backend]) {
    for &len in &[0usize, 3, 4097, 100_003, (1 << 20) + 9] {
        let a = sample_bytes(len, 21);
        let mut b = a.clone();
        // Edits at block edges, inside a word, and in the unaligned tail.
        for at in [0, 4095, 4096, len / 2, len.saturating_sub(1)] {
            if at < len {
                b[at] = b[at].wrapping_add(1);
            }
        }
        for block in [64usize, 4096, 65536] {
            let cpu = Backend::Cpu.diff_blocks(&a, &b, block).unwrap();
            assert_eq!(cpu.len(), len.div_ceil(block) * 2);
            let changed: u32 = cpu.iter().step_by(2).sum();
            assert_eq!(
                changed as usize,
                a.iter().zip(&b).filter(|(x, y)| x != y).count()
            );
            for gpu in gpus {
                let on_gpu = gpu.diff_blocks(&a, &b, block).unwrap();
                assert_same(
                    &format!("diff_blocks {len} bytes block {block}"),
                    bytemuck::cast_slice(&cpu),
                    bytemuck::cast_slice(&on_gpu),
                );
            }
        }
    }
}

#[test]
fn diff_blocks_count_exactly_and_the_comparison_can_fail() {
    check_diff_blocks(&[]);
    // The comparison itself can fail: one flipped count is reported where it is.
    let a = sample_bytes(10_000, 1);
    let cpu = Backend::Cpu.diff_blocks(&a, &a, 4096).unwrap();
    let mut wrong = cpu.clone();
    wrong[3] += 1;
    let message = compare_bytes(
        "diff_blocks",
        bytemuck::cast_slice(&cpu),
        bytemuck::cast_slice(&wrong),
    )
    .unwrap_err();
    assert!(message.contains("byte 12"), "{message}");
}

fn side(bytes: &[u8]) -> foundry_gpu::backend::SeriesSide<'_> {
    foundry_gpu::backend::SeriesSide {
        bytes,
        sha256: foundry_gpu::analysis::sha256(bytes),
    }
}

gpu_leg! {
    fn gpu_diff_blocks_twins_agree() {
        check_diff_blocks(&[gpu(), gpu_small_chunks()]);
    }
}

gpu_leg! {
fn a_series_on_the_gpu_uploads_each_snapshot_once_and_counts_like_the_cpu() {
    use foundry_gpu::backend::{BackendChoice, DiffSeries, GpuOptions};
    // Devices of this test's own, so their upload counts hold only its uploads: the device's
    // own chunk size, and 16 KiB chunks.
    let gpus: Vec<Backend> = [None, Some(16 << 10)]
        .into_iter()
        .map(|max_chunk_bytes| {
            Backend::select(
                BackendChoice::Gpu,
                &GpuOptions {
                    max_chunk_bytes,
                    ..GpuOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    // Snapshots of changing sizes: the common prefix ends mid-word (a 3-byte tail) and on a
    // block edge; the fourth side breaks the chain (its A is not the last B).
    let base = sample_bytes(300_003, 5);
    let mut snapshots = [base.clone(), base[..262_144].to_vec(), base.clone()];
    snapshots[2][70_000] ^= 0x40;
    snapshots[2][300_001] ^= 0x01;
    let stranger = sample_bytes(300_003, 6);
    let pairs = [(0, 1, true), (1, 2, true), (0, 2, false)];
    for g in &gpus {
        let Backend::Gpu(device) = g else {
            unreachable!()
        };
        let mut series = DiffSeries::default();
        for (step, &(a, b, chained)) in pairs.iter().enumerate() {
            let (x, y) = (&snapshots[a][..], &snapshots[b][..]);
            let before = device.counters().uploaded_bytes;
            let (counts, used) = g
                .diff_blocks_in_series(side(x), side(y), 4096, &mut series)
                .unwrap();
            let common = x.len().min(y.len());
            let cpu = Backend::Cpu
                .diff_blocks(&x[..common], &y[..common], 4096)
                .unwrap();
            assert_same(
                &format!("series step {step}"),
                bytemuck::cast_slice(&cpu),
                bytemuck::cast_slice(&counts),
            );
            let used = used.expect("the GPU reports its uploads");
            let a_resident = step > 0 && chained;
            assert_eq!(used.a_resident, a_resident, "step {step}");
            let expected = y.len() + if a_resident { 0 } else { x.len() };
            assert_eq!(used.uploaded_bytes as usize, expected, "step {step}");
            assert_eq!(device.counters().uploaded_bytes - before, used.uploaded_bytes);
        }
        // A different A of the same length is not mistaken for the resident one.
        let (_, used) = g
            .diff_blocks_in_series(side(&stranger), side(&snapshots[0]), 4096, &mut series)
            .unwrap();
        assert!(!used.unwrap().a_resident);
    }
}
}

#[test]
fn every_shader_validates_with_naga_names_its_twin_and_matches_its_params() {
    for kernel in KernelId::ALL {
        let name = kernel.name();
        let wgsl = kernel.wgsl();
        let source = kernel.source();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let twin = format!("src/kernels/{name}.rs");
        assert!(
            wgsl.starts_with(&format!("// {name}:")),
            "{name}.wgsl must open with its name"
        );
        assert!(
            wgsl.contains(&twin),
            "{name}.wgsl must name its twin {twin}"
        );
        assert!(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(&twin)
            .exists());
        params_match(&module, kernel.params_layout(), kernel.input_bindings())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Whether the shader's binding-0 struct is the Rust one (name, size, fields and offsets) and
/// the shader binds params, `inputs` inputs and one output.
fn params_match(
    module: &naga::Module,
    layout: foundry_gpu::backend::kernel::ParamsLayout,
    inputs: usize,
) -> Result<(), String> {
    let bound: Vec<_> = module
        .global_variables
        .iter()
        .filter_map(|(_, g)| g.binding.as_ref().map(|b| (b.group, b.binding, g.ty)))
        .collect();
    let (_, _, params_ty) = *bound
        .iter()
        .find(|(group, binding, _)| (*group, *binding) == (0, 0))
        .ok_or("no binding 0")?;
    let ty = &module.types[params_ty];
    if ty.name.as_deref() != Some(layout.wgsl_struct) {
        return Err(format!(
            "binding 0 is {:?}, not {}",
            ty.name, layout.wgsl_struct
        ));
    }
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        return Err("binding 0 is not a struct".into());
    };
    if *span as usize != layout.size {
        return Err(format!(
            "struct size {span} in WGSL, {} in Rust",
            layout.size
        ));
    }
    let shader: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
        .collect();
    let rust: Vec<(String, usize)> = layout
        .fields
        .iter()
        .map(|(field, offset)| (field.trim_start_matches('_').to_string(), *offset))
        .collect();
    if shader != rust {
        return Err(format!(
            "fields and offsets differ: WGSL {shader:?}, Rust {rust:?}"
        ));
    }
    if bound.len() != inputs + 2 {
        return Err(format!("{} bindings, expected {}", bound.len(), inputs + 2));
    }
    Ok(())
}

#[test]
fn the_params_check_fails_when_the_rust_struct_differs() {
    let kernel = KernelId::DiffBlocks;
    let module = naga::front::wgsl::parse_str(&kernel.source()).unwrap();
    let layout = kernel.params_layout();
    assert_eq!(
        params_match(&module, layout, kernel.input_bindings()),
        Ok(())
    );
    // Two fields swapped, a field renamed, a struct one word longer, a binding missing.
    let swapped = [
        ("valid_bytes", 0),
        ("block_bytes", 4),
        ("blocks", 8),
        ("groups_x", 12),
    ];
    let renamed = [
        ("block_bytes", 0),
        ("valid", 4),
        ("blocks", 8),
        ("groups_x", 12),
    ];
    for (fields, size) in [
        (&swapped, 16),
        (&renamed, 16),
        (&layout.fields.try_into().unwrap(), 20),
    ] {
        let doctored = foundry_gpu::backend::kernel::ParamsLayout {
            fields: Box::leak(Box::new(*fields)),
            size,
            ..layout
        };
        assert!(
            params_match(&module, doctored, kernel.input_bindings()).is_err(),
            "{fields:?} {size}"
        );
    }
    assert!(params_match(&module, layout, kernel.input_bindings() + 1).is_err());
}

gpu_leg! {
fn a_fold_uploads_its_input_once_for_every_kernel() {
    use foundry_gpu::backend::{BackendChoice, GpuOptions};
    use foundry_gpu::fold::{fold_file, FoldOptions, OutputTarget};
    // Devices of this test's own, so their counters hold only its work; 16 KiB bindings so
    // each kernel runs in many dispatches over ranges of the one upload.
    for max_chunk_bytes in [None, Some(16 << 10)] {
        let own = Backend::select(
            BackendChoice::Gpu,
            &GpuOptions {
                max_chunk_bytes,
                ..GpuOptions::default()
            },
        )
        .unwrap();
        let Backend::Gpu(device) = &own else {
            unreachable!()
        };
        let data = sample_bytes(300_001, 9);
        let before = device.counters();
        let input = own.stage(&data);
        let brick = input.fold(Layout::Brick, 0..data.len(), min_order(Layout::Brick, data.len())).unwrap();
        let rts = input.fold(Layout::Rts, 0..data.len(), min_order(Layout::Rts, data.len())).unwrap();
        let table = EntropyTable::for_run_len(4096);
        let stats = input.preview_stats(4096, data.len().div_ceil(4096), &table).unwrap();
        let after = device.counters();
        assert_eq!(after.input_uploads - before.input_uploads, 1, "{max_chunk_bytes:?}");
        assert_eq!(after.uploaded_bytes - before.uploaded_bytes, data.len() as u64);
        assert!(after.dispatches - before.dispatches >= 3);
        // The same bytes as the CPU twins.
        let cpu = Backend::Cpu.stage(&data);
        assert_eq!(brick, cpu.fold(Layout::Brick, 0..data.len(), min_order(Layout::Brick, data.len())).unwrap());
        assert_eq!(rts, cpu.fold(Layout::Rts, 0..data.len(), min_order(Layout::Rts, data.len())).unwrap());
        assert_eq!(stats, cpu.preview_stats(4096, data.len().div_ceil(4096), &table).unwrap());

        // The whole `fold` command: brick, .rts.png, preview and sections from one upload.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.bin");
        std::fs::write(&path, &data).unwrap();
        let before = device.counters();
        fold_file(
            &own,
            &path,
            &OutputTarget::Directory(dir.path().join("out")),
            &FoldOptions::default(),
            &foundry_gpu::progress::Silent,
        )
        .unwrap();
        let after = device.counters();
        assert_eq!(after.input_uploads - before.input_uploads, 1, "fold of {max_chunk_bytes:?}");
        assert_eq!(after.uploaded_bytes - before.uploaded_bytes, data.len() as u64);
    }
}
}

gpu_leg! {
fn a_device_wait_past_its_limit_is_a_clear_error() {
    use foundry_gpu::backend::{BackendChoice, GpuOptions};
    let data = sample_bytes(8 << 20, 3);
    let order = min_order(Layout::Brick, data.len());
    let hasty = Backend::select(
        BackendChoice::Gpu,
        &GpuOptions {
            wait_timeout: Some(std::time::Duration::from_micros(1)),
            ..GpuOptions::default()
        },
    )
    .unwrap();
    let e = hasty.fold(Layout::Brick, &data, order).unwrap_err();
    assert!(
        matches!(e, foundry_gpu::Error::GpuTimeout { .. }),
        "expected a timeout, got {e}"
    );
    let message = e.to_string();
    assert!(message.contains("did not finish within") && message.contains("--gpu-timeout"), "{message}");
    // The same work with the default limit completes: the limit is what failed it.
    let patient = gpu();
    assert_eq!(
        patient.fold(Layout::Brick, &data, order).unwrap(),
        Backend::Cpu.fold(Layout::Brick, &data, order).unwrap()
    );
}
}

gpu_leg! {
fn a_calibration_sends_each_kernel_where_it_says() {
    use foundry_gpu::backend::calibrate::{Calibration, KernelCrossover};
    use foundry_gpu::backend::gpu::{best_adapter, describe, GpuBackend, Routing};
    let adapter = best_adapter().expect("an adapter");
    let calibration = Calibration {
        adapter: describe(&adapter.get_info()),
        measured_at: 0,
        cpu_threads: rayon::current_num_threads(),
        kernels: vec![KernelCrossover {
            kernel: KernelId::FoldRts,
            gpu_from_bytes: Some(1 << 16),
            samples: Vec::new(),
        }],
    };
    let device = GpuBackend::open_adapter(adapter, &Default::default(), Routing::Calibrated(calibration)).unwrap();
    let backend = Backend::Gpu(Box::new(device));
    assert_eq!(backend.label(), "auto(sw)".replace("sw", match backend.adapter().unwrap().kind {
        foundry_gpu::backend::AdapterKind::Hardware => "hw",
        foundry_gpu::backend::AdapterKind::Software => "sw",
    }).as_str());
    let Backend::Gpu(g) = &backend else { unreachable!() };
    let big = sample_bytes(1 << 17, 4);
    let small = sample_bytes(1 << 10, 4);
    for (data, layout, on_gpu) in [
        (&big, Layout::Rts, true),
        (&small, Layout::Rts, false),
        (&big, Layout::Brick, false),
    ] {
        let order = min_order(layout, data.len());
        let before = g.counters().dispatches;
        let texture = backend.fold(layout, data, order).unwrap();
        assert_eq!(texture, Backend::Cpu.fold(layout, data, order).unwrap());
        assert_eq!(g.counters().dispatches > before, on_gpu, "{layout:?} {} bytes", data.len());
    }
}
}

gpu_leg! {
fn bench_measures_both_sides_and_its_calibration_steers_auto() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("calibration.json");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .args(args)
            .env("FOUNDRY_GPU_CALIBRATION", &cache)
            .output()
            .unwrap()
    };
    let o = run(&["bench", "--size", "1MiB", "--repeats", "1", "--calibrate", "--calibrate-max", "64KiB", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for wanted in ["upload", "readback", "device copy", "fold_brick kernel", "fold_rts end to end", "preview pyramid", "diff_blocks", "unfold_rts"] {
        let row = rows
            .iter()
            .find(|r| r["name"].as_str().unwrap().starts_with(wanted))
            .unwrap_or_else(|| panic!("no {wanted} row"));
        assert!(row["gpu_seconds"].as_f64().unwrap() > 0.0, "{wanted}");
    }
    assert!(rows.iter().filter(|r| r["cpu_seconds"].as_f64().is_some()).count() >= 8);
    assert_eq!(report["counters"]["input_uploads"].as_u64().map(|n| n > 0), Some(true));
    // The calibration is stored and read back by `--backend auto`.
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let kernels = stored[0]["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), KernelId::ALL.len());
    let any_gpu = kernels.iter().any(|k| !k["gpu_from_bytes"].is_null());
    let input = dir.path().join("x.bin");
    std::fs::write(&input, sample_bytes(1 << 20, 2)).unwrap();
    let out = dir.path().join("x.rts.png");
    let o = run(&["fold", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", "auto", "-v", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(said.contains("backend: auto("), any_gpu, "{said}");
    assert_eq!(said.contains("backend: cpu"), !any_gpu, "{said}");
    // A cache that does not parse is named, not trusted, and not replaced by a new
    // calibration (it may hold other adapters' entries).
    std::fs::write(&cache, b"{ not json").unwrap();
    let o = run(&["fold", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", "auto"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("calibration.json"));
    let o = run(&["bench", "--size", "64KiB", "--repeats", "1", "--calibrate", "--calibrate-max", "16KiB"]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&cache).unwrap(), b"{ not json");
}
}

gpu_leg! {
fn folds_of_parts_at_any_offset_match_the_cpu() {
    use foundry_gpu::fold::{fold_file, FoldOptions, OutputTarget};
    // Parts of 16 and 64 bytes start where no binding may (the device wants 16 to 256), and
    // an .rts.png range that ends mid-word must not see the bytes after it.
    let data = sample_bytes(255, 21);
    for backend in [gpu(), gpu_small_chunks()] {
        let staged = backend.stage(&data);
        let cpu = Backend::Cpu.stage(&data);
        for (layout, range) in [(Layout::Rts, 16..30), (Layout::Brick, 17..33), (Layout::Rts, 3..255)] {
            let order = min_order(layout, range.len());
            assert_eq!(
                staged.fold(layout, range.clone(), order).unwrap(),
                cpu.fold(layout, range.clone(), order).unwrap(),
                "{layout:?} {range:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("f255");
        std::fs::write(&input, &data).unwrap();
        for max_side in [4, 8] {
            let opts = FoldOptions {
                max_side,
                ..FoldOptions::default()
            };
            let on = |b: &Backend, name: &str| {
                let out = dir.path().join(format!("{name}-{max_side}"));
                fold_file(b, &input, &OutputTarget::Directory(out.clone()), &opts, &foundry_gpu::progress::Silent)
                    .unwrap();
                let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out)
                    .unwrap()
                    .map(|e| e.unwrap())
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
                    .collect();
                files.sort();
                files
            };
            assert_eq!(on(backend, "gpu"), on(&Backend::Cpu, "cpu"), "--max-side {max_side}");
        }
    }
}
}

/// `foundry-gpu ARGS` with the calibration cache at `cache`; a run past 60 s fails the test.
fn with_cache(cache: &std::path::Path, args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(args)
        .env("FOUNDRY_GPU_CALIBRATION", cache)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its output is a few lines, well within a pipe's buffer, so it is read after the exit.
    crate::harness::output_within(child, std::time::Duration::from_secs(60))
}

#[test]
fn a_calibration_cache_that_is_a_fifo_or_from_a_later_version_neither_hangs_nor_fails() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.bin");
    std::fs::write(&input, sample_bytes(4096, 1)).unwrap();
    let out = dir.path().join("x.rts.png");
    let fold = |cache: &std::path::Path| {
        with_cache(
            cache,
            &[
                "fold",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "-q",
            ],
        )
    };
    // A FIFO nobody writes: refused at once, by name.
    let fifo = dir.path().join("fifo.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path in a temporary folder.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let start = std::time::Instant::now();
    let o = fold(&fifo);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "hung on a FIFO"
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("regular file"));
    // A kernel this version does not know is skipped; the rest of the entry still counts.
    let later = dir.path().join("later.json");
    std::fs::write(
        &later,
        r#"[{"adapter":{"name":"x","driver":"y","backend":"Vulkan","kind":"hardware"},
            "measured_at":0,"cpu_threads":2,
            "kernels":[{"kernel":"fold_in_the_future","gpu_from_bytes":1,"samples":[]},
                       {"kernel":"fold_rts","gpu_from_bytes":null,"samples":[]}]}]"#,
    )
    .unwrap();
    let o = fold(&later);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Zero is no time limit at all: refused.
    let o = with_cache(
        &later,
        &[
            "fold",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--backend",
            "gpu",
            "--gpu-timeout",
            "0s",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = with_cache(&later, &["bench", "--size", "2GiB"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
