//! End-to-end: MTU, fragments and the slow path, on the veth topology with real XDP and real
//! traffic (RFC 6333 §5.3, §5.7, §6.3; RFC 6908; RFC 4787 REQ-13, REQ-14; RFC 6864 §5.3.1;
//! RFC 2473 §8).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use dslite_tests::{
    netns::Netns,
    packets::{self, eth, udp4},
    topo::*,
    traffic::*,
};

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Exactly one datagram arrived, and it is `want` (without printing kilobytes on failure).
fn assert_one(got: Vec<Vec<u8>>, want: &[u8], t: &DsLite) {
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(
        lens,
        vec![want.len()],
        "datagrams received\n{}",
        t.diagnostics()
    );
    assert!(got[0] == want, "the datagram arrived intact");
}

/// A counter of `ctl`, waiting for the controller to publish at least `min`.
fn at_least(ctl: &dslite_tests::ctl::Controller, name: &str, min: u64) -> u64 {
    ctl.counter_at_least(name, min)
}

/// IPv6 links of 1500 bytes: a 1500-byte DF=1 datagram goes host -> server and back intact.
/// Each way the encapsulating element sends IPv6 fragments (the inner packet is never
/// fragmented, RFC 6333 §5.3, §6.3) and the other reassembles them before decapsulating (RFC 6333 §5.3/§6.3).
#[test]
fn large_df_datagrams_cross_a_1500_byte_ipv6_link_both_ways() {
    let t = DsLite::start_with(Options {
        v6_mtu: "1500",
        ..Default::default()
    })
    .unwrap();
    let _mirror = udp_mirror_server(&t.server, sa(SERVER1, 7777));
    let data = payload(1472, 1);
    let r = udp_mirror_exchange(
        &t.a.host,
        sa(HOST_ADDR, 5000),
        sa(SERVER1, 7777),
        data,
        Df::Set,
        5,
    );
    assert!(r.is_ok(), "{r:?}\n{}", t.diagnostics());
    assert!(
        at_least(&t.b4a, "slow_encap_sent", 1) >= 1,
        "{}",
        t.diagnostics()
    );
    assert!(
        at_least(&t.aftr, "slow_v6_reassembled", 1) >= 1,
        "{}",
        t.diagnostics()
    );
    assert!(t.aftr.counter("pass_ipv6_fragment") >= 2);
    assert!(at_least(&t.aftr, "kernel_v6_reasm_ok", 1) >= 1);
    assert!(
        at_least(&t.aftr, "slow_encap_sent", 1) >= 1,
        "{}",
        t.diagnostics()
    );
    assert!(
        at_least(&t.b4a, "slow_v6_reassembled", 1) >= 1,
        "{}",
        t.diagnostics()
    );
}

/// RFC 6333 §5.3 and §6.3, to the letter: a 1280-byte link between the router and the AFTR
/// behind 1500-byte access links. The router's Packet Too Big lowers the B4's path MTU toward
/// the AFTR (the kernel learns it through the slow path's socket; the dataplane's FIB lookups
/// see it once the next-hop cache is invalidated), and from then on the B4 fragments the
/// outer IPv6 packet. The host is told nothing: no ICMPv4 error reaches it, its connected
/// DF=1 socket never fails with EMSGSIZE, and its 1400-byte datagrams come back as 1400
/// bytes. The first one is lost on the router (its Packet Too Big is what teaches the B4)
/// and answered on its resend; every later one, from a new socket too, on its first send.
/// The answers cross the small link as fragments from the AFTR from the first one on: the
/// AFTR's own link is the small one.
#[test]
fn a_1280_byte_core_link_is_absorbed_by_the_softwire() {
    let t = DsLite::start_with(Options {
        v6_mtu: "1500",
        aftr_link_mtu: Some("1280"),
        ..Default::default()
    })
    .unwrap();
    let _mirror = udp_mirror_server(&t.server, sa(SERVER1, 7777));
    let icmp = icmp_listen(&t.a.host, Duration::from_secs(5));
    let first = udp_connected_exchange(
        &t.a.host,
        sa(HOST_ADDR, 5000),
        sa(SERVER1, 7777),
        payload(1400, 2),
        Df::Want,
        4,
    );
    assert!(first.is_ok(), "{first:?}\n{}", t.diagnostics());
    for (port, seed) in [(5001, 3), (5002, 4), (5003, 5)] {
        let sends = udp_connected_exchange(
            &t.a.host,
            sa(HOST_ADDR, port),
            sa(SERVER1, 7777),
            payload(1400, seed),
            Df::Want,
            1,
        );
        assert_eq!(
            sends.ok(),
            Some(1),
            "answered on its first send\n{}",
            t.diagnostics()
        );
    }
    let heard = icmp.join().unwrap().unwrap();
    assert!(
        heard.is_empty(),
        "ICMPv4 reached the host: {heard:?}\n{}",
        t.diagnostics()
    );
    assert!(
        at_least(&t.b4a, "slow_packet_too_big", 1) >= 1,
        "the B4 learned the path MTU\n{}",
        t.diagnostics()
    );
    assert_eq!(t.b4a.counter("slow_icmp6_relayed"), 0, "nothing relayed");
    assert!(
        at_least(&t.b4a, "slow_encap_sent", 1) >= 1,
        "{}",
        t.diagnostics()
    );
    assert!(
        at_least(&t.aftr, "slow_encap_sent", 1) >= 1,
        "{}",
        t.diagnostics()
    );
}

/// Bulk TCP each way with MSS clamping off, so every full-sized segment crosses the 1500-byte
/// IPv6 links as IPv6 fragments: every byte arrives, verified (RFC 6333 §5.3, §6.3).
#[test]
fn bulk_tcp_each_way_through_ipv6_fragments() {
    let t = DsLite::start_with(Options {
        v6_mtu: "1500",
        aftr_extra: &["--mss-clamp", "off"],
        b4_extra: &["--mss-clamp", "off"],
        ..Default::default()
    })
    .unwrap();
    let _echo = tcp_echo_server(&t.server, sa(SERVER1, 9000));
    let len = 4 << 20;
    let got = tcp_transfer(&t.a.host, sa(SERVER1, 9000), len)
        .join()
        .unwrap();
    assert_eq!(got.unwrap_or(0), len, "{}", t.diagnostics());
    assert!(
        t.b4a.counter_at_least("slow_encap_sent", 1000) >= 1000,
        "{}",
        t.diagnostics()
    );
    assert!(
        t.aftr.counter_at_least("slow_encap_sent", 1000) >= 1000,
        "{}",
        t.diagnostics()
    );
    assert_eq!(t.aftr.counter("drop_slow_path_unavailable"), 0);
}

/// With clamping on (the default), the server sees the SYN's MSS fitted to the tunnel over
/// a 1500-byte IPv6 link: 1500 - 40 - 20 - 20 = 1420 (RFC 6908, RFC 8513).
#[test]
fn the_server_sees_the_clamped_mss() {
    let t = DsLite::start_with(Options {
        v6_mtu: "1500",
        ..Default::default()
    })
    .unwrap();
    let _echo = tcp_echo_server(&t.server, sa(SERVER1, 9001));
    let seen = syn_mss_seen(&t.server, 9001, Duration::from_secs(8));
    let got = tcp_transfer(&t.a.host, sa(SERVER1, 9001), 100_000)
        .join()
        .unwrap();
    assert_eq!(got.unwrap_or(0), 100_000);
    assert_eq!(
        seen.join().unwrap().unwrap(),
        Some(1420),
        "{}",
        t.diagnostics()
    );
}

/// Softwire packets crafted as IPv6 fragments and sent from the router to the AFTR: in
/// order, reversed and duplicated each give exactly one translated datagram; overlapping
/// (RFC 5722) and incomplete chains give none, and are counted as failed and timed out.
/// Reversed fragments toward a B4 reach the host (RFC 6333 §5.3/§6.3).
#[test]
fn crafted_ipv6_fragments_are_reassembled_exactly_once() {
    let t = DsLite::start(&["--reassembly-timeout", "1"]).unwrap();
    let aftr_mac = t.aftr_ns.mac_of("tun").unwrap();
    let router_mac = t.router.mac_of("to-aftr").unwrap();
    let b4 = t.a.wan_addr;
    let data = payload(1000, 3);
    let to_aftr = |frags: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        frags
            .into_iter()
            .map(|f| eth(aftr_mac, router_mac, packets::ETH_P_IPV6, &f))
            .collect()
    };
    /// A way to send the three fragments, and how many datagrams the server gets.
    struct Case {
        what: &'static str,
        want: usize,
    }
    let cases = [
        Case {
            what: "in order",
            want: 1,
        },
        Case {
            what: "reversed",
            want: 1,
        },
        Case {
            what: "duplicated",
            want: 1,
        },
        Case {
            what: "overlapping",
            want: 0,
        },
        Case {
            what: "incomplete",
            want: 0,
        },
    ];
    for (i, Case { what, want }) in cases.iter().enumerate() {
        let port = 7001 + i as u16;
        let inner = udp4(HOST_ADDR, SERVER1, 6001 + i as u16, port, 64, &data);
        let mut frags = packets::fragment_v6(b4, aftr_addr(), 4, &inner, 400, 0x100 + i as u32);
        assert_eq!(frags.len(), 3);
        match *what {
            "reversed" => frags.reverse(),
            "duplicated" => frags = frags.iter().flat_map(|f| [f.clone(), f.clone()]).collect(),
            "overlapping" => {
                // A second fragment at the second one's offset, 8 bytes longer and different.
                let mut other =
                    packets::fragment_v6(b4, aftr_addr(), 4, &inner, 408, 0x100 + i as u32)[1]
                        .clone();
                let n = other.len();
                other[n - 1] ^= 0xff;
                frags.insert(1, other);
            }
            "incomplete" => {
                frags.pop();
            }
            _ => {}
        }
        let rx = udp_collect(&t.server, sa(SERVER1, port), Duration::from_secs(2));
        send_frames(&t.router, "to-aftr", to_aftr(frags)).unwrap();
        let got = rx.join().unwrap().unwrap();
        assert_eq!(
            got.len(),
            *want,
            "{what}: datagrams delivered\n{}",
            t.diagnostics()
        );
        assert!(got.iter().all(|g| g == &data), "{what}: intact");
    }
    assert!(
        t.aftr.counter_at_least("kernel_v6_reasm_failed", 1) >= 1,
        "{}",
        t.diagnostics()
    );
    assert!(
        t.aftr.counter_at_least("kernel_v6_reasm_timeout", 1) >= 1,
        "{}",
        t.diagnostics()
    );
    assert!(t.aftr.counter("slow_v6_reassembled") >= 3);

    // Toward the B4: the hostA mapping exists (the "in order" case), so a reply from the
    // server arrives; here we craft what the AFTR would send, fragmented and reversed.
    let b4_mac = t.a.b4.mac_of("wan").unwrap();
    let to_b4_mac = t.router.mac_of("to-a").unwrap();
    let back = udp4(SERVER1, HOST_ADDR, 7777, 6100, 64, &data);
    let mut frags = packets::fragment_v6(aftr_addr(), b4, 4, &back, 400, 0x200);
    frags.reverse();
    let rx = udp_collect(&t.a.host, sa(HOST_ADDR, 6100), Duration::from_secs(2));
    let frames = frags
        .into_iter()
        .map(|f| eth(b4_mac, to_b4_mac, packets::ETH_P_IPV6, &f))
        .collect();
    send_frames(&t.router, "to-a", frames).unwrap();
    assert_one(rx.join().unwrap().unwrap(), &data, &t);
    assert!(t.b4a.counter_at_least("slow_v6_reassembled", 1) >= 1);
}

/// IPv4 fragments through the NAT (RFC 4787 REQ-14; RFC 6864 §5.3.1): hostA and hostB, both 192.168.1.10, send
/// fragmented datagrams with the same IP ID at the same time, one of them out of order;
/// the server gets both, intact and apart. The server's reply, fragmented and reversed,
/// reaches hostA whole (through IPv6 fragmentation and the B4's own fragmenting).
#[test]
fn ipv4_fragments_through_the_nat_both_ways() {
    let t = DsLite::start(&[]).unwrap();
    let frag = |host: &Netns, b4: &Netns, seed: u8| -> (Vec<u8>, Vec<Vec<u8>>) {
        let data = payload(2000, seed);
        let mut ip = udp4(HOST_ADDR, SERVER1, 6200, 7200, 64, &data);
        ip[4..6].copy_from_slice(&0x7777u16.to_be_bytes());
        packets::set_df(&mut ip, false);
        let (dst, src) = (b4.mac_of("lan").unwrap(), host.mac_of("eth0").unwrap());
        let frames = packets::fragment_v4(&ip, 1480)
            .into_iter()
            .map(|f| eth(dst, src, packets::ETH_P_IP, &f))
            .collect::<Vec<_>>();
        (data, frames)
    };
    let (da, fa) = frag(&t.a.host, &t.a.b4, 0xa);
    let (db, fb) = frag(&t.b.host, &t.b.b4, 0xb);
    let rx = udp_collect(&t.server, sa(SERVER1, 7200), Duration::from_secs(3));
    send_frames(&t.a.host, "eth0", vec![fa[1].clone()]).unwrap();
    send_frames(&t.b.host, "eth0", vec![fb[0].clone()]).unwrap();
    send_frames(&t.a.host, "eth0", vec![fa[0].clone()]).unwrap();
    send_frames(&t.b.host, "eth0", vec![fb[1].clone()]).unwrap();
    let mut got = rx.join().unwrap().unwrap();
    got.sort();
    let mut want = vec![da, db];
    want.sort();
    assert_eq!(got.len(), 2, "{}", t.diagnostics());
    assert!(got == want, "both datagrams intact and apart");
    assert!(t.aftr.counter_at_least("slow_v4_reassembled", 2) >= 2);

    // Inbound: a mapping for hostA's port 6300, then a 3000-byte reply in reversed fragments.
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let seen = udp_request(&t.a.host, sa(HOST_ADDR, 6300), sa(SERVER1, 7777), "hello").unwrap();
    let SocketAddr::V4(outside) = seen else {
        panic!("outside endpoint {seen}")
    };
    let data = payload(3000, 0xc);
    let mut ip = udp4(SERVER1, *outside.ip(), 7777, outside.port(), 64, &data);
    packets::set_df(&mut ip, false);
    let (dst, src) = (
        t.aftr_ns.mac_of("inet").unwrap(),
        t.server.mac_of("eth0").unwrap(),
    );
    let mut frames: Vec<Vec<u8>> = packets::fragment_v4(&ip, 1480)
        .into_iter()
        .map(|f| eth(dst, src, packets::ETH_P_IP, &f))
        .collect();
    // The first fragment opens the chain (its ports name the mapping); the later ones may
    // then come in any order (docs/design.md, "Hostile input": later fragments with no
    // chain are dropped in XDP).
    frames[1..].reverse();
    let rx = udp_collect(&t.a.host, sa(HOST_ADDR, 6300), Duration::from_secs(3));
    send_frames(&t.server, "eth0", frames).unwrap();
    assert_one(rx.join().unwrap().unwrap(), &data, &t);
    assert!(t.aftr.counter_at_least("slow_v4_reassembled", 3) >= 3);
    assert!(
        t.aftr.counter("slow_encap_sent") >= 1,
        "3040 bytes leave as IPv6 fragments"
    );
}

/// Toward an internet link of 1400 bytes (RFC 4787 REQ-13): DF=1 and 1500 bytes gets an ICMP 3/4
/// with MTU 1400, which the host's kernel takes as its path MTU; DF=0 is fragmented by the
/// AFTR and the server reassembles it.
#[test]
fn too_big_toward_the_internet() {
    let t = DsLite::start_with(Options {
        inet_mtu: "1400",
        ..Default::default()
    })
    .unwrap();
    let mtu = path_mtu_after(&t.a.host, sa(HOST_ADDR, 6400), sa(SERVER1, 7400), 1472).unwrap();
    assert_eq!(mtu, 1400, "{}", t.diagnostics());
    assert!(t.aftr.counter("drop_v4_too_big") >= 1);

    let before = ip_mib(&t.server, "ReasmOKs").unwrap();
    let rx = udp_collect(&t.server, sa(SERVER1, 7401), Duration::from_secs(2));
    let data = payload(1472, 4);
    udp_send_df(
        &t.b.host,
        sa(HOST_ADDR, 6401),
        sa(SERVER1, 7401).into(),
        &data,
        Df::Clear,
    )
    .unwrap();
    assert_one(rx.join().unwrap().unwrap(), &data, &t);
    assert!(
        ip_mib(&t.server, "ReasmOKs").unwrap() > before,
        "it arrived in fragments"
    );
    assert!(t.aftr.counter("pass_v4_fragment_needed") >= 1);
}

/// ICMPv6 errors about softwire packets reach the host as ICMPv4 from the B4's 192.0.0.2
/// (RFC 2473 §8): "no route" from the router becomes host unreachable, and a routing loop's
/// "hop limit exceeded" becomes time exceeded.
#[test]
fn icmpv6_errors_are_relayed_to_the_host() {
    let t = DsLite::start(&[]).unwrap();
    let b4_v4 = Ipv4Addr::new(192, 0, 0, 2);
    t.router
        .ip(&["-6", "route", "add", "unreachable", "2001:db8:f::2/128"])
        .unwrap();
    let r = icmp_probe(&t.a.host, SERVER1, 0x4201, 64);
    assert_eq!(r.unwrap(), (b4_v4, 3), "{}", t.diagnostics());
    t.router
        .ip(&["-6", "route", "del", "unreachable", "2001:db8:f::2/128"])
        .unwrap();
    let b4: Ipv6Addr = t.a.wan_addr;
    t.router
        .ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:f::2/128",
            "via",
            &b4.to_string(),
        ])
        .unwrap();
    let r = icmp_probe(&t.a.host, SERVER1, 0x4202, 64);
    assert_eq!(r.unwrap(), (b4_v4, 11), "{}", t.diagnostics());
    assert!(t.b4a.counter_at_least("slow_icmp6_relayed", 2) >= 2);
}

/// The AFTR relays ICMPv6 errors about what it sent down a softwire too (RFC 2473 §8): with no
/// route to hostA's B4, the server's datagram to hostA's mapping comes back as an ICMPv4
/// host unreachable from hostA's public address, translated by the same XDP code as any
/// host's ICMP error.
#[test]
fn the_aftr_relays_icmpv6_errors_to_the_internet() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let seen = udp_request(&t.a.host, sa(HOST_ADDR, 6500), sa(SERVER1, 7777), "map").unwrap();
    let SocketAddr::V4(outside) = seen else {
        panic!("outside endpoint {seen}")
    };
    let b4 = format!("{}/128", t.a.wan_addr);
    t.router
        .ip(&["-6", "route", "add", "unreachable", &b4])
        .unwrap();
    let icmp = icmp_listen(&t.server, Duration::from_secs(3));
    for _ in 0..3 {
        udp_send(&t.server, sa(SERVER1, 7778), outside.into(), b"to hostA").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = icmp.join().unwrap().unwrap();
    assert!(
        got.contains(&(*outside.ip(), 3, 1)),
        "host unreachable from {}: {got:?}\n{}",
        outside.ip(),
        t.diagnostics()
    );
    assert!(t.aftr.counter_at_least("slow_icmp6_relayed", 1) >= 1);
    assert!(t.aftr.counter("icmp_error_translated") >= 1);
}

/// The B4 router's own IPv4 (RFC 6333 §5.7) uses the softwire from 192.0.0.2: the
/// B4's namespace has no IPv4 route of its own, yet it pings the server, and the AFTR maps
/// 192.0.0.2 like any inside host.
#[test]
fn the_b4_routers_own_ipv4_uses_the_softwire() {
    let t = DsLite::start(&[]).unwrap();
    assert_eq!(
        ping(&t.a.b4, SERVER1, 0x0b40, 3).unwrap(),
        3,
        "{}",
        t.diagnostics()
    );
    assert!(t.b4a.counter_at_least("slow_own_v4_packets", 3) >= 3);
    let sessions = t.aftr.sessions().unwrap();
    assert!(
        sessions.iter().any(|s| s["inside"]
            .as_str()
            .is_some_and(|i| i.starts_with("192.0.0.2:"))),
        "{sessions:?}"
    );
}

/// Orphan fragments (RFC 4787 REQ-14 under attack): 20,000 later fragments from the
/// internet that no first fragment announced are dropped in XDP, before they cost the slow
/// path anything, and a subscriber flooding incomplete chains from its LAN is held to its
/// budget. Meanwhile a TCP transfer runs, and another subscriber's fragmented UDP gets
/// through both ways.
#[test]
fn orphan_fragment_flood_beside_a_transfer() {
    let t = DsLite::start(&["--reassembly-memory", "262144", "--reassembly-timeout", "2"]).unwrap();
    let _echo = tcp_echo_server(&t.server, sa(SERVER1, 9002));
    let _echo_udp = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let transfer = tcp_transfer(&t.a.host, sa(SERVER1, 9002), 8 << 20);
    let (dst, src) = (
        t.aftr_ns.mac_of("inet").unwrap(),
        t.server.mac_of("eth0").unwrap(),
    );
    let frames: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| {
            let mut ip = udp4(
                SERVER1,
                Ipv4Addr::new(198, 51, 100, (i % 4) as u8),
                53,
                1024,
                64,
                &[0u8; 64],
            );
            ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            ip[6..8].copy_from_slice(&185u16.to_be_bytes()); // offset 1480, last fragment
            dslite_common::csum::set_ipv4_header_checksum(&mut ip);
            eth(dst, src, packets::ETH_P_IP, &ip)
        })
        .collect();
    // Subscriber A floods its own incomplete chains from the LAN (a first fragment each).
    let (lan, host) = (
        t.a.b4.mac_of("lan").unwrap(),
        t.a.host.mac_of("eth0").unwrap(),
    );
    let lan_flood: Vec<Vec<u8>> = (0..5_000u32)
        .map(|i| {
            let mut ip = udp4(HOST_ADDR, SERVER2, 6000, 53, 64, &[0u8; 1400]);
            ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            packets::set_df(&mut ip, false);
            let first = packets::fragment_v4(&ip, 1000).remove(0);
            eth(lan, host, packets::ETH_P_IP, &first)
        })
        .collect();
    let inet_flood = send_frames_in_background(&t.server, "eth0", frames);
    let own_flood = send_frames_in_background(&t.a.host, "eth0", lan_flood);
    // Subscriber B: 3000-byte datagrams, fragmented each way, while the floods run.
    let mut delivered = 0;
    for i in 0..5u16 {
        let data: String = (0..3000)
            .map(|j| (b'a' + ((i as usize + j) % 26) as u8) as char)
            .collect();
        if udp_request(&t.b.host, sa(HOST_ADDR, 6500 + i), sa(SERVER1, 7777), &data).is_ok() {
            delivered += 1;
        }
    }
    inet_flood.join().unwrap().unwrap();
    own_flood.join().unwrap().unwrap();
    assert_eq!(
        transfer.join().unwrap().unwrap_or(0),
        8 << 20,
        "{}",
        t.diagnostics()
    );
    assert_eq!(
        delivered,
        5,
        "B's fragmented UDP both ways\n{}",
        t.diagnostics()
    );
    assert!(
        t.aftr.counter_at_least("drop_orphan_fragment", 19_000) >= 19_000,
        "{}",
        t.diagnostics()
    );
    assert!(
        t.aftr.counter("drop_fragment_budget") >= 1000,
        "A is held to its fragment budget\n{}",
        t.diagnostics()
    );
    assert!(
        t.aftr.counter("slow_v4_fragment") < 8_000,
        "the orphans never reached the slow path\n{}",
        t.diagnostics()
    );
}
