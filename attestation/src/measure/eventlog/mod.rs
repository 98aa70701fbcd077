//! TCG2 crypto-agile event logs as TDVF writes them into the CCEL area, and their replay into
//! RTMR0-3.
//!
//! Layout (TCG PC Client Platform Firmware Profile, "crypto agile" format):
//!
//! ```text
//!   TCG_PCR_EVENT   index u32 | type u32 (EV_NO_ACTION) | SHA-1 digest [20] | size u32 | TCG_EfiSpecIDEvent
//!   TCG_PCR_EVENT2  index u32 | type u32 | count u32 | (alg u16 | digest)* | size u32 | data
//!   TCG_PCR_EVENT2  ...
//!   0xFF / 0x00 padding up to the end of the area
//! ```
//!
//! In the CCEL the index field is the CC measurement-register index of the UEFI spec
//! (EFI_CC_MEASUREMENT_PROTOCOL): 0 is MRTD, 1 to 4 are RTMR0 to RTMR3. Digest sizes come from
//! the algorithm list of the Spec ID event, as the TCG format requires.
//!
//! Verified against real hardware evidence: the CCEL recorded by go-tdx-guest on a Google Cloud
//! TDX VM (`shared/testvectors/tdx-ccel`) replays to exactly the RTMR0-3 of the quote taken in the
//! same boot (test `recorded_ccel_replays_to_the_quote_rtmrs`).

use std::fmt;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha384};
use thiserror::Error;

use crate::evidence::Measurement;

mod cursor;
mod description;

use cursor::Cursor;
pub use description::describe;
use description::printable;

/// Why an event log could not be parsed. Every variant names the byte offset of the problem.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventLogError {
    /// The log ends in the middle of a structure.
    #[error(
        "event log truncated at offset {offset:#x}: {what} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// Offset where the structure starts.
        offset: usize,
        /// The structure or field being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The first record is not a TCG_PCR_EVENT carrying a valid "Spec ID Event03".
    #[error(
        "event log header at offset {offset:#x} is not a crypto-agile Spec ID Event03: {reason}"
    )]
    NotCryptoAgile {
        /// Offset of the field at fault.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// An event has no digests, or more digests than the header declares algorithms.
    #[error(
        "event {event} at offset {offset:#x} has {count} digests; the log header declares {declared} algorithms"
    )]
    BadDigestCount {
        /// Offset of the event.
        offset: usize,
        /// Index of the event (0 is the first event after the header).
        event: usize,
        /// Digest count in the event.
        count: u32,
        /// Algorithms declared in the header.
        declared: usize,
    },
    /// An event carries a digest of an algorithm the header did not declare, so its size is unknown.
    #[error(
        "event {event} at offset {offset:#x}: digest algorithm {alg:#06x} is not declared in the log header"
    )]
    UndeclaredAlgorithm {
        /// Offset of the digest.
        offset: usize,
        /// Index of the event.
        event: usize,
        /// TPM_ALG_ID found.
        alg: u16,
    },
    /// An event carries no SHA-384 digest, the only bank a TDX RTMR can be replayed from.
    #[error("event {event} at offset {offset:#x} carries no SHA-384 digest")]
    MissingSha384 {
        /// Offset of the event.
        offset: usize,
        /// Index of the event.
        event: usize,
    },
    /// An event names a measurement register other than MRTD (0) or RTMR0-3 (1-4).
    #[error(
        "event {event} at offset {offset:#x}: measurement register index {index} is not 0 (MRTD) to 4 (RTMR3)"
    )]
    RegisterOutOfRange {
        /// Offset of the event.
        offset: usize,
        /// Index of the event.
        event: usize,
        /// The register index found.
        index: u32,
    },
}

/// TPM_ALG_ID of SHA-384.
pub const TPM_ALG_SHA384: u16 = 0x000C;

/// A TDX measurement register, as named by a CC measurement-register index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Register {
    /// MR index 0: the build-time measurement. Firmware cannot extend it; events naming it are
    /// informational.
    Mrtd,
    /// MR index 1: RTMR0 (firmware configuration: TD HOB, CFV, ACPI tables, EFI variables).
    Rtmr0,
    /// MR index 2: RTMR1 (boot loader / kernel image, boot actions).
    Rtmr1,
    /// MR index 3: RTMR2 (kernel command line, initrd).
    Rtmr2,
    /// MR index 4: RTMR3 (extended by the running guest, if at all).
    Rtmr3,
}

impl Register {
    /// The register named by a CC measurement-register index (0 to 4).
    pub fn from_mr_index(index: u32) -> Option<Self> {
        Some(match index {
            0 => Register::Mrtd,
            1 => Register::Rtmr0,
            2 => Register::Rtmr1,
            3 => Register::Rtmr2,
            4 => Register::Rtmr3,
            _ => return None,
        })
    }

    /// The CC measurement-register index (0 to 4).
    pub fn mr_index(self) -> u32 {
        match self {
            Register::Mrtd => 0,
            Register::Rtmr0 => 1,
            Register::Rtmr1 => 2,
            Register::Rtmr2 => 3,
            Register::Rtmr3 => 4,
        }
    }

    /// The RTMR number (0 to 3), or `None` for MRTD.
    pub fn rtmr(self) -> Option<usize> {
        match self {
            Register::Mrtd => None,
            other => Some(other.mr_index() as usize - 1),
        }
    }

    /// The RTMR with this number (0 to 3).
    pub fn from_rtmr(n: usize) -> Option<Self> {
        u32::try_from(n)
            .ok()
            .and_then(|n| n.checked_add(1))
            .and_then(Self::from_mr_index)
    }

    /// Lowercase name, as in JSON keys: `mrtd`, `rtmr0` .. `rtmr3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Register::Mrtd => "mrtd",
            Register::Rtmr0 => "rtmr0",
            Register::Rtmr1 => "rtmr1",
            Register::Rtmr2 => "rtmr2",
            Register::Rtmr3 => "rtmr3",
        }
    }
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().to_ascii_uppercase())
    }
}

impl Serialize for Register {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A TCG event type. Known types have associated constants and a name; any other value is kept
/// as it is and shown in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub u32);

macro_rules! event_types {
    ($($name:ident = $value:expr),* $(,)?) => {
        #[allow(missing_docs)] // the names are the TCG PC Client PFP spec's own
        impl EventType {
            $(pub const $name: EventType = EventType($value);)*

            /// The TCG name of this type, if it is a known one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    EV_PREBOOT_CERT = 0x0000_0000,
    EV_POST_CODE = 0x0000_0001,
    EV_UNUSED = 0x0000_0002,
    EV_NO_ACTION = 0x0000_0003,
    EV_SEPARATOR = 0x0000_0004,
    EV_ACTION = 0x0000_0005,
    EV_EVENT_TAG = 0x0000_0006,
    EV_S_CRTM_CONTENTS = 0x0000_0007,
    EV_S_CRTM_VERSION = 0x0000_0008,
    EV_CPU_MICROCODE = 0x0000_0009,
    EV_PLATFORM_CONFIG_FLAGS = 0x0000_000A,
    EV_TABLE_OF_DEVICES = 0x0000_000B,
    EV_COMPACT_HASH = 0x0000_000C,
    EV_IPL = 0x0000_000D,
    EV_IPL_PARTITION_DATA = 0x0000_000E,
    EV_NONHOST_CODE = 0x0000_000F,
    EV_NONHOST_CONFIG = 0x0000_0010,
    EV_NONHOST_INFO = 0x0000_0011,
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x0000_0012,
    EV_POST_CODE2 = 0x0000_0013,
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x8000_0001,
    EV_EFI_VARIABLE_BOOT = 0x8000_0002,
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x8000_0003,
    EV_EFI_BOOT_SERVICES_DRIVER = 0x8000_0004,
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x8000_0005,
    EV_EFI_GPT_EVENT = 0x8000_0006,
    EV_EFI_ACTION = 0x8000_0007,
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x8000_0008,
    EV_EFI_HANDOFF_TABLES = 0x8000_0009,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000_000A,
    EV_EFI_HANDOFF_TABLES2 = 0x8000_000B,
    EV_EFI_VARIABLE_BOOT2 = 0x8000_000C,
    EV_EFI_GPT_EVENT2 = 0x8000_000D,
    EV_EFI_HCRTM_EVENT = 0x8000_0010,
    EV_EFI_VARIABLE_AUTHORITY = 0x8000_00E0,
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x8000_00E1,
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x8000_00E2,
    EV_EFI_SPDM_DEVICE_POLICY = 0x8000_00E3,
    EV_EFI_SPDM_DEVICE_AUTHORITY = 0x8000_00E4,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({self})")
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One measured (or, for `EV_NO_ACTION`, logged only) event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The register the event was extended into.
    pub register: Register,
    /// The TCG event type.
    pub event_type: EventType,
    /// The SHA-384 digest that was extended.
    pub digest: Measurement,
    /// The raw event data as logged (for expected events: as predicted, see the producer's docs).
    #[serde(serialize_with = "serialize_hex")]
    pub data: Vec<u8>,
    /// A human description decoded from the event data.
    pub description: String,
}

fn serialize_hex<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(data))
}

impl Event {
    /// An event with the given digest; the description is decoded from `data`.
    pub fn new(
        register: Register,
        event_type: EventType,
        digest: Measurement,
        data: Vec<u8>,
    ) -> Self {
        let description = describe(event_type, &data);
        Self {
            register,
            event_type,
            digest,
            data,
            description,
        }
    }

    /// An event whose digest is SHA-384 of `measured` (which need not be the event data).
    pub fn measuring(
        register: Register,
        event_type: EventType,
        measured: &[u8],
        data: Vec<u8>,
    ) -> Self {
        Self::new(register, event_type, sha384(measured), data)
    }

    /// True when replay extends this event's digest into an RTMR: every event except
    /// `EV_NO_ACTION` and events naming MRTD.
    pub fn is_extended(&self) -> bool {
        self.event_type != EventType::EV_NO_ACTION && self.register.rtmr().is_some()
    }
}

/// One digest algorithm declared by the Spec ID event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DigestAlgorithm {
    /// TPM_ALG_ID (SHA-384 is 0x000C).
    pub id: u16,
    /// Digest size in bytes.
    pub size: u16,
}

/// The TCG_EfiSpecIDEvent at the head of a crypto-agile log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpecIdEvent {
    /// Platform class (0 client, 1 server).
    pub platform_class: u32,
    /// Spec version (major, minor).
    pub spec_version: (u8, u8),
    /// Spec errata.
    pub spec_errata: u8,
    /// Size of UINTN in 4-byte units (2: 64-bit firmware).
    pub uintn_size: u8,
    /// The digest algorithms every event carries, in order.
    pub algorithms: Vec<DigestAlgorithm>,
    /// Vendor information.
    #[serde(serialize_with = "serialize_hex")]
    pub vendor_info: Vec<u8>,
}

/// A parsed event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventLog {
    /// The header.
    pub spec_id: SpecIdEvent,
    /// The events after the header, in log order.
    pub events: Vec<Event>,
    /// Bytes of the input that the log occupies (header and events; padding excluded).
    pub len: usize,
}

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";

impl EventLog {
    /// Parses a crypto-agile event log, such as the contents of the TDX CCEL area. Parsing stops
    /// at the first record whose index and type are both 0xFFFFFFFF or both 0 (the padding the
    /// firmware leaves after the last event), or at the end of the input.
    ///
    /// Returns Ok only if every event up to there decodes completely, names MRTD or RTMR0-3, and
    /// carries a SHA-384 digest. It does not check that the digests match the event data: for
    /// most event types they are not meant to (the digest covers a PE image, a variable's value,
    /// an initrd...). Whether a log is genuine is decided by replaying it and comparing with a
    /// verified quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        let mut r = Cursor::new(bytes);
        let _header_index = r.u32("header register index")?;
        let type_at = r.offset();
        let header_type = r.u32("header event type")?;
        if header_type != EventType::EV_NO_ACTION.0 {
            return Err(EventLogError::NotCryptoAgile {
                offset: type_at,
                reason: format!("event type {} is not EV_NO_ACTION", EventType(header_type)),
            });
        }
        r.take(20, "header SHA-1 digest")?;
        let spec_at = r.offset() + 4;
        let spec_data = r.sized("Spec ID event")?;
        let spec_id = parse_spec_id(spec_data, spec_at)?;

        let mut events = Vec::new();
        loop {
            let start = r.offset();
            if r.remaining() < 8 {
                let tail = &bytes[start..];
                if tail.iter().all(|&b| b == 0xFF || b == 0) {
                    break;
                }
                return Err(EventLogError::Truncated {
                    offset: start,
                    what: "event header",
                    needed: 8,
                    available: tail.len(),
                });
            }
            let head = &bytes[start..start + 8];
            if head.iter().all(|&b| b == 0xFF) || head.iter().all(|&b| b == 0) {
                break;
            }
            events.push(parse_event(&mut r, &spec_id, events.len())?);
        }
        let len = r.offset();
        Ok(Self {
            spec_id,
            events,
            len,
        })
    }

    /// Replays the log into RTMR0-3; see [`replay`].
    pub fn replay(&self) -> [Measurement; 4] {
        replay(self)
    }
}

fn parse_spec_id(data: &[u8], base: usize) -> Result<SpecIdEvent, EventLogError> {
    let bad = |offset: usize, reason: String| EventLogError::NotCryptoAgile { offset, reason };
    let mut r = Cursor::at(data, base);
    let signature = r.take(16, "Spec ID signature")?;
    if signature != SPEC_ID_SIGNATURE {
        return Err(bad(
            base,
            format!(
                "signature {:?} is not \"Spec ID Event03\"",
                printable(signature)
            ),
        ));
    }
    let platform_class = r.u32("platform class")?;
    let minor = r.u8("spec version minor")?;
    let major = r.u8("spec version major")?;
    let spec_errata = r.u8("spec errata")?;
    let uintn_size = r.u8("UINTN size")?;
    let count_at = r.offset();
    let count = r.u32("number of algorithms")?;
    if count == 0 || count as usize > r.remaining() / 4 {
        return Err(bad(
            count_at,
            format!("{count} digest algorithms does not fit the header"),
        ));
    }
    let mut algorithms = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let at = r.offset();
        let id = r.u16("algorithm id")?;
        let size = r.u16("digest size")?;
        if id == TPM_ALG_SHA384 && size != 48 {
            return Err(bad(
                at,
                format!("SHA-384 declared with {size}-byte digests"),
            ));
        }
        if size == 0 {
            return Err(bad(
                at,
                format!("algorithm {id:#06x} declared with 0-byte digests"),
            ));
        }
        algorithms.push(DigestAlgorithm { id, size });
    }
    if !algorithms.iter().any(|a| a.id == TPM_ALG_SHA384) {
        return Err(bad(count_at, "no SHA-384 bank declared".into()));
    }
    let vendor_size = r.u8("vendor info size")?;
    let vendor_info = r.take(vendor_size as usize, "vendor info")?.to_vec();
    Ok(SpecIdEvent {
        platform_class,
        spec_version: (major, minor),
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
    })
}

fn parse_event(
    r: &mut Cursor<'_>,
    spec: &SpecIdEvent,
    event: usize,
) -> Result<Event, EventLogError> {
    let offset = r.offset();
    let index = r.u32("event register index")?;
    let event_type = EventType(r.u32("event type")?);
    let register = Register::from_mr_index(index).ok_or(EventLogError::RegisterOutOfRange {
        offset,
        event,
        index,
    })?;
    let count = r.u32("digest count")?;
    if count == 0 || count as usize > spec.algorithms.len() {
        return Err(EventLogError::BadDigestCount {
            offset,
            event,
            count,
            declared: spec.algorithms.len(),
        });
    }
    let mut sha384_digest = None;
    for _ in 0..count {
        let at = r.offset();
        let alg = r.u16("digest algorithm")?;
        let size = spec
            .algorithms
            .iter()
            .find(|a| a.id == alg)
            .ok_or(EventLogError::UndeclaredAlgorithm {
                offset: at,
                event,
                alg,
            })?
            .size;
        let digest = r.take(size as usize, "digest")?;
        if alg == TPM_ALG_SHA384 && sha384_digest.is_none() {
            let mut d = [0u8; 48];
            d.copy_from_slice(digest);
            sha384_digest = Some(Measurement(d));
        }
    }
    let digest = sha384_digest.ok_or(EventLogError::MissingSha384 { offset, event })?;
    let data = r.sized("event data")?.to_vec();
    Ok(Event::new(register, event_type, digest, data))
}

/// Tag of the Linux EFI stub's initrd measurement.
pub const LINUX_INITRD_TAG: u32 = 0x8F3B_22EC;
/// Tag of the Linux EFI stub's LoadOptions (command line) measurement.
pub const LINUX_LOAD_OPTIONS_TAG: u32 = 0x8F3B_22ED;

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> Measurement {
    Measurement(Sha384::digest(data).into())
}

/// The TDX RTMR extend operation: SHA-384(register ‖ digest).
pub fn extend(register: &Measurement, digest: &Measurement) -> Measurement {
    let mut h = Sha384::new();
    h.update(register.0);
    h.update(digest.0);
    Measurement(h.finalize().into())
}

/// Replays events into RTMR0-3, starting from zeros: for every event that [`Event::is_extended`],
/// RTMR\[n\] = SHA-384(RTMR\[n\] ‖ digest).
pub fn replay_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> [Measurement; 4] {
    let mut rtmr = [Measurement::ZERO; 4];
    for e in events {
        if let (true, Some(n)) = (e.is_extended(), e.register.rtmr()) {
            rtmr[n] = extend(&rtmr[n], &e.digest);
        }
    }
    rtmr
}

/// Replays a parsed log into RTMR0-3. On a genuine log these equal the RTMRs of a quote taken
/// after the last event was logged (RTMR3 too, if the guest logs its own extensions there).
pub fn replay(log: &EventLog) -> [Measurement; 4] {
    replay_events(&log.events)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::evidence::TdxQuote;

    /// The recorded CCEL and quote, or why they are absent. Under CI they must be there.
    fn recorded(name: &str) -> Option<Vec<u8>> {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors/tdx-ccel");
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!(
                    "CI=true but the recorded test vector {} is unreadable: {e}",
                    path.display()
                )
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: recorded test vector {} unreadable ({e}); set up ../shared/testvectors",
                    path.display()
                );
                None
            }
        }
    }

    #[test]
    fn recorded_ccel_replays_to_the_quote_rtmrs() {
        let (Some(ccel), Some(quote)) =
            (recorded("ccel_data.dat"), recorded("cos-113-tdx-quote.dat"))
        else {
            return;
        };
        let log = EventLog::parse(&ccel).expect("recorded CCEL parses");
        let quote = TdxQuote::parse(&quote).expect("recorded quote parses");
        assert_eq!(log.replay(), quote.measurements().registers.rtmr);
        // The log was recorded on a real TD: 43 events, SHA-384 only, padding after 0x46b5.
        assert_eq!(log.events.len(), 43);
        assert_eq!(log.len, 0x46b5);
        assert_eq!(
            log.spec_id.algorithms,
            vec![DigestAlgorithm {
                id: TPM_ALG_SHA384,
                size: 48
            }]
        );
    }

    #[test]
    fn recorded_ccel_events_decode() {
        let Some(ccel) = recorded("ccel_data.dat") else {
            return;
        };
        let log = EventLog::parse(&ccel).unwrap();
        let e = &log.events;
        assert_eq!(e[0].event_type, EventType::EV_EFI_HANDOFF_TABLES2);
        assert!(
            e[0].description.starts_with("TdxTable: 1 table(s)"),
            "{}",
            e[0].description
        );
        assert_eq!(e[1].event_type, EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2);
        assert!(
            e[1].description
                .starts_with("Fv(48DB5E17-707C-472D-91CD-1613E7EF51B0) at 0xffe00000")
        );
        assert_eq!(e[2].event_type, EventType::EV_EFI_VARIABLE_DRIVER_CONFIG);
        assert_eq!(
            e[2].description,
            "SecureBoot (8BE4DF61-93CA-11D2-AA0D-00E098032B8C): 1 bytes"
        );
        assert_eq!(e[7].description, "separator");
        assert_eq!(e[8].description, "ACPI DATA");
        assert_eq!(
            e[11].description,
            "BootOrder (8BE4DF61-93CA-11D2-AA0D-00E098032B8C): Boot0001, Boot0000"
        );
        assert!(
            e[12]
                .description
                .starts_with("Boot0001 (8BE4DF61-93CA-11D2-AA0D-00E098032B8C): \"UEFI ")
        );
        assert_eq!(e[14].register, Register::Rtmr1);
        assert_eq!(
            e[14].description,
            "Calling EFI Application from Boot Option"
        );
        assert_eq!(e[16].event_type, EventType::EV_EFI_GPT_EVENT);
        assert!(
            e[16].description.starts_with("GPT disk "),
            "{}",
            e[16].description
        );
        assert_eq!(
            e[17].event_type,
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION
        );
        assert!(e[17].description.ends_with("/NVMe(0x1,00-00-00-00-00-00-00-00)/HD(12,GPT,58EC8B8F-8E5B-ED42-83A4-0691ABB8F3C7,0x3d000,0x10000)/\\EFI\\BOOT\\BOOTX64.EFI"), "{}", e[17].description);
        assert_eq!(
            e[23].event_type,
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION
        );
        assert_eq!(
            e[23].description,
            "PE image, 743168 bytes, link-time base 0x0, \\EFI\\BOOT\\grub-lakitu.efi"
        );
        assert_eq!(e[18].event_type, EventType::EV_IPL);
        assert_eq!(e[18].description, "MokList");
        assert_eq!(e[20].event_type, EventType::EV_EFI_VARIABLE_AUTHORITY);
        assert!(
            e[38]
                .description
                .starts_with("grub_cmd: linux /syslinux/vmlinuz.A")
        );
        assert_eq!(
            e[42].description,
            "Exit Boot Services Returned with Success"
        );
        // Events whose digest is defined as the hash of their own data must verify.
        for ev in e.iter().filter(|ev| {
            matches!(
                ev.event_type,
                EventType::EV_SEPARATOR
                    | EventType::EV_EFI_ACTION
                    | EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
            )
        }) {
            assert_eq!(ev.digest, sha384(&ev.data), "{}", ev.description);
        }
    }

    #[test]
    fn mutated_logs_are_ok_or_err_never_a_panic() {
        let Some(ccel) = recorded("ccel_data.dat") else {
            return;
        };
        let used = EventLog::parse(&ccel).unwrap().len;
        let base = &ccel[..used + 64];
        // Every truncation point in the header and first events, then a spread over the rest
        // (the unoptimised test build parses the whole log each time).
        let dense = |i: usize, every: usize| i < 0x600 || i.is_multiple_of(every);
        for cut in (0..base.len()).filter(|&i| dense(i, 13)) {
            let _ = EventLog::parse(&base[..cut]);
        }
        // Byte flips (masks vary with the position so each bit is exercised somewhere).
        let mut buf = base.to_vec();
        for i in (0..buf.len()).filter(|&i| dense(i, 5)) {
            let mask = [0x01u8, 0x80, 0xFF, 0x10][i % 4];
            buf[i] ^= mask;
            if let Ok(log) = EventLog::parse(&buf) {
                let _ = replay(&log);
                if i % 251 == 0 {
                    let _ = serde_json::to_string(&log).unwrap();
                }
            }
            buf[i] ^= mask;
        }
        // Pseudo-random garbage after a valid header (deterministic xorshift, no extra crates).
        let header_len = 0x41;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut g = base[..header_len].to_vec();
            for _ in 0..(state % 512) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                g.push(state as u8);
            }
            let _ = EventLog::parse(&g);
        }
    }

    #[test]
    fn errors_name_offsets_and_problems() {
        let Some(ccel) = recorded("ccel_data.dat") else {
            return;
        };
        // Cut inside the first event's digest.
        let err = EventLog::parse(&ccel[..0x41 + 20]).unwrap_err();
        assert_eq!(
            err,
            EventLogError::Truncated {
                offset: 0x41 + 14,
                what: "digest",
                needed: 48,
                available: 6
            }
        );
        assert!(err.to_string().contains("offset 0x4f"), "{err}");
        // Register index 9 in the first event.
        let mut bad = ccel.clone();
        bad[0x41] = 9;
        assert_eq!(
            EventLog::parse(&bad).unwrap_err(),
            EventLogError::RegisterOutOfRange {
                offset: 0x41,
                event: 0,
                index: 9
            }
        );
        // An undeclared algorithm (SHA-256) in the first event.
        let mut bad = ccel.clone();
        bad[0x41 + 12] = 0x0B;
        assert!(matches!(
            EventLog::parse(&bad).unwrap_err(),
            EventLogError::UndeclaredAlgorithm {
                offset: 0x4d,
                event: 0,
                alg: 0x0B
            }
        ));
        // Not a Spec ID header.
        let mut bad = ccel.clone();
        bad[0x20] = b'X';
        let err = EventLog::parse(&bad).unwrap_err();
        assert!(
            matches!(err, EventLogError::NotCryptoAgile { offset: 0x20, .. }),
            "{err}"
        );
        // Garbage where padding should be.
        assert!(EventLog::parse(&[]).is_err());
    }

    #[test]
    fn replay_skips_no_action_and_mrtd_events() {
        let d = sha384(b"x");
        let events = vec![
            Event::new(Register::Rtmr2, EventType::EV_NO_ACTION, d, vec![]),
            Event::new(Register::Mrtd, EventType::EV_EFI_ACTION, d, vec![]),
            Event::new(Register::Rtmr3, EventType::EV_EFI_ACTION, d, vec![]),
        ];
        let r = replay_events(&events);
        assert_eq!(&r[..3], &[Measurement::ZERO; 3]);
        assert_eq!(r[3], extend(&Measurement::ZERO, &d));
        // extend() is SHA-384 over the 96-byte concatenation.
        let mut cat = [0u8; 96];
        cat[48..].copy_from_slice(&d.0);
        assert_eq!(r[3], sha384(&cat));
    }

    #[test]
    fn register_and_event_type_names() {
        for i in 0..=4 {
            assert_eq!(Register::from_mr_index(i).unwrap().mr_index(), i);
        }
        assert_eq!(Register::from_mr_index(5), None);
        assert_eq!(Register::from_rtmr(1), Some(Register::Rtmr1));
        assert_eq!(Register::Rtmr2.to_string(), "RTMR2");
        assert_eq!(EventType::EV_EFI_ACTION.to_string(), "EV_EFI_ACTION");
        assert_eq!(EventType(0x1234).to_string(), "0x00001234");
        assert_eq!(
            serde_json::to_string(&EventType(0x8000_00E0)).unwrap(),
            "\"EV_EFI_VARIABLE_AUTHORITY\""
        );
    }
}
