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
                if i < Self::COUNT {
                    // SAFETY: `Counter` is `repr(u32)` with the discriminants 0..COUNT, in
                    // order (`all_is_in_index_order` checks it), so `i` names a variant. One
                    // comparison rather than one per counter: the BPF verifier explores
                    // every branch of a chain at every call site.
                    unsafe { core::mem::transmute::<u32, Counter>(i) }
                } else {
                    Counter::DropNotConfigured
                }
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
    /// Written by the controller's slow path (and the kernel reassembly it relies on), not
    /// by XDP.
    Slow,
}

impl CounterKind {
    pub const fn name(self) -> &'static str {
        match self {
            CounterKind::Traffic => "traffic",
            CounterKind::Pass => "pass",
            CounterKind::Drop => "drop",
            CounterKind::Event => "event",
            CounterKind::Slow => "slow path",
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
    /// Forwarded with a cached FIB answer (no `bpf_fib_lookup`).
    NextHopCached = "next_hop_cached", Event;
    /// AFTR: a NAT mapping was created in XDP.
    NatMappingCreated = "nat_mapping_created", Event;
    /// AFTR: a new flow raced another CPU and adopted the mapping that CPU created.
    NatMappingRaceLost = "nat_mapping_race_lost", Event;
    /// A SYN's MSS option was lowered to fit the softwire.
    MssClamped = "mss_clamped", Event;
    /// AFTR: a softwire took a port block in XDP.
    BlockAllocated = "block_allocated", Event;
    /// AFTR: a subscriber took back its own block from hold-down (same address and range,
    /// logged as allocated again).
    BlockReclaimed = "block_reclaimed", Event;
    /// AFTR: a mapping already had `max_peers` remotes; this one was not recorded (its
    /// replies are filtered under ADF/APDF).
    PeerLimitRefused = "peer_limit_refused", Event;
    /// AFTR: the event ring buffer was full: an allocation event could not be delivered.
    EventsLost = "events_lost", Event;
    /// AFTR: ICMP error generated by the AFTR and sent down a softwire (a refused new
    /// mapping, or the inner TTL running out here).
    IcmpErrorSent = "icmp_error_sent", Event;
    /// AFTR: ICMP error from the internet about a mapping, translated and sent to the B4.
    IcmpErrorTranslated = "icmp_error_translated", Event;
    /// AFTR: echo request to 192.0.0.1 answered.
    IcmpEchoAnswered = "icmp_echo_answered", Event;
    /// AFTR: a generated ICMP error was suppressed by its rate limit.
    IcmpRateLimited = "icmp_rate_limited", Event;
    /// An encapsulated packet larger than the softwire MTU, handed to the slow path to be
    /// sent as IPv6 fragments (RFC 6333 §5.3/§6.3).
    SlowEncapFragment = "slow_encap_fragment", Event;
    /// AFTR: an IPv4 fragment for the NAT, handed to the slow path for reassembly (15).
    SlowV4Fragment = "slow_v4_fragment", Event;
    /// B4: a LAN packet whose TTL ran out, handed to the slow path to be answered.
    SlowTtlExpired = "slow_ttl_expired", Event;
    /// AFTR, tc hook: a refused packet handed to the slow path, which sends its ICMP error.
    SlowIcmpRefusal = "slow_icmp_refusal", Event;

    // ---- passes to the kernel stack -------------------------------------------------------
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = "pass_not_ip", Pass;
    /// VLAN-tagged frames are left to the kernel.
    PassVlan = "pass_vlan", Pass;
    /// B4: IPv4 to a LAN-local, broadcast or multicast destination (not for the softwire).
    PassLocalV4 = "pass_local_v4", Pass;
    /// IPv6 not addressed to the softwire endpoint, or not IPv4-in-IPv6 (ND, ping6, ...).
    PassNotSoftwire = "pass_not_softwire", Pass;
    /// IPv6 carrying a Fragment header: the kernel reassembles it and the slow path brings
    /// the whole packet back to XDP (RFC 6333 §5.3/§6.3).
    PassIpv6Fragment = "pass_ipv6_fragment", Pass;
    /// IPv6 extension header the fast path does not walk (routing, too long, too many).
    PassIpv6ExtHeader = "pass_ipv6_ext_header", Pass;
    /// AFTR: IPv4 on the internet side not addressed to a pool address.
    PassNotPool = "pass_not_pool", Pass;
    /// FIB has no neighbour entry yet: the kernel forwards this one and resolves it.
    PassNoNeighbour = "pass_no_neighbour", Pass;
    /// FIB says "not forwarded" (local destination, no route): the kernel decides.
    PassFibNotForwarded = "pass_fib_not_forwarded", Pass;
    /// IPv4 with DF=0 larger than the egress MTU: the kernel forwards and fragments it
    /// (RFC 4787 REQ-13a).
    PassV4FragmentNeeded = "pass_v4_fragment_needed", Pass;

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
    /// AFTR: softwire from a source outside every configured B4 prefix (RFC 6333 §11).
    DropB4NotAllowed = "drop_b4_not_allowed", Drop;
    /// B4: softwire packet whose outer source is not the configured AFTR.
    DropNotFromAftr = "drop_not_from_aftr", Drop;
    /// Inner TTL would reach zero.
    DropTtlExceeded = "drop_ttl_exceeded", Drop;
    /// AFTR: inner protocol the NAT does not translate.
    DropUnsupportedProto = "drop_unsupported_proto", Drop;
    /// AFTR: ICMP that is neither an echo nor a translatable error.
    DropIcmpType = "drop_icmp_type", Drop;
    /// AFTR: ICMP error cut short, quoting a packet that cannot be ours, or whose quoted
    /// IPv4 header has a bad checksum (RFC 5508 REQ-3).
    DropBadIcmpError = "drop_bad_icmp_error", Drop;
    /// AFTR: inbound packet to a pool address with no mapping (unsolicited, including a TCP
    /// SYN: dropped silently, RFC 5382 REQ-4).
    DropNoMapping = "drop_no_mapping", Drop;
    /// AFTR: inbound packet from a remote the mapping never sent to (address- or
    /// address-and-port-dependent filtering).
    DropFiltered = "drop_filtered", Drop;
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
    /// tc: bpf_skb_adjust_room, bpf_skb_change_proto or bpf_skb_change_head refused the
    /// packet (for instance an skb already marked as tunnelled).
    DropAdjustRoom = "drop_adjust_room", Drop;
    /// tc: the headers could not be pulled into the skb's linear area.
    DropPull = "drop_pull", Drop;
    /// tc: a GSO aggregate that would need the slow path (fragmentation, ICMP), which
    /// works on single packets.
    DropGsoSlowPath = "drop_gso_slow_path", Drop;
    /// FIB lookup: blackhole, unreachable or prohibit route.
    DropFibUnreachable = "drop_fib_unreachable", Drop;
    /// IPv4 with DF=1 larger than the egress MTU. The AFTR answers it with an ICMP 3/4
    /// carrying the MTU down the softwire (RFC 4787 REQ-13).
    DropV4TooBig = "drop_v4_too_big", Drop;
    /// A packet for the slow path while there is none (no TAP device, or it refused it).
    DropSlowPathUnavailable = "drop_slow_path_unavailable", Drop;
    /// A packet the slow path wrote back would go to the kernel as IPv6 again: dropped, so
    /// it can never circle between the kernel and the controller.
    DropSlowLoop = "drop_slow_loop", Drop;
    /// FIB lookup failed for another reason.
    DropFibOther = "drop_fib_other", Drop;
    /// AFTR: a softwire packet on another interface than `--tunnel-iface`, or IPv4 to the
    /// pool on another than `--internet-iface`.
    DropWrongInterface = "drop_wrong_interface", Drop;
    /// AFTR: a softwire packet whose B4 source is one of the AFTR host's own addresses.
    DropB4SourceLocal = "drop_b4_source_local", Drop;
    /// AFTR: a subscriber's packet to a destination it may not reach (the AFTR's own
    /// addresses, special-purpose ranges, `--deny-destination`).
    DropDeniedDestination = "drop_denied_destination", Drop;
    /// AFTR: an IPv4 fragment from the internet that belongs to no mapping (a first
    /// fragment whose ports match none, or a later one whose chain no first one opened).
    DropOrphanFragment = "drop_orphan_fragment", Drop;
    /// AFTR: a packet from the internet with a source no packet may have (0/8, 127/8,
    /// 192.0.0.0/24, 224/4 and above).
    DropReservedSource = "drop_reserved_source", Drop;
    /// A fragment over its subscriber's (or source's) reassembly budget.
    DropFragmentBudget = "drop_fragment_budget", Drop;
    /// AFTR: an ICMP error that concerns no mapping of the subscriber it would reach (the
    /// quote does not match the outer header, or the filter refuses its remote).
    DropIcmpErrorMismatch = "drop_icmp_error_mismatch", Drop;

    // ---- slow path: written by the controller ------------------------------------------
    /// Frames the controller read from its TAP device (XDP hand-overs and own traffic).
    SlowFramesRead = "slow_frames_read", Slow;
    /// Frames XDP handed over that the TAP's queue (txqueuelen) had no room for.
    SlowQueueDropped = "slow_queue_dropped", Slow;
    /// IPv4 packets sent into a softwire through the kernel, which fragmented the IPv6.
    SlowEncapSent = "slow_encap_sent", Slow;
    /// Sends or writes the kernel refused (the error is logged once per kind).
    SlowSendErrors = "slow_send_errors", Slow;
    /// Softwire packets the kernel reassembled, written back to XDP.
    SlowV6Reassembled = "slow_v6_reassembled", Slow;
    /// IPv4 datagrams reassembled for the NAT and written back to XDP.
    SlowV4Reassembled = "slow_v4_reassembled", Slow;
    /// Incomplete IPv4 fragment chains that timed out.
    SlowV4ReasmTimeout = "slow_v4_reasm_timeout", Slow;
    /// IPv4 fragments dropped: overlapping, too long, or beyond the chain/memory limits.
    SlowV4ReasmDropped = "slow_v4_reasm_dropped", Slow;
    /// ICMPv6 errors about softwire packets relayed to the inner source as ICMPv4 (42).
    SlowIcmp6Relayed = "slow_icmp6_relayed", Slow;
    /// ICMPv6 errors not relayed: over the relay rate (`RELAY_PER_SEC`), or quoting
    /// something that is not the start of an IPv4 packet (a later fragment).
    SlowIcmp6Ignored = "slow_icmp6_ignored", Slow;
    /// B4: Time Exceeded messages sent to LAN hosts from 192.0.0.2 (rate limited).
    SlowTimeExceededSent = "slow_time_exceeded_sent", Slow;
    /// AFTR, tc hook: ICMP errors for refused packets sent by the slow path.
    SlowIcmpRefusalSent = "slow_icmp_refusal_sent", Slow;
    /// ICMPv6 Packet Too Big about softwire packets: the kernel lowered its path MTU, the
    /// next-hop cache was invalidated, and nothing was relayed to the IPv4 host
    /// (RFC 6333 §5.3, §6.3).
    SlowPacketTooBig = "slow_packet_too_big", Slow;
    /// B4: the router's own IPv4 packets (from 192.0.0.2) sent into the softwire.
    SlowOwnV4Packets = "slow_own_v4_packets", Slow;
    /// Frames read from the TAP that made no sense (unknown reason, truncated).
    SlowBadFrames = "slow_bad_frames", Slow;
    /// Frames on the TAP, or packets on the raw socket, that the slow path does not write
    /// back (not addressed to this element's softwire endpoint, or not from an allowed peer):
    /// nothing the kernel hands the slow path can come round again.
    SlowForeignDropped = "slow_foreign_dropped", Slow;
    /// The kernel's IPv6 reassembly in this namespace (Ip6ReasmOKs in /proc/net/snmp6).
    KernelV6ReasmOk = "kernel_v6_reasm_ok", Slow;
    /// ... failures: overlapping fragments (RFC 5722), memory limit (Ip6ReasmFails).
    KernelV6ReasmFailed = "kernel_v6_reasm_failed", Slow;
    /// ... incomplete chains that expired (Ip6ReasmTimeout).
    KernelV6ReasmTimeout = "kernel_v6_reasm_timeout", Slow;
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
