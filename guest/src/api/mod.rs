//! The OpenAI wire format: request validation into [`GenerateRequest`]s, response and error bodies.
//!
//! Requests are checked against an allowlist: a field this runtime would not honour is refused
//! by name rather than ignored.

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::engine::{ChatMessage, GenerateRequest, Usage};

/// An error response: HTTP status and an OpenAI-style body `{"error": {message, type, param, code}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable reason.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, `rate_limit_error`, `server_error`, …).
    pub kind: &'static str,
    /// The offending request field, if one.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: &'static str,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code,
        }
    }

    /// Any status without a param.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// POST /v1/chat/completions
    Chat,
    /// POST /v1/completions
    Completion,
}

/// A validated request.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRequest {
    /// Endpoint.
    pub endpoint: Endpoint,
    /// What the engine gets (request_id is filled in by the server).
    pub generate: GenerateRequest,
    /// SSE streaming.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Limits that validation enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The one model served.
    pub model_id: String,
    /// Largest max_tokens.
    pub max_tokens_cap: u32,
    /// max_tokens when absent.
    pub default_max_tokens: u32,
}

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "user",
];
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "user",
];
const ROLES: &[&str] = &["system", "developer", "user", "assistant"];

/// Parses and validates a request body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8], limits: &Limits) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "request body must be a JSON object",
        ));
    };
    let allowed = match endpoint {
        Endpoint::Chat => CHAT_FIELDS,
        Endpoint::Completion => COMPLETION_FIELDS,
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            k.as_str(),
            "unknown_field",
            format!(
                "unknown field {k:?}: this server accepts only {}",
                allowed.join(", ")
            ),
        ));
    }
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "model",
                "invalid_type",
                "model must be a string",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "model",
                "missing_field",
                "model is required",
            ));
        }
    };
    if model != limits.model_id {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "model {model:?} is not served here (this node serves {:?})",
                limits.model_id
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: "model_not_found",
        });
    }
    let (messages, prompt) = match endpoint {
        Endpoint::Chat => (Some(parse_messages(obj.get("messages"))?), None),
        Endpoint::Completion => (None, Some(parse_prompt(obj.get("prompt"))?)),
    };
    let mut max_tokens = opt_u64(&obj, "max_tokens")?;
    if let Some(m) = opt_u64(&obj, "max_completion_tokens")? {
        max_tokens = Some(m);
    }
    let max_tokens = match max_tokens {
        None => limits.default_max_tokens,
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "invalid_value",
                "max_tokens must be at least 1",
            ));
        }
        Some(m) if m > u64::from(limits.max_tokens_cap) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens_exceeded",
                format!(
                    "max_tokens {m} exceeds this server's cap of {}",
                    limits.max_tokens_cap
                ),
            ));
        }
        Some(m) => m as u32,
    };
    let temperature = opt_f64(&obj, "temperature", 0.0, 2.0)?;
    let top_p = opt_f64(&obj, "top_p", 0.0, 1.0)?;
    if top_p == Some(0.0) {
        return Err(ApiError::invalid(
            "top_p",
            "invalid_value",
            "top_p must be greater than 0",
        ));
    }
    if let Some(n) = opt_u64(&obj, "n")?
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            "unsupported_value",
            format!("n = {n} is not supported: this server returns one choice"),
        ));
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream",
                "invalid_type",
                "stream must be a boolean",
            ));
        }
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "stream_options",
                    "invalid_value",
                    "stream_options is only allowed when stream is true",
                ));
            }
            if let Some(k) = o.keys().find(|k| k.as_str() != "include_usage") {
                return Err(ApiError::invalid(
                    format!("stream_options.{k}"),
                    "unknown_field",
                    format!("unknown field \"stream_options.{k}\""),
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage",
                        "invalid_type",
                        "include_usage must be a boolean",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "invalid_type",
                "stream_options must be an object",
            ));
        }
    };
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    "stop",
                    "invalid_type",
                    "stop must be a string or an array of strings",
                )
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "invalid_type",
                "stop must be a string or an array of strings",
            ));
        }
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "invalid_value",
            "stop takes at most 4 non-empty sequences",
        ));
    }
    let seed =
        match obj.get("seed") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                ApiError::invalid("seed", "invalid_type", "seed must be an integer")
            })?),
        };
    match obj.get("user") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "user",
                "invalid_type",
                "user must be a string",
            ));
        }
    }
    Ok(ParsedRequest {
        endpoint,
        generate: GenerateRequest {
            request_id: String::new(),
            model,
            messages,
            prompt,
            max_tokens,
            temperature,
            top_p,
            stop,
            seed,
        },
        stream,
        include_usage,
    })
}

fn opt_u64(obj: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(
                key,
                "invalid_type",
                format!("{key} must be a non-negative integer"),
            )
        }),
    }
}

fn opt_f64(
    obj: &Map<String, Value>,
    key: &'static str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                key,
                "invalid_value",
                format!("{key} must be a number between {lo} and {hi}"),
            )),
        },
    }
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(Value::Array(items)) = v else {
        return Err(ApiError::invalid(
            "messages",
            "invalid_type",
            "messages must be a non-empty array",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "invalid_value",
            "messages must be a non-empty array",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |f: &str| format!("messages[{i}].{f}");
            let Value::Object(o) = m else {
                return Err(ApiError::invalid(format!("messages[{i}]"), "invalid_type", format!("messages[{i}] must be an object")));
            };
            if let Some(k) = o.keys().find(|k| !["role", "content", "name"].contains(&k.as_str())) {
                return Err(ApiError::invalid(at(k), "unknown_field", format!("unknown field \"{}\"", at(k))));
            }
            let role = match o.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
                _ => return Err(ApiError::invalid(at("role"), "invalid_value", format!("{} must be one of {}", at("role"), ROLES.join(", ")))),
            };
            let content = match o.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) if p.as_object().is_some_and(|o| o.len() == 2) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    "unsupported_value",
                                    format!("messages[{i}].content[{j}]: only {{\"type\": \"text\", \"text\": …}} parts are supported"),
                                ));
                            }
                        }
                    }
                    text
                }
                _ => return Err(ApiError::invalid(at("content"), "invalid_type", format!("{} must be a string or an array of text parts", at("content")))),
            };
            if let Some(n) = o.get("name")
                && !n.is_string()
            {
                return Err(ApiError::invalid(at("name"), "invalid_type", format!("{} must be a string", at("name"))));
            }
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn parse_prompt(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_owned())
        }
        Some(Value::Array(_)) => Err(ApiError::invalid(
            "prompt",
            "unsupported_value",
            "prompt arrays must hold exactly one string (batches are not supported)",
        )),
        _ => Err(ApiError::invalid(
            "prompt",
            "invalid_type",
            "prompt must be a string",
        )),
    }
}

/// Builds response bodies for one request.
#[derive(Clone, Debug)]
pub struct Responder {
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Response id (`chatcmpl-…` or `cmpl-…`).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model id.
    pub model: String,
}

impl Responder {
    /// The full non-stream response.
    pub fn complete(&self, text: &str, finish_reason: &str, usage: &Usage) -> Value {
        match self.endpoint {
            Endpoint::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason}],
                "usage": usage,
            }),
            Endpoint::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}],
                "usage": usage,
            }),
        }
    }

    /// A stream chunk carrying `text` (and, at the end, the finish reason). `first` adds the
    /// assistant role to a chat delta. `with_usage_null` adds `"usage": null`, as OpenAI does when
    /// the client asked for a usage chunk.
    pub fn chunk(
        &self,
        text: &str,
        finish_reason: Option<&str>,
        first: bool,
        with_usage_null: bool,
    ) -> Value {
        let mut v = match self.endpoint {
            Endpoint::Chat => {
                let delta = match (first, finish_reason.is_some() && text.is_empty()) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, true) => json!({}),
                    (false, false) => json!({"content": text}),
                };
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
                })
            }
            Endpoint::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}],
            }),
        };
        if with_usage_null {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The usage-only chunk sent before `[DONE]` when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [], "usage": usage})
    }
}

/// One server-sent event carrying `payload` as its data: `data: <payload>\n\n`.
///
/// The payload must hold no line break (compact JSON and `[DONE]` hold none): a client splits
/// events into lines, so a payload with one would reach it, and its receipt hash, as two lines.
pub fn sse_event(payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\n\n");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            model_id: "m".into(),
            max_tokens_cap: 100,
            default_max_tokens: 16,
        }
    }

    fn chat(body: &str) -> Result<ParsedRequest, ApiError> {
        parse(Endpoint::Chat, body.as_bytes(), &limits())
    }

    #[test]
    fn an_sse_event_is_one_data_line_and_a_blank_line() {
        assert_eq!(sse_event(b"[DONE]"), b"data: [DONE]\n\n");
        assert_eq!(sse_event(b""), b"data: \n\n");
    }

    #[test]
    fn valid_chat_request() {
        let p = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"stop":"x","temperature":0}"#).unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.generate.max_tokens, 16);
        assert_eq!(p.generate.stop, vec!["x"]);
        assert_eq!(p.generate.temperature, Some(0.0));
        assert_eq!(p.generate.messages.unwrap()[0].content, "hi");
    }

    #[test]
    fn rejections_name_what_was_wrong() {
        let e = chat("{not json").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
        assert!(e.message.contains("\"tools\""), "{}", e.message);
        let e =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":101}"#)
                .unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "max_tokens_exceeded")
        );
        let e =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        let e =
            chat(r#"{"model":"other","messages":[{"role":"user","content":"hi"}]}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"hi","tool_calls":[]}]}"#)
                .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls"));
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options"));
        let e = chat(r#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn completion_prompt_forms() {
        let l = limits();
        let p = parse(
            Endpoint::Completion,
            br#"{"model":"m","prompt":["once"]}"#,
            &l,
        )
        .unwrap();
        assert_eq!(p.generate.prompt.as_deref(), Some("once"));
        let e = parse(
            Endpoint::Completion,
            br#"{"model":"m","prompt":["a","b"]}"#,
            &l,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = parse(
            Endpoint::Completion,
            br#"{"model":"m","prompt":"a","messages":[]}"#,
            &l,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }
}
