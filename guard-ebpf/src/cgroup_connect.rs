//! cgroup `connect()` (TCP and UDP, IPv4 and IPv6) and UDP `sendmsg()` hooks enforcing
//! `[[egress]]` for processes in the guarded cgroup, by destination port and address.
//!
//! TCP and MPTCP sockets are judged by the `tcp` rules, UDP and UDP-Lite sockets by the `udp`
//! rules; an IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`) is judged as the IPv4 address.
//!
//! Verdicts, chosen on purpose: 1 lets the call proceed, 0 makes it fail with EPERM. No
//! `[[egress]]` rule naming the destination means allowed (egress defaults to allow), and so
//! do other protocols (egress rules name only TCP and UDP ports) and audit mode. No active
//! policy proceeds too (anti-lockout), counted as `unconfigured`; a rule entry with a corrupt
//! action denies, counted as `bad_action`. Every
//! decision is counted under its rule (`egress-default` when none matched); each denial (or
//! audit-mode would-be denial) is an event with pid and command, limited per process.

use aya_ebpf::{helpers::bpf_get_current_comm, programs::SockAddrContext};
use guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, EVENT_CONNECT_DENIED, EVENT_FLAG_AUDIT, Event, MODE_ENFORCE,
    PROTO_IDX_EGRESS_TCP, PROTO_IDX_EGRESS_UDP, PROTO_IDX_TCP, REASON_UNCONFIGURED,
    RULE_EGRESS_DEFAULT, event_proto, port_proto_idx,
};

use crate::{
    events,
    maps::{GUARD_REASONS, Policy, bump},
    packet::is_v4_mapped,
    sock_addr, verdict,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// `verdict` returned as a value the verifier can bound. The compiler may otherwise return a
/// register it knows equals the constant (the rule's action, which is 1 when it allows);
/// the verifier, which learnt that only of a copy, then rejects the program ("R0 ...
/// should have been in [0, 1]"). A value stored and read back volatile is a known constant
/// to the verifier.
#[inline(always)]
fn ret(verdict: i32) -> i32 {
    let v = verdict;
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&v) }
}

#[inline(always)]
pub fn run(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(policy) = Policy::current() else {
        // No active policy: proceed (anti-lockout), counted as `unconfigured`.
        bump(&GUARD_REASONS, REASON_UNCONFIGURED);
        return ret(ALLOW);
    };
    let config = policy.config;
    // SAFETY: the context pointer the kernel passed in.
    let sa = unsafe { &*ctx.sock_addr };
    let slot = match port_proto_idx(sa.protocol) {
        Some(PROTO_IDX_TCP) => PROTO_IDX_EGRESS_TCP,
        Some(_) => PROTO_IDX_EGRESS_UDP,
        None => return ret(ALLOW),
    };
    let proto = event_proto(sa.protocol);
    let (peer, port) = sock_addr::user_addr(ctx, v6);
    let v4 = !v6 || is_v4_mapped(&peer);
    let (rule, action) = verdict::decide(
        &policy,
        slot,
        port,
        v4,
        &peer,
        (RULE_EGRESS_DEFAULT, ACTION_ALLOW),
    );
    verdict::count_rule(rule, 0);
    // The action is matched explicitly; `decide` has already turned a corrupt value into deny.
    let deny = match action {
        ACTION_ALLOW => return ret(ALLOW),
        ACTION_AUDIT => false,
        _ => config.mode == MODE_ENFORCE,
    };
    let (pid, limit_key) = sock_addr::process(0xc0);
    events::send(
        Event {
            kind: EVENT_CONNECT_DENIED,
            rule,
            dst: peer,
            dport: port,
            family: if v4 { 4 } else { 6 },
            proto,
            flags: if deny { 0 } else { EVENT_FLAG_AUDIT },
            pid,
            comm: bpf_get_current_comm().unwrap_or_default(),
            ..Event::default()
        },
        &limit_key,
        config,
    );
    ret(if deny { DENY } else { ALLOW })
}
