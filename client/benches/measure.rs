//! Wall time of `chrysalis measure` (the release binary, run as a user runs it) on an image of
//! realistic size; the budget is 1 s for the cpu image.
//!
//! `cargo bench -p chrysalis-client --bench measure`. The image is built in a temporary
//! directory: kernel `CHRYSALIS_BENCH_KERNEL` (a bzImage; default a 12 MiB PE32+ EFI image, the
//! size of Debian trixie's 6.12 kernel), initramfs `CHRYSALIS_BENCH_INITRD` (default 64 MiB of
//! pseudo-random bytes), TDVF `CHRYSALIS_BENCH_TDVF` (default the sev crate's recorded
//! OvmfPkgX64 suffix padded to 4 MiB), SNP firmware `CHRYSALIS_BENCH_SNP_OVMF` (default its
//! recorded AmdSev suffix). `CHRYSALIS_BENCH_ROUNDS` (default 5) runs per case;
//! figures are min and median.

use std::process::Command;
use std::time::{Duration, Instant};

use chrysalis_testkit::bench_figure;
use chrysalis_testkit::fixtures::{efi_pe, tdvf_from_sev_suffix};
use chrysalis_testkit::measure_image::{Image, snp_firmware};

fn bytes_from_env(var: &str, default: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    match std::env::var(var) {
        Ok(path) => std::fs::read(&path).unwrap_or_else(|e| panic!("{var}={path}: {e}")),
        Err(_) => default(),
    }
}

/// xorshift64: incompressible-looking bytes without a dependency.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn main() {
    // libtest-style flags (--bench) are passed by cargo; nothing to parse.
    let kernel = bytes_from_env("CHRYSALIS_BENCH_KERNEL", || {
        efi_pe(0x90, &pseudo_random(12 << 20))
    });
    let initrd = bytes_from_env("CHRYSALIS_BENCH_INITRD", || pseudo_random(64 << 20));
    let rounds: usize = std::env::var("CHRYSALIS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let tdvf = bytes_from_env("CHRYSALIS_BENCH_TDVF", tdvf_from_sev_suffix);
    let snp = bytes_from_env("CHRYSALIS_BENCH_SNP_OVMF", snp_firmware);
    let img = Image::with(&kernel, &initrd, &tdvf, &snp);
    println!(
        "image: kernel {} bytes, initramfs {} bytes, TDVF {} bytes, SNP OVMF {} bytes",
        kernel.len(),
        initrd.len(),
        tdvf.len(),
        snp.len()
    );
    let path = img.path();
    // Baseline: sha256sum over the same image files, the least any recomputation must read.
    let dir = std::path::Path::new(&path).parent().expect("manifest dir");
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("image dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_none_or(|x| x != "json"))
        .collect();
    let timed = |cmd: &mut Command| {
        let start = Instant::now();
        let o = cmd.output().expect("run");
        let t = start.elapsed();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        t
    };
    for (name, extra) in [("tdx", vec![]), ("snp", vec!["--vcpu-type", "EPYC-Genoa"])] {
        let (mut times, mut base): (Vec<Duration>, Vec<Duration>) = (0..rounds)
            .map(|_| {
                let t = timed(
                    Command::new(env!("CARGO_BIN_EXE_chrysalis"))
                        .args(["measure", "--manifest", &path, "--platform", name])
                        .args(["--vcpus", "2", "--memory", "4096", "--json"])
                        .args(&extra),
                );
                (t, timed(Command::new("sha256sum").args(&files)))
            })
            .unzip();
        times.sort();
        base.sort();
        let (med, base_med) = (
            times[rounds / 2].as_secs_f64(),
            base[rounds / 2].as_secs_f64(),
        );
        println!(
            "chrysalis measure --platform {name}: min {:.3} s, median {med:.3} s over {rounds} runs \
             (budget 1 s); sha256sum of the image files median {base_med:.3} s",
            times[0].as_secs_f64(),
        );
        bench_figure::record(&serde_json::json!({
            "name": format!("chrysalis measure --platform {name} (12 MiB kernel, 64 MiB initramfs)"),
            "unit": "s", "value": med,
            "baseline": "sha256sum of the same files", "baseline_value": base_med,
            "ratio": med / base_med, "goal": "<= 1 s", "met": med <= 1.0, "runs": rounds,
            "note": "wall time of the release binary, process start included",
        })).unwrap();
    }
}
