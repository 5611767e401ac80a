use super::*;
use crate::policy;

const ROUTE_V4: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth1\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";

const ROUTE_V6: &str = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
";

fn policy(text: &str) -> Policy {
    policy::check("t.toml", text).expect("valid").policy
}

fn severities(found: &[Finding], severity: Severity) -> Vec<&str> {
    found
        .iter()
        .filter(|f| f.severity == severity)
        .map(|f| f.message.as_str())
        .collect()
}

#[test]
fn routes_parse_with_prefixes_metrics_and_without_lo_or_multicast() {
    let routes = crate::linux::host::parse_routes(ROUTE_V4, ROUTE_V6);
    let shown: Vec<String> = routes
        .iter()
        .map(|r| format!("{} {} {}", r.dest, r.iface, r.metric))
        .collect();
    assert_eq!(
        shown,
        [
            "0.0.0.0/0 eth0 100",
            "0.0.0.0/0 eth1 100",
            "192.168.0.0/24 eth0 0",
            "172.17.0.0/16 docker0 0",
            "::/0 eth0 1024",
            "fe80::/64 eth0 256",
        ]
    );
}

#[test]
fn several_defaults_and_unfiltered_interfaces_are_warned() {
    let routes = crate::linux::host::parse_routes(ROUTE_V4, ROUTE_V6);
    let found = check_routes(&routes, Some(&["eth0".to_owned()]));
    let warnings = severities(&found, Severity::Warning);
    assert!(
        warnings[0].starts_with(
            "2 IPv4 default routes: via eth0 (metric 100), eth1 (metric 100); some share a metric"
        ),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("routes via docker0 (172.17.0.0/16)"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("routes via eth1 (0.0.0.0/0)"))
    );
    assert_eq!(
        warnings.len(),
        3,
        "link-local fe80::/64 is not reported: {warnings:?}"
    );
    assert!(
        severities(&found, Severity::Ok)
            .contains(&"one IPv6 default route: via eth0 (metric 1024)")
    );

    let one = crate::linux::host::parse_routes(
        &ROUTE_V4
            .lines()
            .filter(|l| !l.starts_with("eth1") && !l.starts_with("docker0"))
            .collect::<Vec<_>>()
            .join("\n"),
        "",
    );
    let found = check_routes(&one, Some(&["eth0".to_owned()]));
    assert!(
        severities(&found, Severity::Warning).is_empty(),
        "{found:?}"
    );
    let none = check_routes(&[], None);
    assert_eq!(
        severities(&none, Severity::Warning),
        ["no IPv4 default route"]
    );
}

#[test]
fn sysctls_are_compared_with_recommended_values() {
    let good: BTreeMap<&str, &str> = [
        ("net/ipv4/ip_forward", "0"),
        ("net/ipv6/conf/all/forwarding", "0"),
        ("net/ipv4/conf/all/accept_redirects", "0"),
        ("net/ipv4/conf/default/accept_redirects", "0"),
        ("net/ipv6/conf/all/accept_redirects", "0"),
        ("net/ipv4/conf/all/accept_source_route", "0"),
        ("net/ipv6/conf/all/accept_source_route", "-1"),
        ("net/ipv4/tcp_syncookies", "1"),
        ("net/ipv4/conf/all/log_martians", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/eth0/rp_filter", "1"),
    ]
    .into();
    let ifaces = ["eth0".to_owned()];
    let found = check_sysctls(|k| good.get(k).map(|v| v.to_string()), &ifaces);
    assert!(
        found.iter().all(|f| f.severity == Severity::Ok),
        "{found:?}"
    );
    let mut bad = good.clone();
    bad.insert("net/ipv4/ip_forward", "1");
    bad.insert("net/ipv4/conf/eth0/rp_filter", "0");
    bad.insert("net/ipv4/conf/all/log_martians", "0");
    let found = check_sysctls(|k| bad.get(k).map(|v| v.to_string()), &ifaces);
    let warnings = severities(&found, Severity::Warning);
    assert_eq!(
        warnings,
        [
            "net.ipv4.ip_forward = 1, recommended 0",
            "no reverse-path filtering on eth0"
        ]
    );
    assert_eq!(
        severities(&found, Severity::Info),
        ["net.ipv4.conf.all.log_martians = 0, recommended 1"]
    );
    assert!(
        found
            .iter()
            .any(|f| f.hint.contains("sysctl -w net.ipv4.ip_forward=0"))
    );
}

const NFT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "inet", "name": "t", "handle": 1}},
 {"chain": {"family": "inet", "table": "t", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
 {"chain": {"family": "inet", "table": "t", "name": "output", "handle": 2, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, {"range": [8000, 8010]}]}}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}},
 {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "t", "chain": "output", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"drop": null}]}}
]}"#;

const IPTABLES: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9090 -j DROP
-A INPUT -p tcp -m multiport --dports 7000,7100:7102 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p udp -m udp --dport 123 -j ACCEPT
-A OUTPUT -p tcp -m tcp --dport 25 -j DROP
COMMIT
";

#[test]
fn nft_and_iptables_drops_are_found_in_inbound_chains_only() {
    let nft = parse_nft(NFT).unwrap();
    assert_eq!(nft.rules, 4);
    assert_eq!(nft.dropping_chains, ["nftables inet t input"]);
    let drops: Vec<String> = nft
        .drops
        .iter()
        .map(|d| format!("{} {}", d.proto, d.ports))
        .collect();
    assert_eq!(drops, ["tcp 80", "tcp 8000-8010", "udp 53"]);
    assert!(parse_nft("{}").is_err());

    let ipt = parse_iptables_save(IPTABLES, "iptables");
    assert_eq!(ipt.rules, 4);
    assert!(
        ipt.dropping_chains.is_empty(),
        "FORWARD is not inbound to the host"
    );
    let drops: Vec<String> = ipt
        .drops
        .iter()
        .map(|d| format!("{} {} {}", d.place, d.proto, d.ports))
        .collect();
    assert_eq!(
        drops,
        [
            "iptables filter INPUT tcp 9090",
            "iptables filter INPUT tcp 7000",
            "iptables filter INPUT tcp 7100-7102"
        ]
    );
}

#[test]
fn firewall_drops_of_allowed_ports_are_errors() {
    let p = policy(
        r#"
version = 1
interfaces = ["eth0"]
default = "deny"
failsafe_ports = [22]
[[ingress]]
name = "web"
proto = "tcp"
ports = [8005]
from = ["any"]
[[ingress]]
name = "dns"
proto = "udp"
ports = [53]
from = ["10.0.0.0/8"]
"#,
    );
    let layers = [
        ("nftables", Some(parse_nft(NFT))),
        (
            "iptables",
            Some(Ok(parse_iptables_save(IPTABLES, "iptables"))),
        ),
        ("ip6tables", None),
    ];
    let found = check_firewall(&layers, Some(&p));
    let errors = severities(&found, Severity::Error);
    assert_eq!(
        errors,
        [
            "nftables inet t input drops tcp 8000-8010, which the policy allows (tcp/8005 by `web`)",
            "nftables inet t input drops udp 53, which the policy allows (udp/53 by `dns`)",
        ]
    );
    assert!(
        severities(&found, Severity::Warning).contains(&"nftables inet t input drops by default")
    );
    assert!(
        severities(&found, Severity::Info)
            .contains(&"ip6tables is not installed: its rules were not checked")
    );
    let empty = [("nftables", Some(Ok(Layer::default())))];
    assert_eq!(
        severities(&check_firewall(&empty, Some(&p)), Severity::Ok),
        ["no nftables rules"]
    );
}

#[test]
fn modes_owners_and_kernel_are_judged() {
    let p = Path::new("/etc/guard/policy.toml");
    assert_eq!(
        check_mode("policy file", p, 0o100644, 0, false)[0].severity,
        Severity::Ok
    );
    assert_eq!(
        check_mode("policy file", p, 0o100666, 0, false)[0].severity,
        Severity::Error
    );
    assert_eq!(
        check_mode("policy file", p, 0o100664, 0, false)[0].severity,
        Severity::Warning
    );
    assert_eq!(
        check_mode("policy file", p, 0o100644, 1000, false)[0].severity,
        Severity::Warning
    );
    let s = Path::new("/run/guard/guard.sock");
    assert_eq!(
        check_mode("control socket", s, 0o140600, 0, true)[0].severity,
        Severity::Ok
    );
    assert_eq!(
        check_mode("control socket", s, 0o140644, 0, true)[0].severity,
        Severity::Error
    );

    assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
    assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
    let sys: BTreeMap<&str, &str> = [
        ("kernel/unprivileged_bpf_disabled", "0"),
        ("net/core/bpf_jit_enable", "1"),
        ("net/core/bpf_jit_harden", "0"),
    ]
    .into();
    let read = |k: &str| sys.get(k).map(|v| v.to_string());
    let found = check_kernel(
        "6.1.0",
        &[("xdp", Some(true)), ("ringbuf", Some(true))],
        read,
    );
    assert_eq!(
        severities(&found, Severity::Warning),
        ["unprivileged BPF is enabled (kernel.unprivileged_bpf_disabled = 0)"]
    );
    assert!(severities(&found, Severity::Ok).contains(&"BPF features: xdp yes, ringbuf yes"));
    let old = check_kernel("5.4.0", &[("ringbuf", Some(false))], |_| None);
    assert_eq!(severities(&old, Severity::Error).len(), 2);
}
