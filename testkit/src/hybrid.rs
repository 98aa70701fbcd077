//! A test double for the guest side of hybrid vsock, shared by the host's tests, its benchmark and
//! the end-to-end tests.
//!
//! [`FakeHybridGuest`] listens on a Unix socket and speaks the multiplexer's protocol as
//! vhost-device-vsock does for a real guest: it reads `CONNECT <port>\n`, and for a port the "guest"
//! listens on answers `OK <n>\n` and then serves the stream (echo); for any other port it closes the
//! socket without answering, which is what the host sees when the guest refuses.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// A fake guest behind a hybrid vsock Unix socket that echoes every byte on its open ports and
/// refuses the others. It stops when dropped.
#[derive(Debug)]
pub struct FakeHybridGuest {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for FakeHybridGuest {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FakeHybridGuest {
    /// Binds `path` and serves: echo on `open_ports`, refusal elsewhere. Each echoed stream
    /// preserves half-close: after the host's end of stream it sends the rest and then shuts down
    /// its write side.
    pub fn bind(path: &Path, open_ports: &[u32]) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let open: HashSet<u32> = open_ports.iter().copied().collect();
        let task = tokio::spawn(async move {
            let mut next_host_port = 1u32 << 30;
            while let Ok((stream, _)) = listener.accept().await {
                next_host_port = next_host_port.wrapping_add(1);
                let open = open.clone();
                let local = next_host_port;
                tokio::spawn(async move {
                    let _ = serve_one(stream, &open, local).await;
                });
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            task,
        })
    }

    /// The Unix socket path the host connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn serve_one(stream: UnixStream, open: &HashSet<u32>, local_port: u32) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let port = line
        .strip_prefix("CONNECT ")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|p| p.parse::<u32>().ok());
    if !port.is_some_and(|p| open.contains(&p)) {
        return Ok(()); // refused: the socket closes without an answer
    }
    reader
        .get_mut()
        .write_all(format!("OK {local_port}\n").as_bytes())
        .await?;
    // Bytes the host sent right behind its CONNECT line are the stream's first bytes.
    let early = reader.buffer().to_vec();
    let mut stream = reader.into_inner();
    stream.write_all(&early).await?;
    echo(stream).await
}

/// Echoes every byte of `stream` back until end of stream, then shuts down its write side (the
/// fake guest's service; also usable on a plain TCP socket as a "direct" baseline).
pub async fn echo<S: AsyncRead + AsyncWrite>(stream: S) -> io::Result<()> {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).await?;
    }
    w.shutdown().await
}

/// Completes the hybrid handshake on a raw Unix stream (what a direct client of the multiplexer does).
pub async fn hybrid_handshake(stream: &mut UnixStream, port: u32) -> io::Result<()> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut byte = [0u8; 1];
    let mut line = Vec::new();
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "closed before OK",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if line.starts_with(b"OK ") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            String::from_utf8_lossy(&line).into_owned(),
        ))
    }
}
