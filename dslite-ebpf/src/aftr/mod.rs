//! AFTR (RFC 6333 §6): softwire packets from B4s are decapsulated and source-NATed toward
//! the internet; replies to pool addresses are translated back and encapsulated to the B4.
//!
//! One file per step: [`outbound`] and [`inbound`] are the two directions; they call
//! [`filter`] (what is accepted), [`fragment`], [`rewrite`] (the NAT's address and port
//! rewrite), [`hairpin`], [`reply`] (ICMP the AFTR originates) and [`icmp_xlate`] (ICMP
//! errors in transit). The allocator is `crate::nat`.

mod filter;
mod fragment;
mod hairpin;
mod icmp_xlate;
mod inbound;
mod outbound;
mod parsed;
mod reply;
mod rewrite;

use dslite_common::Counter;

use self::{inbound::from_internet, outbound::from_b4};
use crate::{
    ctx::Pkt,
    exit::{Exit, Res, ICMP_ERROR},
    maps::AFTR_CONFIG,
    parse::{ethernet, Ipv4, L3},
};

#[inline(always)]
pub fn run<C: Pkt>(ctx: &C) -> Res<u32> {
    // A reference into the map value: copying the config would cost main's stack frame.
    let cfg = match AFTR_CONFIG.get(0) {
        Some(c) if c.pool_len != 0 => c,
        _ => {
            // Cold path (only before the controller wrote the config): safe to log.
            aya_log_ebpf::warn!(ctx, "dslite_aftr: packet before configuration, dropped");
            return Err(Exit::Drop(Counter::DropNotConfigured));
        }
    };
    match ethernet(ctx)? {
        L3::V6 => {
            crate::exit::bench_stage!(10);
            from_b4(ctx, cfg)
        }
        L3::V4 => {
            let mut slot = core::mem::MaybeUninit::uninit();
            let ip: &mut Ipv4 = crate::zeroed::zeroed(&mut slot);
            match from_internet(ctx, cfg, ip)? {
                // An ICMP error: translated by a sibling call, so its frame never stacks
                // on `from_internet`'s.
                ICMP_ERROR => icmp_xlate::error_inbound_call(ctx, cfg, ip),
                action => Ok(action),
            }
        }
    }
}
