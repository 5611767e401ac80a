//! `guard audit`: the host's listeners against the policy, or with `--probe ADDR` the
//! client's view of the host's ports.

use std::{fmt::Write as _, net::IpAddr, path::Path, time::Duration};

use serde_json::json;

use crate::{
    api::Failure,
    cli::{AuditArgs, client::policy_for, table::Table},
    inspect::{
        audit::{self, Report},
        http_probe::{self, Target},
        probe::{self, Judgement},
    },
    linux::{host::InNetns, sockets},
    policy::model::{Mode, Policy},
};

fn checked_timeout(secs: f64) -> Result<Duration, Failure> {
    if secs > 0.0 && secs <= 60.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(Failure::Runtime(
            "--timeout is seconds, more than 0 and at most 60".into(),
        ))
    }
}

/// `guard audit`: local listeners against the policy, or, with `--probe`, the client's view.
pub fn audit(run_dir: &Path, args: &AuditArgs) -> Result<(), Failure> {
    if !args.probe_http.is_empty() {
        return audit_http(run_dir, args);
    }
    let (label, policy) = policy_for(run_dir, args.policy.as_deref())?;
    let _netns = args
        .netns
        .as_deref()
        .map(InNetns::enter)
        .transpose()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if let Some(address) = args.probe {
        return audit_probe(&label, &policy, address, args);
    }
    let listeners = sockets::listeners()
        .map_err(|e| Failure::Runtime(format!("reading the listening sockets: {e}")))?;
    let report = audit::audit(&policy, listeners);
    if args.json {
        let mut v = serde_json::to_value(&report).expect("serialisable");
        v["policy"] = label.into();
        v["netns"] = args.netns.clone().into();
        println!("{v}");
    } else {
        print!("{}", render(&report, &label));
    }
    if report.unexpected_listeners > 0 {
        return Err(Failure::Invalid(format!(
            "guard audit: {} unexpected listener(s)",
            report.unexpected_listeners
        )));
    }
    Ok(())
}

/// `guard audit --probe-http URL...`: the HTTP contexts each target answers.
fn audit_http(run_dir: &Path, args: &AuditArgs) -> Result<(), Failure> {
    let targets = args
        .probe_http
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Runtime)?;
    // The policy's [contexts] when there is a policy (a file, or the running daemon's).
    let contexts = if args.policy.is_some() {
        Some(policy_for(run_dir, args.policy.as_deref())?.1)
    } else {
        policy_for(run_dir, None).ok().map(|(_, p)| p)
    }
    .and_then(|p| p.contexts)
    .unwrap_or_default();
    let list = |given: &[String], from_policy: Vec<String>| -> Result<Vec<String>, Failure> {
        if given.is_empty() {
            return Ok(from_policy);
        }
        for path in given {
            if let Some(why) = crate::policy::context_path_problem(path) {
                return Err(Failure::Runtime(format!("context `{path}` {why}")));
            }
        }
        Ok(given.to_vec())
    };
    let deny = list(&args.deny_contexts, contexts.deny)?;
    let allow = list(&args.allow_contexts, contexts.allow)?;
    let timeout = checked_timeout(args.timeout.unwrap_or(f64::from(contexts.timeout_seconds)))?;
    let insecure = args.insecure || contexts.insecure;
    let _netns = args
        .netns
        .as_deref()
        .map(InNetns::enter)
        .transpose()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let reports: Vec<http_probe::Report> = targets
        .iter()
        .map(|t| http_probe::probe(t, &deny, &allow, insecure, timeout))
        .collect();
    let violations: usize = reports.iter().map(|r| r.violations).sum();
    if args.json {
        println!(
            "{}",
            json!({
                "netns": args.netns,
                "targets": reports,
                "violations": violations,
            })
        );
    } else {
        for report in &reports {
            print!("{}", render_http(report));
        }
    }
    if violations > 0 {
        return Err(Failure::Invalid(format!(
            "guard audit --probe-http: {violations} request(s) reached a context that must be closed"
        )));
    }
    Ok(())
}

/// One target's HTTP probe as text.
pub fn render_http(report: &http_probe::Report) -> String {
    let mut out = format!("probing {}\n", report.target);
    if let Some(c) = &report.certificate {
        let _ = writeln!(
            out,
            "certificate {}{}{}",
            c.subject,
            if c.self_signed { " (self-signed)" } else { "" },
            if c.wso2_default {
                " -- WSO2's default wso2carbon certificate: its private key ships with every download"
            } else {
                ""
            }
        );
    }
    let mut table = Table::new(["PATH", "EXPECT", "STATUS", "VERDICT", "NOTE"]);
    for r in &report.results {
        table.row([
            r.path.clone(),
            if r.expect == http_probe::Expect::Deny {
                "deny"
            } else {
                "allow"
            }
            .to_owned(),
            r.status.clone(),
            r.verdict.as_str().to_owned(),
            r.note.clone(),
        ]);
    }
    out.push_str(&table.render());
    let _ = writeln!(
        out,
        "{} requests, {} violation(s)",
        report.results.len(),
        report.violations
    );
    out
}

fn audit_probe(
    label: &str,
    policy: &Policy,
    address: IpAddr,
    args: &AuditArgs,
) -> Result<(), Failure> {
    let timeout = checked_timeout(args.timeout.unwrap_or(1.0))?;
    let source = probe::source_for(address)
        .map_err(|e| Failure::Runtime(format!("no route to {address}: {e}")))?;
    let (targets, skipped) = probe::targets(policy, &args.ports);
    let observed = probe::run(address, &targets, timeout);
    let results: Vec<probe::ProbeResult> = targets
        .iter()
        .zip(observed)
        .map(|(&(proto, port), seen)| probe::judge(policy, source, proto, port, seen))
        .collect();
    let violations = results
        .iter()
        .filter(|r| r.judgement == Judgement::Violation)
        .count();
    if args.json {
        println!(
            "{}",
            json!({
                "policy": label,
                "mode": policy.mode.to_string(),
                "address": address,
                "source": source,
                "netns": args.netns,
                "results": results,
                "violations": violations,
                "skipped": skipped,
            })
        );
    } else {
        println!(
            "probing {address} from {} (policy {label}, mode {})",
            source, policy.mode
        );
        let mut table = Table::new(["PROTO", "PORT", "POLICY", "OBSERVED", "RESULT", "NOTE"]);
        for r in &results {
            table.row([
                r.proto.to_string(),
                r.port.to_string(),
                if r.allowed { "allow" } else { "deny" }.to_owned(),
                r.observed.as_str().to_owned(),
                r.judgement.as_str().to_owned(),
                r.note.clone(),
            ]);
        }
        print!("{}", table.render());
        if skipped > 0 {
            println!(
                "{skipped} more ports not probed (at most {})",
                probe::MAX_PROBES
            );
        }
        println!("{} ports probed, {violations} violation(s)", results.len());
    }
    if violations > 0 {
        return Err(Failure::Invalid(format!(
            "guard audit --probe: {violations} port(s) open that the policy closes"
        )));
    }
    Ok(())
}

/// The report as text: the listener table with the exposure matrix, then the findings.
pub fn render(report: &Report, policy_label: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy {policy_label} (mode {})", report.mode);
    if report.mode == Mode::Audit.to_string() {
        out.push_str(
            "note: audit mode drops nothing; the exposure columns show what the policy admits when enforced\n",
        );
    }
    let mut table = Table::new(
        ["PROTO", "ADDRESS", "PORT", "PROCESS", "EXPECTED"]
            .into_iter()
            .map(str::to_owned)
            .chain(report.columns.iter().cloned()),
    );
    for row in &report.listeners {
        let l = &row.listener;
        let procs = if l.processes.is_empty() {
            "-".to_owned()
        } else {
            l.processes
                .iter()
                .map(|p| format!("{}/{}", p.comm, p.pid))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cells = vec![
            l.proto.to_string(),
            l.address.to_string(),
            l.port.to_string(),
            procs,
            if row.expected { "yes" } else { "NO" }.to_owned(),
        ];
        cells.extend(
            report
                .columns
                .iter()
                .map(|c| row.exposure[c].as_str().to_owned()),
        );
        table.row(cells);
    }
    out.push_str(&table.render());
    let measure = if report.listen_allowlist {
        "not in [listen]"
    } else {
        "no ingress rule admits it (the policy has no [listen])"
    };
    for row in report.violations() {
        let l = &row.listener;
        let _ = writeln!(
            out,
            "violation: {} {}:{} is listening but {measure}",
            l.proto, l.address, l.port
        );
    }
    for u in &report.unused_rules {
        let _ = writeln!(
            out,
            "least privilege: rule `{}` allows {} {} where nothing listens",
            u.rule,
            u.proto,
            u.ports.join(",")
        );
    }
    for port in &report.unused_failsafe_ports {
        let _ = writeln!(
            out,
            "note: failsafe port tcp/{port} is always open but nothing listens on it"
        );
    }
    let _ = writeln!(
        out,
        "{} listeners, {} unexpected, {} rules with unused ports",
        report.listeners.len(),
        report.unexpected_listeners,
        report.unused_rules.len()
    );
    out
}
