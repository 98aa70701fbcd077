//! A PCS API v4 client for TDX collateral (an Intel PCS or a PCCS), shared by the host's
//! collateral cache and the client's own collateral fetching.
//!
//! It fetches, it does not verify: whoever uses the collateral checks Intel's signatures
//! ([`crate::verify`]). The TCB info and QE identity objects are taken from the responses as raw
//! JSON, never re-serialised, so the bytes Intel signed are kept exactly.
//!
//! Requests: `sgx/certification/v4/pckcrl`, `tdx/certification/v4/tcb`,
//! `tdx/certification/v4/qe/identity` (both `update=standard`), and the root CA CRL
//! (`sgx/certification/v4/rootcacrl` on a PCCS; Intel's published DER for the PCS).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcap_qvl::QuoteCollateralV3;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::collateral::{CollateralKey, PckCa};

/// Intel PCS's host; its root CA CRL is published separately.
const INTEL_PCS_HOST: &str = "api.trustedservices.intel.com";
/// Where Intel publishes the SGX/TDX root CA's CRL (DER).
const INTEL_ROOT_CA_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";
/// The largest response body accepted from a PCCS.
const MAX_BODY: usize = 4 << 20;
/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The system CA bundle on Debian.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why collateral could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PcsError {
    /// The PCCS URL or CA settings are unusable.
    #[error("PCCS client setup: {0}")]
    Setup(String),
    /// An HTTP request failed (connection, TLS, protocol, timeout).
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The PCCS answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// A required response header is missing or not URL-encoded UTF-8.
    #[error("GET {url}: header {header} missing or malformed")]
    Header {
        /// The URL.
        url: String,
        /// The header.
        header: &'static str,
    },
    /// A response is not the expected JSON.
    #[error("parsing {what}")]
    Json {
        /// What was parsed.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A field could not be decoded (hex signature, hex CRL).
    #[error("{0}")]
    Decode(String),
}

/// A PCCS / Intel PCS client.
#[derive(Clone)]
pub struct PcsClient {
    base: String,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcsClient")
            .field("base", &self.base)
            .finish()
    }
}

#[derive(Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a RawValue,
    signature: String,
}

impl PcsClient {
    /// A client for `base_url` (e.g. `https://pccs.example:8081` or
    /// `https://api.trustedservices.intel.com`; a trailing `/sgx/certification/v4` is accepted).
    /// TLS servers are checked against the PEM bundle `ca_file`, or the system bundle.
    pub fn new(base_url: &str, ca_file: Option<&Path>) -> Result<Self, PcsError> {
        let base = base_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        let uri = base
            .parse::<Uri>()
            .map_err(|e| PcsError::Setup(format!("{base_url:?} is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(PcsError::Setup(format!(
                "{base_url:?} is not an http(s) URL with a host"
            )));
        }
        let https = uri.scheme_str() == Some("https");
        let mut roots = rustls::RootCertStore::empty();
        // Plain http (a PCCS on the local network or loopback) needs no CA bundle unless one is named.
        if https || ca_file.is_some() {
            let bundle = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
            let certs = CertificateDer::pem_file_iter(bundle).map_err(|e| {
                PcsError::Setup(format!("reading CA bundle {}: {e}", bundle.display()))
            })?;
            for cert in certs {
                let cert = cert
                    .map_err(|e| PcsError::Setup(format!("CA bundle {}: {e}", bundle.display())))?;
                // Bundles carry certificates rustls cannot use; skipping them is what every client does.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(PcsError::Setup(format!(
                    "CA bundle {} holds no usable certificate",
                    bundle.display()
                )));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| PcsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            base,
            tls: Arc::new(tls),
        })
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn is_intel_pcs(&self) -> bool {
        self.base
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.eq_ignore_ascii_case(INTEL_PCS_HOST)))
            .unwrap_or(false)
    }

    /// Fetches the current collateral of the platform `key` names.
    pub async fn fetch(&self, key: &CollateralKey) -> Result<QuoteCollateralV3, PcsError> {
        self.fetch_for(&key.fmspc_hex(), key.ca).await
    }

    /// Fetches the current collateral for `fmspc` (12 hex digits) under PCK CA `ca`.
    pub async fn fetch_for(&self, fmspc: &str, ca: PckCa) -> Result<QuoteCollateralV3, PcsError> {
        let header = |url: &str, headers: &HeaderMap, names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| headers.get(*n))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| urlencoding::decode(v).ok())
                .map(|v| v.into_owned())
                .ok_or(PcsError::Header {
                    url: url.into(),
                    header: names[0],
                })
        };
        let json_err = |what: &str| {
            let what = what.to_string();
            move |source| PcsError::Json { what, source }
        };

        let url = format!(
            "{}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            self.base,
            ca.as_str()
        );
        let (headers, pck_crl) = self.get(&url).await?;
        let pck_crl_issuer_chain = header(&url, &headers, &["SGX-PCK-CRL-Issuer-Chain"])?;

        let url = format!(
            "{}/tdx/certification/v4/tcb?fmspc={}&update=standard",
            self.base, fmspc
        );
        let (headers, body) = self.get(&url).await?;
        let tcb_info_issuer_chain = header(
            &url,
            &headers,
            &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
        )?;
        let tcb: TcbInfoResponse<'_> =
            serde_json::from_slice(&body).map_err(json_err("TCB info response"))?;
        let tcb_info = tcb.tcb_info.get().to_string();
        let tcb_info_signature = hex::decode(&tcb.signature)
            .map_err(|e| PcsError::Decode(format!("TCB info signature: {e}")))?;

        let url = format!(
            "{}/tdx/certification/v4/qe/identity?update=standard",
            self.base
        );
        let (headers, body) = self.get(&url).await?;
        let qe_identity_issuer_chain =
            header(&url, &headers, &["SGX-Enclave-Identity-Issuer-Chain"])?;
        let qe: QeIdentityResponse<'_> =
            serde_json::from_slice(&body).map_err(json_err("QE identity response"))?;
        let qe_identity = qe.enclave_identity.get().to_string();
        let qe_identity_signature = hex::decode(&qe.signature)
            .map_err(|e| PcsError::Decode(format!("QE identity signature: {e}")))?;

        let root_ca_crl = if self.is_intel_pcs() {
            self.get(INTEL_ROOT_CA_CRL_URL).await?.1.to_vec()
        } else {
            // A PCCS answers with the DER CRL hex-encoded.
            let (_, body) = self
                .get(&format!("{}/sgx/certification/v4/rootcacrl", self.base))
                .await?;
            let text = std::str::from_utf8(&body).map(str::trim).unwrap_or("");
            hex::decode(text).unwrap_or_else(|_| body.to_vec())
        };

        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl: pck_crl.to_vec(),
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }

    /// One GET over HTTP/1.1 (TLS for https), with a timeout and a body size limit.
    async fn get(&self, url: &str) -> Result<(HeaderMap, Bytes), PcsError> {
        let http_err = |reason: String| PcsError::Http {
            url: url.into(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| http_err(format!("bad URL: {e}")))?;
        let host = uri
            .host()
            .ok_or_else(|| http_err("no host".into()))?
            .to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(http_err(format!("unsupported scheme {other:?}"))),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(&host)
            .to_string();
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let fut = async {
            let tcp = TcpStream::connect((bare_host.as_str(), port))
                .await
                .map_err(|e| http_err(format!("connect: {e}")))?;
            if https {
                let name = ServerName::try_from(bare_host.clone())
                    .map_err(|e| http_err(format!("server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| http_err(format!("TLS: {e}")))?;
                request(tls, &authority, &path).await.map_err(http_err)
            } else {
                request(tcp, &authority, &path).await.map_err(http_err)
            }
        };
        let (status, headers, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| http_err(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        if status != StatusCode::OK {
            return Err(PcsError::Status {
                url: url.into(),
                status,
            });
        }
        Ok((headers, body))
    }
}

async fn request<S>(
    io: S,
    authority: &str,
    path: &str,
) -> Result<(StatusCode, HeaderMap, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("chrysalis/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((parts.status, parts.headers, body))
}
