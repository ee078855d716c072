//! End to end: the NAT log's sinks against receivers that do not cooperate, and what a stop
//! leaves in the log.

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use dslite_tests::{fixture::b4, observe::*, topo::*, traffic::*};
use dslite_user::{config::AftrSettings, natlog::Limit};

/// The subscriber (its /56, RFC 7785) that refusals and blocks are logged under.
fn subscriber(b4: std::net::Ipv6Addr) -> std::net::Ipv6Addr {
    use dslite_common::nat::{subscriber_mask, subscriber_of, DEFAULT_SUBSCRIBER_PREFIX_LEN};
    subscriber_of(
        &b4.octets(),
        &subscriber_mask(DEFAULT_SUBSCRIBER_PREFIX_LEN),
    )
    .into()
}

/// A syslog socket whose reader never reads, and an IPFIX collector that is not there, cost
/// counted and logged losses, never the controller (docs/design.md, "Hostile input"):
/// traffic flows, every record still reaches the file, the sweep keeps expiring mappings
/// and updating the gauges, SIGHUP and SIGTERM are handled in time. Stopping without
/// --persist then logs a release for every block still held and a deletion for every
/// mapping, so that whois names nobody after the stop.
#[test]
fn a_stalled_syslog_and_an_absent_collector_cost_counted_losses_not_the_controller() {
    let dir = dslite_tests::ScratchDir::new("natlog");
    let log = dir.join("nat.log");
    let log_s = log.to_str().unwrap().to_string();
    // Bound and never read: its queue (net.unix.max_dgram_qlen) fills after a few records.
    let sock = dir.join("syslog.sock");
    let _stalled = UnixDatagram::bind(&sock).unwrap();
    let syslog = format!("unix:{}", sock.display());
    let mut t = DsLite::start_with(Options {
        pool: "198.51.100.1/32",
        aftr_extra: &[
            "--nat-log",
            &log_s,
            "--log-sessions",
            "--syslog",
            &syslog,
            // Nobody listens there: loopback answers with port unreachable.
            "--ipfix",
            "127.0.0.1:4740",
            "--nat-log-queue",
            "16",
            "--metrics",
            "127.0.0.1:9466",
            "--udp-timeout",
            "3",
            "--allow-short-timeouts",
        ],
        ..Default::default()
    })
    .unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let mut seen = Vec::new();
    for p in 6000..6060 {
        let r = udp_request(&t.a.host, sa(HOST_ADDR, p), sa(SERVER1, 7777), "x");
        seen.push(r.unwrap_or_else(|e| panic!("flow {p}: {e}")));
    }
    // Every record is in the file: the sinks that cannot keep up cost nothing there.
    wait_for_secs("60 mapping records in the file", 10, || {
        lines_with(&log, "mapping-created") == 60
    });
    assert_eq!(lines_with(&log, "block-allocated"), 1);

    // The losses are counted per sink and reason, and the gauges come from a live sweep.
    let mut m = String::new();
    wait_for_secs("the losses in the metrics", 10, || {
        m = scrape(&t.aftr_ns, 9466);
        sample(
            &m,
            "dslite_natlog_lost_total{sink=\"syslog\",reason=\"queue_full\"}",
        )
        .is_some_and(|v| v > 0.0)
            && sample(
                &m,
                "dslite_natlog_lost_total{sink=\"ipfix\",reason=\"refused\"}",
            )
            .is_some_and(|v| v > 0.0)
            && sample(&m, "dslite_mappings{proto=\"udp\"}") == Some(60.0)
    });
    assert_eq!(
        sample(&m, "dslite_natlog_queued{sink=\"syslog\"}"),
        Some(16.0),
        "the queue is full, and bounded: {m}"
    );
    assert_eq!(
        sample(&m, "dslite_natlog_records_total{sink=\"file\"}"),
        Some(61.0),
        "{m}"
    );
    let syslog_lost = sample(
        &m,
        "dslite_natlog_lost_total{sink=\"syslog\",reason=\"queue_full\"}",
    );
    assert!(sample(&m, "dslite_natlog_failures_total").unwrap() >= syslog_lost.unwrap());
    wait_for_secs("the losses in the controller's log", 5, || {
        let l = t.aftr.log();
        l.contains("NAT log: syslog sink lost") && l.contains("NAT log: ipfix sink lost")
    });

    // Signals are still handled.
    t.aftr.signal(libc::SIGHUP);
    wait_for_secs("the reload", 5, || {
        t.aftr.log().contains("configuration reloaded")
    });

    // The sweep still runs: the mappings expire (3 s), their deletions are logged, the
    // emptied block is released, and the gauges follow.
    wait_for_secs("the mappings to expire", 20, || {
        sample(&scrape(&t.aftr_ns, 9466), "dslite_mappings{proto=\"udp\"}") == Some(0.0)
    });
    wait_for_secs("60 deletions and the release in the file", 10, || {
        lines_with(&log, "mapping-deleted") == 60 && lines_with(&log, "block-released") == 1
    });

    // New flows, then a stop without --persist, with the receivers still hostile.
    for p in 7000..7005 {
        udp_request(&t.a.host, sa(HOST_ADDR, p), sa(SERVER1, 7777), "y").unwrap();
    }
    wait_for_secs("the new block and mappings", 10, || {
        lines_with(&log, "mapping-created") == 65 && lines_with(&log, "block-allocated") == 2
    });
    let t0 = Instant::now();
    let status = t.aftr.stop().unwrap();
    assert!(status.success(), "{status}: {}", t.aftr.log());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the stop waited {:?} on the sinks",
        t0.elapsed()
    );
    let l = t.aftr.log();
    assert!(l.contains("port blocks released at exit"), "{l}");
    // What the stalled syslog socket still had queued is counted, not waited for.
    let last = l
        .lines()
        .rev()
        .find(|x| x.contains("NAT log: syslog sink lost"))
        .unwrap_or_default();
    assert!(!last.contains(" 0 at exit"), "{last}");
    assert_eq!(
        lines_with(&log, "block-released"),
        2,
        "one per block ever held"
    );
    assert_eq!(lines_with(&log, "mapping-deleted"), 65, "one per mapping");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        dslite_user::natlog::NatRecord::from_json(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    // whois names nobody after the stop.
    let now = dslite_user::clock::rfc3339_ms(dslite_user::clock::now_unix_ms());
    let last = seen[0];
    let holders = whois(last, &now, &[log.as_path()]);
    assert!(holders.is_empty(), "{holders:?}");
}

/// Refusals in the dataplane (BPF_PROG_TEST_RUN), as the sweep logs them: `n` UDP flows
/// from `b4` (even inside ports, so that port parity fills whole blocks).
fn refuse(rig: &dslite_tests::fixture::Rig, b4: std::net::Ipv6Addr, n: u16) {
    use dslite_tests::{fixture::ROUTER_MAC, packets};
    for p in 0..n {
        let inner = packets::udp4(HOST_ADDR, SERVER1, 6000 + 2 * p, 7777, 64, b"x");
        let frame = packets::eth(
            rig.mac("tun"),
            ROUTER_MAC,
            packets::ETH_P_IPV6,
            &packets::softwire(b4, aftr_addr(), &inner, &[]),
        );
        rig.run("tun", &frame);
    }
}

/// The records of one sweep after `send` (a first sweep takes the counters' baseline).
fn refusal_records(
    rig: &dslite_tests::fixture::Rig,
    s: &AftrSettings,
    send: impl FnOnce(),
) -> Vec<dslite_user::natlog::NatRecord> {
    use dslite_user::{clock::monotonic_ns, sweep::Sweeper};
    let cfg = dslite_user::dataplane::aftr_config(s, 0x5eed);
    let mut sw = Sweeper::open(&rig.pin, cfg, s.timeouts).unwrap();
    sw.max_mappings = s.max_mappings;
    assert!(sw.sweep(monotonic_ns()).unwrap().records.is_empty());
    send();
    sw.sweep(monotonic_ns()).unwrap().records
}

/// Each kind of refusal XDP makes reaches the NAT log as what it was (RFC 8158 §4): the
/// port quota, the session limit and the rate limit as natEvent 13 with the limit and its
/// value; no free block on the subscriber's address as natEvent 12 with that address; no
/// block anywhere for a new subscriber as natEvent 3.
#[test]
fn each_refusal_is_logged_as_the_limit_or_exhaustion_that_refused() {
    use dslite_common::maps::{
        EVENT_ADDRESSES_EXHAUSTED, EVENT_PORTS_EXHAUSTED, EVENT_QUOTA_EXCEEDED,
    };
    use dslite_tests::fixture::{aftr_settings, with_aftr_cfg};
    let quota = |s: &mut AftrSettings| {
        s.block_size = 16;
        s.max_blocks = 2;
    };
    let sessions = |s: &mut AftrSettings| s.limits.max_sessions = 2;
    let rate = |s: &mut AftrSettings| s.limits.new_mapping_rate = 3;
    // One address, two blocks of 16 ports: the pool runs dry before the quota.
    let pool = |s: &mut AftrSettings| {
        // Each B4 address a subscriber of its own (/128): two subscribers here.
        s.subscriber_prefix_len = 128;
        s.pool = vec![std::net::Ipv4Addr::new(198, 51, 100, 1)];
        s.ports = dslite_user::config::PortRange { lo: 1024, hi: 1055 };
        s.block_size = 16;
        s.max_blocks = 4;
    };
    type Case = (fn(&mut AftrSettings), u16, Limit);
    let cases: [Case; 3] = [
        (quota, 17, Limit::Ports(32)),
        (sessions, 3, Limit::Sessions(2)),
        (rate, 4, Limit::Rate(3)),
    ];
    for (tweak, flows, want) in cases {
        with_aftr_cfg(tweak, move |rig| {
            let mut s = aftr_settings();
            tweak(&mut s);
            let recs = refusal_records(rig, &s, || refuse(rig, b4(2), flows));
            assert_eq!(recs.len(), 1, "{recs:?}");
            let r = &recs[0];
            assert_eq!(
                (r.kind, r.limit, r.b4),
                (EVENT_QUOTA_EXCEEDED, Some(want), subscriber(b4(2)))
            );
            let line = r.to_json();
            assert!(
                line.contains(&format!("\"limit\":\"{}\"", want.name())),
                "{line}"
            );
        });
    }
    with_aftr_cfg(pool, move |rig| {
        let mut s = aftr_settings();
        pool(&mut s);
        let recs = refusal_records(rig, &s, || {
            // 16 flows fill both blocks; the 17th finds none on its address. Then a new
            // subscriber finds no block anywhere.
            refuse(rig, b4(2), 17);
            refuse(rig, b4(7), 1);
        });
        let mut got: Vec<_> = recs.iter().map(|r| (r.b4, r.kind, r.outside)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    b4(2),
                    EVENT_PORTS_EXHAUSTED,
                    std::net::Ipv4Addr::new(198, 51, 100, 1)
                ),
                (
                    b4(7),
                    EVENT_ADDRESSES_EXHAUSTED,
                    std::net::Ipv4Addr::UNSPECIFIED
                ),
            ],
            "{recs:?}"
        );
        assert!(recs.iter().all(|r| r.limit.is_none()));
    });
}
