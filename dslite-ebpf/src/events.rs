//! Ring-buffer writers: the NAT log's events (RFC 6888 §4), read by the controller. A full
//! ring buffer is counted, never silent.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use dslite_common::{
    maps::{
        AftrConfig, NatEvent, NatOutKey, Slot, SlotKey, EVENT_BLOCK_ALLOCATED,
        EVENT_MAPPING_CREATED,
    },
    nat::block_first_port,
    Counter,
};

use crate::{
    exit::Endpoint,
    maps::{count, EVENTS},
};

/// Emit a block-allocation event straight into the ring buffer; a full ring buffer is
/// counted, never silent.
#[inline(never)]
pub fn block_event(sk: &SlotKey, s: &Slot, cfg: &AftrConfig, now: u64) {
    count(Counter::BlockAllocated);
    let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let first = block_first_port(s.block, cfg.port_lo, cfg.block_size);
    entry.write(NatEvent {
        ts_ns: now,
        b4: sk.b4,
        addr: s.addr,
        port_lo: first,
        port_hi: first + (cfg.block_size - 1),
        kind: EVENT_BLOCK_ALLOCATED,
        ..NatEvent::default()
    });
    entry.submit(0);
}

/// Report a mapping just created (`--log-sessions`, RFC 6888 §4 and REQ-12):
/// `out` is the outside endpoint; `dst` the first destination, or [`Endpoint::NONE`]. A full
/// ring buffer is counted.
#[inline(never)]
pub fn mapping_event(key: &NatOutKey, out: Endpoint, dst: Endpoint) {
    let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let port = out.port();
    entry.write(NatEvent {
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        b4: key.b4,
        addr: out.addr(),
        port_lo: port,
        port_hi: port,
        kind: EVENT_MAPPING_CREATED,
        proto: key.proto,
        inside_port: u16::from_be(key.inside_port),
        inside_addr: key.inside_addr,
        dst_addr: dst.addr(),
        dst_port: dst.port(),
        _pad: 0,
    });
    entry.submit(0);
}
