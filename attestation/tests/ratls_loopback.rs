//! RA-TLS handshakes over loopback with rustls: sim evidence accepted under a policy naming the
//! sim root; rejected, with the reason surfaced, for a wrong pin, foreign evidence and expiry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chrysalis_attestation::policy::TdxPin;
use chrysalis_attestation::ratls::{self, AttestedKey, RaTlsServerVerifier};
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
use chrysalis_attestation::{Evidence, Measurement, Policy};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const MR_TD: Measurement = Measurement([0x42; 48]);

fn bundle_for(pki: &SimPki, key: &AttestedKey) -> Evidence {
    let m = td_measurements(
        MR_TD,
        [
            Measurement::ZERO,
            Measurement([1; 48]),
            Measurement([2; 48]),
            Measurement::ZERO,
        ],
    );
    Evidence::tdx(
        pki.quote(&SimTdReport::new(m, key.report_data())),
        Some(pki.collateral(now() - 3600, 7 * 86_400).unwrap()),
    )
    .unwrap()
}

fn policy(pki: &SimPki, mr_td: Measurement) -> Arc<Policy> {
    let pin = TdxPin {
        name: Some("sim cpu".into()),
        rtmr1: Some(Measurement([1; 48])),
        rtmr2: Some(Measurement([2; 48])),
        rtmr3: Some(Measurement::ZERO),
        ..TdxPin::new(mr_td)
    };
    let mut p = Policy::pinned(vec![pin], vec![]);
    p.trust
        .dangerous_simulated_intel_roots
        .push(pki.root_sha256());
    Arc::new(p)
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);
impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Serves one connection with `cert` for `key` (echoing one line) and returns the client's
/// handshake result.
async fn handshake(
    key: &AttestedKey,
    cert: CertificateDer<'static>,
    verifier: Arc<RaTlsServerVerifier>,
) -> std::io::Result<Vec<u8>> {
    let server = ratls::server_config(Arc::new(Fixed(key.certified_key(cert).unwrap())));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = acceptor.accept(tcp).await {
            let mut buf = [0u8; 5];
            if tls.read_exact(&mut buf).await.is_ok() {
                let _ = tls.write_all(&buf).await;
                let _ = tls.shutdown().await;
            }
        }
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ratls::client_config(verifier)));
    let tcp = TcpStream::connect(addr).await?;
    let result = async {
        let mut tls = connector
            .connect(ServerName::try_from("chrysalis.invalid").unwrap(), tcp)
            .await?;
        tls.write_all(b"hello").await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(out)
    }
    .await;
    srv.abort();
    result
}

#[tokio::test]
async fn handshake_succeeds_with_sim_evidence_and_matching_policy() {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let cert = ratls::issue_certificate(&key, &bundle_for(&pki, &key), now() - 60, 3600).unwrap();
    let verifier = Arc::new(RaTlsServerVerifier::new(policy(&pki, MR_TD)));
    assert_eq!(
        handshake(&key, cert.clone(), verifier.clone())
            .await
            .unwrap(),
        b"hello"
    );
    let peer = verifier
        .verified_peer(&cert)
        .expect("accepted peer is recorded");
    assert_eq!(peer.evidence().matched_pin(), Some("sim cpu"));
    assert_eq!(peer.spki_der(), key.spki_der());
}

async fn expect_rejected(
    key: &AttestedKey,
    cert: CertificateDer<'static>,
    policy: Arc<Policy>,
    needle: &str,
) {
    let verifier = Arc::new(RaTlsServerVerifier::new(policy));
    let err = handshake(key, cert, verifier.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "handshake error does not name {needle:?}: {err}"
    );
    let rejection = verifier.last_rejection().expect("rejection recorded");
    assert!(rejection.to_string().contains(needle), "{rejection}");
}

#[tokio::test]
async fn unpinned_measurement_is_rejected_with_the_reason() {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let cert = ratls::issue_certificate(&key, &bundle_for(&pki, &key), now() - 60, 3600).unwrap();
    expect_rejected(
        &key,
        cert,
        policy(&pki, Measurement([0x43; 48])),
        "measurement not pinned",
    )
    .await;
}

#[tokio::test]
async fn evidence_made_for_another_key_is_rejected() {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let victim = AttestedKey::generate().unwrap();
    // A host that replays a genuine node's evidence in a certificate for its own key. The
    // honest issuer refuses this, so build the certificate with rcgen directly.
    let genuine =
        ratls::issue_certificate(&victim, &bundle_for(&pki, &victim), now() - 60, 3600).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&genuine).unwrap();
    let ext = parsed
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.35")
        .unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["chrysalis.invalid".into()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp((now() - 60) as i64).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp((now() + 3600) as i64).unwrap();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            ratls::CMW_EXTENSION_OID,
            ext.value.to_vec(),
        ));
    let forged_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = params.self_signed(&forged_key).unwrap();
    // Serve it with the forger's key so the handshake itself is sound.
    let pkcs8 = rustls::pki_types::PrivateKeyDer::Pkcs8(forged_key.serialize_der().into());
    let signer = ratls::provider()
        .key_provider
        .load_private_key(pkcs8)
        .unwrap();
    let ck = Arc::new(rustls::sign::CertifiedKey::new(
        vec![forged.der().clone()],
        signer,
    ));
    let verifier = Arc::new(RaTlsServerVerifier::new(policy(&pki, MR_TD)));
    let server = ratls::server_config(Arc::new(Fixed(ck)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(ratls::client_config(verifier.clone())));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = connector
        .connect(ServerName::try_from("x").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not bound to this key"), "{err}");
    let _ = key;
}

#[tokio::test]
async fn expired_certificate_is_rejected() {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let cert = ratls::issue_certificate(&key, &bundle_for(&pki, &key), now() - 7200, 3600).unwrap();
    expect_rejected(&key, cert, policy(&pki, MR_TD), "expired").await;
}

#[tokio::test]
async fn default_policy_refuses_the_sim_root() {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let cert = ratls::issue_certificate(&key, &bundle_for(&pki, &key), now() - 60, 3600).unwrap();
    let strict = Arc::new(Policy::pinned(policy(&pki, MR_TD).tdx.clone(), vec![]));
    expect_rejected(&key, cert, strict, "untrusted root").await;
}
