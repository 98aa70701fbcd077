//! Measurement precomputation and event-log replay: what a reviewer needs to recompute, offline,
//! the registers a confidential VM reports, and to explain a difference event by event.
//!
//! * [`eventlog`]: parse a TCG2 crypto-agile event log (the TDX CCEL area) and replay it into
//!   RTMR0-3. Checked against real hardware evidence: a recorded CCEL replays to exactly the
//!   RTMRs of the quote taken in the same boot.
//! * [`tdx`]: expected MRTD, RTMR1, RTMR2 and RTMR3 for a TDVF (edk2 `OvmfPkg/IntelTdx`) direct
//!   kernel boot under QEMU, and the events the firmware and the Linux EFI stub log on the way.
//! * [`rtmr0`]: expected RTMR0 (TD HOB, CFV, secure-boot and boot variables, QEMU's ACPI tables)
//!   and its events; [`tdx_acpi`]: the QEMU releases, machine types and VM shapes whose ACPI
//!   tables were captured, and those tables.
//! * [`snp`]: the SEV-SNP launch digest (through the sev crate's measurement module).
//! * [`image`]: both, for a chrysalis image: a manifest, its verified artifact bytes and a list
//!   of VM shapes (with the documented defaults) give the manifest's `expected_measurements`.
//! * [`explain`]: a quote and its event log against an image's expectation, register by register
//!   and event by event, naming the artifact or setting each event comes from.
//!
//! Everything here is a pure function of the bytes the caller passes in: no files, no clock.

pub mod eventlog;
pub mod explain;
pub mod image;
pub mod rtmr0;
pub mod snp;
pub mod tdx;
pub mod tdx_acpi;

use thiserror::Error;

/// Why expected measurements could not be computed from the given artifacts.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeasureError {
    /// The firmware image has no OVMF GUIDed table footer (or it is malformed), so the
    /// TDX metadata cannot be located.
    #[error("firmware image has no usable OVMF GUID table: {0}")]
    NoOvmfTable(String),
    /// The OVMF GUID table has no TDX metadata offset entry: not a TDVF (IntelTdx) build.
    #[error(
        "firmware image has no TDX metadata offset entry (GUID e47a6535-984a-4798-865e-4685a7bf8ec2); not a TDVF build"
    )]
    NoTdxMetadata,
    /// The TDVF metadata descriptor or one of its sections is invalid.
    #[error("invalid TDVF metadata at firmware offset {offset:#x}: {reason}")]
    BadTdvfMetadata {
        /// Byte offset in the firmware image of the descriptor or section at fault.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A TDVF section asks for something whose measurement cannot be predicted offline
    /// (for example a TD HOB section with the MR.EXTEND attribute: its content is built by the VMM).
    #[error("TDVF section {index} ({kind}) cannot be measured offline: {reason}")]
    UnpredictableSection {
        /// Index of the section in the metadata.
        index: usize,
        /// Section type name.
        kind: String,
        /// Why its measurement depends on run-time data.
        reason: String,
    },
    /// The kernel is not a PE/COFF image whose Authenticode digest the firmware could compute
    /// (no EFI stub, or a malformed header).
    #[error("kernel is not a measurable PE/COFF image: {0}")]
    BadKernelImage(String),
    /// The kernel command line cannot be passed by QEMU and OVMF as given.
    #[error("kernel command line rejected: {0}")]
    BadCommandLine(String),
}
