//! `foundry.toml`: settings a user keeps between runs (the `[llm]` and `[policy]` tables), read from
//! `--config FILE` or `./foundry.toml`, with errors that name the file, line and key.

use crate::error::{Error, Result};
use crate::llm::LlmSettings;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file name looked for in the current directory.
pub const DEFAULT_FILE: &str = "foundry.toml";

/// Everything `foundry.toml` may hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub llm: LlmSettings,
    #[serde(default)]
    pub policy: crate::policy::PolicySettings,
    /// The file it came from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Reads `explicit`, else `./foundry.toml` when it exists, else the defaults.
pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_FILE);
            if !p.is_file() {
                return Ok(Config::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "read", e))?;
    let mut config: Config =
        toml::from_str(&text).map_err(|e| Error::malformed(&path, e.to_string().trim_end()))?;
    config.source = Some(path);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "[llm]\nbase_url = \"http://127.0.0.1:9\"\nconcurrency = 3\n",
        )
        .unwrap();
        let c = load(Some(&good)).unwrap();
        assert_eq!(c.llm.concurrency, Some(3));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[llm]\nconcurency = 3\n").unwrap();
        let e = load(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("concurency"), "{e}");
        assert!(load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
