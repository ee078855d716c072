//! Whether a veth's peer computes its TX checksums, wherever the peer lives: its network
//! namespace found from the nsid rtnetlink gives (`IFLA_LINK_NETNSID`), then the ethtool
//! ioctl read from inside that namespace, in a short-lived thread.
//!
//! A peer with TX checksumming on hands its packets over with CHECKSUM_PARTIAL, which XDP
//! cannot see (docs/operations.md, "Hooks: XDP or tc").

use std::{
    ffi::CStr,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GTXCSUM` and `ETHTOOL_GGRO` (include/uapi/linux/ethtool.h).
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GGRO: u32 = 0x2b;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

/// What is known of a veth peer's TX checksumming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTxCsum {
    /// Off: the peer sends complete checksums. `gro`: whether it has GRO on, without which
    /// (or an XDP program of its own) a veth drops the frames native XDP redirects into it.
    Off { peer: String, gro: bool },
    /// On: the peer may send partial checksums.
    On { peer: String },
    /// It could not be read (why): taken as "may send partial checksums".
    Unknown(String),
}

/// The TX checksum state of the peer `peer_index`, in the namespace numbered `nsid` here
/// (None: this namespace).
pub fn peer_tx_csum(peer_index: u32, nsid: Option<i32>) -> PeerTxCsum {
    let netns = match nsid {
        None => None,
        Some(id) => match find_netns(id) {
            Ok(Some(p)) => Some(p),
            Ok(None) => {
                return PeerTxCsum::Unknown(format!(
                    "the peer's network namespace (nsid {id}) is neither named in /run/netns \
                     nor held by a running process"
                ))
            }
            Err(e) => return PeerTxCsum::Unknown(format!("finding nsid {id}: {e}")),
        },
    };
    let read = move || -> io::Result<(String, bool, bool)> {
        if let Some(p) = &netns {
            enter(p)?;
        }
        let name = if_name(peer_index)?;
        let on = tx_csum(&name)?;
        let gro = ethtool_value(&name, ETHTOOL_GGRO)?;
        Ok((name, on, gro))
    };
    let r = match nsid {
        // setns changes only the calling thread: a thread of its own keeps the controller
        // in its namespace.
        Some(_) => std::thread::spawn(read)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("peer inspection thread panicked"))),
        None => read(),
    };
    match r {
        Ok((peer, false, gro)) => PeerTxCsum::Off { peer, gro },
        Ok((peer, true, _)) => PeerTxCsum::On { peer },
        Err(e) => PeerTxCsum::Unknown(format!("reading the peer's TX checksumming: {e}")),
    }
}

/// The namespace file (a `/run/netns` name or a process's `ns/net`) whose nsid, as this
/// namespace numbers it, is `nsid`.
fn find_netns(nsid: i32) -> io::Result<Option<PathBuf>> {
    let sock = NlSocket::open()?;
    let mut seen = Vec::new();
    for p in candidates() {
        let Ok(f) = File::open(&p) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        let ino = (meta.dev(), meta.ino());
        if seen.contains(&ino) {
            continue;
        }
        seen.push(ino);
        if sock.nsid_of(f.as_raw_fd())? == Some(nsid) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Named namespaces first, then every running process's.
fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    out.extend(
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .map(|e| e.path().join("ns/net")),
    );
    out
}

fn enter(netns: &Path) -> io::Result<()> {
    let f = File::open(netns)?;
    // SAFETY: setns on an open namespace file; it affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn if_name(index: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IF_NAMESIZE],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// `ETHTOOL_GTXCSUM` on `name` in the current namespace: whether TX checksumming is on.
pub fn tx_csum(name: &str) -> io::Result<bool> {
    ethtool_value(name, ETHTOOL_GTXCSUM)
}

/// A `struct ethtool_value` getter (`cmd`) on `name` in the current namespace: on or off.
fn ethtool_value(name: &str, cmd: u32) -> io::Result<bool> {
    if name.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    // SAFETY: a plain datagram socket, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned here only.
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data: 0 };
    let mut req = IfReq {
        name: [0; libc::IF_NAMESIZE],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data != 0)
}

/// A blocking rtnetlink socket for RTM_GETNSID.
struct NlSocket(std::os::fd::OwnedFd);

impl NlSocket {
    fn open() -> io::Result<NlSocket> {
        // SAFETY: socket(2); the fd is owned by the returned OwnedFd.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and owned here only.
        Ok(NlSocket(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// The nsid this namespace gives the namespace open as `ns_fd` (None: not assigned).
    fn nsid_of(&self, ns_fd: RawFd) -> io::Result<Option<i32>> {
        let req = nsid_request(ns_fd as u32);
        let fd = self.0.as_raw_fd();
        // SAFETY: send/recv on our socket with buffers of the given lengths.
        if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 256];
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(parse_nsid_reply(&buf[..n as usize]))
    }
}

/// RTM_GETNSID for the namespace open as `fd`: nlmsghdr, rtgenmsg (padded to 4), NETNSA_FD.
fn nsid_request(fd: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(28);
    m.extend_from_slice(&28u32.to_ne_bytes());
    m.extend_from_slice(&RTM_GETNSID.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    m.extend_from_slice(&fd.to_ne_bytes());
    m
}

/// The NETNSA_NSID of an RTM_NEWNSID reply; None for an error, or -1 (not assigned).
fn parse_nsid_reply(b: &[u8]) -> Option<i32> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    if u16_at(4)? != RTM_NEWNSID {
        return None;
    }
    let len = (u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?) as usize).min(b.len());
    let mut o = 16 + 4;
    while o + 4 <= len {
        let alen = u16_at(o)? as usize;
        if alen < 4 {
            return None;
        }
        if u16_at(o + 2)? & 0x3fff == NETNSA_NSID && alen >= 8 {
            let id = i32::from_ne_bytes(b.get(o + 4..o + 8)?.try_into().ok()?);
            return (id >= 0).then_some(id);
        }
        o += (alen + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsid_request_and_reply_layouts() {
        let r = nsid_request(7);
        assert_eq!(r.len(), 28);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), RTM_GETNSID);
        assert_eq!(u16::from_ne_bytes([r[22], r[23]]), NETNSA_FD);
        assert_eq!(u32::from_ne_bytes(r[24..28].try_into().unwrap()), 7);

        let reply = |ty: u16, id: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&28u32.to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&[0; 4]);
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&NETNSA_NSID.to_ne_bytes());
            m.extend_from_slice(&id.to_ne_bytes());
            m
        };
        assert_eq!(parse_nsid_reply(&reply(RTM_NEWNSID, 3)), Some(3));
        assert_eq!(parse_nsid_reply(&reply(RTM_NEWNSID, -1)), None);
        assert_eq!(parse_nsid_reply(&reply(2, 3)), None, "NLMSG_ERROR");
        assert_eq!(parse_nsid_reply(&[0; 8]), None);
    }

    #[test]
    fn the_loopback_device_has_a_tx_checksum_state_and_a_name() {
        // lo exists in every namespace with ifindex 1.
        assert_eq!(if_name(1).unwrap(), "lo");
        assert!(tx_csum("lo").is_ok());
        assert!(tx_csum("no-such-if0").is_err());
    }
}
