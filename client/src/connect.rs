//! Attested connections: TCP + TLS 1.3 where the server's RA-TLS certificate must satisfy a
//! policy before the handshake completes, so no request byte is sent to an unverified node.
//!
//! [`AttestedConnector`] is also a hyper-util connector (`tower_service::Service<Uri>`): every
//! response of a `hyper_util::client::legacy::Client` built on it carries the
//! [`VerifiedPeer`] of its connection in its extensions, which is what receipts are checked
//! against.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrysalis_attestation::ratls::{self, RaTlsServerVerifier};
use chrysalis_attestation::{Policy, RejectReason, Rejection, VerifiedPeer, VerifyError};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thiserror::Error;

use crate::collateral::CollateralFetcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why an attested connection could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address is not `host:port`.
    #[error("bad upstream address {0:?} (expected host:port)")]
    BadAddress(String),
    /// TCP connect failed or timed out.
    #[error("cannot connect to {addr}: {source}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The node's evidence was rejected: the reasons name every failed rule.
    #[error("{addr}: {rejection}")]
    Rejected {
        /// The address.
        addr: String,
        /// The rejection.
        rejection: Rejection,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
}

impl ConnectError {
    /// The policy rejection, when that is why the connection failed.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            ConnectError::Rejected { rejection, .. } => Some(rejection),
            _ => None,
        }
    }
}

/// Makes TLS connections that succeed only to nodes a policy accepts.
#[derive(Clone)]
pub struct AttestedConnector {
    verifier: Arc<RaTlsServerVerifier>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    collateral: Option<CollateralFetcher>,
}

impl std::fmt::Debug for AttestedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedConnector")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl AttestedConnector {
    /// A connector for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self::with_verifier(Arc::new(RaTlsServerVerifier::new(Arc::new(policy))))
    }

    /// A connector around an existing verifier (to share its verdict cache).
    pub fn with_verifier(verifier: Arc<RaTlsServerVerifier>) -> Self {
        let tls =
            tokio_rustls::TlsConnector::from(Arc::new(ratls::client_config(verifier.clone())));
        Self {
            verifier,
            tls,
            connect_timeout: Duration::from_secs(10),
            collateral: None,
        }
    }

    /// A connector with a caller-built TLS configuration whose certificate verifier consults
    /// `verifier` (e.g. wraps it): [`Self::connect`] reads the accepted peer from `verifier`.
    pub fn with_tls_config(
        verifier: Arc<RaTlsServerVerifier>,
        config: rustls::ClientConfig,
    ) -> Self {
        Self {
            verifier,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout: Duration::from_secs(10),
            collateral: None,
        }
    }

    /// Sets the TCP connect timeout (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Fetches TDX collateral with `fetcher` when the verifier found none for a node (the
    /// verifier must read `fetcher.store()`), then retries the handshake once.
    pub fn with_collateral_fetcher(mut self, fetcher: CollateralFetcher) -> Self {
        self.collateral = Some(fetcher);
        self
    }

    /// The verifier (and its verdict cache).
    pub fn verifier(&self) -> &Arc<RaTlsServerVerifier> {
        &self.verifier
    }

    /// Connects to `addr` (`host:port`) and completes a verified handshake. With a collateral
    /// fetcher, a rejection for missing TDX collateral fetches it and tries once more.
    pub async fn connect(&self, addr: &str) -> Result<AttestedStream, ConnectError> {
        let first = self.connect_once(addr).await;
        let Some(fetcher) = &self.collateral else {
            return first;
        };
        let missing = first
            .as_ref()
            .err()
            .and_then(ConnectError::rejection)
            .is_some_and(|r| {
                r.reasons
                    .contains(&RejectReason::Verification(VerifyError::MissingCollateral))
            });
        if !missing {
            return first;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match fetcher.fill_missing(now).await {
            Ok(n) if n > 0 => self.connect_once(addr).await,
            Ok(_) => first,
            Err(e) => {
                tracing::warn!(addr, error = %e, "node carries no TDX collateral and fetching it failed");
                first
            }
        }
    }

    async fn connect_once(&self, addr: &str) -> Result<AttestedStream, ConnectError> {
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .ok_or_else(|| ConnectError::BadAddress(addr.into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ConnectError::BadAddress(addr.into()))?;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            .and_then(|r| r)
            .map_err(|source| ConnectError::Unreachable {
                addr: addr.into(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls =
            self.tls
                .connect(name, tcp)
                .await
                .map_err(|source| match rejection_of(&source) {
                    Some(rejection) => ConnectError::Rejected {
                        addr: addr.into(),
                        rejection,
                    },
                    None => ConnectError::Tls {
                        addr: addr.into(),
                        source,
                    },
                })?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ConnectError::Tls {
                addr: addr.into(),
                source: io::Error::other("no server certificate"),
            })?;
        let peer = self
            .verifier
            .verified_peer(cert.as_ref())
            .ok_or_else(|| ConnectError::Tls {
                addr: addr.into(),
                source: io::Error::other("handshake completed without a verified peer"),
            })?;
        Ok(AttestedStream { io: tls, peer })
    }
}

/// The policy rejection inside a failed handshake's error, if that is what it is.
pub fn rejection_of(e: &io::Error) -> Option<Rejection> {
    let tls: &rustls::Error = e.get_ref()?.downcast_ref()?;
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<Rejection>().cloned()
        }
        _ => None,
    }
}

/// A verified TLS stream and the peer it was verified to be.
#[derive(Debug)]
pub struct AttestedStream {
    io: tokio_rustls::client::TlsStream<TcpStream>,
    peer: VerifiedPeer,
}

impl AttestedStream {
    /// The accepted peer.
    pub fn peer(&self) -> &VerifiedPeer {
        &self.peer
    }
}

impl AsyncRead for AttestedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AttestedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connection for AttestedStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.peer.clone())
    }
}

impl tower_service::Service<http::Uri> for AttestedConnector {
    type Response = TokioIo<AttestedStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| ConnectError::BadAddress(uri.to_string()))?;
            let port = uri.port_u16().unwrap_or(443);
            let addr = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            this.connect(&addr).await.map(TokioIo::new)
        })
    }
}
