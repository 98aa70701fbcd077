//! Guest→host services on host-side vsock ports: the sim quote service and the collateral service.
//!
//! Wire format: `chrysalis_attestation::hostcall` (a 4-byte big-endian length, then JSON; one request
//! and one response per connection). The host is untrusted, so nothing here is a security check:
//! quotes and collateral are verified by whoever uses them. What this module guarantees is that a
//! misbehaving guest connection cannot hurt the agent: frames over `MAX_MESSAGE` are refused before
//! anything is allocated, a slow sender is cut off by a deadline, and concurrent requests are capped.
//!
//! The sim quote signer sits behind the [`QuoteSigner`] seam: the agent's binary wires the simulated
//! PKI (`attestation::sim`) with the measurements of the artifacts it launched.
//!
//! The sim quote service answers only the VM this agent launched ([`LaunchedGuest`]): a quote
//! carries that VM's measurements, so another VM on the same host that obtained one could pass for
//! it with any key it likes. What identifies the peer depends on the transport; see
//! [`LaunchedGuest::admits`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrysalis_attestation::ReportData;
use chrysalis_attestation::hostcall::{self, Request, Response};
use dcap_qvl::QuoteCollateralV3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::collateral::CollateralCache;
use crate::metrics::{Metrics, inc};
use crate::transport::{GuestListener, GuestPeer, GuestStream};

/// A signed simulated quote and, optionally, collateral that verifies it.
#[derive(Clone, Debug)]
pub struct SimQuote {
    /// The TDX-format quote.
    pub quote: Vec<u8>,
    /// Collateral for it (the sim PKI's TCB info, QE identity and CRLs), if the signer provides it.
    pub collateral: Option<QuoteCollateralV3>,
}

/// Signs simulated quotes: the host playing the TDX hardware in the `sim` profile.
///
/// Implementations quote over `report_data` with the measurements of what the host launched; they
/// run on a blocking thread, so they may be slow.
pub trait QuoteSigner: Send + Sync {
    /// A quote binding `report_data`.
    fn quote(
        &self,
        report_data: &ReportData,
    ) -> Result<SimQuote, Box<dyn std::error::Error + Send + Sync>>;
}

/// A signed simulated SEV-SNP report and the certificates that verify it.
#[derive(Clone, Debug)]
pub struct SimSnpEvidence {
    /// The attestation report (1184 bytes).
    pub report: Vec<u8>,
    /// The VCEK, DER.
    pub vcek: Vec<u8>,
    /// ASK and ARK, PEM.
    pub chain: String,
}

/// Signs simulated SEV-SNP reports: the host playing the AMD PSP in the `sim-snp` profile.
///
/// Implementations sign over `report_data` with the launch digest of what the host launched;
/// they run on a blocking thread.
pub trait SnpReportSigner: Send + Sync {
    /// A report binding `report_data`.
    fn snp_report(
        &self,
        report_data: &ReportData,
    ) -> Result<SimSnpEvidence, Box<dyn std::error::Error + Send + Sync>>;
}

/// Errors of serving one guest connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Reading the request or writing the response failed.
    #[error("socket")]
    Io(#[from] std::io::Error),
    /// The request frame was oversized or malformed.
    #[error("bad request: {0}")]
    Frame(#[from] hostcall::HostcallError),
    /// The guest did not send a whole request before the deadline.
    #[error("request not received within {0:?}")]
    Deadline(Duration),
}

/// Limits for a service port.
#[derive(Clone, Copy, Debug)]
pub struct ServiceLimits {
    /// Connections served at once; more wait.
    pub max_concurrent: usize,
    /// Time allowed to receive a request.
    pub request_deadline: Duration,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 16,
            request_deadline: Duration::from_secs(10),
        }
    }
}

/// The VM this agent launched, as a guest→host connection can identify it.
///
/// Cheap to clone; clones share the multiplexer pid, which the supervisor updates on every
/// (re)start ([`crate::Supervisor::with_multiplexer_pid`]).
#[derive(Clone, Debug)]
pub struct LaunchedGuest {
    cid: u32,
    multiplexer_pid: Arc<AtomicU32>,
    agent_uid: u32,
}

impl LaunchedGuest {
    /// The VM with context id `cid` (`vm.guest_cid`), launched by this process.
    pub fn new(cid: u32) -> Self {
        Self {
            cid,
            multiplexer_pid: Arc::new(AtomicU32::new(0)),
            agent_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// The cell holding the pid of the hybrid vsock multiplexer (vhost-device-vsock) now serving
    /// this VM; 0 while none runs.
    pub fn multiplexer_pid(&self) -> Arc<AtomicU32> {
        self.multiplexer_pid.clone()
    }

    /// Whether `peer` is this VM; the error says why not.
    ///
    /// * AF_VSOCK: the peer's CID must be `vm.guest_cid`. The host kernel assigns CIDs, so no
    ///   other VM can present this one.
    /// * Hybrid vsock: the protocol carries no CID. A guest's connection to host port P arrives on
    ///   the Unix socket `<uds>_P`, opened by the multiplexer for its VM; the only identity is the
    ///   connecting process (`SO_PEERCRED`). While this agent runs a multiplexer (it launched the
    ///   VM), the peer must be that process: it serves exactly one VM, `guest-cid=vm.guest_cid`.
    ///   With no multiplexer of ours running (`vm.launch = false`: the guest or its VMM was started
    ///   by someone else) the peer must run as this agent's user.
    /// * TCP (development): nothing identifies a VM; every peer is admitted.
    pub fn admits(&self, peer: &GuestPeer) -> Result<(), String> {
        match *peer {
            GuestPeer::Vsock { cid, .. } if cid == self.cid => Ok(()),
            GuestPeer::Vsock { cid, .. } => Err(format!(
                "vsock CID {cid} is not the VM this agent launched (CID {})",
                self.cid
            )),
            GuestPeer::Unix { pid, uid } => match self.multiplexer_pid.load(Ordering::SeqCst) {
                0 if uid == self.agent_uid => Ok(()),
                0 => Err(format!(
                    "peer uid {uid} is not this agent's ({}) and no multiplexer of this agent runs",
                    self.agent_uid
                )),
                m if pid.and_then(|p| u32::try_from(p).ok()) == Some(m) => Ok(()),
                m => Err(format!(
                    "{peer} is not the vhost-device-vsock (pid {m}) serving the VM this agent                      launched (CID {})",
                    self.cid
                )),
            },
            GuestPeer::Tcp(_) => Ok(()),
        }
    }
}

/// Which peers a service port answers.
#[derive(Clone, Debug)]
pub enum Admission {
    /// Everyone: for what is public anyway (collateral).
    Anyone,
    /// Only the VM this agent launched.
    LaunchedGuest(LaunchedGuest),
}

impl Admission {
    fn admits(&self, peer: &GuestPeer) -> Result<(), String> {
        match self {
            Admission::Anyone => Ok(()),
            Admission::LaunchedGuest(g) => g.admits(peer),
        }
    }
}

/// The simulated GPU every sim profile offers: one H100 of `sim::SimNvidiaPki` (well-known seed)
/// with `sim::SimGpu`'s default versions and measurements, reporting over `nonce`, with the
/// simulated responder's OCSP answers dated by the host's clock. Like sim quotes it proves
/// nothing about hardware: only a policy naming the simulated NVIDIA roots accepts it.
fn sim_gpu_record(nonce: &[u8; 32]) -> Result<Vec<u8>, chrysalis_attestation::gpu::RecordError> {
    use chrysalis_attestation::sim::{DEFAULT_SEED, SimGpu, SimNvidiaPki};
    static PKI: std::sync::LazyLock<SimNvidiaPki> =
        std::sync::LazyLock::new(|| SimNvidiaPki::from_seed(DEFAULT_SEED));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PKI.record(&SimGpu::default(), nonce, now).to_der()
}

/// Which service a port runs.
#[derive(Clone)]
pub enum Service {
    /// The sim quote service.
    SimQuote(Arc<dyn QuoteSigner>),
    /// The sim quote service of the `sim-snp` profile: SEV-SNP reports, for both `sim_snp_report`
    /// and `sim_quote` requests (a guest whose `sim_platform` is `host` asks with the latter).
    SimSnp(Arc<dyn SnpReportSigner>),
    /// The collateral service.
    Collateral(Arc<CollateralCache>),
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Service {
    fn name(&self) -> &'static str {
        match self {
            Service::SimQuote(_) => "sim_quote",
            Service::SimSnp(_) => "sim_quote (sim-snp)",
            Service::Collateral(_) => "collateral",
        }
    }

    fn counters<'m>(
        &self,
        m: &'m Metrics,
    ) -> (
        &'m std::sync::atomic::AtomicU64,
        &'m std::sync::atomic::AtomicU64,
    ) {
        match self {
            Service::SimQuote(_) | Service::SimSnp(_) => {
                (&m.service_requests.quote, &m.service_errors.quote)
            }
            Service::Collateral(_) => {
                (&m.service_requests.collateral, &m.service_errors.collateral)
            }
        }
    }

    /// Answers one request. Never fails: problems become [`Response::Error`] with a message.
    pub async fn answer(&self, request: Request) -> Response {
        let error = |message: String| Response::Error { message };
        match (self, request) {
            (Service::SimQuote(signer), Request::SimQuote { report_data }) => {
                let signer = signer.clone();
                match tokio::task::spawn_blocking(move || signer.quote(&report_data)).await {
                    Ok(Ok(q)) => Response::Quote {
                        quote: q.quote,
                        collateral: q.collateral,
                    },
                    Ok(Err(e)) => error(format!("sim quote signer failed: {e}")),
                    Err(e) => error(format!("sim quote signer panicked: {e}")),
                }
            }
            (
                Service::SimSnp(signer),
                Request::SimSnpReport { report_data } | Request::SimQuote { report_data },
            ) => {
                let signer = signer.clone();
                match tokio::task::spawn_blocking(move || signer.snp_report(&report_data)).await {
                    Ok(Ok(r)) => Response::SnpReport {
                        report: r.report,
                        vcek: r.vcek,
                        chain: Some(r.chain),
                    },
                    Ok(Err(e)) => error(format!("sim SNP report signer failed: {e}")),
                    Err(e) => error(format!("sim SNP report signer panicked: {e}")),
                }
            }
            (Service::SimQuote(_) | Service::SimSnp(_), Request::SimGpu { nonce }) => {
                match tokio::task::spawn_blocking(move || sim_gpu_record(&nonce)).await {
                    Ok(Ok(record)) => Response::Gpu { record },
                    Ok(Err(e)) => error(format!("sim GPU signer failed: {e}")),
                    Err(e) => error(format!("sim GPU signer panicked: {e}")),
                }
            }
            (Service::SimQuote(_), Request::SimSnpReport { .. }) => error(
                "this host simulates TDX (profile sim), not SEV-SNP: it signs sim_quote requests only"
                    .into(),
            ),
            (Service::Collateral(cache), Request::Collateral) => match cache.current() {
                Some(c) => Response::Collateral {
                    collateral: (*c).clone(),
                },
                None => error("no collateral available yet".into()),
            },
            (s, other) => error(format!(
                "this port serves {} requests, not {other:?}",
                s.name()
            )),
        }
    }

    /// Reads one request from `stream`, answers it, and closes.
    async fn serve_connection(
        &self,
        mut stream: GuestStream,
        limits: ServiceLimits,
    ) -> Result<Response, ServiceError> {
        let read = async {
            let mut prefix = [0u8; 4];
            stream.read_exact(&mut prefix).await?;
            let len = hostcall::body_len(prefix)?;
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await?;
            Ok::<_, ServiceError>(body)
        };
        let response = match tokio::time::timeout(limits.request_deadline, read).await {
            Err(_) => return Err(ServiceError::Deadline(limits.request_deadline)),
            Ok(Err(ServiceError::Frame(e))) => {
                // Tell the guest why before closing; it is its own bug.
                let r = Response::Error {
                    message: format!("bad request: {e}"),
                };
                write_response(&mut stream, &r).await?;
                return Err(ServiceError::Frame(e));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(body)) => match hostcall::decode_body::<Request>(&body) {
                Ok(req) => self.answer(req).await,
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            },
        };
        write_response(&mut stream, &response).await?;
        Ok(response)
    }
}

async fn write_response(stream: &mut GuestStream, response: &Response) -> Result<(), ServiceError> {
    let frame = hostcall::encode(response).or_else(|e| {
        hostcall::encode(&Response::Error {
            message: format!("response could not be encoded: {e}"),
        })
    })?;
    stream.write_all(&frame).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Serves `service` on `listener` to everyone until `shutdown` resolves.
pub async fn serve(
    listener: GuestListener,
    service: Service,
    limits: ServiceLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    serve_only(
        listener,
        service,
        Admission::Anyone,
        limits,
        metrics,
        shutdown,
    )
    .await;
}

/// Serves `service` on `listener` until `shutdown` resolves, to the peers `admission` admits.
/// Any other peer gets an `error` response naming why, and nothing else.
pub async fn serve_only(
    listener: GuestListener,
    service: Service,
    admission: Admission,
    limits: ServiceLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    tracing::info!(
        service = service.name(),
        on = listener.describe(),
        "guest service listening"
    );
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            s = listener.accept_peer() => s,
        };
        let (mut stream, peer) = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = service.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let service = service.clone();
        let metrics = metrics.clone();
        let admitted = admission.admits(&peer);
        tasks.spawn(async move {
            let _permit = permit;
            let (ok, err) = service.counters(&metrics);
            if let Err(why) = admitted {
                inc(err);
                tracing::warn!(service = service.name(), %peer, %why, "connection refused");
                // Before reading anything: the request is not this peer's to make.
                let r = Response::Error {
                    message: format!("refused: {why}"),
                };
                let _ = tokio::time::timeout(limits.request_deadline, async {
                    write_response(&mut stream, &r).await?;
                    // Read what the peer sent (bounded) until it closes: closing with its request
                    // unread would reset the connection and lose the answer.
                    let mut sink = [0u8; 4096];
                    let mut left = hostcall::MAX_MESSAGE + 4;
                    while left > 0 {
                        match stream.read(&mut sink).await? {
                            0 => break,
                            n => left = left.saturating_sub(n),
                        }
                    }
                    Ok::<_, ServiceError>(())
                })
                .await;
                return;
            }
            match service.serve_connection(stream, limits).await {
                Ok(Response::Error { message }) => {
                    inc(err);
                    tracing::warn!(service = service.name(), %message, "request answered with an error");
                }
                Ok(_) => inc(ok),
                Err(e) => {
                    inc(err);
                    tracing::warn!(service = service.name(), error = %e, "request failed");
                }
            }
        });
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{HybridVsockTransport, Transport};
    use tokio::net::UnixStream;

    struct FixedSigner;
    impl QuoteSigner for FixedSigner {
        fn quote(
            &self,
            rd: &ReportData,
        ) -> Result<SimQuote, Box<dyn std::error::Error + Send + Sync>> {
            if rd.0[0] == 0xee {
                return Err("refusing this one".into());
            }
            Ok(SimQuote {
                quote: rd.0.to_vec(),
                collateral: None,
            })
        }
    }

    async fn roundtrip(path: &std::path::Path, frame: &[u8]) -> Response {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(frame).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        hostcall::decode(&out).unwrap()
    }

    struct FixedSnp;
    impl SnpReportSigner for FixedSnp {
        fn snp_report(
            &self,
            rd: &ReportData,
        ) -> Result<SimSnpEvidence, Box<dyn std::error::Error + Send + Sync>> {
            Ok(SimSnpEvidence {
                report: rd.0.to_vec(),
                vcek: vec![1],
                chain: "chain".into(),
            })
        }
    }

    #[tokio::test]
    async fn both_sim_profiles_sign_gpu_reports_over_the_nonce_and_collateral_does_not() {
        use chrysalis_attestation::gpu::{GpuRecord, GpuReport};
        for service in [
            Service::SimQuote(Arc::new(FixedSigner)),
            Service::SimSnp(Arc::new(FixedSnp)),
        ] {
            let Response::Gpu { record } = service.answer(Request::SimGpu { nonce: [7; 32] }).await
            else {
                panic!("no GPU record from {service:?}");
            };
            let record = GpuRecord::from_der(&record).unwrap();
            let report = GpuReport::parse(&record.gpus[0].report).unwrap();
            assert_eq!(report.request_nonce, [7; 32]);
            // With the simulated responder's OCSP answers, dated by the host's clock.
            let gpu = &record.gpus[0];
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let root = gpu.chain.last().unwrap();
            let verdict = chrysalis_attestation::gpu::ocsp::check_chain_except_leaf(
                &gpu.chain, root, &gpu.ocsp, now,
            )
            .unwrap();
            assert_eq!(verdict.answers().len(), 1);
        }
        let collateral = Service::Collateral(Arc::new(CollateralCache::new()));
        assert!(matches!(
            collateral.answer(Request::SimGpu { nonce: [7; 32] }).await,
            Response::Error { .. }
        ));
    }

    #[tokio::test]
    async fn sim_snp_service_answers_both_request_kinds_and_sim_refuses_snp() {
        let snp = Service::SimSnp(Arc::new(FixedSnp));
        for req in [
            Request::SimSnpReport {
                report_data: ReportData([4; 64]),
            },
            Request::SimQuote {
                report_data: ReportData([4; 64]),
            },
        ] {
            match snp.answer(req).await {
                Response::SnpReport {
                    report,
                    vcek,
                    chain,
                } => {
                    assert_eq!(report, vec![4; 64]);
                    assert_eq!((vcek, chain.as_deref()), (vec![1], Some("chain")));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            snp.answer(Request::Collateral).await,
            Response::Error { .. }
        ));
        let tdx = Service::SimQuote(Arc::new(FixedSigner));
        match tdx
            .answer(Request::SimSnpReport {
                report_data: ReportData([4; 64]),
            })
            .await
        {
            Response::Error { message } => assert!(message.contains("not SEV-SNP"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sim_quote_port_answers_quotes_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = HybridVsockTransport::new(dir.path().join("v.sock"));
        let l = t.listen(hostcall::SIM_QUOTE_PORT).await.unwrap();
        let path = t.listener_path(hostcall::SIM_QUOTE_PORT);
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            l,
            Service::SimQuote(Arc::new(FixedSigner)),
            ServiceLimits {
                max_concurrent: 2,
                request_deadline: Duration::from_millis(300),
            },
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));

        let req = hostcall::encode(&Request::SimQuote {
            report_data: ReportData([7; 64]),
        })
        .unwrap();
        match roundtrip(&path, &req).await {
            Response::Quote { quote, collateral } => {
                assert_eq!(quote, vec![7; 64]);
                assert!(collateral.is_none());
            }
            other => panic!("{other:?}"),
        }
        let req = hostcall::encode(&Request::SimQuote {
            report_data: ReportData([0xee; 64]),
        })
        .unwrap();
        assert!(
            matches!(roundtrip(&path, &req).await, Response::Error { message } if message.contains("refusing"))
        );
        // The wrong kind of request for this port.
        let req = hostcall::encode(&Request::Collateral).unwrap();
        assert!(
            matches!(roundtrip(&path, &req).await, Response::Error { message } if message.contains("sim_quote"))
        );
        // An oversized frame is refused before its body is read.
        let huge = ((hostcall::MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert!(
            matches!(roundtrip(&path, &huge).await, Response::Error { message } if message.contains("exceeds"))
        );
        // Malformed JSON.
        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{x}");
        assert!(matches!(
            roundtrip(&path, &junk).await,
            Response::Error { .. }
        ));
        // A stalled sender is cut off at the deadline: the connection closes with no answer.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(&[0, 0]).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());

        assert_eq!(crate::metrics::get(&metrics.service_requests.quote), 1);
        assert_eq!(crate::metrics::get(&metrics.service_errors.quote), 5);
        tx.send(()).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn only_the_launched_cid_is_admitted_over_vsock() {
        let g = LaunchedGuest::new(3);
        assert!(g.admits(&GuestPeer::Vsock { cid: 3, port: 1024 }).is_ok());
        for cid in [2, 4, 1, u32::MAX] {
            let err = g.admits(&GuestPeer::Vsock { cid, port: 1024 }).unwrap_err();
            assert!(err.contains(&format!("CID {cid} ")), "{err}");
        }
        // Without a multiplexer of ours, a Unix peer must be this agent's user.
        let me = nix::unistd::geteuid().as_raw();
        assert!(
            g.admits(&GuestPeer::Unix {
                pid: Some(1),
                uid: me
            })
            .is_ok()
        );
        assert!(
            g.admits(&GuestPeer::Unix {
                pid: Some(1),
                uid: me.wrapping_add(1)
            })
            .is_err()
        );
    }

    /// Over hybrid vsock the sim quote port answers only the multiplexer serving the launched VM:
    /// the peer is identified by SO_PEERCRED on the real socket.
    #[tokio::test]
    async fn sim_quotes_only_for_the_launched_guests_multiplexer() {
        let dir = tempfile::tempdir().unwrap();
        let t = HybridVsockTransport::new(dir.path().join("v.sock"));
        let l = t.listen(hostcall::SIM_QUOTE_PORT).await.unwrap();
        let path = t.listener_path(hostcall::SIM_QUOTE_PORT);
        let metrics = Arc::new(Metrics::default());
        let guest = LaunchedGuest::new(3);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_only(
            l,
            Service::SimQuote(Arc::new(FixedSigner)),
            Admission::LaunchedGuest(guest.clone()),
            ServiceLimits::default(),
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        let req = hostcall::encode(&Request::SimQuote {
            report_data: ReportData([7; 64]),
        })
        .unwrap();
        // Another process is the multiplexer: this one is refused, with no quote.
        let other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        guest.multiplexer_pid().store(other.id(), Ordering::SeqCst);
        match roundtrip(&path, &req).await {
            Response::Error { message } => {
                assert!(message.contains("refused"), "{message}");
                assert!(message.contains(&other.id().to_string()), "{message}");
            }
            r => panic!("answered another peer: {r:?}"),
        }
        // This process as the multiplexer: answered.
        guest
            .multiplexer_pid()
            .store(std::process::id(), Ordering::SeqCst);
        assert!(matches!(
            roundtrip(&path, &req).await,
            Response::Quote { .. }
        ));
        assert_eq!(crate::metrics::get(&metrics.service_requests.quote), 1);
        assert_eq!(crate::metrics::get(&metrics.service_errors.quote), 1);
        let mut other = other;
        let _ = other.kill();
        let _ = other.wait();
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
