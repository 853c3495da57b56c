//! What a chat-completions server says back: errors recognised whatever the HTTP status, the
//! answer's JSON dug out of reasoning fields, `<think>` blocks and code fences, and checked
//! against the small schema the request asked for.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Bumped whenever the schema below changes; part of the cache key.
pub const SCHEMA_VERSION: u32 = 1;
pub const RISK_LEVELS: [&str; 4] = ["low", "medium", "high", "critical"];
pub const SUMMARY_MAX: usize = 400;
pub const TAGS_MAX: usize = 8;
pub const TAG_MAX: usize = 32;
pub const WARNINGS_MAX: usize = 5;
pub const WARNING_MAX: usize = 160;

/// The `json_schema` sent with every request. Small on purpose: LM Studio fails to compile
/// schemas with large limits (>= 2000), `pattern`, or empty objects into a grammar.
pub fn answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string", "maxLength": SUMMARY_MAX},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": TAG_MAX}, "maxItems": TAGS_MAX},
            "risk": {"type": "string", "enum": RISK_LEVELS},
            "warnings": {"type": "array", "items": {"type": "string", "maxLength": WARNING_MAX}, "maxItems": WARNINGS_MAX}
        },
        "required": ["summary", "tags", "risk", "warnings"],
        "additionalProperties": false
    })
}

/// A reply that passed the schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub summary: String,
    pub tags: Vec<String>,
    pub risk: String,
    pub warnings: Vec<String>,
}

/// Why a request produced no answer, classified so callers and metadata can say what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("server unavailable: {0}")]
    Unavailable(String),
    #[error("authentication required: {0} (set LM_API_TOKEN)")]
    AuthRequired(String),
    #[error("no model is loaded: {0}")]
    NoModelLoaded(String),
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("prompt exceeds the model's context: {0}")]
    ContextOverflow(String),
    #[error("the server could not compile the answer schema into a grammar: {0}")]
    GrammarFailure(String),
    #[error("wrong base URL (the server does not know this endpoint): {0}")]
    WrongEndpoint(String),
    #[error("reply was cut off at the token limit (finish_reason \"length\")")]
    Truncated,
    #[error("reply does not match the schema: {0}")]
    SchemaViolation(String),
    #[error("reply is not usable: {0}")]
    BadReply(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("stream broke off: {0}")]
    StreamBroken(String),
    #[error("server error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
}

impl LlmError {
    /// Short machine-readable name for metadata.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Unavailable(_) => "unavailable",
            LlmError::AuthRequired(_) => "auth_required",
            LlmError::NoModelLoaded(_) => "no_model_loaded",
            LlmError::ModelNotFound(_) => "model_not_found",
            LlmError::ContextOverflow(_) => "context_overflow",
            LlmError::GrammarFailure(_) => "grammar_failure",
            LlmError::WrongEndpoint(_) => "wrong_endpoint",
            LlmError::Truncated => "truncated",
            LlmError::SchemaViolation(_) => "schema_violation",
            LlmError::BadReply(_) => "bad_reply",
            LlmError::Timeout(_) => "timeout",
            LlmError::StreamBroken(_) => "stream_broken",
            LlmError::Server { .. } => "server_error",
        }
    }
}

/// The `error` member of a body, if it has one: a string, or an object with message/type/code.
pub fn body_error(body: &Value) -> Option<(String, Option<String>)> {
    match body.get("error")? {
        Value::String(s) => Some((s.clone(), None)),
        Value::Object(o) => {
            let message = o
                .get("message")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| Value::Object(o.clone()).to_string());
            let code = ["code", "type"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str))
                .map(String::from);
            Some((message, code))
        }
        Value::Null => None,
        other => Some((other.to_string(), None)),
    }
}

/// Classifies an error by its code and message text; the HTTP status only breaks ties.
pub fn classify(status: u16, message: &str, code: Option<&str>) -> LlmError {
    let text = message.to_ascii_lowercase();
    let code = code.unwrap_or_default().to_ascii_lowercase();
    let m = message.to_string();
    if code == "invalid_api_key" || text.contains("invalid_api_key") || status == 401 {
        LlmError::AuthRequired(m)
    } else if code == "model_not_found" || text.contains("model not found") {
        LlmError::ModelNotFound(m)
    } else if text.contains("no models loaded") || text.contains("no model loaded") {
        LlmError::NoModelLoaded(m)
    } else if [
        "context length",
        "n_keep",
        "n_ctx",
        "context size",
        "exceed_context",
    ]
    .iter()
    .any(|k| text.contains(k) || code.contains(k))
    {
        LlmError::ContextOverflow(m)
    } else if text.contains("grammar") {
        LlmError::GrammarFailure(m)
    } else if text.contains("unexpected endpoint") {
        LlmError::WrongEndpoint(m)
    } else {
        LlmError::Server { status, message: m }
    }
}

/// Everything a reply carried, before its JSON is trusted.
#[derive(Clone, Debug, Default)]
pub struct RawReply {
    pub content: String,
    /// `reasoning_content` or `reasoning`, where reasoning models may put the JSON instead.
    pub reasoning: String,
    pub finish_reason: Option<String>,
    /// The model the server says answered (may differ from the one asked for).
    pub model: Option<String>,
}

impl RawReply {
    /// Takes the fields of one non-streamed body, or one streamed chunk (`delta`) appended.
    pub fn absorb(&mut self, body: &Value) {
        if let Some(m) = body.get("model").and_then(Value::as_str) {
            if !m.is_empty() {
                self.model = Some(m.to_string());
            }
        }
        let Some(choice) = body.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        let part = choice.get("message").or_else(|| choice.get("delta"));
        if let Some(part) = part {
            if let Some(c) = part.get("content").and_then(Value::as_str) {
                self.content.push_str(c);
            }
            for key in ["reasoning_content", "reasoning"] {
                if let Some(r) = part.get(key).and_then(Value::as_str) {
                    self.reasoning.push_str(r);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_string());
        }
    }

    /// The checked answer, from `content` or else the reasoning text.
    pub fn answer(&self) -> Result<Answer, LlmError> {
        let candidates = [self.content.as_str(), self.reasoning.as_str()];
        let mut first_problem = None;
        for text in candidates.into_iter().filter(|t| !t.trim().is_empty()) {
            match extract_json(text) {
                Some(value) => return validate(&value),
                None => {
                    first_problem.get_or_insert_with(|| {
                        format!("no JSON object in {:?}", preview_text(text))
                    });
                }
            }
        }
        if self.finish_reason.as_deref() == Some("length") {
            return Err(LlmError::Truncated);
        }
        Err(LlmError::BadReply(
            first_problem.unwrap_or_else(|| "the reply has no content".into()),
        ))
    }
}

fn preview_text(text: &str) -> String {
    let t: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        format!("{t}...")
    } else {
        t
    }
}

/// The JSON object in `text`, after dropping `<think>...</think>` and code fences.
pub fn extract_json(text: &str) -> Option<Value> {
    let mut t = text.trim();
    if let Some(end) = t.rfind("</think>") {
        t = t[end + "</think>".len()..].trim();
    } else if let Some(rest) = t.strip_prefix("<think>") {
        t = rest.trim();
    }
    if let Some(fenced) = t.strip_prefix("```") {
        let body = fenced.split_once('\n').map_or("", |(_, b)| b);
        t = body.trim_end().strip_suffix("```").unwrap_or(body).trim();
    }
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(t) {
        return Some(v);
    }
    // Prose around the object: take the outermost braces.
    let (start, end) = (t.find('{')?, t.rfind('}')?);
    match serde_json::from_str::<Value>(t.get(start..=end)?) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// Checks `value` against [`answer_schema`], naming the first violation.
pub fn validate(value: &Value) -> Result<Answer, LlmError> {
    let violation = |m: String| Err(LlmError::SchemaViolation(m));
    let Some(obj) = value.as_object() else {
        return violation("the answer is not an object".into());
    };
    for key in obj.keys() {
        if !["summary", "tags", "risk", "warnings"].contains(&key.as_str()) {
            return violation(format!("unexpected field {key:?}"));
        }
    }
    let text = |key: &str, max: usize| -> Result<String, LlmError> {
        match obj.get(key) {
            Some(Value::String(s)) if s.chars().count() <= max => Ok(s.clone()),
            Some(Value::String(s)) => Err(LlmError::SchemaViolation(format!(
                "{key} has {} characters (at most {max})",
                s.chars().count()
            ))),
            Some(other) => Err(LlmError::SchemaViolation(format!(
                "{key} is {} (expected a string)",
                kind_of(other)
            ))),
            None => Err(LlmError::SchemaViolation(format!("{key} is missing"))),
        }
    };
    let list = |key: &str, max_items: usize, max_len: usize| -> Result<Vec<String>, LlmError> {
        let Some(value) = obj.get(key) else {
            return Err(LlmError::SchemaViolation(format!("{key} is missing")));
        };
        let Some(items) = value.as_array() else {
            return Err(LlmError::SchemaViolation(format!(
                "{key} is {} (expected an array)",
                kind_of(value)
            )));
        };
        if items.len() > max_items {
            return Err(LlmError::SchemaViolation(format!(
                "{key} has {} items (at most {max_items})",
                items.len()
            )));
        }
        items
            .iter()
            .map(|item| match item.as_str() {
                Some(s) if s.chars().count() <= max_len => Ok(s.to_string()),
                Some(_) => Err(LlmError::SchemaViolation(format!(
                    "an item of {key} is longer than {max_len} characters"
                ))),
                None => Err(LlmError::SchemaViolation(format!(
                    "an item of {key} is {} (expected a string)",
                    kind_of(item)
                ))),
            })
            .collect()
    };
    let answer = Answer {
        summary: text("summary", SUMMARY_MAX)?,
        tags: list("tags", TAGS_MAX, TAG_MAX)?,
        risk: text("risk", 16)?,
        warnings: list("warnings", WARNINGS_MAX, WARNING_MAX)?,
    };
    if !RISK_LEVELS.contains(&answer.risk.as_str()) {
        return violation(format!(
            "risk {:?} is not one of {}",
            answer.risk,
            RISK_LEVELS.join(", ")
        ));
    }
    Ok(answer)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"summary":"A tool.","tags":["cli"],"risk":"low","warnings":[]}"#;

    #[test]
    fn json_is_found_behind_quirks() {
        for text in [
            GOOD.to_string(),
            format!("<think>hmm {{not json}}</think>\n{GOOD}"),
            format!("```json\n{GOOD}\n```"),
            format!("Here you go: {GOOD} done"),
        ] {
            let v = extract_json(&text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(validate(&v).unwrap().risk, "low");
        }
        assert!(extract_json("no braces").is_none());
    }

    #[test]
    fn schema_violations_are_named() {
        let bad = |s: &str| {
            validate(&serde_json::from_str(s).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(r#"{"summary":"x","tags":[],"risk":"extreme","warnings":[]}"#).contains("risk")
        );
        assert!(bad(r#"{"summary":1,"tags":[],"risk":"low","warnings":[]}"#).contains("summary"));
        assert!(bad(r#"{"summary":"x","tags":[],"risk":"low"}"#).contains("warnings is missing"));
        assert!(bad(r#"{"summary":"x","tags":["a","b","c","d","e","f","g","h","i"],"risk":"low","warnings":[]}"#)
            .contains("9 items"));
        assert!(
            bad(r#"{"summary":"x","tags":[],"risk":"low","warnings":[],"extra":1}"#)
                .contains("extra")
        );
    }

    #[test]
    fn errors_are_classified_by_text_and_code() {
        assert_eq!(
            classify(400, "x", Some("model_not_found")).kind(),
            "model_not_found"
        );
        assert_eq!(
            classify(404, "No models loaded. Please load a model", None).kind(),
            "no_model_loaded"
        );
        assert_eq!(
            classify(
                400,
                "Trying to keep the first 5000 tokens when context the overflows. n_keep",
                None
            )
            .kind(),
            "context_overflow"
        );
        assert_eq!(
            classify(
                400,
                "the request exceeds the available context size",
                Some("exceed_context_size_error")
            )
            .kind(),
            "context_overflow"
        );
        assert_eq!(
            classify(400, "Failed to parse grammar", None).kind(),
            "grammar_failure"
        );
        assert_eq!(
            classify(200, "Unexpected endpoint or method. (GET /x)", None).kind(),
            "wrong_endpoint"
        );
        assert_eq!(
            classify(401, "nope", Some("invalid_api_key")).kind(),
            "auth_required"
        );
        assert_eq!(classify(500, "boom", None).kind(), "server_error");
        assert_eq!(body_error(&json!({"error": "s"})), Some(("s".into(), None)));
        assert_eq!(
            body_error(&json!({"error": {"message": "m", "code": "c"}})),
            Some(("m".into(), Some("c".into())))
        );
        assert_eq!(body_error(&json!({"choices": []})), None);
    }

    #[test]
    fn reasoning_fields_and_truncation() {
        let mut r = RawReply::default();
        r.absorb(&json!({"model": "actual", "choices": [{"message": {"content": "", "reasoning_content": GOOD}, "finish_reason": "stop"}]}));
        assert_eq!(r.answer().unwrap().summary, "A tool.");
        assert_eq!(r.model.as_deref(), Some("actual"));
        let mut t = RawReply::default();
        t.absorb(&json!({"choices": [{"delta": {"content": "{\"summary\": \"cut"}, "finish_reason": "length"}]}));
        assert_eq!(t.answer().unwrap_err(), LlmError::Truncated);
    }
}
