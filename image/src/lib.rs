//! chrysalis-image: the reproducible guest image builder's library.
//!
//! An image is made from pinned inputs only, and two builds from the same lock give the same bytes:
//!
//! ```text
//!  image/flavors/cpu.toml ──`cargo xtask image lock`──▶ image/locks/cpu.lock (every input by sha256)
//!                                                           │
//!                        downloads ─▶ Cache (content-addressed, verified on every use)
//!                                                           │
//!   build root (mmdebstrap of locked .debs) ─▶ Sandbox (bwrap: fixed paths, no network, clean env)
//!        │ gcc/cmake/pip: llama-cpp-python wheel     │ cargo: chrysalis-guest (links libpython3.13)
//!        ▼                                            ▼
//!   rootfs Stage (locked .debs unpacked, no maintainer scripts) + venv + runtime + engine adapters
//!        │ mkfs.erofs (fixed time, uid, uuid)  ─▶ veritysetup (salt from content) ─▶ verify_tree
//!        ▼
//!   rootfs.img, model.img (+ trees), guest.toml, vmlinuz, initramfs ─▶ kernel command line ─▶ Manifest
//! ```
//!
//! The pipeline itself (steps, progress, timing) lives in `xtask`; this crate holds the parts with rules
//! worth testing: lock parsing and validation ([`Lock`]), the flavor format ([`Flavor`]), the cache
//! ([`Cache`]), unpacking .debs ([`Stage`]), rootfs additions and erofs options ([`rootfs`]), dm-verity
//! ([`verity`], with the erofs + verity step itself, [`verity::erofs_with_verity`]), model packs
//! ([`modelpack`]: model files, or a Hugging Face directory checked by [`modelpack::hf_directory`]),
//! the command line ([`cmdline`]) and the manifest ([`Manifest`]), the initramfs ([`initramfs`]), the
//! firmware ([`firmware`]: OVMF for SEV-SNP and TDVF for TDX from Debian's pinned edk2 source) and TCG
//! smoke boots ([`vm`]). docs/image.md describes the image and its boot contract.

#![forbid(unsafe_code)]

pub mod apt;
pub mod cache;
pub mod deb;
pub mod digest;
pub mod firmware;
pub mod flavor;
pub mod initramfs;
pub mod lock;
pub mod modelpack;
pub mod pip;
pub mod rootfs;
pub mod sandbox;
pub mod verity;
pub mod vm;

/// The kernel command line format (shared with the guest init): see `chrysalis_attestation::bootargs`.
pub use chrysalis_attestation::bootargs as cmdline;
/// manifest.json (shared with hosts and clients): see `chrysalis_attestation::manifest`.
pub use chrysalis_attestation::manifest;

// The types most callers need, re-exported flat.
pub use cache::{Cache, CacheError};
pub use deb::{DebError, Stage};
pub use digest::Sha256Digest;
pub use flavor::{Flavor, FlavorError};
pub use lock::{Lock, LockError};
pub use manifest::{Manifest, ManifestError};
pub use verity::{VerityError, VerityParams};
