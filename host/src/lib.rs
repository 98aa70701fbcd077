//! # chrysalis-host
//!
//! The host agent a GPU owner runs next to a chrysalis confidential VM. It is untrusted by design:
//! it never holds a key and never sees plaintext. It launches and supervises the VM, relays
//! ciphertext between the public network and the guest's RA-TLS port, and answers the guest's
//! requests for (simulated) quotes and collateral.
//!
//! ```text
//!  client ──TCP──▶ relay ──Transport::connect(8443)──▶ guest RA-TLS server      (ciphertext only)
//!  guest ──vsock 2:4050 / 2:4051──▶ Transport::listen ──▶ services (sim quote, collateral)
//!  supervisor ──▶ vhost-device-vsock (sim) + QEMU (tdx | snp | sim), restarts with backoff
//!  admin (127.0.0.1) ──▶ /metrics (Prometheus), /status (JSON)
//! ```
//!
//! * [`config`]: `host.toml`, strict parsing and validation that names the offending key.
//! * [`image`]: the image's manifest.json (`chrysalis_attestation::manifest`) and its artifacts,
//!   checked by size and SHA-256 before launch.
//! * [`transport`]: the [`Transport`] trait and its AF_VSOCK, hybrid vsock and TCP implementations.
//! * [`relay`]: the TCP → guest relay (splice, half-close, idle timeout, connection cap, counters).
//! * [`launch`]: exact QEMU and vhost-device-vsock command lines per platform profile.
//! * [`supervisor`]: starts, restarts (exponential backoff) and stops the VM without orphans.
//! * [`services`]: guest→host services over the `hostcall` framing, behind the [`QuoteSigner`] seam.
//! * [`sim`]: the sim profile's quote signer: TDX measurements of the launched artifacts, quoted
//!   by the simulated Intel PKI.
//! * [`collateral`]: TDX collateral from a file or a PCCS, refreshed before `nextUpdate`.
//! * [`metrics`] and [`admin`]: counters, `/metrics` and `/status`.
//! * [`preflight`]: host prerequisites of a profile (KVM and TEE support, QEMU, QGS or SEV
//!   firmware, IOMMU, GPUs on vfio-pci in CC mode, memory, ports), each with its fix.
//! * [`agent`]: wires everything for `chrysalis-host run`.
#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod collateral;
pub mod config;
pub mod image;
pub mod launch;
pub mod metrics;
pub mod preflight;
pub mod relay;
pub mod services;
pub mod sim;
pub mod supervisor;
pub mod transport;

pub use agent::{AgentError, AgentOptions};
pub use chrysalis_attestation::manifest::ImageDir;
pub use config::{ConfigError, HostConfig, PlatformProfile};
pub use image::ImageError;
pub use launch::{CommandLine, LaunchError, LaunchPlan};
pub use metrics::Metrics;
pub use relay::{CopyMode, Direction, Observer, Relay, RelayConfig, RelayError};
pub use services::{
    Admission, LaunchedGuest, QuoteSigner, SimQuote, SimSnpEvidence, SnpReportSigner,
};
pub use sim::{SimMeasurements, SimSignerError, SimSnpMeasurements, SimSnpSigner, SimTdxSigner};
pub use supervisor::{Supervisor, VmState, VmStatus};
pub use transport::{
    GuestListener, GuestPeer, GuestStream, HybridVsockTransport, TcpTransport, Transport,
    TransportError, VsockTransport,
};
