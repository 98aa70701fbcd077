//! Test support shared by the tests and benchmarks of every chrysalis crate (dev-only, never
//! published, never in a production build).
//!
//! * [`fixtures`]: recorded vectors located in registry packages with `cargo metadata`, and
//!   synthetic firmware and EFI images.
//! * [`image`]: a small well-formed image directory (host launch checks, sim measurements).
//! * [`measure_image`]: an image directory for the measurement CLI tests and benchmark.
//! * [`hybrid`]: a fake guest behind a hybrid-vsock Unix socket.
//! * [`upstream`]: a fake attested OpenAI-compatible node (sim evidence, signed receipts).
//! * [`ratls`]: a minimal RA-TLS server with sim evidence on loopback.
//! * [`http`]: a plain HTTP/1.1 client for talking to the proxy.
//! * [`policy`]: policies naming the simulated roots.
//! * [`guest`]: the real guest runtime as a process, with a stand-in sim quote service.
//! * [`verifier`]: a certificate verifier that accepts and records what it saw.
//! * [`fuzz`]: the fixed inputs and seeds of the fuzz targets (fuzz/).
//! * [`bench_figure`]: appends one benchmark figure for `cargo xtask bench`.

pub mod bench_figure;
pub mod fixtures;
pub mod fuzz;
pub mod guest;
pub mod http;
pub mod hybrid;
pub mod image;
pub mod measure_image;
pub mod policy;
pub mod ratls;
pub mod upstream;
pub mod verifier;

pub use verifier::RecordingVerifier;

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Writes `text` to `path` as an executable (mode 755) that a test may run at once.
///
/// A child forked by another test thread inherits every descriptor open at that instant until it
/// execs; if one of them is a write descriptor on this file, running the file fails with
/// ETXTBSY ("Text file busy"). So the file is written by a short-lived `sh`, and this process
/// never holds a write descriptor on it.
pub fn write_executable(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn /bin/sh");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write the script to sh");
    let status = child.wait().expect("wait for sh");
    assert!(
        status.success(),
        "writing {} failed: {status}",
        path.display()
    );
}
