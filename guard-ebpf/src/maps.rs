//! Every map of the object. The statics are named exactly as `guard_common::maps`'s
//! constants, which is how the loader finds them (checked at compile time: `named_as!`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use guard_common::{
    ActiveGeneration, ClassLens, ConnStats, DIRECT_BLOCK, DIRECT_BLOCKS, DIRECT_INDEX_MASK,
    DIRECT_NONE, DIRECT_ROW, DIRECT_RULES_LEN, DIRECT16_LEN, DenyTally, DirectBlock,
    EVENT_STATS_LEN, EVENTS_BYTES, EventBucket, FLOW_SEEN_CHUNK, FLOW_SEEN_CHUNKS, FlowKey,
    FlowState, GENERATIONS, GuardConfig, MAX_CLASSES, MAX_EVENT_SOURCES, MAX_FLOWS, MAX_PORT_SLOTS,
    MAX_RULES, MAX_SOCKETS, MAX_SRC_ENTRIES, MODE_UNSET, POLICY_PORTS_LEN, PORTS_LEN, PROTOS_LEN,
    PortStats, REASONS_LEN, RttHist, RuleRef, RuleStats, SRC_ZONES_LEN, SrcBucketV6, SrcHashKeyV4,
    SrcHashKeyV6, SrcKeyV4, SrcKeyV6, TABLE_V6_MAX_BITS, flow_seen_slot, gen_index, port_index,
    src_zone_bit, table_v6_buckets,
};

#[map]
pub static GUARD_ACTIVE: Array<ActiveGeneration> = Array::with_max_entries(1, 0);
#[map]
pub static GUARD_CONFIG: Array<GuardConfig> = Array::with_max_entries(GENERATIONS, 0);
#[map]
pub static GUARD_PORTS: Array<u32> = Array::with_max_entries(GENERATIONS * POLICY_PORTS_LEN, 0);
#[map]
pub static GUARD_PROTOS: Array<u32> = Array::with_max_entries(GENERATIONS * PROTOS_LEN, 0);
#[map]
pub static GUARD_CLASSLEN: Array<ClassLens> = Array::with_max_entries(MAX_CLASSES, 0);
#[map]
pub static GUARD_SRCH_V4: HashMap<SrcHashKeyV4, RuleRef> =
    HashMap::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map]
pub static GUARD_SRCH_V6: HashMap<SrcHashKeyV6, RuleRef> =
    HashMap::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map]
pub static GUARD_SRC_V4: LpmTrie<SrcKeyV4, RuleRef> = LpmTrie::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map]
pub static GUARD_SRC_V6: LpmTrie<SrcKeyV6, RuleRef> = LpmTrie::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map]
pub static GUARD_RULES: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map]
pub static GUARD_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASONS_LEN, 0);
#[map]
pub static GUARD_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub static GUARD_PORTSLOT: Array<u32> = Array::with_max_entries(GENERATIONS * PORTS_LEN, 0);
#[map]
pub static GUARD_PORTSTAT: PerCpuArray<PortStats> =
    PerCpuArray::with_max_entries(MAX_PORT_SLOTS, 0);
/// Holds `guard_common::Event`s.
#[map]
pub static GUARD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
pub static GUARD_EVBUCKET: LruHashMap<[u8; 16], EventBucket> =
    LruHashMap::with_max_entries(MAX_EVENT_SOURCES, 0);
#[map]
pub static GUARD_LISTEN: Array<u32> = Array::with_max_entries(GENERATIONS * PORTS_LEN, 0);
#[map]
pub static GUARD_BINDDENY: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(PORTS_LEN, BPF_F_NO_PREALLOC);
#[map]
pub static GUARD_CONNSTAT: PerCpuHashMap<u32, ConnStats> =
    PerCpuHashMap::with_max_entries(PORTS_LEN, BPF_F_NO_PREALLOC);
#[map]
pub static GUARD_RTT: PerCpuHashMap<u32, RttHist> =
    PerCpuHashMap::with_max_entries(PORTS_LEN, BPF_F_NO_PREALLOC);
#[map]
pub static GUARD_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);
#[map]
pub static GUARD_EVSTATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_LEN, 0);
#[map]
pub static GUARD_DENYTALLY: PerCpuArray<DenyTally> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static GUARD_FLOWSEEN: Array<[u8; FLOW_SEEN_CHUNK]> =
    Array::with_max_entries(FLOW_SEEN_CHUNKS, 0);
#[map]
pub static GUARD_SRCZONES: Array<u64> = Array::with_max_entries(GENERATIONS * SRC_ZONES_LEN, 0);
/// Resized by the loader (`GuardConfig::table_v6_bits`).
#[map]
pub static GUARD_SRCT6: Array<SrcBucketV6> = Array::with_max_entries(2, 0);
#[map]
pub static GUARD_SRCD16: Array<u32> = Array::with_max_entries(GENERATIONS * DIRECT16_LEN, 0);
#[map]
pub static GUARD_SRCD24: Array<DirectBlock> =
    Array::with_max_entries(GENERATIONS * DIRECT_BLOCKS, 0);
#[map]
pub static GUARD_SRCDRULE: Array<RuleRef> =
    Array::with_max_entries(GENERATIONS * DIRECT_RULES_LEN, 0);

/// What the direct source tables say of an IPv4 peer and a class ([`Policy::direct_v4`]).
pub enum Direct {
    /// No rule of the class holds the peer: the caller's default applies.
    NoRule,
    /// The class's most specific rule holding the peer.
    Rule(RuleRef),
    /// The tables do not know: look the peer up in the hashes and tries.
    Lookup,
}

/// Sets `key`'s flag in [`GUARD_FLOWSEEN`] (a plain byte store: racing writers store the
/// same value).
#[inline(always)]
pub fn mark_flow_seen(key: &FlowKey) {
    let (entry, byte) = flow_seen_slot(key);
    if let Some(chunk) = GUARD_FLOWSEEN.get_ptr_mut(entry) {
        // SAFETY: a live map value; `byte` < FLOW_SEEN_CHUNK by construction.
        unsafe { (*chunk)[byte & (FLOW_SEEN_CHUNK - 1)] = 1 };
    }
}

/// Whether the flag at `slot` ([`guard_common::flow_seen_slot_of`] of a key) in
/// [`GUARD_FLOWSEEN`] is set: false means the host has sent on no flow with that key since
/// the maps were created, so [`GUARD_FLOWS`] cannot hold it.
#[inline(always)]
pub fn flow_maybe_seen((entry, byte): (u32, usize)) -> bool {
    match GUARD_FLOWSEEN.get_ptr(entry) {
        // SAFETY: a live map value; `byte` < FLOW_SEEN_CHUNK by construction.
        Some(chunk) => unsafe { (*chunk)[byte & (FLOW_SEEN_CHUNK - 1)] != 0 },
        // Cannot happen (the index is in range): look the flow up.
        None => true,
    }
}

/// Adds one to a per-CPU hash counter, creating it at 1.
#[inline(always)]
pub fn bump_hash(map: &PerCpuHashMap<u32, u64>, key: u32) {
    match map.get_ptr_mut(&key) {
        // SAFETY: this CPU's value.
        Some(count) => unsafe { *count += 1 },
        None => {
            // Fails only when the map is full (it has a slot per possible key).
            let _ = map.insert(&key, &1, 0);
        }
    }
}

/// This CPU's [`DenyTally`] (`None` cannot happen: index 0 of a one-entry array).
#[inline(always)]
pub fn deny_tally() -> Option<&'static mut DenyTally> {
    // SAFETY: this CPU's value; BPF programs are not preempted on their CPU, and no run
    // holds two references to it.
    GUARD_DENYTALLY
        .get_ptr_mut(0)
        .map(|tally| unsafe { &mut *tally })
}

/// Adds one to a per-CPU counter array slot.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    match map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; BPF programs are not preempted on their CPU.
        Some(count) => unsafe { *count += 1 },
        // Cannot happen (every caller's index is in range).
        None => core::hint::cold_path(),
    }
}

/// The policy generation one program run judges by, read once at its start so that the
/// whole run sees one generation (see `guard_common::maps`), with that generation's config.
pub struct Policy {
    generation: u32,
    pub config: &'static GuardConfig,
}

impl Policy {
    /// `None` before the loader has written a config: the caller's documented "unconfigured"
    /// verdict applies (never seen in practice: the loader writes before it attaches).
    #[inline(always)]
    pub fn current() -> Option<Self> {
        let generation = match GUARD_ACTIVE.get(0) {
            // A commit-confirm window: the clock is read only while one is open.
            Some(active) if active.deadline_ns != 0 => {
                core::hint::cold_path();
                // SAFETY: a helper without preconditions.
                active.in_force(unsafe { bpf_ktime_get_coarse_ns() })
            }
            Some(active) => active.generation & 1,
            None => 0,
        };
        // A branch, not an index: the CPU predicts it (the generation seldom changes) and
        // reads the config's line at once, alongside ACTIVE's, where `get(generation)`
        // waited for ACTIVE's line to arrive first. Under a veth flood both lines miss L1
        // on every packet (docs/performance.md, cost model).
        let config = if generation == 0 {
            GUARD_CONFIG.get(0)
        } else {
            GUARD_CONFIG.get(1)
        }?;
        if config.mode == MODE_UNSET {
            core::hint::cold_path();
            return None;
        }
        Some(Self { generation, config })
    }

    /// The [`guard_common::maps::PORTS`] entry of (protocol slot, port); 0 = no rule.
    #[inline(always)]
    pub fn port_entry(&self, proto_idx: u32, port: u16) -> u32 {
        let index = gen_index(
            self.generation,
            POLICY_PORTS_LEN,
            port_index(proto_idx, port),
        );
        GUARD_PORTS.get(index).copied().unwrap_or(0)
    }

    /// The [`guard_common::maps::PROTOS`] entry of an IP protocol; 0 = no rule.
    #[inline(always)]
    pub fn protocol_entry(&self, ip_proto: u8) -> u32 {
        let index = gen_index(self.generation, PROTOS_LEN, u32::from(ip_proto));
        GUARD_PROTOS.get(index).copied().unwrap_or(0)
    }

    /// The counter slot of (protocol, port); 0 = the protocol's "other" slot.
    #[inline(always)]
    pub fn port_slot(&self, proto_idx: u32, port: u16) -> u32 {
        let index = gen_index(self.generation, PORTS_LEN, port_index(proto_idx, port));
        GUARD_PORTSLOT.get(index).copied().unwrap_or(0)
    }

    /// Whether some IPv6 source prefix of this generation may contain a peer whose first 16
    /// bits are `top16`: false means no class's hash, table or trie can match it. (IPv4
    /// peers are sorted by the direct tables, [`Policy::direct_v4`].)
    #[inline(always)]
    pub fn v6_peer_in_some_zone(&self, top16: u16) -> bool {
        let (word, bit) = src_zone_bit(false, top16);
        let index = gen_index(self.generation, SRC_ZONES_LEN, word);
        match GUARD_SRCZONES.get(index) {
            Some(bits) => bits & (1 << bit) != 0,
            // Cannot happen (the index is in range): consult the sources.
            None => true,
        }
    }

    /// The most specific rule of `class` whose prefix holds the IPv4 address `addr`, from
    /// the direct tables: two or three inlined array reads, no hash. Any value the tables
    /// cannot vouch for (a region they leave to the lookups, an index out of range, a class
    /// outside the rows) answers [`Direct::Lookup`], so the exact path decides: the tables
    /// can only make a verdict faster, never different.
    #[inline(always)]
    pub fn direct_v4(&self, class: u32, addr: u32) -> Direct {
        let index = gen_index(self.generation, DIRECT16_LEN, addr >> 16);
        let Some(&first) = GUARD_SRCD16.get(index) else {
            return Direct::Lookup;
        };
        let value = if first & DIRECT_BLOCK != 0 {
            let block = first & DIRECT_INDEX_MASK;
            if block >= DIRECT_BLOCKS {
                return Direct::Lookup;
            }
            match GUARD_SRCD24.get(gen_index(self.generation, DIRECT_BLOCKS, block)) {
                Some(values) => values.0[((addr >> 8) & 0xff) as usize],
                None => return Direct::Lookup,
            }
        } else {
            first
        };
        if value == DIRECT_NONE {
            return Direct::NoRule;
        }
        if value & DIRECT_ROW == 0 {
            return Direct::Lookup;
        }
        let start = value & DIRECT_INDEX_MASK;
        let column = class.wrapping_sub(self.config.direct_class_offset);
        if column >= self.config.direct_width
            || start >= DIRECT_RULES_LEN
            || column >= DIRECT_RULES_LEN - start
        {
            return Direct::Lookup;
        }
        let index = gen_index(self.generation, DIRECT_RULES_LEN, start + column);
        match GUARD_SRCDRULE.get(index) {
            Some(hit) if hit.action != 0 => Direct::Rule(*hit),
            Some(_) => Direct::NoRule,
            None => Direct::Lookup,
        }
    }

    /// The rule of (class, prefix length, masked address as big-endian halves) from the
    /// generation's two-choice table of IPv6 source entries: `Some(None)` when the table
    /// does not hold it, `None` when the generation has no table or a bucket cannot be read
    /// (the caller asks the hash map, which holds the same entries). Two inlined array
    /// accesses, no call.
    #[inline(always)]
    pub fn table_v6(
        &self,
        class: u32,
        prefix_len: u32,
        hi: u64,
        lo: u64,
    ) -> Option<Option<RuleRef>> {
        let bits = self.config.table_v6_bits;
        if bits == 0 || bits > TABLE_V6_MAX_BITS {
            return None;
        }
        let (first, second) = table_v6_buckets(class, prefix_len, hi, lo, bits);
        for bucket in [first, second] {
            let slots = GUARD_SRCT6.get((self.generation << bits) | bucket)?;
            for slot in &slots.0 {
                if slot.class == class
                    && slot.prefix_len == prefix_len
                    && slot.hi == hi
                    && slot.lo == lo
                {
                    return Some(Some(slot.rule));
                }
            }
        }
        Some(None)
    }

    /// True when `[listen]` allows `bind()` to (protocol, port).
    #[inline(always)]
    pub fn listen_allowed(&self, proto_idx: u32, port: u16) -> bool {
        let index = gen_index(self.generation, PORTS_LEN, port_index(proto_idx, port));
        GUARD_LISTEN.get(index).copied().unwrap_or(0) != 0
    }
}

/// True when two strings are equal (usable in constants).
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Each map static is named exactly as its `guard_common::maps` constant (the name the
/// loader looks it up by), checked at compile time.
macro_rules! named_as {
    ($($map:ident = $name:ident),* $(,)?) => {
        $(const _: () = assert!(
            same(stringify!($map), guard_common::maps::$name),
            concat!("map static ", stringify!($map), " is not named as guard_common::maps::", stringify!($name))
        );)*
    };
}

named_as!(
    GUARD_ACTIVE = ACTIVE,
    GUARD_CONFIG = CONFIG,
    GUARD_PORTS = PORTS,
    GUARD_PROTOS = PROTOS,
    GUARD_CLASSLEN = CLASS_LENS,
    GUARD_SRCH_V4 = SRC_HASH_V4,
    GUARD_SRCH_V6 = SRC_HASH_V6,
    GUARD_SRC_V4 = SRC_V4,
    GUARD_SRC_V6 = SRC_V6,
    GUARD_RULES = RULE_STATS,
    GUARD_REASONS = REASONS,
    GUARD_FLOWS = FLOWS,
    GUARD_PORTSLOT = PORT_SLOTS,
    GUARD_PORTSTAT = PORT_STATS,
    GUARD_EVENTS = EVENTS,
    GUARD_EVBUCKET = EVENT_BUCKETS,
    GUARD_LISTEN = LISTEN,
    GUARD_BINDDENY = BIND_DENIED,
    GUARD_CONNSTAT = CONN_STATS,
    GUARD_RTT = RTT_HIST,
    GUARD_SOCKS = SOCKETS,
    GUARD_EVSTATS = EVENT_STATS,
    GUARD_DENYTALLY = DENY_TALLY,
    GUARD_FLOWSEEN = FLOW_SEEN,
    GUARD_SRCZONES = SRC_ZONES,
    GUARD_SRCD16 = SRC_DIRECT16,
    GUARD_SRCD24 = SRC_DIRECT24,
    GUARD_SRCDRULE = SRC_DIRECT_RULES,
    GUARD_SRCT6 = SRC_TABLE_V6,
);
