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
        PeerKey, Slot, SlotKey, SoftwireState, EVENT_BLOCK_RELEASED,
    },
    nat::{block_first_port, block_of, tcp_established},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::config::Timeouts;

/// Most mappings deleted per sweep: bounds one sweep's work (the rest go next second).
pub const MAX_EXPIRE_PER_SWEEP: usize = 1 << 16;
/// A block younger than this is never released: its first mapping may still be on its way
/// into NAT_OUT on another CPU.
const BLOCK_GRACE_NS: u64 = 2_000_000_000;

/// A block released by a sweep (for the NAT log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub b4: [u8; 16],
    pub addr: [u8; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub kind: u8,
}

/// What one sweep did.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    pub blocks_released: Vec<Released>,
    pub blocks_freed: usize,
    pub micros: u128,
}

/// Handles on the AFTR's pinned tables.
pub struct Sweeper {
    nat_out: HashMap<MapData, NatOutKey, NatOutValue>,
    nat_in: HashMap<MapData, NatInKey, NatInValue>,
    blocks: HashMap<MapData, BlockKey, BlockValue>,
    slots: HashMap<MapData, SlotKey, Slot>,
    softwires: HashMap<MapData, [u8; 16], SoftwireState>,
    peers: HashMap<MapData, PeerKey, u64>,
    pub timeouts: Timeouts,
    cfg: AftrConfig,
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
            nat_in: open_hash(pin, m::NAT_IN)?,
            blocks: open_hash(pin, m::BLOCKS)?,
            slots: open_hash(pin, m::SW_BLOCKS)?,
            softwires: open_hash(pin, m::SOFTWIRES)?,
            peers: open_hash(pin, m::PEERS)?,
            timeouts,
            cfg,
        })
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
        let mut r = SweepReport::default();
        let mut live: std::collections::HashSet<BlockKey> = Default::default();
        let mut expired = Vec::new();
        let mut sessions: StdMap<[u8; 16], u64> = StdMap::new();
        for e in self.nat_out.iter() {
            let (k, v) = e?;
            r.scanned += 1;
            let idle = now.saturating_sub(v.last_seen_ns);
            if idle >= timeout_ns(&self.timeouts, k.proto, v.tcp_state)
                && expired.len() < MAX_EXPIRE_PER_SWEEP
            {
                expired.push((k, v));
            } else {
                *sessions.entry(k.b4).or_default() += 1;
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
                    r.blocks_released.push(Released {
                        b4: bv.b4,
                        addr: bk.addr,
                        port_lo: first,
                        port_hi: first + (self.cfg.block_size - 1),
                        kind: EVENT_BLOCK_RELEASED,
                    });
                }
                None => {
                    let _ = self.blocks.remove(&bk);
                    r.blocks_freed += 1;
                }
            }
        }
        // Recount each softwire's sessions (XDP's increments are not atomic, and expiry
        // happens here); forget softwires with none (their rate bucket starts full again).
        let mut updates = Vec::new();
        for e in self.softwires.iter() {
            let (b4, st) = e?;
            match sessions.get(&b4) {
                None => updates.push((b4, None)),
                Some(&n) if n != st.sessions => {
                    updates.push((b4, Some(SoftwireState { sessions: n, ..st })))
                }
                Some(_) => {}
            }
        }
        for (b4, st) in updates {
            match st {
                None => {
                    let _ = self.softwires.remove(&b4);
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
