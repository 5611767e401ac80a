//! Events: rate-limited per key in the kernel (the source address for packets, the process
//! for socket events), then sent through a ring buffer, so a flood from one source costs
//! userspace at most its rate.
//!
//! In front of it, two cheap stages in this CPU's [`DenyTally`] (which also counts the
//! suppressed events, the policy denies and the policy default's denies, so a flood's drop
//! by the default does all of its bookkeeping in one value). First, the source the limiter last
//! held back on this CPU: its next `EVENT_HEAVY_SKIPS` denies are held back after one
//! compare (a flood from one source costs a compare, and spends nothing of the budget).
//! Then a per-CPU budget: each CPU sends at most `GuardConfig::event_budget` denies per
//! `EVENT_BUDGET_WINDOW_NS` to the limiter (a flood from many sources); the rest of the window's denies are
//! counted as suppressed after one inlined array access, without the clock or the LRU
//! lookup, so a flood costs little more than the drop itself. Over budget the clock is read
//! on the first deny and then once per `EVENT_BUDGET_CLOCK_EVERY`, to notice the window's
//! end.
//!
//! The limiter is GCRA (one timestamp per key in an LRU map). Suppressed events are counted
//! globally (exactly, whichever stage held them back) and, by the limiter, per key; the
//! key's next event carries its count. A full ring buffer loses the event and counts it.
//! Updates from several CPUs to one key's bucket may race; the limit is then approximate,
//! never a reason to drop or pass a packet.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use guard_common::{
    DenyTally, EVENT_BUDGET_CLOCK_EVERY, EVENT_BUDGET_WINDOW_NS, EVENT_HEAVY_SKIPS, EVENTS_LOST,
    EVENTS_SENT, Event, EventBucket, GuardConfig,
};

use crate::{
    maps::{GUARD_EVBUCKET, GUARD_EVENTS, GUARD_EVSTATS, bump, deny_tally},
    packet::{Addr, Flow, addr_bytes},
};

/// Reports a packet deny (`kind` = `EVENT_DROP` or `EVENT_AUDIT_DROP`) of `flow` by `rule`,
/// limited per source address; `tally` is this CPU's ([`deny_tally`]).
#[inline(always)]
pub fn report_packet(
    ctx: &XdpContext,
    flow: &Flow,
    kind: u32,
    rule: u32,
    config: &GuardConfig,
    tally: &mut DenyTally,
) {
    // The event is built only when it is sent: a flood's denies, held back, never build it.
    send_with(
        || Event {
            kind,
            rule,
            src: *addr_bytes(&flow.src),
            dst: *addr_bytes(&flow.dst),
            sport: flow.sport,
            dport: flow.dport,
            family: if flow.v4 { 4 } else { 6 },
            proto: flow.ip_proto,
            ifindex: ctx.ingress_ifindex() as u32,
            ..Event::default()
        },
        &flow.src,
        config,
        tally,
    );
}

/// Sends `event` (its timestamp and suppressed count are filled in here) unless `limit_key`
/// (an address as four words, or a [`crate::sock_addr::process`] key) is over its rate.
#[inline(always)]
pub fn send(event: Event, limit_key: &Addr, config: &GuardConfig) {
    if config.event_interval_ns == 0 {
        return;
    }
    let Some(tally) = deny_tally() else {
        core::hint::cold_path();
        return;
    };
    send_with(|| event, limit_key, config, tally);
}

/// As [`send`], the event built by `make` once it is to be sent.
#[inline(always)]
fn send_with(
    make: impl FnOnce() -> Event,
    limit_key: &Addr,
    config: &GuardConfig,
    budget: &mut DenyTally,
) {
    let interval = config.event_interval_ns;
    if interval == 0 {
        return;
    }
    if budget.heavy == *limit_key {
        if budget.heavy_skips != 0 {
            // The source the limiter is holding back: one compare. The count is handed to
            // its bucket at its next look at the limiter, for its next event to report.
            budget.heavy_skips -= 1;
            budget.heavy_held += 1;
            budget.suppressed += 1;
            return;
        }
        // Its periodic look at the limiter spends nothing of the budget: the budget stays
        // for the other sources.
    } else {
        // Another source: the flood (if it was one) is interleaved with other traffic now;
        // the heavy source's next deny asks the limiter again.
        budget.heavy_skips = 0;
        if over_budget(budget, config.event_budget) {
            budget.suppressed += 1;
            return;
        }
    }
    // Past the two cheap stages: the limiter (rare under a flood, and rate-limited anyway).
    core::hint::cold_path();
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let suppressed = match GUARD_EVBUCKET.get_ptr_mut(addr_bytes(limit_key)) {
        Some(bucket) => {
            // SAFETY: a live map value; concurrent updates only make the limit approximate.
            let bucket = unsafe { &mut *bucket };
            if budget.heavy == *limit_key {
                bucket.suppressed = bucket
                    .suppressed
                    .saturating_add(budget.heavy_held.min(u32::MAX as u64) as u32);
                budget.heavy_held = 0;
            }
            let tat = if bucket.tat_ns > now {
                bucket.tat_ns
            } else {
                now
            };
            if tat - now > config.event_tolerance_ns {
                bucket.suppressed += 1;
                budget.suppressed += 1;
                if budget.heavy != *limit_key {
                    hand_back_held(budget);
                    budget.heavy = *limit_key;
                }
                budget.heavy_skips = EVENT_HEAVY_SKIPS;
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
            // A failed insert only means the next event of this key starts afresh.
            let _ = GUARD_EVBUCKET.insert(addr_bytes(limit_key), &fresh, 0);
            0
        }
    };
    let mut event = make();
    event.ts_ns = now;
    event.suppressed = suppressed;
    match GUARD_EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
            bump(&GUARD_EVSTATS, EVENTS_SENT);
        }
        None => bump(&GUARD_EVSTATS, EVENTS_LOST),
    }
}

/// Hands the denies held back for the previous heavy source to its bucket (when it is
/// still in the LRU map), before another source takes its place.
#[inline(always)]
fn hand_back_held(budget: &mut DenyTally) {
    if budget.heavy_held == 0 {
        return;
    }
    if let Some(bucket) = GUARD_EVBUCKET.get_ptr_mut(addr_bytes(&budget.heavy)) {
        // SAFETY: a live map value; concurrent updates only make the count approximate.
        let bucket = unsafe { &mut *bucket };
        bucket.suppressed = bucket
            .suppressed
            .saturating_add(budget.heavy_held.min(u32::MAX as u64) as u32);
    }
    budget.heavy_held = 0;
}

/// Counts a deny against this CPU's budget; true when the window's budget is spent.
#[inline(always)]
fn over_budget(budget: &mut DenyTally, per_window: u64) -> bool {
    if budget.used == 0 {
        // The first deny ever on this CPU starts the first window.
        core::hint::cold_path();
        // SAFETY: a helper without preconditions.
        budget.window_start_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    budget.used += 1;
    if budget.used <= per_window {
        return false;
    }
    if budget.used != per_window + 1 && budget.used % EVENT_BUDGET_CLOCK_EVERY != 0 {
        return true;
    }
    // Once per EVENT_BUDGET_CLOCK_EVERY denies past the budget.
    core::hint::cold_path();
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(budget.window_start_ns) < EVENT_BUDGET_WINDOW_NS {
        return true;
    }
    // A new window; this deny is its first.
    budget.window_start_ns = now;
    budget.used = 1;
    false
}
