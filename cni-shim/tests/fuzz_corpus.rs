//! Replays the `cni` fuzz corpus (`fuzz/seeds/cni/`) and every crash the fuzzer ever found
//! (`fuzz/regressions/cni/`) through the same body cargo-fuzz runs
//! (`cni_shim::fuzz_targets::cni`), so CI exercises it on stable without cargo-fuzz.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_cni_seed_and_regression_runs_clean() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let seeds = files(&fuzz.join("seeds/cni"));
    assert!(
        seeds.len() >= 4,
        "no seeds for the cni fuzz target in fuzz/seeds/cni"
    );
    // The seeds reach the accepting paths, where the invariants are checked.
    let accepted = seeds.iter().any(|p| {
        let data = std::fs::read(p).unwrap();
        let stdin = data.split(|&b| b == 0).nth(1).unwrap_or(&[]);
        cni_shim::config::NetConf::parse(stdin).is_ok()
    });
    assert!(
        accepted,
        "no seed in fuzz/seeds/cni holds a valid network config"
    );
    let regressions = files(&fuzz.join("regressions/cni"));
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        let r = std::panic::catch_unwind(|| cni_shim::fuzz_targets::cni(&data));
        assert!(r.is_ok(), "fuzz target cni panics on {}", path.display());
    }
}
