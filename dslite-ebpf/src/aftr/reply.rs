//! ICMP the AFTR originates, sent down a softwire from 192.0.0.1 (RFC 6333 §6.5, RFC 7335):
//! echo replies, and errors rate limited per CPU: destination unreachable when a new mapping
//! is refused (RFC 5508 REQ-8 / RFC 6888 REQ-11), fragmentation needed (RFC 4787 REQ-13)
//! and time exceeded when the inner TTL runs out here (RFC 2473 §3).

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use dslite_common::{bucket, csum, maps::AftrConfig, proto::*, Counter};

use crate::{
    aftr::parsed::FromB4,
    csum::sum_words,
    ctx::{Pkt, V_REDIRECT},
    exit::{bpf_call, too_big_mtu, Code, Exit, Res, Why},
    maps::{count, ICMP_BUCKET},
    packet::{at, len, read16, write16},
    parse::set_ttl,
    route::redirect_v6,
    slow::to_controller_icmp,
    softwire::send_back,
};

/// Outer IPv6 + new IPv4 + ICMP header: where the quoted packet starts.
const QUOTE_OFF: usize = ETH_HLEN + IPV6_HLEN + IPV4_MIN_HLEN + ICMP_MIN_LEN;

/// What a refusal quotes and where it goes.
struct Refusal {
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
    bucket::take(&mut b.tokens, &mut b.refill_ns, rate, now)
}

/// Turn the refused packet into an ICMP error (`r.icmp_type`/`r.icmp_code`) quoting
/// its IPv4 header and first 8 payload bytes, addressed down the softwire it came from; the
/// caller routes it. Rate limited: the packet is just dropped. The refusal itself is
/// counted under `why` (a counter index) either way.
#[inline(never)]
fn send_unreachable<C: Pkt>(ctx: &C, cfg: &AftrConfig, r: &Refusal, why: u32) -> Code {
    let reason = Counter::from_index(why);
    if !take_token(cfg) {
        count(Counter::IcmpRateLimited);
        return Exit::Drop(reason).into();
    }
    count(reason);
    // On tc, the slow path builds it: the refused skb may carry its sender's checksum
    // offload state (CHECKSUM_PARTIAL), which an error built in place would inherit and the
    // kernel would then "complete" over the ICMP message.
    let built = if C::TC {
        to_controller_icmp(ctx, r.icmp_type, r.icmp_code, r.mtu).map(|_| ())
    } else {
        build(ctx, cfg, r)
    };
    match built {
        Ok(()) => {
            count(Counter::IcmpErrorSent);
            Code::OK
        }
        Err(e) => e.into(),
    }
}

#[inline(always)]
fn build<C: Pkt>(ctx: &C, cfg: &AftrConfig, r: &Refusal) -> Res<()> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let mut saved = unsafe { *eth };
    saved[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let quote_len = r.hlen + 8;
    // Move the head so that the refused IPv4 header lands right after the new headers.
    let delta = r.inner_off as i32 - QUOTE_OFF as i32;
    ctx.resize(delta, 0)?;
    let want = QUOTE_OFF + quote_len;
    let have = len(ctx);
    if have < want {
        return Err(Exit::Drop(Counter::DropBadL4));
    }
    ctx.resize(0, want as i32 - have as i32)?;
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

/// Answer a packet the AFTR will not forward with an ICMP error down its softwire (`why`:
/// the counter, ICMP type and code). Its own BPF call: the quote's bookkeeping stays off
/// `from_b4`'s stack.
#[inline(never)]
pub fn refuse<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &FromB4, why: Why, action: &mut u32) -> Code {
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
    if C::TC {
        // In the slow path's TAP already.
        *action = V_REDIRECT;
        return Code::OK;
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
    pub fn echo_reply / echo_reply_call(ctx: &C, cfg: &AftrConfig, p: &FromB4) -> Res<u32>
        = echo_reply_inner, on_ok { count(Counter::IcmpEchoAnswered); };
}

#[inline(always)]
fn echo_reply_inner<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &FromB4) -> Res<u32> {
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
    set_ttl(h, 64);
    h[IPV4_SRC_OFF..IPV4_SRC_OFF + 4].copy_from_slice(&AFTR_V4);
    h[IPV4_DST_OFF..IPV4_DST_OFF + 4].copy_from_slice(&p.key.inside_addr);
    send_back(ctx, &p.ip, cfg.hop_limit, &cfg.aftr_addr, &p.key.b4)
}
