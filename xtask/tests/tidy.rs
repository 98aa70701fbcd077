//! House rules that CI enforces, as ordinary tests (rust-analyzer's `xtask/src/tidy.rs` is the
//! model): the crate edges of ARCHITECTURE.md's workspace table, read from `cargo metadata`; a
//! leading `//!` line in every Rust file; no `#[path]` that reaches into another crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Which workspace crates each workspace crate may depend on (ARCHITECTURE.md, "Workspace").
/// `None`: any. A crate missing here fails the test until ARCHITECTURE and this table name it.
const ALLOWED: &[(&str, Option<&[&str]>)] = &[
    // The ground: protocol code lives once, here.
    ("chrysalis-attestation", Some(&[])),
    // guest, host and client never depend on each other. The guest checks payment promises
    // with code from ton.
    (
        "chrysalis-guest",
        Some(&["chrysalis-attestation", "chrysalis-ton"]),
    ),
    ("chrysalis-host", Some(&["chrysalis-attestation"])),
    ("chrysalis-client", Some(&["chrysalis-attestation"])),
    ("chrysalis-image", Some(&["chrysalis-attestation"])),
    ("xtask", Some(&["chrysalis-image", "chrysalis-attestation"])),
    ("chrysalis-ton", Some(&["chrysalis-attestation"])),
    // Test support (fixtures, fake peers): a dev-dependency of the others, never a dependency.
    ("chrysalis-testkit", Some(&["chrysalis-attestation"])),
    ("chrysalis-tests", None),
];

/// What any crate may also take in `[dev-dependencies]`: the test-support crate.
const DEV_ONLY: &[&str] = &["chrysalis-testkit"];

/// The attestation features the host may enable: the verifier side, the PCS client and the
/// simulated TEE its sim quote service signs with. Whatever they imply must not reach
/// [`KEY_FEATURE`]: the host never holds a key.
const HOST_FEATURES: &[&str] = &["full", "pcs", "dangerous-sim"];
const KEY_FEATURE: &str = "signing";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

fn metadata() -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Every edge between workspace crates that ARCHITECTURE does not allow, as messages.
fn edge_violations(meta: &Value) -> Vec<String> {
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let allowed: BTreeMap<&str, Option<&[&str]>> = ALLOWED.iter().copied().collect();
    let mut out = Vec::new();
    for pkg in packages {
        let name = pkg["name"].as_str().unwrap_or_default();
        let Some(rule) = allowed.get(name) else {
            out.push(format!(
                "{name} is not in ARCHITECTURE's crate table (add it there and to ALLOWED in xtask/tests/tidy.rs)"
            ));
            continue;
        };
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            if !members.contains(dep_name) {
                continue;
            }
            let dev = dep["kind"].as_str() == Some("dev");
            let ok = match rule {
                None => true,
                // A dev-dependency on itself only turns on its own test-util feature.
                Some(list) => {
                    list.contains(&dep_name)
                        || (dev && (DEV_ONLY.contains(&dep_name) || dep_name == name))
                }
            };
            if !ok {
                let kind = dep["kind"].as_str().unwrap_or("normal");
                out.push(format!(
                    "{name} depends on {dep_name} ({kind}), which ARCHITECTURE does not allow"
                ));
            }
            if name == "chrysalis-host" && dep_name == "chrysalis-attestation" && !dev {
                out.extend(host_feature_violations(packages, dep));
            }
        }
    }
    out
}

/// The host's dependency on attestation: no default features, only [`HOST_FEATURES`], and
/// nothing they imply reaches [`KEY_FEATURE`].
fn host_feature_violations(packages: &[Value], dep: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let features: Vec<&str> = dep["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if dep["uses_default_features"].as_bool() != Some(false) {
        out.push(
            "chrysalis-host uses attestation's default features (they include signing)".into(),
        );
    }
    for f in &features {
        if !HOST_FEATURES.contains(f) {
            out.push(format!(
                "chrysalis-host enables attestation feature {f:?}; allowed: {HOST_FEATURES:?}"
            ));
        }
    }
    let table = packages
        .iter()
        .find(|p| p["name"] == "chrysalis-attestation")
        .map(|p| &p["features"]);
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = features.iter().map(|f| (*f).to_owned()).collect();
    while let Some(f) = todo.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        for implied in table
            .and_then(|t| t[f.as_str()].as_array())
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            // "dep:x" and "x/y" name dependencies, not features of this crate.
            if !implied.starts_with("dep:") && !implied.contains('/') {
                todo.push(implied.to_owned());
            }
        }
    }
    if seen.contains(KEY_FEATURE) {
        out.push(format!(
            "chrysalis-host's attestation features {features:?} imply {KEY_FEATURE:?}: the host must not link key-holding code"
        ));
    }
    out
}

#[test]
fn crate_edges_match_architecture() {
    let v = edge_violations(&metadata());
    assert!(v.is_empty(), "crate edges:\n  {}", v.join("\n  "));
}

/// The checker itself: the real metadata with one forbidden edge and one forbidden feature
/// added must fail, naming both.
#[test]
fn the_edge_check_reports_forbidden_edges_and_host_features() {
    let mut meta = metadata();
    for pkg in meta["packages"].as_array_mut().unwrap() {
        if pkg["name"] == "chrysalis-host" {
            let deps = pkg["dependencies"].as_array_mut().unwrap();
            deps.push(serde_json::json!({"name": "chrysalis-guest", "kind": null, "features": []}));
            for d in deps.iter_mut() {
                if d["name"] == "chrysalis-attestation" {
                    d["features"].as_array_mut().unwrap().push("signing".into());
                }
            }
        }
    }
    let v = edge_violations(&meta).join("\n");
    assert!(
        v.contains("chrysalis-host depends on chrysalis-guest"),
        "{v}"
    );
    assert!(v.contains("enables attestation feature \"signing\""), "{v}");
    assert!(v.contains("imply \"signing\""), "{v}");
}

/// Every Rust source file of the repository (tracked or not), outside build outputs.
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "out") {
                    walk(&path, out);
                }
            } else if ft.is_file() && name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn every_rust_file_starts_with_a_doc_line() {
    let files = rust_files();
    assert!(files.len() > 50, "found only {} .rs files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|f| rel(f))
        .collect();
    assert!(
        missing.is_empty(),
        "files whose first line is not a `//!` line saying what they hold:\n  {}",
        missing.join("\n  ")
    );
}

/// The directory of the package a file belongs to: the nearest one above with a Cargo.toml.
fn package_dir(file: &Path) -> Option<PathBuf> {
    file.ancestors()
        .skip(1)
        .find(|d| d.join("Cargo.toml").is_file())
        .map(Path::to_owned)
}

/// The `#[path = "…"]` attributes in `text` whose file lies in another package than `file`.
fn cross_crate_paths(file: &Path, text: &str) -> Vec<String> {
    let home = package_dir(file);
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim_start();
        let Some(rest) = l.strip_prefix("#[path") else {
            continue;
        };
        let Some(target) = rest.split('"').nth(1) else {
            continue;
        };
        let resolved = normalize(&dir.join(target));
        if package_dir(&resolved) != home {
            out.push(format!("{}:{}: #[path = \"{target}\"]", rel(file), i + 1));
        }
    }
    out
}

/// `a/b/../c` → `a/c`, without touching the file system (the target may not exist).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn no_path_attribute_reaches_into_another_crate() {
    let found: Vec<String> = rust_files()
        .iter()
        .flat_map(|f| cross_crate_paths(f, &std::fs::read_to_string(f).unwrap_or_default()))
        .collect();
    assert!(
        found.is_empty(),
        "#[path] includes across crates (use the test-support crate instead):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_path_check_tells_another_crate_from_this_one() {
    let root = root();
    let bench = root.join("attestation/benches/verify.rs");
    let inside = "#[path = \"../src/testutil.rs\"]\nmod testutil;\n";
    assert!(cross_crate_paths(&bench, inside).is_empty());
    let across = "//! x\n#[path = \"../../client/tests/common/guest.rs\"]\nmod guest;\n";
    let v = cross_crate_paths(&bench, across);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].ends_with(":2: #[path = \"../../client/tests/common/guest.rs\"]"),
        "{v:?}"
    );
}
