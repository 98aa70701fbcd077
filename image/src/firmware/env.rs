//! The seam where build steps run ([`BuildEnv`], [`HostEnv`]), and the check-and-install of build tools.
//!
//! A step is a bash script with arguments, a working directory and a complete environment. Today it
//! runs on the host; a pinned Debian build chroot can implement [`BuildEnv`] later (its
//! [`BuildEnv::identity`] then names the chroot, which changes the cache key).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::FirmwareError;
use super::recipe::Toolchain;

/// One command to run: `bash -c script name args…` in `cwd`, with exactly `env`.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// Short name for progress and errors.
    pub name: &'a str,
    /// The bash script.
    pub script: &'a str,
    /// Its positional arguments (`$1`…).
    pub args: &'a [String],
    /// Working directory.
    pub cwd: &'a Path,
    /// The complete environment; nothing else is inherited.
    pub env: &'a BTreeMap<String, String>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Exit status 0.
    Success,
    /// Anything else, described ("exit status 2", "signal 9").
    Failed(String),
}

/// Where build steps run.
pub trait BuildEnv {
    /// A stable description of the environment, part of the cache key (e.g. `host`, or a chroot
    /// named by the hash of its package list).
    fn identity(&self) -> String;

    /// Runs `step`, passing each line of its combined stdout and stderr to `on_line` as it comes.
    /// Returns Err only if the step could not be started; a step that ran and failed is
    /// `Ok(StepOutcome::Failed)`.
    fn run(
        &self,
        step: &Step<'_>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<StepOutcome, FirmwareError>;
}

/// Runs steps directly on this machine with `/bin/bash`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostEnv;

impl BuildEnv for HostEnv {
    fn identity(&self) -> String {
        "host".to_owned()
    }

    fn run(
        &self,
        step: &Step<'_>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<StepOutcome, FirmwareError> {
        // stderr joins stdout inside the shell so that lines keep their order without a second
        // reader thread.
        let script = format!("exec 2>&1\n{}", step.script);
        let mut child = Command::new("/bin/bash")
            .arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(script)
            .arg(step.name)
            .args(step.args)
            .current_dir(step.cwd)
            .env_clear()
            .envs(step.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| FirmwareError::Spawn {
                program: format!("bash for step `{}`", step.name),
                source,
            })?;
        if let Some(out) = child.stdout.take() {
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        on_line(line.trim_end_matches(['\n', '\r']));
                    }
                    Err(e) => {
                        on_line(&format!("(reading the step's output failed: {e})"));
                        break;
                    }
                }
            }
        }
        let status = child.wait().map_err(|source| FirmwareError::Spawn {
            program: format!("bash for step `{}`", step.name),
            source,
        })?;
        Ok(if status.success() {
            StepOutcome::Success
        } else {
            StepOutcome::Failed(status.to_string())
        })
    }
}

/// A build tool, how to find it, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolRequirement {
    /// What it is for people.
    pub what: &'static str,
    /// A shell test that succeeds when the tool is present.
    pub check: &'static str,
    /// The Debian package to install when it is missing.
    pub package: &'static str,
}

/// What the firmware build needs: edk2's BaseTools (C and C++), the edk2 build (Python, NASM for
/// the reset vector and SEC, iasl for ACPI tables), and unpacking and patching the sources.
pub const REQUIRED_TOOLS: &[ToolRequirement] = &[
    ToolRequirement {
        what: "C compiler",
        check: "command -v gcc",
        package: "gcc",
    },
    ToolRequirement {
        what: "C++ compiler (VfrCompile)",
        check: "command -v g++",
        package: "g++",
    },
    ToolRequirement {
        what: "make",
        check: "command -v make",
        package: "make",
    },
    ToolRequirement {
        what: "NASM assembler",
        check: "command -v nasm",
        package: "nasm",
    },
    ToolRequirement {
        what: "ACPI compiler iasl",
        check: "command -v iasl",
        package: "acpica-tools",
    },
    ToolRequirement {
        what: "Python 3",
        check: "command -v python3",
        package: "python3",
    },
    ToolRequirement {
        what: "libuuid headers",
        check: "test -f /usr/include/uuid/uuid.h",
        package: "uuid-dev",
    },
    ToolRequirement {
        what: "patch",
        check: "command -v patch",
        package: "patch",
    },
    ToolRequirement {
        what: "xz (tarballs)",
        check: "command -v xz",
        package: "xz-utils",
    },
];

const CHECK_SCRIPT: &str = r#"for req in "$@"; do
  pkg=${req%%=*}
  if ! sh -c "${req#*=}" >/dev/null 2>&1; then echo "missing $pkg"; fi
done
"#;

const INSTALL_SCRIPT: &str = r#"set -eu
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "$@"; then
  echo "apt-get install failed; refreshing the package lists and retrying"
  apt-get update
  apt-get install -y --no-install-recommends "$@"
fi
"#;

/// The Debian packages providing the tools of `tools` that `env` lacks, sorted.
pub fn missing_tools(
    env: &dyn BuildEnv,
    cwd: &Path,
    vars: &BTreeMap<String, String>,
    tools: &[ToolRequirement],
) -> Result<Vec<String>, FirmwareError> {
    let args: Vec<String> = tools
        .iter()
        .map(|t| format!("{}={}", t.package, t.check))
        .collect();
    let mut missing = Vec::new();
    let mut other = Vec::new();
    let outcome = env.run(
        &Step {
            name: "check build tools",
            script: CHECK_SCRIPT,
            args: &args,
            cwd,
            env: vars,
        },
        &mut |line| match line.strip_prefix("missing ") {
            Some(pkg) => missing.push(pkg.to_owned()),
            None => other.push(line.to_owned()),
        },
    )?;
    if let StepOutcome::Failed(status) = outcome {
        return Err(FirmwareError::UnexpectedOutput {
            what: "the build-tool check".to_owned(),
            detail: format!("{status}: {}", other.join("\n")),
        });
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}

/// Checks that every tool in `tools` is present in `env`; installs the missing ones with
/// `apt-get install -y --no-install-recommends` (telling `report` which packages, and streaming
/// apt's output to `on_line`), then checks again. Returns the packages it installed.
pub fn ensure_tools(
    env: &dyn BuildEnv,
    cwd: &Path,
    vars: &BTreeMap<String, String>,
    tools: &[ToolRequirement],
    report: &mut dyn FnMut(&str),
    on_line: &mut dyn FnMut(&str),
) -> Result<Vec<String>, FirmwareError> {
    let missing = missing_tools(env, cwd, vars, tools)?;
    if missing.is_empty() {
        return Ok(missing);
    }
    report(&format!(
        "installing firmware build tools with apt-get: {}",
        missing.join(" ")
    ));
    let mut tail = Vec::new();
    let outcome = env.run(
        &Step {
            name: "install build tools",
            script: INSTALL_SCRIPT,
            args: &missing,
            cwd,
            env: vars,
        },
        &mut |line| {
            on_line(line);
            tail.push(line.to_owned());
            if tail.len() > 20 {
                tail.remove(0);
            }
        },
    )?;
    if let StepOutcome::Failed(status) = outcome {
        return Err(FirmwareError::ToolsMissing(format!(
            "{} (apt-get: {status})\n{}",
            missing.join(" "),
            tail.join("\n")
        )));
    }
    let still = missing_tools(env, cwd, vars, tools)?;
    if !still.is_empty() {
        return Err(FirmwareError::ToolsMissing(still.join(" ")));
    }
    Ok(missing)
}

const PROBE_SCRIPT: &str = r#"set -u
first() { "$@" 2>&1 | sed -n '/[0-9]/{p;q}'; }
echo "gcc=$(first gcc --version)"
echo "g++=$(first g++ --version)"
echo "binutils=$(first ld --version)"
echo "nasm=$(first nasm -v)"
echo "iasl=$(iasl -v 2>&1 | sed -n '/[Vv]ersion/{p;q}')"
echo "python=$(first python3 --version)"
echo "make=$(first make --version)"
"#;

/// Asks `env` for the versions of the tools that shape the firmware bytes (gcc, g++, binutils,
/// nasm, iasl, python, make). Every tool must report a version line.
pub fn probe_toolchain(
    env: &dyn BuildEnv,
    cwd: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<Toolchain, FirmwareError> {
    let mut versions = BTreeMap::new();
    let mut bad = Vec::new();
    let outcome = env.run(
        &Step {
            name: "probe toolchain",
            script: PROBE_SCRIPT,
            args: &[],
            cwd,
            env: vars,
        },
        &mut |line| match line.split_once('=') {
            Some((tool, version)) if !version.trim().is_empty() => {
                versions.insert(tool.to_owned(), version.trim().to_owned());
            }
            _ => bad.push(line.to_owned()),
        },
    )?;
    if let StepOutcome::Failed(status) = outcome {
        bad.push(status);
    }
    if !bad.is_empty() || versions.len() != 7 {
        return Err(FirmwareError::UnexpectedOutput {
            what: "the toolchain probe".to_owned(),
            detail: format!("got {versions:?}; unparsed: {bad:?}"),
        });
    }
    Ok(Toolchain(versions))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A fake environment: answers the tool check from a set of present packages and records the
    /// steps it was asked to run; "installing" makes packages present.
    struct FakeEnv {
        present: RefCell<Vec<&'static str>>,
        ran: RefCell<Vec<(String, Vec<String>)>>,
        apt_fails: bool,
    }

    impl BuildEnv for FakeEnv {
        fn identity(&self) -> String {
            "fake".into()
        }

        fn run(
            &self,
            step: &Step<'_>,
            on_line: &mut dyn FnMut(&str),
        ) -> Result<StepOutcome, FirmwareError> {
            self.ran
                .borrow_mut()
                .push((step.name.to_owned(), step.args.to_vec()));
            match step.name {
                "check build tools" => {
                    for arg in step.args {
                        let pkg = arg.split_once('=').unwrap().0;
                        if !self.present.borrow().contains(&pkg) {
                            on_line(&format!("missing {pkg}"));
                        }
                    }
                    Ok(StepOutcome::Success)
                }
                "install build tools" if self.apt_fails => {
                    on_line("E: Unable to locate package nasm");
                    Ok(StepOutcome::Failed("exit status: 100".into()))
                }
                "install build tools" => {
                    for pkg in step.args {
                        let known = REQUIRED_TOOLS.iter().find(|t| t.package == pkg).unwrap();
                        self.present.borrow_mut().push(known.package);
                    }
                    Ok(StepOutcome::Success)
                }
                other => panic!("unexpected step {other}"),
            }
        }
    }

    fn fake(present: &[&'static str], apt_fails: bool) -> FakeEnv {
        FakeEnv {
            present: RefCell::new(present.to_vec()),
            ran: RefCell::new(Vec::new()),
            apt_fails,
        }
    }

    fn all_but(missing: &[&str]) -> Vec<&'static str> {
        REQUIRED_TOOLS
            .iter()
            .map(|t| t.package)
            .filter(|p| !missing.contains(p))
            .collect()
    }

    #[test]
    fn nothing_is_installed_when_everything_is_present() {
        let env = fake(&all_but(&[]), false);
        let mut reports = Vec::new();
        let installed = ensure_tools(
            &env,
            Path::new("/"),
            &BTreeMap::new(),
            REQUIRED_TOOLS,
            &mut |m| reports.push(m.to_owned()),
            &mut |_| {},
        )
        .unwrap();
        assert!(installed.is_empty());
        assert!(reports.is_empty());
        assert_eq!(env.ran.borrow().len(), 1, "only the check ran");
    }

    #[test]
    fn missing_tools_are_installed_by_package_and_announced() {
        let env = fake(&all_but(&["nasm", "acpica-tools"]), false);
        let mut reports = Vec::new();
        let installed = ensure_tools(
            &env,
            Path::new("/"),
            &BTreeMap::new(),
            REQUIRED_TOOLS,
            &mut |m| reports.push(m.to_owned()),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(installed, ["acpica-tools", "nasm"]);
        assert_eq!(reports.len(), 1);
        assert!(reports[0].contains("acpica-tools nasm"), "{reports:?}");
        let ran = env.ran.borrow();
        assert_eq!(ran[1].0, "install build tools");
        assert_eq!(ran[1].1, ["acpica-tools", "nasm"]);
        assert_eq!(
            ran[2].0, "check build tools",
            "checked again after installing"
        );
    }

    #[test]
    fn a_failed_install_is_an_error_naming_the_packages_and_apt_output() {
        let env = fake(&all_but(&["nasm"]), true);
        let err = ensure_tools(
            &env,
            Path::new("/"),
            &BTreeMap::new(),
            REQUIRED_TOOLS,
            &mut |_| {},
            &mut |_| {},
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nasm"), "{msg}");
        assert!(msg.contains("Unable to locate package"), "{msg}");
    }

    #[test]
    fn host_env_runs_with_exactly_the_given_environment_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let vars: BTreeMap<String, String> = [("PATH", "/usr/bin:/bin"), ("ONLY", "this")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut lines = Vec::new();
        let args = ["a b".to_owned()];
        let outcome = HostEnv
            .run(
                &Step {
                    name: "t",
                    script: "echo \"$1\"; echo \"${HOME-unset} $ONLY\"; pwd; echo err >&2; exit 3",
                    args: &args,
                    cwd: dir.path(),
                    env: &vars,
                },
                &mut |l| lines.push(l.to_owned()),
            )
            .unwrap();
        assert_eq!(outcome, StepOutcome::Failed("exit status: 3".into()));
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(
            lines,
            [
                "a b".to_owned(),
                "unset this".to_owned(),
                cwd.display().to_string(),
                "err".to_owned()
            ]
        );
    }
}
