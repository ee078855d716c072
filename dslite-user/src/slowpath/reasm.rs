//! IPv4 reassembly for the NAT's slow path (RFC 4787 REQ-14/14a; the IP ID per RFC 6864 §5.3.1).
//!
//! Only the first fragment carries the ports, so the AFTR reassembles fragmented datagrams
//! before translating them, as Linux conntrack does. Chains are keyed by the softwire as well
//! as (source, destination, protocol, identification): two subscribers behind the same
//! private address and IP ID never mix (RFC 6864 §5.3.1). Memory and chain count are
//! bounded; an overlapping fragment discards its chain (as RFC 5722 asks for IPv6 and Linux
//! does for IPv4); an exact duplicate is ignored.

use std::collections::HashMap;

use dslite_common::proto::{IPV4_MF, IPV4_MIN_HLEN, IPV4_OFFSET_MASK};

/// What identifies one datagram's fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainKey {
    /// The softwire (B4 address) the fragments came through; zero from the internet.
    pub peer: [u8; 16],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub id: u16,
}

/// Bounds on what the reassembler holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_chains: usize,
    /// Payload bytes held over all chains.
    pub max_bytes: usize,
    pub timeout_ns: u64,
}

/// Why a fragment was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a valid IPv4 fragment (header, length, offset alignment).
    Malformed,
    /// It overlaps a different fragment of the chain: the whole chain is discarded.
    Overlap,
    /// The datagram would exceed 65535 bytes, or two last fragments disagree.
    TooLong,
    /// `max_chains` or `max_bytes` reached.
    Full,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; the datagram is not complete yet (or the fragment was an exact duplicate).
    Pending,
    /// The whole datagram, with a fresh header (no MF, offset 0, new length and checksum).
    Complete(Vec<u8>),
    Refused(Refused),
}

struct Chain {
    started_ns: u64,
    /// The first fragment's header (options included).
    header: Option<Vec<u8>>,
    /// (offset, payload), any order.
    pieces: Vec<(usize, Vec<u8>)>,
    /// Payload length, once the last fragment (MF=0) is in.
    total: Option<usize>,
    bytes: usize,
}

pub struct Reassembler {
    chains: HashMap<ChainKey, Chain>,
    limits: Limits,
    bytes: usize,
    /// Chains evicted to make room since the last [`Reassembler::take_evicted`].
    evicted: usize,
}

/// The key of an IPv4 fragment, or `None` if `pkt` is not one.
pub fn key_of(peer: [u8; 16], pkt: &[u8]) -> Option<ChainKey> {
    if pkt.len() < IPV4_MIN_HLEN || pkt[0] >> 4 != 4 {
        return None;
    }
    Some(ChainKey {
        peer,
        src: pkt[12..16].try_into().ok()?,
        dst: pkt[16..20].try_into().ok()?,
        proto: pkt[9],
        id: u16::from_be_bytes([pkt[4], pkt[5]]),
    })
}

impl Reassembler {
    pub fn new(limits: Limits) -> Reassembler {
        Reassembler {
            chains: HashMap::new(),
            limits,
            bytes: 0,
            evicted: 0,
        }
    }

    /// Chains and bytes one peer may hold: a quarter of the whole, but always room for one
    /// largest datagram (the internet, whose chains come in with peer zero, is one peer too).
    fn share(&self) -> (usize, usize) {
        let max = self.limits.max_bytes;
        (
            (self.limits.max_chains / 4).max(1),
            (max / 4).max(max.min(u16::MAX as usize)),
        )
    }

    fn peer_held(&self, peer: &[u8; 16]) -> (usize, usize) {
        self.chains
            .iter()
            .filter(|(k, _)| k.peer == *peer)
            .fold((0, 0), |(n, b), (_, c)| (n + 1, b + c.bytes))
    }

    /// The oldest chain (of `peer`, when given), other than `keep`.
    fn oldest(&self, peer: Option<&[u8; 16]>, keep: &ChainKey) -> Option<ChainKey> {
        self.chains
            .iter()
            .filter(|(k, _)| *k != keep && peer.is_none_or(|p| k.peer == *p))
            .min_by_key(|(_, c)| c.started_ns)
            .map(|(k, _)| *k)
    }

    /// Chains evicted to make room since the last call.
    pub fn take_evicted(&mut self) -> usize {
        std::mem::take(&mut self.evicted)
    }

    /// Chains held, and payload bytes held.
    pub fn held(&self) -> (usize, usize) {
        (self.chains.len(), self.bytes)
    }

    /// Add one fragment (a whole IPv4 packet) that arrived through `peer` at `now_ns`.
    pub fn add(&mut self, peer: [u8; 16], pkt: &[u8], now_ns: u64) -> Outcome {
        let Some(key) = key_of(peer, pkt) else {
            return Outcome::Refused(Refused::Malformed);
        };
        let hlen = ((pkt[0] & 0x0f) as usize) * 4;
        let tot_len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
        if hlen < IPV4_MIN_HLEN || tot_len < hlen || tot_len > pkt.len() {
            return Outcome::Refused(Refused::Malformed);
        }
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        let offset = ((frag & IPV4_OFFSET_MASK) as usize) * 8;
        let more = frag & IPV4_MF != 0;
        let payload = &pkt[hlen..tot_len];
        let end = offset + payload.len();
        if more && (!payload.len().is_multiple_of(8) || payload.is_empty()) {
            return Outcome::Refused(Refused::Malformed);
        }
        if end + hlen > u16::MAX as usize {
            self.discard(&key);
            return Outcome::Refused(Refused::TooLong);
        }
        if payload.len() > self.share().1 {
            return Outcome::Refused(Refused::Full);
        }
        // Room is made by evicting the oldest chains, of this peer first: a flood (one
        // subscriber's, or the internet's) ages out its own chains, never refuses another
        // subscriber's new datagram (RFC 4787 REQ-14 with the bounds RFC 6333 §6.3 asks for).
        let new_chain = !self.chains.contains_key(&key);
        let (share_chains, share_bytes) = self.share();
        loop {
            let (n, b) = self.peer_held(&peer);
            let over_peer = (new_chain && n >= share_chains) || b + payload.len() > share_bytes;
            let over_all = (new_chain && self.chains.len() >= self.limits.max_chains)
                || self.bytes + payload.len() > self.limits.max_bytes;
            if !over_peer && !over_all {
                break;
            }
            let victim = self.oldest(if over_peer { Some(&peer) } else { None }, &key);
            match victim {
                Some(v) => {
                    self.discard(&v);
                    self.evicted += 1;
                }
                None => return Outcome::Refused(Refused::Full),
            }
        }
        let chain = self.chains.entry(key).or_insert_with(|| Chain {
            started_ns: now_ns,
            header: None,
            pieces: Vec::new(),
            total: None,
            bytes: 0,
        });
        for (o, p) in &chain.pieces {
            let (s, e) = (*o, *o + p.len());
            if s == offset && p.as_slice() == payload {
                return Outcome::Pending; // an exact duplicate
            }
            if offset < e && s < end {
                self.discard(&key);
                return Outcome::Refused(Refused::Overlap);
            }
        }
        if !more {
            if chain.total.is_some_and(|t| t != end) {
                self.discard(&key);
                return Outcome::Refused(Refused::TooLong);
            }
            chain.total = Some(end);
        }
        if chain.total.is_some_and(|t| end > t) {
            self.discard(&key);
            return Outcome::Refused(Refused::TooLong);
        }
        if offset == 0 {
            chain.header = Some(pkt[..hlen].to_vec());
        }
        chain.pieces.push((offset, payload.to_vec()));
        chain.bytes += payload.len();
        self.bytes += payload.len();
        match complete(chain) {
            Some(d) => {
                self.discard(&key);
                Outcome::Complete(d)
            }
            None => Outcome::Pending,
        }
    }

    /// Drop chains older than the timeout; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let timeout = self.limits.timeout_ns;
        let old: Vec<ChainKey> = self
            .chains
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.started_ns) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            self.discard(k);
        }
        old.len()
    }

    fn discard(&mut self, key: &ChainKey) {
        if let Some(c) = self.chains.remove(key) {
            self.bytes -= c.bytes;
        }
    }
}

/// The datagram, if every byte from 0 to the last fragment's end is in.
fn complete(c: &mut Chain) -> Option<Vec<u8>> {
    let total = c.total?;
    let header = c.header.as_ref()?;
    c.pieces.sort_by_key(|(o, _)| *o);
    let mut next = 0;
    for (o, p) in &c.pieces {
        if *o != next {
            return None;
        }
        next += p.len();
    }
    if next != total {
        return None;
    }
    let mut d = Vec::with_capacity(header.len() + total);
    d.extend_from_slice(header);
    for (_, p) in &c.pieces {
        d.extend_from_slice(p);
    }
    let len = d.len() as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    // Keep DF (a fragmented datagram has DF=0 anyway), clear MF and the offset.
    d[6] &= 0x40;
    d[7] = 0;
    dslite_common::csum::set_ipv4_header_checksum(&mut d);
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_chains: 4,
        max_bytes: 10_000,
        timeout_ns: 1_000,
    };

    /// A UDP-like datagram of `n` payload bytes (header 20) from `src`, with IP ID `id`.
    fn datagram(src: u8, id: u16, n: usize) -> Vec<u8> {
        let mut d = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, src, 203, 0, 113, 2,
        ];
        d[2..4].copy_from_slice(&((20 + n) as u16).to_be_bytes());
        d[4..6].copy_from_slice(&id.to_be_bytes());
        d.extend((0..n).map(|i| (i * 7 + src as usize) as u8));
        dslite_common::csum::set_ipv4_header_checksum(&mut d);
        d
    }

    /// Split `d` into fragments of at most `size` payload bytes (a multiple of 8).
    fn fragments(d: &[u8], size: usize) -> Vec<Vec<u8>> {
        let payload = &d[20..];
        let mut out = Vec::new();
        let mut off = 0;
        while off < payload.len() {
            let n = size.min(payload.len() - off);
            let mut f = d[..20].to_vec();
            f.extend_from_slice(&payload[off..off + n]);
            f[2..4].copy_from_slice(&((20 + n) as u16).to_be_bytes());
            let mut fl = (off / 8) as u16;
            if off + n < payload.len() {
                fl |= IPV4_MF;
            }
            f[6..8].copy_from_slice(&fl.to_be_bytes());
            out.push(f);
            off += n;
        }
        out
    }

    fn run(r: &mut Reassembler, peer: u8, frags: &[Vec<u8>]) -> Vec<Outcome> {
        frags.iter().map(|f| r.add([peer; 16], f, 0)).collect()
    }

    #[test]
    fn in_order_and_reversed_give_the_original() {
        let d = datagram(1, 7, 3000);
        for order in [false, true] {
            let mut r = Reassembler::new(LIMITS);
            let mut f = fragments(&d, 1480);
            if order {
                f.reverse();
            }
            let out = run(&mut r, 1, &f);
            assert_eq!(out[..2], [Outcome::Pending, Outcome::Pending]);
            assert_eq!(out[2], Outcome::Complete(d.clone()), "reversed={order}");
            assert_eq!(r.held(), (0, 0));
        }
    }

    #[test]
    fn duplicates_are_ignored_and_overlaps_discard_the_chain() {
        let d = datagram(1, 7, 3000);
        let f = fragments(&d, 1480);
        let mut r = Reassembler::new(LIMITS);
        assert_eq!(r.add([1; 16], &f[0], 0), Outcome::Pending);
        assert_eq!(r.add([1; 16], &f[0], 0), Outcome::Pending);
        assert_eq!(r.add([1; 16], &f[1], 0), Outcome::Pending);
        assert_eq!(r.add([1; 16], &f[2], 0), Outcome::Complete(d.clone()));

        // A fragment at offset 8 overlapping the first one's bytes.
        let mut bad = fragments(&d, 8)[1].clone();
        bad[20] ^= 0xff;
        let mut r = Reassembler::new(LIMITS);
        assert_eq!(r.add([1; 16], &f[0], 0), Outcome::Pending);
        assert_eq!(r.add([1; 16], &bad, 0), Outcome::Refused(Refused::Overlap));
        assert_eq!(r.held(), (0, 0));
        // The rest of that datagram can no longer complete it.
        assert_eq!(r.add([1; 16], &f[1], 0), Outcome::Pending);
        assert_eq!(r.add([1; 16], &f[2], 0), Outcome::Pending);
    }

    #[test]
    fn two_softwires_with_the_same_id_never_mix() {
        let a = datagram(1, 99, 2000);
        let mut b = datagram(1, 99, 2000);
        b[30] ^= 0x55; // same header, other payload
        let (fa, fb) = (fragments(&a, 1480), fragments(&b, 1480));
        let mut r = Reassembler::new(LIMITS);
        assert_eq!(r.add([1; 16], &fa[0], 0), Outcome::Pending);
        assert_eq!(r.add([2; 16], &fb[0], 0), Outcome::Pending);
        assert_eq!(r.add([2; 16], &fb[1], 0), Outcome::Complete(b));
        assert_eq!(r.add([1; 16], &fa[1], 0), Outcome::Complete(a));
    }

    #[test]
    fn limits_and_timeout_bound_what_is_held() {
        let mut r = Reassembler::new(Limits {
            max_chains: 16,
            ..LIMITS
        });
        for (i, peer) in [[1u8; 16], [2; 16], [3; 16], [4; 16]].iter().enumerate() {
            for id in 0..4 {
                let f = fragments(&datagram(1, id, 1200), 1000);
                assert_eq!(r.add(*peer, &f[1], 10 + i as u64), Outcome::Pending);
            }
        }
        assert_eq!(r.held().0, 16);
        let f = fragments(&datagram(1, 9, 1200), 1000);
        assert_eq!(
            r.add([5; 16], &f[1], 20),
            Outcome::Pending,
            "the oldest makes room"
        );
        assert_eq!(r.take_evicted(), 1);
        assert_eq!(r.held().0, 16);
        assert_eq!(r.expire(500), 0);
        assert_eq!(r.expire(1030), 16);
        assert_eq!(r.held(), (0, 0));
        let mut r = Reassembler::new(Limits {
            max_bytes: 1000,
            ..LIMITS
        });
        let big = fragments(&datagram(1, 9, 2000), 1480);
        assert_eq!(r.add([1; 16], &big[0], 0), Outcome::Refused(Refused::Full));
    }

    #[test]
    fn a_flood_from_one_peer_evicts_only_its_own_chains() {
        let mut r = Reassembler::new(Limits {
            max_chains: 16,
            max_bytes: 1 << 20,
            timeout_ns: 1 << 40,
        });
        // Another subscriber's datagram is under way...
        let good = datagram(7, 1, 3000);
        let gf = fragments(&good, 1480);
        assert_eq!(r.add([9; 16], &gf[0], 0), Outcome::Pending);
        // ...while one peer floods incomplete chains far beyond its share.
        for id in 0..1000u16 {
            let f = fragments(&datagram(1, id, 1200), 1000);
            assert_eq!(r.add([1; 16], &f[1], 1 + id as u64), Outcome::Pending);
        }
        assert!(r.peer_held(&[1; 16]).0 <= 4, "the flood keeps to its share");
        assert_eq!(r.add([9; 16], &gf[1], 2000), Outcome::Pending);
        assert_eq!(r.add([9; 16], &gf[2], 2001), Outcome::Complete(good));
    }

    #[test]
    fn malformed_fragments_are_refused() {
        let d = datagram(1, 7, 100);
        let mut f = fragments(&d, 48)[0].clone();
        f.truncate(30); // total length beyond the bytes
        let mut r = Reassembler::new(LIMITS);
        assert_eq!(r.add([0; 16], &f, 0), Outcome::Refused(Refused::Malformed));
        let mut odd = fragments(&d, 48)[0].clone();
        odd.truncate(20 + 44);
        odd[2..4].copy_from_slice(&64u16.to_be_bytes()); // 44 bytes with MF: not a multiple of 8
        assert_eq!(
            r.add([0; 16], &odd, 0),
            Outcome::Refused(Refused::Malformed)
        );
        let mut far = fragments(&d, 48)[1].clone();
        far[6..8].copy_from_slice(&(8190u16).to_be_bytes()); // ends past 65535
        assert_eq!(r.add([0; 16], &far, 0), Outcome::Refused(Refused::TooLong));
    }
}
