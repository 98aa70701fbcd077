//! A recording TCP forwarder: put between the proxy and the host relay, it keeps a copy of every
//! byte that crossed, per connection and direction — what the host (and anyone on the network)
//! gets to see.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::ChainError;

/// The bytes of one forwarded connection.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Client → upstream (proxy → relay → guest).
    pub to_upstream: Vec<u8>,
    /// Upstream → client.
    pub from_upstream: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    conns: Mutex<Vec<Arc<Mutex<Recorded>>>>,
    sockets: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A loopback listener forwarding each connection to `upstream`, recording both directions.
/// Dropping it closes the listener and every forwarded connection.
pub struct Recorder {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Recorder {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> Result<Recorder, ChainError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ChainError::Io { what, source }
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("recorder: bind"))?;
        let addr = listener
            .local_addr()
            .map_err(io("recorder: local address"))?
            .to_string();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_owned();
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let rec = Arc::new(Mutex::new(Recorded::default()));
                s.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(rec.clone());
                let clones = [client.try_clone(), server.try_clone()];
                let mut sockets = s.sockets.lock().unwrap_or_else(|e| e.into_inner());
                for c in clones.into_iter().flatten() {
                    sockets.push(c);
                }
                drop(sockets);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let r1 = rec.clone();
                std::thread::spawn(move || pump(client, server, &r1, true));
                std::thread::spawn(move || pump(s2, c2, &rec, false));
            }
        });
        Ok(Recorder {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `HOST:PORT` to point the proxy at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What was recorded so far, one entry per connection.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

/// Copies `from` → `to`, recording, until end of stream; then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream, rec: &Mutex<Recorded>, to_upstream: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
            let side = if to_upstream {
                &mut r.to_upstream
            } else {
                &mut r.from_upstream
            };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for s in self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_both_directions_and_propagates_half_close() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.reverse();
            s.write_all(&got).unwrap();
        });
        let rec = Recorder::start(&echo_addr).unwrap();
        let mut c = TcpStream::connect(rec.addr()).unwrap();
        c.write_all(b"hello canary").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"yranac olleh");
        let r = rec.recorded();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to_upstream, b"hello canary");
        assert_eq!(r[0].from_upstream, b"yranac olleh");
        assert!(contains(&r[0].to_upstream, b"canary"));
        assert!(!contains(&r[0].from_upstream, b"canary"));
    }
}
