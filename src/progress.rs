//! How long work reports its progress without the library printing anything.

/// Receives progress from long operations; the binary draws it, tests ignore it.
pub trait Progress: Sync {
    /// A new stage begins with `total` units (bytes, files, parts).
    fn stage(&self, name: &str, total: u64);
    /// `done` more units of the current stage are finished.
    fn advance(&self, done: u64);
    /// `done` more files are finished (tree walks report files beside bytes).
    fn files(&self, _done: u64) {}
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn stage(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}
