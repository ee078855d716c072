//! End-to-end with plain Linux neighbours (docs/operations.md, "Hooks: XDP or tc"): the
//! IPv6 router runs no program, an IPv4 router sits between the AFTR and the server, and
//! every veth keeps the kernel's default offloads, so dslite receives packets with partial
//! checksums (CHECKSUM_PARTIAL) and GSO aggregates (`topo::Options::plain`).
//!
//! For each hook, at IPv6 MTU 1500 and 1540 (RFC 6908): 10 MiB of TCP each way between
//! hostA and the server with every byte verified by its receiver, UDP both ways (one
//! datagram of a full 1500-byte IPv4 packet, which needs the outer IPv6 packet fragmented
//! at MTU 1500, RFC 6333 §5.3), no checksum error on either receiving host, and none of the
//! drop counters that reveal a mishandled skb. `--hook xdp` behind such neighbours must be
//! refused at start, and must work once their TX checksumming is off.

use std::time::{Duration, Instant};

use dslite_tests::{
    topo::{DsLite, Options, HOST_ADDR, SERVER1},
    traffic::{
        sa, snmp, tcp_one_way, tcp_pattern_server, udp_echo_server, udp_mirror_exchange,
        udp_mirror_server, udp_request, Df, Direction,
    },
};

const LEN: usize = 10 * 1024 * 1024;
const MTUS: [&str; 2] = ["1500", "1540"];
const TCP_PORT: u16 = 8080;
/// 10 MiB take well under a second on veth; a transfer that needs retransmissions to get
/// through is broken.
const TCP_LIMIT: Duration = Duration::from_secs(20);
const UDP_PORT: u16 = 5300;
const MIRROR_PORT: u16 = 5301;

/// Counters that reveal a packet the dataplane could not handle as the kernel handed it
/// over (a GSO aggregate, a partial checksum, a short linear area): each must stay 0.
const TROUBLE: &[&str] = &[
    "drop_adjust_head",
    "drop_adjust_room",
    "drop_pull",
    "drop_gso_slow_path",
    "drop_v4_too_big",
    "drop_bad_l4",
    "drop_bad_ipv4",
    "drop_bad_ipv6",
    "drop_fib_other",
    "drop_slow_path_unavailable",
];

/// TCP and UDP checksum errors (/proc/net/snmp InCsumErrors) of the receiving hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CsumErrors {
    host_tcp: u64,
    host_udp: u64,
    server_tcp: u64,
    server_udp: u64,
}

fn csum_errors(t: &DsLite) -> CsumErrors {
    let n = |ns, s| snmp(ns, s, "InCsumErrors").unwrap();
    CsumErrors {
        host_tcp: n(&t.a.host, "Tcp"),
        host_udp: n(&t.a.host, "Udp"),
        server_tcp: n(&t.server, "Tcp"),
        server_udp: n(&t.server, "Udp"),
    }
}

/// `ip -s link` of every namespace on the path, for failure messages.
fn link_stats(t: &DsLite) -> String {
    let mut out = String::new();
    let mut all = vec![
        ("hostA", &t.a.host),
        ("b4a", &t.a.b4),
        ("router", &t.router),
        ("aftr", &t.aftr_ns),
        ("server", &t.server),
    ];
    if let Some(r4) = &t.router4 {
        all.insert(4, ("router4", r4));
    }
    for (name, ns) in all {
        let o = std::process::Command::new("ip")
            .args(["-n", &ns.name, "-s", "link"])
            .output()
            .unwrap();
        out.push_str(&format!(
            "--- {name}\n{}",
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    out
}

/// Which hook runs on each of the controller's interfaces: (interface, hook).
fn hooks(c: &dslite_tests::ctl::Controller) -> Vec<(String, String)> {
    let s = c.stats().unwrap();
    s["hooks"]
        .as_array()
        .unwrap_or_else(|| panic!("no hooks in {s}"))
        .iter()
        .map(|h| {
            let f = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (f("interface"), f("hook"))
        })
        .collect()
}

/// The traffic of the module docs through `t`; Err says what went wrong, with diagnostics.
fn traffic_is_correct(t: &DsLite, case: &str) -> Result<(), String> {
    let _tcp = tcp_pattern_server(&t.server, sa(SERVER1, TCP_PORT));
    let _udp = udp_echo_server(&t.server, sa(SERVER1, UDP_PORT));
    let _mirror = udp_mirror_server(&t.server, sa(SERVER1, MIRROR_PORT));
    let before = csum_errors(t);
    let mut failures = Vec::new();
    for dir in [Direction::Download, Direction::Upload] {
        let start = Instant::now();
        match tcp_one_way(&t.a.host, sa(SERVER1, TCP_PORT), dir, LEN, TCP_LIMIT).join() {
            Ok(Ok(_)) => println!(
                "{case}: TCP {dir:?} of {LEN} bytes in {:?}",
                start.elapsed()
            ),
            Ok(Err(e)) => failures.push(format!("TCP {dir:?}: {e:#}")),
            Err(_) => failures.push(format!("TCP {dir:?}: client panicked")),
        }
    }
    if let Err(e) = udp_request(
        &t.a.host,
        sa(HOST_ADDR, 40000),
        sa(SERVER1, UDP_PORT),
        "plain",
    ) {
        failures.push(format!("UDP request: {e:#}"));
    }
    // A full 1500-byte IPv4 packet each way: at IPv6 MTU 1500 the softwire fragments it.
    let big: Vec<u8> = (0..1472).map(dslite_tests::traffic::pattern).collect();
    if let Err(e) = udp_mirror_exchange(
        &t.a.host,
        sa(HOST_ADDR, 40001),
        sa(SERVER1, MIRROR_PORT),
        big,
        Df::Want,
        5,
    ) {
        failures.push(format!("UDP 1472 bytes: {e:#}"));
    }
    let after = csum_errors(t);
    if after != before {
        failures.push(format!(
            "checksum errors on the receivers: before {before:?}, after {after:?}"
        ));
    }
    for (name, c) in [("aftr", &t.aftr), ("b4a", &t.b4a)] {
        let s = c.stats().map_err(|e| format!("{name} stats: {e:#}"))?;
        let bad: Vec<String> = TROUBLE
            .iter()
            .filter_map(|k| match s[*k].as_u64() {
                Some(0) => None,
                v => Some(format!("{k}={v:?}")),
            })
            .collect();
        if !bad.is_empty() {
            failures.push(format!("{name}: {}", bad.join(" ")));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{case}:\n  {}\ncounters:\n{}links:\n{}",
        failures.join("\n  "),
        t.diagnostics(),
        link_stats(t)
    ))
}

/// Run `case` at every IPv6 MTU; returns every case's failure.
fn each_mtu(label: &str, case: impl Fn(&str) -> Result<(), String>) -> Vec<String> {
    MTUS.iter()
        .filter_map(|mtu| {
            let start = Instant::now();
            let r = case(mtu);
            println!(
                "{label}, IPv6 MTU {mtu}: {} in {:?}",
                if r.is_ok() { "ok" } else { "FAILED" },
                start.elapsed()
            );
            r.err()
        })
        .collect()
}

fn assert_none(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A plain topology with `o`'s hook, MTU and offloads, its traffic checked, and `check`
/// run on it first.
fn plain_case(o: Options, check: impl Fn(&DsLite) -> Result<(), String>) -> Result<(), String> {
    let mut case = format!("{} at IPv6 MTU {}", o.hook.join(" "), o.v6_mtu);
    if o.plain_gro {
        case.push_str(", GRO on the neighbours");
    }
    if o.peers_tx_csum_off {
        case.push_str(", TX checksumming off on the peers");
    }
    let t = DsLite::start_with(Options { plain: true, ..o })
        .map_err(|e| format!("{case}: start: {e:#}"))?;
    check(&t).map_err(|e| format!("{case}: {e}"))?;
    traffic_is_correct(&t, &case)
}

/// Every interface of the AFTR and of b4a runs `hook`.
fn runs(t: &DsLite, hook: &str) -> Result<(), String> {
    for (name, c, ifaces) in [
        ("aftr", &t.aftr, ["tun", "inet"]),
        ("b4a", &t.b4a, ["lan", "wan"]),
    ] {
        let h = hooks(c);
        for i in ifaces {
            if !h.iter().any(|(n, k)| n == i && k == hook) {
                return Err(format!("{name}: {i} does not run {hook}: {h:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn tc_is_correct_behind_plain_neighbours() {
    let hook = &["--hook", "tc"][..];
    let mut failures = each_mtu("--hook tc", |mtu| {
        plain_case(
            Options {
                hook,
                v6_mtu: mtu,
                ..Default::default()
            },
            |t| runs(t, "tc"),
        )
    });
    // Routers that also merge what they forward (GRO), as many do.
    failures.extend(each_mtu("--hook tc, GRO on the neighbours", |mtu| {
        plain_case(
            Options {
                hook,
                v6_mtu: mtu,
                plain_gro: true,
                ..Default::default()
            },
            |t| runs(t, "tc"),
        )
    }));
    assert_none(failures);
}

/// `auto` must choose tc on veth, and so be correct there.
#[test]
fn auto_chooses_tc_and_is_correct_behind_plain_neighbours() {
    assert_none(each_mtu("--hook auto", |mtu| {
        plain_case(
            Options {
                hook: &["--hook", "auto"],
                v6_mtu: mtu,
                ..Default::default()
            },
            |t| runs(t, "tc"),
        )
    }));
}

/// `--hook xdp` behind neighbours with TX checksumming on: the AFTR and the B4 refuse to
/// start, saying why and what to do.
fn xdp_is_refused(hook: &[&str]) {
    for (aftr_extra, b4_extra, who) in [(hook, &[][..], "AFTR"), (&[][..], hook, "B4")] {
        let r = DsLite::start_with(Options {
            plain: true,
            aftr_extra,
            b4_extra,
            ..Default::default()
        });
        let e = match r {
            Ok(_) => panic!("{who} started with {hook:?} behind plain neighbours"),
            Err(e) => format!("{e:#}"),
        };
        for s in [
            "exited with exit status: 2",
            "has tx-checksumming on",
            "--hook tc",
            "tx off",
        ] {
            assert!(e.contains(s), "{who}: {s:?} not in {e}");
        }
    }
}

#[test]
fn generic_xdp_is_refused_behind_plain_neighbours_and_correct_behind_tx_off_peers() {
    xdp_refused_then_correct_behind_tx_off_peers("skb", false);
}

/// `--hook xdp --xdp-mode MODE` is refused behind plain neighbours; the positive control is
/// the same neighbours with TX checksumming off (and GRO on with `gro`).
fn xdp_refused_then_correct_behind_tx_off_peers(mode: &'static str, gro: bool) {
    let hook = &["--hook", "xdp", "--xdp-mode", mode][..];
    xdp_is_refused(hook);
    assert_none(each_mtu(
        &format!("--hook xdp --xdp-mode {mode}, TX checksumming off"),
        |mtu| {
            plain_case(
                Options {
                    hook,
                    v6_mtu: mtu,
                    peers_tx_csum_off: true,
                    plain_gro: gro,
                    ..Default::default()
                },
                |t| runs(t, "xdp"),
            )
        },
    ));
}

/// The positive control has GRO on the neighbours too: a veth delivers what native XDP
/// redirects into it only when its peer has GRO or an XDP program (platform.md).
#[test]
fn native_xdp_is_refused_behind_plain_neighbours_and_correct_behind_tx_off_peers() {
    xdp_refused_then_correct_behind_tx_off_peers("native", true);
}

/// Native XDP on a veth whose peer has neither GRO nor an XDP program: every frame it
/// redirects there is dropped (platform.md), so the controller must refuse to start.
#[test]
fn native_xdp_is_refused_toward_a_veth_peer_without_gro() {
    let r = DsLite::start_with(Options {
        plain: true,
        hook: &["--hook", "xdp", "--xdp-mode", "native"],
        peers_tx_csum_off: true,
        ..Default::default()
    });
    let e = match r {
        Ok(t) => panic!(
            "started; what it redirects is dropped:\n{}",
            t.diagnostics()
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("exited with exit status: 2"), "{e}");
    assert!(e.to_lowercase().contains("gro"), "no word of GRO in {e}");
}
