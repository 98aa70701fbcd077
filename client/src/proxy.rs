//! The pinning proxy (`chrysalis proxy`) as a library: plain HTTP/1.1 on loopback in front of a
//! [`Client`], so that any OpenAI SDK reaches attested upstreams unchanged.
//!
//! * `/v1/*` passes through: the request body is buffered (≤ the client's limit) so that the
//!   request can move to another upstream; the response streams back frame by frame.
//! * Every upstream connection is verified before a request byte is written; a request that
//!   found no acceptable upstream gets `502` with an OpenAI-style error whose `type` is
//!   `chrysalis_attestation_error` and whose message names each rejection reason (and
//!   `x-should-retry: false`, since retrying cannot change a policy decision); no reachable
//!   upstream gets `503` (`chrysalis_upstream_unavailable`).
//! * Receipts are verified as responses pass (see [`crate::metered`]); a missing or invalid
//!   receipt cannot hold back a response that the caller already has, so it is recorded as
//!   failed in the ledger and logged as a warning.
//! * Requests whose `Host` is not a loopback name are refused (403): a web page cannot reach
//!   the proxy through DNS rebinding. `--dangerous-listen-any` lifts this with the loopback
//!   restriction.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use thiserror::Error;

use crate::client::{Client, ClientError, DEFAULT_MAX_REQUEST_BODY, is_hop_by_hop};
use crate::metered::MeteredBody;
use crate::openai::error_body;

/// The body of a proxy response: an upstream's (metered) or the proxy's own error.
pub type ProxyBody = Either<MeteredBody, Full<Bytes>>;

/// OpenAI error `type` of a request refused because no upstream passed attestation.
pub const ATTESTATION_ERROR_TYPE: &str = "chrysalis_attestation_error";
/// OpenAI error `type` of a request that reached no upstream.
pub const UNAVAILABLE_ERROR_TYPE: &str = "chrysalis_upstream_unavailable";

/// Why the proxy cannot start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listen address is not loopback and the caller did not ask for that explicitly.
    #[error(
        "refusing to listen on {0}: the proxy serves plain HTTP and must listen on loopback \
         (127.0.0.1 or ::1); pass --dangerous-listen-any to expose it anyway"
    )]
    NotLoopback(SocketAddr),
}

/// Refuses a non-loopback listen address unless `dangerous_any`.
pub fn check_listen(addr: SocketAddr, dangerous_any: bool) -> Result<(), ProxyError> {
    if addr.ip().is_loopback() || dangerous_any {
        Ok(())
    } else {
        Err(ProxyError::NotLoopback(addr))
    }
}

/// The proxy: cheap to clone (clones share the client).
#[derive(Clone, Debug)]
pub struct Proxy {
    client: Client,
    max_body: usize,
    loopback_hosts_only: bool,
}

impl Proxy {
    /// A proxy in front of `client`, accepting only loopback `Host` headers.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            max_body: DEFAULT_MAX_REQUEST_BODY,
            loopback_hosts_only: true,
        }
    }

    /// Largest request body accepted (413 above it; default 1 MiB).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Accepts any `Host` header: for a proxy deliberately exposed beyond loopback.
    pub fn dangerous_any_host(mut self) -> Self {
        self.loopback_hosts_only = false;
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Serves HTTP/1.1 (keep-alive) on `listener` until `shutdown` completes, then stops
    /// accepting and waits until the ledger holds every receipt recorded so far.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let this = Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let this = this.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "caller connection ended with an error");
                }
            });
        }
        if let Some(l) = this.client.ledger() {
            let l = l.clone();
            let _ = tokio::task::spawn_blocking(move || l.sync()).await;
        }
        Ok(())
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if self.loopback_hosts_only && !loopback_host(&req) {
            return error_response(
                StatusCode::FORBIDDEN,
                "chrysalis proxy: the Host header must name a loopback address (localhost, \
                 127.0.0.1 or [::1])",
                "invalid_request_error",
                "forbidden_host",
            );
        }
        let path = req.uri().path();
        if !(path == "/v1" || path.starts_with("/v1/")) {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("chrysalis proxy: {path} is not proxied (only /v1/*)"),
                "invalid_request_error",
                "not_found",
            );
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "chrysalis proxy: request body over the {} byte limit",
                        self.max_body
                    ),
                    "invalid_request_error",
                    "request_too_large",
                );
            }
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("chrysalis proxy: cannot read the request body: {e}"),
                    "invalid_request_error",
                    "bad_request",
                );
            }
        };
        let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
        match self.client.send(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let names: Vec<_> = parts.headers.keys().cloned().collect();
                for k in names {
                    // `Trailer` stays: it announces the receipt trailer to callers that take it.
                    if is_hop_by_hop(&k) && k != header::TRAILER && k != header::CONTENT_LENGTH {
                        parts.headers.remove(&k);
                    }
                }
                tracing::debug!(%method, %path, status = %parts.status, "proxied");
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                tracing::warn!(%method, %path, error = %e, "request not proxied");
                client_error_response(&e)
            }
        }
    }
}

fn loopback_host<B>(req: &Request<B>) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    let Some(host) = host else {
        // HTTP/1.1 requires Host; an HTTP/1.0 caller without one is not a browser.
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The response the SDK sees when a request could not be proxied.
pub fn client_error_response(e: &ClientError) -> Response<ProxyBody> {
    let message = format!("chrysalis proxy: {e}");
    let mut resp = match e {
        ClientError::Rejected { .. } => error_response(
            StatusCode::BAD_GATEWAY,
            &message,
            ATTESTATION_ERROR_TYPE,
            "attestation_rejected",
        ),
        ClientError::Unavailable { .. } => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &message,
            UNAVAILABLE_ERROR_TYPE,
            "upstream_unavailable",
        ),
        ClientError::RequestTooLarge { .. } => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &message,
            "invalid_request_error",
            "request_too_large",
        ),
        _ => error_response(
            StatusCode::BAD_GATEWAY,
            &message,
            "chrysalis_proxy_error",
            "proxy_error",
        ),
    };
    if matches!(e, ClientError::Rejected { .. }) {
        // OpenAI SDKs honour this: retrying cannot change a policy decision.
        resp.headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    resp
}

fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: &str,
) -> Response<ProxyBody> {
    let body = serde_json::to_vec(&error_body(message, kind, code)).expect("JSON value");
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_must_be_loopback_unless_dangerous() {
        assert!(check_listen("127.0.0.1:1".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:1".parse().unwrap(), false).is_ok());
        let err = check_listen("0.0.0.0:1".parse().unwrap(), false).unwrap_err();
        assert!(err.to_string().contains("--dangerous-listen-any"));
        assert!(check_listen("0.0.0.0:1".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn only_loopback_hosts() {
        let req = |h: &str| {
            Request::get("/v1/models")
                .header("host", h)
                .body(())
                .unwrap()
        };
        for ok in [
            "localhost:8080",
            "127.0.0.1:1",
            "127.0.0.2",
            "[::1]:9",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&req(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!loopback_host(&req(bad)), "{bad}");
        }
    }
}
