//! `cargo xtask bench`: what each path costs, against a baseline, and how the NAT scales.
//! Prints a table and writes `target/bench.json`. docs/benchmarks.md explains the figures.
//!
//! Every per-packet figure is the kernel's own measurement of one BPF_PROG_TEST_RUN
//! (`duration`), median of many runs, each on a fresh copy of the frame: a repeat would run on
//! the frame the previous run changed (platform.md). The no-op program measured the same way
//! is the harness's own cost, subtracted to give the program's.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use dslite_common::maps::{NatInKey, NatInValue, NatOutKey, NatOutValue};
use dslite_tests::{
    fixture::*,
    packets::{self, eth, softwire, udp4},
};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
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

fn b4(i: u32) -> Ipv6Addr {
    let mut o = B4A.parse::<Ipv6Addr>().unwrap().octets();
    o[12..16].copy_from_slice(&(i + 2).to_be_bytes());
    Ipv6Addr::from(o)
}

fn aftr() -> Ipv6Addr {
    AFTR_ADDR.parse().unwrap()
}

fn from_b4(rig: &Rig, b4: Ipv6Addr, inner: &[u8]) -> Vec<u8> {
    eth(
        rig.mac("tun"),
        ROUTER_MAC,
        packets::ETH_P_IPV6,
        &softwire(b4, aftr(), inner, &[]),
    )
}

fn from_internet(rig: &Rig, ip: &[u8]) -> Vec<u8> {
    eth(rig.mac("inet"), SERVER_MAC, packets::ETH_P_IP, ip)
}

/// 64-byte frames (Ethernet included) for the inner UDP: 64 - 14 - 28 = 22 bytes of payload
/// for plain IPv4, and the same inner packet inside the softwire.
const PAYLOAD: usize = 22;

/// The translated (outside address, port) of an outbound frame's result.
fn outside(out_frame: &[u8]) -> (Ipv4Addr, u16) {
    let ip = &out_frame[14..];
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([ip[20], ip[21]]),
    )
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

fn main() {
    dslite_tests::require_root();
    let rows = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Row>::new()));
    let scale = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));

    // ---- per path, B4 -------------------------------------------------------------------
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

    // ---- per path, AFTR; then scale ----------------------------------------------------
    let (r, sc) = (rows.clone(), scale.clone());
    with_aftr_cfg(
        |s| {
            s.max_mappings = 1_250_000;
            s.max_blocks = 8;
            // Each b4(i) is a subscriber of its own, as the per-path rows assume.
            s.subscriber_prefix_len = 128;
        },
        move |rig| {
            dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
            rig.load(dslite_user::dataplane::PROG_PASS);
            let prog = rig.prog();
            let inner = udp4(HOST, SERVER, 5000, 7777, 64, &[0; PAYLOAD]);
            let out_frame = from_b4(rig, b4(0), &inner);
            let (v, out) = rig.run("tun", &out_frame);
            assert_eq!(v, XDP_REDIRECT);
            let (addr, port) = outside(&out);
            let reply = from_internet(rig, &udp4(SERVER, addr, 7777, port, 64, &[0; PAYLOAD]));
            // Hairpin: b4(1) sends to b4(0)'s public endpoint.
            let hp = from_b4(rig, b4(1), &udp4(HOST, addr, 6000, port, 64, &[0; PAYLOAD]));
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
                    from_b4(rig, b4(100 + i / 200), &inner)
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
            let mut r = r.lock().unwrap();
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
            drop(r);

            // Scale: fill the tables to 10k, 100k and 1M mappings from user space (entries
            // outside the pool, so they never collide with real ones) and time the
            // established paths again.
            let mut filled = rig.counter("nat_mapping_created") as usize;
            let mut scale_rows = Vec::new();
            for target in [10_000usize, 100_000, 1_000_000] {
                let t0 = Instant::now();
                {
                    let mut nat_out: aya::maps::HashMap<_, NatOutKey, NatOutValue> =
                        aya::maps::HashMap::try_from(rig.ebpf.map_mut("NAT_OUT").unwrap()).unwrap();
                    for i in filled..target {
                        let k = NatOutKey {
                            b4: b4(1_000_000 + i as u32).octets(),
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
                    for i in filled..target {
                        let k = NatInKey {
                            outside_addr: [100, 64 + (i >> 16) as u8, 0, 1],
                            outside_port: (i as u16).to_be(),
                            proto: 17,
                            _pad: 0,
                        };
                        let v = NatInValue {
                            b4: b4(1_000_000 + i as u32).octets(),
                            inside_addr: [10, 0, 0, 1],
                            inside_port: (i as u16).to_be(),
                            ..Default::default()
                        };
                        nat_in.insert(k, v, 0).unwrap();
                    }
                }
                let fill_s = t0.elapsed().as_secs_f64();
                filled = target;
                let out_ns = time(
                    rig,
                    prog,
                    "tun",
                    std::slice::from_ref(&out_frame),
                    XDP_REDIRECT,
                );
                let in_ns = time(
                    rig,
                    prog,
                    "inet",
                    std::slice::from_ref(&reply),
                    XDP_REDIRECT,
                );
                let cfg = dslite_user::dataplane::aftr_config(&aftr_settings(), 0);
                let mut sw =
                    dslite_user::sweep::Sweeper::open(&rig.pin, cfg, Default::default()).unwrap();
                let sweep = sw.sweep(dslite_user::sweep::monotonic_ns()).unwrap();
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
            sc.lock().unwrap().push(serde_json::json!({
                "table_capacity": cap,
                "nat_maps_memlock_bytes": bytes,
                "bytes_per_mapping": bytes as f64 / cap as f64,
                "new_mappings_per_second_one_core": 1e9 / (create_ns - noop).max(1.0),
                "by_size": scale_rows,
            }));
        },
    );

    // ---- end to end: dslite against the kernel's forwarding and NAT ----------------------
    let e2e = end_to_end();

    // ---- report -------------------------------------------------------------------------
    let rows = rows.lock().unwrap().clone();
    let base = rows
        .iter()
        .find(|r| r.name.starts_with("baseline"))
        .map_or(1.0, |r| r.net_ns.max(1.0));
    println!("\nPer-path cost (median of {RUNS} BPF_PROG_TEST_RUN runs, kernel-measured)");
    println!(
        "{:<40} {:>8} {:>8} {:>10} {:>9}",
        "path", "raw ns", "net ns", "Mpps/core", "x base"
    );
    for r in &rows {
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
    let scale = scale.lock().unwrap().clone();
    println!("\nState scale");
    for s in &scale {
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

// ---- end to end -----------------------------------------------------------------------

use dslite_tests::{netns::Netns, topo};

/// Frame sizes: 64 bytes, 1500-byte IPv4 (1514 on the wire), and IMIX 7:4:1 of 64, 576, 1500.
const SIZES: &[(&str, &[(usize, u32)])] = &[
    ("64 B", &[(64, 1)]),
    ("IMIX", &[(64, 7), (590, 4), (1514, 1)]),
    ("1500 B", &[(1514, 1)]),
];
/// Frames per size and system.
const FRAMES: u32 = 400_000;

/// Send `count` copies of `frame` out of `ifname` in `ns` as fast as one core can: an
/// AF_PACKET socket bypassing the qdisc, 64 frames per `sendmmsg`. (BPF_PROG_TEST_RUN's
/// live-frames mode transmitted only its first batch into a veth whose peer runs XDP here.)
/// Returns the seconds it took.
fn generate(ns: &Netns, ifname: &str, frame: Vec<u8>, count: u32) -> f64 {
    let ifname = ifname.to_string();
    ns.run(move || {
        // SAFETY: plain socket calls on a local fd; the iovecs and headers point into `frame`
        // and `msgs`, which outlive every sendmmsg call.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let c = std::ffi::CString::new(ifname).unwrap();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(c.as_ptr()) as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            let mut iov = libc::iovec {
                iov_base: frame.as_ptr() as *mut _,
                iov_len: frame.len(),
            };
            let mut msgs: Vec<libc::mmsghdr> = (0..64)
                .map(|_| {
                    let mut m: libc::mmsghdr = std::mem::zeroed();
                    m.msg_hdr.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    m.msg_hdr.msg_iov = &mut iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let t0 = Instant::now();
            let mut left = count as usize;
            while left > 0 {
                let n = left.min(64);
                let sent = libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0);
                if sent > 0 {
                    left -= sent as usize;
                } else {
                    std::thread::yield_now();
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            libc::close(fd);
            secs
        }
    })
    .join()
    .unwrap()
}

/// Packets received by `ifname` in `ns` (/proc/net/dev of that namespace).
fn rx_packets(ns: &Netns, ifname: &str) -> u64 {
    let ifname = format!("{ifname}:");
    ns.run(move || {
        let t = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        t.lines()
            .find_map(|l| l.trim_start().strip_prefix(ifname.as_str()))
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
    .join()
    .unwrap()
}

/// A UDP frame of `len` bytes on the wire from the host (192.168.1.10) to the server's
/// discard port, addressed to the next hop's MAC.
fn host_frame(len: usize, host_mac: [u8; 6], next_mac: [u8; 6]) -> Vec<u8> {
    let ip = udp4(
        topo::HOST_ADDR,
        topo::SERVER1,
        5000,
        9,
        64,
        &vec![0u8; len - 14 - 28],
    );
    eth(next_mac, host_mac, packets::ETH_P_IP, &ip)
}

/// Delivered packets per second for each size, from `host` (eth0, next hop `next_mac`) to
/// `server` (eth0).
fn measure(host: &Netns, server: &Netns, next_mac: [u8; 6]) -> Vec<(String, f64, f64, f64)> {
    let host_mac = host.mac_of("eth0").unwrap();
    // Resolve every neighbour on the way first (a few packets, then a pause).
    generate(host, "eth0", host_frame(64, host_mac, next_mac), 50);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut out = Vec::new();
    for (name, mix) in SIZES {
        let parts: u32 = mix.iter().map(|m| m.1).sum();
        let before = rx_packets(server, "eth0");
        let (mut secs, mut sent, mut bytes) = (0.0, 0u64, 0u64);
        for (len, share) in *mix {
            let n = FRAMES / parts * share;
            secs += generate(host, "eth0", host_frame(*len, host_mac, next_mac), n);
            sent += n as u64;
            bytes += n as u64 * *len as u64;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let got = rx_packets(server, "eth0") - before;
        let pps = got as f64 / secs;
        let bps = pps * (bytes as f64 / sent as f64) * 8.0;
        out.push((name.to_string(), pps, bps, got as f64 / sent as f64));
    }
    out
}

/// The same chain of namespaces, IPv4 only, forwarded by the kernel, with nftables
/// masquerade where the AFTR would be: what users would run instead.
struct KernelNat {
    host: Netns,
    server: Netns,
    _others: Vec<Netns>,
    first_hop_mac: [u8; 6],
}

fn kernel_nat() -> KernelNat {
    let ns: Vec<Netns> = ["kh", "kb", "kr", "ka", "ks"]
        .iter()
        .map(|t| Netns::new(&dslite_tests::unique(t)).unwrap())
        .collect();
    let ip = |n: &Netns, args: &str| n.ip(&args.split_whitespace().collect::<Vec<_>>()).unwrap();
    let link = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        ip(
            a,
            &format!(
                "link add name {an} type veth peer name {bn} netns {}",
                b.name
            ),
        );
        ip(a, &format!("link set {an} up"));
        ip(b, &format!("link set {bn} up"));
    };
    let (h, b, r, a, s) = (&ns[0], &ns[1], &ns[2], &ns[3], &ns[4]);
    link(h, "eth0", b, "lan");
    link(b, "wan", r, "to-b");
    link(r, "to-a", a, "tun");
    link(a, "inet", s, "eth0");
    ip(h, "addr add 192.168.1.10/24 dev eth0");
    ip(h, "route add default via 192.168.1.1");
    ip(b, "addr add 192.168.1.1/24 dev lan");
    ip(b, "addr add 10.1.0.1/30 dev wan");
    ip(b, "route add default via 10.1.0.2");
    ip(r, "addr add 10.1.0.2/30 dev to-b");
    ip(r, "addr add 10.2.0.1/30 dev to-a");
    ip(r, "route add default via 10.2.0.2");
    ip(r, "route add 192.168.1.0/24 via 10.1.0.1");
    ip(a, "addr add 10.2.0.2/30 dev tun");
    ip(a, "addr add 203.0.113.1/24 dev inet");
    ip(a, "route add 192.168.1.0/24 via 10.2.0.1");
    ip(s, "addr add 203.0.113.2/24 dev eth0");
    for n in [b, r, a] {
        n.sysctl("net.ipv4.ip_forward", "1").unwrap();
        n.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
    }
    let nft = |n: &Netns, rules: &'static str| {
        n.run(move || {
            let mut c = std::process::Command::new("nft")
                .arg("-f")
                .arg("-")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft");
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success(), "nft rules");
        })
        .join()
        .unwrap()
    };
    nft(
        a,
        "table ip nat {\n  chain post {\n    type nat hook postrouting priority 100;\n    oifname \"inet\" masquerade\n  }\n}\n",
    );
    let first_hop_mac = b.mac_of("lan").unwrap();
    let mut it = ns.into_iter();
    let host = it.next().unwrap();
    let mut others: Vec<Netns> = it.collect();
    let server = others.pop().unwrap();
    KernelNat {
        host,
        server,
        _others: others,
        first_hop_mac,
    }
}

/// (run time ns, runs) summed over every loaded program named `name` (kernel BPF stats).
fn prog_stats(name: &str) -> (u64, u64) {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut t = (0, 0);
    for p in v.as_array().into_iter().flatten() {
        if p["name"] == name {
            t.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            t.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    t
}

fn end_to_end() -> serde_json::Value {
    println!("end to end: dslite topology");
    let mode = std::env::var("DSLITE_BENCH_XDP_MODE").unwrap_or_else(|_| "native".into());
    let t = topo::DsLite::start_with(topo::Options {
        aftr_extra: &["--xdp-mode", &mode],
        b4_extra: &["--xdp-mode", &mode],
        ..Default::default()
    })
    .unwrap();
    // Real traffic first, so every element has resolved its next hop (XDP hands packets
    // without a neighbour entry to the kernel, which resolves it for later ones).
    let _echo = dslite_tests::traffic::udp_echo_server(
        &t.server,
        std::net::SocketAddrV4::new(topo::SERVER1, 7777),
    );
    dslite_tests::traffic::udp_request(
        &t.a.host,
        std::net::SocketAddrV4::new(topo::HOST_ADDR, 5000),
        std::net::SocketAddrV4::new(topo::SERVER1, 7777),
        "warm-up",
    )
    .unwrap();
    let lan_mac = t.a.b4.mac_of("lan").unwrap();
    // The kernel's own accounting of our programs on this real traffic (bpf_stats).
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
    let (b0, a0) = (prog_stats("dslite_b4"), prog_stats("dslite_aftr"));
    let dslite = measure(&t.a.host, &t.server, lan_mac);
    let (b1, a1) = (prog_stats("dslite_b4"), prog_stats("dslite_aftr"));
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").unwrap();
    let in_situ =
        |(t0, n0): (u64, u64), (t1, n1): (u64, u64)| (t1 - t0) as f64 / (n1 - n0).max(1) as f64;
    let (b4_ns, aftr_ns) = (in_situ(b0, b1), in_situ(a0, a1));
    let created = t.aftr.counter("nat_mapping_created");
    drop(t);
    println!("end to end: kernel IPv4 forwarding + nftables masquerade");
    let k = kernel_nat();
    let kernel = measure(&k.host, &k.server, k.first_hop_mac);
    println!(
        "\nEnd to end, one UDP flow, host -> server ({FRAMES} frames per size; one core does it all)"
    );
    println!(
        "{:<8} {:>14} {:>10} {:>9} {:>14} {:>10} {:>9} {:>7}",
        "size", "dslite pps", "Mbit/s", "deliv.", "kernel pps", "Mbit/s", "deliv.", "ratio"
    );
    let mut rows = Vec::new();
    for (d, k) in dslite.iter().zip(&kernel) {
        println!(
            "{:<8} {:>14.0} {:>10.0} {:>8.0}% {:>14.0} {:>10.0} {:>8.0}% {:>7.2}",
            d.0,
            d.1,
            d.2 / 1e6,
            d.3 * 100.0,
            k.1,
            k.2 / 1e6,
            k.3 * 100.0,
            d.1 / k.1.max(1.0)
        );
        rows.push(serde_json::json!({
            "size": d.0,
            "dslite_pps": d.1, "dslite_bps": d.2, "dslite_delivered": d.3,
            "kernel_pps": k.1, "kernel_bps": k.2, "kernel_delivered": k.3,
            "ratio": d.1 / k.1.max(1.0),
        }));
    }
    let per_packet_ns = 1e9 / dslite[0].1.max(1.0);
    println!(
        "in situ (kernel bpf_stats, all sizes): dslite_b4 {b4_ns:.0} ns and dslite_aftr {aftr_ns:.0} ns per packet; end to end {per_packet_ns:.0} ns per 64 B packet"
    );
    serde_json::json!({
        "frames_per_size": FRAMES,
        "dslite_mappings_created": created,
        "in_situ_ns": { "dslite_b4": b4_ns, "dslite_aftr": aftr_ns, "end_to_end_per_64b_packet": per_packet_ns },
        "rows": rows,
    })
}
