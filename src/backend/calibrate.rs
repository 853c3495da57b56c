//! Where `--backend auto` runs each kernel: crossovers measured on this adapter by `foundry-gpu bench --calibrate`, cached per adapter.

use super::gpu::AdapterDescription;
use super::kernel::KernelId;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::PathBuf;

/// Largest calibration cache read (a handful of adapters fit in a few KiB).
const MAX_CACHE_BYTES: u64 = 1 << 20;

/// One size measured on both sides, end to end (upload, kernel, readback on the GPU).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub bytes: u64,
    pub cpu_seconds: f64,
    pub gpu_seconds: f64,
}

/// Where one kernel goes, and the samples that decided it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelCrossover {
    pub kernel: KernelId,
    /// Inputs of at least this many bytes go to the GPU; `None`: the CPU twin always wins.
    pub gpu_from_bytes: Option<u64>,
    pub samples: Vec<Sample>,
}

/// A calibration of one adapter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub adapter: AdapterDescription,
    /// Seconds since the Unix epoch when it was measured.
    pub measured_at: u64,
    /// CPU threads the twins ran on (a calibration from another machine does not apply).
    pub cpu_threads: usize,
    pub kernels: Vec<KernelCrossover>,
}

impl Calibration {
    /// Whether `kernel` on `bytes` of input runs faster on the GPU. A kernel never measured
    /// stays on the CPU: `auto` never guesses the GPU is faster.
    pub fn gpu_takes(&self, kernel: KernelId, bytes: u64) -> bool {
        self.kernels
            .iter()
            .find(|k| k.kernel == kernel)
            .and_then(|k| k.gpu_from_bytes)
            .is_some_and(|from| bytes >= from)
    }
}

/// The smallest sampled size from which the GPU wins at that size and every larger one.
pub fn crossover(samples: &[Sample]) -> Option<u64> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.bytes);
    let mut from = None;
    for s in sorted.iter().rev() {
        if s.gpu_seconds < s.cpu_seconds {
            from = Some(s.bytes);
        } else {
            break;
        }
    }
    from
}

/// Where calibrations are cached: `$FOUNDRY_GPU_CALIBRATION`, else
/// `$XDG_CACHE_HOME/foundry-gpu/calibration.json`, else `~/.cache/foundry-gpu/…`.
pub fn cache_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FOUNDRY_GPU_CALIBRATION") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("foundry-gpu").join("calibration.json"))
}

fn read_cache(path: &std::path::Path) -> Result<Vec<Calibration>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so a FIFO at the path cannot hang every command; judged as opened.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // A task run as its owner cannot read the daemon's cache: that is no calibration,
        // and everything stays on the CPU.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(Error::io(path, "read", e)),
    };
    let malformed = |problem: String| Error::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(malformed(
            "a calibration cache must be a regular file".into(),
        ));
    }
    if meta.len() > MAX_CACHE_BYTES {
        return Err(malformed(format!(
            "a calibration cache is at most {MAX_CACHE_BYTES} bytes"
        )));
    }
    let mut text = String::new();
    file.take(MAX_CACHE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, "read", e))?;
    if text.len() as u64 > MAX_CACHE_BYTES {
        return Err(malformed(format!(
            "a calibration cache is at most {MAX_CACHE_BYTES} bytes"
        )));
    }
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| malformed(format!("not a calibration cache: {e}")))?;
    // Each entry, and each kernel in it, on its own: one a later version wrote (a kernel
    // this one does not know) is skipped, not fatal.
    Ok(entries
        .into_iter()
        .filter_map(|mut entry| {
            if let Some(kernels) = entry.get_mut("kernels").and_then(|k| k.as_array_mut()) {
                kernels.retain(|k| serde_json::from_value::<KernelCrossover>(k.clone()).is_ok());
            }
            serde_json::from_value(entry).ok()
        })
        .collect())
}

/// Every calibration in the cache (none when there is no cache).
pub fn load_all() -> Result<Vec<Calibration>> {
    match cache_path() {
        Some(path) => read_cache(&path),
        None => Ok(Vec::new()),
    }
}

/// The calibration of `adapter` on this machine's thread count among `all`.
pub fn matching(all: Vec<Calibration>, adapter: &AdapterDescription) -> Option<Calibration> {
    let threads = rayon::current_num_threads();
    all.into_iter()
        .find(|c| c.adapter == *adapter && c.cpu_threads == threads)
}

/// Stores `calibration`, replacing the one of the same adapter; written to a temporary
/// file and renamed. Returns the cache's path.
pub fn store(calibration: &Calibration) -> Result<PathBuf> {
    let path = cache_path().ok_or_else(|| {
        Error::Usage("no cache folder: set FOUNDRY_GPU_CALIBRATION, XDG_CACHE_HOME or HOME".into())
    })?;
    // A cache that does not parse is not replaced: it may hold other adapters' entries.
    let mut all = read_cache(&path)?;
    all.retain(|c| !(c.adapter == calibration.adapter && c.cpu_threads == calibration.cpu_threads));
    all.push(calibration.clone());
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, "create", e))?;
    serde_json::to_writer_pretty(&mut temp, &all)
        .map_err(|e| Error::io(&path, "write", e.into()))?;
    temp.persist(&path)
        .map_err(|e| Error::io(&path, "rename", e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bytes: u64, cpu: f64, gpu: f64) -> Sample {
        Sample {
            bytes,
            cpu_seconds: cpu,
            gpu_seconds: gpu,
        }
    }

    #[test]
    fn the_crossover_is_where_the_gpu_wins_from_then_on() {
        assert_eq!(
            crossover(&[
                sample(1, 1.0, 2.0),
                sample(2, 2.0, 1.0),
                sample(4, 4.0, 1.0)
            ]),
            Some(2)
        );
        // A win below a loss does not count: the larger size decides.
        assert_eq!(crossover(&[sample(1, 2.0, 1.0), sample(2, 1.0, 2.0)]), None);
        assert_eq!(crossover(&[sample(1, 1.0, 2.0)]), None);
        assert_eq!(crossover(&[]), None);
    }

    #[test]
    fn an_unmeasured_kernel_stays_on_the_cpu() {
        let c = Calibration {
            adapter: AdapterDescription {
                name: "x".into(),
                driver: "y".into(),
                backend: "Vulkan".into(),
                kind: super::super::gpu::AdapterKind::Hardware,
            },
            measured_at: 0,
            cpu_threads: 2,
            kernels: vec![KernelCrossover {
                kernel: KernelId::FoldRts,
                gpu_from_bytes: Some(1 << 20),
                samples: vec![],
            }],
        };
        assert!(c.gpu_takes(KernelId::FoldRts, 1 << 20));
        assert!(!c.gpu_takes(KernelId::FoldRts, (1 << 20) - 1));
        assert!(!c.gpu_takes(KernelId::FoldBrick, 1 << 30));
    }
}
