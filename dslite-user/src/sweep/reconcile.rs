//! Bringing the tables in line with a configuration whose pool or B4 prefixes lost entries
//! (a `--persist` start, a reload), and the records of what a stop without `--persist`
//! takes with it. Both read the tables with batch scans ([`crate::dataplane::batch`]).

use std::collections::HashMap as StdMap;

use anyhow::Result;
use dslite_common::maps::{
    BlockKey, BlockValue, NatOutKey, NatOutValue, Slot, SlotKey, EVENT_BLOCK_RELEASED,
    EVENT_MAPPING_DELETED,
};

use aya::maps::IterableMap as _;

use super::{block_event, event, Sweeper};
use crate::{clock::unix_ms, dataplane::batch::scan_map, natlog::NatRecord};

/// What [`Sweeper::reconcile`] did.
#[derive(Clone, Debug, Default)]
pub struct Reconciled {
    /// Slots deleted (their address left the pool).
    pub slots: usize,
    /// Slots that stay, given their address's new index in the pool.
    pub reindexed: usize,
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
    /// softwire no longer in `allowed`, or now one of the host's `own` addresses (XDP checks
    /// B4_ALLOW only for packets without a mapping), go too; its emptied blocks are then released by the
    /// next sweep, as any emptied block is. A slot that stays learns its address's index in
    /// the new pool (XDP takes a softwire's next block on the address of its others).
    ///
    /// The sweep's cycle restarts only when something changed (what it saw includes what
    /// went), so a reconcile run every second finds nothing and leaves the cycle alone. On
    /// an error, the records of what was deleted before it go out with the next sweep.
    pub fn reconcile(
        &mut self,
        now: u64,
        pool: &[std::net::Ipv4Addr],
        allowed: &[crate::config::Cidr6],
        own: &[[u8; 16]],
    ) -> Result<Reconciled> {
        let mut r = Reconciled::default();
        let done = self.reconcile_into(now, pool, allowed, own, &mut r);
        if done.is_err() || r.slots + r.reindexed + r.mappings + r.blocks > 0 {
            self.restart_cycle();
        }
        if let Err(e) = done {
            self.carried.append(&mut r.records);
            return Err(e);
        }
        Ok(r)
    }

    fn reconcile_into(
        &mut self,
        now: u64,
        pool: &[std::net::Ipv4Addr],
        allowed: &[crate::config::Cidr6],
        own: &[[u8; 16]],
        r: &mut Reconciled,
    ) -> Result<()> {
        // Hashed: a pool has up to 65536 addresses, the tables millions of entries.
        let at: StdMap<[u8; 4], usize> = pool
            .iter()
            .enumerate()
            .map(|(i, a)| (a.octets(), i))
            .collect();
        let index_of = |addr: [u8; 4]| at.get(&addr).copied();
        // As B4_ALLOW says: inside a prefix, and not one of the host's own addresses.
        let allowed_b4 =
            |b4: &[u8; 16]| allowed.iter().any(|p| p.contains(b4)) && !own.contains(b4);
        let ms = unix_ms(now);
        let mut slots: Vec<(SlotKey, Slot)> = Vec::new();
        scan_map(self.slots.map(), |k, s| slots.push((k, s)))?;
        for (k, s) in slots {
            match index_of(s.addr) {
                Some(i) => {
                    if s.addr_index != i as u32 {
                        let s = Slot {
                            addr_index: i as u32,
                            ..s
                        };
                        self.slots.insert(k, s, 0)?;
                        r.reindexed += 1;
                    }
                }
                None => {
                    let _ = self.slots.remove(&k);
                    r.slots += 1;
                }
            }
        }
        let mut all = Vec::new();
        // Only what goes is kept.
        scan_map::<NatOutKey, NatOutValue>(self.nat_out.map(), |k, v| {
            if !allowed_b4(&k.b4) || index_of(v.outside_addr).is_none() {
                all.push((k, v));
            }
        })?;
        r.mappings += all.len();
        self.delete_mappings(&all, ms, &mut r.records)?;
        let mut blocks: Vec<(BlockKey, BlockValue)> = Vec::new();
        scan_map(self.blocks.map(), |k, v| blocks.push((k, v)))?;
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
            r.records
                .push(block_event(ms, &self.cfg, EVENT_BLOCK_RELEASED, bv.b4, &bk));
            r.blocks += 1;
        }
        Ok(())
    }
}

impl Sweeper {
    /// Stopping without `--persist` takes the dataplane, and every block and mapping with it:
    /// a release record for each block still held and, with `log_sessions`, a deletion for
    /// each mapping, at `now`, so that no log shows them held past the stop (a later owner
    /// of the same ports would otherwise share the answer of `dslite whois`). Blocks in
    /// hold-down had their release logged already. Call it once XDP is detached.
    pub fn release_all(&mut self, now: u64) -> Result<Vec<NatRecord>> {
        let ms = unix_ms(now);
        let mut out = Vec::new();
        if self.log_sessions {
            scan_map::<NatOutKey, NatOutValue>(self.nat_out.map(), |k, v| {
                let port = u16::from_be(v.outside_port);
                out.push(NatRecord {
                    proto: k.proto,
                    inside: Some((k.inside_addr.into(), u16::from_be(k.inside_port))),
                    ..event(ms, EVENT_MAPPING_DELETED, k.b4, v.outside_addr, port, port)
                });
            })?;
        }
        let mut blocks = Vec::new();
        scan_map::<BlockKey, BlockValue>(self.blocks.map(), |bk, bv| {
            if bv.released_ns == 0 {
                blocks.push((bk, bv));
            }
        })?;
        // In a stable order (the map's is its hash's).
        blocks.sort_by_key(|(bk, _)| (bk.addr, bk.block));
        for (bk, bv) in blocks {
            out.push(block_event(ms, &self.cfg, EVENT_BLOCK_RELEASED, bv.b4, &bk));
        }
        Ok(out)
    }
}
