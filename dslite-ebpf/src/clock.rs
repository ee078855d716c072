//! The dataplane's clock for mapping timestamps: `bpf_ktime_get_ns` read once per tick and
//! per CPU, and the tick's value used until the next one. The timer interrupt's counter
//! (`bpf_jiffies64`, inlined by the verifier into one load) says when a tick passed; the
//! clock read it saves costs more than a map lookup in a VM (docs/benchmarks.md). A stamp
//! is at most one tick (1-10 ms, by CONFIG_HZ) old: the sweep's timeouts are seconds.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns};

use crate::maps::CLOCK;

/// CLOCK_MONOTONIC in ns, as read by this CPU's first call in the current tick.
#[inline(always)]
pub fn tick_ns() -> u64 {
    // SAFETY: plain helper calls; the per-CPU slot is only written by this CPU.
    unsafe {
        let j = bpf_jiffies64();
        match CLOCK.get_ptr_mut(0) {
            Some(t) => {
                if (*t).jiffies != j {
                    (*t).jiffies = j;
                    (*t).ns = bpf_ktime_get_ns();
                }
                (*t).ns
            }
            None => bpf_ktime_get_ns(),
        }
    }
}

/// CLOCK_MONOTONIC in ns, read now: for what is logged or ordered against the controller's
/// clock (block allocations, `whois` orders by time) and the rate limits.
#[inline(always)]
pub fn precise_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}
