//! `cargo xtask bench`: what each path costs, against a baseline, and how the NAT scales.
//! Prints a table and writes `target/bench.json`. docs/benchmarks.md explains the figures.
//!
//! Every per-packet figure is the kernel's own measurement of one BPF_PROG_TEST_RUN
//! (`duration`), the lowest median of blocks of runs ([`median`]), each on a fresh copy of the frame: a repeat would run on
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

/// Runs per block of [`median`].
const BLOCK: usize = 2_000;

/// The lowest median of consecutive blocks of [`BLOCK`] runs (one block when there are
/// fewer). The machine is a shared VM: a block that ran while a neighbour held the CPU
/// measures the neighbour; the quietest block measures the program. Every figure, the
/// no-op program's included, is taken the same way.
fn median(v: Vec<u64>) -> f64 {
    v.chunks(BLOCK)
        .filter(|c| c.len() == BLOCK || v.len() < BLOCK)
        .map(|c| {
            let mut c = c.to_vec();
            c.sort_unstable();
            c[c.len() / 2] as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// [`median`] ns of `prog` on each frame of `frames` (cycled to `RUNS` runs), checking the
/// verdict. The blocks are spread over a quarter of a second ([`PAUSE`] between them):
/// a neighbour's burst on this shared machine lasts longer than one block.
fn time(rig: &Rig, prog: &str, iface: &str, frames: &[Vec<u8>], want: u32) -> f64 {
    let mut v = Vec::with_capacity(RUNS);
    for i in 0..RUNS.max(frames.len()) {
        let (verdict, ns) = rig.time_once(prog, iface, &frames[i % frames.len()]);
        assert_eq!(verdict, want, "{prog} on {iface}: verdict");
        v.push(ns);
        if (i + 1) % BLOCK == 0 {
            std::thread::sleep(PAUSE);
        }
    }
    median(v)
}

/// Between two blocks of runs of [`time`].
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Median ns of `prog` on every CPU at once: thread `i`, pinned to CPU `i`, runs its own
/// `frames[i]` (cycled to `RUNS` runs), checking the verdict. One figure per CPU.
fn time_on_cpus(
    rig: &Rig,
    prog: &str,
    iface: &str,
    frames: &[Vec<Vec<u8>>],
    want: u32,
) -> Vec<f64> {
    std::thread::scope(|s| {
        let threads: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(cpu, f)| {
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    time(rig, prog, iface, f, want)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// The CPUs the two-core rows run on (all of them, at most 2: the bench machine's count).
fn cpus() -> usize {
    online_cpus().min(2)
}

/// CPUs online (not `available_parallelism`, which is this thread's affinity: one, once
/// the bench pinned itself).
fn online_cpus() -> usize {
    // SAFETY: plain libc call.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// A path run on one CPU and on every CPU at once.
#[derive(Clone, Debug)]
struct CoresRow {
    name: String,
    one_core_net_ns: f64,
    /// Net ns on each CPU while all of them run it.
    per_cpu_net_ns: Vec<f64>,
}

impl CoresRow {
    fn new(name: &str, one_core_net_ns: f64, per_cpu_raw_ns: &[f64], noop: f64) -> CoresRow {
        CoresRow {
            name: name.into(),
            one_core_net_ns,
            per_cpu_net_ns: per_cpu_raw_ns.iter().map(|r| (r - noop).max(1.0)).collect(),
        }
    }

    /// Packets per second of all CPUs together, in millions.
    fn aggregate_mpps(&self) -> f64 {
        self.per_cpu_net_ns.iter().map(|ns| 1e3 / ns).sum()
    }

    /// The aggregate against one core's rate (the target is 1.8 on two).
    fn scaling(&self) -> f64 {
        self.aggregate_mpps() / (1e3 / self.one_core_net_ns.max(1.0))
    }
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
    // One CPU for the one-core rows: a run that migrates between CPUs mixes their caches
    // (the two-core rows pin a thread per CPU).
    pin_to_cpu(0);
    // DSLITE_BENCH_ONLY=per-path, scarce, end-to-end or ten-million: one part alone (a minute or three), to
    // iterate; the full run is what docs/benchmarks.md records.
    let only = std::env::var("DSLITE_BENCH_ONLY").unwrap_or_default();
    if only == "ten-million" {
        let t = scale::ten_million();
        report(&[], &[], &[], &[], t, serde_json::Value::Null);
        return;
    }
    let (paths, e2e_too) = match only.as_str() {
        "per-path" | "scarce" => (true, false),
        "end-to-end" => (false, true),
        _ => (true, true),
    };
    let whole = paths && e2e_too;
    let (mut rows, mut cores, mut stages) = Default::default();
    let (mut scale, mut ten_million) = (Vec::new(), serde_json::Value::Null);
    if paths {
        (rows, cores, stages) = per_path::b4_paths();
        let (aftr_rows, aftr_cores, aftr_stages, aftr_scale) = aftr(!whole);
        rows.extend(aftr_rows);
        cores.extend(aftr_cores);
        stages.extend(aftr_stages);
        scale = aftr_scale;
        if whole {
            ten_million = scale::ten_million();
        }
    }
    // The end-to-end run's processes use every CPU, as they would without the bench.
    pin_to_cpus(&(0..online_cpus()).collect::<Vec<_>>());
    let e2e = if e2e_too {
        end_to_end::run()
    } else {
        serde_json::Value::Null
    };
    report(&rows, &cores, &stages, &scale, ten_million, e2e);
}

/// The AFTR's paths, then the NAT tables at scale, in one rig: the scale fills its tables on
/// top of the mappings the paths made.
type AftrRows = (
    Vec<Row>,
    Vec<CoresRow>,
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
);

fn aftr(only_paths: bool) -> AftrRows {
    let out = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new(), Vec::new())));
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
            let scale = if std::env::var("DSLITE_BENCH_ONLY").as_deref() == Ok("scarce") {
                // The paths and the scarce-blocks row alone (a few minutes less).
                vec![serde_json::json!({"blocks_scarce": scale::blocks_scarce(rig, paths.noop)})]
            } else if only_paths {
                Vec::new()
            } else {
                // Before the tables are filled: the sweep there gives the stand-in
                // mappings (outside the pool) blocks of their own, which would leave no
                // block for this row to take.
                let scarce = scale::blocks_scarce(rig, paths.noop);
                let mut t = scale::nat_tables(rig, &paths);
                t["blocks_scarce"] = scarce;
                vec![t]
            };
            *o.lock().unwrap() = (paths.rows, paths.cores, paths.stages, scale);
        },
    );
    let out = std::mem::take(&mut *out.lock().unwrap());
    out
}

/// Prints the per-path and scale tables and writes everything, `e2e` included, as JSON.
fn report(
    rows: &[Row],
    cores: &[CoresRow],
    stages: &[serde_json::Value],
    scale: &[serde_json::Value],
    ten_million: serde_json::Value,
    e2e: serde_json::Value,
) {
    let base = rows
        .iter()
        .find(|r| r.name.starts_with("baseline"))
        .map_or(1.0, |r| r.net_ns.max(1.0));
    println!("\nPer-path cost ({RUNS} BPF_PROG_TEST_RUN runs, lowest median of {BLOCK}-run blocks, kernel-measured)");
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
    println!("\nStages: net ns from a path's start to the end of each stage");
    let mut last = ("".to_string(), 0.0);
    for s in stages {
        let path = s["path"].as_str().unwrap_or("").to_string();
        let ns = s["net_ns"].as_f64().unwrap_or(0.0);
        if path != last.0 {
            last = (path.clone(), 0.0);
        }
        println!(
            "{:<16} {:<58} {:>6.0} (+{:.0})",
            path,
            s["what"].as_str().unwrap_or(""),
            ns,
            ns - last.1
        );
        last.1 = ns;
    }
    let verified = per_path::VERIFIED.lock().unwrap().clone();
    println!("\nVerifier: instructions processed per program (the limit is 1,000,000)");
    for (prog, n) in &verified {
        println!("{prog:<40} {n:>9}");
    }
    println!("\nOn {} CPUs at once (each CPU its own flows)", cpus());
    println!(
        "{:<40} {:>12} {:>20} {:>10} {:>8}",
        "path", "1 core ns", "per-CPU ns", "agg Mpps", "scaling"
    );
    for c in cores {
        let per: Vec<String> = c.per_cpu_net_ns.iter().map(|n| format!("{n:.0}")).collect();
        println!(
            "{:<40} {:>12.0} {:>20} {:>10.2} {:>8.2}",
            c.name,
            c.one_core_net_ns,
            per.join(" / "),
            c.aggregate_mpps(),
            c.scaling()
        );
    }
    println!("\nState scale");
    for s in scale {
        if s.get("by_size").is_some() {
            println!(
            "NAT tables: {} bytes locked for {} mappings = {:.0} bytes per mapping; new mappings: {:.0}/s on one core",
            s["nat_maps_memlock_bytes"], s["table_capacity"], s["bytes_per_mapping"].as_f64().unwrap_or(0.0),
            s["new_mappings_per_second_one_core"].as_f64().unwrap_or(0.0)
        );
            println!(
                "{:>10} {:>12} {:>12} {:>10}",
                "mappings", "out net ns", "in net ns", "sweep ms"
            );
        }
        println!(
            "(one sweep: the whole table up to {} mappings, a slice of that many above)",
            dslite_user::sweep::SWEEP_SLICE
        );
        let b = &s["blocks_scarce"];
        println!(
            "new subscriber's first packet with {:.0}% of {} blocks taken: {:.0} ns net (50 runs); with 90% taken: {:.0} ns net ({} runs); refused with all taken: {:.0} ns net",
            b["share_taken_at_start"].as_f64().unwrap_or(0.0) * 100.0, b["blocks"],
            b["new_subscriber_ns_at_start"].as_f64().unwrap_or(0.0),
            b["new_subscriber_ns_with_90_percent_taken"].as_f64().unwrap_or(0.0),
            b["samples_with_90_percent_taken"], b["refused_ns_with_every_block_taken"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  timed the same way (one run each, back to back), a packet of an existing mapping: {:.0} ns net; a new mapping of an existing subscriber: {:.0} ns net; a block claim alone (probe): {:.0} ns net, of which the slot walk {:.0} and the search {:.0}",
            b["established_single_run_ns"].as_f64().unwrap_or(0.0),
            b["new_mapping_single_run_ns"].as_f64().unwrap_or(0.0),
            b["block_claim_alone_ns"].as_f64().unwrap_or(0.0),
            b["block_claim_walk_ns"].as_f64().unwrap_or(0.0),
            b["block_claim_search_ns"].as_f64().unwrap_or(0.0)
        );
        for b in s["by_size"].as_array().into_iter().flatten() {
            println!(
                "{:>10} {:>12.0} {:>12.0} {:>10.1}",
                b["mappings"],
                b["outbound_ns"].as_f64().unwrap(),
                b["inbound_ns"].as_f64().unwrap(),
                b["sweep_ms"].as_f64().unwrap()
            );
        }
    }
    if !ten_million.is_null() {
        let t = &ten_million;
        println!(
            "--max-mappings 10000000, filled to 100%: outbound {:.0} ns (10k: {:.0}), inbound {:.0} ns (10k: {:.0}); {:.0} bytes per mapping",
            t["outbound_ns_full"].as_f64().unwrap_or(0.0), t["outbound_ns_10k"].as_f64().unwrap_or(0.0),
            t["inbound_ns_full"].as_f64().unwrap_or(0.0), t["inbound_ns_10k"].as_f64().unwrap_or(0.0),
            t["bytes_per_mapping"].as_f64().unwrap_or(0.0)
        );
        println!(
            "expiry at 10M with 100k expiring a second: one sweep a second reads {} and expires {} in {:.1} ms (median of 7) = {:.1}% of a core; the table is read once in {:.0} s",
            t["sweep_scanned"], t["sweep_expired"], t["sweep_ms_per_second"].as_f64().unwrap_or(0.0),
            t["sweep_core_share"].as_f64().unwrap_or(0.0) * 100.0, t["cycle_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    let json = serde_json::json!({
        "ten_million": ten_million,
        "machine": dslite_tests::bench_machine(),
        "per_path": rows.iter().map(|r| serde_json::json!({
            "path": r.name, "raw_ns": r.raw_ns, "net_ns": r.net_ns,
            "mpps_per_core": if r.net_ns > 0.0 { 1e3 / r.net_ns } else { 0.0 },
            "ratio_to_baseline": r.net_ns / base,
        })).collect::<Vec<_>>(),
        "stages": stages,
        "verified_insns": verified.iter().map(|(p, n)| serde_json::json!({"program": p, "insns": n})).collect::<Vec<_>>(),
        "cores": cores.iter().map(|c| serde_json::json!({
            "path": c.name, "cpus": c.per_cpu_net_ns.len(), "one_core_net_ns": c.one_core_net_ns,
            "per_cpu_net_ns": c.per_cpu_net_ns, "aggregate_mpps": c.aggregate_mpps(),
            "scaling": c.scaling(),
        })).collect::<Vec<_>>(),
        "scale": scale,
        "end_to_end": e2e,
    });
    let path = std::env::var("DSLITE_BENCH_JSON").unwrap_or_else(|_| "target/bench.json".into());
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {path}");
}
