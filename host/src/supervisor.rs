//! The VM supervisor: starts vhost-device-vsock (sim) and QEMU, restarts them with exponential
//! backoff when QEMU exits, reports a VM that keeps failing to boot as failed, and stops everything
//! cleanly on shutdown.
//!
//! No orphans: every child runs in its own process group (so signals reach anything it forks) and
//! with `PR_SET_PDEATHSIG = SIGKILL` (so it dies even if the agent is killed outright). A stop sends
//! SIGTERM to the group, waits `stop_timeout_secs`, then SIGKILL, and always reaps.
//!
//! A run that ends before `stable_after_secs` is a boot failure (QEMU refused its arguments, the
//! guest powered off because dm-verity failed, ...). After `max_restarts` consecutive boot failures
//! the VM is left stopped and reported `failed` until the agent is restarted.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::config::SupervisorConfig;
use crate::launch::{CommandLine, LaunchPlan, program_os};
use crate::metrics::{Metrics, inc};
use crate::transport::{Transport, connect_with_timeout};

/// How long vhost-device-vsock may take to create its vhost-user socket.
const VHOST_SOCKET_WAIT: Duration = Duration::from_secs(10);
/// How often the readiness probe tries the guest port.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The VM's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The agent does not launch a VM (`vm.launch = false`).
    External,
    /// Processes are being started.
    Starting,
    /// QEMU runs.
    Running,
    /// QEMU exited; waiting before the next start.
    Backoff,
    /// Too many consecutive boot failures; left stopped.
    Failed,
    /// Stopping on request.
    Stopping,
    /// Stopped on request.
    Stopped,
}

impl VmState {
    /// The state's name, as in /status and the `chrysalis_vm_state` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::External => "external",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Backoff => "backoff",
            VmState::Failed => "failed",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
        }
    }
}

/// What /status reports about the VM.
#[derive(Clone, Debug, Serialize)]
pub struct VmStatus {
    /// The state.
    pub state: VmState,
    /// Whether the guest port answered the readiness probe during this run.
    pub ready: bool,
    /// QEMU's process id while it runs.
    pub qemu_pid: Option<u32>,
    /// When the current run started (seconds since the Unix epoch).
    pub run_started_unix: Option<u64>,
    /// Restarts since the agent started.
    pub restarts: u64,
    /// Boot failures in a row (reset by a run that lasts `stable_after_secs`).
    pub consecutive_failures: u32,
    /// How the previous run ended.
    pub last_exit: Option<String>,
    /// Milliseconds until the next start, while in backoff.
    pub backoff_ms: Option<u64>,
}

impl VmStatus {
    fn new(state: VmState) -> Self {
        Self {
            state,
            ready: false,
            qemu_pid: None,
            run_started_unix: None,
            restarts: 0,
            consecutive_failures: 0,
            last_exit: None,
            backoff_ms: None,
        }
    }

    /// The status of an agent that does not launch the VM.
    pub fn external() -> Self {
        Self::new(VmState::External)
    }
}

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A log file or the state directory could not be prepared.
    #[error("preparing {what}")]
    Prepare {
        /// What.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Supervises one VM described by a [`LaunchPlan`].
pub struct Supervisor {
    plan: LaunchPlan,
    policy: SupervisorConfig,
    metrics: Arc<Metrics>,
    status: watch::Sender<VmStatus>,
    probe: Option<(Arc<dyn Transport>, u32)>,
    restart_check: Option<RestartCheck>,
    multiplexer_pid: Option<Arc<std::sync::atomic::AtomicU32>>,
}

/// Publishes a running helper's pid; clears it when the run ends, however it ends.
struct PublishedPid<'a>(Option<&'a std::sync::atomic::AtomicU32>);

impl Drop for PublishedPid<'_> {
    fn drop(&mut self) {
        if let Some(cell) = self.0 {
            cell.store(0, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A check run (on a blocking thread) before each restart; an error ends that run as a boot failure.
pub type RestartCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("plan", &self.plan)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// One started process and its group.
struct Proc {
    name: &'static str,
    child: Child,
    pgid: Pid,
}

impl Proc {
    /// SIGTERM to the group, SIGKILL after `grace`, then reaps the leader. Safe to call after it exited.
    async fn stop(&mut self, grace: Duration) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            return describe_exit(status);
        }
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(
                    process = self.name,
                    "did not stop after SIGTERM; sending SIGKILL"
                );
                let _ = killpg(self.pgid, Signal::SIGKILL);
                self.child.wait().await
            }
        };
        // Anything the leader forked and left behind in its group.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        match status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("wait failed: {e}"),
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!(
            "killed by signal {}",
            Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?")
        ),
        _ => "ended".into(),
    }
}

/// Starts `cmd` in its own process group, dying with the agent, output appended to `log`.
fn spawn(name: &'static str, cmd: &CommandLine, log: &Path) -> io::Result<Proc> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut c = Command::new(program_os(cmd));
    c.args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let parent = nix::unistd::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only makes two async-signal-safe
    // system calls (prctl, getppid); it allocates nothing and takes no locks.
    unsafe {
        c.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The agent may have died between fork and prctl; then nobody would kill us.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    let child = c.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
    Ok(Proc {
        name,
        child,
        pgid: Pid::from_raw(pid as i32),
    })
}

/// Removes a stale Unix socket left by a previous run (nothing else).
fn remove_stale_socket(p: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(p);
    }
}

/// The last `chrysalis-init: FATAL` or `chrysalis-guest: FATAL` line the guest wrote to its
/// console after byte `from` (this run's part of the appended log), so that /status says why a
/// guest powered itself off or its runtime stopped.
fn last_fatal_line(serial_log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut f = std::fs::File::open(serial_log).ok()?;
    let len = f.metadata().ok()?.len();
    let start = from.max(len.saturating_sub(TAIL));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.take(TAIL).read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .lines()
        .rev()
        .find(|l| l.contains("chrysalis-init: FATAL") || l.contains("chrysalis-guest: FATAL"))
        .map(|l| l.trim().chars().take(400).collect())
}

/// Why a run ended.
enum RunEnd {
    Shutdown,
    Exited(String),
}

impl Supervisor {
    /// A supervisor for `plan`. With `probe`, /status reports `ready` once the guest port accepts a connection.
    pub fn new(
        plan: LaunchPlan,
        policy: SupervisorConfig,
        metrics: Arc<Metrics>,
        probe: Option<(Arc<dyn Transport>, u32)>,
    ) -> Self {
        let (status, _) = watch::channel(VmStatus::new(VmState::Starting));
        Self {
            plan,
            policy,
            metrics,
            status,
            probe,
            restart_check: None,
            multiplexer_pid: None,
        }
    }

    /// Keeps the pid of the vhost-device-vsock this supervisor runs in `cell` (0 while none
    /// runs), so that guest→host services can tell its connections from anyone else's
    /// ([`crate::services::LaunchedGuest`]).
    pub fn with_multiplexer_pid(mut self, cell: Arc<std::sync::atomic::AtomicU32>) -> Self {
        self.multiplexer_pid = Some(cell);
        self
    }

    /// Runs `check` before every restart (not before the first start, which the caller checked):
    /// the agent re-hashes the image's artifacts, so a VM is never restarted from files that differ
    /// from what was measured and is being quoted. A failed check counts as a failed boot.
    pub fn with_restart_check(mut self, check: RestartCheck) -> Self {
        self.restart_check = Some(check);
        self
    }

    /// A receiver that always holds the current status.
    pub fn status(&self) -> watch::Receiver<VmStatus> {
        self.status.subscribe()
    }

    fn set(&self, f: impl FnOnce(&mut VmStatus)) {
        self.status.send_modify(f);
    }

    /// Runs the VM until `shutdown` resolves (then stops it) or it failed too often (then waits for
    /// `shutdown` with the VM stopped and reported failed).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SupervisorError> {
        tokio::pin!(shutdown);
        for dir in [self.plan.serial_log.parent(), self.plan.qemu_log.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|source| SupervisorError::Prepare {
                what: dir.display().to_string(),
                source,
            })?;
        }
        let mut failures: u32 = 0;
        let mut first = true;
        loop {
            self.set(|s| {
                s.state = VmState::Starting;
                s.ready = false;
                s.backoff_ms = None;
            });
            let started = Instant::now();
            let console_from = std::fs::metadata(&self.plan.serial_log).map_or(0, |m| m.len());
            let check = match (&self.restart_check, first) {
                (Some(c), false) => {
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || c())
                        .await
                        .unwrap_or_else(|e| Err(format!("check panicked: {e}")))
                }
                _ => Ok(()),
            };
            first = false;
            let end = match check {
                Ok(()) => self.run_once(&mut shutdown).await,
                Err(e) => RunEnd::Exited(format!("not restarted: {e}")),
            };
            let ran = started.elapsed();
            self.set(|s| {
                s.qemu_pid = None;
                s.run_started_unix = None;
                s.ready = false;
            });
            let reason = match end {
                RunEnd::Shutdown => {
                    self.set(|s| s.state = VmState::Stopped);
                    return Ok(());
                }
                RunEnd::Exited(reason) => reason,
            };
            let mut reason = format!("{reason} after {:.1} s", ran.as_secs_f64());
            if let Some(line) = last_fatal_line(&self.plan.serial_log, console_from) {
                reason = format!("{reason}; guest console: {line}");
            }
            if ran >= Duration::from_secs(self.policy.stable_after_secs) {
                failures = 0;
            } else {
                failures += 1;
                inc(&self.metrics.vm_boot_failures);
            }
            tracing::warn!(%reason, consecutive_failures = failures, "VM exited");
            self.set(|s| {
                s.last_exit = Some(reason.clone());
                s.consecutive_failures = failures;
            });
            if failures > self.policy.max_restarts {
                tracing::error!(
                    failures,
                    "VM failed to boot too many times in a row; leaving it stopped"
                );
                self.set(|s| s.state = VmState::Failed);
                shutdown.as_mut().await;
                return Ok(());
            }
            let delay = self.backoff(failures);
            self.set(|s| {
                s.state = VmState::Backoff;
                s.backoff_ms = Some(delay.as_millis() as u64);
            });
            tokio::select! {
                () = shutdown.as_mut() => {
                    self.set(|s| { s.state = VmState::Stopped; s.backoff_ms = None; });
                    return Ok(());
                }
                () = tokio::time::sleep(delay) => {}
            }
            inc(&self.metrics.vm_restarts);
            self.set(|s| s.restarts += 1);
        }
    }

    /// The delay before restart number `failures` of a streak: initial × 2^(failures-1), capped.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let ms = self
            .policy
            .backoff_initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.policy.backoff_max_ms);
        Duration::from_millis(ms)
    }

    /// Starts the processes, waits until QEMU or the helper exits or shutdown is requested, and stops
    /// whatever still runs.
    async fn run_once(
        &self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> RunEnd {
        let grace = Duration::from_secs(self.policy.stop_timeout_secs);
        let mut helper = None;
        let _published = PublishedPid(self.multiplexer_pid.as_deref());
        if let (Some(cmd), Some(sock)) = (&self.plan.vhost_vsock, &self.plan.vhost_user_socket) {
            remove_stale_socket(sock);
            if let Some(h) = &self.plan.hybrid_socket {
                remove_stale_socket(h);
            }
            let log = self
                .plan
                .vhost_vsock_log
                .as_deref()
                .unwrap_or(&self.plan.qemu_log);
            let mut p = match spawn("vhost-device-vsock", cmd, log) {
                Ok(p) => p,
                Err(e) => return RunEnd::Exited(format!("vhost-device-vsock did not start: {e}")),
            };
            if let (Some(cell), Some(pid)) = (&self.multiplexer_pid, p.child.id()) {
                cell.store(pid, std::sync::atomic::Ordering::SeqCst);
            }
            // QEMU's vhost-user chardev is a client: the socket must exist before QEMU starts.
            let deadline = Instant::now() + VHOST_SOCKET_WAIT;
            loop {
                if sock.exists() {
                    break;
                }
                if let Ok(Some(st)) = p.child.try_wait() {
                    return RunEnd::Exited(format!("vhost-device-vsock {}", describe_exit(st)));
                }
                if Instant::now() > deadline {
                    let end = p.stop(grace).await;
                    return RunEnd::Exited(format!(
                        "vhost-device-vsock created no socket in {VHOST_SOCKET_WAIT:?} ({end})"
                    ));
                }
                tokio::select! {
                    () = shutdown.as_mut() => {
                        self.set(|s| s.state = VmState::Stopping);
                        p.stop(grace).await;
                        return RunEnd::Shutdown;
                    }
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            helper = Some(p);
        }

        let mut qemu = match spawn("qemu", &self.plan.qemu, &self.plan.qemu_log) {
            Ok(p) => p,
            Err(e) => {
                if let Some(h) = &mut helper {
                    h.stop(grace).await;
                }
                return RunEnd::Exited(format!("QEMU did not start: {e}"));
            }
        };
        let now_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let pid = qemu.child.id();
        self.set(|s| {
            s.state = VmState::Running;
            s.qemu_pid = pid;
            s.run_started_unix = Some(now_unix);
        });
        tracing::info!(pid, "QEMU started");

        let probe = async {
            let Some((transport, port)) = &self.probe else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if connect_with_timeout(&**transport, *port, PROBE_INTERVAL)
                    .await
                    .is_ok()
                {
                    self.set(|s| s.ready = true);
                    tracing::info!("guest port answers; VM ready");
                    return std::future::pending().await;
                }
            }
        };
        let helper_exit = async {
            match &mut helper {
                Some(h) => h
                    .child
                    .wait()
                    .await
                    .map(describe_exit)
                    .unwrap_or_else(|e| e.to_string()),
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            () = shutdown.as_mut() => None,
            st = qemu.child.wait() => Some(format!("QEMU {}", st.map(describe_exit).unwrap_or_else(|e| e.to_string()))),
            why = helper_exit => Some(format!("vhost-device-vsock {why}")),
            () = probe => unreachable!("the probe never completes"),
        };
        if end.is_none() {
            self.set(|s| s.state = VmState::Stopping);
        }
        // QEMU first, so the helper does not see a half-gone frontend.
        qemu.stop(grace).await;
        if let Some(h) = &mut helper {
            h.stop(grace).await;
        }
        match end {
            None => RunEnd::Shutdown,
            Some(why) => RunEnd::Exited(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_fatal_line_of_init_or_the_runtime_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(
            &log,
            "old run\nchrysalis-init: FATAL: before this run\nboot\n\
             chrysalis-guest: FATAL: first certificate (with GPU evidence: the node does not \
             serve without it): GPU: the GPU is in devtools mode\nKernel panic\n",
        )
        .unwrap();
        let from = "old run\nchrysalis-init: FATAL: before this run\n".len() as u64;
        let line = last_fatal_line(&log, from).unwrap();
        assert!(
            line.starts_with("chrysalis-guest: FATAL: first certificate"),
            "{line}"
        );
        assert!(line.contains("devtools mode"), "{line}");
        assert_eq!(
            last_fatal_line(&log, std::fs::metadata(&log).unwrap().len()),
            None
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = SupervisorConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..SupervisorConfig::default()
        };
        let s = Supervisor::new(
            LaunchPlan {
                platform: crate::config::PlatformProfile::Sim,
                vhost_vsock: None,
                vhost_user_socket: None,
                hybrid_socket: None,
                qemu: CommandLine {
                    program: "/bin/true".into(),
                    args: vec![],
                },
                serial_log: "/tmp/x".into(),
                qemu_log: "/tmp/y".into(),
                vhost_vsock_log: None,
            },
            policy,
            Arc::default(),
            None,
        );
        let ms: Vec<u128> = (0..7).map(|f| s.backoff(f).as_millis()).collect();
        assert_eq!(ms, [100, 100, 200, 400, 800, 1000, 1000]);
    }
}
