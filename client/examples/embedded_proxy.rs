//! The pinning proxy inside your own program: serve OpenAI-compatible HTTP on loopback in front
//! of attested nodes, with a receipts ledger, until Ctrl-C.
//!
//! ```text
//! cargo run -p chrysalis-client --example embedded_proxy -- POLICY.toml HOST:PORT [HOST:PORT…]
//! OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python your_app.py
//! ```

use anyhow::Context;
use chrysalis_attestation::Policy;
use chrysalis_client::{Client, Proxy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let policy = args
        .next()
        .context("usage: embedded_proxy POLICY.toml HOST:PORT…")?;
    let upstreams: Vec<String> = args.collect();
    let policy = Policy::from_toml(&std::fs::read_to_string(&policy)?)?;
    let client = Client::builder()
        .policy(policy)
        .upstreams(upstreams)
        .receipts_ledger("receipts.jsonl")
        .build()?;
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse()?;
    chrysalis_client::proxy::check_listen(addr, false)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("OpenAI base URL: http://{addr}/v1 (ledger: receipts.jsonl)");
    Proxy::new(client)
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
