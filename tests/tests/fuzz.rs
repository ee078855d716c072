//! The dataplane fuzzer: thousands of random and mutated frames through both XDP programs
//! with BPF_PROG_TEST_RUN, each one judged on its own:
//!
//! - never XDP_ABORTED, never an unknown verdict, every drop and every pass counted;
//! - every frame the program built or changed (XDP_TX, XDP_REDIRECT, a changed XDP_PASS) is
//!   well-formed (`dslite_tests::wellformed`): Ethernet + IPv4 or IPv6, lengths consistent,
//!   every checksum right, or wrong exactly as it came in (RFC 1624 updates carry an input's
//!   error through; they never make one), and a router's checks done (RFC 1812 §5.2.2: an
//!   IPv4 header with a bad checksum is not forwarded);
//! - addressed as its role allows: the AFTR sends IPv4 only from the pool and to no reserved
//!   or own address (RFC 1812 §5.3.7), and softwire packets only from its address to an
//!   allowed B4 that holds the mapping the packet is about, never with a reserved source
//!   from the internet; the B4 sends softwire packets only from its address to its AFTR; a
//!   slow-path hand-over is the input verbatim, or an encapsulated packet too big for its
//!   MTU;
//! - no state change from a dropped frame: the AFTR's NAT_OUT, NAT_IN, BLOCKS, SW_BLOCKS,
//!   SOFTWIRES and PEERS are compared, entry by entry, before and after every frame (STATS
//!   aside), and an invalid input leaves no mapping behind whatever the verdict; NAT_OUT and
//!   NAT_IN stay each other's inverse.
//!
//! Seeds are the fixtures' valid packets, plus replies, hairpins and ICMP errors built from
//! what the AFTR itself sent. Each seed is truncated at every length, then a seeded PRNG picks
//! mutations (`dslite_tests::fuzz`). The run is a function of the seed:
//!
//! - `DSLITE_FUZZ_SEED` (default below), `DSLITE_FUZZ_ITERATIONS` (random frames per
//!   program; the defaults keep CI under half a minute);
//! - `DSLITE_FUZZ_FRAME=IFACE:HEX` runs the seeds, then that one frame, and judges it;
//! - `DSLITE_FUZZ_STRICT=1` fails on the known defects listed in [`KNOWN`] too.
//!
//! `cargo xtask fuzz --seed S --iterations N --frame IFACE:HEX --strict` sets them. A failure
//! prints the seed, the iteration and the frame in hex, and the command that replays it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use dslite_common::{
    counters::CounterKind,
    maps::{NatInKey, NatInValue, NatOutKey, NatOutValue},
    slow::{
        SlowMeta, SLOW_ENCAP_FRAGMENT, SLOW_ICMP_REFUSAL, SLOW_META_LEN, SLOW_TTL_EXPIRED,
        SLOW_V4_FRAGMENT,
    },
    Counter,
};
use dslite_tests::{
    fixture::*,
    fuzz::{self, Rng},
    mapdump::{Dumper, Raw, Snapshot},
    packets::{self, eth, softwire, tel_destopts, udp4},
    wellformed::{check_frame, hex, Fault, Kind, Report},
};

const DEFAULT_SEED: u64 = 0x6473_6c69_7465_0001;
/// Random frames per program in CI (B4, AFTR): about 5 s and 20 s on the 2-core build
/// machines. The AFTR's cost more: six state maps are compared around each one.
const DEFAULT_ITERATIONS: [usize; 2] = [200_000, 50_000];
/// Kinds of unexpected finding after which a run stops (the report stays readable).
const MAX_FINDINGS: usize = 16;

use dslite_common::proto::AFTR_V4;
/// The AFTR rig's address on its internet side.
const AFTR_OWN_V4: [u8; 4] = [203, 0, 113, 1];

const STATE_MAPS: &[&str] = &[
    "NAT_OUT",
    "NAT_IN",
    "BLOCKS",
    "SW_BLOCKS",
    "SOFTWIRES",
    "PEERS",
];

/// Addresses no packet between a subscriber and the internet may carry (RFC 1812 §5.3.7):
/// "this network" 0/8, loopback 127/8, multicast and reserved 224/4 and 240/4 (with the
/// limited broadcast), and 192.0.0.0/24, whose 192.0.0.0/29 names the two ends of every
/// softwire (RFC 6333 §5.7; RFC 6890: not global).
fn martian(a: [u8; 4]) -> bool {
    a[0] == 0 || a[0] == 127 || a[0] >= 224 || a[..3] == [192, 0, 0]
}

struct Opts {
    seed: u64,
    /// `None`: the default for each program.
    iterations: Option<usize>,
    strict: bool,
    frame: Option<(String, Vec<u8>)>,
}

fn opts() -> Opts {
    let num = |k: &str| {
        std::env::var(k).ok().map(|v| {
            let v = v.trim();
            v.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|| v.parse())
                .unwrap_or_else(|e| panic!("{k}={v}: {e}"))
        })
    };
    let frame = std::env::var("DSLITE_FUZZ_FRAME").ok().map(|v| {
        let (iface, h) = v.split_once(':').expect("DSLITE_FUZZ_FRAME=IFACE:HEX");
        let h = h.trim();
        assert!(
            h.len() % 2 == 0,
            "DSLITE_FUZZ_FRAME: an odd number of hex digits"
        );
        let bytes = (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        (iface.to_string(), bytes)
    });
    Opts {
        seed: num("DSLITE_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
        iterations: num("DSLITE_FUZZ_ITERATIONS").map(|n| n as usize),
        strict: std::env::var_os("DSLITE_FUZZ_STRICT").is_some_and(|v| v != "0"),
        frame,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    B4 = 0,
    Aftr = 1,
}

/// What is wrong with one frame's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Aborted,
    RunFailed,
    Verdict,
    /// A drop or pass that no counter records.
    Uncounted,
    /// A fault in an output frame that the input did not have.
    Malformed,
    /// An output IPv4 packet whose header checksum was already wrong in the input.
    ForwardedBadHeaderChecksum,
    /// An output made from an input whose IPv6 header chain is invalid.
    ForwardedInvalidIpv6,
    /// Bytes after the packet in an output frame (beyond a short frame's padding).
    Trailing,
    SlowHandover,
    /// Source, destination or next hop outside what the role may send.
    Addresses,
    /// A softwire packet to a B4 that holds no mapping it is about.
    NotConcerned,
    /// A subscriber's packet to an address that is not for it (see [`martian`]), or to
    /// the AFTR's own.
    MartianDestination,
    /// A packet from the internet with a source no internet host may use.
    MartianSource,
    StateChangedOnDrop,
    MappingFromInvalidInput,
    MappingFromBadChecksum,
    /// NAT_OUT and NAT_IN no longer each other's inverse.
    Inconsistent,
}

#[derive(Clone, Debug)]
struct Problem {
    class: Class,
    /// The input's faults this is about (a mapping made, or a frame forwarded, from them).
    kinds: Vec<Kind>,
    detail: String,
}

fn problem(class: Class, detail: impl Into<String>) -> Problem {
    Problem {
        class,
        kinds: vec![],
        detail: detail.into(),
    }
}

/// A defect of the dataplane that this fuzzer found and that is not fixed yet: matched
/// findings are reported, not failed on (unless `DSLITE_FUZZ_STRICT`). Remove an entry once
/// the kernel is fixed; the run says when an entry matched nothing.
struct Known {
    id: &'static str,
    role: Role,
    why: &'static str,
    matches: fn(&Problem, &Finding) -> bool,
}

const KNOWN: &[Known] = &[
    Known {
        id: "state-changed-before-drop",
        role: Role::Aftr,
        why: "aftr::from_b4 creates or refreshes the mapping (lookup_or_create: NAT_OUT, \
              NAT_IN, a block in BLOCKS/SW_BLOCKS, the SOFTWIRES session count) and records the \
              peer (note_peer: PEERS) before the packet's fate is known, then drops it: \
              hairpin_inner when nobody holds the destination endpoint (drop_no_mapping), \
              redirect_v4 when there is no route (drop_fib_unreachable) or the route's MTU is \
              smaller than the frame and DF is set (drop_v4_too_big). A subscriber can fill \
              its quota, the pool's blocks and PEERS with mappings for packets that never left. \
              (A hairpinned packet that the receiving mapping filters, drop_filtered, leaves \
              the sender's mapping as any NAT would: it did cross the NAT outbound.)",
        matches: state_before_drop,
    },
    Known {
        id: "ipv4-header-checksum-unchecked",
        role: Role::Aftr,
        why: IPV4_HEADER_CHECKSUM,
        matches: header_checksum,
    },
    Known {
        id: "ipv4-header-checksum-unchecked",
        role: Role::B4,
        why: IPV4_HEADER_CHECKSUM,
        matches: header_checksum,
    },
    Known {
        id: "trailing-bytes-forwarded",
        role: Role::Aftr,
        why: TRAILING,
        matches: trailing,
    },
    Known {
        id: "trailing-bytes-forwarded",
        role: Role::B4,
        why: TRAILING,
        matches: trailing,
    },
    Known {
        id: "mapping-from-bad-l4-checksum",
        role: Role::Aftr,
        why: "A first packet whose TCP, UDP or ICMP checksum is wrong makes a mapping: the \
              NAT never verifies upper-layer checksums (its updates carry the error to the \
              receiver, which drops the packet). Linux conntrack, with its default \
              nf_conntrack_checksum=1, calls such packets invalid and makes no entry; checking \
              only when a mapping is created costs one checksum per new mapping.",
        matches: |p, _| p.class == Class::MappingFromBadChecksum,
    },
];

const IPV4_HEADER_CHECKSUM: &str = "parse::ipv4 checks version, IHL and total length, not \
    the header checksum (RFC 1812 §5.2.2: a router verifies it; Linux drops such packets in \
    ip_rcv_core); decrement_ttl's incremental update carries the error on. Corrupted headers \
    are forwarded, and on the AFTR they make mappings.";

const TRAILING: &str = "No frame is trimmed to its packet: bytes after the IPv4 total length \
    (or the IPv6 payload) travel on through decapsulation and encapsulation, count in the \
    FIB's MTU check (fib_params uses the frame length) and can send a small packet to the \
    slow path to be fragmented (a 60-byte packet in a 1554-byte frame). Cutting the tail to \
    the packet (bpf_xdp_adjust_tail) when the frame is longer costs normal frames nothing.";

fn state_before_drop(p: &Problem, f: &Finding) -> bool {
    p.class == Class::StateChangedOnDrop
        && f.counters.iter().any(|(n, _)| {
            [
                "drop_no_mapping",
                "drop_fib_unreachable",
                "drop_v4_too_big",
                "drop_filtered",
            ]
            .contains(n)
        })
}

fn header_checksum(p: &Problem, _: &Finding) -> bool {
    p.class == Class::ForwardedBadHeaderChecksum
        || (p.class == Class::MappingFromInvalidInput && p.kinds.contains(&Kind::Ipv4Checksum))
}

fn trailing(p: &Problem, _: &Finding) -> bool {
    p.class == Class::Trailing
}

/// One judged frame with something wrong.
#[derive(Clone)]
struct Finding {
    program: &'static str,
    seed: u64,
    /// Iteration of the random phase, or the seed phase's label.
    at: String,
    how: String,
    iface: String,
    input: Vec<u8>,
    verdict: u32,
    output: Vec<u8>,
    counters: Vec<(&'static str, u64)>,
    problems: Vec<Problem>,
}

impl Finding {
    fn show(&self, problems: &[Problem]) -> String {
        let verdict = [
            "XDP_ABORTED",
            "XDP_DROP",
            "XDP_PASS",
            "XDP_TX",
            "XDP_REDIRECT",
        ]
        .get(self.verdict as usize)
        .map_or_else(|| format!("verdict {}", self.verdict), |v| v.to_string());
        let counters: Vec<String> = self
            .counters
            .iter()
            .map(|(n, d)| format!("{n} +{d}"))
            .collect();
        let mut s = format!(
            "[{} seed {:#x} {}] {}\n  ingress {}, {verdict}, counters: {}\n",
            self.program,
            self.seed,
            self.at,
            self.how,
            self.iface,
            counters.join(", ")
        );
        for p in problems {
            s += &format!("  {:?}: {}\n", p.class, p.detail);
        }
        s += &format!("  frame:  {}\n", hex(&self.input));
        if !self.output.is_empty() && self.output != self.input {
            s += &format!("  output: {}\n", hex(&self.output));
        }
        if !self.input.is_empty() {
            s += &format!(
                "  replay: DSLITE_FUZZ_FRAME={}:{} (after the seeds)\n",
                self.iface,
                hex(&self.input)
            );
        }
        let program = self.program.trim_start_matches("dslite_");
        match self
            .at
            .strip_prefix("iteration ")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => {
                s += &format!(
                    "  or the run up to it: cargo xtask fuzz --program {program} --seed {:#x} \
                     --iterations {}\n",
                    self.seed,
                    i + 1
                )
            }
            None => {
                s += &format!(
                    "  or the seeds alone: cargo xtask fuzz --program {program} --iterations 0\n"
                )
            }
        }
        s
    }
}

/// A frame to start from.
struct Seed {
    iface: &'static str,
    what: &'static str,
    frame: Vec<u8>,
}

fn bytes_of<T: Copy>(t: &T) -> Vec<u8> {
    // SAFETY: the map layouts are repr(C) with explicit padding fields: every byte is
    // initialised.
    unsafe { std::slice::from_raw_parts(t as *const T as *const u8, std::mem::size_of::<T>()) }
        .to_vec()
}

fn from_bytes<T: Copy>(b: &[u8]) -> T {
    assert_eq!(
        b.len(),
        std::mem::size_of::<T>(),
        "map layout changed: update the fuzzer's decoding"
    );
    // SAFETY: length checked; the layouts are plain integers and byte arrays.
    unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) }
}

struct Campaign<'a> {
    rig: &'a Rig,
    role: Role,
    program: &'static str,
    seed: u64,
    rng: Rng,
    ifaces: &'static [&'static str],
    macs: BTreeMap<&'static str, [u8; 6]>,
    stats: Dumper,
    state: Vec<Dumper>,
    last_stats: Vec<u64>,
    last_state: Vec<Raw>,
    /// IPv4 packets the AFTR sent to the internet, and inner packets it sent down
    /// softwires (with the B4): material for replies, hairpins and ICMP errors.
    sent: Vec<Vec<u8>>,
    delivered: Vec<([u8; 16], Vec<u8>)>,
    frames: u64,
    /// Time spent taking snapshots, and judging.
    spent: [std::time::Duration; 2],
    verdicts: [u64; 5],
    /// New problems by signature: how many frames, and the first.
    findings: BTreeMap<String, (u64, Finding)>,
    known: BTreeMap<&'static str, (u64, Finding)>,
    strict: bool,
}

impl<'a> Campaign<'a> {
    fn new(rig: &'a Rig, role: Role, ifaces: &'static [&'static str], o: &Opts) -> Self {
        let stats = Dumper::open(&rig.pin.join("STATS")).unwrap();
        let state: Vec<Dumper> = match role {
            Role::Aftr => STATE_MAPS
                .iter()
                .map(|m| Dumper::open(&rig.pin.join(m)).unwrap_or_else(|e| panic!("{m}: {e}")))
                .collect(),
            Role::B4 => vec![],
        };
        let macs = ifaces.iter().map(|i| (*i, rig.mac(i))).collect();
        let mut c = Campaign {
            rig,
            role,
            program: rig.prog(),
            seed: o.seed,
            rng: Rng::new(o.seed),
            ifaces,
            macs,
            stats,
            state,
            last_stats: vec![],
            last_state: vec![],
            sent: vec![],
            delivered: vec![],
            frames: 0,
            spent: Default::default(),
            verdicts: [0; 5],
            findings: BTreeMap::new(),
            known: BTreeMap::new(),
            strict: o.strict,
        };
        c.last_stats = c.read_stats();
        c.last_state = c.read_state();
        c
    }

    fn read_stats(&mut self) -> Vec<u64> {
        let snap = self.stats.snapshot().unwrap();
        let mut v = vec![0u64; Counter::COUNT as usize];
        for (k, val) in snap {
            let i = u32::from_ne_bytes(k[..4].try_into().unwrap()) as usize;
            if i < v.len() {
                v[i] = val
                    .chunks(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                    .sum();
            }
        }
        v
    }

    fn read_state(&mut self) -> Vec<Raw> {
        self.state.iter_mut().map(|d| d.raw().unwrap()).collect()
    }

    fn eth_to(&self, iface: &str, src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        eth(self.macs[iface], src, ethertype, payload)
    }

    fn run_frame(&self, iface: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        self.rig
            .run_prog(self.program, iface, frame)
            .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))
    }

    /// Run one frame and judge what came out.
    fn frame(&mut self, at: String, how: String, iface: &'static str, input: Vec<u8>) {
        let (verdict, output, problems) = match self.run_frame(iface, &input) {
            Ok((v, out)) => (v, out, vec![]),
            // tc's BPF_PROG_TEST_RUN refuses these before the program runs
            // (`Rig::run_unless_refused`): nothing to judge.
            Err(_) if self.rig.hook == Hook::Tc && short_network_header(&input) => return,
            Err(e) => (u32::MAX, vec![], vec![problem(Class::RunFailed, e)]),
        };
        self.frames += 1;
        if let Some(n) = self.verdicts.get_mut(verdict as usize) {
            *n += 1;
        }
        let stats = self.read_stats();
        let counters: Vec<(&'static str, u64)> = stats
            .iter()
            .zip(&self.last_stats)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (Counter::from_index(i as u32).name(), a.wrapping_sub(*b)))
            .collect();
        let t = Instant::now();
        let state = self.read_state();
        self.spent[0] += t.elapsed();
        let mut f = Finding {
            program: self.program,
            seed: self.seed,
            at,
            how,
            iface: iface.to_string(),
            input,
            verdict,
            output,
            counters,
            problems,
        };
        let t = Instant::now();
        if f.problems.is_empty() {
            f.problems = self.judge(&f, &state);
        }
        self.spent[1] += t.elapsed();
        if f.problems.is_empty() && (verdict == XDP_REDIRECT || verdict == XDP_TX) {
            self.remember(&f.output);
        }
        self.last_stats = stats;
        self.last_state = state;
        if !f.problems.is_empty() {
            self.file(f);
        }
    }

    /// Sort a finding's problems into known defects and new ones.
    fn file(&mut self, f: Finding) {
        for p in &f.problems {
            let one = Finding {
                problems: vec![p.clone()],
                ..f.clone()
            };
            let known = KNOWN
                .iter()
                .find(|k| k.role == self.role && (k.matches)(p, &f));
            let e = match known {
                Some(k) if !self.strict => self.known.entry(k.id).or_insert((0, one)),
                _ => self.findings.entry(signature(p, &f)).or_insert((0, one)),
            };
            e.0 += 1;
        }
    }

    fn judge(&self, f: &Finding, state: &[Raw]) -> Vec<Problem> {
        let mut p = vec![];
        let kind_moved = |k: CounterKind| {
            f.counters
                .iter()
                .any(|(n, _)| Counter::ALL.iter().any(|c| c.name() == *n && c.kind() == k))
        };
        match f.verdict {
            XDP_ABORTED => p.push(problem(Class::Aborted, "XDP_ABORTED")),
            XDP_DROP => {
                if !kind_moved(CounterKind::Drop) {
                    p.push(problem(
                        Class::Uncounted,
                        "a drop that no drop counter records",
                    ));
                }
                for (i, d) in self.state.iter().enumerate() {
                    if !self.last_state[i].same(&state[i]) {
                        let (a, b) = (self.last_state[i].entries(), state[i].entries());
                        p.push(problem(Class::StateChangedOnDrop, diff(&d.name, &a, &b)));
                    }
                }
            }
            XDP_PASS => {
                if !kind_moved(CounterKind::Pass) && !kind_moved(CounterKind::Traffic) {
                    p.push(problem(Class::Uncounted, "a pass that no counter records"));
                }
                if f.output != f.input {
                    self.check_output(f, state, &mut p);
                }
            }
            XDP_TX | XDP_REDIRECT => self.check_output(f, state, &mut p),
            v => p.push(problem(Class::Verdict, format!("verdict {v}"))),
        }
        if self.role == Role::Aftr {
            self.check_new_mappings(f, state, &mut p);
        }
        p
    }

    /// An invalid input must not leave a mapping behind, whatever became of it.
    fn check_new_mappings(&self, f: &Finding, state: &[Raw], p: &mut Vec<Problem>) {
        if state[0] == self.last_state[0] {
            return;
        }
        let input = check_frame(&f.input);
        let invalid: Vec<&Fault> = input
            .faults
            .iter()
            .filter(|x| {
                x.depth == 0
                    && matches!(
                        x.kind,
                        Kind::Ethernet
                            | Kind::Ipv4
                            | Kind::Ipv4Checksum
                            | Kind::Ipv6
                            | Kind::Ipv6Ext
                            | Kind::Tcp
                            | Kind::Udp
                            | Kind::Icmp
                    )
            })
            .collect();
        let bad_sum: Vec<&Fault> = input
            .faults
            .iter()
            .filter(|x| {
                x.depth == 0
                    && matches!(
                        x.kind,
                        Kind::TcpChecksum | Kind::UdpChecksum | Kind::IcmpChecksum
                    )
            })
            .collect();
        let (class, why) = if !invalid.is_empty() {
            (Class::MappingFromInvalidInput, invalid)
        } else if !bad_sum.is_empty() {
            (Class::MappingFromBadChecksum, bad_sum)
        } else {
            return;
        };
        // Only now, for the few invalid inputs: which keys are new (a refresh changes the
        // table too).
        let (before, after) = (self.last_state[0].entries(), state[0].entries());
        let keys: Vec<String> = after
            .keys()
            .filter(|k| !before.contains_key(*k))
            .map(|k| nat_out_key(k))
            .collect();
        if keys.is_empty() {
            return;
        }
        p.push(Problem {
            class,
            kinds: why.iter().map(|x| x.kind).collect(),
            detail: format!("{} from an input with {}", keys.join(", "), faults(&why)),
        });
    }

    fn check_output(&self, f: &Finding, state: &[Raw], p: &mut Vec<Problem>) {
        let out = &f.output;
        if let Some(m) = SlowMeta::parse(out) {
            self.check_handover(f, &m, state, p);
            return;
        }
        let ro = frame_problems(out, &f.input, p);
        if f.verdict != XDP_PASS
            && ![SERVER_MAC, ROUTER_MAC, HOST_MAC].contains(&out[..6].try_into().unwrap_or([0; 6]))
        {
            p.push(problem(
                Class::Addresses,
                format!(
                    "sent to MAC {}, not a neighbour's",
                    hex(&out[..6.min(out.len())])
                ),
            ));
        }
        self.addresses(&f.input, out, &ro, state, p);
    }

    fn addresses(
        &self,
        input: &[u8],
        out: &[u8],
        ro: &Report,
        state: &[Raw],
        p: &mut Vec<Problem>,
    ) {
        match self.role {
            Role::Aftr => {
                aftr_addresses(input, out, ro, &|k| state[0].contains_key(&bytes_of(k)), p)
            }
            Role::B4 => b4_addresses(ro, p),
        }
    }

    fn check_handover(&self, f: &Finding, m: &SlowMeta, state: &[Raw], p: &mut Vec<Problem>) {
        let rest = &f.output[SLOW_META_LEN..];
        if f.verdict != XDP_REDIRECT {
            p.push(problem(
                Class::SlowHandover,
                "slow-path meta without a redirect",
            ));
        }
        if m.ingress != self.rig.ifindex[f.iface.as_str()] {
            p.push(problem(
                Class::SlowHandover,
                format!("meta names ingress {}", m.ingress),
            ));
        }
        match m.reason {
            SLOW_V4_FRAGMENT | SLOW_TTL_EXPIRED => {
                if rest != f.input.as_slice() {
                    p.push(problem(
                        Class::SlowHandover,
                        format!("reason {}: the frame is not the input verbatim", m.reason),
                    ));
                }
            }
            SLOW_ENCAP_FRAGMENT => {
                let r = frame_problems(rest, &f.input, p);
                self.addresses(&f.input, rest, &r, state, p);
                let len = rest.len().saturating_sub(14);
                let v6len = r.ipv6.map_or(0, |v| v.payload_len as usize + 40);
                if len > v6len && m.mtu as usize >= v6len {
                    // Reported by `frame_problems` as trailing bytes: they made it too big.
                } else if m.mtu < 1280 || v6len <= m.mtu as usize || v6len > len {
                    p.push(problem(
                        Class::SlowHandover,
                        format!(
                            "handed over for fragmentation at MTU {} with an IPv6 packet of {v6len}",
                            m.mtu
                        ),
                    ));
                }
            }
            SLOW_ICMP_REFUSAL => {
                // tc: a packet the AFTR refuses with an ICMP error, handed over as it was
                // (TTL spent, if it got that far) for the slow path to answer.
                let kind_ok = matches!((m.icmp_type, m.icmp_code), (3, _) | (11, 0));
                let answerable =
                    dslite_user::slowpath::refusal_packet(rest, m.icmp_type, m.icmp_code, m.mtu)
                        .is_some();
                if self.role != Role::Aftr || !kind_ok || !answerable || rest.len() != f.input.len()
                {
                    p.push(problem(
                        Class::SlowHandover,
                        format!(
                            "refusal {}/{} of a frame the slow path cannot answer",
                            m.icmp_type, m.icmp_code
                        ),
                    ));
                }
            }
            r => p.push(problem(Class::SlowHandover, format!("reason {r}"))),
        }
    }

    /// Keep well-formed outputs to build replies and ICMP errors from.
    fn remember(&mut self, out: &[u8]) {
        if self.role != Role::Aftr || SlowMeta::parse(out).is_some() {
            return;
        }
        let l = fuzz::locate(out);
        let r = check_frame(out);
        if !r.ok() {
            return;
        }
        let keep = 64;
        match (l.ipv6, l.ipv4) {
            (None, Some(v4)) => {
                if self.sent.len() >= keep {
                    let i = self.rng.below(keep);
                    self.sent.remove(i);
                }
                self.sent.push(out[v4..].to_vec());
            }
            (Some(v6), Some(v4)) => {
                if self.delivered.len() >= keep {
                    let i = self.rng.below(keep);
                    self.delivered.remove(i);
                }
                let b4: [u8; 16] = out[v6 + 24..v6 + 40].try_into().unwrap();
                self.delivered.push((b4, out[v4..].to_vec()));
            }
            _ => {}
        }
    }

    /// NAT_OUT and NAT_IN are each other's inverse.
    fn check_consistency(&mut self, at: &str) {
        if self.role != Role::Aftr {
            return;
        }
        let (out, inn) = (&self.last_state[0].entries(), &self.last_state[1].entries());
        let mut bad = vec![];
        for (k, v) in out {
            let key: NatOutKey = from_bytes(k);
            let val: NatOutValue = from_bytes(v);
            let kin = key.inbound_key(val.outside_addr, val.outside_port);
            match inn.get(&bytes_of(&kin)) {
                Some(b) if from_bytes::<NatInValue>(b) == key.inbound_value() => {}
                _ => bad.push(format!("{} has no matching NAT_IN", nat_out_key(k))),
            }
        }
        for (k, v) in inn {
            let kin: NatInKey = from_bytes(k);
            let back: NatInValue = from_bytes(v);
            let key = NatOutKey {
                b4: back.b4,
                inside_addr: back.inside_addr,
                inside_port: back.inside_port,
                proto: kin.proto,
                _pad: 0,
            };
            match out.get(&bytes_of(&key)) {
                Some(o) => {
                    let o: NatOutValue = from_bytes(o);
                    if (o.outside_addr, o.outside_port) != (kin.outside_addr, kin.outside_port) {
                        bad.push(format!("NAT_IN {} points at a mapping elsewhere", hex(k)));
                    }
                }
                None => bad.push(format!("NAT_IN {} has no NAT_OUT", hex(k))),
            }
        }
        if !bad.is_empty() {
            bad.truncate(4);
            let f = Finding {
                program: self.program,
                seed: self.seed,
                at: at.to_string(),
                how: "state check".into(),
                iface: "-".into(),
                input: vec![],
                verdict: 0,
                output: vec![],
                counters: vec![],
                problems: vec![problem(Class::Inconsistent, bad.join("; "))],
            };
            self.file(f);
        }
    }

    fn done(&self) -> bool {
        self.findings.len() >= MAX_FINDINGS
    }

    /// Print the summary; fail on anything not known.
    /// `full`: a whole run, after which a known defect that never showed up is worth a note.
    fn finish(self, started: Instant, full: bool) {
        println!(
            "{}: seed {:#x}, {} frames in {:.1} s (state snapshots {:.1} s, judging {:.1} s); \
             verdicts: drop {}, pass {}, tx {}, redirect {}",
            self.program,
            self.seed,
            self.frames,
            started.elapsed().as_secs_f64(),
            self.spent[0].as_secs_f64(),
            self.spent[1].as_secs_f64(),
            self.verdicts[1],
            self.verdicts[2],
            self.verdicts[3],
            self.verdicts[4],
        );
        let interesting = [
            "nat_mapping_created",
            "aftr_out_packets",
            "aftr_in_packets",
            "hairpin_packets",
            "icmp_error_translated",
            "icmp_error_sent",
            "icmp_echo_answered",
            "b4_encap_packets",
            "b4_decap_packets",
            "slow_v4_fragment",
            "slow_encap_fragment",
            "mss_clamped",
        ];
        let c: Vec<String> = Counter::ALL
            .iter()
            .filter(|c| interesting.contains(&c.name()) && self.last_stats[**c as usize] > 0)
            .map(|c| format!("{} {}", c.name(), self.last_stats[*c as usize]))
            .collect();
        println!("  reached: {}", c.join(", "));
        for k in KNOWN.iter().filter(|k| k.role == self.role) {
            match self.known.get(k.id) {
                Some((n, f)) => println!(
                    "  KNOWN DEFECT {} ({n} frames): {}\n  first case:\n{}",
                    k.id,
                    k.why,
                    f.show(&f.problems)
                ),
                None if full && !self.strict => println!(
                    "  known defect {} not seen in this run: fixed? Then remove it from KNOWN.",
                    k.id
                ),
                None => {}
            }
        }
        if !self.findings.is_empty() {
            let all: Vec<String> = self
                .findings
                .iter()
                .map(|(sig, (n, f))| {
                    format!("{sig}: {n} frame(s), the first:\n{}", f.show(&f.problems))
                })
                .collect();
            panic!(
                "{} kind(s) of problem:\n{}",
                self.findings.len(),
                all.join("\n")
            );
        }
    }
}

/// What kind of problem this is, to count frames with the same one once: the class, the
/// counters that say why the frame was dropped or passed, the faults or maps involved.
fn signature(p: &Problem, f: &Finding) -> String {
    let why: Vec<&str> = f
        .counters
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| n.starts_with("drop_") || n.starts_with("pass_"))
        .collect();
    let what = match p.class {
        Class::StateChangedOnDrop => p.detail.split(':').next().unwrap_or("").to_string(),
        Class::Malformed => p
            .detail
            .split("; ")
            .map(|x| x.split(':').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(","),
        _ => format!("{:?}", p.kinds),
    };
    format!("{:?} [{}] {what}", p.class, why.join(","))
}

/// What the B4 may send over IPv6: softwire packets from its address to its AFTR.
fn b4_addresses(ro: &Report, p: &mut Vec<Problem>) {
    if let Some(v6) = ro.ipv6 {
        if v6.src != b4a().octets() || v6.dst != aftr().octets() || v6.upper != 4 {
            p.push(problem(
                Class::Addresses,
                format!(
                    "IPv6 {} -> {} (next header {}) from the B4",
                    Ipv6Addr::from(v6.src),
                    Ipv6Addr::from(v6.dst),
                    v6.upper
                ),
            ));
        }
    }
}

/// What the AFTR may send: IPv4 only from the pool; softwire packets only from its address
/// to an allowed B4, its own answers (from 192.0.0.1) only to the B4 that sent the packet,
/// anything else only to a B4 holding the mapping the packet is about.
fn aftr_addresses(
    input: &[u8],
    out: &[u8],
    ro: &Report,
    has_mapping: &dyn Fn(&NatOutKey) -> bool,
    p: &mut Vec<Problem>,
) {
    let pool = |a: [u8; 4]| a[..3] == [198, 51, 100] && a[3] < 4;
    if let (None, Some(v4)) = (ro.ipv6, ro.ipv4) {
        if !pool(v4.src) {
            p.push(problem(
                Class::Addresses,
                format!("IPv4 from {} toward the internet", Ipv4Addr::from(v4.src)),
            ));
        }
        if martian(v4.dst) || v4.dst == AFTR_OWN_V4 {
            p.push(problem(
                Class::MartianDestination,
                format!(
                    "a subscriber's packet to {} sent on",
                    Ipv4Addr::from(v4.dst)
                ),
            ));
        }
        return;
    }
    let Some(v6) = ro.ipv6 else { return };
    let allowed = v6.dst[..8] == b4a().octets()[..8];
    if v6.src != aftr().octets() || !allowed || v6.upper != 4 {
        p.push(problem(
            Class::Addresses,
            format!(
                "IPv6 {} -> {} (next header {}) from the AFTR",
                Ipv6Addr::from(v6.src),
                Ipv6Addr::from(v6.dst),
                v6.upper
            ),
        ));
        return;
    }
    let Some(inner) = ro.ipv4 else { return };
    let from_b4 = fuzz::locate(input)
        .ipv6
        .map(|o| input[o + 8..o + 24].to_vec());
    if inner.src == AFTR_V4 && from_b4.is_some() {
        // The AFTR's own answer (echo reply, refusal, time exceeded) goes back to
        // the softwire the packet came from.
        if from_b4.as_deref() != Some(&v6.dst[..]) {
            p.push(problem(
                Class::NotConcerned,
                format!(
                    "answer from 192.0.0.1 to {}, which did not send the packet",
                    Ipv6Addr::from(v6.dst)
                ),
            ));
        }
        return;
    }
    if from_b4.is_none() && martian(inner.src) {
        p.push(problem(
            Class::MartianSource,
            format!(
                "a packet from {} off the internet sent down a softwire",
                Ipv4Addr::from(inner.src)
            ),
        ));
    }
    // Anything else is about one of the B4's mappings: the inside endpoint the packet
    // goes to (TCP/UDP destination, echo reply identifier), or the one the ICMP error
    // quotes as its source.
    let Some(key) = about(out, v6.dst) else {
        p.push(problem(
            Class::NotConcerned,
            "a softwire packet that names no inside endpoint",
        ));
        return;
    };
    if !has_mapping(&key) {
        p.push(problem(
            Class::NotConcerned,
            format!(
                "sent to {}, which holds no mapping {}",
                Ipv6Addr::from(v6.dst),
                nat_out_key(&bytes_of(&key))
            ),
        ));
    }
}

/// The faults of `out`, a frame a program built or changed from `input`, that are its own:
/// those the input did not have, those a program must have checked before forwarding (the
/// IPv4 header checksum, the IPv6 header chain), and bytes sent on after the packet. Returns
/// `out`'s report.
fn frame_problems(out: &[u8], input: &[u8], p: &mut Vec<Problem>) -> Report {
    let ro = check_frame(out);
    let ri = check_frame(input);
    let mut new = vec![];
    for x in &ro.faults {
        let preserved = ri
            .faults
            .iter()
            .any(|y| y.kind == x.kind && y.detail == x.detail);
        // What a program checks before it forwards can never come out "preserved".
        let must_hold = x.depth == 0
            && matches!(
                x.kind,
                Kind::Ethernet | Kind::Ipv4 | Kind::Ipv6 | Kind::Ipv6Ext | Kind::Trailing
            );
        if !preserved || must_hold {
            new.push(x);
        } else if x.depth == 0 && x.kind == Kind::Ipv4Checksum {
            // RFC 1812 §5.2.2: a router verifies the header checksum before forwarding.
            p.push(problem(
                Class::ForwardedBadHeaderChecksum,
                format!("forwarded with the input's {x}"),
            ));
        }
        // Other faults carried through as they came are the receiver's to judge: a router
        // checks neither upper layers nor the syntax of options it does not process
        // (RFC 1812 §5.2.2 lists what it must check).
    }
    if !new.is_empty() {
        p.push(problem(Class::Malformed, faults(&new)));
    }
    // An outer IPv6 header that breaks RFC 8200 §4 (hop-by-hop options after another
    // header, a chain past the payload) makes the packet invalid; it is not decapsulated.
    let bad6: Vec<&Fault> = ri
        .faults
        .iter()
        .filter(|x| x.depth == 0 && matches!(x.kind, Kind::Ipv6 | Kind::Ipv6Ext))
        .collect();
    if !bad6.is_empty() {
        p.push(Problem {
            class: Class::ForwardedInvalidIpv6,
            kinds: bad6.iter().map(|x| x.kind).collect(),
            detail: format!("forwarded from an input with {}", faults(&bad6)),
        });
    }
    // Padding that made a short frame 60 bytes may travel with it; anything else after the
    // packet is the input's junk, sent on and counted into the route's MTU.
    if let Some(end) = ro.packet_end {
        if out.len() > end && input.len() > 60 {
            p.push(problem(
                Class::Trailing,
                format!(
                    "a packet of {} bytes sent in a frame of {} (the input's {} bytes after its packet)",
                    end - 14,
                    out.len() - 14,
                    out.len() - end
                ),
            ));
        }
    }
    ro
}

fn faults(f: &[&Fault]) -> String {
    f.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn nat_out_key(k: &[u8]) -> String {
    if k.len() != std::mem::size_of::<NatOutKey>() {
        return hex(k);
    }
    let k: NatOutKey = from_bytes(k);
    format!(
        "mapping [{}]:{}:{}/{}",
        Ipv6Addr::from(k.b4),
        Ipv4Addr::from(k.inside_addr),
        u16::from_be_bytes(k.inside_port.to_ne_bytes()),
        k.proto
    )
}

/// What changed in a map, entry by entry (at most a few shown).
fn diff(name: &str, a: &Snapshot, b: &Snapshot) -> String {
    let added: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let removed: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let changed: Vec<_> = b
        .iter()
        .filter(|(k, v)| a.get(*k).is_some_and(|w| w != *v))
        .collect();
    let mut s = format!(
        "{name}: {} added, {} removed, {} changed",
        added.len(),
        removed.len(),
        changed.len()
    );
    let show = |k: &[u8]| {
        if name == "NAT_OUT" {
            nat_out_key(k)
        } else {
            hex(k)
        }
    };
    for k in added.iter().take(2) {
        s += &format!("; + {}", show(k));
    }
    for k in removed.iter().take(2) {
        s += &format!("; - {}", show(k));
    }
    for (k, v) in changed.iter().take(2) {
        s += &format!("; {} {} -> {}", show(k), hex(&a[*k]), hex(v));
    }
    s
}

/// The NAT_OUT key a softwire packet from the AFTR to `b4` is about.
fn about(frame: &[u8], b4: [u8; 16]) -> Option<NatOutKey> {
    let l = fuzz::locate(frame);
    let (v4, l4) = (l.ipv4?, l.l4?);
    let ip = &frame[v4..];
    let t = &frame[l4..];
    let word = |b: &[u8], at: usize| Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]));
    let key = |addr: &[u8], port: u16, proto: u8| NatOutKey {
        b4,
        inside_addr: addr.try_into().unwrap(),
        inside_port: port,
        proto,
        _pad: 0,
    };
    match l.proto {
        6 | 17 => Some(key(&ip[16..20], word(t, 2)?, l.proto)),
        1 if t.first() == Some(&0) => Some(key(&ip[16..20], word(t, 4)?, 1)),
        1 if matches!(t.first(), Some(3 | 11 | 12)) => {
            let q = t.get(8..)?;
            let qhl = (q.first()? & 0x0f) as usize * 4;
            let (qproto, qaddr) = (*q.get(9)?, q.get(12..16)?);
            let ql4 = q.get(qhl..)?;
            let port = match qproto {
                1 => word(ql4, 4)?,
                _ => word(ql4, 0)?,
            };
            Some(key(qaddr, port, qproto))
        }
        _ => None,
    }
}

// ---- seeds ---------------------------------------------------------------------------

fn aftr_seeds(c: &Campaign) -> Vec<Seed> {
    let tun = |ip: &[u8], src: Ipv6Addr, exts: &[(u8, Vec<u8>)]| {
        c.eth_to("tun", ROUTER_MAC, 0x86dd, &softwire(src, aftr(), ip, exts))
    };
    let inet = |ip: &[u8]| c.eth_to("inet", SERVER_MAC, 0x0800, ip);
    let other: Ipv6Addr = "2001:db8:a::99".parse().unwrap();
    let stranger: Ipv6Addr = "2001:db8:c::2".parse().unwrap();
    let udp = udp4(HOST, SERVER, 5000, 7777, 64, b"hello");
    let mut zero = udp4(HOST, SERVER, 5002, 7777, 64, b"no checksum");
    zero[26..28].copy_from_slice(&[0, 0]);
    let tcp_syn = packets::tcp4_syn_mss(HOST, SERVER, 40000, 80, 64, 1460);
    let tcp_data = {
        let b = etherparse::PacketBuilder::ipv4(HOST.octets(), SERVER.octets(), 64)
            .tcp(40001, 443, 77, 1000)
            .ack(1)
            .psh();
        let mut v = vec![];
        b.write(&mut v, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        v
    };
    let ping = packets::icmp4_echo(HOST, SERVER, 0x1234, 1, 64, false);
    let ping_aftr = packets::icmp4_echo(HOST, Ipv4Addr::new(192, 0, 0, 1), 0x77, 3, 64, false);
    let dying = udp4(HOST, SERVER, 5001, 33434, 1, b"trace");
    let mut big_df = udp4(HOST, SERVER, 5003, 7777, 64, &[5u8; 1452]);
    packets::set_df(&mut big_df, true);
    let big = udp4(HOST, SERVER, 5004, 7777, 64, &[6u8; 1380]);
    let frags = packets::fragment_v4(&udp4(HOST, SERVER, 5005, 7777, 64, &[7u8; 600]), 256);
    let mut opts = vec![0x46];
    opts.extend_from_slice(&udp[1..20]);
    opts.extend_from_slice(&[148, 4, 0, 0]); // router alert
    opts.extend_from_slice(&udp[20..]);
    let n = opts.len() as u16;
    opts[2..4].copy_from_slice(&n.to_be_bytes());
    dslite_common::csum::set_ipv4_header_checksum(&mut opts);
    let hbh = vec![0, 0, 1, 4, 0, 0, 0, 0];
    let pool1 = Ipv4Addr::new(198, 51, 100, 1);
    let in_frags = packets::fragment_v4(&udp4(SERVER, pool1, 7777, 1024, 64, &[8u8; 600]), 256);
    let v6frag = packets::fragment_v6(b4a(), aftr(), 4, &big, 1232, 9)[0].clone();
    let s = |iface, what, frame| Seed { iface, what, frame };
    vec![
        s("tun", "UDP", tun(&udp, b4a(), &[])),
        s("tun", "UDP from another B4", tun(&udp, other, &[])),
        s("tun", "UDP without checksum", tun(&zero, b4a(), &[])),
        s("tun", "TCP SYN with MSS", tun(&tcp_syn, b4a(), &[])),
        s("tun", "TCP data", tun(&tcp_data, other, &[])),
        s("tun", "ping", tun(&ping, b4a(), &[])),
        s(
            "tun",
            "ping 192.0.0.1",
            tun(&ping_aftr, b4a(), &[(60, tel_destopts(4))]),
        ),
        s("tun", "TTL 1", tun(&dying, b4a(), &[])),
        s(
            "tun",
            "DF, too big for the internet",
            tun(&big_df, b4a(), &[]),
        ),
        s("tun", "large UDP", tun(&big, b4a(), &[])),
        s(
            "tun",
            "UDP with a TEL option",
            tun(&udp, b4a(), &[(60, tel_destopts(4))]),
        ),
        s("tun", "UDP with hop-by-hop", tun(&udp, other, &[(0, hbh)])),
        s("tun", "UDP with IPv4 options", tun(&opts, b4a(), &[])),
        s("tun", "first IPv4 fragment", tun(&frags[0], b4a(), &[])),
        s("tun", "later IPv4 fragment", tun(&frags[1], b4a(), &[])),
        s(
            "tun",
            "IPv6 fragment",
            c.eth_to("tun", ROUTER_MAC, 0x86dd, &v6frag),
        ),
        s(
            "tun",
            "routing header",
            tun(&udp, b4a(), &[(43, vec![0, 0, 0, 0, 0, 0, 0, 0])]),
        ),
        s(
            "tun",
            "ICMPv6 to the AFTR",
            c.eth_to(
                "tun",
                ROUTER_MAC,
                0x86dd,
                &packets::ipv6(b4a(), aftr(), 58, &[], &[128, 0, 0, 0, 0, 1, 0, 1], 64),
            ),
        ),
        s("tun", "B4 not allowed", tun(&udp, stranger, &[])),
        s(
            "slow",
            "written back from the slow path",
            tun(&big, b4a(), &[]),
        ),
        s(
            "inet",
            "UDP to a pool address, no mapping",
            inet(&udp4(SERVER, pool1, 7777, 4242, 64, b"x")),
        ),
        s(
            "inet",
            "SYN to a pool address",
            inet(&packets::tcp4_syn(SERVER, pool1, 80, 40000, 64)),
        ),
        s(
            "inet",
            "not a pool address",
            inet(&udp4(
                SERVER,
                Ipv4Addr::new(203, 0, 113, 1),
                7777,
                4242,
                64,
                b"x",
            )),
        ),
        s("inet", "IPv4 fragment to the pool", inet(&in_frags[1])),
        s(
            "inet",
            "ARP",
            c.eth_to("inet", SERVER_MAC, 0x0806, &[0u8; 28]),
        ),
        s(
            "inet",
            "VLAN",
            c.eth_to("inet", SERVER_MAC, 0x8100, &[0u8; 46]),
        ),
    ]
}

fn b4_seeds(c: &Campaign) -> Vec<Seed> {
    let lan = |ip: &[u8]| c.eth_to("lan", HOST_MAC, 0x0800, ip);
    let wan = |ip: &[u8], src: Ipv6Addr, exts: &[(u8, Vec<u8>)]| {
        c.eth_to("wan", ROUTER_MAC, 0x86dd, &softwire(src, b4a(), ip, exts))
    };
    let slow = |ty: u16, p: &[u8]| c.eth_to("slow", [2, 0, 0, 0, 0, 1], ty, p);
    let udp = udp4(HOST, SERVER, 5000, 7777, 64, b"up");
    let down = udp4(SERVER, HOST, 7777, 5000, 64, b"down");
    let mut big_df = udp4(HOST, SERVER, 5000, 7777, 64, &[3u8; 1472]);
    packets::set_df(&mut big_df, true);
    let err = fuzz::icmp_error(
        &mut Rng::new(1),
        SERVER.octets(),
        HOST.octets(),
        &udp4(HOST, SERVER, 5000, 7777, 63, b"up"),
    );
    let native = native_v6_to_b4a();
    let frag = packets::fragment_v6(
        aftr(),
        b4a(),
        4,
        &udp4(SERVER, HOST, 7, 5000, 64, &[1; 1400]),
        1232,
        7,
    )[0]
    .clone();
    let stranger: Ipv6Addr = "2001:db8:f::99".parse().unwrap();
    let s = |iface, what, frame| Seed { iface, what, frame };
    vec![
        s("lan", "UDP", lan(&udp)),
        s(
            "lan",
            "TCP SYN with MSS",
            lan(&packets::tcp4_syn_mss(HOST, SERVER, 40000, 80, 64, 1460)),
        ),
        s(
            "lan",
            "ping",
            lan(&packets::icmp4_echo(HOST, SERVER, 9, 1, 64, false)),
        ),
        s(
            "lan",
            "TTL 1",
            lan(&udp4(HOST, SERVER, 5000, 7777, 1, b"x")),
        ),
        s("lan", "DF, too big for the WAN", lan(&big_df)),
        s(
            "lan",
            "to the router",
            lan(&udp4(
                HOST,
                Ipv4Addr::new(192, 168, 1, 1),
                5353,
                53,
                64,
                b"q",
            )),
        ),
        s(
            "lan",
            "broadcast",
            lan(&udp4(
                HOST,
                Ipv4Addr::new(192, 168, 1, 255),
                68,
                67,
                64,
                b"d",
            )),
        ),
        s(
            "lan",
            "host's ICMP error",
            lan(&fuzz::icmp_error(
                &mut Rng::new(2),
                HOST.octets(),
                SERVER.octets(),
                &down,
            )),
        ),
        s(
            "lan",
            "native IPv6",
            c.eth_to("lan", HOST_MAC, 0x86dd, &native),
        ),
        s("wan", "softwire UDP", wan(&down, aftr(), &[])),
        s(
            "wan",
            "softwire with a TEL option",
            wan(&down, aftr(), &[(60, tel_destopts(4))]),
        ),
        s(
            "wan",
            "softwire SYN-ACK with MSS",
            wan(
                &packets::tcp4_syn_mss(SERVER, HOST, 80, 40000, 64, 1460),
                aftr(),
                &[],
            ),
        ),
        s("wan", "softwire ICMP error", wan(&err, aftr(), &[])),
        s(
            "wan",
            "softwire to a LAN host without a neighbour",
            wan(
                &udp4(SERVER, Ipv4Addr::new(192, 168, 1, 20), 7777, 5000, 64, b"?"),
                aftr(),
                &[],
            ),
        ),
        s(
            "wan",
            "softwire not from the AFTR",
            wan(&down, stranger, &[]),
        ),
        s(
            "wan",
            "native IPv6",
            c.eth_to("wan", ROUTER_MAC, 0x86dd, &native),
        ),
        s(
            "wan",
            "IPv6 fragment",
            c.eth_to("wan", ROUTER_MAC, 0x86dd, &frag),
        ),
        s(
            "wan",
            "IPv4 on the WAN",
            c.eth_to("wan", ROUTER_MAC, 0x0800, &down),
        ),
        s(
            "slow",
            "written back softwire",
            slow(0x86dd, &softwire(aftr(), b4a(), &down, &[])),
        ),
        s(
            "slow",
            "the router's own IPv4",
            slow(
                0x0800,
                &udp4(Ipv4Addr::new(192, 0, 0, 2), SERVER, 5353, 53, 64, b"q"),
            ),
        ),
        s(
            "slow",
            "IPv6 fragment on the slow path",
            slow(0x86dd, &frag),
        ),
    ]
}

// ---- generators ----------------------------------------------------------------------

/// A reply from the internet to something the AFTR sent: addresses and ports swapped, an
/// echo request turned into a reply, TCP flags anything.
fn reply(rng: &mut Rng, sent: &[u8]) -> Vec<u8> {
    let mut r = sent.to_vec();
    if r.len() < 20 {
        return r;
    }
    let (a, b): ([u8; 4], [u8; 4]) = (r[12..16].try_into().unwrap(), r[16..20].try_into().unwrap());
    r[12..16].copy_from_slice(&b);
    r[16..20].copy_from_slice(&a);
    r[8] = 64;
    let l = fuzz::locate(&{
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(&r);
        f
    });
    if let Some(l4) = l.l4.map(|o| o - 14) {
        match r[9] {
            6 | 17 if r.len() >= l4 + 4 => {
                let (s, d) = (r[l4..l4 + 2].to_vec(), r[l4 + 2..l4 + 4].to_vec());
                r[l4..l4 + 2].copy_from_slice(&d);
                r[l4 + 2..l4 + 4].copy_from_slice(&s);
                if r[9] == 6 && r.len() >= l4 + 14 {
                    r[l4 + 13] = *rng.pick(&[0x12, 0x10, 0x04, 0x14, 0x11, 0x18, 0x02]);
                }
            }
            1 if r.len() > l4 => r[l4] = 0,
            _ => {}
        }
    }
    fuzz::fix_l4_checksum(&mut r, 0);
    fuzz::fix_ipv4_checksum(&mut r, 0);
    r
}

/// Some B4 address: the fixtures' two, or any other in the allowed /64.
fn some_b4(rng: &mut Rng) -> Ipv6Addr {
    match rng.below(4) {
        0 => b4a(),
        1 => "2001:db8:a::99".parse().unwrap(),
        _ => {
            let mut o = b4a().octets();
            o[14] = rng.below(4) as u8;
            o[15] = rng.byte();
            o.into()
        }
    }
}

/// One random frame for the AFTR, built from the seeds and from what it sent.
fn aftr_frame(c: &mut Campaign, seeds: &[Seed]) -> (String, &'static str, Vec<u8>) {
    let r = c.rng.below(100);
    if r < 12 && !c.sent.is_empty() {
        let s = c.sent[c.rng.below(c.sent.len())].clone();
        let ip = reply(&mut c.rng, &s);
        let mut f = c.eth_to("inet", SERVER_MAC, 0x0800, &ip);
        let mut how = "reply to what the AFTR sent".to_string();
        if c.rng.chance(50) {
            how += &format!(", {}", fuzz::mutate_structured(&mut c.rng, &mut f));
            fixup(&mut c.rng, &mut f, &mut how);
        }
        return (how, "inet", f);
    }
    if r < 20 && !c.sent.is_empty() {
        let s = c.sent[c.rng.below(c.sent.len())].clone();
        let from = if c.rng.chance(50) {
            [s[16], s[17], s[18], s[19]]
        } else {
            [203, 0, 113, 3]
        };
        let e = fuzz::icmp_error(&mut c.rng, from, s[12..16].try_into().unwrap(), &s);
        return (
            "ICMP error from the internet quoting what the AFTR sent".into(),
            "inet",
            c.eth_to("inet", SERVER_MAC, 0x0800, &e),
        );
    }
    if r < 28 && !c.delivered.is_empty() {
        let (b4, d) = c.delivered[c.rng.below(c.delivered.len())].clone();
        let e = fuzz::icmp_error(
            &mut c.rng,
            d[16..20].try_into().unwrap(),
            d[12..16].try_into().unwrap(),
            &d,
        );
        let b4 = if c.rng.chance(85) {
            b4.into()
        } else {
            some_b4(&mut c.rng)
        };
        return (
            "host's ICMP error quoting what the AFTR delivered".into(),
            "tun",
            c.eth_to("tun", ROUTER_MAC, 0x86dd, &softwire(b4, aftr(), &e, &[])),
        );
    }
    if r < 34 && !c.sent.is_empty() {
        // To another subscriber's public endpoint: hairpinning.
        let s = c.sent[c.rng.below(c.sent.len())].clone();
        let l = fuzz::locate(&{
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&[8, 0]);
            f.extend_from_slice(&s);
            f
        });
        let Some(l4) = l.l4.map(|o| o - 14).filter(|o| s.len() >= o + 2) else {
            return ("random bytes".into(), "tun", random_frame(c));
        };
        let sport = u16::from_be_bytes([s[l4], s[l4 + 1]]);
        let ip = match s[9] {
            6 => packets::tcp4_syn(
                Ipv4Addr::new(192, 168, 1, 20),
                Ipv4Addr::new(s[12], s[13], s[14], s[15]),
                3000 + c.rng.below(100) as u16,
                sport,
                64,
            ),
            _ => udp4(
                Ipv4Addr::new(192, 168, 1, 20),
                Ipv4Addr::new(s[12], s[13], s[14], s[15]),
                3000 + c.rng.below(100) as u16,
                sport,
                64,
                b"hairpin",
            ),
        };
        let b4 = some_b4(&mut c.rng);
        return (
            "hairpin to what the AFTR sent from".into(),
            "tun",
            c.eth_to("tun", ROUTER_MAC, 0x86dd, &softwire(b4, aftr(), &ip, &[])),
        );
    }
    if r < 38 {
        // A new flow from some subscriber: state grows, quotas and the pool get used.
        let b4 = some_b4(&mut c.rng);
        let sport = 1024 + c.rng.u16() % 60000;
        let ip = match c.rng.below(3) {
            0 => packets::tcp4_syn_mss(HOST, SERVER, sport, 80, 64, 1460),
            1 => packets::icmp4_echo(HOST, SERVER, sport, 1, 64, false),
            _ => udp4(HOST, SERVER, sport, 53, 64, b"query"),
        };
        return (
            "new flow".into(),
            "tun",
            c.eth_to("tun", ROUTER_MAC, 0x86dd, &softwire(b4, aftr(), &ip, &[])),
        );
    }
    mutated(c, seeds)
}

fn b4_frame(c: &mut Campaign, seeds: &[Seed]) -> (String, &'static str, Vec<u8>) {
    if c.rng.chance(10) {
        let quoted = udp4(HOST, SERVER, c.rng.u16(), 7777, 63, b"quoted");
        let e = fuzz::icmp_error(&mut c.rng, SERVER.octets(), HOST.octets(), &quoted);
        return (
            "ICMP error down the softwire".into(),
            "wan",
            c.eth_to("wan", ROUTER_MAC, 0x86dd, &softwire(aftr(), b4a(), &e, &[])),
        );
    }
    mutated(c, seeds)
}

/// Make lengths and checksums consistent again, most of the time.
fn fixup(rng: &mut Rng, f: &mut [u8], how: &mut String) {
    match rng.below(10) {
        0..=4 => {
            fuzz::fix_all(f);
            *how += ", lengths and checksums fixed";
        }
        5 | 6 => {
            fuzz::fix_checksums(f);
            *how += ", checksums fixed";
        }
        7 => {
            fuzz::fix_lengths(f);
            *how += ", lengths fixed";
        }
        _ => {}
    }
}

fn mutated(c: &mut Campaign, seeds: &[Seed]) -> (String, &'static str, Vec<u8>) {
    let r = c.rng.below(100);
    if r < 5 {
        let iface = *c.rng.pick(c.ifaces);
        return ("random bytes".into(), iface, random_frame(c));
    }
    let s = &seeds[c.rng.below(seeds.len())];
    let mut f = s.frame.clone();
    let mut how = format!("seed \"{}\"", s.what);
    if r >= 12 {
        for _ in 0..1 + c.rng.below(3) {
            how += &format!(", {}", fuzz::mutate_structured(&mut c.rng, &mut f));
        }
        fixup(&mut c.rng, &mut f, &mut how);
    }
    let iface = if c.rng.chance(8) {
        let i = *c.rng.pick(c.ifaces);
        how += &format!(", arriving on {i}");
        i
    } else {
        s.iface
    };
    (how, iface, f)
}

/// Random bytes behind an Ethernet header, sometimes shaped like an IP packet.
fn random_frame(c: &mut Campaign) -> Vec<u8> {
    let n = 14 + c.rng.below(200);
    let mut f = c.rng.bytes(n);
    if c.rng.chance(70) && n >= 14 + 40 {
        let v6 = c.rng.chance(50);
        f[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        f[14] = if v6 { 0x60 } else { 0x45 };
        if c.rng.chance(50) {
            fuzz::fix_all(&mut f);
        }
    }
    f
}

// ---- the runs ------------------------------------------------------------------------

/// Every seed as it is, then cut at every length (every one up to 160 bytes, and around
/// the end of longer ones).
fn seed_phase(c: &mut Campaign, seeds: &[Seed]) {
    for s in seeds {
        c.frame(
            format!("seed \"{}\"", s.what),
            "as is".into(),
            s.iface,
            s.frame.clone(),
        );
    }
    for s in seeds {
        let n = s.frame.len();
        for cut in (14..n).filter(|&k| k <= 160 || k + 16 >= n || k % 97 == 0) {
            c.frame(
                format!("seed \"{}\"", s.what),
                format!("cut to {cut} bytes"),
                s.iface,
                s.frame[..cut].to_vec(),
            );
            if c.done() {
                return;
            }
        }
    }
}

fn campaign(role: Role, rig: &mut Rig, ifaces: &'static [&'static str]) {
    let o = opts();
    let started = Instant::now();
    let mut c = Campaign::new(rig, role, ifaces, &o);
    let seeds = match role {
        Role::Aftr => aftr_seeds(&c),
        Role::B4 => b4_seeds(&c),
    };
    seed_phase(&mut c, &seeds);
    c.check_consistency("after the seeds");
    if let Some((iface, frame)) = &o.frame {
        let iface = *ifaces
            .iter()
            .find(|i| *i == iface)
            .unwrap_or_else(|| panic!("no interface {iface}: {ifaces:?}"));
        c.frame(
            "replay".into(),
            "DSLITE_FUZZ_FRAME".into(),
            iface,
            frame.clone(),
        );
        c.check_consistency("after the replay");
        return c.finish(started, false);
    }
    for i in 0..o.iterations.unwrap_or(DEFAULT_ITERATIONS[role as usize]) {
        if c.done() {
            break;
        }
        let (how, iface, f) = match role {
            Role::Aftr => aftr_frame(&mut c, &seeds),
            Role::B4 => b4_frame(&mut c, &seeds),
        };
        c.frame(format!("iteration {i}"), how, iface, f);
        if i % 512 == 511 {
            c.check_consistency(&format!("iteration {i}"));
        }
    }
    c.check_consistency("the end");
    let full = o.iterations.unwrap_or(usize::MAX) >= DEFAULT_ITERATIONS[role as usize];
    c.finish(started, full);
}

/// The AFTR: filtering on (PEERS in use), MSS clamping, a 1400-byte internet link, a
/// slow path with a 1280-byte tunnel MTU, the next-hop cache, small tables (so that table
/// limits are reached too), and routes that make the FIB answer every way: forwarded
/// (default route), unreachable (198.18.0.0/15) and no neighbour (100.64.0.0/10).
#[test]
fn fuzz_aftr() {
    use dslite_user::config::Filtering;
    with_aftr_cfg(
        |s| {
            s.max_mappings = 1024;
            s.filtering = [Filtering::Apdf, Filtering::Adf, Filtering::Eif];
            s.mss = 1400;
            s.v4_mtu = 1400;
            s.limits.icmp_rate = 1_000_000;
        },
        |rig| {
            rig.ip("link set inet mtu 1400");
            rig.ip("route add default via 203.0.113.2");
            rig.ip("route add unreachable 198.18.0.0/15");
            rig.ip("route add 100.64.0.0/10 via 203.0.113.9");
            rig.enable_slow_path(1280);
            dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
            // What the controller's host-address sync writes: the AFTR's own IPv4 address
            // is no destination for subscribers.
            let own = [std::net::Ipv4Addr::new(203, 0, 113, 1)];
            let deny = dslite_user::dataplane::denied_destinations(&aftr_settings(), &own);
            dslite_user::dataplane::sync_denied(&rig.pin, &deny).unwrap();
            campaign(Role::Aftr, rig, &["tun", "inet", "slow"]);
        },
    );
}

/// The B4: MSS clamping, a slow path, the next-hop cache.
#[test]
fn fuzz_b4() {
    with_b4_mss(1400, |rig| {
        rig.enable_slow_path(0);
        dslite_user::dataplane::bump_next_hops(&rig.pin, true).unwrap();
        campaign(Role::B4, rig, &["lan", "wan", "slow"]);
    });
}

/// The judge itself (no BPF needed): a correct translation passes, and each kind of wrong
/// output is named.
#[test]
fn fuzz_judge_names_each_wrong_output() {
    let pool0 = Ipv4Addr::new(198, 51, 100, 0);
    let m = [2, 0, 0, 0, 0, 9];
    let inner = udp4(HOST, SERVER, 5000, 7777, 64, b"hello");
    let input = eth(m, ROUTER_MAC, 0x86dd, &softwire(b4a(), aftr(), &inner, &[]));
    let good = eth(
        SERVER_MAC,
        m,
        0x0800,
        &udp4(pool0, SERVER, 1024, 7777, 63, b"hello"),
    );
    let classes = |input: &[u8], out: &[u8], has: bool| {
        let mut p = vec![];
        let r = frame_problems(out, input, &mut p);
        aftr_addresses(input, out, &r, &|_| has, &mut p);
        p.iter().map(|x| x.class).collect::<Vec<_>>()
    };
    assert_eq!(classes(&input, &good, true), []);

    let mut bad_sum = good.clone();
    bad_sum[14 + 26] ^= 1;
    assert_eq!(classes(&input, &bad_sum, true), [Class::Malformed]);
    let mut no_sum = good.clone();
    no_sum[14 + 26..14 + 28].copy_from_slice(&[0, 0]);
    assert_eq!(
        classes(&input, &no_sum, true),
        [Class::Malformed],
        "a zero UDP checksum only where one came in"
    );
    let stranger = eth(
        SERVER_MAC,
        m,
        0x0800,
        &udp4(HOST, SERVER, 1024, 7777, 63, b"hello"),
    );
    assert_eq!(classes(&input, &stranger, true), [Class::Addresses]);

    // A header checksum that was wrong on the way in, carried through unchanged.
    let mut corrupt = inner.clone();
    corrupt[1] ^= 4;
    let corrupt_in = eth(
        m,
        ROUTER_MAC,
        0x86dd,
        &softwire(b4a(), aftr(), &corrupt, &[]),
    );
    let mut carried = corrupt.clone();
    carried[12..16].copy_from_slice(&pool0.octets());
    let old = u16::from_ne_bytes([corrupt[10], corrupt[11]]);
    let c = dslite_common::csum::replace4(old, HOST.octets(), pool0.octets());
    carried[10..12].copy_from_slice(&c.to_ne_bytes());
    fuzz::fix_l4_checksum(&mut carried, 0);
    let carried = eth(SERVER_MAC, m, 0x0800, &carried);
    assert_eq!(
        classes(&corrupt_in, &carried, true),
        [Class::ForwardedBadHeaderChecksum]
    );

    // An input with junk after its packet, and the junk sent on.
    let mut long_in = input.clone();
    long_in.extend_from_slice(&[0xaa; 40]);
    let mut long_out = good.clone();
    long_out.extend_from_slice(&[0xaa; 40]);
    assert_eq!(classes(&long_in, &long_out, true), [Class::Trailing]);

    // Hop-by-hop options after a destination options header.
    let exts = [(60, tel_destopts(4)), (0, vec![0, 0, 1, 4, 0, 0, 0, 0])];
    let hbh_in = eth(
        m,
        ROUTER_MAC,
        0x86dd,
        &softwire(b4a(), aftr(), &inner, &exts),
    );
    assert_eq!(classes(&hbh_in, &good, true), [Class::ForwardedInvalidIpv6]);

    // Down a softwire: to the B4 that holds the mapping, and to one that does not; the
    // AFTR's own answer to the sender, and to another B4.
    let reply = udp4(SERVER, HOST, 7777, 5000, 63, b"back");
    let down = eth(ROUTER_MAC, m, 0x86dd, &softwire(aftr(), b4a(), &reply, &[]));
    assert_eq!(classes(&input, &down, true), []);
    assert_eq!(classes(&input, &down, false), [Class::NotConcerned]);
    let answer = packets::icmp4_echo(Ipv4Addr::new(192, 0, 0, 1), HOST, 1, 1, 64, true);
    let to_sender = eth(
        ROUTER_MAC,
        m,
        0x86dd,
        &softwire(aftr(), b4a(), &answer, &[]),
    );
    assert_eq!(classes(&input, &to_sender, false), []);
    let other: Ipv6Addr = "2001:db8:a::99".parse().unwrap();
    let to_other = eth(
        ROUTER_MAC,
        m,
        0x86dd,
        &softwire(aftr(), other, &answer, &[]),
    );
    assert_eq!(classes(&input, &to_other, true), [Class::NotConcerned]);
    let outside: Ipv6Addr = "2001:db8:c::2".parse().unwrap();
    let leak = eth(
        ROUTER_MAC,
        m,
        0x86dd,
        &softwire(aftr(), outside, &reply, &[]),
    );
    assert_eq!(classes(&input, &leak, true), [Class::Addresses]);

    // To loopback from a subscriber; from "the AFTR" off the internet.
    let lo = Ipv4Addr::new(127, 0, 0, 1);
    let to_lo = eth(
        SERVER_MAC,
        m,
        0x0800,
        &udp4(pool0, lo, 1024, 7777, 63, b"hello"),
    );
    assert_eq!(classes(&input, &to_lo, true), [Class::MartianDestination]);
    let spoof = packets::icmp4_echo(Ipv4Addr::new(192, 0, 0, 1), pool0, 1, 1, 64, true);
    let spoof_in = eth(m, SERVER_MAC, 0x0800, &spoof);
    assert_eq!(classes(&spoof_in, &to_sender, true), [Class::MartianSource]);
}
