//! Every `cargo fuzz` target's body run as an ordinary test: over the
//! checked-in corpus (`fuzz/corpus/<target>/`, including every input a
//! fuzzer ever crashed on, kept as a regression), plus a fixed set of
//! pseudo-random inputs, so CI exercises the targets on every run.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    // Read at run time: a test binary built from another checkout sharing
    // the target directory must still find this checkout's corpus.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let dir = Path::new(&manifest).join("../../fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus for {target}");
    out
}

fn random_inputs(seed: u64, n: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = (next() as usize) % max_len;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

fn run(target: &str, body: fn(&[u8]), seed: u64, n: usize, max_len: usize) {
    for (name, data) in corpus(target) {
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "fuzz/corpus/{target}/{name} failed");
    }
    for data in random_inputs(seed, n, max_len) {
        body(&data);
    }
}

#[test]
fn merge_marks_corpus() {
    run(
        "merge_marks",
        readmark::fuzzing::merge_marks_target,
        1,
        2_000,
        120,
    );
}

#[test]
fn merge_receipts_corpus() {
    run(
        "merge_receipts",
        readmark::fuzzing::merge_receipts_target,
        5,
        2_000,
        120,
    );
}

#[test]
fn decoders_corpus() {
    run("decoders", readmark::fuzzing::decoders_target, 2, 2_000, 60);
}

#[test]
fn journal_corpus() {
    run("journal", readmark::fuzzing::journal_target, 3, 500, 400);
}

#[test]
fn slots_corpus() {
    run("slots", readmark::fuzzing::slots_target, 6, 500, 600);
}

#[test]
fn api_ops_corpus() {
    run("api_ops", readmark::fuzzing::api_target, 4, 400, 256);
}

#[test]
fn api_restart_corpus() {
    run(
        "api_restart",
        readmark::fuzzing::api_restart_target,
        7,
        60,
        256,
    );
}
