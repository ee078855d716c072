//! Frame mutation for the dataplane fuzzer (`tests/tests/fuzz.rs`): a seeded PRNG, a locator
//! for a frame's layers, and mutations that know those layers (IPv4 and IPv6 header fields,
//! IPv4 options, IPv6 extension-header chains, TCP/UDP/ICMP fields, ICMP errors quoting
//! anything), plus the blind ones (truncation, bit flips, random bytes). A mutation may be
//! followed by a fix-up that makes lengths and checksums consistent again, so the frame
//! gets past the first check and reaches the deeper ones.
//!
//! Everything is a pure function of the PRNG's state: a seed reproduces a whole run.

use crate::packets::tel_destopts;

/// xorshift64* (Vigna 2016): tiny, fast, and plenty for picking mutations.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero; mix the seed once (splitmix64's finaliser).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u32) -> bool {
        self.below(100) < pct as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Where a frame's layers start, as far as they can be found.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// Offset of the IPv6 header (14), if the EtherType says IPv6.
    pub ipv6: Option<usize>,
    /// IPv6 extension headers: (offset, type), in chain order.
    pub ext: Vec<(usize, u8)>,
    /// Offset of the byte holding the next-header value of the last header before the
    /// upper layer (the IPv6 header's, or the last extension header's).
    pub next_at: Option<usize>,
    /// Offset of the IPv4 header: the frame's, or a softwire's inner one.
    pub ipv4: Option<usize>,
    /// Offset of the upper-layer header of that IPv4 packet, and its protocol.
    pub l4: Option<usize>,
    pub proto: u8,
}

/// Find the layers of `f`, leniently (a mutated frame may be cut anywhere).
pub fn locate(f: &[u8]) -> Layers {
    let mut l = Layers::default();
    if f.len() < 14 {
        return l;
    }
    let v4_at = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => Some(14),
        0x86dd if f.len() >= 54 => {
            l.ipv6 = Some(14);
            let mut next = f[20];
            let mut at = 20;
            let mut off = 54;
            let mut n = 0;
            while matches!(next, 0 | 43 | 44 | 51 | 60) && off + 2 <= f.len() && n < 8 {
                let len = match next {
                    44 => 8,
                    51 => (f[off + 1] as usize + 2) * 4,
                    _ => (f[off + 1] as usize + 1) * 8,
                };
                l.ext.push((off, next));
                at = off;
                next = f[off];
                off += len;
                n += 1;
            }
            l.next_at = Some(at);
            (next == 4).then_some(off)
        }
        _ => None,
    };
    if let Some(v4) = v4_at.filter(|&o| o + 20 <= f.len()) {
        l.ipv4 = Some(v4);
        let hl = (f[v4] & 0x0f) as usize * 4;
        if hl >= 20 && v4 + hl <= f.len() {
            l.l4 = Some(v4 + hl);
            l.proto = f[v4 + 9];
        }
    }
    l
}

/// Addresses worth trying in an IPv4 address field, besides random ones.
pub const V4_INTERESTING: &[[u8; 4]] = &[
    [0, 0, 0, 0],
    [127, 0, 0, 1],
    [255, 255, 255, 255],
    [224, 0, 0, 1],
    [240, 0, 0, 1],
    [192, 0, 0, 1],
    [192, 0, 0, 2],
    [192, 168, 1, 10],
    [192, 168, 1, 1],
    [192, 168, 1, 255],
    [203, 0, 113, 1],
    [203, 0, 113, 2],
    [203, 0, 113, 3],
    [198, 51, 100, 0],
    [198, 51, 100, 1],
    [198, 51, 100, 2],
    [198, 51, 100, 3],
    [198, 18, 0, 1],
    [100, 64, 0, 1],
];

/// Addresses worth trying in an IPv6 address field.
pub const V6_INTERESTING: &[&str] = &[
    "2001:db8:a::2",
    "2001:db8:a::99",
    "2001:db8:a::1",
    "2001:db8:f::2",
    "2001:db8:f::1",
    "2001:db8:c::2",
    "::",
    "::1",
    "fe80::1",
    "ff02::1",
    "::ffff:192.0.0.1",
];

/// Upper-layer protocols worth trying in an IPv4 protocol or IPv6 next-header field.
pub const PROTOS: &[u8] = &[
    0, 1, 2, 4, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 132, 255,
];

/// Set the IPv4 header checksum of the header at `v4` (when the frame holds it).
pub fn fix_ipv4_checksum(f: &mut [u8], v4: usize) {
    let hl = (f[v4] & 0x0f) as usize * 4;
    if hl >= 20 && v4 + hl <= f.len() {
        dslite_common::csum::set_ipv4_header_checksum(&mut f[v4..]);
    }
}

/// Set the TCP, UDP or ICMP checksum of the IPv4 packet at `v4` (when it is whole and
/// not a fragment), over what its total length says.
pub fn fix_l4_checksum(f: &mut [u8], v4: usize) {
    let hl = (f[v4] & 0x0f) as usize * 4;
    let tot = u16::from_be_bytes([f[v4 + 2], f[v4 + 3]]) as usize;
    let frag = u16::from_be_bytes([f[v4 + 6], f[v4 + 7]]);
    if hl < 20 || tot < hl || v4 + tot > f.len() || frag & 0x3fff != 0 {
        return;
    }
    let (proto, l4) = (f[v4 + 9], v4 + hl);
    let len = tot - hl;
    let csum_at = match proto {
        6 if len >= 20 => l4 + 16,
        17 if len >= 8 => l4 + 6,
        1 if len >= 4 => l4 + 2,
        _ => return,
    };
    f[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let mut acc = 0;
    if proto != 1 {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&f[v4 + 12..v4 + 20]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        acc = dslite_common::csum::sum_bytes(&p, 0);
    }
    let mut c = !dslite_common::csum::fold(dslite_common::csum::sum_bytes(&f[l4..v4 + tot], acc));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
}

/// Make the frame's lengths agree with its size: the IPv6 payload length, the IPv4 total
/// length, the UDP length.
pub fn fix_lengths(f: &mut [u8]) {
    let l = locate(f);
    if let Some(v6) = l.ipv6 {
        let n = (f.len() - v6 - 40).min(0xffff) as u16;
        f[v6 + 4..v6 + 6].copy_from_slice(&n.to_be_bytes());
    }
    if let Some(v4) = l.ipv4 {
        let n = (f.len() - v4).min(0xffff) as u16;
        f[v4 + 2..v4 + 4].copy_from_slice(&n.to_be_bytes());
        if let (Some(l4), 17) = (l.l4, l.proto) {
            if l4 + 8 <= f.len() {
                let n = (f.len() - l4) as u16;
                f[l4 + 4..l4 + 6].copy_from_slice(&n.to_be_bytes());
            }
        }
    }
}

/// Lengths, then checksums (the IPv4 header's, the upper layer's).
pub fn fix_all(f: &mut [u8]) {
    fix_lengths(f);
    fix_checksums(f);
}

pub fn fix_checksums(f: &mut [u8]) {
    let l = locate(f);
    if let Some(v4) = l.ipv4 {
        fix_l4_checksum(f, v4);
        fix_ipv4_checksum(f, v4);
    }
}

/// One mutation of a frame that knows its layers. Returns what it did, for the report.
pub fn mutate_structured(rng: &mut Rng, f: &mut Vec<u8>) -> &'static str {
    let l = locate(f);
    for _ in 0..8 {
        match rng.below(9) {
            0 if l.ipv4.is_some() => return ipv4_field(rng, f, l.ipv4.unwrap()),
            1 if l.ipv4.is_some() => return ipv4_options(rng, f, l.ipv4.unwrap()),
            2 if l.ipv6.is_some() => return ipv6_field(rng, f, l.ipv6.unwrap()),
            3 if l.ipv6.is_some() => return ipv6_ext(rng, f, &l),
            4 if l.l4.is_some() => return l4_field(rng, f, l.l4.unwrap(), l.proto),
            5 => {
                let cut = 14 + rng.below(f.len().saturating_sub(13).max(1));
                f.truncate(cut.min(f.len()));
                return "truncate";
            }
            6 => {
                let n = 1 + rng.below(64);
                let pad = if rng.chance(50) {
                    vec![0; n]
                } else {
                    rng.bytes(n)
                };
                f.extend_from_slice(&pad);
                return "append bytes";
            }
            7 if f.len() > 14 => {
                let at = 14 + rng.below(f.len() - 14);
                let any = rng.byte();
                f[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, any]);
                return "set a byte";
            }
            8 if f.len() > 14 => {
                for _ in 0..1 + rng.below(4) {
                    // Mostly in the headers.
                    let span = if rng.chance(75) {
                        f.len().min(14 + 80)
                    } else {
                        f.len()
                    };
                    let at = 14 + rng.below(span - 14);
                    f[at] ^= 1 << rng.below(8);
                }
                return "flip bits";
            }
            _ => {}
        }
    }
    "none"
}

fn ipv4_field(rng: &mut Rng, f: &mut [u8], v4: usize) -> &'static str {
    let h = &mut f[v4..v4 + 20];
    match rng.below(10) {
        0 => {
            h[0] = (*rng.pick(&[4u8, 4, 4, 6, 0, 5, 15]) << 4) | rng.below(16) as u8;
            "IPv4 version/IHL"
        }
        1 => {
            let tot = u16::from_be_bytes([h[2], h[3]]);
            let v = match rng.below(6) {
                0 => 0,
                1 => 20,
                2 => 0xffff,
                3 => tot.wrapping_add(1 + rng.below(8) as u16),
                4 => tot.wrapping_sub(1 + rng.below(8) as u16),
                _ => rng.u16(),
            };
            h[2..4].copy_from_slice(&v.to_be_bytes());
            "IPv4 total length"
        }
        2 => {
            let flags: u16 = *rng.pick(&[0, 0x4000, 0x2000, 0x6000, 0x8000]);
            let any = rng.u16() & 0x1fff;
            let off: u16 = *rng.pick(&[0, 0, 1, 2, 0x1fff, any]);
            h[6..8].copy_from_slice(&(flags | off).to_be_bytes());
            "IPv4 flags/fragment offset"
        }
        3 => {
            h[8] = *rng.pick(&[0, 1, 2, 64, 255]);
            "IPv4 TTL"
        }
        4 => {
            h[9] = *rng.pick(PROTOS);
            "IPv4 protocol"
        }
        5 => {
            h[10..12].copy_from_slice(&rng.u16().to_ne_bytes());
            "IPv4 header checksum"
        }
        6 | 7 => {
            let at = if rng.chance(50) { 12 } else { 16 };
            let a = if rng.chance(70) {
                *rng.pick(V4_INTERESTING)
            } else {
                [rng.byte(), rng.byte(), rng.byte(), rng.byte()]
            };
            h[at..at + 4].copy_from_slice(&a);
            "IPv4 address"
        }
        8 => {
            h[1] = rng.byte();
            "IPv4 TOS"
        }
        _ => {
            h[4..6].copy_from_slice(&rng.u16().to_be_bytes());
            "IPv4 identification"
        }
    }
}

/// Insert IPv4 options after the fixed header: well-formed ones, malformed ones, or junk.
fn ipv4_options(rng: &mut Rng, f: &mut Vec<u8>, v4: usize) -> &'static str {
    let hl = (f[v4] & 0x0f) as usize * 4;
    if hl < 20 || v4 + hl > f.len() {
        return "none";
    }
    let mut o: Vec<u8> = match rng.below(7) {
        0 => vec![1, 1, 1, 0],                           // NOPs, end of list
        1 => vec![7, 7, 4, 0, 0, 0, 0, 0],               // record route, one slot
        2 => vec![148, 4, 0, 0],                         // router alert (RFC 2113)
        3 => vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0], // timestamp
        4 => vec![7, rng.byte(), rng.byte(), 0],         // record route, random length
        5 => vec![rng.byte(), 2 + rng.below(40) as u8, 0, 0],
        _ => {
            let n = 4 * (1 + rng.below(10));
            rng.bytes(n)
        }
    };
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    let room = 60 - hl;
    if o.len() > room {
        o.truncate(room & !3);
    }
    if o.is_empty() {
        return "none";
    }
    let at = v4 + hl;
    f.splice(at..at, o.iter().copied());
    f[v4] = (f[v4] & 0xf0) | ((hl + o.len()) / 4) as u8;
    let tot = u16::from_be_bytes([f[v4 + 2], f[v4 + 3]]).wrapping_add(o.len() as u16);
    f[v4 + 2..v4 + 4].copy_from_slice(&tot.to_be_bytes());
    "IPv4 options"
}

fn ipv6_field(rng: &mut Rng, f: &mut [u8], v6: usize) -> &'static str {
    let h = &mut f[v6..v6 + 40];
    match rng.below(6) {
        0 => {
            h[0] = (*rng.pick(&[6u8, 6, 4, 0, 15]) << 4) | (h[0] & 0x0f);
            "IPv6 version"
        }
        1 => {
            let plen = u16::from_be_bytes([h[4], h[5]]);
            let v = match rng.below(5) {
                0 => 0,
                1 => plen.wrapping_add(1 + rng.below(8) as u16),
                2 => plen.wrapping_sub(1 + rng.below(8) as u16),
                3 => 0xffff,
                _ => rng.u16(),
            };
            h[4..6].copy_from_slice(&v.to_be_bytes());
            "IPv6 payload length"
        }
        2 => {
            h[6] = *rng.pick(PROTOS);
            "IPv6 next header"
        }
        3 => {
            h[7] = *rng.pick(&[0, 1, 255]);
            "IPv6 hop limit"
        }
        _ => {
            let at = if rng.chance(50) { 8 } else { 24 };
            let a: std::net::Ipv6Addr = if rng.chance(70) {
                rng.pick(V6_INTERESTING).parse().unwrap()
            } else {
                // Somewhere in the allowed B4 prefix.
                let mut o = "2001:db8:a::"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets();
                o[8..].copy_from_slice(&rng.bytes(8));
                o.into()
            };
            h[at..at + 16].copy_from_slice(&a.octets());
            "IPv6 address"
        }
    }
}

/// Insert an extension header somewhere in the chain: hop-by-hop, routing, fragment,
/// destination options (with a Tunnel Encapsulation Limit, padding, a jumbo payload option
/// or junk), authentication; usually with a length that fits, sometimes not.
fn ipv6_ext(rng: &mut Rng, f: &mut Vec<u8>, l: &Layers) -> &'static str {
    let (Some(v6), Some(_)) = (l.ipv6, l.next_at) else {
        return "none";
    };
    // Insert after the IPv6 header or after one of the existing extension headers.
    let pos = rng.below(l.ext.len() + 1);
    let (at, prev_next_at) = if pos == 0 {
        (v6 + 40, v6 + 6)
    } else {
        let (off, ty) = l.ext[pos - 1];
        let len = match ty {
            44 => 8,
            51 => (f.get(off + 1).copied().unwrap_or(0) as usize + 2) * 4,
            _ => (f.get(off + 1).copied().unwrap_or(0) as usize + 1) * 8,
        };
        (off + len, off)
    };
    if at > f.len() || prev_next_at >= f.len() {
        return "none";
    }
    let ty = *rng.pick(&[0u8, 0, 43, 44, 44, 51, 60, 60, 60]);
    let mut h = match ty {
        44 => {
            let off: u16 = *rng.pick(&[0, 0, 1, 0x1fff]);
            let m = rng.chance(50) as u16;
            let mut h = vec![0, 0];
            h.extend_from_slice(&((off << 3) | m).to_be_bytes());
            h.extend_from_slice(&rng.bytes(4));
            h
        }
        43 => {
            let segs = rng.below(3) as u8;
            let mut h = vec![0, 2 * segs, *rng.pick(&[0u8, 2, 3, 4]), rng.below(3) as u8];
            h.extend_from_slice(&[0; 4]);
            h.extend_from_slice(&rng.bytes(16 * segs as usize));
            h
        }
        51 => {
            let mut h = vec![0, 4];
            h.extend_from_slice(&rng.bytes(22));
            h
        }
        _ => {
            let body: Vec<u8> = match rng.below(5) {
                0 => tel_destopts(rng.byte())[2..].to_vec(),
                1 => vec![1, 4, 0, 0, 0, 0],       // PadN
                2 => vec![0xc2, 4, 0, 0, 0x10, 0], // jumbo payload
                3 => vec![0, 0, 0, 0, 0, 0],       // Pad1s
                _ => {
                    let n = 6 + 8 * rng.below(3);
                    rng.bytes(n)
                }
            };
            let mut h = vec![0, 0];
            h.extend_from_slice(&body);
            while !h.len().is_multiple_of(8) {
                h.push(0);
            }
            h[1] = (h.len() / 8 - 1) as u8;
            h
        }
    };
    if rng.chance(15) {
        h[1] = rng.byte(); // a length that lies
    }
    h[0] = f[prev_next_at];
    f[prev_next_at] = ty;
    f.splice(at..at, h.iter().copied());
    let plen = u16::from_be_bytes([f[v6 + 4], f[v6 + 5]]).wrapping_add(h.len() as u16);
    f[v6 + 4..v6 + 6].copy_from_slice(&plen.to_be_bytes());
    "IPv6 extension header"
}

fn l4_field(rng: &mut Rng, f: &mut [u8], l4: usize, proto: u8) -> &'static str {
    let n = f.len() - l4;
    match proto {
        6 if n >= 20 => match rng.below(5) {
            0 => {
                let at = l4 + 2 * rng.below(2);
                f[at..at + 2].copy_from_slice(&rng.u16().to_be_bytes());
                "TCP port"
            }
            1 => {
                let any = rng.byte();
                f[l4 + 13] = *rng.pick(&[0x02, 0x12, 0x10, 0x04, 0x14, 0x11, 0x01, 0xff, any]);
                "TCP flags"
            }
            2 => {
                f[l4 + 12] = (rng.below(16) as u8) << 4;
                "TCP data offset"
            }
            3 if n >= 24 => {
                // The MSS option the clamp reads: odd lengths, huge values.
                let o = [
                    2,
                    *rng.pick(&[4u8, 0, 1, 2, 3, 255]),
                    rng.byte(),
                    rng.byte(),
                ];
                f[l4 + 20..l4 + 24].copy_from_slice(&o);
                "TCP MSS option"
            }
            _ => {
                f[l4 + 16..l4 + 18].copy_from_slice(&rng.u16().to_ne_bytes());
                "TCP checksum"
            }
        },
        17 if n >= 8 => match rng.below(4) {
            0 => {
                let at = l4 + 2 * rng.below(2);
                f[at..at + 2].copy_from_slice(&rng.u16().to_be_bytes());
                "UDP port"
            }
            1 => {
                let any = rng.u16();
                let v: u16 = *rng.pick(&[0, 7, 8, 9, 0xffff, any]);
                f[l4 + 4..l4 + 6].copy_from_slice(&v.to_be_bytes());
                "UDP length"
            }
            2 => {
                f[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
                "UDP checksum 0"
            }
            _ => {
                f[l4 + 6..l4 + 8].copy_from_slice(&rng.u16().to_ne_bytes());
                "UDP checksum"
            }
        },
        1 if n >= 8 => match rng.below(3) {
            0 => {
                f[l4] = *rng.pick(&[0, 3, 4, 5, 8, 11, 12, 13, 14, 17, 255]);
                "ICMP type"
            }
            1 => {
                f[l4 + 1] = rng.byte();
                "ICMP code"
            }
            _ => {
                f[l4 + 4..l4 + 6].copy_from_slice(&rng.u16().to_be_bytes());
                "ICMP identifier"
            }
        },
        _ => "none",
    }
}

/// An ICMPv4 error from `src` to `dst` quoting (part of) `quoted`, mutated in the ways
/// that trouble translators: any quoted protocol (IPv4-in-IPv4, IPv6-in-IPv4, GRE, ESP,
/// SCTP, ICMP errors quoting errors), a quote cut anywhere, quoted options, a quoted
/// checksum that no longer holds. Checksums are fixed up most of the time.
pub fn icmp_error(rng: &mut Rng, src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut q = quoted.to_vec();
    if q.len() >= 20 {
        match rng.below(8) {
            0 => {
                q[9] = *rng.pick(&[1, 4, 41, 47, 50, 132, 0, 255]);
                fix_ipv4_checksum(&mut q, 0);
            }
            1 => {
                // An error quoting an error that quotes the original.
                q = icmp_error(
                    rng,
                    [q[16], q[17], q[18], q[19]],
                    [q[12], q[13], q[14], q[15]],
                    &q,
                );
            }
            2 => {
                ipv4_options(rng, &mut q, 0);
                fix_ipv4_checksum(&mut q, 0);
            }
            3 => {
                let at = rng.below(q.len());
                q[at] ^= 1 << rng.below(8);
            }
            _ => {}
        }
        let hl = ((q[0] & 0x0f) as usize * 4).max(20);
        let cut = match rng.below(6) {
            0 => q.len(),
            1 => hl + 8,
            2 => 28,
            3 => rng.below(q.len() + 1),
            _ => (hl + 8 + rng.below(64)).min(q.len()),
        };
        q.truncate(cut.min(q.len()));
    }
    let any = rng.below(16) as u8;
    let (ty, code) = *rng.pick(&[
        (3u8, 3u8),
        (3, 1),
        (3, 4),
        (3, 13),
        (3, any),
        (11, 0),
        (11, 1),
        (12, 0),
        (4, 0),
        (5, 1),
    ]);
    let mut icmp = vec![ty, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&if ty == 3 && code == 4 {
        (*rng.pick(&[0u16, 68, 576, 1280, 1400, 1500, 0xffff])).to_be_bytes()
    } else {
        [0, 0]
    });
    icmp.extend_from_slice(&q);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&icmp);
    let n = ip.len() as u16;
    ip[2..4].copy_from_slice(&n.to_be_bytes());
    if rng.chance(90) {
        fix_l4_checksum(&mut ip, 0);
    }
    fix_ipv4_checksum(&mut ip, 0);
    ip
}
