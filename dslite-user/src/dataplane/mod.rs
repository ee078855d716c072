//! Loading the kernel object, pinning its maps, attaching XDP or tc, unpinning.
//!
//! The same functions serve the controller and the tests (BPF_PROG_TEST_RUN fixtures load
//! the object and configure it through here), so map setup exists once.
//!
//! - [`maps`]: the pinned maps opened by name ([`Pinned`]), and the small configuration
//!   writes (B4, slow path, counters, next-hop cache, deny lists).
//! - [`aftr`]: the map sizes of a role, and the AFTR's configuration planned and applied
//!   all or nothing.
//! - [`batch`]: reading a whole map with BPF_MAP_LOOKUP_BATCH.
//! - [`hook`]: which hook (XDP or tc) runs on each interface and why, tc attachment, and
//!   the record of it `dslite stats` shows.
//! - [`table`]: the one-table layout's tables through `mmap` (built ahead of the paths
//!   using them).

pub mod aftr;
pub mod batch;
pub mod hook;
pub mod maps;
pub mod table;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use dslite_common::maps as m;
use log::{info, warn};

use crate::config::XdpModeOpt;

pub use aftr::{
    aftr_config, apply_aftr, check_adopted_aftr, configure_aftr, denied_destinations, map_sizes,
    plan_aftr, reset_block_hints, AftrMaps, AftrPlan,
};
pub use maps::{
    bump_next_hops, configure_b4, publish_counters, running_seed, set_peer_redirects,
    set_slow_config, sync_denied, sync_local_b4_denies, update_b4_config, Pinned, B4_ALWAYS_LOCAL,
};

/// The object built by `cargo xtask build-ebpf`, embedded at build time (may be empty).
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dslite.bpf.o"));

pub const PROG_B4: &str = "dslite_b4";
pub const PROG_AFTR: &str = "dslite_aftr";
/// XDP_PASS only: makes a veth accept redirected frames (see dslite-ebpf).
pub const PROG_PASS: &str = "dslite_pass";

/// Read the kernel object: `path` if given, else the embedded one.
pub fn object_bytes(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("--bpf-object '{}'", p.display())),
        None if EMBEDDED.is_empty() => bail!(
            "this dslite was built without its kernel object: run `cargo xtask build-ebpf` and \
             rebuild, or pass --bpf-object FILE"
        ),
        None => Ok(EMBEDDED.to_vec()),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Make sure `pin_path` will be on a bpf filesystem: mount bpffs on /sys/fs/bpf when the
/// path is below it and nothing is mounted there yet (idempotent); any other location must
/// already be on a bpffs.
pub fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let existing = pin_path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !pin_path.starts_with(root) {
        bail!(
            "--pin-path {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_path.display()
        );
    }
    // SAFETY: plain mount(2) call with constant NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Mounting is the one thing here that needs CAP_SYS_ADMIN; a unit that mounts bpffs
        // beforehand runs without it (contrib/systemd).
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            ": mount it beforehand (mount -t bpf bpf /sys/fs/bpf), or grant CAP_SYS_ADMIN"
        } else {
            ""
        };
        bail!("mounting bpffs on /sys/fs/bpf: {e}{hint}");
    }
    info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// Load the object with every map pinned under `pin_path`.
///
/// Without `persist`, pins left by an earlier run are removed first (detaching any XDP link
/// pinned there), so a start begins from a known state. With `persist`, they are adopted:
/// aya reuses a pinned map of the same name, so the mappings, blocks and the NAT event ring
/// of the previous controller carry on (docs/operations.md, `--persist`).
pub fn load(
    object: &[u8],
    pin_path: &Path,
    sizes: &[(&'static str, u32)],
    persist: bool,
) -> Result<Ebpf> {
    ensure_bpffs(pin_path)?;
    if persist && pin_path.join(m::STATS).exists() {
        info!(
            "adopting the pinned maps under {} (--persist)",
            pin_path.display()
        );
    } else if pin_path.exists() {
        let stale: Vec<PathBuf> = std::fs::read_dir(pin_path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if !stale.is_empty() {
            warn!(
                "removing {} stale pinned maps under {}",
                stale.len(),
                pin_path.display()
            );
            for p in stale {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("creating pin path {}", pin_path.display()))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_path);
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    loader.load(object).context("loading the XDP programs")
}

/// Remove the pinned maps and the hook record (clean shutdown).
pub fn unpin(pin_path: &Path) {
    hook::remove_records(pin_path);
    if let Ok(dir) = std::fs::read_dir(pin_path) {
        for e in dir.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(pin_path);
}

/// Destinations a subscriber never reaches through the AFTR, whatever the configuration:
/// "this network", loopback, the IETF protocol assignments block (192.0.0.1, the AFTR's
/// echo, is answered before this list is consulted), multicast, reserved and limited
/// broadcast (RFC 6890; RFC 6333 §5.7).
pub const ALWAYS_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "192.0.0.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
];

/// Load program `name` into the kernel (verifier) without attaching it (once).
pub fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("verifying {name}"))?;
    }
    Ok(prog)
}

/// Where the XDP link of `ifname` is pinned with `--persist`.
pub fn link_pin(pin_path: &Path, ifname: &str) -> PathBuf {
    pin_path.join(format!("link-{ifname}"))
}

/// Attach program `name` by XDP to every interface index (each once). With `persist`, each
/// link is pinned under the pin path, so XDP stays attached when the controller exits or is
/// killed; an interface whose link is already pinned there keeps its running program
/// (adopted). The daemons choose a hook per interface with [`attach_hooks`] instead.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    ifaces: &[(String, u32)],
    mode: XdpModeOpt,
    persist: Option<&Path>,
) -> Result<()> {
    let prog = load_program(ebpf, name)?;
    let mut done = Vec::new();
    for (ifname, index) in ifaces {
        if done.contains(index) {
            continue;
        }
        if let Some(pin) = persist {
            if link_pin(pin, ifname).exists() {
                info!("{name} on {ifname}: adopted the running XDP link (--persist)");
                done.push(*index);
                continue;
            }
        }
        attach_xdp(prog, name, ifname, *index, mode, persist)?;
        info!("{name} attached to {ifname} (ifindex {index})");
        done.push(*index);
    }
    Ok(())
}

/// Attach `prog` to one interface in `mode`, pinning the link with `persist`. Returns the
/// mode that took (`native` or `skb`).
fn attach_xdp(
    prog: &mut Xdp,
    name: &str,
    ifname: &str,
    index: u32,
    mode: XdpModeOpt,
    persist: Option<&Path>,
) -> Result<&'static str> {
    let (r, took) = match mode {
        XdpModeOpt::Native => (prog.attach_to_if_index(index, XdpMode::Driver), "native"),
        XdpModeOpt::Skb => (prog.attach_to_if_index(index, XdpMode::Skb), "skb"),
        XdpModeOpt::Auto => match prog.attach_to_if_index(index, XdpMode::Driver) {
            Ok(id) => (Ok(id), "native"),
            Err(e) => {
                warn!("native XDP on {ifname} failed ({e}); falling back to generic (skb) mode");
                (prog.attach_to_if_index(index, XdpMode::Skb), "skb")
            }
        },
    };
    let id = r.with_context(|| format!("attaching {name} to {ifname}"))?;
    if let Some(pin) = persist {
        let link = prog.take_link(id)?;
        let fd: aya::programs::links::FdLink = link
            .try_into()
            .with_context(|| format!("{ifname}: --persist needs bpf_link XDP (Linux 5.9+)"))?;
        fd.pin(link_pin(pin, ifname))
            .with_context(|| format!("pinning the XDP link of {ifname}"))?;
    }
    Ok(took)
}

/// An interface the daemon attaches to, with its planned hook ([`hook::plan`]).
pub struct Target {
    pub name: String,
    pub index: u32,
    pub plan: hook::Plan,
}

/// Attach the XDP program `name`, or its tc twin ([`hook::tc_program`]), to each target
/// (each once) as planned. `auto` on a NIC tries native XDP and takes tc if the driver
/// refuses. With `persist`, links are pinned (`link-<if>` for XDP, `link-tc-<if>` for tc),
/// a link already pinned for the planned hook is adopted, and one pinned for the other hook
/// is removed, so that dslite never runs on both hooks of an interface.
pub fn attach_hooks(
    ebpf: &mut Ebpf,
    name: &str,
    targets: &[Target],
    mode: XdpModeOpt,
    persist: Option<&Path>,
) -> Result<Vec<hook::HookRecord>> {
    let tc_name = hook::tc_program(name);
    let mut records: Vec<hook::HookRecord> = Vec::new();
    for t in targets {
        if records.iter().any(|r| r.ifindex == t.index) {
            continue;
        }
        let record = |program: &str, hook: &str, mode: &str, reason: String| hook::HookRecord {
            interface: t.name.clone(),
            ifindex: t.index,
            program: program.to_string(),
            hook: hook.to_string(),
            mode: mode.to_string(),
            reason,
        };
        let mut plan = t.plan.clone();
        if plan == hook::Plan::NativeElseTc {
            let adopted = persist.is_some_and(|p| link_pin(p, &t.name).exists());
            plan = if adopted {
                hook::Plan::Xdp("driver has native XDP".into())
            } else if mode == XdpModeOpt::Skb {
                hook::Plan::Xdp("physical device, --xdp-mode skb".into())
            } else {
                let prog = load_program(ebpf, name)?;
                let native = XdpModeOpt::Native;
                match attach_xdp(prog, name, &t.name, t.index, native, persist) {
                    Ok(took) => {
                        if let Some(pin) = persist {
                            hook::unpin_other(&hook::tc_link_pin(pin, &t.name));
                        }
                        let hook::Plan::Xdp(reason) = hook::after_native(Ok(())) else {
                            unreachable!("after_native(Ok) is XDP")
                        };
                        records.push(record(name, "xdp", took, reason));
                        continue;
                    }
                    Err(e) if mode == XdpModeOpt::Native => return Err(e),
                    Err(e) => hook::after_native(Err(e.root_cause().to_string())),
                }
            };
        }
        let r = match plan {
            hook::Plan::Tc(reason) => {
                if let Some(pin) = persist {
                    hook::unpin_other(&link_pin(pin, &t.name));
                }
                let adopt = persist.map(|p| hook::tc_link_pin(p, &t.name));
                if adopt.as_ref().is_some_and(|p| p.exists()) {
                    hook::loaded_tc(ebpf, &tc_name)?;
                    record(
                        &tc_name,
                        "tc",
                        "adopted",
                        format!("{reason}; adopted (--persist)"),
                    )
                } else {
                    let m = hook::attach_tc(ebpf, &tc_name, &t.name, persist)?;
                    record(&tc_name, "tc", m, reason)
                }
            }
            hook::Plan::Xdp(reason) => {
                if let Some(pin) = persist {
                    hook::unpin_other(&hook::tc_link_pin(pin, &t.name));
                }
                let prog = load_program(ebpf, name)?;
                if persist.is_some_and(|p| link_pin(p, &t.name).exists()) {
                    record(
                        name,
                        "xdp",
                        "adopted",
                        format!("{reason}; adopted (--persist)"),
                    )
                } else {
                    let m = attach_xdp(prog, name, &t.name, t.index, mode, persist)?;
                    record(name, "xdp", m, reason)
                }
            }
            hook::Plan::NativeElseTc => unreachable!("resolved above"),
        };
        records.push(r);
    }
    for r in &records {
        info!("{}", r.log_line());
    }
    Ok(records)
}

/// Attach the program `name` to the slow path's TAP, on the hook the role's interfaces use:
/// the frames the controller writes back run through the same code as the wire's. XDP goes
/// on in generic mode; tc (when any interface runs tc) on the TAP's ingress.
pub fn attach_tap(
    ebpf: &mut Ebpf,
    name: &str,
    ifname: &str,
    index: u32,
    tc: bool,
) -> Result<hook::HookRecord> {
    let (program, hook, mode) = if tc {
        let tc_name = hook::tc_program(name);
        let m = hook::attach_tc(ebpf, &tc_name, ifname, None)
            .with_context(|| format!("the slow path's {ifname}"))?;
        (tc_name, "tc", m)
    } else {
        let prog = load_program(ebpf, name)?;
        prog.attach_to_if_index(index, XdpMode::Skb)
            .with_context(|| format!("attaching {name} to the slow path's {ifname}"))?;
        (name.to_string(), "xdp", "skb")
    };
    let r = hook::HookRecord {
        interface: ifname.to_string(),
        ifindex: index,
        program,
        hook: hook.to_string(),
        mode: mode.to_string(),
        reason: "the slow path's TAP, on the hook the interfaces use".into(),
    };
    info!("{}", r.log_line());
    Ok(r)
}

/// Format helper used in logs.
pub fn pool_summary(pool: &[Ipv4Addr]) -> String {
    match pool {
        [] => "empty".into(),
        [a] => a.to_string(),
        [a, .., b] => format!("{a} .. {b} ({} addresses)", pool.len()),
    }
}
