//! Supervisor tests with test doubles in place of QEMU and vhost-device-vsock: restart with backoff
//! and the restart metric, boot failures leading to `failed`, and a clean stop on SIGTERM with no
//! orphaned processes.
//!
//! The doubles are small `/bin/sh` scripts (and, for the vhost-user socket vhost-device-vsock
//! creates, Debian's /usr/bin/python3, which the workspace needs anyway for the engine bridge).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrysalis_host::config::{PlatformProfile, SupervisorConfig};
use chrysalis_host::launch::{CommandLine, LaunchPlan};
use chrysalis_host::metrics::Metrics;
use chrysalis_host::supervisor::{Supervisor, VmState};

/// Guards against a hang; never a speed assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn plan(dir: &Path, qemu_script: &str) -> LaunchPlan {
    LaunchPlan {
        platform: PlatformProfile::Sim,
        vhost_vsock: None,
        vhost_user_socket: None,
        hybrid_socket: None,
        qemu: CommandLine {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), qemu_script.into()],
        },
        serial_log: dir.join("serial.log"),
        qemu_log: dir.join("qemu.log"),
        vhost_vsock_log: None,
    }
}

fn policy(max_restarts: u32, stable_after_secs: u64) -> SupervisorConfig {
    SupervisorConfig {
        max_restarts,
        backoff_initial_ms: 20,
        backoff_max_ms: 200,
        stable_after_secs,
        stop_timeout_secs: 5,
        ready_probe: false,
    }
}

/// Whether `pid` is a live process (zombies count as gone: they run nothing).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_killed_qemu_is_restarted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ >> {}; exec sleep 600", pids.display());
    let metrics = Arc::new(Metrics::default());
    // stable_after 0: every run counts as a successful boot, so a kill is a plain crash.
    let sup = Supervisor::new(
        plan(dir.path(), &script),
        policy(3, 0),
        metrics.clone(),
        None,
    );
    let status = sup.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sup.run(async move {
        let _ = rx.await;
    }));

    wait_until("the first QEMU", || {
        read_pids(&pids).len() == 1 && status.borrow().state == VmState::Running
    })
    .await;
    let first = read_pids(&pids)[0];
    assert_eq!(status.borrow().qemu_pid, Some(first));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    wait_until("the restarted QEMU", || {
        read_pids(&pids).len() == 2 && status.borrow().state == VmState::Running
    })
    .await;
    assert_eq!(metrics.vm_restarts.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.vm_boot_failures.load(Ordering::Relaxed), 0);
    let st = status.borrow().clone();
    assert_eq!(st.restarts, 1);
    assert!(
        st.last_exit.as_deref().unwrap_or("").contains("SIGKILL"),
        "{:?}",
        st.last_exit
    );

    tx.send(()).unwrap();
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status.borrow().state, VmState::Stopped);
    for pid in read_pids(&pids) {
        assert!(!alive(pid), "QEMU double {pid} still runs after stop");
    }
}

#[tokio::test]
async fn a_vm_that_never_boots_is_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    // Exits at once, like QEMU rejecting its arguments or a guest powering off on a dm-verity error.
    let sup = Supervisor::new(
        plan(dir.path(), "exit 3"),
        policy(2, 3600),
        metrics.clone(),
        None,
    );
    let status = sup.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sup.run(async move {
        let _ = rx.await;
    }));
    wait_until("the failed state", || {
        status.borrow().state == VmState::Failed
    })
    .await;
    let st = status.borrow().clone();
    assert_eq!(st.consecutive_failures, 3);
    assert_eq!(st.restarts, 2);
    assert!(
        st.last_exit
            .as_deref()
            .unwrap_or("")
            .contains("exit status 3"),
        "{:?}",
        st.last_exit
    );
    assert_eq!(metrics.vm_boot_failures.load(Ordering::Relaxed), 3);
    assert_eq!(metrics.vm_restarts.load(Ordering::Relaxed), 2);
    tx.send(()).unwrap();
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_restart_is_refused_when_the_restart_check_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ >> {}; exit 1", pids.display());
    let metrics = Arc::new(Metrics::default());
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = calls.clone();
    let sup = Supervisor::new(plan(dir.path(), &script), policy(2, 3600), metrics, None)
        .with_restart_check(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err("artifact rootfs.img changed".into())
        }));
    let status = sup.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sup.run(async move {
        let _ = rx.await;
    }));
    wait_until("the failed state", || {
        status.borrow().state == VmState::Failed
    })
    .await;
    // QEMU ran once (the first start is the caller's to check); both restarts were refused.
    assert_eq!(read_pids(&pids).len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let last = status.borrow().last_exit.clone().unwrap_or_default();
    assert!(
        last.contains("not restarted: artifact rootfs.img changed"),
        "{last}"
    );
    tx.send(()).unwrap();
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The agent binary, its state directory and the pid files its doubles write.
struct AgentRun {
    child: std::process::Child,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

fn write_exec(path: &Path, body: &str) {
    chrysalis_testkit::write_executable(path, body);
}

fn start_agent() -> AgentRun {
    start_agent_with(
        "#!/bin/sh\nsleep 600 &\necho $! >> {dir}/pids\necho $$ >> {dir}/qemu.pids\nwait\n",
        "backoff_initial_ms = 50\nstable_after_secs = 0\n",
        "[services.sim_quote]\nenabled = false\n",
    )
}

/// Starts the agent binary on a test image (`chrysalis_testkit::image`) with a QEMU double
/// running `qemu_script` (`{dir}` is the test directory), extra `[supervisor]` lines and extra
/// sections.
fn start_agent_with(qemu_script: &str, supervisor: &str, extra: &str) -> AgentRun {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    chrysalis_testkit::image::TestImage::write(d).unwrap();
    // QEMU double: forks a grandchild into its process group, as QEMU's helpers would, and records both.
    write_exec(
        &d.join("fake-qemu"),
        &qemu_script.replace("{dir}", &d.display().to_string()),
    );
    // vhost-device-vsock double: creates the vhost-user socket named in --vm, and plays the
    // guest side of hybrid vsock for the tests: a connection to {dir}/guest.sock that sends
    // "<port>\n" is carried to <uds-path>_<port>, opened by this process as the real multiplexer
    // would.
    write_exec(
        &d.join("fake-vhost"),
        &r#"#!/usr/bin/python3
import os, socket, sys, threading
opts = dict(kv.split('=', 1) for kv in sys.argv[2].split(','))
# Bound before the vhost-user socket, which the agent waits for: it exists once the VM runs.
if os.path.exists('{dir}/guest.sock'):
    os.unlink('{dir}/guest.sock')  # left by the previous run
g = socket.socket(socket.AF_UNIX); g.bind('{dir}/guest.sock'); g.listen()
s = socket.socket(socket.AF_UNIX); s.bind(opts['socket']); s.listen()
open('{dir}/pids', 'a').write(f'{os.getpid()}\n')
def pump(a, b):
    while True:
        data = a.recv(65536)
        if not data:
            break
        b.sendall(data)
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def guest(c):
    port = b''
    while not port.endswith(b'\n'):
        port += c.recv(1)
    h = socket.socket(socket.AF_UNIX)
    h.connect(opts['uds-path'] + '_' + port.decode().strip())
    threading.Thread(target=pump, args=(c, h), daemon=True).start()
    pump(h, c)
while True:
    c, _ = g.accept()
    threading.Thread(target=guest, args=(c,), daemon=True).start()
"#
        .replace("{dir}", &d.display().to_string()),
    );
    std::fs::write(
        d.join("host.toml"),
        format!(
            "[image]\nmanifest = \"manifest.json\"\n\
             [vm]\nplatform = \"sim\"\nvcpus = 1\nmemory_mib = 512\nstate_dir = \"state\"\n\
             [qemu]\nbinary = \"{0}/fake-qemu\"\n\
             [sim]\naccel = \"tcg\"\nvhost_device_vsock = \"{0}/fake-vhost\"\n\
             [relay]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [supervisor]\nready_probe = false\n{supervisor}{extra}",
            d.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_chrysalis-host"))
        .args(["run", "--config"])
        .arg(d.join("host.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    AgentRun {
        child,
        state,
        _dir: dir,
    }
}

fn status_json(state: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&admin_get(state, "/status")?).ok()
}

/// Sends SIGTERM and waits for a clean exit.
async fn stop(run: &mut AgentRun) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            assert!(s.success(), "agent exited with {s}");
            return;
        }
        assert!(
            start.elapsed() < HANG_GUARD,
            "agent did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.0 GET against the admin endpoint.
fn admin_get(state: &Path, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(state.join("admin.addr")).ok()?;
    let mut s = std::net::TcpStream::connect(addr.trim()).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

fn metric(state: &Path, name: &str) -> Option<u64> {
    let text = admin_get(state, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn vm_state(state: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&admin_get(state, "/status")?).ok()?;
    v["vm"]["state"].as_str().map(str::to_string)
}

#[tokio::test]
async fn agent_restarts_a_killed_vm_and_stops_cleanly_on_sigterm() {
    let mut run = start_agent();
    let parent = run.state.parent().unwrap().to_path_buf();
    let state = run.state.clone();
    wait_until("the VM to run", || {
        vm_state(&state).as_deref() == Some("running")
            && read_pids(&parent.join("qemu.pids")).len() == 1
    })
    .await;
    // A slow machine may already have restarted a run whose start timed out; count from here.
    let before = metric(&state, "chrysalis_vm_restarts_total").expect("restart metric");
    let runs_before = read_pids(&parent.join("qemu.pids")).len();

    let qemu = *read_pids(&parent.join("qemu.pids")).last().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the restart", || {
        metric(&state, "chrysalis_vm_restarts_total") == Some(before + 1)
            && vm_state(&state).as_deref() == Some("running")
            && read_pids(&parent.join("qemu.pids")).len() == runs_before + 1
    })
    .await;

    let mut all: Vec<u32> = read_pids(&parent.join("pids"));
    all.extend(read_pids(&parent.join("qemu.pids")));
    // Per run: the QEMU double, its grandchild and the vhost double; at least the two runs above.
    assert!(all.len() >= 6, "{all:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < HANG_GUARD,
            "agent did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "agent exited with {status}");
    // No process the agent started, directly or through its children, survives it.
    let left: Vec<u32> = all.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "orphaned processes still run: {left:?}");
    // And it left no child of its own behind: /proc lists no process whose parent it was.
    let agent = run.child.id();
    let children: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| {
            std::fs::read_to_string(format!("/proc/{n}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .map(|pp| pp == agent.to_string())
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(
        children.is_empty(),
        "children of the agent remain: {children:?}"
    );
}

#[tokio::test]
async fn a_guest_that_powers_off_is_reported_failed_in_status() {
    // max_restarts = 0: the first early exit (a dm-verity error powers the guest off, QEMU exits
    // with -no-reboot) is final, which is what the e2e tests and `cargo xtask demo` watch for.
    let mut run = start_agent_with(
        "#!/bin/sh\necho 'chrysalis-init: FATAL: rootfs: dm-verity: I/O error' >> {dir}/state/chrysalis-serial.log\nexit 0\n",
        "max_restarts = 0\nstable_after_secs = 3600\n",
        "[services.sim_quote]\nenabled = false\n",
    );
    let state = run.state.clone();
    wait_until("the failed state", || {
        vm_state(&state).as_deref() == Some("failed")
    })
    .await;
    let st = status_json(&state).unwrap();
    assert_eq!(st["vm"]["ready"], false);
    let last = st["vm"]["last_exit"].as_str().unwrap();
    assert!(
        last.contains("exit status 0")
            && last.contains("guest console: chrysalis-init: FATAL: rootfs: dm-verity"),
        "{st}"
    );
    assert_eq!(metric(&state, "chrysalis_vm_boot_failures_total"), Some(1));
    stop(&mut run).await;
}

#[tokio::test]
async fn the_agent_quotes_the_launched_image_over_hybrid_vsock() {
    use chrysalis_attestation::hostcall::{self, Request, Response};
    use chrysalis_attestation::{Evidence, ReportData, TdxQuote, TrustAnchors};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut run = start_agent_with(
        "#!/bin/sh\nexec sleep 600\n",
        "",
        "[services.collateral]\nenabled = true\n[services.sim_quote]\ncollateral_validity_secs = 600\n",
    );
    let state = run.state.clone();
    wait_until("the VM to run", || {
        vm_state(&state).as_deref() == Some("running")
    })
    .await;
    let st = status_json(&state).unwrap();
    let sim = &st["sim_quote"];
    let root: chrysalis_attestation::Sha256 =
        serde_json::from_value(sim["sim_root_sha256"].clone()).unwrap();
    assert_eq!(sim["firmware"], "manifest:tdx");

    async fn call(path: PathBuf, req: &Request) -> Response {
        call_with(path, b"", req).await
    }
    async fn call_with(path: PathBuf, prefix: &[u8], req: &Request) -> Response {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(prefix).await.unwrap();
        s.write_all(&hostcall::encode(req).unwrap()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        hostcall::decode(&out).unwrap()
    }
    // The guest's connections to host port P arrive on <uds_path>_P (vhost-device-vsock's
    // convention), opened by the multiplexer the agent launched.
    let rd = ReportData([0x42; 64]);
    let Response::Quote { quote, collateral } = call_with(
        state.parent().unwrap().join("guest.sock"),
        format!("{}\n", hostcall::SIM_QUOTE_PORT).as_bytes(),
        &Request::SimQuote { report_data: rd },
    )
    .await
    else {
        panic!("no quote")
    };
    // Any other process connecting to that socket is not the launched VM: refused, no quote.
    match call(
        state.join(format!("vsock.sock_{}", hostcall::SIM_QUOTE_PORT)),
        &Request::SimQuote { report_data: rd },
    )
    .await
    {
        Response::Error { message } => {
            assert!(message.contains("vhost-device-vsock"), "{message}")
        }
        other => panic!("a quote for another peer: {other:?}"),
    }
    let parsed = TdxQuote::parse(&quote).unwrap();
    assert_eq!(parsed.report_data(), rd);
    let m = parsed.measurements();
    assert_eq!(
        serde_json::to_value(m.registers.mr_td).unwrap(),
        sim["mr_td"]
    );
    assert_eq!(serde_json::to_value(m.registers.rtmr).unwrap(), sim["rtmr"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let anchors = TrustAnchors::none().dangerous_with_simulated_intel_root(root);
    let verdict = chrysalis_attestation::verify::verify(
        &Evidence::tdx(quote.clone(), collateral).unwrap(),
        &anchors,
        None,
        now,
    )
    .unwrap();
    let _ = verdict;
    // Untrusted without the sim root: a sim quote is never accepted by the vendor anchors.
    let Response::Collateral { collateral } = call(
        state.join(format!("vsock.sock_{}", hostcall::COLLATERAL_PORT)),
        &Request::Collateral,
    )
    .await
    else {
        panic!("no collateral")
    };
    assert!(
        chrysalis_attestation::verify::verify(
            &Evidence::tdx(quote.clone(), Some(collateral.clone())).unwrap(),
            &TrustAnchors::vendor(),
            None,
            now
        )
        .is_err()
    );
    chrysalis_attestation::verify::verify(
        &Evidence::tdx(quote, Some(collateral)).unwrap(),
        &anchors,
        None,
        now,
    )
    .unwrap();
    stop(&mut run).await;
}
