//! The dslite controller: loads the XDP programs, configures them through maps, and reports
//! on them (`dslite stats`, `dslite sessions`).
//!
//! - [`cli`]: command line, exit codes.
//! - [`clock`]: monotonic and wall clocks, RFC 3339 times.
//! - [`config`]: options from flags and TOML, validation.
//! - [`dataplane`]: loading, pinning, attach/detach; the pinned maps and what is written
//!   into them; batch reads.
//! - [`metrics`]: Prometheus text exposition of the counters and the sweep's gauges.
//! - [`natlog`]: the NAT log (file, syslog, IPFIX) and `whois`.
//! - [`netlink`]: interface indexes and addresses via rtnetlink.
//! - [`rand`]: the random seed of the port search.
//! - [`provision`]: the B4 finding its AFTR (DNS names, DHCPv6 AFTR-Name hand-over).
//! - [`slowpath`]: what XDP cannot do: fragmenting, reassembly (IPv4 in
//!   [`slowpath::reasm`]), ICMPv6 relay, own traffic.
//! - [`sweep`]: expiry of idle mappings and the port-block hold-down.
//! - [`views`]: reading counters and NAT mappings from pinned maps.
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod metrics;
pub mod natlog;
pub mod netlink;
pub mod provision;
pub mod rand;
pub mod slowpath;
pub mod sweep;
pub mod views;
