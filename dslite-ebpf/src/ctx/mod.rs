//! The two hooks the packet logic runs on, behind one trait: XDP (`XdpContext`, for NICs with
//! native XDP) and tc ingress (`TcContext`, an skb: for veth, tun/tap, bridges and other
//! virtual devices). Every module above this one is generic over [`Pkt`]; monomorphisation
//! gives each hook its own verified copy, with nothing dynamic at run time.
//!
//! The only files that name `XdpContext` or `TcContext` are this module's and `main.rs`.
//! What differs between the hooks, and why, is in docs/design.md ("Two hooks, one logic").
//!
//! Pointer rule (both hooks): a pointer from `packet::ptr_at` is dead after any method here
//! that may move packet data (`encap_room`, `decap_room`, `push_front`, `resize`,
//! `l4_csum_replace` on tc): take it again with `ptr_at`/`at`.

pub mod tc;
mod xdp;

use core::ffi::c_void;

use crate::exit::Res;

/// The flags of an upper-layer checksum edit, as `bpf_l4_csum_replace` takes them: the
/// field's size (2 or 4), and whether it is part of the pseudo-header (an address).
#[derive(Clone, Copy)]
pub struct CsumEdit(u64);

impl CsumEdit {
    /// A 16-bit field inside the upper-layer header (a port, an ICMP identifier, the MSS).
    pub const WORD: CsumEdit = CsumEdit(2);
    /// An IPv4 address, which TCP and UDP sum through their pseudo-header.
    pub const ADDR: CsumEdit = CsumEdit(4 | PSEUDO_HDR);

    /// The same edit on a UDP checksum: 0 ("none", RFC 768) stays 0, and a result of 0 is
    /// written as 0xffff.
    #[inline(always)]
    pub fn udp(self) -> CsumEdit {
        CsumEdit(self.0 | MARK_MANGLED_0)
    }

    #[inline(always)]
    pub fn size(self) -> u64 {
        self.0 & 0xf
    }

    #[inline(always)]
    pub fn is_udp(self) -> bool {
        self.0 & MARK_MANGLED_0 != 0
    }

    #[inline(always)]
    pub fn flags(self) -> u64 {
        self.0
    }
}

const PSEUDO_HDR: u64 = aya_ebpf::bindings::BPF_F_PSEUDO_HDR as u64;
const MARK_MANGLED_0: u64 = aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 as u64;

/// Internal verdicts, in XDP's numbering whatever the hook; `main::finish` maps them to the
/// hook's return codes.
pub const V_DROP: u32 = aya_ebpf::bindings::xdp_action::XDP_DROP;
pub const V_PASS: u32 = aya_ebpf::bindings::xdp_action::XDP_PASS;
pub const V_REDIRECT: u32 = aya_ebpf::bindings::xdp_action::XDP_REDIRECT;

/// A packet on one of the two hooks.
pub trait Pkt: aya_ebpf::EbpfContext {
    /// True on the tc hook (a constant: each hook's copy keeps only its own branch).
    const TC: bool;

    /// Start and end of the directly accessible bytes (tc: the skb's linear head).
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;

    /// Length of the whole frame from the Ethernet header (tc: `skb->len`, which may exceed
    /// the linear head).
    fn len(&self) -> usize;

    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;

    /// The segment size of a GSO packet (a GRO aggregate or a TSO send), 0 for one packet.
    /// Always 0 on XDP.
    fn gso_size(&self) -> u32;

    /// The context pointer helpers take (`bpf_fib_lookup`, `bpf_check_mtu`).
    fn raw(&self) -> *mut c_void;

    /// `bpf_xdp_load_bytes` / `bpf_skb_load_bytes` on a raw context: for `bpf_loop`
    /// callbacks, which get the context as a pointer.
    ///
    /// # Safety
    /// `raw` is this hook's context pointer; `buf` holds `len` bytes.
    unsafe fn load_bytes(raw: *mut c_void, off: u32, buf: *mut c_void, len: u32) -> i64;

    /// Open `n` bytes right after the Ethernet header for an outer IPv6 header; the
    /// Ethernet header's bytes are kept (the EtherType is the caller's to set).
    fn encap_room(&self, n: u32) -> Res<()>;

    /// Remove the `n` bytes right after the Ethernet header (outer IPv6 header and its
    /// extension headers) in front of an IPv4 packet of `inner_len` bytes; the Ethernet
    /// header's bytes are kept.
    fn decap_room(&self, n: u32, inner_len: u32) -> Res<()>;

    /// Push `n` zero bytes in front of the frame (the slow path's metadata).
    fn push_front(&self, n: u32) -> Res<()>;

    /// Move the start of the frame by `head` bytes and its end by `tail` bytes (XDP only: on
    /// tc the ICMP errors that need it are built by the slow path instead).
    fn resize(&self, head: i32, tail: i32) -> Res<()>;

    /// Update the upper-layer checksum at `off` for a field changing from `from` to `to`
    /// (raw memory-order values). XDP: RFC 1624 in place; tc: `bpf_l4_csum_replace`, which
    /// keeps a CHECKSUM_PARTIAL packet's pseudo-header sum right (and ignores in-header
    /// edits there, as it must).
    fn l4_csum_replace(&self, off: usize, from: u32, to: u32, edit: CsumEdit) -> Res<()>;

    /// Redirect out of `ifindex`: [`V_REDIRECT`], or [`V_DROP`] if the helper refused.
    fn redirect(&self, ifindex: u32) -> u32;

    /// For a GSO packet: whether every segment fits `ifindex`'s MTU (else its MTU).
    fn segments_fit(&self, ifindex: u32) -> Result<(), u32>;

    /// Redirect into the slow path's TAP `tap` (XDP: through the devmap, which notices a
    /// TAP that is gone).
    fn to_tap(&self, tap: u32) -> u32;
}
