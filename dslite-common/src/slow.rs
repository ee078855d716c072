//! The contract between the XDP programs and the controller's slow path (docs/design.md,
//! "The slow path").
//!
//! XDP cannot make two packets out of one, nor keep one back, so it hands such packets to the
//! controller: it prepends a [`SlowMeta`] to the frame and redirects it into the controller's
//! TAP device. The controller reads the frame, does the part XDP cannot (fragment, reassemble,
//! relay an ICMPv6 error), and writes any resulting unfragmented packet back into the same TAP,
//! where the same XDP program runs on it again: NAT and forwarding stay in one place.

/// First bytes of every frame XDP hands over. Frames the kernel itself sends into the TAP
/// (the B4's own IPv4 traffic from 192.0.0.2) start with a MAC address instead; the TAP's
/// address is chosen so that it can never equal this.
pub const SLOW_MAGIC: [u8; 4] = *b"DSL1";

/// The frame after the meta is Ethernet + IPv6 + IPv4: an encapsulated packet larger than
/// the softwire's MTU. The controller sends the IPv6 payload (the IPv4 packet, never split)
/// with the kernel's IPv6 fragmentation at `mtu` (RFC 6333 §5.3/§6.3).
pub const SLOW_ENCAP_FRAGMENT: u8 = 1;
/// The frame after the meta is Ethernet [+ IPv6 from a B4] + an IPv4 fragment that must go
/// through the NAT: the controller reassembles the datagram (keyed by softwire too, so two
/// subscribers' fragments never mix, RFC 4787 REQ-14, RFC 6864) and writes it back whole.
pub const SLOW_V4_FRAGMENT: u8 = 2;

/// B4: the frame after the meta is Ethernet + an IPv4 packet from the LAN whose TTL ran out
/// here: the controller answers the host with a Time Exceeded from 192.0.0.2, so traceroute
/// shows the B4 at hop 1 (RFC 6333 §5.7, RFC 2473 §3).
pub const SLOW_TTL_EXPIRED: u8 = 3;

/// AFTR, tc hook: the frame after the meta is a softwire packet from a B4 that the AFTR
/// refuses with an ICMP error (`icmp_type`, `icmp_code`, next-hop `mtu`): the controller
/// sends the error from 192.0.0.1 down that softwire (RFC 5508 REQ-8, RFC 4787 REQ-13,
/// RFC 2473 §3). On tc the refused skb may carry its sender's checksum offload state
/// (CHECKSUM_PARTIAL), which an error built in place would inherit; XDP builds it in place.
pub const SLOW_ICMP_REFUSAL: u8 = 4;

/// Prepended by XDP to every frame it hands to the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowMeta {
    pub magic: [u8; 4],
    /// `SLOW_*`.
    pub reason: u8,
    /// For [`SLOW_ICMP_REFUSAL`]: the ICMP type.
    pub icmp_type: u8,
    /// For [`SLOW_ENCAP_FRAGMENT`]: the largest IPv6 packet toward the peer; for
    /// [`SLOW_ICMP_REFUSAL`], the next-hop MTU to report. Host order.
    pub mtu: u16,
    /// Interface the packet arrived on.
    pub ingress: u32,
    /// For [`SLOW_ICMP_REFUSAL`]: the ICMP code.
    pub icmp_code: u8,
    pub _pad: [u8; 3],
}

pub const SLOW_META_LEN: usize = core::mem::size_of::<SlowMeta>();
const _: () = assert!(SLOW_META_LEN == 16);

impl SlowMeta {
    /// Parse the meta at the start of a frame read from the TAP; `None` for frames the
    /// kernel sent (no magic) or a short read.
    pub fn parse(frame: &[u8]) -> Option<SlowMeta> {
        if frame.len() < SLOW_META_LEN || frame[..4] != SLOW_MAGIC {
            return None;
        }
        Some(SlowMeta {
            magic: SLOW_MAGIC,
            reason: frame[4],
            icmp_type: frame[5],
            mtu: u16::from_ne_bytes([frame[6], frame[7]]),
            ingress: u32::from_ne_bytes([frame[8], frame[9], frame[10], frame[11]]),
            icmp_code: frame[12],
            _pad: [0; 3],
        })
    }
}

/// Slow path configuration (single entry in [`crate::maps::SLOW_CONFIG`]), both roles.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowConfig {
    /// The controller's TAP device; 0 while there is none (such packets are then dropped,
    /// counted as `drop_slow_path_unavailable`).
    pub ifindex: u32,
    /// Largest outer IPv6 packet on a softwire (the tunnel MTU); 0 leaves it to the route
    /// MTU alone.
    pub tunnel_mtu: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_parses_what_xdp_writes() {
        let m = SlowMeta {
            magic: SLOW_MAGIC,
            reason: SLOW_ICMP_REFUSAL,
            icmp_type: 3,
            mtu: 1280,
            ingress: 7,
            icmp_code: 4,
            _pad: [0; 3],
        };
        // SAFETY: repr(C), no padding (asserted size), plain integers.
        let bytes: [u8; SLOW_META_LEN] = unsafe { core::mem::transmute(m) };
        assert_eq!(SlowMeta::parse(&bytes), Some(m));
        assert_eq!(SlowMeta::parse(&bytes[..8]), None);
        let mut kernel = bytes;
        kernel[..4].copy_from_slice(&[0x02, 0, 0, 0]);
        assert_eq!(SlowMeta::parse(&kernel), None);
    }
}
