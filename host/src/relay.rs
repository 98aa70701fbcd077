//! The ciphertext relay: a public TCP listener whose connections are forwarded byte for byte to a guest port.
//!
//! The relay never parses or terminates TLS: it moves opaque bytes both ways until both sides have
//! closed, propagating half-close (when one side reaches end of stream, the write side of the other
//! is shut down). Each direction runs `splice(2)` through a pipe, so the bytes never enter user
//! space; when an [`Observer`] is attached (tests that record what the host saw) or splice is not
//! supported by a socket, it copies through a user-space buffer instead.
//!
//! Limits: a connection cap (connections over it are closed at once and counted), an idle timeout
//! (no byte in either direction for that long closes both sides), and a timeout for reaching the guest.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, inc};
use crate::transport::{Transport, connect_with_timeout};

/// The pipe size requested for splicing (the kernel may grant less; unprivileged users are capped
/// by `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: usize = 1 << 20;

/// How a connection's bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// `splice(2)` through a pipe, unless an observer is attached; falls back to a buffer copy when a
    /// socket does not support splice.
    #[default]
    Auto,
    /// Always `splice(2)` (with the same fallback).
    Splice,
    /// Always a user-space buffer copy.
    Userspace,
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the public client to the guest.
    ToGuest,
    /// From the guest to the public client.
    FromGuest,
}

/// Sees every byte the relay forwards. Attaching one forces the user-space copy path.
///
/// It exists for the confidentiality test (a canary must never appear in what the host forwards);
/// a production agent runs without one.
pub trait Observer: Send + Sync {
    /// Called with each chunk forwarded on connection `conn`, before it is written on.
    fn observe(&self, conn: u64, direction: Direction, bytes: &[u8]);
}

/// The relay's settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The guest vsock port that public connections are forwarded to.
    pub guest_port: u32,
    /// The most connections open at once; more are closed at once and counted.
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// How long reaching the guest port may take.
    pub connect_timeout: Duration,
    /// How bytes are moved.
    pub copy_mode: CopyMode,
    /// The user-space buffer size per direction (user-space path only).
    pub buffer_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            guest_port: chrysalis_attestation::hostcall::GUEST_TLS_PORT,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            copy_mode: CopyMode::Auto,
            buffer_size: 256 * 1024,
        }
    }
}

/// Bytes forwarded on one connection.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Bytes from the client to the guest.
    pub to_guest: AtomicU64,
    /// Bytes from the guest to the client.
    pub from_guest: AtomicU64,
}

/// A snapshot of one open connection, for status pages.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnectionInfo {
    /// The connection's number (counting from 1 since start).
    pub id: u64,
    /// The public peer's address.
    pub peer: String,
    /// Bytes forwarded to the guest so far.
    pub bytes_to_guest: u64,
    /// Bytes forwarded from the guest so far.
    pub bytes_from_guest: u64,
    /// Seconds since the connection was accepted.
    pub age_seconds: u64,
}

struct Open {
    peer: String,
    since: Instant,
    stats: Arc<ConnectionStats>,
}

/// A TCP → guest relay. Build it once and run [`Relay::serve`] on a bound listener.
pub struct Relay {
    config: RelayConfig,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    observer: Option<Arc<dyn Observer>>,
    open: Mutex<HashMap<u64, Open>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("transport", &self.transport)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// How a relayed connection ended, when it did not end cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The guest side could not be reached or refused.
    #[error("guest side: {0}")]
    Guest(#[from] crate::transport::TransportError),
    /// A socket failed while forwarding.
    #[error("forwarding {direction:?}")]
    Io {
        /// The direction that failed.
        direction: Direction,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Neither side sent a byte for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The listening socket failed.
    #[error("accepting public connections")]
    Accept(#[source] io::Error),
}

impl Relay {
    /// A relay that forwards to `config.guest_port` over `transport`, counting into `metrics`.
    pub fn new(config: RelayConfig, transport: Arc<dyn Transport>, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            transport,
            metrics,
            observer: None,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Attaches an observer that sees every forwarded byte (forces the user-space copy path).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The relay's settings.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The connections open now, with their byte counters.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = open
            .iter()
            .map(|(id, o)| ConnectionInfo {
                id: *id,
                peer: o.peer.clone(),
                bytes_to_guest: o.stats.to_guest.load(Ordering::Relaxed),
                bytes_from_guest: o.stats.from_guest.load(Ordering::Relaxed),
                age_seconds: o.since.elapsed().as_secs(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Accepts public connections on `listener` and relays each to the guest until `shutdown`
    /// completes; then stops accepting and closes every open connection.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: count, breathe, and keep serving.
                    inc(&self.metrics.relay_errors);
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                inc(&self.metrics.relay_rejected);
                tracing::debug!(%peer, "connection cap reached; closing");
                drop(tcp);
                continue;
            };
            let relay = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let id = relay.next_id.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                if let Err(e) = relay.handle(id, peer.to_string(), tcp).await {
                    tracing::debug!(conn = id, %peer, error = %e, "relay connection ended with an error");
                }
            });
        }
        tasks.shutdown().await;
    }

    /// Relays one accepted connection. Counts it and its outcome.
    async fn handle(
        &self,
        id: u64,
        peer: String,
        tcp: tokio::net::TcpStream,
    ) -> Result<(), RelayError> {
        inc(&self.metrics.relay_total);
        self.metrics.relay_active.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(ConnectionStats::default());
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Open {
                peer,
                since: Instant::now(),
                stats: stats.clone(),
            },
        );
        let result = self.forward(id, tcp, &stats).await;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.metrics.relay_active.fetch_sub(1, Ordering::Relaxed);
        match &result {
            Ok(()) => {}
            Err(RelayError::Idle(_)) => inc(&self.metrics.relay_idle_timeouts),
            Err(RelayError::Guest(_)) => {
                inc(&self.metrics.relay_errors);
                inc(&self.metrics.relay_guest_connect_failures);
            }
            Err(_) => inc(&self.metrics.relay_errors),
        }
        tracing::debug!(
            conn = id,
            to_guest = stats.to_guest.load(Ordering::Relaxed),
            from_guest = stats.from_guest.load(Ordering::Relaxed),
            "relay connection closed"
        );
        result
    }

    async fn forward(
        &self,
        id: u64,
        tcp: tokio::net::TcpStream,
        stats: &ConnectionStats,
    ) -> Result<(), RelayError> {
        let guest = connect_with_timeout(
            &*self.transport,
            self.config.guest_port,
            self.config.connect_timeout,
        )
        .await?;
        let io_err = |direction| move |source| RelayError::Io { direction, source };
        let client = register(OwnedFd::from(
            tcp.into_std().map_err(io_err(Direction::ToGuest))?,
        ))
        .map_err(io_err(Direction::ToGuest))?;
        let guest = register(guest.into_owned_fd().map_err(io_err(Direction::ToGuest))?)
            .map_err(io_err(Direction::ToGuest))?;

        let clock = Activity::new();
        let mode = match (self.config.copy_mode, &self.observer) {
            (_, Some(_)) | (CopyMode::Userspace, None) => CopyMode::Userspace,
            (m, None) => m,
        };
        let pump = Pump {
            mode,
            buffer_size: self.config.buffer_size,
            observer: self.observer.as_deref(),
            conn: id,
            clock: &clock,
        };
        let up = pump.run(
            &client,
            &guest,
            Direction::ToGuest,
            &stats.to_guest,
            &self.metrics.relay_bytes_to_guest,
        );
        let down = pump.run(
            &guest,
            &client,
            Direction::FromGuest,
            &stats.from_guest,
            &self.metrics.relay_bytes_from_guest,
        );
        let both = async { tokio::try_join!(up, down).map(|_| ()) };
        tokio::select! {
            r = both => r,
            () = clock.idle(self.config.idle_timeout) => Err(RelayError::Idle(self.config.idle_timeout)),
        }
    }
}

/// Registers a socket with tokio's reactor for readiness-driven raw I/O.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd owns its descriptor: it stays open, and `as_raw_fd` returns the same number,
    // until the AsyncFd (which owns the OwnedFd) is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// When either direction last moved a byte, for the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// One direction's copy loop and what it needs.
struct Pump<'a> {
    mode: CopyMode,
    buffer_size: usize,
    observer: Option<&'a dyn Observer>,
    conn: u64,
    clock: &'a Activity,
}

impl Pump<'_> {
    /// Moves bytes from `src` to `dst` until `src` ends, then shuts down `dst`'s write side.
    async fn run(
        &self,
        src: &AsyncFd<OwnedFd>,
        dst: &AsyncFd<OwnedFd>,
        direction: Direction,
        conn_counter: &AtomicU64,
        total_counter: &AtomicU64,
    ) -> Result<(), RelayError> {
        let count = |n: usize| {
            conn_counter.fetch_add(n as u64, Ordering::Relaxed);
            total_counter.fetch_add(n as u64, Ordering::Relaxed);
            self.clock.touch();
        };
        let err = |source| RelayError::Io { direction, source };
        if self.mode != CopyMode::Userspace {
            match splice_loop(src, dst, &count).await {
                Ok(()) => return half_close(dst).map_err(err),
                Err(SpliceError::Unsupported) => {
                    tracing::debug!(
                        ?direction,
                        "splice not supported by a socket; copying in user space"
                    );
                }
                Err(SpliceError::Io(e)) => return Err(err(e)),
            }
        }
        self.copy_loop(src, dst, direction, &count)
            .await
            .map_err(err)?;
        half_close(dst).map_err(err)
    }

    async fn copy_loop(
        &self,
        src: &AsyncFd<OwnedFd>,
        dst: &AsyncFd<OwnedFd>,
        direction: Direction,
        count: &impl Fn(usize),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; self.buffer_size.max(4096)];
        loop {
            let n = src
                .async_io(tokio::io::Interest::READABLE, |fd| {
                    Ok(nix::unistd::read(fd, &mut buf)?)
                })
                .await?;
            if n == 0 {
                return Ok(());
            }
            if let Some(o) = self.observer {
                o.observe(self.conn, direction, &buf[..n]);
            }
            let mut off = 0;
            while off < n {
                let m = dst
                    .async_io(tokio::io::Interest::WRITABLE, |fd| {
                        Ok(nix::unistd::write(fd, &buf[off..n])?)
                    })
                    .await?;
                off += m;
                count(m);
            }
        }
    }
}

enum SpliceError {
    /// The first splice from `src` failed with EINVAL: this socket kind cannot be spliced.
    Unsupported,
    Io(io::Error),
}

/// `src` → pipe → `dst` until `src` reaches end of stream. The pipe is drained completely before it
/// is filled again, so EAGAIN on the fill side always means "socket empty", never "pipe full".
async fn splice_loop(
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
    count: &impl Fn(usize),
) -> Result<(), SpliceError> {
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .map_err(|e| SpliceError::Io(e.into()))?;
    // A bigger pipe means fewer syscalls per byte; the default (64 KiB) still works.
    let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    let chunk = fcntl(&pipe_w, FcntlArg::F_GETPIPE_SZ)
        .map(|s| s as usize)
        .unwrap_or(64 * 1024);
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut first = true;
    loop {
        let filled = src
            .async_io(tokio::io::Interest::READABLE, |fd| {
                Ok(splice(fd, None, &pipe_w, None, chunk, flags)?)
            })
            .await;
        let n = match filled {
            Ok(n) => n,
            Err(e) if first && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                return Err(SpliceError::Unsupported);
            }
            Err(e) => return Err(SpliceError::Io(e)),
        };
        first = false;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let m = dst
                .async_io(tokio::io::Interest::WRITABLE, |fd| {
                    Ok(splice(&pipe_r, None, fd, None, left, flags)?)
                })
                .await
                .map_err(SpliceError::Io)?;
            left -= m;
            count(m);
        }
    }
}

/// Shuts down the write side of `fd`; a peer that is already gone is not an error.
fn half_close(fd: &AsyncFd<OwnedFd>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    match shutdown(fd.as_fd().as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
