//! Child processes that cannot outlive their owner: each one runs in its own process group, gets
//! SIGTERM if the thread that started it dies, and is stopped (signal, wait, SIGKILL after a grace
//! period, reaped) when its guard is dropped — also while a panic unwinds.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ChainError;

/// Live children by pid, with the signal that stops each cleanly: what [`interrupt`] signals.
/// A pid leaves the list before it is reaped, so a signal never reaches a recycled pid.
static LIVE: Mutex<Vec<(i32, Signal)>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks every guarded child to stop (its clean-stop signal) and makes every wait of this module
/// return [`ChainError::Interrupted`]. For a Ctrl-C handler: the owner then unwinds and the guards
/// finish the job (wait, SIGKILL after the grace period, reap).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (pid, sig) in live.iter() {
        let _ = kill(Pid::from_raw(*pid), *sig);
    }
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`ChainError::Interrupted`] once [`interrupt`] was called.
pub fn check_interrupted() -> Result<(), ChainError> {
    if interrupted() {
        Err(ChainError::Interrupted)
    } else {
        Ok(())
    }
}

/// A running child process, stopped and reaped when dropped.
///
/// Its stdout and stderr go to a log file. It runs in a process group of its own, so a Ctrl-C
/// at the terminal reaches only the owner, which stops children in order. It receives SIGTERM
/// if the thread that spawned it exits (`PR_SET_PDEATHSIG`; keep the guard on that thread), so
/// not even a SIGKILL of the owner leaves it running.
#[derive(Debug)]
pub struct Guarded {
    child: Option<Child>,
    name: String,
    pid: i32,
    stop_signal: Signal,
    grace: Duration,
    log: PathBuf,
}

impl Guarded {
    /// Starts `cmd` (stdin from /dev/null, stdout and stderr appended to `log`). `stop_signal`
    /// is what makes this program stop cleanly; after `grace` it gets SIGKILL.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        stop_signal: Signal,
        grace: Duration,
    ) -> Result<Guarded, ChainError> {
        check_interrupted()?;
        let io = |source| ChainError::Io {
            what: format!("log file {}", log.display()),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let parent = nix::unistd::getpid();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only makes two
        // async-signal-safe system calls (prctl, getppid); it allocates nothing, takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // The owner may have died between fork and prctl; then nobody would stop us.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("the owner exited before exec"));
                }
                Ok(())
            });
        }
        // Registered under the lock, so `interrupt` cannot miss a child that is starting.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn().map_err(|source| ChainError::Spawn {
            what: format!("{name} ({:?})", cmd.get_program()),
            source,
        })?;
        let pid = child.id() as i32;
        live.push((pid, stop_signal));
        drop(live);
        Ok(Guarded {
            child: Some(child),
            name: name.to_owned(),
            pid,
            stop_signal,
            grace,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The exit status, if the process has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ChainError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let r = child.try_wait().map_err(|source| ChainError::Io {
            what: format!("waiting for {}", self.name),
            source,
        })?;
        if r.is_some() {
            self.forget();
        }
        Ok(r)
    }

    /// Fails with [`ChainError::Exited`] (and the log's tail) if the process has exited.
    pub fn check_running(&mut self) -> Result<(), ChainError> {
        match self.try_wait()? {
            Some(status) => Err(ChainError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(40),
            }),
            None => Ok(()),
        }
    }

    /// Stops the process: its clean-stop signal, up to the grace period to exit, then SIGKILL;
    /// always reaps. Returns its exit status (None if it was already reaped).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // Leave the interrupt list before reaping: the pid stays ours until `wait` returns.
        remove_live(self.pid);
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(self.pid), self.stop_signal);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} did not stop within {:?} of {:?}; sending SIGKILL",
            self.name, self.grace, self.stop_signal
        );
        let _ = child.kill();
        child.wait().ok()
    }

    fn forget(&mut self) {
        self.child = None;
        remove_live(self.pid);
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_live(pid: i32) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| *p != pid);
}

/// The last `lines` lines of a text file ("" if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ChainError> {
    let io = |source| ChainError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::fs::write(tmp.path(), bytes).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Whether `pid` names a process that still exists (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_stops_its_child_with_sigkill_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        // A child that ignores SIGTERM: only the SIGKILL after the grace period ends it.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo started; while :; do sleep 0.1; done",
        ]);
        let g = Guarded::spawn(
            "stubborn",
            cmd,
            &dir.path().join("log"),
            Signal::SIGTERM,
            Duration::from_millis(300),
        )
        .unwrap();
        let pid = g.pid();
        let t = Instant::now();
        while !std::fs::read_to_string(dir.path().join("log"))
            .unwrap_or_default()
            .contains("started")
        {
            assert!(t.elapsed() < Duration::from_secs(30), "child never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(alive(pid));
        drop(g);
        assert!(!alive(pid), "pid {pid} survived its guard");
    }

    #[test]
    fn a_child_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let mut g = Guarded::spawn(
            "short",
            cmd,
            &dir.path().join("log"),
            Signal::SIGTERM,
            Duration::from_secs(1),
        )
        .unwrap();
        let t = Instant::now();
        loop {
            match g.check_running() {
                Ok(()) => {
                    assert!(t.elapsed() < Duration::from_secs(30));
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("short") && msg.contains("boom") && msg.contains('3'),
                        "{msg}"
                    );
                    break;
                }
            }
        }
    }

    #[test]
    fn write_atomic_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"first version, long").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
