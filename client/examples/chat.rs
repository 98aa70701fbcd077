//! A chat with an attested node through the Rust SDK: one reply, one streamed reply, and their
//! verified receipts.
//!
//! ```text
//! cargo run -p chrysalis-client --example chat -- POLICY.toml HOST:PORT [MODEL] [PROMPT]
//! ```
//! The policy pins the measurements the node must prove (see `chrysalis verify`).

use std::io::Write;

use anyhow::Context;
use chrysalis_attestation::Policy;
use chrysalis_client::{ChatMessage, ChatRequest, Client};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(policy), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: chat POLICY.toml HOST:PORT [MODEL] [PROMPT]");
    };
    let model = args
        .next()
        .unwrap_or_else(|| "smollm2-135m-instruct".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "Write a haiku about trust.".into());

    let policy = Policy::from_toml(
        &std::fs::read_to_string(&policy).with_context(|| format!("reading {policy}"))?,
    )?;
    let client = Client::builder()
        .policy(policy)
        .upstream(upstream)
        .build()?;

    let req = ChatRequest::new(model, vec![ChatMessage::user(prompt)]).max_tokens(64);
    let reply = client.chat_completion(&req).await?;
    println!("{}", reply.completion.text());
    let r = reply.receipt.body();
    println!(
        "-- receipt verified: {} + {} tokens of {} (model root {}), signed by {}",
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
        r.model,
        r.model_root_hash,
        reply.upstream
    );

    let mut stream = client.chat_completion_stream(&req).await?;
    while let Some(chunk) = stream.next().await {
        print!("{}", chunk?.text());
        std::io::stdout().flush()?;
    }
    let usage = stream.receipt().map(|r| r.body().usage);
    println!("\n-- stream receipt verified: {usage:?}");
    Ok(())
}
