//! [`Evidence`]: a TDX quote or an SNP report, parsed, with what an offline verifier needs; and
//! its wire form, the evidence bundle, one DER value.
//!
//! Bytes become evidence here and only here ([`Evidence::from_der`], [`Evidence::tdx`],
//! [`Evidence::snp`]): code that holds an `Evidence` matches on its platform once and never
//! parses the quote or report again.
//!
//! ```text
//! EvidenceBundle ::= SEQUENCE {
//!     version        INTEGER (1),
//!     platform       UTF8String ("tdx" | "snp"),
//!     evidence       OCTET STRING,                   -- TDX quote v4/v5, or SNP report (1184 bytes)
//!     tdxCollateral  [0] IMPLICIT TdxCollateral OPTIONAL,
//!     snpVcek        [1] IMPLICIT OCTET STRING OPTIONAL, -- VCEK or VLEK certificate, DER
//!     snpChain       [2] IMPLICIT OCTET STRING OPTIONAL  -- ASK/ASVK + ARK, PEM or DER
//! }
//! TdxCollateral ::= SEQUENCE {                        -- Intel PCS/PCCS collateral, as served
//!     pckCrlIssuerChain      UTF8String,             -- PEM
//!     rootCaCrl              OCTET STRING,           -- DER
//!     pckCrl                 OCTET STRING,           -- DER
//!     tcbInfoIssuerChain     UTF8String,             -- PEM
//!     tcbInfo                UTF8String,             -- the signed JSON body, byte-exact
//!     tcbInfoSignature       OCTET STRING,           -- raw r||s
//!     qeIdentityIssuerChain  UTF8String,             -- PEM
//!     qeIdentity             UTF8String,             -- the signed JSON body, byte-exact
//!     qeIdentitySignature    OCTET STRING,           -- raw r||s
//!     pckCertificateChain    [0] IMPLICIT UTF8String OPTIONAL -- PEM
//! }
//! ```
//!
//! docs/ra-tls.md is the normative description for implementers in other languages.

use der::asn1::OctetString;
use der::{Decode, Encode, Sequence};

use crate::error::EvidenceError;
use crate::evidence::{Measurements, Platform, ReportData, SnpReport, TdxQuote};

/// Current bundle format version.
pub const BUNDLE_VERSION: u8 = 1;

/// Platform evidence, parsed, with the material needed to verify it offline.
///
/// Carried material is a convenience, not a trust decision: everything in it must still chain
/// to a root the verifier's policy trusts, and a verifier may substitute its own collateral.
/// Parsing checks structure only; [`crate::verify::verify`] says whether it is genuine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per certificate or request; boxing would only add noise
pub enum Evidence {
    /// Intel TDX.
    Tdx {
        /// The TD quote (v4 or v5).
        quote: TdxQuote,
        /// Intel collateral for the quote's platform; absent means "the verifier supplies it".
        collateral: Option<dcap_qvl::QuoteCollateralV3>,
    },
    /// AMD SEV-SNP.
    Snp {
        /// The attestation report.
        report: SnpReport,
        /// The VCEK (or VLEK) certificate, DER.
        vcek: Option<Vec<u8>>,
        /// The ASK (or ASVK) and ARK, PEM or DER; absent means "use the built-in AMD roots".
        chain: Option<Vec<u8>>,
    },
}

#[derive(Sequence)]
struct BundleDer {
    version: u8,
    platform: String,
    evidence: OctetString,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    tdx_collateral: Option<CollateralDer>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    snp_vcek: Option<OctetString>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    snp_chain: Option<OctetString>,
}

#[derive(Sequence)]
struct CollateralDer {
    pck_crl_issuer_chain: String,
    root_ca_crl: OctetString,
    pck_crl: OctetString,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: OctetString,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: OctetString,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pck_certificate_chain: Option<String>,
}

fn octets(b: &[u8]) -> Result<OctetString, EvidenceError> {
    OctetString::new(b.to_vec()).map_err(der_err)
}

fn bytes(o: OctetString) -> Vec<u8> {
    o.into_bytes().into_vec()
}

fn der_err(e: der::Error) -> EvidenceError {
    EvidenceError::Malformed {
        what: "evidence bundle",
        reason: e.to_string(),
    }
}

impl Evidence {
    /// Parses a TDX quote into evidence (see [`TdxQuote::parse`]).
    pub fn tdx(
        quote: impl AsRef<[u8]>,
        collateral: Option<dcap_qvl::QuoteCollateralV3>,
    ) -> Result<Self, EvidenceError> {
        Ok(Self::Tdx {
            quote: TdxQuote::parse(quote.as_ref())?,
            collateral,
        })
    }

    /// Parses an SNP report into evidence (see [`SnpReport::parse`]).
    pub fn snp(
        report: impl AsRef<[u8]>,
        vcek: Option<Vec<u8>>,
        chain: Option<Vec<u8>>,
    ) -> Result<Self, EvidenceError> {
        Ok(Self::Snp {
            report: SnpReport::parse(report.as_ref())?,
            vcek,
            chain,
        })
    }

    /// Which platform produced the evidence.
    pub fn platform(&self) -> Platform {
        match self {
            Evidence::Tdx { .. } => Platform::Tdx,
            Evidence::Snp { .. } => Platform::Snp,
        }
    }

    /// The quote or report as received.
    pub fn raw(&self) -> &[u8] {
        match self {
            Evidence::Tdx { quote, .. } => quote.raw(),
            Evidence::Snp { report, .. } => report.raw(),
        }
    }

    /// Evidence format version (TDX quote version, SNP report version).
    pub fn version(&self) -> u32 {
        match self {
            Evidence::Tdx { quote, .. } => u32::from(quote.version()),
            Evidence::Snp { report, .. } => report.version(),
        }
    }

    /// The 64 bytes bound into the quote or report (structure only, nothing verified).
    pub fn report_data(&self) -> ReportData {
        match self {
            Evidence::Tdx { quote, .. } => quote.report_data(),
            Evidence::Snp { report, .. } => report.report_data(),
        }
    }

    /// The measured state the quote or report claims (structure only, nothing verified).
    pub fn measurements(&self) -> Measurements {
        match self {
            Evidence::Tdx { quote, .. } => Measurements::Tdx(quote.measurements()),
            Evidence::Snp { report, .. } => Measurements::Snp(report.measurements()),
        }
    }

    /// The carried TDX collateral (None for SNP, or when none is carried).
    pub fn tdx_collateral(&self) -> Option<&dcap_qvl::QuoteCollateralV3> {
        match self {
            Evidence::Tdx { collateral, .. } => collateral.as_ref(),
            Evidence::Snp { .. } => None,
        }
    }

    /// DER encoding: the evidence bundle (see the module documentation).
    pub fn to_der(&self) -> Result<Vec<u8>, EvidenceError> {
        let (tdx_collateral, snp_vcek, snp_chain) = match self {
            Evidence::Tdx { collateral, .. } => {
                let c = match collateral {
                    None => None,
                    Some(c) => Some(CollateralDer {
                        pck_crl_issuer_chain: c.pck_crl_issuer_chain.clone(),
                        root_ca_crl: octets(&c.root_ca_crl)?,
                        pck_crl: octets(&c.pck_crl)?,
                        tcb_info_issuer_chain: c.tcb_info_issuer_chain.clone(),
                        tcb_info: c.tcb_info.clone(),
                        tcb_info_signature: octets(&c.tcb_info_signature)?,
                        qe_identity_issuer_chain: c.qe_identity_issuer_chain.clone(),
                        qe_identity: c.qe_identity.clone(),
                        qe_identity_signature: octets(&c.qe_identity_signature)?,
                        pck_certificate_chain: c.pck_certificate_chain.clone(),
                    }),
                };
                (c, None, None)
            }
            Evidence::Snp { vcek, chain, .. } => (
                None,
                vcek.as_deref().map(octets).transpose()?,
                chain.as_deref().map(octets).transpose()?,
            ),
        };
        BundleDer {
            version: BUNDLE_VERSION,
            platform: self.platform().as_str().to_owned(),
            evidence: octets(self.raw())?,
            tdx_collateral,
            snp_vcek,
            snp_chain,
        }
        .to_der()
        .map_err(der_err)
    }

    /// Decodes an evidence bundle and parses the quote or report in it. Rejects unknown
    /// versions and platforms, trailing data, fields that do not belong to the named platform
    /// ([`EvidenceError::Malformed`] naming the "evidence bundle"), and a quote or report that
    /// does not parse (the error [`TdxQuote::parse`] or [`SnpReport::parse`] gives).
    pub fn from_der(der: &[u8]) -> Result<Self, EvidenceError> {
        let b = BundleDer::from_der(der).map_err(der_err)?;
        if b.version != BUNDLE_VERSION {
            return Err(EvidenceError::Malformed {
                what: "evidence bundle",
                reason: format!(
                    "version {} is not supported (expected {BUNDLE_VERSION})",
                    b.version
                ),
            });
        }
        let platform: Platform = b.platform.parse()?;
        let misplaced = match platform {
            Platform::Tdx => b.snp_vcek.is_some() || b.snp_chain.is_some(),
            Platform::Snp => b.tdx_collateral.is_some(),
        };
        if misplaced {
            return Err(EvidenceError::Malformed {
                what: "evidence bundle",
                reason: format!("carries material of another platform than {platform}"),
            });
        }
        let raw = bytes(b.evidence);
        match platform {
            Platform::Tdx => Self::tdx(
                raw,
                b.tdx_collateral.map(|c| dcap_qvl::QuoteCollateralV3 {
                    pck_crl_issuer_chain: c.pck_crl_issuer_chain,
                    root_ca_crl: bytes(c.root_ca_crl),
                    pck_crl: bytes(c.pck_crl),
                    tcb_info_issuer_chain: c.tcb_info_issuer_chain,
                    tcb_info: c.tcb_info,
                    tcb_info_signature: bytes(c.tcb_info_signature),
                    qe_identity_issuer_chain: c.qe_identity_issuer_chain,
                    qe_identity: c.qe_identity,
                    qe_identity_signature: bytes(c.qe_identity_signature),
                    pck_certificate_chain: c.pck_certificate_chain,
                }),
            ),
            Platform::Snp => Self::snp(raw, b.snp_vcek.map(bytes), b.snp_chain.map(bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{DEFAULT_SEED, SimAmdPki, SimPki, SimSnpReport, SimTdReport, td_measurements};
    use crate::{Measurement, ReportData};

    fn collateral() -> dcap_qvl::QuoteCollateralV3 {
        dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: "chain".into(),
            root_ca_crl: vec![1, 2],
            pck_crl: vec![3],
            tcb_info_issuer_chain: "tcb chain".into(),
            tcb_info: "{\"a\":1}".into(),
            tcb_info_signature: vec![4; 64],
            qe_identity_issuer_chain: "qe chain".into(),
            qe_identity: "{}".into(),
            qe_identity_signature: vec![5; 64],
            pck_certificate_chain: Some("pck".into()),
        }
    }

    fn quote(rd: u8) -> Vec<u8> {
        let m = td_measurements(Measurement([7; 48]), [Measurement::ZERO; 4]);
        SimPki::from_seed(DEFAULT_SEED).quote(&SimTdReport::new(m, ReportData([rd; 64])))
    }

    fn report(rd: u8) -> Vec<u8> {
        SimAmdPki::from_seed(DEFAULT_SEED).report(&SimSnpReport::new(
            Measurement([8; 48]),
            ReportData([rd; 64]),
        ))
    }

    /// A bundle as a peer might send it, including combinations [`Evidence`] cannot hold.
    fn raw_der(platform: &str, evidence: &[u8], collateral: bool, vcek: bool) -> Vec<u8> {
        let c = collateral.then(collateral_der);
        BundleDer {
            version: BUNDLE_VERSION,
            platform: platform.into(),
            evidence: octets(evidence).unwrap(),
            tdx_collateral: c,
            snp_vcek: vcek.then(|| octets(&[1]).unwrap()),
            snp_chain: None,
        }
        .to_der()
        .unwrap()
    }

    fn collateral_der() -> CollateralDer {
        let c = collateral();
        CollateralDer {
            pck_crl_issuer_chain: c.pck_crl_issuer_chain,
            root_ca_crl: octets(&c.root_ca_crl).unwrap(),
            pck_crl: octets(&c.pck_crl).unwrap(),
            tcb_info_issuer_chain: c.tcb_info_issuer_chain,
            tcb_info: c.tcb_info,
            tcb_info_signature: octets(&c.tcb_info_signature).unwrap(),
            qe_identity_issuer_chain: c.qe_identity_issuer_chain,
            qe_identity: c.qe_identity,
            qe_identity_signature: octets(&c.qe_identity_signature).unwrap(),
            pck_certificate_chain: c.pck_certificate_chain,
        }
    }

    #[test]
    fn round_trips() {
        for b in [
            Evidence::tdx(quote(1), Some(collateral())).unwrap(),
            Evidence::tdx(quote(1), None).unwrap(),
            Evidence::snp(report(2), Some(vec![2; 10]), Some(vec![3; 5])).unwrap(),
            Evidence::snp(report(2), None, None).unwrap(),
        ] {
            assert_eq!(Evidence::from_der(&b.to_der().unwrap()).unwrap(), b);
        }
    }

    #[test]
    fn the_wire_form_is_the_bundle_as_before() {
        // Built field by field as the module documentation describes it: the same bytes.
        let q = quote(3);
        assert_eq!(
            Evidence::tdx(&q, Some(collateral()))
                .unwrap()
                .to_der()
                .unwrap(),
            raw_der("tdx", &q, true, false)
        );
        let r = report(4);
        assert_eq!(
            Evidence::snp(&r, Some(vec![1]), None)
                .unwrap()
                .to_der()
                .unwrap(),
            raw_der("snp", &r, false, true)
        );
    }

    #[test]
    fn parsed_once_report_data_and_measurements() {
        let tdx = Evidence::tdx(quote(5), None).unwrap();
        assert_eq!(tdx.platform(), Platform::Tdx);
        assert_eq!(tdx.report_data(), ReportData([5; 64]));
        assert!(
            matches!(tdx.measurements(), Measurements::Tdx(m) if m.registers.mr_td == Measurement([7; 48]))
        );
        let snp = Evidence::snp(report(6), None, None).unwrap();
        assert_eq!(snp.platform(), Platform::Snp);
        assert_eq!(snp.report_data(), ReportData([6; 64]));
        assert!(
            matches!(snp.measurements(), Measurements::Snp(m) if m.measurement == Measurement([8; 48]))
        );
        assert_eq!(
            snp.version(),
            SnpReport::parse(&report(6)).unwrap().version()
        );
    }

    #[test]
    fn rejects_garbage_mixed_platforms_unparseable_evidence_and_trailing_bytes() {
        let mut der = Evidence::tdx(quote(1), None).unwrap().to_der().unwrap();
        der.push(0);
        assert!(Evidence::from_der(&der).is_err());
        let err = Evidence::from_der(&raw_der("tdx", &quote(1), false, true)).unwrap_err();
        assert!(err.to_string().contains("another platform"), "{err}");
        let err = Evidence::from_der(&raw_der("snp", &report(1), true, false)).unwrap_err();
        assert!(err.to_string().contains("another platform"), "{err}");
        let err = Evidence::from_der(&raw_der("sgx", &quote(1), false, false)).unwrap_err();
        assert!(matches!(err, EvidenceError::UnknownPlatform(_)), "{err}");
        // The platform's parser runs on the way in: a report is not a quote, nor the reverse.
        let err = Evidence::from_der(&raw_der("tdx", &report(1), false, false)).unwrap_err();
        assert!(
            matches!(
                err,
                EvidenceError::Malformed {
                    what: "TDX quote",
                    ..
                }
            ),
            "{err}"
        );
        let err = Evidence::from_der(&raw_der("snp", &quote(1), false, false)).unwrap_err();
        assert!(matches!(err, EvidenceError::BadLength { .. }), "{err}");
        let good = Evidence::tdx(quote(1), Some(collateral()))
            .unwrap()
            .to_der()
            .unwrap();
        for i in 0..good.len() {
            let _ = Evidence::from_der(&good[..i]);
            let mut flipped = good.clone();
            flipped[i] ^= 0xff;
            let _ = Evidence::from_der(&flipped);
        }
    }
}
