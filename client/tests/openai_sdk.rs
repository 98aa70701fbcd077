//! The official `openai` Python SDK, unchanged, against `chrysalis proxy` in front of fake
//! attested upstreams: models, chat and streaming chat work, the ledger holds one verified
//! receipt per completion with the usage the SDK reports, and an unpinned upstream makes the
//! SDK raise an error naming the reason while the prompt never leaves the client.
//!
//! Needs the test venv (CHRYSALIS_VENV, made from guest/python/requirements-test.txt). Without
//! it the tests print why and pass, except under `CI=true`, where that is a failure.

mod common;

use std::path::PathBuf;
use std::process::Command;

use chrysalis_attestation::Measurement;
use common::upstream::{FakeUpstream, MODEL, Options};
use common::{ProxyProcess, sim_policy_toml};
use serde_json::Value;

const PINNED: Measurement = Measurement([0x5a; 48]);

/// The venv's python when it has the openai package.
fn python() -> Option<PathBuf> {
    let why = match std::env::var_os("CHRYSALIS_VENV") {
        None => "CHRYSALIS_VENV is not set (a venv made from guest/python/requirements-test.txt)"
            .to_owned(),
        Some(v) => {
            let py = PathBuf::from(v).join("bin/python");
            match Command::new(&py).args(["-c", "import openai"]).output() {
                Ok(o) if o.status.success() => return Some(py),
                Ok(o) => format!(
                    "{} cannot import openai: {}",
                    py.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("cannot run {}: {e}", py.display()),
            }
        }
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {why}"
    );
    eprintln!("SKIPPED: {why}");
    None
}

fn run_sdk(py: &PathBuf, proxy: &ProxyProcess, mode: &str) -> Value {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_proxy_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(proxy.url("/v1"))
        .arg(MODEL)
        .arg(mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed: {}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_openai_sdk_works_through_the_proxy_and_every_call_has_a_verified_receipt() {
    let Some(py) = python() else { return };
    let up = FakeUpstream::start(Options::new(PINNED));
    let proxy = ProxyProcess::start(&[up.addr], &sim_policy_toml(up.root, PINNED));
    let got = run_sdk(&py, &proxy, "ok");
    assert_eq!(got["models"], serde_json::json!([MODEL]), "{got}");
    assert!(!got["chat"]["text"].as_str().unwrap().is_empty());
    assert!(got["stream"]["chunks"].as_u64().unwrap() >= 2, "{got}");

    let ledger = proxy.ledger(2);
    assert_eq!(ledger.len(), 2, "one receipt per completion: {ledger:?}");
    assert!(ledger.iter().all(|r| r.verified), "{ledger:?}");
    assert_eq!(
        serde_json::to_value(ledger[0].usage).unwrap(),
        got["chat"]["usage"]
    );
    assert_eq!(
        serde_json::to_value(ledger[1].usage).unwrap(),
        got["stream"]["usage"]
    );
    assert!(!ledger[0].stream && ledger[1].stream);
}

#[test]
fn the_openai_sdk_raises_the_rejection_reason_and_the_prompt_stays_home() {
    let Some(py) = python() else { return };
    let up = FakeUpstream::start(Options::new(Measurement([0x5b; 48])));
    let proxy = ProxyProcess::start(&[up.addr], &sim_policy_toml(up.root, PINNED));
    let canary = "CANARY-0c9d1e-never-upstream";
    let got = run_sdk(&py, &proxy, &format!("reject:{canary}"));
    for call in ["chat", "stream"] {
        let e = &got[call];
        assert_eq!(e["status"], 502, "{got}");
        assert_eq!(e["type"], "chrysalis_attestation_error", "{got}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("measurement not pinned"),
            "{got}"
        );
    }
    assert_eq!(
        up.tcp_accepts(),
        2,
        "one attempt per call: the SDK honoured x-should-retry: false"
    );
    assert_eq!(up.handshakes(), 0);
    assert!(up.received().is_empty());
}
