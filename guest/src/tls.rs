//! The attested TLS identity: a key generated in this process, RA-TLS certificates over fresh
//! evidence, and hitless renewal.
//!
//! The private key ([`AttestedKey`]) is created here and has no export function. Each
//! certificate ([`chrysalis_attestation::ratls::issue_certificate`]) carries evidence whose
//! report_data commits to the key's SubjectPublicKeyInfo, and lives at most 24 hours;
//! [`CertStore::spawn_renewal`] replaces it with one over fresh evidence at a fraction of its
//! lifetime. Handshakes read the current certificate through [`CertStore`]'s
//! [`ResolvesServerCert`] implementation, so a swap affects only handshakes that start after
//! it; established connections keep going.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_attestation::bundle::Evidence;
use chrysalis_attestation::ratls::{self, AttestedKey, MAX_VALIDITY_SECS, RaTlsError};
use chrysalis_attestation::{ReportData, Sha256};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

use crate::evidence::gpu::GpuEvidenceProvider;
use crate::evidence::{EvidenceError, EvidenceProvider};

/// Errors of certificate issuance.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Key generation, certificate issuance or key binding failed.
    #[error("certificate: {0}")]
    Certificate(#[from] RaTlsError),
    /// Evidence for the certificate could not be obtained.
    #[error("evidence: {0}")]
    Evidence(#[from] EvidenceError),
    /// The requested validity is zero or over 24 hours.
    #[error("certificate validity {0:?} must be between 1 s and 24 h")]
    Validity(Duration),
}

/// What a certificate was issued over: served by `/v1/attestation`.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The certificate.
    pub cert_der: CertificateDer<'static>,
    /// SHA-256 of the certificate DER.
    pub cert_sha256: Sha256,
    /// SHA-256 of the key's SubjectPublicKeyInfo DER (the same for every certificate of this process).
    pub spki_sha256: Sha256,
    /// The report_data the evidence carries.
    pub report_data: ReportData,
    /// The evidence.
    pub bundle: Evidence,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

struct Current {
    certified: Arc<CertifiedKey>,
    info: Arc<CertInfo>,
}

/// Holds the process's key and its current certificate; the rustls certificate resolver.
pub struct CertStore {
    key: AttestedKey,
    gpu: Option<Arc<dyn GpuEvidenceProvider>>,
    current: RwLock<Option<Current>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CertStore {
    /// Generates a fresh P-256 key in this process. No certificate yet: call [`Self::renew`].
    pub fn generate() -> Result<Self, TlsError> {
        Ok(Self {
            key: AttestedKey::generate()?,
            gpu: None,
            current: RwLock::new(None),
        })
    }

    /// Every certificate also carries fresh evidence of the GPUs `gpu` reports, over this key's
    /// GPU nonce, and the CPU evidence binds it; a GPU that cannot attest fails the renewal.
    pub fn with_gpu(mut self, gpu: Arc<dyn GpuEvidenceProvider>) -> Self {
        self.gpu = Some(gpu);
        self
    }

    /// The attested key (it signs receipts).
    pub fn key(&self) -> &AttestedKey {
        &self.key
    }

    /// The current certificate's details, if one was issued.
    pub fn info(&self) -> Option<Arc<CertInfo>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.info.clone())
    }

    /// Obtains fresh evidence over this key and swaps in a new certificate valid from `now`
    /// (backdated by a minute for clients whose clocks lag) for `validity`. On error the
    /// current certificate stays.
    pub async fn renew(
        &self,
        provider: &dyn EvidenceProvider,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Arc<CertInfo>, TlsError> {
        if validity.is_zero() || validity.as_secs() > MAX_VALIDITY_SECS {
            return Err(TlsError::Validity(validity));
        }
        // GPUs first: their record is part of what the CPU evidence binds.
        let gpu = match &self.gpu {
            None => None,
            Some(g) => Some(g.gpu_evidence(self.key.gpu_nonce()).await?),
        };
        let report_data = match &gpu {
            None => self.key.report_data(),
            Some(record) => self.key.report_data_with_gpu(
                &record
                    .to_der()
                    .map_err(|e| EvidenceError::Gpu(e.to_string()))?,
            ),
        };
        let bundle = provider.evidence(report_data).await?;
        let not_before = unix(now).saturating_sub(60.min(validity.as_secs() / 2));
        let cert_der = ratls::issue_certificate_with_gpu(
            &self.key,
            &bundle,
            gpu.as_ref(),
            not_before,
            validity.as_secs(),
        )?;
        let info = Arc::new(CertInfo {
            cert_sha256: Sha256::digest(&cert_der),
            spki_sha256: self.key.spki_sha256(),
            cert_der: cert_der.clone(),
            report_data,
            bundle,
            not_before: UNIX_EPOCH + Duration::from_secs(not_before),
            not_after: UNIX_EPOCH + Duration::from_secs(not_before + validity.as_secs()),
        });
        let certified = self.key.certified_key(cert_der)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Current {
            certified,
            info: info.clone(),
        });
        Ok(info)
    }

    /// When the current certificate should be renewed: at `renew_fraction` of its lifetime
    /// (now, if there is none).
    pub fn renewal_due(&self, renew_fraction: f64) -> SystemTime {
        match self.info() {
            Some(info) => {
                let life = info
                    .not_after
                    .duration_since(info.not_before)
                    .unwrap_or_default();
                info.not_before + life.mul_f64(renew_fraction.clamp(0.05, 0.95))
            }
            None => UNIX_EPOCH,
        }
    }

    /// Renews in the background at `renew_fraction` of each certificate's lifetime (e.g. 2/3),
    /// retrying failures every `retry` while the old certificate is still served. Uses the
    /// system clock.
    pub fn spawn_renewal(
        self: Arc<Self>,
        provider: Arc<dyn EvidenceProvider>,
        validity: Duration,
        renew_fraction: f64,
        retry: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let due = self.renewal_due(renew_fraction);
                tokio::time::sleep(due.duration_since(SystemTime::now()).unwrap_or_default()).await;
                match self
                    .renew(provider.as_ref(), SystemTime::now(), validity)
                    .await
                {
                    Ok(info) => {
                        tracing::info!(cert = %info.cert_sha256, "certificate renewed with fresh evidence")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "certificate renewal failed; retrying");
                        tokio::time::sleep(retry).await;
                    }
                }
            }
        })
    }

    /// The rustls server configuration (TLS 1.3 only, ALPN http/1.1) that resolves
    /// certificates through this store.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut cfg = ratls::server_config(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.certified.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::LocalSim;
    use chrysalis_attestation::Measurement;
    use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, td_measurements};

    const T0: u64 = 1_800_000_000;

    fn sim() -> LocalSim {
        LocalSim::new(
            SimPki::from_seed(DEFAULT_SEED),
            td_measurements(Measurement([7; 48]), [Measurement::ZERO; 4]),
            T0 - 3600,
        )
    }

    #[tokio::test]
    async fn evidence_is_requested_over_the_key_binding_and_renewal_swaps_the_certificate() {
        let store = CertStore::generate().unwrap();
        let ev = sim();
        let t0 = UNIX_EPOCH + Duration::from_secs(T0);
        let a = store
            .renew(&ev, t0, Duration::from_secs(3600))
            .await
            .unwrap();
        let b = store
            .renew(
                &ev,
                t0 + Duration::from_secs(2400),
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert_eq!(ev.asked(), vec![store.key().report_data(); 2]);
        assert_ne!(a.cert_sha256, b.cert_sha256);
        assert_eq!(a.spki_sha256, b.spki_sha256);
        assert_eq!(store.info().unwrap().cert_sha256, b.cert_sha256);
        assert_eq!(
            b.not_after.duration_since(b.not_before).unwrap(),
            Duration::from_secs(3600)
        );
        // The certificate carries the evidence bundle (the RA-TLS extension).
        let carried = ratls::extract_bundle(&b.cert_der).unwrap();
        assert_eq!(carried, b.bundle);
        // Renewal is due at 2/3 of the lifetime.
        assert_eq!(
            store.renewal_due(2.0 / 3.0),
            b.not_before + Duration::from_secs(2400)
        );
    }

    #[tokio::test]
    async fn a_gpu_node_certificate_carries_bound_gpu_evidence() {
        use crate::evidence::gpu::{CcState, LocalSimGpu};
        use chrysalis_attestation::gpu::Revocation;
        use chrysalis_attestation::policy::{Policy, TdxPin};
        use chrysalis_attestation::sim::{SimGpu, SimNvidiaPki};
        let nv = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let store = CertStore::generate().unwrap().with_gpu(Arc::new(
            LocalSimGpu::new(SimNvidiaPki::from_seed(DEFAULT_SEED), SimGpu::default()).at(T0),
        ));
        let ev = sim();
        let t0 = UNIX_EPOCH + Duration::from_secs(T0);
        let info = store
            .renew(&ev, t0, Duration::from_secs(3600))
            .await
            .unwrap();
        let (_, record) = ratls::extract_evidence(&info.cert_der).unwrap();
        let record = record.expect("a GPU record");
        // The CPU evidence was asked for the binding of the key and exactly this record.
        assert_eq!(
            ev.asked(),
            vec![store.key().report_data_with_gpu(&record.to_der().unwrap())]
        );
        let mut policy = Policy::pinned(vec![TdxPin::new(Measurement([7; 48]))], vec![]);
        policy.trust.dangerous_simulated_intel_roots =
            vec![SimPki::from_seed(DEFAULT_SEED).root_sha256()];
        policy.gpu.require = true;
        policy.gpu.dangerous_simulated_nvidia_roots =
            vec![nv.device_root_sha256(), nv.rim_root_sha256()];
        // The simulated PKI's OCSP answers are carried and checked: no dangerous_no_ocsp.
        let peer = ratls::verify_certificate(&info.cert_der, &policy, None, T0 + 10).unwrap();
        assert_eq!(peer.gpus().len(), 1);
        assert_eq!(peer.gpus()[0].revocation, Revocation::OcspGood);

        // A GPU outside production CC mode: no certificate, and the reason named.
        let devtools = CertStore::generate().unwrap().with_gpu(Arc::new(
            LocalSimGpu::new(nv, SimGpu::default()).with_state(CcState {
                cc_feature: 1,
                devtools_mode: 1,
                environment: 2,
                ready: 1,
            }),
        ));
        let e = devtools
            .renew(&ev, t0, Duration::from_secs(3600))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("devtools mode"), "{e}");
        assert!(devtools.info().is_none());
    }

    #[tokio::test]
    async fn validity_over_a_day_is_refused() {
        let store = CertStore::generate().unwrap();
        let e = store
            .renew(&sim(), SystemTime::now(), Duration::from_secs(25 * 3600))
            .await
            .unwrap_err();
        assert!(matches!(e, TlsError::Validity(_)), "{e}");
        assert!(store.info().is_none());
    }

    #[tokio::test]
    async fn evidence_for_another_key_is_refused() {
        struct Wrong(LocalSim);
        impl EvidenceProvider for Wrong {
            fn evidence(
                &self,
                _rd: ReportData,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Evidence, EvidenceError>> + Send + '_>,
            > {
                self.0.evidence(ReportData([1; 64]))
            }
            fn name(&self) -> &'static str {
                "wrong"
            }
        }
        let store = CertStore::generate().unwrap();
        let e = store
            .renew(
                &Wrong(sim()),
                UNIX_EPOCH + Duration::from_secs(T0),
                Duration::from_secs(60),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not bind this key"), "{e}");
    }
}
