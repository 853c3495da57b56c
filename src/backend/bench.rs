//! `foundry-gpu bench`: GB/s per kernel on the device, upload and readback GB/s, end-to-end times, each beside the CPU twin in the same run and against its own limit; `--calibrate` stores where `auto` runs each kernel.

use super::calibrate::{self, Calibration, KernelCrossover, Sample};
use super::gpu::{AdapterDescription, DeviceBytes, DeviceCounters, GpuBackend};
use super::kernel::{
    DiffBlocks, DiffJob, FoldBrick, FoldJob, FoldRts, Kernel, KernelId, PreviewStats, StatsJob,
    UnfoldBrick, UnfoldJob, UnfoldRts,
};
use crate::curve::order_for_cells;
use crate::error::{Error, Result};
use crate::format::rts_png::{self, PngCompression};
use crate::kernels::preview_stats::{EntropyTable, RunStats, MAX_RUN_LEN};
use crate::kernels::Layout;
use rayon::prelude::*;
use std::time::Instant;

/// Largest preview a pyramid reaches (512 x 512 cells: what the viewer's tiles need).
const PYRAMID_TOP_ORDER: u32 = 9;
/// Block size of the diff rows (the one `diff` uses).
const DIFF_BLOCK: usize = 4096;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Input size for the kernel and end-to-end rows.
    pub bytes: usize,
    /// Each figure is the best of this many runs.
    pub repeats: usize,
    /// Also measure crossovers per kernel and store them for `--backend auto`.
    pub calibrate: bool,
    /// Largest size the calibration samples.
    pub calibrate_max_bytes: usize,
}

/// Which limit a row is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Host memory copy of the same bytes (`memcpy`).
    HostMemcpy,
    /// Device-to-device buffer copy: the device's own memory bandwidth.
    DeviceMemory,
    /// The sum of the host-side steps of the same work (upload, deflate, write), measured alone.
    HostSide,
    None,
}

/// One measured figure.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub name: String,
    /// Bytes the work reads and writes, by the model in the README (for GB/s).
    pub bytes_moved: u64,
    pub gpu_seconds: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub gpu_gb_per_s: Option<f64>,
    pub cpu_gb_per_s: Option<f64>,
    /// CPU time over GPU time: above 1 the GPU wins.
    pub gpu_speedup: Option<f64>,
    pub limit: Limit,
    /// The GPU figure as a fraction of its limit (throughput rows: GB/s over the limit's
    /// GB/s; end-to-end rows: the limit's time over the measured time).
    pub fraction_of_limit: Option<f64>,
}

/// The limits the rows are measured against, from the same run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Limits {
    pub host_memcpy_gb_per_s: f64,
    /// Bytes read plus written per second by a device-to-device copy.
    pub device_memory_gb_per_s: f64,
    pub upload_gb_per_s: f64,
    pub readback_gb_per_s: f64,
}

/// Everything one `bench` run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub measured_at: u64,
    pub adapter: AdapterDescription,
    pub cpu_threads: usize,
    /// How calls are cut into dispatches on this device.
    pub shape: super::kernel::DeviceShape,
    pub input_bytes: u64,
    pub repeats: usize,
    pub limits: Limits,
    pub rows: Vec<BenchRow>,
    pub counters: DeviceCounters,
    pub calibration: Option<Calibration>,
    pub calibration_path: Option<String>,
}

/// Deterministic bytes shaped like real files: 4 KiB pages of zeros, text, small integers
/// and noise.
pub fn sample_input(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    data.par_chunks_mut(4096)
        .enumerate()
        .for_each(|(page, bytes)| {
            let mut state = (seed ^ page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            match next() % 4 {
                0 => {}
                1 => bytes
                    .iter_mut()
                    .for_each(|b| *b = b"the quick brown fox jumps over "[(next() % 31) as usize]),
                2 => bytes.iter_mut().for_each(|b| *b = (next() % 8) as u8),
                _ => bytes.iter_mut().for_each(|b| *b = next() as u8),
            }
        });
    data
}

fn gb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

/// The best (least) time of `repeats` runs of `work`.
fn best<T>(repeats: usize, mut work: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let value = work()?;
        let seconds = start.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(b, _)| seconds < *b) {
            best = Some((seconds, value));
        }
    }
    Ok(best.expect("at least one run"))
}

fn row(
    name: impl Into<String>,
    bytes_moved: u64,
    gpu: Option<f64>,
    cpu: Option<f64>,
    limit: Limit,
    limit_gb_per_s: Option<f64>,
) -> BenchRow {
    let gpu_gb_per_s = gpu.map(|s| gb_per_s(bytes_moved, s));
    BenchRow {
        name: name.into(),
        bytes_moved,
        gpu_seconds: gpu,
        cpu_seconds: cpu,
        gpu_gb_per_s,
        cpu_gb_per_s: cpu.map(|s| gb_per_s(bytes_moved, s)),
        gpu_speedup: gpu.zip(cpu).map(|(g, c)| c / g),
        limit,
        fraction_of_limit: gpu_gb_per_s.zip(limit_gb_per_s).map(|(g, l)| g / l),
    }
}

/// The CPU twin of the fold in `layout`.
fn fold_on_cpu(job: &FoldJob, data: &[u8], texture: &mut [u32]) {
    match job.layout {
        Layout::Brick => FoldBrick::run_cpu(job, &[data], texture),
        Layout::Rts => FoldRts::run_cpu(job, &[data], texture),
    }
}

/// The fold in `job.layout` on the device, read back into `texture`.
fn fold_on_gpu(
    g: &GpuBackend,
    job: &FoldJob,
    input: &DeviceBytes,
    texture: &mut [u32],
) -> Result<()> {
    match job.layout {
        Layout::Brick => g.run::<FoldBrick>(job, &[input], texture, true),
        Layout::Rts => g.run::<FoldRts>(job, &[input], texture, true),
    }
}

/// The CPU twin of the unfold in `job.layout`.
fn unfold_on_cpu(job: &UnfoldJob, out: &mut [u8]) {
    match job.layout {
        Layout::Brick => UnfoldBrick::run_cpu(job, &[], out),
        Layout::Rts => UnfoldRts::run_cpu(job, &[], out),
    }
}

/// The unfold in `job.layout` on the device.
fn unfold_on_gpu(g: &GpuBackend, job: &UnfoldJob, out: &mut [u8]) -> Result<()> {
    match job.layout {
        Layout::Brick => g.run::<UnfoldBrick>(job, &[], out, true),
        Layout::Rts => g.run::<UnfoldRts>(job, &[], out, true),
    }
}

/// The CPU fold of all of `data` in `layout`, with its job (the unfolds' input).
fn folded(layout: Layout, data: &[u8]) -> (FoldJob, Vec<u32>) {
    let job = fold_job(layout, data.len());
    let mut texture = vec![0u32; 1 << (2 * job.order)];
    fold_on_cpu(&job, data, &mut texture);
    (job, texture)
}

/// The whole-input fold job of `len` bytes in `layout`.
fn fold_job(layout: Layout, len: usize) -> FoldJob {
    FoldJob {
        layout,
        order: order_for(layout, len),
        offset: 0,
        len,
    }
}

/// A texture order that holds `len` bytes in `layout`.
fn order_for(layout: Layout, len: usize) -> u32 {
    order_for_cells(layout.pixels_for(len as u64).max(1))
}

/// The stats levels of a pyramid of `len` bytes: (run length, runs) per level, coarse to
/// fine, every run within the kernel's limit.
pub fn pyramid_levels(len: usize) -> Vec<(usize, usize)> {
    let order = order_for(Layout::Brick, len);
    (1..=PYRAMID_TOP_ORDER.min(order))
        .map(|k| (1usize << (2 * (order - k)), 1usize << (2 * k)))
        .filter(|(run_len, _)| *run_len <= MAX_RUN_LEN)
        .collect()
}

fn pyramid_cpu(data: &[u8], levels: &[(usize, usize)], tables: &[EntropyTable]) -> usize {
    let mut runs = 0;
    for ((run_len, count), table) in levels.iter().zip(tables) {
        let job = StatsJob {
            offset: 0,
            len: data.len(),
            run_len: *run_len,
            runs: *count,
            table,
        };
        let mut out = vec![RunStats::default(); *count];
        PreviewStats::run_cpu(&job, &[data], &mut out);
        runs += out.len();
    }
    runs
}

fn pyramid_gpu(
    g: &GpuBackend,
    resident: &DeviceBytes,
    levels: &[(usize, usize)],
    tables: &[EntropyTable],
) -> Result<usize> {
    let mut runs = 0;
    for ((run_len, count), table) in levels.iter().zip(tables) {
        let job = StatsJob {
            offset: 0,
            len: resident.len(),
            run_len: *run_len,
            runs: *count,
            table,
        };
        let mut out = vec![RunStats::default(); *count];
        g.run::<PreviewStats>(&job, &[resident], &mut out, true)?;
        runs += out.len();
    }
    Ok(runs)
}

/// Measures everything on `g` with `options`.
pub fn run(g: &GpuBackend, options: &BenchOptions) -> Result<BenchReport> {
    // A brick of more than 1 GiB is past the curve's largest texture (order 15).
    const MIN: usize = 4096;
    const MAX: usize = 1 << 30;
    if !(MIN..=MAX).contains(&options.bytes) {
        return Err(Error::Usage(format!(
            "bench --size {} must be from 4KiB to 1GiB",
            options.bytes
        )));
    }
    let n = options.bytes;
    let reps = options.repeats;
    let data = sample_input(n, 1);
    let mut other = data.clone();
    // B of the diff: one byte in 64 KiB changed.
    for i in (0..n).step_by(65536) {
        other[i] ^= 0x5A;
    }
    let mut rows = Vec::new();

    // Limits.
    let mut copy = vec![0u8; n];
    let (memcpy, _) = best(reps, || {
        copy.copy_from_slice(std::hint::black_box(&data));
        std::hint::black_box(&mut copy);
        Ok(())
    })?;
    drop(copy);
    // One warm-up upload: the staging ring is made once per device, not per figure.
    drop(g.upload(&data[..MIN])?);
    let (upload, resident) = best(reps, || {
        let r = g.upload(&data)?;
        g.finish()?;
        Ok(r)
    })?;
    // Buffers allocated once, outside the timing: what is measured is the transfer.
    let mut probe = g.readback_probe(n)?;
    let (readback, _) = best(reps, || probe.read())?;
    let copy_target = g.device_copy_target(&resident);
    let (device_copy, _) = best(reps, || g.device_copy(&resident, &copy_target))?;
    let limits = Limits {
        host_memcpy_gb_per_s: gb_per_s(2 * n as u64, memcpy),
        device_memory_gb_per_s: gb_per_s(2 * n as u64, device_copy),
        upload_gb_per_s: gb_per_s(n as u64, upload),
        readback_gb_per_s: gb_per_s(n as u64, readback),
    };
    rows.push(row(
        "upload (host to device)",
        n as u64,
        Some(upload),
        Some(memcpy),
        Limit::HostMemcpy,
        Some(limits.host_memcpy_gb_per_s / 2.0),
    ));
    rows.push(row(
        "readback (device to host)",
        n as u64,
        Some(readback),
        Some(memcpy),
        Limit::HostMemcpy,
        Some(limits.host_memcpy_gb_per_s / 2.0),
    ));
    rows.push(row(
        "device copy",
        2 * n as u64,
        Some(device_copy),
        None,
        Limit::DeviceMemory,
        Some(limits.device_memory_gb_per_s),
    ));

    // Kernels on the resident input, results left on the device, beside the CPU twin.
    let device = Some(limits.device_memory_gb_per_s);
    for layout in [Layout::Brick, Layout::Rts] {
        let job = fold_job(layout, n);
        let order = job.order;
        let mut texture = vec![0u32; 1 << (2 * order)];
        let texture_bytes = texture.len() as u64 * 4;
        let kernel_name = match layout {
            Layout::Brick => KernelId::FoldBrick.name(),
            Layout::Rts => KernelId::FoldRts.name(),
        };
        let on_device = match layout {
            Layout::Brick => best(reps, || g.run_on_device::<FoldBrick>(&job, &[&resident]))?.0,
            Layout::Rts => best(reps, || g.run_on_device::<FoldRts>(&job, &[&resident]))?.0,
        };
        let (cpu, _) = best(reps, || {
            fold_on_cpu(&job, &data, &mut texture);
            Ok(())
        })?;
        rows.push(row(
            format!("{kernel_name} kernel (resident)"),
            n as u64 + texture_bytes,
            Some(on_device),
            Some(cpu),
            Limit::DeviceMemory,
            device,
        ));
        // End to end: upload, fold, readback straight into the texture.
        let (e2e, _) = best(reps, || {
            fold_on_gpu(g, &job, &g.upload(&data)?, &mut texture)
        })?;
        // The twins agree on this device, at this size, or the figures mean nothing.
        let on_gpu = crate::analysis::sha256(bytemuck::cast_slice(&texture));
        fold_on_cpu(&job, &data, &mut texture);
        if on_gpu != crate::analysis::sha256(bytemuck::cast_slice(&texture)) {
            return Err(Error::gpu(format!(
                "{kernel_name}: the GPU texture differs from the CPU twin's"
            )));
        }
        let transfers = upload + readback * texture_bytes as f64 / n as f64;
        let mut r = row(
            format!("{kernel_name} end to end (upload, fold, readback)"),
            n as u64 + texture_bytes,
            Some(e2e),
            Some(cpu),
            Limit::HostSide,
            None,
        );
        r.fraction_of_limit = Some(transfers / e2e);
        rows.push(r);
        if layout == Layout::Rts {
            // The `.rts.png` a `fold` writes: fold, deflate, write; the host-side steps alone
            // are the limit.
            let side = 1u32 << order;
            let dir =
                tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), "create", e))?;
            let path = dir.path().join("bench.rts.png");
            let write_png = |texture: &[u32]| -> Result<(f64, f64)> {
                let start = Instant::now();
                let image = rts_png::encode_texture(side, texture, PngCompression::Fast)
                    .map_err(|e| Error::io(&path, "compress", e))?;
                let deflated = start.elapsed().as_secs_f64();
                let mut file = std::io::BufWriter::new(
                    std::fs::File::create(&path).map_err(|e| Error::io(&path, "create", e))?,
                );
                image
                    .write(&mut file, &[])
                    .map_err(|e| Error::io(&path, "write", e))?;
                drop(file);
                Ok((deflated, start.elapsed().as_secs_f64() - deflated))
            };
            let (gpu_png, (deflate, write)) = best(reps, || {
                let input = g.upload(&data)?;
                g.run::<FoldRts>(&job, &[&input], &mut texture, true)?;
                write_png(&texture)
            })?;
            let (cpu_png, _) = best(reps, || {
                FoldRts::run_cpu(&job, &[&data], &mut texture);
                write_png(&texture)
            })?;
            let mut r = row(
                "fold to .rts.png (fold, deflate, write)",
                n as u64,
                Some(gpu_png),
                Some(cpu_png),
                Limit::HostSide,
                None,
            );
            r.fraction_of_limit = Some((upload + deflate + write) / gpu_png);
            rows.push(r);
        }
    }

    // Preview pyramid: every level from the one resident upload.
    let levels = pyramid_levels(n);
    let tables: Vec<EntropyTable> = levels
        .iter()
        .map(|(run_len, _)| EntropyTable::for_run_len(*run_len))
        .collect();
    let segment = g.shape().segment_bytes;
    if levels.iter().all(|(run_len, _)| run_len * 4 <= segment) && !levels.is_empty() {
        let (kernel, _) = best(reps, || pyramid_gpu(g, &resident, &levels, &tables))?;
        let (top_run, top_runs) = *levels.last().expect("levels");
        let top = StatsJob {
            offset: 0,
            len: n,
            run_len: top_run,
            runs: top_runs,
            table: tables.last().expect("tables"),
        };
        let (mut on_gpu, mut on_cpu) = (
            vec![RunStats::default(); top_runs],
            vec![RunStats::default(); top_runs],
        );
        g.run::<PreviewStats>(&top, &[&resident], &mut on_gpu, true)?;
        PreviewStats::run_cpu(&top, &[&data], &mut on_cpu);
        if on_gpu != on_cpu {
            return Err(Error::gpu(
                "preview_stats: the GPU statistics differ from the CPU twin's",
            ));
        }
        let (cpu, _) = best(reps, || Ok(pyramid_cpu(&data, &levels, &tables)))?;
        let moved = (n * levels.len()) as u64;
        rows.push(row(
            format!("preview pyramid, {} levels (resident)", levels.len()),
            moved,
            Some(kernel),
            Some(cpu),
            Limit::DeviceMemory,
            device,
        ));
        let (e2e, _) = best(reps, || {
            let input = g.upload(&data)?;
            pyramid_gpu(g, &input, &levels, &tables)
        })?;
        let mut r = row(
            "preview pyramid end to end (upload, all levels)",
            moved,
            Some(e2e),
            Some(cpu),
            Limit::HostSide,
            None,
        );
        r.fraction_of_limit = Some(upload / e2e);
        rows.push(r);
    }

    // Diff of a resident series: both snapshots on the device, only the counts come back.
    let b_resident = g.upload(&other)?;
    let job = DiffJob {
        block_bytes: DIFF_BLOCK,
        len: n,
    };
    let mut counts = vec![0u32; DiffBlocks::output_len(&job)];
    let (on_device, _) = best(reps, || {
        g.run::<DiffBlocks>(&job, &[&resident, &b_resident], &mut counts, true)
    })?;
    let on_gpu = counts.clone();
    let (cpu, _) = best(reps, || {
        DiffBlocks::run_cpu(&job, &[&data, &other], &mut counts);
        Ok(())
    })?;
    if on_gpu != counts {
        return Err(Error::gpu(
            "diff_blocks: the GPU counts differ from the CPU twin's",
        ));
    }
    rows.push(row(
        "diff_blocks of a resident series",
        2 * n as u64,
        Some(on_device),
        Some(cpu),
        Limit::DeviceMemory,
        device,
    ));

    // Unfold: texels go up per chunk, bytes come back.
    for layout in [Layout::Brick, Layout::Rts] {
        let (fold, texture) = folded(layout, &data);
        let job = UnfoldJob {
            layout,
            order: fold.order,
            texture: &texture,
            len: n,
        };
        let name = match layout {
            Layout::Brick => "unfold_brick end to end",
            Layout::Rts => "unfold_rts end to end",
        };
        let mut out = vec![0u8; n];
        let (gpu_s, _) = best(reps, || unfold_on_gpu(g, &job, &mut out))?;
        if out != data {
            return Err(Error::gpu(format!(
                "{name}: the GPU did not give the bytes back"
            )));
        }
        let (cpu_s, _) = best(reps, || {
            unfold_on_cpu(&job, &mut out);
            Ok(())
        })?;
        rows.push(row(
            name,
            texture.len() as u64 * 4 + n as u64,
            Some(gpu_s),
            Some(cpu_s),
            Limit::None,
            None,
        ));
    }

    let (calibration, calibration_path) = if options.calibrate {
        let c = calibrate(g, options)?;
        let path = calibrate::store(&c)?;
        (Some(c), Some(path.display().to_string()))
    } else {
        (None, None)
    };
    Ok(BenchReport {
        measured_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        adapter: g.adapter().clone(),
        cpu_threads: rayon::current_num_threads(),
        shape: g.shape(),
        input_bytes: n as u64,
        repeats: reps,
        limits,
        rows,
        counters: g.counters(),
        calibration,
        calibration_path,
    })
}

/// Sizes the calibration samples, up to `max`.
fn calibration_sizes(max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (12..=30)
        .step_by(2)
        .map(|k| 1usize << k)
        .filter(|&s| s <= max)
        .collect();
    if sizes.is_empty() {
        sizes.push(max.max(4096));
    }
    sizes
}

/// Times `kernel` end to end (upload, kernel, readback) on the device and its twin on the
/// CPU at each size.
fn sample_kernel(
    g: &GpuBackend,
    kernel: KernelId,
    sizes: &[usize],
    reps: usize,
) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for &size in sizes {
        let data = sample_input(size, 7);
        let (gpu_seconds, cpu_seconds) = match kernel {
            KernelId::FoldBrick | KernelId::FoldRts => {
                let layout = if kernel == KernelId::FoldBrick {
                    Layout::Brick
                } else {
                    Layout::Rts
                };
                let job = fold_job(layout, size);
                let mut texture = vec![0u32; 1 << (2 * job.order)];
                let gpu = best(reps, || {
                    fold_on_gpu(g, &job, &g.upload(&data)?, &mut texture)
                })?
                .0;
                let cpu = best(reps, || {
                    fold_on_cpu(&job, &data, &mut texture);
                    Ok(())
                })?
                .0;
                (gpu, cpu)
            }
            KernelId::UnfoldBrick | KernelId::UnfoldRts => {
                let layout = if kernel == KernelId::UnfoldBrick {
                    Layout::Brick
                } else {
                    Layout::Rts
                };
                let (fold, texture) = folded(layout, &data);
                let job = UnfoldJob {
                    layout,
                    order: fold.order,
                    texture: &texture,
                    len: size,
                };
                let mut out = vec![0u8; size];
                let gpu = best(reps, || unfold_on_gpu(g, &job, &mut out))?.0;
                let cpu = best(reps, || {
                    unfold_on_cpu(&job, &mut out);
                    Ok(())
                })?
                .0;
                (gpu, cpu)
            }
            KernelId::PreviewStats => {
                // The preview a fold renders: 512 x 512 cells at most, runs of at least 4 KiB.
                let run_len = (size / (1 << (2 * PYRAMID_TOP_ORDER))).max(4096).min(size);
                let runs = size.div_ceil(run_len);
                let table = EntropyTable::for_run_len(run_len);
                let job = StatsJob {
                    offset: 0,
                    len: size,
                    run_len,
                    runs,
                    table: &table,
                };
                let mut out = vec![RunStats::default(); runs];
                let gpu = best(reps, || {
                    let input = g.upload(&data)?;
                    g.run::<PreviewStats>(&job, &[&input], &mut out, true)
                })?
                .0;
                let cpu = best(reps, || {
                    PreviewStats::run_cpu(&job, &[&data], &mut out);
                    Ok(())
                })?
                .0;
                (gpu, cpu)
            }
            KernelId::DiffBlocks => {
                let mut other = data.clone();
                other[size / 2] ^= 1;
                let job = DiffJob {
                    block_bytes: DIFF_BLOCK.min(size),
                    len: size,
                };
                let mut counts = vec![0u32; DiffBlocks::output_len(&job)];
                let gpu = best(reps, || {
                    let (a, b) = (g.upload(&data)?, g.upload(&other)?);
                    g.run::<DiffBlocks>(&job, &[&a, &b], &mut counts, true)
                })?
                .0;
                let cpu = best(reps, || {
                    DiffBlocks::run_cpu(&job, &[&data, &other], &mut counts);
                    Ok(())
                })?
                .0;
                (gpu, cpu)
            }
        };
        samples.push(Sample {
            bytes: size as u64,
            cpu_seconds,
            gpu_seconds,
        });
    }
    Ok(samples)
}

/// Measures every kernel's crossover on `g`.
pub fn calibrate(g: &GpuBackend, options: &BenchOptions) -> Result<Calibration> {
    let sizes = calibration_sizes(options.calibrate_max_bytes);
    let kernels = KernelId::ALL
        .iter()
        .map(|&kernel| {
            let samples = sample_kernel(g, kernel, &sizes, options.repeats)?;
            Ok(KernelCrossover {
                kernel,
                gpu_from_bytes: calibrate::crossover(&samples),
                samples,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Calibration {
        adapter: g.adapter().clone(),
        measured_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        cpu_threads: rayon::current_num_threads(),
        kernels,
    })
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The report as the table `bench` prints.
pub fn render_table(report: &BenchReport) -> String {
    let mut out = format!(
        "adapter: {} ({}, {}); {} CPU threads; input {} bytes; best of {}\n",
        report.adapter.name,
        report.adapter.driver,
        report.adapter.backend,
        report.cpu_threads,
        report.input_bytes,
        report.repeats
    );
    out += &format!(
        "dispatch shape: input segments of {} bytes, outputs up to {} bytes a dispatch\n",
        report.shape.segment_bytes, report.shape.max_output_bytes
    );
    let l = &report.limits;
    out += &format!(
        "limits: device memory {:.1} GB/s (copy, read+write), upload {:.2} GB/s, readback {:.2} GB/s, host memcpy {:.1} GB/s (read+write)\n\n",
        l.device_memory_gb_per_s, l.upload_gb_per_s, l.readback_gb_per_s, l.host_memcpy_gb_per_s
    );
    out += &format!(
        "{:<50} {:>10} {:>10} {:>9} {:>9} {:>8} {:>9}\n",
        "work", "gpu s", "cpu s", "gpu GB/s", "cpu GB/s", "gpu/cpu", "of limit"
    );
    for r in &report.rows {
        out += &format!(
            "{:<50} {:>10} {:>10} {:>9} {:>9} {:>8} {:>9}\n",
            r.name,
            cell(r.gpu_seconds, 4),
            cell(r.cpu_seconds, 4),
            cell(r.gpu_gb_per_s, 2),
            cell(r.cpu_gb_per_s, 2),
            cell(r.gpu_speedup, 2),
            r.fraction_of_limit
                .map_or("-".into(), |f| format!("{:.0}%", f * 100.0)),
        );
    }
    if let Some(c) = &report.calibration {
        out += "\nauto sends (from the calibration):\n";
        for k in &c.kernels {
            let place = match k.gpu_from_bytes {
                Some(b) => format!("GPU from {b} bytes"),
                None => "CPU at every size measured".into(),
            };
            out += &format!("  {:<14} {place}\n", k.kernel.name());
        }
        if let Some(p) = &report.calibration_path {
            out += &format!("stored in {p}\n");
        }
    }
    out
}
