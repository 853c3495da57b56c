//! Confined opening: an input is opened first, with the kernel refusing magic links
//! (`/proc/PID/fd/N`, `/proc/PID/root`) on the way, and only then judged, on what was opened:
//! the descriptor's real path against the policy, its `fstat` for kind, size and mode. The
//! bytes are read from that descriptor; nothing is reopened by path, so a path swapped between
//! the check and the read changes nothing.

use crate::error::{Error, Result};
use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Decides whether task work may read an object, given the real path of its descriptor.
pub trait ReadJudge: Send + Sync {
    /// `Err(rule)` names the rule that refuses `real`.
    fn judge(&self, real: &Path) -> std::result::Result<(), String>;
}

static JUDGE: OnceLock<Arc<dyn ReadJudge>> = OnceLock::new();

/// Confines every later read of an input by this process (`run`, `daemon`): each one is judged
/// by `judge` on the object it opened. Set once, like a umask; a second call is ignored.
pub fn confine_reads(judge: Arc<dyn ReadJudge>) {
    let _ = JUDGE.set(judge);
}

/// Whether reads are confined in this process.
pub fn is_confined() -> bool {
    JUDGE.get().is_some()
}

/// Whether the last component of a path may be a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastComponent {
    /// Followed: a source a task names (`/usr/lib/libfoo.so.1`, a link to its version); what
    /// it leads to is judged.
    Follow,
    /// Refused: an entry met in a tree walk is recorded as a symlink, never read through one.
    NoFollow,
}

/// Opens `path` read-only, non-blocking (a FIFO never makes us wait) and close-on-exec,
/// refusing magic links; under [`confine_reads`], judges the real path of what was opened.
pub fn open(path: &Path, last: LastComponent) -> Result<File> {
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if last == LastComponent::NoFollow {
        flags |= OFlags::NOFOLLOW;
    }
    let opened =
        match rustix::fs::openat2(CWD, path, flags, Mode::empty(), ResolveFlags::NO_MAGICLINKS) {
            // Kernels before 5.6 have no openat2: the real-path judgement below still holds.
            Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(CWD, path, flags, Mode::empty()),
            other => other,
        };
    judged(
        File::from(opened.map_err(|e| Error::io(path, "read", e.into()))?),
        path,
    )
}

/// Under [`confine_reads`], judges the real path of what was opened as `shown`: the file back,
/// or the rule that refuses it (naming where it really opened when that is not `shown`).
fn judged(file: File, shown: &Path) -> Result<File> {
    if let Some(judge) = JUDGE.get() {
        let real = real_path(&file).map_err(|e| Error::io(shown, "read", e))?;
        judge.judge(&real).map_err(|rule| Error::Policy {
            path: shown.to_path_buf(),
            rule: if real == shown {
                rule
            } else {
                format!("{rule} (it opened as {})", real.display())
            },
        })?;
    }
    Ok(file)
}

/// Opens `rel` beneath the folder `root` read-only, non-blocking and close-on-exec, the kernel
/// refusing any symlink on the way (the last component included), any `..` out of `root` and
/// any magic link; under [`confine_reads`], judges the real path of what was opened. `shown`
/// names it in errors.
pub fn open_beneath(root: &OwnedFd, rel: &Path, shown: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let opened = match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
        // Kernels before 5.6: no component may be a symlink, the last one checked here; the
        // real-path judgement below still holds for the rest.
        Err(rustix::io::Errno::NOSYS) => {
            rustix::fs::openat(root, rel, flags | OFlags::NOFOLLOW, Mode::empty())
        }
        other => other,
    };
    judged(
        File::from(opened.map_err(|e| Error::io(shown, "read", e.into()))?),
        shown,
    )
}

/// The path the kernel gives the object behind `file`: where it really is, whatever
/// symlinks and `..` led there.
pub fn real_path(file: &File) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_links_are_refused_and_real_paths_seen_through_links_and_dots() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.txt");
        std::fs::write(&target, "bytes").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let through = dir.path().join("sub/../link");
        let file = open(&through, LastComponent::Follow).unwrap();
        assert_eq!(real_path(&file).unwrap(), target.canonicalize().unwrap());
        let refused = open(&dir.path().join("link"), LastComponent::NoFollow).unwrap_err();
        assert!(refused.to_string().contains("read"), "{refused}");
        // /proc/self/fd/N is a magic link: refused by the kernel, whatever it points at.
        let held = File::open(&target).unwrap();
        let magic = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
        assert!(open(&magic, LastComponent::Follow).is_err());
        assert!(File::open(&magic).is_ok(), "an ordinary open follows it");
    }
}
