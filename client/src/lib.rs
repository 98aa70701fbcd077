//! # chrysalis-client
//!
//! The client side of chrysalis: talk only to nodes whose hardware evidence a pinned policy
//! accepts, and check the bill. It is what the `chrysalis` command runs, as a library.
//!
//! ```text
//!  your code ──▶ Client ──────────────── TLS 1.3 (RA-TLS) ───────────▶ chrysalis-guest
//!  any OpenAI SDK ──HTTP on 127.0.0.1──▶ Proxy ──▶ Client                (inside the CVM)
//!                                                   │
//!   AttestedConnector: the handshake completes only when the node's certificate carries
//!   evidence the Policy accepts (verdicts cached per certificate) ─ before any request byte
//!   hyper-util pool: one verified connection serves many requests
//!   upstreams: fewest in flight first; connection failures and 429/503 move to the next
//!   MeteredBody: frames pass at once; the receipt (header or trailer) is verified at the end
//!   Ledger: one JSON line per receipt, verified or not ─▶ `chrysalis receipts summary`
//! ```
//!
//! ## Modules
//! * [`client`]: the SDK: [`Client::builder`], [`Client::send`] (any `/v1` request with
//!   failover and receipt checks), typed [`Client::chat_completion`] and
//!   [`Client::chat_completion_stream`], and [`Client::hyper`] for the raw pooled client.
//! * [`proxy`]: `chrysalis proxy`: plain HTTP/1.1 on loopback for OpenAI SDKs; verification
//!   failures become OpenAI-style errors that name the rejection reason.
//! * [`metered`]: response bodies that verify their receipt as they pass, and the
//!   [`VerifiedReceipt`] proof type.
//! * [`ledger`]: the append-only JSONL receipts ledger and its summary.
//! * [`openai`]: the OpenAI chat types of the typed calls, and error bodies.
//! * [`connect`]: attested TLS connections; also a hyper connector whose responses carry the
//!   [`VerifiedPeer`](chrysalis_attestation::VerifiedPeer).
//! * [`report`]: evidence and verdicts as the JSON and text the CLI prints.
//!
//! ## What a receipt failure means
//! Receipts are checked when a response has ended, so a caller (or the proxy's caller) already
//! holds the response when a receipt turns out missing or invalid. The typed calls then return
//! [`ClientError::Receipt`] (with the completion); the proxy records the failure in its ledger
//! and logs a warning. A failed receipt is a billing dispute, not a confidentiality breach: the
//! connection itself was attested before the prompt was sent.
//!
//! ## Example
//! ```no_run
//! use chrysalis_client::{ChatMessage, ChatRequest, Client};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = chrysalis_attestation::Policy::from_toml(&std::fs::read_to_string("policy.toml")?)?;
//! let client = Client::builder()
//!     .policy(policy)
//!     .upstream("node-a.example:8443")
//!     .upstream("node-b.example:8443")
//!     .receipts_ledger("receipts.jsonl")
//!     .build()?;
//! let req = ChatRequest::new("smollm2-135m-instruct", vec![ChatMessage::user("Hello!")]).max_tokens(32);
//! let resp = client.chat_completion(&req).await?;
//! println!("{} (usage {:?}, signed by {})", resp.completion.text(), resp.receipt.body().usage, resp.upstream);
//!
//! let mut stream = client.chat_completion_stream(&req).await?;
//! while let Some(chunk) = stream.next().await {
//!     print!("{}", chunk?.text());
//! }
//! println!("\nreceipt: {:?}", stream.receipt().map(|r| r.body().usage));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod collateral;
pub mod connect;
pub mod ledger;
pub mod metered;
pub mod openai;
pub mod proxy;
pub mod report;
#[doc(hidden)]
pub mod sse;

// The public interface, flat.
pub use client::{
    ChatResponse, ChatStream, Client, ClientBuilder, ClientError, FailureKind, HyperClient,
    ServedBy, UpstreamFailure,
};
pub use connect::{AttestedConnector, AttestedStream, ConnectError};
pub use ledger::{Ledger, LedgerError, ReceiptRecord, Summary};
pub use metered::{MeteredBody, ReceiptOutcome, ReceiptSlot, VerifiedReceipt};
pub use openai::{ChatChunk, ChatCompletion, ChatMessage, ChatRequest, ModelList};
pub use proxy::{Proxy, ProxyError};
