//! The slow path: what XDP cannot do, done by the controller with the kernel's help, on the
//! dataplane's own state (docs/design.md, "The slow path").
//!
//! - XDP hands frames over by redirecting them into the controller's TAP device with a
//!   [`SlowMeta`] in front (`dslite_common::slow`). The TAP's queue bounds the hand-over.
//! - Oversized softwire packets (checklist 10-11) are sent through a raw IPv6 socket of
//!   protocol 4: the kernel builds the outer header and fragments it at the MTU XDP found.
//! - Softwire packets that arrive as IPv6 fragments (12) are passed to the kernel by XDP;
//!   the kernel reassembles them (its memory limit and timeout set from our options) and
//!   delivers them to the same raw socket, and we write them back into the TAP, whose XDP
//!   program (the same one) decapsulates, translates and forwards them.
//! - IPv4 fragments bound for the NAT (15-16) are reassembled here ([`crate::reasm`]) and
//!   written back whole.
//! - ICMPv6 errors about softwire packets reach the raw socket's error queue (the kernel
//!   also lowers its path MTU on a Packet Too Big, which XDP's FIB lookups then see); we
//!   relay them to the inner source as ICMPv4 errors, written back into the TAP as softwire
//!   packets so the same XDP code delivers (and, on the AFTR, translates) them (42).
//! - B4: the router's own IPv4 (from 192.0.0.2, RFC 6333 §5.7) is routed into the TAP by the
//!   kernel; we write it back so XDP encapsulates it like LAN traffic.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::{bail, Context as _, Result};
use dslite_common::{
    csum,
    maps::{NatOutKey, NatOutValue},
    proto::*,
    slow::{SlowMeta, SLOW_ENCAP_FRAGMENT, SLOW_META_LEN, SLOW_TTL_EXPIRED, SLOW_V4_FRAGMENT},
    Counter,
};
use log::{debug, warn};

use crate::reasm::{Limits, Outcome, Reassembler};

/// The B4's own IPv4 address (RFC 6333 §5.7, checklist 4).
pub const B4_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 2);
/// The TAP's MAC: locally administered, and its first byte (0x02) can never start
/// [`dslite_common::slow::SLOW_MAGIC`].
pub const TAP_MAC: [u8; 6] = [0x02, 0x64, 0x73, 0x6c, 0x00, 0x01];

/// Which element this slow path serves, with the addresses its relays need.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    B4 { b4: Ipv6Addr, aftr: Ipv6Addr },
    Aftr { aftr: Ipv6Addr },
}

/// Counters the controller keeps, published into the STATS map with the kernel's.
pub struct Stats {
    v: Vec<AtomicU64>,
}

const FIRST: usize = Counter::SlowFramesRead as usize;

impl Stats {
    fn new() -> Stats {
        Stats {
            v: (FIRST..Counter::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }
    fn add(&self, c: Counter, n: u64) {
        if let Some(a) = (c as usize).checked_sub(FIRST).and_then(|i| self.v.get(i)) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn set(&self, c: Counter, n: u64) {
        if let Some(a) = (c as usize).checked_sub(FIRST).and_then(|i| self.v.get(i)) {
            a.store(n, Ordering::Relaxed);
        }
    }
    /// (counter, value) for every controller-side counter.
    pub fn snapshot(&self) -> Vec<(Counter, u64)> {
        self.v
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    Counter::from_index((FIRST + i) as u32),
                    a.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
    /// Copy the kernel's IPv6 reassembly counters for this namespace (/proc/net/snmp6).
    pub fn read_kernel(&self) {
        let Ok(text) = std::fs::read_to_string("/proc/net/snmp6") else {
            return;
        };
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse().ok())) else {
                continue;
            };
            match k {
                "Ip6ReasmOKs" => self.set(Counter::KernelV6ReasmOk, v),
                "Ip6ReasmFails" => self.set(Counter::KernelV6ReasmFailed, v),
                "Ip6ReasmTimeout" => self.set(Counter::KernelV6ReasmTimeout, v),
                _ => {}
            }
        }
    }
}

pub use crate::config::{
    SlowSettings as Settings, DEFAULT_REASSEMBLY_MEMORY, DEFAULT_REASSEMBLY_SECS, DEFAULT_TAP,
};

/// A running slow path: its TAP device and threads. Dropping it stops the threads and
/// removes the TAP.
pub struct SlowPath {
    pub tap_index: u32,
    pub stats: Arc<Stats>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Create the TAP device (down, unconfigured): the caller configures it over netlink.
pub fn create_tap(name: &str) -> Result<(File, u32)> {
    if name.is_empty() || name.len() > 15 {
        bail!("slow path interface name '{name}' must be 1-15 bytes");
    }
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
    };
    let f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Minimal containers may lack the device node of a kernel that has TUN/TAP.
            make_tun_node().context("/dev/net/tun is missing and could not be created")?;
            open()
        }
        r => r,
    }
    .context("opening /dev/net/tun (the slow path needs TUN/TAP)")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        bail!(
            "creating TAP device {name}: {} (is another dslite running in this namespace?)",
            std::io::Error::last_os_error()
        );
    }
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        bail!("TAP device {name} vanished after creation");
    }
    Ok((f, index))
}

/// `mknod /dev/net/tun c 10 200`.
fn make_tun_node() -> Result<()> {
    std::fs::create_dir_all("/dev/net")?;
    let path = std::ffi::CString::new("/dev/net/tun")?;
    // SAFETY: mknod on a NUL-terminated path; major 10, minor 200 is the TUN/TAP device.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 200)) };
    if rc != 0 {
        bail!("mknod: {}", std::io::Error::last_os_error());
    }
    log::info!("created /dev/net/tun (it was missing)");
    Ok(())
}

/// Set the namespace's IPv6 reassembly bounds (RFC 6333 §6.3: reassembly is costly, bound it).
pub fn set_kernel_reassembly(s: &Settings) {
    let high = s.reassembly_memory.max(1 << 16);
    for (path, v) in [
        (
            "net/ipv6/ip6frag_time",
            s.reassembly_timeout.as_secs().max(1).to_string(),
        ),
        ("net/ipv6/ip6frag_high_thresh", high.to_string()),
        ("net/ipv6/ip6frag_low_thresh", (high / 4 * 3).to_string()),
    ] {
        // high must stay above low while both change: raise high first, then low.
        if let Err(e) = crate::netlink::ensure_sysctl(path, &v) {
            warn!("could not set {path} = {v}: {e:#}");
        }
    }
}

/// Start the slow path's threads on a configured TAP. An AFTR's relays read its NAT table
/// from the maps pinned under `pin`.
pub fn start(
    tap: File,
    tap_index: u32,
    role: Role,
    s: &Settings,
    pin: &std::path::Path,
) -> Result<SlowPath> {
    let raw = RawSock::open()?;
    let stats = Arc::new(Stats::new());
    let stop = Arc::new(AtomicBool::new(false));
    let nat_out = match role {
        Role::Aftr { .. } => {
            let data = aya::maps::MapData::from_pin(pin.join(dslite_common::maps::NAT_OUT))
                .context("opening pinned NAT_OUT for the slow path")?;
            Some(std::sync::Mutex::new(aya::maps::HashMap::try_from(
                aya::maps::Map::HashMap(data),
            )?))
        }
        Role::B4 { .. } => None,
    };
    let shared = Arc::new(Shared {
        tap,
        raw,
        stats: stats.clone(),
        role: std::sync::Mutex::new(role),
        b4_prefixes: std::sync::Mutex::new(Vec::new()),
        nat_out,
    });
    let limits = Limits {
        max_chains: Settings::chains_for(s.reassembly_memory) as usize,
        max_bytes: s.reassembly_memory as usize,
        timeout_ns: s.reassembly_timeout.as_nanos() as u64,
    };
    let mut threads = Vec::new();
    {
        let (sh, stop) = (shared.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("slow-tap".into())
                .spawn(move || tap_loop(&sh, &stop, limits))?,
        );
    }
    {
        let (sh, stop) = (shared.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("slow-raw".into())
                .spawn(move || raw_loop(&sh, &stop))?,
        );
    }
    Ok(SlowPath {
        tap_index,
        stats,
        shared,
        stop,
        threads,
    })
}

struct Shared {
    tap: File,
    raw: RawSock,
    stats: Arc<Stats>,
    /// Changes when a B4 follows a new WAN address or AFTR.
    role: std::sync::Mutex<Role>,
    /// AFTR: the B4 prefixes allowed to open softwires (network, length); changes on reload.
    b4_prefixes: std::sync::Mutex<Vec<([u8; 16], u8)>>,
    /// AFTR: the NAT table, to check that a relayed error quotes a live mapping.
    nat_out:
        Option<std::sync::Mutex<aya::maps::HashMap<aya::maps::MapData, NatOutKey, NatOutValue>>>,
}

impl SlowPath {
    /// The element's addresses changed (B4: new WAN address or AFTR).
    pub fn set_role(&self, role: Role) {
        if let Ok(mut r) = self.shared.role.lock() {
            *r = role;
        }
    }

    /// AFTR: the allowed B4 prefixes (network, length), at start and after a reload.
    pub fn set_b4_prefixes(&self, prefixes: Vec<([u8; 16], u8)>) {
        if let Ok(mut p) = self.shared.b4_prefixes.lock() {
            *p = prefixes;
        }
    }
}

/// True when `addr` is in one of `prefixes` (network, length).
fn in_prefixes(addr: &[u8; 16], prefixes: &[([u8; 16], u8)]) -> bool {
    let a = u128::from_be_bytes(*addr);
    prefixes.iter().any(|(net, len)| {
        let mask = if *len == 0 {
            0
        } else {
            u128::MAX << (128 - (*len).min(128) as u32)
        };
        a & mask == u128::from_be_bytes(*net) & mask
    })
}

impl Shared {
    fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A softwire packet the kernel delivered to the raw socket (reassembled) goes back into
    /// the TAP only when it is one the dataplane serves: to the B4's softwire address from
    /// its AFTR, or to the AFTR's address from an allowed B4. Anything else (another local
    /// address, another source) would only come round again: it is dropped, counted.
    fn may_write_back(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        match self.role() {
            Role::B4 { b4, aftr } => *dst == b4.octets() && *src == aftr.octets(),
            Role::Aftr { aftr } => {
                *dst == aftr.octets()
                    && in_prefixes(
                        src,
                        &self.b4_prefixes.lock().unwrap_or_else(|e| e.into_inner()),
                    )
            }
        }
    }

    /// AFTR: a mapping for `key` exists (a relayed error must quote live state).
    fn has_mapping(&self, key: &NatOutKey) -> bool {
        match &self.nat_out {
            Some(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key, 0)
                .is_ok(),
            None => false,
        }
    }
}

impl Shared {
    /// Write one frame back into the TAP, where the XDP program runs on it.
    fn write_back(&self, frame: &[u8]) -> bool {
        // A TAP takes one frame per write, whole or not at all.
        match (&self.tap).write(frame) {
            Ok(n) if n == frame.len() => true,
            Ok(n) => {
                self.stats.inc(Counter::SlowSendErrors);
                debug!("the TAP took {n} of {} bytes", frame.len());
                false
            }
            Err(e) => {
                self.stats.inc(Counter::SlowSendErrors);
                debug!("writing {} bytes to the TAP: {e}", frame.len());
                false
            }
        }
    }
}

/// Wait up to 200 ms for `fd` to have `events`; returns the events seen.
fn wait(fd: i32, events: i16) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 200) };
    if n > 0 {
        p.revents
    } else {
        0
    }
}

fn tap_loop(sh: &Shared, stop: &AtomicBool, limits: Limits) {
    let mut reasm = Reassembler::new(limits);
    let mut budget = RelayBudget::default();
    let mut buf = vec![0u8; 1 << 17];
    let fd = sh.tap.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let now = crate::sweep::monotonic_ns();
        let expired = reasm.expire(now);
        sh.stats.add(Counter::SlowV4ReasmTimeout, expired as u64);
        sh.stats
            .add(Counter::SlowV4ReasmDropped, reasm.take_evicted() as u64);
        if wait(fd, libc::POLLIN) & libc::POLLIN == 0 {
            continue;
        }
        let n = match (&sh.tap).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("slow path: reading the TAP failed ({e}); stopping it");
                return;
            }
        };
        sh.stats.inc(Counter::SlowFramesRead);
        handle_tap_frame(sh, &mut reasm, &mut budget, &buf[..n], now);
    }
}

fn handle_tap_frame(
    sh: &Shared,
    reasm: &mut Reassembler,
    budget: &mut RelayBudget,
    frame: &[u8],
    now: u64,
) {
    let Some(meta) = SlowMeta::parse(frame) else {
        // Sent by the kernel itself: on a B4, the router's own IPv4 (192.0.0.2) routed into
        // the softwire. Anything else (IPv6 neighbour discovery on the TAP) is not ours.
        let own_v4 = matches!(sh.role(), Role::B4 { .. })
            && ethertype(frame) == Some(ETH_P_IP)
            && frame.get(ETH_HLEN + 12..ETH_HLEN + 16) == Some(&B4_V4.octets()[..]);
        if !own_v4 {
            sh.stats.inc(Counter::SlowForeignDropped);
        } else if sh.write_back(frame) {
            sh.stats.inc(Counter::SlowOwnV4Packets);
        }
        return;
    };
    let inner = &frame[SLOW_META_LEN..];
    let ok = match meta.reason {
        SLOW_ENCAP_FRAGMENT => send_fragmented(sh, inner, meta.mtu),
        SLOW_V4_FRAGMENT => reassemble(sh, reasm, inner, now),
        SLOW_TTL_EXPIRED => time_exceeded(sh, budget, inner),
        _ => false,
    };
    if !ok {
        sh.stats.inc(Counter::SlowBadFrames);
    }
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?))
}

/// The fixed IPv6 header of a frame (Ethernet first): (tclass, hop limit, src, dst, payload
/// offset, payload length), for the plain headers XDP writes.
struct V6 {
    tclass: u8,
    hop_limit: u8,
    next: u8,
    src: [u8; 16],
    dst: [u8; 16],
    payload: std::ops::Range<usize>,
}

fn parse_v6(frame: &[u8]) -> Option<V6> {
    if ethertype(frame)? != ETH_P_IPV6 {
        return None;
    }
    let h = frame.get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)?;
    let start = ETH_HLEN + IPV6_HLEN;
    let end = start + u16::from_be_bytes([h[4], h[5]]) as usize;
    if h[0] >> 4 != 6 || end > frame.len() {
        return None;
    }
    Some(V6 {
        tclass: (h[0] << 4) | (h[1] >> 4),
        hop_limit: h[7],
        next: h[6],
        src: h[8..24].try_into().ok()?,
        dst: h[24..40].try_into().ok()?,
        payload: start..end,
    })
}

/// An encapsulated packet over the MTU: let the kernel send its IPv4 payload as IPv6
/// fragments of at most `mtu` bytes.
fn send_fragmented(sh: &Shared, frame: &[u8], mtu: u16) -> bool {
    let Some(v6) = parse_v6(frame) else {
        return false;
    };
    if v6.next != IPPROTO_IPIP {
        return false;
    }
    match sh.raw.send(
        &frame[v6.payload],
        &v6.src,
        &v6.dst,
        v6.tclass,
        v6.hop_limit,
        mtu,
    ) {
        Ok(()) => sh.stats.inc(Counter::SlowEncapSent),
        Err(e) => {
            sh.stats.inc(Counter::SlowSendErrors);
            debug!("slow path: sending a fragmented softwire packet: {e}");
        }
    }
    true
}

/// An IPv4 fragment for the NAT: hold it until its datagram is whole, then write the whole
/// datagram back (inside its softwire's IPv6 header if it came from a B4).
fn reassemble(sh: &Shared, reasm: &mut Reassembler, frame: &[u8], now: u64) -> bool {
    let (peer, v6, v4) = match ethertype(frame) {
        Some(ETH_P_IP) => ([0u8; 16], None, &frame[ETH_HLEN..]),
        Some(ETH_P_IPV6) => {
            let Some(v6) = parse_v6(frame) else {
                return false;
            };
            // XDP accepted this softwire packet (extension headers included): find the
            // IPv4 packet after any hop-by-hop/destination options.
            let Some(off) = skip_options(frame, v6.payload.start, v6.next) else {
                return false;
            };
            (v6.src, Some(v6), &frame[off..])
        }
        _ => return false,
    };
    match reasm.add(peer, v4, now) {
        Outcome::Pending => {}
        Outcome::Refused(why) => {
            debug!("slow path: IPv4 fragment refused: {why:?}");
            sh.stats.inc(Counter::SlowV4ReasmDropped);
        }
        Outcome::Complete(d) => {
            let out = match v6 {
                Some(v6) => softwire_frame(v6.tclass, v6.hop_limit, &v6.src, &v6.dst, &d),
                None => ipv4_frame(&d),
            };
            if sh.write_back(&out) {
                sh.stats.inc(Counter::SlowV4Reassembled);
            }
        }
    }
    true
}

/// B4: a LAN packet whose TTL ran out here gets a Time Exceeded from 192.0.0.2 (RFC 792;
/// the B4 is a router hop, checklist 9), sent as if it came down the softwire so XDP
/// delivers it to the LAN like any packet from the AFTR. Rate limited with the relays.
fn time_exceeded(sh: &Shared, budget: &mut RelayBudget, frame: &[u8]) -> bool {
    let Role::B4 { b4, aftr } = sh.role() else {
        return false;
    };
    let Some(ip) = frame.get(ETH_HLEN..) else {
        return false;
    };
    let hlen = ip.first().map_or(0, |b| ((b & 0x0f) as usize) * 4);
    if hlen < IPV4_MIN_HLEN || ip.len() < hlen + 8 {
        return false;
    }
    if !budget.take(RELAY_PER_SEC) {
        return true;
    }
    let src: [u8; 4] = ip[12..16].try_into().unwrap_or([0; 4]);
    let icmp = icmp4_error(
        B4_V4.octets(),
        src,
        ICMP_TIME_EXCEEDED,
        0,
        0,
        &ip[..hlen + 8],
    );
    let out = softwire_frame(0, DEFAULT_HOP_LIMIT, &aftr.octets(), &b4.octets(), &icmp);
    if sh.write_back(&out) {
        sh.stats.inc(Counter::SlowTimeExceededSent);
    }
    true
}

/// Offset of the IPv4 header after hop-by-hop/destination options starting at `off`.
fn skip_options(frame: &[u8], mut off: usize, mut next: u8) -> Option<usize> {
    for _ in 0..MAX_EXT_HEADERS {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_DSTOPTS {
            break;
        }
        let h = frame.get(off..off + 2)?;
        next = h[0];
        off += (h[1] as usize + 1) * 8;
    }
    (next == IPPROTO_IPIP && off < frame.len()).then_some(off)
}

/// Ethernet (to and from the TAP's MAC) + `payload`.
fn ethernet(ty: u16, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + payload_len);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&ty.to_be_bytes());
    f
}

fn ipv4_frame(pkt: &[u8]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IP, pkt.len());
    f.extend_from_slice(pkt);
    f
}

/// A softwire packet as a frame: Ethernet + IPv6 (next header 4) + the IPv4 packet.
pub fn softwire_frame(tclass: u8, hop: u8, src: &[u8; 16], dst: &[u8; 16], v4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV6, v4.len());
    let mut h = [0u8; IPV6_HLEN];
    write_softwire_ipv6_header(&mut h, tclass, v4.len() as u16, hop, src, dst);
    f.extend_from_slice(&h);
    f.extend_from_slice(v4);
    f
}

/// Relayed ICMP errors per second: spoofed ICMPv6 must not turn into a flood.
pub const RELAY_PER_SEC: u32 = 100;

/// A token bucket refilled once a second.
#[derive(Default)]
struct RelayBudget {
    second: u64,
    left: u32,
}

impl RelayBudget {
    fn take(&mut self, per_sec: u32) -> bool {
        let now = crate::sweep::monotonic_ns() / 1_000_000_000;
        if now != self.second {
            self.second = now;
            self.left = per_sec;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

fn raw_loop(sh: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 17];
    let mut budget = RelayBudgets::default();
    let fd = sh.raw.fd.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let ev = wait(fd, libc::POLLIN);
        if ev & libc::POLLERR != 0 {
            while let Some(e) = sh.raw.recv_error(&mut buf) {
                relay_icmp6(sh, &mut budget, &e, &buf[..e.len]);
            }
        }
        if ev & libc::POLLIN == 0 {
            continue;
        }
        while let Some(r) = sh.raw.recv(&mut buf) {
            // A softwire packet the kernel reassembled (XDP passed its fragments up).
            if !sh.may_write_back(&r.src, &r.dst) {
                sh.stats.inc(Counter::SlowForeignDropped);
                continue;
            }
            let out = softwire_frame(r.tclass, r.hop_limit, &r.src, &r.dst, &buf[..r.len]);
            if sh.write_back(&out) {
                sh.stats.inc(Counter::SlowV6Reassembled);
            }
        }
    }
}

/// An ICMPv6 error about a softwire packet we sent, with the start of that packet's IPv4
/// payload (`quoted`): tell the inner source (RFC 2473 §8, checklist 42).
fn relay_icmp6(sh: &Shared, budget: &mut RelayBudgets, e: &IcmpErr, quoted: &[u8]) {
    let Some((ty, code, mtu)) = icmp4_for_icmp6(e.icmp_type, e.icmp_code, e.info, quoted) else {
        return;
    };
    // An error about a later fragment quotes the middle of the IPv4 packet: only a quote
    // that starts with a valid IPv4 header (checksum included) is relayed.
    let hlen = quoted.first().map_or(0, |b| ((b & 0x0f) as usize) * 4);
    let valid = quoted.len() >= hlen + 8
        && hlen >= IPV4_MIN_HLEN
        && quoted[0] >> 4 == 4
        && csum::checksum(&quoted[..hlen]) == 0;
    if !valid || !quotes_live_state(sh, e, quoted, hlen) || !budget.take(&e.offender) {
        sh.stats.inc(Counter::SlowIcmp6Ignored);
        return;
    }
    let quote = &quoted[..hlen + 8];
    let (inner_src, inner_dst): ([u8; 4], [u8; 4]) =
        match (quoted[12..16].try_into(), quoted[16..20].try_into()) {
            (Ok(s), Ok(d)) => (s, d),
            _ => return,
        };
    let frame = match sh.role() {
        // The B4 sent host -> server; the host hears it from the B4's 192.0.0.2, delivered by
        // XDP like any packet from the AFTR.
        Role::B4 { b4, aftr } => {
            if e.peer != aftr.octets() {
                return;
            }
            let icmp = icmp4_error(B4_V4.octets(), inner_src, ty, code, mtu, quote);
            softwire_frame(0, DEFAULT_HOP_LIMIT, &aftr.octets(), &b4.octets(), &icmp)
        }
        // The AFTR sent server -> host (already translated back): as if the host itself
        // answered, up its softwire; XDP translates it like any host's ICMP error, so the
        // server hears it from the subscriber's public address.
        Role::Aftr { aftr } => {
            let icmp = icmp4_error(inner_dst, inner_src, ty, code, mtu, quote);
            softwire_frame(0, DEFAULT_HOP_LIMIT, &e.peer, &aftr.octets(), &icmp)
        }
    };
    if sh.write_back(&frame) {
        sh.stats.inc(Counter::SlowIcmp6Relayed);
    }
}

/// Relayed errors need a quote that matches live state, so an outsider cannot make the
/// element speak to hosts about flows that do not exist (RFC 2473 §8 relays what concerns a
/// tunnelled packet). B4: the error is about a packet to its AFTR, quoting a LAN host's packet
/// (not the B4's own 192.0.0.2 nor a special address). AFTR: the quoted packet (server to
/// host, already translated back) belongs to a mapping of that B4.
fn quotes_live_state(sh: &Shared, e: &IcmpErr, quoted: &[u8], hlen: usize) -> bool {
    let (Some(src), Some(dst)) = (quoted.get(12..16), quoted.get(16..20)) else {
        return false;
    };
    match sh.role() {
        Role::B4 { aftr, .. } => {
            let src = Ipv4Addr::new(src[0], src[1], src[2], src[3]);
            e.peer == aftr.octets()
                && src != B4_V4
                && !src.is_unspecified()
                && !src.is_loopback()
                && !src.is_multicast()
                && !src.is_broadcast()
        }
        Role::Aftr { .. } => {
            let proto = quoted[9];
            let l4 = &quoted[hlen..];
            let port = match proto {
                IPPROTO_TCP | IPPROTO_UDP => [l4[2], l4[3]],
                // A translated echo reply carries the inside identifier.
                IPPROTO_ICMP if l4[0] == ICMP_ECHO_REPLY => [l4[4], l4[5]],
                _ => return false,
            };
            let key = NatOutKey {
                b4: e.peer,
                inside_addr: [dst[0], dst[1], dst[2], dst[3]],
                inside_port: u16::from_ne_bytes(port),
                proto,
                _pad: 0,
            };
            sh.has_mapping(&key)
        }
    }
}

/// Relay budgets: [`RELAY_PER_SEC`] in all, and [`RELAY_PER_SOURCE_PER_SEC`] per sender of
/// the ICMPv6 error, so one spoofing source cannot use up the relay for everyone.
#[derive(Default)]
struct RelayBudgets {
    all: RelayBudget,
    per_source: std::collections::HashMap<[u8; 16], RelayBudget>,
}

/// Relayed errors per second from one ICMPv6 source.
pub const RELAY_PER_SOURCE_PER_SEC: u32 = 10;
/// Sources tracked at once (a flood of sources resets the table rather than growing it).
const RELAY_SOURCES: usize = 4096;

impl RelayBudgets {
    fn take(&mut self, source: &[u8; 16]) -> bool {
        if self.per_source.len() >= RELAY_SOURCES && !self.per_source.contains_key(source) {
            self.per_source.clear();
        }
        let one = self.per_source.entry(*source).or_default();
        one.take(RELAY_PER_SOURCE_PER_SEC) && self.all.take(RELAY_PER_SEC)
    }
}

/// The ICMPv4 error (type, code, next-hop MTU) matching an ICMPv6 error about a softwire
/// packet (RFC 2473 §8.1), or None when nothing is due. A Packet Too Big only matters to a
/// source that set DF: the kernel has already lowered its path MTU, and later packets are
/// sent as IPv6 fragments.
pub fn icmp4_for_icmp6(ty: u8, code: u8, info: u32, quoted: &[u8]) -> Option<(u8, u8, u16)> {
    match ty {
        // Destination unreachable: the host behind the tunnel is unreachable.
        1 => Some((ICMP_DEST_UNREACH, 1, 0)),
        2 => {
            let df = quoted.get(6).is_some_and(|b| b & 0x40 != 0);
            let mtu = info.saturating_sub(IPV6_HLEN as u32).clamp(68, 65535) as u16;
            df.then_some((ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu))
        }
        // Hop limit exceeded in transit, or reassembly time exceeded.
        3 => Some((ICMP_TIME_EXCEEDED, code.min(1), 0)),
        // Parameter problem with the outer header: RFC 2473 §8.1 says host unreachable.
        4 => Some((ICMP_DEST_UNREACH, 1, 0)),
        _ => None,
    }
}

/// An IPv4 ICMP error from `src` to `dst` quoting `quote` (header + 8 bytes).
pub fn icmp4_error(
    src: [u8; 4],
    dst: [u8; 4],
    ty: u8,
    code: u8,
    mtu: u16,
    quote: &[u8],
) -> Vec<u8> {
    let total = IPV4_MIN_HLEN + ICMP_MIN_LEN + quote.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = DEFAULT_HOP_LIMIT;
    p[9] = IPPROTO_ICMP;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    csum::set_ipv4_header_checksum(&mut p);
    let t = IPV4_MIN_HLEN;
    p[t] = ty;
    p[t + 1] = code;
    p[t + 6..t + 8].copy_from_slice(&mtu.to_be_bytes());
    p[t + 8..].copy_from_slice(quote);
    let s = csum::checksum(&p[t..]);
    p[t + 2..t + 4].copy_from_slice(&s.to_ne_bytes());
    p
}

/// The raw IPv6 socket of protocol 4 (IPv4-in-IPv6).
struct RawSock {
    fd: OwnedFd,
    /// The fragment size last set with IPV6_MTU (only the TAP thread sends).
    mtu: AtomicU64,
}

struct Received {
    len: usize,
    src: [u8; 16],
    dst: [u8; 16],
    tclass: u8,
    hop_limit: u8,
}

struct IcmpErr {
    len: usize,
    /// Destination of the packet the error is about.
    peer: [u8; 16],
    /// Who sent the error (SO_EE_OFFENDER), for the per-source relay budget.
    offender: [u8; 16],
    icmp_type: u8,
    icmp_code: u8,
    info: u32,
}

fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const SO_EE_ORIGIN_ICMP6: u8 = 3;

impl RawSock {
    fn open() -> Result<RawSock> {
        // SAFETY: plain socket call; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 4) };
        if fd < 0 {
            bail!(
                "opening a raw IPv6 socket of protocol 4: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        for (name, what) in [
            (libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"),
            (libc::IPV6_RECVTCLASS, "IPV6_RECVTCLASS"),
            (libc::IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT"),
            (libc::IPV6_RECVERR, "IPV6_RECVERR"),
            // Send from the softwire address even when it is not configured locally.
            (libc::IPV6_TRANSPARENT, "IPV6_TRANSPARENT"),
        ] {
            setsockopt_int(raw, libc::IPPROTO_IPV6, name, 1)
                .with_context(|| format!("setting {what} on the raw socket"))?;
        }
        // Room for bursts of reassembled packets; the kernel counts what overflows.
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
        Ok(RawSock {
            fd,
            mtu: AtomicU64::new(0),
        })
    }

    fn send(
        &self,
        payload: &[u8],
        src: &[u8; 16],
        dst: &[u8; 16],
        tclass: u8,
        hop: u8,
        mtu: u16,
    ) -> std::io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let mtu = (mtu as u64).max(1280);
        if self.mtu.swap(mtu, Ordering::Relaxed) != mtu {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU, mtu as i32)?;
        }
        // SAFETY: zeroed sockaddr_in6 is valid.
        let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        to.sin6_family = libc::AF_INET6 as u16;
        to.sin6_addr.s6_addr = *dst;
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr { s6_addr: *src },
            ipi6_ifindex: 0,
        };
        let mut cbuf = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        // SAFETY: zeroed msghdr is valid; every pointer below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut to as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let info_bytes: [u8; std::mem::size_of::<libc::in6_pktinfo>()] =
            // SAFETY: in6_pktinfo is plain bytes (an address and an int).
            unsafe { std::mem::transmute(info) };
        let mut used = 0usize;
        for (ty, data) in [
            (libc::IPV6_PKTINFO, &info_bytes[..]),
            (libc::IPV6_TCLASS, &(tclass as i32).to_ne_bytes()[..]),
            (libc::IPV6_HOPLIMIT, &(hop as i32).to_ne_bytes()[..]),
        ] {
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
            let (space, clen) = unsafe {
                (
                    libc::CMSG_SPACE(data.len() as u32) as usize,
                    libc::CMSG_LEN(data.len() as u32) as usize,
                )
            };
            assert!(
                used + space <= std::mem::size_of_val(&cbuf),
                "control buffer size"
            );
            // SAFETY: `used + space` is within `cbuf` (asserted); cmsg headers are aligned
            // because `cbuf` is u64-aligned and CMSG_SPACE keeps that alignment.
            unsafe {
                let c = (cbuf.as_mut_ptr() as *mut u8).add(used) as *mut libc::cmsghdr;
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = clen as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
            }
            used += space;
        }
        msg.msg_controllen = used as _;
        // SAFETY: `msg` is fully initialised above.
        let n = unsafe { libc::sendmsg(fd, &msg, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One `recvmsg(flags)` without blocking: the byte count and the address in `msg_name`,
    /// calling `on_cmsg(type, data)` for each IPv6 control message.
    fn recv_with(
        &self,
        buf: &mut [u8],
        flags: i32,
        mut on_cmsg: impl FnMut(i32, *const u8),
    ) -> Option<(usize, [u8; 16])> {
        // SAFETY: zeroed sockaddr_in6 / msghdr are valid.
        let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut cbuf = [0u64; 32];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: `msg` points at buffers we own.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags | libc::MSG_DONTWAIT) };
        if n < 0 || msg.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        // SAFETY: walking the control messages the kernel wrote into `cbuf`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 {
                    on_cmsg((*c).cmsg_type, libc::CMSG_DATA(c));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some((n as usize, name.sin6_addr.s6_addr))
    }

    /// One packet the kernel delivered (already reassembled), without blocking.
    fn recv(&self, buf: &mut [u8]) -> Option<Received> {
        let (mut dst, mut tclass, mut hop_limit) = ([0u8; 16], 0u8, DEFAULT_HOP_LIMIT);
        let (n, src) = self.recv_with(buf, 0, |ty, d| {
            // SAFETY: the kernel wrote this control message's data at `d`.
            unsafe {
                match ty {
                    libc::IPV6_PKTINFO => {
                        let info: libc::in6_pktinfo = std::ptr::read_unaligned(d.cast());
                        dst = info.ipi6_addr.s6_addr;
                    }
                    libc::IPV6_TCLASS => tclass = std::ptr::read_unaligned(d.cast::<i32>()) as u8,
                    libc::IPV6_HOPLIMIT => {
                        hop_limit = std::ptr::read_unaligned(d.cast::<i32>()) as u8
                    }
                    _ => {}
                }
            }
        })?;
        (n > 0).then_some(Received {
            len: n,
            src,
            dst,
            tclass,
            hop_limit,
        })
    }

    /// One ICMPv6 error from the socket's error queue, without blocking.
    fn recv_error(&self, buf: &mut [u8]) -> Option<IcmpErr> {
        loop {
            let mut ee: Option<libc::sock_extended_err> = None;
            let mut offender = [0u8; 16];
            let (n, peer) = self.recv_with(buf, libc::MSG_ERRQUEUE, |ty, d| {
                if ty == libc::IPV6_RECVERR {
                    // SAFETY: the kernel wrote a sock_extended_err at `d`, followed by the
                    // offender's sockaddr_in6 (SO_EE_OFFENDER) for ICMPv6 errors.
                    unsafe {
                        ee = Some(std::ptr::read_unaligned(d.cast()));
                        let off = d.add(std::mem::size_of::<libc::sock_extended_err>());
                        let sa: libc::sockaddr_in6 = std::ptr::read_unaligned(off.cast());
                        offender = sa.sin6_addr.s6_addr;
                    }
                }
            })?;
            // Not an ICMPv6 error (a local one): next.
            if let Some(e) = ee.filter(|e| e.ee_origin == SO_EE_ORIGIN_ICMP6) {
                return Some(IcmpErr {
                    len: n,
                    peer,
                    offender,
                    icmp_type: e.ee_type,
                    icmp_code: e.ee_code,
                    info: e.ee_info,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp6_errors_map_to_icmp4() {
        let mut df = [0u8; 28];
        df[0] = 0x45;
        df[6] = 0x40;
        let mut no_df = df;
        no_df[6] = 0;
        assert_eq!(icmp4_for_icmp6(3, 0, 0, &df), Some((11, 0, 0)));
        assert_eq!(icmp4_for_icmp6(1, 3, 0, &df), Some((3, 1, 0)));
        assert_eq!(icmp4_for_icmp6(2, 0, 1280, &df), Some((3, 4, 1240)));
        assert_eq!(icmp4_for_icmp6(2, 0, 1280, &no_df), None);
        assert_eq!(icmp4_for_icmp6(4, 0, 0, &df), Some((3, 1, 0)));
        assert_eq!(icmp4_for_icmp6(137, 0, 0, &df), None);
    }

    #[test]
    fn icmp4_error_checksums_hold() {
        let quote: Vec<u8> = (0..28).collect();
        let p = icmp4_error([192, 0, 0, 2], [192, 168, 1, 10], 3, 4, 1240, &quote);
        assert_eq!(p.len(), 20 + 8 + 28);
        assert_eq!(csum::checksum(&p[..20]), 0);
        assert_eq!(csum::checksum(&p[20..]), 0);
        assert_eq!(&p[26..28], &1240u16.to_be_bytes());
        assert_eq!(&p[28..], &quote[..]);
    }

    #[test]
    fn softwire_frames_parse_back() {
        let v4 = [0x45u8; 30];
        let f = softwire_frame(0xb8, 63, &[1; 16], &[2; 16], &v4);
        let v6 = parse_v6(&f).unwrap();
        assert_eq!((v6.tclass, v6.hop_limit, v6.next), (0xb8, 63, IPPROTO_IPIP));
        assert_eq!((v6.src, v6.dst), ([1; 16], [2; 16]));
        assert_eq!(&f[v6.payload], &v4[..]);
        assert_eq!(
            skip_options(&f, ETH_HLEN + IPV6_HLEN, IPPROTO_IPIP),
            Some(54)
        );
    }
}
