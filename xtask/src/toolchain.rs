//! Install what building the kernel side needs, if missing, and say so:
//! - the nightly toolchain with `rust-src` (for `-Z build-std=core`);
//! - `bpf-linker`, built against the nightly's own LLVM (the major version is read from
//!   `rustc +nightly -vV`, never hard-coded), as ../shared/reference/platform.md records.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{root, run_cmd};

/// bpf-linker release known to work with aya 0.14 and LLVM 22 on these machines.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ensure() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("xtask: installing the nightly toolchain (needed for -Z build-std)");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    ensure_nightly_component("rust-src", "needed for -Z build-std=core")?;
    let llvm_major = nightly_llvm_major()?;
    // bpf-linker links the nightly's libLLVM dynamically: rustc finds it through the
    // toolchain's library path, so the check must run with that path too.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = std::path::Path::new(sysroot.trim()).join("lib");
    match Command::new("bpf-linker")
        .arg("--version")
        .env("LD_LIBRARY_PATH", &libdir)
        .output()
    {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            if !v.contains(&format!("LLVM {llvm_major}")) && v.contains("LLVM") {
                println!(
                    "xtask: note: bpf-linker reports '{}', nightly uses LLVM {llvm_major}",
                    v.trim()
                );
            }
        }
        _ => install_bpf_linker(llvm_major)?,
    }
    Ok(())
}

fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let ver = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV does not name its LLVM version")?;
    ver.split('.')
        .next()
        .unwrap_or("")
        .parse()
        .context("parsing the LLVM major version")
}

fn install_bpf_linker(major: u32) -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = std::path::Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("libLLVM.so.{major}"))
                    || n.starts_with(&format!("libLLVM-{major}"))
            })
        })
        .with_context(|| format!("no libLLVM {major} in {}", lib.display()))?;
    let prefix = root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({}); about a minute",
        llvm.display()
    );
    run_cmd(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )
}

/// The tests and the demo use iproute2 (`ip`) and nothing else from the system.
pub fn ensure_system_tools() -> Result<()> {
    if Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    println!("xtask: installing iproute2 (the tests build veth/netns topologies with `ip`)");
    run_cmd(Command::new("apt-get").arg("update"))?;
    run_cmd(Command::new("apt-get").args(["install", "-y", "iproute2"]))
}

/// Add a rustup component to the nightly toolchain if it is missing (CI installs nightly
/// with the minimal profile).
pub fn ensure_nightly_component(name: &str, why: &str) -> Result<()> {
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if comps.lines().any(|l| l.starts_with(name)) {
        return Ok(());
    }
    println!("xtask: installing {name} for nightly ({why})");
    run_cmd(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))
}

/// The benchmarks compare against the kernel's NAT (`nft`) and read the kernel's
/// per-program statistics (`bpftool`).
pub fn ensure_bench_tools() -> Result<()> {
    let missing: Vec<&str> = [("nft", "nftables"), ("bpftool", "bpftool")]
        .into_iter()
        .filter(|(tool, _)| {
            !Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "xtask: installing {} (the benchmark needs them)",
        missing.join(" ")
    );
    run_cmd(Command::new("apt-get").arg("update"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing),
    )
}
