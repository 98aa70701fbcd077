//! The client's own TDX collateral: fetched from a PCCS or Intel's PCS (policy
//! `[collateral] pccs_url`, `chrysalis proxy --pccs-url`) for nodes that carry none, or for every
//! node when the policy prefers its own.
//!
//! Fetched collateral is not trusted for where it came from: it is verified against Intel's root
//! and the policy's freshness rules like carried collateral. It is kept in memory per platform
//! (FMSPC and PCK CA) until its `nextUpdate`, and, with a cache directory, on disk as
//! `<FMSPC>-<ca>.json` (temp file + rename) so a restarted proxy does not refetch.

use std::path::{Path, PathBuf};

use chrysalis_attestation::Policy;
use chrysalis_attestation::collateral::{CollateralKey, CollateralStore};
use chrysalis_attestation::gpu::GpuRims;
use chrysalis_attestation::pcs::{PcsClient, PcsError};
use chrysalis_attestation::ratls::RaTlsServerVerifier;
use chrysalis_attestation::verify::collateral_valid_until;
use dcap_qvl::QuoteCollateralV3;

/// Where a verifier gets TDX collateral of its own: the options of `chrysalis proxy` and
/// `chrysalis verify` and of [`crate::client::ClientBuilder`], over the policy's `[collateral]`.
#[derive(Clone, Debug, Default)]
pub struct CollateralSource {
    /// PCCS or Intel PCS base URL; overrides the policy's `[collateral] pccs_url`.
    pub pccs_url: Option<String>,
    /// PEM bundle of the CAs that may sign the PCCS's TLS certificate (default: the system's).
    pub pccs_ca_file: Option<PathBuf>,
    /// Also keep fetched collateral in this directory.
    pub cache_dir: Option<PathBuf>,
    /// NVIDIA RIMs (driver and VBIOS SWID tags) for GPU nodes whose evidence carries none:
    /// every file of this directory.
    pub gpu_rims_dir: Option<PathBuf>,
}

/// Reads every file of `dir` as a RIM, by the version each claims (verified later, per node).
pub fn load_gpu_rims(dir: &Path) -> Result<GpuRims, CollateralSourceError> {
    let io = |e: std::io::Error| CollateralSourceError::GpuRims(format!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    paths.retain(|p| p.is_file());
    paths.sort();
    let mut rims = GpuRims::default();
    for p in paths {
        let xml = std::fs::read(&p)
            .map_err(|e| CollateralSourceError::GpuRims(format!("{}: {e}", p.display())))?;
        rims.insert(xml).map_err(|e| {
            CollateralSourceError::GpuRims(format!(
                "{} is not a RIM: {}",
                p.display(),
                chrysalis_attestation::ErrorChain(&e)
            ))
        })?;
    }
    if rims.is_empty() {
        return Err(CollateralSourceError::GpuRims(format!(
            "{} holds no RIM",
            dir.display()
        )));
    }
    Ok(rims)
}

/// A collateral source that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralSourceError {
    /// The PCCS URL or CA file is unusable.
    #[error("collateral source")]
    Pcs(#[from] PcsError),
    /// `prefer_own` with nowhere to fetch from.
    #[error("policy: collateral.prefer_own needs collateral.pccs_url (or --pccs-url)")]
    PreferOwnWithoutUrl,
    /// The GPU RIM directory is unreadable or holds a file that is not a RIM.
    #[error("GPU RIMs: {0}")]
    GpuRims(String),
}

impl CollateralSource {
    /// The verifier for `policy`, reading the store of the returned fetcher when this source or
    /// the policy names a URL (the fetcher then goes to
    /// [`crate::connect::AttestedConnector::with_collateral_fetcher`]).
    pub fn verifier(
        self,
        policy: Policy,
    ) -> Result<(RaTlsServerVerifier, Option<CollateralFetcher>), CollateralSourceError> {
        let prefer_own = policy.collateral.prefer_own;
        let url = self.pccs_url.or_else(|| policy.collateral.pccs_url.clone());
        let mut verifier = RaTlsServerVerifier::new(std::sync::Arc::new(policy));
        if let Some(dir) = &self.gpu_rims_dir {
            verifier = verifier.with_gpu_rims(load_gpu_rims(dir)?);
        }
        let Some(url) = url else {
            return match prefer_own {
                true => Err(CollateralSourceError::PreferOwnWithoutUrl),
                false => Ok((verifier, None)),
            };
        };
        let mut f = CollateralFetcher::new(PcsClient::new(&url, self.pccs_ca_file.as_deref())?);
        if let Some(dir) = self.cache_dir {
            f = f.cache_dir(dir);
        }
        let verifier = verifier.with_collateral_store(f.store().clone(), prefer_own);
        Ok((verifier, Some(f)))
    }
}

/// Fetches the collateral a verifier found missing and stores it for the next attempt.
#[derive(Clone, Debug)]
pub struct CollateralFetcher {
    pcs: PcsClient,
    store: CollateralStore,
    cache_dir: Option<PathBuf>,
}

impl CollateralFetcher {
    /// A fetcher from `pcs` into a new store; give the store to the verifier
    /// (`RaTlsServerVerifier::with_collateral_store`).
    pub fn new(pcs: PcsClient) -> Self {
        Self {
            pcs,
            store: CollateralStore::new(),
            cache_dir: None,
        }
    }

    /// Also keeps fetched collateral in `dir` (created when absent).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The store the verifier reads.
    pub fn store(&self) -> &CollateralStore {
        &self.store
    }

    /// Obtains collateral for every key the verifier noted missing (disk cache first, then the
    /// PCCS) and stores it. Returns how many keys were filled; the first fetch error when none
    /// was.
    pub async fn fill_missing(&self, now: u64) -> Result<usize, PcsError> {
        let mut filled = 0;
        let mut first_err = None;
        for key in self.store.take_missing() {
            if let Some(c) = self.read_disk(&key, now) {
                self.store.insert(key, c);
                filled += 1;
                continue;
            }
            match self.pcs.fetch(&key).await {
                Ok(c) => {
                    tracing::info!(%key, pccs = self.pcs.base(), "fetched TDX collateral");
                    self.write_disk(&key, &c);
                    self.store.insert(key, c);
                    filled += 1;
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot fetch TDX collateral");
                    first_err.get_or_insert(e);
                }
            }
        }
        match (filled, first_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(filled),
        }
    }

    fn path(dir: &Path, key: &CollateralKey) -> PathBuf {
        dir.join(format!("{}-{}.json", key.fmspc_hex(), key.ca.as_str()))
    }

    fn read_disk(&self, key: &CollateralKey, now: u64) -> Option<QuoteCollateralV3> {
        let path = Self::path(self.cache_dir.as_ref()?, key);
        let c: QuoteCollateralV3 = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        (collateral_valid_until(&c)? > now).then_some(c)
    }

    /// Best effort: a cache that cannot be written costs a refetch, nothing else.
    fn write_disk(&self, key: &CollateralKey, c: &QuoteCollateralV3) {
        let Some(dir) = &self.cache_dir else { return };
        let path = Self::path(dir, key);
        let tmp = path.with_extension("json.tmp");
        let result = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(c).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache collateral on disk");
        }
    }
}
