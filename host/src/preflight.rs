//! `chrysalis-host preflight`: checks each host prerequisite of the configured profile and says how
//! to fix what is missing, in the manner of libvirt's `virt-host-validate`.
//!
//! Every check reads files below a root directory (`/` on a real host; tests pass a tree that fakes
//! `/sys`, `/proc`, `/dev` and `/etc`), runs the configured programs (`--version`) and NVIDIA's
//! `nvidia_gpu_tools.py` when it is in PATH, and binds the relay and admin addresses once. Nothing
//! is changed on the host.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::config::{HostConfig, PlatformProfile, QgsAddress, SimAccel};
use crate::launch;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// The prerequisite is met.
    Ok,
    /// It could not be confirmed, or is only advisable; the VM may still start.
    Warn,
    /// It is not met: the VM will not start, or will not attest.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: the report aligns the names with `{:<5}`.
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`kvm_intel tdx`, `gpu 0000:3b:00.0 driver`, ...).
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (warn and fail only).
    pub fix: Option<String>,
}

fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    status: Status,
    name: impl Into<String>,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// `path` (absolute, as on the host) below `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn read_trimmed(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(under(root, path))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether a kernel module parameter reads as on (`Y`, `1`).
fn param_on(v: &str) -> bool {
    matches!(v, "Y" | "y" | "1")
}

fn cpu_flags(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(under(root, "/proc/cpuinfo")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The first CPU's `key` field in /proc/cpuinfo (`cpu family`, `model`), as a number.
fn cpu_field(root: &Path, key: &str) -> Option<u32> {
    let text = std::fs::read_to_string(under(root, "/proc/cpuinfo")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// EPYC Milan is family 19h, models 00h-0Fh (Genoa starts at 10h, Turin is family 1Ah).
fn is_milan(family: u32, model: u32) -> bool {
    family == 0x19 && model < 0x10
}

/// `key` in /proc/meminfo, in KiB (HugePages_* are counts).
fn meminfo(root: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(under(root, "/proc/meminfo")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Runs every check for `cfg`, reading host state below `root`.
pub fn run(cfg: &HostConfig, root: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let platform = cfg.vm.platform;
    if cfg.vm.launch {
        out.push(plan_check(cfg, root));
        out.push(qemu_check(cfg));
        match platform {
            PlatformProfile::Tdx => tdx_checks(cfg, root, &mut out),
            PlatformProfile::Snp => snp_checks(root, &mut out),
            PlatformProfile::Sim | PlatformProfile::SimSnp => sim_checks(cfg, root, &mut out),
        }
        if !cfg.vm.gpus.is_empty() {
            gpu_checks(cfg, root, &mut out);
        }
        out.push(memory_check(cfg, root));
    }
    out.push(port_check("relay.listen", cfg.relay.listen));
    if cfg.admin.enabled {
        out.push(port_check("admin.listen", cfg.admin.listen));
    }
    out
}

/// The report as printed: one line per check, a `fix:` line under each warn and fail, and a
/// summary line.
pub fn report(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!("{:<5} {}: {}\n", c.status, c.name, c.detail));
        if let Some(fix) = &c.fix {
            s.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let n = |st| checks.iter().filter(|c| c.status == st).count();
    s.push_str(&format!(
        "preflight: {} ok, {} warn, {} fail\n",
        n(Status::Ok),
        n(Status::Warn),
        n(Status::Fail)
    ));
    s
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The image manifest loads and the launch plan builds (shape measured, firmware listed, GPU BARs
/// readable, SNP address space): what `check` and `run` need before they hash the artifacts.
fn plan_check(cfg: &HostConfig, root: &Path) -> Check {
    match crate::agent::plan_from_config_in(cfg, root) {
        Ok(_) => ok(
            "launch plan",
            "the image manifest loads and the QEMU command line builds (run `chrysalis-host check` to hash the artifacts)",
        ),
        Err(e) => bad(
            Status::Fail,
            "launch plan",
            error_chain(&e),
            "correct host.toml or the image as the message says, then run `chrysalis-host check`",
        ),
    }
}

fn qemu_check(cfg: &HostConfig) -> Check {
    let platform = cfg.vm.platform;
    let need = launch::min_qemu(platform);
    let install = match need {
        Some(v) => format!(
            "install QEMU >= {v} (upstream, or your distribution's TDX/SNP host packages) and set qemu.binary"
        ),
        None => "install QEMU (qemu-system-x86) and set qemu.binary".to_string(),
    };
    let Some(path) = launch::find_program(&cfg.qemu.binary) else {
        return bad(
            Status::Fail,
            "qemu",
            format!(
                "{} not found (not an executable path, nor in PATH)",
                cfg.qemu.binary.display()
            ),
            install,
        );
    };
    match launch::check_qemu_version(platform, &path) {
        Ok(v) => ok(
            "qemu",
            format!(
                "{} is QEMU {v} (machine type {})",
                path.display(),
                launch::machine_type(platform)
            ),
        ),
        Err(e) => bad(Status::Fail, "qemu", e.to_string(), install),
    }
}

fn dev_check(root: &Path, name: &str, dev: &str, fix: &str) -> Check {
    if under(root, dev).exists() {
        ok(name, format!("{dev} present"))
    } else {
        bad(Status::Fail, name, format!("{dev} missing"), fix)
    }
}

fn module_param_check(root: &Path, module: &str, param: &str, fix_off: &str) -> Check {
    let name = format!("{module} {param}");
    let file = format!("/sys/module/{module}/parameters/{param}");
    match read_trimmed(root, &file) {
        Some(v) if param_on(&v) => ok(name, format!("{file} = {v}")),
        Some(v) => bad(Status::Fail, name, format!("{file} = {v}"), fix_off),
        None if !under(root, &format!("/sys/module/{module}")).exists() => bad(
            Status::Fail,
            name,
            format!("module {module} is not loaded"),
            format!("modprobe {module} (and check dmesg for why it failed)"),
        ),
        None => bad(
            Status::Fail,
            name,
            format!("{file} does not exist: this kernel's {module} has no {param} support"),
            fix_off,
        ),
    }
}

fn tdx_checks(cfg: &HostConfig, root: &Path, out: &mut Vec<Check>) {
    let flags = cpu_flags(root);
    out.push(if flags.iter().any(|f| f == "vmx") {
        ok("cpu", "vmx in /proc/cpuinfo")
    } else {
        bad(
            Status::Fail,
            "cpu",
            "no vmx flag in /proc/cpuinfo",
            "enable Intel VT-x in the BIOS (TDX needs a 4th-generation Xeon or newer)",
        )
    });
    out.push(dev_check(
        root,
        "kvm",
        "/dev/kvm",
        "modprobe kvm_intel; enable VT-x in the BIOS",
    ));
    out.push(module_param_check(
        root,
        "kvm_intel",
        "tdx",
        "enable TDX in the BIOS (TME, TME-MT, TDX, SEAM loader), boot a TDX host kernel (Linux >= 6.16 or your distribution's) and load kvm_intel with tdx=1",
    ));
    out.push(dev_check(
        root,
        "vhost-vsock",
        "/dev/vhost-vsock",
        "modprobe vhost_vsock",
    ));
    out.push(qgs_check(cfg, root));
    let qcnl = "/etc/sgx_default_qcnl.conf";
    out.push(if under(root, qcnl).exists() {
        ok("qcnl", format!("{qcnl} present (QGS fetches PCK certificates through it)"))
    } else {
        bad(
            Status::Warn,
            "qcnl",
            format!("{qcnl} missing"),
            "install libsgx-dcap-default-qpl and set pccs_url in /etc/sgx_default_qcnl.conf to your PCCS",
        )
    });
}

fn qgs_check(cfg: &HostConfig, root: &Path) -> Check {
    let start = "install Intel's tdx-qgs (qgsd) and start it: systemctl enable --now qgsd";
    match cfg.tdx.qgs_address() {
        Err(e) => bad(Status::Fail, "qgs", e.to_string(), "fix tdx.qgs"),
        Ok(QgsAddress::Unix(p)) => {
            use std::os::unix::fs::FileTypeExt;
            let at = under(root, &p.to_string_lossy());
            match std::fs::metadata(&at) {
                Ok(m) if m.file_type().is_socket() => {
                    ok("qgs", format!("{} is a socket", p.display()))
                }
                Ok(_) => bad(
                    Status::Fail,
                    "qgs",
                    format!("{} is not a socket", p.display()),
                    start,
                ),
                Err(_) => bad(
                    Status::Fail,
                    "qgs",
                    format!("{} does not exist", p.display()),
                    start,
                ),
            }
        }
        Ok(QgsAddress::Vsock { cid, port }) => {
            let conf = "/etc/qgs.conf";
            let Some(text) = read_trimmed(root, conf) else {
                return bad(
                    Status::Warn,
                    "qgs",
                    format!("{conf} not found; cannot confirm a QGS listens on vsock port {port}"),
                    start,
                );
            };
            let configured = text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "port").then(|| v.trim().parse::<u32>().ok())?
            });
            let qgs_port = configured.unwrap_or(4050);
            if cid != 2 {
                bad(
                    Status::Warn,
                    "qgs",
                    format!("tdx.qgs names cid {cid}; a QGS on this host listens on cid 2"),
                    "set tdx.qgs = \"vsock:2:4050\" unless the QGS runs elsewhere",
                )
            } else if qgs_port != port {
                bad(
                    Status::Fail,
                    "qgs",
                    format!("{conf} sets port {qgs_port}, tdx.qgs names {port}"),
                    format!("set tdx.qgs = \"vsock:2:{qgs_port}\" or port = {port} in {conf}"),
                )
            } else {
                ok(
                    "qgs",
                    format!(
                        "{conf}: QGS on vsock port {qgs_port} (systemctl status qgsd shows whether it runs)"
                    ),
                )
            }
        }
    }
}

fn snp_checks(root: &Path, out: &mut Vec<Check>) {
    let flags = cpu_flags(root);
    let has = |f: &str| flags.iter().any(|x| x == f);
    out.push(if has("svm") && has("sev_snp") {
        ok("cpu", "svm and sev_snp in /proc/cpuinfo")
    } else {
        bad(
            Status::Fail,
            "cpu",
            "svm or sev_snp missing from /proc/cpuinfo",
            "enable SVM, SMEE, SEV-SNP and SNP memory coverage in the BIOS (EPYC Genoa or newer) and boot a host kernel with SNP support (Linux >= 6.11)",
        )
    });
    match (cpu_field(root, "cpu family"), cpu_field(root, "model")) {
        (Some(f), Some(m)) if is_milan(f, m) => out.push(bad(
            Status::Fail,
            "amd product",
            format!("EPYC Milan (family {f:#x}, model {m:#x}): clients refuse Milan reports by default, because its owner can forge them (arXiv 2605.12990; docs/ra-tls.md)"),
            "serve from EPYC Genoa or newer; a Milan node is only accepted by clients that set tcb.dangerous_accept_milan",
        )),
        (Some(f), Some(m)) => out.push(ok("amd product", format!("family {f:#x}, model {m:#x} (not Milan)"))),
        _ => out.push(bad(
            Status::Warn,
            "amd product",
            "no cpu family/model in /proc/cpuinfo",
            "check that this is an AMD EPYC Genoa or newer (clients refuse Milan)",
        )),
    }
    out.push(dev_check(
        root,
        "kvm",
        "/dev/kvm",
        "modprobe kvm_amd; enable SVM in the BIOS",
    ));
    out.push(module_param_check(
        root,
        "kvm_amd",
        "sev_snp",
        "load kvm_amd with sev_snp=1; if it stays off, dmesg names the reason (BIOS settings, SEV firmware too old: update it)",
    ));
    out.push(dev_check(
        root,
        "sev firmware",
        "/dev/sev",
        "modprobe ccp; dmesg shows whether the SEV firmware initialised (SEV-SNP API version)",
    ));
    out.push(match launch::find_program(Path::new("snphost")) {
        Some(p) => ok(
            "snp certificates",
            format!("{} installed; re-import the VCEK chain (snphost import) after each SEV firmware update", p.display()),
        ),
        None => bad(
            Status::Warn,
            "snp certificates",
            "snphost not in PATH; cannot confirm the host serves the VCEK certificate chain with extended reports",
            "install snphost (virtee) and run `snphost fetch vcek` and `snphost import` so guests receive the chain",
        ),
    });
    out.push(dev_check(
        root,
        "vhost-vsock",
        "/dev/vhost-vsock",
        "modprobe vhost_vsock",
    ));
}

fn sim_checks(cfg: &HostConfig, root: &Path, out: &mut Vec<Check>) {
    let p = &cfg.sim.vhost_device_vsock;
    out.push(match launch::find_program(p) {
        Some(found) => ok("vhost-device-vsock", format!("{}", found.display())),
        None => bad(
            Status::Fail,
            "vhost-device-vsock",
            format!("{} not found", p.display()),
            "cargo install vhost-device-vsock --locked, and set sim.vhost_device_vsock",
        ),
    });
    let kvm = under(root, "/dev/kvm").exists();
    out.push(match (cfg.sim.accel, kvm) {
        (SimAccel::Tcg, _) => ok("accel", "tcg (sim.accel)"),
        (_, true) => ok("accel", "/dev/kvm present"),
        (SimAccel::Auto, false) => bad(
            Status::Warn,
            "accel",
            "/dev/kvm missing: the VM runs under TCG (slow)",
            "enable VT-x/AMD-V and modprobe kvm_intel or kvm_amd for KVM",
        ),
        (SimAccel::Kvm, false) => bad(
            Status::Fail,
            "accel",
            "sim.accel = \"kvm\" but /dev/kvm is missing",
            "modprobe kvm_intel or kvm_amd, or set sim.accel = \"auto\"",
        ),
    });
}

fn gpu_checks(cfg: &HostConfig, root: &Path, out: &mut Vec<Check>) {
    let iommus = std::fs::read_dir(under(root, "/sys/class/iommu"))
        .map(|d| d.count())
        .unwrap_or(0);
    let cmdline = read_trimmed(root, "/proc/cmdline").unwrap_or_default();
    let vendor_opt = if cfg.vm.platform == PlatformProfile::Snp {
        "amd_iommu=on iommu=pt"
    } else {
        "intel_iommu=on iommu=pt"
    };
    out.push(if iommus > 0 {
        ok("iommu", format!("{iommus} IOMMU(s) in /sys/class/iommu"))
    } else {
        bad(
            Status::Fail,
            "iommu",
            format!("no IOMMU in /sys/class/iommu (kernel command line: {cmdline})"),
            format!(
                "enable VT-d / AMD-Vi in the BIOS and add {vendor_opt} to the kernel command line"
            ),
        )
    });
    out.push(dev_check(
        root,
        "iommufd",
        "/dev/iommu",
        "modprobe iommufd (kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV)",
    ));
    let tool = launch::find_program(Path::new("nvidia_gpu_tools.py"));
    for gpu in &cfg.vm.gpus {
        let dev = format!("/sys/bus/pci/devices/{gpu}");
        let name = format!("gpu {gpu} driver");
        if !under(root, &dev).exists() {
            out.push(bad(
                Status::Fail,
                name,
                format!("no PCI device {gpu}"),
                "correct vm.gpus (lspci -D -d 10de: lists NVIDIA devices)",
            ));
            continue;
        }
        let bind = format!(
            "echo vfio-pci > {dev}/driver_override; echo {gpu} > {dev}/driver/unbind; echo {gpu} > /sys/bus/pci/drivers_probe"
        );
        let driver = std::fs::read_link(under(root, &format!("{dev}/driver")))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        out.push(match driver.as_deref() {
            Some("vfio-pci") => ok(name, "bound to vfio-pci"),
            Some(other) => bad(
                Status::Fail,
                name,
                format!("bound to {other}, not vfio-pci"),
                bind,
            ),
            None => bad(
                Status::Fail,
                name,
                "bound to no driver",
                format!(
                    "echo vfio-pci > {dev}/driver_override; echo {gpu} > /sys/bus/pci/drivers_probe"
                ),
            ),
        });
        out.push(cc_mode_check(tool.as_deref(), gpu));
    }
}

fn cc_mode_check(tool: Option<&Path>, gpu: &str) -> Check {
    let name = format!("gpu {gpu} cc mode");
    let set = format!(
        "nvidia_gpu_tools.py --gpu-bdf={gpu} --set-cc-mode=on --reset-after-cc-mode-switch"
    );
    let Some(tool) = tool else {
        return bad(
            Status::Warn,
            name,
            "nvidia_gpu_tools.py not in PATH; cannot query the GPU's confidential-computing mode",
            "install NVIDIA's gpu-admin-tools (nvidia_gpu_tools.py) and put it in PATH",
        );
    };
    let out = std::process::Command::new(tool)
        .arg(format!("--gpu-bdf={gpu}"))
        .arg("--query-cc-mode")
        .stdin(std::process::Stdio::null())
        .output();
    let text = match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            return bad(
                Status::Warn,
                name,
                format!("running {}: {e}", tool.display()),
                "run preflight as root",
            );
        }
    };
    let lower = text.to_ascii_lowercase();
    if lower.contains("cc mode is on") {
        ok(name, "CC mode is on")
    } else if let Some(mode) = ["off", "devtools"]
        .iter()
        .find(|m| lower.contains(&format!("cc mode is {m}")))
    {
        bad(Status::Fail, name, format!("CC mode is {mode}"), set)
    } else {
        bad(
            Status::Warn,
            name,
            format!(
                "nvidia_gpu_tools.py did not report the mode: {}",
                text.lines().last().unwrap_or("").trim()
            ),
            set,
        )
    }
}

fn memory_check(cfg: &HostConfig, root: &Path) -> Check {
    let need_kib = cfg.vm.memory_mib * 1024;
    // QEMU, its page tables and bounce buffers need some room beyond guest RAM.
    let headroom_kib = (cfg.vm.memory_mib / 16).max(1024) * 1024;
    let Some(avail) = meminfo(root, "MemAvailable") else {
        return bad(
            Status::Warn,
            "memory",
            "no MemAvailable in /proc/meminfo",
            "check free memory by hand (free -m)",
        );
    };
    let huge = match (
        meminfo(root, "HugePages_Free"),
        meminfo(root, "Hugepagesize"),
    ) {
        (Some(n), Some(sz)) if n > 0 => format!(", {} MiB in free hugepages", n * sz / 1024),
        _ => String::new(),
    };
    let detail = format!(
        "{} MiB available{huge}, vm.memory_mib = {}",
        avail / 1024,
        cfg.vm.memory_mib
    );
    if avail < need_kib {
        bad(
            Status::Fail,
            "memory",
            detail,
            "free memory (stop other VMs, release reserved hugepages the guest does not use) or lower vm.memory_mib",
        )
    } else if avail < need_kib + headroom_kib {
        bad(
            Status::Warn,
            "memory",
            detail,
            format!(
                "leave about {} MiB beyond guest RAM for QEMU",
                headroom_kib / 1024
            ),
        )
    } else {
        ok("memory", detail)
    }
}

fn port_check(key: &str, addr: std::net::SocketAddr) -> Check {
    match TcpListener::bind(addr) {
        Ok(_) => ok(key, format!("{addr} is free")),
        Err(e) => bad(
            Status::Fail,
            key,
            format!("cannot bind {addr}: {e}"),
            format!(
                "stop what listens there (ss -ltnp 'sport = :{}') or change {key}",
                addr.port()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_flags_parse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/meminfo"),
            "MemTotal:       263856132 kB\nMemAvailable:   200000000 kB\nHugePages_Free:       4\nHugepagesize:    1048576 kB\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("proc/cpuinfo"),
            "processor\t: 0\nflags\t\t: fpu vmx tdx_host_platform\n",
        )
        .unwrap();
        assert_eq!(meminfo(dir.path(), "MemAvailable"), Some(200_000_000));
        assert_eq!(meminfo(dir.path(), "HugePages_Free"), Some(4));
        assert!(cpu_flags(dir.path()).contains(&"vmx".to_string()));
        assert_eq!(
            under(Path::new("/r"), "/dev/kvm"),
            PathBuf::from("/r/dev/kvm")
        );
    }

    #[test]
    fn milan_is_named_and_fails_the_snp_checks() {
        assert!(is_milan(0x19, 0x01));
        assert!(!is_milan(0x19, 0x11), "Genoa");
        assert!(!is_milan(0x1a, 0x02), "Turin");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        let cpu = |model: u32| {
            std::fs::write(
                dir.path().join("proc/cpuinfo"),
                format!(
                    "processor\t: 0\ncpu family\t: 25\nmodel\t\t: {model}\nflags\t\t: svm sev_snp\n"
                ),
            )
            .unwrap();
            let mut out = Vec::new();
            snp_checks(dir.path(), &mut out);
            out.into_iter().find(|c| c.name == "amd product").unwrap()
        };
        let milan = cpu(1);
        assert_eq!(milan.status, Status::Fail, "{milan:?}");
        assert!(milan.detail.contains("EPYC Milan"), "{milan:?}");
        assert_eq!(cpu(17).status, Status::Ok);
    }

    #[test]
    fn the_report_has_a_fix_under_each_problem() {
        let checks = vec![ok("a", "fine"), bad(Status::Fail, "b", "broken", "mend it")];
        let r = report(&checks);
        assert_eq!(
            r,
            "ok    a: fine\nfail  b: broken\n      fix: mend it\npreflight: 1 ok, 0 warn, 1 fail\n"
        );
        assert!(failed(&checks));
        assert!(!failed(&checks[..1]));
    }
}
