//! The client's own TDX collateral: fetched from a loopback fake PCCS (PCS API v4) for nodes
//! that carry none, through `chrysalis proxy` with simulated evidence, and for a recorded
//! hardware quote with its recorded collateral, judged by the freshness rules.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chrysalis_attestation::collateral::CollateralKey;
use chrysalis_attestation::pcs::PcsClient;
use chrysalis_attestation::policy::RejectReason;
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
use chrysalis_attestation::{Evidence, Measurement, Policy, ReportData};
use chrysalis_client::collateral::CollateralFetcher;
use chrysalis_testkit::fixtures;
use common::upstream::{FakeUpstream, Options};
use common::{ProxyProcess, now, plain_client, sim_policy_toml};
use dcap_qvl::QuoteCollateralV3;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const PINNED: Measurement = Measurement([0x5a; 48]);
/// When dcap-qvl's recorded `tdx_quote` collateral is valid (2025-06-21).
const SAMPLE_NOW: u64 = 1_750_500_000;

/// A plain-HTTP PCCS on loopback answering the PCS v4 routes for one platform from `c`, and
/// counting the requests it served.
struct FakePccs {
    url: String,
    hits: Arc<AtomicUsize>,
}

/// Path and query → (response headers, body).
type Routes = HashMap<String, (Vec<(&'static str, String)>, Vec<u8>)>;

fn routes(c: &QuoteCollateralV3, key: &CollateralKey) -> Routes {
    // Percent-encode everything but alphanumerics, as PCCS headers carry PEM chains.
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let mut r = HashMap::new();
    r.insert(
        format!(
            "/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            key.ca.as_str()
        ),
        (
            vec![("SGX-PCK-CRL-Issuer-Chain", enc(&c.pck_crl_issuer_chain))],
            c.pck_crl.clone(),
        ),
    );
    r.insert(
        format!(
            "/tdx/certification/v4/tcb?fmspc={}&update=standard",
            key.fmspc_hex()
        ),
        (
            vec![("TCB-Info-Issuer-Chain", enc(&c.tcb_info_issuer_chain))],
            format!(
                "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            )
            .into_bytes(),
        ),
    );
    r.insert(
        "/tdx/certification/v4/qe/identity?update=standard".into(),
        (
            vec![(
                "SGX-Enclave-Identity-Issuer-Chain",
                enc(&c.qe_identity_issuer_chain),
            )],
            format!(
                "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            )
            .into_bytes(),
        ),
    );
    r.insert(
        "/sgx/certification/v4/rootcacrl".into(),
        (vec![], hex::encode(&c.root_ca_crl).into_bytes()),
    );
    r
}

async fn fake_pccs(c: &QuoteCollateralV3, key: &CollateralKey) -> FakePccs {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let routes = Arc::new(routes(c, key));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (routes, hits) = (routes.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (routes, hits) = (routes.clone(), hits.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let path = req.uri().path_and_query().map_or("", |p| p.as_str());
                        let resp = match routes.get(path) {
                            Some((headers, body)) => {
                                let mut r =
                                    hyper::Response::new(Full::new(Bytes::from(body.clone())));
                                for (k, v) in headers {
                                    r.headers_mut().insert(*k, v.parse().unwrap());
                                }
                                r
                            }
                            None => {
                                let mut r =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"no")));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    FakePccs {
        url: format!("http://127.0.0.1:{port}"),
        hits,
    }
}

/// The simulated platform's key and collateral, as the fake upstream's quotes need them.
fn sim_platform() -> (CollateralKey, QuoteCollateralV3) {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let quote = pki.quote(&SimTdReport::new(
        td_measurements(PINNED, [Measurement::ZERO; 4]),
        ReportData::ZERO,
    ));
    let key = CollateralKey::of_quote(&quote).unwrap();
    (key, pki.collateral(now() - 3600, 86_400).unwrap())
}

async fn get_models(proxy: &ProxyProcess) -> (hyper::StatusCode, String) {
    let resp = plain_client()
        .get(proxy.url("/v1/models").parse().unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_fetches_collateral_for_a_node_that_carries_none() {
    let up = FakeUpstream::start(Options {
        without_collateral: true,
        ..Options::new(PINNED)
    });
    let (key, collateral) = sim_platform();
    let pccs = fake_pccs(&collateral, &key).await;

    // Without a collateral source the node cannot be verified, and the error says so.
    let plain = ProxyProcess::start(&[up.addr], &sim_policy_toml(up.root, PINNED));
    let (status, body) = get_models(&plain).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no collateral"), "{body}");
    drop(plain);

    // With the policy naming the PCCS: fetched once (4 GETs), then reused from memory.
    let policy = format!(
        "{}[collateral]\npccs_url = \"{}\"\n",
        sim_policy_toml(up.root, PINNED),
        pccs.url
    );
    let proxy = ProxyProcess::start(&[up.addr], &policy);
    let (status, body) = get_models(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    assert_eq!(pccs.hits.load(Ordering::SeqCst), 4);
    let (status, _) = get_models(&proxy).await;
    assert_eq!(status, 200);
    drop(proxy);

    // --pccs-url does the same for a policy without the section.
    let proxy = ProxyProcess::start_with(
        &[up.addr],
        &sim_policy_toml(up.root, PINNED),
        &["--pccs-url", &pccs.url],
    );
    let (status, body) = get_models(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    assert_eq!(pccs.hits.load(Ordering::SeqCst), 8);
}

/// `chrysalis verify URL --policy FILE [extra...]`, run off the async runtime.
async fn verify_cli(addr: std::net::SocketAddr, policy: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, policy).unwrap();
    let mut args = vec![
        "verify".to_owned(),
        format!("https://{addr}"),
        "--policy".into(),
        p.to_str().unwrap().into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chrysalis"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chrysalis_verify_fetches_collateral_for_a_node_that_carries_none() {
    let up = FakeUpstream::start(Options {
        without_collateral: true,
        ..Options::new(PINNED)
    });
    let (key, collateral) = sim_platform();
    let pccs = fake_pccs(&collateral, &key).await;

    let (code, out) = verify_cli(up.addr, &sim_policy_toml(up.root, PINNED), &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no collateral"), "{out}");

    // The policy's [collateral] pccs_url: fetched, accepted, and the explanation uses it too.
    let policy = format!(
        "{}[collateral]\npccs_url = \"{}\"\n",
        sim_policy_toml(up.root, PINNED),
        pccs.url
    );
    let (code, out) = verify_cli(up.addr, &policy, &[]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(v["tcb_status"], "UpToDate", "{v}");
    assert_eq!(v["evidence_error"], serde_json::Value::Null, "{v}");
    assert_eq!(pccs.hits.load(Ordering::SeqCst), 4);

    // --pccs-url with a cache directory: fetched once, then read from disk by the next run.
    let cache = tempfile::tempdir().unwrap();
    let flags = ["--pccs-url", pccs.url.as_str(), "--collateral-cache"];
    let mut args: Vec<&str> = flags.to_vec();
    args.push(cache.path().to_str().unwrap());
    let plain = sim_policy_toml(up.root, PINNED);
    let (code, out) = verify_cli(up.addr, &plain, &args).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(pccs.hits.load(Ordering::SeqCst), 8);
    let (code, out) = verify_cli(up.addr, &plain, &args).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        pccs.hits.load(Ordering::SeqCst),
        8,
        "the second run read the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_own_uses_the_pccs_even_when_the_node_carries_collateral() {
    let up = FakeUpstream::start(Options::new(PINNED));
    let (key, collateral) = sim_platform();
    let pccs = fake_pccs(&collateral, &key).await;
    let policy = format!(
        "{}[collateral]\npccs_url = \"{}\"\nprefer_own = true\n",
        sim_policy_toml(up.root, PINNED),
        pccs.url
    );
    let proxy = ProxyProcess::start(&[up.addr], &policy);
    let (status, body) = get_models(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    assert_eq!(pccs.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_hardware_collateral_is_fetched_cached_and_judged_for_freshness() {
    let quote = fixtures::registry_file("dcap-qvl", "sample/tdx_quote");
    let recorded: QuoteCollateralV3 = serde_json::from_slice(&fixtures::registry_file(
        "dcap-qvl",
        "sample/tdx_quote_collateral.json",
    ))
    .unwrap();
    let key = CollateralKey::of_quote(&quote).unwrap();
    assert_eq!(key.fmspc_hex(), "B0C06F000000");
    let pccs = fake_pccs(&recorded, &key).await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher =
        CollateralFetcher::new(PcsClient::new(&pccs.url, None).unwrap()).cache_dir(cache.path());
    fetcher.store().note_missing(key);
    assert_eq!(fetcher.fill_missing(SAMPLE_NOW).await.unwrap(), 1);
    // Byte-exact: the signed TCB info and QE identity are kept as served.
    let got = fetcher.store().get(&key, SAMPLE_NOW).unwrap();
    assert_eq!(*got, recorded);
    // Not used past its nextUpdate (2025-07-19).
    assert!(
        fetcher
            .store()
            .get(&key, SAMPLE_NOW + 40 * 86_400)
            .is_none()
    );

    // The fetched collateral verifies the bare quote against Intel's root; the freshness floor
    // decides: accepted at the recording's number, refused above it and by the default.
    let bare = Evidence::tdx(quote, None).unwrap();
    let mut p = Policy::dangerous_unpinned();
    p.collateral.min_tcb_evaluation_data_number = Some(17);
    let ok = p.appraise(&bare, Some(&got), SAMPLE_NOW).unwrap();
    assert_eq!(ok.verdict().tcb_evaluation_data_number, Some(17));
    for p in [
        {
            let mut p = p.clone();
            p.collateral.min_tcb_evaluation_data_number = Some(18);
            p
        },
        Policy::dangerous_unpinned(),
    ] {
        let err = p.appraise(&bare, Some(&got), SAMPLE_NOW).unwrap_err();
        assert!(
            matches!(
                err.reasons[..],
                [RejectReason::TcbEvaluationDataNumber {
                    found: Some(17),
                    ..
                }]
            ),
            "{err}"
        );
    }

    // A second fetcher (a restarted proxy) with the PCCS unreachable fills from the disk cache.
    let offline = CollateralFetcher::new(PcsClient::new("http://127.0.0.1:9", None).unwrap())
        .cache_dir(cache.path());
    offline.store().note_missing(key);
    assert_eq!(offline.fill_missing(SAMPLE_NOW).await.unwrap(), 1);
    assert_eq!(*offline.store().get(&key, SAMPLE_NOW).unwrap(), recorded);
    // Expired on disk: refetched, which fails here, and the error names the request.
    offline.store().note_missing(key);
    let e = offline
        .fill_missing(SAMPLE_NOW + 40 * 86_400)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    let hits = pccs.hits.load(Ordering::SeqCst);
    assert_eq!(hits, 4);
}
