//! One reply type per control request: what the daemon sends in a reply's `data`, and what
//! the CLI decodes, once. The JSON keys are the wire format (and the `--json` outputs, which
//! print these replies): renaming a field here changes the protocol.

use serde::{Deserialize, Serialize};

use crate::{
    api::state::{PendingConfirm, State},
    datapath::counters::Counters,
    policy::model::Mode,
};

/// `status`: the state file, and whether the daemon runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The state file (its `pending_confirm` travels in [`StatusReply::pending_confirm`]).
    #[serde(flatten)]
    pub state: State,
    /// False when the CLI read the state file of a daemon that is gone.
    pub running: bool,
    /// How many rules the policy has (counters included: `default`, `failsafe`, ...). The
    /// rules themselves are in `guard stats`.
    #[serde(default)]
    pub rules_total: usize,
    /// Seconds since the daemon started (a running daemon only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// A running daemon: whether a policy applied with `--confirm-within` awaits `guard
    /// confirm`. A daemon that is gone: the record of that policy, if one was pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingStatus>,
    /// Whether guard's programs are attached and a policy is loaded: for a running daemon,
    /// every hook of the policy; for a daemon that is gone, its pinned links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing: Option<bool>,
    /// A running daemon that is not enforcing: why (a detached hook, no policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_enforcing: Option<String>,
    /// A daemon that is gone: whether the kernel went back to the previous policy at an
    /// unconfirmed policy's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by_kernel: Option<bool>,
}

/// `state` without its rule and counter-slot lists and its `pending_confirm`, cloned.
fn without_rules(state: &State) -> State {
    State {
        version: state.version.clone(),
        pid: state.pid,
        started_at: state.started_at,
        policy: state.policy.clone(),
        policy_hash: state.policy_hash.clone(),
        generation: state.generation,
        mode: state.mode,
        interfaces: state.interfaces.clone(),
        cgroup: state.cgroup.clone(),
        pin_dir: state.pin_dir.clone(),
        rules: Vec::new(),
        port_slots: Vec::new(),
        metrics_addr: state.metrics_addr.clone(),
        pending_confirm: None,
    }
}

/// [`StatusReply::pending_confirm`]: a flag from a running daemon, the record from the state
/// file of one that is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PendingStatus {
    Awaiting(bool),
    Recorded(PendingConfirm),
}

impl StatusReply {
    /// The status of a running daemon.
    pub fn running(
        state: &State,
        now_unix: u64,
        awaiting_confirm: bool,
        enforcement: Result<(), String>,
    ) -> Self {
        Self {
            state: without_rules(state),
            rules_total: state.rules.len(),
            running: true,
            uptime_seconds: Some(now_unix.saturating_sub(state.started_at)),
            pending_confirm: Some(PendingStatus::Awaiting(awaiting_confirm)),
            enforcing: Some(enforcement.is_ok()),
            not_enforcing: enforcement.err(),
            rolled_back_by_kernel: None,
        }
    }

    /// The status read from the state file of a daemon that is gone.
    pub fn gone(state: &State, now_unix: u64, enforcing: bool) -> Self {
        Self {
            state: without_rules(state),
            rules_total: state.rules.len(),
            running: false,
            uptime_seconds: None,
            pending_confirm: state.pending_confirm.clone().map(PendingStatus::Recorded),
            enforcing: Some(enforcing),
            not_enforcing: None,
            rolled_back_by_kernel: Some(state.rolled_back_by_kernel(now_unix)),
        }
    }

    /// The unconfirmed policy's record, when the state file holds one.
    pub fn pending_record(&self) -> Option<&PendingConfirm> {
        match &self.pending_confirm {
            Some(PendingStatus::Recorded(record)) => Some(record),
            _ => None,
        }
    }

    /// True when a running daemon waits for `guard confirm`.
    pub fn awaiting_confirm(&self) -> bool {
        matches!(self.pending_confirm, Some(PendingStatus::Awaiting(true)))
    }
}

/// `stats` (and `guard stats --json`): the counters with the policy they count for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    #[serde(flatten)]
    pub counters: Counters,
    pub policy: String,
    pub policy_hash: String,
    pub generation: u64,
    pub mode: Mode,
}

impl StatsReply {
    pub fn new(state: &State, counters: Counters) -> Self {
        Self {
            counters,
            policy: state.policy.clone(),
            policy_hash: state.policy_hash.clone(),
            generation: state.generation,
            mode: state.mode,
        }
    }
}

/// `apply`: what runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReply {
    pub policy_hash: String,
    pub generation: u64,
    /// The commit-confirm window asked for, if any.
    pub confirm_within: Option<u64>,
}

/// `events`: the recent events numbered above the request's `since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsReply {
    /// Each event as logged, with its number in `seq`.
    pub events: Vec<serde_json::Value>,
    /// The `since` to ask with next.
    pub next: u64,
}

/// `confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmReply {
    pub confirmed: bool,
}

/// `verify`: how the kernel's policy maps differ from the recorded policy (empty: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReply {
    pub drift: Vec<String>,
}

/// `policy`: the running policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReply {
    pub name: String,
    pub text: String,
    pub hash: String,
}

/// `unload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadReply {
    pub unloaded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_status_carries_a_flag_and_a_gone_one_the_record() {
        let text = r#"{"version":"0.1.0","pid":7,"started_at":100,"policy":"p.toml",
            "policy_hash":"ab","generation":2,"mode":"audit","interfaces":[],"cgroup":"/c",
            "pin_dir":"/p","rules":[],"port_slots":[],"metrics_addr":null,
            "pending_confirm":{"deadline_unix":160,"rollback_hash":"cd"}}"#;
        let state: State = serde_json::from_str(text).unwrap();
        let running =
            serde_json::to_value(StatusReply::running(&state, 130, true, Ok(()))).unwrap();
        assert_eq!(running["pending_confirm"], true);
        assert_eq!(running["uptime_seconds"], 30);
        assert_eq!(running["mode"], "audit");
        let back: StatusReply = serde_json::from_value(running).unwrap();
        assert!(back.awaiting_confirm() && back.running);
        let gone = serde_json::to_value(StatusReply::gone(&state, 200, true)).unwrap();
        assert_eq!(gone["pending_confirm"]["rollback_hash"], "cd");
        assert_eq!(gone["rolled_back_by_kernel"], true);
        let back: StatusReply = serde_json::from_value(gone).unwrap();
        assert_eq!(back.pending_record().unwrap().deadline_unix, 160);
        assert!(!back.running && !back.awaiting_confirm());
    }
}
