//! The receipts ledger: one JSON line per metered response (verified or not), appended and
//! synced to disk, and the per-upstream, per-model summary `chrysalis receipts summary` prints.
//!
//! A line is written with one `write` of the whole line followed by `fsync`, by one writer
//! thread, so lines never interleave. A crash can at worst cut the last line short; [`Ledger::open`]
//! removes such a torn tail before appending, so every line of a ledger is a whole record.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrysalis_attestation::Sha256;
use chrysalis_attestation::receipt::Usage;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One ledger line: what was asked of which upstream, and whether its receipt verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    /// When the response ended (unix seconds, this machine's clock).
    pub ts: u64,
    /// The same instant, RFC 3339 UTC.
    pub time: String,
    /// The upstream (`host:port`) that served it.
    pub upstream: String,
    /// The request path (`/v1/chat/completions`, `/v1/completions`).
    pub path: String,
    /// The model: from the verified receipt, else as the request named it.
    pub model: Option<String>,
    /// Whether the response was a server-sent-event stream.
    pub stream: bool,
    /// Token usage from the verified receipt; None when the receipt did not verify.
    pub usage: Option<Usage>,
    /// True only when the receipt's signature verified under the attested key and its request
    /// and response hashes match what was exchanged.
    pub verified: bool,
    /// Why the receipt failed (None when verified).
    pub reason: Option<String>,
    /// The receipt as received (JWS compact), when there was one.
    pub receipt: Option<String>,
    /// SHA-256 of the RA-TLS certificate of the connection the response came on.
    pub cert_sha256: Sha256,
    /// The model pack's root hash, from the verified receipt.
    pub model_root_hash: Option<String>,
}

/// Why the ledger could not be opened, written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file could not be opened, repaired, written or read.
    #[error("ledger {path}: {source}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line is not a ledger record.
    #[error("ledger {path} line {line}: {message}")]
    BadLine {
        /// The ledger file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The writer thread is gone (it stops only when every handle is dropped).
    #[error("ledger {0}: the writer thread has stopped")]
    Stopped(PathBuf),
}

enum Msg {
    Record(Box<ReceiptRecord>),
    Sync(mpsc::SyncSender<()>),
}

/// An open ledger. Clones share one writer thread; records are written in the order
/// [`Ledger::append`] was called.
#[derive(Clone, Debug)]
pub struct Ledger {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` for appending, after cutting off a torn last
    /// line left by a crash, and starts its writer thread.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, LedgerError> {
        let path = path.into();
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        repair_torn_tail(&mut file).map_err(io)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("chrysalis-ledger".into())
            .spawn(move || writer(file, &thread_path, rx))
            .map_err(io)?;
        Ok(Self { path, tx })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `record` to be appended; returns at once. A write failure is logged (the ledger
    /// cannot report it to a response that has already been delivered).
    pub fn append(&self, record: ReceiptRecord) -> Result<(), LedgerError> {
        self.tx
            .send(Msg::Record(Box::new(record)))
            .map_err(|_| LedgerError::Stopped(self.path.clone()))
    }

    /// Blocks until every record appended before this call is on disk.
    pub fn sync(&self) -> Result<(), LedgerError> {
        let (ack, done) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Sync(ack))
            .map_err(|_| LedgerError::Stopped(self.path.clone()))?;
        done.recv()
            .map_err(|_| LedgerError::Stopped(self.path.clone()))
    }
}

fn writer(mut file: File, path: &Path, rx: mpsc::Receiver<Msg>) {
    for msg in rx {
        match msg {
            Msg::Record(r) => {
                let mut line = serde_json::to_vec(&r).expect("a record serialises");
                line.push(b'\n');
                // One write call per line: O_APPEND places it whole at the end.
                if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
                    tracing::error!(ledger = %path.display(), error = %e, "cannot append a receipt to the ledger");
                }
            }
            Msg::Sync(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Truncates the file after its last LF when it does not end with one (a line cut by a crash).
fn repair_torn_tail(file: &mut File) -> io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(());
    }
    let mut pos = len;
    let mut buf = [0u8; 4096];
    loop {
        let start = pos.saturating_sub(buf.len() as u64);
        let n = (pos - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if pos == len && buf[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            tracing::warn!(
                cut = len - keep,
                "ledger ended in a torn line (a crash while writing); removing it"
            );
            return file.set_len(keep);
        }
        if start == 0 {
            tracing::warn!("ledger held only a torn line; removing it");
            return file.set_len(0);
        }
        pos = start;
    }
}

/// Reads every record of a ledger file. A line that is not a record is an error naming it.
pub fn read(path: &Path) -> Result<Vec<ReceiptRecord>, LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| LedgerError::BadLine {
                path: path.to_owned(),
                line: i + 1,
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// Usage of one (upstream, model) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    /// The upstream.
    pub upstream: String,
    /// The model ("?" when neither receipt nor request named one).
    pub model: String,
    /// Metered responses.
    pub responses: u64,
    /// Of which the receipt verified.
    pub verified: u64,
    /// Of which the receipt failed.
    pub failed: u64,
    /// Token usage summed over verified receipts only.
    pub usage: Usage,
}

/// Totals of a ledger: usage per upstream and model, and every record whose receipt failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// One row per (upstream, model), sorted.
    pub rows: Vec<SummaryRow>,
    /// Usage over all verified receipts.
    pub total: Usage,
    /// Every record whose receipt was missing or did not verify, in ledger order.
    pub failed: Vec<ReceiptRecord>,
}

impl Summary {
    /// Totals `records`.
    pub fn of(records: &[ReceiptRecord]) -> Self {
        let mut rows: BTreeMap<(String, String), SummaryRow> = BTreeMap::new();
        let mut s = Summary::default();
        for r in records {
            let model = r.model.clone().unwrap_or_else(|| "?".into());
            let row = rows
                .entry((r.upstream.clone(), model.clone()))
                .or_insert_with(|| SummaryRow {
                    upstream: r.upstream.clone(),
                    model,
                    ..SummaryRow::default()
                });
            row.responses += 1;
            match (r.verified, r.usage) {
                (true, Some(u)) => {
                    row.verified += 1;
                    add(&mut row.usage, u);
                    add(&mut s.total, u);
                }
                _ => {
                    row.failed += 1;
                    s.failed.push(r.clone());
                }
            }
        }
        s.rows = rows.into_values().collect();
        s
    }
}

fn add(into: &mut Usage, u: Usage) {
    into.prompt_tokens += u.prompt_tokens;
    into.completion_tokens += u.completion_tokens;
    into.total_tokens += u.total_tokens;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(upstream: &str, model: &str, verified: bool, tokens: u64) -> ReceiptRecord {
        ReceiptRecord {
            ts: 1_800_000_000,
            time: "2027-01-15T08:00:00Z".into(),
            upstream: upstream.into(),
            path: "/v1/chat/completions".into(),
            model: Some(model.into()),
            stream: false,
            usage: verified.then_some(Usage {
                prompt_tokens: tokens,
                completion_tokens: 2 * tokens,
                total_tokens: 3 * tokens,
            }),
            verified,
            reason: (!verified).then(|| "no receipt".into()),
            receipt: None,
            cert_sha256: Sha256::digest(b"cert"),
            model_root_hash: None,
        }
    }

    #[test]
    fn append_sync_read_and_summarise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = Ledger::open(&path).unwrap();
        let records = vec![
            rec("a:1", "m", true, 1),
            rec("b:1", "m", true, 10),
            rec("a:1", "m", true, 100),
            rec("a:1", "m", false, 0),
            rec("a:1", "n", true, 1000),
        ];
        for r in &records {
            ledger.append(r.clone()).unwrap();
        }
        ledger.sync().unwrap();
        assert_eq!(read(&path).unwrap(), records);

        let s = Summary::of(&records);
        assert_eq!(s.rows.len(), 3);
        let a_m = &s.rows[0];
        assert_eq!((a_m.upstream.as_str(), a_m.model.as_str()), ("a:1", "m"));
        assert_eq!((a_m.responses, a_m.verified, a_m.failed), (3, 2, 1));
        assert_eq!(a_m.usage.prompt_tokens, 101);
        assert_eq!(a_m.usage.total_tokens, 303);
        assert_eq!(s.total.prompt_tokens, 1111);
        assert_eq!(s.failed, vec![records[3].clone()]);
    }

    #[test]
    fn a_torn_last_line_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let whole = serde_json::to_string(&rec("a:1", "m", true, 1)).unwrap();
        std::fs::write(&path, format!("{whole}\n{}", &whole[..20])).unwrap();
        assert!(matches!(
            read(&path),
            Err(LedgerError::BadLine { line: 2, .. })
        ));
        let ledger = Ledger::open(&path).unwrap();
        ledger.append(rec("b:1", "m", true, 1)).unwrap();
        ledger.sync().unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].upstream, "b:1");

        std::fs::write(&path, &whole[..10]).unwrap();
        drop(Ledger::open(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
