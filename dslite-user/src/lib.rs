//! The dslite controller: loads the XDP programs, configures them through maps, and reports
//! on them (`dslite stats`, `dslite sessions`).
//!
//! - [`cli`]: command line, exit codes.
//! - [`config`]: options from flags and TOML, validation.
//! - [`dataplane`]: loading, pinning, map setup, attach/detach.
//! - [`netlink`]: interface indexes and addresses via rtnetlink.
//! - [`views`]: reading counters and NAT mappings from pinned maps.
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod natlog;
pub mod netlink;
pub mod sweep;
pub mod views;
