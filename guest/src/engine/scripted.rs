//! An in-memory engine with scripted output, for tests of everything around the engine seam.
//!
//! It emits the words `w0 w1 w2 …` (one token each, `delay` apart) up to max_tokens, honours stop
//! sequences, counts prompt tokens as whitespace-separated words, and can be told to fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Chunk, Engine, EngineError, EngineEvent, GenerateRequest, Generation, Usage};

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
                n += 1;
                if tx
                    .send(EngineEvent::Chunk(Chunk {
                        text: piece,
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
                }))
                .await;
        });
        Ok(Generation::new(
            rx,
            Box::new(move || cancelled.store(true, Ordering::SeqCst)),
        ))
    }
}
