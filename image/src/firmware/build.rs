//! The whole firmware build: tools, sources, cache lookup, edk2 steps, cache entry and JSON record.
//!
//! Cache layout under the cache directory:
//! * `sources/sha256/<hex>`: pinned source files ([`super::SourceStore`]).
//! * `firmware/<key>/<platform file>` and `firmware/<key>/record.json`: one entry per
//!   [`super::cache_key`]; entries are written to a temporary directory and renamed into place,
//!   and verified against their record whenever they are used.
//! * `work/`: temporary edk2 trees (removed after a successful build unless asked to keep them;
//!   kept after a failure, with a log per step).

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::FirmwareError;
use super::env::{
    BuildEnv, REQUIRED_TOOLS, Step, StepOutcome, ensure_tools, missing_tools, probe_toolchain,
};
use super::fetch::{Fetcher, SourceStore};
use super::lock::{FileRole, SourceFile, SourceLock, sha256_file};
use super::recipe::{CacheKey, Platform, Recipe, Toolchain, cache_key, file_name};

/// Where the build reports what it is doing. Implementations draw progress bars (xtask) or
/// nothing ([`SilentProgress`]).
pub trait Progress {
    /// A long step begins.
    fn step(&self, name: &str);
    /// One output line of the running step.
    fn line(&self, line: &str);
    /// The running step finished after `elapsed`.
    fn done(&self, name: &str, elapsed: Duration);
    /// Something the user should see (a package install, a cache hit).
    fn note(&self, message: &str);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SilentProgress;

impl Progress for SilentProgress {
    fn step(&self, _: &str) {}
    fn line(&self, _: &str) {}
    fn done(&self, _: &str, _: Duration) {}
    fn note(&self, _: &str) {}
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Platforms to build, in order.
    pub platforms: Vec<Platform>,
    /// The cache directory (`$CHRYSALIS_CACHE` or `~/.cache/chrysalis` in xtask).
    pub cache_dir: PathBuf,
    /// Parent of the temporary edk2 tree; `<cache>/work` when None.
    pub work_dir: Option<PathBuf>,
    /// Parallel jobs for make and edk2's `build -n` (the output does not depend on it).
    pub jobs: u32,
    /// Build even when the cache holds the result. The cache keeps its existing entry; the new
    /// image is returned next to the cached hash so that the two can be compared.
    pub rebuild: bool,
    /// Keep the edk2 tree after a successful build.
    pub keep_work: bool,
    /// Install missing build tools with apt-get (otherwise a missing tool is an error).
    pub install_tools: bool,
}

/// The JSON record written next to each cached image (and next to each output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The platform.
    pub platform: Platform,
    /// The image's file name.
    pub file: String,
    /// sha256 of the image (lowercase hex).
    pub sha256: String,
    /// Size of the image in bytes.
    pub size: u64,
    /// The cache key the image was built under.
    pub cache_key: CacheKey,
    /// Source package name.
    pub source_package: String,
    /// Source package version.
    pub source_version: String,
    /// All pinned source files (name, role, size, sha256).
    pub sources: Vec<SourceFile>,
    /// The recipe (edk2 arguments, environment, scripts).
    pub recipe: Recipe,
    /// Tool versions as reported by the tools.
    pub toolchain: Toolchain,
    /// The build environment's identity.
    pub env: String,
    /// Seconds spent unpacking, patching and building BaseTools (shared by the platforms built
    /// together).
    pub prepare_seconds: f64,
    /// Seconds spent in edk2's `build` for this platform.
    pub build_seconds: f64,
    /// The job count used.
    pub jobs: u32,
}

/// One built (or cached) firmware image.
#[derive(Debug, Clone)]
pub struct BuiltFirmware {
    /// The image in the cache.
    pub path: PathBuf,
    /// Its record.
    pub record: BuildRecord,
    /// True when it came from the cache without building.
    pub from_cache: bool,
    /// With [`BuildOptions::rebuild`]: the sha256 the cache already held under the same key.
    pub cached_sha256: Option<String>,
}

const RECORD: &str = "record.json";
const TAIL_LINES: usize = 40;

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FirmwareError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| FirmwareError::io("creating a temporary file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| FirmwareError::io("writing", tmp.path().to_owned(), e))?;
    // Temporary files are created 0600; records are ordinary readable outputs.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .map_err(|e| FirmwareError::io("setting permissions of", tmp.path().to_owned(), e))?;
    tmp.persist(path)
        .map_err(|e| FirmwareError::io("renaming into place", path, e.error))?;
    Ok(())
}

/// Copies `from` to `to` through a temporary file in `to`'s directory.
pub(crate) fn copy_atomically(from: &Path, to: &Path) -> Result<(), FirmwareError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| FirmwareError::io("creating a temporary file in", dir, e))?;
    fs::copy(from, tmp.path()).map_err(|e| FirmwareError::io("copying", from, e))?;
    tmp.persist(to)
        .map_err(|e| FirmwareError::io("renaming into place", to, e.error))?;
    Ok(())
}

/// Writes `record` as pretty JSON to `path` (temp file, then rename).
pub fn write_record(path: &Path, record: &BuildRecord) -> Result<(), FirmwareError> {
    let mut json = serde_json::to_vec_pretty(record).map_err(|source| FirmwareError::Record {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    write_atomically(path, &json)
}

/// Reads a cache entry; returns it only if the image still has the recorded hash.
fn load_entry(dir: &Path, platform: Platform) -> Result<Option<BuiltFirmware>, FirmwareError> {
    let record_path = dir.join(RECORD);
    let image = dir.join(file_name(platform));
    if !record_path.exists() || !image.exists() {
        return Ok(None);
    }
    let text = fs::read(&record_path).map_err(|e| FirmwareError::io("reading", &record_path, e))?;
    let record: BuildRecord =
        serde_json::from_slice(&text).map_err(|source| FirmwareError::Record {
            path: record_path.clone(),
            source,
        })?;
    let (size, sha256) = sha256_file(&image)?;
    if sha256 != record.sha256 || size != record.size {
        return Err(FirmwareError::CacheCorrupt {
            path: image,
            dir: dir.to_owned(),
            expected: record.sha256,
            actual: sha256,
        });
    }
    Ok(Some(BuiltFirmware {
        path: image,
        record,
        from_cache: true,
        cached_sha256: None,
    }))
}

/// Runs steps in a [`BuildEnv`], logging each to `<logs>/<n>-<name>.log` and turning a failure
/// into an error with the log's tail.
struct Runner<'a> {
    env: &'a dyn BuildEnv,
    progress: &'a dyn Progress,
    logs: PathBuf,
    count: usize,
}

impl Runner<'_> {
    fn run(&mut self, step: &Step<'_>) -> Result<Duration, FirmwareError> {
        self.count += 1;
        let log_path = self.logs.join(format!(
            "{:02}-{}.log",
            self.count,
            step.name.replace(' ', "-")
        ));
        let mut log =
            fs::File::create(&log_path).map_err(|e| FirmwareError::io("creating", &log_path, e))?;
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let mut write_error = None;
        self.progress.step(step.name);
        let started = Instant::now();
        let outcome = self.env.run(step, &mut |line| {
            if write_error.is_none() {
                write_error = writeln!(log, "{line}").err();
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
            self.progress.line(line);
        })?;
        let elapsed = started.elapsed();
        if let Some(e) = write_error {
            return Err(FirmwareError::io("writing", log_path, e));
        }
        match outcome {
            StepOutcome::Success => {
                self.progress.done(step.name, elapsed);
                Ok(elapsed)
            }
            StepOutcome::Failed(status) => Err(FirmwareError::StepFailed {
                step: step.name.to_owned(),
                status,
                log: log_path,
                tail: Vec::from(tail).join("\n"),
            }),
        }
    }
}

/// A workspace path of fixed length that points at the real edk2 tree (see
/// [`super::recipe::WORKSPACE_ALIAS_LEN`]): `/tmp/chrysalis-edk2-<20 random>/e`.
struct WorkspaceAlias {
    /// Removes the alias (and its directory) when dropped.
    _dir: tempfile::TempDir,
    link: PathBuf,
}

impl WorkspaceAlias {
    fn new(target: &Path, expected_len: usize) -> Result<Self, FirmwareError> {
        let dir = tempfile::Builder::new()
            .prefix("chrysalis-edk2-")
            .rand_bytes(20)
            .tempdir_in("/tmp")
            .map_err(|e| FirmwareError::io("creating a temporary directory in", "/tmp", e))?;
        let link = dir.path().join("e");
        std::os::unix::fs::symlink(target, &link)
            .map_err(|e| FirmwareError::io("creating symlink", &link, e))?;
        let len = link.as_os_str().len();
        if len != expected_len {
            return Err(FirmwareError::UnexpectedOutput {
                what: "the workspace alias".to_owned(),
                detail: format!(
                    "{} is {len} bytes long, expected {expected_len}",
                    link.display()
                ),
            });
        }
        Ok(Self { _dir: dir, link })
    }
}

/// Builds the firmware for `opts.platforms` from the pinned sources in `lock`, reusing cached
/// images whose key matches. Returns one [`BuiltFirmware`] per platform, in order.
///
/// The steps run in `env`; sources come from the store under the cache directory, filled by
/// `fetcher` when missing. Returns Ok only if every image exists in the cache with a record that
/// matches its bytes. Does not compare against any expected hash: that is the caller's policy.
pub fn build(
    lock: &SourceLock,
    env: &dyn BuildEnv,
    fetcher: &dyn Fetcher,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<BuiltFirmware>, FirmwareError> {
    let cache = &opts.cache_dir;
    let entries = cache.join("firmware");
    fs::create_dir_all(&entries)
        .map_err(|e| FirmwareError::io("creating directory", &entries, e))?;
    let epoch = lock.source.source_date_epoch;
    let recipes: Vec<Recipe> = opts
        .platforms
        .iter()
        .map(|p| Recipe::new(*p, epoch))
        .collect();
    // Every recipe has the same environment; the first one runs the shared steps.
    let Some(first) = recipes.first() else {
        return Ok(Vec::new());
    };
    let vars = &first.env;

    progress.step("check build tools");
    let started = Instant::now();
    if opts.install_tools {
        ensure_tools(
            env,
            cache,
            vars,
            REQUIRED_TOOLS,
            &mut |m| progress.note(m),
            &mut |l| progress.line(l),
        )?;
    } else {
        let missing = missing_tools(env, cache, vars, REQUIRED_TOOLS)?;
        if !missing.is_empty() {
            return Err(FirmwareError::ToolsMissing(format!(
                "{} (tool installation is disabled)",
                missing.join(" ")
            )));
        }
    }
    let toolchain = probe_toolchain(env, cache, vars)?;
    progress.done("check build tools", started.elapsed());
    let identity = env.identity();

    let keys: Vec<CacheKey> = recipes
        .iter()
        .map(|r| cache_key(r, &lock.source.files, &toolchain, &identity))
        .collect();
    let mut results: Vec<Option<BuiltFirmware>> = Vec::new();
    let mut cached_hashes = Vec::new();
    for (recipe, key) in recipes.iter().zip(&keys) {
        let entry = load_entry(&entries.join(&key.0), recipe.platform)?;
        cached_hashes.push(entry.as_ref().map(|e| e.record.sha256.clone()));
        match entry {
            Some(hit) if !opts.rebuild => {
                progress.note(&format!(
                    "{}: cached ({}), sha256 {}",
                    recipe.platform, key, hit.record.sha256
                ));
                results.push(Some(hit));
            }
            _ => results.push(None),
        }
    }
    if results.iter().all(Option::is_some) {
        return Ok(results.into_iter().flatten().collect());
    }

    // Sources.
    progress.step("fetch sources");
    let started = Instant::now();
    let store = SourceStore::new(cache.join("sources"));
    let sources = store.ensure(lock, fetcher, &mut |l| progress.line(l))?;
    progress.done("fetch sources", started.elapsed());

    // Work tree.
    let work_parent = opts.work_dir.clone().unwrap_or_else(|| cache.join("work"));
    fs::create_dir_all(&work_parent)
        .map_err(|e| FirmwareError::io("creating directory", &work_parent, e))?;
    let work = tempfile::Builder::new()
        .prefix("edk2-")
        .tempdir_in(&work_parent)
        .map_err(|e| FirmwareError::io("creating a temporary directory in", &work_parent, e))?;
    let logs = work.path().join("logs");
    fs::create_dir_all(&logs).map_err(|e| FirmwareError::io("creating directory", &logs, e))?;
    let mut runner = Runner {
        env,
        progress,
        logs,
        count: 0,
    };
    let outcome = build_in(
        lock,
        opts,
        &recipes,
        &keys,
        &toolchain,
        &identity,
        &sources,
        work.path(),
        &mut runner,
        &entries,
        &mut results,
    );
    match outcome {
        Ok(()) if !opts.keep_work => drop(work),
        Ok(()) => {
            progress.note(&format!("kept the edk2 tree in {}", work.keep().display()));
        }
        Err(e) => {
            // Keep the tree and its logs for the post-mortem that the error points to.
            let _ = work.keep();
            return Err(e);
        }
    }
    let mut out = Vec::new();
    for (result, cached) in results.into_iter().zip(cached_hashes) {
        if let Some(mut built) = result {
            if !built.from_cache {
                built.cached_sha256 = cached;
            }
            out.push(built);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build_in(
    lock: &SourceLock,
    opts: &BuildOptions,
    recipes: &[Recipe],
    keys: &[CacheKey],
    toolchain: &Toolchain,
    identity: &str,
    sources: &std::collections::BTreeMap<FileRole, PathBuf>,
    work: &Path,
    runner: &mut Runner<'_>,
    entries: &Path,
    results: &mut [Option<BuiltFirmware>],
) -> Result<(), FirmwareError> {
    let first = &recipes[0];
    let vars = &first.env;
    let upstream = &lock.source.upstream_dir;
    let tree = work.join(upstream);
    let source_path = |role| -> Result<String, FirmwareError> {
        sources
            .get(&role)
            .map(|p| p.display().to_string())
            .ok_or_else(|| FirmwareError::SourceUnavailable {
                file: format!("{role:?}"),
                reason: "not in the store".to_owned(),
            })
    };
    let args = [
        source_path(FileRole::Orig)?,
        source_path(FileRole::Debian)?,
        upstream.clone(),
    ];
    let mut prepare = runner.run(&Step {
        name: "unpack and patch",
        script: &first.prepare_script,
        args: &args,
        cwd: work,
        env: vars,
    })?;

    let alias = WorkspaceAlias::new(&tree, first.workspace_path_len)?;
    let jobs = opts.jobs.max(1).to_string();
    let ws = alias.link.display().to_string();
    prepare += runner.run(&Step {
        name: "build BaseTools",
        script: &first.basetools_script,
        args: &[ws.clone(), jobs.clone()],
        cwd: work,
        env: vars,
    })?;

    for ((recipe, key), slot) in recipes.iter().zip(keys).zip(results.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let mut args = vec![ws.clone(), jobs.clone()];
        args.extend(recipe.build_args.iter().cloned());
        let name = format!("build {}", recipe.platform);
        let elapsed = runner.run(&Step {
            name: &name,
            script: &recipe.build_script,
            args: &args,
            cwd: work,
            env: &recipe.env,
        })?;
        let image = tree.join(&recipe.output);
        if !image.exists() {
            return Err(FirmwareError::MissingOutput(image));
        }
        let (size, sha256) = sha256_file(&image)?;
        let record = BuildRecord {
            platform: recipe.platform,
            file: file_name(recipe.platform).to_owned(),
            sha256,
            size,
            cache_key: key.clone(),
            source_package: lock.source.package.clone(),
            source_version: lock.source.version.clone(),
            sources: lock.source.files.clone(),
            recipe: recipe.clone(),
            toolchain: toolchain.clone(),
            env: identity.to_owned(),
            prepare_seconds: prepare.as_secs_f64(),
            build_seconds: elapsed.as_secs_f64(),
            jobs: opts.jobs,
        };
        *slot = Some(store_entry(entries, key, &image, record)?);
    }
    drop(alias);
    Ok(())
}

/// Puts an image and its record into the cache under `key`, unless an entry is already there
/// (then the existing entry stays and the new image is returned from a sibling file so that the
/// caller can compare the two).
fn store_entry(
    entries: &Path,
    key: &CacheKey,
    image: &Path,
    record: BuildRecord,
) -> Result<BuiltFirmware, FirmwareError> {
    let dir = entries.join(&key.0);
    let file = file_name(record.platform);
    if dir.exists() {
        let fresh = entries.join(format!("{}.rebuilt-{file}", key.0));
        copy_atomically(image, &fresh)?;
        return Ok(BuiltFirmware {
            path: fresh,
            record,
            from_cache: false,
            cached_sha256: None,
        });
    }
    let staging = tempfile::Builder::new()
        .prefix(".entry-")
        .tempdir_in(entries)
        .map_err(|e| FirmwareError::io("creating a temporary directory in", entries, e))?;
    fs::copy(image, staging.path().join(file))
        .map_err(|e| FirmwareError::io("copying", image, e))?;
    write_record(&staging.path().join(RECORD), &record)?;
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, &dir) {
        let _ = fs::remove_dir_all(&staged);
        // Another build stored the same key meanwhile: its entry stands.
        if !dir.exists() {
            return Err(FirmwareError::io("renaming into place", &dir, e));
        }
    }
    Ok(BuiltFirmware {
        path: dir.join(file),
        record,
        from_cache: false,
        cached_sha256: None,
    })
}

/// Copies built images and their records into `out`: `<platform file>` and
/// `<platform file>.json`. Returns the written image paths.
pub fn export(built: &[BuiltFirmware], out: &Path) -> Result<Vec<PathBuf>, FirmwareError> {
    fs::create_dir_all(out).map_err(|e| FirmwareError::io("creating directory", out, e))?;
    let mut written = Vec::new();
    for b in built {
        let dest = out.join(&b.record.file);
        copy_atomically(&b.path, &dest)?;
        write_record(&out.join(format!("{}.json", b.record.file)), &b.record)?;
        written.push(dest);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn record(platform: Platform, data: &[u8]) -> BuildRecord {
        use sha2::{Digest, Sha256};
        BuildRecord {
            platform,
            file: file_name(platform).to_owned(),
            sha256: hex::encode(Sha256::digest(data)),
            size: data.len() as u64,
            cache_key: CacheKey("k".repeat(64)),
            source_package: "edk2".into(),
            source_version: "1".into(),
            sources: Vec::new(),
            recipe: Recipe::new(platform, 0),
            toolchain: Toolchain(BTreeMap::new()),
            env: "host".into(),
            prepare_seconds: 1.0,
            build_seconds: 2.0,
            jobs: 2,
        }
    }

    #[test]
    fn stored_entries_load_back_and_tampering_is_detected() {
        let cache = tempfile::tempdir().unwrap();
        let image = cache.path().join("OVMF.fd");
        fs::write(&image, b"firmware").unwrap();
        let key = CacheKey("a".repeat(64));
        let stored = store_entry(
            cache.path(),
            &key,
            &image,
            record(Platform::Snp, b"firmware"),
        )
        .unwrap();
        assert_eq!(stored.path, cache.path().join(&key.0).join("ovmf-snp.fd"));

        let loaded = load_entry(&cache.path().join(&key.0), Platform::Snp)
            .unwrap()
            .expect("entry present");
        assert!(loaded.from_cache);
        assert_eq!(loaded.record, stored.record);

        fs::write(&stored.path, b"firmwarE").unwrap();
        let err = load_entry(&cache.path().join(&key.0), Platform::Snp).unwrap_err();
        assert!(matches!(err, FirmwareError::CacheCorrupt { .. }), "{err}");
        assert!(err.to_string().contains(&stored.record.sha256), "{err}");
    }

    #[test]
    fn an_existing_entry_is_kept_and_a_rebuild_lands_beside_it() {
        let cache = tempfile::tempdir().unwrap();
        let image = cache.path().join("OVMF.fd");
        fs::write(&image, b"one").unwrap();
        let key = CacheKey("b".repeat(64));
        store_entry(cache.path(), &key, &image, record(Platform::Tdx, b"one")).unwrap();
        fs::write(&image, b"two").unwrap();
        let again = store_entry(cache.path(), &key, &image, record(Platform::Tdx, b"two")).unwrap();
        assert_ne!(again.path, cache.path().join(&key.0).join("ovmf-tdx.fd"));
        assert_eq!(fs::read(&again.path).unwrap(), b"two");
        let kept = load_entry(&cache.path().join(&key.0), Platform::Tdx)
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(kept.path).unwrap(), b"one");
    }

    #[test]
    fn missing_entries_are_a_miss_not_an_error() {
        let cache = tempfile::tempdir().unwrap();
        assert!(
            load_entry(&cache.path().join("none"), Platform::Snp)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn workspace_alias_has_the_recipe_length_and_points_at_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let alias =
            WorkspaceAlias::new(tree.path(), super::super::recipe::WORKSPACE_ALIAS_LEN).unwrap();
        assert_eq!(fs::read_link(&alias.link).unwrap(), tree.path());
        let dir = alias.link.parent().unwrap().to_owned();
        drop(alias);
        assert!(!dir.exists(), "the alias is removed with its guard");
    }

    #[test]
    fn export_writes_image_and_record() {
        let cache = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let image = cache.path().join("OVMF.fd");
        fs::write(&image, b"fw").unwrap();
        let built = store_entry(
            cache.path(),
            &CacheKey("c".repeat(64)),
            &image,
            record(Platform::Snp, b"fw"),
        )
        .unwrap();
        let written = export(std::slice::from_ref(&built), out.path()).unwrap();
        assert_eq!(written, [out.path().join("ovmf-snp.fd")]);
        assert_eq!(fs::read(&written[0]).unwrap(), b"fw");
        let json: BuildRecord =
            serde_json::from_slice(&fs::read(out.path().join("ovmf-snp.fd.json")).unwrap())
                .unwrap();
        assert_eq!(json, built.record);
        let mode = fs::metadata(out.path().join("ovmf-snp.fd.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "records are readable outputs");
    }
}
