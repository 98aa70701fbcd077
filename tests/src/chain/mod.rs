//! The whole chrysalis chain as real processes, for the end-to-end tests (tests/tests/e2e.rs) and
//! `cargo xtask demo`:
//!
//! ```text
//!  client ──HTTP──▶ chrysalis proxy ──RA-TLS──▶ [Recorder] ──▶ chrysalis-host relay
//!                   (policy from the manifest)                  │ hybrid vsock (vhost-device-vsock)
//!                                                               ▼
//!                                   QEMU (sim profile, TCG) ── guest: chrysalis-guest + SmolLM2
//! ```
//!
//! Every process is a [`Guarded`] child: in its own process group, stopped (clean signal, then
//! SIGKILL after a grace period, reaped) when its guard drops, also on panic, and sent SIGTERM by
//! the kernel if its owner dies. [`interrupt`] stops them all from a Ctrl-C handler.
//!
//! Waits are bounded by hang guards (minutes: TCG boots on a loaded machine are slow); they are
//! not speed assertions.

mod agent;
mod client;
mod image;
mod process;
mod recorder;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use thiserror::Error;

pub use agent::{AgentSpec, Boot, HostAgent, policy_from_status};
pub use client::{
    Chat, ChatStream, Event, Proxy, Reply, Verification, derive_policy, derive_policy_for, verify,
};
pub use image::{IMAGE_HINT, Image, Tamper};
pub use process::{Guarded, alive, check_interrupted, interrupt, interrupted, tail, write_atomic};
pub use recorder::{Recorded, Recorder, contains};

/// Which hardware the host agent simulates: its profile, and the platform a client policy pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimPlatform {
    /// Profile `sim`: TDX quotes from the simulated Intel PKI.
    Tdx,
    /// Profile `sim-snp`: SEV-SNP reports from the simulated AMD PKI.
    Snp,
}

impl SimPlatform {
    /// Both, in the order the e2e suite runs them.
    pub const ALL: [SimPlatform; 2] = [SimPlatform::Tdx, SimPlatform::Snp];

    /// host.toml's `vm.platform`.
    pub fn profile(self) -> &'static str {
        match self {
            SimPlatform::Tdx => "sim",
            SimPlatform::Snp => "sim-snp",
        }
    }

    /// `chrysalis policy from-manifest --platform`.
    pub fn policy_platform(self) -> &'static str {
        match self {
            SimPlatform::Tdx => "tdx",
            SimPlatform::Snp => "snp",
        }
    }
}

/// Why a step of the chain failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The program.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A child exited while it should have been running.
    #[error("{what} exited ({status})\n{log}")]
    Exited {
        /// The program.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its log (and related logs).
        log: String,
    },
    /// A command ran but failed.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        /// The command.
        what: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A hang guard passed.
    #[error("timed out after {waited:?} waiting for {what}\n{logs}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// Logs that may say why.
        logs: String,
    },
    /// An HTTP exchange failed (connection, protocol, timeout).
    #[error("{what}: {source}")]
    Http {
        /// The request.
        what: String,
        /// The client's error.
        source: Box<ureq::Error>,
    },
    /// An answer did not have the expected shape.
    #[error("{what}: unexpected answer: {detail}")]
    BadResponse {
        /// The request or file.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A streamed completion broke off.
    #[error("stream broken: {detail}")]
    StreamBroken {
        /// How it ended.
        detail: String,
    },
    /// The image's manifest is unreadable or invalid.
    #[error("image manifest {path}: {source}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<chrysalis_attestation::manifest::ManifestError>,
    },
    /// The image's files are not what a step needs.
    #[error("image: {0}")]
    BadImage(String),
    /// The Rust SDK failed.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The SDK's error.
        source: Box<chrysalis_client::ClientError>,
    },
    /// A prerequisite is missing (a tool, the image).
    #[error("missing prerequisite: {0}")]
    Missing(String),
    /// [`interrupt`] was called (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// A plain-HTTP client for loopback services: no proxy from the environment, statuses returned
/// rather than turned into errors, `guard` bounding each whole call.
pub(crate) fn http_agent(guard: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(guard))
        .build()
        .new_agent()
}

/// The binaries of the chain, built by cargo from this workspace.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `chrysalis-host`.
    pub host: PathBuf,
    /// `chrysalis` (proxy, verify, policy).
    pub chrysalis: PathBuf,
}

impl Tools {
    /// `cargo build` of `chrysalis-host` and `chrysalis` in `workspace` (`release`: optimised),
    /// with the cargo running the caller when there is one (`$CARGO`).
    pub fn build(workspace: &Path, release: bool) -> Result<Tools, ChainError> {
        let bins = cargo_build(
            workspace,
            release,
            &[
                ("chrysalis-host", "chrysalis-host"),
                ("chrysalis-client", "chrysalis"),
            ],
        )?;
        Ok(Tools {
            host: bins[0].clone(),
            chrysalis: bins[1].clone(),
        })
    }

    /// `cargo build` of the guest runtime (`chrysalis-guest`, with the pyo3 engine bridge), for
    /// running it as a local process (`cargo xtask serve-local`).
    pub fn build_guest(workspace: &Path, release: bool) -> Result<PathBuf, ChainError> {
        let mut bins = cargo_build(
            workspace,
            release,
            &[("chrysalis-guest", "chrysalis-guest")],
        )?;
        Ok(bins.remove(0))
    }
}

/// `cargo build -p PACKAGE --bin BIN …` in `workspace`; the executables in the order asked.
/// Polled, so that an interrupt (Ctrl-C in the demo) stops the build too.
fn cargo_build(
    workspace: &Path,
    release: bool,
    targets: &[(&str, &str)],
) -> Result<Vec<PathBuf>, ChainError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--message-format=json-render-diagnostics"]);
    for (package, bin) in targets {
        cmd.args(["-p", package, "--bin", bin]);
    }
    if release {
        cmd.arg("--release");
    }
    // Build as from a plain shell (see `is_cargo_package_var`).
    for (k, _) in std::env::vars_os() {
        if is_cargo_package_var(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    let what = format!(
        "cargo build {}",
        targets
            .iter()
            .map(|(p, _)| format!("-p {p}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ChainError::Spawn {
            what: what.clone(),
            source,
        })?;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = std::io::Read::read_to_string(s, &mut text);
        }
        text
    });
    let status = loop {
        if interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChainError::Interrupted);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(source) => {
                return Err(ChainError::Io {
                    what: format!("waiting for {what}"),
                    source,
                });
            }
        }
    };
    let stdout = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(ChainError::Command {
            what,
            status: status.to_string(),
            stderr: "(above)".into(),
        });
    }
    let bins: HashMap<String, PathBuf> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect();
    targets
        .iter()
        .map(|(_, bin)| {
            bins.get(*bin).cloned().ok_or_else(|| {
                ChainError::Missing(format!("cargo build did not report the {bin} binary"))
            })
        })
        .collect()
}

/// An offset at which the guest's vsock ports `ports` and its TLS port all map to loopback TCP
/// ports that are free now, for the host agent's TCP transport (guest vsock port P is TCP port
/// P + offset); None after 50 tries.
pub fn free_port_offset(ports: &[u32]) -> Option<i32> {
    use chrysalis_attestation::hostcall::GUEST_TLS_PORT;
    for _ in 0..50 {
        let Ok(port) = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .map(|a| i32::from(a.port()))
        else {
            continue;
        };
        let offset = port - GUEST_TLS_PORT as i32;
        let free = ports.iter().chain([&GUEST_TLS_PORT]).all(|&p| {
            u16::try_from(p as i32 + offset)
                .ok()
                .filter(|&q| q >= 1024)
                .is_some_and(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok())
        });
        if free {
            return Some(offset);
        }
    }
    None
}

/// Whether `name` is one of the variables cargo sets for the package it runs (`cargo run`,
/// `cargo test`): `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …. A cargo started with them inherited
/// records their values for build scripts that watch them (ring's `rerun-if-env-changed=
/// CARGO_MANIFEST_DIR`, …), so the next cargo started without them rebuilds ring and all that links
/// it, and the one after that rebuilds it back. Every cargo we start runs without them.
pub fn is_cargo_package_var(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name)
}

/// The first of `names` that is not an executable (a path, or a name looked up in PATH).
pub fn missing_program(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| find_program(n).is_none())
        .map(|n| (*n).to_owned())
}

/// `name` as a path if it has a slash, else its first match in PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// How many requests the guest behind `relay` has served (its `/healthz`), asked over RA-TLS
/// with the Rust SDK under `policy`.
pub fn guest_served(relay: &str, policy: chrysalis_attestation::Policy) -> Result<u64, ChainError> {
    use http_body_util::BodyExt;
    let what = format!("GET /healthz of the guest behind {relay}");
    let client_err = |source| ChainError::Client {
        what: what.clone(),
        source: Box::new(source),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ChainError::Io {
            what: "tokio runtime".into(),
            source,
        })?;
    let client = chrysalis_client::Client::builder()
        .policy(policy)
        .upstream(relay)
        .build()
        .map_err(client_err)?;
    rt.block_on(async {
        let req = http::Request::get("/healthz")
            .body(bytes::Bytes::new())
            .map_err(|e| ChainError::BadResponse {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        let resp = tokio::time::timeout(Duration::from_secs(120), client.send(req))
            .await
            .map_err(|_| ChainError::Timeout {
                what: what.clone(),
                waited: Duration::from_secs(120),
                logs: String::new(),
            })?
            .map_err(client_err)?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ChainError::BadResponse {
                what: what.clone(),
                detail: e.to_string(),
            })?
            .to_bytes();
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ChainError::BadResponse {
                what: what.clone(),
                detail: format!("{e}: {}", String::from_utf8_lossy(&body)),
            })?;
        v["served"].as_u64().ok_or_else(|| ChainError::BadResponse {
            what: what.clone(),
            detail: v.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::is_cargo_package_var;

    #[test]
    fn only_the_per_package_variables_of_cargo_are_removed() {
        for set_per_package in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
        ] {
            assert!(is_cargo_package_var(set_per_package), "{set_per_package}");
        }
        // The cargo binary, its home, the target directory and the user's own settings stay.
        for kept in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "RUSTFLAGS",
            "PATH",
            "CHRYSALIS_CACHE",
        ] {
            assert!(!is_cargo_package_var(kept), "{kept}");
        }
    }
}
