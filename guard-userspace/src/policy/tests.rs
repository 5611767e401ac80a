//! Unit tests of the three policy steps on inline texts.

use guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CLASS_BITS, CLASS_LENS_USE_TRIE, MODE_AUDIT,
    MODE_ENFORCE, PORT_ACTION_MASK, PORT_ACTION_SHIFT, PORT_CLASS_MASK, PORT_DIRECT, PORT_FAILSAFE,
    PORT_VALUE_MASK, PROTO_IDX_EGRESS_TCP, PROTO_IDX_EGRESS_UDP, PROTO_IDX_TCP, PROTO_IDX_UDP,
    RULE_FIRST_POLICY, port_index,
};
use proptest::prelude::*;

use super::{
    check,
    lower::{Lowered, lower},
    model::{InterfaceSpec, Mode, PortRange, RuleAction},
};

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
            include_str!("../../../policies/example.toml"),
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

// ---- step 3: lower ----

#[test]
fn lowering_assigns_classes_and_failsafe_flags() {
    let l = lowered(MINIMAL);
    assert_eq!(l.config.mode, MODE_ENFORCE);
    assert_eq!(l.config.default_action, ACTION_DENY);
    let names: Vec<&str> = l.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "default",
            "failsafe",
            "reply",
            "egress-default",
            "web",
            "icmp-echo"
        ]
    );
    // `web` is from any: every source resolves to it, so the port entry holds the rule.
    let direct_web = PORT_DIRECT | (ACTION_ALLOW << PORT_ACTION_SHIFT) | RULE_FIRST_POLICY;
    assert_eq!(port_entry(&l, PROTO_IDX_TCP, 80), direct_web);
    assert_eq!(
        port_entry(&l, PROTO_IDX_TCP, 8005),
        direct_web,
        "same rule set, same class"
    );
    assert_eq!(port_entry(&l, PROTO_IDX_TCP, 8011), 0);
    assert_eq!(
        port_entry(&l, PROTO_IDX_UDP, 80),
        0,
        "tcp rule does not cover udp"
    );
    assert_eq!(
        port_entry(&l, PROTO_IDX_TCP, 22),
        PORT_FAILSAFE,
        "failsafe with no rule"
    );
    assert_eq!(l.ports.len(), 1 + 11 + 1);
    assert!(
        l.src_v4.is_empty() && l.src_v6.is_empty(),
        "direct classes need no trie entries"
    );
    // `web`'s class, and `icmp-echo`'s (ICMP and ICMPv6 echo from any: direct).
    assert_eq!((l.classes, l.direct_classes), (2, 2));
    let echo = PORT_DIRECT | (ACTION_ALLOW << PORT_ACTION_SHIFT) | (RULE_FIRST_POLICY + 1);
    assert_eq!(l.protos, [(1, echo), (58, echo)]);
    assert_eq!(
        l.config.event_interval_ns, 200_000_000,
        "5 events/s by default"
    );
    assert_eq!(l.config.event_tolerance_ns, 9 * 200_000_000, "burst 10");
    assert_eq!(l.config.udp_flow_timeout_ns, 120_000_000_000);
}

#[test]
fn precedence_deny_beats_audit_beats_allow_at_equal_prefix() {
    let l = lowered(
        r#"interfaces = ["eth0"]
mode = "audit"
[[ingress]]
name = "allow"
proto = "tcp"
ports = [443]
from = ["10.0.0.0/8"]
[[ingress]]
name = "audit"
proto = "tcp"
ports = [443]
from = ["10.0.0.0/8", "10.1.0.0/16"]
action = "audit"
[[ingress]]
name = "deny"
proto = "tcp"
ports = ["400-500"]
from = ["10.0.0.0/8"]
action = "deny"
"#,
    );
    assert_eq!(l.config.mode, MODE_AUDIT);
    let class443 = port_entry(&l, PROTO_IDX_TCP, 443) & PORT_CLASS_MASK;
    let class400 = port_entry(&l, PROTO_IDX_TCP, 400) & PORT_CLASS_MASK;
    assert_ne!(class443, class400);
    let at = |class: u32, prefix: u32| {
        l.src_hash_v4
            .iter()
            .find(|(k, _)| k.prefix_len == prefix && k.class == class)
            .map(|(_, v)| (v.rule, v.action))
    };
    assert_eq!(at(class443, 8), Some((6, ACTION_DENY)));
    assert_eq!(at(class443, 16), Some((5, ACTION_AUDIT)));
    assert_eq!(at(class400, 8), Some((6, ACTION_DENY)));
    let lens = l.class_lens.iter().find(|(c, _)| *c == class443).unwrap().1;
    assert_eq!(
        (lens.v4_count, &lens.v4[..2]),
        (2, &[16, 8][..]),
        "longest first"
    );
    assert_eq!(
        l.rules[6].action, "audit",
        "deny is reported as audit in audit mode"
    );
    assert_eq!(l.rules[4].action, "allow");
}

#[test]
fn equal_actions_keep_the_first_rule() {
    let l = lowered(
        "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"a\"\nproto = \"udp\"\nports = [9]\n\
         [[ingress]]\nname = \"b\"\nproto = \"udp\"\nports = [9]\n",
    );
    let direct = PORT_DIRECT | (ACTION_ALLOW << PORT_ACTION_SHIFT) | RULE_FIRST_POLICY;
    assert_eq!(
        port_entry(&l, PROTO_IDX_UDP, 9),
        direct,
        "rule a, the first"
    );
}

#[test]
fn egress_rules_use_their_own_port_slots_and_follow_ingress_rules() {
    let c = check(
        "p.toml",
        r#"interfaces = ["eth0"]
[zones]
db = ["10.9.0.0/16"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [443]
[[egress]]
name = "no-db"
proto = "tcp"
ports = [5432]
to = ["db"]
action = "deny"
[[egress]]
name = "dns-anywhere"
proto = "udp"
ports = [53]
"#,
    )
    .unwrap();
    assert_eq!(c.policy.egress.len(), 2);
    assert_eq!(c.policy.egress[0].peers, vec!["db"]);
    let l = lower(&c.policy);
    let names: Vec<&str> = l.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "default",
            "failsafe",
            "reply",
            "egress-default",
            "web",
            "no-db",
            "dns-anywhere",
            "icmp-echo"
        ]
    );
    let no_db = port_entry(&l, PROTO_IDX_EGRESS_TCP, 5432);
    assert!(
        no_db != 0 && no_db & PORT_DIRECT == 0,
        "a zone rule: looked up by destination"
    );
    assert!(l.src_hash_v4.iter().any(|(k, v)| k.class == no_db
        && k.prefix_len == 16
        && v.rule == 5
        && v.action == ACTION_DENY));
    assert_eq!(
        port_entry(&l, PROTO_IDX_EGRESS_UDP, 53),
        PORT_DIRECT | (ACTION_ALLOW << PORT_ACTION_SHIFT) | 6
    );
    assert_eq!(
        port_entry(&l, PROTO_IDX_TCP, 5432),
        0,
        "egress rules do not open ingress ports"
    );
    assert_eq!(
        port_entry(&l, PROTO_IDX_EGRESS_TCP, 443),
        0,
        "and ingress rules do not touch egress"
    );

    let e = errors(
        "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"x\"\nproto = \"tcp\"\nports = [1]\n[[egress]]\nname = \"x\"\nproto = \"tcp\"\nports = [70000]\nto = [\"nowhere\"]\nfrom = [\"any\"]\n",
    );
    assert!(
        e.iter().any(|l| l.contains("unknown field `from`")),
        "egress rules take `to`: {e:?}"
    );
    let e = errors(
        "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"x\"\nproto = \"tcp\"\nports = [1]\n[[egress]]\nname = \"x\"\nproto = \"tcp\"\nports = [70000]\nto = [\"nowhere\"]\n",
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:7:8:") && l.contains("duplicate rule name `x`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:9:10:") && l.contains("port 70000")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:10:7:")
                && l.contains("unknown zone `nowhere` in rule `x`")),
        "{e:?}"
    );
}

#[test]
fn classes_with_many_prefix_lengths_use_the_trie() {
    let mut text = String::from("interfaces = [\"eth0\"]\n");
    for len in 8..=16 {
        text += &format!(
            "[[ingress]]\nname = \"r{len}\"\nproto = \"tcp\"\nports = [5]\nfrom = [\"10.0.0.0/{len}\", \"fd00::/{len}\"]\n"
        );
    }
    text += "[[ingress]]\nname = \"few\"\nproto = \"tcp\"\nports = [6]\nfrom = [\"10.0.0.0/8\"]\n";
    let l = lowered(&text);
    let class5 = port_entry(&l, PROTO_IDX_TCP, 5);
    let lens = l.class_lens.iter().find(|(c, _)| *c == class5).unwrap().1;
    assert_eq!(
        (lens.v4_count, lens.v6_count),
        (CLASS_LENS_USE_TRIE, CLASS_LENS_USE_TRIE)
    );
    assert_eq!((l.src_v4.len(), l.src_v6.len()), (9, 9));
    assert_eq!(l.src_hash_v4.len(), 1, "only port 6's class is hashed");
    assert!(l.src_hash_v6.is_empty());
}

// ---- lowering against a direct model ----

/// The decision the kernel should reach: the reference semantics (`eval`), as the rule
/// index the kernel counts it under.
fn model_decision(
    policy: &super::Policy,
    tcp: bool,
    port: u16,
    src: std::net::IpAddr,
) -> (u32, RuleAction) {
    let proto = if tcp {
        super::model::Proto::Tcp
    } else {
        super::model::Proto::Udp
    };
    let d = super::eval::inbound(policy, proto, port, src);
    let rule = match d.decider {
        super::eval::Decider::Failsafe => 1,
        super::eval::Decider::Rule { index, .. } => RULE_FIRST_POLICY + index as u32,
        _ => 0,
    };
    (rule, d.action)
}

/// The decision read from lowered map contents, as the kernel reads them.
fn lowered_decision(l: &Lowered, tcp: bool, port: u16, src: std::net::IpAddr) -> (u32, u32) {
    let entry = port_entry(l, if tcp { PROTO_IDX_TCP } else { PROTO_IDX_UDP }, port);
    if entry & PORT_FAILSAFE != 0 {
        return (1, ACTION_ALLOW);
    }
    if entry & PORT_DIRECT != 0 {
        return (
            entry & PORT_VALUE_MASK,
            (entry & PORT_ACTION_MASK) >> PORT_ACTION_SHIFT,
        );
    }
    let class = entry & PORT_CLASS_MASK;
    let bits = |a: &[u8], b: &[u8], n: u32| {
        (0..n as usize).all(|i| (a[i / 8] >> (7 - i % 8)) & 1 == (b[i / 8] >> (7 - i % 8)) & 1)
    };
    let lens = l
        .class_lens
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, v)| *v)
        .unwrap_or_default();
    // As the kernel: hash lookups per length, longest first, or the trie.
    let hit = match src {
        std::net::IpAddr::V4(a) if lens.v4_count == CLASS_LENS_USE_TRIE => l
            .src_v4
            .iter()
            .filter(|(p, k, _)| {
                k.class == class.to_be_bytes() && bits(&k.addr, &a.octets(), p - CLASS_BITS)
            })
            .max_by_key(|(p, _, _)| *p)
            .map(|(_, _, v)| *v),
        std::net::IpAddr::V6(a) if lens.v6_count == CLASS_LENS_USE_TRIE => l
            .src_v6
            .iter()
            .filter(|(p, k, _)| {
                k.class == class.to_be_bytes() && bits(&k.addr, &a.octets(), p - CLASS_BITS)
            })
            .max_by_key(|(p, _, _)| *p)
            .map(|(_, _, v)| *v),
        std::net::IpAddr::V4(a) => lens.v4[..usize::from(lens.v4_count)]
            .iter()
            .find_map(|&len| {
                let masked = ipnet::Ipv4Net::new(a, len).unwrap().trunc().addr().octets();
                l.src_hash_v4
                    .iter()
                    .find(|(k, _)| {
                        k.class == class && k.prefix_len == u32::from(len) && k.addr == masked
                    })
                    .map(|(_, v)| *v)
            }),
        std::net::IpAddr::V6(a) => lens.v6[..usize::from(lens.v6_count)]
            .iter()
            .find_map(|&len| {
                let masked = ipnet::Ipv6Net::new(a, len).unwrap().trunc().addr().octets();
                l.src_hash_v6
                    .iter()
                    .find(|(k, _)| {
                        k.class == class && k.prefix_len == u32::from(len) && k.addr == masked
                    })
                    .map(|(_, v)| *v)
            }),
    };
    match (class, hit) {
        (c, Some(v)) if c != 0 => (v.rule, v.action),
        _ => (0, l.config.default_action),
    }
}

fn action_code(a: RuleAction) -> u32 {
    match a {
        RuleAction::Allow => ACTION_ALLOW,
        RuleAction::Audit => ACTION_AUDIT,
        RuleAction::Deny => ACTION_DENY,
    }
}

prop_compose! {
    fn arb_policy()(rules in prop::collection::vec(
        (any::<bool>(), 1u16..60, 0u16..8, prop::sample::select(vec![
            "any", "a", "b", "10.1.0.0/16", "10.0.0.0/8", "fd00::/8", "10.0.0.0/9", "10.0.0.0/10",
            "10.0.0.0/11", "10.0.0.0/12", "10.0.0.0/13", "10.0.0.0/14", "10.0.0.0/30", "10.2.0.0/15",
        ]), 0u8..3),
        1..16,
    ), failsafe in prop::option::of(1u16..60), default_allow in any::<bool>()) -> String {
        let mut s = String::from("interfaces = [\"eth0\"]\n");
        s += if default_allow { "default = \"allow\"\n" } else { "default = \"deny\"\n" };
        s += &match failsafe { Some(p) => format!("failsafe_ports = [{p}]\n"), None => "failsafe_ports = []\n".into() };
        s += "[zones]\na = [\"10.0.0.0/8\", \"fd00::/8\"]\nb = [\"10.0.0.0/24\", \"192.0.2.0/24\"]\n";
        for (i, (tcp, first, len, from, action)) in rules.into_iter().enumerate() {
            s += &format!(
                "[[ingress]]\nname = \"r{i}\"\nproto = \"{}\"\nports = [\"{}-{}\"]\nfrom = [\"{from}\"]\naction = \"{}\"\n",
                if tcp { "tcp" } else { "udp" }, first, first + len, ["allow", "deny", "audit"][action as usize]
            );
        }
        s
    }
}

proptest! {
    /// For random policies and packets, the lowered maps decide exactly what the policy
    /// semantics (most specific prefix; deny > audit > allow; first rule) say.
    #[test]
    fn lowered_maps_agree_with_policy_semantics(
        text in arb_policy(),
        packets in prop::collection::vec((any::<bool>(), 1u16..70, prop::sample::select(vec![
            "10.0.0.1", "10.1.2.3", "10.2.0.1", "192.0.2.9", "198.51.100.1", "fd00::1", "2001:db8::1",
        ])), 32),
    ) {
        let policy = check("p.toml", &text).unwrap().policy;
        let l = lower(&policy);
        for (tcp, port, src) in packets {
            let src = src.parse().unwrap();
            let (rule, action) = model_decision(&policy, tcp, port, src);
            prop_assert_eq!(lowered_decision(&l, tcp, port, src), (rule, action_code(action)),
                "tcp={} port={} src={}\n{}", tcp, port, src, text);
        }
    }
}

#[test]
fn rules_and_port_slots_keep_their_indices_across_policy_changes() {
    let before = lowered(
        "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"a\"\nproto = \"tcp\"\nports = [80]\n\
         [[ingress]]\nname = \"b\"\nproto = \"tcp\"\nports = [81]\n[[ingress]]\nname = \"c\"\nproto = \"udp\"\nports = [53]\n",
    );
    let index = |l: &Lowered, name: &str| l.rules.iter().find(|r| r.name == name).map(|r| r.index);
    let slot = |l: &Lowered, port: &str| l.slots.iter().find(|s| s.port == port).map(|s| s.slot);
    assert_eq!(
        (
            index(&before, "a"),
            index(&before, "b"),
            index(&before, "c")
        ),
        (Some(4), Some(5), Some(6))
    );
    let after_policy = check(
        "p.toml",
        "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"new\"\nproto = \"tcp\"\nports = [8080]\n\
         [[ingress]]\nname = \"c\"\nproto = \"udp\"\nports = [53]\n[[ingress]]\nname = \"a\"\nproto = \"tcp\"\nports = [80]\n",
    )
    .unwrap()
    .policy;
    let after = super::lower_after(&after_policy, &before.rules, &before.slots);
    assert_eq!(index(&after, "a"), Some(4), "a keeps its counters");
    assert_eq!(index(&after, "c"), Some(6));
    assert_eq!(index(&after, "new"), Some(5), "b's index is reused");
    assert_eq!(after.fresh_rules, vec![5], "and zeroed before use");
    assert_eq!(slot(&after, "80"), slot(&before, "80"));
    assert_eq!(slot(&after, "53"), slot(&before, "53"));
    assert_eq!(after.fresh_slots.len(), 1, "8080 is new");
    // The lowered maps agree with the new indices.
    let direct = PORT_DIRECT | (ACTION_ALLOW << PORT_ACTION_SHIFT);
    assert_eq!(port_entry(&after, PROTO_IDX_TCP, 8080), direct | 5);
    assert_eq!(port_entry(&after, PROTO_IDX_TCP, 80), direct | 4);
}

#[test]
fn suspicious_policies_get_warnings() {
    let c = check(
        "p.toml",
        r#"interfaces = ["eth0"]
[zones]
internal = ["10.0.0.0/8"]
[[ingress]]
name = "public"
proto = "tcp"
ports = [9443, 9763]
[[ingress]]
name = "mgmt"
proto = "tcp"
ports = [9763]
from = ["internal"]
[[ingress]]
name = "tie-allow"
proto = "udp"
ports = [53]
from = ["internal"]
[[ingress]]
name = "tie-deny"
proto = "udp"
ports = ["50-60"]
from = ["internal"]
action = "deny"
[[ingress]]
name = "dead"
proto = "tcp"
ports = [9443]
action = "audit"
[[ingress]]
name = "alive"
proto = "tcp"
ports = [9443, 8443]
action = "deny"
"#,
    )
    .unwrap();
    let w = &c.warnings;
    let has = |place: &str, text: &str| w.iter().any(|l| l.starts_with(place) && l.contains(text));
    assert!(
        has(
            "p.toml:9:8:",
            "`public` allows tcp ports from any source that `mgmt` limits to internal"
        ),
        "{w:#?}"
    );
    assert!(
        has(
            "p.toml:14:8:",
            "rule `tie-allow` is fully shadowed (by tie-deny): it never matches"
        ),
        "{w:#?}"
    );
    assert!(
        has(
            "p.toml:25:8:",
            "rule `dead` is fully shadowed (by alive): it never matches"
        ),
        "{w:#?}"
    );
    assert!(
        has(
            "p.toml:30:8:",
            "rules `public` (allow) and `alive` (deny) both name 0.0.0.0/0 for tcp ports they share: `alive` wins"
        ),
        "{w:#?}"
    );
    assert!(
        !w.iter()
            .any(|l| l.contains("rule `alive` is fully shadowed")),
        "{w:#?}"
    );
    assert!(check("p.toml", MINIMAL).unwrap().warnings.is_empty());
}

// ---- every IP protocol, mapped addresses, reserved names ----

fn protocol_entry(l: &Lowered, number: u32) -> u32 {
    l.protos
        .iter()
        .find(|(p, _)| *p == number)
        .map_or(0, |&(_, v)| v)
}

#[test]
fn whole_protocol_rules_by_name_or_number_and_their_errors() {
    let c = check(
        "p.toml",
        r#"interfaces = ["eth0"]
[zones]
peers = ["198.18.7.0/24"]
[[ingress]]
name = "gre-peers"
proto = "gre"
from = ["peers"]
[[ingress]]
name = "esp"
proto = "50"
[[ingress]]
name = "no-sctp"
proto = "SCTP"
action = "deny"
"#,
    )
    .expect("valid");
    let p = &c.policy;
    assert!(p.ingress.is_empty());
    let by_name: Vec<(&str, &[u8])> = p
        .protocols
        .iter()
        .map(|r| (r.name.as_str(), r.protocols.as_slice()))
        .collect();
    assert_eq!(
        by_name,
        [
            ("gre-peers", &[47u8][..]),
            ("esp", &[50][..]),
            ("no-sctp", &[132][..]),
            ("icmp-echo", &[1, 58][..])
        ]
    );
    let l = lower(p);
    // GRE from one zone: a class with source entries; ESP from any: the rule itself.
    let gre = protocol_entry(&l, 47);
    assert_eq!(gre & PORT_DIRECT, 0);
    assert_ne!(gre & PORT_CLASS_MASK, 0);
    assert!(
        l.src_hash_v4
            .iter()
            .any(|(k, v)| k.class == gre && k.prefix_len == 24 && v.action == ACTION_ALLOW)
    );
    assert_eq!(protocol_entry(&l, 50) & PORT_DIRECT, PORT_DIRECT);
    assert_eq!(
        (protocol_entry(&l, 132) & PORT_ACTION_MASK) >> PORT_ACTION_SHIFT,
        ACTION_DENY
    );
    assert_eq!(protocol_entry(&l, 33), 0, "DCCP: no rule, the default");
    assert!(
        l.ports
            .iter()
            .all(|&(i, _)| i >> 16 <= PROTO_IDX_EGRESS_UDP),
        "no port entries for whole protocols"
    );

    let e = errors(
        r#"interfaces = ["eth0"]
[[ingress]]
name = "a"
proto = "gre"
ports = [1]
[[ingress]]
name = "b"
proto = "udplite"
ports = [5000]
[[ingress]]
name = "c"
proto = "256"
[[egress]]
name = "d"
proto = "sctp"
ports = [9]
[[ingress]]
name = "e"
proto = "tcp"
"#,
    );
    let expect = [
        ("p.toml:5:9:", "`gre` is judged as a whole protocol"),
        ("p.toml:8:9:", "UDP-Lite is judged as UDP"),
        ("p.toml:12:9:", "unknown proto `256`"),
        (
            "p.toml:15:9:",
            "egress rules judge \"tcp\" and \"udp\" only",
        ),
        ("p.toml:18:8:", "rule `e` has no ports"),
    ];
    for (at, what) in expect {
        assert!(
            e.iter().any(|l| l.starts_with(at) && l.contains(what)),
            "missing {at} {what} in {e:#?}"
        );
    }
    assert_eq!(e.len(), expect.len(), "{e:#?}");
}

#[test]
fn icmp_echo_is_a_rule_that_can_be_narrowed_or_removed() {
    let zones = "[zones]\nlan = [\"198.18.0.0/16\"]\n";
    let base = "interfaces = [\"eth0\"]\n";
    let l = lowered(&format!("{base}icmp_echo = [\"lan\"]\n{zones}"));
    let echo = protocol_entry(&l, 1);
    assert_eq!(echo, protocol_entry(&l, 58), "one rule for ICMP and ICMPv6");
    assert_eq!(echo & PORT_DIRECT, 0, "narrowed to a zone: a class");
    let none = lowered(&format!("{base}icmp_echo = []\n{zones}"));
    assert!(none.protos.is_empty(), "{:?}", none.protos);
    assert!(none.rules.iter().all(|r| r.name != "icmp-echo"));
    let e = errors(&format!("{base}icmp_echo = [\"dmz\"]\n{zones}"));
    assert!(
        e[0].contains("unknown zone `dmz` in rule `icmp-echo`"),
        "{e:?}"
    );
}

#[test]
fn reserved_rule_names_are_rejected() {
    for name in [
        "default",
        "failsafe",
        "reply",
        "egress-default",
        "icmp-echo",
    ] {
        let e = errors(&format!(
            "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"{name}\"\nproto = \"tcp\"\nports = [1]\n"
        ));
        assert!(
            e.len() == 1 && e[0].starts_with("p.toml:3:8:") && e[0].contains("reserved"),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn ipv4_mapped_networks_are_judged_as_ipv4() {
    let c = check(
        "p.toml",
        r#"interfaces = ["eth0"]
[zones]
mapped = ["::ffff:198.18.100.0/120"]
[[ingress]]
name = "a"
proto = "tcp"
ports = [25]
from = ["mapped", "::ffff:198.18.5.5"]
[[egress]]
name = "b"
proto = "tcp"
ports = [25]
to = ["::ffff:198.18.100.0/120"]
action = "deny"
[[ingress]]
name = "c"
proto = "tcp"
ports = [26]
from = ["::/64"]
"#,
    )
    .expect("valid");
    let p = &c.policy;
    let v4 = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    assert_eq!(p.zones["mapped"], [v4("198.18.100.0/24")]);
    assert_eq!(
        p.ingress[0].nets,
        [v4("198.18.5.5/32"), v4("198.18.100.0/24")]
    );
    assert_eq!(p.egress[0].nets, [v4("198.18.100.0/24")]);
    assert_eq!(p.ingress[1].nets, [v4("::/64")]);
    let warned = |at: &str, what: &str| {
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with(at) && w.contains(what)),
            "missing {at} {what} in {:#?}",
            c.warnings
        )
    };
    warned("p.toml:3:11:", "judged as the IPv4 network 198.18.100.0/24");
    warned("p.toml:8:19:", "judged as the IPv4 network 198.18.5.5/32");
    warned("p.toml:13:7:", "judged as the IPv4 network 198.18.100.0/24");
    warned(
        "p.toml:19:9:",
        "contains the IPv4-mapped range ::ffff:0.0.0.0/96",
    );
}

#[test]
fn line_index_places_offsets_like_a_scan_does() {
    let text = "a = 1\nbé = \"ü\"\n\n[x]\nlast";
    let index = super::LineIndex::new(text);
    for offset in 0..=text.len() + 3 {
        let o = text.floor_char_boundary(offset.min(text.len()));
        let before = &text[..o];
        let want = (
            before.matches('\n').count() + 1,
            before.rsplit('\n').next().unwrap().chars().count() + 1,
        );
        assert_eq!(index.line_col(text, offset), want, "offset {offset}");
    }
}

#[test]
fn a_policy_that_is_not_utf8_is_placed_at_its_first_bad_byte() {
    let dir = std::env::temp_dir().join(format!("guard-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.toml");
    std::fs::write(&path, b"interfaces = [\"eth0\"]\nmode = \"au\xffdit\"\n").unwrap();
    let err = super::read(&path).unwrap_err();
    assert_eq!(
        err,
        super::ReadError::NotUtf8(format!(
            "{}:2:11: the policy is not UTF-8 text (byte 0xff)",
            path.display()
        ))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_errors_are_all_reported_with_their_places() {
    // 20 000 invalid ports: each placed (the line index keeps this linear).
    let ports: Vec<String> = (0..20_000).map(|_| "70000".to_owned()).collect();
    let text = format!(
        "interfaces = [\"eth0\"]\n[[ingress]]\nname = \"a\"\nproto = \"tcp\"\nports = [\n{}\n]\n",
        ports.join(",\n")
    );
    let e = errors(&text);
    assert_eq!(e.len(), 20_000);
    assert!(
        e[19_999].starts_with("p.toml:20005:1: port 70000 is out of range"),
        "{}",
        e[19_999]
    );
}
