//! `guard stats` (counters, from the daemon or, when it is down, the pinned maps) and
//! `guard stats --watch` (rates between refreshes).

use std::{io::Write as _, path::Path, time::Instant};

use serde::{Deserialize, Serialize};

use crate::{
    api::{Failure, ctl::Request, replies::StatsReply, state},
    cli::{client::ask, print_json, table::Table},
    datapath::{self, Pins, counters::Counters},
    policy::model::{PortLabel, Proto, RuleAction},
};

/// The stats of the running daemon, or of the pinned maps when it is down (`false`).
fn fetch(run_dir: &Path) -> Result<(StatsReply, bool), Failure> {
    if let Some(reply) = ask(run_dir, &Request::Stats {})? {
        return Ok((reply, true));
    }
    let st = state::read(run_dir).map_err(|e| Failure::Runtime(e.to_string()))?;
    let counters = datapath::pinned_counters(&Pins::new(&st.pin_dir), &st.rules, &st.port_slots)
        .map_err(|e| Failure::Runtime(datapath::error_chain(&e)))?;
    Ok((StatsReply::new(&st, counters), false))
}

/// Per-second rates between two counter snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub interval_seconds: f64,
    pub rules: Vec<RuleRate>,
    pub ports: Vec<PortRate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleRate {
    pub rule: String,
    pub action: RuleAction,
    pub packets: u64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortRate {
    pub proto: Proto,
    pub port: PortLabel,
    pub attempted: u64,
    pub attempted_per_second: f64,
    pub rejected_per_second: f64,
}

/// One `guard stats --watch --json` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WatchLine {
    #[serde(flatten)]
    rates: Rates,
    generation: u64,
    daemon_running: bool,
}

/// Per-second rates between two counter snapshots taken `secs` apart, per rule (packets)
/// and per port (attempts, rejections). Counters that went down (a rule's slot given to a
/// new name) count from zero.
pub fn rates(before: &Counters, after: &Counters, secs: f64) -> Rates {
    let secs = secs.max(1e-3);
    let rate = |now: u64, then: Option<u64>| {
        let then = then.filter(|&t| t <= now).unwrap_or(0);
        (now - then) as f64 / secs
    };
    let rules = after
        .rules
        .iter()
        .map(|r| {
            let old = before.rules.iter().find(|o| o.rule == r.rule);
            RuleRate {
                rule: r.rule.clone(),
                action: r.action,
                packets: r.packets,
                packets_per_second: rate(r.packets, old.map(|o| o.packets)),
                bytes_per_second: rate(r.bytes, old.map(|o| o.bytes)),
            }
        })
        .collect();
    let ports = after
        .ports
        .iter()
        .map(|p| {
            let old = before
                .ports
                .iter()
                .find(|o| o.proto == p.proto && o.port == p.port);
            PortRate {
                proto: p.proto,
                port: p.port,
                attempted: p.attempted,
                attempted_per_second: rate(p.attempted, old.map(|o| o.attempted)),
                rejected_per_second: rate(p.rejected, old.map(|o| o.rejected)),
            }
        })
        .collect();
    Rates {
        interval_seconds: secs,
        rules,
        ports,
    }
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
    let (first, _) = fetch(run_dir)?;
    let mut before = first.counters;
    let mut then = Instant::now();
    let mut shown = 0;
    while count.is_none_or(|n| shown < n) {
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        let (now_stats, live) = fetch(run_dir)?;
        let now = Instant::now();
        let r = rates(&before, &now_stats.counters, (now - then).as_secs_f64());
        if json {
            let line = WatchLine {
                rates: r,
                generation: now_stats.generation,
                daemon_running: live,
            };
            print_json(&line, false);
        } else {
            // Home, clear screen: the view refreshes in place.
            print!("\x1b[H\x1b[2J");
            println!(
                "guard stats --watch: policy {} (generation {}), every {interval} s{}  (Ctrl-C to stop)\n",
                now_stats.policy,
                now_stats.generation,
                if live {
                    ""
                } else {
                    ", daemon down: pinned maps"
                }
            );
            let mut rules = Table::new(["rule", "action", "packets", "packets/s"]).right(&[2, 3]);
            for rule in &r.rules {
                rules.row([
                    rule.rule.clone(),
                    rule.action.to_string(),
                    rule.packets.to_string(),
                    format!("{:.1}", rule.packets_per_second),
                ]);
            }
            print!("{}", rules.render());
            let mut ports = Table::new(["proto", "port", "attempted", "attempts/s", "rejected/s"])
                .right(&[2, 3, 4]);
            for port in &r.ports {
                ports.row([
                    port.proto.to_string(),
                    port.port.to_string(),
                    port.attempted.to_string(),
                    format!("{:.1}", port.attempted_per_second),
                    format!("{:.1}", port.rejected_per_second),
                ]);
            }
            print!("\n{}", ports.render());
        }
        let _ = std::io::stdout().flush();
        before = now_stats.counters;
        then = now;
        shown += 1;
    }
    Ok(())
}

pub fn stats(run_dir: &Path, json: bool) -> Result<(), Failure> {
    let (reply, live) = fetch(run_dir)?;
    if !live {
        eprintln!(
            "guard: the daemon is not running; counters read from the pinned maps (enforcement continues)"
        );
    }
    if json {
        print_json(&reply, true);
        return Ok(());
    }
    let hash = &reply.policy_hash;
    println!(
        "policy {} ({}, generation {}), mode {}",
        reply.policy,
        &hash[..hash.len().min(16)],
        reply.generation,
        reply.mode
    );
    print_counters(&reply.counters);
    Ok(())
}

fn print_counters(counters: &Counters) {
    let mut rules = Table::new(["RULE", "ACTION", "PACKETS", "BYTES"]).right(&[2, 3]);
    for r in &counters.rules {
        rules.row([
            r.rule.clone(),
            r.action.to_string(),
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    print!("{}", rules.render());
    let reasons: Vec<String> = counters
        .reasons
        .iter()
        .map(|r| format!("{}={}", r.reason, r.packets))
        .collect();
    println!("reasons: {}", reasons.join(" "));
    if !counters.ports.is_empty() {
        let mut ports = Table::new(["PROTO", "PORT", "ATTEMPTED", "REJECTED"]).right(&[1, 2, 3]);
        for p in &counters.ports {
            ports.row([
                p.proto.to_string(),
                p.port.to_string(),
                p.attempted.to_string(),
                p.rejected.to_string(),
            ]);
        }
        print!("\n{}", ports.render());
    }
    if !counters.connections.is_empty() {
        let mut conns = Table::new([
            "DIRECTION",
            "PORT",
            "ESTABLISHED",
            "ACTIVE",
            "CLOSED",
            "RTT p50",
            "RTT p99",
        ])
        .right(&[1, 2, 3, 4, 5, 6]);
        for c in &counters.connections {
            let q = |q| {
                c.rtt_quantile_us(q)
                    .map_or_else(|| "-".to_owned(), |us| format!("<{us}us"))
            };
            conns.row([
                c.direction.to_string(),
                c.port.to_string(),
                c.established.to_string(),
                c.active.to_string(),
                c.closed.to_string(),
                q(0.5),
                q(0.99),
            ]);
        }
        print!("\n{}", conns.render());
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
