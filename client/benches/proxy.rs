//! Benchmark of the client side, each figure next to its baseline in the same run:
//!
//! * streaming tokens/s and time to first token (TTFT) through `chrysalis proxy` (plain HTTP on
//!   loopback, then RA-TLS) vs the Rust SDK talking RA-TLS directly;
//! * requests/s with pooled connections vs a new verified connection per request (verdict
//!   cached per certificate), and vs a new connection with a cold verdict cache (full evidence
//!   verification every time).
//!
//! `cargo bench -p chrysalis-client --bench proxy`. By default the upstream is the tests' fake
//! attested node (sim evidence, signed receipts, tokens as fast as it can send them), which
//! isolates what the client adds. To measure against a real node instead set
//! `CHRYSALIS_BENCH_UPSTREAM=HOST:PORT`, `CHRYSALIS_BENCH_POLICY=FILE` and
//! `CHRYSALIS_BENCH_MODEL=ID`. `CHRYSALIS_BENCH_QUICK=1` runs fewer rounds;
//! `CHRYSALIS_BENCH_JSON=FILE` also writes the figures as JSON. Figures are medians over rounds.

#[allow(unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrysalis_attestation::{Measurement, Policy};
use chrysalis_client::{ChatMessage, ChatRequest, Client, Proxy};
use http_body_util::{BodyExt, Full};
use serde_json::json;

struct Target {
    upstream: String,
    policy: Policy,
    model: String,
    _fake: Option<common::upstream::FakeUpstream>,
}

fn target() -> Target {
    if let Ok(up) = std::env::var("CHRYSALIS_BENCH_UPSTREAM") {
        let policy = std::env::var("CHRYSALIS_BENCH_POLICY")
            .expect("CHRYSALIS_BENCH_POLICY=FILE goes with CHRYSALIS_BENCH_UPSTREAM");
        return Target {
            upstream: up,
            policy: Policy::from_toml(&std::fs::read_to_string(policy).unwrap()).unwrap(),
            model: std::env::var("CHRYSALIS_BENCH_MODEL")
                .unwrap_or_else(|_| "smollm2-135m-instruct".into()),
            _fake: None,
        };
    }
    let mr_td = Measurement([0x5a; 48]);
    let fake = common::upstream::FakeUpstream::start(common::upstream::Options::new(mr_td));
    Target {
        upstream: fake.addr.to_string(),
        policy: Policy::from_toml(&common::sim_policy_toml(fake.root, mr_td)).unwrap(),
        model: common::upstream::MODEL.into(),
        _fake: Some(fake),
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

async fn stream_via_proxy(c: &common::PlainClient, url: &str, req: &ChatRequest) -> StreamRun {
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
    let quick = std::env::var("CHRYSALIS_BENCH_QUICK").is_ok();
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
    let requests = if quick { 50 } else { 300 };
    let rows = rt.block_on(async {
        let direct = Client::builder()
            .policy(t.policy.clone())
            .upstream(&t.upstream)
            .build()
            .unwrap();
        let proxy = Proxy::new(
            Client::builder()
                .policy(t.policy.clone())
                .upstream(&t.upstream)
                .build()
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap()
        );
        tokio::spawn(proxy.serve(listener, std::future::pending()));
        let plain = common::plain_client();

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
        let unpooled = Client::builder()
            .policy(t.policy.clone())
            .upstream(&t.upstream)
            .pooling(false)
            .build()
            .unwrap();
        small_request(&unpooled, &small).await;
        let (mut rps_pooled, mut rps_unpooled, mut rps_cold) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
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
            let n = requests / 5;
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
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "chrysalis-client bench: upstream {} ({}), {rounds} rounds, medians; {tokens} tokens per stream, {requests} requests per round; {cores} cores",
        t.upstream,
        if t._fake.is_some() {
            "fake attested node, no engine"
        } else {
            "real node"
        },
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
