//! foundry-gpu: folds Linux artifacts into Hilbert-curve textures ("bricks") and back, losslessly.
//!
//! The map of the crate (see `shared/docs/architecture.md`):
//!
//! - [`curve`]: the Hilbert curve, the single source of truth for `d2xy`/`xy2d`.
//! - [`kernels`]: CPU twins of the WGSL kernels in `shaders/` (same names, same bytes).
//! - [`backend`]: choosing and driving an engine: CPU (rayon) or GPU (wgpu).
//! - [`format`]: `.brick` (V2BR), `.rts.png` (PixelRTS v2), parts indexes, previews.
//! - [`fold`]: the operations the CLI exposes: fold, unfold, info, preview.
//! - [`source`]: what gets folded: files (mmap or read to EOF), ELF sections, directory trees.
//! - [`snapshot`], [`district`]: whole trees folded into per-file bricks and one district.
//! - [`analysis`]: local, deterministic facts about the bytes (entropy, text, ELF, hardening).
//! - [`llm`], [`semantic`]: the LM Studio client and the `semantic` metadata built from it.
//! - [`policy`]: what task-driven work may read, write and ask.
//! - [`locate`], [`view`]: where bytes lie in the textures, and the browser map built on it.
//!
//! The library never prints; the `foundry-gpu` binary does.

#[cfg(target_endian = "big")]
compile_error!(
    "foundry-gpu stores pixels as little-endian RGBA words and supports little-endian hosts only"
);

pub mod analysis;
pub mod backend;
pub mod config;
pub mod curve;
pub mod diff;
pub mod district;
pub mod error;
pub mod fold;
pub mod format;
pub mod kernels;
pub mod llm;
pub mod locate;
pub mod map;
pub mod policy;
pub mod process_memory;
pub mod progress;
pub mod semantic;
pub mod snapshot;
pub mod source;
pub mod task;
pub mod view;
pub mod watch;

pub use backend::{Backend, BackendChoice, GpuOptions};
pub use error::{Error, Result};
pub use kernels::Layout;
