//! Server-sent-event framing: lines split across arbitrary chunk boundaries, and `data:`
//! payloads, as receipts hash them (docs/receipts.md, "Stream response hash").
//!
//! Public but hidden from the docs only for the fuzz targets (fuzz/), which drive this parser
//! with the guest's framing; it is not part of the SDK.

/// A line longer than this is not buffered further: a stream that sends one cannot be hashed,
/// so its receipt fails instead of the client growing without bound.
pub const MAX_LINE: usize = 8 << 20;

/// Splits a byte stream into lines at LF (a CR before the LF is dropped), whatever the chunking.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    overflowed: bool,
}

impl LineSplitter {
    /// Feeds one chunk; calls `line` for every line it completes, in order.
    pub fn push(&mut self, mut chunk: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            let (head, tail) = chunk.split_at(i);
            chunk = &tail[1..];
            if self.partial.is_empty() {
                line(strip_cr(head));
            } else {
                self.partial.extend_from_slice(head);
                let whole = std::mem::take(&mut self.partial);
                line(strip_cr(&whole));
            }
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            self.overflowed = true;
            self.partial.clear();
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }

    /// True when a line was too long to buffer (and was dropped).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Bytes after the last LF (an unterminated last line).
    pub fn rest(&self) -> &[u8] {
        &self.partial
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The payload of a `data:` line (one optional space after the colon removed), or None for any
/// other line (comments, `event:`, `id:`, blank separators).
pub fn data_payload(line: &[u8]) -> Option<&[u8]> {
    let payload = line.strip_prefix(b"data:")?;
    Some(payload.strip_prefix(b" ").unwrap_or(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(l.to_vec()));
        }
        out
    }

    #[test]
    fn lines_survive_any_chunking() {
        let text = b"data: {\"a\":1}\r\n\ndata: [DONE]\n\n";
        let whole = lines(&[text]);
        for cut in 0..text.len() {
            assert_eq!(lines(&[&text[..cut], &text[cut..]]), whole, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(lines(&bytewise), whole);
        assert_eq!(
            whole,
            vec![
                b"data: {\"a\":1}".to_vec(),
                vec![],
                b"data: [DONE]".to_vec(),
                vec![]
            ]
        );
    }

    #[test]
    fn payloads() {
        assert_eq!(data_payload(b"data: x"), Some(&b"x"[..]));
        assert_eq!(data_payload(b"data:x"), Some(&b"x"[..]));
        assert_eq!(data_payload(b"data:  x"), Some(&b" x"[..]));
        assert_eq!(data_payload(b": comment"), None);
        assert_eq!(data_payload(b"event: x"), None);
    }

    #[test]
    fn an_endless_line_is_dropped_not_buffered() {
        let mut s = LineSplitter::default();
        let big = vec![b'x'; MAX_LINE / 2 + 1];
        s.push(&big, |_| panic!("no line"));
        assert!(!s.overflowed());
        s.push(&big, |_| panic!("no line"));
        assert!(s.overflowed());
        assert!(s.rest().is_empty());
    }
}
