//! `guard run`: load the policy, attach, pin, serve until SIGINT/SIGTERM, then detach.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    bpf::{Guard, KernelLogger, error_chain},
    cli::{Failure, RunArgs},
    events::{self, Decoder},
    host, logging,
    policy::{self, PolicySource, model::InterfaceSpec},
    state::{self, Attached, State},
};

pub fn run(pin_dir: &Path, run_dir: &Path, args: &RunArgs) -> Result<(), Failure> {
    logging::init(args.log_format);
    let (source, text) =
        policy::resolve(args.policy.as_deref(), &args.system_policy).map_err(|e| {
            let path = args.policy.as_deref().unwrap_or(&args.system_policy);
            Failure::Runtime(format!("cannot read policy {}: {e}", path.display()))
        })?;
    let checked =
        policy::check(&source.label(), &text).map_err(|e| Failure::Invalid(e.to_string()))?;
    for warning in &checked.warnings {
        warn!("{warning}");
    }
    if source == PolicySource::Embedded {
        info!(
            "no {} found: running the embedded default policy in audit mode (nothing is dropped)",
            args.system_policy.display()
        );
    }
    let interfaces = if args.interfaces.is_empty() {
        resolve_interfaces(&checked.policy.interfaces)?
    } else {
        let mut specs = Vec::new();
        for name in &args.interfaces {
            if let Some(problem) = policy::validate::interface_name_problem(name) {
                return Err(Failure::Runtime(format!(
                    "invalid --interface `{name}`: {problem}"
                )));
            }
            specs.push(InterfaceSpec::Name(name.clone()));
        }
        resolve_interfaces(&specs)?
    };
    let cgroup = match args
        .cgroup
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
    let lowered = policy::lower(&checked.policy);

    state::create_run_dir(run_dir).map_err(|e| runtime("creating", run_dir, e))?;
    let _lock = lock(run_dir)?;

    let mut guard =
        Guard::load(&lowered, args.kernel_log).map_err(|e| Failure::Runtime(error_chain(&e)))?;
    let mut attached = Vec::new();
    for iface in &interfaces {
        // On error `guard` is dropped, which detaches what was attached.
        let mode = guard
            .attach(iface)
            .map_err(|e| Failure::Runtime(error_chain(&e)))?;
        attached.push(Attached {
            name: iface.clone(),
            xdp_mode: mode,
        });
    }
    // On error `guard` is dropped, which detaches everything attached so far.
    guard
        .attach_cgroup(&cgroup)
        .map_err(|e| Failure::Runtime(error_chain(&e)))?;
    if pin_dir.exists() {
        // We hold the lock, so these are a dead daemon's pins.
        fs::remove_dir_all(pin_dir).map_err(|e| runtime("removing stale pins in", pin_dir, e))?;
    }
    host::prepare_pin_dir(pin_dir).map_err(|e| runtime("preparing", pin_dir, e))?;
    guard
        .pin_maps(pin_dir)
        .map_err(|e| Failure::Runtime(error_chain(&e)))?;

    let mode = checked.policy.mode.to_string();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = State {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at,
        policy: source.label(),
        policy_hash: checked.hash.clone(),
        mode: mode.clone(),
        interfaces: attached,
        cgroup: cgroup.clone(),
        pin_dir: pin_dir.to_path_buf(),
        rules: lowered.rules.clone(),
        port_slots: lowered.slots.clone(),
    };
    state::write(run_dir, &state).map_err(|e| runtime("writing state in", run_dir, e))?;
    info!(
        mode,
        interfaces = interfaces.join(","),
        cgroup = %cgroup.display(),
        listen_enforced = checked.policy.listen.is_some(),
        policy = source.label(),
        policy_hash = &checked.hash[..16],
        rules = checked.policy.ingress.len(),
        port_classes = lowered.classes,
        "guard {}",
        if mode == "audit" {
            "auditing: counting what the policy would drop, dropping nothing"
        } else {
            "enforcing"
        }
    );

    let logger = guard.take_logger();
    let events = guard
        .take_events()
        .map_err(|e| Failure::Runtime(error_chain(&e)))?;
    let result = serve(logger, events, Decoder::new(lowered.rules.clone()));
    guard.detach_all();
    drop(guard);
    let _ = fs::remove_dir_all(pin_dir);
    state::remove(run_dir);
    info!("detached from {}; exiting", interfaces.join(","));
    result
}

fn runtime(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::Runtime(format!("{what} {}: {e}", path.display()))
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
    // Every interface must exist before anything is attached.
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

fn serve(
    logger: Option<KernelLogger>,
    events: RingBuf<MapData>,
    decoder: Decoder,
) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("starting the runtime: {e}")))?;
    runtime.block_on(async {
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Failure::Runtime(e.to_string()))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| Failure::Runtime(e.to_string()))?;
        if let Some(logger) = logger {
            // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for
            // as long as the logger lives, and the AsyncFd owns the logger.
            let fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
                .map_err(|e| Failure::Runtime(format!("polling the kernel log: {e}")))?;
            tokio::spawn(pump_kernel_log(fd));
        }
        // SAFETY: the ring buffer owns its fd for as long as it lives; the AsyncFd owns it.
        let events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(|e| Failure::Runtime(format!("polling the event ring buffer: {e}")))?;
        tokio::spawn(pump_events(events, decoder));
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        Ok(())
    })
}

/// Logs every deny event the kernel sends.
async fn pump_events(mut fd: AsyncFd<RingBuf<MapData>>, decoder: Decoder) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            warn!("event reader stopped");
            return;
        };
        let ring = ready.get_inner_mut();
        while let Some(record) = ring.next() {
            match decoder.decode(&record) {
                Some(ev) => events::log(&ev),
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
