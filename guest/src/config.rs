//! The runtime's configuration: one TOML file inside the measured (dm-verity) root filesystem.
//!
//! Unknown keys are errors, so a typo cannot silently fall back to a default. [`HELP`] documents
//! every key; `chrysalis-guest config-help` prints it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Errors reading or checking the configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML does not match the schema (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with the key and position.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Documentation of every key, printed by `chrysalis-guest config-help`.
pub const HELP: &str = r#"chrysalis-guest configuration (TOML; unknown keys are errors)

[server]
  listen = "vsock:8443"          where to serve: "vsock:PORT" (in the VM) or "tcp:ADDR:PORT"
  max_body_bytes = 1048576       largest request body; larger → 413
  max_tokens_cap = 4096          largest max_tokens a request may ask for; larger → 400
  default_max_tokens = 256       max_tokens when a request gives none
  max_concurrency = 4            generations at once; one more → 429 with Retry-After (no queue)
  retry_after_secs = 1           the Retry-After value sent with 429
  request_timeout_secs = 600     deadline of one request, generation included; over it → 504
                                 (non-stream) or an error event (stream), and the generation stops
  stream_buffer = 32             chunks buffered between the engine and a slow client
  cancel_grace_secs = 30         how long a cancelled generation may take to stop before its
                                 slot is released anyway (and an error logged)
  body_timeout_secs = 10         a request body must arrive within this many seconds, plus one
  body_min_bytes_per_sec = 16384   second per this many bytes received (and within the request
                                 deadline); slower → 408 and the connection is closed
  write_stall_secs = 30          a stream whose client takes no chunk for this long is cut: the
                                 generation is cancelled and its slot freed (counted as a timeout)

[tls]
  validity_secs = 86400          certificate lifetime (at most 86400)
  renew_fraction = 0.667         renew with fresh evidence at this fraction of the lifetime
  retry_secs = 30                retry interval when renewal fails

[evidence]
  provider = "configfs-tsm"      "configfs-tsm" (TDX/SNP hardware), "sim" (host's sim quote service),
                                 or "auto": configfs-tsm inside a TD or SNP guest (/dev/tdx_guest or
                                 /dev/sev-guest present), else sim (logged
                                 as a warning; only policies naming the simulated root accept it)
  configfs_root = "/sys/kernel/config/tsm/report"
  configfs_entry = "chrysalis"   name of the report entry created under configfs_root
  sim_endpoint = "vsock:2:4050"  "vsock:CID:PORT", "tcp:ADDR:PORT" or "unix:PATH"
  collateral_endpoint = "vsock:2:4051"   the host's collateral service, asked for TDX collateral to
                                 embed next to configfs-tsm quotes ("" = never ask; clients then
                                 need their own PCCS)
  sim_platform = "host"          which simulated evidence to ask for: "tdx" (a TDX quote), "snp"
                                 (an SEV-SNP report), or "host": whichever the host's profile
                                 simulates (sim: TDX, sim-snp: SNP). The host signs sim evidence
                                 either way; a client accepts it only if its policy names that
                                 platform's simulated root and pins its measurement
  timeout_secs = 30              deadline of one evidence request

[model]                          (required) what the receipts name
  id = "smollm2-135m-instruct"   the model id clients send and receipts carry
  root_hash = "…64 hex…"         dm-verity root hash of the model pack (sha256, from the image manifest)

[engine]                         (required) the Python adapter
  adapter = "llama_cpp"          "llama_cpp", "vllm", or a module path with a create(options) factory
  python_path = ["/opt/chrysalis/python"]   directories prepended to sys.path
  [engine.options]               passed to the adapter as a dict; see the adapter's documentation
  model_path = "/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

[gpu]
  attest = "none"                "none" (cpu images) or "nvml": before each certificate, every GPU's
                                 attestation report over the key's GPU nonce and its chain, read
                                 through NVML, go into the certificate and the CPU evidence binds
                                 them; the guest refuses to serve when CC mode is off, devtools mode
                                 is on, the environment is not production, or a GPU cannot attest.
                                 "sim": the host's simulated GPU (sim_endpoint; accepted only by
                                 policies naming the simulated NVIDIA roots); "auto": nvml when
                                 /dev/nvidiactl exists, else sim (logged as a warning)

Development only (command line, never in the image): --listen overrides [server].listen and
--evidence overrides [evidence].provider/sim_endpoint ("sim-tdx:…"/"sim-snp:…" also sim_platform).
"#;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// HTTP server and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Certificate lifecycle.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Evidence provider.
    #[serde(default)]
    pub evidence: EvidenceConfig,
    /// The served model.
    pub model: ModelConfig,
    /// The engine adapter.
    pub engine: EngineConfig,
    /// GPU evidence.
    #[serde(default)]
    pub gpu: GpuConfig,
}

/// `[gpu]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct GpuConfig {
    /// Where GPU evidence comes from.
    pub attest: GpuAttest,
}

/// Which GPU evidence a certificate carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum GpuAttest {
    /// None: a CPU image.
    #[default]
    #[serde(rename = "none")]
    None,
    /// NVIDIA's driver through NVML; the guest refuses to serve if a GPU is not in production
    /// confidential-computing mode or cannot attest.
    #[serde(rename = "nvml")]
    Nvml,
    /// The host's simulated GPU (its sim quote service, `[evidence] sim_endpoint`): accepted only
    /// by policies that name the simulated NVIDIA roots.
    #[serde(rename = "sim")]
    Sim,
    /// NVML when an NVIDIA device is present (`/dev/nvidiactl`), otherwise the host's simulated
    /// GPU (logged as a warning), like `[evidence] provider = "auto"`.
    #[serde(rename = "auto")]
    Auto,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Listener.
    pub listen: Listen,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    /// Largest max_tokens.
    pub max_tokens_cap: u32,
    /// max_tokens when absent.
    pub default_max_tokens: u32,
    /// Concurrent generations.
    pub max_concurrency: usize,
    /// Retry-After seconds for 429.
    pub retry_after_secs: u64,
    /// Per-request deadline in seconds.
    pub request_timeout_secs: u64,
    /// Chunks buffered per stream.
    pub stream_buffer: usize,
    /// Longest wait for a cancelled generation to stop.
    pub cancel_grace_secs: u64,
    /// Seconds a request body may take, plus one second per `body_min_bytes_per_sec` bytes
    /// received (within the request deadline); slower → 408.
    pub body_timeout_secs: u64,
    /// The slowest body upload tolerated past `body_timeout_secs`, in bytes per second.
    pub body_min_bytes_per_sec: u64,
    /// Seconds a stream may wait for its client to take the next chunk; longer → the generation
    /// is cancelled and its slot freed.
    pub write_stall_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Listen::Vsock(chrysalis_attestation::hostcall::GUEST_TLS_PORT),
            max_body_bytes: 1 << 20,
            max_tokens_cap: 4096,
            default_max_tokens: 256,
            max_concurrency: 4,
            retry_after_secs: 1,
            request_timeout_secs: 600,
            stream_buffer: 32,
            cancel_grace_secs: 30,
            body_timeout_secs: 10,
            body_min_bytes_per_sec: 16 * 1024,
            write_stall_secs: 30,
        }
    }
}

impl ServerConfig {
    /// The per-request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Certificate lifetime in seconds.
    pub validity_secs: u64,
    /// Renewal point as a fraction of the lifetime.
    pub renew_fraction: f64,
    /// Retry interval in seconds.
    pub retry_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            validity_secs: 86400,
            renew_fraction: 0.667,
            retry_secs: 30,
        }
    }
}

/// Which evidence provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum ProviderKind {
    /// Linux configfs-tsm.
    #[serde(rename = "configfs-tsm")]
    ConfigfsTsm,
    /// The host's sim quote service.
    #[serde(rename = "sim")]
    Sim,
    /// configfs-tsm inside a TD or SNP guest (`/dev/tdx_guest` or `/dev/sev-guest`), otherwise
    /// the host's sim quote service. Lets one measured image serve on hardware and in the
    /// simulator; sim evidence is accepted only by policies that name the simulated root.
    #[serde(rename = "auto")]
    Auto,
}

/// `[evidence]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EvidenceConfig {
    /// Provider.
    pub provider: ProviderKind,
    /// configfs-tsm root.
    pub configfs_root: PathBuf,
    /// configfs-tsm entry name.
    pub configfs_entry: String,
    /// Sim service endpoint.
    pub sim_endpoint: String,
    /// The host's collateral service (empty: do not ask for TDX collateral).
    pub collateral_endpoint: String,
    /// Which simulated evidence to ask the sim service for.
    pub sim_platform: crate::evidence::sim::SimPlatform,
    /// Deadline in seconds.
    pub timeout_secs: u64,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::ConfigfsTsm,
            configfs_root: PathBuf::from(crate::evidence::configfs::DEFAULT_ROOT),
            configfs_entry: "chrysalis".into(),
            sim_endpoint: "vsock:2:4050".into(),
            collateral_endpoint: "vsock:2:4051".into(),
            sim_platform: crate::evidence::sim::SimPlatform::Host,
            timeout_secs: 30,
        }
    }
}

/// `[model]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelConfig {
    /// Model id.
    pub id: String,
    /// dm-verity root hash of the model pack.
    pub root_hash: chrysalis_attestation::Sha256,
}

/// `[engine]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Adapter name or module path.
    pub adapter: String,
    /// Extra sys.path entries.
    #[serde(default)]
    pub python_path: Vec<PathBuf>,
    /// Adapter options.
    #[serde(default)]
    pub options: toml::Table,
}

impl EngineConfig {
    /// The Python module that implements the adapter.
    pub fn module(&self) -> String {
        match self.adapter.as_str() {
            "llama_cpp" | "vllm" => format!("chrysalis_engines.{}", self.adapter),
            other => other.to_owned(),
        }
    }
}

/// A listener address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK port (any CID).
    Vsock(u32),
    /// TCP address.
    Tcp(String),
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("vsock:") {
            p.parse()
                .map(Listen::Vsock)
                .map_err(|_| format!("{s:?}: vsock port must be a number"))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse::<std::net::SocketAddr>()
                .map(|_| Listen::Tcp(a.to_owned()))
                .map_err(|e| format!("{s:?}: {e}"))
        } else {
            Err(format!(
                "{s:?}: expected \"vsock:PORT\" or \"tcp:ADDR:PORT\""
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Range checks that the schema cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        let s = &self.server;
        if s.max_concurrency == 0 {
            return Err(invalid("server.max_concurrency", "must be at least 1"));
        }
        if s.max_tokens_cap == 0
            || s.default_max_tokens == 0
            || s.default_max_tokens > s.max_tokens_cap
        {
            return Err(invalid(
                "server.default_max_tokens",
                "must be between 1 and server.max_tokens_cap",
            ));
        }
        if s.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if s.request_timeout_secs == 0 {
            return Err(invalid("server.request_timeout_secs", "must be at least 1"));
        }
        for (key, v) in [
            ("server.body_timeout_secs", s.body_timeout_secs),
            ("server.body_min_bytes_per_sec", s.body_min_bytes_per_sec),
            ("server.write_stall_secs", s.write_stall_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if s.stream_buffer == 0 {
            return Err(invalid("server.stream_buffer", "must be at least 1"));
        }
        if self.tls.validity_secs == 0 || self.tls.validity_secs > 86400 {
            return Err(invalid("tls.validity_secs", "must be between 1 and 86400"));
        }
        if !(0.05..=0.95).contains(&self.tls.renew_fraction) {
            return Err(invalid(
                "tls.renew_fraction",
                "must be between 0.05 and 0.95",
            ));
        }
        if self.model.id.is_empty() {
            return Err(invalid("model.id", "must not be empty"));
        }
        if self.engine.adapter.is_empty() {
            return Err(invalid("engine.adapter", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[model]
id = "m"
root_hash = "0000000000000000000000000000000000000000000000000000000000000000"
[engine]
adapter = "llama_cpp"
[engine.options]
model_path = "/x.gguf"
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, s).unwrap();
        Config::load(&p)
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.server.listen, Listen::Vsock(8443));
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        assert_eq!(c.engine.module(), "chrysalis_engines.llama_cpp");
        assert_eq!(c.evidence.provider, ProviderKind::ConfigfsTsm);
        for key in [
            "max_body_bytes",
            "max_concurrency",
            "validity_secs",
            "configfs_root",
            "root_hash",
            "python_path",
        ] {
            assert!(HELP.contains(key), "HELP misses {key}");
        }
    }

    #[test]
    fn evidence_providers_parse_and_a_wrong_one_is_named() {
        for (name, kind) in [
            ("configfs-tsm", ProviderKind::ConfigfsTsm),
            ("sim", ProviderKind::Sim),
            ("auto", ProviderKind::Auto),
        ] {
            let c = parse(&format!("{MIN}\n[evidence]\nprovider = \"{name}\"\n")).unwrap();
            assert_eq!(c.evidence.provider, kind);
        }
        let e = parse(&format!("{MIN}\n[evidence]\nprovider = \"tpm\"\n")).unwrap_err();
        assert!(e.to_string().contains("tpm"), "{e}");
    }

    #[test]
    fn sim_platform_defaults_to_the_hosts_and_parses() {
        use crate::evidence::sim::SimPlatform;
        assert_eq!(parse(MIN).unwrap().evidence.sim_platform, SimPlatform::Host);
        for (name, p) in [
            ("tdx", SimPlatform::Tdx),
            ("snp", SimPlatform::Snp),
            ("host", SimPlatform::Host),
        ] {
            let c = parse(&format!("{MIN}\n[evidence]\nsim_platform = \"{name}\"\n")).unwrap();
            assert_eq!(c.evidence.sim_platform, p);
        }
        let e = parse(&format!("{MIN}\n[evidence]\nsim_platform = \"sev\"\n")).unwrap_err();
        assert!(e.to_string().contains("sev"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!("{MIN}\n[server]\nmax_concurency = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_concurency"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let e = parse(&format!("{MIN}\n[tls]\nvalidity_secs = 90000\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.validity_secs"), "{e}");
        let e = parse(&format!("{MIN}\n[server]\nlisten = \"udp:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp:1"), "{e}");
    }
}
