//! NAT44 mapping creation in XDP, with port-block allocation (RFC 6888 REQ-13/14,
//! RFC 7422-style blocks without the determinism).
//!
//! A softwire holds up to `max_blocks` blocks of `block_size` ports, all on one public
//! address (paired pooling, RFC 4787 REQ-2). A new mapping looks for a free port in the
//! softwire's blocks, in slot order; when they are full it takes a free block itself:
//! the first packet never waits on userspace. Every claim is a BPF_NOEXIST insert, so
//! concurrent CPUs can never share a block, a slot or an outside port:
//!
//! - `BLOCKS[(addr, block)]`: claims the block (absent = free; the controller frees held
//!   blocks after the hold-down);
//! - `SW_BLOCKS[(b4, slot)]`: records it as the softwire's slot-th block;
//! - `NAT_IN[(addr, port, proto)]` then `NAT_OUT[key]`: claim the port, publish the mapping.
//!
//! A CPU that loses a race releases what it claimed and adopts the winner's result.

mod admit;
mod block;
mod port;

/// For the bench's probe of a new subscriber's block claim alone.
#[cfg(feature = "bench")]
pub use self::block::{claim_block, claim_part};

use dslite_common::{
    maps::{AftrConfig, NatInValue, NatOutKey, NatOutValue, SlotKey},
    nat::{subscriber_of, tcp_next_state, MAX_BLOCKS},
    Counter,
};

use self::{
    admit::{admit, note_refusal},
    port::{give_block, try_slot, Outside},
};
use crate::{
    clock::{precise_ns, tick_ns},
    exit::{
        nat::{
            outcome, SlotTry, FOUND, NEED_BLOCK, NOT_CONFIGURED, NOT_FOUND, POOL_EXHAUSTED,
            QUOTA_EXCEEDED, RATE_LIMIT, SESSION_LIMIT, TABLE_FULL,
        },
        Exit, Res,
    },
    maps::{NAT_OUT, SW_BLOCKS},
};

// The BPF calls below return plain integers (`exit::nat`): see `exit.rs` for why.

/// Refresh this softwire endpoint's mapping `existing` (`NAT_OUT`'s entry for `key`, looked
/// up by the caller: outbound traffic refreshes, RFC 4787 REQ-6) or, when there is none,
/// create it; `created` is set to 1 when this packet created it.
#[inline(always)]
pub fn lookup_or_create(
    key: &NatOutKey,
    existing: Option<*mut NatOutValue>,
    cfg: &AftrConfig,
    tcp: u8,
    created: &mut u32,
) -> Res<([u8; 4], u16)> {
    if let Some(v) = existing {
        // SAFETY: map value pointer from the kernel.
        unsafe {
            refresh(core::ptr::addr_of_mut!((*v).last_seen_ns));
            if key.proto == dslite_common::proto::IPPROTO_TCP {
                let next = tcp_next_state((*v).tcp_state, tcp, true);
                if next != (*v).tcp_state {
                    (*v).tcp_state = next;
                }
            }
            return Ok(((*v).outside_addr, (*v).outside_port));
        }
    }
    let mut out = Outside {
        addr: [0; 4],
        port: 0,
        _pad: 0,
    };
    if cfg.max_sessions != 0 || cfg.new_per_sec != 0 {
        let r = admit(&key.b4, cfg, precise_ns());
        if r != FOUND {
            return Err(Exit::Drop(if r == SESSION_LIMIT {
                Counter::DropSessionLimit
            } else if r == RATE_LIMIT {
                Counter::DropRateLimit
            } else {
                Counter::DropMappingTableFull
            }));
        }
    }
    // The subscriber's slots in order: each one is searched, given a block first when it
    // is empty (or held down), or passed when full. One BPF call per slot returning one
    // scalar, so the verifier walks each slot once.
    let mut slot = 0u32;
    let mut r = QUOTA_EXCEEDED;
    while slot < MAX_BLOCKS {
        if slot >= cfg.max_blocks as u32 {
            break;
        }
        let how = SlotTry::new(tcp, slot);
        r = try_slot(key, cfg, how, &mut out);
        if outcome(r) == NEED_BLOCK {
            // Give the slot a block (or its own held one back), then search it: two BPF
            // calls side by side, so their frames never stack.
            r = give_block(key, cfg, slot);
            if r != FOUND {
                break;
            }
            r = try_slot(key, cfg, how, &mut out);
            if outcome(r) == NEED_BLOCK {
                // Freed under us at once: a full table, for this packet.
                r = TABLE_FULL;
            }
        }
        if r != NOT_FOUND {
            break;
        }
        r = QUOTA_EXCEEDED;
        slot += 1;
    }
    if r == QUOTA_EXCEEDED || r == POOL_EXHAUSTED {
        // Refused with no block to open (the quota, or the pool): blocks may have been
        // passed on their full hint, and a search that fails 16 candidates can leave a
        // block a few ports short of full. This mapping is refused; the next one searches
        // every block again. (Searching them here would double the verifier's walk of this
        // loop, which the program cannot afford.)
        clear_full_hints(key, cfg);
        note_refusal(&key.b4, cfg);
    }
    let c = match r {
        FOUND => {
            *created = 1;
            return Ok((out.addr, out.port));
        }
        QUOTA_EXCEEDED => Counter::DropQuotaExceeded,
        POOL_EXHAUSTED => Counter::DropPoolExhausted,
        NOT_CONFIGURED => Counter::DropNotConfigured,
        _ => Counter::DropMappingTableFull,
    };
    Err(Exit::Drop(c))
}

/// Clear the full hints of the subscriber of `key`'s blocks (see `lookup_or_create`).
#[inline(never)]
fn clear_full_hints(key: &NatOutKey, cfg: &AftrConfig) {
    let mut sk = SlotKey {
        b4: subscriber_of(&key.b4, &cfg.subscriber_mask),
        slot: 0,
        _pad: [0; 3],
    };
    while (sk.slot as u32) < MAX_BLOCKS {
        if let Some(s) = SW_BLOCKS.get_ptr_mut(&sk) {
            // SAFETY: map value pointer from the kernel; a hint. Written only when set: the
            // slot's cache line stays clean otherwise.
            unsafe {
                if (*s).full != 0 {
                    (*s).full = 0;
                }
            }
        }
        sk.slot += 1;
    }
}

/// Record TCP flags seen from outside on the mapping that `m` points back to, and refresh
/// it when `refresh_it` (inbound refresh enabled).
#[inline(always)]
pub fn note_inbound(m: &NatInValue, proto: u8, bits: u8, refresh_it: bool) {
    let key = NatOutKey {
        b4: m.b4,
        inside_addr: m.inside_addr,
        inside_port: m.inside_port,
        proto,
        _pad: 0,
    };
    if let Some(v) = NAT_OUT.get_ptr_mut(&key) {
        // SAFETY: map value pointer from the kernel; plain helper call.
        unsafe {
            if proto == dslite_common::proto::IPPROTO_TCP {
                let next = tcp_next_state((*v).tcp_state, bits, false);
                if next != (*v).tcp_state {
                    (*v).tcp_state = next;
                }
            }
            if refresh_it {
                refresh(core::ptr::addr_of_mut!((*v).last_seen_ns));
            }
        }
    }
}

/// Stamp a mapping used now, only forward: at most once per tick and CPU (each CPU's tick
/// clock has its own value within a tick), so CPUs forwarding the same mapping do not pass
/// its cache line back and forth on every packet, and the stamp never goes back.
#[inline(always)]
fn refresh(last_seen_ns: *mut u64) {
    let now = tick_ns();
    // SAFETY: a map value field; other CPUs write it too (any of their values is a valid
    // stamp), hence the volatile accesses.
    unsafe {
        if core::ptr::read_volatile(last_seen_ns) < now {
            core::ptr::write_volatile(last_seen_ns, now);
        }
    }
}
