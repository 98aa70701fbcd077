//! Image builder.

pub mod initramfs;
pub mod vm;
