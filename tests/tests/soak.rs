//! Soak under hostile load (issue 17), through the real chain on loopback: RA-TLS clients → the
//! host agent's relay (`chrysalis_host::agent::run`, TCP transport, sim quote service) → the guest
//! runtime (`chrysalis_guest::server`, certificate over the agent's sim quote) with the scripted
//! engine, so that the CPU goes to the chain. Relay and guest are separate processes (this binary
//! run again with `CHRYSALIS_SOAK_ROLE`), so their RSS and file descriptors are their own.
//!
//! Two phases: honest clients only, then honest clients with attackers. Honest clients (256, each
//! a new connection per streaming request, honouring Retry-After on 429) and clients that hang up
//! after the first chunk run throughout; the attack adds 64 slow-body clients (a body trickled a
//! byte at a time, cut with 408) and 64 stalled readers (a long stream they never read, cut after
//! `write_stall_secs`). Clients come from several 127.0.x.y addresses so that the relay's
//! per-source cap (default 64) admits them all.
//!
//! Checked at the end (correctness, not speed): no error for an honest request that was admitted,
//! no slot busy once the clients are gone, the file descriptors of relay and guest back to their
//! idle count, and RSS after warm-up bounded (last sample ≤ max(1.5 × warm-up, warm-up + 64 MiB)).
//! Latency and throughput are only reported, and appended as benchmark figures when
//! `CHRYSALIS_BENCH_FIGURES` is set (`cargo xtask bench`).
//!
//! A stalled reader asks for 20 alternatives per token (the most bytes per token the API gives),
//! so that the buffers between guest and client fill within seconds; once they are full, the
//! guest cuts the stream after `write_stall_secs`. That takes 10–20 s on a loaded 2-core machine
//! (the relay's bounded socket buffers, `relay.socket_buffer_kib`, and the guest's vsock-sized
//! send buffer hold about 1 MiB), so an attack phase of at least 15 s (`Shape::stall_cut_phase`)
//! must see streams cut.
//!
//! `CHRYSALIS_SOAK_ENGINE=llama_cpp` runs the real `chrysalis-guest serve` with the llama_cpp
//! adapter and SmolLM2 (the test venv, `CHRYSALIS_VENV`) and the cpu image's 4 slots instead, at a
//! scale the model can serve; docs/host.md has its figures.
//!
//! `CHRYSALIS_SOAK_SECS` sets the length of both phases together (default 60 s, llama_cpp 180 s;
//! the stall cuts are seen with room to spare on a slow machine). The optimised soak:
//! `cargo test --profile bench -p chrysalis-tests --test soak`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrysalis_attestation::hostcall::{GUEST_TLS_PORT, SIM_QUOTE_PORT};
use chrysalis_attestation::ratls::{self, RaTlsServerVerifier};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROLE_VAR: &str = "CHRYSALIS_SOAK_ROLE";
/// The load, scaled to what the engine serves.
struct Shape {
    /// `scripted` or `llama_cpp` (`CHRYSALIS_SOAK_ENGINE`).
    engine: &'static str,
    model: &'static str,
    honest: usize,
    disconnecters: usize,
    slow_body: usize,
    stalled: usize,
    /// Generations at once in the guest: the stalled readers can hold at most half.
    slots: usize,
    /// Tokens an honest request asks for.
    honest_tokens: u32,
    /// Tokens a stalled reader asks for: far more than the buffers between guest and client hold.
    stalled_tokens: u32,
    /// The default length of both phases together.
    default_secs: u64,
    /// An attack phase at least this long must see the guest cut stalled streams; `None` when the
    /// buffers between guest and client hold a whole answer of at most `stalled_tokens`.
    stall_cut_phase: Option<Duration>,
}

/// The scripted engine (2 ms per token): the CPU goes to the chain.
const SCRIPTED: Shape = Shape {
    engine: "scripted",
    model: "soak",
    honest: 256,
    disconnecters: 16,
    slow_body: 64,
    stalled: 64,
    slots: 128,
    honest_tokens: 16,
    stalled_tokens: 16_384,
    default_secs: 60,
    stall_cut_phase: Some(Duration::from_secs(15)),
};

/// The real `chrysalis-guest` binary with the llama_cpp adapter and SmolLM2 (the test venv), with
/// the cpu image's 4 slots. A stalled reader holds its slot until its answer is generated: the
/// model's context (2048 tokens) ends it before about 1 MiB of output fills the buffers, so no
/// cut is expected; the soak shows what that costs the honest clients.
const LLAMA_CPP: Shape = Shape {
    engine: "llama_cpp",
    model: chrysalis_testkit::guest::MODEL_ID,
    honest: 8,
    disconnecters: 2,
    slow_body: 8,
    stalled: 2,
    slots: 4,
    honest_tokens: 16,
    // n_ctx is 2048.
    stalled_tokens: 1_900,
    default_secs: 180,
    stall_cut_phase: None,
};

/// The engine as the report names it.
fn engine_name(shape: &Shape) -> String {
    match shape.engine {
        "scripted" => format!("scripted ({} ms/token)", TOKEN_DELAY.as_millis()),
        e => format!("{e} (SmolLM2-135M Q4_1)"),
    }
}

/// The shape `CHRYSALIS_SOAK_ENGINE` names, read once (every request asks for it).
fn shape() -> &'static Shape {
    static SHAPE: std::sync::OnceLock<&'static Shape> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| match std::env::var("CHRYSALIS_SOAK_ENGINE").as_deref() {
        Err(_) | Ok("scripted") => &SCRIPTED,
        Ok("llama_cpp") => &LLAMA_CPP,
        Ok(other) => panic!("CHRYSALIS_SOAK_ENGINE={other}: scripted or llama_cpp"),
    })
}

/// The scripted engine's time per token.
const TOKEN_DELAY: Duration = Duration::from_millis(2);
const WRITE_STALL_SECS: u64 = 2;
const BODY_TIMEOUT_SECS: u64 = 2;
/// How long a stalled reader keeps its connection before it starts again (at most: it stops when
/// the attack does): long enough for the stall to fill the buffers between guest and client (the
/// relay's splice pipe alone holds 1 MiB, socket buffers grow to megabytes).
const STALLED_HOLD: Duration = Duration::from_secs(60);
/// Bounds every wait on the chain, so that a hang fails instead of blocking the suite.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn main() {
    // The test harness's listing (`--list`) must not start a soak.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ROLE_VAR).ok().as_deref() {
        Some("relay") => rt.block_on(role::relay()),
        Some("guest") => rt.block_on(role::guest()),
        Some(other) => panic!("{ROLE_VAR}={other}: unknown role"),
        None => {
            let secs = std::env::var("CHRYSALIS_SOAK_SECS")
                .ok()
                .map(|s| s.parse::<u64>().expect("CHRYSALIS_SOAK_SECS: seconds"))
                .unwrap_or(shape().default_secs)
                .max(3);
            rt.block_on(soak(Duration::from_secs(secs)));
            println!("test soak ... ok");
        }
    }
}

/// The two child processes: what they run.
mod role {
    use super::*;

    /// Exits when the parent goes away (its end of our stdin closes), so no child outlives a
    /// failed soak.
    fn exit_with_parent() {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }

    /// The host agent (no VM): relay and sim quote service, from the config at
    /// `CHRYSALIS_SOAK_CONFIG`.
    pub(super) async fn relay() {
        exit_with_parent();
        let path = std::env::var("CHRYSALIS_SOAK_CONFIG").unwrap();
        let cfg =
            chrysalis_host::HostConfig::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        chrysalis_host::agent::run(
            cfg,
            chrysalis_host::agent::AgentOptions::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    }

    /// The guest runtime with the scripted engine: its key, a certificate over the agent's sim
    /// quote, the HTTPS server on the guest's "vsock" port. Writes `CHRYSALIS_SOAK_READY` once
    /// it serves.
    pub(super) async fn guest() {
        use chrysalis_guest::config::{ModelConfig, ServerConfig};
        use chrysalis_guest::engine::scripted::ScriptedEngine;
        use chrysalis_guest::evidence::sim::{SimEndpoint, SimQuoteClient};
        use chrysalis_guest::tls::CertStore;
        exit_with_parent();
        let var = |k: &str| std::env::var(k).unwrap();
        let offset: i32 = var("CHRYSALIS_SOAK_OFFSET").parse().unwrap();
        let certs = Arc::new(CertStore::generate().unwrap());
        let provider = SimQuoteClient::new(
            SimEndpoint::Tcp(format!("127.0.0.1:{}", SIM_QUOTE_PORT as i32 + offset)),
            Duration::from_secs(30),
        );
        certs
            .renew(&provider, SystemTime::now(), Duration::from_secs(3600))
            .await
            .unwrap();
        let model: ModelConfig =
            serde_json::from_value(json!({"id": SCRIPTED.model, "root_hash": "ab".repeat(32)}))
                .unwrap();
        let mut server = ServerConfig::default();
        server.max_concurrency = SCRIPTED.slots;
        server.max_tokens_cap = SCRIPTED.stalled_tokens;
        server.request_timeout_secs = 60;
        server.write_stall_secs = WRITE_STALL_SECS;
        server.body_timeout_secs = BODY_TIMEOUT_SECS;
        let state = chrysalis_guest::server::AppState::new(
            server,
            model,
            Arc::new(ScriptedEngine::new(SCRIPTED.model, TOKEN_DELAY)),
            certs.clone(),
            "sim",
        );
        let listener = Arc::new(
            tokio::net::TcpListener::bind(("127.0.0.1", (GUEST_TLS_PORT as i32 + offset) as u16))
                .await
                .unwrap(),
        );
        std::fs::write(var("CHRYSALIS_SOAK_READY"), "ready").unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
        chrysalis_guest::server::serve(state, tls, move || {
            let l = listener.clone();
            async move { chrysalis_guest::server::accept_tcp(&l).await }
        })
        .await
        .unwrap();
    }
}

/// A child process (this binary in a role), killed on drop; its stderr goes to `log`.
struct Child {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Child {
    fn spawn(role: &str, dir: &std::path::Path, env: &[(&str, String)]) -> Child {
        let log = dir.join(format!("{role}.log"));
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE_VAR, role)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Child {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with its log) if it has exited.
    fn check_alive(&mut self, what: &str) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!(
                "the {what} exited with {st}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest process: this binary in the guest role (scripted engine), or `chrysalis-guest serve`.
enum Guest {
    Role(Child),
    Real(chrysalis_testkit::guest::Proc),
}

impl Guest {
    fn pid(&self) -> u32 {
        match self {
            Guest::Role(c) => c.pid(),
            Guest::Real(p) => p.child.id(),
        }
    }

    fn check_alive(&mut self, what: &str) {
        match self {
            Guest::Role(c) => c.check_alive(what),
            Guest::Real(p) => {
                if let Some(st) = p.child.try_wait().unwrap() {
                    panic!("the {what} exited with {st}: {}", p.log());
                }
            }
        }
    }
}

/// `chrysalis-guest serve` with the llama_cpp adapter and SmolLM2 from the test venv, the cpu
/// image's slots, the soak's timeouts, on the guest's "vsock" port, asking the agent's sim quote
/// service for its evidence.
fn real_guest(offset: i32) -> chrysalis_testkit::guest::Proc {
    use chrysalis_testkit::guest::{build_binaries, serve_llama_cpp, venv};
    let v = venv().expect("CHRYSALIS_SOAK_ENGINE=llama_cpp needs the test venv (CHRYSALIS_VENV)");
    let bins = build_binaries();
    serve_llama_cpp(
        &bins["chrysalis-guest"],
        &v,
        &format!(
            "max_concurrency = {}\nmax_tokens_cap = {}\nrequest_timeout_secs = 600\n\
             write_stall_secs = {WRITE_STALL_SECS}\nbody_timeout_secs = {BODY_TIMEOUT_SECS}\n",
            LLAMA_CPP.slots, LLAMA_CPP.stalled_tokens,
        ),
        &format!("tcp:127.0.0.1:{}", GUEST_TLS_PORT as i32 + offset),
        &format!("sim-tdx:tcp:127.0.0.1:{}", SIM_QUOTE_PORT as i32 + offset),
    )
}

/// RSS (bytes) and open file descriptors of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kib * 1024, fds)
}

/// One sample of both processes.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    guest: (u64, usize),
    relay: (u64, usize),
}

/// What the clients saw, per phase (0: honest only, 1: with attackers).
#[derive(Default)]
struct Stats {
    served: [AtomicU64; 2],
    busy: [AtomicU64; 2],
    /// Honest requests that were admitted (not 429) and did not end with `[DONE]`.
    errors: [AtomicU64; 2],
    /// Honest connections that failed before a response (relay refusal, handshake).
    refused: [AtomicU64; 2],
    latencies: Mutex<[Vec<f64>; 2]>,
    first_errors: Mutex<Vec<String>>,
    hung_up: AtomicU64,
    slow_body_cut: AtomicU64,
    slow_body_other: AtomicU64,
    stalled_started: AtomicU64,
    /// Stalled readers' requests answered 429 (they try again after a second).
    stalled_refused: AtomicU64,
    /// The most bytes one stalled reader read when it drained (what was buffered for it).
    stalled_drained: AtomicU64,
}

impl Stats {
    fn error(&self, phase: usize, what: String) {
        self.errors[phase].fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_errors.lock().unwrap();
        if e.len() < 10 {
            e.push(what);
        }
    }
}

/// What every load task shares.
struct Load {
    relay: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    phase: AtomicUsize,
    stop: AtomicBool,
    attack_stop: AtomicBool,
    stats: Stats,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl Load {
    /// A verified RA-TLS connection through the relay from `source`; `rcvbuf` shrinks the
    /// client's receive buffer (a stalled reader's, so that its stall reaches the guest soon).
    async fn connect(&self, source: [u8; 4], rcvbuf: Option<u32>) -> std::io::Result<Tls> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n)?;
        }
        sock.bind((source, 0).into())?;
        let tcp = sock.connect(self.relay).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("chrysalis-guest").unwrap();
        self.tls.connect(name, tcp).await
    }

    fn phase(&self) -> usize {
        self.phase.load(Ordering::Relaxed)
    }
}

fn chat(max_tokens: u32) -> String {
    json!({
        "model": shape().model,
        "messages": [{"role": "user", "content": "a soak test asks for a short story"}],
        "max_tokens": max_tokens,
        "stream": true,
    })
    .to_string()
}

/// Sends one request over a fresh HTTP/1.1 connection on `tls`.
async fn send(
    tls: Tls,
    req: http::Request<Full<Bytes>>,
) -> hyper::Result<(
    http::Response<hyper::body::Incoming>,
    tokio::task::JoinHandle<()>,
)> {
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((tx.send_request(req).await?, conn))
}

fn post(body: String) -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("host", "chrysalis-guest")
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn retry_after(resp: &http::Response<hyper::body::Incoming>) -> Duration {
    let secs = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 5))
}

/// An honest streaming client: one request after another, each on a new connection, reading
/// every chunk to `[DONE]`; a 429 waits Retry-After.
async fn honest(load: Arc<Load>, source: [u8; 4]) {
    while !load.stop.load(Ordering::Relaxed) {
        let phase = load.phase();
        let stats = &load.stats;
        let started = Instant::now();
        let Ok(tls) = load.connect(source, None).await else {
            stats.refused[phase].fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (resp, conn) = match send(tls, post(chat(shape().honest_tokens))).await {
            Ok(r) => r,
            Err(e) => {
                stats.error(phase, format!("no response: {e}"));
                continue;
            }
        };
        match resp.status() {
            http::StatusCode::OK => {}
            http::StatusCode::TOO_MANY_REQUESTS => {
                stats.busy[phase].fetch_add(1, Ordering::Relaxed);
                let wait = retry_after(&resp);
                drop((resp, conn));
                tokio::time::sleep(wait).await;
                continue;
            }
            other => {
                stats.error(phase, format!("status {other}"));
                continue;
            }
        }
        match tokio::time::timeout(HANG_GUARD, resp.into_body().collect()).await {
            Ok(Ok(body)) => {
                let body = body.to_bytes();
                if body.ends_with(b"data: [DONE]\n\n") {
                    stats.served[phase].fetch_add(1, Ordering::Relaxed);
                    stats.latencies.lock().unwrap()[phase].push(started.elapsed().as_secs_f64());
                } else {
                    let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(200)..])
                        .into_owned();
                    stats.error(phase, format!("stream ended without [DONE]: …{tail}"));
                }
            }
            Ok(Err(e)) => stats.error(phase, format!("stream broke: {e}")),
            Err(_) => stats.error(phase, "stream hung".into()),
        }
        conn.abort();
    }
}

/// A client that hangs up mid-stream: it reads the first chunk and closes the connection.
async fn hang_up(load: Arc<Load>, source: [u8; 4]) {
    while !load.stop.load(Ordering::Relaxed) {
        let Ok(tls) = load.connect(source, None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((resp, conn)) = send(tls, post(chat(256))).await else {
            continue;
        };
        if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&resp);
            drop((resp, conn));
            tokio::time::sleep(wait).await;
            continue;
        }
        let mut body = resp.into_body();
        if let Ok(Some(Ok(_))) = tokio::time::timeout(HANG_GUARD, body.frame()).await {
            load.stats.hung_up.fetch_add(1, Ordering::Relaxed);
        }
        conn.abort();
    }
}

/// An attacker that announces a body and trickles it a byte every 200 ms, until the guest
/// answers (408 expected) or closes.
async fn slow_body(load: Arc<Load>, source: [u8; 4]) {
    while !load.attack_stop.load(Ordering::Relaxed) {
        let Ok(tls) = load.connect(source, None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut r, mut w) = tokio::io::split(tls);
        let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: chrysalis-guest\r\n\
                    Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{";
        if w.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let guard = Instant::now();
        loop {
            tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if load.attack_stop.load(Ordering::Relaxed) || guard.elapsed() > HANG_GUARD
                        || w.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
        }
        if answer.starts_with(b"HTTP/1.1 408") {
            load.stats.slow_body_cut.fetch_add(1, Ordering::Relaxed);
        } else {
            load.stats.slow_body_other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An attacker that asks for a long stream and never reads it, for [`STALLED_HOLD`] at a time or
/// until the attack ends; then it reads what was buffered for it and starts again.
async fn stalled(load: Arc<Load>, source: [u8; 4]) {
    while !load.attack_stop.load(Ordering::Relaxed) {
        let Ok(mut tls) = load.connect(source, Some(4096)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // The most bytes per token the API gives (20 alternatives with each), so that the
        // buffers between guest and client fill in seconds, as an attacker would make them.
        let mut body: Value = serde_json::from_str(&chat(shape().stalled_tokens)).unwrap();
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(20);
        let body = body.to_string();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: chrysalis-guest\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        // The status line only: a stream holds a slot, a 429 means trying again (an attacker
        // wants the slots), as honest clients do after Retry-After.
        match response_status(&mut tls).await {
            Some(200) => {}
            Some(429) => {
                load.stats.stalled_refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            _ => continue,
        }
        load.stats.stalled_started.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + STALLED_HOLD;
        while Instant::now() < until && !load.attack_stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // What was buffered for it (read for at most 3 s: a stream still running goes on).
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Ok(n @ 1..) = tls.read(&mut buf).await {
                total += n as u64;
            }
        })
        .await;
        load.stats
            .stalled_drained
            .fetch_max(total, Ordering::Relaxed);
    }
}

/// Reads a response's head byte by byte (no further: the body stays unread) and returns its
/// status code; `None` when the connection ends or the head does not come within 30 s.
async fn response_status(tls: &mut Tls) -> Option<u16> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), async {
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match tls.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => return None,
            }
        }
        String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    })
    .await
    .ok()
    .flatten()
}

/// GET `path` through the chain; the JSON body.
async fn get_json(load: &Load, path: &str) -> Value {
    let tls = load.connect([127, 0, 0, 1], None).await.unwrap();
    let req = http::Request::get(path)
        .header("host", "chrysalis-guest")
        .header("connection", "close")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, conn) = send(tls, req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK, "GET {path}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    conn.abort();
    serde_json::from_slice(&body).unwrap()
}

/// Polls `done` every 200 ms until it holds or [`HANG_GUARD`] passes; whether it held.
async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + HANG_GUARD;
    while Instant::now() < until {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

const MIB: f64 = 1024.0 * 1024.0;

async fn soak(total: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let image = chrysalis_testkit::image::TestImage::write(&dir.path().join("image")).unwrap();
    let offset = chrysalis_tests::chain::free_port_offset(&[SIM_QUOTE_PORT])
        .expect("no free loopback port pair");
    let state = dir.path().join("state");
    let host_toml = dir.path().join("host.toml");
    // The relay's defaults (caps, idle timeout, splice) except the listening address.
    std::fs::write(
        &host_toml,
        format!(
            "[image]\nmanifest = {:?}\n\
             [vm]\nplatform = \"sim\"\nvcpus = 2\nmemory_mib = 2048\nlaunch = false\nstate_dir = {:?}\n\
             [transport]\nkind = \"tcp\"\ntcp_host = \"127.0.0.1\"\ntcp_port_offset = {offset}\n\
             [relay]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nenabled = false\n",
            image.manifest.display().to_string(),
            state.display().to_string(),
        ),
    )
    .unwrap();
    let mut relay = Child::spawn(
        "relay",
        dir.path(),
        &[("CHRYSALIS_SOAK_CONFIG", host_toml.display().to_string())],
    );
    let started = Instant::now();
    let relay_addr: std::net::SocketAddr = loop {
        if let Ok(a) = std::fs::read_to_string(state.join("relay.addr")) {
            break a.trim().parse().unwrap();
        }
        relay.check_alive("relay");
        assert!(started.elapsed() < HANG_GUARD, "the relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut guest = if shape().engine == "scripted" {
        let ready = dir.path().join("guest.ready");
        let mut guest = Child::spawn(
            "guest",
            dir.path(),
            &[
                ("CHRYSALIS_SOAK_OFFSET", offset.to_string()),
                ("CHRYSALIS_SOAK_READY", ready.display().to_string()),
            ],
        );
        while !ready.exists() {
            guest.check_alive("guest");
            assert!(started.elapsed() < HANG_GUARD, "the guest did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Guest::Role(guest)
    } else {
        Guest::Real(real_guest(offset))
    };

    let policy = image.sim_tdx_policy().unwrap();
    let verifier = Arc::new(RaTlsServerVerifier::new(Arc::new(policy)));
    let load = Arc::new(Load {
        relay: relay_addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(ratls::client_config(verifier))),
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        attack_stop: AtomicBool::new(false),
        stats: Stats::default(),
    });
    // One request through the chain before the idle counts are taken: lazy state (the
    // verifier's cache, the relay's and guest's first connection) is then in place.
    let health = get_json(&load, "/healthz").await;
    assert_eq!(health["in_flight"], 0, "{health}");
    let (guest_pid, relay_pid) = (guest.pid(), relay.pid());
    let idle = (usage(guest_pid), usage(relay_pid));

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let t0 = Instant::now();
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                samples.lock().unwrap().push(Sample {
                    at: t0.elapsed(),
                    guest: usage(guest_pid),
                    relay: usage(relay_pid),
                });
            }
        })
    };

    // Honest clients on 127.0.1.1-8, attackers on 127.0.2.x and 127.0.3.x: at most 40 of one
    // kind per source, under the relay's per-source cap.
    let mut tasks = Vec::new();
    let shape = shape();
    for i in 0..shape.honest {
        tasks.push(tokio::spawn(honest(
            load.clone(),
            [127, 0, 1, 1 + (i % 8) as u8],
        )));
    }
    for i in 0..shape.disconnecters {
        tasks.push(tokio::spawn(hang_up(
            load.clone(),
            [127, 0, 1, 1 + (i % 8) as u8],
        )));
    }
    let baseline_phase = total / 3;
    tokio::time::sleep(baseline_phase).await;

    load.phase.store(1, Ordering::Relaxed);
    let attack_started = t0.elapsed();
    let mut attackers = Vec::new();
    for i in 0..shape.slow_body {
        attackers.push(tokio::spawn(slow_body(
            load.clone(),
            [127, 0, 2, 1 + (i % 4) as u8],
        )));
    }
    for i in 0..shape.stalled {
        attackers.push(tokio::spawn(stalled(
            load.clone(),
            [127, 0, 3, 1 + (i % 4) as u8],
        )));
    }
    let attack_phase = total - baseline_phase;
    tokio::time::sleep(attack_phase).await;
    let (guest_metrics_under_attack, in_flight_under_attack) = {
        let h = get_json(&load, "/healthz").await;
        (h.clone(), h["in_flight"].as_u64().unwrap_or(0))
    };

    // The end: attackers go (their connections close), honest clients finish what they started.
    load.attack_stop.store(true, Ordering::Relaxed);
    load.stop.store(true, Ordering::Relaxed);
    for t in attackers {
        let _ = tokio::time::timeout(HANG_GUARD, t).await;
    }
    for t in tasks {
        tokio::time::timeout(HANG_GUARD, t)
            .await
            .expect("an honest client hung")
            .unwrap();
    }
    relay.check_alive("relay");
    guest.check_alive("guest");

    // Slots all free and descriptors back to idle, once the guest has seen every close.
    let slots_free = eventually(async || get_json(&load, "/healthz").await["in_flight"] == 0).await;
    let fd_slack = 4;
    let fds_back = eventually(async || {
        usage(guest_pid).1 <= idle.0.1 + fd_slack && usage(relay_pid).1 <= idle.1.1 + fd_slack
    })
    .await;
    let health = get_json(&load, "/healthz").await;
    sampler.abort();
    let after = (usage(guest_pid), usage(relay_pid));
    let samples = samples.lock().unwrap().clone();

    // RSS: the warm-up sample is the one a quarter into the attack.
    let warm_at = attack_started + attack_phase / 4;
    let warm = samples
        .iter()
        .find(|s| s.at >= warm_at)
        .copied()
        .unwrap_or(*samples.last().unwrap());
    let last = *samples.last().unwrap();
    let bound = |w: u64| (w as f64 * 1.5).max(w as f64 + 64.0 * MIB);
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let peak_fds = |f: fn(&Sample) -> usize| samples.iter().map(f).max().unwrap_or(0);

    let stats = &load.stats;
    let mut lat = stats.latencies.lock().unwrap().clone();
    for l in &mut lat {
        l.sort_by(f64::total_cmp);
    }
    let load_of = |a: &[AtomicU64; 2], p: usize| a[p].load(Ordering::Relaxed);
    let (p50, p99) = (
        [percentile(&lat[0], 0.5), percentile(&lat[1], 0.5)],
        [percentile(&lat[0], 0.99), percentile(&lat[1], 0.99)],
    );
    let rate = [
        load_of(&stats.served, 0) as f64 / baseline_phase.as_secs_f64(),
        load_of(&stats.served, 1) as f64 / attack_phase.as_secs_f64(),
    ];

    // The guest counts both cuts as timeouts: the 408s the slow-body attackers saw, and streams
    // cut after write_stall_secs.
    let stall_cuts = health["timeouts"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(stats.slow_body_cut.load(Ordering::Relaxed));
    let mut report = String::new();
    report.push_str(&format!(
        "soak: {:.0} s honest only, {:.0} s with attackers; {} honest streaming clients, \
         {} hanging up mid-stream, then {} slow-body and {} stalled-reader attackers; {} slots, \
         {} engine\n",
        baseline_phase.as_secs_f64(),
        attack_phase.as_secs_f64(),
        shape.honest,
        shape.disconnecters,
        shape.slow_body,
        shape.stalled,
        shape.slots,
        engine_name(shape),
    ));
    for (p, name) in [(0, "honest only   "), (1, "with attackers")] {
        report.push_str(&format!(
            "  {name}: served {} ({:.0} req/s), 429 {}, errors {}, refused {}, p50 {:.1} ms, \
             p99 {:.1} ms\n",
            load_of(&stats.served, p),
            rate[p],
            load_of(&stats.busy, p),
            load_of(&stats.errors, p),
            load_of(&stats.refused, p),
            p50[p] * 1e3,
            p99[p] * 1e3,
        ));
    }
    report.push_str(&format!(
        "  p50 ratio {:.2}, p99 ratio {:.2} (with / without attackers)\n  hung up mid-stream {}; \
         slow bodies cut with 408 {} (other endings {}); stalled streams started {} (429 {}), \
         cut by the guest {}, most bytes buffered for one {:.1} MiB; in flight at the end of the attack {in_flight_under_attack}\n  guest counters under \
         attack: {guest_metrics_under_attack}\n  guest counters at the end: {health}\n",
        p50[1] / p50[0],
        p99[1] / p99[0],
        stats.hung_up.load(Ordering::Relaxed),
        stats.slow_body_cut.load(Ordering::Relaxed),
        stats.slow_body_other.load(Ordering::Relaxed),
        stats.stalled_started.load(Ordering::Relaxed),
        stats.stalled_refused.load(Ordering::Relaxed),
        stall_cuts,
        stats.stalled_drained.load(Ordering::Relaxed) as f64 / MIB,
    ));
    report.push_str(&format!(
        "  RSS MiB guest idle {:.1} warm {:.1} peak {:.1} last {:.1}; relay idle {:.1} warm {:.1} \
         peak {:.1} last {:.1}\n  fds guest idle {} peak {} after {}; relay idle {} peak {} after {}\n",
        idle.0.0 as f64 / MIB,
        warm.guest.0 as f64 / MIB,
        peak(|s| s.guest.0) as f64 / MIB,
        last.guest.0 as f64 / MIB,
        idle.1.0 as f64 / MIB,
        warm.relay.0 as f64 / MIB,
        peak(|s| s.relay.0) as f64 / MIB,
        last.relay.0 as f64 / MIB,
        idle.0.1,
        peak_fds(|s| s.guest.1),
        after.0.1,
        idle.1.1,
        peak_fds(|s| s.relay.1),
        after.1.1,
    ));
    report.push_str("  over time (s: guest MiB/fds, relay MiB/fds):");
    for s in &samples {
        report.push_str(&format!(
            " {:.0}: {:.0}/{} {:.0}/{};",
            s.at.as_secs_f64(),
            s.guest.0 as f64 / MIB,
            s.guest.1,
            s.relay.0 as f64 / MIB,
            s.relay.1
        ));
    }
    report.push('\n');
    eprint!("{report}");

    let errors = load_of(&stats.errors, 0) + load_of(&stats.errors, 1);
    assert_eq!(
        errors,
        0,
        "admitted honest requests failed: {:?}",
        stats.first_errors.lock().unwrap()
    );
    assert!(
        load_of(&stats.served, 0) > 0 && load_of(&stats.served, 1) > 0,
        "honest clients were served in both phases"
    );
    assert!(slots_free, "a slot stayed busy after the run: {health}");
    assert!(
        shape
            .stall_cut_phase
            .is_none_or(|phase| attack_phase < phase || stall_cuts > 0),
        "in {:.0} s of attack no stalled stream was cut: the buffers between guest and client \
         hold more than the stalled readers were sent ({:.1} MiB drained from one)",
        attack_phase.as_secs_f64(),
        stats.stalled_drained.load(Ordering::Relaxed) as f64 / MIB,
    );
    assert!(
        fds_back,
        "file descriptors did not return to idle (guest {} → {}, relay {} → {})",
        idle.0.1, after.0.1, idle.1.1, after.1.1
    );
    for (what, w, l) in [
        ("guest", warm.guest.0, last.guest.0),
        ("relay", warm.relay.0, last.relay.0),
    ] {
        assert!(
            (l as f64) <= bound(w),
            "{what} RSS grew after warm-up: {:.1} MiB → {:.1} MiB",
            w as f64 / MIB,
            l as f64 / MIB
        );
    }
    record_figures(&Figures {
        total,
        rate,
        p50,
        p99,
        busy: [load_of(&stats.busy, 0), load_of(&stats.busy, 1)],
        served: load_of(&stats.served, 0) + load_of(&stats.served, 1),
        peak_rss: (peak(|s| s.guest.0), peak(|s| s.relay.0)),
        peak_fds: (peak_fds(|s| s.guest.1), peak_fds(|s| s.relay.1)),
        cut: (stall_cuts, stats.slow_body_cut.load(Ordering::Relaxed)),
    });
}

/// The figures a run appends for `cargo xtask bench`.
struct Figures {
    total: Duration,
    rate: [f64; 2],
    p50: [f64; 2],
    p99: [f64; 2],
    busy: [u64; 2],
    served: u64,
    peak_rss: (u64, u64),
    peak_fds: (usize, usize),
    /// Streams the guest cut after a write stall, and slow bodies answered 408.
    cut: (u64, u64),
}

fn record_figures(f: &Figures) {
    use chrysalis_testkit::bench_figure::record;
    let shape = shape();
    let secs = f.total.as_secs();
    let setting = format!(
        "{secs} s soak (⅓ honest only, ⅔ with attackers), {} honest streaming clients \
         ({} tokens), {} slow-body + {} stalled-reader attackers, {} slots, {} engine, relay and \
         guest as processes on loopback",
        shape.honest,
        shape.honest_tokens,
        shape.slow_body,
        shape.stalled,
        shape.slots,
        engine_name(shape),
    );
    let figures = [
        json!({
            "name": "soak: honest requests served with attackers", "unit": "req/s",
            "value": f.rate[1], "baseline": "honest clients alone", "baseline_value": f.rate[0],
            "ratio": f.rate[1] / f.rate[0], "runs": 1,
            "note": format!("{setting}; {} served in all, 0 errors for admitted honest requests", f.served),
        }),
        json!({
            "name": "soak: honest p50 latency (connect to [DONE]) with attackers", "unit": "s",
            "value": f.p50[1], "baseline": "honest clients alone", "baseline_value": f.p50[0],
            "ratio": f.p50[1] / f.p50[0], "runs": 1,
        }),
        json!({
            "name": "soak: honest p99 latency (connect to [DONE]) with attackers", "unit": "s",
            "value": f.p99[1], "baseline": "honest clients alone", "baseline_value": f.p99[0],
            "ratio": f.p99[1] / f.p99[0], "runs": 1,
        }),
        json!({
            "name": "soak: honest requests answered 429 with attackers", "unit": "req",
            "value": f.busy[1], "baseline": "honest clients alone", "baseline_value": f.busy[0],
            "runs": 1, "note": "clients wait Retry-After before the next request",
        }),
        json!({
            "name": "soak: stalled streams cut by the guest", "unit": "req",
            "value": f.cut.0, "baseline": "slow bodies answered 408", "baseline_value": f.cut.1,
            "runs": 1, "note": "the guest's timeouts less the 408s the slow bodies saw (a 408 sent as the attack stops is not seen); a stalled reader holds its stream until the attack ends",
        }),
        json!({
            "name": "soak: peak RSS of the guest", "unit": "MiB",
            "value": f.peak_rss.0 as f64 / MIB, "baseline": "relay", "baseline_value": f.peak_rss.1 as f64 / MIB,
            "runs": 1, "note": format!("peak fds guest {}, relay {}; RSS bounded after warm-up, fds back to idle, no slot busy at the end (checked)", f.peak_fds.0, f.peak_fds.1),
        }),
    ];
    for fig in figures {
        record(&fig).unwrap();
    }
}
