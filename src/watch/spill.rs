//! Last states of a watched tree's files, kept on disk beside the outputs instead of in memory,
//! so that what a watch holds follows its tree's file count, not its bytes.
//!
//! The folder (`OUT/.foundry-watch-state.PID.N`, mode 0700) is made by this watch and used
//! only through the descriptor opened when it was made: someone who can write the output
//! folder may rename or replace the name, but never redirects a read or a write, and cannot
//! read what is inside. The watch removes what it stored, and the folder, when it ends.

use crate::error::{Error, Result};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A watch's private folder of kept states.
pub struct Spill {
    /// The output folder, and the name the state folder got in it.
    parent: OwnedFd,
    name: String,
    folder: OwnedFd,
    /// Where it was made, for errors.
    shown: PathBuf,
    next: u64,
    /// States stored and not yet removed: removed with the folder.
    live: BTreeSet<u64>,
}

/// Bytes kept in a [`Spill`]: their file's number and length.
#[derive(Debug)]
pub struct Spilled {
    id: u64,
    len: u64,
}

impl Spilled {
    /// How many bytes were kept.
    pub fn len(&self) -> u64 {
        self.len
    }
}

impl Spill {
    /// Makes a new state folder in `output` (made if missing).
    pub fn create(output: &Path) -> Result<Self> {
        crate::format::staged::create_dir_all(output)?;
        let parent = crate::format::staged::open_confined_dir(output)?;
        for attempt in 0..100u32 {
            let name = format!(".foundry-watch-state.{}.{attempt}", std::process::id());
            match rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => {
                    return Err(Error::io(
                        output,
                        "make the watch's state folder in",
                        e.into(),
                    ))
                }
            }
            let shown = output.join(&name);
            let folder = rustix::fs::openat(
                &parent,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(&shown, "open", e.into()))?;
            return Ok(Spill {
                parent,
                name,
                folder,
                shown,
                next: 0,
                live: BTreeSet::new(),
            });
        }
        Err(Error::malformed(
            output,
            "holds 100 watch state folders of this process id; remove the stale .foundry-watch-state.* folders",
        ))
    }

    /// Keeps `bytes` until [`Self::take`] or the end of the watch.
    pub fn store(&mut self, bytes: &[u8]) -> Result<Spilled> {
        let id = self.next;
        self.next += 1;
        let fd = rustix::fs::openat(
            &self.folder,
            id.to_string(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io(&self.shown, "keep a state in", e.into()))?;
        self.live.insert(id);
        let kept = Spilled {
            id,
            len: bytes.len() as u64,
        };
        if let Err(e) = File::from(fd).write_all(bytes) {
            self.remove(kept);
            return Err(Error::io(&self.shown, "keep a state in", e));
        }
        Ok(kept)
    }

    /// Reads kept bytes back, and forgets them.
    pub fn take(&mut self, kept: Spilled) -> Result<Vec<u8>> {
        let read = self.read(&kept);
        self.remove(kept);
        read
    }

    /// Reads kept bytes back; they stay kept.
    pub fn read(&self, kept: &Spilled) -> Result<Vec<u8>> {
        let path = self.shown.join(kept.id.to_string());
        // Non-blocking, and only a regular file: nothing put in its place can make us wait.
        let fd = rustix::fs::openat(
            &self.folder,
            kept.id.to_string(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(&path, "read", e.into()))?;
        let file = File::from(fd);
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(Error::malformed(&path, "is no longer a regular file"));
        }
        let len = usize::try_from(kept.len)
            .map_err(|e| Error::io(&path, "read", std::io::Error::other(e)))?;
        let mut bytes = Vec::with_capacity(len);
        file.take(kept.len + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, "read", e))?;
        if bytes.len() != len {
            return Err(Error::malformed(
                &path,
                format!("holds {} bytes; {len} were kept there", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Forgets kept bytes.
    pub fn remove(&mut self, kept: Spilled) {
        self.live.remove(&kept.id);
        let _ = rustix::fs::unlinkat(&self.folder, kept.id.to_string(), AtFlags::empty());
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.live) {
            let _ = rustix::fs::unlinkat(&self.folder, id.to_string(), AtFlags::empty());
        }
        // Only if the name still is this folder: whatever else took the name stays.
        let same = match (
            rustix::fs::fstat(&self.folder),
            rustix::fs::statat(&self.parent, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW),
        ) {
            (Ok(ours), Ok(named)) => ours.st_dev == named.st_dev && ours.st_ino == named.st_ino,
            _ => false,
        };
        if same {
            let _ = rustix::fs::unlinkat(&self.parent, self.name.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_the_folder_goes_with_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut spill = Spill::create(&out).unwrap();
        let shown = spill.shown.clone();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&shown).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let a = spill.store(b"first state").unwrap();
        let b = spill.store(&vec![7u8; 100_000]).unwrap();
        assert_eq!(spill.read(&a).unwrap(), b"first state");
        assert_eq!(spill.take(b).unwrap(), vec![7u8; 100_000]);
        assert_eq!(std::fs::read_dir(&shown).unwrap().count(), 1);
        // Swapped for a link to another folder, the name redirects nothing.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let moved = dir.path().join("moved");
        std::fs::rename(&shown, &moved).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &shown).unwrap();
        let c = spill.store(b"third").unwrap();
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(spill.read(&c).unwrap(), b"third");
        assert_eq!(std::fs::read_dir(&moved).unwrap().count(), 2);
        // A kept state someone shortened is refused, not half read.
        std::fs::write(moved.join("0"), b"first").unwrap();
        let err = spill.read(&a).unwrap_err().to_string();
        assert!(err.contains("were kept there"), "{err}");
        // One swapped for a FIFO is refused without waiting for a writer.
        std::fs::remove_file(moved.join("0")).unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(moved.join("0"))
            .status()
            .unwrap()
            .success());
        let err = spill.read(&a).unwrap_err().to_string();
        assert!(err.contains("no longer a regular file"), "{err}");
        std::fs::remove_file(moved.join("0")).unwrap();
        drop(spill);
        // The link that took the name stays; the folder itself is emptied.
        assert!(shown.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_dir(&moved).unwrap().count(), 0);
        // Unmoved, the folder itself goes.
        let spill = Spill::create(&out).unwrap();
        let shown = spill.shown.clone();
        drop(spill);
        assert!(!shown.exists());
    }
}
