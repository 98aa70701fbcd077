//! Expected TDX RTMR0 of a TDVF direct boot under QEMU: the TD HOB QEMU writes, the CFV
//! variable store, the secure-boot and boot variables TDVF measures, and QEMU's ACPI tables,
//! extended in the order TDVF logs them.
//!
//! # The events, in log order
//!
//! | # | type | digest over | source |
//! |---|---|---|---|
//! | 1 | EV_EFI_HANDOFF_TABLES2 "TdxTable" | the TD HOB up to (not including) its end-of-list HOB | QEMU `hw/i386/tdvf-hob.c` from the memory layout and the TDVF metadata ([`td_hob`]) |
//! | 2 | EV_EFI_PLATFORM_FIRMWARE_BLOB2 | the CFV section's raw bytes | the firmware image ([`cfv_bytes`]) |
//! | 3-7 | EV_EFI_VARIABLE_DRIVER_CONFIG | UEFI_VARIABLE_DATA of SecureBoot, PK, KEK, db, dbx | all unset in TDVF's variable store: data length 0 |
//! | 8 | EV_SEPARATOR | 00 00 00 00 | |
//! | 9.. | EV_PLATFORM_CONFIG_FLAGS "ACPI DATA" | `etc/table-loader`, then each blob its ALLOCATE commands name, in command order | QEMU's fw_cfg files ([`AcpiFiles`]) |
//! | last 2 | EV_EFI_VARIABLE_BOOT | the variable's data only: BootOrder = {0000}, Boot0000 = the UiApp boot-manager option | OVMF registers no other option before `TryRunningQemuKernel` signals ReadyToBoot |
//!
//! # What was verified, and how
//!
//! * Against the real TDVF event log of `shared/testvectors/tdx-ccel` (a TDX VM on Google
//!   Cloud, booted through shim/GRUB): the order and types of the RTMR0 events, the
//!   UEFI_VARIABLE_DATA encoding and digest rule of the variable events (the logged SecureBoot
//!   event is re-encoded from its name and value to the logged digest), the boot-variable digest
//!   rule (digest over the value only), the separator, and the Boot0000 "UiApp" option: built
//!   here from its device path, it hashes to the digest logged in that boot. That boot's TD HOB,
//!   CFV and ACPI tables come from Google's VMM and firmware, which are not available, so their
//!   digests cannot be re-derived (tests `recorded_log_*`).
//! * The TD HOB layout and the RAM-entry algorithm are read from QEMU 10.1 source
//!   (`target/i386/kvm/tdx.c` `tdx_init_ram_entries`/`tdx_accept_ram_range`,
//!   `hw/i386/tdvf-hob.c`, `hw/i386/pc_q35.c` for the below/above-4 GiB split) and edk2
//!   `TdxHelperMeasureTdHob`; the CFV rule from edk2 `TdxHelperMeasureCfvImage`; the ACPI rule
//!   from edk2 `OvmfPkg/AcpiPlatformDxe/QemuFwCfgAcpi.c`. They agree with Phala's dstack-mr
//!   (see docs/measurements.md for what was compared).
//! * The ACPI blobs are data captured from the real QEMU binary ([`super::tdx_acpi`]), not a
//!   model; no RTMR0 computed here has yet been compared with a quote from TDX hardware.

use std::fmt;

use thiserror::Error;

use super::eventlog::{Event, EventType, Register, replay_events};
use super::tdx::{TdvfMetadata, TdvfSectionType, guid};
use crate::evidence::Measurement;

/// EFI_GLOBAL_VARIABLE: SecureBoot, PK, KEK, BootOrder, Boot####.
pub const EFI_GLOBAL_VARIABLE: [u8; 16] = guid(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// EFI_IMAGE_SECURITY_DATABASE_GUID: db, dbx.
pub const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = guid(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// The firmware volume holding OVMF's DXE drivers (`OvmfPkg` DXEFV FvNameGuid).
const OVMF_DXEFV: [u8; 16] = guid(
    0x7cb8bdc9,
    0xf8eb,
    0x4f34,
    [0xaa, 0xea, 0x3e, 0xe4, 0xaf, 0x65, 0x16, 0xa1],
);
/// MdeModulePkg UiApp's FILE_GUID (the boot manager menu application).
const UI_APP_FILE: [u8; 16] = guid(
    0x462caa21,
    0x7614,
    0x4503,
    [0x83, 0x6e, 0x8a, 0xb6, 0xf4, 0x66, 0x23, 0x31],
);
/// The handoff-table description TDVF logs for the TD HOB (as in the recorded log). Only the
/// digests of the TD HOB and CFV events enter RTMR0; their predicted event data is informational.
const TD_HOB_DESCRIPTION: &[u8] = b"TdxTable\0";

/// EFI_HOB_TYPE_HANDOFF.
const HOB_HANDOFF: u16 = 0x0001;
/// EFI_HOB_TYPE_RESOURCE_DESCRIPTOR.
const HOB_RESOURCE_DESCRIPTOR: u16 = 0x0003;
/// EFI_HOB_HANDOFF_TABLE_VERSION.
const HOB_HANDOFF_VERSION: u32 = 0x0009;
/// EFI_RESOURCE_SYSTEM_MEMORY (QEMU: TDX_RAM_ADDED).
const RESOURCE_SYSTEM_MEMORY: u32 = 0x0;
/// EFI_RESOURCE_MEMORY_UNACCEPTED (QEMU: TDX_RAM_UNACCEPTED).
const RESOURCE_MEMORY_UNACCEPTED: u32 = 0x7;
/// PRESENT | INITIALIZED | TESTED: QEMU's attribute for both accepted and unaccepted RAM.
const RESOURCE_ATTRIBUTES: u32 = 0x7;
const HANDOFF_HOB_LEN: usize = 56;
const RESOURCE_HOB_LEN: usize = 48;
const END_HOB_LEN: u64 = 8;

const GIB: u64 = 1 << 30;

/// Why RTMR0 could not be computed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rtmr0Error {
    /// The TDVF metadata has no TD HOB section (QEMU refuses such firmware).
    #[error("TDVF metadata has no TD_HOB section")]
    NoTdHob,
    /// The TDVF metadata has no CFV section, so there is no variable store to measure.
    #[error("TDVF metadata has no CFV section")]
    NoCfv,
    /// A TD HOB or temporary-memory section lies outside the guest's RAM, or straddles two
    /// RAM ranges (QEMU exits with "Failed to accept memory for TDVF section").
    #[error(
        "TDVF {kind} section at {address:#x} (+{size:#x}) is not inside one RAM range of a {memory_mib} MiB guest"
    )]
    SectionOutsideRam {
        /// Section type.
        kind: String,
        /// Its guest-physical address.
        address: u64,
        /// Its size.
        size: u64,
        /// Guest memory.
        memory_mib: u64,
    },
    /// The TD HOB does not fit the TD HOB section (QEMU: "TD_HOB overrun").
    #[error("TD HOB needs {needed} bytes; the TDVF TD_HOB section has {available}")]
    TdHobOverrun {
        /// Bytes the HOB list needs.
        needed: u64,
        /// Size of the section.
        available: u64,
    },
    /// The ACPI table loader script is malformed.
    #[error("etc/table-loader: {0}")]
    BadTableLoader(String),
    /// The table loader allocates a fw_cfg file that was not supplied.
    #[error("etc/table-loader allocates {0:?}, which is not among the supplied fw_cfg files")]
    MissingAcpiFile(String),
}

/// The fw_cfg files QEMU hands TDVF for its ACPI tables, exactly as QEMU serves them (padded
/// sizes included): `etc/table-loader` and the blobs it allocates (`etc/acpi/rsdp`,
/// `etc/acpi/tables`, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct AcpiFiles {
    /// `etc/table-loader`: the linker/loader script (128-byte commands).
    pub table_loader: Vec<u8>,
    /// Every other file, by fw_cfg name.
    pub files: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for AcpiFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AcpiFiles");
        d.field("etc/table-loader", &self.table_loader.len());
        for (name, bytes) in &self.files {
            d.field(name, &bytes.len());
        }
        d.finish()
    }
}

/// One loader command size (QEMU `BiosLinkerLoaderEntry`).
const LOADER_ENTRY_LEN: usize = 128;
/// Length of a file name field in a loader command.
const LOADER_FILE_LEN: usize = 56;
/// `BIOS_LINKER_LOADER_COMMAND_ALLOCATE`.
const LOADER_ALLOCATE: u32 = 1;

impl AcpiFiles {
    /// The fw_cfg files the loader script allocates, in command order: the order in which
    /// OVMF's `ProcessCmdAllocate` downloads and measures them.
    pub fn allocated(&self) -> Result<Vec<(&str, &[u8])>, Rtmr0Error> {
        if !self.table_loader.len().is_multiple_of(LOADER_ENTRY_LEN) {
            return Err(Rtmr0Error::BadTableLoader(format!(
                "size {} is not a multiple of {LOADER_ENTRY_LEN}",
                self.table_loader.len()
            )));
        }
        let mut out: Vec<(&str, &[u8])> = Vec::new();
        for (i, cmd) in self.table_loader.chunks(LOADER_ENTRY_LEN).enumerate() {
            let command = u32::from_le_bytes([cmd[0], cmd[1], cmd[2], cmd[3]]);
            if command != LOADER_ALLOCATE {
                continue;
            }
            let raw = &cmd[4..4 + LOADER_FILE_LEN];
            let len = raw.iter().position(|&b| b == 0).ok_or_else(|| {
                Rtmr0Error::BadTableLoader(format!("command {i}: file name not NUL-terminated"))
            })?;
            let name = std::str::from_utf8(&raw[..len]).map_err(|_| {
                Rtmr0Error::BadTableLoader(format!("command {i}: file name is not UTF-8"))
            })?;
            let (name, bytes) = self
                .files
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Rtmr0Error::MissingAcpiFile(name.to_owned()))?;
            out.push((name.as_str(), bytes.as_slice()));
        }
        if out.is_empty() {
            return Err(Rtmr0Error::BadTableLoader(
                "no ALLOCATE command: not a QEMU ACPI table loader".into(),
            ));
        }
        Ok(out)
    }
}

/// Guest RAM below and above 4 GiB for a q35 machine of `memory_mib` (QEMU `pc_q35_init`: RAM
/// of 2.75 GiB or more is split at 2 GiB, less stays below 4 GiB up to 2.75 GiB).
pub fn q35_ram_split(memory_mib: u64) -> (u64, u64) {
    let ram = memory_mib << 20;
    let lowmem = if ram >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    if ram >= lowmem {
        (lowmem, ram - lowmem)
    } else {
        (ram, 0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RamEntry {
    address: u64,
    length: u64,
    accepted: bool,
}

/// QEMU's TDX RAM entries: the e820 RAM ranges, with each TD HOB and TEMP_MEM section (in
/// metadata order) marked accepted and split out of the unaccepted range that holds it, then
/// sorted by address (`tdx_finalize_vm`).
fn ram_entries(metadata: &TdvfMetadata, memory_mib: u64) -> Result<Vec<RamEntry>, Rtmr0Error> {
    let (below, above) = q35_ram_split(memory_mib);
    let mut entries = vec![RamEntry {
        address: 0,
        length: below,
        accepted: false,
    }];
    if above > 0 {
        entries.push(RamEntry {
            address: 4 * GIB,
            length: above,
            accepted: false,
        });
    }
    for s in &metadata.sections {
        if !matches!(
            s.section_type,
            TdvfSectionType::TdHob | TdvfSectionType::TempMem
        ) {
            continue;
        }
        let (address, length) = (s.memory_address, s.memory_size);
        let outside = || Rtmr0Error::SectionOutsideRam {
            kind: s.section_type.to_string(),
            address,
            size: length,
            memory_mib,
        };
        // The first entry the range overlaps must contain it whole.
        let i = entries
            .iter()
            .position(|e| address + length > e.address && address < e.address + e.length)
            .ok_or_else(outside)?;
        let e = entries[i];
        if e.address > address || e.address + e.length < address + length {
            return Err(outside());
        }
        if e.accepted {
            continue;
        }
        entries[i] = RamEntry {
            address,
            length,
            accepted: true,
        };
        if address > e.address {
            entries.push(RamEntry {
                address: e.address,
                length: address - e.address,
                accepted: false,
            });
        }
        if address + length < e.address + e.length {
            entries.push(RamEntry {
                address: address + length,
                length: e.address + e.length - (address + length),
                accepted: false,
            });
        }
    }
    entries.sort_by_key(|e| e.address);
    Ok(entries)
}

/// The TD HOB QEMU writes for a TDVF firmware and a q35 guest of `memory_mib`, as TDVF measures
/// it: the handoff HOB and one resource descriptor per RAM entry, without the 8-byte
/// end-of-list HOB that follows (whose end address the handoff HOB's EfiEndOfHobList holds).
pub fn td_hob(metadata: &TdvfMetadata, memory_mib: u64) -> Result<Vec<u8>, Rtmr0Error> {
    let hob_section = metadata
        .sections
        .iter()
        .find(|s| s.section_type == TdvfSectionType::TdHob)
        .ok_or(Rtmr0Error::NoTdHob)?;
    let entries = ram_entries(metadata, memory_mib)?;
    let mut hob = Vec::with_capacity(HANDOFF_HOB_LEN + entries.len() * RESOURCE_HOB_LEN);
    let header = |hob: &mut Vec<u8>, kind: u16, len: usize| {
        hob.extend_from_slice(&kind.to_le_bytes());
        hob.extend_from_slice(&(len as u16).to_le_bytes());
        hob.extend_from_slice(&0u32.to_le_bytes());
    };
    header(&mut hob, HOB_HANDOFF, HANDOFF_HOB_LEN);
    hob.extend_from_slice(&HOB_HANDOFF_VERSION.to_le_bytes());
    hob.extend_from_slice(&0u32.to_le_bytes()); // BootMode
    hob.extend_from_slice(&[0u8; 32]); // EfiMemoryTop/Bottom, EfiFreeMemoryTop/Bottom
    let end_of_hob_list_at = hob.len();
    hob.extend_from_slice(&[0u8; 8]);
    for e in &entries {
        header(&mut hob, HOB_RESOURCE_DESCRIPTOR, RESOURCE_HOB_LEN);
        hob.extend_from_slice(&[0u8; 16]); // Owner
        let kind = if e.accepted {
            RESOURCE_SYSTEM_MEMORY
        } else {
            RESOURCE_MEMORY_UNACCEPTED
        };
        hob.extend_from_slice(&kind.to_le_bytes());
        hob.extend_from_slice(&RESOURCE_ATTRIBUTES.to_le_bytes());
        hob.extend_from_slice(&e.address.to_le_bytes());
        hob.extend_from_slice(&e.length.to_le_bytes());
    }
    let total = hob.len() as u64 + END_HOB_LEN;
    if total > hob_section.memory_size {
        return Err(Rtmr0Error::TdHobOverrun {
            needed: total,
            available: hob_section.memory_size,
        });
    }
    let end = hob_section.memory_address + total;
    hob[end_of_hob_list_at..end_of_hob_list_at + 8].copy_from_slice(&end.to_le_bytes());
    Ok(hob)
}

/// The configuration firmware volume as TDVF measures it: `RawDataSize` bytes from the CFV
/// section's data offset in the image (QEMU copies them unchanged to the section's address).
pub fn cfv_bytes<'a>(firmware: &'a [u8], metadata: &TdvfMetadata) -> Result<&'a [u8], Rtmr0Error> {
    let s = metadata
        .sections
        .iter()
        .find(|s| s.section_type == TdvfSectionType::Cfv)
        .ok_or(Rtmr0Error::NoCfv)?;
    let start = s.data_offset as usize;
    // TdvfMetadata::parse checked that BFV/CFV bytes lie inside the image.
    firmware
        .get(start..start + s.raw_data_size as usize)
        .ok_or(Rtmr0Error::NoCfv)
}

/// UEFI_VARIABLE_DATA: VariableName GUID, UnicodeNameLength and VariableDataLength (u64), the
/// UTF-16LE name without terminator, then the data.
pub fn variable_data(vendor: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let utf16: Vec<u16> = name.encode_utf16().collect();
    let mut v = Vec::with_capacity(32 + utf16.len() * 2 + data.len());
    v.extend_from_slice(vendor);
    v.extend_from_slice(&(utf16.len() as u64).to_le_bytes());
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for c in utf16 {
        v.extend_from_slice(&c.to_le_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// The Boot0000 option OVMF registers for the UiApp boot manager menu (BdsDxe
/// `BdsFormalizeOSIndicationVariable`/`EfiBootManagerGetBootManagerMenu`): attributes
/// LOAD_OPTION_ACTIVE | LOAD_OPTION_HIDDEN | LOAD_OPTION_CATEGORY_APP, description "UiApp", device
/// path FvName(DXEFV)/FvFile(UiApp)/End, no optional data.
pub fn ui_app_load_option() -> Vec<u8> {
    let mut path = Vec::with_capacity(44);
    // MEDIA_DEVICE_PATH (4) / MEDIA_PIWG_FW_VOL_DP (7), then MEDIA_PIWG_FW_FILE_DP (6).
    path.extend_from_slice(&[0x04, 0x07, 20, 0]);
    path.extend_from_slice(&OVMF_DXEFV);
    path.extend_from_slice(&[0x04, 0x06, 20, 0]);
    path.extend_from_slice(&UI_APP_FILE);
    path.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    let mut v = Vec::new();
    v.extend_from_slice(&0x0000_0109u32.to_le_bytes());
    v.extend_from_slice(&(path.len() as u16).to_le_bytes());
    for c in "UiApp\0".encode_utf16() {
        v.extend_from_slice(&c.to_le_bytes());
    }
    v.extend_from_slice(&path);
    v
}

/// Where an expected RTMR0 event comes from, for `explain`.
pub const SOURCE_TD_HOB: &str = "VMM: TD HOB (QEMU, from memory size and TDVF metadata)";
/// See [`SOURCE_TD_HOB`].
pub const SOURCE_CFV: &str = "firmware: CFV variable store (firmware.tdx)";
/// See [`SOURCE_TD_HOB`].
pub const SOURCE_SECURE_BOOT: &str = "firmware: secure-boot variables (unset in TDVF)";
/// See [`SOURCE_TD_HOB`].
pub const SOURCE_BOOT_VARIABLES: &str = "firmware: boot variables (direct kernel boot)";

/// The RTMR0 events of a TDVF direct kernel boot, in log order (see the module docs). `acpi`
/// are the fw_cfg files of exactly the VMM and VM shape being predicted; `vmm` names them in
/// the ACPI events' descriptions (for example "QEMU 10.0.7 pc-q35-10.0, 2 vCPU, 4096 MiB").
pub fn rtmr0_events(
    firmware: &[u8],
    metadata: &TdvfMetadata,
    memory_mib: u64,
    acpi: &AcpiFiles,
    vmm: &str,
) -> Result<Vec<Event>, Rtmr0Error> {
    let r = Register::Rtmr0;
    let hob = td_hob(metadata, memory_mib)?;
    let hob_address = metadata
        .sections
        .iter()
        .find(|s| s.section_type == TdvfSectionType::TdHob)
        .map(|s| s.memory_address)
        .ok_or(Rtmr0Error::NoTdHob)?;
    let mut events = Vec::new();

    // UEFI_HANDOFF_TABLE_POINTERS2: description, one table (vendor GUID zero here: only the
    // digest enters RTMR0), its address.
    let mut handoff = vec![TD_HOB_DESCRIPTION.len() as u8];
    handoff.extend_from_slice(TD_HOB_DESCRIPTION);
    handoff.extend_from_slice(&1u64.to_le_bytes());
    handoff.extend_from_slice(&[0u8; 16]);
    handoff.extend_from_slice(&hob_address.to_le_bytes());
    let mut e = Event::measuring(r, EventType::EV_EFI_HANDOFF_TABLES2, &hob, handoff);
    e.description = format!(
        "TD HOB: {} bytes for {memory_mib} MiB ({})",
        hob.len(),
        SOURCE_TD_HOB
    );
    events.push(e);

    let cfv = cfv_bytes(firmware, metadata)?;
    let cfv_section = metadata
        .sections
        .iter()
        .find(|s| s.section_type == TdvfSectionType::Cfv)
        .ok_or(Rtmr0Error::NoCfv)?;
    let mut blob = vec![0u8];
    blob.extend_from_slice(&cfv_section.memory_address.to_le_bytes());
    blob.extend_from_slice(&u64::from(cfv_section.raw_data_size).to_le_bytes());
    let mut e = Event::measuring(r, EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2, cfv, blob);
    e.description = format!("CFV: {} bytes of firmware.tdx", cfv.len());
    events.push(e);

    for (vendor, name) in [
        (&EFI_GLOBAL_VARIABLE, "SecureBoot"),
        (&EFI_GLOBAL_VARIABLE, "PK"),
        (&EFI_GLOBAL_VARIABLE, "KEK"),
        (&EFI_IMAGE_SECURITY_DATABASE, "db"),
        (&EFI_IMAGE_SECURITY_DATABASE, "dbx"),
    ] {
        let data = variable_data(vendor, name, &[]);
        events.push(Event::measuring(
            r,
            EventType::EV_EFI_VARIABLE_DRIVER_CONFIG,
            &data,
            data.clone(),
        ));
    }
    events.push(Event::measuring(
        r,
        EventType::EV_SEPARATOR,
        &[0; 4],
        vec![0; 4],
    ));

    let acpi_event = |name: &str, bytes: &[u8]| {
        let mut e = Event::measuring(
            r,
            EventType::EV_PLATFORM_CONFIG_FLAGS,
            bytes,
            b"ACPI DATA".to_vec(),
        );
        e.description = format!("ACPI DATA: fw_cfg {name}, {} bytes ({vmm})", bytes.len());
        e
    };
    events.push(acpi_event("etc/table-loader", &acpi.table_loader));
    for (name, bytes) in acpi.allocated()? {
        events.push(acpi_event(name, bytes));
    }

    let order = 0u16.to_le_bytes();
    events.push(Event::measuring(
        r,
        EventType::EV_EFI_VARIABLE_BOOT,
        &order,
        variable_data(&EFI_GLOBAL_VARIABLE, "BootOrder", &order),
    ));
    let boot0000 = ui_app_load_option();
    events.push(Event::measuring(
        r,
        EventType::EV_EFI_VARIABLE_BOOT,
        &boot0000,
        variable_data(&EFI_GLOBAL_VARIABLE, "Boot0000", &boot0000),
    ));
    Ok(events)
}

/// RTMR0 after [`rtmr0_events`].
pub fn rtmr0(events: &[Event]) -> Measurement {
    replay_events(events)[0]
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::measure::eventlog::{EventLog, sha384};
    use crate::measure::tdx::TdvfSection;
    use chrysalis_testkit::fixtures::tdvf_from_sev_suffix;

    fn recorded_log() -> EventLog {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testvectors/tdx-ccel/ccel_data.dat");
        EventLog::parse(&std::fs::read(&path).expect("recorded CCEL")).expect("parse")
    }

    fn section(kind: TdvfSectionType, address: u64, size: u64) -> TdvfSection {
        TdvfSection {
            data_offset: 0,
            raw_data_size: 0,
            memory_address: address,
            memory_size: size,
            section_type: kind,
            attributes: 0,
        }
    }

    /// The TDVF layout of edk2's IntelTdx build: TEMP_MEM ranges around a TD HOB page at
    /// 0x809000 (the values dstack-mr's tests use for current TDVF builds).
    fn metadata() -> TdvfMetadata {
        TdvfMetadata {
            offset: 0,
            sections: vec![
                section(TdvfSectionType::TempMem, 0x80_0000, 0x6000),
                section(TdvfSectionType::TdHob, 0x80_9000, 0x2000),
                section(TdvfSectionType::TempMem, 0x80_b000, 0x2000),
                section(TdvfSectionType::TempMem, 0x80_d000, 0x3000),
                section(TdvfSectionType::TempMem, 0x81_0000, 0x1_0000),
            ],
        }
    }

    fn resources(hob: &[u8]) -> Vec<(u32, u64, u64)> {
        hob[HANDOFF_HOB_LEN..]
            .chunks(RESOURCE_HOB_LEN)
            .map(|r| {
                assert_eq!(&r[..8], &[3, 0, 48, 0, 0, 0, 0, 0]);
                assert_eq!(&r[28..32], &7u32.to_le_bytes());
                (
                    u32::from_le_bytes(r[24..28].try_into().unwrap()),
                    u64::from_le_bytes(r[32..40].try_into().unwrap()),
                    u64::from_le_bytes(r[40..48].try_into().unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn q35_splits_ram_as_qemu_does() {
        assert_eq!(q35_ram_split(2048), (2 * GIB, 0));
        assert_eq!(q35_ram_split(2815), (2815 << 20, 0));
        // 2.75 GiB and more: split at 2 GiB.
        assert_eq!(q35_ram_split(2816), (2 * GIB, 0x3000_0000));
        assert_eq!(q35_ram_split(4096), (2 * GIB, 2 * GIB));
        assert_eq!(q35_ram_split(131072), (2 * GIB, 126 * GIB));
    }

    #[test]
    fn td_hob_lists_accepted_sections_and_unaccepted_ram_in_address_order() {
        let hob = td_hob(&metadata(), 4096).unwrap();
        // Handoff HOB: type 1, length 56, version 9, EfiEndOfHobList after the end HOB.
        assert_eq!(&hob[..4], &[1, 0, 56, 0]);
        assert_eq!(&hob[8..12], &9u32.to_le_bytes());
        let n = (hob.len() - HANDOFF_HOB_LEN) / RESOURCE_HOB_LEN;
        let end = 0x80_9000 + hob.len() as u64 + 8;
        assert_eq!(&hob[48..56], &end.to_le_bytes());
        assert_eq!(
            resources(&hob),
            vec![
                (7, 0, 0x80_0000),
                (0, 0x80_0000, 0x6000),
                (7, 0x80_6000, 0x3000),
                (0, 0x80_9000, 0x2000),
                (0, 0x80_b000, 0x2000),
                (0, 0x80_d000, 0x3000),
                (0, 0x81_0000, 0x1_0000),
                (7, 0x82_0000, 2 * GIB - 0x82_0000),
                (7, 4 * GIB, 2 * GIB),
            ]
        );
        assert_eq!(n, 9);
        // Less than 2.75 GiB: no range above 4 GiB, and the HOB (hence RTMR0) follows memory.
        let small = td_hob(&metadata(), 2048).unwrap();
        assert_eq!(
            resources(&small).last(),
            Some(&(7, 0x82_0000, 2 * GIB - 0x82_0000))
        );
        assert_ne!(sha384(&small), sha384(&hob));
        assert_ne!(
            sha384(&td_hob(&metadata(), 8192).unwrap()),
            sha384(&hob),
            "memory above 4 GiB enters the HOB"
        );
    }

    #[test]
    fn td_hob_refuses_what_qemu_refuses() {
        let mut m = metadata();
        m.sections[0].memory_address = 0xc000_0000; // in the PCI hole of a 2 GiB guest
        assert!(matches!(
            td_hob(&m, 2048),
            Err(Rtmr0Error::SectionOutsideRam { .. })
        ));
        let mut m = metadata();
        m.sections
            .retain(|s| s.section_type != TdvfSectionType::TdHob);
        assert_eq!(td_hob(&m, 2048), Err(Rtmr0Error::NoTdHob));
        let mut m = metadata();
        m.sections[1].memory_size = 0x100;
        assert!(matches!(
            td_hob(&m, 2048),
            Err(Rtmr0Error::TdHobOverrun { .. })
        ));
    }

    #[test]
    fn td_hob_of_a_real_tdvf_metadata_layout() {
        // The sev crate's recorded OvmfPkgX64 suffix carries real TDVF metadata.
        let fw = tdvf_from_sev_suffix();
        let m = TdvfMetadata::parse(&fw).unwrap();
        let hob = td_hob(&m, 2048).unwrap();
        let accepted: u64 = resources(&hob)
            .iter()
            .filter(|r| r.0 == 0)
            .map(|r| r.2)
            .sum();
        let expected: u64 = m
            .sections
            .iter()
            .filter(|s| {
                matches!(
                    s.section_type,
                    TdvfSectionType::TdHob | TdvfSectionType::TempMem
                )
            })
            .map(|s| s.memory_size)
            .sum();
        assert_eq!(accepted, expected);
        let total: u64 = resources(&hob).iter().map(|r| r.2).sum();
        assert_eq!(total, 2048 << 20, "every byte of RAM is described once");
        let cfv = cfv_bytes(&fw, &m).unwrap();
        assert!(!cfv.is_empty());
    }

    /// The TD HOB of real TDVF metadata (the sev crate's recorded OvmfPkgX64 suffix) for the
    /// default shapes equals what Phala's dstack-mr computes: the digests below come from a
    /// separate Python port of dstack-mr's `measure_td_hob` (one RAM range accepted section by
    /// section, split at 2 GiB from 2.75 GiB up), run on the same metadata.
    #[test]
    fn td_hob_equals_dstack_mr_model_for_real_tdvf_metadata() {
        let fw = tdvf_from_sev_suffix();
        let m = TdvfMetadata::parse(&fw).unwrap();
        for (mib, dstack) in [
            (
                2048,
                "0e35f1b315ba6c912cf791e5c79dd9d3a2b8704516aa27d4e5aa78fb09ede04aef2bbd02ac7a8734c48562b9c26ba35d",
            ),
            (
                4096,
                "02a008e63d55a77823c04a5513a5810d4e592dc41bf2596267c09eae5d4b4e3b329ae614973fb192297d8833d37a08fd",
            ),
            (
                65536,
                "519245d8b6b54b48b57143e6647d41e5e6f3b4ef10a73c95be4d9a9c0f54115b707e7af5e38f7be6852229b18573690d",
            ),
            (
                131072,
                "9bdb718e2a20cd8a54fe42c995b221344e42f50237c088684d17bcef895bffe64adb734b90141b41c7cdd73828fed33e",
            ),
        ] {
            assert_eq!(
                sha384(&td_hob(&m, mib).unwrap()).to_hex(),
                dstack,
                "{mib} MiB"
            );
        }
    }

    /// The recorded TDVF log (a real TDX boot) has RTMR0 events of exactly the types and order
    /// this module predicts, except that its boot went through a disk (BootOrder 0001,0000 and a
    /// Boot0001 disk option) where a direct kernel boot has only Boot0000.
    #[test]
    fn recorded_log_has_the_predicted_rtmr0_event_sequence() {
        let log = recorded_log();
        // The firmware's RTMR0 events: what shim logs there later (EV_EFI_VARIABLE_AUTHORITY
        // for SbatLevel and MokListTrusted) is not part of a direct boot.
        let logged: Vec<EventType> = log
            .events
            .iter()
            .filter(|e| e.register == Register::Rtmr0)
            .map(|e| e.event_type)
            .take_while(|t| *t != EventType::EV_EFI_VARIABLE_AUTHORITY)
            .collect();
        let fw = tdvf_from_sev_suffix();
        let m = TdvfMetadata::parse(&fw).unwrap();
        let acpi = sample_acpi();
        let predicted: Vec<EventType> = rtmr0_events(&fw, &m, 2048, &acpi, "test")
            .unwrap()
            .iter()
            .map(|e| e.event_type)
            .collect();
        // The recorded boot has one more boot option (Boot0001, its disk).
        let mut expected = predicted.clone();
        expected.push(EventType::EV_EFI_VARIABLE_BOOT);
        assert_eq!(logged, expected);
    }

    #[test]
    fn recorded_log_variable_encoding_and_boot_manager_option() {
        let log = recorded_log();
        let r0: Vec<&Event> = log
            .events
            .iter()
            .filter(|e| e.register == Register::Rtmr0)
            .collect();
        // SecureBoot = 0 (one byte) in that boot: re-encoded from name and value, it hashes to
        // the logged digest (the driver-config digest covers the whole UEFI_VARIABLE_DATA).
        let secure_boot = variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0]);
        assert_eq!(r0[2].data, secure_boot);
        assert_eq!(r0[2].digest, sha384(&secure_boot));
        // db and dbx use the image-security-database GUID.
        assert_eq!(&r0[5].data[..16], &EFI_IMAGE_SECURITY_DATABASE);
        assert_eq!(&r0[6].data[..16], &EFI_IMAGE_SECURITY_DATABASE);
        // Separator.
        assert_eq!(r0[7].digest, sha384(&[0; 4]));
        // BootOrder {0001, 0000}: the boot-variable digest covers the value only.
        let order = [1u8, 0, 0, 0];
        assert_eq!(
            r0[11].data,
            variable_data(&EFI_GLOBAL_VARIABLE, "BootOrder", &order)
        );
        assert_eq!(r0[11].digest, sha384(&order));
        // Boot0000, the UiApp boot manager option, built here from its device path.
        let ui = ui_app_load_option();
        assert_eq!(
            r0[13].data,
            variable_data(&EFI_GLOBAL_VARIABLE, "Boot0000", &ui)
        );
        assert_eq!(r0[13].digest, sha384(&ui));
    }

    /// A QEMU-shaped loader script: ALLOCATE rsdp, ALLOCATE tables, one ADD_CHECKSUM.
    pub(crate) fn sample_acpi() -> AcpiFiles {
        let mut loader = vec![0u8; 4096];
        let mut cmd = |i: usize, kind: u32, name: &str| {
            let at = i * LOADER_ENTRY_LEN;
            loader[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            loader[at + 4..at + 4 + name.len()].copy_from_slice(name.as_bytes());
        };
        cmd(0, 1, "etc/acpi/rsdp");
        cmd(1, 1, "etc/acpi/tables");
        cmd(2, 3, "etc/acpi/tables");
        AcpiFiles {
            table_loader: loader,
            files: vec![
                ("etc/acpi/tables".into(), vec![0xaa; 256]),
                ("etc/acpi/rsdp".into(), b"RSD PTR ".to_vec()),
            ],
        }
    }

    #[test]
    fn acpi_blobs_are_measured_in_loader_order_and_change_rtmr0() {
        let fw = tdvf_from_sev_suffix();
        let m = TdvfMetadata::parse(&fw).unwrap();
        let acpi = sample_acpi();
        let events = rtmr0_events(&fw, &m, 2048, &acpi, "QEMU test").unwrap();
        let flags: Vec<&Event> = events
            .iter()
            .filter(|e| e.event_type == EventType::EV_PLATFORM_CONFIG_FLAGS)
            .collect();
        assert_eq!(flags.len(), 3);
        assert_eq!(flags[0].digest, sha384(&acpi.table_loader));
        assert_eq!(flags[1].digest, sha384(b"RSD PTR "));
        assert!(flags[1].description.contains("etc/acpi/rsdp"));
        assert_eq!(flags[2].digest, sha384(&[0xaa; 256]));
        assert_eq!(flags[0].data, b"ACPI DATA");

        let mut other = acpi.clone();
        other.files[0].1[100] ^= 1;
        let changed = rtmr0_events(&fw, &m, 2048, &other, "QEMU test").unwrap();
        assert_ne!(rtmr0(&events), rtmr0(&changed));

        let mut missing = acpi.clone();
        missing.files.remove(1);
        assert_eq!(
            rtmr0_events(&fw, &m, 2048, &missing, "x").unwrap_err(),
            Rtmr0Error::MissingAcpiFile("etc/acpi/rsdp".into())
        );
        let mut bad = acpi;
        bad.table_loader.truncate(100);
        assert!(matches!(
            rtmr0_events(&fw, &m, 2048, &bad, "x"),
            Err(Rtmr0Error::BadTableLoader(_))
        ));
    }
}
