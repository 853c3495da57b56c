//! Atomic output: every file is written to a temporary sibling and renamed into place only
//! when the whole set succeeded, so a failed run leaves no partial file and keeps old outputs.
//! A target that is not a regular file (device, FIFO, socket, directory) is refused, never
//! replaced; `-` stands for standard output, written only once everything succeeded.
//! Task-driven processes also confine every write to a set of roots ([`confine_writes`]): each
//! output's folder is opened once, judged by the real path of that descriptor, and the
//! temporary is created in it with `O_CREAT | O_EXCL | O_NOFOLLOW` and renamed with `renameat`
//! inside the same descriptor, so a folder swapped for a symlink mid-run cannot move a write.
//! A daemon records every temporary it creates in a journal ([`journal_temporaries`]); the
//! sweep after its death removes exactly those ([`remove_journaled_temporary`]).

use crate::error::{Error, Result};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// Files written but not yet renamed into place.
pub struct StagedOutputs {
    staged: Vec<Staged>,
    mode: u32,
    /// Group given to files staged from now on (see [`StagedOutputs::with_group`]).
    group: Option<u32>,
    /// Where the bytes committed are added up (see [`StagedOutputs::with_tally`]).
    tally: Option<WriteTally>,
}

/// Bytes committed by every [`StagedOutputs`] that shares it: what a command wrote in all,
/// for its summary.
pub type WriteTally = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// What earlier versions of an output left this process: see [`StagedOutputs::write_from_base`].
#[derive(Default)]
pub struct Earlier<'a> {
    /// The last version, as this process wrote it, held open since.
    pub last: Option<&'a File>,
    /// The version before it, exchanged out of place by the last commit.
    pub spare: Option<SpareFile>,
    /// Whether a version written whole should be exchanged with `last` at commit, which
    /// then stays as the next call's spare.
    pub keep_spare: bool,
}

/// What a staged file began as, when not written whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// A clone of the last version (it lacks what changed since that version).
    Clone,
    /// The spare: the version before the last (it lacks what changed in the last two).
    Spare,
}

/// The folder an output path is written into.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// One output waiting for [`StagedOutputs::commit`].
enum Staged {
    /// A temporary sibling of the file it will be renamed to.
    File(DirTemporary, PathBuf),
    /// A temporary that is exchanged with the file at its final name when that is still the
    /// file held open in the third field (one this process wrote), which then stays under
    /// the temporary's name as the next event's [`SpareFile`]; else renamed over it like
    /// [`Staged::File`].
    Exchange(DirTemporary, PathBuf, File),
    /// An unnamed temporary file copied to standard output at commit.
    Stdout(File),
}

/// The `-o` path that means standard output.
pub const STDOUT: &str = "-";

/// Whether `path` is `-`, standard output (`./-` names a file called `-`).
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == STDOUT
}

/// What an existing non-regular file is, in words.
fn kind_in_words(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Refuses a single-file output target that exists and is not a regular file (through any
/// symlink): a device, FIFO or socket would be replaced by the rename (or block the writer),
/// and a directory fails only at the rename, after all the work. A new path, `-` and an
/// existing regular file are fine. Call it before any work.
pub fn check_output_file(path: &Path) -> Result<()> {
    if is_stdout(path) {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        // New (or a dangling symlink, which the rename replaces): nothing to protect.
        return Ok(());
    };
    if meta.is_file() {
        return Ok(());
    }
    let linked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let what = kind_in_words(meta.file_type());
    let is = if linked {
        format!("is a symlink to {what}")
    } else {
        format!("is {what}")
    };
    let hint = if meta.is_dir() {
        "-o names the one file to write here (e.g. DIR/NAME), or - for standard output"
    } else {
        "refusing to replace it; -o names a regular file to write, or - for standard output"
    };
    Err(Error::malformed(path, format!("{is}; {hint}")))
}

/// Refuses a directory output target that exists and is not a directory (through any
/// symlink), before any work.
pub fn check_output_dir(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(Error::malformed(
            path,
            format!(
                "is {}, not a directory; outputs go into a directory here (a new one is made)",
                if meta.is_file() {
                    "a file"
                } else {
                    kind_in_words(meta.file_type())
                }
            ),
        )),
        _ => Ok(()),
    }
}

impl Default for StagedOutputs {
    fn default() -> Self {
        StagedOutputs {
            staged: Vec::new(),
            mode: 0o644,
            group: None,
            tally: None,
        }
    }
}

/// Resolved folders every write of this process must stay below (`None`: anywhere). Set once by
/// `run` and `daemon`, like a umask: it covers every writer, on every thread.
static CONFINEMENT: RwLock<Option<Vec<PathBuf>>> = RwLock::new(None);

/// Confines every later write of this process below `roots` (resolved now).
pub fn confine_writes(roots: &[PathBuf]) -> Result<()> {
    let resolved = roots
        .iter()
        .map(|r| crate::policy::absolute(r).map(|a| crate::policy::resolve_existing(&a)))
        .collect::<Result<_>>()?;
    *CONFINEMENT.write().expect("confinement") = Some(resolved);
    Ok(())
}

/// `std::fs::create_dir_all`, confined like every write: under a confinement, the nearest
/// existing ancestor is opened and judged by what was opened, and each missing folder is made
/// with `mkdirat` in the folder before it and opened with `O_NOFOLLOW`, so a folder swapped
/// for a symlink mid-way cannot make a folder appear outside.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    // A FIFO, socket, device or file where the folder should be: a clear error, exit 2.
    check_output_dir(dir)?;
    if CONFINEMENT.read().expect("confinement").is_none() {
        return std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e));
    }
    let absolute = crate::policy::absolute(dir)?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    while std::fs::metadata(existing).is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        missing.push(name);
        existing = parent;
    }
    // Judged as the real path of the ancestor opened, with the folders still to make.
    let mut folder = rustix::fs::open(
        existing,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(existing, "open folder", e.into()))?;
    let real = real_path(&folder).map_err(|e| Error::io(existing, "find the real path of", e))?;
    check_below_roots(dir, &missing.iter().rev().fold(real, |p, n| p.join(n)))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for name in missing.into_iter().rev() {
        match rustix::fs::mkdirat(&folder, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::io(dir, "create directory", e.into())),
        }
        folder = rustix::fs::openat(&folder, name, flags, Mode::empty()).map_err(|e| {
            if matches!(e, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) {
                Error::Policy {
                    path: dir.to_path_buf(),
                    rule: format!(
                        "output_root: {} became a symlink or a file while its folders were made",
                        Path::new(name).display()
                    ),
                }
            } else {
                Error::io(dir, "open folder", e.into())
            }
        })?;
    }
    Ok(())
}

/// Opens the folder `dir` (following the operator's own symlinks) and judges what was opened:
/// under a confinement, the descriptor's real path must lie below one of its roots. Every
/// later create and rename goes through this descriptor, never through the path again.
pub fn open_confined_dir(dir: &Path) -> Result<OwnedFd> {
    let folder = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(dir, "open folder", e.into()))?;
    if CONFINEMENT.read().expect("confinement").is_none() {
        return Ok(folder);
    }
    let real = real_path(&folder).map_err(|e| Error::io(dir, "find the real path of", e))?;
    check_below_roots(dir, &real)?;
    Ok(folder)
}

/// Refuses `dir`, whose real path is `real`, unless that lies below a confinement root.
fn check_below_roots(dir: &Path, real: &Path) -> Result<()> {
    let guard = CONFINEMENT.read().expect("confinement");
    let Some(roots) = guard.as_ref() else {
        return Ok(());
    };
    if roots.iter().any(|r| real.starts_with(r)) {
        return Ok(());
    }
    Err(Error::Policy {
        path: dir.to_path_buf(),
        rule: format!(
            "output_root: the folder opened is {}, outside {}",
            real.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Where an open descriptor really is (what the kernel resolved, not the path asked for).
fn real_path(fd: &OwnedFd) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens (creating it if missing, never through a symlink) a lock or log file `name` in the
/// folder `dir`, and refuses anything but a regular file (with `must_be_ours`, one owned by
/// this process's user). `append` opens it for appending.
pub fn open_file_at(
    dir: &OwnedFd,
    name: &str,
    shown: &Path,
    append: bool,
    must_be_ours: bool,
) -> Result<File> {
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if append {
        flags |= OFlags::APPEND;
    }
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644)).map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            Error::malformed(shown, "is a symlink; refusing to follow it")
        } else {
            Error::io(shown, "open", e.into())
        }
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| Error::io(shown, "stat", e))?;
    let uid = rustix::process::geteuid().as_raw();
    if !meta.is_file() {
        return Err(Error::malformed(
            shown,
            format!("is {}, not a regular file", kind_in_words(meta.file_type())),
        ));
    }
    if must_be_ours && meta.uid() != uid {
        return Err(Error::malformed(
            shown,
            format!(
                "is owned by uid {}, not by uid {uid} that writes it; refusing it",
                meta.uid()
            ),
        ));
    }
    Ok(file)
}

/// A temporary created in a folder held open, renamed into place inside that same folder;
/// removed again unless it was renamed.
struct DirTemporary {
    folder: OwnedFd,
    temp_name: OsString,
    final_name: OsString,
    file: File,
    renamed: bool,
}

impl DirTemporary {
    /// Creates `.NAME.XXXXXX.tmp` in `folder` with `O_CREAT | O_EXCL | O_NOFOLLOW`.
    fn create(folder: OwnedFd, final_name: OsString, mode: u32) -> std::io::Result<Self> {
        use std::hash::{BuildHasher, Hasher};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let shown = final_name.to_string_lossy().into_owned();
        for _ in 0..100 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let mut bits = hasher.finish();
            let random: String = (0..6)
                .map(|_| {
                    let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize];
                    bits /= ALPHABET.len() as u64;
                    c as char
                })
                .collect();
            let temp_name = OsString::from(format!(".{shown}.{random}.tmp"));
            let flags =
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            // Journaled before it exists: a kill between the two leaves at worst a line naming
            // nothing, never a temporary no journal names.
            record_temporary(&folder, &temp_name);
            match rustix::fs::openat(&folder, &temp_name, flags, Mode::from_raw_mode(mode)) {
                Ok(fd) => {
                    return Ok(DirTemporary {
                        folder,
                        temp_name,
                        final_name,
                        file: File::from(fd),
                        renamed: false,
                    });
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(std::io::Error::other(
            "no free temporary name after 100 tries",
        ))
    }

    /// Exchanges the temporary with the file at its final name when that is `partner` (the
    /// same inode): the temporary's name then holds `partner`, returned as a [`SpareFile`].
    /// When the final name holds anything else, or the file system cannot exchange, the
    /// temporary is renamed over it as [`Self::rename_into_place`] does.
    fn exchange_into_place(
        mut self,
        partner: File,
    ) -> std::io::Result<(Option<OwnedFd>, Option<SpareFile>)> {
        let at_final =
            rustix::fs::statat(&self.folder, &self.final_name, AtFlags::SYMLINK_NOFOLLOW);
        if at_final.is_ok_and(|st| same_inode(&st, &partner)) {
            match rustix::fs::renameat_with(
                &self.folder,
                &self.temp_name,
                &self.folder,
                &self.final_name,
                rustix::fs::RenameFlags::EXCHANGE,
            ) {
                Ok(()) => {
                    self.file = partner;
                    return Ok((None, Some(SpareFile { temp: self })));
                }
                // Not on this file system: replace it as usual.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.rename_into_place().map(|replaced| (replaced, None))
    }

    /// Whether the temporary's name still holds the file this value holds open.
    fn name_holds_file(&self) -> bool {
        rustix::fs::statat(&self.folder, &self.temp_name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| same_inode(&st, &self.file))
    }

    /// Renames the temporary over its final name. Returns a descriptor of the file it
    /// replaced, if any: its blocks are freed when the last descriptor closes, which the caller
    /// may leave to another thread (see [`release_replaced`]).
    fn rename_into_place(mut self) -> std::io::Result<Option<OwnedFd>> {
        // O_PATH reads nothing and cannot block on a FIFO; it only holds the inode.
        let replaced = rustix::fs::openat(
            &self.folder,
            &self.final_name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok();
        rustix::fs::renameat(
            &self.folder,
            &self.temp_name,
            &self.folder,
            &self.final_name,
        )?;
        self.renamed = true;
        Ok(replaced)
    }
}

/// Files at least this large that an output replaces are released on another thread.
const RELEASE_AWAY_BYTES: u64 = 1 << 20;

/// Closes the descriptors of files that outputs replaced. Freeing a large file's blocks and
/// cached pages takes a while (40 ms for a 64 MiB brick on ext4), so when one is large that
/// happens on a short-lived thread rather than on the path of whoever waits for the outputs
/// (a watch's next event).
fn release_replaced(replaced: Vec<OwnedFd>) {
    let large = replaced
        .iter()
        .any(|fd| rustix::fs::fstat(fd).is_ok_and(|st| st.st_size as u64 >= RELEASE_AWAY_BYTES));
    if large {
        let spawned = std::thread::Builder::new()
            .name("release-replaced".into())
            .spawn(move || drop(replaced));
        // Without a thread they are closed here, which is only slower.
        drop(spawned);
    }
}

impl Drop for DirTemporary {
    fn drop(&mut self) {
        // Only while the name still holds our file: whoever can write the folder may have put
        // something else there, which is not ours to remove.
        if !self.renamed && self.name_holds_file() {
            let _ = rustix::fs::unlinkat(&self.folder, &self.temp_name, AtFlags::empty());
        }
    }
}

/// This process's umask, from `/proc/self/status` (asking `umask(2)` would change it for a
/// moment, under every other thread).
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Whether `st` (from `statat` or `fstat`) is the inode `file` holds open.
fn same_inode(st: &rustix::fs::Stat, file: impl AsFd) -> bool {
    rustix::fs::fstat(file).is_ok_and(|own| own.st_dev == st.st_dev && own.st_ino == st.st_ino)
}

/// An output this process wrote and later exchanged out of place: the version before the
/// last, kept open under a temporary name beside the output it alternates with. Where the file
/// system cannot clone (ext4, tmpfs), a watch brings it up to date in place, writing only what
/// changed in the last two events, and exchanges it back: a 64 MiB brick then costs a few
/// rows instead of a whole rewrite. It is removed when dropped (a watch that ends), unless
/// its name now holds something else.
pub struct SpareFile {
    temp: DirTemporary,
}

impl SpareFile {
    /// The output it alternates with.
    pub fn final_name(&self) -> &std::ffi::OsStr {
        &self.temp.final_name
    }

    /// Whether it may be rewritten in place: its name still holds it, it is `len` bytes, no
    /// other name links to it (a backup made with `ln` or `cp -al` must keep the version it
    /// linked), and no other open file (a reader that opened the output before the exchange,
    /// or mapped it) refers to it, which the kernel tells by granting a write lease only
    /// then. `None` when it may not, else the lease, released when dropped: an open of the
    /// spare while it is patched waits for that. A link made after the check can only be to
    /// the temporary name, while the file is ours alone.
    fn lease_if_unshared(&self, len: u64) -> Option<WriteLease> {
        use std::os::unix::fs::MetadataExt;
        let file = &self.temp.file;
        let alone = |m: &std::fs::Metadata| m.is_file() && m.len() == len && m.nlink() == 1;
        if !file.metadata().is_ok_and(|m| alone(&m)) || !self.temp.name_holds_file() {
            return None;
        }
        let lease = WriteLease::take(file)?;
        // Checked again under the lease: a link made before it was taken counts too.
        file.metadata().is_ok_and(|m| alone(&m)).then_some(lease)
    }
}

/// A write lease on a file this process holds open (see [`SpareFile`]), released when dropped.
/// It holds the descriptor's number only: the file it was taken on outlives it.
struct WriteLease {
    fd: std::os::fd::RawFd,
}

/// `F_SETSIG` from Linux's `fcntl.h`, which the libc crate does not export for this target.
const F_SETSIG: libc::c_int = 10;

impl WriteLease {
    fn take(file: &File) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this process owns; F_SETSIG and F_SETLEASE change only
        // how this open file is signalled and leased. An opener during the lease makes the
        // kernel signal us: SIGURG, ignored by default (SIGIO, the default, ends a process).
        let leased = unsafe {
            libc::fcntl(fd, F_SETSIG, libc::SIGURG) == 0
                && libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) == 0
        };
        leased.then_some(WriteLease { fd })
    }
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        // SAFETY: as in `take`; releasing a lease this process holds.
        unsafe {
            libc::fcntl(self.fd, libc::F_SETLEASE, libc::F_UNLCK);
        }
    }
}

/// Where this process records each temporary it creates (a daemon's journal), if anywhere.
static TEMPORARY_JOURNAL: Mutex<Option<File>> = Mutex::new(None);

/// Records every temporary this process creates from now on in `journal`, one JSON string (its
/// real path) per line, written before any byte goes into the temporary.
pub fn journal_temporaries(journal: File) {
    *TEMPORARY_JOURNAL.lock().expect("journal") = Some(journal);
}

fn record_temporary(folder: &OwnedFd, temp_name: &OsString) {
    let mut journal = TEMPORARY_JOURNAL.lock().expect("journal");
    let Some(file) = journal.as_mut() else {
        return;
    };
    if let Ok(dir) = real_path(folder) {
        let line = serde_json::to_string(&dir.join(temp_name)).expect("a path serialises");
        // One write per line (O_APPEND): a journal line is never interleaved.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Removes one temporary a journal recorded, if it is still there: only a regular file owned by
/// this process's user, named as a temporary, in a folder whose real path is the one recorded
/// (a folder swapped for a symlink since then is left alone). Returns whether it was removed.
pub fn remove_journaled_temporary(recorded: &Path) -> bool {
    let (Some(dir), Some(name)) = (recorded.parent(), recorded.file_name()) else {
        return false;
    };
    if !is_staged_temporary(&name.to_string_lossy()) {
        return false;
    }
    let Ok(folder) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    if real_path(&folder).ok().as_deref() != Some(dir) {
        return false;
    }
    let Ok(stat) = rustix::fs::statat(&folder, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    regular
        && stat.st_uid == rustix::process::geteuid().as_raw()
        && rustix::fs::unlinkat(folder.as_fd(), name, AtFlags::empty()).is_ok()
}

/// Whether `name` is one of our temporaries: `.NAME.XXXXXX.tmp`, six random characters.
fn is_staged_temporary(name: &str) -> bool {
    staged_target(name).is_some()
}

/// The NAME a temporary `.NAME.XXXXXX.tmp` was staged for, if `name` is one.
fn staged_target(name: &str) -> Option<&str> {
    let (stem, random) = name.strip_suffix(".tmp")?.rsplit_once('.')?;
    let target = stem.strip_prefix('.')?;
    let ours = !target.is_empty()
        && random.len() == 6
        && random.bytes().all(|b| b.is_ascii_alphanumeric());
    ours.then_some(target)
}

/// One file once it is in place.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub bytes: u64,
}

impl StagedOutputs {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes this set commits are added to `tally`, when there is one.
    pub fn with_tally(mut self, tally: Option<&WriteTally>) -> Self {
        self.tally = tally.cloned();
        self
    }

    /// Files staged from now on get `mode` (default `0644`); see [`crate::policy::output_mode`].
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Files staged from now on get group `gid` (the source's, so an output is shared with
    /// no one its source was not), when this process may give it: as root or as a member of
    /// the group. Otherwise the group stays the process's, which `mode` already keeps shut
    /// when the source hid itself from its group.
    pub fn with_group(mut self, gid: Option<u32>) -> Self {
        self.group = gid;
        self
    }

    /// Writes `path`'s future content through `write` into a temporary file beside it (for
    /// `-`, an unnamed temporary file; only one output may go to standard output).
    pub fn write(
        &mut self,
        path: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        check_output_file(path)?;
        if is_stdout(path) {
            return self.write_stdout(write);
        }
        self.stage_file(path, |file| write_buffered(file, write))?;
        Ok(())
    }

    /// [`Self::write`] of content that differs from an earlier version's only where `patch`
    /// writes it. `earlier.last` is a descriptor this process kept of the version it wrote
    /// last (never a path opened now), and `len` the new content's length.
    ///
    /// - Where the file system shares blocks between files (XFS, btrfs), the temporary starts
    ///   as a clone of `last` and `patch(file, Basis::Clone)` writes the changed bytes: a
    ///   watch's 64 MiB brick costs a few row writes.
    /// - Elsewhere (ext4, tmpfs), `earlier.spare`, the version before the last (see
    ///   [`SpareFile`]), is brought up to date in place by `patch(file, Basis::Spare)` (which
    ///   must then write what changed since that version) when no one else has it open, and
    ///   exchanged with the output at commit.
    /// - Otherwise `write` writes it whole; with `earlier.keep_spare`, the commit then
    ///   exchanges it with `last` rather than replacing it, so the next call has a spare.
    ///
    /// Returns a descriptor of the staged file, the next call's `last` (none for standard
    /// output).
    pub fn write_from_base(
        &mut self,
        path: &Path,
        earlier: Earlier<'_>,
        len: u64,
        patch: impl FnOnce(&File, Basis) -> std::io::Result<()>,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Option<File>> {
        check_output_file(path)?;
        if is_stdout(path) {
            self.write_stdout(write)?;
            return Ok(None);
        }
        let keep = |file: &File| {
            file.try_clone()
                .map_err(|e| Error::io(path, "keep a descriptor of", e))
        };
        if let (Some(spare), Some(last)) = (earlier.spare, earlier.last) {
            let dir = parent_of(path);
            let same_folder = open_confined_dir(dir).is_ok_and(|folder| {
                rustix::fs::fstat(&folder).is_ok_and(|now| same_inode(&now, &spare.temp.folder))
            });
            let fresh_mode = process_umask().map(|umask| self.mode & !umask);
            let leased = (same_folder && Some(spare.final_name()) == path.file_name())
                .then(|| spare.lease_if_unshared(len))
                .flatten();
            if let (Some(lease), Some(fresh_mode)) = (leased, fresh_mode) {
                let patched = patch(&spare.temp.file, Basis::Spare);
                drop(lease);
                patched.map_err(|e| Error::io(path, "write", e))?;
                // The mode and group this version is due, as a new temporary gets them (its
                // mode under the umask): the source's may have changed since the spare was made.
                rustix::fs::fchmod(&spare.temp.file, Mode::from_raw_mode(fresh_mode))
                    .map_err(|e| Error::io(path, "set the mode of", e.into()))?;
                self.give_group(&spare.temp.file);
                let (file, partner) = (keep(&spare.temp.file)?, keep(last)?);
                self.staged
                    .push(Staged::Exchange(spare.temp, path.to_path_buf(), partner));
                return Ok(Some(file));
            }
            // Not usable (someone has it open, or it is not what we left): it is removed here,
            // and this version is written whole.
        }
        let mut cloned = false;
        let file = self.stage_file(path, |file| {
            cloned = earlier.last.is_some_and(|last| {
                last.metadata().is_ok_and(|m| m.is_file() && m.len() == len)
                    && rustix::fs::ioctl_ficlone(file, last).is_ok()
            });
            if cloned {
                patch(file, Basis::Clone)
            } else {
                write_buffered(file, write)
            }
        })?;
        let file = keep(file)?;
        if let (false, true, Some(last)) = (cloned, earlier.keep_spare, earlier.last) {
            let partner = keep(last)?;
            if let Some(Staged::File(temp, path)) = self.staged.pop() {
                self.staged.push(Staged::Exchange(temp, path, partner));
            }
        }
        Ok(Some(file))
    }

    /// Gives `file` the group files staged now get, if any (see [`Self::with_group`]).
    fn give_group(&self, file: &File) {
        if let Some(gid) = self.group {
            // EPERM (not root, not in the group) leaves the process's group: ignored.
            let _ = std::os::unix::fs::fchown(file, None, Some(gid));
        }
    }

    /// Creates the temporary for `path`, fills it with `fill` and stages it; returns it.
    fn stage_file(
        &mut self,
        path: &Path,
        fill: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Result<&File> {
        let dir = parent_of(path);
        create_dir_all(dir)?;
        let name = path.file_name().map(OsString::from).unwrap_or_default();
        let folder = open_confined_dir(dir)?;
        let temp = DirTemporary::create(folder, name, self.mode)
            .map_err(|e| Error::io(dir, "create temporary file", e))?;
        self.give_group(&temp.file);
        fill(&temp.file).map_err(|e| Error::io(path, "write", e))?;
        self.staged.push(Staged::File(temp, path.to_path_buf()));
        match self.staged.last() {
            Some(Staged::File(temp, _)) => Ok(&temp.file),
            _ => unreachable!("a file was just staged"),
        }
    }

    /// Stages the one output that goes to standard output, in an unnamed temporary file so
    /// that nothing reaches the reader unless the whole run succeeds.
    fn write_stdout(
        &mut self,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let stdout = Path::new("standard output");
        if self.staged.iter().any(|s| matches!(s, Staged::Stdout(_))) {
            return Err(Error::Usage(
                "-o - writes one file to standard output, and this run has more than one".into(),
            ));
        }
        let mut temp =
            tempfile::tempfile().map_err(|e| Error::io(stdout, "create temporary file", e))?;
        {
            let mut writer = BufWriter::with_capacity(64 << 10, &mut temp);
            write(&mut writer)
                .and_then(|()| writer.flush())
                .map_err(|e| Error::io(stdout, "write", e))?;
        }
        self.staged.push(Staged::Stdout(temp));
        Ok(())
    }

    /// Paths staged so far, in order (`-` for standard output).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.staged.iter().map(|s| match s {
            Staged::File(_, p) | Staged::Exchange(_, p, _) => p.as_path(),
            Staged::Stdout(_) => Path::new(STDOUT),
        })
    }

    /// Renames every staged file into place, in the order they were written.
    pub fn commit(self) -> Result<Vec<WrittenFile>> {
        // Spares nobody asked to keep are removed as they drop.
        self.commit_keeping_spares().map(|(written, _)| written)
    }

    /// [`Self::commit`], returning the [`SpareFile`]s the exchanges left (see
    /// [`Self::write_from_base`]).
    pub fn commit_keeping_spares(self) -> Result<(Vec<WrittenFile>, Vec<SpareFile>)> {
        let tally = self.tally.clone();
        let mut spares = Vec::new();
        let mut written = Vec::with_capacity(self.staged.len());
        // A target may have been swapped for a device since the work began: check them all
        // before the first rename, so the set lands whole or not at all.
        for path in self.paths() {
            check_output_file(path)?;
        }
        let mut replaced = Vec::new();
        for staged in self.staged {
            let (temp, path, partner) = match staged {
                Staged::File(temp, path) => (temp, path, None),
                Staged::Exchange(temp, path, partner) => (temp, path, Some(partner)),
                Staged::Stdout(file) => {
                    written.push(copy_to_stdout(file)?);
                    continue;
                }
            };
            let bytes = temp
                .file
                .metadata()
                .map_err(|e| Error::io(&path, "stat", e))?
                .len();
            let placed = match partner {
                Some(partner) => temp.exchange_into_place(partner),
                None => temp.rename_into_place().map(|replaced| (replaced, None)),
            };
            let (old, spare) = placed.map_err(|e| Error::io(&path, "rename into place", e))?;
            replaced.extend(old);
            spares.extend(spare);
            written.push(WrittenFile { path, bytes });
        }
        release_replaced(replaced);
        if let Some(tally) = tally {
            let bytes: u64 = written.iter().map(|w| w.bytes).sum();
            tally.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((written, spares))
    }
}

/// Runs `write` into `file` through a buffer.
fn write_buffered(
    mut file: &File,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // Small: large writes (textures) bypass the buffer anyway, and a big buffer per file
    // costs an mmap when folding thousands of small files.
    let mut writer = BufWriter::with_capacity(64 << 10, &mut file);
    write(&mut writer)?;
    writer.flush()
}

/// Copies a staged standard-output file to standard output.
fn copy_to_stdout(mut file: File) -> Result<WrittenFile> {
    let stdout = Path::new("standard output");
    file.rewind().map_err(|e| Error::io(stdout, "write", e))?;
    let mut out = std::io::stdout().lock();
    let bytes = std::io::copy(&mut file, &mut out)
        .and_then(|n| out.flush().map(|()| n))
        .map_err(|e| Error::io(stdout, "write", e))?;
    Ok(WrittenFile {
        path: PathBuf::from(STDOUT),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lands_until_commit_and_failures_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let mut staged = StagedOutputs::new();
        staged.write(&a, |w| w.write_all(b"first")).unwrap();
        assert!(!a.exists());
        let failed = staged.write(&dir.path().join("b.bin"), |_| {
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        drop(staged);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "temporary files must be removed");

        let mut staged = StagedOutputs::new();
        staged.write(&a, |w| w.write_all(b"second")).unwrap();
        let written = staged.commit().unwrap();
        assert_eq!(written[0].bytes, 6);
        assert_eq!(std::fs::read(&a).unwrap(), b"second");
    }

    #[test]
    fn only_journaled_temporaries_in_their_recorded_folder_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let sub = root.join("files/etc");
        std::fs::create_dir_all(&sub).unwrap();
        // What a killed writer leaves: a staged file never renamed and never removed.
        let mut staged = StagedOutputs::new();
        staged
            .write(&sub.join("passwd.brick"), |w| w.write_all(b"half"))
            .unwrap();
        let Some(Staged::File(mut temp, _)) = staged.staged.pop() else {
            panic!("a file was staged");
        };
        temp.renamed = true;
        let left = sub.join(&temp.temp_name);
        drop(temp);
        // A user's files: named like temporaries or not, none is in the journal.
        let users = [".a.brick.ABC12x.tmp", "notes.tmp"];
        for name in users {
            std::fs::write(sub.join(name), b"mine").unwrap();
        }
        assert!(!remove_journaled_temporary(&sub.join("notes.tmp")));
        // The same name through a folder that is now a symlink: not the folder recorded.
        let link = root.join("link");
        std::os::unix::fs::symlink(&sub, &link).unwrap();
        assert!(!remove_journaled_temporary(
            &link.join(left.file_name().unwrap())
        ));
        assert!(left.exists());
        assert!(remove_journaled_temporary(&left));
        assert!(!left.exists());
        for name in users {
            assert!(sub.join(name).exists());
        }
    }

    /// Names the folder the child process of
    /// [`folders_outside_the_confinement_are_never_created`] works in. The confinement is
    /// process-wide and cannot be lifted, so it is set only in that child, never beside the
    /// other tests of this process.
    const CONFINED_CHILD: &str = "FOUNDRY_TEST_CONFINED_CHILD";

    #[test]
    fn folders_outside_the_confinement_are_never_created() {
        let Some(dir) = std::env::var_os(CONFINED_CHILD).map(PathBuf::from) else {
            let dir = tempfile::tempdir().unwrap();
            let name = "format::staged::tests::folders_outside_the_confinement_are_never_created";
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(CONFINED_CHILD, dir.path())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&child.stdout);
            assert!(
                child.status.success() && stdout.contains("1 passed"),
                "{stdout}{}",
                String::from_utf8_lossy(&child.stderr)
            );
            return;
        };
        let (inside, outside) = (dir.join("inside"), dir.join("outside"));
        let tree = inside.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("a.txt"), b"some bytes").unwrap();
        confine_writes(std::slice::from_ref(&inside)).unwrap();

        create_dir_all(&inside.join("made/below")).unwrap();
        assert!(create_dir_all(&outside.join("dir")).is_err());
        assert!(crate::map::BuilderRoot::open(&outside.join("builder")).is_err());
        let backend = crate::backend::Backend::Cpu;
        let snapshot = crate::snapshot::snapshot(
            &backend,
            std::slice::from_ref(&tree),
            &outside.join("snapshot"),
            &Default::default(),
            &crate::progress::Silent,
        );
        assert!(snapshot.is_err());
        let watch_opts = crate::watch::WatchOptions {
            output: outside.join("watch"),
            interval: std::time::Duration::from_millis(10),
            debounce: std::time::Duration::from_millis(10),
            max_delay: std::time::Duration::from_millis(10),
            publish: None,
            versioned: false,
            fold: Default::default(),
            max_refolds: Some(0),
            duration: Some(std::time::Duration::ZERO),
            policy: None,
        };
        let stopped = std::sync::atomic::AtomicBool::new(true);
        let watched = crate::watch::watch(
            &backend,
            &[tree.join("a.txt")],
            &watch_opts,
            &stopped,
            &mut |_| {},
        );
        assert!(watched.is_err());
        assert!(
            !outside.exists(),
            "a folder appeared outside the confinement"
        );
    }

    #[test]
    fn targets_that_are_not_regular_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let null = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &null).unwrap();
        let err = check_output_file(&null).unwrap_err().to_string();
        assert!(err.ends_with("null: is a symlink to a character device; refusing to replace it; -o names a regular file to write, or - for standard output"), "{err}");
        let err = check_output_file(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("is a directory; -o names the one file"),
            "{err}"
        );
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"old").unwrap();
        for fine in [plain.as_path(), Path::new("-"), &dir.path().join("new")] {
            check_output_file(fine).unwrap();
        }
        assert!(check_output_dir(&plain).is_err());
        check_output_dir(dir.path()).unwrap();

        let mut staged = StagedOutputs::new();
        let refused = staged.write(&null, |w| w.write_all(b"lost"));
        assert!(refused.unwrap_err().is_input_error());
        assert!(std::fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
