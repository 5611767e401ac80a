//! The XDP ingress filter: one verdict per inbound packet on the guarded interfaces.
//!
//! Cost per TCP/UDP packet: one array lookup (port class, or the rule itself when every
//! source resolves to one rule), then for a zone rule's port the source: IPv4 by the direct
//! tables (two or three array reads), IPv6 by the zone prefilter and the two-choice table;
//! the source hashes (one lookup per prefix length, at most 8; more lengths use one
//! LPM-trie lookup) only where those cannot answer. Never a scan, whatever the rule count.
//! Packets no rule passes pay more: the flow flag (replies to the host's own traffic pass;
//! the flow lookup only when the flag is set) and, when events are on, the event limiter's
//! cheap stages. Everything after the parse is inlined once per IP family
//! ([`packet::parse_then`]): an IPv4 packet runs code specialised for IPv4, with no joined
//! copy that keeps both families' facts in memory. docs/performance.md has the whole cost
//! model.
//!
//! Every IP protocol is judged: TCP, UDP and UDP-Lite by destination port and source; ICMP
//! and ICMPv6 echo requests and every other IP protocol (SCTP, DCCP, GRE, ESP, ...) by
//! protocol and source ([`guard_common::maps::PROTOS`]), falling to the policy default.
//!
//! Failure verdicts, chosen on purpose:
//! - packets we cannot judge because a header is cut short or inconsistent, or nests deeper
//!   than the parser walks: dropped in enforce mode (counted by reason), passed in audit mode;
//! - TCP, UDP, UDP-Lite and ICMP fragments after the first: passed (they carry no ports;
//!   the first fragment was judged, and without it the kernel cannot reassemble the
//!   datagram); later fragments of other protocols are judged by protocol like first ones;
//! - ICMP and ICMPv6 messages other than echo requests, and frames that are not IP (ARP):
//!   passed, so neighbour discovery, path MTU discovery and error reporting keep working;
//! - a rule entry whose action is not allow, audit or deny (a corrupt or zeroed entry): deny,
//!   counted as `bad_action`;
//! - no active policy (the config of the active generation is unset: never seen in practice,
//!   the loader writes first, then attaches): passed, the anti-lockout choice, counted as
//!   `unconfigured`;
//! - a map lookup that cannot fail failing anyway: treated as "no rule", so the policy
//!   default applies.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, EVENT_AUDIT_DROP, EVENT_DROP, GuardConfig,
    MODE_ENFORCE, PROTO_IDX_TCP, REASON_FRAGMENT_PASSED, REASON_ICMP_PASSED, REASON_MALFORMED,
    REASON_NOT_IP, REASON_POLICY, REASON_REPLY_PASSED, REASON_UNCONFIGURED, REASON_UNSUPPORTED,
    RULE_DEFAULT, RULE_REPLY, flow_seen_slot_of,
};

use crate::{
    events,
    maps::{GUARD_FLOWS, GUARD_PORTSTAT, GUARD_REASONS, Policy, bump, deny_tally, flow_maybe_seen},
    packet::{self, Flow, ParseError, Parsed, TCP_ACK, TCP_SYN},
    verdict,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(policy) = Policy::current() else {
        return pass_unjudged(REASON_UNCONFIGURED);
    };
    packet::parse_then(
        ctx,
        #[inline(always)]
        |parsed| judge_parsed(ctx, &policy, parsed),
    )
}

/// The verdict on a parsed packet (inlined once per IP family: [`packet::parse_then`]).
#[inline(always)]
fn judge_parsed(ctx: &XdpContext, policy: &Policy, parsed: Result<Parsed, ParseError>) -> u32 {
    let config = policy.config;
    let enforce = config.mode == MODE_ENFORCE;
    let flow = match parsed {
        Ok(Parsed::Flow(flow)) => flow,
        Ok(Parsed::NotIp) => return pass_unjudged(REASON_NOT_IP),
        Ok(Parsed::IcmpControl) => return pass_unjudged(REASON_ICMP_PASSED),
        Ok(Parsed::LaterFragment) => return pass_unjudged(REASON_FRAGMENT_PASSED),
        Err(err) => {
            core::hint::cold_path();
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
    let default = (RULE_DEFAULT, default_action);
    // One lookup path for both kinds of entry keeps the program small for the verifier.
    let entry = if flow.has_ports() {
        policy.port_entry(flow.proto_idx, flow.dport)
    } else {
        policy.protocol_entry(flow.ip_proto)
    };
    let (mut rule, mut action) = verdict::judge(policy, entry, flow.v4, &flow.src, default);
    if action != ACTION_ALLOW && flow.has_ports() && is_reply(&flow, config) {
        bump(&GUARD_REASONS, REASON_REPLY_PASSED);
        (rule, action) = (RULE_REPLY, ACTION_ALLOW);
    }
    let bytes = u64::from(flow.len);
    // The action is matched explicitly: allow passes, audit reports and passes, and anything
    // else (deny; `judge` has already turned a corrupt value into deny) drops in enforce mode.
    let (kind, verdict) = match action {
        ACTION_ALLOW => {
            verdict::count_rule(rule, bytes);
            if flow.has_ports() {
                count_port(policy, &flow, false);
            }
            return XDP_PASS;
        }
        ACTION_AUDIT => (EVENT_AUDIT_DROP, XDP_PASS),
        _ if enforce => (EVENT_DROP, XDP_DROP),
        _ => (EVENT_AUDIT_DROP, XDP_PASS),
    };
    if flow.has_ports() {
        count_port(policy, &flow, verdict == XDP_DROP);
    }
    // Dropped, or ("would drop") passed in audit mode or by an audit rule: counted in this
    // CPU's tally, the value the event limiter's cheap stages use next, so a flood's drop
    // reads and writes one value for all three (`REASON_POLICY` as the tally's `policy`;
    // the policy default's denies, what a flood at closed ports or from outside every zone
    // runs into, as its `default_*`; another rule's in its own counter).
    let Some(tally) = deny_tally() else {
        // Cannot happen (index 0 of a one-entry array): counted where layout 2 counted it.
        core::hint::cold_path();
        verdict::count_rule(rule, bytes);
        bump(&GUARD_REASONS, REASON_POLICY);
        return verdict;
    };
    tally.policy += 1;
    if rule == RULE_DEFAULT {
        tally.default_packets += 1;
        tally.default_bytes += bytes;
    } else {
        verdict::count_rule(rule, bytes);
    }
    // Two calls, each with its own literal: one call choosing between two strings of
    // different lengths compiled (once the code was inlined per IP family) to a copy the
    // verifier could not tie to the string it copies, and refused the program whenever the
    // kernel log was on.
    if verdict == XDP_DROP {
        debug!(
            ctx,
            "drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
    } else {
        debug!(
            ctx,
            "audit_drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
    }
    events::report_packet(ctx, &flow, kind, rule, config, tally);
    verdict
}

/// Passes a packet no rule judges (not IP, an ICMP error, a later fragment, no active
/// policy), counted by `reason`: a cold path, kept out of the way of the judged ones.
#[inline(always)]
fn pass_unjudged(reason: u32) -> u32 {
    core::hint::cold_path();
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
    // A packet that answers no flow the host ever sent on (most of a flood) stops here,
    // its flag found from the packet's words (the flag of its ingress key).
    let slot = flow_seen_slot_of(
        flow.src[2],
        flow.src[3],
        flow.dport,
        flow.sport,
        flow.ip_proto,
    );
    if !flow_maybe_seen(slot) {
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
