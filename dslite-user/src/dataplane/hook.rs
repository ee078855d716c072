//! Which kernel hook runs the dataplane on each interface, and why: the choice (a pure
//! function of the link kind, the veth peer's TX checksumming and `--hook`), attaching the
//! tc programs (tcx, or clsact through netlink), and the record `dslite stats` reads
//! (under [`RECORDS_DIR`]; docs/operations.md, "Hooks: XDP or tc").
//!
//! Why not XDP everywhere: a neighbour with TX checksum offload (a veth's peer, any Linux
//! router behind a virtual link) hands over CHECKSUM_PARTIAL packets and GRO aggregates.
//! Native XDP loses the partial-checksum state on redirect, and generic XDP sees GRO
//! super-packets; tc sees the skb and keeps both (platform.md).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::{
    links::FdLink,
    tc::{self, NlOptions, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::{
    config::{HookOpt, XdpModeOpt},
    ethtool::PeerTxCsum,
};

/// Internal switch: attach tc through a clsact qdisc and netlink instead of tcx, so a test
/// covers the fallback that kernels before 6.6 take.
pub const TC_NETLINK_ENV: &str = "DSLITE_TC_NETLINK";

/// The tc twin of an XDP program (`dslite_b4` → `dslite_b4_tc`).
pub fn tc_program(xdp_program: &str) -> String {
    format!("{xdp_program}_tc")
}

/// What the controller knows of an interface when it chooses.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub name: &'a str,
    /// `IFLA_INFO_KIND`; None for a NIC.
    pub kind: Option<&'a str>,
    /// For a veth, its peer's TX checksumming.
    pub peer: Option<&'a PeerTxCsum>,
}

/// What to attach to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Tc(String),
    Xdp(String),
    /// `auto` on a NIC: native XDP if the driver takes it, else tc.
    NativeElseTc,
}

/// The choice table of docs/operations.md, "Hooks: XDP or tc". An error is a refusal to
/// start, saying why and what to do.
pub fn plan(f: &Facts, opt: HookOpt, xdp_mode: XdpModeOpt) -> Result<Plan, String> {
    match (opt, f.kind) {
        (HookOpt::Tc, _) => Ok(Plan::Tc("--hook tc".into())),
        (HookOpt::Auto, Some(kind)) => Ok(Plan::Tc(format!("virtual device: {kind}"))),
        (HookOpt::Auto, None) => Ok(Plan::NativeElseTc),
        (HookOpt::Xdp, None) => Ok(Plan::Xdp("--hook xdp, physical device".into())),
        (HookOpt::Xdp, Some(kind)) => {
            let why = match (kind, f.peer) {
                ("veth", Some(PeerTxCsum::Off { peer, gro: false }))
                    if xdp_mode != XdpModeOpt::Skb =>
                {
                    return Err(format!(
                        "--hook xdp on {}: its veth peer {peer} has GRO off, and a veth drops \
                         the frames native XDP redirects into it unless its peer has GRO on \
                         (or an XDP program): nothing would be forwarded. Use --hook tc (or \
                         auto), --xdp-mode skb, or turn GRO on at the peer: ethtool -K {peer} \
                         gro on",
                        f.name
                    ));
                }
                ("veth", Some(PeerTxCsum::Off { .. })) => {
                    return Ok(Plan::Xdp(
                        "--hook xdp, veth peer has tx-checksumming off".into(),
                    ))
                }
                ("veth", Some(PeerTxCsum::On { peer })) => {
                    format!("its veth peer {peer} has tx-checksumming on")
                }
                ("veth", Some(PeerTxCsum::Unknown(e))) => {
                    format!("its veth peer's tx-checksumming is unknown ({e})")
                }
                (kind, _) => format!("what feeds a {kind} device cannot be inspected"),
            };
            let peer = match f.peer {
                Some(PeerTxCsum::On { peer }) => peer.as_str(),
                _ => "<peer>",
            };
            Err(format!(
                "--hook xdp on {}: {why}, so it may receive packets with partial checksums \
                 (CHECKSUM_PARTIAL) and GRO aggregates; native XDP loses the partial-checksum \
                 state and generic XDP sees GRO super-packets and mis-edits partial checksums, \
                 and receivers drop what it forwards. Use --hook tc (or auto), or turn TX \
                 checksumming off on the sender: ethtool -K {peer} tx off",
                f.name
            ))
        }
    }
}

/// `auto` on a NIC once native XDP was tried: the hook and its reason.
pub fn after_native(native: Result<(), String>) -> Plan {
    match native {
        Ok(()) => Plan::Xdp("driver has native XDP".into()),
        Err(e) => Plan::Tc(format!("driver has no native XDP: {e}")),
    }
}

/// Which hook runs on one interface, as the startup log and `dslite stats` say it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    pub interface: String,
    pub ifindex: u32,
    pub program: String,
    /// `xdp` or `tc`.
    pub hook: String,
    /// XDP: `native` or `skb`; tc: `tcx` or `netlink`; `adopted` for a link kept with
    /// --persist.
    pub mode: String,
    pub reason: String,
}

impl HookRecord {
    /// `dslite_b4_tc on veth0 (ifindex 5): tc, virtual device: veth`
    pub fn log_line(&self) -> String {
        format!(
            "{} on {} (ifindex {}): {} ({}), {}",
            self.program, self.interface, self.ifindex, self.hook, self.mode, self.reason
        )
    }
}

/// Where controllers record their hooks: bpffs holds only BPF objects, so the record sits
/// beside the pins, in a file named after the pin path.
pub const RECORDS_DIR: &str = "/run/dslite/hooks";

/// The record file of the controller pinned at `pin`: the path with `%` and `/` escaped
/// (`/sys/fs/bpf/dslite/b4` → `%2Fsys%2Ffs%2Fbpf%2Fdslite%2Fb4.json`), one file per pin path.
pub fn records_file(dir: &Path, pin: &Path) -> PathBuf {
    let name = pin
        .to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F");
    dir.join(format!("{name}.json"))
}

/// Record which hook runs where for the controller pinned at `pin` (`dslite stats`).
pub fn write_records(pin: &Path, records: &[HookRecord]) -> Result<()> {
    std::fs::create_dir_all(RECORDS_DIR).with_context(|| format!("creating {RECORDS_DIR}"))?;
    write_to(&records_file(Path::new(RECORDS_DIR), pin), records)
}

/// The records of the controller pinned at `pin` (None: none is recorded).
pub fn read_records(pin: &Path) -> Option<Vec<HookRecord>> {
    read_from(&records_file(Path::new(RECORDS_DIR), pin))
}

/// Remove the record (a clean stop without `--persist`).
pub fn remove_records(pin: &Path) {
    let _ = std::fs::remove_file(records_file(Path::new(RECORDS_DIR), pin));
}

/// Write atomically: a reader sees the old file or the new one (tmp + rename).
fn write_to(path: &Path, records: &[HookRecord]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(records)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn read_from(path: &Path) -> Option<Vec<HookRecord>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Where the tcx link of `ifname` is pinned with `--persist`.
pub fn tc_link_pin(pin_path: &Path, ifname: &str) -> PathBuf {
    pin_path.join(format!("link-tc-{ifname}"))
}

/// Whether tc attaches through netlink (the internal switch) instead of tcx.
pub fn netlink_forced() -> bool {
    std::env::var_os(TC_NETLINK_ENV).is_some_and(|v| v == "1")
}

/// Load the tc twin `name`, once.
pub fn loaded_tc<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tc classifier"))?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("verifying {name}"))?;
    }
    Ok(prog)
}

/// Attach the tc program `name` to `ifname`'s ingress: tcx, or with `DSLITE_TC_NETLINK=1` a
/// clsact qdisc and a netlink filter. With `persist`, the tcx link is pinned (netlink
/// filters have no link to pin: refused). Returns the mode (`tcx` or `netlink`).
pub fn attach_tc(
    ebpf: &mut aya::Ebpf,
    name: &str,
    ifname: &str,
    persist: Option<&Path>,
) -> Result<&'static str> {
    let netlink = netlink_forced();
    if netlink && persist.is_some() {
        anyhow::bail!(
            "--persist needs tcx links (Linux 6.6+), which can be pinned; the clsact/netlink \
             attachment ({TC_NETLINK_ENV}=1) cannot be"
        );
    }
    let prog = loaded_tc(ebpf, name)?;
    let id = if netlink {
        if let Err(e) = tc::qdisc_add_clsact(ifname) {
            // An existing clsact qdisc is fine; any other failure shows in the attach.
            log::debug!("adding clsact on {ifname}: {e}");
        }
        prog.attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
    } else {
        prog.attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
    }
    .with_context(|| format!("attaching {name} to {ifname}'s tc ingress"))?;
    if let Some(pin) = persist {
        let fd: FdLink = prog
            .take_link(id)?
            .try_into()
            .with_context(|| format!("{ifname}: --persist needs a tcx link (Linux 6.6+)"))?;
        fd.pin(tc_link_pin(pin, ifname))
            .with_context(|| format!("pinning the tc link of {ifname}"))?;
    }
    Ok(if netlink { "netlink" } else { "tcx" })
}

/// Remove a pinned link that dslite left for `ifname` on the other hook, so that XDP and tc
/// never both run dslite on one interface (unpinning the last reference detaches it).
pub fn unpin_other(pin: &Path) {
    if pin.exists() {
        match std::fs::remove_file(pin) {
            Ok(()) => info!("removed {} (the interface's hook changed)", pin.display()),
            Err(e) => warn!("removing {}: {e}", pin.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(kind: Option<&'a str>, peer: Option<&'a PeerTxCsum>) -> Facts<'a> {
        Facts {
            name: "veth0",
            kind,
            peer,
        }
    }

    #[test]
    fn the_choice_table() {
        let on = PeerTxCsum::On {
            peer: "veth1".into(),
        };
        let off = PeerTxCsum::Off {
            peer: "veth1".into(),
            gro: true,
        };
        let off_no_gro = PeerTxCsum::Off {
            peer: "veth1".into(),
            gro: false,
        };
        let unknown = PeerTxCsum::Unknown("nsid 3 not found".into());
        // auto: every virtual kind is tc, a NIC tries native XDP.
        for kind in [
            "veth",
            "bridge",
            "tun",
            "macvlan",
            "ipvlan",
            "vxlan",
            "bond",
            "vlan",
            "dummy",
            "vrf",
            "wireguard",
            "netkit",
        ] {
            assert_eq!(
                plan(
                    &facts(Some(kind), Some(&off)),
                    HookOpt::Auto,
                    XdpModeOpt::Auto
                ),
                Ok(Plan::Tc(format!("virtual device: {kind}")))
            );
            assert_eq!(
                plan(&facts(Some(kind), None), HookOpt::Tc, XdpModeOpt::Auto),
                Ok(Plan::Tc("--hook tc".into()))
            );
        }
        assert_eq!(
            plan(&facts(None, None), HookOpt::Auto, XdpModeOpt::Auto),
            Ok(Plan::NativeElseTc)
        );
        assert_eq!(
            after_native(Ok(())),
            Plan::Xdp("driver has native XDP".into())
        );
        assert_eq!(
            after_native(Err("Operation not supported".into())),
            Plan::Tc("driver has no native XDP: Operation not supported".into())
        );
        // tc: everywhere.
        assert_eq!(
            plan(&facts(None, None), HookOpt::Tc, XdpModeOpt::Auto),
            Ok(Plan::Tc("--hook tc".into()))
        );
        // xdp: a NIC, or a veth whose peer computes its checksums.
        assert!(matches!(
            plan(&facts(None, None), HookOpt::Xdp, XdpModeOpt::Auto),
            Ok(Plan::Xdp(_))
        ));
        assert_eq!(
            plan(
                &facts(Some("veth"), Some(&off)),
                HookOpt::Xdp,
                XdpModeOpt::Auto
            ),
            Ok(Plan::Xdp(
                "--hook xdp, veth peer has tx-checksumming off".into()
            ))
        );
        // Native XDP toward a veth peer without GRO forwards nothing: refused; generic is fine.
        for mode in [XdpModeOpt::Auto, XdpModeOpt::Native] {
            let e = plan(&facts(Some("veth"), Some(&off_no_gro)), HookOpt::Xdp, mode).unwrap_err();
            for s in [
                "veth peer veth1 has GRO off",
                "--xdp-mode skb",
                "ethtool -K veth1 gro on",
            ] {
                assert!(e.contains(s), "{s:?} not in {e}");
            }
        }
        assert!(matches!(
            plan(
                &facts(Some("veth"), Some(&off_no_gro)),
                HookOpt::Xdp,
                XdpModeOpt::Skb
            ),
            Ok(Plan::Xdp(_))
        ));
        // ...and refused where partial checksums may arrive.
        let e = plan(
            &facts(Some("veth"), Some(&on)),
            HookOpt::Xdp,
            XdpModeOpt::Auto,
        )
        .unwrap_err();
        for s in [
            "--hook xdp on veth0",
            "veth peer veth1 has tx-checksumming on",
            "native XDP loses",
            "generic XDP sees GRO super-packets",
            "--hook tc",
            "ethtool -K veth1 tx off",
        ] {
            assert!(e.contains(s), "{s:?} not in {e}");
        }
        let e = plan(
            &facts(Some("veth"), Some(&unknown)),
            HookOpt::Xdp,
            XdpModeOpt::Auto,
        )
        .unwrap_err();
        assert!(e.contains("unknown (nsid 3 not found)"), "{e}");
        let e = plan(&facts(Some("bridge"), None), HookOpt::Xdp, XdpModeOpt::Auto).unwrap_err();
        assert!(e.contains("a bridge device cannot be inspected"), "{e}");
    }

    #[test]
    fn records_round_trip_through_their_file() {
        assert_eq!(
            records_file(Path::new("/run/x"), Path::new("/sys/fs/bpf/dslite/b4%1")),
            Path::new("/run/x/%2Fsys%2Ffs%2Fbpf%2Fdslite%2Fb4%251.json")
        );
        let dir = std::env::temp_dir().join(format!("dslite-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = records_file(&dir, Path::new("/sys/fs/bpf/t"));
        assert_eq!(read_from(&f), None);
        let r = HookRecord {
            interface: "veth0".into(),
            ifindex: 5,
            program: "dslite_b4_tc".into(),
            hook: "tc".into(),
            mode: "tcx".into(),
            reason: "virtual device: veth".into(),
        };
        assert_eq!(
            r.log_line(),
            "dslite_b4_tc on veth0 (ifindex 5): tc (tcx), virtual device: veth"
        );
        write_to(&f, std::slice::from_ref(&r)).unwrap();
        assert_eq!(read_from(&f), Some(vec![r]));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no tmp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tc_twin_is_named_after_the_xdp_program() {
        assert_eq!(tc_program("dslite_b4"), "dslite_b4_tc");
        assert_eq!(tc_program("dslite_aftr"), "dslite_aftr_tc");
    }
}
