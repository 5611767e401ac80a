//! Every map of the object. The statics are named exactly as `guard_common::maps`'s
//! constants, which is how the loader finds them.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use guard_common::{
    EVENT_STATS_LEN, EVENTS_BYTES, EventBucket, FlowKey, FlowState, IngressConfig,
    MAX_EVENT_SOURCES, MAX_FLOWS, MAX_PORT_STATS, MAX_RULES, MAX_SRC_ENTRIES, PORTS_LEN, PortStats,
    REASONS_LEN, RuleRef, RuleStats, SrcKeyV4, SrcKeyV6,
};

#[map]
pub static GUARD_CONFIG: Array<IngressConfig> = Array::with_max_entries(1, 0);
#[map]
pub static GUARD_PORTS: Array<u32> = Array::with_max_entries(PORTS_LEN, 0);
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
/// Allocated on first use: only ports that see traffic take memory.
#[map]
pub static GUARD_PORTSTAT: PerCpuHashMap<u32, PortStats> =
    PerCpuHashMap::with_max_entries(MAX_PORT_STATS, BPF_F_NO_PREALLOC);
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
