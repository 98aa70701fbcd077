//! The server over real TLS with the in-memory scripted engine (no Python).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, td_measurements};
use chrysalis_attestation::{Measurement, Sha256};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;

use super::*;
use crate::config::{ModelConfig, ServerConfig};
use crate::engine::scripted::ScriptedEngine;
use crate::evidence::LocalSim;
use crate::receipt::StreamHasher;
use crate::tls::CertStore;

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

/// A TLS connection to the server (its certificate is not judged here).
async fn tls_connect(addr: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(chrysalis_testkit::RecordingVerifier::default()))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

async fn send(addr: &str, body: &str) -> (hyper::Response<Incoming>, tokio::task::JoinHandle<()>) {
    let tls = tls_connect(addr).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
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

/// A client that reads the response headers and then no more: the stream fills the buffers
/// between it and the engine, and after the write-stall time the generation is cancelled and its
/// slot freed, although the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_cut_and_its_slot_freed() {
    let engine = ScriptedEngine::new("m", Duration::ZERO);
    let (addr, state) = start(
        engine.clone(),
        ServerConfig {
            max_concurrency: 1,
            max_tokens_cap: 10_000_000,
            stream_buffer: 4,
            write_stall_secs: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let (stalled, conn) = send(&addr, &chat(10_000_000, true)).await;
    assert_eq!(stalled.status(), 200);
    // Before the write-stall timer, this held the only slot until the 600 s deadline.
    until(&state, |s| {
        s.metrics().timeouts.load(Ordering::SeqCst) == 1 && s.in_flight() == 0
    })
    .await;
    until(&state, |_| engine.cancelled_count() == 1).await;
    assert_eq!(state.metrics().cancelled.load(Ordering::SeqCst), 0);
    let (r, _c) = send(&addr, &chat(2, false)).await;
    assert_eq!(r.status(), 200, "the slot was not freed");
    drop((stalled, conn));
}

/// A body announced as 1000 bytes and sent a byte at a time gets 408 once its allowance is
/// spent, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_the_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engine = ScriptedEngine::new("m", Duration::from_millis(1));
    let (addr, state) = start(
        engine,
        ServerConfig {
            body_timeout_secs: 1,
            body_min_bytes_per_sec: 1_000_000,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut tls = tls_connect(&addr).await;
    tls.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/json\r\ncontent-length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    // Before the body timeout this trickle kept the request open for as long as it went on.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut answer))
        .await
        .expect("the trickled request was never answered")
        .ok();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(state.metrics().timeouts.load(Ordering::SeqCst), 1);
    assert_eq!(state.in_flight(), 0);
}

/// Sends `body` to `path`, asking for the receipt trailer of a stream.
async fn send_te(addr: &str, path: &str, body: &str) -> hyper::Response<Incoming> {
    let tls = tls_connect(addr).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post(path)
        .header("host", "localhost")
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    tx.send_request(req).await.unwrap()
}

const TOOLS: &str = r#""tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},{"type":"function","function":{"name":"get_time"}}]"#;

/// The SSE payloads of a stream body, `[DONE]` included.
fn payloads(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_and_logprobs_are_answered_in_openai_shape_and_covered_by_receipts() {
    let engine = ScriptedEngine::new("m", Duration::from_millis(1));
    let (addr, state) = start(engine, ServerConfig::default()).await;
    let spki = state.certs.key().spki_der().to_vec();

    // Non-stream, a forced call of every tool (parallel): the receipt covers the body sent.
    let req = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"a"}}],{TOOLS},"tool_choice":"required","logprobs":true,"top_logprobs":2}}"#
    );
    let r = send_te(&addr, "/v1/chat/completions", &req).await;
    assert_eq!(r.status(), 200);
    let receipt = r.headers()[crate::receipt::RECEIPT_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["type"], "function");
    assert_eq!(calls[1]["function"]["name"], "get_time");
    assert_eq!(calls[1]["function"]["arguments"], r#"{"n": 1}"#);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert!(calls[0].get("index").is_none());
    let lps = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lps.len(), 2);
    assert_eq!(lps[1]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(lps[1]["logprob"], -0.1);
    let signed = crate::receipt::verify(&receipt, &spki).unwrap();
    signed
        .check_exchange(req.as_bytes(), Sha256::digest(&body))
        .unwrap();
    assert!(!signed.stream);

    // Streamed with a named tool: `delta.tool_calls` with index, id, name and arguments; the
    // trailer's receipt covers exactly the payloads sent.
    let req = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"a"}}],{TOOLS},"tool_choice":{{"type":"function","function":{{"name":"get_time"}}}},"stream":true}}"#
    );
    let r = send_te(&addr, "/v1/chat/completions", &req).await;
    assert_eq!(r.status(), 200);
    let collected = r.into_body().collect().await.unwrap();
    let receipt = collected.trailers().unwrap()[crate::receipt::RECEIPT_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let body = collected.to_bytes();
    let events = payloads(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(chunks.len(), 2, "{events:?}");
    let delta = &chunks[0]["choices"][0]["delta"];
    assert_eq!(delta["role"], "assistant");
    assert_eq!(delta["content"], Value::Null);
    assert_eq!(delta["tool_calls"][0]["index"], 0);
    assert_eq!(delta["tool_calls"][0]["function"]["name"], "get_time");
    assert_eq!(
        delta["tool_calls"][0]["function"]["arguments"],
        r#"{"n": 0}"#
    );
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[1]["choices"][0]["delta"], serde_json::json!({}));
    let mut hasher = StreamHasher::default();
    for p in &events {
        hasher.data(p.as_bytes());
    }
    let signed = crate::receipt::verify(&receipt, &spki).unwrap();
    signed
        .check_exchange(req.as_bytes(), hasher.finish())
        .unwrap();
    assert!(signed.stream);

    // Streamed text with logprobs: every content chunk carries its tokens' entries.
    let req = r#"{"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":3,"stream":true,"logprobs":true}"#;
    let r = send_te(&addr, "/v1/chat/completions", req).await;
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let events = payloads(&body);
    let content: Vec<Value> = events[..3]
        .iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap()["choices"][0].clone())
        .collect();
    for (i, c) in content.iter().enumerate() {
        let entries = c["logprobs"]["content"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["token"], c["delta"]["content"], "chunk {i}");
        assert_eq!(entries[0]["top_logprobs"], serde_json::json!([]));
    }
    let last: Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(last["choices"][0]["logprobs"], Value::Null);
    assert_eq!(last["choices"][0]["finish_reason"], "length");

    // Without the new fields, the wire is as before: no tool_calls key, logprobs null.
    let (r, _c) = send(&addr, &chat(2, false)).await;
    let v: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        v["choices"][0]["message"],
        serde_json::json!({"role": "assistant", "content": "w0 w1"})
    );
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
}
