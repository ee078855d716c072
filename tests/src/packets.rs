//! Packet builders for fixtures and crafted end-to-end packets. Inner IPv4 packets are built
//! with etherparse (an implementation independent of ours, so its checksums are a check on
//! our incremental updates); the outer IPv6/Ethernet layers are plain bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub fn udp4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), ttl).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

pub fn tcp4_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, &[]).unwrap();
    v
}

/// A TCP segment with the given flags byte (0x10 ACK, 0x04 RST, ...) and no payload.
pub fn tcp4_flags(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    flags: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src.octets(), dst.octets(), ttl).tcp(sport, dport, 1000, 64240);
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, &[]).unwrap();
    v
}

pub fn icmp4_echo(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    ttl: u8,
    reply: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), ttl);
    let b = if reply {
        b.icmpv4_echo_reply(id, seq)
    } else {
        b.icmpv4_echo_request(id, seq)
    };
    let payload = b"dslite-ping-payload";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// Destination Options header with a Tunnel Encapsulation Limit option (RFC 2473 §4.1.1),
/// as Linux ip6tnl sends by default (`encaplimit 4`). The next-header byte is filled in by
/// [`ipv6`].
pub fn tel_destopts(limit: u8) -> Vec<u8> {
    vec![0, 0, 0x04, 0x01, limit, 0x01, 0x01, 0x00]
}

/// IPv6 header + optional extension headers (chained, each's first byte rewritten) + payload.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    exts: &[(u8, Vec<u8>)],
    payload: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    let ext_len: usize = exts.iter().map(|(_, e)| e.len()).sum();
    let mut v = Vec::with_capacity(40 + ext_len + payload.len());
    v.extend_from_slice(&[0x60, 0, 0, 0]);
    v.extend_from_slice(&((ext_len + payload.len()) as u16).to_be_bytes());
    v.push(exts.first().map_or(next, |(t, _)| *t));
    v.push(hop_limit);
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    for (i, (_, e)) in exts.iter().enumerate() {
        let mut e = e.clone();
        e[0] = exts.get(i + 1).map_or(next, |(t, _)| *t);
        v.extend_from_slice(&e);
    }
    v.extend_from_slice(payload);
    v
}

/// Softwire packet: IPv4 inside IPv6 with next header 4.
pub fn softwire(src: Ipv6Addr, dst: Ipv6Addr, inner: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    ipv6(src, dst, 4, exts, inner, 64)
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + payload.len());
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Verify every checksum of an IPv4 packet (header, and TCP/UDP/ICMP) with etherparse.
pub fn assert_ipv4_checksums(ip: &[u8]) {
    use etherparse::{Icmpv4Slice, Ipv4HeaderSlice, TcpHeaderSlice, UdpHeaderSlice};
    let h = Ipv4HeaderSlice::from_slice(ip).expect("IPv4 header");
    let header = h.to_header();
    assert_eq!(
        header.header_checksum,
        header.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let l4 = &ip[h.slice().len()..h.total_len() as usize];
    match h.protocol().0 {
        17 => {
            let u = UdpHeaderSlice::from_slice(l4).expect("UDP header");
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4(&header, &l4[8..]).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
            }
        }
        6 => {
            let t = TcpHeaderSlice::from_slice(l4).expect("TCP header");
            let want = t
                .to_header()
                .calc_checksum_ipv4(&header, &l4[t.slice().len()..])
                .unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
        }
        1 => {
            let i = Icmpv4Slice::from_slice(l4).expect("ICMP");
            let want = i.header().icmp_type.calc_checksum(i.payload());
            assert_eq!(i.checksum(), want, "ICMP checksum");
        }
        p => panic!("unexpected protocol {p}"),
    }
}

/// A SYN carrying an MSS option (and a window-scale option after it).
pub fn tcp4_syn_mss(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    mss: u16,
) -> Vec<u8> {
    use etherparse::TcpOptionElement::{MaximumSegmentSize, Noop, WindowScale};
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .options(&[MaximumSegmentSize(mss), Noop, WindowScale(7)])
        .unwrap();
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, &[]).unwrap();
    v
}

/// The MSS option's value in an IPv4 TCP segment, if any.
pub fn tcp_mss(ip: &[u8]) -> Option<u16> {
    let h = etherparse::Ipv4HeaderSlice::from_slice(ip).ok()?;
    let t = etherparse::TcpHeaderSlice::from_slice(&ip[h.slice().len()..]).ok()?;
    t.options_iterator().find_map(|o| match o {
        Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    })
}

/// Set or clear DF on an IPv4 packet, fixing its header checksum.
pub fn set_df(ip: &mut [u8], df: bool) {
    if df {
        ip[6] |= 0x40;
    } else {
        ip[6] &= !0x40;
    }
    dslite_common::csum::set_ipv4_header_checksum(ip);
}

/// Split an IPv4 packet into fragments carrying at most `size` payload bytes each (rounded
/// down to a multiple of 8), in order.
pub fn fragment_v4(ip: &[u8], size: usize) -> Vec<Vec<u8>> {
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    let payload = &ip[hlen..];
    let size = size / 8 * 8;
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let n = size.min(payload.len() - off);
        let mut f = ip[..hlen].to_vec();
        f.extend_from_slice(&payload[off..off + n]);
        f[2..4].copy_from_slice(&((hlen + n) as u16).to_be_bytes());
        let mut flags = (off / 8) as u16;
        if off + n < payload.len() {
            flags |= 0x2000;
        }
        f[6..8].copy_from_slice(&flags.to_be_bytes());
        dslite_common::csum::set_ipv4_header_checksum(&mut f);
        out.push(f);
        off += n;
    }
    out
}

/// IPv6 fragments of `payload` (next header `next`) from `src` to `dst`, each carrying at
/// most `size` bytes (rounded down to a multiple of 8), with identification `id`, in order.
pub fn fragment_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    payload: &[u8],
    size: usize,
    id: u32,
) -> Vec<Vec<u8>> {
    let size = size / 8 * 8;
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let n = size.min(payload.len() - off);
        let more = off + n < payload.len();
        let mut fh = vec![next, 0];
        fh.extend_from_slice(&(((off / 8) as u16) << 3 | more as u16).to_be_bytes());
        fh.extend_from_slice(&id.to_be_bytes());
        fh.extend_from_slice(&payload[off..off + n]);
        out.push(ipv6(src, dst, 44, &[], &fh, 64));
        off += n;
    }
    out
}
