//! End-to-end: real XDP on veths in namespaces, real traffic from two customers with the same
//! private address (the topology drawn in the module docs of `dslite_tests::topo`).

use std::{
    collections::HashSet,
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use dslite_tests::{
    packets::{self, eth, softwire, tel_destopts, udp4},
    topo::*,
    traffic::*,
};

/// Ping and UDP from both hosts (same address, same source port, same echo id): distinct
/// outside endpoints, and each reply reaches only its own host (RFC 6333 §5.2/§6.2, §6.6; RFC 5508 REQ-1).
#[test]
fn ping_and_udp_from_both_hosts() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    assert_eq!(
        ping(&t.a.host, SERVER1, 0x4242, 3).unwrap(),
        3,
        "hostA ping\n{}",
        t.diagnostics()
    );
    assert_eq!(
        ping(&t.b.host, SERVER1, 0x4242, 3).unwrap(),
        3,
        "hostB ping\n{}",
        t.diagnostics()
    );

    // The payload names the sender: a reply delivered to the wrong host fails the echo check.
    let seen_a = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "from-A").unwrap();
    let seen_b = udp_request(&t.b.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "from-B").unwrap();
    assert_ne!(
        seen_a, seen_b,
        "two softwires with the same inside endpoint share no outside endpoint"
    );
    for s in [seen_a, seen_b] {
        let SocketAddr::V4(v4) = s else { panic!("{s}") };
        assert_eq!(
            v4.ip().octets()[..3],
            [198, 51, 100],
            "outside address {s} is from the pool"
        );
    }

    let sessions = t.aftr.sessions().unwrap();
    let udp: Vec<_> = sessions.iter().filter(|s| s["proto"] == "udp").collect();
    assert_eq!(udp.len(), 2, "{sessions:?}");
    let b4s: HashSet<_> = udp
        .iter()
        .map(|s| s["b4"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        b4s,
        HashSet::from(["2001:db8:a::2".to_string(), "2001:db8:b::2".to_string()])
    );
    assert!(udp.iter().all(|s| s["inside"] == "192.168.1.10:5000"));
    let outs: HashSet<_> = udp
        .iter()
        .map(|s| s["outside"].as_str().unwrap().to_string())
        .collect();
    assert!(
        outs.contains(&seen_a.to_string()) && outs.contains(&seen_b.to_string()),
        "{outs:?}"
    );
    let icmp = sessions.iter().filter(|s| s["proto"] == "icmp").count();
    assert_eq!(icmp, 2, "one echo mapping per softwire: {sessions:?}");

    assert!(t.b4a.counter("b4_encap_packets") >= 4);
    assert!(t.b4a.counter("b4_decap_packets") >= 4);
    assert!(t.aftr.counter("aftr_out_packets") >= 8);
    assert!(t.aftr.counter("aftr_in_packets") >= 8);
}

/// 10 MB each way through the softwire from both hosts at once, every byte verified (RFC 6333 §5.2/§6.2).
#[test]
fn tcp_bulk_transfer_from_both_hosts_at_once() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = tcp_echo_server(&t.server, sa(SERVER1, 8080));
    const LEN: usize = 10 * 1024 * 1024;
    let ja = tcp_transfer(&t.a.host, sa(SERVER1, 8080), LEN);
    let jb = tcp_transfer(&t.b.host, sa(SERVER1, 8080), LEN);
    assert_eq!(ja.join().unwrap().unwrap(), LEN);
    assert_eq!(jb.join().unwrap().unwrap(), LEN);
    // The bulk of it took the XDP fast path, not the kernel.
    let fast = t.aftr.counter("aftr_in_packets");
    let slow = t.aftr.counter("pass_no_neighbour");
    assert!(fast > 10_000 && slow < 100, "fast {fast}, slow {slow}");
    let tcp = t
        .aftr
        .sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s["proto"] == "tcp")
        .count();
    assert_eq!(tcp, 2);
}

/// One inside port to two servers: one outside address:port (EIM, RFC 4787 REQ-1; paired, RFC 4787 REQ-2).
#[test]
fn one_inside_port_to_two_servers_keeps_one_mapping() {
    let t = DsLite::start(&[]).unwrap();
    let _e1 = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let _e2 = udp_echo_server(&t.server, sa(SERVER2, 7777));
    let s1 = udp_request(&t.a.host, sa(HOST_ADDR, 6000), sa(SERVER1, 7777), "one").unwrap();
    let s2 = udp_request(&t.a.host, sa(HOST_ADDR, 6000), sa(SERVER2, 7777), "two").unwrap();
    assert_eq!(s1, s2, "endpoint-independent mapping");
    // A second inside port of the same host lands on the same public address (paired).
    let s3 = udp_request(&t.a.host, sa(HOST_ADDR, 6001), sa(SERVER1, 7777), "three").unwrap();
    assert_eq!(s1.ip(), s3.ip());
    assert_ne!(s1.port(), s3.port());
}

/// A B4 outside every --b4-prefix gets nothing and creates no mapping (RFC 6333 §11).
#[test]
fn b4_outside_allowed_prefixes_creates_no_mapping() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let r = udp_request(&t.c.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "from-C");
    assert!(
        r.is_err(),
        "hostC behind a non-allowed B4 got a reply: {r:?}"
    );
    assert!(t.aftr.counter("drop_b4_not_allowed") >= 1);
    assert!(
        t.b4c.counter("b4_encap_packets") >= 1,
        "b4c did send into its softwire"
    );
    let sessions = t.aftr.sessions().unwrap();
    assert!(
        sessions.iter().all(|s| s["b4"] != "2001:db8:c::2"),
        "{sessions:?}"
    );
    assert_eq!(t.aftr.counter("nat_mapping_created"), 0);
}

/// A softwire packet carrying a Tunnel Encapsulation Limit option (as Linux ip6tnl and
/// OpenWrt B4s send) is translated, and the reply reaches the host (RFC 2473 §4.1.1). The packet is
/// crafted on the router, as if b4a had sent it.
#[test]
fn tunnel_encapsulation_limit_option_works_end_to_end() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    // Resolve neighbours on the path first with an ordinary exchange.
    udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "warm").unwrap();
    let listener = udp_listen_once(&t.a.host, sa(HOST_ADDR, 5555), Duration::from_secs(5));
    let aftr_mac = t
        .aftr_ns
        .run(|| dslite_tests::netns::mac("tun").unwrap())
        .join()
        .unwrap();
    let rt_mac = t
        .router
        .run(|| dslite_tests::netns::mac("to-aftr").unwrap())
        .join()
        .unwrap();
    let inner = udp4(HOST_ADDR, SERVER1, 5555, 7777, 64, b"tel");
    let v6 = softwire(t.a.wan_addr, aftr_addr(), &inner, &[(60, tel_destopts(4))]);
    let before = t.aftr.counter("aftr_out_packets");
    send_frame(
        &t.router,
        "to-aftr",
        eth(aftr_mac, rt_mac, packets::ETH_P_IPV6, &v6),
    )
    .unwrap();
    let (data, from) = listener.join().unwrap().unwrap();
    assert_eq!(from, SocketAddr::V4(sa(SERVER1, 7777)));
    assert!(
        data.starts_with(b"tel|198.51.100."),
        "{}",
        String::from_utf8_lossy(&data)
    );
    assert_eq!(t.aftr.counter("aftr_out_packets"), before + 1);
}

/// Clean shutdown: SIGTERM exits 0, detaches XDP and removes the pinned maps.
#[test]
fn controller_detaches_cleanly() {
    let mut t = DsLite::start(&[]).unwrap();
    let pin = t.b4a.pin_path.clone();
    assert!(pin.join("STATS").exists());
    let status = t.b4a.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!pin.exists(), "pins removed on clean exit");
    let out = std::process::Command::new("ip")
        .args(["-n", &t.a.b4.name, "-d", "link", "show", "lan"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("xdp"),
        "XDP still attached: {text}"
    );
}

/// Native IPv6 is left to the kernel and counted apart from softwire traffic, both
/// directions, so operators see each customer's v4/v6 split.
#[test]
fn native_ipv6_is_counted_apart_from_softwire() {
    let t = DsLite::start(&[]).unwrap();
    let server: SocketAddr = "[2001:db8:f::1]:9000".parse().unwrap();
    let _echo = tcp_echo_server(&t.router, server);
    let encap_before = t.b4a.counter("b4_encap_bytes");
    let out_before = t.b4a.counter("native_v6_out_bytes");
    let in_before = t.b4a.counter("native_v6_in_bytes");
    const LEN: usize = 1024 * 1024;
    assert_eq!(
        tcp_transfer(&t.a.host, server, LEN)
            .join()
            .unwrap()
            .unwrap(),
        LEN
    );
    let out = t.b4a.counter("native_v6_out_bytes") - out_before;
    let inb = t.b4a.counter("native_v6_in_bytes") - in_before;
    assert!(
        out >= LEN as u64 && inb >= LEN as u64,
        "native out {out}, in {inb}\n{}",
        t.diagnostics()
    );
    assert!(
        t.b4a.counter("b4_encap_bytes") - encap_before < 10_000,
        "native IPv6 must not enter the softwire"
    );
    assert_eq!(t.aftr.counter("aftr_out_packets"), 0);
}

/// Short timeouts in a lab (RFC 4787 REQ-5's floors are lifted with --allow-short-timeouts): an idle
/// UDP mapping expires, its block is released into hold-down and then freed, and the NAT log
/// records the block's allocation and release with the softwire and the port range (RFC 6888 §4 logging).
#[test]
fn idle_mappings_expire_and_blocks_are_logged() {
    let t = DsLite::start(&[
        "--udp-timeout",
        "2",
        "--block-hold-down",
        "2",
        "--allow-short-timeouts",
    ])
    .unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let seen = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "x").unwrap();
    let sessions = t.aftr.sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    let block = sessions[0]["block"].as_str().unwrap().to_string();
    let (lo, hi) = block.split_once('-').unwrap();
    let (lo, hi): (u16, u16) = (lo.parse().unwrap(), hi.parse().unwrap());
    assert!(lo <= seen.port() && seen.port() <= hi, "{seen} in {block}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !t.aftr.sessions().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "mapping never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Released, held down for 2 s, then freed: both events in the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = t.aftr.log();
        if log.contains("block-released") {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no release event:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    let alloc = records
        .iter()
        .find(|r| r["event"] == "block-allocated")
        .expect("allocation record");
    let rel = records
        .iter()
        .find(|r| r["event"] == "block-released")
        .expect("release record");
    for r in [alloc, rel] {
        // Blocks belong to the subscriber: its /56 (RFC 7785 §3).
        assert_eq!(r["b4"], "2001:db8:a::");
        assert_eq!(r["outside"], seen.ip().to_string());
        assert_eq!(r["ports"], block.as_str());
        assert!(r["ts"].as_str().unwrap().ends_with('Z'));
    }
    assert!(alloc["ts"].as_str().unwrap() < rel["ts"].as_str().unwrap());
    // The same customer comes back: it gets a working mapping again.
    udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "again").unwrap();
}

/// Hairpinning (RFC 4787 REQ-9): hostA sends to the public address:port that hostB holds; hostB
/// receives it from hostA's public address:port, translated in XDP on the AFTR.
#[test]
fn hairpinning_between_two_subscribers() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let seen_a = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    let seen_b = udp_request(&t.b.host, sa(HOST_ADDR, 6000), sa(SERVER1, 7777), "b").unwrap();
    let listener = udp_listen_once(&t.b.host, sa(HOST_ADDR, 6000), Duration::from_secs(5));
    udp_send(&t.a.host, sa(HOST_ADDR, 5000), seen_b, b"hello neighbour").unwrap();
    let (data, from) = listener.join().unwrap().unwrap();
    assert_eq!(data, b"hello neighbour");
    assert_eq!(from, seen_a, "the source is hostA's public endpoint");
    assert_eq!(t.aftr.counter("hairpin_packets"), 1, "{}", t.diagnostics());
}

/// Two subscribers use up their port quota (one block of 16 ports) while a third keeps
/// working: refused flows get an ICMP error at the host's socket, nothing is evicted, and
/// the third subscriber is unaffected (RFC 5508 REQ-8; RFC 6888 REQ-4).
#[test]
fn quota_exhaustion_is_per_subscriber() {
    let t = DsLite::start(&[
        "--block-size",
        "16",
        "--max-blocks",
        "1",
        "--b4-prefix",
        "2001:db8:c::/64",
    ])
    .unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    for (name, c) in [("hostA", &t.a), ("hostB", &t.b)] {
        // 16 even source ports: only 8 even outside ports exist in a 16-port block.
        let evens: Vec<u16> = (0..16).map(|i| 20000 + 2 * i).collect();
        let mut got = BurstResult::default();
        for p in evens {
            let r = udp_burst(
                &c.host,
                HOST_ADDR,
                p..p + 1,
                sa(SERVER1, 7777),
                Duration::from_secs(2),
            )
            .unwrap();
            got.replies += r.replies;
            got.icmp_errors += r.icmp_errors;
            got.silent += r.silent;
        }
        assert_eq!(got.replies, 8, "{name}: {got:?}\n{}", t.diagnostics());
        assert_eq!(
            got.icmp_errors, 8,
            "{name}: refused flows hear about it: {got:?}"
        );
    }
    assert_eq!(t.aftr.counter("drop_quota_exceeded"), 16);
    assert_eq!(t.aftr.counter("icmp_error_sent"), 16);
    // The third subscriber is unaffected.
    let seen = udp_request(&t.c.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "from-C").unwrap();
    assert!(seen.to_string().starts_with("198.51.100."));
    // And the first two still reach the server on the mappings they have.
    udp_request(&t.a.host, sa(HOST_ADDR, 20000), sa(SERVER1, 7777), "still").unwrap();
    // The NAT log says so too, once a second at most per subscriber (natEvent 13).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let quota_record = |log: String| {
        log.lines().any(|l| {
            l.contains(r#""event":"quota-exceeded""#) && l.contains(r#""b4":"2001:db8:a::""#)
        })
    };
    while !quota_record(t.aftr.log()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no quota record:\n{}",
            t.aftr.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Traceroute through the softwire: hop 1 is the B4 answering from 192.0.0.2, hop 2 is the
/// AFTR answering from 192.0.0.1, and the AFTR answers ping itself (RFC 6333 §5.7/§6.5; RFC 2473 §3/§6.3).
#[test]
fn aftr_shows_as_192_0_0_1() {
    let t = DsLite::start(&[]).unwrap();
    let aftr4 = std::net::Ipv4Addr::new(192, 0, 0, 1);
    assert_eq!(
        ping(&t.a.host, aftr4, 0x0192, 2).unwrap(),
        2,
        "ping 192.0.0.1"
    );
    let (from, ty) = icmp_probe(&t.a.host, SERVER1, 0x01ff, 1).unwrap();
    assert_eq!(
        (from, ty),
        (std::net::Ipv4Addr::new(192, 0, 0, 2), 11),
        "TTL 1: Time Exceeded from the B4"
    );
    let (from, ty) = icmp_probe(&t.a.host, SERVER1, 0x0200, 2).unwrap();
    assert_eq!(
        (from, ty),
        (aftr4, 11),
        "TTL 2: Time Exceeded from the AFTR"
    );
    let (from, ty) = icmp_probe(&t.a.host, SERVER1, 0x0201, 3).unwrap();
    assert_eq!((from, ty), (SERVER1, 0), "TTL 3 reaches the server");
    assert_eq!(t.aftr.counter("icmp_echo_answered"), 2);
}

/// Filtering (RFC 4787 REQ-8): after hostA -> S1, a datagram from S2 to hostA's mapping is delivered
/// under endpoint-independent filtering and dropped under address-dependent filtering.
#[test]
fn endpoint_independent_vs_address_dependent_filtering() {
    for adf in [false, true] {
        let extra: &[&str] = if adf {
            &["--udp-filtering", "adf"]
        } else {
            &[]
        };
        let t = DsLite::start(extra).unwrap();
        let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
        let seen = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "open").unwrap();
        let listener = udp_listen_once(&t.a.host, sa(HOST_ADDR, 5000), Duration::from_secs(2));
        udp_send(&t.server, sa(SERVER2, 6666), seen, b"from S2").unwrap();
        let got = listener.join().unwrap();
        if adf {
            assert!(got.is_err(), "ADF must drop S2's datagram: {got:?}");
            assert_eq!(t.aftr.counter("drop_filtered"), 1);
        } else {
            let (data, from) = got.unwrap();
            assert_eq!(
                (data.as_slice(), from),
                (&b"from S2"[..], SocketAddr::V4(sa(SERVER2, 6666)))
            );
        }
    }
}

/// ICMP errors from the internet reach the host (RFC 5508 REQ-4, REQ-5): a UDP datagram to a closed
/// server port brings back a port unreachable quoting the host's own private address and
/// port (the host's kernel matches it to the socket, which sees the error), and a probe
/// whose TTL runs out on an internet-side router gets that router's Time Exceeded.
#[test]
fn icmp_errors_from_the_internet_reach_the_host() {
    let t = DsLite::start(&[]).unwrap();
    let r = udp_burst(
        &t.a.host,
        HOST_ADDR,
        5050..5051,
        sa(SERVER1, 9),
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(
        r.icmp_errors,
        1,
        "port unreachable delivered to the socket: {r:?}\n{}",
        t.diagnostics()
    );
    assert!(t.aftr.counter("icmp_error_translated") >= 1);
    // The server routes on: a TTL-3 probe dies there (B4, AFTR, then the server).
    t.aftr_ns
        .ip(&["route", "add", "198.18.0.0/24", "via", "203.0.113.2"])
        .unwrap();
    t.server.sysctl("net.ipv4.ip_forward", "1").unwrap();
    t.server
        .ip(&["route", "add", "198.18.0.0/24", "dev", "eth0"])
        .unwrap();
    let far = std::net::Ipv4Addr::new(198, 18, 0, 1);
    let (from, ty) = icmp_probe(&t.a.host, far, 0x0300, 3).unwrap();
    assert_eq!(
        (from, ty),
        (SERVER1, 11),
        "Time Exceeded from the internet-side router"
    );
    // And the other way: hostA has no socket on 5050 any more; the server's datagram to
    // its mapping draws the host's port unreachable, which reaches the server's socket.
    let sessions = t.aftr.sessions().unwrap();
    let m = sessions
        .iter()
        .find(|s| s["inside"] == "192.168.1.10:5050")
        .expect("mapping for 5050");
    let outside: SocketAddrV4 = m["outside"].as_str().unwrap().parse().unwrap();
    let r = udp_burst(&t.server, SERVER1, 9..10, outside, Duration::from_secs(3)).unwrap();
    assert_eq!(
        r.icmp_errors,
        1,
        "the host's port unreachable reached the server: {r:?}\n{}",
        t.diagnostics()
    );
}

/// No slow-path loop (docs/design.md, "Hostile input"): one softwire packet to a local
/// address of each role that is not its softwire endpoint goes up the kernel to the slow
/// path's raw socket, which drops it, counted; it never comes round again (it used to circle
/// at 270,000 packets a second). The counters stay flat afterwards.
#[test]
fn a_packet_to_another_local_address_never_loops() {
    let t = DsLite::start(&[]).unwrap();
    t.a.b4
        .ip(&["addr", "add", "2001:db8:a::77/64", "dev", "wan"])
        .unwrap();
    t.aftr_ns
        .ip(&["addr", "add", "2001:db8:f::77/64", "dev", "tun"])
        .unwrap();
    let inner = udp4(SERVER1, HOST_ADDR, 53, 5000, 64, b"loop?");
    let to_b4 = eth(
        t.a.b4.mac_of("wan").unwrap(),
        t.router.mac_of("to-a").unwrap(),
        packets::ETH_P_IPV6,
        &softwire(aftr_addr(), "2001:db8:a::77".parse().unwrap(), &inner, &[]),
    );
    let back = udp4(HOST_ADDR, SERVER1, 5000, 53, 64, b"loop?");
    let to_aftr = eth(
        t.aftr_ns.mac_of("tun").unwrap(),
        t.router.mac_of("to-aftr").unwrap(),
        packets::ETH_P_IPV6,
        &softwire(t.a.wan_addr, "2001:db8:f::77".parse().unwrap(), &back, &[]),
    );
    send_frames(&t.router, "to-a", vec![to_b4]).unwrap();
    send_frames(&t.router, "to-aftr", vec![to_aftr]).unwrap();
    for ctl in [&t.b4a, &t.aftr] {
        assert!(
            ctl.counter_at_least("slow_foreign_dropped", 1) >= 1,
            "{}",
            t.diagnostics()
        );
    }
    let before = (
        t.b4a.counter("slow_frames_read"),
        t.aftr.counter("slow_frames_read"),
        t.b4a.counter("slow_foreign_dropped"),
        t.aftr.counter("slow_foreign_dropped"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = (
        t.b4a.counter("slow_frames_read"),
        t.aftr.counter("slow_frames_read"),
        t.b4a.counter("slow_foreign_dropped"),
        t.aftr.counter("slow_foreign_dropped"),
    );
    // A loop ran at 270,000 packets a second. The kernel's own traffic on a TAP that has just
    // come up (MLD reports, neighbour discovery) adds a few frames a second for a while, so
    // the bound is one a loop could never stay under, not zero.
    let grew = [
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        after.3 - before.3,
    ];
    assert!(
        grew.iter().all(|g| *g <= 20),
        "flat: nothing circles {grew:?}\n{}",
        t.diagnostics()
    );
    assert!(
        after.2 < 40 && after.3 < 40,
        "a drop per packet, not per round {after:?}\n{}",
        t.diagnostics()
    );
}
