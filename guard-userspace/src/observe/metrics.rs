//! `/metrics`: guard's counters, state and host gauges in the Prometheus text format (0.0.4),
//! built as `prometheus` metric families and encoded by its `TextEncoder`.
//!
//! The kernel's counters are absolute values read at scrape time, so each scrape builds its
//! families from one snapshot instead of keeping live counter objects in step with the maps.

use prometheus::{
    Encoder as _, TextEncoder,
    core::Collector as _,
    process_collector::ProcessCollector,
    proto::{self, MetricType},
};

use crate::{
    datapath::counters::{ConnCounter, Counters, Direction},
    linux::hoststats::HostStats,
    observe::health::{Anomaly, DETECTORS},
    policy::model::{PortLabel, Proto},
};

/// The `rule` label of the rules beyond `--metrics-max-rules`, summed.
pub const OTHER_RULES: &str = "(other)";

/// Everything one scrape reports, gathered by the daemon.
pub struct Scrape<'a> {
    pub counters: Option<&'a Counters>,
    /// Programs attached and a policy loaded.
    pub enforcing: bool,
    pub audit: bool,
    pub generation: u64,
    /// Policy changes by result: `applied`, `rejected`, `unreadable` (the policy file could
    /// not be read).
    pub reloads: &'a [(&'static str, u64)],
    /// Whether the last read of the policy file failed (the running policy stays).
    pub policy_file_unreadable: bool,
    pub host: &'a HostStats,
    /// Kernel run statistics per program (only when `kernel.bpf_stats_enabled` is 1).
    pub programs: &'a [ProgramStats],
    /// Detectors firing now.
    pub anomalies: &'a [Anomaly],
    /// Anomalies fired since the daemon started, by detector.
    pub anomalies_fired: &'a [(&'static str, u64)],
    /// Listening sockets the policy does not expect, at the last listener audit (`None`
    /// before the first).
    pub unexpected_listeners: Option<usize>,
    /// Per-rule series at most (`--metrics-max-rules`); the rest are summed into
    /// `rule="(other)"` per action.
    pub max_rule_series: usize,
    /// Failed writes to the log files since the daemon started.
    pub log_write_errors: u64,
    /// Links the daemon put back, by how: `repinned`, `reattached`.
    pub links_repaired: &'a [(&'static str, u64)],
    /// `[contexts]` probe: (target, context) → reachable when it must not be.
    pub contexts_exposed: &'a [((String, String), bool)],
    /// The running policy: (hash, source label), once one is loaded.
    pub policy: Option<(&'a str, &'a str)>,
}

pub use crate::datapath::ProgramStats;

/// One metric family being built.
struct Family(proto::MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut mf = proto::MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Self(mf)
    }

    fn metric(labels: &[(&str, &str)]) -> proto::Metric {
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name((*k).to_owned());
                    pair.set_value((*v).to_owned());
                    pair
                })
                .collect(),
        );
        m
    }

    fn counter(mut self, labels: &[(&str, &str)], value: f64) -> Self {
        let mut m = Self::metric(labels);
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
        self.0.mut_metric().push(m);
        self
    }

    /// One counter per value of a single label.
    fn counters(mut self, label: &str, values: &[(&'static str, u64)]) -> Self {
        for &(value, n) in values {
            self = self.counter(&[(label, value)], n as f64);
        }
        self
    }

    fn gauge(mut self, labels: &[(&str, &str)], value: f64) -> Self {
        let mut m = Self::metric(labels);
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        self.0.mut_metric().push(m);
        self
    }

    /// A histogram from per-bucket counts: bucket i ends at `bounds[i]`; a last bucket
    /// beyond the bounds is open-ended (counted in `+Inf`, which the encoder adds).
    fn histogram(mut self, labels: &[(&str, &str)], counts: &[u64], bounds: &[f64]) -> Self {
        let mut m = Self::metric(labels);
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let mut sum = 0.0;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (i, &n) in counts.iter().enumerate() {
            cumulative += n;
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            // The kernel keeps counts only: the sum takes each sample at its bucket's middle
            // (the open-ended bucket's at its lower bound).
            match bounds.get(i) {
                Some(&upper) => {
                    sum += n as f64 * (lower + upper) / 2.0;
                    let mut b = proto::Bucket::default();
                    b.set_cumulative_count(cumulative);
                    b.set_upper_bound(upper);
                    buckets.push(b);
                }
                None => sum += n as f64 * lower,
            }
        }
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(sum);
        m.set_histogram(h);
        self.0.mut_metric().push(m);
        self
    }
}

/// The upper bounds (seconds) of the kernel's RTT buckets but the last: bucket i counts
/// smoothed RTTs in [2^i, 2^(i+1)) µs; the last one is open-ended.
fn rtt_bounds(buckets: usize) -> Vec<f64> {
    (0..buckets.saturating_sub(1))
        .map(|i| (1u64 << (i + 1)) as f64 / 1e6)
        .collect()
}

/// The metric families of one scrape.
pub fn families(s: &Scrape<'_>) -> Vec<proto::MetricFamily> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut out = Vec::new();
    let mut push = |f: Family| {
        if !f.0.get_metric().is_empty() {
            out.push(f.0);
        }
    };
    push(
        Family::new(
            "guard_enforcing",
            "1 when guard's programs are attached and a policy is loaded",
            GAUGE,
        )
        .gauge(&[], f64::from(u8::from(s.enforcing))),
    );
    if !s.contexts_exposed.is_empty() {
        let mut exposed = Family::new(
            "guard_context_exposed",
            "1 when an HTTP context that must be closed answered the last [contexts] probe (any evasion variant)",
            GAUGE,
        );
        for ((target, path), is) in s.contexts_exposed {
            exposed = exposed.gauge(
                &[("target", target.as_str()), ("path", path.as_str())],
                f64::from(u8::from(*is)),
            );
        }
        push(exposed);
    }
    if let Some(n) = s.unexpected_listeners {
        push(
            Family::new(
                "guard_unexpected_listeners",
                "Listening sockets the policy does not expect (guard audit), at the last audit",
                GAUGE,
            )
            .gauge(&[], n as f64),
        );
    }
    push(
        Family::new(
            "guard_audit_mode",
            "1 when the policy is in audit mode (counts what it would drop, drops nothing)",
            GAUGE,
        )
        .gauge(&[], f64::from(u8::from(s.audit))),
    );
    push(
        Family::new(
            "guard_build_info",
            "This guard's build: version, git commit, sha256 of the embedded eBPF object (always 1)",
            GAUGE,
        )
        .gauge(
            &[
                ("version", crate::datapath::build::VERSION),
                ("commit", crate::datapath::build::COMMIT),
                ("ebpf_sha256", crate::datapath::build::EBPF_SHA256),
            ],
            1.0,
        ),
    );
    if let Some((hash, source)) = s.policy {
        push(
            Family::new(
                "guard_policy_info",
                "The running policy: its sha256 and where it came from (always 1)",
                GAUGE,
            )
            .gauge(&[("hash", hash), ("source", source)], 1.0),
        );
    }
    push(
        Family::new(
            "guard_policy_generation",
            "Policies applied since the pins were created",
            GAUGE,
        )
        .gauge(&[], s.generation as f64),
    );
    push(
        Family::new(
            "guard_policy_reloads_total",
            "Policy changes since the daemon started, by result",
            COUNTER,
        )
        .counters("result", s.reloads),
    );
    push(
        Family::new(
            "guard_policy_file_unreadable",
            "1 when the last read of the policy file failed (deleted, a ConfigMap key removed): the running policy stays",
            GAUGE,
        )
        .gauge(&[], f64::from(u8::from(s.policy_file_unreadable))),
    );
    push(
        Family::new(
            "guard_links_repaired_total",
            "guard's links put back since the daemon started: pins removed behind its back (repinned), links detached by other means (reattached)",
            COUNTER,
        )
        .counters("how", s.links_repaired),
    );
    push(
        Family::new(
            "guard_log_write_errors_total",
            "Failed writes to the log files (--log-dir) since the daemon started: a full disk leaves a gap in the audit trail",
            COUNTER,
        )
        .counter(&[], s.log_write_errors as f64),
    );

    if let Some(c) = s.counters {
        let (mut packets, mut bytes) = (
            Family::new(
                "guard_rule_packets_total",
                "Packets (and socket calls) each rule decided",
                COUNTER,
            ),
            Family::new(
                "guard_rule_bytes_total",
                "Bytes of the packets each rule decided",
                COUNTER,
            ),
        );
        for r in c.rules.iter().take(s.max_rule_series) {
            let labels = [("rule", r.rule.as_str()), ("action", r.action.as_str())];
            packets = packets.counter(&labels, r.packets as f64);
            bytes = bytes.counter(&labels, r.bytes as f64);
        }
        // The rest, summed per action (a bounded number of series whatever the policy).
        let mut other: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for r in c.rules.iter().skip(s.max_rule_series) {
            let sum = other.entry(r.action.as_str()).or_default();
            sum.0 += r.packets;
            sum.1 += r.bytes;
        }
        for (action, (p, b)) in other {
            let labels = [("rule", OTHER_RULES), ("action", action)];
            packets = packets.counter(&labels, p as f64);
            bytes = bytes.counter(&labels, b as f64);
        }
        push(packets);
        push(bytes);
        let mut reasons = Family::new(
            "guard_packets_by_reason_total",
            "Packets dropped (or, in audit mode, that would be) by reason, and passed unjudged",
            COUNTER,
        );
        for r in &c.reasons {
            reasons = reasons.counter(&[("reason", r.reason.as_str())], r.packets as f64);
        }
        push(reasons);
        let (mut attempted, mut rejected) = (
            Family::new(
                "guard_connections_attempted_total",
                "Inbound connection attempts (TCP SYN, UDP datagrams) per port; `other` for ports the policy does not name",
                COUNTER,
            ),
            Family::new(
                "guard_connections_rejected_total",
                "Inbound connection attempts dropped per port",
                COUNTER,
            ),
        );
        for p in &c.ports {
            let port = p.port.to_string();
            let labels = [("proto", p.proto.as_str()), ("port", port.as_str())];
            attempted = attempted.counter(&labels, p.attempted as f64);
            rejected = rejected.counter(&labels, p.rejected as f64);
        }
        push(attempted);
        push(rejected);
        let mut accepted = Family::new(
            "guard_connections_accepted_total",
            "TCP connections accepted per local port (sock_ops, guarded cgroup)",
            COUNTER,
        );
        let mut active = Family::new(
            "guard_connections_active",
            "Accepted TCP connections per local port not closed yet",
            GAUGE,
        );
        let mut out_est = Family::new(
            "guard_outbound_connections_total",
            "TCP connections the guarded cgroup opened, per remote port",
            COUNTER,
        );
        let mut out_active = Family::new(
            "guard_outbound_connections_active",
            "Outbound TCP connections per remote port not closed yet",
            GAUGE,
        );
        let mut rtt = Family::new(
            "guard_tcp_rtt_seconds",
            "Smoothed TCP round-trip time samples per port and direction (log2 buckets; the sum takes bucket midpoints)",
            HISTOGRAM,
        );
        // The kernel counts a port's connections from its first one; the policy's TCP ports
        // are reported from the start, at zero, so dashboards and alerts find their series.
        let unseen: Vec<ConnCounter> = c
            .ports
            .iter()
            .filter_map(|p| match p.port {
                PortLabel::Number(port) if p.proto == Proto::Tcp => Some(port),
                _ => None,
            })
            .filter(|&port| {
                !c.connections
                    .iter()
                    .any(|conn| conn.direction == Direction::Inbound && conn.port == port)
            })
            .map(|port| ConnCounter {
                direction: Direction::Inbound,
                port,
                established: 0,
                closed: 0,
                active: 0,
                rtt_log2_us: vec![0; guard_common::RTT_BUCKETS],
            })
            .collect();
        for conn in c.connections.iter().chain(&unseen) {
            let port = conn.port.to_string();
            let labels = [("port", port.as_str())];
            if conn.direction == Direction::Inbound {
                accepted = accepted.counter(&labels, conn.established as f64);
                active = active.gauge(&labels, conn.active as f64);
            } else {
                out_est = out_est.counter(&labels, conn.established as f64);
                out_active = out_active.gauge(&labels, conn.active as f64);
            }
            let bounds = rtt_bounds(conn.rtt_log2_us.len());
            rtt = rtt.histogram(
                &[
                    ("port", port.as_str()),
                    ("direction", conn.direction.as_str()),
                ],
                &conn.rtt_log2_us,
                &bounds,
            );
        }
        push(accepted);
        push(active);
        push(out_est);
        push(out_active);
        push(rtt);
        let mut bind = Family::new(
            "guard_bind_denied_total",
            "bind() calls [listen] denied (audit mode: would deny), per port",
            COUNTER,
        );
        for b in &c.bind_denied {
            let port = b.port.to_string();
            bind = bind.counter(
                &[("proto", b.proto.as_str()), ("port", port.as_str())],
                b.count as f64,
            );
        }
        push(bind);
        push(
            Family::new(
                "guard_events_sent_total",
                "Deny events the kernel sent",
                COUNTER,
            )
            .counter(&[], c.events.sent as f64),
        );
        push(
            Family::new(
                "guard_events_suppressed_total",
                "Deny events held back by the per-source rate limit",
                COUNTER,
            )
            .counter(&[], c.events.suppressed as f64),
        );
        push(
            Family::new(
                "guard_events_lost_total",
                "Deny events lost because the ring buffer was full",
                COUNTER,
            )
            .counter(&[], c.events.lost as f64),
        );
    }

    let mut firing = Family::new(
        "guard_anomaly_active",
        "Detectors firing now (1), by detector and subject",
        GAUGE,
    );
    for a in s.anomalies {
        firing = firing.gauge(
            &[("detector", a.detector), ("subject", a.subject.as_str())],
            1.0,
        );
    }
    // A detector with nothing firing has one series, without a subject, at 0.
    for detector in DETECTORS {
        if !s.anomalies.iter().any(|a| a.detector == detector) {
            firing = firing.gauge(&[("detector", detector)], 0.0);
        }
    }
    push(firing);
    push(
        Family::new(
            "guard_anomalies_total",
            "Anomalies fired since the daemon started, by detector",
            COUNTER,
        )
        .counters("detector", s.anomalies_fired),
    );

    let (mut runs, mut run_time) = (
        Family::new(
            "guard_program_runs_total",
            "Runs of each of guard's kernel programs (kernel.bpf_stats_enabled=1 only)",
            COUNTER,
        ),
        Family::new(
            "guard_program_run_seconds_total",
            "Time spent in each of guard's kernel programs (kernel.bpf_stats_enabled=1 only)",
            COUNTER,
        ),
    );
    for p in s.programs {
        runs = runs.counter(&[("program", p.program.as_str())], p.runs as f64);
        run_time = run_time.counter(&[("program", p.program.as_str())], p.run_seconds);
    }
    push(runs);
    push(run_time);

    let h = s.host;
    let mut cpu = Family::new(
        "guard_host_cpu_seconds_total",
        "Host CPU time by mode, all CPUs (/proc/stat)",
        COUNTER,
    );
    for (mode, secs) in &h.cpu_seconds {
        cpu = cpu.counter(&[("mode", mode)], *secs);
    }
    push(cpu);
    push(Family::new("guard_host_cpus", "Online CPUs", GAUGE).gauge(&[], h.cpus as f64));
    let mut load = Family::new(
        "guard_host_load",
        "Host load average over 1, 5 and 15 minutes",
        GAUGE,
    );
    for (window, value) in [("1m", h.load.0), ("5m", h.load.1), ("15m", h.load.2)] {
        load = load.gauge(&[("window", window)], value);
    }
    push(load);
    push(
        Family::new(
            "guard_host_memory_total_bytes",
            "Host memory (MemTotal)",
            GAUGE,
        )
        .gauge(&[], h.memory_total_bytes as f64),
    );
    push(
        Family::new(
            "guard_host_memory_available_bytes",
            "Host memory available without swapping (MemAvailable)",
            GAUGE,
        )
        .gauge(&[], h.memory_available_bytes as f64),
    );
    push(
        Family::new(
            "guard_host_listen_overflows_total",
            "TCP listen queue overflows on the host (TcpExt ListenOverflows)",
            COUNTER,
        )
        .counter(&[], h.listen_overflows as f64),
    );
    if let Some(service) = &h.service {
        push(
            Family::new(
                "guard_service_processes",
                "Processes of the service named in [health] service",
                GAUGE,
            )
            .gauge(
                &[("service", service.name.as_str())],
                service.processes as f64,
            ),
        );
        push(
            Family::new(
                "guard_service_open_fds",
                "Open file descriptors of the service named in [health] service",
                GAUGE,
            )
            .gauge(
                &[("service", service.name.as_str())],
                service.open_fds as f64,
            ),
        );
    }
    // guard's own process: process_resident_memory_bytes, process_open_fds, CPU, ...
    out.extend(ProcessCollector::for_self().collect());
    out
}

/// The text exposition of one scrape.
pub fn render(s: &Scrape<'_>) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families(s), &mut buf)
        .expect("metric families built here are well-formed");
    String::from_utf8(buf).expect("the text encoder writes UTF-8")
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{PortLabel, Proto, RuleAction};

    use crate::datapath::counters::{
        BindDenied, ConnCounter, EventCounters, PortCounter, Reason, ReasonCounter, RuleCounter,
    };

    fn counters() -> Counters {
        Counters {
            rules: vec![RuleCounter {
                rule: "web".into(),
                action: RuleAction::Allow,
                packets: 7,
                bytes: 700,
            }],
            reasons: vec![ReasonCounter {
                reason: Reason::Policy,
                packets: 3,
            }],
            ports: vec![PortCounter {
                proto: Proto::Tcp,
                port: PortLabel::Number(443),
                attempted: 5,
                rejected: 2,
            }],
            events: EventCounters {
                sent: 1,
                suppressed: 2,
                lost: 3,
            },
            connections: vec![ConnCounter {
                direction: Direction::Inbound,
                port: 443,
                established: 4,
                closed: 1,
                active: 3,
                rtt_log2_us: {
                    let mut v = vec![0; 24];
                    v[3] = 2; // [8, 16) µs
                    v[10] = 1; // [1024, 2048) µs
                    v
                },
            }],
            bind_denied: vec![BindDenied {
                proto: Proto::Tcp,
                port: 8080,
                count: 9,
            }],
        }
    }

    #[test]
    fn renders_the_product_metric_names_with_kernel_values() {
        let host = HostStats::default();
        let c = counters();
        let text = render(&Scrape {
            counters: Some(&c),
            enforcing: true,
            audit: false,
            generation: 4,
            reloads: &[("applied", 4), ("rejected", 1)],
            policy_file_unreadable: false,
            host: &host,
            programs: &[],
            anomalies: &[],
            anomalies_fired: &[],
            unexpected_listeners: Some(2),
            links_repaired: &[("repinned", 1), ("reattached", 0)],
            contexts_exposed: &[(("https://h:9443".into(), "/carbon/".into()), true)],
            policy: Some(("ab12", "/etc/guard/policy.toml")),
            log_write_errors: 0,
            max_rule_series: 10_000,
        });
        for line in [
            "guard_enforcing 1",
            "guard_unexpected_listeners 2",
            "guard_context_exposed{target=\"https://h:9443\",path=\"/carbon/\"} 1",
            "guard_policy_info{hash=\"ab12\",source=\"/etc/guard/policy.toml\"} 1",
            "guard_policy_generation 4",
            "guard_policy_reloads_total{result=\"rejected\"} 1",
            "guard_rule_packets_total{rule=\"web\",action=\"allow\"} 7",
            "guard_rule_bytes_total{rule=\"web\",action=\"allow\"} 700",
            "guard_connections_attempted_total{proto=\"tcp\",port=\"443\"} 5",
            "guard_connections_rejected_total{proto=\"tcp\",port=\"443\"} 2",
            "guard_connections_accepted_total{port=\"443\"} 4",
            "guard_connections_active{port=\"443\"} 3",
            "guard_bind_denied_total{proto=\"tcp\",port=\"8080\"} 9",
            "guard_events_lost_total 3",
            "guard_tcp_rtt_seconds_bucket{port=\"443\",direction=\"inbound\",le=\"0.000016\"} 2",
            "guard_tcp_rtt_seconds_bucket{port=\"443\",direction=\"inbound\",le=\"0.002048\"} 3",
            "guard_tcp_rtt_seconds_bucket{port=\"443\",direction=\"inbound\",le=\"+Inf\"} 3",
            "guard_tcp_rtt_seconds_count{port=\"443\",direction=\"inbound\"} 3",
            "# TYPE guard_tcp_rtt_seconds histogram",
            "# TYPE guard_rule_packets_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn rules_beyond_the_series_limit_are_summed_per_action() {
        let host = HostStats::default();
        let mut c = counters();
        c.rules = (0..5)
            .map(|i| RuleCounter {
                rule: format!("r{i}"),
                action: if i % 2 == 0 {
                    RuleAction::Allow
                } else {
                    RuleAction::Deny
                },
                packets: 10 + i,
                bytes: 100 * (10 + i),
            })
            .collect();
        let text = render(&Scrape {
            counters: Some(&c),
            enforcing: true,
            audit: false,
            generation: 1,
            reloads: &[],
            policy_file_unreadable: false,
            host: &host,
            programs: &[],
            anomalies: &[],
            anomalies_fired: &[],
            unexpected_listeners: None,
            links_repaired: &[],
            contexts_exposed: &[],
            policy: None,
            log_write_errors: 0,
            max_rule_series: 2,
        });
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("guard_rule_packets_total{"))
            .collect();
        assert_eq!(
            series,
            [
                "guard_rule_packets_total{rule=\"r0\",action=\"allow\"} 10",
                "guard_rule_packets_total{rule=\"r1\",action=\"deny\"} 11",
                // r2 + r4 and r3.
                "guard_rule_packets_total{rule=\"(other)\",action=\"allow\"} 26",
                "guard_rule_packets_total{rule=\"(other)\",action=\"deny\"} 13",
            ]
        );
        assert!(text.contains("guard_rule_bytes_total{rule=\"(other)\",action=\"allow\"} 2600"));
    }

    #[test]
    fn without_counters_only_state_and_host_are_reported() {
        let host = HostStats::default();
        let text = render(&Scrape {
            counters: None,
            enforcing: false,
            audit: false,
            generation: 0,
            reloads: &[],
            policy_file_unreadable: false,
            host: &host,
            programs: &[],
            anomalies: &[],
            anomalies_fired: &[],
            unexpected_listeners: None,
            links_repaired: &[],
            contexts_exposed: &[],
            policy: None,
            log_write_errors: 0,
            max_rule_series: 10_000,
        });
        assert!(text.contains("guard_enforcing 0"));
        assert!(!text.contains("guard_unexpected_listeners"));
        assert!(!text.contains("guard_rule_packets_total"));
    }
}
