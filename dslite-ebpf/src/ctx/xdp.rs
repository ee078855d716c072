//! [`Pkt`] on XDP: a frame in one linear buffer, moved with `bpf_xdp_adjust_head/tail`, whose
//! checksums are plain memory (RFC 1624 in place).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use dslite_common::{csum, proto::ETH_HLEN, Counter};

use super::{CsumEdit, Pkt, V_DROP, V_REDIRECT};
use crate::{
    exit::{Exit, Res},
    maps::SLOW_DEV,
    packet::{at, read16, write16},
};

/// Move the head by `delta` keeping the Ethernet header's bytes.
#[inline(always)]
fn move_head_keep_eth(ctx: &XdpContext, delta: i32) -> Res<()> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let saved = unsafe { *eth };
    // SAFETY: the helper checks the new head against the frame itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustHead));
    }
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropAdjustHead)?;
    // SAFETY: re-checked after the head moved.
    unsafe { *eth = saved };
    Ok(())
}

impl Pkt for XdpContext {
    const TC: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        let n = XdpContext::data_end(self) - XdpContext::data(self);
        // SAFETY: a volatile read of a local. It keeps LLVM from folding later arithmetic
        // (`len - 14`) into the subtraction as `data_end - 14`: the verifier rejects any
        // arithmetic on the packet-end pointer.
        unsafe { core::ptr::read_volatile(&n) }
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading the ingress ifindex from the context.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx as *mut c_void
    }

    #[inline(always)]
    unsafe fn load_bytes(raw: *mut c_void, off: u32, buf: *mut c_void, len: u32) -> i64 {
        // SAFETY: the caller's contract; the helper checks the read against the frame.
        unsafe { bpf_xdp_load_bytes(raw.cast(), off, buf, len) }
    }

    #[inline(always)]
    fn encap_room(&self, n: u32) -> Res<()> {
        move_head_keep_eth(self, -(n as i32))
    }

    #[inline(always)]
    fn decap_room(&self, n: u32, _inner_len: u32) -> Res<()> {
        move_head_keep_eth(self, n as i32)
    }

    #[inline(always)]
    fn push_front(&self, n: u32) -> Res<()> {
        // SAFETY: the helper checks the headroom itself.
        if unsafe { bpf_xdp_adjust_head(self.ctx, -(n as i32)) } != 0 {
            return Err(Exit::Drop(Counter::DropAdjustHead));
        }
        Ok(())
    }

    #[inline(always)]
    fn resize(&self, head: i32, tail: i32) -> Res<()> {
        // SAFETY: the helpers check the new head and tail against the frame.
        if head != 0 && unsafe { bpf_xdp_adjust_head(self.ctx, head) } != 0 {
            return Err(Exit::Drop(Counter::DropAdjustHead));
        }
        if tail != 0 && unsafe { bpf_xdp_adjust_tail(self.ctx, tail) } != 0 {
            return Err(Exit::Drop(Counter::DropAdjustHead));
        }
        Ok(())
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u32, to: u32, edit: CsumEdit) -> Res<()> {
        let p: *mut [u8; 2] = at(self, off, Counter::DropBadL4)?;
        let old = read16(p as *const u8);
        let new = match (edit.size(), edit.is_udp()) {
            (4, false) => csum::replace4(old, from.to_ne_bytes(), to.to_ne_bytes()),
            (4, true) => csum::udp_replace4(old, from.to_ne_bytes(), to.to_ne_bytes()),
            (_, false) => csum::replace2(old, from as u16, to as u16),
            (_, true) => csum::udp_replace2(old, from as u16, to as u16),
        };
        write16(p as *mut u8, new);
        Ok(())
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // SAFETY: plain helper call.
        match unsafe { bpf_redirect(ifindex, 0) } as u32 {
            xdp_action::XDP_REDIRECT => V_REDIRECT,
            _ => V_DROP,
        }
    }

    #[inline(always)]
    fn segments_fit(&self, _ifindex: u32) -> Result<(), u32> {
        Ok(())
    }

    #[inline(always)]
    fn to_tap(&self, _tap: u32) -> u32 {
        // Through the devmap: an entry the kernel removed with its TAP fails here.
        match SLOW_DEV.redirect(0, 0) {
            Ok(xdp_action::XDP_REDIRECT) => V_REDIRECT,
            _ => V_DROP,
        }
    }
}
