//! End-to-end: which hook the controller puts on each interface (docs/operations.md, "Hooks:
//! XDP or tc"). A B4 in its own namespace, its LAN and WAN veths' peers in another, with the
//! kernel's default offloads (TX checksumming on).

use std::process::Command;

use aya::programs::{SchedClassifier, TcAttachType};
use dslite_tests::{
    bpf_object, ctl::Controller, dslite_bin, netns::Netns, require_root, topo::PinDir, unique,
};

/// The B4's namespace (`lan`, `wan`), the peers' (`lanp`, `wanp`), and a pin directory.
struct Bed {
    b4: Netns,
    peers: Netns,
    pins: PinDir,
}

impl Bed {
    fn new() -> Bed {
        require_root();
        let b4 = Netns::new(&unique("hb")).unwrap();
        let peers = Netns::new(&unique("hp")).unwrap();
        for (i, p) in [("lan", "lanp"), ("wan", "wanp")] {
            b4.ip(&[
                "link",
                "add",
                i,
                "type",
                "veth",
                "peer",
                "name",
                p,
                "netns",
                &peers.name,
            ])
            .unwrap();
            b4.ip(&["link", "set", i, "up"]).unwrap();
            peers.ip(&["link", "set", p, "up"]).unwrap();
        }
        b4.ip(&["addr", "add", "2001:db8:a::2/64", "dev", "wan", "nodad"])
            .unwrap();
        b4.ip(&["-6", "route", "add", "default", "via", "2001:db8:a::1"])
            .unwrap();
        b4.ip(&["addr", "add", "192.168.1.1/24", "dev", "lan"])
            .unwrap();
        let pins = PinDir::new(std::path::PathBuf::from("/sys/fs/bpf").join(unique("hook")));
        Bed { b4, peers, pins }
    }

    fn args<'a>(&'a self, obj: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "b4",
            "--lan-iface",
            "lan",
            "--wan-iface",
            "wan",
            "--aftr",
            "2001:db8:f::2",
            "--address",
            "2001:db8:a::2",
            "--bpf-object",
            obj,
        ];
        a.extend_from_slice(extra);
        a
    }

    fn start(&self, extra: &[&str]) -> Controller {
        let obj = bpf_object().to_string_lossy().into_owned();
        Controller::start(&self.b4, &self.args(&obj, extra), self.pins.0.clone()).unwrap()
    }

    /// `dslite stats --json`'s `hooks`, by interface: (hook, mode, reason).
    fn hooks(&self) -> Vec<(String, String, String, String)> {
        let out = Command::new(dslite_bin())
            .args(["stats", "--json", "--pin-path"])
            .arg(&self.pins.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = |x: &serde_json::Value| x.as_str().unwrap().to_string();
        v["hooks"]
            .as_array()
            .unwrap_or_else(|| panic!("no hooks in {v}"))
            .iter()
            .map(|h| {
                (
                    s(&h["interface"]),
                    s(&h["hook"]),
                    s(&h["mode"]),
                    s(&h["reason"]),
                )
            })
            .collect()
    }

    /// The names of the tcx programs on `ifname`'s ingress.
    fn tcx(&self, ifname: &str) -> Vec<String> {
        let i = ifname.to_string();
        self.b4
            .run(move || {
                let (_, progs) = SchedClassifier::query_tcx(&i, TcAttachType::Ingress).unwrap();
                progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("").to_string())
                    .collect()
            })
            .join()
            .unwrap()
    }

    /// TX checksumming off and GRO on at the peers, which `--hook xdp` needs on veth: no
    /// partial checksums, and a veth takes what native XDP redirects into it only when its
    /// peer has GRO (or XDP); the controller checks both (plain.rs).
    fn peers_ready_for_xdp(&self) {
        for p in ["lanp", "wanp"] {
            self.peers
                .run(move || {
                    dslite_tests::netns::tx_csum_off(p)?;
                    dslite_tests::netns::gro_on(p)
                })
                .join()
                .unwrap()
                .unwrap();
        }
    }

    fn has_xdp(&self, ifname: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.b4.name, "-d", "link", "show", "dev", ifname])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("prog/xdp") || text.contains(" xdp")
    }

    fn tc_filters(&self, ifname: &str) -> String {
        let out = Command::new("tc")
            .args([
                "-n",
                &self.b4.name,
                "filter",
                "show",
                "dev",
                ifname,
                "ingress",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn auto_puts_tc_on_veth_and_says_why() {
    let bed = Bed::new();
    let mut c = bed.start(&[]);
    let log = c.log();
    assert!(
        log.contains("dslite_b4_tc on lan (ifindex") && log.contains("virtual device: veth"),
        "{log}"
    );
    let hooks = bed.hooks();
    for ifname in ["lan", "wan"] {
        let h = hooks.iter().find(|h| h.0 == ifname).unwrap();
        assert_eq!(
            (h.1.as_str(), h.2.as_str(), h.3.as_str()),
            ("tc", "tcx", "virtual device: veth"),
            "{hooks:?}"
        );
        assert_eq!(bed.tcx(ifname), ["dslite_b4_tc"], "{ifname}");
        assert!(!bed.has_xdp(ifname), "{ifname} has XDP too");
    }
    // The slow path's TAP runs the tc program too.
    let tap = hooks.iter().find(|h| h.0 == "dslite0").unwrap();
    assert_eq!(tap.1, "tc", "{hooks:?}");
    assert!(c.stop().unwrap().success());
    assert!(bed.tcx("lan").is_empty(), "tcx left attached after stop");
}

#[test]
fn xdp_is_refused_behind_a_peer_with_tx_checksumming_and_allowed_without() {
    let bed = Bed::new();
    let obj = bpf_object().to_string_lossy().into_owned();
    let out = bed
        .b4
        .spawn(
            Command::new(dslite_bin())
                .args(bed.args(&obj, &["--hook", "xdp"]))
                .arg("--pin-path")
                .arg(&bed.pins.0)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped()),
        )
        .unwrap()
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    for s in [
        "--hook xdp on lan",
        "veth peer lanp has tx-checksumming on",
        "native XDP loses",
        "--hook tc",
        "ethtool -K lanp tx off",
    ] {
        assert!(err.contains(s), "{s:?} not in {err}");
    }
    bed.peers_ready_for_xdp();
    let mut c = bed.start(&["--hook", "xdp"]);
    let hooks = bed.hooks();
    for ifname in ["lan", "wan"] {
        let h = hooks.iter().find(|h| h.0 == ifname).unwrap();
        assert_eq!(h.1, "xdp", "{hooks:?}");
        assert!(
            h.3.contains("veth peer has tx-checksumming off"),
            "{hooks:?}"
        );
        assert!(bed.has_xdp(ifname), "{ifname} has no XDP");
        assert!(bed.tcx(ifname).is_empty(), "{ifname} has tc too");
    }
    assert!(c.stop().unwrap().success());
}

#[test]
fn the_netlink_fallback_attaches_through_clsact_and_detaches_on_stop() {
    let bed = Bed::new();
    /// Sets the internal switch for the controllers this test starts, unset on drop.
    struct Netlink;
    impl Drop for Netlink {
        fn drop(&mut self) {
            std::env::remove_var("DSLITE_TC_NETLINK");
        }
    }
    let switch = Netlink;
    std::env::set_var("DSLITE_TC_NETLINK", "1");
    let mut c = bed.start(&["--hook", "tc"]);
    drop(switch);
    let hooks = bed.hooks();
    let h = hooks.iter().find(|h| h.0 == "wan").unwrap();
    assert_eq!((h.1.as_str(), h.2.as_str()), ("tc", "netlink"), "{hooks:?}");
    for ifname in ["lan", "wan"] {
        let f = bed.tc_filters(ifname);
        assert!(f.contains("dslite_b4_tc"), "{ifname}: {f}");
        assert!(bed.tcx(ifname).is_empty(), "{ifname} has tcx too");
    }
    assert!(c.stop().unwrap().success());
    for ifname in ["lan", "wan"] {
        let f = bed.tc_filters(ifname);
        assert!(!f.contains("dslite_b4_tc"), "{ifname} after stop: {f}");
    }
}

/// `--persist` with tc: the tcx links are pinned (`link-tc-<if>`) and stay attached when the
/// controller exits; the next controller adopts them (one program per interface, `stats`
/// says so); one that switches the interfaces to XDP removes them first, so dslite never
/// runs on both hooks of an interface.
#[test]
fn persist_keeps_tcx_attached_adopts_it_and_a_hook_switch_removes_it() {
    let bed = Bed::new();
    let mut c = bed.start(&["--hook", "tc", "--persist"]);
    assert!(c.stop().unwrap().success());
    for i in ["lan", "wan"] {
        assert_eq!(bed.tcx(i), ["dslite_b4_tc"], "{i} after a --persist stop");
        assert!(
            bed.pins.0.join(format!("link-tc-{i}")).exists(),
            "{i} pinned"
        );
    }
    let mut c = bed.start(&["--hook", "tc", "--persist"]);
    let hooks = bed.hooks();
    for i in ["lan", "wan"] {
        let h = hooks.iter().find(|h| h.0 == i).unwrap();
        assert_eq!((h.1.as_str(), h.2.as_str()), ("tc", "adopted"), "{hooks:?}");
        assert_eq!(
            bed.tcx(i),
            ["dslite_b4_tc"],
            "{i}: adopted, not attached twice"
        );
    }
    assert!(c.stop().unwrap().success());
    bed.peers_ready_for_xdp();
    let mut c = bed.start(&["--hook", "xdp", "--persist"]);
    for i in ["lan", "wan"] {
        assert!(bed.tcx(i).is_empty(), "{i} still has tc: {:?}", bed.tcx(i));
        assert!(bed.has_xdp(i), "{i} has no XDP");
        assert!(
            !bed.pins.0.join(format!("link-tc-{i}")).exists(),
            "{i}'s tc pin"
        );
    }
    assert!(c.stop().unwrap().success());
}
