//! `dslite check-config FILE`: parse and validate a TOML file as the role its keys name,
//! without touching interfaces or the kernel.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{
    commands::inspect::to_stdout,
    usage::{usage, Usage},
};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The file to check.
    pub file: PathBuf,
}

/// Check `file`; a bad one is a [`Usage`] error naming its line where it can.
pub fn run(file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))
        .map_err(usage)?;
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        // Let the full reader word the syntax error, with its line.
        Err(_) => toml::Table::new(),
    };
    let common = crate::config::CommonOptions {
        config: Some(file.to_path_buf()),
        ..Default::default()
    };
    // A value error names its flag (`--max-blocks 99 ...`): point at the key's line too.
    let at_line = |e: anyhow::Error| -> anyhow::Error {
        let msg = format!("{e:#}");
        if msg.contains(" line ") {
            return usage(e);
        }
        let key: String = msg
            .find("--")
            .map(|i| {
                msg[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect()
            })
            .unwrap_or_default();
        match crate::config::line_of(&text, &key) {
            0 => usage(e),
            n => Usage(format!("config '{}' line {n}: {msg}", file.display())).into(),
        }
    };
    if table.contains_key("lan-iface")
        || table.contains_key("wan-iface")
        || table.contains_key("aftr")
    {
        let s = crate::config::B4Options {
            common,
            ..Default::default()
        }
        .merged()
        .and_then(|o| o.validate(crate::provision::system_nameservers))
        .map_err(at_line)?;
        to_stdout(|w| {
            writeln!(
                w,
                "{}: a valid B4 configuration (LAN {}, WAN {}, AFTR {})",
                file.display(),
                s.lan_iface,
                s.wan_iface,
                s.aftr
            )
        })?;
    } else {
        let s = crate::config::AftrOptions {
            common,
            ..Default::default()
        }
        .merged()
        .and_then(|o| o.validate())
        .map_err(at_line)?;
        to_stdout(|w| {
            for warning in s.warnings() {
                writeln!(w, "{}: warning: {warning}", file.display())?;
            }
            writeln!(
                w,
                "{}: a valid AFTR configuration ({} on {}, {} pool addresses, {} B4 prefixes)",
                file.display(),
                s.address,
                s.tunnel_iface,
                s.pool.len(),
                s.b4_prefixes.len()
            )
        })?;
    }
    Ok(())
}
