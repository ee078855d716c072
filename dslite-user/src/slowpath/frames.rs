//! The frames the slow path reads from and writes into its TAP: Ethernet to and from the
//! TAP's MAC, the fixed IPv6 header XDP writes, and softwire packets (IPv4 in IPv6).

use dslite_common::proto::*;

use super::TAP_MAC;

pub(super) fn ethertype(frame: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?))
}

/// The fixed IPv6 header of a frame (Ethernet first): (tclass, hop limit, src, dst, payload
/// offset, payload length), for the plain headers XDP writes.
pub(super) struct V6 {
    pub(super) tclass: u8,
    pub(super) hop_limit: u8,
    pub(super) next: u8,
    pub(super) src: [u8; 16],
    pub(super) dst: [u8; 16],
    pub(super) payload: std::ops::Range<usize>,
}

pub(super) fn parse_v6(frame: &[u8]) -> Option<V6> {
    if ethertype(frame)? != ETH_P_IPV6 {
        return None;
    }
    let h = frame.get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)?;
    let start = ETH_HLEN + IPV6_HLEN;
    let end = start + u16::from_be_bytes([h[4], h[5]]) as usize;
    if h[0] >> 4 != 6 || end > frame.len() {
        return None;
    }
    Some(V6 {
        tclass: (h[0] << 4) | (h[1] >> 4),
        hop_limit: h[7],
        next: h[6],
        src: h[8..24].try_into().ok()?,
        dst: h[24..40].try_into().ok()?,
        payload: start..end,
    })
}

/// Offset of the IPv4 header after hop-by-hop/destination options starting at `off`.
pub(super) fn skip_options(frame: &[u8], mut off: usize, mut next: u8) -> Option<usize> {
    for _ in 0..MAX_EXT_HEADERS {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_DSTOPTS {
            break;
        }
        let h = frame.get(off..off + 2)?;
        next = h[0];
        off += (h[1] as usize + 1) * 8;
    }
    (next == IPPROTO_IPIP && off < frame.len()).then_some(off)
}

/// Ethernet (to and from the TAP's MAC) + `payload`.
fn ethernet(ty: u16, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + payload_len);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&ty.to_be_bytes());
    f
}

pub(super) fn ipv4_frame(pkt: &[u8]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IP, pkt.len());
    f.extend_from_slice(pkt);
    f
}

/// A softwire packet as a frame: Ethernet + IPv6 (next header 4) + the IPv4 packet.
pub fn softwire_frame(tclass: u8, hop: u8, src: &[u8; 16], dst: &[u8; 16], v4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV6, v4.len());
    let mut h = [0u8; IPV6_HLEN];
    write_softwire_ipv6_header(&mut h, tclass, v4.len() as u16, hop, src, dst);
    f.extend_from_slice(&h);
    f.extend_from_slice(v4);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softwire_frames_parse_back() {
        let v4 = [0x45u8; 30];
        let f = softwire_frame(0xb8, 63, &[1; 16], &[2; 16], &v4);
        let v6 = parse_v6(&f).unwrap();
        assert_eq!((v6.tclass, v6.hop_limit, v6.next), (0xb8, 63, IPPROTO_IPIP));
        assert_eq!((v6.src, v6.dst), ([1; 16], [2; 16]));
        assert_eq!(&f[v6.payload], &v4[..]);
        assert_eq!(
            skip_options(&f, ETH_HLEN + IPV6_HLEN, IPPROTO_IPIP),
            Some(54)
        );
    }
}
