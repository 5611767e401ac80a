//! Every map of the object. The statics are named exactly as `guard_common::maps`'s
//! constants, which is how the loader finds them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use guard_common::{
    ClassLens, EVENT_STATS_LEN, EVENTS_BYTES, EventBucket, FlowKey, FlowState, IngressConfig,
    MAX_CLASSES, MAX_EVENT_SOURCES, MAX_FLOWS, MAX_PORT_SLOTS, MAX_RULES, MAX_SRC_ENTRIES,
    PORTS_LEN, PortStats, REASONS_LEN, RuleRef, RuleStats, SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4,
    SrcKeyV6,
};

#[map]
pub static GUARD_CONFIG: Array<IngressConfig> = Array::with_max_entries(1, 0);
#[map]
pub static GUARD_PORTS: Array<u32> = Array::with_max_entries(PORTS_LEN, 0);
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
pub static GUARD_PORTSLOT: Array<u32> = Array::with_max_entries(PORTS_LEN, 0);
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
pub static GUARD_EVSTATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_LEN, 0);

/// Adds one to a per-CPU counter array slot.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(count) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; BPF programs are not preempted on their CPU.
        unsafe { *count += 1 };
    }
}
