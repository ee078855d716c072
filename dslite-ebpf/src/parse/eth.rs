//! Ethernet: which network layer the frame carries; anything else goes to the kernel.

use dslite_common::{proto::*, Counter};

use crate::{
    ctx::Pkt,
    exit::{Exit, Res},
    packet::{at, read16},
};

/// What the Ethernet header says.
pub enum L3 {
    V4,
    V6,
}

/// Classify the frame; everything that is not plain IPv4/IPv6 goes to the kernel, counted.
#[inline(always)]
pub fn ethernet<C: Pkt>(ctx: &C) -> Res<L3> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let ty = u16::from_be(read16(unsafe { (*eth).as_ptr().add(ETH_TYPE_OFF) }));
    match ty {
        ETH_P_IP => Ok(L3::V4),
        ETH_P_IPV6 => Ok(L3::V6),
        ETH_P_8021Q | ETH_P_8021AD => Err(Exit::Pass(Counter::PassVlan)),
        _ => Err(Exit::Pass(Counter::PassNotIp)),
    }
}
