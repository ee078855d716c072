//! The slow path: what XDP cannot do, done by the controller with the kernel's help, on the
//! dataplane's own state (docs/design.md, "The slow path").
//!
//! - XDP hands frames over by redirecting them into the controller's TAP device with a
//!   [`SlowMeta`](dslite_common::slow::SlowMeta) in front (`dslite_common::slow`). The
//!   TAP's queue bounds the hand-over.
//! - Oversized softwire packets (RFC 6333 §5.3, §6.3) are sent through a raw IPv6 socket
//!   of protocol 4: the kernel builds the outer header and fragments it at the MTU XDP found.
//! - Softwire packets that arrive as IPv6 fragments (RFC 6333 §5.3, §6.3) are passed to the
//!   kernel by XDP; the kernel reassembles them (its memory limit and timeout set from our
//!   options) and delivers them to the same raw socket, and we write them back into the TAP,
//!   whose XDP program (the same one) decapsulates, translates and forwards them.
//! - IPv4 fragments bound for the NAT (RFC 4787 REQ-14) are reassembled here ([`reasm`])
//!   and written back whole.
//! - ICMPv6 errors about softwire packets reach the raw socket's error queue. A Packet Too
//!   Big lowers the kernel's path MTU toward that peer, which the dataplane's FIB lookups
//!   then see (we invalidate the next-hop cache so they happen): from then on the outer
//!   IPv6 packet is fragmented and the IPv4 host hears nothing (RFC 6333 §5.3, §6.3). Other
//!   errors are relayed to the inner source as ICMPv4 errors, written back into the TAP as
//!   softwire packets so the same dataplane code delivers (and, on the AFTR, translates)
//!   them (RFC 2473 §8).
//! - B4: the router's own IPv4 (from 192.0.0.2, RFC 6333 §5.7) is routed into the TAP by the
//!   kernel; we write it back so XDP encapsulates it like LAN traffic.
//!
//! Here: the settings, the counters, starting and stopping the two threads (one reads the
//! TAP, one the raw socket). [`tap`]: the TAP and the frames it delivers; [`raw`]: the raw
//! socket and which reassembled packets go back; [`relay`]: ICMP relays and their budgets;
//! [`frames`]: Ethernet/IPv6 framing; [`reasm`]: IPv4 reassembly.

mod frames;
mod raw;
pub mod reasm;
mod relay;
mod tap;

use std::{
    fs::File,
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Result;
use dslite_common::{
    maps::{NatOutKey, NatOutValue},
    Counter,
};
use log::warn;

use raw::RawSock;
use reasm::{Limits, Reassembler};
use relay::{relay_icmp6, RelayBudget, RelayBudgets};
use tap::handle_tap_frame;

pub use frames::softwire_frame;
pub use raw::set_kernel_reassembly;
pub use relay::{
    icmp4_error, icmp4_for_icmp6, refusal_packet, RELAY_PER_SEC, RELAY_PER_SOURCE_PER_SEC,
};
pub use tap::create_tap;

/// The B4's own IPv4 address (RFC 6333 §5.7).
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
            use anyhow::Context as _;
            let data = crate::dataplane::Pinned::new(pin)
                .data(dslite_common::maps::NAT_OUT)
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
        pin: pin.to_path_buf(),
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
    /// The pinned maps: a Packet Too Big invalidates the next-hop cache (NH_GEN).
    pin: std::path::PathBuf,
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

impl Shared {
    fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(|e| e.into_inner())
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
        let now = crate::clock::monotonic_ns();
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
