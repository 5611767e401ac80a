//! The read-only commands: `check`, `stats`, `status`.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    bpf::{self, AttachMode},
    cli::Failure,
    counters::Counters,
    policy, state,
};

pub fn check(file: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Runtime(format!("cannot read policy {}: {e}", file.display())))?;
    let checked = policy::check(&file.display().to_string(), &text)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    for w in &checked.warnings {
        eprintln!("{w}");
    }
    let p = &checked.policy;
    println!(
        "{}: ok: mode {}, default {}, {} ingress rules, {} zones",
        file.display(),
        p.mode,
        match p.default_action {
            policy::model::DefaultAction::Allow => "allow",
            policy::model::DefaultAction::Deny => "deny",
        },
        p.ingress.len(),
        p.zones.len()
    );
    Ok(())
}

#[derive(Serialize)]
struct StatsOut<'a> {
    policy: &'a str,
    policy_hash: &'a str,
    mode: &'a str,
    #[serde(flatten)]
    counters: &'a Counters,
}

pub fn stats(run_dir: &Path, json: bool) -> Result<(), Failure> {
    let st = state::read(run_dir).map_err(|e| Failure::Runtime(e.to_string()))?;
    let counters = bpf::pinned_counters(&st.pin_dir, &st.rules, &st.port_slots)
        .map_err(|e| Failure::Runtime(bpf::error_chain(&e)))?;
    if json {
        let out = StatsOut {
            policy: &st.policy,
            policy_hash: &st.policy_hash,
            mode: &st.mode,
            counters: &counters,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serialisable")
        );
        return Ok(());
    }
    println!(
        "policy {} ({}), mode {}",
        st.policy,
        &st.policy_hash[..16],
        st.mode
    );
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
    Ok(())
}

pub fn status(run_dir: &Path, json: bool) -> Result<(), Failure> {
    let st = state::read(run_dir).map_err(|e| Failure::Runtime(e.to_string()))?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(st.pid as i32, 0) } == 0;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if json {
        let mut v = serde_json::to_value(&st).expect("serialisable");
        v["running"] = alive.into();
        v["uptime_seconds"] = now.saturating_sub(st.started_at).into();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serialisable")
        );
    } else {
        println!(
            "guard {} pid {} ({})",
            st.version,
            st.pid,
            if alive { "running" } else { "NOT running" }
        );
        println!("mode       {}", st.mode);
        println!("policy     {} (sha256 {})", st.policy, st.policy_hash);
        let ifaces: Vec<String> = st
            .interfaces
            .iter()
            .map(|i| {
                let mode = match i.xdp_mode {
                    AttachMode::Default => "XDP",
                    AttachMode::Generic => "XDP generic",
                };
                format!("{} ({mode})", i.name)
            })
            .collect();
        println!("interfaces {}", ifaces.join(", "));
        println!("cgroup     {} (bind hooks, sock_ops)", st.cgroup.display());
        println!("uptime     {}s", now.saturating_sub(st.started_at));
        println!("rules      {}", st.rules.len());
    }
    Ok(())
}
