//! Transports between the host and the guest's vsock ports: AF_VSOCK, hybrid vsock over a Unix socket, and TCP.
//!
//! Every transport does two things, behind the one [`Transport`] trait:
//! * [`Transport::connect`] opens a byte stream from the host to a port the guest listens on (host→guest);
//! * [`Transport::listen`] accepts streams that the guest opens to a port on the host (guest→host).
//!
//! | transport | host→guest | guest→host |
//! |---|---|---|
//! | [`VsockTransport`] | `connect(AF_VSOCK, cid, port)` | `bind(AF_VSOCK, VMADDR_CID_ANY, port)` |
//! | [`HybridVsockTransport`] | connect to the Unix socket `<uds>`, send `CONNECT <port>\n`, expect `OK <hostport>\n` | listen on the Unix socket `<uds>_<port>` |
//! | [`TcpTransport`] | `connect(host, port + offset)` | `bind(host, port + offset)` |
//!
//! The hybrid protocol is the one Firecracker and vhost-device-vsock implement. The streams returned are
//! plain sockets ([`GuestStream`]): the relay may take their file descriptors for `splice(2)`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

/// A boxed future, as returned by the object-safe [`Transport`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest `OK <port>\n` answer accepted from a hybrid vsock multiplexer.
const MAX_HYBRID_REPLY: usize = 32;

/// Errors of the transport area.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket could not be opened or connected.
    #[error("connecting to guest port {port} over {transport}")]
    Connect {
        /// The guest port.
        port: u32,
        /// Which transport (for the message).
        transport: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The guest (or the multiplexer on its behalf) refused or dropped the connection during the
    /// hybrid vsock handshake.
    #[error("guest port {port} refused the connection ({detail})")]
    Refused {
        /// The guest port.
        port: u32,
        /// What was seen instead of `OK <port>`.
        detail: String,
    },
    /// Connecting took longer than the configured timeout.
    #[error("connecting to guest port {port} timed out after {timeout:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// A host-side listener could not be bound.
    #[error("listening on {what}")]
    Listen {
        /// The address or path that could not be bound.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Accepting a connection failed.
    #[error("accepting a connection on {what}")]
    Accept {
        /// The listener.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A port does not fit the transport (e.g. a TCP port above 65535 after the offset).
    #[error("port {port} cannot be mapped onto {transport}")]
    BadPort {
        /// The guest or host port.
        port: u32,
        /// Which transport.
        transport: String,
    },
}

/// A connected byte stream to or from the guest.
///
/// It is one of three socket kinds; all are non-blocking sockets registered with tokio, implement
/// [`AsyncRead`]/[`AsyncWrite`], and can give up their file descriptor ([`GuestStream::into_owned_fd`]).
#[derive(Debug)]
pub enum GuestStream {
    /// A TCP stream ([`TcpTransport`]).
    Tcp(TcpStream),
    /// A Unix stream ([`HybridVsockTransport`]), already past the `CONNECT`/`OK` handshake.
    Unix(UnixStream),
    /// An AF_VSOCK stream ([`VsockTransport`]).
    Vsock(VsockStream),
}

impl GuestStream {
    /// Deregisters the socket from tokio and returns its (still non-blocking) file descriptor.
    pub fn into_owned_fd(self) -> io::Result<OwnedFd> {
        Ok(match self {
            GuestStream::Tcp(s) => OwnedFd::from(s.into_std()?),
            GuestStream::Unix(s) => OwnedFd::from(s.into_std()?),
            GuestStream::Vsock(s) => OwnedFd::from(s),
        })
    }
}

impl AsFd for GuestStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            GuestStream::Tcp(s) => s.as_fd(),
            GuestStream::Unix(s) => s.as_fd(),
            GuestStream::Vsock(s) => s.as_fd(),
        }
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GuestStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            GuestStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            GuestStream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GuestStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            GuestStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            GuestStream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GuestStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            GuestStream::Unix(s) => Pin::new(s).poll_flush(cx),
            GuestStream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GuestStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            GuestStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            GuestStream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Who opened a guest→host connection, as far as the transport can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuestPeer {
    /// AF_VSOCK: the peer's context id and port, as the kernel records them (a guest cannot
    /// choose its CID: the host assigns it at launch).
    Vsock {
        /// The peer's context id.
        cid: u32,
        /// The peer's port.
        port: u32,
    },
    /// Hybrid vsock: the process that connected to `<uds>_<port>` (`SO_PEERCRED`). That is the
    /// multiplexer acting for a guest; the protocol carries no guest CID.
    Unix {
        /// The peer process, when the kernel reports one.
        pid: Option<i32>,
        /// The peer process's effective user id.
        uid: u32,
    },
    /// TCP: the peer address. It says nothing about which VM, if any, is behind it.
    Tcp(SocketAddr),
}

impl fmt::Display for GuestPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestPeer::Vsock { cid, port } => write!(f, "vsock CID {cid} port {port}"),
            GuestPeer::Unix {
                pid: Some(pid),
                uid,
            } => write!(f, "process {pid} (uid {uid})"),
            GuestPeer::Unix { pid: None, uid } => write!(f, "a process of uid {uid}"),
            GuestPeer::Tcp(a) => write!(f, "TCP {a}"),
        }
    }
}

/// A bound host-side listener for streams the guest opens ([`Transport::listen`]).
#[derive(Debug)]
pub struct GuestListener {
    inner: ListenerInner,
    what: String,
}

#[derive(Debug)]
enum ListenerInner {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        _unlink: UnlinkOnDrop,
    },
    Vsock(VsockListener),
}

/// Removes a Unix socket path when the listener that bound it goes away.
#[derive(Debug)]
struct UnlinkOnDrop(PathBuf);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl GuestListener {
    /// Waits for the next connection from the guest.
    pub async fn accept(&self) -> Result<GuestStream, TransportError> {
        let accept_err = |source| TransportError::Accept {
            what: self.what.clone(),
            source,
        };
        match &self.inner {
            ListenerInner::Tcp(l) => l
                .accept()
                .await
                .map(|(s, _)| GuestStream::Tcp(s))
                .map_err(accept_err),
            ListenerInner::Unix { listener: l, .. } => l
                .accept()
                .await
                .map(|(s, _)| GuestStream::Unix(s))
                .map_err(accept_err),
            ListenerInner::Vsock(l) => l
                .accept()
                .await
                .map(|(s, _)| GuestStream::Vsock(s))
                .map_err(accept_err),
        }
    }

    /// Waits for the next connection from the guest and says who opened it.
    pub async fn accept_peer(&self) -> Result<(GuestStream, GuestPeer), TransportError> {
        let accept_err = |source| TransportError::Accept {
            what: self.what.clone(),
            source,
        };
        match &self.inner {
            ListenerInner::Tcp(l) => l
                .accept()
                .await
                .map(|(s, a)| (GuestStream::Tcp(s), GuestPeer::Tcp(a)))
                .map_err(accept_err),
            ListenerInner::Unix { listener: l, .. } => {
                let (s, _) = l.accept().await.map_err(accept_err)?;
                let cred = s.peer_cred().map_err(accept_err)?;
                let peer = GuestPeer::Unix {
                    pid: cred.pid(),
                    uid: cred.uid(),
                };
                Ok((GuestStream::Unix(s), peer))
            }
            ListenerInner::Vsock(l) => l
                .accept()
                .await
                .map(|(s, a)| {
                    let peer = GuestPeer::Vsock {
                        cid: a.cid(),
                        port: a.port(),
                    };
                    (GuestStream::Vsock(s), peer)
                })
                .map_err(accept_err),
        }
    }

    /// What this listener is bound to, for logs (`vsock:*:4050`, a socket path, or a TCP address).
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// The bound TCP address, for a TCP listener (tests bind port 0 and ask).
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            ListenerInner::Tcp(l) => l.local_addr().ok(),
            _ => None,
        }
    }
}

/// One way to reach the guest's vsock ports from the host, and to be reached by the guest.
///
/// Implementations are cheap to share (`Arc<dyn Transport>`); every call opens a fresh socket.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Opens a stream to `port` in the guest. Returns `Ok` only once the guest side has accepted the
    /// connection (for hybrid vsock: after `OK <port>` was read), so a refusal is an error, not an
    /// empty stream.
    fn connect(&self, port: u32) -> BoxFuture<'_, Result<GuestStream, TransportError>>;

    /// Binds the host-side `port` that the guest connects to.
    fn listen(&self, port: u32) -> BoxFuture<'_, Result<GuestListener, TransportError>>;

    /// A short name for logs and metrics (`vsock`, `hybrid`, `tcp`).
    fn kind(&self) -> &'static str;
}

/// AF_VSOCK through the kernel (`vhost-vsock`), used with the `tdx` and `snp` profiles.
#[derive(Clone, Debug)]
pub struct VsockTransport {
    guest_cid: u32,
}

impl VsockTransport {
    /// A transport to the guest with context id `guest_cid`.
    pub fn new(guest_cid: u32) -> Self {
        Self { guest_cid }
    }
}

impl Transport for VsockTransport {
    fn connect(&self, port: u32) -> BoxFuture<'_, Result<GuestStream, TransportError>> {
        Box::pin(async move {
            VsockStream::connect(VsockAddr::new(self.guest_cid, port))
                .await
                .map(GuestStream::Vsock)
                .map_err(|source| TransportError::Connect {
                    port,
                    transport: format!("vsock cid {}", self.guest_cid),
                    source,
                })
        })
    }

    fn listen(&self, port: u32) -> BoxFuture<'_, Result<GuestListener, TransportError>> {
        Box::pin(async move {
            let what = format!("vsock:*:{port}");
            let l = VsockListener::bind(VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port))
                .map_err(|source| TransportError::Listen {
                    what: what.clone(),
                    source,
                })?;
            Ok(GuestListener {
                inner: ListenerInner::Vsock(l),
                what,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "vsock"
    }
}

/// Hybrid vsock: guest vsock ports multiplexed over a Unix socket by the VMM (Firecracker) or by
/// vhost-device-vsock (the `sim` profile).
#[derive(Clone, Debug)]
pub struct HybridVsockTransport {
    uds_path: PathBuf,
}

impl HybridVsockTransport {
    /// A transport over the multiplexer's Unix socket at `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        Self {
            uds_path: uds_path.into(),
        }
    }

    /// The Unix socket that host→guest connections go through.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The Unix socket the guest's connections to host `port` arrive on: `<uds>_<port>`.
    pub fn listener_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds_path.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }
}

/// Reads the multiplexer's one-line answer without reading past its `\n`: bytes after it already
/// belong to the guest.
async fn read_reply_line(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(Some(line));
        }
        line.push(byte[0]);
        if line.len() > MAX_HYBRID_REPLY {
            return Ok(Some(line));
        }
    }
}

impl Transport for HybridVsockTransport {
    fn connect(&self, port: u32) -> BoxFuture<'_, Result<GuestStream, TransportError>> {
        Box::pin(async move {
            let connect_err = |source| TransportError::Connect {
                port,
                transport: format!("hybrid vsock {}", self.uds_path.display()),
                source,
            };
            let mut s = UnixStream::connect(&self.uds_path)
                .await
                .map_err(connect_err)?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .map_err(connect_err)?;
            // A reset here means the guest refused: the multiplexer drops our socket.
            let line = match read_reply_line(&mut s).await {
                Ok(line) => line,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => None,
                Err(e) => return Err(connect_err(e)),
            };
            let Some(line) = line else {
                return Err(TransportError::Refused {
                    port,
                    detail: "closed before OK".into(),
                });
            };
            let text = String::from_utf8_lossy(&line);
            let mut words = text.split_ascii_whitespace();
            match (
                words.next(),
                words.next().map(str::parse::<u32>),
                words.next(),
            ) {
                (Some("OK"), Some(Ok(_)), None) => Ok(GuestStream::Unix(s)),
                _ => Err(TransportError::Refused {
                    port,
                    detail: format!("answered {:?}", text.as_ref()),
                }),
            }
        })
    }

    fn listen(&self, port: u32) -> BoxFuture<'_, Result<GuestListener, TransportError>> {
        Box::pin(async move {
            let path = self.listener_path(port);
            let what = path.display().to_string();
            // A socket file left by a previous run would make bind fail; only sockets are removed.
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(&path);
                }
            }
            let l = UnixListener::bind(&path).map_err(|source| TransportError::Listen {
                what: what.clone(),
                source,
            })?;
            Ok(GuestListener {
                inner: ListenerInner::Unix {
                    listener: l,
                    _unlink: UnlinkOnDrop(path),
                },
                what,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "hybrid"
    }
}

/// Guest ports mapped onto TCP ports (`port + port_offset` on `host`): development and tests.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    host: IpAddr,
    port_offset: i32,
}

impl TcpTransport {
    /// Guest port `p` is TCP port `p + port_offset` on `host`.
    pub fn new(host: IpAddr, port_offset: i32) -> Self {
        Self { host, port_offset }
    }

    fn addr(&self, port: u32) -> Result<SocketAddr, TransportError> {
        let mapped = i64::from(port) + i64::from(self.port_offset);
        u16::try_from(mapped)
            .ok()
            .filter(|p| *p != 0)
            .map(|p| SocketAddr::new(self.host, p))
            .ok_or_else(|| TransportError::BadPort {
                port,
                transport: format!("tcp {} offset {}", self.host, self.port_offset),
            })
    }
}

impl Transport for TcpTransport {
    fn connect(&self, port: u32) -> BoxFuture<'_, Result<GuestStream, TransportError>> {
        Box::pin(async move {
            let addr = self.addr(port)?;
            let s = TcpStream::connect(addr)
                .await
                .map_err(|source| TransportError::Connect {
                    port,
                    transport: format!("tcp {addr}"),
                    source,
                })?;
            let _ = s.set_nodelay(true);
            Ok(GuestStream::Tcp(s))
        })
    }

    fn listen(&self, port: u32) -> BoxFuture<'_, Result<GuestListener, TransportError>> {
        Box::pin(async move {
            let addr = self.addr(port)?;
            let what = addr.to_string();
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| TransportError::Listen {
                    what: what.clone(),
                    source,
                })?;
            Ok(GuestListener {
                inner: ListenerInner::Tcp(l),
                what,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "tcp"
    }
}

/// Runs `fut` (a [`Transport::connect`]) under `timeout`.
pub async fn connect_with_timeout(
    transport: &dyn Transport,
    port: u32,
    timeout: Duration,
) -> Result<GuestStream, TransportError> {
    match tokio::time::timeout(timeout, transport.connect(port)).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout { port, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hybrid_handshake_accepts_ok_and_keeps_following_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let l = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 8443\n");
            // The OK line and the guest's first bytes arrive in one segment.
            s.write_all(b"OK 1073741824\nhello").await.unwrap();
        });
        let t = HybridVsockTransport::new(&uds);
        let mut s = t.connect(8443).await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn hybrid_refusal_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let l = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            drop(s);
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"NO\n").await.unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(&[b'x'; 64]).await.unwrap();
        });
        let t = HybridVsockTransport::new(&uds);
        for _ in 0..3 {
            let err = t.connect(1).await.unwrap_err();
            assert!(
                matches!(err, TransportError::Refused { port: 1, .. }),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn hybrid_listener_uses_port_suffix_and_unlinks() {
        let dir = tempfile::tempdir().unwrap();
        let t = HybridVsockTransport::new(dir.path().join("v.sock"));
        let path = t.listener_path(4050);
        assert_eq!(path, dir.path().join("v.sock_4050"));
        let l = t.listen(4050).await.unwrap();
        let client = tokio::spawn({
            let path = path.clone();
            async move { UnixStream::connect(path).await.unwrap() }
        });
        let _s = l.accept().await.unwrap();
        client.await.unwrap();
        drop(l);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn tcp_port_mapping_rejects_out_of_range() {
        let t = TcpTransport::new(IpAddr::from([127, 0, 0, 1]), 60000);
        assert!(matches!(
            t.addr(8443),
            Err(TransportError::BadPort { port: 8443, .. })
        ));
        let t = TcpTransport::new(IpAddr::from([127, 0, 0, 1]), -8000);
        assert_eq!(t.addr(8443).unwrap().port(), 443);
    }
}
