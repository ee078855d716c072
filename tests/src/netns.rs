//! Network namespaces that are deleted when dropped (also when a test panics; after a
//! killed run, by the next one: [`crate::leftovers`]), and ways to run code or processes
//! inside them.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Stdio},
    thread::JoinHandle,
};

use anyhow::{bail, Context as _, Result};

/// Run `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        crate::leftovers::claim("netns", name);
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection: tentative link-local addresses would delay the
        // first neighbour solicitations (and so the first packets) by a second or more.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// MAC address of `ifname` inside this namespace.
    pub fn mac_of(&self, ifname: &str) -> Result<[u8; 6]> {
        let i = ifname.to_string();
        self.run(move || mac(&i))
            .join()
            .map_err(|_| anyhow::anyhow!("mac thread panicked"))?
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Set a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let key = key.to_string();
        let value = value.to_string();
        self.run(move || {
            std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
                .with_context(|| format!("sysctl {key}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
    }

    /// Run `f` on a new thread that has entered this namespace (setns is per thread for
    /// network namespaces, so the rest of the test process is unaffected).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path).expect("entering netns");
            f()
        })
    }

    /// Spawn a process inside this namespace. Only the network namespace changes (unlike
    /// `ip netns exec`, which also remounts /sys): pinned maps under /sys/fs/bpf stay visible.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        let f = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let fd = f.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `f` outlives the spawn call.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .context("spawning in netns")?;
        drop(f);
        Ok(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        crate::leftovers::release("netns", &self.name);
    }
}

/// Move the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain setns(2) on an open namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(ifname: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    r.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    r
}

fn ethtool(ifname: &str, cmd: u32, value: u32) -> Result<()> {
    let mut v = EthtoolValue { cmd, data: value };
    let mut r = ifreq(ifname);
    r.data[..8].copy_from_slice(&(&mut v as *mut EthtoolValue as usize).to_ne_bytes());
    // SAFETY: a datagram socket for the ioctl, closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(s, SIOCETHTOOL, &mut r) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(s) };
    if rc != 0 {
        bail!("ethtool cmd {cmd:#x} on {ifname}: {err}");
    }
    Ok(())
}

/// Turn GRO on: XDP_REDIRECT into a veth only delivers when the peer has GRO (or XDP).
/// Call from a thread inside the interface's namespace.
pub fn gro_on(ifname: &str) -> Result<()> {
    ethtool(ifname, ETHTOOL_SGRO, 1)
}

/// Turn TX checksum offload off where test traffic originates, so packets carry real
/// checksums after an XDP redirect (see platform.md). Call from inside the namespace.
pub fn tx_csum_off(ifname: &str) -> Result<()> {
    ethtool(ifname, ETHTOOL_STXCSUM, 0)
}

/// MAC address of an interface. Call from inside its namespace.
pub fn mac(ifname: &str) -> Result<[u8; 6]> {
    let mut r = ifreq(ifname);
    // SAFETY: as in `ethtool`.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    // SAFETY: SIOCGIFHWADDR fills the sockaddr in the ifreq data.
    let rc = unsafe { libc::ioctl(s, SIOCGIFHWADDR, &mut r) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(s) };
    if rc != 0 {
        bail!("SIOCGIFHWADDR {ifname}: {err}");
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&r.data[2..8]);
    Ok(m)
}
