//! The subcommands that do not run a dataplane: each reads, checks or prints, and exits.
//!
//! - [`check_config`]: `dslite check-config FILE`.
//! - [`inspect`]: `dslite stats | sessions | softwires`, from the pinned maps.
//! - [`whois`]: `dslite whois`, from NAT log files.

pub mod check_config;
pub mod inspect;
pub mod whois;
