//! `cargo xtask demo`: two customers with the same private address reach an IPv4 server
//! through their B4s, an IPv6-only network and the AFTR's NAT44, all in XDP.

use std::{net::SocketAddrV4, process::Command};

use dslite_tests::{dslite_bin, topo::*, traffic::*};

fn section(title: &str) {
    println!("\n=== {title} ===");
}

fn show(what: &str, pin: &std::path::Path) {
    let status = Command::new(dslite_bin())
        .args([what, "--pin-path"])
        .arg(pin)
        .status()
        .expect("run dslite");
    assert!(status.success());
}

fn main() -> anyhow::Result<()> {
    section("Topology");
    println!(
        "  hostA 192.168.1.10 -- B4a 2001:db8:a::2 --+\n  \
         hostB 192.168.1.10 -- B4b 2001:db8:b::2 --+-- IPv6-only router -- AFTR {AFTR_ADDR} -- server {SERVER1}\n  \
         (pool {POOL}; every namespace is removed when the demo ends)"
    );
    println!("\nbuilding namespaces and starting dslite aftr + 3 x dslite b4 ...");
    let t = DsLite::start(&[])?;

    section("ping from both hosts (same private address, same ICMP id)");
    for (name, c) in [("hostA", &t.a), ("hostB", &t.b)] {
        let n = ping(&c.host, SERVER1, 0x0d5e, 3)?;
        println!("  {name} -> {SERVER1}: {n}/3 replies");
    }

    section("HTTP download of 8 MiB by both hosts at once");
    let _http = http_server(&t.server, SocketAddrV4::new(SERVER1, 80));
    let ja = http_get(&t.a.host, SocketAddrV4::new(SERVER1, 80));
    let jb = http_get(&t.b.host, SocketAddrV4::new(SERVER1, 80));
    for (name, j) in [("hostA", ja), ("hostB", jb)] {
        let (n, secs) = j.join().expect("client thread")?;
        println!(
            "  {name}: {n} bytes verified in {secs:.2} s ({:.0} Mbit/s)",
            n as f64 * 8.0 / secs / 1e6
        );
    }

    section("native IPv6 from hostA (left to the kernel, counted apart)");
    let v6: std::net::SocketAddr = "[2001:db8:f::1]:9000".parse()?;
    let _echo = tcp_echo_server(&t.router, v6);
    let n = tcp_transfer(&t.a.host, v6, 2 * 1024 * 1024)
        .join()
        .expect("thread")?;
    println!("  hostA <-> {v6}: {n} bytes echoed over native IPv6");

    section("AFTR NAT mappings: dslite sessions");
    show("sessions", &t.aftr.pin_path);

    section("B4a counters: softwire vs native IPv6");
    let s = t.b4a.stats()?;
    let get = |k: &str| s[k].as_u64().unwrap_or(0);
    let sw = get("b4_encap_bytes") + get("b4_decap_bytes");
    let native = get("native_v6_out_bytes") + get("native_v6_in_bytes");
    println!("  softwire (IPv4-in-IPv6) bytes: {sw:>12}");
    println!("  native IPv6 bytes:             {native:>12}");
    println!(
        "  IPv4 share of this customer's traffic: {:.1}%",
        100.0 * sw as f64 / (sw + native).max(1) as f64
    );

    section("AFTR counters: dslite stats");
    show("stats", &t.aftr.pin_path);

    println!("\nstopping controllers and deleting namespaces ...");
    drop(t);
    println!("done.");
    Ok(())
}
