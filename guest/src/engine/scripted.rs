//! An in-memory engine with scripted output, for tests of everything around the engine seam.
//!
//! It emits the words `w0 w1 w2 …` (one token each, `delay` apart) up to max_tokens, honours stop
//! sequences, counts prompt tokens as whitespace-separated words, and can be told to fail. When a
//! tool call is forced (`tool_choice` required or named) it instead calls the named tool (or, for
//! required, every declared tool when parallel calls are allowed, else the first) with the
//! arguments `{"n": i}`, one call per token, and finishes with `tool_calls`. Asked for log
//! probabilities, it gives token i the log probability `-i/10` and `k` alternatives `alt0…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    Chunk, Engine, EngineError, EngineEvent, GenerateRequest, Generation, TokenLogprob, ToolCall,
    ToolChoice, TopLogprob, Usage,
};

/// The scripted engine.
#[derive(Debug, Clone)]
pub struct ScriptedEngine {
    model: String,
    delay: Duration,
    fail_with: Option<String>,
    stopped: Arc<AtomicU64>,
}

impl ScriptedEngine {
    /// Serves `model`, one token every `delay`.
    pub fn new(model: &str, delay: Duration) -> Self {
        Self {
            model: model.to_owned(),
            delay,
            fail_with: None,
            stopped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Every generation fails after its first token with `message`.
    pub fn failing(mut self, message: &str) -> Self {
        self.fail_with = Some(message.to_owned());
        self
    }

    /// How many generations stopped early because they were cancelled.
    pub fn cancelled_count(&self) -> u64 {
        self.stopped.load(Ordering::SeqCst)
    }
}

impl Engine for ScriptedEngine {
    fn models(&self) -> Vec<String> {
        vec![self.model.clone()]
    }

    fn generate(&self, req: GenerateRequest, buffer: usize) -> Result<Generation, EngineError> {
        let (tx, rx) = mpsc::channel(buffer);
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let (delay, fail, stopped) = (self.delay, self.fail_with.clone(), self.stopped.clone());
        let prompt_tokens = match (&req.messages, &req.prompt) {
            (Some(m), _) => m
                .iter()
                .map(|m| m.content.split_whitespace().count() as u64 + 1)
                .sum(),
            (None, Some(p)) => p.split_whitespace().count() as u64,
            (None, None) => 0,
        };
        let calls: Vec<String> = match &req.tool_choice {
            ToolChoice::Function(name) => vec![name.clone()],
            ToolChoice::Required if req.parallel_tool_calls => {
                req.tools.iter().map(|t| t.name.clone()).collect()
            }
            ToolChoice::Required => req.tools.iter().take(1).map(|t| t.name.clone()).collect(),
            ToolChoice::None | ToolChoice::Auto => Vec::new(),
        };
        if !calls.is_empty() {
            let id = req.request_id.clone();
            tokio::spawn(async move {
                let n = calls.len().min(req.max_tokens as usize);
                for (i, name) in calls.into_iter().take(n).enumerate() {
                    tokio::time::sleep(delay).await;
                    let call = ToolCall {
                        index: i as u32,
                        id: format!("call_{id}_{i}"),
                        name,
                        arguments: format!("{{\"n\": {i}}}"),
                    };
                    let logprobs = scripted_logprobs(req.logprobs, i as u64, &call.arguments);
                    let c = Chunk {
                        tool_calls: vec![call],
                        logprobs,
                        ..Chunk::default()
                    };
                    if tx.send(EngineEvent::Chunk(c)).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(EngineEvent::Chunk(Chunk {
                        finish_reason: Some("tool_calls".to_owned()),
                        usage: Some(Usage::new(prompt_tokens, n as u64)),
                        ..Chunk::default()
                    }))
                    .await;
            });
            return Ok(Generation::new(
                rx,
                Box::new(move || cancelled.store(true, Ordering::SeqCst)),
            ));
        }
        tokio::spawn(async move {
            let mut text = String::new();
            let mut n = 0u64;
            let mut finish = "length";
            while n < u64::from(req.max_tokens) {
                tokio::time::sleep(delay).await;
                if flag.load(Ordering::SeqCst) {
                    stopped.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let piece = if n == 0 {
                    format!("w{n}")
                } else {
                    format!(" w{n}")
                };
                let candidate = format!("{text}{piece}");
                if let Some(pos) = req
                    .stop
                    .iter()
                    .filter_map(|s| candidate.find(s.as_str()))
                    .min()
                {
                    let cut = candidate[text.len()..pos.max(text.len())].to_owned();
                    n += 1;
                    finish = "stop";
                    if !cut.is_empty()
                        && tx
                            .send(EngineEvent::Chunk(Chunk {
                                text: cut,
                                ..Chunk::default()
                            }))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    break;
                }
                text = candidate;
                let logprobs = scripted_logprobs(req.logprobs, n, &piece);
                n += 1;
                if tx
                    .send(EngineEvent::Chunk(Chunk {
                        text: piece,
                        logprobs,
                        ..Chunk::default()
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(msg) = &fail {
                    let _ = tx.send(EngineEvent::Error(msg.clone())).await;
                    return;
                }
            }
            let _ = tx
                .send(EngineEvent::Chunk(Chunk {
                    text: String::new(),
                    finish_reason: Some(finish.to_owned()),
                    usage: Some(Usage::new(prompt_tokens, n)),
                    ..Chunk::default()
                }))
                .await;
        });
        Ok(Generation::new(
            rx,
            Box::new(move || cancelled.store(true, Ordering::SeqCst)),
        ))
    }
}

/// The scripted log probabilities of token `i` (`text`), when `wanted` (with that many
/// alternatives).
fn scripted_logprobs(wanted: Option<u32>, i: u64, text: &str) -> Vec<TokenLogprob> {
    let Some(k) = wanted else {
        return Vec::new();
    };
    let top_logprobs = (0..k)
        .map(|j| {
            let token = format!("alt{j}");
            TopLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: -f64::from(j + 1),
            }
        })
        .collect();
    vec![TokenLogprob {
        token: text.to_owned(),
        logprob: -(i as f64) / 10.0,
        bytes: text.as_bytes().to_vec(),
        top_logprobs,
    }]
}
