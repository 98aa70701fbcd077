//! The simulated NVIDIA PKI: a deterministic, seeded stand-in for an H100's device identity chain
//! and NVIDIA's RIM signers, which signs SPDM measurement reports and reference integrity
//! manifests (RIMs) in the real formats, for machines without a confidential-computing GPU.
//!
//! Like the simulated Intel and AMD PKIs it is a second trust anchor, not a bypass. Its evidence
//! goes through the production GPU verifier ([`crate::gpu::verify`]) unchanged; the only
//! difference from a real GPU is the roots at the ends of the chains, which are none of NVIDIA's.
//! A verifier refuses them unless its [`GpuTrust`](crate::gpu::GpuTrust) names them.
//!
//! ```text
//!  Simulated NVIDIA Device Identity CA (self-signed, P-384)
//!   ├─ Simulated NVIDIA GH100 Identity (CA)
//!   │   └─ Simulated GH100 Attestation Key  (TCG DICE TcbInfo with the FWID)
//!   │        └─ signs GET_MEASUREMENTS request ‖ MEASUREMENTS response (ECDSA P-384, SHA-384)
//!   └─ Simulated NVIDIA OCSP Responder (id-kp-OCSPSigning) ──▶ signs OCSP answers: "good"
//!  Simulated NVIDIA RIM Signing Root CA (self-signed, P-384)
//!   └─ Simulated NVIDIA Reference Value GH100 CA
//!       └─ Simulated NVIDIA RIM Signer ──▶ signs driver and VBIOS SWID tags (XML-DSig)
//! ```
//!
//! Everything is a pure function of the seed: P-384 keys derive from it as the P-256 keys of
//! the Intel PKI do, validity dates are [`CERT_NOT_BEFORE`]..[`CERT_NOT_AFTER`], serials are
//! seed-derived, and signatures are deterministic ECDSA (RFC 6979). The same seed gives
//! byte-identical certificates, reports and RIMs on every machine.
//!
//! The OCSP responder answers `good` for the certificates NVIDIA's responder answers for
//! ([`crate::gpu::ocsp::check_chain_except_leaf`]: the GH100 identity CA), so simulated evidence
//! carries OCSP answers and goes through the revocation check a real GPU's does; a policy for the
//! simulated GPU needs no `dangerous_no_ocsp`. The answers are dated by the `now` passed in
//! ([`SimNvidiaPki::ocsp_responses`]) and are otherwise as deterministic as the rest.
//!
//! ```
//! use chrysalis_attestation::gpu::{self, GpuEvidence, GpuPolicy, GpuTrust};
//! use chrysalis_attestation::sim::{self, SimGpu, SimNvidiaPki};
//!
//! let pki = SimNvidiaPki::from_seed(sim::DEFAULT_SEED);
//! let sim_gpu = SimGpu::default();
//! let nonce = [7; 32];
//! let now = 1_767_225_600; // 2026-01-01T00:00:00Z
//! let evidence = GpuEvidence {
//!     report: pki.report(&sim_gpu, &nonce),
//!     chain: pki.device_chain(),
//!     driver_rim: Some(pki.driver_rim(&sim_gpu)),
//!     vbios_rim: Some(pki.vbios_rim(&sim_gpu)),
//!     ocsp: pki.ocsp_responses(now),
//! };
//! let trust = GpuTrust {
//!     device_roots: vec![pki.device_root_der().to_vec()],
//!     rim_roots: vec![pki.rim_root_der().to_vec()],
//! };
//! let verified = gpu::verify(&evidence, &nonce, &trust, &GpuPolicy::default(), now).unwrap();
//! assert_eq!(verified.verdict().driver_version, "550.90.07");
//! assert_eq!(verified.verdict().revocation, gpu::Revocation::OcspGood);
//! ```

use std::fmt;

use base64::Engine as _;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{DerSignature, Signature, SigningKey};
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha384};
use x509_cert::Certificate;
use x509_cert::der::asn1::GeneralizedTime;
use x509_cert::der::{Decode, Encode};
use x509_ocsp::builder::OcspResponseBuilder;
use x509_ocsp::{CertId, CertStatus, OcspGeneralizedTime, SingleResponse};

use super::certs::{self, unix_time};
use super::{CERT_NOT_AFTER, CERT_NOT_BEFORE};
use crate::evidence::Sha256;
use crate::gpu::record::{GpuAttestation, GpuRecord, rim_ids};

/// Organisation of every simulated GPU certificate: nobody should mistake one for NVIDIA's.
const ORGANIZATION: &str = "chrysalis simulated GPU (not NVIDIA)";

/// The TCG DICE TcbInfo extension (TCG DICE Attestation Architecture §6.1.1).
const TCB_INFO_OID: &[u64] = &[2, 23, 133, 5, 4, 1];
/// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): a verifier need not ask about the responder.
const OCSP_NOCHECK_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];
/// DER of the OBJECT IDENTIFIER id-sha384 (2.16.840.1.101.3.4.2.2).
const SHA384_OID_DER: [u8; 11] = [
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
];

// SPDM 1.1 (DSP0274) header bytes, as gpu::spdm reads them.
const SPDM_1_1: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
/// GET_MEASUREMENTS param1 bit 0: a signature is requested.
const SIGNATURE_REQUESTED: u8 = 0x01;
/// GET_MEASUREMENTS param2 0xFF: all measurement blocks.
const ALL_MEASUREMENTS: u8 = 0xFF;
/// Measurement block specification bit 0: the DMTF measurement format.
const DMTF_SPEC: u8 = 0x01;
/// DMTF measurement value type 1 (mutable firmware), as in H100 reports; a digest, not raw bits.
const DMTF_MUTABLE_FIRMWARE: u8 = 0x01;

// NVIDIA's opaque data field types (the ones gpu::spdm names).
const OPAQUE_DRIVER_VERSION: u16 = 3;
const OPAQUE_VBIOS_VERSION: u16 = 6;
const OPAQUE_NVDEC0_STATUS: u16 = 11;
const OPAQUE_BOARD_ID: u16 = 14;
const OPAQUE_CHIP_SKU: u16 = 15;
const OPAQUE_CHIP_SKU_MOD: u16 = 16;
const OPAQUE_PROJECT: u16 = 17;
const OPAQUE_PROJECT_SKU: u16 = 18;
const OPAQUE_PROJECT_SKU_MOD: u16 = 19;
const OPAQUE_FWID: u16 = 20;
const OPAQUE_PROTECTED_PCIE: u16 = 21;
/// NVDEC0 and protected PCIe status "disabled", as a single H100 in CC mode reports them.
const STATUS_DISABLED: u8 = 0x55;
/// Board id, chip SKU, project and project SKU of an H100 SXM5 (what its VBIOS RIM is named by).
const BOARD_ID: u32 = 0x3b1;
const CHIP_SKU: &str = "882";
const PROJECT: &str = "1010";
const PROJECT_SKU: &str = "0200";

// Namespaces of a SWID tag RIM and its signature (as gpu::rim reads them).
const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const TCG_RIM_NS: &str = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/";
const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";

/// What the simulated GPU reports: its driver and VBIOS versions and its measurements, each
/// listed under the RIM that holds its reference value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGpu {
    /// The driver version (opaque field 3), e.g. `550.90.07`.
    pub driver_version: String,
    /// The VBIOS version as the verifier prints it: five dot-separated hex bytes,
    /// e.g. `96.00.9f.00.01`. [`SimNvidiaPki::report`] panics on anything else.
    pub vbios_version: String,
    /// Measurements whose reference is in the driver RIM: (SPDM index, 1-based; SHA-384).
    pub driver_measurements: Vec<(u8, [u8; 48])>,
    /// Measurements whose reference is in the VBIOS RIM: (SPDM index, 1-based; SHA-384).
    /// An index listed in both lists gives a report the verifier refuses.
    pub vbios_measurements: Vec<(u8, [u8; 48])>,
}

impl Default for SimGpu {
    /// Driver 550.90.07 and VBIOS 96.00.9f.00.01 (the versions of NVIDIA's recorded H100
    /// report), with a few measurements at indices where an H100 has them: the VBIOS's low
    /// indices, the driver's from 8 and 22 on. Each value is SHA-384 of a label.
    fn default() -> Self {
        let m = |which: &str, index: u8| {
            let label = format!("chrysalis simulated GPU {which} measurement {index}");
            (index, <[u8; 48]>::from(Sha384::digest(label.as_bytes())))
        };
        Self {
            driver_version: "550.90.07".into(),
            vbios_version: "96.00.9f.00.01".into(),
            driver_measurements: [8, 22, 23, 24].map(|i| m("driver", i)).to_vec(),
            vbios_measurements: [1, 2, 3, 4, 9, 10].map(|i| m("VBIOS", i)).to_vec(),
        }
    }
}

impl SimGpu {
    /// Every measurement, by SPDM index.
    fn blocks(&self) -> Vec<(u8, [u8; 48])> {
        let mut all: Vec<_> = self
            .driver_measurements
            .iter()
            .chain(&self.vbios_measurements)
            .copied()
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all
    }

    /// The 8 bytes of opaque field 6 for [`Self::vbios_version`]: the inverse of how the
    /// verifier prints them (`96.00.9f.00.01` is `00 9f 00 96 01 00 00 00`).
    fn vbios_version_bytes(&self) -> [u8; 8] {
        let parts: Vec<u8> = self
            .vbios_version
            .split('.')
            .map(|p| u8::from_str_radix(p, 16))
            .collect::<Result<_, _>>()
            .ok()
            .filter(|p: &Vec<u8>| p.len() == 5)
            .unwrap_or_else(|| {
                panic!(
                    "SimGpu vbios_version {:?} is not five dot-separated hex bytes",
                    self.vbios_version
                )
            });
        [parts[3], parts[2], parts[1], parts[0], parts[4], 0, 0, 0]
    }
}

/// A P-384 key derived from the seed: the first SHA-384(len(seed) ‖ seed ‖ label ‖ counter)
/// that is a valid scalar, as `keys::SimKey` derives P-256 keys.
struct GpuKey {
    signing: SigningKey,
    /// SEC1 uncompressed point: 0x04 ‖ x ‖ y.
    public_sec1: Vec<u8>,
}

impl GpuKey {
    fn derive(seed: &[u8], label: &str) -> Self {
        for counter in 0u32.. {
            let digest = Sha384::new()
                .chain_update((seed.len() as u64).to_be_bytes())
                .chain_update(seed)
                .chain_update(b"chrysalis sim nvidia ")
                .chain_update(label.as_bytes())
                .chain_update(counter.to_be_bytes())
                .finalize();
            // A digest at or above the group order (probability about 2^-192) is skipped.
            if let Ok(signing) = SigningKey::from_bytes(&digest) {
                let public_sec1 = signing
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                return Self {
                    signing,
                    public_sec1,
                };
            }
        }
        unreachable!("a valid P-384 scalar is found long before 2^32 tries")
    }

    /// ECDSA P-384 / SHA-384 as the raw 96-byte r ‖ s that SPDM and XML-DSig carry.
    fn sign_raw(&self, msg: &[u8]) -> [u8; 96] {
        let sig: Signature = self.signing.sign(msg);
        let mut out = [0u8; 96];
        out.copy_from_slice(&sig.to_bytes());
        out
    }
}

impl rcgen::PublicKeyData for GpuKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

impl rcgen::SigningKey for GpuKey {
    /// X.509 wants the DER `Ecdsa-Sig-Value`, not the raw form.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: Signature = self.signing.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// A certificate and the key it certifies.
struct Issued {
    params: CertificateParams,
    key: GpuKey,
    der: Vec<u8>,
}

impl Issued {
    fn issuer(&self) -> Issuer<'_, &GpuKey> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    // "XX" is a user-assigned ISO 3166 code: no real country.
    let country = PrintableString::try_from("XX").expect("XX is printable");
    dn.push(DnType::CountryName, DnValue::PrintableString(country));
    dn
}

fn params(seed: &[u8], label: &str, common_name: &str, ca: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = unix_time(CERT_NOT_BEFORE, "certificate notBefore").expect("constant in range");
    p.not_after = unix_time(CERT_NOT_AFTER, "certificate notAfter").expect("constant in range");
    p.serial_number = Some(SerialNumber::from_slice(&certs::serial(
        seed,
        &format!("nvidia {label}"),
    )));
    p.distinguished_name = name(common_name);
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    match ca {
        Some(path_len) => {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        None => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    p
}

/// Issues the certificate `label` of `seed`, self-signed when `issuer` is `None`. Every input is
/// a constant or a derived value of fixed size, so a failure is a bug in this module.
fn issue(
    seed: &[u8],
    label: &str,
    common_name: &str,
    ca: Option<u8>,
    extensions: Vec<CustomExtension>,
    issuer: Option<&Issued>,
) -> Issued {
    let mut params = params(seed, label, common_name, ca);
    params.custom_extensions = extensions;
    sign(seed, label, params, issuer)
}

/// Signs `params` for the key `label` of `seed` (self-signed when `issuer` is `None`).
fn sign(seed: &[u8], label: &str, params: CertificateParams, issuer: Option<&Issued>) -> Issued {
    let key = GpuKey::derive(seed, label);
    let cert = match issuer {
        None => params.self_signed(&key),
        Some(i) => params.signed_by(&key, &i.issuer()),
    }
    .unwrap_or_else(|e| panic!("simulated {label} certificate is issuable: {e}"));
    Issued {
        params,
        key,
        der: cert.der().to_vec(),
    }
}

/// The OCSP responder certificate of `seed`: an end-entity certificate issued by the device
/// root, with id-kp-OCSPSigning and id-pkix-ocsp-nocheck, as a CA's delegated responder has.
fn ocsp_responder(seed: &[u8], device_root: &Issued) -> Issued {
    let label = "ocsp responder";
    let mut params = params(seed, label, "Simulated NVIDIA OCSP Responder", None);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    // extnValue is the DER NULL.
    let mut nocheck = CustomExtension::from_oid_content(OCSP_NOCHECK_OID, vec![0x05, 0x00]);
    nocheck.set_criticality(false);
    params.custom_extensions = vec![nocheck];
    sign(seed, label, params, Some(device_root))
}

/// `secs` (unix seconds) as an OCSP GeneralizedTime.
///
/// # Panics
/// When `secs` is past the year 9999.
fn ocsp_time(secs: u64) -> OcspGeneralizedTime {
    let time = GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|e| panic!("{secs} is not a GeneralizedTime: {e}"));
    OcspGeneralizedTime(time)
}

/// A DER OCSPResponse answering `good` at `now` (dated as
/// [`SimNvidiaPki::ocsp_responses`] says) about `about` = (certificate, its issuer), naming
/// `responder` by subject and carrying its certificate, signed with `key`.
fn ocsp_response(responder: &Issued, key: &GpuKey, about: (&Issued, &Issued), now: u64) -> Vec<u8> {
    let this_update = now.saturating_sub(SimNvidiaPki::OCSP_ANSWER_AGE_SECS);
    let next_update = this_update.saturating_add(SimNvidiaPki::OCSP_VALIDITY_SECS);
    let (cert, issuer) = about;
    let id = CertId::from_cert::<Sha384>(&x509(&issuer.der), &x509(&cert.der))
        .expect("a CertID hashes any certificate");
    let answer = SingleResponse::new(id, CertStatus::good(), ocsp_time(this_update))
        .with_next_update(ocsp_time(next_update));
    let responder = x509(&responder.der);
    OcspResponseBuilder::new(responder.tbs_certificate.subject.clone())
        .with_single_response(answer)
        .sign::<_, DerSignature>(
            &mut key.signing.clone(),
            Some(vec![responder]),
            ocsp_time(this_update),
        )
        .expect("ECDSA P-384 signs any response")
        .to_der()
        .expect("a built response encodes")
}

/// An rcgen certificate as x509-cert reads it.
fn x509(der: &[u8]) -> Certificate {
    Certificate::from_der(der).expect("rcgen writes DER that x509-cert reads")
}

/// DER tag ‖ length ‖ content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The DER of a DICE TcbInfo: `SEQUENCE { vendor [0], model [1], fwids [6] SEQUENCE OF
/// SEQUENCE { id-sha384, OCTET STRING fwid } }`. The FWID is the last 48 bytes, where
/// `gpu::chain::dice_fwid` (like NVIDIA's verifier) reads it.
fn tcb_info(fwid: &[u8; 48]) -> Vec<u8> {
    let fwid_entry = tlv(0x30, &[&SHA384_OID_DER[..], &tlv(0x04, fwid)].concat());
    let body = [
        tlv(0x80, b"Simulated NVIDIA"),
        tlv(0x81, b"GH100"),
        tlv(0xA6, &fwid_entry),
    ]
    .concat();
    tlv(0x30, &body)
}

/// The simulated NVIDIA PKI of one seed: the device identity chain with one GPU's attestation
/// key, and the RIM signing chain.
pub struct SimNvidiaPki {
    device_root: Issued,
    device_ca: Issued,
    attestation_key: Issued,
    rim_root: Issued,
    rim_ca: Issued,
    rim_signer: Issued,
    /// Delegated OCSP responder of the device root.
    ocsp_responder: Issued,
    fwid: [u8; 48],
    /// Keys the responder nonce, so it is fresh per request nonce yet deterministic.
    responder_secret: [u8; 32],
    device_root_sha256: Sha256,
    rim_root_sha256: Sha256,
}

impl fmt::Debug for SimNvidiaPki {
    /// Names the roots by fingerprint; never prints keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimNvidiaPki")
            .field("device_root_sha256", &self.device_root_sha256)
            .field("rim_root_sha256", &self.rim_root_sha256)
            .finish_non_exhaustive()
    }
}

impl SimNvidiaPki {
    /// How long before `now` [`ocsp_responses`](Self::ocsp_responses) dates its answers
    /// (`thisUpdate` and `producedAt`), in seconds.
    pub const OCSP_ANSWER_AGE_SECS: u64 = 60;
    /// How long an answer of [`ocsp_responses`](Self::ocsp_responses) is valid from its
    /// `thisUpdate` to its `nextUpdate`, in seconds: 7 days.
    pub const OCSP_VALIDITY_SECS: u64 = 7 * 86_400;

    /// Builds the PKI of `seed`. The same seed gives byte-identical certificates, reports and
    /// RIMs; different seeds give unrelated keys (and so other roots).
    pub fn from_seed(seed: &[u8]) -> Self {
        let fwid = <[u8; 48]>::from(
            Sha384::new()
                .chain_update(certs::seeded_bytes::<32>(seed, "nvidia fwid"))
                .finalize(),
        );
        let device_root = issue(
            seed,
            "device root",
            "Simulated NVIDIA Device Identity CA",
            Some(1),
            vec![],
            None,
        );
        let ocsp_responder = ocsp_responder(seed, &device_root);
        let device_ca = issue(
            seed,
            "device ca",
            "Simulated NVIDIA GH100 Identity",
            Some(0),
            vec![],
            Some(&device_root),
        );
        let mut tcb = CustomExtension::from_oid_content(TCB_INFO_OID, tcb_info(&fwid));
        tcb.set_criticality(false);
        let attestation_key = issue(
            seed,
            "attestation key",
            "Simulated GH100 Attestation Key",
            None,
            vec![tcb],
            Some(&device_ca),
        );
        let rim_root = issue(
            seed,
            "rim root",
            "Simulated NVIDIA RIM Signing Root CA",
            Some(1),
            vec![],
            None,
        );
        let rim_ca = issue(
            seed,
            "rim ca",
            "Simulated NVIDIA Reference Value GH100 CA",
            Some(0),
            vec![],
            Some(&rim_root),
        );
        let rim_signer = issue(
            seed,
            "rim signer",
            "Simulated NVIDIA RIM Signer",
            None,
            vec![],
            Some(&rim_ca),
        );
        Self {
            device_root_sha256: Sha256::digest(&device_root.der),
            rim_root_sha256: Sha256::digest(&rim_root.der),
            device_root,
            device_ca,
            attestation_key,
            rim_root,
            rim_ca,
            rim_signer,
            ocsp_responder,
            fwid,
            responder_secret: certs::seeded_bytes(seed, "nvidia responder nonce"),
        }
    }

    /// DER of the device identity root (self-signed, P-384): the anchor a verifier must be
    /// given (`GpuTrust::device_roots`) before it accepts this PKI's reports.
    pub fn device_root_der(&self) -> &[u8] {
        &self.device_root.der
    }

    /// SHA-256 of [`device_root_der`](Self::device_root_der), as the verdict names it.
    pub fn device_root_sha256(&self) -> Sha256 {
        self.device_root_sha256
    }

    /// DER of the RIM signing root (self-signed, P-384), for `GpuTrust::rim_roots`.
    pub fn rim_root_der(&self) -> &[u8] {
        &self.rim_root.der
    }

    /// SHA-256 of [`rim_root_der`](Self::rim_root_der), as the verdict names it.
    pub fn rim_root_sha256(&self) -> Sha256 {
        self.rim_root_sha256
    }

    /// The GPU's chain as the driver returns it: the attestation key certificate (whose DICE
    /// TcbInfo FWID the reports carry), the intermediate, and a copy of the device root; DER.
    pub fn device_chain(&self) -> Vec<Vec<u8>> {
        vec![
            self.attestation_key.der.clone(),
            self.device_ca.der.clone(),
            self.device_root.der.clone(),
        ]
    }

    /// The attestation report for `nonce` as the driver returns it: the SPDM 1.1
    /// GET_MEASUREMENTS request ‖ the MEASUREMENTS response with `gpu`'s measurements (in index
    /// order), its versions, the FWID and an H100's board fields as opaque data, signed with
    /// the attestation key (ECDSA P-384 / SHA-384, r ‖ s) over request ‖ response without the
    /// signature. Byte-identical for the same inputs.
    ///
    /// # Panics
    /// When `gpu.vbios_version` is not five dot-separated hex bytes, or `gpu` has more than 255
    /// measurements.
    pub fn report(&self, gpu: &SimGpu, nonce: &[u8; 32]) -> Vec<u8> {
        let mut out = vec![
            SPDM_1_1,
            GET_MEASUREMENTS,
            SIGNATURE_REQUESTED,
            ALL_MEASUREMENTS,
        ];
        out.extend_from_slice(nonce);
        out.push(0); // slot id

        let blocks = gpu.blocks();
        let mut record = Vec::new();
        for (index, value) in &blocks {
            let size = 3 + value.len() as u16;
            record.extend_from_slice(&[*index, DMTF_SPEC]);
            record.extend_from_slice(&size.to_le_bytes());
            record.push(DMTF_MUTABLE_FIRMWARE);
            record.extend_from_slice(&(value.len() as u16).to_le_bytes());
            record.extend_from_slice(value);
        }
        let count = u8::try_from(blocks.len()).expect("a SimGpu has at most 255 measurements");
        out.extend_from_slice(&[SPDM_1_1, MEASUREMENTS, 0, 0, count]);
        out.extend_from_slice(&(record.len() as u32).to_le_bytes()[..3]);
        out.extend_from_slice(&record);

        let responder_nonce = Sha384::new()
            .chain_update(self.responder_secret)
            .chain_update(nonce)
            .finalize();
        out.extend_from_slice(&responder_nonce[..32]);

        let opaque = self.opaque(gpu);
        out.extend_from_slice(&(opaque.len() as u16).to_le_bytes());
        out.extend_from_slice(&opaque);
        let signature = self.attestation_key.key.sign_raw(&out);
        out.extend_from_slice(&signature);
        out
    }

    /// NVIDIA's opaque data, fields in the order an H100 writes them.
    fn opaque(&self, gpu: &SimGpu) -> Vec<u8> {
        let cstr = |s: &str, len: usize| {
            let mut v = s.as_bytes().to_vec();
            v.resize(len.max(s.len() + 1), 0);
            v
        };
        let fields: [(u16, Vec<u8>); 11] = [
            (OPAQUE_VBIOS_VERSION, gpu.vbios_version_bytes().to_vec()),
            (OPAQUE_BOARD_ID, BOARD_ID.to_le_bytes().to_vec()),
            (OPAQUE_CHIP_SKU, cstr(CHIP_SKU, 9)),
            (OPAQUE_CHIP_SKU_MOD, cstr("0", 5)),
            (OPAQUE_PROJECT, cstr(PROJECT, 5)),
            (OPAQUE_PROJECT_SKU, cstr(PROJECT_SKU, 5)),
            (OPAQUE_PROJECT_SKU_MOD, vec![0, 0]),
            (OPAQUE_DRIVER_VERSION, cstr(&gpu.driver_version, 0)),
            (OPAQUE_NVDEC0_STATUS, vec![STATUS_DISABLED]),
            (OPAQUE_FWID, self.fwid.to_vec()),
            (OPAQUE_PROTECTED_PCIE, vec![STATUS_DISABLED]),
        ];
        let mut out = Vec::new();
        for (ty, value) in fields {
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(&value);
        }
        out
    }

    /// The driver RIM for `gpu`: a SWID tag for `gpu.driver_version` whose active measurements
    /// are `gpu.driver_measurements` (RIM index = SPDM index − 1), signed by the RIM signer.
    pub fn driver_rim(&self, gpu: &SimGpu) -> Vec<u8> {
        self.rim(
            "driver",
            &gpu.driver_version,
            &gpu.driver_measurements,
            max_index(gpu),
        )
    }

    /// The VBIOS RIM for `gpu`: as [`driver_rim`](Self::driver_rim), for `gpu.vbios_version`
    /// (written in upper case, as NVIDIA's VBIOS RIMs do) and `gpu.vbios_measurements`.
    pub fn vbios_rim(&self, gpu: &SimGpu) -> Vec<u8> {
        self.rim(
            "VBIOS",
            &gpu.vbios_version.to_ascii_uppercase(),
            &gpu.vbios_measurements,
            max_index(gpu),
        )
    }

    /// DER of the OCSP responder certificate: issued by the device root, with
    /// id-kp-OCSPSigning. [`ocsp_responses`](Self::ocsp_responses) carries it.
    pub fn ocsp_responder_der(&self) -> &[u8] {
        &self.ocsp_responder.der
    }

    /// The OCSP answers a node fetched at `now` (unix seconds) for [`device_chain`]: one DER
    /// OCSPResponse (status successful, a BasicOCSPResponse signed by the OCSP responder, named
    /// by its subject, with its certificate in `certs`) answering `good` for every certificate
    /// [`check_chain_except_leaf`] asks about (the GH100 identity CA), `thisUpdate` and
    /// `producedAt` [`OCSP_ANSWER_AGE_SECS`] before `now` (0 at the earliest), `nextUpdate`
    /// [`OCSP_VALIDITY_SECS`] after `thisUpdate`. The CertID hashes with SHA-384; no nonce.
    /// Byte-identical for the same `now` (ECDSA P-384 with RFC 6979 nonces).
    ///
    /// # Panics
    /// When `now` is past the year 9999.
    ///
    /// [`device_chain`]: Self::device_chain
    /// [`check_chain_except_leaf`]: crate::gpu::ocsp::check_chain_except_leaf
    /// [`OCSP_ANSWER_AGE_SECS`]: Self::OCSP_ANSWER_AGE_SECS
    /// [`OCSP_VALIDITY_SECS`]: Self::OCSP_VALIDITY_SECS
    pub fn ocsp_responses(&self, now: u64) -> Vec<Vec<u8>> {
        let responder = &self.ocsp_responder;
        vec![ocsp_response(
            responder,
            &responder.key,
            (&self.device_ca, &self.device_root),
            now,
        )]
    }

    /// The GPU record a node with this one GPU carries for `nonce` at `now` (unix seconds): its
    /// report and chain, the RIM ids its report names, both RIMs (carried, so a verifier needs
    /// none of its own) and the OCSP answers of [`ocsp_responses`](Self::ocsp_responses)`(now)`.
    ///
    /// # Panics
    /// As [`ocsp_responses`](Self::ocsp_responses).
    pub fn record(&self, gpu: &SimGpu, nonce: &[u8; 32], now: u64) -> GpuRecord {
        let report = self.report(gpu, nonce);
        let parsed = crate::gpu::GpuReport::parse(&report).expect("a sim report parses");
        let (driver_rim_id, vbios_rim_id) = rim_ids(&parsed);
        GpuRecord {
            gpus: vec![GpuAttestation {
                driver_rim_id,
                vbios_rim_id,
                report,
                chain: self.device_chain(),
                driver_rim: Some(self.driver_rim(gpu)),
                vbios_rim: Some(self.vbios_rim(gpu)),
                ocsp: self.ocsp_responses(now),
            }],
        }
    }

    /// A SWID tag listing RIM indices 0..`count`: those of `active` with their value, the rest
    /// inactive and zero (as NVIDIA's RIMs list all 64), with an enveloped XML-DSig signature.
    ///
    /// The document is written directly in Canonical XML 1.1 form (namespaces and attributes
    /// sorted, no empty-element tags), so the Reference digest is SHA-384 of the document
    /// without its Signature and the signed bytes are SignedInfo with the in-scope namespaces:
    /// an independent check of the verifier's canonicaliser rather than a use of it.
    fn rim(&self, which: &str, version: &str, active: &[(u8, [u8; 48])], count: u16) -> Vec<u8> {
        let tag_id = hex::encode(Sha384::digest(
            format!("chrysalis simulated GPU {which} RIM {version}").as_bytes(),
        ));
        let mut doc = start(
            "SoftwareIdentity",
            &[("", SWID_NS), ("SHA384", SHA384_NS)],
            &[
                ("", "corpus", "false"),
                ("", "name", "GH100"),
                ("", "patch", "false"),
                ("", "supplemental", "false"),
                ("", "tagId", &tag_id),
                ("", "tagVersion", "0"),
                ("", "version", "1.0"),
            ],
        );
        doc.push_str("\n    ");
        doc.push_str(&start(
            "Entity",
            &[],
            &[
                (
                    "",
                    "name",
                    "Simulated NVIDIA (chrysalis, not NVIDIA Corporation)",
                ),
                ("", "role", "softwareCreator tagCreator"),
            ],
        ));
        doc.push_str("</Entity>\n    ");
        doc.push_str(&start(
            "Meta",
            &[("rim", TCG_RIM_NS)],
            &[
                ("", "colloquialVersion", version),
                ("", "edition", "GPU"),
                ("", "product", "GH100"),
                ("", "revision", "r1"),
                ("", "PayloadType", "direct"),
                (TCG_RIM_NS, "rim:BindingSpec", "RIMIM"),
                (TCG_RIM_NS, "rim:BindingSpecVersion", "1.01"),
                (TCG_RIM_NS, "rim:FirmwareManufacturer", "Simulated NVIDIA"),
                (
                    TCG_RIM_NS,
                    "rim:PlatformManufacturerStr",
                    "Simulated NVIDIA",
                ),
                (TCG_RIM_NS, "rim:PlatformModel", "GH100"),
            ],
        ));
        doc.push_str("</Meta>\n    ");
        doc.push_str(&start("Payload", &[], &[]));
        for index in 0..count {
            let value = active
                .iter()
                .find(|(i, _)| u16::from(*i) == index + 1)
                .map(|(_, v)| *v);
            let hash = hex::encode(value.unwrap_or([0; 48]));
            let index_text = index.to_string();
            let name = format!("Measurement_{index}");
            doc.push_str("\n        ");
            doc.push_str(&start(
                "Resource",
                &[],
                &[
                    ("", "type", "Measurement"),
                    ("", "index", &index_text),
                    ("", "active", if value.is_some() { "True" } else { "False" }),
                    ("", "alternatives", "1"),
                    (SHA384_NS, "SHA384:Hash0", &hash),
                    ("", "name", &name),
                    ("", "size", "48"),
                ],
            ));
            doc.push_str("</Resource>");
        }
        doc.push_str("\n    </Payload>\n");
        let digest = Sha384::digest(format!("{doc}</SoftwareIdentity>").as_bytes());

        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let algorithm = |element: &str, uri: &str| {
            format!(
                "{}</ds:{element}>",
                start(&format!("ds:{element}"), &[], &[("", "Algorithm", uri)])
            )
        };
        let signed_info_body = [
            algorithm("CanonicalizationMethod", C14N11),
            algorithm("SignatureMethod", ECDSA_SHA384),
            start("ds:Reference", &[], &[("", "URI", "")]),
            "<ds:Transforms>".into(),
            algorithm("Transform", ENVELOPED),
            algorithm("Transform", C14N11),
            "</ds:Transforms>".into(),
            algorithm("DigestMethod", DIGEST_SHA384),
            format!("<ds:DigestValue>{}</ds:DigestValue>", b64(&digest)),
            "</ds:Reference>".into(),
        ]
        .concat();
        // SignedInfo as a document subset carries every namespace in scope at it.
        let signed_info = format!(
            "{}{signed_info_body}</ds:SignedInfo>",
            start(
                "ds:SignedInfo",
                &[("", SWID_NS), ("SHA384", SHA384_NS), ("ds", DSIG_NS)],
                &[],
            )
        );
        let signature = self.rim_signer.key.sign_raw(signed_info.as_bytes());
        let certificates: String = [&self.rim_signer, &self.rim_ca, &self.rim_root]
            .iter()
            .map(|c| format!("<ds:X509Certificate>{}</ds:X509Certificate>", b64(&c.der)))
            .collect();
        doc.push_str(&format!(
            "{}<ds:SignedInfo>{signed_info_body}</ds:SignedInfo>\
             <ds:SignatureValue>{}</ds:SignatureValue>\
             <ds:KeyInfo><ds:X509Data>{certificates}</ds:X509Data></ds:KeyInfo></ds:Signature>",
            start("ds:Signature", &[("ds", DSIG_NS)], &[]),
            b64(&signature),
        ));
        doc.push_str("</SoftwareIdentity>");
        doc.into_bytes()
    }
}

/// The highest SPDM index of `gpu`: how many RIM indices each RIM lists.
fn max_index(gpu: &SimGpu) -> u16 {
    gpu.blocks().last().map_or(0, |(i, _)| u16::from(*i))
}

/// A start tag in canonical form: namespace declarations sorted by prefix (the default first),
/// then attributes sorted by (namespace URI, local name); each attribute is (namespace URI or
/// "", qualified name, value).
fn start(qname: &str, namespaces: &[(&str, &str)], attributes: &[(&str, &str, &str)]) -> String {
    let mut ns = namespaces.to_vec();
    ns.sort();
    let mut attrs = attributes.to_vec();
    let local = |q: &str| q.rsplit(':').next().unwrap_or(q).to_owned();
    attrs.sort_by_key(|(uri, q, _)| (uri.to_string(), local(q)));
    let mut out = format!("<{qname}");
    for (prefix, uri) in ns {
        let decl = if prefix.is_empty() {
            "xmlns".to_owned()
        } else {
            format!("xmlns:{prefix}")
        };
        out.push_str(&format!(" {decl}=\"{}\"", escape_attr(uri)));
    }
    for (_, q, value) in attrs {
        out.push_str(&format!(" {q}=\"{}\"", escape_attr(value)));
    }
    out.push('>');
    out
}

/// Attribute value escapes of Canonical XML (C14N 1.0 §2.3).
fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::ocsp::{AnswerStatus, OcspError, OcspVerdict, check_chain_except_leaf};
    use crate::gpu::{
        self, GpuError, GpuEvidence, GpuPolicy, GpuReport, GpuTrust, Mismatch, Revocation, RimError,
    };
    use crate::sim::DEFAULT_SEED;

    /// 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600;
    const NONCE: [u8; 32] = [0x5a; 32];

    fn evidence(pki: &SimNvidiaPki, report_gpu: &SimGpu, rim_gpu: &SimGpu) -> GpuEvidence {
        GpuEvidence {
            report: pki.report(report_gpu, &NONCE),
            chain: pki.device_chain(),
            driver_rim: Some(pki.driver_rim(rim_gpu)),
            vbios_rim: Some(pki.vbios_rim(rim_gpu)),
            ocsp: pki.ocsp_responses(NOW),
        }
    }

    fn trust(pki: &SimNvidiaPki) -> GpuTrust {
        GpuTrust {
            device_roots: vec![pki.device_root_der().to_vec()],
            rim_roots: vec![pki.rim_root_der().to_vec()],
        }
    }

    /// The default policy: OCSP answers required (the simulated PKI supplies them).
    fn verify(e: &GpuEvidence, pki: &SimNvidiaPki) -> Result<gpu::VerifiedGpu, GpuError> {
        gpu::verify(e, &NONCE, &trust(pki), &GpuPolicy::default(), NOW)
    }

    /// `responses` checked as `gpu::verify` checks them, against `pki`'s chain at `now`.
    fn check_ocsp(
        pki: &SimNvidiaPki,
        responses: &[Vec<u8>],
        now: u64,
    ) -> Result<OcspVerdict, OcspError> {
        check_chain_except_leaf(&pki.device_chain(), pki.device_root_der(), responses, now)
    }

    #[test]
    fn ocsp_answers_verify_for_the_identity_ca() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let verdict = check_ocsp(&pki, &pki.ocsp_responses(NOW), NOW).unwrap();
        let answers = verdict.answers();
        assert_eq!(answers.len(), 1, "{answers:?}");
        let a = &answers[0];
        assert_eq!(a.cert_index, 1);
        assert!(
            a.subject.contains("Simulated NVIDIA GH100 Identity"),
            "{a:?}"
        );
        assert!(
            a.responder.contains("Simulated NVIDIA OCSP Responder"),
            "{a:?}"
        );
        assert_eq!(a.status, AnswerStatus::Good);
        let this_update = NOW - SimNvidiaPki::OCSP_ANSWER_AGE_SECS;
        assert_eq!(a.this_update, this_update);
        assert_eq!(a.next_update, Some(this_update + 7 * 86_400));
        // Valid until nextUpdate (and the skew), at the far end too.
        let last = this_update + SimNvidiaPki::OCSP_VALIDITY_SECS;
        assert!(check_ocsp(&pki, &pki.ocsp_responses(NOW), last).is_ok());

        // The production verifier checks them: revocation is checked, not waived.
        let g = SimGpu::default();
        let verified = verify(&evidence(&pki, &g, &g), &pki).unwrap();
        assert_eq!(verified.verdict().revocation, Revocation::OcspGood);
    }

    #[test]
    fn ocsp_responder_is_a_delegated_responder_of_the_device_root() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let (_, c) = X509Certificate::from_der(pki.ocsp_responder_der()).unwrap();
        let (_, root) = X509Certificate::from_der(pki.device_root_der()).unwrap();
        assert_eq!(c.issuer(), root.subject());
        c.verify_signature(Some(root.public_key())).unwrap();
        assert!(c.extended_key_usage().unwrap().unwrap().value.ocsp_signing);
        assert!(!c.is_ca());
        assert_eq!(c.validity().not_before.timestamp() as u64, CERT_NOT_BEFORE);
    }

    #[test]
    fn ocsp_answers_are_stale_after_a_week() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let later = NOW + 8 * 86_400;
        let err = check_ocsp(&pki, &pki.ocsp_responses(NOW), later).unwrap_err();
        assert!(
            matches!(err, OcspError::Stale { cert_index: 1, now, .. } if now == later),
            "{err:?}"
        );
        // The production verifier refuses them too (not waived to "unchecked").
        let g = SimGpu::default();
        let e = evidence(&pki, &g, &g);
        let err = gpu::verify(&e, &NONCE, &trust(&pki), &GpuPolicy::default(), later).unwrap_err();
        assert!(
            matches!(err, GpuError::Ocsp(OcspError::Stale { .. })),
            "{err:?}"
        );
        // Nor are answers dated in the future accepted.
        let err = check_ocsp(&pki, &pki.ocsp_responses(NOW + 3600), NOW).unwrap_err();
        assert!(matches!(err, OcspError::NotYetValid { .. }), "{err:?}");
    }

    #[test]
    fn ocsp_answers_are_deterministic_for_the_same_now() {
        let (a, b) = (
            SimNvidiaPki::from_seed(DEFAULT_SEED),
            SimNvidiaPki::from_seed(DEFAULT_SEED),
        );
        assert_eq!(a.ocsp_responses(NOW), b.ocsp_responses(NOW));
        assert_eq!(a.ocsp_responder_der(), b.ocsp_responder_der());
        assert_ne!(a.ocsp_responses(NOW), a.ocsp_responses(NOW + 1));
        let g = SimGpu::default();
        assert_eq!(
            a.record(&g, &NONCE, NOW).gpus[0].ocsp,
            a.ocsp_responses(NOW)
        );
    }

    #[test]
    fn another_seeds_ocsp_answers_are_refused() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let other = SimNvidiaPki::from_seed(b"another seed");
        // Its own answers are about its own identity CA (another key, another serial).
        let err = check_ocsp(&pki, &other.ocsp_responses(NOW), NOW).unwrap_err();
        assert!(
            matches!(err, OcspError::MissingAnswer { cert_index: 1, .. }),
            "{err:?}"
        );
        // Its responder, answering about this PKI's identity CA: not issued by this root.
        let about = (&pki.device_ca, &pki.device_root);
        let rogue = ocsp_response(&other.ocsp_responder, &other.ocsp_responder.key, about, NOW);
        let err = check_ocsp(&pki, &[rogue], NOW).unwrap_err();
        assert!(
            matches!(err, OcspError::UnauthorizedResponder { cert_index: 1, .. }),
            "{err:?}"
        );
        // Its responder key, under this PKI's responder certificate: the signature fails.
        let forged = ocsp_response(&pki.ocsp_responder, &other.ocsp_responder.key, about, NOW);
        let err = check_ocsp(&pki, &[forged], NOW).unwrap_err();
        assert!(matches!(err, OcspError::Signature { .. }), "{err:?}");
        // Through the production verifier.
        let g = SimGpu::default();
        let mut e = evidence(&pki, &g, &g);
        e.ocsp = other.ocsp_responses(NOW);
        let err = verify(&e, &pki).unwrap_err();
        assert!(matches!(err, GpuError::Ocsp(_)), "{err:?}");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_roots() {
        let (a, b) = (
            SimNvidiaPki::from_seed(DEFAULT_SEED),
            SimNvidiaPki::from_seed(DEFAULT_SEED),
        );
        let g = SimGpu::default();
        assert_eq!(a.device_root_der(), b.device_root_der());
        assert_eq!(a.rim_root_der(), b.rim_root_der());
        assert_eq!(a.device_chain(), b.device_chain());
        assert_eq!(a.report(&g, &NONCE), b.report(&g, &NONCE));
        assert_eq!(a.driver_rim(&g), b.driver_rim(&g));
        assert_eq!(a.vbios_rim(&g), b.vbios_rim(&g));
        assert_eq!(a.device_root_sha256(), Sha256::digest(a.device_root_der()));

        let other = SimNvidiaPki::from_seed(b"another seed");
        assert_ne!(a.device_root_der(), other.device_root_der());
        assert_ne!(a.rim_root_sha256(), other.rim_root_sha256());
        assert_ne!(a.device_root_sha256(), a.rim_root_sha256());
    }

    #[test]
    fn supplied_ocsp_answers_are_checked_not_ignored() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let mut e = evidence(&pki, &g, &g);
        e.ocsp = vec![vec![0x30, 0x03, 0x0a, 0x01, 0x00]];
        let err = verify(&e, &pki).unwrap_err();
        assert!(matches!(err, GpuError::Ocsp(_)), "{err:?}");
    }

    #[test]
    fn production_verifier_accepts_sim_evidence() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let verified = verify(&evidence(&pki, &g, &g), &pki).unwrap();
        let v = verified.verdict();
        assert_eq!(v.driver_version, "550.90.07");
        assert_eq!(v.vbios_version, "96.00.9f.00.01");
        assert_eq!(v.device_root_sha256, pki.device_root_sha256().to_string());
        assert!(
            v.device_root
                .contains("Simulated NVIDIA Device Identity CA")
        );
        assert!(
            v.attestation_key
                .contains("Simulated GH100 Attestation Key")
        );
        assert_eq!(v.fwid.as_deref(), Some(hex::encode(pki.fwid).as_str()));
        assert!(v.checks.iter().any(|c| c.starts_with("FWID ")), "{v:?}");
        assert_eq!(v.measurement_blocks, 10);
        assert_eq!(v.project.as_deref(), Some("1010"));
        let driver = v.driver_rim.as_ref().unwrap();
        assert_eq!(driver.version, "550.90.07");
        assert_eq!(driver.compared, vec![7, 21, 22, 23]);
        assert_eq!(driver.root_sha256, pki.rim_root_sha256().to_string());
        assert!(driver.signer.contains("Simulated NVIDIA RIM Signer"));
        let vbios = v.vbios_rim.as_ref().unwrap();
        assert_eq!(vbios.version, "96.00.9f.00.01");
        assert_eq!(vbios.compared, vec![0, 1, 2, 3, 8, 9]);
        assert_ne!(driver.tag_id, vbios.tag_id);
        assert!(
            v.checks
                .iter()
                .any(|c| c == "10 active RIM measurements equal the report's"),
            "{:?}",
            v.checks
        );
    }

    #[test]
    fn report_fields_parse_as_written() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let r = GpuReport::parse(&pki.report(&g, &NONCE)).unwrap();
        assert_eq!(r.request_nonce, NONCE);
        assert_eq!(r.opaque.driver_version.as_deref(), Some("550.90.07"));
        assert_eq!(r.opaque.vbios_version.as_deref(), Some("96.00.9f.00.01"));
        assert_eq!(r.opaque.board_id, Some(BOARD_ID));
        assert_eq!(r.opaque.fwid.as_deref(), Some(&pki.fwid[..]));
        let (index, value) = g.vbios_measurements[0];
        assert_eq!(r.block(index).unwrap().value, value);
        assert_eq!(
            r.blocks.iter().map(|b| b.index).collect::<Vec<_>>(),
            [1, 2, 3, 4, 8, 9, 10, 22, 23, 24]
        );
        assert_eq!(
            crate::gpu::chain::dice_fwid(&pki.device_chain()[0]),
            Some(pki.fwid.to_vec())
        );
        // Another nonce, another responder nonce.
        let other = GpuReport::parse(&pki.report(&g, &[1; 32])).unwrap();
        assert_ne!(r.response_nonce, other.response_nonce);
    }

    #[test]
    fn refuses_another_nonce() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let mut e = evidence(&pki, &g, &g);
        e.report = pki.report(&g, &[0xa5; 32]);
        let err = verify(&e, &pki).unwrap_err();
        assert!(matches!(err, GpuError::Nonce { .. }), "{err}");
    }

    #[test]
    fn refuses_another_seeds_pki() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let other = SimNvidiaPki::from_seed(b"another seed");
        let g = SimGpu::default();
        // The other PKI's whole evidence: its chain ends in an untrusted root.
        let err = verify(&evidence(&other, &g, &g), &pki).unwrap_err();
        assert!(matches!(err, GpuError::Chain(_)), "{err}");
        // Its report under this PKI's chain: the attestation key did not sign it.
        let mut e = evidence(&pki, &g, &g);
        e.report = other.report(&g, &NONCE);
        let err = verify(&e, &pki).unwrap_err();
        assert!(matches!(err, GpuError::Signature), "{err}");
        // Its RIMs: signed under an untrusted RIM root.
        let mut e = evidence(&pki, &g, &g);
        e.driver_rim = Some(other.driver_rim(&g));
        let err = verify(&e, &pki).unwrap_err();
        assert!(
            matches!(
                err,
                GpuError::Rim {
                    which: "driver",
                    source: RimError::Chain(_)
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_rim_for_another_version() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let older = SimGpu {
            driver_version: "535.104.05".into(),
            ..SimGpu::default()
        };
        let err = verify(&evidence(&pki, &g, &older), &pki).unwrap_err();
        match err {
            GpuError::RimVersion { which, rim, report } => {
                assert_eq!((which, rim.as_str()), ("driver", "535.104.05"));
                assert_eq!(report, "550.90.07");
            }
            e => panic!("{e}"),
        }
        let older = SimGpu {
            vbios_version: "96.00.5e.00.01".into(),
            ..SimGpu::default()
        };
        let err = verify(&evidence(&pki, &g, &older), &pki).unwrap_err();
        assert!(
            matches!(err, GpuError::RimVersion { which: "VBIOS", .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_measurement_that_differs_from_the_rim() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let rim_gpu = SimGpu::default();
        let mut g = SimGpu::default();
        g.driver_measurements[2].1[0] ^= 1;
        let spdm_index = g.driver_measurements[2].0;
        let err = verify(&evidence(&pki, &g, &rim_gpu), &pki).unwrap_err();
        match err {
            GpuError::Measurements { mismatches } => assert_eq!(
                mismatches,
                vec![Mismatch {
                    index: u16::from(spdm_index) - 1,
                    source: "driver",
                    found: Some(hex::encode(g.driver_measurements[2].1)),
                }]
            ),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn refuses_a_rim_with_a_changed_signature_byte() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let mut e = evidence(&pki, &g, &g);
        let xml = String::from_utf8(e.vbios_rim.take().unwrap()).unwrap();
        let (open, close) = ("<ds:SignatureValue>", "</ds:SignatureValue>");
        let from = xml.find(open).unwrap() + open.len();
        let to = xml.find(close).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut sig = b64.decode(&xml[from..to]).unwrap();
        sig[10] ^= 0x01;
        let tampered = format!("{}{}{}", &xml[..from], b64.encode(&sig), &xml[to..]);
        e.vbios_rim = Some(tampered.into_bytes());
        let err = verify(&e, &pki).unwrap_err();
        assert!(
            matches!(
                err,
                GpuError::Rim {
                    which: "VBIOS",
                    source: RimError::Signature
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rim_digest_covers_the_measurements() {
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        let g = SimGpu::default();
        let mut e = evidence(&pki, &g, &g);
        let xml = String::from_utf8(e.driver_rim.take().unwrap()).unwrap();
        let value = hex::encode(g.driver_measurements[0].1);
        let forged = hex::encode(Sha384::digest(b"forged"));
        e.driver_rim = Some(xml.replacen(&value, &forged, 1).into_bytes());
        let err = verify(&e, &pki).unwrap_err();
        assert!(
            matches!(
                err,
                GpuError::Rim {
                    which: "driver",
                    source: RimError::Digest
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn names_say_simulated() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let pki = SimNvidiaPki::from_seed(DEFAULT_SEED);
        for der in pki.device_chain().iter().chain([
            &pki.ocsp_responder.der,
            &pki.rim_signer.der,
            &pki.rim_ca.der,
            &pki.rim_root.der,
        ]) {
            let (_, c) = X509Certificate::from_der(der).unwrap();
            let subject = c.subject().to_string();
            assert!(subject.contains("CN=Simulated "), "{subject}");
            assert!(subject.contains("not NVIDIA"), "{subject}");
            assert_eq!(c.validity().not_after.timestamp() as u64, CERT_NOT_AFTER);
        }
    }
}
