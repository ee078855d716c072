//! Per path: what each program path costs on one frame, against the harness (the no-op
//! program) and a baseline program that only parses and bounces the frame.

use std::sync::{Arc, Mutex};

use dslite_tests::{
    fixture::*,
    packets::{self, eth, softwire, udp4},
};

use crate::{cpus, median, nth_b4, time, time_on_cpus, CoresRow, Row, PAYLOAD, RUNS};

/// The B4's rows: the harness, the baseline, encapsulation and decapsulation; and the two
/// paths on every CPU at once.
pub fn b4_paths() -> (Vec<Row>, Vec<CoresRow>, Vec<serde_json::Value>) {
    let rows = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new())));
    let r = rows.clone();
    with_b4(move |rig| {
        // As the controller runs it: the next-hop cache on.
        dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
        rig.load(dslite_user::dataplane::PROG_PASS);
        rig.load("dslite_bench_baseline");
        note_verified(rig, &[rig.prog()]);
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
        let encap_stages = stages(
            rig,
            "B4 encap",
            "lan",
            &lan,
            B4_ENCAP_STAGES,
            XDP_REDIRECT,
            noop,
        );
        let mut r = r.lock().unwrap();
        let (r, cores, staged) = &mut *r;
        *staged = encap_stages;
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
        // No per-flow state on the B4: every CPU may run the same frame.
        for (name, iface, frame) in [
            ("B4 encap (LAN -> softwire)", "lan", lan),
            ("B4 decap (softwire -> LAN)", "wan", wan),
        ] {
            let one = time(
                rig,
                rig.prog(),
                iface,
                std::slice::from_ref(&frame),
                XDP_REDIRECT,
            );
            push(name, one);
            let all = time_on_cpus(
                rig,
                rig.prog(),
                iface,
                &vec![vec![frame]; cpus()],
                XDP_REDIRECT,
            );
            cores.push(CoresRow::new(name, one - noop, &all, noop));
        }
    });
    let rows = std::mem::take(&mut *rows.lock().unwrap());
    rows
}

/// Make the AFTR rig ready as the controller runs it (the next-hop cache on, the no-op
/// program loaded); returns the no-op program's ns on a softwire frame (the harness).
pub fn prepare(rig: &mut Rig) -> f64 {
    dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
    rig.load(dslite_user::dataplane::PROG_PASS);
    let f = from_b4(
        rig,
        nth_b4(0),
        &udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]),
        &[],
    );
    time(
        rig,
        dslite_user::dataplane::PROG_PASS,
        "tun",
        &[f],
        XDP_PASS,
    )
}

/// An established flow of softwire `nth_b4(i)`, mapped by running its first packet: that
/// outbound frame, the server's reply to it, and a frame from softwire `nth_b4(i + 1)` to
/// its public endpoint (hairpin).
pub struct Flow {
    pub out: Vec<u8>,
    pub reply: Vec<u8>,
    pub hairpin: Vec<u8>,
}

pub fn established(rig: &Rig, i: u32) -> Flow {
    let out = from_b4(
        rig,
        nth_b4(i),
        &udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]),
        &[],
    );
    let (v, first) = rig.run("tun", &out);
    assert_eq!(v, XDP_REDIRECT);
    let (addr, port) = outside_of(&first);
    Flow {
        reply: from_internet(rig, &udp4(SERVER, addr, 7777, port, 64, &[0; PAYLOAD])),
        hairpin: from_b4(
            rig,
            nth_b4(i + 1),
            &udp4(HOST, addr, 6000, port, 64, &[0; PAYLOAD]),
            &[],
        ),
        out,
    }
}

/// `RUNS` frames that each make a new mapping: 200 flows from each of the softwires
/// `nth_b4(first)`, `nth_b4(first + 1)`...
fn new_flows(rig: &Rig, first: u32) -> Vec<Vec<u8>> {
    (0..RUNS as u32)
        .map(|i| {
            let inner = udp4(
                HOST,
                SERVER,
                10_000 + (i % 200) as u16,
                7777,
                64,
                &[0; PAYLOAD],
            );
            from_b4(rig, nth_b4(first + i / 200), &inner, &[])
        })
        .collect()
}

/// One step of the paths each (bench.rs in dslite-ebpf), timed on the outbound frame after
/// the outbound path has run (its mapping and next hop exist): what each step costs.
const STEP_PROBES: [(&str, &str); 11] = [
    ("dslite_probe_ktime", "probe: bpf_ktime_get_ns"),
    (
        "dslite_probe_ktime_coarse",
        "probe: bpf_ktime_get_coarse_ns",
    ),
    ("dslite_probe_nat_out", "probe: NAT_OUT lookup (hit)"),
    (
        "dslite_probe_table",
        "probe: one-table outbound lookup (hit)",
    ),
    (
        "dslite_probe_next_hop",
        "probe: next-hop cache lookup (hit)",
    ),
    (
        "dslite_probe_destination",
        "probe: DENY_V4 LPM + POOL_INDEX",
    ),
    ("dslite_probe_adjust_head", "probe: adjust_head +40 and -40"),
    ("dslite_probe_counters", "probe: four counter updates"),
    ("dslite_probe_calls", "probe: four BPF-to-BPF calls"),
    (
        "dslite_probe_map_writes",
        "probe: NAT_IN + NAT_OUT insert, then remove",
    ),
    (
        "dslite_probe_table_writes",
        "probe: one-table insert, port, index, then remove",
    ),
];

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
    /// The established paths and mapping creation on every CPU at once.
    pub cores: Vec<CoresRow>,
    /// What the outbound and inbound paths cost up to each stage.
    pub stages: Vec<serde_json::Value>,
}

/// The AFTR's rows: the probes (FIB lookups, map lookups), outbound on an existing mapping
/// and creating one, inbound, hairpin.
pub fn aftr_paths(rig: &mut Rig) -> AftrPaths {
    let noop = prepare(rig);
    let prog = rig.prog();
    note_verified(rig, &[prog]);
    let Flow {
        out: out_frame,
        reply,
        hairpin: hp,
    } = established(rig, 0);
    let new_flows = new_flows(rig, 100);
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
    ]
    .iter()
    .chain(STEP_PROBES.iter().map(|(p, _)| p))
    {
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
    for (probe, name) in STEP_PROBES {
        push(
            name,
            time(
                rig,
                probe,
                "tun",
                std::slice::from_ref(&out_frame),
                XDP_DROP,
            ),
        );
    }
    note_verified(
        rig,
        &[
            "dslite_probe_nat_out",
            "dslite_probe_table",
            "dslite_probe_table_writes",
        ],
    );
    assert_eq!(
        probe_table_live(rig),
        1,
        "the one-table probe made its key's entry once and then hit it"
    );
    let done: u32 =
        aya::maps::PerCpuArray::<_, u32>::try_from(rig.ebpf.map("PROBE_SCRATCH").unwrap())
            .unwrap()
            .get(&1, 0)
            .unwrap()
            .iter()
            .sum();
    assert!(
        done as usize >= RUNS,
        "the one-table writes probe went all the way on {done} runs"
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
    let hairpin_ns = time(rig, prog, "tun", &[hp], XDP_REDIRECT);
    push("AFTR hairpin", hairpin_ns);
    let one_core: std::collections::HashMap<String, f64> =
        r.iter().map(|row| (row.name.clone(), row.net_ns)).collect();
    let cores = aftr_on_cpus(rig, noop, &one_core);
    let mut staged = stages(
        rig,
        "AFTR outbound",
        "tun",
        &out_frame,
        OUTBOUND_STAGES,
        XDP_REDIRECT,
        noop,
    );
    staged.extend(stages(
        rig,
        "AFTR inbound",
        "inet",
        &reply,
        INBOUND_STAGES,
        XDP_REDIRECT,
        noop,
    ));
    AftrPaths {
        stages: staged,
        rows: r,
        out_frame,
        reply,
        noop,
        create_ns,
        cores,
    }
}

/// The AFTR's established paths and mapping creation on every CPU at once, each CPU with
/// flows of its own (as RSS spreads them): softwire `10 + 2·cpu` for the established paths,
/// the next one hairpinning to it, and new softwires for creation. `one_core`: the one-core
/// net ns of each path by row name.
fn aftr_on_cpus(
    rig: &Rig,
    noop: f64,
    one_core: &std::collections::HashMap<String, f64>,
) -> Vec<CoresRow> {
    let n = cpus() as u32;
    let (mut out, mut back, mut hairpin, mut create) = (vec![], vec![], vec![], vec![]);
    for cpu in 0..n {
        let f = established(rig, 10 + 2 * cpu);
        out.push(vec![f.out]);
        back.push(vec![f.reply]);
        hairpin.push(vec![f.hairpin]);
        create.push(new_flows(rig, 1000 + cpu * 100));
    }
    let prog = rig.prog();
    [
        ("AFTR outbound, existing mapping", "tun", out),
        ("AFTR inbound", "inet", back),
        ("AFTR hairpin", "tun", hairpin),
        ("AFTR outbound, creating the mapping", "tun", create),
    ]
    .into_iter()
    .map(|(name, iface, frames)| {
        let all = time_on_cpus(rig, prog, iface, &frames, XDP_REDIRECT);
        CoresRow::new(name, one_core[name], &all, noop)
    })
    .collect()
}

/// Where each path's stages end (`bench_stage!` in dslite-ebpf; 9 is "encapsulated", in
/// the shared tail of every path into a softwire).
pub const B4_ENCAP_STAGES: &[(u32, &str)] = &[
    (1, "IPv4 parsed"),
    (2, "local destinations checked (LPM)"),
    (3, "TTL decremented"),
    (9, "encapsulated"),
    (0, "routed and counted (whole path)"),
];
pub const OUTBOUND_STAGES: &[(u32, &str)] = &[
    (10, "config read, Ethernet parsed"),
    (15, "in from_b4 (a BPF call)"),
    (11, "in the parse (a BPF call)"),
    (12, "IPv6 parsed"),
    (13, "tunnel interface checked"),
    (14, "inner IPv4 parsed"),
    (1, "L4 parsed, the parse returned"),
    (2, "destination allowed (hint, LPM); TTL, DF checked"),
    (16, "mapping found (NAT_OUT): no B4 LPM for it"),
    (3, "mapping refreshed"),
    (4, "hairpin test (pool range)"),
    (5, "source translated, checksums fixed"),
    (6, "decapsulated"),
    (0, "routed and counted (whole path)"),
];
pub const INBOUND_STAGES: &[(u32, &str)] = &[
    (1, "Ethernet, IPv4 parsed"),
    (
        2,
        "pool address (POOL_INDEX), interface, source, L4 checked",
    ),
    (3, "mapping found (NAT_IN)"),
    (4, "TTL decremented, TCP state"),
    (5, "destination translated, checksums fixed"),
    (9, "encapsulated"),
    (0, "routed and counted (whole path)"),
];

/// Net ns from the start of a path to the end of each of its `stages` (the bench build
/// stops there with XDP_DROP), for `frame` on `iface`; the whole path last (stage 0).
pub fn stages(
    rig: &mut Rig,
    path: &str,
    iface: &str,
    frame: &[u8],
    stages: &[(u32, &str)],
    whole: u32,
    noop: f64,
) -> Vec<serde_json::Value> {
    let prog = rig.prog();
    let mut out = Vec::new();
    for &(stage, what) in stages {
        set_stage(rig, stage);
        let want = if stage == 0 { whole } else { XDP_DROP };
        let ns = time(rig, prog, iface, &[frame.to_vec()], want) - noop;
        out.push(serde_json::json!({"path": path, "stage": stage, "what": what, "net_ns": ns}));
    }
    set_stage(rig, 0);
    out
}

fn set_stage(rig: &mut Rig, stage: u32) {
    let mut a: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(rig.ebpf.map_mut("BENCH_STAGE").unwrap()).unwrap();
    a.set(0, stage, 0).unwrap();
}

/// `LIVE` ways in the one-table probe's table (`PROBE_TABLE`; dslite_common::table).
fn probe_table_live(rig: &Rig) -> usize {
    use dslite_common::table::{state_of, OutBucket, LIVE, WAYS};
    const WORDS: usize = std::mem::size_of::<OutBucket>() / 8;
    let m = aya::maps::Array::<_, [u64; WORDS]>::try_from(rig.ebpf.map("PROBE_TABLE").unwrap())
        .unwrap();
    (0..m.len())
        .map(|i| {
            let b = m.get(&i, 0).unwrap();
            b[..WAYS].iter().filter(|&&t| state_of(t) == LIVE).count()
        })
        .sum()
}

/// Instructions the verifier processed for the programs the per-path rows load: the
/// 1M-instruction limit, not the ISA, is what bounds how much logic a path can hold.
pub static VERIFIED: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

fn note_verified(rig: &Rig, names: &[&str]) {
    let mut v = VERIFIED.lock().unwrap();
    for name in names {
        let n = rig
            .ebpf
            .program(name)
            .and_then(|p| p.info().ok())
            .and_then(|i| i.verified_instruction_count())
            .unwrap_or_else(|| panic!("no verifier count for {name}"));
        eprintln!("-- verifier: {name}: {n} instructions processed");
        v.push((name.to_string(), n));
    }
}
