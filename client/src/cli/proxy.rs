//! `chrysalis proxy`: the local pinning proxy for OpenAI SDKs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrysalis_attestation::Policy;
use chrysalis_client::Client;
use chrysalis_client::proxy::{Proxy, check_listen};
use clap::Args;

use super::Ctx;

#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct ProxyArgs {
    /// Address to serve plain HTTP/1.1 on. Must be loopback (127.0.0.1:PORT or [::1]:PORT)
    /// unless --dangerous-listen-any; port 0 picks a free port (see --ready-file).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// An attested node, HOST:PORT. Repeat for several: requests go to the one with the fewest
    /// in flight, move to another on a connection failure, a rejected attestation or a 429/503
    /// answer (only before any response byte reached the caller).
    #[arg(long = "upstream", value_name = "HOST:PORT", required = true)]
    upstreams: Vec<String>,
    /// Client policy (TOML): trusted roots, TCB rules, pinned measurements. Every upstream
    /// connection must satisfy it before a request byte is sent.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Append one JSON line per metered response (receipt verified or not) to this file;
    /// each line is written whole and synced to disk. Summarise with `chrysalis receipts
    /// summary FILE`. Without it receipts are still verified and failures logged.
    #[arg(long, value_name = "FILE.jsonl")]
    receipts: Option<PathBuf>,
    /// Allow a non-loopback --listen address and any Host header. The proxy speaks plain
    /// HTTP and has no authentication: whoever reaches it spends your upstreams.
    #[arg(long)]
    dangerous_listen_any: bool,
    /// TCP connect timeout per upstream attempt, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
    /// How long an idle upstream connection stays pooled, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    pool_idle_timeout: u64,
    /// Largest request body accepted, in bytes (413 above it). Bodies are buffered so that a
    /// request can move to another upstream.
    #[arg(long, value_name = "BYTES", default_value_t = chrysalis_client::client::DEFAULT_MAX_REQUEST_BODY)]
    max_body: usize,
    #[command(flatten)]
    collateral: super::CollateralArgs,
    /// Once listening, write the bound address (HOST:PORT) to this file (temp file + rename).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

const AFTER_HELP: &str = "\
Point any OpenAI SDK at http://ADDR/v1 (e.g. OPENAI_BASE_URL=http://127.0.0.1:8080/v1; the API
key is passed through and may be any string the upstream accepts).

Errors the SDK sees:
  502 chrysalis_attestation_error  no upstream passed attestation; the message names every
                                   rejection reason. Nothing of the request was sent.
  503 chrysalis_upstream_unavailable  no upstream could be reached.
  413 request_too_large            body over --max-body.

Receipts: for each completed chat or text completion the proxy verifies the node's signed
receipt (response header, or for streams the HTTP trailer `chrysalis-receipt`) against the
attested key and the exact bytes exchanged. A missing or invalid receipt cannot recall a
response the SDK already received: it is logged as a warning and recorded as failed.

Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) or pass -v for more.";

pub(crate) async fn run(ctx: &Ctx, a: ProxyArgs) -> anyhow::Result<ExitCode> {
    check_listen(a.listen, a.dangerous_listen_any)?;
    let text = std::fs::read_to_string(&a.policy)
        .with_context(|| format!("cannot read policy {}", a.policy.display()))?;
    let policy =
        Policy::from_toml(&text).with_context(|| format!("policy {}", a.policy.display()))?;
    let mut b = Client::builder()
        .policy(policy)
        .upstreams(a.upstreams.iter().cloned())
        .connect_timeout(Duration::from_secs(a.connect_timeout))
        .pool_idle_timeout(Duration::from_secs(a.pool_idle_timeout))
        .max_request_body(a.max_body)
        .collateral_source(a.collateral.source());
    if let Some(r) = &a.receipts {
        b = b.receipts_ledger(r);
    }
    let client = b.build()?;
    let mut proxy = Proxy::new(client).max_request_body(a.max_body);
    if a.dangerous_listen_any {
        proxy = proxy.dangerous_any_host();
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let bound = listener.local_addr()?;
    tracing::info!(
        listen = %bound,
        upstreams = ?a.upstreams,
        ledger = ?a.receipts,
        "chrysalis proxy serving; point OpenAI SDKs at http://{bound}/v1"
    );
    if ctx.verbose {
        eprintln!("chrysalis proxy: listening on http://{bound}/v1");
    }
    if let Some(path) = &a.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
    }
    proxy
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("interrupted; stopping");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
