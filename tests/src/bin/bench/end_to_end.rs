//! End to end: dslite on the veth topology against the kernel's forwarding and NAT, with real
//! frames from an AF_PACKET generator.

use std::time::Instant;

use dslite_tests::{
    netns::Netns,
    packets::{self, eth, udp4},
    topo,
};

/// Frame sizes: 64 bytes, 1500-byte IPv4 (1514 on the wire), and IMIX 7:4:1 of 64, 576, 1500.
const SIZES: &[(&str, &[(usize, u32)])] = &[
    ("64 B", &[(64, 1)]),
    ("IMIX", &[(64, 7), (590, 4), (1514, 1)]),
    ("1500 B", &[(1514, 1)]),
];
/// Frames per size and system.
const FRAMES: u32 = 400_000;
/// New UDP flows of the connection-setup row: each frame a 5-tuple not seen before.
const NEW_FLOWS: u32 = 30_000;
/// The AFTR's quota for that row: 8 blocks of 8192 ports, twice the flows, so the one
/// subscriber sending them never meets its quota (the default is 4 x 512); what is measured
/// is the rate, not the quota.
const SETUP_QUOTA: &[&str] = &["--block-size", "8192", "--max-blocks", "8"];

/// Send `count` copies of `frame` out of `ifname` in `ns` as fast as one core can: an
/// AF_PACKET socket bypassing the qdisc, 64 frames per `sendmmsg`. (BPF_PROG_TEST_RUN's
/// live-frames mode transmitted only its first batch into a veth whose peer runs XDP here.)
/// With `new_flows` (a UDP `frame`), frame `f` has ports of its own, a new 5-tuple each:
/// source port 1024 + f % 64000, destination port 1 + f / 64000, checksum 0 ("none",
/// RFC 768). Returns the seconds it took.
fn generate(ns: &Netns, ifname: &str, frame: Vec<u8>, count: u32, new_flows: bool) -> f64 {
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
            // One buffer per message of a batch when every frame is a new flow.
            let mut bufs: Vec<Vec<u8>> = vec![frame.clone(); if new_flows { 64 } else { 1 }];
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr() as *mut _,
                    iov_len: b.len(),
                })
                .collect();
            let (iov, n_iov) = (iovs.as_mut_ptr(), iovs.len());
            let mut msgs: Vec<libc::mmsghdr> = (0..64)
                .map(|i| {
                    let mut m: libc::mmsghdr = std::mem::zeroed();
                    m.msg_hdr.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    m.msg_hdr.msg_iov = iov.add(i % n_iov);
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let t0 = Instant::now();
            let mut left = count as usize;
            while left > 0 {
                let n = left.min(64);
                if new_flows {
                    let first = count as usize - left;
                    for (i, b) in bufs.iter_mut().take(n).enumerate() {
                        let f = (first + i) as u32;
                        let (sport, dport) = (1024 + f % 64_000, 1 + f / 64_000);
                        b[34..36].copy_from_slice(&(sport as u16).to_be_bytes());
                        b[36..38].copy_from_slice(&(dport as u16).to_be_bytes());
                        b[40..42].copy_from_slice(&[0, 0]);
                    }
                }
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
    generate(host, "eth0", host_frame(64, host_mac, next_mac), 50, false);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut out = Vec::new();
    for (name, mix) in SIZES {
        let parts: u32 = mix.iter().map(|m| m.1).sum();
        let before = rx_packets(server, "eth0");
        let (mut secs, mut sent, mut bytes) = (0.0, 0u64, 0u64);
        for (len, share) in *mix {
            let n = FRAMES / parts * share;
            secs += generate(host, "eth0", host_frame(*len, host_mac, next_mac), n, false);
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

/// Connection setup (in the spirit of RFC 9693): [`NEW_FLOWS`] 64-byte UDP frames from the
/// host, each a new 5-tuple, sent as fast as one core can (a veth delivers synchronously, so
/// the sender's core does all the work and its rate is the capacity). New flows per second,
/// and the share delivered (the target is loss under 0.1%).
fn setup_rate(host: &Netns, server: &Netns, next_mac: [u8; 6]) -> (f64, f64) {
    let host_mac = host.mac_of("eth0").unwrap();
    let before = rx_packets(server, "eth0");
    let secs = generate(
        host,
        "eth0",
        host_frame(64, host_mac, next_mac),
        NEW_FLOWS,
        true,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let got = rx_packets(server, "eth0") - before;
    (got as f64 / secs, got as f64 / NEW_FLOWS as f64)
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
    let ns: Vec<Netns> = ["kh", "kb", "kr", "ka", "k4", "ks"]
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
    let (h, b, r, a, r4, s) = (&ns[0], &ns[1], &ns[2], &ns[3], &ns[4], &ns[5]);
    link(h, "eth0", b, "lan");
    link(b, "wan", r, "to-b");
    link(r, "to-a", a, "tun");
    link(a, "inet", r4, "to-aftr");
    link(r4, "to-server", s, "eth0");
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
    ip(a, "addr add 10.3.0.1/30 dev inet");
    ip(a, "route add default via 10.3.0.2");
    ip(a, "route add 192.168.1.0/24 via 10.2.0.1");
    ip(r4, "addr add 10.3.0.2/30 dev to-aftr");
    ip(r4, "addr add 203.0.113.1/24 dev to-server");
    ip(s, "addr add 203.0.113.2/24 dev eth0");
    ip(s, "route add default via 203.0.113.1");
    for n in [b, r, a, r4] {
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

/// One hook's run of the dslite chain: delivered packets per second per frame size, and the
/// programs' in-situ cost (bpf_stats).
struct HookRun {
    name: &'static str,
    rows: Vec<(String, f64, f64, f64)>,
    /// New flows per second, the share delivered and the AFTR program's ns per packet
    /// (bpf_stats) meanwhile, when measured (the tc run).
    setup: Option<(f64, f64, f64)>,
    b4_ns: f64,
    aftr_ns: f64,
    created: u64,
}

/// The dslite chain with plain Linux neighbours (topo::Options::plain: no program on the
/// routers, an IPv4 router before the server) on one hook. XDP on veth needs its peers'
/// TX checksumming off (the controller refuses it otherwise) and GRO on the routers (a veth
/// takes XDP_REDIRECTed frames only then).
fn dslite_on(name: &'static str, hook: &[&str], xdp: bool, setup: bool) -> HookRun {
    println!("end to end: dslite, {name}");
    let t = topo::DsLite::start_with(topo::Options {
        aftr_extra: if setup { SETUP_QUOTA } else { &[] },
        plain: true,
        plain_gro: xdp,
        peers_tx_csum_off: xdp,
        hook,
        ..Default::default()
    })
    .unwrap();
    // Real traffic first, so every element has resolved its next hop (the dataplane hands
    // packets without a neighbour entry to the kernel, which resolves it for later ones).
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
    let (b4, aftr) = if xdp {
        ("dslite_b4", "dslite_aftr")
    } else {
        ("dslite_b4_tc", "dslite_aftr_tc")
    };
    // The kernel's own accounting of our programs on this real traffic (bpf_stats).
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
    let (b0, a0) = (prog_stats(b4), prog_stats(aftr));
    let rows = measure(&t.a.host, &t.server, lan_mac);
    let (b1, a1) = (prog_stats(b4), prog_stats(aftr));
    let in_situ =
        |(t0, n0): (u64, u64), (t1, n1): (u64, u64)| (t1 - t0) as f64 / (n1 - n0).max(1) as f64;
    let setup = setup.then(|| {
        let (rate, delivered) = setup_rate(&t.a.host, &t.server, lan_mac);
        (rate, delivered, in_situ(a1, prog_stats(aftr)))
    });
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").unwrap();
    HookRun {
        name,
        rows,
        setup,
        b4_ns: in_situ(b0, b1),
        aftr_ns: in_situ(a0, a1),
        created: t.aftr.counter("nat_mapping_created"),
    }
}

/// The dslite chain on each hook against the kernel's IPv4 forwarding and nftables
/// masquerade on the same chain of namespaces (the same number of forwarding hops):
/// delivered packets per second per frame size, and the programs' in-situ cost
/// (bpf_stats). Prints its table; returns its JSON.
pub fn run() -> serde_json::Value {
    let runs = [
        dslite_on("tc", &["--hook", "tc"], false, true),
        dslite_on(
            "xdp native",
            &["--hook", "xdp", "--xdp-mode", "native"],
            true,
            false,
        ),
        dslite_on(
            "xdp skb",
            &["--hook", "xdp", "--xdp-mode", "skb"],
            true,
            false,
        ),
    ];
    println!("end to end: kernel IPv4 forwarding + nftables masquerade");
    let k = kernel_nat();
    let kernel = measure(&k.host, &k.server, k.first_hop_mac);
    let kernel_setup = setup_rate(&k.host, &k.server, k.first_hop_mac);
    drop(k);
    println!(
        "\nEnd to end, one UDP flow, host -> server ({FRAMES} frames per size; one core does it all)"
    );
    println!(
        "{:<11} {:<8} {:>12} {:>9} {:>7} {:>12} {:>9} {:>7} {:>9} {:>9}",
        "hook",
        "size",
        "dslite pps",
        "Mbit/s",
        "deliv.",
        "kernel pps",
        "Mbit/s",
        "deliv.",
        "pps x",
        "bit/s x"
    );
    let mut hooks = Vec::new();
    for r in &runs {
        let mut rows = Vec::new();
        for (d, k) in r.rows.iter().zip(&kernel) {
            let (pps_x, bps_x) = (d.1 / k.1.max(1.0), d.2 / k.2.max(1.0));
            println!(
                "{:<11} {:<8} {:>12.0} {:>9.0} {:>6.0}% {:>12.0} {:>9.0} {:>6.0}% {:>9.2} {:>9.2}",
                r.name,
                d.0,
                d.1,
                d.2 / 1e6,
                d.3 * 100.0,
                k.1,
                k.2 / 1e6,
                k.3 * 100.0,
                pps_x,
                bps_x
            );
            rows.push(serde_json::json!({
                "size": d.0,
                "dslite_pps": d.1, "dslite_bps": d.2, "dslite_delivered": d.3,
                "kernel_pps": k.1, "kernel_bps": k.2, "kernel_delivered": k.3,
                "ratio": pps_x, "bits_ratio": bps_x,
            }));
        }
        let per_packet_ns = 1e9 / r.rows[0].1.max(1.0);
        println!(
            "{:<11} in situ (bpf_stats, all sizes): B4 {:.0} ns and AFTR {:.0} ns per packet; end to end {per_packet_ns:.0} ns per 64 B packet",
            r.name, r.b4_ns, r.aftr_ns
        );
        hooks.push(serde_json::json!({
            "hook": r.name,
            "dslite_mappings_created": r.created,
            "in_situ_ns": { "b4": r.b4_ns, "aftr": r.aftr_ns, "end_to_end_per_64b_packet": per_packet_ns },
            "rows": rows,
        }));
    }
    let mut setup = serde_json::Value::Null;
    for r in &runs {
        if let Some((rate, delivered, aftr_ns)) = r.setup {
            println!(
                "connection setup, {NEW_FLOWS} new UDP flows: dslite ({}) {rate:.0}/s, {:.2}% delivered, AFTR program {aftr_ns:.0} ns per packet in situ; kernel conntrack + masquerade {:.0}/s, {:.2}% delivered: {:.2}x",
                r.name,
                delivered * 100.0,
                kernel_setup.0,
                kernel_setup.1 * 100.0,
                rate / kernel_setup.0.max(1.0)
            );
            setup = serde_json::json!({
                "new_flows": NEW_FLOWS, "hook": r.name,
                "dslite_flows_per_second": rate, "dslite_delivered": delivered,
                "aftr_program_ns_per_packet": aftr_ns,
                "kernel_flows_per_second": kernel_setup.0, "kernel_delivered": kernel_setup.1,
                "ratio": rate / kernel_setup.0.max(1.0),
            });
        }
    }
    serde_json::json!({
        "connection_setup": setup,
        "frames_per_size": FRAMES,
        "topology": "plain Linux neighbours; the kernel chain has the same forwarding hops",
        "hooks": hooks,
    })
}
