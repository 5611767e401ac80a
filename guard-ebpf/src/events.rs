//! Deny events: rate-limited per source in the kernel, then sent through a ring buffer, so
//! a flood from one source costs userspace at most its rate.
//!
//! The limiter is GCRA (one timestamp per source in an LRU map). Suppressed events are
//! counted globally and per source; the source's next event carries its count. A full ring
//! buffer loses the event and counts it. Updates from several CPUs to one source's bucket
//! may race; the limit is then approximate, never a reason to drop or pass a packet.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use guard_common::{
    EVENTS_LOST, EVENTS_SENT, EVENTS_SUPPRESSED, Event, EventBucket, IngressConfig,
};

use crate::{
    maps::{GUARD_EVBUCKET, GUARD_EVENTS, GUARD_EVSTATS, bump},
    packet::Flow,
};

/// Reports a deny (`kind` = `EVENT_DROP` or `EVENT_AUDIT_DROP`) of `flow` by `rule`.
#[inline(always)]
pub fn report(ctx: &XdpContext, flow: &Flow, kind: u32, rule: u32, config: &IngressConfig) {
    let interval = config.event_interval_ns;
    if interval == 0 {
        return;
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let suppressed = match GUARD_EVBUCKET.get_ptr_mut(&flow.src) {
        Some(bucket) => {
            // SAFETY: a live map value; concurrent updates only make the limit approximate.
            let bucket = unsafe { &mut *bucket };
            let tat = if bucket.tat_ns > now {
                bucket.tat_ns
            } else {
                now
            };
            if tat - now > config.event_tolerance_ns {
                bucket.suppressed += 1;
                bump(&GUARD_EVSTATS, EVENTS_SUPPRESSED);
                return;
            }
            bucket.tat_ns = tat + interval;
            let n = bucket.suppressed;
            bucket.suppressed = 0;
            n
        }
        None => {
            let fresh = EventBucket {
                tat_ns: now + interval,
                suppressed: 0,
                _pad: 0,
            };
            // A failed insert only means the next packet from this source starts afresh.
            let _ = GUARD_EVBUCKET.insert(&flow.src, &fresh, 0);
            0
        }
    };
    match GUARD_EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                ts_ns: now,
                kind,
                rule,
                src: flow.src,
                dst: flow.dst,
                sport: flow.sport,
                dport: flow.dport,
                family: if flow.v4 { 4 } else { 6 },
                proto: flow.ip_proto(),
                _pad: 0,
                ifindex: ctx.ingress_ifindex() as u32,
                suppressed,
            });
            entry.submit(0);
            bump(&GUARD_EVSTATS, EVENTS_SENT);
        }
        None => bump(&GUARD_EVSTATS, EVENTS_LOST),
    }
}
