//! The Linux configfs-tsm report interface (`/sys/kernel/config/tsm/report`, Linux ≥ 6.7).
//!
//! One report entry is a directory: write 64 bytes of report_data to `inblob`, read the quote
//! (TDX) or report (SNP) from `outblob`, and the SNP certificate table from `auxblob` when the host
//! supplied one. `generation` counts writes to the entry, so reading it around the exchange tells
//! whether another writer raced us; then we try again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrysalis_attestation::{Platform, ReportData};

use super::{EvidenceBundle, EvidenceError, EvidenceProvider};

/// Where the kernel exposes report entries.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// How many times a raced exchange is retried before giving up.
pub const MAX_ATTEMPTS: u32 = 8;

/// Evidence from configfs-tsm.
#[derive(Debug, Clone)]
pub struct ConfigfsTsm {
    entry: PathBuf,
    // One exchange at a time per entry: our own requests must not race each other.
    lock: Arc<Mutex<()>>,
}

impl ConfigfsTsm {
    /// Uses (creating when absent) the report entry `entry_name` under `root`.
    ///
    /// Tests pass a temporary directory as `root` and play the kernel's part.
    pub fn new(root: impl AsRef<Path>, entry_name: &str) -> Self {
        Self {
            entry: root.as_ref().join(entry_name),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// The entry directory this provider uses.
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    /// The blocking exchange; see the module documentation.
    pub fn evidence_blocking(
        &self,
        report_data: &ReportData,
    ) -> Result<EvidenceBundle, EvidenceError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match fs::create_dir(&self.entry) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&self.entry, e)),
        }
        let platform = self.platform()?;
        for _ in 0..MAX_ATTEMPTS {
            let before = self.generation()?;
            self.write("inblob", report_data.as_bytes())?;
            let written = self.generation()?;
            if written != before.wrapping_add(1) {
                tracing::debug!(
                    before,
                    written,
                    "configfs-tsm: concurrent write before ours was read"
                );
                continue;
            }
            let evidence = self.read("outblob")?;
            let aux = match fs::read(self.entry.join("auxblob")) {
                Ok(b) if !b.is_empty() => Some(b),
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(&self.entry.join("auxblob"), e)),
            };
            let after = self.generation()?;
            if after != written {
                tracing::debug!(
                    written,
                    after,
                    "configfs-tsm: entry rewritten while we read it"
                );
                continue;
            }
            if evidence.is_empty() {
                return Err(EvidenceError::Empty);
            }
            return Ok(match platform {
                Platform::Tdx => EvidenceBundle::tdx(evidence, None),
                Platform::Snp => {
                    let (vcek, chain) = match aux {
                        Some(table) => snp_cert_table(&table)?,
                        None => (None, None),
                    };
                    EvidenceBundle::snp(evidence, vcek, chain)
                }
            });
        }
        Err(EvidenceError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    fn platform(&self) -> Result<Platform, EvidenceError> {
        let p = self.read("provider")?;
        let p = String::from_utf8_lossy(&p).trim().to_owned();
        match p.as_str() {
            "tdx_guest" => Ok(Platform::Tdx),
            "sev_guest" => Ok(Platform::Snp),
            _ => Err(EvidenceError::UnknownProvider(p)),
        }
    }

    fn generation(&self) -> Result<u64, EvidenceError> {
        let path = self.entry.join("generation");
        let raw = self.read("generation")?;
        String::from_utf8_lossy(&raw).trim().parse().map_err(|e| {
            io_err(
                &path,
                io::Error::new(io::ErrorKind::InvalidData, format!("not a number: {e}")),
            )
        })
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, EvidenceError> {
        let path = self.entry.join(name);
        fs::read(&path).map_err(|e| io_err(&path, e))
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<(), EvidenceError> {
        let path = self.entry.join(name);
        // configfs takes the whole attribute in one write(2); std::fs::write issues exactly one.
        fs::write(&path, data).map_err(|e| io_err(&path, e))
    }
}

/// GUIDs of the SEV-SNP certificate table (GHCB specification, "SNP extended guest request").
const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";

fn guid_string(b: &[u8]) -> String {
    // The table stores GUIDs in their mixed-endian binary form.
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// The VCEK (or VLEK) and the ASK ‖ ARK chain (DER) of an SNP certificate table.
pub type SnpCerts = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Splits the SEV-SNP certificate table of an auxblob into (VCEK or VLEK, ASK ‖ ARK as DER).
///
/// Entries are (GUID, u32 offset, u32 length) little-endian, ended by an all-zero entry.
pub fn snp_cert_table(table: &[u8]) -> Result<SnpCerts, EvidenceError> {
    let bad = |why: String| EvidenceError::Malformed(format!("SEV-SNP certificate table: {why}"));
    let (mut vcek, mut ask, mut ark) = (None, None, None);
    let mut at = 0;
    loop {
        let e = table
            .get(at..at + 24)
            .ok_or_else(|| bad(format!("entry at {at} runs past the end")))?;
        if e.iter().all(|b| *b == 0) {
            break;
        }
        let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
        let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
        let cert = table
            .get(off..off.saturating_add(len))
            .ok_or_else(|| bad(format!("certificate at {off}+{len} runs past the end")))?
            .to_vec();
        match guid_string(&e[..16]).as_str() {
            GUID_VCEK | GUID_VLEK => vcek = Some(cert),
            GUID_ASK => ask = Some(cert),
            GUID_ARK => ark = Some(cert),
            _ => {}
        }
        at += 24;
    }
    let chain = match (ask, ark) {
        (Some(ask), Some(ark)) => Some([ask, ark].concat()),
        _ => None,
    };
    Ok((vcek, chain))
}

fn io_err(path: &Path, source: io::Error) -> EvidenceError {
    EvidenceError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl EvidenceProvider for ConfigfsTsm {
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<EvidenceBundle, EvidenceError>> + Send + '_>,
    > {
        let this = self.clone();
        let entry = self.entry.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.evidence_blocking(&report_data))
                .await
                .map_err(|e| io_err(&entry, io::Error::other(e.to_string())))?
        })
    }

    fn name(&self) -> &'static str {
        "configfs-tsm"
    }
}

#[cfg(test)]
mod tests {
    //! A thread plays the kernel: `generation` and `outblob` are FIFOs, so each read by the
    //! provider blocks until the fake kernel answers, computed at that moment, as configfs does.
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::thread;

    struct FakeKernel {
        dir: tempfile::TempDir,
        stop: Arc<AtomicBool>,
        threads: Vec<thread::JoinHandle<()>>,
        outblob_reads: Arc<AtomicU32>,
    }

    #[derive(Default)]
    struct State {
        generation: u64,
        last_inblob: Vec<u8>,
    }

    impl FakeKernel {
        /// `race_on`: the outblob read numbers (1-based) during which another writer rewrites inblob.
        fn start(provider: &str, aux: Option<&[u8]>, race_on: &'static [u32]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let entry = dir.path().join("chrysalis");
            fs::create_dir(&entry).unwrap();
            fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
            fs::write(entry.join("inblob"), b"").unwrap();
            if let Some(aux) = aux {
                fs::write(entry.join("auxblob"), aux).unwrap();
            }
            for f in ["generation", "outblob"] {
                nix::unistd::mkfifo(&entry.join(f), nix::sys::stat::Mode::S_IRWXU).unwrap();
            }
            let stop = Arc::new(AtomicBool::new(false));
            let state = Arc::new(Mutex::new(State::default()));
            let outblob_reads = Arc::new(AtomicU32::new(0));
            let mut threads = Vec::new();
            // generation: bump when inblob changed since the last look (the kernel bumps on write).
            {
                let (entry, state) = (entry.clone(), state.clone());
                threads.push(serve_fifo(
                    entry.join("generation"),
                    stop.clone(),
                    move || {
                        let mut s = state.lock().unwrap();
                        let cur = fs::read(entry.join("inblob")).unwrap();
                        if cur != s.last_inblob {
                            s.last_inblob = cur;
                            s.generation += 1;
                        }
                        format!("{}\n", s.generation).into_bytes()
                    },
                ));
            }
            // outblob: "QUOTE" ‖ inblob; on a racing read, another writer's data first.
            {
                let (entry, state, reads) = (entry.clone(), state.clone(), outblob_reads.clone());
                threads.push(serve_fifo(entry.join("outblob"), stop.clone(), move || {
                    let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut s = state.lock().unwrap();
                    if race_on.contains(&n) {
                        let other = vec![0xee; 64];
                        fs::write(entry.join("inblob"), &other).unwrap();
                        s.last_inblob = other;
                        s.generation += 1;
                    }
                    let mut b = b"QUOTE".to_vec();
                    b.extend_from_slice(&s.last_inblob);
                    b
                }));
            }
            Self {
                dir,
                stop,
                threads,
                outblob_reads,
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for FakeKernel {
        fn drop(&mut self) {
            // The FIFO threads stay blocked in open(2) and die with the test process.
            self.stop.store(true, Ordering::SeqCst);
            self.threads.clear();
        }
    }

    /// Answers each read of the FIFO at `path` with `answer()`, computed when the reader opens it,
    /// and waits until that reader has closed before serving the next (inotify), so that two
    /// answers never run together.
    fn serve_fifo(
        path: PathBuf,
        stop: Arc<AtomicBool>,
        mut answer: impl FnMut() -> Vec<u8> + Send + 'static,
    ) -> thread::JoinHandle<()> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::empty()).unwrap();
        ino.add_watch(&path, AddWatchFlags::IN_CLOSE_NOWRITE)
            .unwrap();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut f) = fs::OpenOptions::new().write(true).open(&path) else {
                    return;
                };
                let _ = f.write_all(&answer());
                drop(f);
                let _ = ino.read_events();
            }
        })
    }

    #[test]
    fn tdx_exchange_returns_outblob_for_our_report_data() {
        let k = FakeKernel::start("tdx_guest", None, &[]);
        let p = ConfigfsTsm::new(k.root(), "chrysalis");
        let rd = ReportData([0x42; 64]);
        let b = p.evidence_blocking(&rd).unwrap();
        assert_eq!(b.platform, Platform::Tdx);
        assert_eq!(&b.evidence[..5], b"QUOTE");
        assert_eq!(&b.evidence[5..], &rd.0[..]);
        assert_eq!((b.snp_vcek, b.snp_chain), (None, None));
        assert_eq!(k.outblob_reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn snp_exchange_carries_auxblob_certs() {
        let table = cert_table(&[
            (GUID_VCEK, b"VCEK-DER"),
            (GUID_ASK, b"ASK"),
            (GUID_ARK, b"ARK"),
        ]);
        let k = FakeKernel::start("sev_guest", Some(&table), &[]);
        let p = ConfigfsTsm::new(k.root(), "chrysalis");
        let b = p.evidence_blocking(&ReportData([1; 64])).unwrap();
        assert_eq!(b.platform, Platform::Snp);
        assert_eq!(b.snp_vcek.as_deref(), Some(&b"VCEK-DER"[..]));
        assert_eq!(b.snp_chain.as_deref(), Some(&b"ASKARK"[..]));
    }

    fn guid_bytes(g: &str) -> Vec<u8> {
        let h = hex::decode(g.replace('-', "")).unwrap();
        let mut b = Vec::new();
        b.extend(h[0..4].iter().rev());
        b.extend(h[4..6].iter().rev());
        b.extend(h[6..8].iter().rev());
        b.extend(&h[8..16]);
        b
    }

    fn cert_table(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header = 24 * (entries.len() + 1);
        let mut head = Vec::new();
        let mut body = Vec::new();
        for (g, c) in entries {
            head.extend(guid_bytes(g));
            head.extend(((header + body.len()) as u32).to_le_bytes());
            head.extend((c.len() as u32).to_le_bytes());
            body.extend_from_slice(c);
        }
        head.extend([0u8; 24]);
        [head, body].concat()
    }

    #[test]
    fn cert_table_parsing_finds_vlek_and_rejects_overruns() {
        let t = cert_table(&[
            (GUID_VLEK, b"VLEK"),
            ("00000000-0000-0000-0000-000000000001", b"other"),
        ]);
        assert_eq!(snp_cert_table(&t).unwrap(), (Some(b"VLEK".to_vec()), None));
        let mut broken = t.clone();
        broken[20] = 0xff; // first length far past the end
        assert!(
            snp_cert_table(&broken)
                .unwrap_err()
                .to_string()
                .contains("runs past the end")
        );
        assert!(snp_cert_table(&t[..10]).is_err());
    }

    #[test]
    fn a_racing_writer_is_detected_and_the_exchange_retried() {
        let k = FakeKernel::start("tdx_guest", None, &[1]);
        let p = ConfigfsTsm::new(k.root(), "chrysalis");
        let rd = ReportData([0x07; 64]);
        let b = p.evidence_blocking(&rd).unwrap();
        // The first outblob carried the other writer's data; only the retry's is returned.
        assert_eq!(&b.evidence[5..], &rd.0[..]);
        assert_eq!(k.outblob_reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_writer_racing_every_attempt_gives_up_with_contended() {
        static ALL: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let k = FakeKernel::start("tdx_guest", None, &ALL);
        let p = ConfigfsTsm::new(k.root(), "chrysalis");
        let err = p.evidence_blocking(&ReportData([3; 64])).unwrap_err();
        assert!(
            matches!(
                err,
                EvidenceError::Contended {
                    attempts: MAX_ATTEMPTS
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_provider_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("e");
        fs::create_dir(&entry).unwrap();
        fs::write(entry.join("provider"), "arm_cca_guest\n").unwrap();
        let err = ConfigfsTsm::new(dir.path(), "e")
            .evidence_blocking(&ReportData([0; 64]))
            .unwrap_err();
        assert!(err.to_string().contains("arm_cca_guest"), "{err}");
    }

    #[test]
    fn missing_interface_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = ConfigfsTsm::new(dir.path().join("absent"), "e");
        let err = p.evidence_blocking(&ReportData([0; 64])).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
