//! overlayd-cni runs on the host with the host's libc, so the binary the image ships must not
//! depend on one (issue 10 item 8): the build deploy/Dockerfile uses (deploy/build-cni-static.sh)
//! yields an ELF with no program interpreter and no needed shared libraries, and it runs.
//! No root needed.

mod common;

use std::process::{Command, Stdio};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;

fn u16_at(b: &[u8], o: usize) -> usize {
    usize::from(u16::from_le_bytes(b[o..o + 2].try_into().unwrap()))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// (has PT_INTERP, number of DT_NEEDED entries) of a 64-bit little-endian ELF file.
fn elf_dynamic_deps(b: &[u8]) -> (bool, usize) {
    assert_eq!(&b[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((b[4], b[5]), (2, 1), "expected ELF64 little-endian");
    let phoff = usize::try_from(u64_at(b, 0x20)).unwrap();
    let (phentsize, phnum) = (u16_at(b, 0x36), u16_at(b, 0x38));
    let mut interp = false;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(b, ph) {
            PT_INTERP => interp = true,
            PT_DYNAMIC => {
                let off = usize::try_from(u64_at(b, ph + 8)).unwrap();
                let size = usize::try_from(u64_at(b, ph + 32)).unwrap();
                needed += b[off..off + size]
                    .chunks_exact(16)
                    .filter(|e| u64_at(e, 0) == DT_NEEDED)
                    .count();
            }
            _ => {}
        }
    }
    (interp, needed)
}

#[test]
fn shipped_cni_plugin_is_static() {
    let path = common::cni_plugin();
    let bytes = std::fs::read(&path).unwrap();
    let (interp, needed) = elf_dynamic_deps(&bytes);
    assert!(
        !interp,
        "{} has a program interpreter (dynamically linked)",
        path.display()
    );
    assert_eq!(needed, 0, "{} needs shared libraries", path.display());
    // The ELF reader itself tells a dynamic binary apart (the control case).
    let (interp, needed) = elf_dynamic_deps(&std::fs::read(common::OVERLAYD).unwrap());
    assert!(interp && needed > 0, "overlayd is expected to be dynamic");
    // `ldd` agrees where it exists.
    if let Ok(out) = Command::new("ldd").arg(&path).output() {
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("statically linked") || text.contains("not a dynamic executable"),
            "{text}"
        );
    }
    // And it works.
    let out = Command::new(&path)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
fn dockerfile_ships_the_static_build() {
    let df = include_str!("../../deploy/Dockerfile");
    assert!(df.contains("deploy/build-cni-static.sh release"), "{df}");
    assert!(df.contains("/out/overlayd-cni"));
    // The image checks it too, so a dynamic binary can never be shipped.
    assert!(df.contains("Requesting program interpreter"), "{df}");
}
