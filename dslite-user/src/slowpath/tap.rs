//! The TAP device XDP hands frames over through: creating it, and handling each frame it
//! delivers (by the reason XDP put in front), and writing frames back into it.

use std::{fs::File, io::Write as _, os::fd::AsRawFd as _};

use anyhow::{bail, Context as _, Result};
use dslite_common::{
    proto::*,
    slow::{
        SlowMeta, SLOW_ENCAP_FRAGMENT, SLOW_ICMP_REFUSAL, SLOW_META_LEN, SLOW_TTL_EXPIRED,
        SLOW_V4_FRAGMENT,
    },
    Counter,
};
use log::debug;

use super::{
    frames::{ethertype, ipv4_frame, parse_v6, skip_options, softwire_frame},
    reasm::{Outcome, Reassembler},
    relay::{refusal, time_exceeded, RelayBudget},
    Role, Shared, B4_V4,
};

/// Create the TAP device (down, unconfigured): the caller configures it over netlink.
pub fn create_tap(name: &str) -> Result<(File, u32)> {
    if name.is_empty() || name.len() > 15 {
        bail!("slow path interface name '{name}' must be 1-15 bytes");
    }
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
    };
    let f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Minimal containers may lack the device node of a kernel that has TUN/TAP.
            make_tun_node().context("/dev/net/tun is missing and could not be created")?;
            open()
        }
        r => r,
    }
    .context("opening /dev/net/tun (the slow path needs TUN/TAP)")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        bail!(
            "creating TAP device {name}: {} (is another dslite running in this namespace?)",
            std::io::Error::last_os_error()
        );
    }
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        bail!("TAP device {name} vanished after creation");
    }
    Ok((f, index))
}

/// `mknod /dev/net/tun c 10 200`.
fn make_tun_node() -> Result<()> {
    std::fs::create_dir_all("/dev/net")?;
    let path = std::ffi::CString::new("/dev/net/tun")?;
    // SAFETY: mknod on a NUL-terminated path; major 10, minor 200 is the TUN/TAP device.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 200)) };
    if rc != 0 {
        bail!("mknod: {}", std::io::Error::last_os_error());
    }
    log::info!("created /dev/net/tun (it was missing)");
    Ok(())
}

pub(super) fn handle_tap_frame(
    sh: &Shared,
    reasm: &mut Reassembler,
    budget: &mut RelayBudget,
    frame: &[u8],
    now: u64,
) {
    let Some(meta) = SlowMeta::parse(frame) else {
        // Sent by the kernel itself: on a B4, the router's own IPv4 (192.0.0.2) routed into
        // the softwire. Anything else (IPv6 neighbour discovery on the TAP) is not ours.
        let own_v4 = matches!(sh.role(), Role::B4 { .. })
            && ethertype(frame) == Some(ETH_P_IP)
            && frame.get(ETH_HLEN + 12..ETH_HLEN + 16) == Some(&B4_V4.octets()[..]);
        if !own_v4 {
            sh.stats.inc(Counter::SlowForeignDropped);
        } else if sh.write_back(frame) {
            sh.stats.inc(Counter::SlowOwnV4Packets);
        }
        return;
    };
    let inner = &frame[SLOW_META_LEN..];
    let ok = match meta.reason {
        SLOW_ENCAP_FRAGMENT => send_fragmented(sh, inner, meta.mtu),
        SLOW_V4_FRAGMENT => reassemble(sh, reasm, inner, now),
        SLOW_TTL_EXPIRED => time_exceeded(sh, budget, inner),
        SLOW_ICMP_REFUSAL => refusal(sh, inner, meta.icmp_type, meta.icmp_code, meta.mtu),
        _ => false,
    };
    if !ok {
        sh.stats.inc(Counter::SlowBadFrames);
    }
}

/// An encapsulated packet over the MTU: let the kernel send its IPv4 payload as IPv6
/// fragments of at most `mtu` bytes.
fn send_fragmented(sh: &Shared, frame: &[u8], mtu: u16) -> bool {
    let Some(v6) = parse_v6(frame) else {
        return false;
    };
    if v6.next != IPPROTO_IPIP {
        return false;
    }
    match sh.raw.send(
        &frame[v6.payload],
        &v6.src,
        &v6.dst,
        v6.tclass,
        v6.hop_limit,
        mtu,
    ) {
        Ok(()) => sh.stats.inc(Counter::SlowEncapSent),
        Err(e) => {
            sh.stats.inc(Counter::SlowSendErrors);
            debug!("slow path: sending a fragmented softwire packet: {e}");
        }
    }
    true
}

/// An IPv4 fragment for the NAT: hold it until its datagram is whole, then write the whole
/// datagram back (inside its softwire's IPv6 header if it came from a B4).
fn reassemble(sh: &Shared, reasm: &mut Reassembler, frame: &[u8], now: u64) -> bool {
    let (peer, v6, v4) = match ethertype(frame) {
        Some(ETH_P_IP) => ([0u8; 16], None, &frame[ETH_HLEN..]),
        Some(ETH_P_IPV6) => {
            let Some(v6) = parse_v6(frame) else {
                return false;
            };
            // XDP accepted this softwire packet (extension headers included): find the
            // IPv4 packet after any hop-by-hop/destination options.
            let Some(off) = skip_options(frame, v6.payload.start, v6.next) else {
                return false;
            };
            (v6.src, Some(v6), &frame[off..])
        }
        _ => return false,
    };
    match reasm.add(peer, v4, now) {
        Outcome::Pending => {}
        Outcome::Refused(why) => {
            debug!("slow path: IPv4 fragment refused: {why:?}");
            sh.stats.inc(Counter::SlowV4ReasmDropped);
        }
        Outcome::Complete(d) => {
            let out = match v6 {
                Some(v6) => softwire_frame(v6.tclass, v6.hop_limit, &v6.src, &v6.dst, &d),
                None => ipv4_frame(&d),
            };
            if sh.write_back(&out) {
                sh.stats.inc(Counter::SlowV4Reassembled);
            }
        }
    }
    true
}

impl Shared {
    /// Write one frame back into the TAP, where the XDP program runs on it.
    pub(super) fn write_back(&self, frame: &[u8]) -> bool {
        // A TAP takes one frame per write, whole or not at all.
        match (&self.tap).write(frame) {
            Ok(n) if n == frame.len() => true,
            Ok(n) => {
                self.stats.inc(Counter::SlowSendErrors);
                debug!("the TAP took {n} of {} bytes", frame.len());
                false
            }
            Err(e) => {
                self.stats.inc(Counter::SlowSendErrors);
                debug!("writing {} bytes to the TAP: {e}", frame.len());
                false
            }
        }
    }
}
