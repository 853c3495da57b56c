//! Reading what gets folded: every input is copied into memory with positioned reads (never
//! mapped, so a writer truncating it cannot kill us with SIGBUS), bounded by `--max-input`,
//! and checked for changing size while it was read. FIFOs are read only when the user named
//! them.

pub mod confine;
pub mod elf;
pub mod process;
pub mod tree;

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Default `--max-input`: the most bytes one input may hold.
pub const DEFAULT_MAX_INPUT: u64 = 4 << 30;

/// The bytes read and hashed at a time: small enough to stay in a core's L2 between the copy
/// and the hash, and the most a stream's buffer grows past `--max-input` before it is refused.
const PIECE: usize = 512 << 10;

/// `--max-input` of this process, set once by the command line like a umask.
static MAX_INPUT: AtomicU64 = AtomicU64::new(DEFAULT_MAX_INPUT);

/// Paths the user named on the command line: the only ones that may be FIFOs.
static NAMED_INPUTS: RwLock<Vec<PathBuf>> = RwLock::new(Vec::new());

/// Sets the most bytes any later read of an input may return (`--max-input`).
pub fn set_max_input(bytes: u64) {
    MAX_INPUT.store(bytes, Ordering::Relaxed);
}

/// The current `--max-input`.
pub fn max_input() -> u64 {
    MAX_INPUT.load(Ordering::Relaxed)
}

/// Records that the user named `paths` directly on the command line: a FIFO among them is read
/// (waiting for its writer, as `cat` does). Any other FIFO (met in a tree walk, named by a task)
/// is refused, so nothing the user did not point at can block a run or the daemon.
pub fn name_inputs<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    let mut named = NAMED_INPUTS.write().expect("named inputs");
    named.extend(paths.into_iter().map(Path::to_path_buf));
}

fn is_named(path: &Path) -> bool {
    NAMED_INPUTS
        .read()
        .expect("named inputs")
        .iter()
        .any(|p| p == path)
}

/// Parses a size for `--max-input`: bytes (`1048576`), or a number with `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, `T`/`TiB` (powers of 1024) or `kB`, `MB`, `GB`, `TB` (powers of 1000).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_size: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use bytes or K, M, G, T (KiB, MiB, GiB, TiB) or kB, MB, GB, TB"
            ))
        }
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. 4GiB, 512MiB or 1048576"))?;
    count
        .checked_mul(unit_size)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?} must be at least 1 byte and at most 16 EiB"))
}

/// Reads `path` whole into memory. `/proc` and `/sys` files report size 0, so anything that is
/// not a regular file of known size is read to EOF, never sized by `stat`; either way at most
/// `--max-input` bytes are held before the input is refused.
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    read_bounded(path, |_| {})
}

/// [`read_input`] that also returns the bytes' SHA-256, hashing each piece as it arrives while
/// it is still in the cache: one pass over memory instead of two (a diff of two 1 GiB files
/// reads and hashes both).
pub fn read_input_hashed(path: &Path) -> Result<(Vec<u8>, [u8; 32])> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let bytes = read_bounded(path, |piece| hasher.update(piece))?;
    Ok((bytes, hasher.finalize().into()))
}

/// Opens `path` and reads it: a regular file of known size by positioned reads checked
/// against its size, anything else as a stream. `on_piece` sees every piece once, in order.
fn read_bounded(path: &Path, on_piece: impl FnMut(&[u8])) -> Result<Vec<u8>> {
    let (file, meta) = open_input(path)?;
    let limit = max_input();
    if meta.is_file() && meta.len() > 0 {
        return read_sized(path, &file, meta.len(), limit, on_piece);
    }
    let bytes = read_stream(path, &file, limit, on_piece)?;
    // A regular file that was empty when opened (or a /proc file, always size 0) must still
    // be empty, or hold what was read.
    let now = file
        .metadata()
        .map_err(|e| Error::io(path, "read", e))?
        .len();
    if meta.is_file() && now != 0 && now != bytes.len() as u64 {
        return Err(changed_while_read(
            path,
            format!(
                "it was empty when opened, {} bytes were read and it is {now} now",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Opens `path` for reading, refusing a directory, a socket, and a FIFO the user did not name
/// (under confinement, judged on what was opened). Inputs the user did not name are opened
/// non-blocking, so even a FIFO swapped in between the check and the open cannot make us wait
/// for a writer. Every reader here opens its input so; `patch` then reads A piece by piece.
pub fn open_input(path: &Path) -> Result<(File, std::fs::Metadata)> {
    if confine::is_confined() {
        // Task work: open first, judge what was opened, read from that descriptor. A task
        // never reads a FIFO, and never waits on one (the open is non-blocking).
        let file = confine::open(path, confine::LastComponent::Follow)?;
        let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
        check_input_kind(path, &meta, false)?;
        // Judged on what was opened, so a file swapped for /dev/zero after the plan is refused.
        if meta.file_type().is_char_device() || meta.file_type().is_block_device() {
            return Err(Error::malformed(
                path,
                "is a device; tasks read files, not devices",
            ));
        }
        return Ok((file, meta));
    }
    let named = is_named(path);
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    check_input_kind(path, &meta, named)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if !named {
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, "read", e))?;
    // What was opened, not what the path named a moment before.
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    check_input_kind(path, &meta, named)?;
    Ok((file, meta))
}

/// Opens a file met in a tree walk: beneath its root's descriptor, through no symlink in any
/// component (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: a file or a folder on its
/// way swapped for a link after the walk is refused, not followed), non-blocking, judged on what
/// was opened under confinement, and only when it is still a regular file. Its `fstat` is what
/// the caller must use for its size and mode, not the walk's `lstat`.
pub fn open_tree_entry(entry: &tree::FileEntry) -> Result<(File, std::fs::Metadata)> {
    let path = entry.abs.as_path();
    let file = match &entry.root_dir {
        Some(root) => confine::open_beneath(root, &entry.rel, path)?,
        None => confine::open(path, confine::LastComponent::NoFollow)?,
    };
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::malformed(
            path,
            "is no longer a regular file (it changed after the walk listed it)",
        ));
    }
    Ok((file, meta))
}

/// Reads a file met in a tree walk whole, through [`open_tree_entry`], bounded by `--max-input`.
pub fn read_tree_entry(entry: &tree::FileEntry) -> Result<Vec<u8>> {
    let (file, meta) = open_tree_entry(entry)?;
    if meta.len() == 0 {
        return Ok(Vec::new());
    }
    read_sized(&entry.abs, &file, meta.len(), max_input(), |_| {})
}

fn check_input_kind(path: &Path, meta: &std::fs::Metadata, named: bool) -> Result<()> {
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(Error::malformed(
            path,
            "is a directory, and this command takes one file",
        ));
    }
    if kind.is_socket() {
        return Err(Error::malformed(
            path,
            "is a socket; only files, devices and FIFOs can be read",
        ));
    }
    if kind.is_fifo() && !named {
        return Err(Error::malformed(
            path,
            "is a FIFO; FIFOs are read only when named directly on the command line",
        ));
    }
    Ok(())
}

/// The error for an input larger than `--max-input`; `what` says how much there was.
fn too_large(path: &Path, what: &str, limit: u64) -> Error {
    Error::malformed(
        path,
        format!(
            "{what} than --max-input {}; raise --max-input to read it",
            crate::fold::human_bytes(limit)
        ),
    )
}

/// The error for an input whose size changed while it was read.
fn changed_while_read(path: &Path, problem: String) -> Error {
    Error::io(
        path,
        "read",
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("changed while being read ({problem}); nothing was written, try again once it is still"),
        ),
    )
}

/// Reads a regular file of `size` bytes (as `fstat` said) by positioned reads, then checks it
/// neither shrank (a read ended early) nor grew (`fstat` again, and a read past the end).
fn read_sized(
    path: &Path,
    file: &File,
    size: u64,
    limit: u64,
    mut on_piece: impl FnMut(&[u8]),
) -> Result<Vec<u8>> {
    if size > limit {
        let what = format!("is {}, more", crate::fold::human_bytes(size));
        return Err(too_large(path, &what, limit));
    }
    let len = usize::try_from(size).map_err(|_| too_large(path, "is larger", limit))?;
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let end = len.min(filled + PIECE);
        match file.read_at(&mut bytes[filled..end], filled as u64) {
            Ok(0) => {
                return Err(changed_while_read(
                    path,
                    format!("it was {size} bytes when opened and ended at byte {filled}"),
                ))
            }
            Ok(n) => {
                on_piece(&bytes[filled..filled + n]);
                filled += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
    let now = file
        .metadata()
        .map_err(|e| Error::io(path, "read", e))?
        .len();
    let mut probe = [0u8; 1];
    let beyond = file
        .read_at(&mut probe, size)
        .map_err(|e| Error::io(path, "read", e))?;
    if now != size || beyond > 0 {
        return Err(changed_while_read(
            path,
            format!("it was {size} bytes when opened and {now} once read"),
        ));
    }
    Ok(bytes)
}

/// Reads a stream (pipe, device, `/proc` or `/sys` file) to EOF, holding at most `limit` + one
/// byte: the buffer grows by doubling but never past that, so `/dev/zero` costs the limit, not
/// all memory.
fn read_stream(
    path: &Path,
    mut file: impl Read,
    limit: u64,
    mut on_piece: impl FnMut(&[u8]),
) -> Result<Vec<u8>> {
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        if bytes.len() >= cap {
            return Err(too_large(path, "is a stream that went on longer", limit));
        }
        if bytes.len() == bytes.capacity() {
            let grown = (bytes.capacity() * 2).clamp(PIECE, cap);
            bytes.reserve_exact(grown - bytes.len());
        }
        let start = bytes.len();
        let room = (bytes.capacity() - start).min(PIECE);
        bytes.resize(start + room, 0);
        match file.read(&mut bytes[start..]) {
            Ok(0) => {
                bytes.truncate(start);
                return Ok(bytes);
            }
            Ok(n) => {
                bytes.truncate(start + n);
                on_piece(&bytes[start..]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => bytes.truncate(start),
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_to_eof() {
        let bytes = read_input(Path::new("/proc/self/status")).unwrap();
        assert!(bytes.starts_with(b"Name:"));
    }

    #[test]
    fn directories_are_refused_by_name() {
        let err = read_input(Path::new("/tmp")).err().unwrap();
        assert!(err.to_string().starts_with("/tmp: is a directory"));
        assert!(err.is_input_error());
    }

    #[test]
    fn a_stream_holds_no_more_than_the_limit_and_a_byte() {
        let file = File::open("/dev/zero").unwrap();
        let err = read_stream(Path::new("/dev/zero"), &file, 3 << 20, |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a stream that went on longer than --max-input 3.0 MiB"),
            "{err}"
        );
        let file = File::open("/proc/self/status").unwrap();
        let mut seen = 0;
        let bytes = read_stream(Path::new("status"), &file, 1 << 20, |p| seen += p.len()).unwrap();
        assert_eq!(seen, bytes.len());
        assert!(bytes.capacity() <= (1 << 20) + 1);
    }

    #[test]
    fn a_file_that_grew_after_stat_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        // As if fstat had run before a writer appended two bytes.
        let err = read_sized(&path, &file, 8, 1 << 20, |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("changed while being read"),
            "{err}"
        );
        let err = read_sized(&path, &file, 12, 1 << 20, |_| {}).unwrap_err();
        assert!(err.to_string().contains("ended at byte 10"), "{err}");
        assert_eq!(
            read_sized(&path, &file, 10, 1 << 20, |_| {}).unwrap(),
            b"0123456789"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
