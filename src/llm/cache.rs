//! Answers kept on disk, keyed by (content SHA-256, prompt version, model, schema version, and
//! the rest of what the prompt says: the artifact's name and the task's intent), so an unchanged
//! artifact is never asked about twice, and a different question is never answered from cache.

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
    /// [`prompt_context`] of the question (name and intent).
    #[serde(default)]
    pub prompt_context: String,
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
pub fn key(content_sha256: &str, prompt_context: &str, model: &str) -> String {
    let mut h = Sha256::new();
    h.update(
        format!("{content_sha256}\n{prompt_context}\n{PROMPT_VERSION}\n{model}\n{SCHEMA_VERSION}")
            .as_bytes(),
    );
    hex::encode(h.finalize())
}

/// What the prompt says besides the bytes: the name it is shown under and the task's intent.
pub fn prompt_context(name: &str, intent: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(intent.unwrap_or_default().as_bytes());
    hex::encode(h.finalize())
}

impl AnswerCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AnswerCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, content_sha256: &str, prompt_context: &str, model: &str) -> PathBuf {
        let key = key(content_sha256, prompt_context, model);
        self.dir.join(format!("{key}.json"))
    }

    /// The stored answer, if any; an unreadable or foreign entry counts as a miss.
    pub fn get(
        &self,
        content_sha256: &str,
        prompt_context: &str,
        model: &str,
    ) -> Option<CachedAnswer> {
        let text = std::fs::read(self.path(content_sha256, prompt_context, model)).ok()?;
        let entry: CachedAnswer = serde_json::from_slice(&text).ok()?;
        (entry.content_sha256 == content_sha256
            && entry.prompt_context == prompt_context
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
            &self.path(
                &entry.content_sha256,
                &entry.prompt_context,
                &entry.requested_model,
            ),
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
        let context = prompt_context("ls", None);
        let entry = CachedAnswer {
            content_sha256: "ab".repeat(32),
            prompt_context: context.clone(),
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
        let sha = &entry.content_sha256;
        assert!(cache.get(sha, &context, "m1").is_none());
        cache.put(&entry).unwrap();
        assert_eq!(cache.get(sha, &context, "m1").unwrap().model, "m1-q4");
        assert!(cache.get(sha, &context, "m2").is_none());
        assert!(cache.get(&"cd".repeat(32), &context, "m1").is_none());
        let asked_differently = prompt_context("ls", Some("is it a rootkit?"));
        assert!(cache.get(sha, &asked_differently, "m1").is_none());
        assert_ne!(key("a", "c", "m"), key("a", "c", "n"));
    }
}
