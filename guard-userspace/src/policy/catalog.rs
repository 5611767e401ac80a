//! Rule and port-slot identity: which counter slot each rule and each named port gets.
//! A rule or port that stays across policy changes keeps its slot, so its counters continue;
//! new ones take the lowest free slots.

use std::collections::HashMap;

use guard_common::{
    MAX_PORT_SLOTS, PORT_SLOT_FIRST_NAMED, PORT_SLOT_OTHER_TCP, PORT_SLOT_OTHER_UDP, PROTO_IDX_TCP,
    PROTO_IDX_UDP, RULE_DEFAULT, RULE_EGRESS_DEFAULT, RULE_FAILSAFE, RULE_FIRST_POLICY, RULE_REPLY,
    port_index,
};
use ipnet::IpNet;
use serde::Serialize;

use super::model::{DefaultAction, Mode, Policy, PortLabel, PortRange, Proto, RuleAction};

/// What a rule's counters mean, for `guard stats` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleInfo {
    /// The rule's counter slot; stable across policy changes for a rule of the same name.
    pub index: u32,
    pub name: String,
    /// What happens to the packets the rule counts. In audit mode denials are reported as
    /// `audit`.
    pub action: RuleAction,
}

/// What a per-port counter slot counts, for `guard stats` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortSlot {
    /// The counter slot; stable across policy changes for the same (protocol, port).
    pub slot: u32,
    pub proto: Proto,
    /// The port number, or `other` for the ports the policy does not name.
    pub port: PortLabel,
}

/// Ranges longer than this get no per-port slots (their ports count as `other`).
pub const MAX_SLOTTED_RANGE: u32 = 256;

/// A policy's rules in counter order before slots: ingress, then egress, then
/// whole-protocol rules (names are unique across all of them), as (name, action, networks).
pub(super) fn policy_rules(policy: &Policy) -> Vec<(&str, RuleAction, &[IpNet])> {
    policy
        .ingress
        .iter()
        .chain(&policy.egress)
        .map(|r| (r.name.as_str(), r.action, r.nets.as_slice()))
        .chain(
            policy
                .protocols
                .iter()
                .map(|r| (r.name.as_str(), r.action, r.nets.as_slice())),
        )
        .collect()
}

/// The rules' counter slots: guard's own four first, then `all_rules` (from
/// [`policy_rules`]) keeping the slots `previous_rules` gave the same names. Returns every
/// rule sorted by slot, the slot of each of `all_rules`, and the fresh slots.
pub(super) fn rule_catalog(
    policy: &Policy,
    all_rules: &[(&str, RuleAction, &[IpNet])],
    previous_rules: &[RuleInfo],
) -> (Vec<RuleInfo>, Vec<u32>, Vec<u32>) {
    let default_rule = match policy.default_action {
        DefaultAction::Allow => RuleAction::Allow,
        DefaultAction::Deny => RuleAction::Deny,
    };
    let synthetic = [
        (RULE_DEFAULT, "default", label(default_rule, policy.mode)),
        (RULE_FAILSAFE, "failsafe", RuleAction::Allow),
        (RULE_REPLY, "reply", RuleAction::Allow),
        (RULE_EGRESS_DEFAULT, "egress-default", RuleAction::Allow),
    ];
    let mut rules: Vec<RuleInfo> = synthetic
        .into_iter()
        .enumerate()
        .map(|(i, (index, name, action))| {
            debug_assert_eq!(i as u32, index);
            RuleInfo {
                index,
                name: name.into(),
                action,
            }
        })
        .collect();
    debug_assert_eq!(rules.len() as u32, RULE_FIRST_POLICY);
    let names: Vec<&str> = all_rules.iter().map(|r| r.0).collect();
    let previous: Vec<(&str, u32)> = previous_rules
        .iter()
        .filter(|r| r.index >= RULE_FIRST_POLICY)
        .map(|r| (r.name.as_str(), r.index))
        .collect();
    let (index_of, fresh) = assign(&names, &previous, RULE_FIRST_POLICY);
    rules.extend(
        all_rules
            .iter()
            .zip(&index_of)
            .map(|(&(name, action, _), &index)| RuleInfo {
                index,
                name: name.to_owned(),
                action: label(action, policy.mode),
            }),
    );
    rules.sort_by_key(|r| r.index);
    (rules, index_of, fresh)
}

/// What a rule's counters report: in audit mode, denials are reported as `audit`.
fn label(action: RuleAction, mode: Mode) -> RuleAction {
    match (action, mode) {
        (RuleAction::Deny, Mode::Audit) => RuleAction::Audit,
        (a, _) => a,
    }
}

/// Gives each key the index it had before, or else the smallest index from `first` on
/// that no key holds. Returns the indices and which of them are fresh.
fn assign<K: Eq + std::hash::Hash>(
    keys: &[K],
    previous: &[(K, u32)],
    first: u32,
) -> (Vec<u32>, Vec<u32>) {
    let previous: HashMap<&K, u32> = previous.iter().map(|(k, i)| (k, *i)).collect();
    let kept: Vec<Option<u32>> = keys.iter().map(|k| previous.get(k).copied()).collect();
    // The indices held, as flags: a new key's index is at most `first + keys.len()`, so
    // the flags reach past every index the search can try.
    let highest_kept = kept.iter().flatten().max().map_or(0, |&i| i as usize + 1);
    let mut used = vec![false; highest_kept.max(first as usize + keys.len() + 1)];
    for &i in kept.iter().flatten() {
        used[i as usize] = true;
    }
    let mut next = first as usize;
    let mut fresh = Vec::new();
    let indices = kept
        .into_iter()
        .map(|k| {
            k.unwrap_or_else(|| {
                while used[next] {
                    next += 1;
                }
                used[next] = true;
                fresh.push(next as u32);
                next as u32
            })
        })
        .collect();
    (indices, fresh)
}

/// Counter slots for the ports the policy names (rule ports and failsafe ports; ranges of
/// at most [`MAX_SLOTTED_RANGE`] ports), after the two "other" slots, up to
/// [`MAX_PORT_SLOTS`]. Returns the slot array entries and the slot names.
pub(super) fn port_slots(
    policy: &Policy,
    previous: &[PortSlot],
) -> (Vec<(u32, u32)>, Vec<PortSlot>, Vec<u32>) {
    let mut named: Vec<(u32, u16)> = Vec::new();
    let mut add = |proto_idx: u32, range: &PortRange| {
        if u32::from(range.last) - u32::from(range.first) < MAX_SLOTTED_RANGE {
            named.extend((range.first..=range.last).map(|p| (proto_idx, p)));
        }
    };
    for rule in &policy.ingress {
        let proto_idx = match rule.proto {
            Proto::Tcp => PROTO_IDX_TCP,
            Proto::Udp => PROTO_IDX_UDP,
        };
        rule.ports.iter().for_each(|r| add(proto_idx, r));
    }
    policy
        .failsafe_ports
        .iter()
        .for_each(|r| add(PROTO_IDX_TCP, r));
    named.sort_unstable();
    named.dedup();
    named.truncate((MAX_PORT_SLOTS - PORT_SLOT_FIRST_NAMED) as usize);
    let proto_name = |idx: u32| {
        if idx == PROTO_IDX_TCP {
            Proto::Tcp
        } else {
            Proto::Udp
        }
    };
    let keys: Vec<(Proto, PortLabel)> = named
        .iter()
        .map(|&(p, port)| (proto_name(p), PortLabel::Number(port)))
        .collect();
    let previous: Vec<((Proto, PortLabel), u32)> = previous
        .iter()
        .filter(|s| s.slot >= PORT_SLOT_FIRST_NAMED)
        .map(|s| ((s.proto, s.port), s.slot))
        .collect();
    let (indices, fresh) = assign(&keys, &previous, PORT_SLOT_FIRST_NAMED);
    let mut slots = vec![
        PortSlot {
            slot: PORT_SLOT_OTHER_TCP,
            proto: proto_name(PORT_SLOT_OTHER_TCP),
            port: PortLabel::Other,
        },
        PortSlot {
            slot: PORT_SLOT_OTHER_UDP,
            proto: proto_name(PORT_SLOT_OTHER_UDP),
            port: PortLabel::Other,
        },
    ];
    let mut entries = Vec::with_capacity(named.len());
    for ((&(proto_idx, port), (proto, port_text)), slot) in named.iter().zip(keys).zip(indices) {
        entries.push((port_index(proto_idx, port), slot));
        slots.push(PortSlot {
            slot,
            proto,
            port: port_text,
        });
    }
    slots.sort_by_key(|s| s.slot);
    (entries, slots, fresh)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The rule `assign` follows, written plainly: kept keys keep their index; each new key,
    /// in order, takes the smallest index from `first` on that no key holds.
    fn assign_reference(keys: &[u16], previous: &[(u16, u32)], first: u32) -> (Vec<u32>, Vec<u32>) {
        let kept: Vec<Option<u32>> = keys
            .iter()
            .map(|k| previous.iter().rev().find(|(p, _)| p == k).map(|&(_, i)| i))
            .collect();
        let mut used: Vec<u32> = kept.iter().flatten().copied().collect();
        let mut fresh = Vec::new();
        let indices = kept
            .into_iter()
            .map(|k| {
                k.unwrap_or_else(|| {
                    let i = (first..).find(|i| !used.contains(i)).unwrap();
                    used.push(i);
                    fresh.push(i);
                    i
                })
            })
            .collect();
        (indices, fresh)
    }

    #[test]
    fn new_keys_fill_the_gaps_kept_keys_leave() {
        let previous = [("a", 4), ("b", 6), ("low", 1)];
        let (indices, fresh) = assign(&["x", "b", "low", "y", "a", "z"], &previous, 4);
        assert_eq!(indices, [5, 6, 1, 7, 4, 8]);
        assert_eq!(fresh, [5, 7, 8]);
    }

    #[test]
    fn a_high_kept_index_is_kept() {
        let (indices, fresh) = assign(&["a", "new"], &[("a", 1_000)], 4);
        assert_eq!(indices, [1_000, 4]);
        assert_eq!(fresh, [4]);
    }

    proptest! {
        #[test]
        fn assign_matches_the_plain_rule(
            // Distinct keys, as the policy's names are.
            keys in proptest::collection::btree_set(0u16..64, 0..40),
            previous in proptest::collection::btree_map(0u16..64, 0u32..80, 0..40),
            first in 0u32..8,
        ) {
            let keys: Vec<u16> = keys.into_iter().collect();
            let previous: Vec<(u16, u32)> = previous.into_iter().collect();
            prop_assert_eq!(
                assign(&keys, &previous, first),
                assign_reference(&keys, &previous, first)
            );
        }
    }
}
