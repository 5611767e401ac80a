//! Step 3 of 3: validated [`Policy`] to the contents of the kernel maps.
//!
//! Ports are grouped into *classes*: ports covered by exactly the same set of rules share one.
//! The kernel reads the class of `(proto, dport)` from an array, then looks up
//! `(class, source address)` in an LPM trie, so its cost does not depend on the rule count.
//! Precedence is settled here: the trie gives the most specific source prefix; for rules
//! with the same prefix in one class, `deny` beats `audit` beats `allow`, then file order.

use std::collections::{BTreeMap, HashMap};

use guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CLASS_BITS, CLASS_LENS_USE_TRIE, ClassLens,
    EVENT_BUDGET_PER_WINDOW, EVENT_BUDGET_WINDOW_NS, GuardConfig, MAX_CLASS_PREFIX_LENS,
    MODE_AUDIT, MODE_ENFORCE, PORT_ACTION_SHIFT, PORT_DIRECT, PORT_FAILSAFE, PORT_VALUE_MASK,
    PROTO_IDX_EGRESS_TCP, PROTO_IDX_EGRESS_UDP, PROTO_IDX_TCP, PROTO_IDX_UDP, RuleRef,
    SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4, SrcKeyV6, port_index,
};
use ipnet::IpNet;

use super::{
    catalog::{PortSlot, RuleInfo, policy_rules, port_slots, rule_catalog},
    direct::{DirectRows, DirectV4, direct_v4},
    model::{DefaultAction, Mode, Policy, PortRange, Proto, RuleAction},
};

/// Everything the loader writes into the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lowered {
    pub config: GuardConfig,
    /// Every rule with its index: [`RULE_DEFAULT`], [`RULE_FAILSAFE`], [`RULE_REPLY`],
    /// [`RULE_EGRESS_DEFAULT`], then the ingress and egress rules, by index.
    pub rules: Vec<RuleInfo>,
    /// Rule indices given to names the previous policy did not have: their counters must be
    /// zeroed before the new policy runs.
    pub fresh_rules: Vec<u32>,
    /// Port slots likewise.
    pub fresh_slots: Vec<u32>,
    /// Non-zero entries of the ports array: (index, class | flags).
    pub ports: Vec<(u32, u32)>,
    /// Non-zero entries of the protocols array: (IP protocol number, class or direct rule).
    pub protos: Vec<(u32, u32)>,
    /// Entries of the class-lengths array: (class, prefix lengths).
    pub class_lens: Vec<(u32, ClassLens)>,
    /// Source hash entries (classes with at most `MAX_CLASS_PREFIX_LENS` lengths).
    pub src_hash_v4: Vec<(SrcHashKeyV4, RuleRef)>,
    pub src_hash_v6: Vec<(SrcHashKeyV6, RuleRef)>,
    /// LPM trie entries for the other classes: (prefix length incl. [`CLASS_BITS`], key, value).
    pub src_v4: Vec<(u32, SrcKeyV4, RuleRef)>,
    pub src_v6: Vec<(u32, SrcKeyV6, RuleRef)>,
    /// Entries of the listen array: indices of the (protocol, port) pairs `bind()` may use.
    pub listen: Vec<u32>,
    /// Non-zero entries of the port-slot array: (index, slot).
    pub port_slots: Vec<(u32, u32)>,
    /// Indexed by slot: what each per-port counter counts.
    pub slots: Vec<PortSlot>,
    /// The highest class id (ids are 1..=classes; with ids kept from a previous policy
    /// ([`lower_after_classes`]) some below it may be unused).
    pub classes: u32,
    /// Each class's rule set (sorted rule indices) and its id, for the next policy to keep.
    pub class_ids: ClassIds,
    /// Classes resolved to one rule for every source (no trie entries).
    pub direct_classes: u32,
    /// The direct source tables for IPv4 peers (every class's answer per region).
    pub direct_v4: DirectV4,
}

const fn action_code(action: RuleAction) -> u32 {
    match action {
        RuleAction::Allow => ACTION_ALLOW,
        RuleAction::Deny => ACTION_DENY,
        RuleAction::Audit => ACTION_AUDIT,
    }
}

/// Lowers a policy with no previous one (every index fresh).
pub fn lower(policy: &Policy) -> Lowered {
    lower_after(policy, &[], &[])
}

/// The numbering a policy's lowering chose, for the next policy to keep where it can, so a
/// small change rewrites few map entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassIds {
    /// Port classes by their rule set (sorted rule indices): class id.
    pub classes: HashMap<Vec<u32>, u32>,
    /// The rows of the direct source tables.
    pub rows: DirectRows,
}

impl ClassIds {
    pub fn new() -> Self {
        Self::default()
    }
}

/// As [`lower_after`], keeping the class ids of `previous_classes` for the rule sets that
/// stay: a change that adds a port or a rule then rewrites the entries of the classes it
/// touches, not those of every class numbered after them.
pub fn lower_after_classes(
    policy: &Policy,
    previous_rules: &[RuleInfo],
    previous_slots: &[PortSlot],
    previous_classes: &ClassIds,
) -> Lowered {
    lower_with(policy, previous_rules, previous_slots, previous_classes)
}

/// Lowers a policy that replaces one whose rules and port slots were `previous_rules` and
/// `previous_slots`: rules and ports that stay keep their counter slots.
pub fn lower_after(
    policy: &Policy,
    previous_rules: &[RuleInfo],
    previous_slots: &[PortSlot],
) -> Lowered {
    lower_with(policy, previous_rules, previous_slots, &ClassIds::new())
}

fn lower_with(
    policy: &Policy,
    previous_rules: &[RuleInfo],
    previous_slots: &[PortSlot],
    previous_classes: &ClassIds,
) -> Lowered {
    let all_rules = policy_rules(policy);
    let (rules, index_of, fresh_rules) = rule_catalog(policy, &all_rules, previous_rules);
    let rule_by_index: HashMap<u32, (RuleAction, &[IpNet])> = index_of
        .iter()
        .copied()
        .zip(all_rules.iter().map(|&(_, action, nets)| (action, nets)))
        .collect();
    let ingress_index = &index_of[..policy.ingress.len()];
    let egress_end = policy.ingress.len() + policy.egress.len();
    let egress_index = &index_of[policy.ingress.len()..egress_end];
    let protocol_index = &index_of[egress_end..];

    // Port segments and their rule sets; each distinct set is a class.
    let mut segment_sets: Vec<(u32, PortRange, Vec<u32>)> = Vec::new();
    // (rules, their indices, protocol, port-array slot) for both directions.
    let slots = [
        (&policy.ingress, ingress_index, Proto::Tcp, PROTO_IDX_TCP),
        (&policy.ingress, ingress_index, Proto::Udp, PROTO_IDX_UDP),
        (
            &policy.egress,
            egress_index,
            Proto::Tcp,
            PROTO_IDX_EGRESS_TCP,
        ),
        (
            &policy.egress,
            egress_index,
            Proto::Udp,
            PROTO_IDX_EGRESS_UDP,
        ),
    ];
    for (list, indices, proto, proto_idx) in slots {
        let ranges: Vec<(PortRange, u32)> = list
            .iter()
            .zip(indices)
            .filter(|(r, _)| r.proto == proto)
            .flat_map(|(r, &index)| r.ports.iter().map(move |p| (*p, index)))
            .collect();
        for (segment, set) in segments(&ranges) {
            segment_sets.push((proto_idx, segment, set));
        }
    }
    // Whole protocols: the rules naming each protocol number form its class.
    let mut protocol_sets: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
    for (rule, &index) in policy.protocols.iter().zip(protocol_index) {
        for &number in &rule.protocols {
            protocol_sets.entry(number).or_default().push(index);
        }
    }
    for set in protocol_sets.values_mut() {
        set.sort_unstable();
        set.dedup();
    }
    // Class ids: a set the previous policy had keeps its id; new sets take the lowest free.
    let mut class_of_set: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut used: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let all_sets = segment_sets
        .iter()
        .map(|(_, _, set)| set)
        .chain(protocol_sets.values());
    for set in all_sets.clone() {
        if let Some(&id) = previous_classes.classes.get(set)
            && !class_of_set.contains_key(set)
        {
            class_of_set.insert(set.clone(), id);
            used.insert(id);
        }
    }
    let mut next = 1;
    for set in all_sets {
        if !class_of_set.contains_key(set) {
            while used.contains(&next) {
                next += 1;
            }
            class_of_set.insert(set.clone(), next);
            used.insert(next);
        }
    }
    let segment_classes: Vec<(u32, PortRange, u32)> = segment_sets
        .into_iter()
        .map(|(proto_idx, segment, set)| (proto_idx, segment, class_of_set[&set]))
        .collect();
    let protocol_classes: Vec<(u8, u32)> = protocol_sets
        .iter()
        .map(|(&number, set)| (number, class_of_set[set]))
        .collect();

    // (class, net) -> best (action, rule index): every pair, sorted by (class, net), then
    // the stronger action, then the earlier rule; the first of each (class, net) wins.
    let mut best: Vec<((u32, IpNet), (RuleAction, u32))> = Vec::new();
    for (set, &class) in &class_of_set {
        for &rule in set {
            let (action, nets) = rule_by_index[&rule];
            best.extend(nets.iter().map(|net| ((class, *net), (action, rule))));
        }
    }
    best.sort_unstable_by(|a, b| {
        (a.0)
            .cmp(&b.0)
            .then(b.1.0.cmp(&a.1.0))
            .then(a.1.1.cmp(&b.1.1))
    });
    best.dedup_by(|later, first| later.0 == first.0);
    // Each class's entries, in class order.
    let by_class = || best.chunk_by(|a, b| a.0.0 == b.0.0);

    // Classes where every source resolves to one rule: encoded in the ports array directly.
    let mut direct: HashMap<u32, u32> = HashMap::new();
    for entries in by_class() {
        let class = entries[0].0.0;
        let covers_all = entries
            .iter()
            .any(|((_, n), _)| matches!(n, IpNet::V4(_)) && n.prefix_len() == 0)
            && entries
                .iter()
                .any(|((_, n), _)| matches!(n, IpNet::V6(_)) && n.prefix_len() == 0);
        let (action, rule) = entries[0].1;
        if covers_all && entries.iter().all(|(_, v)| *v == (action, rule)) {
            debug_assert!(rule <= PORT_VALUE_MASK);
            direct.insert(
                class,
                PORT_DIRECT | (action_code(action) << PORT_ACTION_SHIFT) | rule,
            );
        }
    }

    let mut ports: BTreeMap<u32, u32> = BTreeMap::new();
    for &(proto_idx, segment, class) in &segment_classes {
        let value = direct.get(&class).copied().unwrap_or(class);
        for port in segment.first..=segment.last {
            ports.insert(port_index(proto_idx, port), value);
        }
    }
    for range in &policy.failsafe_ports {
        for port in range.first..=range.last {
            *ports.entry(port_index(PROTO_IDX_TCP, port)).or_insert(0) |= PORT_FAILSAFE;
        }
    }
    let protos: Vec<(u32, u32)> = protocol_classes
        .iter()
        .map(|&(number, class)| {
            (
                u32::from(number),
                direct.get(&class).copied().unwrap_or(class),
            )
        })
        .collect();

    // Per class and family: the distinct prefix lengths, longest first. Up to
    // MAX_CLASS_PREFIX_LENS of them are judged by hash lookups; more go to the LPM trie.
    let fits = |l: &[u8]| l.len() <= MAX_CLASS_PREFIX_LENS;
    let mut class_lens = Vec::new();
    let mut src_hash_v4 = Vec::new();
    let mut src_hash_v6 = Vec::new();
    let mut src_v4 = Vec::new();
    let mut src_v6 = Vec::new();
    for entries in by_class() {
        let class = entries[0].0.0;
        if direct.contains_key(&class) {
            continue;
        }
        let (mut v4_lens, mut v6_lens) = (Vec::new(), Vec::new());
        for ((_, net), _) in entries {
            match net {
                IpNet::V4(_) => v4_lens.push(net.prefix_len()),
                IpNet::V6(_) => v6_lens.push(net.prefix_len()),
            }
        }
        for l in [&mut v4_lens, &mut v6_lens] {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }
        let mut value = ClassLens::default();
        let pack = |l: &[u8], count: &mut u8, out: &mut [u8; MAX_CLASS_PREFIX_LENS]| {
            if fits(l) {
                *count = l.len() as u8;
                out[..l.len()].copy_from_slice(l);
            } else {
                *count = CLASS_LENS_USE_TRIE;
            }
        };
        pack(&v4_lens, &mut value.v4_count, &mut value.v4);
        pack(&v6_lens, &mut value.v6_count, &mut value.v6);
        class_lens.push((class, value));
        for &((_, net), (action, rule)) in entries {
            let value = RuleRef {
                rule,
                action: action_code(action),
            };
            let prefix_len = u32::from(net.prefix_len());
            match net {
                IpNet::V4(n) if fits(&v4_lens) => src_hash_v4.push((
                    SrcHashKeyV4 {
                        class,
                        prefix_len,
                        addr: n.addr().octets(),
                    },
                    value,
                )),
                IpNet::V6(n) if fits(&v6_lens) => src_hash_v6.push((
                    SrcHashKeyV6 {
                        class,
                        prefix_len,
                        addr: n.addr().octets(),
                    },
                    value,
                )),
                IpNet::V4(n) => src_v4.push((
                    CLASS_BITS + prefix_len,
                    SrcKeyV4 {
                        class: class.to_be_bytes(),
                        addr: n.addr().octets(),
                    },
                    value,
                )),
                IpNet::V6(n) => src_v6.push((
                    CLASS_BITS + prefix_len,
                    SrcKeyV6 {
                        class: class.to_be_bytes(),
                        addr: n.addr().octets(),
                    },
                    value,
                )),
            }
        }
    }

    let (port_slots, slots, fresh_slots) = port_slots(policy, previous_slots);
    let listen: Vec<u32> = policy.listen.as_ref().map_or_else(Vec::new, |l| {
        [(PROTO_IDX_TCP, &l.tcp), (PROTO_IDX_UDP, &l.udp)]
            .into_iter()
            .flat_map(|(proto_idx, ranges)| {
                ranges
                    .iter()
                    .flat_map(move |r| (r.first..=r.last).map(move |p| port_index(proto_idx, p)))
            })
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect()
    });

    let events = &policy.events;
    let interval_ns = if events.rate_per_second == 0 {
        0
    } else {
        1_000_000_000 / u64::from(events.rate_per_second)
    };
    let classes = class_of_set.values().copied().max().unwrap_or(0);
    let v4_sources = src_hash_v4
        .iter()
        .map(|(k, r)| (k.class, k.prefix_len, u32::from_be_bytes(k.addr), *r))
        .chain(src_v4.iter().map(|(len, k, r)| {
            let class = u32::from_be_bytes(k.class);
            (class, len - CLASS_BITS, u32::from_be_bytes(k.addr), *r)
        }));
    let (direct_v4, rows) = direct_v4(v4_sources, classes, &previous_classes.rows);
    Lowered {
        config: GuardConfig {
            direct_width: direct_v4.width,
            // Set per generation (`Contents::of`, `Contents::with_table_v6`).
            direct_class_offset: 0,
            table_v6_bits: 0,
            _pad: 0,
            mode: match policy.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Audit => MODE_AUDIT,
            },
            default_action: match policy.default_action {
                DefaultAction::Allow => ACTION_ALLOW,
                DefaultAction::Deny => ACTION_DENY,
            },
            event_interval_ns: interval_ns,
            event_tolerance_ns: interval_ns * u64::from(events.burst.saturating_sub(1)),
            // What one source may send in a window, at least the fixed budget.
            event_budget: (u64::from(events.burst)
                + u64::from(events.rate_per_second) * EVENT_BUDGET_WINDOW_NS / 1_000_000_000)
                .max(EVENT_BUDGET_PER_WINDOW),
            tcp_flow_timeout_ns: u64::from(policy.flows.tcp_timeout_seconds) * 1_000_000_000,
            udp_flow_timeout_ns: u64::from(policy.flows.udp_timeout_seconds) * 1_000_000_000,
            listen_enforced: u32::from(policy.listen.is_some()),
            udplite_denied: u32::from(
                policy
                    .egress
                    .iter()
                    .any(|r| r.proto == Proto::Udp && r.action != RuleAction::Allow),
            ),
        },
        rules,
        fresh_rules,
        fresh_slots,
        ports: ports.into_iter().collect(),
        protos,
        class_lens,
        src_hash_v4,
        src_hash_v6,
        src_v4,
        src_v6,
        listen,
        port_slots,
        slots,
        classes,
        direct_classes: direct.len() as u32,
        direct_v4,
        class_ids: ClassIds {
            classes: class_of_set,
            rows,
        },
    }
}

/// Splits the port space into maximal segments covered by the same non-empty set of rules,
/// each with its sorted rule set. A sweep over range ends: O(n log n + output).
fn segments(ranges: &[(PortRange, u32)]) -> Vec<(PortRange, Vec<u32>)> {
    // (port, +1 opens / -1 closes, rule); a range closes at last + 1.
    let mut events: Vec<(u32, i32, u32)> = ranges
        .iter()
        .flat_map(|&(r, rule)| {
            [
                (u32::from(r.first), 1, rule),
                (u32::from(r.last) + 1, -1, rule),
            ]
        })
        .collect();
    events.sort_unstable();
    let mut active: BTreeMap<u32, u32> = BTreeMap::new();
    let mut out: Vec<(PortRange, Vec<u32>)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while i < events.len() && events[i].0 == at {
            let (_, delta, rule) = events[i];
            if delta > 0 {
                *active.entry(rule).or_insert(0) += 1;
            } else if let Some(n) = active.get_mut(&rule) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&rule);
                }
            }
            i += 1;
        }
        let Some(&(next, _, _)) = events.get(i) else {
            break;
        };
        if active.is_empty() {
            continue;
        }
        let set: Vec<u32> = active.keys().copied().collect();
        let segment = PortRange {
            first: at as u16,
            last: (next - 1) as u16,
        };
        match out.last_mut() {
            Some((prev, prev_set)) if *prev_set == set && u32::from(prev.last) + 1 == at => {
                prev.last = segment.last;
            }
            _ => out.push((segment, set)),
        }
    }
    out
}
