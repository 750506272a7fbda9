//! The `overlayd-cni` binary: process I/O around `cni_shim::execute`.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    // A runtime that passes no stdin (VERSION) gives EOF; a read error leaves what was read.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = cni_shim::execute(|k| std::env::var(k).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
