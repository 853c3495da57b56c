//! Answers kept on disk, keyed by (content SHA-256, prompt version, model, schema version), so an
//! unchanged artifact is never asked about twice.

use super::digest::PROMPT_VERSION;
use super::reply::{Answer, SCHEMA_VERSION};
use crate::format::staged::StagedOutputs;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// One stored answer and what it was asked under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub content_sha256: String,
    pub prompt_version: u32,
    pub schema_version: u32,
    /// The model asked for (the key).
    pub requested_model: String,
    /// The model that answered.
    pub model: String,
    pub answer: Answer,
    pub generated_at: f64,
}

/// A directory of `KEY.json` files.
#[derive(Clone, Debug)]
pub struct AnswerCache {
    dir: PathBuf,
}

/// `$XDG_CACHE_HOME/foundry-gpu/llm`, else `~/.cache/foundry-gpu/llm` (`FOUNDRY_LLM_CACHE` is
/// one layer up, in [`super::LlmConfig::resolve`]).
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("foundry-gpu").join("llm"))
}

/// The cache key of an artifact asked of `model`.
pub fn key(content_sha256: &str, model: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("{content_sha256}\n{PROMPT_VERSION}\n{model}\n{SCHEMA_VERSION}").as_bytes());
    hex::encode(h.finalize())
}

impl AnswerCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AnswerCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, content_sha256: &str, model: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", key(content_sha256, model)))
    }

    /// The stored answer, if any; an unreadable or foreign entry counts as a miss.
    pub fn get(&self, content_sha256: &str, model: &str) -> Option<CachedAnswer> {
        let text = std::fs::read(self.path(content_sha256, model)).ok()?;
        let entry: CachedAnswer = serde_json::from_slice(&text).ok()?;
        (entry.content_sha256 == content_sha256
            && entry.requested_model == model
            && entry.prompt_version == PROMPT_VERSION
            && entry.schema_version == SCHEMA_VERSION)
            .then_some(entry)
    }

    /// Stores `entry` atomically (temp file and rename), so concurrent runs never read half.
    pub fn put(&self, entry: &CachedAnswer) -> crate::Result<()> {
        let text = serde_json::to_vec_pretty(entry).expect("cache entry serialises");
        let mut staged = StagedOutputs::new();
        staged.write(
            &self.path(&entry.content_sha256, &entry.requested_model),
            |w| w.write_all(&text),
        )?;
        staged.commit().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_content_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let cache = AnswerCache::new(dir.path());
        let entry = CachedAnswer {
            content_sha256: "ab".repeat(32),
            prompt_version: PROMPT_VERSION,
            schema_version: SCHEMA_VERSION,
            requested_model: "m1".into(),
            model: "m1-q4".into(),
            answer: Answer {
                summary: "s".into(),
                tags: vec![],
                risk: "low".into(),
                warnings: vec![],
            },
            generated_at: 1.0,
        };
        assert!(cache.get(&entry.content_sha256, "m1").is_none());
        cache.put(&entry).unwrap();
        assert_eq!(
            cache.get(&entry.content_sha256, "m1").unwrap().model,
            "m1-q4"
        );
        assert!(cache.get(&entry.content_sha256, "m2").is_none());
        assert!(cache.get(&"cd".repeat(32), "m1").is_none());
        assert_ne!(key("a", "m"), key("a", "n"));
    }
}
