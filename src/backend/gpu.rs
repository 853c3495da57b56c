//! The wgpu engine: adapter choice, resident inputs uploaded once through a staging ring, any declared kernel dispatched through a readback ring, bounded device waits.
//!
//! An input goes up once ([`GpuBackend::upload`]) into segments of a power-of-two size
//! that fits one binding, and every kernel of that fold binds ranges of it. A call
//! ([`GpuBackend::run`]) walks the kernel's plan through a ring of pooled slots (uniform,
//! output, mappable readback): while the CPU copies one slot's result straight into the
//! caller's texture, the next slots compute. Every device wait has a limit.

use super::kernel::{DeviceShape, Input, Kernel, KernelId, Placement, Work};
use crate::error::{Error, Result};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Slots in the readback ring: one being read on the host, the others computing.
const READBACK_SLOTS: usize = 3;
/// Slots in the upload ring, and the most one holds.
const STAGING_SLOTS: usize = 3;
const STAGING_SLOT_BYTES: usize = 32 << 20;
/// How long one device wait may take unless `--gpu-timeout` says otherwise.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Smallest binding cap honoured (tests force small ones; the device's own are far larger).
const MIN_CHUNK_BYTES: u64 = 4096;

/// Whether the adapter is real silicon or a software rasteriser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Cap on one binding's size in bytes (tests force small chunks); at least 4 KiB.
    pub max_chunk_bytes: Option<u64>,
    /// Limit on any one device wait (default [`DEFAULT_WAIT_TIMEOUT`]).
    pub wait_timeout: Option<Duration>,
}

/// Name, driver and kind of the adapter that did the work.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// How an adapter is named in reports and in the calibration cache.
pub fn describe(info: &wgpu::AdapterInfo) -> AdapterDescription {
    AdapterDescription {
        name: info.name.clone(),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        backend: format!("{:?}", info.backend),
        kind: classify(info),
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

/// The best adapter wgpu can see (hardware first), enumerated once.
pub fn best_adapter() -> Option<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::VULKAN));
    adapters.sort_by_key(|a| preference(&a.get_info()));
    adapters.into_iter().next()
}

/// True when the best adapter is a hardware GPU.
pub fn hardware_adapter_present() -> bool {
    best_adapter().is_some_and(|a| classify(&a.get_info()) == AdapterKind::Hardware)
}

/// Who runs each kernel on an open device.
#[derive(Clone, Debug)]
pub enum Routing {
    /// Every kernel on the device (`--backend gpu`).
    Everything,
    /// Per kernel and size, from a calibration of this adapter (`--backend auto`).
    Calibrated(super::calibrate::Calibration),
}

/// Bytes uploaded once and kept on the device: segments of a power-of-two size, so no
/// chunk of a plan straddles two. Dropped, its buffers go back to the device's pool.
pub struct DeviceBytes {
    len: usize,
    segment_bytes: usize,
    segments: Vec<wgpu::Buffer>,
    pool: Arc<BufferPool>,
}

impl Drop for DeviceBytes {
    fn drop(&mut self) {
        for buffer in self.segments.drain(..) {
            self.pool.give_back(buffer);
        }
    }
}

/// Idle input buffers kept for the next upload of the same size: allocating device memory
/// costs more than filling it (a snapshot series, a watch, the calibration upload alike).
#[derive(Default)]
struct BufferPool {
    idle: Mutex<Vec<wgpu::Buffer>>,
}

/// Most bytes the pool keeps idle.
const POOL_MAX_BYTES: u64 = 2 << 30;

impl BufferPool {
    fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        let mut idle = self.idle.lock().expect("buffer pool");
        let at = idle.iter().position(|b| b.size() == size)?;
        Some(idle.swap_remove(at))
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let mut idle = self.idle.lock().expect("buffer pool");
        let held: u64 = idle.iter().map(wgpu::Buffer::size).sum();
        if held + buffer.size() <= POOL_MAX_BYTES {
            idle.push(buffer);
        }
    }
}

impl DeviceBytes {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One slot of the upload ring: a mappable buffer and, once handed to the device, the
/// signal that it may be written again.
struct StagingSlot {
    buffer: wgpu::Buffer,
    in_flight: Option<InFlight>,
}

/// One slot of the readback ring, pooled across calls.
struct ReadbackSlot {
    uniform: wgpu::Buffer,
    output: wgpu::Buffer,
    readback: wgpu::Buffer,
    capacity: u64,
    /// The buffer this slot's host input (an unfold's texels) is written to, reused.
    host_input: Option<wgpu::Buffer>,
    pending: Option<(InFlight, Placement, usize)>,
}

/// A submission and the map callback that fires when it is done.
struct InFlight {
    submission: wgpu::SubmissionIndex,
    mapped: Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// What the device has done so far (the upload test counts these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCounters {
    pub dispatches: u64,
    /// Inputs uploaded (a resident input counts once however many kernels read it).
    pub input_uploads: u64,
    pub uploaded_bytes: u64,
    pub read_back_bytes: u64,
}

/// An open device.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterDescription,
    shape: DeviceShape,
    min_offset_alignment: usize,
    pipelines: [OnceLock<wgpu::ComputePipeline>; KernelId::ALL.len()],
    dispatches: AtomicU64,
    input_uploads: AtomicU64,
    uploaded: AtomicU64,
    read_back: AtomicU64,
    wait_timeout: Duration,
    uncaptured: Arc<Mutex<Option<String>>>,
    staging: Mutex<Vec<StagingSlot>>,
    readback: Mutex<Vec<ReadbackSlot>>,
    pool: Arc<BufferPool>,
    routing: Routing,
}

impl GpuBackend {
    /// Opens the best adapter (hardware first) with its own limits, or says why not.
    pub fn open(options: &GpuOptions) -> Result<Self> {
        let adapter = best_adapter().ok_or_else(|| {
            Error::gpu(
                "no wgpu adapter found: install a Vulkan driver (Debian: mesa-vulkan-drivers \
                 gives the lavapipe software adapter) or use --backend cpu",
            )
        })?;
        Self::open_adapter(adapter, options, Routing::Everything)
    }

    /// Opens `adapter`, routing kernels as `routing` says.
    pub fn open_adapter(
        adapter: wgpu::Adapter,
        options: &GpuOptions,
        routing: Routing,
    ) -> Result<Self> {
        if options.wait_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Usage("--gpu-timeout must be more than zero".into()));
        }
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("foundry-gpu"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::gpu_from(format!("{}: cannot open device", info.name), e))?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            *sink.lock().expect("error sink") = Some(e.to_string());
        }));
        let device_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let binding = options
            .max_chunk_bytes
            .map_or(device_limit, |cap| cap.min(device_limit))
            .max(MIN_CHUNK_BYTES);
        // Segments are a power of two so that every power-of-two chunk of a plan lies in one.
        let segment_bytes = 1usize << (63 - binding.leading_zeros());
        let backend = GpuBackend {
            device,
            queue,
            adapter: describe(&info),
            shape: DeviceShape {
                segment_bytes,
                max_output_bytes: binding as usize,
                max_groups_per_dimension: limits.max_compute_workgroups_per_dimension,
                binding_alignment: limits.min_storage_buffer_offset_alignment as usize,
            },
            min_offset_alignment: limits.min_storage_buffer_offset_alignment as usize,
            pipelines: Default::default(),
            dispatches: AtomicU64::new(0),
            input_uploads: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            read_back: AtomicU64::new(0),
            wait_timeout: options.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
            uncaptured,
            staging: Mutex::new(Vec::new()),
            readback: Mutex::new(Vec::new()),
            pool: Arc::default(),
            routing,
        };
        backend.check_uncaptured()?;
        Ok(backend)
    }

    /// The adapter doing the work.
    pub fn adapter(&self) -> &AdapterDescription {
        &self.adapter
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// Whether this device runs `kernel` on `bytes` of input (else its CPU twin does).
    pub fn takes(&self, kernel: KernelId, bytes: usize) -> bool {
        match &self.routing {
            Routing::Everything => true,
            Routing::Calibrated(c) => c.gpu_takes(kernel, bytes as u64),
        }
    }

    /// What the device has done so far.
    pub fn counters(&self) -> DeviceCounters {
        DeviceCounters {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            input_uploads: self.input_uploads.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded.load(Ordering::Relaxed),
            read_back_bytes: self.read_back.load(Ordering::Relaxed),
        }
    }

    /// How calls are cut into dispatches on this device.
    pub fn shape(&self) -> DeviceShape {
        self.shape
    }

    /// What a storage binding's offset must be a multiple of on this device.
    pub fn binding_alignment(&self) -> usize {
        self.min_offset_alignment.max(4)
    }

    fn check_uncaptured(&self) -> Result<()> {
        match self.uncaptured.lock().expect("error sink").take() {
            Some(message) => Err(Error::gpu(format!("{}: {message}", self.adapter.name))),
            None => Ok(()),
        }
    }

    fn pipeline(&self, kernel: KernelId) -> &wgpu::ComputePipeline {
        // Compiled on first use: a fold never pays for the diff kernel.
        self.pipelines[kernel as usize].get_or_init(|| {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.name()),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })
    }

    /// Waits for `submission` within the device-wait limit.
    fn wait(&self, submission: &wgpu::SubmissionIndex, what: &str) -> Result<()> {
        match self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(submission.clone()),
            timeout: Some(self.wait_timeout),
        }) {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => Err(Error::GpuTimeout {
                adapter: self.adapter.name.clone(),
                what: what.to_string(),
                waited: self.wait_timeout,
            }),
            Err(e) => Err(Error::gpu_from(format!("{}: {what}", self.adapter.name), e)),
        }
    }

    /// Waits for an in-flight submission and its map callback. Another thread polling the
    /// same device may be the one running the callback, so the wait goes on (polling)
    /// until it arrives or the limit passes.
    fn settle(&self, in_flight: InFlight, what: &str) -> Result<()> {
        let start = std::time::Instant::now();
        self.wait(&in_flight.submission, what)?;
        loop {
            match in_flight.mapped.try_recv() {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    return Err(Error::gpu_from(
                        format!("{}: {what}: map", self.adapter.name),
                        e,
                    ))
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(Error::gpu(format!(
                        "{}: {what}: the buffer was never mapped",
                        self.adapter.name
                    )))
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            if start.elapsed() > self.wait_timeout {
                return Err(Error::GpuTimeout {
                    adapter: self.adapter.name.clone(),
                    what: format!("{what} (mapping)"),
                    waited: self.wait_timeout,
                });
            }
            let _ = self.device.poll(wgpu::PollType::Poll);
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn map_when_done(
        buffer: &wgpu::Buffer,
        mode: wgpu::MapMode,
        submission: wgpu::SubmissionIndex,
    ) -> InFlight {
        let (tx, rx) = channel();
        buffer.map_async(mode, .., move |r| {
            let _ = tx.send(r);
        });
        InFlight {
            submission,
            mapped: rx,
        }
    }

    /// Uploads `bytes` once; every kernel of the fold then binds ranges of it.
    pub fn upload(&self, bytes: &[u8]) -> Result<DeviceBytes> {
        let segment_bytes = self.shape.segment_bytes;
        let segment_lens: Vec<usize> = if bytes.is_empty() {
            vec![0]
        } else {
            bytes.chunks(segment_bytes).map(<[u8]>::len).collect()
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let segments: Vec<wgpu::Buffer> = segment_lens
            .iter()
            .map(|&len| {
                // Bindings are whole words and never empty; the staging copy zeroes the
                // padding, so a reused buffer holds no stale byte where a kernel looks.
                let size = len.div_ceil(4).max(1) as u64 * 4;
                self.pool.take(size).unwrap_or_else(|| {
                    self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("resident input"),
                        size,
                        // COPY_SRC: the bench copies it on the device to measure bandwidth.
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_DST
                            | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    })
                })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::gpu_from(
                format!(
                    "{}: cannot hold {} bytes on the device",
                    self.adapter.name,
                    bytes.len()
                ),
                e,
            ));
        }
        for (segment, buffer) in segments.iter().enumerate() {
            let start = segment * segment_bytes;
            let end = (start + segment_bytes).min(bytes.len());
            self.stream(&bytes[start..end], buffer)?;
        }
        self.input_uploads.fetch_add(1, Ordering::Relaxed);
        self.uploaded
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.check_uncaptured()?;
        Ok(DeviceBytes {
            len: bytes.len(),
            segment_bytes,
            segments,
            pool: Arc::clone(&self.pool),
        })
    }

    /// Copies `bytes` into `destination` through the staging ring: while the device copies
    /// one slot, the host fills the next.
    fn stream(&self, bytes: &[u8], destination: &wgpu::Buffer) -> Result<()> {
        let mut ring = self.staging.lock().expect("staging ring");
        while ring.len() < STAGING_SLOTS {
            ring.push(StagingSlot {
                buffer: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size: STAGING_SLOT_BYTES as u64,
                    usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: true,
                }),
                in_flight: None,
            });
        }
        let streamed = self.stream_through(&mut ring, bytes, destination);
        if streamed.is_err() {
            // A slot whose map is still pending or half filled is not reused.
            ring.clear();
        }
        streamed
    }

    fn stream_through(
        &self,
        ring: &mut [StagingSlot],
        bytes: &[u8],
        destination: &wgpu::Buffer,
    ) -> Result<()> {
        for (i, piece) in bytes.chunks(STAGING_SLOT_BYTES).enumerate() {
            let slot = &mut ring[i % STAGING_SLOTS];
            if let Some(in_flight) = slot.in_flight.take() {
                self.settle(in_flight, "upload")?;
            }
            let padded = piece.len().div_ceil(4) * 4;
            self.fill_staging(&slot.buffer, piece, padded)?;
            slot.buffer.unmap();
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("upload"),
                });
            let at = (i * STAGING_SLOT_BYTES) as u64;
            encoder.copy_buffer_to_buffer(&slot.buffer, 0, destination, at, padded as u64);
            let submission = self.queue.submit([encoder.finish()]);
            slot.in_flight = Some(Self::map_when_done(
                &slot.buffer,
                wgpu::MapMode::Write,
                submission,
            ));
        }
        Ok(())
    }

    /// Copies `piece` (zero-padded to `padded`) into a mapped staging buffer, in parallel
    /// stripes: one thread's memcpy is slower than the link.
    fn fill_staging(&self, buffer: &wgpu::Buffer, piece: &[u8], padded: usize) -> Result<()> {
        const STRIPE: usize = 4 << 20;
        let map_error = |e| Error::gpu_from(format!("{}: staging", self.adapter.name), e);
        // Mapped ranges start on 8 bytes: whole stripes in parallel, then the padded rest.
        let whole = piece.len() / STRIPE * STRIPE;
        let stripes: Vec<(usize, &[u8])> = piece[..whole]
            .chunks(STRIPE)
            .enumerate()
            .map(|(i, stripe)| (i * STRIPE, stripe))
            .collect();
        in_parallel(&stripes, |&(at, stripe)| -> Result<()> {
            let at = at as u64;
            buffer
                .get_mapped_range_mut(at..at + stripe.len() as u64)
                .map_err(map_error)?
                .copy_from_slice(stripe);
            Ok(())
        })?;
        if padded > whole {
            let mut last = piece[whole..].to_vec();
            last.resize(padded - whole, 0);
            buffer
                .get_mapped_range_mut(whole as u64..padded as u64)
                .map_err(map_error)?
                .copy_from_slice(&last);
        }
        Ok(())
    }

    /// A small table uploaded for one call (not counted as an input).
    fn constant_buffer(&self, bytes: &[u8]) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("constant"),
            size: bytes.len().div_ceil(4).max(1) as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
        self.queue.write_buffer(&buffer, 0, &padded);
        buffer
    }

    /// Makes sure the ring has its slots, each with room for `output_bytes`.
    fn ring_for(&self, ring: &mut Vec<ReadbackSlot>, output_bytes: u64) {
        ring.retain(|slot| slot.capacity >= output_bytes);
        while ring.len() < READBACK_SLOTS {
            let capacity = output_bytes.max(256);
            let buffer = |label, usage| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: capacity,
                    usage,
                    mapped_at_creation: false,
                })
            };
            ring.push(ReadbackSlot {
                uniform: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: 256,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                output: buffer(
                    "output",
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                ),
                readback: buffer(
                    "readback",
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
                capacity,
                host_input: None,
                pending: None,
            });
        }
    }

    /// Runs kernel `K` for `job` over resident `inputs`, writing `out`. With `read_back`
    /// false the results stay on the device (the bench measures the kernel alone).
    pub fn run<K: Kernel>(
        &self,
        job: &K::Job<'_>,
        inputs: &[&DeviceBytes],
        out: &mut [K::Out],
        read_back: bool,
    ) -> Result<()> {
        let lens: Vec<usize> = inputs.iter().map(|d| d.len).collect();
        let plan = K::plan(job, &lens, &self.shape);
        let constants: Vec<wgpu::Buffer> = K::constants(job)
            .iter()
            .map(|c| self.constant_buffer(c))
            .collect();
        let out_bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        let largest = plan
            .iter()
            .filter_map(|d| match &d.work {
                Work::Run { output_words, .. } => Some(*output_words as u64 * 4),
                Work::Fill(_) => None,
            })
            .max()
            .unwrap_or(4);
        let mut ring = self.readback.lock().expect("readback ring");
        self.ring_for(&mut ring, largest);
        let scope_oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let scope_validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut last = None;
        let mut slot_at = 0;
        let result = (|| -> Result<()> {
            for dispatch in &plan {
                let Work::Run {
                    params,
                    inputs: bound,
                    output_words,
                    groups,
                } = &dispatch.work
                else {
                    if let Work::Fill(word) = dispatch.work {
                        fill(out_bytes, &dispatch.place, word);
                    }
                    continue;
                };
                let slot = &mut ring[slot_at % READBACK_SLOTS];
                slot_at += 1;
                if let Some((in_flight, place, len)) = slot.pending.take() {
                    self.settle(in_flight, K::ID.name())?;
                    self.place_from(&slot.readback, &place, len, out_bytes)?;
                }
                self.queue
                    .write_buffer(&slot.uniform, 0, bytemuck::bytes_of(params));
                if bound.contains(&Input::Host) {
                    let bytes = K::host_input(job, dispatch);
                    self.uploaded
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    let size = bytes.len().div_ceil(4).max(1) as u64 * 4;
                    if slot.host_input.as_ref().is_none_or(|b| b.size() != size) {
                        slot.host_input =
                            Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                                label: Some("host input"),
                                size,
                                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                                mapped_at_creation: false,
                            }));
                    }
                    let mut padded = bytes;
                    padded.resize(size as usize, 0);
                    if let Some(buffer) = &slot.host_input {
                        self.queue.write_buffer(buffer, 0, &padded);
                    }
                }
                let output_bytes = *output_words as u64 * 4;
                let bind_group = self.bind(K::ID, slot, bound, inputs, &constants, output_bytes)?;
                let mut encoder =
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some(K::ID.name()),
                        });
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(K::ID.name()),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(self.pipeline(K::ID));
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(groups.0.max(1), groups.1.max(1), 1);
                }
                if read_back {
                    encoder.copy_buffer_to_buffer(&slot.output, 0, &slot.readback, 0, output_bytes);
                }
                let submission = self.queue.submit([encoder.finish()]);
                self.dispatches.fetch_add(1, Ordering::Relaxed);
                if read_back {
                    let in_flight =
                        Self::map_when_done(&slot.readback, wgpu::MapMode::Read, submission);
                    let len = match dispatch.place {
                        Placement::Linear { len, .. } => len,
                        Placement::Square { block_side, .. } => block_side * block_side * 4,
                    };
                    slot.pending = Some((in_flight, dispatch.place.clone(), len));
                } else {
                    last = Some(submission);
                }
            }
            for slot in ring.iter_mut() {
                if let Some((in_flight, place, len)) = slot.pending.take() {
                    self.settle(in_flight, K::ID.name())?;
                    self.place_from(&slot.readback, &place, len, out_bytes)?;
                }
            }
            if let Some(submission) = last {
                self.wait(&submission, K::ID.name())?;
            }
            Ok(())
        })();
        if result.is_err() {
            // A slot left waiting on a failed call is not reused: its buffer may stay mapped.
            ring.clear();
        }
        for scope in [scope_validation, scope_oom] {
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(Error::gpu_from(
                    format!("{}: {}", self.adapter.name, K::ID.name()),
                    e,
                ));
            }
        }
        result?;
        self.check_uncaptured()
    }

    /// The bind group of one dispatch: params, its inputs in order, then its output.
    fn bind(
        &self,
        kernel: KernelId,
        slot: &ReadbackSlot,
        bound: &[Input],
        resident: &[&DeviceBytes],
        constants: &[wgpu::Buffer],
        output_bytes: u64,
    ) -> Result<wgpu::BindGroup> {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: slot.uniform.as_entire_binding(),
        }];
        for (i, input) in bound.iter().enumerate() {
            let resource = match input {
                Input::Resident { index, range } => {
                    let data = resident.get(*index).ok_or_else(|| {
                        Error::gpu(format!("{}: no resident input {index}", kernel.name()))
                    })?;
                    let segment = range.start / data.segment_bytes;
                    let offset = range.start % data.segment_bytes;
                    let buffer = data.segments.get(segment).ok_or_else(|| {
                        Error::gpu(format!("{}: range past the resident input", kernel.name()))
                    })?;
                    let size = (range.end - range.start).div_ceil(4).max(1) * 4;
                    if offset + size > buffer.size() as usize
                        || !offset.is_multiple_of(self.min_offset_alignment)
                    {
                        return Err(Error::gpu(format!(
                            "{}: bytes {range:?} do not fit one aligned segment of the resident input",
                            kernel.name()
                        )));
                    }
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: offset as u64,
                        size: NonZeroU64::new(size as u64),
                    })
                }
                Input::Constant(index) => constants
                    .get(*index)
                    .ok_or_else(|| Error::gpu(format!("{}: no constant {index}", kernel.name())))?
                    .as_entire_binding(),
                Input::Host => slot
                    .host_input
                    .as_ref()
                    .ok_or_else(|| Error::gpu(format!("{}: no host input", kernel.name())))?
                    .as_entire_binding(),
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource,
            });
        }
        entries.push(wgpu::BindGroupEntry {
            binding: bound.len() as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &slot.output,
                offset: 0,
                size: NonZeroU64::new(output_bytes.max(4)),
            }),
        });
        Ok(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &self.pipeline(kernel).get_bind_group_layout(0),
            entries: &entries,
        }))
    }

    /// Copies a mapped readback straight into its place in the caller's output.
    fn place_from(
        &self,
        readback: &wgpu::Buffer,
        place: &Placement,
        len: usize,
        out: &mut [u8],
    ) -> Result<()> {
        {
            let view = readback
                .get_mapped_range(..len.div_ceil(4).max(1) as u64 * 4)
                .map_err(|e| Error::gpu_from(format!("{}: readback", self.adapter.name), e))?;
            place_rows(&view[..len], place, out);
        }
        readback.unmap();
        self.read_back.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Runs one dispatch plan's device work with the results left on the device, timing
    /// nothing itself: the bench wraps it.
    pub fn run_on_device<K: Kernel>(
        &self,
        job: &K::Job<'_>,
        inputs: &[&DeviceBytes],
    ) -> Result<()> {
        let mut scratch = vec![<K::Out as bytemuck::Zeroable>::zeroed(); K::output_len(job)];
        self.run::<K>(job, inputs, &mut scratch, false)
    }

    /// A device buffer of `len` bytes and a mappable one to read it into (the bench's
    /// readback figure, allocated once so that only the transfer is timed).
    pub fn readback_probe(&self, len: usize) -> Result<ReadbackProbe<'_>> {
        let len = len.div_ceil(4).max(1) as u64 * 4;
        let buffer = |label, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: len,
                usage,
                mapped_at_creation: false,
            })
        };
        Ok(ReadbackProbe {
            device: self,
            source: buffer(
                "probe",
                wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            ),
            target: buffer(
                "probe readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            host: vec![0u8; len as usize],
        })
    }

    /// Buffers as large as `data`'s segments, for [`Self::device_copy`].
    pub fn device_copy_target(&self, data: &DeviceBytes) -> Vec<wgpu::Buffer> {
        data.segments
            .iter()
            .map(|segment| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("copy"),
                    size: segment.size(),
                    usage: wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect()
    }

    /// Copies one resident input into `target` on the device and waits: the device's own
    /// memory bandwidth, the bench's limit for kernels.
    pub fn device_copy(&self, data: &DeviceBytes, target: &[wgpu::Buffer]) -> Result<()> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("copy"),
            });
        for (segment, copy) in data.segments.iter().zip(target) {
            encoder.copy_buffer_to_buffer(segment, 0, copy, 0, segment.size());
        }
        let submission = self.queue.submit([encoder.finish()]);
        self.wait(&submission, "device copy")
    }

    /// Waits until the queue is idle (the bench's fence after an upload).
    pub fn finish(&self) -> Result<()> {
        let submission = self.queue.submit([]);
        self.wait(&submission, "queue")
    }
}

/// A readback measured on its own: device buffer, mappable buffer, host buffer.
pub struct ReadbackProbe<'a> {
    device: &'a GpuBackend,
    source: wgpu::Buffer,
    target: wgpu::Buffer,
    host: Vec<u8>,
}

impl ReadbackProbe<'_> {
    /// Copies the device buffer to the mappable one, maps it, and copies it to the host.
    pub fn read(&mut self) -> Result<()> {
        let g = self.device;
        let mut encoder = g
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("probe"),
            });
        encoder.copy_buffer_to_buffer(&self.source, 0, &self.target, 0, self.source.size());
        let submission = g.queue.submit([encoder.finish()]);
        g.settle(
            GpuBackend::map_when_done(&self.target, wgpu::MapMode::Read, submission),
            "readback probe",
        )?;
        {
            let view = self
                .target
                .get_mapped_range(..)
                .map_err(|e| Error::gpu_from("readback probe", e))?;
            let len = self.host.len();
            place_rows(&view, &Placement::Linear { at: 0, len }, &mut self.host);
        }
        self.target.unmap();
        Ok(())
    }
}

/// Copies a dispatch's result into its place, rows in parallel: a texture square's rows are
/// apart in the output, and one thread's copy out of mapped memory is slower than the link.
fn place_rows(result: &[u8], place: &Placement, out: &mut [u8]) {
    const STRIPE: usize = 1 << 20;
    match *place {
        Placement::Linear { at, len } => {
            let pairs: Vec<(&mut [u8], &[u8])> = out[at..at + len]
                .chunks_mut(STRIPE)
                .zip(result[..len].chunks(STRIPE))
                .collect();
            in_parallel_mut(pairs, |(to, from)| to.copy_from_slice(from));
        }
        Placement::Square {
            side,
            origin: (ox, oy),
            block_side,
        } => {
            let row_bytes = block_side * 4;
            let rows: Vec<(&mut [u8], &[u8])> = out
                .chunks_mut(side * 4)
                .skip(oy)
                .take(block_side)
                .zip(result.chunks(row_bytes))
                .map(|(texture_row, row)| (&mut texture_row[ox * 4..ox * 4 + row_bytes], row))
                .collect();
            in_parallel_mut(rows, |(to, from)| to.copy_from_slice(from));
        }
    }
}

/// Threads for the host-side copies: at most the machine's cores, at most one per 4 MiB.
fn copy_threads(bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(bytes.div_ceil(4 << 20)).max(1)
}

// The copies run on scoped threads of their own, not on rayon's pool: they happen while a
// ring's lock is held, and a rayon worker waiting inside a parallel loop may steal another
// fold that then blocks on that same lock, on the same thread, for ever.

/// Runs `work` over `items` on a few scoped threads; the first error wins.
fn in_parallel<T: Sync>(items: &[T], work: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let threads = copy_threads(items.len() << 22);
    if threads == 1 {
        return items.iter().try_for_each(&work);
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| scope.spawn(|| part.iter().try_for_each(&work)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("a copy thread panicked"))
    })
}

/// Copies each `(to, from)` pair on a few scoped threads.
fn in_parallel_mut(mut pairs: Vec<(&mut [u8], &[u8])>, copy: impl Fn((&mut [u8], &[u8])) + Sync) {
    let bytes: usize = pairs.iter().map(|(_, from)| from.len()).sum();
    let threads = copy_threads(bytes);
    if threads == 1 {
        pairs.into_iter().for_each(copy);
        return;
    }
    let per = pairs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        while !pairs.is_empty() {
            let part: Vec<_> = pairs.drain(..per.min(pairs.len())).collect();
            let copy = &copy;
            scope.spawn(move || part.into_iter().for_each(copy));
        }
    });
}

/// Writes `word` over a placement (a chunk of padding).
fn fill(out: &mut [u8], place: &Placement, word: u32) {
    let bytes = word.to_le_bytes();
    let mut paint = |range: std::ops::Range<usize>| {
        for px in out[range].chunks_exact_mut(4) {
            px.copy_from_slice(&bytes);
        }
    };
    match *place {
        Placement::Linear { at, len } => paint(at..at + len),
        Placement::Square {
            side,
            origin: (ox, oy),
            block_side,
        } => {
            for r in 0..block_side {
                let at = ((oy + r) * side + ox) * 4;
                paint(at..at + block_side * 4);
            }
        }
    }
}
