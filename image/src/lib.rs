//! Image builder.
//!
//! * [`firmware`]: the confidential-VM firmware (OVMF for SEV-SNP, TDVF for TDX) built
//!   reproducibly from Debian's pinned edk2 source package, cached by a key over all its inputs.
#![forbid(unsafe_code)]

pub mod firmware;
