//! Warnings, every IP protocol, IPv4-mapped addresses, reserved names and error placement.

use super::*;

/// A whole-protocol rule among the ingress rules takes no place among the port rules the
/// lint reads: a warning after it still points at its own rule's name.
#[test]
fn warnings_after_a_whole_protocol_rule_point_at_their_rule() {
    let text = r#"interfaces = ["eth0"]
[[ingress]]
name = "gre-any"
proto = "gre"
[[ingress]]
name = "web"
proto = "tcp"
ports = [80]
[[ingress]]
name = "web-again"
proto = "tcp"
ports = [80]
"#;
    let c = check("p.toml", text).unwrap();
    let want =
        "p.toml:10:8: warning: rule `web-again` is fully shadowed (by web): it never matches";
    assert!(c.warnings.iter().any(|w| w == want), "{:#?}", c.warnings);
    // The daemon's path: the same warnings, said after the answer.
    let (early, lint) = check_before_lint("p.toml", text).unwrap();
    assert!(early.warnings.iter().all(|w| !w.contains("shadowed")));
    assert_eq!(
        lint.warnings(&early.policy, "p.toml", text),
        c.warnings[early.warnings.len()..]
    );
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
    let index = crate::policy::LineIndex::new(text);
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
    let err = crate::policy::read(&path).unwrap_err();
    assert_eq!(
        err,
        crate::policy::ReadError::NotUtf8(format!(
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

#[test]
fn contexts_are_validated_with_their_places() {
    let base = "interfaces = [\"eth0\"]\n[contexts]\n";
    let ok = check(
        "t.toml",
        &format!(
            "{base}deny = [\"/carbon/\"]\ntargets = [\"https://10.0.1.5:9443\", \"http://[2001:db8::5]:8080/\"]\ninsecure = true\ninterval_seconds = 30\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = ok.policy.contexts.expect("a [contexts] section");
    assert_eq!(c.deny, ["/carbon/"]);
    assert_eq!(c.allow.len(), 7, "the default end-user applications");
    assert_eq!(c.targets[1].port, 8080);
    assert!(c.insecure);
    assert_eq!(c.interval_seconds, 30);
    let e = errors_text(&format!("{base}deny = [\"carbon\"]\n"));
    assert!(
        e.contains("p.toml:3:9: context `carbon` must start with `/`"),
        "{e}"
    );
    let e = errors_text(&format!("{base}allow = [\"/a b\"]\n"));
    assert!(
        e.contains("p.toml:3:10: context `/a b` must be printable ASCII"),
        "{e}"
    );
    let e = errors_text(&format!("{base}targets = [\"ftp://x\"]\n"));
    assert!(
        e.contains("p.toml:3:12: ftp://x: a target is https://"),
        "{e}"
    );
    let e = errors_text(&format!("{base}interval_seconds = 1\n"));
    assert!(
        e.contains("interval_seconds must be between 10 and 86400"),
        "{e}"
    );
    let e = errors_text(&format!("{base}paths = [\"/x\"]\n"));
    assert!(e.contains("p.toml:3:1: unknown field `paths`"), "{e}");
    let e = errors_text(&format!("{base}deny = [\"/x\"]\nallow = [\"/x\"]\n"));
    assert!(e.contains("context `/x` is in both deny and allow"), "{e}");
    assert!(
        check("t.toml", "interfaces = [\"eth0\"]\n")
            .unwrap()
            .policy
            .contexts
            .is_none(),
        "absent: None"
    );
}

fn errors_text(text: &str) -> String {
    errors(text).join("\n")
}
