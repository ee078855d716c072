//! Per path: what each program path costs on one frame, against the harness (the no-op
//! program) and a baseline program that only parses and bounces the frame.

use std::sync::{Arc, Mutex};

use dslite_tests::{
    fixture::*,
    packets::{self, eth, softwire, udp4},
};

use crate::{median, nth_b4, time, Row, PAYLOAD, RUNS};

/// The B4's rows: the harness, the baseline, encapsulation and decapsulation.
pub fn b4_paths() -> Vec<Row> {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let r = rows.clone();
    with_b4(move |rig| {
        // As the controller runs it: the next-hop cache on.
        dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
        rig.load(dslite_user::dataplane::PROG_PASS);
        rig.load("dslite_bench_baseline");
        let lan = eth(
            rig.mac("lan"),
            HOST_MAC,
            packets::ETH_P_IP,
            &udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]),
        );
        let inner = udp4(SERVER, HOST, 7777, 5000, 64, &[0; PAYLOAD]);
        let wan = eth(
            rig.mac("wan"),
            ROUTER_MAC,
            packets::ETH_P_IPV6,
            &softwire(aftr(), B4A.parse().unwrap(), &inner, &[]),
        );
        let noop = time(
            rig,
            dslite_user::dataplane::PROG_PASS,
            "lan",
            std::slice::from_ref(&lan),
            XDP_PASS,
        );
        let mut r = r.lock().unwrap();
        let mut push = |name: &str, ns: f64| r.push(Row::new(name, ns, noop));
        push("harness (no-op program)", noop);
        push(
            "baseline: parse, swap MACs, XDP_TX",
            time(
                rig,
                "dslite_bench_baseline",
                "lan",
                std::slice::from_ref(&lan),
                XDP_TX,
            ),
        );
        push(
            "B4 encap (LAN -> softwire)",
            time(rig, rig.prog(), "lan", &[lan], XDP_REDIRECT),
        );
        push(
            "B4 decap (softwire -> LAN)",
            time(rig, rig.prog(), "wan", &[wan], XDP_REDIRECT),
        );
    });
    let rows = std::mem::take(&mut *rows.lock().unwrap());
    rows
}

/// What the AFTR's paths leave for the scale measurement in the same rig.
pub struct AftrPaths {
    pub rows: Vec<Row>,
    /// An outbound frame on an existing mapping, and the reply to it.
    pub out_frame: Vec<u8>,
    pub reply: Vec<u8>,
    /// The no-op program's time in this rig.
    pub noop: f64,
    /// Median ns of an outbound packet that creates its mapping.
    pub create_ns: f64,
}

/// The AFTR's rows: the probes (FIB lookups, map lookups), outbound on an existing mapping
/// and creating one, inbound, hairpin.
pub fn aftr_paths(rig: &mut Rig) -> AftrPaths {
    dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
    rig.load(dslite_user::dataplane::PROG_PASS);
    let prog = rig.prog();
    let inner = udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]);
    let out_frame = from_b4(rig, nth_b4(0), &inner, &[]);
    let (v, out) = rig.run("tun", &out_frame);
    assert_eq!(v, XDP_REDIRECT);
    let (addr, port) = outside_of(&out);
    let reply = from_internet(rig, &udp4(SERVER, addr, 7777, port, 64, &[0; PAYLOAD]));
    // Hairpin: nth_b4(1) sends to nth_b4(0)'s public endpoint.
    let hp = from_b4(
        rig,
        nth_b4(1),
        &udp4(HOST, addr, 6000, port, 64, &[0; PAYLOAD]),
        &[],
    );
    let noop = time(
        rig,
        dslite_user::dataplane::PROG_PASS,
        "tun",
        std::slice::from_ref(&out_frame),
        XDP_PASS,
    );
    // New flows: 100 softwires x 200 ports, each frame run once (a new mapping each).
    let new_flows: Vec<Vec<u8>> = (0..RUNS as u32)
        .map(|i| {
            let inner = udp4(
                HOST,
                SERVER,
                10_000 + (i % 200) as u16,
                7777,
                64,
                &[0; PAYLOAD],
            );
            from_b4(rig, nth_b4(100 + i / 200), &inner, &[])
        })
        .collect();
    let mut created = Vec::with_capacity(RUNS);
    for f in &new_flows {
        let (v, ns) = rig.time_once(prog, "tun", f);
        assert_eq!(v, XDP_REDIRECT, "new mapping");
        created.push(ns);
    }
    let create_ns = median(created);
    assert!(rig.counter("nat_mapping_created") >= RUNS as u64);
    let mut r = Vec::new();
    let mut push = |name: &str, ns: f64| r.push(Row::new(name, ns, noop));
    // The building blocks alone (probe programs), to take the paths apart.
    for probe in [
        "dslite_probe_fib6",
        "dslite_probe_fib4",
        "dslite_probe_lookups",
    ] {
        rig.load(probe);
    }
    let v4_to_server = eth(
        rig.mac("tun"),
        ROUTER_MAC,
        packets::ETH_P_IP,
        &udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]),
    );
    push(
        "probe: IPv6 FIB lookup",
        time(
            rig,
            "dslite_probe_fib6",
            "tun",
            std::slice::from_ref(&out_frame),
            XDP_DROP,
        ),
    );
    push(
        "probe: IPv4 FIB lookup",
        time(
            rig,
            "dslite_probe_fib4",
            "tun",
            std::slice::from_ref(&v4_to_server),
            XDP_DROP,
        ),
    );
    push(
        "probe: config + LPM + counter",
        time(
            rig,
            "dslite_probe_lookups",
            "tun",
            std::slice::from_ref(&out_frame),
            XDP_DROP,
        ),
    );
    push(
        "AFTR outbound, existing mapping",
        time(
            rig,
            prog,
            "tun",
            std::slice::from_ref(&out_frame),
            XDP_REDIRECT,
        ),
    );
    push("AFTR outbound, creating the mapping", create_ns);
    push(
        "AFTR inbound",
        time(
            rig,
            prog,
            "inet",
            std::slice::from_ref(&reply),
            XDP_REDIRECT,
        ),
    );
    push("AFTR hairpin", time(rig, prog, "tun", &[hp], XDP_REDIRECT));
    AftrPaths {
        rows: r,
        out_frame,
        reply,
        noop,
        create_ns,
    }
}
