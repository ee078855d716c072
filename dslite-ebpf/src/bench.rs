//! Benchmark programs (`cargo xtask bench`, cargo feature `bench`): a baseline and probes
//! that time the building blocks of the paths. The production object (`cargo xtask
//! build-ebpf`) is built without them.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    programs::XdpContext,
};

use aya_ebpf::maps::Array;

use crate::packet;

/// Where the paths stop (`bench_stage!`): 0 runs them whole; n returns XDP_DROP at stage n.
/// Written by the bench between runs, so each stage's cost is the difference between two.
#[map(name = "BENCH_STAGE")]
static BENCH_STAGE: Array<u32> = Array::with_max_entries(1, 0);

/// True when the bench asked the path to stop at `stage`. A BPF call of its own: its frame
/// is a leaf off the caller's, never on the deepest call chain.
#[inline(never)]
pub fn stop_at(stage: u32) -> bool {
    BENCH_STAGE.get(0).is_some_and(|s| *s == stage)
}

/// Benchmark baseline (`cargo xtask bench`): parse Ethernet and the IP header, swap the MAC
/// addresses and send the frame back (XDP_TX). The least a forwarding program does: the
/// per-path costs are reported against it.
#[xdp]
pub fn dslite_bench_baseline(ctx: XdpContext) -> u32 {
    let Some(eth) = packet::ptr_at::<[u8; 14], _>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let eth = unsafe { &mut *eth };
    let ok = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => packet::ptr_at::<[u8; 20], _>(&ctx, 14).is_some(),
        0x86dd => packet::ptr_at::<[u8; 40], _>(&ctx, 14).is_some(),
        _ => false,
    };
    if !ok {
        return xdp_action::XDP_PASS;
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[0..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&dst);
    xdp_action::XDP_TX
}

/// Benchmark probes (`cargo xtask bench`): the building blocks of the paths, each alone, so
/// the per-path costs can be taken apart. Each returns XDP_DROP.
mod probes {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, maps::lpm_trie::Key, programs::XdpContext};

    use crate::{maps, packet::ptr_at};

    /// One IPv6 FIB lookup (with the MTU check) for the frame's IPv6 addresses.
    #[xdp]
    pub fn dslite_probe_fib6(ctx: XdpContext) -> u32 {
        let Some(h) = ptr_at::<[u8; 40], _>(&ctx, 14) else {
            return xdp_action::XDP_PASS;
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe {
            src.copy_from_slice(&(&*h)[8..24]);
            dst.copy_from_slice(&(&*h)[24..40]);
        }
        crate::route::fib_probe(&ctx, true, &src, &dst);
        xdp_action::XDP_DROP
    }

    /// One IPv4 FIB lookup for the frame's IPv4 addresses.
    #[xdp]
    pub fn dslite_probe_fib4(ctx: XdpContext) -> u32 {
        let Some(h) = ptr_at::<[u8; 20], _>(&ctx, 14) else {
            return xdp_action::XDP_PASS;
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe {
            src[..4].copy_from_slice(&(&*h)[12..16]);
            dst[..4].copy_from_slice(&(&*h)[16..20]);
        }
        crate::route::fib_probe(&ctx, false, &src, &dst);
        xdp_action::XDP_DROP
    }

    /// The lookups a packet pays before any work: the config arrays, an LPM trie (B4_ALLOW,
    /// 128-bit) and a counter update.
    #[xdp]
    pub fn dslite_probe_lookups(ctx: XdpContext) -> u32 {
        let _ = maps::AFTR_CONFIG.get(0);
        let _ = maps::SLOW_CONFIG.get(0);
        if let Some(h) = ptr_at::<[u8; 40], _>(&ctx, 14) {
            let mut src = [0u8; 16];
            // SAFETY: bounds-checked by `ptr_at`.
            unsafe { src.copy_from_slice(&(&*h)[8..24]) };
            let _ = maps::B4_ALLOW.get(Key::new(128, src));
        }
        maps::count(dslite_common::Counter::AftrOutPackets);
        xdp_action::XDP_DROP
    }

    /// The offsets below are those of a softwire frame without extension headers: Ethernet,
    /// IPv6 (source at 22), IPv4 (at 54: source at 66, destination at 70), then the ports.
    const OUTER_SRC: usize = 22;
    const INNER_SRC: usize = 66;
    const INNER_DST: usize = 70;
    const INNER_SPORT: usize = 74;

    fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
        // SAFETY: bounds-checked by `ptr_at`; copied out.
        ptr_at::<[u8; N], _>(ctx, off).map(|p| unsafe { *p })
    }

    /// One clock read, as every path that refreshes a mapping does it.
    #[xdp]
    pub fn dslite_probe_ktime(_ctx: XdpContext) -> u32 {
        // SAFETY: plain helper call.
        let t = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
        core::hint::black_box(t);
        xdp_action::XDP_DROP
    }

    /// One coarse clock read (the tick's time, no clock source access).
    #[xdp]
    pub fn dslite_probe_ktime_coarse(_ctx: XdpContext) -> u32 {
        // SAFETY: plain helper call.
        let t = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
        core::hint::black_box(t);
        xdp_action::XDP_DROP
    }

    /// The NAT_OUT lookup of a softwire frame's mapping (a hit on the bench's frame).
    #[xdp]
    pub fn dslite_probe_nat_out(ctx: XdpContext) -> u32 {
        let (Some(b4), Some(inside), Some(port)) = (
            bytes::<16>(&ctx, OUTER_SRC),
            bytes::<4>(&ctx, INNER_SRC),
            bytes::<2>(&ctx, INNER_SPORT),
        ) else {
            return xdp_action::XDP_PASS;
        };
        let key = dslite_common::maps::NatOutKey {
            b4,
            inside_addr: inside,
            inside_port: u16::from_ne_bytes(port),
            proto: dslite_common::proto::IPPROTO_UDP,
            _pad: 0,
        };
        if maps::NAT_OUT.get_ptr(&key).is_none() {
            return xdp_action::XDP_PASS;
        }
        xdp_action::XDP_DROP
    }

    /// The one-table layout's outbound table (`dslite_common::table`; issue #13 item 2, not
    /// yet on the paths): 1024 buckets in an mmapable array, for the probe below.
    #[aya_ebpf::macros::map(name = "PROBE_TABLE")]
    static PROBE_TABLE: aya_ebpf::maps::Array<dslite_common::table::OutBucket> =
        aya_ebpf::maps::Array::with_max_entries(
            PROBE_TABLE_BUCKETS,
            aya_ebpf::bindings::BPF_F_MMAPABLE,
        );
    const PROBE_TABLE_BUCKETS: u32 = 1024;

    /// Per CPU: the word the probes' `forget` goes through (0), how many times
    /// `dslite_probe_table_writes` went all the way (1), and a claim count (2).
    #[aya_ebpf::macros::map(name = "PROBE_SCRATCH")]
    static PROBE_SCRATCH: aya_ebpf::maps::PerCpuArray<u32> =
        aya_ebpf::maps::PerCpuArray::with_max_entries(3, 0);

    /// An outbound claim's `aux`, unique among claims that may overlap: this CPU's claim
    /// count and the CPU number (`dslite_common::table`).
    #[inline(always)]
    fn claim_aux() -> u32 {
        // SAFETY: no preconditions.
        let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
        let n = match PROBE_SCRATCH.get_ptr_mut(2) {
            // SAFETY: a per-CPU map value.
            Some(p) => unsafe {
                *p = (*p).wrapping_add(1);
                *p
            },
            None => 0,
        };
        (n << 8) | (cpu & 0xff)
    }

    /// The bench frame's outbound key with protocol `proto`, as words (`table::out_probe`),
    /// and where it goes in the probes' table.
    #[inline(always)]
    fn probe_key(ctx: &XdpContext, proto: u8) -> Option<([u64; 3], dslite_common::table::Place)> {
        use dslite_common::table::{out_probe_aligned, outbound_hash, place};
        // One bounds check for all three fields: with one each, LLVM folds the failures
        // into a path the verifier cannot prove dead (it then reads an unset register).
        ptr_at::<[u8; INNER_SPORT + 2], _>(ctx, 0)?;
        let (Some(b4), Some(inside), Some(port)) = (
            bytes::<16>(ctx, OUTER_SRC),
            bytes::<4>(ctx, INNER_SRC),
            bytes::<2>(ctx, INNER_SPORT),
        ) else {
            return None;
        };
        /// The key 8-aligned, as the paths hold it (`aftr::parsed::FromB4`).
        #[repr(C, align(8))]
        struct Aligned(dslite_common::maps::NatOutKey);
        let key = Aligned(dslite_common::maps::NatOutKey {
            b4,
            inside_addr: inside,
            inside_port: u16::from_ne_bytes(port),
            proto,
            _pad: 0,
        });
        // SAFETY: 8-aligned (above).
        let probe = unsafe { out_probe_aligned(&key.0) };
        Some((
            probe,
            place(outbound_hash(&probe, 0x5eed), PROBE_TABLE_BUCKETS),
        ))
    }

    /// The two buckets of `pl` in array map `table`.
    #[inline(always)]
    fn pair_of<E>(
        table: &aya_ebpf::maps::Array<dslite_common::table::Bucket<E>>,
        pl: &dslite_common::table::Place,
    ) -> Option<dslite_common::table::Pair<E>> {
        Some(dslite_common::table::Pair {
            buckets: [table.get_ptr_mut(pl.first)?, table.get_ptr_mut(pl.second)?],
            index: [pl.first, pl.second],
        })
    }

    /// `x`, through a map: the verifier forgets the claimed way's exact rank
    /// (`table::insert`).
    #[inline(always)]
    fn forget(x: u32) -> u32 {
        match PROBE_SCRATCH.get_ptr_mut(0) {
            // SAFETY: a per-CPU map value.
            Some(p) => unsafe {
                *p = x;
                core::ptr::read_volatile(p)
            },
            None => 0,
        }
    }

    /// The same look-up as `dslite_probe_nat_out`, in the one-table layout's outbound table:
    /// two bucket pointers and a scan of the key's ways. The first run inserts the key (the
    /// claim protocol), every later one is a hit: what replacing `NAT_OUT` would cost the
    /// established paths, and proof that the table's code passes the verifier.
    #[xdp]
    pub fn dslite_probe_table(ctx: XdpContext) -> u32 {
        use dslite_common::table::{insert, lookup, publish, Insert};
        let Some((probe, pl)) = probe_key(&ctx, dslite_common::proto::IPPROTO_UDP) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: bucket pointers from the array map, valid for this run.
        unsafe {
            if lookup(&pl, &probe, |i| PROBE_TABLE.get_ptr_mut(i)).is_some() {
                return xdp_action::XDP_DROP;
            }
            let Some(pair) = pair_of(&PROBE_TABLE, &pl) else {
                return xdp_action::XDP_PASS;
            };
            if let Insert::Won(s) = insert(&pair, pl.hash, claim_aux(), &probe, 1, true, forget) {
                (*s.entry).value.created_ns = 1;
                publish(&s);
            }
        }
        xdp_action::XDP_DROP
    }

    /// The one-table layout's inbound index and port bits, for the probe below (one pool
    /// address).
    #[aya_ebpf::macros::map(name = "PROBE_INDEX")]
    static PROBE_INDEX: aya_ebpf::maps::Array<dslite_common::table::InBucket> =
        aya_ebpf::maps::Array::with_max_entries(
            PROBE_TABLE_BUCKETS,
            aya_ebpf::bindings::BPF_F_MMAPABLE,
        );
    #[aya_ebpf::macros::map(name = "PROBE_PORTS")]
    static PROBE_PORTS: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::with_max_entries(
        dslite_common::ports::words_for(1) as u32,
        aya_ebpf::bindings::BPF_F_MMAPABLE,
    );

    /// A mapping's writes in the one-table layout, then their undoing (as the sweep would):
    /// the outbound insert (claim and duplicate scan), a port claimed in the port bits, the
    /// inbound index entry, the publish; then the three removed. Against
    /// `dslite_probe_map_writes` (the same for `NAT_IN` and `NAT_OUT`), and the verifier's
    /// cost of a creation.
    #[xdp]
    pub fn dslite_probe_table_writes(ctx: XdpContext) -> u32 {
        use dslite_common::{
            maps::NatInKey,
            ports,
            table::{
                abandon, aux_of, dead_of, expire, hash_of, in_probe, inbound_hash, insert,
                insert_unique, place, publish, reap, tag, Insert, LIVE,
            },
        };
        // Not UDP: another key than `dslite_probe_table`'s, in the same table.
        let Some((probe, pl)) = probe_key(&ctx, dslite_common::proto::IPPROTO_TCP) else {
            return xdp_action::XDP_PASS;
        };
        let Some(pair) = pair_of(&PROBE_TABLE, &pl) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: bucket pointers from the array maps, valid for this run.
        unsafe {
            let Insert::Won(s) = insert(&pair, pl.hash, claim_aux(), &probe, 1, true, forget)
            else {
                return xdp_action::XDP_DROP;
            };
            let port = 1024 + (pl.hash % 64_512) as u16;
            let (wi, bit) = ports::locate(0, 0, port);
            let Some(w) = PROBE_PORTS.get_ptr_mut(wi) else {
                abandon(&s);
                return xdp_action::XDP_PASS;
            };
            if ports::claim(w, bit) != ports::Claim::Claimed {
                abandon(&s);
                return xdp_action::XDP_DROP;
            }
            let kin = NatInKey {
                outside_addr: [198, 51, 100, 1],
                outside_port: port.to_be(),
                proto: dslite_common::proto::IPPROTO_TCP,
                _pad: 0,
            };
            let ip = in_probe(&kin);
            let ipl = place(inbound_hash(ip, 0x5eed), PROBE_TABLE_BUCKETS);
            let Some(ipair) = pair_of(&PROBE_INDEX, &ipl) else {
                ports::release(w, bit);
                abandon(&s);
                return xdp_action::XDP_PASS;
            };
            let Some(x) = insert_unique(&ipair, ipl.hash, s.pos, &ip) else {
                ports::release(w, bit);
                abandon(&s);
                return xdp_action::XDP_DROP;
            };
            // The whole value: a way taken again keeps its last occupant's bytes.
            (*s.entry).value = dslite_common::maps::NatOutValue {
                outside_addr: kin.outside_addr,
                outside_port: kin.outside_port,
                tcp_state: 0,
                peers: 0,
                created_ns: 0,
                last_seen_ns: 0,
            };
            publish(&s);
            // Undone in the sweep's order: the mapping first (nothing new finds it), then
            // its index entry, and the port last, when nothing names it any more; each
            // step only if the one before it happened. Reaped at once here (a benchmark):
            // the sweep reaps a pass later.
            let live = tag(LIVE, hash_of(s.bits), aux_of(s.bits));
            let index = tag(LIVE, ipl.hash, s.pos);
            if expire(&s, live)
                && reap(&s, dead_of(live))
                && expire(&x, index)
                && reap(&x, dead_of(index))
                && ports::release(w, bit) == ports::Release::Released
            {
                if let Some(n) = PROBE_SCRATCH.get_ptr_mut(1) {
                    *n += 1;
                }
            }
        }
        xdp_action::XDP_DROP
    }

    /// A new subscriber's block claim alone (`nat::claim_block`: the walk of its slots, the
    /// search, the `BLOCKS` and `SW_BLOCKS` inserts, the event), for the frame's B4 in slot
    /// 0: XDP_DROP when it got a block. Timed once per new subscriber (the scarce-blocks row).
    #[xdp]
    pub fn dslite_probe_claim_block(ctx: XdpContext) -> u32 {
        let Some((sk, cfg)) = frame_slot(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        if crate::nat::claim_block(&sk, cfg, crate::clock::precise_ns()) == crate::exit::nat::FOUND
        {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// The first part of a block claim alone (`nat::claim_part` 0: the walk of the slots).
    #[xdp]
    pub fn dslite_probe_claim_walk(ctx: XdpContext) -> u32 {
        claim_part_probe(&ctx, 0)
    }

    /// The second part of a block claim alone (`nat::claim_part` 1: the block search).
    #[xdp]
    pub fn dslite_probe_claim_search(ctx: XdpContext) -> u32 {
        claim_part_probe(&ctx, 1)
    }

    #[inline(always)]
    fn claim_part_probe(ctx: &XdpContext, part: u32) -> u32 {
        let Some((sk, cfg)) = frame_slot(ctx) else {
            return xdp_action::XDP_PASS;
        };
        let _ = crate::nat::claim_part(&sk, cfg, part);
        xdp_action::XDP_DROP
    }

    /// Slot 0 of the subscriber the frame's B4 belongs to, and the AFTR's configuration.
    #[inline(always)]
    fn frame_slot(
        ctx: &XdpContext,
    ) -> Option<(
        dslite_common::maps::SlotKey,
        &'static dslite_common::maps::AftrConfig,
    )> {
        let b4 = bytes::<16>(ctx, OUTER_SRC)?;
        let cfg = maps::AFTR_CONFIG.get(0)?;
        let sk = dslite_common::maps::SlotKey {
            b4: dslite_common::nat::subscriber_of(&b4, &cfg.subscriber_mask),
            slot: 0,
            _pad: [0; 3],
        };
        Some((sk, cfg))
    }

    /// The next-hop cache's lookup for the inner destination (a hit once the outbound path
    /// has run on this CPU).
    #[xdp]
    pub fn dslite_probe_next_hop(ctx: XdpContext) -> u32 {
        let Some(d) = bytes::<4>(&ctx, INNER_DST) else {
            return xdp_action::XDP_PASS;
        };
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&d);
        let key = dslite_common::maps::NextHopKey {
            dst,
            ifindex: crate::ctx::Pkt::ingress_ifindex(&ctx),
            family: 2,
            _pad: [0; 3],
        };
        let seed = maps::NH_GEN.get(1).copied().unwrap_or(0);
        match maps::NEXT_HOPS.get_ptr(dslite_common::maps::next_hop_slot(&key, seed)) {
            // SAFETY: map value pointer from the kernel.
            Some(e) if unsafe { (*e).key == key } => xdp_action::XDP_DROP,
            _ => xdp_action::XDP_PASS,
        }
    }

    /// The per-destination lookups of an outbound packet: the denied destinations (LPM,
    /// 32-bit) and whether it is one of the pool's addresses (hash).
    #[xdp]
    pub fn dslite_probe_destination(ctx: XdpContext) -> u32 {
        let Some(d) = bytes::<4>(&ctx, INNER_DST) else {
            return xdp_action::XDP_PASS;
        };
        let denied = maps::DENY_V4.get(Key::new(32, d)).is_some();
        let pool = maps::POOL_INDEX.get_ptr(d).is_some();
        core::hint::black_box((denied, pool));
        xdp_action::XDP_DROP
    }

    /// Removing and restoring 40 bytes of headroom: what decapsulation and encapsulation
    /// cost in helper calls.
    #[xdp]
    pub fn dslite_probe_adjust_head(ctx: XdpContext) -> u32 {
        // SAFETY: plain helper calls on this program's own context.
        unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_adjust_head(ctx.ctx, 40);
            aya_ebpf::helpers::generated::bpf_xdp_adjust_head(ctx.ctx, -40);
        }
        xdp_action::XDP_DROP
    }

    /// A mapping's two table writes and their removal: NAT_IN and NAT_OUT inserted
    /// (BPF_NOEXIST, as mapping creation does) and removed, for a key no mapping uses.
    #[xdp]
    pub fn dslite_probe_map_writes(ctx: XdpContext) -> u32 {
        use dslite_common::maps::{NatInKey, NatInValue, NatOutKey, NatOutValue};
        let Some(b4) = bytes::<16>(&ctx, OUTER_SRC) else {
            return xdp_action::XDP_PASS;
        };
        let kin = NatInKey {
            outside_addr: [0, 0, 0, 1],
            outside_port: 1,
            proto: dslite_common::proto::IPPROTO_UDP,
            _pad: 0,
        };
        let kout = NatOutKey {
            b4,
            inside_addr: [0, 0, 0, 1],
            inside_port: 1,
            proto: dslite_common::proto::IPPROTO_UDP,
            _pad: 0,
        };
        let noexist = aya_ebpf::bindings::BPF_NOEXIST as u64;
        let ok = maps::NAT_IN
            .insert(&kin, &NatInValue::default(), noexist)
            .is_ok()
            && maps::NAT_OUT
                .insert(&kout, &NatOutValue::default(), noexist)
                .is_ok();
        let _ = maps::NAT_IN.remove(&kin);
        let _ = maps::NAT_OUT.remove(&kout);
        if ok {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// Four BPF-to-BPF calls of a function that reads one array entry: what a call costs
    /// (the paths make several; the stack limit is why they are calls).
    #[xdp]
    pub fn dslite_probe_calls(_ctx: XdpContext) -> u32 {
        let mut n = 0;
        for s in [901, 902, 903, 904] {
            n += super::stop_at(core::hint::black_box(s)) as u32;
        }
        if n == 0 {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// Four counter updates, as a forwarded packet makes (verdict, packets, bytes, cache).
    #[xdp]
    pub fn dslite_probe_counters(_ctx: XdpContext) -> u32 {
        use dslite_common::Counter;
        maps::count(Counter::AftrOutPackets);
        maps::count_n(Counter::AftrOutBytes, 64);
        maps::count(Counter::NextHopCached);
        maps::count(Counter::AftrInPackets);
        xdp_action::XDP_DROP
    }
}
