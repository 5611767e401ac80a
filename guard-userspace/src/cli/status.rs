//! `guard status`: what runs, from the daemon or, when it is down, from its state file.

use std::path::Path;

use crate::{
    api::{Failure, ctl::Request, replies::StatusReply, state},
    cli::{
        client::{ask, now_unix},
        print_json,
    },
    datapath::{AttachMode, Pins},
};

/// `guard status --ready`: ready means the daemon answers and enforces; a daemon that is gone
/// is not ready even though its pinned programs keep enforcing (nothing applies a policy
/// change or reports).
pub fn ready(run_dir: &Path) -> Result<(), Failure> {
    let reply: Option<StatusReply> = match ask(run_dir, &Request::Status {}) {
        Ok(reply) => reply,
        Err(e) => return Err(Failure::Invalid(format!("not ready: {e}"))),
    };
    match reply {
        None => Err(Failure::Invalid(format!(
            "not ready: the daemon is not running (no control socket in {})",
            run_dir.display()
        ))),
        Some(StatusReply {
            enforcing: Some(true),
            state,
            ..
        }) => {
            println!(
                "ready: {} policy sha256 {} generation {}",
                state.mode, state.policy_hash, state.generation
            );
            Ok(())
        }
        Some(reply) => Err(Failure::Invalid(format!(
            "not ready: not enforcing: {}",
            reply.not_enforcing.as_deref().unwrap_or("unknown")
        ))),
    }
}

pub fn status(run_dir: &Path, json: bool) -> Result<(), Failure> {
    let reply: StatusReply = match ask(run_dir, &Request::Status {})? {
        Some(reply) => reply,
        None => {
            let st = state::read(run_dir).map_err(|e| Failure::Runtime(e.to_string()))?;
            StatusReply::gone(&st, now_unix(), Pins::new(&st.pin_dir).has_links())
        }
    };
    if json {
        print_json(&reply, true);
        return Ok(());
    }
    let st = &reply.state;
    println!(
        "guard {} pid {} ({})",
        st.version,
        st.pid,
        if reply.running {
            "running"
        } else if reply.enforcing == Some(true) {
            "daemon NOT running; the pinned programs keep enforcing"
        } else {
            "NOT running"
        }
    );
    println!("mode       {}", st.mode);
    if reply.running {
        match (&reply.enforcing, &reply.not_enforcing) {
            (Some(false), Some(why)) => println!("enforcing  NO: {why}"),
            (Some(false), None) => println!("enforcing  NO"),
            _ => println!("enforcing  yes"),
        }
    }
    println!(
        "policy     {} (sha256 {}, generation {})",
        st.policy, st.policy_hash, st.generation
    );
    if let Some(pc) = reply.pending_record() {
        if reply.rolled_back_by_kernel == Some(true) {
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
                AttachMode::Default => "XDP",
                AttachMode::Generic => "XDP generic",
            };
            format!("{} ({mode})", i.name)
        })
        .collect();
    println!("interfaces {}", ifaces.join(", "));
    println!(
        "cgroup     {} (bind/connect/sendmsg/socket hooks, sock_ops)",
        st.cgroup.display()
    );
    match reply.uptime_seconds {
        Some(uptime) => println!("uptime     {uptime}s"),
        // A dead daemon has no uptime; say when the last one started.
        None => println!(
            "uptime     - (the daemon started at {} s since the epoch and is gone)",
            st.started_at
        ),
    }
    println!("rules      {}", reply.rules_total);
    if reply.awaiting_confirm() {
        println!("pending    a policy applied with --confirm-within awaits `guard confirm`");
    }
    Ok(())
}
