//! Fuzzes the SSE path end to end without a network: the guest frames a stream of chunks
//! (`api::Responder` + `api::sse_event`) and hashes it for its receipt; the client splits the
//! bytes into lines at arbitrary chunk boundaries (`sse::LineSplitter`), takes the `data:`
//! payloads and hashes them. Every payload must come back unchanged, the text with it, and both
//! hashes must agree, or a receipt would fail on an honest stream.
//!
//! Input: a chunk-size byte, a flags byte (bit 0: completions endpoint, bit 1: include_usage),
//! then the generated texts separated by 0xFF (never a UTF-8 byte), each read as lossy UTF-8.
#![no_main]

use chrysalis_attestation::receipt::StreamHasher;
use chrysalis_client::ChatChunk;
use chrysalis_client::sse::{LineSplitter, data_payload};
use chrysalis_guest::api::{Endpoint, Responder, sse_event};
use chrysalis_guest::engine::{Chunk, Usage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [size, flags, rest @ ..] = data else {
        return;
    };
    let endpoint = if flags & 1 == 0 {
        Endpoint::Chat
    } else {
        Endpoint::Completion
    };
    let include_usage = flags & 2 != 0;
    let responder = Responder {
        endpoint,
        id: "chatcmpl-fuzz".into(),
        created: 1_750_500_000,
        model: chrysalis_fuzz::MODEL.into(),
        logprobs: false,
    };
    let texts: Vec<String> = rest
        .split(|b| *b == 0xFF)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();

    // The guest's side, as server/stream.rs sends a stream.
    let mut payloads = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let c = Chunk {
            text: t.clone(),
            ..Chunk::default()
        };
        let chunk = responder.chunk(&c, None, i == 0, include_usage);
        payloads.push(serde_json::to_vec(&chunk).expect("a chunk serializes"));
    }
    let last = responder.chunk(&Chunk::default(), Some("stop"), false, include_usage);
    payloads.push(serde_json::to_vec(&last).expect("a chunk serializes"));
    if include_usage {
        let usage = Usage::new(3, texts.len() as u64);
        payloads.push(serde_json::to_vec(&responder.usage_chunk(&usage)).expect("serializes"));
    }
    payloads.push(b"[DONE]".to_vec());
    let mut guest_hash = StreamHasher::new();
    let mut wire = Vec::new();
    for p in &payloads {
        guest_hash.data(p);
        wire.extend_from_slice(&sse_event(p));
    }
    let guest_hash = guest_hash.finish();

    // The client's side, with the bytes arriving in chunks of `size`.
    let mut lines = LineSplitter::default();
    let mut got: Vec<Vec<u8>> = Vec::new();
    for chunk in wire.chunks(usize::from(*size) + 1) {
        lines.push(chunk, |line| {
            if let Some(p) = data_payload(line) {
                got.push(p.to_vec());
            }
        });
    }
    assert!(!lines.overflowed() && lines.rest().is_empty());
    assert_eq!(
        got, payloads,
        "the client does not read what the guest framed"
    );
    let mut client_hash = StreamHasher::new();
    got.iter().for_each(|p| client_hash.data(p));
    assert_eq!(client_hash.finish(), guest_hash);
    let mut whole = StreamHasher::new();
    whole.sse_text(&wire);
    assert_eq!(whole.finish(), guest_hash);

    // The texts come back: through the SDK's chunk type (chat), as JSON (completions).
    for (t, p) in texts.iter().zip(&got) {
        let back = match endpoint {
            Endpoint::Chat => serde_json::from_slice::<ChatChunk>(p)
                .expect("the SDK reads a guest chunk")
                .text()
                .to_owned(),
            Endpoint::Completion => {
                let v: serde_json::Value = serde_json::from_slice(p).expect("JSON");
                v["choices"][0]["text"].as_str().expect("text").to_owned()
            }
        };
        assert_eq!(&back, t);
    }
});
