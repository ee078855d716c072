//! The AFTR's NAT events: the kernel's ring buffer decoded into NAT log records.

use std::path::Path;

use anyhow::Result;
use aya::maps::{Map, MapData, RingBuf};

/// The pinned event ring buffer.
pub(super) fn open(pin: &Path) -> Result<RingBuf<MapData>> {
    let ring = crate::dataplane::Pinned::new(pin).data(dslite_common::maps::EVENTS)?;
    Ok(RingBuf::try_from(Map::RingBuf(ring))?)
}

/// Every event the kernel has put in the ring buffer, into the NAT log. Each is handed to
/// the sinks before the next is taken (the file's write included, while it keeps up): the
/// ring's consumer position moves past an event only once it is logged.
pub(super) fn drain<T: std::borrow::BorrowMut<aya::maps::MapData>>(
    ring: &mut aya::maps::RingBuf<T>,
    natlog: &mut crate::natlog::NatLog,
) -> usize {
    let offset = crate::clock::realtime_offset_ns();
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<dslite_common::maps::NatEvent>() {
            // SAFETY: the kernel wrote a NatEvent (repr(C), any bit pattern valid).
            let ev: dslite_common::maps::NatEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            natlog.emit(&crate::natlog::NatRecord::from_event(&ev, offset));
            n += 1;
        }
    }
    n
}
