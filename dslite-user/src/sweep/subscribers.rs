//! Subscribers (RFC 7785 §3: limits are the subscriber's): each softwire's mappings
//! recounted, softwires with none forgotten, and a record for each subscriber refused new
//! mappings since the last sweep, saying which limit or which exhaustion refused it.

use std::collections::HashMap as StdMap;

use anyhow::Result;
use aya::maps::IterableMap as _;
use dslite_common::{
    maps::{
        AftrConfig, Slot, SlotKey, SoftwireState, EVENT_ADDRESSES_EXHAUSTED, EVENT_PORTS_EXHAUSTED,
        EVENT_QUOTA_EXCEEDED,
    },
    nat::stamped_since,
};

use super::{event, CycleSpan, SweepReport, Sweeper, Tally};
use crate::{
    dataplane::batch::scan_map,
    natlog::{Limit, NatRecord},
};

/// The kernel's refusal counters, in the order of [`Rose`]'s fields, then a full table.
const REFUSAL_COUNTERS: [dslite_common::Counter; 5] = [
    dslite_common::Counter::DropSessionLimit,
    dslite_common::Counter::DropRateLimit,
    dslite_common::Counter::DropQuotaExceeded,
    dslite_common::Counter::DropPoolExhausted,
    dslite_common::Counter::DropMappingTableFull,
];

/// Which refusal counters rose since the last sweep (for the whole AFTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rose {
    pub sessions: bool,
    pub rate: bool,
    pub quota: bool,
    pub pool: bool,
}

/// What the sweep knows of a subscriber that had new mappings refused since the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    pub b4: [u8; 16],
    /// Its mappings: the larger of XDP's count and the sweep's recount.
    pub sessions: u64,
    /// Blocks it holds now, and the address they are on (paired pooling: one).
    pub blocks: u32,
    pub addr: Option<[u8; 4]>,
}

/// The NAT log record for a subscriber's refusals: which limit, or which exhaustion.
///
/// XDP counts refusals per subscriber without saying which limit refused, and per limit
/// for the whole AFTR. The subscriber's state tells most cases apart, in the order XDP
/// checks them: at `--max-sessions`, the session limit; holding `--max-blocks` blocks, its
/// port quota (RFC 6888 REQ-4); fewer, no free block (RFC 8158 natEvent 12 on its
/// address, or 3 with no block at all). A rate refusal leaves no state, so the AFTR-wide
/// counters decide: when one kind of refusal alone rose since the last sweep, it is that
/// one; when several did, the state's answer if its counter rose, else the rate limit.
pub fn refusal_record(
    f: &Refused,
    rose: Option<Rose>,
    cfg: &AftrConfig,
    unix_ms: i128,
) -> NatRecord {
    #[derive(Clone, Copy, PartialEq)]
    enum Why {
        Sessions,
        Rate,
        Quota,
        Pool,
    }
    let by_state = if cfg.max_sessions != 0 && f.sessions >= cfg.max_sessions as u64 {
        Why::Sessions
    } else if f.blocks >= cfg.max_blocks as u32 {
        Why::Quota
    } else {
        Why::Pool
    };
    let why = match rose {
        None => by_state,
        Some(r) => {
            let rose: Vec<Why> = [
                (Why::Sessions, r.sessions),
                (Why::Rate, r.rate),
                (Why::Quota, r.quota),
                (Why::Pool, r.pool),
            ]
            .into_iter()
            .filter(|(_, up)| *up)
            .map(|(w, _)| w)
            .collect();
            match rose.as_slice() {
                [only] => *only,
                _ if rose.contains(&by_state) => by_state,
                _ if r.rate => Why::Rate,
                _ => by_state,
            }
        }
    };
    let base = NatRecord {
        unix_ms,
        kind: EVENT_QUOTA_EXCEEDED,
        b4: f.b4.into(),
        outside: std::net::Ipv4Addr::UNSPECIFIED,
        port_lo: 0,
        port_hi: 0,
        proto: 0,
        inside: None,
        dst: None,
        limit: None,
    };
    let ports = cfg.max_blocks as u32 * cfg.block_size as u32;
    match why {
        Why::Sessions => NatRecord {
            limit: Some(Limit::Sessions(cfg.max_sessions)),
            ..base
        },
        Why::Rate => NatRecord {
            limit: Some(Limit::Rate(cfg.new_per_sec)),
            ..base
        },
        Why::Quota => NatRecord {
            limit: Some(Limit::Ports(ports)),
            ..base
        },
        Why::Pool => match f.addr {
            Some(a) => NatRecord {
                kind: EVENT_PORTS_EXHAUSTED,
                outside: a.into(),
                ..base
            },
            None => NatRecord {
                kind: EVENT_ADDRESSES_EXHAUSTED,
                ..base
            },
        },
    }
}

impl Sweeper {
    /// The refusal counters summed over CPUs, and which rose since the last call.
    fn refusals_rose(&mut self) -> (Option<Rose>, bool) {
        let now: Option<[u64; 5]> = self.stats.as_ref().and_then(|s| {
            let mut v = [0u64; 5];
            for (i, c) in REFUSAL_COUNTERS.iter().enumerate() {
                v[i] = s.get(&(*c as u32), 0).ok()?.iter().sum();
            }
            Some(v)
        });
        let last = std::mem::replace(&mut self.last_refusals, now);
        match (last, now) {
            (Some(a), Some(b)) => (
                Some(Rose {
                    sessions: b[0] > a[0],
                    rate: b[1] > a[1],
                    quota: b[2] > a[2],
                    pool: b[3] > a[3],
                }),
                b[4] > a[4],
            ),
            _ => (None, false),
        }
    }

    /// Every sweep: a NAT log record for each subscriber refused new mappings since the
    /// last sweep (one a second at most, saying which limit or which exhaustion), and for
    /// a full mapping table. `live` is the cycle's tally so far (to tell limits apart).
    /// With `counts`, XDP's count of every subscriber is returned (the cycle's start).
    pub(super) fn note_refusals(
        &mut self,
        live: &Tally<[u8; 16], u64>,
        counts: bool,
        ms: i128,
        r: &mut SweepReport,
    ) -> Result<Tally<[u8; 16], u64>> {
        let (rose, table_full) = self.refusals_rose();
        if table_full {
            // RFC 8158 natQuotaExceededEvent 2: the whole mapping table, no one subscriber.
            r.records.push(NatRecord {
                b4: std::net::Ipv6Addr::UNSPECIFIED,
                limit: Some(Limit::Mappings(self.max_mappings)),
                ..event(ms, EVENT_QUOTA_EXCEEDED, [0; 16], [0; 4], 0, 0)
            });
        }
        let mut at = Tally::new();
        let mut newly = Vec::new();
        let last = &mut self.refused;
        scan_map::<[u8; 16], SoftwireState>(self.softwires.map(), |b4, st| {
            if counts {
                at.insert(b4, st.sessions);
            }
            if st.refused > last.get(&b4).copied().unwrap_or(0) {
                newly.push((b4, st));
            }
            last.insert(b4, st.refused);
        })?;
        if newly.is_empty() {
            return Ok(at);
        }
        // The blocks each refused subscriber holds (in use, not held down).
        let mut holds: StdMap<[u8; 16], (u32, [u8; 4])> = StdMap::new();
        scan_map::<SlotKey, Slot>(self.slots.map(), |k, s| {
            if s.held == 0 && newly.iter().any(|(b4, _)| *b4 == k.b4) {
                let h = holds.entry(k.b4).or_insert((0, s.addr));
                h.0 += 1;
            }
        })?;
        for (b4, st) in newly {
            let (blocks, addr) = holds.get(&b4).copied().unwrap_or((0, [0; 4]));
            let facts = Refused {
                b4,
                sessions: st.sessions.max(live.get(&b4).copied().unwrap_or(0)),
                blocks,
                addr: (blocks > 0).then_some(addr),
            };
            r.records.push(refusal_record(&facts, rose, &self.cfg, ms));
        }
        Ok(at)
    }

    /// The end of a cycle: each subscriber's mappings recounted (XDP's increments are not
    /// atomic, and a creation that fails after admission leaves one), and subscribers with
    /// none forgotten (their rate bucket starts full again).
    ///
    /// `seen` is each one's live mappings as the cycle `span` saw them, `gone` what it
    /// expired of each, `at_start` XDP's counts at its start. A cycle spread over several
    /// sweeps misses mappings made behind its cursor: for a subscriber admitted a mapping
    /// since the cycle began (`SoftwireState::last_new`), the count is at least what was
    /// seen, at most what was seen plus what XDP admitted since the start, and at most XDP's
    /// count less what expired; such a subscriber is not forgotten.
    pub(super) fn recount_subscribers(
        &mut self,
        seen: &Tally<[u8; 16], u64>,
        gone: &Tally<[u8; 16], u64>,
        at_start: &Tally<[u8; 16], u64>,
        span: CycleSpan,
        r: &mut SweepReport,
    ) -> Result<()> {
        let mut updates = Vec::new();
        scan_map::<[u8; 16], SoftwireState>(self.softwires.map(), |b4, st| {
            let n = seen.get(&b4).copied();
            let recent = span.spread && stamped_since(st.last_new, span.started_ns);
            let n = match (n, recent) {
                (None, false) => {
                    updates.push((b4, None));
                    return;
                }
                (n, false) => n.unwrap_or(0),
                (n, true) => {
                    let n = n.unwrap_or(0);
                    let admitted = st
                        .sessions
                        .saturating_sub(at_start.get(&b4).copied().unwrap_or(0));
                    let xdp = st
                        .sessions
                        .saturating_sub(gone.get(&b4).copied().unwrap_or(0));
                    xdp.min(n + admitted).max(n)
                }
            };
            if n != st.sessions {
                updates.push((b4, Some(SoftwireState { sessions: n, ..st })));
            }
        })?;
        r.softwires = seen.len();
        for (b4, st) in updates {
            match st {
                None => {
                    let _ = self.softwires.remove(&b4);
                    self.refused.remove(&b4);
                }
                Some(st) => self.softwires.insert(b4, st, 0)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    fn cfg() -> AftrConfig {
        AftrConfig {
            max_blocks: 4,
            block_size: 512,
            max_sessions: 100,
            new_per_sec: 50,
            ..Default::default()
        }
    }

    fn facts(sessions: u64, blocks: u32) -> Refused {
        Refused {
            b4: [0x20, 1, 0xd, 0xb8, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            sessions,
            blocks,
            addr: (blocks > 0).then_some([198, 51, 100, 1]),
        }
    }

    fn what(r: &NatRecord) -> (u8, Option<Limit>, std::net::Ipv4Addr) {
        (r.kind, r.limit, r.outside)
    }

    const ANY: std::net::Ipv4Addr = std::net::Ipv4Addr::UNSPECIFIED;
    const POOL1: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 1);

    #[test]
    fn the_subscribers_state_tells_the_limit() {
        let c = cfg();
        let both = Some(Rose {
            sessions: true,
            rate: true,
            quota: true,
            pool: true,
        });
        for rose in [None, both] {
            let r = refusal_record(&facts(100, 1), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_QUOTA_EXCEEDED, Some(Limit::Sessions(100)), ANY)
            );
            assert_eq!(r.unix_ms, 7);
            assert_eq!(r.b4.segments()[2], 0xa);
            let r = refusal_record(&facts(10, 4), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_QUOTA_EXCEEDED, Some(Limit::Ports(2048)), ANY)
            );
            let r = refusal_record(&facts(10, 2), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_PORTS_EXHAUSTED, None, POOL1),
                "natEvent 12"
            );
            let r = refusal_record(&facts(0, 0), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_ADDRESSES_EXHAUSTED, None, ANY),
                "natEvent 3"
            );
        }
    }

    #[test]
    fn the_aftr_wide_counters_settle_what_the_state_cannot_show() {
        let c = cfg();
        let only_rate = Some(Rose {
            rate: true,
            ..Default::default()
        });
        let r = refusal_record(&facts(10, 4), only_rate, &c, 0);
        assert_eq!(what(&r), (EVENT_QUOTA_EXCEEDED, Some(Limit::Rate(50)), ANY));
        // Rate and pool refusals this second; this subscriber holds all its blocks, but
        // nobody hit a quota: the rate limit refused it.
        let rate_and_pool = Some(Rose {
            rate: true,
            pool: true,
            ..Default::default()
        });
        let r = refusal_record(&facts(10, 4), rate_and_pool, &c, 0);
        assert_eq!(r.limit, Some(Limit::Rate(50)));
        // ... and one with a block to spare was refused for want of a free one.
        let r = refusal_record(&facts(10, 1), rate_and_pool, &c, 0);
        assert_eq!(r.kind, EVENT_PORTS_EXHAUSTED);
        // The only kind that rose wins over a stale state.
        let only_quota = Some(Rose {
            quota: true,
            ..Default::default()
        });
        let r = refusal_record(&facts(100, 4), only_quota, &c, 0);
        assert_eq!(r.limit, Some(Limit::Ports(2048)));
        // No session limit configured: never the session limit.
        let c0 = AftrConfig {
            max_sessions: 0,
            ..cfg()
        };
        let r = refusal_record(&facts(5000, 4), None, &c0, 0);
        assert_eq!(r.limit, Some(Limit::Ports(2048)));
    }
}
