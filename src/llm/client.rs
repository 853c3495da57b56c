//! The LM Studio (OpenAI-compatible) client: a startup probe that tells Ready from Unavailable,
//! AuthRequired and Misconfigured; chat completions with a JSON schema, streamed, with idle
//! timeouts, one retry on context overflow only, a concurrency limit, and the answer cache.

use super::cache::{AnswerCache, CachedAnswer};
use super::digest::{self, Digest, SYSTEM_PROMPT};
use super::reply::{answer_schema, body_error, classify, Answer, LlmError, RawReply};
use super::sse::{SseItem, SseParser};
use super::LlmConfig;
use crate::analysis::local::LocalAnalysis;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

/// What the startup probe found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServerState {
    Ready {
        models: Vec<String>,
        /// The loaded context length, when the server reports it.
        context_tokens: Option<usize>,
    },
    /// Nothing answers (not running, wrong port, or it timed out).
    Unavailable { reason: String },
    /// The server wants a token (`LM_API_TOKEN`) or refused the one given.
    AuthRequired { reason: String },
    /// Something answers but not as an OpenAI-compatible server with a model to use.
    Misconfigured { reason: String },
}

impl ServerState {
    pub fn label(&self) -> &'static str {
        match self {
            ServerState::Ready { .. } => "ready",
            ServerState::Unavailable { .. } => "unavailable",
            ServerState::AuthRequired { .. } => "auth_required",
            ServerState::Misconfigured { .. } => "misconfigured",
        }
    }
}

/// One artifact to describe.
#[derive(Clone, Copy, Debug)]
pub struct ArtifactRequest<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub analysis: &'a LocalAnalysis,
    /// The task's `intent`, passed on to the model.
    pub intent: Option<&'a str>,
}

/// How asking about one artifact went; lands in the metadata as `semantic.llm`.
#[derive(Clone, Debug, Serialize)]
pub struct LlmOutcome {
    /// `answered`, `cached`, or why there is no answer: `unavailable`, `auth_required`,
    /// `misconfigured`, `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    /// The model that actually answered (servers may substitute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip)]
    pub answer: Option<Answer>,
    /// When the answer was generated (a cached answer keeps its original time).
    #[serde(skip)]
    pub generated_at: Option<f64>,
    pub requests: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_estimated: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_budget_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub digest_omitted: Vec<String>,
    /// Secrets removed from the digest before it was sent, by kind.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub redacted: std::collections::BTreeMap<&'static str, u64>,
    pub seconds: f64,
}

/// The client. Cheap to share; requests made through it keep to `config.concurrency`.
pub struct LlmClient {
    config: LlmConfig,
    /// `config.base_url` as parsed once: the URL the policy judged, and the only one every
    /// request URL is built from (by path segments, never by re-parsing a formatted string).
    base: reqwest::Url,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    permits: Arc<Semaphore>,
    cache: Option<AnswerCache>,
    /// The probe's answer. Ready is kept; any other state is probed again by the next call, so
    /// a server started after the client (a long watch) is found.
    state: std::sync::Mutex<Arc<OnceCell<ServerState>>>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("base_url", &self.config.base_url)
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// A client for `config`; refused when its host is neither loopback nor in
    /// `config.allowed_hosts` (the policy's `llm_hosts`), because digests of local files go there.
    pub fn new(config: LlmConfig) -> Result<Self, String> {
        let base = config.url()?;
        crate::policy::check_llm_host(&base, &config.allowed_hosts)
            .map_err(|r| format!("{}: refused by policy: {}", config.base_url, r.rule))?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // Local servers only: a proxy from the environment must not intercept loopback.
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        Ok(LlmClient {
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            cache: config.cache_dir.clone().map(AnswerCache::new),
            http,
            runtime,
            config,
            base,
            state: std::sync::Mutex::new(Arc::new(OnceCell::new())),
        })
    }

    /// Probes the server once (later calls reuse the answer).
    pub fn probe(&self) -> ServerState {
        let cell = self.state_for_this_call();
        self.runtime.block_on(self.state(&cell)).clone()
    }

    /// Describes one artifact.
    pub fn describe(&self, request: ArtifactRequest<'_>) -> LlmOutcome {
        self.describe_all(&[request]).pop().expect("one outcome")
    }

    /// Describes every artifact, at most `concurrency` requests in flight; outcomes in order.
    pub fn describe_all(&self, requests: &[ArtifactRequest<'_>]) -> Vec<LlmOutcome> {
        // One probe serves the whole batch.
        let cell = self.state_for_this_call();
        self.runtime.block_on(futures_util::future::join_all(
            requests.iter().map(|r| self.describe_one(*r, &cell)),
        ))
    }

    /// The probe cell this call uses: the last one if it found the server ready, else a new one.
    fn state_for_this_call(&self) -> Arc<OnceCell<ServerState>> {
        let mut cell = self.state.lock().expect("probe state lock");
        if cell
            .get()
            .is_some_and(|s| !matches!(s, ServerState::Ready { .. }))
        {
            *cell = Arc::new(OnceCell::new());
        }
        Arc::clone(&cell)
    }

    /// The base URL with `path`'s segments (`/v1/models`) appended.
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .pop_if_empty()
            .extend(path.split('/').filter(|s| !s.is_empty()));
        url
    }

    fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn state<'c>(&self, cell: &'c OnceCell<ServerState>) -> &'c ServerState {
        cell.get_or_init(|| self.probe_now()).await
    }

    /// GETs `path` and parses JSON, with the connect timeout and a short read timeout.
    async fn get_json(&self, path: &str) -> Result<(u16, Value), LlmError> {
        let send = self.with_token(self.http.get(self.url(path))).send();
        let limit = self.config.connect_timeout + Duration::from_secs(10);
        let response = tokio::time::timeout(limit, send)
            .await
            .map_err(|_| {
                LlmError::Unavailable(format!("no answer from {} in {limit:?}", self.url(path)))
            })?
            .map_err(|e| LlmError::Unavailable(describe_reqwest(&e)))?;
        let status = response.status().as_u16();
        let bytes = tokio::time::timeout(limit, response.bytes())
            .await
            .map_err(|_| LlmError::Timeout(format!("{} stalled", self.url(path))))?
            .map_err(|e| LlmError::StreamBroken(describe_reqwest(&e)))?;
        let value = serde_json::from_slice(&bytes).map_err(|_| LlmError::Server {
            status,
            message: format!("{} did not answer with JSON", self.url(path)),
        })?;
        Ok((status, value))
    }

    async fn probe_now(&self) -> ServerState {
        let (status, body) = match self.get_json("/v1/models").await {
            Ok(answer) => answer,
            Err(LlmError::Unavailable(reason)) | Err(LlmError::Timeout(reason)) => {
                return ServerState::Unavailable { reason }
            }
            Err(LlmError::Server { status: 401, .. }) => {
                return ServerState::AuthRequired {
                    reason: "HTTP 401 from /v1/models".into(),
                }
            }
            Err(e) => {
                return ServerState::Misconfigured {
                    reason: format!("{}: {e}", self.url("/v1/models")),
                }
            }
        };
        if let Some((message, code)) = body_error(&body) {
            return match classify(status, &message, code.as_deref()) {
                LlmError::AuthRequired(reason) => ServerState::AuthRequired { reason },
                e => ServerState::Misconfigured {
                    reason: format!("{}: {e}", self.url("/v1/models")),
                },
            };
        }
        if status == 401 || status == 403 {
            return ServerState::AuthRequired {
                reason: format!("HTTP {status} from /v1/models"),
            };
        }
        let Some(list) = body.get("data").and_then(Value::as_array) else {
            return ServerState::Misconfigured {
                reason: format!(
                    "{} answered HTTP {status} without a model list; is the base URL an OpenAI-compatible server?",
                    self.url("/v1/models")
                ),
            };
        };
        let models: Vec<String> = list
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(String::from))
            .collect();
        if models.is_empty() && self.config.model.is_none() {
            return ServerState::Misconfigured {
                reason: "the server lists no models and none is configured".into(),
            };
        }
        let wanted = self
            .config
            .model
            .clone()
            .or_else(|| models.first().cloned());
        // llama.cpp lists the loaded context with each model; LM Studio has its own REST API.
        let listed = list.iter().find_map(|m| {
            (wanted.is_none() || m["id"].as_str() == wanted.as_deref())
                .then(|| m["meta"]["n_ctx"].as_u64())
                .flatten()
        });
        let context_tokens = match listed {
            Some(n) => Some(n as usize),
            None => self.loaded_context(wanted.as_deref()).await,
        };
        ServerState::Ready {
            models,
            context_tokens,
        }
    }

    /// The loaded context length from LM Studio's own REST API (legacy `/api/v0` or 0.4's
    /// `/api/v1`) or llama.cpp's `/props`; all optional.
    async fn loaded_context(&self, model: Option<&str>) -> Option<usize> {
        let matches = |id: Option<&str>| model.is_none() || id == model;
        if let Ok((200, body)) = self.get_json("/api/v0/models").await {
            let found = body["data"].as_array().into_iter().flatten().find_map(|m| {
                matches(m["id"].as_str())
                    .then(|| m["loaded_context_length"].as_u64())
                    .flatten()
            });
            if let Some(n) = found {
                return Some(n as usize);
            }
        }
        if let Ok((200, body)) = self.get_json("/api/v1/models").await {
            let found = body["models"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|m| {
                    let id = m["key"].as_str().or(m["id"].as_str());
                    matches(id)
                        .then(|| {
                            m["loaded_instances"]
                                .as_array()?
                                .iter()
                                .find_map(|i| i["config"]["context_length"].as_u64())
                        })
                        .flatten()
                });
            if let Some(n) = found {
                return Some(n as usize);
            }
        }
        if let Ok((200, body)) = self.get_json("/props").await {
            if let Some(n) = body["default_generation_settings"]["n_ctx"].as_u64() {
                return Some(n as usize);
            }
        }
        None
    }

    async fn describe_one(
        &self,
        request: ArtifactRequest<'_>,
        cell: &OnceCell<ServerState>,
    ) -> LlmOutcome {
        let started = Instant::now();
        let mut outcome = LlmOutcome {
            status: "failed",
            error: None,
            reason: None,
            server: self.config.base_url.clone(),
            requested_model: self.config.model.clone(),
            model: None,
            answer: None,
            generated_at: None,
            requests: 0,
            prompt_tokens_estimated: None,
            prompt_budget_tokens: None,
            digest_omitted: Vec::new(),
            redacted: Default::default(),
            seconds: 0.0,
        };
        let sha = &request.analysis.sha256;
        let question = super::cache::prompt_context(request.name, request.intent);
        // A configured model lets the cache answer without touching the server at all.
        if let Some(hit) = self
            .config
            .model
            .as_deref()
            .and_then(|m| self.cached(sha, &question, m))
        {
            return cached_outcome(outcome, hit, started);
        }
        let context = match self.state(cell).await {
            ServerState::Ready {
                models,
                context_tokens,
            } => {
                if outcome.requested_model.is_none() {
                    outcome.requested_model = models.first().cloned();
                }
                *context_tokens
            }
            state => {
                outcome.status = state.label();
                outcome.reason = Some(match state {
                    ServerState::Unavailable { reason }
                    | ServerState::AuthRequired { reason }
                    | ServerState::Misconfigured { reason } => reason.clone(),
                    ServerState::Ready { .. } => unreachable!("handled above"),
                });
                outcome.seconds = started.elapsed().as_secs_f64();
                return outcome;
            }
        };
        let model = outcome.requested_model.clone().unwrap_or_default();
        if self.config.model.is_none() {
            if let Some(hit) = self.cached(sha, &question, &model) {
                return cached_outcome(outcome, hit, started);
            }
        }
        let context = context.unwrap_or(self.config.context_tokens);
        let mut budget = prompt_budget(context, self.config.max_reply_tokens);
        let result = loop {
            let digest = digest::build(
                request.name,
                request.data,
                request.analysis,
                request.intent,
                budget,
            );
            outcome.prompt_tokens_estimated = Some(digest.estimated_tokens);
            outcome.prompt_budget_tokens = Some(budget);
            outcome.digest_omitted = digest.omitted.clone();
            outcome.redacted = digest.redacted.clone();
            outcome.requests += 1;
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("semaphore never closes");
                self.chat(&model, &digest).await
            };
            match result {
                // One retry, only for overflow, with half the digest.
                Err(LlmError::ContextOverflow(_)) if outcome.requests == 1 => budget /= 2,
                other => break other,
            }
        };
        match result {
            Ok(raw) => match raw.answer() {
                Ok(answer) => {
                    outcome.status = "answered";
                    outcome.model = raw.model.clone().or(Some(model.clone()));
                    outcome.answer = Some(answer.clone());
                    let generated_at = crate::map::unix_now();
                    outcome.generated_at = Some(generated_at);
                    if let Some(cache) = &self.cache {
                        let entry = CachedAnswer {
                            content_sha256: sha.clone(),
                            prompt_context: question,
                            prompt_version: digest::PROMPT_VERSION,
                            schema_version: super::reply::SCHEMA_VERSION,
                            requested_model: model,
                            model: outcome.model.clone().unwrap_or_default(),
                            answer,
                            generated_at,
                        };
                        if let Err(e) = cache.put(&entry) {
                            outcome.reason = Some(format!(
                                "answer not cached in {}: {e}",
                                cache.dir().display()
                            ));
                        }
                    }
                }
                Err(e) => {
                    outcome.model = raw.model.clone();
                    outcome.error = Some(e.kind());
                    outcome.reason = Some(e.to_string());
                }
            },
            Err(e) => {
                outcome.error = Some(e.kind());
                outcome.reason = Some(e.to_string());
            }
        }
        outcome.seconds = started.elapsed().as_secs_f64();
        outcome
    }

    fn cached(&self, sha: &str, context: &str, model: &str) -> Option<CachedAnswer> {
        self.cache.as_ref()?.get(sha, context, model)
    }

    /// One streamed chat completion; errors are recognised in any status, body or frame.
    async fn chat(&self, model: &str, digest: &Digest) -> Result<RawReply, LlmError> {
        let body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": digest.text},
            ],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "artifact_description", "strict": true, "schema": answer_schema()}},
            "temperature": 0.2,
            "max_tokens": self.config.max_reply_tokens,
            "stream": true,
        });
        let read_timeout = self.config.read_timeout;
        let send = self
            .with_token(self.http.post(self.url("/v1/chat/completions")))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send();
        // No retry on timeout: the server keeps generating for a request it already has.
        let mut response = tokio::time::timeout(read_timeout, send)
            .await
            .map_err(|_| {
                LlmError::Timeout(format!(
                    "no reply within {}s (a model being loaded can take minutes; raise read_timeout_secs)",
                    read_timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| {
                if e.is_connect() {
                    LlmError::Unavailable(describe_reqwest(&e))
                } else {
                    LlmError::StreamBroken(describe_reqwest(&e))
                }
            })?;
        let status = response.status().as_u16();
        let streamed = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !streamed {
            let mut bytes = Vec::new();
            while let Some(chunk) = next_chunk(&mut response, read_timeout).await? {
                bytes.extend_from_slice(&chunk);
            }
            let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
                let text = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                if (200..300).contains(&status) {
                    LlmError::BadReply(format!("body is not JSON: {text}"))
                } else {
                    LlmError::Server {
                        status,
                        message: text,
                    }
                }
            })?;
            if let Some((message, code)) = body_error(&value) {
                return Err(classify(status, &message, code.as_deref()));
            }
            if !(200..300).contains(&status) {
                return Err(LlmError::Server {
                    status,
                    message: value.to_string(),
                });
            }
            let mut raw = RawReply::default();
            raw.absorb(&value);
            return Ok(raw);
        }
        let mut parser = SseParser::new();
        let mut raw = RawReply::default();
        let mut done = false;
        let frame = |data: String, raw: &mut RawReply| -> Result<(), LlmError> {
            let value: Value = serde_json::from_str(&data).map_err(|_| {
                LlmError::BadReply(format!("stream frame is not JSON: {}", clip(&data)))
            })?;
            if let Some((message, code)) = body_error(&value) {
                return Err(classify(status, &message, code.as_deref()));
            }
            raw.absorb(&value);
            Ok(())
        };
        while !done {
            let Some(chunk) = next_chunk(&mut response, read_timeout).await? else {
                break;
            };
            let items = parser
                .feed(&chunk)
                .map_err(|_| LlmError::BadReply("stream is not UTF-8".into()))?;
            for item in items {
                match item {
                    SseItem::Done => done = true,
                    SseItem::Data(data) => frame(data, &mut raw)?,
                }
            }
        }
        if !done {
            if let Some(item) = parser
                .finish()
                .map_err(|_| LlmError::BadReply("stream is not UTF-8".into()))?
            {
                match item {
                    SseItem::Done => done = true,
                    // An unterminated last event that is not JSON was cut off by the close.
                    SseItem::Data(data) => frame(data, &mut raw).map_err(|e| match e {
                        LlmError::BadReply(_) => {
                            LlmError::StreamBroken("the stream ended inside an event".into())
                        }
                        e => e,
                    })?,
                }
            }
        }
        if !done && raw.finish_reason.is_none() {
            return Err(LlmError::StreamBroken(
                "the stream ended before [DONE] or a finish_reason".into(),
            ));
        }
        Ok(raw)
    }
}

/// The next piece of the body, waiting at most `read_timeout` for it.
async fn next_chunk(
    response: &mut reqwest::Response,
    read_timeout: Duration,
) -> Result<Option<Vec<u8>>, LlmError> {
    let chunk = tokio::time::timeout(read_timeout, response.chunk())
        .await
        .map_err(|_| {
            LlmError::Timeout(format!(
                "the reply stalled for {}s",
                read_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| LlmError::StreamBroken(describe_reqwest(&e)))?;
    Ok(chunk.map(|c| c.to_vec()))
}

/// Tokens left for the prompt after the reply, the system message and a margin.
pub fn prompt_budget(context_tokens: usize, max_reply_tokens: u32) -> usize {
    let system = digest::estimate_tokens(SYSTEM_PROMPT, false);
    context_tokens
        .saturating_sub(max_reply_tokens as usize + system + 64)
        .max(128)
}

fn cached_outcome(mut outcome: LlmOutcome, hit: CachedAnswer, started: Instant) -> LlmOutcome {
    outcome.status = "cached";
    outcome.requested_model = Some(hit.requested_model);
    outcome.model = Some(hit.model);
    outcome.answer = Some(hit.answer);
    outcome.generated_at = Some(hit.generated_at);
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

/// reqwest's error in a few words: which server, and the innermost cause (the refused
/// connection, the reset, the unknown host), not the client's whole chain of wrappers.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    // "Connection refused (os error 111)" -> "connection refused".
    let cause = match cause.find(" (os error") {
        Some(at) => cause[..at].to_string(),
        None => cause,
    };
    let mut chars = cause.chars();
    let cause: String = chars
        .next()
        .map(|first| first.to_lowercase().chain(chars).collect())
        .unwrap_or_default();
    let server = e
        .url()
        .map(|u| {
            let host = u.host_str().unwrap_or("?");
            match u.port_or_known_default() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        })
        .unwrap_or_else(|| "the server".into());
    if e.is_connect() {
        format!("nothing answers at {server} ({cause}); start the server, or pass --llm-url or --no-llm")
    } else if e.is_timeout() {
        format!("{server} did not answer in time")
    } else {
        format!("{server}: {cause}")
    }
}
