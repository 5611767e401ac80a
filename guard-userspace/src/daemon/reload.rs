//! The policy lifecycle: every change (start, SIGHUP, file change, `guard apply`, rollback)
//! validated, lowered, written or loaded, attached, recorded, and undone when it fails; and
//! commit-confirm.

use super::*;

impl Daemon {
    pub(super) fn interfaces(&self, checked: &Checked) -> Result<Vec<String>, Failure> {
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

    pub(super) fn cgroup(&self, checked: &Checked) -> Result<PathBuf, Failure> {
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

    /// Makes `checked` the running policy (see the module documentation). `lint`, when its
    /// check left the lint for later, is run once the caller has its answer.
    pub(super) fn apply(
        &mut self,
        source: PolicySource,
        text: String,
        checked: Checked,
        lint: Option<policy::Lint>,
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
        let lowered =
            policy::lower_after_classes(&checked.policy, prev_rules, prev_slots, &self.class_ids);
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
            self.detach_dropped(prev, &interfaces);
        }
        self.open_readers(fresh.as_mut());
        self.decoder.set_rules(lowered.rules.clone());
        self.class_ids = lowered.class_ids.clone();
        if let Some(guard) = fresh {
            // Every link runs the new programs now; the previous instance can go.
            self.guard = Some(guard);
        }
        self.state = Some(state);
        let applied = Applied {
            how: how.to_owned(),
            policy: source.label(),
            hash_before: before,
            hash_after: checked.hash.clone(),
            generation,
            switch: if switched.is_some() {
                "maps"
            } else {
                "programs"
            },
            map_writes: switched.unwrap_or(0),
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
            previous: None,
            lint: None,
        };
        announce_mode(&checked, &interfaces, &cgroup, lowered.classes);
        self.current = Some(Current { source, text });
        // Any change ends a pending commit-confirm (the kernel's deadline was cleared by the
        // switch); a change applied with --confirm-within starts a new one.
        self.pending = confirm.map(|(secs, rollback_to)| Pending {
            deadline: Instant::now() + Duration::from_secs(secs),
            rollback_to,
        });
        self.reloads.applied += 1;
        self.notify_status(false);
        self.hold_links();
        let previous = self.policy.replace(checked.policy);
        // The audit-trail record (with its summary of what changed), the listener audit and
        // handing memory back wait until the caller has its answer ([`Daemon::after_apply`]):
        // `guard apply` returns once the kernel enforces.
        self.after_apply = Some(Applied {
            previous,
            lint,
            ..applied
        });
        Ok(())
    }

    /// What follows an applied policy once its caller has been answered: the `policy_applied`
    /// record with its summary of the changes (the diff of two large policies takes a while),
    /// the listener audit against the new policy, and the freed heap (tens of MiB after a
    /// large policy, the previous policy's among it) handed back to the system.
    pub(super) fn after_apply(&mut self) {
        let Some(mut applied) = self.after_apply.take() else {
            return;
        };
        // The lint's warnings (shadowed and overlapping rules), left by the check for now.
        if let (Some(lint), Some(policy), Some(current)) =
            (applied.lint.take(), &self.policy, &self.current)
        {
            for warning in lint.warnings(policy, &current.source.label(), &current.text) {
                warn!("{warning}");
            }
        }
        let summary = match (&applied.previous, &self.policy) {
            (Some(old), Some(new)) => policy::diff::summary(old, new),
            _ => "initial".to_owned(),
        };
        self.record(json!({
            "ts": now_secs(),
            "kind": "policy_applied",
            "how": applied.how,
            "policy": applied.policy,
            "hash_before": applied.hash_before,
            "hash_after": applied.hash_after,
            "generation": applied.generation,
            "changes": summary,
            "switch": applied.switch,
            "map_writes": applied.map_writes,
            "elapsed_ms": applied.elapsed_ms,
        }));
        info!(
            target: "guard::event",
            kind = "policy_applied",
            how = applied.how,
            policy = applied.policy,
            hash_before = applied.hash_before.as_deref().map_or("-", |h| &h[..16]),
            hash_after = &applied.hash_after[..16],
            generation = applied.generation,
            changes = summary,
            switch = applied.switch,
            map_writes = applied.map_writes,
            elapsed_ms = applied.elapsed_ms,
            "policy applied"
        );
        drop(applied);
        self.audit_listeners();
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }

    /// Unpins the links of interfaces `prev` had and the new policy does not name.
    fn detach_dropped(&self, prev: &State, interfaces: &[String]) {
        for gone in prev
            .interfaces
            .iter()
            .filter(|a| !interfaces.contains(&a.name))
        {
            self.pins.remove_link(&xdp_hook(&gone.name));
            self.pins.remove_link(&tc_hook(&gone.name));
        }
    }

    /// Opens the event ring and kernel log readers once, from the first instance: the ring
    /// and log maps are pinned, so its readers see every later instance's records too.
    fn open_readers(&mut self, fresh: Option<&mut Guard>) {
        if self.readers_opened {
            return;
        }
        let Some(guard) = fresh.or(self.guard.as_mut()) else {
            return;
        };
        let logger = guard.take_logger();
        match guard.take_events() {
            Ok(ring) => {
                self.readers = Some((logger, ring));
                self.readers_opened = true;
            }
            Err(e) => error!(error = error_chain(&e), "opening the event ring failed"),
        }
    }

    /// Attaches `fresh` (a new instance) or keeps the running instance's links, on every
    /// interface and the cgroup. Returns what is attached.
    pub(super) fn attach_all(
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
    pub(super) fn verify(&self) -> Result<Vec<String>, String> {
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
        // Lowered as the running policy was: its rules, ports and classes keep their numbers.
        let lowered = policy::lower_after_classes(
            &checked.policy,
            &recorded.rules,
            &recorded.port_slots,
            &self.class_ids,
        );
        drift.extend(guard.verify(&lowered).map_err(|e| error_chain(&e))?);
        Ok(drift)
    }

    /// Puts the running policy back after a failed apply: flips the generation back, or
    /// switches the pinned links back to the running instance's programs.
    pub(super) fn undo(&mut self, switched: bool) {
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

    pub(super) fn record(&self, event: serde_json::Value) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.push(event);
        }
    }

    pub(super) fn try_apply(
        &mut self,
        source: PolicySource,
        text: String,
        how: &str,
        confirm_within: Option<u64>,
    ) -> Result<(), (String, Vec<String>)> {
        // The lint waits until the caller has its answer ([`Daemon::after_apply`]).
        let (checked, lint) = match policy::check_before_lint(&source.label(), &text) {
            Ok(c) => c,
            Err(e) => {
                self.reloads.rejected += 1;
                self.record(json!({"ts": now_secs(), "kind": "policy_rejected", "how": how, "policy": source.label(), "errors": e.lines}));
                error!(target: "guard::event", kind = "policy_rejected", how, policy = source.label(), errors = e.lines.join("; "), "policy rejected; the running policy stays");
                return Err(("policy rejected".into(), e.lines));
            }
        };
        self.apply(source, text, checked, Some(lint), how, confirm_within).map_err(|e| {
            self.reloads.rejected += 1;
            error!(target: "guard::event", kind = "policy_rejected", how, error = %e, "applying the policy failed");
            (e.to_string(), Vec::new())
        })
    }

    pub(super) fn reload_file(&mut self, how: &str) {
        let Some(path) = self.policy_file.clone() else {
            info!(
                how,
                "no policy file to reload (running the embedded default)"
            );
            return;
        };
        let read = fs::read_to_string(&path);
        self.reloads.file_unreadable = read.is_err();
        match read {
            Ok(text) => {
                // The file watch sees every change in the file's directory: only a change of
                // the file itself (its resolved text) is applied. SIGHUP always reads it.
                let seen = policy::hash(&text);
                if how == "file watch" && self.file_seen.as_deref() == Some(seen.as_str()) {
                    return;
                }
                self.file_seen = Some(seen);
                if self.current.as_ref().is_some_and(|c| c.text == text) {
                    return;
                }
                let _ = self.try_apply(PolicySource::File(path), text, how, None);
            }
            Err(e) => {
                // A ConfigMap key removed, a file deleted and not put back: reported in the
                // log, the events and /metrics; the running policy stays.
                self.reloads.unreadable += 1;
                self.file_seen = None;
                self.record(json!({"ts": now_secs(), "kind": "policy_unreadable", "how": how, "policy": path.display().to_string(), "error": e.to_string()}));
                error!(target: "guard::event", kind = "policy_unreadable", how, policy = %path.display(), error = %e, "cannot read the policy file; the running policy stays")
            }
        }
    }

    pub(super) fn rollback(&mut self) {
        if let Some(pending) = self.pending.take() {
            warn!("no `guard confirm` in time: rolling back");
            let Current { source, text } = pending.rollback_to;
            let _ = self.try_apply(source, text, "rollback", None);
        }
    }
}

/// A previous daemon stopped while a policy applied with `--confirm-within` was pending: say
/// what became of it (the kernel fell back at the deadline; this daemon now applies its own
/// policy file either way).
pub(super) fn report_orphaned_confirm(daemon: &Daemon, pc: &state::PendingConfirm) {
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

pub(super) fn resolve_interfaces(specs: &[InterfaceSpec]) -> Result<Vec<String>, Failure> {
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

/// Says in the log what now runs: the mode, where, and what the policy holds.
fn announce_mode(checked: &Checked, interfaces: &[String], cgroup: &Path, port_classes: u32) {
    let mode = checked.policy.mode;
    info!(
        mode = %mode,
        interfaces = interfaces.join(","),
        cgroup = %cgroup.display(),
        listen_enforced = checked.policy.listen.is_some(),
        rules = checked.policy.ingress.len() + checked.policy.egress.len(),
        port_classes,
        "guard {}",
        if mode == Mode::Audit {
            "auditing: counting what the policy would drop, dropping nothing"
        } else {
            "enforcing"
        }
    );
}
