//! What the B4 -> internet path keeps from parsing, read by each step after it.

use dslite_common::maps::NatOutKey;

use crate::parse::{Ipv4, L4};

/// What the B4 -> internet path keeps from parsing.
#[repr(C, align(8))]
pub struct FromB4 {
    pub key: NatOutKey,
    /// The source's outside address once mapped (for hairpinning).
    pub out_addr: [u8; 4],
    pub ip: Ipv4,
    pub l4: L4,
    /// The outer IPv6 packet's length (the inner IPv4 header is at `ip.off`).
    pub outer_len: u32,
    /// For an ICMP 3/4 refusal: the next-hop MTU it reports.
    pub mtu: u32,
}

// SAFETY: integers, byte arrays and `Ipv4`/`L4`/`NatOutKey` (themselves all-zero valid).
unsafe impl crate::zeroed::Zeroable for FromB4 {}
