//! Health for failover: the anomaly detectors the `[health]` section configures, fed one
//! counter snapshot per window, and the verdict `/health` returns.
//!
//! Detectors (each off unless its threshold is set):
//! - `rtt`: per port and direction, the RTT p99 of the samples in a window (at least
//!   `rtt_min_samples` of them) above `rtt_factor` times that port's own baseline. The
//!   baseline is a moving average (weight 1/4) of the p99 of earlier normal windows; a
//!   window that fires does not move it, so a lasting degradation keeps firing.
//! - `rejections`: inbound rejections across all ports per second above
//!   `rejected_per_second`.
//! - `overflows`: TCP listen-queue overflows per second above `overflows_per_second`.
//!
//! A detector clears on the first window below its threshold. RTT samples are the kernel's
//! smoothed RTT in log2 buckets, so p99 is a bucket's upper bound (a power of two in µs).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    datapath::counters::{Counters, Direction, log2_quantile_us},
    policy::model::HealthPolicy,
};

/// A detector that is firing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    pub detector: &'static str,
    /// What fired: `tcp/443 inbound`, or `all ports`, `host`.
    pub subject: String,
    /// The measured value and the threshold it crossed (µs for RTT, per second otherwise).
    pub value: f64,
    pub threshold: f64,
    pub message: String,
}

/// A detector starting or stopping to fire.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Fired(Anomaly),
    Cleared(Anomaly),
}

#[derive(Debug, Clone, Default)]
struct Baseline {
    /// Moving average of normal windows' p99, µs.
    p99_us: f64,
    windows: u32,
}

/// One window's worth of cumulative counters.
#[derive(Debug, Clone)]
struct Sample {
    at_secs: f64,
    rtt: BTreeMap<(Direction, u16), Vec<u64>>,
    rejected: u64,
    overflows: u64,
}

impl Sample {
    fn of(at_secs: f64, counters: &Counters, overflows: u64) -> Self {
        Self {
            at_secs,
            rtt: counters
                .connections
                .iter()
                .map(|c| ((c.direction, c.port), c.rtt_log2_us.clone()))
                .collect(),
            rejected: counters.ports.iter().map(|p| p.rejected).sum(),
            overflows,
        }
    }
}

/// Baselines need this many normal windows before the RTT detector judges a port.
pub const BASELINE_WINDOWS: u32 = 3;

/// The detectors' state across windows. Their configuration, the running policy's
/// `[health]`, is given to each [`Detectors::observe`].
#[derive(Debug, Default)]
pub struct Detectors {
    last: Option<Sample>,
    baselines: BTreeMap<(Direction, u16), Baseline>,
    firing: BTreeMap<(&'static str, String), Anomaly>,
    /// Anomalies fired since start, by detector.
    fired: BTreeMap<&'static str, u64>,
}

/// The upper bound (µs) of the bucket holding the 99th percentile of `counts`.
pub fn p99_us(counts: &[u64]) -> Option<u64> {
    log2_quantile_us(counts, 0.99)
}

impl Detectors {
    /// The detectors firing now.
    pub fn firing(&self) -> Vec<Anomaly> {
        self.firing.values().cloned().collect()
    }

    /// Anomalies fired since start, by detector: every detector, zero when it never fired.
    pub fn fired(&self) -> Vec<(&'static str, u64)> {
        DETECTORS
            .iter()
            .map(|&d| (d, self.fired.get(d).copied().unwrap_or(0)))
            .collect()
    }

    /// Judges the window since the previous call (`at_secs` on a monotonic clock) by
    /// `config`. A new `config` keeps baselines and firing detectors for the ports that stay
    /// judged; detectors it switches off stop firing.
    pub fn observe(
        &mut self,
        config: &HealthPolicy,
        at_secs: f64,
        counters: &Counters,
        overflows: u64,
    ) -> Vec<Change> {
        let now = Sample::of(at_secs, counters, overflows);
        let Some(last) = self.last.replace(now.clone()) else {
            return Vec::new();
        };
        let elapsed = (now.at_secs - last.at_secs).max(1e-3);
        let mut verdicts: Vec<(&'static str, String, Option<Anomaly>)> = Vec::new();

        if let Some(k) = config.rtt_factor {
            for (key, counts) in &now.rtt {
                let before = last.rtt.get(key);
                let window: Vec<u64> = counts
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        n.saturating_sub(before.and_then(|b| b.get(i)).copied().unwrap_or(0))
                    })
                    .collect();
                if window.iter().sum::<u64>() < u64::from(config.rtt_min_samples) {
                    continue;
                }
                let Some(p99) = p99_us(&window) else { continue };
                let subject = format!("tcp/{} {}", key.1, key.0);
                let baseline = self.baselines.entry(*key).or_default();
                let threshold = k * baseline.p99_us;
                let anomalous = baseline.windows >= BASELINE_WINDOWS && p99 as f64 > threshold;
                if anomalous {
                    verdicts.push((
                        "rtt",
                        subject.clone(),
                        Some(Anomaly {
                            detector: "rtt",
                            message: format!(
                                "{subject}: RTT p99 {p99} µs is above {k} × its baseline {:.0} µs",
                                baseline.p99_us
                            ),
                            subject,
                            value: p99 as f64,
                            threshold,
                        }),
                    ));
                } else {
                    baseline.p99_us = if baseline.windows == 0 {
                        p99 as f64
                    } else {
                        0.75 * baseline.p99_us + 0.25 * p99 as f64
                    };
                    baseline.windows += 1;
                    verdicts.push(("rtt", subject, None));
                }
            }
        }
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / elapsed;
        if let Some(limit) = config.rejected_per_second {
            let value = rate(now.rejected, last.rejected);
            let subject = "all ports".to_owned();
            let anomaly = (value > f64::from(limit)).then(|| Anomaly {
                detector: "rejections",
                subject: subject.clone(),
                value,
                threshold: f64::from(limit),
                message: format!(
                    "{value:.1} inbound connection attempts rejected per second, above {limit}"
                ),
            });
            verdicts.push(("rejections", subject, anomaly));
        }
        if let Some(limit) = config.overflows_per_second {
            let value = rate(now.overflows, last.overflows);
            let subject = "host".to_owned();
            let anomaly = (value > f64::from(limit)).then(|| Anomaly {
                detector: "overflows",
                subject: subject.clone(),
                value,
                threshold: f64::from(limit),
                message: format!("{value:.1} TCP listen-queue overflows per second, above {limit}"),
            });
            verdicts.push(("overflows", subject, anomaly));
        }

        let mut changes = Vec::new();
        for (detector, subject, anomaly) in verdicts {
            let key = (detector, subject);
            match anomaly {
                Some(a) => {
                    if !self.firing.contains_key(&key) {
                        *self.fired.entry(detector).or_default() += 1;
                        changes.push(Change::Fired(a.clone()));
                    }
                    self.firing.insert(key, a);
                }
                None => {
                    if let Some(a) = self.firing.remove(&key) {
                        changes.push(Change::Cleared(a));
                    }
                }
            }
        }
        // Detectors switched off by a new policy stop firing.
        let stale: Vec<_> = self
            .firing
            .keys()
            .filter(|(d, _)| match *d {
                "rtt" => config.rtt_factor.is_none(),
                "rejections" => config.rejected_per_second.is_none(),
                "overflows" => config.overflows_per_second.is_none(),
                _ => false,
            })
            .cloned()
            .collect();
        for key in stale {
            if let Some(a) = self.firing.remove(&key) {
                changes.push(Change::Cleared(a));
            }
        }
        changes
    }
}

/// Every detector's name (the `detector` label of the anomaly metrics).
pub const DETECTORS: [&str; 3] = ["rtt", "rejections", "overflows"];

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `ok` or `unhealthy`.
    pub status: &'static str,
    /// Why it is unhealthy (empty when ok).
    pub reasons: Vec<String>,
    pub anomalies: Vec<Anomaly>,
}

impl Verdict {
    /// Unhealthy when enforcement is not active, a `[health]` port has no listener, or a
    /// detector fires.
    pub fn judge(
        enforcing: Result<(), String>,
        config: &HealthPolicy,
        listening: impl Fn(u16, bool) -> bool,
        anomalies: Vec<Anomaly>,
    ) -> Self {
        let mut reasons = Vec::new();
        if let Err(why) = enforcing {
            reasons.push(format!("enforcement is not active: {why}"));
        }
        for (ports, tcp) in [(&config.tcp, true), (&config.udp, false)] {
            for &port in ports {
                if !listening(port, tcp) {
                    let proto = if tcp { "tcp" } else { "udp" };
                    reasons.push(format!("{proto}/{port} has no listener"));
                }
            }
        }
        reasons.extend(anomalies.iter().map(|a| a.message.clone()));
        Self {
            status: if reasons.is_empty() {
                "ok"
            } else {
                "unhealthy"
            },
            reasons,
            anomalies,
        }
    }

    /// Adds a reason to be unhealthy.
    pub fn with_reason(mut self, reason: String) -> Self {
        self.reasons.push(reason);
        self.status = "unhealthy";
        self
    }

    /// The HTTP status code: 200 or 503.
    pub fn code(&self) -> u16 {
        if self.reasons.is_empty() { 200 } else { 503 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{PortLabel, Proto};

    use crate::datapath::counters::{ConnCounter, EventCounters, PortCounter};

    fn counters(rtt_bucket_counts: &[(usize, u64)], rejected: u64) -> Counters {
        let mut rtt = vec![0; 24];
        for &(i, n) in rtt_bucket_counts {
            rtt[i] = n;
        }
        Counters {
            rules: vec![],
            reasons: vec![],
            ports: vec![PortCounter {
                proto: Proto::Tcp,
                port: PortLabel::Number(443),
                attempted: rejected,
                rejected,
            }],
            events: EventCounters::default(),
            connections: vec![ConnCounter {
                direction: Direction::Inbound,
                port: 443,
                established: 1,
                closed: 0,
                active: 1,
                rtt_log2_us: rtt,
            }],
            bind_denied: vec![],
        }
    }

    fn config() -> HealthPolicy {
        HealthPolicy {
            rtt_factor: Some(3.0),
            rtt_min_samples: 10,
            rejected_per_second: Some(100),
            ..HealthPolicy::default()
        }
    }

    #[test]
    fn p99_is_the_bucket_bound_of_the_99th_sample() {
        let mut counts = vec![0; 24];
        counts[4] = 99;
        counts[12] = 1;
        assert_eq!(p99_us(&counts), Some(32));
        counts[12] = 2;
        assert_eq!(p99_us(&counts), Some(8192));
        assert_eq!(p99_us(&[0; 24]), None);
    }

    #[test]
    fn rtt_fires_above_k_times_the_baseline_and_clears_after() {
        let mut d = Detectors::default();
        let c = config();
        // Cumulative counts: 20 samples per window around 16-32 µs (bucket 4).
        let mut total = 0;
        let mut t = 0.0;
        let mut step = |d: &mut Detectors, bucket: usize, extra: &mut Vec<(usize, u64)>| {
            total += 20;
            t += 5.0;
            extra.push((bucket, 20));
            let mut merged: BTreeMap<usize, u64> = BTreeMap::new();
            for &(b, n) in extra.iter() {
                *merged.entry(b).or_default() += n;
            }
            let list: Vec<_> = merged.into_iter().collect();
            d.observe(&c, t, &counters(&list, 0), 0)
        };
        let mut history = Vec::new();
        for _ in 0..=BASELINE_WINDOWS {
            assert!(step(&mut d, 4, &mut history).is_empty(), "normal windows");
        }
        // 8× slower: 256-512 µs.
        let fired = step(&mut d, 8, &mut history);
        assert!(
            matches!(&fired[..], [Change::Fired(a)] if a.detector == "rtt" && a.value == 512.0),
            "{fired:?}"
        );
        assert_eq!(d.firing().len(), 1);
        assert!(
            step(&mut d, 8, &mut history).is_empty(),
            "still firing, no new change"
        );
        let cleared = step(&mut d, 4, &mut history);
        assert!(matches!(&cleared[..], [Change::Cleared(_)]), "{cleared:?}");
        assert_eq!(
            d.fired(),
            vec![("rtt", 1), ("rejections", 0), ("overflows", 0)],
            "every detector, zero when it never fired"
        );
        assert!(total > 0);
    }

    #[test]
    fn too_few_samples_are_not_judged() {
        let mut d = Detectors::default();
        let c = config();
        d.observe(&c, 0.0, &counters(&[(4, 5)], 0), 0);
        for (i, t) in [5.0, 10.0, 15.0, 20.0].into_iter().enumerate() {
            let n = 5 + (i as u64 + 1) * 5;
            assert!(d.observe(&c, t, &counters(&[(4, n)], 0), 0).is_empty());
        }
        // 9 slow samples: below rtt_min_samples.
        assert!(
            d.observe(&c, 25.0, &counters(&[(4, 25), (12, 9)], 0), 0)
                .is_empty()
        );
    }

    #[test]
    fn rejection_rate_fires_and_clears() {
        let mut d = Detectors::default();
        let c = config();
        d.observe(&c, 0.0, &counters(&[], 0), 0);
        let fired = d.observe(&c, 5.0, &counters(&[], 1000), 0);
        assert!(
            matches!(&fired[..], [Change::Fired(a)] if a.detector == "rejections" && a.value == 200.0),
            "{fired:?}"
        );
        let cleared = d.observe(&c, 10.0, &counters(&[], 1010), 0);
        assert!(matches!(&cleared[..], [Change::Cleared(_)]), "{cleared:?}");
    }

    #[test]
    fn verdict_names_every_reason() {
        let cfg = HealthPolicy {
            tcp: vec![443, 8443],
            udp: vec![53],
            ..HealthPolicy::default()
        };
        let ok = Verdict::judge(Ok(()), &cfg, |_, _| true, vec![]);
        assert_eq!((ok.code(), ok.status), (200, "ok"));
        let bad = Verdict::judge(
            Err("no link pinned for eth0".into()),
            &cfg,
            |port, tcp| tcp && port == 443,
            vec![],
        );
        assert_eq!(bad.code(), 503);
        assert_eq!(
            bad.reasons,
            vec![
                "enforcement is not active: no link pinned for eth0",
                "tcp/8443 has no listener",
                "udp/53 has no listener"
            ]
        );
    }
}
