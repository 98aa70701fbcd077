//! Reading the build machine's apt configuration and apt's answers, for locking and fetching packages.
//!
//! The lock never names a mirror. Where the Debian archive is comes from the machine's own apt sources
//! (`/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`): the first `deb` source that
//! serves the flavor's suite gives the archive root, and a private apt configuration built from that
//! source (and only that suite) resolves package closures without touching the machine's apt state.

use std::collections::BTreeMap;
use std::path::Path;

/// An apt configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AptError {
    /// A sources file could not be read.
    #[error("cannot read apt sources {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No apt source serves the suite.
    #[error(
        "no apt source of this machine serves Debian {suite} (add one to /etc/apt/sources.list.d, \
         or set CHRYSALIS_DEBIAN_ARCHIVE to an archive root)"
    )]
    NoSource {
        /// The suite.
        suite: String,
    },
    /// apt printed something this code does not understand.
    #[error("unexpected apt output: {0}")]
    Output(String),
}

/// One apt source entry (deb822 stanza or one-line entry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AptSource {
    /// `deb`, `deb-src`.
    pub types: Vec<String>,
    /// Archive roots.
    pub uris: Vec<String>,
    /// Suites.
    pub suites: Vec<String>,
    /// Components.
    pub components: Vec<String>,
    /// The keyring (`Signed-By`), if any.
    pub signed_by: Option<String>,
}

/// Parses deb822 paragraphs (blank-line separated `Key: value` with continuation lines), skipping comments.
pub fn parse_deb822(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::<String, String>::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last
                && let Some(v) = cur.get_mut(k)
            {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_owned();
            cur.insert(k.clone(), v.trim().to_owned());
            last = Some(k);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn words(s: Option<&String>) -> Vec<String> {
    s.map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Parses a `.sources` file.
pub fn parse_sources_deb822(text: &str) -> Vec<AptSource> {
    parse_deb822(text)
        .into_iter()
        .filter(|p| p.get("Enabled").is_none_or(|e| e != "no"))
        .map(|p| AptSource {
            types: words(p.get("Types")),
            uris: words(p.get("URIs")),
            suites: words(p.get("Suites")),
            components: words(p.get("Components")),
            signed_by: p.get("Signed-By").cloned(),
        })
        .collect()
}

/// Parses a one-line `.list` file (`deb [opts] uri suite comp…`).
pub fn parse_sources_list(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = line;
        let Some((ty, r)) = rest.split_once(char::is_whitespace) else {
            continue;
        };
        if ty != "deb" && ty != "deb-src" {
            continue;
        }
        rest = r.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some((opts, r)) = r.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_owned());
                }
            }
            rest = r.trim_start();
        }
        let mut it = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (it.next(), it.next()) else {
            continue;
        };
        out.push(AptSource {
            types: vec![ty.into()],
            uris: vec![uri.into()],
            suites: vec![suite.into()],
            components: it.map(str::to_owned).collect(),
            signed_by,
        });
    }
    out
}

/// Reads all of the machine's apt sources under `etc_apt` (normally `/etc/apt`), in apt's order.
pub fn machine_sources(etc_apt: &Path) -> Result<Vec<AptSource>, AptError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| AptError::Read {
            path: p.into(),
            source,
        })
    };
    let mut out = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.exists() {
        out.extend(parse_sources_list(&read(&main)?));
    }
    let dir = etc_apt.join("sources.list.d");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            match f.extension().and_then(|e| e.to_str()) {
                Some("list") => out.extend(parse_sources_list(&read(&f)?)),
                Some("sources") => out.extend(parse_sources_deb822(&read(&f)?)),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The first `deb` source that serves `suite`.
pub fn source_for_suite<'a>(
    sources: &'a [AptSource],
    suite: &str,
) -> Result<&'a AptSource, AptError> {
    sources
        .iter()
        .find(|s| {
            s.types.iter().any(|t| t == "deb")
                && s.suites.iter().any(|x| x == suite)
                && !s.uris.is_empty()
        })
        .ok_or_else(|| AptError::NoSource {
            suite: suite.into(),
        })
}

/// A deb822 sources stanza for a private apt configuration: that source's first URI and keyring, only
/// `suite`, with `components` (which may be more than the machine enables, e.g. `non-free`).
pub fn private_sources(source: &AptSource, suite: &str, components: &[String]) -> String {
    let mut s = format!(
        "Types: deb\nURIs: {}\nSuites: {suite}\nComponents: {}\n",
        source.uris[0],
        components.join(" ")
    );
    if let Some(k) = &source.signed_by {
        s.push_str(&format!("Signed-By: {k}\n"));
    }
    s
}

/// Reads `apt-get install -s` output: the `(name, version)` of every `Inst` line, in order.
pub fn parse_simulated_installs(text: &str) -> Result<Vec<(String, String)>, AptError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("Inst ")) {
        // Inst NAME [OLD] (VERSION ORIGIN [ARCH])
        let mut it = line.split_whitespace().skip(1);
        let name = it.next().ok_or_else(|| AptError::Output(line.into()))?;
        let version = line
            .split_once('(')
            .and_then(|(_, r)| r.split_whitespace().next())
            .ok_or_else(|| AptError::Output(line.into()))?;
        out.push((name.to_owned(), version.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources_and_continuations() {
        let text = "Types: deb deb-src\n# comment\nURIs: http://a.example/debian\nSuites: bookworm-backports trixie\n\
                    Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb\nURIs: http://b\nSuites: x\n\
                    Components: main\nEnabled: no\n";
        let s = parse_sources_deb822(text);
        assert_eq!(s.len(), 1, "disabled stanza skipped");
        assert_eq!(s[0].suites, ["bookworm-backports", "trixie"]);
        let src = source_for_suite(&s, "trixie").unwrap();
        assert_eq!(src.uris, ["http://a.example/debian"]);
        let private = private_sources(src, "trixie", &["main".into(), "non-free".into()]);
        assert_eq!(
            private,
            "Types: deb\nURIs: http://a.example/debian\nSuites: trixie\nComponents: main non-free\n\
             Signed-By: /usr/share/keyrings/k.gpg\n"
        );
        assert!(matches!(
            source_for_suite(&s, "sid"),
            Err(AptError::NoSource { .. })
        ));

        let p = parse_deb822("Package: a\nDescription: x\n more\n\nPackage: b\n");
        assert_eq!(p[0]["Description"], "x\nmore");
        assert_eq!(p[1]["Package"], "b");
    }

    #[test]
    fn one_line_sources() {
        let s = parse_sources_list(
            "deb [arch=amd64 signed-by=/k.gpg] http://m/debian trixie main contrib # x\n#deb http://no trixie main\n\
             deb-src http://m/debian trixie main\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(source_for_suite(&s, "trixie").unwrap().types, ["deb"]);
    }

    #[test]
    fn simulated_installs() {
        let out = "NOTE: x\nInst libc6 (2.41-12+deb13u4 Debian:13.4/stable [amd64])\n\
                   Inst zlib1g (1:1.3.dfsg+really1.3.1-1+b1 Debian:13.4/stable [amd64])\nConf libc6 (2.41)\n";
        assert_eq!(
            parse_simulated_installs(out).unwrap(),
            [
                ("libc6".into(), "2.41-12+deb13u4".into()),
                ("zlib1g".into(), "1:1.3.dfsg+really1.3.1-1+b1".into())
            ]
        );
    }
}
