//! The health tick and the listener audit: detectors fed with counters, and listeners the
//! policy does not expect reported once each.

use super::*;

impl Daemon {
    /// The running policy's `[health]` (the defaults before the first policy).
    pub(super) fn health(&self) -> std::borrow::Cow<'_, policy::model::HealthPolicy> {
        match &self.policy {
            Some(p) => std::borrow::Cow::Borrowed(&p.health),
            None => std::borrow::Cow::Owned(Default::default()),
        }
    }

    /// The listener audit (`guard audit`'s first part) against the running policy: counts
    /// unexpected listeners for `guard_unexpected_listeners` and reports each new one.
    pub(super) fn audit_listeners(&mut self) {
        let Some(policy) = &self.policy else {
            return;
        };
        // Processes are looked up only for listeners reported for the first time: the scan
        // of every process's open files is the costly part.
        let listeners = match crate::linux::sockets::sockets() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listener audit: cannot read the listening sockets");
                return;
            }
        };
        // Only whether each socket is expected: the exposure matrix is `guard audit`'s. The
        // daemon's own metrics listener is expected: the operator configured it.
        let own = self.metrics_addr;
        let unexpected: Vec<crate::linux::sockets::Listener> = listeners
            .into_iter()
            .filter(|l| {
                !own.is_some_and(|a| {
                    l.proto == crate::policy::model::Proto::Tcp
                        && l.port == a.port()
                        && l.address == a.ip()
                })
            })
            .filter(|l| !crate::inspect::audit::expected(policy, l))
            .collect();
        let key = |l: &crate::linux::sockets::Listener| (l.proto, l.address, l.port);
        let mut fresh: Vec<crate::linux::sockets::Listener> = unexpected
            .iter()
            .filter(|l| {
                !self
                    .unexpected
                    .as_ref()
                    .is_some_and(|k| k.contains(&key(l)))
            })
            .cloned()
            .collect();
        // SO_REUSEPORT groups: one report per address and port.
        fresh.dedup_by_key(|l| key(l));
        crate::linux::sockets::add_owners(&mut fresh);
        for l in &fresh {
            let process = l.processes.first();
            self.record(json!({
                "ts": now_secs(),
                "kind": "unexpected_listener",
                "proto": l.proto,
                "dst": l.address,
                "dport": l.port,
                "pid": process.map(|p| p.pid),
                "comm": process.map(|p| p.comm.clone()),
            }));
            warn!(
                target: "guard::event",
                kind = "unexpected_listener",
                proto = %l.proto,
                dst = %l.address,
                dport = l.port,
                pid = process.map(|p| p.pid),
                comm = process.map(|p| p.comm.as_str()),
                "a socket listens on a port the policy does not expect"
            );
        }
        self.unexpected = Some(unexpected.iter().map(key).collect());
    }

    /// One detector window: audits the listeners, reads the counters, logs anomalies that
    /// fire or clear.
    pub(super) fn tick(&mut self, at_secs: f64) {
        self.repair_links();
        self.audit_listeners();
        self.probe_contexts();
        let Some(counters) = self.counters() else {
            return;
        };
        let overflows = hoststats::listen_overflows();
        let default = policy::model::HealthPolicy::default();
        let health = self.policy.as_ref().map_or(&default, |p| &p.health);
        for change in self
            .detectors
            .observe(health, at_secs, &counters, overflows)
        {
            let (state, a) = match &change {
                Change::Fired(a) => ("fired", a),
                Change::Cleared(a) => ("cleared", a),
            };
            self.record(json!({
                "ts": now_secs(),
                "kind": "anomaly",
                "state": state,
                "detector": a.detector,
                "subject": a.subject,
                "value": a.value,
                "threshold": a.threshold,
                "message": a.message,
            }));
            if state == "fired" {
                warn!(target: "guard::event", kind = "anomaly", state, detector = a.detector, subject = a.subject, value = a.value, threshold = a.threshold, "{}", a.message);
            } else {
                info!(target: "guard::event", kind = "anomaly", state, detector = a.detector, subject = a.subject, value = a.value, threshold = a.threshold, "cleared: {}", a.message);
            }
        }
    }
}
