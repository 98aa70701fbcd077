//! The simulated Intel SGX PKI: root CA, PCK Platform CA, PCK leaf (with the SGX extension) and TCB
//! Signing certificate, plus the root CA and PCK CRLs. Shaped like Intel's, named as a simulation.

use der::asn1::{Any, ObjectIdentifier, OctetString};
use der::{Encode, EncodeValue, Tag, Tagged};
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CustomExtension, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::keys::SimKey;
use super::{CERT_NOT_AFTER, CERT_NOT_BEFORE, SimError, platform};

/// Organisation of every simulated certificate: nobody should mistake one for Intel's.
const ORGANIZATION: &str = "chrysalis simulated TEE (not Intel)";
/// Where Intel points its CRL distribution points; `.invalid` can never resolve (RFC 2606).
const ROOT_CRL_URI: &str = "https://sim.chrysalis.invalid/sgx/IntelSGXRootCA.der";
const PCK_CRL_URI: &str = "https://sim.chrysalis.invalid/sgx/pckcrl?ca=platform&encoding=der";

/// OIDs of Intel's SGX extension (1.2.840.113741.1.13.1), as dcap-qvl's `intel` module reads them.
mod oid {
    pub(super) const SGX_EXTENSION: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];
    pub(super) const PPID: &str = "1.2.840.113741.1.13.1.1";
    pub(super) const TCB: &str = "1.2.840.113741.1.13.1.2";
    pub(super) const PCE_ID: &str = "1.2.840.113741.1.13.1.3";
    pub(super) const FMSPC: &str = "1.2.840.113741.1.13.1.4";
    pub(super) const SGX_TYPE: &str = "1.2.840.113741.1.13.1.5";
    pub(super) const PLATFORM_INSTANCE_ID: &str = "1.2.840.113741.1.13.1.6";
    pub(super) const CONFIGURATION: &str = "1.2.840.113741.1.13.1.7";
    pub(super) const DYNAMIC_PLATFORM: &str = "1.2.840.113741.1.13.1.7.1";
    pub(super) const CACHED_KEYS: &str = "1.2.840.113741.1.13.1.7.2";
    pub(super) const SMT_ENABLED: &str = "1.2.840.113741.1.13.1.7.3";
}

/// A certificate and the key it certifies.
pub(crate) struct Issued {
    pub(crate) params: CertificateParams,
    pub(crate) key: SimKey,
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
}

impl Issued {
    fn issuer(&self) -> Issuer<'_, &SimKey> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// The four certificates of the simulated PKI.
pub(crate) struct Certificates {
    pub(crate) root: Issued,
    pub(crate) platform_ca: Issued,
    pub(crate) pck: Issued,
    pub(crate) tcb_signing: Issued,
    /// Serial of a PCK certificate that the PCK CRL lists as revoked, so the CRL is not empty.
    revoked_serial: Vec<u8>,
}

/// Serial numbers are 16 seed-derived bytes, positive (top bit clear) and never starting with zero.
pub(crate) fn serial(seed: &[u8], label: &str) -> Vec<u8> {
    let mut s: [u8; 16] = seeded_bytes(seed, &format!("serial {label}"));
    s[0] = (s[0] & 0x7f) | 0x01;
    s.to_vec()
}

/// `N` (≤ 32) bytes that depend only on the seed and the label.
pub(crate) fn seeded_bytes<const N: usize>(seed: &[u8], label: &str) -> [u8; N] {
    let digest = Sha256::new()
        .chain_update((seed.len() as u64).to_be_bytes())
        .chain_update(seed)
        .chain_update(b"chrysalis sim bytes ")
        .chain_update(label.as_bytes())
        .finalize();
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    out
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::LocalityName, "Simulation");
    dn.push(DnType::StateOrProvinceName, "SIM");
    // "XX" is a user-assigned ISO 3166 code: no real country.
    let country = PrintableString::try_from("XX").expect("XX is printable");
    dn.push(DnType::CountryName, DnValue::PrintableString(country));
    dn
}

pub(crate) fn unix_time(secs: u64, what: &'static str) -> Result<OffsetDateTime, SimError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(SimError::TimeOutOfRange { what, secs })
}

fn params(seed: &[u8], label: &str, common_name: &str, crl_uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = unix_time(CERT_NOT_BEFORE, "certificate notBefore").expect("constant in range");
    p.not_after = unix_time(CERT_NOT_AFTER, "certificate notAfter").expect("constant in range");
    p.serial_number = Some(SerialNumber::from_slice(&serial(seed, label)));
    p.distinguished_name = name(common_name);
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![crl_uri.to_owned()],
    }];
    p
}

fn ca_params(seed: &[u8], label: &str, common_name: &str, path_len: u8) -> CertificateParams {
    let mut p = params(seed, label, common_name, ROOT_CRL_URI);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn signer_params(seed: &[u8], label: &str, common_name: &str, crl_uri: &str) -> CertificateParams {
    let mut p = params(seed, label, common_name, crl_uri);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    p
}

fn finish(params: CertificateParams, key: SimKey, cert: rcgen::Certificate) -> Issued {
    Issued {
        params,
        key,
        der: cert.der().to_vec(),
        pem: cert.pem(),
    }
}

fn issue_err(what: &'static str) -> impl Fn(rcgen::Error) -> SimError {
    move |e| SimError::Issue {
        what,
        reason: e.to_string(),
    }
}

impl Certificates {
    pub(crate) fn issue(seed: &[u8]) -> Result<Self, SimError> {
        let root_key = SimKey::derive(seed, "root ca");
        let root_params = ca_params(seed, "root ca", "Simulated SGX Root CA", 1);
        let root_cert = root_params
            .self_signed(&root_key)
            .map_err(issue_err("root CA"))?;
        let root = finish(root_params, root_key, root_cert);

        let platform_key = SimKey::derive(seed, "pck platform ca");
        let platform_params =
            ca_params(seed, "pck platform ca", "Simulated SGX PCK Platform CA", 0);
        let platform_cert = platform_params
            .signed_by(&platform_key, &root.issuer())
            .map_err(issue_err("PCK Platform CA"))?;
        let platform_ca = finish(platform_params, platform_key, platform_cert);

        let pck_key = SimKey::derive(seed, "pck leaf");
        let mut pck_params = signer_params(
            seed,
            "pck leaf",
            "Simulated SGX PCK Certificate",
            PCK_CRL_URI,
        );
        let mut sgx = CustomExtension::from_oid_content(oid::SGX_EXTENSION, sgx_extension(seed)?);
        sgx.set_criticality(false);
        pck_params.custom_extensions = vec![sgx];
        let pck_cert = pck_params
            .signed_by(&pck_key, &platform_ca.issuer())
            .map_err(issue_err("PCK certificate"))?;
        let pck = finish(pck_params, pck_key, pck_cert);

        let tcb_key = SimKey::derive(seed, "tcb signing");
        let tcb_params = signer_params(
            seed,
            "tcb signing",
            "Simulated SGX TCB Signing",
            ROOT_CRL_URI,
        );
        let tcb_cert = tcb_params
            .signed_by(&tcb_key, &root.issuer())
            .map_err(issue_err("TCB Signing"))?;
        let tcb_signing = finish(tcb_params, tcb_key, tcb_cert);

        Ok(Self {
            root,
            platform_ca,
            pck,
            tcb_signing,
            revoked_serial: serial(seed, "revoked pck"),
        })
    }

    /// The CRL of the root CA (covers the PCK Platform CA and TCB Signing certificates) and the
    /// CRL of the PCK Platform CA (covers PCK leaves), valid from `this_update` to `next_update`.
    /// `revoke_pck` also lists the quote's own PCK certificate, for tests of revocation.
    pub(crate) fn crls(
        &self,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        revoke_pck: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), SimError> {
        let crl = |revoked: Vec<RevokedCertParams>| CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let revoked = |serial: &[u8]| RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: this_update,
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        };
        let root_crl = crl(Vec::new())
            .signed_by(&self.root.issuer())
            .map_err(issue_err("root CA CRL"))?;
        let mut pck_revoked = vec![revoked(&self.revoked_serial)];
        if revoke_pck {
            let own = self
                .pck
                .params
                .serial_number
                .as_ref()
                .expect("set in params()");
            pck_revoked.push(revoked(own.as_ref()));
        }
        let pck_crl = crl(pck_revoked)
            .signed_by(&self.platform_ca.issuer())
            .map_err(issue_err("PCK CRL"))?;
        Ok((root_crl.der().to_vec(), pck_crl.der().to_vec()))
    }
}

/// `SEQUENCE { OBJECT IDENTIFIER, value }`, the shape of every entry of the SGX extension.
#[derive(der::Sequence)]
struct OidValue {
    oid: ObjectIdentifier,
    value: Any,
}

fn der_err(e: der::Error) -> SimError {
    SimError::Issue {
        what: "SGX extension",
        reason: e.to_string(),
    }
}

fn entry<T: Tagged + EncodeValue>(oid: &str, value: &T) -> Result<OidValue, SimError> {
    Ok(OidValue {
        oid: ObjectIdentifier::new(oid).map_err(|e| SimError::Issue {
            what: "SGX extension",
            reason: e.to_string(),
        })?,
        value: Any::encode_from(value).map_err(der_err)?,
    })
}

fn octets(bytes: &[u8]) -> Result<OctetString, SimError> {
    OctetString::new(bytes).map_err(der_err)
}

/// The DER of Intel's SGX extension for a PCK certificate issued by the Platform CA: PPID, TCB
/// (16 component SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type, platform instance ID and the
/// configuration flags (all false, so strict verifier policies accept the platform).
fn sgx_extension(seed: &[u8]) -> Result<Vec<u8>, SimError> {
    let ppid: [u8; 16] = seeded_bytes(seed, "ppid");
    let instance_id: [u8; 16] = seeded_bytes(seed, "platform instance id");

    let mut tcb = Vec::with_capacity(18);
    for (i, svn) in platform::CPU_SVN.iter().enumerate() {
        tcb.push(entry(&format!("{}.{}", oid::TCB, i + 1), svn)?);
    }
    tcb.push(entry(&format!("{}.17", oid::TCB), &platform::PCE_SVN)?);
    tcb.push(entry(
        &format!("{}.18", oid::TCB),
        &octets(&platform::CPU_SVN)?,
    )?);

    let configuration = vec![
        entry(oid::DYNAMIC_PLATFORM, &false)?,
        entry(oid::CACHED_KEYS, &false)?,
        entry(oid::SMT_ENABLED, &false)?,
    ];
    let sgx_type = Any::new(Tag::Enumerated, vec![platform::SGX_TYPE]).map_err(der_err)?;

    let extension = vec![
        entry(oid::PPID, &octets(&ppid)?)?,
        entry(oid::TCB, &tcb)?,
        entry(oid::PCE_ID, &octets(&platform::PCE_ID)?)?,
        entry(oid::FMSPC, &octets(&platform::SIM_FMSPC)?)?,
        entry(oid::SGX_TYPE, &sgx_type)?,
        entry(oid::PLATFORM_INSTANCE_ID, &octets(&instance_id)?)?,
        entry(oid::CONFIGURATION, &configuration)?,
    ];
    extension.to_der().map_err(der_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcap_qvl_reads_the_sgx_extension_as_issued() {
        let certs = Certificates::issue(b"ext test").unwrap();
        let ext = dcap_qvl::intel::parse_pck_extension(&certs.pck.der).unwrap();
        assert_eq!(ext.ppid, seeded_bytes::<16>(b"ext test", "ppid"));
        assert_eq!(ext.cpu_svn, platform::CPU_SVN);
        assert_eq!(ext.pce_svn, platform::PCE_SVN);
        assert_eq!(ext.pce_id, platform::PCE_ID);
        assert_eq!(ext.fmspc, platform::SIM_FMSPC);
        assert_eq!(ext.sgx_type, u64::from(platform::SGX_TYPE));
        assert_eq!(
            ext.platform_instance_id.as_deref().map(<[u8]>::len),
            Some(16)
        );
        assert_eq!(
            (ext.dynamic_platform, ext.cached_keys, ext.smt_enabled),
            (Some(false), Some(false), Some(false))
        );
        // Classified like an Intel Platform-CA-issued PCK certificate.
        assert_eq!(
            dcap_qvl::intel::pck_ca(&certs.pck.der).unwrap(),
            dcap_qvl::config::PckCa::Platform
        );
    }

    #[test]
    fn certificates_have_intel_shaped_names_and_usages() {
        use x509_parser::prelude::*;
        let certs = Certificates::issue(b"names").unwrap();
        for (der, cn, ca) in [
            (&certs.root.der, "Simulated SGX Root CA", true),
            (
                &certs.platform_ca.der,
                "Simulated SGX PCK Platform CA",
                true,
            ),
            (&certs.pck.der, "Simulated SGX PCK Certificate", false),
            (&certs.tcb_signing.der, "Simulated SGX TCB Signing", false),
        ] {
            let (_, cert) = X509Certificate::from_der(der).unwrap();
            let subject = cert.subject().to_string();
            assert!(subject.contains(&format!("CN={cn}")), "{subject}");
            assert!(subject.contains("not Intel"), "{subject}");
            let bc = cert.basic_constraints().unwrap().unwrap();
            assert!(bc.critical);
            assert_eq!(bc.value.ca, ca, "{cn}");
            let ku = cert.key_usage().unwrap().unwrap();
            assert!(ku.critical);
            if ca {
                assert!(ku.value.key_cert_sign() && ku.value.crl_sign(), "{cn}");
            } else {
                assert!(
                    ku.value.digital_signature() && ku.value.non_repudiation(),
                    "{cn}"
                );
            }
            assert_eq!(
                cert.validity().not_before.timestamp() as u64,
                CERT_NOT_BEFORE
            );
            assert_eq!(cert.validity().not_after.timestamp() as u64, CERT_NOT_AFTER);
        }
    }
}
