//! The XDP ingress filter: one verdict per inbound packet on the guarded interfaces.
//!
//! Cost per TCP/UDP packet: one array lookup (port class, or the rule itself when every
//! source resolves to one rule) and otherwise one LPM-trie lookup (class + source address);
//! never a scan, whatever the rule count. Only packets the policy would drop pay more: one
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
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_BITS, EVENT_AUDIT_DROP, EVENT_DROP, FlowKey, IngressConfig,
    MODE_ENFORCE, MODE_UNSET, PORT_ACTION_MASK, PORT_ACTION_SHIFT, PORT_DIRECT, PORT_FAILSAFE,
    PORT_VALUE_MASK, PROTO_IDX_TCP, PortStats, REASON_FRAGMENT_PASSED, REASON_MALFORMED,
    REASON_NOT_TCP_UDP, REASON_POLICY, REASON_REPLY_PASSED, REASON_UNSUPPORTED, RULE_DEFAULT,
    RULE_FAILSAFE, RULE_REPLY, SrcKeyV4, SrcKeyV6, port_index,
};

use crate::{
    events,
    maps::{
        GUARD_CONFIG, GUARD_FLOWS, GUARD_PORTS, GUARD_PORTSTAT, GUARD_REASONS, GUARD_RULES,
        GUARD_SRC_V4, GUARD_SRC_V6, bump,
    },
    packet::{self, Flow, ParseError, Parsed, TCP_ACK, TCP_SYN},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(config) = GUARD_CONFIG.get(0) else {
        return XDP_PASS;
    };
    if config.mode == MODE_UNSET {
        return XDP_PASS;
    }
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
    let (mut rule, mut action) = decide(&flow, config.default_action);
    if action != ACTION_ALLOW && is_reply(&flow, config) {
        bump(&GUARD_REASONS, REASON_REPLY_PASSED);
        (rule, action) = (RULE_REPLY, ACTION_ALLOW);
    }
    count_rule(rule, (ctx.data_end() - ctx.data()) as u64);
    let drop = enforce && action == ACTION_DENY;
    count_port(&flow, drop);
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
        events::report(ctx, &flow, EVENT_DROP, rule, config);
        XDP_DROP
    } else {
        debug!(
            ctx,
            "audit_drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
        events::report(ctx, &flow, EVENT_AUDIT_DROP, rule, config);
        XDP_PASS
    }
}

#[inline(always)]
fn pass_unjudged(reason: u32) -> u32 {
    bump(&GUARD_REASONS, reason);
    XDP_PASS
}

/// The rule index and action for a flow.
#[inline(always)]
fn decide(flow: &Flow, default_action: u32) -> (u32, u32) {
    let entry = GUARD_PORTS
        .get(port_index(flow.proto_idx, flow.dport))
        .copied()
        .unwrap_or(0);
    if entry & PORT_FAILSAFE != 0 {
        return (RULE_FAILSAFE, ACTION_ALLOW);
    }
    if entry & PORT_DIRECT != 0 {
        return (
            entry & PORT_VALUE_MASK,
            (entry & PORT_ACTION_MASK) >> PORT_ACTION_SHIFT,
        );
    }
    let class = entry & PORT_VALUE_MASK;
    if class != 0 {
        let class = class.to_be_bytes();
        let hit = if flow.v4 {
            GUARD_SRC_V4.get(Key::new(
                CLASS_BITS + 32,
                SrcKeyV4 {
                    class,
                    addr: flow.src_v4(),
                },
            ))
        } else {
            GUARD_SRC_V6.get(Key::new(
                CLASS_BITS + 128,
                SrcKeyV6 {
                    class,
                    addr: flow.src,
                },
            ))
        };
        if let Some(hit) = hit {
            return (hit.rule, hit.action);
        }
    }
    // Anything but an explicit allow default is a deny: fail closed.
    (
        RULE_DEFAULT,
        if default_action == ACTION_ALLOW {
            ACTION_ALLOW
        } else {
            ACTION_DENY
        },
    )
}

/// True when `flow` answers a flow the host started recently (recorded by the TC egress
/// program). A TCP SYN without ACK opens a connection and is never a reply.
#[inline(always)]
fn is_reply(flow: &Flow, config: &IngressConfig) -> bool {
    let tcp = flow.proto_idx == PROTO_IDX_TCP;
    if tcp && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return false;
    }
    let key = FlowKey {
        remote: flow.src,
        local_port: flow.dport,
        remote_port: flow.sport,
        proto: flow.ip_proto(),
        _pad: [0; 3],
    };
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
    let now = unsafe { bpf_ktime_get_ns() };
    now.saturating_sub(last) <= timeout
}

#[inline(always)]
fn count_rule(rule: u32, bytes: u64) {
    if let Some(stats) = GUARD_RULES.get_ptr_mut(rule) {
        // SAFETY: this CPU's slot; BPF programs are not preempted on their CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}

/// Counts a connection attempt (TCP SYN without ACK; any UDP datagram) and its rejection.
#[inline(always)]
fn count_port(flow: &Flow, rejected: bool) {
    if flow.proto_idx == PROTO_IDX_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    let key = port_index(flow.proto_idx, flow.dport);
    match GUARD_PORTSTAT.get_ptr_mut(&key) {
        // SAFETY: this CPU's value.
        Some(stats) => unsafe {
            (*stats).attempted += 1;
            (*stats).rejected += rejected as u64;
        },
        None => {
            let first = PortStats {
                attempted: 1,
                rejected: rejected as u64,
            };
            // Fails only when the map is full, which it cannot be (one slot per port).
            let _ = GUARD_PORTSTAT.insert(&key, &first, 0);
        }
    }
}
