//! The wgpu machinery: adapter choice, device limits, pipelines, chunked upload, dispatch and readback.
//!
//! Every kernel runs over chunks that fit the device's storage-buffer binding
//! limit (read from the adapter, never assumed). A fold/unfold chunk is a run
//! of `4^j` curve cells, which is exactly one aligned `2^j x 2^j` square of the
//! texture, so each chunk uploads one contiguous slice and reads back one
//! square. Chunks made only of padding never reach the device.

use crate::curve::d2xy;
use crate::error::{Error, Result};
use crate::kernels::preview_stats::{EntropyTable, RunStats, STATS_WORDS};
use crate::kernels::{CurveParams, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

const CURVE_WGSL: &str = include_str!("../../shaders/curve.wgsl");

/// Every kernel's WGSL source (curve library prepended), by kernel name.
pub const KERNELS: [(&str, &str); 6] = [
    (
        "diff_blocks",
        include_str!("../../shaders/diff_blocks.wgsl"),
    ),
    ("fold_brick", include_str!("../../shaders/fold_brick.wgsl")),
    ("fold_rts", include_str!("../../shaders/fold_rts.wgsl")),
    (
        "unfold_brick",
        include_str!("../../shaders/unfold_brick.wgsl"),
    ),
    ("unfold_rts", include_str!("../../shaders/unfold_rts.wgsl")),
    (
        "preview_stats",
        include_str!("../../shaders/preview_stats.wgsl"),
    ),
];

/// The full WGSL module of one kernel, as the device compiles it.
pub fn kernel_source(kernel_wgsl: &str) -> String {
    format!("{CURVE_WGSL}\n{kernel_wgsl}")
}

/// Whether the adapter is real silicon or a software rasteriser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// A hardware GPU (discrete, integrated or virtual).
    Hardware,
    /// llvmpipe, lavapipe, SwiftShader: correct, but slower than the CPU path.
    Software,
}

/// What the caller may tune about the GPU path.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Cap on one chunk's buffer size in bytes (tests force small chunks).
    pub max_chunk_bytes: Option<u64>,
}

/// Name, driver and kind of the adapter that did the work.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterDescription {
    pub name: String,
    pub driver: String,
    pub backend: String,
    pub kind: AdapterKind,
}

fn classify(info: &wgpu::AdapterInfo) -> AdapterKind {
    let name = info.name.to_ascii_lowercase();
    let software = info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "softpipe"]
            .iter()
            .any(|s| name.contains(s));
    if software {
        AdapterKind::Software
    } else {
        AdapterKind::Hardware
    }
}

fn preference(info: &wgpu::AdapterInfo) -> u8 {
    match (classify(info), info.device_type) {
        (AdapterKind::Hardware, wgpu::DeviceType::DiscreteGpu) => 0,
        (AdapterKind::Hardware, wgpu::DeviceType::IntegratedGpu) => 1,
        (AdapterKind::Hardware, _) => 2,
        (AdapterKind::Software, _) => 3,
    }
}

fn instance() -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::VULKAN;
    // Validation layers are rarely installed and slow every dispatch; keep
    // them opt-in through WGPU_* environment variables.
    descriptor.flags = wgpu::InstanceFlags::empty().with_env();
    wgpu::Instance::new(descriptor)
}

/// All adapters wgpu can see, best first.
fn adapters() -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::VULKAN));
    adapters.sort_by_key(|a| preference(&a.get_info()));
    adapters
}

/// True when a hardware GPU is present (what `--backend auto` asks).
pub fn hardware_adapter_present() -> bool {
    adapters()
        .first()
        .is_some_and(|a| classify(&a.get_info()) == AdapterKind::Hardware)
}

struct Pipelines {
    by_name: Vec<(&'static str, wgpu::ComputePipeline)>,
}

impl Pipelines {
    fn get(&self, name: &str) -> &wgpu::ComputePipeline {
        &self
            .by_name
            .iter()
            .find(|(n, _)| *n == name)
            .expect("every kernel is compiled at start-up")
            .1
    }
}

/// A texture cut into chunks: runs of `block_cells` curve cells, each one
/// aligned `block_side` square of the texture.
struct ChunkGrid {
    order: u32,
    side: usize,
    block_side: usize,
    block_cells: usize,
}

impl ChunkGrid {
    /// Top-left pixel of the square holding the chunk that starts at cell `base`.
    fn origin(&self, base: usize) -> (usize, usize) {
        let (x, y) = d2xy(self.order, base as u64);
        let mask = !(self.block_side - 1);
        (x as usize & mask, y as usize & mask)
    }

    /// Texture index ranges of the square's rows, top first.
    fn rows(&self, base: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let (ox, oy) = self.origin(base);
        (0..self.block_side).map(move |r| {
            let at = (oy + r) * self.side + ox;
            at..at + self.block_side
        })
    }

    /// The shader parameters for the chunk starting at cell `base`.
    fn params(&self, base: usize, valid: u32, row_threads: u32) -> CurveParams {
        let (ox, oy) = self.origin(base);
        CurveParams {
            order: self.order,
            origin_x: ox as u32,
            origin_y: oy as u32,
            block_side: self.block_side as u32,
            base: base as u32,
            valid,
            row_threads,
            _pad: 0,
        }
    }
}

/// An open device with the kernels compiled.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterDescription,
    max_chunk_bytes: u64,
    max_groups_per_dimension: u32,
    pipelines: Pipelines,
    dispatches: AtomicU64,
    /// Input bytes copied to the device so far.
    uploaded: AtomicU64,
    uncaptured: Arc<Mutex<Option<String>>>,
}

/// Bytes kept on the device between comparisons, in the chunks `diff_blocks` binds, so a
/// series of snapshots uploads each once: compared as B, then as A of the next.
pub struct ResidentBytes {
    /// What the bytes are (their SHA-256), to know a later A is this B.
    sha256: [u8; 32],
    len: usize,
    block_bytes: usize,
    chunk_bytes: usize,
    chunks: Vec<wgpu::Buffer>,
}

impl GpuBackend {
    /// Opens the best adapter (hardware first) with its own limits, or says why not.
    pub fn open(options: &GpuOptions) -> Result<Self> {
        let adapter = adapters().into_iter().next().ok_or_else(|| {
            Error::Gpu(
                "no wgpu adapter found: install a Vulkan driver (Debian: mesa-vulkan-drivers \
                 gives the lavapipe software adapter) or use --backend cpu"
                    .into(),
            )
        })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("foundry-gpu"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("{}: cannot open device: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            *sink.lock().expect("error sink") = Some(e.to_string());
        }));
        let device_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_chunk_bytes = options
            .max_chunk_bytes
            .map_or(device_limit, |cap| cap.min(device_limit))
            .max(64);
        let by_name = KERNELS
            .iter()
            .map(|(name, wgsl)| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(kernel_source(wgsl).into()),
                });
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                });
                (*name, pipeline)
            })
            .collect();
        let backend = GpuBackend {
            device,
            queue,
            adapter: AdapterDescription {
                name: info.name.clone(),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                backend: format!("{:?}", info.backend),
                kind: classify(&info),
            },
            max_chunk_bytes,
            max_groups_per_dimension: limits.max_compute_workgroups_per_dimension,
            pipelines: Pipelines { by_name },
            dispatches: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            uncaptured,
        };
        backend.check_uncaptured()?;
        Ok(backend)
    }

    /// The adapter doing the work.
    pub fn adapter(&self) -> &AdapterDescription {
        &self.adapter
    }

    /// Compute dispatches submitted so far (proof that wgpu ran the work).
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches.load(Ordering::Relaxed)
    }

    /// Input bytes uploaded so far (proof that a resident snapshot was not sent again).
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Largest buffer one chunk may bind.
    pub fn max_chunk_bytes(&self) -> u64 {
        self.max_chunk_bytes
    }

    fn check_uncaptured(&self) -> Result<()> {
        match self.uncaptured.lock().expect("error sink").take() {
            Some(message) => Err(Error::Gpu(format!("{}: {message}", self.adapter.name))),
            None => Ok(()),
        }
    }

    /// Order of the largest square chunk whose texels (and source) fit one binding.
    fn chunk_order(&self, order: u32) -> u32 {
        let mut j = order;
        while j > 0 && (4u64 << (2 * j)) > self.max_chunk_bytes {
            j -= 1;
        }
        j
    }

    fn storage_buffer(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.uploaded
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // Bindings must be non-empty and whole words.
        let mut padded;
        let contents = if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// Runs `kernel` once: binding 0 is `params`, then `inputs`, then an output of
    /// `output_words` words, which is read back.
    fn dispatch(
        &self,
        kernel: &str,
        params: &[u8],
        inputs: &[&[u8]],
        output_words: usize,
        groups: (u32, u32),
    ) -> Result<Vec<u32>> {
        let input_buffers: Vec<_> = inputs
            .iter()
            .map(|b| self.storage_buffer(kernel, b))
            .collect();
        let bound: Vec<&wgpu::Buffer> = input_buffers.iter().collect();
        self.dispatch_on(kernel, params, &bound, output_words, groups)
    }

    /// [`Self::dispatch`] on input buffers already on the device.
    fn dispatch_on(
        &self,
        kernel: &str,
        params: &[u8],
        input_buffers: &[&wgpu::Buffer],
        output_words: usize,
        groups: (u32, u32),
    ) -> Result<Vec<u32>> {
        let scope_oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let scope_validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let output_bytes = (output_words.max(1) * 4) as u64;
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: params,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let output = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("output"),
            size: output_bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: output_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pipeline = self.pipelines.get(kernel);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, buffer) in input_buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        entries.push(wgpu::BindGroupEntry {
            binding: input_buffers.len() as u32 + 1,
            resource: output.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(kernel),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0.max(1), groups.1.max(1), 1);
        }
        encoder.copy_buffer_to_buffer(&output, 0, &readback, 0, output_bytes);
        self.queue.submit([encoder.finish()]);
        self.dispatches.fetch_add(1, Ordering::Relaxed);

        let (tx, rx) = std::sync::mpsc::channel();
        readback.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("{}: {e}", self.adapter.name)))?;
        for scope in [scope_validation, scope_oom] {
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(Error::Gpu(format!("{}: {kernel}: {e}", self.adapter.name)));
            }
        }
        self.check_uncaptured()?;
        rx.recv()
            .map_err(|_| Error::Gpu(format!("{}: readback never completed", self.adapter.name)))?
            .map_err(|e| Error::Gpu(format!("{}: readback failed: {e}", self.adapter.name)))?;
        let words = {
            let view = readback
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("{}: readback: {e}", self.adapter.name)))?;
            bytemuck::pod_collect_to_vec::<u8, u32>(&view[..output_words * 4])
        };
        readback.unmap();
        Ok(words)
    }

    /// Splits a thread count into a 2-D grid of `size`-wide groups within the device's limit.
    fn flat_grid(&self, threads: u64, size: u64) -> ((u32, u32), u32) {
        let groups = threads.div_ceil(size).max(1);
        let max = u64::from(self.max_groups_per_dimension);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        ((x as u32, y as u32), (x * size) as u32)
    }

    /// How a texture of `order` splits into chunks that fit one binding.
    fn chunk_grid(&self, order: u32) -> ChunkGrid {
        let block_side = 1usize << self.chunk_order(order);
        ChunkGrid {
            order,
            side: 1 << order,
            block_side,
            block_cells: block_side * block_side,
        }
    }

    /// GPU twin of `fold_brick` / `fold_rts`: folds `data` into `texture` (side `2^order`).
    pub fn fold(&self, layout: Layout, data: &[u8], order: u32, texture: &mut [u32]) -> Result<()> {
        let grid = self.chunk_grid(order);
        let bpp = layout.bytes_per_pixel();
        let kernel = match layout {
            Layout::Brick => "fold_brick",
            Layout::Rts => "fold_rts",
        };
        for chunk in 0..grid.side * grid.side / grid.block_cells {
            let base = chunk * grid.block_cells;
            let start = (base * bpp).min(data.len());
            let end = ((base + grid.block_cells) * bpp).min(data.len());
            let texels = if start == end {
                vec![layout.padding_pixel(); grid.block_cells]
            } else {
                let params = grid.params(base, layout.pixels_for((end - start) as u64) as u32, 0);
                let groups = grid.block_side.div_ceil(8) as u32;
                self.dispatch(
                    kernel,
                    bytemuck::bytes_of(&params),
                    &[&data[start..end]],
                    grid.block_cells,
                    (groups, groups),
                )?
            };
            for (at, texel_row) in grid.rows(base).zip(texels.chunks_exact(grid.block_side)) {
                texture[at].copy_from_slice(texel_row);
            }
        }
        Ok(())
    }

    /// GPU twin of `unfold_brick` / `unfold_rts`: reads `out.len()` bytes back from `texture`.
    pub fn unfold(
        &self,
        layout: Layout,
        texture: &[u32],
        order: u32,
        out: &mut [u8],
    ) -> Result<()> {
        let grid = self.chunk_grid(order);
        let kernel = match layout {
            Layout::Brick => "unfold_brick",
            Layout::Rts => "unfold_rts",
        };
        let chunk_bytes = grid.block_cells * layout.bytes_per_pixel();
        for (chunk, out_chunk) in out.chunks_mut(chunk_bytes).enumerate() {
            let base = chunk * grid.block_cells;
            let texels: Vec<u32> = grid
                .rows(base)
                .flat_map(|at| &texture[at])
                .copied()
                .collect();
            // Brick threads pack four pixels into a word; rts threads move one pixel each.
            let valid = layout.pixels_for(out_chunk.len() as u64) as u32;
            let words = out_chunk.len().div_ceil(4);
            let (groups, row_threads) = self.flat_grid(words as u64, 64);
            let params = grid.params(base, valid, row_threads);
            let result = self.dispatch(
                kernel,
                bytemuck::bytes_of(&params),
                &[bytemuck::cast_slice(&texels)],
                words,
                groups,
            )?;
            let bytes: &[u8] = bytemuck::cast_slice(&result);
            out_chunk.copy_from_slice(&bytes[..out_chunk.len()]);
        }
        Ok(())
    }

    /// GPU twin of `kernels::diff_blocks`: differing bytes and words per block, in chunks of
    /// whole blocks.
    pub fn diff_blocks(&self, a: &[u8], b: &[u8], block_bytes: usize) -> Result<Vec<u32>> {
        let blocks = a.len().div_ceil(block_bytes);
        let blocks_per_chunk = self.diff_chunk_bytes(block_bytes) / block_bytes;
        let mut counts = Vec::with_capacity(blocks * 2);
        let mut first = 0;
        while first < blocks {
            let n = blocks_per_chunk.min(blocks - first);
            let start = first * block_bytes;
            let end = ((first + n) * block_bytes).min(a.len());
            let ((gx, gy), _) = self.flat_grid(n as u64, 1);
            let params: [u32; 4] = [block_bytes as u32, (end - start) as u32, n as u32, gx];
            counts.extend(self.dispatch(
                "diff_blocks",
                bytemuck::cast_slice(&params),
                &[&a[start..end], &b[start..end]],
                n * 2,
                (gx, gy),
            )?);
            first += n;
        }
        Ok(counts)
    }

    /// Bytes per `diff_blocks` chunk: whole blocks within one binding.
    fn diff_chunk_bytes(&self, block_bytes: usize) -> usize {
        (self.max_chunk_bytes as usize / block_bytes).max(1) * block_bytes
    }

    /// Whether `resident` holds the bytes with `sha256`, `len` long, in `block_bytes` blocks.
    pub fn holds(
        resident: &ResidentBytes,
        sha256: &[u8; 32],
        len: usize,
        block_bytes: usize,
    ) -> bool {
        resident.sha256 == *sha256 && resident.len == len && resident.block_bytes == block_bytes
    }

    /// Uploads `bytes` (whose SHA-256 is `sha256`) to stay on the device for
    /// [`Self::diff_resident`] with `block_bytes` blocks.
    pub fn upload_resident(
        &self,
        bytes: &[u8],
        sha256: [u8; 32],
        block_bytes: usize,
    ) -> ResidentBytes {
        let chunk_bytes = self.diff_chunk_bytes(block_bytes);
        ResidentBytes {
            sha256,
            len: bytes.len(),
            block_bytes,
            chunk_bytes,
            chunks: bytes
                .chunks(chunk_bytes)
                .map(|chunk| self.storage_buffer("resident", chunk))
                .collect(),
        }
    }

    /// `diff_blocks` of the first `common` bytes of two resident byte strings, uploading
    /// nothing but the parameters. `common` must be a multiple of 4 (a partial last word would
    /// read bytes past it) and within both.
    pub fn diff_resident(
        &self,
        a: &ResidentBytes,
        b: &ResidentBytes,
        common: usize,
    ) -> Result<Vec<u32>> {
        let block_bytes = a.block_bytes;
        assert!(
            b.block_bytes == block_bytes && common.is_multiple_of(4) && common <= a.len.min(b.len),
            "resident diff of mismatched snapshots"
        );
        let blocks_per_chunk = a.chunk_bytes / block_bytes;
        let blocks = common.div_ceil(block_bytes);
        let mut counts = Vec::with_capacity(blocks * 2);
        for (i, (x, y)) in a.chunks.iter().zip(&b.chunks).enumerate() {
            let start = i * a.chunk_bytes;
            if start >= common {
                break;
            }
            let end = (start + a.chunk_bytes).min(common);
            let n = (end - start).div_ceil(block_bytes).min(blocks_per_chunk);
            let ((gx, gy), _) = self.flat_grid(n as u64, 1);
            let params: [u32; 4] = [block_bytes as u32, (end - start) as u32, n as u32, gx];
            counts.extend(self.dispatch_on(
                "diff_blocks",
                bytemuck::cast_slice(&params),
                &[x, y],
                n * 2,
                (gx, gy),
            )?);
        }
        Ok(counts)
    }

    /// GPU twin of `preview_stats`: stats of `runs` runs of `run_len` bytes of `data`.
    pub fn preview_stats(
        &self,
        data: &[u8],
        run_len: usize,
        runs: usize,
        table: &EntropyTable,
    ) -> Result<Vec<RunStats>> {
        // Chunks hold whole runs, a multiple of four of them so every chunk
        // starts on a word and the channel of byte i stays i % 4.
        let runs_per_chunk = ((self.max_chunk_bytes as usize / run_len) & !3).max(4);
        let mut stats = Vec::with_capacity(runs);
        let mut first_run = 0;
        while first_run < runs {
            let chunk_runs = runs_per_chunk.min(runs - first_run);
            let start = (first_run * run_len).min(data.len());
            let end = ((first_run + chunk_runs) * run_len).min(data.len());
            if start == end {
                stats.resize(first_run + chunk_runs, RunStats::default());
            } else {
                let ((gx, gy), _) = self.flat_grid(chunk_runs as u64, 1);
                let params: [u32; 8] = [
                    run_len as u32,
                    (end - start) as u32,
                    chunk_runs as u32,
                    gx,
                    table.shift,
                    0,
                    0,
                    0,
                ];
                let words = self.dispatch(
                    "preview_stats",
                    bytemuck::cast_slice(&params),
                    &[&data[start..end], bytemuck::cast_slice(&table.nlogn)],
                    chunk_runs * STATS_WORDS,
                    (gx, gy),
                )?;
                stats.extend_from_slice(bytemuck::cast_slice(&words));
            }
            first_run += chunk_runs;
        }
        Ok(stats)
    }
}
