//! ICMP errors in transit (RFC 5508): an error from the internet about a mapping goes to its
//! subscriber, a subscriber's error about an inbound packet goes out, each with the quoted
//! packet translated and every checksum fixed.

use dslite_common::{
    csum,
    maps::{AftrConfig, NatInKey, NatOutKey, PeerKey},
    proto::*,
    Counter,
};

use crate::{
    aftr::{filter::peer_known, parsed::FromB4},
    csum::{checksum_ok, header_ok, MAX_ICMP_LEN},
    ctx::Pkt,
    exit::{bpf_call, Exit, Res},
    maps::{count, NAT_IN, NAT_OUT},
    packet::{at, ptr_at, read16, write16},
    parse::{addr4, decrement_ttl, Ipv4},
    softwire::encapsulate_and_send,
};

/// Raw 16-bit word at `off`.
#[inline(always)]
fn word<C: Pkt>(ctx: &C, off: usize) -> Res<u16> {
    let p: *mut [u8; 2] = at(ctx, off, Counter::DropBadIcmpError)?;
    Ok(read16(p as *const u8))
}

#[inline(always)]
fn set_word<C: Pkt>(ctx: &C, off: usize, v: u16) -> Res<()> {
    let p: *mut [u8; 2] = at(ctx, off, Counter::DropBadIcmpError)?;
    write16(p as *mut u8, v);
    Ok(())
}

/// Where an ICMP error's quoted packet is, and what it says.
struct Quote {
    icmp: usize,
    icmp_len: usize,
    emb: usize,
    ehlen: usize,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    /// Offsets in the quoted L4 header: the source and destination ports (both the echo
    /// identifier for ICMP) and the checksum.
    sport_off: usize,
    dport_off: usize,
    l4sum_off: usize,
}

/// Locate and check the packet an ICMP error quotes: an IPv4 header (options included)
/// plus 8 bytes, whose own checksum holds, in a message whose ICMP checksum holds
/// (RFC 5508 REQ-3a).
#[inline(always)]
fn quoted<C: Pkt>(ctx: &C, ip: &Ipv4) -> Res<Quote> {
    let icmp = ip.off + ip.hlen;
    let icmp_len = ip.tot_len - ip.hlen;
    if !(ICMP_MIN_LEN + IPV4_MIN_HLEN + 8..=MAX_ICMP_LEN).contains(&icmp_len) {
        return Err(Exit::Drop(Counter::DropBadIcmpError));
    }
    let emb = icmp + ICMP_MIN_LEN;
    let e: *mut [u8; IPV4_MIN_HLEN] = at(ctx, emb, Counter::DropBadIcmpError)?;
    // SAFETY: bounds-checked by `at`.
    let eh = unsafe { &*e };
    let ehlen = ((eh[0] & 0x0f) as usize) * 4;
    if eh[0] >> 4 != 4 || ehlen < IPV4_MIN_HLEN || ICMP_MIN_LEN + ehlen + 8 > icmp_len {
        return Err(Exit::Drop(Counter::DropBadIcmpError));
    }
    // Only what the NAT translates can be quoted: TCP, UDP, or an echo (RFC 5508 §3.1). An
    // ICMP error quoting an ICMP error is never answered nor translated (RFC 1122 §3.2.2),
    // and tunnels or other protocols (4, 41, 47, 50, 132, ...) have no mapping.
    let (sport_off, dport_off, l4sum_off) = match eh[9] {
        IPPROTO_UDP => (0, 2, UDP_CSUM_OFF),
        IPPROTO_TCP => (0, 2, TCP_CSUM_OFF),
        IPPROTO_ICMP => (4, 4, ICMP_CSUM_OFF),
        _ => return Err(Exit::Drop(Counter::DropBadIcmpError)),
    };
    if eh[9] == IPPROTO_ICMP {
        let t: *mut [u8; 2] = at(ctx, emb + ehlen, Counter::DropBadIcmpError)?;
        // SAFETY: bounds-checked by `at`.
        let ty = unsafe { (*t)[0] };
        if ty != ICMP_ECHO_REQUEST && ty != ICMP_ECHO_REPLY {
            return Err(Exit::Drop(Counter::DropBadIcmpError));
        }
    }
    let q = Quote {
        icmp,
        icmp_len,
        emb,
        ehlen,
        sport_off,
        dport_off,
        l4sum_off,
        proto: eh[IPV4_PROTO_OFF],
        src: addr4!(eh, IPV4_SRC_OFF),
        dst: addr4!(eh, IPV4_DST_OFF),
    };
    if header_ok(ctx, emb, ehlen) == 0 || checksum_ok(ctx, icmp, icmp_len) == 0 {
        return Err(Exit::Drop(Counter::DropBadIcmpError));
    }
    Ok(q)
}

/// The quoted ICMP message's type (an echo request or reply, [`quoted`] checked), or None
/// when the quote is not ICMP. An error about our echo request quotes a request; a host's
/// error about an inbound echo quotes a reply.
#[inline(always)]
fn quoted_icmp_type<C: Pkt>(ctx: &C, q: &Quote) -> Option<u8> {
    if q.proto != IPPROTO_ICMP {
        return None;
    }
    let t = ptr_at::<[u8; 2], _>(ctx, q.emb + q.ehlen)?;
    // SAFETY: bounds-checked by `ptr_at`.
    Some(unsafe { (*t)[0] })
}

/// One ICMP error translation: an outer address and the matching quoted address become
/// `addr`, the quoted port or identifier becomes `port`.
struct Xlate {
    /// Offsets of the addresses in the outer and the quoted IPv4 headers (12 src, 16 dst).
    outer_field: usize,
    outer_old: [u8; 4],
    quote_field: usize,
    quote_old: [u8; 4],
    addr: [u8; 4],
    /// Offsets of the port/identifier and of the checksum in the quoted L4 header.
    port_off: usize,
    l4sum_off: usize,
    port_old: u16,
    port: u16,
}

#[inline(always)]
fn set_addr<C: Pkt>(ctx: &C, off: usize, a: [u8; 4]) -> Res<()> {
    set_word(ctx, off, u16::from_ne_bytes([a[0], a[1]]))?;
    set_word(ctx, off + 2, u16::from_ne_bytes([a[2], a[3]]))
}

/// Apply `x` to the error at `ip` quoting `q`: the outer address (and the outer header
/// checksum; the ICMP checksum has no pseudo-header), the quoted address, its header
/// checksum, its port, and its L4 checksum when the quote holds it. Every word changed
/// inside the ICMP message is folded into the ICMP checksum as well.
#[inline(always)]
fn translate<C: Pkt>(ctx: &C, ip: &Ipv4, q: &Quote, x: &Xlate) -> Res<()> {
    let outer_sum = word(ctx, ip.off + IPV4_CSUM_OFF)?;
    set_word(
        ctx,
        ip.off + IPV4_CSUM_OFF,
        csum::replace4(outer_sum, x.outer_old, x.addr),
    )?;
    set_addr(ctx, ip.off + x.outer_field, x.addr)?;
    let mut isum = word(ctx, q.icmp + ICMP_CSUM_OFF)?;
    let old_ec = word(ctx, q.emb + IPV4_CSUM_OFF)?;
    let new_ec = csum::replace4(old_ec, x.quote_old, x.addr);
    set_word(ctx, q.emb + IPV4_CSUM_OFF, new_ec)?;
    set_addr(ctx, q.emb + x.quote_field, x.addr)?;
    isum = csum::replace2(csum::replace4(isum, x.quote_old, x.addr), old_ec, new_ec);
    let el4 = q.emb + q.ehlen;
    set_word(ctx, el4 + x.port_off, x.port)?;
    isum = csum::replace2(isum, x.port_old, x.port);
    if ICMP_MIN_LEN + q.ehlen + x.l4sum_off + 2 <= q.icmp_len {
        let old = word(ctx, el4 + x.l4sum_off)?;
        let new = match q.proto {
            IPPROTO_ICMP => csum::replace2(old, x.port_old, x.port),
            IPPROTO_UDP => csum::udp_replace2(
                csum::udp_replace4(old, x.quote_old, x.addr),
                x.port_old,
                x.port,
            ),
            _ => csum::replace2(csum::replace4(old, x.quote_old, x.addr), x.port_old, x.port),
        };
        set_word(ctx, el4 + x.l4sum_off, new)?;
        isum = csum::replace2(isum, old, new);
    }
    set_word(ctx, q.icmp + ICMP_CSUM_OFF, isum)
}

bpf_call! {
    /// An ICMP error from the internet about one of our mappings (RFC 5508 REQ-4,
    /// REQ-3 to REQ-7): checked (the embedded IPv4 checksum, REQ-3), the embedded packet and the
    /// outer destination restored to the inside endpoint with every checksum fixed, and sent
    /// down the owning softwire. Errors never create, refresh or delete a mapping.
    pub fn error_inbound / error_inbound_call(ctx: &C, cfg: &AftrConfig, ip: &Ipv4) -> Res<u32>
        = error_inbound_inner, on_ok { count(Counter::IcmpErrorTranslated); };
}

#[inline(always)]
fn error_inbound_inner<C: Pkt>(ctx: &C, cfg: &AftrConfig, ip: &Ipv4) -> Res<u32> {
    let q = quoted(ctx, ip)?;
    let (emb, ehlen, eproto) = (q.emb, q.ehlen, q.proto);
    // Ours, so the quoted source is the outside endpoint, and the error is addressed to it:
    // anything else concerns nobody here.
    let esrc = q.src;
    if esrc != ip.dst || quoted_icmp_type(ctx, &q) == Some(ICMP_ECHO_REPLY) {
        return Err(Exit::Drop(Counter::DropIcmpErrorMismatch));
    }
    let el4 = emb + ehlen;
    // Port (TCP/UDP source) or echo identifier of the embedded packet.
    let (port_off, l4sum_off) = (q.sport_off, q.l4sum_off);
    let eport = word(ctx, el4 + port_off)?;
    let kin = NatInKey {
        outside_addr: esrc,
        outside_port: eport,
        proto: eproto,
        _pad: 0,
    };
    let m = match NAT_IN.get_ptr(&kin) {
        // SAFETY: map value pointer from the kernel; copied out at once.
        Some(v) => unsafe { *v },
        None => return Err(Exit::Drop(Counter::DropNoMapping)),
    };
    if cfg.filter_modes != 0 {
        // The error is about a packet sent to the quoted destination: it passes the mapping's
        // filter only if that remote is one the mapping talks to (RFC 5508 REQ-4 with
        // RFC 4787 REQ-8), so no outsider learns of, or disturbs, other flows.
        let mut key = PeerKey {
            outside_addr: esrc,
            outside_port: eport,
            proto: eproto,
            _pad: 0,
            remote_addr: q.dst,
            remote_port: word(ctx, el4 + q.dport_off)?,
            _pad2: 0,
        };
        if peer_known(cfg, &mut key) == 0 {
            return Err(Exit::Drop(Counter::DropIcmpErrorMismatch));
        }
    }
    decrement_ttl(ctx, ip)?;
    // Outer destination and quoted source -> the inside endpoint.
    let x = Xlate {
        outer_field: IPV4_DST_OFF,
        outer_old: ip.dst,
        quote_field: IPV4_SRC_OFF,
        quote_old: esrc,
        addr: m.inside_addr,
        port_off,
        l4sum_off,
        port_old: eport,
        port: m.inside_port,
    };
    translate(ctx, ip, &q, &x)?;
    encapsulate_and_send(ctx, ip, cfg.hop_limit, &cfg.aftr_addr, &m.b4)
}

bpf_call! {
    /// A host's ICMP error about a packet it received through the AFTR (RFC 5508 REQ-5): the quoted packet's destination (the host's inside endpoint) and the
    /// outer source become the mapping's outside endpoint, every checksum follows, and it
    /// is ready to go to the internet (the caller decapsulates and routes it, so the routing
    /// frame does not stack on this one). It never refreshes the mapping (REQ-6). Gives
    /// the new outer source.
    pub fn error_outbound / error_outbound_call(ctx: &C, p: &FromB4) -> Res<[u8; 4]>
        = error_outbound_inner, on_ok { count(Counter::IcmpErrorTranslated); };
}

#[inline(always)]
fn error_outbound_inner<C: Pkt>(ctx: &C, p: &FromB4) -> Res<[u8; 4]> {
    let ip = &p.ip;
    let q = quoted(ctx, ip)?;
    let (emb, ehlen, eproto) = (q.emb, q.ehlen, q.proto);
    // A packet the host received, so the quoted destination is the inside endpoint, and the
    // error goes back to the quoted source.
    let edst = q.dst;
    if q.src != ip.dst || quoted_icmp_type(ctx, &q) == Some(ICMP_ECHO_REQUEST) {
        return Err(Exit::Drop(Counter::DropIcmpErrorMismatch));
    }
    let el4 = emb + ehlen;
    // The inside endpoint in the quote: TCP/UDP destination port, or echo identifier.
    let (port_off, l4sum_off) = (q.dport_off, q.l4sum_off);
    let eport = word(ctx, el4 + port_off)?;
    let key = NatOutKey {
        b4: p.key.b4,
        inside_addr: edst,
        inside_port: eport,
        proto: eproto,
        _pad: 0,
    };
    let (oaddr, oport) = match NAT_OUT.get_ptr(&key) {
        // SAFETY: map value pointer from the kernel; read only (errors never refresh).
        Some(v) => unsafe { ((*v).outside_addr, (*v).outside_port) },
        None => return Err(Exit::Drop(Counter::DropNoMapping)),
    };
    decrement_ttl(ctx, ip)?;
    // Outer source and quoted destination -> the outside endpoint.
    let x = Xlate {
        outer_field: IPV4_SRC_OFF,
        outer_old: ip.src,
        quote_field: IPV4_DST_OFF,
        quote_old: edst,
        addr: oaddr,
        port_off,
        l4sum_off,
        port_old: eport,
        port: oport,
    };
    translate(ctx, ip, &q, &x)?;
    Ok(oaddr)
}
