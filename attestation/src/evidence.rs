//! Evidence types: platforms, fixed-size registers, parsed TDX quotes and SEV-SNP reports.
//!
//! Parsing here checks structure only. Nothing in this module says that evidence is genuine:
//! that is [`crate::verify`]'s job.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::EvidenceError;

/// The confidential-computing platform that produced a piece of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Intel TDX: a TD quote (v4 or v5) signed by the quoting enclave.
    Tdx,
    /// AMD SEV-SNP: an attestation report signed by the VCEK or VLEK.
    Snp,
}

impl Platform {
    /// The lowercase name used in policies, JSON and the wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Tdx => "tdx",
            Platform::Snp => "snp",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = EvidenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tdx" => Ok(Platform::Tdx),
            "snp" => Ok(Platform::Snp),
            other => Err(EvidenceError::UnknownPlatform(other.to_owned())),
        }
    }
}

/// Defines a fixed-size byte newtype that prints, parses and serializes as lowercase hex.
macro_rules! hex_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// All bytes zero (the value of a register nothing was extended into).
            pub const ZERO: Self = Self([0u8; $len]);

            /// Parses lowercase or uppercase hex of exactly this length.
            pub fn from_hex(s: &str) -> Result<Self, EvidenceError> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| EvidenceError::BadHex {
                    what: stringify!($name),
                    expected_bytes: $len,
                    got_chars: s.trim().len(),
                })?;
                Ok(Self(out))
            }

            /// Copies from a slice that must be exactly this length.
            pub fn from_slice(b: &[u8]) -> Result<Self, EvidenceError> {
                let arr: [u8; $len] = b.try_into().map_err(|_| EvidenceError::BadLength {
                    what: stringify!($name),
                    expected: $len,
                    got: b.len(),
                })?;
                Ok(Self(arr))
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = EvidenceError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::from_hex(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes!(
    /// A 48-byte measurement register: TDX MRTD, RTMR0-3, MRSEAM, MRCONFIGID, MROWNER,
    /// MROWNERCONFIG, or the SEV-SNP launch measurement (all SHA-384 sized).
    Measurement,
    48
);
hex_bytes!(
    /// The 64 bytes of caller data bound into a quote or report. chrysalis puts the
    /// RA-TLS key binding here (see [`crate::ratls::report_data_for_spki`]).
    ReportData,
    64
);
hex_bytes!(
    /// 8 bytes of flags: TDX TD attributes or XFAM.
    Flags64,
    8
);
hex_bytes!(
    /// The 32-byte SEV-SNP HOST_DATA field, set by the host at launch and measured.
    HostData,
    32
);
hex_bytes!(
    /// The 64-byte SEV-SNP CHIP_ID, unique per processor.
    ChipId,
    64
);
hex_bytes!(
    /// A SHA-256 digest (certificate and SPKI fingerprints, receipt hashes).
    Sha256,
    32
);

impl Sha256 {
    /// SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(data).into())
    }

    /// SHA-256 of `data` (the name the image builder uses).
    pub fn of_bytes(data: &[u8]) -> Self {
        Self::digest(data)
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// SHA-256 of everything `reader` yields.
    pub fn of_reader(mut reader: impl std::io::Read) -> std::io::Result<Self> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf)? {
                0 => return Ok(Self(h.finalize().into())),
                n => h.update(&buf[..n]),
            }
        }
    }

    /// SHA-256 of a file's contents.
    pub fn of_file(path: &std::path::Path) -> std::io::Result<Self> {
        Self::of_reader(std::fs::File::open(path)?)
    }
}

/// MRTD and RTMR0-3: the TDX measurement registers an image determines. The one type for them:
/// a quote reports them ([`TdxMeasurements::registers`]), the calculators predict them
/// (`measure::tdx::ExpectedTdx`), a manifest states them per VM shape
/// (`manifest::TdxExpected`), and a policy pin is built from them (`policy::TdxPin::from_registers`).
/// Serialized as `{"mr_td": .., "rtmr": [..4]}`; the manifest and policy files keep their flat
/// `rtmr0`..`rtmr3` keys through their own wire layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TdxRegisters {
    /// Build-time measurement of the initial TD contents (the firmware).
    pub mr_td: Measurement,
    /// Run-time measurement registers 0-3.
    pub rtmr: [Measurement; 4],
}

/// The TDX registers that a quote reports and a policy may pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxMeasurements {
    /// MRTD and RTMR0-3 (serialized flat: `mr_td`, `rtmr`).
    #[serde(flatten)]
    pub registers: TdxRegisters,
    /// Software-defined configuration ID set by the host at launch.
    pub mr_config_id: Measurement,
    /// Owner ID set by the host at launch.
    pub mr_owner: Measurement,
    /// Owner-defined configuration set by the host at launch.
    pub mr_owner_config: Measurement,
    /// Measurement of the TDX module (SEAM).
    pub mr_seam: Measurement,
    /// TD attributes (bits 0-7: "TD under debug"; see [`crate::tdx_attributes`]).
    pub td_attributes: Flags64,
    /// Extended features allowed in the TD.
    pub xfam: Flags64,
}

impl TdxMeasurements {
    /// True when any "TD under debug" bit (TD_ATTRIBUTES bits 0-7: DEBUG, the profiling bits
    /// and the reserved ones) is set: the TDX module ABI calls such a TD untrusted.
    pub fn debug(&self) -> bool {
        !self.debug_flags().is_empty()
    }

    /// Names of the set "TD under debug" bits (`debug`, `hgs_plus_prof`, `perf_prof`,
    /// `pmt_prof`, `tud_bit1`...), lowest first.
    pub fn debug_flags(&self) -> Vec<String> {
        crate::tdx_attributes::TdAttributes::from_flags(self.td_attributes).under_debug()
    }
}

/// The SEV-SNP fields that a report carries and a policy may pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpMeasurements {
    /// The launch digest computed by the PSP over the initial guest memory and VMSAs.
    pub measurement: Measurement,
    /// Data the host supplied at launch.
    pub host_data: HostData,
    /// The guest policy (bit 19: DEBUG allowed).
    pub policy: u64,
    /// The TCB the report was signed at: the VCEK must have been issued for exactly this TCB.
    pub reported_tcb: SnpTcb,
    /// The TCB the platform has committed to: firmware below it can no longer be loaded.
    pub committed_tcb: SnpTcb,
    /// The platform's TCB when this guest was launched (or imported).
    pub launch_tcb: SnpTcb,
    /// The firmware actually running when the report was made; informational, as the firmware
    /// reports it (the VCEK certifies reported_tcb, not this).
    pub current_tcb: SnpTcb,
    /// The chip that signed (zero when the host masks it).
    pub chip_id: ChipId,
    /// The VM privilege level that asked for the report.
    pub vmpl: u32,
}

impl SnpMeasurements {
    /// Bit 16 of the guest policy: SMT (hyperthreading) may be enabled on the host.
    pub const POLICY_SMT_BIT: u64 = 1 << 16;
    /// Bit 18 of the guest policy: the guest may be associated with a migration agent, which
    /// can export its memory.
    pub const POLICY_MIGRATE_MA_BIT: u64 = 1 << 18;
    /// Bit 19 of the guest policy: the hypervisor may use the debug API on this guest.
    pub const POLICY_DEBUG_BIT: u64 = 1 << 19;

    /// True when the guest policy allows debugging.
    pub fn debug(&self) -> bool {
        self.policy & Self::POLICY_DEBUG_BIT != 0
    }

    /// `["debug"]` when the guest policy allows debugging, else empty.
    pub fn debug_flags(&self) -> Vec<String> {
        if self.debug() {
            vec!["debug".into()]
        } else {
            Vec::new()
        }
    }
}

/// Measurements of either platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // a handful per verdict; boxing would only add noise
pub enum Measurements {
    /// TDX registers.
    Tdx(TdxMeasurements),
    /// SEV-SNP fields.
    Snp(SnpMeasurements),
}

impl Measurements {
    /// The platform these measurements come from.
    pub fn platform(&self) -> Platform {
        match self {
            Measurements::Tdx(_) => Platform::Tdx,
            Measurements::Snp(_) => Platform::Snp,
        }
    }

    /// True when the guest is debuggable by its host.
    pub fn debug(&self) -> bool {
        match self {
            Measurements::Tdx(m) => m.debug(),
            Measurements::Snp(m) => m.debug(),
        }
    }

    /// Names of the set flags that let the host debug or profile the guest: TDX TUD bits
    /// (`debug`, `perf_prof`, ...), SNP `debug` (guest policy bit 19). Empty for a trusted guest.
    pub fn debug_flags(&self) -> Vec<String> {
        match self {
            Measurements::Tdx(m) => m.debug_flags(),
            Measurements::Snp(m) => m.debug_flags(),
        }
    }
}

#[cfg(feature = "full")]
/// A structurally parsed TDX quote (v4 or v5). Not verified.
#[derive(Clone, Debug)]
pub struct TdxQuote {
    raw: Vec<u8>,
    parsed: dcap_qvl::quote::Quote,
}

#[cfg(feature = "full")]
impl TdxQuote {
    /// Parses a TDX quote. Rejects SGX quotes and anything that does not decode completely.
    pub fn parse(raw: &[u8]) -> Result<Self, EvidenceError> {
        let parsed = dcap_qvl::quote::Quote::parse(raw).map_err(|e| EvidenceError::Malformed {
            what: "TDX quote",
            reason: format!("{e:#}"),
        })?;
        if parsed.header.tee_type != TDX_TEE_TYPE || parsed.report.as_td10().is_none() {
            return Err(EvidenceError::Malformed {
                what: "TDX quote",
                reason: format!("TEE type {:#x} is not TDX (0x81)", parsed.header.tee_type),
            });
        }
        Ok(Self {
            raw: raw.to_vec(),
            parsed,
        })
    }

    /// The bytes as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Quote format version (4 or 5).
    pub fn version(&self) -> u16 {
        self.parsed.header.version
    }

    /// dcap-qvl's parsed form.
    pub fn inner(&self) -> &dcap_qvl::quote::Quote {
        &self.parsed
    }

    fn td10(&self) -> &dcap_qvl::quote::TDReport10 {
        // parse() refused quotes without a TD report.
        self.parsed.report.as_td10().expect("checked in parse")
    }

    /// The registers of the TD report.
    pub fn measurements(&self) -> TdxMeasurements {
        tdx_measurements(self.td10())
    }

    /// The report_data the TD asked to be quoted.
    pub fn report_data(&self) -> ReportData {
        ReportData(self.td10().report_data)
    }

    /// TEE_TCB_SVN of the TD report.
    pub fn tee_tcb_svn(&self) -> [u8; 16] {
        self.td10().tee_tcb_svn
    }
}

#[cfg(feature = "full")]
// The parsed form is a function of the bytes, so the bytes decide equality.
impl PartialEq for TdxQuote {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

#[cfg(feature = "full")]
impl Eq for TdxQuote {}

#[cfg(feature = "full")]
/// TEE type of a TDX quote header.
pub(crate) const TDX_TEE_TYPE: u32 = 0x81;

#[cfg(feature = "full")]
pub(crate) fn tdx_measurements(r: &dcap_qvl::quote::TDReport10) -> TdxMeasurements {
    TdxMeasurements {
        registers: TdxRegisters {
            mr_td: Measurement(r.mr_td),
            rtmr: [
                Measurement(r.rt_mr0),
                Measurement(r.rt_mr1),
                Measurement(r.rt_mr2),
                Measurement(r.rt_mr3),
            ],
        },
        mr_config_id: Measurement(r.mr_config_id),
        mr_owner: Measurement(r.mr_owner),
        mr_owner_config: Measurement(r.mr_owner_config),
        mr_seam: Measurement(r.mr_seam),
        td_attributes: Flags64(r.td_attributes),
        xfam: Flags64(r.xfam),
    }
}

#[cfg(feature = "full")]
/// A structurally parsed SEV-SNP attestation report (version 2 or later). Not verified.
#[derive(Clone, Debug)]
pub struct SnpReport {
    raw: Vec<u8>,
    parsed: sev::firmware::guest::AttestationReport,
}

/// Size of an SNP attestation report, signature included.
pub const SNP_REPORT_LEN: usize = 0x4A0;

#[cfg(feature = "full")]
impl SnpReport {
    /// Parses a report of exactly [`SNP_REPORT_LEN`] bytes, version 2 or later.
    pub fn parse(raw: &[u8]) -> Result<Self, EvidenceError> {
        use sev::parser::ByteParser;
        if raw.len() != SNP_REPORT_LEN {
            return Err(EvidenceError::BadLength {
                what: "SEV-SNP report",
                expected: SNP_REPORT_LEN,
                got: raw.len(),
            });
        }
        let parsed = sev::firmware::guest::AttestationReport::from_bytes(raw).map_err(|e| {
            EvidenceError::Malformed {
                what: "SEV-SNP report",
                reason: e.to_string(),
            }
        })?;
        if parsed.version < 2 {
            return Err(EvidenceError::Malformed {
                what: "SEV-SNP report",
                reason: format!("version {} is older than 2", parsed.version),
            });
        }
        Ok(Self {
            raw: raw.to_vec(),
            parsed,
        })
    }

    /// The bytes as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Report format version.
    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    /// The sev crate's parsed form.
    pub fn inner(&self) -> &sev::firmware::guest::AttestationReport {
        &self.parsed
    }

    /// The fields a policy may pin.
    pub fn measurements(&self) -> SnpMeasurements {
        let r = &self.parsed;
        SnpMeasurements {
            measurement: Measurement(r.measurement),
            host_data: HostData(r.host_data),
            policy: r.policy.0,
            reported_tcb: SnpTcb::from(&r.reported_tcb),
            committed_tcb: SnpTcb::from(&r.committed_tcb),
            launch_tcb: SnpTcb::from(&r.launch_tcb),
            current_tcb: SnpTcb::from(&r.current_tcb),
            chip_id: ChipId(r.chip_id),
            vmpl: r.vmpl,
        }
    }

    /// The report_data the guest asked to be signed.
    pub fn report_data(&self) -> ReportData {
        ReportData(self.parsed.report_data)
    }
}

#[cfg(feature = "full")]
// The parsed form is a function of the bytes, so the bytes decide equality.
impl PartialEq for SnpReport {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

#[cfg(feature = "full")]
impl Eq for SnpReport {}

/// An SEV-SNP TCB version: the security version numbers of the firmware components.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnpTcb {
    /// SVN of the FMC firmware (Turin and later; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// SVN of the PSP bootloader.
    pub bootloader: u8,
    /// SVN of the PSP operating system.
    pub tee: u8,
    /// SVN of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
}

#[cfg(feature = "full")]
impl From<&sev::firmware::host::TcbVersion> for SnpTcb {
    fn from(t: &sev::firmware::host::TcbVersion) -> Self {
        Self {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        }
    }
}

impl SnpTcb {
    /// True when every component of `self` is at least that of `min`.
    pub fn at_least(&self, min: &SnpTcb) -> bool {
        self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }

    /// The components of `self` below those of `min`, as (name, value, minimum), in the order
    /// fmc, bootloader, tee, snp, microcode. Empty exactly when [`Self::at_least`] holds. An
    /// absent FMC counts as 0.
    pub fn below(&self, min: &SnpTcb) -> Vec<(&'static str, u8, u8)> {
        [
            ("fmc", self.fmc.unwrap_or(0), min.fmc.unwrap_or(0)),
            ("bootloader", self.bootloader, min.bootloader),
            ("tee", self.tee, min.tee),
            ("snp", self.snp, min.snp),
            ("microcode", self.microcode, min.microcode),
        ]
        .into_iter()
        .filter(|(_, v, m)| v < m)
        .collect()
    }
}

impl fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Evidence bytes that arrive as raw binary or as hex text, as recorded vectors do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEncoding {
    /// The bytes were used as they are.
    Binary,
    /// The bytes were hex text (whitespace and an optional 0x prefix allowed) and were decoded.
    Hex,
}

/// Decodes `data` as hex if it is entirely hex text (with optional whitespace or `0x`),
/// otherwise returns it unchanged. Says which it did.
pub fn decode_binary_or_hex(data: &[u8]) -> (Vec<u8>, InputEncoding) {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let text = text.strip_prefix(b"0x").unwrap_or(&text);
    if !text.is_empty()
        && text.len().is_multiple_of(2)
        && text.iter().all(u8::is_ascii_hexdigit)
        && let Ok(bytes) = hex::decode(text)
    {
        return (bytes, InputEncoding::Hex);
    }
    (data.to_vec(), InputEncoding::Binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_hex_round_trip_and_errors_name_the_type() {
        let m = Measurement([0xab; 48]);
        assert_eq!(Measurement::from_hex(&m.to_hex()).unwrap(), m);
        let err = Measurement::from_hex("abcd").unwrap_err().to_string();
        assert!(err.contains("Measurement") && err.contains("48"), "{err}");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(48)));
    }

    #[test]
    fn tdx_measurements_show_the_registers_flat_and_read_back() {
        let h = |b: u8| format!("\"{}\"", format!("{b:02x}").repeat(48));
        let f = |b: u8| format!("\"{}\"", format!("{b:02x}").repeat(8));
        let m = Measurements::Tdx(TdxMeasurements {
            registers: TdxRegisters {
                mr_td: Measurement([1; 48]),
                rtmr: [2, 3, 4, 5].map(|b| Measurement([b; 48])),
            },
            mr_config_id: Measurement([6; 48]),
            mr_owner: Measurement([7; 48]),
            mr_owner_config: Measurement([8; 48]),
            mr_seam: Measurement([9; 48]),
            td_attributes: Flags64([0x10; 8]),
            xfam: Flags64([0x11; 8]),
        });
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            format!(
                "{{\"platform\":\"tdx\",\"mr_td\":{},\"rtmr\":[{},{},{},{}],\"mr_config_id\":{},\
                 \"mr_owner\":{},\"mr_owner_config\":{},\"mr_seam\":{},\"td_attributes\":{},\
                 \"xfam\":{}}}",
                h(1),
                h(2),
                h(3),
                h(4),
                h(5),
                h(6),
                h(7),
                h(8),
                h(9),
                f(0x10),
                f(0x11)
            )
        );
        assert_eq!(serde_json::from_str::<Measurements>(&json).unwrap(), m);
    }

    #[test]
    fn binary_or_hex_detection() {
        assert_eq!(
            decode_binary_or_hex(b"0a0B\n"),
            (vec![0x0a, 0x0b], InputEncoding::Hex)
        );
        assert_eq!(
            decode_binary_or_hex(b"0x0a0b"),
            (vec![0x0a, 0x0b], InputEncoding::Hex)
        );
        assert_eq!(decode_binary_or_hex(&[0, 1, 2]).1, InputEncoding::Binary);
        assert_eq!(decode_binary_or_hex(b"abc").1, InputEncoding::Binary);
    }

    #[cfg(feature = "full")]
    #[test]
    fn truncated_inputs_are_errors_not_panics() {
        assert!(TdxQuote::parse(&[]).is_err());
        assert!(TdxQuote::parse(&[4, 0, 2, 0]).is_err());
        assert!(SnpReport::parse(&[0u8; 10]).is_err());
    }
}
