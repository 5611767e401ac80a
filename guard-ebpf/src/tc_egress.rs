//! The TC egress flow recorder: remembers the TCP, UDP and UDP-Lite flows the host sends on,
//! so the
//! XDP filter can pass their replies under a default-deny policy (outbound connections,
//! DNS-style queries).
//!
//! Verdict: always `TC_ACT_OK`. Egress is never blocked; a packet that cannot be parsed is
//! simply not recorded, and its replies are judged by the policy alone.
//! Cost: one hash lookup per outbound TCP/UDP packet and a byte store (the flow's flag in
//! `GUARD_FLOWSEEN`); a write only for a new flow or when the flow's timestamp is older
//! than `FLOW_REFRESH_NS`.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use guard_common::{FLOW_REFRESH_NS, FlowState, PROTO_IDX_TCP};

use crate::{
    maps::{GUARD_FLOWS, mark_flow_seen},
    packet::{self, Flow, Parsed, TCP_RST},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    if let Ok(Parsed::Flow(flow)) = packet::parse(ctx)
        && flow.has_ports()
    {
        record(&flow);
    }
    TC_ACT_OK
}

#[inline(always)]
fn record(flow: &Flow) {
    // A reset opens nothing.
    if flow.proto_idx == PROTO_IDX_TCP && flow.tcp_flags & TCP_RST != 0 {
        return;
    }
    let key = flow.egress_key();
    // Every time, not only for new flows: the flags are shared by every load, and a flow
    // recorded by an older program (before an upgrade) gets its flag here too.
    mark_flow_seen(&key);
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match GUARD_FLOWS.get_ptr_mut(&key) {
        Some(state) => {
            // SAFETY: a live map value; racing writers store similar timestamps.
            unsafe {
                if now.saturating_sub((*state).last_egress_ns) > FLOW_REFRESH_NS {
                    (*state).last_egress_ns = now;
                }
            }
        }
        None => {
            // The LRU map evicts the least recently used flow when full.
            let _ = GUARD_FLOWS.insert(
                &key,
                &FlowState {
                    last_egress_ns: now,
                },
                0,
            );
        }
    }
}
