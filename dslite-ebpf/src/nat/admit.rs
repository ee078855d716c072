//! Per-subscriber limits before a new mapping (RFC 6888 REQ-4/5, RFC 7785 §3), and the
//! refusals the sweep turns into NAT log records.

use aya_ebpf::bindings::BPF_NOEXIST;
use dslite_common::{
    bucket,
    maps::{AftrConfig, SoftwireState},
    nat::{stamp_epoch, subscriber_of},
};

use crate::{
    clock::precise_ns,
    exit::nat::{FOUND, RATE_LIMIT, SESSION_LIMIT, TABLE_FULL},
    maps::SOFTWIRES,
};

/// The subscriber's limit state, created full (its bucket's refill time from `now`, called
/// only then) when it has none.
#[inline(always)]
fn state(
    sub: &[u8; 16],
    cfg: &AftrConfig,
    now: impl FnOnce() -> u64,
) -> Option<*mut SoftwireState> {
    if SOFTWIRES.get_ptr(sub).is_none() {
        let fresh = SoftwireState {
            sessions: 0,
            tokens: cfg.new_per_sec,
            last_new: 0,
            refill_ns: now(),
            refused: 0,
        };
        let _ = SOFTWIRES.insert(sub, &fresh, BPF_NOEXIST as u64);
    }
    SOFTWIRES.get_ptr_mut(sub)
}

/// Count a refusal on the subscriber (the sweep turns new refusals into one NAT log record
/// per subscriber per second, natEvent 13). Refusals are the exception: the insert is off
/// the normal path.
#[inline(never)]
pub fn note_refusal(b4: &[u8; 16], cfg: &AftrConfig) {
    let sub = subscriber_of(b4, &cfg.subscriber_mask);
    let b4 = &sub;
    if let Some(st) = state(b4, cfg, precise_ns) {
        // SAFETY: map value pointer from the kernel.
        unsafe { (*st).refused += 1 };
    }
}

/// Per-subscriber limits before a new mapping (RFC 6888 REQ-4/5, RFC 7785 §3): at most
/// `max_sessions` mappings, and new ones at `new_per_sec` with that burst (token bucket).
/// The state is updated without locks: two CPUs may both take the last token, an error of
/// one mapping that the next refill absorbs. The admitted mapping is counted here (a
/// creation that then fails is repaired by the sweep's recount at the end of its cycle).
#[inline(never)]
pub fn admit(b4: &[u8; 16], cfg: &AftrConfig, now: u64) -> u32 {
    let sub = subscriber_of(b4, &cfg.subscriber_mask);
    let b4 = &sub;
    let Some(st) = state(b4, cfg, || now) else {
        return TABLE_FULL;
    };
    // SAFETY: map value pointer from the kernel.
    let st = unsafe { &mut *st };
    if cfg.max_sessions != 0 && st.sessions >= cfg.max_sessions as u64 {
        st.refused += 1;
        return SESSION_LIMIT;
    }
    let rate = cfg.new_per_sec as u64;
    if rate != 0 && !bucket::take(&mut st.tokens, &mut st.refill_ns, rate, now) {
        st.refused += 1;
        return RATE_LIMIT;
    }
    st.sessions += 1;
    st.last_new = stamp_epoch(now);
    FOUND
}
