//! Configuration: the options of each role from flags and a TOML file, and their validation
//! into settings. A leaf: nothing here imports from the rest of the crate, and nothing here
//! does I/O beyond reading the `--config` file.
//!
//! - [`values`]: value types and their parsers (prefixes, port ranges, MSS clamping...).
//! - [`options`]: the flags, which are also the TOML keys; flags override the file.
//! - [`settings`]: validation into resolved settings, with a one-line error (exit code 2);
//!   the AFTR's as two halves, startup (restart-only) and live.
//! - [`reload`]: what a reload replaces (the live half) and what it names for the log.
//! - [`timeouts`]: idle timeouts and the block hold-down, with their RFC floors.

pub mod options;
pub mod reload;
pub mod settings;
pub mod timeouts;
pub mod values;

pub use options::{line_of, AftrOptions, B4Options, CommonOptions};
pub use reload::Reload;
pub use settings::{
    expand_pool, AftrLive, AftrSettings, AftrStartup, B4Settings, Limits, Sinks, SlowSettings,
    DEFAULT_FRAGMENT_RATE, DEFAULT_MAX_PEERS, DEFAULT_PIN_ROOT, DEFAULT_QUEUE,
    DEFAULT_REASSEMBLY_MEMORY, DEFAULT_REASSEMBLY_SECS, DEFAULT_TAP, QUEUE_RANGE,
};
pub use timeouts::Timeouts;
pub use values::{
    AftrSource, Cidr, Cidr4, Cidr6, Filtering, HookOpt, MssClamp, PortRange, XdpModeOpt,
};

#[cfg(test)]
mod tests;
