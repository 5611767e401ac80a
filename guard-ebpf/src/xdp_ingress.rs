//! The XDP ingress filter: one verdict per inbound packet on the guarded interfaces.
//!
//! Cost per TCP/UDP packet: one array lookup (port class, or the rule itself when every
//! source resolves to one rule), then one hash lookup per source prefix length the class
//! uses (at most 8, longest first; more lengths fall back to one LPM-trie lookup); never a
//! scan, whatever the rule count. Only packets the policy would drop pay more: one
//! flow lookup (replies to the host's own traffic pass) and, when events are on, the
//! per-source rate limiter.
//!
//! Failure verdicts, chosen on purpose:
//! - packets we cannot judge because a header is cut short or inconsistent, or nests deeper
//!   than the parser walks: dropped in enforce mode (counted by reason), passed in audit mode;
//! - fragments after the first: passed (they carry no ports; the first fragment was judged,
//!   and without it the kernel cannot reassemble the datagram);
//! - non-TCP/UDP traffic (ARP, ICMP, ...): passed, so neighbour discovery and path MTU keep
//!   working;
//! - before the loader has written the config (never seen by packets: it writes first, then
//!   attaches): passed;
//! - a map lookup that cannot fail failing anyway: treated as "no rule", so the policy
//!   default applies.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, EVENT_AUDIT_DROP, EVENT_DROP, GuardConfig, MODE_ENFORCE,
    PROTO_IDX_TCP, REASON_FRAGMENT_PASSED, REASON_MALFORMED, REASON_NOT_TCP_UDP, REASON_POLICY,
    REASON_REPLY_PASSED, REASON_UNSUPPORTED, RULE_DEFAULT, RULE_REPLY,
};

use crate::{
    events,
    maps::{GUARD_FLOWS, GUARD_PORTSTAT, GUARD_REASONS, Policy, bump},
    packet::{self, Flow, ParseError, Parsed, TCP_ACK, TCP_SYN},
    verdict,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(policy) = Policy::current() else {
        return XDP_PASS;
    };
    let config = policy.config;
    let enforce = config.mode == MODE_ENFORCE;
    let flow = match packet::parse(ctx) {
        Ok(Parsed::Flow(flow)) => flow,
        Ok(Parsed::Other) => return pass_unjudged(REASON_NOT_TCP_UDP),
        Ok(Parsed::LaterFragment) => return pass_unjudged(REASON_FRAGMENT_PASSED),
        Err(err) => {
            bump(
                &GUARD_REASONS,
                match err {
                    ParseError::Malformed => REASON_MALFORMED,
                    ParseError::Unsupported => REASON_UNSUPPORTED,
                },
            );
            return if enforce { XDP_DROP } else { XDP_PASS };
        }
    };
    let default_action = if config.default_action == ACTION_ALLOW {
        ACTION_ALLOW
    } else {
        ACTION_DENY
    };
    let (mut rule, mut action) = verdict::decide(
        &policy,
        flow.proto_idx,
        flow.dport,
        flow.v4,
        &flow.src,
        (RULE_DEFAULT, default_action),
    );
    if action != ACTION_ALLOW && is_reply(&flow, config) {
        bump(&GUARD_REASONS, REASON_REPLY_PASSED);
        (rule, action) = (RULE_REPLY, ACTION_ALLOW);
    }
    verdict::count_rule(rule, (ctx.data_end() - ctx.data()) as u64);
    let drop = enforce && action == ACTION_DENY;
    count_port(&policy, &flow, drop);
    if action == ACTION_ALLOW {
        return XDP_PASS;
    }
    // ACTION_DENY, or ACTION_AUDIT ("would drop"); audit mode drops nothing.
    bump(&GUARD_REASONS, REASON_POLICY);
    if drop {
        debug!(
            ctx,
            "drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
        events::report_packet(ctx, &flow, EVENT_DROP, rule, config);
        XDP_DROP
    } else {
        debug!(
            ctx,
            "audit_drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
        events::report_packet(ctx, &flow, EVENT_AUDIT_DROP, rule, config);
        XDP_PASS
    }
}

#[inline(always)]
fn pass_unjudged(reason: u32) -> u32 {
    bump(&GUARD_REASONS, reason);
    XDP_PASS
}

/// True when `flow` answers a flow the host started recently (recorded by the TC egress
/// program). A TCP SYN without ACK opens a connection and is never a reply.
#[inline(always)]
fn is_reply(flow: &Flow, config: &GuardConfig) -> bool {
    let tcp = flow.proto_idx == PROTO_IDX_TCP;
    if tcp && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return false;
    }
    let key = flow.ingress_key();
    let Some(state) = GUARD_FLOWS.get_ptr(&key) else {
        return false;
    };
    // SAFETY: a live map value, read once.
    let last = unsafe { (*state).last_egress_ns };
    let timeout = if tcp {
        config.tcp_flow_timeout_ns
    } else {
        config.udp_flow_timeout_ns
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    now.saturating_sub(last) <= timeout
}

/// Counts a connection attempt (TCP SYN without ACK; any UDP datagram) and its rejection,
/// in the port's slot (or its protocol's "other" slot).
#[inline(always)]
fn count_port(policy: &Policy, flow: &Flow, rejected: bool) {
    if flow.proto_idx == PROTO_IDX_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    let named = policy.port_slot(flow.proto_idx, flow.dport);
    // Slot 0 in the slot array means "not named"; the "other" slots are the protocol indices.
    let slot = if named == 0 { flow.proto_idx } else { named };
    if let Some(stats) = GUARD_PORTSTAT.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; BPF programs are not preempted on their CPU.
        unsafe {
            (*stats).attempted += 1;
            (*stats).rejected += rejected as u64;
        }
    }
}
