//! Writes the seed corpora of the cargo-fuzz targets (attestation/fuzz) from simulated evidence
//! made now and recorded vectors read where they ship, so no recorded vector is copied into the
//! repository: `cargo run -p chrysalis-attestation --example fuzz_seeds -- attestation/fuzz/corpus`.

use std::path::PathBuf;

use chrysalis_testkit::fuzz;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds CORPUS_DIR");
        std::process::exit(2);
    };
    for s in fuzz::seeds() {
        let target = dir.join(s.target);
        std::fs::create_dir_all(&target)
            .unwrap_or_else(|e| panic!("create {}: {e}", target.display()));
        let path = target.join(&s.name);
        let tmp = target.join(format!(".{}.tmp", s.name));
        std::fs::write(&tmp, &s.data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
        println!("{} ({} bytes)", path.display(), s.data.len());
    }
}
