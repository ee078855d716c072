//! dslite dataplane: one program per role and hook, all from the same code (generic over
//! `ctx::Pkt`).
//!
//! - `dslite_b4` (XDP) and `dslite_b4_tc` (tc ingress): on the B4's LAN and WAN interfaces.
//! - `dslite_aftr` and `dslite_aftr_tc`: on the AFTR's tunnel and internet interfaces (may
//!   be one).
//!
//! Each returns through [`finish`], which turns every non-forwarding outcome into a named
//! counter plus a drop or a pass. XDP_ABORTED is never returned; on tc a pass is
//! TC_ACT_UNSPEC, so a program after ours (tcx) still sees the packet.
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: the BPF stack is 512 bytes and a by-value
// `impl Borrow<K>` argument can cost a copy of the key.
#![allow(clippy::needless_borrows_for_generic_args)]

mod aftr;
mod b4;
#[cfg(feature = "bench")]
mod bench;
mod clock;
mod csum;
mod ctx;
mod events;
mod exit;
mod maps;
mod mss;
mod nat;
mod packet;
mod parse;
mod route;
mod slow;
mod softwire;
mod zeroed;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use dslite_common::Counter;

use crate::{
    ctx::{Pkt, V_DROP, V_PASS, V_REDIRECT},
    exit::{Exit, Res},
};

/// The verdict (`ctx::V_*`, XDP's numbering) of a run, every non-forwarding outcome counted.
#[inline(always)]
fn finish<C: Pkt>(ctx: &C, r: Res<u32>) -> u32 {
    match r {
        Ok(action) => action,
        Err(Exit::Drop(c)) => {
            maps::count(c);
            V_DROP
        }
        Err(Exit::Pass(_)) if slow::from_slow_path(ctx) => {
            // Whatever the kernel would deliver locally from the TAP could reach the slow
            // path's raw socket (or the TAP) and come back here: a written-back packet is
            // forwarded or dropped, never passed up (only translated packets that the
            // kernel must route, counted where they are decided, go up from the TAP).
            maps::count(Counter::DropSlowLoop);
            V_DROP
        }
        Err(Exit::Pass(c)) => {
            maps::count(c);
            V_PASS
        }
    }
}

/// A verdict as tc's return code.
#[inline(always)]
fn tc_action(verdict: u32) -> i32 {
    match verdict {
        V_REDIRECT => TC_ACT_REDIRECT,
        V_PASS => TC_ACT_UNSPEC,
        _ => TC_ACT_SHOT,
    }
}

#[xdp]
pub fn dslite_b4(ctx: XdpContext) -> u32 {
    finish(&ctx, b4::run(&ctx))
}

#[xdp]
pub fn dslite_aftr(ctx: XdpContext) -> u32 {
    finish(&ctx, aftr::run(&ctx))
}

#[classifier]
pub fn dslite_b4_tc(ctx: TcContext) -> i32 {
    let r = ctx::tc::pull_headers(&ctx).and_then(|()| b4::run(&ctx));
    tc_action(finish(&ctx, r))
}

#[classifier]
pub fn dslite_aftr_tc(ctx: TcContext) -> i32 {
    let r = ctx::tc::pull_headers(&ctx).and_then(|()| aftr::run(&ctx));
    tc_action(finish(&ctx, r))
}

/// Passes everything. A veth only accepts frames that XDP_REDIRECT sends into it when its
/// peer runs an XDP program (or has GRO on): the tests and the demo attach this to router
/// interfaces, where GRO would merge forwarded packets into frames larger than the MTU.
#[xdp]
pub fn dslite_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path (it would be an
    // unbounded loop), so this is never reached at run time.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
