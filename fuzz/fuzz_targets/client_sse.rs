//! Fuzzes the client's SSE line splitting (`sse::LineSplitter`, `sse::data_payload`) on
//! arbitrary bytes: the lines do not depend on how the bytes are chunked, hold no LF, and over a
//! stream of whole lines the client's receipt hash equals `StreamHasher::sse_text`'s (the
//! guest-side definition). Input: a chunk-size byte, then the stream.
#![no_main]

use chrysalis_attestation::receipt::StreamHasher;
use chrysalis_client::sse::{LineSplitter, data_payload};
use libfuzzer_sys::fuzz_target;

fn split(stream: &[u8], size: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut s = LineSplitter::default();
    let mut lines = Vec::new();
    for chunk in stream.chunks(size) {
        s.push(chunk, |l| lines.push(l.to_vec()));
    }
    assert!(!s.overflowed());
    (lines, s.rest().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let whole = split(stream, stream.len().max(1));
    let chunked = split(stream, usize::from(size) + 1);
    assert_eq!(whole, chunked, "lines depend on chunking");
    let (lines, rest) = whole;
    assert!(lines.iter().all(|l| !l.contains(&b'\n')));
    assert!(!rest.contains(&b'\n'));
    if rest.is_empty() {
        let mut client = StreamHasher::new();
        for p in lines.iter().filter_map(|l| data_payload(l)) {
            client.data(p);
        }
        let mut guest = StreamHasher::new();
        guest.sse_text(stream);
        assert_eq!(client.finish(), guest.finish());
    }
});
