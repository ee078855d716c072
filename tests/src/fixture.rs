//! BPF_PROG_TEST_RUN rigs: the real object, loaded and configured through the controller's
//! own code (`dslite_user::dataplane`), run on crafted frames inside a private namespace
//! whose interfaces, routes and static neighbours make `bpf_fib_lookup` answer; and the
//! addresses and frames that the fixtures, the hostile tests, the fuzzer and the bench send
//! through them.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, TestRun as _, TestRunOptions,
};
use dslite_common::maps::B4Config;
use dslite_user::{commands::inspect, config, dataplane};

use crate::{
    netns::Netns,
    packets::{self, eth, softwire},
    unique,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// MAC of the next hop toward the internet (static neighbour for 203.0.113.2).
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xe2];
/// MAC of the next hop toward the B4s / the AFTR (static neighbour for 2001:db8:*::1).
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xf1];
/// MAC of the LAN host 192.168.1.10 (static neighbour on the B4's LAN).
pub const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];

/// The hook a rig runs its program on: the same packet logic, built for each (the kernel's
/// `ctx::Pkt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    /// The object's program for role program `prog` (`dslite_aftr` or `dslite_aftr_tc`).
    pub fn program(self, prog: &str) -> String {
        match self {
            Hook::Xdp => prog.to_string(),
            Hook::Tc => format!("{prog}_tc"),
        }
    }
}

/// The hooks a fixture runs on: both, unless `DSLITE_FIXTURE_HOOKS` names one (`xdp` or
/// `tc`): the benchmarks' per-path timings take XDP only; the tests never set it.
pub fn hooks() -> Vec<Hook> {
    match std::env::var("DSLITE_FIXTURE_HOOKS").as_deref() {
        Ok("xdp") => vec![Hook::Xdp],
        Ok("tc") => vec![Hook::Tc],
        _ => Hook::ALL.to_vec(),
    }
}

// tc's return codes (include/uapi/linux/pkt_cls.h).
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// A tc verdict in XDP's numbering, so one fixture checks both hooks; a code the programs
/// never return is a failure.
fn tc_as_xdp(v: u32) -> u32 {
    match v {
        TC_ACT_UNSPEC | TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        TC_ACT_REDIRECT => XDP_REDIRECT,
        other => panic!("the tc programs return only UNSPEC, OK, SHOT or REDIRECT, not {other}"),
    }
}

/// A frame whose network header is shorter than its minimum (see
/// [`Rig::run_unless_refused`]).
pub fn short_network_header(frame: &[u8]) -> bool {
    let l3 = frame.len().saturating_sub(14);
    match frame.get(12..14) {
        Some([0x08, 0x00]) => l3 < 20,
        Some([0x86, 0xdd]) => l3 < 40,
        _ => l3 == 0,
    }
}

/// `struct __sk_buff` for BPF_PROG_TEST_RUN: only a few fields may be set; the kernel
/// takes `ingress_ifindex` (offset 36) as the arrival interface and `ifindex` (40) as the
/// device (its namespace is the FIB's).
fn sk_buff_ctx(ifindex: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

pub struct Rig {
    pub ebpf: Ebpf,
    prog: &'static str,
    pub hook: Hook,
    /// The tunnel MTU once [`Rig::enable_slow_path`] pointed the dataplane at `slow`.
    slow: Option<u32>,
    pub pin: PathBuf,
    pub ifindex: HashMap<&'static str, u32>,
}

impl Rig {
    /// Run the program on `frame` as if it arrived on `iface`. Returns verdict and output.
    pub fn run(&self, iface: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(iface, frame).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN of a {}-byte frame on {iface} ({:?} hook): {e:?}",
                frame.len(),
                self.hook
            )
        })
    }

    /// As [`Rig::run`], or None when this hook's BPF_PROG_TEST_RUN refuses the frame before
    /// the program runs: on tc the kernel turns the frame into an skb and rejects (EINVAL)
    /// one whose network header is shorter than its minimum (nothing after Ethernet, IPv4
    /// under 20 bytes, IPv6 under 40). Any other refusal fails the test.
    pub fn run_unless_refused(&self, iface: &str, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        match self.try_run(iface, frame) {
            Ok(r) => Some(r),
            Err(e) if self.hook == Hook::Tc && short_network_header(frame) => {
                let _ = e;
                None
            }
            Err(e) => panic!(
                "BPF_PROG_TEST_RUN of a {}-byte frame on {iface} ({:?} hook): {e:?}",
                frame.len(),
                self.hook
            ),
        }
    }

    /// Run a packet the AFTR refuses with an ICMP error (RFC 5508 REQ-8, RFC 4787 REQ-13,
    /// RFC 2473 §3): the verdict, and the error as the softwire carries it. XDP builds the
    /// error in place. On tc the program hands the refused packet to the slow path
    /// (`SLOW_ICMP_REFUSAL`, pointed for this run at the rig's `slow` interface): the frame
    /// it leaves is checked, and the error is the one the controller's own
    /// `slowpath::refusal_packet` makes of it, behind the frame's Ethernet header.
    pub fn run_refused(&mut self, iface: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        if self.hook == Hook::Xdp {
            return self.run(iface, frame);
        }
        let restore = self.slow;
        self.enable_slow_path(restore.unwrap_or(0));
        let (v, out) = self.run(iface, frame);
        match restore {
            Some(mtu) => self.enable_slow_path(mtu),
            None => {
                dataplane::set_slow_config(&mut self.ebpf, Default::default()).unwrap();
                self.slow = None;
            }
        }
        let Some(meta) = dslite_common::slow::SlowMeta::parse(&out) else {
            return (v, out);
        };
        assert_eq!(
            meta.reason,
            dslite_common::slow::SLOW_ICMP_REFUSAL,
            "handed over as a refusal"
        );
        let inner = &out[dslite_common::slow::SLOW_META_LEN..];
        let (src, dst, icmp) =
            dslite_user::slowpath::refusal_packet(inner, meta.icmp_type, meta.icmp_code, meta.mtu)
                .expect("the slow path answers the refused packet");
        let mut reply = inner[..12].to_vec();
        reply.extend_from_slice(
            &dslite_user::slowpath::softwire_frame(0, 64, &src, &dst, &icmp)[12..],
        );
        (v, reply)
    }

    /// Load another program of the object (for benchmarks: the baseline, the no-op).
    pub fn load(&mut self, prog: &str) {
        let p: &mut Xdp = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        if p.fd().is_err() {
            p.load().unwrap();
        }
    }

    /// Run program `prog` once on `frame` arriving on `iface`: its verdict, and the run time
    /// the kernel measured around it, in ns (BPF_PROG_TEST_RUN `duration`).
    pub fn time_once(&self, prog: &str, iface: &str, frame: &[u8]) -> (u32, u64) {
        let p: &Xdp = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let ctx = self.xdp_md(iface, frame);
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_ne!(r.return_value, XDP_ABORTED);
        (r.return_value, r.duration.as_nanos() as u64)
    }

    /// The `struct xdp_md` a run of `frame` arriving on `iface` starts from: data, data_end,
    /// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    fn xdp_md(&self, iface: &str, frame: &[u8]) -> [u8; 24] {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.ifindex[iface].to_ne_bytes());
        ctx
    }

    /// The name of the program this rig was built for.
    pub fn prog(&self) -> &'static str {
        self.prog
    }

    /// As [`Rig::run`], returning the syscall error (the kernel refuses frames shorter
    /// than an Ethernet header with EINVAL before the program runs).
    pub fn try_run(
        &self,
        iface: &str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let (verdict, out) = self.run_prog(self.prog, iface, frame)?;
        assert_ne!(
            verdict, XDP_ABORTED,
            "the programs never return XDP_ABORTED"
        );
        Ok((verdict, out))
    }

    /// Run program `prog` once on `frame` arriving on `iface`: its verdict, whatever it is
    /// (the fuzzer judges an XDP_ABORTED itself), and the frame it left.
    pub fn run_prog(
        &self,
        prog: &str,
        iface: &str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        // Room for everything a program may prepend: IPv6 (40) and the slow-path meta (16).
        let mut out = vec![0u8; frame.len() + 256];
        let r = match self.hook {
            Hook::Xdp => {
                let prog: &Xdp = self.ebpf.program(prog).unwrap().try_into().unwrap();
                let ctx = self.xdp_md(iface, frame);
                prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..Default::default()
                })?
            }
            Hook::Tc => {
                let name = Hook::Tc.program(prog);
                let prog: &SchedClassifier = self.ebpf.program(&name).unwrap().try_into().unwrap();
                let ctx = sk_buff_ctx(self.ifindex[iface]);
                let mut r = prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..Default::default()
                })?;
                r.return_value = tc_as_xdp(r.return_value);
                r
            }
        };
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    pub fn counters(&self) -> HashMap<&'static str, u64> {
        inspect::read_counters(&self.pin)
            .unwrap()
            .into_iter()
            .map(|(c, v)| (c.name(), v))
            .collect()
    }

    pub fn counter(&self, name: &str) -> u64 {
        *self
            .counters()
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Point the dataplane at a slow path on the rig's `slow` interface (a veth standing in
    /// for the controller's TAP: BPF_PROG_TEST_RUN reports a redirect without sending).
    pub fn enable_slow_path(&mut self, tunnel_mtu: u32) {
        let cfg = dslite_common::slow::SlowConfig {
            ifindex: self.ifindex["slow"],
            tunnel_mtu,
        };
        dataplane::set_slow_config(&mut self.ebpf, cfg).unwrap();
        self.slow = Some(tunnel_mtu);
    }

    /// Run `ip ARGS` in the rig's namespace (the rig's closure runs on a thread inside it,
    /// and a child process inherits that thread's namespace).
    pub fn ip(&self, args: &str) {
        let st = std::process::Command::new("ip")
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(st.success(), "ip {args}");
    }

    pub fn mac(&self, iface: &str) -> [u8; 6] {
        crate::netns::mac(iface).unwrap()
    }
}

fn setup(ns: &Netns, cmds: &[&str]) {
    for c in cmds {
        let args: Vec<&str> = c.split_whitespace().collect();
        ns.ip(&args).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn veth(ns: &Netns, a: &str) {
    let peer = format!("{a}p");
    setup(
        ns,
        &[&format!("link add name {a} type veth peer name {peer}")],
    );
    setup(
        ns,
        &[&format!("link set {a} up"), &format!("link set {peer} up")],
    );
}

/// Run `f` on a fresh rig for each hook ([`hooks`]): a namespace with `ifaces` (veth pairs)
/// set up by `net`, the object loaded with `sizes` and configured by `configure`, and the
/// role's program for that hook verified. The hook is printed first, so a failure says
/// which one it was.
fn with_rig(
    tag: &str,
    ifaces: &'static [&'static str],
    net: &[&str],
    prog: &'static str,
    sizes: Vec<(&'static str, u32)>,
    configure: impl Fn(&mut Ebpf, &HashMap<&'static str, u32>) + Send + Sync + 'static,
    f: impl Fn(&mut Rig) + Send + Sync + 'static,
) {
    crate::require_root();
    let spec = RigSpec {
        tag,
        ifaces,
        net,
        prog,
        sizes,
    };
    let configure = std::sync::Arc::new(configure);
    let f = std::sync::Arc::new(f);
    for hook in hooks() {
        eprintln!("-- {tag}: {} on the {hook:?} hook", hook.program(prog));
        let (configure, f) = (configure.clone(), f.clone());
        with_rig_on(hook, &spec, move |e, i| configure(e, i), move |r| f(r));
    }
}

/// What a rig is made of (see [`with_rig`]).
struct RigSpec<'a> {
    tag: &'a str,
    ifaces: &'static [&'static str],
    net: &'a [&'a str],
    prog: &'static str,
    sizes: Vec<(&'static str, u32)>,
}

fn with_rig_on(
    hook: Hook,
    spec: &RigSpec,
    configure: impl FnOnce(&mut Ebpf, &HashMap<&'static str, u32>) + Send + 'static,
    f: impl FnOnce(&mut Rig) + Send + 'static,
) {
    let (ifaces, prog, sizes) = (spec.ifaces, spec.prog, spec.sizes.clone());
    let ns = Netns::new(&unique(spec.tag)).unwrap();
    for i in ifaces {
        veth(&ns, i);
    }
    setup(&ns, spec.net);
    // bpf_fib_lookup answers FWD_DISABLED unless forwarding is on.
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let pin = crate::topo::PinDir::new(PathBuf::from("/sys/fs/bpf").join(unique("fx")));
    let pin2 = pin.0.clone();
    let r = ns
        .run(move || {
            let ifindex: HashMap<&'static str, u32> = ifaces
                .iter()
                .map(|i| {
                    let c = std::ffi::CString::new(*i).unwrap();
                    // SAFETY: if_nametoindex on a NUL-terminated name.
                    (*i, unsafe { libc::if_nametoindex(c.as_ptr()) })
                })
                .collect();
            let object =
                std::fs::read(crate::bpf_object()).expect("kernel object (cargo xtask build-ebpf)");
            let mut ebpf = dataplane::load(&object, &pin2, &sizes, false).unwrap();
            configure(&mut ebpf, &ifindex);
            match hook {
                Hook::Xdp => {
                    dataplane::load_program(&mut ebpf, prog).unwrap();
                }
                Hook::Tc => load_tc(&mut ebpf, &Hook::Tc.program(prog)),
            }
            let mut rig = Rig {
                ebpf,
                prog,
                hook,
                slow: None,
                pin: pin2,
                ifindex,
            };
            f(&mut rig);
        })
        .join();
    drop(pin);
    drop(ns);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// Load (verify) tc program `name`.
fn load_tc(ebpf: &mut Ebpf, name: &str) {
    let p: &mut SchedClassifier = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("program {name} missing from the object"))
        .try_into()
        .unwrap();
    if let Err(e) = p.load() {
        panic!("verifying {name}: {e:?}");
    }
}

pub use crate::topo::AFTR_ADDR;
pub const B4A: &str = "2001:db8:a::2";
/// The host behind every B4, and the internet server the fixtures talk to (the addresses
/// of the veth topology, `crate::topo`).
pub const HOST: Ipv4Addr = crate::topo::HOST_ADDR;
pub const SERVER: Ipv4Addr = crate::topo::SERVER1;

pub fn b4a() -> Ipv6Addr {
    B4A.parse().unwrap()
}
pub fn aftr() -> Ipv6Addr {
    AFTR_ADDR.parse().unwrap()
}
/// Address `last` in b4a's prefix, 2001:db8:a::/64.
pub fn b4(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, last)
}

/// The fixture AFTR's pool, 198.51.100.0/30.
pub fn pool() -> [Ipv4Addr; 4] {
    [0, 1, 2, 3].map(|i| Ipv4Addr::new(198, 51, 100, i))
}

/// The subscriber (RFC 7785) a B4 address belongs to under the default /56.
pub fn subscriber(b4: Ipv6Addr) -> [u8; 16] {
    use dslite_common::nat::{subscriber_mask, subscriber_of, DEFAULT_SUBSCRIBER_PREFIX_LEN};
    subscriber_of(
        &b4.octets(),
        &subscriber_mask(DEFAULT_SUBSCRIBER_PREFIX_LEN),
    )
}

/// A softwire frame from `b4` to the AFTR, with extension headers `exts`, as the AFTR
/// receives it on `iface`.
pub fn from_b4_on(
    rig: &Rig,
    iface: &str,
    b4: Ipv6Addr,
    inner: &[u8],
    exts: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    eth(
        rig.mac(iface),
        ROUTER_MAC,
        packets::ETH_P_IPV6,
        &softwire(b4, aftr(), inner, exts),
    )
}

/// A softwire frame as the AFTR receives it on `tun`.
pub fn from_b4(rig: &Rig, b4: Ipv6Addr, inner: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    from_b4_on(rig, "tun", b4, inner, exts)
}

/// An IPv4 frame as the AFTR receives it on `inet`.
pub fn from_internet(rig: &Rig, ip: &[u8]) -> Vec<u8> {
    eth(rig.mac("inet"), SERVER_MAC, packets::ETH_P_IP, ip)
}

/// Native IPv6 to the B4 (an ICMPv6 echo request from 2001:db8:f::1 to b4a): no softwire.
pub fn native_v6_to_b4a() -> Vec<u8> {
    packets::ipv6(
        "2001:db8:f::1".parse().unwrap(),
        b4a(),
        58,
        &[],
        &[128, 0, 0, 0, 0, 1, 0, 1],
        64,
    )
}

/// The outside (address, port) of a translated IPv4 frame (source address and port).
pub fn outside_of(out: &[u8]) -> (Ipv4Addr, u16) {
    let ip = &out[14..];
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([ip[20], ip[21]]),
    )
}

/// The fixture AFTR's settings: pool 198.51.100.0/30, allowed B4 prefix 2001:db8:a::/64,
/// ports 1024-65535 in blocks of 512, 4 blocks per softwire, 65536 mappings.
pub fn aftr_settings() -> config::AftrSettings {
    config::AftrSettings {
        tunnel_iface: "tun".into(),
        internet_iface: "inet".into(),
        address: AFTR_ADDR.parse().unwrap(),
        pool: config::expand_pool(&["198.51.100.0/30".parse().unwrap()]).unwrap(),
        b4_prefixes: vec!["2001:db8:a::/64".parse().unwrap()],
        ports: config::PortRange {
            lo: 1024,
            hi: 65535,
        },
        block_size: 512,
        max_blocks: 4,
        max_mappings: 1 << 16,
        timeouts: config::Timeouts::default(),
        inbound_refresh: false,
        subscriber_prefix_len: 56,
        deny_destinations: Vec::new(),
        max_peers: config::DEFAULT_MAX_PEERS,
        fragment_rate: config::DEFAULT_FRAGMENT_RATE,
        tunnel_ifindex: 0,
        internet_ifindex: 0,
        limits: config::Limits::default(),
        filtering: [config::Filtering::Eif; 3],
        mss_clamp: config::MssClamp::Off,
        slow: Default::default(),
        natlog: Default::default(),
        log_sessions: false,
        log_destinations: false,
        metrics: None,
        persist: false,
        nexthop_cache: true,
        v4_mtu: 1500,
        mss: 0,
        pin_path: PathBuf::new(),
        hook: config::HookOpt::Xdp,
        xdp_mode: config::XdpModeOpt::Skb,
        bpf_object: None,
    }
}

/// AFTR rig: `tun` faces the B4s (2001:db8:f::2/64, default via 2001:db8:f::1), `inet`
/// faces the internet (203.0.113.1/24, servers 203.0.113.2 and .3), configured with
/// [`aftr_settings`] as changed by `tweak`.
pub fn with_aftr_cfg(
    tweak: impl FnOnce(&mut config::AftrSettings),
    f: impl Fn(&mut Rig) + Send + Sync + 'static,
) {
    let mut s = aftr_settings();
    tweak(&mut s);
    let sizes = dataplane::map_sizes(Some(&s));
    with_rig(
        "fxa",
        &["tun", "inet", "slow"],
        &[
            "addr add 2001:db8:f::2/64 dev tun nodad",
            "-6 route add default via 2001:db8:f::1",
            "neigh replace 2001:db8:f::1 lladdr 02:00:00:00:00:f1 dev tun nud permanent",
            "addr add 203.0.113.1/24 dev inet",
            "neigh replace 203.0.113.2 lladdr 02:00:00:00:00:e2 dev inet nud permanent",
            "neigh replace 203.0.113.3 lladdr 02:00:00:00:00:e2 dev inet nud permanent",
        ],
        dslite_user::dataplane::PROG_AFTR,
        sizes,
        move |ebpf, _| dataplane::configure_aftr(ebpf, &s, 0x5eed).unwrap(),
        f,
    );
}

/// [`with_aftr_cfg`] with the default settings.
pub fn with_aftr(f: impl Fn(&mut Rig) + Send + Sync + 'static) {
    with_aftr_cfg(|_| {}, f);
}

/// AFTR rig whose controller never wrote a configuration.
pub fn with_unconfigured_aftr(f: impl Fn(&mut Rig) + Send + Sync + 'static) {
    with_rig(
        "fxu",
        &["tun", "inet"],
        &[],
        dslite_user::dataplane::PROG_AFTR,
        vec![],
        |_, _| {},
        f,
    );
}

/// B4 rig: `lan` (192.168.1.1/24, host 192.168.1.10) and `wan` (2001:db8:a::2/64, default
/// via 2001:db8:a::1); AFTR 2001:db8:f::2; no MSS clamping.
pub fn with_b4(f: impl Fn(&mut Rig) + Send + Sync + 'static) {
    with_b4_mss(0, f);
}

/// [`with_b4`] clamping SYNs to `mss` (0: off).
pub fn with_b4_mss(mss: u16, f: impl Fn(&mut Rig) + Send + Sync + 'static) {
    with_rig(
        "fxb",
        &["lan", "wan", "slow"],
        &[
            "addr add 192.168.1.1/24 dev lan",
            "neigh replace 192.168.1.10 lladdr 02:00:00:00:00:10 dev lan nud permanent",
            "addr add 2001:db8:a::2/64 dev wan nodad",
            "-6 route add default via 2001:db8:a::1",
            "neigh replace 2001:db8:a::1 lladdr 02:00:00:00:00:f1 dev wan nud permanent",
        ],
        dslite_user::dataplane::PROG_B4,
        dataplane::map_sizes(None),
        move |ebpf, ifindex| {
            let cfg = B4Config {
                mss,
                b4_addr: B4A.parse::<Ipv6Addr>().unwrap().octets(),
                aftr_addr: AFTR_ADDR.parse::<Ipv6Addr>().unwrap().octets(),
                lan_ifindex: ifindex["lan"],
                wan_ifindex: ifindex["wan"],
                hop_limit: 64,
                ..Default::default()
            };
            dataplane::configure_b4(ebpf, cfg, &["192.168.1.0/24".parse().unwrap()]).unwrap();
        },
        f,
    );
}

/// Pin the calling thread to `cpu`: races between CPUs (tests) and per-CPU rates (bench).
pub fn pin_to_cpu(cpu: usize) {
    pin_to_cpus(&[cpu]);
}

/// Let the calling thread run on `cpus` only.
pub fn pin_to_cpus(cpus: &[usize]) {
    // SAFETY: sched_setaffinity on the calling thread with a zeroed, then filled, cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}
