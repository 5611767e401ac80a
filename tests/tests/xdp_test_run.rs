//! Tier 2: the XDP program's verdicts and counters on crafted packets, through
//! BPF_PROG_TEST_RUN. Nothing is attached anywhere; needs root to load programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guard::datapath::KernelLog;
use guard_tests::{
    kernel::{XDP_DROP, XDP_PASS, load, load_logging},
    packets::*,
};

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const WEB: &str = r#"
mode = "enforce"
interfaces = ["unused0"]
default = "deny"
[[ingress]]
name = "web"
proto = "tcp"
ports = [80, "8000-8010"]
[[ingress]]
name = "dns"
proto = "udp"
ports = [53]
"#;

#[test]
fn allowed_tcp_passes_and_others_drop_with_exact_counters() {
    let g = load(WEB);
    let allowed = tcp4(ip4("192.0.2.1"), 80);
    let denied = tcp4(ip4("192.0.2.1"), 81);
    assert_eq!(g.verdict(&allowed), XDP_PASS);
    assert_eq!(g.verdict(&denied), XDP_DROP);
    assert_eq!(g.verdict(&denied), XDP_DROP);
    let c = g.counters();
    let web = c.rule("web").unwrap();
    assert_eq!((web.packets, web.bytes), (1, allowed.len() as u64));
    let default = c.rule("default").unwrap();
    assert_eq!(
        (default.packets, default.bytes, default.action.as_str()),
        (2, 2 * denied.len() as u64, "deny")
    );
    assert_eq!(c.reason("policy"), 2);
    assert_eq!(c.rule("failsafe").unwrap().packets, 0);
}

/// Every kernel-log level loads (the verifier walks the log code only when it is on; a
/// drop's log line once compiled to a copy it refused) and judges alike, IPv4 and IPv6.
#[test]
fn every_kernel_log_level_loads_and_judges_alike() {
    for (name, level) in KernelLog::NAMES {
        let g = load_logging(WEB, level);
        for (allowed, denied) in [
            (tcp4(ip4("192.0.2.1"), 80), tcp4(ip4("192.0.2.1"), 81)),
            (tcp6(ip6("2001:db8::1"), 80), tcp6(ip6("2001:db8::1"), 81)),
        ] {
            assert_eq!(g.verdict(&allowed), XDP_PASS, "kernel log {name}");
            assert_eq!(g.verdict(&denied), XDP_DROP, "kernel log {name}");
        }
        assert_eq!(g.counters().reason("policy"), 2, "kernel log {name}");
    }
}

#[test]
fn port_range_bounds_are_exact() {
    let g = load(WEB);
    for (port, want) in [
        (7999, XDP_DROP),
        (8000, XDP_PASS),
        (8005, XDP_PASS),
        (8010, XDP_PASS),
        (8011, XDP_DROP),
    ] {
        assert_eq!(
            g.verdict(&tcp4(ip4("192.0.2.1"), port)),
            want,
            "port {port}"
        );
    }
}

#[test]
fn udp_and_ipv6_are_judged_by_the_same_rules() {
    let g = load(WEB);
    assert_eq!(g.verdict(&udp4(ip4("192.0.2.1"), 53, b"q")), XDP_PASS);
    assert_eq!(
        g.verdict(&udp4(ip4("192.0.2.1"), 80, b"q")),
        XDP_DROP,
        "tcp rule must not open udp"
    );
    assert_eq!(g.verdict(&tcp6(ip6("2001:db8::1"), 80)), XDP_PASS);
    assert_eq!(g.verdict(&tcp6(ip6("2001:db8::1"), 443)), XDP_DROP);
    assert_eq!(g.verdict(&udp6(ip6("2001:db8::1"), 53)), XDP_PASS);
    assert_eq!(g.verdict(&udp6(ip6("2001:db8::1"), 54)), XDP_DROP);
    assert_eq!(g.packets("dns"), 2);
    assert_eq!(g.packets("web"), 1);
    assert_eq!(g.packets("default"), 3);
}

#[test]
fn most_specific_source_wins_and_deny_beats_allow_at_equal_prefix() {
    let g = load(
        r#"
interfaces = ["unused0"]
[zones]
internal = ["10.0.0.0/8", "fd00::/8"]
lab = ["10.1.0.0/16"]
[[ingress]]
name = "internal"
proto = "tcp"
ports = [9763]
from = ["internal"]
[[ingress]]
name = "no-lab"
proto = "tcp"
ports = [9763]
from = ["lab"]
action = "deny"
[[ingress]]
name = "lab-ok-here"
proto = "tcp"
ports = [9763]
from = ["10.1.2.0/24"]
[[ingress]]
name = "tie-allow"
proto = "tcp"
ports = [5000]
from = ["10.0.0.0/8"]
[[ingress]]
name = "tie-deny"
proto = "tcp"
ports = [5000]
from = ["internal"]
action = "deny"
"#,
    );
    let cases = [
        ("10.9.9.9", 9763, XDP_PASS),  // internal /8
        ("10.1.9.9", 9763, XDP_DROP),  // lab /16 deny beats internal /8
        ("10.1.2.3", 9763, XDP_PASS),  // /24 allow beats lab /16 deny
        ("192.0.2.1", 9763, XDP_DROP), // no zone: default deny
        ("10.0.0.1", 5000, XDP_DROP),  // same /8 in two rules: deny wins
    ];
    for (src, port, want) in cases {
        assert_eq!(g.verdict(&tcp4(ip4(src), port)), want, "{src} -> {port}");
    }
    assert_eq!(g.verdict(&tcp6(ip6("fd00::5"), 9763)), XDP_PASS);
    assert_eq!(g.verdict(&tcp6(ip6("2001:db8::5"), 9763)), XDP_DROP);
}

#[test]
fn failsafe_ports_pass_whatever_the_rules_unless_disabled() {
    let deny_ssh = r#"
interfaces = ["unused0"]
[[ingress]]
name = "no-ssh"
proto = "tcp"
ports = [22]
from = ["any"]
action = "deny"
"#;
    let g = load(deny_ssh);
    assert_eq!(
        g.verdict(&tcp4(ip4("192.0.2.1"), 22)),
        XDP_PASS,
        "failsafe 22 is on by default"
    );
    assert_eq!(
        g.verdict(&udp4(ip4("192.0.2.1"), 22, b"x")),
        XDP_DROP,
        "failsafe is TCP only"
    );
    assert_eq!(g.packets("failsafe"), 1);
    let g = load(&format!("failsafe_ports = []\n{deny_ssh}"));
    assert_eq!(g.verdict(&tcp4(ip4("192.0.2.1"), 22)), XDP_DROP);
}

#[test]
fn audit_mode_never_drops_but_counts_what_it_would() {
    let g = load(&WEB.replace("mode = \"enforce\"", "mode = \"audit\""));
    assert_eq!(g.verdict(&tcp4(ip4("192.0.2.1"), 81)), XDP_PASS);
    assert_eq!(g.verdict(&udp4(ip4("192.0.2.1"), 9, b"x")), XDP_PASS);
    let c = g.counters();
    let default = c.rule("default").unwrap();
    assert_eq!((default.packets, default.action.as_str()), (2, "audit"));
    assert_eq!(
        c.reason("policy"),
        2,
        "would-drop packets are counted by reason too"
    );
}

#[test]
fn per_rule_audit_action_passes_and_counts() {
    let g = load(
        r#"
interfaces = ["unused0"]
default = "allow"
[[ingress]]
name = "trial-block"
proto = "tcp"
ports = [3306]
action = "audit"
"#,
    );
    assert_eq!(g.verdict(&tcp4(ip4("192.0.2.1"), 3306)), XDP_PASS);
    assert_eq!(
        g.verdict(&tcp4(ip4("192.0.2.1"), 3307)),
        XDP_PASS,
        "default allow"
    );
    assert_eq!(g.packets("trial-block"), 1);
    assert_eq!(g.packets("default"), 1);
}

#[test]
fn non_ip_and_vlan_and_later_fragments() {
    let g = load(WEB);
    assert_eq!(g.verdict(&arp()), XDP_PASS);
    assert_eq!(g.verdict(&tcp4_vlan(ip4("192.0.2.1"), 80)), XDP_PASS);
    assert_eq!(g.verdict(&tcp4_vlan(ip4("192.0.2.1"), 81)), XDP_DROP);
    // A later fragment (offset 185 * 8) of a UDP datagram to a denied port: no ports to judge.
    let mut frag = udp4(ip4("192.0.2.1"), 9, &[0; 32]);
    frag[IP_OFFSET + 6] = 0x00;
    frag[IP_OFFSET + 7] = 185;
    assert_eq!(g.verdict(&frag), XDP_PASS);
    let c = g.counters();
    assert_eq!(c.reason("not_ip"), 1);
    assert_eq!(c.reason("fragment_passed"), 1);
}

#[test]
fn truncated_headers_drop_in_enforce_and_pass_in_audit() {
    let full = tcp4(ip4("192.0.2.1"), 80);
    let cut = &full[..IP_OFFSET + 20 + 10]; // TCP header cut at 10 of 20 bytes
    let g = load(WEB);
    assert_eq!(g.verdict(cut), XDP_DROP);
    let mut bad_ihl = full.clone();
    bad_ihl[IP_OFFSET] = 0x44; // IHL 4 < 5
    assert_eq!(g.verdict(&bad_ihl), XDP_DROP);
    assert_eq!(g.counters().reason("malformed"), 2);
    assert_eq!(
        g.packets("web"),
        0,
        "malformed packets are not credited to a rule"
    );
    let g = load(&WEB.replace("mode = \"enforce\"", "mode = \"audit\""));
    assert_eq!(g.verdict(cut), XDP_PASS);
}

/// Issue K-6: commit-confirm kept by the kernel. A provisional switch is judged by the new
/// policy until its deadline and by the previous one after it, with no userspace action;
/// a confirmed one stays.
#[test]
fn a_provisional_policy_ends_at_its_deadline_in_the_kernel() {
    let mut g = load(WEB);
    let to_81 = tcp4(ip4("192.0.2.1"), 81);
    assert_eq!(g.verdict(&to_81), XDP_DROP);
    let opened = WEB.replace(
        "ports = [80, \"8000-8010\"]",
        "ports = [80, 81, \"8000-8010\"]",
    );
    let now = guard::datapath::monotonic_ns();
    g.switch_until(&opened, Some(now + 400_000_000));
    assert_eq!(
        g.verdict(&to_81),
        XDP_PASS,
        "before the deadline: the new policy"
    );
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(g.verdict(&to_81), XDP_DROP, "after it: the previous policy");
    assert_eq!(
        g.verdict(&tcp4(ip4("192.0.2.1"), 80)),
        XDP_PASS,
        "the previous policy whole"
    );
    let record = g.guard.active_record().unwrap();
    assert_eq!(
        record.in_force(guard::datapath::monotonic_ns()),
        record.fallback
    );
    assert!(
        !g.guard.verify(&g.lowered(&opened)).unwrap().is_empty(),
        "the drift check sees the fallback"
    );

    // Confirmed before its deadline: it stays.
    let mut g = load(WEB);
    g.switch_until(&opened, Some(guard::datapath::monotonic_ns() + 300_000_000));
    g.guard.confirm().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(g.verdict(&to_81), XDP_PASS);
    assert!(g.guard.verify(&g.lowered(&opened)).unwrap().is_empty());
}

/// IPv4 sources are judged by the direct tables (array reads per /16 and /24) where they
/// can be, and by the source hashes where a /24 holds longer prefixes or the tables are
/// full. Every prefix length from /0 to /32, nested around one address, a switch that
/// moves the rows, and more split /16s than the tables hold: the kernel's verdict is the
/// policy's (userspace evaluator) for sources on every boundary.
#[test]
fn direct_source_tables_give_the_policys_verdict_on_every_boundary() {
    let nested = |extra: &str| {
        let mut s = String::from(
            "interfaces = [\"unused0\"]\ndefault = \"deny\"\nfailsafe_ports = []\n[[ingress]]\nname = \"all\"\nproto = \"tcp\"\nports = [7000]\nfrom = [\"0.0.0.0/0\"]\naction = \"deny\"\n",
        );
        for len in [4u8, 8, 12, 15, 16, 17, 20, 23, 24, 25, 28, 31, 32] {
            let net = ipnet::Ipv4Net::new(ip4("10.1.2.3"), len).unwrap().trunc();
            let action = if len % 2 == 0 { "allow" } else { "deny" };
            s += &format!(
                "[[ingress]]\nname = \"n{len}\"\nproto = \"tcp\"\nports = [7000, 7001]\nfrom = [\"{net}\"]\naction = \"{action}\"\n"
            );
        }
        s + extra
    };
    // 300 /16s split by a /24 each: more than the tables' blocks.
    let mut many = String::new();
    for i in 0..300u32 {
        many += &format!(
            "[[ingress]]\nname = \"m{i}\"\nproto = \"tcp\"\nports = [7002]\nfrom = [\"172.{}.{}.0/24\", \"172.{}.0.0/16\"]\n",
            16 + i / 256,
            i % 256,
            16 + i / 256,
        );
    }
    let first = nested("");
    let second = nested(&many).replace("\"10.1.2.0/24\"", "\"10.1.0.0/24\"");
    verdicts_follow_the_evaluator(&[&first, &second, &first], |text| {
        boundaries(text, &[7000, 7001, 7002])
    });
}

/// Sources on every boundary of every network written in `text` (the first and last two
/// addresses of each, and those just outside it), each with every port of `ports`.
fn boundaries(text: &str, ports: &[u16]) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    for net in text
        .split('"')
        .filter_map(|s| s.parse::<ipnet::IpNet>().ok())
    {
        let edges: Vec<IpAddr> = match net {
            ipnet::IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                [
                    lo.wrapping_sub(1),
                    lo,
                    lo + 1,
                    hi.wrapping_sub(1),
                    hi,
                    hi.wrapping_add(1),
                ]
                .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
                .to_vec()
            }
            ipnet::IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                [
                    lo.wrapping_sub(1),
                    lo,
                    lo + 1,
                    hi.wrapping_sub(1),
                    hi,
                    hi.wrapping_add(1),
                ]
                .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
                .to_vec()
            }
        };
        for a in edges {
            out.extend(ports.iter().map(|&port| (a, port)));
        }
    }
    out
}

/// Loads `texts[0]`, switches through the rest, and under each policy checks the kernel's
/// verdict against the policy evaluator's for every (source, TCP port) of `probes(text)`,
/// and that the maps hold what the policy says (no drift).
fn verdicts_follow_the_evaluator(texts: &[&str], probes: impl Fn(&str) -> Vec<(IpAddr, u16)>) {
    use guard::policy::{self, eval, model::Proto};
    let mut g = load(texts[0]);
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            g.switch(text);
        }
        let checked = policy::check("t.toml", text).unwrap().policy;
        let probes = probes(text);
        assert!(probes.len() > 100);
        for (src, port) in probes {
            let want = if eval::inbound(&checked, Proto::Tcp, port, src).passes() {
                XDP_PASS
            } else {
                XDP_DROP
            };
            let packet = match src {
                IpAddr::V4(a) => tcp4(a, port),
                IpAddr::V6(a) => tcp6(a, port),
            };
            assert_eq!(g.verdict(&packet), want, "policy {i}: {src} -> {port}");
        }
        assert!(
            g.guard.verify(&g.lowered(text)).unwrap().is_empty(),
            "policy {i}: no drift"
        );
    }
}

/// A rule or port that a new policy names takes over the counter slot of one the old policy
/// had: it starts at zero, on every CPU (the slots are zeroed in one batch).
#[test]
fn counters_of_new_rules_and_ports_start_at_zero() {
    let policy = |rule: &str, port: u16| {
        format!(
            "interfaces = [\"unused0\"]\ndefault = \"deny\"\nfailsafe_ports = []\n[[ingress]]\nname = \"{rule}\"\nproto = \"tcp\"\nports = [{port}]\n"
        )
    };
    let mut g = load(&policy("old", 8080));
    for _ in 0..3 {
        assert_eq!(g.verdict(&tcp4(ip4("192.0.2.1"), 8080)), XDP_PASS);
    }
    let c = g.counters();
    assert_eq!(c.rule("old").unwrap().packets, 3);
    assert_eq!(c.port("tcp", "8080").unwrap().attempted, 3);
    g.switch(&policy("new", 9090));
    let c = g.counters();
    assert!(c.rule("old").is_none());
    assert_eq!(c.rule("new").unwrap().packets, 0, "{:?}", c.rules);
    assert_eq!(c.port("tcp", "9090").unwrap().attempted, 0, "{:?}", c.ports);
    assert_eq!(g.verdict(&tcp4(ip4("192.0.2.1"), 9090)), XDP_PASS);
    let c = g.counters();
    assert_eq!(c.rule("new").unwrap().packets, 1);
    assert_eq!(c.port("tcp", "9090").unwrap().attempted, 1);
}

/// The drift check reads the direct tables back: an entry changed behind guard's back is
/// named, and the verdict it changes is the one the check warns of.
#[test]
fn the_drift_check_sees_a_direct_table_changed_behind_guards_back() {
    use aya::maps::Array;
    use guard_common::{DIRECT_NONE, DIRECT16_LEN, gen_index, maps};
    let text = r#"
interfaces = ["unused0"]
default = "deny"
failsafe_ports = []
[[ingress]]
name = "lab"
proto = "tcp"
ports = [7000]
from = ["10.1.0.0/16"]
"#;
    let mut g = load(text);
    let src = tcp4(ip4("10.1.2.3"), 7000);
    assert_eq!(g.verdict(&src), XDP_PASS);
    assert!(g.guard.verify(&g.lowered(text)).unwrap().is_empty());
    let generation = g.guard.active_record().unwrap().generation & 1;
    let map = g
        .guard
        .raw_map_mut(maps::SRC_DIRECT16)
        .expect("direct tables");
    let mut first = Array::<_, u32>::try_from(map).expect("array");
    let index = gen_index(generation, DIRECT16_LEN, 0x0a01);
    assert_ne!(first.get(&index, 0).unwrap(), DIRECT_NONE);
    first.set(index, DIRECT_NONE, 0).unwrap();
    assert_eq!(g.verdict(&src), XDP_DROP, "the changed table answers");
    let found = g.guard.verify(&g.lowered(text)).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with(maps::SRC_DIRECT16), "{found:?}");
}

/// IPv6 sources in a zone are found in the generation's two-choice table (two inlined array
/// reads), which holds the source hash's entries again. Nested prefixes from /16 to /128,
/// a switch that rewrites the table, and many prefixes: the kernel's verdict is the
/// policy's on every boundary.
#[test]
fn the_ipv6_source_table_gives_the_policys_verdict_on_every_boundary() {
    let nested = |shift: u16, many: usize| {
        let mut s =
            String::from("interfaces = [\"unused0\"]\ndefault = \"deny\"\nfailsafe_ports = []\n");
        for (i, len) in [16u8, 32, 40, 48, 56, 64, 96, 127, 128]
            .into_iter()
            .enumerate()
        {
            let addr: Ipv6Addr = format!("2001:db8:{shift:x}:4::9").parse().unwrap();
            let net = ipnet::Ipv6Net::new(addr, len).unwrap().trunc();
            let action = if i % 2 == 0 { "allow" } else { "deny" };
            s += &format!(
                "[[ingress]]\nname = \"n{len}\"\nproto = \"tcp\"\nports = [7000, 7001]\nfrom = [\"{net}\"]\naction = \"{action}\"\n"
            );
        }
        for i in 0..many {
            s += &format!(
                "[[ingress]]\nname = \"m{i}\"\nproto = \"tcp\"\nports = [{}]\nfrom = [\"fd00:{:x}:{:x}::/48\"]\n",
                7002 + i % 3,
                i / 256,
                i % 256
            );
        }
        s
    };
    let (first, second) = (nested(1, 300), nested(2, 2000));
    verdicts_follow_the_evaluator(&[&first, &second, &first], |text| {
        boundaries(text, &[7000, 7001, 7002, 7003])
    });
}

/// Without its IPv6 table (a generation whose entries did not fit has none), a generation's
/// IPv6 sources are judged by the source hash, alike; and a table slot whose rule was
/// corrupted behind guard's back fails closed.
#[test]
fn ipv6_sources_are_judged_alike_without_the_table_and_a_corrupt_slot_fails_closed() {
    use aya::maps::Array;
    use guard_common::{GuardConfig, SrcBucketV6, maps};
    let text = r#"
interfaces = ["unused0"]
default = "deny"
failsafe_ports = []
[[ingress]]
name = "lab"
proto = "tcp"
ports = [7000]
from = ["2001:db8:1::/48"]
[[ingress]]
name = "no-lab-host"
proto = "tcp"
ports = [7000]
from = ["2001:db8:1::66/128"]
action = "deny"
"#;
    let mut g = load(text);
    let inside = tcp6(ip6("2001:db8:1::5"), 7000);
    let host = tcp6(ip6("2001:db8:1::66"), 7000);
    let outside = tcp6(ip6("2001:db8:2::5"), 7000);
    let verdicts =
        |g: &guard_tests::kernel::Loaded| [&inside, &host, &outside].map(|p| g.verdict(p));
    assert_eq!(verdicts(&g), [XDP_PASS, XDP_DROP, XDP_DROP]);
    // Every filled slot's action corrupted behind guard's back.
    let map = g.guard.raw_map_mut(maps::SRC_TABLE_V6).expect("table");
    let mut table = Array::<_, SrcBucketV6>::try_from(map).expect("table array");
    let mut corrupted = 0;
    for index in 0..table.len() {
        let mut bucket = table.get(&index, 0).unwrap();
        let mut changed = false;
        for slot in &mut bucket.0 {
            if slot.class != 0 {
                slot.rule.action = 9;
                changed = true;
            }
        }
        if changed {
            table.set(index, bucket, 0).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted > 0);
    // The generation without its table: the hash map answers, the corrupt table unread.
    let generation = g.guard.active_record().unwrap().generation & 1;
    let set_bits = |g: &mut guard_tests::kernel::Loaded, bits: Option<u32>| {
        let map = g.guard.raw_map_mut(maps::CONFIG).expect("config map");
        let mut config = Array::<_, GuardConfig>::try_from(map).expect("config array");
        let current = config.get(&generation, 0).unwrap();
        let bits = bits.unwrap_or(current.table_v6_bits);
        config
            .set(
                generation,
                GuardConfig {
                    table_v6_bits: bits,
                    ..current
                },
                0,
            )
            .unwrap();
        current.table_v6_bits
    };
    let bits = set_bits(&mut g, Some(0));
    assert_ne!(bits, 0, "the generation had a table");
    assert_eq!(
        verdicts(&g),
        [XDP_PASS, XDP_DROP, XDP_DROP],
        "the hash map answers"
    );
    assert_eq!(g.counters().reason("bad_action"), 0);
    // With it: the corrupt slot's unknown action fails closed.
    set_bits(&mut g, Some(bits));
    assert_eq!(
        g.verdict(&inside),
        XDP_DROP,
        "an unknown action fails closed"
    );
    assert!(g.counters().reason("bad_action") > 0);
    assert!(
        !g.guard.verify(&g.lowered(text)).unwrap().is_empty(),
        "and the drift check sees it"
    );
}
