//! Deny events from the kernel ring buffer, as structured `tracing` records
//! (target `guard::event`; with `--log-format json` one JSON object per line).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guard_common::{
    EVENT_AUDIT_DROP, EVENT_BIND_DENIED, EVENT_CONNECT_DENIED, EVENT_DROP, EVENT_FLAG_AUDIT, Event,
};
use serde::Serialize;

use crate::policy::RuleInfo;

/// An event with names resolved, ready to log or print.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenyEvent {
    /// Unix time in seconds.
    pub ts: f64,
    /// `drop`, `audit_drop` or `bind_denied`.
    pub kind: &'static str,
    /// The rule (packet events).
    pub rule: String,
    /// Audit mode: reported, not denied (socket events; packets say `audit_drop`).
    pub audit: bool,
    /// The process (socket events).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `tcp`, `udp`, `udplite`, or another IP protocol's name or number.
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub ifindex: u32,
    /// Events from this source held back by the rate limit since its previous event.
    pub suppressed: u32,
}

/// Turns kernel records into [`DenyEvent`]s.
pub struct Decoder {
    /// The running policy's rules (replaced on every policy change, [`Decoder::set_rules`]).
    rules: std::sync::RwLock<Vec<RuleInfo>>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC_COARSE (the kernel's event clock), in ns, at start.
    realtime_offset_ns: i128,
}

fn clock_ns(clock: rustix::time::ClockId) -> i128 {
    let ts = rustix::time::clock_gettime(clock);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn addr(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

impl Decoder {
    pub fn new(rules: Vec<RuleInfo>) -> Self {
        Self {
            rules: std::sync::RwLock::new(rules),
            realtime_offset_ns: clock_ns(rustix::time::ClockId::Realtime)
                - clock_ns(rustix::time::ClockId::MonotonicCoarse),
        }
    }

    /// Names rules by `rules` from now on.
    pub fn set_rules(&self, rules: Vec<RuleInfo>) {
        if let Ok(mut current) = self.rules.write() {
            *current = rules;
        }
    }

    /// Decodes one ring-buffer record; `None` for a record of the wrong size or kind.
    pub fn decode(&self, bytes: &[u8]) -> Option<DenyEvent> {
        if bytes.len() < size_of::<Event>() {
            return None;
        }
        // SAFETY: the length is checked; Event is plain old data; the read is unaligned-safe.
        let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = match ev.kind {
            EVENT_DROP => "drop",
            EVENT_AUDIT_DROP => "audit_drop",
            EVENT_BIND_DENIED => "bind_denied",
            EVENT_CONNECT_DENIED => "connect_denied",
            _ => return None,
        };
        let socket_event = matches!(ev.kind, EVENT_BIND_DENIED | EVENT_CONNECT_DENIED);
        let comm_len = ev
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ev.comm.len());
        let rule = self
            .rules
            .read()
            .ok()
            .and_then(|rules| {
                rules
                    .iter()
                    .find(|r| r.index == ev.rule)
                    .map(|r| r.name.clone())
            })
            .unwrap_or_else(|| format!("#{}", ev.rule));
        Some(DenyEvent {
            ts: (i128::from(ev.ts_ns) + self.realtime_offset_ns) as f64 / 1e9,
            kind,
            rule: if ev.kind == EVENT_BIND_DENIED {
                String::new()
            } else {
                rule
            },
            audit: ev.flags & EVENT_FLAG_AUDIT != 0,
            pid: socket_event.then_some(ev.pid),
            comm: socket_event.then(|| String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned()),
            proto: crate::policy::model::protocol_name(ev.proto),
            src: addr(ev.src, ev.family),
            sport: ev.sport,
            dst: addr(ev.dst, ev.family),
            dport: ev.dport,
            ifindex: ev.ifindex,
            suppressed: ev.suppressed,
        })
    }
}

/// The most recent events (kernel events and policy changes), numbered, for
/// `guard events`. Holds at most [`Recent::CAPACITY`]; older ones are only in the log.
#[derive(Debug, Default)]
pub struct Recent {
    next: u64,
    events: std::collections::VecDeque<(u64, serde_json::Value)>,
}

impl Recent {
    pub const CAPACITY: usize = 1000;

    pub fn push(&mut self, event: serde_json::Value) {
        if self.events.len() == Self::CAPACITY {
            self.events.pop_front();
        }
        self.next += 1;
        self.events.push_back((self.next, event));
    }

    /// Events numbered above `since` (all kept ones for 0), and the number to ask from next.
    pub fn since(&self, since: u64) -> (Vec<serde_json::Value>, u64) {
        let events = self
            .events
            .iter()
            .filter(|(n, _)| *n > since)
            .map(|(n, e)| {
                let mut e = e.clone();
                e["seq"] = (*n).into();
                e
            })
            .collect();
        (events, self.next)
    }
}

/// Logs one event.
pub fn log(ev: &DenyEvent) {
    if let (Some(pid), Some(comm)) = (ev.pid, &ev.comm)
        && ev.kind == "connect_denied"
    {
        tracing::info!(
            target: "guard::event",
            ts = ev.ts,
            kind = ev.kind,
            audit = ev.audit,
            rule = ev.rule,
            proto = ev.proto,
            dst = %ev.dst,
            dport = ev.dport,
            pid,
            comm = comm.as_str(),
            suppressed = ev.suppressed,
            "{}{}", ev.kind, if ev.audit { " (audit: allowed)" } else { "" }
        );
        return;
    }
    if let (Some(pid), Some(comm)) = (ev.pid, &ev.comm) {
        tracing::info!(
            target: "guard::event",
            ts = ev.ts,
            kind = ev.kind,
            audit = ev.audit,
            proto = ev.proto,
            addr = %ev.src,
            port = ev.sport,
            pid,
            comm = comm.as_str(),
            suppressed = ev.suppressed,
            "{}{}", ev.kind, if ev.audit { " (audit: allowed)" } else { "" }
        );
        return;
    }
    tracing::info!(
        target: "guard::event",
        ts = ev.ts,
        kind = ev.kind,
        rule = ev.rule,
        proto = ev.proto,
        src = %ev.src,
        sport = ev.sport,
        dst = %ev.dst,
        dport = ev.dport,
        ifindex = ev.ifindex,
        suppressed = ev.suppressed,
        "{}", ev.kind
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::RuleAction;

    fn raw(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn decodes_ipv4_and_ipv6_events_with_rule_names() {
        let d = Decoder::new(vec![
            RuleInfo {
                index: 0,
                name: "default".into(),
                action: RuleAction::Deny,
            },
            RuleInfo {
                index: 1,
                name: "failsafe".into(),
                action: RuleAction::Allow,
            },
        ]);
        let mut ev = Event {
            ts_ns: 1,
            kind: EVENT_DROP,
            rule: 0,
            sport: 40000,
            dport: 81,
            family: 4,
            proto: 6,
            ifindex: 7,
            suppressed: 3,
            ..Default::default()
        };
        ev.src[10..].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 2]);
        ev.dst[10..].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 1]);
        let got = d.decode(&raw(&ev)).unwrap();
        assert_eq!(
            (got.kind, got.rule.as_str(), got.proto.as_str()),
            ("drop", "default", "tcp")
        );
        assert_eq!(got.src, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(got.dst, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (got.sport, got.dport, got.ifindex, got.suppressed),
            (40000, 81, 7, 3)
        );
        assert!(got.ts > 1.0e9, "wall-clock seconds");

        ev.family = 6;
        ev.kind = EVENT_AUDIT_DROP;
        ev.proto = 17;
        ev.rule = 9;
        ev.src = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let got = d.decode(&raw(&ev)).unwrap();
        assert_eq!(
            (got.kind, got.rule.as_str(), got.proto.as_str()),
            ("audit_drop", "#9", "udp")
        );
        assert_eq!(got.src, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn recent_keeps_the_newest_and_numbers_them() {
        let mut r = Recent::default();
        for i in 0..(Recent::CAPACITY + 5) {
            r.push(serde_json::json!({ "i": i }));
        }
        let (all, next) = r.since(0);
        assert_eq!(
            (all.len(), next),
            (Recent::CAPACITY, Recent::CAPACITY as u64 + 5)
        );
        assert_eq!(all[0]["i"], 5);
        let (tail, _) = r.since(next - 2);
        assert_eq!(
            tail.iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [next - 1, next]
        );
    }

    #[test]
    fn rejects_short_or_unknown_records() {
        let d = Decoder::new(Vec::new());
        assert_eq!(d.decode(&[0u8; 10]), None);
        let ev = Event {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(d.decode(&raw(&ev)), None);
    }
}
