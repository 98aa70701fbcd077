//! Expected TDX measurements for a TDVF direct kernel boot: MRTD from the firmware's TDVF
//! metadata, RTMR1 and RTMR2 from kernel, initrd and command line, RTMR0 pinned per VM shape,
//! RTMR3 zero, and the events the firmware and the kernel's EFI stub log on the way.
//!
//! # The boot this models
//!
//! QEMU (upstream TDX support, `-machine q35,confidential-guest-support=tdx`) loads TDVF built
//! from edk2 `OvmfPkg/IntelTdx` (Debian trixie's edk2 2025.02 source) with `-bios`, and boots
//! `-kernel bzImage -initrd FILE -append CMDLINE` directly; the kernel is Linux 6.12 with its
//! EFI stub. What each register receives, and where that was read:
//!
//! * **MRTD** is built by the TDX module while QEMU adds the initial pages (target/i386/kvm/tdx.c
//!   `tdx_init_fw_mem_region`, in metadata order; KVM's `KVM_TDX_INIT_MEM_REGION` issues, per
//!   4 KiB page, TDH.MEM.PAGE.ADD and then, for sections with the MR.EXTEND attribute, one
//!   TDH.MR.EXTEND per 256-byte chunk). The TDX module hashes a 128-byte record per operation
//!   ("MEM.PAGE.ADD" or "MR.EXTEND", zero-padded to 16 bytes, then the GPA as u64 LE, then
//!   zeros), followed for MR.EXTEND by the 256 bytes of the chunk, into one running SHA-384.
//!   Every section is added, including the TD HOB and temporary-memory sections that are not
//!   extended. See [`mr_td`].
//! * **RTMR0** receives the TD HOB (built by QEMU from the memory layout), the CFV variable
//!   store, the secure-boot variables, QEMU's ACPI tables and the boot variables: it depends on
//!   the VMM and the VM shape, so it is pinned ([`Rtmr0Source`]).
//! * **RTMR1** (PCR 2-6): OVMF's `X86QemuLoadImageLib` calls `LoadImage` on the kernel from
//!   `QemuKernelLoaderFsDxe` (the file QEMU passed, unmodified: QEMU does not patch the setup
//!   header of a confidential guest, and 2025.02 prefers the unpatched `etc/boot/kernel` blob);
//!   `DxeTpm2MeasureBootLib` logs it as EV_EFI_BOOT_SERVICES_APPLICATION with its PE/COFF
//!   Authenticode SHA-384 (TdTcg2Dxe `MeasurePeImageAndExtend`). Then ReadyToBoot is signalled
//!   (`TryRunningQemuKernel`, after the load, so the image event comes first) and TdTcg2Dxe logs
//!   EV_EFI_ACTION "Calling EFI Application from Boot Option" and an EV_SEPARATOR. When the
//!   kernel's stub exits boot services TdTcg2Dxe logs "Exit Boot Services Invocation" and
//!   "Exit Boot Services Returned with Success".
//! * **RTMR2** (PCR 9): the Linux 6.12 EFI stub measures, through the CC measurement protocol,
//!   first its LoadOptions (EV_EVENT_TAG 0x8F3B22ED "LOADED_IMAGE::LoadOptions"; digest over
//!   the UTF-16 buffer OVMF built: the command line, then " initrd=initrd" when an initrd was
//!   given, then a UTF-16 NUL), then the initrd it fetched through the LoadFile2
//!   `LINUX_EFI_INITRD_MEDIA_GUID` device path (EV_EVENT_TAG 0x8F3B22EC "Linux initrd"; digest
//!   over the initrd file). See [`load_options`].
//! * **RTMR3** is zero: nothing in the firmware or the chrysalis guest extends it.
//!
//! # What was verified, and how
//!
//! * Against real hardware evidence (the CCEL recorded on a TDX VM with the quote of the same
//!   boot, `shared/testvectors/tdx-ccel`): the register extend rule and event-log replay, the
//!   digests of the constant EV_EFI_ACTION and EV_SEPARATOR events this module emits, and the
//!   event-data formats. That boot went through shim and GRUB, not a direct kernel boot, so the
//!   RTMR1/RTMR2 values for a direct boot are *not* hardware-verified yet.
//! * Against independent tools: the Authenticode digest equals `osslsigncode extract-data -h
//!   sha384` on a PE built in the tests and on Debian trixie's signed 6.12 kernel (which has a
//!   certificate table); MRTD of Debian's edk2 2025.02 `OVMF.fd` (OvmfPkgX64 carries the same TDVF
//!   metadata layout) equals a separate Python implementation of the same record stream. Both
//!   checks run when the images are on the machine (`CHRYSALIS_TEST_PE`, `CHRYSALIS_TEST_TDVF`).
//! * Not verified against hardware: no MRTD of a TDVF image has been compared with a quote yet.
//! * From reading source only (edk2 2025.02 `OvmfPkg/Tcg/TdTcg2Dxe`, `OvmfPkg/Library/
//!   X86QemuLoadImageLib`, `OvmfPkg/QemuKernelLoaderFsDxe`, `OvmfPkg/Library/
//!   PlatformBootManagerLib`, `SecurityPkg/Library/DxeTpm2MeasureBootLib`, `OvmfPkg/ResetVector/
//!   X64/IntelTdxMetadata.asm`; QEMU `hw/i386/tdvf.c`, `hw/i386/x86-common.c`,
//!   `target/i386/kvm/tdx.c`; Linux `drivers/firmware/efi/libstub`): the MRTD page order, the
//!   order of RTMR1 events, and the LoadOptions layout. Until a TDVF boot's CCEL is recorded,
//!   treat these as derived.
//!
//! # Assumptions a deployment must keep
//!
//! * No PCI device with an EFI option ROM (for example a NIC with QEMU's default `romfile`): its
//!   driver would be measured into RTMR1 (EV_EFI_BOOT_SERVICES_DRIVER) before the kernel.
//! * No `-shim`: with it, OVMF loads shim first and prefixes the load options with "kernel ".
//! * The first ExitBootServices call succeeds (a retry logs "Exit Boot Services Returned with
//!   Failure" first; the event-by-event comparison shows it).

use std::fmt;

use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile};
use serde::Serialize;
use sha2::digest::Update;
use sha2::{Digest, Sha384};

use super::MeasureError;
use super::eventlog::{
    Event, EventType, LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG, Register, replay_events,
};
use crate::evidence::{Measurement, TdxRegisters};

const PAGE_SIZE: u64 = 4096;
const MR_EXTEND_CHUNK: usize = 256;

/// Builds the on-disk byte order of an EFI_GUID from its text fields.
pub(crate) const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The OVMF GUIDed-table footer, 48 bytes before the end of the image.
pub const OVMF_TABLE_FOOTER_GUID: [u8; 16] = guid(
    0x96b582de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// The OVMF table entry whose data is the offset, from the end of the image, of the TDVF
/// metadata descriptor.
pub const TDX_METADATA_OFFSET_GUID: [u8; 16] = guid(
    0xe47a6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
/// OVMF's `QEMU_KERNEL_LOADER_FS_MEDIA_GUID`: the VenMedia node of the `-kernel` file system.
pub const QEMU_KERNEL_LOADER_FS_MEDIA_GUID: [u8; 16] = guid(
    0x1428f772,
    0xb64a,
    0x441e,
    [0xb8, 0xc3, 0x9e, 0xbd, 0xd7, 0xf8, 0x93, 0xc7],
);

const TDVF_SIGNATURE: &[u8; 4] = b"TDVF";
const TDVF_DESCRIPTOR_LEN: usize = 16;
const TDVF_SECTION_LEN: usize = 32;
/// Largest section accepted, so that a corrupt size cannot make MRTD hashing run for hours.
const MAX_SECTION_SIZE: u64 = 1 << 30;
/// TDVF section attribute: the VMM measures the section's content into MRTD (TDH.MR.EXTEND).
pub const TDVF_ATTRIBUTE_MR_EXTEND: u32 = 1 << 0;

/// Finds the data of an entry in the OVMF GUIDed table at the end of a firmware image, walking it
/// as QEMU does (`pc_system_parse_ovmf_flash`): the footer GUID sits 48 bytes before the end,
/// preceded by the table's total length; each entry is data, a u16 length (data + 18), a GUID,
/// read from the end backwards. `Ok(None)` when the table has no such entry.
pub fn ovmf_table_entry<'a>(
    firmware: &'a [u8],
    wanted: &[u8; 16],
) -> Result<Option<&'a [u8]>, MeasureError> {
    let len = firmware.len();
    if len < 50 {
        return Err(MeasureError::NoOvmfTable(format!(
            "image is only {len} bytes"
        )));
    }
    let footer = len - 48;
    if firmware[footer..footer + 16] != OVMF_TABLE_FOOTER_GUID {
        return Err(MeasureError::NoOvmfTable(format!(
            "no footer GUID at offset {footer:#x}"
        )));
    }
    let total = u16::from_le_bytes([firmware[footer - 2], firmware[footer - 1]]) as usize;
    let table_end = footer - 2;
    let table_len = total
        .checked_sub(18)
        .filter(|&n| n <= table_end)
        .ok_or_else(|| {
            MeasureError::NoOvmfTable(format!("table length {total} is out of range"))
        })?;
    let table = &firmware[table_end - table_len..table_end];
    let mut end = table.len();
    while end >= 18 {
        let entry_guid = &table[end - 16..end];
        let entry_len = u16::from_le_bytes([table[end - 18], table[end - 17]]) as usize;
        if entry_len < 18 || entry_len > end {
            return Err(MeasureError::NoOvmfTable(format!(
                "entry ending at offset {:#x} has length {entry_len}",
                table_end - table_len + end
            )));
        }
        if entry_guid == wanted {
            return Ok(Some(&table[end - entry_len..end - 18]));
        }
        end -= entry_len;
    }
    Ok(None)
}

/// The type of a TDVF metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TdvfSectionType {
    /// 0: boot firmware volume (code), copied from the image.
    Bfv,
    /// 1: configuration firmware volume (the variable store), copied from the image.
    Cfv,
    /// 2: the TD HOB, written by the VMM.
    TdHob,
    /// 3: temporary memory (stacks, heap, page tables), zeroed.
    TempMem,
    /// Any other value (QEMU refuses these).
    Other(u32),
}

impl TdvfSectionType {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for TdvfSectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bfv => f.write_str("BFV"),
            Self::Cfv => f.write_str("CFV"),
            Self::TdHob => f.write_str("TD_HOB"),
            Self::TempMem => f.write_str("TEMP_MEM"),
            Self::Other(v) => write!(f, "type {v}"),
        }
    }
}

/// One TDVF metadata section (TDVF design guide, "TDVF_SECTION").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdvfSection {
    /// Offset of the section's bytes in the firmware image.
    pub data_offset: u32,
    /// Number of bytes the section has in the image.
    pub raw_data_size: u32,
    /// Guest-physical address the section is loaded at.
    pub memory_address: u64,
    /// Bytes of guest memory the section occupies (whole pages).
    pub memory_size: u64,
    /// Section type.
    pub section_type: TdvfSectionType,
    /// Attributes ([`TDVF_ATTRIBUTE_MR_EXTEND`]).
    pub attributes: u32,
}

impl TdvfSection {
    /// True when the VMM extends the section's content into MRTD.
    pub fn extends_mrtd(&self) -> bool {
        self.attributes & TDVF_ATTRIBUTE_MR_EXTEND != 0
    }
}

/// The TDVF metadata of a firmware image: the sections the VMM adds to the TD before it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdvfMetadata {
    /// Offset of the "TDVF" descriptor in the image.
    pub offset: usize,
    /// The sections, in the order the VMM adds them.
    pub sections: Vec<TdvfSection>,
}

/// In which order the host's KVM issues the TDX page operations for a section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum PageAddOrder {
    /// Per page: TDH.MEM.PAGE.ADD, then its 16 TDH.MR.EXTENDs (upstream KVM, Linux 6.16+, and
    /// QEMU 10.1+'s `KVM_TDX_INIT_MEM_REGION`). The default.
    #[default]
    PerPage,
    /// Per section: every TDH.MEM.PAGE.ADD first, then every TDH.MR.EXTEND. Reported by other
    /// projects for older out-of-tree TDX host stacks; not verified here.
    AddAllThenExtend,
}

impl TdvfMetadata {
    /// Locates and validates the TDVF metadata of a firmware image the way QEMU does
    /// (`hw/i386/tdvf.c`): through the OVMF table's TDX metadata offset entry; signature
    /// "TDVF", version 1, at least 2 sections, length matching the section count, page-aligned
    /// addresses and sizes, memory size not below the raw size, BFV/CFV with image bytes and
    /// TD HOB/temporary memory without, no other types. Additionally requires that the bytes the
    /// VMM copies for BFV/CFV (memory size, from the data offset) lie inside the image.
    pub fn parse(firmware: &[u8]) -> Result<Self, MeasureError> {
        let entry = ovmf_table_entry(firmware, &TDX_METADATA_OFFSET_GUID)?
            .ok_or(MeasureError::NoTdxMetadata)?;
        let back = entry
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| {
                MeasureError::NoOvmfTable(
                    "TDX metadata offset entry is shorter than 4 bytes".into(),
                )
            })?;
        let bad = |offset: usize, reason: String| MeasureError::BadTdvfMetadata { offset, reason };
        let offset = firmware
            .len()
            .checked_sub(back)
            .filter(|o| o + TDVF_DESCRIPTOR_LEN <= firmware.len())
            .ok_or_else(|| {
                bad(
                    0,
                    format!(
                        "offset {back:#x} from the end does not fit a {}-byte image",
                        firmware.len()
                    ),
                )
            })?;
        let d = &firmware[offset..offset + TDVF_DESCRIPTOR_LEN];
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at =
            |b: &[u8], i: usize| u64::from(u32_at(b, i)) | (u64::from(u32_at(b, i + 4)) << 32);
        if &d[..4] != TDVF_SIGNATURE {
            return Err(bad(
                offset,
                format!(
                    "signature {:?} is not \"TDVF\"",
                    d[..4].escape_ascii().to_string()
                ),
            ));
        }
        let length = u32_at(d, 4) as usize;
        let version = u32_at(d, 8);
        let count = u32_at(d, 12) as usize;
        if version != 1 {
            return Err(bad(
                offset,
                format!("version {version} (only 1 is defined)"),
            ));
        }
        if count < 2 {
            return Err(bad(
                offset,
                format!("{count} sections (QEMU requires at least 2)"),
            ));
        }
        let expected = count
            .checked_mul(TDVF_SECTION_LEN)
            .and_then(|n| n.checked_add(TDVF_DESCRIPTOR_LEN))
            .filter(|&n| n == length)
            .ok_or_else(|| {
                bad(
                    offset,
                    format!("length {length} does not match {count} sections"),
                )
            })?;
        if offset + expected > firmware.len() {
            return Err(bad(
                offset,
                format!("{count} sections run past the end of the image"),
            ));
        }
        let mut sections = Vec::with_capacity(count);
        for i in 0..count {
            let at = offset + TDVF_DESCRIPTOR_LEN + i * TDVF_SECTION_LEN;
            let s = &firmware[at..at + TDVF_SECTION_LEN];
            let section = TdvfSection {
                data_offset: u32_at(s, 0),
                raw_data_size: u32_at(s, 4),
                memory_address: u64_at(s, 8),
                memory_size: u64_at(s, 16),
                section_type: TdvfSectionType::from_u32(u32_at(s, 24)),
                attributes: u32_at(s, 28),
            };
            let kind = section.section_type;
            if section.memory_size < u64::from(section.raw_data_size) {
                return Err(bad(
                    at,
                    format!(
                        "section {i} ({kind}): memory size {:#x} is below its raw size {:#x}",
                        section.memory_size, section.raw_data_size
                    ),
                ));
            }
            if !section.memory_address.is_multiple_of(PAGE_SIZE)
                || !section.memory_size.is_multiple_of(PAGE_SIZE)
            {
                return Err(bad(
                    at,
                    format!(
                        "section {i} ({kind}): address {:#x} or size {:#x} is not page aligned",
                        section.memory_address, section.memory_size
                    ),
                ));
            }
            if section.memory_size > MAX_SECTION_SIZE {
                return Err(bad(
                    at,
                    format!(
                        "section {i} ({kind}): {:#x} bytes is more than the {MAX_SECTION_SIZE:#x} \
                         this calculator accepts (TDVF sections are a few MiB)",
                        section.memory_size
                    ),
                ));
            }
            if section
                .memory_address
                .checked_add(section.memory_size)
                .is_none()
            {
                return Err(bad(
                    at,
                    format!("section {i} ({kind}): address range overflows"),
                ));
            }
            match kind {
                TdvfSectionType::Bfv | TdvfSectionType::Cfv => {
                    if section.raw_data_size == 0 {
                        return Err(bad(at, format!("section {i} ({kind}) has no image bytes")));
                    }
                    let end = u64::from(section.data_offset) + section.memory_size;
                    if end > firmware.len() as u64 {
                        return Err(bad(
                            at,
                            format!(
                                "section {i} ({kind}): {:#x} bytes from offset {:#x} run past the {:#x}-byte image",
                                section.memory_size,
                                section.data_offset,
                                firmware.len()
                            ),
                        ));
                    }
                }
                TdvfSectionType::TdHob | TdvfSectionType::TempMem => {
                    if section.raw_data_size != 0 {
                        return Err(bad(
                            at,
                            format!("section {i} ({kind}) must not have image bytes"),
                        ));
                    }
                }
                TdvfSectionType::Other(_) => {
                    return Err(bad(at, format!("section {i} has unsupported {kind}")));
                }
            }
            sections.push(section);
        }
        if !sections
            .iter()
            .any(|s| s.section_type == TdvfSectionType::TdHob)
        {
            return Err(bad(offset, "no TD_HOB section (QEMU requires one)".into()));
        }
        Ok(Self { offset, sections })
    }

    /// MRTD as the TDX module computes it while the VMM adds these sections in order; see the
    /// module docs for the record layout. `firmware` must be the image these metadata came from.
    pub fn mr_td(&self, firmware: &[u8], order: PageAddOrder) -> Result<Measurement, MeasureError> {
        let mut h = Sha384::new();
        let zero_page = [0u8; PAGE_SIZE as usize];
        for (index, s) in self.sections.iter().enumerate() {
            let pages = s.memory_size / PAGE_SIZE;
            let content = |page: u64| -> Result<&[u8], MeasureError> {
                match s.section_type {
                    TdvfSectionType::Bfv | TdvfSectionType::Cfv => {
                        // parse() checked that data_offset + memory_size lies inside the image.
                        let start = s.data_offset as usize + (page * PAGE_SIZE) as usize;
                        firmware
                            .get(start..start + PAGE_SIZE as usize)
                            .ok_or_else(|| MeasureError::BadTdvfMetadata {
                                offset: self.offset,
                                reason: format!(
                                    "section {index} does not fit the firmware image given"
                                ),
                            })
                    }
                    // QEMU backs temporary memory with fresh anonymous (zeroed) pages.
                    TdvfSectionType::TempMem => Ok(&zero_page),
                    kind => Err(MeasureError::UnpredictableSection {
                        index,
                        kind: kind.to_string(),
                        reason: "its content is written by the VMM at launch".into(),
                    }),
                }
            };
            let gpa = |page: u64| s.memory_address + page * PAGE_SIZE;
            match order {
                PageAddOrder::PerPage => {
                    for page in 0..pages {
                        page_add(&mut h, gpa(page));
                        if s.extends_mrtd() {
                            mr_extend_page(&mut h, gpa(page), content(page)?);
                        }
                    }
                }
                PageAddOrder::AddAllThenExtend => {
                    for page in 0..pages {
                        page_add(&mut h, gpa(page));
                    }
                    if s.extends_mrtd() {
                        for page in 0..pages {
                            mr_extend_page(&mut h, gpa(page), content(page)?);
                        }
                    }
                }
            }
        }
        Ok(Measurement(h.finalize().into()))
    }
}

/// The 128-byte record the TDX module hashes for one page operation.
fn mrtd_record(op: &[u8], gpa: u64) -> [u8; 128] {
    let mut rec = [0u8; 128];
    rec[..op.len()].copy_from_slice(op);
    rec[16..24].copy_from_slice(&gpa.to_le_bytes());
    rec
}

fn page_add(h: &mut Sha384, gpa: u64) {
    Digest::update(h, mrtd_record(b"MEM.PAGE.ADD", gpa));
}

fn mr_extend_page(h: &mut Sha384, gpa: u64, page: &[u8]) {
    for (i, chunk) in page.chunks(MR_EXTEND_CHUNK).enumerate() {
        Digest::update(
            h,
            mrtd_record(b"MR.EXTEND", gpa + (i * MR_EXTEND_CHUNK) as u64),
        );
        Digest::update(h, chunk);
    }
}

/// MRTD of a TDVF firmware image: [`TdvfMetadata::parse`] then [`TdvfMetadata::mr_td`].
pub fn mr_td(firmware: &[u8], order: PageAddOrder) -> Result<Measurement, MeasureError> {
    TdvfMetadata::parse(firmware)?.mr_td(firmware, order)
}

const IMAGE_SUBSYSTEM_EFI_APPLICATION: u16 = 10;
const IMAGE_DIRECTORY_ENTRY_SECURITY: u32 = 4;

/// A PE32 or PE32+ image, parsed by the `object` crate.
struct ParsedPe<'a> {
    file: Box<dyn authenticode::PeTrait + 'a>,
    image_base: u64,
    subsystem: u16,
}

fn parse_pe(pe: &[u8]) -> Result<ParsedPe<'_>, MeasureError> {
    fn parse<'a, I>(pe: &'a [u8]) -> Result<ParsedPe<'a>, MeasureError>
    where
        I: ImageNtHeaders + 'a,
        PeFile<'a, I>: authenticode::PeTrait,
    {
        let file = PeFile::<I>::parse(pe)
            .map_err(|e| MeasureError::BadKernelImage(format!("PE/COFF headers: {e}")))?;
        let opt = file.nt_headers().optional_header();
        // edk2 hashes differently when there is no certificate-table slot; such images are not
        // what a kernel looks like, so they are refused rather than guessed at.
        if opt.number_of_rva_and_sizes() <= IMAGE_DIRECTORY_ENTRY_SECURITY {
            return Err(MeasureError::BadKernelImage(format!(
                "{} data directories: no certificate-table slot (not supported)",
                opt.number_of_rva_and_sizes()
            )));
        }
        let (image_base, subsystem) = (opt.image_base(), opt.subsystem());
        Ok(ParsedPe {
            file: Box::new(file),
            image_base,
            subsystem,
        })
    }
    match object::FileKind::parse(pe) {
        Ok(object::FileKind::Pe64) => parse::<object::pe::ImageNtHeaders64>(pe),
        Ok(object::FileKind::Pe32) => parse::<object::pe::ImageNtHeaders32>(pe),
        Ok(kind) => Err(MeasureError::BadKernelImage(format!(
            "{kind:?} file, not PE/COFF (a kernel without EFI stub?)"
        ))),
        Err(e) => Err(MeasureError::BadKernelImage(format!(
            "unrecognised file: {e}"
        ))),
    }
}

/// Computes the Authenticode digest of a PE/COFF image (PE32 or PE32+) with any `digest` 0.10
/// hasher, the way edk2's `MeasurePeImageAndExtend` does: the headers without the checksum and
/// the certificate-table directory entry, the sections' raw data sorted by file offset, then any
/// data after the sections except the certificate table. The hashing is done by the
/// `authenticode` crate (Google's authenticode-rs), whose steps match edk2's for images that
/// have a certificate-table directory slot, which this function requires.
pub fn authenticode_digest_with(pe: &[u8], digest: &mut dyn Update) -> Result<(), MeasureError> {
    hash_pe(&parse_pe(pe)?, digest)
}

fn hash_pe(parsed: &ParsedPe<'_>, digest: &mut dyn Update) -> Result<(), MeasureError> {
    authenticode::authenticode_digest(&*parsed.file, digest).map_err(|_| {
        MeasureError::BadKernelImage(
            "a section or the certificate table lies outside the file".into(),
        )
    })
}

/// What the firmware logs about a PE image it measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeImageInfo {
    /// The Authenticode SHA-384 digest (the value extended into RTMR1).
    pub authenticode_sha384: Measurement,
    /// ImageBase from the optional header (logged as the link-time address).
    pub image_base: u64,
    /// The subsystem (10: EFI application).
    pub subsystem: u16,
}

/// Parses a PE/COFF image and computes its Authenticode SHA-384; see [`authenticode_digest_with`].
pub fn pe_image_info(pe: &[u8]) -> Result<PeImageInfo, MeasureError> {
    let parsed = parse_pe(pe)?;
    let mut h = Sha384::new();
    hash_pe(&parsed, &mut h)?;
    Ok(PeImageInfo {
        authenticode_sha384: Measurement(h.finalize().into()),
        image_base: parsed.image_base,
        subsystem: parsed.subsystem,
    })
}

/// The Authenticode SHA-384 digest of a PE/COFF image; see [`authenticode_digest_with`].
pub fn authenticode_sha384(pe: &[u8]) -> Result<Measurement, MeasureError> {
    Ok(pe_image_info(pe)?.authenticode_sha384)
}

/// The LoadOptions buffer OVMF gives a directly booted kernel (edk2 2025.02
/// `X86QemuLoadImageLib`): the command line followed by " initrd=initrd" when QEMU has an
/// initrd, widened byte by byte to UTF-16LE (`UnicodeSPrintAsciiFormat` with `%a`, so non-ASCII
/// UTF-8 bytes become one code unit each), NUL-terminated. Empty (no buffer at all) when both
/// are absent. This exact buffer is what the Linux stub hashes for "LOADED_IMAGE::LoadOptions".
///
/// Fails when the command line contains a NUL byte (QEMU passes it as a C string).
pub fn load_options(cmdline: &str, has_initrd: bool) -> Result<Vec<u8>, MeasureError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(MeasureError::BadCommandLine(
            "it contains a NUL byte".into(),
        ));
    }
    let suffix: &[u8] = if has_initrd { b" initrd=initrd" } else { b"" };
    if cmdline.is_empty() && suffix.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity((cmdline.len() + suffix.len() + 1) * 2);
    for &b in cmdline.as_bytes().iter().chain(suffix).chain(&[0u8]) {
        out.extend_from_slice(&u16::from(b).to_le_bytes());
    }
    Ok(out)
}

/// True when the Linux stub will skip the initrd: a bare `noinitrd` parameter before any `--`
/// (libstub `efi_parse_options`; double quotes group a value).
fn stub_skips_initrd(cmdline: &str) -> bool {
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in cmdline.chars() {
        if ch == '"' {
            quoted = !quoted;
            cur.push(ch);
        } else if ch.is_ascii_whitespace() && !quoted {
            if !cur.is_empty() {
                params.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(ch);
        }
    }
    if !cur.is_empty() {
        params.push(cur);
    }
    params
        .iter()
        .take_while(|p| p.as_str() != "--")
        .any(|p| p == "noinitrd")
}

/// The device path OVMF loads `-kernel` from: VenMedia(QEMU kernel loader FS)/File("kernel")/End.
fn kernel_device_path() -> Vec<u8> {
    let mut p = vec![0x04, 0x03, 20, 0];
    p.extend_from_slice(&QEMU_KERNEL_LOADER_FS_MEDIA_GUID);
    let name: Vec<u8> = "kernel\0"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    p.extend_from_slice(&[0x04, 0x04, (4 + name.len()) as u8, 0]);
    p.extend_from_slice(&name);
    p.extend_from_slice(&[0x7F, 0xFF, 4, 0]);
    p
}

/// TCG_PCClientTaggedEvent as the Linux stub logs it: id, size, NUL-terminated description.
fn tagged_event(id: u32, description: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&id.to_le_bytes());
    d.extend_from_slice(&(description.len() as u32 + 1).to_le_bytes());
    d.extend_from_slice(description.as_bytes());
    d.push(0);
    d
}

/// "Calling EFI Application from Boot Option" (edk2 `EFI_CALLING_EFI_APPLICATION`).
pub const EFI_CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";
/// "Exit Boot Services Invocation" (edk2 `EFI_EXIT_BOOT_SERVICES_INVOCATION`).
pub const EFI_EXIT_BOOT_SERVICES_INVOCATION: &str = "Exit Boot Services Invocation";
/// "Exit Boot Services Returned with Success" (edk2 `EFI_EXIT_BOOT_SERVICES_SUCCEEDED`).
pub const EFI_EXIT_BOOT_SERVICES_SUCCEEDED: &str = "Exit Boot Services Returned with Success";

fn efi_action(register: Register, s: &str) -> Event {
    Event::measuring(
        register,
        EventType::EV_EFI_ACTION,
        s.as_bytes(),
        s.as_bytes().to_vec(),
    )
}

/// The RTMR1 and RTMR2 events of a direct kernel boot, in log order (see the module docs).
///
/// The kernel image event's data is EFI_IMAGE_LOAD_EVENT as `DxeTpm2MeasureBootLib` builds it,
/// except `ImageLocationInMemory`, which the firmware picks at run time and is predicted as 0;
/// its description omits it. Every other event's data is exact. An initrd of 0 bytes is the same
/// as none (QEMU passes no initrd then).
pub fn direct_boot_events(
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<Vec<Event>, MeasureError> {
    let pe = pe_image_info(kernel)?;
    if pe.subsystem != IMAGE_SUBSYSTEM_EFI_APPLICATION {
        return Err(MeasureError::BadKernelImage(format!(
            "PE subsystem {} is not an EFI application (10)",
            pe.subsystem
        )));
    }
    let initrd = initrd.filter(|i| !i.is_empty());
    let path = kernel_device_path();
    let mut image_load = Vec::with_capacity(32 + path.len());
    image_load.extend_from_slice(&0u64.to_le_bytes());
    image_load.extend_from_slice(&(kernel.len() as u64).to_le_bytes());
    image_load.extend_from_slice(&pe.image_base.to_le_bytes());
    image_load.extend_from_slice(&(path.len() as u64).to_le_bytes());
    image_load.extend_from_slice(&path);

    let mut events = vec![
        Event::new(
            Register::Rtmr1,
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION,
            pe.authenticode_sha384,
            image_load,
        ),
        efi_action(Register::Rtmr1, EFI_CALLING_EFI_APPLICATION),
        Event::measuring(
            Register::Rtmr1,
            EventType::EV_SEPARATOR,
            &[0; 4],
            vec![0; 4],
        ),
    ];
    let options = load_options(cmdline, initrd.is_some())?;
    if !options.is_empty() {
        events.push(Event::measuring(
            Register::Rtmr2,
            EventType::EV_EVENT_TAG,
            &options,
            tagged_event(LINUX_LOAD_OPTIONS_TAG, "LOADED_IMAGE::LoadOptions"),
        ));
    }
    if let Some(initrd) = initrd.filter(|_| !stub_skips_initrd(cmdline)) {
        events.push(Event::measuring(
            Register::Rtmr2,
            EventType::EV_EVENT_TAG,
            initrd,
            tagged_event(LINUX_INITRD_TAG, "Linux initrd"),
        ));
    }
    events.push(efi_action(
        Register::Rtmr1,
        EFI_EXIT_BOOT_SERVICES_INVOCATION,
    ));
    events.push(efi_action(
        Register::Rtmr1,
        EFI_EXIT_BOOT_SERVICES_SUCCEEDED,
    ));
    Ok(events)
}

/// Where the expected RTMR0 comes from.
///
/// RTMR0 holds what TDVF measures of its configuration: the TD HOB QEMU builds from the memory
/// layout, the CFV variable store, the secure-boot variables, QEMU's ACPI tables (which depend on
/// vCPU count, memory size and devices) and the boot variables. It is therefore pinned per VM
/// shape (firmware build, QEMU version, machine type, vCPUs, memory, device list).
///
/// Capture procedure for a shape: boot the image on real TDX hardware with exactly that shape;
/// inside the guest copy the event log (`/sys/firmware/acpi/tables/data/CCEL`) and take a quote;
/// run `chrysalis eventlog replay --ccel FILE` and check that its `rtmr0`..`rtmr2` equal the
/// quote's; pin the replayed `rtmr0` for the shape, and check that `rtmr1`/`rtmr2` equal what
/// [`expected_tdx`] computes for the same artifacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rtmr0Source {
    /// A value captured from a real boot of this VM shape.
    Pinned(Measurement),
    /// No RTMR0 is expected: the caller does not pin it.
    NotPinned,
}

/// The artifacts of a TDX direct kernel boot. Borrowed: firmware and initrd can be large.
#[derive(Clone, Copy)]
pub struct TdxBootInputs<'a> {
    /// The TDVF image given to QEMU with `-bios` (built from `OvmfPkg/IntelTdx`).
    pub firmware: &'a [u8],
    /// The kernel given with `-kernel` (a bzImage with EFI stub), as a file.
    pub kernel: &'a [u8],
    /// The initrd given with `-initrd`, if any.
    pub initrd: Option<&'a [u8]>,
    /// The command line given with `-append` (empty when there is none).
    pub cmdline: &'a str,
    /// RTMR0 for this VM shape.
    pub rtmr0: Rtmr0Source,
    /// How the host adds TD pages (the default is upstream KVM's).
    pub page_add_order: PageAddOrder,
}

impl fmt::Debug for TdxBootInputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxBootInputs")
            .field("firmware_len", &self.firmware.len())
            .field("kernel_len", &self.kernel.len())
            .field("initrd_len", &self.initrd.map(<[u8]>::len))
            .field("cmdline", &self.cmdline)
            .field("rtmr0", &self.rtmr0)
            .field("page_add_order", &self.page_add_order)
            .finish()
    }
}

/// The measurements a TD booted from [`TdxBootInputs`] is expected to report. Serialized as
/// `{"mr_td", "rtmr0" (null when not pinned), "rtmr1", "rtmr2", "rtmr3", "events"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedTdx {
    /// MRTD; RTMR1 and RTMR2 the replay of the RTMR1 and RTMR2 events in `events`; RTMR3 zero
    /// (nothing extends it); RTMR0 the pinned value, or zero when `rtmr0_pinned` is false (the
    /// value the sim quotes then).
    pub registers: TdxRegisters,
    /// Whether `registers.rtmr[0]` is an expected value; when false RTMR0 is not predicted and
    /// must not be compared.
    pub rtmr0_pinned: bool,
    /// The expected RTMR1 and RTMR2 events in log order, for an event-by-event comparison with a
    /// recorded log; RTMR0 events only when a VMM and VM shape were given
    /// (`measure::image::tdx_image_for_shape`).
    pub events: Vec<Event>,
}

impl ExpectedTdx {
    /// RTMR0 when it is pinned.
    pub fn rtmr0(&self) -> Option<Measurement> {
        self.rtmr0_pinned.then_some(self.registers.rtmr[0])
    }

    /// Pins RTMR0 to `value`.
    pub fn pin_rtmr0(&mut self, value: Measurement) {
        self.registers.rtmr[0] = value;
        self.rtmr0_pinned = true;
    }
}

impl Serialize for ExpectedTdx {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The layout of `chrysalis measure` and the manifest: one key per register.
        #[derive(Serialize)]
        struct Wire<'a> {
            mr_td: Measurement,
            rtmr0: Option<Measurement>,
            rtmr1: Measurement,
            rtmr2: Measurement,
            rtmr3: Measurement,
            events: &'a [Event],
        }
        let [_, rtmr1, rtmr2, rtmr3] = self.registers.rtmr;
        Wire {
            mr_td: self.registers.mr_td,
            rtmr0: self.rtmr0(),
            rtmr1,
            rtmr2,
            rtmr3,
            events: &self.events,
        }
        .serialize(s)
    }
}

/// Computes the expected MRTD and RTMRs of a TDX direct kernel boot. RTMR1 and RTMR2 are the
/// replay of [`direct_boot_events`], so the registers and the event list cannot disagree.
pub fn expected_tdx(inputs: &TdxBootInputs<'_>) -> Result<ExpectedTdx, MeasureError> {
    let mr_td = mr_td(inputs.firmware, inputs.page_add_order)?;
    let events = direct_boot_events(inputs.kernel, inputs.initrd, inputs.cmdline)?;
    let [_, rtmr1, rtmr2, rtmr3] = replay_events(&events);
    let (rtmr0, rtmr0_pinned) = match inputs.rtmr0 {
        Rtmr0Source::Pinned(m) => (m, true),
        Rtmr0Source::NotPinned => (Measurement::ZERO, false),
    };
    Ok(ExpectedTdx {
        registers: TdxRegisters {
            mr_td,
            rtmr: [rtmr0, rtmr1, rtmr2, rtmr3],
        },
        rtmr0_pinned,
        events,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;
    use crate::measure::eventlog::{EventLog, extend, sha384};

    // ---- a PE32+ image built by hand -------------------------------------------------------

    const CHECKSUM_AT: usize = 0x58 + 64;
    const SECURITY_DIR_AT: usize = 0x58 + 112 + 4 * 8;
    const CERT_AT: usize = 0x630;

    /// A small PE32+ EFI image: headers in 0x200 bytes, ".text" at file offset 0x400 listed
    /// before ".data" at 0x200 (so sorting matters), 0x30 bytes of trailing data, then a
    /// 0x20-byte certificate table.
    fn build_pe(subsystem: u16) -> Vec<u8> {
        let mut pe = vec![0u8; 0x650];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        pe[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        pe[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        pe[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        pe[coff + 18..coff + 20].copy_from_slice(&0x0022u16.to_le_bytes());
        let opt = 0x58;
        let put32 =
            |pe: &mut Vec<u8>, at: usize, v: u32| pe[at..at + 4].copy_from_slice(&v.to_le_bytes());
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        put32(&mut pe, opt + 16, 0x1000); // entry point
        pe[opt + 24..opt + 32].copy_from_slice(&0x1_0000u64.to_le_bytes()); // image base
        put32(&mut pe, opt + 32, 0x1000); // section alignment
        put32(&mut pe, opt + 36, 0x200); // file alignment
        put32(&mut pe, opt + 56, 0x3000); // size of image
        put32(&mut pe, opt + 60, 0x200); // size of headers
        put32(&mut pe, CHECKSUM_AT, 0xDEAD_BEEF);
        pe[opt + 68..opt + 70].copy_from_slice(&subsystem.to_le_bytes());
        put32(&mut pe, opt + 108, 16); // number of data directories
        put32(&mut pe, SECURITY_DIR_AT, CERT_AT as u32);
        put32(&mut pe, SECURITY_DIR_AT + 4, 0x20);
        let sections = opt + 240;
        for (i, (name, va, raw)) in [
            (b".text\0\0\0", 0x1000u32, 0x400u32),
            (b".data\0\0\0", 0x2000, 0x200),
        ]
        .into_iter()
        .enumerate()
        {
            let s = sections + 40 * i;
            pe[s..s + 8].copy_from_slice(name);
            put32(&mut pe, s + 8, 0x200); // virtual size
            put32(&mut pe, s + 12, va);
            put32(&mut pe, s + 16, 0x200); // size of raw data
            put32(&mut pe, s + 20, raw);
            put32(&mut pe, s + 36, 0x6000_0020);
        }
        for (i, b) in pe[0x200..CERT_AT].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        put32(&mut pe, CERT_AT, 0x20);
        pe[CERT_AT + 4..CERT_AT + 8].copy_from_slice(&[0x00, 0x02, 0x02, 0x00]);
        pe[CERT_AT + 8..].fill(0xC5);
        pe
    }

    /// The Authenticode digest of `build_pe`, spelled out range by range.
    fn hand_authenticode(pe: &[u8]) -> Measurement {
        let mut h = Sha384::new();
        Digest::update(&mut h, &pe[..CHECKSUM_AT]);
        Digest::update(&mut h, &pe[CHECKSUM_AT + 4..SECURITY_DIR_AT]);
        Digest::update(&mut h, &pe[SECURITY_DIR_AT + 8..0x200]);
        Digest::update(&mut h, &pe[0x200..0x400]); // .data: lower file offset first
        Digest::update(&mut h, &pe[0x400..0x600]); // .text
        Digest::update(&mut h, &pe[0x600..CERT_AT]); // trailing data, certificate table excluded
        Measurement(h.finalize().into())
    }

    #[test]
    fn authenticode_of_a_built_pe_matches_a_hand_computation() {
        let pe = build_pe(10);
        let base = authenticode_sha384(&pe).unwrap();
        assert_eq!(base, hand_authenticode(&pe));
        let info = pe_image_info(&pe).unwrap();
        assert_eq!((info.image_base, info.subsystem), (0x1_0000, 10));
        // The checksum, the certificate-table entry's bytes and the certificate table are not hashed.
        let mut p = pe.clone();
        p[CHECKSUM_AT] ^= 0xFF;
        p[CERT_AT + 12] ^= 0xFF;
        assert_eq!(authenticode_sha384(&p).unwrap(), base);
        // Section data, header bytes and trailing data are.
        for at in [0x210, 0x5FF, 0x100, 0x610] {
            let mut p = pe.clone();
            p[at] ^= 1;
            assert_ne!(authenticode_sha384(&p).unwrap(), base, "byte {at:#x}");
        }
    }

    #[test]
    fn non_pe_kernels_are_refused_with_a_reason() {
        let err = authenticode_sha384(b"\x7fELF\x02\x01\x01\0rest of an ELF file").unwrap_err();
        assert!(matches!(err, MeasureError::BadKernelImage(_)), "{err}");
        let mut truncated = build_pe(10);
        truncated.truncate(0x500); // .text runs past the end
        assert!(authenticode_sha384(&truncated).is_err());
        let err = direct_boot_events(&build_pe(3), None, "").unwrap_err();
        assert!(err.to_string().contains("subsystem 3"), "{err}");
    }

    /// The SHA-384 Authenticode digest `osslsigncode extract-data` computes, if it is installed.
    fn osslsigncode_sha384(pe: &Path) -> Option<Measurement> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data.der"); // osslsigncode refuses to overwrite
        let status = Command::new("osslsigncode")
            .args(["extract-data", "-h", "sha384", "-in"])
            .arg(pe)
            .arg("-out")
            .arg(&out)
            .output()
            .ok()?;
        assert!(
            status.status.success(),
            "osslsigncode failed on {}: {:?}",
            pe.display(),
            status
        );
        let der = std::fs::read(&out).unwrap();
        // AlgorithmIdentifier { sha384, NULL } followed by OCTET STRING (48 bytes).
        let marker = [
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04,
            0x30,
        ];
        let at = der
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("digest in osslsigncode output");
        Some(Measurement::from_slice(&der[at + marker.len()..at + marker.len() + 48]).unwrap())
    }

    #[test]
    fn authenticode_matches_osslsigncode() {
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("built.efi");
        std::fs::write(&built, build_pe(10)).unwrap();
        let mut candidates = vec![built];
        // PE images found on this machine (kernels, shim, systemd-boot), never committed.
        for pattern_dir in ["/boot", "/usr/lib/shim", "/usr/lib/systemd/boot/efi"] {
            if let Ok(entries) = std::fs::read_dir(pattern_dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("vmlinuz")
                        || name.ends_with(".efi")
                        || name.ends_with(".efi.signed")
                    {
                        candidates.push(e.path());
                    }
                }
            }
        }
        if let Ok(extra) = std::env::var("CHRYSALIS_TEST_PE") {
            candidates.extend(
                extra
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            );
        }
        let mut checked = 0;
        for path in &candidates {
            let bytes = std::fs::read(path).unwrap();
            let Some(expected) = osslsigncode_sha384(path) else {
                eprintln!("SKIPPED: osslsigncode is not installed (apt-get install osslsigncode)");
                return;
            };
            assert_eq!(
                authenticode_sha384(&bytes).unwrap(),
                expected,
                "{}",
                path.display()
            );
            checked += 1;
        }
        eprintln!(
            "authenticode checked against osslsigncode on {checked} image(s): {candidates:?}"
        );
    }

    // ---- synthetic TDVF firmware -----------------------------------------------------------

    const FW_LEN: usize = 0x10000;
    const META_AT: usize = 0xF000;
    const BFV_GPA: u64 = 0xFFFF_0000;

    /// A 64 KiB image with TDVF metadata: BFV (2 pages, extended), CFV (1 page), TD HOB
    /// (1 page), temporary memory (2 pages), and the OVMF table pointing at the metadata.
    fn build_firmware(sections: &[(u32, u32, u64, u64, u32, u32)]) -> Vec<u8> {
        let mut fw = vec![0u8; FW_LEN];
        for (i, b) in fw[..0x3000].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut meta = b"TDVF".to_vec();
        meta.extend_from_slice(&((16 + 32 * sections.len()) as u32).to_le_bytes());
        meta.extend_from_slice(&1u32.to_le_bytes());
        meta.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for &(off, raw, gpa, size, ty, attr) in sections {
            meta.extend_from_slice(&off.to_le_bytes());
            meta.extend_from_slice(&raw.to_le_bytes());
            meta.extend_from_slice(&gpa.to_le_bytes());
            meta.extend_from_slice(&size.to_le_bytes());
            meta.extend_from_slice(&ty.to_le_bytes());
            meta.extend_from_slice(&attr.to_le_bytes());
        }
        fw[META_AT..META_AT + meta.len()].copy_from_slice(&meta);
        // OVMF table: [offset u32][len 22][TDX GUID][total 40][footer GUID][32 bytes].
        let end = FW_LEN - 32;
        fw[end - 16..end].copy_from_slice(&OVMF_TABLE_FOOTER_GUID);
        fw[end - 18..end - 16].copy_from_slice(&40u16.to_le_bytes());
        fw[end - 34..end - 18].copy_from_slice(&TDX_METADATA_OFFSET_GUID);
        fw[end - 36..end - 34].copy_from_slice(&22u16.to_le_bytes());
        fw[end - 40..end - 36].copy_from_slice(&((FW_LEN - META_AT) as u32).to_le_bytes());
        fw
    }

    const SECTIONS: [(u32, u32, u64, u64, u32, u32); 4] = [
        (0, 0x2000, BFV_GPA, 0x2000, 0, 1),
        (0x2000, 0x1000, BFV_GPA + 0x2000, 0x1000, 1, 0),
        (0, 0, 0x80_9000, 0x1000, 2, 0),
        (0, 0, 0x80_A000, 0x2000, 3, 0),
    ];

    fn record(op: &str, gpa: u64) -> Vec<u8> {
        let mut r = op.as_bytes().to_vec();
        r.resize(16, 0);
        r.extend_from_slice(&gpa.to_le_bytes());
        r.resize(128, 0);
        r
    }

    #[test]
    fn mrtd_of_synthetic_metadata_matches_the_hand_checked_value() {
        let fw = build_firmware(&SECTIONS);
        let meta = TdvfMetadata::parse(&fw).unwrap();
        assert_eq!(meta.offset, META_AT);
        assert_eq!(meta.sections.len(), 4);
        assert_eq!(meta.sections[2].section_type, TdvfSectionType::TdHob);

        // Spelled out: BFV page 0 and 1 added and extended chunk by chunk; CFV, TD HOB and
        // temporary memory pages only added.
        let mut stream = Vec::new();
        for page in 0..2u64 {
            let gpa = BFV_GPA + page * 4096;
            stream.extend(record("MEM.PAGE.ADD", gpa));
            for chunk in 0..16u64 {
                stream.extend(record("MR.EXTEND", gpa + chunk * 256));
                let at = (page * 4096 + chunk * 256) as usize;
                stream.extend_from_slice(&fw[at..at + 256]);
            }
        }
        for gpa in [BFV_GPA + 0x2000, 0x80_9000, 0x80_A000, 0x80_B000] {
            stream.extend(record("MEM.PAGE.ADD", gpa));
        }
        let expected = sha384(&stream);
        assert_eq!(mr_td(&fw, PageAddOrder::PerPage).unwrap(), expected);
        // The same value computed by an independent Python script over the same image
        // (hashlib.sha384 over the records above; kept as a regression anchor).
        assert_eq!(
            expected.to_hex(),
            "8ebae0b2d7c9dd96dd07098a603e711a05b5bc6769bcd8570c203d7765c4f4171286f3834eca897b603cfccbb6a9d160"
        );
        // The other page order gives another value.
        assert_ne!(
            mr_td(&fw, PageAddOrder::AddAllThenExtend).unwrap(),
            expected
        );
        // One byte of the BFV changes MRTD; one byte of the CFV (not extended) does not.
        let mut f = fw.clone();
        f[0x1234] ^= 1;
        assert_ne!(mr_td(&f, PageAddOrder::PerPage).unwrap(), expected);
        let mut f = fw.clone();
        f[0x2345] ^= 1;
        assert_eq!(mr_td(&f, PageAddOrder::PerPage).unwrap(), expected);
    }

    /// A real edk2 image, when one is on the machine: Debian's `ovmf` package (OvmfPkgX64, which
    /// carries TDVF metadata too) or the file named by `CHRYSALIS_TEST_TDVF`. Not committed.
    #[test]
    fn tdvf_metadata_of_a_real_firmware_image() {
        let path = std::env::var("CHRYSALIS_TEST_TDVF")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/usr/share/ovmf/OVMF.fd"));
        let Ok(fw) = std::fs::read(&path) else {
            return eprintln!(
                "SKIPPED: no edk2 image at {} (apt-get install ovmf)",
                path.display()
            );
        };
        let meta = TdvfMetadata::parse(&fw).unwrap();
        // The layout of OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm.
        let kinds: Vec<_> = meta.sections.iter().map(|s| s.section_type).collect();
        use TdvfSectionType::*;
        assert_eq!(
            kinds,
            [Bfv, Cfv, TempMem, TempMem, TdHob, TempMem],
            "{}",
            path.display()
        );
        assert!(meta.sections[0].extends_mrtd() && !meta.sections[1].extends_mrtd());
        let mrtd = mr_td(&fw, PageAddOrder::PerPage).unwrap();
        eprintln!("{}: MRTD {mrtd}", path.display());
    }

    #[test]
    fn bad_tdvf_images_are_refused_with_a_reason() {
        let fw = build_firmware(&SECTIONS);
        let mut f = fw.clone();
        f[FW_LEN - 48] ^= 1;
        assert!(matches!(
            mr_td(&f, PageAddOrder::PerPage),
            Err(MeasureError::NoOvmfTable(_))
        ));
        let mut f = fw.clone();
        f[FW_LEN - 32 - 34] ^= 1; // the TDX GUID
        assert_eq!(
            mr_td(&f, PageAddOrder::PerPage),
            Err(MeasureError::NoTdxMetadata)
        );
        let mut f = fw.clone();
        f[META_AT] = b'X';
        let err = mr_td(&f, PageAddOrder::PerPage).unwrap_err();
        assert!(
            matches!(
                err,
                MeasureError::BadTdvfMetadata {
                    offset: META_AT,
                    ..
                }
            ),
            "{err}"
        );
        // A BFV reaching past the image, a misaligned address, an unknown type.
        for (i, bad) in [
            (0, (0xF000u32, 0x2000u32, BFV_GPA, 0x2000u64, 0u32, 1u32)),
            (1, (0x2000, 0x1000, BFV_GPA + 0x2100, 0x1000, 1, 0)),
            (3, (0, 0, 0x80_A000, 0x2000, 7, 0)),
        ] {
            let mut s = SECTIONS;
            s[i] = bad;
            let err = mr_td(&build_firmware(&s), PageAddOrder::PerPage).unwrap_err();
            assert!(matches!(err, MeasureError::BadTdvfMetadata { .. }), "{err}");
            assert!(err.to_string().contains(&format!("section {i}")), "{err}");
        }
        // A TD HOB that asks to be extended cannot be predicted.
        let mut s = SECTIONS;
        s[2].5 = 1;
        assert!(matches!(
            mr_td(&build_firmware(&s), PageAddOrder::PerPage),
            Err(MeasureError::UnpredictableSection { index: 2, .. })
        ));
        assert!(mr_td(&[0u8; 10], PageAddOrder::PerPage).is_err());
    }

    #[test]
    fn corrupted_tdvf_images_are_ok_or_err_never_a_panic() {
        let fw = build_firmware(&SECTIONS);
        let meta_len = 16 + 32 * SECTIONS.len();
        let positions = (META_AT..META_AT + meta_len).chain(FW_LEN - 72..FW_LEN);
        let mut f = fw.clone();
        for i in positions {
            for mask in [0x01u8, 0x80, 0xFF] {
                f[i] ^= mask;
                let _ = mr_td(&f, PageAddOrder::PerPage);
                f[i] ^= mask;
            }
        }
        for cut in (0..FW_LEN).step_by(97) {
            let _ = mr_td(&fw[cut..], PageAddOrder::PerPage);
            let _ = mr_td(&fw[..cut], PageAddOrder::PerPage);
        }
    }

    // ---- direct boot ----------------------------------------------------------------------

    fn utf16z(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect()
    }

    #[test]
    fn load_options_are_the_utf16_buffer_ovmf_builds() {
        assert_eq!(
            load_options("console=ttyS0", true).unwrap(),
            utf16z("console=ttyS0 initrd=initrd")
        );
        assert_eq!(
            load_options("console=ttyS0", false).unwrap(),
            utf16z("console=ttyS0")
        );
        assert_eq!(load_options("", true).unwrap(), utf16z(" initrd=initrd"));
        assert_eq!(load_options("", false).unwrap(), Vec::<u8>::new());
        // Bytes are widened one by one, as edk2's %a does: UTF-8 "é" is two code units.
        assert_eq!(
            load_options("é", false).unwrap(),
            vec![0xC3, 0, 0xA9, 0, 0, 0]
        );
        assert!(matches!(
            load_options("a\0b", false),
            Err(MeasureError::BadCommandLine(_))
        ));
    }

    fn inputs<'a>(
        fw: &'a [u8],
        kernel: &'a [u8],
        initrd: &'a [u8],
        cmdline: &'a str,
    ) -> TdxBootInputs<'a> {
        TdxBootInputs {
            firmware: fw,
            kernel,
            initrd: Some(initrd),
            cmdline,
            rtmr0: Rtmr0Source::Pinned(Measurement([7; 48])),
            page_add_order: PageAddOrder::default(),
        }
    }

    #[test]
    fn expected_registers_follow_the_documented_event_sequence() {
        let (fw, kernel, initrd) = (
            build_firmware(&SECTIONS),
            build_pe(10),
            b"070701 an initrd".to_vec(),
        );
        let cmdline = "console=ttyS0 root=/dev/vda";
        let e = expected_tdx(&inputs(&fw, &kernel, &initrd, cmdline)).unwrap();

        let rtmr1 = [
            hand_authenticode(&kernel),
            sha384(b"Calling EFI Application from Boot Option"),
            sha384(&[0, 0, 0, 0]),
            sha384(b"Exit Boot Services Invocation"),
            sha384(b"Exit Boot Services Returned with Success"),
        ]
        .iter()
        .fold(Measurement::ZERO, |r, d| extend(&r, d));
        let rtmr2 = [
            sha384(&utf16z("console=ttyS0 root=/dev/vda initrd=initrd")),
            sha384(&initrd),
        ]
        .iter()
        .fold(Measurement::ZERO, |r, d| extend(&r, d));
        assert_eq!(e.registers.rtmr[1], rtmr1);
        assert_eq!(e.registers.rtmr[2], rtmr2);
        assert_eq!(e.registers.rtmr[3], Measurement::ZERO);
        assert_eq!(e.rtmr0(), Some(Measurement([7; 48])));
        assert_eq!(
            e.registers.mr_td,
            mr_td(&fw, PageAddOrder::PerPage).unwrap()
        );

        let kinds: Vec<(Register, EventType)> = e
            .events
            .iter()
            .map(|ev| (ev.register, ev.event_type))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Register::Rtmr1, EventType::EV_EFI_BOOT_SERVICES_APPLICATION),
                (Register::Rtmr1, EventType::EV_EFI_ACTION),
                (Register::Rtmr1, EventType::EV_SEPARATOR),
                (Register::Rtmr2, EventType::EV_EVENT_TAG),
                (Register::Rtmr2, EventType::EV_EVENT_TAG),
                (Register::Rtmr1, EventType::EV_EFI_ACTION),
                (Register::Rtmr1, EventType::EV_EFI_ACTION),
            ]
        );
        assert_eq!(
            e.events[0].description,
            "PE image, 1616 bytes, link-time base 0x10000, VenMedia(1428F772-B64A-441E-B8C3-9EBDD7F893C7)/kernel"
        );
        assert_eq!(
            e.events[3].description,
            "tag 0x8F3B22ED: LOADED_IMAGE::LoadOptions"
        );
        assert_eq!(e.events[4].description, "tag 0x8F3B22EC: Linux initrd");
        let json = serde_json::to_value(&e).unwrap();
        for key in ["mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "events"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(
            format!("{:?}", inputs(&fw, &kernel, &initrd, cmdline)).contains("kernel_len: 1616")
        );
    }

    #[test]
    fn one_changed_byte_changes_exactly_the_registers_it_should() {
        let (fw, kernel, initrd) = (build_firmware(&SECTIONS), build_pe(10), vec![0x5A; 4096]);
        let cmdline = "console=ttyS0 chrysalis.rootfs=0123abcd";
        let base = expected_tdx(&inputs(&fw, &kernel, &initrd, cmdline)).unwrap();
        let regs = |e: &ExpectedTdx| {
            let [r0, r1, r2, r3] = e.registers.rtmr;
            [e.registers.mr_td, r0, r1, r2, r3]
        };
        let changed = |e: &ExpectedTdx| -> Vec<&str> {
            let names = ["mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"];
            regs(e)
                .iter()
                .zip(regs(&base))
                .zip(names)
                .filter(|((a, b), _)| *a != b)
                .map(|(_, n)| n)
                .collect()
        };

        let mut k = kernel.clone();
        k[0x300] ^= 1;
        assert_eq!(
            changed(&expected_tdx(&inputs(&fw, &k, &initrd, cmdline)).unwrap()),
            ["rtmr1"]
        );
        let mut i = initrd.clone();
        i[100] ^= 1;
        assert_eq!(
            changed(&expected_tdx(&inputs(&fw, &kernel, &i, cmdline)).unwrap()),
            ["rtmr2"]
        );
        let c = "console=ttyS0 chrysalis.rootfs=0123abce";
        assert_eq!(
            changed(&expected_tdx(&inputs(&fw, &kernel, &initrd, c)).unwrap()),
            ["rtmr2"]
        );
        let mut f = fw.clone();
        f[0x10] ^= 1;
        assert_eq!(
            changed(&expected_tdx(&inputs(&f, &kernel, &initrd, cmdline)).unwrap()),
            ["mr_td"]
        );
        // Bytes the firmware does not measure change nothing: the PE checksum, the CFV.
        let mut k = kernel.clone();
        k[CHECKSUM_AT] ^= 1;
        assert!(changed(&expected_tdx(&inputs(&fw, &k, &initrd, cmdline)).unwrap()).is_empty());
        let mut f = fw.clone();
        f[0x2010] ^= 1;
        assert!(changed(&expected_tdx(&inputs(&f, &kernel, &initrd, cmdline)).unwrap()).is_empty());
    }

    #[test]
    fn initrd_presence_and_noinitrd_follow_ovmf_and_the_stub() {
        let kernel = build_pe(10);
        let types = |initrd: Option<&[u8]>, cmdline: &str| -> Vec<String> {
            direct_boot_events(&kernel, initrd, cmdline)
                .unwrap()
                .into_iter()
                .filter(|e| e.register == Register::Rtmr2)
                .map(|e| e.description)
                .collect()
        };
        let both = [
            "tag 0x8F3B22ED: LOADED_IMAGE::LoadOptions",
            "tag 0x8F3B22EC: Linux initrd",
        ];
        assert_eq!(types(Some(b"x"), "quiet"), both);
        assert_eq!(types(Some(b""), "quiet"), &both[..1]); // an empty initrd is no initrd
        assert_eq!(types(None, ""), Vec::<String>::new()); // no LoadOptions at all
        assert_eq!(types(Some(b"x"), "quiet noinitrd"), &both[..1]);
        assert_eq!(types(Some(b"x"), "foo=\"a noinitrd\""), both);
        assert_eq!(types(Some(b"x"), "quiet -- noinitrd"), both);
        // OVMF appends " initrd=initrd" whatever the stub later decides.
        let ev = direct_boot_events(&kernel, Some(b"x"), "noinitrd").unwrap();
        assert_eq!(ev[3].digest, sha384(&utf16z("noinitrd initrd=initrd")));
    }

    /// The constant events this module predicts must be byte-identical (register, type, digest,
    /// data) to the ones TDVF logged on real hardware.
    #[test]
    fn constant_events_match_the_recorded_ccel() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testvectors/tdx-ccel/ccel_data.dat");
        let ccel = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true but {} is unreadable: {e}", path.display())
            }
            Err(e) => return eprintln!("SKIPPED: {} unreadable ({e})", path.display()),
        };
        let log = EventLog::parse(&ccel).unwrap();
        let predicted = direct_boot_events(&build_pe(10), Some(b"x"), "").unwrap();
        for p in predicted.iter().filter(|p| {
            matches!(
                p.event_type,
                EventType::EV_EFI_ACTION | EventType::EV_SEPARATOR
            )
        }) {
            assert!(log.events.contains(p), "not in the recorded log: {p:?}");
        }
        // The recorded kernel-image event decodes to the same shape of description.
        let image = log
            .events
            .iter()
            .find(|e| e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION)
            .unwrap();
        assert!(
            image.description.starts_with("PE image, "),
            "{}",
            image.description
        );
    }

    #[test]
    fn ovmf_table_walk_finds_entries_in_order() {
        let fw = build_firmware(&SECTIONS);
        let data = ovmf_table_entry(&fw, &TDX_METADATA_OFFSET_GUID)
            .unwrap()
            .unwrap();
        assert_eq!(data, ((FW_LEN - META_AT) as u32).to_le_bytes());
        assert_eq!(ovmf_table_entry(&fw, &[0; 16]).unwrap(), None);
        let mut f = fw.clone();
        f[FW_LEN - 32 - 36] = 0xFF; // entry length past the table
        assert!(matches!(
            ovmf_table_entry(&f, &[0; 16]),
            Err(MeasureError::NoOvmfTable(_))
        ));
    }
}
