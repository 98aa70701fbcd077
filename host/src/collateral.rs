//! The TDX collateral cache: collateral loaded from a file, or fetched from a PCCS / Intel PCS and
//! refreshed before it expires, served to the guest by the collateral service.
//!
//! The host does not verify collateral (it is untrusted; the guest and clients check Intel's
//! signatures). It keeps the exact bytes Intel signed: the TCB info and QE identity objects are
//! taken from the responses as raw JSON, never re-serialised.
//!
//! Fetching uses the attestation crate's PCS API v4 client (`chrysalis_attestation::pcs`, shared
//! with the client) for one platform, named by its FMSPC and PCK CA in host.toml. Nothing is
//! fetched unless a URL is configured.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrysalis_attestation::pcs::PcsClient;
use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;

use crate::metrics::{Metrics, inc};

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
    /// The FMSPC in host.toml is unusable.
    #[error("PCCS client setup: {0}")]
    Setup(String),
    /// Fetching from the PCCS failed.
    #[error(transparent)]
    Pcs(#[from] PcsError),
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

pub use chrysalis_attestation::collateral::PckCa;
pub use chrysalis_attestation::pcs::PcsError;

/// A PCCS / PCS client for one platform's collateral (the attestation crate's PCS client, bound
/// to the FMSPC and PCK CA of host.toml).
#[derive(Clone, Debug)]
pub struct PccsClient {
    pcs: PcsClient,
    fmspc: String,
    ca: PckCa,
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
        if fmspc.len() != 12 || hex::decode(fmspc).is_err() {
            return Err(CollateralError::Setup(format!(
                "fmspc {fmspc:?} is not 12 hex digits"
            )));
        }
        Ok(Self {
            pcs: PcsClient::new(base_url, ca_file)?,
            fmspc: fmspc.to_ascii_uppercase(),
            ca,
        })
    }

    /// Fetches the platform's current collateral.
    pub async fn fetch(&self) -> Result<QuoteCollateralV3, CollateralError> {
        Ok(self.pcs.fetch_for(&self.fmspc, self.ca).await?)
    }
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
