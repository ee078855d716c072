//! Hostile input through the AFTR program (BPF_PROG_TEST_RUN): what a subscriber or an
//! internet host gains by abusing each feature, and that it is nothing. Each test names the
//! defense it checks (docs/design.md, "Hostile input").

use std::net::{Ipv4Addr, Ipv6Addr};

use dslite_common::maps::{AftrConfig, Slot, SlotKey};
use dslite_tests::{
    fixture::*,
    packets::{self, eth, udp4},
};

/// True when the frame went on to the internet (IPv4 out), not back down a softwire (an
/// ICMP refusal is IPv6 out).
fn forwarded(v: u32, out: &[u8]) -> bool {
    v == XDP_REDIRECT && out[12..14] == [0x08, 0x00]
}

fn mappings(rig: &Rig) -> usize {
    dslite_user::commands::inspect::read_sessions(&rig.pin)
        .unwrap()
        .len()
}

fn slots(rig: &Rig) -> Vec<(SlotKey, Slot)> {
    let m: aya::maps::HashMap<_, SlotKey, Slot> =
        aya::maps::HashMap::try_from(rig.ebpf.map("SW_BLOCKS").unwrap()).unwrap();
    m.iter().map(|e| e.unwrap()).collect()
}

fn edit_config(rig: &mut Rig, f: impl FnOnce(&mut AftrConfig)) {
    let mut a: aya::maps::Array<_, AftrConfig> =
        aya::maps::Array::try_from(rig.ebpf.map_mut("AFTR_CONFIG").unwrap()).unwrap();
    let mut c = a.get(&0, 0).unwrap();
    f(&mut c);
    a.set(0, c, 0).unwrap();
}

/// RFC 7785: one subscriber rotating its source address inside its /56 shares one port
/// quota and one session limit; it cannot take more blocks or mappings than one address.
#[test]
fn a_subscriber_rotating_addresses_gains_nothing() {
    with_aftr_cfg(
        |s| s.limits.max_sessions = 3,
        |rig| {
            for i in 0..3u16 {
                let (v, out) = rig.run(
                    "tun",
                    &from_b4(
                        rig,
                        b4(0x100 + i),
                        &udp4(HOST, SERVER, 5000, 7777, 64, b"x"),
                        &[],
                    ),
                );
                assert!(forwarded(v, &out));
            }
            for i in 3..50u16 {
                let (v, out) = rig.run(
                    "tun",
                    &from_b4(
                        rig,
                        b4(0x100 + i),
                        &udp4(HOST, SERVER, 5000, 7777, 64, b"x"),
                        &[],
                    ),
                );
                assert!(!forwarded(v, &out), "address {i} of the same /56");
            }
            assert_eq!(mappings(rig), 3, "one session limit for the subscriber");
            assert!(rig.counter("drop_session_limit") >= 47);
            assert_eq!(slots(rig).len(), 1, "one block: the subscriber's");
            // Replies still go to the /128 that made each mapping.
            let sessions = dslite_user::commands::inspect::read_sessions(&rig.pin).unwrap();
            let mut b4s: Vec<_> = sessions.iter().map(|s| s.b4.clone()).collect();
            b4s.sort();
            assert_eq!(
                b4s,
                ["2001:db8:a::100", "2001:db8:a::101", "2001:db8:a::102"]
            );
        },
    );
}

/// The block quota is the subscriber's: addresses of one /56 share its blocks.
#[test]
fn the_port_quota_belongs_to_the_prefix() {
    with_aftr_cfg(
        |s| {
            s.max_blocks = 1;
            s.block_size = 16;
        },
        |rig| {
            let mut ok = 0;
            for i in 0..40u16 {
                let (v, out) = rig.run(
                    "tun",
                    &from_b4(
                        rig,
                        b4(i + 1),
                        &udp4(HOST, SERVER, 6000 + 2 * i, 7777, 64, b"x"),
                        &[],
                    ),
                );
                ok += forwarded(v, &out) as usize;
            }
            assert!(
                ok <= 8,
                "16 ports, 8 of each parity, whatever the address: {ok} {:?} {:?}",
                slots(rig)
                    .iter()
                    .map(|(k, s)| (Ipv6Addr::from(k.b4), k.slot, s.block))
                    .collect::<Vec<_>>(),
                rig.counters()
                    .into_iter()
                    .filter(|(_, v)| *v != 0)
                    .collect::<Vec<_>>()
            );
            assert!(rig.counter("drop_quota_exceeded") >= 32);
            assert_eq!(slots(rig).len(), 1);
        },
    );
}

/// Softwire packets only on the tunnel interface, IPv4 to the pool only on the internet one.
#[test]
fn packets_on_the_wrong_interface_are_dropped() {
    with_aftr(|rig| {
        let (tun, inet) = (rig.ifindex["tun"], rig.ifindex["inet"]);
        edit_config(rig, |c| {
            c.tunnel_ifindex = tun;
            c.internet_ifindex = inet;
        });
        let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"x");
        let (v, _) = rig.run("inet", &from_b4_on(rig, "inet", b4(2), &inner, &[]));
        assert_eq!(v, XDP_DROP);
        assert_eq!(rig.counter("drop_wrong_interface"), 1);
        let (v, out) = rig.run("tun", &from_b4(rig, b4(2), &inner, &[]));
        assert_eq!(v, XDP_REDIRECT);
        let (addr, port) = outside_of(&out);
        let reply = udp4(SERVER, addr, 7777, port, 64, b"y");
        let on_tun = eth(rig.mac("tun"), ROUTER_MAC, packets::ETH_P_IP, &reply);
        assert_eq!(rig.run("tun", &on_tun).0, XDP_DROP);
        assert_eq!(rig.counter("drop_wrong_interface"), 2);
        assert_eq!(rig.run("inet", &from_internet(rig, &reply)).0, XDP_REDIRECT);
    });
}

/// A B4 source that is one of the AFTR host's own addresses is dropped, even inside an
/// allowed prefix (a denying /128 in B4_ALLOW).
#[test]
fn the_aftr_hosts_own_addresses_are_no_b4() {
    with_aftr(|rig| {
        let own = b4(0x99);
        dslite_user::dataplane::sync_local_b4_denies(
            &rig.pin,
            &[own],
            &aftr_settings().b4_prefixes,
        )
        .unwrap();
        let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"x");
        assert_eq!(rig.run("tun", &from_b4(rig, own, &inner, &[])).0, XDP_DROP);
        assert_eq!(rig.counter("drop_b4_source_local"), 1);
        assert_eq!(mappings(rig), 0);
        assert_eq!(
            rig.run("tun", &from_b4(rig, b4(2), &inner, &[])).0,
            XDP_REDIRECT
        );
        // The host lost the address: the deny goes, the prefix still allows it.
        dslite_user::dataplane::sync_local_b4_denies(&rig.pin, &[], &aftr_settings().b4_prefixes)
            .unwrap();
        assert_eq!(
            rig.run("tun", &from_b4(rig, own, &inner, &[])).0,
            XDP_REDIRECT
        );
    });
}

/// A sender outside every `--b4-prefix` gets nothing on any branch that answers or
/// forwards without a mapping: the echo of 192.0.0.1, a TTL or too-big refusal, a denied
/// destination, an inner IPv4 fragment (the slow path's) and an IPv6 fragment (the
/// kernel's reassembly). Each is a drop counted as `drop_b4_not_allowed`, and nothing is
/// made for it (the B4 check moved after the inner parse for established mappings).
#[test]
fn a_stranger_gets_no_answer_on_any_branch() {
    with_aftr(|rig| {
        let stranger: Ipv6Addr = "2001:db8:f::99".parse().unwrap();
        let mut big = udp4(HOST, SERVER, 5000, 7777, 64, &[7u8; 1600]);
        packets::set_df(&mut big, true);
        let whole = udp4(HOST, SERVER, 5001, 7777, 64, &[1u8; 64]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "echo to 192.0.0.1",
                from_b4(
                    rig,
                    stranger,
                    &packets::icmp4_echo(HOST, Ipv4Addr::new(192, 0, 0, 1), 7, 1, 64, false),
                    &[],
                ),
            ),
            (
                "TTL 1",
                from_b4(rig, stranger, &udp4(HOST, SERVER, 5002, 7777, 1, b"x"), &[]),
            ),
            ("DF, over the MTU", from_b4(rig, stranger, &big, &[])),
            (
                "a denied destination",
                from_b4(
                    rig,
                    stranger,
                    &udp4(HOST, Ipv4Addr::new(127, 0, 0, 1), 5003, 53, 64, b"x"),
                    &[],
                ),
            ),
            (
                "an inner IPv4 fragment",
                from_b4(rig, stranger, &packets::fragment_v4(&whole, 32)[0], &[]),
            ),
            (
                "an IPv6 fragment",
                eth(
                    rig.mac("tun"),
                    ROUTER_MAC,
                    packets::ETH_P_IPV6,
                    &packets::fragment_v6(stranger, AFTR_ADDR.parse().unwrap(), 4, &whole, 48, 9)
                        [0],
                ),
            ),
        ];
        for (i, (what, frame)) in cases.iter().enumerate() {
            let (v, _) = rig.run("tun", frame);
            assert_eq!(v, XDP_DROP, "{what}");
            assert_eq!(rig.counter("drop_b4_not_allowed"), i as u64 + 1, "{what}");
        }
        assert_eq!(mappings(rig), 0);
        assert_eq!(
            rig.counter("slow_v4_fragment"),
            0,
            "nothing went to the slow path"
        );
    });
}

/// XDP checks a B4's prefix (B4_ALLOW) only for packets without a mapping (an established
/// mapping's B4 passed when it was made). What keeps that safe: a reload that removes the
/// prefix, or the host taking the B4's address, makes the controller release the B4's
/// mappings (`Sweeper::reconcile`, retried each second until it succeeds); from then on
/// the B4 is refused like any other.
#[test]
fn a_b4_no_longer_allowed_loses_its_established_mappings() {
    with_aftr(|rig| {
        use dslite_user::{dataplane, sweep::Sweeper};
        let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"x");
        for b in [2, 3] {
            let (v, out) = rig.run("tun", &from_b4(rig, b4(b), &inner, &[]));
            assert!(forwarded(v, &out), "b4({b})");
        }
        assert_eq!(mappings(rig), 2);
        // The reload: 2001:db8:a::/64 is gone; b4(3) keeps a /128 of its own.
        let mut s = aftr_settings();
        s.b4_prefixes = vec![format!("{}/128", b4(3)).parse().unwrap()];
        let seed = dataplane::aftr_config(&aftr_settings(), 0).hash_seed;
        let plan = dataplane::plan_aftr(&rig.pin, &s, seed).unwrap();
        dataplane::apply_aftr(&rig.pin, &plan).unwrap();
        // Until the controller's reconcile, the established mappings still forward (the
        // window is the reload itself: the reconcile follows it at once); a new flow of
        // the removed B4 is refused.
        let (v, out) = rig.run("tun", &from_b4(rig, b4(2), &inner, &[]));
        assert!(forwarded(v, &out));
        let other = udp4(HOST, SERVER, 5001, 7777, 64, b"x");
        assert_eq!(
            rig.run("tun", &from_b4(rig, b4(2), &other, &[])).0,
            XDP_DROP
        );
        assert_eq!(rig.counter("drop_b4_not_allowed"), 1);
        let cfg = dataplane::aftr_config(&s, seed);
        let mut sw = Sweeper::open(&rig.pin, cfg, Default::default()).unwrap();
        let now = dslite_user::clock::monotonic_ns;
        let r = sw.reconcile(now(), &s.pool, &s.b4_prefixes, &[]).unwrap();
        assert_eq!(r.mappings, 1, "b4(2)'s mapping goes, b4(3)'s stays");
        assert_eq!(
            rig.run("tun", &from_b4(rig, b4(2), &inner, &[])).0,
            XDP_DROP
        );
        assert_eq!(rig.counter("drop_b4_not_allowed"), 2);
        let (v, out) = rig.run("tun", &from_b4(rig, b4(3), &inner, &[]));
        assert!(forwarded(v, &out));
        // The host takes b4(3)'s address: denied as a source at once, but its established
        // mapping stays until the reconcile the controller runs when an own address joins
        // an allowed prefix.
        let own = b4(3);
        dataplane::sync_local_b4_denies(&rig.pin, &[own], &s.b4_prefixes).unwrap();
        let (v, out) = rig.run("tun", &from_b4(rig, own, &inner, &[]));
        assert!(forwarded(v, &out));
        let fresh = udp4(HOST, SERVER, 5002, 7777, 64, b"x");
        assert_eq!(rig.run("tun", &from_b4(rig, own, &fresh, &[])).0, XDP_DROP);
        assert_eq!(rig.counter("drop_b4_source_local"), 1);
        let r = sw
            .reconcile(now(), &s.pool, &s.b4_prefixes, &[own.octets()])
            .unwrap();
        assert_eq!(r.mappings, 1);
        assert_eq!(rig.run("tun", &from_b4(rig, own, &inner, &[])).0, XDP_DROP);
        assert_eq!(rig.counter("drop_b4_source_local"), 2);
        // Nothing is left to do: a second pass (the controller runs two) deletes nothing.
        let r = sw
            .reconcile(now(), &s.pool, &s.b4_prefixes, &[own.octets()])
            .unwrap();
        assert_eq!((r.mappings, r.slots, r.blocks), (0, 0, 0));
        assert_eq!(mappings(rig), 0, "nothing made for either");
    });
}

/// A subscriber never reaches special-purpose ranges, the AFTR's own addresses or the
/// operator's denied ranges, and such a packet makes no mapping; 192.0.0.1 still answers.
#[test]
fn denied_destinations_are_dropped_before_any_mapping() {
    with_aftr_cfg(
        |s| s.deny_destinations = vec!["10.0.0.0/8".parse().unwrap()],
        |rig| {
            let s = aftr_settings();
            let want = dslite_user::dataplane::denied_destinations(
                &dslite_user::config::AftrSettings {
                    deny_destinations: vec!["10.0.0.0/8".parse().unwrap()],
                    ..s
                },
                &[Ipv4Addr::new(203, 0, 113, 1)],
            );
            dslite_user::dataplane::sync_denied(&rig.pin, &want).unwrap();
            let denied = [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(0, 1, 2, 3),
                Ipv4Addr::new(224, 0, 0, 251),
                Ipv4Addr::new(240, 0, 0, 1),
                Ipv4Addr::new(255, 255, 255, 255),
                Ipv4Addr::new(192, 0, 0, 2),
                Ipv4Addr::new(10, 20, 30, 40),
                Ipv4Addr::new(203, 0, 113, 1),
            ];
            for (i, d) in denied.iter().enumerate() {
                let inner = udp4(HOST, *d, 5000 + i as u16, 53, 64, b"x");
                assert_eq!(
                    rig.run("tun", &from_b4(rig, b4(2), &inner, &[])).0,
                    XDP_DROP,
                    "{d}"
                );
            }
            assert_eq!(rig.counter("drop_denied_destination"), denied.len() as u64);
            assert_eq!(mappings(rig), 0);
            let echo = packets::icmp4_echo(HOST, Ipv4Addr::new(192, 0, 0, 1), 7, 1, 64, false);
            assert_eq!(
                rig.run("tun", &from_b4(rig, b4(2), &echo, &[])).0,
                XDP_REDIRECT
            );
            let ok = udp4(HOST, SERVER, 5100, 53, 64, b"x");
            assert_eq!(
                rig.run("tun", &from_b4(rig, b4(2), &ok, &[])).0,
                XDP_REDIRECT
            );
            // The /16 summary the fast path reads first (dslite_common::hint): set for every
            // /16 a denied prefix touches, clear elsewhere, and cleared again when the
            // prefix goes; the trie still decides inside a set /16 (SERVER above shares
            // 203.0/16 with the denied 203.0.113.1).
            let hinted = |a: Ipv4Addr| {
                let hint = dslite_user::dataplane::Pinned::new(&rig.pin)
                    .array::<u64>(dslite_common::maps::DENY_HINT)
                    .unwrap();
                let (word, bit) = dslite_common::hint::hint_bit(&a.octets());
                hint.get(&word, 0).unwrap() & bit != 0
            };
            for d in denied {
                assert!(hinted(d), "{d}");
            }
            assert!(hinted(Ipv4Addr::new(10, 255, 0, 1)));
            assert!(!hinted(Ipv4Addr::new(11, 0, 0, 1)));
            assert!(!hinted(Ipv4Addr::new(198, 18, 0, 1)));
            let without_ten = dslite_user::dataplane::denied_destinations(
                &aftr_settings(),
                &[Ipv4Addr::new(203, 0, 113, 1)],
            );
            dslite_user::dataplane::sync_denied(&rig.pin, &without_ten).unwrap();
            assert!(!hinted(Ipv4Addr::new(10, 20, 30, 40)));
            assert!(hinted(Ipv4Addr::new(203, 0, 113, 1)));
            let ten = udp4(HOST, Ipv4Addr::new(10, 20, 30, 40), 5200, 53, 64, b"x");
            rig.run("tun", &from_b4(rig, b4(2), &ten, &[]));
            assert_eq!(
                rig.counter("drop_denied_destination"),
                denied.len() as u64,
                "10.0.0.0/8 is no longer denied"
            );
        },
    );
}

fn tcp_state(rig: &Rig, inside_port: u16) -> String {
    dslite_user::commands::inspect::read_sessions(&rig.pin)
        .unwrap()
        .into_iter()
        .find(|s| s.inside.ends_with(&format!(":{inside_port}")))
        .map(|s| s.state.to_string())
        .unwrap_or_default()
}

fn with_csum(mut seg: Vec<u8>) -> Vec<u8> {
    seg[36..38].copy_from_slice(&[0, 0]);
    let h = etherparse::Ipv4HeaderSlice::from_slice(&seg)
        .unwrap()
        .to_header();
    let t = etherparse::TcpHeaderSlice::from_slice(&seg[20..])
        .unwrap()
        .to_header();
    let c = t.calc_checksum_ipv4(&h, &[]).unwrap();
    seg[36..38].copy_from_slice(&c.to_be_bytes());
    seg
}

/// RFC 7857 §2: an outsider's RST makes an established mapping transitory only until the
/// next packet; an inbound SYN changes nothing; inbound packets alone never establish.
#[test]
fn outsiders_cannot_flip_tcp_state() {
    with_aftr(|rig| {
        let (v, out) = rig.run(
            "tun",
            &from_b4(
                rig,
                b4(2),
                &packets::tcp4_syn(HOST, SERVER, 40000, 80, 64),
                &[],
            ),
        );
        assert_eq!(v, XDP_REDIRECT);
        let (addr, port) = outside_of(&out);
        let inbound = |flags: u8| {
            let mut seg = packets::tcp4_flags(SERVER, addr, 80, port, 64, flags);
            seg[33] = flags;
            with_csum(seg)
        };
        assert_eq!(
            rig.run("inet", &from_internet(rig, &inbound(0x12))).0,
            XDP_REDIRECT
        );
        assert_eq!(
            rig.run("inet", &from_internet(rig, &inbound(0x10))).0,
            XDP_REDIRECT
        );
        assert_eq!(
            tcp_state(rig, 40000),
            "opening",
            "inbound alone does not establish"
        );
        let ack = packets::tcp4_flags(HOST, SERVER, 40000, 80, 64, 0x10);
        let _ = rig.run("tun", &from_b4(rig, b4(2), &ack, &[]));
        assert_eq!(tcp_state(rig, 40000), "established");
        let _ = rig.run("inet", &from_internet(rig, &inbound(0x04)));
        assert_eq!(tcp_state(rig, 40000), "reset", "a RST: transitory for now");
        // The mapping still translates in both directions while transitory (RFC 7857 §2.2:
        // the RST starts a timer, it does not end the mapping): a retransmission from the
        // server, then the host's next segment, on the same outside endpoint.
        assert_eq!(
            rig.run("inet", &from_internet(rig, &inbound(0x10))).0,
            XDP_REDIRECT,
            "an inbound segment after the RST is still translated"
        );
        let (v, after) = rig.run("tun", &from_b4(rig, b4(2), &ack, &[]));
        assert_eq!(
            v, XDP_REDIRECT,
            "the host's segment after the RST is translated"
        );
        assert_eq!(outside_of(&after), (addr, port), "on the same mapping");
        assert_eq!(
            tcp_state(rig, 40000),
            "established",
            "later traffic restores it"
        );
        let _ = rig.run("inet", &from_internet(rig, &inbound(0x02)));
        assert_eq!(
            tcp_state(rig, 40000),
            "established",
            "an inbound SYN changes nothing"
        );
    });
}

/// Hairpinned packets pass the receiving mapping's filter like packets from the internet
/// (RFC 4787 REQ-9): under APDF, subscriber B cannot reach A's mapping until A sent to B.
#[test]
fn hairpinning_is_filtered_like_the_internet() {
    with_aftr_cfg(
        |s| {
            s.filtering = [dslite_user::config::Filtering::Apdf; 3];
            s.subscriber_prefix_len = 128;
        },
        |rig| {
            let a = b4(2);
            let b = b4(3);
            let (_, out) = rig.run(
                "tun",
                &from_b4(rig, a, &udp4(HOST, SERVER, 5000, 7777, 64, b"a"), &[]),
            );
            let (a_addr, a_port) = outside_of(&out);
            let (_, out) = rig.run(
                "tun",
                &from_b4(rig, b, &udp4(HOST, SERVER, 5001, 7777, 64, b"b"), &[]),
            );
            let (b_addr, b_port) = outside_of(&out);
            let to_a = udp4(HOST, a_addr, 5001, a_port, 64, b"hi");
            assert_eq!(rig.run("tun", &from_b4(rig, b, &to_a, &[])).0, XDP_DROP);
            assert_eq!(rig.counter("drop_filtered"), 1);
            // A sends to B's outside endpoint first (which B's filter refuses, as A is new to
            // B); then B's packets reach A.
            let to_b = udp4(HOST, b_addr, 5000, b_port, 64, b"hello");
            let _ = rig.run("tun", &from_b4(rig, a, &to_b, &[]));
            assert_eq!(rig.run("tun", &from_b4(rig, b, &to_a, &[])).0, XDP_REDIRECT);
            assert!(rig.counter("hairpin_packets") >= 1);
        },
    );
}

/// One mapping keeps at most `max_peers` remotes; more are counted, not stored.
#[test]
fn one_mapping_cannot_fill_the_peer_table() {
    with_aftr_cfg(
        |s| {
            s.filtering = [dslite_user::config::Filtering::Apdf; 3];
            s.max_peers = 2;
        },
        |rig| {
            for i in 0..5u16 {
                let inner = udp4(HOST, SERVER, 5000, 7770 + i, 64, b"x");
                assert_eq!(
                    rig.run("tun", &from_b4(rig, b4(2), &inner, &[])).0,
                    XDP_REDIRECT
                );
            }
            let peers: aya::maps::HashMap<_, dslite_common::maps::PeerKey, u64> =
                aya::maps::HashMap::try_from(rig.ebpf.map("PEERS").unwrap()).unwrap();
            assert_eq!(peers.keys().count(), 2);
            assert_eq!(rig.counter("peer_limit_refused"), 3);
        },
    );
}

/// ICMP errors that concern nobody here are dropped: one quoting an ICMP error, and one
/// whose quoted source is not the address it was sent to.
#[test]
fn icmp_errors_about_nothing_of_ours_are_dropped() {
    with_aftr(|rig| {
        let (_, out) = rig.run(
            "tun",
            &from_b4(rig, b4(2), &udp4(HOST, SERVER, 5000, 7777, 64, b"x"), &[]),
        );
        let (addr, port) = outside_of(&out);
        let quoted = udp4(addr, SERVER, port, 7777, 63, b"x");
        let error = |to: Ipv4Addr, quote: &[u8]| {
            let mut icmp = vec![3u8, 1, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&quote[..28.min(quote.len())]);
            let c = dslite_common::csum::checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_ne_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            ip.extend_from_slice(&Ipv4Addr::new(203, 0, 113, 9).octets());
            ip.extend_from_slice(&to.octets());
            ip.extend_from_slice(&icmp);
            let n = ip.len() as u16;
            ip[2..4].copy_from_slice(&n.to_be_bytes());
            dslite_common::csum::set_ipv4_header_checksum(&mut ip);
            ip
        };
        // To another pool address than the quoted source: concerns nobody.
        let other = if addr.octets()[3] == 0 {
            Ipv4Addr::new(198, 51, 100, 1)
        } else {
            Ipv4Addr::new(198, 51, 100, 0)
        };
        assert_eq!(
            rig.run("inet", &from_internet(rig, &error(other, &quoted)))
                .0,
            XDP_DROP
        );
        assert_eq!(rig.counter("drop_icmp_error_mismatch"), 1);
        // An error quoting an error about our packet.
        let inner_err = error(addr, &quoted);
        let mut q = inner_err.clone();
        q[12..16].copy_from_slice(&addr.octets());
        q[16..20].copy_from_slice(&SERVER.octets());
        dslite_common::csum::set_ipv4_header_checksum(&mut q);
        assert_eq!(
            rig.run("inet", &from_internet(rig, &error(addr, &q))).0,
            XDP_DROP
        );
        assert!(rig.counter("drop_bad_icmp_error") >= 1);
        // The genuine one is translated.
        assert_eq!(
            rig.run("inet", &from_internet(rig, &error(addr, &quoted)))
                .0,
            XDP_REDIRECT
        );
    });
}

/// The block search visits every block: with every block of the pool taken but one, a new
/// subscriber gets that one; with none left, the refusal is a counted drop.
#[test]
fn the_last_free_block_is_found() {
    with_aftr_cfg(
        |s| {
            s.subscriber_prefix_len = 128;
            s.max_blocks = 1;
            s.block_size = 4096;
            s.ports = dslite_user::config::PortRange {
                lo: 4096,
                hi: 65535,
            };
        },
        |rig| {
            // 4 addresses x 15 blocks = 60 blocks.
            let mut ok = 0;
            for i in 0..60u16 {
                let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"x");
                let (v, out) = rig.run("tun", &from_b4(rig, b4(0x1000 + i), &inner, &[]));
                ok += forwarded(v, &out) as usize;
            }
            assert_eq!(ok, 60, "every block found: {:?}", rig.counters());
            assert_eq!(rig.counter("drop_pool_exhausted"), 0);
            let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"x");
            let (v, out) = rig.run("tun", &from_b4(rig, b4(0x2000), &inner, &[]));
            assert!(!forwarded(v, &out), "no block left");
            assert_eq!(rig.counter("drop_pool_exhausted"), 1);
        },
    );
}

/// A subscriber gets its own block back from hold-down: same range, no new allocation.
#[test]
fn a_subscriber_takes_its_held_block_back() {
    with_aftr(|rig| {
        use dslite_user::{clock::monotonic_ns, config::Timeouts, sweep::Sweeper};
        let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"x");
        let (_, out) = rig.run("tun", &from_b4(rig, b4(2), &inner, &[]));
        let (addr, port) = outside_of(&out);
        let cfg = dslite_user::dataplane::aftr_config(&aftr_settings(), 0);
        let mut sw = Sweeper::open(&rig.pin, cfg, Timeouts::default()).unwrap();
        let r = sw.sweep(monotonic_ns() + 301_000_000_000).unwrap();
        assert_eq!((r.expired, r.blocks_released), (1, 1));
        assert_eq!(rig.counter("block_allocated"), 1);
        // Another address of the same /56 comes back within the hold-down.
        let (v, out) = rig.run(
            "tun",
            &from_b4(rig, b4(3), &udp4(HOST, SERVER, 5002, 7777, 64, b"x"), &[]),
        );
        assert_eq!(v, XDP_REDIRECT);
        let (addr2, port2) = outside_of(&out);
        assert_eq!(addr2, addr);
        assert_eq!(port2 / 512, port / 512, "the same block");
        assert_eq!(rig.counter("block_reclaimed"), 1);
        // The same block, logged as held again (its release was logged).
        assert_eq!(rig.counter("block_allocated"), 2);
        assert!(slots(rig).iter().all(|(_, s)| s.held == 0));
    });
}
