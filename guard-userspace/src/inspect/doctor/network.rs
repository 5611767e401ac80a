//! Reading the host's network: its interfaces, and the network checks (routes, sysctls,
//! firewall) together, inside a network namespace when asked.

use super::*;

/// The interfaces of this network namespace, but `lo`.
pub(super) fn interfaces() -> Vec<String> {
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
pub(super) fn tool(program: &str, args: &[&str]) -> Option<Result<String, String>> {
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
pub(super) fn network_checks(policy: Option<&Policy>) -> Vec<Finding> {
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
