//! Test fixtures: an RA-TLS server with simulated evidence on loopback.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chrysalis_attestation::ratls::{self, AttestedKey};
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
use chrysalis_attestation::{Evidence, Measurement, Sha256};
use tokio::io::AsyncWriteExt;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);
impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// An RA-TLS server whose sim evidence reports `mr_td`, `rtmr[1] = [1;48]`; it answers every
/// connection with a fixed HTTP response. Runs on its own thread until the process ends.
pub fn spawn_sim_server(mr_td: Measurement) -> (SocketAddr, Sha256) {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let m = td_measurements(
        mr_td,
        [
            Measurement::ZERO,
            Measurement([1; 48]),
            Measurement::ZERO,
            Measurement::ZERO,
        ],
    );
    let bundle = Evidence::tdx(
        pki.quote(&SimTdReport::new(m, key.report_data())),
        Some(pki.collateral(now() - 3600, 86_400).unwrap()),
    )
    .unwrap();
    let cert = ratls::issue_certificate(&key, &bundle, now() - 60, 3600).unwrap();
    let config = ratls::server_config(Arc::new(Fixed(key.certified_key(cert).unwrap())));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
    });
    (addr, pki.root_sha256())
}

/// A policy naming the sim root and pinning `mr_td` and RTMR1.
pub fn sim_policy_toml(root: Sha256, mr_td: Measurement) -> String {
    format!(
        "version = 1\n[trust]\ndangerous_simulated_intel_roots = [\"{root}\"]\n[[tdx]]\nname = \"test node\"\nmr_td = \"{mr_td}\"\nrtmr1 = \"{}\"\n",
        Measurement([1; 48])
    )
}

/// A policy naming the simulated AMD root `ark` and pinning the SNP launch digest `measurement`.
pub fn sim_snp_policy_toml(ark: Sha256, measurement: Measurement) -> String {
    format!(
        "version = 1\n[trust]\ndangerous_simulated_amd_roots = [\"{ark}\"]\n[[snp]]\nname = \"test node\"\nmeasurement = \"{measurement}\"\nvmpl = 0\n"
    )
}

pub mod upstream;

/// A running `chrysalis proxy`, killed on drop.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `chrysalis proxy` on a free loopback port in front of `upstreams` with `policy`
    /// and a ledger in its temp dir; waits (bounded) until it is listening.
    pub fn start(upstreams: &[SocketAddr], policy: &str) -> Self {
        Self::start_with(upstreams, policy, &[])
    }

    /// As [`Self::start`], with extra command-line arguments.
    pub fn start_with(upstreams: &[SocketAddr], policy: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, policy).unwrap();
        let ready = dir.path().join("ready");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chrysalis"));
        cmd.args(["proxy", "--listen", "127.0.0.1:0", "--policy"])
            .arg(&p)
            .arg("--receipts")
            .arg(dir.path().join("receipts.jsonl"))
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info,chrysalis_client=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap());
        for u in upstreams {
            cmd.arg("--upstream").arg(u.to_string());
        }
        cmd.args(extra);
        let child = cmd.spawn().unwrap();
        let mut me = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                me.addr = a.trim().parse().unwrap();
                return me;
            }
            if let Some(status) = me.child.try_wait().unwrap() {
                panic!("chrysalis proxy exited with {status}: {}", me.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "proxy did not start: {}",
                me.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn ledger_path(&self) -> std::path::PathBuf {
        self.dir.path().join("receipts.jsonl")
    }

    /// The ledger once it holds at least `n` records (waits, bounded: lines are appended by a
    /// writer thread right after each response ends).
    pub fn ledger(&self, n: usize) -> Vec<chrysalis_client::ReceiptRecord> {
        wait_ledger(&self.ledger_path(), n, &self.log())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a ledger once it holds at least `n` records (bounded wait).
pub fn wait_ledger(
    path: &std::path::Path,
    n: usize,
    context: &str,
) -> Vec<chrysalis_client::ReceiptRecord> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let records = chrysalis_client::ledger::read(path).unwrap_or_default();
        if records.len() >= n {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ledger has {} of {n} records: {context}",
            records.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 client for talking to the proxy.
pub type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

pub fn plain_client() -> PlainClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// POSTs JSON and returns status, headers and the whole body.
pub async fn post_json(
    c: &PlainClient,
    url: &str,
    body: &serde_json::Value,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// A chat request for the fake upstream's model.
pub fn chat(prompt: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": upstream::MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    });
    if stream {
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v
}
