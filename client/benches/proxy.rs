//! Benchmark of the client side, each figure next to its baseline in the same run:
//!
//! * streaming tokens/s and time to first token (TTFT) through `chrysalis proxy` (plain HTTP on
//!   loopback, then RA-TLS) vs the Rust SDK talking RA-TLS directly;
//! * requests/s through `chrysalis proxy` with pooled upstream connections vs a proxy whose
//!   client makes a new verified connection per request (verdict cached per certificate);
//! * the same for the Rust SDK directly, and vs a new connection with a cold verdict cache
//!   (full evidence verification every time).
//!
//! `cargo bench -p chrysalis-client --bench proxy`. The upstream is one of:
//! * by default, the tests' fake attested node (sim evidence, signed receipts, tokens as fast
//!   as it can send them), which isolates what the client adds;
//! * with `CHRYSALIS_BENCH_GUEST=1`, the real guest runtime (`chrysalis-guest serve`, built
//!   optimised by this benchmark, sim evidence, llama_cpp adapter, SmolLM2-135M from the venv
//!   named by `CHRYSALIS_VENV`, as in tests/tests/proxy_guest.rs);
//! * with `CHRYSALIS_BENCH_UPSTREAM=HOST:PORT`, `CHRYSALIS_BENCH_POLICY=FILE` and
//!   `CHRYSALIS_BENCH_MODEL=ID`, a node already running.
//!
//! `CHRYSALIS_BENCH_QUICK=1` runs fewer rounds; `CHRYSALIS_BENCH_JSON=FILE` also writes the
//! figures as JSON. Figures are medians over interleaved rounds; the `summary:` lines at the end
//! carry them in one line each, with the machine they were taken on.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrysalis_attestation::{Measurement, Policy};
use chrysalis_client::{ChatMessage, ChatRequest, Client, Proxy};
use chrysalis_testkit::http::{PlainClient, plain_client, post_json};
use chrysalis_testkit::policy::sim_policy_toml;
use chrysalis_testkit::{bench_figure, guest, upstream};
use http_body_util::{BodyExt, Full};
use serde_json::json;

struct Target {
    upstream: String,
    policy: Policy,
    model: String,
    /// What the upstream is, for the summary.
    kind: &'static str,
    _fake: Option<upstream::FakeUpstream>,
    _guest: Option<guest::Proc>,
}

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

fn target() -> Target {
    if set("CHRYSALIS_BENCH_GUEST") {
        let v = guest::venv().expect("CHRYSALIS_BENCH_GUEST=1 needs CHRYSALIS_VENV");
        let bins = guest::build_binaries();
        let sim = guest::sim_quote_service();
        let g = guest::start_guest(&bins["chrysalis-guest"], &sim, &v);
        return Target {
            upstream: g.addr.clone(),
            policy: Policy::from_toml(&guest::policy_toml(guest::MR_TD)).unwrap(),
            model: guest::MODEL_ID.into(),
            kind: "real guest runtime: llama_cpp, SmolLM2-135M Q4_1, sim evidence",
            _fake: None,
            _guest: Some(g),
        };
    }
    if let Ok(up) = std::env::var("CHRYSALIS_BENCH_UPSTREAM") {
        let policy = std::env::var("CHRYSALIS_BENCH_POLICY")
            .expect("CHRYSALIS_BENCH_POLICY=FILE goes with CHRYSALIS_BENCH_UPSTREAM");
        return Target {
            upstream: up,
            policy: Policy::from_toml(&std::fs::read_to_string(policy).unwrap()).unwrap(),
            model: std::env::var("CHRYSALIS_BENCH_MODEL")
                .unwrap_or_else(|_| "smollm2-135m-instruct".into()),
            kind: "a running node",
            _fake: None,
            _guest: None,
        };
    }
    let mr_td = Measurement([0x5a; 48]);
    let fake = upstream::FakeUpstream::start(upstream::Options::new(mr_td));
    Target {
        upstream: fake.addr.to_string(),
        policy: Policy::from_toml(&sim_policy_toml(fake.root, mr_td)).unwrap(),
        model: upstream::MODEL.into(),
        kind: "fake attested node, no engine",
        _fake: Some(fake),
        _guest: None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One stream: (TTFT, tokens, total time).
type StreamRun = (Duration, usize, Duration);

async fn stream_direct(c: &Client, req: &ChatRequest) -> StreamRun {
    let t0 = Instant::now();
    let mut s = c.chat_completion_stream(req).await.unwrap();
    let (mut ttft, mut tokens) = (None, 0);
    while let Some(chunk) = s.next().await {
        if !chunk.unwrap().text().is_empty() {
            ttft.get_or_insert_with(|| t0.elapsed());
            tokens += 1;
        }
    }
    assert!(s.receipt().is_some(), "receipt did not verify");
    (ttft.unwrap(), tokens, t0.elapsed())
}

async fn stream_via_proxy(c: &PlainClient, url: &str, req: &ChatRequest) -> StreamRun {
    let mut body = serde_json::to_value(req).unwrap();
    body["stream"] = true.into();
    body["stream_options"] = json!({"include_usage": true});
    let t0 = Instant::now();
    let resp = c
        .request(
            http::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut ttft, mut tokens, mut partial) = (None, 0, Vec::new());
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            // A content delta (the same count the SDK side makes: non-empty text).
            if line.starts_with(b"data: {")
                && line.windows(11).any(|w| w == b"\"content\":\"")
                && !line.windows(13).any(|w| w == b"\"content\":\"\"")
            {
                ttft.get_or_insert_with(|| t0.elapsed());
                tokens += 1;
            }
        }
    }
    (ttft.unwrap(), tokens, t0.elapsed())
}

async fn small_request(c: &Client, req: &ChatRequest) {
    c.chat_completion(req).await.unwrap();
}

/// A non-stream request through a proxy, over the caller's keep-alive connection.
async fn small_via_proxy(c: &PlainClient, url: &str, req: &ChatRequest) {
    let (status, _, body) = post_json(c, url, &serde_json::to_value(req).unwrap()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Serves a proxy in front of `client` on a free loopback port; its chat completions URL.
async fn spawn_proxy(client: Client) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(Proxy::new(client).serve(listener, std::future::pending()));
    url
}

struct Row {
    what: &'static str,
    unit: &'static str,
    value: f64,
    baseline_what: &'static str,
    baseline: f64,
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once without it: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = set("CHRYSALIS_BENCH_QUICK");
    let rounds = if quick { 3 } else { 7 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = target();
    let tokens = if quick { 64 } else { 256 };
    let req = ChatRequest::new(&t.model, vec![ChatMessage::user("Count slowly from one.")])
        .max_tokens(tokens)
        .temperature(0.0);
    let small = ChatRequest::new(&t.model, vec![ChatMessage::user("Hi")]).max_tokens(1);
    // Each request generates one token: a real engine makes requests cost far more.
    let requests = match (quick, t._guest.is_some()) {
        (true, false) => 50,
        (false, false) => 300,
        (true, true) => 10,
        (false, true) => 40,
    };
    let rows = rt.block_on(async {
        let direct = Client::builder()
            .policy(t.policy.clone())
            .upstream(&t.upstream)
            .build()
            .unwrap();
        let client = |pooling: bool| {
            Client::builder()
                .policy(t.policy.clone())
                .upstream(&t.upstream)
                .pooling(pooling)
                .build()
                .unwrap()
        };
        let url = spawn_proxy(client(true)).await;
        let url_unpooled = spawn_proxy(client(false)).await;
        let plain = plain_client();

        // Warm both paths (connections, verdict cache), then alternate rounds.
        stream_direct(&direct, &req).await;
        stream_via_proxy(&plain, &url, &req).await;
        let (mut d_ttft, mut d_tps, mut p_ttft, mut p_tps) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let (ttft, n, total) = stream_direct(&direct, &req).await;
            d_ttft.push(ttft.as_secs_f64() * 1e3);
            d_tps.push(n as f64 / total.as_secs_f64());
            let (ttft, n, total) = stream_via_proxy(&plain, &url, &req).await;
            p_ttft.push(ttft.as_secs_f64() * 1e3);
            p_tps.push(n as f64 / total.as_secs_f64());
        }

        let pooled = direct.clone();
        let unpooled = client(false);
        small_request(&unpooled, &small).await;
        small_via_proxy(&plain, &url_unpooled, &small).await;
        let (mut rps_pooled, mut rps_unpooled, mut rps_cold) = (vec![], vec![], vec![]);
        let (mut rps_proxy, mut rps_proxy_unpooled) = (vec![], vec![]);
        for _ in 0..rounds {
            let t0 = Instant::now();
            for _ in 0..requests {
                small_via_proxy(&plain, &url, &small).await;
            }
            rps_proxy.push(requests as f64 / t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            for _ in 0..requests {
                small_via_proxy(&plain, &url_unpooled, &small).await;
            }
            rps_proxy_unpooled.push(requests as f64 / t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            for _ in 0..requests {
                small_request(&pooled, &small).await;
            }
            rps_pooled.push(requests as f64 / t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            for _ in 0..requests {
                small_request(&unpooled, &small).await;
            }
            rps_unpooled.push(requests as f64 / t0.elapsed().as_secs_f64());
            // A fresh client per request: new connection and full evidence verification.
            let n = (requests / 5).max(2);
            let t0 = Instant::now();
            for _ in 0..n {
                let cold = Client::builder()
                    .policy(t.policy.clone())
                    .upstream(&t.upstream)
                    .build()
                    .unwrap();
                small_request(&cold, &small).await;
            }
            rps_cold.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        vec![
            Row {
                what: "stream tokens/s through chrysalis proxy",
                unit: "tok/s",
                value: median(p_tps),
                baseline_what: "Rust SDK, RA-TLS direct",
                baseline: median(d_tps),
            },
            Row {
                what: "stream TTFT through chrysalis proxy",
                unit: "ms",
                value: median(p_ttft),
                baseline_what: "Rust SDK, RA-TLS direct",
                baseline: median(d_ttft),
            },
            Row {
                what: "requests/s through chrysalis proxy, pooled",
                unit: "req/s",
                value: median(rps_proxy),
                baseline_what: "proxy, new verified connection per request",
                baseline: median(rps_proxy_unpooled),
            },
            Row {
                what: "requests/s, pooled verified connections",
                unit: "req/s",
                value: median(rps_pooled.clone()),
                baseline_what: "new verified connection per request (verdict cached)",
                baseline: median(rps_unpooled),
            },
            Row {
                what: "requests/s, pooled verified connections",
                unit: "req/s",
                value: median(rps_pooled),
                baseline_what: "new connection + full evidence verification per request",
                baseline: median(rps_cold),
            },
        ]
    });
    println!(
        "chrysalis-client bench: upstream {} ({}), {rounds} rounds, medians; {tokens} tokens per stream, {requests} requests per round",
        t.upstream, t.kind,
    );
    println!(
        "{:<44} {:>12}  {:<56} {:>12}  {:>7}",
        "figure", "value", "baseline", "value", "ratio"
    );
    for r in &rows {
        println!(
            "{:<44} {:>8.2} {:<4} {:<56} {:>8.2} {:<4} {:>6.3}x",
            r.what,
            r.value,
            r.unit,
            r.baseline_what,
            r.baseline,
            r.unit,
            r.value / r.baseline
        );
    }
    println!(
        "TTFT added by the proxy: {:.3} ms",
        rows[1].value - rows[1].baseline
    );
    let m = machine();
    println!(
        "summary: streaming through chrysalis proxy vs Rust SDK RA-TLS direct ({}), median of \
         {rounds} interleaved rounds, {tokens} tokens: {:.1} vs {:.1} tok/s ({:.3}x), TTFT \
         {:.3} vs {:.3} ms ({:+.3} ms added by the proxy); machine: {m}",
        t.kind,
        rows[0].value,
        rows[0].baseline,
        rows[0].value / rows[0].baseline,
        rows[1].value,
        rows[1].baseline,
        rows[1].value - rows[1].baseline,
    );
    println!(
        "summary: requests/s through chrysalis proxy, one caller in sequence ({}), median of \
         {rounds} interleaved rounds x {requests}: pooled upstream connections {:.2}, new \
         verified connection per request (verdict cached) {:.2}, pooled {:.2}x; machine: {m}",
        t.kind,
        rows[2].value,
        rows[2].baseline,
        rows[2].value / rows[2].baseline,
    );
    println!(
        "summary: requests/s, Rust SDK direct, one caller in sequence ({}), median of {rounds} \
         interleaved rounds x {requests}: pooled verified connections {:.2}, new connection per \
         request with the verdict cached {:.2} (pooled {:.2}x), new connection and full \
         evidence verification per request {:.2} (pooled {:.2}x); machine: {m}",
        t.kind,
        rows[3].value,
        rows[3].baseline,
        rows[3].value / rows[3].baseline,
        rows[4].baseline,
        rows[4].value / rows[4].baseline,
    );
    // One JSON line per figure for `cargo xtask bench` (schema in tests/src/bin/chrysalis-bench.rs).
    for r in &rows {
        bench_figure::record(
            &json!({"name": format!("{} ({})", r.what, t.kind), "unit": r.unit,
            "value": r.value, "baseline": r.baseline_what, "baseline_value": r.baseline,
            "ratio": r.value / r.baseline, "runs": rounds}),
        )
        .unwrap();
    }
    if let Ok(path) = std::env::var("CHRYSALIS_BENCH_JSON") {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"figure": r.what, "unit": r.unit, "value": r.value,
                       "baseline": r.baseline_what, "baseline_value": r.baseline,
                       "ratio": r.value / r.baseline})
            })
            .collect();
        let tmp = format!("{path}.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&json!({"rounds": rounds, "rows": v})).unwrap(),
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
}

/// Cores, CPU model and the 1-minute load average (the machine is shared: load is noise).
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?", str::trim);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}, load average {load}")
}
