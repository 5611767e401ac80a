//! The XDP ingress filter: one verdict per inbound packet on the guarded interfaces.
//!
//! Cost per TCP/UDP packet: one array lookup (port class) and, when a rule names the port,
//! one LPM-trie lookup (class + source address); never a scan, whatever the rule count.
//!
//! Failure verdicts, chosen on purpose:
//! - packets we cannot judge because a header is cut short or inconsistent, or nests deeper
//!   than the parser walks: dropped in enforce mode (counted by reason), passed in audit mode;
//! - fragments after the first: passed (they carry no ports; the first fragment was judged,
//!   and without it the kernel cannot reassemble the datagram);
//! - non-TCP/UDP traffic (ARP, ICMP, ...): passed, so neighbour discovery and path MTU keep
//!   working;
//! - before the loader has written the config (never seen by packets: it writes first, then
//!   attaches): passed.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    ACTION_ALLOW, ACTION_DENY, CLASS_BITS, IngressConfig, MAX_RULES, MAX_SRC_ENTRIES, MODE_ENFORCE,
    MODE_UNSET, PORT_CLASS_MASK, PORT_FAILSAFE, PORTS_LEN, REASON_FRAGMENT_PASSED,
    REASON_MALFORMED, REASON_NOT_TCP_UDP, REASON_POLICY, REASON_UNSUPPORTED, REASONS_LEN,
    RULE_DEFAULT, RULE_FAILSAFE, RuleRef, RuleStats, SrcKeyV4, SrcKeyV6, port_index,
};

use crate::packet::{self, Flow, ParseError, Parsed, Source};

// Names must equal the constants in `guard_common::maps`.
#[map]
static GUARD_CONFIG: Array<IngressConfig> = Array::with_max_entries(1, 0);
#[map]
static GUARD_PORTS: Array<u32> = Array::with_max_entries(PORTS_LEN, 0);
#[map]
static GUARD_SRC_V4: LpmTrie<SrcKeyV4, RuleRef> = LpmTrie::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map]
static GUARD_SRC_V6: LpmTrie<SrcKeyV6, RuleRef> = LpmTrie::with_max_entries(MAX_SRC_ENTRIES, 0);
#[map]
static GUARD_RULES: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map]
static GUARD_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASONS_LEN, 0);

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let config = GUARD_CONFIG.get(0).copied().unwrap_or_default();
    if config.mode == MODE_UNSET {
        return XDP_PASS;
    }
    let enforce = config.mode == MODE_ENFORCE;
    let flow = match packet::parse(ctx) {
        Ok(Parsed::Flow(flow)) => flow,
        Ok(Parsed::Other) => return count_reason(REASON_NOT_TCP_UDP, XDP_PASS),
        Ok(Parsed::LaterFragment) => return count_reason(REASON_FRAGMENT_PASSED, XDP_PASS),
        Err(err) => {
            let reason = match err {
                ParseError::Malformed => REASON_MALFORMED,
                ParseError::Unsupported => REASON_UNSUPPORTED,
            };
            return count_reason(reason, if enforce { XDP_DROP } else { XDP_PASS });
        }
    };
    let (rule, action) = decide(&flow, config.default_action);
    count_rule(rule, (ctx.data_end() - ctx.data()) as u64);
    if action == ACTION_ALLOW {
        return XDP_PASS;
    }
    // ACTION_DENY, or ACTION_AUDIT ("would drop").
    if enforce && action == ACTION_DENY {
        debug!(
            ctx,
            "drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
        count_reason(REASON_POLICY, XDP_DROP)
    } else {
        debug!(
            ctx,
            "audit_drop rule={} proto={} dport={}", rule, flow.proto_idx, flow.dport
        );
        count_reason(REASON_POLICY, XDP_PASS)
    }
}

/// The rule index and action for a flow.
#[inline(always)]
fn decide(flow: &Flow, default_action: u32) -> (u32, u32) {
    // An index built from a u16 port is always in range; a failed lookup is treated like a
    // port no rule names: the policy default applies.
    let entry = GUARD_PORTS
        .get(port_index(flow.proto_idx, flow.dport))
        .copied()
        .unwrap_or(0);
    if entry & PORT_FAILSAFE != 0 {
        return (RULE_FAILSAFE, ACTION_ALLOW);
    }
    let class = (entry & PORT_CLASS_MASK).to_be_bytes();
    if entry & PORT_CLASS_MASK != 0 {
        let hit = match flow.src {
            Source::V4(addr) => {
                GUARD_SRC_V4.get(Key::new(CLASS_BITS + 32, SrcKeyV4 { class, addr }))
            }
            Source::V6(addr) => {
                GUARD_SRC_V6.get(Key::new(CLASS_BITS + 128, SrcKeyV6 { class, addr }))
            }
        };
        if let Some(hit) = hit {
            return (hit.rule, hit.action);
        }
    }
    (
        RULE_DEFAULT,
        if default_action == ACTION_ALLOW {
            ACTION_ALLOW
        } else {
            ACTION_DENY
        },
    )
}

#[inline(always)]
fn count_rule(rule: u32, bytes: u64) {
    if let Some(stats) = GUARD_RULES.get_ptr_mut(rule) {
        // SAFETY: per-CPU value of this CPU; XDP runs with preemption disabled.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
}

#[inline(always)]
fn count_reason(reason: u32, verdict: u32) -> u32 {
    if let Some(count) = GUARD_REASONS.get_ptr_mut(reason) {
        // SAFETY: as in `count_rule`.
        unsafe { *count += 1 };
    }
    verdict
}
