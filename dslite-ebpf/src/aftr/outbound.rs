//! B4 -> internet (RFC 6333 §6.2, §6.6): parse and check the softwire packet, find or create
//! its mapping, source-translate it, decapsulate and route it, or hand it to the step that
//! answers it instead (echo, refusal, hairpin, ICMP error).

use dslite_common::{
    maps::{AftrConfig, AFTR_LOG_DESTINATIONS, AFTR_LOG_SESSIONS},
    nat::tcp_bits,
    proto::*,
    slow::SLOW_V4_FRAGMENT,
    Counter,
};

use crate::{
    aftr::{
        filter::{b4_allowed, destination_allowed, from_tunnel, note_peer, source_allowed},
        fragment::subscriber_fragment_budget,
        hairpin::hairpin_call,
        icmp_xlate::error_outbound_call,
        parsed::FromB4,
        reply::{echo_reply_call, refuse},
        rewrite::rewrite,
    },
    ctx::Pkt,
    events::mapping_event,
    exit::{bench_stage, bpf_call, Code, Endpoint, Exit, HighPort, Res, Why},
    maps::{count, count_n, NAT_OUT, POOL_INDEX},
    nat::lookup_or_create,
    packet::{at, read16},
    parse::{decrement_ttl, ipv4, ipv6, l4, wire_len, Softwire},
    route::{redirect_v4, v4_route_mtu},
    slow::to_controller,
    softwire::decapsulate,
};

/// Parse and check a softwire packet from a B4 into `p`. A BPF call of its own: its
/// temporaries are off the stack while the NAT search runs.
#[inline(never)]
fn parse_from_b4<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &mut FromB4) -> Code {
    parse_from_b4_inner(ctx, cfg, p).into()
}

#[inline(always)]
fn parse_from_b4_inner<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &mut FromB4) -> Res<()> {
    // Bench stages inside the parse end it with a drop (counted): `from_b4` ends there.
    bench_stage!(11 => Err(Exit::Drop(Counter::DropNotConfigured)));
    let mut sw_slot = core::mem::MaybeUninit::uninit();
    let sw: &mut Softwire = crate::zeroed::zeroed(&mut sw_slot);
    let parsed = ipv6(ctx, sw);
    bench_stage!(12 => Err(Exit::Drop(Counter::DropNotConfigured)));
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
    // The interface here, the B4's prefix once the mapping is known (`from_b4`).
    from_tunnel(ctx, cfg)?;
    bench_stage!(13 => Err(Exit::Drop(Counter::DropNotConfigured)));
    ipv4(ctx, sw.inner_off, sw.inner_avail, &mut p.ip)?;
    bench_stage!(14 => Err(Exit::Drop(Counter::DropNotConfigured)));
    if p.ip.fragment {
        // Ports are in the first fragment only: the slow path reassembles (RFC 4787
        // REQ-14), within the subscriber's budget.
        b4_allowed(&sw.src)?;
        if subscriber_fragment_budget(&sw.src, cfg) == 0 {
            return Err(Exit::Drop(Counter::DropFragmentBudget));
        }
        return Err(Exit::Pass(Counter::SlowV4Fragment));
    }
    p.key.b4 = sw.src;
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
    p.outer_len = sw.outer_len as u32;
    Ok(())
}

/// B4 -> internet: decapsulate, map, source-translate, route. A BPF call of its own, so
/// the two directions do not share (and add up) one stack frame.
#[inline(never)]
pub fn from_b4<C: Pkt>(ctx: &C, cfg: &AftrConfig) -> Res<u32> {
    let mut slot = core::mem::MaybeUninit::uninit();
    let p: &mut FromB4 = crate::zeroed::zeroed(&mut slot);
    bench_stage!(15);
    let code = parse_from_b4(ctx, cfg, p);
    bench_stage!(1);
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
    // The B4's prefix (`b4_allowed`) is checked before anything is made or answered for
    // the packet, except on an established mapping: its B4 passed when the mapping was
    // made. So every branch that answers or drops checks it first (cold paths), and the
    // mapping's path checks it only when there is no mapping. (One NAT_OUT look-up up
    // here for all of them would keep its pointer across these calls: 16 more bytes on
    // the NAT search's stack chain, 512 of 512.)
    // 192.0.0.1 answers echo requests (below); nothing else, an ICMP error included, goes
    // to it or to any other denied destination.
    if (p.ip.dst != AFTR_V4 || code == icmp_error) && destination_allowed(&p.ip.dst) == 0 {
        b4_allowed(&p.key.b4)?;
        return Err(Exit::Drop(Counter::DropDeniedDestination));
    }
    if code == icmp_error {
        // A host's ICMP error about an inbound packet (RFC 5508 REQ-5).
        b4_allowed(&p.key.b4)?;
        let outside = error_outbound_call(ctx, p)?;
        decapsulate(ctx, p.ip.off - ETH_HLEN, p.ip.tot_len)?;
        return redirect_v4(ctx, &outside, &p.ip.dst);
    }
    if p.ip.dst == AFTR_V4 {
        // Ping to the AFTR's own 192.0.0.1 (RFC 6333 §6.5 gives it the AFTR); nothing else is for it.
        b4_allowed(&p.key.b4)?;
        return echo_reply_call(ctx, cfg, p);
    }
    // TTL first: a packet that cannot be forwarded must not create a mapping. One that
    // expires here is answered with a Time Exceeded from 192.0.0.1 (RFC 2473 §3, RFC 6333 §6.5), so
    // traceroute shows the AFTR.
    if p.ip.ttl <= 1 {
        b4_allowed(&p.key.b4)?;
        let mut action = 0;
        let why = Why::new(Counter::DropTtlExceeded, ICMP_TIME_EXCEEDED, 0);
        return refuse(ctx, cfg, p, why, &mut action).with(action);
    }
    // One packet's length (a GSO packet's segments are what the MTU limits).
    let len = wire_len(ctx, &p.ip, p.ip.off);
    if p.ip.df && len > cfg.v4_mtu as usize {
        // Larger than the internet side allows and not to be fragmented: an ICMP 3/4 with
        // the route's MTU goes back down the softwire (RFC 4787 REQ-13), and
        // no mapping is made for it. The B4 first: a stranger pays no route lookup.
        b4_allowed(&p.key.b4)?;
        let mtu = v4_route_mtu(ctx, &p.ip.dst, len as u32);
        if mtu != 0 {
            p.mtu = mtu;
            let mut action = 0;
            let why = Why::new(Counter::DropV4TooBig, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
            return refuse(ctx, cfg, p, why, &mut action).with(action);
        }
    }
    decrement_ttl(ctx, &p.ip)?;
    bench_stage!(2);
    let mut created = 0u32;
    let tcp = tcp_bits(p.l4.tcp_flags, true);
    let existing = NAT_OUT.get_ptr_mut(&p.key);
    bench_stage!(16);
    if existing.is_none() {
        b4_allowed(&p.key.b4)?;
    }
    let (out_addr, out_port) = match lookup_or_create(&p.key, existing, cfg, tcp, &mut created) {
        Ok(m) => m,
        Err(Exit::Drop(
            c @ (Counter::DropQuotaExceeded
            | Counter::DropPoolExhausted
            | Counter::DropSessionLimit
            | Counter::DropRateLimit
            | Counter::DropMappingTableFull),
        )) => {
            // Refused: tell the host, down its softwire (RFC 5508 REQ-8).
            let mut action = 0;
            let why = Why::new(c, ICMP_DEST_UNREACH, cfg.icmp_code);
            return refuse(ctx, cfg, p, why, &mut action).with(action);
        }
        Err(e) => return Err(e),
    };
    p.out_addr = out_addr;
    bench_stage!(3);
    if created != 0 && cfg.flags & AFTR_LOG_SESSIONS != 0 {
        log_mapping(ctx, cfg, p, out_port as u32);
    }
    if p.ip.proto == IPPROTO_TCP && cfg.mss != 0 {
        crate::mss::clamp(ctx, p.l4.off, cfg.mss);
    }
    if cfg.filter_modes != 0 {
        note_peer(ctx, cfg, p, out_port as u32);
    }
    if cfg.may_be_pool(&p.ip.dst) && POOL_INDEX.get_ptr(p.ip.dst).is_some() {
        // To another subscriber's public endpoint: hairpin it here (RFC 4787 REQ-9).
        return hairpin_call(ctx, cfg, p, HighPort::new(out_port));
    }
    bench_stage!(4);
    translate_source_call(ctx, p, HighPort::new(out_port))?;
    bench_stage!(5);
    decapsulate(ctx, p.ip.off - ETH_HLEN, p.ip.tot_len)?;
    bench_stage!(6);
    let action = redirect_v4(ctx, &out_addr, &p.ip.dst)?;
    count(Counter::AftrOutPackets);
    count_n(Counter::AftrOutBytes, p.outer_len as u64);
    Ok(action)
}

bpf_call! {
    /// The source translation to the mapping in `p.out_addr` and `out_port`. A BPF call of
    /// its own: its temporaries stay off `from_b4`'s frame, which is on the NAT search's
    /// call chain (512 bytes of stack for the whole chain).
    fn translate_source / translate_source_call(ctx: &C, p: &FromB4, out_port: HighPort) -> Res<()>
        = translate_source_inner;
}

#[inline(always)]
fn translate_source_inner<C: Pkt>(ctx: &C, p: &FromB4, out_port: HighPort) -> Res<()> {
    rewrite(
        ctx,
        &p.ip,
        &p.l4,
        IPV4_SRC_OFF,
        p.ip.src,
        p.out_addr,
        out_port.port(),
    )
}

/// NAT log (`--log-sessions`): the mapping this packet created, with its destination under
/// `--log-destinations` (RFC 6888 REQ-12).
#[inline(never)]
fn log_mapping<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &FromB4, out_port: u32) {
    let out = Endpoint::new(p.out_addr, u16::from_be(out_port as u16));
    let mut dst = Endpoint::NONE;
    if cfg.flags & AFTR_LOG_DESTINATIONS != 0 {
        let mut dport = 0u16;
        if p.ip.proto != IPPROTO_ICMP {
            if let Some(d) = crate::packet::ptr_at::<[u8; 4], _>(ctx, p.l4.off) {
                dport = u16::from_be(read16((d as *const u8).wrapping_add(2)));
            }
        }
        dst = Endpoint::new(p.ip.dst, dport);
    }
    mapping_event(&p.key, out, dst);
}
