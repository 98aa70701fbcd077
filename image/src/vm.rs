//! Booting built artifacts under QEMU TCG (q35, direct kernel boot) for smoke tests.
//!
//! This is a developer and CI check of the image, not the production launcher (that is the host
//! agent's tdx / snp / sim profiles). The serial console is read line by line and time-stamped
//! from QEMU's start, so callers can wait for a line (the runtime's "listening") and measure how
//! long the boot took. QEMU is killed when the run ends, also on error or panic.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Manifest;

/// Errors of the TCG boot helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// A `--disk` argument is not `SERIAL=PATH`, or the serial is not a virtio-blk serial.
    #[error("bad disk {0:?}: expected SERIAL=PATH with SERIAL of 1-20 characters [A-Za-z0-9_-]")]
    BadDisk(String),
    /// QEMU could not be started.
    #[error("cannot start {qemu}: {source}")]
    Spawn {
        /// The QEMU binary.
        qemu: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Waiting for or stopping QEMU failed.
    #[error("cannot wait for QEMU: {0}")]
    Wait(#[source] std::io::Error),
}

/// A raw image attached as a read-only virtio-blk disk; the guest finds it by `serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// virtio-blk serial (at most 20 bytes, the size of the virtio-blk ID field).
    pub serial: String,
    /// The image file.
    pub path: PathBuf,
}

impl std::str::FromStr for Disk {
    type Err = VmError;

    /// Parses `SERIAL=PATH`.
    fn from_str(s: &str) -> Result<Self, VmError> {
        let (serial, path) = s
            .split_once('=')
            .ok_or_else(|| VmError::BadDisk(s.into()))?;
        let ok = (1..=20).contains(&serial.len())
            && serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok || path.is_empty() {
            return Err(VmError::BadDisk(s.into()));
        }
        Ok(Disk {
            serial: serial.into(),
            path: path.into(),
        })
    }
}

/// A q35 VM under TCG with direct kernel boot and the serial console on QEMU's stdout.
#[derive(Debug, Clone)]
pub struct TcgVm {
    /// The QEMU binary (`qemu-system-x86_64` on PATH by default).
    pub qemu: PathBuf,
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    /// Disks, attached in this order.
    pub disks: Vec<Disk>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// QEMU CPU model.
    pub cpu: String,
    /// A vhost-user vsock device (for the runtime's vsock listener), when set.
    pub vsock: Option<VhostUserVsock>,
}

/// A `vhost-user-vsock-pci` device whose backend (e.g. vhost-device-vsock, which owns the guest CID
/// and the host-side hybrid vsock socket) listens on `socket`. vhost-user needs guest RAM that the
/// backend can map, so the VM's memory becomes a shared memfd backing one NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserVsock {
    /// The backend's vhost-user control socket, which must exist when QEMU starts.
    pub socket: PathBuf,
}

/// One console line and when it was read, counted from QEMU's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    /// Time since QEMU was started.
    pub at: Duration,
    /// The line, without its line ending. QEMU's own stderr lines start with `qemu: `.
    pub text: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited by itself: the guest powered off, or its kernel panicked (with `-no-reboot`).
    Exited(ExitStatus),
    /// A console line contained the awaited text; QEMU was then stopped.
    Matched,
    /// Neither happened in time; QEMU was stopped.
    TimedOut,
}

/// The result of a run: the whole console and how it ended.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Every console line, in order.
    pub lines: Vec<ConsoleLine>,
    /// How the run ended.
    pub ending: Ending,
    /// Wall time from QEMU's start to the end of the run.
    pub elapsed: Duration,
}

impl Boot {
    /// The first console line that contains `needle`.
    pub fn first(&self, needle: &str) -> Option<&ConsoleLine> {
        self.lines.iter().find(|l| l.text.contains(needle))
    }

    /// The console as text, one line each.
    pub fn console(&self) -> String {
        self.lines.iter().map(|l| format!("{}\n", l.text)).collect()
    }
}

/// Kills and reaps QEMU however the run ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// QEMU's option syntax doubles commas inside values.
fn escape(path: &std::path::Path) -> OsString {
    let mut s = OsString::new();
    s.push(path.as_os_str().to_string_lossy().replace(',', ",,"));
    s
}

impl TcgVm {
    /// A VM with 1 GiB, 2 vCPUs, `-cpu max`, no disks.
    pub fn new(
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
        append: impl Into<String>,
    ) -> Self {
        TcgVm {
            qemu: "qemu-system-x86_64".into(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            append: append.into(),
            disks: Vec::new(),
            memory_mib: 1024,
            cpus: 2,
            cpu: "max".into(),
            vsock: None,
        }
    }

    /// The VM that boots a built image: kernel, initramfs and command line from `manifest`, and the
    /// rootfs, model and config disks with their serials (docs/image.md, "Boot"); files are resolved
    /// in `dir`, the manifest's directory. Firmware is not used: TCG boots the kernel directly.
    pub fn from_manifest(dir: &Path, manifest: &Manifest) -> Self {
        let a = &manifest.artifacts;
        let mut vm = Self::new(
            dir.join(&a.kernel.file),
            dir.join(&a.initramfs.file),
            manifest.kernel_cmdline.clone(),
        );
        vm.disks = [
            ("rootfs", &a.rootfs),
            ("model", &a.model),
            ("config", &a.config_disk),
        ]
        .into_iter()
        .map(|(serial, art)| Disk {
            serial: serial.into(),
            path: dir.join(&art.file),
        })
        .collect();
        vm
    }

    /// QEMU's arguments (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = [
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            &self.cpu,
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.memory_mib.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-kernel",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into());
        a.push("-append".into());
        a.push(self.append.clone().into());
        for (i, d) in self.disks.iter().enumerate() {
            let mut drive = OsString::from("file=");
            drive.push(escape(&d.path));
            drive.push(format!(",format=raw,if=none,id=disk{i},readonly=on"));
            a.extend(["-drive".into(), drive]);
            a.extend([
                "-device".into(),
                format!("virtio-blk-pci,drive=disk{i},serial={}", d.serial).into(),
            ]);
        }
        if let Some(v) = &self.vsock {
            a.extend([
                "-object".into(),
                format!(
                    "memory-backend-memfd,id=mem0,size={}M,share=on",
                    self.memory_mib
                )
                .into(),
                "-numa".into(),
                "node,memdev=mem0".into(),
                "-chardev".into(),
            ]);
            let mut chardev = OsString::from("socket,id=vsock0,path=");
            chardev.push(escape(&v.socket));
            a.push(chardev);
            a.extend([
                "-device".into(),
                "vhost-user-vsock-pci,chardev=vsock0".into(),
            ]);
        }
        a
    }

    /// Boots the VM and reads its console until QEMU exits, a line contains `until`, or `timeout`
    /// passes; `on_line` sees every line as it arrives. QEMU is stopped before this returns.
    pub fn run(
        &self,
        until: Option<&str>,
        timeout: Duration,
        mut on_line: impl FnMut(&ConsoleLine),
    ) -> Result<Boot, VmError> {
        let start = Instant::now();
        let child = Command::new(&self.qemu)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| VmError::Spawn {
                qemu: self.qemu.clone(),
                source,
            })?;
        let mut child = Reaped(child);
        let (tx, rx) = mpsc::channel();
        let stdout = child.0.stdout.take().expect("piped");
        let stderr = child.0.stderr.take().expect("piped");
        // The readers end on their own once the pipes close; nobody waits for them, so a stray
        // process holding a pipe cannot hang the run.
        forward(stdout, "", tx.clone(), start);
        forward(stderr, "qemu: ", tx, start);

        let deadline = start + timeout;
        let mut lines = Vec::new();
        let ending = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    on_line(&line);
                    let hit = until.is_some_and(|u| line.text.contains(u));
                    lines.push(line);
                    if hit {
                        break Ending::Matched;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break Ending::TimedOut,
                // Both pipes closed: QEMU is gone.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Ending::Exited(child.0.wait().map_err(VmError::Wait)?);
                }
            }
        };
        let elapsed = start.elapsed();
        drop(child);
        // Lines that raced with the end of the run still belong to the console.
        lines.extend(rx.try_iter());
        Ok(Boot {
            lines,
            ending,
            elapsed,
        })
    }
}

/// Sends every line of `pipe` to `tx`, time-stamped.
fn forward(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<ConsoleLine>,
    start: Instant,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if tx
                        .send(ConsoleLine {
                            at: start.elapsed(),
                            text: format!("{prefix}{text}"),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_and_validate() {
        let d: Disk = "rootfs=/tmp/a,b.img".parse().unwrap();
        assert_eq!(
            d,
            Disk {
                serial: "rootfs".into(),
                path: "/tmp/a,b.img".into()
            }
        );
        for bad in [
            "rootfs",
            "=x",
            "rootfs=",
            "a b=x",
            "abcdefghijklmnopqrstu=x",
        ] {
            assert!(bad.parse::<Disk>().is_err(), "{bad}");
        }
    }

    #[test]
    fn argv_is_q35_tcg_direct_boot() {
        let mut vm = TcgVm::new("/k/vmlinuz", "/k/initrd.img", "console=ttyS0 panic=-1");
        vm.disks.push("rootfs=/img/root,fs.img".parse().unwrap());
        let args: Vec<String> = vm
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "-machine q35 -accel tcg -cpu max -smp 2 -m 1024 -nodefaults -no-user-config -display none \
             -serial stdio -monitor none -no-reboot -kernel /k/vmlinuz -initrd /k/initrd.img \
             -append console=ttyS0 panic=-1 \
             -drive file=/img/root,,fs.img,format=raw,if=none,id=disk0,readonly=on \
             -device virtio-blk-pci,drive=disk0,serial=rootfs"
        );
    }

    #[test]
    fn vhost_user_vsock_shares_guest_memory() {
        let mut vm = TcgVm::new("/k", "/i", "");
        vm.memory_mib = 2048;
        vm.vsock = Some(VhostUserVsock {
            socket: "/run/v,u.sock".into(),
        });
        let args: Vec<String> = vm
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let tail = args[args.len() - 8..].join(" ");
        assert_eq!(
            tail,
            "-object memory-backend-memfd,id=mem0,size=2048M,share=on -numa node,memdev=mem0 \
             -chardev socket,id=vsock0,path=/run/v,,u.sock -device vhost-user-vsock-pci,chardev=vsock0"
        );
        assert!(args.windows(2).any(|w| w == ["-m", "2048"]));
    }

    #[test]
    fn run_reads_lines_until_the_program_exits_or_matches() {
        // A script stands in for QEMU: the runner only cares about its output and exit.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        chrysalis_testkit::write_executable(
            &fake,
            "#!/bin/sh\necho one\necho 'two MARK'\necho err >&2\nsleep 2\necho three\n",
        );
        let mut v = TcgVm::new("k", "i", "");
        v.qemu = fake;
        let mut seen = 0;
        let b = v
            .run(Some("MARK"), Duration::from_secs(30), |_| seen += 1)
            .unwrap();
        assert_eq!(b.ending, Ending::Matched);
        assert_eq!(b.first("two").unwrap().text, "two MARK");
        assert!(b.first("three").is_none());
        assert!(seen >= 2);

        let b = v.run(None, Duration::from_millis(300), |_| {}).unwrap();
        assert_eq!(b.ending, Ending::TimedOut);

        let b = v
            .run(Some("never"), Duration::from_secs(30), |_| {})
            .unwrap();
        assert!(matches!(b.ending, Ending::Exited(s) if s.success()));
        assert_eq!(b.first("err").unwrap().text, "qemu: err");
        assert!(b.first("three").is_some());
    }
}
