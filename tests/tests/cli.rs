//! Bad input gets a one-line error naming the bad value and exit code 2, before anything is
//! loaded or attached.

use std::process::Command;

use dslite_tests::dslite_bin;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(dslite_bin())
        .args(args)
        .output()
        .expect("run dslite");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let (code, err) = run(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: error should name {needle:?}: {err}"
    );
    let lines: Vec<_> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" WARN "))
        .collect();
    assert!(lines.len() <= 4, "short error expected for {args:?}: {err}");
}

#[test]
fn bad_flags_name_the_bad_value() {
    let aftr = [
        "aftr",
        "--tunnel-iface",
        "lo",
        "--address",
        "2001:db8::1",
        "--b4-prefix",
        "::/0",
    ];
    assert_usage_error(&[&aftr[..], &["--pool", "bogus"]].concat(), "bogus");
    assert_usage_error(
        &[&aftr[..], &["--pool", "198.51.100.0/33"]].concat(),
        "198.51.100.0/33",
    );
    assert_usage_error(
        &[
            &aftr[..],
            &["--pool", "198.51.100.0/30", "--port-range", "9-2"],
        ]
        .concat(),
        "9-2",
    );
    assert_usage_error(
        &[&aftr[..], &["--pool", "198.51.100.0/30", "198.51.100.2/32"]].concat(),
        "overlaps",
    );
    assert_usage_error(
        &["aftr", "--tunnel-iface", "lo", "--address", "::1x"],
        "::1x",
    );
    assert_usage_error(
        &["aftr", "--tunnel-iface", "lo", "--address", "2001:db8::1"],
        "--pool",
    );
    assert_usage_error(
        &[
            "b4",
            "--lan-iface",
            "lo",
            "--wan-iface",
            "lo",
            "--aftr",
            "2001:db8::1",
        ],
        "must differ",
    );
    assert_usage_error(&["b4", "--bogus-flag"], "--bogus-flag");
}

#[test]
fn pin_path_off_bpffs_is_refused() {
    assert_usage_error(
        &[
            "aftr",
            "--tunnel-iface",
            "lo",
            "--address",
            "2001:db8::1",
            "--pool",
            "198.51.100.1",
            "--b4-prefix",
            "::/0",
            "--pin-path",
            "/tmp/not-bpffs",
        ],
        "/tmp/not-bpffs",
    );
}

#[test]
fn missing_interfaces_are_named() {
    assert_usage_error(
        &[
            "b4",
            "--lan-iface",
            "nosuch0",
            "--wan-iface",
            "nosuch1",
            "--aftr",
            "2001:db8::1",
        ],
        "nosuch0",
    );
}

#[test]
fn config_file_errors_name_key_and_line() {
    let dir = dslite_tests::ScratchDir::new("cfg");
    let f = dir.join("b4.toml");
    std::fs::write(
        &f,
        "lan-iface = \"lo\"\nwan-iface = \"eth9\"\naftr = \"not an address!\"\n",
    )
    .unwrap();
    assert_usage_error(&["b4", "--config", f.to_str().unwrap()], "line 3");
    std::fs::write(&f, "lan-iface = \"lo\"\nmtu = 1500\n").unwrap();
    assert_usage_error(&["b4", "--config", f.to_str().unwrap()], "'mtu'");
}

/// `dslite check-config`: a good file of either role passes (exit 0); a bad key, value or
/// syntax fails with exit 2, naming the key and its line.
#[test]
fn check_config_names_key_and_line() {
    let dir = dslite_tests::ScratchDir::new("check");
    let file = dir.join("c.toml");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(dslite_bin())
            .args(["check-config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let aftr = "tunnel-iface = \"eth0\"\naddress = \"2001:db8::1\"\npool = [\"198.51.100.0/30\"]\n\
                b4-prefix = [\"2001:db8::/32\"]\nmax-blocks = 4\nudp-timeout = 300\nlog-sessions = true\n\
                nat-log = \"/var/log/dslite/nat.log\"\nreassembly-timeout = 5\n";
    let (code, out) = check(aftr);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a valid AFTR configuration"), "{out}");
    let (code, out) =
        check("lan-iface = \"br-lan\"\nwan-iface = \"wan\"\naftr = \"2001:db8::1\"\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a valid B4 configuration"), "{out}");

    let (code, out) = check(&aftr.replace("max-blocks = 4", "max-blocks = 99"));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("line 5") && out.contains("max-blocks"),
        "{out}"
    );
    let (code, out) = check(&format!("{aftr}colour = \"blue\"\n"));
    assert_eq!(code, 2);
    assert!(out.contains("line 10") && out.contains("colour"), "{out}");
    let (code, out) = check("tunnel-iface = \"eth0\"\naddress = \n");
    assert_eq!(code, 2);
    assert!(out.contains("line 2"), "{out}");
}

/// The shipped example configurations are valid, and the odhcp6c hook writes the AFTR name
/// where `dslite b4 --aftr-file` reads it.
#[test]
fn contrib_configs_and_dhcpv6_hook_work() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["contrib/aftr.toml", "contrib/b4.toml"] {
        let out = Command::new(dslite_bin())
            .arg("check-config")
            .arg(root.join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = dslite_tests::ScratchDir::new("hook");
    // In a directory that does not exist yet: the hook creates it.
    let file = dir.join("run/aftr");
    let hook = root.join("contrib/odhcp6c/dslite-aftr-name.sh");
    let run = |state: &str, aftr: &str| {
        let st = Command::new("sh")
            .arg(&hook)
            .args(["wan", state])
            .env("AFTR", aftr)
            .env("DSLITE_AFTR_FILE", &file)
            .status()
            .unwrap();
        assert!(st.success());
    };
    run("bound", "gw.transix.jp");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "gw.transix.jp\n");
    run("stopped", "other.example");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "gw.transix.jp\n",
        "only on bound/updated"
    );
    run("updated", "aftr2.example");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "aftr2.example\n");
}

/// Run `dslite ARGS` with its standard output a pipe whose reader is already gone (as in
/// `dslite ... | head -0`), and, with `close_stderr`, its standard error too: the exit code
/// and what it wrote to stderr.
fn run_into_closed_pipe(args: &[&str], close_stderr: bool) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(dslite_bin());
    cmd.args(args).stdout(writer);
    if close_stderr {
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        cmd.stderr(w);
        let st = cmd.status().unwrap();
        return (st.code().unwrap_or(-1), String::new());
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every command that prints stops quietly when its reader goes away: exit 0, nothing on
/// stderr, never a panic (which was exit 101 with "failed printing to stdout"). A failing
/// command with stderr closed too still exits 1.
#[test]
fn output_cut_short_exits_quietly() {
    let dir = dslite_tests::ScratchDir::new("pipe");
    let log = dir.join("nat.log");
    let mut text = String::new();
    for i in 0..2000u32 {
        text.push_str(&format!(
            "{{\"b4\":\"2001:db8:a::{:x}\",\"event\":\"mapping-created\",\"outside\":\"198.51.100.3\",\"port\":40000,\"proto\":\"udp\",\"inside\":\"192.168.1.10:{}\",\"ts\":\"2026-11-26T05:00:00.123Z\"}}\n",
            i + 1,
            1024 + i
        ));
    }
    std::fs::write(&log, text).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let conf = root.join("contrib/aftr.toml");
    let log_s = log.to_str().unwrap();
    let whois = [
        "whois",
        "198.51.100.3:40000",
        "--at",
        "2026-11-26T06:00:00Z",
        "--nat-log",
        log_s,
    ];
    let whois_json = [&whois[..], &["--json"]].concat();
    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["help", "aftr"],
        vec!["sessions", "--help"],
        vec!["--version"],
        vec!["check-config", conf.to_str().unwrap()],
        whois.to_vec(),
        whois_json,
    ];
    for args in &commands {
        // Each prints something when someone reads it...
        let out = Command::new(dslite_bin()).args(args).output().unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // ...and ends quietly when nobody does.
        let (code, err) = run_into_closed_pipe(args, false);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    let (code, _) = run_into_closed_pipe(&["stats", "--pin-path", "/nonexistent/pins"], true);
    assert_eq!(
        code, 1,
        "an error with nowhere to say it is still exit 1, not a panic"
    );
    let (code, err) = run_into_closed_pipe(&["stats", "--pin-path", "/nonexistent/pins"], false);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/pins") && !err.contains("panicked"),
        "{err}"
    );
}
