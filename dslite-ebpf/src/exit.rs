//! Why a packet leaves the program ([`Exit`]), and every integer that crosses a BPF call.
//!
//! Values returned from (or passed to) an `#[inline(never)]` function are plain integers on
//! purpose: enums returned from a BPF call can carry uninitialised padding that the verifier
//! rejects, and a scalar lets the verifier prune the many ways out of a search into one
//! state. The newtypes here are `#[repr(transparent)]`: the machine code still passes a
//! scalar, but each packing is written once, with named constructors and accessors.

use dslite_common::Counter;

/// Why a packet leaves the program without being forwarded by XDP.
#[derive(Clone, Copy)]
pub enum Exit {
    /// Drop, counted under this reason.
    Drop(Counter),
    /// Hand to the kernel stack untouched (or as far as it is useful), counted.
    Pass(Counter),
}

pub type Res<T> = Result<T, Exit>;

/// `Res<()>` across a BPF call: 0, or an [`Exit`] as a non-zero integer (the counter index
/// plus one, bit 31 set for [`Exit::Pass`]).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Code(u32);

impl Code {
    pub const OK: Code = Code(0);

    #[inline(always)]
    pub fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// The result as a `Res`.
    #[inline(always)]
    pub fn res(self) -> Res<()> {
        if self.0 == 0 {
            Ok(())
        } else {
            Err(self.exit())
        }
    }

    /// `Ok(v)` if the call succeeded (`v`: what it wrote through its `&mut` argument).
    #[inline(always)]
    pub fn with<T>(self, v: T) -> Res<T> {
        if self.0 == 0 {
            Ok(v)
        } else {
            Err(self.exit())
        }
    }

    /// The [`Exit`] a non-zero code stands for.
    #[inline(always)]
    pub fn exit(self) -> Exit {
        let code = self.0;
        let c = Counter::from_index((code & 0x7fff_ffff).wrapping_sub(1));
        if code & 0x8000_0000 != 0 {
            Exit::Pass(c)
        } else {
            Exit::Drop(c)
        }
    }
}

impl From<Exit> for Code {
    #[inline(always)]
    fn from(e: Exit) -> Code {
        Code(match e {
            Exit::Drop(c) => c as u32 + 1,
            Exit::Pass(c) => (c as u32 + 1) | 0x8000_0000,
        })
    }
}

impl From<Res<()>> for Code {
    #[inline(always)]
    fn from(r: Res<()>) -> Code {
        match r {
            Ok(()) => Code::OK,
            Err(e) => e.into(),
        }
    }
}

/// Stage `n` of a path: in a bench build (cargo feature `bench`) the path returns XDP_DROP
/// here when the bench asks (`bench::stop_at`), so each stage's cost is the difference
/// between two runs; in the production object it is nothing.
macro_rules! bench_stage {
    ($n:expr) => {
        $crate::exit::bench_stage!($n => Ok($crate::ctx::V_DROP))
    };
    // In a function that does not return a verdict: what to return instead.
    ($n:expr => $ret:expr) => {
        #[cfg(feature = "bench")]
        if $crate::bench::stop_at($n) {
            return $ret;
        }
    };
}
pub(crate) use bench_stage;

/// A wrapper pair, generic over the hook's context `C` (crate::ctx): `$name`, an
/// `#[inline(never)]` BPF call returning a [`Code`] (with its
/// `Ok` value, if any, written through a last `&mut` argument), around the `#[inline(always)]`
/// function `$inner` returning a `Res`; and `$typed`, the `Res`-returning function callers
/// use. `on_ok` runs inside the BPF call after a success (counting, say).
macro_rules! bpf_call {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident / $typed:ident ($($arg:ident: $ty:ty),* $(,)?) -> Res<()>
            = $inner:path;
    ) => {
        $(#[$m])*
        #[inline(never)]
        $vis fn $name<C: $crate::ctx::Pkt>($($arg: $ty),*) -> $crate::exit::Code {
            $inner($($arg),*).into()
        }

        #[inline(always)]
        $vis fn $typed<C: $crate::ctx::Pkt>($($arg: $ty),*) -> $crate::exit::Res<()> {
            $name::<C>($($arg),*).res()
        }
    };
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident / $typed:ident ($($arg:ident: $ty:ty),* $(,)?) -> Res<$t:ty>
            = $inner:path $(, on_ok $ok:block)?;
    ) => {
        $(#[$m])*
        #[inline(never)]
        $vis fn $name<C: $crate::ctx::Pkt>($($arg: $ty,)* out: &mut $t) -> $crate::exit::Code {
            match $inner($($arg),*) {
                Ok(v) => {
                    *out = v;
                    $($ok)?
                    $crate::exit::Code::OK
                }
                Err(e) => e.into(),
            }
        }

        #[inline(always)]
        $vis fn $typed<C: $crate::ctx::Pkt>($($arg: $ty),*) -> $crate::exit::Res<$t> {
            let mut out = <$t>::default();
            $name::<C>($($arg,)* &mut out).with(out)
        }
    };
}
pub(crate) use bpf_call;

/// Set in a routing result (an XDP action otherwise) when the route's MTU is smaller than
/// the packet; the low bits carry that MTU. Never a valid XDP action.
const TOO_BIG: u32 = 1 << 31;

/// The routing result for a packet larger than the route's `mtu`.
#[inline(always)]
pub fn too_big(mtu: u32) -> u32 {
    TOO_BIG | mtu
}

/// The route's MTU if `action` is a [`too_big`] result.
#[inline(always)]
pub fn too_big_mtu(action: u32) -> Option<u32> {
    if action & TOO_BIG != 0 {
        Some(action & !TOO_BIG)
    } else {
        None
    }
}

/// `from_internet`'s answer (in place of an XDP action) for an ICMP error, which the AFTR's
/// dispatch hands to the RFC 5508 translation.
pub const ICMP_ERROR: u32 = u32::MAX;

/// Why the AFTR refuses a packet with an ICMP error: the counter, with the ICMP type in
/// bits 16-23 and the code in bits 24-31.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Why(u32);

impl Why {
    #[inline(always)]
    pub fn new(c: Counter, icmp_type: u8, icmp_code: u8) -> Why {
        Why(c as u32 | (icmp_type as u32) << 16 | (icmp_code as u32) << 24)
    }

    /// The counter's index.
    #[inline(always)]
    pub fn counter(self) -> u32 {
        self.0 & 0xffff
    }

    #[inline(always)]
    pub fn icmp_type(self) -> u8 {
        (self.0 >> 16) as u8
    }

    #[inline(always)]
    pub fn icmp_code(self) -> u8 {
        (self.0 >> 24) as u8
    }
}

/// An outside port passed in the top 16 bits of a BPF call argument.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct HighPort(u32);

impl HighPort {
    #[inline(always)]
    pub fn new(port: u16) -> HighPort {
        HighPort((port as u32) << 16)
    }

    #[inline(always)]
    pub fn port(self) -> u16 {
        (self.0 >> 16) as u16
    }
}

/// An IPv4 endpoint for the NAT log: the address (raw, high 32 bits) and the port (host
/// order, low 16 bits); 0 for none.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Endpoint(u64);

impl Endpoint {
    pub const NONE: Endpoint = Endpoint(0);

    #[inline(always)]
    pub fn new(addr: [u8; 4], port: u16) -> Endpoint {
        Endpoint((u32::from_ne_bytes(addr) as u64) << 32 | port as u64)
    }

    #[inline(always)]
    pub fn addr(self) -> [u8; 4] {
        ((self.0 >> 32) as u32).to_ne_bytes()
    }

    #[inline(always)]
    pub fn port(self) -> u16 {
        self.0 as u16
    }
}

/// What a `bpf_loop` callback returns: go on with the next iteration, or stop.
pub const LOOP_CONTINUE: i64 = 0;
pub const LOOP_BREAK: i64 = 1;

/// The NAT allocator's results (`nat/`), one scalar per BPF call.
pub mod nat {
    /// A port search's (and an admission's) outcome.
    pub const FOUND: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const QUOTA_EXCEEDED: u32 = 2;
    pub const POOL_EXHAUSTED: u32 = 3;
    pub const TABLE_FULL: u32 = 4;
    pub const NOT_CONFIGURED: u32 = 5;
    /// With the slot in bits 8-15 ([`need_block`]): the slot is empty and must be given a
    /// block first.
    pub const NEED_BLOCK: u32 = 6;
    pub const SESSION_LIMIT: u32 = 7;
    pub const RATE_LIMIT: u32 = 8;

    /// [`NEED_BLOCK`] for slot `slot`.
    #[inline(always)]
    pub fn need_block(slot: u32) -> u32 {
        NEED_BLOCK | slot << 8
    }

    /// A search result without its slot.
    #[inline(always)]
    pub fn outcome(r: u32) -> u32 {
        r & 0xff
    }

    /// A block claim's outcome.
    pub const BLOCK_TAKEN: u32 = 0;
    pub const BLOCK_OURS: u32 = 1;
    pub const BLOCK_TABLE_FULL: u32 = 2;
    pub const BLOCK_NO_ADDR: u32 = 3;
    /// No address left to try.
    pub const BLOCK_NONE: u32 = 4;

    /// Which slot to search, and the packet's TCP bits.
    #[repr(transparent)]
    #[derive(Clone, Copy)]
    pub struct SlotTry(u32);

    impl SlotTry {
        #[inline(always)]
        pub fn new(tcp: u8, slot: u32) -> SlotTry {
            SlotTry(tcp as u32 | slot << 8)
        }

        #[inline(always)]
        pub fn tcp(self) -> u8 {
            self.0 as u8
        }

        #[inline(always)]
        pub fn slot(self) -> u8 {
            (self.0 >> 8) as u8
        }
    }

    /// The subscriber's hash (high 32 bits) and the pool index of a block it holds, or
    /// `u32::MAX` (low 32 bits).
    #[repr(transparent)]
    #[derive(Clone, Copy)]
    pub struct HashHeld(u64);

    impl HashHeld {
        #[inline(always)]
        pub fn new(hash: u32, held: u32) -> HashHeld {
            HashHeld(((hash as u64) << 32) | held as u64)
        }

        #[inline(always)]
        pub fn hash(self) -> u32 {
            (self.0 >> 32) as u32
        }

        #[inline(always)]
        pub fn held(self) -> u32 {
            self.0 as u32
        }
    }

    /// A block by its address's pool index (high 16 bits) and number (low 16 bits).
    #[repr(transparent)]
    #[derive(Clone, Copy)]
    pub struct BlockAt(u32);

    impl BlockAt {
        #[inline(always)]
        pub fn new(addr_index: u32, block: u32) -> BlockAt {
            BlockAt((addr_index << 16) | (block & 0xffff))
        }

        #[inline(always)]
        pub fn addr_index(self) -> u32 {
            self.0 >> 16
        }

        #[inline(always)]
        pub fn block(self) -> u16 {
            self.0 as u16
        }
    }
}
