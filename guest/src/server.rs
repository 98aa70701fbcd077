//! The HTTPS server: listeners (vsock, TCP), TLS, routing, limits, generation lifecycle, metrics.
//!
//! Every generation holds one of `max_concurrency` slots from admission until the engine has
//! finished it or really stopped working on it, not merely until the response ends: a client
//! that disconnects cancels its generation, and the slot returns once the engine confirms (or
//! after `cancel_grace_secs`). Over capacity a request is refused at once with 429 and Retry-After;
//! nothing queues.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrysalis_attestation::{Evidence, Sha256};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::api::{self, ApiError, Endpoint, Limits, Responder};
use crate::config::{ModelConfig, ServerConfig};
use crate::engine::{Chunk, Engine, EngineError, EngineEvent, Generation, Usage};
use crate::receipt::{self, Exchange, RECEIPT_HEADER, StreamHasher};
use crate::tls::CertStore;

/// The response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// Counters, visible at `/healthz` (JSON) and `/metrics` (Prometheus text).
///
/// Both endpoints answer anyone who reaches the port, the host included, so they carry only
/// request counts and outcomes the host already sees on the wire (a connection per request, when
/// it ends). Nothing derived from content is counted: a token counter read before and after one
/// connection would give that request's exact prompt and completion sizes. The client that made a
/// request sees its own usage in the response and the receipt.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Generations completed and answered.
    pub served: AtomicU64,
    /// Requests refused with 429.
    pub rejected_busy: AtomicU64,
    /// Generations cancelled because the client went away.
    pub cancelled: AtomicU64,
    /// Generations stopped at the request deadline.
    pub timeouts: AtomicU64,
    /// Generations that failed in the engine.
    pub engine_errors: AtomicU64,
    /// Cancelled generations whose engine did not stop within the grace period.
    pub stuck: AtomicU64,
}

/// Everything a request handler needs.
pub struct AppState {
    server: ServerConfig,
    model: ModelConfig,
    engine: Arc<dyn Engine>,
    certs: Arc<CertStore>,
    evidence_provider: &'static str,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    next_id: AtomicU64,
    id_nonce: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.model.id)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Wires the server together.
    pub fn new(
        server: ServerConfig,
        model: ModelConfig,
        engine: Arc<dyn Engine>,
        certs: Arc<CertStore>,
        evidence_provider: &'static str,
    ) -> Arc<Self> {
        let nonce = Sha256::digest(
            &[
                certs.key().spki_der(),
                &SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
                    .to_le_bytes(),
            ]
            .concat(),
        );
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(server.max_concurrency)),
            server,
            model,
            engine,
            certs,
            evidence_provider,
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
            id_nonce: nonce.to_hex()[..12].to_owned(),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Generations holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.server.max_concurrency - self.slots.available_permits()
    }

    fn limits(&self) -> Limits {
        Limits {
            model_id: self.model.id.clone(),
            max_tokens_cap: self.server.max_tokens_cap,
            default_max_tokens: self.server.default_max_tokens,
        }
    }

    fn health(&self) -> Value {
        let m = &self.metrics;
        let unavailable = self.engine.unavailable();
        json!({
            "status": if unavailable.is_some() { "degraded" } else { "ok" },
            "engine_error": unavailable,
            "model": self.model.id,
            "capacity": self.server.max_concurrency,
            "in_flight": self.in_flight(),
            "served": m.served.load(Ordering::Relaxed),
            "rejected_busy": m.rejected_busy.load(Ordering::Relaxed),
            "cancelled": m.cancelled.load(Ordering::Relaxed),
            "timeouts": m.timeouts.load(Ordering::Relaxed),
            "engine_errors": m.engine_errors.load(Ordering::Relaxed),
            "stuck": m.stuck.load(Ordering::Relaxed),
        })
    }

    fn prometheus(&self) -> String {
        let h = self.health();
        let mut out = String::new();
        for k in [
            "capacity",
            "in_flight",
            "served",
            "rejected_busy",
            "cancelled",
            "timeouts",
            "engine_errors",
            "stuck",
        ] {
            out.push_str(&format!("chrysalis_guest_{k} {}\n", h[k]));
        }
        out
    }

    fn attestation(&self) -> Value {
        let Some(info) = self.certs.info() else {
            return json!({"error": "no certificate yet"});
        };
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let b = &info.bundle;
        let (vcek, chain) = match b {
            Evidence::Tdx { .. } => (None, None),
            Evidence::Snp { vcek, chain, .. } => (vcek.as_deref(), chain.as_deref()),
        };
        json!({
            "evidence_provider": self.evidence_provider,
            "bundle": {
                "platform": b.platform(),
                "evidence": hex::encode(b.raw()),
                "tdx_collateral": b.tdx_collateral(),
                "snp_vcek": vcek.map(hex::encode),
                "snp_chain": chain.map(hex::encode),
                "der_base64": b.to_der().ok().map(|d| b64(&d)),
            },
            "report_data": info.report_data,
            "measurements": b.measurements(),
            "certificate": {
                "der_base64": b64(&info.cert_der),
                "sha256": info.cert_sha256,
                "spki_sha256": info.spki_sha256,
                "not_before": unix(info.not_before),
                "not_after": unix(info.not_after),
            },
            "model": {"id": self.model.id, "root_hash": self.model.root_hash},
        })
    }

    fn new_id(&self, endpoint: Endpoint) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        format!("{prefix}-{}{n:08x}", self.id_nonce)
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status, &e.body())
}

/// Routes one request. Never fails: every problem becomes an OpenAI-style error response.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, &state.health()),
        (Method::GET, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.prometheus(),
        ),
        (Method::GET, "/v1/models") => {
            let data: Vec<Value> = std::iter::once(state.model.id.clone())
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "chrysalis"}))
                .collect();
            json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        (Method::GET, "/v1/attestation") => json_response(StatusCode::OK, &state.attestation()),
        (Method::POST, "/v1/chat/completions") => completion(state, req, Endpoint::Chat).await,
        (Method::POST, "/v1/completions") => completion(state, req, Endpoint::Completion).await,
        (
            _,
            "/healthz"
            | "/metrics"
            | "/v1/models"
            | "/v1/attestation"
            | "/v1/chat/completions"
            | "/v1/completions",
        ) => error_response(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no such endpoint: {path}"),
        )),
    };
    Ok(resp)
}

/// How much of an oversized body is read (and dropped) before answering 413, so that a client
/// that is still sending sees the answer rather than a reset.
const DRAIN_LIMIT: usize = 64 << 20;

async fn read_body(
    state: &AppState,
    body: Incoming,
    content_length: Option<u64>,
) -> Result<Bytes, ApiError> {
    let max = state.server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the {max}-byte limit"),
        )
    };
    if content_length.is_some_and(|n| n > max as u64) {
        drain(body).await;
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "bad_body",
            format!("reading the request body: {e}"),
        )),
    }
}

async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        Limited::new(body, DRAIN_LIMIT).collect(),
    )
    .await;
}

/// A generation and its slot. Dropped without [`Active::completed`], it counts as a client
/// cancellation and releases the slot only once the engine has stopped.
struct Active {
    state: Arc<AppState>,
    generation: Option<Generation>,
    permit: Option<OwnedSemaphorePermit>,
    /// Set when the end is not a client cancellation (deadline, engine error).
    aborted: bool,
}

impl Active {
    /// The generation ended normally: the engine reported its finish, so the slot is free at
    /// once (a client sending its next request right after `[DONE]` must not see 429); the
    /// engine's last bookkeeping is drained in the background.
    fn completed(mut self) {
        if let Some(mut g) = self.generation.take() {
            g.disarm();
            drop(self.permit.take());
            let grace = Duration::from_secs(self.state.server.cancel_grace_secs);
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(grace, async { while g.next().await.is_some() {} }).await;
            });
        }
    }

    fn next_deadline_error(&mut self) {
        self.aborted = true;
        self.state.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let Some(g) = self.generation.take() else {
            return;
        };
        if !self.aborted {
            self.state.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let permit = self.permit.take();
        let state = self.state.clone();
        let grace = Duration::from_secs(state.server.cancel_grace_secs);
        let fut = async move {
            if !g.finish(grace).await {
                state.metrics.stuck.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "engine did not stop a cancelled generation within {grace:?}; releasing its slot"
                );
            }
            drop(permit);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(fut);
            }
            Err(_) => {
                tracing::error!("generation dropped outside the runtime; slot released at once")
            }
        }
    }
}

enum Next {
    Event(EngineEvent),
    EngineDone,
    Deadline,
}

async fn next_event(active: &mut Active, deadline: Instant) -> Next {
    let g = active.generation.as_mut().expect("live generation");
    match tokio::time::timeout_at(deadline, g.next()).await {
        Ok(Some(e)) => Next::Event(e),
        Ok(None) => Next::EngineDone,
        Err(_) => Next::Deadline,
    }
}

fn engine_failure(state: &AppState, message: String) -> ApiError {
    state.metrics.engine_errors.fetch_add(1, Ordering::Relaxed);
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "engine_error",
        message,
    )
}

fn deadline_error(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "server_error",
        "deadline_exceeded",
        format!(
            "the request exceeded its {}-second deadline",
            state.server.request_timeout_secs
        ),
    )
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn completion(
    state: Arc<AppState>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<Body> {
    let deadline = Instant::now() + state.server.request_timeout();
    let te_trailers = req.headers().get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok());
    let body = match read_body(&state, req.into_body(), content_length).await {
        Ok(b) => b,
        Err(e) => {
            let mut r = error_response(&e);
            if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return r;
        }
    };
    let mut parsed = match api::parse(endpoint, &body, &state.limits()) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let Ok(permit) = state.slots.clone().try_acquire_owned() else {
        state.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
        let mut r = error_response(&ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "server_busy",
            format!(
                "all {} generation slots are busy; retry later",
                state.server.max_concurrency
            ),
        ));
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.server.retry_after_secs),
        );
        return r;
    };
    let id = state.new_id(endpoint);
    parsed.generate.request_id = id.clone();
    let generation = match state
        .engine
        .generate(parsed.generate, state.server.stream_buffer)
    {
        Ok(g) => g,
        Err(EngineError::Unavailable(m)) | Err(EngineError::Start(m)) => {
            return error_response(&ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "engine_unavailable",
                format!("engine unavailable: {m}"),
            ));
        }
        Err(EngineError::Generation(m)) => return error_response(&engine_failure(&state, m)),
    };
    let mut active = Active {
        state: state.clone(),
        generation: Some(generation),
        permit: Some(permit),
        aborted: false,
    };
    let responder = Responder {
        endpoint,
        id,
        created: now_unix(),
        model: state.model.id.clone(),
    };
    let request_sha256 = Sha256::digest(&body);
    if parsed.stream {
        stream_response(
            active,
            responder,
            request_sha256,
            parsed.include_usage,
            te_trailers,
            deadline,
        )
        .await
    } else {
        let mut text = String::new();
        loop {
            match next_event(&mut active, deadline).await {
                Next::Event(EngineEvent::Chunk(c)) => {
                    text.push_str(&c.text);
                    if let Some(reason) = c.finish_reason {
                        let usage = c.usage.unwrap_or_default();
                        let v = responder.complete(&text, &reason, &usage);
                        let bytes = serde_json::to_vec(&v).unwrap_or_default();
                        active.completed();
                        let receipt = make_receipt(
                            &state,
                            request_sha256,
                            Sha256::digest(&bytes),
                            false,
                            usage,
                        );
                        let mut r = full(StatusCode::OK, "application/json", bytes);
                        match receipt.and_then(|s| HeaderValue::from_str(&s).ok()) {
                            Some(h) => {
                                r.headers_mut().insert(RECEIPT_HEADER, h);
                            }
                            None => {
                                return error_response(&ApiError::new(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "server_error",
                                    "receipt_error",
                                    "could not sign the receipt",
                                ));
                            }
                        }
                        return r;
                    }
                }
                Next::Event(EngineEvent::Error(m)) => {
                    active.aborted = true;
                    return error_response(&engine_failure(&state, m));
                }
                Next::EngineDone => {
                    active.aborted = true;
                    return error_response(&engine_failure(
                        &state,
                        "the engine ended the generation without a finish reason".into(),
                    ));
                }
                Next::Deadline => {
                    active.next_deadline_error();
                    return error_response(&deadline_error(&state));
                }
            }
        }
    }
}

fn make_receipt(
    state: &AppState,
    request_sha256: Sha256,
    response_sha256: Sha256,
    stream: bool,
    usage: Usage,
) -> Option<String> {
    state.metrics.served.fetch_add(1, Ordering::Relaxed);
    let ex = Exchange {
        request_sha256,
        response_sha256,
        stream,
        model_id: &state.model.id,
        model_root_hash: state.model.root_hash,
        usage,
        created: now_unix(),
    };
    match receipt::issue(&state.certs, &ex) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "receipt signing failed");
            None
        }
    }
}

/// A response body fed by a channel: dropping it (the client went away) closes the channel.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn sse(payload: &[u8]) -> Frame<Bytes> {
    let mut b = Vec::with_capacity(payload.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(payload);
    b.extend_from_slice(b"\n\n");
    Frame::data(Bytes::from(b))
}

async fn stream_response(
    mut active: Active,
    responder: Responder,
    request_sha256: Sha256,
    include_usage: bool,
    te_trailers: bool,
    deadline: Instant,
) -> Response<Body> {
    let state = active.state.clone();
    // Wait for the first event before committing to 200, so that an engine failing at once is a 500.
    let first = match next_event(&mut active, deadline).await {
        Next::Event(EngineEvent::Chunk(c)) => c,
        Next::Event(EngineEvent::Error(m)) => {
            active.aborted = true;
            return error_response(&engine_failure(&state, m));
        }
        Next::EngineDone => {
            active.aborted = true;
            return error_response(&engine_failure(
                &state,
                "the engine ended the generation without output".into(),
            ));
        }
        Next::Deadline => {
            active.next_deadline_error();
            return error_response(&deadline_error(&state));
        }
    };
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(state.server.stream_buffer);
    tokio::spawn(pump(
        active,
        responder.clone(),
        first,
        tx,
        request_sha256,
        include_usage,
        te_trailers,
        deadline,
    ));
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&responder.id) {
        h.insert("x-request-id", v);
    }
    if te_trailers {
        h.insert(header::TRAILER, HeaderValue::from_static(RECEIPT_HEADER));
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    mut active: Active,
    responder: Responder,
    first: Chunk,
    tx: mpsc::Sender<Frame<Bytes>>,
    request_sha256: Sha256,
    include_usage: bool,
    te_trailers: bool,
    deadline: Instant,
) {
    let state = active.state.clone();
    let mut hasher = StreamHasher::default();
    let mut is_first = true;
    let mut chunk = Some(first);
    loop {
        let c = match chunk.take() {
            Some(c) => c,
            None => {
                let ev = tokio::select! {
                    biased;
                    _ = tx.closed() => return, // client gone: `active` drops → cancelled
                    ev = next_event(&mut active, deadline) => ev,
                };
                match ev {
                    Next::Event(EngineEvent::Chunk(c)) => c,
                    Next::Event(EngineEvent::Error(m)) => {
                        active.aborted = true;
                        let e = engine_failure(&state, m);
                        let _ = tx
                            .send(sse(&serde_json::to_vec(&e.body()).unwrap_or_default()))
                            .await;
                        return;
                    }
                    Next::EngineDone => {
                        active.aborted = true;
                        let e = engine_failure(
                            &state,
                            "the engine ended the generation without a finish reason".into(),
                        );
                        let _ = tx
                            .send(sse(&serde_json::to_vec(&e.body()).unwrap_or_default()))
                            .await;
                        return;
                    }
                    Next::Deadline => {
                        active.next_deadline_error();
                        let e = deadline_error(&state);
                        let _ = tx
                            .send(sse(&serde_json::to_vec(&e.body()).unwrap_or_default()))
                            .await;
                        return;
                    }
                }
            }
        };
        let mut payloads = Vec::with_capacity(3);
        if !c.text.is_empty() || is_first || c.finish_reason.is_none() {
            let v = responder.chunk(&c.text, None, is_first, include_usage);
            payloads.push(serde_json::to_vec(&v).unwrap_or_default());
            is_first = false;
        }
        let finished = c.finish_reason.clone();
        if let Some(reason) = &finished {
            payloads.push(
                serde_json::to_vec(&responder.chunk("", Some(reason), false, include_usage))
                    .unwrap_or_default(),
            );
            let usage = c.usage.unwrap_or_default();
            if include_usage {
                payloads
                    .push(serde_json::to_vec(&responder.usage_chunk(&usage)).unwrap_or_default());
            }
            payloads.push(b"[DONE]".to_vec());
            for p in &payloads {
                hasher.data(p);
                if tx.send(sse(p)).await.is_err() {
                    return;
                }
            }
            active.completed();
            let receipt = make_receipt(&state, request_sha256, hasher.finish(), true, usage);
            if te_trailers && let Some(h) = receipt.and_then(|s| HeaderValue::from_str(&s).ok()) {
                let mut trailers = http::HeaderMap::new();
                trailers.insert(RECEIPT_HEADER, h);
                let _ = tx.send(Frame::trailers(trailers)).await;
            }
            return;
        }
        for p in &payloads {
            hasher.data(p);
            if tx.send(sse(p)).await.is_err() {
                return;
            }
        }
    }
}

/// Serves HTTPS on connections from `accept` until it fails.
pub async fn serve<S, F, Fut>(
    state: Arc<AppState>,
    tls: tokio_rustls::TlsAcceptor,
    mut accept: F,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let connections = Arc::new(Semaphore::new(4096));
    loop {
        let stream = match accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(conn_permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!("connection limit reached; dropping a connection");
            continue;
        };
        let (state, tls) = (state.clone(), tls.clone());
        tokio::spawn(async move {
            let _conn_permit = conn_permit;
            let tls_stream =
                match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tls_stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    //! The server over real TLS with the in-memory scripted engine (no Python).
    use super::*;
    use crate::engine::scripted::ScriptedEngine;
    use crate::evidence::LocalSim;
    use chrysalis_attestation::Measurement;
    use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, td_measurements};
    use http_body_util::BodyExt;

    struct AnyCert;
    impl std::fmt::Debug for AnyCert {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("AnyCert")
        }
    }
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2".into()))
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &rustls::crypto::ring::default_provider().signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    async fn start(engine: ScriptedEngine, server: ServerConfig) -> (String, Arc<AppState>) {
        let certs = Arc::new(CertStore::generate().unwrap());
        let now = SystemTime::now();
        let sim = LocalSim::new(
            SimPki::from_seed(DEFAULT_SEED),
            td_measurements(Measurement([7; 48]), [Measurement::ZERO; 4]),
            now.duration_since(UNIX_EPOCH).unwrap().as_secs() - 3600,
        );
        certs
            .renew(&sim, now, Duration::from_secs(3600))
            .await
            .unwrap();
        let model: ModelConfig = toml::from_str("id = \"m\"\nroot_hash = \"0000000000000000000000000000000000000000000000000000000000000000\"").unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
        let state = AppState::new(server, model, Arc::new(engine), certs, "local-sim");
        let l = Arc::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(serve(state.clone(), tls, move || {
            let l = l.clone();
            async move { l.accept().await.map(|(s, _)| s) }
        }));
        (addr, state)
    }

    async fn send(
        addr: &str,
        body: &str,
    ) -> (hyper::Response<Incoming>, tokio::task::JoinHandle<()>) {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post("/v1/chat/completions")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        (tx.send_request(req).await.unwrap(), conn)
    }

    fn chat(max_tokens: u32, stream: bool) -> String {
        format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"a b c"}}],"max_tokens":{max_tokens},"stream":{stream}}}"#
        )
    }

    async fn until(state: &AppState, what: impl Fn(&AppState) -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !what(state) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("state never reached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_held_until_the_engine_stops_and_over_capacity_is_429() {
        let engine = ScriptedEngine::new("m", Duration::from_millis(5));
        let (addr, state) = start(
            engine.clone(),
            ServerConfig {
                max_concurrency: 1,
                ..ServerConfig::default()
            },
        )
        .await;

        let (r, _c) = send(&addr, &chat(3, false)).await;
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "w0 w1 w2");
        assert_eq!(v["usage"]["completion_tokens"], 3);

        let (long, conn) = send(&addr, &chat(4000, true)).await;
        assert_eq!(long.status(), 200);
        let (busy, _c) = send(&addr, &chat(3, false)).await;
        assert_eq!(busy.status(), 429);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        // The client goes away mid-stream: cancelled, and the slot returns once the engine stopped.
        conn.abort();
        drop(long);
        until(&state, |s| {
            s.metrics().cancelled.load(Ordering::SeqCst) == 1 && s.in_flight() == 0
        })
        .await;
        until(&state, |_| engine.cancelled_count() == 1).await;
        let (r, _c) = send(&addr, &chat(2, true)).await;
        assert_eq!(r.status(), 200);
        let text =
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(state.metrics().served.load(Ordering::SeqCst), 2);
    }

    /// The public port serves no figure derived from content: a host polling `/healthz` or
    /// `/metrics` around one connection must not learn that request's token counts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_and_metrics_carry_no_per_request_sizes() {
        let engine = ScriptedEngine::new("m", Duration::from_millis(1));
        let (addr, state) = start(engine, ServerConfig::default()).await;
        let before = (state.health(), state.prometheus());
        let (r, _c) = send(&addr, &chat(7, false)).await;
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        // The client that asked sees its own usage.
        assert_eq!(v["usage"]["completion_tokens"], 7);
        until(&state, |s| s.in_flight() == 0).await;

        let health = state.health();
        let mut keys: Vec<&str> = health
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cancelled",
                "capacity",
                "engine_error",
                "engine_errors",
                "in_flight",
                "model",
                "rejected_busy",
                "served",
                "status",
                "stuck",
                "timeouts"
            ]
        );
        assert_eq!(health["served"], 1);
        let metrics = state.prometheus();
        assert!(!metrics.contains("token"), "{metrics}");
        // Apart from the request count, nothing moved with the request.
        let strip = |mut h: Value| {
            h["served"] = Value::Null;
            h
        };
        assert_eq!(strip(before.0), strip(health));
        let changed: Vec<_> = before
            .1
            .lines()
            .zip(metrics.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [("chrysalis_guest_served 0", "chrysalis_guest_served 1")]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deadline_stops_a_generation_with_504() {
        let engine = ScriptedEngine::new("m", Duration::from_millis(200));
        let (addr, state) = start(
            engine,
            ServerConfig {
                request_timeout_secs: 1,
                ..ServerConfig::default()
            },
        )
        .await;
        let (r, _c) = send(&addr, &chat(1000, false)).await;
        assert_eq!(r.status(), 504);
        until(&state, |s| {
            s.metrics().timeouts.load(Ordering::SeqCst) == 1 && s.in_flight() == 0
        })
        .await;
        assert_eq!(state.metrics().cancelled.load(Ordering::SeqCst), 0);
    }
}
