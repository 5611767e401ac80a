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

mod contexts;
mod control;
mod links;
mod listeners;
mod lock;
mod readers;
mod reload;
mod serve;
mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    net::IpAddr,
    net::SocketAddr,
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
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

use self::{control::*, lock::*, readers::*, reload::*, serve::*, watch::*};

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

/// The capabilities `guard run` needs, and why. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON (kernels before 5.8 have only it). Listing other processes' sockets
/// (CAP_SYS_PTRACE) and probing from another network namespace (CAP_SYS_ADMIN) are
/// optional: without them those features say so and the daemon runs on.
pub const NEEDED_CAPABILITIES: [(&str, &str); 3] = [
    ("CAP_BPF", "load guard's programs and create its maps"),
    ("CAP_NET_ADMIN", "attach them to interfaces and cgroups"),
    (
        "CAP_PERFMON",
        "let the programs read the clock and the process for events",
    ),
];

/// Fails, before anything changes, when the process lacks a capability it needs, naming it.
fn check_capabilities() -> Result<(), Failure> {
    use rustix::thread::CapabilitySet;
    let Ok(sets) = rustix::thread::capabilities(None) else {
        return Ok(());
    };
    let have = sets.effective;
    let admin = have.contains(CapabilitySet::SYS_ADMIN);
    let missing: Vec<String> = [
        (CapabilitySet::BPF, admin),
        (CapabilitySet::NET_ADMIN, false),
        (CapabilitySet::PERFMON, admin),
    ]
    .into_iter()
    .zip(NEEDED_CAPABILITIES)
    .filter(|((cap, implied), _)| !have.contains(*cap) && !implied)
    .map(|(_, (name, why))| format!("{name} (to {why})"))
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(format!(
            "guard run lacks {}; run it as root with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON in its capability bounding set (the systemd unit's CapabilityBoundingSet)",
            missing.join(", ")
        )))
    }
}

pub fn run(pin_dir: &Path, run_dir: &Path, args: &Options) -> Result<(), Failure> {
    let log_files = args.log_dir.as_ref().map(|dir| logging::LogFiles {
        dir: dir.clone(),
        rotation: args.log_rotation,
        keep: usize::from(args.log_keep),
    });
    logging::init(args.log_format, log_files.as_ref()).map_err(Failure::Runtime)?;
    check_capabilities()?;
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
        file_seen: match &source {
            PolicySource::File(_) => Some(policy::hash(&text)),
            PolicySource::Embedded => None,
        },
        after_apply: None,
        class_ids: policy::ClassIds::new(),
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
        contexts: Default::default(),
    };
    if let Some(pc) = daemon
        .state
        .as_ref()
        .and_then(|s| s.pending_confirm.clone())
    {
        report_orphaned_confirm(&daemon, &pc);
    }
    if let Err(err) = daemon.apply(source, text, checked, None, "start", None) {
        if !adopting {
            // Nothing may stay attached after a failed first start.
            let _ = daemon.pins.remove_all();
            state::remove(run_dir);
        }
        return Err(err);
    }
    match daemon.pins.mark_layout() {
        Ok(None) => {}
        Ok(Some(from)) => info!(
            pins = %pin_dir.display(),
            from,
            to = guard_common::maps::PIN_LAYOUT,
            "adopted pins of an earlier layout and marked them as this guard's"
        ),
        // Enforcement and counting are right either way; the next start tries again.
        Err(e) => error!(
            pins = %pin_dir.display(),
            error = %e,
            "marking the adopted pins with this guard's layout failed: a guard of their older layout would still take them"
        ),
    }
    daemon.after_apply();
    serve(daemon)
}

/// An applied policy's `policy_applied` record, written once the caller has its answer.
struct Applied {
    how: String,
    policy: String,
    hash_before: Option<String>,
    hash_after: String,
    generation: u64,
    switch: &'static str,
    map_writes: usize,
    elapsed_ms: f64,
    /// The policy it replaced, for the summary of what changed.
    previous: Option<policy::model::Policy>,
    /// The lint of the new policy, when its check left it for after the answer.
    lint: Option<policy::Lint>,
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

/// Policy changes since the daemon started, by result.
#[derive(Debug, Default)]
struct Reloads {
    applied: u64,
    rejected: u64,
    /// Reads of the policy file that failed (gone, unreadable): the running policy stays.
    unreadable: u64,
    /// Whether the last read of the policy file failed.
    file_unreadable: bool,
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
    /// The sha256 of the policy file's text when it was last read: the file watch applies
    /// the file only when this changes (a change in its directory is not one of the file).
    file_seen: Option<String>,
    /// The running policy's port classes by rule set: the next policy keeps their ids.
    class_ids: policy::ClassIds,
    /// A policy was applied and [`Daemon::after_apply`] has not run yet: what it records.
    after_apply: Option<Applied>,
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
    /// The `[contexts]` probe.
    contexts: contexts::ContextProbe,
}

fn runtime(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::Runtime(format!("{what} {}: {e}", path.display()))
}

impl Daemon {}

/// A request and where its reply goes. The reply may carry an acknowledgement the connection
/// sends once it has written the reply: the daemon waits for it before exiting after
/// `unload`, so the client reads its answer.
type Call = (
    Request,
    oneshot::Sender<(Reply, Option<oneshot::Sender<()>>)>,
);
