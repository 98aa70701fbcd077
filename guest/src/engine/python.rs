//! The pyo3 bridge: a Python adapter (see guest/python/chrysalis_engines) embedded in this process.
//!
//! CPython runs an asyncio event loop on one dedicated thread. A request becomes a coroutine
//! (`chrysalis_engines._bridge.drive`) scheduled on that loop with `run_coroutine_threadsafe`;
//! it feeds chunks into a bounded Tokio channel through a [`Sink`] object implemented here.
//! When the channel is full the coroutine waits for room in a worker thread, so a slow client
//! never blocks the loop. The GIL is taken only for short synchronous calls and never across
//! an await. Every Python exception is caught in the coroutine and becomes an
//! [`EngineEvent::Error`] with its type and message; the server stays up.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use tokio::sync::mpsc;

use super::{
    Chunk, Engine, EngineError, EngineEvent, GenerateRequest, Generation, TokenLogprob, ToolCall,
    Usage,
};
use crate::config::EngineConfig;

/// Sink.send result: delivered.
const SENT: u8 = 0;
/// Sink.send result: the channel is full; call the blocking variant from a worker thread.
const FULL: u8 = 1;
/// Sink.send result: the consumer is gone; stop generating.
const CLOSED: u8 = 2;

/// Where a Python coroutine delivers one generation's events.
#[pyclass(module = "chrysalis_guest", frozen)]
struct Sink {
    tx: Mutex<Option<mpsc::Sender<EngineEvent>>>,
}

impl Sink {
    fn sender(&self) -> Option<mpsc::Sender<EngineEvent>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn try_deliver(&self, ev: EngineEvent) -> u8 {
        match self.sender() {
            None => CLOSED,
            Some(tx) => match tx.try_send(ev) {
                Ok(()) => SENT,
                Err(mpsc::error::TrySendError::Full(_)) => FULL,
                Err(mpsc::error::TrySendError::Closed(_)) => CLOSED,
            },
        }
    }

    fn deliver_blocking(&self, py: Python<'_>, ev: EngineEvent) -> u8 {
        match self.sender() {
            None => CLOSED,
            Some(tx) => py.detach(move || {
                if tx.blocking_send(ev).is_ok() {
                    SENT
                } else {
                    CLOSED
                }
            }),
        }
    }
}

/// What a chunk carries besides text, as the adapter sends it: one JSON object (see
/// `chrysalis_engines._bridge`).
#[derive(serde::Deserialize)]
struct Extra {
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    logprobs: Vec<TokenLogprob>,
}

fn chunk_event(
    text: String,
    finish_reason: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    extra: Option<String>,
) -> EngineEvent {
    let usage = match (prompt_tokens, completion_tokens) {
        (Some(p), Some(c)) => Some(Usage::new(p, c)),
        _ => None,
    };
    let extra = match extra.as_deref().map(serde_json::from_str::<Extra>) {
        None => Extra {
            tool_calls: Vec::new(),
            logprobs: Vec::new(),
        },
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            return EngineEvent::Error(format!("the adapter sent a malformed chunk: {e}"));
        }
    };
    EngineEvent::Chunk(Chunk {
        text,
        finish_reason,
        usage,
        tool_calls: extra.tool_calls,
        logprobs: extra.logprobs,
    })
}

#[pymethods]
impl Sink {
    /// Delivers a chunk without blocking: 0 sent, 1 full, 2 closed.
    /// `extra`: a JSON object with `tool_calls` and `logprobs`, or None.
    #[pyo3(signature = (text, finish_reason=None, prompt_tokens=None, completion_tokens=None, extra=None))]
    fn send(
        &self,
        text: String,
        finish_reason: Option<String>,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        extra: Option<String>,
    ) -> u8 {
        self.try_deliver(chunk_event(
            text,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            extra,
        ))
    }

    /// Delivers a chunk, waiting for room with the GIL released (call from a worker thread).
    #[pyo3(signature = (text, finish_reason=None, prompt_tokens=None, completion_tokens=None, extra=None))]
    fn send_blocking(
        &self,
        py: Python<'_>,
        text: String,
        finish_reason: Option<String>,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        extra: Option<String>,
    ) -> u8 {
        self.deliver_blocking(
            py,
            chunk_event(text, finish_reason, prompt_tokens, completion_tokens, extra),
        )
    }

    /// Reports a failure without blocking: 0 sent, 1 full, 2 closed.
    fn error(&self, message: String) -> u8 {
        self.try_deliver(EngineEvent::Error(message))
    }

    /// Reports a failure, waiting for room with the GIL released (call from a worker thread).
    fn error_blocking(&self, py: Python<'_>, message: String) -> u8 {
        self.deliver_blocking(py, EngineEvent::Error(message))
    }

    /// Ends the generation: the Rust side learns that the engine has stopped working on it.
    fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A Python adapter running on its own asyncio event loop thread.
pub struct PythonEngine {
    event_loop: Py<PyAny>,
    adapter: Py<PyAny>,
    drive: Py<PyAny>,
    run_threadsafe: Py<PyAny>,
    models: Vec<String>,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for PythonEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonEngine")
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

fn describe(py: Python<'_>, e: &PyErr) -> String {
    let tb = e
        .traceback(py)
        .and_then(|t| t.format().ok())
        .unwrap_or_default();
    if !tb.is_empty() {
        tracing::debug!(traceback = %tb, "python exception");
    }
    e.to_string()
}

impl PythonEngine {
    /// Imports the adapter module of `cfg`, starts its event loop thread, and creates the adapter
    /// (`create(options)` then `await adapter.start()`), waiting at most `start_timeout`.
    pub fn start(cfg: &EngineConfig, start_timeout: Duration) -> Result<Self, EngineError> {
        let options = serde_json::to_string(&cfg.options)
            .map_err(|e| EngineError::Start(format!("engine.options: {e}")))?;
        let module = cfg.module();
        let (event_loop, drive, run_threadsafe, bridge) = Python::attach(|py| -> PyResult<_> {
            let sys_path = py.import("sys")?.getattr("path")?;
            for p in cfg.python_path.iter().rev() {
                sys_path.call_method1("insert", (0, path_str(p)))?;
            }
            let bridge = py.import("chrysalis_engines._bridge")?;
            let asyncio = py.import("asyncio")?;
            let event_loop = asyncio.call_method0("new_event_loop")?;
            Ok((
                event_loop.unbind(),
                bridge.getattr("drive")?.unbind(),
                asyncio.getattr("run_coroutine_threadsafe")?.unbind(),
                bridge.unbind(),
            ))
        })
        .map_err(|e| EngineError::Start(Python::attach(|py| describe(py, &e))))?;

        let alive = Arc::new(AtomicBool::new(true));
        let thread_loop = Python::attach(|py| event_loop.clone_ref(py));
        let thread_alive = alive.clone();
        std::thread::Builder::new()
            .name("py-engine-loop".into())
            .spawn(move || {
                Python::attach(|py| {
                    let lp = thread_loop.bind(py);
                    let _ = py
                        .import("asyncio")
                        .and_then(|a| a.call_method1("set_event_loop", (lp,)));
                    if let Err(e) = lp.call_method0("run_forever") {
                        tracing::error!(error = %describe(py, &e), "the engine event loop stopped");
                    }
                });
                thread_alive.store(false, Ordering::SeqCst);
                tracing::error!("the engine event loop thread exited");
            })
            .map_err(|e| EngineError::Start(format!("spawning the engine thread: {e}")))?;

        let run = |name: &str, args: Vec<Py<PyAny>>| -> Result<Py<PyAny>, EngineError> {
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                let f = bridge.bind(py).getattr(name)?;
                let args = pyo3::types::PyTuple::new(py, args.iter().map(|a| a.bind(py)))?;
                let coro = f.call1(args)?;
                let fut = run_threadsafe.bind(py).call1((coro, event_loop.bind(py)))?;
                // concurrent.futures.Future.result waits with the GIL released.
                Ok(fut
                    .call_method1("result", (start_timeout.as_secs_f64(),))?
                    .unbind())
            })
            .map_err(|e| {
                Python::attach(|py| EngineError::Start(format!("{module}: {}", describe(py, &e))))
            })
        };
        let (m, o) = Python::attach(|py| -> PyResult<_> {
            Ok((
                module.clone().into_pyobject(py)?.into_any().unbind(),
                options.into_pyobject(py)?.into_any().unbind(),
            ))
        })
        .map_err(|e| EngineError::Start(e.to_string()))?;
        let adapter = run("create", vec![m, o])?;
        let models_obj = run("models", vec![Python::attach(|py| adapter.clone_ref(py))])?;
        let models: Vec<String> =
            Python::attach(|py| models_obj.bind(py).extract()).map_err(|e| {
                EngineError::Start(format!("{module}: models() must return a list of str: {e}"))
            })?;
        Ok(Self {
            event_loop,
            adapter,
            drive,
            run_threadsafe,
            models,
            alive,
        })
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Engine for PythonEngine {
    fn models(&self) -> Vec<String> {
        self.models.clone()
    }

    fn generate(&self, req: GenerateRequest, buffer: usize) -> Result<Generation, EngineError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable(
                "the engine event loop has stopped".into(),
            ));
        }
        let req_json =
            serde_json::to_string(&req).map_err(|e| EngineError::Generation(e.to_string()))?;
        let (tx, rx) = mpsc::channel(buffer);
        let sink = Sink {
            tx: Mutex::new(Some(tx)),
        };
        let fut = Python::attach(|py| -> PyResult<Py<PyAny>> {
            let sink = Py::new(py, sink)?;
            let coro = self
                .drive
                .bind(py)
                .call1((self.adapter.bind(py), req_json, sink))?;
            Ok(self
                .run_threadsafe
                .bind(py)
                .call1((coro, self.event_loop.bind(py)))?
                .unbind())
        })
        .map_err(|e| EngineError::Generation(Python::attach(|py| describe(py, &e))))?;
        Ok(Generation::new(
            rx,
            Box::new(move || {
                // Cancels the asyncio task; the adapter stops and the coroutine closes the sink.
                Python::attach(|py| {
                    if let Err(e) = fut.bind(py).call_method0("cancel") {
                        tracing::warn!(error = %e, "cancelling a generation failed");
                    }
                });
            }),
        ))
    }

    fn unavailable(&self) -> Option<String> {
        (!self.alive.load(Ordering::SeqCst)).then(|| "the engine event loop has stopped".to_owned())
    }
}
