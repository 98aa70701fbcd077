//! The OpenAI chat types the typed calls use, and OpenAI-style error bodies.
//!
//! Requests serialise only the fields that are set. Responses ignore fields they do not know,
//! so a newer server does not break an older client.

use chrysalis_attestation::receipt::Usage;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One chat message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
}

impl ChatMessage {
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// `stream_options` of a streaming request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk carrying the usage.
    pub include_usage: bool,
}

/// A chat completion request (`POST /v1/chat/completions`). `stream` and `stream_options` are
/// set by the call that sends it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Sampling temperature (0 is greedy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// Streaming (set by the call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Stream options (set by the streaming call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

impl ChatRequest {
    /// A request for `model` with these messages and nothing else set.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            ..Self::default()
        }
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, n: u64) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets `temperature`.
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }
}

/// One choice of a non-stream completion.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Its index.
    #[serde(default)]
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// Why generation stopped (`stop`, `length`).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A chat completion (`object: chat.completion`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// The model that served it.
    #[serde(default)]
    pub model: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The choices (one).
    pub choices: Vec<ChatChoice>,
    /// Token usage as the response reports it.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ChatCompletion {
    /// The first choice's text.
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .map_or("", |c| c.message.content.as_str())
    }
}

/// The incremental message of a stream chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// Set on the first chunk.
    #[serde(default)]
    pub role: Option<String>,
    /// New text.
    #[serde(default)]
    pub content: Option<String>,
}

/// One choice of a stream chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Its index.
    #[serde(default)]
    pub index: u32,
    /// What it adds.
    #[serde(default)]
    pub delta: ChatDelta,
    /// Set on the last content chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A stream chunk (`object: chat.completion.chunk`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// The model.
    #[serde(default)]
    pub model: String,
    /// The choices (none on the usage chunk).
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage, on the last chunk when `include_usage` was asked for.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ChatChunk {
    /// The text this chunk adds.
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
            .unwrap_or("")
    }
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// The model id.
    pub id: String,
    /// Who owns it.
    #[serde(default)]
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// The models.
    pub data: Vec<Model>,
}

/// An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// The `message`, `type` and `code` of an OpenAI-style error body, if it is one.
pub fn parse_error_body(body: &[u8]) -> Option<(String, String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Some((s("message"), s("type"), s("code")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_only_what_is_set() {
        let r = ChatRequest::new("m", vec![ChatMessage::user("hi")]).max_tokens(4);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        );
    }

    #[test]
    fn responses_tolerate_unknown_and_null_fields() {
        let c: ChatCompletion = serde_json::from_value(json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hey"}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            "system_fingerprint": null
        }))
        .unwrap();
        assert_eq!(c.text(), "hey");
        let k: ChatChunk = serde_json::from_value(json!({
            "id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": null
        }))
        .unwrap();
        assert_eq!(k.text(), "");
        let (m, t, c) =
            parse_error_body(&serde_json::to_vec(&error_body("no", "t", "c")).unwrap()).unwrap();
        assert_eq!((m.as_str(), t.as_str(), c.as_str()), ("no", "t", "c"));
    }
}
