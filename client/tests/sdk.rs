//! The Rust SDK (`chrysalis_client::Client`) against fake attested upstreams: typed calls
//! return verified receipts, the raw hyper client carries the verified peer, rejections and
//! receipt failures are typed errors, and requests fail over.

mod common;

use chrysalis_attestation::{Measurement, Policy, VerifiedPeer};
use chrysalis_client::{ChatMessage, ChatRequest, Client, ClientError};
use common::sim_policy_toml;
use common::upstream::{FakeUpstream, MODEL, Options, Receipts};
use http_body_util::BodyExt;

const PINNED: Measurement = Measurement([0x5a; 48]);

fn client(up: &[&FakeUpstream], ledger: Option<&std::path::Path>) -> Client {
    let mut b = Client::builder()
        .policy(Policy::from_toml(&sim_policy_toml(up[0].root, PINNED)).unwrap())
        .upstreams(up.iter().map(|u| u.addr.to_string()));
    if let Some(l) = ledger {
        b = b.receipts_ledger(l);
    }
    b.build().unwrap()
}

fn request(prompt: &str, n: u64) -> ChatRequest {
    ChatRequest::new(MODEL, vec![ChatMessage::user(prompt)]).max_tokens(n)
}

#[tokio::test]
async fn typed_calls_return_verified_receipts() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("r.jsonl");
    let c = client(&[&up], Some(&ledger));

    assert_eq!(c.models().await.unwrap().data[0].id, MODEL);

    let r = c.chat_completion(&request("hello", 3)).await.unwrap();
    assert_eq!(r.completion.text(), "tok0 tok1 tok2 ");
    assert_eq!(Some(r.receipt.body().usage), r.completion.usage);
    assert_eq!(r.receipt.body().signer_spki_sha256, up.spki_sha256());
    assert_eq!(r.upstream, up.addr.to_string());

    let mut s = c
        .chat_completion_stream(&request("hello", 5))
        .await
        .unwrap();
    let (mut text, mut usage) = (String::new(), None);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        text.push_str(chunk.text());
        usage = chunk.usage.or(usage);
    }
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 ");
    let receipt = s.receipt().expect("verified at the end");
    assert!(receipt.body().stream);
    assert_eq!(Some(receipt.body().usage), usage);

    c.ledger().unwrap().sync().unwrap();
    let records = chrysalis_client::ledger::read(&ledger).unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.verified));
    assert_eq!(records[1].receipt.as_deref(), Some(receipt.jws()));
}

#[tokio::test]
async fn the_raw_hyper_client_carries_the_verified_peer() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let c = client(&[&up], None);
    let resp = c
        .hyper()
        .get(format!("https://{}/v1/models", up.addr).parse().unwrap())
        .await
        .unwrap();
    let peer = resp.extensions().get::<VerifiedPeer>().unwrap().clone();
    assert_eq!(peer.cert_sha256(), up.cert_sha256());
    assert_eq!(peer.spki_sha256(), up.spki_sha256());
    assert!(!peer.evidence().verdict().measurements.debug());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains(MODEL));
}

#[tokio::test]
async fn a_rejected_upstream_is_a_typed_error_and_gets_nothing() {
    let up = FakeUpstream::start(Options::new(Measurement([0x5b; 48])));
    let c = client(&[&up], None);
    let err = c
        .chat_completion(&request("CANARY-sdk-3e1", 3))
        .await
        .unwrap_err();
    let rejections = err.rejections();
    assert_eq!(rejections.len(), 1, "{err}");
    assert_eq!(rejections[0].0, up.addr.to_string());
    assert!(
        rejections[0]
            .1
            .to_string()
            .contains("measurement not pinned"),
        "{err}"
    );
    assert!(err.to_string().contains("measurement not pinned"));
    assert_eq!(up.handshakes(), 0);
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn receipt_failures_are_errors_that_keep_the_completion() {
    let mut o = Options::new(PINNED);
    o.receipts = Receipts::Tampered;
    let up = FakeUpstream::start(o);
    let c = client(&[&up], None);
    match c.chat_completion(&request("x", 3)).await {
        Err(ClientError::Receipt {
            reason, completion, ..
        }) => {
            assert!(reason.contains("response_sha256"), "{reason}");
            assert!(completion.unwrap().text().contains("toK0"));
        }
        other => panic!("expected a receipt error, got {other:?}"),
    }
    let mut s = c.chat_completion_stream(&request("x", 3)).await.unwrap();
    let mut items = vec![];
    while let Some(i) = s.next().await {
        items.push(i);
    }
    assert!(items[..items.len() - 1].iter().all(Result::is_ok));
    assert!(
        matches!(items.last(), Some(Err(ClientError::Receipt { .. }))),
        "{items:?}"
    );
    assert!(s.receipt().is_none());
}

#[tokio::test]
async fn requests_fail_over_to_a_live_upstream() {
    let mut dead = FakeUpstream::start(Options::new(PINNED));
    let live = FakeUpstream::start(Options::new(PINNED));
    let c = client(&[&dead, &live], None);
    dead.kill();
    for _ in 0..4 {
        let r = c.chat_completion(&request("x", 1)).await.unwrap();
        assert_eq!(r.upstream, live.addr.to_string());
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = Client::builder()
        .policy(Policy::from_toml(&sim_policy_toml(live.root, PINNED)).unwrap())
        .upstream(closed.to_string())
        .build()
        .unwrap();
    let err = nowhere.models().await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
}

#[test]
fn the_builder_refuses_what_it_cannot_use() {
    let policy = || {
        Policy::from_toml(&sim_policy_toml(
            chrysalis_attestation::Sha256([0; 32]),
            PINNED,
        ))
        .unwrap()
    };
    let e = Client::builder()
        .upstream("127.0.0.1:1")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("no policy"), "{e}");
    let e = Client::builder().policy(policy()).build().unwrap_err();
    assert!(e.to_string().contains("no upstream"), "{e}");
    let e = Client::builder()
        .policy(policy())
        .upstream("node.example")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("no port"), "{e}");
    assert!(
        Client::builder()
            .policy(policy())
            .upstream("https://node.example:8443/")
            .build()
            .is_ok()
    );
}
