//! The client commands: `check`, `stats`, `status`, `apply`, `confirm`, `unload`. Commands
//! that need the daemon talk to it through the control socket; `stats` and `status` read
//! the pinned maps and state directly when it is not running, and say so.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::{
    api::ctl::{self, CallError, Request},
    api::state::{self, State},
    cli::Failure,
    datapath::counters::Counters,
    datapath::{self, Pins},
    policy,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A policy file's text: unreadable is a runtime error (exit 2), not UTF-8 an invalid policy
/// (exit 1, `FILE:LINE:COL`).
fn read_policy(file: &Path) -> Result<String, Failure> {
    policy::read(file).map_err(|e| match e {
        policy::ReadError::Io(m) => Failure::Runtime(m),
        policy::ReadError::NotUtf8(m) => Failure::Invalid(m),
    })
}

pub fn check(file: &Path) -> Result<(), Failure> {
    let text = read_policy(file)?;
    let checked = policy::check(&file.display().to_string(), &text)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    for w in &checked.warnings {
        eprintln!("{w}");
    }
    let p = &checked.policy;
    println!(
        "{}: ok: mode {}, default {}, {} ingress and {} egress rules, {} zones",
        file.display(),
        p.mode,
        match p.default_action {
            policy::model::DefaultAction::Allow => "allow",
            policy::model::DefaultAction::Deny => "deny",
        },
        p.ingress.len(),
        p.egress.len(),
        p.zones.len()
    );
    Ok(())
}

/// The JSON `guard stats --json` prints (also the control socket's `stats` data).
pub fn stats_json(st: &State, counters: &Counters) -> Value {
    let mut v = serde_json::to_value(counters).expect("serialisable");
    v["policy"] = st.policy.clone().into();
    v["policy_hash"] = st.policy_hash.clone().into();
    v["generation"] = st.generation.into();
    v["mode"] = st.mode.clone().into();
    v
}

/// Sends `request`; `Ok(None)` when the daemon is not running.
fn call(run_dir: &Path, request: &Request) -> Result<Option<ctl::Reply>, Failure> {
    match ctl::call(run_dir, request, TIMEOUT) {
        Ok(reply) => Ok(Some(reply)),
        Err(CallError::NotRunning(_)) => Ok(None),
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

fn data(reply: ctl::Reply) -> Result<Value, Failure> {
    if reply.ok {
        Ok(reply.data.unwrap_or(Value::Null))
    } else if !reply.errors.is_empty() {
        Err(Failure::Invalid(reply.errors.join("\n")))
    } else {
        Err(Failure::Runtime(
            reply.error.unwrap_or_else(|| "the daemon refused".into()),
        ))
    }
}

/// The stats of the running daemon, or of the pinned maps when it is down (`false`).
fn fetch_stats(run_dir: &Path) -> Result<(serde_json::Value, bool), Failure> {
    Ok(match call(run_dir, &Request::Stats {})? {
        Some(reply) => (data(reply)?, true),
        None => {
            let st = state::read(run_dir).map_err(|e| Failure::Runtime(e.to_string()))?;
            let counters =
                datapath::pinned_counters(&Pins::new(&st.pin_dir), &st.rules, &st.port_slots)
                    .map_err(|e| Failure::Runtime(datapath::error_chain(&e)))?;
            (stats_json(&st, &counters), false)
        }
    })
}

/// Per-second rates between two counter snapshots taken `secs` apart, per rule (packets)
/// and per port (attempts, rejections). Counters that went down (a rule's slot given to a
/// new name) count from zero.
pub fn rates(before: &Counters, after: &Counters, secs: f64) -> serde_json::Value {
    let secs = secs.max(1e-3);
    let rate = |now: u64, then: Option<u64>| {
        let then = then.filter(|&t| t <= now).unwrap_or(0);
        (now - then) as f64 / secs
    };
    let rules: Vec<_> = after
        .rules
        .iter()
        .map(|r| {
            let old = before.rules.iter().find(|o| o.rule == r.rule);
            json!({
                "rule": r.rule,
                "action": r.action,
                "packets": r.packets,
                "packets_per_second": rate(r.packets, old.map(|o| o.packets)),
                "bytes_per_second": rate(r.bytes, old.map(|o| o.bytes)),
            })
        })
        .collect();
    let ports: Vec<_> = after
        .ports
        .iter()
        .map(|p| {
            let old = before
                .ports
                .iter()
                .find(|o| o.proto == p.proto && o.port == p.port);
            json!({
                "proto": p.proto,
                "port": p.port,
                "attempted": p.attempted,
                "attempted_per_second": rate(p.attempted, old.map(|o| o.attempted)),
                "rejected_per_second": rate(p.rejected, old.map(|o| o.rejected)),
            })
        })
        .collect();
    json!({"interval_seconds": secs, "rules": rules, "ports": ports})
}

/// `guard stats --watch`: refreshes in place (or prints a JSON line) every `interval`
/// seconds with the rates since the previous refresh.
pub fn stats_watch(
    run_dir: &Path,
    json: bool,
    interval: f64,
    count: Option<u64>,
) -> Result<(), Failure> {
    if !(0.1..=3600.0).contains(&interval) {
        return Err(Failure::Invalid(format!(
            "--interval must be between 0.1 and 3600 seconds, not {interval}"
        )));
    }
    let decode = |v: &serde_json::Value| -> Result<Counters, Failure> {
        serde_json::from_value(v.clone()).map_err(|e| Failure::Runtime(format!("bad stats: {e}")))
    };
    let (first, _) = fetch_stats(run_dir)?;
    let mut before = decode(&first)?;
    let mut then = std::time::Instant::now();
    let mut shown = 0;
    while count.is_none_or(|n| shown < n) {
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        let (v, live) = fetch_stats(run_dir)?;
        let after = decode(&v)?;
        let now = std::time::Instant::now();
        let r = rates(&before, &after, (now - then).as_secs_f64());
        if json {
            let mut line = r;
            line["generation"] = v["generation"].clone();
            line["daemon_running"] = live.into();
            println!("{line}");
        } else {
            // Home, clear screen: the view refreshes in place.
            print!("\x1b[H\x1b[2J");
            println!(
                "guard stats --watch: policy {} (generation {}), every {interval} s{}  (Ctrl-C to stop)\n",
                v["policy"].as_str().unwrap_or("?"),
                v["generation"],
                if live {
                    ""
                } else {
                    ", daemon down: pinned maps"
                }
            );
            println!(
                "{:<24}  {:<6}  {:>14}  {:>12}",
                "rule", "action", "packets", "packets/s"
            );
            for rule in r["rules"].as_array().into_iter().flatten() {
                println!(
                    "{:<24}  {:<6}  {:>14}  {:>12.1}",
                    rule["rule"].as_str().unwrap_or(""),
                    rule["action"].as_str().unwrap_or(""),
                    rule["packets"],
                    rule["packets_per_second"].as_f64().unwrap_or(0.0)
                );
            }
            println!(
                "\n{:<6}  {:<6}  {:>14}  {:>12}  {:>12}",
                "proto", "port", "attempted", "attempts/s", "rejected/s"
            );
            for port in r["ports"].as_array().into_iter().flatten() {
                println!(
                    "{:<6}  {:<6}  {:>14}  {:>12.1}  {:>12.1}",
                    port["proto"].as_str().unwrap_or(""),
                    port["port"].as_str().unwrap_or(""),
                    port["attempted"],
                    port["attempted_per_second"].as_f64().unwrap_or(0.0),
                    port["rejected_per_second"].as_f64().unwrap_or(0.0)
                );
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        before = after;
        then = now;
        shown += 1;
    }
    Ok(())
}

pub fn stats(run_dir: &Path, json: bool) -> Result<(), Failure> {
    let (v, live) = fetch_stats(run_dir)?;
    if !live {
        eprintln!(
            "guard: the daemon is not running; counters read from the pinned maps (enforcement continues)"
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serialisable")
        );
        return Ok(());
    }
    let counters: Counters = serde_json::from_value(v.clone())
        .map_err(|e| Failure::Runtime(format!("bad stats: {e}")))?;
    let hash = v["policy_hash"].as_str().unwrap_or("");
    println!(
        "policy {} ({}, generation {}), mode {}",
        v["policy"].as_str().unwrap_or("?"),
        &hash[..hash.len().min(16)],
        v["generation"],
        v["mode"].as_str().unwrap_or("?")
    );
    print_counters(&counters);
    Ok(())
}

fn print_counters(counters: &Counters) {
    let width = counters
        .rules
        .iter()
        .map(|r| r.rule.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<6}  {:>14}  {:>16}",
        "RULE", "ACTION", "PACKETS", "BYTES"
    );
    for r in &counters.rules {
        println!(
            "{:<width$}  {:<6}  {:>14}  {:>16}",
            r.rule, r.action, r.packets, r.bytes
        );
    }
    let reasons: Vec<String> = counters
        .reasons
        .iter()
        .map(|r| format!("{}={}", r.reason, r.packets))
        .collect();
    println!("reasons: {}", reasons.join(" "));
    if !counters.ports.is_empty() {
        println!();
        println!(
            "{:<5}  {:>5}  {:>14}  {:>14}",
            "PROTO", "PORT", "ATTEMPTED", "REJECTED"
        );
        for p in &counters.ports {
            println!(
                "{:<5}  {:>5}  {:>14}  {:>14}",
                p.proto, p.port, p.attempted, p.rejected
            );
        }
    }
    if !counters.connections.is_empty() {
        println!();
        println!(
            "{:<9}  {:>5}  {:>12}  {:>8}  {:>12}  {:>10}  {:>10}",
            "DIRECTION", "PORT", "ESTABLISHED", "ACTIVE", "CLOSED", "RTT p50", "RTT p99"
        );
        for c in &counters.connections {
            let q = |q| {
                c.rtt_quantile_us(q)
                    .map_or_else(|| "-".to_owned(), |us| format!("<{us}us"))
            };
            println!(
                "{:<9}  {:>5}  {:>12}  {:>8}  {:>12}  {:>10}  {:>10}",
                c.direction,
                c.port,
                c.established,
                c.active,
                c.closed,
                q(0.5),
                q(0.99)
            );
        }
    }
    for b in &counters.bind_denied {
        println!("bind denied: {}/{} x{}", b.proto, b.port, b.count);
    }
    let ev = counters.events;
    println!(
        "events: sent={} suppressed={} lost={}",
        ev.sent, ev.suppressed, ev.lost
    );
}

pub fn status(run_dir: &Path, json: bool) -> Result<(), Failure> {
    let v = match call(run_dir, &Request::Status {})? {
        Some(reply) => data(reply)?,
        None => {
            let st = state::read(run_dir).map_err(|e| Failure::Runtime(e.to_string()))?;
            let mut v = serde_json::to_value(&st).expect("serialisable");
            v["running"] = false.into();
            v["enforcing"] = Pins::new(&st.pin_dir).has_links().into();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            v["rolled_back_by_kernel"] = st.rolled_back_by_kernel(now).into();
            v
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serialisable")
        );
        return Ok(());
    }
    let st: State = serde_json::from_value(v.clone())
        .map_err(|e| Failure::Runtime(format!("bad status: {e}")))?;
    let running = v["running"].as_bool().unwrap_or(false);
    println!(
        "guard {} pid {} ({})",
        st.version,
        st.pid,
        if running {
            "running"
        } else if v["enforcing"].as_bool().unwrap_or(false) {
            "daemon NOT running; the pinned programs keep enforcing"
        } else {
            "NOT running"
        }
    );
    println!("mode       {}", st.mode);
    println!(
        "policy     {} (sha256 {}, generation {})",
        st.policy, st.policy_hash, st.generation
    );
    if let Some(pc) = &st.pending_confirm {
        if v["rolled_back_by_kernel"].as_bool() == Some(true) {
            println!(
                "ROLLED BACK this policy was never confirmed: at its deadline the kernel went back to the previous policy (sha256 {})",
                pc.rollback_hash
            );
        } else {
            println!(
                "unconfirmed the kernel goes back to sha256 {} at {} s since the epoch unless `guard confirm` comes first",
                pc.rollback_hash, pc.deadline_unix
            );
        }
    }
    let ifaces: Vec<String> = st
        .interfaces
        .iter()
        .map(|i| {
            let mode = match i.xdp_mode {
                datapath::AttachMode::Default => "XDP",
                datapath::AttachMode::Generic => "XDP generic",
            };
            format!("{} ({mode})", i.name)
        })
        .collect();
    println!("interfaces {}", ifaces.join(", "));
    println!(
        "cgroup     {} (bind/connect/sendmsg/socket hooks, sock_ops)",
        st.cgroup.display()
    );
    if running {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        println!("uptime     {}s", now.saturating_sub(st.started_at));
    } else {
        // A dead daemon has no uptime; say when the last one started.
        println!(
            "uptime     - (the daemon started at {} s since the epoch and is gone)",
            st.started_at
        );
    }
    println!("rules      {}", st.rules.len());
    if v["pending_confirm"].as_bool() == Some(true) {
        println!("pending    a policy applied with --confirm-within awaits `guard confirm`");
    }
    Ok(())
}

pub fn apply(run_dir: &Path, file: &Path, confirm_within: Option<u64>) -> Result<(), Failure> {
    let text = read_policy(file)?;
    // Validate here first: precise errors even when the daemon is down.
    policy::check(&file.display().to_string(), &text)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let request = Request::Apply {
        name: file.display().to_string(),
        policy: text,
        confirm_within,
    };
    let reply = call(run_dir, &request)?.ok_or_else(|| {
        Failure::Runtime("guard is not running: start it with `guard run`".into())
    })?;
    let v = data(reply)?;
    let hash = v["policy_hash"].as_str().unwrap_or("");
    println!(
        "applied {} (sha256 {}, generation {})",
        file.display(),
        &hash[..hash.len().min(16)],
        v["generation"]
    );
    if let Some(secs) = confirm_within {
        println!(
            "run `guard confirm` within {secs}s to keep it; otherwise the previous policy comes back"
        );
    }
    Ok(())
}

pub fn events(run_dir: &Path, follow: bool) -> Result<(), Failure> {
    let mut since = 0;
    loop {
        let reply = call(run_dir, &Request::Events { since })?.ok_or_else(|| {
            Failure::Runtime(
                "guard is not running: events are kept by the daemon (see also its log)".into(),
            )
        })?;
        let v = data(reply)?;
        for e in v["events"].as_array().into_iter().flatten() {
            println!("{e}");
        }
        since = v["next"].as_u64().unwrap_or(since);
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn confirm(run_dir: &Path) -> Result<(), Failure> {
    let reply = call(run_dir, &Request::Confirm {})?
        .ok_or_else(|| Failure::Runtime("guard is not running".into()))?;
    data(reply)?;
    println!("confirmed");
    Ok(())
}

pub fn unload(pin_dir: &Path, run_dir: &Path) -> Result<(), Failure> {
    if let Some(reply) = call(run_dir, &Request::Unload {})? {
        data(reply)?;
    } else {
        let pins =
            state::read(run_dir).map_or_else(|_| Pins::new(pin_dir), |st| Pins::new(&st.pin_dir));
        pins.remove_all()
            .map_err(|e| Failure::Runtime(format!("removing {}: {e}", pins.dir().display())))?;
        state::remove(run_dir);
    }
    println!("guard unloaded: programs detached, pins removed");
    Ok(())
}

/// The policy to judge by: `file`, else the running daemon's. Returns its label too.
pub fn policy_for(
    run_dir: &Path,
    file: Option<&Path>,
) -> Result<(String, policy::model::Policy), Failure> {
    let (label, text) = match file {
        Some(file) => (file.display().to_string(), read_policy(file)?),
        None => {
            let reply = call(run_dir, &Request::Policy {})?.ok_or_else(|| {
                Failure::Runtime(
                    "guard is not running: name the policy to judge by with --policy FILE".into(),
                )
            })?;
            let v = data(reply)?;
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("text"))
        }
    };
    let checked = policy::check(&label, &text).map_err(|e| Failure::Invalid(e.to_string()))?;
    Ok((label, checked.policy))
}

/// `guard audit`: local listeners against the policy, or, with `--probe`, the client's view.
pub fn audit(run_dir: &Path, args: &crate::cli::AuditArgs) -> Result<(), Failure> {
    let (label, policy) = policy_for(run_dir, args.policy.as_deref())?;
    let _netns = args
        .netns
        .as_deref()
        .map(crate::linux::host::InNetns::enter)
        .transpose()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if let Some(address) = args.probe {
        return audit_probe(&label, &policy, address, args);
    }
    let listeners = crate::linux::sockets::listeners()
        .map_err(|e| Failure::Runtime(format!("reading the listening sockets: {e}")))?;
    let report = crate::inspect::audit::audit(&policy, listeners);
    if args.json {
        let mut v = serde_json::to_value(&report).expect("serialisable");
        v["policy"] = label.into();
        v["netns"] = args.netns.clone().into();
        println!("{v}");
    } else {
        print!("{}", crate::inspect::audit::render(&report, &label));
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
    policy: &policy::model::Policy,
    address: std::net::IpAddr,
    args: &crate::cli::AuditArgs,
) -> Result<(), Failure> {
    use crate::inspect::probe::{self, Judgement};
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
        println!(
            "{:<6}{:<7}{:<9}{:<15}{:<11}NOTE",
            "PROTO", "PORT", "POLICY", "OBSERVED", "RESULT"
        );
        for r in &results {
            println!(
                "{:<6}{:<7}{:<9}{:<15}{:<11}{}",
                r.proto.to_string(),
                r.port,
                if r.allowed { "allow" } else { "deny" },
                r.observed.as_str(),
                r.judgement.as_str(),
                r.note
            );
        }
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

/// `guard doctor`: exit 1 when any finding is an error.
pub fn doctor(
    pin_dir: &Path,
    run_dir: &Path,
    json: bool,
    policy_file: Option<&Path>,
    netns: Option<&str>,
) -> Result<(), Failure> {
    use crate::inspect::doctor;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::Runtime(
            "guard doctor needs root: it reads guard's pins, BPF programs, links and maps (run it with sudo)".into(),
        ));
    }
    // The running daemon's policy when there is one; no policy is not an error here.
    let policy = match policy_for(run_dir, policy_file) {
        Ok((_, p)) => Some(p),
        Err(e) if policy_file.is_some() => return Err(e),
        Err(_) => None,
    };
    let places = doctor::Places {
        run_dir,
        pin_dir,
        policy_file,
    };
    let report = doctor::run(&places, policy.as_ref(), netns)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if json {
        let mut v = serde_json::to_value(&report).expect("serialisable");
        v["netns"] = netns.into();
        println!("{v}");
    } else {
        print!("{}", doctor::render(&report));
    }
    if report.errors > 0 {
        return Err(Failure::Invalid(format!(
            "guard doctor: {} error(s)",
            report.errors
        )));
    }
    Ok(())
}
