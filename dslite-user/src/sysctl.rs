//! Sysctls under /proc/sys: forwarding for the routers, and the per-interface settings of
//! the slow path's TAP.

use anyhow::{Context as _, Result};

/// Set a sysctl under /proc/sys if it is not already `value`; returns whether it changed.
pub fn ensure_sysctl(path: &str, value: &str) -> Result<bool> {
    let full = format!("/proc/sys/{path}");
    let cur = std::fs::read_to_string(&full).with_context(|| format!("reading {full}"))?;
    if cur.trim() == value {
        return Ok(false);
    }
    std::fs::write(&full, value).with_context(|| format!("writing {full}"))?;
    Ok(true)
}
