//! Replays the committed corpus (`fuzz/corpus/<target>/`) through every target: what the fuzzer
//! found interesting once stays tested in `make test`, with no fuzzing engine.

use std::path::Path;

#[test]
fn every_target_replays_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut total = 0;
    for (name, target) in tessera_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of {name} at {}: {e}", dir.display()))
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        files.sort();
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        for f in &files {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("target {name} fails on {}", f.display());
            }
        }
        total += files.len();
    }
    println!("replayed {total} inputs");
}

/// Edge inputs every target must take without a finding (empty, mode bytes only, a truncated
/// token, JSON of the wrong shape, long garbage).
#[test]
fn targets_accept_arbitrary_bytes() {
    for (_, target) in tessera_fuzz::TARGETS {
        for data in [&b""[..], b"\x00", b"\x01", b"\x02\x02\x01i\x00\x00\x06\x20", b"{\"i\":1}", &[0xff; 300]]
        {
            target(data);
        }
    }
}
