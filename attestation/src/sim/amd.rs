//! The simulated AMD PKI: a deterministic, seeded stand-in for AMD's ARK → ASK → VCEK chain that
//! signs SEV-SNP attestation reports in the real format, for machines without SEV-SNP.
//!
//! Like the simulated Intel PKI it is a second trust anchor, not a bypass. Its reports and
//! certificates go through the production SNP verifier (`verify::verify_snp`, the sev crate's
//! `Verifiable` impls) with the chain carried as a chain file; the only difference from hardware
//! evidence is the ARK at its end, which is none of AMD's. `verify` refuses that ARK unless the
//! caller's anchors name its SHA-256 ([`SimAmdPki::ark_sha256`]), and a policy names it in
//! `[trust] dangerous_simulated_amd_roots`.
//!
//! ```text
//!  ARK  "ARK-Simulated"   RSA, self-signed, RSASSA-PSS with SHA-384 (as AMD's)
//!   └─ ASK "SEV-Simulated" RSA, signed by the ARK with RSASSA-PSS/SHA-384
//!       └─ VCEK "SEV-VCEK"  ECDSA P-384, signed by the ASK with RSASSA-PSS/SHA-384; AMD's
//!                           extensions: productName, blSPL/teeSPL/snpSPL/ucodeSPL, hwID
//!            └─ signs the report's bytes 0..0x2A0 with ECDSA P-384/SHA-384
//! ```
//!
//! AMD's ARK and ASK are 4096-bit keys. The sim's are [`SIM_RSA_BITS`] bits: the sev crate's
//! chain check accepts any RSA key up to 4096 bits with RSASSA-PSS/SHA-384 (salt 48), and a
//! seeded 4096-bit key generation takes seconds to minutes in a debug build, in every test
//! process and every client that derives the root fingerprint.
//!
//! Everything is a pure function of the seed: keys come from a ChaCha20 stream keyed by
//! SHA-256(seed, label), PSS salts from another such stream, and report signatures are RFC 6979
//! ECDSA. The same seed gives byte-identical certificates and reports on every machine.
//!
//! ```
//! use chrysalis_attestation::sim::{self, SimAmdPki, SimSnpReport};
//! use chrysalis_attestation::{Measurement, ReportData, TrustAnchors};
//!
//! let pki = SimAmdPki::from_seed(sim::DEFAULT_SEED);
//! let bundle = pki.bundle(&SimSnpReport::new(Measurement([1; 48]), ReportData([7; 64])));
//! let anchors = TrustAnchors::none().dangerous_with_simulated_amd_root(pki.ark_sha256());
//! let now = 1_767_225_600; // 2026-01-01
//! let verdict = chrysalis_attestation::verify::verify(&bundle, &anchors, None, now).unwrap();
//! assert_eq!(verdict.report_data, ReportData([7; 64]));
//! ```

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use p384::ecdsa::signature::Signer;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rsa::RsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sev::firmware::guest::{AttestationReport, GuestPolicy, PlatformInfo};
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;
use sha2::{Digest, Sha256 as Sha256Hasher, Sha384};
use x509_cert::der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString, UtcTime};
use x509_cert::der::{Any, Decode, Encode, EncodePem, pem::LineEnding};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use super::{CERT_NOT_AFTER, CERT_NOT_BEFORE, SimError};
use crate::bundle::Evidence;
use crate::evidence::{ChipId, HostData, Measurement, ReportData, Sha256, SnpTcb};

/// RSA modulus size of the simulated ARK and ASK (AMD's are 4096; see the module docs).
pub const SIM_RSA_BITS: usize = 2048;

/// The TCB the simulated VCEK is issued for, and every report's reported, committed, launch and
/// current TCB: above the SNP firmware of every AMD TCB floor so far, so a floor never refuses
/// the sim by accident (a test that wants an old TCB sets `reported_tcb` and sees it refused).
pub const SIM_SNP_TCB: SnpTcb = SnpTcb {
    fmc: None,
    bootloader: 10,
    tee: 1,
    snp: 25,
    microcode: 100,
};

/// The productName the simulated VCEK carries, and the processor the reports' CPUID fields name
/// (family 19h, model 11h, stepping 1: Genoa B1).
pub const SIM_PRODUCT_NAME: &str = crate::snp_policy::SIM_AMD_PRODUCT;
const CPUID_FAMILY: u8 = 0x19;
const CPUID_MODEL: u8 = 0x11;
const CPUID_STEPPING: u8 = 0x01;

/// Guest policy of a production chrysalis guest: bit 17 (reserved, must be one) and SMT allowed
/// (bit 16); ABI 0.0; DEBUG, MIGRATE_MA and SINGLE_SOCKET clear.
pub const SIM_GUEST_POLICY: u64 = crate::measure::snp::CHRYSALIS_GUEST_POLICY;

/// SNP report format version the simulator writes (3: with the CPUID fields).
const REPORT_VERSION: u32 = 3;
/// SIGNATURE_ALGO 1: ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// The bytes of a report that its signature covers.
const SIGNED_LEN: usize = 0x2a0;

/// Firmware version the simulated PSP reports (current and committed).
const FIRMWARE_VERSION: (u8, u8, u8) = (1, 55, 40);

/// RSASSA-PSS (RFC 4055).
const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
/// DER of the RSASSA-PSS-params AMD's certificates carry: SHA-384, MGF1 with SHA-384, salt
/// length 48, trailer field 1 (RFC 4055 section 3.1).
const PSS_SHA384_PARAMS: [u8; 59] = [
    0x30, 0x39, // SEQUENCE
    0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, // [0] hashAlgorithm sha384, NULL
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, // [1] maskGenAlgorithm mgf1(sha384)
    0xa2, 0x03, 0x02, 0x01, 0x30, // [2] saltLength 48
    0xa3, 0x03, 0x02, 0x01, 0x01, // [3] trailerField 1
];
/// id-ecPublicKey and the secp384r1 curve.
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const SECP384R1: &str = "1.3.132.0.34";
/// basicConstraints.
const BASIC_CONSTRAINTS: &str = "2.5.29.19";

/// AMD's VCEK extensions (AMD publication 57230), as `verify::verify_snp` reads them.
mod oid {
    pub(super) const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    pub(super) const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    pub(super) const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    pub(super) const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    pub(super) const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    pub(super) const HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
}

const ORGANIZATION: &str = "chrysalis simulated AMD (not AMD)";

/// An SEV-SNP report for the simulated PSP to sign: the guest's launch state and the
/// report_data it asked for. [`SimSnpReport::new`] fills in a production guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimSnpReport {
    /// The launch digest (MEASUREMENT).
    pub measurement: Measurement,
    /// HOST_DATA, as the host set it at launch.
    pub host_data: HostData,
    /// The 64 bytes the guest binds into the report.
    pub report_data: ReportData,
    /// The guest policy. Default [`SIM_GUEST_POLICY`].
    pub policy: u64,
    /// The VMPL that asked for the report. Default 0.
    pub vmpl: u32,
    /// REPORTED_TCB. Default [`SIM_SNP_TCB`], the VCEK's TCB; anything else no longer matches
    /// the VCEK and fails verification, as a report signed by another VCEK would.
    pub reported_tcb: SnpTcb,
}

impl SimSnpReport {
    /// A report of a production guest (policy [`SIM_GUEST_POLICY`], VMPL 0, HOST_DATA zero) with
    /// `measurement`, binding `report_data`.
    pub fn new(measurement: Measurement, report_data: ReportData) -> Self {
        Self {
            measurement,
            host_data: HostData([0; 32]),
            report_data,
            policy: SIM_GUEST_POLICY,
            vmpl: 0,
            reported_tcb: SIM_SNP_TCB,
        }
    }
}

/// One issued certificate.
struct Issued {
    der: Vec<u8>,
    pem: String,
}

/// The simulated AMD PKI of one seed: ARK, ASK, and one chip's VCEK and key.
pub struct SimAmdPki {
    ark: Issued,
    ask: Issued,
    vcek: Issued,
    vcek_key: p384::ecdsa::SigningKey,
    chip_id: [u8; 64],
    ark_sha256: Sha256,
    seed: Vec<u8>,
}

impl std::fmt::Debug for SimAmdPki {
    /// Names the root by fingerprint; never prints keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAmdPki")
            .field("ark_sha256", &self.ark_sha256)
            .finish_non_exhaustive()
    }
}

/// A ChaCha20 stream keyed by SHA-256(len(seed) ‖ seed ‖ "chrysalis sim amd " ‖ label).
fn seeded_rng(seed: &[u8], label: &str) -> ChaCha20Rng {
    let key: [u8; 32] = Sha256Hasher::new()
        .chain_update((seed.len() as u64).to_be_bytes())
        .chain_update(seed)
        .chain_update(b"chrysalis sim amd ")
        .chain_update(label.as_bytes())
        .finalize()
        .into();
    ChaCha20Rng::from_seed(key)
}

/// The RSA key `label` of `seed`. Generation is slow, so keys are kept for the process's life
/// (a handful of seeds in any test run).
fn rsa_key(seed: &[u8], label: &'static str) -> RsaPrivateKey {
    type Cache = Mutex<HashMap<(Vec<u8>, &'static str), RsaPrivateKey>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (seed.to_vec(), label);
    if let Some(k) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return k.clone();
    }
    // Both inputs are constants of this module: generation cannot fail for them.
    let generated = RsaPrivateKey::new(&mut seeded_rng(seed, label), SIM_RSA_BITS)
        .expect("an RSA key of SIM_RSA_BITS is generated from any random stream");
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert(generated)
        .clone()
}

/// The P-384 key `label` of `seed`: the first SHA-384(len(seed) ‖ seed ‖ label ‖ counter) that
/// is a valid scalar.
fn p384_key(seed: &[u8], label: &str) -> p384::ecdsa::SigningKey {
    for counter in 0u32.. {
        let digest = Sha384::new()
            .chain_update((seed.len() as u64).to_be_bytes())
            .chain_update(seed)
            .chain_update(label.as_bytes())
            .chain_update(counter.to_be_bytes())
            .finalize();
        if let Ok(k) = p384::ecdsa::SigningKey::from_bytes(&digest) {
            return k;
        }
    }
    unreachable!("a valid P-384 scalar is found long before 2^32 tries")
}

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

fn issue_err(what: &'static str) -> impl Fn(x509_cert::der::Error) -> SimError {
    move |e| SimError::Issue {
        what,
        reason: e.to_string(),
    }
}

fn pss_algorithm() -> Result<AlgorithmIdentifierOwned, SimError> {
    Ok(AlgorithmIdentifierOwned {
        oid: oid(RSASSA_PSS),
        parameters: Some(Any::from_der(&PSS_SHA384_PARAMS).map_err(issue_err("PSS parameters"))?),
    })
}

fn name(common_name: &str) -> Result<Name, SimError> {
    Name::from_str(&format!("CN={common_name},O={ORGANIZATION}")).map_err(issue_err("name"))
}

fn validity() -> Result<Validity, SimError> {
    let at = |secs: u64, what: &'static str| {
        UtcTime::from_unix_duration(Duration::from_secs(secs))
            .map(Time::UtcTime)
            .map_err(|_| SimError::TimeOutOfRange { what, secs })
    };
    Ok(Validity {
        not_before: at(CERT_NOT_BEFORE, "notBefore")?,
        not_after: at(CERT_NOT_AFTER, "notAfter")?,
    })
}

fn extension(id: &str, critical: bool, value: Vec<u8>) -> Result<Extension, SimError> {
    Ok(Extension {
        extn_id: oid(id),
        critical,
        extn_value: OctetString::new(value).map_err(issue_err("extension"))?,
    })
}

fn rsa_spki(key: &RsaPrivateKey) -> Result<SubjectPublicKeyInfoOwned, SimError> {
    let doc = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| SimError::Issue {
            what: "RSA public key",
            reason: e.to_string(),
        })?;
    SubjectPublicKeyInfoOwned::from_der(doc.as_bytes()).map_err(issue_err("RSA public key"))
}

fn p384_spki(key: &p384::ecdsa::SigningKey) -> Result<SubjectPublicKeyInfoOwned, SimError> {
    let point = key.verifying_key().to_encoded_point(false);
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid(EC_PUBLIC_KEY),
            parameters: Some(Any::from(oid(SECP384R1))),
        },
        subject_public_key: BitString::from_bytes(point.as_bytes())
            .map_err(issue_err("P-384 public key"))?,
    })
}

/// Issues a certificate: TBS as given, signed by `issuer_key` with RSASSA-PSS/SHA-384, the
/// salt drawn from a stream seeded by (seed, `what`).
#[allow(clippy::too_many_arguments)]
fn issue(
    what: &'static str,
    seed: &[u8],
    serial: u8,
    subject: Name,
    issuer: Name,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
    issuer_key: &RsaPrivateKey,
) -> Result<Issued, SimError> {
    let algorithm = pss_algorithm()?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[serial]).map_err(issue_err(what))?,
        signature: algorithm.clone(),
        issuer,
        validity: validity()?,
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let signed = tbs.to_der().map_err(issue_err(what))?;
    let signer = rsa::pss::SigningKey::<Sha384>::new(issuer_key.clone());
    let signature = signer
        .sign_with_rng(&mut seeded_rng(seed, &format!("{what} pss salt")), &signed)
        .to_vec();
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).map_err(issue_err(what))?,
    };
    Ok(Issued {
        der: cert.to_der().map_err(issue_err(what))?,
        pem: cert.to_pem(LineEnding::LF).map_err(issue_err(what))?,
    })
}

fn ca_extensions() -> Result<Vec<Extension>, SimError> {
    // BasicConstraints { cA TRUE }.
    Ok(vec![extension(
        BASIC_CONSTRAINTS,
        true,
        vec![0x30, 0x03, 0x01, 0x01, 0xff],
    )?])
}

fn vcek_extensions(chip_id: &[u8; 64]) -> Result<Vec<Extension>, SimError> {
    let spl = |id: &str, v: u8| extension(id, false, v.to_der().map_err(issue_err("VCEK SPL"))?);
    Ok(vec![
        extension(
            oid::PRODUCT_NAME,
            false,
            Ia5String::new(SIM_PRODUCT_NAME)
                .and_then(|s| s.to_der())
                .map_err(issue_err("VCEK productName"))?,
        )?,
        spl(oid::BL_SPL, SIM_SNP_TCB.bootloader)?,
        spl(oid::TEE_SPL, SIM_SNP_TCB.tee)?,
        spl(oid::SNP_SPL, SIM_SNP_TCB.snp)?,
        spl(oid::UCODE_SPL, SIM_SNP_TCB.microcode)?,
        // AMD writes the raw chip ID bytes as the extension value.
        extension(oid::HW_ID, false, chip_id.to_vec())?,
    ])
}

fn tcb_version(t: &SnpTcb) -> TcbVersion {
    TcbVersion {
        fmc: t.fmc,
        bootloader: t.bootloader,
        tee: t.tee,
        snp: t.snp,
        microcode: t.microcode,
    }
}

impl SimAmdPki {
    /// Builds the PKI of `seed`. The same seed gives byte-identical certificates and reports;
    /// different seeds give unrelated keys (and so a different ARK).
    pub fn from_seed(seed: &[u8]) -> SimAmdPki {
        // Every input is a constant or derived from the seed; a failure is a bug in this
        // module, which the tests exercise.
        Self::issue(seed).expect("simulated AMD certificates are issuable")
    }

    fn issue(seed: &[u8]) -> Result<SimAmdPki, SimError> {
        let ark_key = rsa_key(seed, "ark");
        let ask_key = rsa_key(seed, "ask");
        let vcek_key = p384_key(seed, "vcek");
        let mut chip_id = [0u8; 64];
        rand_chacha::rand_core::RngCore::fill_bytes(&mut seeded_rng(seed, "chip id"), &mut chip_id);
        let (ark_name, ask_name) = (name("ARK-Simulated")?, name("SEV-Simulated")?);
        let ark = issue(
            "ARK",
            seed,
            1,
            ark_name.clone(),
            ark_name.clone(),
            rsa_spki(&ark_key)?,
            ca_extensions()?,
            &ark_key,
        )?;
        let ask = issue(
            "ASK",
            seed,
            2,
            ask_name.clone(),
            ark_name,
            rsa_spki(&ask_key)?,
            ca_extensions()?,
            &ark_key,
        )?;
        let vcek = issue(
            "VCEK",
            seed,
            3,
            name("SEV-VCEK")?,
            ask_name,
            p384_spki(&vcek_key)?,
            vcek_extensions(&chip_id)?,
            &ask_key,
        )?;
        Ok(SimAmdPki {
            ark_sha256: Sha256::digest(&ark.der),
            ark,
            ask,
            vcek,
            vcek_key,
            chip_id,
            seed: seed.to_vec(),
        })
    }

    /// DER of the simulated ARK: the trust anchor.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark.der
    }

    /// SHA-256 of [`ark_der`](Self::ark_der): the fingerprint a policy names in
    /// `dangerous_simulated_amd_roots`.
    pub fn ark_sha256(&self) -> Sha256 {
        self.ark_sha256
    }

    /// DER of the simulated VCEK (of the one simulated chip).
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek.der
    }

    /// The ASK and ARK, PEM, in the order AMD's key distribution service serves them.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.ask.pem, self.ark.pem)
    }

    /// The simulated chip's CHIP_ID (the VCEK's hwID).
    pub fn chip_id(&self) -> ChipId {
        ChipId(self.chip_id)
    }

    /// An SEV-SNP attestation report (version 3, 1184 bytes) of `r`, signed by the VCEK.
    /// Byte-identical for the same report.
    pub fn report(&self, r: &SimSnpReport) -> Vec<u8> {
        let (major, minor, build) = FIRMWARE_VERSION;
        let version = sev::firmware::guest::Version {
            major,
            minor,
            build,
        };
        let tcb = tcb_version(&SIM_SNP_TCB);
        let report_id: [u8; 32] = Sha256Hasher::new()
            .chain_update(&self.seed)
            .chain_update(b"report id")
            .chain_update(r.measurement.0)
            .chain_update(r.host_data.0)
            .finalize()
            .into();
        let mut report = AttestationReport {
            version: REPORT_VERSION,
            guest_svn: 0,
            policy: GuestPolicy::from(r.policy),
            vmpl: r.vmpl,
            sig_algo: SIG_ALGO_ECDSA_P384_SHA384,
            current_tcb: tcb,
            // SMT enabled (bit 0), as on a typical host.
            plat_info: PlatformInfo::from(1),
            report_data: r.report_data.0,
            measurement: r.measurement.0,
            host_data: r.host_data.0,
            report_id,
            reported_tcb: tcb_version(&r.reported_tcb),
            cpuid_fam_id: Some(CPUID_FAMILY),
            cpuid_mod_id: Some(CPUID_MODEL),
            cpuid_step: Some(CPUID_STEPPING),
            chip_id: self.chip_id,
            committed_tcb: tcb,
            current: version,
            committed: version,
            launch_tcb: tcb,
            ..Default::default()
        };
        // The encoder fails only for a CPUID that names no SNP generation; ours is constant.
        let unsigned = report
            .to_bytes()
            .expect("a report with a Genoa CPUID encodes");
        let sig: p384::ecdsa::Signature = self.vcek_key.sign(&unsigned[..SIGNED_LEN]);
        let (r_be, s_be) = sig.split_bytes();
        let le72 = |be: &[u8]| {
            let mut out = [0u8; 72];
            for (o, b) in out.iter_mut().zip(be.iter().rev()) {
                *o = *b;
            }
            out
        };
        report.signature = sev::certs::snp::ecdsa::Signature::new(le72(&r_be), le72(&s_be));
        report
            .to_bytes()
            .expect("a report with a Genoa CPUID encodes")
            .to_vec()
    }

    /// The evidence a guest would present: the report, the VCEK, and the ASK/ARK chain.
    pub fn bundle(&self, r: &SimSnpReport) -> Evidence {
        Evidence::snp(
            self.report(r),
            Some(self.vcek.der.clone()),
            Some(self.chain_pem().into_bytes()),
        )
        .expect("a simulated report parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::Measurements;
    use crate::policy::{Policy, SnpPin};
    use crate::verify::{self, TrustAnchors, TrustRoot, VerifyError};

    /// 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600;
    const MEASUREMENT: Measurement = Measurement([0x42; 48]);

    fn pki() -> SimAmdPki {
        SimAmdPki::from_seed(super::super::DEFAULT_SEED)
    }

    fn policy(pki: &SimAmdPki, name_root: bool) -> Policy {
        let mut p = Policy::pinned(
            Vec::new(),
            vec![SnpPin {
                name: Some("sim".into()),
                measurement: MEASUREMENT,
                host_data: None,
                policy: None,
                vmpl: None,
            }],
        );
        if name_root {
            p.trust.dangerous_simulated_amd_roots.push(pki.ark_sha256());
        }
        p
    }

    #[test]
    fn sim_report_verifies_through_the_sev_path_only_when_the_root_is_named() {
        let pki = pki();
        let rd = ReportData([7; 64]);
        let bundle = pki.bundle(&SimSnpReport::new(MEASUREMENT, rd));

        // The production verifier, chain file and all.
        let v = verify::verify_snp(
            bundle.raw(),
            &verify::SnpCertificates {
                vcek_der: pki.vcek_der().to_vec(),
                chain: Some(pki.chain_pem().into_bytes()),
            },
            NOW,
        )
        .unwrap();
        assert_eq!(
            v.root,
            verify::AmdRoot::ChainFile {
                ark_sha256: pki.ark_sha256()
            }
        );
        assert!(v.chip_id_checked);
        assert_eq!(v.vcek_tcb, SIM_SNP_TCB);
        assert_eq!(v.product_name.as_deref(), Some(SIM_PRODUCT_NAME));

        // Named: accepted, and the verdict says it is simulated.
        let ok = policy(&pki, true).appraise(&bundle, None, NOW).unwrap();
        assert_eq!(
            ok.verdict().root,
            TrustRoot::SimulatedAmd {
                sha256: pki.ark_sha256()
            }
        );
        assert_eq!(ok.verdict().report_data, rd);
        let Measurements::Snp(m) = &ok.verdict().measurements else {
            panic!("not SNP")
        };
        assert_eq!(
            (m.measurement, m.policy, m.vmpl),
            (MEASUREMENT, SIM_GUEST_POLICY, 0)
        );
        assert_eq!(m.reported_tcb, SIM_SNP_TCB);
        assert_eq!(m.chip_id, pki.chip_id());

        // Unnamed: refused by verify, naming the ARK.
        let err = policy(&pki, false)
            .appraise(&bundle, None, NOW)
            .unwrap_err();
        assert!(
            err.to_string().contains(&pki.ark_sha256().to_string()),
            "{err}"
        );
        let err = verify::verify(&bundle, &TrustAnchors::vendor(), None, NOW).unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedRoot { .. }), "{err}");

        // Another seed's root named instead: still refused.
        let other = SimAmdPki::from_seed(b"another seed");
        let anchors = TrustAnchors::none().dangerous_with_simulated_amd_root(other.ark_sha256());
        assert!(verify::verify(&bundle, &anchors, None, NOW).is_err());
    }

    #[test]
    fn tampered_reports_and_chains_fail() {
        let pki = pki();
        let bundle = pki.bundle(&SimSnpReport::new(MEASUREMENT, ReportData([1; 64])));
        let anchors = TrustAnchors::none().dangerous_with_simulated_amd_root(pki.ark_sha256());
        verify::verify(&bundle, &anchors, None, NOW).unwrap();

        // One measurement bit (offset 0x90) flipped after signing.
        let mut raw = bundle.raw().to_vec();
        raw[0x90] ^= 1;
        let t = Evidence::snp(
            raw,
            Some(pki.vcek_der().to_vec()),
            Some(pki.chain_pem().into_bytes()),
        )
        .unwrap();
        let err = verify::verify(&t, &anchors, None, NOW).unwrap_err();
        // The sev path's own error, nested, not flattened to a string.
        assert!(
            matches!(
                err,
                VerifyError::Snp(verify::SnpVerifyError::ReportSignature { .. })
            ),
            "{err:?}"
        );
        let err = crate::error::ErrorChain(&err).to_string();
        assert!(
            err.starts_with(
                "SNP report verification failed: report signature does not verify with the VCEK: "
            ),
            "{err}"
        );

        // A report whose measurement is not pinned is refused by the policy.
        let other = pki.bundle(&SimSnpReport::new(
            Measurement([0x43; 48]),
            ReportData([1; 64]),
        ));
        let err = policy(&pki, true).appraise(&other, None, NOW).unwrap_err();
        assert!(err.to_string().contains("measurement"), "{err}");

        // A report claiming another TCB than the VCEK's.
        let mut old = SimSnpReport::new(MEASUREMENT, ReportData([1; 64]));
        old.reported_tcb.snp -= 1;
        let err = verify::verify(&pki.bundle(&old), &anchors, None, NOW).unwrap_err();
        let err = crate::error::ErrorChain(&err).to_string();
        assert!(err.contains("TCB"), "{err}");

        // The VCEK of another seed (another chip, another chain).
        let stranger = SimAmdPki::from_seed(b"stranger");
        let mut t = bundle.clone();
        if let Evidence::Snp { vcek, .. } = &mut t {
            *vcek = Some(stranger.vcek_der().to_vec());
        }
        assert!(verify::verify(&t, &anchors, None, NOW).is_err());

        // Before the certificates' notBefore.
        assert!(verify::verify(&bundle, &anchors, None, CERT_NOT_BEFORE - 1).is_err());
    }

    #[test]
    fn debug_policy_is_reported_and_refused() {
        let pki = pki();
        let mut r = SimSnpReport::new(MEASUREMENT, ReportData([1; 64]));
        r.policy |= crate::evidence::SnpMeasurements::POLICY_DEBUG_BIT;
        let err = policy(&pki, true)
            .appraise(&pki.bundle(&r), None, NOW)
            .unwrap_err();
        assert!(err.to_string().contains("debug"), "{err}");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_root() {
        let (a, b) = (pki(), pki());
        assert_eq!(a.ark_der(), b.ark_der());
        assert_eq!(a.vcek_der(), b.vcek_der());
        assert_eq!(a.chain_pem(), b.chain_pem());
        let r = SimSnpReport::new(MEASUREMENT, ReportData([3; 64]));
        assert_eq!(a.report(&r), b.report(&r));
        let c = SimAmdPki::from_seed(b"another seed");
        assert_ne!(a.ark_sha256(), c.ark_sha256());
        assert_ne!(a.chip_id(), c.chip_id());
        // Not one of AMD's roots.
        for g in verify::AmdGeneration::ALL {
            let (_, ark) = x509_parser::pem::parse_x509_pem(g.builtin_ark_pem()).unwrap();
            assert_ne!(Sha256::digest(&ark.contents), a.ark_sha256());
        }
    }

    #[test]
    fn certificates_look_like_amds() {
        let pki = pki();
        let (_, vcek) = x509_parser::parse_x509_certificate(pki.vcek_der()).unwrap();
        assert_eq!(
            vcek.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "SEV-VCEK"
        );
        assert_eq!(
            vcek.signature_algorithm.algorithm.to_id_string(),
            RSASSA_PSS
        );
        assert_eq!(
            vcek.public_key().algorithm.algorithm.to_id_string(),
            EC_PUBLIC_KEY
        );
        let (_, ark) = x509_parser::parse_x509_certificate(pki.ark_der()).unwrap();
        assert_eq!(ark.subject().as_raw(), ark.issuer().as_raw());
        let report = pki.report(&SimSnpReport::new(MEASUREMENT, ReportData([0; 64])));
        assert_eq!(report.len(), crate::evidence::SNP_REPORT_LEN);
    }
}
