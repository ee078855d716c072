//! ICMP messages the AFTR generates itself, sent down a softwire from 192.0.0.1 (RFC 6333
//! §6.5, checklist 4), rate limited per CPU: destination unreachable when a new mapping is
//! refused (RFC 5508 REQ-8 / RFC 6888 REQ-11, checklist 41) and time exceeded when the
//! inner TTL runs out here (checklist 9).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{
        bpf_ktime_get_ns, bpf_loop, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use dslite_common::{
    csum,
    maps::{AftrConfig, NatInKey, NatOutKey, PeerKey},
    proto::*,
    Counter,
};

use crate::{
    aftr::FromB4,
    exit::{bpf_call, Code, Exit, Res, LOOP_BREAK, LOOP_CONTINUE},
    forward::encapsulate_and_send,
    headers::{decrement_ttl, Ipv4},
    maps::{count, ICMP_BUCKET, NAT_IN, NAT_OUT},
    packet::{at, len, ptr_at, read16, write16},
};

/// The AFTR's own IPv4 address (RFC 6333 §6.5).
pub const AFTR_V4: [u8; 4] = [192, 0, 0, 1];
/// Outer IPv6 + new IPv4 + ICMP header: where the quoted packet starts.
const QUOTE_OFF: usize = ETH_HLEN + IPV6_HLEN + IPV4_MIN_HLEN + ICMP_MIN_LEN;

/// What a refusal quotes and where it goes.
pub struct Refusal {
    pub b4: [u8; 16],
    pub inside: [u8; 4],
    /// Offset of the refused packet's IPv4 header in the frame, and its header length.
    pub inner_off: usize,
    pub hlen: usize,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Next-hop MTU for a "fragmentation needed" (RFC 1191), else 0.
    pub mtu: u16,
}

/// One token from this CPU's ICMP bucket (`icmp_per_sec`, burst of the same size).
#[inline(always)]
fn take_token(cfg: &AftrConfig) -> bool {
    let rate = cfg.icmp_per_sec as u64;
    if rate == 0 {
        return false;
    }
    let Some(b) = ICMP_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map value: only this CPU touches it while the program runs.
    let b = unsafe { &mut *b };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let add = now.saturating_sub(b.refill_ns) * rate / 1_000_000_000;
    if add > 0 {
        b.tokens = (b.tokens as u64 + add).min(rate) as u32;
        b.refill_ns = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

/// Turn the refused packet into an ICMP error (`r.icmp_type`/`r.icmp_code`) quoting
/// its IPv4 header and first 8 payload bytes, addressed down the softwire it came from; the
/// caller routes it. Rate limited: the packet is just dropped. The refusal itself is
/// counted under `why` (a counter index) either way.
#[inline(never)]
pub fn send_unreachable(ctx: &XdpContext, cfg: &AftrConfig, r: &Refusal, why: u32) -> Code {
    let reason = Counter::from_index(why);
    if !take_token(cfg) {
        count(Counter::IcmpRateLimited);
        return Exit::Drop(reason).into();
    }
    count(reason);
    match build(ctx, cfg, r) {
        Ok(()) => {
            count(Counter::IcmpErrorSent);
            Code::OK
        }
        Err(e) => e.into(),
    }
}

/// Sum of `n` bytes (even, at most `max`) of the packet at `off`, as raw words.
#[inline(always)]
fn sum_words(ctx: &XdpContext, off: usize, n: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0usize;
    while i < (ICMP_MIN_LEN + 68) / 2 {
        if i * 2 >= n {
            break;
        }
        let Some(w) = ptr_at::<[u8; 2]>(ctx, off + i * 2) else {
            break;
        };
        sum += read16(w as *const u8) as u32;
        i += 1;
    }
    sum
}

#[inline(always)]
fn build(ctx: &XdpContext, cfg: &AftrConfig, r: &Refusal) -> Res<()> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let mut saved = unsafe { *eth };
    saved[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let quote_len = r.hlen + 8;
    // Move the head so that the refused IPv4 header lands right after the new headers.
    let delta = r.inner_off as i32 - QUOTE_OFF as i32;
    // SAFETY: the helper checks the new head against the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustHead));
    }
    let want = QUOTE_OFF + quote_len;
    let have = len(ctx);
    if have < want {
        return Err(Exit::Drop(Counter::DropBadL4));
    }
    // SAFETY: the helper checks the new tail against the frame.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - have as i32) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustHead));
    }
    let hdr: *mut [u8; QUOTE_OFF] = at(ctx, 0, Counter::DropAdjustHead)?;
    // SAFETY: bounds-checked by `at` after both adjustments. Written in place: stack copies
    // of these headers would not fit next to the NAT path's frames.
    let h = unsafe { &mut *hdr };
    h[..ETH_HLEN].copy_from_slice(&saved);
    let icmp_len = ICMP_MIN_LEN + quote_len;
    let v4_len = (IPV4_MIN_HLEN + icmp_len) as u16;
    let v6: &mut [u8; IPV6_HLEN] = (&mut h[ETH_HLEN..ETH_HLEN + IPV6_HLEN])
        .try_into()
        .unwrap_or_else(|_| unreachable!());
    write_softwire_ipv6_header(v6, 0, v4_len, cfg.hop_limit, &cfg.aftr_addr, &r.b4);
    let o = ETH_HLEN + IPV6_HLEN;
    h[o..o + 2].copy_from_slice(&[0x45, 0]);
    h[o + 2..o + 4].copy_from_slice(&v4_len.to_be_bytes());
    h[o + 4..o + 10].copy_from_slice(&[0, 0, 0, 0, 64, IPPROTO_ICMP]);
    h[o + 10..o + 12].copy_from_slice(&[0, 0]);
    h[o + 12..o + 16].copy_from_slice(&AFTR_V4);
    h[o + 16..o + 20].copy_from_slice(&r.inside);
    let c = !csum::fold(sum_words(ctx, o, IPV4_MIN_HLEN));
    let sum_p: *mut [u8; 2] = at(ctx, o + 10, Counter::DropAdjustHead)?;
    write16(sum_p as *mut u8, c);
    let o = o + IPV4_MIN_HLEN;
    let t: *mut [u8; ICMP_MIN_LEN] = at(ctx, o, Counter::DropAdjustHead)?;
    // SAFETY: bounds-checked by `at`.
    let [m0, m1] = r.mtu.to_be_bytes();
    // SAFETY: bounds-checked by `at`.
    unsafe { *t = [r.icmp_type, r.icmp_code, 0, 0, 0, 0, m0, m1] };
    let c = !csum::fold(sum_words(ctx, o, icmp_len));
    let sum_p: *mut [u8; 2] = at(ctx, o + 2, Counter::DropAdjustHead)?;
    write16(sum_p as *mut u8, c);
    Ok(())
}

/// Longest ICMP error translated (a full Ethernet payload).
const MAX_ICMP_LEN: usize = 1480;

/// Raw 16-bit word at `off`.
#[inline(always)]
fn word(ctx: &XdpContext, off: usize) -> Res<u16> {
    let p: *mut [u8; 2] = at(ctx, off, Counter::DropBadIcmpError)?;
    Ok(read16(p as *const u8))
}

#[inline(always)]
fn set_word(ctx: &XdpContext, off: usize, v: u16) -> Res<()> {
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
fn quoted(ctx: &XdpContext, ip: &Ipv4) -> Res<Quote> {
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
        proto: eh[9],
        src: [eh[12], eh[13], eh[14], eh[15]],
        dst: [eh[16], eh[17], eh[18], eh[19]],
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
fn quoted_icmp_type(ctx: &XdpContext, q: &Quote) -> Option<u8> {
    if q.proto != IPPROTO_ICMP {
        return None;
    }
    let t = ptr_at::<[u8; 2]>(ctx, q.emb + q.ehlen)?;
    // SAFETY: bounds-checked by `ptr_at`.
    Some(unsafe { (*t)[0] })
}

/// State of a checksum run over packet bytes, shared with [`sum_chunk`].
#[repr(C)]
struct SumLoop {
    xdp: *mut xdp_md,
    off: u64,
    n: u64,
    sum: u64,
    failed: u64,
}

/// `bpf_loop` callback: add the `i`-th 64-byte chunk (the last one zero-padded, which is
/// also the odd-length rule) to the sum, as 64-bit words folded later (RFC 1071 §2(C)).
/// 1 stops the loop.
unsafe extern "C" fn sum_chunk(i: u32, c: *mut c_void) -> i64 {
    // SAFETY: `c` is the `SumLoop` on the caller's stack (bpf_loop passes it through).
    let c = unsafe { &mut *(c as *mut SumLoop) };
    let done = i as u64 * 64;
    if done >= c.n {
        return LOOP_BREAK;
    }
    let left = c.n - done;
    let chunk = if left > 64 { 64 } else { left };
    // The verifier must see 1..=64 for the helper's length; LLVM knows `chunk` is and
    // drops any check, so hide the value and re-derive the range arithmetically.
    // SAFETY: a volatile read of a local.
    let chunk = unsafe { core::ptr::read_volatile(&chunk) };
    let chunk = (chunk.wrapping_sub(1) & 63) + 1;
    let mut buf = [0u64; 8];
    // SAFETY: the helper checks the read against the frame; `chunk` fits the buffer.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            c.xdp,
            (c.off + done) as u32,
            buf.as_mut_ptr().cast(),
            chunk as u32,
        )
    };
    if rc != 0 {
        c.failed = 1;
        return LOOP_BREAK;
    }
    let mut w = 0;
    while w < 8 {
        c.sum += (buf[w] & 0xffff_ffff) + (buf[w] >> 32);
        w += 1;
    }
    LOOP_CONTINUE
}

/// 1 if the `n` bytes at `off` (at most `MAX_ICMP_LEN`) sum to 0xffff: the whole ICMP
/// message (RFC 5508 REQ-3a). The chunks run under `bpf_loop`, so the verifier checks the
/// loop body once, not once per iteration and caller state.
#[inline(never)]
fn checksum_ok(ctx: &XdpContext, off: usize, n: usize) -> u32 {
    if n > MAX_ICMP_LEN {
        return 0;
    }
    let mut st = SumLoop {
        xdp: ctx.ctx,
        off: off as u64,
        n: n as u64,
        sum: 0,
        failed: 0,
    };
    // SAFETY: bpf_loop calls `sum_chunk` with a pointer to `st`, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_ICMP_LEN.div_ceil(64) as u32,
            sum_chunk as *mut c_void,
            &mut st as *mut SumLoop as *mut c_void,
            0,
        )
    };
    if st.failed != 0 {
        return 0;
    }
    let sum = (st.sum & 0xffff_ffff) + (st.sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    (csum::fold(sum as u32) == 0xffff) as u32
}

/// 1 if the IPv4 header of `hlen` bytes (options included) at `off` sums to 0xffff. A BPF
/// call returning a plain integer, so its loop exits meet the caller in one state.
#[inline(never)]
fn header_ok(ctx: &XdpContext, off: usize, hlen: usize) -> u32 {
    // Fresh copies: the verifier links an argument to the caller's register it came from.
    let hlen = hlen & 0x3c;
    let off = off & 0x7ff;
    let mut sum = 0u32;
    let mut i = 0usize;
    while i < 30 {
        if i * 2 >= hlen {
            break;
        }
        let Some(w) = ptr_at::<[u8; 2]>(ctx, off + i * 2) else {
            return 0;
        };
        sum += read16(w as *const u8) as u32;
        i += 1;
    }
    (csum::fold(sum) == 0xffff) as u32
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
fn set_addr(ctx: &XdpContext, off: usize, a: [u8; 4]) -> Res<()> {
    set_word(ctx, off, u16::from_ne_bytes([a[0], a[1]]))?;
    set_word(ctx, off + 2, u16::from_ne_bytes([a[2], a[3]]))
}

/// Apply `x` to the error at `ip` quoting `q`: the outer address (and the outer header
/// checksum; the ICMP checksum has no pseudo-header), the quoted address, its header
/// checksum, its port, and its L4 checksum when the quote holds it. Every word changed
/// inside the ICMP message is folded into the ICMP checksum as well.
#[inline(always)]
fn translate(ctx: &XdpContext, ip: &Ipv4, q: &Quote, x: &Xlate) -> Res<()> {
    let outer_sum = word(ctx, ip.off + 10)?;
    set_word(
        ctx,
        ip.off + 10,
        csum::replace4(outer_sum, x.outer_old, x.addr),
    )?;
    set_addr(ctx, ip.off + x.outer_field, x.addr)?;
    let mut isum = word(ctx, q.icmp + ICMP_CSUM_OFF)?;
    let old_ec = word(ctx, q.emb + 10)?;
    let new_ec = csum::replace4(old_ec, x.quote_old, x.addr);
    set_word(ctx, q.emb + 10, new_ec)?;
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
    /// An ICMP error from the internet about one of our mappings (RFC 5508 REQ-4, checklist
    /// 37-40): checked (the embedded IPv4 checksum, REQ-3), the embedded packet and the
    /// outer destination restored to the inside endpoint with every checksum fixed, and sent
    /// down the owning softwire. Errors never create, refresh or delete a mapping.
    pub fn error_inbound / error_inbound_call(ctx: &XdpContext, cfg: &AftrConfig, ip: &Ipv4) -> Res<u32>
        = error_inbound_inner, on_ok { count(Counter::IcmpErrorTranslated); };
}

#[inline(always)]
fn error_inbound_inner(ctx: &XdpContext, cfg: &AftrConfig, ip: &Ipv4) -> Res<u32> {
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
        if crate::aftr::peer_known(cfg, &mut key) == 0 {
            return Err(Exit::Drop(Counter::DropIcmpErrorMismatch));
        }
    }
    decrement_ttl(ctx, ip)?;
    // Outer destination and quoted source -> the inside endpoint.
    let x = Xlate {
        outer_field: 16,
        outer_old: ip.dst,
        quote_field: 12,
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
    /// A host's ICMP error about a packet it received through the AFTR (RFC 5508 REQ-5,
    /// checklist 39): the quoted packet's destination (the host's inside endpoint) and the
    /// outer source become the mapping's outside endpoint, every checksum follows, and it
    /// is ready to go to the internet (the caller decapsulates and routes it, so the routing
    /// frame does not stack on this one). It never refreshes the mapping (REQ-6). Gives
    /// the new outer source.
    pub fn error_outbound / error_outbound_call(ctx: &XdpContext, p: &FromB4) -> Res<[u8; 4]>
        = error_outbound_inner, on_ok { count(Counter::IcmpErrorTranslated); };
}

#[inline(always)]
fn error_outbound_inner(ctx: &XdpContext, p: &FromB4) -> Res<[u8; 4]> {
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
        outer_field: 12,
        outer_old: ip.src,
        quote_field: 16,
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
