//! A minimal RA-TLS server with simulated evidence on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use chrysalis_attestation::ratls::{self, AttestedKey};
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
use chrysalis_attestation::{Evidence, Measurement, Sha256};
use tokio::io::AsyncWriteExt;

use crate::now;

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

/// An RA-TLS server whose sim evidence reports `mr_td`, `rtmr[1] = [1;48]`; it answers every
/// connection with a fixed HTTP response. Runs on its own thread until the process ends.
pub fn spawn_sim_server(mr_td: Measurement) -> (SocketAddr, Sha256) {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let key = AttestedKey::generate().unwrap();
    let m = td_measurements(
        mr_td,
        [
            Measurement::ZERO,
            Measurement([1; 48]),
            Measurement::ZERO,
            Measurement::ZERO,
        ],
    );
    let bundle = Evidence::tdx(
        pki.quote(&SimTdReport::new(m, key.report_data())),
        Some(pki.collateral(now() - 3600, 86_400).unwrap()),
    )
    .unwrap();
    let cert = ratls::issue_certificate(&key, &bundle, now() - 60, 3600).unwrap();
    let config = ratls::server_config(Arc::new(Fixed(key.certified_key(cert).unwrap())));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
    });
    (addr, pki.root_sha256())
}
