//! `guard audit`: the host's listeners against the policy, or with `--probe ADDR` the
//! client's view of the host's ports.

use std::{fmt::Write as _, net::IpAddr, path::Path, time::Duration};

use serde_json::json;

use crate::{
    api::Failure,
    cli::{AuditArgs, client::policy_for, table::Table},
    inspect::{
        audit::{self, Report},
        probe::{self, Judgement},
    },
    linux::{host::InNetns, sockets},
    policy::model::{Mode, Policy},
};

/// `guard audit`: local listeners against the policy, or, with `--probe`, the client's view.
pub fn audit(run_dir: &Path, args: &AuditArgs) -> Result<(), Failure> {
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

fn audit_probe(
    label: &str,
    policy: &Policy,
    address: IpAddr,
    args: &AuditArgs,
) -> Result<(), Failure> {
    if !(args.timeout > 0.0 && args.timeout <= 60.0) {
        return Err(Failure::Runtime(
            "--timeout is seconds, more than 0 and at most 60".into(),
        ));
    }
    let source = probe::source_for(address)
        .map_err(|e| Failure::Runtime(format!("no route to {address}: {e}")))?;
    let (targets, skipped) = probe::targets(policy, &args.ports);
    let observed = probe::run(address, &targets, Duration::from_secs_f64(args.timeout));
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
