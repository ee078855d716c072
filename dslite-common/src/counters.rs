//! Named per-CPU counters: every drop and every pass to the kernel has its own reason.
//!
//! The kernel indexes a `PerCpuArray<u64>` (map [`crate::maps::STATS`]) by `Counter as u32`;
//! the controller sums the CPUs and prints [`Counter::name`]. Adding a counter means adding
//! it to the enum *and* to [`Counter::ALL`]; a unit test checks the two agree.

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident; )*) => {
        /// Index into the STATS map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $( $(#[doc = $doc])* $variant, )* }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )* ];
            /// Number of counters: the STATS map's size.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The counter at index `i` (for codes passed across BPF calls as integers);
            /// an out-of-range index gives `DropNotConfigured` rather than a panic.
            #[inline(always)]
            pub fn from_index(i: u32) -> Counter {
                let mut k = 0;
                $( if i == k { return Counter::$variant; } k += 1; )*
                let _ = k;
                Counter::DropNotConfigured
            }

            /// Stable snake_case name used by `dslite stats` and in metrics.
            pub const fn name(self) -> &'static str {
                match self { $( Counter::$variant => $name, )* }
            }

            /// What the counter counts: a forwarded packet/byte total, a pass to the
            /// kernel's own stack, a drop, or an event.
            pub const fn kind(self) -> CounterKind {
                match self { $( Counter::$variant => CounterKind::$kind, )* }
            }
        }
    };
}

/// Class of a counter, for grouping in `dslite stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Traffic,
    Pass,
    Drop,
    Event,
}

impl CounterKind {
    pub const fn name(self) -> &'static str {
        match self {
            CounterKind::Traffic => "traffic",
            CounterKind::Pass => "pass",
            CounterKind::Drop => "drop",
            CounterKind::Event => "event",
        }
    }
}

counters! {
    // ---- traffic: forwarded by XDP -----------------------------------------------------
    /// B4: IPv4 from the LAN encapsulated into the softwire (outer packets).
    B4EncapPackets = "b4_encap_packets", Traffic;
    /// B4: bytes of those outer IPv6 packets.
    B4EncapBytes = "b4_encap_bytes", Traffic;
    /// B4: softwire packets from the AFTR decapsulated toward the LAN.
    B4DecapPackets = "b4_decap_packets", Traffic;
    /// B4: bytes of those outer IPv6 packets.
    B4DecapBytes = "b4_decap_bytes", Traffic;
    /// B4: native IPv6 from the LAN toward the WAN (the customer's v6 share).
    NativeV6OutPackets = "native_v6_out_packets", Traffic;
    NativeV6OutBytes = "native_v6_out_bytes", Traffic;
    /// B4: native IPv6 arriving on the WAN that is not softwire traffic.
    NativeV6InPackets = "native_v6_in_packets", Traffic;
    NativeV6InBytes = "native_v6_in_bytes", Traffic;
    /// AFTR: softwire packets decapsulated and translated toward the internet.
    AftrOutPackets = "aftr_out_packets", Traffic;
    /// AFTR: bytes of the outer IPv6 packets received from B4s.
    AftrOutBytes = "aftr_out_bytes", Traffic;
    /// AFTR: IPv4 from the internet translated and encapsulated toward a B4.
    AftrInPackets = "aftr_in_packets", Traffic;
    /// AFTR: bytes of the outer IPv6 packets sent to B4s.
    AftrInBytes = "aftr_in_bytes", Traffic;
    /// AFTR: packets between two subscribers translated both ways in XDP (hairpinning).
    HairpinPackets = "hairpin_packets", Traffic;

    // ---- events -----------------------------------------------------------------------
    /// AFTR: a NAT mapping was created in XDP.
    NatMappingCreated = "nat_mapping_created", Event;
    /// AFTR: a new flow raced another CPU and adopted the mapping that CPU created.
    NatMappingRaceLost = "nat_mapping_race_lost", Event;
    /// AFTR: a softwire took a port block in XDP.
    BlockAllocated = "block_allocated", Event;
    /// AFTR: the event ring buffer was full: an allocation event could not be delivered.
    EventsLost = "events_lost", Event;
    /// AFTR: ICMP destination unreachable sent down a softwire for a refused new mapping.
    IcmpUnreachableSent = "icmp_unreachable_sent", Event;
    /// AFTR: such an ICMP message was suppressed by its rate limit.
    IcmpRateLimited = "icmp_rate_limited", Event;

    // ---- passes to the kernel stack -------------------------------------------------------
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = "pass_not_ip", Pass;
    /// VLAN-tagged frames are left to the kernel.
    PassVlan = "pass_vlan", Pass;
    /// B4: IPv4 to a LAN-local, broadcast or multicast destination (not for the softwire).
    PassLocalV4 = "pass_local_v4", Pass;
    /// IPv6 not addressed to the softwire endpoint, or not IPv4-in-IPv6 (ND, ping6, ...).
    PassNotSoftwire = "pass_not_softwire", Pass;
    /// IPv6 carrying a Fragment header: reassembly is the kernel's (issue 3/5 slow path).
    PassIpv6Fragment = "pass_ipv6_fragment", Pass;
    /// IPv6 extension header the fast path does not walk (routing, too long, too many).
    PassIpv6ExtHeader = "pass_ipv6_ext_header", Pass;
    /// AFTR: IPv4 on the internet side not addressed to a pool address.
    PassNotPool = "pass_not_pool", Pass;
    /// FIB has no neighbour entry yet: the kernel forwards this one and resolves it.
    PassNoNeighbour = "pass_no_neighbour", Pass;
    /// FIB says "not forwarded" (local destination, no route): the kernel decides.
    PassFibNotForwarded = "pass_fib_not_forwarded", Pass;

    // ---- drops ------------------------------------------------------------------------
    /// Frame shorter than an Ethernet header.
    DropTruncatedEth = "drop_truncated_eth", Drop;
    /// IPv6 header cut short, or payload length beyond the frame.
    DropBadIpv6 = "drop_bad_ipv6", Drop;
    /// IPv6 extension header cut short.
    DropBadIpv6Ext = "drop_bad_ipv6_ext", Drop;
    /// IPv4 header cut short, bad version/IHL, or total length inconsistent with the frame.
    DropBadIpv4 = "drop_bad_ipv4", Drop;
    /// Upper-layer (TCP/UDP/ICMP) header cut short.
    DropBadL4 = "drop_bad_l4", Drop;
    /// AFTR: softwire from a source outside every configured B4 prefix (checklist 6).
    DropB4NotAllowed = "drop_b4_not_allowed", Drop;
    /// B4: softwire packet whose outer source is not the configured AFTR.
    DropNotFromAftr = "drop_not_from_aftr", Drop;
    /// Inner TTL would reach zero.
    DropTtlExceeded = "drop_ttl_exceeded", Drop;
    /// AFTR: IPv4 fragment (needs the reassembly slow path of issue 3/5).
    DropIpv4Fragment = "drop_ipv4_fragment", Drop;
    /// AFTR: inner protocol the NAT does not translate.
    DropUnsupportedProto = "drop_unsupported_proto", Drop;
    /// AFTR: ICMP other than echo request/reply (errors are issue 2/5).
    DropIcmpType = "drop_icmp_type", Drop;
    /// AFTR: inbound packet to a pool address with no mapping.
    DropNoMapping = "drop_no_mapping", Drop;
    /// AFTR: the softwire holds `--max-blocks` blocks and none has a free port (its quota,
    /// RFC 6888 REQ-4; RFC 8158 natEvent 13).
    DropQuotaExceeded = "drop_quota_exceeded", Drop;
    /// AFTR: no free port block on the softwire's address(es) (RFC 8158 natEvent 12).
    DropPoolExhausted = "drop_pool_exhausted", Drop;
    /// AFTR: the softwire holds `--max-sessions` mappings.
    DropSessionLimit = "drop_session_limit", Drop;
    /// AFTR: the softwire opens new mappings faster than `--new-mapping-rate`.
    DropRateLimit = "drop_rate_limit", Drop;
    /// AFTR: the mapping table refused an insert (full).
    DropMappingTableFull = "drop_mapping_table_full", Drop;
    /// Program loaded but not configured yet (no config entry, empty pool).
    DropNotConfigured = "drop_not_configured", Drop;
    /// bpf_xdp_adjust_head failed (no headroom).
    DropAdjustHead = "drop_adjust_head", Drop;
    /// FIB lookup: blackhole, unreachable or prohibit route.
    DropFibUnreachable = "drop_fib_unreachable", Drop;
    /// FIB lookup: egress MTU smaller than the packet (fragmentation is issue 3/5).
    DropFibFragNeeded = "drop_fib_frag_needed", Drop;
    /// FIB lookup failed for another reason.
    DropFibOther = "drop_fib_other", Drop;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{}", c.name());
        }
    }

    #[test]
    fn from_index_round_trips() {
        for c in Counter::ALL {
            assert_eq!(Counter::from_index(*c as u32), *c);
        }
        assert_eq!(Counter::from_index(10_000), Counter::DropNotConfigured);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert!(a
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn drop_and_pass_names_carry_their_kind() {
        for c in Counter::ALL {
            match c.kind() {
                CounterKind::Drop => assert!(c.name().starts_with("drop_")),
                CounterKind::Pass => assert!(c.name().starts_with("pass_")),
                _ => {}
            }
        }
    }
}
