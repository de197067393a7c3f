//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/*`, the seeds and every input
//! the fuzzer kept or that once crashed) through the targets' checks, on stable Rust.

use std::path::Path;

#[test]
fn corpus_replays_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, check) in ovl_fuzz::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{target}: only {} inputs", files.len());
        for f in &files {
            let data = std::fs::read(f).expect("corpus file");
            let run = std::panic::catch_unwind(|| check(&data));
            assert!(run.is_ok(), "{target}: {} fails its check", f.display());
        }
        eprintln!("{target}: {} inputs replayed", files.len());
    }
}
