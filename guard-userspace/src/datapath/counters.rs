//! Counter snapshots, summed over CPUs: per rule, per reason, per port, and events.

use std::borrow::Borrow;

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap};
use guard_common::{
    CONN_INBOUND, ConnStats, DenyTally, EVENT_STATS_LEN, EVENTS_LOST, EVENTS_SENT,
    EVENTS_SUPPRESSED, PROTO_IDX_TCP, PortStats, REASON_BAD_ACTION, REASON_FRAGMENT_PASSED,
    REASON_ICMP_PASSED, REASON_MALFORMED, REASON_NOT_IP, REASON_POLICY, REASON_REPLY_PASSED,
    REASON_UNCONFIGURED, REASON_UNSUPPORTED, REASONS_LEN, RTT_BUCKETS, RULE_DEFAULT, RttHist,
    RuleStats, conn_key_parts, port_index_parts,
};
use serde::{Deserialize, Serialize};

use crate::policy::{
    PortSlot, RuleInfo,
    model::{PortLabel, Proto, RuleAction},
};

/// Which way a counted connection went: `inbound` (a local port accepted it) or `outbound`
/// (the host connected to a remote port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Compares with the name, so `direction == "inbound"` reads as it does in JSON.
impl PartialEq<&str> for Direction {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a packet was dropped (or, in audit mode, would have been), or passed unjudged: the
/// `REASON_*` counters of the kernel, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Policy,
    Malformed,
    Unsupported,
    FragmentPassed,
    NotIp,
    ReplyPassed,
    #[serde(rename = "icmp_control")]
    IcmpPassed,
    Unconfigured,
    BadAction,
}

impl Reason {
    /// Every reason with its counter index, in index order.
    pub const ALL: [(u32, Reason); REASONS_LEN as usize] = [
        (REASON_POLICY, Reason::Policy),
        (REASON_MALFORMED, Reason::Malformed),
        (REASON_UNSUPPORTED, Reason::Unsupported),
        (REASON_FRAGMENT_PASSED, Reason::FragmentPassed),
        (REASON_NOT_IP, Reason::NotIp),
        (REASON_REPLY_PASSED, Reason::ReplyPassed),
        (REASON_ICMP_PASSED, Reason::IcmpPassed),
        (REASON_UNCONFIGURED, Reason::Unconfigured),
        (REASON_BAD_ACTION, Reason::BadAction),
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Policy => "policy",
            Reason::Malformed => "malformed",
            Reason::Unsupported => "unsupported",
            Reason::FragmentPassed => "fragment_passed",
            Reason::NotIp => "not_ip",
            Reason::ReplyPassed => "reply_passed",
            Reason::IcmpPassed => "icmp_control",
            Reason::Unconfigured => "unconfigured",
            Reason::BadAction => "bad_action",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the name, so `reason == "policy"` reads as it does in JSON.
impl PartialEq<&str> for Reason {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounter {
    pub rule: String,
    pub action: RuleAction,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCounter {
    pub reason: Reason,
    pub packets: u64,
}

/// Inbound connection attempts to one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounter {
    pub proto: Proto,
    /// The port number, or `other` for every port the policy does not name.
    pub port: PortLabel,
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

/// TCP connections of one port seen by sock_ops in the guarded cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnCounter {
    pub direction: Direction,
    pub port: u16,
    pub established: u64,
    pub closed: u64,
    /// Established and not closed yet.
    pub active: u64,
    /// Smoothed-RTT samples: `rtt_log2_us[i]` counts samples in [2^i, 2^(i+1)) µs.
    pub rtt_log2_us: Vec<u64>,
}

/// The upper bound (µs) of the log2 bucket holding quantile `q` of `counts`, where bucket i
/// counts samples in [2^i, 2^(i+1)) µs; `None` without samples.
pub fn log2_quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    counts.iter().enumerate().find_map(|(i, n)| {
        seen += n;
        (seen >= rank).then(|| 1u64 << (i + 1))
    })
}

impl ConnCounter {
    /// The upper bound (µs) of the histogram bucket holding quantile `q` of the RTT samples.
    pub fn rtt_quantile_us(&self, q: f64) -> Option<u64> {
        log2_quantile_us(&self.rtt_log2_us, q)
    }
}

/// Denied `bind()` calls for one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindDenied {
    pub proto: Proto,
    pub port: u16,
    pub count: u64,
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
    /// Per port and direction, by direction then port.
    pub connections: Vec<ConnCounter>,
    pub bind_denied: Vec<BindDenied>,
}

impl Counters {
    /// The connection counter of a port in a direction (`inbound` or `outbound`).
    pub fn connection(&self, direction: &str, port: u16) -> Option<&ConnCounter> {
        self.connections
            .iter()
            .find(|c| c.direction.as_str() == direction && c.port == port)
    }

    /// The counter of the rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleCounter> {
        self.rules.iter().find(|r| r.rule == name)
    }

    /// The counter of the reason called `name` (see [`Reason`]).
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
    /// The per-CPU tally of policy denies, the default's denies and suppressed events
    /// (`None`: pins of layout 2, which counted them in `reasons`, `rules` and `events`).
    pub tally: Option<PerCpuArray<T, DenyTally>>,
    pub conns: PerCpuHashMap<T, u32, ConnStats>,
    pub rtt: PerCpuHashMap<T, u32, RttHist>,
    pub bind_denied: PerCpuHashMap<T, u32, u64>,
}

impl<T: Borrow<MapData>> CounterMaps<T> {
    /// Reads every counter, summing per-CPU values; `rules` and `slots` name the slots.
    pub fn read(&self, rules: &[RuleInfo], slots: &[PortSlot]) -> Result<Counters, MapError> {
        // Layout 3's programs count policy denies, the default's denies and suppressed
        // events in the tally; what layout 2's counted stays in `reasons`, `rules` and
        // `events`: each figure is the sum.
        let tally = match &self.tally {
            Some(map) => map
                .get(&0, 0)?
                .iter()
                .fold(DenyTally::default(), |a, t| DenyTally {
                    policy: a.policy + t.policy,
                    suppressed: a.suppressed + t.suppressed,
                    default_packets: a.default_packets + t.default_packets,
                    default_bytes: a.default_bytes + t.default_bytes,
                    ..a
                }),
            None => DenyTally::default(),
        };
        let rule_counters = rules
            .iter()
            .map(|info| {
                let tallied = if info.index == RULE_DEFAULT {
                    RuleStats {
                        packets: tally.default_packets,
                        bytes: tally.default_bytes,
                    }
                } else {
                    RuleStats::default()
                };
                let total = self
                    .rules
                    .get(&info.index, 0)?
                    .iter()
                    .fold(tallied, |a, s| RuleStats {
                        packets: a.packets + s.packets,
                        bytes: a.bytes + s.bytes,
                    });
                Ok(RuleCounter {
                    rule: info.name.clone(),
                    action: info.action,
                    packets: total.packets,
                    bytes: total.bytes,
                })
            })
            .collect::<Result<_, MapError>>()?;
        let reasons = Reason::ALL
            .iter()
            .map(|&(i, reason)| {
                let tallied = if i == REASON_POLICY { tally.policy } else { 0 };
                Ok(ReasonCounter {
                    reason,
                    packets: sum(&self.reasons, i)? + tallied,
                })
            })
            .collect::<Result<_, MapError>>()?;
        let ports = slots
            .iter()
            .map(|slot| {
                let per_cpu = self.ports.get(&slot.slot, 0)?;
                let (attempted, rejected) = per_cpu
                    .iter()
                    .fold((0, 0), |(a, r), s| (a + s.attempted, r + s.rejected));
                Ok(PortCounter {
                    proto: slot.proto,
                    port: slot.port,
                    attempted,
                    rejected,
                })
            })
            .collect::<Result<_, MapError>>()?;
        debug_assert_eq!(EVENT_STATS_LEN, 3);
        let events = EventCounters {
            sent: sum(&self.events, EVENTS_SENT)?,
            suppressed: sum(&self.events, EVENTS_SUPPRESSED)? + tally.suppressed,
            lost: sum(&self.events, EVENTS_LOST)?,
        };
        let mut connections = Vec::new();
        for entry in self.conns.iter() {
            let (key, per_cpu) = entry?;
            let (established, closed) = per_cpu
                .iter()
                .fold((0, 0), |(e, c), s| (e + s.established, c + s.closed));
            let rtt_log2_us = match self.rtt.get(&key, 0) {
                Ok(per_cpu) => (0..RTT_BUCKETS)
                    .map(|b| per_cpu.iter().map(|h| h.buckets[b]).sum())
                    .collect(),
                Err(MapError::KeyNotFound) => vec![0; RTT_BUCKETS],
                Err(e) => return Err(e),
            };
            let (direction, port) = conn_key_parts(key);
            connections.push(ConnCounter {
                direction: if direction == CONN_INBOUND {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                port,
                established,
                closed,
                active: established.saturating_sub(closed),
                rtt_log2_us,
            });
        }
        connections.sort_by_key(|c| (c.direction, c.port));
        let mut bind_denied = Vec::new();
        for entry in self.bind_denied.iter() {
            let (key, per_cpu) = entry?;
            let (proto_idx, port) = port_index_parts(key);
            bind_denied.push(BindDenied {
                proto: if proto_idx == PROTO_IDX_TCP {
                    Proto::Tcp
                } else {
                    Proto::Udp
                },
                port,
                count: per_cpu.iter().sum(),
            });
        }
        bind_denied.sort_by_key(|b| (b.proto, b.port));
        Ok(Counters {
            rules: rule_counters,
            reasons,
            ports,
            events,
            connections,
            bind_denied,
        })
    }
}

fn sum<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>, index: u32) -> Result<u64, MapError> {
    Ok(map.get(&index, 0)?.iter().sum())
}
