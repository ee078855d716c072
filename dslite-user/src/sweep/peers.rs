//! Filtering state (RFC 4787 REQ-8): remote endpoints of mappings under address- or
//! address-and-port-dependent filtering, purged when idle, and each mapping's peer count.

use std::collections::HashMap as StdMap;

use anyhow::Result;
use aya::maps::IterableMap as _;
use dslite_common::maps::{NatInKey, NatOutKey, NatOutValue, PeerKey};

use super::{CycleSpan, Sweeper, Tally};
use crate::dataplane::batch::scan_map;

impl Sweeper {
    /// Filtering state (RFC 4787 REQ-8): a remote expires by its own timestamp, after the
    /// idle timeout of its mapping, and with its mapping; each mapping's peer count (which
    /// bounds it in XDP) is recounted. The count is written back into the mapping only when
    /// it changed: that write can race an XDP refresh, whose lost timestamp costs at most
    /// that packet's refresh.
    ///
    /// `by_outside` is what the cycle `span` saw. A cycle spread over several sweeps misses
    /// mappings made behind its cursor, so a remote it cannot match is purged only if it was
    /// last seen before the cycle began (its mapping then existed, and was not seen live).
    pub(super) fn sweep_peers(
        &mut self,
        now: u64,
        span: CycleSpan,
        by_outside: &Tally<NatInKey, (u64, u8, NatOutKey)>,
    ) -> Result<()> {
        let mut gone = Vec::new();
        let mut counts: StdMap<NatInKey, u32> = StdMap::new();
        let since = span.started_ns.saturating_sub(dslite_common::nat::EPOCH_NS);
        scan_map::<PeerKey, u64>(self.peers.map(), |pk, ts| {
            let kin = NatInKey {
                outside_addr: pk.outside_addr,
                outside_port: pk.outside_port,
                proto: pk.proto,
                _pad: 0,
            };
            match by_outside.get(&kin) {
                Some((timeout, _, _)) if now.saturating_sub(ts) < *timeout => {
                    *counts.entry(kin).or_default() += 1;
                }
                Some(_) => gone.push(pk),
                None if span.spread && ts >= since => {}
                None => gone.push(pk),
            }
        })?;
        for pk in gone {
            let _ = self.peers.remove(&pk);
        }
        for (kin, (_, recorded, key)) in by_outside {
            let n = counts.get(kin).copied().unwrap_or(0).min(u8::MAX as u32) as u8;
            if n != *recorded {
                if let Ok(cur) = self.nat_out.get(key, 0) {
                    let _ = self.nat_out.insert(key, NatOutValue { peers: n, ..cur }, 0);
                }
            }
        }
        Ok(())
    }
}
