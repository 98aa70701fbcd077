//! Acceptance of the guest runtime with the real SmolLM2 model through the llama_cpp adapter, on
//! loopback TCP with sim-style evidence: the OpenAI API, validation, limits, cancellation,
//! receipts, the evidence binding, and the official `openai` Python SDK.
//!
//! Needs the test venv (CHRYSALIS_VENV); without it the tests skip with the reason, except under
//! CI=true where they fail.

mod common;

use std::time::Duration;

use base64::Engine as _;
use chrysalis_attestation::Sha256;
use chrysalis_attestation::receipt::{ReceiptError, StreamHasher, verify};
use chrysalis_guest::receipt::RECEIPT_HEADER;
use common::*;
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// The certificate's SPKI (DER) and its EC point.
fn spki_of(cert: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, c) = x509_parser::parse_x509_certificate(cert).unwrap();
    let spki = c.tbs_certificate.subject_pki;
    (spki.raw.to_vec(), spki.subject_public_key.data.to_vec())
}

/// Re-encodes the receipt's payload with one usage number changed, keeping the signature.
fn forged(r: &str) -> String {
    let parts: Vec<&str> = r.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut body: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    body["usage"]["completion_tokens"] =
        json!(body["usage"]["completion_tokens"].as_u64().unwrap() + 1);
    format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&body).unwrap()),
        parts[2]
    )
}

/// A policy that pins the stand-in host's measurement and names the simulated root.
fn sim_policy(mr_td: chrysalis_attestation::Measurement) -> chrysalis_attestation::policy::Policy {
    let mut p = chrysalis_attestation::policy::Policy::pinned(
        vec![chrysalis_attestation::policy::TdxPin {
            name: Some("guest acceptance".into()),
            mr_td,
            rtmr0: None,
            rtmr1: Some(chrysalis_attestation::Measurement([2; 48])),
            rtmr2: None,
            rtmr3: None,
            mr_config_id: None,
            mr_owner: None,
            mr_owner_config: None,
            td_attributes: None,
            xfam: None,
        }],
        vec![],
    );
    p.trust
        .dangerous_simulated_intel_roots
        .push(sim_pki().root_sha256());
    p
}

/// Connects with the attestation crate's RA-TLS verifier; returns the rejection, if any.
async fn ratls_connect(
    addr: &str,
    policy: chrysalis_attestation::policy::Policy,
) -> Result<(), String> {
    use chrysalis_attestation::ratls;
    let verifier =
        std::sync::Arc::new(ratls::RaTlsServerVerifier::new(std::sync::Arc::new(policy)));
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(ratls::client_config(
        verifier.clone(),
    )));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    match tls
        .connect(
            rustls::pki_types::ServerName::try_from("chrysalis.invalid").unwrap(),
            tcp,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{e}: {}",
            verifier
                .last_rejection()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openai_api_validation_receipts_and_evidence_binding() {
    let Some(v) = venv() else { return };
    let sim = sim_service().await;
    let guest = start_guest(
        &sim,
        "max_concurrency = 4\nmax_tokens_cap = 512",
        &llama_engine(&v, 1),
    )
    .await;
    let c = Client::new(&guest.addr);

    // Evidence binding: the certificate served is the one attested, its key is the one bound.
    let att = c.call("GET", "/v1/attestation", b"", &[]).await.json();
    let cert = c.verifier.seen.lock().unwrap()[0].to_vec();
    assert_eq!(att["certificate"]["sha256"], Sha256::digest(&cert).to_hex());
    let (spki, _point) = spki_of(&cert);
    let rd = chrysalis_attestation::ratls::report_data_for_spki(&spki);
    assert_eq!(att["report_data"], rd.to_hex());
    let quote = chrysalis_attestation::TdxQuote::parse(
        &hex::decode(att["bundle"]["evidence"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(quote.report_data(), rd);
    assert_eq!(att["measurements"]["mr_td"], SIM_MR_TD.to_hex());
    assert_eq!(sim.asked.lock().unwrap().as_slice(), &[rd]);
    assert_eq!(
        att["certificate"]["spki_sha256"],
        Sha256::digest(&spki).to_hex()
    );

    // An RA-TLS client whose policy pins the sim measurement connects; a wrong pin fails with the reason.
    ratls_connect(&guest.addr, sim_policy(SIM_MR_TD))
        .await
        .unwrap();
    let e = ratls_connect(
        &guest.addr,
        sim_policy(chrysalis_attestation::Measurement([0x11; 48])),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_lowercase().contains("mr_td") || e.to_lowercase().contains("measurement"),
        "{e}"
    );

    let models = c.call("GET", "/v1/models", b"", &[]).await.json();
    assert_eq!(models["data"][0]["id"], MODEL);

    // Non-stream chat: text, usage, and a receipt that verifies and binds this exchange.
    let req = serde_json::to_vec(&chat(24, false)).unwrap();
    let r = c.call("POST", "/v1/chat/completions", &req, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty());
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    let ct = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&ct));
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + ct
    );
    let rec = r
        .headers
        .get(RECEIPT_HEADER)
        .expect("receipt header")
        .to_str()
        .unwrap()
        .to_owned();
    let rb = verify(&rec, &spki).unwrap();
    rb.check_exchange(&req, Sha256::digest(&r.body)).unwrap();
    assert_eq!(rb.usage.completion_tokens, ct);
    assert_eq!(
        (rb.model.as_str(), rb.model_root_hash.as_str()),
        (MODEL, "ab".repeat(32).as_str())
    );
    assert!(!rb.stream);
    assert_eq!(
        verify(&forged(&rec), &spki).unwrap_err(),
        ReceiptError::Signature
    );
    let mut altered = r.body.clone();
    altered[10] ^= 1;
    assert!(matches!(
        rb.check_exchange(&req, Sha256::digest(&altered)),
        Err(ReceiptError::Mismatch { .. })
    ));

    // Greedy is deterministic through the whole chain.
    let again = c
        .call("POST", "/v1/chat/completions", &req, &[])
        .await
        .json();
    assert_eq!(again["choices"][0]["message"]["content"], text);

    // Stream: ≥ 2 content chunks, then usage (asked for), then [DONE]; receipt in the trailer.
    let mut sreq = chat(24, true);
    sreq["stream_options"] = json!({"include_usage": true});
    let sbytes = serde_json::to_vec(&sreq).unwrap();
    let r = c
        .call(
            "POST",
            "/v1/chat/completions",
            &sbytes,
            &[("te", "trailers")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let payloads = r.sse_payloads();
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let events: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let contents = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert!(contents >= 2, "only {contents} content chunks");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text, "stream and non-stream greedy output agree");
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"].as_u64().unwrap(), ct);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["usage"].is_null())
    );
    let trailer = r
        .trailers
        .as_ref()
        .and_then(|t| t.get(RECEIPT_HEADER))
        .expect("receipt trailer")
        .to_str()
        .unwrap()
        .to_owned();
    let rb = verify(&trailer, &spki).unwrap();
    let mut h = StreamHasher::new();
    h.sse_text(&r.body);
    rb.check_exchange(&sbytes, h.finish()).unwrap();
    assert!(rb.stream);
    assert_eq!(
        verify(&forged(&trailer), &spki).unwrap_err(),
        ReceiptError::Signature
    );
    let mut altered = r.body.clone();
    let at = altered.len() / 2;
    altered[at] ^= 1;
    let mut h2 = StreamHasher::new();
    h2.sse_text(&altered);
    assert!(matches!(
        rb.check_exchange(&sbytes, h2.finish()),
        Err(ReceiptError::Mismatch { .. })
    ));

    // Without TE: trailers, no trailer (HTTP/1.1 forbids unasked trailers) but the stream is intact.
    let r = c
        .call(
            "POST",
            "/v1/chat/completions",
            &serde_json::to_vec(&chat(8, true)).unwrap(),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.trailers.is_none());
    assert_eq!(r.sse_payloads().last().map(String::as_str), Some("[DONE]"));

    // Completions endpoint.
    let r = c
        .json(
            "POST",
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "The sea is", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["choices"][0]["text"].as_str().is_some());

    // Bad input.
    let r = c
        .call("POST", "/v1/chat/completions", b"{\"model\": ", &[])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_json");
    let mut unknown = chat(8, false);
    unknown["logit_bias"] = json!({});
    let r = c.json("POST", "/v1/chat/completions", &unknown).await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("logit_bias"),
        "{e}"
    );
    assert_eq!(e["error"]["param"], "logit_bias");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let big = format!(
        "{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(2 << 20)
    );
    let r = c
        .call("POST", "/v1/chat/completions", big.as_bytes(), &[])
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    let r = c
        .json("POST", "/v1/chat/completions", &chat(513, false))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "max_tokens_exceeded");
    let mut n2 = chat(8, false);
    n2["n"] = json!(2);
    assert_eq!(
        c.json("POST", "/v1/chat/completions", &n2).await.status,
        400
    );
    assert_eq!(
        c.call("GET", "/v1/chat/completions", b"", &[]).await.status,
        405
    );
    assert_eq!(c.call("GET", "/nope", b"", &[]).await.status, 404);

    let h = c.call("GET", "/healthz", b"", &[]).await.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["served"], 5);
    assert_eq!(h["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_cap_refuses_without_queueing_and_disconnects_free_slots() {
    let Some(v) = venv() else { return };
    let sim = sim_service().await;
    let guest = start_guest(
        &sim,
        "max_concurrency = 4\nretry_after_secs = 2",
        &llama_engine(&v, 1),
    )
    .await;
    let c = Client::new(&guest.addr);
    let body = serde_json::to_vec(&chat(96, true)).unwrap();

    let all = async {
        // Ten streams at once: exactly four admitted, six refused at once (before any admitted
        // stream has finished: nothing waits in a queue).
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (c, body, finished) = (c.clone(), body.clone(), finished.clone());
                tokio::spawn(async move {
                    let r = c.call("POST", "/v1/chat/completions", &body, &[]).await;
                    let done_before = finished.load(std::sync::atomic::Ordering::SeqCst);
                    if r.status == 200 {
                        finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    (r, done_before)
                })
            })
            .collect();
        let mut ok = 0;
        let mut busy = 0;
        for t in tasks {
            let (r, done_before) = t.await.unwrap();
            match r.status {
                200 => {
                    ok += 1;
                    assert_eq!(r.sse_payloads().last().map(String::as_str), Some("[DONE]"));
                }
                429 => {
                    busy += 1;
                    assert_eq!(
                        done_before, 0,
                        "a 429 came only after an admitted stream finished"
                    );
                    assert_eq!(r.headers["retry-after"], "2");
                    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
                }
                s => panic!(
                    "unexpected status {s}: {}",
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        assert_eq!((ok, busy), (4, 6));
        let h = wait_health(&c, Duration::from_secs(60), |h| h["in_flight"] == 0).await;
        assert_eq!(h["rejected_busy"], 6);
        assert_eq!(h["cancelled"], 0);

        // Disconnect mid-stream: the generation is cancelled and its slot comes back.
        let p = c
            .send(
                "POST",
                "/v1/chat/completions",
                serde_json::to_vec(&chat(400, true)).unwrap(),
                &[],
            )
            .await;
        assert_eq!(p.response.status(), 200);
        let mut b = p.response.into_body();
        let mut got = 0;
        while got < 2 {
            let f = http_body_util::BodyExt::frame(&mut b)
                .await
                .unwrap()
                .unwrap();
            if f.data_ref().is_some() {
                got += 1;
            }
        }
        p.conn.abort();
        drop(b);
        let h = wait_health(&c, Duration::from_secs(60), |h| {
            h["cancelled"] == 1 && h["in_flight"] == 0
        })
        .await;
        assert_eq!(h["stuck"], 0);
        // All four slots are free: four more streams are all admitted.
        let again: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                let body = serde_json::to_vec(&chat(4, true)).unwrap();
                tokio::spawn(async move {
                    c.call("POST", "/v1/chat/completions", &body, &[])
                        .await
                        .status
                })
            })
            .collect();
        for t in again {
            assert_eq!(t.await.unwrap(), 200);
        }
    };
    // Nothing may hang: a liveness bound on the whole scenario, not a speed goal.
    tokio::time::timeout(Duration::from_secs(900), all)
        .await
        .expect("the scenario hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_works_unchanged() {
    let Some(v) = venv() else { return };
    let sim = sim_service().await;
    let guest = start_guest(&sim, "max_concurrency = 4", &llama_engine(&v, 1)).await;
    let c = Client::new(&guest.addr);
    c.call("GET", "/healthz", b"", &[]).await;
    let cert = c.verifier.seen.lock().unwrap()[0].to_vec();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(&cert)
    );
    let pem_path = guest.dir.path().join("server.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let out = tokio::process::Command::new(v.root.join("bin/python"))
        .arg(repo_root().join("guest/tests/python/openai_sdk_check.py"))
        .args([
            "--base-url",
            &format!(
                "https://localhost:{}/v1",
                guest.addr.rsplit(':').next().unwrap()
            ),
        ])
        .arg("--ca")
        .arg(&pem_path)
        .args(["--model", MODEL])
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{report}\n--- guest log ---\n{}",
        guest.log()
    );
    assert!(report.contains("openai sdk: all checks passed"), "{report}");
}
