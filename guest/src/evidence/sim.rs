//! Evidence from the host's simulated quote service (the host plays the TDX or SEV-SNP hardware).
//!
//! The guest sends its report_data with [`chrysalis_attestation::hostcall`] framing and gets back a
//! TDX quote signed by the simulated Intel PKI, or an SEV-SNP report signed by the simulated AMD
//! PKI, over the measurements of what the host launched. Nothing here trusts the answer: clients
//! verify it against the simulated root their policy names.
//!
//! Which platform: [`SimPlatform`] (`[evidence] sim_platform`, in the measured guest
//! configuration). `tdx` and `snp` ask for exactly that and refuse any other answer; `host` (the
//! default, so one measured image serves under both sim profiles) asks with `sim_quote` and takes
//! what the host's profile simulates. A hostile host gains nothing from choosing: it holds the
//! simulated keys and could sign any evidence anyway, which is why sim evidence is accepted only
//! by a policy naming the simulated root of that platform, and never proves anything about
//! hardware. On hardware the configfs-tsm provider is used and the kernel's TSM provider, not the
//! host, names the platform.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
use chrysalis_attestation::Platform;
use chrysalis_attestation::ReportData;
use chrysalis_attestation::hostcall::{self, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use chrysalis_attestation::gpu::GpuRecord;

use super::gpu::GpuEvidenceProvider;
use super::{Evidence, EvidenceError, EvidenceProvider};

/// Which simulated evidence the guest asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SimPlatform {
    /// A TDX quote (`sim_quote`); an SNP answer is refused.
    Tdx,
    /// An SEV-SNP report (`sim_snp_report`); a TDX answer is refused.
    Snp,
    /// Whatever the host's profile simulates (`sim_quote`, answered with either).
    #[default]
    Host,
}

/// Where the sim quote service listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimEndpoint {
    /// AF_VSOCK: (CID, port); in a guest (2, 4050).
    Vsock(u32, u32),
    /// TCP, for tests and development.
    Tcp(String),
    /// A Unix socket, for tests and development.
    Unix(PathBuf),
}

impl std::fmt::Display for SimEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimEndpoint::Vsock(cid, port) => write!(f, "vsock:{cid}:{port}"),
            SimEndpoint::Tcp(a) => write!(f, "tcp:{a}"),
            SimEndpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl SimEndpoint {
    /// The host's service as seen from a guest.
    pub fn host_vsock() -> Self {
        SimEndpoint::Vsock(hostcall::HOST_CID, hostcall::SIM_QUOTE_PORT)
    }
}

/// Asks the sim quote service for evidence.
#[derive(Clone, Debug)]
pub struct SimQuoteClient {
    endpoint: SimEndpoint,
    timeout: Duration,
    platform: SimPlatform,
}

impl SimQuoteClient {
    /// A client for `endpoint`; each exchange (connect included) must finish within `timeout`.
    /// Asks for whatever the host simulates ([`SimPlatform::Host`]).
    pub fn new(endpoint: SimEndpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            timeout,
            platform: SimPlatform::Host,
        }
    }

    /// Asks for `platform`'s evidence.
    pub fn with_platform(mut self, platform: SimPlatform) -> Self {
        self.platform = platform;
        self
    }

    fn err(&self, reason: impl std::fmt::Display) -> EvidenceError {
        EvidenceError::Sim {
            endpoint: self.endpoint.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        report_data: ReportData,
    ) -> Result<Evidence, EvidenceError> {
        let request = match self.platform {
            SimPlatform::Snp => Request::SimSnpReport { report_data },
            SimPlatform::Tdx | SimPlatform::Host => Request::SimQuote { report_data },
        };
        match call(&mut s, &request).await.map_err(|e| self.err(e))? {
            Response::Quote { quote, collateral } if self.platform != SimPlatform::Snp => {
                if quote.is_empty() {
                    return Err(EvidenceError::Empty);
                }
                Ok(Evidence::tdx(quote, collateral)?)
            }
            Response::SnpReport {
                report,
                vcek,
                chain,
            } if self.platform != SimPlatform::Tdx => {
                if report.is_empty() {
                    return Err(EvidenceError::Empty);
                }
                Ok(Evidence::snp(
                    report,
                    Some(vcek),
                    chain.map(String::into_bytes),
                )?)
            }
            Response::Error { message } => Err(EvidenceError::Refused(message)),
            other => Err(self.err(format!(
                "unexpected answer to a {:?} request {other:?}",
                self.platform
            ))),
        }
    }

    async fn exchange(&self, report_data: ReportData) -> Result<Evidence, EvidenceError> {
        match self.connect().await? {
            Stream::Vsock(s) => self.exchange_on(s, report_data).await,
            Stream::Tcp(s) => self.exchange_on(s, report_data).await,
            Stream::Unix(s) => self.exchange_on(s, report_data).await,
        }
    }

    async fn connect(&self) -> Result<Stream, EvidenceError> {
        let c = |e: std::io::Error| self.err(format!("connect: {e}"));
        Ok(match &self.endpoint {
            SimEndpoint::Vsock(cid, port) => Stream::Vsock(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(c)?,
            ),
            SimEndpoint::Tcp(addr) => {
                Stream::Tcp(tokio::net::TcpStream::connect(addr).await.map_err(c)?)
            }
            SimEndpoint::Unix(path) => {
                Stream::Unix(tokio::net::UnixStream::connect(path).await.map_err(c)?)
            }
        })
    }

    /// The host's simulated GPU: a record of one GPU whose report answers `nonce`.
    async fn gpu_exchange(&self, nonce: [u8; 32]) -> Result<GpuRecord, EvidenceError> {
        let request = Request::SimGpu { nonce };
        let response = match self.connect().await? {
            Stream::Vsock(mut s) => call(&mut s, &request).await,
            Stream::Tcp(mut s) => call(&mut s, &request).await,
            Stream::Unix(mut s) => call(&mut s, &request).await,
        }
        .map_err(|e| self.err(e))?;
        match response {
            Response::Gpu { record } => GpuRecord::from_der(&record)
                .map_err(|e| self.err(format!("the host's GPU record: {e}"))),
            Response::Error { message } => Err(EvidenceError::Refused(message)),
            other => Err(self.err(format!("unexpected answer to a sim_gpu request {other:?}"))),
        }
    }
}

enum Stream {
    Vsock(tokio_vsock::VsockStream),
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The host's simulated GPU (`sim_gpu` requests): what a guest with `[gpu] attest = "sim"` (or
/// `"auto"` without an NVIDIA device) carries. Clients accept it only when their policy names
/// the simulated NVIDIA roots.
impl GpuEvidenceProvider for SimQuoteClient {
    fn gpu_evidence(
        &self,
        nonce: [u8; 32],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<GpuRecord, EvidenceError>> + Send + '_>,
    > {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.gpu_exchange(nonce))
                .await
                .map_err(|_| self.err(format!("no answer within {:?}", self.timeout)))?
        })
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

impl EvidenceProvider for SimQuoteClient {
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Evidence, EvidenceError>> + Send + '_>,
    > {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.exchange(report_data))
                .await
                .map_err(|_| self.err(format!("no answer within {:?}", self.timeout)))?
        })
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

/// A minimal stand-in for the host's sim quote service, for tests: answers one `sim_quote` or
/// `sim_snp_report` request with `answer(report_data)`. It signs nothing; the host crate's
/// service does that. Compiled only into tests and with the `test-util` feature.
#[cfg(any(test, feature = "test-util"))]
pub async fn serve_one_tcp<F>(listener: tokio::net::TcpListener, answer: F) -> std::io::Result<()>
where
    F: Fn(ReportData) -> Response,
{
    let (mut s, _) = listener.accept().await?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).await?;
    let len = hostcall::body_len(prefix).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    let resp = match hostcall::decode_body::<Request>(&body).map_err(std::io::Error::other)? {
        Request::SimQuote { report_data } | Request::SimSnpReport { report_data } => {
            answer(report_data)
        }
        other => Response::Error {
            message: format!("unsupported request {other:?}"),
        },
    };
    s.write_all(&hostcall::encode(&resp).map_err(std::io::Error::other)?)
        .await?;
    s.shutdown().await
}

/// One host call on a connected stream: the framed request out, one framed response back.
/// The error is text for the caller to wrap with its endpoint (sim quotes, collateral).
pub(crate) async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &Request,
) -> Result<Response, String> {
    let frame = hostcall::encode(request).map_err(|e| e.to_string())?;
    s.write_all(&frame)
        .await
        .map_err(|e| format!("send: {e}"))?;
    s.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let len = hostcall::body_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    hostcall::decode_body::<Response>(&body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_attestation::Measurement;
    use chrysalis_attestation::sim::{
        DEFAULT_SEED, SimAmdPki, SimPki, SimSnpReport, SimTdReport, td_measurements,
    };

    fn sim_quote(rd: ReportData) -> Vec<u8> {
        let m = td_measurements(Measurement::ZERO, [Measurement::ZERO; 4]);
        SimPki::from_seed(DEFAULT_SEED).quote(&SimTdReport::new(m, rd))
    }

    #[tokio::test]
    async fn quote_comes_back_over_tcp_for_our_report_data() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve_one_tcp(l, |rd| Response::Quote {
            quote: sim_quote(rd),
            collateral: None,
        }));
        let c = SimQuoteClient::new(SimEndpoint::Tcp(addr), Duration::from_secs(5));
        let b = c.evidence(ReportData([9; 64])).await.unwrap();
        assert_eq!(b.platform(), Platform::Tdx);
        assert_eq!(b.report_data(), ReportData([9; 64]));
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_quote_that_does_not_parse_is_refused_naming_it() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve_one_tcp(l, |rd| Response::Quote {
            quote: rd.0.to_vec(),
            collateral: None,
        }));
        let c = SimQuoteClient::new(SimEndpoint::Tcp(addr), Duration::from_secs(5));
        let e = c.evidence(ReportData([9; 64])).await.unwrap_err();
        assert!(matches!(e, EvidenceError::Unparseable(_)), "{e}");
        assert!(e.to_string().contains("TDX quote"), "{e}");
        server.await.unwrap().unwrap();
    }

    /// Which report_data [`snp_server`] signs its SNP report over, per request kind.
    fn kind_rd(kind: u8) -> ReportData {
        ReportData([kind; 64])
    }

    /// Answers one request with an SNP report whose report_data names the request kind.
    async fn snp_server(l: tokio::net::TcpListener) {
        let (mut s, _) = l.accept().await.unwrap();
        let mut prefix = [0u8; 4];
        s.read_exact(&mut prefix).await.unwrap();
        let mut body = vec![0u8; hostcall::body_len(prefix).unwrap()];
        s.read_exact(&mut body).await.unwrap();
        let kind = match hostcall::decode_body::<Request>(&body).unwrap() {
            Request::SimQuote { .. } => 1,
            Request::SimSnpReport { .. } => 2,
            _ => 3,
        };
        let report = SimAmdPki::from_seed(DEFAULT_SEED)
            .report(&SimSnpReport::new(Measurement::ZERO, kind_rd(kind)));
        let resp = Response::SnpReport {
            report,
            vcek: vec![1, 2],
            chain: Some("chain".into()),
        };
        s.write_all(&hostcall::encode(&resp).unwrap())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn snp_platform_asks_for_a_report_and_tdx_refuses_one() {
        for (platform, want) in [
            (SimPlatform::Snp, Some(2)),
            (SimPlatform::Host, Some(1)),
            (SimPlatform::Tdx, None),
        ] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let server = tokio::spawn(snp_server(l));
            let c = SimQuoteClient::new(SimEndpoint::Tcp(addr), Duration::from_secs(5))
                .with_platform(platform);
            let got = c.evidence(ReportData([3; 64])).await;
            match want {
                Some(kind) => {
                    let b = got.unwrap();
                    assert_eq!(b.platform(), Platform::Snp);
                    assert_eq!(b.report_data(), kind_rd(kind), "{platform:?}");
                    let Evidence::Snp { vcek, chain, .. } = b else {
                        panic!("not SNP evidence")
                    };
                    assert_eq!(vcek, Some(vec![1, 2]));
                    assert_eq!(chain, Some(b"chain".to_vec()));
                }
                None => {
                    let e = got.unwrap_err();
                    assert!(e.to_string().contains("unexpected answer"), "{e}");
                }
            }
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn refusal_is_reported_with_the_host_message() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve_one_tcp(l, |_| Response::Error {
            message: "no measurements yet".into(),
        }));
        let c = SimQuoteClient::new(SimEndpoint::Tcp(addr), Duration::from_secs(5));
        let e = c.evidence(ReportData([0; 64])).await.unwrap_err();
        assert!(e.to_string().contains("no measurements yet"), "{e}");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unix_socket_and_unreachable_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let c = SimQuoteClient::new(
            SimEndpoint::Unix(dir.path().join("none.sock")),
            Duration::from_secs(2),
        );
        let e = c.evidence(ReportData([0; 64])).await.unwrap_err();
        assert!(
            e.to_string().contains("none.sock") && e.to_string().contains("connect"),
            "{e}"
        );
    }
}
