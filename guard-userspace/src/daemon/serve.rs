//! The run loop: one task owns the daemon and takes, in turn, control calls, signals, file
//! changes, ticks and the deadline of a commit-confirm; the HTTP server for /metrics and
//! /health.

use super::*;

pub(super) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Daemon {
    /// Tells systemd (Type=notify, when NOTIFY_SOCKET is set) what runs: READY=1 once, with
    /// a STATUS line naming the policy hash and mode; later calls update the STATUS.
    pub(super) fn notify_status(&self, ready: bool) {
        let status = match &self.state {
            Some(st) => format!(
                "{} policy {} (sha256 {}, generation {})",
                if st.mode == Mode::Audit {
                    "auditing"
                } else {
                    "enforcing"
                },
                st.policy,
                &st.policy_hash[..st.policy_hash.len().min(16)],
                st.generation
            ),
            None => "no policy".to_owned(),
        };
        let mut states = vec![sd_notify::NotifyState::Status(&status)];
        if ready {
            states.push(sd_notify::NotifyState::Ready);
        }
        if let Err(e) = sd_notify::notify(false, &states) {
            warn!(error = %e, "telling systemd the status failed");
        }
    }
}

pub(super) fn serve(mut daemon: Daemon) -> Result<(), Failure> {
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
        // Every hook enforces the first policy and the control socket answers: ready.
        daemon.notify_status(true);
        loop {
            let deadline = daemon.pending.as_ref().map(|p| p.deadline);
            let next_tick = last_tick.map_or(clock, |t| {
                t + Duration::from_secs(daemon.health().interval_seconds.into())
            });
            tokio::select! {
                _ = term.recv() => { stop("SIGTERM", &daemon); break; }
                _ = int.recv() => { stop("SIGINT", &daemon); break; }
                _ = hup.recv() => {
                    daemon.reload_file("SIGHUP");
                    daemon.after_apply();
                }
                Some(()) = watch.recv() => {
                    daemon.reload_file("file watch");
                    daemon.after_apply();
                }
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
                    // Let the connection's task write the answer first (one thread runs
                    // every task): the caller is not kept waiting for what follows.
                    tokio::task::yield_now().await;
                    daemon.after_apply();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    daemon.rollback();
                    daemon.after_apply();
                }
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
pub(super) async fn serve_http(
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

pub(super) fn stop(signal: &str, daemon: &Daemon) {
    info!(
        signal,
        pins = %daemon.pins.dir().display(),
        "daemon stopping; guard's programs stay attached and enforcing the last policy (`guard unload` removes them)"
    );
}
