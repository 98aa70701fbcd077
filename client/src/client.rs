//! The Rust SDK: a [`Client`] for one or more attested upstreams. Every connection is an
//! RA-TLS connection that a [`Policy`] accepted before a request byte was written; connections
//! are pooled; load is spread by fewest requests in flight; connection failures and 429/503
//! answers move a request to another upstream; every chat or text completion's receipt is
//! verified as its body passes.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrysalis_attestation::ratls::RaTlsServerVerifier;
use chrysalis_attestation::{Policy, Rejection, VerifiedPeer};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

use crate::collateral::CollateralSource;
use crate::connect::{AttestedConnector, ConnectError};
use crate::ledger::{Ledger, LedgerError};
use crate::metered::{Exchange, InFlight, MeteredBody, ReceiptSlot, VerifiedReceipt};
use crate::openai::{ChatChunk, ChatCompletion, ChatRequest, ModelList, StreamOptions};
use crate::sse::{LineSplitter, data_payload};

/// The pooled hyper client under a [`Client`]: requests to `https://HOST:PORT/...` go over
/// attested connections only, and each response carries its [`VerifiedPeer`] in its extensions.
pub type HyperClient = hyper_util::client::legacy::Client<AttestedConnector, Full<Bytes>>;

/// Default limit on request bodies: they are buffered so a request can move to another upstream.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;

/// Request paths whose successful responses carry a receipt (docs/receipts.md).
pub const RECEIPT_PATHS: &[&str] = &["/v1/chat/completions", "/v1/completions"];

/// A pooled connection is not reused once its certificate or collateral is this close to
/// expiry, so the next request makes a new connection and its certificate is verified again.
const REVERIFY_MARGIN_SECS: u64 = 60;

/// Response extension: the upstream (`host:port`) that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedBy(pub String);

/// Why a request could not be sent, or a typed call could not complete.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The builder was given no policy, no upstream, or a malformed upstream address.
    #[error("client configuration: {0}")]
    Config(String),
    /// The receipts ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The request body is over the limit.
    #[error("request body is {size} bytes; the limit is {limit}")]
    RequestTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Every upstream tried failed, and at least one because the policy rejected its evidence.
    /// Nothing of the request was sent to a rejected upstream.
    #[error("no upstream passed attestation: {}", list(attempts))]
    Rejected {
        /// What happened at each upstream, in the order tried.
        attempts: Vec<UpstreamFailure>,
    },
    /// No upstream could be reached (or each broke the connection before answering).
    #[error("no upstream available: {}", list(attempts))]
    Unavailable {
        /// What happened at each upstream, in the order tried.
        attempts: Vec<UpstreamFailure>,
    },
    /// A typed call got an error answer (an OpenAI-style error body when the server sent one).
    #[error("{upstream} answered {status}: {message}")]
    Api {
        /// The upstream.
        upstream: String,
        /// The HTTP status.
        status: u16,
        /// The error's `type`.
        kind: String,
        /// The error's `code`.
        code: String,
        /// The error's `message` (or the body).
        message: String,
    },
    /// A typed call's response arrived but its receipt is missing or did not verify. The
    /// completion is kept for a caller that wants it anyway.
    #[error("receipt from {upstream} did not verify: {reason}")]
    Receipt {
        /// The upstream.
        upstream: String,
        /// Why.
        reason: String,
        /// The completion, for non-stream calls.
        completion: Option<Box<ChatCompletion>>,
    },
    /// A typed call's response could not be read or decoded.
    #[error("response from {upstream}: {message}")]
    Response {
        /// The upstream.
        upstream: String,
        /// What went wrong.
        message: String,
    },
}

impl ClientError {
    /// The policy rejections among the attempts, as (upstream, rejection).
    pub fn rejections(&self) -> Vec<(&str, &Rejection)> {
        match self {
            ClientError::Rejected { attempts } => attempts
                .iter()
                .filter_map(|a| match &a.kind {
                    FailureKind::Rejected(r) => Some((a.upstream.as_str(), r)),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        }
    }
}

fn list(attempts: &[UpstreamFailure]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What went wrong at one upstream.
#[derive(Clone, Debug)]
pub struct UpstreamFailure {
    /// The upstream (`host:port`).
    pub upstream: String,
    /// What.
    pub kind: FailureKind,
}

/// The kinds of upstream failure.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FailureKind {
    /// Its evidence was rejected by the policy during the handshake.
    Rejected(Rejection),
    /// TCP connect or the TLS handshake failed.
    Unreachable(String),
    /// The connection broke after the request was sent, before a response arrived.
    Broken(String),
    /// It answered 429 or 503 and another upstream was tried.
    Busy(u16),
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Rejected(r) => write!(f, "{} {r}", self.upstream),
            FailureKind::Unreachable(m) => write!(f, "{} unreachable: {m}", self.upstream),
            FailureKind::Broken(m) => write!(f, "{} failed: {m}", self.upstream),
            FailureKind::Busy(s) => write!(f, "{} answered {s}", self.upstream),
        }
    }
}

struct Upstream {
    addr: String,
    authority: Authority,
    in_flight: Arc<AtomicUsize>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

impl Upstream {
    fn succeeded(&self) {
        *self.health.lock().expect("health poisoned") = Health::default();
    }

    /// Backs off exponentially from 250 ms to 30 s; a down upstream is tried only after the
    /// others, never skipped outright.
    fn failed(&self) {
        let mut h = self.health.lock().expect("health poisoned");
        h.failures = h.failures.saturating_add(1);
        let backoff = Duration::from_millis(250) * 2u32.saturating_pow(h.failures.min(7) - 1);
        h.down_until = Some(Instant::now() + backoff.min(Duration::from_secs(30)));
    }

    fn is_down(&self, now: Instant) -> bool {
        self.health
            .lock()
            .expect("health poisoned")
            .down_until
            .is_some_and(|t| t > now)
    }
}

struct Inner {
    http: HyperClient,
    connector: AttestedConnector,
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    ledger: Option<Ledger>,
    max_body: usize,
}

/// A client of attested upstreams. Cheap to clone (clones share pool, verdict cache, ledger).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field(
                "upstreams",
                &self
                    .inner
                    .upstreams
                    .iter()
                    .map(|u| &u.addr)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`]; a policy and at least one upstream are required.
#[derive(Debug)]
pub struct ClientBuilder {
    policy: Option<Policy>,
    verifier: Option<Arc<RaTlsServerVerifier>>,
    upstreams: Vec<String>,
    ledger: Option<PathBuf>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pooling: bool,
    max_body: usize,
    collateral: CollateralSource,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            policy: None,
            verifier: None,
            upstreams: vec![],
            ledger: None,
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pooling: true,
            max_body: DEFAULT_MAX_REQUEST_BODY,
            collateral: CollateralSource::default(),
        }
    }
}

impl ClientBuilder {
    /// The policy every upstream's evidence must satisfy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Uses an existing verifier (its policy and verdict cache) instead of [`Self::policy`].
    pub fn verifier(mut self, verifier: Arc<RaTlsServerVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Adds an upstream, `HOST:PORT` (an `https://` prefix is accepted).
    pub fn upstream(mut self, addr: impl Into<String>) -> Self {
        self.upstreams.push(addr.into());
        self
    }

    /// Adds several upstreams.
    pub fn upstreams<I: IntoIterator<Item = S>, S: Into<String>>(mut self, addrs: I) -> Self {
        self.upstreams.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Fetches TDX collateral from this PCCS or Intel PCS base URL for nodes that carry none
    /// (overrides the policy's `[collateral] pccs_url`). Applies with [`Self::policy`], not
    /// with a caller-built [`Self::verifier`].
    pub fn pccs_url(mut self, url: impl Into<String>) -> Self {
        self.collateral.pccs_url = Some(url.into());
        self
    }

    /// PEM bundle of the CAs that may sign the PCCS's TLS certificate (default: the system
    /// bundle).
    pub fn pccs_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.collateral.pccs_ca_file = Some(path.into());
        self
    }

    /// Sets the whole collateral source at once (see [`Self::pccs_url`]).
    pub fn collateral_source(mut self, source: CollateralSource) -> Self {
        self.collateral = source;
        self
    }

    /// Keeps fetched collateral in this directory too, until its `nextUpdate`.
    pub fn collateral_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.collateral.cache_dir = Some(dir.into());
        self
    }

    /// Appends every receipt outcome to this JSONL ledger (see [`crate::ledger`]).
    pub fn receipts_ledger(mut self, path: impl Into<PathBuf>) -> Self {
        self.ledger = Some(path.into());
        self
    }

    /// TCP connect timeout per attempt (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long an idle pooled connection is kept (default 90 s).
    pub fn pool_idle_timeout(mut self, t: Duration) -> Self {
        self.pool_idle_timeout = t;
        self
    }

    /// Keep connections for reuse (default). `false` makes a new verified connection for every
    /// request, which is slower: for comparison only.
    pub fn pooling(mut self, on: bool) -> Self {
        self.pooling = on;
        self
    }

    /// Largest request body accepted (default [`DEFAULT_MAX_REQUEST_BODY`]).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The client. Fails on a missing policy or upstream, a malformed address, an invalid
    /// policy, or a ledger that cannot be opened.
    pub fn build(self) -> Result<Client, ClientError> {
        let mut fetcher = None;
        let verifier = match (self.verifier, self.policy) {
            (Some(v), _) => v,
            (None, Some(p)) => {
                p.validate()
                    .map_err(|e| ClientError::Config(format!("policy: {e}")))?;
                let (v, f) = self
                    .collateral
                    .verifier(p)
                    .map_err(|e| ClientError::Config(chain(&e)))?;
                fetcher = f;
                Arc::new(v)
            }
            (None, None) => return Err(ClientError::Config("no policy given".into())),
        };
        if self.upstreams.is_empty() {
            return Err(ClientError::Config("no upstream given".into()));
        }
        let upstreams = self
            .upstreams
            .iter()
            .map(|a| parse_upstream(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector =
            AttestedConnector::with_verifier(verifier).connect_timeout(self.connect_timeout);
        if let Some(f) = fetcher {
            connector = connector.with_collateral_fetcher(f);
        }
        let mut b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(hyper_util::rt::TokioTimer::new());
        if !self.pooling {
            b.pool_max_idle_per_host(0);
        }
        let ledger = self.ledger.map(Ledger::open).transpose()?;
        Ok(Client {
            inner: Arc::new(Inner {
                http: b.build(connector.clone()),
                connector,
                upstreams,
                next: AtomicUsize::new(0),
                ledger,
                max_body: self.max_body,
            }),
        })
    }
}

fn parse_upstream(a: &str) -> Result<Upstream, ClientError> {
    let addr = a
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let authority: Authority = addr
        .parse()
        .map_err(|e| ClientError::Config(format!("upstream {a:?}: {e} (expected HOST:PORT)")))?;
    if authority.port_u16().is_none() {
        return Err(ClientError::Config(format!(
            "upstream {a:?} has no port (expected HOST:PORT)"
        )));
    }
    Ok(Upstream {
        addr: addr.to_owned(),
        authority,
        in_flight: Arc::new(AtomicUsize::new(0)),
        health: Mutex::new(Health::default()),
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the client sets itself.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::CONTENT_LENGTH,
];

/// True for headers that describe one connection, not the message.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection" | "expect")
}

impl Client {
    /// Starts a builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The pooled hyper client underneath. Use absolute `https://HOST:PORT/...` URIs; every
    /// response carries the [`VerifiedPeer`] of its connection in its extensions. Requests made
    /// this way get no upstream selection, failover or receipt checks: see [`Self::send`].
    pub fn hyper(&self) -> &HyperClient {
        &self.inner.http
    }

    /// The connector (and through it the verifier and its verdict cache).
    pub fn connector(&self) -> &AttestedConnector {
        &self.inner.connector
    }

    /// The configured upstreams, as `host:port`.
    pub fn upstreams(&self) -> Vec<String> {
        self.inner
            .upstreams
            .iter()
            .map(|u| u.addr.clone())
            .collect()
    }

    /// The receipts ledger, when one was configured.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.inner.ledger.as_ref()
    }

    /// Upstreams in the order to try them: up before down, then fewest in flight, ties taken
    /// in turn.
    fn plan(&self) -> Vec<usize> {
        let ups = &self.inner.upstreams;
        let n = ups.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            (
                ups[i].is_down(now),
                ups[i].in_flight.load(Ordering::Relaxed),
                (i + n - start) % n,
            )
        });
        order
    }

    /// Sends `req` (its URI is a path: `/v1/...`) to an upstream and returns the response with
    /// a body that passes frames through as they arrive.
    ///
    /// Tries upstreams in turn while nothing has been returned: on a failed connection, a
    /// rejected attestation, a connection that broke before the answer (its upstream gets one
    /// more try, last), or a 429/503 answer (the last upstream's 429/503 is returned as is). Adds `TE: trailers` so streams carry
    /// their receipt. For a successful `POST` to a [`RECEIPT_PATHS`] path, the body verifies
    /// the receipt when it ends ([`MeteredBody::receipt_slot`], the ledger). The response's
    /// extensions carry [`ServedBy`] and the [`VerifiedPeer`].
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<MeteredBody>, ClientError> {
        let (parts, body) = req.into_parts();
        if body.len() > self.inner.max_body {
            return Err(ClientError::RequestTooLarge {
                size: body.len(),
                limit: self.inner.max_body,
            });
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path = pq.path().to_owned();
        let metered = parts.method == Method::POST && RECEIPT_PATHS.contains(&path.as_str());
        let model_hint = metered
            .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .flatten()
            .and_then(|v| v.get("model")?.as_str().map(str::to_owned));
        let mut queue: std::collections::VecDeque<usize> = self.plan().into();
        let mut attempts = Vec::new();
        let mut busy: Option<Response<MeteredBody>> = None;
        let mut retried_broken = false;
        while let Some(i) = queue.pop_front() {
            let up = &self.inner.upstreams[i];
            let uri = Uri::builder()
                .scheme("https")
                .authority(up.authority.clone())
                .path_and_query(pq.clone())
                .build()
                .map_err(|e| ClientError::Config(format!("request URI: {e}")))?;
            let mut out = Request::new(Full::new(body.clone()));
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            for (k, v) in &parts.headers {
                if !is_hop_by_hop(k) {
                    out.headers_mut().append(k, v.clone());
                }
            }
            out.headers_mut()
                .insert(header::TE, HeaderValue::from_static("trailers"));
            let captured = capture_connection(&mut out);
            up.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(up.in_flight.clone());
            match self.inner.http.request(out).await {
                Ok(resp) => {
                    let status = resp.status();
                    let last = queue.is_empty();
                    let Some(peer) = resp.extensions().get::<VerifiedPeer>().cloned() else {
                        // The connector attaches the peer to every connection; without it
                        // nothing about this response can be trusted.
                        return Err(ClientError::Response {
                            upstream: up.addr.clone(),
                            message: "response without a verified peer".into(),
                        });
                    };
                    let now = unix_now();
                    if peer.valid_until() <= now + REVERIFY_MARGIN_SECS
                        && let Some(c) = captured.connection_metadata().as_ref()
                    {
                        c.poison();
                    }
                    let (mut rparts, incoming) = resp.into_parts();
                    rparts.extensions.insert(ServedBy(up.addr.clone()));
                    let ex = (metered && status.is_success()).then(|| Exchange {
                        upstream: up.addr.clone(),
                        path: path.clone(),
                        request: body.clone(),
                        model_hint: model_hint.clone(),
                        peer,
                    });
                    let body = MeteredBody::new(
                        incoming,
                        &rparts.headers,
                        ex,
                        self.inner.ledger.clone(),
                        Some(guard),
                    );
                    let resp = Response::from_parts(rparts, body);
                    if matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) && !last
                    {
                        tracing::info!(upstream = %up.addr, %status, "upstream busy; trying another");
                        attempts.push(UpstreamFailure {
                            upstream: up.addr.clone(),
                            kind: FailureKind::Busy(status.as_u16()),
                        });
                        busy = Some(resp);
                        continue;
                    }
                    up.succeeded();
                    return Ok(resp);
                }
                Err(e) => {
                    drop(guard);
                    up.failed();
                    let kind = classify(&e);
                    // A pooled connection the upstream closed just as it was reused breaks
                    // without an answer; one more try on a fresh connection (after the others)
                    // tells that race from a dead upstream.
                    if matches!(kind, FailureKind::Broken(_)) && !retried_broken {
                        retried_broken = true;
                        queue.push_back(i);
                    }
                    let f = UpstreamFailure {
                        upstream: up.addr.clone(),
                        kind,
                    };
                    tracing::warn!(failure = %f, "upstream failed; trying the next one if any");
                    attempts.push(f);
                }
            }
        }
        if let Some(resp) = busy {
            return Ok(resp);
        }
        if attempts
            .iter()
            .any(|a| matches!(a.kind, FailureKind::Rejected(_)))
        {
            Err(ClientError::Rejected { attempts })
        } else {
            Err(ClientError::Unavailable { attempts })
        }
    }

    /// `GET /v1/models`.
    pub async fn models(&self) -> Result<ModelList, ClientError> {
        let req = Request::get("/v1/models")
            .body(Bytes::new())
            .expect("static request");
        let resp = self.send(req).await?;
        let (upstream, _, bytes) = read_ok(resp).await?;
        decode(&upstream, &bytes)
    }

    /// A non-stream chat completion whose receipt is verified. A response that arrived but
    /// whose receipt failed is [`ClientError::Receipt`], which still carries the completion.
    pub async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ClientError> {
        let mut req = req.clone();
        req.stream = None;
        req.stream_options = None;
        let resp = self.send(json_post("/v1/chat/completions", &req)).await?;
        let (upstream, slot, bytes) = read_ok(resp).await?;
        let completion: ChatCompletion = decode(&upstream, &bytes)?;
        let reason = match slot.get() {
            Some(o) => match o.verified {
                Some(receipt) => {
                    return Ok(ChatResponse {
                        completion,
                        receipt,
                        upstream,
                    });
                }
                None => o.record.reason.unwrap_or_default(),
            },
            None => "the response ended without a receipt outcome".into(),
        };
        Err(ClientError::Receipt {
            upstream,
            reason,
            completion: Some(Box::new(completion)),
        })
    }

    /// A streaming chat completion (with `stream_options.include_usage`): chunks arrive as the
    /// upstream sends them; the receipt is verified when the stream ends.
    pub async fn chat_completion_stream(
        &self,
        req: &ChatRequest,
    ) -> Result<ChatStream, ClientError> {
        let mut req = req.clone();
        req.stream = Some(true);
        req.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        let resp = self.send(json_post("/v1/chat/completions", &req)).await?;
        let upstream = served_by(&resp);
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        let body = resp.into_body();
        Ok(ChatStream {
            slot: body.receipt_slot(),
            body,
            lines: LineSplitter::default(),
            pending: Default::default(),
            ended: false,
            concluded: false,
            upstream,
            receipt: None,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_post<T: serde::Serialize>(path: &str, body: &T) -> Request<Bytes> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(
            serde_json::to_vec(body).expect("request types serialise"),
        ))
        .expect("static request")
}

fn served_by<B>(resp: &Response<B>) -> String {
    resp.extensions()
        .get::<ServedBy>()
        .map(|s| s.0.clone())
        .unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(upstream: &str, bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Response {
        upstream: upstream.to_owned(),
        message: format!("not the expected JSON: {e}"),
    })
}

async fn read_ok(resp: Response<MeteredBody>) -> Result<(String, ReceiptSlot, Bytes), ClientError> {
    let upstream = served_by(&resp);
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    let body = resp.into_body();
    let slot = body.receipt_slot();
    let bytes = body
        .collect()
        .await
        .map_err(|e| ClientError::Response {
            upstream: upstream.clone(),
            message: e.to_string(),
        })?
        .to_bytes();
    Ok((upstream, slot, bytes))
}

async fn api_error(resp: Response<MeteredBody>) -> ClientError {
    let upstream = served_by(&resp);
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let (message, kind, code) = crate::openai::parse_error_body(&bytes).unwrap_or_else(|| {
        (
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            String::new(),
            String::new(),
        )
    });
    ClientError::Api {
        upstream,
        status,
        kind,
        code,
        message,
    }
}

/// A chat completion and its verified receipt.
#[derive(Clone, Debug)]
pub struct ChatResponse {
    /// The completion.
    pub completion: ChatCompletion,
    /// Its receipt, verified.
    pub receipt: VerifiedReceipt,
    /// The upstream that served it.
    pub upstream: String,
}

/// A streaming chat completion. Call [`ChatStream::next`] until it returns None; the receipt
/// is verified at the end ([`ChatStream::receipt`]), and a failed receipt is the last item.
#[derive(Debug)]
pub struct ChatStream {
    body: MeteredBody,
    slot: ReceiptSlot,
    lines: LineSplitter,
    pending: std::collections::VecDeque<Vec<u8>>,
    ended: bool,
    concluded: bool,
    upstream: String,
    receipt: Option<VerifiedReceipt>,
}

impl ChatStream {
    /// The next chunk as soon as it has arrived; None after the stream ended with a verified
    /// receipt. A missing or failed receipt is returned as [`ClientError::Receipt`] once, at
    /// the end.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, ClientError>> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                if p == b"[DONE]" {
                    continue;
                }
                return Some(decode(&self.upstream, &p));
            }
            if self.ended {
                return self.conclude();
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(ClientError::Response {
                        upstream: self.upstream.clone(),
                        message: e.to_string(),
                    }));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let pending = &mut self.pending;
                        self.lines.push(&data, |line| {
                            if let Some(p) = data_payload(line) {
                                pending.push_back(p.to_vec());
                            }
                        });
                    }
                }
            }
        }
    }

    fn conclude(&mut self) -> Option<Result<ChatChunk, ClientError>> {
        if std::mem::replace(&mut self.concluded, true) {
            return None;
        }
        let reason = match self.slot.get() {
            Some(o) => match o.verified {
                Some(r) => {
                    self.receipt = Some(r);
                    return None;
                }
                None => o.record.reason.unwrap_or_default(),
            },
            None => "the stream ended without a receipt outcome".into(),
        };
        Some(Err(ClientError::Receipt {
            upstream: self.upstream.clone(),
            reason,
            completion: None,
        }))
    }

    /// The verified receipt, once [`Self::next`] has returned None.
    pub fn receipt(&self) -> Option<&VerifiedReceipt> {
        self.receipt.as_ref()
    }

    /// The upstream serving this stream.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> FailureKind {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Rejected { rejection, .. } => {
                    FailureKind::Rejected(rejection.clone())
                }
                other => FailureKind::Unreachable(other.to_string()),
            };
        }
        src = s.source();
    }
    if e.is_connect() {
        FailureKind::Unreachable(chain(e))
    } else {
        FailureKind::Broken(chain(e))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
