//! `sysctl`: forwarding, reverse-path filtering, redirects, source routing, SYN cookies and
//! martian logging against recommended values.

use super::*;

/// A network sysctl and the value recommended for a server that is not a router.
pub(super) struct Recommended {
    key: &'static str,
    want: &'static [&'static str],
    severity: Severity,
    why: &'static str,
}

pub(super) const SYSCTLS: &[Recommended] = &[
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
