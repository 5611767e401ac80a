//! Tier 2: 10^5 random and mutated packets through the real XDP program (BPF_PROG_TEST_RUN),
//! each verdict compared with an independent pure-Rust model of the parser and the policy
//! semantics. The model reads the validated policy directly, not the lowered maps.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use guard::policy::{
    self, eval,
    model::{Mode, Policy, Proto, RuleAction},
};
use guard_tests::{
    kernel::{Loaded, XDP_DROP, XDP_PASS, load},
    packets::{Ext, L4, TCP_ACK, TCP_RST, TCP_SYN, arp, ipv4, ipv6, with_vlans},
};
use proptest::prelude::*;

const POLICY: &str = r#"
mode = "enforce"
interfaces = ["unused0"]
default = "deny"
failsafe_ports = [22]
icmp_echo = ["internal"]
[zones]
internal = ["10.0.0.0/8", "fd00::/8"]
lab      = ["10.1.0.0/16", "fd00:1::/32"]
dmz      = ["203.0.113.0/24", "2001:db8:d::/48"]
[[ingress]]
name = "public-https"
proto = "tcp"
ports = [443, 9443]
[[ingress]]
name = "mgmt"
proto = "tcp"
ports = [9763, "9999-10001"]
from = ["internal"]
[[ingress]]
name = "mgmt-not-lab"
proto = "tcp"
ports = ["10000-10005"]
from = ["lab"]
action = "deny"
[[ingress]]
name = "mgmt-dmz"
proto = "tcp"
ports = [9763]
from = ["dmz", "10.1.2.0/24"]
action = "deny"
[[ingress]]
name = "dns"
proto = "udp"
ports = [53]
from = ["internal", "dmz"]
[[ingress]]
name = "trial"
proto = "udp"
ports = ["5000-5010"]
from = ["any"]
action = "audit"
[[ingress]]
name = "ssh-deny"
proto = "tcp"
ports = [22]
from = ["dmz"]
action = "deny"
[[ingress]]
name = "gre-lab"
proto = "gre"
from = ["lab"]
[[ingress]]
name = "no-esp-dmz"
proto = "esp"
from = ["dmz"]
action = "deny"
[[ingress]]
name = "esp"
proto = "esp"
"#;

/// Nine prefix lengths on one port (more than the hash path takes): the LPM-trie path.
fn policy_text() -> String {
    let mut s = POLICY.to_owned();
    for len in 8..=16u8 {
        let action = if len % 2 == 0 { "allow" } else { "deny" };
        s += &format!(
            "[[ingress]]\nname = \"deep{len}\"\nproto = \"tcp\"\nports = [7000]\nfrom = [\"10.0.0.0/{len}\", \"fd00::/{len}\"]\naction = \"{action}\"\n"
        );
    }
    s
}

// ---- the model ----

#[derive(Debug, PartialEq, Eq)]
enum Judged {
    Malformed,
    Unsupported,
    /// Not IP, or ICMP other than an echo request: passed unjudged.
    Other,
    LaterFragment,
    Flow {
        tcp: bool,
        src: IpAddr,
        dport: u16,
    },
    /// A protocol judged as a whole (ICMP echo requests included).
    Whole {
        proto: u8,
        src: IpAddr,
    },
}

/// ICMP (1, type 8) and ICMPv6 (58, type 128) echo requests are judged; other ICMP passes.
fn icmp(p: &[u8], at: usize, proto: u8, src: IpAddr) -> Judged {
    let Some(h) = p.get(at..at + 4) else {
        return Judged::Malformed;
    };
    if h[0] == if proto == 1 { 8 } else { 128 } {
        Judged::Whole { proto, src }
    } else {
        Judged::Other
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses as documented in docs/policy.md: Ethernet, up to 2 VLAN tags, IPv4 (IHL, total
/// length, fragments), IPv6 with up to 8 extension headers, TCP/UDP/UDP-Lite by port, ICMP
/// echo requests and every other protocol as a whole.
fn model_parse(p: &[u8]) -> Judged {
    let Some(mut ethertype) = be16(p, 12) else {
        return Judged::Malformed;
    };
    let mut at = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        match be16(p, at + 2) {
            Some(t) => ethertype = t,
            None => return Judged::Malformed,
        }
        at += 4;
    }
    match ethertype {
        0x8100 | 0x88a8 => Judged::Unsupported,
        0x0800 => {
            let Some(ip) = p.get(at..at + 20) else {
                return Judged::Malformed;
            };
            let ihl = usize::from(ip[0] & 0xf) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || usize::from(u16::from_be_bytes([ip[2], ip[3]])) < ihl
            {
                return Judged::Malformed;
            }
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let later = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
            match (ip[9], later) {
                (6 | 17 | 136 | 1 | 58, true) => Judged::LaterFragment,
                (6, false) => transport(p, at + ihl, true, src),
                (17 | 136, false) => transport(p, at + ihl, false, src),
                (1 | 58, false) => icmp(p, at + ihl, ip[9], src),
                (proto, _) => Judged::Whole { proto, src },
            }
        }
        0x86dd => {
            let Some(ip) = p.get(at..at + 40) else {
                return Judged::Malformed;
            };
            if ip[0] >> 4 != 6 {
                return Judged::Malformed;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
            if src.to_ipv4_mapped().is_some() {
                return Judged::Malformed;
            }
            let src = IpAddr::V6(src);
            let mut next = ip[6];
            at += 40;
            let mut walked = 0;
            loop {
                match next {
                    6 => return transport(p, at, true, src),
                    17 | 136 => return transport(p, at, false, src),
                    1 | 58 => return icmp(p, at, next, src),
                    0 | 43 | 60 | 44 | 51 => {
                        if walked == 8 {
                            return Judged::Unsupported;
                        }
                        let Some(ext) = p.get(at..at + 4) else {
                            return Judged::Malformed;
                        };
                        let len = match next {
                            44 if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 => {
                                return match ext[0] {
                                    6 | 17 | 136 | 1 | 58 | 0 | 43 | 60 | 44 | 51 => {
                                        Judged::LaterFragment
                                    }
                                    proto => Judged::Whole { proto, src },
                                };
                            }
                            44 => 8,
                            51 => (usize::from(ext[1]) + 2) * 4,
                            _ => (usize::from(ext[1]) + 1) * 8,
                        };
                        next = ext[0];
                        at += len;
                        walked += 1;
                    }
                    proto => return Judged::Whole { proto, src },
                }
            }
        }
        _ => Judged::Other,
    }
}

fn transport(p: &[u8], at: usize, tcp: bool, src: IpAddr) -> Judged {
    let need = if tcp { 20 } else { 8 };
    let Some(h) = p.get(at..at + need) else {
        return Judged::Malformed;
    };
    if tcp && h[12] >> 4 < 5 {
        return Judged::Malformed;
    }
    Judged::Flow {
        tcp,
        src,
        dport: u16::from_be_bytes([h[2], h[3]]),
    }
}

/// The rule (by name) and action the policy gives a flow: the reference semantics
/// (`guard::policy::eval`), which the kernel must match.
fn model_decide(policy: &Policy, tcp: bool, src: IpAddr, dport: u16) -> (String, RuleAction) {
    let proto = if tcp { Proto::Tcp } else { Proto::Udp };
    let d = eval::inbound(policy, proto, dport, src);
    (d.decider.name().to_owned(), d.action)
}

/// The rule and action the policy gives a packet of a protocol judged as a whole.
fn model_decide_whole(policy: &Policy, proto: u8, src: IpAddr) -> (String, RuleAction) {
    let d = eval::inbound_protocol(policy, proto, src);
    (d.decider.name().to_owned(), d.action)
}

/// The verdict and the rule credited (None when no rule is).
fn model(policy: &Policy, p: &[u8]) -> (u32, Option<String>) {
    let enforce = policy.mode == Mode::Enforce;
    match model_parse(p) {
        Judged::Malformed | Judged::Unsupported => {
            (if enforce { XDP_DROP } else { XDP_PASS }, None)
        }
        Judged::Other | Judged::LaterFragment => (XDP_PASS, None),
        Judged::Flow { tcp, src, dport } => {
            let (rule, action) = model_decide(policy, tcp, src, dport);
            let drop = enforce && action == RuleAction::Deny;
            (if drop { XDP_DROP } else { XDP_PASS }, Some(rule))
        }
        Judged::Whole { proto, src } => {
            let (rule, action) = model_decide_whole(policy, proto, src);
            let drop = enforce && action == RuleAction::Deny;
            (if drop { XDP_DROP } else { XDP_PASS }, Some(rule))
        }
    }
}

// ---- packets ----

const SOURCES: [&str; 12] = [
    "10.0.0.1",
    "10.1.0.9",
    "10.1.2.3",
    "10.200.0.1",
    "203.0.113.7",
    "192.0.2.1",
    "fd00::1",
    "fd00:1::5",
    "fd00:2::1",
    "2001:db8:d::9",
    "2001:db8:e::1",
    "::1",
];
const PORTS: [u16; 23] = [
    7000, 22, 23, 53, 54, 442, 443, 444, 9443, 9762, 9763, 9764, 9998, 9999, 10000, 10001, 10002,
    10005, 10006, 4999, 5000, 5010, 5011,
];

fn arb_ext() -> impl Strategy<Value = Ext> {
    prop_oneof![
        (0u8..4).prop_map(Ext::HopByHop),
        (0u8..4).prop_map(Ext::Routing),
        (0u8..4).prop_map(Ext::DestOpts),
        (prop_oneof![Just(0u16), 1u16..200], any::<bool>()).prop_map(|(o, m)| Ext::Fragment(o, m)),
        (0u8..6).prop_map(Ext::Ah),
    ]
}

fn arb_l4() -> impl Strategy<Value = L4> {
    let port = prop_oneof![prop::sample::select(&PORTS[..]), any::<u16>()];
    prop_oneof![
        4 => (port.clone(), prop::sample::select(vec![TCP_SYN, TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST, 0])).prop_map(|(dport, flags)| L4::Tcp { sport: 40000, dport, flags }),
        3 => port.clone().prop_map(|dport| L4::Udp { sport: 40000, dport, payload: vec![1, 2, 3] }),
        2 => (prop::sample::select(vec![1u8, 58, 47, 50, 132, 33, 59]), prop::sample::select(vec![0u8, 3, 8, 128, 135])).prop_map(|(proto, first)| L4::Other { proto, bytes: vec![first, 0, 0, 0, 0, 0, 0, 0] }),
        1 => port.clone().prop_map(|dport| { let mut b = vec![0u8; 8]; b[0..2].copy_from_slice(&40000u16.to_be_bytes()); b[2..4].copy_from_slice(&dport.to_be_bytes()); L4::Other { proto: 136, bytes: b } }),
    ]
}

/// A well-formed packet, then perhaps cut short or with a byte overwritten.
fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
    let src = prop::sample::select(&SOURCES[..]).prop_map(|s| s.parse::<IpAddr>().unwrap());
    let base = (
        src,
        arb_l4(),
        0u8..=10,
        prop_oneof![4 => Just((0u16, false)), 1 => (0u16..50, any::<bool>())],
        prop::collection::vec(arb_ext(), 0..10),
        prop::collection::vec(prop::sample::select(vec![0x8100u16, 0x88a8]), 0..4),
        0u8..20,
    )
        .prop_map(|(src, l4, words, frag, exts, vlans, kind)| {
            let frame = match (src, kind) {
                (_, 0) => arp(),
                (IpAddr::V4(s), _) => ipv4(s, Ipv4Addr::new(198, 18, 0, 1), words, frag, &l4),
                (IpAddr::V6(s), _) => ipv6(s, "fd00::1".parse().unwrap(), &exts, &l4),
            };
            with_vlans(&frame, &vlans)
        });
    (
        base,
        0u8..10,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(mut p, mutate, at, cut, byte)| {
            match mutate {
                0..=1 => {
                    let at = at.index(p.len().min(90));
                    p[at] = byte;
                }
                2..=3 => p.truncate(14 + cut.index(p.len() - 13)),
                _ => {}
            }
            p
        })
}

thread_local! {
    static ENFORCE: RefCell<Option<(Loaded, Policy)>> = const { RefCell::new(None) };
    static AUDIT: RefCell<Option<(Loaded, Policy)>> = const { RefCell::new(None) };
}

fn with_program<T>(audit: bool, f: impl FnOnce(&Loaded, &Policy) -> T) -> T {
    let cell = if audit { &AUDIT } else { &ENFORCE };
    cell.with(|c| {
        let mut c = c.borrow_mut();
        let (loaded, policy) = c.get_or_insert_with(|| {
            let text = if audit {
                policy_text().replace("\"enforce\"", "\"audit\"")
            } else {
                policy_text()
            };
            (
                load(&text),
                policy::check("model.toml", &text).unwrap().policy,
            )
        });
        f(loaded, policy)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn kernel_verdicts_match_the_model_enforce(p in arb_packet()) {
        let (kernel, (want, _)) = with_program(false, |g, pol| (g.verdict(&p), model(pol, &p)));
        prop_assert_eq!(kernel, want, "packet {:02x?}\nmodel parse {:?}", p, model_parse(&p));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn audit_mode_passes_every_packet(p in arb_packet()) {
        let kernel = with_program(true, |g, _| g.verdict(&p));
        prop_assert_eq!(kernel, XDP_PASS);
    }
}

/// Policy changes through the double-buffered maps: a cycle of variants (zones widened and
/// narrowed, rules added and removed, the trie-path rules dropped and restored, audit mode,
/// default allow), each switched in without reloading, and after every switch 2 000 packets
/// judged by the kernel exactly as the model judges them under the variant now in force.
/// Every generation is rewritten several times, so stale entries of an older policy would
/// show up as a wrong verdict.
#[test]
fn policy_switches_match_the_model() {
    use proptest::{strategy::ValueTree as _, test_runner::TestRunner};
    let variants: Vec<String> = vec![
        policy_text(),
        POLICY.to_owned(),
        policy_text().replace(
            "\"10.0.0.0/8\", \"fd00::/8\"",
            "\"10.0.0.0/9\", \"fd00::/9\", \"192.0.2.0/24\"",
        ),
        policy_text().replace(
            "ports = [443, 9443]",
            "ports = [443, 9443, 8443, \"20-25\"]",
        ),
        policy_text().replace("\"enforce\"", "\"audit\""),
        POLICY
            .replace("default = \"deny\"", "default = \"allow\"")
            .replace(
                "ports = [9763]\nfrom = [\"dmz\", \"10.1.2.0/24\"]",
                "ports = [9763, 53]\nfrom = [\"dmz\", \"10.1.2.0/25\", \"fd00:1:2::/64\"]",
            ),
    ];
    for (i, a) in variants.iter().enumerate() {
        assert!(
            variants[i + 1..].iter().all(|b| a != b),
            "variant {i} is a copy"
        );
    }
    let mut kernel = load(&variants[0]);
    let mut runner = TestRunner::deterministic();
    let strategy = arb_packet();
    let order = [1, 2, 0, 3, 5, 4, 2, 1, 5, 0, 3, 0];
    for (step, &v) in order.iter().enumerate() {
        let writes = kernel.switch(&variants[v]);
        let policy = policy::check("model.toml", &variants[v]).unwrap().policy;
        for _ in 0..2_000 {
            let p = strategy.new_tree(&mut runner).unwrap().current();
            let (want, _) = model(&policy, &p);
            assert_eq!(
                kernel.verdict(&p),
                want,
                "step {step} (variant {v}, {writes} map writes): packet {p:02x?}"
            );
        }
    }
}

/// The bytes a judged packet counts (docs/policy.md): up to the end of the IP packet as its header
/// states it, link header included, never more than the frame.
fn counted_len(p: &[u8]) -> u64 {
    let mut at = 14;
    while matches!(be16(p, at - 2), Some(0x8100 | 0x88a8)) {
        at += 4;
    }
    let ip_end = match be16(p, at - 2) {
        Some(0x0800) => be16(p, at + 2).map_or(0, |l| at + usize::from(l)),
        Some(0x86dd) => {
            be16(p, at + 4).map_or(0, |l| if l == 0 { 0 } else { at + 40 + usize::from(l) })
        }
        _ => 0,
    };
    (if ip_end == 0 || ip_end > p.len() {
        p.len()
    } else {
        ip_end
    }) as u64
}

/// The per-rule counters after a deterministic batch equal the model's tally.
#[test]
fn rule_counters_match_the_model_tally() {
    use proptest::{strategy::ValueTree as _, test_runner::TestRunner};
    let g = load(&policy_text());
    let policy = policy::check("model.toml", &policy_text()).unwrap().policy;
    let mut runner = TestRunner::deterministic();
    let strategy = arb_packet();
    let mut tally: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for _ in 0..20_000 {
        let p = strategy.new_tree(&mut runner).unwrap().current();
        let (want, rule) = model(&policy, &p);
        assert_eq!(g.verdict(&p), want, "{p:02x?}");
        if let Some(rule) = rule {
            let e = tally.entry(rule).or_default();
            e.0 += 1;
            e.1 += counted_len(&p);
        }
    }
    let c = g.counters();
    for r in &c.rules {
        let want = tally.get(&r.rule).copied().unwrap_or_default();
        assert_eq!((r.packets, r.bytes), want, "rule {}", r.rule);
    }
    assert!(
        tally.len() >= 8,
        "the batch should exercise most rules: {tally:?}"
    );
}
