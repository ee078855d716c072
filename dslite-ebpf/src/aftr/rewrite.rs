//! The NAT rewrite: one address and one port or identifier, with the IPv4 and upper-layer
//! checksums fixed incrementally.

use aya_ebpf::programs::XdpContext;
use dslite_common::{csum, proto::*, Counter};

use crate::{
    exit::Res,
    packet::{at, read16, write16},
    parse::{Ipv4, L4},
};

/// Rewrite one address (source or destination, at `addr_field` in the IPv4 header) and the
/// port/identifier, fixing the IPv4 and upper-layer checksums incrementally (RFC 1624).
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
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

    let t: *mut [u8; ICMP_MIN_LEN] = at(ctx, l4.off, Counter::DropBadL4)?;
    // SAFETY: bounds-checked by `at`.
    let t = unsafe { &mut *t };
    write16(t[l4.port_off..].as_mut_ptr(), new_port);
    let sum_p: *mut [u8; 2] = at(ctx, l4.off + l4.csum_off, Counter::DropBadL4)?;
    // SAFETY: bounds-checked by `at`.
    let sum_p = unsafe { &mut *sum_p };
    let old = read16(sum_p.as_ptr());
    let new = match ip.proto {
        // ICMP has no pseudo-header: only the identifier changes its checksum.
        IPPROTO_ICMP => csum::replace2(old, l4.port, new_port),
        IPPROTO_UDP => csum::udp_replace2(
            csum::udp_replace4(old, old_addr, new_addr),
            l4.port,
            new_port,
        ),
        _ => csum::replace2(csum::replace4(old, old_addr, new_addr), l4.port, new_port),
    };
    write16(sum_p.as_mut_ptr(), new);
    Ok(())
}
