//! Reading what gets folded: regular files through mmap, everything else (pipes, `/proc`, `/sys`) to EOF.

pub mod elf;
pub mod process;
pub mod tree;

use crate::error::{Error, Result};
use std::io::Read;
use std::ops::Deref;
use std::path::Path;

/// Below this size a plain read beats setting up a mapping.
const MMAP_THRESHOLD: u64 = 1 << 20;

/// The bytes of one input, mapped or owned.
pub enum InputBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for InputBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            InputBytes::Mapped(m) => m,
            InputBytes::Owned(v) => v,
        }
    }
}

/// Reads `path` whole. `/proc` and `/sys` files report size 0, so anything that
/// is not a regular file of known size is read to EOF, never sized by `stat`.
pub fn read_input(path: &Path) -> Result<InputBytes> {
    let (file, meta) = open_file(path)?;
    if meta.is_file() && meta.len() >= MMAP_THRESHOLD {
        // SAFETY: the mapping is read-only and private to this process. Another
        // process truncating the file while we read it could fault; the
        // alternative, copying every input into memory first, doubles peak
        // memory for multi-GiB inputs. Sources expected to change use `read_copy`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))?;
        return Ok(InputBytes::Mapped(map));
    }
    read_open(path, file, meta.len()).map(InputBytes::Owned)
}

/// Reads `path` to EOF into memory, never mapped: for sources expected to change while they
/// are read (watch mode), where a mapping would fault (SIGBUS) if a writer truncated the file.
pub fn read_copy(path: &Path) -> Result<Vec<u8>> {
    let (file, meta) = open_file(path)?;
    read_open(path, file, meta.len())
}

/// [`read_copy`] that also returns the bytes' SHA-256, hashing each piece as it arrives while it
/// is still in the cache: one pass over memory instead of two (a diff of two 1 GiB files reads
/// and hashes both).
pub fn read_copy_hashed(path: &Path) -> Result<(Vec<u8>, [u8; 32])> {
    use sha2::Digest;
    // Small enough to stay in a core's L2 between the copy and the hash.
    const PIECE: usize = 512 << 10;
    let (mut file, meta) = open_file(path)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let mut hasher = sha2::Sha256::new();
    loop {
        let start = bytes.len();
        let read = (&mut file)
            .take(PIECE as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, "read", e))?;
        if read == 0 {
            break;
        }
        hasher.update(&bytes[start..]);
    }
    Ok((bytes, hasher.finalize().into()))
}

/// Opens `path` for reading, refusing a directory by name.
fn open_file(path: &Path) -> Result<(std::fs::File, std::fs::Metadata)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if meta.is_dir() {
        return Err(Error::malformed(
            path,
            "is a directory, and this command takes one file",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "read", e))?;
    Ok((file, meta))
}

/// Reads an opened file to EOF (`/proc` and `/sys` files report size 0, so `size_hint` only
/// presizes the buffer).
fn read_open(path: &Path, mut file: std::fs::File, size_hint: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size_hint as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, "read", e))?;
    Ok(bytes)
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
}
