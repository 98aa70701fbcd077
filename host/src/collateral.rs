//! The TDX collateral cache: collateral loaded from a file, or fetched from a PCCS / Intel PCS and
//! refreshed before it expires, served to the guest by the collateral service.
//!
//! The host does not verify collateral (it is untrusted; the guest and clients check Intel's
//! signatures). It keeps the exact bytes Intel signed: the TCB info and QE identity objects are
//! taken from the responses as raw JSON, never re-serialised.
//!
//! Fetching uses PCS API v4 for one platform, named by its FMSPC and PCK CA in host.toml:
//! `sgx/certification/v4/pckcrl`, `tdx/certification/v4/tcb`, `tdx/certification/v4/qe/identity`,
//! and the root CA CRL (`sgx/certification/v4/rootcacrl` on a PCCS; Intel's published DER for the
//! PCS). Nothing is fetched unless a URL is configured.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

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

use crate::metrics::{Metrics, inc};

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

/// Errors of the collateral area.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// A collateral file could not be read.
    #[error("reading collateral file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A collateral file or a PCCS response is not the expected JSON.
    #[error("parsing {what}")]
    Json {
        /// What was parsed.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A `nextUpdate` field is missing or not an RFC 3339 time.
    #[error("{what}.nextUpdate: {reason}")]
    NextUpdate {
        /// `tcbInfo` or `enclaveIdentity`.
        what: &'static str,
        /// Why it could not be read.
        reason: String,
    },
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
    /// A field could not be decoded (hex signature, hex CRL).
    #[error("{0}")]
    Decode(String),
}

/// The collateral currently served to the guest. Cheap to read; replaced whole on refresh.
#[derive(Debug, Default)]
pub struct CollateralCache {
    current: RwLock<Option<Arc<QuoteCollateralV3>>>,
}

impl CollateralCache {
    /// An empty cache (the service answers "not available yet" until it is filled).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache filled from a JSON file in dcap-qvl's `QuoteCollateralV3` layout (as in dcap-qvl's
    /// `sample/*collateral.json`).
    pub fn from_file(path: &Path) -> Result<Self, CollateralError> {
        let text = std::fs::read(path).map_err(|source| CollateralError::Read {
            path: path.into(),
            source,
        })?;
        let c: QuoteCollateralV3 =
            serde_json::from_slice(&text).map_err(|source| CollateralError::Json {
                what: path.display().to_string(),
                source,
            })?;
        let cache = Self::new();
        cache.set(c);
        Ok(cache)
    }

    /// Replaces the collateral.
    pub fn set(&self, c: QuoteCollateralV3) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(c));
    }

    /// The collateral now, if any.
    pub fn current(&self) -> Option<Arc<QuoteCollateralV3>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Deserialize)]
struct NextUpdateField {
    #[serde(rename = "nextUpdate")]
    next_update: Option<String>,
}

fn parse_next_update(what: &'static str, json: &str) -> Result<SystemTime, CollateralError> {
    let f: NextUpdateField =
        serde_json::from_str(json).map_err(|e| CollateralError::NextUpdate {
            what,
            reason: e.to_string(),
        })?;
    let s = f.next_update.ok_or(CollateralError::NextUpdate {
        what,
        reason: "missing".into(),
    })?;
    let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| CollateralError::NextUpdate {
            what,
            reason: format!("{s:?}: {e}"),
        })?;
    Ok(SystemTime::from(t))
}

/// The earliest `nextUpdate` of the collateral's TCB info and QE identity: when it must have been
/// replaced.
pub fn next_update(c: &QuoteCollateralV3) -> Result<SystemTime, CollateralError> {
    let tcb = parse_next_update("tcbInfo", &c.tcb_info)?;
    let qe = parse_next_update("enclaveIdentity", &c.qe_identity)?;
    Ok(tcb.min(qe))
}

/// Which PCK CA issued the platform's PCK certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PckCa {
    /// Multi-package platforms.
    Platform,
    /// Single-package platforms.
    Processor,
}

impl PckCa {
    fn as_str(self) -> &'static str {
        match self {
            PckCa::Platform => "platform",
            PckCa::Processor => "processor",
        }
    }
}

/// A PCCS / PCS client for one platform's collateral.
#[derive(Clone)]
pub struct PccsClient {
    base: String,
    fmspc: String,
    ca: PckCa,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PccsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PccsClient")
            .field("base", &self.base)
            .field("fmspc", &self.fmspc)
            .field("ca", &self.ca)
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

impl PccsClient {
    /// A client for `base_url` (e.g. `https://pccs.example:8081`; a trailing `/sgx/certification/v4`
    /// is accepted), for the platform with `fmspc` (12 hex digits) under PCK CA `ca`. TLS servers are
    /// checked against the PEM bundle `ca_file`, or the system bundle.
    pub fn new(
        base_url: &str,
        fmspc: &str,
        ca: PckCa,
        ca_file: Option<&Path>,
    ) -> Result<Self, CollateralError> {
        let base = base_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        base.parse::<Uri>()
            .map_err(|e| CollateralError::Setup(format!("{base_url:?} is not a URL: {e}")))?;
        if fmspc.len() != 12 || hex::decode(fmspc).is_err() {
            return Err(CollateralError::Setup(format!(
                "fmspc {fmspc:?} is not 12 hex digits"
            )));
        }
        let bundle = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(bundle).map_err(|e| {
            CollateralError::Setup(format!("reading CA bundle {}: {e}", bundle.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                CollateralError::Setup(format!("CA bundle {}: {e}", bundle.display()))
            })?;
            // Bundles carry certificates rustls cannot use; skipping them is what every client does.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(CollateralError::Setup(format!(
                "CA bundle {} holds no usable certificate",
                bundle.display()
            )));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| CollateralError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            base,
            fmspc: fmspc.to_ascii_uppercase(),
            ca,
            tls: Arc::new(tls),
        })
    }

    fn is_intel_pcs(&self) -> bool {
        self.base
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.eq_ignore_ascii_case(INTEL_PCS_HOST)))
            .unwrap_or(false)
    }

    /// Fetches the platform's current collateral.
    pub async fn fetch(&self) -> Result<QuoteCollateralV3, CollateralError> {
        let header = |url: &str, headers: &HeaderMap, names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| headers.get(*n))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| urlencoding::decode(v).ok())
                .map(|v| v.into_owned())
                .ok_or(CollateralError::Header {
                    url: url.into(),
                    header: names[0],
                })
        };
        let json_err = |what: &str| {
            let what = what.to_string();
            move |source| CollateralError::Json { what, source }
        };

        let url = format!(
            "{}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            self.base,
            self.ca.as_str()
        );
        let (headers, pck_crl) = self.get(&url).await?;
        let pck_crl_issuer_chain = header(&url, &headers, &["SGX-PCK-CRL-Issuer-Chain"])?;

        let url = format!(
            "{}/tdx/certification/v4/tcb?fmspc={}&update=standard",
            self.base, self.fmspc
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
            .map_err(|e| CollateralError::Decode(format!("TCB info signature: {e}")))?;

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
            .map_err(|e| CollateralError::Decode(format!("QE identity signature: {e}")))?;

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
    async fn get(&self, url: &str) -> Result<(HeaderMap, Bytes), CollateralError> {
        let http_err = |reason: String| CollateralError::Http {
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
        let fut = async {
            let tcp =
                TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
                    .await
                    .map_err(|e| http_err(format!("connect: {e}")))?;
            if https {
                let name = ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                )
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
            return Err(CollateralError::Status {
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
            concat!("chrysalis-host/", env!("CARGO_PKG_VERSION")),
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

/// When to refresh: `margin` before `next_update`, but not sooner than `min_wait` from `now`.
pub fn refresh_delay(
    now: SystemTime,
    next_update: SystemTime,
    margin: Duration,
    min_wait: Duration,
) -> Duration {
    next_update
        .checked_sub(margin)
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
        .max(min_wait)
}

/// Keeps `cache` filled from `client` until `shutdown` resolves: fetches now, then again `margin`
/// before the collateral's earliest `nextUpdate`; a failed fetch keeps the old collateral and is
/// retried with backoff (1 min doubling to 1 h). `now` is the clock.
pub async fn refresh_loop(
    client: PccsClient,
    cache: Arc<CollateralCache>,
    margin: Duration,
    metrics: Arc<Metrics>,
    now: impl Fn() -> SystemTime,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut retry = Duration::from_secs(60);
    loop {
        let wait = match client.fetch().await {
            Ok(c) => {
                let wait = match next_update(&c) {
                    Ok(next) => refresh_delay(now(), next, margin, Duration::from_secs(60)),
                    Err(e) => {
                        tracing::warn!(error = %e, "fetched collateral has no usable nextUpdate; refreshing in an hour");
                        Duration::from_secs(3600)
                    }
                };
                cache.set(c);
                retry = Duration::from_secs(60);
                tracing::info!(next_refresh_s = wait.as_secs(), "collateral refreshed");
                wait
            }
            Err(e) => {
                inc(&metrics.collateral_refresh_errors);
                tracing::warn!(error = %e, retry_s = retry.as_secs(), "collateral refresh failed; serving the previous collateral");
                let w = retry;
                retry = (retry * 2).min(Duration::from_secs(3600));
                w
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_delay_respects_margin_and_floor() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let m = Duration::from_secs(3600);
        let floor = Duration::from_secs(60);
        assert_eq!(
            refresh_delay(t0, t0 + Duration::from_secs(7200), m, floor),
            Duration::from_secs(3600)
        );
        assert_eq!(
            refresh_delay(t0, t0 + Duration::from_secs(100), m, floor),
            floor
        );
        assert_eq!(
            refresh_delay(t0, t0 - Duration::from_secs(100), m, floor),
            floor
        );
    }

    #[test]
    fn next_update_is_the_earliest_and_errors_name_the_field() {
        let mut c = QuoteCollateralV3 {
            pck_crl_issuer_chain: String::new(),
            root_ca_crl: vec![],
            pck_crl: vec![],
            tcb_info_issuer_chain: String::new(),
            tcb_info: r#"{"nextUpdate":"2030-01-02T00:00:00Z"}"#.into(),
            tcb_info_signature: vec![],
            qe_identity_issuer_chain: String::new(),
            qe_identity: r#"{"nextUpdate":"2030-01-01T00:00:00Z"}"#.into(),
            qe_identity_signature: vec![],
            pck_certificate_chain: None,
        };
        // 2030-01-01T00:00:00Z
        assert_eq!(
            next_update(&c).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
        );
        c.tcb_info = "{}".into();
        assert_eq!(
            next_update(&c).unwrap_err().to_string(),
            "tcbInfo.nextUpdate: missing"
        );
    }
}
