//! Scale: the NAT tables filled to 10k, 100k and 1M mappings from user space, the
//! established paths timed again at each size, the sweep's time, and the tables' memory.

use std::time::Instant;

use dslite_common::maps::{BlockKey, BlockValue, NatInKey, NatInValue, NatOutKey, NatOutValue};
use dslite_tests::{fixture::*, packets::udp4};

use crate::{median, nth_b4, per_path::AftrPaths, time, PAYLOAD, RUNS};

/// The scale figures, measured in the rig the AFTR's paths ran in (`p`).
pub fn nat_tables(rig: &mut Rig, p: &AftrPaths) -> serde_json::Value {
    let (prog, noop) = (rig.prog(), p.noop);
    // Scale: fill the tables to 10k, 100k and 1M mappings from user space (entries
    // outside the pool, so they never collide with real ones) and time the
    // established paths again.
    let mut filled = rig.counter("nat_mapping_created") as usize;
    let mut scale_rows = Vec::new();
    for target in [10_000usize, 100_000, 1_000_000] {
        let t0 = Instant::now();
        fill(rig, filled, target, 0);
        let fill_s = t0.elapsed().as_secs_f64();
        filled = target;
        let (out_ns, in_ns) = established_paths(rig, prog, &p.out_frame, &p.reply, noop);
        let cfg = dslite_user::dataplane::aftr_config(&aftr_settings(), 0);
        let mut sw = dslite_user::sweep::Sweeper::open(&rig.pin, cfg, Default::default()).unwrap();
        let sweep = sw.sweep(dslite_user::clock::monotonic_ns()).unwrap();
        scale_rows.push(serde_json::json!({
            "mappings": target,
            "outbound_ns": out_ns,
            "inbound_ns": in_ns,
            "sweep_ms": sweep.micros as f64 / 1000.0,
            "fill_seconds": fill_s,
        }));
    }
    let cap = 1_250_000u64;
    let bytes = memlock_of(rig, "NAT_OUT") + memlock_of(rig, "NAT_IN");
    serde_json::json!({
        "table_capacity": cap,
        "nat_maps_memlock_bytes": bytes,
        "bytes_per_mapping": bytes as f64 / cap as f64,
        "new_mappings_per_second_one_core": 1e9 / (p.create_ns - noop).max(1.0),
        "by_size": scale_rows,
    })
}

/// Net ns of an established flow's outbound frame `out` (in on the softwire) and its
/// `reply` (in from the internet), the no-op harness's `noop` taken off.
fn established_paths(rig: &Rig, prog: &str, out: &[u8], reply: &[u8], noop: f64) -> (f64, f64) {
    let once = |iface, frame: &[u8]| time(rig, prog, iface, &[frame.to_vec()], XDP_REDIRECT) - noop;
    (once("tun", out), once("inet", reply))
}

/// Mappings `from..to` written into NAT_OUT and NAT_IN, outside the pool so they never
/// collide with real ones; `idle_percent` of them idle for ever (the sweep expires them),
/// the others never idle.
fn fill(rig: &mut Rig, from: usize, to: usize, idle_percent: usize) {
    {
        let mut nat_out: aya::maps::HashMap<_, NatOutKey, NatOutValue> =
            aya::maps::HashMap::try_from(rig.ebpf.map_mut("NAT_OUT").unwrap()).unwrap();
        for i in from..to {
            let k = NatOutKey {
                b4: nth_b4(1_000_000 + i as u32).octets(),
                inside_addr: [10, 0, 0, 1],
                inside_port: (i as u16).to_be(),
                proto: 17,
                ..Default::default()
            };
            let v = NatOutValue {
                outside_addr: [100, 64 + (i >> 16) as u8, 0, 1],
                outside_port: (i as u16).to_be(),
                last_seen_ns: if i % 100 < idle_percent {
                    1
                } else {
                    u64::MAX / 2
                },
                ..Default::default()
            };
            nat_out.insert(k, v, 0).unwrap();
        }
    }
    {
        let mut nat_in: aya::maps::HashMap<_, NatInKey, NatInValue> =
            aya::maps::HashMap::try_from(rig.ebpf.map_mut("NAT_IN").unwrap()).unwrap();
        for i in from..to {
            let k = NatInKey {
                outside_addr: [100, 64 + (i >> 16) as u8, 0, 1],
                outside_port: (i as u16).to_be(),
                proto: 17,
                _pad: 0,
            };
            let v = NatInValue {
                b4: nth_b4(1_000_000 + i as u32).octets(),
                inside_addr: [10, 0, 0, 1],
                inside_port: (i as u16).to_be(),
                ..Default::default()
            };
            nat_in.insert(k, v, 0).unwrap();
        }
    }
}

fn memlock_of(rig: &Rig, map: &str) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let m = rig.ebpf.map(map).unwrap();
    let fd = match m {
        aya::maps::Map::HashMap(d) => d.fd().as_fd().as_raw_fd(),
        _ => panic!("{map} is not a hash map"),
    };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Mapping creation when blocks are scarce: the first packets of new subscribers (each
/// needs a block of its own) with 90% of the pool's blocks taken, then refused ones with
/// every block taken (a counted drop and an ICMP error; the search must not run long).
pub fn blocks_scarce(rig: &mut Rig, noop: f64) -> serde_json::Value {
    let s = aftr_settings();
    let cfg = dslite_user::dataplane::aftr_config(&s, 0);
    let total = s.pool.len() * cfg.blocks_per_addr as usize;
    let prog = rig.prog();
    let first_packet = |rig: &Rig, i: u32| {
        from_b4(
            rig,
            nth_b4(i),
            &udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]),
            &[],
        )
    };
    // New subscribers' first packets (each claims a block): `n` of them from `from` on.
    let new_subscribers = |rig: &Rig, from: u32, n: usize| {
        let frames: Vec<Vec<u8>> = (0..n as u32).map(|j| first_packet(rig, from + j)).collect();
        let before = rig.counter("block_allocated");
        let ns = once_each(
            rig,
            prog,
            &frames,
            XDP_REDIRECT,
            noop,
            "a new subscriber with blocks left",
        );
        assert_eq!(rig.counter("block_allocated") - before, n as u64);
        ns
    };
    // First with the blocks the earlier rows' subscribers hold, to tell the claim's own
    // cost from the search's.
    let taken_before = blocks_taken(rig);
    let at_start = new_subscribers(rig, 2_500_000, 50);
    // The same single-run timing of what is not a new subscriber, to read the rows above
    // against: one run each is colder than the repeated runs the per-path rows take.
    let established: Vec<Vec<u8>> = (0..50).map(|j| first_packet(rig, 2_500_000 + j)).collect();
    let established_ns = once_each(rig, prog, &established, XDP_REDIRECT, noop, "forwarded");
    // New mappings of those subscribers (their blocks have room): another source port.
    let created = rig.counter("nat_mapping_created");
    let new_flows: Vec<Vec<u8>> = (0..50u32)
        .map(|j| {
            from_b4(
                rig,
                nth_b4(2_500_000 + j),
                &udp4(HOST, SERVER, 6000, 7777, 64, &[0; PAYLOAD]),
                &[],
            )
        })
        .collect();
    let new_mapping_ns = once_each(rig, prog, &new_flows, XDP_REDIRECT, noop, "forwarded");
    assert_eq!(rig.counter("nat_mapping_created") - created, 50);
    // The block claim alone (a probe calling `nat::claim_block`; XDP_DROP when it got a
    // block), then its two first parts alone (the walk of the slots, the search of an
    // address for a free block, nothing claimed), each for 30 more new subscribers.
    let part = |rig: &mut Rig, probe: &str, from: u32, what: &str| {
        rig.load(probe);
        let frames: Vec<Vec<u8>> = (0..30).map(|j| first_packet(rig, from + j)).collect();
        once_each(rig, probe, &frames, XDP_DROP, noop, what)
    };
    let claim_ns = part(
        rig,
        "dslite_probe_claim_block",
        2_600_000,
        "the probe claimed a block",
    );
    let walk_ns = part(rig, "dslite_probe_claim_walk", 2_700_000, "the walk");
    let search_ns = part(rig, "dslite_probe_claim_search", 2_800_000, "the search");
    let share_at_start = (taken_before + 25) as f64 / total as f64;
    take_blocks(rig, &s, total * 9 / 10);
    let free = total - blocks_taken(rig);
    let at_90 = new_subscribers(rig, 3_000_000, free);
    take_blocks(rig, &s, total);
    let before = rig.counter("drop_pool_exhausted");
    let refused: Vec<u64> = (0..RUNS as u32 / 10)
        .map(|j| {
            let (v, ns) = rig.time_once(prog, "tun", &first_packet(rig, 4_000_000 + j));
            // An ICMP error back while the per-CPU ICMP budget lasts (--icmp-rate), then
            // silent: either way a counted drop.
            assert!(
                v == XDP_REDIRECT || v == XDP_DROP,
                "refused, not forwarded: {v}"
            );
            ns
        })
        .collect();
    let n = refused.len() as u64;
    assert_eq!(
        rig.counter("drop_pool_exhausted") - before,
        n,
        "every refusal counted"
    );
    serde_json::json!({
        "blocks": total,
        "new_subscriber_ns_at_start": at_start,
        "established_single_run_ns": established_ns,
        "new_mapping_single_run_ns": new_mapping_ns,
        "block_claim_alone_ns": claim_ns,
        "block_claim_walk_ns": walk_ns,
        "block_claim_search_ns": search_ns,
        "share_taken_at_start": share_at_start,
        "new_subscriber_ns_with_90_percent_taken": at_90,
        "samples_with_90_percent_taken": free,
        "refused_ns_with_every_block_taken": median(refused) - noop,
        "refusals": n,
    })
}

/// Median net ns of `prog` run once on each of `frames` (each must give `want`: `what`).
fn once_each(rig: &Rig, prog: &str, frames: &[Vec<u8>], want: u32, noop: f64, what: &str) -> f64 {
    let times: Vec<u64> = frames
        .iter()
        .map(|f| {
            let (v, ns) = rig.time_once(prog, "tun", f);
            assert_eq!(v, want, "{what}");
            ns
        })
        .collect();
    median(times) - noop
}

/// Blocks taken by stand-in subscribers, block by block across the pool's addresses (so each
/// address keeps the same share free), until `upto` of them are taken.
fn take_blocks(rig: &mut Rig, s: &dslite_user::config::AftrSettings, upto: usize) {
    let per_addr = dslite_user::dataplane::aftr_config(s, 0).blocks_per_addr;
    let mut blocks: aya::maps::HashMap<_, BlockKey, BlockValue> =
        aya::maps::HashMap::try_from(rig.ebpf.map_mut("BLOCKS").unwrap()).unwrap();
    let mut taken = blocks.keys().count();
    let now = dslite_user::clock::monotonic_ns();
    for block in 0..per_addr {
        for addr in &s.pool {
            if taken >= upto {
                return;
            }
            let k = BlockKey {
                addr: addr.octets(),
                block,
                _pad: 0,
            };
            if blocks.get(&k, 0).is_err() {
                let v = BlockValue {
                    b4: nth_b4(2_000_000 + taken as u32).octets(),
                    allocated_ns: now,
                    released_ns: 0,
                };
                blocks.insert(k, v, 0).unwrap();
                taken += 1;
            }
        }
    }
}

fn blocks_taken(rig: &Rig) -> usize {
    aya::maps::HashMap::<_, BlockKey, BlockValue>::try_from(rig.ebpf.map("BLOCKS").unwrap())
        .unwrap()
        .keys()
        .count()
}

/// `--max-mappings 10000000`: the tables loaded at that size, the established paths at 10k
/// and at 10M mappings, the table filled to 100%: every mapping still forwarded, a new one
/// refused with a counted drop; then expiry at steady state (below).
pub fn ten_million() -> serde_json::Value {
    const CAP: usize = 10_000_000;
    /// 100k expiring a second, over a slice (SWEEP_SLICE) read once per CAP / slice s.
    const IDLE_PERCENT: usize = 76;
    let out = std::sync::Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    let o = out.clone();
    with_aftr_cfg(
        |s| {
            s.max_mappings = CAP as u32;
            s.subscriber_prefix_len = 128;
        },
        move |rig| {
            let t0 = Instant::now();
            let noop = crate::per_path::prepare(rig);
            let prog = rig.prog();
            let f = crate::per_path::established(rig, 0);
            let (out_frame, reply) = (f.out, f.reply);
            let flow = udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]);
            let paths = |rig: &Rig| established_paths(rig, prog, &out_frame, &reply, noop);
            fill(rig, 1, 10_000, 0);
            let (out_10k, in_10k) = paths(rig);
            let t1 = Instant::now();
            fill(rig, 10_000, CAP, IDLE_PERCENT);
            let fill_s = t1.elapsed().as_secs_f64();
            // Full: every mapping forwarded, a new one refused and counted.
            let (out_10m, in_10m) = paths(rig);
            let before = rig.counter("drop_mapping_table_full");
            let new_flow = from_b4(rig, nth_b4(1), &flow, &[]);
            let (v, _) = rig.run_refused("tun", &new_flow);
            assert_eq!(v, XDP_REDIRECT, "refused with an ICMP error");
            assert_eq!(rig.counter("drop_mapping_table_full"), before + 1);
            // Expiry at steady state with 10M mappings and 100k expiring a second: a sweep
            // a second reads a slice, so the table is read once per 10M / slice seconds;
            // in that time 100k a second have expired, so a slice finds
            // 100k / slice of its mappings idle (76%: the fill's share). Each sweep's
            // time is the controller's share of a core for expiry.
            let cfg = dslite_user::dataplane::aftr_config(&aftr_settings(), 0);
            let mut sw =
                dslite_user::sweep::Sweeper::open(&rig.pin, cfg, Default::default()).unwrap();
            let mut sweeps = Vec::new();
            for _ in 0..7 {
                let r = sw.sweep(dslite_user::clock::monotonic_ns()).unwrap();
                assert!(!r.cycle_done, "a slice of 10M");
                assert!(r.expired > r.scanned / 2, "{} of {}", r.expired, r.scanned);
                sweeps.push((r.micros as f64 / 1000.0, r.scanned, r.expired));
                // Spaced a little, as sweeps are (a second apart in the daemon).
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let mut ms: Vec<f64> = sweeps.iter().map(|s| s.0).collect();
            ms.sort_by(f64::total_cmp);
            let sweep_ms = ms[ms.len() / 2];
            let (scanned, expired) = (sweeps[0].1, sweeps[0].2);
            let bytes = memlock_of(rig, "NAT_OUT") + memlock_of(rig, "NAT_IN");
            *o.lock().unwrap() = serde_json::json!({
                "capacity": CAP,
                "load_and_fill_seconds": t0.elapsed().as_secs_f64(),
                "fill_seconds": fill_s,
                "outbound_ns_10k": out_10k, "inbound_ns_10k": in_10k,
                "outbound_ns_full": out_10m, "inbound_ns_full": in_10m,
                "sweep_ms_per_second": sweep_ms,
                "sweep_scanned": scanned,
                "sweep_expired": expired,
                "sweep_core_share": sweep_ms / 1000.0,
                "cycle_seconds": CAP as f64 / dslite_user::sweep::SWEEP_SLICE as f64,
                "nat_maps_memlock_bytes": bytes,
                "bytes_per_mapping": bytes as f64 / CAP as f64,
            });
        },
    );
    let v = out.lock().unwrap().take();
    v
}
