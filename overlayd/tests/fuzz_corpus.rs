//! Replays the fuzz seed corpus (`fuzz/seeds/<target>/`) and every crash the fuzzer ever found
//! (`fuzz/regressions/<target>/`) through the same target bodies cargo-fuzz runs
//! (`overlayd::fuzz_targets`), so CI exercises them on stable without cargo-fuzz.

use std::path::{Path, PathBuf};

use overlayd::fuzz_targets::TARGETS;

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
fn every_seed_and_regression_runs_clean() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut total = 0;
    for (name, target) in TARGETS {
        let seeds = files(&fuzz.join("seeds").join(name));
        assert!(
            !seeds.is_empty(),
            "no seeds for fuzz target {name} in fuzz/seeds/{name}: run fuzz/seeds/make_seeds.py"
        );
        let regressions = files(&fuzz.join("regressions").join(name));
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            // A panic names the file, so a failure is reproducible with `cargo fuzz run`.
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "fuzz target {name} panics on {}", path.display());
            total += 1;
        }
    }
    eprintln!("replayed {total} corpus files");
}
