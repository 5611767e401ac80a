//! `guard run`: the daemon.
//!
//! Every policy (at start, on SIGHUP, when the policy file changes, on `guard apply`, on a
//! commit-confirm rollback) takes the same path: validate, lower (rules and ports keep their
//! counter slots), then make it run in one of two ways:
//! - usually, the loaded programs stay and the policy is written into the inactive generation
//!   of their double-buffered policy maps (only the entries that differ), then the active
//!   generation flips with one map write ([`Guard::switch`]);
//! - at start, when adopting a previous daemon's pinned links, or when the policy outgrows
//!   the maps, a new instance of the programs is loaded with its own policy maps and the
//!   shared state maps (counters, flows, events), and each pinned link is switched to it
//!   atomically (`BPF_LINK_UPDATE`).
//!
//! Either way a packet or socket call is judged entirely by the old policy or entirely by
//! the new one. A rejected policy changes nothing.
//!
//! Fail-static: the links and state maps are pinned in bpffs, so enforcement does not depend
//! on the daemon. SIGTERM, SIGINT or SIGKILL stop the daemon and leave the last policy
//! enforcing; a new daemon adopts the pinned links without detaching them. Only
//! `guard unload` detaches.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    net::IpAddr,
    net::SocketAddr,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::PermissionsExt as _,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest,
        unix::AsyncFd,
    },
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{
    api::Failure,
    api::ctl::{self, Reply, Request},
    api::replies::{
        ApplyReply, ConfirmReply, EventsReply, PolicyReply, StatsReply, StatusReply, UnloadReply,
        VerifyReply,
    },
    api::state::{self, Attached, State},
    datapath::{
        Attach, AttachMode, Guard, KernelLog, KernelLogger, Pins, cgroup_hook, error_chain,
        tc_hook, xdp_hook,
    },
    linux::host,
    linux::hoststats::{self, HostStats},
    observe::events::{self, Decoder, Recent},
    observe::health::{Change, Detectors, Verdict},
    observe::logging,
    observe::metrics,
    policy::{
        self, Checked, PolicySource,
        model::{InterfaceSpec, Mode, Proto},
    },
};

/// How `guard run` was asked to run: the command line's options (see `guard run --help`).
#[derive(Debug, Clone)]
pub struct Options {
    pub policy: Option<PathBuf>,
    pub system_policy: PathBuf,
    pub interfaces: Vec<String>,
    pub cgroup: Option<PathBuf>,
    pub kernel_log: KernelLog,
    pub log_format: logging::LogFormat,
    pub log_dir: Option<PathBuf>,
    pub log_rotation: logging::LogRotation,
    pub log_keep: u16,
    pub metrics_addr: String,
    pub metrics_max_rules: usize,
}

pub fn run(pin_dir: &Path, run_dir: &Path, args: &Options) -> Result<(), Failure> {
    let log_files = args.log_dir.as_ref().map(|dir| logging::LogFiles {
        dir: dir.clone(),
        rotation: args.log_rotation,
        keep: usize::from(args.log_keep),
    });
    logging::init(args.log_format, log_files.as_ref()).map_err(Failure::Runtime)?;
    let metrics_addr: Option<SocketAddr> = match args.metrics_addr.as_str() {
        "off" => None,
        addr => Some(addr.parse().map_err(|e| {
            Failure::Runtime(format!(
                "invalid --metrics-addr `{addr}`: {e} (expected IP:PORT, or `off`)"
            ))
        })?),
    };
    let (source, text) =
        policy::resolve(args.policy.as_deref(), &args.system_policy).map_err(|e| {
            let path = args.policy.as_deref().unwrap_or(&args.system_policy);
            Failure::Runtime(format!("cannot read policy {}: {e}", path.display()))
        })?;
    let checked =
        policy::check(&source.label(), &text).map_err(|e| Failure::Invalid(e.to_string()))?;
    if source == PolicySource::Embedded {
        info!(
            "no {} found: running the embedded default policy in audit mode (nothing is dropped)",
            args.system_policy.display()
        );
    }
    for name in &args.interfaces {
        if let Some(problem) = policy::validate::interface_name_problem(name) {
            return Err(Failure::Runtime(format!(
                "invalid --interface `{name}`: {problem}"
            )));
        }
    }

    state::create_run_dir(run_dir).map_err(|e| runtime("creating", run_dir, e))?;
    let _lock = lock(run_dir)?;
    // Bound before the first policy, so a taken port fails the start and the state file
    // names the address actually bound (port 0 picks a free one).
    let metrics_listener = match metrics_addr {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr).map_err(|e| {
                Failure::Runtime(format!(
                    "serving metrics on {addr}: {e} (see --metrics-addr)"
                ))
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| Failure::Runtime(format!("metrics listener: {e}")))?;
            Some(listener)
        }
        None => None,
    };
    let pins = Pins::new(pin_dir);
    pins.prepare()
        .map_err(|e| runtime("preparing", pin_dir, e))?;
    pins.adopt_layout()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let adopting = pins.has_links();
    // The previous daemon's rule and port identities, so counters continue.
    let previous = if adopting {
        state::read(run_dir).ok()
    } else {
        None
    };
    if adopting {
        info!(pins = %pin_dir.display(), "adopting the pinned programs of a previous daemon: enforcement continues without a gap");
    }
    let mut daemon = Daemon {
        pins,
        run_dir: run_dir.to_path_buf(),
        interface_override: args.interfaces.clone(),
        cgroup_override: args.cgroup.clone(),
        kernel_log: args.kernel_log,
        policy_file: match &source {
            PolicySource::File(p) => Some(p.clone()),
            PolicySource::Embedded => None,
        },
        guard: None,
        state: previous,
        current: None,
        pending: None,
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        readers: None,
        readers_opened: false,
        metrics_addr: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        metrics_listener,
        detectors: Detectors::default(),
        reloads: Reloads::default(),
        repairs: Repairs::default(),
        metrics_max_rules: args.metrics_max_rules,
        held: BTreeMap::new(),
        decoder: Arc::new(Decoder::new(Vec::new())),
        recent: Arc::default(),
        policy: None,
        unexpected: None,
    };
    if let Some(pc) = daemon
        .state
        .as_ref()
        .and_then(|s| s.pending_confirm.clone())
    {
        report_orphaned_confirm(&daemon, &pc);
    }
    if let Err(err) = daemon.apply(source, text, checked, "start", None) {
        if !adopting {
            // Nothing may stay attached after a failed first start.
            let _ = daemon.pins.remove_all();
            state::remove(run_dir);
        }
        return Err(err);
    }
    serve(daemon)
}

/// A policy that is running, kept for rollbacks.
struct Current {
    source: PolicySource,
    text: String,
}

/// The longest commit-confirm window (a day), checked by the daemon as well as the CLI.
pub const MAX_CONFIRM_SECS: u64 = 86_400;

/// An applied policy waiting for `guard confirm`. The kernel holds the same deadline
/// ([`Guard::switch`]), so the policy ends even if this daemon does not live to roll it back.
struct Pending {
    deadline: Instant,
    rollback_to: Current,
}

/// Links put back since the daemon started ([`Daemon::repair_links`]).
#[derive(Debug, Default)]
struct Repairs {
    repinned: u64,
    reattached: u64,
}

/// Hooks the running policy attaches to: the link pin name, and the interface for XDP and
/// TC hooks (`None` for the cgroup's).
fn hooks(st: &State) -> Vec<(String, Option<String>)> {
    st.interfaces
        .iter()
        .flat_map(|a| {
            [
                (xdp_hook(&a.name), Some(a.name.clone())),
                (tc_hook(&a.name), Some(a.name.clone())),
            ]
        })
        .chain(
            crate::datapath::CGROUP_PROGRAMS
                .iter()
                .map(|p| (cgroup_hook(p), None)),
        )
        .collect()
}

/// Policy changes since the daemon started, by result.
#[derive(Debug, Default)]
struct Reloads {
    applied: u64,
    rejected: u64,
}

/// What the HTTP server asks the daemon loop.
#[derive(Debug, Clone, Copy)]
enum Probe {
    Metrics,
    Health,
}

/// The daemon's answer to a [`Probe`]: status code, content type, body.
type ProbeReply = (u16, &'static str, String);

struct Daemon {
    pins: Pins,
    run_dir: PathBuf,
    interface_override: Vec<String>,
    cgroup_override: Option<PathBuf>,
    kernel_log: KernelLog,
    /// The file watched for changes and read on SIGHUP.
    policy_file: Option<PathBuf>,
    /// The instance whose programs the links run; dropping an older one after the switch
    /// frees its programs and policy maps.
    guard: Option<Guard>,
    state: Option<State>,
    current: Option<Current>,
    pending: Option<Pending>,
    started_at: u64,
    /// Taken from the first instance: the pinned event ring and kernel log every later
    /// instance writes to as well.
    readers: Option<(Option<KernelLogger>, RingBuf<MapData>)>,
    /// True once `readers` was taken from an instance (the serve loop then owns them).
    readers_opened: bool,
    /// The /metrics and /health listener until the serve loop takes it, and its address.
    metrics_listener: Option<std::net::TcpListener>,
    metrics_addr: Option<SocketAddr>,
    /// The anomaly detectors' state (configured by the running policy's `[health]`).
    detectors: Detectors,
    reloads: Reloads,
    repairs: Repairs,
    /// `--metrics-max-rules`.
    metrics_max_rules: usize,
    /// The running policy's links, held open ([`Daemon::hold_links`]).
    held: BTreeMap<String, std::os::fd::OwnedFd>,
    /// Names the rules of kernel events; given the rules of every policy applied.
    decoder: Arc<Decoder>,
    /// Recent events for `guard events`, filled by the event reader and by policy changes.
    recent: Arc<Mutex<Recent>>,
    /// The running policy, validated: `[health]` for the detectors and health check, the
    /// rest for the listener audit.
    policy: Option<policy::model::Policy>,
    /// Unexpected listeners at the last listener audit (`None` before the first).
    unexpected: Option<BTreeSet<(Proto, IpAddr, u16)>>,
}

fn runtime(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::Runtime(format!("{what} {}: {e}", path.display()))
}

impl Daemon {
    fn interfaces(&self, checked: &Checked) -> Result<Vec<String>, Failure> {
        if self.interface_override.is_empty() {
            resolve_interfaces(&checked.policy.interfaces)
        } else {
            let specs: Vec<InterfaceSpec> = self
                .interface_override
                .iter()
                .cloned()
                .map(InterfaceSpec::Name)
                .collect();
            resolve_interfaces(&specs)
        }
    }

    fn cgroup(&self, checked: &Checked) -> Result<PathBuf, Failure> {
        let cgroup = match self
            .cgroup_override
            .clone()
            .or_else(|| checked.policy.cgroup.clone())
        {
            Some(path) => path,
            None => host::cgroup2_root()
                .map_err(|e| Failure::Runtime(format!("finding the cgroup2 root: {e}")))?,
        };
        if !host::is_cgroup2(&cgroup) {
            return Err(Failure::Runtime(format!(
                "{} is not a cgroup v2 directory",
                cgroup.display()
            )));
        }
        Ok(cgroup)
    }

    /// Makes `checked` the running policy (see the module documentation).
    fn apply(
        &mut self,
        source: PolicySource,
        text: String,
        checked: Checked,
        how: &str,
        confirm_within: Option<u64>,
    ) -> Result<(), Failure> {
        let started = std::time::Instant::now();
        let rt = |e: crate::datapath::LoadError| Failure::Runtime(error_chain(&e));
        for warning in &checked.warnings {
            warn!("{warning}");
        }
        let interfaces = self.interfaces(&checked)?;
        let cgroup = self.cgroup(&checked)?;
        let (prev_rules, prev_slots) = self
            .state
            .as_ref()
            .map(|s| (s.rules.as_slice(), s.port_slots.as_slice()))
            .unwrap_or_default();
        let lowered = policy::lower_after(&checked.policy, prev_rules, prev_slots);
        let fits = self.guard.as_ref().is_some_and(|g| g.fits(&lowered));
        if confirm_within.is_some() && !fits {
            // The kernel's fallback lives in the running programs' maps; a change that needs
            // new programs has no previous generation there to fall back to.
            return Err(Failure::Runtime(
                "this change needs new programs (the policy outgrew the loaded maps), so it cannot be applied with --confirm-within: apply it without, keeping a session open to undo it".into(),
            ));
        }
        let rollback_to = self.current.as_ref().map(|c| Current {
            source: c.source.clone(),
            text: c.text.clone(),
        });
        let confirm = confirm_within.zip(rollback_to);
        let deadline_ns = confirm
            .as_ref()
            .map(|(secs, _)| crate::datapath::monotonic_ns() + secs * 1_000_000_000);
        // One transaction: what can fail without touching the kernel is done first (the
        // state file's temporary file is opened, so a read-only or missing run directory
        // fails here), then the kernel changes, and if any step after them fails they are
        // undone, so the kernel and the state file never disagree.
        let pending_state = state::prepare(&self.run_dir)
            .map_err(|e| runtime("writing state in", &self.run_dir, e))?;
        if let Some(missing) = interfaces.iter().find(|i| host::if_index(i).is_none()) {
            return Err(Failure::Runtime(format!(
                "interface `{missing}` does not exist"
            )));
        }
        // The running instance takes the policy in its inactive generation when it fits;
        // otherwise (first start, a restart adopting pinned links, maps too small) a new
        // instance is loaded and every link switched to it.
        let switched = match self.guard.as_mut() {
            Some(guard) if fits => Some(guard.switch(&lowered, deadline_ns).map_err(rt)?),
            _ => None,
        };
        let mut fresh = match switched {
            Some(_) => None,
            None => {
                let mut guard =
                    Guard::load(&lowered, self.kernel_log, Some(&self.pins)).map_err(rt)?;
                guard.zero_fresh(&lowered).map_err(rt)?;
                Some(guard)
            }
        };
        let attached =
            match self.attach_all(fresh.as_mut(), switched.is_some(), &interfaces, &cgroup) {
                Ok(attached) => attached,
                Err(e) => {
                    self.undo(switched.is_some());
                    return Err(e);
                }
            };
        let previous = self.state.as_ref();
        let before = previous.map(|s| s.policy_hash.clone());
        let generation = previous.map_or(0, |s| s.generation) + 1;
        let mode = checked.policy.mode;
        let summary = match &self.policy {
            Some(old) => policy::diff::summary(old, &checked.policy),
            None => "initial".to_owned(),
        };
        let state = State {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.started_at,
            policy: source.label(),
            policy_hash: checked.hash.clone(),
            generation,
            mode,
            interfaces: attached,
            cgroup: cgroup.clone(),
            pin_dir: self.pins.dir().to_path_buf(),
            rules: lowered.rules.clone(),
            port_slots: lowered.slots.clone(),
            metrics_addr: self.metrics_addr.map(|a| a.to_string()),
            pending_confirm: confirm.as_ref().map(|(secs, _)| state::PendingConfirm {
                deadline_unix: now_secs() as u64 + secs,
                rollback_hash: previous.map(|p| p.policy_hash.clone()).unwrap_or_default(),
            }),
        };
        if let Err(e) = pending_state.commit(&state) {
            self.undo(switched.is_some());
            return Err(runtime("writing state in", &self.run_dir, e));
        }
        // Committed. Interfaces the new policy no longer names are detached now, not before:
        // until here the old policy could still be restored on them.
        if let Some(prev) = previous {
            for gone in prev
                .interfaces
                .iter()
                .filter(|a| !interfaces.contains(&a.name))
            {
                self.pins.remove_link(&xdp_hook(&gone.name));
                self.pins.remove_link(&tc_hook(&gone.name));
            }
        }
        if !self.readers_opened
            && let Some(guard) = fresh.as_mut().or(self.guard.as_mut())
        {
            // The ring and log maps are pinned: the first instance's readers see every later
            // instance's records too.
            let logger = guard.take_logger();
            match guard.take_events() {
                Ok(ring) => {
                    self.readers = Some((logger, ring));
                    self.readers_opened = true;
                }
                Err(e) => error!(error = error_chain(&e), "opening the event ring failed"),
            }
        }
        self.decoder.set_rules(lowered.rules.clone());
        if let Some(guard) = fresh {
            // Every link runs the new programs now; the previous instance can go.
            self.guard = Some(guard);
        }
        self.state = Some(state);
        self.record(json!({
            "ts": now_secs(),
            "kind": "policy_applied",
            "how": how,
            "policy": source.label(),
            "hash_before": before,
            "hash_after": checked.hash,
            "generation": generation,
            "changes": summary,
        }));
        info!(
            target: "guard::event",
            kind = "policy_applied",
            how,
            policy = source.label(),
            hash_before = before.as_deref().map_or("-", |h| &h[..16]),
            hash_after = &checked.hash[..16],
            generation,
            changes = summary,
            switch = if switched.is_some() { "maps" } else { "programs" },
            map_writes = switched.unwrap_or(0),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "policy applied"
        );
        info!(
            mode = %mode,
            interfaces = interfaces.join(","),
            cgroup = %cgroup.display(),
            listen_enforced = checked.policy.listen.is_some(),
            rules = checked.policy.ingress.len() + checked.policy.egress.len(),
            port_classes = lowered.classes,
            "guard {}",
            if mode == Mode::Audit { "auditing: counting what the policy would drop, dropping nothing" } else { "enforcing" }
        );
        self.current = Some(Current { source, text });
        // Any change ends a pending commit-confirm (the kernel's deadline was cleared by the
        // switch); a change applied with --confirm-within starts a new one.
        self.pending = confirm.map(|(secs, rollback_to)| Pending {
            deadline: Instant::now() + Duration::from_secs(secs),
            rollback_to,
        });
        self.reloads.applied += 1;
        self.hold_links();
        self.policy = Some(checked.policy);
        self.audit_listeners();
        // Parsing a large policy leaves tens of MiB of freed heap behind; hand it back.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        Ok(())
    }

    /// Attaches `fresh` (a new instance) or keeps the running instance's links, on every
    /// interface and the cgroup. Returns what is attached.
    fn attach_all(
        &mut self,
        fresh: Option<&mut Guard>,
        switched: bool,
        interfaces: &[String],
        cgroup: &Path,
    ) -> Result<Vec<Attached>, Failure> {
        let rt = |e: crate::datapath::LoadError| Failure::Runtime(error_chain(&e));
        let previous = self.state.as_ref();
        if let Some(prev) = previous
            && prev.cgroup != cgroup
        {
            // The pins are named by program, not by cgroup: the old cgroup's go first.
            for name in crate::datapath::CGROUP_PROGRAMS {
                self.pins.remove_link(&cgroup_hook(name));
            }
        }
        let guard = match fresh {
            Some(guard) => guard,
            None => self
                .guard
                .as_mut()
                .expect("switched in the running instance"),
        };
        let mut attached = Vec::new();
        for iface in interfaces {
            let kept = previous.and_then(|s| s.interfaces.iter().find(|a| &a.name == iface));
            let xdp_mode = match kept {
                // Its links already run this instance's programs.
                Some(kept) if switched && self.pins.link(&xdp_hook(iface)).exists() => {
                    kept.xdp_mode
                }
                _ => match guard.attach(iface, Some(&self.pins)).map_err(rt)? {
                    Attach::New(mode) => mode,
                    Attach::Replaced => kept.map_or(AttachMode::Default, |a| a.xdp_mode),
                },
            };
            attached.push(Attached {
                name: iface.clone(),
                xdp_mode,
            });
        }
        if !switched || previous.is_none_or(|p| p.cgroup != cgroup) {
            guard.attach_cgroup(cgroup, Some(&self.pins)).map_err(rt)?;
        }
        Ok(attached)
    }

    /// Drift between the kernel and the recorded policy: the running policy text must hash to
    /// the state file's `policy_hash`; lowered again with the recorded rule and port slots,
    /// it must be what the kernel's active generation holds.
    fn verify(&self) -> Result<Vec<String>, String> {
        let (Some(guard), Some(current)) = (&self.guard, &self.current) else {
            return Err("no programs loaded".into());
        };
        let recorded = state::read(&self.run_dir).map_err(|e| e.to_string())?;
        let mut drift = Vec::new();
        if policy::hash(&current.text) != recorded.policy_hash {
            drift.push(format!(
                "the running policy (sha256 {}) is not the one the state file records (sha256 {})",
                policy::hash(&current.text),
                recorded.policy_hash
            ));
        }
        let checked = policy::check(&current.source.label(), &current.text)
            .map_err(|e| format!("the running policy no longer validates: {e}"))?;
        let lowered = policy::lower_after(&checked.policy, &recorded.rules, &recorded.port_slots);
        drift.extend(guard.verify(&lowered).map_err(|e| error_chain(&e))?);
        Ok(drift)
    }

    /// Puts the running policy back after a failed apply: flips the generation back, or
    /// switches the pinned links back to the running instance's programs.
    fn undo(&mut self, switched: bool) {
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        let undone = if switched {
            guard.revert().map_err(|e| error_chain(&e))
        } else {
            let mut result = Ok(());
            if let Some(prev) = &self.state {
                for a in &prev.interfaces {
                    if let Err(e) = guard.attach(&a.name, Some(&self.pins)) {
                        result = Err(error_chain(&e));
                    }
                }
                if let Err(e) = guard.attach_cgroup(&prev.cgroup, Some(&self.pins)) {
                    result = Err(error_chain(&e));
                }
            }
            result
        };
        match undone {
            Ok(()) => warn!("the failed policy change was undone: the previous policy is enforced"),
            Err(e) => error!(
                error = e,
                "undoing the failed policy change failed: run `guard doctor`"
            ),
        }
    }

    fn record(&self, event: serde_json::Value) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.push(event);
        }
    }

    fn try_apply(
        &mut self,
        source: PolicySource,
        text: String,
        how: &str,
        confirm_within: Option<u64>,
    ) -> Result<(), (String, Vec<String>)> {
        let checked = match policy::check(&source.label(), &text) {
            Ok(c) => c,
            Err(e) => {
                self.reloads.rejected += 1;
                self.record(json!({"ts": now_secs(), "kind": "policy_rejected", "how": how, "policy": source.label(), "errors": e.lines}));
                error!(target: "guard::event", kind = "policy_rejected", how, policy = source.label(), errors = e.lines.join("; "), "policy rejected; the running policy stays");
                return Err(("policy rejected".into(), e.lines));
            }
        };
        self.apply(source, text, checked, how, confirm_within).map_err(|e| {
            self.reloads.rejected += 1;
            error!(target: "guard::event", kind = "policy_rejected", how, error = %e, "applying the policy failed");
            (e.to_string(), Vec::new())
        })
    }

    fn reload_file(&mut self, how: &str) {
        let Some(path) = self.policy_file.clone() else {
            info!(
                how,
                "no policy file to reload (running the embedded default)"
            );
            return;
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                if self.current.as_ref().is_some_and(|c| c.text == text) {
                    return;
                }
                let _ = self.try_apply(PolicySource::File(path), text, how, None);
            }
            Err(e) => {
                error!(target: "guard::event", kind = "policy_rejected", how, policy = %path.display(), error = %e, "cannot read the policy file; the running policy stays")
            }
        }
    }

    fn rollback(&mut self) {
        if let Some(pending) = self.pending.take() {
            warn!("no `guard confirm` in time: rolling back");
            let Current { source, text } = pending.rollback_to;
            let _ = self.try_apply(source, text, "rollback", None);
        }
    }

    /// `Ok` when programs are loaded and every hook's link is pinned (attached), else why
    /// not.
    fn enforcement(&self) -> Result<(), String> {
        let st = self.state.as_ref().ok_or("no policy loaded")?;
        if self.guard.is_none() {
            return Err("no programs loaded".into());
        }
        for (hook, _) in hooks(st) {
            if !self.link_attached(&hook).0 {
                return Err(format!(
                    "the link of hook {hook} is detached (see {})",
                    self.pins.dir().display()
                ));
            }
        }
        Ok(())
    }

    /// Whether `hook`'s link is attached, judged by its pin or, with the pin gone (or
    /// replaced by another object), by the link the daemon holds; and whether it is pinned.
    fn link_attached(&self, hook: &str) -> (bool, bool) {
        let id = |fd: std::os::fd::BorrowedFd<'_>| {
            crate::datapath::sys::link_info(fd).ok().map(|i| i.id)
        };
        let pinned = crate::datapath::sys::obj_get(&self.pins.link(hook))
            .ok()
            .filter(|pin| match self.held.get(hook) {
                // Something else pinned at guard's path is not guard's link.
                Some(held) => id(pin.as_fd()) == id(held.as_fd()),
                None => true,
            });
        let fd = pinned
            .as_ref()
            .map(|f| f.as_fd())
            .or_else(|| self.held.get(hook).map(|f| f.as_fd()));
        let attached =
            fd.is_some_and(|fd| crate::datapath::sys::link_info(fd).is_ok_and(|i| i.attached()));
        (attached, pinned.is_some())
    }

    /// Opens and keeps every pinned link of the running policy: a link the daemon holds
    /// stays attached when its pin is removed behind its back.
    fn hold_links(&mut self) {
        let Some(st) = &self.state else {
            return;
        };
        self.held = hooks(st)
            .into_iter()
            .filter_map(|(hook, _)| {
                let fd = crate::datapath::sys::obj_get(&self.pins.link(&hook)).ok()?;
                Some((hook, fd))
            })
            .collect();
    }

    /// Puts guard's hooks back as the running policy has them: a link whose pin was removed
    /// is pinned again from the daemon's own reference; a link detached by other means
    /// (BPF_LINK_DETACH, a netlink or tc command) is attached anew. Each repair is an event
    /// and counted in `guard_links_repaired_total`.
    fn repair_links(&mut self) {
        let Some(st) = self.state.clone() else {
            return;
        };
        if self.guard.is_none() {
            return;
        }
        // (hook, interface, XDP rather than TC)
        let mut detached_ifaces = Vec::new();
        let mut detached_cgroup = Vec::new();
        for (hook, iface) in hooks(&st) {
            let (attached, pinned) = self.link_attached(&hook);
            if attached && !pinned {
                let Some(fd) = self.held.get(&hook) else {
                    continue;
                };
                // A foreign object pinned in its place goes first.
                self.pins.remove_link(&hook);
                match crate::datapath::sys::obj_pin(fd.as_fd(), &self.pins.link(&hook)) {
                    Ok(()) => self.repaired(&hook, "repinned", "its pin was removed: pinned again"),
                    Err(e) => error!(hook, error = %e, "re-pinning a link failed"),
                }
            } else if !attached {
                match iface {
                    Some(iface) => {
                        let xdp = hook == xdp_hook(&iface);
                        detached_ifaces.push((hook, iface, xdp));
                    }
                    None => detached_cgroup.push(hook),
                }
            }
        }
        let guard = self.guard.as_mut().expect("checked");
        let mut reattached = Vec::new();
        // One hook at a time: the other hook of the interface may be attached still.
        for (hook, iface, xdp) in detached_ifaces {
            self.pins.remove_link(&hook);
            let attached = if xdp {
                guard.attach_xdp(&iface, Some(&self.pins)).map(drop)
            } else {
                guard.attach_tc(&iface, Some(&self.pins))
            };
            match attached {
                Ok(()) => reattached.push(hook),
                Err(e) => error!(
                    iface,
                    error = error_chain(&e),
                    "re-attaching a detached interface failed"
                ),
            }
        }
        if !detached_cgroup.is_empty() {
            for hook in &detached_cgroup {
                self.pins.remove_link(hook);
            }
            match guard.attach_cgroup(&st.cgroup, Some(&self.pins)) {
                Ok(()) => reattached.extend(detached_cgroup),
                Err(e) => error!(
                    cgroup = %st.cgroup.display(),
                    error = error_chain(&e),
                    "re-attaching the cgroup hooks failed"
                ),
            }
        }
        for hook in reattached {
            self.repaired(
                &hook,
                "reattached",
                "guard's link was detached behind its back: attached again",
            );
        }
        self.hold_links();
    }

    fn repaired(&mut self, hook: &str, how: &'static str, message: &str) {
        match how {
            "repinned" => self.repairs.repinned += 1,
            _ => self.repairs.reattached += 1,
        }
        warn!(target: "guard::event", kind = "link_repaired", how, hook, "{message}");
        self.record(json!({"ts": now_secs(), "kind": "link_repaired", "how": how, "hook": hook}));
    }

    fn counters(&self) -> Option<crate::datapath::counters::Counters> {
        let (guard, st) = (self.guard.as_ref()?, self.state.as_ref()?);
        guard.counters(&st.rules, &st.port_slots).ok()
    }

    fn probe(&self, probe: Probe) -> ProbeReply {
        match probe {
            Probe::Metrics => {
                let counters = self.counters();
                let host = HostStats::read(self.health().service.as_deref());
                let programs = match (&self.guard, crate::linux::host::bpf_stats_enabled()) {
                    (Some(guard), true) => guard.program_stats(),
                    _ => Vec::new(),
                };
                let st = self.state.as_ref();
                let text = metrics::render(&metrics::Scrape {
                    counters: counters.as_ref(),
                    enforcing: self.enforcement().is_ok(),
                    audit: st.is_some_and(|s| s.mode == Mode::Audit),
                    generation: st.map_or(0, |s| s.generation),
                    reloads: &[
                        ("applied", self.reloads.applied),
                        ("rejected", self.reloads.rejected),
                    ],
                    host: &host,
                    programs: &programs,
                    anomalies: &self.detectors.firing(),
                    anomalies_fired: &self.detectors.fired(),
                    unexpected_listeners: self.unexpected.as_ref().map(BTreeSet::len),
                    max_rule_series: self.metrics_max_rules,
                    log_write_errors: logging::LOG_WRITE_ERRORS
                        .load(std::sync::atomic::Ordering::Relaxed),
                    links_repaired: &[
                        ("repinned", self.repairs.repinned),
                        ("reattached", self.repairs.reattached),
                    ],
                });
                (200, metrics::CONTENT_TYPE, text)
            }
            Probe::Health => {
                let mut verdict = Verdict::judge(
                    self.enforcement(),
                    &self.health(),
                    hoststats::listening,
                    self.detectors.firing(),
                );
                if let Some(why) = logging::file_failure() {
                    verdict = verdict.with_reason(format!(
                        "the log files are not being written (the audit trail has a gap): {why}"
                    ));
                }
                let body = serde_json::to_string(&verdict).expect("serialisable");
                (verdict.code(), "application/json", body)
            }
        }
    }

    /// The running policy's `[health]` (the defaults before the first policy).
    fn health(&self) -> std::borrow::Cow<'_, policy::model::HealthPolicy> {
        match &self.policy {
            Some(p) => std::borrow::Cow::Borrowed(&p.health),
            None => std::borrow::Cow::Owned(Default::default()),
        }
    }

    /// The listener audit (`guard audit`'s first part) against the running policy: counts
    /// unexpected listeners for `guard_unexpected_listeners` and reports each new one.
    fn audit_listeners(&mut self) {
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
    fn tick(&mut self, at_secs: f64) {
        self.repair_links();
        self.audit_listeners();
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

    fn handle(&mut self, request: Request) -> (Reply, bool) {
        match request {
            Request::Status {} => match &self.state {
                Some(st) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let reply = StatusReply::running(st, now, self.pending.is_some());
                    (Reply::data(&reply), false)
                }
                None => (Reply::error("no policy loaded"), false),
            },
            Request::Stats {} => match (&self.guard, &self.state) {
                (Some(guard), Some(st)) => match guard.counters(&st.rules, &st.port_slots) {
                    Ok(c) => (Reply::data(&StatsReply::new(st, c)), false),
                    Err(e) => (Reply::error(error_chain(&e)), false),
                },
                _ => (Reply::error("no policy loaded"), false),
            },
            Request::Apply {
                name,
                policy,
                confirm_within,
            } => {
                if let Some(secs) = confirm_within
                    && !(1..=MAX_CONFIRM_SECS).contains(&secs)
                {
                    // Checked before anything changes: the running policy stays.
                    return (
                        Reply::error(format!(
                            "confirm_within must be 1 to {MAX_CONFIRM_SECS} seconds, not {secs}"
                        )),
                        false,
                    );
                }
                if confirm_within.is_some() && self.pending.is_some() {
                    return (
                        Reply::error(
                            "a policy applied with --confirm-within is pending: `guard confirm` it, or let it roll back, before applying another with --confirm-within",
                        ),
                        false,
                    );
                }
                let source = PolicySource::File(PathBuf::from(&name));
                match self.try_apply(source, policy, "apply", confirm_within) {
                    Ok(()) => {
                        let st = self.state.as_ref().expect("applied");
                        let reply = ApplyReply {
                            policy_hash: st.policy_hash.clone(),
                            generation: st.generation,
                            confirm_within,
                        };
                        (Reply::data(&reply), false)
                    }
                    Err((message, errors)) => (Reply::invalid(message, errors), false),
                }
            }
            Request::Events { since } => {
                let (events, next) = self
                    .recent
                    .lock()
                    .map(|r| r.since(since))
                    .unwrap_or_default();
                (Reply::data(&EventsReply { events, next }), false)
            }
            Request::Confirm {} => match (&self.pending, self.guard.as_mut()) {
                (Some(_), Some(guard)) => {
                    if let Err(e) = guard.confirm() {
                        return (Reply::error(error_chain(&e)), false);
                    }
                    self.pending = None;
                    if let Some(st) = self.state.as_mut() {
                        st.pending_confirm = None;
                        if let Err(e) = state::write(&self.run_dir, st) {
                            warn!(error = %e, "confirmed, but the state file could not be updated");
                        }
                    }
                    info!(target: "guard::event", kind = "policy_confirmed", "policy confirmed");
                    (Reply::data(&ConfirmReply { confirmed: true }), false)
                }
                _ => (Reply::error("nothing to confirm"), false),
            },
            Request::Verify {} => match self.verify() {
                Ok(drift) => (Reply::data(&VerifyReply { drift }), false),
                Err(e) => (Reply::error(e), false),
            },
            Request::Policy {} => match (&self.current, &self.state) {
                (Some(current), Some(st)) => {
                    let reply = PolicyReply {
                        name: current.source.label(),
                        text: current.text.clone(),
                        hash: st.policy_hash.clone(),
                    };
                    (Reply::data(&reply), false)
                }
                _ => (Reply::error("no policy loaded"), false),
            },
            Request::Unload {} => match self.pins.remove_all() {
                Ok(()) => {
                    // The links the daemon holds go too: nothing stays attached.
                    self.held.clear();
                    state::remove(&self.run_dir);
                    info!("unloaded: programs detached, pins removed");
                    (Reply::data(&UnloadReply { unloaded: true }), true)
                }
                Err(e) => (
                    Reply::error(format!("removing {}: {e}", self.pins.dir().display())),
                    false,
                ),
            },
        }
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A previous daemon stopped while a policy applied with `--confirm-within` was pending: say
/// what became of it (the kernel fell back at the deadline; this daemon now applies its own
/// policy file either way).
fn report_orphaned_confirm(daemon: &Daemon, pc: &state::PendingConfirm) {
    let now = now_secs() as u64;
    let hash = daemon.state.as_ref().map_or("", |s| s.policy_hash.as_str());
    let passed = now >= pc.deadline_unix;
    daemon.record(json!({
        "ts": now_secs(),
        "kind": "confirm_expired",
        "unconfirmed_hash": hash,
        "rollback_hash": pc.rollback_hash,
        "deadline": pc.deadline_unix,
        "deadline_passed": passed,
    }));
    if passed {
        warn!(
            target: "guard::event",
            kind = "confirm_expired",
            unconfirmed = &hash[..hash.len().min(16)],
            restored = &pc.rollback_hash[..pc.rollback_hash.len().min(16)],
            deadline = pc.deadline_unix,
            "the previous daemon stopped with an unconfirmed policy; at its deadline the kernel went back to the previous policy"
        );
    } else {
        warn!(
            target: "guard::event",
            kind = "confirm_expired",
            unconfirmed = &hash[..hash.len().min(16)],
            deadline = pc.deadline_unix,
            "the previous daemon stopped with an unconfirmed policy before its deadline; it is replaced by this daemon's policy"
        );
    }
}

fn resolve_interfaces(specs: &[InterfaceSpec]) -> Result<Vec<String>, Failure> {
    let mut names = Vec::new();
    for spec in specs {
        match spec {
            InterfaceSpec::Name(name) => names.push(name.clone()),
            InterfaceSpec::DefaultRoute => {
                let found = host::default_route_interfaces()
                    .map_err(|e| Failure::Runtime(format!("reading the routing table: {e}")))?;
                if found.is_empty() {
                    return Err(Failure::Runtime(
                        "the policy names @default-route but this host has no default route; name the interfaces instead".into(),
                    ));
                }
                names.extend(found);
            }
        }
    }
    names.sort();
    names.dedup();
    // Every interface must exist before anything is loaded or switched.
    if let Some(missing) = names.iter().find(|n| host::if_index(n).is_none()) {
        return Err(Failure::Runtime(format!(
            "interface `{missing}` does not exist"
        )));
    }
    Ok(names)
}

/// Holds an exclusive lock on `RUN_DIR/lock` for the daemon's lifetime.
fn lock(run_dir: &Path) -> Result<fs::File, Failure> {
    let path = run_dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| runtime("opening", &path, e))?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = state::read(run_dir)
            .map(|s| s.pid.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(Failure::Runtime(format!(
            "another guard daemon is running with run dir {} (pid {pid})",
            run_dir.display()
        )));
    }
    Ok(file)
}

/// A request and where its reply goes. The reply may carry an acknowledgement the connection
/// sends once it has written the reply: the daemon waits for it before exiting after
/// `unload`, so the client reads its answer.
type Call = (
    Request,
    oneshot::Sender<(Reply, Option<oneshot::Sender<()>>)>,
);

fn serve(mut daemon: Daemon) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("starting the runtime: {e}")))?;
    runtime.block_on(async move {
        let sig = |kind| signal(kind).map_err(|e| Failure::Runtime(e.to_string()));
        let (mut term, mut int, mut hup) = (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
        // A bind() event (denied, or allowed in audit mode) asks for a listener audit soon
        // after: the socket listens only once listen() follows the bind.
        let (binds_tx, mut binds) = mpsc::channel::<()>(1);
        let mut audit_at: Option<Instant> = None;
        if let Some((logger, ring)) = daemon.readers.take() {
            if let Some(logger) = logger {
                // SAFETY: the logger owns its ring buffer's fd for as long as it lives; the
                // AsyncFd owns the logger.
                let fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
                    .map_err(|e| Failure::Runtime(format!("polling the kernel log: {e}")))?;
                tokio::spawn(pump_kernel_log(fd));
            }
            // SAFETY: as above, for the event ring buffer.
            let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| Failure::Runtime(format!("polling the event ring buffer: {e}")))?;
            tokio::spawn(pump_events(ring, daemon.decoder.clone(), daemon.recent.clone(), binds_tx));
        }
        let (probe_tx, mut probes) = mpsc::channel::<(Probe, oneshot::Sender<ProbeReply>)>(16);
        if let Some(listener) = daemon.metrics_listener.take() {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Failure::Runtime(format!("metrics listener: {e}")))?;
            tokio::spawn(serve_http(listener, probe_tx));
        }
        let clock = Instant::now();
        // The first tick is at once; later ones follow the running policy's interval, so a
        // change of `[health] interval_seconds` takes effect without waiting out the old one.
        let mut last_tick: Option<Instant> = None;
        let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
        let listener = control_socket(&daemon.run_dir)?;
        tokio::spawn(accept_loop(listener, calls_tx));
        let (watch_tx, mut watch) = mpsc::channel::<()>(4);
        if let Some(path) = daemon.policy_file.clone() {
            match watch_file(&path) {
                Ok(stream) => {
                    tokio::spawn(forward_changes(stream, path, watch_tx));
                }
                Err(e) => warn!(policy = %path.display(), error = %e, "cannot watch the policy file; reload with SIGHUP or guard apply"),
            }
        }
        loop {
            let deadline = daemon.pending.as_ref().map(|p| p.deadline);
            let next_tick = last_tick.map_or(clock, |t| {
                t + Duration::from_secs(daemon.health().interval_seconds.into())
            });
            tokio::select! {
                _ = term.recv() => { stop("SIGTERM", &daemon); break; }
                _ = int.recv() => { stop("SIGINT", &daemon); break; }
                _ = hup.recv() => daemon.reload_file("SIGHUP"),
                Some(()) = watch.recv() => daemon.reload_file("file watch"),
                Some((request, reply)) = calls.recv() => {
                    let (answer, exit) = daemon.handle(request);
                    if exit {
                        let (written, ack) = oneshot::channel();
                        if reply.send((answer, Some(written))).is_ok() {
                            let _ = tokio::time::timeout(Duration::from_secs(1), ack).await;
                        }
                        break;
                    }
                    let _ = reply.send((answer, None));
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => daemon.rollback(),
                Some((probe, reply)) = probes.recv() => { let _ = reply.send(daemon.probe(probe)); }
                Some(()) = binds.recv() => { audit_at.get_or_insert_with(|| Instant::now() + BIND_AUDIT_DELAY); }
                _ = tokio::time::sleep_until(audit_at.unwrap_or_else(Instant::now)), if audit_at.is_some() => {
                    audit_at = None;
                    daemon.audit_listeners();
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    daemon.tick(clock.elapsed().as_secs_f64());
                    last_tick = Some(Instant::now());
                }
            }
        }
        let _ = fs::remove_file(ctl::socket_path(&daemon.run_dir));
        Ok(())
    })
}

/// `/metrics` and `/health` over HTTP; each request is answered by the daemon loop.
async fn serve_http(
    listener: tokio::net::TcpListener,
    probes: mpsc::Sender<(Probe, oneshot::Sender<ProbeReply>)>,
) {
    use axum::{Router, routing::get};
    let ask = |probe: Probe| {
        let probes = probes.clone();
        move || async move {
            use axum::{
                http::{StatusCode, header},
                response::IntoResponse as _,
            };
            let (tx, rx) = oneshot::channel();
            let answer = match probes.send((probe, tx)).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            let (code, content_type, body) =
                answer.unwrap_or((503, "text/plain", "the daemon is stopping\n".into()));
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (code, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
    };
    let app = Router::new()
        .route("/metrics", get(ask(Probe::Metrics)))
        .route("/health", get(ask(Probe::Health)));
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the metrics server stopped");
    }
}

fn stop(signal: &str, daemon: &Daemon) {
    info!(
        signal,
        pins = %daemon.pins.dir().display(),
        "daemon stopping; guard's programs stay attached and enforcing the last policy (`guard unload` removes them)"
    );
}

fn control_socket(run_dir: &Path) -> Result<UnixListener, Failure> {
    let path = ctl::socket_path(run_dir);
    // We hold the run-dir lock: a socket file left here is a dead daemon's.
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| runtime("binding the control socket", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| runtime("chmod", &path, e))?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, calls.clone()));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one client: a request per line, a reply per request, until it hangs up. An
/// oversized message gets an error reply and closes the connection.
async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = match (&mut reader)
            .take(ctl::MAX_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (reply, written) = if n > ctl::MAX_MESSAGE {
            let _ = write
                .write_all(
                    &Reply::error(format!("message larger than {} bytes", ctl::MAX_MESSAGE))
                        .to_line(),
                )
                .await;
            return;
        } else if line.last() != Some(&b'\n') {
            (
                Reply::error("truncated message: expected one JSON object ending in a newline"),
                None,
            )
        } else {
            match ctl::parse_request(&line) {
                Err(message) => (Reply::error(message), None),
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send((request, tx)).await.is_err() {
                        return;
                    }
                    rx.await
                        .unwrap_or_else(|_| (Reply::error("the daemon is stopping"), None))
                }
            }
        };
        let sent = write.write_all(&reply.to_line()).await;
        if let Some(written) = written {
            let _ = written.send(());
        }
        if sent.is_err() {
            return;
        }
    }
}

/// An inotify stream on the policy file's directory: editors that write a new file and
/// rename it over the old one are seen too.
fn watch_file(path: &Path) -> std::io::Result<inotify::EventStream<[u8; 4096]>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let inotify = inotify::Inotify::init()?;
    inotify.watches().add(
        dir,
        inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::MOVED_TO | inotify::WatchMask::CREATE,
    )?;
    inotify.into_event_stream([0u8; 4096])
}

async fn forward_changes(
    mut stream: inotify::EventStream<[u8; 4096]>,
    path: PathBuf,
    changed: mpsc::Sender<()>,
) {
    let name: Option<OsString> = path.file_name().map(Into::into);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { continue };
        if event.name.as_deref() == name.as_deref() {
            // Let a burst of writes settle into one reload.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if changed.send(()).await.is_err() {
                return;
            }
        }
    }
}

/// Logs every event the kernel sends.
/// How long after a bind() event the listener audit runs.
const BIND_AUDIT_DELAY: Duration = Duration::from_millis(500);

async fn pump_events(
    mut fd: AsyncFd<RingBuf<MapData>>,
    decoder: Arc<Decoder>,
    recent: Arc<Mutex<Recent>>,
    binds: mpsc::Sender<()>,
) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            warn!("event reader stopped");
            return;
        };
        let ring = ready.get_inner_mut();
        while let Some(record) = ring.next() {
            match decoder.decode(&record) {
                Some(ev) => {
                    events::log(&ev);
                    if ev.kind == "bind_denied" {
                        // Full: an audit is already due.
                        let _ = binds.try_send(());
                    }
                    if let (Ok(mut recent), Ok(value)) = (recent.lock(), serde_json::to_value(&ev))
                    {
                        recent.push(value);
                    }
                }
                None => warn!(bytes = record.len(), "undecodable event record"),
            }
        }
        ready.clear_ready();
    }
}

/// Forwards kernel log records (aya-log) into `log`, which tracing picks up.
async fn pump_kernel_log(mut fd: AsyncFd<KernelLogger>) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            warn!("kernel log reader stopped");
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
