//! Running tools inside the build root (or a staged rootfs) with bubblewrap.
//!
//! Every tool that shapes image bytes (gcc, cmake, pip, python, mkfs.erofs, veritysetup) runs from the
//! locked trixie build root, never from the build machine, so a reviewer on another distribution gets the
//! same tool versions. The sandbox also fixes the paths tools see (`/src`, `/build`, `/cargo`, …), the
//! environment (cleared; `LANG=C.UTF-8`, `TZ=UTC`, `SOURCE_DATE_EPOCH`), and by default has no network: a
//! build cannot fetch anything the lock does not pin. The root is mounted read-only unless asked otherwise,
//! so a cached build root is never modified by the builds that use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A bind mount into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bind {
    host: PathBuf,
    guest: String,
    writable: bool,
}

/// A bubblewrap sandbox description; [`Sandbox::command`] turns it into a [`Command`].
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
    root_writable: bool,
    binds: Vec<Bind>,
    env: BTreeMap<String, String>,
    network: bool,
    cwd: String,
}

impl Sandbox {
    /// A sandbox whose `/` is `root` (read-only), with fresh `/dev`, `/proc` and `/tmp`, no network and a
    /// minimal environment.
    pub fn new(root: &Path) -> Self {
        let env = BTreeMap::from([
            ("PATH".into(), "/usr/local/bin:/usr/bin:/usr/sbin".into()),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
            ("TZ".into(), "UTC".into()),
        ]);
        Self {
            root: root.to_owned(),
            root_writable: false,
            binds: Vec::new(),
            env,
            network: false,
            cwd: "/".into(),
        }
    }

    /// Mounts the root read-write (for a staged rootfs that a tool inside must write to).
    pub fn writable_root(mut self) -> Self {
        self.root_writable = true;
        self
    }

    /// Binds `host` read-only at `guest`.
    pub fn ro(mut self, host: &Path, guest: &str) -> Self {
        self.binds.push(Bind {
            host: host.to_owned(),
            guest: guest.into(),
            writable: false,
        });
        self
    }

    /// Binds `host` read-write at `guest`.
    pub fn rw(mut self, host: &Path, guest: &str) -> Self {
        self.binds.push(Bind {
            host: host.to_owned(),
            guest: guest.into(),
            writable: true,
        });
        self
    }

    /// Sets an environment variable inside.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Shares the build machine's network and DNS configuration (only for `image lock`).
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    /// The working directory inside.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.cwd = dir.into();
        self
    }

    /// The bubblewrap arguments (without the program name).
    pub fn args(&self, argv: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--die-with-parent".into(),
            "--unshare-ipc".into(),
            "--unshare-pid".into(),
            "--unshare-uts".into(),
            "--hostname".into(),
            "chrysalis-build".into(),
        ];
        if !self.network {
            a.push("--unshare-net".into());
        }
        let root_flag = if self.root_writable {
            "--bind"
        } else {
            "--ro-bind"
        };
        a.extend([
            root_flag.into(),
            self.root.display().to_string(),
            "/".into(),
        ]);
        a.extend([
            "--dev".into(),
            "/dev".into(),
            "--proc".into(),
            "/proc".into(),
            "--tmpfs".into(),
            "/tmp".into(),
        ]);
        if self.network {
            a.extend([
                "--ro-bind-try".into(),
                "/etc/resolv.conf".into(),
                "/etc/resolv.conf".into(),
            ]);
        }
        for b in &self.binds {
            let flag = if b.writable { "--bind" } else { "--ro-bind" };
            a.extend([flag.into(), b.host.display().to_string(), b.guest.clone()]);
        }
        a.push("--clearenv".into());
        for (k, v) in &self.env {
            a.extend(["--setenv".into(), k.clone(), v.clone()]);
        }
        a.extend(["--chdir".into(), self.cwd.clone(), "--".into()]);
        a.extend(argv.iter().map(|s| (*s).to_owned()));
        a
    }

    /// A `bwrap` command running `argv` inside.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("bwrap");
        c.args(self.args(argv));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_read_only_offline_and_clean() {
        let a = Sandbox::new(Path::new("/r")).args(&["true"]);
        let s = a.join(" ");
        assert!(s.contains("--unshare-net"), "{s}");
        assert!(s.contains("--ro-bind /r /"), "{s}");
        assert!(s.contains("--clearenv"), "{s}");
        assert!(s.contains("--setenv TZ UTC"), "{s}");
        assert!(s.ends_with("--chdir / -- true"), "{s}");
        assert!(!s.contains("resolv.conf"));
    }

    #[test]
    fn binds_come_after_the_root_and_network_is_opt_in() {
        let a = Sandbox::new(Path::new("/r"))
            .writable_root()
            .ro(Path::new("/h/src"), "/src")
            .rw(Path::new("/h/out"), "/out")
            .network(true)
            .env("SOURCE_DATE_EPOCH", "1")
            .cwd("/src")
            .args(&["make", "-j2"]);
        let s = a.join(" ");
        let root = s.find("--bind /r /").unwrap();
        assert!(s.find("--ro-bind /h/src /src").unwrap() > root);
        assert!(s.contains("--bind /h/out /out"));
        assert!(!s.contains("--unshare-net"));
        assert!(s.contains("--setenv SOURCE_DATE_EPOCH 1"));
        assert!(s.ends_with("--chdir /src -- make -j2"), "{s}");
    }
}
