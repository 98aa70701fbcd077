//! Evidence from the host's simulated quote service (the host plays the TDX hardware).
//!
//! The guest sends its report_data with [`chrysalis_attestation::hostcall`] framing and gets back a
//! TDX quote signed by the simulated Intel PKI over the measurements of what the host launched.
//! Nothing here trusts the answer: clients verify it against the simulated root their policy names.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
use chrysalis_attestation::Platform;
use chrysalis_attestation::ReportData;
use chrysalis_attestation::hostcall::{self, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{EvidenceBundle, EvidenceError, EvidenceProvider};

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
}

impl SimQuoteClient {
    /// A client for `endpoint`; each exchange (connect included) must finish within `timeout`.
    pub fn new(endpoint: SimEndpoint, timeout: Duration) -> Self {
        Self { endpoint, timeout }
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
    ) -> Result<EvidenceBundle, EvidenceError> {
        let frame =
            hostcall::encode(&Request::SimQuote { report_data }).map_err(|e| self.err(e))?;
        s.write_all(&frame)
            .await
            .map_err(|e| self.err(format!("send: {e}")))?;
        s.flush()
            .await
            .map_err(|e| self.err(format!("send: {e}")))?;
        let mut prefix = [0u8; 4];
        s.read_exact(&mut prefix)
            .await
            .map_err(|e| self.err(format!("receive: {e}")))?;
        let len = hostcall::body_len(prefix).map_err(|e| self.err(e))?;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)
            .await
            .map_err(|e| self.err(format!("receive: {e}")))?;
        match hostcall::decode_body::<Response>(&body).map_err(|e| self.err(e))? {
            Response::Quote { quote, collateral } => {
                if quote.is_empty() {
                    return Err(EvidenceError::Empty);
                }
                Ok(EvidenceBundle::tdx(quote, collateral))
            }
            Response::Error { message } => Err(EvidenceError::Refused(message)),
            other => Err(self.err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn exchange(&self, report_data: ReportData) -> Result<EvidenceBundle, EvidenceError> {
        match &self.endpoint {
            SimEndpoint::Vsock(cid, port) => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(|e| self.err(format!("connect: {e}")))?;
                self.exchange_on(s, report_data).await
            }
            SimEndpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| self.err(format!("connect: {e}")))?;
                self.exchange_on(s, report_data).await
            }
            SimEndpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| self.err(format!("connect: {e}")))?;
                self.exchange_on(s, report_data).await
            }
        }
    }
}

impl EvidenceProvider for SimQuoteClient {
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<EvidenceBundle, EvidenceError>> + Send + '_>,
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

/// A minimal stand-in for the host's sim quote service, for tests: answers each request with
/// `answer(report_data)`. It signs nothing; the host crate's service does that.
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
        Request::SimQuote { report_data } => answer(report_data),
        other => Response::Error {
            message: format!("unsupported request {other:?}"),
        },
    };
    s.write_all(&hostcall::encode(&resp).map_err(std::io::Error::other)?)
        .await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quote_comes_back_over_tcp_for_our_report_data() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve_one_tcp(l, |rd| Response::Quote {
            quote: rd.0.to_vec(),
            collateral: None,
        }));
        let c = SimQuoteClient::new(SimEndpoint::Tcp(addr), Duration::from_secs(5));
        let b = c.evidence(ReportData([9; 64])).await.unwrap();
        assert_eq!(b.platform, Platform::Tdx);
        assert_eq!(b.evidence, vec![9; 64]);
        server.await.unwrap().unwrap();
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
