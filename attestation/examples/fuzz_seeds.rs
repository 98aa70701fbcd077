//! Writes the seed corpora of the cargo-fuzz targets (fuzz/): simulated evidence made now and
//! hand-written inputs, `cargo run -p chrysalis-attestation --example fuzz_seeds -- fuzz/corpus`,
//! which the repository keeps. With `--recorded`, only the seeds read from recorded vectors where
//! they ship, for a scratch corpus outside the repository: recorded vectors are never copied
//! into it.

use std::path::PathBuf;

use chrysalis_testkit::fuzz;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let recorded = args.iter().any(|a| a == "--recorded");
    args.retain(|a| a != "--recorded");
    let [dir] = &args[..] else {
        eprintln!("usage: fuzz_seeds [--recorded] CORPUS_DIR");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    for s in fuzz::seeds().into_iter().filter(|s| s.recorded == recorded) {
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
