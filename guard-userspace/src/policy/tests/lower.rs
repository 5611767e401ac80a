//! Step 3: lowering, checked against the map layout and the reference semantics.

use super::*;

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
    policy: &crate::policy::Policy,
    tcp: bool,
    port: u16,
    src: std::net::IpAddr,
) -> (u32, RuleAction) {
    let proto = if tcp {
        crate::policy::model::Proto::Tcp
    } else {
        crate::policy::model::Proto::Udp
    };
    let d = crate::policy::eval::inbound(policy, proto, port, src);
    let rule = match d.decider {
        crate::policy::eval::Decider::Failsafe => 1,
        crate::policy::eval::Decider::Rule { index, .. } => RULE_FIRST_POLICY + index as u32,
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
    let after = crate::policy::lower_after(&after_policy, &before.rules, &before.slots);
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
