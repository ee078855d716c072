//! Test support for dslite: network namespaces and veth topologies that clean up after
//! themselves, controllers spawned inside namespaces, traffic generators and servers of our
//! own (no external tools but iproute2), and packet builders for BPF_PROG_TEST_RUN.
//!
//! The tests live in `tests/tests/*.rs` (the BPF_PROG_TEST_RUN fixtures in
//! `tests/tests/fixtures/`, one module per step of the packet path) and run through
//! `cargo xtask test` as root.

pub mod ctl;
pub mod fixture;
pub mod fuzz;
pub mod ipfix;
pub mod leftovers;
pub mod mapdump;
pub mod netns;
pub mod observe;
pub mod packets;
pub mod topo;
pub mod traffic;
pub mod wellformed;

/// Fail loudly when a privileged test cannot run: under `cargo xtask test` (and so in CI)
/// a missing capability is an error, never a silent pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run it through `cargo xtask test`"
    );
}

/// Path of the kernel object (set by `cargo xtask test`).
pub fn bpf_object() -> std::path::PathBuf {
    std::env::var_os("DSLITE_BPF_OBJECT")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpfel-unknown-none/release/dslite")
        })
}

/// Path of the `dslite` binary (set by `cargo xtask test`).
pub fn dslite_bin() -> std::path::PathBuf {
    std::env::var_os("DSLITE_BIN")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/dslite")
        })
}

/// A fresh directory for one test's files (logs, sockets, configs), removed when dropped.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(unique(tag));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        ScratchDir(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name unique to this process and call, short enough for interface and netns names.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "dsl{}{}{tag}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// What machine a benchmark ran on: kernel, CPU model, CPU count.
pub fn bench_machine() -> serde_json::Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "kernel": kernel.trim(), "cpu": model, "cpus": cpus })
}
