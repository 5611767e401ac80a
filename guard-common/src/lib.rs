//! Types and names shared by guard's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the kernel and userspace
//! agree on the byte layout; the size assertions at the bottom keep it that way. Map names
//! are constants: the kernel side names its statics identically, the userspace loader takes
//! every map by these constants and fails loudly when one is missing.
#![no_std]

/// Names of the maps in the eBPF object (at most 15 bytes: the kernel's name limit).
///
/// The policy maps are double-buffered: each holds two *generations* of the policy, and
/// [`ACTIVE`] says which one the programs judge by. The controller writes a new policy into
/// the inactive generation, then flips [`ACTIVE`]; every program run reads it once, so a
/// packet or socket call is judged entirely by one generation. Arrays keep generation `g` at
/// `g * len + index` ([`gen_index`](super::gen_index)); the class-keyed maps need no offset,
/// because the controller numbers each generation's port classes apart.
pub mod maps {
    /// The layout of the pinned state maps ([`STATE`]) and of the records they hold: bump it
    /// whenever a pinned map's key, value or element type, size or meaning changes (`Event`,
    /// `RuleStats`, `RttHist`, a counter index, ...). A daemon adopts pins only of its own
    /// layout: aya reuses a pinned map by name whatever its layout, so new programs would
    /// otherwise read and write old-layout maps. Layout 1 is every guard before the number
    /// existed (pins with no layout mark). Layout 3 added [`DENY_TALLY`], which now counts
    /// the policy denies, the default's denies and the suppressed events its programs once
    /// counted in [`REASONS`], [`RULE_STATS`] and [`EVENT_STATS`].
    pub const PIN_LAYOUT: u32 = 3;
    /// The pin layouts this guard adopts: its own, and layout 2, whose pins are layout 3's
    /// but for [`DENY_TALLY`] (the load creates it; the counts layout 2's programs left in
    /// [`REASONS`], [`RULE_STATS`] and [`EVENT_STATS`] stay there, and every reader adds
    /// the tally to them). Adopting layout 2 marks the pins as layout 3, so a layout-2 guard, which
    /// would not read the tally, then refuses them.
    pub const PIN_LAYOUTS_ADOPTED: [u32; 2] = [2, PIN_LAYOUT];
    /// `Array<ActiveGeneration>`, one entry: the policy generation in force (0 or 1), and
    /// during a commit-confirm window the generation to fall back to after its deadline.
    pub const ACTIVE: &str = "GUARD_ACTIVE";
    /// `Array<GuardConfig>`, one entry per generation: mode and default action.
    pub const CONFIG: &str = "GUARD_CONFIG";
    /// `Array<u32>`, [`super::POLICY_PORTS_LEN`] entries per generation, indexed by
    /// [`super::port_index`] (ingress and egress protocol slots): the port class of each
    /// (slot, port), or'd with [`super::PORT_FAILSAFE`], or a direct rule
    /// ([`super::PORT_DIRECT`]).
    pub const PORTS: &str = "GUARD_PORTS";
    /// `Array<ClassLens>` indexed by port class: the source prefix lengths the class uses.
    /// Generation `g` numbers its classes from `g * (max_entries / 2)`.
    pub const CLASS_LENS: &str = "GUARD_CLASSLEN";
    /// `HashMap<SrcHashKeyV4, RuleRef>`: (class, prefix length, masked IPv4 source) to rule.
    pub const SRC_HASH_V4: &str = "GUARD_SRCH_V4";
    /// `HashMap<SrcHashKeyV6, RuleRef>`: (class, prefix length, masked IPv6 source) to rule.
    pub const SRC_HASH_V6: &str = "GUARD_SRCH_V6";
    /// `LpmTrie<SrcKeyV4, RuleRef>`: (port class, IPv4 source prefix) to rule, for classes
    /// with more prefix lengths than [`super::MAX_CLASS_PREFIX_LENS`].
    pub const SRC_V4: &str = "GUARD_SRC_V4";
    /// `LpmTrie<SrcKeyV6, RuleRef>`: as [`SRC_V4`] for IPv6.
    pub const SRC_V6: &str = "GUARD_SRC_V6";
    /// `Array<u32>`, [`super::PROTOS_LEN`] entries per generation indexed by IP protocol
    /// number: how packets of protocols without ports in guard's model (everything but TCP,
    /// UDP and UDP-Lite) are judged, with the same encoding as [`PORTS`] (a class, or a
    /// direct rule); 0 = the policy default. The ICMP (1) and ICMPv6 (58) entries judge echo
    /// requests only: other ICMP messages always pass.
    pub const PROTOS: &str = "GUARD_PROTOS";
    /// `PerCpuArray<RuleStats>` indexed by rule index.
    pub const RULE_STATS: &str = "GUARD_RULES";
    /// `PerCpuArray<u64>` indexed by the `REASON_*` constants.
    pub const REASONS: &str = "GUARD_REASONS";
    /// `LruHashMap<FlowKey, FlowState>`: flows the host started (recorded on egress), whose
    /// replies pass inbound whatever the policy says.
    pub const FLOWS: &str = "GUARD_FLOWS";
    /// `Array<u32>`, [`super::PORTS_LEN`] entries per generation indexed by
    /// [`super::port_index`]: the counter slot of each (protocol, destination port); 0 means
    /// the protocol's "other".
    pub const PORT_SLOTS: &str = "GUARD_PORTSLOT";
    /// `PerCpuArray<PortStats>` indexed by slot: inbound connection attempts and rejections.
    pub const PORT_STATS: &str = "GUARD_PORTSTAT";
    /// `RingBuf` of [`super::Event`]s.
    pub const EVENTS: &str = "GUARD_EVENTS";
    /// `LruHashMap<[u8; 16], EventBucket>`: per-source event rate limit.
    pub const EVENT_BUCKETS: &str = "GUARD_EVBUCKET";
    /// `PerCpuArray<u64>` indexed by the `EVENTS_*` constants.
    pub const EVENT_STATS: &str = "GUARD_EVSTATS";
    /// `PerCpuArray<DenyTally>`, one entry: this CPU's tally of policy denies (the
    /// [`super::REASON_POLICY`] count), of the policy default's denies (their part of the
    /// [`super::RULE_DEFAULT`] counter) and of suppressed events (the
    /// [`super::EVENTS_SUPPRESSED`] count), beside the event budget and the flooding source
    /// the limiter holds back. A flood's drop by the default touches this one value for
    /// all of its bookkeeping, where four counter maps cost it a line each, and each map a
    /// line more for its per-CPU pointer. Since pin layout 3; the counts of layout 2's
    /// programs stay in [`REASONS`], [`RULE_STATS`] and [`EVENT_STATS`], and a reader adds
    /// the two.
    pub const DENY_TALLY: &str = "GUARD_DENYTALLY";
    /// `Array<[u8; FLOW_SEEN_CHUNK]>`, [`super::FLOW_SEEN_CHUNKS`] entries: one flag per
    /// [`super::flow_seen_slot`] of a [`super::FlowKey`], set by the TC egress program for
    /// every flow it records. The XDP filter looks a reply up in [`FLOWS`] only when its
    /// flag is set: a flood of packets that answer nothing costs one inlined array access
    /// instead of an LRU lookup. Flags are never cleared (a stale flag only costs the
    /// lookup); a load sets the flags of the flows already in [`FLOWS`].
    pub const FLOW_SEEN: &str = "GUARD_FLOWSEEN";
    /// `Array<u64>`, [`super::SRC_ZONES_LEN`] entries per generation: a bit per first 16
    /// bits of an IPv6 address, set when some IPv6 source prefix of the generation (any
    /// class) may contain such an address ([`super::src_zone_bit`]). A source whose bit is
    /// clear is in no zone, and the source hashes and tries are not consulted. (IPv4
    /// sources use [`SRC_DIRECT16`], which says as much and more; their half stays zero.)
    pub const SRC_ZONES: &str = "GUARD_SRCZONES";
    /// `Array<u32>`, [`super::DIRECT16_LEN`] entries per generation indexed by the first
    /// 16 bits of an IPv4 peer: the first level of the direct source tables, which answer
    /// "which rule of class c contains this IPv4 address" with array reads instead of hash
    /// lookups. A [`super::DIRECT_NONE`], [`super::DIRECT_LOOKUP`], [`super::DIRECT_ROW`] or
    /// [`super::DIRECT_BLOCK`] value.
    pub const SRC_DIRECT16: &str = "GUARD_SRCD16";
    /// `Array<DirectBlock>`, [`super::DIRECT_BLOCKS`] entries per generation: for a /16 that
    /// holds prefixes longer than 16 bits, one value per /24 in it (by the third octet),
    /// [`super::DIRECT_NONE`], [`super::DIRECT_LOOKUP`] or [`super::DIRECT_ROW`].
    pub const SRC_DIRECT24: &str = "GUARD_SRCD24";
    /// `Array<RuleRef>`, [`super::DIRECT_RULES_LEN`] entries per generation: rows of
    /// `GuardConfig::direct_width` entries, one per class of the generation (by class id
    /// minus `GuardConfig::direct_class_offset`), each the most specific rule of that class
    /// whose prefix holds every address of the region that names the row (action 0: none).
    pub const SRC_DIRECT_RULES: &str = "GUARD_SRCDRULE";
    /// `Array<SrcBucketV6>`, `2^GuardConfig::table_v6_bits` buckets per generation (the
    /// loader sizes it): the entries of [`SRC_HASH_V6`] of the generation again, in a
    /// two-choice table of [`super::TABLE_V6_WAYS`]-slot buckets ([`super::table_v6_buckets`])
    /// the kernel reads with two inlined array accesses instead of a call into the hash
    /// table. `table_v6_bits` 0: the generation has no table, [`SRC_HASH_V6`] answers.
    pub const SRC_TABLE_V6: &str = "GUARD_SRCT6";

    /// `Array<u32>`, [`super::PORTS_LEN`] entries per generation indexed by
    /// [`super::port_index`]: 1 when `bind()` to that (protocol, port) is allowed
    /// (`[listen]`).
    pub const LISTEN: &str = "GUARD_LISTEN";
    /// `PerCpuHashMap<u32, u64>` keyed by [`super::port_index`]: denied `bind()` calls.
    pub const BIND_DENIED: &str = "GUARD_BINDDENY";
    /// `PerCpuHashMap<u32, ConnStats>` keyed by [`super::conn_key`]: TCP connections
    /// established and closed per local port (inbound) and per remote port (outbound).
    pub const CONN_STATS: &str = "GUARD_CONNSTAT";
    /// `PerCpuHashMap<u32, RttHist>` keyed by [`super::conn_key`]: smoothed-RTT histogram.
    pub const RTT_HIST: &str = "GUARD_RTT";
    /// `LruHashMap<u64, u32>`: socket cookie to [`super::conn_key`], for sockets guard saw
    /// established (so each close is counted once, for the right port).
    pub const SOCKETS: &str = "GUARD_SOCKS";

    /// Every map the loader must find in the object.
    pub const ALL: [&str; 29] = [
        ACTIVE,
        SRC_TABLE_V6,
        SRC_DIRECT16,
        SRC_DIRECT24,
        SRC_DIRECT_RULES,
        DENY_TALLY,
        FLOW_SEEN,
        SRC_ZONES,
        PROTOS,
        LISTEN,
        BIND_DENIED,
        CONN_STATS,
        RTT_HIST,
        SOCKETS,
        CONFIG,
        PORTS,
        PORT_SLOTS,
        CLASS_LENS,
        SRC_HASH_V4,
        SRC_HASH_V6,
        SRC_V4,
        SRC_V6,
        RULE_STATS,
        REASONS,
        FLOWS,
        PORT_STATS,
        EVENTS,
        EVENT_BUCKETS,
        EVENT_STATS,
    ];
    /// Maps whose contents outlive a policy and the daemon: counters, flows, sockets, the
    /// event ring and limiter. Every load shares them through their pins; the policy maps
    /// (active, config, ports, classes, sources, listen, slots) belong to one loaded
    /// instance of the programs, which keeps them across policy changes (generations).
    pub const STATE: [&str; 13] = [
        RULE_STATS,
        DENY_TALLY,
        FLOW_SEEN,
        REASONS,
        PORT_STATS,
        EVENT_STATS,
        FLOWS,
        BIND_DENIED,
        CONN_STATS,
        RTT_HIST,
        SOCKETS,
        EVENTS,
        EVENT_BUCKETS,
    ];
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// The XDP ingress filter.
    pub const XDP_INGRESS: &str = "guard_xdp_ingress";
    /// The TC egress flow recorder.
    pub const TC_EGRESS: &str = "guard_tc_egress";
    /// An XDP program that only returns XDP_PASS: the benchmark floor.
    pub const XDP_FLOOR: &str = "guard_xdp_floor";
    /// cgroup `bind()` hooks enforcing `[listen]`.
    pub const BIND4: &str = "guard_bind4";
    pub const BIND6: &str = "guard_bind6";
    /// cgroup `connect()` and UDP `sendmsg()` hooks enforcing `[[egress]]`.
    pub const CONNECT4: &str = "guard_connect4";
    pub const CONNECT6: &str = "guard_connect6";
    pub const SENDMSG4: &str = "guard_sendmsg4";
    pub const SENDMSG6: &str = "guard_sendmsg6";
    /// cgroup sock_ops connection accounting.
    pub const SOCK_OPS: &str = "guard_sock_ops";
    /// cgroup `socket()` hook: UDP-Lite sockets, which the kernel's connect hook never sees.
    pub const SOCK_CREATE: &str = "guard_sock_create";
}

/// Whole-policy mode, in [`GuardConfig::mode`].
pub const MODE_UNSET: u32 = 0;
pub const MODE_ENFORCE: u32 = 1;
pub const MODE_AUDIT: u32 = 2;

/// A verdict a rule (or the default) asks for, in [`RuleRef::action`] and
/// [`GuardConfig::default_action`].
pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;
/// Deny, but only count and report it ("would drop"); the packet passes.
pub const ACTION_AUDIT: u32 = 3;

/// Rule index of the policy default (packets no rule matched).
pub const RULE_DEFAULT: u32 = 0;
/// Rule index of the failsafe (anti-lockout) ports.
pub const RULE_FAILSAFE: u32 = 1;
/// Rule index of the egress default (connections no `[[egress]]` rule matches: allowed).
pub const RULE_EGRESS_DEFAULT: u32 = 3;
/// Index of the first `[[ingress]]` rule; ingress rules follow in file order, then the
/// `[[egress]]` rules.
pub const RULE_FIRST_POLICY: u32 = 4;
/// Rule index of replies to flows the host started (passed whatever the policy says).
pub const RULE_REPLY: u32 = 2;
/// Default capacity of the per-rule counters (the loader may raise it).
pub const MAX_RULES: u32 = 4096;
/// Default capacity of each source trie (the loader may raise it).
pub const MAX_SRC_ENTRIES: u32 = 65536;

/// Protocol slot in [`maps::PORTS`] (and the other per-port arrays, which have only these).
pub const PROTO_IDX_TCP: u32 = 0;
pub const PROTO_IDX_UDP: u32 = 1;
/// Egress protocol slots, only in [`maps::PORTS`]: `[[egress]]` rules by destination port.
pub const PROTO_IDX_EGRESS_TCP: u32 = 2;
pub const PROTO_IDX_EGRESS_UDP: u32 = 3;
/// Entries in [`maps::PORTS`]: ingress and egress slots.
pub const POLICY_PORTS_LEN: u32 = 4 * 65536;
/// Entries in [`maps::PORTS`].
pub const PORTS_LEN: u32 = 2 * 65536;
/// Flag in a [`maps::PORTS`] value: the port is a failsafe port (always passes).
pub const PORT_FAILSAFE: u32 = 1 << 31;
/// Flag in a [`maps::PORTS`] value: every source resolves to one rule, encoded in the value
/// itself (action in [`PORT_ACTION_SHIFT`], rule index in [`PORT_VALUE_MASK`]); no trie
/// lookup is needed.
pub const PORT_DIRECT: u32 = 1 << 30;
pub const PORT_ACTION_SHIFT: u32 = 28;
pub const PORT_ACTION_MASK: u32 = 0b11 << PORT_ACTION_SHIFT;
/// Without [`PORT_DIRECT`]: the port class (0 = no rule names the port). With it: the rule.
pub const PORT_VALUE_MASK: u32 = (1 << PORT_ACTION_SHIFT) - 1;
/// Kept for readers of the class part.
pub const PORT_CLASS_MASK: u32 = PORT_VALUE_MASK;

/// Entries of [`maps::PROTOS`] per generation: one per IP protocol number.
pub const PROTOS_LEN: u32 = 256;

/// IP protocol numbers the programs treat specially.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// UDP-Lite: judged exactly like UDP (same ports, same rules, same `[listen]` entries).
pub const IPPROTO_UDPLITE: u8 = 136;
/// Multipath TCP sockets (`sk_protocol` 262): judged like TCP at the socket hooks.
pub const IPPROTO_MPTCP: u32 = 262;
/// ICMP echo request types (IPv4, IPv6): the only ICMP messages a policy judges.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;

/// The ingress protocol slot ([`PROTO_IDX_TCP`] or [`PROTO_IDX_UDP`]) of an IP protocol
/// judged by ports, or `None` for protocols judged as a whole ([`maps::PROTOS`]).
#[inline(always)]
pub const fn port_proto_idx(ip_proto: u32) -> Option<u32> {
    match ip_proto {
        6 | IPPROTO_MPTCP => Some(PROTO_IDX_TCP),
        17 | 136 => Some(PROTO_IDX_UDP),
        _ => None,
    }
}

/// The IP protocol an event names for a socket's `sk_protocol`: MPTCP (262, which does not
/// fit a byte) is TCP on the wire.
#[inline(always)]
pub const fn event_proto(sk_protocol: u32) -> u8 {
    if sk_protocol == IPPROTO_MPTCP {
        IPPROTO_TCP
    } else {
        sk_protocol as u8
    }
}

/// Index into [`maps::PORTS`] for a protocol slot and destination port.
#[inline(always)]
pub const fn port_index(proto_idx: u32, port: u16) -> u32 {
    (proto_idx << 16) | port as u32
}

/// The (protocol slot, port) of a [`port_index`] (also the key of [`maps::BIND_DENIED`]).
pub const fn port_index_parts(index: u32) -> (u32, u16) {
    (index >> 16, index as u16)
}

/// `AF_INET6`, as a socket's `family` holds it.
pub const AF_INET6: u32 = 10;

/// Policy generations the policy maps hold (see [`maps`]).
pub const GENERATIONS: u32 = 2;

/// Index of entry `index` of generation `generation` in a double-buffered array whose
/// generations have `len` entries each.
#[inline(always)]
pub const fn gen_index(generation: u32, len: u32, index: u32) -> u32 {
    (generation & 1) * len + index
}

/// A transport judged by port: TCP (MPTCP counts as TCP) or UDP (UDP-Lite counts as UDP).
/// Named `tcp` and `udp` in policies, JSON and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "user", serde(rename_all = "lowercase"))]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The ports-array slot of inbound rules of this transport.
    pub const fn proto_idx(self) -> u32 {
        match self {
            Proto::Tcp => PROTO_IDX_TCP,
            Proto::Udp => PROTO_IDX_UDP,
        }
    }
}

/// Compares with the name, so `proto == "tcp"` reads as it does in JSON.
impl PartialEq<&str> for Proto {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl core::fmt::Display for Proto {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counter indices in [`maps::REASONS`]: why packets were dropped (or, in audit mode,
/// would have been), plus packets passed without a policy decision.
pub const REASON_POLICY: u32 = 0;
/// A header was cut short or inconsistent (IPv4 IHL < 5, truncated TCP/UDP, ...).
pub const REASON_MALFORMED: u32 = 1;
/// More VLAN tags or IPv6 extension headers than the parser walks.
pub const REASON_UNSUPPORTED: u32 = 2;
/// IPv4/IPv6 fragments after the first: no ports to judge, passed (see docs/policy.md).
pub const REASON_FRAGMENT_PASSED: u32 = 3;
/// Frames that are not IP (ARP, LLDP, ...): passed, below the policy.
pub const REASON_NOT_IP: u32 = 4;
/// Packets the policy would drop that passed as replies to flows the host started.
pub const REASON_REPLY_PASSED: u32 = 5;
/// ICMP and ICMPv6 messages other than echo requests (errors, path MTU, neighbour
/// discovery): passed, so the network keeps working under default deny.
pub const REASON_ICMP_PASSED: u32 = 6;
/// Packets (and cgroup hook calls) that arrived with no active policy: passed, the
/// anti-lockout choice. The loader writes a policy before it attaches, so this stays 0 unless
/// the config map was zeroed or corrupted behind guard's back.
pub const REASON_UNCONFIGURED: u32 = 7;
/// Packets (and connects) whose rule entry held an action other than allow, audit or deny (a
/// corrupt or zeroed entry): judged as deny, so the kernel fails closed.
pub const REASON_BAD_ACTION: u32 = 8;
pub const REASONS_LEN: u32 = 9;

/// Counter indices in [`maps::EVENT_STATS`].
pub const EVENTS_SENT: u32 = 0;
/// Not sent: the source's rate limit was exhausted (each is also reported, as a count, in
/// the source's next event).
pub const EVENTS_SUPPRESSED: u32 = 1;
/// Not sent: the ring buffer was full.
pub const EVENTS_LOST: u32 = 2;
pub const EVENT_STATS_LEN: u32 = 3;

/// Capacity of [`maps::FLOWS`] (the loader may change it).
pub const MAX_FLOWS: u32 = 65536;
/// Slots of [`maps::PORT_STATS`]. Slot [`PORT_SLOT_OTHER_TCP`] and [`PORT_SLOT_OTHER_UDP`]
/// count the ports the policy does not name (bounded memory and metric cardinality, whatever
/// a port scan does); the ports the policy names get slots from [`PORT_SLOT_FIRST_NAMED`].
pub const MAX_PORT_SLOTS: u32 = 4096;
pub const PORT_SLOT_OTHER_TCP: u32 = PROTO_IDX_TCP;
pub const PORT_SLOT_OTHER_UDP: u32 = PROTO_IDX_UDP;
pub const PORT_SLOT_FIRST_NAMED: u32 = 2;
/// Capacity of [`maps::SOCKETS`]: established TCP sockets tracked for close and RTT.
pub const MAX_SOCKETS: u32 = 65536;
/// Capacity of [`maps::EVENT_BUCKETS`].
pub const MAX_EVENT_SOURCES: u32 = 16384;
/// Size of [`maps::EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// A flow's timestamp is rewritten on egress only when older than this, to keep the egress
/// cost at one lookup for most packets.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// The window of the per-CPU event budget (in [`maps::DENY_TALLY`]).
pub const EVENT_BUDGET_WINDOW_NS: u64 = 100_000_000;
/// The least number of denied packets per CPU and window that go to the per-source event
/// limiter ([`GuardConfig::event_budget`]); the rest of the window's denies are counted as
/// suppressed without it. 2 560 per second per CPU.
pub const EVENT_BUDGET_PER_WINDOW: u64 = 256;
/// Over budget, the clock is read once per this many denies to see whether the window
/// ended (a power of two).
pub const EVENT_BUDGET_CLOCK_EVERY: u64 = 64;

/// Value of [`maps::DENY_TALLY`]: one CPU's policy denies and suppressed events, and its
/// event budget. The fields a flood from one source touches on every drop come first (64
/// bytes: one or two cache lines, as the kernel places the value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyTally {
    /// The key the per-source limiter last held back on this CPU (a flooding source):
    /// its next [`EVENT_HEAVY_SKIPS`] denies are held back here, at the cost of a compare,
    /// and neither touch the limiter nor spend the budget, so a flood from one source
    /// leaves the budget to every other source. Four words, not 16 bytes: the compare on
    /// every held-back deny is then four word loads, where byte-aligned bytes took 32 byte
    /// loads and their shifts.
    pub heavy: [u32; 4],
    /// Denies of `heavy` still to hold back before the limiter is asked again (0: none).
    pub heavy_skips: u64,
    /// Denies of `heavy` held back here since its last look at the limiter: added to its
    /// bucket's count then, so its next event reports every deny held back.
    pub heavy_held: u64,
    /// Events not sent because a limit held them back (every stage: the heavy source, the
    /// budget, the per-source limiter): this CPU's part of the `EVENTS_SUPPRESSED` count.
    pub suppressed: u64,
    /// Packets the policy denied (dropped, or passed in audit mode or by an audit rule):
    /// this CPU's part of the `REASON_POLICY` count.
    pub policy: u64,
    /// Packets the policy default denied: this CPU's part of the [`RULE_DEFAULT`] counter
    /// (whose [`maps::RULE_STATS`] entry counts the packets the default passes, and what
    /// layout 2's programs counted).
    pub default_packets: u64,
    /// The bytes of `default_packets`.
    pub default_bytes: u64,
    /// Denies that reached the limiter code in the current window, the budgeted ones and
    /// those past the budget.
    pub used: u64,
    /// Start of the current window (ns, `bpf_ktime_get_coarse_ns`).
    pub window_start_ns: u64,
}

/// How many denies of a source the limiter just held back are held back without asking it
/// again: at a flood's rate the limiter still sees the source often enough to let its
/// rate of events through.
pub const EVENT_HEAVY_SKIPS: u64 = 64;

/// Bytes per entry of [`maps::FLOW_SEEN`].
pub const FLOW_SEEN_CHUNK: usize = 4096;
/// Entries of [`maps::FLOW_SEEN`]: 2^18 flags in all (256 KiB).
pub const FLOW_SEEN_CHUNKS: u32 = 64;

/// The flag of a flow in [`maps::FLOW_SEEN`]: (entry, byte). One multiplicative hash of
/// the address's last 8 bytes (an IPv4 address whole, an IPv6 interface identifier), the
/// ports and the protocol: cheap enough for every packet of a flood (the XDP filter computes
/// it for each packet no rule passes, from the packet's address words: [`flow_seen_slot_of`]).
/// The TC egress program and the XDP filter compute it from the same key (the egress key of an outbound packet
/// equals the ingress key of its reply). Keys that differ only in the address's first 8
/// bytes share a flag: a shared flag costs a flow lookup, never a verdict.
#[inline(always)]
pub const fn flow_seen_slot(key: &FlowKey) -> (u32, usize) {
    let r = &key.remote;
    flow_seen_slot_of(
        u32::from_ne_bytes([r[8], r[9], r[10], r[11]]),
        u32::from_ne_bytes([r[12], r[13], r[14], r[15]]),
        key.local_port,
        key.remote_port,
        key.proto,
    )
}

/// [`flow_seen_slot`] of a key given by its parts: the remote address's third and fourth
/// 32-bit words (its bytes 8..12 and 12..16 in memory order), the ports and the protocol.
/// The XDP filter hashes a packet's words without building the key: only the rare packet
/// whose flag is set needs the key, for the flow lookup.
#[inline(always)]
pub const fn flow_seen_slot_of(
    high: u32,
    low: u32,
    local_port: u16,
    remote_port: u16,
    proto: u8,
) -> (u32, usize) {
    let ports = (local_port as u32) << 16 | remote_port as u32;
    let x = ((low ^ high.rotate_left(13)) as u64) << 32 | (ports ^ (proto as u32) << 24) as u64;
    let slot = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FLOW_SEEN_BITS)) as u32;
    (
        slot / FLOW_SEEN_CHUNK as u32,
        (slot % FLOW_SEEN_CHUNK as u32) as usize,
    )
}

/// log2 of the flags in [`maps::FLOW_SEEN`].
const FLOW_SEEN_BITS: u32 = 18;
const _: () = assert!(1 << FLOW_SEEN_BITS == FLOW_SEEN_CHUNKS as usize * FLOW_SEEN_CHUNK);

/// Entries of [`maps::SRC_ZONES`] per generation: 1 024 words of 64 bits for IPv4, then as
/// many for IPv6.
pub const SRC_ZONES_LEN: u32 = 2 * 1024;

/// Entries of [`maps::SRC_DIRECT16`] per generation: one per first 16 bits of an IPv4
/// address.
pub const DIRECT16_LEN: u32 = 1 << 16;
/// Entries of [`maps::SRC_DIRECT24`] per generation: /16s that may hold longer prefixes and
/// still be judged by the direct tables (others are [`DIRECT_LOOKUP`]).
pub const DIRECT_BLOCKS: u32 = 256;
/// Entries of [`maps::SRC_DIRECT_RULES`] per generation (rows times the row width): a
/// policy whose rows need more is judged by the hash lookups alone.
pub const DIRECT_RULES_LEN: u32 = 1 << 18;
/// Direct-table value: no source prefix of the generation holds this region (the policy
/// default applies without a lookup).
pub const DIRECT_NONE: u32 = 0;
/// Direct-table value: look the source up in the hashes and tries (a region holding
/// prefixes longer than 24 bits, or a policy too large for the tables).
pub const DIRECT_LOOKUP: u32 = 1;
/// Direct-table flag: the rest of the value is the first entry of a row of
/// [`maps::SRC_DIRECT_RULES`] (within the generation).
pub const DIRECT_ROW: u32 = 1 << 31;
/// [`maps::SRC_DIRECT16`] flag: the rest of the value is a block of [`maps::SRC_DIRECT24`]
/// (within the generation).
pub const DIRECT_BLOCK: u32 = 1 << 30;
/// The index part of a [`DIRECT_ROW`] or [`DIRECT_BLOCK`] value.
pub const DIRECT_INDEX_MASK: u32 = DIRECT_BLOCK - 1;

/// Slots per bucket of [`maps::SRC_TABLE_V6`].
pub const TABLE_V6_WAYS: usize = 4;
/// Largest [`GuardConfig::table_v6_bits`] the kernel accepts.
pub const TABLE_V6_MAX_BITS: u32 = 20;

/// A slot of [`maps::SRC_TABLE_V6`]: a [`maps::SRC_HASH_V6`] entry, its masked address as
/// two big-endian halves. `class` 0: empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcSlotV6 {
    pub class: u32,
    pub prefix_len: u32,
    pub hi: u64,
    pub lo: u64,
    pub rule: RuleRef,
}

/// Value of [`maps::SRC_TABLE_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcBucketV6(pub [SrcSlotV6; TABLE_V6_WAYS]);

/// The two buckets (within a generation of `2^bits` buckets, `bits` 1 to
/// [`TABLE_V6_MAX_BITS`]) where (class, prefix length, masked address as big-endian
/// halves) may be in [`maps::SRC_TABLE_V6`]: two multiplicative hashes of one 64-bit fold,
/// their top bits. Kernel and controller compute them alike.
#[inline(always)]
pub const fn table_v6_buckets(
    class: u32,
    prefix_len: u32,
    hi: u64,
    lo: u64,
    bits: u32,
) -> (u32, u32) {
    let x = hi ^ lo.rotate_left(29) ^ ((class as u64) << 8 | prefix_len as u64).rotate_left(45);
    let shift = 64 - bits;
    (
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as u32,
        (x.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> shift) as u32,
    )
}

/// Value of [`maps::SRC_DIRECT24`]: one direct-table value per /24 of a /16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirectBlock(pub [u32; 256]);

impl Default for DirectBlock {
    fn default() -> Self {
        Self([DIRECT_NONE; 256])
    }
}

/// The word (index within a generation) and bit of [`maps::SRC_ZONES`] for addresses whose
/// first 16 bits are `top16` (IPv4: the first two octets; IPv6: the first group).
#[inline(always)]
pub const fn src_zone_bit(v4: bool, top16: u16) -> (u32, u32) {
    let family = if v4 { 0 } else { 1024 };
    (family + (top16 as u32 >> 6), top16 as u32 & 63)
}

/// Event kinds, in [`Event::kind`].
pub const EVENT_DROP: u32 = 1;
pub const EVENT_AUDIT_DROP: u32 = 2;
/// A `bind()` to a port `[listen]` does not allow (audit mode: allowed, reported).
pub const EVENT_BIND_DENIED: u32 = 3;
/// A `connect()` or UDP `sendmsg()` an `[[egress]]` rule denies (audit mode: allowed).
pub const EVENT_CONNECT_DENIED: u32 = 4;
/// Flag in [`Event::flags`]: audit mode, nothing was denied.
pub const EVENT_FLAG_AUDIT: u16 = 1;

/// Direction part of a [`conn_key`].
pub const CONN_INBOUND: u32 = 0;
pub const CONN_OUTBOUND: u32 = 1;
/// Buckets of an [`RttHist`]: bucket `i` counts smoothed RTTs in `[2^i, 2^(i+1))` µs
/// (bucket 0 also counts 0 µs; the last bucket everything from 2^(RTT_BUCKETS-1) µs on).
pub const RTT_BUCKETS: usize = 24;

/// Key of [`maps::CONN_STATS`] and [`maps::RTT_HIST`]: direction and port (the local port
/// for inbound connections, the remote port for outbound ones).
#[inline(always)]
pub const fn conn_key(direction: u32, port: u16) -> u32 {
    (direction << 16) | port as u32
}

/// The (direction, port) of a [`conn_key`].
pub const fn conn_key_parts(key: u32) -> (u32, u16) {
    (key >> 16, key as u16)
}

/// The entry of [`maps::CONFIG`] (one per generation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// `MODE_*`. `MODE_UNSET` only exists before the loader writes the entry, which it does
    /// before attaching; the program passes everything in that state.
    pub mode: u32,
    /// `ACTION_ALLOW` or `ACTION_DENY` for packets no rule matches.
    pub default_action: u32,
    /// Per-source event rate limit (GCRA): one event per `event_interval_ns` on average;
    /// 0 turns events off.
    pub event_interval_ns: u64,
    /// How far ahead of the rate a source may run: `(burst - 1) * event_interval_ns`.
    pub event_tolerance_ns: u64,
    /// Replies pass for this long after the host last sent on a TCP flow.
    pub tcp_flow_timeout_ns: u64,
    /// Replies pass for this long after the host last sent on a UDP flow.
    pub udp_flow_timeout_ns: u64,
    /// 1 when `[listen]` is present: `bind()` outside it is denied (audit: reported).
    pub listen_enforced: u32,
    /// 1 when `[[egress]]` denies (or audits) some UDP destinations: then UDP-Lite sockets
    /// may not be created in the cgroup (enforce mode), because the kernel runs no connect
    /// hook for UDP-Lite, so a connected UDP-Lite socket could not be judged.
    pub udplite_denied: u32,
    /// Denies per CPU and [`EVENT_BUDGET_WINDOW_NS`] that go to the per-source limiter
    /// ([`maps::DENY_TALLY`]): at least [`EVENT_BUDGET_PER_WINDOW`], more when the
    /// `[events]` rate and burst ask for more.
    pub event_budget: u64,
    /// The class id of the first entry of a row of [`maps::SRC_DIRECT_RULES`]: the
    /// generation's class offset (the controller numbers each generation's classes apart).
    pub direct_class_offset: u32,
    /// Entries per row of [`maps::SRC_DIRECT_RULES`]; 0 when the generation has no rows.
    pub direct_width: u32,
    /// log2 of the buckets of [`maps::SRC_TABLE_V6`] per generation; 0: no table.
    pub table_v6_bits: u32,
    pub _pad: u32,
}

/// The entry of [`maps::ACTIVE`]. The programs judge by `generation`, unless `deadline_ns`
/// is set and has passed (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC): then by `fallback`.
/// That is commit-confirm kept by the kernel: an unconfirmed policy ends at its deadline
/// even when no daemon is left to roll it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveGeneration {
    pub generation: u32,
    pub fallback: u32,
    /// 0: no deadline (the policy is confirmed).
    pub deadline_ns: u64,
}

impl ActiveGeneration {
    /// The generation the programs judge by at monotonic time `now_ns`.
    #[inline(always)]
    pub const fn in_force(&self, now_ns: u64) -> u32 {
        if self.deadline_ns != 0 && now_ns >= self.deadline_ns {
            self.fallback & 1
        } else {
            self.generation & 1
        }
    }
}

/// Value of the source tries: which rule matched and what it asks for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule: u32,
    pub action: u32,
}

/// Key data of [`maps::SRC_V4`]. The port class comes first, big-endian, so a prefix length
/// of `32 + n` matches the whole class and the first `n` bits of the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcKeyV4 {
    pub class: [u8; 4],
    pub addr: [u8; 4],
}

/// Key data of [`maps::SRC_V6`]; see [`SrcKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcKeyV6 {
    pub class: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix lengths a class may use and still be judged by hash lookups (one per length,
/// longest first); a class with more uses the LPM tries.
pub const MAX_CLASS_PREFIX_LENS: usize = 8;
/// [`ClassLens`] count meaning "use the LPM trie for this family".
pub const CLASS_LENS_USE_TRIE: u8 = 0xff;
/// Default capacity of the class-lengths array and of each source hash (the loader may
/// change them).
pub const MAX_CLASSES: u32 = 4096;

/// Value of [`maps::CLASS_LENS`]: the distinct source prefix lengths of a class, longest
/// first, per family; or [`CLASS_LENS_USE_TRIE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassLens {
    pub v4_count: u8,
    pub v6_count: u8,
    pub v4: [u8; MAX_CLASS_PREFIX_LENS],
    pub v6: [u8; MAX_CLASS_PREFIX_LENS],
    pub _pad: [u8; 6],
}

/// Key of [`maps::SRC_HASH_V4`]; `addr` is masked to `prefix_len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcHashKeyV4 {
    pub class: u32,
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of [`maps::SRC_HASH_V6`]; `addr` is masked to `prefix_len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcHashKeyV6 {
    pub class: u32,
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// Bits of a source key taken by the port class.
pub const CLASS_BITS: u32 = 32;

/// Key of [`maps::FLOWS`], from the host's point of view. IPv4 addresses are stored
/// IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// IPPROTO_TCP, IPPROTO_UDP or IPPROTO_UDPLITE.
    pub proto: u8,
    /// Padding as two fields, not `[u8; 3]`: zeroing an array of 3 bytes compiles to an
    /// out-of-line `memset` call in BPF, on the XDP filter's hot path.
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Value of [`maps::FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) when the host last sent on the flow (refreshed at most every
    /// [`FLOW_REFRESH_NS`]).
    pub last_egress_ns: u64,
}

/// Value of [`maps::PORT_STATS`] (per CPU, per slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// TCP: SYN without ACK. UDP: every datagram judged by the policy.
    pub attempted: u64,
    /// Attempts dropped (enforce mode; audit mode drops nothing).
    pub rejected: u64,
}

/// Value of [`maps::EVENT_BUCKETS`]: a GCRA rate limiter per source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    /// Theoretical arrival time of the next allowed event (ns, `bpf_ktime_get_coarse_ns`).
    pub tat_ns: u64,
    /// Events suppressed since the last one sent for this source.
    pub suppressed: u32,
    pub _pad: u32,
}

/// One deny (or audit deny) event in [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE: cheap, jiffy resolution).
    pub ts_ns: u64,
    /// `EVENT_*`.
    pub kind: u32,
    /// The rule index (packet events); 0 for socket events.
    pub rule: u32,
    /// IPv4 addresses IPv4-mapped; see `family`.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6 (4 also for IPv4-mapped IPv6 addresses, which are judged as IPv4).
    pub family: u8,
    /// The IP protocol number (ports are 0 for protocols without them).
    pub proto: u8,
    /// `EVENT_FLAG_*`.
    pub flags: u16,
    pub ifindex: u32,
    /// Events from this source suppressed by the rate limit since its previous event.
    pub suppressed: u32,
    /// Socket events: the process (thread group id) and its command name.
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// Value of [`maps::CONN_STATS`] (per CPU). Active connections = established - closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub established: u64,
    pub closed: u64,
}

/// Value of [`maps::RTT_HIST`] (per CPU): counts of smoothed-RTT samples per log2 bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttHist {
    pub buckets: [u64; RTT_BUCKETS],
}

/// Per-rule counters (one per CPU in [`maps::RULE_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<GuardConfig>() == 72);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);
const _: () = assert!(core::mem::size_of::<ClassLens>() == 24);
const _: () = assert!(core::mem::size_of::<SrcHashKeyV4>() == 12);
const _: () = assert!(core::mem::size_of::<SrcHashKeyV6>() == 24);
const _: () = assert!(core::mem::size_of::<FlowState>() == 8);
const _: () = assert!(core::mem::size_of::<PortStats>() == 16);
const _: () = assert!(core::mem::size_of::<EventBucket>() == 16);
const _: () = assert!(core::mem::size_of::<DenyTally>() == 80);
const _: () = assert!(core::mem::size_of::<Event>() == 88);
const _: () = assert!(core::mem::size_of::<ConnStats>() == 16);
const _: () = assert!(core::mem::size_of::<RttHist>() == 8 * RTT_BUCKETS);
const _: () = assert!(core::mem::size_of::<RuleRef>() == 8);
const _: () = assert!(core::mem::size_of::<SrcKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<SrcKeyV6>() == 20);
const _: () = assert!(core::mem::size_of::<RuleStats>() == 16);
const _: () = assert!(core::mem::size_of::<ActiveGeneration>() == 16);
const _: () = assert!(core::mem::size_of::<DirectBlock>() == 1024);
const _: () = assert!(core::mem::size_of::<SrcSlotV6>() == 32);
const _: () = assert!(core::mem::size_of::<SrcBucketV6>() == 32 * TABLE_V6_WAYS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, without padding
    // (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::GuardConfig {}
    unsafe impl aya::Pod for super::ActiveGeneration {}
    unsafe impl aya::Pod for super::RuleRef {}
    unsafe impl aya::Pod for super::SrcKeyV4 {}
    unsafe impl aya::Pod for super::SrcKeyV6 {}
    unsafe impl aya::Pod for super::RuleStats {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ClassLens {}
    unsafe impl aya::Pod for super::SrcHashKeyV4 {}
    unsafe impl aya::Pod for super::SrcHashKeyV6 {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::EventBucket {}
    unsafe impl aya::Pod for super::DenyTally {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::ConnStats {}
    unsafe impl aya::Pod for super::RttHist {}
    unsafe impl aya::Pod for super::DirectBlock {}
    unsafe impl aya::Pod for super::SrcBucketV6 {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{collections::HashSet, vec::Vec};

    fn v4(a: u32, local_port: u16, remote_port: u16) -> FlowKey {
        let mut remote = [0u8; 16];
        remote[10] = 0xff;
        remote[11] = 0xff;
        remote[12..].copy_from_slice(&a.to_be_bytes());
        FlowKey {
            remote,
            local_port,
            remote_port,
            proto: IPPROTO_TCP,
            ..FlowKey::default()
        }
    }

    #[test]
    fn flow_flags_spread_over_the_whole_map() {
        // 20 000 flows of one host to sequential addresses and ports, as a busy client makes:
        // nearly all in flags of their own (2^18 flags: ~4% collide by chance).
        let keys: Vec<FlowKey> = (0..20_000u32)
            .map(|i| v4(0xc612_0000 + i / 7, 40_000 + (i % 7) as u16, 443))
            .collect();
        let slots: HashSet<(u32, usize)> = keys.iter().map(flow_seen_slot).collect();
        assert!(slots.len() > 19_000, "{} distinct of 20 000", slots.len());
        for &(chunk, byte) in &slots {
            assert!(chunk < FLOW_SEEN_CHUNKS && byte < FLOW_SEEN_CHUNK);
        }
        let chunks: HashSet<u32> = slots.iter().map(|&(c, _)| c).collect();
        assert_eq!(chunks.len(), FLOW_SEEN_CHUNKS as usize, "every chunk used");
        // Protocol and ports are part of the key.
        let k = v4(0xc612_0001, 40_000, 443);
        let udp = FlowKey {
            proto: IPPROTO_UDP,
            ..k
        };
        assert_ne!(flow_seen_slot(&k), flow_seen_slot(&udp));
        assert_ne!(
            flow_seen_slot(&k),
            flow_seen_slot(&v4(0xc612_0001, 40_001, 443))
        );
    }

    #[test]
    fn flow_flag_of_parts_is_the_flag_of_the_key() {
        for key in [
            v4(0xc612_0001, 40_000, 443),
            FlowKey {
                remote: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
                local_port: 53,
                remote_port: 5353,
                proto: IPPROTO_UDP,
                ..FlowKey::default()
            },
        ] {
            let r = key.remote;
            let word = |i: usize| u32::from_ne_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
            assert_eq!(
                flow_seen_slot_of(
                    word(8),
                    word(12),
                    key.local_port,
                    key.remote_port,
                    key.proto
                ),
                flow_seen_slot(&key)
            );
        }
    }
}
