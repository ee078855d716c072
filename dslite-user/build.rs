//! Embed the kernel object built by `cargo xtask build-ebpf`, if it exists.
//!
//! The host build never compiles BPF itself: without the object the controller still builds
//! and tells the user at run time to run `cargo xtask build-ebpf` (or to pass
//! `--bpf-object`).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("dslite.bpf.o");
    let src = match env::var("DSLITE_BPF_OBJECT") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
            let target = env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| manifest.join("../target"));
            target.join("bpfel-unknown-none/release/dslite")
        }
    };
    println!("cargo:rerun-if-env-changed=DSLITE_BPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=no kernel object at {}: run `cargo xtask build-ebpf` first",
                src.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}
