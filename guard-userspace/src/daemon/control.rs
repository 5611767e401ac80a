//! The control socket (`RUN_DIR/guard.sock`): accepting connections, reading requests,
//! answering each with its typed reply.

use super::*;

impl Daemon {
    pub(super) fn counters(&self) -> Option<crate::datapath::counters::Counters> {
        let (guard, st) = (self.guard.as_ref()?, self.state.as_ref()?);
        guard.counters(&st.rules, &st.port_slots).ok()
    }

    pub(super) fn probe(&self, probe: Probe) -> ProbeReply {
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
                        ("unreadable", self.reloads.unreadable),
                    ],
                    policy_file_unreadable: self.reloads.file_unreadable,
                    host: &host,
                    programs: &programs,
                    anomalies: &self.detectors.firing(),
                    anomalies_fired: &self.detectors.fired(),
                    unexpected_listeners: self.unexpected.as_ref().map(BTreeSet::len),
                    max_rule_series: self.metrics_max_rules,
                    log_write_errors: logging::LOG_WRITE_ERRORS
                        .load(std::sync::atomic::Ordering::Relaxed),
                    policy: self
                        .state
                        .as_ref()
                        .map(|st| (st.policy_hash.as_str(), st.policy.as_str())),
                    contexts_exposed: &self
                        .contexts
                        .exposed
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<Vec<_>>(),
                    links_repaired: &[
                        ("repinned", self.repairs.repinned),
                        ("reattached", self.repairs.reattached),
                    ],
                });
                (200, metrics::CONTENT_TYPE, text)
            }
            Probe::Health => {
                // One source of listening sockets for /health and the audit: sock_diag.
                let listening = match crate::linux::sockets::sockets() {
                    Ok(all) => all,
                    Err(e) => {
                        warn!(error = %e, "reading the listening sockets for /health failed");
                        Vec::new()
                    }
                };
                let mut verdict = Verdict::judge(
                    self.enforcement(),
                    &self.health(),
                    |port, tcp| {
                        let proto = if tcp { Proto::Tcp } else { Proto::Udp };
                        listening.iter().any(|l| l.proto == proto && l.port == port)
                    },
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

    pub(super) fn handle(&mut self, request: Request) -> (Reply, bool) {
        match request {
            Request::Status {} => match &self.state {
                Some(st) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let reply =
                        StatusReply::running(st, now, self.pending.is_some(), self.enforcement());
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

pub(super) fn control_socket(run_dir: &Path) -> Result<UnixListener, Failure> {
    let path = ctl::socket_path(run_dir);
    // We hold the run-dir lock: a socket file left here is a dead daemon's.
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| runtime("binding the control socket", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| runtime("chmod", &path, e))?;
    Ok(listener)
}

pub(super) async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>) {
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
pub(super) async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
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
