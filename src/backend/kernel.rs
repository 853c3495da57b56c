//! Every kernel declared once: its WGSL, typed parameters, bindings, CPU twin, and how its work splits into device dispatches.
//!
//! Adding a kernel is one `impl Kernel` here (plus its WGSL file and twin): the engine
//! ([`super::gpu::GpuBackend::run`]) runs any declared kernel on either side, and the test
//! suite checks each parameter struct against the shader's with naga.

use crate::curve::d2xy;
use crate::kernels::preview_stats::{EntropyTable, RunStats, STATS_WORDS};
use crate::kernels::{self, CurveParams, Layout};
use std::ops::Range;

const CURVE_WGSL: &str = include_str!("../../shaders/curve.wgsl");

/// The kernels the engine knows, in pipeline-table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelId {
    FoldBrick,
    FoldRts,
    UnfoldBrick,
    UnfoldRts,
    DiffBlocks,
    PreviewStats,
}

impl KernelId {
    pub const ALL: [KernelId; 6] = [
        KernelId::FoldBrick,
        KernelId::FoldRts,
        KernelId::UnfoldBrick,
        KernelId::UnfoldRts,
        KernelId::DiffBlocks,
        KernelId::PreviewStats,
    ];

    /// The kernel's name: its WGSL file, its twin's module, its label on the device.
    pub fn name(self) -> &'static str {
        match self {
            KernelId::FoldBrick => "fold_brick",
            KernelId::FoldRts => "fold_rts",
            KernelId::UnfoldBrick => "unfold_brick",
            KernelId::UnfoldRts => "unfold_rts",
            KernelId::DiffBlocks => "diff_blocks",
            KernelId::PreviewStats => "preview_stats",
        }
    }

    /// The kernel's own WGSL (without the curve library).
    pub fn wgsl(self) -> &'static str {
        match self {
            KernelId::FoldBrick => include_str!("../../shaders/fold_brick.wgsl"),
            KernelId::FoldRts => include_str!("../../shaders/fold_rts.wgsl"),
            KernelId::UnfoldBrick => include_str!("../../shaders/unfold_brick.wgsl"),
            KernelId::UnfoldRts => include_str!("../../shaders/unfold_rts.wgsl"),
            KernelId::DiffBlocks => include_str!("../../shaders/diff_blocks.wgsl"),
            KernelId::PreviewStats => include_str!("../../shaders/preview_stats.wgsl"),
        }
    }

    /// The full module the device compiles: the curve library, then the kernel.
    pub fn source(self) -> String {
        format!("{CURVE_WGSL}\n{}", self.wgsl())
    }

    /// The Rust side of the kernel's binding-0 struct, for the naga check.
    pub fn params_layout(self) -> ParamsLayout {
        match self {
            KernelId::FoldBrick
            | KernelId::FoldRts
            | KernelId::UnfoldBrick
            | KernelId::UnfoldRts => CurveParams::LAYOUT,
            KernelId::DiffBlocks => DiffParams::LAYOUT,
            KernelId::PreviewStats => StatsParams::LAYOUT,
        }
    }

    /// Read-only storage bindings after the parameters (the output binding follows them).
    pub fn input_bindings(self) -> usize {
        match self {
            KernelId::FoldBrick
            | KernelId::FoldRts
            | KernelId::DiffBlocks
            | KernelId::PreviewStats => 2,
            KernelId::UnfoldBrick | KernelId::UnfoldRts => 1,
        }
    }
}

/// A Rust parameter struct as the shader must see it: the WGSL struct's name, its size, and
/// each field's name and byte offset, in order.
#[derive(Clone, Copy, Debug)]
pub struct ParamsLayout {
    pub wgsl_struct: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

/// A `bytemuck` parameter block bound at binding 0 as a uniform.
pub trait ShaderParams: bytemuck::Pod {
    const LAYOUT: ParamsLayout;
}

macro_rules! params_layout {
    ($ty:ty, $wgsl:literal, [$($field:ident),* $(,)?]) => {
        impl ShaderParams for $ty {
            const LAYOUT: ParamsLayout = ParamsLayout {
                wgsl_struct: $wgsl,
                size: std::mem::size_of::<$ty>(),
                fields: &[$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
            };
        }
    };
}

params_layout!(
    CurveParams,
    "CurveParams",
    [
        order,
        origin_x,
        origin_y,
        block_side,
        base,
        valid,
        row_threads,
        _pad
    ]
);

/// `diff_blocks`' parameters (`DiffParams` in `shaders/diff_blocks.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DiffParams {
    pub block_bytes: u32,
    pub valid_bytes: u32,
    pub blocks: u32,
    pub groups_x: u32,
}
params_layout!(
    DiffParams,
    "DiffParams",
    [block_bytes, valid_bytes, blocks, groups_x]
);

/// `preview_stats`' parameters (`StatsParams` in `shaders/preview_stats.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StatsParams {
    pub run_len: u32,
    pub valid_bytes: u32,
    pub runs: u32,
    pub groups_x: u32,
    pub shift: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}
params_layout!(
    StatsParams,
    "StatsParams",
    [
        run_len,
        valid_bytes,
        runs,
        groups_x,
        shift,
        pad0,
        pad1,
        pad2
    ]
);

/// What a device offers one call: the input segment (a power of two: no chunk a plan makes
/// straddles two), the largest output one dispatch may bind, and the grid limit.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DeviceShape {
    pub segment_bytes: usize,
    pub max_output_bytes: usize,
    pub max_groups_per_dimension: u32,
    /// What a storage binding's offset must be a multiple of.
    pub binding_alignment: usize,
}

impl DeviceShape {
    /// Splits a thread count into a 2-D grid of `size`-wide groups within the limit; returns
    /// the grid and the threads of one grid row.
    pub fn flat_grid(&self, threads: u64, size: u64) -> ((u32, u32), u32) {
        let groups = threads.div_ceil(size).max(1);
        let max = u64::from(self.max_groups_per_dimension);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        ((x as u32, y as u32), (x * size) as u32)
    }
}

/// Where one dispatch reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes `range` of the call's resident input `index` (uploaded once, before the call).
    Resident { index: usize, range: Range<usize> },
    /// The call's constant table `index`, uploaded once per call.
    Constant(usize),
    /// Bytes the kernel gathers on the host for this dispatch ([`Kernel::host_input`]).
    Host,
}

/// Where a dispatch's output goes in the call's output, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The first `len` bytes of the output, at byte `at`.
    Linear { at: usize, len: usize },
    /// A `block_side` square of 4-byte texels at `origin` in a texture `side` pixels wide.
    Square {
        side: usize,
        origin: (usize, usize),
        block_side: usize,
    },
}

/// What one dispatch does: run the kernel, or fill its placement with a word (a chunk made
/// only of padding never reaches the device).
#[derive(Clone, Debug)]
pub enum Work<P> {
    Run {
        params: P,
        inputs: Vec<Input>,
        output_words: usize,
        groups: (u32, u32),
    },
    Fill(u32),
}

/// One step of a call's plan.
#[derive(Clone, Debug)]
pub struct Dispatch<P> {
    pub work: Work<P>,
    pub place: Placement,
}

/// A kernel declared once: the engine plans, uploads, dispatches and reads back any of these.
pub trait Kernel {
    const ID: KernelId;
    type Params: ShaderParams;
    /// What one call asks for.
    type Job<'a>;
    /// The element of the call's output.
    type Out: bytemuck::Pod;

    /// Elements of the whole output.
    fn output_len(job: &Self::Job<'_>) -> usize;
    /// The CPU twin: the same bytes the plan's dispatches produce.
    fn run_cpu(job: &Self::Job<'_>, inputs: &[&[u8]], out: &mut [Self::Out]);
    /// The device's work, in dispatches over `input_lens` resident bytes.
    fn plan(
        job: &Self::Job<'_>,
        input_lens: &[usize],
        shape: &DeviceShape,
    ) -> Vec<Dispatch<Self::Params>>;
    /// Constant tables uploaded once per call (`Input::Constant(i)`).
    fn constants<'j>(_job: &'j Self::Job<'_>) -> Vec<&'j [u8]> {
        Vec::new()
    }
    /// The bytes of an `Input::Host` of dispatch `index`.
    fn host_input(_job: &Self::Job<'_>, _dispatch: &Dispatch<Self::Params>) -> Vec<u8> {
        Vec::new()
    }
}

/// A texture of side `2^order` cut into squares of `4^j` curve cells, each one contiguous
/// run of source bytes, so that one chunk's texels and source fit one binding.
#[derive(Clone, Copy, Debug)]
pub struct ChunkGrid {
    pub order: u32,
    pub side: usize,
    pub block_side: usize,
    pub block_cells: usize,
}

impl ChunkGrid {
    /// The largest square chunk whose texels fit `max_output_bytes` and whose source
    /// (`bytes_per_pixel` per cell) fits one input segment.
    pub fn new(order: u32, bytes_per_pixel: usize, shape: &DeviceShape) -> Self {
        let mut j = order;
        while j > 0
            && ((4usize << (2 * j)) > shape.max_output_bytes
                || (bytes_per_pixel << (2 * j)) > shape.segment_bytes)
        {
            j -= 1;
        }
        let block_side = 1usize << j;
        ChunkGrid {
            order,
            side: 1 << order,
            block_side,
            block_cells: block_side * block_side,
        }
    }

    pub fn chunks(&self) -> usize {
        self.side * self.side / self.block_cells
    }

    /// Top-left pixel of the square holding the chunk that starts at cell `base`.
    pub fn origin(&self, base: usize) -> (usize, usize) {
        let (x, y) = d2xy(self.order, base as u64);
        let mask = !(self.block_side - 1);
        (x as usize & mask, y as usize & mask)
    }

    pub fn square(&self, base: usize) -> Placement {
        Placement::Square {
            side: self.side,
            origin: self.origin(base),
            block_side: self.block_side,
        }
    }

    /// The shader parameters for the chunk starting at cell `base`.
    pub fn params(&self, base: usize, valid: u32, row_threads: u32) -> CurveParams {
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

/// A fold of `len` bytes at `offset` of the resident input into a texture of `order`.
#[derive(Clone, Copy, Debug)]
pub struct FoldJob {
    pub layout: Layout,
    pub order: u32,
    pub offset: usize,
    pub len: usize,
}

fn plan_fold(job: &FoldJob, shape: &DeviceShape) -> Vec<Dispatch<CurveParams>> {
    let bpp = job.layout.bytes_per_pixel();
    let grid = ChunkGrid::new(job.order, bpp, shape);
    (0..grid.chunks())
        .map(|chunk| {
            let base = chunk * grid.block_cells;
            let start = (base * bpp).min(job.len);
            let end = ((base + grid.block_cells) * bpp).min(job.len);
            let work = if start == end {
                Work::Fill(job.layout.padding_pixel())
            } else {
                // 16x16 workgroups: one curve tile each (see `tile_of` in curve.wgsl).
                let groups = grid.block_side.div_ceil(16) as u32;
                Work::Run {
                    params: grid.params(
                        base,
                        job.layout.pixels_for((end - start) as u64) as u32,
                        0,
                    ),
                    inputs: vec![
                        Input::Resident {
                            index: 0,
                            range: job.offset + start..job.offset + end,
                        },
                        Input::Constant(0),
                    ],
                    output_words: grid.block_cells,
                    groups: (groups, groups),
                }
            };
            Dispatch {
                work,
                place: grid.square(base),
            }
        })
        .collect()
}

/// `tile_index[(y << 4) | x] = xy2d(4, x, y)`: the last four levels of the curve, which the
/// fold kernels look up instead of computing (see `xy2d_coarse` in `shaders/curve.wgsl`).
pub fn tile_index_table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|i| crate::curve::xy2d(4, i as u32 & 15, i as u32 >> 4) as u32)
    })
}

/// Declares a fold kernel: the two differ only in their twin and their WGSL.
macro_rules! fold_kernel {
    ($(#[$doc:meta])* $name:ident, $id:ident, $twin:ident) => {
        $(#[$doc])*
        pub struct $name;
        impl Kernel for $name {
            const ID: KernelId = KernelId::$id;
            type Params = CurveParams;
            type Job<'a> = FoldJob;
            type Out = u32;
            fn output_len(job: &FoldJob) -> usize {
                1 << (2 * job.order)
            }
            fn run_cpu(job: &FoldJob, inputs: &[&[u8]], out: &mut [u32]) {
                let data = &inputs[0][job.offset..job.offset + job.len];
                kernels::$twin::$twin(data, job.order, out)
            }
            fn plan(job: &FoldJob, _: &[usize], shape: &DeviceShape) -> Vec<Dispatch<CurveParams>> {
                plan_fold(job, shape)
            }
            fn constants(_: &FoldJob) -> Vec<&[u8]> {
                vec![bytemuck::cast_slice(tile_index_table())]
            }
        }
    };
}

fold_kernel!(
    /// `fold_brick`: one byte per pixel, gray, opaque.
    FoldBrick,
    FoldBrick,
    fold_brick
);
fold_kernel!(
    /// `fold_rts`: four dense bytes per pixel.
    FoldRts,
    FoldRts,
    fold_rts
);

/// An unfold of `len` bytes out of a texture of `order` held on the host.
#[derive(Clone, Copy, Debug)]
pub struct UnfoldJob<'a> {
    pub layout: Layout,
    pub order: u32,
    pub texture: &'a [u32],
    pub len: usize,
}

fn plan_unfold(job: &UnfoldJob, shape: &DeviceShape) -> Vec<Dispatch<CurveParams>> {
    // Texels go up per chunk (gathered from the square's rows), so the chunk is bounded by
    // what one binding holds, as input and as output.
    let grid = ChunkGrid::new(job.order, 4, shape);
    let chunk_bytes = grid.block_cells * job.layout.bytes_per_pixel();
    (0..job.len.div_ceil(chunk_bytes))
        .map(|chunk| {
            let base = chunk * grid.block_cells;
            let at = chunk * chunk_bytes;
            let len = chunk_bytes.min(job.len - at);
            let words = len.div_ceil(4);
            // Brick threads pack four pixels into a word; rts threads move one pixel each.
            let (groups, row_threads) = shape.flat_grid(words as u64, 64);
            Dispatch {
                work: Work::Run {
                    params: grid.params(
                        base,
                        job.layout.pixels_for(len as u64) as u32,
                        row_threads,
                    ),
                    inputs: vec![Input::Host],
                    output_words: words,
                    groups,
                },
                place: Placement::Linear { at, len },
            }
        })
        .collect()
}

fn gather_square(job: &UnfoldJob, dispatch: &Dispatch<CurveParams>) -> Vec<u8> {
    let Work::Run { params, .. } = &dispatch.work else {
        return Vec::new();
    };
    let side = 1usize << job.order;
    let block = params.block_side as usize;
    let (ox, oy) = (params.origin_x as usize, params.origin_y as usize);
    let mut texels = Vec::with_capacity(block * block * 4);
    for row in oy..oy + block {
        let at = row * side + ox;
        texels.extend_from_slice(bytemuck::cast_slice(&job.texture[at..at + block]));
    }
    texels
}

/// Declares an unfold kernel: the two differ only in their twin and their WGSL.
macro_rules! unfold_kernel {
    ($(#[$doc:meta])* $name:ident, $id:ident, $twin:ident) => {
        $(#[$doc])*
        pub struct $name;
        impl Kernel for $name {
            const ID: KernelId = KernelId::$id;
            type Params = CurveParams;
            type Job<'a> = UnfoldJob<'a>;
            type Out = u8;
            fn output_len(job: &Self::Job<'_>) -> usize {
                job.len
            }
            fn run_cpu(job: &Self::Job<'_>, _: &[&[u8]], out: &mut [u8]) {
                kernels::$twin::$twin(job.texture, job.order, out)
            }
            fn plan(job: &Self::Job<'_>, _: &[usize], shape: &DeviceShape) -> Vec<Dispatch<CurveParams>> {
                plan_unfold(job, shape)
            }
            fn host_input(job: &Self::Job<'_>, dispatch: &Dispatch<CurveParams>) -> Vec<u8> {
                gather_square(job, dispatch)
            }
        }
    };
}

unfold_kernel!(
    /// `unfold_brick`: the red channel of each pixel.
    UnfoldBrick,
    UnfoldBrick,
    unfold_brick
);
unfold_kernel!(
    /// `unfold_rts`: the four bytes of each pixel.
    UnfoldRts,
    UnfoldRts,
    unfold_rts
);

/// Per-block comparison of the first `len` bytes of two resident inputs.
#[derive(Clone, Copy, Debug)]
pub struct DiffJob {
    pub block_bytes: usize,
    pub len: usize,
}

/// `diff_blocks`: differing bytes and words per block.
pub struct DiffBlocks;
impl Kernel for DiffBlocks {
    const ID: KernelId = KernelId::DiffBlocks;
    type Params = DiffParams;
    type Job<'a> = DiffJob;
    type Out = u32;
    fn output_len(job: &DiffJob) -> usize {
        job.len.div_ceil(job.block_bytes) * 2
    }
    fn run_cpu(job: &DiffJob, inputs: &[&[u8]], out: &mut [u32]) {
        let counts = kernels::diff_blocks::diff_blocks(
            &inputs[0][..job.len],
            &inputs[1][..job.len],
            job.block_bytes,
        );
        out.copy_from_slice(&counts);
    }
    fn plan(job: &DiffJob, _: &[usize], shape: &DeviceShape) -> Vec<Dispatch<DiffParams>> {
        let blocks_per_chunk = (shape.segment_bytes / job.block_bytes).max(1);
        let chunk_bytes = blocks_per_chunk * job.block_bytes;
        (0..job.len.div_ceil(chunk_bytes))
            .map(|chunk| {
                let start = chunk * chunk_bytes;
                let end = (start + chunk_bytes).min(job.len);
                let blocks = (end - start).div_ceil(job.block_bytes);
                let ((gx, gy), _) = shape.flat_grid(blocks as u64, 1);
                let range = start..end;
                Dispatch {
                    work: Work::Run {
                        params: DiffParams {
                            block_bytes: job.block_bytes as u32,
                            valid_bytes: (end - start) as u32,
                            blocks: blocks as u32,
                            groups_x: gx,
                        },
                        inputs: vec![
                            Input::Resident {
                                index: 0,
                                range: range.clone(),
                            },
                            Input::Resident { index: 1, range },
                        ],
                        output_words: blocks * 2,
                        groups: (gx, gy),
                    },
                    place: Placement::Linear {
                        at: chunk * blocks_per_chunk * 8,
                        len: blocks * 8,
                    },
                }
            })
            .collect()
    }
}

/// Statistics of `runs` runs of `run_len` bytes of the resident input from `offset`.
#[derive(Clone, Copy, Debug)]
pub struct StatsJob<'a> {
    pub offset: usize,
    pub len: usize,
    pub run_len: usize,
    pub runs: usize,
    pub table: &'a EntropyTable,
}

/// Runs per `preview_stats` dispatch: a power of two of whole runs (at least four, so every
/// chunk starts on a word and the channel of byte i stays i % 4) within one segment, and
/// enough of them that every chunk after the first starts where a binding may.
fn stats_runs_per_chunk(run_len: usize, runs: usize, shape: &DeviceShape) -> usize {
    let mut runs_per_chunk = 4usize;
    while runs_per_chunk < runs
        && (runs_per_chunk * run_len < shape.binding_alignment
            || (runs_per_chunk * 2 * run_len <= shape.segment_bytes
                && runs_per_chunk * 2 * STATS_WORDS * 4 <= shape.max_output_bytes))
    {
        runs_per_chunk *= 2;
    }
    runs_per_chunk
}

/// Whether the device can take a `preview_stats` call of these runs: each chunk's input
/// within one segment and its output within one binding.
pub fn stats_fit(run_len: usize, runs: usize, shape: &DeviceShape) -> bool {
    let per_chunk = stats_runs_per_chunk(run_len, runs, shape);
    per_chunk * run_len <= shape.segment_bytes
        && per_chunk.min(runs) * STATS_WORDS * 4 <= shape.max_output_bytes
}

/// `preview_stats`: byte classes, entropy and channel sums per run.
pub struct PreviewStats;
impl Kernel for PreviewStats {
    const ID: KernelId = KernelId::PreviewStats;
    type Params = StatsParams;
    type Job<'a> = StatsJob<'a>;
    type Out = RunStats;
    fn output_len(job: &Self::Job<'_>) -> usize {
        job.runs
    }
    fn run_cpu(job: &Self::Job<'_>, inputs: &[&[u8]], out: &mut [RunStats]) {
        let data = &inputs[0][job.offset..job.offset + job.len];
        let stats = kernels::preview_stats::preview_stats(data, job.run_len, job.runs, job.table);
        out.copy_from_slice(&stats);
    }
    fn plan(job: &Self::Job<'_>, _: &[usize], shape: &DeviceShape) -> Vec<Dispatch<StatsParams>> {
        let runs_per_chunk = stats_runs_per_chunk(job.run_len, job.runs, shape);
        let mut plan = Vec::new();
        let mut first_run = 0;
        while first_run < job.runs {
            let chunk_runs = runs_per_chunk.min(job.runs - first_run);
            let start = (first_run * job.run_len).min(job.len);
            let end = ((first_run + chunk_runs) * job.run_len).min(job.len);
            let place = Placement::Linear {
                at: first_run * STATS_WORDS * 4,
                len: chunk_runs * STATS_WORDS * 4,
            };
            let work = if start == end {
                Work::Fill(0)
            } else {
                let ((gx, gy), _) = shape.flat_grid(chunk_runs as u64, 1);
                Work::Run {
                    params: StatsParams {
                        run_len: job.run_len as u32,
                        valid_bytes: (end - start) as u32,
                        runs: chunk_runs as u32,
                        groups_x: gx,
                        shift: job.table.shift,
                        ..Default::default()
                    },
                    inputs: vec![
                        Input::Resident {
                            index: 0,
                            range: job.offset + start..job.offset + end,
                        },
                        Input::Constant(0),
                    ],
                    output_words: chunk_runs * STATS_WORDS,
                    groups: (gx, gy),
                }
            };
            plan.push(Dispatch { work, place });
            first_run += chunk_runs;
        }
        plan
    }
    fn constants<'j>(job: &'j Self::Job<'_>) -> Vec<&'j [u8]> {
        vec![bytemuck::cast_slice(&job.table.nlogn)]
    }
}
