//! Which engine does the work: the CPU twins (rayon) or the WGSL kernels (wgpu), chosen by `--backend`.

pub mod gpu;

use crate::error::{Error, Result};
use crate::kernels::preview_stats::{preview_stats, EntropyTable, RunStats};
use crate::kernels::{fold_brick, fold_rts, unfold_brick, unfold_rts, Layout};
pub use gpu::{AdapterDescription, AdapterKind, GpuBackend, GpuOptions};

/// What `--backend` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A hardware GPU when one exists, else the CPU (which beats a software GPU).
    Auto,
    /// wgpu on whatever adapter exists, software ones included; fails without one.
    Gpu,
    /// The multi-threaded CPU twins.
    Cpu,
}

/// Largest side kept on the device for a series of comparisons (two are held at once).
pub const RESIDENT_MAX_BYTES: usize = 1 << 30;

/// A series of comparisons where each B is the next A (memory snapshots taken every second):
/// on the GPU the last B stays on the device, so each snapshot is uploaded once.
#[derive(Default)]
pub struct DiffSeries {
    last: Option<gpu::ResidentBytes>,
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

impl Backend {
    /// Opens the engine `choice` names.
    pub fn select(choice: BackendChoice, options: &GpuOptions) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Backend::Cpu),
            BackendChoice::Gpu => Ok(Backend::Gpu(Box::new(GpuBackend::open(options)?))),
            BackendChoice::Auto if gpu::hardware_adapter_present() => {
                Ok(Backend::Gpu(Box::new(GpuBackend::open(options)?)))
            }
            BackendChoice::Auto => Ok(Backend::Cpu),
        }
    }

    /// `cpu`, `gpu(hw)` or `gpu(sw)`: what did the work.
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(g) if g.adapter().kind == AdapterKind::Hardware => "gpu(hw)",
            Backend::Gpu(_) => "gpu(sw)",
        }
    }

    /// The wgpu adapter, when the GPU path is in use.
    pub fn adapter(&self) -> Option<&AdapterDescription> {
        match self {
            Backend::Cpu => None,
            Backend::Gpu(g) => Some(g.adapter()),
        }
    }

    /// Folds `data` into a new texture of side `2^order` (row-major RGBA words).
    pub fn fold(&self, layout: Layout, data: &[u8], order: u32) -> Result<Vec<u32>> {
        let capacity = 1u64 << (2 * order);
        if layout.pixels_for(data.len() as u64) > capacity {
            return Err(Error::Usage(format!(
                "{} bytes do not fit a texture of side {}",
                data.len(),
                1u64 << order
            )));
        }
        let mut texture = vec![0u32; capacity as usize];
        self.fold_into(layout, data, order, &mut texture)?;
        Ok(texture)
    }

    /// Folds into a caller-owned texture (benchmarks reuse one allocation).
    pub fn fold_into(
        &self,
        layout: Layout,
        data: &[u8],
        order: u32,
        texture: &mut [u32],
    ) -> Result<()> {
        match (self, layout) {
            (Backend::Cpu, Layout::Brick) => fold_brick::fold_brick(data, order, texture),
            (Backend::Cpu, Layout::Rts) => fold_rts::fold_rts(data, order, texture),
            (Backend::Gpu(g), _) => g.fold(layout, data, order, texture)?,
        }
        Ok(())
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
        if layout.pixels_for(out.len() as u64) > texture.len() as u64 {
            return Err(Error::Usage(format!(
                "{} bytes cannot come out of a texture of {} pixels",
                out.len(),
                texture.len()
            )));
        }
        match (self, layout) {
            (Backend::Cpu, Layout::Brick) => unfold_brick::unfold_brick(texture, order, out),
            (Backend::Cpu, Layout::Rts) => unfold_rts::unfold_rts(texture, order, out),
            (Backend::Gpu(g), _) => g.unfold(layout, texture, order, out)?,
        }
        Ok(())
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
        match self {
            Backend::Cpu => Ok(crate::kernels::diff_blocks::diff_blocks(a, b, block_bytes)),
            Backend::Gpu(g) => g.diff_blocks(a, b, block_bytes),
        }
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
        let g = match self {
            Backend::Gpu(g)
                if a.bytes.len().max(b.bytes.len()) <= RESIDENT_MAX_BYTES
                    && block_bytes >= 64
                    && block_bytes.is_power_of_two() =>
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
            .filter(|r| GpuBackend::holds(r, &a.sha256, a.bytes.len(), block_bytes));
        let a_resident = kept.is_some();
        let a_on_device = kept.unwrap_or_else(|| g.upload_resident(a.bytes, a.sha256, block_bytes));
        let b_on_device = g.upload_resident(b.bytes, b.sha256, block_bytes);
        // The device compares whole words; a last partial word of the common prefix would
        // read bytes past it on the longer side, so those (under four) are counted here.
        let whole = common / 4 * 4;
        let mut counts = g.diff_resident(&a_on_device, &b_on_device, whole)?;
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
        series.last = Some(b_on_device);
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
        match self {
            Backend::Cpu => Ok(preview_stats(data, run_len, runs, table)),
            Backend::Gpu(g) => g.preview_stats(data, run_len, runs, table),
        }
    }
}
