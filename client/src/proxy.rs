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
//! * Cross-site requests are refused, so that a web page cannot spend the caller's upstreams or
//!   read anything through them: a request whose `Origin` is not the proxy's own loopback
//!   address (`http://127.0.0.1:<port>`, `http://localhost:<port>`, `http://[::1]:<port>`), or
//!   whose `Sec-Fetch-Site` is neither `same-origin` nor `none`, gets 403
//!   (`forbidden_origin`); a POST whose `Content-Type` is not `application/json` gets 415
//!   (`unsupported_media_type`): a page's no-cors POST can only send `text/plain`,
//!   `multipart/form-data` or `application/x-www-form-urlencoded`. Requests without `Origin`
//!   (SDKs, curl) pass.

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
    /// The port [`Proxy::serve`] listens on: the only one a same-origin `Origin` may name.
    own_port: Option<u16>,
}

impl Proxy {
    /// A proxy in front of `client`, accepting only loopback `Host` headers.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            max_body: DEFAULT_MAX_REQUEST_BODY,
            loopback_hosts_only: true,
            own_port: None,
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
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.own_port = Some(listener.local_addr()?.port());
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
        if let Err(why) = same_origin(&req, self.own_port) {
            return error_response(
                StatusCode::FORBIDDEN,
                &format!("chrysalis proxy: cross-site request refused: {why}"),
                "invalid_request_error",
                "forbidden_origin",
            );
        }
        if req.method() == http::Method::POST && !json_content_type(&req) {
            let got = req
                .headers()
                .get(header::CONTENT_TYPE)
                .map_or("none".into(), |v| format!("{v:?}"));
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "chrysalis proxy: POST requires Content-Type: application/json (got {got})"
                ),
                "invalid_request_error",
                "unsupported_media_type",
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

/// Whether a request may come from a web page: Ok for callers that are not browsers (no
/// `Origin`, no `Sec-Fetch-Site`) and for pages served by this proxy's own address; otherwise why
/// not. Browsers set both headers themselves and a page cannot change them.
fn same_origin<B>(req: &Request<B>, own_port: Option<u16>) -> Result<(), String> {
    if let Some(site) = req.headers().get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none")) {
            return Err(format!("Sec-Fetch-Site is {site:?}"));
        }
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let foreign = || Err(format!("Origin {origin:?} is not this proxy's address"));
    let Some(authority) = origin.to_str().ok().and_then(|o| o.strip_prefix("http://")) else {
        return foreign();
    };
    // Only host and port: an Origin never has a path, user info or query.
    let Ok(auth) = authority.parse::<http::uri::Authority>() else {
        return foreign();
    };
    if auth.as_str().contains('@') {
        return foreign();
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let port = auth.port_u16().unwrap_or(80);
    // Without a known listen port (a proxy embedded through `handle`), the Host the browser sent
    // names the address the page reached.
    let own = own_port.or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| a.port_u16().unwrap_or(80))
    });
    if loopback && Some(port) == own {
        Ok(())
    } else {
        foreign()
    }
}

/// Whether the body is declared as JSON (`application/json`, parameters allowed).
fn json_content_type<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
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
    fn cross_site_requests_are_refused() {
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::post("/v1/chat/completions").header("host", "127.0.0.1:8080");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        for ok in [
            &[][..],
            &[("origin", "http://127.0.0.1:8080")],
            &[("origin", "http://localhost:8080")],
            &[("origin", "http://[::1]:8080")],
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            &[("sec-fetch-site", "none")],
        ] {
            assert_eq!(same_origin(&req(ok), Some(8080)), Ok(()), "{ok:?}");
        }
        for bad in [
            &[("origin", "https://evil.example")][..],
            &[("origin", "null")],
            &[("origin", "http://127.0.0.1:3000")],
            &[("origin", "http://localhost")],
            &[("origin", "https://127.0.0.1:8080")],
            &[("origin", "http://127.0.0.1.evil.example:8080")],
            &[("origin", "http://user@127.0.0.1:8080")],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "same-site")],
        ] {
            assert!(same_origin(&req(bad), Some(8080)).is_err(), "{bad:?}");
        }
        // Embedded without serve(): the Host header's port stands in for the listen port.
        assert!(same_origin(&req(&[("origin", "http://localhost:8080")]), None).is_ok());
        assert!(same_origin(&req(&[("origin", "http://localhost:8081")]), None).is_err());
    }

    #[test]
    fn post_bodies_must_be_declared_json() {
        let req = |ct: Option<&str>| {
            let mut b = Request::post("/v1/chat/completions");
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            b.body(()).unwrap()
        };
        for ok in ["application/json", "Application/JSON; charset=utf-8"] {
            assert!(json_content_type(&req(Some(ok))), "{ok}");
        }
        for bad in [
            None,
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
        ] {
            assert!(!json_content_type(&req(bad)), "{bad:?}");
        }
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
