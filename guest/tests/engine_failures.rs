//! The server survives its engine: an adapter that cannot even be imported, exceptions before and
//! during a stream, and client disconnects, all through the real pyo3 bridge with a model-free
//! Python adapter (guest/tests/python). Needs only Debian's python3, no venv.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn engine(adapter: &str) -> String {
    format!(
        "[engine]\nadapter = \"{adapter}\"\npython_path = [{:?}, {:?}]\n[engine.options]\ndelay_s = 0.02\n",
        repo_root().join("guest/python").display().to_string(),
        repo_root().join("guest/tests/python").display().to_string(),
    )
}

fn chat(content: &str, max_tokens: u32, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_fails_to_import_leaves_the_server_up_and_says_why() {
    let sim = sim_service().await;
    let guest = start_guest(&sim, "", &engine("raising_import")).await;
    let c = Client::new(&guest.addr);
    let h = c.call("GET", "/healthz", b"", &[]).await.json();
    assert_eq!(h["status"], "degraded");
    assert!(
        h["engine_error"]
            .as_str()
            .unwrap()
            .contains("deliberately broken"),
        "{h}"
    );
    let r = c
        .call("POST", "/v1/chat/completions", &chat("hi", 4, false), &[])
        .await;
    assert_eq!(r.status, 503);
    let e = r.json();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ImportError: this adapter is deliberately broken"),
        "{e}"
    );
    // Still serving.
    assert_eq!(c.call("GET", "/v1/attestation", b"", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exceptions_become_errors_and_disconnects_cancel() {
    let sim = sim_service().await;
    let guest = start_guest(&sim, "max_concurrency = 2", &engine("scripted_adapter")).await;
    let c = Client::new(&guest.addr);

    let r = c
        .call(
            "POST",
            "/v1/chat/completions",
            &chat("boom-now", 8, false),
            &[],
        )
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["error"]["message"],
        "RuntimeError: boom requested before any output"
    );
    let r = c
        .call(
            "POST",
            "/v1/chat/completions",
            &chat("boom-now", 8, true),
            &[],
        )
        .await;
    assert_eq!(
        r.status, 500,
        "an engine failing before output is a plain 500, not a stream"
    );

    // Failing mid-stream: the stream carries an OpenAI-style error event and no [DONE].
    let r = c
        .call(
            "POST",
            "/v1/chat/completions",
            &chat("boom-later", 8, true),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let p = r.sse_payloads();
    let last: serde_json::Value = serde_json::from_str(p.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["message"],
        "ValueError: boom requested mid-stream"
    );
    assert!(!p.iter().any(|x| x == "[DONE]"));

    // The server and the engine keep working.
    let r = c
        .call(
            "POST",
            "/v1/chat/completions",
            &chat("hello", 3, false),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "w0 w1 w2");

    // A disconnect mid-stream cancels the Python task and frees the slot.
    let p = c
        .send(
            "POST",
            "/v1/chat/completions",
            chat("long", 2000, true),
            &[],
        )
        .await;
    assert_eq!(p.response.status(), 200);
    let mut b = p.response.into_body();
    let _ = http_body_util::BodyExt::frame(&mut b)
        .await
        .unwrap()
        .unwrap();
    p.conn.abort();
    drop(b);
    let h = wait_health(&c, Duration::from_secs(60), |h| {
        h["cancelled"] == 1 && h["in_flight"] == 0
    })
    .await;
    assert_eq!(h["engine_errors"], 3);
    assert_eq!(h["stuck"], 0);
    // Both slots free: two long streams are admitted at once, a third is refused.
    let a = c
        .send(
            "POST",
            "/v1/chat/completions",
            chat("long", 2000, true),
            &[],
        )
        .await;
    let b2 = c
        .send(
            "POST",
            "/v1/chat/completions",
            chat("long", 2000, true),
            &[],
        )
        .await;
    assert_eq!(
        (a.response.status().as_u16(), b2.response.status().as_u16()),
        (200, 200)
    );
    let r = c
        .call("POST", "/v1/chat/completions", &chat("x", 2, false), &[])
        .await;
    assert_eq!(r.status, 429);
}
