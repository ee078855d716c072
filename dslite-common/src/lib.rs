//! Everything the kernel programs (`dslite-ebpf`) and the controller (`dslite-user`) must agree
//! on lives here, once: map key/value layouts, map names, counter numbering, checksum arithmetic,
//! and the NAT port-search math.
//!
//! `#![no_std]` so the BPF side can use it; the `user` feature adds `aya::Pod` impls.
#![no_std]
// `table`'s compare-and-swap: core's atomics are not offered on BPF targets, the intrinsic is.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

pub mod bucket;
pub mod counters;
pub mod csum;
pub mod hint;
pub mod map_list;
pub mod maps;
pub mod nat;
pub mod ports;
pub mod proto;
pub mod slow;
pub mod table;

pub use counters::Counter;
