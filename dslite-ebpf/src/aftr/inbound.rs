//! Internet -> B4 (RFC 6333 §6.2): reverse-translate a packet to a pool address and
//! encapsulate it to the softwire that owns the mapping.

use dslite_common::{
    maps::{AftrConfig, NatInKey, AFTR_INBOUND_REFRESH},
    nat::tcp_bits,
    proto::*,
    slow::SLOW_V4_FRAGMENT,
    Counter,
};

use crate::{
    aftr::{
        filter::{on_interface, peer_allowed, reserved_source},
        fragment::inbound_fragment,
        rewrite::rewrite,
    },
    ctx::Pkt,
    exit::{bench_stage, Exit, Res, ICMP_ERROR},
    maps::{count, count_n, NAT_IN, POOL_INDEX},
    packet::{at, len},
    parse::{decrement_ttl, ipv4, l4, Ipv4, L4},
    slow::to_controller,
    softwire::encapsulate_and_send,
};

/// Internet -> B4: reverse-translate a packet to a pool address and encapsulate it to the
/// softwire that owns the mapping. Filtering is endpoint-independent by default
/// (RFC 4787 REQ-8); see [`peer_allowed`].
#[inline(never)]
pub fn from_internet<C: Pkt>(ctx: &C, cfg: &AftrConfig, ip: &mut Ipv4) -> Res<u32> {
    ipv4(ctx, ETH_HLEN, len(ctx) - ETH_HLEN, ip)?;
    bench_stage!(1);
    if !cfg.may_be_pool(&ip.dst) || POOL_INDEX.get_ptr(ip.dst).is_none() {
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
    bench_stage!(2);
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
    bench_stage!(3);
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
    bench_stage!(4);
    rewrite(
        ctx,
        ip,
        &l4,
        IPV4_DST_OFF,
        ip.dst,
        m.inside_addr,
        m.inside_port,
    )?;
    // Trim nothing: the inner packet is exactly tot_len; any Ethernet padding stays outside
    // the IPv6 payload length and is ignored by the receiver.
    let outer_len = (IPV6_HLEN + ip.tot_len) as u64;
    bench_stage!(5);
    let action = encapsulate_and_send(ctx, ip, cfg.hop_limit, &cfg.aftr_addr, &m.b4)?;
    count(Counter::AftrInPackets);
    count_n(Counter::AftrInBytes, outer_len);
    Ok(action)
}
