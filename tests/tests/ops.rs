//! End-to-end: operations. NAT log sinks and whois, on real traffic (RFC 6888 §4 logging,
//! REQ-12; RFC 8158; RFC 6333 §8.4).

use std::{
    net::UdpSocket,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dslite_tests::{netns::Netns, observe::*, topo::*, traffic::*};

/// A UDP receiver in `ns` keeping every datagram (a syslog receiver or an IPFIX collector).
fn udp_sink(ns: &Netns, port: u16) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.run(move || {
        let s = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(n) = s.recv(&mut buf) {
                g.lock().unwrap().push(buf[..n].to_vec());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    got
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i128;
    dslite_user::clock::rfc3339_ms(ms)
}

/// Two subscribers, both 192.168.1.10, share one public address. The NAT log (file, syslog
/// and IPFIX at once) records their blocks and mappings, and `dslite whois` names the right
/// softwire and inside endpoint for each public port, now and not before; after a logrotate-
/// style rename and SIGHUP, new records go to a new file and whois reads both (RFC 6888 §4
/// logging, REQ-12; RFC 8158; RFC 6333 §8.4).
#[test]
fn whois_names_each_subscriber_on_a_shared_address() {
    let dir = dslite_tests::ScratchDir::new("ops");
    let log = dir.join("nat.log");
    let log_s = log.to_str().unwrap().to_string();
    let before = now_rfc3339();
    std::thread::sleep(Duration::from_millis(20));
    let t = DsLite::start_with(Options {
        pool: "198.51.100.1/32",
        aftr_extra: &[
            "--nat-log",
            &log_s,
            "--log-sessions",
            "--syslog",
            "udp:127.0.0.1:5514",
            "--ipfix",
            "127.0.0.1:4739",
        ],
        ..Default::default()
    })
    .unwrap();
    // The receivers run in the AFTR's namespace, on its loopback, before any traffic.
    let syslog = udp_sink(&t.aftr_ns, 5514);
    let ipfix = udp_sink(&t.aftr_ns, 4739);
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let seen_a = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    let seen_b = udp_request(&t.b.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "b").unwrap();
    assert_eq!(seen_a.ip(), seen_b.ip(), "one shared public address");
    assert_ne!(seen_a.port(), seen_b.port());
    wait_for("two mappings in the NAT log", || {
        lines_with(&log, "mapping-created") >= 2
    });
    assert_eq!(lines_with(&log, "block-allocated"), 2);

    let now = now_rfc3339();
    let a = "2001:db8:a::2".to_string();
    let b = "2001:db8:b::2".to_string();
    let inside = Some("192.168.1.10:5000".to_string());
    let ha = whois(seen_a, &now, &[&log]);
    assert!(ha.contains(&(a.clone(), inside.clone())), "{ha:?}");
    // The block's record names A's subscriber prefix (its /56), the mapping's A's address.
    assert!(
        ha.iter().all(|(b4, _)| *b4 == a || b4 == "2001:db8:a::"),
        "only A held {seen_a}: {ha:?}"
    );
    let hb = whois(seen_b, &now, &[&log]);
    assert!(hb.contains(&(b.clone(), inside.clone())), "{hb:?}");
    assert!(
        hb.iter().all(|(b4, _)| *b4 == b || b4 == "2001:db8:b::"),
        "only B held {seen_b}: {hb:?}"
    );
    assert!(
        whois(seen_a, &before, &[&log]).is_empty(),
        "nobody before the test"
    );

    // logrotate: rename, SIGHUP, and the next records land in a new file.
    let rotated = dir.join("nat.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    t.aftr.signal(libc::SIGHUP);
    wait_for("the reopen", || t.aftr.log().contains("NAT log reopened"));
    let seen_a2 = udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "a2").unwrap();
    wait_for("a record in the reopened file", || {
        lines_with(&log, "mapping-created") >= 1
    });
    let later = now_rfc3339();
    let h = whois(seen_a2, &later, &[&log, &rotated]);
    assert!(
        h.contains(&(a.clone(), Some("192.168.1.10:5001".into()))),
        "{h:?}"
    );
    let h = whois(seen_b, &later, &[&rotated, &log]);
    assert!(h.contains(&(b.clone(), inside.clone())), "{h:?}");

    // The same records reached syslog (RFC 5424) and the IPFIX collector.
    wait_for("syslog messages", || syslog.lock().unwrap().len() >= 5);
    for m in syslog.lock().unwrap().iter() {
        let m = String::from_utf8_lossy(m);
        assert!(m.starts_with("<134>1 20"), "{m}");
        assert!(
            m.contains(" dslite ") && m.contains("[natlog@32473 event="),
            "{m}"
        );
    }
    wait_for("IPFIX messages", || ipfix.lock().unwrap().len() >= 5);
    let msgs = ipfix.lock().unwrap().clone();
    let events = dslite_tests::ipfix::decode(&msgs);
    let blocks: Vec<_> = events.iter().filter(|e| e.nat_event == 16).collect();
    assert_eq!(blocks.len(), 2, "{events:?}");
    let mappings: Vec<_> = events.iter().filter(|e| e.nat_event == 8).collect();
    assert_eq!(mappings.len(), 3, "{events:?}");
    assert!(
        mappings
            .iter()
            .any(|e| e.b4 == a && e.post_nat_port == Some(seen_a.port())),
        "{mappings:?}"
    );
}

/// `--metrics` on both elements: Prometheus text with every counter, drops by reason, and on
/// the AFTR the mappings by protocol, softwires and port blocks per public address; on the
/// B4, softwire and native IPv6 bytes side by side.
#[test]
fn metrics_are_served_for_prometheus() {
    let t = DsLite::start_with(Options {
        pool: "198.51.100.1/32",
        aftr_extra: &["--metrics", "127.0.0.1:9464"],
        b4_extra: &["--metrics", "127.0.0.1:9465"],
        ..Default::default()
    })
    .unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    udp_request(&t.b.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "b").unwrap();
    // The gauges come from the next sweep (once a second).
    wait_for("the sweep's gauges", || {
        sample(&scrape(&t.aftr_ns, 9464), "dslite_softwires") == Some(2.0)
    });
    let m = scrape(&t.aftr_ns, 9464);
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(m.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(
        sample(&m, "dslite_aftr_out_packets_total").unwrap() >= 2.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "dslite_mappings{proto=\"udp\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(sample(&m, "dslite_softwires"), Some(2.0));
    let blocks = "dslite_port_blocks{address=\"198.51.100.1\",state=\"in_use\"}";
    assert_eq!(sample(&m, blocks), Some(2.0), "{m}");
    assert!(sample(&m, "dslite_drops_total{reason=\"no_mapping\"}").is_some());
    assert!(sample(&m, "dslite_sweep_duration_seconds").is_some());

    let m = scrape(&t.a.b4, 9465);
    assert!(
        sample(&m, "dslite_b4_encap_bytes_total").unwrap() > 0.0,
        "{m}"
    );
    assert!(sample(&m, "dslite_native_v6_out_bytes_total").is_some());
    assert!(
        sample(&m, "dslite_mappings{proto=\"udp\"}").is_none(),
        "no NAT on a B4"
    );
}

/// SIGHUP reloads the configuration file: a per-subscriber session limit is raised while
/// traffic runs, no mapping is lost (the first flow keeps its outside port), and the
/// softwires view shows the subscriber's block and mappings.
#[test]
fn sighup_reloads_limits_without_dropping_a_mapping() {
    let dir = dslite_tests::ScratchDir::new("reload");
    let conf = dir.join("aftr.toml");
    std::fs::write(&conf, "max-sessions = 1\nudp-timeout = 300\n").unwrap();
    let conf_s = conf.to_str().unwrap().to_string();
    let t = DsLite::start(&["--config", &conf_s]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let first = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "1").unwrap();
    let refused = udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "2");
    assert!(refused.is_err(), "a second session is over the limit");

    std::fs::write(&conf, "max-sessions = 5\nudp-timeout = 300\n").unwrap();
    t.aftr.signal(libc::SIGHUP);
    wait_for("the reload", || {
        t.aftr.log().contains("configuration reloaded")
    });
    let second = udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "2").unwrap();
    let again = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "1").unwrap();
    assert_eq!(again, first, "the first mapping survived the reload");
    assert_ne!(second, first);

    let sw = t.aftr.softwires().unwrap();
    let a = sw
        .iter()
        .find(|s| s["subscriber"] == "2001:db8:a::/56")
        .expect("subscriber a");
    assert_eq!(a["b4s"], serde_json::json!(["2001:db8:a::2"]), "{sw:?}");
    assert_eq!(a["mappings"], 2, "{sw:?}");
    assert_eq!(a["blocks"].as_array().unwrap().len(), 1, "{sw:?}");
    assert!(a["refused"].as_u64().unwrap() >= 1, "{sw:?}");

    // A broken file changes nothing.
    std::fs::write(&conf, "max-sessions = \"many\"\n").unwrap();
    t.aftr.signal(libc::SIGHUP);
    wait_for("the failed reload", || {
        t.aftr.log().contains("reload failed")
    });
    let third = udp_request(&t.a.host, sa(HOST_ADDR, 5002), sa(SERVER1, 7777), "3");
    assert!(third.is_ok(), "the running limit (5) still applies");
}

/// Restart without loss: with --persist, the AFTR's controller is killed
/// with SIGKILL while two subscribers keep opening flows. The dataplane keeps forwarding and
/// creating mappings without it; a new controller adopts the pinned programs and maps. No
/// mapping is lost, and every mapping and block has exactly one creation record in the NAT log,
/// including those created while no controller ran.
#[test]
fn restart_under_traffic_loses_no_mapping_and_no_log_event() {
    let dir = dslite_tests::ScratchDir::new("persist");
    let log = dir.join("nat.log");
    let log_s = log.to_str().unwrap().to_string();
    let mut t = DsLite::start(&["--persist", "--nat-log", &log_s, "--log-sessions"]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let flows = |host: &Netns, ports: std::ops::Range<u16>| {
        for p in ports {
            udp_request(host, sa(HOST_ADDR, p), sa(SERVER1, 7777), "x").unwrap();
        }
    };
    flows(&t.a.host, 6000..6010);
    flows(&t.b.host, 6000..6010);
    let before: Vec<serde_json::Value> = t.aftr.sessions().unwrap();
    assert_eq!(before.len(), 20);

    // Kill it while both subscribers keep opening flows, and start a successor.
    let args: Vec<&str> = t.aftr_args.iter().map(String::as_str).collect();
    let (a_host, b_host, aftr_ns, aftr) = (&t.a.host, &t.b.host, &t.aftr_ns, &mut t.aftr);
    std::thread::scope(|sc| {
        let ha = sc.spawn(|| flows(a_host, 6010..6020));
        let hb = sc.spawn(|| flows(b_host, 6010..6020));
        aftr.kill();
        std::thread::sleep(Duration::from_millis(500));
        // The views read the pinned maps: they work with no controller running.
        let while_dead = aftr.sessions().unwrap();
        assert!(while_dead.len() >= 20, "{while_dead:?}");
        let new =
            dslite_tests::ctl::Controller::start(aftr_ns, &args, aftr.pin_path.clone()).unwrap();
        drop(std::mem::replace(aftr, new));
        ha.join().unwrap();
        hb.join().unwrap();
    });
    assert!(t.aftr.log().contains("adopt"), "{}", t.aftr.log());
    flows(&t.a.host, 6020..6025);

    let after: Vec<serde_json::Value> = t.aftr.sessions().unwrap();
    for s in &before {
        let kept = after.iter().any(|x| {
            x["inside"] == s["inside"] && x["b4"] == s["b4"] && x["outside"] == s["outside"]
        });
        assert!(kept, "lost {s}");
    }
    assert_eq!(after.len(), 45, "every flow has its mapping");
    // One creation record per mapping, none twice, the unattended ones included.
    wait_for("45 mapping records", || {
        lines_with(&log, "mapping-created") >= 45
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = std::collections::HashSet::new();
    for l in text.lines().filter(|l| l.contains("mapping-created")) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = format!("{} {} {}", v["b4"], v["inside"], v["port"]);
        assert!(seen.insert(key.clone()), "duplicate record {key}");
    }
    assert_eq!(seen.len(), 45);
    for s in &after {
        let port = s["outside"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .to_string();
        let key = format!("{} {} {}", s["b4"], s["inside"], port);
        assert!(seen.contains(&key), "no record for {key}");
    }
    assert_eq!(
        lines_with(&log, "block-allocated"),
        2,
        "one block each, logged once"
    );
}

/// B4 provisioning (RFC 6334 §3): the B4 reads its AFTR from a file that a
/// DHCPv6 hook writes from the AFTR-Name option. It starts with a wrong AFTR; when the file
/// names `aftr.test`, the B4 resolves it over DNS, tries every AAAA record (the first does not
/// answer) and uses the one that does. Then its WAN address changes, and the softwire
/// follows without a restart.
#[test]
fn the_b4_finds_its_aftr_and_follows_its_wan_address() {
    let dir = dslite_tests::ScratchDir::new("prov");
    let file = dir.join("aftr");
    std::fs::write(&file, "2001:db8:f::99\n").unwrap();
    let file_s = file.to_str().unwrap().to_string();
    let t = DsLite::start_with(Options {
        b4_aftr: &[
            "--aftr-file",
            &file_s,
            "--dns-server",
            "[2001:db8:f::1]:5353",
        ],
        ..Default::default()
    })
    .unwrap();
    let dns = "[2001:db8:f::1]:5353".parse().unwrap();
    let wrong: std::net::Ipv6Addr = "2001:db8:f::99".parse().unwrap();
    let _dns = dns_server(&t.router, dns, "aftr.test", vec![wrong, aftr_addr()], 60);
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    assert!(
        udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "x").is_err(),
        "no AFTR at 2001:db8:f::99"
    );

    std::fs::write(&file, "aftr.test\n").unwrap();
    wait_for("the B4 to switch AFTR", || {
        t.b4a.log().contains("AFTR changed")
    });
    assert!(t.b4a.log().contains("-> 2001:db8:f::2"), "{}", t.b4a.log());
    udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "x").unwrap();

    // The WAN address changes; the AFTR then sees the softwire from the new address.
    t.a.b4
        .ip(&["addr", "add", "2001:db8:a::3/64", "dev", "wan", "nodad"])
        .unwrap();
    t.a.b4
        .ip(&["addr", "del", "2001:db8:a::2/64", "dev", "wan"])
        .unwrap();
    wait_for("the B4 to follow", || {
        t.b4a.log().contains("-> 2001:db8:a::3")
    });
    udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "y").unwrap();
    let sessions = t.aftr.sessions().unwrap();
    assert!(
        sessions
            .iter()
            .any(|s| s["b4"] == "2001:db8:a::3" && s["inside"] == "192.168.1.10:5001"),
        "{sessions:?}"
    );
}

/// A reload applies all of a file or none of it, and says which (docs/operations.md,
/// "Configuration and reload"): a file with one valid change (`max-sessions`) and one value no sink accepts (`syslog`) changes
/// nothing, and the log names what was rejected; a valid file is applied, and the log lists
/// what changed and what needs a restart. A map write that fails halfway through is undone.
#[test]
fn a_reload_applies_all_or_nothing_and_says_which() {
    use aya::maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData};
    let dir = dslite_tests::ScratchDir::new("atomic");
    let conf = dir.join("aftr.toml");
    std::fs::write(&conf, "max-sessions = 1\n").unwrap();
    let conf_s = conf.to_str().unwrap().to_string();
    let t = DsLite::start(&["--config", &conf_s]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "1").unwrap();
    assert!(
        udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "2").is_err(),
        "one session at most"
    );

    std::fs::write(&conf, "max-sessions = 5\nsyslog = \"udp:nowhere\"\n").unwrap();
    t.aftr.signal(libc::SIGHUP);
    wait_for("the rejected reload", || {
        t.aftr.log().contains("reload failed")
    });
    let log = t.aftr.log();
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(
        line.contains("the running configuration stays") && line.contains("udp:nowhere"),
        "{line}"
    );
    assert!(
        udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "2").is_err(),
        "max-sessions 5 came with a bad syslog value: not applied either"
    );

    std::fs::write(&conf, "max-sessions = 5\nmax-mappings = 5000\n").unwrap();
    t.aftr.signal(libc::SIGHUP);
    wait_for("the reload", || {
        t.aftr.log().contains("configuration reloaded")
    });
    let log = t.aftr.log();
    assert!(log.contains("applied: max-sessions: 1 -> 5"), "{log}");
    let restart = log
        .lines()
        .find(|l| l.contains("needing a restart"))
        .unwrap();
    assert!(restart.contains("max-mappings"), "{restart}");
    udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "2").unwrap();

    // The maps themselves: a plan that adds two B4 prefixes and changes the config meets a
    // B4_ALLOW with room for one. The first insert succeeds, the second fails, and the
    // first is undone: the trie and AFTR_CONFIG are as they were.
    let pin = &t.aftr.pin_path;
    let config = || -> dslite_common::maps::AftrConfig {
        let data = MapData::from_pin(pin.join("AFTR_CONFIG")).unwrap();
        let a: Array<MapData, dslite_common::maps::AftrConfig> =
            Array::try_from(Map::Array(data)).unwrap();
        a.get(&0, 0).unwrap()
    };
    let trie = || -> LpmTrie<MapData, [u8; 16], u32> {
        LpmTrie::try_from(Map::LpmTrie(
            MapData::from_pin(pin.join("B4_ALLOW")).unwrap(),
        ))
        .unwrap()
    };
    let keys = || -> Vec<(u32, [u8; 16])> {
        let mut k: Vec<_> = trie()
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())).unwrap())
            .collect();
        k.sort();
        k
    };
    let before = config();
    let s = dslite_user::config::AftrOptions {
        tunnel_iface: Some("tun".into()),
        address: Some(aftr_addr()),
        pool: vec![POOL.parse().unwrap()],
        b4_prefix: [
            "2001:db8:a::/64",
            "2001:db8:b::/64",
            "2001:db8:d::/64",
            "2001:db8:e::/64",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect(),
        max_sessions: Some(9),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let plan = dslite_user::dataplane::plan_aftr(pin, &s, before.hash_seed).unwrap();
    let mut junk = Vec::new();
    // The trie holds the two prefixes and the host's own addresses (denying /128s): fill it
    // to one free entry, so the plan's second insert fails.
    let held = keys().len();
    {
        let mut t = trie();
        for i in 0..(1024 - held - 1) as u16 {
            let mut net = [0u8; 16];
            net[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff]);
            net[6..8].copy_from_slice(&i.to_be_bytes());
            t.insert(&Key::new(64, net), 1, 0).unwrap();
            junk.push(net);
        }
    }
    let full = keys();
    let e = dslite_user::dataplane::apply_aftr(pin, &plan).unwrap_err();
    assert!(format!("{e:#}").contains("undone"), "{e:#}");
    assert_eq!(keys(), full, "the first insert was undone");
    assert_eq!(config(), before, "AFTR_CONFIG untouched");
    {
        let mut t = trie();
        for net in junk {
            t.remove(&Key::new(64, net)).unwrap();
        }
    }
    assert_eq!(keys().len(), held);
    udp_request(&t.a.host, sa(HOST_ADDR, 5002), sa(SERVER1, 7777), "3").unwrap();
}

/// A reload that removes a subscriber's B4 prefix ends its established flows too, not only
/// its new ones: XDP checks B4_ALLOW only for packets without a mapping, so the controller
/// releases the mappings of a B4 that is no longer allowed (docs/design.md, "Prefix
/// summaries and the skipped B4 check"). The other subscriber keeps its flow and port.
#[test]
fn a_reload_removing_a_b4_prefix_ends_its_established_flows() {
    let dir = dslite_tests::ScratchDir::new("unprefix");
    let conf = dir.join("aftr.toml");
    let write = |prefixes: &str| {
        std::fs::write(
            &conf,
            format!("b4-prefix = [{prefixes}]\nudp-timeout = 300\n"),
        )
        .unwrap()
    };
    write("\"2001:db8:a::/64\", \"2001:db8:b::/64\"");
    let conf_s = conf.to_str().unwrap().to_string();
    let t = DsLite::start_with(dslite_tests::topo::Options {
        aftr_extra: &["--config", &conf_s],
        b4_prefix: &[],
        ..Default::default()
    })
    .unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let seen_a = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    udp_request(&t.b.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "b").unwrap();

    write("\"2001:db8:a::/64\"");
    t.aftr.signal(libc::SIGHUP);
    wait_for("the reload", || {
        t.aftr.log().contains("configuration reloaded")
    });
    wait_for("b's mapping released", || {
        t.aftr
            .log()
            .contains("B4 prefixes no longer configured: deleted")
    });
    assert!(
        udp_request(&t.b.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "b").is_err(),
        "b's established flow ends with its prefix"
    );
    let again = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    assert_eq!(again, seen_a, "a keeps its mapping");
    let sessions = t.aftr.sessions().unwrap();
    assert!(
        sessions.iter().any(|s| s["b4"] == "2001:db8:a::2")
            && sessions.iter().all(|s| s["b4"] != "2001:db8:b::2"),
        "{sessions:?}"
    );
}

/// A `--persist` restart brings adopted maps to the new configuration (docs/operations.md,
/// "Restart without loss"): with B's prefix and both pool addresses removed and another address added, B's new flows
/// are dropped (`drop_b4_not_allowed`), the removed addresses are no longer recognised
/// inbound (`pass_not_pool`), A's old mappings on them are deleted and their blocks
/// released in the NAT log, and A's new flows leave from the added address. A restart with a
/// pool larger than the pinned maps, or another port layout, is refused (exit 2) and leaves
/// the dataplane running.
#[test]
fn a_persist_restart_reconciles_prefixes_and_pool() {
    let dir = dslite_tests::ScratchDir::new("reconcile");
    let log = dir.join("nat.log");
    let log_s = log.to_str().unwrap().to_string();
    let mut t = DsLite::start_with(Options {
        pool: "198.51.100.1/32",
        aftr_extra: &[
            "--pool",
            "198.51.100.2/32",
            "--persist",
            "--nat-log",
            &log_s,
            "--log-sessions",
        ],
        ..Default::default()
    })
    .unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    let old_a = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    udp_request(&t.b.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "b").unwrap();
    assert_eq!(t.aftr.sessions().unwrap().len(), 2);
    let common = [
        "aftr",
        "--tunnel-iface",
        "tun",
        "--internet-iface",
        "inet",
        "--address",
        AFTR_ADDR,
        "--persist",
        "--nat-log",
        &log_s,
        "--log-sessions",
        "--b4-prefix",
        "2001:db8:a::/64",
    ];
    t.aftr.kill();
    let pin = t.aftr.pin_path.clone();
    /// A restart-only setting changed on the command line, and the flag the refusal names.
    struct Refused {
        bad: &'static [&'static str],
        needle: &'static str,
    }
    for Refused { bad, needle } in [
        Refused {
            bad: &["--pool", "198.51.100.0/30"],
            needle: "--pool",
        },
        Refused {
            bad: &["--pool", "198.51.100.3/32", "--port-range", "2048-65535"],
            needle: "--port-range",
        },
    ] {
        // Spawned by hand: a failed `Controller::start` would clean up the pins it was given.
        let args = [&common[..], bad].concat();
        let mut cmd = Command::new(dslite_tests::dslite_bin());
        cmd.args(&args)
            .arg("--pin-path")
            .arg(&pin)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let out = t
            .aftr_ns
            .spawn(&mut cmd)
            .unwrap()
            .wait_with_output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(e.contains(needle) && e.contains("without --persist"), "{e}");
    }
    // Refused, and the dataplane still runs as it was, with no controller.
    let again = udp_request(&t.a.host, sa(HOST_ADDR, 5000), sa(SERVER1, 7777), "a").unwrap();
    assert_eq!(again, old_a);

    let args = [&common[..], &["--pool", "198.51.100.3/32"]].concat();
    let new = dslite_tests::ctl::Controller::start(&t.aftr_ns, &args, pin.clone()).unwrap();
    drop(std::mem::replace(&mut t.aftr, new));
    let ctl_log = t.aftr.log();
    assert!(
        ctl_log.contains("B4_ALLOW +0 -1") && ctl_log.contains("POOL_INDEX +1 -2"),
        "{ctl_log}"
    );
    let sessions = t.aftr.sessions().unwrap();
    assert!(
        sessions.is_empty(),
        "both mappings were on removed addresses: {sessions:?}"
    );

    let refused = t.aftr.counter("drop_b4_not_allowed");
    assert!(udp_request(&t.b.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "b").is_err());
    assert!(t.aftr.counter("drop_b4_not_allowed") > refused);

    let new_a = udp_request(&t.a.host, sa(HOST_ADDR, 5001), sa(SERVER1, 7777), "a").unwrap();
    assert_eq!(
        new_a.ip().to_string(),
        "198.51.100.3",
        "from the added address"
    );

    let not_pool = t.aftr.counter("pass_not_pool");
    let to = old_a;
    t.server
        .run(move || {
            let s = UdpSocket::bind("203.0.113.2:0").unwrap();
            s.send_to(b"late", to).unwrap();
        })
        .join()
        .unwrap();
    assert!(
        t.aftr.counter_at_least("pass_not_pool", not_pool + 1) > not_pool,
        "{to} is no longer a pool address"
    );

    // The NAT log says the old blocks and mappings went: two blocks released, two mappings
    // deleted, each on a removed address.
    wait_for("the releases in the NAT log", || {
        lines_with(&log, "block-released") >= 2 && lines_with(&log, "mapping-deleted") >= 2
    });
    let text = std::fs::read_to_string(&log).unwrap();
    for l in text
        .lines()
        .filter(|l| l.contains("block-released") || l.contains("mapping-deleted"))
    {
        assert!(
            l.contains("198.51.100.1") || l.contains("198.51.100.2"),
            "{l}"
        );
    }
}

/// `dslite stats|sessions|softwires`, text and JSON, into a pipe whose reader is gone (as in
/// `dslite sessions --json | head -1`): exit 0, nothing on stderr, no panic.
#[test]
fn views_cut_short_exit_quietly() {
    let t = DsLite::start(&[]).unwrap();
    let _echo = udp_echo_server(&t.server, sa(SERVER1, 7777));
    for p in 5000..5010 {
        udp_request(&t.a.host, sa(HOST_ADDR, p), sa(SERVER1, 7777), "x").unwrap();
    }
    let pin = t.aftr.pin_path.to_str().unwrap().to_string();
    for view in ["stats", "sessions", "softwires"] {
        for json in [false, true] {
            let mut args = vec![view, "--pin-path", &pin];
            if json {
                args.push("--json");
            }
            let full = Command::new(dslite_tests::dslite_bin())
                .args(&args)
                .output()
                .unwrap();
            assert!(full.status.success() && !full.stdout.is_empty(), "{args:?}");
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let out = Command::new(dslite_tests::dslite_bin())
                .args(&args)
                .stdout(writer)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stderr.is_empty(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
