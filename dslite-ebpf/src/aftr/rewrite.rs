//! The NAT rewrite: one address and one port or identifier, with the IPv4 and upper-layer
//! checksums fixed incrementally.

use dslite_common::{csum, proto::*, Counter};

use crate::{
    ctx::{CsumEdit, Pkt},
    exit::Res,
    packet::{at, read16, write16},
    parse::{Ipv4, L4},
};

/// Rewrite one address (source or destination, at `addr_field` in the IPv4 header) and the
/// port/identifier, fixing the IPv4 and upper-layer checksums incrementally (RFC 1624).
///
/// The bytes are written first and the upper-layer checksum last, by offset: on tc the
/// checksum goes through `bpf_l4_csum_replace` (crate::ctx), after which no packet pointer
/// is valid.
#[inline(always)]
pub fn rewrite<C: Pkt>(
    ctx: &C,
    ip: &Ipv4,
    l4: &L4,
    addr_field: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    new_port: u16,
) -> Res<()> {
    let h: *mut [u8; IPV4_MIN_HLEN] = at(ctx, ip.off, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &mut *h };
    let ipsum = read16(h[IPV4_CSUM_OFF..].as_ptr());
    write16(
        h[IPV4_CSUM_OFF..].as_mut_ptr(),
        csum::replace4(ipsum, old_addr, new_addr),
    );
    h[addr_field..addr_field + 4].copy_from_slice(&new_addr);

    let port: *mut [u8; 2] = at(ctx, l4.off + l4.port_off as usize, Counter::DropBadL4)?;
    write16(port as *mut u8, new_port);
    let sum = l4.off + l4.csum_off as usize;
    let (from, to) = (u32::from_ne_bytes(old_addr), u32::from_ne_bytes(new_addr));
    let (old_port, new_port) = (l4.port as u32, new_port as u32);
    match ip.proto {
        // ICMP has no pseudo-header: only the identifier changes its checksum.
        IPPROTO_ICMP => ctx.l4_csum_replace(sum, old_port, new_port, CsumEdit::WORD),
        IPPROTO_UDP => {
            ctx.l4_csum_replace(sum, from, to, CsumEdit::ADDR.udp())?;
            ctx.l4_csum_replace(sum, old_port, new_port, CsumEdit::WORD.udp())
        }
        _ => {
            ctx.l4_csum_replace(sum, from, to, CsumEdit::ADDR)?;
            ctx.l4_csum_replace(sum, old_port, new_port, CsumEdit::WORD)
        }
    }
}
