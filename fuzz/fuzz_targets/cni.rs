#![no_main]
//! The CNI plugin's input parsing: the network config on stdin and the CNI_* environment.
//! Input: `[env block]\0[stdin]`. The body and its invariants live in
//! `cni_shim::fuzz_targets::cni`, which `cni-shim/tests/fuzz_corpus.rs` replays in CI.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_shim::fuzz_targets::cni(data));
