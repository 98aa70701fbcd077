//! The QEMU versions, machine types and TDX VM shapes whose ACPI tables the RTMR0 calculator
//! knows, and those tables: the fw_cfg files (`etc/table-loader`, `etc/acpi/rsdp`,
//! `etc/acpi/tables`) captured from the real QEMU binary.
//!
//! # How the files were obtained
//!
//! Captured, not modelled: QEMU started with the `tdx` profile's machine and device options and,
//! as firmware, a 203-byte real-mode program (`data/tdx-acpi/fwcfg-dump.asm`) that reads the
//! fw_cfg file directory and every file through the fw_cfg I/O ports (selector 0x510, data
//! 0x511), as TDVF reads them, and streams them to a debugcon port ([`capture_args`]). The first
//! read of an ACPI file triggers QEMU's one-time table rebuild (`acpi_build_update`), as TDVF's
//! does, and QEMU builds that from the chipset state the firmware left: so the program first
//! writes what OVMF's `PlatformInitLib` writes before the tables are read (MCH PCIEXBAR =
//! 0xB0000000, 256 MiB, enabled, which adds the MCFG table and moves the 32-bit PCI hole; ICH9
//! PMBASE = 0x600 with ACPI decoding on, which the FADT's PM blocks point to). Without these
//! writes QEMU serves tables without MCFG. The provenance (QEMU `--version`, the argv) is in
//! `data/tdx-acpi/<qemu>/<machine>/README.md`, and the test `attestation/tests/tdx_acpi_capture.rs`
//! captures again and compares byte for byte whenever a QEMU binary of the recorded version is
//! on the machine (`CHRYSALIS_QEMU` or `qemu-system-x86_64` in PATH);
//! `CHRYSALIS_WRITE_TDX_ACPI=1` writes the files instead.
//!
//! # Differences from a TDX launch, and why they do not change the tables
//!
//! * No `tdx-guest` object and TCG instead of KVM: QEMU 10.0 has no TDX support (it arrived in
//!   10.1), and this machine has no TDX hardware. TDX makes QEMU force `smm=off` and `pic=off`
//!   (QEMU 10.1 `target/i386/kvm/tdx.c` `tdx_kvm_init`) and requires `kernel-irqchip=split`;
//!   the capture passes `smm=off,pic=off` explicitly (under TCG QEMU would otherwise enable
//!   SMM, which changes the FADT and DSDT). The split irqchip is a KVM setting with no TCG
//!   equivalent. That nothing else TDX-specific reaches the tables is read from QEMU source, not
//!   shown by a capture (see docs/measurements.md).
//! * A debugcon ISA device (port 0xe9) carries the output; it has no ACPI description, and
//!   `memory-backend-ram` with `reserve=off` replaces the default RAM backend so that a
//!   128 GiB shape starts on a small machine. A 2 GiB capture with the default backend gives
//!   the same files.
//! * `vhost-vsock-pci` needs `/dev/vhost-vsock`; the capture puts a `virtio-rng-pci` with the
//!   same options in its slot. A device on the q35 root bus appears in the DSDT only as a slot
//!   (`_ADR`), without its class or type, and the capture test shows this by capturing the same
//!   shape with two different substitutes and getting identical files.
//! * Disks are `null-co` block devices: the backing file does not reach ACPI.
//! * The tables are read before anything programs PCI BARs. QEMU's PCI0 `_CRS` covers the
//!   64-bit window from the BARs mapped above 4 GiB when the tables are built; a launch whose
//!   firmware maps a 64-bit BAR above 4 GiB before reading the tables (a GPU behind a PCIe
//!   root port does; the virtio devices on the root bus are not PCI Express and OVMF places
//!   them below 4 GiB) gets another DSDT. Shapes with GPUs are therefore not modelled.

use std::fmt;

use thiserror::Error;

use super::rtmr0::AcpiFiles;

/// A QEMU release (major.minor) and machine type whose ACPI tables are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QemuMachine {
    /// QEMU major.minor, as `qemu-system-x86_64 --version` starts ("10.0").
    pub qemu_version: &'static str,
    /// The full QEMU version the tables were captured with ("10.0.2").
    pub captured_with: &'static str,
    /// The versioned machine type ("pc-q35-10.0"): its ACPI tables do not drift with QEMU's
    /// default `q35` alias.
    pub machine_type: &'static str,
}

impl fmt::Display for QemuMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QEMU {} {}", self.qemu_version, self.machine_type)
    }
}

/// The machine options of the `tdx` profile besides the machine type, in the order the
/// launcher passes them: `hpet=off` (the HPET is a host-controlled clock, and its table enters
/// RTMR0), and the SMM/PIC settings TDX forces anyway, made explicit.
pub const TDX_MACHINE_OPTIONS: &str = "hpet=off,smm=off,pic=off";

/// The QEMU release and machine type the `tdx` profile launches with: the one entry of
/// [`SUPPORTED_TDX_VMMS`] the launcher pins (`-machine pc-q35-10.0,...` followed by
/// [`TDX_MACHINE_OPTIONS`]) and checks `qemu --version` against (major.minor).
pub const TDX_VMM: QemuMachine = QemuMachine {
    qemu_version: "10.0",
    captured_with: "10.0.2",
    machine_type: "pc-q35-10.0",
};

/// Every (QEMU release, machine type) the RTMR0 calculator has ACPI tables for.
pub const SUPPORTED_TDX_VMMS: &[QemuMachine] = &[TDX_VMM];

/// A TDX VM shape as far as the ACPI tables and TD HOB depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AcpiShape {
    /// vCPUs (`-smp`).
    pub vcpus: u32,
    /// Memory in MiB (`-m`).
    pub memory_mib: u64,
    /// VFIO GPUs behind PCIe root ports.
    pub gpus: u32,
}

impl fmt::Display for AcpiShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPU, {} MiB", self.vcpus, self.memory_mib)?;
        if self.gpus > 0 {
            write!(f, ", {} GPU", self.gpus)?;
        }
        Ok(())
    }
}

/// One captured set of fw_cfg files (see [`decode`] for the container format).
struct Captured {
    vmm: QemuMachine,
    vcpus: u32,
    memory_mib: u64,
    data: &'static [u8],
}

macro_rules! captured {
    ($vmm:expr, $dir:literal, $($vcpus:literal x $mib:literal),* $(,)?) => {
        &[$(Captured {
            vmm: $vmm,
            vcpus: $vcpus,
            memory_mib: $mib,
            data: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/data/tdx-acpi/", $dir, "/",
                stringify!($vcpus), "cpu-", stringify!($mib), "mib.fwcfg"
            )),
        }),*]
    };
}

static CAPTURED: &[Captured] = captured!(
    TDX_VMM,
    "qemu-10.0/pc-q35-10.0",
    2 x 2048,
    2 x 4096,
    8 x 65536,
    16 x 131072,
);

/// Why no ACPI tables are known for a VMM and shape. Never a silent "any RTMR0".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsupportedVmm {
    /// The QEMU release or machine type is not one whose tables were captured.
    #[error(
        "RTMR0 is not modelled for QEMU {qemu_version} machine {machine_type}: supported are {supported}"
    )]
    Machine {
        /// The QEMU release asked for.
        qemu_version: String,
        /// The machine type asked for.
        machine_type: String,
        /// The supported pairs.
        supported: String,
    },
    /// The shape was not captured for this QEMU and machine type.
    #[error(
        "RTMR0 is not modelled for a TDX VM of {shape} under {vmm}: modelled shapes are {supported}"
    )]
    Shape {
        /// The shape asked for.
        shape: AcpiShape,
        /// The VMM.
        vmm: QemuMachine,
        /// The shapes that are modelled.
        supported: String,
    },
}

/// Looks up a supported (QEMU release, machine type) pair.
pub fn find_vmm(qemu_version: &str, machine_type: &str) -> Result<QemuMachine, UnsupportedVmm> {
    SUPPORTED_TDX_VMMS
        .iter()
        .find(|m| m.qemu_version == qemu_version && m.machine_type == machine_type)
        .copied()
        .ok_or_else(|| UnsupportedVmm::Machine {
            qemu_version: qemu_version.into(),
            machine_type: machine_type.into(),
            supported: SUPPORTED_TDX_VMMS
                .iter()
                .map(|m| format!("QEMU {} {}", m.qemu_version, m.machine_type))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The shapes captured for `vmm`.
pub fn supported_shapes(vmm: &QemuMachine) -> Vec<AcpiShape> {
    CAPTURED
        .iter()
        .filter(|c| c.vmm == *vmm)
        .map(|c| AcpiShape {
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
            gpus: 0,
        })
        .collect()
}

/// The fw_cfg files QEMU `vmm` serves a TDX guest of `shape`, or why they are not known.
pub fn acpi_files(vmm: &QemuMachine, shape: &AcpiShape) -> Result<AcpiFiles, UnsupportedVmm> {
    let vmm = find_vmm(vmm.qemu_version, vmm.machine_type)?;
    CAPTURED
        .iter()
        .find(|c| {
            c.vmm == vmm
                && c.vcpus == shape.vcpus
                && c.memory_mib == shape.memory_mib
                && shape.gpus == 0
        })
        .map(|c| decode(c.data).expect("captured fw_cfg data is well-formed (tested)"))
        .ok_or_else(|| UnsupportedVmm::Shape {
            shape: *shape,
            vmm,
            supported: supported_shapes(&vmm)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
}

/// The QEMU arguments the capture uses for `vmm` and `shape` (after the binary): the `tdx`
/// profile's machine and device options with the substitutions the module docs list, run under
/// TCG with `dumper` (the 64 KiB fw_cfg dumper, `data/tdx-acpi/fwcfg-dump.asm`) as `-bios`,
/// writing to the file `out` through an ISA debugcon at port 0xe9. `vsock_substitute` is the
/// device put in the vhost-vsock slot.
pub fn capture_args(
    vmm: &QemuMachine,
    shape: &AcpiShape,
    vsock_substitute: &str,
    dumper: &str,
    out: &str,
) -> Vec<String> {
    let mib = shape.memory_mib;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-accel",
        "tcg",
    ]);
    push(&[
        "-machine",
        &format!(
            "{},{TDX_MACHINE_OPTIONS},memory-backend=ram0",
            vmm.machine_type
        ),
    ]);
    // reserve=off: a 128 GiB guest must start on a small machine; the backend does not reach ACPI.
    push(&[
        "-object",
        &format!("memory-backend-ram,id=ram0,size={mib}M,reserve=off"),
    ]);
    push(&["-smp", &shape.vcpus.to_string(), "-m", &format!("{mib}M")]);
    push(&["-bios", dumper]);
    push(&["-chardev", &format!("file,id=dump,path={out}")]);
    push(&["-device", "isa-debugcon,iobase=0xe9,chardev=dump"]);
    for id in ["rootfs", "model", "config"] {
        push(&[
            "-blockdev",
            &format!("driver=null-co,node-name={id},read-only=on"),
        ]);
        push(&[
            "-device",
            &format!("virtio-blk-pci,drive={id},serial={id},disable-legacy=on,iommu_platform=on"),
        ]);
    }
    push(&[
        "-device",
        &format!("{vsock_substitute},disable-legacy=on,iommu_platform=on"),
    ]);
    a
}

/// The container of one captured set: per file, its fw_cfg name (NUL-terminated), its size as
/// QEMU serves it (u32 LE), the number of bytes stored (u32 LE, trailing zeros trimmed), the
/// stored bytes. `etc/table-loader` must be one of the files.
pub fn decode(data: &[u8]) -> Result<AcpiFiles, String> {
    let mut rest = data;
    let mut loader = None;
    let mut files = Vec::new();
    while !rest.is_empty() {
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("file name not NUL-terminated")?;
        let name = std::str::from_utf8(&rest[..nul]).map_err(|_| "file name is not UTF-8")?;
        rest = &rest[nul + 1..];
        if rest.len() < 8 {
            return Err(format!("{name}: truncated header"));
        }
        let size = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let stored = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        rest = &rest[8..];
        if stored > size || stored > rest.len() {
            return Err(format!(
                "{name}: stored {stored} of {size} bytes, {} left",
                rest.len()
            ));
        }
        let mut bytes = rest[..stored].to_vec();
        bytes.resize(size, 0);
        rest = &rest[stored..];
        if name == "etc/table-loader" {
            loader = Some(bytes);
        } else {
            files.push((name.to_owned(), bytes));
        }
    }
    Ok(AcpiFiles {
        table_loader: loader.ok_or("no etc/table-loader")?,
        files,
    })
}

/// Encodes files in the [`decode`] format.
pub fn encode(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        let stored = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&(stored as u32).to_le_bytes());
        out.extend_from_slice(&bytes[..stored]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_captured_set_decodes_and_has_a_loader_naming_its_blobs() {
        for c in CAPTURED {
            let files = decode(c.data).unwrap();
            let allocated = files.allocated().unwrap();
            let names: Vec<&str> = allocated.iter().map(|(n, _)| *n).collect();
            assert!(names.contains(&"etc/acpi/tables"), "{names:?}");
            assert!(names.contains(&"etc/acpi/rsdp"), "{names:?}");
            let (_, rsdp) = allocated
                .iter()
                .find(|(n, _)| *n == "etc/acpi/rsdp")
                .unwrap();
            assert_eq!(&rsdp[..8], b"RSD PTR ");
        }
    }

    #[test]
    fn encode_decode_round_trip_keeps_padded_sizes() {
        let files = vec![
            ("etc/table-loader".to_string(), vec![1, 0, 0, 0, 0, 0]),
            ("etc/acpi/tables".to_string(), vec![9; 3]),
        ];
        let back = decode(&encode(&files)).unwrap();
        assert_eq!(back.table_loader, files[0].1);
        assert_eq!(back.files, vec![files[1].clone()]);
        assert!(decode(b"etc/x").is_err());
    }

    #[test]
    fn unsupported_qemu_machine_or_shape_is_an_error_naming_it() {
        let e = find_vmm("9.2", "pc-q35-9.2").unwrap_err().to_string();
        assert!(e.contains("QEMU 9.2 machine pc-q35-9.2"), "{e}");
        assert!(e.contains("QEMU 10.0 pc-q35-10.0"), "{e}");
        let q35 = QemuMachine {
            machine_type: "q35",
            ..TDX_VMM
        };
        assert!(acpi_files(&q35, &supported_shapes(&TDX_VMM)[0]).is_err());
        let odd = AcpiShape {
            vcpus: 3,
            memory_mib: 3000,
            gpus: 0,
        };
        let e = acpi_files(&TDX_VMM, &odd).unwrap_err().to_string();
        assert!(e.contains("3 vCPU, 3000 MiB"), "{e}");
        assert!(e.contains("2 vCPU, 2048 MiB"), "{e}");
        let gpu = AcpiShape {
            gpus: 1,
            ..supported_shapes(&TDX_VMM)[0]
        };
        let e = acpi_files(&TDX_VMM, &gpu).unwrap_err().to_string();
        assert!(e.contains("1 GPU"), "{e}");
    }
}
