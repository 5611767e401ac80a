//! `guard doctor`: host checks, each finding with a severity and a fix hint.
//!
//! - `routes`: no default route, several defaults, routes via interfaces guard does not
//!   filter;
//! - `sysctl`: forwarding, reverse-path filtering, redirects, source routing, SYN cookies,
//!   martian logging against recommended values;
//! - `firewall`: nftables and iptables rules present, and rules that drop ports the policy
//!   allows (a packet must pass both layers);
//! - `bpf-hooks`: other XDP, tc or cgroup programs on the hooks guard uses;
//! - `integrity`: guard's links attached and running guard's programs, the kernel's policy
//!   maps equal to the running policy (drift), the policy file equal to what runs;
//! - `permissions`: policy file, run directory and control socket, pins;
//! - `kernel`: version, BPF features, unprivileged BPF, JIT.
//!
//! The parsers and judgements are pure functions of what was read (unit-tested); [`run`]
//! reads the host. With a network namespace, the network checks (routes, sysctls,
//! firewall) look inside it; the rest is host-wide.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::{
        fd::AsFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use crate::{
    api::state::State,
    datapath::{self, Pins},
    inspect::audit::{self, Reach},
    policy::model::{InterfaceSpec, Policy, PortRange, Proto, RuleAction},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
    /// What to do about it (empty for `ok`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

fn finding(
    check: &'static str,
    severity: Severity,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Finding {
    Finding {
        check,
        severity,
        message: message.into(),
        hint: hint.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Routes

fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.addr().is_link_local(),
        IpNet::V6(n) => (n.addr().segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Judges the routes. `filtered`: the interfaces guard's XDP program judges (`None`: not
/// known, the interface check is skipped).
pub fn check_routes(
    routes: &[crate::linux::host::Route],
    filtered: Option<&[String]>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let defaults: Vec<&crate::linux::host::Route> = routes
            .iter()
            .filter(|r| r.dest.prefix_len() == 0 && matches!(r.dest, IpNet::V4(_)) == v4)
            .collect();
        let list = || {
            defaults
                .iter()
                .map(|r| format!("{} (metric {})", r.iface, r.metric))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match defaults.len() {
            0 if v4 => out.push(finding(
                "routes",
                Severity::Warning,
                "no IPv4 default route",
                "expected on an isolated host; otherwise add one (ip route add default via GATEWAY)",
            )),
            0 => out.push(finding("routes", Severity::Info, "no IPv6 default route", "")),
            1 => out.push(finding(
                "routes",
                Severity::Ok,
                format!("one {family} default route: via {}", list()),
                "",
            )),
            n => {
                let metrics: BTreeSet<u32> = defaults.iter().map(|r| r.metric).collect();
                let tie = if metrics.len() < n {
                    "; some share a metric, so which one carries traffic is not defined"
                } else {
                    ""
                };
                out.push(finding(
                    "routes",
                    Severity::Warning,
                    format!("{n} {family} default routes: via {}{tie}", list()),
                    "keep one default route (or distinct metrics on purpose); replies leaving by another interface than requests came in break with rp_filter=1",
                ));
            }
        }
    }
    if let Some(filtered) = filtered {
        let mut unfiltered: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for r in routes {
            if is_link_local(&r.dest) || filtered.iter().any(|f| f == &r.iface) {
                continue;
            }
            unfiltered
                .entry(&r.iface)
                .or_default()
                .push(r.dest.to_string());
        }
        if unfiltered.is_empty() {
            out.push(finding(
                "routes",
                Severity::Ok,
                format!(
                    "every route is via an interface guard filters ({})",
                    filtered.join(", ")
                ),
                "",
            ));
        }
        for (iface, dests) in unfiltered {
            out.push(finding(
                "routes",
                Severity::Warning,
                format!(
                    "routes via {iface} ({}), which guard does not filter (it filters {})",
                    dests.join(", "),
                    if filtered.is_empty() { "none".to_owned() } else { filtered.join(", ") }
                ),
                format!("traffic arriving on {iface} is not judged by guard: add it to `interfaces`, or confirm it is internal"),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Sysctls

/// A network sysctl and the value recommended for a server that is not a router.
struct Recommended {
    key: &'static str,
    want: &'static [&'static str],
    severity: Severity,
    why: &'static str,
}

const SYSCTLS: &[Recommended] = &[
    Recommended {
        key: "net/ipv4/ip_forward",
        want: &["0"],
        severity: Severity::Warning,
        why: "the host forwards IPv4 packets between interfaces (a router): set 0 unless it is one",
    },
    Recommended {
        key: "net/ipv6/conf/all/forwarding",
        want: &["0"],
        severity: Severity::Warning,
        why: "the host forwards IPv6 packets between interfaces: set 0 unless it is a router",
    },
    Recommended {
        key: "net/ipv4/conf/all/accept_redirects",
        want: &["0"],
        severity: Severity::Warning,
        why: "ICMP redirects let a neighbour rewrite the routing table: set 0",
    },
    Recommended {
        key: "net/ipv4/conf/default/accept_redirects",
        want: &["0"],
        severity: Severity::Warning,
        why: "new interfaces accept ICMP redirects: set 0",
    },
    Recommended {
        key: "net/ipv6/conf/all/accept_redirects",
        want: &["0"],
        severity: Severity::Warning,
        why: "ICMPv6 redirects let a neighbour rewrite the routing table: set 0",
    },
    Recommended {
        key: "net/ipv4/conf/all/accept_source_route",
        want: &["0"],
        severity: Severity::Warning,
        why: "source-routed packets choose their own path through the host: set 0",
    },
    Recommended {
        key: "net/ipv6/conf/all/accept_source_route",
        want: &["0", "-1"],
        severity: Severity::Warning,
        why: "source-routed IPv6 packets choose their own path: set 0 (or -1)",
    },
    Recommended {
        key: "net/ipv4/tcp_syncookies",
        want: &["1"],
        severity: Severity::Warning,
        why: "without SYN cookies a SYN flood fills the listen queues: set 1",
    },
    Recommended {
        key: "net/ipv4/conf/all/log_martians",
        want: &["1"],
        severity: Severity::Info,
        why: "packets with impossible source addresses are dropped silently: set 1 to log them",
    },
];

/// Judges the network sysctls; `read("net/ipv4/ip_forward")` gives a value (or `None`), and
/// `ifaces` are the interfaces whose effective `rp_filter` is checked.
pub fn check_sysctls(read: impl Fn(&str) -> Option<String>, ifaces: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in SYSCTLS {
        let name = r.key.replace('/', ".");
        match read(r.key) {
            Some(v) if r.want.contains(&v.as_str()) => {
                out.push(finding("sysctl", Severity::Ok, format!("{name} = {v}"), ""))
            }
            Some(v) => out.push(finding(
                "sysctl",
                r.severity,
                format!("{name} = {v}, recommended {}", r.want[0]),
                format!(
                    "{}: sysctl -w {name}={} (and persist it in /etc/sysctl.d/)",
                    r.why, r.want[0]
                ),
            )),
            None => out.push(finding(
                "sysctl",
                Severity::Info,
                format!("{name} cannot be read"),
                "",
            )),
        }
    }
    // Reverse-path filtering: the kernel uses the larger of `all` and the interface's value.
    let all: u8 = read("net/ipv4/conf/all/rp_filter")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let loose: Vec<&String> = ifaces
        .iter()
        .filter(|i| {
            let own: u8 = read(&format!("net/ipv4/conf/{i}/rp_filter"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            all.max(own) == 0
        })
        .collect();
    if loose.is_empty() {
        out.push(finding(
            "sysctl",
            Severity::Ok,
            format!("reverse-path filtering on for every interface (all = {all})"),
            "",
        ));
    } else {
        out.push(finding(
            "sysctl",
            Severity::Warning,
            format!(
                "no reverse-path filtering on {}",
                loose.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "spoofed source addresses are accepted: sysctl -w net.ipv4.conf.all.rp_filter=1 (2 where routing is asymmetric)",
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Other firewall layers

/// A rule of another firewall layer that drops or rejects inbound traffic to some ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallDrop {
    /// Where it is, e.g. `nftables inet filter input` or `iptables filter INPUT`.
    pub place: String,
    pub proto: Proto,
    pub ports: PortRange,
}

/// What one firewall layer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub rules: usize,
    pub drops: Vec<FirewallDrop>,
    /// Inbound base chains whose policy is drop.
    pub dropping_chains: Vec<String>,
}

fn protos(name: &str) -> Vec<Proto> {
    match name {
        "tcp" => vec![Proto::Tcp],
        "udp" => vec![Proto::Udp],
        "th" => vec![Proto::Tcp, Proto::Udp],
        _ => Vec::new(),
    }
}

fn nft_ports(v: &Value) -> Vec<PortRange> {
    let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    if let Some(p) = port(v) {
        return vec![PortRange::single(p)];
    }
    if let Some([a, b]) = v["range"].as_array().map(Vec::as_slice)
        && let (Some(a), Some(b)) = (port(a), port(b))
    {
        return vec![PortRange { first: a, last: b }];
    }
    if let Some(set) = v["set"].as_array() {
        return set.iter().flat_map(nft_ports).collect();
    }
    Vec::new()
}

/// Parses `nft -j list ruleset`: rules of inbound base chains (hook `input` or `prerouting`)
/// that match a TCP/UDP destination port and drop or reject.
pub fn parse_nft(json: &str) -> Result<Layer, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    let items = v["nftables"]
        .as_array()
        .ok_or("nft -j output: no `nftables` array")?;
    let mut inbound = BTreeSet::new();
    let mut layer = Layer::default();
    for item in items {
        let c = &item["chain"];
        if c.is_object() && matches!(c["hook"].as_str(), Some("input" | "prerouting")) {
            let id = format!(
                "{} {} {}",
                c["family"].as_str().unwrap_or("?"),
                c["table"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            );
            if c["policy"] == "drop" {
                layer.dropping_chains.push(format!("nftables {id}"));
            }
            inbound.insert(id);
        }
    }
    for item in items {
        let r = &item["rule"];
        if !r.is_object() {
            continue;
        }
        layer.rules += 1;
        let id = format!(
            "{} {} {}",
            r["family"].as_str().unwrap_or("?"),
            r["table"].as_str().unwrap_or("?"),
            r["chain"].as_str().unwrap_or("?")
        );
        let Some(expr) = r["expr"].as_array() else {
            continue;
        };
        let drops = expr
            .iter()
            .any(|e| e.get("drop").is_some() || e.get("reject").is_some());
        if !inbound.contains(&id) || !drops {
            continue;
        }
        for e in expr {
            let m = &e["match"];
            let payload = &m["left"]["payload"];
            if m["op"] != "==" || payload["field"] != "dport" {
                continue;
            }
            for proto in protos(payload["protocol"].as_str().unwrap_or("")) {
                for ports in nft_ports(&m["right"]) {
                    layer.drops.push(FirewallDrop {
                        place: format!("nftables {id}"),
                        proto,
                        ports,
                    });
                }
            }
        }
    }
    Ok(layer)
}

/// Parses `iptables-save` (or `ip6tables-save`) output: rules of INPUT and PREROUTING that
/// match `-p tcp|udp` with `--dport`/`--dports` and jump to DROP or REJECT.
pub fn parse_iptables_save(text: &str, tool: &str) -> Layer {
    let mut layer = Layer::default();
    let mut table = "";
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        if let Some(chain) = line.strip_prefix(':') {
            let f: Vec<&str> = chain.split_whitespace().collect();
            if f.len() >= 2 && matches!(f[0], "INPUT" | "PREROUTING") && f[1] == "DROP" {
                layer
                    .dropping_chains
                    .push(format!("{tool} {table} {}", f[0]));
            }
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        layer.rules += 1;
        let f: Vec<&str> = rule.split_whitespace().collect();
        let chain = f.first().copied().unwrap_or("");
        let arg = |flag: &str| f.iter().position(|t| *t == flag).and_then(|i| f.get(i + 1));
        if !matches!(chain, "INPUT" | "PREROUTING")
            || !matches!(arg("-j").copied(), Some("DROP" | "REJECT"))
        {
            continue;
        }
        let proto = match arg("-p").copied() {
            Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            _ => continue,
        };
        let spec = arg("--dport")
            .or_else(|| arg("--dports"))
            .copied()
            .unwrap_or("");
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once(':').unwrap_or((part, part));
            if let (Ok(first), Ok(last)) = (a.parse(), b.parse()) {
                layer.drops.push(FirewallDrop {
                    place: format!("{tool} {table} {chain}"),
                    proto,
                    ports: PortRange { first, last },
                });
            }
        }
    }
    layer
}

/// A port of `range` the policy admits from somewhere, with the rule that admits it.
fn allowed_in(policy: &Policy, proto: Proto, range: PortRange) -> Option<(u16, String)> {
    let everywhere = [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    let candidates = policy
        .ingress
        .iter()
        .filter(|r| r.proto == proto && r.action != RuleAction::Deny)
        .flat_map(|r| r.ports.iter().map(move |p| (*p, r.name.clone())))
        .chain(
            (proto == Proto::Tcp)
                .then(|| {
                    policy
                        .failsafe_ports
                        .iter()
                        .map(|p| (*p, "failsafe_ports".to_owned()))
                })
                .into_iter()
                .flatten(),
        );
    for (p, name) in candidates {
        let (first, last) = (p.first.max(range.first), p.last.min(range.last));
        if first > last {
            continue;
        }
        if let Some(port) = (first..=last)
            .take(64)
            .find(|&port| audit::reach(policy, proto, port, &everywhere) != Reach::Closed)
        {
            return Some((port, name));
        }
    }
    None
}

/// Judges the other firewall layers: each is `None` when its tool is missing, `Some(Err)`
/// when it could not be read.
pub fn check_firewall(
    layers: &[(&'static str, Option<Result<Layer, String>>)],
    policy: Option<&Policy>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, layer) in layers {
        let layer = match layer {
            None => {
                out.push(finding(
                    "firewall",
                    Severity::Info,
                    format!("{name} is not installed: its rules were not checked"),
                    "",
                ));
                continue;
            }
            Some(Err(e)) => {
                out.push(finding(
                    "firewall",
                    Severity::Warning,
                    format!("{name}: cannot read the rules: {e}"),
                    "run guard doctor as root",
                ));
                continue;
            }
            Some(Ok(layer)) => layer,
        };
        if layer.rules == 0 {
            out.push(finding(
                "firewall",
                Severity::Ok,
                format!("no {name} rules"),
                "",
            ));
            continue;
        }
        out.push(finding(
            "firewall",
            Severity::Info,
            format!(
                "{name} has {} rules: a packet guard passes must pass them too",
                layer.rules
            ),
            "keep one source of truth for inbound ports, or keep both in step",
        ));
        for chain in &layer.dropping_chains {
            out.push(finding(
                "firewall",
                Severity::Warning,
                format!("{chain} drops by default"),
                "every port the policy allows also needs an accept rule in this chain",
            ));
        }
        let Some(policy) = policy else { continue };
        for d in &layer.drops {
            // iptables-nft rules show in both listings: report each port range once.
            if !seen.insert((d.proto, d.ports)) {
                continue;
            }
            if let Some((port, rule)) = allowed_in(policy, d.proto, d.ports) {
                out.push(finding(
                    "firewall",
                    Severity::Error,
                    format!(
                        "{} drops {} {}, which the policy allows ({}/{port} by `{rule}`)",
                        d.place, d.proto, d.ports, d.proto
                    ),
                    "the layers contradict each other: remove the drop rule, or close the port in the policy",
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Permissions

/// Judges the mode and owner of a file guard relies on. `secret`: only root may read it
/// (control socket, pins); otherwise only root may write it.
pub fn check_mode(what: &str, path: &Path, mode: u32, uid: u32, secret: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let shown = format!(
        "{what} {} (mode {:04o}, owner uid {uid})",
        path.display(),
        mode & 0o7777
    );
    if secret && mode & 0o077 != 0 {
        out.push(finding(
            "permissions",
            Severity::Error,
            format!("{shown} is open to other users"),
            format!("chmod go-rwx {}", path.display()),
        ));
    } else if !secret && mode & 0o002 != 0 {
        out.push(finding(
            "permissions",
            Severity::Error,
            format!("{shown} is writable by every user: anyone can change what guard enforces"),
            format!("chmod o-w {}", path.display()),
        ));
    } else if !secret && mode & 0o020 != 0 {
        out.push(finding(
            "permissions",
            Severity::Warning,
            format!("{shown} is writable by its group"),
            format!("chmod g-w {}", path.display()),
        ));
    } else if uid != 0 {
        out.push(finding(
            "permissions",
            Severity::Warning,
            format!("{shown} is not owned by root"),
            format!("chown root {}", path.display()),
        ));
    } else {
        out.push(finding("permissions", Severity::Ok, shown, ""));
    }
    out
}

fn check_path(what: &str, path: &Path, secret: bool) -> Vec<Finding> {
    match fs::metadata(path) {
        Ok(m) => check_mode(what, path, m.permissions().mode(), m.uid(), secret),
        Err(e) => vec![finding(
            "permissions",
            Severity::Info,
            format!("{what} {}: {e}", path.display()),
            "",
        )],
    }
}

// ---------------------------------------------------------------------------------------
// Kernel

/// (major, minor) of a kernel release such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The oldest kernel guard supports: it needs BPF links for cgroups (5.7) and XDP (5.9)
/// and ring buffers (5.8); 5.10 is the first LTS line with them all.
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// Judges the kernel: `release` from uname, `features` as (name, supported), and
/// `read` for `kernel/unprivileged_bpf_disabled`, `net/core/bpf_jit_enable`,
/// `net/core/bpf_jit_harden`.
pub fn check_kernel(
    release: &str,
    features: &[(&str, Option<bool>)],
    read: impl Fn(&str) -> Option<String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    match kernel_version(release) {
        Some(v) if v >= MIN_KERNEL => out.push(finding(
            "kernel",
            Severity::Ok,
            format!("kernel {release}"),
            "",
        )),
        _ => out.push(finding(
            "kernel",
            Severity::Error,
            format!(
                "kernel {release} is older than {}.{}, the oldest guard supports",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "upgrade the kernel (your distribution's current LTS kernel)",
        )),
    }
    let missing: Vec<&str> = features
        .iter()
        .filter(|(_, ok)| *ok == Some(false))
        .map(|(n, _)| *n)
        .collect();
    let list = features
        .iter()
        .map(|(n, ok)| {
            format!(
                "{n} {}",
                match ok {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "?",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    out.push(if missing.is_empty() {
        finding("kernel", Severity::Ok, format!("BPF features: {list}"), "")
    } else {
        finding(
            "kernel",
            Severity::Error,
            format!("BPF features missing: {} ({list})", missing.join(", ")),
            "guard needs them all: use a kernel built with CONFIG_BPF_SYSCALL, CONFIG_XDP_SOCKETS, CONFIG_CGROUP_BPF, CONFIG_NET_CLS_BPF",
        )
    });
    match read("kernel/unprivileged_bpf_disabled").as_deref() {
        Some("1" | "2") => out.push(finding(
            "kernel",
            Severity::Ok,
            "unprivileged BPF is disabled",
            "",
        )),
        Some(v) => out.push(finding(
            "kernel",
            Severity::Warning,
            format!("unprivileged BPF is enabled (kernel.unprivileged_bpf_disabled = {v})"),
            "any user can load BPF programs (a large attack surface): sysctl -w kernel.unprivileged_bpf_disabled=1",
        )),
        None => {}
    }
    match read("net/core/bpf_jit_enable").as_deref() {
        Some("0") => out.push(finding(
            "kernel",
            Severity::Warning,
            "the BPF JIT is off: guard's programs run interpreted, several times slower",
            "sysctl -w net.core.bpf_jit_enable=1",
        )),
        Some(v) => out.push(finding(
            "kernel",
            Severity::Ok,
            format!("BPF JIT on ({v})"),
            "",
        )),
        None => {}
    }
    match read("net/core/bpf_jit_harden").as_deref() {
        Some("0") => out.push(finding(
            "kernel",
            Severity::Info,
            "BPF JIT hardening is off (net.core.bpf_jit_harden = 0)",
            "sysctl -w net.core.bpf_jit_harden=1 blinds constants in unprivileged programs (2: in all, at some cost)",
        )),
        Some(v) => out.push(finding(
            "kernel",
            Severity::Ok,
            format!("BPF JIT hardening {v}"),
            "",
        )),
        None => {}
    }
    out
}

// ---------------------------------------------------------------------------------------
// Reading the host

/// The interfaces of this network namespace, but `lo`.
fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/proc/sys/net/ipv4/conf")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !matches!(n.as_str(), "all" | "default" | "lo"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs a tool; `None` when it is not installed.
fn tool(program: &str, args: &[&str]) -> Option<Result<String, String>> {
    match Command::new(program).args(args).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
        Ok(out) if out.status.success() => {
            Some(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
        }
        Ok(out) => Some(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())),
    }
}

/// The network checks, in the calling thread's network namespace.
fn network_checks(policy: Option<&Policy>) -> Vec<Finding> {
    let mut out = Vec::new();
    let v4 = fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
    let v6 = fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    let routes = crate::linux::host::parse_routes(&v4, &v6);
    let filtered: Option<Vec<String>> = policy.map(|p| {
        let mut names = Vec::new();
        for spec in &p.interfaces {
            match spec {
                InterfaceSpec::Name(n) => names.push(n.clone()),
                InterfaceSpec::DefaultRoute => names.extend(
                    routes
                        .iter()
                        .filter(|r| r.dest.prefix_len() == 0)
                        .map(|r| r.iface.clone()),
                ),
            }
        }
        names.sort();
        names.dedup();
        names
    });
    out.extend(check_routes(&routes, filtered.as_deref()));
    out.extend(check_sysctls(
        crate::linux::host::read_sysctl,
        &interfaces(),
    ));
    let nft = tool("nft", &["-j", "list", "ruleset"]).map(|r| r.and_then(|t| parse_nft(&t)));
    let ipt = |save: &'static str, name: &'static str| {
        tool(save, &[]).map(|r| r.map(|t| parse_iptables_save(&t, name)))
    };
    out.extend(check_firewall(
        &[
            ("nftables", nft),
            ("iptables", ipt("iptables-save", "iptables")),
            ("ip6tables", ipt("ip6tables-save", "ip6tables")),
        ],
        policy,
    ));
    out
}

/// The id of the program a pinned link runs, and whether the link is still attached (XDP
/// links report their interface, 0 once detached).
fn pinned_link(pins: &Pins, hook: &str) -> Result<crate::datapath::sys::LinkInfo, String> {
    let path = pins.link(hook);
    let fd =
        crate::datapath::sys::obj_get(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::datapath::sys::link_info(fd.as_fd()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Program names by id, for messages.
fn program_names() -> BTreeMap<u32, String> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect()
}

/// The XDP programs `ip -d link` shows on `iface`.
fn xdp_programs(iface: &str) -> Result<Vec<u32>, String> {
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
const CGROUP_HOOKS: [(u32, &str); 8] = [
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
fn hook_checks(st: &State, pins: &Pins) -> Vec<Finding> {
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

/// Where doctor finds guard's things.
pub struct Places<'a> {
    pub run_dir: &'a Path,
    pub pin_dir: &'a Path,
    /// A policy file named on the command line.
    pub policy_file: Option<&'a Path>,
}

/// Guard's integrity: daemon, drift, the policy file against what runs; then hooks and
/// permissions.
fn guard_checks(places: &Places<'_>) -> Vec<Finding> {
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

/// Pins under `dir` (to `depth` levels) other users can open, and directories they can
/// write (add or remove pins in), as `path (mode)`.
fn open_pins(dir: &Path, depth: u32) -> Vec<String> {
    let mut open = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return open;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let mode = m.permissions().mode();
        let too_open = if m.is_dir() {
            mode & 0o022 != 0
        } else {
            mode & 0o077 != 0
        };
        if too_open {
            open.push(format!("{} ({:04o})", e.path().display(), mode & 0o7777));
        }
        if m.is_dir() && depth > 1 {
            open.extend(open_pins(&e.path(), depth - 1));
        }
    }
    open
}

fn kernel_checks() -> Vec<Finding> {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{is_map_supported, is_program_supported},
    };
    // SAFETY: uname fills the zeroed struct.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        libc::uname(&mut u);
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let prog = |t| is_program_supported(t).ok();
    let map = |t| is_map_supported(t).ok();
    let features = [
        ("xdp", prog(ProgramType::Xdp)),
        ("tc", prog(ProgramType::SchedClassifier)),
        ("cgroup_sock_addr", prog(ProgramType::CgroupSockAddr)),
        ("sock_ops", prog(ProgramType::SockOps)),
        ("lpm_trie", map(MapType::LpmTrie)),
        ("ringbuf", map(MapType::RingBuf)),
    ];
    check_kernel(&release, &features, crate::linux::host::read_sysctl)
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub errors: usize,
    pub warnings: usize,
}

/// Every check. `netns`: run the network checks inside this namespace.
pub fn run(
    places: &Places<'_>,
    policy: Option<&Policy>,
    netns: Option<&str>,
) -> std::io::Result<Report> {
    let mut findings = {
        let _inside = netns.map(crate::linux::host::InNetns::enter).transpose()?;
        network_checks(policy)
    };
    if policy.is_none() {
        findings.push(finding(
            "firewall",
            Severity::Info,
            "no policy (guard is not running and no --policy): contradictions with it were not checked",
            "",
        ));
    }
    findings.extend(guard_checks(places));
    findings.extend(kernel_checks());
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    Ok(Report {
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
    })
}

#[cfg(test)]
mod tests;
