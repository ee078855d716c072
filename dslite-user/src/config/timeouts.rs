//! Idle timeouts and the block hold-down, with their RFC floors.

use anyhow::{bail, Result};

/// Idle timeouts and the block hold-down, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: u64,
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub icmp: u64,
    pub block_hold_down: u64,
}

impl Default for Timeouts {
    /// The defaults are the RFC recommendations (RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 7857 §2,
    /// RFC 5508 REQ-2, RFC 6888 REQ-8).
    fn default() -> Self {
        Timeouts {
            udp: 300,
            tcp_established: 7440,
            tcp_transitory: 240,
            icmp: 60,
            block_hold_down: 120,
        }
    }
}

/// RFC floors: (flag, floor). UDP: RFC 4787 REQ-5; TCP: RFC 5382 REQ-5; ICMP: RFC 5508
/// REQ-2; hold-down: RFC 6888 REQ-8.
const FLOORS: [(&str, u64); 5] = [
    ("--udp-timeout", 120),
    ("--tcp-established-timeout", 7440),
    ("--tcp-transitory-timeout", 240),
    ("--icmp-timeout", 60),
    ("--block-hold-down", 120),
];

impl Timeouts {
    fn values(&self) -> [u64; 5] {
        [
            self.udp,
            self.tcp_established,
            self.tcp_transitory,
            self.icmp,
            self.block_hold_down,
        ]
    }

    /// Reject values under the RFC floors unless `allow_short`; never accept 0.
    pub fn check(&self, allow_short: bool) -> Result<()> {
        for ((flag, floor), v) in FLOORS.iter().zip(self.values()) {
            if v == 0 {
                bail!("{flag} 0: a timeout must be at least 1 second");
            }
            if v < *floor && !allow_short {
                bail!("{flag} {v} is below the RFC floor of {floor} s (use --allow-short-timeouts in labs)");
            }
        }
        Ok(())
    }
}
