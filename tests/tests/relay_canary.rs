//! Confidentiality canary (issue 4): an RA-TLS client talks to the real guest runtime
//! (`chrysalis_guest`: attested key, certificate over sim evidence, rustls, hyper, OpenAI API)
//! through the real host agent (`chrysalis_host::agent::run`: relay and sim quote service). A
//! canary placed in the prompt comes back in the response, and a recorder on the relay sees every
//! byte it forwards: the canary must never appear there, in either direction.
//!
//! Transports: the agent's TCP transport on loopback (guest vsock port P = TCP port P + offset), and
//! hybrid vsock (the sim profile's): a Unix socket speaking vhost-device-vsock's `CONNECT`/`OK`
//! protocol in front of the guest, with the guest's sim quote requests arriving on `<uds>_4050`. The only test
//! double is the engine: it echoes the prompt, so that the canary is certainly in the response.
//! The agent quotes the TDX measurements of a test image (`chrysalis_testkit::image`), and
//! the client pins exactly what the measurement calculator computes for those files.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrysalis_attestation::ratls::{self, RaTlsServerVerifier};
use chrysalis_guest::engine::{
    Chunk, Engine, EngineError, EngineEvent, GenerateRequest, Generation, Usage,
};
use chrysalis_guest::evidence::sim::{SimEndpoint, SimQuoteClient};
use chrysalis_guest::tls::CertStore;
use chrysalis_host::HostConfig;
use chrysalis_host::agent::{self, AgentOptions};
use chrysalis_host::relay::{Direction, Observer};
use chrysalis_testkit::image::TestImage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CANARY: &str = "CANARY-7f3a9c-do-not-leak";

/// Records every byte the relay forwards.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Direction, Vec<u8>)>>);

impl Observer for Recorder {
    fn observe(&self, _conn: u64, direction: Direction, bytes: &[u8]) {
        self.0.lock().unwrap().push((direction, bytes.to_vec()));
    }
}

/// An engine that answers with the last message it was given (the test double).
struct EchoEngine;

impl Engine for EchoEngine {
    fn models(&self) -> Vec<String> {
        vec!["echo".into()]
    }
    fn generate(&self, req: GenerateRequest, buffer: usize) -> Result<Generation, EngineError> {
        let text = match (&req.messages, &req.prompt) {
            (Some(m), _) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
            (None, Some(p)) => p.clone(),
            (None, None) => String::new(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        tokio::spawn(async move {
            let _ = tx
                .send(EngineEvent::Chunk(Chunk {
                    text,
                    finish_reason: Some("stop".into()),
                    usage: Some(Usage::new(1, 1)),
                    ..Chunk::default()
                }))
                .await;
        });
        Ok(Generation::new(rx, Box::new(|| {})))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The guest side of hybrid vsock as vhost-device-vsock presents it to the host: a Unix socket
/// that takes `CONNECT <port>\n`, answers `OK <n>\n` and then carries the stream, here to the
/// in-process guest's TCP listener (standing in for the guest kernel's vsock port). The listener
/// is bound by the caller, before the client connects: binding inside the task raced the client
/// (the relay found no socket and closed the connection).
async fn hybrid_mux(l: tokio::net::UnixListener, guest: std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    loop {
        let Ok((s, _)) = l.accept().await else { return };
        tokio::spawn(async move {
            let mut s = tokio::io::BufReader::new(s);
            let mut line = String::new();
            if s.read_line(&mut line).await.is_err() || line.trim() != "CONNECT 8443" {
                return;
            }
            let Ok(mut g) = tokio::net::TcpStream::connect(guest).await else {
                return;
            };
            let mut s = s.into_inner();
            if s.write_all(b"OK 1024\n").await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut s, &mut g).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_only_ciphertext_over_tcp() {
    canary(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_only_ciphertext_over_hybrid_vsock() {
    canary(true).await;
}

async fn canary(hybrid: bool) {
    use chrysalis_attestation::hostcall::{GUEST_TLS_PORT, SIM_QUOTE_PORT};
    let dir = tempfile::tempdir().unwrap();
    let image = TestImage::write(&dir.path().join("image")).unwrap();
    let offset = chrysalis_tests::chain::free_port_offset(&[SIM_QUOTE_PORT])
        .expect("no free loopback port pair");
    let uds = dir.path().join("vsock.sock");

    // The host agent: no VM (the guest runs in this process), the TCP or the hybrid vsock
    // transport, the sim quote service.
    let state = dir.path().join("state");
    let transport = if hybrid {
        format!(
            "kind = \"hybrid\"\nuds_path = {:?}\n",
            uds.display().to_string()
        )
    } else {
        format!("kind = \"tcp\"\ntcp_host = \"127.0.0.1\"\ntcp_port_offset = {offset}\n")
    };
    let cfg = HostConfig::parse(&format!(
        "[image]\nmanifest = {:?}\n\
         [vm]\nplatform = \"sim\"\nvcpus = 2\nmemory_mib = 2048\nlaunch = false\nstate_dir = {:?}\n\
         [transport]\n{transport}\
         [relay]\nlisten = \"127.0.0.1:0\"\ncopy = \"userspace\"\n\
         [admin]\nenabled = false\n",
        image.manifest.display().to_string(),
        state.display().to_string(),
    ))
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(
        cfg,
        AgentOptions {
            relay_observer: Some(recorder.clone()),
            ..AgentOptions::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let start = Instant::now();
    let relay_addr = loop {
        if let Ok(a) = std::fs::read_to_string(state.join("relay.addr")) {
            break a.trim().to_string();
        }
        assert!(!agent.is_finished(), "the agent stopped: {:?}", agent.await);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agent did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The guest runtime: its key, a certificate over evidence from the agent's sim quote service,
    // and the HTTPS server on the guest's "vsock" port.
    let certs = Arc::new(CertStore::generate().unwrap());
    // Over hybrid vsock the guest's connection to host port 4050 arrives on <uds>_4050, which is
    // where vhost-device-vsock would connect for it.
    let endpoint = if hybrid {
        SimEndpoint::Unix(format!("{}_{SIM_QUOTE_PORT}", uds.display()).into())
    } else {
        SimEndpoint::Tcp(format!("127.0.0.1:{}", SIM_QUOTE_PORT as i32 + offset))
    };
    let provider = SimQuoteClient::new(endpoint, Duration::from_secs(30));
    certs
        .renew(&provider, SystemTime::now(), Duration::from_secs(3600))
        .await
        .unwrap();
    let model: chrysalis_guest::config::ModelConfig =
        serde_json::from_value(serde_json::json!({"id": "echo", "root_hash": "ab".repeat(32)}))
            .unwrap();
    let state_g = chrysalis_guest::server::AppState::new(
        chrysalis_guest::config::ServerConfig::default(),
        model,
        Arc::new(EchoEngine),
        certs.clone(),
        "sim",
    );
    let guest_listener = Arc::new(
        tokio::net::TcpListener::bind(("127.0.0.1", (GUEST_TLS_PORT as i32 + offset) as u16))
            .await
            .unwrap(),
    );
    let mux = hybrid.then(|| {
        tokio::spawn(hybrid_mux(
            tokio::net::UnixListener::bind(&uds).unwrap(),
            guest_listener.local_addr().unwrap(),
        ))
    });
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    let guest = tokio::spawn(chrysalis_guest::server::serve(state_g, tls, move || {
        let l = guest_listener.clone();
        async move { l.accept().await.map(|(s, _)| s) }
    }));

    // The client: pins what the calculator computes from the image files, names the sim root.
    let policy = image.sim_tdx_policy().unwrap();
    let verifier = Arc::new(RaTlsServerVerifier::new(Arc::new(policy)));
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(ratls::client_config(verifier.clone())));
    let tcp = tokio::net::TcpStream::connect(&relay_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("chrysalis-guest").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("RA-TLS handshake: {e}; {:?}", verifier.last_rejection()));

    let body = serde_json::json!({
        "model": "echo",
        "messages": [{"role": "user", "content": format!("please repeat {CANARY}")}],
        "max_tokens": 16,
    })
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: chrysalis\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server closes after the response (Connection: close); a TLS close_notify may be missing.
    let _ = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut response))
        .await
        .expect("response within the hang guard");
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(CANARY),
        "the echoed canary must reach the client in plaintext: {response}"
    );

    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    guest.abort();
    if let Some(m) = mux {
        m.abort();
    }

    let seen = recorder.0.lock().unwrap();
    let stream = |d: Direction| -> Vec<u8> {
        seen.iter()
            .filter(|(dir, _)| *dir == d)
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    };
    let (to_guest, from_guest) = (stream(Direction::ToGuest), stream(Direction::FromGuest));
    // The relay did carry the exchange: a TLS handshake record each way, the request and the answer.
    assert_eq!(to_guest.first(), Some(&0x16), "client hello expected");
    assert_eq!(from_guest.first(), Some(&0x16), "server hello expected");
    assert!(to_guest.len() > body.len() && from_guest.len() > CANARY.len());
    for (name, bytes) in [("to the guest", &to_guest), ("from the guest", &from_guest)] {
        assert!(
            !contains(bytes, CANARY.as_bytes()),
            "the canary appeared in the bytes the relay forwarded {name}"
        );
        assert!(
            !contains(bytes, b"chat/completions"),
            "plaintext HTTP {name}"
        );
    }
}
