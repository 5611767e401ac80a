//! Types and names shared by guard's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the kernel and userspace
//! agree on the byte layout; the size assertions at the bottom keep it that way. Map names
//! are constants: the kernel side names its statics identically, the userspace loader takes
//! every map by these constants and fails loudly when one is missing.
#![no_std]

/// Names of the maps in the eBPF object (at most 15 bytes: the kernel's name limit).
pub mod maps {
    /// `Array<IngressConfig>`, one entry: mode and default action.
    pub const CONFIG: &str = "GUARD_CONFIG";
    /// `Array<u32>`, `2 * 65536` entries indexed by [`super::port_index`]: the port class of
    /// each (protocol, destination port), or'd with [`super::PORT_FAILSAFE`].
    pub const PORTS: &str = "GUARD_PORTS";
    /// `Array<ClassLens>` indexed by port class: the source prefix lengths the class uses.
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
    /// `PerCpuArray<RuleStats>` indexed by rule index.
    pub const RULE_STATS: &str = "GUARD_RULES";
    /// `PerCpuArray<u64>` indexed by the `REASON_*` constants.
    pub const REASONS: &str = "GUARD_REASONS";
    /// `LruHashMap<FlowKey, FlowState>`: flows the host started (recorded on egress), whose
    /// replies pass inbound whatever the policy says.
    pub const FLOWS: &str = "GUARD_FLOWS";
    /// `Array<u32>`, [`super::PORTS_LEN`] entries indexed by [`super::port_index`]: the
    /// counter slot of each (protocol, destination port); 0 means the protocol's "other".
    pub const PORT_SLOTS: &str = "GUARD_PORTSLOT";
    /// `PerCpuArray<PortStats>` indexed by slot: inbound connection attempts and rejections.
    pub const PORT_STATS: &str = "GUARD_PORTSTAT";
    /// `RingBuf` of [`super::Event`]s.
    pub const EVENTS: &str = "GUARD_EVENTS";
    /// `LruHashMap<[u8; 16], EventBucket>`: per-source event rate limit.
    pub const EVENT_BUCKETS: &str = "GUARD_EVBUCKET";
    /// `PerCpuArray<u64>` indexed by the `EVENTS_*` constants.
    pub const EVENT_STATS: &str = "GUARD_EVSTATS";

    /// Every map the loader must find in the object.
    pub const ALL: [&str; 15] = [
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
    /// Maps holding counters or state that must survive a policy change (pinned).
    pub const PINNED: [&str; 5] = [RULE_STATS, REASONS, PORT_STATS, EVENT_STATS, FLOWS];
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// The XDP ingress filter.
    pub const XDP_INGRESS: &str = "guard_xdp_ingress";
    /// The TC egress flow recorder.
    pub const TC_EGRESS: &str = "guard_tc_egress";
    /// An XDP program that only returns XDP_PASS: the benchmark floor.
    pub const XDP_FLOOR: &str = "guard_xdp_floor";
}

/// Whole-policy mode, in [`IngressConfig::mode`].
pub const MODE_UNSET: u32 = 0;
pub const MODE_ENFORCE: u32 = 1;
pub const MODE_AUDIT: u32 = 2;

/// A verdict a rule (or the default) asks for, in [`RuleRef::action`] and
/// [`IngressConfig::default_action`].
pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;
/// Deny, but only count and report it ("would drop"); the packet passes.
pub const ACTION_AUDIT: u32 = 3;

/// Rule index of the policy default (packets no rule matched).
pub const RULE_DEFAULT: u32 = 0;
/// Rule index of the failsafe (anti-lockout) ports.
pub const RULE_FAILSAFE: u32 = 1;
/// Index of the first `[[ingress]]` rule; rules follow in file order.
pub const RULE_FIRST_POLICY: u32 = 3;
/// Rule index of replies to flows the host started (passed whatever the policy says).
pub const RULE_REPLY: u32 = 2;
/// Default capacity of the per-rule counters (the loader may raise it).
pub const MAX_RULES: u32 = 4096;
/// Default capacity of each source trie (the loader may raise it).
pub const MAX_SRC_ENTRIES: u32 = 65536;

/// Protocol slot in [`maps::PORTS`].
pub const PROTO_IDX_TCP: u32 = 0;
pub const PROTO_IDX_UDP: u32 = 1;
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

/// Index into [`maps::PORTS`] for a protocol slot and destination port.
#[inline(always)]
pub const fn port_index(proto_idx: u32, port: u16) -> u32 {
    (proto_idx << 16) | port as u32
}

/// Counter indices in [`maps::REASONS`]: why packets were dropped (or, in audit mode,
/// would have been), plus packets passed without a policy decision.
pub const REASON_POLICY: u32 = 0;
/// A header was cut short or inconsistent (IPv4 IHL < 5, truncated TCP/UDP, ...).
pub const REASON_MALFORMED: u32 = 1;
/// More VLAN tags or IPv6 extension headers than the parser walks.
pub const REASON_UNSUPPORTED: u32 = 2;
/// IPv4/IPv6 fragments after the first: no ports to judge, passed (see the README).
pub const REASON_FRAGMENT_PASSED: u32 = 3;
/// Packets that are not TCP or UDP over IP (ARP, ICMP, ...): passed.
pub const REASON_NOT_TCP_UDP: u32 = 4;
/// Packets the policy would drop that passed as replies to flows the host started.
pub const REASON_REPLY_PASSED: u32 = 5;
pub const REASONS_LEN: u32 = 6;

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
/// Capacity of [`maps::EVENT_BUCKETS`].
pub const MAX_EVENT_SOURCES: u32 = 16384;
/// Size of [`maps::EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// A flow's timestamp is rewritten on egress only when older than this, to keep the egress
/// cost at one lookup for most packets.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// Event kinds, in [`Event::kind`].
pub const EVENT_DROP: u32 = 1;
pub const EVENT_AUDIT_DROP: u32 = 2;

/// The single entry of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressConfig {
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcKeyV4 {
    pub class: [u8; 4],
    pub addr: [u8; 4],
}

/// Key data of [`maps::SRC_V6`]; see [`SrcKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: [u8; 3],
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
    pub rule: u32,
    /// IPv4 addresses IPv4-mapped; see `family`.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u16,
    pub ifindex: u32,
    /// Events from this source suppressed by the rate limit since its previous event.
    pub suppressed: u32,
}

/// Per-rule counters (one per CPU in [`maps::RULE_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<IngressConfig>() == 40);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);
const _: () = assert!(core::mem::size_of::<ClassLens>() == 24);
const _: () = assert!(core::mem::size_of::<SrcHashKeyV4>() == 12);
const _: () = assert!(core::mem::size_of::<SrcHashKeyV6>() == 24);
const _: () = assert!(core::mem::size_of::<FlowState>() == 8);
const _: () = assert!(core::mem::size_of::<PortStats>() == 16);
const _: () = assert!(core::mem::size_of::<EventBucket>() == 16);
const _: () = assert!(core::mem::size_of::<Event>() == 64);
const _: () = assert!(core::mem::size_of::<RuleRef>() == 8);
const _: () = assert!(core::mem::size_of::<SrcKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<SrcKeyV6>() == 20);
const _: () = assert!(core::mem::size_of::<RuleStats>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, without padding
    // (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::IngressConfig {}
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
    unsafe impl aya::Pod for super::Event {}
}
