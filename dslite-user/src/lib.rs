//! The dslite controller: loads the XDP programs, configures them through maps, and reports
//! on them (`dslite stats`, `dslite sessions`).
//!
//! - [`cli`]: command line, exit codes: parsing and dispatch only.
//! - [`clock`]: monotonic and wall clocks, RFC 3339 times.
//! - [`commands`]: the subcommands that read and print (`check-config`, `stats`,
//!   `sessions`, `softwires`, `whois`).
//! - [`config`]: options from flags and TOML, validation (a leaf: it imports nothing else).
//! - [`daemon`]: the AFTR and B4 daemons, on one shared skeleton.
//! - [`dataplane`]: loading, pinning, attach/detach; the pinned maps and what is written
//!   into them; batch reads.
//! - [`ethtool`]: a veth peer's TX checksumming, read in the peer's namespace.
//! - [`metrics`]: Prometheus text exposition of the counters and the sweep's gauges.
//! - [`natlog`]: the NAT log (file, syslog, IPFIX) and `whois`.
//! - [`netlink`]: interface indexes and addresses via rtnetlink.
//! - [`rand`]: the random seed of the port search.
//! - [`provision`]: the B4 finding its AFTR (DNS names, DHCPv6 AFTR-Name hand-over).
//! - [`slowpath`]: what XDP cannot do: fragmenting, reassembly (IPv4 in
//!   [`slowpath::reasm`]), ICMPv6 relay, own traffic.
//! - [`sweep`]: expiry of idle mappings and the port-block hold-down.
//! - [`sysctl`]: setting sysctls under /proc/sys.
//! - [`usage`]: bad input as its own error (exit code 2).
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod ethtool;
pub mod metrics;
pub mod natlog;
pub mod netlink;
pub mod provision;
pub mod rand;
pub mod slowpath;
pub mod sweep;
pub mod sysctl;
pub mod usage;
