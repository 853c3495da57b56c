//! The LM Studio client against an in-process stand-in server on loopback, one scenario per quirk.

use foundry_gpu::analysis::local::{analyze, LocalAnalysis};
use foundry_gpu::llm::client::prompt_budget;
use foundry_gpu::llm::{ArtifactRequest, LlmClient, LlmConfig, LlmOutcome, ServerState};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const CHAT_PATH: &str = "/v1/chat/completions";
const MODELS_PATH: &str = "/v1/models";
const MODEL: &str = "m";
const MAX_REPLY_TOKENS: u32 = 300;
const GOOD_SUMMARY: &str = "A small command-line tool.";
pub(super) const GOOD_ANSWER: &str =
    r#"{"summary":"A small command-line tool.","tags":["cli"],"risk":"low","warnings":[]}"#;
/// LM Studio's words when the prompt does not fit the loaded context.
const OVERFLOW_MESSAGE: &str = "Trying to keep the first 5203 tokens when context the overflows. \
However, the model is loaded with context length of only 4096 tokens, which is not enough. Try to \
load the model with a larger context length, or provide a shorter input";
/// Long enough for a slow scheduler, short enough that a hang shows at once.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting connection thread looks whether its test has ended.
const STOP_POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// The stand-in server: std only, a thread per connection, every request recorded.
// ---------------------------------------------------------------------------------------------

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub(super) struct Recorded {
    method: String,
    pub(super) path: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    /// The JSON body, `Null` when there is none.
    pub(super) body: Value,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_chat(&self) -> bool {
        self.method == "POST" && self.path == CHAT_PATH
    }

    pub(super) fn user_message(&self) -> &str {
        self.body["messages"][1]["content"]
            .as_str()
            .unwrap_or_default()
    }
}

/// How a streamed body ends: by closing the socket (valid for HTTP/1.1 without Content-Length),
/// or chunked with a terminating empty chunk.
#[derive(Clone, Copy, Debug)]
enum Framing {
    CloseDelimited,
    Chunked,
}

#[derive(Clone, Debug)]
enum Step {
    /// Written and flushed as one piece.
    Send(Vec<u8>),
    /// Nothing sent, the socket kept open.
    Wait(Duration),
}

/// What the stand-in does on one connection, step by step. It closes the socket after the last
/// step: that ends a close-delimited body normally and breaks any other body mid-stream.
#[derive(Clone, Debug, Default)]
pub(super) struct Reply {
    steps: Vec<Step>,
}

impl Reply {
    fn send(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.steps.push(Step::Send(bytes.as_ref().to_vec()));
        self
    }

    fn wait(mut self, duration: Duration) -> Self {
        self.steps.push(Step::Wait(duration));
        self
    }

    /// This reply's steps, then `next`'s.
    fn then(mut self, next: Reply) -> Self {
        self.steps.extend(next.steps);
        self
    }

    /// A complete JSON response with a Content-Length.
    fn json(status: u16, body: &Value) -> Self {
        let body = body.to_string();
        Reply::default().send(format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            reason_phrase(status),
            body.len()
        ))
    }

    /// Status line and headers of a 200 event stream.
    fn sse_head(framing: Framing) -> Self {
        let delimiting = match framing {
            Framing::CloseDelimited => "",
            Framing::Chunked => "Transfer-Encoding: chunked\r\n",
        };
        Reply::default().send(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             {delimiting}Connection: close\r\n\r\n"
        ))
    }

    /// One piece of the body, framed as `framing` wants.
    fn body_piece(self, framing: Framing, piece: &[u8]) -> Self {
        match framing {
            Framing::CloseDelimited => self.send(piece),
            Framing::Chunked => {
                let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                chunk.extend_from_slice(piece);
                chunk.extend_from_slice(b"\r\n");
                self.send(chunk)
            }
        }
    }

    /// The end of a complete body (closing the socket does it for close-delimited ones).
    fn body_end(self, framing: Framing) -> Self {
        match framing {
            Framing::CloseDelimited => self,
            Framing::Chunked => self.send("0\r\n\r\n"),
        }
    }

    fn events(self, framing: Framing, events: &[String]) -> Self {
        events.iter().fold(self, |reply, event| {
            reply.body_piece(framing, event.as_bytes())
        })
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    }
}

/// Decides the reply to a request, given how many earlier requests had the same method and path.
type Route = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

struct Shared {
    route: Box<Route>,
    recorded: Mutex<Vec<Recorded>>,
    chats_in_flight: AtomicUsize,
    chats_in_flight_max: AtomicUsize,
    stop: AtomicBool,
}

/// Counts a chat request as in flight from its arrival until its reply starts: the client cannot
/// free its concurrency slot before that, so the maximum is exactly what the client allowed.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.chats_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.chats_in_flight_max.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.chats_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A server on 127.0.0.1:0; stops (and joins every thread) when dropped.
pub(super) struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl StandIn {
    fn start(route: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        // Polled, so the acceptor notices the end of the test without a wake-up connection.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            route: Box::new(route),
            recorded: Mutex::new(Vec::new()),
            chats_in_flight: AtomicUsize::new(0),
            chats_in_flight_max: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let addr = listener.local_addr().expect("local address");
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(&listener, &shared))
        };
        StandIn {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(super) fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub(super) fn chats(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_chat)
            .collect()
    }

    fn max_chats_in_flight(&self) -> usize {
        self.shared.chats_in_flight_max.load(Ordering::SeqCst)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut connections = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(shared);
                // Errors only mean the client went away (as it does after a timeout).
                connections.push(thread::spawn(move || {
                    let _ = serve_connection(stream, &shared);
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(STOP_POLL / 5),
            Err(_) => break,
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    // Each piece leaves at once, so the client really sees the splits a reply asks for.
    stream.set_nodelay(true)?;
    let request = read_request(&stream)?;
    let earlier = {
        let mut recorded = shared.recorded.lock().unwrap();
        let earlier = recorded
            .iter()
            .filter(|r| r.method == request.method && r.path == request.path)
            .count();
        recorded.push(request.clone());
        earlier
    };
    let mut in_flight = request.is_chat().then(|| InFlight::enter(shared));
    let reply = (shared.route)(&request, earlier);
    for step in reply.steps {
        match step {
            Step::Send(bytes) => {
                in_flight.take();
                stream.write_all(&bytes)?;
                stream.flush()?;
            }
            Step::Wait(duration) => {
                if !sleep_unless_stopped(duration, &shared.stop) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Sleeps `duration` in short slices; false when the test ended meanwhile.
fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) -> bool {
    let mut left = duration;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let slice = left.min(STOP_POLL);
        thread::sleep(slice);
        left -= slice;
    }
    !stop.load(Ordering::SeqCst)
}

fn read_request(stream: &TcpStream) -> io::Result<Recorded> {
    let malformed = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(malformed("no request line"));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(malformed("headers cut off"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').ok_or_else(|| malformed(header))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Ok(0), |(_, v)| v.parse::<usize>())
        .map_err(|_| malformed("bad content-length"))?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios: what an LM Studio-like server answers.
// ---------------------------------------------------------------------------------------------

/// A server that answers chat requests with `chat` (given how many came before) and GETs from
/// `gets`; other paths get LM Studio's own answer to an unknown endpoint (HTTP 200!).
fn stand_in(
    gets: Vec<(&'static str, Value)>,
    chat: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> StandIn {
    StandIn::start(move |request, earlier| {
        if request.is_chat() {
            return chat(earlier);
        }
        match gets.iter().find(|(path, _)| *path == request.path) {
            Some((_, body)) => Reply::json(200, body),
            None => unexpected_endpoint(&request.method, &request.path),
        }
    })
}

/// Lists `MODEL` and answers chat requests with `chat`.
fn lm_studio(chat: impl Fn(usize) -> Reply + Send + Sync + 'static) -> StandIn {
    stand_in(vec![(MODELS_PATH, model_list(&[MODEL]))], chat)
}

/// Answers every chat request the same way.
pub(super) fn lm_studio_always(reply: Reply) -> StandIn {
    lm_studio(move |_| reply.clone())
}

fn model_list(ids: &[&str]) -> Value {
    json!({"object": "list", "data": ids.iter().map(|id| json!({"id": id, "object": "model"})).collect::<Vec<_>>()})
}

fn unexpected_endpoint(method: &str, path: &str) -> Reply {
    Reply::json(
        200,
        &json!({"error": format!("Unexpected endpoint or method. ({method} {path})")}),
    )
}

fn error_body(message: &str, code: Option<&str>) -> Value {
    match code {
        Some(code) => {
            json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})
        }
        None => json!({"error": {"message": message}}),
    }
}

/// A non-streamed chat completion.
fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-standin", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    })
}

fn data_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

const DONE_EVENT: &str = "data: [DONE]\n\n";

fn chunk(model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-standin", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    })
}

/// `text` as `delta_key` deltas of a few characters each (never splitting a character).
fn delta_events(model: &str, delta_key: &str, text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(7)
        .map(|piece| {
            let piece: String = piece.iter().collect();
            data_event(&chunk(model, json!({ delta_key: piece }), None))
        })
        .collect()
}

/// A whole streamed reply: role, `text` in deltas, the finish reason, `[DONE]`.
fn streamed_events(model: &str, delta_key: &str, text: &str, finish_reason: &str) -> Vec<String> {
    let mut events = vec![data_event(&chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    events.extend(delta_events(model, delta_key, text));
    events.push(data_event(&chunk(model, json!({}), Some(finish_reason))));
    events.push(DONE_EVENT.to_string());
    events
}

fn sse(framing: Framing, events: &[String]) -> Reply {
    Reply::sse_head(framing)
        .events(framing, events)
        .body_end(framing)
}

/// `content` streamed by `MODEL`, finished normally.
pub(super) fn streamed_answer(content: &str) -> Reply {
    sse(
        Framing::CloseDelimited,
        &streamed_events(MODEL, "content", content, "stop"),
    )
}

/// A stream that starts answering, then reports an overflowing context in a frame.
fn overflow_mid_stream() -> Reply {
    let mut events = delta_events(MODEL, "content", r#"{"summary":"A sm"#);
    events.push(data_event(&error_body(OVERFLOW_MESSAGE, None)));
    sse(Framing::CloseDelimited, &events)
}

fn overflow_before_stream() -> Reply {
    Reply::json(400, &error_body(OVERFLOW_MESSAGE, None))
}

// ---------------------------------------------------------------------------------------------
// The client side.
// ---------------------------------------------------------------------------------------------

/// Bytes and their local analysis, as a describe request borrows them.
struct Artifact {
    name: String,
    data: Vec<u8>,
    analysis: LocalAnalysis,
}

impl Artifact {
    fn new(name: &str, data: Vec<u8>) -> Self {
        let analysis = analyze(&data);
        Artifact {
            name: name.into(),
            data,
            analysis,
        }
    }

    fn request(&self) -> ArtifactRequest<'_> {
        ArtifactRequest {
            name: &self.name,
            data: &self.data,
            analysis: &self.analysis,
            intent: None,
        }
    }
}

/// A non-ELF file full of long URLs and paths: its digest outgrows the default prompt budget,
/// so a halved budget visibly shortens it.
fn wordy_artifact(seed: usize) -> Artifact {
    let mut data = b"\x00\x01\x02 stand-in artifact\x00".to_vec();
    for i in 0..24 {
        let segments = format!("s{seed}x{i}/").repeat(40);
        data.extend(format!("see https://example.org/{segments} now\x00").bytes());
        data.extend(format!("loads /usr/lib/{segments}lib.so").bytes());
        data.extend_from_slice(b"\x00\xff\x80");
    }
    Artifact::new(&format!("wordy-{seed}.bin"), data)
}

fn config_for(server_url: String) -> LlmConfig {
    LlmConfig {
        base_url: server_url,
        model: Some(MODEL.into()),
        token: None,
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_secs(5),
        context_tokens: 4096,
        max_reply_tokens: MAX_REPLY_TOKENS,
        concurrency: 2,
        cache_dir: None,
        allowed_hosts: Vec::new(),
    }
}

fn describe_with(config: LlmConfig, artifact: &Artifact) -> LlmOutcome {
    LlmClient::new(config)
        .expect("client")
        .describe(artifact.request())
}

/// The usual artifact described by the usual client of `server`.
fn describe(server: &StandIn) -> LlmOutcome {
    describe_with(config_for(server.url()), &wordy_artifact(0))
}

fn describe_with_read_timeout(server: &StandIn, read_timeout: Duration) -> LlmOutcome {
    let config = LlmConfig {
        read_timeout,
        ..config_for(server.url())
    };
    describe_with(config, &wordy_artifact(0))
}

#[track_caller]
fn assert_answered(outcome: &LlmOutcome, summary: &str) {
    assert_eq!(outcome.status, "answered", "{outcome:?}");
    assert_eq!(outcome.error, None, "{outcome:?}");
    let answer = outcome.answer.as_ref().expect("an answer");
    assert_eq!(answer.summary, summary);
    assert_eq!(answer.tags, ["cli"]);
    assert_eq!(answer.risk, "low");
}

#[track_caller]
fn assert_failed(outcome: &LlmOutcome, kind: &str, requests: u32) {
    assert_eq!(
        (outcome.status, outcome.error, outcome.requests),
        ("failed", Some(kind), requests),
        "{outcome:?}"
    );
    assert!(outcome.answer.is_none());
    assert!(outcome.reason.as_deref().is_some_and(|r| !r.is_empty()));
}

/// One describe against a server that answers every chat request with `reply`; it must fail
/// with `kind` after a single request.
#[track_caller]
fn assert_chat_reply_fails(reply: Reply, kind: &str) -> LlmOutcome {
    let server = lm_studio_always(reply);
    let outcome = describe(&server);
    assert_failed(&outcome, kind, 1);
    assert_eq!(server.chats().len(), 1);
    outcome
}

/// One describe against a server that answers every chat request with `reply`; it must give
/// the good answer.
#[track_caller]
fn assert_chat_reply_answers(reply: Reply) {
    let server = lm_studio_always(reply);
    let outcome = describe(&server);
    assert_answered(&outcome, GOOD_SUMMARY);
    assert_eq!((outcome.requests, server.chats().len()), (1, 1));
}

/// The state of a server that answers every request (probes included) with `reply`, and the
/// outcome of describing against it, which must not have asked anything.
fn answer_every_request_with(
    reply: Reply,
    token: Option<&str>,
) -> (ServerState, LlmOutcome, StandIn) {
    let server = StandIn::start(move |_, _| reply.clone());
    let client = LlmClient::new(LlmConfig {
        token: token.map(String::from),
        ..config_for(server.url())
    })
    .expect("client");
    let state = client.probe();
    let outcome = client.describe(wordy_artifact(0).request());
    assert_eq!(outcome.requests, 0, "{outcome:?}");
    assert!(outcome.answer.is_none());
    assert!(server.chats().is_empty());
    (state, outcome, server)
}

// ---------------------------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------------------------

/// Everything LM Studio's grammar compiler chokes on: limits of 2000 or more, `pattern`, `{}`.
fn assert_grammar_friendly(schema: &Value, at: &str) {
    match schema {
        Value::Object(map) => {
            assert!(!map.is_empty(), "an empty object at {at}");
            assert!(!map.contains_key("pattern"), "a pattern at {at}");
            for limit in ["maxLength", "maxItems"] {
                if let Some(n) = map.get(limit) {
                    assert!(n.as_u64().is_some_and(|n| n < 2000), "{limit} {n} at {at}");
                }
            }
            for (key, value) in map {
                assert_grammar_friendly(value, &format!("{at}/{key}"));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_grammar_friendly(item, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

#[test]
fn secrets_in_an_artifact_never_reach_the_server_and_are_counted_in_the_metadata() {
    let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
    let mut data = b"\x00config dump\x00".to_vec();
    data.extend_from_slice(b"DB_PASSWORD=hunter2-very-secret\x00");
    data.extend_from_slice(b"AKIAIOSFODNN7EXAMPLE\x00");
    data.extend_from_slice(
        b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretbody\n-----END RSA PRIVATE KEY-----\x00",
    );
    let artifact = Artifact::new("app.env", data);
    let outcome = describe_with(config_for(server.url()), &artifact);
    assert_answered(&outcome, GOOD_SUMMARY);
    let chats = server.chats();
    let prompt = chats[0].user_message();
    for secret in [
        "hunter2-very-secret",
        "AKIAIOSFODNN7EXAMPLE",
        "MIIEowIBAAKCAQEAsecretbody",
    ] {
        assert!(!prompt.contains(secret), "{secret} was sent:\n{prompt}");
    }
    assert!(prompt.contains("[REDACTED password_or_token]"), "{prompt}");
    let meta = serde_json::to_value(&outcome).unwrap();
    assert_eq!(meta["redacted"]["password_or_token"], 1, "{meta}");
    assert_eq!(meta["redacted"]["aws_access_key"], 1, "{meta}");
    assert_eq!(meta["redacted"]["private_key"], 1, "{meta}");
}

#[test]
fn a_server_off_the_machine_is_refused_unless_the_policy_names_it() {
    let elsewhere = LlmConfig {
        base_url: "http://10.9.8.7:1234".into(),
        ..config_for(String::new())
    };
    let e = LlmClient::new(elsewhere.clone()).err().unwrap();
    assert!(e.contains("refused by policy: llm_hosts"), "{e}");
    let allowed = LlmConfig {
        allowed_hosts: vec!["10.9.8.7".into()],
        ..elsewhere
    };
    assert!(LlmClient::new(allowed).is_ok());
}

#[test]
fn a_streamed_answer_is_read_and_the_request_is_well_formed() {
    let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
    let outcome = describe(&server);
    assert_answered(&outcome, GOOD_SUMMARY);
    assert_eq!(outcome.model.as_deref(), Some(MODEL));
    assert_eq!(outcome.requests, 1);

    let requests = server.requests();
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", MODELS_PATH)
    );
    let chats = server.chats();
    assert_eq!(chats.len(), 1);
    let chat = &chats[0];
    assert_eq!(chat.header("content-type"), Some("application/json"));
    let body = &chat.body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], MAX_REPLY_TOKENS);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["role"], "user");
    assert!(chat.user_message().contains("name: wordy-0.bin"));
    let format = &body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    assert!(format["json_schema"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    let schema = &format["json_schema"]["schema"];
    assert!(
        schema.to_string().contains("maxLength"),
        "limits are stated: {schema}"
    );
    assert_grammar_friendly(schema, "schema");
}

#[test]
fn nothing_listening_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let client = LlmClient::new(config_for(format!("http://127.0.0.1:{port}"))).expect("client");
    assert!(
        matches!(client.probe(), ServerState::Unavailable { .. }),
        "{:?}",
        client.probe()
    );
    let outcome = client.describe(wordy_artifact(0).request());
    assert_eq!((outcome.status, outcome.requests), ("unavailable", 0));
    assert!(outcome.answer.is_none() && outcome.reason.is_some());
}

#[test]
fn a_refused_token_is_auth_required() {
    let refusal = Reply::json(
        401,
        &error_body("Invalid API key provided", Some("invalid_api_key")),
    );
    let (state, outcome, server) = answer_every_request_with(refusal, Some("wrong"));
    assert!(
        matches!(state, ServerState::AuthRequired { .. }),
        "{state:?}"
    );
    assert_eq!(outcome.status, "auth_required");
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer wrong")
    );
}

#[test]
fn a_server_that_was_not_ready_is_probed_again_by_the_next_call() {
    // Refuses the first probe (as a server still starting up with auth on might), then serves.
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&probes);
    let server = StandIn::start(move |request, _| {
        if request.is_chat() {
            return streamed_answer(GOOD_ANSWER);
        }
        if request.path == MODELS_PATH && seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::json(401, &error_body("not yet", Some("invalid_api_key")));
        }
        Reply::json(200, &model_list(&[MODEL]))
    });
    let client = LlmClient::new(config_for(server.url())).expect("client");
    let artifact = wordy_artifact(0);
    assert_eq!(client.describe(artifact.request()).status, "auth_required");
    assert_answered(&client.describe(artifact.request()), GOOD_SUMMARY);
    let after_ready = probes.load(Ordering::SeqCst);
    assert_answered(&client.describe(artifact.request()), GOOD_SUMMARY);
    assert_eq!(
        probes.load(Ordering::SeqCst),
        after_ready,
        "a ready server is not probed again"
    );
}

#[test]
fn a_wrong_base_url_is_misconfigured() {
    let (state, outcome, _server) =
        answer_every_request_with(unexpected_endpoint("GET", MODELS_PATH), None);
    match state {
        ServerState::Misconfigured { reason } => {
            assert!(reason.contains("Unexpected endpoint"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outcome.status, "misconfigured");
}

#[test]
fn the_token_is_sent_only_when_configured() {
    for token in [Some("t"), None] {
        let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
        let config = LlmConfig {
            token: token.map(String::from),
            ..config_for(server.url())
        };
        assert_answered(&describe_with(config, &wordy_artifact(0)), GOOD_SUMMARY);
        let requests = server.requests();
        assert!(requests.len() >= 2, "a probe and a chat: {requests:?}");
        let expected = token.map(|t| format!("Bearer {t}"));
        for request in &requests {
            assert_eq!(
                request.header("authorization").map(String::from),
                expected,
                "{} {}",
                request.method,
                request.path
            );
        }
    }
}

#[test]
fn no_model_loaded_is_named_in_both_body_shapes() {
    let message = "No models loaded. Please load a model in the developer page or use the `lms load` command.";
    for reply in [
        Reply::json(404, &error_body(message, None)),
        Reply::json(400, &json!({ "error": message })),
    ] {
        assert_chat_reply_fails(reply, "no_model_loaded");
    }
}

#[test]
fn an_unknown_model_is_model_not_found() {
    for status in [404, 400] {
        let body = error_body("model x not found", Some("model_not_found"));
        assert_chat_reply_fails(Reply::json(status, &body), "model_not_found");
    }
}

#[test]
fn a_grammar_failure_is_named() {
    let body =
        json!({"error": "Error in creating the grammar: Failed to parse grammar: expected ':'"});
    assert_chat_reply_fails(Reply::json(400, &body), "grammar_failure");
}

/// Overflow on the first chat request, then `second`; the retry must carry a shorter prompt.
fn overflow_then(first: Reply, second: Reply) -> (LlmOutcome, Vec<Recorded>) {
    let server = lm_studio(move |earlier| match earlier {
        0 => first.clone(),
        _ => second.clone(),
    });
    let outcome = describe(&server);
    let chats = server.chats();
    assert_eq!(chats.len(), 2, "exactly one retry: {outcome:?}");
    assert_eq!(outcome.requests, 2);
    let (long, short) = (chats[0].user_message().len(), chats[1].user_message().len());
    assert!(short < long, "the retry is shorter: {short} vs {long}");
    assert!(chats[1].user_message().contains("[truncated:"));
    (outcome, chats)
}

#[test]
fn context_overflow_is_retried_once_with_a_smaller_prompt() {
    let (outcome, _) = overflow_then(overflow_before_stream(), streamed_answer(GOOD_ANSWER));
    assert_answered(&outcome, GOOD_SUMMARY);
    assert!(
        outcome.prompt_tokens_estimated.expect("an estimate")
            <= outcome.prompt_budget_tokens.expect("a budget")
    );
    let full = prompt_budget(4096, MAX_REPLY_TOKENS);
    assert_eq!(outcome.prompt_budget_tokens, Some(full / 2));
}

#[test]
fn context_overflow_mid_stream_is_retried_once() {
    let (outcome, _) = overflow_then(overflow_mid_stream(), streamed_answer(GOOD_ANSWER));
    assert_answered(&outcome, GOOD_SUMMARY);
}

#[test]
fn context_overflow_twice_fails_after_two_requests() {
    let (outcome, _) = overflow_then(overflow_before_stream(), overflow_mid_stream());
    assert_failed(&outcome, "context_overflow", 2);
}

#[test]
fn json_in_reasoning_content_is_answered() {
    let reply = sse(
        Framing::CloseDelimited,
        &streamed_events(MODEL, "reasoning_content", GOOD_ANSWER, "stop"),
    );
    assert_chat_reply_answers(reply);
}

#[test]
fn a_think_block_before_the_json_is_skipped() {
    let content = format!("<think>The sections look like {{a tool}}.</think>\n{GOOD_ANSWER}");
    assert_chat_reply_answers(Reply::json(200, &completion(MODEL, &content)));
}

#[test]
fn a_fenced_json_reply_is_answered() {
    let content = format!("```json\n{GOOD_ANSWER}\n```");
    let reply = sse(
        Framing::Chunked,
        &streamed_events(MODEL, "content", &content, "stop"),
    );
    assert_chat_reply_answers(reply);
}

#[test]
fn a_reply_cut_at_the_token_limit_is_truncated() {
    let cut = r#"{"summary":"A small command-line tool that"#;
    let reply = sse(
        Framing::CloseDelimited,
        &streamed_events(MODEL, "content", cut, "length"),
    );
    assert_chat_reply_fails(reply, "truncated");
}

#[test]
fn schema_violations_name_the_field() {
    let nine_tags = r#"{"summary":"x","tags":["a","b","c","d","e","f","g","h","i"],"risk":"low","warnings":[]}"#;
    let extreme = r#"{"summary":"x","tags":[],"risk":"extreme","warnings":[]}"#;
    for (answer, field) in [(extreme, "risk"), (nine_tags, "tags")] {
        let outcome = assert_chat_reply_fails(streamed_answer(answer), "schema_violation");
        let reason = outcome.reason.unwrap_or_default();
        assert!(reason.contains(field), "{reason}");
    }
}

#[test]
fn a_slow_first_byte_within_the_read_timeout_is_awaited() {
    let late = Reply::default()
        .wait(Duration::from_millis(1500))
        .then(streamed_answer(GOOD_ANSWER));
    let server = lm_studio_always(late);
    let outcome = describe_with_read_timeout(&server, Duration::from_secs(5));
    assert_answered(&outcome, GOOD_SUMMARY);
}

#[test]
fn a_first_byte_later_than_the_read_timeout_times_out_without_retry() {
    let server = lm_studio_always(Reply::default().wait(Duration::from_secs(3)));
    let outcome = describe_with_read_timeout(&server, Duration::from_secs(1));
    assert_failed(&outcome, "timeout", 1);
    assert_eq!(server.chats().len(), 1);
}

#[test]
fn a_stall_mid_stream_times_out() {
    let events = delta_events(MODEL, "content", r#"{"summary":"A small"#);
    let stalled = Reply::sse_head(Framing::CloseDelimited)
        .events(Framing::CloseDelimited, &events)
        .wait(Duration::from_secs(3));
    let server = lm_studio_always(stalled);
    let outcome = describe_with_read_timeout(&server, Duration::from_secs(1));
    assert_failed(&outcome, "timeout", 1);
    assert_eq!(server.chats().len(), 1);
}

#[test]
fn a_server_dying_mid_stream_leaves_the_daemon_task_done_once_with_the_reason_in_its_metadata() {
    // The server sends the first event and a half, then its socket closes for good.
    let server = lm_studio(|_| {
        let events = delta_events(MODEL, "content", r#"{"summary":"A small"#);
        Reply::sse_head(Framing::CloseDelimited)
            .body_piece(Framing::CloseDelimited, events[0].as_bytes())
            .send(&events[1].as_bytes()[..events[1].len() / 2])
    });
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("tool.bin"), b"\x00\x01some tool\x00--help\x00").unwrap();
    std::fs::write(
        tasks.join("t.task.json"),
        r#"{"task_id": "t", "type": "convert_binary", "source": "tool.bin"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args([
            "daemon",
            "--tasks",
            tasks.to_str().unwrap(),
            "--output-root",
            out.to_str().unwrap(),
        ])
        .args([
            "--backend",
            "cpu",
            "--exit-when-idle",
            "--poll-ms",
            "50",
            "--llm",
            "--no-llm-cache",
        ])
        .args(["--llm-url", &server.url()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(tasks.join("t.task.task.json.done").exists());
    assert!(!tasks.join("t.task.json.failed").exists());
    let png = foundry_gpu::format::rts_png::RtsPng::read(&out.join("t/tool.bin.rts.png")).unwrap();
    let llm = &png.metadata["semantic"]["llm"];
    assert_eq!(llm["status"], "failed", "{llm}");
    assert_eq!(llm["error"], "stream_broken", "{llm}");
    assert!(!server.chats().is_empty());
}

#[test]
fn a_reset_mid_stream_is_stream_broken() {
    let events = delta_events(MODEL, "content", r#"{"summary":"A small"#);
    let half_frame = &events[1].as_bytes()[..events[1].len() / 2];
    // Chunked: the socket closes inside a chunk that announced more bytes.
    let inside_a_chunk = Reply::sse_head(Framing::Chunked)
        .body_piece(Framing::Chunked, events[0].as_bytes())
        .send(format!("{:x}\r\n", events[1].len()))
        .send(half_frame);
    // Close-delimited: the socket closes inside an event.
    let inside_an_event = Reply::sse_head(Framing::CloseDelimited)
        .body_piece(Framing::CloseDelimited, events[0].as_bytes())
        .send(half_frame);
    for reply in [inside_a_chunk, inside_an_event] {
        assert_chat_reply_fails(reply, "stream_broken");
    }
}

#[test]
fn eof_before_done_and_finish_reason_is_stream_broken() {
    let events = delta_events(MODEL, "content", GOOD_ANSWER);
    for framing in [Framing::CloseDelimited, Framing::Chunked] {
        assert_chat_reply_fails(sse(framing, &events), "stream_broken");
    }
}

/// Every event with SSE's optional trimmings: a comment first, `event:` and `id:` lines, and
/// CRLF line ends (the JSON carries no raw newline, so replacing them all is safe).
fn decorated_stream(events: &[String]) -> String {
    let mut stream = String::from(": stand-in keep-alive\n\n");
    for (id, event) in events.iter().enumerate() {
        stream.push_str(&format!("event: message\nid: {id}\n{event}"));
    }
    stream.replace('\n', "\r\n")
}

/// One byte per write (and per chunk), pausing after each byte of a multi-byte character so
/// the client's reads end inside it.
fn byte_by_byte(framing: Framing, stream: &str) -> Reply {
    let mut reply = Reply::sse_head(framing);
    for (i, byte) in stream.bytes().enumerate() {
        reply = reply.body_piece(framing, &[byte]);
        if !byte.is_ascii() {
            reply = reply.wait(Duration::from_millis(5));
        } else if i % 16 == 15 {
            reply = reply.wait(Duration::from_millis(1));
        }
    }
    reply.body_end(framing)
}

#[test]
fn sse_split_at_every_byte_is_reassembled() {
    let summary = "A café ✓ tool.";
    let answer = json!({"summary": summary, "tags": ["cli"], "risk": "low", "warnings": []});
    let stream = decorated_stream(&streamed_events(
        MODEL,
        "content",
        &answer.to_string(),
        "stop",
    ));
    assert!(
        stream.contains('é') && stream.contains('✓'),
        "raw UTF-8 on the wire, not \\u escapes"
    );
    for framing in [Framing::CloseDelimited, Framing::Chunked] {
        let server = lm_studio_always(byte_by_byte(framing, &stream));
        let outcome = describe(&server);
        assert_answered(&outcome, summary);
    }
}

#[test]
fn the_answering_model_is_reported_apart_from_the_requested_one() {
    let actual = "m-q4_k_m";
    let reply = sse(
        Framing::Chunked,
        &streamed_events(actual, "content", GOOD_ANSWER, "stop"),
    );
    let server = lm_studio_always(reply);
    let outcome = describe(&server);
    assert_answered(&outcome, GOOD_SUMMARY);
    assert_eq!(outcome.model.as_deref(), Some(actual));
    assert_eq!(outcome.requested_model.as_deref(), Some(MODEL));
    assert_eq!(server.chats()[0].body["model"], MODEL);
}

#[test]
fn without_a_configured_model_the_first_listed_one_is_asked() {
    let server = stand_in(
        vec![(MODELS_PATH, model_list(&["first-model", "second-model"]))],
        |_| Reply::json(200, &completion("first-model", GOOD_ANSWER)),
    );
    let config = LlmConfig {
        model: None,
        ..config_for(server.url())
    };
    let outcome = describe_with(config, &wordy_artifact(0));
    assert_answered(&outcome, GOOD_SUMMARY);
    assert_eq!(outcome.requested_model.as_deref(), Some("first-model"));
    assert_eq!(server.chats()[0].body["model"], "first-model");
}

#[test]
fn describe_all_keeps_exactly_to_the_concurrency_limit() {
    let held = Reply::default()
        // Long enough that the second request surely arrives while the first is held.
        .wait(Duration::from_millis(1000))
        .then(Reply::json(200, &completion(MODEL, GOOD_ANSWER)));
    let server = lm_studio_always(held);
    let artifacts: Vec<Artifact> = (0..6).map(wordy_artifact).collect();
    let requests: Vec<ArtifactRequest> = artifacts.iter().map(Artifact::request).collect();
    let client = LlmClient::new(config_for(server.url())).expect("client");
    let outcomes = client.describe_all(&requests);
    assert_eq!(outcomes.len(), 6);
    for outcome in &outcomes {
        assert_answered(outcome, GOOD_SUMMARY);
    }
    assert_eq!(server.chats().len(), 6);
    assert_eq!(server.max_chats_in_flight(), 2);
}

/// The budget and the user message a server reporting `gets` leads to, for `artifact`.
fn budget_under(gets: Vec<(&'static str, Value)>, artifact: &Artifact) -> (LlmOutcome, Recorded) {
    let server = stand_in(gets, |_| streamed_answer(GOOD_ANSWER));
    let outcome = describe_with(config_for(server.url()), artifact);
    assert_answered(&outcome, GOOD_SUMMARY);
    let chat = server.chats().pop().expect("one chat request");
    (outcome, chat)
}

#[test]
fn the_prompt_fits_a_small_reported_context() {
    let ls = Artifact::new("ls", std::fs::read("/usr/bin/ls").expect("/usr/bin/ls"));
    let models = json!({"data": [{"id": MODEL, "meta": {"n_ctx": 1024}}]});
    let (outcome, chat) = budget_under(vec![(MODELS_PATH, models)], &ls);
    let budget = prompt_budget(1024, MAX_REPLY_TOKENS);
    assert_eq!(outcome.prompt_budget_tokens, Some(budget));
    let estimated = outcome.prompt_tokens_estimated.expect("an estimate");
    assert!(estimated <= budget, "{estimated} > {budget}");
    let user = chat.user_message();
    assert!(
        user.len() as f64 / 1.6 <= budget as f64,
        "{} characters for {budget} tokens",
        user.len()
    );
    assert!(user.contains("[truncated:"), "{user}");
    assert!(!outcome.digest_omitted.is_empty());
}

#[test]
fn the_budget_follows_the_reported_context() {
    let listed = || model_list(&[MODEL]);
    let lm_studio_v0 = |n: usize| {
        vec![
            (MODELS_PATH, listed()),
            (
                "/api/v0/models",
                json!({"data": [{"id": MODEL, "loaded_context_length": n}]}),
            ),
        ]
    };
    let lm_studio_v1 = |n: usize| {
        vec![
            (MODELS_PATH, listed()),
            (
                "/api/v1/models",
                json!({"models": [{"key": MODEL, "loaded_instances": [{"config": {"context_length": n}}]}]}),
            ),
        ]
    };
    let llama_cpp = |n: usize| {
        vec![
            (MODELS_PATH, listed()),
            (
                "/props",
                json!({"default_generation_settings": {"n_ctx": n}}),
            ),
        ]
    };
    let artifact = wordy_artifact(0);
    for (n, gets) in [
        (2048, lm_studio_v0(2048)),
        (8192, lm_studio_v0(8192)),
        (3072, lm_studio_v1(3072)),
        (6144, llama_cpp(6144)),
    ] {
        let (outcome, _) = budget_under(gets, &artifact);
        assert_eq!(
            outcome.prompt_budget_tokens,
            Some(prompt_budget(n, MAX_REPLY_TOKENS)),
            "context {n}"
        );
    }
    assert_ne!(
        prompt_budget(2048, MAX_REPLY_TOKENS),
        prompt_budget(8192, MAX_REPLY_TOKENS)
    );
}

#[test]
fn cached_answers_need_no_request_until_bytes_or_model_change() {
    let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
    let cache = tempfile::tempdir().expect("temporary directory");
    let config = |model: &str| LlmConfig {
        model: Some(model.into()),
        cache_dir: Some(cache.path().to_path_buf()),
        ..config_for(server.url())
    };
    let artifact = wordy_artifact(0);
    assert_answered(&describe_with(config(MODEL), &artifact), GOOD_SUMMARY);
    let asked = server.requests().len();

    // A fresh client, so not even the probe is remembered.
    let again = describe_with(config(MODEL), &artifact);
    assert_eq!((again.status, again.requests), ("cached", 0));
    assert_eq!(
        again.answer.as_ref().map(|a| a.summary.as_str()),
        Some(GOOD_SUMMARY)
    );
    assert_eq!(server.requests().len(), asked, "no HTTP request at all");

    let mut changed = artifact.data.clone();
    *changed.last_mut().expect("bytes") ^= 1;
    let changed = Artifact::new(&artifact.name, changed);
    assert_answered(&describe_with(config(MODEL), &changed), GOOD_SUMMARY);
    assert_eq!(server.chats().len(), 2, "a changed byte asks again");

    let other = describe_with(config("other-model"), &artifact);
    assert_answered(&other, GOOD_SUMMARY);
    assert_eq!(server.chats().len(), 3, "another model asks again");
    assert_eq!(server.chats()[2].body["model"], "other-model");

    // The same bytes under another name, or asked with an intent, are another question.
    let renamed = Artifact::new("renamed", artifact.data.clone());
    assert_answered(&describe_with(config(MODEL), &renamed), GOOD_SUMMARY);
    assert_eq!(server.chats().len(), 4, "another name asks again");
    let client = LlmClient::new(config(MODEL)).expect("client");
    let with_intent = ArtifactRequest {
        intent: Some("is this a rootkit?"),
        ..artifact.request()
    };
    assert_answered(&client.describe(with_intent), GOOD_SUMMARY);
    assert_eq!(server.chats().len(), 5, "another intent asks again");
    assert_eq!(client.describe(with_intent).status, "cached");
}
