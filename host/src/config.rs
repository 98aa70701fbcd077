//! `host.toml`: the agent's configuration, parsed strictly and validated with errors that name the key.
//!
//! Unknown keys are rejected (`deny_unknown_fields`), so a misspelt option is an error rather than
//! a silently ignored line. Relative paths are resolved against the directory of the config file.
//! See `host/host.example.toml` for an annotated example.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::relay::{CopyMode, RelayConfig};

/// Errors of the configuration area.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key and line).
    #[error("parsing {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{key}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `vm.memory_mib`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole `host.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `[image]`: which image to boot (required when the agent launches the VM).
    #[serde(default)]
    pub image: Option<ImageConfig>,
    /// `[vm]`: the VM's shape and platform.
    pub vm: VmConfig,
    /// `[qemu]`: the QEMU binary.
    #[serde(default)]
    pub qemu: QemuConfig,
    /// `[tdx]`: Intel TDX options.
    #[serde(default)]
    pub tdx: TdxConfig,
    /// `[snp]`: AMD SEV-SNP options.
    #[serde(default)]
    pub snp: SnpConfig,
    /// `[sim]`: simulation profile options.
    #[serde(default)]
    pub sim: SimConfig,
    /// `[transport]`: how the host reaches the guest's vsock ports.
    #[serde(default)]
    pub transport: TransportConfig,
    /// `[relay]`: the public ciphertext relay.
    #[serde(default)]
    pub relay: RelayToml,
    /// `[services]`: guest→host services.
    #[serde(default)]
    pub services: ServicesConfig,
    /// `[admin]`: the localhost admin endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[supervisor]`: restart policy.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
}

/// `[image]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The image's manifest.json; artifact paths in it are relative to its directory.
    pub manifest: PathBuf,
}

/// The confidential-computing platform profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlatformProfile {
    /// Intel TDX (QEMU ≥ 10.1, TDVF firmware).
    Tdx,
    /// AMD SEV-SNP (AmdSev OVMF firmware, kernel hashes).
    Snp,
    /// No TEE: plain q35 under TCG or KVM, vhost-user vsock; the host's sim quote service plays the hardware.
    Sim,
    /// As `sim`, but the sim service plays an AMD SEV-SNP PSP: it signs SNP reports with the
    /// simulated AMD PKI over the launch digest of the launched artifacts.
    SimSnp,
}

impl PlatformProfile {
    /// The profile's name as written in host.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformProfile::Tdx => "tdx",
            PlatformProfile::Snp => "snp",
            PlatformProfile::Sim => "sim",
            PlatformProfile::SimSnp => "sim-snp",
        }
    }

    /// True for the simulated profiles (`sim`, `sim-snp`): no TEE, the host signs the evidence.
    pub fn is_sim(self) -> bool {
        matches!(self, PlatformProfile::Sim | PlatformProfile::SimSnp)
    }
}

/// `[vm]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `tdx`, `snp` or `sim`.
    pub platform: PlatformProfile,
    /// Virtual CPUs (part of the SNP measurement).
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// GPUs passed through with VFIO, by PCI address (`0000:3b:00.0`); tdx and snp only.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// The guest's vsock context id (≥ 3).
    #[serde(default = "default_guest_cid")]
    pub guest_cid: u32,
    /// Where sockets, the serial log and QEMU's log go.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The VM's name (QEMU `-name`, log file names).
    #[serde(default = "default_vm_name")]
    pub name: String,
    /// Whether the agent launches the VM. `false` runs only the relay, services and admin endpoint,
    /// for a guest started some other way (development: a guest process on TCP ports).
    #[serde(default = "yes")]
    pub launch: bool,
}

fn default_guest_cid() -> u32 {
    3
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/chrysalis-host")
}
fn default_vm_name() -> String {
    "chrysalis".into()
}
fn yes() -> bool {
    true
}

/// `[qemu]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// The QEMU system emulator (a path, or a name looked up in PATH).
    #[serde(default = "default_qemu")]
    pub binary: PathBuf,
    /// Firmware loaded with `-bios`. tdx and snp boot the manifest's firmware (TDVF, AmdSev OVMF):
    /// leave this unset, or name a copy of that file (`check` and `run` refuse a file whose SHA-256
    /// differs from the manifest's). Optional for sim (default: QEMU's SeaBIOS).
    #[serde(default)]
    pub firmware: Option<PathBuf>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: default_qemu(),
            firmware: None,
        }
    }
}

fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

/// `[tdx]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxConfig {
    /// Where QEMU reaches the host's Quote Generation Service: `vsock:<cid>:<port>` or `unix:<path>`.
    #[serde(default = "default_qgs")]
    pub qgs: String,
}

impl Default for TdxConfig {
    fn default() -> Self {
        Self { qgs: default_qgs() }
    }
}

fn default_qgs() -> String {
    "vsock:2:4050".into()
}

/// The QGS address, parsed from [`TdxConfig::qgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QgsAddress {
    /// A vsock address (QGS's default is cid 2, port 4050).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

impl TdxConfig {
    /// Parses [`TdxConfig::qgs`].
    pub fn qgs_address(&self) -> Result<QgsAddress, ConfigError> {
        if let Some(path) = self.qgs.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("tdx.qgs", "unix: needs a socket path"));
            }
            return Ok(QgsAddress::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = self.qgs.strip_prefix("vsock:") {
            let mut it = rest.split(':');
            if let (Some(cid), Some(port), None) = (it.next(), it.next(), it.next())
                && let (Ok(cid), Ok(port)) = (cid.parse(), port.parse())
            {
                return Ok(QgsAddress::Vsock { cid, port });
            }
        }
        Err(invalid(
            "tdx.qgs",
            format!(
                "{:?} is neither vsock:<cid>:<port> nor unix:<path>",
                self.qgs
            ),
        ))
    }
}

/// `[snp]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpConfig {
    /// The guest policy (hex). Not covered by the launch digest: the report carries it and the
    /// manifest's SNP pins require exactly
    /// [`CHRYSALIS_GUEST_POLICY`](chrysalis_attestation::measure::snp::CHRYSALIS_GUEST_POLICY)
    /// (0x30000: SMT allowed, MIGRATE_MA and DEBUG off), so no other value is accepted.
    #[serde(default = "default_snp_policy")]
    pub policy: String,
    /// The C-bit position of the host CPU (51 on Milan, Genoa, Turin).
    #[serde(default = "default_cbitpos")]
    pub cbitpos: u32,
    /// Physical address bits lost to encryption.
    #[serde(default = "default_reduced_phys_bits")]
    pub reduced_phys_bits: u32,
    /// The vCPU model; its CPUID signature is part of the VMSA and thus of the measurement. Must be a
    /// named model (`EPYC-v4`, `EPYC-Milan`, ...), never `host`.
    #[serde(default = "default_snp_cpu")]
    pub cpu: String,
}

impl Default for SnpConfig {
    fn default() -> Self {
        Self {
            policy: default_snp_policy(),
            cbitpos: default_cbitpos(),
            reduced_phys_bits: default_reduced_phys_bits(),
            cpu: default_snp_cpu(),
        }
    }
}

fn default_snp_policy() -> String {
    format!(
        "{:#x}",
        chrysalis_attestation::measure::snp::CHRYSALIS_GUEST_POLICY
    )
}
fn default_cbitpos() -> u32 {
    51
}
fn default_reduced_phys_bits() -> u32 {
    1
}
fn default_snp_cpu() -> String {
    "EPYC-v4".into()
}

impl SnpConfig {
    /// Parses [`SnpConfig::policy`].
    pub fn policy_value(&self) -> Result<u64, ConfigError> {
        let digits = self
            .policy
            .strip_prefix("0x")
            .or_else(|| self.policy.strip_prefix("0X"));
        let parsed = match digits {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => self.policy.parse(),
        };
        let v = parsed
            .map_err(|_| invalid("snp.policy", format!("{:?} is not a number", self.policy)))?;
        // Bit 17 is reserved-must-be-one in the SNP ABI; bit 19 is DEBUG.
        if v & (1 << 17) == 0 {
            return Err(invalid(
                "snp.policy",
                "bit 17 (reserved, must be 1) is clear",
            ));
        }
        if v & (1 << 19) != 0 {
            return Err(invalid(
                "snp.policy",
                "bit 19 (DEBUG) is set; a debug guest cannot be attested",
            ));
        }
        Ok(v)
    }
}

/// The accelerator for the sim profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimAccel {
    /// KVM when `/dev/kvm` can be opened, TCG otherwise.
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// `[sim]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// `auto`, `kvm` or `tcg`.
    #[serde(default = "default_accel")]
    pub accel: SimAccel,
    /// The vhost-device-vsock binary (a path, or a name looked up in PATH).
    #[serde(default = "default_vhost_device_vsock")]
    pub vhost_device_vsock: PathBuf,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            accel: default_accel(),
            vhost_device_vsock: default_vhost_device_vsock(),
        }
    }
}

fn default_accel() -> SimAccel {
    SimAccel::Auto
}
fn default_vhost_device_vsock() -> PathBuf {
    PathBuf::from("vhost-device-vsock")
}

/// Which transport reaches the guest's vsock ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// AF_VSOCK (vhost-vsock in the host kernel).
    Vsock,
    /// Hybrid vsock over a Unix socket (vhost-device-vsock, Firecracker).
    Hybrid,
    /// TCP ports (development and tests).
    Tcp,
}

/// `[transport]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// `vsock`, `hybrid` or `tcp`; by default `vsock` for tdx/snp and `hybrid` for sim.
    #[serde(default)]
    pub kind: Option<TransportKind>,
    /// The hybrid multiplexer's Unix socket (default `<state_dir>/vsock.sock`).
    #[serde(default)]
    pub uds_path: Option<PathBuf>,
    /// TCP transport: the guest's address.
    #[serde(default)]
    pub tcp_host: Option<IpAddr>,
    /// TCP transport: guest vsock port p is TCP port p + offset.
    #[serde(default)]
    pub tcp_port_offset: i32,
}

/// `[relay]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayToml {
    /// The public address clients connect to.
    #[serde(default = "default_relay_listen")]
    pub listen: SocketAddr,
    /// The guest port connections are forwarded to (the guest's RA-TLS server).
    #[serde(default = "default_guest_port")]
    pub guest_port: u32,
    /// The most connections open at once; more are closed at once and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The most connections open at once from one IPv4 address or IPv6 /64.
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: usize,
    /// Seconds in which the guest delivers no byte to the client before a connection is closed
    /// (bytes from the client do not count: they would let a client that stopped reading hold
    /// its connection).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Milliseconds allowed to reach the guest port.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// `auto` (splice), `splice` or `userspace`.
    #[serde(default)]
    pub copy: CopyMode,
    /// User-space copy buffer per direction, KiB.
    #[serde(default = "default_buffer_kib")]
    pub buffer_kib: usize,
    /// What the kernel may hold per socket between the guest and a client that stopped reading,
    /// KiB (the client's send buffer, the guest socket's receive buffer, the splice pipe). Small
    /// enough that a stalled reader's stall reaches the guest, which then cuts the stream.
    #[serde(default = "default_socket_buffer_kib")]
    pub socket_buffer_kib: usize,
}

impl Default for RelayToml {
    fn default() -> Self {
        Self {
            listen: default_relay_listen(),
            guest_port: default_guest_port(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_per_source(),
            idle_timeout_secs: default_idle_timeout(),
            connect_timeout_ms: default_connect_timeout(),
            copy: CopyMode::Auto,
            buffer_kib: default_buffer_kib(),
            socket_buffer_kib: default_socket_buffer_kib(),
        }
    }
}

fn default_relay_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8443)
}
fn default_guest_port() -> u32 {
    chrysalis_attestation::hostcall::GUEST_TLS_PORT
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_per_source() -> usize {
    64
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_connect_timeout() -> u64 {
    5000
}
fn default_buffer_kib() -> usize {
    256
}
fn default_socket_buffer_kib() -> usize {
    128
}

impl RelayToml {
    /// The relay's runtime settings.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            guest_port: self.guest_port,
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            copy_mode: self.copy,
            buffer_size: self.buffer_kib * 1024,
            socket_buffer: self.socket_buffer_kib * 1024,
        }
    }
}

/// `[services]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// `[services.sim_quote]`.
    #[serde(default)]
    pub sim_quote: SimQuoteConfig,
    /// `[services.collateral]`.
    #[serde(default)]
    pub collateral: CollateralConfig,
}

/// `[services.sim_quote]`: the host plays the TDX hardware in the sim profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimQuoteConfig {
    /// Serve it (default: on for sim, and it may only be on for sim).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The host-side vsock port.
    #[serde(default = "default_sim_quote_port")]
    pub port: u32,
    /// The simulated PKI's seed, 64 hex digits; the same seed gives the same sim root a client pins.
    /// Default: `chrysalis_attestation::sim::DEFAULT_SEED`.
    #[serde(default)]
    pub seed_hex: Option<String>,
    /// A TDVF image to compute MRTD from when the manifest lists no `tdx` firmware.
    #[serde(default)]
    pub tdx_firmware: Option<PathBuf>,
    /// sim-snp: an AmdSev OVMF image to compute the launch digest from when the manifest lists
    /// no `snp` firmware.
    #[serde(default)]
    pub snp_firmware: Option<PathBuf>,
    /// sim-snp: the vCPU model whose CPUID signature the launch digest covers, as
    /// `chrysalis measure --platform snp --vcpu-type` names it. Default `EPYC-v4`.
    #[serde(default = "default_sim_snp_vcpu_type")]
    pub snp_vcpu_type: String,
    /// Seconds the simulated collateral (in each quote response and on the collateral port) stays
    /// valid after it is issued; it is reissued before then.
    #[serde(default = "default_sim_collateral_validity")]
    pub collateral_validity_secs: u64,
}

fn default_sim_snp_vcpu_type() -> String {
    "EPYC-v4".into()
}

fn default_sim_collateral_validity() -> u64 {
    3600
}

impl Default for SimQuoteConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            port: default_sim_quote_port(),
            seed_hex: None,
            tdx_firmware: None,
            snp_firmware: None,
            snp_vcpu_type: default_sim_snp_vcpu_type(),
            collateral_validity_secs: default_sim_collateral_validity(),
        }
    }
}

fn default_sim_quote_port() -> u32 {
    chrysalis_attestation::hostcall::SIM_QUOTE_PORT
}

/// `[services.collateral]`: TDX collateral served to the guest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralConfig {
    /// Serve it.
    #[serde(default)]
    pub enabled: bool,
    /// The host-side vsock port.
    #[serde(default = "default_collateral_port")]
    pub port: u32,
    /// Serve collateral from this JSON file (dcap-qvl's `QuoteCollateralV3` layout). With neither
    /// this nor `pccs_url`, the sim profile serves the simulated PKI's collateral.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Fetch collateral from this PCCS or PCS base URL (e.g. `https://pccs.example:8081`); no network
    /// access happens unless this is set.
    #[serde(default)]
    pub pccs_url: Option<String>,
    /// PEM bundle of CAs trusted for the PCCS's TLS certificate (default: the system bundle).
    #[serde(default)]
    pub pccs_ca_file: Option<PathBuf>,
    /// The platform's FMSPC, 12 hex digits (PCKIDRetrievalTool prints it); needed with `pccs_url`.
    #[serde(default)]
    pub fmspc: Option<String>,
    /// The PCK CA of the platform: `processor` (single-socket) or `platform` (multi-socket).
    #[serde(default = "default_pck_ca")]
    pub pck_ca: crate::collateral::PckCa,
    /// Refresh this many seconds before the earliest `nextUpdate`.
    #[serde(default = "default_refresh_margin")]
    pub refresh_margin_secs: u64,
}

impl Default for CollateralConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: default_collateral_port(),
            file: None,
            pccs_url: None,
            pccs_ca_file: None,
            fmspc: None,
            pck_ca: default_pck_ca(),
            refresh_margin_secs: default_refresh_margin(),
        }
    }
}

fn default_pck_ca() -> crate::collateral::PckCa {
    crate::collateral::PckCa::Processor
}
fn default_collateral_port() -> u32 {
    chrysalis_attestation::hostcall::COLLATERAL_PORT
}
fn default_refresh_margin() -> u64 {
    3600
}

/// `[admin]`: localhost HTTP for /metrics and /status.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A loopback address.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9181)
}

/// `[supervisor]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Consecutive failed runs before the VM is reported failed and left stopped.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The first restart delay, ms; doubled after each failed run.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// The longest restart delay, ms.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// A run that lasts this long counts as a successful boot (the failure streak and backoff reset).
    #[serde(default = "default_stable_after")]
    pub stable_after_secs: u64,
    /// How long QEMU gets to exit after SIGTERM before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
    /// Probe the guest port to report `ready` in /status.
    #[serde(default = "yes")]
    pub ready_probe: bool,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            stable_after_secs: default_stable_after(),
            stop_timeout_secs: default_stop_timeout(),
            ready_probe: true,
        }
    }
}

fn default_max_restarts() -> u32 {
    5
}
fn default_backoff_initial() -> u64 {
    1000
}
fn default_backoff_max() -> u64 {
    60_000
}
fn default_stable_after() -> u64 {
    60
}
fn default_stop_timeout() -> u64 {
    10
}

/// Whether `s` is a PCI address `DDDD:BB:DD.F` (domain, bus, device ≤ 0x1f, function ≤ 7).
fn is_pci_address(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split(':').collect();
    let [domain, bus, devfn] = parts[..] else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    hex(domain, 4)
        && hex(bus, 2)
        && hex(dev, 2)
        && u8::from_str_radix(dev, 16).is_ok_and(|d| d <= 0x1f)
        && func.len() == 1
        && func.parse::<u8>().is_ok_and(|f| f <= 7)
}

impl HostConfig {
    /// Reads, parses and validates `path`; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.into(),
                source,
            },
            other => other,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Absolute, so that QEMU and the helpers get paths that do not depend on a working directory.
        let base = std::path::absolute(base).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        cfg.resolve_relative_paths(&base);
        Ok(cfg)
    }

    /// Parses and validates TOML text (paths are left as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: HostConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<host.toml>"),
            source: Box::new(e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes every relative path absolute against `base`. Bare program names (`qemu-system-x86_64`)
    /// are left for PATH lookup.
    pub fn resolve_relative_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_program = |p: &mut PathBuf| {
            if p.is_relative() && p.components().count() > 1 {
                *p = base.join(&*p);
            }
        };
        if let Some(image) = &mut self.image {
            fix(&mut image.manifest);
        }
        fix(&mut self.vm.state_dir);
        fix_program(&mut self.qemu.binary);
        fix_program(&mut self.sim.vhost_device_vsock);
        for p in [
            &mut self.qemu.firmware,
            &mut self.transport.uds_path,
            &mut self.services.collateral.file,
            &mut self.services.collateral.pccs_ca_file,
            &mut self.services.sim_quote.tdx_firmware,
            &mut self.services.sim_quote.snp_firmware,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// The transport kind in effect (explicit, or the platform's default).
    pub fn transport_kind(&self) -> TransportKind {
        self.transport.kind.unwrap_or(match self.vm.platform {
            PlatformProfile::Tdx | PlatformProfile::Snp => TransportKind::Vsock,
            PlatformProfile::Sim | PlatformProfile::SimSnp => TransportKind::Hybrid,
        })
    }

    /// The hybrid multiplexer's Unix socket in effect.
    pub fn uds_path(&self) -> PathBuf {
        self.transport
            .uds_path
            .clone()
            .unwrap_or_else(|| self.vm.state_dir.join("vsock.sock"))
    }

    /// Whether the sim quote service runs.
    pub fn sim_quote_enabled(&self) -> bool {
        self.services
            .sim_quote
            .enabled
            .unwrap_or(self.vm.platform.is_sim())
    }

    /// Checks ranges and consistency; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let vm = &self.vm;
        if vm.launch && self.image.is_none() {
            return Err(invalid(
                "image.manifest",
                "is required when vm.launch = true",
            ));
        }
        if vm.memory_mib < 512 {
            return Err(invalid(
                "vm.memory_mib",
                format!("must be ≥ 512 (got {})", vm.memory_mib),
            ));
        }
        if vm.memory_mib > 16 * 1024 * 1024 {
            return Err(invalid(
                "vm.memory_mib",
                format!("must be ≤ 16777216 (got {})", vm.memory_mib),
            ));
        }
        if !(1..=512).contains(&vm.vcpus) {
            return Err(invalid(
                "vm.vcpus",
                format!("must be between 1 and 512 (got {})", vm.vcpus),
            ));
        }
        if vm.guest_cid < 3 || vm.guest_cid == u32::MAX {
            return Err(invalid(
                "vm.guest_cid",
                format!(
                    "must be ≥ 3 and < 4294967295; 0-2 are reserved (got {})",
                    vm.guest_cid
                ),
            ));
        }
        if vm.name.is_empty()
            || !vm
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "vm.name",
                "must be non-empty and use only letters, digits, '-' and '_'",
            ));
        }
        for gpu in &vm.gpus {
            if !is_pci_address(gpu) {
                return Err(invalid(
                    "vm.gpus",
                    format!("{gpu:?} is not a PCI address like 0000:3b:00.0"),
                ));
            }
        }
        if !vm.gpus.is_empty() && vm.platform.is_sim() {
            return Err(invalid(
                "vm.gpus",
                "GPU passthrough needs platform tdx or snp",
            ));
        }
        if vm.gpus.len() > 1 && vm.platform == PlatformProfile::Tdx {
            return Err(invalid(
                "vm.gpus",
                format!(
                    "{} GPUs listed; a TDX guest gets one GPU until more per TD is tested (run one VM per GPU)",
                    vm.gpus.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = vm
            .gpus
            .iter()
            .find(|g| !seen.insert(g.to_ascii_lowercase()))
        {
            return Err(invalid("vm.gpus", format!("{dup} is listed twice")));
        }
        if self.qemu.binary.as_os_str().is_empty() {
            return Err(invalid("qemu.binary", "must not be empty"));
        }
        match vm.platform {
            PlatformProfile::Tdx => {
                self.tdx.qgs_address()?;
            }
            PlatformProfile::Snp => {
                let policy = self.snp.policy_value()?;
                let pinned = chrysalis_attestation::measure::snp::CHRYSALIS_GUEST_POLICY;
                if policy != pinned {
                    return Err(invalid(
                        "snp.policy",
                        format!(
                            "{policy:#x} is not {pinned:#x}, the policy the image's SNP pins require (the policy is not part of the launch digest; clients check the report's policy field against the pin)"
                        ),
                    ));
                }
                if !(32..=63).contains(&self.snp.cbitpos) {
                    return Err(invalid(
                        "snp.cbitpos",
                        format!("must be between 32 and 63 (got {})", self.snp.cbitpos),
                    ));
                }
                if !(1..=63).contains(&self.snp.reduced_phys_bits) {
                    return Err(invalid("snp.reduced_phys_bits", "must be between 1 and 63"));
                }
                if self.snp.cpu.is_empty() || self.snp.cpu.contains(',') {
                    return Err(invalid(
                        "snp.cpu",
                        "must be a QEMU CPU model name without options",
                    ));
                }
                if self.snp.cpu.eq_ignore_ascii_case("host") {
                    return Err(invalid(
                        "snp.cpu",
                        "\"host\" cannot be measured: every VMSA carries the vCPU's CPUID signature, which with -cpu host is the host CPU's, so no launch digest can be published for it; name a model such as \"EPYC-v4\"",
                    ));
                }
                if self
                    .snp
                    .cpu
                    .parse::<chrysalis_attestation::measure::snp::SnpVcpuType>()
                    .is_err()
                {
                    return Err(invalid(
                        "snp.cpu",
                        format!(
                            "{:?} is not a vCPU model the launch digest can be computed for (EPYC-v4, EPYC-Milan, EPYC-Genoa, EPYC-Turin, ...)",
                            self.snp.cpu
                        ),
                    ));
                }
            }
            PlatformProfile::Sim | PlatformProfile::SimSnp => {}
        }
        let kind = self.transport_kind();
        if vm.launch {
            let expected = match vm.platform {
                PlatformProfile::Tdx | PlatformProfile::Snp => TransportKind::Vsock,
                PlatformProfile::Sim | PlatformProfile::SimSnp => TransportKind::Hybrid,
            };
            if kind != expected {
                return Err(invalid(
                    "transport.kind",
                    format!(
                        "a launched {} VM is reached over {expected:?}, not {kind:?} (set vm.launch = false for a guest started elsewhere)",
                        vm.platform.as_str()
                    ),
                ));
            }
        }
        if kind == TransportKind::Tcp && self.transport.tcp_host.is_none() {
            return Err(invalid(
                "transport.tcp_host",
                "is required when transport.kind = \"tcp\"",
            ));
        }
        let relay = &self.relay;
        if relay.max_connections == 0 {
            return Err(invalid("relay.max_connections", "must be ≥ 1"));
        }
        if !(1..=relay.max_connections).contains(&relay.max_connections_per_source) {
            return Err(invalid(
                "relay.max_connections_per_source",
                "must be between 1 and relay.max_connections",
            ));
        }
        if relay.idle_timeout_secs == 0 {
            return Err(invalid("relay.idle_timeout_secs", "must be ≥ 1"));
        }
        if !(1..=600_000).contains(&relay.connect_timeout_ms) {
            return Err(invalid(
                "relay.connect_timeout_ms",
                "must be between 1 and 600000",
            ));
        }
        if !(4..=16 * 1024).contains(&relay.buffer_kib) {
            return Err(invalid("relay.buffer_kib", "must be between 4 and 16384"));
        }
        if !(16..=4096).contains(&relay.socket_buffer_kib) {
            return Err(invalid(
                "relay.socket_buffer_kib",
                "must be between 16 and 4096",
            ));
        }
        if relay.guest_port == 0 || relay.guest_port == u32::MAX {
            return Err(invalid(
                "relay.guest_port",
                "must be a vsock port between 1 and 4294967294",
            ));
        }
        if self.sim_quote_enabled() {
            if !vm.platform.is_sim() {
                return Err(invalid(
                    "services.sim_quote.enabled",
                    "the sim quote service may only run with platform = \"sim\" or \"sim-snp\"; on tdx the QGS signs real quotes",
                ));
            }
            if let Some(seed) = &self.services.sim_quote.seed_hex
                && (seed.len() != 64 || hex::decode(seed).is_err())
            {
                return Err(invalid(
                    "services.sim_quote.seed_hex",
                    "must be 64 hex digits (32 bytes)",
                ));
            }
            if self.services.sim_quote.collateral_validity_secs < 120 {
                return Err(invalid(
                    "services.sim_quote.collateral_validity_secs",
                    "must be at least 120 (it is reissued at half its validity)",
                ));
            }
        }
        let col = &self.services.collateral;
        if col.enabled {
            match (&col.file, &col.pccs_url) {
                (None, None) if vm.platform == PlatformProfile::SimSnp => {
                    return Err(invalid(
                        "services.collateral",
                        "sim-snp simulates SEV-SNP, which has no TDX collateral: set file or pccs_url, or disable it",
                    ));
                }
                (None, None) if self.sim_quote_enabled() => {}
                (None, None) => {
                    return Err(invalid(
                        "services.collateral",
                        "enabled, but neither file nor pccs_url is set (only the sim profile has collateral of its own)",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "services.collateral",
                        "set file or pccs_url, not both",
                    ));
                }
                (None, Some(url)) => {
                    let uri: http::Uri = url.parse().map_err(|_| {
                        invalid(
                            "services.collateral.pccs_url",
                            format!("{url:?} is not a URL"),
                        )
                    })?;
                    if !matches!(uri.scheme_str(), Some("https") | Some("http"))
                        || uri.host().is_none()
                    {
                        return Err(invalid(
                            "services.collateral.pccs_url",
                            "must be an http(s) URL with a host",
                        ));
                    }
                    match &col.fmspc {
                        Some(f) if f.len() == 12 && hex::decode(f).is_ok() => {}
                        Some(f) => {
                            return Err(invalid(
                                "services.collateral.fmspc",
                                format!("{f:?} is not 12 hex digits"),
                            ));
                        }
                        None => {
                            return Err(invalid(
                                "services.collateral.fmspc",
                                "is required with pccs_url",
                            ));
                        }
                    }
                }
                (Some(_), None) => {}
            }
            if col.port == self.services.sim_quote.port && self.sim_quote_enabled() {
                return Err(invalid(
                    "services.collateral.port",
                    "must differ from services.sim_quote.port",
                ));
            }
        }
        if self.admin.enabled && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.listen",
                format!(
                    "must be a loopback address (got {})",
                    self.admin.listen.ip()
                ),
            ));
        }
        let s = &self.supervisor;
        if s.backoff_initial_ms == 0 || s.backoff_initial_ms > s.backoff_max_ms {
            return Err(invalid(
                "supervisor.backoff_initial_ms",
                "must be ≥ 1 and ≤ supervisor.backoff_max_ms",
            ));
        }
        if s.stop_timeout_secs == 0 {
            return Err(invalid("supervisor.stop_timeout_secs", "must be ≥ 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[image]\nmanifest = \"m.json\"\n[vm]\nplatform = \"sim\"\nvcpus = 2\nmemory_mib = 2048\n";

    fn with(extra: &str) -> Result<HostConfig, ConfigError> {
        HostConfig::parse(&format!("{MINIMAL}{extra}"))
    }

    fn with_vm(vm_lines: &str, rest: &str) -> Result<HostConfig, ConfigError> {
        HostConfig::parse(&format!(
            "[image]\nmanifest = \"m.json\"\n[vm]\n{vm_lines}\n{rest}"
        ))
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key.to_string(),
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn sim_snp_profile_is_a_sim_profile_with_its_own_name() {
        let c = with_vm("platform = \"sim-snp\"\nvcpus = 2\nmemory_mib = 2048", "").unwrap();
        assert_eq!(c.vm.platform, PlatformProfile::SimSnp);
        assert_eq!(c.vm.platform.as_str(), "sim-snp");
        assert!(c.vm.platform.is_sim() && PlatformProfile::Sim.is_sim());
        assert!(!PlatformProfile::Snp.is_sim());
        assert_eq!(c.transport_kind(), TransportKind::Hybrid);
        assert!(c.sim_quote_enabled());
        assert_eq!(c.services.sim_quote.snp_vcpu_type, "EPYC-v4");
        // SNP has no TDX collateral for the sim service to issue.
        let e = with_vm(
            "platform = \"sim-snp\"\nvcpus = 2\nmemory_mib = 2048",
            "[services.collateral]\nenabled = true\n",
        )
        .unwrap_err();
        assert_eq!(key_of(e), "services.collateral");
        // GPUs need a real TEE.
        let e = with_vm(
            "platform = \"sim-snp\"\nvcpus = 2\nmemory_mib = 2048\ngpus = [\"0000:3b:00.0\"]",
            "",
        )
        .unwrap_err();
        assert_eq!(key_of(e), "vm.gpus");
    }

    #[test]
    fn minimal_sim_config_has_sensible_defaults() {
        let c = with("").unwrap();
        assert_eq!(c.transport_kind(), TransportKind::Hybrid);
        assert!(c.sim_quote_enabled());
        assert_eq!(c.relay.guest_port, 8443);
        assert!(c.admin.listen.ip().is_loopback());
        assert_eq!(
            c.uds_path(),
            PathBuf::from("/var/lib/chrysalis-host/vsock.sock")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = with_vm("platform = \"sim\"\nvcpus = 2\nmemory_mib = 256", "").unwrap_err();
        assert_eq!(e.to_string(), "vm.memory_mib: must be ≥ 512 (got 256)");
        assert_eq!(
            key_of(with_vm("platform = \"sim\"\nvcpus = 0\nmemory_mib = 1024", "").unwrap_err()),
            "vm.vcpus"
        );
        assert_eq!(
            key_of(
                with_vm(
                    "platform = \"sim\"\nvcpus = 1\nmemory_mib = 1024\nguest_cid = 2",
                    ""
                )
                .unwrap_err()
            ),
            "vm.guest_cid"
        );
        assert_eq!(
            key_of(
                with_vm(
                    "platform = \"tdx\"\nvcpus = 1\nmemory_mib = 1024\ngpus = [\"3b:00.0\"]",
                    ""
                )
                .unwrap_err()
            ),
            "vm.gpus"
        );
        assert_eq!(
            key_of(
                with_vm(
                    "platform = \"sim\"\nvcpus = 1\nmemory_mib = 1024\ngpus = [\"0000:3b:00.0\"]",
                    ""
                )
                .unwrap_err()
            ),
            "vm.gpus"
        );
        assert_eq!(
            key_of(with("[admin]\nlisten = \"0.0.0.0:9181\"\n").unwrap_err()),
            "admin.listen"
        );
        assert_eq!(
            key_of(with("[relay]\nmax_connections = 0\n").unwrap_err()),
            "relay.max_connections"
        );
        assert_eq!(
            key_of(with("[transport]\nkind = \"vsock\"\n").unwrap_err()),
            "transport.kind"
        );
        // Without a source, only the sim profile (serving its own PKI's collateral) may enable it.
        assert!(with("[services.collateral]\nenabled = true\n").is_ok());
        assert_eq!(
            key_of(
                with(
                    "[services.sim_quote]\nenabled = false\n[services.collateral]\nenabled = true\n"
                )
                .unwrap_err()
            ),
            "services.collateral"
        );
        assert_eq!(
            key_of(with("[services.sim_quote]\ncollateral_validity_secs = 10\n").unwrap_err()),
            "services.sim_quote.collateral_validity_secs"
        );
        assert_eq!(
            key_of(
                with("[services.collateral]\nenabled = true\npccs_url = \"ftp://x\"\n")
                    .unwrap_err()
            ),
            "services.collateral.pccs_url"
        );
        assert_eq!(
            key_of(with("[services.sim_quote]\nseed_hex = \"abc\"\n").unwrap_err()),
            "services.sim_quote.seed_hex"
        );
        assert_eq!(
            key_of(
                with_vm(
                    "platform = \"tdx\"\nvcpus = 1\nmemory_mib = 1024",
                    "[services.sim_quote]\nenabled = true"
                )
                .unwrap_err()
            ),
            "services.sim_quote.enabled"
        );
        assert_eq!(
            key_of(
                with_vm(
                    "platform = \"tdx\"\nvcpus = 1\nmemory_mib = 1024",
                    "[tdx]\nqgs = \"tcp:1\""
                )
                .unwrap_err()
            ),
            "tdx.qgs"
        );
        assert_eq!(
            key_of(
                with_vm(
                    "platform = \"snp\"\nvcpus = 1\nmemory_mib = 1024",
                    "[snp]\npolicy = \"0xb0000\""
                )
                .unwrap_err()
            ),
            "snp.policy"
        );
        assert_eq!(
            key_of(with("[supervisor]\nbackoff_initial_ms = 0\n").unwrap_err()),
            "supervisor.backoff_initial_ms"
        );
    }

    #[test]
    fn unmeasurable_snp_and_untested_tdx_settings_are_refused_with_the_reason() {
        let snp = "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048";
        let e = with_vm(snp, "[snp]\ncpu = \"host\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("snp.cpu: \"host\" cannot be measured") && e.contains("CPUID"),
            "{e}"
        );
        let e = with_vm(snp, "[snp]\ncpu = \"qemu64\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("snp.cpu: \"qemu64\" is not a vCPU model"),
            "{e}"
        );
        assert!(with_vm(snp, "[snp]\ncpu = \"EPYC-Genoa\"").is_ok());
        // Valid SNP policies other than the pinned one: SINGLE_SOCKET, and SMT off.
        for p in ["0x130000", "0x20000"] {
            let e = with_vm(snp, &format!("[snp]\npolicy = \"{p}\""))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("snp.policy: {p} is not 0x30000"))
                    && e.contains("not part of the launch digest"),
                "{e}"
            );
        }
        assert_eq!(
            SnpConfig::default().policy_value().unwrap(),
            chrysalis_attestation::measure::snp::CHRYSALIS_GUEST_POLICY
        );
        let e = with_vm(
            "platform = \"tdx\"\nvcpus = 2\nmemory_mib = 2048\ngpus = [\"0000:3b:00.0\", \"0000:86:00.0\"]",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("vm.gpus: 2 GPUs listed; a TDX guest gets one GPU"),
            "{e}"
        );
        assert!(
            with_vm(
                "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048\ngpus = [\"0000:3b:00.0\", \"0000:86:00.0\"]",
                ""
            )
            .is_ok()
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = with("[relay]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("listen_addr"), "{msg}");
        let e = with_vm("platform = \"sgx\"\nvcpus = 1\nmemory_mib = 1024", "").unwrap_err();
        assert!(e.to_string().contains("sgx"), "{e}");
    }

    #[test]
    fn the_annotated_example_is_valid() {
        let c = HostConfig::parse(include_str!("../host.example.toml")).unwrap();
        assert_eq!(c.vm.platform, PlatformProfile::Tdx);
        assert_eq!(c.transport_kind(), TransportKind::Vsock);
        assert!(!c.sim_quote_enabled());
    }

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:3b:00.0"));
        assert!(is_pci_address("0000:DB:1f.7"));
        assert!(!is_pci_address("0000:3b:20.0"));
        assert!(!is_pci_address("0000:3b:00.8"));
        assert!(!is_pci_address("3b:00.0"));
        assert!(!is_pci_address("0000:3b:00.0,x-vga=on"));
    }

    #[test]
    fn qgs_and_policy_parse() {
        let t = TdxConfig {
            qgs: "unix:/run/qgs.sock".into(),
        };
        assert_eq!(
            t.qgs_address().unwrap(),
            QgsAddress::Unix("/run/qgs.sock".into())
        );
        assert_eq!(
            TdxConfig::default().qgs_address().unwrap(),
            QgsAddress::Vsock { cid: 2, port: 4050 }
        );
        assert_eq!(SnpConfig::default().policy_value().unwrap(), 0x30000);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(
            &path,
            format!("{MINIMAL}[qemu]\nfirmware = \"fw/OVMF.fd\"\n"),
        )
        .unwrap();
        let c = HostConfig::load(&path).unwrap();
        assert_eq!(c.image.unwrap().manifest, dir.path().join("m.json"));
        assert_eq!(c.qemu.firmware.unwrap(), dir.path().join("fw/OVMF.fd"));
        assert_eq!(c.qemu.binary, PathBuf::from("qemu-system-x86_64"));
    }
}
