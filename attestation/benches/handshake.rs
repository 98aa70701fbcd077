//! Benchmarks a TLS 1.3 handshake with RA-TLS verification against a plain rustls handshake on
//! the same machine, both in memory (client and server connections pumping bytes through
//! buffers, no sockets), both with the ring provider, P-256 keys and session resumption off.
//!
//! - `ratls_first_contact`: a fresh verifier per handshake, so the certificate's simulated
//!   evidence (TDX quote + carried collateral) is verified in full every time;
//! - `ratls_cached`: one verifier for all handshakes: from the second on, the verdict cache
//!   answers (one SHA-256 of the certificate and a lookup);
//! - `plain`: an ordinary self-signed certificate that the client's webpki verifier trusts.
//!
//! Goal: cached RA-TLS ≤ 1.5× plain. `CHRYSALIS_BENCH_QUICK=1` for a short run.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chrysalis_attestation::policy::TdxPin;
use chrysalis_attestation::ratls::{self, AttestedKey, RaTlsServerVerifier};
use chrysalis_attestation::sim::{self, SimPki, SimTdReport};
use chrysalis_attestation::{Evidence, Measurement, Policy, TdxRegisters};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use support::{Op, Paired};

const MR_TD: Measurement = Measurement([0x42; 48]);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Moves every pending TLS record from `from` to `to` and lets `to` process them.
fn transfer(from: &mut Connection, to: &mut Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write_tls to a Vec");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls from a slice");
        to.process_new_packets().expect("handshake succeeds");
    }
}

/// One full TLS 1.3 handshake in memory.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, name: &ServerName<'static>) {
    let mut c = Connection::from(
        ClientConnection::new(client.clone(), name.clone()).expect("client connection"),
    );
    let mut s = Connection::from(ServerConnection::new(server.clone()).expect("server connection"));
    while c.is_handshaking() || s.is_handshaking() {
        transfer(&mut c, &mut s);
        transfer(&mut s, &mut c);
    }
}

/// Full handshakes only: no tickets, no session cache, on either side.
fn no_resumption_server(mut cfg: ServerConfig) -> Arc<ServerConfig> {
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(cfg)
}

fn no_resumption_client(mut cfg: ClientConfig) -> Arc<ClientConfig> {
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

struct RaTls {
    server: Arc<ServerConfig>,
    policy: Arc<Policy>,
    name: ServerName<'static>,
}

impl RaTls {
    fn new() -> Self {
        let pki = SimPki::from_seed(sim::DEFAULT_SEED);
        let key = AttestedKey::generate().expect("key");
        let rtmr = [
            Measurement::ZERO,
            Measurement([1; 48]),
            Measurement([2; 48]),
            Measurement::ZERO,
        ];
        let bundle = Evidence::tdx(
            pki.quote(&SimTdReport::new(
                sim::td_measurements(MR_TD, rtmr),
                key.report_data(),
            )),
            Some(
                pki.collateral(now() - 3600, 7 * 86_400)
                    .expect("sim collateral"),
            ),
        )
        .expect("evidence parses");
        let cert = ratls::issue_certificate(&key, &bundle, now() - 60, 6 * 3600).expect("issue");
        let server = no_resumption_server(ratls::server_config(Arc::new(
            rustls::sign::SingleCertAndKey::from(key.certified_key(cert).expect("certified key")),
        )));
        let registers = TdxRegisters { mr_td: MR_TD, rtmr };
        let pin = TdxPin {
            name: Some("bench".into()),
            ..TdxPin::from_registers(&registers, true)
        };
        let mut policy = Policy::pinned(vec![pin], vec![]);
        policy
            .trust
            .dangerous_simulated_intel_roots
            .push(pki.root_sha256());
        Self {
            server,
            policy: Arc::new(policy),
            name: ServerName::try_from("chrysalis.invalid").expect("name"),
        }
    }

    /// A client with an empty verdict cache.
    fn fresh_client(&self) -> Arc<ClientConfig> {
        no_resumption_client(ratls::client_config(Arc::new(RaTlsServerVerifier::new(
            self.policy.clone(),
        ))))
    }
}

struct Plain {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Plain {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        let cert: CertificateDer<'static> = cert.der().clone();
        let provider = ratls::provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server cert");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            server: no_resumption_server(server),
            client: no_resumption_client(client),
            name: ServerName::try_from("localhost").expect("name"),
        }
    }
}

fn main() {
    let mut c = support::criterion();
    let ra = RaTls::new();
    let plain = Plain::new();
    let cached = ra.fresh_client();
    // Fills the cache, and fails loudly here if the setup does not verify.
    handshake(&cached, &ra.server, &ra.name);
    handshake(&plain.client, &plain.server, &plain.name);
    {
        let mut g = c.benchmark_group("tls13_handshake_in_memory");
        g.bench_function("plain", |b| {
            b.iter(|| handshake(&plain.client, &plain.server, &plain.name))
        });
        g.bench_function("ratls_cached", |b| {
            b.iter(|| handshake(&cached, &ra.server, &ra.name))
        });
        g.bench_function("ratls_first_contact", |b| {
            b.iter_batched(
                || ra.fresh_client(),
                |client| handshake(black_box(&client), &ra.server, &ra.name),
                criterion::BatchSize::SmallInput,
            )
        });
        g.finish();
    }
    c.final_summary();

    let mut ops = [
        Op::new(|| handshake(&plain.client, &plain.server, &plain.name)),
        Op::new(|| handshake(&cached, &ra.server, &ra.name)),
        Op::with_setup(
            || ra.fresh_client(),
            |client| handshake(&client, &ra.server, &ra.name),
        ),
    ];
    let (rounds, per_round) = support::summary_rounds();
    let p = Paired::run(&mut ops, rounds, per_round);
    let ratio = p.cpu_ratio(1, 0);
    println!(
        "summary: TLS 1.3 handshake in memory, median of {rounds} interleaved rounds x \
         {per_round}, thread CPU time (wall): plain {} ({}), RA-TLS cached {} ({}), RA-TLS first \
         contact {} ({}); RA-TLS/plain cached {ratio:.2}x ({:.2}x) [goal <= 1.5x: {}], first \
         contact {:.2}x ({:.2}x); machine: {}",
        support::fmt(p.cpu(0)),
        support::fmt(p.wall(0)),
        support::fmt(p.cpu(1)),
        support::fmt(p.wall(1)),
        support::fmt(p.cpu(2)),
        support::fmt(p.wall(2)),
        p.wall_ratio(1, 0),
        if ratio <= 1.5 { "met" } else { "MISSED" },
        p.cpu_ratio(2, 0),
        p.wall_ratio(2, 0),
        support::machine(),
    );
    let runs = rounds * per_round as usize;
    support::record(serde_json::json!({
        "name": "RA-TLS handshake, verdict cached",
        "unit": "s", "value": p.cpu(1).as_secs_f64(), "wall": p.wall(1).as_secs_f64(),
        "baseline": "plain rustls TLS 1.3 handshake", "baseline_value": p.cpu(0).as_secs_f64(),
        "ratio": ratio, "goal": "<= 1.5x", "met": ratio <= 1.5, "runs": runs,
        "note": "in-memory handshake, thread CPU time",
    }));
    support::record(serde_json::json!({
        "name": "RA-TLS handshake, first contact (full evidence verification)",
        "unit": "s", "value": p.cpu(2).as_secs_f64(), "wall": p.wall(2).as_secs_f64(),
        "baseline": "plain rustls TLS 1.3 handshake", "baseline_value": p.cpu(0).as_secs_f64(),
        "ratio": p.cpu_ratio(2, 0), "runs": runs,
        "note": "in-memory handshake, thread CPU time",
    }));
}
