//! The localhost admin endpoint: `GET /metrics` (Prometheus text) and `GET /status` (JSON).
//!
//! It binds only loopback addresses (validated in the config) and serves nothing secret: the host
//! never holds a key or plaintext.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::relay::{ConnectionInfo, Relay};
use crate::sim::{SimMeasurements, SimSnpMeasurements};
use crate::supervisor::VmStatus;

/// What /status says about the image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    /// The manifest file.
    pub manifest: String,
    /// SHA-256 of the manifest file, hex.
    pub manifest_digest: String,
    /// The expected measurements as the manifest states them, when it does.
    pub expected_measurements: Option<serde_json::Value>,
}

/// Everything the admin endpoint reports.
#[derive(Clone)]
pub struct AdminState {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// When the agent started.
    pub started: Instant,
    /// The VM's status.
    pub vm: watch::Receiver<VmStatus>,
    /// The platform profile name.
    pub platform: &'static str,
    /// The image, when a manifest was loaded.
    pub image: Option<ImageInfo>,
    /// The relay, for its open connections.
    pub relay: Option<Arc<Relay>>,
    /// The relay's public address.
    pub relay_listen: Option<SocketAddr>,
    /// What the sim quote service quotes (sim profile).
    pub sim_quote: Option<SimMeasurements>,
    /// What the sim service signs SNP reports over (sim-snp profile).
    pub sim_snp: Option<SimSnpMeasurements>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct RelayStatus {
    listen: Option<String>,
    guest_port: Option<u32>,
    active_connections: u64,
    connections: Vec<ConnectionInfo>,
}

#[derive(Serialize)]
struct Status<'a> {
    uptime_seconds: u64,
    platform: &'a str,
    vm: VmStatus,
    image: Option<&'a ImageInfo>,
    sim_quote: Option<&'a SimMeasurements>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sim_snp: Option<&'a SimSnpMeasurements>,
    relay: RelayStatus,
}

impl AdminState {
    /// The /status document.
    pub fn status_json(&self) -> String {
        let relay = RelayStatus {
            listen: self.relay_listen.map(|a| a.to_string()),
            guest_port: self.relay.as_ref().map(|r| r.config().guest_port),
            active_connections: crate::metrics::get(&self.metrics.relay_active),
            connections: self
                .relay
                .as_ref()
                .map(|r| r.connections())
                .unwrap_or_default(),
        };
        let status = Status {
            uptime_seconds: self.started.elapsed().as_secs(),
            platform: self.platform,
            vm: self.vm.borrow().clone(),
            image: self.image.as_ref(),
            sim_quote: self.sim_quote.as_ref(),
            sim_snp: self.sim_snp.as_ref(),
            relay,
        };
        serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The /metrics document.
    pub fn metrics_text(&self) -> String {
        let state = self.vm.borrow().state.as_str();
        self.metrics
            .render_prometheus(state, self.started.elapsed().as_secs())
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |code, ctype: &'static str, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = code;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(ctype),
            );
            r
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET\n".into(),
            );
        }
        match req.uri().path() {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics_text(),
            ),
            "/status" => reply(StatusCode::OK, "application/json", self.status_json()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /metrics or /status\n".into(),
            ),
        }
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    let state = Arc::new(state);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.respond(&req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn request(addr: SocketAddr, head: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (h, b) = out.split_once("\r\n\r\n").unwrap();
        (h.lines().next().unwrap().to_string(), b.to_string())
    }

    #[tokio::test]
    async fn serves_metrics_and_status_and_nothing_else() {
        let metrics = Arc::new(Metrics::default());
        metrics
            .relay_total
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let state = AdminState {
            metrics,
            started: Instant::now(),
            vm: watch::channel(VmStatus::external()).1,
            platform: "sim",
            image: Some(ImageInfo {
                manifest: "/m.json".into(),
                manifest_digest: "ab".repeat(32),
                expected_measurements: None,
            }),
            relay: None,
            relay_listen: None,
            sim_quote: None,
            sim_snp: None,
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, state, async move {
            let _ = rx.await;
        }));

        let (status, body) = request(addr, "GET /metrics HTTP/1.1").await;
        assert!(status.contains("200"), "{status}");
        assert!(
            body.contains("chrysalis_relay_connections_total 3\n"),
            "{body}"
        );
        assert!(
            body.contains("chrysalis_vm_state{state=\"external\"} 1\n"),
            "{body}"
        );

        let (status, body) = request(addr, "GET /status HTTP/1.1").await;
        assert!(status.contains("200"), "{status}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["vm"]["state"], "external");
        assert_eq!(v["platform"], "sim");
        assert_eq!(v["image"]["manifest_digest"], "ab".repeat(32));

        assert!(
            request(addr, "GET /secret HTTP/1.1")
                .await
                .0
                .contains("404")
        );
        assert!(
            request(addr, "POST /metrics HTTP/1.1")
                .await
                .0
                .contains("405")
        );
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
