//! Wire constants and fixed header offsets used by both sides.

/// The AFTR's own IPv4 address, the source of the ICMP it originates (RFC 6333 §6.5).
pub const AFTR_V4: [u8; 4] = [192, 0, 0, 1];

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType in the Ethernet header.
pub const ETH_TYPE_OFF: usize = 12;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPV4_MIN_HLEN: usize = 20;
/// Offsets in the IPv4 header (RFC 791 §3.1): total length, identification, flags and
/// fragment offset, the TTL (and the protocol after it), the header checksum, the source
/// and the destination address.
pub const IPV4_TOT_LEN_OFF: usize = 2;
pub const IPV4_ID_OFF: usize = 4;
pub const IPV4_FRAG_OFF: usize = 6;
pub const IPV4_TTL_OFF: usize = 8;
pub const IPV4_PROTO_OFF: usize = 9;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SRC_OFF: usize = 12;
pub const IPV4_DST_OFF: usize = 16;
pub const IPV6_HLEN: usize = 40;
/// Offsets in the IPv6 header (RFC 8200 §3): payload length, next header, hop limit, the
/// source and the destination address.
pub const IPV6_PLEN_OFF: usize = 4;
pub const IPV6_NEXT_OFF: usize = 6;
pub const IPV6_HOP_OFF: usize = 7;
pub const IPV6_SRC_OFF: usize = 8;
pub const IPV6_DST_OFF: usize = 24;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4 encapsulated in IPv6: the DS-Lite softwire (RFC 6333 §5.2).
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;
/// Destination unreachable code 4: fragmentation needed and DF set (RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// The TCP MSS that fits a softwire over a link of `link_mtu` bytes: the IPv6 header, then
/// the IPv4 and TCP headers, come off (RFC 6908 §2.3).
pub const fn mss_for_link_mtu(link_mtu: u32) -> u16 {
    let m = link_mtu.saturating_sub((IPV6_HLEN + IPV4_MIN_HLEN + TCP_MIN_LEN) as u32);
    if m > u16::MAX as u32 {
        u16::MAX
    } else {
        m as u16
    }
}

/// Outer hop limit for encapsulated packets: configured, never copied from the inner TTL
/// (RFC 2473 §3).
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// At most this many IPv6 extension headers are walked before the upper-layer header
/// (hop-by-hop + destination options, as Linux ip6tnl/OpenWrt B4s send: RFC 2473 §4.1.1).
pub const MAX_EXT_HEADERS: usize = 2;
/// A single extension header longer than this is not walked (counted pass to the kernel).
/// A Tunnel Encapsulation Limit destination option header is 8 bytes.
pub const MAX_EXT_HEADER_LEN: usize = 64;

/// Offset of the checksum field inside each upper-layer header.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;
/// TCP's data offset (high nibble) and flags bytes (RFC 9293 §3.1); UDP's length field.
pub const TCP_DOFF_OFF: usize = 12;
pub const TCP_FLAGS_OFF: usize = 13;
pub const UDP_LEN_OFF: usize = 4;
/// Minimum bytes of each upper-layer header that the NAT reads or writes.
pub const TCP_MIN_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const ICMP_MIN_LEN: usize = 8;

/// IPv4 flags/fragment-offset masks (host order of the 16-bit field).
pub const IPV4_DF: u16 = 0x4000;
pub const IPV4_MF: u16 = 0x2000;
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Name of an upper-layer protocol as shown by `dslite sessions`.
pub const fn protocol_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// Fill a 40-byte IPv6 header for a softwire packet (RFC 6333 §5.2): version 6, traffic
/// class copied from the inner IPv4 TOS (DSCP and ECN, RFC 6908 §2.10 / RFC 6040 normal
/// mode, RFC 6908 §2.10 and RFC 6040), next header 4, configured hop limit.
#[inline(always)]
pub fn write_softwire_ipv6_header(
    hdr: &mut [u8; IPV6_HLEN],
    inner_tos: u8,
    payload_len: u16,
    hop_limit: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) {
    hdr[0] = 0x60 | (inner_tos >> 4);
    hdr[1] = inner_tos << 4;
    hdr[2] = 0;
    hdr[3] = 0;
    let pl = payload_len.to_be_bytes();
    hdr[4] = pl[0];
    hdr[5] = pl[1];
    hdr[6] = IPPROTO_IPIP;
    hdr[7] = hop_limit;
    let mut i = 0;
    while i < 16 {
        hdr[8 + i] = src[i];
        hdr[24 + i] = dst[i];
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softwire_header_copies_tos_into_traffic_class() {
        let mut h = [0u8; IPV6_HLEN];
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        // DSCP 46 (EF) + ECT(0) = 0xba
        write_softwire_ipv6_header(&mut h, 0xba, 84, 64, &src, &dst);
        let tc = ((h[0] & 0x0f) << 4) | (h[1] >> 4);
        assert_eq!(h[0] >> 4, 6);
        assert_eq!(tc, 0xba);
        assert_eq!(u16::from_be_bytes([h[4], h[5]]), 84);
        assert_eq!(h[6], IPPROTO_IPIP);
        assert_eq!(h[7], 64);
        assert_eq!(&h[8..24], &src);
        assert_eq!(&h[24..40], &dst);
    }

    #[test]
    fn mss_fits_the_tunnel() {
        assert_eq!(
            mss_for_link_mtu(1540),
            1460,
            "a 1540-byte link carries 1500-byte IPv4"
        );
        assert_eq!(mss_for_link_mtu(1500), 1420);
        assert_eq!(mss_for_link_mtu(1280), 1200);
        assert_eq!(mss_for_link_mtu(40), 0);
    }

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name(IPPROTO_TCP), "tcp");
        assert_eq!(protocol_name(IPPROTO_UDP), "udp");
        assert_eq!(protocol_name(IPPROTO_ICMP), "icmp");
        assert_eq!(protocol_name(47), "other");
    }
}
