//! Image builder.
//!
//! * [`firmware`]: the confidential-VM firmware (OVMF for SEV-SNP, TDVF for TDX) built
//!   reproducibly from Debian's pinned edk2 source package, cached by a key over all its inputs.
//! * [`initramfs`]: the deterministic initramfs (static guest init + kernel modules).
//! * [`vm`]: booting an image under QEMU TCG for smoke tests.
#![forbid(unsafe_code)]

pub mod firmware;
pub mod initramfs;
pub mod vm;
