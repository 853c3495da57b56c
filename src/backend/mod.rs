//! Which engine does each piece of work: the CPU twins (rayon) or the WGSL kernels (wgpu), chosen per kernel by `--backend`.

pub mod bench;
pub mod calibrate;
pub mod gpu;
pub mod kernel;

use crate::error::{Error, Result};
use crate::kernels::preview_stats::{EntropyTable, RunStats};
use crate::kernels::Layout;
pub use gpu::{AdapterDescription, AdapterKind, DeviceBytes, GpuBackend, GpuOptions, Routing};
use kernel::{
    DiffBlocks, DiffJob, FoldBrick, FoldJob, FoldRts, Kernel, KernelId, PreviewStats, StatsJob,
    UnfoldBrick, UnfoldJob, UnfoldRts,
};
use std::ops::Range;
use std::sync::OnceLock;

/// What `--backend` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Each kernel where this machine's calibration (`bench --calibrate`) says it is faster
    /// for that size; the CPU for all of them without a calibration of the best adapter.
    Auto,
    /// wgpu on whatever adapter exists, software ones included; fails without one.
    Gpu,
    /// The multi-threaded CPU twins.
    Cpu,
}

/// Largest side kept on the device for a series of comparisons (two are held at once).
pub const RESIDENT_MAX_BYTES: usize = 1 << 30;

/// Largest input a fold keeps on the device for all its kernels; a larger one goes up a
/// range at a time.
pub const STAGE_MAX_BYTES: usize = 4 << 30;

/// A series of comparisons where each B is the next A (memory snapshots taken every second):
/// on the GPU the last B stays on the device, so each snapshot is uploaded once.
#[derive(Default)]
pub struct DiffSeries {
    last: Option<(DeviceBytes, [u8; 32])>,
}

/// What a comparison in a series cost the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceUse {
    /// A was already on the device (B of the previous comparison), so only B was uploaded.
    pub a_resident: bool,
    pub uploaded_bytes: u64,
}

/// One side of a comparison in a series: its bytes and their SHA-256.
pub struct SeriesSide<'a> {
    pub bytes: &'a [u8],
    pub sha256: [u8; 32],
}

/// An engine ready to fold.
pub enum Backend {
    Cpu,
    Gpu(Box<GpuBackend>),
}

/// One input of a fold, uploaded at most once (on the first kernel the GPU takes) and read
/// by every kernel of that fold: brick, `.rts.png`, preview statistics.
pub struct Staged<'a> {
    backend: &'a Backend,
    bytes: &'a [u8],
    device: OnceLock<DeviceBytes>,
    uploading: std::sync::Mutex<()>,
}

impl Backend {
    /// Opens the engine `choice` names. `auto` reads the calibration cache first, and only
    /// when it sends some kernel to a GPU enumerates adapters (once) and opens the best one
    /// if it is the calibrated one.
    pub fn select(choice: BackendChoice, options: &GpuOptions) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Backend::Cpu),
            BackendChoice::Gpu => Ok(Backend::Gpu(Box::new(GpuBackend::open(options)?))),
            BackendChoice::Auto => {
                // The cache first: with no calibration that sends anything to a GPU, no
                // adapter is enumerated (which costs tens of milliseconds, and can wake a GPU).
                let calibrations = calibrate::load_all()?;
                if !calibrations
                    .iter()
                    .any(|c| c.kernels.iter().any(|k| k.gpu_from_bytes.is_some()))
                {
                    return Ok(Backend::Cpu);
                }
                let Some(adapter) = gpu::best_adapter() else {
                    return Ok(Backend::Cpu);
                };
                let description = gpu::describe(&adapter.get_info());
                match calibrate::matching(calibrations, &description) {
                    Some(c) if c.kernels.iter().any(|k| k.gpu_from_bytes.is_some()) => {
                        Ok(Backend::Gpu(Box::new(GpuBackend::open_adapter(
                            adapter,
                            options,
                            Routing::Calibrated(c),
                        )?)))
                    }
                    _ => Ok(Backend::Cpu),
                }
            }
        }
    }

    /// `cpu`, `gpu(hw)`, `gpu(sw)`, or `auto(hw)` when a calibration splits the work.
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(g) => match (g.routing(), g.adapter().kind) {
                (Routing::Calibrated(_), AdapterKind::Hardware) => "auto(hw)",
                (Routing::Calibrated(_), AdapterKind::Software) => "auto(sw)",
                (Routing::Everything, AdapterKind::Hardware) => "gpu(hw)",
                (Routing::Everything, AdapterKind::Software) => "gpu(sw)",
            },
        }
    }

    /// The wgpu adapter, when the GPU path is in use.
    pub fn adapter(&self) -> Option<&AdapterDescription> {
        match self {
            Backend::Cpu => None,
            Backend::Gpu(g) => Some(g.adapter()),
        }
    }

    /// The device, when `kernel` on `bytes` of input goes to it.
    fn device_for(&self, kernel: KernelId, bytes: usize) -> Option<&GpuBackend> {
        match self {
            Backend::Gpu(g) if g.takes(kernel, bytes) => Some(g),
            _ => None,
        }
    }

    /// `data` as one fold's input: uploaded once if any kernel of the fold runs on the GPU.
    pub fn stage<'a>(&'a self, data: &'a [u8]) -> Staged<'a> {
        Staged {
            backend: self,
            bytes: data,
            device: OnceLock::new(),
            uploading: std::sync::Mutex::new(()),
        }
    }

    /// Folds `data` into a new texture of side `2^order` (row-major RGBA words).
    pub fn fold(&self, layout: Layout, data: &[u8], order: u32) -> Result<Vec<u32>> {
        self.stage(data).fold(layout, 0..data.len(), order)
    }

    /// Folds into a caller-owned texture (benchmarks reuse one allocation).
    pub fn fold_into(
        &self,
        layout: Layout,
        data: &[u8],
        order: u32,
        texture: &mut [u32],
    ) -> Result<()> {
        self.stage(data)
            .fold_into(layout, 0..data.len(), order, texture)
    }

    /// Reads `len` source bytes back from a texture of side `2^order`.
    pub fn unfold(
        &self,
        layout: Layout,
        texture: &[u32],
        order: u32,
        len: usize,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        self.unfold_into(layout, texture, order, &mut out)?;
        Ok(out)
    }

    /// Unfolds into a caller-owned buffer of exactly the source length.
    pub fn unfold_into(
        &self,
        layout: Layout,
        texture: &[u32],
        order: u32,
        out: &mut [u8],
    ) -> Result<()> {
        if layout.pixels_for(out.len() as u64) > texture.len() as u64
            || texture.len() as u64 != 1u64 << (2 * order)
        {
            return Err(Error::Usage(format!(
                "{} bytes cannot come out of a texture of {} pixels at order {order}",
                out.len(),
                texture.len()
            )));
        }
        let job = UnfoldJob {
            layout,
            order,
            texture,
            len: out.len(),
        };
        let kernel = match layout {
            Layout::Brick => KernelId::UnfoldBrick,
            Layout::Rts => KernelId::UnfoldRts,
        };
        match (self.device_for(kernel, out.len()), layout) {
            (Some(g), Layout::Brick) => g.run::<UnfoldBrick>(&job, &[], out, true),
            (Some(g), Layout::Rts) => g.run::<UnfoldRts>(&job, &[], out, true),
            (None, Layout::Brick) => {
                UnfoldBrick::run_cpu(&job, &[], out);
                Ok(())
            }
            (None, Layout::Rts) => {
                UnfoldRts::run_cpu(&job, &[], out);
                Ok(())
            }
        }
    }

    /// Per `block_bytes` block of two equally long inputs: differing bytes, then differing
    /// 4-byte words (two words per block).
    pub fn diff_blocks(&self, a: &[u8], b: &[u8], block_bytes: usize) -> Result<Vec<u32>> {
        if a.len() != b.len() || block_bytes < 64 || !block_bytes.is_power_of_two() {
            return Err(Error::Usage(format!(
                "diff_blocks needs equal lengths ({} vs {}) and a power-of-two block of at least 64 bytes ({block_bytes})",
                a.len(),
                b.len()
            )));
        }
        let job = DiffJob {
            block_bytes,
            len: a.len(),
        };
        let mut counts = vec![0u32; DiffBlocks::output_len(&job)];
        // Routed by the length of one side, the unit the calibration measures.
        match self.device_for(KernelId::DiffBlocks, a.len()) {
            Some(g) if block_bytes <= g.shape().segment_bytes => {
                let (x, y) = (g.upload(a)?, g.upload(b)?);
                g.run::<DiffBlocks>(&job, &[&x, &y], &mut counts, true)?;
            }
            _ => DiffBlocks::run_cpu(&job, &[a, b], &mut counts),
        }
        Ok(counts)
    }

    /// [`Self::diff_blocks`] of the common prefix of two sides of `series`, giving the same
    /// counts. On the GPU both sides are kept on the device and B stays there: when the next
    /// comparison's A is this B (same SHA-256), A is not uploaded again.
    pub fn diff_blocks_in_series(
        &self,
        a: SeriesSide,
        b: SeriesSide,
        block_bytes: usize,
        series: &mut DiffSeries,
    ) -> Result<(Vec<u32>, Option<DeviceUse>)> {
        let common = a.bytes.len().min(b.bytes.len());
        let g = match self.device_for(KernelId::DiffBlocks, common) {
            Some(g)
                if a.bytes.len().max(b.bytes.len()) <= RESIDENT_MAX_BYTES
                    && block_bytes >= 64
                    && block_bytes.is_power_of_two()
                    && block_bytes <= g.shape().segment_bytes =>
            {
                g
            }
            _ => {
                series.last = None;
                let counts =
                    self.diff_blocks(&a.bytes[..common], &b.bytes[..common], block_bytes)?;
                return Ok((counts, None));
            }
        };
        let kept = series
            .last
            .take()
            .filter(|(resident, sha)| *sha == a.sha256 && resident.len() == a.bytes.len());
        let a_resident = kept.is_some();
        let a_on_device = match kept {
            Some((resident, _)) => resident,
            None => g.upload(a.bytes)?,
        };
        let b_on_device = g.upload(b.bytes)?;
        // The device compares whole words; a last partial word of the common prefix would
        // read bytes past it on the longer side, so those (under four) are counted here.
        let whole = common / 4 * 4;
        let job = DiffJob {
            block_bytes,
            len: whole,
        };
        let mut counts = vec![0u32; DiffBlocks::output_len(&job)];
        g.run::<DiffBlocks>(&job, &[&a_on_device, &b_on_device], &mut counts, true)?;
        if whole < common {
            let differing = a.bytes[whole..common]
                .iter()
                .zip(&b.bytes[whole..common])
                .filter(|(x, y)| x != y)
                .count() as u32;
            let block = whole / block_bytes;
            counts.resize(counts.len().max((block + 1) * 2), 0);
            counts[block * 2] += differing;
            counts[block * 2 + 1] += u32::from(differing > 0);
        }
        series.last = Some((b_on_device, b.sha256));
        // Counted from what this comparison sent, not from the device's running total, which
        // other threads sharing the backend also add to.
        let used = DeviceUse {
            a_resident,
            uploaded_bytes: (b.bytes.len() + if a_resident { 0 } else { a.bytes.len() }) as u64,
        };
        Ok((counts, Some(used)))
    }

    /// Per-run statistics for previews (see `kernels::preview_stats`).
    pub fn preview_stats(
        &self,
        data: &[u8],
        run_len: usize,
        runs: usize,
        table: &EntropyTable,
    ) -> Result<Vec<RunStats>> {
        self.stage(data).preview_stats(run_len, runs, table)
    }
}

impl<'a> Staged<'a> {
    /// The input's bytes, for work that reads them on the host.
    pub fn data(&self) -> &'a [u8] {
        self.bytes
    }

    /// The whole input on the device, uploaded on first use; `None` when it is too large to
    /// keep there (each call then uploads its own range).
    fn resident(&self, g: &GpuBackend) -> Result<Option<&DeviceBytes>> {
        if self.bytes.len() > STAGE_MAX_BYTES {
            return Ok(None);
        }
        // One upload even when two threads ask at once.
        let _first = self.uploading.lock().expect("staged upload");
        if self.device.get().is_none() {
            let _ = self.device.set(g.upload(self.bytes)?);
        }
        Ok(self.device.get())
    }

    /// Runs `K` over `range` of the input: from the resident upload when the range starts
    /// where a binding may start and ends on a word (or at the input's end: a kernel reads
    /// whole words, and bytes past the range must read as zero), else from a one-off upload
    /// of the range (zero-padded), as for an input too large to keep.
    fn on_device<K: Kernel>(
        &self,
        g: &GpuBackend,
        range: Range<usize>,
        job: impl FnOnce(usize) -> K::Job<'a>,
        out: &mut [K::Out],
    ) -> Result<()> {
        let bindable = range.start.is_multiple_of(g.binding_alignment())
            && (range.end.is_multiple_of(4) || range.end == self.bytes.len());
        match self.resident(g)?.filter(|_| bindable) {
            Some(all) => g.run::<K>(&job(range.start), &[all], out, true),
            None => {
                let part = g.upload(&self.bytes[range])?;
                g.run::<K>(&job(0), &[&part], out, true)
            }
        }
    }

    /// Folds `range` of the input into a new texture of side `2^order`.
    pub fn fold(&self, layout: Layout, range: Range<usize>, order: u32) -> Result<Vec<u32>> {
        let capacity = 1u64 << (2 * order);
        if layout.pixels_for(range.len() as u64) > capacity {
            return Err(Error::Usage(format!(
                "{} bytes do not fit a texture of side {}",
                range.len(),
                1u64 << order
            )));
        }
        let mut texture = vec![0u32; capacity as usize];
        self.fold_into(layout, range, order, &mut texture)?;
        Ok(texture)
    }

    /// Folds `range` of the input into a caller-owned texture of side `2^order`.
    pub fn fold_into(
        &self,
        layout: Layout,
        range: Range<usize>,
        order: u32,
        texture: &mut [u32],
    ) -> Result<()> {
        if texture.len() as u64 != 1u64 << (2 * order)
            || layout.pixels_for(range.len() as u64) > texture.len() as u64
            || range.end > self.bytes.len()
        {
            return Err(Error::Usage(format!(
                "bytes {range:?} of {} do not fit a texture of {} pixels at order {order}",
                self.bytes.len(),
                texture.len()
            )));
        }
        let len = range.len();
        let job = |offset| FoldJob {
            layout,
            order,
            offset,
            len,
        };
        let kernel = match layout {
            Layout::Brick => KernelId::FoldBrick,
            Layout::Rts => KernelId::FoldRts,
        };
        match (self.backend.device_for(kernel, len), layout) {
            (Some(g), Layout::Brick) => self.on_device::<FoldBrick>(g, range, job, texture),
            (Some(g), Layout::Rts) => self.on_device::<FoldRts>(g, range, job, texture),
            (None, Layout::Brick) => {
                FoldBrick::run_cpu(&job(range.start), &[self.bytes], texture);
                Ok(())
            }
            (None, Layout::Rts) => {
                FoldRts::run_cpu(&job(range.start), &[self.bytes], texture);
                Ok(())
            }
        }
    }

    /// `each(stats, run)` of every run's byte-class counts, all the byte-class palette needs:
    /// from the statistics kernel where it runs on a GPU, else counted alone on the host (the
    /// other fields then zero), without holding all the counts at once.
    pub fn map_byte_classes<T: Send>(
        &self,
        run_len: usize,
        runs: usize,
        table: &'a EntropyTable,
        each: impl Fn(RunStats, usize) -> T + Sync,
    ) -> Result<Vec<T>> {
        match self
            .backend
            .device_for(KernelId::PreviewStats, self.bytes.len())
        {
            Some(_) => {
                use rayon::prelude::*;
                let stats = self.preview_stats(run_len, runs, table)?;
                Ok(stats
                    .into_par_iter()
                    .enumerate()
                    .map(|(run, s)| each(s, run))
                    .collect())
            }
            None => Ok(crate::kernels::preview_stats::map_class_counts(
                self.bytes, run_len, runs, each,
            )),
        }
    }

    /// Per-run statistics of the whole input (see `kernels::preview_stats`).
    pub fn preview_stats(
        &self,
        run_len: usize,
        runs: usize,
        table: &'a EntropyTable,
    ) -> Result<Vec<RunStats>> {
        let len = self.bytes.len();
        let job = |offset| StatsJob {
            offset,
            len,
            run_len,
            runs,
            table,
        };
        let mut stats = vec![RunStats::default(); runs];
        match self.backend.device_for(KernelId::PreviewStats, len) {
            Some(g) if kernel::stats_fit(run_len, runs, &g.shape()) => {
                self.on_device::<PreviewStats>(g, 0..len, job, &mut stats)?
            }
            _ => PreviewStats::run_cpu(&job(0), &[self.bytes], &mut stats),
        }
        Ok(stats)
    }
}
