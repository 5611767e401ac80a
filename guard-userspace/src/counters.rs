//! Counter snapshots: per-rule packets/bytes and per-reason totals, summed over CPUs.

use std::borrow::Borrow;

use aya::maps::{MapData, MapError, PerCpuArray};
use guard_common::{
    REASON_FRAGMENT_PASSED, REASON_MALFORMED, REASON_NOT_TCP_UDP, REASON_POLICY,
    REASON_UNSUPPORTED, REASONS_LEN, RuleStats,
};
use serde::{Deserialize, Serialize};

use crate::policy::RuleInfo;

/// Names of the `REASON_*` counters, by index.
pub const REASON_NAMES: [(u32, &str); REASONS_LEN as usize] = [
    (REASON_POLICY, "policy"),
    (REASON_MALFORMED, "malformed"),
    (REASON_UNSUPPORTED, "unsupported"),
    (REASON_FRAGMENT_PASSED, "fragment_passed"),
    (REASON_NOT_TCP_UDP, "not_tcp_udp"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounter {
    pub rule: String,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCounter {
    pub reason: String,
    pub packets: u64,
}

/// One snapshot of the kernel counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rules: Vec<RuleCounter>,
    /// Packets dropped (or, in audit mode, that would be) by reason, and passed unjudged.
    pub reasons: Vec<ReasonCounter>,
}

impl Counters {
    pub fn new(rules: &[RuleInfo], rule_totals: &[RuleStats], reason_totals: &[u64]) -> Self {
        Self {
            rules: rules
                .iter()
                .zip(rule_totals)
                .map(|(info, s)| RuleCounter {
                    rule: info.name.clone(),
                    action: info.action.clone(),
                    packets: s.packets,
                    bytes: s.bytes,
                })
                .collect(),
            reasons: REASON_NAMES
                .iter()
                .map(|&(i, name)| ReasonCounter {
                    reason: name.to_owned(),
                    packets: reason_totals.get(i as usize).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    /// The counter of the rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleCounter> {
        self.rules.iter().find(|r| r.rule == name)
    }

    /// The counter of the drop reason called `name` (see [`REASON_NAMES`]).
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons
            .iter()
            .find(|r| r.reason == name)
            .map_or(0, |r| r.packets)
    }
}

/// Sums the first `n` rules' per-CPU counters.
pub fn sum_rules<T: Borrow<MapData>>(
    map: &PerCpuArray<T, RuleStats>,
    n: usize,
) -> Result<Vec<RuleStats>, MapError> {
    (0..n as u32)
        .map(|i| {
            let per_cpu = map.get(&i, 0)?;
            Ok(per_cpu
                .iter()
                .fold(RuleStats::default(), |acc, s| RuleStats {
                    packets: acc.packets + s.packets,
                    bytes: acc.bytes + s.bytes,
                }))
        })
        .collect()
}

/// Sums every reason counter over CPUs.
pub fn sum_reasons<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<Vec<u64>, MapError> {
    (0..REASONS_LEN)
        .map(|i| Ok(map.get(&i, 0)?.iter().sum()))
        .collect()
}
