//! TDX collateral from the host's collateral service, attached to hardware quotes.
//!
//! On TDX hardware configfs-tsm returns a bare quote; a client needs Intel's collateral (TCB
//! info, QE identity, CRLs) to verify it. The guest asks the host's collateral service
//! ([`hostcall::COLLATERAL_PORT`]) for the current collateral and embeds it in the bundle.
//!
//! The host stays untrusted: clients verify carried collateral against Intel's root and their
//! freshness rules, so bad collateral only fails verification. When the host cannot serve any
//! (no PCCS configured, fetch failing, wrong platform), the guest logs why and serves the quote
//! without collateral rather than not at all: clients whose policy names a PCCS
//! (`[collateral] pccs_url`) fetch their own.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrysalis_attestation::TdxQuote;
use chrysalis_attestation::collateral::{CollateralKey, tcb_info_fmspc};
use chrysalis_attestation::hostcall::{self, Request, Response};
use dcap_qvl::QuoteCollateralV3;
use tokio::io::{AsyncRead, AsyncWrite};

use super::sim::SimEndpoint;
use super::{Evidence, EvidenceError};

/// Somewhere current TDX collateral can be asked for.
pub trait CollateralSource: Send + Sync + std::fmt::Debug + 'static {
    /// The current collateral. Implementations do not verify it; clients do.
    fn collateral(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<QuoteCollateralV3, EvidenceError>> + Send + '_>>;

    /// Where it asks, for logs.
    fn describe(&self) -> String;
}

/// The host's collateral service, over the hostcall protocol.
#[derive(Clone, Debug)]
pub struct HostCollateral {
    endpoint: SimEndpoint,
    timeout: Duration,
}

impl HostCollateral {
    /// A client for `endpoint` (in a guest: vsock CID 2, port [`hostcall::COLLATERAL_PORT`]);
    /// each exchange, connect included, must finish within `timeout`.
    pub fn new(endpoint: SimEndpoint, timeout: Duration) -> Self {
        Self { endpoint, timeout }
    }

    /// The host's service as seen from a guest.
    pub fn host_vsock(timeout: Duration) -> Self {
        Self::new(
            SimEndpoint::Vsock(hostcall::HOST_CID, hostcall::COLLATERAL_PORT),
            timeout,
        )
    }

    fn err(&self, reason: impl std::fmt::Display) -> EvidenceError {
        EvidenceError::Collateral {
            endpoint: self.endpoint.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
    ) -> Result<QuoteCollateralV3, EvidenceError> {
        match super::sim::call(&mut s, &Request::Collateral)
            .await
            .map_err(|e| self.err(e))?
        {
            Response::Collateral { collateral } => Ok(collateral),
            Response::Error { message } => Err(self.err(format!("host refused: {message}"))),
            other => Err(self.err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn exchange(&self) -> Result<QuoteCollateralV3, EvidenceError> {
        match &self.endpoint {
            SimEndpoint::Vsock(cid, port) => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(|e| self.err(format!("connect: {e}")))?;
                self.exchange_on(s).await
            }
            SimEndpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| self.err(format!("connect: {e}")))?;
                self.exchange_on(s).await
            }
            SimEndpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| self.err(format!("connect: {e}")))?;
                self.exchange_on(s).await
            }
        }
    }
}

impl CollateralSource for HostCollateral {
    fn collateral(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<QuoteCollateralV3, EvidenceError>> + Send + '_>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.exchange())
                .await
                .map_err(|_| self.err(format!("no answer within {:?}", self.timeout)))?
        })
    }

    fn describe(&self) -> String {
        self.endpoint.to_string()
    }
}

/// Asks `source` for collateral for TDX evidence that carries none and embeds it when it is for
/// the quote's platform (the FMSPC of its PCK certificate). Never fails: without usable
/// collateral the evidence is returned as it was, and the reason is logged (clients can fetch
/// their own). SNP evidence and evidence that already carries collateral is returned unchanged.
pub async fn attach(bundle: Evidence, source: &dyn CollateralSource) -> Evidence {
    let Evidence::Tdx {
        quote,
        collateral: None,
    } = bundle
    else {
        return bundle;
    };
    match usable_collateral(&quote, source).await {
        Ok(c) => Evidence::Tdx {
            quote,
            collateral: Some(c),
        },
        Err(e) => {
            tracing::error!(
                error = %e,
                "serving the TDX quote WITHOUT collateral: clients must supply their own \
                 (policy [collateral] pccs_url or --pccs-url)"
            );
            Evidence::Tdx {
                quote,
                collateral: None,
            }
        }
    }
}

pub(crate) async fn usable_collateral(
    quote: &TdxQuote,
    source: &dyn CollateralSource,
) -> Result<QuoteCollateralV3, EvidenceError> {
    let key = CollateralKey::of_tdx_quote(quote)
        .map_err(|e| EvidenceError::Malformed(format!("TDX quote's PCK certificate: {e}")))?;
    let c = source.collateral().await?;
    // The host serves one platform's collateral; a mismatch would only fail verification later,
    // so say so here, where the operator reads the console.
    match tcb_info_fmspc(&c) {
        Some(f) if f.eq_ignore_ascii_case(&key.fmspc_hex()) => Ok(c),
        other => Err(EvidenceError::Collateral {
            endpoint: source.describe(),
            reason: format!(
                "collateral is for fmspc {}, the quote needs {key}",
                other.as_deref().unwrap_or("(none stated)")
            ),
        }),
    }
}

/// A stand-in for the host's collateral service, for tests: answers one connection with
/// `answer`. The host crate's service is the real one.
#[cfg(test)]
pub(crate) async fn serve_one_tcp(
    listener: tokio::net::TcpListener,
    answer: Response,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut s, _) = listener.accept().await?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).await?;
    let len = hostcall::body_len(prefix).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    let resp = match hostcall::decode_body::<Request>(&body).map_err(std::io::Error::other)? {
        Request::Collateral => answer,
        other => Response::Error {
            message: format!("unsupported request {other:?}"),
        },
    };
    s.write_all(&hostcall::encode(&resp).map_err(std::io::Error::other)?)
        .await?;
    s.shutdown().await
}
