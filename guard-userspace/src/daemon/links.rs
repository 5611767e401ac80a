//! The daemon holds its links: it checks every hook on each tick and puts back a link whose
//! pin was removed or that was detached behind its back.

use super::*;

impl Daemon {
    /// `Ok` when programs are loaded and every hook's link is pinned (attached), else why
    /// not.
    pub(super) fn enforcement(&self) -> Result<(), String> {
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
    pub(super) fn link_attached(&self, hook: &str) -> (bool, bool) {
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
    pub(super) fn hold_links(&mut self) {
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
    pub(super) fn repair_links(&mut self) {
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

    pub(super) fn repaired(&mut self, hook: &str, how: &'static str, message: &str) {
        match how {
            "repinned" => self.repairs.repinned += 1,
            _ => self.repairs.reattached += 1,
        }
        warn!(target: "guard::event", kind = "link_repaired", how, hook, "{message}");
        self.record(json!({"ts": now_secs(), "kind": "link_repaired", "how": how, "hook": hook}));
    }
}

/// Hooks the running policy attaches to: the link pin name, and the interface for XDP and
/// TC hooks (`None` for the cgroup's).
pub(super) fn hooks(st: &State) -> Vec<(String, Option<String>)> {
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
