//! Attaching the programs: XDP and TC per interface, the cgroup programs, pinned links
//! kept and switched to a new load's programs (`BPF_LINK_UPDATE`), and detaching.

use super::*;

impl Guard {
    /// Attaches to `iface`: the XDP filter on ingress (native when the driver supports it,
    /// else generic (skb) XDP, e.g. virtio_net without spare TX queues) and the flow recorder
    /// on TC egress.
    ///
    /// With `pins`, the links are pinned so they outlive the daemon; when both are pinned
    /// already (a previous load or daemon), they are kept and switched to this load's
    /// programs atomically. Without `pins`, `self` owns the links: dropping it detaches them.
    pub fn attach(&mut self, iface: &str, pins: Option<&Pins>) -> Result<Attach, LoadError> {
        if crate::linux::host::if_index(iface).is_none() {
            return Err(LoadError::NoSuchInterface(iface.to_owned()));
        }
        if let Some(pins) = pins {
            let (xdp_pin, tc_pin) = (pins.link(&xdp_hook(iface)), pins.link(&tc_hook(iface)));
            if xdp_pin.exists() && tc_pin.exists() {
                // The recorder first, then the flags of the flows the old one recorded,
                // then the filter that reads them: no reply of a live flow finds its flag
                // unset.
                self.replace(&tc_pin, programs::TC_EGRESS)?;
                self.seed_flow_seen()?;
                self.replace(&xdp_pin, programs::XDP_INGRESS)?;
                return Ok(Attach::Replaced);
            }
            // A half-pinned interface (a crash between the two pins): start over.
            pins.remove_link(&xdp_hook(iface));
            pins.remove_link(&tc_hook(iface));
        }
        let mode = self.attach_xdp(iface, pins)?;
        self.attach_tc(iface, pins)?;
        Ok(Attach::New(mode))
    }

    /// A new XDP link on `iface` (native when the driver supports it, else generic), pinned
    /// with `pins`. The daemon also uses it alone, for an XDP link detached behind its back.
    pub fn attach_xdp(
        &mut self,
        iface: &str,
        pins: Option<&Pins>,
    ) -> Result<AttachMode, LoadError> {
        let attach_err = |source| LoadError::Attach {
            iface: iface.to_owned(),
            source,
        };
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, programs::XDP_INGRESS)?;
        let (xdp_link, mode) = match xdp.attach(iface, XdpMode::Default) {
            Ok(id) => (id, AttachMode::Default),
            Err(native) => {
                let id = xdp.attach(iface, XdpMode::Skb).map_err(attach_err)?;
                tracing::warn!(
                    iface,
                    error = error_chain(&native),
                    "native XDP unavailable; attached in generic (skb) mode, which costs more per packet"
                );
                (id, AttachMode::Generic)
            }
        };
        if let Some(pins) = pins {
            let link = xdp.take_link(xdp_link).map_err(attach_err)?;
            pin_link(link, &pins.link(&xdp_hook(iface)))?;
        } else {
            // Recorded now, so the XDP link is detached even if the TC attach fails.
            self.links.push(Link {
                iface: iface.to_owned(),
                xdp: xdp_link,
                tc: None,
            });
        }
        Ok(mode)
    }

    /// A new TC egress link on `iface`, pinned with `pins` (see [`Guard::attach_xdp`]).
    pub fn attach_tc(&mut self, iface: &str, pins: Option<&Pins>) -> Result<(), LoadError> {
        let attach_err = |source| LoadError::Attach {
            iface: iface.to_owned(),
            source,
        };
        // Kernels before 6.6 have no TCX and need a clsact qdisc for TC programs.
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !has_tcx && let Err(err) = tc::qdisc_add_clsact(iface) {
            tracing::debug!(iface, error = %err, "adding clsact (it may exist already)");
        }
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::TC_EGRESS)?;
        let tc_link = tc.attach(iface, TcAttachType::Egress).map_err(attach_err)?;
        if let Some(pins) = pins {
            let link = tc.take_link(tc_link).map_err(attach_err)?;
            pin_link(link, &pins.link(&tc_hook(iface)))?;
        } else if let Some(link) = self.links.iter_mut().rfind(|l| l.iface == iface) {
            link.tc = Some(tc_link);
        }
        Ok(())
    }

    /// Switches the pinned link at `pin` to this load's program `name`.
    pub(super) fn replace(&self, pin: &Path, name: &'static str) -> Result<(), LoadError> {
        let err = |source| LoadError::Replace {
            path: pin.display().to_string(),
            source,
        };
        let link = crate::datapath::sys::obj_get(pin).map_err(err)?;
        let prog = self
            .ebpf
            .program(name)
            .ok_or(LoadError::MissingProgram(name))?;
        let prog_fd = prog.fd().map_err(program_err(name))?;
        crate::datapath::sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(err)
    }

    /// Attaches the socket-address hooks (`[listen]` at bind, `[[egress]]` at connect and
    /// sendmsg) and sock_ops accounting to the cgroup v2 directory `cgroup`. With `pins`,
    /// as [`Guard::attach`]: pinned links are kept and switched to this load's programs (the
    /// caller unpins them first when the cgroup changes). The mode is `Single` (flags 0)
    /// because that is what `bpf_link_create` accepts for cgroups; cgroup links always sit
    /// alongside the other programs attached there (the kernel uses BPF_F_ALLOW_MULTI).
    pub fn attach_cgroup(&mut self, cgroup: &Path, pins: Option<&Pins>) -> Result<(), LoadError> {
        if !crate::linux::host::is_cgroup2(cgroup) {
            return Err(LoadError::NotCgroup2(cgroup.display().to_string()));
        }
        let dir = std::fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        let attach_err = |source| LoadError::AttachCgroup {
            path: cgroup.display().to_string(),
            source,
        };
        for name in SOCK_ADDR_PROGRAMS
            .into_iter()
            .chain([programs::SOCK_OPS, programs::SOCK_CREATE])
        {
            if let Some(pins) = pins {
                let pin = pins.link(&cgroup_hook(name));
                if pin.exists() {
                    self.replace(&pin, name)?;
                    continue;
                }
            }
            // Attach program `name` as type `$kind`, then pin the link (or keep its id in
            // `$own` when nothing is pinned). aya's three cgroup program types share no trait.
            macro_rules! attach {
                ($kind:ty, $own:expr) => {{
                    let hook: &mut $kind = program_mut(&mut self.ebpf, name)?;
                    let id = hook
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    match pins {
                        Some(pins) => pin_link(
                            hook.take_link(id).map_err(attach_err)?,
                            &pins.link(&cgroup_hook(name)),
                        )?,
                        None => self.cgroup_links.push($own(id)),
                    }
                }};
            }
            match name {
                programs::SOCK_CREATE => attach!(CgroupSock, CgroupLink::Sock),
                programs::SOCK_OPS => attach!(SockOps, CgroupLink::SockOps),
                _ => attach!(CgroupSockAddr, |id| CgroupLink::SockAddr(name, id)),
            }
        }
        Ok(())
    }

    /// Detaches from every interface and the cgroup.
    pub fn detach_all(&mut self) {
        for link in std::mem::take(&mut self.cgroup_links) {
            let result = match link {
                CgroupLink::SockAddr(name, id) => {
                    program_mut::<CgroupSockAddr>(&mut self.ebpf, name).map(|p| p.detach(id))
                }
                CgroupLink::SockOps(id) => {
                    program_mut::<SockOps>(&mut self.ebpf, programs::SOCK_OPS).map(|p| p.detach(id))
                }
                CgroupLink::Sock(id) => {
                    program_mut::<CgroupSock>(&mut self.ebpf, programs::SOCK_CREATE)
                        .map(|p| p.detach(id))
                }
            };
            if let Ok(Err(err)) = result {
                tracing::warn!(
                    error = error_chain(&err),
                    "detaching a cgroup program failed"
                );
            }
        }
        for link in std::mem::take(&mut self.links) {
            if let Ok(xdp) = program_mut::<Xdp>(&mut self.ebpf, programs::XDP_INGRESS)
                && let Err(err) = xdp.detach(link.xdp)
            {
                tracing::warn!(
                    iface = link.iface,
                    error = error_chain(&err),
                    "detaching XDP failed"
                );
            }
            if let Some(id) = link.tc
                && let Ok(tc) = program_mut::<SchedClassifier>(&mut self.ebpf, programs::TC_EGRESS)
                && let Err(err) = tc.detach(id)
            {
                tracing::warn!(
                    iface = link.iface,
                    error = error_chain(&err),
                    "detaching TC failed"
                );
            }
        }
    }
}
