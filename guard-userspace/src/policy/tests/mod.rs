//! Unit tests of the three policy steps on inline texts.

use guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CLASS_BITS, CLASS_LENS_USE_TRIE, MODE_AUDIT,
    MODE_ENFORCE, PORT_ACTION_MASK, PORT_ACTION_SHIFT, PORT_CLASS_MASK, PORT_DIRECT, PORT_FAILSAFE,
    PORT_VALUE_MASK, PROTO_IDX_EGRESS_TCP, PROTO_IDX_EGRESS_UDP, PROTO_IDX_TCP, PROTO_IDX_UDP,
    RULE_FIRST_POLICY, port_index,
};
use proptest::prelude::*;

use super::{
    check, check_before_lint,
    lower::{Lowered, lower},
    model::{InterfaceSpec, Mode, PortRange, RuleAction},
};

mod lower;
mod protocols;

const MINIMAL: &str = r#"
mode = "enforce"
interfaces = ["eth0"]
default = "deny"

[[ingress]]
name = "web"
proto = "tcp"
ports = [80, "8000-8010"]
"#;

fn errors(text: &str) -> Vec<String> {
    check("p.toml", text)
        .expect_err("policy should be rejected")
        .lines
}

fn lowered(text: &str) -> Lowered {
    lower(&check("p.toml", text).expect("valid policy").policy)
}

fn port_entry(l: &Lowered, proto: u32, port: u16) -> u32 {
    l.ports
        .iter()
        .find(|(i, _)| *i == port_index(proto, port))
        .map_or(0, |&(_, v)| v)
}

// ---- step 1+2: parse and validate ----

#[test]
fn minimal_policy_validates_with_defaults() {
    let c = check("p.toml", MINIMAL).unwrap();
    let p = &c.policy;
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.interfaces, vec![InterfaceSpec::Name("eth0".into())]);
    assert_eq!(
        p.failsafe_ports,
        vec![PortRange::single(22)],
        "failsafe defaults to [22]"
    );
    assert_eq!(
        p.ingress[0].ports,
        vec![
            PortRange::single(80),
            PortRange {
                first: 8000,
                last: 8010
            }
        ]
    );
    assert_eq!(p.ingress[0].peers, vec!["any"]);
    assert_eq!(p.ingress[0].nets.len(), 2, "any = 0.0.0.0/0 and ::/0");
    assert_eq!(p.ingress[0].action, RuleAction::Allow);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.hash.len(), 64);
}

#[test]
fn shipped_policies_validate() {
    for (name, text) in [
        ("default.toml", super::DEFAULT_POLICY),
        (
            "example.toml",
            include_str!("../../../../policies/example.toml"),
        ),
    ] {
        check(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let default = check("default.toml", super::DEFAULT_POLICY).unwrap().policy;
    assert_eq!(
        default.mode,
        Mode::Audit,
        "the embedded default must never drop"
    );
    assert_eq!(default.interfaces, vec![InterfaceSpec::DefaultRoute]);
}

#[test]
fn syntax_error_has_file_line_col() {
    let e = errors("mode = \"enforce\"\ninterfaces = [\"eth0\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("p.toml:2:"), "{e:?}");
}

#[test]
fn unknown_key_is_rejected_with_position() {
    let e = errors("interfaces = [\"eth0\"]\nmodee = \"audit\"\n");
    assert!(e[0].starts_with("p.toml:2:1: "), "{e:?}");
    assert!(e[0].contains("modee"), "{e:?}");
}

#[test]
fn every_validation_error_is_reported_at_its_place() {
    let text = r#"interfaces = ["eth0"]
mode = "block"
[zones]
lan = ["10.0.0.1/8", "not-an-ip/3"]
[[ingress]]
name = "a"
proto = "bogus"
ports = [0, 70000, "20-10", "x"]
from = ["nowhere"]
"#;
    let e = errors(text);
    let expect = [
        ("p.toml:2:8:", "unknown mode `block`"),
        ("p.toml:4:8:", "host bits set; did you mean 10.0.0.0/8"),
        ("p.toml:4:22:", "invalid CIDR `not-an-ip/3`"),
        ("p.toml:7:9:", "unknown proto `bogus`"),
        ("p.toml:8:10:", "port 0 is out of range"),
        ("p.toml:8:13:", "port 70000 is out of range"),
        ("p.toml:8:20:", "reversed port range `20-10`"),
        ("p.toml:8:29:", "invalid port `x`"),
        (
            "p.toml:9:9:",
            "unknown zone `nowhere` in rule `a` (zones defined: lan)",
        ),
    ];
    for (place, msg) in expect {
        assert!(
            e.iter().any(|l| l.starts_with(place) && l.contains(msg)),
            "missing {place} {msg} in {e:#?}"
        );
    }
    assert_eq!(e.len(), expect.len(), "{e:#?}");
}

#[test]
fn duplicate_names_and_bad_interfaces_are_rejected() {
    let e = errors(
        r#"interfaces = ["eth0", "eth0", "this-name-is-too-long", "a/b"]
[[ingress]]
name = "x"
proto = "tcp"
ports = [1]
[[ingress]]
name = "x"
proto = "udp"
ports = [1]
"#,
    );
    assert!(
        e.iter()
            .any(|l| l.contains("interface `eth0` is listed twice")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.contains("longer than 15 bytes")),
        "{e:?}"
    );
    assert!(e.iter().any(|l| l.contains("`a/b`")), "{e:?}");
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:7:") && l.contains("duplicate rule name `x`")),
        "{e:?}"
    );
}

#[test]
fn missing_or_empty_interfaces_are_errors() {
    assert!(errors("mode = \"audit\"\n")[0].contains("missing `interfaces`"));
    assert!(errors("interfaces = []\n")[0].contains("`interfaces` is empty"));
}

#[test]
fn warnings_for_disabled_failsafe_and_empty_listen() {
    let c = check(
        "p.toml",
        "interfaces = [\"eth0\"]\nfailsafe_ports = []\n[listen]\nallow = []\n",
    )
    .unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("p.toml:2:18: warning: failsafe_ports = []")),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("[listen] allows no port")),
        "{:?}",
        c.warnings
    );
    assert!(c.policy.failsafe_ports.is_empty());
}

#[test]
fn listen_per_protocol_and_cgroup() {
    let c = check(
        "p.toml",
        "interfaces = [\"eth0\"]\ncgroup = \"/sys/fs/cgroup/app\"\n[listen]\nallow = [22]\ntcp = [\"8000-8001\"]\nudp = [53]\n",
    )
    .unwrap();
    let listen = c.policy.listen.as_ref().unwrap();
    assert_eq!(
        listen.tcp,
        vec![
            PortRange {
                first: 8000,
                last: 8001
            },
            PortRange::single(22)
        ]
    );
    assert_eq!(
        listen.udp,
        vec![PortRange::single(53), PortRange::single(22)]
    );
    assert_eq!(
        c.policy.cgroup.as_deref(),
        Some(std::path::Path::new("/sys/fs/cgroup/app"))
    );
    let l = lower(&c.policy);
    assert_eq!(l.config.listen_enforced, 1);
    let want: Vec<u32> = [
        (PROTO_IDX_TCP, 22),
        (PROTO_IDX_TCP, 8000),
        (PROTO_IDX_TCP, 8001),
        (PROTO_IDX_UDP, 22),
        (PROTO_IDX_UDP, 53),
    ]
    .iter()
    .map(|&(p, port)| port_index(p, port))
    .collect();
    assert_eq!(l.listen, want);
    assert_eq!(
        lowered(MINIMAL).config.listen_enforced,
        0,
        "no [listen]: nothing denied"
    );
    let e = errors(
        "interfaces = [\"eth0\"]\ncgroup = \"relative/path\"\n[listen]\ntcp = [0, \"9-3\"]\n",
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:2:10:") && l.contains("absolute path")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:4:8:") && l.contains("port 0 is out of range")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:4:11:") && l.contains("reversed port range")),
        "{e:?}"
    );
}

#[test]
fn from_accepts_zones_cidrs_addresses_and_any() {
    let c = check(
        "p.toml",
        r#"interfaces = ["eth0"]
[zones]
lan = ["10.0.0.0/8", "fd00::/8"]
[[ingress]]
name = "r"
proto = "udp"
ports = [53]
from = ["lan", "192.0.2.7", "2001:db8::/32", "lan"]
"#,
    )
    .unwrap();
    let got: Vec<String> = c.policy.ingress[0]
        .nets
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        got,
        ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "fd00::/8"]
    );
}

#[test]
fn the_identity_server_preset_opens_only_what_a_node_needs() {
    use std::net::IpAddr;

    use super::{eval, model::Proto};
    let text = include_str!("../../../../policies/wso2-is-7.toml");
    let checked = check("wso2-is-7.toml", text).unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    let p = checked.policy;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let passes = |port, from: &str| eval::inbound(&p, Proto::Tcp, port, ip(from)).passes();
    let (lb, node, admin, outside) = ("10.0.1.5", "10.0.2.7", "10.0.9.9", "203.0.113.1");
    assert!(passes(9443, lb) && !passes(9443, outside) && !passes(9443, node));
    assert!(passes(4000, node) && !passes(4000, lb) && !passes(4000, outside));
    for closed in [9763, 8000, 10500, 80] {
        for from in [lb, node, admin, outside] {
            assert!(!passes(closed, from), "{closed} from {from}");
        }
    }
    assert!(passes(22, outside), "the failsafe port stays open");
    assert_eq!(p.mode, Mode::Enforce);
}

// ---- large policies, parsed in pieces ----

/// `n` zone rules, over a megabyte of text: parsed a piece at a time.
fn large(n: usize) -> String {
    let mut s = String::from(
        "mode = \"enforce\"\ninterfaces = [\"eth0\"]\nfailsafe_ports = []\n[zones]\nlan = [\"10.0.0.0/8\"]\n",
    );
    for i in 0..n {
        s += &format!(
            "[[ingress]]\nname = \"r{i}\"\nproto = \"tcp\"\nports = [{}]\nfrom = [\"lan\", \"192.0.{}.{}/32\"]\n",
            1000 + i % 5000,
            i / 256 % 256,
            i % 256
        );
    }
    assert!(s.len() > 1 << 20);
    s
}

#[test]
fn a_large_policy_checks_the_same_in_pieces_and_whole() {
    let text = large(20_000);
    let pieces = check("p.toml", &text).unwrap();
    // Pieces fail on a table after the rules: the whole text is parsed instead, with the same
    // rules; so is a policy that holds every rule in the first piece.
    let moved = text.replacen("[zones]\nlan = [\"10.0.0.0/8\"]\n", "", 1)
        + "[zones]\nlan = [\"10.0.0.0/8\"]\n";
    let whole = check("p.toml", &moved).unwrap();
    assert_eq!(pieces.policy, whole.policy);
    assert_eq!(pieces.policy.ingress.len(), 20_000);
}

#[test]
fn errors_in_a_later_piece_name_their_place_in_the_whole_text() {
    let text = large(20_000);
    // A bad address in rule 15 000 (a later piece): validation's error, placed in the text.
    let bad = text.replace("\"192.0.58.152/32\"", "\"192.0.58.300/32\"");
    let line = bad
        .lines()
        .position(|l| l.contains("192.0.58.300"))
        .unwrap()
        + 1;
    let e = errors(&bad);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with(&format!("p.toml:{line}:")), "{e:?}");
    assert!(e[0].contains("192.0.58.300"), "{e:?}");
    // A TOML error there: the one-document parse reports it, as it would in a small file.
    let broken = text.replace("name = \"r15000\"", "name = r15000");
    let line = broken.lines().position(|l| l == "name = r15000").unwrap() + 1;
    let e = errors(&broken);
    assert!(e[0].starts_with(&format!("p.toml:{line}:")), "{e:?}");
    // A duplicate name across pieces.
    let dup = text.replace("name = \"r19999\"", "name = \"r3\"");
    let line = dup.lines().position(|l| l == "name = \"r3\"").map(|_| {
        dup.lines()
            .enumerate()
            .filter(|(_, l)| *l == "name = \"r3\"")
            .nth(1)
            .unwrap()
            .0
            + 1
    });
    let e = errors(&dup);
    assert!(
        e.iter()
            .any(|m| m.starts_with(&format!("p.toml:{}:", line.unwrap()))
                && m.contains("duplicate rule name `r3`")),
        "{e:?}"
    );
}
