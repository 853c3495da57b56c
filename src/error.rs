//! The crate's one error type: every failure names the file (or adapter) and what is wrong.

use std::path::{Path, PathBuf};

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, split by who must act: the caller's input
/// ([`Error::is_input_error`]) or the work itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing or renaming a file failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not what the format requires.
    #[error("{}: {problem}", path.display())]
    Malformed { path: PathBuf, problem: String },
    /// The bytes decoded, but their SHA-256 is not the one recorded.
    #[error("{}: SHA-256 mismatch: recorded {expected}, decoded bytes hash to {actual}", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A request that cannot be honoured (bad option value, impossible size).
    #[error("{0}")]
    Usage(String),
    /// A task file that does not parse: its file, line, column and field.
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    /// The policy (`[policy]`, `--policy`) refused a path, a size or a host.
    #[error("{}: refused by policy: {rule}", path.display())]
    Policy { path: PathBuf, rule: String },
    /// No wgpu adapter, or the device failed; the wgpu error, when there is one, is the source.
    #[error("GPU: {context}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Gpu {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A device wait outlived its limit (`--gpu-timeout`): the GPU is hung or far too slow.
    #[error("GPU: {adapter}: {what} did not finish within {:.3} s (raise --gpu-timeout, or use --backend cpu)", waited.as_secs_f64())]
    GpuTimeout {
        adapter: String,
        what: String,
        waited: std::time::Duration,
    },
}

impl Error {
    /// A GPU failure described by `context` alone.
    pub fn gpu(context: impl Into<String>) -> Self {
        Error::Gpu {
            context: context.into(),
            source: None,
        }
    }

    /// A GPU failure whose cause is the wgpu error `source`.
    pub fn gpu_from(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Gpu {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Wraps an I/O error with the path and the action that failed.
    pub fn io(path: impl AsRef<Path>, action: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            action,
            source,
        }
    }

    /// A malformed-input error for `path`.
    pub fn malformed(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.as_ref().to_path_buf(),
            problem: problem.into(),
        }
    }

    /// True when the caller's input or arguments are at fault (exit code 2),
    /// false when the work failed (exit code 1).
    pub fn is_input_error(&self) -> bool {
        match self {
            Error::Malformed { .. } | Error::Task(_) | Error::Usage(_) | Error::Policy { .. } => {
                true
            }
            // Any failure to read an input (missing, permission, I/O error) is the
            // input's problem; failures to write outputs are the work's.
            Error::Io { action, .. } => *action == "read",
            Error::HashMismatch { .. } | Error::Gpu { .. } | Error::GpuTimeout { .. } => false,
        }
    }
}
