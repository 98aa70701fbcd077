//! # chrysalis-client
//!
//! The client side of chrysalis: what the `chrysalis` command does, as a library.
//!
//! * [`connect`]: TLS connections that complete only to nodes a policy accepts; also a hyper
//!   connector whose responses carry the verified peer.
//! * [`report`]: evidence and verdicts as the JSON and text the CLI prints.
#![forbid(unsafe_code)]

pub mod connect;
pub mod report;
