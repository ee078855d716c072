//! `cargo xtask bench`: what each path costs, against a baseline, and how the NAT scales.
//! Prints a table and writes `target/bench.json`. docs/benchmarks.md explains the figures.
//!
//! Every per-packet figure is the kernel's own measurement of one BPF_PROG_TEST_RUN
//! (`duration`), median of many runs, each on a fresh copy of the frame: a repeat would run on
//! the frame the previous run changed (platform.md). The no-op program measured the same way
//! is the harness's own cost, subtracted to give the program's.

mod end_to_end;
mod per_path;
mod scale;

use std::{
    net::Ipv6Addr,
    sync::{Arc, Mutex},
};

use dslite_tests::fixture::*;

const RUNS: usize = 20_000;

#[derive(Clone, Debug)]
struct Row {
    name: String,
    /// Median kernel-measured ns per run, harness included.
    raw_ns: f64,
    /// Minus the no-op program's: the program's own cost.
    net_ns: f64,
}

impl Row {
    /// A path measured at `raw_ns`, with the no-op program at `noop_ns` in the same rig.
    fn new(name: &str, raw_ns: f64, noop_ns: f64) -> Row {
        Row {
            name: name.into(),
            raw_ns,
            net_ns: (raw_ns - noop_ns).max(0.0),
        }
    }
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// Median ns of `prog` on each frame of `frames` (cycled to `RUNS` runs), checking the verdict.
fn time(rig: &Rig, prog: &str, iface: &str, frames: &[Vec<u8>], want: u32) -> f64 {
    let mut v = Vec::with_capacity(RUNS);
    for i in 0..RUNS.max(frames.len()) {
        let (verdict, ns) = rig.time_once(prog, iface, &frames[i % frames.len()]);
        assert_eq!(verdict, want, "{prog} on {iface}: verdict");
        v.push(ns);
    }
    median(v)
}

/// The `i`-th B4 address of the bench: b4a's, with `i + 2` in its last 32 bits.
fn nth_b4(i: u32) -> Ipv6Addr {
    let mut o = B4A.parse::<Ipv6Addr>().unwrap().octets();
    o[12..16].copy_from_slice(&(i + 2).to_be_bytes());
    Ipv6Addr::from(o)
}

/// 64-byte frames (Ethernet included) for the inner UDP: 64 - 14 - 28 = 22 bytes of payload
/// for plain IPv4, and the same inner packet inside the softwire.
const PAYLOAD: usize = 22;

fn main() {
    dslite_tests::require_root();
    // The per-path timings are BPF_PROG_TEST_RUN of the XDP programs (and their no-op and
    // baseline programs, which exist for XDP only); the tc hook is measured end to end, on
    // real traffic, with bpf_stats (end_to_end.rs).
    std::env::set_var("DSLITE_FIXTURE_HOOKS", "xdp");
    let mut rows = per_path::b4_paths();
    let (aftr_rows, scale) = aftr();
    rows.extend(aftr_rows);
    let e2e = end_to_end::run();
    report(&rows, &scale, e2e);
}

/// The AFTR's paths, then the NAT tables at scale, in one rig: the scale fills its tables on
/// top of the mappings the paths made.
fn aftr() -> (Vec<Row>, Vec<serde_json::Value>) {
    let out = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let o = out.clone();
    with_aftr_cfg(
        |s| {
            s.max_mappings = 1_250_000;
            s.max_blocks = 8;
            // Each nth_b4(i) is a subscriber of its own, as the per-path rows assume.
            s.subscriber_prefix_len = 128;
        },
        move |rig| {
            let paths = per_path::aftr_paths(rig);
            let scale = scale::nat_tables(rig, &paths);
            *o.lock().unwrap() = (paths.rows, vec![scale]);
        },
    );
    let out = std::mem::take(&mut *out.lock().unwrap());
    out
}

/// Prints the per-path and scale tables and writes everything, `e2e` included, as JSON.
fn report(rows: &[Row], scale: &[serde_json::Value], e2e: serde_json::Value) {
    let base = rows
        .iter()
        .find(|r| r.name.starts_with("baseline"))
        .map_or(1.0, |r| r.net_ns.max(1.0));
    println!("\nPer-path cost (median of {RUNS} BPF_PROG_TEST_RUN runs, kernel-measured)");
    println!(
        "{:<40} {:>8} {:>8} {:>10} {:>9}",
        "path", "raw ns", "net ns", "Mpps/core", "x base"
    );
    for r in rows {
        println!(
            "{:<40} {:>8.0} {:>8.0} {:>10.1} {:>9.2}",
            r.name,
            r.raw_ns,
            r.net_ns,
            if r.net_ns > 0.0 {
                1e3 / r.net_ns
            } else {
                f64::INFINITY
            },
            r.net_ns / base
        );
    }
    println!("\nState scale");
    for s in scale {
        println!(
            "NAT tables: {} bytes locked for {} mappings = {:.0} bytes per mapping; new mappings: {:.0}/s on one core",
            s["nat_maps_memlock_bytes"], s["table_capacity"], s["bytes_per_mapping"].as_f64().unwrap_or(0.0),
            s["new_mappings_per_second_one_core"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{:>10} {:>12} {:>12} {:>10}",
            "mappings", "out net ns", "in net ns", "sweep ms"
        );
        for b in s["by_size"].as_array().unwrap() {
            println!(
                "{:>10} {:>12.0} {:>12.0} {:>10.1}",
                b["mappings"],
                b["outbound_ns"].as_f64().unwrap(),
                b["inbound_ns"].as_f64().unwrap(),
                b["sweep_ms"].as_f64().unwrap()
            );
        }
    }
    let json = serde_json::json!({
        "machine": dslite_tests::bench_machine(),
        "per_path": rows.iter().map(|r| serde_json::json!({
            "path": r.name, "raw_ns": r.raw_ns, "net_ns": r.net_ns,
            "mpps_per_core": if r.net_ns > 0.0 { 1e3 / r.net_ns } else { 0.0 },
            "ratio_to_baseline": r.net_ns / base,
        })).collect::<Vec<_>>(),
        "scale": scale,
        "end_to_end": e2e,
    });
    let path = std::env::var("DSLITE_BENCH_JSON").unwrap_or_else(|_| "target/bench.json".into());
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {path}");
}
