//! The attested TLS identity: a key generated in this process, certificates over fresh evidence,
//! and hitless renewal.
//!
//! The private key is created here and never serialized outside process memory. Each certificate
//! binds evidence whose report_data commits to the key's SubjectPublicKeyInfo, and lives at most
//! 24 hours; [`CertStore::spawn_renewal`] replaces it with one over fresh evidence at a fraction of
//! its lifetime. Handshakes read the current certificate through [`CertStore`]'s
//! [`ResolvesServerCert`] implementation, so a swap affects only handshakes that start after it;
//! established connections keep going.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrysalis_attestation::{ReportData, Sha256};
use rcgen::{KeyPair, PublicKeyData, SigningKey as _};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest;
use thiserror::Error;

use crate::evidence::{EvidenceBundle, EvidenceError, EvidenceProvider};

/// Longest certificate lifetime the runtime accepts.
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Domain tag of the key binding. Versioned so evidence made for one purpose never verifies for another.
pub const KEY_BINDING_TAG: &[u8] = b"chrysalis ra-tls key binding v1\0";

/// Errors of key generation and certificate issuance.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Key generation or certificate encoding failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the key or the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Evidence for the certificate could not be obtained.
    #[error("evidence: {0}")]
    Evidence(#[from] EvidenceError),
    /// The requested validity is zero or over [`MAX_VALIDITY`].
    #[error("certificate validity {0:?} must be between 1 s and 24 h")]
    Validity(Duration),
    /// The receipt or other signature failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// report_data for a TLS key: SHA-512(tag ‖ SPKI DER).
pub fn report_data_for_spki(spki_der: &[u8]) -> ReportData {
    let mut h = sha2::Sha512::new();
    h.update(KEY_BINDING_TAG);
    h.update(spki_der);
    ReportData(h.finalize().into())
}

/// Turns a key and evidence into a certificate. One implementation per certificate format.
pub trait CertIssuer: Send + Sync + 'static {
    /// A self-signed certificate for `key`, valid from `not_before` for `validity`, carrying `bundle`.
    fn issue(
        &self,
        key: &KeyPair,
        bundle: &EvidenceBundle,
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<CertificateDer<'static>, TlsError>;
}

/// A plain self-signed certificate (subject `chrysalis-guest`, SAN `localhost`) that does not
/// carry the evidence: clients fetch it from `/v1/attestation` and compare the SPKI binding.
#[derive(Debug, Default, Clone, Copy)]
pub struct SelfSignedIssuer;

impl CertIssuer for SelfSignedIssuer {
    fn issue(
        &self,
        key: &KeyPair,
        _bundle: &EvidenceBundle,
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chrysalis-guest");
        params.not_before = not_before.into();
        params.not_after = (not_before + validity).into();
        Ok(params.self_signed(key)?.der().clone())
    }
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
    pub bundle: EvidenceBundle,
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
    key: KeyPair,
    rustls_key: Arc<dyn rustls::sign::SigningKey>,
    spki_der: Vec<u8>,
    issuer: Box<dyn CertIssuer>,
    current: RwLock<Option<Current>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("spki_sha256", &Sha256::digest(&self.spki_der))
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Generates a fresh P-256 key in this process. No certificate yet: call [`Self::renew`].
    pub fn generate(issuer: Box<dyn CertIssuer>) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let rustls_key = rustls::crypto::ring::sign::any_ecdsa_type(&pkcs8)?;
        let spki_der = key.subject_public_key_info();
        Ok(Self {
            key,
            rustls_key,
            spki_der,
            issuer,
            current: RwLock::new(None),
        })
    }

    /// DER SubjectPublicKeyInfo of the key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of [`Self::spki_der`].
    pub fn spki_sha256(&self) -> Sha256 {
        Sha256::digest(&self.spki_der)
    }

    /// The report_data that evidence for this key must carry.
    pub fn report_data(&self) -> ReportData {
        report_data_for_spki(&self.spki_der)
    }

    /// The current certificate's details, if one was issued.
    pub fn info(&self) -> Option<Arc<CertInfo>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.info.clone())
    }

    /// Signs `msg` with the attested key (ECDSA P-256 with SHA-256, ASN.1 DER signature).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, TlsError> {
        self.key.sign(msg).map_err(|e| TlsError::Sign(e.to_string()))
    }

    /// Obtains fresh evidence over this key and swaps in a new certificate valid from `now`.
    /// On error the current certificate stays.
    pub async fn renew(
        &self,
        provider: &dyn EvidenceProvider,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Arc<CertInfo>, TlsError> {
        if validity.is_zero() || validity > MAX_VALIDITY {
            return Err(TlsError::Validity(validity));
        }
        let report_data = self.report_data();
        let bundle = provider.evidence(report_data).await?;
        // Backdate a minute so that a client whose clock is slightly behind accepts a fresh certificate.
        let not_before = now - Duration::from_secs(60).min(validity / 2);
        let not_after = not_before + validity;
        let cert_der = self.issuer.issue(&self.key, &bundle, not_before, validity)?;
        let info = Arc::new(CertInfo {
            cert_sha256: Sha256::digest(&cert_der),
            spki_sha256: self.spki_sha256(),
            cert_der: cert_der.clone(),
            report_data,
            bundle,
            not_before,
            not_after,
        });
        let certified = Arc::new(CertifiedKey::new(vec![cert_der], self.rustls_key.clone()));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Current {
            certified,
            info: info.clone(),
        });
        Ok(info)
    }

    /// Renews in the background at `renew_fraction` of each certificate's lifetime (e.g. 2/3),
    /// retrying failures every `retry` until the old certificate expires. Uses the system clock.
    pub fn spawn_renewal(
        self: Arc<Self>,
        provider: Arc<dyn EvidenceProvider>,
        validity: Duration,
        renew_fraction: f64,
        retry: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let wait = match self.info() {
                    Some(info) => {
                        let life = info.not_after.duration_since(info.not_before).unwrap_or_default();
                        let due = info.not_before + life.mul_f64(renew_fraction.clamp(0.05, 0.95));
                        due.duration_since(SystemTime::now()).unwrap_or_default()
                    }
                    None => Duration::ZERO,
                };
                tokio::time::sleep(wait).await;
                match self.renew(provider.as_ref(), SystemTime::now(), validity).await {
                    Ok(info) => tracing::info!(cert = %info.cert_sha256, "certificate renewed with fresh evidence"),
                    Err(e) => {
                        tracing::error!(error = %e, "certificate renewal failed; retrying");
                        tokio::time::sleep(retry).await;
                    }
                }
            }
        })
    }

    /// A rustls server configuration (TLS 1.3 only, ALPN http/1.1) that resolves
    /// certificates through this store.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
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
    use crate::evidence::FixedEvidence;
    use chrysalis_attestation::Platform;

    #[tokio::test]
    async fn evidence_is_requested_over_the_key_binding_and_renewal_swaps_the_certificate() {
        let store = CertStore::generate(Box::new(SelfSignedIssuer)).unwrap();
        let ev = FixedEvidence::new(Platform::Tdx, vec![1, 2, 3]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = store.renew(&ev, t0, Duration::from_secs(3600)).await.unwrap();
        let b = store
            .renew(&ev, t0 + Duration::from_secs(2400), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(ev.asked(), vec![store.report_data(); 2]);
        assert_eq!(store.report_data(), report_data_for_spki(store.spki_der()));
        assert_ne!(a.cert_sha256, b.cert_sha256);
        assert_eq!(a.spki_sha256, b.spki_sha256);
        assert_eq!(store.info().unwrap().cert_sha256, b.cert_sha256);
        assert_eq!(b.not_after.duration_since(b.not_before).unwrap(), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn validity_over_a_day_is_refused() {
        let store = CertStore::generate(Box::new(SelfSignedIssuer)).unwrap();
        let ev = FixedEvidence::new(Platform::Tdx, vec![1]);
        let e = store
            .renew(&ev, SystemTime::now(), Duration::from_secs(25 * 3600))
            .await
            .unwrap_err();
        assert!(matches!(e, TlsError::Validity(_)), "{e}");
        assert!(store.info().is_none());
    }

    #[test]
    fn key_binding_depends_on_the_key() {
        let a = CertStore::generate(Box::new(SelfSignedIssuer)).unwrap();
        let b = CertStore::generate(Box::new(SelfSignedIssuer)).unwrap();
        assert_ne!(a.report_data(), b.report_data());
    }
}
