//! AFTR (RFC 6333 §6): softwire packets from B4s are decapsulated and source-NATed toward
//! the internet; replies to pool addresses are translated back and encapsulated to the B4.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key, programs::XdpContext};
use dslite_common::{
    csum,
    maps::{
        AftrConfig, FragBudget, FragKey, NatInKey, NatOutKey, PeerKey, AFTR_INBOUND_REFRESH,
        AFTR_LOG_DESTINATIONS, AFTR_LOG_SESSIONS, B4_DENY,
    },
    nat::{filter_mode, subscriber_of, tcp_bits, FILTER_APDF, FILTER_EIF},
    proto::*,
    slow::SLOW_V4_FRAGMENT,
    Counter,
};

use crate::{
    exit::{bpf_call, too_big_mtu, Code, Endpoint, Exit, HighPort, Res, Why, ICMP_ERROR},
    forward::{decapsulate, encapsulate_and_send, redirect_v4, redirect_v6, v4_route_mtu},
    headers::{decrement_ttl, ethernet, ipv4, ipv6, Ipv4, Softwire, L3},
    icmp::{send_unreachable, Refusal, AFTR_V4},
    maps::{
        count, count_n, AFTR_CONFIG, B4_ALLOW, DENY_V4, FRAG_BUDGET, FRAG_CHAINS, NAT_IN, NAT_OUT,
        PEERS, POOL_INDEX,
    },
    nat::lookup_or_create,
    packet::{at, len, read16, write16},
    slow::{from_slow_path, to_controller},
};

/// Most fragments one chain from the internet may pass: a 64 KiB datagram in 1280-byte
/// fragments needs 52.
const MAX_FRAGMENTS_PER_CHAIN: u64 = 64;

/// True when the packet came in on `want` (0: any), or from the slow path's TAP.
#[inline(always)]
fn on_interface(ctx: &XdpContext, want: u32) -> bool {
    // SAFETY: reading the ingress ifindex from the context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    want == 0 || ingress == want || from_slow_path(ctx)
}

/// Take one token from `key`'s fragment bucket (`frag_per_sec` per second, that burst);
/// 1 if the fragment may go on. A BPF call: the bucket's temporaries stay off the callers'
/// frames.
#[inline(never)]
fn fragment_budget(key: &[u8; 16], cfg: &AftrConfig) -> u32 {
    let rate = cfg.frag_per_sec as u64;
    if rate == 0 {
        return 1;
    }
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    let Some(b) = FRAG_BUDGET.get_ptr_mut(key) else {
        let fresh = FragBudget {
            tokens: cfg.frag_per_sec - 1,
            _pad: 0,
            refill_ns: now,
        };
        // A full LRU evicts its oldest bucket: a flood of sources cannot refuse new ones.
        let _ = FRAG_BUDGET.insert(key, &fresh, 0);
        return 1;
    };
    // SAFETY: map value pointer from the kernel. Not atomic: two CPUs may share a token.
    let b = unsafe { &mut *b };
    let add = now.saturating_sub(b.refill_ns) * rate / 1_000_000_000;
    if add > 0 {
        b.tokens = (b.tokens as u64 + add).min(rate) as u32;
        b.refill_ns = now;
    }
    if b.tokens == 0 {
        return 0;
    }
    b.tokens -= 1;
    1
}

/// The subscriber's fragment budget, by its B4 address.
#[inline(never)]
fn subscriber_fragment_budget(b4: &[u8; 16], cfg: &AftrConfig) -> u32 {
    let sub = subscriber_of(b4, &cfg.subscriber_mask);
    fragment_budget(&sub, cfg)
}

/// Sources no internet packet may have (RFC 6890): "this network", loopback, the IETF
/// protocol assignments (an outsider posing as the AFTR's 192.0.0.1), multicast, reserved
/// and broadcast. The kernel would drop them when routing; XDP forwards first, so it checks.
#[inline(always)]
fn reserved_source(src: &[u8; 4]) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] >= 224 || (src[0] == 192 && src[1] == 0 && src[2] == 0)
}

/// 1 if a subscriber may send to `dst` (RFC 6333 §6.1 gives the AFTR a host's duties too:
/// nothing a subscriber sends reaches the AFTR's own stack, special-purpose ranges
/// (RFC 6890) or the operator's `--deny-destination` ranges).
#[inline(never)]
fn destination_allowed(dst: &[u8; 4]) -> u32 {
    DENY_V4.get(Key::new(32, *dst)).is_none() as u32
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> Res<u32> {
    // A reference into the map value: copying the config would cost main's stack frame.
    let cfg = match AFTR_CONFIG.get(0) {
        Some(c) if c.pool_len != 0 => c,
        _ => {
            // Cold path (only before the controller wrote the config): safe to log.
            aya_log_ebpf::warn!(ctx, "dslite_aftr: packet before configuration, dropped");
            return Err(Exit::Drop(Counter::DropNotConfigured));
        }
    };
    match ethernet(ctx)? {
        L3::V6 => from_b4(ctx, cfg),
        L3::V4 => {
            let mut ip = Ipv4::default();
            match from_internet(ctx, cfg, &mut ip)? {
                // An ICMP error: translated by a sibling call, so its frame never stacks
                // on `from_internet`'s.
                ICMP_ERROR => crate::icmp::error_inbound_call(ctx, cfg, &ip),
                action => Ok(action),
            }
        }
    }
}

/// Where the NAT reads and writes in the upper-layer header.
#[derive(Clone, Copy, Default)]
struct L4 {
    off: usize,
    /// Offset of the port (or ICMP identifier) the NAT rewrites, from `off`.
    port_off: usize,
    csum_off: usize,
    port: u16,
    /// TCP flags byte (0 for UDP and ICMP).
    tcp_flags: u8,
}

/// Locate the translatable field: the source port (outbound) or destination port (inbound)
/// of TCP/UDP, or the ICMP echo identifier (RFC 5508 §3.1, checklist 36).
#[inline(always)]
fn l4(ctx: &XdpContext, ip: &Ipv4, outbound: bool, l: &mut L4) -> Res<()> {
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
    let mut tcp_flags = 0;
    let l4_len = ip.tot_len - ip.hlen;
    if ip.proto == IPPROTO_TCP {
        let t: *mut [u8; TCP_MIN_LEN] = at(ctx, off, Counter::DropBadL4)?;
        // SAFETY: bounds-checked by `at`.
        let (flags, data_off) = unsafe { ((*t)[13], (((*t)[12] >> 4) as usize) * 4) };
        // The header must be a header (RFC 9293 §3.1): no mapping for garbage.
        if data_off < TCP_MIN_LEN || data_off > l4_len {
            return Err(Exit::Drop(Counter::DropBadL4));
        }
        tcp_flags = flags;
    } else if ip.proto == IPPROTO_UDP {
        // SAFETY: bounds-checked by `at` (8 bytes).
        let udp_len = unsafe { u16::from_be_bytes([(*h)[4], (*h)[5]]) } as usize;
        // A first fragment carries only part of the datagram its length counts.
        if udp_len < UDP_LEN || (udp_len > l4_len && !ip.fragment) {
            return Err(Exit::Drop(Counter::DropBadL4));
        }
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
    l.off = off;
    l.port_off = port_off;
    l.csum_off = csum_off;
    l.port = read16(h[port_off..].as_ptr());
    l.tcp_flags = tcp_flags;
    Ok(())
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

/// What the B4 -> internet path keeps from parsing.
pub struct FromB4 {
    pub key: NatOutKey,
    /// The source's outside address once mapped (for hairpinning).
    out_addr: [u8; 4],
    pub ip: Ipv4,
    l4: L4,
    pub inner_off: usize,
    outer_len: usize,
    /// For an ICMP 3/4 refusal: the next-hop MTU it reports.
    pub mtu: u32,
}

/// Parse and check a softwire packet from a B4 into `p`. A BPF call of its own: its
/// temporaries are off the stack while the NAT search runs.
#[inline(never)]
fn parse_from_b4(ctx: &XdpContext, cfg: &AftrConfig, p: &mut FromB4) -> Code {
    parse_from_b4_inner(ctx, cfg, p).into()
}

#[inline(always)]
fn parse_from_b4_inner(ctx: &XdpContext, cfg: &AftrConfig, p: &mut FromB4) -> Res<()> {
    let mut sw = Softwire::default();
    let parsed = ipv6(ctx, &mut sw);
    if let Err(Exit::Pass(Counter::PassIpv6Fragment)) = parsed {
        // The addresses are in the fixed header: a fragment for the softwire endpoint is
        // checked like a whole packet before it reaches the kernel's reassembly, and each
        // subscriber's fragments are budgeted (RFC 6333 §6.3, RFC 8900 §4.5).
        if sw.dst == cfg.aftr_addr {
            source_allowed(ctx, cfg, &sw.src)?;
            if subscriber_fragment_budget(&sw.src, cfg) == 0 {
                return Err(Exit::Drop(Counter::DropFragmentBudget));
            }
        }
    }
    parsed?;
    if !sw.is_softwire || sw.dst != cfg.aftr_addr {
        return Err(Exit::Pass(Counter::PassNotSoftwire));
    }
    source_allowed(ctx, cfg, &sw.src)?;
    ipv4(ctx, sw.inner_off, sw.inner_avail, &mut p.ip)?;
    if p.ip.fragment {
        // Ports are in the first fragment only: the slow path reassembles (RFC 4787
        // REQ-14), within the subscriber's budget.
        if subscriber_fragment_budget(&sw.src, cfg) == 0 {
            return Err(Exit::Drop(Counter::DropFragmentBudget));
        }
        return Err(Exit::Pass(Counter::SlowV4Fragment));
    }
    p.key.b4 = sw.src;
    p.inner_off = sw.inner_off;
    if p.ip.proto == IPPROTO_ICMP {
        let t: *mut [u8; 2] = at(ctx, p.ip.off + p.ip.hlen, Counter::DropBadL4)?;
        // SAFETY: bounds-checked by `at`.
        let ty = unsafe { (*t)[0] };
        if ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAM_PROBLEM {
            // A host's ICMP error: no mapping of its own (`key` holds the softwire only).
            return Err(Exit::Pass(Counter::IcmpErrorTranslated));
        }
    }
    l4(ctx, &p.ip, true, &mut p.l4)?;
    p.key.inside_addr = p.ip.src;
    p.key.inside_port = p.l4.port;
    p.key.proto = p.ip.proto;
    p.inner_off = sw.inner_off;
    p.outer_len = sw.outer_len;
    Ok(())
}

/// A softwire's source must be in `B4_ALLOW` (RFC 6333 §11), not one of the AFTR host's own
/// addresses (the controller adds those as denying /128 entries), and the packet must have
/// come in on the tunnel interface.
#[inline(always)]
fn source_allowed(ctx: &XdpContext, cfg: &AftrConfig, src: &[u8; 16]) -> Res<()> {
    if !on_interface(ctx, cfg.tunnel_ifindex) {
        return Err(Exit::Drop(Counter::DropWrongInterface));
    }
    match B4_ALLOW.get(Key::new(128, *src)) {
        None => Err(Exit::Drop(Counter::DropB4NotAllowed)),
        Some(v) if *v == B4_DENY => Err(Exit::Drop(Counter::DropB4SourceLocal)),
        Some(_) => Ok(()),
    }
}

/// B4 -> internet: decapsulate, map, source-translate, route. A BPF call of its own, so
/// the two directions do not share (and add up) one stack frame.
#[inline(never)]
fn from_b4(ctx: &XdpContext, cfg: &AftrConfig) -> Res<u32> {
    let mut p = FromB4 {
        key: NatOutKey::default(),
        out_addr: [0; 4],
        ip: Ipv4::default(),
        l4: L4::default(),
        inner_off: 0,
        outer_len: 0,
        mtu: 0,
    };
    let code = parse_from_b4(ctx, cfg, &mut p);
    if code == Code::from(Exit::Pass(Counter::SlowV4Fragment)) {
        return to_controller(ctx, SLOW_V4_FRAGMENT, 0);
    }
    // `IcmpErrorTranslated` as a "pass" is parse's signal for a host's ICMP error: a code
    // rather than a flag in `p`, whose one-byte store would blur the verifier's view of the
    // stack slot around it.
    let icmp_error = Code::from(Exit::Pass(Counter::IcmpErrorTranslated));
    if !code.is_ok() && code != icmp_error {
        return Err(code.exit());
    }
    // 192.0.0.1 answers echo requests (below); nothing else, an ICMP error included, goes
    // to it or to any other denied destination.
    if (p.ip.dst != AFTR_V4 || code == icmp_error) && destination_allowed(&p.ip.dst) == 0 {
        return Err(Exit::Drop(Counter::DropDeniedDestination));
    }
    if code == icmp_error {
        // A host's ICMP error about an inbound packet (RFC 5508 REQ-5, checklist 39).
        let outside = crate::icmp::error_outbound_call(ctx, &p)?;
        decapsulate(ctx, p.inner_off - ETH_HLEN)?;
        return redirect_v4(ctx, &outside, &p.ip.dst);
    }
    if p.ip.dst == AFTR_V4 {
        // Ping to the AFTR's own 192.0.0.1 (checklist 43); nothing else is for it.
        return echo_reply_call(ctx, cfg, &p);
    }
    // TTL first: a packet that cannot be forwarded must not create a mapping. One that
    // expires here is answered with a Time Exceeded from 192.0.0.1 (checklist 9), so
    // traceroute shows the AFTR.
    if p.ip.ttl <= 1 {
        let mut action = 0;
        let why = Why::new(Counter::DropTtlExceeded, ICMP_TIME_EXCEEDED, 0);
        return refuse(ctx, cfg, &p, why, &mut action).with(action);
    }
    if p.ip.df && p.ip.tot_len > cfg.v4_mtu as usize {
        // Larger than the internet side allows and not to be fragmented: an ICMP 3/4 with
        // the route's MTU goes back down the softwire (RFC 4787 REQ-13, checklist 14), and
        // no mapping is made for it.
        let mtu = v4_route_mtu(ctx, &p.ip.dst, p.ip.tot_len as u32);
        if mtu != 0 {
            p.mtu = mtu;
            let mut action = 0;
            let why = Why::new(Counter::DropV4TooBig, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
            return refuse(ctx, cfg, &p, why, &mut action).with(action);
        }
    }
    decrement_ttl(ctx, &p.ip)?;
    let mut created = 0u32;
    let tcp = tcp_bits(p.l4.tcp_flags, true);
    let (out_addr, out_port) = match lookup_or_create(&p.key, cfg, tcp, &mut created) {
        Ok(m) => m,
        Err(Exit::Drop(
            c @ (Counter::DropQuotaExceeded
            | Counter::DropPoolExhausted
            | Counter::DropSessionLimit
            | Counter::DropRateLimit
            | Counter::DropMappingTableFull),
        )) => {
            // Refused: tell the host, down its softwire (RFC 5508 REQ-8, checklist 41).
            let mut action = 0;
            let why = Why::new(c, ICMP_DEST_UNREACH, cfg.icmp_code);
            return refuse(ctx, cfg, &p, why, &mut action).with(action);
        }
        Err(e) => return Err(e),
    };
    p.out_addr = out_addr;
    if created != 0 && cfg.flags & AFTR_LOG_SESSIONS != 0 {
        log_mapping(ctx, cfg, &p, out_port as u32);
    }
    if p.ip.proto == IPPROTO_TCP && cfg.mss != 0 {
        crate::mss::clamp(ctx, p.l4.off, cfg.mss);
    }
    if cfg.filter_modes != 0 {
        note_peer(ctx, cfg, &p, out_port as u32);
    }
    if POOL_INDEX.get_ptr(p.ip.dst).is_some() {
        // To another subscriber's public endpoint: hairpin it here (RFC 4787 REQ-9).
        return hairpin_call(ctx, cfg, &p, HighPort::new(out_port));
    }
    rewrite(ctx, &p.ip, &p.l4, 12, p.ip.src, out_addr, out_port)?;
    decapsulate(ctx, p.inner_off - ETH_HLEN)?;
    let action = redirect_v4(ctx, &out_addr, &p.ip.dst)?;
    count(Counter::AftrOutPackets);
    count_n(Counter::AftrOutBytes, p.outer_len as u64);
    Ok(action)
}

/// Answer a packet the AFTR will not forward with an ICMP error down its softwire (`why`:
/// the counter, ICMP type and code). Its own BPF call: the quote's bookkeeping stays off
/// `from_b4`'s stack.
#[inline(never)]
fn refuse(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4, why: Why, action: &mut u32) -> Code {
    let r = Refusal {
        b4: p.key.b4,
        inside: p.key.inside_addr,
        inner_off: p.ip.off,
        hlen: p.ip.hlen,
        icmp_type: why.icmp_type(),
        icmp_code: why.icmp_code(),
        mtu: p.mtu as u16,
    };
    let code = send_unreachable(ctx, cfg, &r, why.counter());
    if !code.is_ok() {
        return code;
    }
    match redirect_v6(ctx, &cfg.aftr_addr, &r.b4) {
        // A quote is far below any IPv6 MTU; should a route say otherwise, drop it.
        Ok(a) if too_big_mtu(a).is_some() => Exit::Drop(Counter::DropV4TooBig).into(),
        Ok(a) => {
            *action = a;
            Code::OK
        }
        Err(e) => e.into(),
    }
}

bpf_call! {
    /// Answer an echo request to 192.0.0.1 down the softwire it came from.
    fn echo_reply / echo_reply_call(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4) -> Res<u32>
        = echo_reply_inner, on_ok { count(Counter::IcmpEchoAnswered); };
}

#[inline(always)]
fn echo_reply_inner(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4) -> Res<u32> {
    if p.ip.proto != IPPROTO_ICMP {
        return Err(Exit::Drop(Counter::DropUnsupportedProto));
    }
    // l4() accepted only an echo request. Type 8 -> 0; swapping the addresses leaves the IPv4
    // checksum as it is; the TTL becomes 64.
    let t: *mut [u8; 2] = at(ctx, p.l4.off, Counter::DropBadL4)?;
    let sum: *mut [u8; 2] = at(ctx, p.l4.off + ICMP_CSUM_OFF, Counter::DropBadL4)?;
    // SAFETY: bounds-checked by `at`.
    unsafe {
        let old = read16(t as *const u8);
        (*t)[0] = ICMP_ECHO_REPLY;
        let new = read16(t as *const u8);
        write16(
            sum as *mut u8,
            csum::replace2(read16(sum as *const u8), old, new),
        );
    }
    let h: *mut [u8; IPV4_MIN_HLEN] = at(ctx, p.ip.off, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &mut *h };
    let old = u16::from_ne_bytes([h[8], h[9]]);
    h[8] = 64;
    let c = csum::replace2(
        read16(h[10..].as_ptr()),
        old,
        u16::from_ne_bytes([h[8], h[9]]),
    );
    write16(h[10..].as_mut_ptr(), c);
    h[12..16].copy_from_slice(&AFTR_V4);
    h[16..20].copy_from_slice(&p.key.inside_addr);
    decapsulate(ctx, p.inner_off - ETH_HLEN)?;
    encapsulate_and_send(ctx, &p.ip, cfg.hop_limit, &cfg.aftr_addr, &p.key.b4)
}

bpf_call! {
    /// Hairpinning (RFC 4787 REQ-9/9a, RFC 5382 REQ-8, checklist 22): a packet from one
    /// subscriber to a public endpoint another subscriber holds is translated both ways here, in
    /// XDP, and sent down the owner's softwire with the sender's outside address:port as its
    /// source. `out_port` is the sender's outside port.
    fn hairpin / hairpin_call(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4, out_port: HighPort) -> Res<u32>
    = hairpin_inner;
}

#[inline(always)]
fn hairpin_inner(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4, out_port: HighPort) -> Res<u32> {
    let out_port = out_port.port();
    // Only TCP and UDP name a destination port; an echo request has no owner to find.
    if p.ip.proto != IPPROTO_TCP && p.ip.proto != IPPROTO_UDP {
        return Err(Exit::Drop(Counter::DropNoMapping));
    }
    let d: *mut [u8; 4] = at(ctx, p.l4.off, Counter::DropBadL4)?;
    // SAFETY: bounds-checked by `at`.
    let dport = read16(unsafe { (d as *const u8).add(2) });
    let kin = NatInKey {
        outside_addr: p.ip.dst,
        outside_port: dport,
        proto: p.ip.proto,
        _pad: 0,
    };
    let m = match NAT_IN.get_ptr(&kin) {
        // SAFETY: map value pointer from the kernel; copied out at once.
        Some(v) => unsafe { *v },
        None => return Err(Exit::Drop(Counter::DropNoMapping)),
    };
    if cfg.filter_modes != 0 {
        // The receiving mapping filters a hairpinned packet as one from the internet, by
        // the sender's outside endpoint (RFC 4787 REQ-9).
        let mut key = PeerKey {
            outside_addr: p.ip.dst,
            outside_port: dport,
            proto: p.ip.proto,
            _pad: 0,
            remote_addr: p.out_addr,
            remote_port: out_port,
            _pad2: 0,
        };
        if peer_known(cfg, &mut key) == 0 {
            return Err(Exit::Drop(Counter::DropFiltered));
        }
    }
    rewrite(ctx, &p.ip, &p.l4, 12, p.ip.src, p.out_addr, out_port)?;
    let to = L4 {
        port_off: 2,
        port: dport,
        ..p.l4
    };
    rewrite(ctx, &p.ip, &to, 16, p.ip.dst, m.inside_addr, m.inside_port)?;
    decapsulate(ctx, p.inner_off - ETH_HLEN)?;
    let action = encapsulate_and_send(ctx, &p.ip, cfg.hop_limit, &cfg.aftr_addr, &m.b4)?;
    count(Counter::HairpinPackets);
    Ok(action)
}

/// NAT log (`--log-sessions`): the mapping this packet created, with its destination under
/// `--log-destinations` (RFC 6888 REQ-12, checklist 51).
#[inline(never)]
fn log_mapping(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4, out_port: u32) {
    let out = Endpoint::new(p.out_addr, u16::from_be(out_port as u16));
    let mut dst = Endpoint::NONE;
    if cfg.flags & AFTR_LOG_DESTINATIONS != 0 {
        let mut dport = 0u16;
        if p.ip.proto != IPPROTO_ICMP {
            if let Some(d) = crate::packet::ptr_at::<[u8; 4]>(ctx, p.l4.off) {
                dport = u16::from_be(read16((d as *const u8).wrapping_add(2)));
            }
        }
        dst = Endpoint::new(p.ip.dst, dport);
    }
    crate::nat::mapping_event(&p.key, out, dst);
}

/// Remember the remote this mapping sends to, when its protocol's filtering depends on it
/// (RFC 4787 REQ-8): the address, and the port too for address-and-port-dependent
/// filtering. A known remote's timestamp is refreshed (the sweep expires remotes by it); a
/// new one is recorded only while the mapping has fewer than `max_peers`, so one mapping
/// cannot fill the table.
#[inline(never)]
fn note_peer(ctx: &XdpContext, cfg: &AftrConfig, p: &FromB4, out_port: u32) {
    let mode = filter_mode(cfg.filter_modes, p.ip.proto);
    if mode == FILTER_EIF {
        return;
    }
    let mut remote_port = 0;
    if mode == FILTER_APDF && p.ip.proto != IPPROTO_ICMP {
        if let Some(d) = crate::packet::ptr_at::<[u8; 4]>(ctx, p.l4.off) {
            remote_port = read16((d as *const u8).wrapping_add(2));
        }
    }
    let key = PeerKey {
        outside_addr: p.out_addr,
        outside_port: out_port as u16,
        proto: p.ip.proto,
        _pad: 0,
        remote_addr: p.ip.dst,
        remote_port,
        _pad2: 0,
    };
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    if let Some(ts) = PEERS.get_ptr_mut(&key) {
        // SAFETY: map value pointer from the kernel. Written at most once a second: the
        // sweep's resolution, and no cache-line bouncing between CPUs on every packet.
        unsafe {
            if now.saturating_sub(*ts) > 1_000_000_000 {
                *ts = now;
            }
        }
        return;
    }
    let Some(v) = NAT_OUT.get_ptr_mut(&p.key) else {
        return;
    };
    // SAFETY: map value pointer from the kernel. The count is approximate under races (no
    // atomics); the sweep recounts it.
    unsafe {
        if cfg.max_peers != 0 && (*v).peers as u16 >= cfg.max_peers {
            count(Counter::PeerLimitRefused);
            return;
        }
        match PEERS.insert(&key, &now, BPF_NOEXIST as u64) {
            Ok(()) => (*v).peers = (*v).peers.saturating_add(1),
            Err(EEXIST) => {}
            Err(_) => count(Counter::PeerLimitRefused),
        }
    }
}

const EEXIST: i32 = -17;

/// 1 if a packet from `key.remote_*` to the mapping at `key.outside_*` passes its
/// protocol's filtering: always under endpoint-independent filtering, else only from a
/// remote the mapping has sent to (the port is ignored under address-dependent filtering).
#[inline(never)]
pub fn peer_known(cfg: &AftrConfig, key: &mut PeerKey) -> u32 {
    let mode = filter_mode(cfg.filter_modes, key.proto);
    if mode == FILTER_EIF {
        return 1;
    }
    if mode != FILTER_APDF || key.proto == IPPROTO_ICMP {
        key.remote_port = 0;
    }
    PEERS.get_ptr(key).is_some() as u32
}

/// 1 if an inbound packet passes its protocol's filtering (see [`peer_known`]).
#[inline(never)]
fn peer_allowed(ctx: &XdpContext, cfg: &AftrConfig, ip: &Ipv4, l4: &L4) -> u32 {
    let mut remote_port = 0;
    if ip.proto != IPPROTO_ICMP {
        let Some(s) = crate::packet::ptr_at::<[u8; 2]>(ctx, l4.off) else {
            return 0;
        };
        remote_port = read16(s as *const u8);
    }
    let mut key = PeerKey {
        outside_addr: ip.dst,
        outside_port: l4.port,
        proto: ip.proto,
        _pad: 0,
        remote_addr: ip.src,
        remote_port,
        _pad2: 0,
    };
    peer_known(cfg, &mut key)
}

/// A fragment from the internet to a pool address (RFC 4787 REQ-14): the first one goes to
/// reassembly only if its ports match a mapping (and its filter), and opens a chain; a later
/// one only if a first one opened its chain. Everything else is dropped here, before it
/// costs the slow path anything.
#[inline(never)]
fn inbound_fragment(ctx: &XdpContext, cfg: &AftrConfig, ip: &Ipv4) -> Code {
    let Some(h) = crate::packet::ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, ip.off) else {
        return Exit::Drop(Counter::DropBadIpv4).into();
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let h = unsafe { &*h };
    let (id, frag) = (read16(h[4..].as_ptr()), u16::from_be_bytes([h[6], h[7]]));
    let key = FragKey {
        src: ip.src,
        dst: ip.dst,
        id,
        proto: ip.proto,
        _pad: 0,
    };
    if frag & IPV4_OFFSET_MASK != 0 {
        let Some(n) = FRAG_CHAINS.get_ptr_mut(&key) else {
            return Exit::Drop(Counter::DropOrphanFragment).into();
        };
        // SAFETY: map value pointer from the kernel.
        unsafe {
            if *n >= MAX_FRAGMENTS_PER_CHAIN {
                return Exit::Drop(Counter::DropFragmentBudget).into();
            }
            *n += 1;
        }
        return Code::OK;
    }
    // The first fragment carries the ports: find the mapping as for a whole packet.
    let mut l4v = L4::default();
    if let Err(e) = l4(ctx, ip, false, &mut l4v) {
        return e.into();
    }
    let kin = NatInKey {
        outside_addr: ip.dst,
        outside_port: l4v.port,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(m) = NAT_IN.get_ptr(&kin) else {
        return Exit::Drop(Counter::DropOrphanFragment).into();
    };
    if cfg.filter_modes != 0 && peer_allowed(ctx, cfg, ip, &l4v) == 0 {
        return Exit::Drop(Counter::DropFiltered).into();
    }
    // SAFETY: map value pointer from the kernel.
    let b4 = unsafe { (*m).b4 };
    if subscriber_fragment_budget(&b4, cfg) == 0 {
        return Exit::Drop(Counter::DropFragmentBudget).into();
    }
    let _ = FRAG_CHAINS.insert(&key, &1, 0);
    Code::OK
}

/// Internet -> B4: reverse-translate a packet to a pool address and encapsulate it to the
/// softwire that owns the mapping. Filtering is endpoint-independent by default
/// (RFC 4787 REQ-8); see [`peer_allowed`].
#[inline(never)]
fn from_internet(ctx: &XdpContext, cfg: &AftrConfig, ip: &mut Ipv4) -> Res<u32> {
    ipv4(ctx, ETH_HLEN, len(ctx) - ETH_HLEN, ip)?;
    if POOL_INDEX.get_ptr(ip.dst).is_none() {
        return Err(Exit::Pass(Counter::PassNotPool));
    }
    if !on_interface(ctx, cfg.internet_ifindex) {
        return Err(Exit::Drop(Counter::DropWrongInterface));
    }
    if reserved_source(&ip.src) {
        return Err(Exit::Drop(Counter::DropReservedSource));
    }
    if ip.fragment {
        // Ports are in the first fragment only: the slow path reassembles what belongs to
        // a mapping (a written-back datagram is whole, so it never comes here again).
        inbound_fragment(ctx, cfg, ip).res()?;
        return to_controller(ctx, SLOW_V4_FRAGMENT, 0);
    }
    if ip.proto == IPPROTO_ICMP {
        let t: *mut [u8; 2] = at(ctx, ip.off + ip.hlen, Counter::DropBadL4)?;
        // SAFETY: bounds-checked by `at`.
        let ty = unsafe { (*t)[0] };
        if ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAM_PROBLEM {
            return Ok(ICMP_ERROR);
        }
    }
    let ip = &*ip;
    let mut l4v = L4::default();
    l4(ctx, ip, false, &mut l4v)?;
    let l4 = l4v;
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
    if cfg.filter_modes != 0 && peer_allowed(ctx, cfg, ip, &l4) == 0 {
        return Err(Exit::Drop(Counter::DropFiltered));
    }
    decrement_ttl(ctx, ip)?;
    if ip.proto == IPPROTO_TCP && cfg.mss != 0 {
        crate::mss::clamp(ctx, l4.off, cfg.mss);
    }
    let refresh = cfg.flags & AFTR_INBOUND_REFRESH != 0;
    if refresh || l4.tcp_flags & 0x07 != 0 {
        // SYN, FIN or RST from outside is recorded on the mapping (RFC 7857 §2 state);
        // with --inbound-refresh, inbound traffic also keeps it alive (RFC 4787 REQ-6).
        crate::nat::note_inbound(&m, kin.proto, tcp_bits(l4.tcp_flags, false), refresh);
    }
    rewrite(ctx, ip, &l4, 16, ip.dst, m.inside_addr, m.inside_port)?;
    // Trim nothing: the inner packet is exactly tot_len; any Ethernet padding stays outside
    // the IPv6 payload length and is ignored by the receiver.
    let outer_len = (IPV6_HLEN + ip.tot_len) as u64;
    let action = encapsulate_and_send(ctx, ip, cfg.hop_limit, &cfg.aftr_addr, &m.b4)?;
    count(Counter::AftrInPackets);
    count_n(Counter::AftrInBytes, outer_len);
    Ok(action)
}
