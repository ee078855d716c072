//! [`Pkt`] on tc ingress: an skb, whose checksum state (CHECKSUM_PARTIAL from a neighbour
//! with TX offload) and GSO state (GRO aggregates, TSO sends) must survive what the programs
//! do, so every move and every upper-layer checksum edit goes through the skb helpers
//! (docs/design.md, "Two hooks, one logic").

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS,
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO,
        TC_ACT_REDIRECT,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_l4_csum_replace, bpf_redirect, bpf_redirect_peer, bpf_skb_adjust_room,
        bpf_skb_change_head, bpf_skb_change_proto, bpf_skb_load_bytes, bpf_skb_pull_data,
    },
    programs::TcContext,
};
use dslite_common::{
    proto::{ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPV4_MIN_HLEN, IPV4_PROTO_OFF, IPV6_HLEN},
    Counter,
};

use super::{CsumEdit, Pkt, V_DROP, V_REDIRECT};
use crate::{
    exit::{Exit, Res},
    maps::PEER_REDIRECT,
};

/// Bytes made directly accessible at entry: more than the deepest header read (Ethernet 14
/// + IPv6 40 + extension headers 2 x 64 + IPv4 60 + TCP 20 = 262, packet.rs).
const PULL_LEN: u32 = 320;

/// Make the headers directly accessible (a GRO aggregate or a cloned skb may hold only
/// part of them in its linear head). Before any pointer is taken: a pull moves data.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) -> Res<()> {
    let want = Pkt::len(ctx).min(PULL_LEN as usize);
    if ctx.data() + want <= ctx.data_end() {
        return Ok(());
    }
    // SAFETY: plain helper call on our skb.
    if unsafe { bpf_skb_pull_data(ctx.skb.skb, want as u32) } != 0 {
        return Err(Exit::Drop(Counter::DropPull));
    }
    Ok(())
}

#[inline(always)]
fn adjust_room(ctx: &TcContext, diff: i32, flags: u64) -> Res<()> {
    // SAFETY: plain helper call on our skb.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, diff, BPF_ADJ_ROOM_MAC, flags) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustRoom));
    }
    Ok(())
}

impl Pkt for TcContext {
    const TC: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading a field of our `__sk_buff`.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: reading a field of our `__sk_buff`.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb as *mut c_void
    }

    #[inline(always)]
    unsafe fn load_bytes(raw: *mut c_void, off: u32, buf: *mut c_void, len: u32) -> i64 {
        // SAFETY: the caller's contract; the helper checks the read against the skb.
        unsafe { bpf_skb_load_bytes(raw, off, buf, len) }
    }

    #[inline(always)]
    fn encap_room(&self, n: u32) -> Res<()> {
        // ENCAP_L3_IPV6 marks a GSO packet as IPv4-in-IPv6 (so it is segmented as one) and
        // sets skb->protocol. Without FIXED_GSO the segment size shrinks by the header, so
        // TCP segments stay within the MTU they were cut for. UDP GSO cannot shrink
        // (gso_size delimits datagrams); the segment check after routing catches it.
        let mut flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 as u64;
        if self.gso_size() != 0 && !tcp_gso(self) {
            flags |= BPF_F_ADJ_ROOM_FIXED_GSO as u64;
        }
        adjust_room(self, n as i32, flags)
    }

    #[inline(always)]
    fn decap_room(&self, n: u32, inner_len: u32) -> Res<()> {
        // The helper refuses to leave less than the old protocol's header (40 bytes for
        // IPv6): a shorter inner packet (a small ICMP echo or UDP datagram, never GSO) is
        // first turned into "IPv4" by dropping 20 bytes, then shrunk by the rest.
        if inner_len < IPV6_HLEN as u32 && self.gso_size() == 0 {
            // SAFETY: plain helper call on our skb.
            if unsafe { bpf_skb_change_proto(self.skb.skb, ETH_P_IP.to_be(), 0) } != 0 {
                return Err(Exit::Drop(Counter::DropAdjustRoom));
            }
            return adjust_room(
                self,
                -((n - (IPV6_HLEN - IPV4_MIN_HLEN) as u32) as i32),
                BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64,
            );
        }
        // FIXED_GSO: the segments were cut for the outer MTU; growing them by the removed
        // header would make the kernel drop aggregates no longer than one segment.
        adjust_room(
            self,
            -(n as i32),
            (BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO) as u64,
        )
    }

    #[inline(always)]
    fn push_front(&self, n: u32) -> Res<()> {
        // SAFETY: plain helper call on our skb.
        if unsafe { bpf_skb_change_head(self.skb.skb, n, 0) } != 0 {
            return Err(Exit::Drop(Counter::DropAdjustRoom));
        }
        Ok(())
    }

    #[inline(always)]
    fn resize(&self, _head: i32, _tail: i32) -> Res<()> {
        Err(Exit::Drop(Counter::DropAdjustRoom))
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u32, to: u32, edit: CsumEdit) -> Res<()> {
        // SAFETY: plain helper call on our skb; it checks the offset itself.
        let rc = unsafe {
            bpf_l4_csum_replace(
                self.skb.skb,
                off as u32,
                from as u64,
                to as u64,
                edit.flags(),
            )
        };
        if rc != 0 {
            return Err(Exit::Drop(Counter::DropBadL4));
        }
        Ok(())
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // Into a veth whose peer is in another namespace (the controller lists those):
        // straight into the peer's receive path, without the per-CPU backlog and its softirq
        // round that a transmit on the veth costs. Only the controller knows the peer is
        // elsewhere; toward a peer in this namespace the helper would drop the packet.
        let rc = if PEER_REDIRECT.get_ptr(&ifindex).is_some() {
            // SAFETY: plain helper call (tc ingress).
            unsafe { bpf_redirect_peer(ifindex, 0) }
        } else {
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) }
        };
        if rc == TC_ACT_REDIRECT as i64 {
            V_REDIRECT
        } else {
            V_DROP
        }
    }

    #[inline(always)]
    fn segments_fit(&self, ifindex: u32) -> Result<(), u32> {
        if self.gso_size() == 0 {
            return Ok(());
        }
        let mut mtu = 0u32;
        // SAFETY: plain helper call; `mtu` is a local.
        let rc =
            unsafe { bpf_check_mtu(self.raw(), ifindex, &mut mtu, 0, BPF_MTU_CHK_SEGS as u64) };
        if rc == 0 {
            Ok(())
        } else {
            Err(mtu)
        }
    }

    #[inline(always)]
    fn to_tap(&self, tap: u32) -> u32 {
        // SAFETY: plain helper call.
        if unsafe { bpf_redirect(tap, 0) } == TC_ACT_REDIRECT as i64 {
            V_REDIRECT
        } else {
            V_DROP
        }
    }
}

/// A TCP GSO packet, which the kernel can re-cut to a smaller segment size. `__sk_buff` has
/// no `gso_type`: the protocol of the IPv4 header after Ethernet tells.
#[inline(always)]
fn tcp_gso(ctx: &TcContext) -> bool {
    crate::packet::ptr_at::<[u8; IPV4_MIN_HLEN], _>(ctx, ETH_HLEN)
        // SAFETY: bounds-checked by `ptr_at`.
        .is_some_and(|h| unsafe { (*h)[IPV4_PROTO_OFF] } == IPPROTO_TCP)
}
