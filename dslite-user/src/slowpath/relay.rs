//! ICMP the slow path sends: ICMPv6 errors about softwire packets relayed to the inner
//! source as ICMPv4 (RFC 2473 §8), the B4's Time Exceeded, and the budgets that keep both
//! from becoming a flood.

use std::net::Ipv4Addr;

use dslite_common::{csum, maps::NatOutKey, proto::*, Counter};

use super::{
    frames::{parse_v6, skip_options, softwire_frame},
    raw::IcmpErr,
    Role, Shared, B4_V4,
};

impl Shared {
    /// AFTR: a mapping for `key` exists (a relayed error must quote live state).
    fn has_mapping(&self, key: &NatOutKey) -> bool {
        match &self.nat_out {
            Some(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key, 0)
                .is_ok(),
            None => false,
        }
    }
}

/// B4: a LAN packet whose TTL ran out here gets a Time Exceeded from 192.0.0.2 (RFC 792;
/// the B4 is a router hop, RFC 2473 §3), sent as if it came down the softwire so XDP
/// delivers it to the LAN like any packet from the AFTR. Rate limited with the relays.
pub(super) fn time_exceeded(sh: &Shared, budget: &mut RelayBudget, frame: &[u8]) -> bool {
    let Role::B4 { b4, aftr } = sh.role() else {
        return false;
    };
    let Some(ip) = frame.get(ETH_HLEN..) else {
        return false;
    };
    let hlen = ip.first().map_or(0, |b| ((b & 0x0f) as usize) * 4);
    if hlen < IPV4_MIN_HLEN || ip.len() < hlen + 8 {
        return false;
    }
    if !budget.take(RELAY_PER_SEC) {
        return true;
    }
    let src: [u8; 4] = ip[12..16].try_into().unwrap_or([0; 4]);
    let icmp = icmp4_error(
        B4_V4.octets(),
        src,
        ICMP_TIME_EXCEEDED,
        0,
        0,
        &ip[..hlen + 8],
    );
    let out = softwire_frame(0, DEFAULT_HOP_LIMIT, &aftr.octets(), &b4.octets(), &icmp);
    if sh.write_back(&out) {
        sh.stats.inc(Counter::SlowTimeExceededSent);
    }
    true
}

/// AFTR, tc hook: a softwire packet the dataplane refused, to be answered with the ICMP
/// error it chose (`ty`, `code`, next-hop `mtu`): from 192.0.0.1 to the inner source,
/// quoting the inner header and 8 bytes, down the softwire it came from (RFC 5508 REQ-8,
/// RFC 4787 REQ-13, RFC 2473 §3). The dataplane has already counted the refusal and taken
/// the ICMP rate limit's token; XDP builds the same error in place.
pub(super) fn refusal(sh: &Shared, frame: &[u8], ty: u8, code: u8, mtu: u16) -> bool {
    if !matches!(sh.role(), Role::Aftr { .. }) {
        return false;
    }
    let Some((src, dst, icmp)) = refusal_packet(frame, ty, code, mtu) else {
        return false;
    };
    match sh.raw.send(&icmp, &src, &dst, 0, DEFAULT_HOP_LIMIT, 0) {
        Ok(()) => sh.stats.inc(Counter::SlowIcmpRefusalSent),
        Err(e) => {
            sh.stats.inc(Counter::SlowSendErrors);
            log::debug!("slow path: sending an ICMP refusal: {e}");
        }
    }
    true
}

/// The answer to a refused softwire packet `frame` (Ethernet, IPv6 from a B4, IPv4): the
/// outer source and destination (back from the address the B4 sent to) and the ICMPv4
/// error from 192.0.0.1 quoting the inner header and 8 bytes; None if the frame is not
/// such a packet.
pub fn refusal_packet(
    frame: &[u8],
    ty: u8,
    code: u8,
    mtu: u16,
) -> Option<([u8; 16], [u8; 16], Vec<u8>)> {
    let v6 = parse_v6(frame)?;
    let off = skip_options(frame, ETH_HLEN + IPV6_HLEN, v6.next)?;
    let ip = frame.get(off..v6.payload.end)?;
    let hlen = ip.first().map_or(0, |b| ((b & 0x0f) as usize) * 4);
    if hlen < IPV4_MIN_HLEN || ip.len() < hlen + 8 {
        return None;
    }
    let inside: [u8; 4] = ip[12..16].try_into().ok()?;
    let icmp = icmp4_error(AFTR_V4, inside, ty, code, mtu, &ip[..hlen + 8]);
    Some((v6.dst, v6.src, icmp))
}

/// Relayed ICMP errors per second: spoofed ICMPv6 must not turn into a flood.
pub const RELAY_PER_SEC: u32 = 100;

/// A token bucket refilled once a second.
#[derive(Default)]
pub(super) struct RelayBudget {
    second: u64,
    left: u32,
}

impl RelayBudget {
    pub(super) fn take(&mut self, per_sec: u32) -> bool {
        let now = crate::clock::monotonic_ns() / 1_000_000_000;
        if now != self.second {
            self.second = now;
            self.left = per_sec;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// An ICMPv6 error about a softwire packet we sent, with the start of that packet's IPv4
/// payload (`quoted`): tell the inner source (RFC 2473 §8, RFC 4213 §3.4).
pub(super) fn relay_icmp6(sh: &Shared, budget: &mut RelayBudgets, e: &IcmpErr, quoted: &[u8]) {
    if e.icmp_type == ICMP6_PACKET_TOO_BIG {
        // The kernel has lowered its path MTU toward `e.peer`; the dataplane's cached next
        // hops still hold the longer length the FIB let through: make them ask again.
        if let Err(err) = crate::dataplane::bump_next_hops(&sh.pin, true) {
            log::warn!("Packet Too Big: invalidating the next-hop cache: {err:#}");
        }
        sh.stats.inc(Counter::SlowPacketTooBig);
        return;
    }
    let Some((ty, code, mtu)) = icmp4_for_icmp6(e.icmp_type, e.icmp_code) else {
        return;
    };
    // An error about a later fragment quotes the middle of the IPv4 packet: only a quote
    // that starts with a valid IPv4 header (checksum included) is relayed.
    let hlen = quoted.first().map_or(0, |b| ((b & 0x0f) as usize) * 4);
    let valid = quoted.len() >= hlen + 8
        && hlen >= IPV4_MIN_HLEN
        && quoted[0] >> 4 == 4
        && csum::checksum(&quoted[..hlen]) == 0;
    if !valid || !quotes_live_state(sh, e, quoted, hlen) || !budget.take(&e.offender) {
        sh.stats.inc(Counter::SlowIcmp6Ignored);
        return;
    }
    let quote = &quoted[..hlen + 8];
    let (inner_src, inner_dst): ([u8; 4], [u8; 4]) =
        match (quoted[12..16].try_into(), quoted[16..20].try_into()) {
            (Ok(s), Ok(d)) => (s, d),
            _ => return,
        };
    let frame = match sh.role() {
        // The B4 sent host -> server; the host hears it from the B4's 192.0.0.2, delivered by
        // XDP like any packet from the AFTR.
        Role::B4 { b4, aftr } => {
            if e.peer != aftr.octets() {
                return;
            }
            let icmp = icmp4_error(B4_V4.octets(), inner_src, ty, code, mtu, quote);
            softwire_frame(0, DEFAULT_HOP_LIMIT, &aftr.octets(), &b4.octets(), &icmp)
        }
        // The AFTR sent server -> host (already translated back): as if the host itself
        // answered, up its softwire; XDP translates it like any host's ICMP error, so the
        // server hears it from the subscriber's public address.
        Role::Aftr { aftr } => {
            let icmp = icmp4_error(inner_dst, inner_src, ty, code, mtu, quote);
            softwire_frame(0, DEFAULT_HOP_LIMIT, &e.peer, &aftr.octets(), &icmp)
        }
    };
    if sh.write_back(&frame) {
        sh.stats.inc(Counter::SlowIcmp6Relayed);
    }
}

/// Relayed errors need a quote that matches live state, so an outsider cannot make the
/// element speak to hosts about flows that do not exist (RFC 2473 §8 relays what concerns a
/// tunnelled packet). B4: the error is about a packet to its AFTR, quoting a LAN host's packet
/// (not the B4's own 192.0.0.2 nor a special address). AFTR: the quoted packet (server to
/// host, already translated back) belongs to a mapping of that B4.
fn quotes_live_state(sh: &Shared, e: &IcmpErr, quoted: &[u8], hlen: usize) -> bool {
    let (Some(src), Some(dst)) = (quoted.get(12..16), quoted.get(16..20)) else {
        return false;
    };
    match sh.role() {
        Role::B4 { aftr, .. } => {
            let src = Ipv4Addr::new(src[0], src[1], src[2], src[3]);
            e.peer == aftr.octets()
                && src != B4_V4
                && !src.is_unspecified()
                && !src.is_loopback()
                && !src.is_multicast()
                && !src.is_broadcast()
        }
        Role::Aftr { .. } => {
            let proto = quoted[9];
            let l4 = &quoted[hlen..];
            let port = match proto {
                IPPROTO_TCP | IPPROTO_UDP => [l4[2], l4[3]],
                // A translated echo reply carries the inside identifier.
                IPPROTO_ICMP if l4[0] == ICMP_ECHO_REPLY => [l4[4], l4[5]],
                _ => return false,
            };
            let key = NatOutKey {
                b4: e.peer,
                inside_addr: [dst[0], dst[1], dst[2], dst[3]],
                inside_port: u16::from_ne_bytes(port),
                proto,
                _pad: 0,
            };
            sh.has_mapping(&key)
        }
    }
}

/// Relay budgets: [`RELAY_PER_SEC`] in all, and [`RELAY_PER_SOURCE_PER_SEC`] per sender of
/// the ICMPv6 error, so one spoofing source cannot use up the relay for everyone.
#[derive(Default)]
pub(super) struct RelayBudgets {
    all: RelayBudget,
    per_source: std::collections::HashMap<[u8; 16], RelayBudget>,
}

/// Relayed errors per second from one ICMPv6 source.
pub const RELAY_PER_SOURCE_PER_SEC: u32 = 10;

/// Sources tracked at once (a flood of sources resets the table rather than growing it).
const RELAY_SOURCES: usize = 4096;

impl RelayBudgets {
    pub(super) fn take(&mut self, source: &[u8; 16]) -> bool {
        if self.per_source.len() >= RELAY_SOURCES && !self.per_source.contains_key(source) {
            self.per_source.clear();
        }
        let one = self.per_source.entry(*source).or_default();
        one.take(RELAY_PER_SOURCE_PER_SEC) && self.all.take(RELAY_PER_SEC)
    }
}

/// The ICMPv4 error (type, code, next-hop MTU) matching an ICMPv6 error about a softwire
/// packet (RFC 2473 §8.1), or None when nothing is due. A Packet Too Big is not relayed: the
/// softwire absorbs it by fragmenting the outer IPv6 packet from then on (RFC 6333 §5.3,
/// §6.3: the inner IPv4 packet is never the one made smaller), so telling the host to
/// shrink, or failing a connected UDP socket with EMSGSIZE, would be wrong.
pub fn icmp4_for_icmp6(ty: u8, code: u8) -> Option<(u8, u8, u16)> {
    match ty {
        // Destination unreachable: the host behind the tunnel is unreachable.
        1 => Some((ICMP_DEST_UNREACH, 1, 0)),
        // Hop limit exceeded in transit, or reassembly time exceeded.
        3 => Some((ICMP_TIME_EXCEEDED, code.min(1), 0)),
        // Parameter problem with the outer header: RFC 2473 §8.1 says host unreachable.
        4 => Some((ICMP_DEST_UNREACH, 1, 0)),
        _ => None,
    }
}

/// ICMPv6 Packet Too Big.
const ICMP6_PACKET_TOO_BIG: u8 = 2;

/// An IPv4 ICMP error from `src` to `dst` quoting `quote` (header + 8 bytes).
pub fn icmp4_error(
    src: [u8; 4],
    dst: [u8; 4],
    ty: u8,
    code: u8,
    mtu: u16,
    quote: &[u8],
) -> Vec<u8> {
    let total = IPV4_MIN_HLEN + ICMP_MIN_LEN + quote.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = DEFAULT_HOP_LIMIT;
    p[9] = IPPROTO_ICMP;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    csum::set_ipv4_header_checksum(&mut p);
    let t = IPV4_MIN_HLEN;
    p[t] = ty;
    p[t + 1] = code;
    p[t + 6..t + 8].copy_from_slice(&mtu.to_be_bytes());
    p[t + 8..].copy_from_slice(quote);
    let s = csum::checksum(&p[t..]);
    p[t + 2..t + 4].copy_from_slice(&s.to_ne_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp6_errors_map_to_icmp4() {
        assert_eq!(icmp4_for_icmp6(3, 0), Some((11, 0, 0)));
        assert_eq!(icmp4_for_icmp6(1, 3), Some((3, 1, 0)));
        // RFC 6333 §5.3: a Packet Too Big is absorbed by the softwire, never relayed.
        assert_eq!(icmp4_for_icmp6(2, 0), None);
        assert_eq!(icmp4_for_icmp6(4, 0), Some((3, 1, 0)));
        assert_eq!(icmp4_for_icmp6(137, 0), None);
    }

    #[test]
    fn icmp4_error_checksums_hold() {
        let quote: Vec<u8> = (0..28).collect();
        let p = icmp4_error([192, 0, 0, 2], [192, 168, 1, 10], 3, 4, 1240, &quote);
        assert_eq!(p.len(), 20 + 8 + 28);
        assert_eq!(csum::checksum(&p[..20]), 0);
        assert_eq!(csum::checksum(&p[20..]), 0);
        assert_eq!(&p[26..28], &1240u16.to_be_bytes());
        assert_eq!(&p[28..], &quote[..]);
    }
}
