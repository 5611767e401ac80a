//! Step 2b: warnings for legal but suspicious policies (shadowed and overlapping rules), said
//! by `guard check` and the daemon, never refused.

use std::{collections::BTreeMap, ops::Range};

use ipnet::IpNet;

use super::{
    Diagnostic,
    model::{Policy, Proto, Rule, RuleAction},
    validate::Findings,
};

/// Where each ingress and egress rule's name sits in the policy text, in rule order: what
/// the lint's warnings point at.
#[derive(Debug, Clone)]
pub struct RuleSpans {
    pub(super) ingress: Vec<Range<usize>>,
    pub(super) egress: Vec<Range<usize>>,
}

impl RuleSpans {
    /// The lint's warnings for `policy` (validated with these spans): shadowed and
    /// overlapping rules of each direction. None for a policy the spans do not fit (never
    /// seen: the caller keeps the two together), rather than a panic in the daemon.
    pub fn warnings(&self, policy: &Policy) -> Vec<Diagnostic> {
        if self.ingress.len() != policy.ingress.len() || self.egress.len() != policy.egress.len() {
            debug_assert!(false, "lint spans of another policy");
            return Vec::new();
        }
        let mut f = Findings::default();
        suspicious(&policy.ingress, &self.ingress, &mut f);
        suspicious(&policy.egress, &self.egress, &mut f);
        f.warnings
    }
}

/// The port ranges of the rules that name one (protocol, network), sorted by first port,
/// with the two largest last ports of distinct rules among each prefix: enough to tell in
/// a binary search whether a rule other than a given one may hold a range containing a
/// given one.
struct Reach {
    firsts: Vec<u16>,
    /// For each prefix of `firsts`: the largest last port and its rule, and the largest of
    /// any other rule.
    best: Vec<[(i32, usize); 2]>,
}

impl Reach {
    fn new(rules: &[Rule], group: &[usize]) -> Self {
        let mut ranges: Vec<(u16, u16, usize)> = group
            .iter()
            .flat_map(|&j| rules[j].ports.iter().map(move |p| (p.first, p.last, j)))
            .collect();
        ranges.sort_unstable();
        let mut best = Vec::with_capacity(ranges.len());
        let mut top: [(i32, usize); 2] = [(-1, usize::MAX), (-1, usize::MAX)];
        for &(_, last, j) in &ranges {
            let last = i32::from(last);
            if j == top[0].1 {
                top[0].0 = top[0].0.max(last);
            } else if last > top[0].0 {
                top = [(last, j), top[0]];
            } else if j == top[1].1 {
                top[1].0 = top[1].0.max(last);
            } else if last > top[1].0 {
                top[1] = (last, j);
            }
            best.push(top);
        }
        Self {
            firsts: ranges.iter().map(|&(first, _, _)| first).collect(),
            best,
        }
    }

    /// False when no rule but `rule` has a range from at most `first` to at least `last`.
    fn may_contain(&self, rule: usize, first: u16, last: u16) -> bool {
        let k = self.firsts.partition_point(|&f| f <= first);
        if k == 0 {
            return false;
        }
        let [a, b] = self.best[k - 1];
        let other = if a.1 == rule { b.0 } else { a.0 };
        other >= i32::from(last)
    }
}

/// Warnings for rules (of one direction) that are legal but probably not what was meant.
/// Rules are grouped by (protocol, network), so the cost follows the overlaps, not the
/// square of the rule count.
pub(super) fn suspicious(rules: &[Rule], spans: &[Range<usize>], f: &mut Findings) {
    let overlaps = |a: &Rule, b: &Rule| {
        a.ports.iter().any(|p| {
            b.ports
                .iter()
                .any(|q| p.first <= q.last && q.first <= p.last)
        })
    };
    let mut by_net: BTreeMap<(Proto, IpNet), Vec<usize>> = BTreeMap::new();
    for (i, r) in rules.iter().enumerate() {
        for n in &r.nets {
            by_net.entry((r.proto, *n)).or_default().push(i);
        }
    }
    let reach: BTreeMap<&(Proto, IpNet), Reach> = by_net
        .iter()
        .map(|(key, group)| (key, Reach::new(rules, group)))
        .collect();
    let mut shadowed = vec![false; rules.len()];
    for (i, r) in rules.iter().enumerate() {
        // Fully shadowed: for every port range and network, another rule names the same
        // network for a range containing it and wins (stronger action, or equal and earlier).
        let wins = |j: usize| rules[j].action > r.action || (rules[j].action == r.action && j < i);
        let mut by: Vec<&str> = Vec::new();
        let covered = r.nets.iter().all(|n| {
            let key = (r.proto, *n);
            r.ports.iter().all(|p| {
                // Most rules sharing a network share no port: settled without the scan.
                if !reach[&key].may_contain(i, p.first, p.last) {
                    return false;
                }
                by_net[&key].iter().any(|&j| {
                    let hit = j != i
                        && wins(j)
                        && rules[j]
                            .ports
                            .iter()
                            .any(|q| q.first <= p.first && p.last <= q.last);
                    if hit && !by.contains(&rules[j].name.as_str()) {
                        by.push(&rules[j].name);
                    }
                    hit
                })
            })
        });
        if covered && !r.nets.is_empty() {
            shadowed[i] = true;
            f.warn(
                spans[i].clone(),
                format!(
                    "rule `{}` is fully shadowed (by {}): it never matches",
                    r.name,
                    by.join(", ")
                ),
            );
        }
    }
    // The same network with different actions: the stronger one wins.
    let mut warned = std::collections::HashSet::new();
    for ((proto, net), group) in &by_net {
        for (a, &i) in group.iter().enumerate() {
            for &j in &group[a + 1..] {
                let (r, s) = (&rules[i], &rules[j]);
                if r.action == s.action
                    || shadowed[i]
                    || shadowed[j]
                    || !overlaps(r, s)
                    || !warned.insert((i, j))
                {
                    continue;
                }
                let winner = if r.action > s.action { r } else { s };
                f.warn(
                    spans[j].clone(),
                    format!(
                        "rules `{}` ({}) and `{}` ({}) both name {net} for {proto} ports they share: `{}` wins",
                        r.name, r.action, s.name, s.action, winner.name
                    ),
                );
            }
        }
    }
    // Allowed from any, and also listed as reachable from narrower sources only.
    let from_any: Vec<usize> = (0..rules.len())
        .filter(|&i| {
            rules[i].action == RuleAction::Allow
                && rules[i].nets.iter().any(|n| n.prefix_len() == 0)
        })
        .collect();
    for (i, r) in rules.iter().enumerate() {
        if r.action != RuleAction::Allow
            || r.nets.iter().any(|n| n.prefix_len() == 0)
            || shadowed[i]
        {
            continue;
        }
        if let Some(&w) = from_any
            .iter()
            .find(|&&w| rules[w].proto == r.proto && overlaps(&rules[w], r))
        {
            f.warn(
                spans[i].clone(),
                format!(
                    "`{}` allows {} ports from any source that `{}` limits to {}: the limit has no effect",
                    rules[w].name,
                    r.proto,
                    r.name,
                    r.peers.join(", ")
                ),
            );
        }
    }
}
