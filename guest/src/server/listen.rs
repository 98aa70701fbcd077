//! The listener loop: accept, a connection cap, the TLS handshake, and HTTP/1 connection settings.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::routes::handle;
use super::state::AppState;

/// The send buffer of a connection accepted by [`accept_tcp`]: virtio-vsock's default buffer.
const TCP_SEND_BUFFER: usize = 256 * 1024;

/// Accepts one connection on the TCP stand-in for the guest's vsock port (`listen = "tcp:…"`,
/// used outside a VM), shaped like a vsock connection: no Nagle delay, and a send buffer of
/// vsock's 256 KiB instead of the megabytes autotuning grows it to, so that a client that stops
/// reading stalls the stream (and `write_stall_secs` cuts it) as soon as it would over vsock.
pub async fn accept_tcp(l: &tokio::net::TcpListener) -> std::io::Result<tokio::net::TcpStream> {
    use nix::sys::socket::{setsockopt, sockopt};
    let (s, _) = l.accept().await?;
    s.set_nodelay(true)?;
    setsockopt(&s, sockopt::SndBuf, &TCP_SEND_BUFFER)?;
    Ok(s)
}

/// Serves HTTPS on connections from `accept` until it fails.
pub async fn serve<S, F, Fut>(
    state: Arc<AppState>,
    tls: tokio_rustls::TlsAcceptor,
    mut accept: F,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let connections = Arc::new(Semaphore::new(4096));
    loop {
        let stream = match accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(conn_permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!("connection limit reached; dropping a connection");
            continue;
        };
        let (state, tls) = (state.clone(), tls.clone());
        tokio::spawn(async move {
            let _conn_permit = conn_permit;
            let tls_stream =
                match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tls_stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
