//! RA-TLS: self-signed certificates that carry evidence bound to their own key, and rustls
//! verifiers that accept a peer only when a [`Policy`] accepts that evidence.
//!
//! Issuing (inside the confidential VM):
//! 1. [`AttestedKey::generate`] makes a P-256 key that never leaves the process.
//! 2. [`AttestedKey::report_data`] is SHA-512(`REPORT_DATA_DOMAIN` ‖ SPKI DER): the guest asks
//!    its TEE for evidence over exactly these 64 bytes.
//! 3. [`issue_certificate`] writes a certificate valid for at most 24 hours whose `id-pe-cmw`
//!    extension (RFC 9999, OID 1.3.6.1.5.5.7.1.35) carries the [`Evidence`] as an evidence bundle.
//!
//! Verifying (client): [`verify_certificate`] parses, checks the validity window, the
//! self-signature, decodes the evidence, verifies it against the policy's roots, checks the
//! key binding and applies the policy. [`RaTlsServerVerifier`] and [`RaTlsClientVerifier`] do
//! this inside a rustls handshake and cache accepted certificates, so a second connection to
//! the same certificate costs one hash and a lookup.
//!
//! The wire format is specified in docs/ra-tls.md.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;

use crate::bundle::Evidence;
use crate::collateral::{CollateralKey, CollateralStore};
use crate::error::EvidenceError;
use crate::evidence::{ReportData, Sha256};
use crate::gpu::{self, GpuRecord, GpuRims, GpuVerdict};
use crate::policy::{Policy, RejectReason, Rejection, VerifiedEvidence};
use crate::verify::{self, VerifyError};

/// Domain tag hashed before the SPKI: names the protocol and its version, so evidence made for
/// this purpose can never be replayed for another.
pub const REPORT_DATA_DOMAIN: &[u8] = b"chrysalis/ra-tls/v1\0";

/// `id-pe-cmw` (RFC 9999): the X.509 extension that carries a conceptual message wrapper.
pub const CMW_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 35];

/// Media type of the wrapped evidence bundle inside the CMW record.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.chrysalis.evidence-bundle+der";

/// CMW indicator bit for Evidence (RFC 9999).
pub const CMW_INDICATOR_EVIDENCE: u64 = 4;

/// Longest certificate lifetime a verifier accepts, and an issuer may ask for.
pub const MAX_VALIDITY_SECS: u64 = 24 * 3600;

/// Domain tag of the key binding of a node that carries GPU evidence: a different tag, so a
/// host cannot strip the GPU record and present the CPU evidence as a CPU-only node's.
pub const REPORT_DATA_DOMAIN_GPU: &[u8] = b"chrysalis/ra-tls/v1+gpu\0";

/// Domain tag of the nonce a node asks its GPUs to sign.
pub const GPU_NONCE_DOMAIN: &[u8] = b"chrysalis/ra-tls/gpu-nonce/v1\0";

/// Media type of the GPU evidence record (see [`crate::gpu::record`]) inside the CMW collection.
pub const GPU_RECORD_MEDIA_TYPE: &str = "application/vnd.chrysalis.gpu-evidence+der";

/// The CMW collection type (`__cmwc_t`, RFC 9999) of a certificate that carries CPU and GPU
/// evidence as two records, labelled `cpu` and `gpu`.
pub const CMW_COLLECTION_TYPE: &str = "tag:chrysalis.invalid,2026:ra-tls/v1/cpu+gpu";

/// The report_data that binds evidence to a TLS key: SHA-512(domain tag ‖ SPKI DER).
pub fn report_data_for_spki(spki_der: &[u8]) -> ReportData {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(REPORT_DATA_DOMAIN);
    ctx.update(spki_der);
    ReportData::from_slice(ctx.finish().as_ref()).expect("SHA-512 is 64 bytes")
}

/// The report_data of a node with GPUs: SHA-512(GPU domain tag ‖ SHA-512(GPU record DER) ‖
/// SPKI DER). The CPU evidence then fixes the GPU record byte for byte.
pub fn report_data_for_spki_and_gpu(spki_der: &[u8], gpu_record_der: &[u8]) -> ReportData {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(REPORT_DATA_DOMAIN_GPU);
    ctx.update(ring::digest::digest(&ring::digest::SHA512, gpu_record_der).as_ref());
    ctx.update(spki_der);
    ReportData::from_slice(ctx.finish().as_ref()).expect("SHA-512 is 64 bytes")
}

/// The nonce a node's GPUs sign: SHA-256(GPU nonce domain tag ‖ SPKI DER), so each GPU report
/// is fresh for this key and useless for any other.
pub fn gpu_nonce_for_spki(spki_der: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(GPU_NONCE_DOMAIN);
    ctx.update(spki_der);
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Errors of issuing a certificate or using a key.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RaTlsError {
    /// Key generation or certificate encoding failed.
    #[error("certificate issuance failed: {0}")]
    Issue(String),
    /// The bundle's evidence is not bound to this key: it would be rejected by every verifier.
    #[error("evidence report_data {actual} does not bind this key (expected {expected})")]
    NotBound {
        /// What this key needs.
        expected: Box<ReportData>,
        /// What the evidence carries.
        actual: Box<ReportData>,
    },
    /// The requested lifetime is zero or longer than [`MAX_VALIDITY_SECS`].
    #[error("certificate lifetime of {0} s is outside 1..={MAX_VALIDITY_SECS} s")]
    Lifetime(u64),
    /// The evidence could not be encoded as a bundle.
    #[error("certificate issuance failed: cannot encode the evidence")]
    Evidence(#[from] EvidenceError),
}

/// A P-256 key generated in this process, for TLS and for signing receipts. It has no export
/// function: the private key exists only inside the confidential VM. Feature `signing`.
#[cfg(feature = "signing")]
pub struct AttestedKey {
    rcgen: rcgen::KeyPair,
    fixed: ring::signature::EcdsaKeyPair,
    spki: Vec<u8>,
}

#[cfg(feature = "signing")]
impl std::fmt::Debug for AttestedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttestedKey(spki sha256 {})", Sha256::digest(&self.spki))
    }
}

#[cfg(feature = "signing")]
impl AttestedKey {
    /// Generates a fresh key.
    pub fn generate() -> Result<Self, RaTlsError> {
        let rcgen = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| RaTlsError::Issue(e.to_string()))?;
        let fixed = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            rcgen.serialized_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| RaTlsError::Issue(e.to_string()))?;
        use rcgen::PublicKeyData as _;
        let spki = rcgen.subject_public_key_info();
        Ok(Self { rcgen, fixed, spki })
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of the SPKI (receipts name their signer by it).
    pub fn spki_sha256(&self) -> Sha256 {
        Sha256::digest(&self.spki)
    }

    /// What the TEE must sign for this key: see [`report_data_for_spki`].
    pub fn report_data(&self) -> ReportData {
        report_data_for_spki(&self.spki)
    }

    /// What the TEE must sign for this key and GPU record: see [`report_data_for_spki_and_gpu`].
    pub fn report_data_with_gpu(&self, gpu_record_der: &[u8]) -> ReportData {
        report_data_for_spki_and_gpu(&self.spki, gpu_record_der)
    }

    /// The nonce this key's GPUs must sign: see [`gpu_nonce_for_spki`].
    pub fn gpu_nonce(&self) -> [u8; 32] {
        gpu_nonce_for_spki(&self.spki)
    }

    /// ECDSA P-256 SHA-256 signature, raw r‖s (64 bytes), as JWS ES256 wants it.
    pub fn sign_es256(&self, msg: &[u8]) -> Result<Vec<u8>, RaTlsError> {
        self.fixed
            .sign(&ring::rand::SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| RaTlsError::Issue("ECDSA signing failed".into()))
    }

    /// A rustls certified key for `cert` (issued for this key) to serve with.
    pub fn certified_key(
        &self,
        cert: CertificateDer<'static>,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, RaTlsError> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.rcgen.serialize_der()));
        let signer = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| RaTlsError::Issue(e.to_string()))?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            signer,
        )))
    }
}

/// The crypto provider chrysalis uses for TLS (ring, TLS 1.3 only).
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// Built once: the verifiers consult it on every handshake, and building one allocates.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

#[cfg(feature = "signing")]
fn cmw_record(media_type: &str, der: &[u8]) -> serde_json::Value {
    serde_json::json!([
        media_type,
        URL_SAFE_NO_PAD.encode(der),
        CMW_INDICATOR_EVIDENCE
    ])
}

/// Issues a self-signed certificate for `key` carrying `evidence`, valid from `not_before`
/// (unix seconds) for `lifetime_secs` (at most 24 h).
///
/// Refuses evidence whose report_data does not bind `key`: such a certificate could never
/// verify, and issuing it would only hide the mistake. Feature `signing`.
#[cfg(feature = "signing")]
pub fn issue_certificate(
    key: &AttestedKey,
    evidence: &Evidence,
    not_before: u64,
    lifetime_secs: u64,
) -> Result<CertificateDer<'static>, RaTlsError> {
    issue_certificate_with_gpu(key, evidence, None, not_before, lifetime_secs)
}

/// [`issue_certificate`] for a node with GPUs: the extension is a CMW collection of the CPU
/// evidence and the GPU record, and `evidence` must bind both
/// ([`AttestedKey::report_data_with_gpu`]). With `gpu` None it is [`issue_certificate`].
#[cfg(feature = "signing")]
pub fn issue_certificate_with_gpu(
    key: &AttestedKey,
    evidence: &Evidence,
    gpu: Option<&GpuRecord>,
    not_before: u64,
    lifetime_secs: u64,
) -> Result<CertificateDer<'static>, RaTlsError> {
    if lifetime_secs == 0 || lifetime_secs > MAX_VALIDITY_SECS {
        return Err(RaTlsError::Lifetime(lifetime_secs));
    }
    let gpu_der = gpu
        .map(|g| g.to_der().map_err(|e| RaTlsError::Issue(e.to_string())))
        .transpose()?;
    let expected = match &gpu_der {
        None => key.report_data(),
        Some(der) => key.report_data_with_gpu(der),
    };
    let actual = evidence.report_data();
    if actual != expected {
        return Err(RaTlsError::NotBound {
            expected: Box::new(expected),
            actual: Box::new(actual),
        });
    }
    let issue = |e: rcgen::Error| RaTlsError::Issue(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec!["chrysalis.invalid".to_string()]).map_err(issue)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "chrysalis attested node");
    params.distinguished_name = dn;
    params.not_before = time_at(not_before)?;
    params.not_after = time_at(not_before + lifetime_secs)?;
    let bundle_der = evidence.to_der()?;
    let cpu = cmw_record(BUNDLE_MEDIA_TYPE, &bundle_der);
    let json = match &gpu_der {
        None => cpu,
        Some(der) => serde_json::json!({
            "__cmwc_t": CMW_COLLECTION_TYPE,
            "cpu": cpu,
            "gpu": cmw_record(GPU_RECORD_MEDIA_TYPE, der),
        }),
    };
    // CMW ::= CHOICE { json UTF8String, cbor OCTET STRING }: the JSON form.
    let value =
        der::Encode::to_der(&json.to_string()).map_err(|e| RaTlsError::Issue(e.to_string()))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            CMW_EXTENSION_OID,
            value,
        ));
    let cert = params.self_signed(&key.rcgen).map_err(issue)?;
    Ok(cert.der().clone())
}

#[cfg(feature = "signing")]
fn time_at(secs: u64) -> Result<time::OffsetDateTime, RaTlsError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| RaTlsError::Issue(format!("time {secs} out of range")))
}

/// A peer whose certificate verified and whose evidence a policy accepted, bound to the key
/// the TLS handshake proved possession of. Only [`verify_certificate`] constructs one, from the
/// [`VerifiedEvidence`] that [`Policy::evaluate`] returned for the certificate's own key binding.
///
/// ```compile_fail,E0451
/// use chrysalis_attestation::{Sha256, VerifiedEvidence, VerifiedPeer};
/// fn forge(evidence: VerifiedEvidence, spki_der: Vec<u8>) -> VerifiedPeer {
///     VerifiedPeer { evidence, gpus: vec![], spki_der, cert_sha256: Sha256([0; 32]), not_after: 0 }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPeer {
    evidence: VerifiedEvidence,
    gpus: Vec<GpuVerdict>,
    spki_der: Vec<u8>,
    cert_sha256: Sha256,
    not_after: u64,
}

impl VerifiedPeer {
    /// The accepted evidence.
    pub fn evidence(&self) -> &VerifiedEvidence {
        &self.evidence
    }

    /// The verdict on each of the peer's GPUs (empty for a node without GPU evidence), each
    /// produced by [`crate::gpu::verify`] for this key's nonce.
    pub fn gpus(&self) -> &[GpuVerdict] {
        &self.gpus
    }

    /// The peer's SubjectPublicKeyInfo (what receipts are verified with).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of the peer's SPKI.
    pub fn spki_sha256(&self) -> Sha256 {
        Sha256::digest(&self.spki_der)
    }

    /// SHA-256 of the certificate's DER.
    pub fn cert_sha256(&self) -> Sha256 {
        self.cert_sha256
    }

    /// The certificate's notAfter (unix seconds).
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// Until when this acceptance may be reused: the earlier of the certificate's expiry and
    /// the evidence's collateral expiry.
    pub fn valid_until(&self) -> u64 {
        self.evidence
            .verdict()
            .valid_until
            .map_or(self.not_after, |v| v.min(self.not_after))
    }
}

fn cert_reason(msg: impl Into<String>) -> Rejection {
    Rejection {
        reasons: vec![RejectReason::Certificate(msg.into())],
    }
}

/// Extracts the evidence of an RA-TLS certificate (structure only: parsed, not verified).
pub fn extract_bundle(cert_der: &[u8]) -> Result<Evidence, Rejection> {
    extract_evidence(cert_der).map(|(e, _)| e)
}

/// Extracts the CPU evidence and, for a node with GPUs, the GPU record of an RA-TLS
/// certificate (structure only: parsed, not verified).
pub fn extract_evidence(cert_der: &[u8]) -> Result<(Evidence, Option<GpuRecord>), Rejection> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| cert_reason(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(cert_reason("trailing bytes after the certificate"));
    }
    evidence_of(&cert).map(|(e, g)| (e, g.map(|(g, _)| g)))
}

/// A GPU record as carried: decoded, and the exact bytes the key binding hashes.
type CarriedGpu = (GpuRecord, Vec<u8>);

fn evidence_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(Evidence, Option<CarriedGpu>), Rejection> {
    let oid = x509_parser::oid_registry::Oid::from(CMW_EXTENSION_OID).expect("valid OID");
    let mut found = cert.extensions().iter().filter(|e| e.oid == oid);
    let ext = found
        .next()
        .ok_or_else(|| cert_reason("no evidence extension (id-pe-cmw)"))?;
    if found.next().is_some() {
        return Err(cert_reason("more than one evidence extension"));
    }
    let json: String = der::Decode::from_der(ext.value).map_err(|e| {
        cert_reason(format!(
            "evidence extension is not a JSON CMW (UTF8String): {e}"
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| cert_reason(format!("evidence extension is not JSON: {e}")))?;
    let (cpu, gpu) = match value {
        serde_json::Value::Object(mut map) => {
            match map.remove("__cmwc_t") {
                Some(serde_json::Value::String(t)) if t == CMW_COLLECTION_TYPE => {}
                other => {
                    return Err(cert_reason(format!(
                        "evidence collection of unknown type {other:?} (expected {CMW_COLLECTION_TYPE:?})"
                    )));
                }
            }
            let (Some(cpu), Some(gpu)) = (map.remove("cpu"), map.remove("gpu")) else {
                return Err(cert_reason(
                    "evidence collection lacks its \"cpu\" or \"gpu\" record",
                ));
            };
            if let Some(label) = map.keys().next() {
                return Err(cert_reason(format!(
                    "evidence collection has an unknown record {label:?}"
                )));
            }
            (cpu, Some(gpu))
        }
        other => (other, None),
    };
    let der = record_payload(cpu, BUNDLE_MEDIA_TYPE, "evidence")?;
    let evidence = Evidence::from_der(&der).map_err(|e| match e {
        // The bundle's own structure is part of the certificate; a quote or report that does
        // not parse is evidence that does not verify.
        EvidenceError::Malformed {
            what: "evidence bundle",
            ..
        }
        | EvidenceError::UnknownPlatform(_) => cert_reason(e.to_string()),
        e => Rejection::one(RejectReason::Verification(VerifyError::Evidence(e))),
    })?;
    let gpu = match gpu {
        None => None,
        Some(v) => {
            let der = record_payload(v, GPU_RECORD_MEDIA_TYPE, "GPU evidence")?;
            let record = GpuRecord::from_der(&der).map_err(|e| cert_reason(e.to_string()))?;
            Some((record, der))
        }
    };
    Ok((evidence, gpu))
}

/// The payload of one CMW record `[media type, base64url, indicator]` of `media_type`.
fn record_payload(
    value: serde_json::Value,
    media_type: &str,
    what: &str,
) -> Result<Vec<u8>, Rejection> {
    let record: (String, String, Option<u64>) = serde_json::from_value(value)
        .map_err(|e| cert_reason(format!("{what} is not a CMW record: {e}")))?;
    if record.0 != media_type {
        return Err(cert_reason(format!(
            "{what} of unknown type {:?} (expected {media_type:?})",
            record.0
        )));
    }
    URL_SAFE_NO_PAD
        .decode(record.1)
        .map_err(|e| cert_reason(format!("{what} is not base64url: {e}")))
}

/// Verifies an RA-TLS certificate at `now` (unix seconds) under `policy`.
///
/// Returns Ok only if: the certificate parses, is valid at `now`, lives at most 24 hours and
/// verifies under its own key; its evidence verifies against the policy's roots (with
/// `collateral` instead of carried TDX collateral when given); the evidence's report_data
/// binds the certificate's key; and the policy accepts the verdict. The rejection lists every
/// failed rule. It does NOT prove the peer holds the key: the TLS handshake does that.
pub fn verify_certificate(
    cert_der: &[u8],
    policy: &Policy,
    collateral: Option<&dcap_qvl::QuoteCollateralV3>,
    now: u64,
) -> Result<VerifiedPeer, Rejection> {
    verify_certificate_with_rims(cert_der, policy, collateral, None, now)
}

/// [`verify_certificate`], with RIMs the verifier holds for GPUs whose evidence carries none.
///
/// A certificate with a GPU record is accepted only if, besides the CPU rules: the CPU evidence
/// binds the key and the record ([`report_data_for_spki_and_gpu`]), and every GPU's evidence
/// verifies under `policy.gpu` with the key's nonce ([`gpu_nonce_for_spki`]). Without a record,
/// `gpu.require` refuses it.
pub fn verify_certificate_with_rims(
    cert_der: &[u8],
    policy: &Policy,
    collateral: Option<&dcap_qvl::QuoteCollateralV3>,
    gpu_rims: Option<&GpuRims>,
    now: u64,
) -> Result<VerifiedPeer, Rejection> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| cert_reason(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(cert_reason("trailing bytes after the certificate"));
    }
    let mut reasons = Vec::new();
    let nb = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
    let na = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    if now < nb {
        reasons.push(RejectReason::Certificate(format!(
            "not valid before {nb} (now {now})"
        )));
    }
    if now > na {
        reasons.push(RejectReason::Certificate(format!(
            "expired at {na} (now {now})"
        )));
    }
    if na.saturating_sub(nb) > MAX_VALIDITY_SECS {
        reasons.push(RejectReason::Certificate(format!(
            "lifetime {} s exceeds the {MAX_VALIDITY_SECS} s limit",
            na.saturating_sub(nb)
        )));
    }
    if let Err(e) = cert.verify_signature(None) {
        reasons.push(RejectReason::Certificate(format!(
            "self-signature does not verify: {e}"
        )));
    }
    let spki_der = cert.public_key().raw.to_vec();
    let (bundle, gpu) = match evidence_of(&cert) {
        Ok(b) => b,
        Err(mut r) => {
            reasons.append(&mut r.reasons);
            return Err(Rejection { reasons });
        }
    };
    let binding = match &gpu {
        None => report_data_for_spki(&spki_der),
        Some((_, der)) => report_data_for_spki_and_gpu(&spki_der, der),
    };
    let accepted = match verify::verify(&bundle, &policy.trust_anchors(), collateral, now) {
        Err(e) => {
            reasons.push(RejectReason::Verification(e));
            None
        }
        // The key binding is checked inside the proof: evaluate yields nothing for evidence
        // made for another key (or another GPU record).
        Ok(verified) => match policy.evaluate(verified, &binding) {
            Ok(v) => Some(v),
            Err(mut r) => {
                reasons.append(&mut r.reasons);
                None
            }
        },
    };
    let gpus = match &gpu {
        None => {
            if policy.gpu.require {
                reasons.push(RejectReason::GpuEvidenceMissing);
            }
            Vec::new()
        }
        Some((record, _)) => verify_gpus(record, &spki_der, policy, gpu_rims, now, &mut reasons),
    };
    match accepted {
        Some(evidence) if reasons.is_empty() => Ok(VerifiedPeer {
            evidence,
            gpus,
            spki_der,
            cert_sha256: Sha256::digest(cert_der),
            not_after: na,
        }),
        _ => Err(Rejection { reasons }),
    }
}

/// Verifies every GPU of a record against the key's nonce; a refusal per GPU goes to `reasons`.
fn verify_gpus(
    record: &GpuRecord,
    spki_der: &[u8],
    policy: &Policy,
    rims: Option<&GpuRims>,
    now: u64,
    reasons: &mut Vec<RejectReason>,
) -> Vec<GpuVerdict> {
    let nonce = gpu_nonce_for_spki(spki_der);
    let mut verdicts = Vec::new();
    for (index, attestation) in record.gpus.iter().enumerate() {
        let evidence = attestation.evidence(rims);
        let trust = policy.gpu.trust_for(&evidence);
        match gpu::verify(&evidence, &nonce, &trust, &policy.gpu, now) {
            Ok(v) => verdicts.push(v.verdict().clone()),
            Err(e) => reasons.push(RejectReason::Gpu {
                index,
                reason: crate::error::ErrorChain(&e).to_string(),
            }),
        }
    }
    verdicts
}

/// Accepted certificates by SHA-256, reused until they or their collateral expire, and the
/// last rejection for callers that want the structured reason after a failed handshake.
#[derive(Debug)]
struct VerdictCache {
    policy: Arc<Policy>,
    collateral: Option<dcap_qvl::QuoteCollateralV3>,
    /// Collateral the verifier's owner fetched per platform, and whether it is required over
    /// what certificates carry (`[collateral] prefer_own`).
    own: Option<(CollateralStore, bool)>,
    /// RIMs for GPUs whose evidence carries none.
    gpu_rims: Option<GpuRims>,
    accepted: Mutex<HashMap<Sha256, VerifiedPeer>>,
    last_rejection: Mutex<Option<Rejection>>,
}

impl VerdictCache {
    fn new(policy: Arc<Policy>) -> Self {
        Self {
            policy,
            collateral: None,
            own: None,
            gpu_rims: None,
            accepted: Mutex::new(HashMap::new()),
            last_rejection: Mutex::new(None),
        }
    }

    fn check(&self, cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let now = now.as_secs();
        let key = Sha256::digest(cert.as_ref());
        {
            let mut map = self.accepted.lock().expect("verdict cache poisoned");
            match map.get(&key) {
                Some(p) if now <= p.valid_until() => return Ok(()),
                Some(_) => {
                    map.remove(&key);
                }
                None => {}
            }
        }
        let own = match self.own_collateral(cert.as_ref(), now) {
            Ok(own) => own,
            Err(rejection) => return Err(self.reject(rejection)),
        };
        let collateral = own.as_deref().or(self.collateral.as_ref());
        match verify_certificate_with_rims(
            cert.as_ref(),
            &self.policy,
            collateral,
            self.gpu_rims.as_ref(),
            now,
        ) {
            Ok(peer) => {
                let mut map = self.accepted.lock().expect("verdict cache poisoned");
                map.retain(|_, p| now <= p.valid_until());
                map.insert(key, peer);
                Ok(())
            }
            Err(rejection) => Err(self.reject(rejection)),
        }
    }

    fn reject(&self, rejection: Rejection) -> rustls::Error {
        *self.last_rejection.lock().expect("verdict cache poisoned") = Some(rejection.clone());
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(rejection),
        )))
    }

    /// The store's collateral for a TDX certificate that carries none (or for any TDX
    /// certificate when the store is preferred). A miss is noted in the store; when the store is
    /// preferred, it is a rejection (`MissingCollateral`) rather than a fall-back to the
    /// carried collateral.
    fn own_collateral(
        &self,
        cert_der: &[u8],
        now: u64,
    ) -> Result<Option<Arc<dcap_qvl::QuoteCollateralV3>>, Rejection> {
        let Some((store, prefer_own)) = &self.own else {
            return Ok(None);
        };
        // Unparseable certificates are left to verify_certificate to reject with its reasons.
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
            return Ok(None);
        };
        let Ok((bundle, _)) = evidence_of(&cert) else {
            return Ok(None);
        };
        let Evidence::Tdx { quote, collateral } = &bundle else {
            return Ok(None);
        };
        if collateral.is_some() && !prefer_own {
            return Ok(None);
        }
        let Ok(key) = CollateralKey::of_tdx_quote(quote) else {
            return Ok(None);
        };
        match store.get(&key, now) {
            Some(c) => Ok(Some(c)),
            None => {
                store.note_missing(key);
                if *prefer_own {
                    Err(Rejection::one(RejectReason::Verification(
                        VerifyError::MissingCollateral,
                    )))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn peer(&self, cert: &[u8]) -> Option<VerifiedPeer> {
        self.accepted
            .lock()
            .expect("verdict cache poisoned")
            .get(&Sha256::digest(cert))
            .cloned()
    }
}

fn verify_sig13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &PROVIDER.signature_verification_algorithms,
    )
}

fn schemes() -> Vec<SignatureScheme> {
    PROVIDER
        .signature_verification_algorithms
        .supported_schemes()
}

/// A rustls server-certificate verifier that accepts exactly the RA-TLS certificates a policy
/// accepts. The server name is ignored: a node's identity is its measurement, not a DNS name.
#[derive(Debug)]
pub struct RaTlsServerVerifier {
    cache: VerdictCache,
}

impl RaTlsServerVerifier {
    /// A verifier for `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            cache: VerdictCache::new(policy),
        }
    }

    /// Uses this TDX collateral instead of what certificates carry (it must still verify).
    pub fn with_collateral(mut self, collateral: dcap_qvl::QuoteCollateralV3) -> Self {
        self.cache.collateral = Some(collateral);
        self
    }

    /// Uses collateral from `store` (fetched by the caller, e.g. from a PCCS) for TDX
    /// certificates that carry none, or for every TDX certificate when `prefer_own`. It must
    /// still verify; a miss is noted in the store for the caller to fetch and retry.
    pub fn with_collateral_store(mut self, store: CollateralStore, prefer_own: bool) -> Self {
        self.cache.own = Some((store, prefer_own));
        self
    }

    /// RIMs to compare GPU measurements with when a node's GPU evidence carries none (they
    /// must still verify up to a RIM root the policy trusts).
    pub fn with_gpu_rims(mut self, rims: GpuRims) -> Self {
        self.cache.gpu_rims = Some(rims);
        self
    }

    /// The accepted peer behind a certificate this verifier accepted (e.g. the one a finished
    /// handshake presented).
    pub fn verified_peer(&self, cert_der: &[u8]) -> Option<VerifiedPeer> {
        self.cache.peer(cert_der)
    }

    /// The reason of the most recent rejection.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.cache
            .last_rejection
            .lock()
            .expect("verdict cache poisoned")
            .clone()
    }
}

impl ServerCertVerifier for RaTlsServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.cache
            .check(end_entity, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// A rustls client-certificate verifier for mutual RA-TLS: a client must present an RA-TLS
/// certificate that `policy` accepts.
#[derive(Debug)]
pub struct RaTlsClientVerifier {
    cache: VerdictCache,
}

impl RaTlsClientVerifier {
    /// A verifier for `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            cache: VerdictCache::new(policy),
        }
    }

    /// The accepted peer behind a certificate this verifier accepted.
    pub fn verified_peer(&self, cert_der: &[u8]) -> Option<VerifiedPeer> {
        self.cache.peer(cert_der)
    }

    /// The reason of the most recent rejection.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.cache
            .last_rejection
            .lock()
            .expect("verdict cache poisoned")
            .clone()
    }
}

impl ClientCertVerifier for RaTlsClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.cache
            .check(end_entity, now)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// A TLS 1.3 client configuration that trusts exactly what `verifier` accepts.
///
/// Session resumption is off: a resumed session presents no certificate, so the verifier would
/// not run and an expired certificate or collateral would go unnoticed.
pub fn client_config(verifier: Arc<RaTlsServerVerifier>) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    c
}

/// A TLS 1.3 server configuration that serves whatever certificate `resolver` holds. Feature
/// `signing`: the server side holds the key.
#[cfg(feature = "signing")]
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TdxPin;
    use crate::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
    use crate::{Measurement, TcbStatus};

    const NOW: u64 = 1_800_000_000;

    fn sim_bundle(pki: &SimPki, report_data: ReportData, mr_td: Measurement) -> Evidence {
        let m = td_measurements(
            mr_td,
            [
                Measurement([1; 48]),
                Measurement([2; 48]),
                Measurement([3; 48]),
                Measurement::ZERO,
            ],
        );
        let quote = pki.quote(&SimTdReport::new(m, report_data));
        Evidence::tdx(
            quote,
            Some(pki.collateral(NOW - 3600, 30 * 86_400).unwrap()),
        )
        .unwrap()
    }

    fn sim_policy(pki: &SimPki, mr_td: Measurement) -> Policy {
        let mut p = Policy::pinned(
            vec![TdxPin {
                name: Some("sim".into()),
                rtmr1: Some(Measurement([2; 48])),
                ..TdxPin::new(mr_td)
            }],
            vec![],
        );
        p.trust
            .dangerous_simulated_intel_roots
            .push(pki.root_sha256());
        p
    }

    #[test]
    fn issue_then_verify_with_sim_evidence() {
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let key = AttestedKey::generate().unwrap();
        let mr_td = Measurement([7; 48]);
        let cert = issue_certificate(
            &key,
            &sim_bundle(&pki, key.report_data(), mr_td),
            NOW - 60,
            3600,
        )
        .unwrap();
        let peer = verify_certificate(&cert, &sim_policy(&pki, mr_td), None, NOW).unwrap();
        assert_eq!(peer.evidence().matched_pin(), Some("sim"));
        assert_eq!(
            peer.evidence().verdict().tcb_status,
            Some(TcbStatus::UpToDate)
        );
        assert_eq!(peer.spki_der(), key.spki_der());
        assert_eq!(
            extract_bundle(&cert).unwrap().platform(),
            crate::Platform::Tdx
        );
    }

    #[test]
    fn rejections_name_their_reason() {
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let key = AttestedKey::generate().unwrap();
        let other = AttestedKey::generate().unwrap();
        let mr_td = Measurement([7; 48]);
        let good = issue_certificate(
            &key,
            &sim_bundle(&pki, key.report_data(), mr_td),
            NOW - 60,
            3600,
        )
        .unwrap();

        let wrong_pin = sim_policy(&pki, Measurement([8; 48]));
        let msg = verify_certificate(&good, &wrong_pin, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("measurement not pinned"), "{msg}");

        let default = Policy::pinned(sim_policy(&pki, mr_td).tdx, vec![]);
        let msg = verify_certificate(&good, &default, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("untrusted root"), "{msg}");

        let msg = verify_certificate(&good, &sim_policy(&pki, mr_td), None, NOW + 7200)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("expired"), "{msg}");

        // Evidence made for another key cannot be issued by the honest API; build one by hand.
        let stolen = issue_certificate(
            &other,
            &sim_bundle(&pki, other.report_data(), mr_td),
            NOW - 60,
            3600,
        )
        .unwrap();
        let bundle = extract_bundle(&stolen).unwrap();
        let err = issue_certificate(&key, &bundle, NOW - 60, 3600).unwrap_err();
        assert!(matches!(err, RaTlsError::NotBound { .. }), "{err}");
    }

    #[test]
    fn lifetime_limit() {
        let key = AttestedKey::generate().unwrap();
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let b = sim_bundle(&pki, key.report_data(), Measurement::ZERO);
        assert!(matches!(
            issue_certificate(&key, &b, NOW, MAX_VALIDITY_SECS + 1),
            Err(RaTlsError::Lifetime(_))
        ));
        assert!(matches!(
            issue_certificate(&key, &b, NOW, 0),
            Err(RaTlsError::Lifetime(_))
        ));
    }

    /// A certificate of a node with one simulated GPU whose report answers `nonce` (the key's
    /// own GPU nonce when None), with the simulated PKI's OCSP answers, and a policy that trusts
    /// the simulated Intel and NVIDIA roots (and requires OCSP answers, the default).
    fn gpu_node(key: &AttestedKey, nonce: Option<[u8; 32]>) -> (CertificateDer<'static>, Policy) {
        let nv = crate::sim::SimNvidiaPki::from_seed(DEFAULT_SEED);
        let record = nv.record(
            &crate::sim::SimGpu::default(),
            &nonce.unwrap_or_else(|| key.gpu_nonce()),
            NOW,
        );
        gpu_node_with(key, &record)
    }

    /// A certificate of a node carrying `record`, and the policy of [`gpu_node`].
    fn gpu_node_with(
        key: &AttestedKey,
        record: &crate::gpu::GpuRecord,
    ) -> (CertificateDer<'static>, Policy) {
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let nv = crate::sim::SimNvidiaPki::from_seed(DEFAULT_SEED);
        let der = record.to_der().unwrap();
        let mr_td = Measurement([7; 48]);
        let bundle = sim_bundle(&pki, key.report_data_with_gpu(&der), mr_td);
        let cert = issue_certificate_with_gpu(key, &bundle, Some(record), NOW - 60, 3600).unwrap();
        let mut policy = sim_policy(&pki, mr_td);
        policy.gpu.require = true;
        policy.gpu.dangerous_simulated_nvidia_roots =
            vec![nv.device_root_sha256(), nv.rim_root_sha256()];
        (cert, policy)
    }

    #[test]
    fn a_gpu_node_is_verified_with_its_gpu() {
        let key = AttestedKey::generate().unwrap();
        let (cert, policy) = gpu_node(&key, None);
        let peer = verify_certificate(&cert, &policy, None, NOW).unwrap();
        let gpus = peer.gpus();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].driver_version, "550.90.07");
        assert_eq!(gpus[0].nonce, hex::encode(key.gpu_nonce()));
        assert!(gpus[0].driver_rim.is_some() && gpus[0].vbios_rim.is_some());
        // The simulated responder's answers were checked, not waived.
        assert_eq!(gpus[0].revocation, crate::gpu::Revocation::OcspGood);
        assert!(
            gpus[0].checks.iter().any(|c| c.contains("OCSP")),
            "{:?}",
            gpus[0].checks
        );
        assert!(!policy.gpu.dangerous_no_ocsp);
        let (_, record) = extract_evidence(&cert).unwrap();
        assert_eq!(
            record.unwrap().gpus[0].driver_rim_id,
            "NV_GPU_DRIVER_GH100_550.90.07"
        );
    }

    #[test]
    fn gpu_rules_name_their_reason() {
        let key = AttestedKey::generate().unwrap();
        let (good, policy) = gpu_node(&key, None);

        // Another key's nonce: the report is not fresh for this certificate.
        let (stale, _) = gpu_node(&key, Some([9; 32]));
        let msg = verify_certificate(&stale, &policy, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("GPU 0: GPU report nonce"), "{msg}");

        // A policy that does not name the simulated NVIDIA roots finds no root to trust.
        let mut strict = policy.clone();
        strict.gpu.dangerous_simulated_nvidia_roots.clear();
        let msg = verify_certificate(&good, &strict, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("GPU 0: no NVIDIA device identity root"),
            "{msg}"
        );

        // A record without OCSP answers: revocation unchecked is refused unless named.
        let nv = crate::sim::SimNvidiaPki::from_seed(DEFAULT_SEED);
        let mut unanswered = nv.record(&crate::sim::SimGpu::default(), &key.gpu_nonce(), NOW);
        unanswered.gpus[0].ocsp.clear();
        let (unchecked, _) = gpu_node_with(&key, &unanswered);
        let msg = verify_certificate(&unchecked, &policy, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("GPU 0: GPU certificate revocation unchecked"),
            "{msg}"
        );
        let mut waived = policy.clone();
        waived.gpu.dangerous_no_ocsp = true;
        let peer = verify_certificate(&unchecked, &waived, None, NOW).unwrap();
        assert_eq!(
            peer.gpus()[0].revocation,
            crate::gpu::Revocation::DangerousNotChecked
        );

        // Answers gone stale: refused, not treated as absent.
        let week = crate::sim::SimNvidiaPki::OCSP_VALIDITY_SECS;
        let mut stale_ocsp = nv.record(&crate::sim::SimGpu::default(), &key.gpu_nonce(), NOW);
        stale_ocsp.gpus[0].ocsp = nv.ocsp_responses(NOW - week - 3600);
        let (old, _) = gpu_node_with(&key, &stale_ocsp);
        let msg = verify_certificate(&old, &waived, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("stale"), "{msg}");

        // Versions the policy does not allow.
        let mut pinned = policy.clone();
        pinned.gpu.allowed_driver_versions = vec!["560.35.03".into()];
        let msg = verify_certificate(&good, &pinned, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("driver version 550.90.07 is not allowed"),
            "{msg}"
        );

        // A CPU-only node under gpu.require.
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let cpu = issue_certificate(
            &key,
            &sim_bundle(&pki, key.report_data(), Measurement([7; 48])),
            NOW - 60,
            3600,
        )
        .unwrap();
        let msg = verify_certificate(&cpu, &policy, None, NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no GPU evidence"), "{msg}");
        let mut optional = policy.clone();
        optional.gpu.require = false;
        assert!(verify_certificate(&cpu, &optional, None, NOW).is_ok());
    }

    #[test]
    fn cpu_evidence_must_bind_the_gpu_record() {
        let key = AttestedKey::generate().unwrap();
        let nv = crate::sim::SimNvidiaPki::from_seed(DEFAULT_SEED);
        let record = nv.record(&crate::sim::SimGpu::default(), &key.gpu_nonce(), NOW);
        let pki = SimPki::from_seed(DEFAULT_SEED);
        // CPU evidence over the CPU-only binding cannot carry a GPU record...
        let plain = sim_bundle(&pki, key.report_data(), Measurement([7; 48]));
        let err =
            issue_certificate_with_gpu(&key, &plain, Some(&record), NOW - 60, 3600).unwrap_err();
        assert!(matches!(err, RaTlsError::NotBound { .. }), "{err}");
        // ...nor over another record.
        let other = nv.record(
            &crate::sim::SimGpu {
                driver_version: "560.35.03".into(),
                ..crate::sim::SimGpu::default()
            },
            &key.gpu_nonce(),
            NOW,
        );
        let bound = sim_bundle(
            &pki,
            key.report_data_with_gpu(&other.to_der().unwrap()),
            Measurement([7; 48]),
        );
        let err =
            issue_certificate_with_gpu(&key, &bound, Some(&record), NOW - 60, 3600).unwrap_err();
        assert!(matches!(err, RaTlsError::NotBound { .. }), "{err}");
        // The two bindings and the nonce are separated by their tags.
        let der = record.to_der().unwrap();
        assert_ne!(
            report_data_for_spki(key.spki_der()),
            report_data_for_spki_and_gpu(key.spki_der(), &der)
        );
        assert_ne!(
            report_data_for_spki_and_gpu(key.spki_der(), &der),
            report_data_for_spki_and_gpu(key.spki_der(), &other.to_der().unwrap())
        );
    }

    #[test]
    fn report_data_is_domain_separated() {
        let spki = b"spki";
        let plain = ring::digest::digest(&ring::digest::SHA512, spki);
        assert_ne!(report_data_for_spki(spki).0.as_slice(), plain.as_ref());
    }
}
