//! The Linux configfs-tsm report interface (`/sys/kernel/config/tsm/report`, Linux ≥ 6.7).
//!
//! One report entry is a directory: write 64 bytes of report_data to `inblob`, read the quote
//! (TDX) or report (SNP) from `outblob`, and the SNP certificate table from `auxblob` when the host
//! supplied one. `generation` counts writes to the entry, so reading it around the exchange tells
//! whether another writer raced us; then we try again.
//!
//! TDX quotes from the kernel carry no collateral; with [`ConfigfsTsm::with_collateral`] the
//! provider asks a [`CollateralSource`] (the host's collateral service) for it and embeds it,
//! or serves the bare quote and logs why (see [`super::collateral`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrysalis_attestation::{Platform, ReportData};

#[cfg(test)]
use super::collateral::usable_collateral;
use super::collateral::{CollateralSource, attach};
use super::{Evidence, EvidenceError, EvidenceProvider};

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
    collateral: Option<Arc<dyn CollateralSource>>,
}

impl ConfigfsTsm {
    /// Uses (creating when absent) the report entry `entry_name` under `root`.
    ///
    /// Tests pass a temporary directory as `root` and play the kernel's part.
    pub fn new(root: impl AsRef<Path>, entry_name: &str) -> Self {
        Self {
            entry: root.as_ref().join(entry_name),
            lock: Arc::new(Mutex::new(())),
            collateral: None,
        }
    }

    /// Also asks `source` for TDX collateral and embeds it next to each quote.
    pub fn with_collateral(mut self, source: Arc<dyn CollateralSource>) -> Self {
        self.collateral = Some(source);
        self
    }

    /// The entry directory this provider uses.
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    /// The blocking exchange; see the module documentation.
    pub fn evidence_blocking(&self, report_data: &ReportData) -> Result<Evidence, EvidenceError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match fs::create_dir(&self.entry) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&self.entry, e)),
        }
        exchange(&Configfs(&self.entry), report_data)
    }
}

/// The attribute files of one report entry. Production reads and writes configfs; the unit tests
/// substitute a model of the kernel, because no plain file computes its contents when read.
trait Attributes {
    fn path(&self, name: &str) -> PathBuf;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    fn write(&self, name: &str, data: &[u8]) -> io::Result<()>;
}

struct Configfs<'a>(&'a Path);

impl Attributes for Configfs<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }
    fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        // configfs takes the whole attribute in one write(2); std::fs::write issues exactly one.
        fs::write(self.path(name), data)
    }
}

fn exchange(attrs: &impl Attributes, report_data: &ReportData) -> Result<Evidence, EvidenceError> {
    let read = |name: &str| attrs.read(name).map_err(|e| io_err(&attrs.path(name), e));
    let generation = || -> Result<u64, EvidenceError> {
        let raw = read("generation")?;
        String::from_utf8_lossy(&raw).trim().parse().map_err(|e| {
            io_err(
                &attrs.path("generation"),
                io::Error::new(io::ErrorKind::InvalidData, format!("not a number: {e}")),
            )
        })
    };
    let provider = read("provider")?;
    let platform = match String::from_utf8_lossy(&provider).trim() {
        "tdx_guest" => Platform::Tdx,
        "sev_guest" => Platform::Snp,
        other => return Err(EvidenceError::UnknownProvider(other.to_owned())),
    };
    for _ in 0..MAX_ATTEMPTS {
        let before = generation()?;
        attrs
            .write("inblob", report_data.as_bytes())
            .map_err(|e| io_err(&attrs.path("inblob"), e))?;
        let written = generation()?;
        if written != before.wrapping_add(1) {
            tracing::debug!(
                before,
                written,
                "configfs-tsm: concurrent write before ours was read"
            );
            continue;
        }
        let evidence = read("outblob")?;
        let aux = match attrs.read("auxblob") {
            Ok(b) if !b.is_empty() => Some(b),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&attrs.path("auxblob"), e)),
        };
        let after = generation()?;
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
            Platform::Tdx => Evidence::tdx(evidence, None)?,
            Platform::Snp => {
                let (vcek, chain) = match aux {
                    Some(table) => snp_cert_table(&table)?,
                    None => (None, None),
                };
                Evidence::snp(evidence, vcek, chain)?
            }
        });
    }
    Err(EvidenceError::Contended {
        attempts: MAX_ATTEMPTS,
    })
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
        Box<dyn std::future::Future<Output = Result<Evidence, EvidenceError>> + Send + '_>,
    > {
        let this = self.clone();
        let entry = self.entry.clone();
        let source = self.collateral.clone();
        Box::pin(async move {
            let bundle = tokio::task::spawn_blocking(move || this.evidence_blocking(&report_data))
                .await
                .map_err(|e| io_err(&entry, io::Error::other(e.to_string())))??;
            Ok(match source {
                Some(source) => attach(bundle, source.as_ref()).await,
                None => bundle,
            })
        })
    }

    fn name(&self) -> &'static str {
        "configfs-tsm"
    }
}

#[cfg(test)]
mod tests {
    //! `Kernel` models a configfs-tsm entry: a write to `inblob` bumps `generation`, and `outblob`
    //! is computed when read. A race is another writer's inblob landing during an outblob read.
    use super::*;
    use chrysalis_attestation::Measurement;
    use chrysalis_attestation::sim::{
        DEFAULT_SEED, SimAmdPki, SimPki, SimSnpReport, SimTdReport, td_measurements,
    };
    use std::cell::RefCell;

    #[derive(Default)]
    struct Kernel {
        provider: &'static str,
        aux: Option<Vec<u8>>,
        /// The outblob read numbers (1-based) during which another writer rewrites inblob.
        race_on: &'static [u32],
        /// A recorded quote to return as outblob instead of the computed one.
        recorded: Option<Vec<u8>>,
        state: RefCell<State>,
    }

    #[derive(Default)]
    struct State {
        generation: u64,
        inblob: Vec<u8>,
        outblob_reads: u32,
    }

    impl Kernel {
        fn new(provider: &'static str, aux: Option<&[u8]>, race_on: &'static [u32]) -> Self {
            Self {
                provider,
                aux: aux.map(<[u8]>::to_vec),
                race_on,
                ..Self::default()
            }
        }
        fn outblob_reads(&self) -> u32 {
            self.state.borrow().outblob_reads
        }
    }

    impl Attributes for Kernel {
        fn path(&self, name: &str) -> PathBuf {
            Path::new("/model/chrysalis").join(name)
        }
        fn read(&self, name: &str) -> io::Result<Vec<u8>> {
            let mut s = self.state.borrow_mut();
            match name {
                "provider" => Ok(format!("{}\n", self.provider).into_bytes()),
                "generation" => Ok(format!("{}\n", s.generation).into_bytes()),
                "auxblob" => self.aux.clone().ok_or(io::ErrorKind::NotFound.into()),
                "outblob" => {
                    s.outblob_reads += 1;
                    if self.race_on.contains(&s.outblob_reads) {
                        s.inblob = vec![0xee; 64];
                        s.generation += 1;
                    }
                    if let Some(q) = &self.recorded {
                        return Ok(q.clone());
                    }
                    // What the TEE would sign: simulated evidence over the inblob.
                    let rd = ReportData::from_slice(&s.inblob).expect("64-byte inblob");
                    Ok(if self.provider == "sev_guest" {
                        SimAmdPki::from_seed(DEFAULT_SEED)
                            .report(&SimSnpReport::new(Measurement::ZERO, rd))
                    } else {
                        let m = td_measurements(Measurement::ZERO, [Measurement::ZERO; 4]);
                        SimPki::from_seed(DEFAULT_SEED).quote(&SimTdReport::new(m, rd))
                    })
                }
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
            assert_eq!(name, "inblob");
            let mut s = self.state.borrow_mut();
            s.inblob = data.to_vec();
            s.generation += 1;
            Ok(())
        }
    }

    #[test]
    fn tdx_exchange_returns_outblob_for_our_report_data() {
        let k = Kernel::new("tdx_guest", None, &[]);
        let rd = ReportData([0x42; 64]);
        let b = exchange(&k, &rd).unwrap();
        assert_eq!(b.platform(), Platform::Tdx);
        assert_eq!(b.report_data(), rd);
        assert!(matches!(
            b,
            Evidence::Tdx {
                collateral: None,
                ..
            }
        ));
        assert_eq!(k.outblob_reads(), 1);
    }

    use std::time::Duration;

    use chrysalis_attestation::Policy;
    use chrysalis_attestation::hostcall::Response;
    use chrysalis_attestation::policy::RejectReason;
    use chrysalis_attestation::verify::VerifyError;

    use crate::evidence::collateral::{HostCollateral, serve_one_tcp};
    use crate::evidence::sim::SimEndpoint;

    /// When dcap-qvl's recorded `tdx_quote` collateral is valid (2025-06-21).
    const SAMPLE_NOW: u64 = 1_750_500_000;

    fn recorded(name: &str) -> (Vec<u8>, dcap_qvl::QuoteCollateralV3) {
        let quote =
            chrysalis_testkit::fixtures::registry_file("dcap-qvl", &format!("sample/{name}"));
        let c = chrysalis_testkit::fixtures::registry_file(
            "dcap-qvl",
            &format!("sample/{name}_collateral.json"),
        );
        (quote, serde_json::from_slice(&c).unwrap())
    }

    /// A hardware TD's exchange, modelled with a recorded quote from real hardware.
    fn recorded_kernel_quote(quote: &[u8]) -> Evidence {
        let k = Kernel {
            recorded: Some(quote.to_vec()),
            ..Kernel::new("tdx_guest", None, &[])
        };
        let b = exchange(&k, &ReportData([0; 64])).unwrap();
        assert_eq!(
            (b.platform(), b.tdx_collateral().is_none()),
            (Platform::Tdx, true)
        );
        b
    }

    /// A loopback stand-in for the host's collateral service answering `answer` once.
    async fn fake_host(answer: Response) -> (HostCollateral, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            serve_one_tcp(l, answer).await.unwrap();
        });
        (
            HostCollateral::new(SimEndpoint::Tcp(addr), Duration::from_secs(5)),
            task,
        )
    }

    fn floor(n: u32) -> Policy {
        let mut p = Policy::dangerous_unpinned();
        p.collateral.min_tcb_evaluation_data_number = Some(n);
        p
    }

    #[tokio::test]
    async fn a_hardware_quote_carries_the_hosts_collateral_and_clients_verify_it() {
        let (quote, collateral) = recorded("tdx_quote");
        let bare = recorded_kernel_quote(&quote);
        // Without collateral, a client without its own source can only refuse.
        let err = floor(17).appraise(&bare, None, SAMPLE_NOW).unwrap_err();
        assert_eq!(
            err.reasons,
            vec![RejectReason::Verification(VerifyError::MissingCollateral)]
        );
        let (host, task) = fake_host(Response::Collateral {
            collateral: collateral.clone(),
        })
        .await;
        let b = attach(bare, &host).await;
        task.await.unwrap();
        assert_eq!(b.tdx_collateral(), Some(&collateral));
        assert_eq!(b.raw(), quote);
        // The client checks it against Intel's root and its freshness floor.
        let ok = floor(17).appraise(&b, None, SAMPLE_NOW).unwrap();
        assert_eq!(ok.verdict().tcb_evaluation_data_number, Some(17));
        let err = floor(18).appraise(&b, None, SAMPLE_NOW).unwrap_err();
        assert!(
            err.to_string()
                .contains("collateral.min_tcb_evaluation_data_number"),
            "{err}"
        );
        // Collateral a host tampered with fails verification, it is not believed.
        let mut bad = collateral.clone();
        bad.tcb_info = bad.tcb_info.replacen("UpToDate", "UpToDatE", 1);
        let (host, task) = fake_host(Response::Collateral { collateral: bad }).await;
        let b = attach(recorded_kernel_quote(&quote), &host).await;
        task.await.unwrap();
        assert!(b.tdx_collateral().is_some());
        assert!(matches!(
            floor(17)
                .appraise(&b, None, SAMPLE_NOW)
                .unwrap_err()
                .reasons[..],
            [RejectReason::Verification(VerifyError::Tdx(_))]
        ));
    }

    #[tokio::test]
    async fn without_usable_collateral_from_the_host_the_quote_is_served_bare() {
        let (quote, _) = recorded("tdx_quote");
        // The host has none.
        let (host, task) = fake_host(Response::Error {
            message: "no collateral available yet".into(),
        })
        .await;
        let parsed = chrysalis_attestation::TdxQuote::parse(&quote).unwrap();
        let e = usable_collateral(&parsed, &host).await.unwrap_err();
        assert!(e.to_string().contains("no collateral available yet"), "{e}");
        task.await.unwrap();
        // The host serves another platform's collateral (the outdated sample's FMSPC).
        let (_, foreign) = recorded("tdx_quote_outdated");
        let (host, task) = fake_host(Response::Collateral {
            collateral: foreign,
        })
        .await;
        let b = attach(recorded_kernel_quote(&quote), &host).await;
        task.await.unwrap();
        assert!(b.tdx_collateral().is_none());
        // The host does not answer at all.
        let dir = tempfile::tempdir().unwrap();
        let gone = HostCollateral::new(
            SimEndpoint::Unix(dir.path().join("none.sock")),
            Duration::from_secs(2),
        );
        let b = attach(recorded_kernel_quote(&quote), &gone).await;
        assert!(b.tdx_collateral().is_none());
        let e = usable_collateral(&parsed, &gone).await.unwrap_err();
        assert!(e.to_string().contains("none.sock"), "{e}");
    }

    #[test]
    fn snp_exchange_carries_auxblob_certs() {
        let table = cert_table(&[
            (GUID_VCEK, b"VCEK-DER"),
            (GUID_ASK, b"ASK"),
            (GUID_ARK, b"ARK"),
        ]);
        let k = Kernel::new("sev_guest", Some(&table), &[]);
        let b = exchange(&k, &ReportData([1; 64])).unwrap();
        assert_eq!(b.platform(), Platform::Snp);
        assert_eq!(b.report_data(), ReportData([1; 64]));
        let Evidence::Snp { vcek, chain, .. } = b else {
            panic!("not SNP evidence")
        };
        assert_eq!(vcek.as_deref(), Some(&b"VCEK-DER"[..]));
        assert_eq!(chain.as_deref(), Some(&b"ASKARK"[..]));
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
        let k = Kernel::new("tdx_guest", None, &[1]);
        let rd = ReportData([0x07; 64]);
        let b = exchange(&k, &rd).unwrap();
        // The first outblob carried the other writer's data; only the retry's is returned.
        assert_eq!(b.report_data(), rd);
        assert_eq!(k.outblob_reads(), 2);
    }

    #[test]
    fn a_writer_racing_every_attempt_gives_up_with_contended() {
        static ALL: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let k = Kernel::new("tdx_guest", None, &ALL);
        let err = exchange(&k, &ReportData([3; 64])).unwrap_err();
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
    fn an_outblob_that_is_no_quote_is_refused_naming_it() {
        let k = Kernel {
            recorded: Some(b"QUOTE".to_vec()),
            ..Kernel::new("tdx_guest", None, &[])
        };
        let err = exchange(&k, &ReportData([0; 64])).unwrap_err();
        assert!(matches!(err, EvidenceError::Unparseable(_)), "{err}");
        assert!(err.to_string().contains("TDX quote"), "{err}");
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
