//! Runs the fuzz target's function over the committed corpus (`fuzz/corpus/webhook_parse`),
//! so the corpus is exercised on stable without cargo-fuzz. Files named `ok-*` must parse,
//! `err-*` must fail with an error; nothing may panic, including every truncation and a
//! deterministic set of byte flips of each file.

use std::path::Path;

use cairn_vcs::{parse_framed, VcsError};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/webhook_parse");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("dir entry").path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "corpus has {} files", files.len());
    files
}

#[test]
fn corpus_files_parse_as_named() {
    for (name, data) in corpus() {
        let result = parse_framed(&data);
        if name.starts_with("ok-") {
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("err-") {
            let err = result.expect_err(&name);
            assert!(
                matches!(
                    err,
                    VcsError::MalformedPayload { .. } | VcsError::UnknownEvent { .. }
                ),
                "{name}: {err}"
            );
        } else {
            panic!("{name}: corpus files are named ok-* or err-*");
        }
    }
}

#[test]
fn truncations_and_flips_never_panic() {
    let mut runs = 0usize;
    for (_, data) in corpus() {
        for len in 0..=data.len() {
            let _ = parse_framed(&data[..len]);
            runs += 1;
        }
        // A fixed xorshift sequence: reproducible, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut d = data.clone();
            let i = (x as usize) % d.len();
            d[i] = (x >> 32) as u8;
            let _ = parse_framed(&d);
            runs += 1;
        }
    }
    assert!(runs > 1000);
}
