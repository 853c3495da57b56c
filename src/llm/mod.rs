//! Semantic metadata from a local LM Studio (or any OpenAI-compatible) server: configuration,
//! the client, the prompt digest, reply handling and the answer cache.

pub mod cache;
pub mod client;
pub mod digest;
pub mod redact;
pub mod reply;
pub mod sse;

pub use client::{ArtifactRequest, LlmClient, LlmOutcome, ServerState};
pub use reply::{Answer, LlmError};

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "http://localhost:1234";
/// LM Studio's usual loaded context when the server does not say.
pub const DEFAULT_CONTEXT_TOKENS: usize = 4096;
pub const DEFAULT_MAX_REPLY_TOKENS: u32 = 512;
pub const DEFAULT_CONCURRENCY: usize = 2;

/// The `[llm]` table of `foundry.toml`; every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// Used when the server does not report its loaded context length.
    pub context_tokens: Option<usize>,
    pub max_reply_tokens: Option<u32>,
    pub concurrency: Option<usize>,
    pub connect_timeout_secs: Option<f64>,
    pub read_timeout_secs: Option<f64>,
    pub cache_dir: Option<PathBuf>,
    /// `false` turns the answer cache off.
    pub cache: Option<bool>,
}

/// What the command line (or a task) says, winning over environment and file.
#[derive(Clone, Debug, Default)]
pub struct LlmOverrides {
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub no_cache: bool,
}

/// The resolved client configuration.
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
pub struct LlmConfig {
    /// Normalised: scheme, host and port, no trailing slash, no `/v1`.
    pub base_url: String,
    pub model: Option<String>,
    /// Bearer token, from `LM_API_TOKEN` only (never from files that might be shared).
    pub token: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for the first byte and between bytes; long because JIT model loading sends
    /// nothing for minutes.
    pub read_timeout: Duration,
    pub context_tokens: usize,
    pub max_reply_tokens: u32,
    pub concurrency: usize,
    pub cache_dir: Option<PathBuf>,
    /// Hosts besides loopback the client may ask (the policy's `llm_hosts`).
    pub allowed_hosts: Vec<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: DEFAULT_BASE_URL.into(),
            model: None,
            token: None,
            connect_timeout: Duration::from_millis(1500),
            read_timeout: Duration::from_secs(300),
            context_tokens: DEFAULT_CONTEXT_TOKENS,
            max_reply_tokens: DEFAULT_MAX_REPLY_TOKENS,
            concurrency: DEFAULT_CONCURRENCY,
            cache_dir: cache::default_dir(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `localhost:1234/`, `http://host:1234/v1/` and `http://host:1234` all become
/// `http://host:1234`. Parsed by the HTTP client's own URL parser ([`reqwest::Url`]), so the
/// host the policy judges is the host the client connects to; user names and passwords in the
/// URL are refused (a token goes in `LM_API_TOKEN`).
pub fn normalise_base_url(url: &str) -> Result<String, String> {
    let parsed = parse_base_url(url)?;
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The base URL as the client uses it: http, a host, no user name or password, no query or
/// fragment, a path ending in `/` (so request paths are appended as segments) and without a
/// trailing `v1/`.
pub fn parse_base_url(url: &str) -> Result<reqwest::Url, String> {
    let trimmed = url.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    // Errors name the URL without anything that could be a password.
    let shown = |u: &str| match u.split_once("://") {
        Some((scheme, rest)) if rest.contains('@') => {
            format!("{scheme}://…@{}", rest.rsplit('@').next().unwrap_or(""))
        }
        _ => u.to_string(),
    };
    let mut parsed =
        reqwest::Url::parse(&with_scheme).map_err(|e| format!("{}: {e}", shown(trimmed)))?;
    let wrong_scheme = match parsed.scheme() {
        "http" => None,
        "https" => {
            Some("https is not supported (this build carries no TLS; LM Studio serves plain HTTP)")
        }
        _ => Some("only http:// URLs are supported"),
    };
    if let Some(why) = wrong_scheme {
        return Err(format!("{}: {why}", shown(trimmed)));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{}: a user name or password in the URL is refused (put a token in LM_API_TOKEN)",
            shown(trimmed)
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{}: no host", shown(trimmed)));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{}: a query or fragment has no place in a base URL",
            shown(trimmed)
        ));
    }
    let path = parsed.path().trim_end_matches('/');
    let path = path
        .strip_suffix("/v1")
        .unwrap_or(path)
        .trim_end_matches('/');
    let path = format!("{path}/");
    parsed.set_path(&path);
    Ok(parsed)
}

impl LlmConfig {
    /// [`Self::base_url`] as the client parses it and connects to it.
    pub fn url(&self) -> Result<reqwest::Url, String> {
        parse_base_url(&self.base_url)
    }

    /// Command line over environment (`FOUNDRY_LLM_URL`, `FOUNDRY_LLM_MODEL`, `LM_API_TOKEN`,
    /// `FOUNDRY_LLM_CACHE`) over `foundry.toml` over defaults.
    pub fn resolve(
        file: &LlmSettings,
        env: &dyn Fn(&str) -> Option<String>,
        cli: &LlmOverrides,
    ) -> Result<Self, String> {
        let d = LlmConfig::default();
        let base = cli
            .base_url
            .clone()
            .or_else(|| env("FOUNDRY_LLM_URL"))
            .or_else(|| file.base_url.clone())
            .unwrap_or(d.base_url);
        let secs = |v: Option<f64>, name: &str, default: Duration| match v {
            Some(s) if s.is_finite() && s > 0.0 && s < 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(format!(
                "llm.{name} = {s}: must be between 0 and 86400 seconds"
            )),
            None => Ok(default),
        };
        let concurrency = file.concurrency.unwrap_or(d.concurrency);
        if !(1..=64).contains(&concurrency) {
            return Err(format!("llm.concurrency = {concurrency}: must be 1 to 64"));
        }
        let context_tokens = file.context_tokens.unwrap_or(d.context_tokens);
        if !(512..=10_000_000).contains(&context_tokens) {
            return Err(format!(
                "llm.context_tokens = {context_tokens}: must be at least 512"
            ));
        }
        let max_reply_tokens = file.max_reply_tokens.unwrap_or(d.max_reply_tokens);
        if !(64..=32_768).contains(&max_reply_tokens) {
            return Err(format!(
                "llm.max_reply_tokens = {max_reply_tokens}: must be 64 to 32768"
            ));
        }
        let cache_dir = if cli.no_cache || file.cache == Some(false) {
            None
        } else {
            cli.cache_dir
                .clone()
                .or_else(|| env("FOUNDRY_LLM_CACHE").map(PathBuf::from))
                .or_else(|| file.cache_dir.clone())
                .or(d.cache_dir)
        };
        Ok(LlmConfig {
            base_url: normalise_base_url(&base)?,
            model: cli
                .model
                .clone()
                .or_else(|| env("FOUNDRY_LLM_MODEL"))
                .or_else(|| file.model.clone())
                .filter(|m| !m.trim().is_empty()),
            token: env("LM_API_TOKEN").filter(|t| !t.is_empty()),
            connect_timeout: secs(
                file.connect_timeout_secs,
                "connect_timeout_secs",
                d.connect_timeout,
            )?,
            read_timeout: secs(file.read_timeout_secs, "read_timeout_secs", d.read_timeout)?,
            context_tokens,
            max_reply_tokens,
            concurrency,
            cache_dir,
            allowed_hosts: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        for url in [
            "localhost:1234",
            "http://localhost:1234/",
            "http://localhost:1234/v1",
            "http://localhost:1234/v1/",
        ] {
            assert_eq!(normalise_base_url(url).unwrap(), "http://localhost:1234");
        }
        assert_eq!(
            normalise_base_url("http://10.0.0.2:9000/lm/v1").unwrap(),
            "http://10.0.0.2:9000/lm"
        );
        assert!(normalise_base_url("https://x").unwrap_err().contains("TLS"));
        assert!(normalise_base_url("ftp://x").is_err());
        assert!(normalise_base_url("http://").is_err());
        assert!(normalise_base_url("http://u:hunter2@127.0.0.1")
            .unwrap_err()
            .contains("LM_API_TOKEN"));
        assert!(!normalise_base_url("http://u:hunter2@127.0.0.1")
            .unwrap_err()
            .contains("hunter2"));
        assert!(normalise_base_url("file:///etc/passwd").is_err());
        // The client's parser reads a backslash as a path separator: the host is 0.0.0.0.
        let tricky = parse_base_url("http://0.0.0.0:18765\\@127.0.0.1").unwrap();
        assert_eq!(tricky.host_str(), Some("0.0.0.0"));
    }

    #[test]
    fn command_line_beats_environment_beats_file() {
        let file = LlmSettings {
            base_url: Some("http://file:1".into()),
            model: Some("file-model".into()),
            ..Default::default()
        };
        let env = |k: &str| match k {
            "FOUNDRY_LLM_URL" => Some("http://env:2".into()),
            "LM_API_TOKEN" => Some("secret".into()),
            _ => None,
        };
        let none = |_: &str| None;
        let c = LlmConfig::resolve(&file, &env, &LlmOverrides::default()).unwrap();
        assert_eq!(
            (c.base_url.as_str(), c.model.as_deref()),
            ("http://env:2", Some("file-model"))
        );
        assert_eq!(c.token.as_deref(), Some("secret"));
        let cli = LlmOverrides {
            base_url: Some("cli:3".into()),
            no_cache: true,
            ..Default::default()
        };
        let c = LlmConfig::resolve(&file, &none, &cli).unwrap();
        assert_eq!(c.base_url, "http://cli:3");
        assert!(c.token.is_none() && c.cache_dir.is_none());
        let bad = LlmSettings {
            concurrency: Some(0),
            ..Default::default()
        };
        assert!(LlmConfig::resolve(&bad, &none, &LlmOverrides::default()).is_err());
    }
}
