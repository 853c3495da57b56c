//! Process memory: `/proc/PID/maps` parsed into mappings, and their bytes read through
//! `/proc/PID/mem` with every unreadable mapping given a reason instead of an error.

use crate::error::{Error, Result};
use serde::Serialize;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r`, `w`, `x`, then `p` (private) or `s` (shared).
    pub perms: String,
    /// Offset into the mapped file.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// File path, `[heap]`, `[stack]`, `[vvar]`, ... or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// A short label: the file's base name, the `[bracketed]` name, or `anon`.
    pub fn label(&self) -> String {
        if self.path.is_empty() {
            "anon".into()
        } else if self.path.starts_with('[') {
            self.path.clone()
        } else {
            self.path
                .rsplit('/')
                .next()
                .unwrap_or(&self.path)
                .to_string()
        }
    }
}

/// Parses the text of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> std::result::Result<Vec<Mapping>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            parse_line(line).ok_or_else(|| format!("line {}: cannot parse {line:?}", n + 1))
        })
        .collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?.to_string();
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    );
    (end >= start && perms.len() == 4).then_some(Mapping {
        start,
        end,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// An open process whose memory can be read.
pub struct ProcessMemory {
    pub pid: u32,
    mem: std::fs::File,
    mem_path: PathBuf,
}

fn ptrace_hint(pid: u32) -> String {
    format!(
        "permission denied: reading process {pid}'s memory needs ptrace access \
         (the same user and kernel.yama.ptrace_scope allowing it, or root)"
    )
}

impl ProcessMemory {
    /// Reads the maps of `pid` and opens its memory.
    pub fn open(pid: u32) -> Result<(Self, Vec<Mapping>)> {
        let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
        let text = std::fs::read_to_string(&maps_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::malformed(&maps_path, format!("no process {pid}"))
            }
            std::io::ErrorKind::PermissionDenied => Error::malformed(&maps_path, ptrace_hint(pid)),
            _ => Error::io(&maps_path, "read", e),
        })?;
        let mappings = parse_maps(&text).map_err(|why| Error::malformed(&maps_path, why))?;
        let mem_path = PathBuf::from(format!("/proc/{pid}/mem"));
        let mem = std::fs::File::open(&mem_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Error::malformed(&mem_path, ptrace_hint(pid)),
            std::io::ErrorKind::NotFound => {
                Error::malformed(&mem_path, format!("process {pid} exited"))
            }
            _ => Error::io(&mem_path, "read", e),
        })?;
        Ok((ProcessMemory { pid, mem, mem_path }, mappings))
    }

    /// Reads a whole mapping, or says why it cannot be read.
    pub fn read(&self, mapping: &Mapping) -> std::result::Result<Vec<u8>, String> {
        let mut bytes = vec![0u8; mapping.len() as usize];
        let mut done = 0usize;
        while done < bytes.len() {
            match self
                .mem
                .read_at(&mut bytes[done..], mapping.start + done as u64)
            {
                Ok(0) => return Err("the mapping ended early (process changed its maps)".into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match e.raw_os_error() {
                        Some(5) => {
                            "not readable (EIO: a guard page or special mapping like [vvar])".into()
                        }
                        Some(1) | Some(13) => ptrace_hint(self.pid),
                        _ => format!("{}: {e}", self.mem_path.display()),
                    })
                }
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let text = "55d0c6a00000-55d0c6a02000 r--p 00000000 fe:01 1234   /usr/bin/cat\n\
                    7ffd3c5e0000-7ffd3c601000 rw-p 00000000 00:00 0                          [stack]\n\
                    7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 \n\
                    7f00-7f10 r--p 00000000 fe:01 99 /path with spaces/lib.so\n";
        let maps = parse_maps(text).unwrap();
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].start, 0x55d0c6a00000);
        assert_eq!(maps[0].len(), 0x2000);
        assert_eq!(maps[0].label(), "cat");
        assert_eq!(maps[1].path, "[stack]");
        assert_eq!(maps[2].label(), "anon");
        assert_eq!(maps[3].path, "/path with spaces/lib.so");
        assert!(parse_maps("garbage\n").is_err());
    }

    #[test]
    fn our_own_memory_reads_and_vvar_does_not() {
        let (mem, maps) = ProcessMemory::open(std::process::id()).unwrap();
        let marker = *b"foundry-self-read-marker";
        let at = marker.as_ptr() as u64;
        let m = maps.iter().find(|m| m.start <= at && at < m.end).unwrap();
        let bytes = mem.read(m).unwrap();
        let i = (at - m.start) as usize;
        assert_eq!(&bytes[i..i + marker.len()], &marker);
        if let Some(vvar) = maps.iter().find(|m| m.path == "[vvar]") {
            assert!(mem.read(vvar).unwrap_err().contains("EIO"));
        }
    }
}
