//! The DS-Lite test topology:
//!
//! ```text
//! hostA 192.168.1.10 -- b4a --(2001:db8:a::/64)--+
//! hostB 192.168.1.10 -- b4b --(2001:db8:b::/64)--+-- router --(2001:db8:f::/64)-- aftr -- server
//! hostC 192.168.1.10 -- b4c --(2001:db8:c::/64)--+   (IPv6 only)                  203.0.113.1  .2 .3
//! ```
//!
//! b4c's prefix is not in the AFTR's `--b4-prefix` list. Each host also has native IPv6
//! (2001:db8:a1::10 behind b4a, ...), routed by the B4's kernel to the router
//! (2001:db8:f::1). Everything is deleted on drop.
//!
//! By default the router runs an XDP_PASS program and test traffic leaves with real
//! checksums (TX checksum offload off on the hosts and the server). With [`Options::plain`]
//! the neighbours are plain Linux instead, as next to an operator's router: no program on the
//! router, the kernel's default veth offloads everywhere (TX checksumming and TSO on, so
//! packets arrive with partial checksums and as GSO aggregates), and an IPv4 router
//! between the AFTR and the server:
//!
//! ```text
//! aftr inet 192.0.2.1 -- 192.0.2.2 router4 203.0.113.1 -- server 203.0.113.2 .3
//! ```

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::Result;

use crate::{ctl::Controller, netns::Netns, unique};

pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
pub const LAN_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const SERVER1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
pub const AFTR_INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const POOL: &str = "198.51.100.0/30";
pub const AFTR_ADDR: &str = "2001:db8:f::2";
/// MTU of the IPv6 links: 1500-byte IPv4 plus the 40-byte softwire header (RFC 6908).
pub const V6_MTU: &str = "1540";

pub fn aftr_addr() -> Ipv6Addr {
    AFTR_ADDR.parse().unwrap()
}

/// One customer: host namespace, B4 namespace, and the B4's WAN prefix letter.
pub struct Customer {
    pub host: Netns,
    pub b4: Netns,
    pub wan_addr: Ipv6Addr,
}

/// The whole topology with its controllers running. Fields drop in order: controllers
/// first, then the router's pass programs, then namespaces.
pub struct DsLite {
    pub aftr: Controller,
    pub b4a: Controller,
    pub b4b: Controller,
    pub b4c: Controller,
    /// XDP_PASS on the router's interfaces (so redirects into them are delivered); None
    /// with [`Options::plain`].
    pub router_xdp: Option<aya::Ebpf>,
    pub a: Customer,
    pub b: Customer,
    pub c: Customer,
    pub router: Netns,
    pub aftr_ns: Netns,
    /// The IPv4 router between the AFTR and the server, with [`Options::plain`].
    pub router4: Option<Netns>,
    pub server: Netns,
    /// The AFTR's command line, for [`DsLite::restart_aftr`].
    pub aftr_args: Vec<String>,
    /// Last field, so dropped last: removes every pin once all programs are gone.
    pub pins: PinDir,
}

/// A directory of pinned maps, removed when dropped.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// A pin directory for this test, recorded so that a killed run's is removed too
    /// ([`crate::leftovers`]).
    pub fn new(path: PathBuf) -> PinDir {
        crate::leftovers::claim("pin", &path.to_string_lossy());
        PinDir(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        crate::leftovers::release("pin", &self.0.to_string_lossy());
    }
}

/// What a test may change in the topology.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    pub aftr_extra: &'a [&'a str],
    /// Flags added to every B4.
    pub b4_extra: &'a [&'a str],
    /// How every B4 finds its AFTR (default `--aftr 2001:db8:f::2`).
    pub b4_aftr: &'a [&'a str],
    /// MTU of every IPv6 link.
    pub v6_mtu: &'a str,
    /// MTU of the router-AFTR link alone, when it differs (a narrower core link).
    pub aftr_link_mtu: Option<&'a str>,
    /// MTU of the AFTR-server link (the IPv4 egress).
    pub inet_mtu: &'a str,
    /// The AFTR's pool (a subset of [`POOL`], which the server routes to the AFTR).
    pub pool: &'a str,
    /// Flags choosing the hook, given to the AFTR and every B4 (`--hook tc`, `--hook xdp
    /// --xdp-mode skb`...).
    pub hook: &'a [&'a str],
    /// Plain Linux neighbours (module docs): no program on the router, default offloads on
    /// every veth, an IPv4 router before the server.
    pub plain: bool,
    /// With `plain`: GRO on on the neighbours' interfaces (veth has it off by default), so
    /// the routers also merge what they forward.
    pub plain_gro: bool,
    /// With `plain`: TX checksumming off on the veth peers of the AFTR's and B4s'
    /// interfaces (the hosts, the routers), which `--hook xdp` needs on veth.
    pub peers_tx_csum_off: bool,
    /// The AFTR's `--b4-prefix` flags (a's and b's prefixes by default; c's is never
    /// allowed). Empty: none, for a test that sets them in a `--config` file (flags would
    /// override the file's, and a reload could not change them).
    pub b4_prefix: &'a [&'a str],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            aftr_extra: &[],
            b4_extra: &[],
            b4_aftr: &["--aftr", AFTR_ADDR],
            v6_mtu: V6_MTU,
            aftr_link_mtu: None,
            inet_mtu: "1500",
            pool: POOL,
            hook: &[],
            plain: false,
            plain_gro: false,
            peers_tx_csum_off: false,
            b4_prefix: &["2001:db8:a::/64", "2001:db8:b::/64"],
        }
    }
}

fn customer(tag: char, router: &Netns, o: &Options) -> Result<Customer> {
    let v6_mtu = o.v6_mtu;
    let host = Netns::new(&unique(&format!("h{tag}")))?;
    let b4 = Netns::new(&unique(&format!("b{tag}")))?;
    host.ip(&[
        "link", "add", "name", "eth0", "type", "veth", "peer", "name", "lan", "netns", &b4.name,
    ])?;
    b4.ip(&[
        "link",
        "add",
        "name",
        "wan",
        "type",
        "veth",
        "peer",
        "name",
        &format!("to-{tag}"),
        "netns",
        &router.name,
    ])?;
    host.ip(&["addr", "add", "192.168.1.10/24", "dev", "eth0"])?;
    host.ip(&["link", "set", "eth0", "up"])?;
    host.ip(&["route", "add", "default", "via", "192.168.1.1"])?;
    // Native IPv6 on the LAN too, routed by the B4's kernel: the customer's v6 share.
    host.ip(&[
        "addr",
        "add",
        &format!("2001:db8:{tag}1::10/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    host.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("2001:db8:{tag}1::1"),
    ])?;
    b4.ip(&["addr", "add", "192.168.1.1/24", "dev", "lan"])?;
    b4.ip(&[
        "addr",
        "add",
        &format!("2001:db8:{tag}1::1/64"),
        "dev",
        "lan",
        "nodad",
    ])?;
    let wan = format!("2001:db8:{tag}::2");
    b4.ip(&["addr", "add", &format!("{wan}/64"), "dev", "wan", "nodad"])?;
    b4.ip(&["link", "set", "wan", "mtu", v6_mtu])?;
    b4.ip(&["link", "set", "lan", "up"])?;
    b4.ip(&["link", "set", "wan", "up"])?;
    b4.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("2001:db8:{tag}::1"),
    ])?;
    let to = format!("to-{tag}");
    router.ip(&[
        "addr",
        "add",
        &format!("2001:db8:{tag}::1/64"),
        "dev",
        &to,
        "nodad",
    ])?;
    router.ip(&["link", "set", &to, "mtu", v6_mtu])?;
    router.ip(&["link", "set", &to, "up"])?;
    router.ip(&[
        "-6",
        "route",
        "add",
        &format!("2001:db8:{tag}1::/64"),
        "via",
        &wan,
    ])?;
    if o.plain {
        neighbour(&host, &["eth0"], o)?;
        neighbour(router, &[&to], o)?;
    } else {
        tune(&host, &["eth0"], true)?;
    }
    tune(&b4, &[], false)?;
    Ok(Customer {
        host,
        b4,
        wan_addr: wan.parse().unwrap(),
    })
}

/// Attach `dslite_pass` to a router's interfaces: a veth delivers redirected frames only if
/// its peer runs XDP or GRO, and GRO on a forwarding router would merge packets into
/// frames larger than the next link's MTU.
pub fn attach_pass(ns: &Netns, ifaces: &[&str], pin: PathBuf) -> Result<aya::Ebpf> {
    let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
    ns.run(move || -> Result<aya::Ebpf> {
        let object = std::fs::read(crate::bpf_object())?;
        let mut ebpf = dslite_user::dataplane::load(
            &object,
            &pin,
            &dslite_user::dataplane::map_sizes(None),
            false,
        )?;
        let targets: Vec<(String, u32)> = ifaces
            .iter()
            .map(|i| {
                let c = std::ffi::CString::new(i.as_str()).unwrap();
                // SAFETY: if_nametoindex on a NUL-terminated name.
                (i.clone(), unsafe { libc::if_nametoindex(c.as_ptr()) })
            })
            .collect();
        dslite_user::dataplane::attach(
            &mut ebpf,
            dslite_user::dataplane::PROG_PASS,
            &targets,
            dslite_user::config::XdpModeOpt::Native,
            None,
        )?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
}

/// GRO on every veth (XDP_REDIRECT into a veth needs it on the peer), TX checksum offload
/// off where test traffic originates (platform.md), reverse-path filter off on routers.
fn tune(ns: &Netns, ifaces: &[&str], origin: bool) -> Result<()> {
    let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
    ns.run(move || -> Result<()> {
        for i in &ifaces {
            crate::netns::gro_on(i)?;
            if origin {
                crate::netns::tx_csum_off(i)?;
            }
        }
        Ok(())
    })
    .join()
    .unwrap()?;
    if !origin {
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    }
    Ok(())
}

/// A plain neighbour's interfaces facing dslite: default offloads, except what
/// [`Options::plain_gro`] and [`Options::peers_tx_csum_off`] change.
fn neighbour(ns: &Netns, ifaces: &[&str], o: &Options) -> Result<()> {
    let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
    let (gro, tx_off) = (o.plain_gro, o.peers_tx_csum_off);
    ns.run(move || -> Result<()> {
        for i in &ifaces {
            if gro {
                crate::netns::gro_on(i)?;
            }
            if tx_off {
                crate::netns::tx_csum_off(i)?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("offload thread panicked"))?
}

impl DsLite {
    /// Build the topology and start the AFTR and three B4s. `aftr_extra` adds AFTR flags.
    pub fn start(aftr_extra: &[&str]) -> Result<DsLite> {
        DsLite::start_with(Options {
            aftr_extra,
            ..Default::default()
        })
    }

    /// [`DsLite::start`] with other link MTUs or B4 flags.
    pub fn start_with(o: Options) -> Result<DsLite> {
        crate::require_root();
        let aftr_link_mtu = o.aftr_link_mtu.unwrap_or(o.v6_mtu);
        let router = Netns::new(&unique("rt"))?;
        let aftr_ns = Netns::new(&unique("af"))?;
        let server = Netns::new(&unique("sv"))?;
        let a = customer('a', &router, &o)?;
        let b = customer('b', &router, &o)?;
        let c = customer('c', &router, &o)?;
        router.ip(&[
            "link",
            "add",
            "name",
            "to-aftr",
            "type",
            "veth",
            "peer",
            "name",
            "tun",
            "netns",
            &aftr_ns.name,
        ])?;
        router.ip(&["addr", "add", "2001:db8:f::1/64", "dev", "to-aftr", "nodad"])?;
        router.ip(&["link", "set", "to-aftr", "mtu", aftr_link_mtu])?;
        router.ip(&["link", "set", "to-aftr", "up"])?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let pin_root = PathBuf::from("/sys/fs/bpf").join(unique("pins"));
        // Declared before everything that pins, so an early return removes the pins last.
        let pins = PinDir::new(pin_root.clone());
        let router_xdp = if o.plain {
            tune(&router, &[], false)?;
            neighbour(&router, &["to-aftr"], &o)?;
            None
        } else {
            Some(attach_pass(
                &router,
                &["to-a", "to-b", "to-c", "to-aftr"],
                pin_root.join("router"),
            )?)
        };

        aftr_ns.ip(&[
            "addr",
            "add",
            &format!("{AFTR_ADDR}/64"),
            "dev",
            "tun",
            "nodad",
        ])?;
        aftr_ns.ip(&["link", "set", "tun", "mtu", aftr_link_mtu])?;
        aftr_ns.ip(&["link", "set", "tun", "up"])?;
        aftr_ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:f::1"])?;
        let router4 = if o.plain {
            Some(Netns::new(&unique("r4"))?)
        } else {
            None
        };
        // The AFTR's internet link: to the server, or to router4 with `plain`.
        let (inet_peer, inet_addr) = match &router4 {
            Some(r4) => ((r4, "to-aftr"), "192.0.2.1/24"),
            None => ((&server, "eth0"), "203.0.113.1/24"),
        };
        aftr_ns.ip(&[
            "link",
            "add",
            "name",
            "inet",
            "type",
            "veth",
            "peer",
            "name",
            inet_peer.1,
            "netns",
            &inet_peer.0.name,
        ])?;
        aftr_ns.ip(&["addr", "add", inet_addr, "dev", "inet"])?;
        aftr_ns.ip(&["link", "set", "inet", "mtu", o.inet_mtu])?;
        aftr_ns.ip(&["link", "set", "inet", "up"])?;
        tune(&aftr_ns, &[], false)?;
        if let Some(r4) = &router4 {
            aftr_ns.ip(&["route", "add", "default", "via", "192.0.2.2"])?;
            r4.ip(&[
                "link",
                "add",
                "name",
                "to-sv",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &server.name,
            ])?;
            r4.ip(&["addr", "add", "192.0.2.2/24", "dev", "to-aftr"])?;
            r4.ip(&["addr", "add", "203.0.113.1/24", "dev", "to-sv"])?;
            for i in ["to-aftr", "to-sv"] {
                r4.ip(&["link", "set", i, "mtu", o.inet_mtu])?;
                r4.ip(&["link", "set", i, "up"])?;
            }
            r4.ip(&["route", "add", POOL, "via", "192.0.2.1"])?;
            r4.sysctl("net.ipv4.ip_forward", "1")?;
            tune(r4, &[], false)?;
            neighbour(r4, &["to-aftr"], &o)?;
            if o.plain_gro {
                r4.run(|| crate::netns::gro_on("to-sv"))
                    .join()
                    .map_err(|_| anyhow::anyhow!("offload thread panicked"))??;
            }
        }

        server.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
        server.ip(&["addr", "add", "203.0.113.3/24", "dev", "eth0"])?;
        server.ip(&["link", "set", "eth0", "mtu", o.inet_mtu])?;
        server.ip(&["link", "set", "eth0", "up"])?;
        server.ip(&["route", "add", POOL, "via", "203.0.113.1"])?;
        if !o.plain {
            tune(&server, &["eth0"], true)?;
        }

        let mut aftr_args = vec![
            "aftr",
            "--tunnel-iface",
            "tun",
            "--internet-iface",
            "inet",
            "--address",
            AFTR_ADDR,
            "--pool",
            o.pool,
        ];
        if !o.b4_prefix.is_empty() {
            aftr_args.push("--b4-prefix");
            aftr_args.extend_from_slice(o.b4_prefix);
        }
        aftr_args.extend_from_slice(o.hook);
        aftr_args.extend_from_slice(o.aftr_extra);
        let aftr = Controller::start(&aftr_ns, &aftr_args, pin_root.join("aftr"))?;
        let aftr_args: Vec<String> = aftr_args.iter().map(|a| a.to_string()).collect();
        let b4 = |c: &Customer, name: &str| {
            let mut args = vec!["b4", "--lan-iface", "lan", "--wan-iface", "wan"];
            args.extend_from_slice(o.b4_aftr);
            args.extend_from_slice(o.hook);
            args.extend_from_slice(o.b4_extra);
            Controller::start(&c.b4, &args, pin_root.join(name))
        };
        let b4a = b4(&a, "b4a")?;
        let b4b = b4(&b, "b4b")?;
        let b4c = b4(&c, "b4c")?;
        Ok(DsLite {
            aftr,
            b4a,
            b4b,
            b4c,
            router_xdp,
            a,
            b,
            c,
            router,
            aftr_ns,
            router4,
            server,
            aftr_args,
            pins,
        })
    }
}

impl DsLite {
    /// Kill the AFTR's controller with SIGKILL and start it again with the same command line
    /// (which should hold `--persist`).
    pub fn restart_aftr(&mut self) -> Result<()> {
        self.aftr.kill();
        let args: Vec<&str> = self.aftr_args.iter().map(String::as_str).collect();
        let new = Controller::start(&self.aftr_ns, &args, self.aftr.pin_path.clone())?;
        let old = std::mem::replace(&mut self.aftr, new);
        drop(old); // already dead; keeps the pins
        Ok(())
    }

    /// Non-zero counters of every controller, for assertion messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (name, c) in [
            ("aftr", &self.aftr),
            ("b4a", &self.b4a),
            ("b4b", &self.b4b),
            ("b4c", &self.b4c),
        ] {
            let nz: Vec<String> = match c.stats() {
                Ok(serde_json::Value::Object(m)) => m
                    .iter()
                    .filter(|(_, v)| v.as_u64() != Some(0))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
                other => vec![format!("{other:?}")],
            };
            out.push_str(&format!("{name}: {}\n", nz.join(" ")));
        }
        out
    }
}
