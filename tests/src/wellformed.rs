//! Is a frame well-formed? Ethernet, then IPv4 or IPv6 (extension headers, a softwire's
//! inner IPv4, an ICMP error's quoted packet), every length consistent with what carries it
//! and every checksum verified: IPv4 header, TCP, UDP, ICMP, ICMPv6.
//!
//! Written on raw bytes, independently of `dslite_common::csum` (the code under test), and
//! checked itself against packets built with etherparse (the tests below). etherparse does
//! not fit the job itself: it rejects what it cannot parse instead of saying which length or
//! checksum is wrong and by how much, and a fault's exact residual is what lets the fuzzer
//! tell an error the dataplane carried through (RFC 1624 updates keep it) from one it made.
//!
//! Each finding is a [`Fault`]. A fault's `detail` names values, never offsets, so the same
//! defect found in a program's input and in its output compares equal
//! ([`Report::not_in`]): a router passes on a TCP segment with a wrong checksum as it got it,
//! but must never make one.

use std::fmt;

/// What a fault is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Ethernet,
    /// Version, header length, total length.
    Ipv4,
    Ipv4Checksum,
    /// Option list that runs past the header or has an impossible length (RFC 791 §3.1).
    Ipv4Options,
    Ipv6,
    /// Extension-header chain (RFC 8200 §4).
    Ipv6Ext,
    Tcp,
    TcpChecksum,
    Udp,
    UdpChecksum,
    /// UDP over IPv4 without a checksum (RFC 768: allowed). Not a defect by itself; the
    /// fuzzer checks that a zero checksum only comes out where one went in.
    UdpNoChecksum,
    Icmp,
    IcmpChecksum,
    Icmpv6Checksum,
    /// An ICMP error's quoted packet is shorter than its IPv4 header + 8 bytes (RFC 792).
    Quote,
    /// A softwire's inner IPv4 packet ends before the IPv6 payload does. A receiver trims
    /// the rest (as Linux does), so an input like this is not invalid, but a packet that
    /// the dataplane encapsulates must fill its IPv6 payload exactly.
    Trailing,
}

/// One finding. `depth` is 0 for the packet itself (for a softwire packet: the inner IPv4
/// one), 1 for the packet an ICMP error quotes, and so on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    pub depth: u8,
    pub kind: Kind,
    pub detail: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.depth {
            0 => write!(f, "{:?}: {}", self.kind, self.detail),
            d => write!(
                f,
                "{:?} (quoted packet, depth {d}): {}",
                self.kind, self.detail
            ),
        }
    }
}

/// The IPv4 packet a frame carries: the frame's own, or a softwire's inner one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    pub tot_len: u16,
}

/// The outer IPv6 header of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Info {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The upper-layer protocol after the extension headers (4 for a softwire packet).
    pub upper: u8,
    pub payload_len: u16,
}

/// What [`check_frame`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub faults: Vec<Fault>,
    pub ipv6: Option<Ipv6Info>,
    pub ipv4: Option<Ipv4Info>,
    /// Where the frame's packet ends (Ethernet header included): what follows is padding,
    /// or junk.
    pub packet_end: Option<usize>,
}

impl Report {
    /// Well-formed: no fault, except UDP without a checksum, which IPv4 allows.
    pub fn ok(&self) -> bool {
        self.faults.iter().all(|f| f.kind == Kind::UdpNoChecksum)
    }

    /// This report's faults that `input` does not have (same kind and detail, at any depth:
    /// an ICMP error the dataplane builds quotes its input one level down).
    pub fn not_in(&self, input: &Report) -> Vec<Fault> {
        self.faults
            .iter()
            .filter(|f| {
                !input
                    .faults
                    .iter()
                    .any(|g| g.kind == f.kind && g.detail == f.detail)
            })
            .cloned()
            .collect()
    }

    fn push(&mut self, depth: u8, kind: Kind, detail: String) {
        self.faults.push(Fault {
            depth,
            kind,
            detail,
        });
    }
}

/// Check an Ethernet frame.
pub fn check_frame(frame: &[u8]) -> Report {
    let mut r = Report::default();
    if frame.len() < 14 {
        r.push(
            0,
            Kind::Ethernet,
            format!("{} bytes, no Ethernet header", frame.len()),
        );
        return r;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            ipv4(&frame[14..], 0, Enclosing::Frame, &mut r);
            r.packet_end = r.ipv4.map(|i| 14 + i.tot_len as usize);
        }
        0x86dd => ipv6(&frame[14..], &mut r),
        t => r.push(
            0,
            Kind::Ethernet,
            format!("EtherType {t:#06x}, not IPv4 or IPv6"),
        ),
    }
    r
}

/// Check a bare IPv4 packet (no Ethernet header); `buf` may end with padding.
pub fn check_ipv4(buf: &[u8]) -> Report {
    let mut r = Report::default();
    ipv4(buf, 0, Enclosing::Frame, &mut r);
    r
}

/// Panic, naming every fault and the frame in hex, unless `frame` is well-formed.
pub fn assert_well_formed(frame: &[u8]) {
    let r = check_frame(frame);
    assert!(
        r.ok(),
        "malformed frame: {}\n{}",
        r.faults
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("; "),
        hex(frame)
    );
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One's complement sum of `data` (odd length padded with zero) onto `acc`, folded.
fn sum(data: &[u8], acc: u32) -> u32 {
    let mut acc = acc as u64;
    for c in data.chunks(2) {
        acc += (u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])) as u64;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// A checksum holds when the sum over everything it covers, itself included, is 0xffff.
/// Otherwise the folded sum is the residual: an incremental update (RFC 1624) of a packet
/// whose checksum was wrong keeps it, so it identifies the error across a translation.
fn residual(total: u32) -> Option<u16> {
    match total as u16 {
        0xffff => None,
        // One's complement has two zeros; a sum over non-zero data is never +0, but be exact.
        0 => None,
        r => Some(r),
    }
}

fn pseudo4(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

fn pseudo6(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    sum(&p, 0)
}

/// What the bytes handed to [`ipv4`] are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Enclosing {
    /// An Ethernet payload: the packet may be followed by padding.
    Frame,
    /// An IPv6 payload after its extension headers: the packet must fill it exactly.
    Softwire,
    /// An ICMP error's quote: the packet may be cut short (RFC 792: header + 8 bytes at
    /// least, RFC 1812 §4.3.2.3: as much as fits).
    Quote,
}

fn ipv4(buf: &[u8], depth: u8, enc: Enclosing, r: &mut Report) {
    let k = Kind::Ipv4;
    if buf.len() < 20 {
        let kind = if enc == Enclosing::Quote {
            Kind::Quote
        } else {
            k
        };
        r.push(
            depth,
            kind,
            format!("{} bytes, shorter than an IPv4 header", buf.len()),
        );
        return;
    }
    let version = buf[0] >> 4;
    if version != 4 {
        r.push(depth, k, format!("version {version}"));
        return;
    }
    let hlen = (buf[0] & 0x0f) as usize * 4;
    if hlen < 20 {
        r.push(depth, k, format!("header length {hlen}"));
        return;
    }
    if hlen > buf.len() {
        let kind = if enc == Enclosing::Quote {
            Kind::Quote
        } else {
            k
        };
        r.push(
            depth,
            kind,
            format!("header length {hlen} beyond {} bytes", buf.len()),
        );
        return;
    }
    let tot_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if tot_len < hlen {
        r.push(
            depth,
            k,
            format!("total length {tot_len} below header length {hlen}"),
        );
        return;
    }
    match enc {
        Enclosing::Frame if tot_len > buf.len() => {
            r.push(
                depth,
                k,
                format!("total length {tot_len} beyond {} bytes", buf.len()),
            );
            return;
        }
        Enclosing::Softwire if tot_len > buf.len() => {
            r.push(
                depth,
                k,
                format!(
                    "total length {tot_len}, in an IPv6 payload of {}",
                    buf.len()
                ),
            );
            return;
        }
        Enclosing::Softwire if tot_len < buf.len() => {
            r.push(
                depth,
                Kind::Trailing,
                format!(
                    "total length {tot_len}, in an IPv6 payload of {}",
                    buf.len()
                ),
            );
        }
        Enclosing::Quote if buf.len() < hlen + 8 => {
            r.push(
                depth,
                Kind::Quote,
                format!("quote of {} bytes, header {hlen} + 8 expected", buf.len()),
            );
        }
        _ => {}
    }
    if depth == 0 {
        r.ipv4 = Some(Ipv4Info {
            src: buf[12..16].try_into().unwrap(),
            dst: buf[16..20].try_into().unwrap(),
            proto: buf[9],
            ttl: buf[8],
            tot_len: tot_len as u16,
        });
    }
    if let Some(res) = residual(sum(&buf[..hlen], 0)) {
        r.push(
            depth,
            Kind::Ipv4Checksum,
            format!("header checksum residual {res:#06x}"),
        );
    }
    options(&buf[20..hlen], depth, r);
    let frag = u16::from_be_bytes([buf[6], buf[7]]);
    if frag & 0x3fff != 0 {
        // A fragment: its upper-layer checksum covers the whole datagram.
        return;
    }
    let end = tot_len.min(buf.len());
    let l4 = &buf[hlen..end];
    let complete = end == tot_len;
    let (src, dst, proto) = (&buf[12..16], &buf[16..20], buf[9]);
    if !complete {
        // A cut-short quote: its upper layer cannot be checked.
        return;
    }
    let pseudo = |len| pseudo4(src, dst, proto, len);
    match proto {
        6 => tcp(l4, pseudo(l4.len()), depth, r),
        17 => udp(l4, |len| pseudo4(src, dst, 17, len), depth, false, r),
        1 => icmp(l4, depth, r),
        _ => {}
    }
}

/// RFC 791 §3.1: single-byte End of Option List (0) and No Operation (1); every other
/// option has a length byte of at least 2 that stays inside the header.
fn options(opts: &[u8], depth: u8, r: &mut Report) {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return,
            1 => i += 1,
            t => {
                let Some(&len) = opts.get(i + 1) else {
                    r.push(
                        depth,
                        Kind::Ipv4Options,
                        format!("option {t} without a length"),
                    );
                    return;
                };
                if len < 2 || i + len as usize > opts.len() {
                    r.push(
                        depth,
                        Kind::Ipv4Options,
                        format!("option {t} of length {len} in {} option bytes", opts.len()),
                    );
                    return;
                }
                i += len as usize;
            }
        }
    }
}

fn tcp(seg: &[u8], pseudo: u32, depth: u8, r: &mut Report) {
    if seg.len() < 20 {
        r.push(depth, Kind::Tcp, format!("segment of {} bytes", seg.len()));
        return;
    }
    let doff = (seg[12] >> 4) as usize * 4;
    if doff < 20 || doff > seg.len() {
        r.push(
            depth,
            Kind::Tcp,
            format!("data offset {doff} in {} bytes", seg.len()),
        );
        return;
    }
    if let Some(res) = residual(sum(seg, pseudo)) {
        r.push(
            depth,
            Kind::TcpChecksum,
            format!("checksum residual {res:#06x}"),
        );
    }
}

/// `v6`: over IPv6, where a zero checksum is not allowed (RFC 8200 §8.1).
fn udp(dgram: &[u8], pseudo: impl Fn(usize) -> u32, depth: u8, v6: bool, r: &mut Report) {
    if dgram.len() < 8 {
        r.push(
            depth,
            Kind::Udp,
            format!("datagram of {} bytes", dgram.len()),
        );
        return;
    }
    let ulen = u16::from_be_bytes([dgram[4], dgram[5]]) as usize;
    if ulen < 8 || ulen > dgram.len() {
        r.push(
            depth,
            Kind::Udp,
            format!("length {ulen} in {} bytes", dgram.len()),
        );
        return;
    }
    if dgram[6..8] == [0, 0] {
        if v6 {
            r.push(depth, Kind::UdpChecksum, "checksum 0 over IPv6".into());
        } else {
            r.push(depth, Kind::UdpNoChecksum, "checksum 0 (none)".into());
        }
        return;
    }
    // The checksum covers the UDP length (RFC 768); IP payload beyond it is padding.
    if let Some(res) = residual(sum(&dgram[..ulen], pseudo(ulen))) {
        r.push(
            depth,
            Kind::UdpChecksum,
            format!("checksum residual {res:#06x}"),
        );
    }
}

fn icmp(msg: &[u8], depth: u8, r: &mut Report) {
    if msg.len() < 8 {
        r.push(depth, Kind::Icmp, format!("message of {} bytes", msg.len()));
        return;
    }
    if let Some(res) = residual(sum(msg, 0)) {
        r.push(
            depth,
            Kind::IcmpChecksum,
            format!("checksum residual {res:#06x}"),
        );
    }
    // Errors quote the packet they are about (RFC 792): unreachable, source quench,
    // redirect, time exceeded, parameter problem. Quotes of quotes are followed, boundedly.
    if matches!(msg[0], 3 | 4 | 5 | 11 | 12) && depth < 3 {
        ipv4(&msg[8..], depth + 1, Enclosing::Quote, r);
    }
}

fn ipv6(buf: &[u8], r: &mut Report) {
    let k = Kind::Ipv6;
    if buf.len() < 40 {
        r.push(
            0,
            k,
            format!("{} bytes, shorter than an IPv6 header", buf.len()),
        );
        return;
    }
    if buf[0] >> 4 != 6 {
        r.push(0, k, format!("version {}", buf[0] >> 4));
        return;
    }
    let plen = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if plen == 0 {
        r.push(0, k, "payload length 0 (a jumbogram)".into());
        return;
    }
    if 40 + plen > buf.len() {
        r.push(
            0,
            k,
            format!("payload length {plen} beyond {} bytes", buf.len() - 40),
        );
        return;
    }
    r.packet_end = Some(14 + 40 + plen);
    let (src, dst) = (&buf[8..24], &buf[24..40]);
    let payload = &buf[40..40 + plen];
    let mut next = buf[6];
    let mut off = 0;
    let mut first = true;
    loop {
        let len = match next {
            0 | 43 | 60 => {
                if next == 0 && !first {
                    // RFC 8200 §4.1; a fault, but the chain can still be followed.
                    r.push(0, Kind::Ipv6Ext, "hop-by-hop options not first".into());
                }
                payload.get(off + 1).map(|l| (*l as usize + 1) * 8)
            }
            44 => Some(8),
            51 => payload.get(off + 1).map(|l| (*l as usize + 2) * 4),
            _ => break,
        };
        let Some(len) = len.filter(|l| off + l <= payload.len()) else {
            r.push(0, Kind::Ipv6Ext, format!("header {next} past the payload"));
            return;
        };
        if next == 44 {
            let fo = u16::from_be_bytes([payload[off + 2], payload[off + 3]]);
            if fo & 0xfff9 != 0 {
                // A fragment: the upper layer is checked after reassembly.
                return;
            }
        }
        next = payload[off];
        off += len;
        first = false;
    }
    r.ipv6 = Some(Ipv6Info {
        src: src.try_into().unwrap(),
        dst: dst.try_into().unwrap(),
        upper: next,
        payload_len: plen as u16,
    });
    let upper = &payload[off..];
    match next {
        4 => ipv4(upper, 0, Enclosing::Softwire, r),
        6 => tcp(upper, pseudo6(src, dst, 6, upper.len()), 0, r),
        17 => udp(upper, |len| pseudo6(src, dst, 17, len), 0, true, r),
        58 => {
            if upper.len() < 8 {
                r.push(
                    0,
                    Kind::Icmp,
                    format!("ICMPv6 message of {} bytes", upper.len()),
                );
            } else if let Some(res) = residual(sum(upper, pseudo6(src, dst, 58, upper.len()))) {
                r.push(
                    0,
                    Kind::Icmpv6Checksum,
                    format!("checksum residual {res:#06x}"),
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{eth, icmp4_echo, softwire, tcp4_syn_mss, udp4, ETH_P_IP, ETH_P_IPV6};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Valid frames of every kind the checker knows, built with etherparse, each with the
    /// byte ranges no checksum or length covers.
    #[allow(clippy::type_complexity)]
    fn valid() -> Vec<(&'static str, Vec<u8>, Vec<std::ops::Range<usize>>)> {
        let udp = udp4(A, B, 5000, 7777, 64, b"hello, world");
        let tcp = tcp4_syn_mss(A, B, 40000, 80, 64, 1460);
        let ping = icmp4_echo(A, B, 7, 1, 64, false);
        let err = {
            let b = etherparse::PacketBuilder::ipv4(B.octets(), A.octets(), 64).icmpv4(
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Port,
                ),
            );
            let mut v = Vec::new();
            b.write(&mut v, &udp).unwrap();
            v
        };
        let udp6 = {
            let b = etherparse::PacketBuilder::ipv6(
                v6("2001:db8::1").octets(),
                v6("2001:db8::2").octets(),
                64,
            )
            .udp(53, 53);
            let mut v = Vec::new();
            b.write(&mut v, b"q").unwrap();
            v
        };
        let ping6 = {
            let b = etherparse::PacketBuilder::ipv6(
                v6("2001:db8::1").octets(),
                v6("2001:db8::2").octets(),
                64,
            )
            .icmpv6_echo_request(1, 2);
            let mut v = Vec::new();
            b.write(&mut v, b"ping").unwrap();
            v
        };
        let sw = softwire(v6("2001:db8:a::2"), v6("2001:db8:f::2"), &tcp, &[]);
        let sw_opts = softwire(
            v6("2001:db8:a::2"),
            v6("2001:db8:f::2"),
            &udp,
            &[(60, crate::packets::tel_destopts(4))],
        );
        let m = [2, 0, 0, 0, 0, 1];
        // Ethernet; IPv6 traffic class, flow label, next header (a flip may name a protocol
        // nothing checks) and hop limit; a softwire's addresses (the inner IPv4 checksums
        // have no IPv6 pseudo-header); a destination option's contents.
        // A list of ranges that has one here (not the bytes 0 to 13).
        #[allow(clippy::single_range_in_vec_init)]
        let eth_only = vec![0..14];
        let v6_fixed = vec![0..14, 14..18, 20..22];
        let sw_fixed = vec![0..14, 14..18, 20..54];
        let sw_opts_fixed = vec![0..14, 14..18, 20..54, 54..55, 56..62];
        vec![
            ("UDP", eth(m, m, ETH_P_IP, &udp), eth_only.clone()),
            (
                "TCP with options",
                eth(m, m, ETH_P_IP, &tcp),
                eth_only.clone(),
            ),
            ("ICMP echo", eth(m, m, ETH_P_IP, &ping), eth_only.clone()),
            (
                "ICMP error quoting UDP",
                eth(m, m, ETH_P_IP, &err),
                eth_only,
            ),
            (
                "UDP over IPv6",
                eth(m, m, ETH_P_IPV6, &udp6),
                v6_fixed.clone(),
            ),
            ("ICMPv6 echo", eth(m, m, ETH_P_IPV6, &ping6), v6_fixed),
            ("softwire TCP", eth(m, m, ETH_P_IPV6, &sw), sw_fixed),
            (
                "softwire with a destination option",
                eth(m, m, ETH_P_IPV6, &sw_opts),
                sw_opts_fixed,
            ),
        ]
    }

    #[test]
    fn checker_accepts_valid_frames() {
        for (what, f, _) in valid() {
            let r = check_frame(&f);
            assert!(r.faults.is_empty(), "{what}: {:?}", r.faults);
            // Ethernet padding after the packet is not a fault.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0; 7]);
            let p = check_frame(&padded);
            assert!(p.faults.is_empty(), "{what} padded");
            assert_eq!(p.packet_end, Some(f.len()), "{what}: where the packet ends");
        }
        let mut none = udp4(A, B, 1, 2, 64, b"x");
        none[26..28].copy_from_slice(&[0, 0]);
        let r = check_ipv4(&none);
        assert!(r.ok(), "UDP over IPv4 may go without a checksum");
        assert_eq!(r.faults[0].kind, Kind::UdpNoChecksum);
    }

    /// Every single-bit corruption of every valid frame is found, in every byte that a
    /// checksum or a length covers.
    #[test]
    fn checker_finds_every_one_bit_corruption() {
        for (what, f, uncovered) in valid() {
            for byte in 0..f.len() {
                if uncovered.iter().any(|r| r.contains(&byte)) {
                    continue;
                }
                for bit in 0..8 {
                    let mut g = f.clone();
                    g[byte] ^= 1 << bit;
                    let r = check_frame(&g);
                    assert!(
                        !r.ok(),
                        "{what}: flipping bit {bit} of byte {byte} went unnoticed: {}",
                        hex(&g)
                    );
                }
            }
        }
    }

    #[test]
    fn checker_names_lengths() {
        let m = [2; 6];
        let udp = udp4(A, B, 5000, 7777, 64, b"hello");
        // Truncated below the total length.
        let cut = eth(m, m, ETH_P_IP, &udp[..udp.len() - 1]);
        let r = check_frame(&cut);
        assert_eq!(r.faults[0].kind, Kind::Ipv4, "{:?}", r.faults);
        // A softwire whose inner total length is shorter than the IPv6 payload, or longer.
        let mut inner = udp.clone();
        inner.push(0);
        let sw = softwire(v6("2001:db8:a::2"), v6("2001:db8:f::2"), &inner, &[]);
        let r = check_frame(&eth(m, m, ETH_P_IPV6, &sw));
        assert_eq!(r.faults[0].kind, Kind::Trailing, "{:?}", r.faults);
        let sw = softwire(
            v6("2001:db8:a::2"),
            v6("2001:db8:f::2"),
            &udp[..udp.len() - 1],
            &[],
        );
        let r = check_frame(&eth(m, m, ETH_P_IPV6, &sw));
        assert_eq!(r.faults[0].kind, Kind::Ipv4, "{:?}", r.faults);
        // UDP length beyond the IP payload: named as a length fault (before any checksum).
        let mut long = udp.clone();
        long[24..26].copy_from_slice(&100u16.to_be_bytes());
        let r = check_ipv4(&long);
        assert_eq!(r.faults[0].kind, Kind::Udp, "{:?}", r.faults);
        // An option running past the header.
        let mut opt = vec![0x46];
        opt.extend_from_slice(&udp[1..20]);
        opt.extend_from_slice(&[7, 9, 4, 0]);
        opt.extend_from_slice(&udp[20..]);
        let n = opt.len() as u16;
        opt[2..4].copy_from_slice(&n.to_be_bytes());
        dslite_common::csum::set_ipv4_header_checksum(&mut opt);
        let r = check_ipv4(&opt);
        assert_eq!(
            r.faults.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [Kind::Ipv4Options],
            "{:?}",
            r.faults
        );
        // IPv6 payload length beyond the frame, and a jumbogram.
        let mut sw = softwire(v6("2001:db8:a::2"), v6("2001:db8:f::2"), &udp, &[]);
        sw[5] += 1;
        assert_eq!(
            check_frame(&eth(m, m, ETH_P_IPV6, &sw)).faults[0].kind,
            Kind::Ipv6
        );
        sw[4] = 0;
        sw[5] = 0;
        assert_eq!(
            check_frame(&eth(m, m, ETH_P_IPV6, &sw)).faults[0].kind,
            Kind::Ipv6
        );
        // A quote shorter than its header + 8.
        let b = etherparse::PacketBuilder::ipv4(B.octets(), A.octets(), 64).icmpv4(
            etherparse::Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ),
        );
        let mut short = Vec::new();
        b.write(&mut short, &udp[..24]).unwrap();
        let r = check_ipv4(&short);
        assert_eq!(
            r.faults
                .iter()
                .map(|f| (f.depth, f.kind))
                .collect::<Vec<_>>(),
            [(1, Kind::Quote)]
        );
    }

    /// A checksum error carried through an RFC 1624 update keeps its residual (so the fuzzer
    /// can tell it from one the update made); a different error does not.
    #[test]
    fn checker_residual_survives_incremental_updates() {
        use dslite_common::csum;
        let mut p = udp4(A, B, 5000, 7777, 64, b"payload");
        p[30] ^= 0x10; // corrupt the payload: UDP checksum now wrong
        let before = check_ipv4(&p);
        assert_eq!(before.faults.len(), 1);
        // Translate the source as a NAT does, updating both checksums incrementally.
        let new = [198, 51, 100, 1];
        let old: [u8; 4] = p[12..16].try_into().unwrap();
        let h = u16::from_ne_bytes([p[10], p[11]]);
        p[10..12].copy_from_slice(&csum::replace4(h, old, new).to_ne_bytes());
        let u = u16::from_ne_bytes([p[26], p[27]]);
        p[26..28].copy_from_slice(&csum::udp_replace4(u, old, new).to_ne_bytes());
        p[12..16].copy_from_slice(&new);
        let after = check_ipv4(&p);
        assert!(after.not_in(&before).is_empty(), "{:?}", after.faults);
        // A wrong update is a new fault.
        p[26] ^= 1;
        assert_eq!(check_ipv4(&p).not_in(&before).len(), 1);
    }
}
