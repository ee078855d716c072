//! Expiry, done by the controller: a sweep every second reclaims idle mappings, releases
//! port blocks whose last mapping is gone into a hold-down, and frees held blocks after it.
//!
//! Why the controller and not `bpf_timer`: a timer per mapping costs 48+ bytes of map
//! memory and timer work per flow, while a sweep reads the tables in bulk off the fast path
//! and can emit release events in order for the NAT log. The fast path never waits on it:
//! XDP only ever inserts; the sweep only ever deletes entries it has found idle.

use std::{collections::HashMap as StdMap, path::Path, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use dslite_common::{
    maps::{
        self as m, AftrConfig, BlockKey, BlockValue, NatInKey, NatInValue, NatOutKey, NatOutValue,
        PeerKey, Slot, SlotKey, SoftwireState, EVENT_BLOCK_RELEASED, EVENT_MAPPING_DELETED,
        EVENT_QUOTA_EXCEEDED,
    },
    nat::{block_first_port, block_of, tcp_established},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{config::Timeouts, natlog::NatRecord};

/// Most mappings deleted per sweep: bounds one sweep's work (the rest go next second).
pub const MAX_EXPIRE_PER_SWEEP: usize = 1 << 16;
/// A block younger than this is never released: its first mapping may still be on its way
/// into NAT_OUT on another CPU.
const BLOCK_GRACE_NS: u64 = 2_000_000_000;

/// What one sweep did, and what it saw (for the NAT log and the metrics).
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    /// NAT log records: blocks released; mappings deleted (with `log_sessions`); softwires
    /// that had new mappings refused since the last sweep (quota or exhaustion).
    pub records: Vec<NatRecord>,
    pub blocks_released: usize,
    pub blocks_freed: usize,
    /// Live mappings by protocol: UDP, TCP, ICMP, other.
    pub mappings: [u64; 4],
    /// Softwires holding at least one mapping.
    pub softwires: usize,
    /// Blocks in use and held down, per public address.
    pub blocks_in_use: std::collections::BTreeMap<[u8; 4], u64>,
    pub blocks_held: std::collections::BTreeMap<[u8; 4], u64>,
    pub micros: u128,
}

/// Handles on the AFTR's pinned tables.
pub struct Sweeper {
    nat_out: HashMap<MapData, NatOutKey, NatOutValue>,
    /// NAT_OUT again, for batch scans (its own descriptor).
    nat_out_scan: MapData,
    nat_in: HashMap<MapData, NatInKey, NatInValue>,
    blocks: HashMap<MapData, BlockKey, BlockValue>,
    slots: HashMap<MapData, SlotKey, Slot>,
    softwires: HashMap<MapData, [u8; 16], SoftwireState>,
    peers: HashMap<MapData, PeerKey, u64>,
    pub timeouts: Timeouts,
    cfg: AftrConfig,
    /// Log every mapping deleted (`--log-sessions`).
    pub log_sessions: bool,
    /// Each softwire's refusal count at the last sweep.
    refused: StdMap<[u8; 16], u64>,
}

/// Every (key, value) of the hash map `fd`, read with BPF_MAP_LOOKUP_BATCH: one system call
/// per few thousand entries instead of two per entry (the difference between 0.3 s and 3 s
/// for a million mappings, docs/benchmarks.md).
pub fn scan_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: std::os::fd::RawFd,
    mut f: impl FnMut(K, V),
) -> Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    /// `union bpf_attr`, the batch member.
    #[repr(C)]
    #[derive(Default)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let mut chunk = 4096usize;
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        keys.resize_with(chunk, K::default);
        values.resize_with(chunk, V::default);
        let mut attr = Batch {
            in_batch: if first {
                0
            } else {
                &token_in as *const u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: a BPF_MAP_LOOKUP_BATCH with buffers for `chunk` keys and values, and the
        // batch tokens, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut Batch,
                std::mem::size_of::<Batch>(),
            )
        };
        let err = std::io::Error::last_os_error();
        for i in 0..(attr.count as usize).min(chunk) {
            f(keys[i], values[i]);
        }
        if rc < 0 {
            match err.raw_os_error() {
                Some(libc::ENOENT) => return Ok(()),
                // A bucket holds more entries than the chunk: grow it and retry this batch.
                Some(libc::ENOSPC) if chunk < 1 << 20 => {
                    chunk *= 2;
                    continue;
                }
                _ => return Err(anyhow::anyhow!("BPF_MAP_LOOKUP_BATCH: {err}")),
            }
        }
        token_in = token_out;
        first = false;
    }
}

fn open_hash<K: aya::Pod, V: aya::Pod>(pin: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let data =
        MapData::from_pin(pin.join(name)).with_context(|| format!("opening pinned {name}"))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

/// Idle timeout (ns) of a mapping, by protocol and TCP state.
pub fn timeout_ns(t: &Timeouts, proto: u8, tcp_state: u8) -> u64 {
    let secs = match proto {
        IPPROTO_TCP if tcp_established(tcp_state) => t.tcp_established,
        IPPROTO_TCP => t.tcp_transitory,
        IPPROTO_UDP => t.udp,
        IPPROTO_ICMP => t.icmp,
        _ => t.udp,
    };
    secs.saturating_mul(1_000_000_000)
}

/// Index into `SweepReport::mappings`.
fn proto_slot(proto: u8) -> usize {
    match proto {
        IPPROTO_UDP => 0,
        IPPROTO_TCP => 1,
        IPPROTO_ICMP => 2,
        _ => 3,
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Sweeper {
    pub fn open(pin: &Path, cfg: AftrConfig, timeouts: Timeouts) -> Result<Sweeper> {
        Ok(Sweeper {
            nat_out: open_hash(pin, m::NAT_OUT)?,
            nat_out_scan: MapData::from_pin(pin.join(m::NAT_OUT))
                .context("opening pinned NAT_OUT")?,
            nat_in: open_hash(pin, m::NAT_IN)?,
            blocks: open_hash(pin, m::BLOCKS)?,
            slots: open_hash(pin, m::SW_BLOCKS)?,
            softwires: open_hash(pin, m::SOFTWIRES)?,
            peers: open_hash(pin, m::PEERS)?,
            timeouts,
            cfg,
            log_sessions: false,
            refused: StdMap::new(),
        })
    }

    /// A reloaded configuration (filtering modes; the block layout never changes live).
    pub fn set_config(&mut self, cfg: AftrConfig) {
        self.cfg = cfg;
    }

    fn block_key(&self, addr: [u8; 4], port_be: u16) -> Option<BlockKey> {
        let c = &self.cfg;
        block_of(
            u16::from_be(port_be),
            c.port_lo,
            c.block_size,
            c.blocks_per_addr,
        )
        .map(|block| BlockKey {
            addr,
            block,
            _pad: 0,
        })
    }

    /// One pass at time `now` (monotonic ns).
    pub fn sweep(&mut self, now: u64) -> Result<SweepReport> {
        let start = Instant::now();
        let offset = crate::natlog::realtime_offset_ns();
        let record = |kind: u8, b4: [u8; 16], addr: [u8; 4], lo: u16, hi: u16| NatRecord {
            unix_ms: (now as i128 + offset) / 1_000_000,
            kind,
            b4: b4.into(),
            outside: addr.into(),
            port_lo: lo,
            port_hi: hi,
            proto: 0,
            inside: None,
            dst: None,
        };
        let mut r = SweepReport::default();
        let mut live: std::collections::HashSet<BlockKey> = Default::default();
        let mut expired = Vec::new();
        let mut sessions: StdMap<[u8; 16], u64> = StdMap::new();
        let mut all = Vec::new();
        {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let fd = self.nat_out_scan.fd().as_fd().as_raw_fd();
            scan_hash::<NatOutKey, NatOutValue>(fd, |k, v| all.push((k, v)))?;
        }
        for (k, v) in all {
            r.scanned += 1;
            let idle = now.saturating_sub(v.last_seen_ns);
            if idle >= timeout_ns(&self.timeouts, k.proto, v.tcp_state)
                && expired.len() < MAX_EXPIRE_PER_SWEEP
            {
                expired.push((k, v));
            } else {
                *sessions.entry(k.b4).or_default() += 1;
                r.mappings[proto_slot(k.proto)] += 1;
                if let Some(b) = self.block_key(v.outside_addr, v.outside_port) {
                    live.insert(b);
                }
            }
        }
        for (k, v) in expired {
            // Re-read: a packet may have refreshed it since the scan.
            match self.nat_out.get(&k, 0) {
                Ok(cur) if cur.last_seen_ns == v.last_seen_ns => {}
                _ => {
                    *sessions.entry(k.b4).or_default() += 1;
                    r.mappings[proto_slot(k.proto)] += 1;
                    if let Some(b) = self.block_key(v.outside_addr, v.outside_port) {
                        live.insert(b);
                    }
                    continue;
                }
            }
            // NAT_OUT first: from now on a new packet creates a fresh mapping, and the old
            // outside port is released last, so it can never be shared.
            let _ = self.nat_out.remove(&k);
            let kin = k.inbound_key(v.outside_addr, v.outside_port);
            if self.nat_in.get(&kin, 0).ok() == Some(k.inbound_value()) {
                let _ = self.nat_in.remove(&kin);
            }
            r.expired += 1;
            if self.log_sessions {
                let port = u16::from_be(v.outside_port);
                r.records.push(NatRecord {
                    proto: k.proto,
                    inside: Some((k.inside_addr.into(), u16::from_be(k.inside_port))),
                    ..record(EVENT_MAPPING_DELETED, k.b4, v.outside_addr, port, port)
                });
            }
        }

        // Slots by block, to find the slot to free when a block is released.
        let mut slot_of: StdMap<BlockKey, SlotKey> = StdMap::new();
        for e in self.slots.iter() {
            let (k, s) = e?;
            slot_of.insert(
                BlockKey {
                    addr: s.addr,
                    block: s.block,
                    _pad: 0,
                },
                k,
            );
        }
        let hold = self.timeouts.block_hold_down.saturating_mul(1_000_000_000);
        let mut changes = Vec::new();
        for e in self.blocks.iter() {
            let (bk, bv) = e?;
            if bv.released_ns == 0 {
                *r.blocks_in_use.entry(bk.addr).or_default() += 1;
            } else {
                *r.blocks_held.entry(bk.addr).or_default() += 1;
            }
            if bv.released_ns == 0 {
                if !live.contains(&bk) && now.saturating_sub(bv.allocated_ns) > BLOCK_GRACE_NS {
                    changes.push((bk, Some(bv)));
                }
            } else if now.saturating_sub(bv.released_ns) >= hold {
                changes.push((bk, None));
            }
        }
        for (bk, release) in changes {
            match release {
                Some(bv) => {
                    // Stop new mappings going into it, then hold it down (RFC 6888 REQ-8).
                    if let Some(sk) = slot_of.get(&bk) {
                        let _ = self.slots.remove(sk);
                    }
                    self.blocks.insert(
                        bk,
                        BlockValue {
                            released_ns: now,
                            ..bv
                        },
                        0,
                    )?;
                    let first = block_first_port(bk.block, self.cfg.port_lo, self.cfg.block_size);
                    let last = first + (self.cfg.block_size - 1);
                    r.records
                        .push(record(EVENT_BLOCK_RELEASED, bv.b4, bk.addr, first, last));
                    r.blocks_released += 1;
                    *r.blocks_in_use.entry(bk.addr).or_default() -= 1;
                    *r.blocks_held.entry(bk.addr).or_default() += 1;
                }
                None => {
                    let _ = self.blocks.remove(&bk);
                    r.blocks_freed += 1;
                    *r.blocks_held.entry(bk.addr).or_default() -= 1;
                }
            }
        }
        // Recount each softwire's sessions (XDP's increments are not atomic, and expiry
        // happens here); forget softwires with none (their rate bucket starts full again).
        let mut updates = Vec::new();
        let mut refused = StdMap::new();
        for e in self.softwires.iter() {
            let (b4, st) = e?;
            // A softwire refused new mappings since the last sweep: one record per second
            // at most (natEvent 13, quota exceeded; the counters say which limit).
            if st.refused > self.refused.get(&b4).copied().unwrap_or(0) {
                r.records
                    .push(record(EVENT_QUOTA_EXCEEDED, b4, [0; 4], 0, 0));
            }
            refused.insert(b4, st.refused);
            match sessions.get(&b4) {
                None => updates.push((b4, None)),
                Some(&n) if n != st.sessions => {
                    updates.push((b4, Some(SoftwireState { sessions: n, ..st })))
                }
                Some(_) => {}
            }
        }
        self.refused = refused;
        r.softwires = sessions.len();
        for (b4, st) in updates {
            match st {
                None => {
                    let _ = self.softwires.remove(&b4);
                    self.refused.remove(&b4);
                }
                Some(st) => self.softwires.insert(b4, st, 0)?,
            }
        }
        // Filtering entries go with their mapping.
        if self.cfg.filter_modes != 0 {
            let mut gone = Vec::new();
            for e in self.peers.iter() {
                let (pk, _) = e?;
                let kin = NatInKey {
                    outside_addr: pk.outside_addr,
                    outside_port: pk.outside_port,
                    proto: pk.proto,
                    _pad: 0,
                };
                if self.nat_in.get(&kin, 0).is_err() {
                    gone.push(pk);
                }
            }
            for pk in gone {
                let _ = self.peers.remove(&pk);
            }
        }
        r.micros = start.elapsed().as_micros();
        Ok(r)
    }
}

/// What [`Sweeper::reconcile`] did.
#[derive(Clone, Debug, Default)]
pub struct Reconciled {
    pub slots: usize,
    pub mappings: usize,
    pub blocks: usize,
    /// NAT log records: the blocks released, and (with `log_sessions`) the mappings deleted.
    pub records: Vec<NatRecord>,
}

impl Sweeper {
    /// Bring the tables in line with a configuration whose pool or B4 prefixes lost entries
    /// (a `--persist` restart, a reload). What is on a public address no longer in `pool`
    /// goes: its slots first, so XDP puts no new mapping there; then its mappings; then its
    /// blocks are released into the hold-down like any other, logged, so `whois` stays right
    /// and no other subscriber gets those ports at once (RFC 6888 REQ-8). The mappings of a
    /// softwire no longer in `allowed` go too; its emptied blocks are then released by the
    /// next sweep, as any emptied block is. A slot that stays learns its address's index in
    /// the new pool (XDP takes a softwire's next block on the address of its others).
    pub fn reconcile(
        &mut self,
        now: u64,
        pool: &[std::net::Ipv4Addr],
        allowed: &[crate::config::Cidr6],
    ) -> Result<Reconciled> {
        let index_of = |addr: [u8; 4]| pool.iter().position(|a| a.octets() == addr);
        let allowed_b4 = |b4: &[u8; 16]| allowed.iter().any(|p| p.contains(b4));
        let unix_ms = (now as i128 + crate::natlog::realtime_offset_ns()) / 1_000_000;
        let record = |kind: u8, b4: [u8; 16], addr: [u8; 4], lo: u16, hi: u16| NatRecord {
            unix_ms,
            kind,
            b4: b4.into(),
            outside: addr.into(),
            port_lo: lo,
            port_hi: hi,
            proto: 0,
            inside: None,
            dst: None,
        };
        let mut r = Reconciled::default();
        let slots: Vec<(SlotKey, Slot)> = self.slots.iter().collect::<Result<_, _>>()?;
        for (k, s) in slots {
            match index_of(s.addr) {
                Some(i) => {
                    if s.addr_index != i as u32 {
                        let s = Slot {
                            addr_index: i as u32,
                            ..s
                        };
                        self.slots.insert(k, s, 0)?;
                    }
                }
                None => {
                    let _ = self.slots.remove(&k);
                    r.slots += 1;
                }
            }
        }
        let mut all = Vec::new();
        {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let fd = self.nat_out_scan.fd().as_fd().as_raw_fd();
            scan_hash::<NatOutKey, NatOutValue>(fd, |k, v| all.push((k, v)))?;
        }
        for (k, v) in all {
            if allowed_b4(&k.b4) && index_of(v.outside_addr).is_some() {
                continue;
            }
            let _ = self.nat_out.remove(&k);
            let kin = k.inbound_key(v.outside_addr, v.outside_port);
            if self.nat_in.get(&kin, 0).ok() == Some(k.inbound_value()) {
                let _ = self.nat_in.remove(&kin);
            }
            r.mappings += 1;
            if self.log_sessions {
                let port = u16::from_be(v.outside_port);
                r.records.push(NatRecord {
                    proto: k.proto,
                    inside: Some((k.inside_addr.into(), u16::from_be(k.inside_port))),
                    ..record(EVENT_MAPPING_DELETED, k.b4, v.outside_addr, port, port)
                });
            }
        }
        let blocks: Vec<(BlockKey, BlockValue)> = self.blocks.iter().collect::<Result<_, _>>()?;
        for (bk, bv) in blocks {
            if bv.released_ns != 0 || index_of(bk.addr).is_some() {
                continue;
            }
            self.blocks.insert(
                bk,
                BlockValue {
                    released_ns: now,
                    ..bv
                },
                0,
            )?;
            let first = block_first_port(bk.block, self.cfg.port_lo, self.cfg.block_size);
            let last = first + (self.cfg.block_size - 1);
            r.records
                .push(record(EVENT_BLOCK_RELEASED, bv.b4, bk.addr, first, last));
            r.blocks += 1;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dslite_common::nat::{TCP_FIN_IN, TCP_FIN_OUT, TCP_SYN_IN, TCP_SYN_OUT};

    #[test]
    fn timeouts_follow_protocol_and_tcp_state() {
        let t = Timeouts::default();
        let s = 1_000_000_000;
        assert_eq!(timeout_ns(&t, IPPROTO_UDP, 0), 300 * s);
        assert_eq!(timeout_ns(&t, IPPROTO_ICMP, 0), 60 * s);
        assert_eq!(
            timeout_ns(&t, IPPROTO_TCP, TCP_SYN_OUT),
            240 * s,
            "opening is transitory"
        );
        assert_eq!(
            timeout_ns(&t, IPPROTO_TCP, TCP_SYN_OUT | TCP_SYN_IN),
            7440 * s
        );
        assert_eq!(
            timeout_ns(
                &t,
                IPPROTO_TCP,
                TCP_SYN_OUT | TCP_SYN_IN | TCP_FIN_OUT | TCP_FIN_IN
            ),
            240 * s,
            "closed both ways is transitory"
        );
    }
}
