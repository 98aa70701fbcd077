//! The OpenAI wire format: request validation into [`GenerateRequest`]s, response and error bodies.
//!
//! Requests are checked against an allowlist: a field this runtime would not honour is refused
//! by name rather than ignored.

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::engine::{
    ChatMessage, Chunk, GenerateRequest, ResponseFormat, TokenLogprob, ToolCall, ToolChoice,
    ToolSpec, Usage,
};

/// Most alternatives per token a request may ask for (`top_logprobs`), as OpenAI allows.
pub const TOP_LOGPROBS_CAP: u64 = 20;
/// Most tools one request may declare, as OpenAI allows.
pub const TOOLS_CAP: usize = 128;

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
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
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
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

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
    let response_format = parse_response_format(obj.get("response_format"))?;
    let tools = parse_tools(obj.get("tools"))?;
    let tool_choice = parse_tool_choice(obj.get("tool_choice"), &tools)?;
    let parallel_tool_calls = match obj.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parallel_tool_calls",
                "invalid_type",
                "parallel_tool_calls must be a boolean",
            ));
        }
    };
    if response_format.is_some()
        && matches!(tool_choice, ToolChoice::Required | ToolChoice::Function(_))
    {
        return Err(ApiError::invalid(
            "response_format",
            "unsupported_value",
            "response_format cannot be combined with a forced tool call (tool_choice required or a named function)",
        ));
    }
    let logprobs = parse_logprobs(&obj)?;
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
            response_format,
            tools,
            tool_choice,
            parallel_tool_calls,
            logprobs,
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

/// True for an OpenAI function or schema name: 1 to 64 of `[A-Za-z0-9_-]`.
fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Refuses any key of `o` not in `known`, naming it as `{at}.{key}`.
fn only_keys(o: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), ApiError> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            format!("{at}.{k}"),
            "unknown_field",
            format!(
                "unknown field \"{at}.{k}\": {at} accepts only {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn parse_response_format(v: Option<&Value>) -> Result<Option<ResponseFormat>, ApiError> {
    const AT: &str = "response_format";
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::invalid(
                AT,
                "invalid_type",
                "response_format must be an object",
            ));
        }
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => {
            only_keys(o, AT, &["type"])?;
            Ok(None)
        }
        Some("json_object") => {
            only_keys(o, AT, &["type"])?;
            Ok(Some(ResponseFormat::JsonObject))
        }
        Some("json_schema") => {
            only_keys(o, AT, &["type", "json_schema"])?;
            const JS: &str = "response_format.json_schema";
            let Some(Value::Object(js)) = o.get("json_schema") else {
                return Err(ApiError::invalid(
                    JS,
                    "invalid_type",
                    "response_format.json_schema must be an object with name and schema",
                ));
            };
            only_keys(js, JS, &["name", "description", "schema", "strict"])?;
            let name = match js.get("name") {
                Some(Value::String(n)) if valid_name(n) => n.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        format!("{JS}.name"),
                        "invalid_value",
                        "response_format.json_schema.name must be 1 to 64 letters, digits, _ or -",
                    ));
                }
            };
            if js
                .get("description")
                .is_some_and(|d| !d.is_string() && !d.is_null())
            {
                return Err(ApiError::invalid(
                    format!("{JS}.description"),
                    "invalid_type",
                    "response_format.json_schema.description must be a string",
                ));
            }
            // Decoding is always constrained to the schema: `strict` false promises less, so it
            // is accepted too.
            if js
                .get("strict")
                .is_some_and(|d| !d.is_boolean() && !d.is_null())
            {
                return Err(ApiError::invalid(
                    format!("{JS}.strict"),
                    "invalid_type",
                    "response_format.json_schema.strict must be a boolean",
                ));
            }
            let schema = match js.get("schema") {
                None | Some(Value::Null) => json!({}),
                Some(Value::Object(s)) => Value::Object(s.clone()),
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("{JS}.schema"),
                        "invalid_type",
                        "response_format.json_schema.schema must be a JSON schema object",
                    ));
                }
            };
            Ok(Some(ResponseFormat::JsonSchema { name, schema }))
        }
        _ => Err(ApiError::invalid(
            "response_format.type",
            "invalid_value",
            "response_format.type must be one of text, json_object, json_schema",
        )),
    }
}

fn parse_tools(v: Option<&Value>) -> Result<Vec<ToolSpec>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= TOOLS_CAP => a,
        _ => {
            return Err(ApiError::invalid(
                "tools",
                "invalid_value",
                format!("tools must be an array of 1 to {TOOLS_CAP} function tools"),
            ));
        }
    };
    let mut tools: Vec<ToolSpec> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(o) = t else {
            return Err(ApiError::invalid(
                &at,
                "invalid_type",
                format!("{at} must be an object"),
            ));
        };
        only_keys(o, &at, &["type", "function"])?;
        if o.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                "unsupported_value",
                format!("{at}.type must be \"function\" (the only tool type served)"),
            ));
        }
        let fat = format!("{at}.function");
        let Some(Value::Object(f)) = o.get("function") else {
            return Err(ApiError::invalid(
                &fat,
                "invalid_type",
                format!("{fat} must be an object"),
            ));
        };
        only_keys(f, &fat, &["name", "description", "parameters", "strict"])?;
        let name = match f.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            _ => {
                return Err(ApiError::invalid(
                    format!("{fat}.name"),
                    "invalid_value",
                    format!("{fat}.name must be 1 to 64 letters, digits, _ or -"),
                ));
            }
        };
        if tools.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(
                format!("{fat}.name"),
                "invalid_value",
                format!("{fat}.name {name:?} is declared twice"),
            ));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{fat}.description"),
                    "invalid_type",
                    format!("{fat}.description must be a string"),
                ));
            }
        };
        if f.get("strict")
            .is_some_and(|d| !d.is_boolean() && !d.is_null())
        {
            return Err(ApiError::invalid(
                format!("{fat}.strict"),
                "invalid_type",
                format!("{fat}.strict must be a boolean"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(Value::Object(p)) => Value::Object(p.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{fat}.parameters"),
                    "invalid_type",
                    format!("{fat}.parameters must be a JSON schema object"),
                ));
            }
        };
        tools.push(ToolSpec {
            name,
            description,
            parameters,
        });
    }
    Ok(tools)
}

fn parse_tool_choice(v: Option<&Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    const AT: &str = "tool_choice";
    let choice = match v {
        None | Some(Value::Null) => {
            return Ok(if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            });
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err(ApiError::invalid(
                    AT,
                    "invalid_value",
                    "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                ));
            }
        },
        Some(Value::Object(o)) => {
            only_keys(o, AT, &["type", "function"])?;
            let name = match (o.get("type").and_then(Value::as_str), o.get("function")) {
                (Some("function"), Some(Value::Object(f))) => {
                    only_keys(f, "tool_choice.function", &["name"])?;
                    f.get("name").and_then(Value::as_str).map(str::to_owned)
                }
                _ => None,
            };
            let Some(name) = name else {
                return Err(ApiError::invalid(
                    AT,
                    "invalid_value",
                    "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                ));
            };
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    "invalid_value",
                    format!("tool_choice names {name:?}, which is not among tools"),
                ));
            }
            ToolChoice::Function(name)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                AT,
                "invalid_type",
                "tool_choice must be a string or an object",
            ));
        }
    };
    if tools.is_empty() && choice != ToolChoice::None {
        return Err(ApiError::invalid(
            AT,
            "invalid_value",
            "tool_choice is only allowed when tools are given",
        ));
    }
    Ok(choice)
}

fn parse_logprobs(obj: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    let wanted = match obj.get("logprobs") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "logprobs",
                "invalid_type",
                "logprobs must be a boolean",
            ));
        }
    };
    let top = opt_u64(obj, "top_logprobs")?;
    match top {
        Some(n) if n > TOP_LOGPROBS_CAP => Err(ApiError::invalid(
            "top_logprobs",
            "invalid_value",
            format!("top_logprobs {n} exceeds this server's cap of {TOP_LOGPROBS_CAP}"),
        )),
        Some(_) if !wanted => Err(ApiError::invalid(
            "top_logprobs",
            "invalid_value",
            "top_logprobs requires logprobs: true",
        )),
        // Bounded by the cap above.
        _ => Ok(wanted.then_some(top.unwrap_or(0) as u32)),
    }
}

fn parse_message_tool_calls(v: &Value, at: &str) -> Result<Vec<ToolCall>, ApiError> {
    let bad = || {
        ApiError::invalid(
            at,
            "invalid_value",
            format!(
                "{at} must be an array of {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}"
            ),
        )
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    items
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let cat = format!("{at}[{j}]");
            let Value::Object(o) = c else {
                return Err(bad());
            };
            only_keys(o, &cat, &["id", "type", "function"])?;
            let Some(Value::Object(f)) = o.get("function") else {
                return Err(bad());
            };
            only_keys(f, &format!("{cat}.function"), &["name", "arguments"])?;
            match (
                o.get("id").and_then(Value::as_str),
                o.get("type").and_then(Value::as_str),
                f.get("name").and_then(Value::as_str),
                f.get("arguments").and_then(Value::as_str),
            ) {
                (Some(id), Some("function"), Some(name), Some(arguments)) => Ok(ToolCall {
                    index: j as u32,
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: arguments.to_owned(),
                }),
                _ => Err(bad()),
            }
        })
        .collect()
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
            let role = match o.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
                _ => return Err(ApiError::invalid(at("role"), "invalid_value", format!("{} must be one of {}", at("role"), ROLES.join(", ")))),
            };
            let keys: &[&str] = match role.as_str() {
                "assistant" => &["role", "content", "name", "tool_calls"],
                "tool" => &["role", "content", "tool_call_id"],
                _ => &["role", "content", "name"],
            };
            if let Some(k) = o.keys().find(|k| !keys.contains(&k.as_str())) {
                return Err(ApiError::invalid(at(k), "unknown_field", format!("unknown field \"{}\"", at(k))));
            }
            let tool_calls = match o.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => parse_message_tool_calls(v, &at("tool_calls"))?,
            };
            let tool_call_id = match (role.as_str(), o.get("tool_call_id")) {
                ("tool", Some(Value::String(id))) => Some(id.clone()),
                ("tool", _) => return Err(ApiError::invalid(at("tool_call_id"), "missing_field", format!("{} (a string) is required in a tool message", at("tool_call_id")))),
                _ => None,
            };
            let content = match o.get("content") {
                // An assistant message that only calls tools has no content.
                None | Some(Value::Null) if !tool_calls.is_empty() => String::new(),
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
            Ok(ChatMessage { role, content, tool_calls, tool_call_id })
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
    /// The client asked for log probabilities: choices carry `logprobs.content`.
    pub logprobs: bool,
}

fn tool_call_json(c: &ToolCall, with_index: bool) -> Value {
    let mut v = json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}});
    if with_index {
        v["index"] = json!(c.index);
    }
    v
}

impl Responder {
    fn logprobs_json(&self, tokens: &[TokenLogprob]) -> Value {
        if self.logprobs {
            json!({"content": tokens})
        } else {
            Value::Null
        }
    }

    /// The full non-stream response: `out` holds the whole text, every tool call and every
    /// token's log probabilities.
    pub fn complete(&self, out: &Chunk, finish_reason: &str, usage: &Usage) -> Value {
        let text = out.text.as_str();
        match self.endpoint {
            Endpoint::Chat => {
                let mut message = json!({"role": "assistant", "content": text});
                if !out.tool_calls.is_empty() {
                    if text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = out
                        .tool_calls
                        .iter()
                        .map(|c| tool_call_json(c, false))
                        .collect();
                }
                json!({
                    "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "message": message, "logprobs": self.logprobs_json(&out.logprobs), "finish_reason": finish_reason}],
                    "usage": usage,
                })
            }
            Endpoint::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}],
                "usage": usage,
            }),
        }
    }

    /// A stream chunk carrying the text, tool calls and log probabilities of `c` (its finish
    /// reason and usage are not looked at), or, with `finish_reason`, the closing chunk (pass an
    /// empty `c`). `first` adds the assistant role to a chat delta. `with_usage_null` adds
    /// `"usage": null`, as OpenAI does when the client asked for a usage chunk.
    pub fn chunk(
        &self,
        c: &Chunk,
        finish_reason: Option<&str>,
        first: bool,
        with_usage_null: bool,
    ) -> Value {
        let text = c.text.as_str();
        let mut v = match self.endpoint {
            Endpoint::Chat => {
                let only_finish =
                    finish_reason.is_some() && text.is_empty() && c.tool_calls.is_empty();
                let mut delta = match (first, only_finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, true) => json!({}),
                    (false, false) if text.is_empty() && !c.tool_calls.is_empty() => json!({}),
                    (false, false) => json!({"content": text}),
                };
                if !c.tool_calls.is_empty() {
                    if first && text.is_empty() {
                        delta["content"] = Value::Null;
                    }
                    delta["tool_calls"] = c
                        .tool_calls
                        .iter()
                        .map(|t| tool_call_json(t, true))
                        .collect();
                }
                let logprobs = if only_finish {
                    Value::Null
                } else {
                    self.logprobs_json(&c.logprobs)
                };
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
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
        for field in ["logit_bias", "functions", "n_probs", "presence_penalty"] {
            let e = chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"{field}":{{}}}}"#
            ))
            .unwrap_err();
            assert_eq!((e.param.as_deref(), e.code), (Some(field), "unknown_field"));
            assert!(e.message.contains(&format!("\"{field}\"")), "{}", e.message);
        }
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
        // Only assistant messages carry tool calls.
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

    fn with(extra: &str) -> Result<ParsedRequest, ApiError> {
        chat(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#
        ))
    }

    const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}}"#;

    #[test]
    fn response_formats() {
        assert_eq!(
            with(r#""response_format":{"type":"text"}"#)
                .unwrap()
                .generate
                .response_format,
            None
        );
        assert_eq!(
            with(r#""response_format":{"type":"json_object"}"#)
                .unwrap()
                .generate
                .response_format,
            Some(ResponseFormat::JsonObject)
        );
        let p = with(r#""response_format":{"type":"json_schema","json_schema":{"name":"v","schema":{"type":"object"},"strict":true}}"#).unwrap();
        assert_eq!(
            p.generate.response_format,
            Some(ResponseFormat::JsonSchema {
                name: "v".into(),
                schema: json!({"type": "object"})
            })
        );
        // What the adapter receives.
        let sent = serde_json::to_value(&p.generate).unwrap();
        assert_eq!(
            sent["response_format"],
            json!({"type": "json_schema", "name": "v", "schema": {"type": "object"}})
        );
        for (bad, param) in [
            (
                r#""response_format":{"type":"xml"}"#,
                "response_format.type",
            ),
            (r#""response_format":"json""#, "response_format"),
            (
                r#""response_format":{"type":"json_schema"}"#,
                "response_format.json_schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"a b"}}"#,
                "response_format.json_schema.name",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"a","schema":[]}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"a","extra":1}}"#,
                "response_format.json_schema.extra",
            ),
            (
                r#""response_format":{"type":"json_object","schema":{}}"#,
                "response_format.schema",
            ),
        ] {
            assert_eq!(
                with(bad).unwrap_err().param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }

    #[test]
    fn tools_and_tool_choice() {
        let p = with(&format!(r#""tools":[{WEATHER}]"#)).unwrap().generate;
        assert_eq!(p.tool_choice, ToolChoice::Auto);
        assert!(p.parallel_tool_calls);
        assert_eq!(p.tools[0].name, "get_weather");
        let p = with(&format!(r#""tools":[{WEATHER}],"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}},"parallel_tool_calls":false"#)).unwrap().generate;
        assert_eq!(p.tool_choice, ToolChoice::Function("get_weather".into()));
        assert!(!p.parallel_tool_calls);
        let sent = serde_json::to_value(&p).unwrap();
        assert_eq!(sent["tool_choice"], json!({"function": "get_weather"}));
        assert_eq!(
            sent["tools"][0]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        for c in ["none", "auto", "required"] {
            assert!(
                with(&format!(r#""tools":[{WEATHER}],"tool_choice":"{c}""#)).is_ok(),
                "{c}"
            );
        }
        // No tools: none only.
        assert_eq!(
            with(r#""tool_choice":"none""#)
                .unwrap()
                .generate
                .tool_choice,
            ToolChoice::None
        );
        for (bad, param) in [
            (r#""tool_choice":"auto""#.to_owned(), "tool_choice"),
            (r#""tools":[]"#.to_owned(), "tools"),
            (
                r#""tools":[{"type":"retrieval"}]"#.to_owned(),
                "tools[0].type",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"has space"}}]"#.to_owned(),
                "tools[0].function.name",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]"#
                    .to_owned(),
                "tools[0].function.parameters",
            ),
            (
                format!(r#""tools":[{WEATHER},{WEATHER}]"#),
                "tools[1].function.name",
            ),
            (
                format!(r#""tools":[{WEATHER}],"tool_choice":"sometimes""#),
                "tool_choice",
            ),
            (
                format!(
                    r#""tools":[{WEATHER}],"tool_choice":{{"type":"function","function":{{"name":"other"}}}}"#
                ),
                "tool_choice.function.name",
            ),
            (
                format!(r#""tools":[{WEATHER}],"parallel_tool_calls":1"#),
                "parallel_tool_calls",
            ),
            (
                format!(
                    r#""tools":[{WEATHER}],"tool_choice":"required","response_format":{{"type":"json_object"}}"#
                ),
                "response_format",
            ),
        ] {
            assert_eq!(
                with(&bad).unwrap_err().param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }

    #[test]
    fn tool_messages_in_the_history() {
        let p = chat(r#"{"model":"m","messages":[
            {"role":"user","content":"weather?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"21C"}]}"#).unwrap();
        let m = p.generate.messages.unwrap();
        assert_eq!(m[1].tool_calls[0].name, "get_weather");
        assert_eq!(m[1].content, "");
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_1"));
        for (bad, param) in [
            (
                r#"{"role":"tool","content":"x"}"#,
                "messages[0].tool_call_id",
            ),
            (
                r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f"}}]}"#,
                "messages[0].tool_calls",
            ),
            (
                r#"{"role":"tool","content":"x","tool_call_id":"c","name":"f"}"#,
                "messages[0].name",
            ),
            (r#"{"role":"function","content":"x"}"#, "messages[0].role"),
        ] {
            let e = chat(&format!(r#"{{"model":"m","messages":[{bad}]}}"#)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn logprobs_are_capped() {
        assert_eq!(
            with(r#""logprobs":true"#).unwrap().generate.logprobs,
            Some(0)
        );
        assert_eq!(
            with(r#""logprobs":true,"top_logprobs":20"#)
                .unwrap()
                .generate
                .logprobs,
            Some(20)
        );
        assert_eq!(with(r#""logprobs":false"#).unwrap().generate.logprobs, None);
        let e = with(r#""logprobs":true,"top_logprobs":21"#).unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("top_logprobs"))
        );
        assert!(e.message.contains("cap of 20"), "{}", e.message);
        assert_eq!(
            with(r#""top_logprobs":2"#).unwrap_err().param.as_deref(),
            Some("top_logprobs")
        );
        assert_eq!(
            with(r#""logprobs":1"#).unwrap_err().param.as_deref(),
            Some("logprobs")
        );
        // The legacy completions endpoint still refuses logprobs, by name.
        let e = parse(
            Endpoint::Completion,
            br#"{"model":"m","prompt":"a","logprobs":2}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("logprobs"), "unknown_field")
        );
    }

    #[test]
    fn responses_carry_tool_calls_and_logprobs_only_when_present() {
        let r = Responder {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            logprobs: false,
        };
        let usage = Usage::new(1, 2);
        let plain = r.complete(
            &Chunk {
                text: "hi".into(),
                ..Chunk::default()
            },
            "stop",
            &usage,
        );
        assert_eq!(
            plain["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
        let call = ToolCall {
            index: 0,
            id: "call_a".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        let out = Chunk {
            tool_calls: vec![call.clone()],
            ..Chunk::default()
        };
        let v = r.complete(&out, "tool_calls", &usage);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        let c = r.chunk(&out, None, false, false);
        assert_eq!(
            c["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        let r = Responder {
            logprobs: true,
            ..r
        };
        let lp = TokenLogprob {
            token: "hi".into(),
            logprob: -0.25,
            bytes: b"hi".to_vec(),
            top_logprobs: vec![],
        };
        let out = Chunk {
            text: "hi".into(),
            logprobs: vec![lp],
            ..Chunk::default()
        };
        let v = r.complete(&out, "stop", &usage);
        assert_eq!(
            v["choices"][0]["logprobs"],
            json!({"content": [{"token": "hi", "logprob": -0.25, "bytes": [104, 105], "top_logprobs": []}]})
        );
        let c = r.chunk(&out, None, true, false);
        assert_eq!(c["choices"][0]["logprobs"]["content"][0]["token"], "hi");
        assert_eq!(
            r.chunk(&Chunk::default(), Some("stop"), false, false)["choices"][0]["logprobs"],
            Value::Null
        );
    }
}
