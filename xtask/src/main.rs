//! Developer tasks: `cargo xtask build-ebpf | test | lint | fuzz | demo | bench`.
//!
//! Every task first checks the toolchain the kernel side needs (nightly with rust-src, and
//! bpf-linker built against the nightly's own LLVM) and installs what is missing, saying so.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod lint;
mod toolchain;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the XDP programs (dslite-ebpf) for bpfel-unknown-none.
    BuildEbpf {
        /// Accepted for clarity: the kernel object is always built optimised (debug BPF
        /// builds do not pass the verifier).
        #[arg(long)]
        release: bool,
    },
    /// Run every test: host unit tests, BPF_PROG_TEST_RUN fixtures, veth end-to-end.
    Test {
        /// Only run privileged tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Clippy with warnings denied on the host crates and on the BPF crate (CI runs it).
    Lint,
    /// Fuzz both XDP programs with BPF_PROG_TEST_RUN for longer than CI does: the same test
    /// (`tests/tests/fuzz.rs`), with more frames and any seed.
    Fuzz {
        /// Random frames per program (CI runs 200000 through the B4, 50000 through the
        /// AFTR). The AFTR takes about 0.4 ms a frame.
        #[arg(long, default_value_t = 500_000)]
        iterations: u64,
        /// PRNG seed (decimal or 0x-hex); a failure prints the seed that found it.
        #[arg(long)]
        seed: Option<String>,
        /// Fail on the known defects the test lists as well.
        #[arg(long)]
        strict: bool,
        /// Only `aftr` or `b4`.
        #[arg(long)]
        program: Option<String>,
        /// Replay one frame (IFACE:HEX, as a failure prints it) after the seeds; needs
        /// --program.
        #[arg(long)]
        frame: Option<String>,
    },
    /// Build everything, create the veth topology, run two B4s and the AFTR, show traffic.
    Demo,
    /// Measure per-path cost, end-to-end forwarding against the kernel, and state scale;
    /// print a table and write target/bench.json (docs/benchmarks.md).
    Bench,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf { .. } => {
            toolchain::ensure()?;
            build_ebpf(Features::Production)?;
        }
        Cmd::Test { filter } => test(filter)?,
        Cmd::Lint => lint::lint()?,
        Cmd::Fuzz {
            iterations,
            seed,
            strict,
            program,
            frame,
        } => fuzz(iterations, seed, strict, program, frame)?,
        Cmd::Demo => demo()?,
        Cmd::Bench => bench()?,
    }
    Ok(())
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where `build-ebpf` leaves the kernel object.
pub fn object_path() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/dslite")
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Which programs the kernel object holds.
#[derive(Clone, Copy, PartialEq)]
enum Features {
    /// The programs the controller attaches (what test, demo and CI use).
    Production,
    /// Those plus the benchmark baseline and probes (dslite-ebpf feature `bench`).
    Bench,
}

fn build_ebpf(features: Features) -> Result<()> {
    let bench = features == Features::Bench;
    println!(
        "xtask: building the XDP programs (dslite-ebpf, bpfel-unknown-none, release{})",
        if bench {
            ", with the benchmark programs"
        } else {
            ""
        }
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        // BTF with func_info: the kernel needs it for bpf_loop callbacks (the same
        // flags aya-build uses).
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args([
            "+nightly",
            "build",
            "-p",
            "dslite-ebpf",
            "--bin",
            "dslite",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ]);
    if bench {
        cmd.args(["--features", "bench"]);
    }
    run_cmd(&mut cmd)?;
    println!("xtask: kernel object at {}", object_path().display());
    Ok(())
}

/// Build the controller (it embeds the kernel object) and the test binaries.
fn build_host() -> Result<()> {
    println!("xtask: building the controller with the kernel object embedded");
    run_cmd(
        Command::new("cargo")
            .current_dir(root())
            .env("DSLITE_BPF_OBJECT", object_path())
            .args([
                "build",
                "--release",
                "-p",
                "dslite-user",
                "-p",
                "dslite-tests",
                "--bins",
            ]),
    )
}

fn require_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "the BPF and veth tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): \
             refusing to report success without running them"
        );
    }
    toolchain::ensure_system_tools()?;
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn test(filter: Option<String>) -> Result<()> {
    toolchain::ensure()?;
    require_privileges()?;
    println!("xtask: host unit tests");
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "dslite-ebpf",
        "--exclude",
        "dslite-tests",
    ]))?;
    build_ebpf(Features::Production)?;
    build_host()?;
    println!(
        "xtask: privileged tests (BPF_PROG_TEST_RUN fixtures, veth end-to-end), one at a time"
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("DSLITE_BPF_OBJECT", object_path())
        .env("DSLITE_BIN", root().join("target/release/dslite"))
        .env("DSLITE_REQUIRE_PRIVILEGED", "1")
        .args([
            "test",
            "--release",
            "-p",
            "dslite-tests",
            "--",
            "--test-threads=1",
        ]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run_cmd(&mut cmd)?;
    println!("xtask: all tests passed");
    Ok(())
}

fn fuzz(
    iterations: u64,
    seed: Option<String>,
    strict: bool,
    program: Option<String>,
    frame: Option<String>,
) -> Result<()> {
    if frame.is_some() && program.is_none() {
        bail!("--frame needs --program aftr|b4");
    }
    toolchain::ensure()?;
    require_privileges()?;
    build_ebpf(Features::Production)?;
    let filter = match program.as_deref() {
        None => "fuzz_",
        Some("aftr") => "fuzz_aftr",
        Some("b4") => "fuzz_b4",
        Some(p) => bail!("--program {p}: aftr or b4"),
    };
    println!("xtask: fuzzing with {iterations} frames per program");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("DSLITE_BPF_OBJECT", object_path())
        .env("DSLITE_REQUIRE_PRIVILEGED", "1")
        .env("DSLITE_FUZZ_ITERATIONS", iterations.to_string())
        .args([
            "test",
            "--release",
            "-p",
            "dslite-tests",
            "--test",
            "fuzz",
            "--",
            "--test-threads=1",
            "--nocapture",
            filter,
        ]);
    if let Some(s) = seed {
        cmd.env("DSLITE_FUZZ_SEED", s);
    }
    if strict {
        cmd.env("DSLITE_FUZZ_STRICT", "1");
    }
    if let Some(f) = frame {
        cmd.env("DSLITE_FUZZ_FRAME", f);
    }
    run_cmd(&mut cmd)
}

fn demo() -> Result<()> {
    toolchain::ensure()?;
    require_privileges()?;
    build_ebpf(Features::Production)?;
    build_host()?;
    run_cmd(
        Command::new(root().join("target/release/dslite-demo"))
            .env("DSLITE_BIN", root().join("target/release/dslite")),
    )
}

fn bench() -> Result<()> {
    toolchain::ensure()?;
    require_privileges()?;
    toolchain::ensure_bench_tools()?;
    build_ebpf(Features::Bench)?;
    build_host()?;
    println!("xtask: benchmarks (a few minutes; keep the machine otherwise idle)");
    run_cmd(
        Command::new(root().join("target/release/dslite-bench"))
            .current_dir(root())
            .env("DSLITE_BPF_OBJECT", object_path())
            .env("DSLITE_BIN", root().join("target/release/dslite"))
            .env("DSLITE_BENCH_JSON", root().join("target/bench.json")),
    )
}
