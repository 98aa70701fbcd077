//! `chrysalis proxy` end to end against fake attested upstreams (RA-TLS with simulated
//! evidence, signed receipts): passthrough, receipts and the ledger, attestation errors,
//! failover, retries, certificate rotation, streaming without buffering, and the CLI's guards.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrysalis_attestation::Measurement;
use common::upstream::{FakeUpstream, MODEL, Options, Receipts};
use common::{ProxyProcess, chat, plain_client, post_json, sim_policy_toml, sim_snp_policy_toml};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const PINNED: Measurement = Measurement([0x5a; 48]);
const UNPINNED: Measurement = Measurement([0x5b; 48]);

fn policy(up: &FakeUpstream) -> String {
    sim_policy_toml(up.root, PINNED)
}

/// The `usage` of the last SSE data payload that has one.
fn stream_usage(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .rfind(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .unwrap_or(Value::Null)
}

fn summary(ledger: &std::path::Path) -> (Option<i32>, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(["receipts", "summary", "--json"])
        .arg(ledger)
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn passthrough_with_verified_receipts_and_pooled_connections() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    let c = plain_client();

    let resp = c
        .get(proxy.url("/v1/models").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let models: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);

    let (status, headers, body) = post_json(
        &c,
        &proxy.url("/v1/chat/completions"),
        &chat("hello there", 5, false),
    )
    .await;
    assert_eq!(status, 200, "{}", proxy.log());
    let plain: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        plain["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4 "
    );
    assert!(
        headers.contains_key("chrysalis-receipt"),
        "the receipt header passes through"
    );

    let (status, headers, body) = post_json(
        &c,
        &proxy.url("/v1/chat/completions"),
        &chat("stream me", 7, true),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8_lossy(&body);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(text.matches("\"content\":\"tok").count(), 7);

    // The requests reached the upstream unchanged.
    let received = up.received();
    assert_eq!(received.len(), 3);
    assert_eq!(
        serde_json::from_slice::<Value>(&received[1]).unwrap(),
        chat("hello there", 5, false)
    );

    let ledger = proxy.ledger(2);
    assert_eq!(ledger.len(), 2, "models.list has no receipt");
    for r in &ledger {
        assert!(r.verified, "{r:?}\n{}", proxy.log());
        assert_eq!(r.reason, None);
        assert_eq!(r.upstream, up.addr.to_string());
        assert_eq!(r.model.as_deref(), Some(MODEL));
        assert_eq!(r.cert_sha256, up.cert_sha256());
        assert!(r.receipt.is_some());
    }
    assert!(!ledger[0].stream && ledger[1].stream);
    assert_eq!(
        serde_json::to_value(ledger[0].usage).unwrap(),
        plain["usage"]
    );
    assert_eq!(
        serde_json::to_value(ledger[1].usage).unwrap(),
        stream_usage(&body)
    );

    let (code, s) = summary(&proxy.ledger_path());
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["rows"][0]["verified"], 2);
    assert_eq!(
        s["total"]["completion_tokens"], 12,
        "5 + 7 completion tokens: {s}"
    );

    // Pooling: many requests, (nearly) one verified connection. hyper returns a connection to
    // the pool from its own task, so a request may rarely race it and open a second one.
    for i in 0..20 {
        let (status, _, _) = post_json(
            &c,
            &proxy.url("/v1/chat/completions"),
            &chat(&format!("{i}"), 1, i % 2 == 0),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert!(
        up.handshakes() <= 3,
        "23 requests took {} verified handshakes",
        up.handshakes()
    );
    assert_eq!(proxy.ledger(22).len(), 22);
}

/// SEV-SNP evidence from the simulated AMD PKI travels the same chain: RA-TLS certificate,
/// the proxy's verification, signed receipts in the ledger. Without the simulated AMD root
/// named (the TDX sim root is not enough), the prompt never leaves the proxy.
#[tokio::test]
async fn an_snp_sim_upstream_is_verified_and_its_receipts_recorded() {
    let up = FakeUpstream::start(Options {
        snp: true,
        ..Options::new(PINNED)
    });
    let proxy = ProxyProcess::start(&[up.addr], &sim_snp_policy_toml(up.root, PINNED));
    let c = plain_client();
    let (status, _, body) = post_json(
        &c,
        &proxy.url("/v1/chat/completions"),
        &chat("hello snp", 3, false),
    )
    .await;
    assert_eq!(status, 200, "{}", proxy.log());
    let plain: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(plain["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    let records = proxy.ledger(1);
    assert!(records[0].verified, "{records:?}");
    assert_eq!(records[0].cert_sha256, up.cert_sha256());

    // The TDX sim root named instead of the AMD one: refused before the prompt is sent.
    let canary = "snp-canary-never-forwarded";
    let wrong = ProxyProcess::start(
        &[up.addr],
        &sim_policy_toml(
            chrysalis_attestation::sim::SimPki::from_seed(chrysalis_attestation::sim::DEFAULT_SEED)
                .root_sha256(),
            PINNED,
        ),
    );
    let (status, _, body) = post_json(
        &c,
        &wrong.url("/v1/chat/completions"),
        &chat(canary, 3, false),
    )
    .await;
    assert_eq!(status, 502, "{}", wrong.log());
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("snp evidence chains to an untrusted root"),
        "{err}"
    );
    assert!(
        !up.received()
            .iter()
            .any(|b| String::from_utf8_lossy(b).contains(canary)),
        "the prompt must not reach an unverified node"
    );
}

#[tokio::test]
async fn failed_receipts_are_recorded_and_the_response_still_delivered() {
    for (mode, reason) in [
        (Receipts::Tampered, "response_sha256"),
        (Receipts::Missing, "no receipt"),
    ] {
        let mut o = Options::new(PINNED);
        o.receipts = mode;
        let up = FakeUpstream::start(o);
        let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
        let c = plain_client();
        let (status, _, body) =
            post_json(&c, &proxy.url("/v1/chat/completions"), &chat("x", 3, false)).await;
        assert_eq!(status, 200);
        assert!(serde_json::from_slice::<Value>(&body).is_ok());
        let (status, _, body) =
            post_json(&c, &proxy.url("/v1/chat/completions"), &chat("x", 3, true)).await;
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("[DONE]"));

        let ledger = proxy.ledger(2);
        for r in &ledger {
            assert!(!r.verified, "{mode:?}: {r:?}");
            assert_eq!(r.usage, None, "unverified usage is not recorded as usage");
            let why = r.reason.as_deref().unwrap();
            assert!(why.contains(reason), "{mode:?}: {why}");
        }
        assert!(proxy.log().contains("receipt FAILED"), "{}", proxy.log());
        let (code, s) = summary(&proxy.ledger_path());
        assert_eq!(code, Some(1), "failed receipts make the summary exit 1");
        assert_eq!(s["failed"].as_array().unwrap().len(), 2);
        assert_eq!(s["total"]["total_tokens"], 0);
    }
}

#[tokio::test]
async fn an_unpinned_upstream_gets_an_attestation_error_and_never_the_prompt() {
    let up = FakeUpstream::start(Options::new(UNPINNED));
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    let c = plain_client();
    let canary = "CANARY-7f3a9c-do-not-leak";
    for stream in [false, true] {
        let (status, headers, body) = post_json(
            &c,
            &proxy.url("/v1/chat/completions"),
            &chat(canary, 3, stream),
        )
        .await;
        assert_eq!(status, 502);
        assert_eq!(headers["x-should-retry"], "false");
        let e: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(e["error"]["type"], "chrysalis_attestation_error");
        assert_eq!(e["error"]["code"], "attestation_rejected");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains("measurement not pinned"), "{msg}");
        assert!(msg.contains(&up.addr.to_string()), "{msg}");
    }
    assert!(up.tcp_accepts() >= 2, "the proxy did try the upstream");
    assert_eq!(up.handshakes(), 0, "no TLS handshake completed");
    assert!(up.received().is_empty(), "nothing was sent");
    assert!(
        !up.received()
            .concat()
            .windows(canary.len())
            .any(|w| w == canary.as_bytes())
    );
    assert!(proxy.ledger_path().metadata().map_or(0, |m| m.len()) == 0);
}

#[tokio::test]
async fn a_gpu_policy_refuses_nodes_without_valid_gpu_evidence_and_names_the_check() {
    let nv = chrysalis_attestation::sim::SimNvidiaPki::from_seed(
        chrysalis_attestation::sim::DEFAULT_SEED,
    );
    let gpu_table = |roots: bool| {
        let roots = if roots {
            format!(
                "dangerous_simulated_nvidia_roots = [\"{}\", \"{}\"]\n",
                nv.device_root_sha256(),
                nv.rim_root_sha256()
            )
        } else {
            String::new()
        };
        // The simulated NVIDIA PKI answers OCSP: the default (answers required) holds.
        format!("[gpu]\nrequire = true\n{roots}")
    };
    let cpu_only = FakeUpstream::start(Options::new(PINNED));
    let with_gpu = FakeUpstream::start(Options {
        gpu: true,
        ..Options::new(PINNED)
    });
    let c = plain_client();
    for (up, roots, expect) in [
        (&cpu_only, true, Some("no GPU evidence")),
        (
            &with_gpu,
            false,
            Some("GPU 0: no NVIDIA device identity root"),
        ),
        (&with_gpu, true, None),
    ] {
        let policy = format!("{}{}", policy(up), gpu_table(roots));
        let proxy = ProxyProcess::start(&[up.addr], &policy);
        let (status, _, body) = post_json(
            &c,
            &proxy.url("/v1/chat/completions"),
            &chat("hi", 3, false),
        )
        .await;
        match expect {
            Some(reason) => {
                assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
                let e: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(e["error"]["code"], "attestation_rejected");
                let msg = e["error"]["message"].as_str().unwrap();
                assert!(msg.contains(reason), "{msg}");
            }
            None => assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body)),
        }
    }
    assert!(
        cpu_only.received().is_empty(),
        "nothing reached the refused node"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[closed], &policy(&up));
    let (status, _, body) = post_json(
        &plain_client(),
        &proxy.url("/v1/chat/completions"),
        &chat("x", 1, false),
    )
    .await;
    assert_eq!(status, 503);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["error"]["type"], "chrysalis_upstream_unavailable");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&closed.to_string()) && msg.contains("unreachable"),
        "{msg}"
    );
}

#[tokio::test]
async fn requests_fail_over_when_an_upstream_dies() {
    let mut a = FakeUpstream::start(Options::new(PINNED));
    let b = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[a.addr, b.addr], &policy(&a));
    let c = plain_client();
    for i in 0..6 {
        let (status, _, _) = post_json(
            &c,
            &proxy.url("/v1/chat/completions"),
            &chat("x", 1, i % 2 == 1),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert!(
        !a.received().is_empty() && !b.received().is_empty(),
        "load is spread: a {} b {}",
        a.received().len(),
        b.received().len()
    );
    a.kill();
    for i in 0..8 {
        let (status, _, body) = post_json(
            &c,
            &proxy.url("/v1/chat/completions"),
            &chat("after", 2, i % 2 == 1),
        )
        .await;
        assert_eq!(
            status,
            200,
            "{}\n{}",
            String::from_utf8_lossy(&body),
            proxy.log()
        );
    }
    let ledger = proxy.ledger(14);
    assert!(ledger.iter().all(|r| r.verified), "{ledger:?}");
    let after: Vec<_> = ledger[6..].iter().map(|r| r.upstream.clone()).collect();
    assert!(after.iter().all(|u| *u == b.addr.to_string()), "{after:?}");
}

#[tokio::test]
async fn busy_upstreams_are_retried_elsewhere() {
    let mut o = Options::new(PINNED);
    o.status = Some(429);
    let busy = FakeUpstream::start(o.clone());
    let ok = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[busy.addr, ok.addr], &policy(&ok));
    let c = plain_client();
    for i in 0..4 {
        let (status, _, _) = post_json(
            &c,
            &proxy.url("/v1/chat/completions"),
            &chat("x", 1, i % 2 == 1),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert!(!busy.received().is_empty(), "the busy upstream was tried");
    assert_eq!(ok.received().len(), 4);
    assert!(
        proxy
            .ledger(4)
            .iter()
            .all(|r| r.upstream == ok.addr.to_string())
    );

    // When every upstream is busy the caller gets the last answer as it was.
    o.status = Some(503);
    let busy2 = FakeUpstream::start(o);
    let proxy = ProxyProcess::start(&[busy.addr, busy2.addr], &policy(&ok));
    let (status, headers, _) =
        post_json(&c, &proxy.url("/v1/chat/completions"), &chat("x", 1, false)).await;
    assert!(status == 429 || status == 503, "{status}");
    assert_eq!(headers["retry-after"], "1");
}

#[tokio::test]
async fn a_rotated_certificate_is_verified_again() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    let c = plain_client();
    let first_cert = up.cert_sha256();
    let (status, _, _) =
        post_json(&c, &proxy.url("/v1/chat/completions"), &chat("x", 1, false)).await;
    assert_eq!(status, 200);

    // New key and certificate over evidence the policy does not pin: the next connection must
    // be judged on it, not on a verdict cached for the address.
    up.rotate(UNPINNED);
    let (status, _, body) =
        post_json(&c, &proxy.url("/v1/chat/completions"), &chat("x", 1, false)).await;
    assert_eq!(
        status,
        502,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        proxy.log()
    );
    assert!(String::from_utf8_lossy(&body).contains("measurement not pinned"));

    // Rotated again to pinned evidence: accepted, and receipts verify under the new key.
    up.rotate(PINNED);
    let (status, _, _) =
        post_json(&c, &proxy.url("/v1/chat/completions"), &chat("x", 1, true)).await;
    assert_eq!(status, 200);
    let ledger = proxy.ledger(2);
    assert!(ledger.iter().all(|r| r.verified), "{ledger:?}");
    assert_eq!(ledger[0].cert_sha256, first_cert);
    assert_eq!(ledger[1].cert_sha256, up.cert_sha256());
    assert_ne!(first_cert, up.cert_sha256());
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut o = Options::new(PINNED);
    o.gate = Some(gate.clone());
    let up = FakeUpstream::start(o);
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    let req = http::Request::post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("x", 4, true).to_string())))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream holds back everything after its first chunk until the gate opens, so the
    // first chunk can only arrive here if the proxy forwards it on its own.
    let first = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the first chunk never arrived: the proxy buffers streams")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("tok0"));
    gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    assert!(proxy.ledger(1)[0].verified);
}

/// Sends a streaming chat request over a raw connection, reads until `needle` has arrived,
/// then closes the connection, as the `openai` SDK does after `[DONE]`.
async fn stream_and_hang_up(proxy: &ProxyProcess, needle: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = chat("x", 4, true).to_string();
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            proxy.addr,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf))
            .await
            .expect("the stream stalled")
            .unwrap();
        assert_ne!(
            n,
            0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_caller_leaving_after_done_still_gets_the_receipt_recorded() {
    // The receipt trailer comes after [DONE], when the caller has already closed.
    let mut o = Options::new(PINNED);
    o.trailer_delay = Duration::from_millis(300);
    let up = FakeUpstream::start(o);
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    stream_and_hang_up(&proxy, "data: [DONE]").await;
    let ledger = proxy.ledger(1);
    assert!(ledger[0].verified, "{ledger:?}\n{}", proxy.log());
    assert_eq!(ledger[0].usage.unwrap().completion_tokens, 4);

    // Leaving before [DONE] is a cancellation: recorded as abandoned, unverified.
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut o = Options::new(PINNED);
    o.gate = Some(gate.clone());
    let up = FakeUpstream::start(o);
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    stream_and_hang_up(&proxy, "tok0").await;
    let ledger = proxy.ledger(1);
    assert!(!ledger[0].verified);
    assert!(
        ledger[0].reason.as_deref().unwrap().contains("abandoned"),
        "{ledger:?}"
    );
    gate.notify_one();
}

#[tokio::test]
async fn guards_host_size_and_paths() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    let c = plain_client();
    let req = http::Request::get(proxy.url("/v1/models"))
        .header("host", "rebound.example:80")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 403);
    let big = serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(1 << 20)}]});
    let (status, _, body) = post_json(&c, &proxy.url("/v1/chat/completions"), &big).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let resp = c.get(proxy.url("/healthz").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(up.received().is_empty());
}

/// What a web page can make a browser send without a CORS preflight: a `text/plain` POST
/// carrying its own Origin. The proxy must refuse it before any upstream sees the prompt.
#[tokio::test]
async fn cross_site_requests_are_refused() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[up.addr], &policy(&up));
    let c = plain_client();
    let body = chat("from a web page", 3, false).to_string();
    let send = |headers: &[(&str, String)]| {
        let mut b = http::Request::post(proxy.url("/v1/chat/completions"));
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let req = b.body(Full::new(Bytes::from(body.clone()))).unwrap();
        let c = c.clone();
        async move {
            let resp = c.request(req).await.unwrap();
            let status = resp.status();
            let ct = resp.headers()["content-type"].clone();
            let v: Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert_eq!(ct, "application/json");
            (status, v)
        }
    };
    let json = || ("content-type", "application/json".to_string());
    let page = || ("origin", "https://evil.example".to_string());

    // A no-cors "simple" POST without a foreign Origin (one from the proxy's own address, or
    // none) is still refused for its body type.
    let own = format!("http://localhost:{}", proxy.addr.port());
    for headers in [
        vec![
            ("content-type", "text/plain;charset=UTF-8".to_string()),
            ("origin", own.clone()),
        ],
        vec![("content-type", "text/plain".to_string())],
        vec![],
    ] {
        let (status, v) = send(&headers).await;
        assert_eq!(status, 415, "{headers:?}: {v}");
        assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{v}"
        );
    }
    // JSON from a foreign page (it would need a preflight, but refuse it regardless), from
    // another loopback port, or flagged cross-site by the browser.
    for headers in [
        // What a page sends no-cors: refused for its origin before anything else.
        vec![
            ("content-type", "text/plain;charset=UTF-8".to_string()),
            page(),
        ],
        vec![json(), page()],
        vec![json(), ("origin", "http://localhost:1".to_string())],
        vec![json(), ("origin", "null".to_string())],
        vec![json(), ("sec-fetch-site", "cross-site".to_string())],
    ] {
        let (status, v) = send(&headers).await;
        assert_eq!(status, 403, "{headers:?}: {v}");
        assert_eq!(v["error"]["code"], "forbidden_origin", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert!(
        up.received().is_empty(),
        "a refused request reached upstream"
    );

    // SDKs send no Origin; a page served from the proxy's own address may call it.
    for headers in [vec![json()], vec![json(), ("origin", own)]] {
        let (status, v) = send(&headers).await;
        assert_eq!(status, 200, "{headers:?}: {v}");
    }
    assert_eq!(up.received().len(), 2);
}

#[test]
fn the_cli_refuses_a_public_listen_address_and_documents_its_options() {
    let up_root =
        chrysalis_attestation::sim::SimPki::from_seed(chrysalis_attestation::sim::DEFAULT_SEED)
            .root_sha256();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, sim_policy_toml(up_root, PINNED)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args([
            "proxy",
            "--listen",
            "0.0.0.0:0",
            "--upstream",
            "127.0.0.1:1",
            "--policy",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dangerous-listen-any"));

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(["proxy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--listen",
        "--upstream",
        "--policy",
        "--receipts",
        "--dangerous-listen-any",
        "--connect-timeout",
        "--pool-idle-timeout",
        "--max-body",
        "--ready-file",
        "chrysalis_attestation_error",
    ] {
        assert!(help.contains(opt), "proxy --help lacks {opt}");
    }
}
