//! End to end under QEMU: the built cpu image booted by the host agent (sim profile), a client
//! policy derived from the image's manifest, `chrysalis proxy` in front of the host relay, and
//! chat completions answered by the real model inside the guest. Then what an attacker or a
//! failure does to that chain:
//!
//! * `chain_*` (profile sim, TDX evidence) and `snp_chain_*` (profile sim-snp, SEV-SNP evidence
//!   signed over the image's launch digest): the answer comes back with a verified receipt; the
//!   host relay (a recording forwarder in front of it) never sees the prompt's canary or the
//!   answer; a policy that does not name the sim root is refused before the prompt leaves; QEMU
//!   killed mid-stream ends the stream with an error, the agent restarts the VM, and the next
//!   request succeeds (that last part in `chain_*` only: it tests supervision, not evidence).
//! * `tampered_initramfs_*`: one changed initramfs byte (manifest rewritten to match): the guest
//!   boots, its quote carries another RTMR2, the proxy answers "measurement not pinned" and the
//!   guest serves nothing.
//! * `flipped_rootfs_*`: one flipped rootfs byte: dm-verity stops the boot, `/status` says
//!   failed, the client gets an error answer, not a hang.
//!
//! Needs the built image (`CHRYSALIS_IMAGE_DIR`, or out/cpu from `cargo xtask image build
//! --flavor cpu`), qemu-system-x86_64 and vhost-device-vsock (`cargo xtask setup`). Without them
//! each test prints why and passes, except under `CI=true`, where that is a failure. The tests
//! take turns (each boots VMs under TCG, which needs the whole machine); every wait is a hang
//! guard, not a speed assertion. Run with `--nocapture` to see how long each phase took.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use chrysalis_tests::chain::{
    self, AgentSpec, Boot, ChainError, Chat, Event, HostAgent, IMAGE_HINT, Image, Proxy, Recorder,
    SimPlatform, Tamper, Tools,
};
use serde_json::Value;

/// A TCG boot with the model load takes a minute or two on a quiet machine; this is a hang guard.
const BOOT_GUARD: Duration = Duration::from_secs(1200);
/// One completion of a few dozen tokens under TCG.
const ANSWER_GUARD: Duration = Duration::from_secs(600);

/// The tests take turns: each boots VMs that need every core.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The image and the chain's binaries, or None (after saying why) when a prerequisite is missing.
fn prerequisites() -> Option<(Image, Tools)> {
    let missing = (|| {
        let manifest =
            Image::find(&workspace()).ok_or_else(|| format!("no built image: set {IMAGE_HINT}"))?;
        let vhost = std::env::var("CHRYSALIS_VHOST_DEVICE_VSOCK")
            .unwrap_or_else(|_| "vhost-device-vsock".into());
        if let Some(p) = chain::missing_program(&["qemu-system-x86_64", &vhost]) {
            return Err(format!("{p} not found (cargo xtask setup installs it)"));
        }
        Ok(manifest)
    })();
    let manifest = match missing {
        Ok(m) => m,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and {why}"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    let image = Image::open(&manifest).unwrap();
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    let tools = TOOLS
        .get_or_init(|| Tools::build(&workspace(), false).unwrap())
        .clone();
    Some((image, tools))
}

/// Prints how long each phase took.
struct Phases {
    test: &'static str,
    start: Instant,
    phase: Instant,
}

impl Phases {
    fn new(test: &'static str) -> Phases {
        Phases {
            test,
            start: Instant::now(),
            phase: Instant::now(),
        }
    }

    fn done(&mut self, what: &str) {
        eprintln!(
            "e2e {}: {what}: {:.1} s",
            self.test,
            self.phase.elapsed().as_secs_f64()
        );
        self.phase = Instant::now();
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        eprintln!(
            "e2e {}: total {:.1} s",
            self.test,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn boot(agent: &mut HostAgent) -> Boot {
    agent
        .wait_boot(BOOT_GUARD, &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ready(agent: &mut HostAgent) -> Value {
    match boot(agent) {
        Boot::Ready(st) => st,
        Boot::Failed(st) => panic!("the VM failed: {st}\n{}", agent.logs()),
    }
}

/// No process left that mentions `dir` (the agent's config and state live there, so QEMU's and
/// vhost-device-vsock's command lines name it).
fn assert_nothing_left(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<i32>().is_ok())
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains(&needle) && chain::alive(pid)).then(|| format!("{pid}: {cmd}"))
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left running: {left:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn model(proxy: &Proxy) -> String {
    let models = proxy.models().unwrap();
    assert!(!models.is_empty(), "no models: {}", proxy.log_tail(20));
    models[0].clone()
}

#[test]
fn chain_answers_with_verified_receipts_hides_the_canary_refuses_an_unnamed_root_and_survives_a_killed_qemu()
 {
    main_chain(SimPlatform::Tdx);
}

/// The same chain with the agent in profile `sim-snp`: SEV-SNP evidence (simulated AMD PKI,
/// the image's launch digest) through the guest's provider, its certificate, the proxy and the
/// receipts, under a policy from `policy from-manifest --platform snp --dangerous-sim-root`
/// (parts 1 and 2 of the chain; the killed-QEMU part runs once, for TDX).
#[test]
fn snp_chain_answers_with_verified_receipts_hides_the_canary_and_refuses_an_unnamed_root() {
    main_chain(SimPlatform::Snp);
}

fn main_chain(platform: SimPlatform) {
    let _turn = turn();
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let mut t = Phases::new(match platform {
        SimPlatform::Tdx => "chain",
        SimPlatform::Snp => "chain (sim-snp)",
    });
    let dir = tempfile::tempdir().unwrap();
    let mut spec = match platform {
        SimPlatform::Tdx => AgentSpec::sim(&image.manifest_path),
        SimPlatform::Snp => AgentSpec::sim_snp(&image.manifest_path),
    };
    // A killed QEMU is a boot failure (its run is shorter than stable_after_secs): allow restarts.
    spec.max_restarts = 3;
    let mut agent = HostAgent::start(&tools.host, &spec, &dir.path().join("agent")).unwrap();
    let st = ready(&mut agent);
    t.done("boot to ready (TCG, model loaded)");
    eprintln!("sim quote: {} {}", st["sim_quote"], st["sim_snp"]);
    if platform == SimPlatform::Snp {
        assert_eq!(
            st["sim_snp"]["matches_manifest"], true,
            "the agent's launch digest differs from the manifest's: {st}"
        );
    }
    let relay = agent.relay_addr().unwrap();

    // The client's policy, from the manifest alone: pinned registers + the (named) sim root.
    let policy = dir.path().join("policy.toml");
    chain::derive_policy_for(
        &tools.chrysalis,
        &image.manifest_path,
        platform,
        true,
        &policy,
    )
    .unwrap();
    let v = chain::verify(&tools.chrysalis, &relay, &policy).unwrap();
    assert!(
        v.accepted,
        "chrysalis verify rejected the guest:\n{}",
        v.report
    );
    t.done("policy derived, chrysalis verify accepted");

    // 1. Through the proxy, over a recorder standing where the host relay's bytes pass.
    let recorder = Recorder::start(&relay).unwrap();
    let proxy = Proxy::start(
        &tools.chrysalis,
        &[recorder.addr()],
        &policy,
        &dir.path().join("proxy"),
    )
    .unwrap();
    let model = model(&proxy);
    let canary = "ZEBRA-CANARY-4471-QUOKKA";
    let chat = Chat {
        model: model.clone(),
        prompt: format!("Repeat exactly: {canary}"),
        // Generation under TCG is slow (seconds per token on a loaded 2-core machine).
        max_tokens: 8,
    };
    let reply = proxy.chat(&chat, ANSWER_GUARD).unwrap();
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, proxy.log_tail(30));
    let answer = reply.text().unwrap().to_owned();
    assert!(!answer.trim().is_empty(), "{}", reply.body);
    t.done("chat completion through the proxy");
    let stream = proxy
        .chat_stream(&chat, ANSWER_GUARD)
        .unwrap()
        .unwrap_or_else(|r| panic!("stream refused: {r:?}"));
    let (streamed, stream_usage) = stream.finish().unwrap();
    assert!(!streamed.trim().is_empty());
    t.done("streamed chat completion through the proxy");

    let records = proxy.records(2, Duration::from_secs(60)).unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert!(r.verified, "receipt failed: {r:?}");
        assert_eq!(r.model.as_deref(), Some(model.as_str()));
        assert_eq!(r.upstream, recorder.addr());
    }
    assert_eq!(
        serde_json::to_value(records[0].usage).unwrap(),
        reply.body["usage"]
    );
    assert_eq!(
        Some(serde_json::to_value(records[1].usage).unwrap()),
        stream_usage
    );
    eprintln!(
        "answer: {answer:?} (canary echoed: {})\nreceipt: {}",
        answer.contains(canary),
        serde_json::to_string(&records[0]).unwrap()
    );

    // Confidentiality: nothing of the prompt or the answer crossed the host in clear.
    let recorded = recorder.recorded();
    assert!(
        !recorded.is_empty(),
        "the proxy never went through the recorder"
    );
    let mut secrets: Vec<&str> = vec![canary, "chat/completions", &model, "Repeat exactly"];
    for text in [answer.trim(), streamed.trim()] {
        if text.len() >= 8 {
            secrets.push(text);
        }
    }
    for (i, c) in recorded.iter().enumerate() {
        assert!(!c.to_upstream.is_empty() && !c.from_upstream.is_empty());
        // Both directions are TLS from their first byte (handshake records).
        assert_eq!(
            c.to_upstream[0], 0x16,
            "connection {i} did not start with TLS"
        );
        assert_eq!(
            c.from_upstream[0], 0x16,
            "connection {i} did not answer with TLS"
        );
        for s in &secrets {
            assert!(
                !chain::contains(&c.to_upstream, s.as_bytes())
                    && !chain::contains(&c.from_upstream, s.as_bytes()),
                "{s:?} crossed the host relay in clear (connection {i})"
            );
        }
    }
    let bytes: usize = recorded
        .iter()
        .map(|c| c.to_upstream.len() + c.from_upstream.len())
        .sum();
    eprintln!(
        "recorded {} connection(s), {bytes} bytes through the relay: no canary, no plaintext",
        recorded.len()
    );
    t.done("receipts verified, relay bytes checked");

    // 2. A policy that pins the same measurements but does not name the sim root.
    let strict = dir.path().join("strict.toml");
    chain::derive_policy_for(
        &tools.chrysalis,
        &image.manifest_path,
        platform,
        false,
        &strict,
    )
    .unwrap();
    let sim_policy =
        chrysalis_attestation::Policy::from_toml(&std::fs::read_to_string(&policy).unwrap())
            .unwrap();
    let served_before = chain::guest_served(&relay, sim_policy.clone()).unwrap();
    let mut refusing = Proxy::start(
        &tools.chrysalis,
        &[&relay],
        &strict,
        &dir.path().join("strict-proxy"),
    )
    .unwrap();
    let refused = proxy_chat_refused(&refusing, &model, "ROOT-CANARY-0b9e");
    assert!(
        refused.contains("chains to an untrusted root"),
        "{refused}\n{}",
        refusing.log_tail(20)
    );
    assert_eq!(
        chain::guest_served(&relay, sim_policy.clone()).unwrap(),
        served_before,
        "the guest served a request through a refused connection"
    );
    refusing.stop();
    t.done("policy without the sim root refused");
    if platform == SimPlatform::Snp {
        // Step 3 (QEMU killed mid-stream, restart, a new certificate) tests the agent's
        // supervision, which does not depend on the evidence platform; under TCG it costs
        // minutes, so it runs once, in the TDX chain.
        let qemu = agent.status().unwrap()["vm"]["qemu_pid"]
            .as_i64()
            .expect("qemu_pid") as i32;
        drop(proxy);
        let status = agent.stop().expect("agent exit status");
        assert!(status.success(), "the agent exited with {status}");
        assert!(!chain::alive(qemu));
        assert_nothing_left(&dir.path().join("agent"));
        t.done("stopped, nothing left");
        return;
    }

    // 3. QEMU killed mid-stream.
    let st = agent.status().unwrap();
    let qemu = st["vm"]["qemu_pid"].as_i64().expect("qemu_pid") as i32;
    let long = Chat {
        model: model.clone(),
        prompt: "Tell a long story.".into(),
        max_tokens: 400,
    };
    let mut stream = proxy
        .chat_stream(&long, ANSWER_GUARD)
        .unwrap()
        .unwrap_or_else(|r| panic!("stream refused: {r:?}"));
    let first = stream.next_event().unwrap();
    assert!(matches!(first, Event::Chunk(_)), "{first:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let end = loop {
        match stream.next_event() {
            Ok(Event::Chunk(_)) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(120),
                    "chunks keep coming after QEMU was killed"
                );
            }
            Ok(Event::Done) => panic!(
                "the stream completed although QEMU was killed after its first chunk: {:?}",
                stream.text()
            ),
            Err(e) => break e,
        }
    };
    let error_after = killed.elapsed();
    assert!(matches!(end, ChainError::StreamBroken { .. }), "{end}");
    eprintln!(
        "QEMU {qemu} killed: the client's stream failed {:.2} s later ({end})",
        error_after.as_secs_f64()
    );
    // The proxy records the broken stream as a failed (incomplete) receipt: no bill for it.
    let records = proxy.records(3, Duration::from_secs(60)).unwrap();
    let broken = &records[2];
    assert!(
        broken.stream && !broken.verified && broken.usage.is_none(),
        "{broken:?}"
    );
    assert!(
        broken
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("incomplete")),
        "{broken:?}"
    );
    t.done("QEMU killed mid-stream, client error");
    let st = agent
        .wait_for(
            "the VM to be restarted and ready",
            BOOT_GUARD,
            |st| {
                (st["vm"]["restarts"].as_u64() >= Some(1) && st["vm"]["ready"] == true)
                    .then(|| st.clone())
            },
            &mut |_| {},
        )
        .unwrap();
    assert_ne!(st["vm"]["qemu_pid"].as_i64(), Some(i64::from(qemu)));
    t.done("agent restarted the VM, ready again");
    let again = proxy.chat(&chat, ANSWER_GUARD).unwrap();
    assert_eq!(again.status, 200, "{}\n{}", again.body, proxy.log_tail(30));
    let records = proxy.records(4, Duration::from_secs(60)).unwrap();
    let last = &records[3];
    assert!(last.verified && !last.stream, "{last:?}");
    assert_ne!(
        last.cert_sha256, records[0].cert_sha256,
        "the restarted guest has a new key and certificate"
    );
    t.done("next request after the restart");

    drop(proxy);
    let status = agent.stop().expect("agent exit status");
    assert!(status.success(), "the agent exited with {status}");
    assert!(!chain::alive(qemu));
    assert_nothing_left(&dir.path().join("agent"));
    t.done("stopped, nothing left");
}

/// Sends a chat with `canary` through `proxy` (normal and streamed), expects a 502 attestation
/// error for both, and returns the message.
fn proxy_chat_refused(proxy: &Proxy, model: &str, canary: &str) -> String {
    let chat = Chat {
        model: model.to_owned(),
        prompt: canary.to_owned(),
        max_tokens: 4,
    };
    let reply = proxy.chat(&chat, ANSWER_GUARD).unwrap();
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(
        reply.body["error"]["type"], "chrysalis_attestation_error",
        "{}",
        reply.body
    );
    let streamed = proxy
        .chat_stream(&chat, ANSWER_GUARD)
        .unwrap()
        .expect_err("a stream through a refusing proxy");
    assert_eq!(streamed.status, 502, "{}", streamed.body);
    let msg = reply.error_message().unwrap_or_default().to_owned();
    eprintln!("proxy refused: {msg}");
    msg
}

#[test]
fn tampered_initramfs_boots_but_the_proxy_refuses_it_as_not_pinned_and_the_guest_serves_nothing() {
    let _turn = turn();
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let mut t = Phases::new("tampered initramfs");
    let dir = tempfile::tempdir().unwrap();
    let tampered = image
        .tampered_copy(&dir.path().join("image"), Tamper::InitramfsGzipOs)
        .unwrap();
    assert_ne!(
        tampered.manifest.artifacts.initramfs.sha256,
        image.manifest.artifacts.initramfs.sha256
    );
    let mut agent = HostAgent::start(
        &tools.host,
        &AgentSpec::sim(&tampered.manifest_path),
        &dir.path().join("agent"),
    )
    .unwrap();
    let st = ready(&mut agent);
    t.done("tampered image booted to ready");
    let relay = agent.relay_addr().unwrap();

    // The client pins what the genuine manifest says.
    let policy = dir.path().join("policy.toml");
    chain::derive_policy(&tools.chrysalis, &image.manifest_path, true, &policy).unwrap();
    let genuine =
        chrysalis_attestation::Policy::from_toml(&std::fs::read_to_string(&policy).unwrap())
            .unwrap();
    let quoted_rtmr2: chrysalis_attestation::Measurement =
        serde_json::from_value(st["sim_quote"]["rtmr"][2].clone()).unwrap();
    let pinned_rtmr2 = genuine.tdx[0].rtmr2.expect("the policy pins RTMR2");
    assert_ne!(
        quoted_rtmr2, pinned_rtmr2,
        "RTMR2 must change with the initrd"
    );
    assert_eq!(
        Some(serde_json::from_value(st["sim_quote"]["rtmr"][1].clone()).unwrap()),
        genuine.tdx[0].rtmr1,
        "the kernel is unchanged, so RTMR1 still matches"
    );
    eprintln!("RTMR2 quoted {quoted_rtmr2}, pinned {pinned_rtmr2}");

    let proxy = Proxy::start(
        &tools.chrysalis,
        &[&relay],
        &policy,
        &dir.path().join("proxy"),
    )
    .unwrap();
    let msg = proxy_chat_refused(&proxy, "smollm2-135m-instruct", "TAMPER-CANARY-92c1");
    assert!(msg.contains("measurement not pinned"), "{msg}");
    t.done("proxy refused: measurement not pinned");

    // The guest itself (reached with a policy made from what it quotes) served nothing.
    let seen = chain::policy_from_status(&st).unwrap();
    assert_eq!(chain::guest_served(&relay, seen).unwrap(), 0);
    t.done("guest served nothing");
    drop(proxy);
    agent.stop();
    assert_nothing_left(&dir.path().join("agent"));
}

#[test]
fn flipped_rootfs_byte_stops_the_boot_the_agent_reports_failed_and_the_client_gets_an_error() {
    let _turn = turn();
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let mut t = Phases::new("flipped rootfs");
    let dir = tempfile::tempdir().unwrap();
    let flipped = image
        .tampered_copy(&dir.path().join("image"), Tamper::RootfsByte)
        .unwrap();
    let mut agent = HostAgent::start(
        &tools.host,
        &AgentSpec::sim(&flipped.manifest_path),
        &dir.path().join("agent"),
    )
    .unwrap();
    let st = match boot(&mut agent) {
        Boot::Failed(st) => st,
        Boot::Ready(st) => panic!("a flipped rootfs byte booted: {st}\n{}", agent.logs()),
    };
    eprintln!("vm: {}", st["vm"]);
    let serial = std::fs::read_to_string(agent.serial_log()).unwrap_or_default();
    assert!(
        serial.contains("FATAL") && serial.contains("verity"),
        "{}",
        agent.logs()
    );
    t.done("boot stopped by dm-verity, /status failed");

    let relay = agent.relay_addr().unwrap();
    let policy = dir.path().join("policy.toml");
    chain::derive_policy(&tools.chrysalis, &image.manifest_path, true, &policy).unwrap();
    let proxy = Proxy::start(
        &tools.chrysalis,
        &[&relay],
        &policy,
        &dir.path().join("proxy"),
    )
    .unwrap();
    let chat = Chat {
        model: "smollm2-135m-instruct".into(),
        prompt: "hello".into(),
        max_tokens: 4,
    };
    let reply = proxy.chat(&chat, Duration::from_secs(120)).unwrap();
    eprintln!(
        "client got {} after {:.2} s: {}",
        reply.status,
        reply.elapsed.as_secs_f64(),
        reply.body
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.body["error"]["type"], "chrysalis_upstream_unavailable",
        "{}",
        reply.body
    );
    t.done("client error");
    drop(proxy);
    agent.stop();
    assert_nothing_left(&dir.path().join("agent"));
}
