//! Scale: the NAT tables filled to 10k, 100k and 1M mappings from user space, the
//! established paths timed again at each size, the sweep's time, and the tables' memory.

use std::time::Instant;

use dslite_common::maps::{NatInKey, NatInValue, NatOutKey, NatOutValue};
use dslite_tests::fixture::*;

use crate::{nth_b4, per_path::AftrPaths, time};

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
        fill(rig, filled, target);
        let fill_s = t0.elapsed().as_secs_f64();
        filled = target;
        let out_ns = time(
            rig,
            prog,
            "tun",
            std::slice::from_ref(&p.out_frame),
            XDP_REDIRECT,
        );
        let in_ns = time(
            rig,
            prog,
            "inet",
            std::slice::from_ref(&p.reply),
            XDP_REDIRECT,
        );
        let cfg = dslite_user::dataplane::aftr_config(&aftr_settings(), 0);
        let mut sw = dslite_user::sweep::Sweeper::open(&rig.pin, cfg, Default::default()).unwrap();
        let sweep = sw.sweep(dslite_user::clock::monotonic_ns()).unwrap();
        scale_rows.push(serde_json::json!({
            "mappings": target,
            "outbound_ns": out_ns - noop,
            "inbound_ns": in_ns - noop,
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

/// Mappings `from..to` written into NAT_OUT and NAT_IN, outside the pool so they never
/// collide with real ones, and never idle.
fn fill(rig: &mut Rig, from: usize, to: usize) {
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
                last_seen_ns: u64::MAX / 2,
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
