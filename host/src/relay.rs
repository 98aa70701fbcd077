//! The ciphertext relay: a public TCP listener whose connections are forwarded byte for byte to a guest port.
//!
//! The relay never parses or terminates TLS: it moves opaque bytes both ways until both sides have
//! closed, propagating half-close (when one side reaches end of stream, the write side of the other
//! is shut down). Each direction is its own task. Small messages are copied with one `read` and one
//! `write`; a bulk transfer (a read that fills 64 KiB) switches the direction to `splice(2)` through
//! a pipe, so bulk bytes never enter user space, until the source runs dry. An [`Observer`] (tests
//! that record what the host saw) forces the buffer copy.
//!
//! Limits: a connection cap and a per-source cap (connections over either are closed at once and
//! counted), an idle timeout, and a timeout for reaching the guest.
//!
//! Idle means "no progress", not "no byte": only bytes delivered from the guest to the client
//! count. A client that stops reading stalls that direction, so it is cut after the idle timeout
//! whatever it keeps sending; bytes trickled towards the guest never keep a connection alive (the
//! guest's own deadlines bound how long it waits for them).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, inc};
use crate::transport::{Transport, connect_with_timeout};

/// In `auto` mode, a read that fills this many bytes marks a bulk transfer and switches the
/// direction to splice until the source runs dry.
const BULK_READ: usize = 64 * 1024;

/// How a connection's bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Adaptive: small messages are copied through a buffer (a `read` and a `write`), bulk transfers
    /// (a read that fills 64 KiB) switch to `splice(2)` until the source runs dry. An observer forces
    /// the buffer copy.
    #[default]
    Auto,
    /// Always `splice(2)` through a pipe (falls back to a buffer copy for sockets that cannot splice).
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
    /// The most connections open at once from one source: an IPv4 address, or an IPv6 /64
    /// (what one client is usually given). More are closed at once and counted.
    pub max_per_source: usize,
    /// A connection to whose client the guest delivered no byte for this long is closed.
    pub idle_timeout: Duration,
    /// How long reaching the guest port may take.
    pub connect_timeout: Duration,
    /// How bytes are moved.
    pub copy_mode: CopyMode,
    /// The user-space buffer size per direction (user-space path only).
    pub buffer_size: usize,
    /// What the kernel may hold between the guest and a client that stopped reading, per socket:
    /// the client socket's `SO_SNDBUF`, the guest socket's `SO_RCVBUF` and the splice pipe's
    /// size. Left to autotuning these grow to megabytes, so a guest streaming to a stalled reader
    /// kept generating (and holding its slot) long after the reader stopped; bounded, the stall
    /// reaches the guest, which cuts it after its `write_stall_secs`.
    pub socket_buffer: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            guest_port: chrysalis_attestation::hostcall::GUEST_TLS_PORT,
            max_connections: 1024,
            max_per_source: 64,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            copy_mode: CopyMode::Auto,
            buffer_size: 256 * 1024,
            socket_buffer: 128 * 1024,
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
    per_source: Mutex<HashMap<IpAddr, usize>>,
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
    /// The guest delivered no byte to the client for the idle timeout.
    #[error("no progress for {0:?}")]
    Idle(Duration),
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
            per_source: Mutex::new(HashMap::new()),
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
            let Some(source) = SourceSlot::take(&self, peer.ip()) else {
                inc(&self.metrics.relay_rejected_per_source);
                tracing::debug!(%peer, "per-source cap reached; closing");
                drop(tcp);
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                inc(&self.metrics.relay_rejected);
                tracing::debug!(%peer, "connection cap reached; closing");
                drop(tcp);
                continue;
            };
            let relay = self.clone();
            tasks.spawn(async move {
                let _slots = (permit, source);
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
        let stats = Arc::new(ConnectionStats::default());
        // Unregisters on every exit, including cancellation when the relay shuts down.
        let _registered = Registered::new(self, id, peer, stats.clone());
        let result = self.forward(id, tcp, &stats).await;
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
        stats: &Arc<ConnectionStats>,
    ) -> Result<(), RelayError> {
        let guest = connect_with_timeout(
            &*self.transport,
            self.config.guest_port,
            self.config.connect_timeout,
        )
        .await?;
        let io_err = |direction| move |source| RelayError::Io { direction, source };
        let client = OwnedFd::from(tcp.into_std().map_err(io_err(Direction::ToGuest))?);
        let guest = guest.into_owned_fd().map_err(io_err(Direction::ToGuest))?;
        bound_buffers(&client, &guest, self.config.socket_buffer);
        let client = register(client).map_err(io_err(Direction::ToGuest))?;
        let guest = register(guest).map_err(io_err(Direction::ToGuest))?;

        let client = Arc::new(client);
        let guest = Arc::new(guest);
        let clock = Arc::new(Activity::new());
        let mode = match (self.config.copy_mode, &self.observer) {
            (_, Some(_)) | (CopyMode::Userspace, None) => CopyMode::Userspace,
            (m, None) => m,
        };
        let pump = Pump {
            mode,
            buffer_size: self.config.buffer_size,
            pipe_size: self.config.socket_buffer,
            observer: self.observer.clone(),
            conn: id,
            clock: clock.clone(),
            stats: stats.clone(),
            metrics: self.metrics.clone(),
        };
        // One task per direction, so both directions of a busy stream can use separate cores.
        let mut up = AbortOnDrop(tokio::spawn(pump.clone().run(
            client.clone(),
            guest.clone(),
            Direction::ToGuest,
        )));
        let mut down = AbortOnDrop(tokio::spawn(pump.run(guest, client, Direction::FromGuest)));
        let idle = clock.idle(self.config.idle_timeout);
        tokio::pin!(idle);
        let (mut up_done, mut down_done) = (false, false);
        // The first error (or the idle timeout) ends both directions: the guards abort the tasks.
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up.0, if !up_done => {
                    up_done = true;
                    joined(r, Direction::ToGuest)?;
                }
                r = &mut down.0, if !down_done => {
                    down_done = true;
                    joined(r, Direction::FromGuest)?;
                }
                () = &mut idle => return Err(RelayError::Idle(self.config.idle_timeout)),
            }
        }
        Ok(())
    }
}

/// One open connection counted against its source's cap, released when dropped.
struct SourceSlot {
    relay: Arc<Relay>,
    source: IpAddr,
}

impl SourceSlot {
    /// Counts a connection from `ip`, or `None` when its source has the most open already.
    fn take(relay: &Arc<Relay>, ip: IpAddr) -> Option<Self> {
        let source = source_of(ip);
        let mut map = relay.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(source).or_insert(0);
        if *n >= relay.config.max_per_source {
            return None;
        }
        *n += 1;
        Some(Self {
            relay: relay.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self
            .relay
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// The source a connection is counted against: the IPv4 address (also when mapped into IPv6),
/// or the IPv6 /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// An open connection's entry in the relay's table and active gauge, removed when dropped.
struct Registered<'a> {
    relay: &'a Relay,
    id: u64,
}

impl<'a> Registered<'a> {
    fn new(relay: &'a Relay, id: u64, peer: String, stats: Arc<ConnectionStats>) -> Self {
        relay.metrics.relay_active.fetch_add(1, Ordering::Relaxed);
        relay.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Open {
                peer,
                since: Instant::now(),
                stats,
            },
        );
        Self { relay, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.relay
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.relay
            .metrics
            .relay_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts a spawned task when dropped (a cancelled or failed connection leaves no pump behind).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pump task's outcome; a panic becomes an I/O error of its direction.
fn joined(
    r: Result<Result<(), RelayError>, tokio::task::JoinError>,
    direction: Direction,
) -> Result<(), RelayError> {
    r.unwrap_or_else(|e| {
        Err(RelayError::Io {
            direction,
            source: io::Error::other(e.to_string()),
        })
    })
}

/// Registers a socket with tokio's reactor for readiness-driven raw I/O.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd owns its descriptor: it stays open, and `as_raw_fd` returns the same number,
    // until the AsyncFd (which owns the OwnedFd) is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// When the guest last delivered a byte to the client, for the idle timeout.
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
#[derive(Clone)]
struct Pump {
    mode: CopyMode,
    buffer_size: usize,
    pipe_size: usize,
    observer: Option<Arc<dyn Observer>>,
    conn: u64,
    clock: Arc<Activity>,
    stats: Arc<ConnectionStats>,
    metrics: Arc<Metrics>,
}

impl Pump {
    /// Moves bytes from `src` to `dst` until `src` ends, then shuts down `dst`'s write side.
    async fn run(
        self,
        src: Arc<AsyncFd<OwnedFd>>,
        dst: Arc<AsyncFd<OwnedFd>>,
        direction: Direction,
    ) -> Result<(), RelayError> {
        let (conn_counter, total_counter) = match direction {
            Direction::ToGuest => (&self.stats.to_guest, &self.metrics.relay_bytes_to_guest),
            Direction::FromGuest => (&self.stats.from_guest, &self.metrics.relay_bytes_from_guest),
        };
        // Only delivery to the client is progress: bytes towards the guest are what a client
        // that stopped reading would send to look alive.
        let progress = direction == Direction::FromGuest;
        let count = |n: usize| {
            conn_counter.fetch_add(n as u64, Ordering::Relaxed);
            total_counter.fetch_add(n as u64, Ordering::Relaxed);
            if progress {
                self.clock.touch();
            }
        };
        let err = |source| RelayError::Io { direction, source };
        self.pump(&src, &dst, direction, &count)
            .await
            .map_err(err)?;
        half_close(&dst).map_err(err)
    }

    async fn pump(
        &self,
        src: &AsyncFd<OwnedFd>,
        dst: &AsyncFd<OwnedFd>,
        direction: Direction,
        count: &impl Fn(usize),
    ) -> io::Result<()> {
        let mut can_splice = self.mode != CopyMode::Userspace && self.observer.is_none();
        // Created on the first bulk transfer: request/response traffic never needs one.
        let mut pipe: Option<SplicePipe> = None;
        // While a bulk transfer goes on, each wake-up splices; a burst that moves less than
        // BULK_READ returns the direction to buffer copies.
        let mut bulk = self.mode == CopyMode::Splice && can_splice;
        let size = if self.mode == CopyMode::Auto && can_splice {
            BULK_READ
        } else {
            self.buffer_size.max(4096)
        };
        let mut buf = vec![0u8; size];
        loop {
            if bulk {
                drop(src.readable().await?);
            } else {
                let n = short_io(src, Interest::READABLE, size, |fd| {
                    nix::unistd::read(fd, &mut buf)
                })
                .await?;
                if n == 0 {
                    return Ok(());
                }
                if let Some(o) = &self.observer {
                    o.observe(self.conn, direction, &buf[..n]);
                }
                let mut off = 0;
                while off < n {
                    let m = short_io(dst, Interest::WRITABLE, n - off, |fd| {
                        nix::unistd::write(fd, &buf[off..n])
                    })
                    .await?;
                    off += m;
                    count(m);
                }
                if !(can_splice && n == size) {
                    continue;
                }
            }
            let p = match &mut pipe {
                Some(p) => p,
                None => pipe.insert(SplicePipe::new(self.pipe_size)?),
            };
            match splice_burst(src, dst, p, count).await? {
                Burst::Eof => return Ok(()),
                Burst::Drained(moved) => {
                    bulk = self.mode == CopyMode::Splice || moved >= BULK_READ;
                }
                Burst::Unsupported => {
                    tracing::debug!(
                        ?direction,
                        "splice not supported by a socket; copying in user space"
                    );
                    can_splice = false;
                    bulk = false;
                }
            }
        }
    }
}

/// One `read` or `write` when `fd` is ready. A result shorter than `want` means the socket was
/// drained (or its send buffer filled), so readiness is cleared at once instead of spending another
/// system call on EAGAIN, as tokio's own streams do. (Not valid for splice: a splice can also stop
/// early because the pipe ran out of slots.)
async fn short_io(
    fd: &AsyncFd<OwnedFd>,
    interest: Interest,
    want: usize,
    mut op: impl FnMut(&OwnedFd) -> nix::Result<usize>,
) -> io::Result<usize> {
    loop {
        let mut guard = fd.ready(interest).await?;
        match guard.try_io(|inner| op(inner.get_ref()).map_err(io::Error::from)) {
            Ok(Ok(n)) => {
                if n > 0 && n < want {
                    guard.clear_ready();
                }
                return Ok(n);
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Bounds the kernel buffers on the way from the guest to the client (see
/// [`RelayConfig::socket_buffer`]). A socket that refuses (none of ours should) keeps its
/// default, which is logged: the relay still works, a stall only takes longer to reach the guest.
fn bound_buffers(client: &OwnedFd, guest: &OwnedFd, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    for (what, r) in [
        (
            "client SO_SNDBUF",
            setsockopt(client, sockopt::SndBuf, &bytes),
        ),
        (
            "guest SO_RCVBUF",
            setsockopt(guest, sockopt::RcvBuf, &bytes),
        ),
    ] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot bound the {what}");
        }
    }
}

/// A pipe for splicing, of the size asked for (rounded up to pages by the kernel; unprivileged
/// users are capped by `/proc/sys/fs/pipe-max-size`).
struct SplicePipe {
    r: OwnedFd,
    w: OwnedFd,
    chunk: usize,
}

impl SplicePipe {
    fn new(size: usize) -> io::Result<Self> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A bigger pipe means fewer system calls per byte; the default (64 KiB) still works.
        let _ = fcntl(
            &w,
            FcntlArg::F_SETPIPE_SZ(size.min(i32::MAX as usize) as i32),
        );
        let chunk = fcntl(&w, FcntlArg::F_GETPIPE_SZ)
            .map(|s| s as usize)
            .unwrap_or(64 * 1024);
        Ok(Self { r, w, chunk })
    }
}

/// How a splice burst ended.
enum Burst {
    /// `src` reached end of stream.
    Eof,
    /// `src` had nothing more for now (its readiness is cleared); the bytes moved in this burst.
    Drained(usize),
    /// This socket kind cannot be spliced (EINVAL); the pipe is empty, so copying can take over.
    Unsupported,
}

/// `src` → pipe → `dst` while `src` has data, without waiting for `src`. The pipe is drained
/// completely before it is filled again, so EAGAIN on the fill side always means "socket empty",
/// never "pipe full".
async fn splice_burst(
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
    pipe: &SplicePipe,
    count: &impl Fn(usize),
) -> io::Result<Burst> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut moved = 0;
    loop {
        let filled = src.try_io(Interest::READABLE, |fd| {
            Ok(splice(fd, None, &pipe.w, None, pipe.chunk, flags)?)
        });
        let n = match filled {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained(moved)),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => return Ok(Burst::Unsupported),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Burst::Eof);
        }
        let mut left = n;
        while left > 0 {
            let m = dst
                .async_io(Interest::WRITABLE, |fd| {
                    Ok(splice(&pipe.r, None, fd, None, left, flags)?)
                })
                .await?;
            left -= m;
            count(m);
        }
        moved += n;
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
