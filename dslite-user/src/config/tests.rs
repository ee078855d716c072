//! Unit tests of parsing, merging, validation and the reload split.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr as _;

use anyhow::Result;

use super::values::parse_mss;
use super::*;

#[test]
fn cidr_parsing_and_errors() {
    let c: Cidr4 = "198.51.100.7/30".parse().unwrap();
    assert_eq!(c.network(), [198, 51, 100, 4]);
    assert!("198.51.100.0/33"
        .parse::<Cidr4>()
        .unwrap_err()
        .contains("0-32"));
    assert!("nope".parse::<Cidr4>().unwrap_err().contains("'nope'"));
    let c6: Cidr6 = "::/0".parse().unwrap();
    assert!(c6.contains(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    let c6: Cidr6 = "2001:db8:a::/48".parse().unwrap();
    assert!(!c6.contains(&Ipv6Addr::from_str("2001:db8:b::1").unwrap().octets()));
}

#[test]
fn pool_expands_and_rejects_overlap() {
    let p = expand_pool(&[
        "198.51.100.0/30".parse().unwrap(),
        "203.0.113.9".parse().unwrap(),
    ])
    .unwrap();
    assert_eq!(p.len(), 5);
    assert_eq!(p[4], Ipv4Addr::new(203, 0, 113, 9));
    let e = expand_pool(&[
        "198.51.100.0/30".parse().unwrap(),
        "198.51.100.2/32".parse().unwrap(),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
}

#[test]
fn mss_clamp_values() {
    assert_eq!(parse_mss("auto").unwrap().resolve(1540), 1460);
    assert_eq!(parse_mss("off").unwrap().resolve(1540), 0);
    assert_eq!(parse_mss("1400").unwrap().resolve(9000), 1400);
    assert!(parse_mss("100").unwrap_err().contains("'100'"));
    assert!(parse_mss("big").is_err());
}

#[test]
fn port_range_rules() {
    assert_eq!(
        "1024-2047".parse::<PortRange>().unwrap(),
        PortRange { lo: 1024, hi: 2047 }
    );
    for bad in ["0-10", "10-5", "a-b", "100", "1-70000"] {
        assert!(bad.parse::<PortRange>().is_err(), "{bad}");
    }
}

#[test]
fn toml_file_is_overridden_by_flags() {
    let dir = std::env::temp_dir().join(format!("dslite-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("aftr.toml");
    std::fs::write(
        &f,
        "tunnel-iface = \"eth0\"\naddress = \"2001:db8::1\"\npool = [\"198.51.100.0/30\"]\n\
         b4-prefix = [\"2001:db8::/32\"]\nport-range = \"2000-3000\"\nxdp-mode = \"skb\"\n",
    )
    .unwrap();
    let flags = AftrOptions {
        tunnel_iface: Some("eth1".into()),
        common: CommonOptions {
            config: Some(f.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = flags.merged().unwrap().validate().unwrap();
    assert_eq!(s.tunnel_iface, "eth1");
    assert_eq!(s.internet_iface, "eth1");
    assert_eq!(s.ports, PortRange { lo: 2000, hi: 3000 });
    assert_eq!(s.xdp_mode, XdpModeOpt::Skb);
    assert_eq!(s.pool.len(), 4);

    std::fs::write(&f, "tunnel-iface = \"eth0\"\n\nbogus-key = 1\n").unwrap();
    let flags = AftrOptions {
        common: CommonOptions {
            config: Some(f.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = flags.merged().unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("bogus-key"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn aftr(extra: AftrOptions) -> Result<AftrSettings> {
    AftrOptions {
        tunnel_iface: Some("eth0".into()),
        address: Some("2001:db8::1".parse().unwrap()),
        pool: vec!["198.51.100.0/30".parse().unwrap()],
        b4_prefix: vec!["::/0".parse().unwrap()],
        ..extra
    }
    .validate()
}

#[test]
fn timeouts_respect_rfc_floors() {
    let s = aftr(AftrOptions::default()).unwrap();
    assert_eq!(s.timeouts, Timeouts::default());
    let e = aftr(AftrOptions {
        udp_timeout: Some(60),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("--udp-timeout 60") && e.to_string().contains("120"),
        "{e}"
    );
    let e = aftr(AftrOptions {
        icmp_timeout: Some(30),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--icmp-timeout 30"), "{e}");
    let e = aftr(AftrOptions {
        tcp_established_timeout: Some(600),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("7440"), "{e}");
    let s = aftr(AftrOptions {
        udp_timeout: Some(2),
        allow_short_timeouts: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.timeouts.udp, 2);
    let e = aftr(AftrOptions {
        udp_timeout: Some(0),
        allow_short_timeouts: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

#[test]
fn block_settings_are_checked() {
    let s = aftr(AftrOptions::default()).unwrap();
    assert_eq!((s.block_size, s.max_blocks), (512, 4));
    for bad in [0u16, 100, 8] {
        let e = aftr(AftrOptions {
            block_size: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains(&format!("--block-size {bad}")),
            "{e}"
        );
    }
    let e = aftr(AftrOptions {
        max_blocks: Some(9),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--max-blocks 9"), "{e}");
    let e = aftr(AftrOptions {
        port_range: Some(PortRange { lo: 5000, hi: 5063 }),
        block_size: Some(128),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("(64)"), "{e}");
}

fn aftr_with(pool: &str, b4_prefix: &str, extra: AftrOptions) -> AftrSettings {
    AftrOptions {
        tunnel_iface: Some("eth0".into()),
        address: Some("2001:db8::1".parse().unwrap()),
        pool: vec![pool.parse().unwrap()],
        b4_prefix: vec![b4_prefix.parse().unwrap()],
        ..extra
    }
    .validate()
    .unwrap()
}

#[test]
fn a_reload_names_what_it_applies_and_what_needs_a_restart() {
    let old = aftr_with("198.51.100.0/30", "2001:db8:a::/64", AftrOptions::default());
    let new = aftr_with(
        "198.51.100.8/30",
        "2001:db8:b::/64",
        AftrOptions {
            max_sessions: Some(5),
            udp_filtering: Some(Filtering::Adf),
            syslog: Some("unix:/dev/log".into()),
            max_mappings: Some(10),
            ..Default::default()
        },
    );
    let r = old.reload_to(new, 1500);
    assert_eq!(r.need_restart, ["pool", "max-mappings"]);
    assert_eq!(r.settings.pool, old.pool, "the running pool stays");
    assert_eq!(r.settings.max_mappings, old.max_mappings);
    assert_eq!(
        r.settings.limits.max_sessions, 5,
        "the live half is the new one"
    );
    assert_eq!(
        r.applied,
        [
            "max-sessions: 0 -> 5",
            "syslog: unset -> unix:/dev/log",
            "udp-filtering: eif -> adf",
            "b4-prefix: +2001:db8:b::/64 -2001:db8:a::/64",
        ]
    );
    let same = old.reload_to(old.clone(), 1500);
    assert!(same.applied.is_empty() && same.need_restart.is_empty());
}

#[test]
fn too_many_b4_prefixes_are_refused_before_any_map_write() {
    let e = AftrOptions {
        tunnel_iface: Some("eth0".into()),
        address: Some("2001:db8::1".parse().unwrap()),
        pool: vec!["198.51.100.0/30".parse().unwrap()],
        b4_prefix: (0..=dslite_common::maps::MAX_PREFIXES)
            .map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap())
            .collect(),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("at most 1024"), "{e}");
}

#[test]
fn nat_log_queue_is_bounded() {
    let s = aftr(AftrOptions::default()).unwrap();
    assert_eq!(s.natlog.queue, DEFAULT_QUEUE);
    let s = aftr(AftrOptions {
        nat_log_queue: Some(64),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.natlog.queue, 64);
    for bad in [0, 15, 1 << 21] {
        let e = aftr(AftrOptions {
            nat_log_queue: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains(&format!("--nat-log-queue {bad}")),
            "{e}"
        );
    }
}

#[test]
fn missing_required_values_are_named() {
    let e = AftrOptions::default().validate().unwrap_err().to_string();
    assert!(e.contains("--tunnel-iface"), "{e}");
    let e = B4Options {
        lan_iface: Some("a".into()),
        wan_iface: Some("a".into()),
        ..Default::default()
    }
    .validate(Vec::new)
    .unwrap_err()
    .to_string();
    assert!(e.contains("must differ"), "{e}");
}

#[test]
fn hook_parses_from_flags_and_toml_and_is_checked_against_xdp_mode() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonOptions,
    }
    let parse = |args: &[&str]| {
        let mut v = vec!["dslite"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.common)
    };
    let hook = |args: &[&str]| {
        let common = parse(args).unwrap();
        aftr(AftrOptions {
            common,
            ..Default::default()
        })
        .map(|s| (s.hook, s.xdp_mode))
    };
    assert_eq!(hook(&[]).unwrap(), (HookOpt::Auto, XdpModeOpt::Auto));
    assert_eq!(hook(&["--hook", "tc"]).unwrap().0, HookOpt::Tc);
    assert_eq!(
        hook(&["--hook", "xdp", "--xdp-mode", "native"]).unwrap(),
        (HookOpt::Xdp, XdpModeOpt::Native)
    );
    assert_eq!(
        hook(&["--hook", "auto", "--xdp-mode", "skb"]).unwrap(),
        (HookOpt::Auto, XdpModeOpt::Skb)
    );
    assert_eq!(
        hook(&["--hook", "tc", "--xdp-mode", "auto"]).unwrap().0,
        HookOpt::Tc
    );
    assert!(parse(&["--hook", "ebpf"]).is_err());
    for m in ["native", "skb"] {
        let e = hook(&["--hook", "tc", "--xdp-mode", m])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "--xdp-mode {m} applies only where the hook is XDP"
            )) && e.contains("--hook tc"),
            "{e}"
        );
    }

    // The TOML key is `hook`, and a flag overrides it; the B4 checks the same way.
    let dir = std::env::temp_dir().join(format!("dslite-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("b4.toml");
    std::fs::write(
        &f,
        "lan-iface = \"lan\"\nwan-iface = \"wan\"\naftr = \"2001:db8::1\"\nhook = \"tc\"\n",
    )
    .unwrap();
    let b4 = |common: CommonOptions| {
        B4Options {
            common: CommonOptions {
                config: Some(f.clone()),
                ..common
            },
            ..Default::default()
        }
        .merged()
        .unwrap()
        .validate(Vec::new)
    };
    assert_eq!(b4(CommonOptions::default()).unwrap().hook, HookOpt::Tc);
    let flag = CommonOptions {
        hook: Some(HookOpt::Xdp),
        ..Default::default()
    };
    assert_eq!(b4(flag).unwrap().hook, HookOpt::Xdp);
    let bad = CommonOptions {
        xdp_mode: Some(XdpModeOpt::Native),
        ..Default::default()
    };
    let e = b4(bad).unwrap_err().to_string();
    assert!(e.contains("--xdp-mode native applies only"), "{e}");
    std::fs::write(&f, "hook = \"bpf\"\n").unwrap();
    let e = B4Options {
        common: CommonOptions {
            config: Some(f.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
    .merged()
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 1") && e.contains("bpf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
