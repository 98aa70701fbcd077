//! SEV-SNP report verification: the AMD chain ARK → ASK (or ASVK) → VCEK (or VLEK), the report
//! signature, certificate validity at a given time, and the TCB and chip bound into the VCEK.
//!
//! The certificate chain is checked by the sev crate's `Verifiable` impls (RustCrypto, no
//! OpenSSL), and remembered once it verified; the report signature by ring (faster, and it runs
//! for every report). The sev impls verify re-encodings of what they parsed, not the bytes
//! received, so this module also requires every input to survive a parse/encode round trip byte
//! for byte: a flipped reserved byte or a non-canonical encoding is an error, never silently
//! ignored.
//!
//! What AMD certificates carry (and this module checks at `now`): every ARK, ASK and VCEK has
//! an X.509 validity period. The built-in ARKs and ASKs are valid for 25 years (Milan:
//! 2020-10-22 to 2045-10-22); a VCEK is valid for 7 years from its issue (the recorded Milan VCEK:
//! 2023-04-03 to 2030-04-03). AMD publishes no CRL for VCEKs; revocation is out of scope here.

use std::fmt;

use sev::certs::snp::{Certificate, Verifiable};
use sev::parser::ByteParser;
use x509_parser::asn1_rs::{FromDer, Ia5String};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::Oid;

use crate::Sha256;
use crate::error::{EvidenceError, ForeignError};
use crate::evidence::{ChipId, SnpReport, SnpTcb};

/// An AMD EPYC generation whose ARK and ASK the sev crate ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmdGeneration {
    /// 3rd generation EPYC (Zen 3).
    Milan,
    /// 4th generation EPYC (Zen 4).
    Genoa,
    /// 5th generation EPYC (Zen 5).
    Turin,
}

impl AmdGeneration {
    /// Every generation with a built-in root, in the order they are tried.
    pub const ALL: [AmdGeneration; 3] = [
        AmdGeneration::Milan,
        AmdGeneration::Genoa,
        AmdGeneration::Turin,
    ];

    /// The name AMD uses (also the prefix of a VCEK's productName extension).
    pub fn name(self) -> &'static str {
        match self {
            AmdGeneration::Milan => "Milan",
            AmdGeneration::Genoa => "Genoa",
            AmdGeneration::Turin => "Turin",
        }
    }

    /// The generation named by a VCEK productName such as `Milan-B0` or `Turin`.
    pub fn from_product_name(product: &str) -> Option<Self> {
        let family = product.split('-').next().unwrap_or(product);
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(family))
    }

    /// The built-in ARK (self-signed AMD root key certificate), PEM.
    pub fn builtin_ark_pem(self) -> &'static [u8] {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        match self {
            AmdGeneration::Milan => milan::ARK,
            AmdGeneration::Genoa => genoa::ARK,
            AmdGeneration::Turin => turin::ARK,
        }
    }

    /// SHA-256 of the built-in ARK's DER.
    pub fn builtin_ark_sha256(self) -> Result<Sha256, SnpVerifyError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.builtin_ark_pem()).map_err(|e| {
            SnpVerifyError::Certificate {
                which: format!("{self} ARK (built-in)"),
                reason: e.to_string(),
            }
        })?;
        Ok(Sha256::digest(&pem.contents))
    }

    /// The built-in ASK (AMD SEV signing key certificate, signed by the ARK), PEM.
    pub fn builtin_ask_pem(self) -> &'static [u8] {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        match self {
            AmdGeneration::Milan => milan::ASK,
            AmdGeneration::Genoa => genoa::ASK,
            AmdGeneration::Turin => turin::ASK,
        }
    }
}

impl fmt::Display for AmdGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The trust anchor a verified report chains to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmdRoot {
    /// AMD's ARK of this generation, as the sev crate ships it. Also reported when the ARK came
    /// from a chain file but is byte-identical to the built-in one: the anchor is the same key.
    BuiltIn(AmdGeneration),
    /// An ARK from a chain file that is none of the built-in ARKs. Only a policy that names this
    /// hash (SHA-256 of the ARK's DER) may accept it.
    ChainFile {
        /// SHA-256 of the ARK certificate's DER.
        ark_sha256: Sha256,
    },
}

/// The certificates that come with an SNP report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnpCertificates {
    /// The VCEK (or VLEK) certificate, DER.
    pub vcek_der: Vec<u8>,
    /// ASK (or ASVK) and ARK certificates, PEM or concatenated DER, in either order. `None`
    /// uses the sev crate's built-in ARK and ASK of the generation the VCEK belongs to.
    pub chain: Option<Vec<u8>>,
}

/// Which kind of endorsement key signed the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnpSigner {
    /// Versioned Chip Endorsement Key: unique to one chip and one TCB; signed by the ASK.
    Vcek,
    /// Versioned Loaded Endorsement Key: loaded by a cloud provider; signed by the ASVK.
    Vlek,
}

impl SnpSigner {
    fn key_name(self) -> &'static str {
        match self {
            SnpSigner::Vcek => "VCEK",
            SnpSigner::Vlek => "VLEK",
        }
    }

    fn intermediate_name(self) -> &'static str {
        match self {
            SnpSigner::Vcek => "ASK",
            SnpSigner::Vlek => "ASVK",
        }
    }
}

impl fmt::Display for SnpSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_name())
    }
}

/// A report whose signature, chain, validity, TCB and chip binding all verified.
///
/// Only [`verify_snp`] builds one. It says nothing about measurements, debug, report_data or
/// whether the TCB is recent enough: a policy decides those.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SnpVerified {
    /// The report that verified.
    pub report: SnpReport,
    /// The root the chain ends in.
    pub root: AmdRoot,
    /// Which key signed the report.
    pub signer: SnpSigner,
    /// The TCB the VCEK (or VLEK) was issued for; equal to the report's reported_tcb.
    pub vcek_tcb: SnpTcb,
    /// The VCEK's productName extension (`Milan-B0`, `Turin`, ...), when present.
    pub product_name: Option<String>,
    /// True when the VCEK's hwID was compared with the report's chip_id; false when the report
    /// masks its chip ID (all zero) or the signer is a VLEK (which carries no hwID).
    pub chip_id_checked: bool,
    /// The earliest notAfter of ARK, ASK and VCEK, in Unix seconds: the evidence stops
    /// verifying after this.
    pub valid_until: u64,
}

/// Why an SNP report did not verify.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnpVerifyError {
    /// The report does not parse.
    #[error(transparent)]
    Report(#[from] EvidenceError),
    /// A report byte is not preserved by the sev crate's parser (a reserved field not zero),
    /// so the bytes the signature check would see are not the bytes received.
    #[error("report byte at offset {offset:#x} is not canonical (reserved field not zero)")]
    ReportNotCanonical {
        /// Offset of the first differing byte.
        offset: usize,
    },
    /// SIGNATURE_ALGO is not 1 (ECDSA P-384 with SHA-384).
    #[error("report signature algorithm {0} is not ECDSA P-384 with SHA-384 (1)")]
    UnsupportedSignatureAlgorithm(u32),
    /// The report says it was not signed by a VCEK or VLEK (SIGNING_KEY 2-7, or MASK_CHIP_KEY).
    #[error("report is not signed by a VCEK or VLEK: {0}")]
    NotSigned(String),
    /// The signature's r or s has bytes set above the 48 bytes of a P-384 scalar.
    #[error("report signature {component} has non-zero bytes above the P-384 scalar")]
    SignatureEncoding {
        /// "r" or "s".
        component: &'static str,
    },
    /// A certificate does not parse, or is not canonical DER.
    #[error("{which} certificate: {reason}")]
    Certificate {
        /// Which certificate ("VCEK", "chain-file ARK", "Milan ASK", ...).
        which: String,
        /// What was wrong.
        reason: String,
    },
    /// The chain file does not hold exactly one ARK and one ASK/ASVK.
    #[error("chain file: {0}")]
    ChainFile(String),
    /// The report's SIGNING_KEY and the certificate's kind disagree.
    #[error("report says it was signed by the {report} but the certificate is a {certificate}")]
    SignerMismatch {
        /// What the report's KEY_INFO.SIGNING_KEY says.
        report: SnpSigner,
        /// What the certificate's subject says.
        certificate: SnpSigner,
    },
    /// A signature in the chain does not verify.
    #[error("{signee} does not verify under the {signer}")]
    ChainLink {
        /// The certificate that was checked ("ASK", "VCEK", "ARK (self-signature)").
        signee: String,
        /// The certificate whose key was used ("Milan ARK", "chain-file ASK", ...).
        signer: String,
        /// What the signature check reported.
        #[source]
        reason: ForeignError,
    },
    /// Without a chain file, the VCEK verifies under none of the built-in ASKs tried.
    #[error("{signer} verifies under none of the built-in {intermediate}s ({tried})")]
    NoBuiltInRoot {
        /// VCEK or VLEK.
        signer: SnpSigner,
        /// ASK or ASVK.
        intermediate: &'static str,
        /// The generations tried.
        tried: String,
    },
    /// The report's signature does not verify with the VCEK's key.
    #[error("report signature does not verify with the {signer}")]
    ReportSignature {
        /// VCEK or VLEK.
        signer: SnpSigner,
        /// What the signature check reported.
        #[source]
        reason: ForeignError,
    },
    /// A certificate is not yet valid at `now`.
    #[error("{which} certificate is not valid before {not_before} (now is {now})")]
    NotYetValid {
        /// Which certificate.
        which: String,
        /// Its notBefore, Unix seconds.
        not_before: i64,
        /// The time verified at.
        now: u64,
    },
    /// A certificate has expired at `now`.
    #[error("{which} certificate expired at {not_after} (now is {now})")]
    Expired {
        /// Which certificate.
        which: String,
        /// Its notAfter, Unix seconds.
        not_after: i64,
        /// The time verified at.
        now: u64,
    },
    /// An AMD extension the check needs is absent from the VCEK.
    #[error("{signer} has no {name} extension ({oid})")]
    MissingExtension {
        /// VCEK or VLEK.
        signer: SnpSigner,
        /// The extension's name in AMD's specification.
        name: &'static str,
        /// Its OID.
        oid: &'static str,
    },
    /// An AMD extension does not hold what AMD's specification says it holds.
    #[error("{signer} extension {name} ({oid}) is malformed: {reason}")]
    BadExtension {
        /// VCEK or VLEK.
        signer: SnpSigner,
        /// The extension's name.
        name: &'static str,
        /// Its OID.
        oid: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The TCB the VCEK was issued for differs from the report's reported_tcb.
    #[error(
        "{signer} TCB {component}={} but report reported_tcb {component}={}",
        show(*.certificate),
        show(*.report)
    )]
    TcbMismatch {
        /// VCEK or VLEK.
        signer: SnpSigner,
        /// bootloader, tee, snp, microcode or fmc.
        component: &'static str,
        /// The value in the certificate (None: the extension is absent).
        certificate: Option<u8>,
        /// The value in the report (None: the field is absent).
        report: Option<u8>,
    },
    /// The VCEK was issued for another chip than the one that signed the report.
    #[error("VCEK hwID {} does not match report chip_id {chip_id}", hex::encode(.hwid))]
    ChipIdMismatch {
        /// The VCEK's hwID (1 to 64 bytes; Turin's is 8).
        hwid: Vec<u8>,
        /// The report's chip_id.
        chip_id: ChipId,
    },
}

/// AMD's VCEK extension OIDs (VCEK/VLEK specification, AMD publication 57230).
mod oid {
    pub(super) const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    pub(super) const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    pub(super) const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    pub(super) const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    pub(super) const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    pub(super) const FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
    pub(super) const HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
}

/// Bytes of a P-384 scalar inside the 72-byte little-endian r and s fields.
const P384_SCALAR_LEN: usize = 48;

/// Verifies an SEV-SNP attestation report and its certificates at time `now_unix`.
///
/// Returns `Ok` only if all of these hold:
/// - the report parses (version 2 or later) and re-encodes to exactly the bytes given;
/// - it is signed with ECDSA P-384/SHA-384 by the key its KEY_INFO names (VCEK or VLEK), and
///   that is the kind of certificate given;
/// - the ARK is self-signed, the ARK signs the ASK (or ASVK), the ASK signs the VCEK (or VLEK),
///   and the VCEK's key verifies the report's signature over bytes `0..0x2A0`;
/// - ARK, ASK and VCEK are each within their validity period at `now_unix`;
/// - the TCB in the VCEK's extensions (bootloader, TEE, SNP, microcode, and FMC on Turin) equals
///   the report's reported_tcb;
/// - the VCEK's hwID equals the report's chip_id, unless the report masks it (all zero).
///
/// With `certs.chain == None` the built-in ARK and ASK are used: of the generation the VCEK's
/// productName names, or, without one, the first of Milan, Genoa, Turin under which it verifies.
///
/// It does NOT check measurements, debug policy, report_data, VMPL, or whether the TCB is
/// current: those are policy.
pub fn verify_snp(
    report: &[u8],
    certs: &SnpCertificates,
    now_unix: u64,
) -> Result<SnpVerified, SnpVerifyError> {
    verify_snp_report(&SnpReport::parse(report)?, certs, now_unix)
}

/// [`verify_snp`] for a report already parsed (as [`crate::Evidence`] holds it).
pub fn verify_snp_report(
    report: &SnpReport,
    certs: &SnpCertificates,
    now_unix: u64,
) -> Result<SnpVerified, SnpVerifyError> {
    let report = report.clone();
    check_report_canonical(&report)?;
    let report_signer = report_signer(&report)?;
    check_signature_encoding(&report)?;

    let vcek = ParsedCert::parse("VCEK", &certs.vcek_der)?;
    let cert_signer = vcek.signer_kind()?;
    if cert_signer != report_signer {
        return Err(SnpVerifyError::SignerMismatch {
            report: report_signer,
            certificate: cert_signer,
        });
    }
    let signer = cert_signer;
    let product_name = vcek.product_name(signer)?;

    let (root, ark, ask) = match &certs.chain {
        Some(chain) => verify_chain_file(chain, &vcek, signer)?,
        None => verify_builtin(&vcek, signer, product_name.as_deref())?,
    };

    check_report_signature(&report, &vcek, signer)?;

    let mut valid_until = u64::MAX;
    for cert in [&ark, &ask, &vcek] {
        valid_until = valid_until.min(cert.check_validity(now_unix)?);
    }

    let vcek_tcb = vcek.tcb(signer)?;
    check_tcb(
        signer,
        &vcek_tcb,
        &SnpTcb::from(&report.inner().reported_tcb),
    )?;
    let chip_id_checked = check_chip_id(&vcek, signer, &report.inner().chip_id)?;

    Ok(SnpVerified {
        report,
        root,
        signer,
        vcek_tcb,
        product_name,
        chip_id_checked,
        valid_until,
    })
}

/// Where the signed part of a report ends and its signature's r and s begin (each 72 bytes,
/// little-endian; `check_signature_encoding` has made sure only the low 48 are used).
const SIGNED_LEN: usize = 0x2a0;
const SIG_R: usize = 0x2a0;
const SIG_S: usize = 0x2e8;
const P384_SCALAR: usize = 48;

/// ECDSA P-384 with SHA-384 over the report's first 0x2A0 bytes, with the VCEK's (or VLEK's) key,
/// by ring: about half the time of the sev crate's RustCrypto check (0.51 ms against 0.92 ms
/// here), which mattered because this check, unlike the chain, runs for every report. The bytes
/// checked are the received ones (`check_report_canonical` made sure they are what sev parsed).
fn check_report_signature(
    report: &SnpReport,
    vcek: &ParsedCert,
    signer: SnpSigner,
) -> Result<(), SnpVerifyError> {
    use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384};
    let failed = |reason: String| SnpVerifyError::ReportSignature {
        signer,
        reason: ForeignError::new(reason),
    };
    let x = vcek.x509()?;
    let spki = x.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_NIST_EC_P384) {
        return Err(failed(format!(
            "the {signer} key is not an EC P-384 key ({}, {curve:?})",
            spki.algorithm.algorithm
        )));
    }
    let raw = report.raw();
    // ring takes r ‖ s big-endian, each the scalar's 48 bytes.
    let mut sig = [0u8; 2 * P384_SCALAR];
    for (out, at) in sig.chunks_exact_mut(P384_SCALAR).zip([SIG_R, SIG_S]) {
        out.copy_from_slice(&raw[at..at + P384_SCALAR]);
        out.reverse();
    }
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        &spki.subject_public_key.data,
    )
    .verify(&raw[..SIGNED_LEN], &sig)
    .map_err(|_| failed("ECDSA P-384 verification failed".into()))
}

/// The sev crate verifies a re-encoding of what it parsed; make sure that is what we received.
fn check_report_canonical(report: &SnpReport) -> Result<(), SnpVerifyError> {
    let encoded = report
        .inner()
        .to_bytes()
        .map_err(|e| EvidenceError::Malformed {
            what: "SEV-SNP report",
            reason: format!("does not re-encode: {e}"),
        })?;
    match encoded.iter().zip(report.raw()).position(|(a, b)| a != b) {
        Some(offset) => Err(SnpVerifyError::ReportNotCanonical { offset }),
        None => Ok(()),
    }
}

fn report_signer(report: &SnpReport) -> Result<SnpSigner, SnpVerifyError> {
    let r = report.inner();
    if r.sig_algo != 1 {
        return Err(SnpVerifyError::UnsupportedSignatureAlgorithm(r.sig_algo));
    }
    if r.key_info.mask_chip_key() {
        return Err(SnpVerifyError::NotSigned("MASK_CHIP_KEY is set".into()));
    }
    match r.key_info.signing_key() {
        0 => Ok(SnpSigner::Vcek),
        1 => Ok(SnpSigner::Vlek),
        7 => Err(SnpVerifyError::NotSigned("SIGNING_KEY is 7 (none)".into())),
        other => Err(SnpVerifyError::NotSigned(format!(
            "SIGNING_KEY {other} is reserved"
        ))),
    }
}

/// r and s are 72-byte little-endian fields holding 48-byte scalars; the sev crate reads only the
/// low 48 bytes, so anything above must be zero or the signature would be malleable.
fn check_signature_encoding(report: &SnpReport) -> Result<(), SnpVerifyError> {
    let sig = &report.inner().signature;
    for (component, bytes) in [("r", sig.r()), ("s", sig.s())] {
        if bytes[P384_SCALAR_LEN..].iter().any(|&b| b != 0) {
            return Err(SnpVerifyError::SignatureEncoding { component });
        }
    }
    Ok(())
}

/// One certificate, parsed by both the sev crate (for its signature checks) and x509-parser
/// (for names, validity and AMD's extensions).
struct ParsedCert {
    which: String,
    der: Vec<u8>,
    sev: Certificate,
}

impl ParsedCert {
    fn parse(which: &str, der: &[u8]) -> Result<Self, SnpVerifyError> {
        let err = |reason: String| SnpVerifyError::Certificate {
            which: which.to_owned(),
            reason,
        };
        let sev = Certificate::from_der(der).map_err(|e| err(e.to_string()))?;
        // sev checks signatures over its re-encoding of the TBS part; insist that equals the input.
        let reencoded = sev.to_der().map_err(|e| err(e.to_string()))?;
        if reencoded != der {
            return Err(err(
                "not canonical DER (does not re-encode to the same bytes)".into(),
            ));
        }
        let this = Self {
            which: which.to_owned(),
            der: der.to_vec(),
            sev,
        };
        let x = this.x509()?;
        // The outer algorithm is not covered by the signature; it must repeat the signed one.
        if x.signature_algorithm != x.tbs_certificate.signature {
            return Err(err(
                "outer signature algorithm differs from the signed one".into()
            ));
        }
        // Nor is the BIT STRING's unused-bits count, which the RSA check ignores.
        if x.signature_value.unused_bits != 0 {
            return Err(err("signature BIT STRING has unused bits".into()));
        }
        Ok(this)
    }

    fn x509(&self) -> Result<X509Certificate<'_>, SnpVerifyError> {
        match x509_parser::parse_x509_certificate(&self.der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(self.error("trailing bytes after the certificate".into())),
            Err(e) => Err(self.error(e.to_string())),
        }
    }

    fn error(&self, reason: String) -> SnpVerifyError {
        SnpVerifyError::Certificate {
            which: self.which.clone(),
            reason,
        }
    }

    fn is_self_issued(&self) -> Result<bool, SnpVerifyError> {
        let x = self.x509()?;
        Ok(x.subject().as_raw() == x.issuer().as_raw())
    }

    /// VCEK or VLEK, from the subject common name AMD gives them.
    fn signer_kind(&self) -> Result<SnpSigner, SnpVerifyError> {
        let x = self.x509()?;
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        match cn.as_str() {
            "SEV-VCEK" => Ok(SnpSigner::Vcek),
            "SEV-VLEK" => Ok(SnpSigner::Vlek),
            other => Err(self.error(format!(
                "subject CN {other:?} is neither SEV-VCEK nor SEV-VLEK"
            ))),
        }
    }

    /// The raw extnValue of the extension `oid`, if present (at most once).
    fn extension(&self, oid: &str) -> Result<Option<Vec<u8>>, SnpVerifyError> {
        let wanted: Oid<'static> = oid
            .parse()
            .map_err(|_| self.error(format!("bad OID {oid}")))?;
        let x = self.x509()?;
        let mut found = x.extensions().iter().filter(|e| e.oid == wanted);
        let first = found.next().map(|e| e.value.to_vec());
        if found.next().is_some() {
            return Err(self.error(format!("extension {oid} appears more than once")));
        }
        Ok(first)
    }

    fn product_name(&self, signer: SnpSigner) -> Result<Option<String>, SnpVerifyError> {
        let Some(value) = self.extension(oid::PRODUCT_NAME)? else {
            return Ok(None);
        };
        match Ia5String::from_der(&value) {
            Ok(([], s)) => Ok(Some(s.string())),
            _ => Err(SnpVerifyError::BadExtension {
                signer,
                name: "productName",
                oid: oid::PRODUCT_NAME,
                reason: "not a DER IA5String".into(),
            }),
        }
    }

    fn spl(
        &self,
        signer: SnpSigner,
        name: &'static str,
        oid: &'static str,
    ) -> Result<Option<u8>, SnpVerifyError> {
        let Some(value) = self.extension(oid)? else {
            return Ok(None);
        };
        match u8::from_der(&value) {
            Ok(([], v)) => Ok(Some(v)),
            _ => Err(SnpVerifyError::BadExtension {
                signer,
                name,
                oid,
                reason: "not a DER INTEGER in 0..=255".into(),
            }),
        }
    }

    fn tcb(&self, signer: SnpSigner) -> Result<SnpTcb, SnpVerifyError> {
        let required = |name: &'static str, oid: &'static str| {
            self.spl(signer, name, oid)?
                .ok_or(SnpVerifyError::MissingExtension { signer, name, oid })
        };
        Ok(SnpTcb {
            fmc: self.spl(signer, "fmcSPL", oid::FMC_SPL)?,
            bootloader: required("blSPL", oid::BL_SPL)?,
            tee: required("teeSPL", oid::TEE_SPL)?,
            snp: required("snpSPL", oid::SNP_SPL)?,
            microcode: required("ucodeSPL", oid::UCODE_SPL)?,
        })
    }

    /// Checks notBefore <= now <= notAfter; returns notAfter.
    fn check_validity(&self, now: u64) -> Result<u64, SnpVerifyError> {
        let x = self.x509()?;
        let validity = x.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        if now_i < not_before {
            return Err(SnpVerifyError::NotYetValid {
                which: self.which.clone(),
                not_before,
                now,
            });
        }
        if now_i > not_after {
            return Err(SnpVerifyError::Expired {
                which: self.which.clone(),
                not_after,
                now,
            });
        }
        Ok(u64::try_from(not_after).unwrap_or(0))
    }
}

/// Checks `signer` signs `signee` with the sev crate.
fn check_link(
    signer: &ParsedCert,
    signee: &ParsedCert,
    signee_name: &str,
) -> Result<(), SnpVerifyError> {
    (&signer.sev, &signee.sev)
        .verify()
        .map_err(|e| SnpVerifyError::ChainLink {
            signee: signee_name.to_owned(),
            signer: signer.which.clone(),
            reason: ForeignError::new(e),
        })
}

/// ARK self-signature, ARK → ASK, ASK → VCEK.
///
/// The three RSA-4096 checks took 1.7 ms here, two thirds of a report's verification, and a
/// client sees the same chain on every new connection to a node (a new TLS certificate, the
/// same chip). So a chain that verified is remembered by the SHA-256 of its three certificates'
/// DER: the same bytes verify the same way every time. Validity at `now`, TCB and chip ID are
/// still checked on every report; failures are not remembered.
fn check_chain(
    ark: &ParsedCert,
    ask: &ParsedCert,
    vcek: &ParsedCert,
    signer: SnpSigner,
) -> Result<(), SnpVerifyError> {
    let key = chain_key(ark, ask, vcek);
    if verified_chains().contains(&key) {
        return Ok(());
    }
    check_link(ark, ark, "ARK (self-signature)")?;
    check_link(ark, ask, signer.intermediate_name())?;
    check_link(ask, vcek, signer.key_name())?;
    let mut set = verified_chains();
    // Bounded: a verifier that meets more chips than this starts over.
    if set.len() >= VERIFIED_CHAINS_MAX {
        set.clear();
    }
    set.insert(key);
    Ok(())
}

/// How many verified chains [`check_chain`] remembers.
const VERIFIED_CHAINS_MAX: usize = 4096;

fn verified_chains() -> std::sync::MutexGuard<'static, std::collections::HashSet<Sha256>> {
    static SET: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<Sha256>>> =
        std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
        .lock()
        // A panic cannot leave a half-inserted hash: the set stays sound.
        .unwrap_or_else(|e| e.into_inner())
}

/// SHA-256 over the three certificates, each preceded by its length.
fn chain_key(ark: &ParsedCert, ask: &ParsedCert, vcek: &ParsedCert) -> Sha256 {
    let mut bytes = Vec::with_capacity(ark.der.len() + ask.der.len() + vcek.der.len() + 24);
    for der in [&ark.der, &ask.der, &vcek.der] {
        bytes.extend_from_slice(&(der.len() as u64).to_be_bytes());
        bytes.extend_from_slice(der);
    }
    Sha256::digest(&bytes)
}

/// Forgets every remembered chain, so that the next report verifies its chain from scratch
/// (the benchmark's "new VCEK" case).
#[doc(hidden)]
pub fn forget_verified_chains() {
    verified_chains().clear();
}

type Chain = (AmdRoot, ParsedCert, ParsedCert);

fn builtin_cert(
    generation: AmdGeneration,
    role: &str,
    pem: &[u8],
) -> Result<ParsedCert, SnpVerifyError> {
    let which = format!("{generation} {role}");
    let pem = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| SnpVerifyError::Certificate {
            which: which.clone(),
            reason: e.to_string(),
        })?
        .1;
    ParsedCert::parse(&which, &pem.contents)
}

fn verify_builtin(
    vcek: &ParsedCert,
    signer: SnpSigner,
    product_name: Option<&str>,
) -> Result<Chain, SnpVerifyError> {
    // The sev crate ships ASKs only; a VLEK's ASVK must come in a chain file.
    let named = product_name.and_then(AmdGeneration::from_product_name);
    let candidates: Vec<AmdGeneration> = match named {
        Some(g) => vec![g],
        None => AmdGeneration::ALL.to_vec(),
    };
    let mut last_err = None;
    for generation in &candidates {
        let ark = builtin_cert(*generation, "ARK", generation.builtin_ark_pem())?;
        let ask = builtin_cert(*generation, "ASK", generation.builtin_ask_pem())?;
        match check_chain(&ark, &ask, vcek, signer) {
            Ok(()) => return Ok((AmdRoot::BuiltIn(*generation), ark, ask)),
            Err(e) => last_err = Some(e),
        }
    }
    match (named, last_err) {
        // The VCEK names its generation: say exactly which link failed.
        (Some(_), Some(e)) => Err(e),
        _ => Err(SnpVerifyError::NoBuiltInRoot {
            signer,
            intermediate: signer.intermediate_name(),
            tried: candidates
                .iter()
                .map(|g| g.name())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Splits a chain file (PEM blocks or concatenated DER) into certificates.
fn split_chain_file(chain: &[u8]) -> Result<Vec<Vec<u8>>, SnpVerifyError> {
    let is_pem = chain.windows(11).any(|w| w == b"-----BEGIN ");
    let mut out = Vec::new();
    if is_pem {
        for pem in x509_parser::pem::Pem::iter_from_buffer(chain) {
            let pem = pem.map_err(|e| SnpVerifyError::ChainFile(format!("bad PEM: {e}")))?;
            if pem.label != "CERTIFICATE" {
                return Err(SnpVerifyError::ChainFile(format!(
                    "unexpected PEM block {:?}",
                    pem.label
                )));
            }
            out.push(pem.contents);
        }
    } else {
        let mut rest = chain;
        while !rest.is_empty() {
            let (next, _) = x509_parser::parse_x509_certificate(rest).map_err(|e| {
                SnpVerifyError::ChainFile(format!(
                    "not PEM, and not DER at byte {}: {e}",
                    chain.len() - rest.len()
                ))
            })?;
            out.push(rest[..rest.len() - next.len()].to_vec());
            rest = next;
        }
    }
    Ok(out)
}

fn verify_chain_file(
    chain: &[u8],
    vcek: &ParsedCert,
    signer: SnpSigner,
) -> Result<Chain, SnpVerifyError> {
    let ders = split_chain_file(chain)?;
    if ders.len() != 2 {
        return Err(SnpVerifyError::ChainFile(format!(
            "expected 2 certificates (ARK and {}), found {}",
            signer.intermediate_name(),
            ders.len()
        )));
    }
    let first = ParsedCert::parse("chain-file certificate 1", &ders[0])?;
    let second = ParsedCert::parse("chain-file certificate 2", &ders[1])?;
    let (mut ark, mut ask) = match (first.is_self_issued()?, second.is_self_issued()?) {
        (true, false) => (first, second),
        (false, true) => (second, first),
        (a, b) => {
            return Err(SnpVerifyError::ChainFile(format!(
                "expected exactly one self-issued ARK, found {}",
                usize::from(a) + usize::from(b)
            )));
        }
    };
    let builtin = AmdGeneration::ALL.into_iter().find(|g| {
        x509_parser::pem::parse_x509_pem(g.builtin_ark_pem())
            .is_ok_and(|(_, pem)| pem.contents == ark.der)
    });
    ark.which = match builtin {
        Some(g) => format!("{g} ARK (from chain file)"),
        None => "chain-file ARK".into(),
    };
    ask.which = format!("chain-file {}", signer.intermediate_name());
    check_chain(&ark, &ask, vcek, signer)?;
    let root = match builtin {
        Some(g) => AmdRoot::BuiltIn(g),
        None => AmdRoot::ChainFile {
            ark_sha256: Sha256::digest(&ark.der),
        },
    };
    Ok((root, ark, ask))
}

fn show(v: Option<u8>) -> String {
    v.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

fn check_tcb(signer: SnpSigner, cert: &SnpTcb, report: &SnpTcb) -> Result<(), SnpVerifyError> {
    let components = [
        ("bootloader", Some(cert.bootloader), Some(report.bootloader)),
        ("tee", Some(cert.tee), Some(report.tee)),
        ("snp", Some(cert.snp), Some(report.snp)),
        ("microcode", Some(cert.microcode), Some(report.microcode)),
        ("fmc", cert.fmc, report.fmc),
    ];
    for (component, c, r) in components {
        if c != r {
            return Err(SnpVerifyError::TcbMismatch {
                signer,
                component,
                certificate: c,
                report: r,
            });
        }
    }
    Ok(())
}

/// Returns whether the chip ID was compared (false when masked or for a VLEK).
fn check_chip_id(
    vcek: &ParsedCert,
    signer: SnpSigner,
    chip_id: &[u8; 64],
) -> Result<bool, SnpVerifyError> {
    let hwid = vcek.extension(oid::HW_ID)?;
    let hwid = match (signer, hwid) {
        (SnpSigner::Vlek, _) => return Ok(false),
        (SnpSigner::Vcek, None) => {
            return Err(SnpVerifyError::MissingExtension {
                signer,
                name: "hwID",
                oid: oid::HW_ID,
            });
        }
        (SnpSigner::Vcek, Some(h)) => h,
    };
    if hwid.is_empty() || hwid.len() > chip_id.len() {
        return Err(SnpVerifyError::BadExtension {
            signer,
            name: "hwID",
            oid: oid::HW_ID,
            reason: format!("{} bytes, expected 1 to 64", hwid.len()),
        });
    }
    if chip_id.iter().all(|&b| b == 0) {
        return Ok(false);
    }
    // Turin VCEKs carry an 8-byte hwID; the report's chip_id holds it zero-padded to 64 bytes.
    let (head, tail) = chip_id.split_at(hwid.len());
    if head != hwid.as_slice() || tail.iter().any(|&b| b != 0) {
        return Err(SnpVerifyError::ChipIdMismatch {
            hwid,
            chip_id: ChipId(*chip_id),
        });
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;
    use crate::evidence::decode_binary_or_hex;
    use chrysalis_testkit::fixtures::registry_package_dir;

    fn certs_data(file: &str) -> Vec<u8> {
        let path = registry_package_dir("sev")
            .join("tests/certs_data")
            .join(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn milan_report() -> Vec<u8> {
        decode_binary_or_hex(&certs_data("report_milan.hex")).0
    }

    fn milan_certs(chain: bool) -> SnpCertificates {
        SnpCertificates {
            vcek_der: certs_data("vcek_milan.der"),
            chain: chain.then(|| certs_data("cert_chain_milan")),
        }
    }

    /// 2025-01-01T00:00:00Z: inside every recorded certificate's validity.
    const NOW: u64 = 1_735_689_600;

    #[test]
    fn milan_report_verifies_with_chain_file_and_builtin() {
        let report = milan_report();
        for chain in [true, false] {
            let v = verify_snp(&report, &milan_certs(chain), NOW).unwrap();
            assert_eq!(
                v.root,
                AmdRoot::BuiltIn(AmdGeneration::Milan),
                "chain file: {chain}"
            );
            assert_eq!(v.signer, SnpSigner::Vcek);
            assert_eq!(v.product_name.as_deref(), Some("Milan-B0"));
            assert_eq!(
                v.vcek_tcb,
                SnpTcb {
                    fmc: None,
                    bootloader: 3,
                    tee: 0,
                    snp: 8,
                    microcode: 115
                }
            );
            assert_eq!(v.vcek_tcb, v.report.measurements().reported_tcb);
            assert!(v.chip_id_checked);
            // The VCEK expires 2030-04-03T19:23:43Z, before the ARK and ASK.
            assert_eq!(v.valid_until, 1_901_474_623);
        }
    }

    #[test]
    fn chain_file_in_der_and_either_order_verifies() {
        let pems: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(&certs_data("cert_chain_milan"))
            .map(|p| p.unwrap().contents)
            .collect();
        assert_eq!(pems.len(), 2);
        for chain in [
            [&pems[0][..], &pems[1][..]].concat(),
            [&pems[1][..], &pems[0][..]].concat(),
        ] {
            let certs = SnpCertificates {
                chain: Some(chain),
                ..milan_certs(false)
            };
            verify_snp(&milan_report(), &certs, NOW).unwrap();
        }
    }

    #[test]
    fn chain_file_failure_names_the_failing_link() {
        // The Genoa ARK does not sign the Milan ASK: the failing link is named.
        let genoa_ark = x509_parser::pem::parse_x509_pem(AmdGeneration::Genoa.builtin_ark_pem())
            .unwrap()
            .1
            .contents;
        let milan_ask = x509_parser::pem::parse_x509_pem(AmdGeneration::Milan.builtin_ask_pem())
            .unwrap()
            .1
            .contents;
        let certs = SnpCertificates {
            chain: Some([genoa_ark, milan_ask].concat()),
            ..milan_certs(false)
        };
        let err = verify_snp(&milan_report(), &certs, NOW)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err.split(':').next().unwrap(),
            "ASK does not verify under the Genoa ARK (from chain file)",
            "{err}"
        );
    }

    #[test]
    fn chain_file_must_hold_two_certificates() {
        let one = x509_parser::pem::parse_x509_pem(AmdGeneration::Milan.builtin_ark_pem())
            .unwrap()
            .1
            .contents;
        let certs = SnpCertificates {
            chain: Some(one),
            ..milan_certs(false)
        };
        let err = verify_snp(&milan_report(), &certs, NOW).unwrap_err();
        assert!(matches!(err, SnpVerifyError::ChainFile(_)), "{err}");
        let certs = SnpCertificates {
            chain: Some(b"garbage".to_vec()),
            ..milan_certs(false)
        };
        assert!(matches!(
            verify_snp(&milan_report(), &certs, NOW),
            Err(SnpVerifyError::ChainFile(_))
        ));
    }

    #[test]
    fn every_flip_in_the_report_is_rejected() {
        let report = milan_report();
        let certs = milan_certs(false);
        for offset in 0..report.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = report.clone();
                bad[offset] ^= mask;
                assert!(
                    verify_snp(&bad, &certs, NOW).is_err(),
                    "flip {mask:#x} at {offset:#x} verified"
                );
            }
        }
    }

    #[test]
    fn report_signature_failure_names_the_vcek() {
        let mut bad = milan_report();
        bad[0x50] ^= 1; // report_data
        let err = verify_snp(&bad, &milan_certs(true), NOW).unwrap_err();
        assert!(
            matches!(
                err,
                SnpVerifyError::ReportSignature {
                    signer: SnpSigner::Vcek,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("report signature does not verify with the VCEK"),
            "{err}"
        );
    }

    #[test]
    fn every_flip_in_the_vcek_is_rejected_without_panic() {
        let report = milan_report();
        let vcek = certs_data("vcek_milan.der");
        for offset in 0..vcek.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = vcek.clone();
                bad[offset] ^= mask;
                let certs = SnpCertificates {
                    vcek_der: bad,
                    chain: None,
                };
                assert!(
                    verify_snp(&report, &certs, NOW).is_err(),
                    "VCEK flip {mask:#x} at {offset} verified"
                );
            }
        }
    }

    #[test]
    fn turin_vcek_does_not_verify_the_milan_report() {
        let certs = SnpCertificates {
            vcek_der: certs_data("vcek_turin.der"),
            chain: None,
        };
        let err = verify_snp(&milan_report(), &certs, NOW).unwrap_err();
        assert!(
            matches!(err, SnpVerifyError::ReportSignature { .. }),
            "{err}"
        );
        // With the Milan chain file, the Turin VCEK fails already at the ASK.
        let certs = SnpCertificates {
            chain: Some(certs_data("cert_chain_milan")),
            ..certs
        };
        let err = verify_snp(&milan_report(), &certs, NOW)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("VCEK does not verify under the Milan ARK (from chain file)")
                || err.starts_with("VCEK does not verify under the chain-file ASK"),
            "{err}"
        );
    }

    #[test]
    fn turin_vcek_chains_through_the_turin_chain_file() {
        // No Turin report is recorded, but the chain half must work: with the Turin chain file,
        // the VCEK is accepted up to the report signature.
        let certs = SnpCertificates {
            vcek_der: certs_data("vcek_turin.der"),
            chain: Some(certs_data("cert_chain_turin")),
        };
        let err = verify_snp(&milan_report(), &certs, NOW).unwrap_err();
        assert!(
            matches!(err, SnpVerifyError::ReportSignature { .. }),
            "{err}"
        );
        let vcek = ParsedCert::parse("VCEK", &certs.vcek_der).unwrap();
        let tcb = vcek.tcb(SnpSigner::Vcek).unwrap();
        assert_eq!(
            tcb,
            SnpTcb {
                fmc: Some(0),
                bootloader: 0,
                tee: 0,
                snp: 0,
                microcode: 9
            }
        );
        assert_eq!(
            vcek.product_name(SnpSigner::Vcek).unwrap().as_deref(),
            Some("Turin")
        );
    }

    #[test]
    fn validity_is_checked_at_now() {
        let report = milan_report();
        // 2023-04-03T19:23:42Z: one second before the VCEK's notBefore.
        let err = verify_snp(&report, &milan_certs(false), 1_680_549_822).unwrap_err();
        assert!(
            matches!(&err, SnpVerifyError::NotYetValid { which, .. } if which == "VCEK"),
            "{err}"
        );
        // One second after the VCEK's notAfter.
        let err = verify_snp(&report, &milan_certs(false), 1_901_474_624).unwrap_err();
        assert!(
            matches!(&err, SnpVerifyError::Expired { which, .. } if which == "VCEK"),
            "{err}"
        );
        verify_snp(&report, &milan_certs(false), 1_901_474_623).unwrap();
    }

    #[test]
    fn tcb_and_chip_id_mismatches_are_named() {
        let cert = SnpTcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let err = check_tcb(
            SnpSigner::Vcek,
            &cert,
            &SnpTcb {
                bootloader: 4,
                ..cert
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VCEK TCB bootloader=3 but report reported_tcb bootloader=4"
        );
        let err = check_tcb(
            SnpSigner::Vcek,
            &cert,
            &SnpTcb {
                fmc: Some(1),
                ..cert
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VCEK TCB fmc=absent but report reported_tcb fmc=1"
        );

        let vcek = ParsedCert::parse("VCEK", &certs_data("vcek_milan.der")).unwrap();
        let report = SnpReport::parse(&milan_report()).unwrap();
        let mut chip_id = report.inner().chip_id;
        assert!(check_chip_id(&vcek, SnpSigner::Vcek, &chip_id).unwrap());
        assert!(
            !check_chip_id(&vcek, SnpSigner::Vcek, &[0; 64]).unwrap(),
            "masked chip id"
        );
        chip_id[63] ^= 1;
        let err = check_chip_id(&vcek, SnpSigner::Vcek, &chip_id).unwrap_err();
        assert!(
            matches!(err, SnpVerifyError::ChipIdMismatch { .. }),
            "{err}"
        );

        // Turin: 8-byte hwID, chip_id zero-padded.
        let turin = ParsedCert::parse("VCEK", &certs_data("vcek_turin.der")).unwrap();
        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&hex::decode("1e550a8ee5cf9f4d").unwrap());
        assert!(check_chip_id(&turin, SnpSigner::Vcek, &chip_id).unwrap());
        chip_id[8] = 1;
        assert!(check_chip_id(&turin, SnpSigner::Vcek, &chip_id).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let certs = milan_certs(false);
        assert!(verify_snp(&[], &certs, NOW).is_err());
        assert!(verify_snp(&[0xff; 0x4A0], &certs, NOW).is_err());
        let report = milan_report();
        for vcek in [
            Vec::new(),
            vec![0x30],
            vec![0x30, 0x82, 0xff, 0xff],
            vec![0u8; 2000],
        ] {
            let certs = SnpCertificates {
                vcek_der: vcek,
                chain: None,
            };
            assert!(verify_snp(&report, &certs, NOW).is_err());
        }
        let vcek = certs_data("vcek_milan.der");
        for len in 0..vcek.len() {
            let certs = SnpCertificates {
                vcek_der: vcek[..len].to_vec(),
                chain: None,
            };
            assert!(
                verify_snp(&report, &certs, NOW).is_err(),
                "truncated VCEK at {len}"
            );
        }
    }

    #[test]
    fn builtin_roots_verify_themselves() {
        for g in AmdGeneration::ALL {
            let ark = builtin_cert(g, "ARK", g.builtin_ark_pem()).unwrap();
            let ask = builtin_cert(g, "ASK", g.builtin_ask_pem()).unwrap();
            check_link(&ark, &ark, "ARK").unwrap();
            check_link(&ark, &ask, "ASK").unwrap();
            assert_eq!(
                AmdGeneration::from_product_name(&format!("{g}-B0")),
                Some(g)
            );
        }
        assert_eq!(AmdGeneration::from_product_name("Venice"), None);
    }

    /// ring's check of the report signature agrees with the sev crate's on the recorded report
    /// and on single-bit flips of its signed part and signature that still parse canonically.
    #[test]
    fn ring_and_sev_agree_on_the_report_signature() {
        let raw = milan_report();
        let vcek = ParsedCert::parse("VCEK", &milan_certs(false).vcek_der).unwrap();
        let agree = |bytes: &[u8]| {
            // What verify_snp would refuse before the signature (a reserved byte set: sev checks
            // its re-encoding, which zeroes it) is out of the comparison.
            let Ok(report) = SnpReport::parse(bytes) else {
                return;
            };
            if check_report_canonical(&report).is_err() {
                return;
            }
            let ours = check_report_signature(&report, &vcek, SnpSigner::Vcek).is_ok();
            let sev = (&vcek.sev, report.inner()).verify().is_ok();
            assert_eq!(ours, sev, "ring {ours}, sev {sev}");
        };
        agree(&raw);
        assert!(
            check_report_signature(&SnpReport::parse(&raw).unwrap(), &vcek, SnpSigner::Vcek)
                .is_ok()
        );
        for byte in (0..SIGNED_LEN).step_by(7).chain(SIG_R..SIG_S + P384_SCALAR) {
            let mut flipped = raw.clone();
            flipped[byte] ^= 0x01;
            agree(&flipped);
        }
    }

    /// A remembered chain changes nothing about the verdicts: the same report verifies the same
    /// way before and after, and a broken chain is refused every time.
    #[test]
    fn remembered_chains_give_the_same_verdicts() {
        let report = milan_report();
        let first = verify_snp(&report, &milan_certs(true), NOW).unwrap();
        let again = verify_snp(&report, &milan_certs(true), NOW).unwrap();
        assert_eq!(
            (first.root, first.valid_until, first.vcek_tcb),
            (again.root, again.valid_until, again.vcek_tcb)
        );
        // Validity is still checked per report.
        assert!(verify_snp(&report, &milan_certs(true), 1_901_474_624).is_err());
        let mut certs = milan_certs(true);
        let last = certs.vcek_der.len() - 1;
        certs.vcek_der[last] ^= 0x01;
        for _ in 0..2 {
            assert!(verify_snp(&report, &certs, NOW).is_err());
        }
    }
}
