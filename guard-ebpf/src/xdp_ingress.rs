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
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_BITS, CLASS_LENS_USE_TRIE, EVENT_AUDIT_DROP, EVENT_DROP,
    GuardConfig, MAX_CLASS_PREFIX_LENS, MODE_ENFORCE, MODE_UNSET, PORT_ACTION_MASK,
    PORT_ACTION_SHIFT, PORT_DIRECT, PORT_FAILSAFE, PORT_VALUE_MASK, PROTO_IDX_TCP,
    REASON_FRAGMENT_PASSED, REASON_MALFORMED, REASON_NOT_TCP_UDP, REASON_POLICY,
    REASON_REPLY_PASSED, REASON_UNSUPPORTED, RULE_DEFAULT, RULE_FAILSAFE, RULE_REPLY, RuleRef,
    SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4, SrcKeyV6, port_index,
};

use crate::{
    events,
    maps::{
        GUARD_CLASSLEN, GUARD_CONFIG, GUARD_FLOWS, GUARD_PORTS, GUARD_PORTSLOT, GUARD_PORTSTAT,
        GUARD_REASONS, GUARD_RULES, GUARD_SRC_V4, GUARD_SRC_V6, GUARD_SRCH_V4, GUARD_SRCH_V6, bump,
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
    if class != 0
        && let Some(hit) = lookup_source(class, flow)
    {
        return (hit.rule, hit.action);
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

/// The most specific rule of `class` whose source prefix contains the flow's source: one
/// hash lookup per prefix length the class uses, longest first; the LPM trie for classes
/// with more lengths than that.
#[inline(always)]
fn lookup_source(class: u32, flow: &Flow) -> Option<RuleRef> {
    let lens = GUARD_CLASSLEN.get(class)?;
    if flow.v4 {
        if lens.v4_count == CLASS_LENS_USE_TRIE {
            let key = Key::new(
                CLASS_BITS + 32,
                SrcKeyV4 {
                    class: class.to_be_bytes(),
                    addr: flow.src_v4(),
                },
            );
            return GUARD_SRC_V4.get(key).copied();
        }
        let addr = u32::from_be_bytes(flow.src_v4());
        for i in 0..MAX_CLASS_PREFIX_LENS {
            if i >= lens.v4_count as usize {
                break;
            }
            let len = u32::from(lens.v4[i]) & 63;
            let masked = if len == 0 {
                0
            } else if len >= 32 {
                addr
            } else {
                addr & (u32::MAX << (32 - len))
            };
            let key = SrcHashKeyV4 {
                class,
                prefix_len: len,
                addr: masked.to_be_bytes(),
            };
            if let Some(hit) = GUARD_SRCH_V4.get_ptr(&key) {
                // SAFETY: a live map value, copied out.
                return Some(unsafe { *hit });
            }
        }
        None
    } else {
        if lens.v6_count == CLASS_LENS_USE_TRIE {
            let key = Key::new(
                CLASS_BITS + 128,
                SrcKeyV6 {
                    class: class.to_be_bytes(),
                    addr: flow.src,
                },
            );
            return GUARD_SRC_V6.get(key).copied();
        }
        for i in 0..MAX_CLASS_PREFIX_LENS {
            if i >= lens.v6_count as usize {
                break;
            }
            let len = u32::from(lens.v6[i]) & 255;
            let mut addr = flow.src;
            let whole = (len / 8) as usize;
            let rest = len % 8;
            for (j, byte) in addr.iter_mut().enumerate() {
                if j > whole || (j == whole && rest == 0) {
                    *byte = 0;
                } else if j == whole {
                    *byte &= 0xffu8 << (8 - rest);
                }
            }
            let key = SrcHashKeyV6 {
                class,
                prefix_len: len,
                addr,
            };
            if let Some(hit) = GUARD_SRCH_V6.get_ptr(&key) {
                // SAFETY: a live map value, copied out.
                return Some(unsafe { *hit });
            }
        }
        None
    }
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

/// Counts a connection attempt (TCP SYN without ACK; any UDP datagram) and its rejection,
/// in the port's slot (or its protocol's "other" slot).
#[inline(always)]
fn count_port(flow: &Flow, rejected: bool) {
    if flow.proto_idx == PROTO_IDX_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    let named = GUARD_PORTSLOT
        .get(port_index(flow.proto_idx, flow.dport))
        .copied()
        .unwrap_or(0);
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
