//! Reading pip's installation report (`pip install --dry-run --report`) into lock entries.
//!
//! Locking runs pip inside the build root, with trixie's own CPython, so the resolution (wheel tags,
//! markers) is the one the image's interpreter would make. The report names each file's URL and SHA-256;
//! this module turns that into [`PythonDist`] entries and refuses anything the lock cannot pin (a file
//! without a SHA-256, a non-https URL, a local path).

use serde::Deserialize;

use crate::digest::Sha256Digest;
use crate::lock::{DistKind, PySet, PythonDist, normalize_python_name};

/// A report that cannot be turned into lock entries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipReportError {
    /// Not JSON in pip's report format.
    #[error("pip report is not valid JSON")]
    Parse(#[source] serde_json::Error),
    /// A format version this code does not know.
    #[error("pip report version {0} is not supported (want 1)")]
    Version(String),
    /// An entry that cannot be pinned.
    #[error("pip report entry {name}: {reason}")]
    Unpinnable {
        /// The project.
        name: String,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Report {
    version: String,
    install: Vec<Install>,
}

#[derive(Deserialize)]
struct Install {
    download_info: DownloadInfo,
    metadata: Metadata,
}

#[derive(Deserialize)]
struct DownloadInfo {
    url: String,
    archive_info: Option<ArchiveInfo>,
}

#[derive(Deserialize)]
struct ArchiveInfo {
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
    hash: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    version: String,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Turns a pip report into lock entries of `set`, sorted by name.
pub fn dists_from_report(json: &str, set: PySet) -> Result<Vec<PythonDist>, PipReportError> {
    let report: Report = serde_json::from_str(json).map_err(PipReportError::Parse)?;
    if report.version != "1" {
        return Err(PipReportError::Version(report.version));
    }
    let mut out = Vec::new();
    for i in report.install {
        let name = normalize_python_name(&i.metadata.name);
        let bad = |reason: &str| PipReportError::Unpinnable {
            name: name.clone(),
            reason: reason.into(),
        };
        let url = i
            .download_info
            .url
            .split('#')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !url.starts_with("https://") {
            return Err(bad(&format!("{url} is not an https URL on an index")));
        }
        let archive = i
            .download_info
            .archive_info
            .ok_or_else(|| bad("not an archive (VCS or directory?)"))?;
        let hex = archive
            .hashes
            .get("sha256")
            .cloned()
            .or_else(|| {
                archive
                    .hash
                    .and_then(|h| h.strip_prefix("sha256=").map(str::to_owned))
            })
            .ok_or_else(|| bad("the index gave no sha256"))?;
        let sha256: Sha256Digest = hex.parse().map_err(|_| bad("sha256 is malformed"))?;
        let filename = percent_decode(url.rsplit('/').next().unwrap_or_default());
        let kind = if filename.ends_with(".whl") {
            DistKind::Wheel
        } else if filename.ends_with(".tar.gz") || filename.ends_with(".zip") {
            DistKind::Sdist
        } else {
            return Err(bad(&format!("{filename} is neither a wheel nor an sdist")));
        };
        out.push(PythonDist {
            name,
            version: i.metadata.version,
            kind,
            filename,
            url,
            sha256,
            sets: vec![set],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "version": "1", "pip_version": "25.1.1",
      "install": [
        {"download_info": {"url": "https://files.example/packages/aa/Jinja2-3.1.6-py3-none-any.whl",
          "archive_info": {"hash": "sha256=1111111111111111111111111111111111111111111111111111111111111111",
                           "hashes": {"sha256": "1111111111111111111111111111111111111111111111111111111111111111"}}},
         "is_direct": false, "requested": true, "metadata": {"name": "Jinja2", "version": "3.1.6"}},
        {"download_info": {"url": "https://files.example/packages/bb/llama_cpp_python-0.3.36.tar.gz",
          "archive_info": {"hash": "sha256=2222222222222222222222222222222222222222222222222222222222222222"}},
         "is_direct": false, "requested": true, "metadata": {"name": "llama_cpp_python", "version": "0.3.36"}}
      ],
      "environment": {}
    }"#;

    #[test]
    fn report_becomes_sorted_lock_entries() {
        let d = dists_from_report(REPORT, PySet::Runtime).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "jinja2");
        assert_eq!(d[0].kind, DistKind::Wheel);
        assert_eq!(d[0].filename, "Jinja2-3.1.6-py3-none-any.whl");
        assert_eq!(d[1].name, "llama-cpp-python");
        assert_eq!(d[1].kind, DistKind::Sdist);
        assert_eq!(d[1].sha256.to_string(), "2".repeat(64));
    }

    #[test]
    fn entries_without_hash_or_https_are_refused() {
        let no_hash = REPORT.replace(r#""archive_info": {"hash": "sha256=2222222222222222222222222222222222222222222222222222222222222222"}"#, r#""archive_info": {}"#);
        assert!(matches!(
            dists_from_report(&no_hash, PySet::Runtime),
            Err(PipReportError::Unpinnable { .. })
        ));
        let http = REPORT.replace(
            "https://files.example/packages/aa",
            "http://files.example/packages/aa",
        );
        assert!(
            dists_from_report(&http, PySet::Runtime)
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        let v2 = REPORT.replace(r#""version": "1""#, r#""version": "2""#);
        assert!(matches!(
            dists_from_report(&v2, PySet::Runtime),
            Err(PipReportError::Version(_))
        ));
    }

    #[test]
    fn percent_escapes_in_file_names_are_decoded() {
        assert_eq!(
            percent_decode("torch-2.8.0%2Bcu128-cp313.whl"),
            "torch-2.8.0+cu128-cp313.whl"
        );
        assert_eq!(percent_decode("a%"), "a%");
    }
}
