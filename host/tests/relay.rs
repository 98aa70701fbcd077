//! Relay acceptance tests over hybrid vsock: a fake guest speaks the `CONNECT`/`OK` protocol on a
//! Unix socket and echoes; clients talk to the relay's public TCP port on loopback.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrysalis_host::metrics::Metrics;
use chrysalis_host::relay::{CopyMode, Direction, Observer, Relay, RelayConfig};
use chrysalis_host::transport::HybridVsockTransport;
use chrysalis_testkit::hybrid::FakeHybridGuest;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GUEST_PORT: u32 = 8443;
/// Guards against a hang, never a speed assertion: every operation here finishes in well under it.
const HANG_GUARD: Duration = Duration::from_secs(120);

struct Setup {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    relay: Arc<Relay>,
    _guest: FakeHybridGuest,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Setup {
    async fn new(config: RelayConfig, observer: Option<Arc<dyn Observer>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let guest = FakeHybridGuest::bind(&uds, &[GUEST_PORT]).unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut relay = Relay::new(
            config,
            Arc::new(HybridVsockTransport::new(&uds)),
            metrics.clone(),
        );
        if let Some(o) = observer {
            relay = relay.with_observer(o);
        }
        let relay = Arc::new(relay);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(relay.clone().serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics,
            relay,
            _guest: guest,
            _dir: dir,
            stop: Some(tx),
            server,
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        (&mut self.server).await.unwrap();
    }
}

fn config(mode: CopyMode) -> RelayConfig {
    // A generous guest connect timeout: CI machines are slow and shared; this is not a timing test.
    RelayConfig {
        copy_mode: mode,
        guest_port: GUEST_PORT,
        connect_timeout: HANG_GUARD,
        // Every test client comes from 127.0.0.1.
        max_per_source: 4096,
        ..RelayConfig::default()
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Sends `total` seeded random bytes and checks that exactly the same bytes come back.
async fn echo_stream(stream: TcpStream, seed: u64, total: usize, chunk: usize) {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; chunk];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk);
            rng.fill_bytes(&mut buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut expect = vec![0u8; chunk];
    let mut got = vec![0u8; chunk];
    let mut seen = 0usize;
    while seen < total {
        let n = (total - seen).min(chunk);
        r.read_exact(&mut got[..n]).await.unwrap();
        rng.fill_bytes(&mut expect[..n]);
        assert!(
            got[..n] == expect[..n],
            "echoed bytes differ in the chunk at offset {seen}"
        );
        seen += n;
    }
    // The guest closes its side after our end of stream: the relay must propagate that.
    assert_eq!(
        r.read(&mut got[..1]).await.unwrap(),
        0,
        "expected end of stream after {total} bytes"
    );
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_round_trips_byte_exact() {
    let s = Setup::new(config(CopyMode::Auto), None).await;
    const GIB: usize = 1 << 30;
    let client = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::timeout(HANG_GUARD, echo_stream(client, 1, GIB, 1 << 20))
        .await
        .expect("1 GiB echo hung");
    // Counters settle when the connection task ends.
    tokio::time::timeout(HANG_GUARD, async {
        while get(&s.metrics.relay_active) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(get(&s.metrics.relay_bytes_to_guest), GIB as u64);
    assert_eq!(get(&s.metrics.relay_bytes_from_guest), GIB as u64);
    assert_eq!(get(&s.metrics.relay_total), 1);
    assert_eq!(get(&s.metrics.relay_errors), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_each_round_trip() {
    for mode in [CopyMode::Auto, CopyMode::Splice] {
        let s = Setup::new(config(mode), None).await;
        const CONNS: usize = 256;
        const EACH: usize = 4 << 20;
        let mut tasks = Vec::new();
        for i in 0..CONNS {
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                let c = TcpStream::connect(addr).await.unwrap();
                echo_stream(c, 1000 + i as u64, EACH, 256 * 1024).await;
            }));
        }
        tokio::time::timeout(HANG_GUARD, async {
            for t in tasks {
                t.await.unwrap();
            }
            while get(&s.metrics.relay_active) != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("concurrent echo hung");
        assert_eq!(get(&s.metrics.relay_total), CONNS as u64, "{mode:?}");
        assert_eq!(
            get(&s.metrics.relay_bytes_to_guest),
            (CONNS * EACH) as u64,
            "{mode:?}"
        );
        assert_eq!(
            get(&s.metrics.relay_bytes_from_guest),
            (CONNS * EACH) as u64,
            "{mode:?}"
        );
        assert_eq!(get(&s.metrics.relay_rejected), 0, "{mode:?}");
        s.stop().await;
    }
}

#[tokio::test]
async fn half_close_lets_the_client_read_the_rest() {
    for mode in [CopyMode::Auto, CopyMode::Splice, CopyMode::Userspace] {
        let s = Setup::new(config(mode), None).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&msg).await.unwrap();
        // Our write side is done; the read side must stay open for the answer.
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(HANG_GUARD, c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg, "{mode:?}");
        s.stop().await;
    }
}

#[tokio::test]
async fn a_refusing_guest_closes_the_client_and_is_counted() {
    let cfg = RelayConfig {
        guest_port: 9999,
        ..config(CopyMode::Auto)
    };
    let s = Setup::new(cfg, None).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(HANG_GUARD, c.read(&mut buf))
        .await
        .expect("client left hanging");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "expected the relay to close the connection, got {n:?}"
    );
    tokio::time::timeout(HANG_GUARD, async {
        while get(&s.metrics.relay_guest_connect_failures) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(get(&s.metrics.relay_errors), 1);
    assert_eq!(get(&s.metrics.relay_bytes_to_guest), 0);
    s.stop().await;
}

#[tokio::test]
async fn over_the_cap_connections_are_closed_at_once_and_counted() {
    let cfg = RelayConfig {
        max_connections: 2,
        ..config(CopyMode::Auto)
    };
    let s = Setup::new(cfg, None).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        // A round trip proves the connection occupies a slot.
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        held.push(c);
    }
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    let mut b = [0u8; 4];
    let n = tokio::time::timeout(HANG_GUARD, extra.read(&mut b))
        .await
        .expect("over-cap connection left open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(get(&s.metrics.relay_rejected), 1);
    assert_eq!(s.relay.connections().len(), 2);
    // A freed slot is usable again.
    drop(held.pop());
    tokio::time::timeout(HANG_GUARD, async {
        while get(&s.metrics.relay_active) != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let mut again = TcpStream::connect(s.addr).await.unwrap();
    again.write_all(b"pong").await.unwrap();
    again.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
    s.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_counted() {
    let cfg = RelayConfig {
        idle_timeout: Duration::from_millis(200),
        ..config(CopyMode::Auto)
    };
    let s = Setup::new(cfg, None).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    // Now silent: the relay must close it.
    let n = tokio::time::timeout(HANG_GUARD, c.read(&mut b))
        .await
        .expect("idle connection never closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    tokio::time::timeout(HANG_GUARD, async {
        while get(&s.metrics.relay_idle_timeouts) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    s.stop().await;
}

/// A guest that accepts `CONNECT <port>` and then reads and discards everything, never
/// answering: a server still waiting for the rest of a request.
async fn sink_guest(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {
                    line.push(b[0]);
                }
                let port = String::from_utf8_lossy(&line).replace("CONNECT ", "");
                if s.write_all(format!("OK {port}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    })
}

#[tokio::test]
async fn bytes_trickled_towards_the_guest_do_not_keep_a_connection_alive() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let guest = sink_guest(&uds).await;
    let metrics = Arc::new(Metrics::default());
    let relay = Arc::new(Relay::new(
        RelayConfig {
            idle_timeout: Duration::from_millis(300),
            ..config(CopyMode::Auto)
        },
        Arc::new(HybridVsockTransport::new(&uds)),
        metrics.clone(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(relay.serve(listener, std::future::pending()));
    let mut c = TcpStream::connect(addr).await.unwrap();
    // One byte every 50 ms, far more often than the idle timeout: before progress was what
    // counted, this held the connection for as long as the client liked.
    let closed = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if c.write_all(b"x").await.is_err() {
                return;
            }
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(50), c.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => panic!("the sink guest answered"),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickling client kept its connection");
    tokio::time::timeout(HANG_GUARD, async {
        while get(&metrics.relay_idle_timeouts) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    server.abort();
    guest.abort();
}

#[tokio::test]
async fn connections_over_the_per_source_cap_are_closed_and_other_sources_still_served() {
    let cfg = RelayConfig {
        max_per_source: 2,
        ..config(CopyMode::Auto)
    };
    let s = Setup::new(cfg, None).await;
    let round_trip = |mut c: TcpStream| async move {
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        c
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(round_trip(TcpStream::connect(s.addr).await.unwrap()).await);
    }
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    let mut b = [0u8; 4];
    let n = tokio::time::timeout(HANG_GUARD, extra.read(&mut b))
        .await
        .expect("over-cap connection left open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(get(&s.metrics.relay_rejected_per_source), 1);
    assert_eq!(get(&s.metrics.relay_rejected), 0);
    // Another source (127.0.0.2 is loopback too) is not affected.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = round_trip(other.connect(s.addr).await.unwrap()).await;
    assert_eq!(s.relay.connections().len(), 3);
    // Closing one frees its source's slot.
    drop(held.pop());
    tokio::time::timeout(HANG_GUARD, async {
        while get(&s.metrics.relay_active) != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let again = round_trip(TcpStream::connect(s.addr).await.unwrap()).await;
    drop((again, other, held));
    s.stop().await;
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(Direction, Vec<u8>)>>);

impl Observer for Recorder {
    fn observe(&self, _conn: u64, direction: Direction, bytes: &[u8]) {
        self.0.lock().unwrap().push((direction, bytes.to_vec()));
    }
}

#[tokio::test]
async fn an_observer_sees_every_forwarded_byte() {
    let rec = Arc::new(Recorder::default());
    let s = Setup::new(config(CopyMode::Splice), Some(rec.clone())).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    c.write_all(&msg).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, msg);
    s.stop().await;
    let seen = rec.0.lock().unwrap();
    let collect = |d: Direction| {
        seen.iter()
            .filter(|(x, _)| *x == d)
            .flat_map(|(_, b)| b.iter().copied())
            .collect::<Vec<u8>>()
    };
    assert_eq!(collect(Direction::ToGuest), msg);
    assert_eq!(collect(Direction::FromGuest), msg);
}

/// A guest that accepts `CONNECT <port>` and then writes as fast as it can, counting what the
/// socket took: a stream to a client that may have stopped reading.
async fn flood_guest(
    path: &std::path::Path,
    written: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let written = written.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {}
                if s.write_all(b"OK 1024\n").await.is_err() {
                    return;
                }
                let chunk = vec![0x5a_u8; 16 * 1024];
                while let Ok(n) = s.write(&chunk).await {
                    written.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    })
}

/// A client that stops reading must hold back the guest within bounded buffers: what the guest
/// manages to write before it blocks is the relay's bounded buffers plus the client's, not the
/// megabytes autotuning grows a socket to. Otherwise the guest never sees the stall and keeps
/// generating (and holding a slot) for a reader that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_back_the_guest_within_bounded_buffers() {
    for mode in [CopyMode::Auto, CopyMode::Splice, CopyMode::Userspace] {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let guest = flood_guest(&uds, written.clone()).await;
        let config = config(mode);
        let socket_buffer = config.socket_buffer as u64;
        let relay = Arc::new(Relay::new(
            config,
            Arc::new(HybridVsockTransport::new(&uds)),
            Arc::new(Metrics::default()),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(relay.serve(listener, std::future::pending()));
        // A small receive buffer, as a stalled reader would choose; it never reads.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let client = socket.connect(addr).await.unwrap();
        // Wait until the guest's writes stop (no progress for a second).
        let settled = tokio::time::timeout(HANG_GUARD, async {
            let mut last = u64::MAX;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = written.load(Ordering::Relaxed);
                if now == last && now > 0 {
                    return now;
                }
                last = now;
            }
        })
        .await
        .expect("the guest's writes never stopped: nothing held it back");
        // The kernel doubles SO_SNDBUF/SO_RCVBUF for its bookkeeping: the client socket's send
        // buffer and the splice pipe or copy buffer, plus the guest's own Unix socket buffer
        // (~208 KiB) and what the client took, stay well under 6× the setting. Autotuned, the
        // client's send buffer alone grows to tcp_wmem's maximum (4 MiB here).
        let bound = 6 * socket_buffer;
        eprintln!("{mode:?}: the guest wrote {settled} bytes before it was held back");
        assert!(
            settled <= bound,
            "{mode:?}: the guest wrote {settled} bytes for a client that reads nothing (bound \
             {bound}: socket_buffer {socket_buffer})"
        );
        drop(client);
        server.abort();
        guest.abort();
    }
}
