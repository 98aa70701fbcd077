//! Relay benchmark: throughput (one stream) and request/response latency (1, 64 and 256 concurrent
//! connections) through the chrysalis relay, against a direct connection to the guest and against
//! HAProxy and socat doing the same relay, all in one run.
//!
//! The "guest" is the test kit's fake hybrid-vsock guest (an echo server behind the
//! `CONNECT`/`OK` protocol on a Unix socket), running on its own thread and runtime:
//! * direct: the client connects to the Unix socket and does the handshake itself;
//! * relay: the client connects to the relay's TCP port; the relay does the handshake;
//! * socat: `socat TCP-LISTEN:… UNIX-CONNECT:…`; the client does the handshake through it;
//! * HAProxy: TCP mode with `option splice-auto`, the Unix socket as its server, as many threads
//!   as our relay's runtime; the client does the handshake through it.
//!
//! Run: `cargo bench -p chrysalis-host --bench relay`. Environment knobs:
//! `CHRYSALIS_BENCH_QUICK=1` (128 MiB, fewer rounds: the CI smoke run), `CHRYSALIS_BENCH_MIB`
//! (stream size), `CHRYSALIS_BENCH_RUNS` (repetitions; medians are reported),
//! `CHRYSALIS_BENCH_CONNS` and `CHRYSALIS_BENCH_ROUNDS` (latency test shape), `CHRYSALIS_BENCH_PIN=1`
//! (the relay on a core of its own, client and guest on others),
//! `CHRYSALIS_BENCH_JSON` (also write the figures as JSON to this path).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrysalis_host::metrics::Metrics;
use chrysalis_host::relay::{CopyMode, Relay, RelayConfig};
use chrysalis_host::transport::HybridVsockTransport;
use chrysalis_testkit::hybrid::{FakeHybridGuest, echo, hybrid_handshake};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const PORT: u32 = 8443;
const REQUEST: usize = 512;
/// The middle concurrency of the latency test.
const MID_CONNS: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Direct,
    DirectTcp,
    Relay,
    RelayUserspace,
    Socat,
    Haproxy,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct (Unix socket)",
            Route::DirectTcp => "direct (TCP, no relay)",
            Route::Relay => "chrysalis relay (auto: copy/splice)",
            Route::RelayUserspace => "chrysalis relay (user-space copy)",
            Route::Socat => "socat relay",
            Route::Haproxy => "HAProxy (TCP mode, splice-auto)",
        }
    }
}

/// Where each path is reached.
struct Targets {
    uds: PathBuf,
    direct_tcp: SocketAddr,
    relay: SocketAddr,
    relay_userspace: SocketAddr,
    socat: Option<SocketAddr>,
    haproxy: Option<SocketAddr>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn open(t: &Targets, p: Route) -> Box<dyn Io> {
    match p {
        Route::Direct => {
            let mut s = UnixStream::connect(&t.uds)
                .await
                .expect("connect guest socket");
            hybrid_handshake(&mut s, PORT).await.expect("handshake");
            Box::new(s)
        }
        Route::DirectTcp => {
            let s = TcpStream::connect(t.direct_tcp)
                .await
                .expect("connect TCP echo");
            s.set_nodelay(true).unwrap();
            Box::new(s)
        }
        Route::Relay | Route::RelayUserspace => {
            let addr = if p == Route::Relay {
                t.relay
            } else {
                t.relay_userspace
            };
            let s = TcpStream::connect(addr).await.expect("connect relay");
            s.set_nodelay(true).unwrap();
            Box::new(s)
        }
        Route::Socat | Route::Haproxy => {
            let addr = if p == Route::Socat {
                t.socat
            } else {
                t.haproxy
            };
            let mut s = TcpStream::connect(addr.expect("peer relay running"))
                .await
                .expect("connect peer relay");
            s.set_nodelay(true).unwrap();
            // socat and HAProxy forward bytes blindly: the handshake goes through them.
            s.write_all(format!("CONNECT {PORT}\n").as_bytes())
                .await
                .unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            assert!(
                line.starts_with(b"OK "),
                "{} handshake: {:?}",
                p.name(),
                String::from_utf8_lossy(&line)
            );
            Box::new(s)
        }
    }
}

/// Sends `total` bytes and reads the echo back concurrently; returns MB/s of payload (one direction).
async fn throughput(t: &Targets, p: Route, total: usize) -> f64 {
    let s = open(t, p).await;
    let (mut r, mut w) = tokio::io::split(s);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let buf = vec![0x5au8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len());
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await.unwrap();
    assert_eq!(got, total, "{}: short echo", p.name());
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// `conns` connections each doing `rounds` request/response pairs at once; returns (p50, p99) µs.
async fn latency(t: &Targets, p: Route, conns: usize, rounds: usize) -> (f64, f64) {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(open(t, p).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let mut tasks = Vec::new();
    for mut s in streams {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let req = vec![0x42u8; REQUEST];
            let mut resp = vec![0u8; REQUEST];
            let mut samples = Vec::with_capacity(rounds);
            // One untimed exchange first: through our relay, `open` returns once TCP is connected,
            // while the relay may still be connecting to the guest; the peers' handshakes went
            // through them before `open` returned. Every path starts timing fully established.
            s.write_all(&req).await.unwrap();
            s.read_exact(&mut resp).await.unwrap();
            barrier.wait().await;
            for _ in 0..rounds {
                let t0 = Instant::now();
                s.write_all(&req).await.unwrap();
                s.read_exact(&mut resp).await.unwrap();
                samples.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            samples
        }));
    }
    let mut all = Vec::with_capacity(conns * rounds);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (pct(0.50), pct(0.99))
}

/// CPU seconds (user + system) this process has used: client, relay and fake guest together. The
/// difference between two routes is what the extra hop costs, independent of other load on the box.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(u.user_time()) + tv(u.system_time())
}

/// CPU seconds (user + system, all threads) of another process, from /proc/PID/stat.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'; utime and stime are
    // the 14th and 15th fields of the line, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    f.iter().sum::<f64>() / ticks
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Which cores the client, the fake guest and the relay run on (`CHRYSALIS_BENCH_PIN=1`).
///
/// Unpinned (the default), the three share every core, as they do on this box in any case; the
/// throughput figure is then bounded by the box's total CPU, and every hop adds work. Pinned, the
/// relay (ours or socat) gets a core to itself, so its figure is what one relay core sustains.
#[derive(Clone, Copy, Debug)]
struct Placement {
    client: usize,
    guest: usize,
    relay: usize,
}

impl Placement {
    fn choose(cores: usize) -> Option<Self> {
        if std::env::var("CHRYSALIS_BENCH_PIN").as_deref() != Ok("1") {
            return None;
        }
        match cores {
            0 | 1 => None,
            2 => Some(Self {
                client: 0,
                guest: 0,
                relay: 1,
            }),
            _ => Some(Self {
                client: 0,
                guest: 1,
                relay: 2,
            }),
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_current_thread(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// Runs `f` on a dedicated thread with its own runtime, as if it were another process; its threads
/// run on `cpu` when given.
fn spawn_runtime<F, Fut>(
    name: &str,
    workers: usize,
    cpu: Option<usize>,
    f: F,
) -> std::sync::mpsc::Receiver<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_current_thread(cpu);
            }
            let rt = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .on_thread_start(move || {
                        if let Some(cpu) = cpu {
                            pin_current_thread(cpu);
                        }
                    })
                    .enable_all()
                    .build()
                    .unwrap()
            };
            rt.block_on(async move {
                let fut = f();
                ready_tx.send(()).unwrap();
                fut.await;
            });
        })
        .unwrap();
    ready_rx
}

/// A free loopback port: reserved, released, and left for a peer relay to bind.
fn free_port() -> Option<u16> {
    Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

/// `program`, on `cpu` when given: a peer relay runs where ours does (forked children inherit
/// the mask).
fn pinned(program: &str, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), program]);
            c
        }
        None => Command::new(program),
    }
}

fn start_socat(uds: &Path, cpu: Option<usize>) -> Option<(Child, SocketAddr)> {
    let port = free_port()?;
    let child = pinned("socat", cpu)
        .arg(format!(
            "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay"
        ))
        .arg(format!("UNIX-CONNECT:{}", uds.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_listening(child, port)
}

/// HAProxy relaying TCP to the guest's Unix socket, with `threads` threads, on `cpu` when given.
/// Returns None when haproxy is not installed or does not start.
fn start_haproxy(
    dir: &Path,
    uds: &Path,
    threads: usize,
    cpu: Option<usize>,
) -> Option<(Child, SocketAddr)> {
    let port = free_port()?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 4096\n    nbthread {threads}\n\
             defaults\n    mode tcp\n    option splice-auto\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\
             frontend relay\n    bind 127.0.0.1:{port}\n    default_backend guest\n\
             backend guest\n    server guest unix@{}\n",
            uds.display()
        ),
    )
    .ok()?;
    let child = pinned("haproxy", cpu)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).ok()?)
        .spawn()
        .ok()?;
    let started = wait_listening(child, port);
    if started.is_none() {
        eprintln!(
            "haproxy: {}",
            std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
        );
    }
    started
}

/// Waits (5 s at most) until `child` accepts on 127.0.0.1:`port`.
fn wait_listening(mut child: Child, port: u16) -> Option<(Child, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(5) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((child, addr))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("relay benchmark: run with `cargo bench -p chrysalis-host --bench relay`");
        return;
    }
    let quick = std::env::var_os("CHRYSALIS_BENCH_QUICK").is_some();
    let mib = env_usize("CHRYSALIS_BENCH_MIB", if quick { 128 } else { 1024 });
    let runs = env_usize("CHRYSALIS_BENCH_RUNS", if quick { 1 } else { 3 });
    let conns = env_usize("CHRYSALIS_BENCH_CONNS", 256);
    let rounds = env_usize("CHRYSALIS_BENCH_ROUNDS", if quick { 20 } else { 200 });
    let single_rounds = if quick { 2_000 } else { 20_000 };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let placement = Placement::choose(cores);
    // The relay's runtime: worker threads as in the agent (one per core it may use), or
    // CHRYSALIS_BENCH_RELAY_THREADS.
    let relay_threads = env_usize(
        "CHRYSALIS_BENCH_RELAY_THREADS",
        if placement.is_some() { 1 } else { cores },
    );
    if let Some(p) = placement {
        pin_current_thread(p.client);
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");

    // The fake guest: its own thread and runtime.
    let guest_uds = uds.clone();
    let (tcp_tx, tcp_rx) = std::sync::mpsc::channel();
    spawn_runtime("guest", 1, placement.map(|p| p.guest), move || async move {
        let _g = FakeHybridGuest::bind(&guest_uds, &[PORT]).unwrap();
        // The same echo service on plain TCP: the "no relay at all" baseline.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tcp_tx.send(l.local_addr().unwrap()).unwrap();
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(echo(s));
        }
    })
    .recv()
    .unwrap();
    let direct_tcp = tcp_rx.recv().unwrap();

    // The relays (splice and user-space copy): one runtime, as in the agent.
    let relay_uds = uds.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    spawn_runtime(
        "relay",
        relay_threads,
        placement.map(|p| p.relay),
        move || async move {
            let mut addrs = Vec::new();
            for mode in [CopyMode::Auto, CopyMode::Userspace] {
                let relay = Arc::new(Relay::new(
                    RelayConfig {
                        guest_port: PORT,
                        copy_mode: mode,
                        max_connections: 4096,
                        // Every bench client comes from 127.0.0.1.
                        max_per_source: 4096,
                        ..RelayConfig::default()
                    },
                    Arc::new(HybridVsockTransport::new(&relay_uds)),
                    Arc::new(Metrics::default()),
                ));
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs.push(l.local_addr().unwrap());
                tokio::spawn(relay.serve(l, std::future::pending()));
            }
            addr_tx.send(addrs).unwrap();
            std::future::pending::<()>().await;
        },
    )
    .recv()
    .unwrap();
    let addrs = addr_rx.recv().unwrap();

    let socat = start_socat(&uds, placement.map(|p| p.relay));
    if socat.is_none() {
        eprintln!(
            "socat not found or did not start: socat rows skipped (apt-get install -y socat)"
        );
    }
    let haproxy = start_haproxy(dir.path(), &uds, relay_threads, placement.map(|p| p.relay));
    if haproxy.is_none() {
        eprintln!(
            "haproxy not found or did not start: HAProxy rows skipped (cargo xtask setup installs it)"
        );
    }
    let targets = Targets {
        uds,
        direct_tcp,
        relay: addrs[0],
        relay_userspace: addrs[1],
        socat: socat.as_ref().map(|s| s.1),
        haproxy: haproxy.as_ref().map(|s| s.1),
    };

    let mut paths = vec![
        Route::Direct,
        Route::DirectTcp,
        Route::Relay,
        Route::RelayUserspace,
    ];
    if targets.haproxy.is_some() {
        paths.push(Route::Haproxy);
    }
    if targets.socat.is_some() {
        paths.push(Route::Socat);
    }

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("relay benchmark: {cores} cores, {cpu}; relay runtime with {relay_threads} thread(s)");
    match placement {
        Some(p) => println!(
            "placement: client on core {}, fake guest on core {}, relays (ours and socat) on core {} \
             (CHRYSALIS_BENCH_PIN=1)",
            p.client, p.guest, p.relay
        ),
        None => println!(
            "placement: none (client, guest and relay share every core; CHRYSALIS_BENCH_PIN=1 \
             gives the relay a core of its own)"
        ),
    }
    println!(
        "throughput: one stream, {mib} MiB echoed; latency: request/response pairs of {REQUEST} B, \
         1 connection x {single_rounds} and {conns} concurrent connections x {rounds}; medians of {runs} run(s)"
    );
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("load average before: {}\n", load());

    struct Row {
        mb_s: f64,
        one: (f64, f64),
        mid: (f64, f64),
        many: (f64, f64),
        cpu_gib: f64,
        cpu_req: f64,
    }
    let mut rows = Vec::new();
    for &p in &paths {
        let (mut t, mut one50, mut one99, mut p50, mut p99, mut cg, mut cr) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut mid50, mut mid99) = (vec![], vec![]);
        // HAProxy's CPU is its own process's; added to ours, the columns compare like for like.
        // (socat forks a child per connection, whose time is not counted until it is reaped.)
        let peer = (p == Route::Haproxy)
            .then(|| haproxy.as_ref().map(|h| h.0.id()))
            .flatten();
        let cpu = || cpu_seconds() + peer.map_or(0.0, process_cpu_seconds);
        for _ in 0..runs {
            let c0 = cpu();
            t.push(client.block_on(throughput(&targets, p, mib << 20)));
            let c1 = cpu();
            let (a, b) = client.block_on(latency(&targets, p, conns, rounds));
            let c2 = cpu();
            let (e, f) = client.block_on(latency(&targets, p, 1, single_rounds));
            let (g, h) = client.block_on(latency(&targets, p, MID_CONNS, rounds));
            mid50.push(g);
            mid99.push(h);
            p50.push(a);
            p99.push(b);
            one50.push(e);
            one99.push(f);
            cg.push((c1 - c0) * 1024.0 / mib as f64);
            cr.push((c2 - c1) * 1e6 / (conns * rounds) as f64);
        }
        rows.push(Row {
            mb_s: median(t),
            one: (median(one50), median(one99)),
            mid: (median(mid50), median(mid99)),
            many: (median(p50), median(p99)),
            cpu_gib: median(cg),
            cpu_req: median(cr),
        });
    }

    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "path",
        "MB/s",
        "1c p50",
        "1c p99",
        "64c p50",
        "64c p99",
        "256c p50",
        "256c p99",
        "CPU s/GiB",
        "CPU µs/req"
    );
    let external = |p: Route| p == Route::Socat;
    for (p, r) in paths.iter().zip(&rows) {
        // socat's forked children are not counted (see above).
        let (g, q) = if external(*p) {
            (f64::NAN, f64::NAN)
        } else {
            (r.cpu_gib, r.cpu_req)
        };
        println!(
            "{:<34} {:>8.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>10.2} {:>10.1}",
            p.name(),
            r.mb_s,
            r.one.0,
            r.one.1,
            r.mid.0,
            r.mid.1,
            r.many.0,
            r.many.1,
            g,
            q
        );
    }
    println!(
        "(latencies in µs; 1c = one connection, 64c = {MID_CONNS} and 256c = {conns} concurrent connections)"
    );
    let idx = |p: Route| paths.iter().position(|x| *x == p);
    let row = |p: Route| &rows[idx(p).unwrap()];
    let (direct, tcp, relay) = (row(Route::Direct), row(Route::DirectTcp), row(Route::Relay));
    println!();
    println!(
        "relay / direct throughput:        {:.2} vs Unix socket, {:.2} vs TCP  (goal ≥ 0.90)",
        relay.mb_s / direct.mb_s,
        relay.mb_s / tcp.mb_s
    );
    println!(
        "relay added p99, 1 connection:    {:.0} µs vs Unix socket, {:.0} µs vs TCP  (goal ≤ 100 µs)",
        relay.one.1 - direct.one.1,
        relay.one.1 - tcp.one.1
    );
    println!(
        "relay added p99, {conns} connections: {:.0} µs vs Unix socket, {:.0} µs vs TCP",
        relay.many.1 - direct.many.1,
        relay.many.1 - tcp.many.1
    );
    println!(
        "relay hop CPU cost (vs TCP):      {:.2} s/GiB echoed, {:.1} µs/request",
        relay.cpu_gib - tcp.cpu_gib,
        relay.cpu_req - tcp.cpu_req
    );
    let mut json = serde_json::json!({
        "cores": cores, "cpu": cpu, "mib": mib,
        "placement": placement.map(|p| format!("client core {}, guest core {}, relay core {}", p.client, p.guest, p.relay)), "runs": runs, "conns": conns, "rounds": rounds,
        "single_rounds": single_rounds,
        "paths": paths.iter().zip(&rows).map(|(p, r)| serde_json::json!({
            "path": p.name(), "mb_per_s": r.mb_s,
            "one_conn_p50_us": r.one.0, "one_conn_p99_us": r.one.1,
            "mid_conn_p50_us": r.mid.0, "mid_conn_p99_us": r.mid.1,
            "many_conn_p50_us": r.many.0, "many_conn_p99_us": r.many.1,
            "cpu_s_per_gib": if external(*p) { None } else { Some(r.cpu_gib) },
            "cpu_us_per_request": if external(*p) { None } else { Some(r.cpu_req) },
        })).collect::<Vec<_>>(),
        "relay_over_direct_unix_throughput": relay.mb_s / direct.mb_s,
        "relay_over_direct_tcp_throughput": relay.mb_s / tcp.mb_s,
        "relay_added_p99_one_conn_us": relay.one.1 - direct.one.1,
    });
    if let Some(i) = idx(Route::Socat) {
        let socat = &rows[i];
        println!(
            "relay / socat throughput:         {:.2}  (goal ≥ 1.5)",
            relay.mb_s / socat.mb_s
        );
        println!(
            "socat added p99, 1 connection:    {:.0} µs vs Unix socket",
            socat.one.1 - direct.one.1
        );
        json["relay_over_socat_throughput"] = serde_json::json!(relay.mb_s / socat.mb_s);
    }
    let haproxy_row = idx(Route::Haproxy).map(|i| &rows[i]);
    // Added p99 over the direct Unix socket, ours and HAProxy's, per concurrency.
    let added_p99 = haproxy_row.map(|h| {
        [
            (1, relay.one.1, h.one.1, direct.one.1),
            (MID_CONNS, relay.mid.1, h.mid.1, direct.mid.1),
            (conns, relay.many.1, h.many.1, direct.many.1),
        ]
        .map(|(n, r, hp, d)| (n, r - d, hp - d))
    });
    if let (Some(h), Some(added)) = (haproxy_row, added_p99) {
        println!(
            "relay / HAProxy throughput:       {:.2}  (goal ≥ 1.0)",
            relay.mb_s / h.mb_s
        );
        for (n, ours, theirs) in added {
            println!(
                "added p99, {n:>3} connection(s):   relay {ours:.0} µs, HAProxy {theirs:.0} µs"
            );
        }
        json["relay_over_haproxy_throughput"] = serde_json::json!(relay.mb_s / h.mb_s);
    }
    println!("load average after: {}", load());
    let fig = |v: serde_json::Value| record(&v);
    // Throughput against each baseline: (name, baseline, its MB/s, goal ratio).
    let mut versus = vec![(
        "relay throughput, 1 connection",
        "direct Unix socket to the guest",
        direct.mb_s,
        0.90,
    )];
    if let Some(i) = idx(Route::Socat) {
        versus.push((
            "relay throughput vs socat, 1 connection",
            "socat TCP-LISTEN -> UNIX-CONNECT",
            rows[i].mb_s,
            1.5,
        ));
    }
    if let Some(h) = haproxy_row {
        versus.push((
            "relay throughput vs HAProxy, 1 connection",
            "HAProxy 2.6 TCP mode, splice-auto, same threads",
            h.mb_s,
            1.0,
        ));
    }
    for (name, baseline, value, goal) in versus {
        fig(serde_json::json!({
            "name": name, "unit": "MB/s", "value": relay.mb_s,
            "baseline": baseline, "baseline_value": value,
            "ratio": relay.mb_s / value, "goal": format!(">= {goal:.2}x"),
            "met": relay.mb_s / value >= goal, "runs": runs,
        }));
    }
    if let Some(added) = added_p99 {
        // The goal is about concurrency: the single-connection pair is printed above only.
        for (n, ours, theirs) in added.into_iter().skip(1) {
            fig(serde_json::json!({
                "name": format!("relay added p99 vs HAProxy's, {n} connections"), "unit": "µs added",
                "value": ours, "baseline": "HAProxy's added p99 (same run)", "baseline_value": theirs,
                "ratio": if theirs > 0.0 { serde_json::json!(ours / theirs) } else { serde_json::Value::Null },
                "goal": "<= HAProxy's and <= 1000 µs",
                "met": ours <= theirs.max(0.0) && ours <= 1000.0, "runs": runs,
            }));
        }
    }
    for (label, r, d, goal) in [
        ("p50, 1 connection", relay.one.0, direct.one.0, None),
        ("p99, 1 connection", relay.one.1, direct.one.1, Some(100.0)),
        ("p50, 64 connections", relay.mid.0, direct.mid.0, None),
        ("p99, 64 connections", relay.mid.1, direct.mid.1, None),
        ("p50, 256 connections", relay.many.0, direct.many.0, None),
        ("p99, 256 connections", relay.many.1, direct.many.1, None),
    ] {
        fig(serde_json::json!({
            "name": format!("relay request latency {label}"), "unit": "µs", "value": r,
            "baseline": "direct Unix socket to the guest", "baseline_value": d,
            "ratio": r / d, "goal": goal.map(|g: f64| format!("<= {g} µs added")),
            "met": goal.map(|g| r - d <= g), "runs": runs,
            "note": format!("{} µs added", (r - d).round()),
        }));
    }
    if let Some(path) = std::env::var_os("CHRYSALIS_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
    for (mut child, _) in socat.into_iter().chain(haproxy) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn record(figure: &serde_json::Value) {
    chrysalis_testkit::bench_figure::record(figure).expect("write CHRYSALIS_BENCH_FIGURES");
}
