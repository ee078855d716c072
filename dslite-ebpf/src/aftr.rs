//! AFTR (RFC 6333 §6): softwire packets from B4s are decapsulated and source-NATed toward
//! the internet; replies to pool addresses are translated back and encapsulated to the B4.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_ns, maps::lpm_trie::Key,
    programs::XdpContext,
};
use dslite_common::{
    csum,
    maps::{AftrConfig, NatInKey, NatOutKey, NatOutValue},
    nat::{candidate_port, pool_index, port_hash, PORT_SEARCH_TRIES},
    proto::*,
    Counter,
};

use crate::{
    forward::{decapsulate, encapsulate, route_and_redirect},
    headers::{decrement_ttl, ethernet, ipv4, ipv6, Ipv4, L3, V6},
    maps::{count, count_n, AFTR_CONFIG, B4_ALLOW, NAT_IN, NAT_OUT, POOL, POOL_INDEX},
    packet::{at, len, read16, write16, Exit, Res},
};

const EEXIST: i32 = -17;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> Res<u32> {
    let cfg = match AFTR_CONFIG.get(0) {
        Some(c) if c.pool_len != 0 => *c,
        _ => {
            // Cold path (only before the controller wrote the config): safe to log.
            aya_log_ebpf::warn!(ctx, "dslite_aftr: packet before configuration, dropped");
            return Err(Exit::Drop(Counter::DropNotConfigured));
        }
    };
    match ethernet(ctx)? {
        L3::V6 => from_b4(ctx, &cfg),
        L3::V4 => from_internet(ctx, &cfg),
    }
}

/// Where the NAT reads and writes in the upper-layer header.
struct L4 {
    off: usize,
    /// Offset of the port (or ICMP identifier) the NAT rewrites, from `off`.
    port_off: usize,
    csum_off: usize,
    port: u16,
}

/// Locate the translatable field: the source port (outbound) or destination port (inbound)
/// of TCP/UDP, or the ICMP echo identifier (RFC 5508 §3.1, checklist 36).
#[inline(always)]
fn l4(ctx: &XdpContext, ip: &Ipv4, outbound: bool) -> Res<L4> {
    let off = ip.off + ip.hlen;
    let (need, port_off, csum_off) = match ip.proto {
        IPPROTO_TCP => (TCP_MIN_LEN, if outbound { 0 } else { 2 }, TCP_CSUM_OFF),
        IPPROTO_UDP => (UDP_LEN, if outbound { 0 } else { 2 }, UDP_CSUM_OFF),
        IPPROTO_ICMP => (ICMP_MIN_LEN, 4, ICMP_CSUM_OFF),
        _ => return Err(Exit::Drop(Counter::DropUnsupportedProto)),
    };
    if ip.tot_len < ip.hlen + need {
        return Err(Exit::Drop(Counter::DropBadL4));
    }
    let h: *mut [u8; ICMP_MIN_LEN] = at(ctx, off, Counter::DropBadL4)?;
    if ip.proto == IPPROTO_TCP {
        let _: *mut [u8; TCP_MIN_LEN] = at(ctx, off, Counter::DropBadL4)?;
    }
    // SAFETY: bounds-checked by `at` (8 bytes: enough for ports, ICMP type and id).
    let h = unsafe { &*h };
    if ip.proto == IPPROTO_ICMP {
        let want = if outbound {
            ICMP_ECHO_REQUEST
        } else {
            ICMP_ECHO_REPLY
        };
        if h[0] != want {
            return Err(Exit::Drop(Counter::DropIcmpType));
        }
    }
    Ok(L4 {
        off,
        port_off,
        csum_off,
        port: read16(h[port_off..].as_ptr()),
    })
}

/// Rewrite one address (source or destination, at `addr_field` in the IPv4 header) and the
/// port/identifier, fixing the IPv4 and upper-layer checksums incrementally (RFC 1624).
#[inline(always)]
fn rewrite(
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
    let ipsum = read16(h[10..].as_ptr());
    write16(
        h[10..].as_mut_ptr(),
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

/// B4 -> internet: decapsulate, map, source-translate, route.
#[inline(always)]
fn from_b4(ctx: &XdpContext, cfg: &AftrConfig) -> Res<u32> {
    let sw = match ipv6(ctx)? {
        V6::Softwire(sw) if sw.dst == cfg.aftr_addr => sw,
        _ => return Err(Exit::Pass(Counter::PassNotSoftwire)),
    };
    if B4_ALLOW.get(Key::new(128, sw.src)).is_none() {
        return Err(Exit::Drop(Counter::DropB4NotAllowed));
    }
    let ip = ipv4(ctx, sw.inner_off, sw.inner_avail)?;
    if ip.fragment {
        return Err(Exit::Drop(Counter::DropIpv4Fragment));
    }
    let l4 = l4(ctx, &ip, true)?;
    let key = NatOutKey {
        b4: sw.src,
        inside_addr: ip.src,
        inside_port: l4.port,
        proto: ip.proto,
        _pad: 0,
    };
    // TTL first: a packet that cannot be forwarded must not create a mapping.
    decrement_ttl(ctx, &ip)?;
    let (out_addr, out_port) = lookup_or_create(&key, cfg)?;
    rewrite(ctx, &ip, &l4, 12, ip.src, out_addr, out_port)?;
    decapsulate(ctx, sw.inner_off - ETH_HLEN)?;
    let action = route_and_redirect(ctx, false, &out_addr, &ip.dst)?;
    count(Counter::AftrOutPackets);
    count_n(Counter::AftrOutBytes, sw.outer_len as u64);
    Ok(action)
}

/// Find this softwire endpoint's mapping, or create one here in XDP: the first packet never
/// waits on userspace. The outside port search is bounded (`PORT_SEARCH_TRIES`). NAT_IN is
/// claimed first with BPF_NOEXIST (so an outside port has one owner), then NAT_OUT with
/// BPF_NOEXIST: when two CPUs race on one new flow, the loser releases its port and adopts
/// the winner's mapping, so the flow ends with exactly one mapping.
#[inline(always)]
fn lookup_or_create(key: &NatOutKey, cfg: &AftrConfig) -> Res<([u8; 4], u16)> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = NAT_OUT.get_ptr_mut(key) {
        // SAFETY: map value pointer from the kernel; outbound refreshes (RFC 4787 REQ-6).
        unsafe {
            (*v).last_seen_ns = now;
            return Ok(((*v).outside_addr, (*v).outside_port));
        }
    }
    let idx = pool_index(key, cfg.hash_seed, cfg.pool_len);
    let addr = match POOL.get(idx) {
        Some(a) => *a,
        None => return Err(Exit::Drop(Counter::DropNotConfigured)),
    };
    let hash = port_hash(key, cfg.hash_seed);
    let back = key.inbound_value();
    let mut attempt = 0;
    while attempt < PORT_SEARCH_TRIES {
        let port = candidate_port(hash, attempt, cfg.port_lo, cfg.port_hi).to_be();
        let kin = key.inbound_key(addr, port);
        match NAT_IN.insert(&kin, &back, BPF_NOEXIST as u64) {
            Ok(()) => {
                let out = NatOutValue {
                    outside_addr: addr,
                    outside_port: port,
                    _pad: 0,
                    created_ns: now,
                    last_seen_ns: now,
                };
                return match NAT_OUT.insert(key, &out, BPF_NOEXIST as u64) {
                    Ok(()) => {
                        count(Counter::NatMappingCreated);
                        Ok((addr, port))
                    }
                    Err(e) => {
                        let _ = NAT_IN.remove(&kin);
                        if e != EEXIST {
                            return Err(Exit::Drop(Counter::DropMappingTableFull));
                        }
                        count(Counter::NatMappingRaceLost);
                        match NAT_OUT.get_ptr(key) {
                            // SAFETY: map value pointer from the kernel.
                            Some(v) => unsafe { Ok(((*v).outside_addr, (*v).outside_port)) },
                            None => Err(Exit::Drop(Counter::DropMappingTableFull)),
                        }
                    }
                };
            }
            Err(EEXIST) => {}
            Err(_) => return Err(Exit::Drop(Counter::DropMappingTableFull)),
        }
        attempt += 1;
    }
    Err(Exit::Drop(Counter::DropPortsExhausted))
}

/// Internet -> B4: reverse-translate a packet to a pool address and encapsulate it to the
/// softwire that owns the mapping. Filtering is endpoint-independent (RFC 4787 REQ-8).
#[inline(always)]
fn from_internet(ctx: &XdpContext, cfg: &AftrConfig) -> Res<u32> {
    let ip = ipv4(ctx, ETH_HLEN, len(ctx) - ETH_HLEN)?;
    if POOL_INDEX.get_ptr(ip.dst).is_none() {
        return Err(Exit::Pass(Counter::PassNotPool));
    }
    if ip.fragment {
        return Err(Exit::Drop(Counter::DropIpv4Fragment));
    }
    let l4 = l4(ctx, &ip, false)?;
    let kin = NatInKey {
        outside_addr: ip.dst,
        outside_port: l4.port,
        proto: ip.proto,
        _pad: 0,
    };
    let m = match NAT_IN.get_ptr(&kin) {
        // SAFETY: map value pointer from the kernel; copied out at once.
        Some(v) => unsafe { *v },
        None => return Err(Exit::Drop(Counter::DropNoMapping)),
    };
    decrement_ttl(ctx, &ip)?;
    rewrite(ctx, &ip, &l4, 16, ip.dst, m.inside_addr, m.inside_port)?;
    // Trim nothing: the inner packet is exactly tot_len; any Ethernet padding stays outside
    // the IPv6 payload length and is ignored by the receiver.
    encapsulate(
        ctx,
        ip.tos,
        ip.tot_len as u16,
        cfg.hop_limit,
        &cfg.aftr_addr,
        &m.b4,
    )?;
    let outer = (IPV6_HLEN + ip.tot_len) as u64;
    let action = route_and_redirect(ctx, true, &cfg.aftr_addr, &m.b4)?;
    count(Counter::AftrInPackets);
    count_n(Counter::AftrInBytes, outer);
    Ok(action)
}
