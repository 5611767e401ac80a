//! The daemon's context probe: with `[contexts]` targets in the policy, the HTTP contexts
//! are requested every `interval_seconds` on a thread of their own (optionally from the
//! `netns` vantage point), and whether each context is exposed becomes
//! `guard_context_exposed{target,path}` and a `context_exposed`/`context_closed` event when
//! it changes.

use std::thread::JoinHandle;

use super::*;
use crate::inspect::http_probe::{self, Verdict};

/// The probe's state in the daemon.
#[derive(Default)]
pub(super) struct ContextProbe {
    running: Option<JoinHandle<Vec<http_probe::Report>>>,
    last_started: Option<std::time::Instant>,
    /// (target, context) → exposed, from the last finished probe.
    pub(super) exposed: BTreeMap<(String, String), bool>,
}

/// Whether each (target, context) of `reports` is exposed: any request of the context (in
/// any of its variants) was a violation.
pub(super) fn exposure(reports: &[http_probe::Report]) -> BTreeMap<(String, String), bool> {
    let mut out = BTreeMap::new();
    for report in reports {
        for row in report
            .results
            .iter()
            .filter(|r| r.expect == http_probe::Expect::Deny)
        {
            let exposed = out
                .entry((report.target.clone(), row.context.clone()))
                .or_insert(false);
            *exposed |= row.verdict == Verdict::Violation;
        }
    }
    out
}

impl Daemon {
    /// On each tick: collects a finished probe, and starts the next when it is due.
    pub(super) fn probe_contexts(&mut self) {
        let finished = self
            .contexts
            .running
            .as_ref()
            .is_some_and(JoinHandle::is_finished);
        if finished && let Some(handle) = self.contexts.running.take() {
            match handle.join() {
                Ok(reports) => self.context_results(&reports),
                Err(_) => error!("the context probe thread panicked"),
            }
        }
        let Some(policy) = self.policy.as_ref().and_then(|p| p.contexts.clone()) else {
            self.contexts.exposed.clear();
            return;
        };
        if policy.targets.is_empty() {
            self.contexts.exposed.clear();
            return;
        }
        if self.contexts.running.is_some() {
            return;
        }
        let due = self
            .contexts
            .last_started
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(policy.interval_seconds.into()));
        if !due {
            return;
        }
        self.contexts.last_started = Some(std::time::Instant::now());
        let spawned = std::thread::Builder::new()
            .name("guard-contexts".into())
            .spawn(move || {
                // A thread of its own may enter another network namespace (the DMZ's view).
                let _inside = match policy
                    .netns
                    .as_deref()
                    .map(crate::linux::host::InNetns::enter)
                {
                    Some(Err(e)) => {
                        warn!(error = %e, "context probe: cannot enter the network namespace");
                        return Vec::new();
                    }
                    other => other.map(Result::ok),
                };
                let timeout = Duration::from_secs(policy.timeout_seconds.into());
                policy
                    .targets
                    .iter()
                    .map(|t| {
                        http_probe::probe(t, &policy.deny, &policy.allow, policy.insecure, timeout)
                    })
                    .collect()
            });
        match spawned {
            Ok(handle) => self.contexts.running = Some(handle),
            Err(e) => error!(error = %e, "cannot start the context probe"),
        }
    }

    /// Records what a probe found: events for every change of exposure.
    fn context_results(&mut self, reports: &[http_probe::Report]) {
        let now = exposure(reports);
        for ((target, context), exposed) in &now {
            let before = self
                .contexts
                .exposed
                .get(&(target.clone(), context.clone()))
                .copied()
                .unwrap_or(false);
            if *exposed == before {
                continue;
            }
            let kind = if *exposed {
                "context_exposed"
            } else {
                "context_closed"
            };
            let paths: Vec<&str> = reports
                .iter()
                .filter(|r| &r.target == target)
                .flat_map(|r| &r.results)
                .filter(|r| &r.context == context && r.verdict == Verdict::Violation)
                .map(|r| r.path.as_str())
                .collect();
            self.record(json!({
                "ts": now_secs(),
                "kind": kind,
                "target": target,
                "path": context,
                "reached_by": paths,
            }));
            if *exposed {
                warn!(target: "guard::event", kind, target_url = %target, path = %context, reached_by = paths.join(" "), "an admin context is reachable");
            } else {
                info!(target: "guard::event", kind, target_url = %target, path = %context, "the context is closed again");
            }
        }
        self.contexts.exposed = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_probe::{Expect, Report, Row};

    #[test]
    fn a_context_is_exposed_when_any_variant_is_a_violation() {
        let row = |path: &str, context: &str, verdict| Row {
            path: path.into(),
            context: context.into(),
            expect: Expect::Deny,
            status: "200".into(),
            verdict,
            note: String::new(),
        };
        let reports = [Report {
            target: "https://h:9443".into(),
            certificate: None,
            results: vec![
                row("/carbon/", "/carbon/", Verdict::Ok),
                row("/x/..;/carbon/", "/carbon/", Verdict::Violation),
                row("/console", "/console", Verdict::Ok),
            ],
            violations: 1,
        }];
        let e = exposure(&reports);
        assert!(e[&("https://h:9443".into(), "/carbon/".into())]);
        assert!(!e[&("https://h:9443".into(), "/console".into())]);
    }
}
