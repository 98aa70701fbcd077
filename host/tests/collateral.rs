//! Collateral service tests with recorded Intel collateral (dcap-qvl's `sample/tdx_quote_collateral.json`,
//! located through `cargo metadata`): served from a file, and fetched from a local HTTPS PCCS double
//! that answers the PCS v4 endpoints with those recorded bytes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrysalis_attestation::hostcall::{self, Request, Response};
use chrysalis_host::collateral::{
    self, CollateralCache, CollateralError, PccsClient, PckCa, PcsError,
};
use chrysalis_host::metrics::Metrics;
use chrysalis_host::services::{Service, ServiceLimits, serve};
use chrysalis_host::transport::{HybridVsockTransport, Transport};
use dcap_qvl::QuoteCollateralV3;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// dcap-qvl's recorded TDX collateral, from the registry package cargo resolved.
fn sample_path() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dcap-qvl")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("dcap-qvl in the dependency graph");
    PathBuf::from(manifest)
        .parent()
        .unwrap()
        .join("sample/tdx_quote_collateral.json")
}

fn sample() -> QuoteCollateralV3 {
    serde_json::from_slice(&std::fs::read(sample_path()).unwrap()).unwrap()
}

#[tokio::test]
async fn recorded_collateral_is_served_to_the_guest_from_a_file() {
    let cache = Arc::new(CollateralCache::from_file(&sample_path()).unwrap());
    // The recorded TCB info has a nextUpdate the refresh logic can read.
    let next = collateral::next_update(&cache.current().unwrap()).unwrap();
    assert!(next > SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000));

    let dir = tempfile::tempdir().unwrap();
    let t = HybridVsockTransport::new(dir.path().join("v.sock"));
    let l = t.listen(hostcall::COLLATERAL_PORT).await.unwrap();
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        l,
        Service::Collateral(cache),
        ServiceLimits::default(),
        metrics.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    let mut s = tokio::net::UnixStream::connect(t.listener_path(hostcall::COLLATERAL_PORT))
        .await
        .unwrap();
    s.write_all(&hostcall::encode(&Request::Collateral).unwrap())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    match hostcall::decode::<Response>(&out).unwrap() {
        Response::Collateral { collateral } => assert_eq!(collateral, sample()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        metrics
            .service_requests
            .collateral
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    tx.send(()).unwrap();
    server.await.unwrap();
}

#[test]
fn a_missing_or_malformed_file_is_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.json");
    assert!(matches!(
        CollateralCache::from_file(&missing),
        Err(CollateralError::Read { .. })
    ));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"tcb_info\": 1}").unwrap();
    let e = CollateralCache::from_file(&bad).unwrap_err();
    assert!(e.to_string().contains("bad.json"), "{e}");
}

/// A PCCS double: HTTPS on loopback with a self-signed certificate for `localhost`, answering the
/// PCS v4 endpoints from recorded collateral.
struct FakePccs {
    url: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Path and query → (response headers, body).
type Routes = HashMap<String, (Vec<(&'static str, String)>, Vec<u8>)>;

fn pccs_routes(c: &QuoteCollateralV3) -> Routes {
    let enc = |s: &str| urlencoding::encode(s).into_owned();
    let mut r = HashMap::new();
    r.insert(
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der".to_string(),
        (
            vec![("SGX-PCK-CRL-Issuer-Chain", enc(&c.pck_crl_issuer_chain))],
            c.pck_crl.clone(),
        ),
    );
    r.insert(
        "/tdx/certification/v4/tcb?fmspc=00806F050000&update=standard".to_string(),
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
        "/tdx/certification/v4/qe/identity?update=standard".to_string(),
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
    // A PCCS returns the root CA CRL hex-encoded.
    r.insert(
        "/sgx/certification/v4/rootcacrl".to_string(),
        (vec![], hex::encode(&c.root_ca_crl).into_bytes()),
    );
    r
}

async fn fake_pccs(c: &QuoteCollateralV3) -> FakePccs {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca_file = dir.path().join("pccs-ca.pem");
    std::fs::write(&ca_file, key.cert.pem()).unwrap();
    let cert = key.cert.der().clone();
    let pkey = rustls_pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], pkey)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let routes = Arc::new(pccs_routes(c));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let routes = routes.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let routes = routes.clone();
                    async move {
                        let key = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("")
                            .to_string();
                        let mut resp = match routes.get(&key) {
                            Some((headers, body)) => {
                                let mut r =
                                    hyper::Response::new(Full::new(Bytes::from(body.clone())));
                                for (k, v) in headers {
                                    r.headers_mut().insert(*k, v.parse().unwrap());
                                }
                                r
                            }
                            None => hyper::Response::new(Full::new(Bytes::from_static(
                                b"no such endpoint",
                            ))),
                        };
                        if !routes.contains_key(&key) {
                            *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    FakePccs {
        url: format!("https://localhost:{port}"),
        ca_file,
        _dir: dir,
    }
}

#[tokio::test]
async fn collateral_is_fetched_from_a_pccs_byte_exact() {
    let want = sample();
    let pccs = fake_pccs(&want).await;
    let client = PccsClient::new(
        &format!("{}/sgx/certification/v4/", pccs.url),
        "00806f050000",
        PckCa::Processor,
        Some(&pccs.ca_file),
    )
    .unwrap();
    let got = client.fetch().await.unwrap();
    assert_eq!(got, want);

    // The refresh loop fills an empty cache and keeps it.
    let cache = Arc::new(CollateralCache::new());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let metrics = Arc::new(Metrics::default());
    let task = tokio::spawn(collateral::refresh_loop(
        client,
        cache.clone(),
        Duration::from_secs(3600),
        metrics.clone(),
        SystemTime::now,
        async move {
            let _ = rx.await;
        },
    ));
    let start = std::time::Instant::now();
    while cache.current().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "cache never filled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*cache.current().unwrap(), want);
    assert_eq!(
        metrics
            .collateral_refresh_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    tx.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn pccs_errors_are_reported_not_hidden() {
    let pccs = fake_pccs(&sample()).await;
    // An FMSPC the PCCS does not know: the TCB endpoint answers 404.
    let client = PccsClient::new(
        &pccs.url,
        "AAAAAAAAAAAA",
        PckCa::Processor,
        Some(&pccs.ca_file),
    )
    .unwrap();
    let e = client.fetch().await.unwrap_err();
    assert!(
        matches!(e, CollateralError::Pcs(PcsError::Status { status, .. }) if status == hyper::StatusCode::NOT_FOUND),
        "{e}"
    );
    // A server whose certificate the configured CA bundle does not vouch for.
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(other_ca.path(), other.cert.pem()).unwrap();
    let client = PccsClient::new(
        &pccs.url,
        "00806F050000",
        PckCa::Processor,
        Some(other_ca.path()),
    )
    .unwrap();
    let e = client.fetch().await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    // Bad settings are refused up front.
    assert!(matches!(
        PccsClient::new(&pccs.url, "00806F05", PckCa::Processor, Some(&pccs.ca_file)),
        Err(CollateralError::Setup(_))
    ));
}
