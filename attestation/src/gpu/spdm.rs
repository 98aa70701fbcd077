//! The NVIDIA Hopper attestation report: an SPDM 1.1 GET_MEASUREMENTS request followed by the
//! signed MEASUREMENTS response (DMTF DSP0274 1.1, §10.11), with NVIDIA's opaque data fields.
//!
//! Layout (all multi-byte integers little-endian):
//! ```text
//! request  (37 bytes): version | code 0xE0 | param1 | param2 | nonce[32] | slot id
//! response           : version | code 0x60 | param1 | param2 | number of blocks | record length[3]
//!                      | measurement record | nonce[32] | opaque length[2] | opaque data
//!                      | signature[96] (ECDSA P-384, r ‖ s)
//! measurement block  : index | specification (bit 0: DMTF) | size[2] | DMTF value type | value size[2] | value
//! opaque data        : repeated (type[2] | size[2] | data)
//! ```

use serde::Serialize;
use thiserror::Error;

/// Length of the SPDM GET_MEASUREMENTS request the GPU driver prepends to the response.
pub const REQUEST_LEN: usize = 37;
/// Length of the response's signature: ECDSA P-384 as r ‖ s.
pub const SIGNATURE_LEN: usize = 96;

const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
const SPDM_1_1: u8 = 0x11;
const DMTF_SPEC: u8 = 0x01;

/// Why a GPU attestation report could not be parsed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SpdmError {
    /// The report ended inside a field.
    #[error("GPU report truncated: {field} needs {needed} bytes at offset {offset}, {len} present")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its offset in the request ‖ response bytes.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Length of the whole report.
        len: usize,
    },
    /// A header byte has a value this verifier does not accept.
    #[error("GPU report: {field} is {found:#04x}, expected {expected:#04x}")]
    Header {
        /// Which header byte.
        field: &'static str,
        /// The value found.
        found: u8,
        /// The value required.
        expected: u8,
    },
    /// The measurement record does not hold the number of blocks the header announces.
    #[error("GPU report: measurement record is malformed ({0})")]
    Record(&'static str),
    /// Two measurement blocks carry the same index.
    #[error("GPU report: measurement index {0} appears twice")]
    DuplicateIndex(u8),
    /// A measurement block is not in DMTF format.
    #[error("GPU report: measurement block {0} does not follow the DMTF measurement specification")]
    NotDmtf(u8),
    /// An opaque field's length runs past the opaque data.
    #[error("GPU report: opaque data field {0} runs past the end")]
    Opaque(u16),
    /// Bytes follow the signature.
    #[error("GPU report: {0} bytes after the signature")]
    Trailing(usize),
    /// The report text is neither raw bytes nor hex.
    #[error("GPU report is not hex text: {0}")]
    Hex(#[from] hex::FromHexError),
}

/// One measurement block of the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeasurementBlock {
    /// SPDM index (1-based; NVIDIA's RIMs number the same measurements from 0).
    pub index: u8,
    /// DMTF measurement value type (bit 7: raw bit stream; otherwise a digest).
    pub value_type: u8,
    /// The value (a SHA-384 digest on Hopper).
    #[serde(serialize_with = "ser_hex")]
    pub value: Vec<u8>,
}

/// NVIDIA's opaque data fields that this verifier reads (type numbers from NVIDIA's verifier).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpaqueFields {
    /// Type 3: the driver version, e.g. `550.90.07`.
    pub driver_version: Option<String>,
    /// Type 6: the VBIOS version formatted `96.00.9f.00.01` (lower-case hex).
    pub vbios_version: Option<String>,
    /// Type 14: the board id.
    pub board_id: Option<u32>,
    /// Type 15: the chip SKU, e.g. `882`.
    pub chip_sku: Option<String>,
    /// Type 16: the chip SKU modifier.
    pub chip_sku_mod: Option<String>,
    /// Type 17: the project, e.g. `1010`.
    pub project: Option<String>,
    /// Type 18: the project SKU, e.g. `0200`.
    pub project_sku: Option<String>,
    /// Type 19: the project SKU modifier.
    pub project_sku_mod: Option<String>,
    /// Type 11: NVDEC0 status (0xAA enabled, 0x55 disabled).
    pub nvdec0_status: Option<u8>,
    /// Type 21: protected PCIe status byte.
    pub protected_pcie_status: Option<u8>,
    /// Type 20: the firmware id (FWID), which must equal the one in the attestation key certificate.
    #[serde(with = "opt_hex")]
    pub fwid: Option<Vec<u8>>,
    /// Type 36: the feature flag (0 SPT: single GPU passthrough, 1 MPT: multi GPU, 2 PPCIe:
    /// protected PCIe). Absent from Hopper reports of driver 550 and earlier.
    pub feature_flag: Option<u32>,
    /// Type 34: the opaque data version, when present.
    pub opaque_data_version: Option<u32>,
    /// Every field as (type, bytes), in order, including those not interpreted above.
    #[serde(skip)]
    pub raw: Vec<(u16, Vec<u8>)>,
}

fn ser_hex<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

mod opt_hex {
    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}

/// A parsed GPU attestation report. Parsing checks structure only; [`super::verify`] checks
/// the signature, the nonce and the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    /// SPDM version byte of the response (0x11: SPDM 1.1).
    pub spdm_version: u8,
    /// The requester's nonce (in the GET_MEASUREMENTS request, covered by the signature).
    #[serde(serialize_with = "ser_hex")]
    pub request_nonce: [u8; 32],
    /// The responder's nonce (in the MEASUREMENTS response).
    #[serde(serialize_with = "ser_hex")]
    pub response_nonce: [u8; 32],
    /// Slot id of the certificate chain the GPU signed with (request byte 36).
    pub slot_id: u8,
    /// The measurement blocks, in report order.
    pub blocks: Vec<MeasurementBlock>,
    /// NVIDIA's opaque data.
    pub opaque: OpaqueFields,
    /// The signature, r ‖ s.
    #[serde(serialize_with = "ser_hex")]
    pub signature: Vec<u8>,
    /// The bytes the signature covers: request ‖ response without its signature.
    #[serde(skip)]
    pub signed: Vec<u8>,
}

impl GpuReport {
    /// Parses request ‖ response as the driver returns it (`nvmlDeviceGetConfComputeGpuAttestationReport`).
    pub fn parse(bytes: &[u8]) -> Result<Self, SpdmError> {
        let mut r = Reader { b: bytes, at: 0 };
        let version = r.u8("request SPDMVersion")?;
        expect("request SPDMVersion", version, SPDM_1_1)?;
        expect("request code", r.u8("request code")?, GET_MEASUREMENTS)?;
        r.take("request params", 2)?;
        let request_nonce = r.array::<32>("request nonce")?;
        let slot_id = r.u8("request slot id")?;
        debug_assert_eq!(r.at, REQUEST_LEN);

        let spdm_version = r.u8("response SPDMVersion")?;
        expect("response SPDMVersion", spdm_version, SPDM_1_1)?;
        expect("response code", r.u8("response code")?, MEASUREMENTS)?;
        r.take("response params", 2)?;
        let count = r.u8("number of blocks")?;
        let rec_len = r.u24("measurement record length")? as usize;
        let record = r.take("measurement record", rec_len)?;
        let blocks = parse_record(record, count)?;
        let response_nonce = r.array::<32>("response nonce")?;
        let opaque_len = r.u16("opaque length")? as usize;
        let opaque = parse_opaque(r.take("opaque data", opaque_len)?)?;
        let signed_len = r.at;
        let signature = r.take("signature", SIGNATURE_LEN)?.to_vec();
        if r.at != bytes.len() {
            return Err(SpdmError::Trailing(bytes.len() - r.at));
        }
        Ok(Self {
            spdm_version,
            request_nonce,
            response_nonce,
            slot_id,
            blocks,
            opaque,
            signature,
            signed: bytes[..signed_len].to_vec(),
        })
    }

    /// Reads a report file: raw bytes, or hex text (whitespace ignored) as NVIDIA's tools write it.
    pub fn from_file_bytes(data: &[u8]) -> Result<Self, SpdmError> {
        let text = std::str::from_utf8(data)
            .ok()
            .map(|s| s.split_whitespace().collect::<String>());
        match text {
            Some(t) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_hexdigit()) => {
                Self::parse(&hex::decode(t)?)
            }
            _ => Self::parse(data),
        }
    }

    /// The measurement with SPDM index `index`.
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }
}

fn expect(field: &'static str, found: u8, expected: u8) -> Result<(), SpdmError> {
    if found == expected {
        Ok(())
    } else {
        Err(SpdmError::Header {
            field,
            found,
            expected,
        })
    }
}

fn parse_record(record: &[u8], count: u8) -> Result<Vec<MeasurementBlock>, SpdmError> {
    if count == 0 {
        return Err(SpdmError::Record("no measurement blocks"));
    }
    let mut r = Reader { b: record, at: 0 };
    let mut blocks: Vec<MeasurementBlock> = Vec::with_capacity(count.into());
    for _ in 0..count {
        let index = r
            .u8("block index")
            .map_err(|_| SpdmError::Record("fewer blocks than announced"))?;
        let spec = r
            .u8("block spec")
            .map_err(|_| SpdmError::Record("block header truncated"))?;
        let size = r
            .u16("block size")
            .map_err(|_| SpdmError::Record("block header truncated"))? as usize;
        let body = r
            .take("block", size)
            .map_err(|_| SpdmError::Record("block runs past the record"))?;
        if spec & DMTF_SPEC == 0 {
            return Err(SpdmError::NotDmtf(index));
        }
        if body.len() < 3 {
            return Err(SpdmError::Record(
                "DMTF measurement shorter than its header",
            ));
        }
        let value_type = body[0];
        let value_size = u16::from_le_bytes([body[1], body[2]]) as usize;
        if value_size != body.len() - 3 {
            return Err(SpdmError::Record(
                "DMTF value size disagrees with the block size",
            ));
        }
        if blocks.iter().any(|b| b.index == index) {
            return Err(SpdmError::DuplicateIndex(index));
        }
        blocks.push(MeasurementBlock {
            index,
            value_type,
            value: body[3..].to_vec(),
        });
    }
    if r.at != record.len() {
        return Err(SpdmError::Record("bytes after the last block"));
    }
    Ok(blocks)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_le_bytes(a)
}

/// NVIDIA's VBIOS version field is 8 little-endian bytes; its text form takes the upper 32 bits
/// as four bytes then the next byte down: `96.00.9f.00.01` for `00 9f 00 96 01 00 00 00`.
fn vbios_version(b: &[u8]) -> String {
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(b) {
        *d = *s;
    }
    let x = u64::from_le_bytes(v);
    let bytes = [
        (x >> 24) as u8,
        (x >> 16) as u8,
        (x >> 8) as u8,
        x as u8,
        (x >> 32) as u8,
    ];
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_opaque(data: &[u8]) -> Result<OpaqueFields, SpdmError> {
    let mut o = OpaqueFields::default();
    let mut r = Reader { b: data, at: 0 };
    while r.at < data.len() {
        let ty = r
            .u16("opaque type")
            .map_err(|_| SpdmError::Opaque(0xffff))?;
        let size = r.u16("opaque size").map_err(|_| SpdmError::Opaque(ty))? as usize;
        let v = r
            .take("opaque field", size)
            .map_err(|_| SpdmError::Opaque(ty))?;
        match ty {
            3 => o.driver_version = Some(cstr(v)),
            6 => o.vbios_version = Some(vbios_version(v)),
            11 => o.nvdec0_status = v.first().copied(),
            14 => o.board_id = Some(le_u32(v)),
            15 => o.chip_sku = Some(cstr(v)),
            16 => o.chip_sku_mod = Some(cstr(v)),
            17 => o.project = Some(cstr(v)),
            18 => o.project_sku = Some(cstr(v)),
            19 => o.project_sku_mod = Some(cstr(v)),
            20 => o.fwid = Some(v.to_vec()),
            21 => o.protected_pcie_status = v.first().copied(),
            34 => o.opaque_data_version = Some(le_u32(v)),
            36 => o.feature_flag = Some(le_u32(v)),
            _ => {}
        }
        o.raw.push((ty, v.to_vec()));
    }
    Ok(o)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], SpdmError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(SpdmError::Truncated {
                field,
                offset: self.at,
                needed: n,
                len: self.b.len(),
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, f: &'static str) -> Result<u8, SpdmError> {
        Ok(self.take(f, 1)?[0])
    }
    fn u16(&mut self, f: &'static str) -> Result<u16, SpdmError> {
        let s = self.take(f, 2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u24(&mut self, f: &'static str) -> Result<u32, SpdmError> {
        let s = self.take(f, 3)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], 0]))
    }
    fn array<const N: usize>(&mut self, f: &'static str) -> Result<[u8; N], SpdmError> {
        let s = self.take(f, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbios_version_text() {
        assert_eq!(
            vbios_version(&hex::decode("009f009601000000").unwrap()),
            "96.00.9f.00.01"
        );
    }

    #[test]
    fn truncated_report_names_the_field() {
        let err = GpuReport::parse(&[0x11, 0xE0, 0, 0]).unwrap_err();
        assert!(err.to_string().contains("request nonce"), "{err}");
    }
}
