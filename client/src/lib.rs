//! # chrysalis-client
//!
//! The client side of chrysalis: what the `chrysalis` command does, as a library.
//!
//! * [`report`]: evidence and verdicts as the JSON and text the CLI prints.
#![forbid(unsafe_code)]

pub mod report;
