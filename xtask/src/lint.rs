//! `cargo xtask lint`: clippy with warnings denied, on the host crates and on the BPF crate
//! for its real target (as aya-template's CI does), beside `cargo fmt --check` in `.ci/run`.

use std::process::Command;

use anyhow::Result;

use crate::{root, run_cmd, toolchain};

pub fn lint() -> Result<()> {
    toolchain::ensure()?;
    toolchain::ensure_nightly_component("clippy", "lints the BPF crate")?;
    println!("xtask: clippy, host crates (warnings are errors)");
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--release",
        "--all-targets",
        "-p",
        "dslite-common",
        "-p",
        "dslite-user",
        "-p",
        "dslite-tests",
        "-p",
        "xtask",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Both builds of the BPF crate: the production object, and the bench build with its
    // probes (`--features bench`), which `cargo xtask test` does not compile.
    for features in [&[][..], &["--features", "bench"][..]] {
        println!(
            "xtask: clippy, dslite-ebpf for bpfel-unknown-none {} (warnings are errors)",
            features.join(" ")
        );
        run_cmd(
            Command::new("cargo")
                .current_dir(root())
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC")
                .args([
                    "+nightly",
                    "clippy",
                    "-p",
                    "dslite-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                ])
                .args(features)
                .args(["--", "-D", "warnings"]),
        )?;
    }
    Ok(())
}
