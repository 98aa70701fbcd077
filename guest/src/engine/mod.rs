//! The engine seam: what the server asks of a token generator.
//!
//! An [`Engine`] turns a [`GenerateRequest`] into a [`Generation`]: a bounded stream of
//! [`EngineEvent`]s that ends when the engine has stopped working on the request (the channel
//! closes). The last chunk of a successful generation carries the finish reason and usage.
//! Cancelling asks the engine to stop; the stream still ends only once it has, so whoever holds a
//! concurrency slot can keep it until the engine's resources are really free.
//!
//! * [`python::PythonEngine`] (feature `engine`): a Python adapter embedded with pyo3.
//! * `scripted::ScriptedEngine`: an in-memory engine with scripted output, for tests (compiled only
//!   into tests and with the `test-util` feature).
//! * [`FailedEngine`]: stands in when the adapter failed to start, so the server stays up and
//!   reports why.

#[cfg(feature = "engine")]
pub mod python;
#[cfg(any(test, feature = "test-util"))]
pub mod scripted;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;

/// Errors of the engine seam.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum EngineError {
    /// The adapter could not be loaded or started (the message is the Python exception).
    #[error("engine failed to start: {0}")]
    Start(String),
    /// The engine is not running (failed at start, or its event loop died).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine refused or failed this request (a Python exception: type and message).
    #[error("{0}")]
    Generation(String),
}

/// One chat message as the adapter sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text content (empty for an assistant message that only calls tools).
    pub content: String,
    /// The tool calls of an assistant message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A function call made by the model, in a response or in a follow-up request's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Position among the calls of one response (0, 1, …).
    #[serde(default)]
    pub index: u32,
    /// `call_…`: what a `tool` message names in `tool_call_id`.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments, a JSON text (as OpenAI sends it: a string, not an object).
    pub arguments: String,
}

/// A function the model may call (`tools[].function`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolSpec {
    /// Name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// What it does, for the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments (an object schema).
    pub parameters: serde_json::Value,
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// No call: the output is text.
    None,
    /// The model decides (unconstrained; a call it writes is parsed out of its output).
    Auto,
    /// At least one call, of any tool (constrained decoding).
    Required,
    /// A call of this function (constrained decoding).
    Function(String),
}

/// The shape the output must have (`response_format`), enforced by constrained decoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON valid for `schema`.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The JSON schema.
        schema: serde_json::Value,
    },
}

/// A validated request, as handed to the adapter (serialized to JSON for Python).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerateRequest {
    /// Unique id of this request (also the response id).
    pub request_id: String,
    /// Model id.
    pub model: String,
    /// Chat messages (chat completions), or None.
    pub messages: Option<Vec<ChatMessage>>,
    /// Raw prompt (completions), or None.
    pub prompt: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy. None: the adapter's default.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Stop sequences: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// Constrained output shape, if any.
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (empty: none).
    pub tools: Vec<ToolSpec>,
    /// Whether and which tool to call (`None` when `tools` is empty).
    pub tool_choice: ToolChoice,
    /// More than one call per response allowed.
    pub parallel_tool_calls: bool,
    /// Log probabilities wanted: None, or Some(how many alternatives per token, 0..=20).
    pub logprobs: Option<u32>,
}

/// Token usage of a finished generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// Tokens of the prompt (after the chat template).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage with the total filled in.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One alternative token and its log probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f64,
    /// Its UTF-8 bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
}

/// A generated token, its log probability and the most likely alternatives (OpenAI's
/// `choices[].logprobs.content[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f64,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// A piece of output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// New text (may be empty on the final chunk).
    pub text: String,
    /// Set on the final chunk: `stop`, `length` or `tool_calls`.
    pub finish_reason: Option<String>,
    /// Set on the final chunk.
    pub usage: Option<Usage>,
    /// Complete tool calls found in the output since the previous chunk.
    pub tool_calls: Vec<ToolCall>,
    /// Log probabilities of the tokens generated since the previous chunk (when asked for).
    pub logprobs: Vec<TokenLogprob>,
}

/// What a generation yields.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// Output.
    Chunk(Chunk),
    /// The engine failed; nothing follows.
    Error(String),
}

/// A running generation. Dropping it without [`Generation::cancel`] also cancels it.
pub struct Generation {
    rx: mpsc::Receiver<EngineEvent>,
    cancel: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").finish_non_exhaustive()
    }
}

impl Generation {
    /// Wraps a channel and the way to cancel what feeds it.
    pub fn new(rx: mpsc::Receiver<EngineEvent>, cancel: Box<dyn FnOnce() + Send>) -> Self {
        Self {
            rx,
            cancel: Some(cancel),
        }
    }

    /// The next event; None once the engine has stopped working on this request.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        self.rx.recv().await
    }

    /// Asks the engine to stop. Idempotent. Keep calling [`Self::next`] (or [`Self::finish`]) to
    /// learn when it has.
    pub fn cancel(&mut self) {
        if let Some(c) = self.cancel.take() {
            c();
        }
    }

    /// Marks the generation complete so that dropping it does not cancel.
    pub fn disarm(&mut self) {
        self.cancel = None;
    }

    /// Cancels and waits until the engine has stopped, at most `grace`. True when it stopped in time.
    pub async fn finish(mut self, grace: std::time::Duration) -> bool {
        self.cancel();
        tokio::time::timeout(grace, async { while self.rx.recv().await.is_some() {} })
            .await
            .is_ok()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A token generator.
pub trait Engine: Send + Sync + 'static {
    /// Model ids the engine serves.
    fn models(&self) -> Vec<String>;
    /// Starts a generation whose events are buffered at most `buffer` deep.
    fn generate(&self, req: GenerateRequest, buffer: usize) -> Result<Generation, EngineError>;
    /// Why the engine cannot serve, if it cannot.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// The engine of a server whose adapter failed to start: every request fails with the reason.
#[derive(Debug, Clone)]
pub struct FailedEngine {
    /// Why.
    pub reason: String,
}

impl Engine for FailedEngine {
    fn models(&self) -> Vec<String> {
        Vec::new()
    }
    fn generate(&self, _req: GenerateRequest, _buffer: usize) -> Result<Generation, EngineError> {
        Err(EngineError::Unavailable(self.reason.clone()))
    }
    fn unavailable(&self) -> Option<String> {
        Some(self.reason.clone())
    }
}
