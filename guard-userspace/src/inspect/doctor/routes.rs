//! `routes`: no default route, several defaults, routes via interfaces guard does not filter.

use super::*;

pub(super) fn is_link_local(net: &IpNet) -> bool {
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
