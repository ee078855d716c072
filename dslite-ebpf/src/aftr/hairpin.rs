//! Hairpinning: a subscriber's packet to another subscriber's public endpoint, translated
//! both ways in XDP (RFC 4787 REQ-9).

use dslite_common::{
    maps::{AftrConfig, NatInKey, PeerKey},
    proto::*,
    Counter,
};

use crate::{
    aftr::{filter::peer_known, parsed::FromB4, rewrite::rewrite},
    ctx::Pkt,
    exit::{bpf_call, Exit, HighPort, Res},
    maps::{count, NAT_IN},
    packet::{at, read16},
    parse::L4,
    softwire::send_back,
};

bpf_call! {
    /// Hairpinning (RFC 4787 REQ-9/9a, RFC 5382 REQ-8): a packet from one
    /// subscriber to a public endpoint another subscriber holds is translated both ways here, in
    /// XDP, and sent down the owner's softwire with the sender's outside address:port as its
    /// source. `out_port` is the sender's outside port.
    pub fn hairpin / hairpin_call(ctx: &C, cfg: &AftrConfig, p: &FromB4, out_port: HighPort) -> Res<u32>
    = hairpin_inner;
}

#[inline(always)]
fn hairpin_inner<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &FromB4, out_port: HighPort) -> Res<u32> {
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
    rewrite(
        ctx,
        &p.ip,
        &p.l4,
        IPV4_SRC_OFF,
        p.ip.src,
        p.out_addr,
        out_port,
    )?;
    let to = L4 {
        port_off: 2,
        port: dport,
        ..p.l4
    };
    rewrite(
        ctx,
        &p.ip,
        &to,
        IPV4_DST_OFF,
        p.ip.dst,
        m.inside_addr,
        m.inside_port,
    )?;
    let action = send_back(ctx, &p.ip, cfg.hop_limit, &cfg.aftr_addr, &m.b4)?;
    count(Counter::HairpinPackets);
    Ok(action)
}
