//! Downloads into the content-addressed cache: Debian packages from the archive root of the machine's apt
//! sources (or `CHRYSALIS_DEBIAN_ARCHIVE`), Python files from their index URL. Every byte is checked
//! against the lock's sha256 (and size, for .debs) before it is stored; cached files are re-verified
//! whenever they are used.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chrysalis_image::lock::{DebPackage, PythonDist};
use chrysalis_image::{Cache, Sha256Digest, apt};

use super::Ui;

/// The Debian archive root: `CHRYSALIS_DEBIAN_ARCHIVE`, else the machine's first apt source for `suite`.
pub(crate) fn debian_archive(suite: &str) -> Result<String> {
    if let Ok(root) = std::env::var("CHRYSALIS_DEBIAN_ARCHIVE") {
        return Ok(root.trim_end_matches('/').to_owned());
    }
    let sources = apt::machine_sources(Path::new("/etc/apt"))?;
    let src = apt::source_for_suite(&sources, suite)?;
    Ok(src.uris[0].trim_end_matches('/').to_owned())
}

/// One file to fetch.
pub(crate) struct Want {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) sha256: Sha256Digest,
    pub(crate) size: Option<u64>,
}

impl Want {
    pub(crate) fn deb(archive: &str, d: &DebPackage) -> Self {
        Self {
            name: d.path.rsplit('/').next().unwrap_or(&d.name).to_owned(),
            url: format!("{archive}/{}", d.path),
            sha256: d.sha256,
            size: Some(d.size),
        }
    }

    pub(crate) fn python(p: &PythonDist) -> Self {
        Self {
            name: p.filename.clone(),
            url: p.url.clone(),
            sha256: p.sha256,
            size: None,
        }
    }
}

fn agent() -> ureq::Agent {
    // The machine's trust store, not a bundled one: build machines behind a TLS-inspecting proxy have
    // its CA there.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

/// Makes sure every wanted file is in the cache (verified); returns their cache paths in order.
pub(crate) fn fetch_all(ui: &Ui, cache: &Cache, wants: &[Want]) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut paths = Vec::with_capacity(wants.len());
    for w in wants {
        match cache.get(&w.name, &w.sha256)? {
            Some(p) => paths.push(Some(p)),
            None => {
                missing.push(paths.len());
                paths.push(None);
            }
        }
    }
    if !missing.is_empty() {
        let total: u64 = missing.iter().filter_map(|i| wants[*i].size).sum();
        let bar = ui.bytes_bar(total, &format!("downloading {} files", missing.len()));
        let agent = Arc::new(agent());
        for i in missing {
            let w = &wants[i];
            bar.set_message(w.name.clone());
            let resp = agent
                .get(&w.url)
                .call()
                .with_context(|| format!("cannot download {} from {}", w.name, w.url))?;
            if w.size.is_none()
                && let Some(len) = resp.body().content_length()
            {
                bar.inc_length(len);
            }
            let reader = bar.wrap_read(resp.into_body().into_reader());
            let path = cache.insert(&w.name, &w.sha256, w.size, reader.take(u64::MAX))?;
            paths[i] = Some(path);
        }
        bar.finish_and_clear();
    }
    Ok(paths
        .into_iter()
        .map(|p| p.expect("every file fetched"))
        .collect())
}
