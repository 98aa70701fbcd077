//! Response bodies that verify their receipt as they pass: every frame goes on unchanged and at
//! once, while the body (or, for a stream, each SSE `data` payload) is hashed; when the body
//! ends, the receipt (header or trailer) is verified with the connection's attested key and the
//! outcome is recorded (ledger, the caller's [`ReceiptSlot`], a warning when it failed).
//!
//! A caller that stops reading a stream once it has `data: [DONE]` (the official `openai` SDKs
//! close the response there) has the whole completion; only the receipt trailer was still on
//! its way. Such a body, dropped, reads the rest of the upstream's response in the background
//! (bounded in time and size) so that the receipt is still verified and recorded. A stream
//! dropped before `[DONE]` is a cancellation: the upstream connection is dropped at once, which
//! stops the generation, and the record says it was abandoned.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrysalis_attestation::receipt::{self, RECEIPT_HEADER, ReceiptBody, StreamHasher};
use chrysalis_attestation::{Sha256, VerifiedPeer};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use sha2::Digest as _;

use crate::ledger::{Ledger, ReceiptRecord};
use crate::sse::{LineSplitter, data_payload};

/// A receipt that verified: its signature under the attested key of the connection the
/// response came on, and its request and response hashes against what was exchanged. Only
/// this crate constructs one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReceipt {
    jws: String,
    body: ReceiptBody,
}

impl VerifiedReceipt {
    /// The receipt as received (JWS compact serialization).
    pub fn jws(&self) -> &str {
        &self.jws
    }

    /// What it attests: hashes, model, usage, time, signer.
    pub fn body(&self) -> &ReceiptBody {
        &self.body
    }
}

/// What became of one response's receipt.
#[derive(Clone, Debug)]
pub struct ReceiptOutcome {
    /// The ledger line (also written when the client has a ledger).
    pub record: ReceiptRecord,
    /// The verified receipt, when it verified.
    pub verified: Option<VerifiedReceipt>,
}

/// Where a response's receipt outcome appears once its body has ended (or was dropped).
#[derive(Clone, Debug, Default)]
pub struct ReceiptSlot(Arc<Mutex<Option<ReceiptOutcome>>>);

impl ReceiptSlot {
    /// The outcome, once the body ended; None before, and for responses that carry no receipt.
    pub fn get(&self) -> Option<ReceiptOutcome> {
        self.0.lock().expect("receipt slot poisoned").clone()
    }
}

/// What the metering needs to know about the request a response answers.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) upstream: String,
    pub(crate) path: String,
    pub(crate) request: Bytes,
    pub(crate) model_hint: Option<String>,
    pub(crate) peer: VerifiedPeer,
}

/// How long a stream whose caller left after `[DONE]` is read further for its receipt.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How many bytes such a stream may still send (after `[DONE]` only the trailer is expected).
const DRAIN_LIMIT: usize = 64 << 10;

enum Hashing {
    Body(sha2::Sha256),
    /// Line splitter, payload hasher, and whether a `[DONE]` payload has passed.
    Sse(LineSplitter, StreamHasher, bool),
}

struct Meter {
    ex: Exchange,
    hashing: Hashing,
    header_receipt: Option<String>,
    ledger: Option<Ledger>,
    slot: ReceiptSlot,
}

/// Counts a request as in flight on its upstream until its response body is gone.
pub(crate) struct InFlight(pub(crate) Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response body from an attested upstream. Frames pass through unchanged; for a completed
/// chat or text completion the receipt is verified when the body ends.
pub struct MeteredBody {
    /// None only once a drop has handed it to the background drain.
    inner: Option<Incoming>,
    meter: Option<Box<Meter>>,
    slot: ReceiptSlot,
    in_flight: Option<InFlight>,
}

impl std::fmt::Debug for MeteredBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody")
            .field("metered", &self.meter.is_some())
            .finish_non_exhaustive()
    }
}

impl MeteredBody {
    /// A body whose receipt is checked (`ex` set) or that just passes through (`ex` None).
    pub(crate) fn new(
        inner: Incoming,
        headers: &HeaderMap,
        ex: Option<Exchange>,
        ledger: Option<Ledger>,
        in_flight: Option<InFlight>,
    ) -> Self {
        let slot = ReceiptSlot::default();
        let meter = ex.map(|ex| {
            let sse = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
            Box::new(Meter {
                ex,
                hashing: if sse {
                    Hashing::Sse(LineSplitter::default(), StreamHasher::new(), false)
                } else {
                    Hashing::Body(sha2::Sha256::new())
                },
                header_receipt: headers
                    .get(RECEIPT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                ledger,
                slot: slot.clone(),
            })
        });
        let end = inner.is_end_stream();
        let mut body = Self {
            inner: Some(inner),
            meter,
            slot,
            in_flight,
        };
        if end {
            body.finish(None, None);
        }
        body
    }

    /// Where this response's receipt outcome appears once the body has ended.
    pub fn receipt_slot(&self) -> ReceiptSlot {
        self.slot.clone()
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>, failure: Option<String>) {
        if let Some(m) = self.meter.take() {
            m.finish(trailers, failure);
        }
    }
}

impl Meter {
    fn feed(&mut self, data: &[u8]) {
        match &mut self.hashing {
            Hashing::Body(h) => h.update(data),
            Hashing::Sse(lines, h, done) => lines.push(data, |line| {
                if let Some(p) = data_payload(line) {
                    h.data(p);
                    *done |= p == b"[DONE]";
                }
            }),
        }
    }

    /// True once a stream's `[DONE]` has passed: the caller has the whole completion.
    fn done(&self) -> bool {
        matches!(self.hashing, Hashing::Sse(_, _, true))
    }

    /// Reads what is left of a stream whose caller has gone after `[DONE]`, then finishes.
    async fn drain(mut self: Box<Self>, mut inner: Incoming) {
        let mut left = DRAIN_LIMIT;
        let outcome = tokio::time::timeout(DRAIN_TIMEOUT, async {
            loop {
                match inner.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(format!("incomplete: the upstream failed: {e}")),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            left = left.checked_sub(data.len()).ok_or_else(|| {
                                format!(
                                    "incomplete: the upstream sent over {DRAIN_LIMIT} bytes \
                                     after [DONE] to a caller that had left"
                                )
                            })?;
                            self.feed(&data);
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                return Ok(Some(t));
                            }
                        }
                    },
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(trailers)) => self.finish(trailers.as_ref(), None),
            Ok(Err(failure)) => self.finish(None, Some(failure)),
            Err(_) => self.finish(
                None,
                Some(format!(
                    "incomplete: the receipt did not arrive within {} s after [DONE]",
                    DRAIN_TIMEOUT.as_secs()
                )),
            ),
        }
    }

    fn finish(self: Box<Self>, trailers: Option<&HeaderMap>, failure: Option<String>) {
        let Meter {
            ex,
            hashing,
            header_receipt,
            ledger,
            slot,
        } = *self;
        let stream = matches!(hashing, Hashing::Sse(..));
        let trailer_receipt = trailers
            .and_then(|t| t.get(RECEIPT_HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let jws = header_receipt.or(trailer_receipt);
        let response_hash = match hashing {
            Hashing::Body(h) => Ok(Sha256(h.finalize().into())),
            Hashing::Sse(lines, ..) if lines.overflowed() => {
                Err("a stream line exceeded the client's line limit".to_owned())
            }
            Hashing::Sse(lines, ..) if !lines.rest().is_empty() => {
                Err("the stream ended inside an unterminated line".to_owned())
            }
            Hashing::Sse(_, h, _) => Ok(h.finish()),
        };
        let checked: Result<ReceiptBody, String> = match (failure, &jws) {
            (Some(f), _) => Err(f),
            (None, None) => Err(if stream {
                format!("no receipt: the stream carried no {RECEIPT_HEADER} trailer")
            } else {
                format!("no receipt: the response carried no {RECEIPT_HEADER} header")
            }),
            (None, Some(jws)) => response_hash.and_then(|hash| {
                let body = receipt::verify(jws, ex.peer.spki_der()).map_err(|e| e.to_string())?;
                body.check_exchange(&ex.request, hash)
                    .map_err(|e| e.to_string())?;
                if body.stream != stream {
                    return Err(format!(
                        "receipt says stream={}, the response {} a stream",
                        body.stream,
                        if stream { "was" } else { "was not" }
                    ));
                }
                Ok(body)
            }),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verified = checked.as_ref().ok().map(|b| VerifiedReceipt {
            jws: jws.clone().unwrap_or_default(),
            body: b.clone(),
        });
        let record = ReceiptRecord {
            ts: now,
            time: rfc3339(now),
            upstream: ex.upstream.clone(),
            path: ex.path.clone(),
            model: verified
                .as_ref()
                .map(|v| v.body.model.clone())
                .or(ex.model_hint.clone()),
            stream,
            usage: verified.as_ref().map(|v| v.body.usage),
            verified: verified.is_some(),
            reason: checked.as_ref().err().cloned(),
            receipt: jws,
            cert_sha256: ex.peer.cert_sha256(),
            model_root_hash: verified.as_ref().map(|v| v.body.model_root_hash.clone()),
        };
        match &record.reason {
            None => {
                tracing::debug!(upstream = %record.upstream, usage = ?record.usage, "receipt verified")
            }
            Some(reason) => tracing::warn!(
                upstream = %record.upstream,
                path = %record.path,
                %reason,
                "receipt FAILED; the response was delivered and is recorded as unverified"
            ),
        }
        if let Some(l) = &ledger
            && let Err(e) = l.append(record.clone())
        {
            tracing::error!(error = %e, "cannot record a receipt");
        }
        *slot.0.lock().expect("receipt slot poisoned") = Some(ReceiptOutcome { record, verified });
    }
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(&mut *inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(m) = this.meter.as_mut() {
                        m.feed(data);
                    }
                    // A body of known length ends with its last byte; its reader may never poll
                    // again, so the receipt is checked now.
                    if inner.is_end_stream() {
                        this.finish(None, None);
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    this.finish(Some(t), None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(None, Some(format!("incomplete: the upstream failed: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish(None, None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        let Some(m) = self.meter.take() else {
            return;
        };
        if m.done()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
            && let Some(inner) = self.inner.take()
        {
            // Still counted in flight on its upstream until the drain ends.
            let in_flight = self.in_flight.take();
            rt.spawn(async move {
                m.drain(inner).await;
                drop(in_flight);
            });
            return;
        }
        m.finish(
            None,
            Some("incomplete: the response was abandoned before it ended".into()),
        );
    }
}
