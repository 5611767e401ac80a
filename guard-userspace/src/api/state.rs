//! The daemon's state file (`RUN_DIR/state.json`, root-only): what is running, for `guard
//! status` and `guard stats`. Written atomically after attaching, removed on shutdown.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::AttachMode,
    policy::model::Mode,
    policy::{PortSlot, RuleInfo},
};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub policy: String,
    pub policy_hash: String,
    /// Policies applied since the daemon started (1 = the first).
    #[serde(default)]
    pub generation: u64,
    pub mode: Mode,
    pub interfaces: Vec<Attached>,
    /// The cgroup v2 directory the cgroup programs are attached to.
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// Every rule with its counter index. (Left out of `status` replies, which carry
    /// [`crate::api::replies::StatusReply::rules_total`] instead: a policy of a million rules
    /// would make each status call, every readiness probe among them, move ~100 MB.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleInfo>,
    /// What each per-port counter slot counts (left out of `status` replies too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_slots: Vec<PortSlot>,
    /// Where /metrics and /health are served (the bound address), if they are.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Set while this policy was applied with `--confirm-within` and is not confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
}

/// An unconfirmed policy: at `deadline_unix` the kernel itself goes back to the policy
/// whose hash is `rollback_hash`, daemon or no daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    /// Seconds since the Unix epoch.
    pub deadline_unix: u64,
    pub rollback_hash: String,
}

impl State {
    /// True when a commit-confirm deadline recorded here has passed: the kernel judges by
    /// the previous policy, not by this one.
    pub fn rolled_back_by_kernel(&self, now_unix: u64) -> bool {
        self.pending_confirm
            .as_ref()
            .is_some_and(|p| now_unix >= p.deadline_unix)
    }
}

/// An interface the XDP program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub name: String,
    pub xdp_mode: AttachMode,
}

/// Creates `dir` (mode 0700) if needed.
pub fn create_run_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

pub fn write(dir: &Path, state: &State) -> io::Result<()> {
    prepare(dir)?.commit(state)
}

/// A state file about to be replaced: its temporary file is open, so a run directory that
/// cannot be written (read-only, gone) fails here, before anything changes in the kernel.
pub struct Pending {
    dir: PathBuf,
    tmp: PathBuf,
    file: fs::File,
}

/// Opens the temporary file a [`Pending::commit`] will fill and rename over the state file.
pub fn prepare(dir: &Path) -> io::Result<Pending> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    Ok(Pending {
        dir: dir.to_path_buf(),
        tmp,
        file,
    })
}

impl Pending {
    /// Writes `state`, syncs it and renames it over the state file (atomic).
    pub fn commit(mut self, state: &State) -> io::Result<()> {
        let written = self
            .file
            .write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)
            .and_then(|()| self.file.sync_all())
            .and_then(|()| fs::rename(&self.tmp, self.dir.join(STATE_FILE)));
        if written.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        written
    }
}

/// The state of the daemon using `dir`, or an error saying it is not running.
pub fn read(dir: &Path) -> io::Result<State> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                format!("guard is not running (no {})", path.display()),
            )
        } else {
            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        }
    })?;
    serde_json::from_str(&text).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

pub fn remove(dir: &Path) {
    let _ = fs::remove_file(dir.join(STATE_FILE));
}
