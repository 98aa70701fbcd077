//! A fake attested upstream: an RA-TLS hyper server with simulated evidence that answers the
//! OpenAI routes the proxy forwards, signs receipts with its attested key (header for plain
//! responses, trailer for streams), records every request body it decrypted, and can rotate its
//! certificate or be killed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrysalis_attestation::ratls::{self, AttestedKey};
use chrysalis_attestation::receipt::{self, RECEIPT_HEADER, ReceiptBody, StreamHasher, Usage};
use chrysalis_attestation::sim::{
    DEFAULT_SEED, SimAmdPki, SimGpu, SimNvidiaPki, SimPki, SimSnpReport, SimTdReport,
    td_measurements,
};
use chrysalis_attestation::{Evidence, Measurement, Sha256};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};

use crate::now;

/// The model the fake serves.
pub const MODEL: &str = "fake-model";

/// How the fake signs receipts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipts {
    /// Correct receipts.
    Good,
    /// None at all.
    Missing,
    /// A receipt over the true response, then one byte of the response altered in flight.
    Tampered,
}

/// What the fake does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The MRTD (or SNP launch digest) its evidence reports.
    pub mr_td: Measurement,
    /// Present SEV-SNP evidence from the simulated AMD PKI (with `mr_td` as the launch
    /// digest) instead of a TDX quote.
    pub snp: bool,
    /// How it signs receipts.
    pub receipts: Receipts,
    /// Answer every completion with this status (and an OpenAI error body).
    pub status: Option<u16>,
    /// Pause between stream chunks.
    pub token_delay: Duration,
    /// After the first stream chunk, wait for this before sending the rest.
    pub gate: Option<Arc<Notify>>,
    /// Pause between a stream's `[DONE]` and its receipt trailer (the guest signs after it).
    pub trailer_delay: Duration,
    /// Leave the collateral out of the evidence (as a hardware node whose host has none).
    pub without_collateral: bool,
    /// Carry evidence of one simulated GPU (`sim::SimNvidiaPki` of the well-known seed), bound
    /// into the TDX evidence.
    pub gpu: bool,
}

impl Options {
    /// Defaults: TDX evidence with `mr_td`, good receipts.
    pub fn new(mr_td: Measurement) -> Self {
        Self {
            mr_td,
            snp: false,
            receipts: Receipts::Good,
            status: None,
            token_delay: Duration::ZERO,
            gate: None,
            trailer_delay: Duration::ZERO,
            without_collateral: false,
            gpu: false,
        }
    }
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);
impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// One identity: a key and its RA-TLS certificate over sim evidence of `mr_td`.
struct Identity {
    key: Arc<AttestedKey>,
    tls: Arc<rustls::ServerConfig>,
    cert_sha256: Sha256,
}

fn identity(pki: &SimPki, opts: &Options, mr_td: Measurement) -> Identity {
    let (snp, without_collateral) = (opts.snp, opts.without_collateral);
    let key = AttestedKey::generate().unwrap();
    let gpu = opts.gpu.then(|| {
        SimNvidiaPki::from_seed(DEFAULT_SEED).record(&SimGpu::default(), &key.gpu_nonce(), now())
    });
    let report_data = match &gpu {
        Some(record) => key.report_data_with_gpu(&record.to_der().unwrap()),
        None => key.report_data(),
    };
    let m = td_measurements(
        mr_td,
        [
            Measurement::ZERO,
            Measurement([1; 48]),
            Measurement::ZERO,
            Measurement::ZERO,
        ],
    );
    let bundle = if snp {
        SimAmdPki::from_seed(DEFAULT_SEED).bundle(&SimSnpReport::new(mr_td, report_data))
    } else {
        Evidence::tdx(
            pki.quote(&SimTdReport::new(m, report_data)),
            (!without_collateral).then(|| pki.collateral(now() - 3600, 86_400).unwrap()),
        )
        .unwrap()
    };
    let cert =
        ratls::issue_certificate_with_gpu(&key, &bundle, gpu.as_ref(), now() - 60, 3600).unwrap();
    let cert_sha256 = Sha256::digest(&cert);
    let tls = ratls::server_config(Arc::new(Fixed(key.certified_key(cert).unwrap())));
    Identity {
        key: Arc::new(key),
        tls: Arc::new(tls),
        cert_sha256,
    }
}

struct Shared {
    opts: Options,
    identity: Mutex<Arc<Identity>>,
    /// Bumped on rotation: every open connection closes.
    generation: watch::Sender<u64>,
    received: Mutex<Vec<Vec<u8>>>,
    tcp_accepts: AtomicUsize,
    handshakes: AtomicUsize,
}

/// A running fake upstream; killed on drop.
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The fingerprint of the simulated root its evidence chains to.
    pub root: Sha256,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    /// Starts it on a free loopback port.
    pub fn start(opts: Options) -> Self {
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let snp = opts.snp;
        let first = identity(&pki, &opts, opts.mr_td);
        let shared = Arc::new(Shared {
            opts,
            identity: Mutex::new(Arc::new(first)),
            generation: watch::channel(0).0,
            received: Mutex::new(vec![]),
            tcp_accepts: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = stopped => {}
                    () = accept_loop(listener, s) => {}
                }
            });
            // Dropping the runtime drops every connection task: the sockets close.
            rt.shutdown_background();
        });
        Self {
            addr,
            root: if snp {
                SimAmdPki::from_seed(DEFAULT_SEED).ark_sha256()
            } else {
                pki.root_sha256()
            },
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every request body it decrypted, in order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.shared.received.lock().unwrap().clone()
    }

    /// TCP connections accepted.
    pub fn tcp_accepts(&self) -> usize {
        self.shared.tcp_accepts.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed (the client accepted the certificate and finished).
    pub fn handshakes(&self) -> usize {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    /// SHA-256 of the certificate it presents now.
    pub fn cert_sha256(&self) -> Sha256 {
        self.shared.identity.lock().unwrap().cert_sha256
    }

    /// SPKI of the key it signs with now.
    pub fn spki_sha256(&self) -> Sha256 {
        self.shared.identity.lock().unwrap().key.spki_sha256()
    }

    /// A new key and certificate over evidence of `mr_td`; open connections are closed.
    pub fn rotate(&self, mr_td: Measurement) {
        let pki = SimPki::from_seed(DEFAULT_SEED);
        *self.shared.identity.lock().unwrap() = Arc::new(identity(&pki, &self.shared.opts, mr_td));
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Stops listening and drops every connection, as a crashed node would.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, s: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        s.tcp_accepts.fetch_add(1, Ordering::SeqCst);
        // As the guest does: small SSE chunks must not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let s = s.clone();
        tokio::spawn(async move {
            let id = s.identity.lock().unwrap().clone();
            let mut generation = s.generation.subscribe();
            let Ok(tls) = tokio_rustls::TlsAcceptor::from(id.tls.clone())
                .accept(tcp)
                .await
            else {
                return;
            };
            s.handshakes.fetch_add(1, Ordering::SeqCst);
            let svc = {
                let (s, id) = (s.clone(), id.clone());
                service_fn(move |req| {
                    let (s, id) = (s.clone(), id.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(s, id, req).await) }
                })
            };
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            // Biased: a request that arrives after a rotation must not be served on the old
            // certificate's connection.
            tokio::select! {
                biased;
                _ = generation.changed() => {}
                _ = conn => {}
            }
        });
    }
}

type Body = Either<Full<Bytes>, Channel<Bytes>>;

fn json_response(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

async fn handle(s: Arc<Shared>, id: Arc<Identity>, req: Request<Incoming>) -> Response<Body> {
    let te_trailers = req
        .headers()
        .get("te")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("trailers"));
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    s.received.lock().unwrap().push(body.clone());
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/v1/models") => json_response(
            200,
            &json!({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "chrysalis"}]}),
        ),
        ("POST", "/v1/chat/completions") => {
            if let Some(status) = s.opts.status {
                let mut r = json_response(
                    status,
                    &json!({"error": {"message": "busy", "type": "rate_limit_error", "code": "busy"}}),
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return r;
            }
            let req: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return json_response(
                        400,
                        &json!({"error": {"message": format!("bad json: {e}"), "type": "invalid_request_error"}}),
                    );
                }
            };
            let n = req["max_tokens"].as_u64().unwrap_or(8) as usize;
            let prompt: usize = req["messages"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| m["content"].as_str().unwrap_or("").len())
                        .sum()
                })
                .unwrap_or(0);
            let usage = Usage {
                prompt_tokens: (prompt / 4 + 1) as u64,
                completion_tokens: n as u64,
                total_tokens: (prompt / 4 + 1 + n) as u64,
            };
            if req["stream"] == true {
                let include_usage = req["stream_options"]["include_usage"] == true;
                stream(s, id, body, n, usage, include_usage, te_trailers)
            } else {
                let text: String = (0..n).map(|i| format!("tok{i} ")).collect();
                let resp = json!({
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": now(), "model": MODEL,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "length"}],
                    "usage": usage,
                });
                let mut bytes = resp.to_string().into_bytes();
                let jws = sign(&id.key, &body, Sha256::digest(&bytes), false, usage);
                if s.opts.receipts == Receipts::Tampered {
                    let i = bytes.windows(4).position(|w| w == b"tok0").unwrap();
                    bytes[i + 2] = b'K';
                }
                let mut r = json_response(200, &Value::Null);
                *r.body_mut() = Either::Left(Full::new(Bytes::from(bytes)));
                if s.opts.receipts != Receipts::Missing {
                    r.headers_mut()
                        .insert(RECEIPT_HEADER, HeaderValue::from_str(&jws).unwrap());
                }
                r
            }
        }
        _ => json_response(404, &json!({"error": {"message": "no such route"}})),
    }
}

fn sign(key: &AttestedKey, request: &[u8], response: Sha256, stream: bool, usage: Usage) -> String {
    receipt::sign(
        key,
        &ReceiptBody {
            v: receipt::RECEIPT_VERSION,
            request_sha256: Sha256::digest(request),
            response_sha256: response,
            stream,
            model: MODEL.into(),
            model_root_hash: "ab".repeat(32),
            usage,
            created: now(),
            signer_spki_sha256: key.spki_sha256(),
        },
    )
    .unwrap()
}

fn stream(
    s: Arc<Shared>,
    id: Arc<Identity>,
    request: Vec<u8>,
    n: usize,
    usage: Usage,
    include_usage: bool,
    te_trailers: bool,
) -> Response<Body> {
    let (mut tx, body): (Sender<Bytes>, Channel<Bytes>) = Channel::new(4);
    tokio::spawn(async move {
        let mut hasher = StreamHasher::new();
        let mut payloads = Vec::new();
        for i in 0..n {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": format!("tok{i} ")})
            } else {
                json!({"content": format!("tok{i} ")})
            };
            payloads.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": now(), "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]}).to_string());
        }
        payloads.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": now(), "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}]}).to_string());
        if include_usage {
            payloads.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": now(), "model": MODEL,
                "choices": [], "usage": usage}).to_string());
        }
        payloads.push("[DONE]".into());
        for (i, p) in payloads.iter().enumerate() {
            hasher.data(p.as_bytes());
            let mut event = format!("data: {p}\n\n");
            if s.opts.receipts == Receipts::Tampered && i == 0 {
                event = event.replacen("tok0", "TOK0", 1);
            }
            if tx.send_data(Bytes::from(event)).await.is_err() {
                return;
            }
            if i == 0
                && let Some(g) = &s.opts.gate
            {
                g.notified().await;
            }
            if !s.opts.token_delay.is_zero() {
                tokio::time::sleep(s.opts.token_delay).await;
            }
        }
        if !s.opts.trailer_delay.is_zero() {
            tokio::time::sleep(s.opts.trailer_delay).await;
        }
        if te_trailers && s.opts.receipts != Receipts::Missing {
            let jws = sign(&id.key, &request, hasher.finish(), true, usage);
            let mut t = HeaderMap::new();
            t.insert(RECEIPT_HEADER, HeaderValue::from_str(&jws).unwrap());
            let _ = tx.send_trailers(t).await;
        }
    });
    let mut r = Response::new(Either::Right(body));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    if te_trailers {
        // hyper sends only the trailer fields that the response announces.
        r.headers_mut()
            .insert("trailer", HeaderValue::from_static(RECEIPT_HEADER));
    }
    r
}
