//! Counter snapshots, summed over CPUs: per rule, per reason, per port, and events.

use std::borrow::Borrow;

use aya::maps::{MapData, MapError, PerCpuArray};
use guard_common::{
    EVENT_STATS_LEN, EVENTS_LOST, EVENTS_SENT, EVENTS_SUPPRESSED, PortStats,
    REASON_FRAGMENT_PASSED, REASON_MALFORMED, REASON_NOT_TCP_UDP, REASON_POLICY,
    REASON_REPLY_PASSED, REASON_UNSUPPORTED, REASONS_LEN, RuleStats,
};
use serde::{Deserialize, Serialize};

use crate::policy::{PortSlot, RuleInfo};

/// Names of the `REASON_*` counters, by index.
pub const REASON_NAMES: [(u32, &str); REASONS_LEN as usize] = [
    (REASON_POLICY, "policy"),
    (REASON_MALFORMED, "malformed"),
    (REASON_UNSUPPORTED, "unsupported"),
    (REASON_FRAGMENT_PASSED, "fragment_passed"),
    (REASON_NOT_TCP_UDP, "not_tcp_udp"),
    (REASON_REPLY_PASSED, "reply_passed"),
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

/// Inbound connection attempts to one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounter {
    pub proto: String,
    /// The port number, or `other` for every port the policy does not name.
    pub port: String,
    /// TCP: SYN without ACK; UDP: every datagram judged by the policy.
    pub attempted: u64,
    /// Attempts dropped (enforce mode).
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounters {
    pub sent: u64,
    /// Held back by the per-source rate limit.
    pub suppressed: u64,
    /// Lost because the ring buffer was full.
    pub lost: u64,
}

/// One snapshot of the kernel counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rules: Vec<RuleCounter>,
    /// Packets dropped (or, in audit mode, that would be) by reason, and passed unjudged.
    pub reasons: Vec<ReasonCounter>,
    /// The ports the policy names, and `other` per protocol.
    pub ports: Vec<PortCounter>,
    pub events: EventCounters,
}

impl Counters {
    /// The counter of the rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleCounter> {
        self.rules.iter().find(|r| r.rule == name)
    }

    /// The counter of the reason called `name` (see [`REASON_NAMES`]).
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons
            .iter()
            .find(|r| r.reason == name)
            .map_or(0, |r| r.packets)
    }

    /// The attempts counter of a port (a number, or `other`).
    pub fn port(&self, proto: &str, port: &str) -> Option<&PortCounter> {
        self.ports
            .iter()
            .find(|p| p.proto == proto && p.port == port)
    }
}

/// The maps a snapshot is read from, live or pinned.
pub struct CounterMaps<T> {
    pub rules: PerCpuArray<T, RuleStats>,
    pub reasons: PerCpuArray<T, u64>,
    pub ports: PerCpuArray<T, PortStats>,
    pub events: PerCpuArray<T, u64>,
}

impl<T: Borrow<MapData>> CounterMaps<T> {
    /// Reads every counter, summing per-CPU values; `rules` and `slots` name the slots.
    pub fn read(&self, rules: &[RuleInfo], slots: &[PortSlot]) -> Result<Counters, MapError> {
        let rule_counters = rules
            .iter()
            .enumerate()
            .map(|(i, info)| {
                let total =
                    self.rules
                        .get(&(i as u32), 0)?
                        .iter()
                        .fold(RuleStats::default(), |a, s| RuleStats {
                            packets: a.packets + s.packets,
                            bytes: a.bytes + s.bytes,
                        });
                Ok(RuleCounter {
                    rule: info.name.clone(),
                    action: info.action.clone(),
                    packets: total.packets,
                    bytes: total.bytes,
                })
            })
            .collect::<Result<_, MapError>>()?;
        let reasons = REASON_NAMES
            .iter()
            .map(|&(i, name)| {
                Ok(ReasonCounter {
                    reason: name.to_owned(),
                    packets: sum(&self.reasons, i)?,
                })
            })
            .collect::<Result<_, MapError>>()?;
        let ports = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let per_cpu = self.ports.get(&(i as u32), 0)?;
                let (attempted, rejected) = per_cpu
                    .iter()
                    .fold((0, 0), |(a, r), s| (a + s.attempted, r + s.rejected));
                Ok(PortCounter {
                    proto: slot.proto.clone(),
                    port: slot.port.clone(),
                    attempted,
                    rejected,
                })
            })
            .collect::<Result<_, MapError>>()?;
        debug_assert_eq!(EVENT_STATS_LEN, 3);
        let events = EventCounters {
            sent: sum(&self.events, EVENTS_SENT)?,
            suppressed: sum(&self.events, EVENTS_SUPPRESSED)?,
            lost: sum(&self.events, EVENTS_LOST)?,
        };
        Ok(Counters {
            rules: rule_counters,
            reasons,
            ports,
            events,
        })
    }
}

fn sum<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>, index: u32) -> Result<u64, MapError> {
    Ok(map.get(&index, 0)?.iter().sum())
}
