//! Arbitrary bytes and event names into the webhook parser: it must never panic.
//! Input format: see `cairn_vcs::parse_framed` (provider line, event line, body).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Errors are expected for most inputs; only a panic is a finding.
    let _ = cairn_vcs::parse_framed(data);
});
