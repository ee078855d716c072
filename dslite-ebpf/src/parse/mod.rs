//! Header parsing shared by both roles, one header per file. Parsers fill caller-owned
//! structs (out-parameters) rather than returning them: that keeps copies off the 512-byte
//! stack.

mod eth;
mod ipv4;
mod ipv6;
mod l4;

pub use eth::{ethernet, L3};
pub(crate) use ipv4::addr4;
pub use ipv4::{decrement_ttl, ipv4, restore_ttl, set_ttl, wire_len, Ipv4};
pub use ipv6::{ipv6, Softwire};
pub use l4::{l4, L4};
