//! `bpf-hooks` and `integrity`: guard's links attached and running guard's programs, other
//! programs on the hooks guard uses, the kernel's policy maps equal to the running policy
//! (drift), the policy file equal to what runs.

use super::*;

/// The id of the program a pinned link runs, and whether the link is still attached (XDP
/// links report their interface, 0 once detached).
pub(super) fn pinned_link(
    pins: &Pins,
    hook: &str,
) -> Result<crate::datapath::sys::LinkInfo, String> {
    let path = pins.link(hook);
    let fd =
        crate::datapath::sys::obj_get(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::datapath::sys::link_info(fd.as_fd()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Program names by id, for messages.
pub(super) fn program_names() -> BTreeMap<u32, String> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect()
}

/// The XDP programs `ip -d link` shows on `iface`.
pub(super) fn xdp_programs(iface: &str) -> Result<Vec<u32>, String> {
    let text = tool("ip", &["-j", "-d", "link", "show", "dev", iface])
        .ok_or("ip (iproute2) is not installed")??;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("ip -j output: {e}"))?;
    let xdp = &v[0]["xdp"];
    let mut ids: Vec<u32> = xdp["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["prog"]["id"].as_u64())
        .chain(xdp["prog"]["id"].as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// cgroup attach types guard uses, with its program on each (`bpf_attach_type`).
pub(super) const CGROUP_HOOKS: [(u32, &str); 8] = [
    (8, guard_common::programs::BIND4),
    (9, guard_common::programs::BIND6),
    (10, guard_common::programs::CONNECT4),
    (11, guard_common::programs::CONNECT6),
    (14, guard_common::programs::SENDMSG4),
    (15, guard_common::programs::SENDMSG6),
    (3, guard_common::programs::SOCK_OPS),
    (2, guard_common::programs::SOCK_CREATE),
];

/// Guard's links and the other programs on its hooks.
pub(super) fn hook_checks(st: &State, pins: &Pins) -> Vec<Finding> {
    let mut out = Vec::new();
    let names = program_names();
    let named = |id: u32| format!("id {id} ({})", names.get(&id).map_or("?", String::as_str));
    for a in &st.interfaces {
        let iface = &a.name;
        let hook = datapath::xdp_hook(iface);
        let own = match pinned_link(pins, &hook) {
            Ok(link)
                if link.ifindex == 0 && link.link_type == crate::datapath::sys::LINK_TYPE_XDP =>
            {
                out.push(finding(
                    "integrity",
                    Severity::Error,
                    format!("guard's XDP link on {iface} is detached: nothing of guard judges its traffic"),
                    "restart guard (it attaches again) and find out who detached it",
                ));
                None
            }
            Ok(link) => Some(link.prog_id),
            Err(e) => {
                out.push(finding(
                    "integrity",
                    Severity::Error,
                    format!("guard's XDP link on {iface} is not pinned: {e}"),
                    "restart guard; `guard unload` removes the pins on purpose, nothing else should",
                ));
                None
            }
        };
        match xdp_programs(iface) {
            Ok(ids) => {
                let others: Vec<String> = ids
                    .iter()
                    .filter(|&&id| Some(id) != own)
                    .map(|&id| named(id))
                    .collect();
                if !others.is_empty() {
                    out.push(finding(
                        "bpf-hooks",
                        Severity::Error,
                        format!("XDP on {iface} runs {}, which is not guard's", others.join(", ")),
                        "find its owner (bpftool net show); guard's verdicts do not apply while another program holds the hook",
                    ));
                } else if own.is_some_and(|id| ids.contains(&id)) {
                    out.push(finding(
                        "integrity",
                        Severity::Ok,
                        format!(
                            "XDP on {iface}: guard's program {}",
                            named(own.unwrap_or(0))
                        ),
                        "",
                    ));
                } else if own.is_some() {
                    out.push(finding(
                        "integrity",
                        Severity::Error,
                        format!("no XDP program on {iface}, though guard's link is pinned"),
                        "restart guard",
                    ));
                }
            }
            Err(e) => out.push(finding(
                "bpf-hooks",
                Severity::Warning,
                format!("XDP on {iface}: {e}"),
                "",
            )),
        }
        let tc_own = pinned_link(pins, &datapath::tc_hook(iface))
            .ok()
            .map(|l| l.prog_id);
        for (dir, attach) in [
            ("egress", aya::programs::TcAttachType::Egress),
            ("ingress", aya::programs::TcAttachType::Ingress),
        ] {
            if let Ok((_, progs)) = aya::programs::SchedClassifier::query_tcx(iface, attach) {
                let others: Vec<String> = progs
                    .iter()
                    .map(|p| p.id())
                    .filter(|&id| Some(id) != tc_own)
                    .map(named)
                    .collect();
                if !others.is_empty() {
                    out.push(finding(
                        "bpf-hooks",
                        Severity::Warning,
                        format!("tc {dir} on {iface} also runs {}", others.join(", ")),
                        "another program sees (and may drop or redirect) this traffic too; check it agrees with the policy",
                    ));
                }
            }
            if let Some(Ok(text)) = tool("tc", &["-j", "filter", "show", "dev", iface, dir])
                && text.contains("\"kind\":\"bpf\"")
            {
                out.push(finding(
                    "bpf-hooks",
                    Severity::Warning,
                    format!("tc {dir} on {iface} has a classic cls_bpf filter"),
                    "another program sees this traffic too: tc filter show dev IFACE",
                ));
            }
        }
    }
    let own: BTreeSet<u32> = CGROUP_HOOKS
        .iter()
        .filter_map(|(_, p)| pinned_link(pins, &datapath::cgroup_hook(p)).ok())
        .map(|l| l.prog_id)
        .collect();
    match fs::File::open(&st.cgroup) {
        Ok(dir) => {
            let mut foreign = BTreeMap::new();
            for (attach, program) in CGROUP_HOOKS {
                match crate::datapath::sys::prog_query(
                    dir.as_fd(),
                    attach,
                    crate::datapath::sys::QUERY_EFFECTIVE,
                ) {
                    Ok(ids) => {
                        if !ids.iter().any(|id| own.contains(id)) {
                            out.push(finding(
                                "integrity",
                                Severity::Error,
                                format!(
                                    "guard's {program} is not attached to {}",
                                    st.cgroup.display()
                                ),
                                "restart guard",
                            ));
                        }
                        let others: Vec<String> = ids
                            .iter()
                            .filter(|id| !own.contains(id))
                            .map(|&id| named(id))
                            .collect();
                        if !others.is_empty() {
                            foreign.insert(program, others);
                        }
                    }
                    Err(e) => out.push(finding(
                        "bpf-hooks",
                        Severity::Warning,
                        format!("cannot query {} for {program}: {e}", st.cgroup.display()),
                        "",
                    )),
                }
            }
            if foreign.is_empty() {
                out.push(finding(
                    "bpf-hooks",
                    Severity::Ok,
                    format!(
                        "only guard's programs on the cgroup hooks of {}",
                        st.cgroup.display()
                    ),
                    "",
                ));
            }
            for (program, others) in foreign {
                out.push(finding(
                    "bpf-hooks",
                    Severity::Warning,
                    format!(
                        "the {program} hook of {} also runs {}",
                        st.cgroup.display(),
                        others.join(", ")
                    ),
                    "another program judges these socket calls too (either may deny): bpftool cgroup tree",
                ));
            }
        }
        Err(e) => out.push(finding(
            "integrity",
            Severity::Error,
            format!("guard's cgroup {}: {e}", st.cgroup.display()),
            "restart guard",
        )),
    }
    out
}

/// Guard's integrity: daemon, drift, the policy file against what runs; then hooks and
/// permissions.
pub(super) fn guard_checks(places: &Places<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let st = crate::api::state::read(places.run_dir).ok();
    let reply = |request| {
        crate::api::ctl::call(places.run_dir, &request, std::time::Duration::from_secs(30)).ok()
    };
    match reply(crate::api::ctl::Request::Verify {}) {
        Some(r) if r.ok => {
            let drift: Vec<String> = r.data.as_ref().map_or(Vec::new(), |d| {
                d["drift"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            });
            if drift.is_empty() {
                out.push(finding(
                    "integrity",
                    Severity::Ok,
                    "the kernel's policy maps hold exactly the running policy",
                    "",
                ));
            }
            for d in drift {
                out.push(finding(
                    "integrity",
                    Severity::Error,
                    format!("drift: {d}"),
                    "something other than guard wrote guard's maps: find it (bpftool map), then restart the daemon: it loads fresh policy maps and switches its pinned links to them without a gap",
                ));
            }
        }
        Some(r) => out.push(finding(
            "integrity",
            Severity::Error,
            format!(
                "the daemon cannot verify its maps: {}",
                r.error.unwrap_or_default()
            ),
            "see the daemon's log",
        )),
        None => out.push(finding(
            "integrity",
            Severity::Warning,
            format!(
                "guard is not running (no answer on {})",
                crate::api::ctl::socket_path(places.run_dir).display()
            ),
            "start it: guard run (pinned programs, if any, keep enforcing the last policy meanwhile)",
        )),
    }
    if let Some(st) = &st {
        let path = Path::new(&st.policy);
        if path.is_file() {
            match fs::read_to_string(path) {
                Ok(text) if crate::policy::hash(&text) == st.policy_hash => out.push(finding(
                    "integrity",
                    Severity::Ok,
                    format!("{} is the running policy", path.display()),
                    "",
                )),
                Ok(_) => out.push(finding(
                    "integrity",
                    Severity::Warning,
                    format!("{} differs from the running policy", path.display()),
                    "the daemon rejected the edit, or it came from `guard apply`: see `guard events` for policy_rejected",
                )),
                Err(e) => out.push(finding(
                    "integrity",
                    Severity::Warning,
                    format!("{}: {e}", path.display()),
                    "",
                )),
            }
        }
        let pins = Pins::new(&st.pin_dir);
        out.extend(hook_checks(st, &pins));
    }
    // Permissions.
    let policy_path: Option<PathBuf> = places.policy_file.map(Path::to_path_buf).or_else(|| {
        st.as_ref()
            .map(|s| PathBuf::from(&s.policy))
            .filter(|p| p.is_file())
    });
    if let Some(p) = &policy_path {
        out.extend(check_path("policy file", p, false));
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            match fs::metadata(dir) {
                Ok(m)
                    if m.permissions().mode() & 0o002 != 0
                        && m.permissions().mode() & 0o1000 == 0 =>
                {
                    out.push(finding(
                        "permissions",
                        Severity::Error,
                        format!(
                            "the policy file's directory {} is writable by every user",
                            dir.display()
                        ),
                        "anyone can replace the policy: chmod o-w on the directory",
                    ))
                }
                _ => {}
            }
        }
    }
    if places.run_dir.exists() {
        out.extend(check_path("run directory", places.run_dir, true));
        let socket = crate::api::ctl::socket_path(places.run_dir);
        if socket.exists() {
            out.extend(check_path("control socket", &socket, true));
        }
    }
    let pin_dir = st.as_ref().map_or(places.pin_dir, |s| s.pin_dir.as_path());
    if pin_dir.is_dir() {
        match Pins::new(pin_dir).pinned_layout() {
            Some(layout) if !guard_common::maps::PIN_LAYOUTS_ADOPTED.contains(&layout) => out.push(finding(
                "integrity",
                Severity::Error,
                format!(
                    "the pins in {} have pin layout {layout}; this guard uses layout {}: it will not adopt them",
                    pin_dir.display(),
                    guard_common::maps::PIN_LAYOUT
                ),
                "keep running the guard that made them, or `guard unload` and start this one (enforcement stops in between)",
            )),
            _ => {}
        }
        let open = open_pins(pin_dir, 2);
        if open.is_empty() {
            out.push(finding(
                "permissions",
                Severity::Ok,
                format!("pins in {} are root-only", pin_dir.display()),
                "",
            ));
        } else {
            out.push(finding(
                "permissions",
                Severity::Error,
                format!("pins in {} open to other users: {}", pin_dir.display(), open.join(", ")),
                format!("whoever opens a pin can read or rewrite guard's maps or detach it: chmod go-rwx {}/*", pin_dir.display()),
            ));
        }
    }
    out
}
