//! The GPU evidence record of an RA-TLS certificate: every GPU's report, chain and RIM
//! identifiers (and, when the node has them, the RIMs and OCSP answers), one DER value.
//!
//! ```text
//! GpuEvidenceRecord ::= SEQUENCE {
//!     version  INTEGER (1),
//!     gpus     SEQUENCE SIZE (1..8) OF GpuAttestation
//! }
//! GpuAttestation ::= SEQUENCE {
//!     architecture  UTF8String ("hopper"),
//!     report        OCTET STRING,             -- SPDM GET_MEASUREMENTS request ‖ MEASUREMENTS response
//!     chain         SEQUENCE OF OCTET STRING, -- DER certificates, attestation key first
//!     driverRimId   UTF8String,               -- NVIDIA RIM service id, informational
//!     vbiosRimId    UTF8String,
//!     driverRim     [0] IMPLICIT OCTET STRING OPTIONAL,        -- signed SWID tag XML
//!     vbiosRim      [1] IMPLICIT OCTET STRING OPTIONAL,
//!     ocsp          [2] IMPLICIT SEQUENCE OF OCTET STRING OPTIONAL  -- DER OCSPResponse each
//! }
//! ```
//!
//! Like carried TDX collateral, carried RIMs and OCSP answers are a convenience: they must
//! still verify up to roots the verifier trusts, and a verifier may use its own RIMs instead.
//! docs/ra-tls.md is the normative description.

use der::asn1::OctetString;
use der::{Decode, Encode, Sequence};
use thiserror::Error;

use super::GpuEvidence;

/// Current record format version.
pub const RECORD_VERSION: u8 = 1;
/// Most GPUs one record may carry (an HGX board has eight).
pub const MAX_GPUS: usize = 8;
/// The only architecture this verifier reads.
pub const HOPPER: &str = "hopper";

/// A GPU evidence record that could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("malformed GPU evidence record: {0}")]
pub struct RecordError(pub String);

/// One GPU's evidence as a node carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuAttestation {
    /// The attestation report (request ‖ response).
    pub report: Vec<u8>,
    /// The device chain, DER, attestation key first (the driver's copy of the root last).
    pub chain: Vec<Vec<u8>>,
    /// The driver RIM's id at NVIDIA's RIM service (informational: RIMs are matched by version).
    pub driver_rim_id: String,
    /// The VBIOS RIM's id.
    pub vbios_rim_id: String,
    /// The driver RIM, when the node carries it.
    pub driver_rim: Option<Vec<u8>>,
    /// The VBIOS RIM, when the node carries it.
    pub vbios_rim: Option<Vec<u8>>,
    /// OCSP answers for the chain, when the node carries them.
    pub ocsp: Vec<Vec<u8>>,
}

impl GpuAttestation {
    /// The verifier's input for this GPU, with RIMs the record does not carry taken from
    /// `rims` (by the report's versions; see [`super::GpuRims`]).
    pub fn evidence(&self, rims: Option<&super::GpuRims>) -> GpuEvidence {
        let versions = super::spdm::GpuReport::parse(&self.report)
            .map(|r| (r.opaque.driver_version, r.opaque.vbios_version))
            .unwrap_or_default();
        let pick = |carried: &Option<Vec<u8>>, version: &Option<String>| {
            carried.clone().or_else(|| {
                let v = version.as_deref()?;
                rims?.get(v).map(<[u8]>::to_vec)
            })
        };
        GpuEvidence {
            report: self.report.clone(),
            chain: self.chain.clone(),
            driver_rim: pick(&self.driver_rim, &versions.0),
            vbios_rim: pick(&self.vbios_rim, &versions.1),
            ocsp: self.ocsp.clone(),
        }
    }
}

/// Every GPU of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRecord {
    /// One entry per GPU, in the node's order.
    pub gpus: Vec<GpuAttestation>,
}

#[derive(Sequence)]
struct RecordDer {
    version: u8,
    gpus: Vec<GpuDer>,
}

#[derive(Sequence)]
struct GpuDer {
    architecture: String,
    report: OctetString,
    chain: Vec<OctetString>,
    driver_rim_id: String,
    vbios_rim_id: String,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    driver_rim: Option<OctetString>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    vbios_rim: Option<OctetString>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    ocsp: Option<Vec<OctetString>>,
}

fn err(e: der::Error) -> RecordError {
    RecordError(e.to_string())
}

fn octets(b: &[u8]) -> Result<OctetString, RecordError> {
    OctetString::new(b.to_vec()).map_err(err)
}

fn bytes(o: OctetString) -> Vec<u8> {
    o.into_bytes().into_vec()
}

impl GpuRecord {
    fn check_count(n: usize) -> Result<(), RecordError> {
        if n == 0 || n > MAX_GPUS {
            return Err(RecordError(format!(
                "{n} GPUs (a record carries 1 to {MAX_GPUS})"
            )));
        }
        Ok(())
    }

    /// DER encoding (see the module documentation).
    pub fn to_der(&self) -> Result<Vec<u8>, RecordError> {
        Self::check_count(self.gpus.len())?;
        let gpus = self
            .gpus
            .iter()
            .map(|g| {
                Ok(GpuDer {
                    architecture: HOPPER.to_owned(),
                    report: octets(&g.report)?,
                    chain: g
                        .chain
                        .iter()
                        .map(|c| octets(c))
                        .collect::<Result<_, _>>()?,
                    driver_rim_id: g.driver_rim_id.clone(),
                    vbios_rim_id: g.vbios_rim_id.clone(),
                    driver_rim: g.driver_rim.as_deref().map(octets).transpose()?,
                    vbios_rim: g.vbios_rim.as_deref().map(octets).transpose()?,
                    ocsp: if g.ocsp.is_empty() {
                        None
                    } else {
                        Some(g.ocsp.iter().map(|o| octets(o)).collect::<Result<_, _>>()?)
                    },
                })
            })
            .collect::<Result<Vec<_>, RecordError>>()?;
        RecordDer {
            version: RECORD_VERSION,
            gpus,
        }
        .to_der()
        .map_err(err)
    }

    /// Decodes a record: refuses another version or architecture, no GPU or more than
    /// [`MAX_GPUS`], an empty chain, and trailing bytes. The reports are parsed by the verifier.
    pub fn from_der(der: &[u8]) -> Result<Self, RecordError> {
        let r = RecordDer::from_der(der).map_err(err)?;
        if r.version != RECORD_VERSION {
            return Err(RecordError(format!(
                "version {} is not supported (expected {RECORD_VERSION})",
                r.version
            )));
        }
        Self::check_count(r.gpus.len())?;
        let gpus = r
            .gpus
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                if g.architecture != HOPPER {
                    return Err(RecordError(format!(
                        "GPU {i}: architecture {:?} is not supported (expected {HOPPER:?})",
                        g.architecture
                    )));
                }
                if g.chain.is_empty() {
                    return Err(RecordError(format!("GPU {i}: empty certificate chain")));
                }
                Ok(GpuAttestation {
                    report: bytes(g.report),
                    chain: g.chain.into_iter().map(bytes).collect(),
                    driver_rim_id: g.driver_rim_id,
                    vbios_rim_id: g.vbios_rim_id,
                    driver_rim: g.driver_rim.map(bytes),
                    vbios_rim: g.vbios_rim.map(bytes),
                    ocsp: g.ocsp.unwrap_or_default().into_iter().map(bytes).collect(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { gpus })
    }
}

/// The RIM service ids (driver, VBIOS) a report's own fields name.
pub fn rim_ids(report: &super::GpuReport) -> (String, String) {
    let o = &report.opaque;
    let f = |v: &Option<String>| v.clone().unwrap_or_default();
    (
        driver_rim_id(&f(&o.driver_version)),
        vbios_rim_id(
            &f(&o.project),
            &f(&o.project_sku),
            &f(&o.chip_sku),
            &f(&o.vbios_version),
        ),
    )
}

/// NVIDIA's RIM service id of a driver RIM: `NV_GPU_DRIVER_GH100_<driver version>`.
pub fn driver_rim_id(driver_version: &str) -> String {
    format!("NV_GPU_DRIVER_GH100_{driver_version}")
}

/// NVIDIA's RIM service id of a VBIOS RIM: `NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS
/// version without dots, upper case>`.
pub fn vbios_rim_id(project: &str, project_sku: &str, chip_sku: &str, vbios: &str) -> String {
    format!(
        "NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{}",
        vbios.replace('.', "").to_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> GpuAttestation {
        GpuAttestation {
            report: vec![1, 2, 3],
            chain: vec![vec![4; 10], vec![5; 3]],
            driver_rim_id: driver_rim_id("550.90.07"),
            vbios_rim_id: vbios_rim_id("1010", "0200", "882", "96.00.9f.00.01"),
            driver_rim: Some(b"<x/>".to_vec()),
            vbios_rim: None,
            ocsp: vec![vec![6; 4]],
        }
    }

    #[test]
    fn round_trips() {
        let r = GpuRecord {
            gpus: vec![
                gpu(),
                GpuAttestation {
                    ocsp: vec![],
                    ..gpu()
                },
            ],
        };
        let der = r.to_der().unwrap();
        assert_eq!(GpuRecord::from_der(&der).unwrap(), r);
        assert_eq!(
            r.gpus[0].vbios_rim_id,
            "NV_GPU_VBIOS_1010_0200_882_96009F0001"
        );
    }

    #[test]
    fn refuses_bad_records() {
        assert!(GpuRecord { gpus: vec![] }.to_der().is_err());
        let nine = GpuRecord {
            gpus: vec![gpu(); 9],
        };
        assert!(nine.to_der().unwrap_err().0.contains("9 GPUs"));
        let mut der = GpuRecord { gpus: vec![gpu()] }.to_der().unwrap();
        der.push(0);
        assert!(GpuRecord::from_der(&der).is_err());
        // Records the encoder refuses to write, built from the DER structs directly.
        let raw = |architecture: &str, chain: Vec<OctetString>| {
            RecordDer {
                version: 1,
                gpus: vec![GpuDer {
                    architecture: architecture.into(),
                    report: octets(&[1]).unwrap(),
                    chain,
                    driver_rim_id: String::new(),
                    vbios_rim_id: String::new(),
                    driver_rim: None,
                    vbios_rim: None,
                    ocsp: None,
                }],
            }
            .to_der()
            .unwrap()
        };
        let empty_chain = raw(HOPPER, vec![]);
        assert!(
            GpuRecord::from_der(&empty_chain)
                .unwrap_err()
                .0
                .contains("empty certificate chain")
        );
        let blackwell = raw("blackwell", vec![octets(&[1]).unwrap()]);
        assert!(
            GpuRecord::from_der(&blackwell)
                .unwrap_err()
                .0
                .contains("\"blackwell\" is not supported")
        );
    }
}
