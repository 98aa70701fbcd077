//! The flavor files and locks committed in the repository: valid, and every lock current with its flavor.

use std::path::Path;

use chrysalis_image::lock::DebSet;
use chrysalis_image::{Flavor, Lock};

fn dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_flavor_file_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir().join("flavors")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (f, _) = Flavor::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                Some(f.name.as_str()),
                path.file_stem().and_then(|s| s.to_str()),
                "name = file stem"
            );
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// CI builds the cpu image from its lock, so the lock must exist, parse, and have been made from the
/// flavor file as it is now (else `cargo xtask image build` refuses it).
#[test]
fn the_cpu_lock_is_valid_and_current() {
    let (flavor, digest) = Flavor::load(&dir().join("flavors/cpu.toml")).unwrap();
    let text = std::fs::read_to_string(dir().join("locks/cpu.lock"))
        .expect("image/locks/cpu.lock is committed");
    let lock = Lock::parse(&text).unwrap();
    assert_eq!(lock.flavor, "cpu");
    assert_eq!(
        lock.flavor_sha256, digest,
        "image/locks/cpu.lock is stale: run `cargo xtask image lock --flavor cpu`"
    );
    assert!(
        lock.kernel
            .release
            .starts_with(&format!("{}.", flavor.kernel.series))
    );
    for p in &flavor.rootfs.packages {
        assert!(
            lock.debs_in(DebSet::Rootfs).any(|d| &d.name == p),
            "{p} is not in the rootfs set"
        );
    }
    for spec in &flavor.python.source_builds {
        assert!(
            lock.built_wheel(&spec.name).is_some(),
            "{} has no built_wheel pin",
            spec.name
        );
    }
    // Rendering what was parsed gives the same bytes: the file is exactly what `image lock` writes.
    assert_eq!(lock.render().unwrap(), text);
}
