//! `cargo xtask image reproduce`: an ordinary build and an independent build from scratch that must
//! give identical bytes.
//!
//! Each build runs as its own process (`image build`) with its own work and output directory at
//! different paths (one in the cache or `--out`, one under the system temp directory, nested deeper),
//! a different umask, time zone and locale. Build A is the ordinary build: it reuses the cached
//! compile of the guest runtime and init when their sources are unchanged (`--both-fresh` compiles
//! them from scratch here too). Build B compiles them from scratch (`--fresh`: an empty cargo target
//! directory). Downloads and the build root come from the cache in both (verified inputs, not build
//! outputs); the source-built wheel and the firmware are taken from the cache only after their
//! sha256 matched the lock's pin or their build record (`--rebuild-wheels` rebuilds the wheel in
//! both). Every file of both outputs is compared; a difference names the file and shows how it
//! differs (diffoscope when installed, else sizes and differing byte ranges).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};
use chrysalis_image::Sha256Digest;

use super::tools::have;
use super::ui::{size, table};
use super::{ReproduceArgs, Ui, open_cache, tools};

struct Run {
    label: &'static str,
    /// `image build --fresh`: compile the runtime in an empty target directory.
    fresh: bool,
    out: PathBuf,
    work: PathBuf,
    umask: &'static str,
    tz: &'static str,
    lang: &'static str,
}

pub(crate) fn run(a: &ReproduceArgs) -> Result<()> {
    // A directory the user named is cleared before anything else can fail, so an image left there
    // by an earlier run is never mistaken for this run's build A; it is cleared only when it holds
    // nothing but a previous image.
    if let Some(o) = &a.out {
        refuse_foreign_dir(o)?;
        if o.exists() {
            fs::remove_dir_all(o)?;
        }
    }
    let ui = Ui::new();
    tools::ensure(&ui)?;
    let cache = open_cache()?;
    let flavor = &a.flavor.flavor;
    let base_a = cache.dir("reproduce")?.join(format!("{flavor}-a"));
    let out_a = match &a.out {
        Some(o) => std::path::absolute(o)?,
        None => base_a.join("out"),
    };
    let base_b = std::env::temp_dir()
        .join(format!("chrysalis-reproduce-{}", std::process::id()))
        .join("a/much/longer/path/b");
    let runs = [
        Run {
            label: "A",
            fresh: a.both_fresh,
            out: out_a.clone(),
            work: base_a.join("work"),
            umask: "022",
            tz: "UTC",
            lang: "C.UTF-8",
        },
        Run {
            label: "B",
            fresh: true,
            out: base_b.join("output dir"),
            work: base_b.join("w"),
            umask: "077",
            tz: "Pacific/Chatham",
            lang: "fr_FR.UTF-8",
        },
    ];
    let exe = std::env::current_exe()?;
    let mut failures = Vec::new();
    // Each build starts from empty directories.
    for r in &runs {
        for d in [&r.out, &r.work] {
            if d.exists() {
                fs::remove_dir_all(d)?;
            }
        }
        fs::create_dir_all(&r.out)?;
        ui.say(format!(
            "==> build {} ({}): out {}, umask {}, TZ={}, LANG={}",
            r.label,
            if r.fresh {
                "runtime compiled from scratch"
            } else {
                "ordinary build, compile cache reused"
            },
            r.out.display(),
            r.umask,
            r.tz,
            r.lang
        ));
        let start = Instant::now();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("umask {}; exec \"$0\" \"$@\"", r.umask))
            .arg(&exe)
            .args(["image", "build", "--flavor", flavor, "--out"])
            .arg(&r.out)
            .arg("--work-dir")
            .arg(&r.work)
            .env("TZ", r.tz)
            .env("LANG", r.lang)
            .env("LC_ALL", r.lang);
        if r.fresh {
            c.arg("--fresh");
        }
        if a.rebuild_wheels {
            c.arg("--rebuild-wheels");
        }
        if let Some(p) = &a.model_pack {
            c.arg("--model-pack").arg(p);
        }
        let status = c.status()?;
        let took = start.elapsed().as_secs_f64();
        if status.success() {
            ui.say(format!("    build {} finished in {took:.1} s", r.label));
        } else {
            ui.say(format!(
                "    build {} FAILED after {took:.1} s ({status}); comparing what it wrote",
                r.label
            ));
            failures.push(r.label);
        }
    }

    let (a_out, b_out) = (&runs[0].out, &runs[1].out);
    let files: BTreeSet<String> = list(a_out)?.into_iter().chain(list(b_out)?).collect();
    let mut rows = Vec::new();
    let mut differ = Vec::new();
    for f in &files {
        let (pa, pb) = (a_out.join(f), b_out.join(f));
        let row = match (pa.is_file(), pb.is_file()) {
            (true, true) => {
                let (da, db) = (Sha256Digest::of_file(&pa)?, Sha256Digest::of_file(&pb)?);
                if da == db {
                    vec![
                        f.clone(),
                        size(fs::metadata(&pa)?.len()),
                        "identical".into(),
                        da.to_string(),
                    ]
                } else {
                    differ.push(f.clone());
                    vec![
                        f.clone(),
                        size(fs::metadata(&pa)?.len()),
                        "DIFFERENT".into(),
                        format!("{da} / {db}"),
                    ]
                }
            }
            (true, false) => {
                differ.push(f.clone());
                vec![f.clone(), "-".into(), "only in A".into(), String::new()]
            }
            _ => {
                differ.push(f.clone());
                vec![f.clone(), "-".into(), "only in B".into(), String::new()]
            }
        };
        rows.push(row);
    }
    ui.say(format!(
        "\n{}",
        table(&["file", "size", "result", "sha256"], &rows)
    ));
    for f in &differ {
        let (pa, pb) = (a_out.join(f), b_out.join(f));
        if pa.is_file() && pb.is_file() {
            ui.say(format!(
                "--- {f}: how A and B differ\n{}",
                explain(&pa, &pb)?
            ));
        }
    }
    if !a.keep {
        // Build A's work directory goes; its output stays when it was asked for (--out).
        let _ = fs::remove_dir_all(&runs[0].work);
        if a.out.is_none() {
            let _ = fs::remove_dir_all(&base_a);
        }
        let _ = fs::remove_dir_all(
            std::env::temp_dir().join(format!("chrysalis-reproduce-{}", std::process::id())),
        );
    } else {
        ui.say(format!("kept: {} and {}", a_out.display(), b_out.display()));
    }
    if !differ.is_empty() {
        bail!("not reproducible: {} differ", differ.join(", "));
    }
    if !failures.is_empty() {
        bail!(
            "the {} files both builds wrote are identical, but build(s) {} failed (see above)",
            files.len(),
            failures.join(", ")
        );
    }
    if files.is_empty() {
        bail!("the builds wrote nothing to compare");
    }
    ui.say(format!("reproducible: {} files identical", files.len()));
    Ok(())
}

/// Errors unless `dir` is missing, empty, or an image output (a manifest.json beside files only).
fn refuse_foreign_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut has_manifest = false;
    let mut any = false;
    for e in entries {
        let e = e?;
        any = true;
        if e.file_type()?.is_dir() {
            bail!(
                "--out {}: holds the directory {}, so it is not an image output; \
                 refusing to clear it (name an empty or new directory)",
                dir.display(),
                e.file_name().to_string_lossy()
            );
        }
        has_manifest |= e.file_name() == "manifest.json";
    }
    if any && !has_manifest {
        bail!(
            "--out {}: not empty and holds no manifest.json, so it is not an image output; \
             refusing to clear it (name an empty or new directory)",
            dir.display()
        );
    }
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in walkdir_files(dir)? {
        if !e.ends_with(".partial") {
            out.push(e);
        }
    }
    Ok(out)
}

fn walkdir_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir)?.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// diffoscope's text report when installed (its first 200 lines), else a byte-range summary.
fn explain(a: &Path, b: &Path) -> Result<String> {
    if have("diffoscope") {
        let out = Command::new("diffoscope")
            .args(["--text", "-", "--max-report-size", "200000"])
            .arg(a)
            .arg(b)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        return Ok(text.lines().take(200).collect::<Vec<_>>().join("\n"));
    }
    byte_summary(a, b)
}

/// Sizes, the number of differing bytes and the first few differing ranges (offset, length).
pub(crate) fn byte_summary(a: &Path, b: &Path) -> Result<String> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut differing = 0u64;
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        for i in 0..n {
            if ba[i] != bb[i] {
                differing += 1;
                let at = off + i as u64;
                match ranges.last_mut() {
                    Some((start, len)) if *start + *len == at => *len += 1,
                    _ => ranges.push((at, 1)),
                }
            }
        }
        off += n as u64;
        if n == 0 || na != nb {
            break;
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(10)
        .map(|(s, l)| format!("0x{s:x}+{l}"))
        .collect();
    Ok(format!(
        "sizes {la} / {lb}; {differing} differing bytes in the first {off} in {} ranges (diffoscope is not installed); first: {}",
        ranges.len(),
        shown.join(", ")
    ))
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_previous_image_output_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        refuse_foreign_dir(&out).expect("a missing directory is fine");
        fs::create_dir(&out).unwrap();
        refuse_foreign_dir(&out).expect("an empty directory is fine");
        fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = refuse_foreign_dir(&out).unwrap_err().to_string();
        assert!(e.contains("holds no manifest.json"), "{e}");
        fs::write(out.join("manifest.json"), "{}").unwrap();
        refuse_foreign_dir(&out).expect("an image output is cleared");
        fs::create_dir(out.join("src")).unwrap();
        let e = refuse_foreign_dir(&out).unwrap_err().to_string();
        assert!(e.contains("holds the directory src"), "{e}");
    }

    #[test]
    fn byte_summary_names_ranges_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut da = vec![0u8; 100_000];
        let mut db = da.clone();
        db[10] = 1;
        db[11] = 1;
        db[70_000] = 9;
        da.push(5);
        fs::write(&a, &da).unwrap();
        fs::write(&b, &db).unwrap();
        let s = byte_summary(&a, &b).unwrap();
        assert!(
            s.starts_with("sizes 100001 / 100000; 3 differing bytes"),
            "{s}"
        );
        assert!(s.contains("0xa+2, 0x11170+1"), "{s}");
    }
}
