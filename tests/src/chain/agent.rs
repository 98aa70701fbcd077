//! The host agent (`chrysalis-host run`) in the `sim` profile: its config, its addresses, its
//! `/status`, and waiting until the VM it launched is ready or has failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrysalis_attestation::policy::TdxPin;
use chrysalis_attestation::{Policy, Sha256, TdxRegisters};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::process::{Guarded, check_interrupted, tail, write_atomic};
use super::{ChainError, SimPlatform, http_agent};

/// What to launch and how the supervisor treats failures.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// The image's manifest.json.
    pub manifest: PathBuf,
    /// vCPUs of the VM (the sim shape the policy pins is 2 vCPUs, 2048 MiB).
    pub vcpus: u32,
    /// Memory of the VM, MiB.
    pub memory_mib: u32,
    /// Consecutive boot failures before the VM is reported failed (0: the first is final).
    pub max_restarts: u32,
    /// A run this long counts as a good boot (shorter ones are boot failures).
    pub stable_after_secs: u64,
    /// The vhost-device-vsock binary (a path or a name on PATH).
    pub vhost_device_vsock: String,
    /// The QEMU binary (a path or a name on PATH).
    pub qemu: String,
    /// The hardware the agent simulates (profile `sim` or `sim-snp`).
    pub platform: SimPlatform,
    /// `Some(offset)`: the agent launches no VM (`vm.launch = false`); the guest is a local
    /// process whose vsock port p is TCP port p + offset on 127.0.0.1 (`cargo xtask serve-local`).
    pub external_tcp_offset: Option<i32>,
}

impl AgentSpec {
    /// The sim shape the policy pins (2 vCPUs, 2048 MiB), the first boot failure final; tools
    /// from `$CHRYSALIS_VHOST_DEVICE_VSOCK` (what `cargo xtask setup` records) or PATH.
    pub fn sim(manifest: &Path) -> AgentSpec {
        AgentSpec {
            manifest: manifest.to_owned(),
            vcpus: 2,
            memory_mib: 2048,
            max_restarts: 0,
            stable_after_secs: 3600,
            vhost_device_vsock: std::env::var("CHRYSALIS_VHOST_DEVICE_VSOCK")
                .unwrap_or_else(|_| "vhost-device-vsock".into()),
            qemu: "qemu-system-x86_64".into(),
            platform: SimPlatform::Tdx,
            external_tcp_offset: None,
        }
    }

    /// As [`sim`](Self::sim), in profile `sim-snp`: the agent signs SEV-SNP reports with the
    /// launch digest of the image (2 vCPUs, EPYC-v4).
    pub fn sim_snp(manifest: &Path) -> AgentSpec {
        AgentSpec {
            platform: SimPlatform::Snp,
            ..AgentSpec::sim(manifest)
        }
    }

    fn toml(&self, state: &Path) -> String {
        let s = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let q = |v: &str| toml::Value::String(v.to_owned()).to_string();
        let (launch, transport) = match self.external_tcp_offset {
            None => (String::new(), String::new()),
            Some(offset) => (
                "launch = false\n".to_owned(),
                format!(
                    "[transport]\nkind = \"tcp\"\ntcp_host = \"127.0.0.1\"\ntcp_port_offset = {offset}\n"
                ),
            ),
        };
        format!(
            "# Written by the chrysalis e2e harness (tests/src/chain).\n\
             [image]\nmanifest = {}\n\
             [vm]\nplatform = \"{}\"\nvcpus = {}\nmemory_mib = {}\nstate_dir = {}\n{launch}\
             [qemu]\nbinary = {}\n\
             [sim]\naccel = \"auto\"\nvhost_device_vsock = {}\n\
             {transport}\
             [relay]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [supervisor]\nmax_restarts = {}\nstable_after_secs = {}\nbackoff_initial_ms = 500\n",
            s(&self.manifest),
            self.platform.profile(),
            self.vcpus,
            self.memory_mib,
            s(state),
            q(&self.qemu),
            q(&self.vhost_device_vsock),
            self.max_restarts,
            self.stable_after_secs,
        )
    }
}

/// A running `chrysalis-host run`, stopped with SIGTERM (which stops QEMU and
/// vhost-device-vsock) when dropped.
#[derive(Debug)]
pub struct HostAgent {
    proc: Guarded,
    dir: PathBuf,
    state: PathBuf,
    admin: Option<String>,
}

/// How a wait for the VM ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Boot {
    /// `/status` says `vm.ready`: the guest's RA-TLS port answers through the relay's transport.
    Ready(Value),
    /// `/status` says `vm.state = "failed"`: the VM powered off or crashed too often.
    Failed(Value),
}

impl HostAgent {
    /// Writes `<dir>/host.toml` for `spec`, runs `host_bin preflight --config` on it (an error
    /// if any check fails), and starts `host_bin run --config` on it; the agent's
    /// log goes to `<dir>/agent.log`, its state (sockets, serial console, QEMU log, relay.addr,
    /// admin.addr) to `<dir>/state`.
    pub fn start(host_bin: &Path, spec: &AgentSpec, dir: &Path) -> Result<HostAgent, ChainError> {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).map_err(|source| ChainError::Io {
            what: format!("creating {}", state.display()),
            source,
        })?;
        let cfg = dir.join("host.toml");
        write_atomic(&cfg, spec.toml(&state).as_bytes())?;
        // What a GPU owner runs first (docs/host.md): every prerequisite of the profile on this
        // machine. A failed check stops the test with the checks' own fixes.
        let pre = Command::new(host_bin)
            .arg("preflight")
            .arg("--config")
            .arg(&cfg)
            .output()
            .map_err(|source| ChainError::Spawn {
                what: "chrysalis-host preflight".into(),
                source,
            })?;
        if !pre.status.success() {
            return Err(ChainError::Command {
                what: format!("chrysalis-host preflight --config {}", cfg.display()),
                status: pre.status.to_string(),
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&pre.stdout),
                    String::from_utf8_lossy(&pre.stderr)
                ),
            });
        }
        let mut cmd = Command::new(host_bin);
        cmd.arg("run").arg("--config").arg(&cfg).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let proc = Guarded::spawn(
            "chrysalis-host",
            cmd,
            &dir.join("agent.log"),
            Signal::SIGTERM,
            // The agent gives QEMU stop_timeout_secs (10 s) before SIGKILL; leave it that.
            Duration::from_secs(30),
        )?;
        Ok(HostAgent {
            proc,
            dir: dir.to_owned(),
            state,
            admin: None,
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// An error (with the agent's logs) if the agent has exited.
    pub fn check_running(&mut self) -> Result<(), ChainError> {
        self.proc.check_running().map_err(|e| self.with_logs(e))
    }

    /// The state directory (serial console `chrysalis-serial.log`, `chrysalis-qemu.log`, ...).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The guest's serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.state.join("chrysalis-serial.log")
    }

    /// The address the relay listens on (`HOST:PORT`), once the agent has written it.
    pub fn relay_addr(&self) -> Result<String, ChainError> {
        read_addr(&self.state.join("relay.addr"))
    }

    /// `GET /status` of the admin endpoint.
    pub fn status(&mut self) -> Result<Value, ChainError> {
        if self.admin.is_none() {
            self.admin = Some(read_addr(&self.state.join("admin.addr"))?);
        }
        let url = format!(
            "http://{}/status",
            self.admin.as_deref().unwrap_or_default()
        );
        let mut resp = http_agent(Duration::from_secs(10))
            .get(&url)
            .call()
            .map_err(|e| ChainError::Http {
                what: format!("GET {url}"),
                source: Box::new(e),
            })?;
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ChainError::Http {
                what: format!("GET {url}"),
                source: Box::new(e),
            })?;
        serde_json::from_str(&body).map_err(|e| ChainError::BadResponse {
            what: format!("GET {url}"),
            detail: format!("{e}: {body}"),
        })
    }

    /// Polls `/status` (every 250 ms) until `done` returns Some, the agent exits, `guard` passes
    /// (a hang guard, not a speed assertion) or [`super::interrupt`] is called. `progress` sees
    /// every status read.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        guard: Duration,
        mut done: impl FnMut(&Value) -> Option<T>,
        progress: &mut dyn FnMut(&Value),
    ) -> Result<T, ChainError> {
        let start = Instant::now();
        loop {
            check_interrupted()?;
            self.proc.check_running().map_err(|e| self.with_logs(e))?;
            if let Ok(st) = self.status() {
                progress(&st);
                if let Some(t) = done(&st) {
                    return Ok(t);
                }
            }
            if start.elapsed() > guard {
                return Err(ChainError::Timeout {
                    what: what.to_owned(),
                    waited: guard,
                    logs: self.logs(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the VM is ready or has failed, whichever comes first.
    pub fn wait_boot(
        &mut self,
        guard: Duration,
        progress: &mut dyn FnMut(&Value),
    ) -> Result<Boot, ChainError> {
        self.wait_for(
            "the VM to become ready (or fail)",
            guard,
            |st| {
                if st["vm"]["ready"] == true {
                    Some(Boot::Ready(st.clone()))
                } else if st["vm"]["state"] == "failed" {
                    Some(Boot::Failed(st.clone()))
                } else {
                    None
                }
            },
            progress,
        )
    }

    /// The agent's log, the guest console and QEMU's log (their last lines), for error messages.
    pub fn logs(&self) -> String {
        format!(
            "--- agent log ({}):\n{}\n--- guest console ({}):\n{}\n--- qemu log:\n{}\n--- vhost-device-vsock log:\n{}",
            self.dir.join("agent.log").display(),
            tail(&self.dir.join("agent.log"), 40),
            self.serial_log().display(),
            tail(&self.serial_log(), 40),
            tail(&self.state.join("chrysalis-qemu.log"), 20),
            tail(&self.state.join("chrysalis-vhost-device-vsock.log"), 10),
        )
    }

    fn with_logs(&self, e: ChainError) -> ChainError {
        match e {
            ChainError::Exited { what, status, .. } => ChainError::Exited {
                what,
                status,
                log: self.logs(),
            },
            e => e,
        }
    }

    /// Stops the agent (SIGTERM; it stops QEMU and vhost-device-vsock) and returns how it
    /// exited.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.stop()
    }
}

fn read_addr(path: &Path) -> Result<String, ChainError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| ChainError::Io {
            what: format!("reading {}", path.display()),
            source,
        })
}

/// The policy a client would build from `/status` alone: exactly the registers this agent's sim
/// quote service signs (whatever image it launched), and the sim root it signs with. For
/// looking at a guest that a manifest-derived policy rejects; never a substitute for that policy.
pub fn policy_from_status(status: &Value) -> Result<Policy, ChainError> {
    let sim = &status["sim_quote"];
    let bad = |detail: String| ChainError::BadResponse {
        what: "/status sim_quote".into(),
        detail,
    };
    // /status shows the quoted registers flat (`mr_td`, `rtmr`), as `TdxRegisters` reads them.
    let registers: TdxRegisters =
        serde_json::from_value(sim.clone()).map_err(|e| bad(format!("{e}: {sim}")))?;
    let pin = TdxPin::from_registers(&registers, true);
    let mut policy = Policy::pinned(vec![pin], vec![]);
    let root: Sha256 = serde_json::from_value(sim["sim_root_sha256"].clone())
        .map_err(|e| bad(format!("sim_root_sha256: {e}")))?;
    policy.trust.dangerous_simulated_intel_roots.push(root);
    Ok(policy)
}
